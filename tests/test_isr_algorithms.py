"""Tests of the calibration ISR algorithms (overscan, assembly, masks,
gains, variance, calibration application)."""

import math
import time

import numpy as np
import pytest
from lsst.cpcombined.algorithms import masks
from lsst.cpcombined.algorithms.isr import (
    CalibFrame,
    amp_regions,
    apply_calibrations,
    clipped_std,
    make_variance,
    median_variance_normal,
    overscan_correct_amp,
    row_subtraction_variance_factor,
    run_calib_isr,
)
from lsst.cpcombined.obs.camera import AMP_NAMES, AmpLayout
from lsst.cpcombined.obs.raw import RawImage
from lsst.images import Image

LAYOUT = AmpLayout.scaled(0.125)  # 64 x 250 data, 64 serial / 48 parallel overscan
N_SERIAL = LAYOUT.serial_overscan - 6  # columns used by the default row median
N_PARALLEL = LAYOUT.parallel_overscan - 6
NO_DATA_BAD = masks.bits("NO_DATA", "BAD")


def empty_raw(layout: AmpLayout = LAYOUT) -> RawImage:
    shape = (layout.n_y * layout.raw_height, layout.n_x * layout.raw_width)
    return RawImage(Image(np.zeros(shape, dtype=np.float32), unit=None), layout, {"OBSID": "test"})


def raw_view(array: np.ndarray, amp: str, layout: AmpLayout = LAYOUT) -> np.ndarray:
    """View of an assembled-detector array's amp region in raw readout
    orientation (data section coordinates)."""
    geom = layout.geometry(amp)
    return geom.from_detector_orientation(array[geom.assembled_slices])


def structure(layout: AmpLayout = LAYOUT) -> np.ndarray:
    """A smooth 2-d pattern in detector coordinates (ADU)."""
    y, x = np.mgrid[0 : layout.detector_height, 0 : layout.detector_width].astype(np.float64)
    return 40.0 * np.sin(2 * np.pi * x / 97.0) + 0.05 * y + 25.0 * np.exp(
        -((x - 300.0) ** 2 + (y - 120.0) ** 2) / (2 * 60.0**2)
    )


BIAS_LEVEL = {a: 15000.0 + 37.0 * i for i, a in enumerate(AMP_NAMES)}
READ_NOISE_ADU = {a: 4.0 + 5.0 * i / 15 for i, a in enumerate(AMP_NAMES)}  # 4 .. 9 ADU


def synthetic_raw(
    seed: int,
    *,
    signal: np.ndarray | None = None,
    row_jitter: float = 5.0,
    col_offsets: float = 0.0,
    noise: dict[str, float] | None = READ_NOISE_ADU,
) -> tuple[RawImage, dict[str, np.ndarray]]:
    """Raw frame: per-amp bias level + per-row jitter (data *and* overscan,
    all raw rows) + optional per-column offsets (data and parallel overscan
    only) + Gaussian read noise + ``signal`` (detector coordinates) in the
    data only.  Returns the raw and the per-amp column offsets."""
    rng = np.random.default_rng(seed)
    raw = empty_raw()
    cols = {}
    for amp in AMP_NAMES:
        geom = LAYOUT.geometry(amp)
        a = raw.amp_array(amp)
        arr = np.full(a.shape, BIAS_LEVEL[amp])
        arr += row_jitter * rng.standard_normal((LAYOUT.raw_height, 1))
        c = col_offsets * rng.standard_normal(LAYOUT.data_width)
        cols[amp] = c
        arr[:, geom.raw_data[1]] += c[None, :]  # data rows and parallel overscan rows
        if noise is not None:
            arr += noise[amp] * rng.standard_normal(arr.shape)
        if signal is not None:
            arr[geom.raw_data] += geom.from_detector_orientation(signal[geom.assembled_slices])
        a[...] = arr
    return raw, cols


# ---------------------------------------------------------------------------
# statistics helpers
# ---------------------------------------------------------------------------


def test_median_variance_normal_matches_monte_carlo():
    rng = np.random.default_rng(0)
    for n in (7, 8, 58):
        x = rng.standard_normal((100_000, n))
        mc = np.median(x, axis=1).var()
        # MC precision sqrt(2/1e5) = 0.45 %
        assert median_variance_normal(n) == pytest.approx(mc, rel=0.015), n
    assert median_variance_normal(2) == pytest.approx(0.5, rel=1e-6)
    assert median_variance_normal(400) == pytest.approx(math.pi / 800, rel=0.01)


