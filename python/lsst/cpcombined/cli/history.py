"""History of the certified calibrations across days (``cpcombined history``).

For every calibration certified in a CALIBRATION collection (by default the
instrument's ``<INSTR>/calib/daily``), `collect_history` reads the product
through its file and measures, per amplifier:

========  =====================  =================================================
type      quantity               measurement
========  =====================  =================================================
bias      ``level``, ``noise``   3-sigma clipped mean and standard deviation of
                                 the amplifier's good pixels (the product's unit)
dark      ``dark_current``,      the same (electrons per second of dark time)
          ``noise``
flat      ``response``, ``rms``  the same (relative response; its pixel rms)
ptc       ``gain``,              ``GAIN`` and ``NOISE`` of the PTC table (e-/ADU,
          ``read_noise``         e-), errors ``GAIN_ERR`` and ``NOISE_ERR``
defects   ``n_defects``,         defect boxes touching the amplifier, and the
          ``n_defect_pixels``    pixels they cover in it
========  =====================  =================================================

Products written by the Science Pipelines (cp_pipe's afw Exposure files,
ip_isr's defects and PTC tables) are read by the same readers as the
package's own (`lsst.cpcombined.repo.exposure_fits`,
`lsst.cpcombined.repo.calib_tables`).  A quantity a file does not hold is
NaN; a file that cannot be read gives NaN rows (amplifier ``""``) and a
warning, never an error.  When an image is not a 2 x 8 grid of amplifiers,
level and noise come from cp_pipe's per-amplifier
``LSST CALIB <TYPE> <amp> DISTRIBUTION`` header keys instead (median and
half the 16-84 % range).  Defects are counted per amplifier with the
detector shape of the table (``DET_NY``/``DET_NX``) or of an image of the
same detector in the collection; without either, per detector
(amplifier ``""``).

Each certification is placed in time by the beginning of its validity
range, or by the product's creation date when the range is unbounded below;
its ``day`` is that date (``YYYY-MM-DD``, with ``#2``, ``#3``... for later
certifications of the same day).  `find_drifts` (and `drift_report`) flag
each day where a quantity of one amplifier changed from its previous
certification by more than ``n_sigma`` times the expected scatter of a
change: ``sqrt(2)`` times the largest of the scatter of the amplifier's
earlier values, the median scatter of the earlier values of every
amplifier of the same detector (corrected for the small number of values,
so that two or three earlier days are enough), and the quoted measurement
errors.  At least two earlier values are needed.
"""

from __future__ import annotations

__all__ = (
    "HISTORY_COLUMNS",
    "QUANTITIES",
    "ProductMeasurement",
    "collect_history",
    "drift_report",
    "find_drifts",
    "format_history",
    "history_figures",
    "history_html",
    "measure_product",
)

import base64
import dataclasses
import functools
import html
import io
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import astropy.time
import numpy as np
from astropy.table import Table

from ..algorithms.combine import clipped_stats
from ..algorithms.masks import bits, from_mask
from ..obs.camera import AMP_NAMES, AmpLayout, load_camera_description
from ..repo.calib_tables import ptc_amp_results, read_calib_table, read_defects, read_ptc
from ..repo.exposure_fits import read_exposure_fits
from ..repo.files import read_dataset_file
from ..repo.products import read_percentiles

_LOG = logging.getLogger(__name__)

#: Columns of the history table, in order (``physical_filter`` is ``""``
#: except for flats; ``error`` is NaN when unknown; validity bounds are ISO
#: TAI, ``-inf``/``+inf`` when unbounded; ``creation_date`` is the product's
#: own, ``""`` when it has none).
HISTORY_COLUMNS: tuple[str, ...] = (
    "calib_type",
    "detector",
    "physical_filter",
    "amplifier",
    "quantity",
    "value",
    "error",
    "unit",
    "dataset_id",
    "run",
    "validity_begin",
    "validity_end",
    "creation_date",
)

#: Quantities measured per calibration type, in display order.
QUANTITIES: dict[str, tuple[str, ...]] = {
    "bias": ("level", "noise"),
    "dark": ("dark_current", "noise"),
    "flat": ("response", "rms"),
    "ptc": ("gain", "read_noise"),
    "defects": ("n_defects", "n_defect_pixels"),
}

#: Pixels left out of the per-amplifier statistics.
_BAD_BITS = bits("BAD", "NO_DATA")
#: Calibration types read from images (their shapes place the defects).
_IMAGE_TYPES = ("bias", "dark", "flat")
_AMP_ORDER = {name: i for i, name in enumerate(AMP_NAMES)}


# ---------------------------------------------------------------------------
# measuring one product
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProductMeasurement:
    """Per-amplifier quantities of one calibration product.

    Attributes
    ----------
    rows : `list` [`dict`]
        One mapping per (amplifier, quantity): ``amplifier``, ``quantity``,
        ``value``, ``error``, ``unit``.
    creation_date : `str`
        Creation time written in the product (``YYYY-MM-DDThh:mm:ss``), or
        ``""``.
    shape : `tuple` [`int`, `int`] or `None`
        ``(ny, nx)`` of an image product (or of the detector a defects
        table declares).
    """

    rows: list[dict[str, Any]]
    creation_date: str = ""
    shape: tuple[int, int] | None = None


