"""Conversions between the algorithms' numpy arrays and the butler products
(`lsst.images.MaskedImage` with scalar metadata), the metadata every
combined calibration carries, and reading calibrations in tasks.

Combined biases, darks and flats carry cp_pipe's header conventions (see
`calib_exposure_metadata`, `write_input_provenance`, `write_percentiles`):

* ``OBSTYPE`` (``bias``, ``dark``, ``flat``), ``INSTRUME``, ``DETECTOR``,
  ``DET_NAME``, ``DET_SER`` (and ``FILTER`` on flats);
* ``CALIB_CREATION_DATETIME`` (UTC), ``CALIB_CREATION_DATE`` and
  ``CALIB_CREATION_TIME`` (local time), which the Science Pipelines' ISR
  reads for its provenance;
* ``LSST ISR UNITS`` (``electron``), ``EXPTIME`` = ``DARKTIME`` = 0 for a
  bias and 1 for a dark (electrons per second) and a flat, ``FLATSRC`` on
  flats;
* ``TIMESYS`` = TAI and ``DATE-OBS``/``DATE-BEG``/``DATE-END``/``DATE-AVG``
  with their ``MJD-*``, spanning the inputs;
* per input ``i`` (from 0): ``CPP_INPUT_<i>`` (exposure id),
  ``CPP_INPUT_DATE_<i>`` (TAI mid-exposure), ``CPP_INPUT_EXPT_<i>``
  (exposure time), ``CPP_INPUT_SCALE_<i>`` (factor the input was divided
  by), plus cp_combined's ``CPC_INPUT_OBSID_<i>`` and
  ``CPC_INPUT_DARKTIME_<i>``;
* per amplifier ``LSST CALIB <TYPE> <amp> DISTRIBUTION <pct>-PCT`` (pct
  ``0.0`` .. ``100.0``) and ``LSST CALIB <TYPE> <amp> BADPIX-NUM``;
* cp_combined's combination settings as ``CPC_*`` keys.

`read_input_provenance` and `read_percentiles` turn them back into
structures (for cp_pipe's products too, without the ``CPC_`` extras).
"""

from __future__ import annotations

__all__ = (
    "CALIBRATION_READERS",
    "PERCENTILES",
    "ButlerBlockSource",
    "amp_percentiles",
    "calib_exposure_metadata",
    "creation_metadata",
    "from_masked_image",
    "get_inputs_caching_calibrations",
    "input_date_metadata",
    "read_calibration",
    "read_header",
    "read_input_provenance",
    "read_percentiles",
    "to_masked_image",
    "write_bad_pixel_counts",
    "write_input_provenance",
    "write_percentiles",
)

import collections
import datetime
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import astropy.time
import astropy.units as u
import numpy as np

from lsst.images import Box, Image, MaskedImage

from ..algorithms.combine import BlockSource, SourceBlock
from ..algorithms.masks import bits, from_mask, to_mask
from .calib_tables import read_defects, read_ptc
from .exposure_fits import read_exposure_fits
from .files import read_dataset_file

#: Percentiles recorded per amplifier in every combined calibration.
PERCENTILES: tuple[float, ...] = (0.0, 5.0, 16.0, 50.0, 84.0, 95.0, 100.0)

#: How a task reads each calibration connection's file (see
#: `get_inputs_caching_calibrations`).
CALIBRATION_READERS: dict[str, Callable[[str], Any]] = {
    "bias": read_exposure_fits,
    "dark": read_exposure_fits,
    "flat": read_exposure_fits,
    "defects": read_defects,
    "ptc": read_ptc,
}


def to_masked_image(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    *,
    unit: u.UnitBase | None,
    metadata: Mapping[str, Any] | None = None,
) -> MaskedImage:
    """Build an `lsst.images.MaskedImage` from plain arrays.

    Parameters
    ----------
    image, variance
        2-d float arrays (stored as float32).
    mask
        2-d uint8 bitmask (`lsst.cpcombined.algorithms.masks`).
    unit
        Unit of the image (variance gets its square); `None` for
        dimensionless products such as flats.
    metadata
        Scalar metadata.
    """
    img = Image(np.asarray(image, dtype=np.float32), unit=unit)
    var = Image(np.asarray(variance, dtype=np.float32), unit=None if unit is None else unit**2)
    return MaskedImage(img, mask=to_mask(mask), variance=var, metadata=dict(metadata or {}))


