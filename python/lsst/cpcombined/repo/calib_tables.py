"""The ip_isr calibration tables (``defects``, ``ptc``), written and read
without ip_isr.

An ip_isr calibration file (``IsrCalib.writeFits``) is an empty primary HDU
followed by one binary table whose header holds the calibration metadata:
``OBSTYPE``, ``<OBSTYPE>_SCHEMA`` and ``<OBSTYPE>_VERSION``, ``CALIBCLS`` (the
ip_isr class that reads it), the instrument and detector identity
(``INSTRUME``, ``RAFTNAME``, ``SLOTNAME``, ``DETECTOR``, ``DET_NAME``,
``DET_SER``, ``CALIB_ID``) and the creation date (``CALIBDATE``,
``CALIB_CREATION_DATE``, ``CALIB_CREATION_TIME``, local time).

Defects
    Columns ``x0``, ``y0``, ``width``, ``height`` (int64): boxes in the
    assembled, trimmed detector frame, 0-based.  ``OBSTYPE='defects'``,
    ``defects_SCHEMA=''``, ``defects_VERSION=2.0``.  Unset identity keys are
    left out, as ip_isr does.  cp_combined adds the detector shape
    (``DET_NY``, ``DET_NX``) and its counts (``CPC_*``) to the metadata;
    ip_isr keeps unknown metadata keys.

PTC (`PTC_VERSION` 2.6)
    One row per amplifier with every column ip_isr 2.6 defines
    (`PTC_COLUMNS`): ``fromTable`` reads each of them and fails on a missing
    one.  ``PTC_FIT_TYPE='EXPAPPROXIMATION'`` (Astier et al. 2019, eq. 16),
    ``PTC_FIT_PARS = [a00, gain, noise**2]`` (1/e-, e-/ADU, e-^2), noise in
    electrons, covariances in ADU^2 raveled as N x S x S (N flat pairs, S the
    covariance side), quantities cp_combined does not measure NaN.  Unset
    identity keys are written as ``''`` (ip_isr does the same for the PTC).
    ip_isr ignores columns it does not define (it only looks for
    ``PTCAUX_*`` beyond its own), so cp_combined's other per-amplifier
    results (flags, fit errors, quick gains, per-pair flags...) are extra
    columns named ``CPC_<NAME>``; `ptc_amp_results` turns the table back into
    cp_combined's per-amplifier view.
"""

from __future__ import annotations

__all__ = (
    "DEFECTS_CALIBCLS",
    "DEFECT_COLUMNS",
    "PTC_CALIBCLS",
    "PTC_COLUMNS",
    "PTC_FIT_TYPE",
    "PTC_SCHEMA",
    "PTC_VERSION",
    "calib_identity",
    "check_ptc_table",
    "defects_table",
    "ptc_amp_results",
    "ptc_table",
    "read_calib_table",
    "read_defects",
    "read_ptc",
    "write_calib_table",
)

import datetime
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import astropy.io.fits as fits
import astropy.units as u
import numpy as np
from astropy.table import Table

#: ``CALIBCLS`` of a defects file.
DEFECTS_CALIBCLS = "lsst.ip.isr.defects.Defects"
#: ``CALIBCLS`` of a PTC file.
PTC_CALIBCLS = "lsst.ip.isr.ptcDataset.PhotonTransferCurveDataset"
#: Columns of a defects table, in order (int64).
DEFECT_COLUMNS = ("x0", "y0", "width", "height")
#: ``PTC_VERSION`` written.
PTC_VERSION = 2.6
#: ``PTC_SCHEMA`` written.
PTC_SCHEMA = "Gen3 Photon Transfer Curve"
#: ``PTC_FIT_TYPE`` of cp_combined's fit (eq. 16).
PTC_FIT_TYPE = "EXPAPPROXIMATION"