def _row(amp: str, quantity: str, value: Any, error: Any, unit: str) -> dict[str, Any]:
    def num(x: Any) -> float:
        try:
            return float(x)
        except (TypeError, ValueError):
            return math.nan

    return {"amplifier": amp, "quantity": quantity, "value": num(value), "error": num(error), "unit": unit}


def _creation_date(meta: Mapping[str, Any]) -> str:
    """Creation time of a product from cp_pipe's or ip_isr's keys."""
    for key in ("CALIB_CREATION_DATETIME", "CALIBDATE"):
        value = meta.get(key)
        if isinstance(value, str) and len(value.strip()) >= 10:
            return value.strip().replace(" ", "T")[:19]
    date, time = meta.get("CALIB_CREATION_DATE"), meta.get("CALIB_CREATION_TIME")
    if isinstance(date, str) and len(date.strip()) == 10:
        clock = str(time or "").strip()[:8]
        return f"{date.strip()}T{clock}" if len(clock) == 8 and clock[2] == ":" else date.strip()
    return ""


def _amp_regions(shape: Sequence[int]) -> dict[str, tuple[slice, slice]] | None:
    try:
        layout = AmpLayout.from_detector_shape(shape)
    except ValueError:
        return None
    return {amp: layout.geometry(amp).assembled_slices for amp in AMP_NAMES}


def _measure_image(calib_type: str, path: str) -> ProductMeasurement:
    return _measure_masked_image(calib_type, read_exposure_fits(path, log=_LOG))


def _measure_masked_image(calib_type: str, mi: Any) -> ProductMeasurement:
    """`ProductMeasurement` of a bias, dark or flat already read (a
    `lsst.images.MaskedImage`)."""
    image = np.asarray(mi.image.array)
    mask = from_mask(mi.mask)
    unit = "" if mi.image.unit is None else mi.image.unit.to_string()
    level_name, spread_name = QUANTITIES[calib_type]
    rows: list[dict[str, Any]] = []
    regions = _amp_regions(image.shape)
    if regions is not None:
        for amp, (ys, xs) in regions.items():
            mean, std, n = clipped_stats(
                np.ascontiguousarray(image[ys, xs]), np.ascontiguousarray(mask[ys, xs]), bad_bits=_BAD_BITS
            )
            root_n = math.sqrt(n) if n else math.nan
            rows.append(_row(amp, level_name, mean, std / root_n, unit))
            rows.append(_row(amp, spread_name, std, std / (math.sqrt(2.0) * root_n), unit))
    else:
        # Not the package's amplifier grid: cp_pipe's per-amplifier percentiles.
        for amp, pct in read_percentiles(mi.metadata).items():
            rows.append(_row(amp, level_name, pct.get(50, math.nan), math.nan, unit))
            spread = 0.5 * (pct.get(84, math.nan) - pct.get(16, math.nan))
            rows.append(_row(amp, spread_name, spread, math.nan, unit))
    return ProductMeasurement(rows, _creation_date(mi.metadata), (int(image.shape[0]), int(image.shape[1])))


def _measure_defects(path: str, detector_shape: Sequence[int] | None) -> ProductMeasurement:
    table = read_defects(path)
    meta = table.meta
    shape: tuple[int, int] | None = None
    if meta.get("DET_NY") and meta.get("DET_NX"):
        shape = (int(meta["DET_NY"]), int(meta["DET_NX"]))
    elif detector_shape is not None:
        shape = (int(detector_shape[0]), int(detector_shape[1]))
    x0 = np.asarray(table["x0"], dtype=np.int64)
    y0 = np.asarray(table["y0"], dtype=np.int64)
    x1 = x0 + np.asarray(table["width"], dtype=np.int64)
    y1 = y0 + np.asarray(table["height"], dtype=np.int64)
    regions = _amp_regions(shape) if shape is not None else None
    rows: list[dict[str, Any]] = []
    if regions is None:
        n_pix = int(np.sum((x1 - x0) * (y1 - y0)))
        rows.append(_row("", "n_defects", len(table), math.sqrt(max(len(table), 1)), ""))
        rows.append(_row("", "n_defect_pixels", n_pix, math.sqrt(max(n_pix, 1)), ""))
    else:
        for amp, (ys, xs) in regions.items():
            w = np.clip(np.minimum(x1, xs.stop) - np.maximum(x0, xs.start), 0, None)
            h = np.clip(np.minimum(y1, ys.stop) - np.maximum(y0, ys.start), 0, None)
            area = w * h
            n_boxes = int(np.count_nonzero(area))
            n_pix = int(area.sum())
            rows.append(_row(amp, "n_defects", n_boxes, math.sqrt(max(n_boxes, 1)), ""))
            rows.append(_row(amp, "n_defect_pixels", n_pix, math.sqrt(max(n_pix, 1)), ""))
    return ProductMeasurement(rows, _creation_date(meta), shape)


