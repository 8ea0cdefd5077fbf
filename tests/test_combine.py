"""Tests of the combine engine (lsst.cpcombined.algorithms.combine).

The reference for the clipped mean is astropy's
``sigma_clip(data, sigma=3, maxiters=3, cenfunc="mean", stdfunc="std",
axis=0).mean(axis=0)``; arrays are small so the file runs in seconds once
the numba kernels are compiled (they are cached on disk).
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from astropy.stats import sigma_clip
from lsst.cpcombined.algorithms import masks
from lsst.cpcombined.algorithms.combine import (
    DEFAULT_BAD_BITS,
    ArraySource,
    BlockSource,
    NpyFileSource,
    SourceBlock,
    choose_block_rows,
    clipped_mean,
    clipped_stats,
    combine,
    window_moments,
    write_npy_source,
)

BAD = masks.BIT["BAD"]


def _stack(rng, n, ny, nx, *, frac=0.02, dtype=np.float32, level=1000.0, sigma=10.0):
    """Gaussian stack with a fraction ``frac`` of large outliers of both signs."""
    data = rng.normal(level, sigma, (n, ny, nx))
    out = rng.random(data.shape) < frac
    data[out] += rng.choice([-1.0, 1.0], out.sum()) * rng.uniform(10 * sigma, 1000 * sigma, out.sum())
    return data.astype(dtype)


def _astropy(data, bad=None, nsigma=3.0, niter=3):
    """astropy's clipped mean and count along axis 0, ``bad`` masked first."""
    arr = np.ma.masked_array(data, mask=bad if bad is not None else np.zeros(data.shape, bool))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if np.ndim(nsigma) == 0:
            kw = dict(sigma=nsigma)
        else:
            kw = dict(sigma_lower=nsigma[0], sigma_upper=nsigma[1])
        clipped = sigma_clip(arr, maxiters=niter, cenfunc="mean", stdfunc="std", axis=0, **kw)
    mean = clipped.mean(axis=0).filled(np.nan)
    return np.asarray(mean, dtype=np.float64), np.asarray(clipped.count(axis=0))


def _assert_matches(result, ref_mean, ref_count, rtol=1e-5):
    np.testing.assert_array_equal(result.n_used, ref_count)
    np.testing.assert_allclose(result.image, ref_mean, rtol=rtol, atol=0, equal_nan=True)


# --------------------------------------------------------------------------
# Statistic
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, seed, dtype",
    [(2, 1, np.float32), (3, 2, np.float32), (5, 3, np.float64), (11, 4, np.float32),
     (20, 5, np.float32), (20, 6, np.float64), (50, 7, np.float32)],
)  # fmt: skip
def test_clipped_mean_matches_astropy(n, seed, dtype):
    rng = np.random.default_rng(seed)
    data = _stack(rng, n, 37, 1100, dtype=dtype)  # 1100 columns: 3 tiles, last one partial
    result = combine(list(data))
    ref_mean, ref_count = _astropy(data)
    _assert_matches(result, ref_mean, ref_count)
    assert result.image.dtype == dtype
    assert result.n_used.dtype == np.int16
    assert not np.any(result.mask)
    if n >= 20:
        # outliers were present and removed
        assert np.all(ref_count <= n) and ref_count.min() < n


def test_clipped_mean_asymmetric_thresholds_and_iterations():
    rng = np.random.default_rng(8)
    data = _stack(rng, 25, 20, 300, frac=0.05)
    for nsigma, niter in (((2.0, 4.0), 3), (2.5, 1), (2.0, 10)):
        result = combine(list(data), nsigma=nsigma, niter=niter)
        _assert_matches(result, *_astropy(data, nsigma=nsigma, niter=niter))


def test_niter_zero_is_plain_mean():
    rng = np.random.default_rng(9)
    data = _stack(rng, 7, 10, 50, dtype=np.float64)
    result = combine(list(data), niter=0)
    np.testing.assert_allclose(result.image, data.mean(axis=0), rtol=1e-12)
    assert np.all(result.n_used == 7)


