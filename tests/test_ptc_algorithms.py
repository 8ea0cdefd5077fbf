"""Tests of the Photon Transfer Curve algorithms (`lsst.cpcombined.algorithms.ptc`).

Synthetic flat pairs are built here with numpy: Poisson electrons on a
pixel-response pattern, a brighter-fatter-like charge-conserving smoothing
whose strength is chosen per flux level so that the pixel variance follows
Astier et al. (2019) eq. 16 exactly, Gaussian read noise, a full-well clip
and a per-amp gain.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from lsst.cpcombined.algorithms import masks, ptc
from lsst.cpcombined.algorithms.ptc import covariances
from lsst.cpcombined.algorithms.ptc.clipping import _QUARTILE_SAMPLE, _quartile_seed
from lsst.cpcombined.algorithms.ptc.model import _ptc_jacobian
from scipy.stats import norm

# ---------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------


def bf_alpha(n_e: float, a00: float) -> float:
    """Smoothing strength giving Var_e(N) = (exp(2 a00 N) - 1)/(2 a00).

    ``Q = (1-4α) P + α Σ(4 nearest neighbours of P)`` keeps the charge and
    multiplies the variance of Poisson ``P`` by ``1 - 8α + 20α²``; we solve
    ``1 - 8α + 20α² = f`` with ``f = expm1(2 a00 N) / (2 a00 N)``.
    """
    if a00 == 0.0 or n_e <= 0.0:
        return 0.0
    x = 2.0 * a00 * n_e
    f = math.expm1(x) / x
    return (8.0 - math.sqrt(64.0 - 80.0 * (1.0 - f))) / 40.0


def make_flat(rng, n_e, gain, read_noise_e, a00, full_well_e, response):
    """One flat (ADU): Poisson(n_e * response), BF smoothing, clip, noise, /gain."""
    p = rng.poisson(n_e * response).astype(np.float64)
    alpha = bf_alpha(n_e, a00)
    if alpha:
        neighbours = np.roll(p, 1, 0) + np.roll(p, -1, 0) + np.roll(p, 1, 1) + np.roll(p, -1, 1)
        p = (1.0 - 4.0 * alpha) * p + alpha * neighbours
    p = np.minimum(p, full_well_e)
    return (p + rng.normal(0.0, read_noise_e, p.shape)) / gain


def simulate_ramp(rng, levels_e, shape, gain, read_noise_e, a00, full_well_e, prnu=0.01, mismatch=0.003):
    """Measure one pair per flux level; the second flat is brighter by ``mismatch``."""
    response = 1.0 + prnu * rng.standard_normal(shape)
    out = []
    for k, n_e in enumerate(levels_e):
        im1 = make_flat(rng, n_e, gain, read_noise_e, a00, full_well_e, response)
        im2 = make_flat(rng, n_e * (1 + mismatch), gain, read_noise_e, a00, full_well_e, response)
        out.append(ptc.measure_pair(im1, im2, exp_time=n_e / 1000.0, ids=(2 * k, 2 * k + 1)))
    return out


# The main ramp: log-spaced low levels (they pin down the read noise), then
# linear steps of 5000 e- (below the 9000 e- gap cut) to 30 % past the full
# well.  400x400 amps leave 360x360 = 129600 pixels after the 20 px edges.
GAIN = 1.1
READ_NOISE = 8.0
A00 = -2.0e-6
FULL_WELL = 100_000.0
STEP_E = 5000.0
LEVELS = [50.0 * 2**k for k in range(7)] + [6000.0 + STEP_E * k for k in range(25)]
SHAPE = (400, 400)


@pytest.fixture(scope="module")
def ramp():
    rng = np.random.default_rng(20240611)
    return simulate_ramp(rng, LEVELS, SHAPE, GAIN, READ_NOISE, A00, FULL_WELL)


def fisher_errors(mu, npix, a00, gain, n00):
    """Expected statistical errors of (a00, gain, n00) for points at means ``mu``."""
    c = ptc.ptc_model(mu, a00, gain, n00)
    sig = c * np.sqrt(2.0 / npix)
    j = _ptc_jacobian(mu, a00, gain, n00) / sig[:, None]
    return np.sqrt(np.diag(np.linalg.inv(j.T @ j)))


def clipped_moments(m, s, fw):
    """Mean and variance of min(X, fw) for X ~ N(m, s²)."""
    z = (fw - m) / s
    cdf, pdf = norm.cdf(z), norm.pdf(z)
    e1 = m * cdf - s * pdf + fw * (1.0 - cdf)
    e2 = (m * m + s * s) * cdf - s * (fw + m) * pdf + fw * fw * (1.0 - cdf)
    return e1, e2 - e1 * e1


def analytic_points(rng, levels_e, gain, read_noise_e, a00, npix, full_well_e=np.inf, noise=True):
    """(mean ADU, C00 ADU²) of pairs, from the exact model plus statistical noise.

    The pixel distribution is taken Gaussian with the eq. 16 variance,
    clipped at the full well, plus read noise; each C00 gets the Gaussian
    sampling error ``sqrt(2/npix)``.
    """
    levels_e = np.asarray(levels_e, dtype=float)
    x = 2.0 * a00 * levels_e
    var_e = levels_e * np.where(x == 0, 1.0, np.expm1(x) / np.where(x == 0, 1.0, x))
    if np.isfinite(full_well_e):
        m_e, v_e = clipped_moments(levels_e, np.sqrt(var_e), full_well_e)
    else:
        m_e, v_e = levels_e, var_e
    mu = m_e / gain
    c00 = (v_e + read_noise_e**2) / gain**2
    if noise:
        c00 = c00 * (1.0 + math.sqrt(2.0 / npix) * rng.standard_normal(c00.size))
    return mu, c00


# ---------------------------------------------------------------------------
# 1. Pairing
# ---------------------------------------------------------------------------


def test_pairing_rules():
    flats = [
        (105, 2.0, "r"),
        (101, 1.0, "r"),
        (100, 1.0005, "r"),  # equal to 1.0 within the 1e-3 relative tolerance
        (103, 2.0, "r"),
        (104, 2.0, "r"),
        (106, 3.0, "r"),  # alone at 3 s
        (110, 1.02, "r"),  # 2 % longer than 1 s: a time of its own, alone
        (108, 5.0, "r"),
        (107, 5.0, "r"),
    ]
    res = ptc.pair_flats(flats)
    assert [p.ids for p in res.pairs] == [(100, 101), (103, 104), (107, 108)]
    assert [p.exp_time for p in res.pairs] == pytest.approx([1.00025, 2.0, 5.0])
    assert sorted(f.exposure_id for f in res.unused) == [105, 106, 110]
    text = " ".join(res.warnings)
    for ident in ("105", "106", "110"):
        assert ident in text
    assert len(res.warnings) == 3


def test_pairing_takes_first_two_in_id_order():
    flats = [ptc.FlatExposure(i, 4.0, "g") for i in (9, 3, 7, 5)]
    res = ptc.pair_flats(flats)
    assert [p.ids for p in res.pairs] == [(3, 5)]
    assert [f.exposure_id for f in res.unused] == [7, 9]


def test_pairing_filter_mismatch_raises():
    flats = [(1, 1.0, "r_03"), (2, 1.0, "g_01"), (3, 2.0, "r_03"), (4, 2.0, "r_03")]
    with pytest.raises(ValueError) as err:
        ptc.pair_flats(flats)
    msg = str(err.value)
    for word in ("1", "2", "r_03", "g_01"):
        assert word in msg


def test_pairing_duplicate_ids_raise():
    with pytest.raises(ValueError, match="Duplicate"):
        ptc.pair_flats([(1, 1.0, "r"), (1, 1.0, "r")])


# ---------------------------------------------------------------------------
# 2. Pair measurement
# ---------------------------------------------------------------------------


def direct_covariance(image, weight, dx, dy):
    """Covariance over all pairs (p, p + (dy, dx)) with both weights non-zero."""
    ny, nx = image.shape
    ys1 = slice(max(0, -dy), ny - max(0, dy))
    ys2 = slice(max(0, dy), ny - max(0, -dy))
    xs1 = slice(max(0, -dx), nx - max(0, dx))
    xs2 = slice(max(0, dx), nx - max(0, -dx))
    both = (weight[ys1, xs1] > 0) & (weight[ys2, xs2] > 0)
    a = image[ys1, xs1][both]
    b = image[ys2, xs2][both]
    return np.mean(a * b) - np.mean(a) * np.mean(b), both.sum()


@pytest.mark.parametrize("sparse", [False, True], ids=["fft-weights", "zero-weight-sums"])
@pytest.mark.parametrize(
    "shape, bad_fraction, dtype, max_lag",
    [
        ((47, 61), 0.15, float, 10),
        ((60, 30), 0.01, bool, 10),
        ((33, 40), 0.03, bool, 3),
        ((20, 25), 0.0, bool, 2),
    ],
)
def test_fft_covariance_matches_direct(monkeypatch, sparse, shape, bad_fraction, dtype, max_lag):
    # Both ways of getting the sums involving the weights (FFT of w, or the
    # border sums and the pixels of zero weight) are forced in turn.
    monkeypatch.setattr(covariances, "_SPARSE_WORK_PER_PIXEL", math.inf if sparse else -1.0)
    calls = []
    kernel = covariances._zero_weight_lag_sums
    monkeypatch.setattr(
        covariances, "_zero_weight_lag_sums", lambda *args: calls.append(1) or kernel(*args)
    )
    rng = np.random.default_rng(5)
    image = rng.normal(3.0, 2.0, shape)
    weight = (rng.random(image.shape) > bad_fraction).astype(dtype)
    image[weight == 0] = 1e6  # masked values must not matter
    cov, npairs = ptc.covariances_fft(image, weight, max_lag=max_lag)
    assert len(calls) == (1 if sparse else 0)  # the path forced is the path taken
    for i in range(max_lag + 1):
        for j in range(max_lag + 1):
            c1, n1 = direct_covariance(image, weight, i, j)
            if i and j:
                c2, n2 = direct_covariance(image, weight, i, -j)
                c1, n1 = 0.5 * (c1 + c2), n1 + n2
            assert cov[i, j] == pytest.approx(c1, abs=1e-10), (i, j)
            assert npairs[i, j] == n1


def reference_clipped_stats(values, n_sigma=5.5, n_iter=3):
    """The plain clipping: quartiles of all the values, boolean selections."""
    x = np.asarray(values, dtype=np.float64)
    keep = np.ones(x.shape, dtype=bool)
    q25, center, q75 = np.percentile(x, [25.0, 50.0, 75.0])
    sigma = 0.7413 * (q75 - q25)
    for _ in range(n_iter):
        new_keep = np.abs(x - center) <= n_sigma * sigma
        changed = not np.array_equal(new_keep, keep)
        keep = new_keep
        center, sigma = float(np.mean(x[keep])), float(np.std(x[keep]))
        if not changed:
            break
    return float(np.mean(x[keep])), float(np.var(x[keep])), keep


def test_clipped_stats_subsampled_quartiles():
    # 400k values: the quartiles seeding the clipping come from a regular
    # subsample of 100k.  Those agree with the full ones to ~0.01 sigma, and
    # after the clipping passes the kept set is the one the full quartiles
    # give (mean and variance to rounding).
    rng = np.random.default_rng(8)
    x = rng.normal(1000.0, 30.0, 400_000)
    hits = rng.integers(0, x.size, 2000)
    x[hits] += rng.uniform(100.0, 3000.0, hits.size)
    sample = _quartile_seed(x, None)
    assert sample.size <= _QUARTILE_SAMPLE
    np.testing.assert_allclose(
        np.percentile(sample, [25, 50, 75]), np.percentile(x, [25, 50, 75]), atol=0.01 * 30.0
    )
    image = x.reshape(500, 800)
    good = rng.random(image.shape) > 0.1
    sample = _quartile_seed(image, good)
    assert 0.5 * _QUARTILE_SAMPLE <= sample.size <= 1.1 * _QUARTILE_SAMPLE
    np.testing.assert_allclose(
        np.percentile(sample, [25, 50, 75]), np.percentile(image[good], [25, 50, 75]), atol=0.01 * 30.0
    )
    mean, var, keep = ptc.clipped_stats(x)
    ref_mean, ref_var, ref_keep = reference_clipped_stats(x)
    assert np.array_equal(keep, ref_keep)
    assert mean == pytest.approx(ref_mean, rel=1e-12)
    assert var == pytest.approx(ref_var, rel=1e-10)
    # Small inputs use all the values: same result as the reference.
    small = x[:5000]
    mean, var, keep = ptc.clipped_stats(small, n_iter=1)
    ref_mean, ref_var, ref_keep = reference_clipped_stats(small, n_iter=1)
    assert np.array_equal(keep, ref_keep) and not keep.all()
    assert (mean, var) == (pytest.approx(ref_mean, rel=1e-12), pytest.approx(ref_var, rel=1e-10))


def test_measure_pair_clipping_matches_clipped_stats():
    # measure_pair clips the 2-d images in place (masked moments, float32
    # not copied); it must agree with clipped_stats on the selected values.
    rng = np.random.default_rng(17)
    shape = (300, 260)
    response = 1.0 + 0.02 * rng.standard_normal(shape)
    im1 = make_flat(rng, 20000.0, 1.2, 6.0, 0.0, np.inf, response)
    im2 = make_flat(rng, 20300.0, 1.2, 6.0, 0.0, np.inf, response)
    im1[rng.integers(0, 300, 40), rng.integers(0, 260, 40)] += 3000.0  # cosmic-ray-like outliers
    mask = np.zeros(shape, np.uint8)
    mask[100:110, 50:150] = masks.BIT["BAD"]
    im2[100:110, 50:150] = np.nan
    m = ptc.measure_pair(im1, im2, mask, mask)
    sl = (slice(20, -20), slice(20, -20))
    good = (mask[sl] == 0) & np.isfinite(im2[sl])
    mu1, _, _ = ptc.clipped_stats(im1[sl][good])
    mu2, _, _ = ptc.clipped_stats(im2[sl][good])
    assert (m.mean1, m.mean2) == (pytest.approx(mu1, rel=1e-13), pytest.approx(mu2, rel=1e-13))
    diff = (mu2 * im1[sl] - mu1 * im2[sl]) / (0.5 * (mu1 + mu2))
    _, var_d, keep = ptc.clipped_stats(diff[good])
    assert m.npix == keep.sum() < good.sum()
    assert m.variance == pytest.approx(0.5 * var_d, rel=1e-12)
    assert m.cov[0, 0] == pytest.approx(m.variance, rel=1e-9)
    # float32 images (what the ISR gives) are measured as their float64 copies.
    m32 = ptc.measure_pair(im1.astype(np.float32), im2.astype(np.float32), mask, mask)
    m64 = ptc.measure_pair(
        im1.astype(np.float32).astype(np.float64), im2.astype(np.float32).astype(np.float64), mask, mask
    )
    assert (m32.mean1, m32.mean2, m32.variance, m32.npix) == (m64.mean1, m64.mean2, m64.variance, m64.npix)
    np.testing.assert_array_equal(m32.cov, m64.cov)


def test_measure_pair_statistics_and_masks():
    rng = np.random.default_rng(11)
    shape = (200, 200)
    gain, rn, n_e = 1.3, 6.0, 20000.0
    # 5 % pixel response pattern and a 2 % flux difference inside the pair:
    # the pattern variance (1000 e-)^2 is 50x the shot noise, and
    # D = (mu2*I1 - mu1*I2)/mu cancels it exactly.
    response = 1.0 + 0.05 * rng.standard_normal(shape)
    im1 = make_flat(rng, n_e, gain, rn, 0.0, np.inf, response)
    im2 = make_flat(rng, n_e * 1.02, gain, rn, 0.0, np.inf, response)
    mask1 = np.zeros(shape, np.uint8)
    mask2 = np.zeros(shape, np.uint8)
    im1[50:60, 50:60] = 1e7  # a hot blob, masked BAD
    mask1[50:60, 50:60] = masks.BIT["BAD"]
    mask2[100, 30:130] = masks.BIT["SAT"]  # 100 SAT pixels
    im2[100, 30:130] = 0.0
    m = ptc.measure_pair(im1, im2, mask1, mask2)
    assert m.valid
    assert m.npix == pytest.approx(160 * 160 - 100 - 100, abs=5)  # clipping removes ~nothing
    assert m.sat_fraction == pytest.approx(100 / 160**2)
    mu1_true = n_e / gain
    assert m.mean1 == pytest.approx(mu1_true, rel=3e-3)  # 5 % response, 25600 px: 0.03 %
    assert m.mean2 / m.mean1 == pytest.approx(1.02, rel=1e-3)
    # Expected C00 of one image at the pair mean: mu/g + rn_adu^2; the 2 %
    # flux mismatch changes it by 1e-4 only (2 mu1 mu2 / mu vs 2 mu).
    expected = m.mean / gain + (rn / gain) ** 2
    stat = math.sqrt(2.0 / m.npix)  # 0.9 %
    assert m.variance == pytest.approx(expected, rel=4 * stat)
    assert m.cov[0, 0] == pytest.approx(m.variance, rel=1e-9)
    # No correlations were simulated: C_ij for lags > 0 are pure noise of
    # sigma ~ C00/sqrt(npairs) (< 0.7 % of C00).
    off = m.cov.copy()
    off[0, 0] = 0.0
    assert np.max(np.abs(off)) < 5 * m.variance / math.sqrt(m.npix / 2)


def test_measure_pair_fully_masked_is_invalid():
    rng = np.random.default_rng(3)
    im = rng.normal(1000.0, 30.0, (100, 100))
    sat = np.full(im.shape, masks.BIT["SAT"], np.uint8)
    m = ptc.measure_pair(im, im.copy(), sat, sat)
    assert not m.valid and "usable pixels" in m.reason
    assert m.sat_fraction == 1.0 and math.isnan(m.variance)


# ---------------------------------------------------------------------------
# 3. The fit
# ---------------------------------------------------------------------------


def test_fit_recovers_truth_on_saturating_ramp(ramp):
    res = ptc.fit_ptc_measurements(ramp, amp_name="C10", nominal_gain=1.05)
    assert not res.bad, res.reason
    assert res.flags == []
    assert res.fit_status > 0

    # Expected statistical errors (Fisher matrix at the truth, the kept means
    # and pixel counts): gain ~0.15 %, noise ~0.4 %, a00 ~1.6 %.  The
    # tolerances of the task (0.5 %, 2 %, 10 %) are all >= 3 sigma of these,
    # so the test is statistically sound with any seed.
    mu = res.means[res.kept]
    sa00, sg, sn00 = fisher_errors(mu, res.npix[res.kept], A00, GAIN, READ_NOISE**2)
    snoise = sn00 / (2 * READ_NOISE)
    assert 3 * sg / GAIN < 0.005
    assert 3 * snoise / READ_NOISE < 0.02
    assert 3 * sa00 / abs(A00) < 0.10
    # The fit's own errors agree with the expected ones (chi2/dof ~ 1).
    assert res.gain_err == pytest.approx(sg, rel=0.3)
    assert res.a00_err == pytest.approx(sa00, rel=0.3)
    assert res.noise_err == pytest.approx(snoise, rel=0.3)
    assert 0.3 < res.chi2 / res.dof < 2.0

    assert res.gain == pytest.approx(GAIN, rel=0.005)
    assert res.noise == pytest.approx(READ_NOISE, rel=0.02)
    assert res.a00 == pytest.approx(A00, rel=0.10)

    # Turnoff: largest kept mean, within one sampling step below the full well.
    fw_adu, step_adu = FULL_WELL / GAIN, STEP_E / GAIN
    assert res.turnoff <= fw_adu
    assert fw_adu - res.turnoff < step_adu
    # The points past saturation (means pile up at the full well) are out.
    assert res.saturated.sum() == sum(level > FULL_WELL - 3 * math.sqrt(FULL_WELL) for level in LEVELS)
    assert not res.outlier.any() and not res.invalid.any() and not res.above_gap.any()
    # The point arrays for plots are all there, in input order.
    assert np.allclose(res.exp_times, [lv / 1000 for lv in LEVELS])
    assert res.model(res.means[res.kept]).shape == (res.kept.sum(),)


def test_reported_errors_are_calibrated():
    """Pulls (fit - truth)/error over 150 noisy realisations have unit width."""
    rng = np.random.default_rng(7)
    levels = np.array(LEVELS[:-6])  # unsaturated part of the ramp
    npix = 25600.0
    pulls = []
    for _ in range(150):
        mu, c00 = analytic_points(rng, levels, GAIN, READ_NOISE, A00, npix)
        res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix), nominal_gain=GAIN, outlier_iter=0)
        assert not res.bad, res.reason
        pulls.append(
            [
                (res.gain - GAIN) / res.gain_err,
                (res.a00 - A00) / res.a00_err,
                (res.noise - READ_NOISE) / res.noise_err,
            ]
        )
    pulls = np.array(pulls)
    # With 150 samples the standard deviation is known to ~6 %.
    assert np.all(np.abs(pulls.mean(axis=0)) < 0.3)
    assert np.all((pulls.std(axis=0) > 0.8) & (pulls.std(axis=0) < 1.2))


@pytest.mark.parametrize("fw_offset_e", [-4900.0, -3000.0, -1500.0, -500.0, 0.0, 300.0, 1000.0, 2500.0])
def test_turnoff_tracks_full_well(fw_offset_e):
    """Sweep the full well across a sampling step of the ramp.

    ``FULL_WELL + offset`` lands anywhere relative to the 5000 e- grid.  The
    turnoff never exceeds the full well; it is within one step of it except
    when a ramp point falls within ~3 pixel-sigma below the full well, whose
    clipped (lower) variance then correctly ends the PTC one point earlier.
    """
    rng = np.random.default_rng(int(10000 + fw_offset_e))
    fw = FULL_WELL + fw_offset_e
    npix = 129600.0
    mu, c00 = analytic_points(rng, LEVELS, GAIN, READ_NOISE, A00, npix, full_well_e=fw)
    res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix), nominal_gain=GAIN)
    assert not res.bad, res.reason
    sigma_pix = math.sqrt(fw)  # pixel sigma near the full well (upper bound, e-)
    below = [lv for lv in LEVELS if lv <= fw]
    fw_adu, step_adu = fw / GAIN, STEP_E / GAIN
    assert res.turnoff <= fw_adu
    assert fw_adu - res.turnoff < step_adu + 3 * sigma_pix / GAIN
    if fw - max(below) > 3 * sigma_pix:
        assert fw_adu - res.turnoff < step_adu
    # And the fit is not biased by the partially saturated points.
    assert res.gain == pytest.approx(GAIN, rel=0.005)
    assert res.a00 == pytest.approx(A00, rel=0.10)


def test_outlier_is_rejected():
    rng = np.random.default_rng(17)
    npix = 129600.0
    levels = LEVELS[:-6]
    mu, c00 = analytic_points(rng, levels, GAIN, READ_NOISE, A00, npix)
    c00[15] *= 1.15  # a 15 % (~40 sigma) excursion, e.g. a light leak in one flat
    res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix), nominal_gain=GAIN)
    assert not res.bad, res.reason
    assert np.flatnonzero(res.outlier).tolist() == [15]
    assert res.gain == pytest.approx(GAIN, rel=0.005)
    # A single low point (not saturation: the curve goes on rising) is also
    # an outlier, not the turnoff.
    mu, c00 = analytic_points(rng, levels, GAIN, READ_NOISE, A00, npix)
    c00[20] *= 0.85
    res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix), nominal_gain=GAIN)
    assert np.flatnonzero(res.outlier).tolist() == [20]
    assert not res.saturated.any()
    assert res.turnoff == pytest.approx(mu.max())


def test_gap_cut():
    rng = np.random.default_rng(19)
    npix = 129600.0
    levels = [1000.0, 4000.0, 8000.0, 12000.0, 16000.0, 30000.0, 34000.0, 38000.0]
    mu, c00 = analytic_points(rng, levels, GAIN, READ_NOISE, A00, npix)
    res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix), nominal_gain=GAIN)
    # 16000 -> 30000 e- is a 14000 e- gap: everything above it is dropped.
    assert res.above_gap.tolist() == [False] * 5 + [True] * 3
    assert res.turnoff == pytest.approx(mu[4])
    assert not res.bad, res.reason
    # Without a nominal gain the means are converted with the starting gain
    # (1.5): 14000 e- at g=1.1 -> 19100 e- assumed, still a gap.
    res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix))
    assert res.above_gap.sum() == 3
    # Disabled cut.
    res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix), max_gap_e=None)
    assert not res.above_gap.any()


def test_too_few_points_is_flagged():
    rng = np.random.default_rng(23)
    mu, c00 = analytic_points(rng, [5000.0, 12000.0], GAIN, READ_NOISE, A00, 1e5)
    res = ptc.fit_ptc(mu, c00, [1e5, 1e5], nominal_gain=GAIN)
    assert res.bad and "TOO_FEW_POINTS" in res.flags
    assert "2 usable points < 3" in res.reason
    assert math.isnan(res.gain)
    # Points removed by the gap cut count as missing too.
    mu, c00 = analytic_points(rng, [1000.0, 3000.0, 40000.0, 45000.0], GAIN, READ_NOISE, A00, 1e5)
    res = ptc.fit_ptc(mu, c00, np.full(4, 1e5), nominal_gain=GAIN)
    assert res.bad and "TOO_FEW_POINTS" in res.flags
    # Invalid measurements too.
    res = ptc.fit_ptc([np.nan, 100.0], [np.nan, 150.0], [0, 1e4])
    assert res.bad and "TOO_FEW_POINTS" in res.flags and res.invalid.tolist() == [True, False]
    res = ptc.fit_ptc([np.nan], [np.nan], [0])
    assert res.bad and res.flags == ["NO_VALID_POINTS"]


def test_amp_saturated_everywhere_is_flagged():
    rng = np.random.default_rng(29)
    shape = (120, 120)
    response = np.ones(shape)
    # Every flat is past the full well: the means pile up at the full well
    # and the variance is the read noise only.
    meas = []
    for n_e in np.linspace(150_000.0, 300_000.0, 8):
        im1 = make_flat(rng, n_e, GAIN, READ_NOISE, A00, FULL_WELL, response)
        im2 = make_flat(rng, n_e, GAIN, READ_NOISE, A00, FULL_WELL, response)
        meas.append(ptc.measure_pair(im1, im2))
    res = ptc.fit_ptc_measurements(meas, nominal_gain=GAIN)
    assert res.bad and "NOT_RISING" in res.flags, res.flags
    assert "saturated" in res.reason
    # The same with the ISR's SAT mask set everywhere: no usable pixel.
    sat = np.full(shape, masks.BIT["SAT"], np.uint8)
    meas = [ptc.measure_pair(im1, im2, sat, sat) for _ in range(8)]
    res = ptc.fit_ptc_measurements(meas, nominal_gain=GAIN)
    assert res.bad and res.flags == ["ALL_SATURATED"]
    assert res.saturated.all() and math.isnan(res.turnoff)


def test_parameters_at_bounds_are_flagged():
    rng = np.random.default_rng(31)
    npix = 1e5
    levels = np.geomspace(100.0, 80000.0, 20)  # log-spaced: disable the gap cut below
    # A gain of 12 e-/ADU is outside [0.1, 10].
    mu, c00 = analytic_points(rng, levels, 12.0, 10.0, A00, npix)
    res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix), nominal_gain=12.0, max_gap_e=None)
    assert res.bad and "GAIN_AT_BOUND" in res.flags
    # No brighter-fatter effect: a00 goes to its upper bound 0.  That is a
    # warning (the linear PTC is a fine description), gain and noise stay good.
    mu, c00 = analytic_points(rng, levels, GAIN, READ_NOISE, 0.0, npix)
    res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix), nominal_gain=GAIN, max_gap_e=None)
    assert res.a00 == pytest.approx(0.0, abs=3 * res.a00_err)
    if res.a00 > -1e-7:  # within bound_rtol (1e-3) of the 1e-4 bound range
        assert "A00_AT_ZERO" in res.flags
    assert not res.bad, res.reason
    assert res.gain == pytest.approx(GAIN, rel=0.005)
    # A noiseless amplifier (n00 = 0) on a ramp starting far above the
    # read-noise floor: n00 goes to its lower bound 0.  A warning, the gain is
    # still right; an n00 at its upper bound (2000 e-^2) makes the amp bad.
    mu, c00 = analytic_points(rng, levels[5:], GAIN, 0.0, A00, npix, noise=False)
    res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix), nominal_gain=GAIN, max_gap_e=None)
    assert "NOISE_AT_ZERO" in res.flags and not res.bad, res.reason
    assert res.gain == pytest.approx(GAIN, rel=1e-3)
    mu, c00 = analytic_points(rng, levels, GAIN, 60.0, A00, npix)
    res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix), nominal_gain=GAIN, max_gap_e=None)
    assert res.bad and "NOISE_AT_BOUND" in res.flags, res.flags


def test_exactly_three_points_fit_exactly_with_a_warning():
    """Three points for three parameters: the noiseless eq. 16 is recovered
    to rounding, chi2 = 0, no degree of freedom (a warning, not bad)."""
    rng = np.random.default_rng(41)
    mu, c00 = analytic_points(rng, [1000.0, 30000.0, 60000.0], GAIN, READ_NOISE, A00, 1e5, noise=False)
    res = ptc.fit_ptc(mu, c00, np.full(3, 1e5), max_gap_e=None)
    assert res.flags == ["NO_DOF"] and not res.bad
    assert res.reason.startswith("3 points for 3 parameters")
    assert (res.dof, res.error_scale) == (0, 1.0)
    assert res.chi2 < 1e-12
    assert res.gain == pytest.approx(GAIN, rel=1e-9)
    assert res.noise == pytest.approx(READ_NOISE, rel=1e-9)
    assert res.a00 == pytest.approx(A00, rel=1e-6)


def test_noisy_ramp_has_scaled_errors_and_a_warning():
    """C00 scattered 10 times more than Gaussian statistics: chi2/dof ~ 100
    gives HIGH_CHI2 (a warning), the errors are scaled by sqrt(chi2/dof) so
    they cover the scatter, and the MAD-scaled rejection keeps every point."""
    rng = np.random.default_rng(43)
    npix = 129600.0
    levels = np.array(LEVELS[:-6])
    mu, c00 = analytic_points(rng, levels, GAIN, READ_NOISE, A00, npix, noise=False)
    c00 = c00 * (1.0 + 10.0 * math.sqrt(2.0 / npix) * rng.standard_normal(c00.size))
    res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix), nominal_gain=GAIN)
    assert res.flags == ["HIGH_CHI2"] and not res.bad, res.reason
    assert res.kept.all() and res.dof == levels.size - 3
    # 23 degrees of freedom: chi2/dof = 100 within a factor ~2 (> 3 sigma).
    assert 40.0 < res.chi2 / res.dof < 250.0
    assert res.error_scale == pytest.approx(math.sqrt(res.chi2 / res.dof), rel=1e-12)
    _, sg, _ = fisher_errors(mu, np.full(mu.size, npix), A00, GAIN, READ_NOISE**2)
    assert res.gain_err == pytest.approx(res.error_scale * sg, rel=0.3)
    assert abs(res.gain - GAIN) < 4.0 * res.gain_err


def test_a00_at_lower_bound_is_bad():
    rng = np.random.default_rng(47)
    npix = 129600.0
    mu, c00 = analytic_points(rng, LEVELS[:-6], GAIN, READ_NOISE, -4e-6, npix)
    bounds = ((-1e-6, 0.1, 0.0), (0.0, 10.0, 2000.0))
    res = ptc.fit_ptc(mu, c00, np.full(mu.size, npix), nominal_gain=GAIN, bounds=bounds)
    assert res.bad and res.flags[0] == "A00_AT_LOWER_BOUND", res.flags
    assert res.a00 == pytest.approx(-1e-6, abs=1e-3 * 1e-6)
    assert "a00 -1e-06 at its lower bound -1e-06" in res.reason


def test_point_reasons_are_exclusive_and_complete():
    """On ramps mixing every kind of cut point (invalid, above a gap, SAT-masked,
    past the turnover, outlier), each point has at most one reason, the kept
    points are exactly those without one, the turnoff is the largest mean not
    cut by steps 1-3, and there is one reason text per flag."""
    npix = 1e5
    totals = np.zeros(4, dtype=int)
    for seed in range(8):
        rng = np.random.default_rng(300 + seed)
        levels = np.arange(500.0, 130000.0, 4000.0) + rng.uniform(0.0, 1000.0)  # 33 points
        if seed % 2:
            levels[20:] += 12000.0  # a 16000 e- gap
        mu, c00 = analytic_points(rng, levels, GAIN, READ_NOISE, A00, npix, full_well_e=FULL_WELL)
        c00[rng.integers(8, 15)] *= 0.8  # ~45 sigma low, an isolated dip
        valid = np.ones(mu.size, dtype=bool)
        valid[rng.choice([2, 5, 17], 2, replace=False)] = False
        mu[5] = np.nan if not valid[5] else mu[5]
        sat_fraction = np.zeros(mu.size)
        sat_fraction[[17, 30]] = 0.2  # 17: below the turnover
        res = ptc.fit_ptc(
            mu, c00, np.full(mu.size, npix), valid=valid, sat_fraction=sat_fraction, nominal_gain=GAIN
        )
        assert not res.bad, res.reason
        reasons = np.array([res.invalid, res.above_gap, res.saturated, res.outlier])
        totals += reasons.sum(axis=1)
        assert np.all(reasons.sum(axis=0) <= 1), seed
        np.testing.assert_array_equal(res.kept, ~reasons.any(axis=0))
        np.testing.assert_array_equal(res.invalid, ~valid & (sat_fraction <= 0.01))
        # Saturation grows with signal: everything from point 17 up is cut.
        assert np.all((res.saturated | res.above_gap)[17:]) and not res.saturated[:17].any()
        assert res.above_gap.any() == bool(seed % 2)
        assert res.outlier.sum() == 1
        cut = res.invalid | res.above_gap | res.saturated
        assert res.turnoff == np.max(res.means[~cut])
        assert len(res.reason.split("; ")) == len(res.flags) if res.flags else res.reason == ""
    assert np.all(totals > 0), totals


# ---------------------------------------------------------------------------
# 4. Quick gain from flat pairs
# ---------------------------------------------------------------------------


def test_gain_from_pairs_without_brighter_fatter():
    rng = np.random.default_rng(37)
    levels = np.linspace(5000.0, 130000.0, 20)
    meas = simulate_ramp(rng, levels, (200, 200), GAIN, READ_NOISE, 0.0, FULL_WELL)
    est = ptc.gain_from_flat_pairs(meas, READ_NOISE / GAIN)
    # The saturated pairs (above 100 ke-) are excluded.
    assert est.used.tolist() == [lv < FULL_WELL - 3 * math.sqrt(FULL_WELL) for lv in levels]
    # Each pair: 0.9 % C00 error -> 4 sigma bound; the median of 16: ~0.3 %.
    g = est.gains[est.used]
    assert np.all(np.abs(g - GAIN) < 4 * est.gain_errs[est.used])
    assert est.gain == pytest.approx(GAIN, rel=0.01)
    assert est.gain_err < 0.005 * GAIN


def test_gain_from_pairs_with_brighter_fatter(ramp):
    plain = ptc.gain_from_flat_pairs(ramp, READ_NOISE / GAIN)
    # The brighter-fatter effect lowers C00 by (1 + a00 N) at first order,
    # so the plain estimate is high (~7 % as a median over this ramp) ...
    assert plain.gain > 1.03 * GAIN
    # ... and summing the covariances out to lag 1 (where this simulation
    # puts all but 0.2 % of the moved variance) restores it: the per-pair
    # error is ~1.4 % and the median of 26 pairs ~0.35 %.
    corr = ptc.gain_from_flat_pairs(ramp, READ_NOISE / GAIN, cov_max_lag=1)
    assert corr.used.sum() == 26
    assert corr.gain == pytest.approx(GAIN, rel=0.01)
    assert np.all(np.abs(corr.gains[corr.used] - GAIN) < 4 * corr.gain_errs[corr.used] + 0.003 * GAIN)


def test_gain_from_single_pair_formula():
    assert ptc.gain_from_flat_pair(1000.0, 1000.0 / 1.25 + 4.0, 2.0) == pytest.approx(1.25)
    assert math.isnan(ptc.gain_from_flat_pair(10.0, 3.0, 2.0))


# ---------------------------------------------------------------------------
# 5. Full covariance model (stretch)
# ---------------------------------------------------------------------------


def test_full_covariance_fit(ramp):
    res = ptc.fit_ptc_measurements(ramp, nominal_gain=GAIN)
    assert all(m.valid for m in ramp)
    mu = np.array([m.mean for m in ramp])
    covs = np.array([m.cov for m in ramp])
    npairs = np.array([m.cov_npairs for m in ramp])
    full = ptc.fit_full_covariance(
        mu, covs, npairs, kept=res.kept, r=3, gain0=res.gain, a00_0=res.a00, n00_0=res.n00
    )
    assert not full.bad, full.flags
    assert 0.5 < full.chi2 / full.dof < 2.0
    assert full.gain == pytest.approx(GAIN, rel=0.005)
    assert full.a[0, 0] == pytest.approx(A00, abs=3 * full.a_err[0, 0])
    # The simulated smoothing moves charge to the 4 nearest neighbours:
    # a10 = a01 = -a00/4 at first order, the further lags ~0, and the
    # a_ij sum to zero over the plane (charge conservation).
    for ij in ((1, 0), (0, 1)):
        assert full.a[ij] == pytest.approx(-A00 / 4, abs=3 * full.a_err[ij] + 0.1 * abs(A00) / 4)
    for ij in ((1, 1), (2, 0), (0, 2), (2, 2)):
        assert abs(full.a[ij]) < 4 * full.a_err[ij]
    mult = np.array([[1, 2, 2], [2, 4, 4], [2, 4, 4]])
    assert abs(np.sum(mult * full.a)) < 0.4 * abs(A00)
    assert math.sqrt(full.noise[0, 0]) == pytest.approx(READ_NOISE, rel=0.02)
    # The model reproduces the measured covariances.
    model = ptc.covariance_model(mu[res.kept], full.a, full.c, full.noise, full.gain)
    assert np.allclose(model[:, 0, 0], covs[res.kept, 0, 0], rtol=0.02)


def test_fixed_pattern_outliers_flag_a_dead_column_only():
    """A column at 60 % response is flagged in both flats' mean image; the
    Poisson pixels around it and a masked pixel are not."""
    rng = np.random.default_rng(7)
    shape = (300, 200)
    response = np.ones(shape)
    response[:, 57] = 0.6
    im1 = rng.poisson(20000.0 * response).astype(np.float32)
    im2 = rng.poisson(20500.0 * response).astype(np.float32)
    mask1 = np.zeros(shape, dtype=np.uint8)
    mask2 = np.zeros(shape, dtype=np.uint8)
    mask2[10, 57] = 4  # a bad bit: that pixel is not used, so not flagged
    im1[200, 30] = np.nan  # non-finite: not used
    out = ptc.fixed_pattern_outliers(im1, im2, mask1, mask2, bad_bits=4, n_sigma=5.0, n_iter=3)
    expected = np.zeros(shape, dtype=bool)
    expected[:, 57] = True
    expected[10, 57] = False
    assert out.dtype == bool and out.shape == shape
    np.testing.assert_array_equal(out, expected)
    # Too few good pixels, or a non-positive level: nothing flagged.
    c = (slice(0, 5), slice(0, 5))
    assert not ptc.fixed_pattern_outliers(im1[c], im2[c], mask1[c], mask2[c], 4, 5.0, 3).any()
    assert not ptc.fixed_pattern_outliers(-im1, im2, mask1, mask2, 4, 5.0, 3).any()


# ---------------------------------------------------------------------------
# The package layout
# ---------------------------------------------------------------------------


def test_package_reexports_one_concept_per_module():
    """`lsst.cpcombined.algorithms.ptc` re-exports exactly the public names
    of its modules, each defined in the module that lists it."""
    import importlib

    modules = ["pairing", "clipping", "covariances", "measurement", "model", "selection", "fits", "gains",
               "full_covariance"]
    names = []
    for name in modules:
        mod = importlib.import_module(f"lsst.cpcombined.algorithms.ptc.{name}")
        for public in mod.__all__:
            obj = getattr(mod, public)
            assert getattr(ptc, public) is obj
            assert getattr(obj, "__module__", mod.__name__) == mod.__name__, public
        names += mod.__all__
    assert sorted(names) == sorted(ptc.__all__) and len(set(names)) == len(names)
    assert set(ptc.__all__) == {
        "DEFAULT_BAD_BITS", "FlatExposure", "FlatPair", "FullCovarianceResult", "PairMeasurement",
        "PairGainResult", "PairingResult", "PtcAmpResult", "clipped_stats", "covariances_fft",
        "covariance_model", "fit_full_covariance", "fit_ptc", "fit_ptc_measurements",
        "fixed_pattern_outliers", "gain_from_flat_pair", "gain_from_flat_pairs", "measure_pair",
        "pair_flats", "ptc_model", "turnover_mask",
    }