#: The columns of an ip_isr 2.6 PTC table, in ip_isr's order: name ->
#: (kind, per-row shape).  Kinds: ``str``, ``int`` (int64), ``float``
#: (float64), ``bool``.  Shapes: ``()`` scalar; ``N`` one value per flat
#: pair; ``N2`` an exposure-id pair per flat pair; ``P`` the fit parameters
#: (3 for EXPAPPROXIMATION); ``FF`` an F x F matrix raveled (F the side of
#: the full-covariance fit); ``NSS`` N x S x S raveled; ``NFF`` N x F x F
#: raveled; ``B`` the bad amplifier names (same on every row).
PTC_COLUMNS: dict[str, tuple[str, str]] = {
    "AMPLIFIER_NAME": ("str", ""),
    "PTC_FIT_TYPE": ("str", ""),
    "COV_MATRIX_SIDE": ("int", ""),
    "COV_MATRIX_SIDE_FULL_COV_FIT": ("int", ""),
    "INPUT_EXP_ID_PAIRS": ("int", "N2"),
    "INPUT_EXP_PAIR_MJD_START": ("float", "N"),
    "EXP_ID_MASK": ("bool", "N"),
    "EXP_ID_ROLLOFF_MASK": ("bool", "N"),
    "RAW_EXP_TIMES": ("float", "N"),
    "RAW_MEANS": ("float", "N"),
    "RAW_VARS": ("float", "N"),
    "RAW_DELTAS": ("float", "N"),
    "ROW_MEAN_VARIANCE": ("float", "N"),
    "GAIN": ("float", ""),
    "GAIN_ERR": ("float", ""),
    "GAIN_UNADJUSTED": ("float", ""),
    "GAIN_LIST": ("float", "N"),
    "OVERSCAN_MEDIAN_LIST": ("float", "N"),
    "OVERSCAN_MEDIAN": ("float", ""),
    "OVERSCAN_MEDIAN_SIGMA": ("float", ""),
    "NOISE_LIST": ("float", "N"),
    "NOISE": ("float", ""),
    "NOISE_ERR": ("float", ""),
    "HIST_VARS": ("float", "N"),
    "HIST_CHI2_DOFS": ("float", "N"),
    "KS_PVALUES": ("float", "N"),
    "PTC_FIT_PARS": ("float", "P"),
    "PTC_FIT_PARS_ERROR": ("float", "P"),
    "PTC_FIT_CHI_SQ": ("float", ""),
    "PTC_TURNOFF": ("float", ""),
    "PTC_TURNOFF_SAMPLING_ERROR": ("float", ""),
    "PTC_ROLLOFF": ("float", ""),
    "PTC_ROLLOFF_ERROR": ("float", ""),
    "PTC_ROLLOFF_TAU": ("float", ""),
    "PTC_ROLLOFF_TAU_ERROR": ("float", ""),
    "A_MATRIX": ("float", "FF"),
    "B_MATRIX": ("float", "FF"),
    "NOISE_MATRIX": ("float", "FF"),
    "BAD_AMPS": ("str", "B"),
    "PHOTO_CHARGE": ("float", "N"),
    "PHOTO_CHARGE_DELTAS": ("float", "N"),
    "AMP_OFFSETS": ("float", "N"),
    "NPIXEL_COVARIANCES": ("int", ""),
    "COVARIANCES": ("float", "NSS"),
    "COVARIANCES_MODEL": ("float", "NFF"),
    "COVARIANCES_SQRT_WEIGHTS": ("float", "NSS"),
    "FINAL_VARS": ("float", "N"),
    "FINAL_MODEL_VARS": ("float", "N"),
    "FINAL_MEANS": ("float", "N"),
}

#: Number of EXPAPPROXIMATION fit parameters.
_N_PARS = 3
_DTYPES = {"int": np.int64, "float": np.float64, "bool": np.bool_}


# ---------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------