def test_ties_and_constant_columns():
    rng = np.random.default_rng(10)
    n, ny, nx = 20, 6, 700
    # small integers: many exact ties
    data = rng.integers(0, 4, (n, ny, nx)).astype(np.float32)
    data[rng.random(data.shape) < 0.03] = 500.0
    # constant columns, with and without one outlier, at a value that is
    # not exactly representable
    data[:, 0, :100] = np.float32(0.1)
    data[:, 1, :100] = np.float32(1234.567)
    data[3, 1, :100] = 1e5
    data[:, 2, :100] = 0.0
    result = combine(list(data))
    _assert_matches(result, *_astropy(data))
    assert np.all(result.image[0, :100] == np.float32(0.1))
    assert np.all(result.image[1, :100] == np.float32(1234.567))
    assert np.all(result.n_used[1, :100] == n - 1)
    assert np.all(result.variance[1, :100] == 0)

    # N = 2 and 3 with ties
    for n_small in (2, 3):
        small = rng.integers(0, 2, (n_small, 5, 40)).astype(np.float64)
        _assert_matches(combine(list(small)), *_astropy(small))


def test_median():
    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 4, 9, 20):
        data = _stack(rng, n, 8, 600, dtype=np.float64)
        bad = rng.random(data.shape) < 0.1
        data_nan = np.where(bad, np.nan, data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = np.nanmedian(data_nan, axis=0)
        result = combine(list(data_nan), method="median")
        np.testing.assert_allclose(result.image, ref, rtol=1e-12, equal_nan=True)
        np.testing.assert_array_equal(result.n_used, np.sum(~bad, axis=0))


# --------------------------------------------------------------------------
# Masks, NaNs, scaling
# --------------------------------------------------------------------------


def test_masked_values_excluded():
    rng = np.random.default_rng(12)
    n, ny, nx = 15, 12, 520
    data = _stack(rng, n, ny, nx)
    bitmask = np.zeros(data.shape, np.uint8)
    for name, frac in (("SAT", 0.03), ("DETECTED", 0.03), ("INTRP", 0.02), ("CR", 0.03), ("SUSPECT", 0.05)):
        bitmask[rng.random(data.shape) < frac] |= masks.BIT[name]
    # masked values are garbage: if they were used the result would be wrong
    data[(bitmask & DEFAULT_BAD_BITS) != 0] = 1e7
    sources = [ArraySource(d, m) for d, m in zip(data, bitmask, strict=True)]

    result = combine(sources)
    _assert_matches(result, *_astropy(data, (bitmask & DEFAULT_BAD_BITS) != 0))

    # darks also exclude CR; SUSPECT is not excluded by either
    dark_bits = DEFAULT_BAD_BITS | masks.BIT["CR"]
    result = combine(sources, bad_bits=dark_bits)
    _assert_matches(result, *_astropy(data, (bitmask & dark_bits) != 0))
    assert np.all(result.n_used >= n - np.sum((bitmask & dark_bits) != 0, axis=0) - 3)


def test_mixed_sources_with_and_without_masks():
    rng = np.random.default_rng(13)
    data = _stack(rng, 10, 9, 300)
    bitmask = (rng.random(data.shape) < 0.1).astype(np.uint8) * masks.BIT["SAT"]
    bitmask[::2] = 0  # even inputs have no mask at all
    data[bitmask != 0] = -5e6
    pairs = enumerate(zip(data, bitmask, strict=True))
    sources = [ArraySource(d, m) if i % 2 else ArraySource(d) for i, (d, m) in pairs]
    _assert_matches(combine(sources), *_astropy(data, bitmask != 0))


def test_nonfinite_values_excluded():
    rng = np.random.default_rng(14)
    data = _stack(rng, 12, 10, 400)
    bad = rng.random(data.shape) < 0.05
    data[bad] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), bad.sum())
    result = combine(list(data))
    _assert_matches(result, *_astropy(np.where(bad, 0, data), bad))
    assert np.all(np.isfinite(result.image))


def test_fully_masked_pixel_is_nan_and_bad():
    rng = np.random.default_rng(15)
    n, ny, nx = 6, 5, 40
    data = rng.normal(100, 1, (n, ny, nx)).astype(np.float32)
    bitmask = np.zeros(data.shape, np.uint8)
    bitmask[:, 2, 7] = masks.BIT["SAT"]  # all inputs masked
    data[:, 3, 9] = np.nan  # all inputs NaN
    bitmask[:3, 4, 4] = masks.BIT["DETECTED"]  # half masked: still fine
    for method in ("clipped_mean", "median"):
        result = combine([ArraySource(d, m) for d, m in zip(data, bitmask, strict=True)], method=method)
        for y, x in ((2, 7), (3, 9)):
            assert np.isnan(result.image[y, x]) and np.isnan(result.variance[y, x])
            assert result.mask[y, x] == BAD
            assert result.n_used[y, x] == 0
        assert result.n_used[4, 4] == 3 and result.mask[4, 4] == 0
        assert np.count_nonzero(result.mask) == 2
        assert np.isfinite(result.image).sum() == ny * nx - 2


