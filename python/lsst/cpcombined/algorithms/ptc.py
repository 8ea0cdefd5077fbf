"""Photon Transfer Curve (PTC): flat pairing, pair measurement, fits.

Everything here works on plain `numpy.ndarray` objects (no butler, no I/O).
Units: means in ADU, variances and covariances in ADU², gain in e-/ADU,
read noise in e-, ``a00`` (and the ``a_ij`` of the full model) in 1/e-.
Images are 2-d arrays indexed ``[y, x]``, already ISR-processed (overscan,
bias and dark subtracted) and **not** gain-corrected.

The steps
---------
1. `pair_flats` — pair the flats by equal exposure time (the first two, in
   id order, at each time; leftovers and lone flats are reported).
2. `measure_pair` — per amplifier and pair: sigma-clipped means ``mu1``,
   ``mu2`` (5.5σ, 3 iterations, 20 edge pixels dropped on each side), their
   average ``mu``, the difference image ``D = (mu2*I1 - mu1*I2)/mu`` (which
   cancels the fixed pattern exactly even when the two fluxes differ), the
   variance ``C00 = var(D)/2`` (same clipping) and the covariances ``C_ij``
   of ``D/√2`` up to lag 10 by FFT (`covariances_fft`).
3. `fit_ptc` — per amplifier: turnover (saturation) and gap cuts, then the
   fit of Astier et al. (2019), eq. 16,
   ``C00(mu) = (exp(2*a00*mu*g) - 1)/(2*a00*g**2) + n00/g**2``
   with 5σ outlier rejection, giving gain, noise (``sqrt(n00)``), ``a00``,
   turnoff and their errors, the point arrays for plots, and flags.
4. `gain_from_flat_pairs` — the quick per-pair gain ``mu/(C00 - rn_adu**2)``
   and its median over the unsaturated pairs (what the ScriptQueue script
   reports); optionally with the covariances summed to a small lag, which
   removes the brighter-fatter bias of the plain formula.
5. `fit_full_covariance` — the full covariance model of Astier et al.
   (2019), eq. 20, fitted to the ``C_ij`` of small lags (``a_ij``, ``b_ij``).

Covariance index convention: ``cov[i, j]`` is the covariance between pixels
separated by ``i`` columns (x, serial direction) and ``j`` rows (y, parallel
direction).  ``cov[i, j]`` for ``i, j > 0`` averages the lags ``(i, j)`` and
``(i, -j)`` (the two diagonals), as the PTC literature does.
"""

from __future__ import annotations

__all__ = (
    "DEFAULT_BAD_BITS",
    "FlatExposure",
    "FlatPair",
    "FullCovarianceResult",
    "PairMeasurement",
    "PairGainResult",
    "PairingResult",
    "PtcAmpResult",
    "clipped_stats",
    "covariances_fft",
    "covariance_model",
    "fit_full_covariance",
    "fit_ptc",
    "fit_ptc_measurements",
    "fixed_pattern_outliers",
    "gain_from_flat_pair",
    "gain_from_flat_pairs",
    "measure_pair",
    "pair_flats",
    "ptc_model",
    "turnover_mask",
)

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import scipy.fft
import scipy.optimize
import scipy.signal
from numba import njit

from . import masks
from .combine import regular_subsample, window_moments

_LOG = logging.getLogger(__name__)

#: Mask planes excluded from the PTC measurement by default.
DEFAULT_BAD_BITS: int = masks.bits("BAD", "SAT", "INTRP", "CR", "NO_DATA", "SUSPECT", "EDGE")

# Fit defaults of the specification (section 3, "PTC").
_START = (-2.0e-6, 1.5, 25.0)  # a00 [1/e-], gain [e-/ADU], n00 [e-^2]
_BOUNDS = ((-1.0e-4, 0.1, 0.0), (0.0, 10.0, 2000.0))


# ---------------------------------------------------------------------------
# 1. Pairing
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlatExposure:
    """One flat exposure as seen by the pairing step.

    Attributes
    ----------
    exposure_id : `int` or `str`
        Exposure identifier; pairs are formed in the (natural) order of ids.
    exp_time : `float`
        Exposure time in seconds.
    physical_filter : `str`
        Physical filter of the exposure.
    """

    exposure_id: Any
    exp_time: float
    physical_filter: str


@dataclasses.dataclass(frozen=True)
class FlatPair:
    """Two flats of (nearly) the same exposure time.

    Attributes
    ----------
    exp_time : `float`
        Mean exposure time of the two flats (s).
    first, second : `FlatExposure`
        The two exposures, in id order.
    """

    exp_time: float
    first: FlatExposure
    second: FlatExposure

    @property
    def ids(self) -> tuple[Any, Any]:
        """The two exposure ids."""
        return (self.first.exposure_id, self.second.exposure_id)


@dataclasses.dataclass(frozen=True)
class PairingResult:
    """Result of `pair_flats`.

    Attributes
    ----------
    pairs : `list` [`FlatPair`]
        Pairs, in increasing exposure time.
    unused : `list` [`FlatExposure`]
        Exposures not used in any pair (third and later flats at a time, and
        lone flats), in exposure-time then id order.
    warnings : `list` [`str`]
        Human-readable explanation of every unused exposure (and other
        oddities); each is also logged at WARNING level.
    """

    pairs: list[FlatPair]
    unused: list[FlatExposure]
    warnings: list[str]


def _as_flat(item: FlatExposure | Sequence[Any]) -> FlatExposure:
    if isinstance(item, FlatExposure):
        return item
    exposure_id, exp_time, physical_filter = item
    return FlatExposure(exposure_id, float(exp_time), str(physical_filter))


def pair_flats(
    exposures: Iterable[FlatExposure | Sequence[Any]],
    *,
    rtol: float = 1e-3,
    atol: float = 1e-6,
) -> PairingResult:
    """Pair flat exposures by equal exposure time.

    Exposure times are grouped when they agree within
    ``|t - t0| <= rtol * max(|t|, |t0|) + atol``, ``t0`` being the shortest
    time of the group (no chaining: a slow drift of times does not merge
    distinct groups).  In each group the exposures are sorted by id and the
    first two form the pair.

    Parameters
    ----------
    exposures : iterable of `FlatExposure` or ``(id, exp_time, filter)``
        The flats.
    rtol, atol : `float`, optional
        Relative and absolute (s) tolerance on equal exposure times.

    Returns
    -------
    result : `PairingResult`
        Pairs, unused exposures and warning texts.  A group of one flat is
        skipped and reported; a group of three or more uses its first two
        flats and reports the others.

    Raises
    ------
    ValueError
        If the two flats of a pair have different physical filters (the
        message names both exposures and filters), or if an id is repeated.
    """
    flats = [_as_flat(e) for e in exposures]
    ids = [f.exposure_id for f in flats]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1}, key=str)
        raise ValueError(f"Duplicate flat exposure ids: {dup}")
    flats.sort(key=lambda f: f.exp_time)

    groups: list[list[FlatExposure]] = []
    for f in flats:
        if groups:
            t0 = groups[-1][0].exp_time
            if abs(f.exp_time - t0) <= rtol * max(abs(f.exp_time), abs(t0)) + atol:
                groups[-1].append(f)
                continue
        groups.append([f])

    pairs: list[FlatPair] = []
    unused: list[FlatExposure] = []
    messages: list[str] = []
    for group in groups:
        group.sort(key=lambda f: f.exposure_id)
        t = group[0].exp_time
        if len(group) == 1:
            unused.append(group[0])
            messages.append(
                f"Exposure time {t:g} s has a single flat ({group[0].exposure_id}); skipped."
            )
            continue
        a, b = group[0], group[1]
        if a.physical_filter != b.physical_filter:
            raise ValueError(
                f"Flat pair at exposure time {t:g} s mixes filters: exposure {a.exposure_id} "
                f"has '{a.physical_filter}' and exposure {b.exposure_id} has '{b.physical_filter}'."
            )
        pairs.append(FlatPair(0.5 * (a.exp_time + b.exp_time), a, b))
        if len(group) > 2:
            extra = group[2:]
            unused.extend(extra)
            messages.append(
                f"Exposure time {t:g} s has {len(group)} flats; using {a.exposure_id} and "
                f"{b.exposure_id}, not using {[f.exposure_id for f in extra]}."
            )
    filters = sorted({p.first.physical_filter for p in pairs})
    if len(filters) > 1:
        messages.append(f"Flat pairs use several physical filters: {filters}.")
    for m in messages:
        _LOG.warning(m)
    return PairingResult(pairs=pairs, unused=unused, warnings=messages)