def from_masked_image(mi: MaskedImage) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(image, variance, bitmask)`` arrays of a masked image."""
    return mi.image.array, mi.variance.array, from_mask(mi.mask)


# ---------------------------------------------------------------------------
# metadata of combined calibrations
# ---------------------------------------------------------------------------


def creation_metadata(now: datetime.datetime | None = None) -> dict[str, str]:
    """cp_pipe's creation keys: ``CALIB_CREATION_DATETIME`` (UTC,
    ``YYYY-MM-DDThh:mm:ss``), ``CALIB_CREATION_DATE`` (local date) and
    ``CALIB_CREATION_TIME`` (local ``%X %Z``)."""
    now = (now or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    local = now.astimezone()
    return {
        "CALIB_CREATION_DATETIME": now.strftime("%Y-%m-%dT%H:%M:%S"),
        "CALIB_CREATION_DATE": local.strftime("%Y-%m-%d"),
        "CALIB_CREATION_TIME": local.strftime("%X %Z"),
    }


def calib_exposure_metadata(
    calib_type: str,
    *,
    instrument: str,
    detector: int,
    detector_name: str,
    detector_serial: str | None = None,
    physical_filter: str | None = None,
    units: str = "electron",
    flat_source: str | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """Identity, creation, unit and time keys of a combined bias, dark or
    flat (cp_pipe's conventions; see the module documentation).

    Parameters
    ----------
    calib_type
        ``bias``, ``dark`` or ``flat`` (``OBSTYPE``).
    instrument, detector, detector_name, detector_serial, physical_filter
        Identity (``INSTRUME``, ``DETECTOR``, ``DET_NAME``, ``DET_SER``,
        ``FILTER``).
    units
        ``LSST ISR UNITS``: units of the ISR-processed inputs (``electron``
        or ``adu``).
    flat_source
        ``FLATSRC`` of a flat (``DOME``, ``TWILIGHT``...).
    now
        Creation time (default now).
    """
    md: dict[str, Any] = {
        "OBSTYPE": calib_type,
        "INSTRUME": instrument,
        "DETECTOR": int(detector),
        "DET_NAME": detector_name,
    }
    if detector_serial:
        md["DET_SER"] = detector_serial
    if physical_filter is not None:
        md["FILTER"] = physical_filter
    md.update(creation_metadata(now))
    md["LSST ISR UNITS"] = units
    # VisitInfo keys of cp_pipe's products: a bias has no exposure time, a
    # dark is per second of dark time, a flat is per unit of exposure.
    md["EXPTIME"] = md["DARKTIME"] = 0.0 if calib_type == "bias" else 1.0
    if calib_type == "flat":
        md["FLATSRC"] = flat_source or "UNKNOWN"
    return md


def _time(value: Any, timesys: str | None) -> astropy.time.Time | None:
    if value is None or value == "":
        return None
    scale = "utc" if str(timesys or "TAI").strip().upper() == "UTC" else "tai"
    try:
        return astropy.time.Time(str(value), format="isot", scale=scale).tai
    except ValueError:
        return None


def input_date_metadata(inputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``TIMESYS`` (TAI) and ``DATE-``/``MJD-`` ``OBS``, ``BEG``, ``END``,
    ``AVG`` spanning the inputs: from the earliest start to the latest
    start plus its exposure time.

    Parameters
    ----------
    inputs
        Per input: ``date`` (start, ISO), ``timesys`` (``TAI`` by default)
        and ``exptime`` (s).

    Returns
    -------
    cards
        Empty if no input has a date.
    """
    spans = []
    for item in inputs:
        begin = _time(item.get("date"), item.get("timesys"))
        if begin is None:
            continue
        exptime = float(item.get("exptime") or 0.0)
        spans.append((begin, begin + exptime * u.s if math.isfinite(exptime) else begin))
    if not spans:
        return {}
    begin = min(b for b, _ in spans)
    end = max(e for _, e in spans)
    avg = begin + (end - begin) / 2
    cards: dict[str, Any] = {"TIMESYS": "TAI"}
    for fragment, date in (("OBS", begin), ("BEG", begin), ("END", end), ("AVG", avg)):
        cards[f"DATE-{fragment}"] = date.tai.isot
        cards[f"MJD-{fragment}"] = float(date.tai.mjd)
    return cards


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, (np.floating, np.integer, np.bool_)) else value


