"""Rice coding of integer pixels, as FITS tile compression (``RICE_1``)
defines it.

The FITS tiled-image convention (Pence et al. 2009, the FITS standard's
section 10.4) codes each tile of integers in blocks of 32 pixels: the first
pixel's value is written raw (``8 * bytepix`` bits, big-endian), then every
block starts with a code ``k`` of ``fsbits`` bits (3, 4 or 5 bits for 1-, 2-
or 4-byte pixels) followed by the block's differences between consecutive
pixels, each mapped to a non-negative integer (``2d`` for ``d >= 0``,
``-2d - 1`` otherwise, differences taken modulo ``2**(8 * bytepix)``):

* ``k = 0``: every difference of the block is zero, nothing follows;
* ``k = fsmax + 1`` (``fsmax`` = 6, 14 or 25): each value follows raw in
  ``8 * bytepix`` bits;
* otherwise, with ``fs = k - 1``, each value ``v`` follows as ``v >> fs``
  zero bits, a one bit and the low ``fs`` bits of ``v``.

Bits are written most significant first and the tile is padded to a whole
byte.  The encoder chooses ``fs`` per block from the mean of its values as
CFITSIO does, so its output is byte-identical to CFITSIO's and astropy's,
and any conforming decoder reads it.

`encode_rows` and `decode_rows` code a 2-d array as one tile per row (or per
``rows_per_tile`` rows), in one numba call: the per-tile overhead of a
Python loop (astropy's is ~0.2 ms per tile) is what made compressed files
slow to write and read.  Throughput on one core: ~170 Mpixel/s coding and
~150 Mpixel/s decoding for 4-byte pixels with ~9 bits of noise.
"""

from __future__ import annotations

__all__ = ("BLOCK_SIZE", "decode_rows", "encode_rows", "rice_decode", "rice_encode")

import numpy as np
from numba import njit, prange

_NJIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy", boundscheck=False)
#: Kernels over the tiles of an image: tiles are coded independently, so
#: they are coded in parallel.
_NJIT_TILES = dict(_NJIT, parallel=True)

#: Pixels per Rice block (the convention's ``BLOCKSIZE``; the only value
#: written and read here).
BLOCK_SIZE = 32

#: Number of bits of each byte value (0 for 0): the position of its highest
#: set bit plus one.
_BIT_LENGTH = np.array([int(v).bit_length() for v in range(256)], dtype=np.int64)


@njit(**_NJIT)
def _parameters(bytepix):
    """``(fsbits, fsmax)`` of the convention for ``bytepix``-byte pixels."""
    if bytepix == 1:
        return 3, 6
    if bytepix == 2:
        return 4, 14
    return 5, 25


@njit(**_NJIT)
def _flush32(acc, nacc, out, pos):
    """Move the oldest 32 of ``nacc >= 32`` pending bits to ``out``."""
    nacc -= 32
    word = acc >> np.uint64(nacc)
    out[pos] = np.uint8((word >> np.uint64(24)) & np.uint64(255))
    out[pos + 1] = np.uint8((word >> np.uint64(16)) & np.uint64(255))
    out[pos + 2] = np.uint8((word >> np.uint64(8)) & np.uint64(255))
    out[pos + 3] = np.uint8(word & np.uint64(255))
    return nacc, pos + 4


