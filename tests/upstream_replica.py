"""A replica of a Science Pipelines butler repository, for tests.

`build_replica` makes a butler repository that looks like the summit's
``/repo/LATISS`` (or USDF's ``/repo/main`` for LSSTComCam) as obs_lsst,
obs_base and cp_pipe leave it, without using any of the package's own
registration, ingest or product-writing code:

- the ``instrument``, ``detector`` and ``physical_filter`` records obs_lsst's
  ``Instrument.register`` writes (`INSTRUMENT_RECORDS`, `DETECTORS`,
  `latiss_physical_filters`, `comcam_physical_filters`);
- the dataset types obs_base and cp_pipe register (`DATASET_TYPES`);
- simulated raw files with camera-like headers, ingested into
  ``<INSTR>/raw/all`` with the ``group``, ``day_obs`` and ``exposure`` records
  obs_base's raw ingest derives from them (`exposure_record`, which follows
  obs_lsst's translation rules), under obs_lsst's raw formatter name;
- bias, dark, flat, defects and PTC "made by cp_pipe": files in the afw
  Exposure FITS layout (`write_afw_exposure`) and the ip_isr table layout
  (`write_isr_table`), with cp_pipe's header conventions and pixel content
  computed from the simulation truth used for the raws, ingested under
  obs_base's formatter names into one generation RUN per type and certified
  into ``<INSTR>/calib/<ticket>``, chained with ``<INSTR>/calib/unbounded``
  under ``<INSTR>/calib`` (DMTN-222).

The formatter names are made importable for the ingest only by the stand-in
modules under ``tests/upstream_standins`` (`upstream_formatter_standins`).

Only the simulation (`lsst.cpcombined.simulation`, the raw-file writer
`lsst.cpcombined.obs.raw.write_raw_file`) comes from the package: it
provides the raw pixels and the truth the calibrations are computed from.

Test modules make module-scoped fixtures with `replica_fixture`
(``latiss_replica = replica_fixture("latiss_replica")``) or call
`build_replica` themselves.
"""

from __future__ import annotations

__all__ = (
    "BIAS_OFFSET_FAULT",
    "CalibFault",
    "DATASET_TYPES",
    "DETECTORS",
    "FORMATTERS",
    "INSTRUMENT_RECORDS",
    "LEGACY_MASK_PLANES",
    "REAL_OBS_PACKAGES",
    "STANDINS_DIR",
    "ReplicaInfo",
    "build_replica",
    "comcam_physical_filters",
    "compute_exposure_id",
    "exposure_record",
    "latiss_physical_filters",
    "latiss_replica",
    "latiss_replica_bias_fault",
    "replica_fixture",
    "upstream_formatter_standins",
    "write_afw_exposure",
    "write_isr_table",
)

import contextlib
import dataclasses
import importlib
import importlib.util
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import astropy.io.fits as fits
import lsst
import numpy as np
import pytest
from astro_metadata_translator.serialize import dates_to_fits
from astropy.table import Table
from astropy.time import Time, TimeDelta
from lsst.cpcombined.obs.raw import write_raw_file
from lsst.cpcombined.simulation import SimulationTruth
from lsst.cpcombined.simulation.sensor import simulate_raw_amps
from lsst.daf.butler import (
    Butler,
    CollectionType,
    DatasetIdGenEnum,
    DatasetRef,
    DatasetType,
    FileDataset,
    Timespan,
)

#: Directory of the stand-in formatter modules.
STANDINS_DIR = Path(__file__).resolve().parent / "upstream_standins"

#: Whether the Science Pipelines' obs packages are installed (then no stand-ins are needed).
REAL_OBS_PACKAGES = importlib.util.find_spec("lsst.obs") is not None

#: Formatter names the Science Pipelines record for each dataset type.
FORMATTERS = {
    "raw": {
        "LATISS": "lsst.obs.lsst.rawFormatter.LatissRawFormatter",
        "LSSTComCam": "lsst.obs.lsst.rawFormatter.LsstComCamRawFormatter",
    },
    "exposure": "lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter",
    "table": "lsst.obs.base.formatters.fitsGeneric.FitsGenericFormatter",
}

# -- identity (obs_lsst's Instrument.register) -----------------------------------------------------

#: The ``instrument`` records obs_lsst writes.
INSTRUMENT_RECORDS: dict[str, dict[str, Any]] = {
    "LATISS": {
        "name": "LATISS",
        "detector_max": 1,
        "visit_max": 7050123199999,
        "exposure_max": 7050123199999,
        "class_name": "lsst.obs.lsst.Latiss",
        "visit_system": 2,
    },
    "LSSTComCam": {
        "name": "LSSTComCam",
        "detector_max": 1000,
        "visit_max": 7050123199999,
        "exposure_max": 7050123199999,
        "class_name": "lsst.obs.lsst.LsstComCam",
        "visit_system": 2,
    },
}