# ---------------------------------------------------------------------------
# 2. Pair measurement
# ---------------------------------------------------------------------------


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


#: `covariances_fft` takes the sums involving the weights from the pixels of
#: zero weight (`_zero_weight_lag_sums`) instead of two more FFTs when those
#: number at most this many per pixel divided by ``(2*max_lag+1)**2`` (7 %
#: of the pixels for ``max_lag = 10``; the two cost the same near 10 % of
#: scattered zero weights on a 2000 x 500 amplifier).
_SPARSE_WORK_PER_PIXEL: float = 32.0


@njit(cache=True, nogil=True, error_model="numpy")
def _zero_weight_lag_sums(d: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums over the zero-weight pixels ``p`` of ``b(p+k)`` and ``d(p+k)``.

    ``d`` (float64) and ``b`` (uint8, 1 = zero weight) hold the image in
    ``[L:L+ny, L:L+nx]`` (``L = max_lag``) and zeros around it (at least
    ``L`` on every side).  Returns two ``(2L+1, 2L+1)`` arrays indexed
    ``[ky + L, kx + L]`` for the lags ``|ky|, |kx| <= L``.
    """
    n = 2 * max_lag + 1
    ny = d.shape[0] - 2 * max_lag
    nx = d.shape[1] - 2 * max_lag
    bb = np.zeros((n, n))
    bd = np.zeros((n, n))
    for y in range(max(ny, 0)):
        centre = b[y + max_lag]
        for x in range(max(nx, 0)):
            if centre[x + max_lag] == 0:
                continue
            for ky in range(n):
                d_row = d[y + ky]
                b_row = b[y + ky]
                bd_k = bd[ky]
                bb_k = bb[ky]
                for kx in range(n):
                    bd_k[kx] += d_row[x + kx]
                    bb_k[kx] += b_row[x + kx]
    return bb, bd


def _lag_rect_sums(values: np.ndarray, max_lag: int) -> np.ndarray:
    """``out[ky+L, kx+L]`` = sum of ``values`` over the pixels ``q`` with
    ``q - k`` also in the array (``L = max_lag``, ``|ky|, |kx| <= L``).

    Needs ``values.shape >= (2L, 2L)``: the rows (columns) more than ``L``
    from both edges are summed into one before the ``(2L+1)**2`` rectangle
    sums are taken from the cumulative sums of the reduced array.
    """
    lag = max_lag
    ny, nx = values.shape
    c = np.concatenate([values[:lag], values[lag : ny - lag].sum(axis=0, keepdims=True), values[ny - lag :]])
    c = np.concatenate(
        [c[:, :lag], c[:, lag : nx - lag].sum(axis=1, keepdims=True), c[:, nx - lag :]], axis=1
    ).astype(np.float64)
    n = 2 * lag + 1
    integral = np.zeros((n + 1, n + 1))
    integral[1:, 1:] = c.cumsum(axis=0).cumsum(axis=1)
    k = np.arange(-lag, lag + 1)
    lo, hi = np.maximum(k, 0), n - np.maximum(-k, 0)  # rows (columns) [max(0, k), N + min(0, k))
    return integral[hi][:, hi] - integral[lo][:, hi] - integral[hi][:, lo] + integral[lo][:, lo]


def _lag_rows(g: np.ndarray, max_lag: int) -> np.ndarray:
    """Rows ``0..L, -L..-1`` of ``g`` (so that ``out[-k]`` is row ``-k``)."""
    ny = g.shape[0]
    return g[np.r_[0 : max_lag + 1, ny - max_lag : ny]]


@njit(cache=True, nogil=True, error_model="numpy")
def _paired_power(f: np.ndarray) -> np.ndarray:
    """``|f|**2`` with columns ``2j`` and ``2j+1`` as real and imaginary
    parts of column ``j`` (a last odd column alone, imaginary part 0)."""
    ny, m = f.shape
    q = np.zeros((ny, (m + 1) // 2), dtype=np.complex128)
    for y in range(ny):
        row = f[y]
        out = q[y]
        for j in range(m // 2):
            a = row[2 * j]
            b = row[2 * j + 1]
            out[j] = complex(a.real * a.real + a.imag * a.imag, b.real * b.real + b.imag * b.imag)
        if m % 2:
            a = row[m - 1]
            out[m // 2] = a.real * a.real + a.imag * a.imag
    return q


def _power_lag_rows(f: np.ndarray, max_lag: int, nx: int) -> np.ndarray:
    """Inverse real 2-d FFT of ``|f|**2`` (``f`` from `scipy.fft.rfft2`, of
    an ``(ny, nx)`` array) at the rows of lags ``-max_lag..max_lag``.

    ``|f|**2`` is real: its columns are paired as real and imaginary parts of
    one complex inverse FFT along y (half the work), each column's transform
    having ``g(-y) = conj(g(y))``; the inverse along x is done on the needed
    rows only.
    """
    ny, m = f.shape
    g = scipy.fft.ifft(_paired_power(f), axis=0, overwrite_x=True)
    g_pos = _lag_rows(g, max_lag)
    g_neg = np.conj(g[-_lag_rows(np.arange(ny), max_lag) % ny])
    del g
    h = np.empty((g_pos.shape[0], m), dtype=np.complex128)
    h[:, 0::2] = 0.5 * (g_pos + g_neg)
    h[:, 1::2] = (-0.5j * (g_pos - g_neg))[:, : m // 2]
    return scipy.fft.irfft(h, n=nx, axis=1)


def covariances_fft(
    image: np.ndarray, weight: np.ndarray, max_lag: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel covariances of an image at lags ``0..max_lag`` by FFT.

    For each lag ``(i, j)`` (``i`` columns, ``j`` rows) the covariance is
    taken over all pixel pairs ``(p, p + (j, i))`` whose two pixels both have
    non-zero weight::

        cov = sum(w w' d d') / n - sum(w w' d) sum(w w' d') / n**2

    with ``n = sum(w w')`` the number of such pairs: each lag uses its own
    means, exactly as a direct computation would.  The sums are correlations
    computed with real FFTs (float64) of the zero-padded (so nothing wraps
    around) arrays ``w*d`` and ``w``, the inverse transforms evaluated at the
    rows of lags ``-max_lag..max_lag`` only.  With 0/1 weights and few zero
    weights the sums involving ``w`` are taken instead from the total and
    border sums of ``w*d`` and from the pixels of zero weight (no FFT of
    ``w``).  For ``i, j > 0`` the lags ``(i, j)`` and ``(i, -j)`` are averaged
    and their pair counts added.

    Parameters
    ----------
    image : `numpy.ndarray`
        2-d image ``d`` (masked pixels may hold anything, even NaN).
    weight : `numpy.ndarray`
        2-d 0/1 weights ``w`` (1 = use the pixel), boolean or numeric.
    max_lag : `int`, optional
        Largest lag in each direction.

    Returns
    -------
    cov : `numpy.ndarray`
        ``(max_lag+1, max_lag+1)`` covariances, ``cov[i, j]``.
    npairs : `numpy.ndarray`
        Number of pixel pairs used for each lag (``npairs[0, 0]`` = number of
        pixels).
    """
    w = np.asarray(weight)
    if max_lag < 0:
        return np.empty((0, 0)), np.empty((0, 0))
    lag = max_lag
    ny, nx = w.shape
    good = w if w.dtype == bool else w != 0
    binary = w.dtype == bool or bool(np.all(w[good] == 1))
    # The image sits at offset (L, L) in zero-padded arrays (at least L zeros
    # on every side, so nothing wraps around; a shift does not change a
    # correlation).
    shape = (scipy.fft.next_fast_len(ny + 2 * lag), scipy.fft.next_fast_len(nx + 2 * lag, real=True))
    inner = (slice(lag, lag + ny), slice(lag, lag + nx))
    d = np.zeros(shape)
    np.copyto(d[inner], image, where=good)
    if not binary:
        d[inner] *= w
    n_zero = good.size - int(np.count_nonzero(good))
    sparse = (
        binary
        and min(ny, nx) >= 2 * lag
        and n_zero * (2 * lag + 1) ** 2 <= _SPARSE_WORK_PER_PIXEL * good.size
    )
    if sparse:
        # corr(A, B)[k] = sum_p A(p + k) B(p).  With w = 1 - b (b = 1 at zero
        # weight) and R(k) the pixels p with p + k in the image:
        #   sum_{R(k)} w(p) w(p+k) = |R(k)| - #b(R(k)) - #b(R(-k)) + sum_b b(p+k)
        #   sum_{R(k)} w(p) d(p+k) = sum_{R(-k)} d - sum_b d(p+k)
        # (sums "sum_b" over the zero-weight pixels p, d = 0 there).
        b = np.zeros(shape, dtype=np.uint8)
        b[inner] = ~good
        bb, bd = _zero_weight_lag_sums(d, b, lag)
        del b
        k = np.abs(np.arange(-lag, lag + 1))
        area = np.outer(ny - k, nx - k)
        n_bad = _lag_rect_sums(~good, lag)  # #b(R(-k))
        s_ww = area - n_bad - n_bad[::-1, ::-1] + bb
        s_dw = _lag_rect_sums(d[inner], lag) - bd
        # Indexed like the FFT outputs: [k] is lag k, [-k] lag -k.
        s_ww = np.roll(s_ww, (-lag, -lag), axis=(0, 1))
        s_dw = np.roll(s_dw, (-lag, -lag), axis=(0, 1))
        s_dd = _power_lag_rows(scipy.fft.rfft2(d, overwrite_x=True), lag, shape[1])
    else:
        wp = np.zeros(shape)
        wp[inner] = w
        f_d = scipy.fft.rfft2(d, overwrite_x=True)
        f_w = scipy.fft.rfft2(wp, overwrite_x=True)
        del d, wp
        # corr(A, B)[k] = sum_p A(p + k) B(p) = inverse FFT of F_A conj(F_B),
        # needed at the rows of lags -L..L only: the inverse along y (the
        # complex axis) is done in full, the one along x on those rows only.
        s_dd = _power_lag_rows(f_d, lag, shape[1])
        s_ww = _power_lag_rows(f_w, lag, shape[1])
        f_d *= np.conj(f_w)
        del f_w
        g_dw = _lag_rows(scipy.fft.ifft(f_d, axis=0, overwrite_x=True), lag)
        s_dw = scipy.fft.irfft(g_dw, n=shape[1], axis=1)
    # s_dw[k] = sum w(p) w(p+k) d(p+k)

    def one(dy: int, dx: int) -> tuple[float, float]:
        n = round(float(s_ww[dy, dx]))
        if n <= 0:
            return math.nan, 0.0
        mean2 = s_dw[dy, dx]  # second pixel of the pair
        mean1 = s_dw[-dy, -dx]  # first pixel of the pair
        return float(s_dd[dy, dx] / n - mean1 * mean2 / (n * n)), float(n)

    cov = np.empty((max_lag + 1, max_lag + 1))
    npairs = np.empty((max_lag + 1, max_lag + 1))
    for i in range(max_lag + 1):  # x lag
        for j in range(max_lag + 1):  # y lag
            c1, n1 = one(j, i)
            if i == 0 or j == 0:
                cov[i, j], npairs[i, j] = c1, n1
                continue
            c2, n2 = one(-j, i)
            cov[i, j] = 0.5 * (c1 + c2)
            npairs[i, j] = n1 + n2
    return cov, npairs


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
    sat_fraction = float(sat.mean())

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


# ---------------------------------------------------------------------------
# 3. The C00 fit
# ---------------------------------------------------------------------------


def _expm1_over_x(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(exp(x) - 1) / x`` and its derivative, stable at ``x = 0``."""
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 1e-6
    xs = np.where(small, 1.0, x)
    e = np.where(small, 1.0 + x / 2 + x * x / 6, np.expm1(xs) / xs)
    de = np.where(small, 0.5 + x / 3, (np.exp(xs) * (xs - 1.0) + 1.0) / (xs * xs))
    return e, de


def ptc_model(mu: np.ndarray, a00: float, gain: float, n00: float) -> np.ndarray:
    """Astier et al. (2019) eq. 16: ``C00`` (ADU²) at mean ``mu`` (ADU).

    ``C00 = (exp(2*a00*mu*g) - 1) / (2*a00*g**2) + n00/g**2``, written as
    ``mu/g * E(2*a00*mu*g) + n00/g**2`` with ``E(x) = (exp(x)-1)/x`` so that
    ``a00 = 0`` (the linear PTC ``mu/g + n00/g**2``) is evaluated exactly.
    """
    mu = np.asarray(mu, dtype=np.float64)
    e, _ = _expm1_over_x(2.0 * a00 * mu * gain)
    return mu / gain * e + n00 / gain**2


def _ptc_jacobian(mu: np.ndarray, a00: float, gain: float, n00: float) -> np.ndarray:
    x = 2.0 * a00 * mu * gain
    e, de = _expm1_over_x(x)
    d_a = 2.0 * mu * mu * de
    d_g = -mu / gain**2 * e + mu / gain * de * 2.0 * a00 * mu - 2.0 * n00 / gain**3
    d_n = np.full_like(mu, 1.0 / gain**2)
    return np.column_stack([d_a, d_g, d_n])


def turnover_mask(
    means: np.ndarray,
    variances: np.ndarray,
    npix: np.ndarray,
    *,
    n_sigma: float = 5.0,
    min_drop: float = 0.0,
    n_confirm: int = 2,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Flag the points past the PTC turnover (saturation).

    Walk through the candidate points in increasing mean, keeping the
    running maximum ``Vmax`` of the variance of the points kept so far.  A
    point *drops* when ``C00 < Vmax - tol`` with
    ``tol = max(n_sigma*sqrt(2/npix), min_drop) * Vmax`` (``sqrt(2/npix)`` is
    the relative statistical error of a variance measured on ``npix``
    Gaussian pixels).  Below saturation the variance of a PTC only grows with
    the mean (``dC00/dmu = exp(2*a00*mu*g)/g > 0``), so a drop means the
    pixel distribution is being clipped by the full well.  A drop that the
    curve recovers from within the next ``n_confirm`` points (one of them is
    back above ``Vmax - tol``) is an isolated low point, left to the fit's
    outlier rejection; otherwise the dropping point and every point above it
    are past the turnover.  A drop at the last point counts as saturation.

    Parameters
    ----------
    means, variances, npix : `numpy.ndarray`
        Per point: mean (ADU), ``C00`` (ADU²), pixels used.
    n_sigma : `float`, optional
        Drop threshold in statistical standard deviations.
    min_drop : `float`, optional
        Minimum relative drop (for data whose scatter exceeds the Gaussian
        statistical error).
    n_confirm : `int`, optional
        How many following points may recover from a drop.
    candidates : `numpy.ndarray`, optional
        Boolean, points to consider (others are ignored and never flagged).

    Returns
    -------
    saturated : `numpy.ndarray`
        Boolean, True for the points past the turnover.
    """
    means = np.asarray(means, dtype=np.float64)
    variances = np.asarray(variances, dtype=np.float64)
    npix = np.asarray(npix, dtype=np.float64)
    cand = np.isfinite(means) & np.isfinite(variances) & (npix > 0)
    if candidates is not None:
        cand &= np.asarray(candidates, dtype=bool)
    order = np.flatnonzero(cand)
    order = order[np.argsort(means[order], kind="stable")]
    saturated = np.zeros(means.shape, dtype=bool)
    vmax = -np.inf
    for pos, k in enumerate(order):
        if np.isfinite(vmax):
            tol = max(n_sigma * math.sqrt(2.0 / npix[k]), min_drop) * vmax
            if variances[k] < vmax - tol:
                following = order[pos + 1 : pos + 1 + n_confirm]
                recovers = any(variances[f] >= vmax - tol for f in following)
                if not recovers:
                    saturated[order[pos:]] = True
                    break
                continue  # isolated low point: not saturation
        vmax = max(vmax, variances[k])
    return saturated


@dataclasses.dataclass
class PtcAmpResult:
    """PTC of one amplifier (`fit_ptc`).

    Attributes
    ----------
    amp_name : `str`
        Amplifier name (as given).
    gain, gain_err : `float`
        Gain (e-/ADU) and its error.
    noise, noise_err : `float`
        Read noise ``sqrt(n00)`` (e-) and its error.
    n00, n00_err : `float`
        Noise term of eq. 16 (e-²).
    a00, a00_err : `float`
        Brighter-fatter coefficient of eq. 16 (1/e-).
    turnoff : `float`
        Largest mean (ADU) kept by the turnover and gap cuts (the fit's
        outlier rejection does not lower it); NaN if no point is left.
    exp_times, means, variances, npix : `numpy.ndarray`
        All input points (s, ADU, ADU², pixels), in input order.
    kept : `numpy.ndarray`
        Boolean, points used in the final fit.
    invalid, above_gap, saturated, outlier : `numpy.ndarray`
        Boolean, why a point is not kept (invalid input / above a gap in
        mean / past the turnover / rejected by the fit).  A point is in at
        most one of these (checked in that order).
    chi2, dof : `float`, `int`
        Weighted chi² of the final fit and its degrees of freedom.
    error_scale : `float`
        Factor applied to the statistical parameter errors,
        ``sqrt(max(1, chi2/dof))``.
    fit_status : `int`
        `scipy.optimize.least_squares` status (``>0`` converged; ``-99``:
        no fit was attempted).
    fit_message : `str`
        Its message.
    flags : `list` [`str`]
        Every condition found, e.g. ``"TOO_FEW_POINTS"``, ``"ALL_SATURATED"``,
        ``"NOT_CONVERGED"``, ``"GAIN_AT_BOUND"``, ``"NOISE_AT_BOUND"`` (upper
        bound), ``"A00_AT_LOWER_BOUND"``, ``"NOT_RISING"``,
        ``"NO_VALID_POINTS"``, ``"NONFINITE_PARAMETERS"`` (these make the
        result bad) or ``"A00_AT_ZERO"``, ``"NOISE_AT_ZERO"``,
        ``"HIGH_CHI2"``, ``"NO_DOF"`` (warnings only).
    bad : `bool`
        True when the fit must not be trusted (any flag of `BAD_FLAGS`).
    reason : `str`
        Human-readable explanation of the flags ("" when there are none).
    """

    BAD_FLAGS = frozenset(
        {
            "NO_VALID_POINTS",
            "ALL_SATURATED",
            "TOO_FEW_POINTS",
            "NOT_RISING",
            "NOT_CONVERGED",
            "GAIN_AT_BOUND",
            "NOISE_AT_BOUND",
            "A00_AT_LOWER_BOUND",
            "NONFINITE_PARAMETERS",
        }
    )

    amp_name: str
    gain: float
    gain_err: float
    noise: float
    noise_err: float
    n00: float
    n00_err: float
    a00: float
    a00_err: float
    turnoff: float
    exp_times: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    npix: np.ndarray
    kept: np.ndarray
    invalid: np.ndarray
    above_gap: np.ndarray
    saturated: np.ndarray
    outlier: np.ndarray
    chi2: float
    dof: int
    error_scale: float
    fit_status: int
    fit_message: str
    flags: list[str]
    bad: bool
    reason: str

    def model(self, mu: np.ndarray) -> np.ndarray:
        """The fitted eq. 16 at means ``mu`` (ADU)."""
        return ptc_model(mu, self.a00, self.gain, self.n00)


def _gap_mask(means_e: np.ndarray, cand: np.ndarray, max_gap_e: float | None) -> np.ndarray:
    above = np.zeros(means_e.shape, dtype=bool)
    if max_gap_e is None:
        return above
    idx = np.flatnonzero(cand)
    idx = idx[np.argsort(means_e[idx], kind="stable")]
    if idx.size < 2:
        return above
    gaps = np.diff(means_e[idx])
    big = np.flatnonzero(gaps > max_gap_e)
    if big.size:
        above[idx[big[0] + 1 :]] = True
    return above


def fit_ptc(
    means: Sequence[float] | np.ndarray,
    variances: Sequence[float] | np.ndarray,
    npix: Sequence[float] | np.ndarray,
    *,
    exp_times: Sequence[float] | np.ndarray | None = None,
    valid: Sequence[bool] | np.ndarray | None = None,
    sat_fraction: Sequence[float] | np.ndarray | None = None,
    amp_name: str = "",
    start: tuple[float, float, float] = _START,
    bounds: tuple[tuple[float, float, float], tuple[float, float, float]] = _BOUNDS,
    nominal_gain: float | None = None,
    max_gap_e: float | None = 9000.0,
    max_sat_fraction: float = 0.01,
    turnover_nsigma: float = 5.0,
    turnover_min_drop: float = 0.0,
    turnover_confirm: int = 2,
    outlier_nsigma: float = 5.0,
    outlier_iter: int = 2,
    min_points: int = 3,
    rise_nsigma: float = 5.0,
    bound_rtol: float = 1e-3,
    high_chi2: float = 10.0,
) -> PtcAmpResult:
    """Fit the PTC of one amplifier with Astier et al. (2019), eq. 16.

    Point selection, in this order (each point gets at most one reason):

    1. *invalid*: non-finite mean/variance, ``npix <= 0``, ``valid`` False,
       or non-positive mean — unless the pair has more ``SAT`` pixels than
       ``max_sat_fraction``, which makes it *saturated* whether or not it
       could be measured.
    2. *above_gap*: sorting the valid points by mean, converted to
       electrons with ``nominal_gain`` (default: the starting gain,
       1.5 e-/ADU — the gain is not known yet, and a nominal one is good to
       ~20 %, plenty for a 9000 e- threshold), every point above the first
       gap larger than ``max_gap_e`` (``None`` disables the cut).  A PTC
       sampled more coarsely than this loses its upper part: it is then
       flagged (too few points) rather than fitted across the gap.
    3. *saturated*: ``sat_fraction > max_sat_fraction`` (``SAT``-masked
       pixels, when masks were given), and the points past the turnover
       found by `turnover_mask` — and, since saturation only grows with
       signal, every point above the lowest such point.
    4. *outlier*: fit with `scipy.optimize.least_squares` (bounds
       ``a00 ∈ [-1e-4, 0]``, ``g ∈ [0.1, 10]``, ``n00 ∈ [0, 2000]``), then
       reject the points whose normalised residual exceeds
       ``outlier_nsigma``, refit, at most ``outlier_iter`` times (each time
       all points not cut by 1–3 are reconsidered).

    Weights: the variance of a ``C00`` measured on ``npix`` pixels is
    ``2*C00**2/npix`` (Gaussian pixel statistics; the pixel-to-pixel
    correlations of the brighter-fatter effect add less than 1 %).  The
    first fit uses the measured ``C00``, later ones the model ``C00`` (no
    bias from down-weighting points that fluctuate high).  Residuals for the
    rejection are normalised by that error times
    ``max(1, 1.4826*MAD)`` of the normalised residuals, so data noisier
    than the Gaussian expectation do not lose most of their points.

    Parameter errors: the statistical covariance ``(J^T W J)^-1`` scaled by
    ``max(1, chi2/dof)`` (never smaller than what the data support).
    ``noise_err = n00_err / (2*noise)``.

    Flags (see `PtcAmpResult.flags`): fewer than ``min_points`` usable
    points, all points saturated, a PTC that does not rise, no convergence,
    non-finite parameters or errors, gain or ``n00`` at a bound (so a read
    noise below ~1.4 e- is flagged with the default bounds), ``a00`` at its
    lower bound make the result ``bad``.  ``a00`` at its upper bound 0 (no
    measurable brighter-fatter curvature: the linear PTC describes the data
    and gain/noise stay valid), ``chi2/dof > high_chi2`` and exactly 3
    points (no degree of freedom) are warnings.

    The turnoff is the largest mean among the points left after steps 1–3.
    On a saturating ramp it lies below the full well by less than one
    sampling step plus the width over which clipping by the full well
    visibly lowers the variance (≲ 2–3 pixel σ).

    Parameters
    ----------
    means, variances, npix : array-like
        Per pair: mean (ADU), ``C00`` (ADU²), pixels used.
    exp_times : array-like, optional
        Exposure times (s), for the output arrays.
    valid : array-like of `bool`, optional
        False for pairs that could not be measured.
    sat_fraction : array-like, optional
        Fraction of ``SAT`` pixels per pair.
    amp_name : `str`, optional
        Carried into the result.
    start, bounds : optional
        Starting values and bounds of ``(a00, gain, n00)``.
    nominal_gain : `float`, optional
        Gain used to convert means to electrons for the gap cut.
    max_gap_e : `float` or `None`, optional
        Gap threshold (e-).
    max_sat_fraction : `float`, optional
        Points with more ``SAT`` pixels than this are saturated.
    turnover_nsigma, turnover_min_drop, turnover_confirm : optional
        Parameters of `turnover_mask`.
    outlier_nsigma, outlier_iter : optional
        Outlier rejection (5σ, 2 iterations).
    min_points : `int`, optional
        Minimum number of points in the fit (default 3).
    rise_nsigma : `float`, optional
        The kept points must show ``C00`` rising with the mean: the slope of
        a weighted straight line must be positive at this significance.
    bound_rtol : `float`, optional
        A parameter within this fraction of its bound range of a bound is
        "at the bound".
    high_chi2 : `float`, optional
        ``chi2/dof`` above this adds the warning ``HIGH_CHI2``.

    Returns
    -------
    result : `PtcAmpResult`
        Never silently good: every problem adds a flag, and ``bad`` is set
        for any flag in `PtcAmpResult.BAD_FLAGS`.
    """
    mu = np.asarray(means, dtype=np.float64).copy()
    var = np.asarray(variances, dtype=np.float64).copy()
    npx = np.asarray(npix, dtype=np.float64).copy()
    n = mu.size
    if var.shape != (n,) or npx.shape != (n,):
        raise ValueError("means, variances and npix must be 1-d arrays of equal length.")
    t = np.full(n, np.nan) if exp_times is None else np.asarray(exp_times, dtype=np.float64)
    ok = np.isfinite(mu) & np.isfinite(var) & (npx > 0) & (mu > 0) & (var > 0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    # Pairs with too many SAT pixels are saturated whether or not they could
    # be measured (an amp masked SAT everywhere has no usable pixel at all).
    sat_masked = np.zeros(n, dtype=bool)
    if sat_fraction is not None:
        sat_masked = np.asarray(sat_fraction, dtype=np.float64) > max_sat_fraction
    invalid = ~ok & ~sat_masked
    g_nom = start[1] if nominal_gain is None else nominal_gain
    above_gap = _gap_mask(mu * g_nom, ok & ~sat_masked, max_gap_e)
    cand = ok & ~above_gap
    saturated = sat_masked & ~above_gap
    saturated |= turnover_mask(
        mu,
        var,
        npx,
        n_sigma=turnover_nsigma,
        min_drop=turnover_min_drop,
        n_confirm=turnover_confirm,
        candidates=cand & ~saturated,
    )
    sat_means = mu[saturated & np.isfinite(mu)]
    if sat_means.size:
        saturated |= cand & (mu >= sat_means.min())
    usable = cand & ~saturated
    turnoff = float(mu[usable].max()) if usable.any() else math.nan

    flags: list[str] = []
    notes: list[str] = []
    nan = math.nan
    params = np.array([nan, nan, nan])
    perr = np.array([nan, nan, nan])
    outlier = np.zeros(n, dtype=bool)
    kept = usable.copy()
    chi2, dof, scale, status, message = nan, 0, nan, -99, "no fit attempted"

    def result() -> PtcAmpResult:
        a00, gain, n00 = (float(p) for p in params)
        a00_err, gain_err, n00_err = (float(p) for p in perr)
        noise = math.sqrt(n00) if n00 >= 0 else nan
        noise_err = n00_err / (2 * noise) if noise > 0 else (math.inf if noise == 0 else nan)
        bad = any(f in PtcAmpResult.BAD_FLAGS for f in flags)
        return PtcAmpResult(
            amp_name=amp_name,
            gain=gain,
            gain_err=gain_err,
            noise=noise,
            noise_err=noise_err,
            n00=n00,
            n00_err=n00_err,
            a00=a00,
            a00_err=a00_err,
            turnoff=turnoff,
            exp_times=t,
            means=mu,
            variances=var,
            npix=npx,
            kept=kept,
            invalid=invalid,
            above_gap=above_gap,
            saturated=saturated,
            outlier=outlier,
            chi2=chi2,
            dof=dof,
            error_scale=scale,
            fit_status=status,
            fit_message=message,
            flags=flags,
            bad=bad,
            reason="; ".join(notes),
        )

    if not usable.any() and saturated.any():
        flags.append("ALL_SATURATED")
        notes.append(
            f"no usable point: {int(saturated.sum())} saturated, {int(invalid.sum())} invalid, "
            f"{int(above_gap.sum())} above a gap"
        )
        return result()
    if not ok.any():
        flags.append("NO_VALID_POINTS")
        notes.append(f"no valid point among {n}")
        return result()
    if not usable.any():
        flags.append("TOO_FEW_POINTS")
        notes.append("no point left after the gap cut")
        return result()
    if usable.sum() < min_points:
        flags.append("TOO_FEW_POINTS")
        notes.append(
            f"{int(usable.sum())} usable points < {min_points} "
            f"({int(invalid.sum())} invalid, {int(above_gap.sum())} above a gap, "
            f"{int(saturated.sum())} saturated)"
        )
        return result()

    # The kept points must show a rising PTC (a fully saturated amp gives a
    # flat one that eq. 16 could otherwise "fit" with parameters at bounds).
    sig = var * np.sqrt(2.0 / npx)
    wgt = 1.0 / sig[usable] ** 2
    xm = np.average(mu[usable], weights=wgt)
    sxx = np.sum(wgt * (mu[usable] - xm) ** 2)
    if sxx > 0:
        slope = np.sum(wgt * (mu[usable] - xm) * var[usable]) / sxx
        slope_err = 1.0 / math.sqrt(sxx)
    else:
        slope, slope_err = 0.0, math.inf
    if not slope > rise_nsigma * slope_err:
        flags.append("NOT_RISING")
        notes.append(
            f"variance does not rise with the mean (slope {slope:.3g} ± {slope_err:.3g}): "
            "saturated everywhere, or no signal range"
        )
        return result()

    lo, hi = np.asarray(bounds[0], dtype=float), np.asarray(bounds[1], dtype=float)

    def do_fit(sel: np.ndarray, x0: np.ndarray, var_for_weights: np.ndarray) -> Any:
        err = np.maximum(var_for_weights[sel], 1e-12) * np.sqrt(2.0 / npx[sel])
        m_sel, v_sel = mu[sel], var[sel]

        def resid(p: np.ndarray) -> np.ndarray:
            return (v_sel - ptc_model(m_sel, *p)) / err

        def jac(p: np.ndarray) -> np.ndarray:
            return -_ptc_jacobian(m_sel, *p) / err[:, None]

        return scipy.optimize.least_squares(
            resid, x0, jac=jac, bounds=(lo, hi), x_scale="jac", method="trf", xtol=1e-12, ftol=1e-12
        )

    # First fit weighted with the measured C00, then with the model C00.
    fit = do_fit(kept, np.clip(np.asarray(start, dtype=float), lo, hi), var)
    model_var = ptc_model(mu, *fit.x)
    fit = do_fit(kept, fit.x, model_var)
    model_var = ptc_model(mu, *fit.x)
    for _ in range(outlier_iter):
        err_all = np.maximum(model_var, 1e-12) * np.sqrt(2.0 / npx)
        r = np.where(usable, (var - model_var) / err_all, 0.0)
        mad = 1.4826 * np.median(np.abs(r[kept] - np.median(r[kept])))
        r_scale = max(1.0, float(mad))
        new_kept = usable & (np.abs(r) <= outlier_nsigma * r_scale)
        if new_kept.sum() < min_points or np.array_equal(new_kept, kept):
            break
        kept = new_kept
        fit = do_fit(kept, fit.x, model_var)
        model_var = ptc_model(mu, *fit.x)
    # Final weights and residuals at the solution.
    err = np.maximum(model_var[kept], 1e-12) * np.sqrt(2.0 / npx[kept])
    r = (var[kept] - model_var[kept]) / err
    outlier = usable & ~kept
    params = fit.x.copy()
    status, message = int(fit.status), str(fit.message)
    chi2 = float(np.sum(r * r))
    dof = int(kept.sum() - 3)
    jw = _ptc_jacobian(mu[kept], *params) / err[:, None]
    scale = math.sqrt(max(1.0, chi2 / dof)) if dof > 0 else 1.0
    try:
        pcov = np.linalg.inv(jw.T @ jw)
        perr = np.sqrt(np.clip(np.diag(pcov), 0, None)) * scale
    except np.linalg.LinAlgError:
        perr = np.full(3, math.inf)

    if fit.status <= 0:
        flags.append("NOT_CONVERGED")
        notes.append(f"fit did not converge: {fit.message}")
    if not np.all(np.isfinite(params)) or not np.all(np.isfinite(perr)):
        flags.append("NONFINITE_PARAMETERS")
        notes.append("parameters or their errors are not finite")
    if kept.sum() < min_points:
        flags.append("TOO_FEW_POINTS")
        notes.append(f"{int(kept.sum())} points left after outlier rejection < {min_points}")
    span = hi - lo
    at_lo = params <= lo + bound_rtol * span
    at_hi = params >= hi - bound_rtol * span
    if at_lo[1] or at_hi[1]:
        flags.append("GAIN_AT_BOUND")
        notes.append(f"gain {params[1]:.4g} at its bound [{lo[1]:g}, {hi[1]:g}]")
    if at_hi[2]:
        flags.append("NOISE_AT_BOUND")
        notes.append(f"n00 {params[2]:.4g} e-^2 at its upper bound {hi[2]:g}")
    elif at_lo[2]:
        # A ramp that starts well above the read-noise floor constrains n00
        # only loosely; n00 = 0 is then a statistical outcome, not a failure
        # of the gain fit.
        flags.append("NOISE_AT_ZERO")
        notes.append(
            f"n00 at its lower bound {lo[2]:g} e-^2 (read noise not constrained by this ramp; "
            "warning only, take the noise from the overscan)"
        )
    if at_lo[0]:
        flags.append("A00_AT_LOWER_BOUND")
        notes.append(f"a00 {params[0]:.3g} at its lower bound {lo[0]:g}")
    elif at_hi[0]:
        flags.append("A00_AT_ZERO")
        notes.append("a00 at its upper bound (no brighter-fatter curvature measured; warning only)")
    if dof <= 0:
        flags.append("NO_DOF")
        notes.append(
            f"{int(kept.sum())} points for 3 parameters: the fit quality cannot be checked "
            "(errors are statistical only; warning)"
        )
    elif chi2 / dof > high_chi2:
        flags.append("HIGH_CHI2")
        notes.append(f"chi2/dof = {chi2 / dof:.3g} > {high_chi2:g} (errors scaled up; warning only)")
    return result()


def fit_ptc_measurements(
    measurements: Sequence[PairMeasurement], *, amp_name: str = "", **kwargs: Any
) -> PtcAmpResult:
    """`fit_ptc` on a list of `PairMeasurement` of one amplifier.

    Keyword arguments are passed on to `fit_ptc`.
    """
    return fit_ptc(
        [m.mean for m in measurements],
        [m.variance for m in measurements],
        [m.npix for m in measurements],
        exp_times=[m.exp_time for m in measurements],
        valid=[m.valid for m in measurements],
        sat_fraction=[m.sat_fraction for m in measurements],
        amp_name=amp_name,
        **kwargs,
    )


# ---------------------------------------------------------------------------
# 4. Quick gain from flat pairs
# ---------------------------------------------------------------------------


def _summed_covariance(cov: np.ndarray, max_lag: int) -> float:
    """Sum of ``C_ij`` over the full plane of lags ``|i|, |j| <= max_lag``.

    With ``cov[i, j]`` holding one quadrant (and ``(i, j)``/``(i, -j)``
    averaged), the multiplicity is 1 at ``(0, 0)``, 2 on the axes and 4
    elsewhere.
    """
    c = cov[: max_lag + 1, : max_lag + 1]
    mult = np.full(c.shape, 4.0)
    mult[0, :] = 2.0
    mult[:, 0] = 2.0
    mult[0, 0] = 1.0
    return float(np.sum(mult * c))


def _summed_covariance_variance(
    variance: float, npix: float, cov: np.ndarray | None, npairs: np.ndarray | None, max_lag: int
) -> float:
    """Expected variance of the (summed) variance used by the quick gain.

    ``var(C_ij) = (C00**2 + C_ij**2) / npairs_ij`` for Gaussian pixels
    (``2 C00**2 / npix`` at lag 0), the lags being treated as independent.
    """
    if cov is None or npairs is None or max_lag <= 0:
        return 2.0 * variance**2 / npix
    c = np.asarray(cov)[: max_lag + 1, : max_lag + 1]
    n = np.asarray(npairs, dtype=np.float64)[: max_lag + 1, : max_lag + 1]
    mult = np.full(c.shape, 4.0)
    mult[0, :] = 2.0
    mult[:, 0] = 2.0
    mult[0, 0] = 1.0
    return float(np.sum(mult**2 * (c[0, 0] ** 2 + c**2) / np.maximum(n, 1.0)))


def gain_from_flat_pair(
    mean: float,
    variance: float,
    read_noise_adu: float,
    *,
    cov: np.ndarray | None = None,
    cov_max_lag: int = 0,
) -> float:
    """Gain (e-/ADU) of one flat pair: ``g = mu / (V - rn_adu**2)``.

    For Poisson electrons read with Gaussian noise, ``C00 = mu/g + rn_adu**2``
    (ADU), hence the formula with ``V = C00``.  ``rn_adu`` is the read noise
    of *one* image in ADU (from the overscan, or nominal read noise divided
    by nominal gain); ``C00 = var(D)/2`` already refers to one image.

    The brighter-fatter effect lowers ``C00`` (by ``1 + a00*mu*g`` at first
    order, ~10 % at 50 ke- for ``a00 = -2e-6``) and so biases this gain high.
    It moves variance into the covariances without changing their sum, so
    with ``cov`` and ``cov_max_lag > 0`` ``V`` is the sum of the ``C_ij``
    over ``|i|, |j| <= cov_max_lag`` instead (each extra lag adds noise:
    keep ``cov_max_lag`` small, 2–3).

    Returns
    -------
    gain : `float`
        NaN when ``V - rn_adu**2`` is not positive.
    """
    v = variance
    if cov is not None and cov_max_lag > 0:
        v = _summed_covariance(np.asarray(cov), cov_max_lag)
    denom = v - read_noise_adu**2
    return float(mean / denom) if denom > 0 and np.isfinite(denom) else math.nan


@dataclasses.dataclass(frozen=True)
class PairGainResult:
    """Result of `gain_from_flat_pairs`.

    Attributes
    ----------
    gains : `numpy.ndarray`
        Per pair gain (e-/ADU); NaN for pairs not used.
    gain_errs : `numpy.ndarray`
        Expected statistical error of each per-pair gain,
        ``g * sigma(V) / (V - rn_adu**2)`` with ``sigma(V)`` from Gaussian
        pixel statistics (read-noise error not included).
    used : `numpy.ndarray`
        Boolean, pairs entering the median.
    gain : `float`
        Median of the used per-pair gains (NaN if none).
    gain_err : `float`
        ``1.2533 * std / sqrt(n)`` of the used gains (error of a median of
        Gaussian values; NaN with fewer than 2).
    """

    gains: np.ndarray
    gain_errs: np.ndarray
    used: np.ndarray
    gain: float
    gain_err: float


def gain_from_flat_pairs(
    measurements: Sequence[PairMeasurement],
    read_noise_adu: float | Sequence[float],
    *,
    cov_max_lag: int = 0,
    exclude_saturated: bool = True,
    max_sat_fraction: float = 0.01,
    turnover_nsigma: float = 5.0,
) -> PairGainResult:
    """Quick gain of one amplifier from its flat pairs.

    Per pair ``g_k = mu_k / (V_k - rn_adu**2)`` (`gain_from_flat_pair`),
    then the median over the pairs that are valid and not saturated (same
    criteria as `fit_ptc`: ``SAT`` fraction and the variance turnover).

    Parameters
    ----------
    measurements : sequence of `PairMeasurement`
        The pairs of one amplifier.
    read_noise_adu : `float` or sequence of `float`
        Read noise of one image in ADU, one value or one per pair (e.g.
        measured on each pair's overscan).
    cov_max_lag : `int`, optional
        Sum the covariances up to this lag to undo the brighter-fatter bias
        (0: plain ``C00``).
    exclude_saturated : `bool`, optional
        Drop saturated pairs.
    max_sat_fraction, turnover_nsigma : `float`, optional
        Saturation criteria (see `fit_ptc`).

    Returns
    -------
    result : `PairGainResult`
    """
    n = len(measurements)
    rn = np.broadcast_to(np.asarray(read_noise_adu, dtype=np.float64), (n,))
    mu = np.array([m.mean for m in measurements], dtype=np.float64)
    var = np.array([m.variance for m in measurements], dtype=np.float64)
    npx = np.array([m.npix for m in measurements], dtype=np.float64)
    ok = np.array([m.valid for m in measurements], dtype=bool) & np.isfinite(mu) & (mu > 0)
    if exclude_saturated and n:
        sat = np.array([m.sat_fraction for m in measurements]) > max_sat_fraction
        sat |= turnover_mask(mu, var, npx, n_sigma=turnover_nsigma, candidates=ok & ~sat)
        if sat.any():
            sat |= ok & (mu >= mu[sat].min())
        ok &= ~sat
    gains = np.full(n, np.nan)
    gain_errs = np.full(n, np.nan)
    for k in np.flatnonzero(ok):
        m = measurements[k]
        gains[k] = gain_from_flat_pair(m.mean, m.variance, rn[k], cov=m.cov, cov_max_lag=cov_max_lag)
        if np.isfinite(gains[k]):
            var_v = _summed_covariance_variance(m.variance, m.npix, m.cov, m.cov_npairs, cov_max_lag)
            gain_errs[k] = gains[k] ** 2 / m.mean * math.sqrt(var_v)
    used = ok & np.isfinite(gains)
    if not used.any():
        return PairGainResult(gains, gain_errs, used, math.nan, math.nan)
    g = gains[used]
    err = 1.2533 * float(np.std(g, ddof=1)) / math.sqrt(g.size) if g.size > 1 else math.nan
    return PairGainResult(gains, gain_errs, used, float(np.median(g)), err)


# ---------------------------------------------------------------------------
# 5. Full covariance model (Astier et al. 2019, eq. 20)
# ---------------------------------------------------------------------------


def _symmetrize(q: np.ndarray) -> np.ndarray:
    """Quadrant ``q[i, j]`` (``i, j >= 0``) -> full plane, centre at ``r-1``."""
    r = q.shape[0]
    full = np.zeros((2 * r - 1, 2 * r - 1))
    full[r - 1 :, r - 1 :] = q
    full[: r - 1, r - 1 :] = q[:0:-1, :]
    full[r - 1 :, : r - 1] = q[:, :0:-1]
    full[: r - 1, : r - 1] = q[:0:-1, :0:-1]
    return full


def _quadrant(full: np.ndarray, r: int) -> np.ndarray:
    c = full.shape[0] // 2
    return full[c : c + r, c : c + r]


def covariance_model(
    mu: np.ndarray, a: np.ndarray, c: np.ndarray, noise: np.ndarray, gain: float
) -> np.ndarray:
    """Astier et al. (2019) eq. 20: ``C_ij(mu)`` for lags ``i, j < r``.

    ``C_ij = mu/g [δ_i0 δ_j0 + a_ij N + 2/3 (a⊗a + c)_ij N**2
    + 1/6 (2 a⊗a⊗a + 5 a⊗c)_ij N**3] + n_ij/g**2`` with ``N = mu*g``
    (electrons), ``c = a*b`` (element-wise) and ``⊗`` the 2-d convolution
    over the full plane of lags (``a``, ``c`` extended by symmetry
    ``a_{-i,j} = a_{i,j}``).  Convolutions are computed in full (no
    truncation of intermediate products).

    Parameters
    ----------
    mu : `numpy.ndarray`
        Means (ADU), shape ``(n,)``.
    a, c, noise : `numpy.ndarray`
        ``(r, r)`` quadrants: ``a`` (1/e-), ``c = a*b`` (1/e-²), ``noise``
        (e-²).
    gain : `float`
        Gain (e-/ADU).

    Returns
    -------
    cov : `numpy.ndarray`
        ``(n, r, r)`` model covariances (ADU²).
    """
    r = a.shape[0]
    a_s = _symmetrize(a)
    c_s = _symmetrize(c)
    a2 = scipy.signal.convolve2d(a_s, a_s, mode="full")
    a3 = scipy.signal.convolve2d(a2, a_s, mode="full")
    ac = scipy.signal.convolve2d(a_s, c_s, mode="full")
    a2q, a3q, acq = _quadrant(a2, r), _quadrant(a3, r), _quadrant(ac, r)
    mu = np.asarray(mu, dtype=np.float64)[:, None, None]
    big = mu * gain
    poly = a * big + 2.0 / 3.0 * (a2q + c) * big**2 + (a3q / 3.0 + 5.0 / 6.0 * acq) * big**3
    out = mu / gain * poly + noise / gain**2
    out[:, 0, 0] += mu[:, 0, 0] / gain
    return out


def _shifted_sums(full: np.ndarray, r: int) -> np.ndarray:
    """``out[k, l] = quadrant_r(full ⊗ S_kl)`` for every quadrant lag ``(k, l)``.

    ``S_kl`` is the symmetrised unit quadrant: ones at the distinct lags
    ``(±k, ±l)``.  Convolving with a unit at ``(s, t)`` shifts by ``(s, t)``,
    so ``out[k, l, i, j]`` is the sum over those ``(s, t)`` of
    ``full[c+i-s, c+j-t]`` (zero outside ``full``).  Shape ``(r, r, r, r)``.
    """
    c = full.shape[0] // 2
    pad = np.pad(full, r)
    c += r
    out = np.zeros((r, r, r, r))
    for k in range(r):
        for m in range(r):
            for s in {k, -k}:
                for t in {m, -m}:
                    out[k, m] += pad[c - s : c - s + r, c - t : c - t + r]
    return out


def _covariance_model_jacobian(
    mu: np.ndarray, a: np.ndarray, c: np.ndarray, noise: np.ndarray, gain: float
) -> np.ndarray:
    """Derivatives of `covariance_model` with respect to ``(a, c, noise, gain)``.

    With ``N = mu*g`` the model reads ``a mu² + 2/3 (a⊗a + c) mu³ g +
    (a⊗a⊗a/3 + 5/6 a⊗c) mu⁴ g² + n/g² + δ mu/g``; the derivative of a
    convolution power with respect to ``a_kl`` is a shifted copy of the
    lower power (`_shifted_sums`).  Returns ``(n, r, r, 3 r² + 1)``.
    """
    r = a.shape[0]
    rr = r * r
    a_s = _symmetrize(a)
    c_s = _symmetrize(c)
    a2 = scipy.signal.convolve2d(a_s, a_s, mode="full")
    a3 = scipy.signal.convolve2d(a2, a_s, mode="full")
    ac = scipy.signal.convolve2d(a_s, c_s, mode="full")
    sh_a = _shifted_sums(a_s, r).reshape(rr, r, r)
    sh_a2 = _shifted_sums(a2, r).reshape(rr, r, r)
    sh_c = _shifted_sums(c_s, r).reshape(rr, r, r)
    unit = np.eye(rr).reshape(rr, r, r)
    mu = np.asarray(mu, dtype=np.float64)
    m2 = (mu**2)[:, None, None, None]
    m3g = (mu**3 * gain)[:, None, None, None]
    m4g2 = (mu**4 * gain**2)[:, None, None, None]
    d_a = m2 * unit + 2.0 / 3.0 * m3g * 2.0 * sh_a + m4g2 * (sh_a2 + 5.0 / 6.0 * sh_c)
    d_c = 2.0 / 3.0 * m3g * unit + 5.0 / 6.0 * m4g2 * sh_a
    d_n = np.broadcast_to(unit / gain**2, d_a.shape)
    a2q, a3q, acq = _quadrant(a2, r), _quadrant(a3, r), _quadrant(ac, r)
    mm = mu[:, None, None]
    d_g = 2.0 / 3.0 * (a2q + c) * mm**3 + 2.0 * (a3q / 3.0 + 5.0 / 6.0 * acq) * mm**4 * gain
    d_g = d_g - 2.0 * noise / gain**3
    d_g[:, 0, 0] -= mu / gain**2
    # (n, P, r, r) -> (n, r, r, P)
    jac = np.concatenate([d_a, d_c, d_n, d_g[:, None]], axis=1)
    return np.moveaxis(jac, 1, -1)


@dataclasses.dataclass
class FullCovarianceResult:
    """Result of `fit_full_covariance`.

    Attributes
    ----------
    a, a_err : `numpy.ndarray`
        ``(r, r)`` ``a_ij`` (1/e-) and errors.
    b, b_err : `numpy.ndarray`
        ``(r, r)`` ``b_ij = c_ij / a_ij`` (1/e-) and errors (NaN where
        ``a_ij`` is not significant, ``|a/a_err| < 3``: ``b`` is then
        undefined).
    c : `numpy.ndarray`
        ``(r, r)`` ``c_ij = a_ij b_ij`` (1/e-²), the fitted parameter.
    noise, noise_err : `numpy.ndarray`
        ``(r, r)`` ``n_ij`` (e-²) and errors.
    gain, gain_err : `float`
        Gain (e-/ADU).
    chi2, dof : `float`, `int`
        Weighted chi² and degrees of freedom.
    fit_status : `int`
    flags : `list` [`str`]
    bad : `bool`
    """

    a: np.ndarray
    a_err: np.ndarray
    b: np.ndarray
    b_err: np.ndarray
    c: np.ndarray
    noise: np.ndarray
    noise_err: np.ndarray
    gain: float
    gain_err: float
    chi2: float
    dof: int
    fit_status: int
    flags: list[str]
    bad: bool


def fit_full_covariance(
    means: np.ndarray,
    covs: np.ndarray,
    npairs: np.ndarray,
    *,
    kept: np.ndarray | None = None,
    r: int = 8,
    gain0: float = 1.5,
    a00_0: float = -2.0e-6,
    n00_0: float = 25.0,
) -> FullCovarianceResult:
    """Fit the full covariance model (Astier et al. 2019, eq. 20).

    Free parameters: the ``r×r`` quadrants ``a``, ``c = a*b`` and ``noise``,
    and the gain (``3 r² + 1``).  Each ``C_ij`` is weighted with its expected
    variance ``(C00**2 + C_ij**2) / npairs_ij`` (Gaussian pixels; this
    gives ``2 C00²/npix`` at ``(0, 0)``).  Starting values: the gain,
    ``a00`` and ``n00`` of the eq. 16 fit (pass them in), and for the other
    lags ``a_ij`` and ``n_ij`` from a quadratic fit of ``C_ij(mu)``
    (``C_ij ≈ n_ij/g² + a_ij mu²`` at lowest order).

    Parameters
    ----------
    means : `numpy.ndarray`
        ``(n,)`` means (ADU).
    covs : `numpy.ndarray`
        ``(n, L+1, L+1)`` measured ``C_ij`` (ADU²), ``L + 1 >= r``.
    npairs : `numpy.ndarray`
        ``(n, L+1, L+1)`` pixel pairs per lag.
    kept : `numpy.ndarray`, optional
        Boolean, points to use (e.g. `PtcAmpResult.kept`).
    r : `int`, optional
        Number of lags fitted in each direction (``0..r-1``).
    gain0, a00_0, n00_0 : `float`, optional
        Starting values (from `fit_ptc`).

    Returns
    -------
    result : `FullCovarianceResult`
    """
    mu = np.asarray(means, dtype=np.float64)
    cv = np.asarray(covs, dtype=np.float64)[:, :r, :r]
    npr = np.asarray(npairs, dtype=np.float64)[:, :r, :r]
    sel = np.isfinite(mu) & np.all(np.isfinite(cv), axis=(1, 2))
    if kept is not None:
        sel &= np.asarray(kept, dtype=bool)
    mu, cv, npr = mu[sel], cv[sel], npr[sel]
    flags: list[str] = []
    if cv.shape[1] < r or cv.shape[2] < r:
        raise ValueError(f"Covariances only go to lag {cv.shape[1] - 1}, r={r} needs {r - 1}.")
    n_par = 3 * r * r + 1
    if mu.size * r * r <= n_par or mu.size < 4:
        nanq = np.full((r, r), np.nan)
        return FullCovarianceResult(
            nanq, nanq, nanq, nanq, nanq, nanq, nanq, math.nan, math.nan, math.nan, 0, -99,
            ["TOO_FEW_POINTS"], True,
        )
    a0 = np.zeros((r, r))
    n0 = np.zeros((r, r))
    for i in range(r):
        for j in range(r):
            if i == 0 and j == 0:
                continue
            p2, _, p0 = np.polyfit(mu, cv[:, i, j], 2)
            a0[i, j] = p2
            n0[i, j] = p0 * gain0**2
    a0[0, 0] = a00_0
    n0[0, 0] = n00_0
    err = np.sqrt((cv[:, :1, :1] ** 2 + cv**2) / np.maximum(npr, 1.0))
    rr = r * r

    def unpack(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        return p[:rr].reshape(r, r), p[rr : 2 * rr].reshape(r, r), p[2 * rr : 3 * rr].reshape(r, r), p[-1]

    def resid(p: np.ndarray) -> np.ndarray:
        a, c, nz, g = unpack(p)
        return ((cv - covariance_model(mu, a, c, nz, g)) / err).ravel()

    def jac(p: np.ndarray) -> np.ndarray:
        a, c, nz, g = unpack(p)
        j = _covariance_model_jacobian(mu, a, c, nz, g) / err[..., None]
        return -j.reshape(-1, n_par)

    # Parameter scales: a ~ 1e-6, c ~ 1e-12 (a*b with b ~ 1e-6), noise ~ 10, gain ~ 1.
    x_scale = np.concatenate([np.full(rr, 1e-7), np.full(rr, 1e-12), np.full(rr, 10.0), [1.0]])
    p0 = np.concatenate([a0.ravel(), np.zeros(rr), n0.ravel(), [gain0]])
    fit = scipy.optimize.least_squares(
        resid, p0, jac=jac, x_scale=x_scale, method="lm", xtol=1e-10, ftol=1e-10
    )
    a, c, nz, g = unpack(fit.x)
    chi2 = float(np.sum(fit.fun**2))
    dof = int(fit.fun.size - n_par)
    try:
        pcov = np.linalg.inv(fit.jac.T @ fit.jac) * max(1.0, chi2 / dof)
        perr = np.sqrt(np.clip(np.diag(pcov), 0, None))
    except np.linalg.LinAlgError:
        perr = np.full(n_par, math.inf)
        flags.append("SINGULAR")
    a_err, c_err, n_err, g_err = unpack(perr)
    if fit.status <= 0:
        flags.append("NOT_CONVERGED")
    signif = np.abs(a) > 3 * a_err
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(signif, c / a, np.nan)
        b_err = np.where(signif, np.abs(b) * np.hypot(c_err / np.abs(c), a_err / np.abs(a)), np.nan)
    bad = bool(flags) or not np.isfinite(g)
    return FullCovarianceResult(
        a=a, a_err=a_err, b=b, b_err=b_err, c=c, noise=nz, noise_err=n_err, gain=float(g),
        gain_err=float(g_err), chi2=chi2, dof=dof, fit_status=int(fit.status), flags=flags, bad=bad,
    )