@njit(**_NJIT)
def rice_encode(values, bytepix, out):
    """Rice-code a 1-d array of integers as one FITS tile.

    Parameters
    ----------
    values : `numpy.ndarray`
        Integers (any integer dtype; taken modulo ``2**(8 * bytepix)``).
    bytepix : `int`
        1, 2 or 4: bytes per pixel of the coded values.
    out : `numpy.ndarray`
        uint8 buffer, large enough for the worst case (a little more than
        ``values.size * (bytepix + 1/4)`` bytes; `encode_rows` sizes it).

    Returns
    -------
    nbytes : `int`
        Bytes written to ``out``.
    """
    nblock = BLOCK_SIZE
    bbits = 8 * bytepix
    fsbits, fsmax = _parameters(bytepix)
    modulus = np.int64(1) << bbits
    half = modulus >> 1
    low_bits = modulus - 1
    n = values.shape[0]
    if n == 0:
        return 0
    pos = 0
    acc = np.uint64(np.int64(values[0]) & low_bits)  # pending bits, right-aligned
    nacc = bbits
    last = np.int64(values[0])
    mapped = np.empty(nblock, np.int64)
    i = 0
    while i < n:
        m = min(nblock, n - i)
        total = 0
        for j in range(m):
            v = np.int64(values[i + j])
            d = (v - last) & low_bits
            last = v
            if d >= half:
                d -= modulus
            z = (d << 1) if d >= 0 else ((-d) << 1) - 1
            mapped[j] = z
            total += z
        mean = (total - (m // 2) - 1) / m
        if mean < 0:
            mean = 0.0
        psum = np.int64(mean) >> 1
        fs = 0
        while psum > 0:
            psum >>= 1
            fs += 1
        if nacc >= 32:
            nacc, pos = _flush32(acc, nacc, out, pos)
        if fs >= fsmax:  # high entropy: raw values
            acc = (acc << np.uint64(fsbits)) | np.uint64(fsmax + 1)
            nacc += fsbits
            for j in range(m):
                if nacc >= 32:
                    nacc, pos = _flush32(acc, nacc, out, pos)
                acc = (acc << np.uint64(bbits)) | np.uint64(mapped[j])
                nacc += bbits
        elif fs == 0 and total == 0:  # all differences zero
            acc = acc << np.uint64(fsbits)
            nacc += fsbits
        else:
            acc = (acc << np.uint64(fsbits)) | np.uint64(fs + 1)
            nacc += fsbits
            low = (np.int64(1) << fs) - 1
            for j in range(m):
                z = mapped[j]
                code = np.uint64((np.int64(1) << fs) | (z & low))
                nbits = (z >> fs) + 1 + fs
                while nbits > 32:  # a long run of zero bits, 16 at a time
                    if nacc >= 32:
                        nacc, pos = _flush32(acc, nacc, out, pos)
                    acc = acc << np.uint64(16)
                    nacc += 16
                    nbits -= 16
                if nacc >= 32:
                    nacc, pos = _flush32(acc, nacc, out, pos)
                acc = (acc << np.uint64(nbits)) | code
                nacc += nbits
        i += m
    while nacc >= 8:
        nacc -= 8
        out[pos] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(255))
        pos += 1
    if nacc > 0:
        out[pos] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(255))
        pos += 1
    return pos


