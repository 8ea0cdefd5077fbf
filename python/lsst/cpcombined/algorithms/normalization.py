"""Focal-plane normalisation of flat-field exposures.

Each flat exposure ``e`` illuminates every detector ``d`` with a level that
factorises, to a good approximation, into an exposure term (lamp brightness
times exposure time) and a detector term (relative quantum efficiency and
gain errors)::

    B[d, e] = E[e] * G[d]

where ``B`` holds per-(detector, exposure) clipped-mean levels.  Dividing
every detector of exposure ``e`` by its own level would erase the
detector-to-detector response; dividing by ``E[e]`` only keeps it, so the
combined flats of different detectors stay on one focal-plane scale.

`solve_focal_plane_normalization` solves the factorisation in log space by
linear least squares over the observed entries,
``log B[d, e] = log E[e] + log G[d]``.  The model is invariant under
``E -> c E, G -> G / c``; the gauge is fixed by ``mean_d(log G[d]) = 0``, so
the detector responses have geometric mean 1 and ``E`` carries the overall
level.  Missing entries (NaN, or non-positive levels) are simply left out of
the fit; optionally, outliers are rejected iteratively with a robust
(MAD-based) sigma.

With a single detector (LATISS) the gauge forces ``G = [1]`` and the
solution degenerates to ``E[e] = B[0, e]``: each flat is divided by its own
clipped mean, as for a single-chip camera.
"""

from __future__ import annotations

__all__ = (
    "FocalPlaneNormalization",
    "build_level_matrix",
    "solve_focal_plane_normalization",
)

import dataclasses
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np


@dataclasses.dataclass
class FocalPlaneNormalization:
    """Solution of ``B[d, e] = E[e] * G[d]``.

    Attributes
    ----------
    exposure_scale
        ``E``, one value per exposure (NaN for an exposure with no usable
        entry).  Each exposure is divided by this value before combining.
    detector_response
        ``G``, one value per detector, geometric mean 1 over the detectors
        with data (NaN for a detector with no usable entry).
    log_residuals
        ``log B - log E - log G``, NaN where ``B`` was missing.
    used
        Boolean matrix of the entries used in the final fit.
    rejected
        Boolean matrix of the entries rejected as outliers.
    rms
        RMS of the log residuals of the used entries (fractional scatter).
    n_iterations
        Number of solves done.
    """

    exposure_scale: np.ndarray
    detector_response: np.ndarray
    log_residuals: np.ndarray
    used: np.ndarray
    rejected: np.ndarray
    rms: float
    n_iterations: int

    def model(self) -> np.ndarray:
        """Model levels ``E[e] * G[d]`` as a ``(n_det, n_exp)`` matrix."""
        return self.detector_response[:, None] * self.exposure_scale[None, :]


def _components(used: np.ndarray) -> int:
    """Number of connected components of the detector/exposure bipartite
    graph of ``used`` entries (ignoring detectors/exposures with none)."""
    n_det, n_exp = used.shape
    parent = list(range(n_det + n_exp))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for d, e in zip(*np.nonzero(used), strict=True):
        a, b = find(int(d)), find(n_det + int(e))
        if a != b:
            parent[a] = b
    nodes = [d for d in range(n_det) if used[d].any()] + [n_det + e for e in range(n_exp) if used[:, e].any()]
    return len({find(i) for i in nodes})