def _column(table: Table, name: str) -> np.ndarray:
    if name in table.colnames:
        return np.asarray(table[name], dtype=np.float64).reshape(len(table), -1)[:, 0]
    return np.full(len(table), np.nan)


def _measure_ptc(path: str) -> ProductMeasurement:
    try:
        results = ptc_amp_results(read_ptc(path))
        amps = [str(a) for a in results["amplifier"]]
        gain, gain_err = results["gain"], results["gain_err"]
        noise, noise_err = results["noise"], results["noise_err"]
        meta = results.meta
    except (ValueError, KeyError) as err:
        # Another PTC version (or a table missing columns): take what is there.
        _LOG.info("%s: %s; reading its GAIN and NOISE columns where present.", path, err)
        table = read_calib_table(path)
        meta = table.meta
        names = table["AMPLIFIER_NAME"] if "AMPLIFIER_NAME" in table.colnames else [""] * len(table)
        amps = [a.decode() if isinstance(a, bytes) else str(a) for a in np.asarray(names)]
        gain, gain_err = _column(table, "GAIN"), _column(table, "GAIN_ERR")
        noise, noise_err = _column(table, "NOISE"), _column(table, "NOISE_ERR")
    rows: list[dict[str, Any]] = []
    for i, amp in enumerate(amps):
        rows.append(_row(amp.strip(), "gain", gain[i], gain_err[i], "electron / adu"))
        rows.append(_row(amp.strip(), "read_noise", noise[i], noise_err[i], "electron"))
    return ProductMeasurement(rows, _creation_date(meta), None)


def measure_product(
    calib_type: str, path: str | os.PathLike, *, detector_shape: Sequence[int] | None = None
) -> ProductMeasurement:
    """Measure the per-amplifier quantities `QUANTITIES` of one product file.

    Parameters
    ----------
    calib_type
        ``bias``, ``dark``, ``flat``, ``defects`` or ``ptc``.
    path
        The product's file (the package's or the Science Pipelines').
    detector_shape
        ``(ny, nx)`` of the detector, used to count defects per amplifier
        when the defects table does not declare it.

    Returns
    -------
    measurement : `ProductMeasurement`

    Raises
    ------
    ValueError
        An unknown calibration type, or a file that is not of that type.
    """
    spath = os.fspath(path)
    if calib_type in _IMAGE_TYPES:
        return _measure_image(calib_type, spath)
    if calib_type == "defects":
        return _measure_defects(spath, detector_shape)
    if calib_type == "ptc":
        return _measure_ptc(spath)
    raise ValueError(f"calibration type {calib_type!r}: expected one of {list(QUANTITIES)}")


# ---------------------------------------------------------------------------
# collecting the history
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Handle:
    """What `read_dataset_file` needs of a dataset handle."""

    butler: Any
    ref: Any


def _time_text(t: astropy.time.Time | None, unbounded: str) -> str:
    return unbounded if t is None else t.tai.isot


def _empty_table() -> Table:
    return Table(
        {
            "calib_type": np.array([], dtype=str),
            "detector": np.array([], dtype=np.int64),
            "physical_filter": np.array([], dtype=str),
            "amplifier": np.array([], dtype=str),
            "quantity": np.array([], dtype=str),
            "value": np.array([], dtype=np.float64),
            "error": np.array([], dtype=np.float64),
            "unit": np.array([], dtype=str),
            "dataset_id": np.array([], dtype=str),
            "run": np.array([], dtype=str),
            "validity_begin": np.array([], dtype=str),
            "validity_end": np.array([], dtype=str),
            "creation_date": np.array([], dtype=str),
        }
    )


def _resolve_detectors(instrument: str, detectors: Iterable[int | str] | None) -> set[int] | None:
    if detectors is None:
        return None
    camera = load_camera_description(instrument)
    out: set[int] = set()
    for d in detectors:
        key: int | str = int(d) if isinstance(d, str) and d.strip().isdigit() else d
        try:
            out.add(int(camera[key].id))
        except (KeyError, IndexError, ValueError):
            known = ", ".join(f"{det.id} ({det.name})" for det in camera.detectors)
            raise ValueError(f"{instrument} has no detector {d!r}; its detectors are {known}") from None
    return out


