"""The PTC fit of one amplifier: Astier et al. (2019), eq. 16, to ``C00(mu)``.

`fit_ptc` runs the point selection (`~lsst.cpcombined.algorithms.ptc.selection`),
the weighted fit with outlier rejection and the checks that flag a result
that must not be trusted; each step is a function of its own here.
Units: means in ADU, ``C00`` in ADU², gain in e-/ADU, ``n00`` in e-²,
``a00`` in 1/e-.
"""

from __future__ import annotations

__all__ = ("PtcAmpResult", "fit_ptc", "fit_ptc_measurements")

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.optimize

from .measurement import PairMeasurement
from .model import _ptc_jacobian, ptc_model
from .selection import _PointSelection, _select_points

# Fit defaults of the specification (section 3, "PTC").
_START = (-2.0e-6, 1.5, 25.0)  # a00 [1/e-], gain [e-/ADU], n00 [e-^2]
_BOUNDS = ((-1.0e-4, 0.1, 0.0), (0.0, 10.0, 2000.0))

#: A condition found by `fit_ptc`: its flag and a human-readable note.
_Problem = tuple[str, str]


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
    mu, var, npx, t = _ptc_points(means, variances, npix, exp_times)
    selection = _select_points(
        mu,
        var,
        npx,
        valid=valid,
        sat_fraction=sat_fraction,
        max_sat_fraction=max_sat_fraction,
        gap_gain=start[1] if nominal_gain is None else nominal_gain,
        max_gap_e=max_gap_e,
        turnover_nsigma=turnover_nsigma,
        turnover_min_drop=turnover_min_drop,
        turnover_confirm=turnover_confirm,
    )
    problem = _selection_problem(selection, min_points) or _rise_problem(
        mu, var, npx, selection.usable, rise_nsigma
    )
    if problem is not None:
        return _amp_result(amp_name, t, mu, var, npx, selection, _no_fit(selection.usable), [problem])
    lo, hi = np.asarray(bounds[0], dtype=float), np.asarray(bounds[1], dtype=float)
    x0 = np.clip(np.asarray(start, dtype=float), lo, hi)
    fit, kept, model_var = _fit_with_rejection(
        mu, var, npx, selection.usable, x0, lo, hi, outlier_nsigma, outlier_iter, min_points
    )
    outcome = _fit_outcome(fit, kept, mu, var, npx, model_var)
    problems = [
        *_fit_problems(outcome, min_points),
        *_bound_problems(outcome.params, lo, hi, bound_rtol),
        *_chi2_problems(outcome, high_chi2),
    ]
    return _amp_result(amp_name, t, mu, var, npx, selection, outcome, problems)


@dataclasses.dataclass(frozen=True)
class _FitOutcome:
    """Parameters and statistics of the eq. 16 fit of one amplifier.

    Attributes
    ----------
    params, perr : `numpy.ndarray`
        ``(a00, gain, n00)`` and their errors (NaN when no fit was made).
    kept : `numpy.ndarray`
        Boolean, points of the final fit.
    chi2, dof, scale : `float`, `int`, `float`
        Weighted chi², degrees of freedom, error scale factor.
    status, message : `int`, `str`
        `scipy.optimize.least_squares` status and message.
    """

    params: np.ndarray
    perr: np.ndarray
    kept: np.ndarray
    chi2: float
    dof: int
    scale: float
    status: int
    message: str