def test_row_subtraction_variance_factor_matches_monte_carlo():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40_000, N_SERIAL))
    # ratio to the sample's own variance cancels the sample's fluctuation
    med = (x - np.median(x, axis=1, keepdims=True)).var() / x.var()
    mean = (x - x.mean(axis=1, keepdims=True)).var() / x.var()
    f_med = row_subtraction_variance_factor(N_SERIAL, "median")
    f_mean = row_subtraction_variance_factor(N_SERIAL, "mean")
    print(f"N={N_SERIAL}: median factor {f_med:.5f} (MC {med:.5f}), mean factor {f_mean:.5f} (MC {mean:.5f})")
    # precision of the MC ratios ~ 1e-3 or better
    assert f_med == pytest.approx(med, abs=2e-3)
    assert f_mean == pytest.approx(mean, abs=2e-3)
    assert 1 - f_med == pytest.approx((2 - math.pi / 2) / N_SERIAL, rel=0.15)  # asymptotic form


def test_clipped_std_is_unbiased_and_robust():
    rng = np.random.default_rng(2)
    x = 3.0 + 5.0 * rng.standard_normal(1_000_000)
    mean, std = clipped_std(x)
    # precision ~0.08 %; an uncorrected 3-sigma clipped std would be ~1.5 % low
    assert std == pytest.approx(5.0, rel=3e-3)
    assert mean == pytest.approx(3.0, abs=0.02)
    x[rng.choice(x.size, 10_000, replace=False)] += 500.0  # 1 % outliers
    _, std2 = clipped_std(x)
    assert std2 == pytest.approx(5.0, rel=5e-3)


# ---------------------------------------------------------------------------
# overscan
# ---------------------------------------------------------------------------


def test_serial_overscan_removes_level_and_row_jitter():
    signal = structure()
    raw, _ = synthetic_raw(3, signal=signal, row_jitter=5.0)
    res = run_calib_isr(raw, gains=1.0, apply_gains=False, do_parallel=False, saturation=None)
    assert res.image.shape == (LAYOUT.detector_height, LAYOUT.detector_width)
    assert res.image.dtype == np.float32 and res.variance.dtype == np.float32 and res.mask.dtype == np.uint8
    assert res.units == "adu"
    resid = res.image.astype(np.float64) - signal
    vmed = median_variance_normal(N_SERIAL)
    var_ratio = []
    for amp in AMP_NAMES:
        r = raw_view(resid, amp)
        s = READ_NOISE_ADU[amp]
        # error of the amp mean: pixel noise + the row medians' errors
        err = s * math.sqrt(1 / r.size + vmed / r.shape[0])
        assert abs(r.mean()) < 4 * err, (amp, r.mean(), err)
        # jitter gone: row means scatter as pixel noise/64 + row-median noise
        expected_rows = s * math.sqrt(1 / r.shape[1] + vmed)
        assert r.mean(axis=1).std() == pytest.approx(expected_rows, rel=0.25), amp
        var_ratio.append(r.var() / s**2)
        stats = res.amp_stats[amp]
        # level = median of the row values: 5 ADU jitter / sqrt(298) ~ 0.3 ADU
        assert stats["overscan_level_adu"] == pytest.approx(BIAS_LEVEL[amp], abs=1.5)
    # the row median adds Var(median) ~ pi/(2N) = 2.6 % to the pixel variance
    pooled = float(np.mean(var_ratio))
    print(f"residual variance / read noise^2 = {pooled:.4f}, expected {1 + vmed:.4f}")
    assert pooled == pytest.approx(1 + vmed, abs=0.01)
    # the structure is recovered: the residual has no large-scale pattern left
    block = resid.reshape(10, 50, 8, 64).mean(axis=(1, 3))
    assert np.abs(block).max() < 1.0  # structure amplitude ~ 40 ADU