def collect_history(
    butler: Any,
    instrument: str,
    *,
    calib_collection: str | None = None,
    detectors: Iterable[int | str] | None = None,
    images: Mapping[str, Any] | None = None,
) -> Table:
    """Per-amplifier quantities of every calibration certified in a
    collection, with the certification's validity range.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Butler of the repository (read-only is enough).
    instrument
        ``LATISS`` or ``LSSTComCam``.
    calib_collection
        CALIBRATION collection, or a CHAINED collection of them (such as
        ``<INSTR>/calib``); default ``<INSTR>/calib/daily``.
    detectors
        Detector ids or names (default all).
    images
        Bias, dark and flat images already read (`lsst.images.MaskedImage`
        as `lsst.cpcombined.repo.exposure_fits.read_exposure_fits` reads
        them), by dataset id (``str(ref.id)``): measured without reading
        their files again.

    Returns
    -------
    table : `astropy.table.Table`
        One row per (certification, amplifier, quantity) with the columns
        `HISTORY_COLUMNS`, sorted by calibration type, physical filter,
        detector, time, amplifier and quantity; ``meta`` holds
        ``instrument`` and ``calib_collection``.  A product certified over
        several validity ranges has rows for each.

    Raises
    ------
    LookupError
        The collection does not exist.
    ValueError
        The collection is a RUN or TAGGED collection, or a detector is
        unknown.
    """
    from lsst.daf.butler import CollectionType, MissingCollectionError, MissingDatasetTypeError

    collection = calib_collection or f"{instrument}/calib/daily"
    try:
        info = butler.collections.get_info(collection)
    except MissingCollectionError:
        raise LookupError(f"collection {collection!r} does not exist in this repository") from None
    if info.type not in (CollectionType.CALIBRATION, CollectionType.CHAINED):
        raise ValueError(
            f"collection {collection!r} is a {info.type.name} collection: certifications are in CALIBRATION "
            "collections (or CHAINED collections of them)"
        )
    wanted = _resolve_detectors(instrument, detectors)

    associations: list[tuple[str, Any, Any]] = []
    for calib_type in ("bias", "dark", "flat", "ptc", "defects"):
        try:
            dataset_type = butler.get_dataset_type(calib_type)
        except MissingDatasetTypeError:
            continue
        if not dataset_type.isCalibration():
            continue
        for assoc in butler.registry.queryDatasetAssociations(
            dataset_type,
            collections=[collection],
            collectionTypes={CollectionType.CALIBRATION},
            flattenChains=True,
        ):
            data_id = assoc.ref.dataId.required
            if str(data_id["instrument"]) != instrument:
                continue
            if wanted is not None and int(data_id["detector"]) not in wanted:
                continue
            associations.append((calib_type, assoc.ref, assoc.timespan))
    _LOG.info("Reading %d certification(s) of %s in %s.", len(associations), instrument, collection)

    # Images first: their shapes place the defects on the amplifiers.
    associations.sort(key=lambda a: (a[0] not in _IMAGE_TYPES, a[0]))
    measured: dict[str, ProductMeasurement] = {}
    shapes: dict[int, tuple[int, int]] = {}
    columns: dict[str, list[Any]] = {name: [] for name in HISTORY_COLUMNS}
    for calib_type, ref, timespan in associations:
        detector = int(ref.dataId.required["detector"])
        key = str(ref.id)
        if key not in measured:
            image = images.get(key) if images and calib_type in _IMAGE_TYPES else None
            try:
                if image is not None:
                    measured[key] = _measure_masked_image(calib_type, image)
                else:
                    measured[key] = read_dataset_file(
                        _Handle(butler, ref),
                        lambda path, t=calib_type, d=detector: measure_product(
                            t, path, detector_shape=shapes.get(d)
                        ),
                    )
            except Exception as err:  # a history must not stop at one bad file
                _LOG.warning(
                    "Cannot read %s %s (run %s): %s; its quantities are NaN.", calib_type, key, ref.run, err
                )
                measured[key] = ProductMeasurement(
                    [_row("", q, math.nan, math.nan, "") for q in QUANTITIES[calib_type]]
                )
            shape = measured[key].shape
            if calib_type in _IMAGE_TYPES and shape is not None:
                shapes[detector] = shape
        measurement = measured[key]
        physical_filter = str(ref.dataId.required.get("physical_filter", "") or "")
        begin = _time_text(timespan.begin if timespan is not None else None, "-inf")
        end = _time_text(timespan.end if timespan is not None else None, "+inf")
        for row in measurement.rows:
            columns["calib_type"].append(calib_type)
            columns["detector"].append(detector)
            columns["physical_filter"].append(physical_filter)
            columns["amplifier"].append(row["amplifier"])
            columns["quantity"].append(row["quantity"])
            columns["value"].append(row["value"])
            columns["error"].append(row["error"])
            columns["unit"].append(row["unit"])
            columns["dataset_id"].append(key)
            columns["run"].append(str(ref.run))
            columns["validity_begin"].append(begin)
            columns["validity_end"].append(end)
            columns["creation_date"].append(measurement.creation_date)
    if not columns["calib_type"]:
        table = _empty_table()
    else:
        table = Table(
            {
                name: np.array(
                    values,
                    dtype={"detector": np.int64, "value": np.float64, "error": np.float64}.get(name, str),
                )
                for name, values in columns.items()
            }
        )
        mjd, _ = _epochs(table)
        type_order = {t: i for i, t in enumerate(QUANTITIES)}
        quantity_order = {q: i for qs in QUANTITIES.values() for i, q in enumerate(qs)}
        c = columns
        order = sorted(
            range(len(table)),
            key=lambda i: (
                type_order.get(c["calib_type"][i], 99),
                c["physical_filter"][i],
                c["detector"][i],
                math.isnan(mjd[i]),
                0.0 if math.isnan(mjd[i]) else mjd[i],
                c["creation_date"][i],
                c["dataset_id"][i],
                _AMP_ORDER.get(c["amplifier"][i], 99),
                quantity_order.get(c["quantity"][i], 99),
            ),
        )
        table = table[order]
    table.meta["instrument"] = instrument
    table.meta["calib_collection"] = collection
    return table


