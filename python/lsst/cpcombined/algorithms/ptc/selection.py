"""Which points of a PTC enter the fit: validity, gaps in mean, saturation."""

from __future__ import annotations

__all__ = ("turnover_mask",)

import dataclasses
import math

import numpy as np


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


def _gap_mask(means_e: np.ndarray, cand: np.ndarray, max_gap_e: float | None) -> np.ndarray:
    """Flag the candidate points above the first gap in mean.

    Parameters
    ----------
    means_e : `numpy.ndarray`
        Means of all the points (e-).
    cand : `numpy.ndarray`
        Boolean, the points to consider (others are never flagged).
    max_gap_e : `float` or `None`
        Largest allowed gap between consecutive candidate means (e-);
        `None` disables the cut.

    Returns
    -------
    above : `numpy.ndarray`
        Boolean, True for the candidates above the first larger gap.
    """
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


@dataclasses.dataclass(frozen=True)
class _PointSelection:
    """Why each point of a PTC is, or is not, used (`_select_points`).

    Attributes
    ----------
    ok : `numpy.ndarray`
        Boolean, measured points with finite, positive mean and variance.
    invalid, above_gap, saturated : `numpy.ndarray`
        Boolean, why a point is not used; a point is in at most one.
    usable : `numpy.ndarray`
        Boolean, the points left for the fit.
    turnoff : `float`
        Largest usable mean (ADU); NaN when no point is usable.
    """

    ok: np.ndarray
    invalid: np.ndarray
    above_gap: np.ndarray
    saturated: np.ndarray
    usable: np.ndarray
    turnoff: float


def _select_points(
    mu: np.ndarray,
    var: np.ndarray,
    npx: np.ndarray,
    *,
    valid: np.ndarray | None,
    sat_fraction: np.ndarray | None,
    max_sat_fraction: float,
    gap_gain: float,
    max_gap_e: float | None,
    turnover_nsigma: float,
    turnover_min_drop: float,
    turnover_confirm: int,
) -> _PointSelection:
    """Steps 1–3 of `~lsst.cpcombined.algorithms.ptc.fit_ptc`: invalid,
    above-gap and saturated points.

    Parameters
    ----------
    mu, var, npx : `numpy.ndarray`
        Per point: mean (ADU), ``C00`` (ADU²), pixels used.
    valid, sat_fraction : array-like or `None`
        Per point: measured or not, fraction of ``SAT`` pixels.
    max_sat_fraction : `float`
        Points with more ``SAT`` pixels than this are saturated (even when
        they could not be measured).
    gap_gain : `float`
        Gain (e-/ADU) converting the means to electrons for the gap cut.
    max_gap_e : `float` or `None`
        Gap threshold (e-), `None` for no gap cut.
    turnover_nsigma, turnover_min_drop, turnover_confirm
        Parameters of `turnover_mask`.

    Returns
    -------
    selection : `_PointSelection`
        The reasons per point, the usable points and the turnoff.
    """
    ok = np.isfinite(mu) & np.isfinite(var) & (npx > 0) & (mu > 0) & (var > 0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    # Pairs with too many SAT pixels are saturated whether or not they could
    # be measured (an amp masked SAT everywhere has no usable pixel at all).
    sat_masked = np.zeros(mu.size, dtype=bool)
    if sat_fraction is not None:
        sat_masked = np.asarray(sat_fraction, dtype=np.float64) > max_sat_fraction
    invalid = ~ok & ~sat_masked
    above_gap = _gap_mask(mu * gap_gain, ok & ~sat_masked, max_gap_e)
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
    # Saturation only grows with signal: every point above the lowest
    # saturated one is saturated too.
    sat_means = mu[saturated & np.isfinite(mu)]
    if sat_means.size:
        saturated |= cand & (mu >= sat_means.min())
    usable = cand & ~saturated
    turnoff = float(mu[usable].max()) if usable.any() else math.nan
    return _PointSelection(ok, invalid, above_gap, saturated, usable, turnoff)
