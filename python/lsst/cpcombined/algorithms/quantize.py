"""Quantisation of float pixels with subtractive dithering, as FITS tile
compression defines it (``ZQUANTIZ = 'SUBTRACTIVE_DITHER_2'``).

A float tile is stored as integers ``q = floor((x - zero) / step + r)``
where ``r`` is a pseudo-random number in ``[0, 1)`` known to the reader,
which restores ``x' = (q - r + 0.5) * step + zero``.  The error
``x' - x`` is uniform in ``[-step/2, step/2]``, has zero mean, rms
``step / sqrt(12)`` and is independent of the value (the dither removes the
correlation plain rounding has with the signal).  Exact zeros are stored as
a reserved integer and restored exactly (the ``_2`` of the method's name),
NaN as the blank value.  The random sequence is the convention's: 10000
values of the Park-Miller generator (multiplier 16807, modulus 2**31 - 1,
seed 1) as float32; tile ``t`` (from 0) of a file whose dither seed is
``ZDITHER0`` starts at entry ``(t + ZDITHER0 - 1) mod 10000`` of the
sequence, at offset ``int(500 * value)``, and moves on by one entry per
pixel.  Files quantised here are read back by CFITSIO and astropy, and
files they quantised (``SUBTRACTIVE_DITHER_1`` or ``_2``) are read back
here, bit for bit.

The step of each tile is chosen by the caller (`row_sigma` gives a robust
per-row noise); it is never smaller than ``2**-22`` of the tile's largest
absolute value (float32 precision) and never so small that the tile's range
needs more than 2**31 - 16 steps.

`quantize_encode_rows` and `decode_dequantize_rows` quantise and Rice-code
(`lsst.cpcombined.algorithms.rice`) one row at a time in a single numba
call, so that the quantised integers of a whole image never exist at once.
"""

from __future__ import annotations

__all__ = (
    "BLANK_VALUE",
    "N_RANDOM",
    "ZERO_VALUE",
    "decode_dequantize_rows",
    "dequantize_rows",
    "dither_table",
    "quantize_encode_rows",
    "quantize_rows",
    "row_sigma",
)

import functools

import numpy as np
from numba import njit, prange

from .rice import _BIT_LENGTH, _NJIT_TILES, _pack, _row_bound, rice_decode, rice_encode

_NJIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy", boundscheck=False)

#: Length of the convention's dither sequence.
N_RANDOM = 10000
#: Stored integer of an exact zero (``SUBTRACTIVE_DITHER_2``).
ZERO_VALUE = -2147483646
#: Stored integer of a NaN (the ``ZBLANK`` written with quantised tiles).
BLANK_VALUE = -2147483648
#: Smallest step, relative to the tile's largest absolute value.
_MIN_RELATIVE_STEP = 2.0**-22
#: Largest number of steps a tile's range may span.
_MAX_STEPS = 2.0**31 - 16
#: ``blank`` argument of the kernels meaning "no blank value" (no int32 equals it).
_NO_BLANK = np.int64(2**40)


@functools.cache
def dither_table() -> np.ndarray:
    """The convention's 10000 dither values (float32, in ``(0, 1)``)."""
    a, m = 16807.0, 2147483647.0
    seed = 1.0
    values = np.empty(N_RANDOM, dtype=np.float32)
    for i in range(N_RANDOM):
        temp = a * seed
        seed = temp - m * float(int(temp / m))
        values[i] = seed / m
    if int(seed) != 1043618065:  # the convention's check value
        raise RuntimeError("the dither sequence does not match the FITS convention")
    values.setflags(write=False)
    return values