def _solve_once(
    log_b: np.ndarray, used: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares solution of log B = a[e] + g[d] on ``used``."""
    n_det, n_exp = log_b.shape
    det_ok = used.any(axis=1)
    exp_ok = used.any(axis=0)
    if _components(used) > 1:
        raise ValueError(
            "focal-plane normalisation is undetermined: the observed (detector, exposure) entries "
            "split into disconnected groups with no common detector or exposure"
        )
    d_idx, e_idx = np.nonzero(used)
    n_obs = d_idx.size
    # unknowns: a[e] for usable exposures, g[d] for usable detectors
    e_map = -np.ones(n_exp, dtype=int)
    e_map[exp_ok] = np.arange(exp_ok.sum())
    d_map = -np.ones(n_det, dtype=int)
    d_map[det_ok] = exp_ok.sum() + np.arange(det_ok.sum())
    n_par = int(exp_ok.sum() + det_ok.sum())
    design = np.zeros((n_obs, n_par))
    rows = np.arange(n_obs)
    design[rows, e_map[e_idx]] = 1.0
    design[rows, d_map[d_idx]] = 1.0
    rhs = log_b[d_idx, e_idx]
    if weights is not None:
        w = np.sqrt(weights[d_idx, e_idx])
        design *= w[:, None]
        rhs = rhs * w
    sol, *_ = np.linalg.lstsq(design, rhs, rcond=None)
    a = np.full(n_exp, np.nan)
    g = np.full(n_det, np.nan)
    a[exp_ok] = sol[e_map[exp_ok]]
    g[det_ok] = sol[d_map[det_ok]]
    # Gauge: the fit is invariant under a + c, g - c; fix mean(g) = 0.
    shift = float(np.mean(g[det_ok]))
    g[det_ok] -= shift
    a[exp_ok] += shift
    return a, g


def _robust_sigma(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation."""
    if values.size == 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _median_polish(log_b: np.ndarray, valid: np.ndarray, n_iter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Robust two-way fit ``log B = a[e] + g[d]`` by alternating medians
    (missing entries ignored), gauge ``mean(g) = 0``."""
    x = np.where(valid, log_b, np.nan)
    a = np.zeros(x.shape[1])
    g = np.zeros(x.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n_iter):
            a = np.nanmedian(x - g[:, None], axis=0)
            g_new = np.nanmedian(x - a[None, :], axis=1)
            g_new = np.where(np.isfinite(g_new), g_new, 0.0)
            if np.allclose(g_new, g, rtol=0, atol=1e-12):
                g = g_new
                break
            g = g_new
    a = np.where(np.isfinite(a), a, 0.0)
    shift = float(np.mean(g[valid.any(axis=1)]))
    return a + shift, g - shift


def solve_focal_plane_normalization(
    levels: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    reject_sigma: float | None = None,
    max_iterations: int = 5,
    min_log_threshold: float = 1e-6,
) -> FocalPlaneNormalization:
    """Solve ``B[d, e] = E[e] * G[d]`` in log space.

    Parameters
    ----------
    levels
        ``B``, shape ``(n_detectors, n_exposures)``: per-(detector,
        exposure) clipped-mean levels.  NaN, infinite or non-positive
        entries are treated as missing.
    weights
        Optional weights of the log levels (e.g. ``1/sigma_log**2``), same
        shape as ``levels``.
    reject_sigma
        When given, reject entries whose log residual exceeds
        ``reject_sigma`` times the robust (1.4826 MAD) residual scatter and
        refit, iterating until nothing changes or ``max_iterations`` solves.
        The first residuals come from a robust median-polish fit, so a
        strong outlier does not drag its whole exposure along.  A
        rejection that would leave a detector or exposure without entries,
        or split the entries into disconnected groups, is not made.
    max_iterations
        Maximum number of solves with rejection.
    min_log_threshold
        Floor of the rejection threshold in log units (so that noiseless
        data are not clipped on round-off).

    Returns
    -------
    solution : `FocalPlaneNormalization`

    Raises
    ------
    ValueError
        If ``levels`` is not 2-d, has no usable entry, or its usable entries
        form disconnected groups (then the relative scale of the groups is
        undetermined).

    Notes
    -----
    The gauge ``mean_d(log G[d]) = 0`` (over detectors with data) makes the
    detector responses relative to their geometric mean.  With one detector
    ``G = [1]`` and ``E = B[0]`` (the LATISS case: each flat divided by its
    own level).  With complete data the solution is the two-way
    decomposition ``log G[d] = row mean - grand mean`` and ``log E[e] =
    column mean``; missing entries make the general least-squares solve
    necessary.
    """
    b = np.asarray(levels, dtype=np.float64)
    if b.ndim != 2:
        raise ValueError(f"levels must be a 2-d (detector, exposure) matrix, got shape {b.shape}")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != b.shape:
            raise ValueError("weights must have the shape of levels")
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = np.isfinite(b) & (b > 0)
        if weights is not None:
            valid &= np.isfinite(weights) & (weights > 0)
        log_b = np.where(valid, np.log(np.where(valid, b, 1.0)), np.nan)
    if not valid.any():
        raise ValueError("no usable (positive, finite) level in the matrix")

    used = valid.copy()
    rejected = np.zeros_like(valid)
    a, g = _solve_once(log_b, used, weights)
    n_iter = 1
    resid = log_b - a[None, :] - g[:, None]
    if reject_sigma is not None:
        # Start from a robust (median-polish) solution: a least-squares fit
        # smears a strong outlier over its whole exposure and detector.
        ra, rg = _median_polish(log_b, valid)
        current = log_b - ra[None, :] - rg[:, None]
        sigma = _robust_sigma(current[valid])
        while n_iter < max_iterations:
            threshold = max(reject_sigma * sigma, min_log_threshold)
            new_used = valid & (np.abs(np.nan_to_num(current, nan=np.inf)) <= threshold)
            if np.array_equal(new_used, used):
                break
            # Never reject a detector's or an exposure's last entries, nor
            # split the entries into disconnected groups.
            if (
                (new_used.any(axis=1) != valid.any(axis=1)).any()
                or (new_used.any(axis=0) != valid.any(axis=0)).any()
                or _components(new_used) > 1
            ):
                break
            used = new_used
            a, g = _solve_once(log_b, used, weights)
            n_iter += 1
            resid = log_b - a[None, :] - g[:, None]
            current = resid
            sigma = _robust_sigma(resid[used])
        rejected = valid & ~used

    resid = np.where(valid, resid, np.nan)
    rms = float(np.sqrt(np.mean(resid[used] ** 2))) if used.any() else float("nan")
    return FocalPlaneNormalization(
        exposure_scale=np.exp(a),
        detector_response=np.exp(g),
        log_residuals=resid,
        used=used,
        rejected=rejected,
        rms=rms,
        n_iterations=n_iter,
    )


def build_level_matrix(
    levels: Mapping[tuple[Hashable, Hashable], float],
    detectors: Sequence[Hashable] | None = None,
    exposures: Sequence[Hashable] | None = None,
) -> tuple[np.ndarray, list[Hashable], list[Hashable]]:
    """Arrange ``{(detector, exposure): level}`` into a ``B`` matrix.

    Parameters
    ----------
    levels
        Level per (detector, exposure) key.
    detectors, exposures
        Row and column order (default: sorted keys found in ``levels``).

    Returns
    -------
    matrix, detectors, exposures
        ``(n_det, n_exp)`` float64 matrix (NaN where no level was given) and
        the row/column keys.
    """
    dets = list(detectors) if detectors is not None else sorted({k[0] for k in levels})
    exps = list(exposures) if exposures is not None else sorted({k[1] for k in levels})
    d_index = {d: i for i, d in enumerate(dets)}
    e_index = {e: i for i, e in enumerate(exps)}
    matrix = np.full((len(dets), len(exps)), np.nan)
    for (d, e), value in levels.items():
        if d in d_index and e in e_index:
            matrix[d_index[d], e_index[e]] = float(value)
    return matrix, dets, exps