@njit(**_NJIT)
def rice_decode(data, bytepix, out, bit_length):
    """Decode one Rice-coded FITS tile.

    Parameters
    ----------
    data : `numpy.ndarray`
        uint8 coded bytes of the tile.
    bytepix : `int`
        1, 2 or 4.
    out : `numpy.ndarray`
        1-d signed integer array receiving the tile's ``out.size`` pixels
        (values are signed ``8 * bytepix``-bit integers: give an ``int8``
        view of a ``uint8`` array for unsigned bytes).
    bit_length : `numpy.ndarray`
        ``_BIT_LENGTH``.

    Returns
    -------
    ok : `bool`
        False if the data ended before ``out`` was filled (a corrupt or
        truncated tile; ``out`` is then partly filled).
    """
    nblock = BLOCK_SIZE
    bbits = 8 * bytepix
    fsbits, fsmax = _parameters(bytepix)
    modulus = np.int64(1) << bbits
    half = modulus >> 1
    low_bits = modulus - 1
    n = out.shape[0]
    nbytes = data.shape[0]
    if n == 0:
        return True
    if nbytes < bytepix:
        return False
    pos = 0
    last = np.int64(0)
    for _ in range(bytepix):
        last = (last << 8) | np.int64(data[pos])
        pos += 1
    acc = np.uint64(0)  # unread bits, right-aligned
    nacc = 0
    code_mask = np.uint64((1 << fsbits) - 1)
    i = 0
    while i < n:
        m = min(nblock, n - i)
        if nacc < fsbits:
            while nacc <= 56:
                acc = (acc << np.uint64(8)) | np.uint64(data[pos] if pos < nbytes else 0)
                pos += 1
                nacc += 8
        nacc -= fsbits
        fs = np.int64((acc >> np.uint64(nacc)) & code_mask) - 1
        if fs < 0:
            value = last if last < half else last - modulus
            for j in range(m):
                out[i + j] = value
        elif fs == fsmax:
            for j in range(m):
                if nacc < bbits:
                    while nacc <= 56:
                        acc = (acc << np.uint64(8)) | np.uint64(data[pos] if pos < nbytes else 0)
                        pos += 1
                        nacc += 8
                nacc -= bbits
                z = np.int64((acc >> np.uint64(nacc)) & np.uint64(low_bits))
                d = (z >> 1) if (z & 1) == 0 else ~(z >> 1)
                last = (last + d) & low_bits
                out[i + j] = last if last < half else last - modulus
        else:
            low = np.uint64((np.int64(1) << fs) - 1)
            for j in range(m):
                nzero = 0
                while True:
                    if nacc < 8:
                        while nacc <= 56:
                            acc = (acc << np.uint64(8)) | np.uint64(data[pos] if pos < nbytes else 0)
                            pos += 1
                            nacc += 8
                    top = np.int64((acc >> np.uint64(nacc - 8)) & np.uint64(255))
                    if top == 0:
                        nzero += 8
                        nacc -= 8
                        if pos > nbytes + 8:
                            return False
                    else:
                        lead = 8 - bit_length[top]
                        nzero += lead
                        nacc -= lead + 1
                        break
                if nacc < fs:
                    while nacc <= 56:
                        acc = (acc << np.uint64(8)) | np.uint64(data[pos] if pos < nbytes else 0)
                        pos += 1
                        nacc += 8
                nacc -= fs
                z = (np.int64(nzero) << fs) | np.int64((acc >> np.uint64(nacc)) & low)
                d = (z >> 1) if (z & 1) == 0 else ~(z >> 1)
                last = (last + d) & low_bits
                out[i + j] = last if last < half else last - modulus
        i += m
    # Bytes actually consumed: those read minus whole unread bytes.
    return pos - nacc // 8 <= nbytes


@njit(**_NJIT)
def _row_bound(npix, bytepix):
    """Bytes a tile of ``npix`` pixels can take at most."""
    fsbits, _ = _parameters(bytepix)
    nblocks = (npix + BLOCK_SIZE - 1) // BLOCK_SIZE
    return bytepix + (nblocks * (fsbits + 2) + npix * (8 * bytepix + 2)) // 8 + 8


@njit(**_NJIT_TILES)
def _encode_rows(values, rows_per_tile, bytepix):
    ny, nx = values.shape
    ntiles = (ny + rows_per_tile - 1) // rows_per_tile
    bound = _row_bound(rows_per_tile * nx, bytepix)
    slots = np.empty(ntiles * bound, np.uint8)
    counts = np.empty(ntiles, np.int64)
    flat = values.reshape(ny * nx)
    for t in prange(ntiles):
        y0 = t * rows_per_tile
        y1 = min(ny, y0 + rows_per_tile)
        counts[t] = rice_encode(flat[y0 * nx : y1 * nx], bytepix, slots[t * bound : (t + 1) * bound])
    return _pack(slots, bound, counts)