def test_parallel_overscan_removes_column_offsets():
    raw, cols = synthetic_raw(4, row_jitter=5.0, col_offsets=10.0)
    on = run_calib_isr(raw, gains=1.0, apply_gains=False, do_parallel=True, saturation=None)
    off = run_calib_isr(raw, gains=1.0, apply_gains=False, do_parallel=False, saturation=None)
    vpar = median_variance_normal(N_PARALLEL)
    ratios = []
    for amp in AMP_NAMES:
        s = READ_NOISE_ADU[amp]
        col_on = raw_view(on.image, amp).astype(np.float64).mean(axis=0)
        col_off = raw_view(off.image, amp).astype(np.float64).mean(axis=0)
        # without the parallel correction the column offsets survive
        assert np.corrcoef(col_off, cols[amp])[0, 1] > 0.99
        np.testing.assert_allclose(col_off - cols[amp], 0.0, atol=6 * s / math.sqrt(LAYOUT.data_height) + 0.3)
        # with it, columns scatter by the parallel-median error + pixel noise
        expected = s * math.sqrt(vpar + 1 / LAYOUT.data_height)
        ratios.append(col_on.std() / expected)
        assert abs(col_on.mean()) < 4 * expected / math.sqrt(LAYOUT.data_width) + 0.2
        assert np.isfinite(on.amp_stats[amp]["parallel_level_adu"])
        assert np.isnan(off.amp_stats[amp]["parallel_level_adu"])
    print(f"column-mean scatter / expected: {np.mean(ratios):.3f}")
    assert np.mean(ratios) == pytest.approx(1.0, rel=0.15)
    assert max(ratios) < 1.6


def test_overscan_noise_estimate():
    raw, _ = synthetic_raw(5, row_jitter=5.0)
    # cosmic-ray / hot-pixel hits in the serial overscan must not bias it
    rng = np.random.default_rng(55)
    for amp in AMP_NAMES:
        os_ = raw.amp_array(amp)[LAYOUT.geometry(amp).raw_serial_overscan_all_rows]
        hits = rng.random(os_.shape) < 0.002
        os_[hits] += 800.0
    res = run_calib_isr(raw, gains=1.3, saturation=None)
    ratios = np.array([res.amp_stats[a]["overscan_noise_adu"] / READ_NOISE_ADU[a] for a in AMP_NAMES])
    print(f"overscan noise / truth: mean {ratios.mean():.4f}, min {ratios.min():.4f}, max {ratios.max():.4f}")
    # each amp uses 298 x 58 = 17284 residuals: ~0.7 % precision
    assert np.all(np.abs(ratios - 1) < 0.03)
    assert abs(ratios.mean() - 1) < 0.006
    for a in AMP_NAMES:
        st = res.amp_stats[a]
        assert st["overscan_noise_e"] == pytest.approx(1.3 * st["overscan_noise_adu"])
        assert st["read_noise_e"] == pytest.approx(st["overscan_noise_e"])  # measured one used


def test_overscan_statistic_options_and_skips():
    geom = LAYOUT.geometry("C10")
    rng = np.random.default_rng(6)
    base = 1000.0 + 5.0 * rng.standard_normal((LAYOUT.raw_height, LAYOUT.raw_width))
    xs = geom.raw_serial_overscan_all_rows[1]
    # charge-transfer trail in the first overscan columns
    trail = base.copy()
    trail[:, xs.start : xs.start + 3] += [300.0, 60.0, 12.0]
    for stat in ("median", "mean", "clipped_mean"):
        r = overscan_correct_amp(trail, geom, statistic=stat, do_parallel=False)
        assert r.level == pytest.approx(1000.0, abs=0.3), stat
    r = overscan_correct_amp(trail, geom, statistic="mean", serial_skip=(0, 0), do_parallel=False)
    assert r.level == pytest.approx(1000.0 + 372.0 / 64, abs=0.3)  # trail leaks into a mean
    # a few hot pixels per row: median and clipped mean are robust, the mean is not
    hot = base.copy()
    hot[:, xs.start + 10] += 400.0
    levels = {
        s: overscan_correct_amp(hot, geom, statistic=s, do_parallel=False).level
        for s in ("median", "mean", "clipped_mean")
    }
    assert levels["mean"] == pytest.approx(1000.0 + 400.0 / N_SERIAL, abs=0.3)
    assert levels["median"] == pytest.approx(1000.0, abs=0.4)
    assert levels["clipped_mean"] == pytest.approx(1000.0, abs=0.3)
    with pytest.raises(ValueError):
        overscan_correct_amp(base, geom, statistic="mode")
    with pytest.raises(ValueError):
        overscan_correct_amp(base, geom, serial_skip=(40, 30))


# ---------------------------------------------------------------------------
# assembly
# ---------------------------------------------------------------------------