def _ptc_points(
    means: Sequence[float] | np.ndarray,
    variances: Sequence[float] | np.ndarray,
    npix: Sequence[float] | np.ndarray,
    exp_times: Sequence[float] | np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The input points of `fit_ptc` as float64 arrays (means, variances
    and pixel counts copied; exposure times NaN when not given).

    Raises
    ------
    ValueError
        If the three arrays are not 1-d arrays of equal length.
    """
    mu = np.asarray(means, dtype=np.float64).copy()
    var = np.asarray(variances, dtype=np.float64).copy()
    npx = np.asarray(npix, dtype=np.float64).copy()
    n = mu.size
    if var.shape != (n,) or npx.shape != (n,):
        raise ValueError("means, variances and npix must be 1-d arrays of equal length.")
    t = np.full(n, np.nan) if exp_times is None else np.asarray(exp_times, dtype=np.float64)
    return mu, var, npx, t


def _selection_problem(selection: _PointSelection, min_points: int) -> _Problem | None:
    """Why no fit can be made with the selected points (`None`: it can).

    In this order: every point left is saturated, no point is valid, the
    gap cut left nothing, fewer than ``min_points`` usable points.
    """
    usable, saturated = selection.usable, selection.saturated
    invalid, above_gap = selection.invalid, selection.above_gap
    if not usable.any() and saturated.any():
        return (
            "ALL_SATURATED",
            f"no usable point: {int(saturated.sum())} saturated, {int(invalid.sum())} invalid, "
            f"{int(above_gap.sum())} above a gap",
        )
    if not selection.ok.any():
        return "NO_VALID_POINTS", f"no valid point among {selection.ok.size}"
    if not usable.any():
        return "TOO_FEW_POINTS", "no point left after the gap cut"
    if usable.sum() < min_points:
        return (
            "TOO_FEW_POINTS",
            f"{int(usable.sum())} usable points < {min_points} "
            f"({int(invalid.sum())} invalid, {int(above_gap.sum())} above a gap, "
            f"{int(saturated.sum())} saturated)",
        )
    return None


def _rise_problem(
    mu: np.ndarray, var: np.ndarray, npx: np.ndarray, usable: np.ndarray, rise_nsigma: float
) -> _Problem | None:
    """``NOT_RISING`` unless ``C00`` of the usable points rises with the mean.

    The slope of a straight line fitted with the weights ``npix/(2 C00²)``
    must be positive at ``rise_nsigma``: a fully saturated amp gives a flat
    PTC that eq. 16 could otherwise "fit" with parameters at bounds.
    """
    sig = var * np.sqrt(2.0 / npx)
    wgt = 1.0 / sig[usable] ** 2
    xm = np.average(mu[usable], weights=wgt)
    sxx = np.sum(wgt * (mu[usable] - xm) ** 2)
    if sxx > 0:
        slope = np.sum(wgt * (mu[usable] - xm) * var[usable]) / sxx
        slope_err = 1.0 / math.sqrt(sxx)
    else:
        slope, slope_err = 0.0, math.inf
    if slope > rise_nsigma * slope_err:
        return None
    return (
        "NOT_RISING",
        f"variance does not rise with the mean (slope {slope:.3g} ± {slope_err:.3g}): "
        "saturated everywhere, or no signal range",
    )


def _least_squares(
    mu: np.ndarray,
    var: np.ndarray,
    npx: np.ndarray,
    sel: np.ndarray,
    x0: np.ndarray,
    var_for_weights: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> Any:
    """One bounded fit of eq. 16 to the points ``sel``.

    Each ``C00`` is weighted with the Gaussian error
    ``var_for_weights * sqrt(2/npix)``.  Returns the
    `scipy.optimize.least_squares` result.
    """
    err = np.maximum(var_for_weights[sel], 1e-12) * np.sqrt(2.0 / npx[sel])
    m_sel, v_sel = mu[sel], var[sel]

    def resid(p: np.ndarray) -> np.ndarray:
        return (v_sel - ptc_model(m_sel, *p)) / err

    def jac(p: np.ndarray) -> np.ndarray:
        return -_ptc_jacobian(m_sel, *p) / err[:, None]

    return scipy.optimize.least_squares(
        resid, x0, jac=jac, bounds=(lo, hi), x_scale="jac", method="trf", xtol=1e-12, ftol=1e-12
    )


def _inliers(
    var: np.ndarray,
    npx: np.ndarray,
    usable: np.ndarray,
    kept: np.ndarray,
    model_var: np.ndarray,
    outlier_nsigma: float,
) -> np.ndarray:
    """The usable points within ``outlier_nsigma`` of the model.

    Residuals are normalised by the Gaussian error of the model ``C00``,
    times ``max(1, 1.4826*MAD)`` of the normalised residuals of the points
    ``kept`` (data noisier than Gaussian do not lose most of their points).
    """
    err_all = np.maximum(model_var, 1e-12) * np.sqrt(2.0 / npx)
    r = np.where(usable, (var - model_var) / err_all, 0.0)
    mad = 1.4826 * np.median(np.abs(r[kept] - np.median(r[kept])))
    r_scale = max(1.0, float(mad))
    return usable & (np.abs(r) <= outlier_nsigma * r_scale)


def _fit_with_rejection(
    mu: np.ndarray,
    var: np.ndarray,
    npx: np.ndarray,
    usable: np.ndarray,
    x0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    outlier_nsigma: float,
    outlier_iter: int,
    min_points: int,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Step 4 of `fit_ptc`: the fit with outlier rejection.

    A first fit weighted with the measured ``C00``, a second with the model
    ``C00``, then at most ``outlier_iter`` rejections (`_inliers`, every
    usable point reconsidered) each followed by a refit.  Stops when the
    kept points do not change or fewer than ``min_points`` would be left.

    Returns
    -------
    fit : `scipy.optimize.OptimizeResult`
        The last fit.
    kept : `numpy.ndarray`
        Boolean, its points.
    model_var : `numpy.ndarray`
        The model ``C00`` of every point at its solution.
    """
    kept = usable.copy()
    fit = _least_squares(mu, var, npx, kept, x0, var, lo, hi)
    model_var = ptc_model(mu, *fit.x)
    fit = _least_squares(mu, var, npx, kept, fit.x, model_var, lo, hi)
    model_var = ptc_model(mu, *fit.x)
    for _ in range(outlier_iter):
        new_kept = _inliers(var, npx, usable, kept, model_var, outlier_nsigma)
        if new_kept.sum() < min_points or np.array_equal(new_kept, kept):
            break
        kept = new_kept
        fit = _least_squares(mu, var, npx, kept, fit.x, model_var, lo, hi)
        model_var = ptc_model(mu, *fit.x)
    return fit, kept, model_var


def _fit_outcome(
    fit: Any, kept: np.ndarray, mu: np.ndarray, var: np.ndarray, npx: np.ndarray, model_var: np.ndarray
) -> _FitOutcome:
    """chi², degrees of freedom and parameter errors at the solution.

    The errors are the statistical ones, ``(J^T W J)^-1`` with the weights
    of the model ``C00``, scaled by ``sqrt(max(1, chi2/dof))`` (1 without
    degrees of freedom); infinite when ``J^T W J`` is singular.
    """
    err = np.maximum(model_var[kept], 1e-12) * np.sqrt(2.0 / npx[kept])
    r = (var[kept] - model_var[kept]) / err
    params = fit.x.copy()
    chi2 = float(np.sum(r * r))
    dof = int(kept.sum() - 3)
    jw = _ptc_jacobian(mu[kept], *params) / err[:, None]
    scale = math.sqrt(max(1.0, chi2 / dof)) if dof > 0 else 1.0
    try:
        pcov = np.linalg.inv(jw.T @ jw)
        perr = np.sqrt(np.clip(np.diag(pcov), 0, None)) * scale
    except np.linalg.LinAlgError:
        perr = np.full(3, math.inf)
    return _FitOutcome(params, perr, kept, chi2, dof, scale, int(fit.status), str(fit.message))


def _no_fit(usable: np.ndarray) -> _FitOutcome:
    """The outcome when no fit is attempted: NaN parameters and errors."""
    nan = math.nan
    return _FitOutcome(
        params=np.array([nan, nan, nan]),
        perr=np.array([nan, nan, nan]),
        kept=usable.copy(),
        chi2=nan,
        dof=0,
        scale=nan,
        status=-99,
        message="no fit attempted",
    )


def _fit_problems(outcome: _FitOutcome, min_points: int) -> list[_Problem]:
    """``NOT_CONVERGED``, ``NONFINITE_PARAMETERS``, ``TOO_FEW_POINTS`` of a fit."""
    problems: list[_Problem] = []
    if outcome.status <= 0:
        problems.append(("NOT_CONVERGED", f"fit did not converge: {outcome.message}"))
    if not np.all(np.isfinite(outcome.params)) or not np.all(np.isfinite(outcome.perr)):
        problems.append(("NONFINITE_PARAMETERS", "parameters or their errors are not finite"))
    n_kept = int(outcome.kept.sum())
    if n_kept < min_points:
        problems.append(("TOO_FEW_POINTS", f"{n_kept} points left after outlier rejection < {min_points}"))
    return problems


def _bound_problems(params: np.ndarray, lo: np.ndarray, hi: np.ndarray, bound_rtol: float) -> list[_Problem]:
    """Parameters ``(a00, gain, n00)`` within ``bound_rtol`` of the bound
    range of a bound: gain at either bound, ``n00`` at the upper one and
    ``a00`` at the lower one make the fit bad; ``n00`` or ``a00`` at 0 are
    warnings (no read-noise floor, no curvature in the ramp)."""
    problems: list[_Problem] = []
    span = hi - lo
    at_lo = params <= lo + bound_rtol * span
    at_hi = params >= hi - bound_rtol * span
    if at_lo[1] or at_hi[1]:
        problems.append(("GAIN_AT_BOUND", f"gain {params[1]:.4g} at its bound [{lo[1]:g}, {hi[1]:g}]"))
    if at_hi[2]:
        problems.append(("NOISE_AT_BOUND", f"n00 {params[2]:.4g} e-^2 at its upper bound {hi[2]:g}"))
    elif at_lo[2]:
        # A ramp that starts well above the read-noise floor constrains n00
        # only loosely; n00 = 0 is then a statistical outcome, not a failure
        # of the gain fit.
        problems.append(
            (
                "NOISE_AT_ZERO",
                f"n00 at its lower bound {lo[2]:g} e-^2 (read noise not constrained by this ramp; "
                "warning only, take the noise from the overscan)",
            )
        )
    if at_lo[0]:
        problems.append(("A00_AT_LOWER_BOUND", f"a00 {params[0]:.3g} at its lower bound {lo[0]:g}"))
    elif at_hi[0]:
        problems.append(
            ("A00_AT_ZERO", "a00 at its upper bound (no brighter-fatter curvature measured; warning only)")
        )
    return problems


def _chi2_problems(outcome: _FitOutcome, high_chi2: float) -> list[_Problem]:
    """Warnings on the fit quality: ``NO_DOF`` or ``HIGH_CHI2``."""
    chi2, dof = outcome.chi2, outcome.dof
    if dof <= 0:
        return [
            (
                "NO_DOF",
                f"{int(outcome.kept.sum())} points for 3 parameters: the fit quality cannot be checked "
                "(errors are statistical only; warning)",
            )
        ]
    if chi2 / dof > high_chi2:
        return [
            ("HIGH_CHI2", f"chi2/dof = {chi2 / dof:.3g} > {high_chi2:g} (errors scaled up; warning only)")
        ]
    return []


def _amp_result(
    amp_name: str,
    exp_times: np.ndarray,
    mu: np.ndarray,
    var: np.ndarray,
    npx: np.ndarray,
    selection: _PointSelection,
    outcome: _FitOutcome,
    problems: list[_Problem],
) -> PtcAmpResult:
    """Assemble the `PtcAmpResult`: noise from ``n00``, flags and reason
    from the problems found, ``bad`` for any flag of
    `PtcAmpResult.BAD_FLAGS`."""
    a00, gain, n00 = (float(p) for p in outcome.params)
    a00_err, gain_err, n00_err = (float(p) for p in outcome.perr)
    noise = math.sqrt(n00) if n00 >= 0 else math.nan
    noise_err = n00_err / (2 * noise) if noise > 0 else (math.inf if noise == 0 else math.nan)
    flags = [flag for flag, _ in problems]
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
        turnoff=selection.turnoff,
        exp_times=exp_times,
        means=mu,
        variances=var,
        npix=npx,
        kept=outcome.kept,
        invalid=selection.invalid,
        above_gap=selection.above_gap,
        saturated=selection.saturated,
        outlier=selection.usable & ~outcome.kept,
        chi2=outcome.chi2,
        dof=outcome.dof,
        error_scale=outcome.scale,
        fit_status=outcome.status,
        fit_message=outcome.message,
        flags=flags,
        bad=any(flag in PtcAmpResult.BAD_FLAGS for flag in flags),
        reason="; ".join(note for _, note in problems),
    )


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
