"""The stored bytes of FITS gzip tiles (`lsst.cpcombined.algorithms.byteshuffle`)
against the FITS convention written out with numpy."""

from __future__ import annotations

import numpy as np
import pytest
from lsst.cpcombined.algorithms.byteshuffle import pack_tiles, unpack_tiles


def _reference(array: np.ndarray, tile_rows: int, shuffle: bool) -> np.ndarray:
    """Each tile's pixels big-endian; shuffled: byte 0 of every pixel, then byte 1..."""
    ny, nx = array.shape
    big = array.astype(array.dtype.newbyteorder(">"))
    out = []
    for y0 in range(0, ny, tile_rows):
        tile = big[y0 : y0 + tile_rows].reshape(-1).view(np.uint8).reshape(-1, array.dtype.itemsize)
        out.append((tile.T if shuffle else tile).reshape(-1))
    return np.concatenate(out)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64, np.int64])
@pytest.mark.parametrize("tile_rows", [1, 3, 7])
@pytest.mark.parametrize("shuffle", [True, False])
def test_pack_and_unpack_follow_the_convention(dtype, tile_rows, shuffle):
    rng = np.random.default_rng(5)
    array = (rng.normal(0, 1000, (10, 13))).astype(dtype)
    if np.dtype(dtype).kind == "f":
        array[2, 3], array[4, 5] = np.nan, -np.inf
    stored = pack_tiles(array, tile_rows, shuffle=shuffle)
    assert stored.shape == (10, 13 * array.dtype.itemsize)
    np.testing.assert_array_equal(stored.reshape(-1), _reference(array, tile_rows, shuffle))
    back = np.empty_like(array)
    unpack_tiles(stored, back, tile_rows, shuffle=shuffle)
    assert back.tobytes() == array.tobytes()  # bit-exact, NaN payloads included


def test_unpack_checks_its_arguments():
    with pytest.raises(ValueError, match="stored bytes"):
        unpack_tiles(np.zeros(7, np.uint8), np.empty((2, 2), np.float32), 1, shuffle=True)
    with pytest.raises(ValueError, match="native byte order"):
        unpack_tiles(np.zeros(16, np.uint8), np.empty((2, 2), ">f4"), 1, shuffle=True)
