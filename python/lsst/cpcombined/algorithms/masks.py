"""Mask planes used throughout cp_combined.

Algorithms use a 2-d ``uint8`` bitmask (bit ``i`` = plane ``PLANES[i]``);
`to_mask` / `from_mask` convert to and from `lsst.images.Mask`, whose
backing array for this schema is ``(ny, nx, 1)`` with the same bits.
"""

from __future__ import annotations

__all__ = ("BIT", "MASK_SCHEMA", "PLANES", "bits", "from_mask", "to_mask")

import numpy as np

from lsst.images import Mask, MaskPlane, MaskSchema

#: Mask planes, in bit order, with their meaning.
PLANES: tuple[tuple[str, str], ...] = (
    ("BAD", "Bad pixel: a known defect, or no usable input remained."),
    ("SAT", "Saturated (at or above the amplifier's saturation level)."),
    ("INTRP", "Value interpolated over (defect or cosmic ray)."),
    ("CR", "Cosmic ray."),
    ("DETECTED", "Source or outlier detected above threshold."),
    ("NO_DATA", "No data (NaN in the raw, or outside the imaging area)."),
    ("SUSPECT", "Suspect value (e.g. near saturation, injected fault)."),
    ("EDGE", "Near the edge of the detector."),
)

#: Bit value of each plane in the 2-d uint8 bitmask.
BIT: dict[str, int] = {name: 1 << i for i, (name, _) in enumerate(PLANES)}

#: The `lsst.images` schema matching `BIT`.
MASK_SCHEMA = MaskSchema([MaskPlane(name, doc) for name, doc in PLANES], dtype=np.uint8)


def bits(*planes: str) -> int:
    """Bitmask selecting the named planes (unknown names raise `KeyError`)."""
    value = 0
    for p in planes:
        value |= BIT[p]
    return value


def to_mask(bitmask: np.ndarray, **kwargs) -> Mask:
    """Wrap a 2-d uint8 bitmask as an `lsst.images.Mask` (keyword arguments
    such as ``bbox`` are passed on)."""
    arr = np.ascontiguousarray(bitmask, dtype=np.uint8)[:, :, np.newaxis]
    return Mask(arr, schema=MASK_SCHEMA, **kwargs)


def from_mask(mask: Mask) -> np.ndarray:
    """Return the 2-d uint8 bitmask of an `lsst.images.Mask`, translating
    planes by name when its schema differs from `MASK_SCHEMA`."""
    if mask.schema == MASK_SCHEMA:
        return np.array(mask.array[:, :, 0], dtype=np.uint8)
    out = np.zeros(mask.array.shape[:2], dtype=np.uint8)
    for name, bit in BIT.items():
        if name in mask.schema.names:
            out[mask.get(name)] |= bit
    return out