def test_scaling():
    rng = np.random.default_rng(16)
    n, ny, nx = 20, 20, 300
    truth = rng.uniform(0.5, 1.5, (ny, nx))
    scales = rng.uniform(1000, 30000, n)  # e.g. flat levels or dark times
    data = (truth * scales[:, None, None] * (1 + rng.normal(0, 0.01, (n, ny, nx)))).astype(np.float32)
    data[rng.random(data.shape) < 0.005] *= 5  # outliers
    result = combine(list(data), scales=scales)
    _assert_matches(result, *_astropy(data / scales[:, None, None]))
    # the scaled combination recovers the truth to 1 %/sqrt(20) = 0.22 % rms
    err = result.image / truth - 1
    # (robust rms: a few pixels keep two outliers that 3-sigma clipping of
    # 20 values cannot separate)
    assert 1.4826 * np.median(np.abs(err)) == pytest.approx(0.01 / np.sqrt(n), rel=0.1)
    assert np.percentile(np.abs(err), 99) < 0.01
    assert abs(np.median(err)) < 2e-4
    # without the scales the result is in input units
    assert np.median(combine(list(data)).image / truth) > 1000

    # variances are divided by the square of the scale
    var = np.full(data.shape, 4.0, np.float32)
    res = combine(
        [ArraySource(d, variance=v) for d, v in zip(data, var, strict=True)], scales=scales, niter=0
    )
    np.testing.assert_allclose(res.variance, np.sum(4.0 / scales**2) / n**2, rtol=1e-5)

    with pytest.raises(ValueError):
        combine(list(data), scales=scales[:-1])
    with pytest.raises(ValueError):
        combine(list(data), scales=np.r_[scales[:-1], 0.0])


# --------------------------------------------------------------------------
# Blocks and sources
# --------------------------------------------------------------------------


def _planes(rng, n=9, ny=23, nx=610):
    data = _stack(rng, n, ny, nx)
    bitmask = (rng.random(data.shape) < 0.05).astype(np.uint8) * masks.BIT["SAT"]
    var = rng.uniform(50, 150, data.shape).astype(np.float32)
    return data, bitmask, var


@pytest.mark.parametrize("method", ["clipped_mean", "median"])
def test_block_size_does_not_change_the_result(method):
    rng = np.random.default_rng(17)
    data, bitmask, var = _planes(rng)
    sources = [ArraySource(d, m, v) for d, m, v in zip(data, bitmask, var, strict=True)]
    ref = combine(sources, method=method, block_rows=data.shape[1])
    assert ref.block_rows == data.shape[1]
    for block_rows in (1, 2, 5, 7, 22, 1000):  # 5 and 7 do not divide 23
        res = combine(sources, method=method, block_rows=block_rows)
        assert res.block_rows == min(block_rows, data.shape[1])
        for plane in ("image", "variance", "mask", "n_used"):
            np.testing.assert_array_equal(getattr(res, plane), getattr(ref, plane))
    # the automatic choice from a budget: 9 inputs x 610 columns x (4 + 1 + 4) bytes per row
    res = combine(sources, method=method, memory_budget_bytes=9 * 610 * 9 * 4)
    assert res.block_rows == 4
    np.testing.assert_array_equal(res.image, ref.image)


def test_number_of_threads_does_not_change_the_result():
    import numba

    rng = np.random.default_rng(22)
    data, bitmask, var = _planes(rng, n=12, ny=40, nx=700)
    sources = [ArraySource(d, m) for d, m in zip(data, bitmask, strict=True)]
    ref = combine(sources)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = combine(sources)
    finally:
        numba.set_num_threads(before)
    for plane in ("image", "variance", "mask", "n_used"):
        np.testing.assert_array_equal(getattr(one, plane), getattr(ref, plane))