def calib_identity(
    obstype: str,
    *,
    schema: str,
    version: float,
    calibcls: str,
    instrument: str,
    detector: int,
    detector_name: str,
    detector_serial: str | None = None,
    physical_filter: str | None = None,
    unset: str | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The metadata ip_isr's ``IsrCalib.updateMetadata(setCalibId=True,
    setDate=True)`` gives a calibration.

    Parameters
    ----------
    obstype
        ``OBSTYPE`` (``defects``, ``PTC``); also the prefix of the schema and
        version keys.
    schema, version
        ``<obstype>_SCHEMA``, ``<obstype>_VERSION``.
    calibcls
        ``CALIBCLS``: the ip_isr class that reads the table.
    instrument, detector, detector_name, detector_serial, physical_filter
        Identity (``INSTRUME``, ``DETECTOR``, ``DET_NAME``, ``DET_SER``,
        ``FILTER``; ``RAFTNAME``/``SLOTNAME`` from the detector name split at
        ``_``).
    unset
        Value of identity keys without a value: `None` leaves them out (ip_isr
        defects), ``""`` writes them empty (ip_isr PTC).
    now
        Creation time (local; default now).

    Returns
    -------
    metadata
        Ordered ``{key: value}``.
    """
    now = now or datetime.datetime.now()
    raft, slot = detector_name.split("_", 1) if "_" in detector_name else (None, None)
    calib_date = now.isoformat()
    calib_id = " ".join(
        f"{key}={value}"
        for key, value in (
            ("instrument", instrument),
            ("raftName", raft),
            ("detectorName", detector_name),
            ("detector", detector),
            ("filter", physical_filter),
            ("calibDate", calib_date),
        )
        if value  # as ip_isr: falsy values (detector 0 too) are left out
    )
    md: dict[str, Any] = {
        "OBSTYPE": obstype,
        f"{obstype}_SCHEMA": schema,
        f"{obstype}_VERSION": version,
        "INSTRUME": instrument,
        "RAFTNAME": raft,
        "SLOTNAME": slot,
        "DETECTOR": int(detector),
        "DET_NAME": detector_name,
        "DET_SER": detector_serial or None,
        "FILTER": physical_filter or None,
        "CALIB_ID": calib_id,
        "SEQFILE": None,
        "SEQNAME": None,
        "SEQCKSUM": None,
        "CALIBCLS": calibcls,
        "CALIBDATE": calib_date,
        "CALIB_CREATION_DATE": now.date().isoformat(),
        "CALIB_CREATION_TIME": now.time().isoformat(),
    }
    if unset is None:
        return {k: v for k, v in md.items() if v is not None}
    return {k: (unset if v is None else v) for k, v in md.items()}


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def write_calib_table(
    table: Table, path: str | os.PathLike, extra_cards: Mapping[str, Any] | None = None
) -> None:
    """Write a table as ip_isr does: an empty primary HDU, then the table
    with its metadata in its header.

    Parameters
    ----------
    table
        The table (``table.meta`` becomes header cards; long keys
        ``HIERARCH``).
    path
        Output file (overwritten).
    extra_cards
        More header cards for the table HDU (e.g. butler provenance).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Warning, module="astropy.io")
        hdu = fits.table_to_hdu(table)
        for key, value in (extra_cards or {}).items():
            hdu.header[key] = value
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(os.fspath(path), overwrite=True)


def read_calib_table(path: str | os.PathLike) -> Table:
    """The first table of an ip_isr calibration file, as ip_isr reads it
    (``mask_invalid=False``; undefined header values become `None`)."""
    table = Table.read(os.fspath(path), hdu=1, mask_invalid=False)
    for key, value in list(table.meta.items()):
        if isinstance(value, fits.card.Undefined):
            table.meta[key] = None
    return table


# ---------------------------------------------------------------------------
# defects
# ---------------------------------------------------------------------------


def defects_table(boxes: Table, metadata: Mapping[str, Any]) -> Table:
    """An ip_isr defects table of boxes.

    Parameters
    ----------
    boxes
        Columns ``x0``, ``y0``, ``width``, ``height`` (any integer type).
    metadata
        Table metadata (`calib_identity` and extras), in order.

    Returns
    -------
    table
        Exactly the four columns, int64, and the metadata.
    """
    out = Table({name: np.asarray(boxes[name], dtype=np.int64) for name in DEFECT_COLUMNS})
    out.meta.update(metadata)
    return out


def _region_boxes(table: Table) -> Table:
    """``x0, y0, width, height`` of a FITS-region defects table (``X``,
    ``Y`` 1-based centres, ``R`` sizes, ``SHAPE`` BOX/POINT/ROTBOX at
    multiples of 90 degrees)."""
    rows = []
    for rec in table:
        shape = str(rec["SHAPE"]).strip().upper()
        xc = float(np.atleast_1d(rec["X"])[0]) - 1.0
        yc = float(np.atleast_1d(rec["Y"])[0]) - 1.0
        if shape == "POINT":
            w = h = 1
        elif shape in ("BOX", "ROTBOX"):
            r = np.atleast_1d(rec["R"])
            w, h = (int(round(r[0])), int(round(r[1]))) if r.size > 1 else (int(round(r[0])),) * 2
            if shape == "ROTBOX":
                angle = float(np.atleast_1d(rec["ROTANG"])[0]) if "ROTANG" in table.colnames else 0.0
                if not math.isclose(angle % 90.0, 0.0, abs_tol=1e-9):
                    raise ValueError(f"defect ROTBOX rotated by {angle} deg: only multiples of 90 are boxes")
                if not math.isclose(angle % 180.0, 0.0, abs_tol=1e-9):
                    w, h = h, w
        else:
            raise ValueError(f"defect region shape {shape!r}: only BOX, POINT and ROTBOX are supported")
        x0 = math.floor(xc - (w - 1) / 2.0 + 0.5)
        y0 = math.floor(yc - (h - 1) / 2.0 + 0.5)
        rows.append((x0, y0, w, h))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return Table({name: arr[:, i] for i, name in enumerate(DEFECT_COLUMNS)})