@njit(**_NJIT)
def _quantize_tile(values, requested, tile, seed, table, out):
    """Quantise one tile; return ``(step, zero, nblank)`` or a negative
    ``nblank`` if it holds an infinity."""
    n = values.shape[0]
    lo = np.inf
    hi = -np.inf
    nblank = 0
    for i in range(n):
        x = np.float64(values[i])
        if np.isnan(x):
            nblank += 1
        else:
            lo = min(lo, x)
            hi = max(hi, x)
    if hi == np.inf or lo == -np.inf:
        return 1.0, 0.0, -1
    if lo > hi:  # no number at all
        lo = 0.0
        hi = 0.0
    biggest = max(abs(lo), abs(hi))
    delta = requested
    if not (delta > _MIN_RELATIVE_STEP * biggest):
        delta = _MIN_RELATIVE_STEP * biggest
    if not (delta > 0.0):
        delta = 1.0  # every value is zero (or NaN): stored exactly anyway
    if (hi - lo) / delta > _MAX_STEPS:
        delta = (hi - lo) / _MAX_STEPS
    inverse = 1.0 / delta
    iseed = (tile + seed - 1) % N_RANDOM
    nextrand = np.int64(table[iseed] * 500.0)
    i = 0
    while i < n:
        m = min(n - i, N_RANDOM - nextrand)
        for k in range(m):
            x = np.float64(values[i + k])
            if x == 0.0:
                out[i + k] = ZERO_VALUE
            elif np.isnan(x):
                out[i + k] = BLANK_VALUE
            else:
                out[i + k] = np.int32(np.floor((x - lo) * inverse + np.float64(table[nextrand + k])))
        i += m
        nextrand += m
        if nextrand == N_RANDOM:
            iseed = (iseed + 1) % N_RANDOM
            nextrand = np.int64(table[iseed] * 500.0)
    return delta, lo, nblank


@njit(**_NJIT)
def _dequantize_tile(quantized, scale, zero, tile, seed, blank, zero_coded, table, out):
    n = quantized.shape[0]
    iseed = (tile + seed - 1) % N_RANDOM
    nextrand = np.int64(table[iseed] * 500.0)
    i = 0
    while i < n:
        m = min(n - i, N_RANDOM - nextrand)
        for k in range(m):
            q = quantized[i + k]
            value = np.float32((np.float64(q) - np.float64(table[nextrand + k]) + 0.5) * scale + zero)
            if q == blank:
                value = np.float32(np.nan)
            elif zero_coded and q == ZERO_VALUE:
                value = np.float32(0.0)
            out[i + k] = value
        i += m
        nextrand += m
        if nextrand == N_RANDOM:
            iseed = (iseed + 1) % N_RANDOM
            nextrand = np.int64(table[iseed] * 500.0)


@njit(**_NJIT)
def _quantize_rows(data, step, seed, table, out, scales, zeros):
    ny, nx = data.shape
    nblank = 0
    for r in range(ny):
        delta, zero, nb = _quantize_tile(data[r], step[r], r, seed, table, out[r])
        if nb < 0:
            return -1 - r
        scales[r] = delta
        zeros[r] = zero
        nblank += nb
    return nblank


@njit(**_NJIT)
def _dequantize_rows(
    quantized, scales, zeros, seed, first_tile, rows_per_tile, blank, zero_coded, table, out
):
    ny, nx = quantized.shape
    qflat = quantized.reshape(ny * nx)
    oflat = out.reshape(ny * nx)
    y = 0
    t = first_tile
    while y < ny:
        rows = min(rows_per_tile, ny - y)
        _dequantize_tile(
            qflat[y * nx : (y + rows) * nx], scales[t], zeros[t], t, seed, blank, zero_coded, table,
            oflat[y * nx : (y + rows) * nx],
        )
        y += rows
        t += 1


@njit(**_NJIT_TILES)
def _quantize_encode_rows(data, step, seed, table):
    ny, nx = data.shape
    bound = _row_bound(nx, 4)
    slots = np.empty(ny * bound, np.uint8)
    counts = np.empty(ny, np.int64)
    scales = np.empty(ny, np.float64)
    zeros = np.empty(ny, np.float64)
    blanks = np.empty(ny, np.int64)
    for r in prange(ny):
        row = np.empty(nx, np.int32)
        delta, zero, nb = _quantize_tile(data[r], step[r], r, seed, table, row)
        scales[r] = delta
        zeros[r] = zero
        blanks[r] = nb
        counts[r] = 0 if nb < 0 else rice_encode(row, 4, slots[r * bound : (r + 1) * bound])
    nblank = 0
    for r in range(ny):
        if blanks[r] < 0:
            return slots[:0], counts, counts, scales, zeros, -1 - r
        nblank += blanks[r]
    heap, counts, offsets = _pack(slots, bound, counts)
    return heap, counts, offsets, scales, zeros, nblank


