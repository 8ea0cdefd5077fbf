"""Sigma-clipped mean and variance, as used on the flats of a PTC pair.

The clipping runs on 2-d images in place (the good pixels selected by a
mask, no copies of the values): the quartiles that seed it come from a
regular subsample of the good values, the moments of each window from the
`~lsst.cpcombined.algorithms.combine.window_moments` kernel.
"""

from __future__ import annotations

__all__ = ("clipped_stats",)

import math

import numpy as np

from ..combine import regular_subsample, window_moments

#: Largest number of values whose quartiles seed the clipping (`clipped_stats`):
#: larger inputs use a regular subsample of about this size.
_QUARTILE_SAMPLE: int = 100_000

#: ``sigma`` of a normal distribution per unit of interquartile range.
_IQR_TO_SIGMA: float = 0.7413


def _grid_sample(values: np.ndarray, good: np.ndarray, n_good: int, size: int) -> np.ndarray:
    """About ``size`` of the good ``values`` of a 2-d array, on a regular grid.

    Every ``sy``-th row and ``sx``-th column, with ``sy * sx`` about
    ``n_good / size`` (``n_good`` is the number of True in ``good``), then
    the good values among those: all the good values when ``n_good <= size``
    or when the grid catches fewer than ``size / 4`` of them.
    """
    if n_good <= size:
        return values[good]
    ny, nx = values.shape
    step = -(-n_good // size)
    sy = max(1, min(ny, math.isqrt(step)))
    sx = min(nx, -(-step // sy))
    sample = values[::sy, ::sx][good[::sy, ::sx]]
    return sample if 4 * sample.size >= size else values[good]


def _quartile_seed(values: np.ndarray, good: np.ndarray | None, n_good: int | None = None) -> np.ndarray:
    """Values whose quartiles seed the clipping: the good ``values`` (all
    of a 1-d array when ``good`` is `None`), or when there are more than
    `_QUARTILE_SAMPLE` of them, a regular subsample of about that many."""
    if good is None:
        return regular_subsample(values, _QUARTILE_SAMPLE)
    if n_good is None:
        n_good = int(np.count_nonzero(good))
    return _grid_sample(values, good, n_good, _QUARTILE_SAMPLE)


def _clipped_window(
    rows: np.ndarray,
    bad: np.ndarray | None,
    n_all: int,
    seed: np.ndarray,
    n_sigma: float,
    n_iter: int,
) -> tuple[int, float, float, float, float]:
    """The clipping loop of `clipped_stats` on the good values of ``rows``.

    The moments of each window ``[lo, hi]`` come from one pass of the
    `~lsst.cpcombined.algorithms.combine.window_moments` kernel over
    ``rows`` (no copy of the values).  A window is the same set as the
    previous one (and the loop stops) when it holds as many values and the
    two windows are nested.

    Parameters
    ----------
    rows : `numpy.ndarray`
        2-d values.
    bad : `numpy.ndarray` or `None`
        uint8 array of the shape of ``rows``, non-zero for values not to
        use (`None`: all used).
    n_all : `int`
        Number of good values.
    seed : `numpy.ndarray`
        Values whose quartiles seed the first pass (`_quartile_seed`).
    n_sigma, n_iter
        As in `clipped_stats`.

    Returns
    -------
    n : `int`
        Number of kept values.
    mean, variance : `float`
        Their mean and population variance.
    lo, hi : `float`
        The last window: kept values are the good ones with ``lo <= v <= hi``
        (``-inf, inf`` when nothing was clipped).
    """
    bits = 0 if bad is None else 1

    def moments(lo: float, hi: float, centre: float) -> tuple[int, float, float]:
        return window_moments(rows, lo, hi, centre, bad, bits)

    seed = np.asarray(seed, dtype=np.float64)  # quartiles in float64 whatever the input type
    q25, center, q75 = (float(q) for q in np.percentile(seed, [25.0, 50.0, 75.0]))
    sigma = _IQR_TO_SIGMA * (q75 - q25)
    lo, hi = -math.inf, math.inf
    n, stats = n_all, None  # the moments of the current window, computed when needed
    if sigma <= 0:
        stats = moments(lo, hi, center)[1:]
        sigma = math.sqrt(stats[1])
    for _ in range(n_iter):
        new_lo, new_hi = center - n_sigma * sigma, center + n_sigma * sigma
        n_k, mean_k, var_k = moments(new_lo, new_hi, center)
        if n_k == 0:
            break
        nested = (new_lo <= lo and new_hi >= hi) or (new_lo >= lo and new_hi <= hi)
        same = n_k == n and nested
        n, stats, lo, hi = n_k, (mean_k, var_k), new_lo, new_hi
        center, sigma = mean_k, math.sqrt(var_k)
        if same:
            break
    if stats is None:
        stats = moments(lo, hi, center)[1:]
    return n, stats[0], stats[1], lo, hi


def clipped_stats(
    values: np.ndarray, n_sigma: float = 5.5, n_iter: int = 3
) -> tuple[float, float, np.ndarray]:
    """Sigma-clipped mean and variance of a 1-d array.

    The first pass clips about the median with a robust width
    (``0.7413 * IQR``); each further pass clips about the mean of the kept
    values with their standard deviation.  At most ``n_iter`` passes; stops
    early when nothing changes.  The median and quartiles only seed the
    passes: above 100 000 values they are those of a regular subsample of
    about 100 000 values.  The moments are accumulated in float64 (float32
    input is not copied).

    Parameters
    ----------
    values : `numpy.ndarray`
        Finite values (1-d).
    n_sigma : `float`, optional
        Clipping threshold in standard deviations.
    n_iter : `int`, optional
        Maximum number of clipping passes.

    Returns
    -------
    mean, variance : `float`
        Mean and (population, ``ddof=0``) variance of the kept values; NaN
        when nothing is left.
    keep : `numpy.ndarray`
        Boolean array, True for the kept values.
    """
    x = np.asarray(values)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if x.size == 0:
        return math.nan, math.nan, np.ones(x.shape, dtype=bool)
    n, mean, var, lo, hi = _clipped_window(
        x.reshape(1, -1), None, x.size, _quartile_seed(x, None), n_sigma, n_iter
    )
    keep = np.ones(x.shape, dtype=bool) if lo == -math.inf else (x >= lo) & (x <= hi)
    if n == 0:
        return math.nan, math.nan, keep
    return float(mean), float(var), keep