def read_defects(path: str | os.PathLike) -> Table:
    """Read a defects file (ip_isr's, or cp_combined's).

    Returns
    -------
    table
        Columns ``x0``, ``y0``, ``width``, ``height`` (int64) and the header
        as metadata; a FITS-region table (``X``, ``Y``, ``R``, ``SHAPE``)
        is converted to boxes.

    Raises
    ------
    ValueError
        A table with neither set of columns.
    """
    table = read_calib_table(path)
    if all(c in table.colnames for c in DEFECT_COLUMNS):
        boxes = table
    elif all(c in table.colnames for c in ("X", "Y", "R", "SHAPE")):
        boxes = _region_boxes(table)
    else:
        raise ValueError(
            f"{path}: not a defects table (columns {table.colnames}; expected {list(DEFECT_COLUMNS)} or "
            "X, Y, R, SHAPE)"
        )
    return defects_table(boxes, table.meta)


# ---------------------------------------------------------------------------
# PTC
# ---------------------------------------------------------------------------


def _shape(spec: str, n: int, s: int, f: int, n_bad: int) -> tuple[int, ...]:
    return {
        "": (),
        "N": (n,),
        "N2": (n, 2),
        "P": (_N_PARS,),
        "FF": (f * f,),
        "NSS": (n * s * s,),
        "NFF": (n * f * f,),
        "B": (n_bad,),
    }[spec]


def ptc_table(
    amps: Sequence[Mapping[str, Any]],
    *,
    n_pairs: int,
    cov_side: int,
    fit_side: int,
    bad_amps: Sequence[str],
    metadata: Mapping[str, Any],
) -> Table:
    """Assemble an ip_isr 2.6 PTC table.

    Parameters
    ----------
    amps
        One mapping per amplifier (row order) with ip_isr column values;
        a column not given is filled with NaN (float), False (bool) or -1
        (int), and ``PTC_FIT_TYPE``, the matrix sides and ``BAD_AMPS`` are
        set here.  Keys starting with ``CPC_`` are kept as extra columns.
    n_pairs
        Number of flat pairs N (the same for every amplifier).
    cov_side
        ``COV_MATRIX_SIDE`` S (maximum lag + 1).
    fit_side
        ``COV_MATRIX_SIDE_FULL_COV_FIT`` F.
    bad_amps
        ``BAD_AMPS`` (written on every row).
    metadata
        Table metadata (`calib_identity` with ``PTC_FIT_TYPE``, extras).

    Returns
    -------
    table
        Every column of `PTC_COLUMNS` in ip_isr's order with ip_isr's
        dtypes and shapes, then the ``CPC_`` columns.

    Raises
    ------
    ValueError
        A value of the wrong shape, or an unknown column.
    """
    n_amp = len(amps)
    bad = np.array(list(bad_amps), dtype=str) if len(bad_amps) else np.array([], dtype="U3")
    fixed = {
        "PTC_FIT_TYPE": PTC_FIT_TYPE,
        "COV_MATRIX_SIDE": cov_side,
        "COV_MATRIX_SIDE_FULL_COV_FIT": fit_side,
    }
    cols: dict[str, np.ndarray] = {}
    for name, (kind, spec) in PTC_COLUMNS.items():
        shape = _shape(spec, n_pairs, cov_side, fit_side, bad.size)
        if name == "BAD_AMPS":
            cols[name] = np.tile(bad, (n_amp, 1)).reshape((n_amp, bad.size)).astype(bad.dtype)
            continue
        values = [amp.get(name, fixed.get(name)) for amp in amps]
        if kind == "str":
            cols[name] = np.array([str(v) for v in values], dtype=str)
            continue
        fill = {"float": np.nan, "bool": False, "int": -1}[kind]
        out = np.full((n_amp, *shape), fill, dtype=_DTYPES[kind])
        for i, v in enumerate(values):
            if v is None:
                continue
            arr = np.asarray(v, dtype=_DTYPES[kind])
            if arr.size != int(np.prod(shape, dtype=np.int64)):
                raise ValueError(
                    f"PTC column {name}: amplifier {i} has {arr.size} values, expected shape {shape}"
                )
            out[i] = arr.reshape(shape)
        cols[name] = out
    for amp in amps:
        unknown = [k for k in amp if k not in PTC_COLUMNS and not k.startswith("CPC_")]
        if unknown:
            raise ValueError(f"PTC columns {unknown} are neither ip_isr's nor CPC_ extras")
    extras = list(dict.fromkeys(k for amp in amps for k in amp if k.startswith("CPC_")))
    for name in extras:
        values = [amp.get(name) for amp in amps]
        if isinstance(values[0], str):
            cols[name] = np.array([str(v) for v in values], dtype=str)
        else:
            cols[name] = np.array(values)
    table = Table(cols)
    table.meta.update(metadata)
    table.meta["PTC_FIT_TYPE"] = PTC_FIT_TYPE
    return table