_COMCAM_SERIALS = (
    "ITL-3800C-229", "ITL-3800C-251", "ITL-3800C-215",
    "ITL-3800C-326", "ITL-3800C-283", "ITL-3800C-243",
    "ITL-3800C-319", "ITL-3800C-209", "ITL-3800C-206",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Detector:
    """A ``detector`` record plus the camera serial of the CCD."""

    id: int
    full_name: str
    raft: str | None
    name_in_raft: str
    serial: str

    def record(self, instrument: str) -> dict[str, Any]:
        return {
            "instrument": instrument,
            "id": self.id,
            "full_name": self.full_name,
            "raft": self.raft,
            "name_in_raft": self.name_in_raft,
            "purpose": "SCIENCE",
        }


#: Detectors of each instrument (LATISS: raft null, name_in_raft = full name).
DETECTORS: dict[str, tuple[_Detector, ...]] = {
    "LATISS": (_Detector(0, "RXX_S00", None, "RXX_S00", "ITL-3800C-068"),),
    "LSSTComCam": tuple(
        _Detector(i, f"R22_S{i // 3}{i % 3}", "R22", f"S{i // 3}{i % 3}", _COMCAM_SERIALS[i])
        for i in range(9)
    ),
}

_LATISS_BASE_FILTERS = (
    ("empty", "white"), ("blank_bk7_wg05", "white"), ("KPNO_1111_436nm", "g"), ("KPNO_373A_677nm", "r"),
    ("KPNO_406_828nm", "z"), ("diffuser", "diffuser"), ("unknown", "unknown"), ("BG40", "g"),
    ("BG40_65mm_1", "g"), ("BG40_65mm_2", "g"), ("quadnotch1", "notch"), ("RG610", "r"),
    ("OG550_65mm_1", "g"), ("OG550_65mm_2", "g"), ("FELH0600", "r"), ("SDSSg", "g"), ("SDSSr", "r"),
    ("SDSSi", "i"), ("collimator", "white"), ("cyl_lens", "white"), ("SDSSu_65mm", "u"), ("SDSSg_65mm", "g"),
    ("SDSSr_65mm", "r"), ("SDSSi_65mm", "i"), ("SDSSz_65mm", "z"), ("SDSSy_65mm", "y"),
)  # fmt: skip
_LATISS_GRATINGS = (
    "ronchi90lpmm", "ronchi170lpmm", "empty", "unknown", "holo4_003", "blue300lpmm_qn1", "holo4_001",
    "pinhole_1_1000", "pinhole_1_0500", "pinhole_1_0200", "pinhole_1_0100",
    *(f"pinhole_2_{n}_{size}" for n in range(1, 5) for size in ("1000", "0500", "0200", "0100")),
)  # fmt: skip
#: Gratings that are filters of their own: only combined with ``empty``, with the grating's band.
_LATISS_FILTER_GRATINGS = tuple((f"SDSS{b}_65mm", b) for b in "ugrizy")


def latiss_physical_filters() -> list[tuple[str, str]]:
    """obs_lsst's 707 LATISS ``(physical_filter, band)`` pairs, in
    registration order: the 26 filters on their own, then every filter but
    ``diffuser`` with each of the 27 gratings (the filter's band), the six
    ``empty~SDSSx_65mm`` after ``empty``'s (the grating's band)."""
    out = list(_LATISS_BASE_FILTERS)
    for name, band in _LATISS_BASE_FILTERS:
        if name == "diffuser":
            continue
        out.extend((f"{name}~{grating}", band) for grating in _LATISS_GRATINGS)
        if name == "empty":
            out.extend((f"empty~{grating}", gband) for grating, gband in _LATISS_FILTER_GRATINGS)
    return out


def comcam_physical_filters() -> list[tuple[str, str]]:
    """obs_lsst's 15 LSSTComCam ``(physical_filter, band)`` pairs, in order."""
    return [
        ("empty", "white"), ("none", "white"), ("unknown", "unknown"), ("pinhole", "white"),
        ("OG590_2_5mm", "OG590"), ("u_05", "u"), ("u_02", "u"), ("u_06", "u"), ("g_07", "g"), ("g_01", "g"),
        ("r_03", "r"), ("i_06", "i"), ("z_03", "z"), ("z_02", "z"), ("y_04", "y"),
    ]  # fmt: skip


_PHYSICAL_FILTERS = {"LATISS": latiss_physical_filters, "LSSTComCam": comcam_physical_filters}

# -- dataset types (obs_base / cp_pipe) ---------------------------------------------------------------

#: name -> (dimensions, storage class, is calibration).
DATASET_TYPES: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "raw": (("instrument", "exposure", "detector"), "Exposure", False),
    "camera": (("instrument",), "Camera", True),
    "bias": (("instrument", "detector"), "ExposureF", True),
    "dark": (("instrument", "detector"), "ExposureF", True),
    "flat": (("instrument", "detector", "physical_filter"), "ExposureF", True),
    "defects": (("instrument", "detector"), "Defects", True),
    "ptc": (("instrument", "detector"), "PhotonTransferCurveDataset", True),
}

# -- header translation (obs_lsst's rules, for the headers written here) ----------------------------

_CONTROLLERS = "OCHPQS"
_EMPTY_FILTER_RE = re.compile(r"^empty(_\d+)?$", re.IGNORECASE)
#: Observing day roll-over, seconds after TAI midnight (both instruments from 2020-03).
_DAY_OBS_OFFSET_S = 43200
#: ComCam counts as on the mountain after this date (can_see_sky rule).
_COMCAM_ON_MOUNTAIN = Time("2024-08-24T00:00:00", scale="utc")


def compute_exposure_id(day_obs: int, seq_num: int, controller: str | None) -> int:
    """Rubin exposure id: ``YYYYMMDD`` × 10⁵ + sequence number, plus 1000
    years per controller index in ``OCHPQS`` (``C`` after 2023-10-04 and
    ``P``/``Q``/``S`` after 2025-04-17 get no offset)."""
    if seq_num >= 100_000:
        raise ValueError(f"sequence number {seq_num} too large")
    day = int(day_obs)
    if controller == "C" and day > 20231004 or controller in ("P", "Q", "S") and day > 20250417:
        controller = None
    if controller is not None:
        day += _CONTROLLERS.index(controller) * 10_000_000
    return int(f"{day}{int(seq_num):05d}")


def _defined(header: Mapping[str, Any], key: str) -> bool:
    return key in header and header[key] is not None


def _begin(header: Mapping[str, Any]) -> Time:
    for key in ("MJD-BEG", "DATE-BEG", "MJD-OBS", "DATE-OBS"):
        if _defined(header, key):
            value = header[key]
            return Time(value, format="mjd" if key.startswith("MJD") else "isot", scale="tai")
    raise KeyError("no begin date in header")


def exposure_record(instrument: str, header: Mapping[str, Any]) -> dict[str, Any]:
    """The ``exposure`` record obs_base's raw ingest writes for a raw
    primary header of the form written by this module, following obs_lsst's
    translators (after their header fixes)."""
    latiss = instrument == "LATISS"
    exposure_id = compute_exposure_id(int(header["DAYOBS"]), int(header["SEQNUM"]), header.get("CONTRLLR"))
    begin = _begin(header)
    if latiss:
        exposure_time = float(header["EXPTIME"]) if _defined(header, "EXPTIME") else -1.0
        requested = exposure_time
        dark_time = header.get("DARKTIME")
        dark_time = (
            float(dark_time) if dark_time is not None and dark_time >= exposure_time else exposure_time
        )
        flt = header.get("FILTER")
        flt = "unknown" if flt is None else "empty" if _EMPTY_FILTER_RE.match(str(flt)) else str(flt)
        grating = header.get("GRATING")
        grating = (
            "unknown"
            if grating is None
            else "empty"
            if grating == "" or str(grating).startswith("empty")
            else str(grating)
        )
        physical_filter = f"{flt}~{grating}"
        # LATISS's header fix drops any non-zero SHUTTIME (an exact 0.0 survives).
        shuttime = header.get("SHUTTIME")
        shuttime = None if shuttime else shuttime
    else:
        requested = float(header["EXPTIME"])
        dark_time = float(header["DARKTIME"]) if _defined(header, "DARKTIME") else requested
        parts = [str(header[k]) for k in ("FILTER", "FILTER1", "FILTER2") if _defined(header, k)]
        physical_filter = "~".join("unknown" if p == "" else "none" if p == "NONE" else p for p in parts)
        while physical_filter.endswith("~empty"):
            physical_filter = physical_filter[: -len("~empty")]
        shuttime = header.get("SHUTTIME")
    if _defined(header, "DATE-END"):
        end = Time(header["DATE-END"], format="isot", scale=str(header.get("TIMESYS") or "UTC").lower())
    else:
        end = begin + TimeDelta(max(requested, 0.0), format="sec")
    if end < begin:
        end = begin
    obstype = next((header[k] for k in ("OBSTYPE", "IMGTYPE") if _defined(header, k)), None)
    obstype = str(obstype).lower() if obstype is not None else ("bias" if requested == 0 else "unknown")
    if obstype in ("object", "skyexp"):
        obstype = "science"
    reason = next((header[k] for k in ("REASON", "TESTTYPE") if _defined(header, k)), None)
    reason = str(reason).lower() if reason is not None else ("science" if obstype == "science" else "unknown")
    seq = int(header["SEQNUM"])
    if _defined(header, "CURINDEX"):
        seq_start = seq - int(header["CURINDEX"]) + 1
        seq_end = (
            seq + int(header["MAXINDEX"]) - int(header["CURINDEX"]) if _defined(header, "MAXINDEX") else seq
        )
    else:
        seq_start = seq_end = seq
    # can_see_sky: SHUTTIME 0 -> False; VIGN_MIN; LATISS falls back on the observation type.
    can_see_sky: bool | None
    if not latiss and begin <= _COMCAM_ON_MOUNTAIN:
        can_see_sky = False
    elif shuttime is not None and shuttime == 0.0:
        can_see_sky = False
    elif _defined(header, "VIGN_MIN"):
        can_see_sky = {"FULLY": False, "UNKNOWN": None}.get(str(header["VIGN_MIN"]), True)
    elif latiss and obstype in ("science", "object"):
        can_see_sky = True
    elif latiss and obstype in ("bias", "dark", "flat"):
        can_see_sky = False
    else:
        can_see_sky = None
    simulated = any("SIMULATE" in k and bool(v) for k, v in header.items()) or str(
        header.get("CONTRLLR") or ""
    ) in ("H", "P", "Q", "S")
    return {
        "instrument": instrument,
        "id": exposure_id,
        "obs_id": str(header["OBSID"]),
        "timespan": Timespan(begin, end),
        "exposure_time": float(requested),
        "dark_time": float(dark_time),
        "observation_type": obstype,
        "observation_reason": reason,
        "day_obs": int(header["DAYOBS"]),
        "seq_num": seq,
        "physical_filter": physical_filter,
        "group": str(header["GROUPID"]) if header.get("GROUPID") else str(exposure_id),
        "science_program": str(header["PROGRAM"]) if _defined(header, "PROGRAM") else "unknown",
        "target_name": str(header["OBJECT"]) if _defined(header, "OBJECT") else "UNKNOWN",
        "tracking_ra": None,
        "tracking_dec": None,
        "sky_angle": None,
        "zenith_angle": None,
        "azimuth": None,
        "has_simulated": simulated,
        "seq_start": seq_start,
        "seq_end": seq_end,
        "can_see_sky": can_see_sky,
    }