# ---------------------------------------------------------------------------
# series and drifts
# ---------------------------------------------------------------------------


def _mjd(text: str) -> float:
    text = str(text).strip()
    if not text or text in ("-inf", "+inf"):
        return math.nan
    try:
        return float(astropy.time.Time(text, format="isot" if "T" in text else "iso", scale="tai").mjd)
    except ValueError:
        return math.nan


def _epochs(table: Table) -> tuple[np.ndarray, list[str]]:
    """When each row's certification took effect: MJD (TAI) of the validity
    begin, else of the creation date (NaN when neither is known), and its
    day (``YYYY-MM-DD``)."""
    cache: dict[tuple[str, str], tuple[float, str]] = {}
    mjd = np.full(len(table), np.nan)
    days: list[str] = []
    begins = [str(v) for v in table["validity_begin"]]
    created = [str(v) for v in table["creation_date"]]
    for i, key in enumerate(zip(begins, created, strict=True)):
        if key not in cache:
            value, text = _mjd(key[0]), key[0]
            if math.isnan(value):
                value, text = _mjd(key[1]), key[1]
            cache[key] = (value, text[:10] if not math.isnan(value) else "")
        mjd[i], day = cache[key]
        days.append(day)
    return mjd, days


@dataclasses.dataclass
class _Point:
    mjd: float
    day: str
    value: float
    error: float
    dataset_id: str
    run: str


#: (calib_type, physical_filter, quantity, unit)
_GroupKey = tuple[str, str, str, str]


def _series(table: Table) -> dict[_GroupKey, dict[tuple[int, str], list[_Point]]]:
    """Points of each (group, (detector, amplifier)) series in time order,
    one per certified dataset (the first certification of a dataset
    certified several times), with unique day labels."""
    mjd, days = _epochs(table)
    col = {name: table[name].tolist() for name in HISTORY_COLUMNS}
    out: dict[_GroupKey, dict[tuple[int, str], list[_Point]]] = {}
    seen: set[tuple] = set()
    for i in range(len(table)):
        group = (
            str(col["calib_type"][i]),
            str(col["physical_filter"][i]),
            str(col["quantity"][i]),
            str(col["unit"][i]),
        )
        series_key = (int(col["detector"][i]), str(col["amplifier"][i]))
        dataset_id = str(col["dataset_id"][i])
        if (group, series_key, dataset_id) in seen:
            continue
        seen.add((group, series_key, dataset_id))
        day = days[i] or dataset_id[:8]
        out.setdefault(group, {}).setdefault(series_key, []).append(
            _Point(
                float(mjd[i]),
                day,
                float(col["value"][i]),
                float(col["error"][i]),
                dataset_id,
                str(col["run"][i]),
            )
        )
    for by_amp in out.values():
        for points in by_amp.values():
            points.sort(key=lambda p: (math.isnan(p.mjd), 0.0 if math.isnan(p.mjd) else p.mjd))
            counts: dict[str, int] = {}
            for p in points:
                counts[p.day] = counts.get(p.day, 0) + 1
                if counts[p.day] > 1:
                    p.day = f"{p.day}#{counts[p.day]}"
    return out


@functools.lru_cache(maxsize=256)
def _median_std_factor(dof: int) -> float:
    """Median of the sample standard deviation of ``dof + 1`` normal values
    in units of the true sigma."""
    from scipy.stats import chi2

    return math.sqrt(float(chi2.ppf(0.5, dof)) / dof)


