"""Conversions between the algorithms' numpy arrays and the butler products
(`lsst.images.MaskedImage` with scalar metadata), and the provenance
metadata every combined calibration carries.

Metadata values of `lsst.images` objects are scalars, so lists are stored
as numbered keys: ``CP_INPUT_000_EXPOSURE``, ``CP_INPUT_000_DATE``,
``CP_INPUT_000_EXPTIME``, ``CP_INPUT_000_SCALE``... and per-amp percentiles
as ``CP_PCT_C10_P050``.  `read_input_provenance` and `read_percentiles`
turn them back into structures.
"""

from __future__ import annotations

__all__ = (
    "PERCENTILES",
    "ButlerBlockSource",
    "get_inputs_caching_calibrations",
    "amp_percentiles",
    "calib_metadata",
    "from_masked_image",
    "read_header",
    "read_input_provenance",
    "read_percentiles",
    "to_masked_image",
    "write_input_provenance",
    "write_percentiles",
)

import collections
import datetime
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import astropy.units as u
import numpy as np

from lsst.images import Box, Image, MaskedImage

from ..algorithms.combine import BlockSource, SourceBlock
from ..algorithms.masks import bits, from_mask, to_mask

#: Percentiles recorded per amplifier in every combined calibration.
PERCENTILES: tuple[int, ...] = (0, 5, 16, 50, 84, 95, 100)

_INPUT_KEYS = ("EXPOSURE", "OBSID", "DATE", "EXPTIME", "DARKTIME", "SCALE")


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


def write_input_provenance(metadata: dict[str, Any], inputs: Sequence[Mapping[str, Any]]) -> None:
    """Record each input's exposure id, obs id, date, exposure time, dark
    time and scale factor in ``metadata`` (numbered keys)."""
    metadata["CP_NINPUTS"] = len(inputs)
    for i, item in enumerate(inputs):
        for key in _INPUT_KEYS:
            value = item.get(key.lower())
            if isinstance(value, (np.floating, np.integer)):
                value = value.item()
            metadata[f"CP_INPUT_{i:03d}_{key}"] = value


def read_input_provenance(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Inverse of `write_input_provenance`."""
    n = int(metadata.get("CP_NINPUTS", 0))
    return [
        {key.lower(): metadata.get(f"CP_INPUT_{i:03d}_{key}") for key in _INPUT_KEYS} for i in range(n)
    ]


def amp_percentiles(
    image: np.ndarray,
    mask: np.ndarray,
    regions: Mapping[str, tuple[slice, slice]],
    bad_bits: int | None = None,
) -> dict[str, list[float]]:
    """Percentiles `PERCENTILES` of the good pixels of each amplifier."""
    bad = bits("BAD", "NO_DATA") if bad_bits is None else bad_bits
    out: dict[str, list[float]] = {}
    for amp, (ys, xs) in regions.items():
        values = image[ys, xs][((mask[ys, xs] & bad) == 0) & np.isfinite(image[ys, xs])]
        if values.size:
            out[amp] = [float(v) for v in np.percentile(values, PERCENTILES)]
        else:
            out[amp] = [float("nan")] * len(PERCENTILES)
    return out


def write_percentiles(metadata: dict[str, Any], percentiles: Mapping[str, Sequence[float]]) -> None:
    """Store per-amp percentiles as ``CP_PCT_<amp>_P<nnn>`` keys."""
    for amp, values in percentiles.items():
        for p, v in zip(PERCENTILES, values):
            metadata[f"CP_PCT_{amp}_P{p:03d}"] = float(v)


def read_percentiles(metadata: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """Inverse of `write_percentiles`: ``{amp: {percentile: value}}``."""
    out: dict[str, dict[int, float]] = {}
    for key, value in metadata.items():
        if key.startswith("CP_PCT_"):
            amp, p = key.removeprefix("CP_PCT_").rsplit("_P", 1)
            out.setdefault(amp, {})[int(p)] = value
    return out


def calib_metadata(
    calib_type: str,
    *,
    instrument: str,
    detector: int,
    detector_name: str,
    physical_filter: str | None = None,
    units: str,
) -> dict[str, Any]:
    """Identity keys of a calibration product."""
    from .. import __version__

    md: dict[str, Any] = {
        "CALIB_TYPE": calib_type,
        "CALIB_INSTRUMENT": instrument,
        "CALIB_DETECTOR": detector,
        "CALIB_DETECTOR_NAME": detector_name,
        "CALIB_UNITS": units,
        "CALIB_CREATION_DATE": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "CP_VERSION": str(__version__),
    }
    if physical_filter is not None:
        md["CALIB_FILTER"] = physical_filter
    return md


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
        block = self._handle.get(parameters={"bbox": Box.factory[y0:y1, 0 : self._shape[1]]})
        return SourceBlock(
            image=block.image.array,
            mask=from_mask(block.mask),
            variance=block.variance.array if self._with_variance else None,
        )


def read_header(handle: Any) -> tuple[dict[str, Any], tuple[int, int]]:
    """Metadata and full shape of a stored `lsst.images.MaskedImage`,
    reading a single pixel."""
    pixel = handle.get(parameters={"bbox": Box.factory[0:1, 0:1]})
    bbox = handle.get(component="bbox")
    return dict(pixel.metadata), (bbox.y.size, bbox.x.size)


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

    def get(self, butlerQC: Any, ref: Any) -> Any:
        with self._lock:
            if ref.id in self._items:
                self._items.move_to_end(ref.id)
                return self._items[ref.id]
        value = butlerQC.get(ref)
        with self._lock:
            self._items[ref.id] = value
            while len(self._items) > self._max:
                self._items.popitem(last=False)
        return value


_CALIB_CACHE = _CalibrationCache()


def get_inputs_caching_calibrations(
    butlerQC: Any, inputRefs: Any, cached: Iterable[str] = ("bias", "dark", "flat")
) -> dict[str, Any]:
    """``butlerQC.get(inputRefs)``, but the single-dataset connections named
    in ``cached`` come from a small per-process cache (read-only use)."""
    from lsst.daf.butler import DatasetRef

    names = set(cached)
    inputs: dict[str, Any] = {}
    for name, refs in inputRefs:
        if name in names and isinstance(refs, DatasetRef):
            inputs[name] = _CALIB_CACHE.get(butlerQC, refs)
        else:
            inputs[name] = butlerQC.get(refs)
    return inputs