@njit(**_NJIT_TILES)
def _pack(slots, bound, counts):
    """The tiles coded into fixed slots of ``bound`` bytes, packed into one
    heap: ``(heap, counts, offsets)``."""
    ntiles = counts.shape[0]
    offsets = np.empty(ntiles, np.int64)
    pos = 0
    for t in range(ntiles):
        offsets[t] = pos
        pos += counts[t]
    heap = np.empty(pos, np.uint8)
    for t in prange(ntiles):
        heap[offsets[t] : offsets[t] + counts[t]] = slots[t * bound : t * bound + counts[t]]
    return heap, counts, offsets


def encode_rows(
    values: np.ndarray, bytepix: int, rows_per_tile: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rice-code a 2-d integer array in tiles of whole rows.

    Parameters
    ----------
    values
        2-d integer array (C order; values taken modulo
        ``2**(8 * bytepix)``).
    bytepix
        1, 2 or 4.
    rows_per_tile
        Rows per tile (the last tile may have fewer).

    Returns
    -------
    heap, counts, offsets
        The coded tiles one after the other (uint8), and each tile's byte
        count and offset in ``heap`` (int64).
    """
    if bytepix not in (1, 2, 4):
        raise ValueError(f"Rice coding takes 1-, 2- or 4-byte pixels, not {bytepix}")
    values = np.ascontiguousarray(values)
    if values.ndim != 2 or values.dtype.kind not in "iu":
        raise ValueError(f"encode_rows needs a 2-d integer array, got {values.ndim}-d {values.dtype}")
    if not values.dtype.isnative:
        values = values.astype(values.dtype.newbyteorder("="))
    return _encode_rows(values, max(1, int(rows_per_tile)), bytepix)


@njit(**_NJIT_TILES)
def _decode_rows(heap, counts, offsets, first_tile, rows_per_tile, bytepix, out, bit_length):
    ny, nx = out.shape
    flat = out.reshape(ny * nx)
    ntiles = (ny + rows_per_tile - 1) // rows_per_tile
    failed = np.full(ntiles, -1, np.int64)
    for i in prange(ntiles):
        t = first_tile + i
        y = i * rows_per_tile
        rows = min(rows_per_tile, ny - y)
        start = offsets[t]
        if start < 0 or start + counts[t] > heap.shape[0]:
            failed[i] = t
        elif not rice_decode(
            heap[start : start + counts[t]], bytepix, flat[y * nx : (y + rows) * nx], bit_length
        ):
            failed[i] = t
    for i in range(ntiles):
        if failed[i] >= 0:
            return failed[i]
    return -1


def decode_rows(
    heap: np.ndarray,
    counts: np.ndarray,
    offsets: np.ndarray,
    out: np.ndarray,
    *,
    bytepix: int,
    first_tile: int = 0,
    rows_per_tile: int = 1,
) -> None:
    """Decode consecutive tiles of whole rows into ``out``.

    Parameters
    ----------
    heap
        uint8 bytes holding the tiles (offsets relative to its start).
    counts, offsets
        Byte count and offset of every tile (indexed by tile number).
    out
        C-contiguous 2-d signed integer array of ``8 * bytepix`` bits; its
        rows are those of tiles ``first_tile, first_tile + 1, ...`` (the
        last may be a partial tile only if it is the image's last).
    bytepix
        1, 2 or 4.
    first_tile
        Tile number of ``out``'s first row.
    rows_per_tile
        Rows per tile.

    Raises
    ------
    ValueError
        A tile is truncated or points outside ``heap``.
    """
    if out.dtype.itemsize != bytepix or out.dtype.kind != "i" or not out.flags.c_contiguous:
        raise ValueError(f"decode_rows needs a C-contiguous int{8 * bytepix} array, got {out.dtype}")
    bad = _decode_rows(
        heap,
        np.asarray(counts, dtype=np.int64),
        np.asarray(offsets, dtype=np.int64),
        int(first_tile),
        max(1, int(rows_per_tile)),
        bytepix,
        out,
        _BIT_LENGTH,
    )
    if bad >= 0:
        raise ValueError(f"Rice-coded tile {bad + 1} is truncated or corrupt")