# -- raw headers ------------------------------------------------------------------------------------

_CAMERA = {
    "LATISS": {"INSTRUME": "LATISS", "TELESCOP": "LSST AuxTelescope", "CAMCODE": "AT"},
    "LSSTComCam": {"INSTRUME": "ComCam", "TELESCOP": "Simonyi Survey Telescope", "CAMCODE": "CC"},
}
#: Sequencer keywords, constant over a run (ISR compares them with the calibrations').
_SEQUENCER = {
    "SEQFILE": "FP_ITL_2s_ir2_v26_no_RG.seq",
    "SEQNAME": "FP_ITL_2s_ir2_v26_no_RG.seq",
    "SEQCKSUM": "1477162166",
}
_READOUT_S = 2.3
_DARK_OVERHEAD_S = 0.3


def _filter_keywords(instrument: str, physical_filter: str, band: str) -> dict[str, Any]:
    if instrument == "LATISS":
        flt, _, grating = physical_filter.partition("~")

        def hdr(name: str) -> str:
            return "empty_1" if name == "empty" else name

        return {
            "GRATING": hdr(grating), "GRATBAND": "EMPTY" if grating == "empty" else grating,
            "FILTBAND": "EMPTY" if flt == "empty" else band, "FILTER": hdr(flt),
        }  # fmt: skip
    return {"FILTBAND": band, "FILTER": physical_filter}


def _raw_header(
    instrument: str, det: _Detector, *, image_type: str, day_obs: int, seq_num: int, begin: Time,
    exposure_time: float, dark_time: float, physical_filter: str, band: str, group: str, index: int,
    count: int,
) -> dict[str, Any]:  # fmt: skip
    """Primary header of a camera raw file (keywords of the 2024 headers)."""
    cam = _CAMERA[instrument]
    obs_id = f"{cam['CAMCODE']}_O_{day_obs}_{seq_num:06d}"
    end = begin + TimeDelta(dark_time, format="sec")
    written = end + TimeDelta(_READOUT_S, format="sec")
    raft, slot = det.full_name.split("_")
    if instrument == "LATISS":
        raft = "R00"  # the camera's raft bay; the translator says RXX
    return {
        "CCD_MANU": "ITL",
        "CCD_TYPE": "3800C",
        "CCDSLOT": slot,
        "RAFTBAY": raft,
        **_SEQUENCER,
        "LSST_NUM": det.serial,
        "DATE": written.isot,
        "MJD": written.mjd,
        "IMGTYPE": image_type.upper(),
        "DATE-OBS": begin.isot,
        "MJD-OBS": begin.mjd,
        "OBSID": obs_id,
        "DATE-BEG": begin.isot,
        "MJD-BEG": begin.mjd,
        "DATE-END": end.isot,
        "MJD-END": end.mjd,
        "GROUPID": group,
        "BUNIT": "adu",
        "TIMESYS": "TAI",
        "INSTRUME": cam["INSTRUME"],
        "TELESCOP": cam["TELESCOP"],
        "OBS-LONG": -70.7476862,
        "OBS-LAT": -30.2447889,
        "OBS-ELEV": 2663.0,
        "FACILITY": "Vera C. Rubin Observatory",
        "TESTTYPE": image_type.upper(),
        "CAMCODE": cam["CAMCODE"],
        "CONTRLLR": "O",
        "DAYOBS": str(day_obs),
        "SEQNUM": seq_num,
        "CURINDEX": index + 1,
        "MAXINDEX": count,
        "OBSANNOT": "",
        "TEMP_SET": -104.15,
        **_filter_keywords(instrument, physical_filter, band),
        "EXPTIME": float(exposure_time),
        "DARKTIME": float(dark_time),
        "SHUTTIME": float(exposure_time) if image_type == "flat" else 0.0,
        "FILENAME": f"{obs_id}_{raft}_{slot}.fits",
        "HEADVER": 2,
    }


# -- afw Exposure FITS and ip_isr tables (our own writers of those layouts) -------------------------

#: afw's mask plane numbering: the default dictionary (0-10) and planes
#: added by ISR and cp_pipe in their order of first use.
LEGACY_MASK_PLANES: dict[str, int] = {
    "BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7, "NO_DATA": 8, "VIGNETTED": 9, "STREAK": 10, "CROSSTALK": 11, "UNMASKEDNAN": 12,
    "ITL_DIP": 13, "PARTLY_VIGNETTED": 14,
}  # fmt: skip

#: Keys afw's reader strips from an exposure's metadata (VisitInfo and
#: ExposureInfo keys): an ISR output read back by cp_pipe lacks them.
_AFW_STRIPPED = frozenset({
    "EXPTIME", "DARKTIME", "DATE-AVG", "TIMESYS", "MJD-AVG-UT1", "AVG-ERA", "ROTTYPE", "OBS-LONG", "OBS-LAT",
    "OBS-ELEV", "AIRTEMP", "AIRPRESS", "HUMIDITY", "INSTRUMENT", "IDNUM", "FOCUSZ", "OBSTYPE", "PROGRAM",
    "REASON", "OBJECT", "HAS-SIMULATED-CONTENT", "EXPID", "MJD-OBS", "DATE-OBS", "DETNAME", "DETSER",
    "EXPINFO_V", "AR_HDU",
})  # fmt: skip


def _key(key: str) -> str:
    """FITS card keyword: HIERARCH for long, spaced or lower-case keys."""
    return key if len(key) <= 8 and key == key.upper() and " " not in key else f"HIERARCH {key}"


