"""Tests of cosmic-ray detection and repair on synthetic frames.

Frames: Gaussian noise of σ = 8 e- (a read-noise-dominated dark), cosmic-ray
tracks drawn as short line segments 1–3 px wide with 500–5000 e- per pixel
(×U(0.8, 1) pixel to pixel), and isolated hot pixels of 200–3000 e-.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from lsst.cpcombined.algorithms import masks
from lsst.cpcombined.algorithms.cosmic_rays import (
    CosmicRayOverflowError,
    background_map,
    find_cosmic_rays,
    repair_cosmic_rays,
)
from scipy import ndimage

SIGMA = 8.0
SHAPE = (512, 512)


def add_track(signal: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> None:
    """Add one straight cosmic-ray track (length 4-30 px, width 1-3 px)."""
    ny, nx = signal.shape
    length = rng.uniform(4, 30)
    theta = rng.uniform(0, np.pi)
    width = int(rng.choice([1, 2, 3]))
    cx, cy = rng.uniform(10, nx - 10), rng.uniform(10, ny - 10)
    dx, dy = length * np.cos(theta), length * np.sin(theta)
    x0, y0 = cx - dx / 2, cy - dy / 2
    amp = rng.uniform(500, 5000)
    r = int(length / 2 + width + 2)
    ys, xs = np.mgrid[int(cy) - r : int(cy) + r + 1, int(cx) - r : int(cx) + r + 1]
    inside = (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
    ys, xs = ys[inside], xs[inside]
    t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    dist = np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy))
    on = dist <= width / 2
    signal[ys[on], xs[on]] += amp * rng.uniform(0.8, 1.0, on.sum())
    truth[ys[on], xs[on]] = True


def make_frame(seed: int, n_tracks: int = 30, n_hot: int = 30, shape=SHAPE):
    """Return (image, clean, cr_truth, hot_truth); clean = noise + hot pixels."""
    rng = np.random.default_rng(seed)
    clean = rng.normal(0.0, SIGMA, shape)
    hot = np.zeros(shape, dtype=bool)
    # hot pixels at random positions (two may touch: then they form a 2-px
    # feature, the documented trade-off; the seeds used here avoid that)
    idx = rng.choice(shape[0] * shape[1], n_hot, replace=False)
    hot.ravel()[idx] = True
    clean[hot] += rng.uniform(200, 3000, n_hot)
    signal = np.zeros(shape)
    truth = np.zeros(shape, dtype=bool)
    for _ in range(n_tracks):
        add_track(signal, truth, rng)
    return clean + signal, clean, truth, hot


@pytest.fixture(scope="module")
def frame():
    return make_frame(seed=11)


def test_recall_after_growth(frame):
    image, _, truth, hot = frame
    res = find_cosmic_rays(image, SIGMA)
    recall = (res.cr_mask & truth).sum() / truth.sum()
    assert recall >= 0.99, recall
    # every flagged pixel lies within the grow radius (2) of a track pixel
    near = ndimage.binary_dilation(truth, structure=np.ones((5, 5), bool))
    assert not (res.cr_mask & ~near).any()
    assert res.n_features > 0 and res.n_pixels == int(res.cr_mask.sum())
    assert np.array_equal(res.bitmask == masks.BIT["CR"], res.cr_mask)
    assert not res.overflow


def test_hot_pixels_not_flagged_by_default(frame):
    image, _, truth, hot = frame
    near_cr = ndimage.binary_dilation(truth, structure=np.ones((7, 7), bool))
    isolated = hot & ~near_cr
    assert isolated.sum() >= 20
    res = find_cosmic_rays(image, SIGMA)
    assert not (res.cr_mask & isolated).any()
    # documented trade-off: min_pixels=1 flags every sharp pixel, hot ones too
    res1 = find_cosmic_rays(image, SIGMA, min_pixels=1)
    assert (res1.cr_mask & isolated).sum() == isolated.sum()
    # known defects (BAD) are never flagged even then
    bm = np.where(hot, masks.BIT["BAD"], 0).astype(np.uint8)
    res2 = find_cosmic_rays(image, SIGMA, bm, min_pixels=1, grow=0)
    assert not (res2.cr_mask & isolated).any()
    assert np.all(res2.bitmask[hot] & masks.BIT["BAD"])


def test_false_positives_on_clean_noise():
    rng = np.random.default_rng(3)
    clean = rng.normal(100.0, SIGMA, (1024, 1024))
    for noise in (SIGMA, None, np.full(clean.shape, SIGMA**2)):
        res = find_cosmic_rays(clean, noise)
        assert res.n_pixels / clean.size < 1e-4


def test_variance_plane_including_cosmic_rays(frame):
    """A variance plane computed from the image (large on the CRs) still
    gives the background noise, so recall holds."""
    image, _, truth, _ = frame
    variance = np.clip(image, 0, None) + SIGMA**2
    res = find_cosmic_rays(image, variance)
    assert (res.cr_mask & truth).sum() / truth.sum() >= 0.99
    res_est = find_cosmic_rays(image, None)
    assert (res_est.cr_mask & truth).sum() / truth.sum() >= 0.99


def test_smooth_structure_not_flagged():
    rng = np.random.default_rng(5)
    ny, nx = SHAPE
    y, x = np.mgrid[0:ny, 0:nx]
    # a steep gradient (vignetting-like) and round bumps with sigma 1.5-4 px
    image = 200.0 + 3000.0 * (x / nx) ** 2 + rng.normal(0, SIGMA, SHAPE)
    for cy, cx, s, a in [(100, 100, 1.5, 3000), (300, 200, 2.0, 20000), (400, 420, 4.0, 5000)]:
        image += a * np.exp(-0.5 * ((y - cy) ** 2 + (x - cx) ** 2) / s**2)
    res = find_cosmic_rays(image, None)
    assert res.n_pixels == 0, res.n_features
    # the same bumps made sharp (a CR-like 2x2 block) are found
    image[250:252, 50:52] += 3000
    assert find_cosmic_rays(image, None).n_features == 1


def test_background_map_follows_gradient():
    y, x = np.mgrid[0:256, 0:300]
    plane = 10 + 0.5 * x + 0.25 * y
    bkg = background_map(plane, bin_size=32)
    # bilinear interpolation of a plane is exact away from the outer half-block
    assert np.allclose(bkg[16:-16, 16:-16], plane[16:-16, 16:-16], atol=0.6)


def test_repair_restores_std(frame):
    image, clean, truth, hot = frame
    res = repair_cosmic_rays(image, SIGMA)
    assert res.repaired and not res.overflow
    # std over everything (hot pixels kept in both) and without the hot pixels
    for sel in (np.ones(SHAPE, bool), ~hot):
        std_rep, std_clean = np.std(res.image[sel]), np.std(clean[sel])
        assert abs(std_rep - std_clean) / std_clean < 0.02, (std_rep, std_clean)
    assert np.std(image[~hot]) > 5 * np.std(clean[~hot])  # CRs were a big effect
    # repaired pixels carry CR and INTRP; untouched pixels are unchanged
    flagged = res.cr_mask
    assert np.all(res.bitmask[flagged] & masks.BIT["INTRP"])
    assert np.all(res.bitmask[flagged] & masks.BIT["CR"])
    assert np.array_equal(res.image[~flagged], image[~flagged])
    # replaced values look like background (|v| within 5 sigma of 0)
    assert np.abs(res.image[flagged]).max() < 5 * SIGMA
    # the input is not modified
    assert np.abs(image[truth]).max() > 400


def test_repair_reuses_detection(frame):
    image, _, _, _ = frame
    det = find_cosmic_rays(image, SIGMA, grow=1)
    rep = repair_cosmic_rays(image, result=det)
    assert rep.n_pixels == det.n_pixels and np.array_equal(rep.cr_mask, det.cr_mask)
    with pytest.raises(TypeError):
        repair_cosmic_rays(image, result=det, nsigma=5.0)


def test_grow_radius(frame):
    image, _, truth, _ = frame
    r0 = find_cosmic_rays(image, SIGMA, grow=0)
    r2 = find_cosmic_rays(image, SIGMA, grow=2)
    grown = ndimage.binary_dilation(r0.cr_mask, structure=np.ones((5, 5), bool))
    assert np.array_equal(grown, r2.cr_mask)
    assert r0.n_features == r2.n_features


def test_overflow():
    image, _, truth, _ = make_frame(seed=21, n_tracks=300, n_hot=0)
    ok = find_cosmic_rays(image, SIGMA, max_cr_pixels=None)
    assert not ok.overflow and ok.n_pixels > 10_000
    res = repair_cosmic_rays(image, SIGMA, max_cr_pixels=5_000)
    assert res.overflow and not res.repaired and res.max_pixels == 5_000
    assert np.array_equal(res.image, image)  # not silently "repaired"
    assert res.n_pixels == ok.n_pixels
    assert np.all(res.bitmask[res.cr_mask] & masks.BIT["CR"])
    # a fraction limit works the same way
    assert find_cosmic_rays(image, SIGMA, max_cr_pixels=None, max_cr_fraction=0.01).overflow
    assert not find_cosmic_rays(image, SIGMA, max_cr_pixels=None, max_cr_fraction=0.5).overflow
    with pytest.raises(CosmicRayOverflowError):
        repair_cosmic_rays(image, SIGMA, max_cr_pixels=5_000, raise_on_overflow=True)


def test_no_cosmic_rays_repair_is_identity():
    rng = np.random.default_rng(8)
    image = rng.normal(0, SIGMA, (128, 128)).astype(np.float32)
    res = repair_cosmic_rays(image, SIGMA)
    assert res.repaired and res.n_pixels == 0 and res.n_features == 0
    assert np.array_equal(res.image, image) and res.image.dtype == np.float32


def test_bad_inputs():
    with pytest.raises(ValueError):
        find_cosmic_rays(np.zeros(10), 1.0)
    with pytest.raises(ValueError):
        find_cosmic_rays(np.zeros((10, 10)), -1.0)
    with pytest.raises(ValueError):
        find_cosmic_rays(np.zeros((10, 10)), np.ones((5, 5)))
    with pytest.raises(ValueError):
        find_cosmic_rays(np.zeros((10, 10)), None)  # zero scatter: cannot estimate noise


# ---------------------------------------------------------------------------
# the fused kernels against the whole-image array formulation
# ---------------------------------------------------------------------------


def reference_find(
    image,
    noise,
    mask=None,
    *,
    nsigma=6.0,
    nsigma_footprint=4.0,
    sharpness=0.6,
    sharpness_nsigma=2.5,
    min_pixels=2,
    min_peak=0.0,
    grow=2,
    background=None,
    bin_size=64,
    exclude_bits=masks.bits("BAD", "NO_DATA"),
):
    """The detection written with whole-image arrays (the module docstring's
    steps): returns (cr_mask, n_features)."""
    data = np.asarray(image).astype(np.float32, copy=False)
    bm = np.zeros(data.shape, np.uint8) if mask is None else np.asarray(mask)
    good = np.isfinite(data)
    if exclude_bits:
        good &= (bm & exclude_bits) == 0
    bkg = background_map(data, good, bin_size) if background is None else np.asarray(background, np.float32)
    resid = np.where(good, data - bkg, np.float32(0.0)).astype(np.float32, copy=False)
    if noise is None:
        v = resid[good].astype(np.float64)
        if v.size > 1_000_000:
            v = v[:: int(np.ceil(v.size / 1_000_000))]
        sigma = float(1.4826 * np.median(np.abs(v - np.median(v))))
    elif np.ndim(noise) == 0:
        sigma = float(noise)
    else:
        arr = np.asarray(noise, dtype=np.float64)
        vgood = good & np.isfinite(arr) & (arr > 0)
        # any typical level: the floor does not bind on these frames
        floor = np.float32(np.median(arr[vgood]) * 1e-6)
        sigma = np.sqrt(np.maximum(background_map(arr, vgood, bin_size), floor))
    cand = good & (resid > np.float32(nsigma) * sigma)
    if min_peak > 0:
        cand &= resid > min_peak
    iy, ix = np.nonzero(cand)
    padded = np.pad(resid, 1, mode="reflect")
    py, px = iy + 1, ix + 1
    sig_c = sigma if np.ndim(sigma) == 0 else sigma[iy, ix]
    limit = np.float32(sharpness) * (padded[py, px] - np.float32(sharpness_nsigma) * sig_c)
    sharp = np.zeros(iy.size, dtype=bool)
    for (ay, ax), (by, bx) in (((0, -1), (0, 1)), ((-1, 0), (1, 0)), ((-1, -1), (1, 1)), ((-1, 1), (1, -1))):
        sharp |= 0.5 * (padded[py + ay, px + ax] + padded[py + by, px + bx]) < limit
    foot = good & (resid > np.float32(min(nsigma_footprint, nsigma)) * sigma)
    labels, _ = ndimage.label(foot, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    seeds = np.unique(labels[iy[sharp], ix[sharp]])
    seeds = seeds[(seeds > 0) & (sizes[seeds] >= min_pixels)]
    core = np.isin(labels, seeds) & (labels > 0)
    cr = ndimage.maximum_filter(core.view(np.uint8), size=2 * grow + 1, mode="constant").astype(bool)
    return cr, int(seeds.size)


def reference_repair(
    image, det, radius=3, max_radius=32, min_good=5, bits=masks.bits("BAD", "SAT", "NO_DATA", "CR")
):
    """Pixel-by-pixel repair (the documented window rule)."""
    out = np.array(image, dtype=np.result_type(image.dtype, np.float32), copy=True)
    source = np.isfinite(out) & ~det.cr_mask & ((det.bitmask & bits) == 0)
    fallback = float(np.median(out[source])) if source.any() else np.nan
    ny, nx = image.shape
    for y, x in zip(*np.nonzero(det.cr_mask), strict=False):
        r = radius
        while True:
            win = (slice(max(0, y - r), y + r + 1), slice(max(0, x - r), x + r + 1))
            vals = image[win][source[win]].astype(np.float64)
            if vals.size >= min_good or r >= max_radius:
                break
            r = min(2 * r, max_radius)
        out[y, x] = np.median(vals) if vals.size else fallback
    return out


def hard_frame(seed=4, shape=(300, 347)):
    """A frame with a strong background gradient, NaN and infinite pixels,
    excluded pixels, cosmic rays touching the edges, a row with many seeds,
    a large sharp-edged feature and a variance plane from the image."""
    image, _, truth, hot = make_frame(seed, n_tracks=40, n_hot=40, shape=shape)
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    image = image + 500 + 2000 * (x / nx) ** 2 + 300 * (y / ny)
    image[0, 5:9] += 3000
    image[-1, 20:22] += 2000
    image[10:13, 0] += 4000
    image[50:52, -1] += 1000
    image[150:152, 10:300:12] += 2500  # 25 two-pixel hits: > 8 seeds per row
    image[200:240, 250:290] += 1500  # 1600-pixel feature with sharp edges
    image[100, 100:110] = np.nan
    image[220, 30] = np.inf
    variance = np.clip(image - 500, 0, None) + SIGMA**2
    variance[5, 5] = -1.0
    variance[6, 6] = np.nan
    mask = np.zeros(shape, np.uint8)
    mask[hot] = masks.BIT["BAD"]
    mask[:, 33] |= masks.BIT["SAT"]
    mask[40:45, 40:45] = masks.BIT["NO_DATA"]
    return image, variance, mask


@pytest.mark.parametrize(
    "noise, kwargs",
    [
        ("variance", {}),
        ("variance32", {}),
        (SIGMA, {}),
        (None, {}),
        ("variance", dict(min_pixels=1, grow=0)),
        ("variance", dict(grow=3, nsigma=5.0, nsigma_footprint=7.0)),
        ("variance", dict(min_peak=2000.0)),
        ("variance", dict(background=500.0)),
        ("variance", dict(background="gradient")),
        (SIGMA, dict(background="gradient")),
        ("variance", dict(bin_size=16)),
        ("variance", dict(bin_size=1000)),
        ("variance", dict(nsigma_footprint=-1.0)),  # no pruning bound
        ("variance", dict(exclude_bits=0)),
        ("variance", dict(mask="int32")),
    ],
)
def test_matches_array_formulation(noise, kwargs):
    image, variance, mask = hard_frame()
    kwargs = dict(kwargs)
    if isinstance(noise, str):
        noise = variance.astype(np.float32) if noise == "variance32" else variance
    if isinstance(kwargs.get("background"), str):
        y, x = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
        kwargs["background"] = 500 + 2000 * (x / image.shape[1]) ** 2 + 300 * (y / image.shape[0])
    if kwargs.pop("mask", None) == "int32":
        mask = mask.astype(np.int32) | (1 << 12)
    res = find_cosmic_rays(image, noise, mask, max_cr_pixels=None, **kwargs)
    cr, n_features = reference_find(image, noise, mask, **kwargs)
    assert res.n_features == n_features > 0
    assert np.array_equal(res.cr_mask, cr)
    assert res.n_pixels == int(cr.sum())
    expected = np.asarray(mask).astype(np.uint8)
    expected[cr] |= masks.BIT["CR"]
    assert np.array_equal(res.bitmask, expected)


def test_matches_array_formulation_large_estimated_noise():
    """More than 10^6 good pixels: the estimated σ uses a thinned sample."""
    image, _, _, _ = make_frame(seed=12, n_tracks=60, n_hot=10, shape=(1030, 1000))
    res = find_cosmic_rays(image, None)
    cr, n_features = reference_find(image, None)
    assert res.n_features == n_features and np.array_equal(res.cr_mask, cr)


def test_small_images():
    rng = np.random.default_rng(2)
    for shape in [(2, 2), (3, 5), (5, 3), (2, 40), (40, 2)]:
        image = rng.normal(0, SIGMA, shape)
        image.flat[:2] += 5000
        for noise in (SIGMA, np.full(shape, SIGMA**2)):
            res = find_cosmic_rays(image, noise)
            cr, n_features = reference_find(image, noise)
            assert res.n_features == n_features and np.array_equal(res.cr_mask, cr), shape


def test_same_result_with_one_and_two_threads():
    import numba

    image, variance, mask = hard_frame(seed=6)
    ref = find_cosmic_rays(image, variance, mask, max_cr_pixels=None)
    saved = numba.get_num_threads()
    try:
        for n in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(n)
            res = find_cosmic_rays(image, variance, mask, max_cr_pixels=None)
            assert np.array_equal(res.cr_mask, ref.cr_mask) and res.n_features == ref.n_features
            assert np.array_equal(background_map(image), background_map(image))
    finally:
        numba.set_num_threads(saved)


def test_block_median_equals_numpy_median():
    import numba
    from lsst.cpcombined.algorithms.cosmic_rays import _median_f32

    @numba.njit
    def both(values):
        keys = np.empty(values.size, np.int64)
        hist = np.empty(2048, np.int64)
        return _median_f32(values, values.size, keys, hist), np.median(values)

    rng = np.random.default_rng(9)
    samples = [
        np.array([3.0]),
        np.array([2.0, -1.0]),
        np.full(100, 7.0),
        np.round(rng.normal(100, 2, 1001)),  # many repeated values
        rng.normal(0, 8, 1024),
        rng.normal(1e4, 1, 999),
        np.concatenate([rng.normal(49, 7, 500), [np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0]]),
        rng.uniform(-1e-30, 1e-30, 64),
    ]
    for values in samples:
        v = values.astype(np.float32)
        ours, ref = both(v)
        assert ours == ref, (v.size, ours, ref)
        assert np.all(v == values.astype(np.float32))  # not modified


def test_repair_matches_pixel_by_pixel_rule():
    image, variance, mask = hard_frame(seed=7)
    det = find_cosmic_rays(image, variance, mask)
    for kwargs in (dict(), dict(radius=1, max_radius=2, min_good=30), dict(radius=5, min_good=100)):
        rep = repair_cosmic_rays(image, result=det, **kwargs)
        ref = reference_repair(image, det, **kwargs)
        assert np.array_equal(rep.image, ref, equal_nan=True)
        assert np.array_equal(rep.bitmask, det.bitmask | np.where(det.cr_mask, masks.BIT["INTRP"], 0))
    # float32 input, and a bitmask of a wider type
    image32 = image.astype(np.float32)
    det32 = find_cosmic_rays(image32, variance, mask)
    rep = repair_cosmic_rays(image32, result=det32)
    assert rep.image.dtype == np.float32
    assert np.array_equal(rep.image, reference_repair(image32, det32), equal_nan=True)
    wide = dataclasses.replace(det32, bitmask=det32.bitmask.astype(np.int32))
    rep_wide = repair_cosmic_rays(image32, result=wide)
    assert np.array_equal(rep_wide.image, rep.image, equal_nan=True)
    assert np.array_equal(rep_wide.bitmask, rep.bitmask.astype(np.int32))


def test_repair_fallback_when_no_source():
    rng = np.random.default_rng(4)
    image = rng.normal(0, SIGMA, (80, 80))
    image[40, 40:43] += 5000
    mask = np.zeros(image.shape, np.uint8)
    mask[30:51, 30:53] = masks.BIT["BAD"]
    mask[38:43, 38:45] = 0
    det = find_cosmic_rays(image, SIGMA, mask, exclude_bits=0)
    assert det.n_pixels > 0
    rep = repair_cosmic_rays(image, result=det, max_radius=2)
    ref = reference_repair(image, det, max_radius=2)
    assert np.array_equal(rep.image, ref)
    # the pixels farther than 2 px from any source take the frame median
    source = ~det.cr_mask & (mask == 0)
    assert np.sum(rep.image[det.cr_mask] == np.median(image[source])) >= 15