def find_drifts(table: Table, *, n_sigma: float = 5.0, min_history: int = 2) -> Table:
    """Certifications where a quantity of one amplifier changed beyond
    ``n_sigma`` of its previous scatter (see the module documentation).

    Parameters
    ----------
    table
        A history table (`collect_history`).
    n_sigma
        Threshold on ``|change| / sigma``.
    min_history
        Earlier values needed before a change is judged (at least 2).

    Returns
    -------
    drifts : `astropy.table.Table`
        One row per flagged change: ``day``, ``previous_day``,
        ``calib_type``, ``physical_filter``, ``detector``, ``amplifier``,
        ``quantity``, ``unit``, ``value``, ``previous_value``, ``change``,
        ``sigma`` (expected scatter of a change), ``significance``
        (``change / sigma``), ``dataset_id``, ``run``; in time order.
    """
    min_history = max(2, int(min_history))
    rows: list[dict[str, Any]] = []
    for group, by_amp in _series(table).items():
        detectors = sorted({det for det, _ in by_amp})
        for det in detectors:
            amps = {amp: pts for (d, amp), pts in by_amp.items() if d == det}
            finite = {amp: [p for p in pts if math.isfinite(p.value)] for amp, pts in amps.items()}
            # Normalised scatter of the earlier values of each amplifier, by day.
            pooled_parts: dict[str, list[float]] = {}
            own: dict[tuple[str, str], float] = {}
            for amp, pts in finite.items():
                for i in range(min_history, len(pts)):
                    earlier = np.array([p.value for p in pts[:i]])
                    s = float(np.std(earlier, ddof=1))
                    own[(amp, pts[i].day)] = s
                    pooled_parts.setdefault(pts[i].day, []).append(s / _median_std_factor(i - 1))
            pooled = {day: float(np.median(v)) for day, v in pooled_parts.items()}
            for amp, pts in finite.items():
                for i in range(min_history, len(pts)):
                    point, previous = pts[i], pts[i - 1]
                    errors = [e for e in (point.error, previous.error) if math.isfinite(e)]
                    e_rms = math.sqrt(sum(e * e for e in errors) / len(errors)) if errors else 0.0
                    scatter = max(own[(amp, point.day)], pooled.get(point.day, 0.0), e_rms)
                    sigma = math.sqrt(2.0) * scatter
                    change = point.value - previous.value
                    if sigma > 0:
                        significance = change / sigma
                    else:
                        significance = 0.0 if change == 0 else math.copysign(math.inf, change)
                    if abs(significance) > n_sigma:
                        rows.append(
                            {
                                "day": point.day,
                                "previous_day": previous.day,
                                "calib_type": group[0],
                                "physical_filter": group[1],
                                "detector": det,
                                "amplifier": amp,
                                "quantity": group[2],
                                "unit": group[3],
                                "value": point.value,
                                "previous_value": previous.value,
                                "change": change,
                                "sigma": sigma,
                                "significance": significance,
                                "dataset_id": point.dataset_id,
                                "run": point.run,
                                "_mjd": point.mjd,
                            }
                        )
    names = (
        "day",
        "previous_day",
        "calib_type",
        "physical_filter",
        "detector",
        "amplifier",
        "quantity",
        "unit",
        "value",
        "previous_value",
        "change",
        "sigma",
        "significance",
        "dataset_id",
        "run",
    )
    rows.sort(
        key=lambda r: (
            math.isnan(r["_mjd"]),
            0.0 if math.isnan(r["_mjd"]) else r["_mjd"],
            r["day"],
            r["calib_type"],
            r["detector"],
            _AMP_ORDER.get(r["amplifier"], 99),
        )
    )
    dtypes = {
        "detector": np.int64,
        "value": float,
        "previous_value": float,
        "change": float,
        "sigma": float,
        "significance": float,
    }
    return Table({name: np.array([r[name] for r in rows], dtype=dtypes.get(name, str)) for name in names})


def _what(calib_type: str, physical_filter: str, quantity: str) -> str:
    return f"{calib_type} {quantity}" + (f" ({physical_filter})" if physical_filter else "")


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.4g}"


def drift_report(table: Table, *, n_sigma: float = 5.0) -> list[str]:
    """One line per certification where a quantity of one amplifier jumped
    beyond ``n_sigma`` of its previous scatter (`find_drifts`), naming the
    day, the calibration, detector and amplifier, the values and the
    significance; empty when there is none."""
    lines = []
    for r in find_drifts(table, n_sigma=n_sigma):
        unit = f" {r['unit']}" if r["unit"] else ""
        lines.append(
            f"{r['day']}: {_what(r['calib_type'], r['physical_filter'], r['quantity'])} of detector "
            f"{r['detector']} amplifier {r['amplifier']} changed from {_fmt(r['previous_value'])} "
            f"({r['previous_day']}) to {_fmt(r['value'])}{unit}: {float(r['change']):+.4g}{unit}, "
            f"{float(r['significance']):+.1f} sigma (expected scatter of a change {_fmt(r['sigma'])}{unit}); "
            f"run {r['run']}"
        )
    return lines


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Pivot:
    group: _GroupKey
    days: list[str]
    #: (detector, amplifier, {day: (value, flagged)}, last change)
    rows: list[tuple[int, str, dict[str, tuple[float, bool]], float]]


def _flagged(table: Table, n_sigma: float) -> set[tuple[_GroupKey, int, str, str]]:
    """(group, detector, amplifier, day) of every drift `find_drifts` finds."""
    return {
        (
            (r["calib_type"], r["physical_filter"], r["quantity"], r["unit"]),
            int(r["detector"]),
            r["amplifier"],
            r["day"],
        )
        for r in find_drifts(table, n_sigma=n_sigma)
    }


def _pivots(table: Table, n_sigma: float) -> list[_Pivot]:
    flagged = _flagged(table, n_sigma)
    out = []
    for group, by_amp in _series(table).items():
        day_time: dict[str, float] = {}
        for pts in by_amp.values():
            for p in pts:
                day_time.setdefault(p.day, p.mjd)
        days = sorted(
            day_time,
            key=lambda d: (math.isnan(day_time[d]), 0.0 if math.isnan(day_time[d]) else day_time[d], d),
        )
        rows = []
        for (det, amp), pts in sorted(
            by_amp.items(), key=lambda kv: (kv[0][0], _AMP_ORDER.get(kv[0][1], 99))
        ):
            cells = {p.day: (p.value, (group, det, amp, p.day) in flagged) for p in pts}
            finite = [p.value for p in pts if math.isfinite(p.value)]
            last_change = finite[-1] - finite[-2] if len(finite) >= 2 else math.nan
            rows.append((det, amp, cells, last_change))
        out.append(_Pivot(group, days, rows))
    return out