def check_ptc_table(table: Table) -> None:
    """Check that a table has every ip_isr 2.6 PTC column with ip_isr's
    dtype and a consistent shape, and the metadata ip_isr needs.

    Raises
    ------
    ValueError
        Naming each problem.
    """
    problems = []
    for key, expected in (("OBSTYPE", "PTC"), ("PTC_VERSION", PTC_VERSION)):
        if table.meta.get(key) != expected:
            problems.append(f"{key} is {table.meta.get(key)!r}, not {expected!r}")
    missing = [c for c in PTC_COLUMNS if c not in table.colnames]
    if missing:
        problems.append(f"missing columns {missing}")
    def first(name: str) -> int:
        return int(table[name][0]) if name in table.colnames and len(table) else 0

    n = int(np.asarray(table["RAW_MEANS"]).shape[1]) if "RAW_MEANS" in table.colnames else 0
    s = first("COV_MATRIX_SIDE")
    f = first("COV_MATRIX_SIDE_FULL_COV_FIT")
    for name, (kind, spec) in PTC_COLUMNS.items():
        if name not in table.colnames:
            continue
        col = np.asarray(table[name])
        ok_kind = {"str": "U", "int": "i", "float": "f", "bool": "b"}[kind]
        if col.dtype.kind not in (ok_kind, "S" if kind == "str" else ok_kind):
            problems.append(f"{name} has dtype {col.dtype}, expected {kind}")
        if spec == "B":
            continue
        shape = _shape(spec, n, s, f, 0)
        if col.shape[1:] != shape:
            problems.append(f"{name} has per-row shape {col.shape[1:]}, expected {shape}")
    if problems:
        raise ValueError("not an ip_isr 2.6 PTC table: " + "; ".join(problems))


def read_ptc(path: str | os.PathLike) -> Table:
    """Read a PTC file (ip_isr's or cp_combined's) as its table.

    Returns
    -------
    table
        The table (string columns as `str`) with its header as metadata.

    Raises
    ------
    ValueError
        Not a PTC table (``OBSTYPE``), or a version other than 2.6 (older
        ip_isr layouts lack columns).
    """
    table = read_calib_table(path)
    if str(table.meta.get("OBSTYPE", "")).strip().upper() != "PTC":
        raise ValueError(f"{path}: OBSTYPE is {table.meta.get('OBSTYPE')!r}, not a PTC")
    version = table.meta.get("PTC_VERSION")
    if version != PTC_VERSION:
        raise ValueError(f"{path}: PTC_VERSION {version!r}; cp_combined reads version {PTC_VERSION}")
    for name in table.colnames:  # FITS strings come back as bytes
        if table[name].dtype.kind == "S":
            table[name] = np.char.decode(np.asarray(table[name]), "utf-8")
    return table


