"""The full covariance model of Astier et al. (2019), eq. 20, and its fit.

The ``C_ij`` of small lags (`~lsst.cpcombined.algorithms.ptc.covariances`
index convention) are fitted with the ``a_ij``, ``b_ij`` (through
``c_ij = a_ij b_ij``), noise ``n_ij`` and the gain.
"""

from __future__ import annotations

__all__ = ("FullCovarianceResult", "covariance_model", "fit_full_covariance")

import dataclasses
import math
from typing import Any

import numpy as np
import scipy.optimize
import scipy.signal


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
    if cv.shape[1] < r or cv.shape[2] < r:
        raise ValueError(f"Covariances only go to lag {cv.shape[1] - 1}, r={r} needs {r - 1}.")
    if mu.size * r * r <= 3 * r * r + 1 or mu.size < 4:
        nanq = np.full((r, r), np.nan)
        return FullCovarianceResult(
            nanq,
            nanq,
            nanq,
            nanq,
            nanq,
            nanq,
            nanq,
            math.nan,
            math.nan,
            math.nan,
            0,
            -99,
            ["TOO_FEW_POINTS"],
            True,
        )
    a0, n0 = _full_covariance_start(mu, cv, r, gain0, a00_0, n00_0)
    p0 = np.concatenate([a0.ravel(), np.zeros(r * r), n0.ravel(), [gain0]])
    return _full_covariance_result(_fit_eq20(mu, cv, npr, p0, r), r)


def _unpack(p: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(a, c, noise, gain)`` from the parameter vector of the eq. 20 fit."""
    rr = r * r
    return p[:rr].reshape(r, r), p[rr : 2 * rr].reshape(r, r), p[2 * rr : 3 * rr].reshape(r, r), p[-1]


def _full_covariance_start(
    mu: np.ndarray, cv: np.ndarray, r: int, gain0: float, a00_0: float, n00_0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Starting ``a`` and ``noise`` quadrants of the eq. 20 fit: ``a00_0``,
    ``n00_0`` at lag 0, elsewhere from a quadratic fit of ``C_ij(mu)``
    (``C_ij ≈ n_ij/g² + a_ij mu²`` at lowest order)."""
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
    return a0, n0


def _fit_eq20(mu: np.ndarray, cv: np.ndarray, npr: np.ndarray, p0: np.ndarray, r: int) -> Any:
    """Levenberg-Marquardt fit of `covariance_model` to the ``C_ij``, each
    weighted with ``(C00**2 + C_ij**2) / npairs_ij``, from ``p0``.  Returns
    the `scipy.optimize.least_squares` result."""
    n_par = 3 * r * r + 1
    rr = r * r
    err = np.sqrt((cv[:, :1, :1] ** 2 + cv**2) / np.maximum(npr, 1.0))

    def resid(p: np.ndarray) -> np.ndarray:
        a, c, nz, g = _unpack(p, r)
        return ((cv - covariance_model(mu, a, c, nz, g)) / err).ravel()

    def jac(p: np.ndarray) -> np.ndarray:
        a, c, nz, g = _unpack(p, r)
        j = _covariance_model_jacobian(mu, a, c, nz, g) / err[..., None]
        return -j.reshape(-1, n_par)

    # Parameter scales: a ~ 1e-6, c ~ 1e-12 (a*b with b ~ 1e-6), noise ~ 10, gain ~ 1.
    x_scale = np.concatenate([np.full(rr, 1e-7), np.full(rr, 1e-12), np.full(rr, 10.0), [1.0]])
    return scipy.optimize.least_squares(
        resid, p0, jac=jac, x_scale=x_scale, method="lm", xtol=1e-10, ftol=1e-10
    )


def _full_covariance_result(fit: Any, r: int) -> FullCovarianceResult:
    """Parameters, errors (statistical, scaled by ``max(1, chi2/dof)``),
    ``b = c/a`` where ``a`` is significant, and flags of the eq. 20 fit."""
    n_par = 3 * r * r + 1
    flags: list[str] = []
    a, c, nz, g = _unpack(fit.x, r)
    chi2 = float(np.sum(fit.fun**2))
    dof = int(fit.fun.size - n_par)
    try:
        pcov = np.linalg.inv(fit.jac.T @ fit.jac) * max(1.0, chi2 / dof)
        perr = np.sqrt(np.clip(np.diag(pcov), 0, None))
    except np.linalg.LinAlgError:
        perr = np.full(n_par, math.inf)
        flags.append("SINGULAR")
    a_err, c_err, n_err, g_err = _unpack(perr, r)
    if fit.status <= 0:
        flags.append("NOT_CONVERGED")
    signif = np.abs(a) > 3 * a_err
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(signif, c / a, np.nan)
        b_err = np.where(signif, np.abs(b) * np.hypot(c_err / np.abs(c), a_err / np.abs(a)), np.nan)
    bad = bool(flags) or not np.isfinite(g)
    return FullCovarianceResult(
        a=a,
        a_err=a_err,
        b=b,
        b_err=b_err,
        c=c,
        noise=nz,
        noise_err=n_err,
        gain=float(g),
        gain_err=float(g_err),
        chi2=chi2,
        dof=dof,
        fit_status=int(fit.status),
        flags=flags,
        bad=bad,
    )