def format_history(table: Table, *, n_sigma: float = 5.0, last: int | None = 8) -> str:
    """The history as readable text tables: one per calibration type and
    quantity, a row per detector and amplifier, a column per certification
    (the ``last`` most recent; all with `None`) and the last change; values
    that jumped beyond ``n_sigma`` are marked ``!``; then the drifts."""
    instrument = table.meta.get("instrument", "")
    collection = table.meta.get("calib_collection", "")
    if len(table) == 0:
        return f"No certified calibrations of {instrument} in {collection}.\n"
    n_datasets = len(set(table["dataset_id"]))
    lines = [f"{instrument} calibrations certified in {collection}: {n_datasets} dataset(s)", ""]
    for pivot in _pivots(table, n_sigma):
        calib_type, physical_filter, quantity, unit = pivot.group
        days = pivot.days if last is None else pivot.days[-last:]
        hidden = len(pivot.days) - len(days)
        title = _what(calib_type, physical_filter, quantity) + (f" [{unit}]" if unit else "")
        if hidden:
            title += f"  ({hidden} earlier certification(s) not shown)"
        header = ["det", "amp", *days, "last change"]
        body = []
        for det, amp, cells, last_change in pivot.rows:
            row = [str(det), amp or "-"]
            for day in days:
                if day in cells:
                    value, flag = cells[day]
                    row.append(_fmt(value) + ("!" if flag else ""))
                else:
                    row.append("")
            row.append("" if math.isnan(last_change) else f"{last_change:+.4g}")
            body.append(row)
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines.append(title)
        lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
        lines.extend("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body)
        lines.append("")
    drifts = drift_report(table, n_sigma=n_sigma)
    if drifts:
        lines.append(f"Changes beyond {n_sigma:g} sigma of the previous scatter (marked !):")
        lines.extend(f"  {line}" for line in drifts)
    else:
        lines.append(f"No change beyond {n_sigma:g} sigma of the previous scatter.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# figures and HTML
# ---------------------------------------------------------------------------


def history_figures(table: Table, *, n_sigma: float = 5.0) -> list[Any]:
    """One figure per calibration type and quantity (and physical filter):
    the value of each amplifier against the certification date (top), and
    the change of the last certification per amplifier (bottom; changes
    beyond ``n_sigma`` in red, their segment drawn thick and red on top).

    Returns
    -------
    figures : `list` [`matplotlib.figure.Figure`]
        Figures not attached to pyplot (nothing to close).
    """
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure

    flagged = _flagged(table, n_sigma)
    figures = []
    cmap = None
    for group, by_amp in _series(table).items():
        calib_type, physical_filter, quantity, unit = group
        all_points = [p for pts in by_amp.values() for p in pts]
        use_dates = all(math.isfinite(p.mjd) for p in all_points)
        day_x: dict[Any, Any] = {}
        if not use_dates:
            for p in sorted(all_points, key=lambda p: p.day):
                day_x.setdefault(p.day, float(len(day_x)))

        if use_dates:
            mjds = sorted({p.mjd for p in all_points})
            times = astropy.time.Time(mjds, format="mjd", scale="tai").utc.datetime
            day_x = dict(zip(mjds, times, strict=True))

        def x_of(p: _Point, day_x: dict[Any, Any] = day_x, use_dates: bool = use_dates) -> Any:
            return day_x[p.mjd] if use_dates else day_x[p.day]

        series = sorted(by_amp.items(), key=lambda kv: (kv[0][0], _AMP_ORDER.get(kv[0][1], 99)))
        n_det = len({det for (det, _), _ in series})
        fig = Figure(figsize=(11, 7), layout="constrained")
        top, bottom = fig.subplots(2, 1, height_ratios=[3, 1.6])
        if cmap is None:
            import matplotlib

            cmap = matplotlib.colormaps["tab20"]
        labels, changes, colors, labels_plotted = [], [], [], []
        for k, ((det, amp), pts) in enumerate(series):
            finite = [p for p in pts if math.isfinite(p.value)]
            if not finite:
                continue
            color = cmap(_AMP_ORDER.get(amp, k) % 20)
            label = amp if n_det == 1 else f"{det} {amp}"
            top.plot(
                [x_of(p) for p in finite],
                [p.value for p in finite],
                "o-",
                ms=3,
                lw=1,
                color=color,
                label=label,
            )
            labels_plotted.append(label)
            if len(finite) >= 2:
                prev, cur = finite[-2], finite[-1]
                hit = (group, det, amp, cur.day) in flagged
                top.plot(
                    [x_of(prev), x_of(cur)],
                    [prev.value, cur.value],
                    "-",
                    lw=3.5 if hit else 2,
                    color="red" if hit else color,
                    alpha=0.9 if hit else 0.5,
                )
                labels.append(label)
                changes.append(cur.value - prev.value)
                colors.append("red" if hit else "0.6")
            for p in finite:
                if (group, det, amp, p.day) in flagged and p is not finite[-1]:
                    top.plot([x_of(p)], [p.value], "o", ms=9, mfc="none", mec="red", mew=2)
        xs_all = sorted({x_of(p) for pts in by_amp.values() for p in pts if math.isfinite(p.value)})
        if len(xs_all) >= 2:
            top.axvspan(xs_all[-2], xs_all[-1], color="gold", alpha=0.15, lw=0, label="last change")
        title = _what(calib_type, physical_filter, quantity) + (f" [{unit}]" if unit else "")
        top.set_title(f"{title}: value per amplifier at each certification")
        top.set_ylabel(f"{quantity}" + (f" ({unit})" if unit else ""))
        top.set_xlabel("certification date (start of validity)" if use_dates else "certification")
        top.grid(alpha=0.3)
        if use_dates:
            span = max(p.mjd for p in all_points) - min(p.mjd for p in all_points)
            # Whole days between daily certifications; finer ticks within a day.
            locator = (
                mdates.DayLocator(interval=max(1, math.ceil(span / 10)))
                if span >= 1.0
                else mdates.AutoDateLocator()
            )
            top.xaxis.set_major_locator(locator)
            top.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        else:
            top.set_xticks(list(day_x.values()), list(day_x), rotation=30, ha="right")
        if 0 < len(labels_plotted) <= 24:
            top.legend(
                fontsize=7, ncol=2 if len(series) > 12 else 1, loc="upper left", bbox_to_anchor=(1.0, 1.0)
            )
        if changes:
            xs = np.arange(len(changes))
            bottom.bar(xs, changes, color=colors)
            bottom.axhline(0.0, color="k", lw=0.8)
            bottom.set_xticks(xs, labels, rotation=90 if len(labels) > 16 else 0, fontsize=7)
            bottom.set_ylabel("last change" + (f" ({unit})" if unit else ""))
            bottom.set_title(
                f"change of the last certification per amplifier (red: beyond {n_sigma:g} sigma)", fontsize=10
            )
            bottom.grid(alpha=0.3, axis="y")
        else:
            bottom.text(
                0.5,
                0.5,
                "a single certification: no change yet",
                ha="center",
                va="center",
                transform=bottom.transAxes,
            )
            bottom.set_axis_off()
        figures.append(fig)
    return figures


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:90%}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td.flag{background:#f9d4d4;font-weight:bold}
.drifts li{color:#a00} .ok{color:#060} img{max-width:100%} .scroll{overflow-x:auto}
"""


def history_html(table: Table, *, n_sigma: float = 5.0, title: str | None = None) -> str:
    """A self-contained HTML page of the history: the drifts, then per
    calibration type and quantity the figure (`history_figures`) and the
    table of values (changes beyond ``n_sigma`` highlighted)."""
    instrument = table.meta.get("instrument", "")
    collection = table.meta.get("calib_collection", "")
    title = title or f"{instrument} calibration history ({collection})"
    esc = html.escape
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"
    ]
    if len(table) == 0:
        parts.append(
            f"<p>No certified calibrations of {esc(instrument)} in {esc(collection)}.</p></body></html>"
        )
        return "".join(parts)
    n_datasets = len(set(table["dataset_id"]))
    parts.append(
        f"<p>{n_datasets} certified dataset(s). A change is flagged when it exceeds {n_sigma:g} times "
        "the expected scatter of a change (from the earlier certifications of the amplifier and of "
        "its detector, and the measurement errors).</p>"
    )
    drifts = drift_report(table, n_sigma=n_sigma)
    parts.append("<h2>Changes beyond the previous scatter</h2>")
    if drifts:
        parts.append("<ul class='drifts'>" + "".join(f"<li>{esc(line)}</li>" for line in drifts) + "</ul>")
    else:
        parts.append(f"<p class='ok'>No change beyond {n_sigma:g} sigma.</p>")
    figures = history_figures(table, n_sigma=n_sigma)
    for pivot, fig in zip(_pivots(table, n_sigma), figures, strict=True):
        calib_type, physical_filter, quantity, unit = pivot.group
        heading = _what(calib_type, physical_filter, quantity) + (f" [{unit}]" if unit else "")
        parts.append(
            f"<h2>{esc(heading)}</h2><img alt='{esc(heading)}' src='data:image/png;base64,{_png(fig)}'>"
        )
        head = "".join(f"<th>{esc(d)}</th>" for d in pivot.days)
        parts.append(
            f"<div class='scroll'><table><tr><th>detector</th><th>amplifier</th>{head}"
            "<th>last change</th></tr>"
        )
        for det, amp, cells, last_change in pivot.rows:
            tds = []
            for day in pivot.days:
                value, flag = cells.get(day, (math.nan, False))
                text = "" if day not in cells else _fmt(value)
                tds.append(f"<td class='flag'>{esc(text)}</td>" if flag else f"<td>{esc(text)}</td>")
            change = "" if math.isnan(last_change) else f"{last_change:+.4g}"
            parts.append(
                f"<tr><td>{det}</td><td>{esc(amp or '-')}</td>{''.join(tds)}<td>{esc(change)}</td></tr>"
            )
        parts.append("</table></div>")
    parts.append("</body></html>")
    return "\n".join(parts)