def write_input_provenance(metadata: dict[str, Any], inputs: Sequence[Mapping[str, Any]]) -> None:
    """Record the inputs of a combined calibration, as cp_pipe does.

    Parameters
    ----------
    metadata
        Updated in place.
    inputs
        Per input: ``exposure``, ``date`` (start, ISO; ``timesys``),
        ``exptime``, ``darktime``, ``scale``, ``obsid``.
    """
    for i, item in enumerate(inputs):
        metadata[f"CPP_INPUT_{i}"] = _scalar(item.get("exposure"))
        begin = _time(item.get("date"), item.get("timesys"))
        exptime = _scalar(item.get("exptime"))
        if begin is not None:
            half = 0.5 * float(exptime) if exptime is not None and math.isfinite(float(exptime)) else 0.0
            metadata[f"CPP_INPUT_DATE_{i}"] = (begin + half * u.s).tai.to_value("fits")
        metadata[f"CPP_INPUT_EXPT_{i}"] = exptime
        metadata[f"CPP_INPUT_SCALE_{i}"] = _scalar(item.get("scale"))
        metadata[f"CPC_INPUT_OBSID_{i}"] = item.get("obsid")
        metadata[f"CPC_INPUT_DARKTIME_{i}"] = _scalar(item.get("darktime"))


def read_input_provenance(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The inputs of a combined calibration (cp_pipe's or cp_combined's).

    Returns
    -------
    inputs
        In input order: ``exposure``, ``date`` (TAI mid-exposure),
        ``exptime``, ``scale``, and (cp_combined's products; `None`
        otherwise) ``obsid``, ``darktime``.
    """
    indices = sorted(int(m.group(1)) for key in metadata if (m := re.fullmatch(r"CPP_INPUT_(\d+)", key)))
    return [
        {
            "exposure": metadata.get(f"CPP_INPUT_{i}"),
            "obsid": metadata.get(f"CPC_INPUT_OBSID_{i}"),
            "date": metadata.get(f"CPP_INPUT_DATE_{i}"),
            "exptime": metadata.get(f"CPP_INPUT_EXPT_{i}"),
            "darktime": metadata.get(f"CPC_INPUT_DARKTIME_{i}"),
            "scale": metadata.get(f"CPP_INPUT_SCALE_{i}"),
        }
        for i in indices
    ]


def amp_percentiles(
    image: np.ndarray,
    mask: np.ndarray,
    regions: Mapping[str, tuple[slice, slice]],
    bad_bits: int | None = None,
) -> dict[str, list[float]]:
    """Percentiles `PERCENTILES` of the good, finite pixels of each
    amplifier (NaN for an amplifier without any)."""
    bad = bits("BAD", "NO_DATA") if bad_bits is None else bad_bits
    out: dict[str, list[float]] = {}
    for amp, (ys, xs) in regions.items():
        values = image[ys, xs][((mask[ys, xs] & bad) == 0) & np.isfinite(image[ys, xs])]
        if values.size:
            out[amp] = [float(v) for v in np.percentile(values, PERCENTILES)]
        else:
            out[amp] = [float("nan")] * len(PERCENTILES)
    return out


def write_percentiles(
    metadata: dict[str, Any], calib_type: str, percentiles: Mapping[str, Sequence[float]]
) -> None:
    """Store per-amp percentiles as cp_pipe's
    ``LSST CALIB <TYPE> <amp> DISTRIBUTION <pct>-PCT`` keys."""
    for amp, values in percentiles.items():
        for p, v in zip(PERCENTILES, values, strict=True):
            metadata[f"LSST CALIB {calib_type.upper()} {amp} DISTRIBUTION {float(p)}-PCT"] = float(v)


def write_bad_pixel_counts(metadata: dict[str, Any], calib_type: str, counts: Mapping[str, int]) -> None:
    """Store per-amp counts of ``BAD`` pixels as cp_pipe's
    ``LSST CALIB <TYPE> <amp> BADPIX-NUM`` keys."""
    for amp, n in counts.items():
        metadata[f"LSST CALIB {calib_type.upper()} {amp} BADPIX-NUM"] = int(n)


_PERCENTILE_KEY = re.compile(r"LSST CALIB (\S+) (\S+) DISTRIBUTION ([0-9.]+)-PCT")


def read_percentiles(metadata: Mapping[str, Any]) -> dict[str, dict[float, float]]:
    """Per-amp percentiles of a combined calibration (cp_pipe's
    ``DISTRIBUTION`` keys): ``{amp: {percentile: value}}``; integral
    percentiles are `int` keys (``0``, ``50``, ``100``)."""
    out: dict[str, dict[float, float]] = {}
    for key, value in metadata.items():
        m = _PERCENTILE_KEY.fullmatch(key)
        if m is None:
            continue
        pct = float(m.group(3))
        out.setdefault(m.group(2), {})[int(pct) if pct.is_integer() else pct] = (
            float("nan") if value is None else float(value)
        )
    return out


class ButlerBlockSource(BlockSource):
    """A combine-engine input read from the butler one row block at a time.

    Parameters
    ----------
    handle
        Deferred dataset handle of a `lsst.images.MaskedImage` dataset.
    shape
        ``(ny, nx)`` of the image.
    with_variance
        Also read the variance plane (for propagated variances).
    """

    def __init__(self, handle: Any, shape: tuple[int, int], with_variance: bool = False) -> None:
        self._handle = handle
        self._shape = (int(shape[0]), int(shape[1]))
        self._with_variance = with_variance

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def has_mask(self) -> bool:
        return True

    @property
    def has_variance(self) -> bool:
        return self._with_variance

    def read_block(self, y0: int, y1: int) -> SourceBlock:
        bbox = Box.factory[y0:y1, 0 : self._shape[1]]
        if self._with_variance:
            block = self._handle.get(parameters={"bbox": bbox})
            return SourceBlock(
                image=block.image.array, mask=from_mask(block.mask), variance=block.variance.array
            )
        # Only the planes used: the variance plane is not read (nor decoded).
        parts = self._handle.get(
            component="components", parameters={"components": ["image", "mask"], "bbox": bbox}
        )
        if not isinstance(parts, Mapping):  # a handle without the component (e.g. in memory)
            parts = {"image": parts.image, "mask": parts.mask}
        return SourceBlock(image=parts["image"].array, mask=from_mask(parts["mask"]), variance=None)


def read_header(handle: Any) -> tuple[dict[str, Any], tuple[int, int]]:
    """Metadata and full shape of a stored `lsst.images.MaskedImage`,
    reading a single pixel."""
    pixel = handle.get(parameters={"bbox": Box.factory[0:1, 0:1]})
    bbox = handle.get(component="bbox")
    return dict(pixel.metadata), (bbox.y.size, bbox.x.size)


def _ref_id(ref: Any) -> Any:
    """Dataset id of a `~lsst.daf.butler.DatasetRef` or of a deferred
    connection's ``DeferredDatasetRef``."""
    return getattr(ref, "datasetRef", ref).id


def read_calibration(handle: Any, name: str) -> Any:
    """Read a calibration through its file with the reader of its
    connection name (`CALIBRATION_READERS`); a handle that is already the
    in-memory object (a connection without ``deferLoad``) is returned as
    is.

    Parameters
    ----------
    handle
        `~lsst.daf.butler.DeferredDatasetHandle` (or the object).
    name
        Connection name: ``bias``, ``dark``, ``flat``, ``defects``, ``ptc``.
    """
    if not (hasattr(handle, "butler") and hasattr(handle, "ref")):
        return handle
    return read_dataset_file(handle, CALIBRATION_READERS[name])


class _CalibrationCache:
    """A few calibrations kept in memory between quanta of one process.

    Every ISR-style quantum (one per exposure and detector) reads the same
    combined calibration; keeping the last few by dataset id avoids reading
    ~130 MB per quantum again.  Entries are shared: callers must not modify
    them.
    """

    def __init__(self, max_entries: int = 3) -> None:
        self._max = max_entries
        self._items: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, butlerQC: Any, ref: Any, name: str) -> Any:
        """The calibration of ``ref`` (a connection ``name``), read once.

        ``butlerQC.get`` is called every time, also when the calibration is
        cached: it is what records the dataset as an input the quantum used
        (the provenance written into every output and kept by the butler);
        for a deferred connection it only returns a handle, the file is read
        on a cache miss alone.
        """
        handle = butlerQC.get(ref)
        key = _ref_id(ref)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = read_calibration(handle, name)
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._max:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._items.clear()