def test_choose_block_rows():
    assert choose_block_rows(50, 4000, 4, 256 * 1024**2, 4072) == 335
    assert choose_block_rows(50, 4000, 4, 1, 4072) == 1
    assert choose_block_rows(2, 10, 4, 10**9, 30) == 30


def test_npy_file_source_equals_in_memory(tmp_path):
    rng = np.random.default_rng(18)
    data, bitmask, var = _planes(rng)
    mem = [ArraySource(d, m, v) for d, m, v in zip(data, bitmask, var, strict=True)]
    planes = enumerate(zip(data, bitmask, var, strict=True))
    disk = [write_npy_source(tmp_path, f"in{i}", d, m, v) for i, (d, m, v) in planes]
    assert disk[0].shape == data.shape[1:] and disk[0].has_mask and disk[0].has_variance
    blk = disk[3].read_block(4, 9)
    np.testing.assert_array_equal(blk.image, data[3, 4:9])
    np.testing.assert_array_equal(blk.mask, bitmask[3, 4:9])
    np.testing.assert_array_equal(blk.variance, var[3, 4:9])
    for variance_method in ("empirical", "propagated"):
        a = combine(mem, block_rows=5, variance_method=variance_method)
        b = combine(disk, block_rows=5, variance_method=variance_method)
        for plane in ("image", "variance", "mask", "n_used"):
            np.testing.assert_array_equal(getattr(a, plane), getattr(b, plane))
    # a plain .npy written by numpy (image only)
    np.save(tmp_path / "plain.npy", data[0].astype(np.float64))
    src = NpyFileSource(tmp_path / "plain.npy")
    assert src.dtype == np.float64 and not src.has_mask
    np.testing.assert_array_equal(src.read_block(0, 23).image, data[0])


def test_custom_source_protocol():
    """A minimal third-party source (as the butler-backed one will be)."""

    class Constant(BlockSource):
        def __init__(self, value):
            self.value = value
            self.calls = []

        @property
        def shape(self):
            return (10, 30)

        def read_block(self, y0, y1):
            self.calls.append((y0, y1))
            return SourceBlock(np.full((y1 - y0, 30), self.value, np.float32))

    sources = [Constant(v) for v in (1.0, 2.0, 3.0, 100.0, 2.0)]
    res = combine(sources, block_rows=4, method="median")
    assert np.all(res.image == 2.0)
    assert sources[0].calls == [(0, 4), (4, 8), (8, 10)]


def test_memory_stays_bounded(tmp_path):
    """Traced allocations stay near the block buffer plus the outputs,
    far below the size of the inputs."""
    rng = np.random.default_rng(19)
    n, ny, nx = 40, 300, 500
    sources = [
        write_npy_source(tmp_path, f"f{i}", rng.normal(0, 1, (ny, nx)).astype(np.float32)) for i in range(n)
    ]
    inputs_bytes = n * ny * nx * 4  # 24 MB
    budget = n * nx * 4 * 10  # 10 rows
    outputs_bytes = ny * nx * (4 + 4 + 1 + 2)
    combine(sources[:2], block_rows=3)  # compile outside the trace
    tracemalloc.start()
    res = combine(sources, memory_budget_bytes=budget)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res.block_rows == 10
    assert peak < outputs_bytes + budget + 1_000_000
    assert peak < inputs_bytes / 5


# --------------------------------------------------------------------------
# Variance
# --------------------------------------------------------------------------


def test_variance_of_gaussian_inputs():
    rng = np.random.default_rng(20)
    n, ny, nx, sigma = 20, 100, 500, 3.0
    data = rng.normal(50, sigma, (n, ny, nx)).astype(np.float32)
    expected = sigma**2 / n

    emp = combine(list(data))
    assert emp.variance_method == "empirical"
    # sample variance of the kept values / n: unbiased without clipping,
    # ~1 % low with it (truncated tails); 50000 pixels give ~0.3 % noise
    assert np.mean(emp.variance) == pytest.approx(expected, rel=0.03)
    # and the actual scatter of the combined image agrees
    assert np.var(emp.image) == pytest.approx(expected, rel=0.03)

    prop = combine([ArraySource(d, variance=np.full_like(d, sigma**2)) for d in data])
    assert prop.variance_method == "propagated"
    clean = prop.n_used == n
    np.testing.assert_allclose(prop.variance[clean], expected, rtol=1e-6)
    np.testing.assert_allclose(prop.variance[~clean], sigma**2 / prop.n_used[~clean], rtol=1e-6)

    med = combine(list(data), method="median")
    # variance of the median of n Gaussian values ~ pi/2 sigma^2 / n
    assert np.mean(med.variance) == pytest.approx(np.pi / 2 * expected, rel=0.05)
    assert np.var(med.image) == pytest.approx(np.pi / 2 * expected, rel=0.1)

    with pytest.raises(ValueError):
        combine(list(data), variance_method="propagated")


