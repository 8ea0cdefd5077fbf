"""Big-endian pixel bytes of FITS gzip tiles, shuffled or not.

A FITS tile compressed with ``GZIP_1`` holds its pixels as big-endian bytes;
with ``GZIP_2`` (the FITS standard's section 10.4.4) the bytes are shuffled
first: all the most significant bytes of the tile's pixels, then all the
second bytes, and so on, which gzip compresses better.  `pack_tiles` turns
an image into those bytes and `unpack_tiles` turns them back, one pass over
the pixels in one numba call on every core (the numpy transposes and byte
swaps they replace cost ~0.15 s per full-size plane).
"""

from __future__ import annotations

__all__ = ("pack_tiles", "unpack_tiles")

import numpy as np
from numba import njit, prange

_NJIT = dict(cache=True, nogil=True, parallel=True, fastmath=False, error_model="numpy", boundscheck=False)

_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@njit(**_NJIT)
def _transfer(values, stored, tile_pixels, bytepix, shuffle, pack):
    """Copy pixels to their stored bytes (``pack``) or back: byte ``k`` (most
    significant first) of pixel ``i`` of a tile of ``m`` pixels starting at
    byte ``base`` is stored at ``base + k * m + i`` when shuffled, else at
    ``base + i * bytepix + k``."""
    n = values.shape[0]
    ntiles = (n + tile_pixels - 1) // tile_pixels
    for t in prange(ntiles):
        start = t * tile_pixels
        m = min(tile_pixels, n - start)
        base = start * bytepix
        for i in range(m):
            v = np.uint64(values[start + i]) if pack else np.uint64(0)
            for k in range(bytepix):
                j = base + k * m + i if shuffle else base + i * bytepix + k
                if pack:
                    stored[j] = np.uint8((v >> np.uint64(8 * (bytepix - 1 - k))) & np.uint64(255))
                else:
                    v = (v << np.uint64(8)) | np.uint64(stored[j])
            if not pack:
                values[start + i] = v


def _unsigned_view(array: np.ndarray) -> np.ndarray:
    bytepix = array.dtype.itemsize
    if bytepix not in _UNSIGNED:
        raise ValueError(f"{array.dtype} pixels cannot be stored in a FITS tile")
    return array.reshape(-1).view(np.dtype(_UNSIGNED[bytepix]).newbyteorder(array.dtype.byteorder))


def pack_tiles(array: np.ndarray, tile_rows: int, *, shuffle: bool) -> np.ndarray:
    """The stored bytes of an image's tiles of whole rows.

    Parameters
    ----------
    array
        2-d image (any 1-, 2-, 4- or 8-byte dtype, native byte order).
    tile_rows
        Rows per tile (the last tile may have fewer).
    shuffle
        Shuffle each tile's bytes (``GZIP_2``) or not (``GZIP_1``).

    Returns
    -------
    stored
        uint8 array of shape ``(ny, nx * itemsize)``: the bytes of tile
        ``t`` are rows ``t * tile_rows`` to ``(t + 1) * tile_rows`` of it.
    """
    array = np.ascontiguousarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    ny, nx = array.shape
    bytepix = array.dtype.itemsize
    stored = np.empty((ny, nx * bytepix), dtype=np.uint8)
    _transfer(_unsigned_view(array), stored.reshape(-1), max(1, tile_rows) * nx, bytepix, shuffle, True)
    return stored


def unpack_tiles(stored: np.ndarray, out: np.ndarray, tile_rows: int, *, shuffle: bool) -> None:
    """Fill an image from the stored bytes of its tiles (the inverse of
    `pack_tiles`).

    Parameters
    ----------
    stored
        C-contiguous uint8 array of ``out.size * out.itemsize`` bytes.
    out
        C-contiguous 2-d image in native byte order, filled in place.
    tile_rows
        Rows per tile.
    shuffle
        Whether the tiles' bytes are shuffled (``GZIP_2``).
    """
    if not (out.flags.c_contiguous and out.dtype.isnative):
        raise ValueError("unpack_tiles fills a C-contiguous array in native byte order")
    if stored.size != out.size * out.dtype.itemsize:
        raise ValueError(f"{stored.size} stored bytes for {out.size} pixels of {out.dtype}")
    nx = out.shape[-1] if out.ndim else 1
    _transfer(
        _unsigned_view(out),
        np.ascontiguousarray(stored).reshape(-1),
        max(1, tile_rows) * nx,
        out.dtype.itemsize,
        shuffle,
        False,
    )