def ptc_amp_results(table: Table) -> Table:
    """cp_combined's per-amplifier view of a PTC table.

    Columns: ``amplifier``, ``gain``, ``gain_err``, ``noise``, ``noise_err``
    (e-), ``a00``, ``a00_err``, ``n00``, ``n00_err`` (from ``PTC_FIT_PARS``),
    ``noise_fit`` (``sqrt(n00)``), ``turnoff`` (ADU), ``chi2_dof``, the
    per-pair arrays ``exposure1``, ``exposure2``, ``exp_times``, ``means``,
    ``variances``, ``model_variances`` (NaN where not fitted), ``kept``,
    ``covariances`` (N x S x S, ADU^2), ``a_matrix``, ``b_matrix``,
    ``noise_matrix`` (F x F), with units; and every ``CPC_<NAME>`` column as
    ``<name>`` (covariance-like extras reshaped back to matrices, so
    ``CPC_MODEL_VARIANCES`` replaces ``model_variances``); ``bad`` is
    ``CPC_BAD`` when present, else membership in ``BAD_AMPS``.
    """
    n_amp = len(table)
    n = int(np.asarray(table["RAW_MEANS"]).shape[1]) if n_amp else 0
    s = int(table["COV_MATRIX_SIDE"][0]) if n_amp else 0
    f = int(table["COV_MATRIX_SIDE_FULL_COV_FIT"][0]) if n_amp else 0
    pars = np.asarray(table["PTC_FIT_PARS"], dtype=np.float64)
    errs = np.asarray(table["PTC_FIT_PARS_ERROR"], dtype=np.float64)
    pairs = np.asarray(table["INPUT_EXP_ID_PAIRS"], dtype=np.int64).reshape(n_amp, n, 2)
    n00 = pars[:, 2]
    out = Table(
        {
            "amplifier": np.asarray(table["AMPLIFIER_NAME"], dtype=str),
            "gain": np.asarray(table["GAIN"], dtype=np.float64),
            "gain_err": np.asarray(table["GAIN_ERR"], dtype=np.float64),
            "noise": np.asarray(table["NOISE"], dtype=np.float64),
            "noise_err": np.asarray(table["NOISE_ERR"], dtype=np.float64),
            "a00": pars[:, 0],
            "a00_err": errs[:, 0],
            "n00": n00,
            "n00_err": errs[:, 2],
            "noise_fit": np.sqrt(np.where(n00 >= 0, n00, np.nan)),
            "turnoff": np.asarray(table["PTC_TURNOFF"], dtype=np.float64),
            "chi2_dof": np.asarray(table["PTC_FIT_CHI_SQ"], dtype=np.float64),
            "exposure1": pairs[:, :, 0],
            "exposure2": pairs[:, :, 1],
            "exp_times": np.asarray(table["RAW_EXP_TIMES"], dtype=np.float64),
            "means": np.asarray(table["RAW_MEANS"], dtype=np.float64),
            "variances": np.asarray(table["RAW_VARS"], dtype=np.float64),
            "model_variances": np.asarray(table["FINAL_MODEL_VARS"], dtype=np.float64),
            "kept": np.asarray(table["EXP_ID_MASK"], dtype=bool),
            "covariances": np.asarray(table["COVARIANCES"], dtype=np.float64).reshape(n_amp, n, s, s),
            "a_matrix": np.asarray(table["A_MATRIX"], dtype=np.float64).reshape(n_amp, f, f),
            "b_matrix": np.asarray(table["B_MATRIX"], dtype=np.float64).reshape(n_amp, f, f),
            "noise_matrix": np.asarray(table["NOISE_MATRIX"], dtype=np.float64).reshape(n_amp, f, f),
        }
    )
    bad_amps = {str(a).strip() for a in np.asarray(table["BAD_AMPS"]).ravel()} if n_amp else set()
    out["bad"] = np.array([a in bad_amps for a in out["amplifier"]], dtype=bool)
    for name in table.colnames:
        if not name.startswith("CPC_"):
            continue
        key = name[4:].lower()
        col = np.asarray(table[name])
        if col.dtype.kind == "S":
            col = np.char.decode(col, "utf-8")
        if col.ndim == 2 and col.shape[1] == n * s * s and key.startswith("cov"):
            col = col.reshape(n_amp, n, s, s)
        elif col.ndim == 2 and f and col.shape[1] == f * f and key.startswith("fullcov"):
            col = col.reshape(n_amp, f, f)
        out[key] = col
    for names, unit in (
        (("gain", "gain_err"), u.electron / u.adu),
        (("noise", "noise_err", "noise_fit"), u.electron),
        (("n00", "n00_err"), u.electron**2),
        (("a00", "a00_err"), 1 / u.electron),
        (("turnoff", "means"), u.adu),
        (("variances", "model_variances", "covariances"), u.adu**2),
        (("exp_times",), u.s),
    ):
        for name in names:
            out[name].unit = unit
    out.meta.update(table.meta)
    return out