def test_assembly_places_and_flips_every_amp():
    """Each raw data pixel carries (amp, raw y, raw x); the assembled image
    must hold it where the ITL geometry says, with x always flipped and y
    flipped for the top row (C1x)."""
    raw = empty_raw()
    for i, amp in enumerate(AMP_NAMES):
        a = raw.amp_array(amp)
        ys, xs = LAYOUT.geometry(amp).raw_data
        yy, xx = np.mgrid[ys, xs]
        a[ys, xs] = (i + 1) * 1_000_000 + yy * 1000 + xx  # exact in float32 (< 2**24)
    res = run_calib_isr(raw, gains=1.0, apply_gains=False, saturation=None)
    code = res.image.astype(np.int64)
    w, h, pre = LAYOUT.data_width, LAYOUT.data_height, LAYOUT.prescan
    Y, X = np.mgrid[0 : LAYOUT.detector_height, 0 : LAYOUT.detector_width]
    iy, ix = Y // h, X // w
    ly, lx = Y % h, X % w
    amp_index = np.array([[AMP_NAMES.index(f"C{r}{c}") for c in range(8)] for r in range(2)])[iy, ix]
    raw_x = pre + (w - 1 - lx)
    raw_y = np.where(iy == 1, h - 1 - ly, ly)
    expected = (amp_index + 1) * 1_000_000 + raw_y * 1000 + raw_x
    np.testing.assert_array_equal(code, expected)
    # C00 (HDU 16) lower-left, C17 (HDU 8) upper-right; C10 raw (0, prescan) at the top-right of its box
    assert code[0, 0] // 1_000_000 == 16 and code[-1, -1] // 1_000_000 == 8
    assert code[2 * h - 1, w - 1] == 1 * 1_000_000 + 0 * 1000 + pre
    assert not res.mask.any()


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------


def test_saturation_and_nan_masks():
    raw, _ = synthetic_raw(7, row_jitter=0.0, noise=None)
    sat = {a: 50_000.0 + 1000.0 * i for i, a in enumerate(AMP_NAMES)}
    p = LAYOUT.prescan
    for amp in AMP_NAMES:
        a = raw.amp_array(amp)
        a[10, p + 5] = sat[amp]  # exactly at the level -> SAT
        a[11, p + 5] = sat[amp] - 1.0  # just below -> not SAT
        a[12, p + 6] = np.nan  # NaN in the data
        a[20, p + LAYOUT.data_width + 30] = np.nan  # one NaN in the overscan of row 20
        a[30, p + LAYOUT.data_width :] = np.nan  # whole overscan of row 30
    res = run_calib_isr(raw, gains=1.0, apply_gains=False, saturation=sat)
    sat_bit, susp = masks.BIT["SAT"], masks.BIT["SUSPECT"]
    assert int((res.mask & sat_bit).astype(bool).sum()) == 16
    assert int(((res.mask & NO_DATA_BAD) == NO_DATA_BAD).sum()) == 16
    for amp in AMP_NAMES:
        m, img, var = raw_view(res.mask, amp), raw_view(res.image, amp), raw_view(res.variance, amp)
        assert m[10, 5] & sat_bit and not m[11, 5] & sat_bit
        assert img[10, 5] == pytest.approx(sat[amp] - BIAS_LEVEL[amp])  # value kept
        assert m[12, 6] == NO_DATA_BAD and np.isnan(img[12, 6]) and np.isnan(var[12, 6])
        # a NaN in the overscan does not spoil its row; an all-NaN row uses the amp level
        assert np.all(img[20] == 0.0)
        assert np.all(img[30] == 0.0) and np.all(m[30] & susp)
        assert res.amp_stats[amp]["n_saturated"] == 1 and res.amp_stats[amp]["n_nan"] == 1
    finite = np.isfinite(res.image)
    assert finite.sum() == res.image.size - 16
    # saturation off, and the camera's nominal level by default
    off = run_calib_isr(raw, gains=1.0, apply_gains=False, do_saturation=False, saturation=sat)
    assert not (off.mask & sat_bit).any()
    raw.amp_array("C04")[50, p + 2] = 142857.0
    default = run_calib_isr(raw, gains=1.0, apply_gains=False)
    assert int((default.mask & sat_bit).astype(bool).sum()) == 1
    assert raw_view(default.mask, "C04")[50, 2] & sat_bit


# ---------------------------------------------------------------------------
# gains and variance
# ---------------------------------------------------------------------------