@njit(**_NJIT_TILES)
def _decode_dequantize_rows(
    heap, counts, offsets, first_tile, rows_per_tile, scales, zeros, seed, blank, zero_coded, table,
    bit_length, out,
):
    ny, nx = out.shape
    oflat = out.reshape(ny * nx)
    ntiles = (ny + rows_per_tile - 1) // rows_per_tile
    failed = np.full(ntiles, -1, np.int64)
    for i in prange(ntiles):
        t = first_tile + i
        y = i * rows_per_tile
        rows = min(rows_per_tile, ny - y)
        start = offsets[t]
        if start < 0 or start + counts[t] > heap.shape[0]:
            failed[i] = t
            continue
        tile = np.empty(rows * nx, np.int32)
        if not rice_decode(heap[start : start + counts[t]], 4, tile, bit_length):
            failed[i] = t
            continue
        _dequantize_tile(
            tile, scales[t], zeros[t], t, seed, blank, zero_coded, table, oflat[y * nx : (y + rows) * nx]
        )
    for i in range(ntiles):
        if failed[i] >= 0:
            return failed[i]
    return -1


def _native(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _steps(step: np.ndarray | float, ny: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(np.asarray(step, dtype=np.float64), (ny,)))


def _check_seed(seed: int) -> None:
    if not 1 <= seed <= N_RANDOM:
        raise ValueError(f"dither seed {seed} is not in 1..{N_RANDOM}")


def quantize_rows(
    data: np.ndarray, step: np.ndarray | float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Quantise a float image, one tile per row.

    Parameters
    ----------
    data
        2-d float array.
    step
        Requested step of each row, or one for all (floored as the module
        says; NaN or non-positive means "as fine as float32").
    seed
        ``ZDITHER0``, 1 to 10000.

    Returns
    -------
    quantized, scales, zeros, nblank
        int32 array, each row's step (``ZSCALE``) and zero point
        (``ZZERO``), and the number of NaN pixels (stored as `BLANK_VALUE`).

    Raises
    ------
    ValueError
        The image holds an infinity (which quantisation cannot represent),
        or ``seed`` is out of range.
    """
    _check_seed(seed)
    data = _native(data)
    ny, nx = data.shape
    out = np.empty((ny, nx), dtype=np.int32)
    scales = np.empty(ny, dtype=np.float64)
    zeros = np.empty(ny, dtype=np.float64)
    nblank = _quantize_rows(data, _steps(step, ny), int(seed), dither_table(), out, scales, zeros)
    if nblank < 0:
        raise ValueError(f"row {-1 - nblank} holds an infinity: it cannot be quantised")
    return out, scales, zeros, int(nblank)


def dequantize_rows(
    quantized: np.ndarray,
    scales: np.ndarray,
    zeros: np.ndarray,
    seed: int,
    *,
    first_tile: int = 0,
    rows_per_tile: int = 1,
    blank: int | None = BLANK_VALUE,
    zero_coded: bool = True,
) -> np.ndarray:
    """Restore float32 pixels from quantised tiles of whole rows.

    Parameters
    ----------
    quantized
        2-d int32 array: whole tiles, starting with tile ``first_tile``.
    scales, zeros
        ``ZSCALE`` and ``ZZERO`` of every tile of the image (indexed by tile
        number).
    seed
        ``ZDITHER0``.
    first_tile
        Tile number of ``quantized``'s first row.
    rows_per_tile
        Rows per tile.
    blank
        The file's ``ZBLANK`` (pixels with it become NaN), or `None`.
    zero_coded
        Whether `ZERO_VALUE` codes an exact zero (``SUBTRACTIVE_DITHER_2``;
        not with ``SUBTRACTIVE_DITHER_1``).

    Returns
    -------
    pixels
        float32 array.
    """
    quantized = np.ascontiguousarray(quantized, dtype=np.int32)
    out = np.empty(quantized.shape, dtype=np.float32)
    _dequantize_rows(
        quantized,
        np.asarray(scales, dtype=np.float64),
        np.asarray(zeros, dtype=np.float64),
        int(seed),
        int(first_tile),
        max(1, int(rows_per_tile)),
        _NO_BLANK if blank is None else np.int64(blank),
        bool(zero_coded),
        dither_table(),
        out,
    )
    return out


def quantize_encode_rows(
    data: np.ndarray, step: np.ndarray | float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Quantise (`quantize_rows`) and Rice-code a float image, one tile per
    row.

    Returns
    -------
    heap, counts, offsets, scales, zeros, nblank
        The coded tiles, each tile's byte count and offset in ``heap``, its
        ``ZSCALE`` and ``ZZERO``, and the number of NaN pixels.

    Raises
    ------
    ValueError
        As `quantize_rows`.
    """
    _check_seed(seed)
    data = _native(data)
    ny = data.shape[0]
    heap, counts, offsets, scales, zeros, nblank = _quantize_encode_rows(
        data, _steps(step, ny), int(seed), dither_table()
    )
    if nblank < 0:
        raise ValueError(f"row {-1 - nblank} holds an infinity: it cannot be quantised")
    return heap, counts, offsets, scales, zeros, int(nblank)


def decode_dequantize_rows(
    heap: np.ndarray,
    counts: np.ndarray,
    offsets: np.ndarray,
    out: np.ndarray,
    *,
    scales: np.ndarray,
    zeros: np.ndarray,
    seed: int,
    first_tile: int = 0,
    rows_per_tile: int = 1,
    blank: int | None = BLANK_VALUE,
    zero_coded: bool = True,
) -> None:
    """Decode Rice-coded quantised tiles of whole rows into float32 ``out``
    (arguments as `lsst.cpcombined.algorithms.rice.decode_rows` and
    `dequantize_rows`).

    Raises
    ------
    ValueError
        A tile is truncated or points outside ``heap``.
    """
    if out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"decode_dequantize_rows fills a C-contiguous float32 array, not {out.dtype}")
    bad = _decode_dequantize_rows(
        heap,
        np.asarray(counts, dtype=np.int64),
        np.asarray(offsets, dtype=np.int64),
        int(first_tile),
        max(1, int(rows_per_tile)),
        np.asarray(scales, dtype=np.float64),
        np.asarray(zeros, dtype=np.float64),
        int(seed),
        _NO_BLANK if blank is None else np.int64(blank),
        bool(zero_coded),
        dither_table(),
        _BIT_LENGTH,
        out,
    )
    if bad >= 0:
        raise ValueError(f"Rice-coded tile {bad + 1} is truncated or corrupt")


@njit(**_NJIT)
def _row_sigma(variance, image, stride, use_variance):
    ny, nx = image.shape
    out = np.zeros(ny, np.float64)
    sample = np.empty(nx // stride + 2, np.float64)
    for r in range(ny):
        n = 0
        if use_variance:
            for i in range(0, nx, stride):
                v = np.float64(variance[r, i])
                if v > 0.0 and np.isfinite(v):
                    sample[n] = v
                    n += 1
            if n > 0:
                out[r] = np.sqrt(np.median(sample[:n]))
                continue
        for i in range(0, nx - 1, stride):
            d = np.float64(image[r, i + 1]) - np.float64(image[r, i])
            if np.isfinite(d):
                sample[n] = abs(d)
                n += 1
        if n > 0:
            # median |difference| of two independent values: 0.6745 * sqrt(2) sigma
            out[r] = np.median(sample[:n]) / (0.6744897501960817 * np.sqrt(2.0))
    return out


def row_sigma(image: np.ndarray, variance: np.ndarray | None = None, stride: int = 8) -> np.ndarray:
    """Per-row noise of an image, for choosing quantisation steps.

    The noise of a row is the square root of the median of its variance
    plane (positive, finite values) when a variance is given, else the
    median absolute difference of neighbouring pixels divided by
    ``0.6745 * sqrt(2)`` (the standard deviation of white noise); every
    ``stride``-th pixel is used.  0 when nothing is usable.

    Parameters
    ----------
    image
        2-d float array.
    variance
        Its variance (same shape), or `None`.
    stride
        Sampling stride along the row.

    Returns
    -------
    sigma
        float64 array, one value per row.
    """
    image = _native(image)
    use_variance = variance is not None
    variance = _native(variance) if use_variance else image
    if variance.shape != image.shape:
        raise ValueError(f"variance shape {variance.shape} differs from the image's {image.shape}")
    return _row_sigma(variance, image, max(1, int(stride)), use_variance)