def _header(cards: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> fits.Header:
    items = cards.items() if isinstance(cards, Mapping) else cards
    hdr = fits.Header()
    for key, value in items:
        hdr[_key(key)] = value
    return hdr


def write_afw_exposure(
    path: str | Path,
    image: np.ndarray,
    mask: np.ndarray,
    variance: np.ndarray,
    metadata: Mapping[str, Any],
    *,
    visit_info: Mapping[str, Any],
    mask_planes: Mapping[str, int] = LEGACY_MASK_PLANES,
    xy0: tuple[int, int] = (0, 0),
) -> None:
    """Write an Exposure in the layout current afw writes with the butler's
    default (lossless) recipe.

    HDU 0: empty primary holding ``metadata``, then ``EXPINFO_V = 2``,
    ``AR_HDU = 5`` and the ``visit_info`` keys (which replace equal keys of
    the metadata); ``BUNIT`` moves to the extensions (``IMAGE`` gets it,
    ``VARIANCE`` its square, ``MASK`` an undefined value).  HDUs 1-3:
    ``IMAGE`` float32, ``MASK`` int32 with ``MP_<PLANE>`` cards (sorted),
    ``VARIANCE`` float32, each GZIP_2 tile-compressed (one row per tile,
    no quantization) with ``LTV1/2 = -xy0``, ``INHERIT``, ``EXTTYPE``,
    ``EXTNAME`` and the ``A`` offset WCS.  HDU 4: an empty
    ``ARCHIVE_INDEX`` table (an afw archive with no components).
    """
    primary = dict(metadata)
    bunit = primary.pop("BUNIT", None)
    primary["EXPINFO_V"] = 2
    primary["AR_HDU"] = 5
    primary.update(visit_info)
    hdus: list[Any] = [fits.PrimaryHDU(header=_header(primary))]
    for extname, data, dtype in (("IMAGE", image, np.float32), ("MASK", mask, np.int32),
                                 ("VARIANCE", variance, np.float32)):  # fmt: skip
        cards: list[tuple[str, Any]] = [
            ("LTV1", float(-xy0[0])), ("LTV2", float(-xy0[1])), ("INHERIT", True), ("EXTTYPE", extname),
        ]  # fmt: skip
        if bunit is not None:
            cards.append(("BUNIT", {"IMAGE": bunit, "VARIANCE": f"{bunit}**2", "MASK": None}[extname]))
        if extname == "MASK":
            cards += sorted((f"MP_{name}", bit) for name, bit in mask_planes.items())
        cards += [
            ("CTYPE1A", "LINEAR"), ("CTYPE2A", "LINEAR"), ("CRPIX1A", 1.0), ("CRPIX2A", 1.0),
            ("CRVAL1A", float(xy0[0])), ("CRVAL2A", float(xy0[1])),
            ("CUNIT1A", "PIXEL"), ("CUNIT2A", "PIXEL"),
        ]  # fmt: skip
        hdus.append(
            fits.CompImageHDU(
                np.ascontiguousarray(data, dtype=dtype),
                header=_header(cards),
                name=extname,
                compression_type="GZIP_2",
                quantize_level=0.0,
            )  # fmt: skip
        )
    index = fits.BinTableHDU.from_columns(
        [
            fits.Column(name=name, format="J")
            for name in ("id", "cat.archive", "cat.persistable", "row0", "nrows")
        ]
        + [fits.Column(name="name", format="64A"), fits.Column(name="module", format="64A")],
        nrows=0,
        header=_header(
            [("EXTTYPE", "ARCHIVE_INDEX"), ("AR_CATN", 0), ("AR_NCAT", 1), ("AFW_TABLE_VERSION", 3)]
        ),
        name="ARCHIVE_INDEX",
    )
    hdus.append(index)
    fits.HDUList(hdus).writeto(path, overwrite=True)


def write_isr_table(path: str | Path, table: Table, metadata: Mapping[str, Any]) -> None:
    """Write an ip_isr calibration table: an empty primary HDU, then one
    binary table whose header holds ``metadata`` (HIERARCH for long or
    lower-case keys, `None` values dropped)."""
    hdu = fits.table_to_hdu(Table(table, meta={}))
    for key, value in metadata.items():
        if value is not None:
            hdu.header[_key(key)] = value
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)


# -- the calibrations' content (expected cp_pipe products for the truth) ----------------------------


@dataclasses.dataclass(frozen=True)
class CalibFault:
    """A deliberate error in a reference calibration.

    Attributes
    ----------
    calib_type
        ``bias``, ``dark`` or ``flat``.
    amplifiers
        Amplifiers whose pixels are changed.
    offset
        Added to the pixels (the calibration's units: e-, e-/s, or relative).
    scale
        Multiplies the pixels (before the offset).
    detectors
        Detector ids, or `None` for all.
    """

    calib_type: str
    amplifiers: tuple[str, ...] = ("C10",)
    offset: float = 0.0
    scale: float = 1.0
    detectors: tuple[int, ...] | None = None


#: A bias 100 e- too high on amplifier C10 (about ten times the read noise).
BIAS_OFFSET_FAULT = CalibFault("bias", amplifiers=("C10",), offset=100.0)


def _amp_slices(truth: SimulationTruth, amp: str) -> tuple[slice, slice]:
    return truth.layout.geometry(amp).assembled_slices


