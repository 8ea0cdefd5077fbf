"""Butler formatters of cp_combined (besides the raw formatter)."""

from __future__ import annotations

__all__ = ("UncompressedImageFormatter",)

from typing import Any

from lsst.images.formatters import GenericFormatter

#: Floating-point planes written without compression; the mask (mostly
#: zeros) keeps lsst.images' default lossless compression.
_UNCOMPRESSED_PLANES = ("image", "variance")


class UncompressedImageFormatter(GenericFormatter):
    """`lsst.images` formatter that writes image and variance planes without
    tile compression.

    Lossless GZIP compression of floating-point noise costs ~4 s per
    full-size detector to write and as much to read back, for little size
    gain; ISR outputs and combined calibrations are read many times (every
    verification quantum reads the calibration under test), so cp_combined
    writes those planes uncompressed.  The mask keeps the default lossless
    compression (cheap: it is mostly zeros).  Reading is unchanged.
    """

    def _get_compression_options(self) -> dict[str, Any]:
        return dict.fromkeys(_UNCOMPRESSED_PLANES)
