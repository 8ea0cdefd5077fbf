"""Cosmic-ray detection and repair on single calibration frames.

Used on darks before they are combined (the ``CR`` plane is then ignored by
the combine; grow 2 px as the SPEC asks) and by verification for the "std
after cosmic-ray repair" statistic and the ``PROCESSING`` test (repair must
not overflow).

Detection (`find_cosmic_rays`)
------------------------------
1. *Background*: the median of good pixels in blocks of ``bin_size`` pixels,
   bilinearly interpolated (or a background given by the caller).
2. *Noise*: the background noise σ per pixel — a given scalar σ, or the
   block median of a given variance plane (so that a variance plane computed
   from the image, which is large *on* the cosmic ray itself, still gives the
   noise of the background), or a robust σ (MAD) of the frame.
3. *Seeds*: pixels with ``d = image - background > nsigma σ`` that are
   sharper than any smooth structure: in at least one of the four
   directions (horizontal, vertical, two diagonals) the mean ``m`` of the
   two opposite neighbours satisfies ``m < sharpness · (d − sharpness_nsigma
   σ)``.  A Gaussian bump of σ ≥ 1 px (a star, a glow, vignetting) has
   neighbour/peak ratios ≥ 0.6 and yields no seed; a cosmic-ray track,
   deposited within a pixel or two across its path, has a sharp edge.
4. *Features*: connected (8-connectivity) pixels above ``nsigma_footprint``
   σ; a feature is a cosmic ray when it contains a seed and has at least
   ``min_pixels`` pixels.
5. *Growth*: the features are grown by ``grow`` pixels (a square of side
   ``2 grow + 1``), and the ``CR`` bit is set on the result.

Hot pixels versus cosmic rays
-----------------------------
A hot pixel differs from a cosmic ray in *time* (it is there in every
frame), not in space: in one frame a single bright pixel is as sharp as a
cosmic-ray hit.  Both are single-frame algorithms, so we use the one spatial
difference that holds for thick (100 µm) ITL sensors: charge diffusion and
oblique incidence make nearly every cosmic ray cover two or more pixels,
while a hot pixel is one pixel.  With ``min_pixels=2`` (default) isolated
hot pixels are therefore *not* flagged, which is what dark combination needs
(hot pixels must survive into the combined dark for defect finding).
The price: single-pixel cosmic-ray hits are missed (the clipped combine of
darks still rejects them, and they inflate the post-repair std only
slightly), and hot pixels with a bright neighbour (pairs, CTI trails) are
flagged in every frame — in a dark combine they then end up ``BAD`` (no good
input), which makes them defects anyway.  Known defects can be excluded
outright by passing a bitmask with ``BAD`` set on them; ``min_pixels=1``
flags every sharp pixel.

Repair (`repair_cosmic_rays`)
-----------------------------
Each flagged pixel is replaced by the median of the good pixels in a
square window around it (half-width ``radius``, doubled until at least
``min_good`` good pixels are found, up to ``max_radius``), and gets the
``INTRP`` bit.  When more pixels are flagged than ``max_cr_pixels`` (or a
fraction ``max_cr_fraction`` of the frame) the result reports
``overflow=True``, the image is *not* repaired (the flagged mask is still
returned), a warning is logged, and with ``raise_on_overflow`` a
`CosmicRayOverflowError` is raised; the default limit of 100000 pixels is
the value commonly used with the LSST stack's cosmic-ray finder.

Implementation
--------------
The steps above are written as whole-image array operations, but no
full-size background, noise or residual map is built: the background and
variance block grids are interpolated on demand, a single pass over the
image (numba, parallel over rows) evaluates a pixel exactly only where a
cheap bound says it could reach the footprint threshold, features are flood
filled from their seeds, and the growth is drawn pixel by pixel.  The
results are those of the array formulation (``tests/test_cosmic_rays.py``
compares the two).  The noise floor of a variance plane is 1e-6 of the
median block value.
"""

from __future__ import annotations

__all__ = (
    "DEFAULT_MAX_CR_PIXELS",
    "CosmicRayOverflowError",
    "CosmicRayResult",
    "RepairResult",
    "background_map",
    "find_cosmic_rays",
    "repair_cosmic_rays",
)

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from . import masks
from .combine import regular_subsample

_log = logging.getLogger(__name__)

#: Default limit on the number of (grown) cosmic-ray pixels of one frame.
DEFAULT_MAX_CR_PIXELS = 100_000


class CosmicRayOverflowError(RuntimeError):
    """Too many cosmic-ray pixels to repair (raised on request only)."""


@dataclasses.dataclass
class CosmicRayResult:
    """Output of `find_cosmic_rays`.

    Attributes
    ----------
    cr_mask
        Boolean mask of the cosmic-ray pixels, after growth.
    bitmask
        Copy of the input bitmask (zeros if none) with ``CR`` set on
        ``cr_mask``.
    n_pixels
        Number of cosmic-ray pixels (after growth).
    n_features
        Number of cosmic rays (connected features before growth).
    overflow
        Whether ``n_pixels`` exceeded the configured maximum.
    max_pixels
        The pixel limit that was applied (``None`` = no limit).
    """

    cr_mask: np.ndarray
    bitmask: np.ndarray
    n_pixels: int
    n_features: int
    overflow: bool
    max_pixels: int | None


@dataclasses.dataclass
class RepairResult(CosmicRayResult):
    """Output of `repair_cosmic_rays`: a `CosmicRayResult` plus the image.

    Attributes
    ----------
    image
        Copy of the image with cosmic-ray pixels replaced (unchanged copy if
        ``repaired`` is false).
    repaired
        False when the repair was skipped because of an overflow.
    """

    image: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    repaired: bool = False


# ---------------------------------------------------------------------------
# background and noise
# ---------------------------------------------------------------------------


