"""Tests of the focal-plane flat normalisation B[d, e] = E[e] * G[d]."""

import numpy as np
import pytest
from lsst.cpcombined.algorithms.normalization import (
    build_level_matrix,
    solve_focal_plane_normalization,
)

N_DET, N_EXP = 9, 20


def _truth(seed: int):
    rng = np.random.default_rng(seed)
    e = rng.uniform(5_000.0, 50_000.0, N_EXP)  # lamp level x exposure time
    g = rng.uniform(0.85, 1.15, N_DET)  # relative detector response
    # the solver's gauge: geometric mean of G is 1, E carries the level
    gm = np.exp(np.mean(np.log(g)))
    return rng, e * gm, g / gm


def test_exact_recovery_noiseless():
    _, e, g = _truth(1)
    b = g[:, None] * e[None, :]
    sol = solve_focal_plane_normalization(b)
    np.testing.assert_allclose(sol.detector_response, g, rtol=1e-10)
    np.testing.assert_allclose(sol.exposure_scale, e, rtol=1e-10)
    assert abs(np.mean(np.log(sol.detector_response))) < 1e-12  # gauge
    assert np.nanmax(np.abs(sol.log_residuals)) < 1e-10
    np.testing.assert_allclose(sol.model(), b, rtol=1e-10)


def test_noisy_recovery_of_detector_ratios():
    rng, e, g = _truth(2)
    noise = 1e-3  # 0.1 % per level
    b = g[:, None] * e[None, :] * (1 + noise * rng.standard_normal((N_DET, N_EXP)))
    sol = solve_focal_plane_normalization(b)
    err = np.log(sol.detector_response) - np.log(g)
    # each log G averages N_EXP entries, minus the gauge mean over N_DET:
    expected = noise * np.sqrt((1 - 1 / N_DET) / N_EXP)  # 2.1e-4
    rms = np.sqrt(np.mean(err**2))
    print(f"G log errors: rms {rms:.2e}, max {np.max(np.abs(err)):.2e}, expected {expected:.2e}")
    assert np.sqrt(np.mean(err**2)) < 1.6 * expected
    assert np.max(np.abs(err)) < 4 * expected
    # ratios of detector responses to ~0.05 %
    ratio_err = err[:, None] - err[None, :]
    assert np.sqrt(np.mean(ratio_err**2)) < 5e-4
    assert np.max(np.abs(ratio_err)) < 1.2e-3
    # the residual rms estimates the per-entry noise (dof = 180 - 28)
    assert sol.rms == pytest.approx(noise * np.sqrt(152 / 180), rel=0.2)


def test_missing_entries():
    rng, e, g = _truth(3)
    b = g[:, None] * e[None, :]
    b[0, 3] = np.nan
    b[4, :5] = np.nan
    b[8, 19] = 0.0  # a non-positive level is missing too
    b[2, 7] = -1.0
    sol = solve_focal_plane_normalization(b)
    np.testing.assert_allclose(sol.detector_response, g, rtol=1e-10)
    np.testing.assert_allclose(sol.exposure_scale, e, rtol=1e-10)
    assert np.isnan(sol.log_residuals[0, 3]) and not sol.used[0, 3] and not sol.used[8, 19]
    # an exposure with no data at all gets NaN, the rest are unaffected
    b[:, 10] = np.nan
    sol = solve_focal_plane_normalization(b)
    assert np.isnan(sol.exposure_scale[10])
    keep = np.arange(N_EXP) != 10
    np.testing.assert_allclose(sol.exposure_scale[keep], e[keep], rtol=1e-10)
    np.testing.assert_allclose(sol.detector_response, g, rtol=1e-10)


def test_missing_entries_noisy_no_bias():
    """Missing entries must not bias the solution (a naive per-exposure mean
    over the present detectors would)."""
    rng, e, g = _truth(4)
    g = g.copy()
    b = g[:, None] * e[None, :] * (1 + 1e-3 * rng.standard_normal((N_DET, N_EXP)))
    b[np.argmax(g), ::2] = np.nan  # the brightest detector is missing in half the exposures
    sol = solve_focal_plane_normalization(b)
    err = np.log(sol.detector_response) - np.log(g)
    assert np.max(np.abs(err)) < 1e-3
    np.testing.assert_allclose(sol.exposure_scale, e, rtol=2e-3)


def test_disconnected_raises():
    b = np.full((2, 4), np.nan)
    b[0, :2] = 1.0
    b[1, 2:] = 2.0
    with pytest.raises(ValueError, match="disconnected"):
        solve_focal_plane_normalization(b)
    with pytest.raises(ValueError):
        solve_focal_plane_normalization(np.full((3, 3), np.nan))


def test_single_detector_degenerates_to_levels():
    """LATISS: one detector -> G = 1 and E = B (each flat divided by its own level)."""
    rng = np.random.default_rng(5)
    b = rng.uniform(1e3, 1e5, (1, 12))
    sol = solve_focal_plane_normalization(b)
    np.testing.assert_allclose(sol.detector_response, [1.0], rtol=1e-12)
    np.testing.assert_allclose(sol.exposure_scale, b[0], rtol=1e-12)


def test_outlier_rejection():
    rng, e, g = _truth(6)
    b = g[:, None] * e[None, :] * (1 + 1e-3 * rng.standard_normal((N_DET, N_EXP)))
    b[3, 5] *= 1.2  # e.g. a detector with a bad amp in one exposure
    b[7, 11] *= 0.7
    plain = solve_focal_plane_normalization(b)
    clipped = solve_focal_plane_normalization(b, reject_sigma=5.0)
    assert clipped.rejected[3, 5] and clipped.rejected[7, 11]
    assert clipped.rejected.sum() <= 4  # a Gaussian tail may add a rare extra
    err_plain = np.max(np.abs(np.log(plain.detector_response / g)))
    err_clip = np.max(np.abs(np.log(clipped.detector_response / g)))
    assert err_plain > 5e-3  # the outliers pull G[3] and G[7] by ~ log(1.2)/20
    assert err_clip < 1e-3
    # noiseless data: nothing rejected on round-off
    exact = solve_focal_plane_normalization(g[:, None] * e[None, :], reject_sigma=3.0)
    assert not exact.rejected.any()


def test_weights_downweight_entries():
    _, e, g = _truth(7)
    b = g[:, None] * e[None, :]
    b[0, 0] *= 1.1
    w = np.ones_like(b)
    w[0, 0] = 1e-12
    sol = solve_focal_plane_normalization(b, weights=w)
    np.testing.assert_allclose(sol.detector_response, g, rtol=1e-8)


def test_build_level_matrix():
    levels = {(1, 100): 2.0, (0, 100): 1.0, (0, 101): 3.0}
    m, dets, exps = build_level_matrix(levels)
    assert dets == [0, 1] and exps == [100, 101]
    np.testing.assert_array_equal(m, [[1.0, 3.0], [2.0, np.nan]])
    m, dets, exps = build_level_matrix(levels, detectors=[1, 0, 2], exposures=[101, 100])
    np.testing.assert_array_equal(m, [[np.nan, 2.0], [3.0, 1.0], [np.nan, np.nan]])