def _defect_boxes(bad: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Non-overlapping ``(x0, y0, width, height)`` boxes covering ``bad``:
    vertical runs of each column, merged with the same runs of the
    neighbouring columns."""
    runs: dict[tuple[int, int], list[int]] = {}
    for x in range(bad.shape[1]):
        col = np.concatenate(([0], bad[:, x].astype(np.int8), [0]))
        edges = np.flatnonzero(np.diff(col))
        for y0, y1 in zip(edges[::2], edges[1::2], strict=False):
            runs.setdefault((int(y0), int(y1)), []).append(x)
    boxes = []
    for (y0, y1), xs in runs.items():
        start = prev = xs[0]
        for x in xs[1:] + [None]:
            if x is not None and x == prev + 1:
                prev = x
                continue
            boxes.append((start, y0, prev - start + 1, y1 - y0))
            if x is not None:
                start = prev = x
    return sorted(boxes, key=lambda b: (b[1], b[0]))


@dataclasses.dataclass
class _Acquired:
    """One simulated exposure."""

    image_type: str
    exposure_id: int
    exposure_time: float
    dark_time: float
    begin: Time
    headers: dict[int, dict[str, Any]]


def _calibration_pixels(
    truth: SimulationTruth, det_ids: Sequence[int], n_inputs: Mapping[str, int],
    exposure_times: Mapping[str, float],
    fault: CalibFault | None,
) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:  # fmt: skip
    """Expected (image, mask, variance) of the combined bias (e-), dark (e-/s)
    and flat (≈ 1) of each detector.

    bias = gain × fixed bias structure + dark current × bias dark time;
    dark = dark current; flat = illumination × response normalised to a
    mean of 1 over the good pixels (LATISS: per detector; ComCam: over the
    focal plane, keeping the detectors' relative response).  Variances are
    those of a mean of ``n_inputs`` frames.  The mask has ``BAD`` on the
    truth's defects (hot, cold and dead pixels) and nothing else.
    """
    out: dict[str, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
        "bias": {},
        "dark": {},
        "flat": {},
    }
    bad_bit = np.int32(1 << LEGACY_MASK_PLANES["BAD"])
    flats: dict[int, np.ndarray] = {}
    good_sum, good_n = 0.0, 0
    for det in det_ids:
        dt = truth.detector_truth(det)
        gain = dt.amp_value(dt.gain)
        noise2 = dt.amp_value(dt.read_noise) ** 2
        defects = dt.hot_mask | dt.cold_mask
        mask = np.where(defects, bad_bit, np.int32(0)).astype(np.int32)
        bias_dt = _DARK_OVERHEAD_S
        bias = dt.bias_structure * gain + dt.dark_current * bias_dt
        out["bias"][det] = (bias, mask, noise2 / n_inputs["bias"])
        t_dark = exposure_times["dark"] + _DARK_OVERHEAD_S
        dark_var = (noise2 + dt.dark_current * t_dark) / (t_dark**2 * n_inputs["dark"])
        out["dark"][det] = (dt.dark_current.copy(), mask, dark_var)
        flats[det] = dt.flat_field
        good_sum += float(dt.flat_field[~defects].sum())
        good_n += int((~defects).sum())
    fp_mean = good_sum / good_n
    for det in det_ids:
        dt = truth.detector_truth(det)
        defects = dt.hot_mask | dt.cold_mask
        ff = flats[det]
        norm = float(ff[~defects].mean()) if truth.instrument == "LATISS" else fp_mean
        flat = ff / norm
        signal = truth.flat_flux * exposure_times["flat"] * ff
        flat_var = flat**2 / np.maximum(signal, 1.0) / n_inputs["flat"]
        out["flat"][det] = (flat, out["bias"][det][1], flat_var)
    if fault is not None:
        for det, (image, mask, var) in out[fault.calib_type].items():
            if fault.detectors is not None and det not in fault.detectors:
                continue
            image = image.copy()
            for amp in fault.amplifiers:
                sl = _amp_slices(truth, amp)
                image[sl] = image[sl] * fault.scale + fault.offset
            out[fault.calib_type][det] = (image, mask, var)
    return {k: {d: (im.astype(np.float32), m, v.astype(np.float32)) for d, (im, m, v) in v.items()}
            for k, v in out.items()}  # fmt: skip


def _merged_input_header(headers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Keys with the same value in every input (merge mode "drop"), without
    the keys afw strips from an exposure's metadata."""
    first = headers[0]
    return {
        k: v
        for k, v in first.items()
        if k not in _AFW_STRIPPED and all(k in h and h[k] == v for h in headers[1:])
    }


def _calib_metadata(
    truth: SimulationTruth, calib_type: str, det: int, inputs: Sequence[_Acquired], image: np.ndarray,
    mask: np.ndarray, created: Time,
) -> dict[str, Any]:  # fmt: skip
    """Primary metadata of a combined calibration as cp_pipe writes it."""
    dt = truth.detector_truth(det)
    md: dict[str, Any] = {"OBSTYPE": calib_type}
    md["CALIB_CREATION_DATETIME"] = created.utc.strftime("%Y-%m-%dT%H:%M:%S")
    md["CALIB_CREATION_DATE"] = created.utc.strftime("%Y-%m-%d")
    md["CALIB_CREATION_TIME"] = created.utc.strftime("%H:%M:%S UTC")
    isr = {"LSST ISR UNITS": "electron"}
    for amp in dt.gain:
        isr[f"LSST ISR GAIN {amp}"] = float(dt.gain[amp])
        isr[f"LSST ISR READNOISE {amp}"] = float(dt.read_noise[amp])
    merged = _merged_input_header([{**a.headers[det], **isr} for a in inputs])
    md.update({k: v for k, v in merged.items() if k not in md})
    for i, acq in enumerate(inputs):
        mid = acq.begin + TimeDelta(acq.exposure_time / 2.0, format="sec")
        md[f"CPP_INPUT_{i}"] = acq.exposure_id
        md[f"CPP_INPUT_DATE_{i}"] = str(mid.tai.to_value("fits"))
        md[f"CPP_INPUT_EXPT_{i}"] = acq.exposure_time
        md[f"CPP_INPUT_SCALE_{i}"] = {"bias": 1.0, "dark": acq.dark_time, "flat": 1.0}[calib_type]
    ordered = sorted(inputs, key=lambda a: a.begin)
    earliest = ordered[0].begin
    newest = ordered[-1].begin + TimeDelta(ordered[-1].exposure_time, format="sec")
    md.update(dates_to_fits(earliest, newest))
    for amp in dt.gain:
        sl = _amp_slices(truth, amp)
        values = np.nanpercentile(image[sl], [0.0, 5.0, 16.0, 50.0, 84.0, 95.0, 100.0])
        for level, value in zip((0.0, 5.0, 16.0, 50.0, 84.0, 95.0, 100.0), values, strict=False):
            md[f"LSST CALIB {calib_type.upper()} {amp} DISTRIBUTION {level}-PCT"] = float(value)
        md[f"LSST CALIB {calib_type.upper()} {amp} BADPIX-NUM"] = int(np.count_nonzero(mask[sl] & 1))
    if calib_type == "flat":
        md["FLATSRC"] = "DOME"
    return md


def _visit_info(calib_type: str, inputs: Sequence[_Acquired], instrument: str) -> dict[str, Any]:
    """VisitInfo keys afw writes for a combined calibration."""
    ordered = sorted(inputs, key=lambda a: a.begin)
    earliest = ordered[0].begin
    newest = ordered[-1].begin + TimeDelta(ordered[-1].exposure_time, format="sec")
    avg = (earliest + (newest - earliest) / 2.0).tai
    avg.precision = 9
    t = 0.0 if calib_type == "bias" else 1.0
    # UT1 is approximated by UTC (|UT1 - UTC| < 0.9 s): reading the IERS
    # table costs seconds, and nothing reads this key here.
    mjd_ut1 = float(avg.utc.mjd)
    return {
        "EXPTIME": t,
        "DARKTIME": t,
        "DATE-AVG": avg.isot,
        "TIMESYS": "TAI",
        "MJD-AVG-UT1": mjd_ut1,
        "ROTTYPE": "UNKNOWN",
        "INSTRUMENT": instrument,
        "HAS-SIMULATED-CONTENT": False,
    }


def _isr_calib_metadata(
    instrument: str, det: _Detector, obstype: str, schema: str, version: float, calibcls: str, created: Time,
) -> dict[str, Any]:  # fmt: skip
    """IsrCalib metadata (setMetadata + updateMetadata with a calib id and date)."""
    when = created.utc.to_datetime()  # ip_isr writes a naive local time; UTC here
    calibdate = when.isoformat()
    raft, slot = det.full_name.split("_")
    calib_id = " ".join(
        v for v in (f"instrument={instrument}", f"raftName={raft}", f"detectorName={det.full_name}",
                    f"detector={det.id}" if det.id else "", f"calibDate={calibdate}") if v
    )  # fmt: skip
    return {
        "OBSTYPE": obstype,
        f"{obstype}_SCHEMA": schema,
        f"{obstype}_VERSION": version,
        "INSTRUME": instrument,
        "RAFTNAME": raft,
        "SLOTNAME": slot,
        "DETECTOR": det.id,
        "DET_NAME": det.full_name,
        "DET_SER": det.serial,
        "FILTER": None,
        "CALIB_ID": calib_id,
        **_SEQUENCER,
        "CALIBCLS": calibcls,
        "CALIBDATE": calibdate,
        "CALIB_CREATION_DATE": when.date().isoformat(),
        "CALIB_CREATION_TIME": when.time().isoformat(),
    }


def _defects_table(truth: SimulationTruth, det: int, border: int) -> Table:
    dt = truth.detector_truth(det)
    bad = dt.hot_mask | dt.cold_mask
    if border:
        bad = bad.copy()
        bad[:border, :] = bad[-border:, :] = True
        bad[:, :border] = bad[:, -border:] = True
    boxes = _defect_boxes(bad)
    return Table(
        {name: np.array([b[i] for b in boxes], dtype=np.int64)
         for i, name in enumerate(("x0", "y0", "width", "height"))}
    )  # fmt: skip


def _ptc_table(truth: SimulationTruth, det: int, flats: Sequence[_Acquired]) -> Table:
    """A version-2.6 PTC table (one row per amplifier) for the truth: gain,
    read noise (e-), turnoff, and one point per pair of the flats."""
    dt = truth.detector_truth(det)
    amps = list(dt.gain)
    pairs = [(flats[i], flats[i + 1]) for i in range(0, len(flats) - 1, 2)]
    n, side = len(pairs), 8
    rows: dict[str, list[Any]] = {}

    def put(name: str, value: Any) -> None:
        rows.setdefault(name, []).append(value)

    for amp in amps:
        g, rn = dt.gain[amp], dt.read_noise[amp]
        sl = _amp_slices(truth, amp)
        level_e = np.array(
            [truth.flat_flux * a.exposure_time * float(dt.flat_field[sl].mean()) for a, _ in pairs]
        )
        var_e = (np.expm1(2 * truth.a00 * level_e) / (2 * truth.a00) if truth.a00 else level_e) + rn**2
        means, variances = level_e / g, var_e / g**2
        cov = np.zeros((n, side, side))
        cov[:, 0, 0] = variances
        a_matrix = np.zeros((side, side))
        a_matrix[0, 0] = truth.a00
        put("AMPLIFIER_NAME", amp)
        put("PTC_FIT_TYPE", "EXPAPPROXIMATION")
        put("COV_MATRIX_SIDE", side)
        put("COV_MATRIX_SIDE_FULL_COV_FIT", side)
        put(
            "INPUT_EXP_ID_PAIRS", np.array([[a.exposure_id, b.exposure_id] for a, b in pairs], dtype=np.int64)
        )
        put("INPUT_EXP_PAIR_MJD_START", np.array([a.begin.mjd for a, _ in pairs]))
        put("EXP_ID_MASK", np.ones(n, dtype=bool))
        put("EXP_ID_ROLLOFF_MASK", np.zeros(n, dtype=bool))
        put("RAW_EXP_TIMES", np.array([a.exposure_time for a, _ in pairs]))
        put("RAW_MEANS", means)
        put("RAW_VARS", variances)
        put("RAW_DELTAS", np.zeros(n))
        put("ROW_MEAN_VARIANCE", np.full(n, np.nan))
        put("GAIN", g)
        put("GAIN_ERR", 0.001 * g)
        put("GAIN_UNADJUSTED", g)
        put("GAIN_LIST", np.full(n, g))
        put("OVERSCAN_MEDIAN_LIST", np.full(n, dt.bias_level[amp]))
        put("OVERSCAN_MEDIAN", dt.bias_level[amp])
        put("OVERSCAN_MEDIAN_SIGMA", rn / g)
        put("NOISE_LIST", np.full(n, rn))
        put("NOISE", rn)
        put("NOISE_ERR", 0.01 * rn)
        put("HIST_VARS", np.full(n, np.nan))
        put("HIST_CHI2_DOFS", np.full(n, np.nan))
        put("KS_PVALUES", np.full(n, np.nan))
        put("PTC_FIT_PARS", np.array([truth.a00, g, (rn / g) ** 2]))
        put("PTC_FIT_PARS_ERROR", np.array([1e-8, 0.001 * g, 0.01 * (rn / g) ** 2]))
        put("PTC_FIT_CHI_SQ", 1.0)
        put("PTC_TURNOFF", truth.full_well / g)
        put("PTC_TURNOFF_SAMPLING_ERROR", 0.0)
        put("PTC_ROLLOFF", np.nan)
        put("PTC_ROLLOFF_ERROR", np.nan)
        put("PTC_ROLLOFF_TAU", np.nan)
        put("PTC_ROLLOFF_TAU_ERROR", np.nan)
        put("A_MATRIX", a_matrix.ravel())
        put("B_MATRIX", np.zeros(side * side))
        put("NOISE_MATRIX", np.zeros(side * side))
        put("BAD_AMPS", np.array([], dtype="U3"))
        put("PHOTO_CHARGE", np.full(n, np.nan))
        put("PHOTO_CHARGE_DELTAS", np.full(n, np.nan))
        put("AMP_OFFSETS", np.full(n, np.nan))
        put("NPIXEL_COVARIANCES", -1)
        put("COVARIANCES", cov.ravel())
        put("COVARIANCES_MODEL", cov.ravel())
        put("COVARIANCES_SQRT_WEIGHTS", np.ones(n * side * side))
        put("FINAL_VARS", variances)
        put("FINAL_MODEL_VARS", variances)
        put("FINAL_MEANS", means)
    return Table({name: np.array(values) for name, values in rows.items()})


# -- the stand-in formatter modules -----------------------------------------------------------------


def _drop_standin_modules() -> None:
    for name in [m for m in sys.modules if m == "lsst.obs" or m.startswith("lsst.obs.")]:
        del sys.modules[name]
    if "obs" in vars(lsst):
        delattr(lsst, "obs")


@contextlib.contextmanager
def upstream_formatter_standins() -> Iterator[None]:
    """Make obs_base's and obs_lsst's formatter names importable (stand-ins)
    for the duration of the context, then remove them from the import path
    and `sys.modules`.

    Where the Science Pipelines' ``lsst.obs`` is importable the real
    formatters are used and nothing is changed.
    """
    if REAL_OBS_PACKAGES:
        yield
        return
    if any(m == "lsst.obs" or m.startswith("lsst.obs.") for m in sys.modules):
        raise RuntimeError(
            "lsst.obs is already imported; refusing to put the formatter stand-ins on the path"
        )
    root, lsst_dir = str(STANDINS_DIR), str(STANDINS_DIR / "lsst")
    sys.path.append(root)
    lsst.__path__.append(lsst_dir)  # pkgutil-style namespace: its path is fixed at first import
    importlib.invalidate_caches()
    try:
        yield
    finally:
        _drop_standin_modules()
        while lsst_dir in lsst.__path__:
            lsst.__path__.remove(lsst_dir)
        while root in sys.path:
            sys.path.remove(root)
        for path in (root, lsst_dir):
            sys.path_importer_cache.pop(path, None)
        importlib.invalidate_caches()


# -- the builder ------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReplicaInfo:
    """What `build_replica` made.

    Attributes
    ----------
    root
        Repository root.
    instrument
        ``LATISS`` or ``LSSTComCam``.
    truth
        Simulation truth of the raws and the calibrations.
    detectors
        Detector ids with raws and calibrations.
    exposures
        Exposure ids per image type (``bias``, ``dark``, ``flat``), in
        acquisition order.
    physical_filters
        Physical filter per image type.
    raw_run, calib_runs, calib_collection, unbounded_run, calib_chain, defaults_chain
        Collections: raws; one generation RUN per calibration type; the
        CALIBRATION collection certified into; the unbounded RUN; the
        ``<INSTR>/calib`` chain; the ``<INSTR>/defaults`` chain.
    validity
        Validity range of the certified calibrations.
    raw_refs
        Raw dataset refs.
    calib_refs
        Calibration refs per type.
    calibrations
        Expected calibration pixels: type -> detector -> (image, mask,
        variance), in the files' units (bias e-, dark e-/s, flat relative).
    fault
        The fault injected in the calibrations, if any.
    build_seconds
        Wall time of the build.
    """

    root: Path
    instrument: str
    truth: SimulationTruth
    detectors: list[int]
    exposures: dict[str, list[int]]
    physical_filters: dict[str, str]
    raw_run: str
    calib_runs: dict[str, str]
    calib_collection: str
    unbounded_run: str
    calib_chain: str
    defaults_chain: str
    validity: Timespan
    raw_refs: list[DatasetRef]
    calib_refs: dict[str, list[DatasetRef]]
    calibrations: dict[str, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]
    fault: CalibFault | None
    build_seconds: float

    def butler(self, writeable: bool = False, **kwargs: Any) -> Butler:
        """A butler on the replica."""
        return Butler.from_config(str(self.root), writeable=writeable, **kwargs)

    def calib_ref(self, calib_type: str, detector: int = 0) -> DatasetRef:
        """The reference calibration of one type and detector."""
        (ref,) = [r for r in self.calib_refs[calib_type] if r.dataId["detector"] == detector]
        return ref


def build_replica(
    root: str | Path,
    *,
    instrument: str = "LATISS",
    geometry_scale: float = 0.125,
    detectors: Sequence[int] | None = None,
    n_bias: int = 3,
    n_dark: int = 3,
    n_flat: int = 4,
    dark_exptime: float = 30.0,
    flat_exptime: float = 5.0,
    flat_filter: str | None = None,
    day_obs: int = 20240901,
    first_seq_num: int = 10,
    truth_overrides: Mapping[str, Any] | None = None,
    calib_fault: CalibFault | None = None,
    with_ptc: bool = True,
    defect_border: int = 5,
    ticket: str = "DM-00000",
    compress_raws: bool = True,
) -> ReplicaInfo:
    """Build a repository registered, ingested and calibrated as the
    Science Pipelines leave one.

    Parameters
    ----------
    root
        New repository root.
    instrument
        ``LATISS`` or ``LSSTComCam``.
    geometry_scale
        Simulation geometry scale (1 = the real 4072 x 4000 layout).
    detectors
        Detector ids (default: all of the instrument's).
    n_bias, n_dark, n_flat
        Exposures of each type (``n_flat // 2`` pairs go into the PTC).
    dark_exptime, flat_exptime
        Exposure times (s); biases are 0 s.  Dark times add 0.3 s.
    flat_filter
        Physical filter of the flats (default ``SDSSr_65mm~empty`` /
        ``r_03``); biases and darks use the empty position.
    day_obs
        Observing day of the raws (they start at 22:00 TAI that day).
    first_seq_num
        Sequence number of the first exposure.
    truth_overrides
        Simulation truth keys (``seed``, ``gain``, ``faults``...).
    calib_fault
        A fault injected in the reference calibrations (not in the raws).
    with_ptc
        Also write, ingest and certify a PTC.
    defect_border
        Width of the detector border cp_pipe's defect merging marks as
        defects (``edgesAsDefects``).
    ticket
        Ticket name in the calibration collections.
    compress_raws
        Write the raw amplifier HDUs RICE_1 tile-compressed, as the camera
        has done since 2024 (about 0.6 s more per raw file: astropy's
        per-HDU compression overhead).
    """
    start = time.perf_counter()
    if instrument not in INSTRUMENT_RECORDS:
        raise ValueError(f"instrument must be one of {sorted(INSTRUMENT_RECORDS)}, got {instrument!r}")
    if min(n_bias, n_dark, n_flat) < 1:
        raise ValueError(f"need at least one exposure of each type, got {n_bias=}, {n_dark=}, {n_flat=}")
    root = Path(root)
    truth = SimulationTruth(instrument, {"geometry_scale": geometry_scale, **(truth_overrides or {})})
    dets = [d for d in DETECTORS[instrument] if detectors is None or d.id in detectors]
    det_ids = [d.id for d in dets]
    empty = "empty~empty" if instrument == "LATISS" else "empty"
    flat_filter = flat_filter or ("SDSSr_65mm~empty" if instrument == "LATISS" else "r_03")
    bands = dict(_PHYSICAL_FILTERS[instrument]())
    if flat_filter not in bands:
        raise ValueError(f"{flat_filter!r} is not a physical filter of {instrument}")
    filters = {"bias": empty, "dark": empty, "flat": flat_filter}

    Butler.makeRepo(str(root))
    butler = Butler.from_config(str(root), writeable=True)
    registry = butler.registry

    # Instrument.register: one transaction, instrument then detectors then filters.
    with registry.transaction():
        registry.syncDimensionData("instrument", INSTRUMENT_RECORDS[instrument])
        for det in DETECTORS[instrument]:
            registry.syncDimensionData("detector", det.record(instrument))
        for name, band in _PHYSICAL_FILTERS[instrument]():
            registry.syncDimensionData(
                "physical_filter", {"instrument": instrument, "name": name, "band": band}
            )
    dataset_types = {
        name: DatasetType(name, dims, sc, universe=butler.dimensions, isCalibration=calib)
        for name, (dims, sc, calib) in DATASET_TYPES.items()
    }
    for dataset_type in dataset_types.values():
        registry.registerDatasetType(dataset_type)

    staging = Path(tempfile.mkdtemp(prefix="cpc-replica-"))
    try:
        # -- raws ------------------------------------------------------------------------------
        clock = Time(f"{str(day_obs)[:4]}-{str(day_obs)[4:6]}-{str(day_obs)[6:]}T22:00:00", scale="tai")
        seq_num = first_seq_num
        serial = 0
        acquired: dict[str, list[_Acquired]] = {}
        raw_files: list[tuple[Path, dict[str, Any], int]] = []
        plan = (("bias", n_bias, 0.0), ("dark", n_dark, dark_exptime), ("flat", n_flat, flat_exptime))
        for image_type, count, exptime in plan:
            group = clock.isot
            acquired[image_type] = []
            for index in range(count):
                dark_time = exptime + _DARK_OVERHEAD_S
                headers = {}
                for det in dets:
                    hdr = _raw_header(
                        instrument, det, image_type=image_type, day_obs=day_obs, seq_num=seq_num, begin=clock,
                        exposure_time=exptime, dark_time=dark_time, physical_filter=filters[image_type],
                        band=bands[filters[image_type]], group=group, index=index, count=count,
                    )  # fmt: skip
                    amps = simulate_raw_amps(
                        truth,
                        det.id,
                        image_type,
                        exptime,
                        dark_time,
                        index,
                        truth.exposure_rng(serial, det.id),
                    )
                    path = staging / hdr["FILENAME"]
                    write_raw_file(path, hdr, amps, truth.layout, compress=compress_raws)
                    headers[det.id] = hdr
                    raw_files.append((path, hdr, det.id))
                exposure_id = compute_exposure_id(day_obs, seq_num, "O")
                acquired[image_type].append(
                    _Acquired(image_type, exposure_id, exptime, dark_time, clock, headers)
                )
                serial += 1
                seq_num += 1
                clock = clock + TimeDelta(dark_time + _READOUT_S, format="sec")
        last_end = clock

        raw_run = f"{instrument}/raw/all"
        registry.registerRun(raw_run)
        raw_datasets = []
        seen: set[int] = set()
        for path, hdr, det_id in raw_files:
            record = exposure_record(instrument, hdr)
            if record["id"] not in seen:  # the first file of an exposure makes its records
                seen.add(record["id"])
                registry.syncDimensionData("group", {"instrument": instrument, "name": record["group"]})
                registry.syncDimensionData(
                    "day_obs",
                    {"instrument": instrument, "id": record["day_obs"],
                     "timespan": Timespan.from_day_obs(record["day_obs"], _DAY_OBS_OFFSET_S)},
                )  # fmt: skip
                registry.syncDimensionData("exposure", record)
            data_id = registry.expandDataId(instrument=instrument, exposure=record["id"], detector=det_id)
            ref = DatasetRef(
                dataset_types["raw"],
                data_id,
                run=raw_run,
                id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN,
            )
            raw_datasets.append(
                FileDataset(path=str(path), refs=[ref], formatter=FORMATTERS["raw"][instrument])
            )

        # -- calibrations ----------------------------------------------------------------------
        created = last_end + TimeDelta(3600.0, format="sec")
        stamp = created.utc.strftime("%Y%m%dT%H%M%SZ")
        calib_types = ["bias", "dark", "flat", "defects"] + (["ptc"] if with_ptc else [])
        calib_runs = {t: f"{instrument}/calib/{ticket}/{t}Gen.{day_obs}a/{stamp}" for t in calib_types}
        n_inputs = {"bias": n_bias, "dark": n_dark, "flat": n_flat}
        pixels = _calibration_pixels(
            truth, det_ids, n_inputs, {"dark": dark_exptime, "flat": flat_exptime}, calib_fault
        )
        calib_datasets: dict[str, list[FileDataset]] = {t: [] for t in calib_types}
        for det in dets:
            for calib_type in ("bias", "dark", "flat"):
                image, mask, variance = pixels[calib_type][det.id]
                md = _calib_metadata(truth, calib_type, det.id, acquired[calib_type], image, mask, created)
                path = staging / f"{calib_type}_{det.id}.fits"
                write_afw_exposure(
                    path,
                    image,
                    mask,
                    variance,
                    md,
                    visit_info=_visit_info(calib_type, acquired[calib_type], instrument),
                )
                data_id = {"instrument": instrument, "detector": det.id}
                if calib_type == "flat":
                    data_id["physical_filter"] = flat_filter
                ref = DatasetRef(
                    dataset_types[calib_type], registry.expandDataId(data_id), run=calib_runs[calib_type]
                )
                calib_datasets[calib_type].append(
                    FileDataset(path=str(path), refs=[ref], formatter=FORMATTERS["exposure"])
                )
            tables = {
                "defects": (
                    _defects_table(truth, det.id, defect_border),
                    _isr_calib_metadata(
                        instrument, det, "defects", "", 2.0, "lsst.ip.isr.defects.Defects", created
                    ),
                )
            }
            if with_ptc:
                md = _isr_calib_metadata(
                    instrument, det, "PTC", "Gen3 Photon Transfer Curve", 2.6,
                    "lsst.ip.isr.ptcDataset.PhotonTransferCurveDataset", created,
                )  # fmt: skip
                md = {k: ("" if v is None else v) for k, v in md.items()}  # the PTC writes None as ""
                md["PTC_FIT_TYPE"] = "EXPAPPROXIMATION"
                tables["ptc"] = (_ptc_table(truth, det.id, acquired["flat"]), md)
            for calib_type, (table, md) in tables.items():
                path = staging / f"{calib_type}_{det.id}.fits"
                write_isr_table(path, table, md)
                ref = DatasetRef(
                    dataset_types[calib_type],
                    registry.expandDataId(instrument=instrument, detector=det.id),
                    run=calib_runs[calib_type],
                )
                calib_datasets[calib_type].append(
                    FileDataset(path=str(path), refs=[ref], formatter=FORMATTERS["table"])
                )

        with upstream_formatter_standins():
            butler.ingest(*raw_datasets, transfer="move")
            for calib_type in calib_types:
                registry.registerRun(calib_runs[calib_type])
                butler.ingest(*calib_datasets[calib_type], transfer="move")
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    # -- certification and collections (DMTN-222) ----------------------------------------------------
    calib_collection = f"{instrument}/calib/{ticket}"
    unbounded_run = f"{instrument}/calib/unbounded"
    calib_chain = f"{instrument}/calib"
    defaults_chain = f"{instrument}/defaults"
    first_begin = acquired["bias"][0].begin
    validity = Timespan(
        Time(first_begin.strftime("%Y-%m-%dT00:00:00"), scale="tai") - TimeDelta(1, format="jd"),
        Time("2050-01-01T00:00:00", scale="tai"),
    )
    registry.registerCollection(calib_collection, CollectionType.CALIBRATION)
    calib_refs = {t: [d.refs[0] for d in calib_datasets[t]] for t in calib_types}
    for refs in calib_refs.values():
        registry.certify(calib_collection, refs, validity)
    registry.registerRun(unbounded_run)
    registry.registerCollection(calib_chain, CollectionType.CHAINED)
    registry.setCollectionChain(calib_chain, [calib_collection, unbounded_run])
    registry.registerCollection(defaults_chain, CollectionType.CHAINED)
    registry.setCollectionChain(defaults_chain, [raw_run, calib_chain])

    return ReplicaInfo(
        root=root,
        instrument=instrument,
        truth=truth,
        detectors=det_ids,
        exposures={t: [a.exposure_id for a in acquired[t]] for t in acquired},
        physical_filters=filters,
        raw_run=raw_run,
        calib_runs=calib_runs,
        calib_collection=calib_collection,
        unbounded_run=unbounded_run,
        calib_chain=calib_chain,
        defaults_chain=defaults_chain,
        validity=validity,
        raw_refs=[d.refs[0] for d in raw_datasets],
        calib_refs=calib_refs,
        calibrations=pixels,
        fault=calib_fault,
        build_seconds=time.perf_counter() - start,
    )


# -- fixtures ---------------------------------------------------------------------------------------


def replica_fixture(name: str, scope: str = "module", **kwargs: Any) -> Any:
    """A pytest fixture named ``name`` that builds a replica with
    `build_replica` keyword arguments ``kwargs``; assign it to that name in
    a test module (``latiss_replica = replica_fixture("latiss_replica")``)."""

    @pytest.fixture(scope=scope, name=name)
    def _replica(tmp_path_factory: pytest.TempPathFactory) -> ReplicaInfo:
        return build_replica(tmp_path_factory.mktemp(name) / "repo", **kwargs)

    return _replica


#: A LATISS replica (geometry scale 0.125, 3 biases, 3 darks, 4 flats) with
#: correct reference calibrations.
latiss_replica = replica_fixture("latiss_replica")

#: The same LATISS replica whose reference bias is 100 e- too high on
#: amplifier C10 (`BIAS_OFFSET_FAULT`).
latiss_replica_bias_fault = replica_fixture("latiss_replica_bias_fault", calib_fault=BIAS_OFFSET_FAULT)
