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
from typing import Any

import numba
import numpy as np
from scipy import ndimage

from . import masks

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


@numba.njit(parallel=True, cache=True)
def _block_medians(image, good, ye, xe, stride):  # pragma: no cover - numba
    """Median of the good pixels of each block, sampling every ``stride``-th
    row and column (NaN when fewer than max(3, 10 %) of the sampled pixels
    are good)."""
    nby, nbx = ye.size - 1, xe.size - 1
    grid = np.full((nby, nbx), np.nan)
    for k in numba.prange(nby * nbx):
        i = k // nbx
        j = k % nbx
        size = ((ye[i + 1] - ye[i] + stride - 1) // stride) * ((xe[j + 1] - xe[j] + stride - 1) // stride)
        buf = np.empty(size, dtype=np.float32)
        n = 0
        for y in range(ye[i], ye[i + 1], stride):
            for x in range(xe[j], xe[j + 1], stride):
                if good[y, x]:
                    buf[n] = image[y, x]
                    n += 1
        if n >= max(3, size // 10):
            grid[i, j] = np.median(buf[:n])
    return grid


@numba.njit(parallel=True, cache=True)
def _bilinear(grid, y0, y1, wy, x0, x1, wx):  # pragma: no cover - numba
    """Bilinear interpolation of block values at every pixel (float32)."""
    ny, nx = y0.size, x0.size
    out = np.empty((ny, nx), dtype=np.float32)
    for y in numba.prange(ny):
        a = grid[y0[y]]
        b = grid[y1[y]]
        w = wy[y]
        for x in range(nx):
            r0 = a[x0[x]] * (1 - w) + b[x0[x]] * w
            r1 = a[x1[x]] * (1 - w) + b[x1[x]] * w
            out[y, x] = r0 * (1 - wx[x]) + r1 * wx[x]
    return out


def background_map(image: np.ndarray, good: np.ndarray | None = None, bin_size: int = 64) -> np.ndarray:
    """Smooth background: block medians of good pixels, bilinearly
    interpolated between block centres.

    Parameters
    ----------
    image
        2-d image.
    good
        Boolean mask of pixels to use (default: finite pixels).
    bin_size
        Approximate block size in pixels (blocks tile the image exactly).

    Returns
    -------
    background
        float32 array of the image's shape.  Blocks without enough good
        pixels take the median of the other blocks (0 if there is none).
    """
    image = np.asarray(image)
    ny, nx = image.shape
    if good is None:
        good = np.isfinite(image)
    ye, xe = _edges(ny, bin_size), _edges(nx, bin_size)
    # A smooth background does not need every pixel: sample every other
    # row and column of blocks of 32 pixels or more (1/4 of the work).
    stride = 2 if bin_size >= 32 else 1
    grid = _block_medians(
        np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(good, dtype=np.bool_), ye, xe, stride
    )
    if np.isnan(grid).all():
        grid[:] = 0.0
    else:
        grid[np.isnan(grid)] = np.nanmedian(grid)
    yc = 0.5 * (ye[:-1] + ye[1:] - 1)
    xc = 0.5 * (xe[:-1] + xe[1:] - 1)
    y0, y1, wy = _interp_weights(yc, ny)
    x0, x1, wx = _interp_weights(xc, nx)
    return _bilinear(grid.astype(np.float32), y0, y1, wy, x0, x1, wx)


def _approx_median(values: np.ndarray, max_samples: int = 200_000) -> float:
    """Median of a regular subsample of at most ``max_samples`` values (a
    floor or a fallback level needs no more)."""
    v = np.asarray(values).ravel()
    if v.size > max_samples:
        v = v[:: v.size // max_samples + 1]
    return float(np.median(v))


def _robust_sigma(values: np.ndarray, max_samples: int = 1_000_000) -> float:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size > max_samples:
        v = v[:: int(np.ceil(v.size / max_samples))]
    if v.size == 0:
        return float("nan")
    med = np.median(v)
    return float(1.4826 * np.median(np.abs(v - med)))


def _noise_map(
    variance_or_noise: float | np.ndarray | None,
    resid: np.ndarray,
    good: np.ndarray,
    bin_size: int,
) -> np.ndarray | float:
    """Background noise σ: scalar, or a float32 map."""
    if variance_or_noise is None:
        sigma = _robust_sigma(resid[good])
        if not np.isfinite(sigma) or sigma <= 0:
            raise ValueError("cannot estimate the noise of the image (no good pixels or zero scatter)")
        return sigma
    arr = np.asarray(variance_or_noise, dtype=np.float64)
    if arr.ndim == 0:
        sigma = float(arr)
        if not np.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"noise must be a positive number, got {sigma}")
        return sigma
    if arr.shape != resid.shape:
        raise ValueError(f"variance plane has shape {arr.shape}, image has {resid.shape}")
    vgood = good & np.isfinite(arr) & (arr > 0)
    var_bkg = background_map(arr, vgood, bin_size)
    floor = np.float32(max(_approx_median(arr[vgood]) if vgood.any() else 1.0, 1e-30) * 1e-6)
    return np.sqrt(np.maximum(var_bkg, floor))


# ---------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------

#: Opposite-neighbour pairs (dy, dx) for the sharpness test.
_PAIRS = (((0, -1), (0, 1)), ((-1, 0), (1, 0)), ((-1, -1), (1, 1)), ((-1, 1), (1, -1)))


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
        Optional uint8 bitmask; pixels with ``exclude_bits`` are never part
        of a cosmic ray (before growth) and count as background for the
        sharpness test.
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

    data = img.astype(np.float32, copy=False)
    good = np.isfinite(data)
    if exclude_bits:
        good &= (bm & exclude_bits) == 0

    if background is None:
        bkg = background_map(data, good, bin_size)
    else:
        bkg = np.asarray(background, dtype=np.float32)
        if bkg.ndim != 0 and bkg.shape != shape:
            raise ValueError(f"background has shape {bkg.shape}, image has {shape}")
    resid = np.where(good, data - bkg, np.float32(0.0)).astype(np.float32, copy=False)
    sigma = _noise_map(variance_or_noise, resid, good, bin_size)

    thr_seed = np.float32(nsigma) * sigma
    cand = good & (resid > thr_seed)
    if min_peak > 0:
        cand &= resid > min_peak
    iy, ix = np.nonzero(cand)

    # sharpness test at the candidates only
    padded = np.pad(resid, 1, mode="reflect")
    py, px = iy + 1, ix + 1
    peak = padded[py, px]
    sig_c = sigma if np.ndim(sigma) == 0 else sigma[iy, ix]
    limit = np.float32(sharpness) * (peak - np.float32(sharpness_nsigma) * sig_c)
    sharp = np.zeros(iy.size, dtype=bool)
    for (ay, ax), (by, bx) in _PAIRS:
        m = 0.5 * (padded[py + ay, px + ax] + padded[py + by, px + bx])
        sharp |= m < limit
    del padded
    seeds_y, seeds_x = iy[sharp], ix[sharp]

    cr_core = np.zeros(shape, dtype=bool)
    n_features = 0
    if seeds_y.size:
        foot = good & (resid > np.float32(min(nsigma_footprint, nsigma)) * sigma)
        labels, _ = ndimage.label(foot, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel())
        seed_labels = np.unique(labels[seeds_y, seeds_x])
        seed_labels = seed_labels[(seed_labels > 0) & (sizes[seed_labels] >= min_pixels)]
        n_features = int(seed_labels.size)
        if n_features:
            lut = np.zeros(sizes.size, dtype=bool)
            lut[seed_labels] = True
            cr_core = lut[labels]
        del labels

    if grow > 0 and n_features:
        cr = ndimage.maximum_filter(cr_core.view(np.uint8), size=2 * grow + 1, mode="constant").astype(bool)
    else:
        cr = cr_core
    n_pixels = int(cr.sum())

    out_mask = bm.astype(np.uint8, copy=True)
    out_mask[cr] |= masks.BIT["CR"]

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


@numba.njit(cache=True, nogil=True)
def _repair_kernel(
    image: np.ndarray,
    source: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    radius: int,
    max_radius: int,
    min_good: int,
    fallback: float,
    out: np.ndarray,
) -> int:
    """Replace ``out[ys, xs]`` by the median of ``source`` pixels of
    ``image`` in a growing window; returns the number of pixels that had to
    use ``fallback``."""
    ny, nx = image.shape
    buf = np.empty((2 * max_radius + 1) ** 2, dtype=np.float64)
    n_fallback = 0
    for k in range(ys.size):
        y = ys[k]
        x = xs[k]
        r = radius
        while True:
            cnt = 0
            for yy in range(max(0, y - r), min(ny, y + r + 1)):
                for xx in range(max(0, x - r), min(nx, x + r + 1)):
                    if source[yy, xx]:
                        buf[cnt] = image[yy, xx]
                        cnt += 1
            if cnt >= min_good or r >= max_radius:
                break
            r = min(2 * r, max_radius)
        if cnt > 0:
            out[y, x] = np.median(buf[:cnt])
        else:
            out[y, x] = fallback
            n_fallback += 1
    return n_fallback


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

    source = np.isfinite(out) & ~result.cr_mask
    if source_exclude_bits:
        source &= (bitmask & source_exclude_bits) == 0
    fallback = _approx_median(out[source]) if source.any() else float("nan")
    ys, xs = np.nonzero(result.cr_mask)
    src_img = np.ascontiguousarray(img, dtype=np.float64) if img.dtype != np.float64 else img
    rad = max(1, int(radius))
    n_fb = _repair_kernel(
        src_img,
        source,
        ys.astype(np.int64),
        xs.astype(np.int64),
        rad,
        max(rad, int(max_radius)),
        max(1, int(min_good)),
        fallback,
        out,
    )
    if n_fb:
        _log.warning(
            "%d cosmic-ray pixels had no good pixel within %d px; used the frame median.", n_fb, max_radius
        )
    bitmask[result.cr_mask] |= masks.BIT["INTRP"]
    return RepairResult(**fields, image=out, repaired=True)