def test_gains_and_variance():
    signal = 1000.0 + structure()
    raw, _ = synthetic_raw(8, signal=signal, row_jitter=0.0, noise=None)
    gains = {a: 1.1 + 0.02 * i for i, a in enumerate(AMP_NAMES)}
    rn_e = {a: 5.0 + 0.3 * i for i, a in enumerate(AMP_NAMES)}
    res = run_calib_isr(raw, gains=gains, read_noise=rn_e, do_parallel=True)
    assert res.units == "electron"
    for amp in AMP_NAMES:
        img, var = raw_view(res.image, amp), raw_view(res.variance, amp)
        sig = raw_view(signal, amp)
        np.testing.assert_allclose(img, gains[amp] * sig, rtol=2e-6, atol=2e-3)
        np.testing.assert_allclose(var, img + rn_e[amp] ** 2, rtol=1e-6)
        assert res.amp_stats[amp]["gain"] == gains[amp] and res.amp_stats[amp]["gain_applied"] == 1.0
        assert res.amp_stats[amp]["read_noise_e"] == rn_e[amp]
    adu = run_calib_isr(raw, gains=gains, read_noise=rn_e, apply_gains=False)
    assert adu.units == "adu"
    for amp in AMP_NAMES:
        g = gains[amp]
        np.testing.assert_allclose(raw_view(adu.image, amp), raw_view(signal, amp), rtol=2e-6, atol=2e-3)
        # same variance, expressed in ADU^2
        var_e = raw_view(res.variance, amp)
        np.testing.assert_allclose(raw_view(adu.variance, amp) * g * g, var_e, rtol=1e-5)


def test_make_variance_arithmetic():
    regions = amp_regions(LAYOUT)
    img = np.full((LAYOUT.detector_height, LAYOUT.detector_width), 400.0, dtype=np.float32)
    img[0, 0] = -50.0  # negative values add no Poisson variance
    img[0, 1] = np.nan
    v_e = make_variance(img, 6.0, regions, 2.0, units="electron")
    v_a = make_variance(img, 6.0, regions, 2.0, units="adu")
    assert v_e[5, 5] == pytest.approx(400 + 36) and v_e[0, 0] == pytest.approx(36)
    assert v_a[5, 5] == pytest.approx(400 / 2 + 9) and v_a[0, 0] == pytest.approx(9)
    assert np.isnan(v_e[0, 1])
    with pytest.raises(ValueError):
        make_variance(img, 6.0, {"C10": regions["C10"]}, 2.0)
    with pytest.raises(ValueError):
        make_variance(img, 6.0, regions, 2.0, units="dn")


# ---------------------------------------------------------------------------
# calibrations
# ---------------------------------------------------------------------------


def test_bias_dark_flat_application():
    rng = np.random.default_rng(9)
    shape = (LAYOUT.detector_height, LAYOUT.detector_width)
    signal_adu = 2000.0 + structure()
    raw, _ = synthetic_raw(9, signal=signal_adu, row_jitter=0.0, noise=None)
    gain, rn = 1.25, 7.0
    bias = rng.normal(3.0, 1.0, shape).astype(np.float32)
    dark = rng.uniform(0.0, 0.05, shape).astype(np.float32)  # e-/s
    flat = rng.uniform(0.9, 1.1, shape).astype(np.float32)
    flat[5, 7] = 0.0
    flat[6, 7] = -0.2
    flat[7, 7] = np.nan
    bias_var = np.full(shape, 0.5, dtype=np.float32)
    dark_var = np.full(shape, 1e-4, dtype=np.float32)
    flat_var = np.full(shape, 1e-6, dtype=np.float32)
    flat_mask = np.zeros(shape, dtype=np.uint8)
    flat_mask[100, 100] = masks.BIT["BAD"]
    t = 30.0
    with pytest.raises(ValueError, match="dark time"):
        run_calib_isr(raw, gains=gain, read_noise=rn, dark=dark)
    res = run_calib_isr(
        raw,
        gains=gain,
        read_noise=rn,
        bias=CalibFrame(bias, bias_var),
        dark=CalibFrame(dark, dark_var),
        dark_time=t,
        flat=CalibFrame(flat, flat_var, flat_mask),
    )
    pre = gain * signal_adu  # ISR image before calibrations (e-)
    good = flat > 0
    safe = np.where(good, flat, 1.0)
    expected = (pre - bias - dark * t) / safe
    np.testing.assert_allclose(res.image[good], expected[good], rtol=1e-5, atol=1e-3)
    var_pre = pre + rn**2 + 0.5 + t * t * 1e-4
    expected_var = var_pre / safe**2 + expected**2 * 1e-6 / safe**2
    np.testing.assert_allclose(res.variance[good], expected_var[good], rtol=1e-5)
    for yx in ((5, 7), (6, 7), (7, 7)):
        assert res.mask[yx] & NO_DATA_BAD == NO_DATA_BAD and np.isnan(res.image[yx])
    assert res.mask[100, 100] & masks.BIT["BAD"]
    assert int((res.mask != 0).sum()) == 4
    # plain arrays, each calibration alone
    img = np.full(shape, 100.0, dtype=np.float32)
    var = np.full(shape, 10.0, dtype=np.float32)
    msk = np.zeros(shape, dtype=np.uint8)
    apply_calibrations(img, var, msk, bias=np.full(shape, 20.0))
    assert img[0, 0] == 80.0 and var[0, 0] == 10.0
    apply_calibrations(img, var, msk, dark=np.full(shape, 0.5), dark_time=40.0)
    assert img[0, 0] == 60.0
    apply_calibrations(img, var, msk, flat=np.full(shape, 2.0))
    assert img[0, 0] == 30.0 and var[0, 0] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="shape"):
        apply_calibrations(img, var, msk, bias=np.zeros((3, 3)))


