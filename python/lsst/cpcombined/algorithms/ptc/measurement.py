"""Measurement of one flat pair on one amplifier: means, variance, covariances.

Units: means in ADU, variances and covariances in ADU² (images
ISR-processed, not gain-corrected).
"""

from __future__ import annotations

__all__ = ("DEFAULT_BAD_BITS", "PairMeasurement", "fixed_pattern_outliers", "measure_pair")

import dataclasses
import math
from typing import Any

import numpy as np

from .. import masks
from .clipping import _clipped_window, _grid_sample, _quartile_seed
from .covariances import covariances_fft

#: Mask planes excluded from the PTC measurement by default.
DEFAULT_BAD_BITS: int = masks.bits("BAD", "SAT", "INTRP", "CR", "NO_DATA", "SUSPECT", "EDGE")


def fixed_pattern_outliers(
    im1: np.ndarray,
    im2: np.ndarray,
    mask1: np.ndarray,
    mask2: np.ndarray,
    bad_bits: int,
    n_sigma: float,
    n_iter: int,
) -> np.ndarray:
    """Pixels of a flat pair whose level in the pair's mean image,
    ``(I1/mu1 + I2/mu2)/2``, is a sigma-clipping outlier.

    For Gaussian pixels the mean image is independent of the difference
    image, so cutting on it does not bias the pair's variance; it removes
    pixels whose response differs from their neighbours' (dead columns,
    cold or hot pixels), whose variance differs too: a dead column holding
    0.4 % of an amplifier's pixels lowers its pair variances by 0.4 %.

    Parameters
    ----------
    im1, im2 : `numpy.ndarray`
        The two flats of one amplifier (2-d, same shape).
    mask1, mask2 : `numpy.ndarray`
        Their mask planes (integer bit masks).
    bad_bits : `int`
        Mask bits of pixels not to use (never flagged).
    n_sigma : `float`
        Clipping threshold in standard deviations.
    n_iter : `int`
        Maximum number of clipping passes (as in `clipped_stats`).

    Returns
    -------
    outliers : `numpy.ndarray`
        Boolean array of the image shape, True for good pixels outside the
        clipping window; all False when fewer than 100 pixels are good or
        a flat's median is not positive.
    """
    good = np.isfinite(im1) & np.isfinite(im2) & ((mask1 & bad_bits) == 0) & ((mask2 & bad_bits) == 0)
    out = np.zeros(im1.shape, dtype=bool)
    n_good = int(np.count_nonzero(good))
    if n_good < 100:
        return out
    # The normalisation only needs ~0.1 %: medians of a regular subsample of
    # ~20000 good pixels are enough.
    mu1 = float(np.median(_grid_sample(im1, good, n_good, 20000)))
    mu2 = float(np.median(_grid_sample(im2, good, n_good, 20000)))
    if not (mu1 > 0 and mu2 > 0):
        return out
    # The level is clipped on the 2-d image in place (the good pixels
    # selected by a mask, no copies of the values).
    with np.errstate(invalid="ignore", over="ignore"):
        level = 0.5 * (im1 / mu1 + im2 / mu2)
    _, _, _, lo, hi = _clipped_window(
        level, (~good).view(np.uint8), n_good, _quartile_seed(level, good, n_good), n_sigma, n_iter
    )
    if lo > -math.inf:
        out = good & ~((level >= lo) & (level <= hi))
    return out


@dataclasses.dataclass(frozen=True)
class PairMeasurement:
    """Statistics of one flat pair on one amplifier (`measure_pair`).

    Attributes
    ----------
    mean1, mean2 : `float`
        Clipped means of the two images (ADU).
    mean : `float`
        ``(mean1 + mean2) / 2`` (ADU).
    variance : `float`
        ``C00 = var(D) / 2`` (ADU²), clipped, population variance.
    cov : `numpy.ndarray` or `None`
        ``C_ij = cov_ij(D) / 2`` (ADU²), ``(max_lag+1, max_lag+1)``;
        ``cov[0, 0] == variance``.  `None` when ``max_lag < 0``.
    cov_npairs : `numpy.ndarray` or `None`
        Pixel pairs used at each lag.
    npix : `int`
        Pixels used for ``variance`` (after masks, edges and clipping).
    sat_fraction : `float`
        Fraction of the (edge-trimmed) pixels with ``SAT`` set in either
        mask (0 without masks).
    exp_time : `float`
        Exposure time of the pair (s), NaN if not given.
    ids : `tuple` or `None`
        Exposure ids of the pair, if given.
    valid : `bool`
        False when the pair could not be measured (see ``reason``).
    reason : `str`
        Why ``valid`` is False ("" otherwise).
    """

    mean1: float
    mean2: float
    mean: float
    variance: float
    cov: np.ndarray | None
    cov_npairs: np.ndarray | None
    npix: int
    sat_fraction: float = 0.0
    exp_time: float = math.nan
    ids: tuple[Any, Any] | None = None
    valid: bool = True
    reason: str = ""