def test_single_input_variance_is_nan():
    data = np.ones((1, 4, 5), np.float32)
    res = combine(list(data))
    assert np.all(res.image == 1) and np.all(res.n_used == 1) and np.all(np.isnan(res.variance))


# --------------------------------------------------------------------------
# clipped_mean (flat scaling)
# --------------------------------------------------------------------------


def test_clipped_stats_matches_astropy():
    rng = np.random.default_rng(21)
    image = rng.normal(20000, 150, (300, 400))
    image[rng.random(image.shape) < 0.01] = 1e6
    image[rng.random(image.shape) < 0.01] = 0.0
    bitmask = np.zeros(image.shape, np.uint8)
    bitmask[:20] = masks.BIT["SAT"]
    image[:20] = 5e5
    good = (bitmask & DEFAULT_BAD_BITS) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sigma_clip(image[good], sigma=3, maxiters=3, cenfunc="mean", stdfunc="std")
    mean, std, n = clipped_stats(image, bitmask)
    assert mean == pytest.approx(float(ref.mean()), rel=1e-12)
    assert std == pytest.approx(float(ref.std()), rel=1e-9)
    assert n == ref.count()
    assert clipped_mean(image.astype(np.float32), bitmask) == pytest.approx(20000, rel=1e-3)
    # constant image: ties are kept
    assert clipped_stats(np.full((10, 10), 0.1)) == (pytest.approx(0.1, rel=1e-15), 0.0, 100)
    assert np.isnan(clipped_mean(np.full((3, 3), np.nan)))


@pytest.mark.parametrize("nx", [1, 127, 128, 129, 509, 1000])
def test_window_moments_match_numpy(nx):
    """The lane-accumulated kernel gives numpy's count, mean and variance of
    the good values in a window, whatever the row width, with NaN and
    infinities outside every window (infinite bounds included)."""
    rng = np.random.default_rng(nx)
    image = rng.normal(500.0, 7.0, (37, nx)).astype(np.float32)
    flat = image.reshape(-1)
    flat[rng.choice(flat.size, max(1, flat.size // 50), replace=False)] = np.nan
    flat[rng.choice(flat.size, max(1, flat.size // 50), replace=False)] = np.inf
    flat[0] = -np.inf
    bitmask = (rng.random(image.shape) < 0.1).astype(np.uint8) * BAD
    finite = np.isfinite(image)
    for lo, hi, use_mask in ((-np.inf, np.inf, False), (-np.inf, np.inf, True), (495.0, 510.0, True)):
        good = finite & (image >= lo) & (image <= hi)
        if use_mask:
            good &= (bitmask & BAD) == 0
        values = image[good].astype(np.float64)
        n, mean, var = window_moments(image, lo, hi, 500.0, bitmask if use_mask else None, BAD)
        assert n == values.size
        if n:
            assert mean == pytest.approx(values.mean(), rel=1e-13)
            assert var == pytest.approx(values.var(), rel=1e-10)
        # a 1-d input is one long row: the same numbers
        row_mask = bitmask.reshape(-1) if use_mask else None
        assert window_moments(image.reshape(-1), lo, hi, 500.0, row_mask, BAD)[0] == n
    assert window_moments(image, np.nan, 510.0, 500.0)[0] == 0


def test_bad_arguments():
    data = [np.zeros((3, 4), np.float32)] * 3
    with pytest.raises(ValueError):
        combine(data, method="mode")
    with pytest.raises(ValueError):
        combine(data + [np.zeros((3, 5), np.float32)])
    with pytest.raises(ValueError):
        combine([])
    with pytest.raises(ValueError):
        combine(data, variance_method="guess")