def _numpy_calibrations(image, variance, mask, b, d, t, f):
    """`apply_calibrations` as whole-array numpy expressions (the oracle)."""
    bad = np.zeros(image.shape, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        image -= b.image
        variance += b.variance
        mask |= b.mask
        bad |= np.isnan(b.image)
        image -= d.image * t
        variance += d.variance * (t * t)
        mask |= d.mask
        bad |= np.isnan(d.image)
        flat_bad = ~(f.image > 0)
        bad |= flat_bad
        safe = np.where(flat_bad, 1.0, f.image).astype(np.float32)
        image /= safe
        variance /= safe * safe
        variance += image * image * (f.variance / (safe * safe))
        mask |= f.mask
    image[bad] = np.nan
    variance[bad] = np.nan
    mask[bad] |= np.uint8(NO_DATA_BAD)


def test_calibration_kernel_equals_the_numpy_formulas_bit_for_bit():
    """The one-pass kernel of `apply_calibrations` gives exactly the float32
    results of the array expressions it replaces, NaN calibration pixels
    and bad flat values (zero, negative, so small that its square is 0)
    included."""
    rng = np.random.default_rng(4)
    shape = (LAYOUT.detector_height, LAYOUT.detector_width)
    regions = amp_regions(LAYOUT)

    def plane(lo, hi):
        return rng.uniform(lo, hi, shape).astype(np.float32)

    image = plane(-50.0, 5e4)
    image[3, :7] = np.nan
    calib = {}
    for name, lo, hi in (("bias", -5.0, 5.0), ("dark", 0.0, 0.2), ("flat", 0.8, 1.2)):
        frame = CalibFrame(plane(lo, hi), plane(0.0, 1e-3), (rng.random(shape) < 0.01).astype(np.uint8) * 4)
        frame.image[rng.random(shape) < 0.001] = np.nan
        calib[name] = frame
    calib["flat"].image[10, :3] = (0.0, -0.1, 1e-30)
    t = 31.7
    variance = make_variance(image, 6.3, regions, 1.7)
    mask = (rng.random(shape) < 0.01).astype(np.uint8)
    expected = [image.copy(), variance.copy(), mask.copy()]
    _numpy_calibrations(*expected, calib["bias"], calib["dark"], t, calib["flat"])
    got = [image.copy(), variance.copy(), mask.copy()]
    apply_calibrations(*got, bias=calib["bias"], dark=calib["dark"], dark_time=t, flat=calib["flat"])
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    assert np.isnan(got[0]).sum() > 0 and got[1][10, 2] == expected[1][10, 2]


# ---------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------


@pytest.mark.fullsize
def test_fullsize_speed():
    layout = AmpLayout()
    rng = np.random.default_rng(10)
    shape = (layout.n_y * layout.raw_height, layout.n_x * layout.raw_width)
    arr = (15000.0 + 6.0 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    raw = RawImage(Image(arr, unit=None), layout, {})
    run_calib_isr(raw, gains=1.3)  # warm up (median-variance cache)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        res = run_calib_isr(raw, gains=1.3)
        times.append(time.perf_counter() - t0)
    print(f"full-size calibration ISR (4000 x 4072 from 16 x 2048 x 576): best {min(times):.3f} s, "
          f"all {[round(t, 3) for t in times]}")
    assert res.image.shape == (4000, 4072)
    noise = np.mean([res.amp_stats[a]["overscan_noise_adu"] for a in AMP_NAMES])
    assert noise == pytest.approx(6.0, rel=0.01)