def _pair_pixels(
    image1: np.ndarray,
    image2: np.ndarray,
    mask1: np.ndarray | None,
    mask2: np.ndarray | None,
    bad_bits: int,
    edge: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The pixels of a flat pair that `measure_pair` uses.

    Returns
    -------
    im1, im2 : `numpy.ndarray`
        The two images inside the ``edge``-pixel border (views; integer
        images are converted to float64).
    good : `numpy.ndarray`
        Boolean, pixels finite in both images and with none of ``bad_bits``
        in either mask.
    sat_fraction : `float`
        Fraction of the pixels with ``SAT`` in either mask.

    Raises
    ------
    ValueError
        If the images are not 2-d of equal shapes, or the edge leaves
        nothing.
    """
    im1 = np.asarray(image1)
    im2 = np.asarray(image2)
    if im1.dtype.kind != "f":
        im1 = im1.astype(np.float64)
    if im2.dtype.kind != "f":
        im2 = im2.astype(np.float64)
    if im1.shape != im2.shape or im1.ndim != 2:
        raise ValueError(f"Images must be 2-d with equal shapes, got {im1.shape} and {im2.shape}.")
    ny, nx = im1.shape
    if 2 * edge >= min(ny, nx):
        raise ValueError(f"Edge of {edge} px leaves nothing of a {ny}x{nx} amplifier.")
    sl = (slice(edge, ny - edge), slice(edge, nx - edge))
    im1, im2 = im1[sl], im2[sl]
    good = np.isfinite(im1) & np.isfinite(im2)
    sat = np.zeros(im1.shape, dtype=bool)
    for m in (mask1, mask2):
        if m is not None:
            m = np.asarray(m)[sl]
            good &= (m & bad_bits) == 0
            sat |= (m & masks.BIT["SAT"]) != 0
    return im1, im2, good, float(sat.mean())


def measure_pair(
    image1: np.ndarray,
    image2: np.ndarray,
    mask1: np.ndarray | None = None,
    mask2: np.ndarray | None = None,
    *,
    bad_bits: int = DEFAULT_BAD_BITS,
    n_sigma: float = 5.5,
    n_iter: int = 3,
    edge: int = 20,
    max_lag: int = 10,
    min_pixels: int = 100,
    exp_time: float = math.nan,
    ids: tuple[Any, Any] | None = None,
) -> PairMeasurement:
    """Measure means, variance and covariances of a flat pair on one amp.

    Pixels used: inside the ``edge``-pixel border, finite in both images,
    and with none of ``bad_bits`` set in either mask.  The two means are
    clipped over that common set; the difference image
    ``D = (mu2*I1 - mu1*I2)/mu`` is clipped with the same parameters and the
    pixels it rejects get weight 0 in the covariance computation, so
    ``cov[0, 0]`` equals ``variance`` (up to rounding).

    Parameters
    ----------
    image1, image2 : `numpy.ndarray`
        The two amplifier images (ADU, ISR-processed, not gain-corrected).
    mask1, mask2 : `numpy.ndarray`, optional
        2-d uint8 bitmasks (`lsst.cpcombined.algorithms.masks`).
    bad_bits : `int`, optional
        Mask bits excluding a pixel (default `DEFAULT_BAD_BITS`).
    n_sigma, n_iter : optional
        Sigma clipping (5.5σ, 3 iterations).
    edge : `int`, optional
        Pixels dropped on each side of the amplifier.
    max_lag : `int`, optional
        Largest covariance lag (10); negative to skip the covariances.
    min_pixels : `int`, optional
        Fewer usable pixels than this makes the measurement invalid.
    exp_time : `float`, optional
        Exposure time of the pair (carried into the result).
    ids : `tuple`, optional
        Exposure ids of the pair (carried into the result).

    Returns
    -------
    measurement : `PairMeasurement`
        Invalid (``valid=False``, NaN statistics, ``reason`` set) when too
        few pixels are usable or the mean is not positive.
    """
    im1, im2, good, sat_fraction = _pair_pixels(image1, image2, mask1, mask2, bad_bits, edge)

    def invalid(reason: str) -> PairMeasurement:
        return PairMeasurement(
            math.nan, math.nan, math.nan, math.nan, None, None, 0, sat_fraction, exp_time, ids, False, reason
        )

    n_good = int(np.count_nonzero(good))
    if n_good < min_pixels:
        return invalid(f"only {n_good} usable pixels (< {min_pixels})")
    # The clipping runs on the 2-d images in place, the good pixels selected
    # by a mask (no copies of the pixel values).
    not_good = (~good).view(np.uint8)

    def clip(values: np.ndarray) -> tuple[int, float, float, float, float]:
        seed = _quartile_seed(values, good, n_good)
        return _clipped_window(values, not_good, n_good, seed, n_sigma, n_iter)

    mu1 = float(clip(im1)[1])
    mu2 = float(clip(im2)[1])
    mu = 0.5 * (mu1 + mu2)
    if not mu > 0:
        return invalid(f"non-positive mean ({mu:g} ADU)")
    # In float64 whatever the input type.
    diff = np.multiply(im1, mu2, dtype=np.float64)
    diff -= np.multiply(im2, mu1, dtype=np.float64)
    diff /= mu
    _, _, var_d, lo, hi = clip(diff)
    weight = good
    if lo > -math.inf:
        weight = good & (diff >= lo) & (diff <= hi)
    npix = int(np.count_nonzero(weight))
    if npix < min_pixels:
        return invalid(f"only {npix} pixels left after clipping (< {min_pixels})")
    cov = npairs = None
    if max_lag >= 0:
        cov, npairs = covariances_fft(diff, weight, max_lag)
        cov *= 0.5
    return PairMeasurement(
        mean1=mu1,
        mean2=mu2,
        mean=mu,
        variance=0.5 * var_d,
        cov=cov,
        cov_npairs=npairs,
        npix=npix,
        sat_fraction=sat_fraction,
        exp_time=exp_time,
        ids=ids,
    )