_CALIB_CACHE = _CalibrationCache()


def get_inputs_caching_calibrations(
    butlerQC: Any, inputRefs: Any, cached: Iterable[str] = ("bias", "dark", "flat")
) -> dict[str, Any]:
    """``butlerQC.get(inputRefs)``, with the calibrations (connections
    named in `CALIBRATION_READERS`: deferred handles of Science Pipelines
    storage classes) read through their files into in-memory objects
    (`lsst.images.MaskedImage` for bias/dark/flat, `astropy.table.Table`
    for defects/ptc).  Single-dataset connections named in ``cached`` come
    from a small per-process cache keyed by dataset id (read-only use).
    Other connections (e.g. a deferred raw) are returned as
    ``butlerQC.get`` returns them.
    """
    names = set(cached)
    inputs: dict[str, Any] = {}
    for name, refs in inputRefs:
        if name not in CALIBRATION_READERS or refs is None:
            inputs[name] = butlerQC.get(refs)
        elif isinstance(refs, (list, tuple)):
            inputs[name] = [read_calibration(butlerQC.get(r), name) for r in refs]
        elif name in names:
            inputs[name] = _CALIB_CACHE.get(butlerQC, refs, name)
        else:
            inputs[name] = read_calibration(butlerQC.get(refs), name)
    return inputs
