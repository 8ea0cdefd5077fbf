"""Butler formatters of cp_combined (besides the raw formatter)."""

from __future__ import annotations

__all__ = ("UncompressedImageFormatter",)

from typing import Any

from lsst.images.formatters import GenericFormatter

#: Planes written without compression.  The mask (written as int32 for afw
#: compatibility) would compress well, but GZIP costs ~0.4 s per full-size
#: write and every row block the combine engine reads decompresses tiles
#: again: ISR outputs are read in blocks, so speed wins over ~65 MB of disk.
_UNCOMPRESSED_PLANES = ("image", "mask", "variance")


class UncompressedImageFormatter(GenericFormatter):
    """`lsst.images` formatter that writes FITS without tile compression.

    Lossless GZIP compression of floating-point noise costs ~4 s per
    full-size detector to write and as much to read back, for little size
    gain; ISR outputs are read back in row blocks by the combine engine and
    calibrations by every ISR quantum, so cp_combined writes them
    uncompressed (~195 MB per full-size detector).  Reading is unchanged.
    """

    def _get_compression_options(self) -> dict[str, Any]:
        return dict.fromkeys(_UNCOMPRESSED_PLANES)
