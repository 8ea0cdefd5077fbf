"""Read noise measured from the data (lsst.cpcombined.algorithms.read_noise):
pair differences with the overscan correction's row and column noise,
robust combination of per-frame values, and the disagreement checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lsst.cpcombined.algorithms.read_noise import (
    ReadNoiseEstimate,
    amp_pair_noise,
    combine_estimates,
    combine_frame_noise,
    compare_read_noise,
    pair_difference_noise,
)

NY, NX = 500, 127  # one amplifier of LATISS at a quarter of its size


def _frame(rng: np.random.Generator, sigma: float, structure: np.ndarray) -> np.ndarray:
    """A bias frame after overscan correction: fixed structure, white noise,
    and the noise the row and column statistics of the correction add (a
    constant per row and per column)."""
    rows = rng.normal(0.0, 0.2 * sigma, size=(NY, 1))
    cols = rng.normal(0.0, 0.2 * sigma, size=(1, NX))
    return structure + rng.normal(0.0, sigma, size=(NY, NX)) + rows + cols


def test_pair_difference_recovers_white_noise():
    """20 pairs: the mean estimate is within 0.3 % of the injected 7 e-,
    each pair within 4 of its quoted errors; without removing rows and
    columns the same data read 4 % high."""
    rng = np.random.default_rng(1)
    sigma = 7.0
    structure = 5.0 * np.sin(np.arange(NX) / 9.0)[np.newaxis, :] + np.linspace(0, 3, NY)[:, np.newaxis]
    estimates = []
    naive = []
    for _ in range(20):
        a, b = _frame(rng, sigma, structure), _frame(rng, sigma, structure)
        est = pair_difference_noise(a, b)
        assert est.n == NY * NX
        assert abs(est.value - sigma) < 4 * est.error, (est.value, est.error)
        estimates.append(est)
        naive.append(np.std(a - b) / math.sqrt(2))
    combined = combine_estimates(estimates)
    assert combined.value == pytest.approx(sigma, rel=0.003)
    # The statistical error of one pair: sigma / sqrt(2 n) = 0.28 %.
    assert estimates[0].error / sigma == pytest.approx(1 / math.sqrt(2 * NY * NX), rel=0.05)
    assert np.mean(naive) / sigma - 1 > 0.035


def test_pair_difference_ignores_cosmic_rays_and_masked_pixels():
    rng = np.random.default_rng(2)
    sigma = 9.0
    a = _frame(rng, sigma, np.zeros((NY, NX)))
    b = _frame(rng, sigma, np.zeros((NY, NX)))
    clean = pair_difference_noise(a, b)
    # A cosmic-ray track (thousands of e-) and a masked hot column.
    a[100, 10:40] += 3000.0
    a[:, 60] += 500.0
    bad = np.zeros((NY, NX), dtype=bool)
    bad[:, 60] = True
    hit = pair_difference_noise(a, b, bad)
    assert hit.value == pytest.approx(clean.value, rel=0.003)
    assert hit.n <= NY * (NX - 1)
    a[5:8, :] = np.nan  # rows without data
    assert pair_difference_noise(a, b, bad).value == pytest.approx(clean.value, rel=0.004)


def test_amp_pair_noise_per_region():
    rng = np.random.default_rng(3)
    image1 = np.zeros((2 * NY, 2 * NX))
    image2 = np.zeros((2 * NY, 2 * NX))
    truth = {"A": 5.0, "B": 8.0, "C": 11.0, "D": 14.0}
    regions = {
        "A": (slice(0, NY), slice(0, NX)),
        "B": (slice(0, NY), slice(NX, 2 * NX)),
        "C": (slice(NY, 2 * NY), slice(0, NX)),
        "D": (slice(NY, 2 * NY), slice(NX, 2 * NX)),
    }
    for amp, region in regions.items():
        image1[region] = _frame(rng, truth[amp], np.zeros((NY, NX)))
        image2[region] = _frame(rng, truth[amp], np.zeros((NY, NX)))
    result = amp_pair_noise(image1, image2, regions)
    for amp, sigma in truth.items():
        assert result[amp].value == pytest.approx(sigma, rel=0.01), amp


def test_combine_frame_noise_is_robust():
    rng = np.random.default_rng(4)
    values = list(8.4 + rng.normal(0, 0.02, 20))
    clean = combine_frame_noise(values)
    assert clean.n == 20
    assert clean.value == pytest.approx(np.mean(values), abs=1e-3)
    assert clean.error == pytest.approx(np.std(values, ddof=1) / math.sqrt(20), rel=0.25)
    # One frame with a burst of pickup noise does not move the result.
    spoiled = combine_frame_noise([*values[:-1], 12.0, math.nan])
    assert spoiled.value == pytest.approx(clean.value, abs=0.01)
    assert math.isnan(combine_frame_noise([8.0, 8.2]).error)  # too few frames for a scatter
    assert not combine_frame_noise([]).valid


def test_combine_estimates():
    est = combine_estimates([ReadNoiseEstimate(8.0, 0.1, 1000), ReadNoiseEstimate(8.2, 0.1, 1000)])
    assert est.value == pytest.approx(8.1) and est.n == 2
    assert est.error == pytest.approx(math.sqrt(0.02) / 2)
    assert not combine_estimates([ReadNoiseEstimate(math.nan, math.nan, 0)]).valid
    assert ReadNoiseEstimate(4.0, 0.1, 3).scaled(2.0) == ReadNoiseEstimate(8.0, 0.2, 3)


def test_compare_read_noise_flags_only_real_disagreements():
    systematic = {"overscan": 0.01, "image": 0.01}
    # An imaging area 14 % noisier than its overscan (extra noise of 5 e- on 9.1 e-).
    found = compare_read_noise(
        {"overscan": (9.09, 0.01), "image": (10.40, 0.03), "ptc": (9.5, 1.3), "nominal": (9.1, 0.91)},
        systematic=systematic,
    )
    assert [(d.first, d.second) for d in found] == [("overscan", "image")]
    assert found[0].n_sigma > 5
    assert "overscan 9.09" in found[0].describe("e-") and "image 10.40" in found[0].describe("e-")
    # Agreement within the systematic floor: nothing.
    assert not compare_read_noise({"overscan": (9.09, 0.01), "image": (9.15, 0.02)}, systematic=systematic)
    # A PTC fit far off with a small error, and a nominal value 25 % off.
    found = compare_read_noise(
        {"overscan": (10.0, 0.01), "ptc": (12.5, 0.3), "nominal": (8.0, 0.8)}, systematic=systematic
    )
    pairs = {(d.first, d.second) for d in found}
    assert ("overscan", "ptc") in pairs and ("ptc", "nominal") in pairs
    # NaN sources are skipped.
    assert not compare_read_noise({"overscan": (10.0, 0.01), "ptc": (math.nan, math.nan)})
