"""Quick gain from flat pairs: ``g = mu / (C00 - rn_adu**2)`` per pair.

What the ScriptQueue script reports; optionally with the covariances
summed to a small lag, which removes the brighter-fatter bias of the plain
formula.
"""

from __future__ import annotations

__all__ = ("PairGainResult", "gain_from_flat_pair", "gain_from_flat_pairs")

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from .measurement import PairMeasurement
from .selection import turnover_mask


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