def _edges(n: int, bin_size: int) -> np.ndarray:
    nb = max(1, int(round(n / max(1, bin_size))))
    return np.round(np.linspace(0, n, nb + 1)).astype(np.int64)


def _interp_weights(centers: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights for linear interpolation of block values at
    ``0..n-1`` (constant beyond the outer block centres)."""
    pos = np.arange(n, dtype=np.float64)
    if centers.size == 1:
        z = np.zeros(n, dtype=np.int64)
        return z, z, np.zeros(n, dtype=np.float32)
    i1 = np.clip(np.searchsorted(centers, pos, side="right"), 1, centers.size - 1)
    i0 = i1 - 1
    w = np.clip((pos - centers[i0]) / (centers[i1] - centers[i0]), 0.0, 1.0)
    return i0, i1, w.astype(np.float32)


def _grid_interp(ye: np.ndarray, xe: np.ndarray) -> tuple[np.ndarray, ...]:
    """`_interp_weights` of the block centres of edges ``ye`` and ``xe``:
    ``(y0, y1, wy, x0, x1, wx)``."""
    yc = 0.5 * (ye[:-1] + ye[1:] - 1)
    xc = 0.5 * (xe[:-1] + xe[1:] - 1)
    return _interp_weights(yc, int(ye[-1])) + _interp_weights(xc, int(xe[-1]))


@numba.njit(cache=True)
def _f32_key(bits):  # pragma: no cover - numba
    """Order-preserving key (int64 in ``[0, 2**32)``) of the bit pattern
    ``bits`` of a float32 (branch-free)."""
    neg = bits >> 31
    return bits ^ (neg * 0xFFFFFFFF) ^ ((1 - neg) * 0x80000000)


@numba.njit(cache=True)
def _f32_of_key(key, tmp):  # pragma: no cover - numba
    """The float32 of a `_f32_key` key (``tmp``: a 1-element uint32 array)."""
    tmp[0] = key ^ 0x80000000 if key >= 0x80000000 else key ^ 0xFFFFFFFF
    return tmp.view(np.float32)[0]


@numba.njit(cache=True)
def _median_f32(buf, n, keys, hist):  # pragma: no cover - numba
    """Median of ``buf[:n]`` (float32, no NaN, ``n >= 1``), equal to
    numba's ``np.median(buf[:n])`` (up to the sign of a zero): the middle
    value, or for even ``n`` ``(a + b) / 2`` of the two middle float32
    values.

    Radix selection on order-preserving integer keys of the values: three
    histogram passes of 11, 11 and 10 bits, each on the survivors of the
    previous one, with branch-free key, compaction and final passes (about
    3x faster than quickselect on blocks of ~1000 values, whose cost is
    mostly mispredicted branches).
    ``keys`` (int64, >= n) and ``hist`` (int64, >= 2048) are work space;
    ``buf`` is not modified."""
    bits = buf.view(np.uint32)
    for i in range(n):
        keys[i] = _f32_key(np.int64(bits[i]))
    half = n >> 1
    rank = half - 1 if n % 2 == 0 else half
    m = n
    for p in range(3):
        shift = 21 - 11 * p if p < 2 else 0
        sel = 0x7FF if p < 2 else 0x3FF
        hist[: sel + 1] = 0
        for i in range(m):
            hist[(keys[i] >> shift) & sel] += 1
        b = 0
        cum = 0
        while cum + hist[b] <= rank:
            cum += hist[b]
            b += 1
        rank -= cum
        if hist[b] != m:
            j = 0
            for i in range(m):
                k = keys[i]
                keys[j] = k
                j += ((k >> shift) & sel) == b
            m = j
    ka = keys[0]
    tmp = np.empty(1, dtype=np.uint32)
    a = _f32_of_key(ka, tmp)
    if n % 2 == 1:
        return np.float64(a)
    # the next value: ka again if it occurs more than once at the middle,
    # else the smallest key above ka
    n_le = 0
    kb = np.int64(0x100000000)
    for i in range(n):
        k = _f32_key(np.int64(bits[i]))
        n_le += k <= ka
        kb = min(kb, k if k > ka else np.int64(0x100000000))
    b2 = a if n_le >= half + 1 else _f32_of_key(kb, tmp)
    return (a + b2) / 2


@numba.njit(cache=True)
def _block_sizes(ye, xe, stride):  # pragma: no cover - numba
    """Largest number of sampled rows and columns of a block."""
    maxh = 1
    for i in range(ye.size - 1):
        maxh = max(maxh, (ye[i + 1] - ye[i] + stride - 1) // stride)
    maxw = 1
    for j in range(xe.size - 1):
        maxw = max(maxw, (xe[j + 1] - xe[j] + stride - 1) // stride)
    return maxh, maxw


@numba.njit(parallel=True, cache=True)
def _block_medians_masked(values, data, mask, exclude, positive, ye, xe, stride):  # pragma: no cover - numba
    """Median of the good pixels of each block, sampling every ``stride``-th
    row and column (NaN when fewer than max(3, 10 %) of the sampled pixels
    are good), with the good pixels decided on the fly: ``data`` finite and
    ``mask & exclude == 0`` and, if ``positive``, ``values`` finite and > 0
    (no full-size mask needed).  A row of blocks is gathered row by row of
    the image (not block by block: much faster memory access)."""
    nby, nbx = ye.size - 1, xe.size - 1
    grid = np.full((nby, nbx), np.nan)
    maxh, maxw = _block_sizes(ye, xe, stride)
    for i in numba.prange(nby):
        bufs = np.empty((nbx, maxh * maxw), dtype=np.float32)
        cnt = np.zeros(nbx, dtype=np.int64)
        keys = np.empty(maxh * maxw, dtype=np.int64)
        hist = np.empty(2048, dtype=np.int64)
        for y in range(ye[i], ye[i + 1], stride):
            for j in range(nbx):
                buf = bufs[j]
                n = cnt[j]
                for x in range(xe[j], xe[j + 1], stride):
                    if np.isfinite(data[y, x]) and (mask[y, x] & exclude) == 0:
                        v = values[y, x]
                        if not positive or (np.isfinite(v) and v > 0):
                            buf[n] = v
                            n += 1
                cnt[j] = n
        for j in range(nbx):
            size = ((ye[i + 1] - ye[i] + stride - 1) // stride) * ((xe[j + 1] - xe[j] + stride - 1) // stride)
            if cnt[j] >= max(3, size // 10):
                grid[i, j] = _median_f32(bufs[j], cnt[j], keys, hist)
    return grid


@numba.njit(cache=True)
def _interp_at(grid, y0, y1, wy, x0, x1, wx, y, x):  # pragma: no cover - numba
    """Bilinear interpolation of the block values ``grid`` at pixel
    ``(y, x)`` (float32); `_bilinear` is this at every pixel."""
    w = wy[y]
    r0 = grid[y0[y], x0[x]] * (1 - w) + grid[y1[y], x0[x]] * w
    r1 = grid[y0[y], x1[x]] * (1 - w) + grid[y1[y], x1[x]] * w
    return np.float32(r0 * (1 - wx[x]) + r1 * wx[x])


@numba.njit(parallel=True, cache=True)
def _bilinear(grid, y0, y1, wy, x0, x1, wx):  # pragma: no cover - numba
    """Bilinear interpolation of block values at every pixel (float32)."""
    ny, nx = y0.size, x0.size
    out = np.empty((ny, nx), dtype=np.float32)
    for y in numba.prange(ny):
        for x in range(nx):
            out[y, x] = _interp_at(grid, y0, y1, wy, x0, x1, wx, y, x)
    return out


def _stride(bin_size: int) -> int:
    """Sampling stride of the block medians."""
    # A smooth background does not need every pixel: sample every other
    # row and column of blocks of 32 pixels or more (1/4 of the work).
    return 2 if bin_size >= 32 else 1


def _fill_grid(grid: np.ndarray) -> np.ndarray:
    """Blocks without a value take the median of the others (0 if none)."""
    if np.isnan(grid).all():
        grid[:] = 0.0
    else:
        grid[np.isnan(grid)] = np.nanmedian(grid)
    return grid


def background_map(image: np.ndarray, good: np.ndarray | None = None, bin_size: int = 64) -> np.ndarray:
    """Smooth background: block medians of good pixels, bilinearly
    interpolated between block centres.

    Parameters
    ----------
    image
        2-d image.
    good
        Boolean mask of pixels to use (default: all); non-finite pixels are
        never used.
    bin_size
        Approximate block size in pixels (blocks tile the image exactly).

    Returns
    -------
    background
        float32 array of the image's shape.  Blocks without enough good
        pixels take the median of the other blocks (0 if there is none).
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    ny, nx = image.shape
    # Pixels to leave out: not finite, or not ``good``.
    excluded = np.zeros(image.shape, dtype=np.uint8) if good is None else (~np.asarray(good, dtype=bool)).view(np.uint8)
    ye, xe = _edges(ny, bin_size), _edges(nx, bin_size)
    grid = _block_medians_masked(image, image, excluded, np.uint8(1), False, ye, xe, _stride(bin_size))
    return _bilinear(_fill_grid(grid).astype(np.float32), *_grid_interp(ye, xe))


def _approx_median(values: np.ndarray, max_samples: int = 200_000) -> float:
    """Median of a regular subsample of at most ``max_samples`` values (a
    floor or a fallback level needs no more)."""
    return float(np.median(regular_subsample(values, max_samples)))


#: Values used by `_robust_sigma` (a regular subsample of larger sets).
_ROBUST_SAMPLES = 1_000_000


def _robust_sigma(values: np.ndarray, max_samples: int = _ROBUST_SAMPLES) -> float:
    """1.4826 MAD of a regular subsample of at most ``max_samples`` values
    (in float64; NaN if there are none)."""
    v = np.asarray(values).ravel()
    if v.size > max_samples:
        v = v[:: int(np.ceil(v.size / max_samples))]
    v = v.astype(np.float64)
    if v.size == 0:
        return float("nan")
    med = np.median(v)
    return float(1.4826 * np.median(np.abs(v - med)))


# ---------------------------------------------------------------------------
# detection kernels
# ---------------------------------------------------------------------------
#
# Background and noise models of the detection kernels:
#   bkg_mode 0: bilinear interpolation of the float32 block grid ``bgrid``
#               (the same arithmetic as `_bilinear`, evaluated on demand);
#   bkg_mode 1: the float32 array ``barr``;
#   bkg_mode 2: the float32 constant ``bval``.
#   sig_is_scalar: σ is the float32 constant ``sval``; otherwise σ =
#               sqrt(max(bilinear(vgrid), floor)) in float32 (as the map
#               ``np.sqrt(np.maximum(_bilinear(vgrid), floor))``).
# Both grids share the interpolation indices and weights (same blocks).

_BKG_GRID, _BKG_ARRAY, _BKG_SCALAR = 0, 1, 2


@numba.njit(cache=True)
def _resid_at(
    data, mask, exclude, bkg_mode, bgrid, barr, bval, y0, y1, wy, x0, x1, wx, y, x
):  # pragma: no cover - numba
    """Image minus background at one pixel, 0 on excluded / non-finite
    pixels (float32)."""
    d = data[y, x]
    if not np.isfinite(d) or (mask[y, x] & exclude) != 0:
        return np.float32(0.0)
    if bkg_mode == 0:
        return d - _interp_at(bgrid, y0, y1, wy, x0, x1, wx, y, x)
    if bkg_mode == 1:
        return d - barr[y, x]
    return d - bval


@numba.njit(cache=True)
def _sigma_at(sig_is_scalar, sval, vgrid, floor, y0, y1, wy, x0, x1, wx, y, x):  # pragma: no cover - numba
    """Background noise σ at one pixel (float32)."""
    if sig_is_scalar:
        return sval
    v = _interp_at(vgrid, y0, y1, wy, x0, x1, wx, y, x)
    if v < floor:  # np.maximum(v, floor), NaN propagating
        v = floor
    return np.float32(np.sqrt(v))


@numba.njit(cache=True)
def _reflect(i, n):  # pragma: no cover - numba
    """Index ``i`` in ``-1..n`` reflected into ``0..n-1`` (np.pad "reflect")."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


@numba.njit(cache=True)
def _count_above(drow, brow, bkg_mode, bval, thr, start, stop):  # pragma: no cover - numba
    """Number of ``x`` in ``start..stop-1`` whose residual bound exceeds
    ``thr``: the image value for the grid background (``thr`` includes the
    background bound), the float32 residual for an array (``brow``) or
    scalar (``bval``) background.  NaN never exceeds.  Branch-free, so
    that it vectorizes."""
    n = 0
    if bkg_mode == 0:
        for x in range(start, stop):
            n += drow[x] > thr
    elif bkg_mode == 1:
        for x in range(start, stop):
            n += (drow[x] - brow[x]) > thr
    else:
        for x in range(start, stop):
            n += (drow[x] - bval) > thr
    return n


@numba.njit(parallel=True, cache=True)
def _detect_kernel(
    data,
    mask,
    exclude,
    bkg_mode,
    bgrid,
    barr,
    bval,
    sig_is_scalar,
    sval,
    vgrid,
    floor,
    y0,
    y1,
    wy,
    x0,
    x1,
    wx,
    seg,
    thr_tab,
    nfoot,
    nsig,
    sharp,
    sharp_ns,
    use_min_peak,
    min_peak,
    foot,
    row_seeds,
    seed_x,
):  # pragma: no cover - numba
    """One pass over the image: footprint pixels get ``foot = 1``, seeds
    (sharp candidates) ``foot = 2``; ``row_seeds[y]`` counts the seeds of
    row ``y`` and ``seed_x[y, :row_seeds[y]]`` holds their columns (as far
    as ``seed_x`` has room).

    ``foot`` must be zero on entry.  Pixels are evaluated exactly (as the
    array expressions of the module docstring would) only where the cheap
    residual bound of `_count_above` exceeds ``thr_tab[y0[y], x0[x]]``, a
    bound below which no pixel of the row segment ``seg[s]..seg[s+1]``
    (interpolated from the same blocks) can reach the footprint threshold
    (see `_prune_table`)."""
    ny, nx = data.shape
    nseg = seg.size - 1
    cap = seed_x.shape[1]
    for y in numba.prange(ny):
        n_seeds = 0
        drow = data[y]
        brow = barr[y] if bkg_mode == 1 else barr[0]
        ty = y0[y]
        for s in range(nseg):
            xa = seg[s]
            xb = seg[s + 1]
            thr = thr_tab[ty, x0[xa]]
            if _count_above(drow, brow, bkg_mode, bval, thr, xa, xb) == 0:
                continue
            for x in range(xa, xb):
                d = drow[x]
                if bkg_mode == 0:
                    bound = d
                elif bkg_mode == 1:
                    bound = d - brow[x]
                else:
                    bound = d - bval
                if not bound > thr:
                    continue
                if not np.isfinite(d) or (mask[y, x] & exclude) != 0:
                    continue
                r = _resid_at(data, mask, exclude, bkg_mode, bgrid, barr, bval, y0, y1, wy, x0, x1, wx, y, x)
                sg = _sigma_at(sig_is_scalar, sval, vgrid, floor, y0, y1, wy, x0, x1, wx, y, x)
                if not r > nfoot * sg:
                    continue
                foot[y, x] = 1
                if not r > nsig * sg:
                    continue
                if use_min_peak and not r > min_peak:
                    continue
                limit = sharp * (r - sharp_ns * sg)
                for p in range(4):
                    if p == 0:
                        dy, dx = 0, 1
                    elif p == 1:
                        dy, dx = 1, 0
                    elif p == 2:
                        dy, dx = 1, 1
                    else:
                        dy, dx = 1, -1
                    pair_sum = np.float32(0.0)  # the two opposite neighbours
                    for sgn in (-1, 1):
                        pair_sum += _resid_at(
                            data,
                            mask,
                            exclude,
                            bkg_mode,
                            bgrid,
                            barr,
                            bval,
                            y0,
                            y1,
                            wy,
                            x0,
                            x1,
                            wx,
                            _reflect(y + sgn * dy, ny),
                            _reflect(x + sgn * dx, nx),
                        )
                    if np.float32(0.5) * pair_sum < limit:
                        foot[y, x] = 2
                        if n_seeds < cap:
                            seed_x[y, n_seeds] = x
                        n_seeds += 1
                        break
        row_seeds[y] = n_seeds


@numba.njit(cache=True)
def _push(buf, n, value):  # pragma: no cover - numba
    """``buf[n] = value``, into a copy of twice the size when ``buf`` is
    full; returns the array holding the values."""
    if n == buf.size:
        bigger = np.empty(2 * buf.size, dtype=buf.dtype)
        bigger[:n] = buf[:n]
        buf = bigger
    buf[n] = value
    return buf


@numba.njit(cache=True)
def _find_byte(row, value, start):  # pragma: no cover - numba
    """First index ``>= start`` of ``value`` in ``row`` (``row.size`` if
    none)."""
    for x in range(start, row.size):
        if row[x] == value:
            return x
    return row.size


@numba.njit(cache=True)
def _features_kernel(
    foot, row_seeds, seed_x, min_pixels, grow, cr, bitmask, cr_bit
):  # pragma: no cover - numba
    """Cosmic rays from the output of `_detect_kernel`: the 8-connected
    footprint features that contain a seed and have ``>= min_pixels``
    pixels, grown by a square of half-width ``grow`` into ``cr`` (with
    ``cr_bit`` or-ed into ``bitmask``).  Visits only the features that hold
    a seed (flood fill; ``foot`` is overwritten).  Returns ``(n_features,
    n_pixels)``."""
    ny, nx = foot.shape
    cap = seed_x.shape[1]
    queue = np.empty(1024, dtype=np.int64)
    n_features = 0
    n_pixels = 0
    for y in range(ny):
        ns = row_seeds[y]
        if ns == 0:
            continue
        frow = foot[y]
        k = 0
        x = -1
        while True:
            # the next seed of the row: from the list, or by search when
            # the row had more seeds than the list holds
            if ns <= cap:
                if k == ns:
                    break
                x = seed_x[y, k]
                k += 1
            else:
                x = _find_byte(frow, 2, x + 1)
                if x >= nx:
                    break
            if foot[y, x] != 2:  # already part of a feature
                continue
            foot[y, x] = 3
            queue[0] = y * nx + x
            head = 0
            tail = 1
            while head < tail:
                p = queue[head]
                head += 1
                py = p // nx
                px = p - py * nx
                for yy in range(max(py - 1, 0), min(py + 2, ny)):
                    for xx in range(max(px - 1, 0), min(px + 2, nx)):
                        f = foot[yy, xx]
                        if f == 1 or f == 2:
                            foot[yy, xx] = 3
                            queue = _push(queue, tail, yy * nx + xx)
                            tail += 1
            if tail < min_pixels:
                continue
            n_features += 1
            for q in range(tail):
                p = queue[q]
                py = p // nx
                px = p - py * nx
                for yy in range(max(py - grow, 0), min(py + grow + 1, ny)):
                    for xx in range(max(px - grow, 0), min(px + grow + 1, nx)):
                        if not cr[yy, xx]:
                            cr[yy, xx] = True
                            bitmask[yy, xx] |= cr_bit
                            n_pixels += 1
    return n_features, n_pixels


@numba.njit(parallel=True, cache=True)
def _good_resid_values(
    data, mask, exclude, bkg_mode, bgrid, barr, bval, y0, y1, wy, x0, x1, wx, max_samples
):  # pragma: no cover - numba
    """``resid[good]`` in row-major order (float32), thinned as
    `_robust_sigma` thins it: every ``ceil(n / max_samples)``-th value when
    there are more than ``max_samples``; only those are computed."""
    ny, nx = data.shape
    counts = np.zeros(ny + 1, dtype=np.int64)
    for y in numba.prange(ny):
        c = 0
        for x in range(nx):
            c += np.isfinite(data[y, x]) and (mask[y, x] & exclude) == 0
        counts[y + 1] = c
    start = np.cumsum(counts)
    total = start[ny]
    step = 1
    if total > max_samples:
        step = np.int64(np.ceil(total / max_samples))
    out = np.empty((total + step - 1) // step, dtype=np.float32)
    nbx = bgrid.shape[1]
    for y in numba.prange(ny):
        k = start[y]
        nxt = (k + step - 1) // step * step  # next index to keep
        if nxt >= start[y + 1]:
            continue
        # the background row as in `_interp_at` (block values interpolated
        # in y once per row)
        rowb = np.empty(nbx, dtype=np.float64)
        if bkg_mode == 0:
            w = wy[y]
            for j in range(nbx):
                rowb[j] = bgrid[y0[y], j] * (1 - w) + bgrid[y1[y], j] * w
        for x in range(nx):
            d = data[y, x]
            if np.isfinite(d) and (mask[y, x] & exclude) == 0:
                if k == nxt:
                    if bkg_mode == 0:
                        r = d - np.float32(rowb[x0[x]] * (1 - wx[x]) + rowb[x1[x]] * wx[x])
                    elif bkg_mode == 1:
                        r = d - barr[y, x]
                    else:
                        r = d - bval
                    out[k // step] = r
                    nxt += step
                k += 1
    return out


# ---------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------


def _noise_model(
    variance_or_noise: float | np.ndarray | None,
    data: np.ndarray,
    mask: np.ndarray,
    exclude: int,
    ye: np.ndarray,
    xe: np.ndarray,
    stride: int,
    good_resid: Callable[[], np.ndarray],
) -> tuple[float, np.ndarray | None, np.float32]:
    """Background noise σ: ``(sigma, None, 0)`` for a scalar σ, or
    ``(nan, grid, floor)`` for a variance plane, σ being
    ``sqrt(max(bilinear(grid), floor))``.

    ``grid`` holds the float32 block medians of the positive, finite
    variance of the good pixels (blocks without enough of them take the
    median of the others); ``floor`` is 1e-6 of the median block value (of
    the median good variance when no block has a value).  ``good_resid``
    is called (without arguments) for ``resid[good]`` when σ has to be
    estimated from the frame.
    """
    if variance_or_noise is None:
        sigma = _robust_sigma(good_resid())
        if not np.isfinite(sigma) or sigma <= 0:
            raise ValueError("cannot estimate the noise of the image (no good pixels or zero scatter)")
        return sigma, None, np.float32(0.0)
    if np.ndim(variance_or_noise) == 0:
        sigma = float(np.asarray(variance_or_noise, dtype=np.float64))
        if not np.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"noise must be a positive number, got {sigma}")
        return sigma, None, np.float32(0.0)
    arr = np.asarray(variance_or_noise)
    if arr.shape != data.shape:
        raise ValueError(f"variance plane has shape {arr.shape}, image has {data.shape}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    arr = np.ascontiguousarray(arr)
    grid = _block_medians_masked(arr, data, mask, exclude, True, ye, xe, stride)
    finite = ~np.isnan(grid)
    if finite.any():
        ref = float(np.median(grid[finite]))
    else:  # too few good pixels per block: the median of all good ones
        a64 = arr.astype(np.float64, copy=False)
        vgood = np.isfinite(data) & ((mask & exclude) == 0) & np.isfinite(a64) & (a64 > 0)
        ref = _approx_median(a64[vgood]) if vgood.any() else 1.0
    floor = np.float32(max(ref, 1e-30) * 1e-6)
    return float("nan"), _fill_grid(grid).astype(np.float32), floor


def _exclusion(bitmask: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """The kernels' exclusion test ``flags[y, x] & bit != 0`` for
    ``bitmask & bits != 0``: ``(bitmask, bits)`` for a C-contiguous uint8
    bitmask, else a uint8 flag array and 1."""
    if bitmask.dtype == np.uint8 and bitmask.flags.c_contiguous:
        return bitmask, int(bits) & 0xFF
    return np.ascontiguousarray(((bitmask & bits) != 0).view(np.uint8)), 1


def _round_down_f32(values: np.ndarray) -> np.ndarray:
    """Largest float32 values not above the given float64 values."""
    f = values.astype(np.float32)
    return np.where(f.astype(np.float64) > values, np.nextafter(f, np.float32(-np.inf)), f)


def _prune_table(
    bkg_mode: int,
    bgrid: np.ndarray,
    sval: np.float32,
    vgrid: np.ndarray | None,
    floor: np.float32,
    nfoot: np.float32,
    nby: int,
    nbx: int,
) -> np.ndarray:
    """Thresholds of the cheap test of `_detect_kernel`, per interpolation
    cell (float32, ``(nby, nbx)``, indexed by the lower block row and
    column of a pixel's interpolation).

    Within a cell the interpolated maps are convex combinations of the four
    block values, so their minima bound them from below; with relative
    margins far above float32 rounding, a pixel whose image value (grid
    background) or residual (array or scalar background) is ``<=`` the
    entry cannot exceed the footprint threshold ``nfoot σ``.  ``-inf``
    (test everything) when the threshold is not positive or a map is not
    finite.
    """
    iy = np.minimum(np.arange(nby) + 1, nby - 1)
    ix = np.minimum(np.arange(nbx) + 1, nbx - 1)

    def cell_min(g: np.ndarray) -> np.ndarray:
        g = g.astype(np.float64)
        return np.minimum(np.minimum(g, g[iy]), np.minimum(g[:, ix], g[iy][:, ix]))

    no_prune = np.full((nby, nbx), -np.inf, dtype=np.float32)
    if not nfoot > 0:
        return no_prune
    if vgrid is None:
        thr = float(nfoot * sval)
        if not (np.isfinite(thr) and thr > 0):
            return no_prune
        t_lo = np.full((nby, nbx), thr)
    else:
        if not np.isfinite(vgrid).all():
            return no_prune
        v_lo = np.maximum(cell_min(vgrid) * (1 - 1e-6), np.float64(floor))
        t_lo = np.float64(nfoot) * np.sqrt(v_lo) * (1 - 1e-6)
    t_lo *= 1 - 1e-5
    if bkg_mode == _BKG_GRID:
        if not np.isfinite(bgrid).all():
            return no_prune
        b_lo = cell_min(bgrid)
        b_lo -= 1e-6 * (-cell_min(-np.abs(bgrid))) + 1e-30
        t_lo = b_lo + t_lo * (1 - 1e-7) - np.abs(b_lo) * 1e-15
    return _round_down_f32(t_lo)


def find_cosmic_rays(
    image: np.ndarray,
    variance_or_noise: float | np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    nsigma: float = 6.0,
    nsigma_footprint: float = 4.0,
    sharpness: float = 0.6,
    sharpness_nsigma: float = 2.5,
    min_pixels: int = 2,
    min_peak: float = 0.0,
    grow: int = 2,
    background: float | np.ndarray | None = None,
    bin_size: int = 64,
    exclude_bits: int = masks.bits("BAD", "NO_DATA"),
    max_cr_pixels: int | None = DEFAULT_MAX_CR_PIXELS,
    max_cr_fraction: float | None = None,
) -> CosmicRayResult:
    """Detect cosmic rays in one frame (see the module docstring).

    Parameters
    ----------
    image
        2-d image (e.g. electrons).
    variance_or_noise
        Noise of the frame: a scalar is the standard deviation σ (same units
        as the image); a 2-d array is a *variance* plane; ``None`` estimates
        a robust σ from the frame.
    mask
        Optional bitmask (uint8); pixels with ``exclude_bits`` are never
        part of a cosmic ray (before growth) and count as background for
        the sharpness test.
    nsigma
        Seed threshold above the background, in σ.
    nsigma_footprint
        Threshold, in σ, of the pixels connected to a seed that belong to
        the same feature (clamped to ``<= nsigma``).
    sharpness
        Maximum neighbour-mean / peak ratio of a seed (smaller = stricter).
    sharpness_nsigma
        Noise allowance, in σ, subtracted from the peak in the sharpness
        test.
    min_pixels
        Minimum number of pixels of a feature (``2`` leaves isolated hot
        pixels alone; ``1`` flags them too).
    min_peak
        Minimum value above background of a seed (image units).
    grow
        Growth radius in pixels (square).
    background
        Background to subtract (scalar or array); default `background_map`.
    bin_size
        Block size of the background and variance maps.
    exclude_bits
        Bits of ``mask`` excluded from detection.
    max_cr_pixels, max_cr_fraction
        Overflow limits on the number / fraction of grown cosmic-ray pixels
        (``None`` = no limit).

    Returns
    -------
    result
        `CosmicRayResult`.

    Notes
    -----
    The background and noise maps are never built as images: their block
    grids are interpolated on demand, and a single pass over the image
    evaluates thresholds and the sharpness test exactly only where a cheap
    bound of the residual does not rule the pixel out.  Features are found
    by flood fill from the seeds (not by labelling the whole footprint) and
    grown pixel by pixel, so the cost beyond the block medians is one read
    of the image and mask.  The result is the same as that of the whole-image
    array formulation (``resid = where(good, image - background, 0)``,
    ``cand = resid > nsigma σ``, labels of ``resid > nsigma_footprint σ``,
    maximum filter for the growth).
    """
    img = np.asarray(image)
    if img.ndim != 2 or min(img.shape) < 2:
        raise ValueError(f"image must be 2-d and at least 2x2, got shape {img.shape}")
    shape = img.shape
    bm = np.zeros(shape, dtype=np.uint8) if mask is None else np.asarray(mask)
    if bm.shape != shape:
        raise ValueError(f"mask has shape {bm.shape}, image has {shape}")
    if grow < 0 or min_pixels < 1:
        raise ValueError("grow must be >= 0 and min_pixels >= 1")

    data = np.ascontiguousarray(img, dtype=np.float32)
    out_mask = np.array(bm, dtype=np.uint8, order="C", copy=True)
    excl_mask, exclude = _exclusion(bm, exclude_bits)

    ny, nx = shape
    ye, xe = _edges(ny, bin_size), _edges(nx, bin_size)
    stride = _stride(bin_size)
    y0, y1, wy, x0, x1, wx = _grid_interp(ye, xe)
    dummy = np.zeros((1, 1), dtype=np.float32)
    bgrid, barr, bval = dummy, dummy, np.float32(0.0)
    if background is None:
        bkg_mode = _BKG_GRID
        grid = _block_medians_masked(data, data, excl_mask, exclude, False, ye, xe, stride)
        bgrid = _fill_grid(grid).astype(np.float32)
    else:
        bkg = np.asarray(background, dtype=np.float32)
        if bkg.ndim == 0:
            bkg_mode, bval = _BKG_SCALAR, np.float32(bkg)
        elif bkg.shape != shape:
            raise ValueError(f"background has shape {bkg.shape}, image has {shape}")
        else:
            bkg_mode, barr = _BKG_ARRAY, np.ascontiguousarray(bkg)
    interp = (y0, y1, wy, x0, x1, wx)

    def good_resid() -> np.ndarray:
        return _good_resid_values(
            data, excl_mask, exclude, bkg_mode, bgrid, barr, bval, *interp, _ROBUST_SAMPLES
        )

    sigma, vgrid, floor = _noise_model(
        variance_or_noise, data, excl_mask, exclude, ye, xe, stride, good_resid
    )
    sig_is_scalar = vgrid is None
    sval = np.float32(sigma) if sig_is_scalar else np.float32(0.0)
    if vgrid is None:
        vgrid = dummy

    nfoot = np.float32(min(nsigma_footprint, nsigma))
    thr_tab = _prune_table(
        bkg_mode, bgrid, sval, None if sig_is_scalar else vgrid, floor, nfoot, ye.size - 1, xe.size - 1
    )
    # row segments within which the interpolation uses the same block columns
    seg = np.concatenate(([0], np.flatnonzero(np.diff(x0) != 0) + 1, [nx])).astype(np.int64)
    foot = np.zeros(shape, dtype=np.uint8)
    row_seeds = np.zeros(ny, dtype=np.int64)
    seed_x = np.empty((ny, 8), dtype=np.int64)
    _detect_kernel(
        data,
        excl_mask,
        exclude,
        bkg_mode,
        bgrid,
        barr,
        bval,
        sig_is_scalar,
        sval,
        vgrid,
        floor,
        *interp,
        seg,
        thr_tab,
        nfoot,
        np.float32(nsigma),
        np.float32(sharpness),
        np.float32(sharpness_nsigma),
        bool(min_peak > 0),
        np.float32(min_peak),
        foot,
        row_seeds,
        seed_x,
    )
    cr = np.zeros(shape, dtype=bool)
    n_features, n_pixels = _features_kernel(
        foot, row_seeds, seed_x, int(min_pixels), int(grow), cr, out_mask, np.uint8(masks.BIT["CR"])
    )
    del foot
    n_features, n_pixels = int(n_features), int(n_pixels)

    limit_pixels = max_cr_pixels
    if max_cr_fraction is not None:
        frac_limit = int(np.floor(max_cr_fraction * cr.size))
        limit_pixels = frac_limit if limit_pixels is None else min(limit_pixels, frac_limit)
    overflow = limit_pixels is not None and n_pixels > limit_pixels
    if overflow:
        _log.warning(
            "Cosmic-ray overflow: %d CR pixels (%d features) exceed the limit of %d pixels.",
            n_pixels,
            n_features,
            limit_pixels,
        )
    return CosmicRayResult(
        cr_mask=cr,
        bitmask=out_mask,
        n_pixels=n_pixels,
        n_features=n_features,
        overflow=bool(overflow),
        max_pixels=limit_pixels,
    )


# ---------------------------------------------------------------------------
# repair
# ---------------------------------------------------------------------------


@numba.njit(cache=True)
def _median_inplace(buf, n):  # pragma: no cover - numba
    """``np.median(buf[:n])`` (no NaN), reordering ``buf[:n]``: insertion
    sort for the small windows of the repair (no temporary array), numba's
    median beyond 64 values."""
    if n > 64:
        return np.median(buf[:n])
    for i in range(1, n):
        v = buf[i]
        k = i - 1
        while k >= 0 and buf[k] > v:
            buf[k + 1] = buf[k]
            k -= 1
        buf[k + 1] = v
    half = n >> 1
    if n % 2 == 1:
        return buf[half]
    return (buf[half - 1] + buf[half]) / 2


@numba.njit(cache=True, nogil=True)
def _repair_kernel(
    image: np.ndarray,
    cr: np.ndarray,
    excl: np.ndarray,
    exclude: int,
    radius: int,
    max_radius: int,
    min_good: int,
    intrp_bit: int,
    bitmask: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:  # pragma: no cover - numba
    """Replace each ``out[y, x]`` with ``cr[y, x]`` (uint8) by the median
    of the source pixels of ``image`` (finite, not ``cr``, no ``exclude``
    bit in ``excl``) in a growing window, and or ``intrp_bit`` into
    ``bitmask`` there (``excl`` may be ``bitmask``: only ``cr`` pixels
    change); returns the flat indices of the pixels without any source
    within ``max_radius`` (left for the caller's fallback)."""
    ny, nx = image.shape
    buf = np.empty((2 * max_radius + 1) ** 2, dtype=np.float64)
    missing = np.empty(16, dtype=np.int64)
    n_missing = 0
    for y in range(ny):
        crow = cr[y]
        x = -1
        while True:
            x = _find_byte(crow, 1, x + 1)
            if x >= nx:
                break
            r = radius
            while True:
                cnt = 0
                for yy in range(max(0, y - r), min(ny, y + r + 1)):
                    for xx in range(max(0, x - r), min(nx, x + r + 1)):
                        v = image[yy, xx]
                        if np.isfinite(v) and cr[yy, xx] == 0 and (excl[yy, xx] & exclude) == 0:
                            buf[cnt] = v
                            cnt += 1
                if cnt >= min_good or r >= max_radius:
                    break
                r = min(2 * r, max_radius)
            if cnt > 0:
                out[y, x] = _median_inplace(buf, cnt)
            else:
                missing = _push(missing, n_missing, y * nx + x)
                n_missing += 1
            bitmask[y, x] |= intrp_bit
    return missing[:n_missing]


def repair_cosmic_rays(
    image: np.ndarray,
    variance_or_noise: float | np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    result: CosmicRayResult | None = None,
    radius: int = 3,
    max_radius: int = 32,
    min_good: int = 5,
    source_exclude_bits: int = masks.bits("BAD", "SAT", "NO_DATA", "CR"),
    raise_on_overflow: bool = False,
    **find_kwargs: Any,
) -> RepairResult:
    """Find (unless ``result`` is given) and repair cosmic rays.

    Parameters
    ----------
    image
        2-d image (not modified).
    variance_or_noise, mask
        As for `find_cosmic_rays`.
    result
        A previous `find_cosmic_rays` result for this image, to skip
        detection.
    radius, max_radius, min_good
        Replacement window: half-width ``radius``, doubled until it holds
        ``min_good`` good pixels or reaches ``max_radius``.
    source_exclude_bits
        Bits of the bitmask that disqualify a pixel as a replacement source
        (cosmic-ray pixels never serve).
    raise_on_overflow
        Raise `CosmicRayOverflowError` instead of returning
        ``overflow=True`` with an unrepaired image.
    **find_kwargs
        Passed to `find_cosmic_rays` (``nsigma``, ``grow``,
        ``max_cr_pixels``, ...).

    Returns
    -------
    result
        `RepairResult`; its bitmask has ``CR`` on the flagged pixels and,
        when repaired, ``INTRP`` as well.
    """
    img = np.asarray(image)
    if result is None:
        result = find_cosmic_rays(img, variance_or_noise, mask, **find_kwargs)
    elif find_kwargs:
        raise TypeError("detection keywords given together with a detection result")
    if result.cr_mask.shape != img.shape:
        raise ValueError(f"detection result has shape {result.cr_mask.shape}, image has {img.shape}")
    out = np.array(img, dtype=np.result_type(img.dtype, np.float32), copy=True)
    bitmask = result.bitmask.copy()
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(CosmicRayResult)}
    fields["bitmask"] = bitmask
    if result.overflow:
        if raise_on_overflow:
            raise CosmicRayOverflowError(
                f"{result.n_pixels} cosmic-ray pixels exceed the limit of {result.max_pixels}"
            )
        _log.warning("Cosmic-ray repair skipped: overflow (%d pixels).", result.n_pixels)
        return RepairResult(**fields, image=out, repaired=False)
    if result.n_pixels == 0:
        return RepairResult(**fields, image=out, repaired=True)

    cr = np.ascontiguousarray(result.cr_mask, dtype=np.bool_)
    cr8 = cr.view(np.uint8)
    excl, exclude = _exclusion(bitmask, source_exclude_bits)
    # INTRP is or-ed into the bitmask by the kernel when that is the array
    # it reads (only CR pixels change), else into a scratch array
    intrp_target = bitmask if excl is bitmask else np.zeros(img.shape, dtype=np.uint8)
    src_img = img if img.dtype in (np.float32, np.float64) else img.astype(np.float64)
    rad = max(1, int(radius))
    intrp = masks.BIT["INTRP"]
    missing = _repair_kernel(
        np.ascontiguousarray(src_img),
        cr8,
        excl,
        exclude,
        rad,
        max(rad, int(max_radius)),
        max(1, int(min_good)),
        np.uint8(intrp),
        intrp_target,
        out,
    )
    if intrp_target is not bitmask:
        bitmask[cr] |= intrp
    if missing.size:
        # no source pixel within max_radius: the frame median
        source = np.isfinite(out) & ~cr
        if source_exclude_bits:
            source &= (bitmask & source_exclude_bits) == 0
        out.flat[missing] = _approx_median(out[source]) if source.any() else np.nan
        _log.warning(
            "%d cosmic-ray pixels had no good pixel within %d px; used the frame median.",
            missing.size,
            max_radius,
        )
    return RepairResult(**fields, image=out, repaired=True)
