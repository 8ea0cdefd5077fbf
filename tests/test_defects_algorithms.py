"""Tests of defect finding, defect boxes/tables and defect interpolation.

The synthetic detector has the test geometry of cp_combined: 16 amplifiers
(2 rows × 8) of 64 × 250 pixels (ITL layout scaled by 1/8), 512 × 500 px.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from lsst.cpcombined.algorithms import masks
from lsst.cpcombined.algorithms.defects import (
    BOX_COLUMNS,
    DefectConfig,
    apply_defects,
    border_mask,
    boxes_to_mask,
    boxes_to_table,
    clipped_mean_std,
    fill_bad_columns,
    find_dark_defects,
    find_defects,
    find_flat_defects,
    interpolate_defects,
    mask_to_boxes,
    mask_to_table,
    table_to_boxes,
    table_to_mask,
)
from lsst.cpcombined.obs.camera import AMP_NAMES, AmpLayout

LAYOUT = AmpLayout.scaled(0.125)
SHAPE = (LAYOUT.detector_height, LAYOUT.detector_width)  # (500, 512)
REGIONS = [LAYOUT.geometry(name).assembled_slices for name in AMP_NAMES]
AMP_H, AMP_W = LAYOUT.data_height, LAYOUT.data_width


def _scatter_rows(rng, y0, n, count):
    """``count`` distinct rows in ``[y0, y0 + n)`` including both ends."""
    inner = rng.choice(np.arange(y0 + 1, y0 + n - 1), count - 2, replace=False)
    return np.concatenate([[y0, y0 + n - 1], inner])


@pytest.fixture(scope="module")
def detector():
    """Synthetic combined dark (e-/s) and flat with known defects.

    Returns a dict with dark, flat, their bitmasks, the truth per source
    and a few special pixel sets.
    """
    rng = np.random.default_rng(2024)
    ny, nx = SHAPE
    truth_dark = np.zeros(SHAPE, bool)
    truth_flat = np.zeros(SHAPE, bool)
    truth_nodata = np.zeros(SHAPE, bool)

    # columns reserved for the column-rule cases (no random defects there)
    col_full_dead = 3 * AMP_W + 20  # flat: dead over a whole amp (lower row)
    col_part_flat = 5 * AMP_W + 33  # flat: 60 scattered cold pixels, upper amp
    col_part_dark = 1 * AMP_W + 40  # dark: 50 scattered hot pixels, lower amp
    col_49_dark = 6 * AMP_W + 10  # dark: 49 scattered hot pixels, lower amp
    col_hot_dark = 2 * AMP_W + 7  # dark: hot over a whole upper amp
    reserved = {col_full_dead, col_part_flat, col_part_dark, col_49_dark, col_hot_dark}

    def random_pixels(n):
        ys = rng.integers(0, ny, 4 * n)
        xs = rng.integers(0, nx, 4 * n)
        keep = ~np.isin(xs, list(reserved))
        return ys[keep][:n], xs[keep][:n]

    # ---- dark: 0.02 e-/s with 0.05 e-/s noise (20 x 30 s frames, rn ~ 8 e-)
    dark = 0.02 + rng.normal(0.0, 0.05, SHAPE)
    hy, hx = random_pixels(300)
    dark[hy, hx] = rng.uniform(5.0, 50.0, hy.size)
    truth_dark[hy, hx] = True
    wy, wx = random_pixels(60)
    warm = np.zeros(SHAPE, bool)
    warm[wy, wx] = ~truth_dark[wy, wx]
    dark[warm] = rng.uniform(1.0, 2.0, warm.sum())  # warm, below 3 e-/s
    dark[AMP_H:, col_hot_dark] = 8.0  # whole upper-amp column
    truth_dark[AMP_H:, col_hot_dark] = True
    rows = _scatter_rows(rng, 40, 161, 50)  # rows 40..200, exactly 50 hot
    dark[rows, col_part_dark] = 6.0
    truth_dark[40:201, col_part_dark] = True  # span filled
    rows49 = _scatter_rows(rng, 30, 201, 49)
    dark[rows49, col_49_dark] = 6.0
    truth_dark[rows49, col_49_dark] = True  # not filled
    ny_, nx_ = random_pixels(15)
    dark[ny_, nx_] = np.nan
    truth_nodata[ny_, nx_] = True

    # ---- flat: per-amp level 0.95-1.05, 3 % gradient, 1 % noise
    flat = np.empty(SHAPE)
    yy, xx = np.mgrid[0:AMP_H, 0:AMP_W]
    for ys, xs in REGIONS:
        level = rng.uniform(0.95, 1.05)
        grad = 1.0 + 0.03 * (xx / AMP_W - 0.5)
        flat[ys, xs] = level * grad * (1.0 + rng.normal(0.0, 0.01, (AMP_H, AMP_W)))
    cy, cx = random_pixels(300)
    flat[cy, cx] *= rng.uniform(0.3, 0.8, cy.size)
    truth_flat[cy, cx] = True
    hfy, hfx = random_pixels(30)
    flat[hfy, hfx] *= rng.uniform(1.2, 1.5, hfy.size)
    truth_flat[hfy, hfx] = True
    flat[:AMP_H, col_full_dead] = rng.normal(0.0, 0.01, AMP_H)
    truth_flat[:AMP_H, col_full_dead] = True
    rows = _scatter_rows(rng, AMP_H + 20, 200, 60)
    flat[rows, col_part_flat] *= 0.5
    truth_flat[AMP_H + 20 : AMP_H + 220, col_part_flat] = True
    flat_mask = np.zeros(SHAPE, np.uint8)
    flat_mask[300:303, 100:104] |= masks.BIT["NO_DATA"]
    flat_mask[120, 400] |= masks.BIT["BAD"]  # combine had no good input
    flat_mask[121, 400] |= masks.BIT["SAT"]  # not a no-data bit
    truth_nodata |= (flat_mask & masks.bits("NO_DATA", "BAD")) != 0

    border = border_mask(SHAPE, 5)
    return dict(
        dark=dark,
        flat=flat,
        flat_mask=flat_mask,
        truth_dark=truth_dark,
        truth_flat=truth_flat,
        truth_nodata=truth_nodata,
        border=border,
        truth=truth_dark | truth_flat | truth_nodata | border,
        warm=warm,
        col_49=(col_49_dark, rows49),
    )


def _recall_precision(found, truth):
    tp = (found & truth).sum()
    return tp / truth.sum(), tp / found.sum()


def test_clipped_mean_std():
    rng = np.random.default_rng(1)
    v = rng.normal(1.0, 0.01, 100_000)
    v[:500] = 0.3  # 0.5 % outliers
    v[500:510] = np.nan
    mean, std = clipped_mean_std(v)
    assert mean == pytest.approx(1.0, abs=3 * 0.01 / np.sqrt(v.size) + 1e-4)
    assert std == pytest.approx(0.01, rel=0.03)  # 3-sigma clipping trims ~1.5 % of the width
    assert np.isnan(clipped_mean_std(np.array([np.nan]))[0])


def test_find_defects_recall_precision(detector):
    d = detector
    res = find_defects(REGIONS, dark=d["dark"], flat=d["flat"], flat_mask=d["flat_mask"])
    recall, precision = _recall_precision(res.mask, d["truth"])
    assert recall >= 0.99 and precision >= 0.99, (recall, precision)
    # away from the border (which alone is 10020 px) as well
    inner = ~d["border"]
    r_in, p_in = _recall_precision(res.mask & inner, d["truth"] & inner)
    assert r_in >= 0.99 and p_in >= 0.99, (r_in, p_in)
    # per source
    assert _recall_precision(res.dark, d["truth_dark"]) == (1.0, 1.0)
    assert _recall_precision(res.flat, d["truth_flat"]) == (1.0, 1.0)
    assert np.array_equal(res.no_data, d["truth_nodata"])
    assert res.border.sum() == 512 * 500 - 502 * 490
    assert not (res.mask & d["warm"] & ~d["truth"]).any()  # warm pixels are not defects
    counts = res.counts()
    assert counts["total"] == int(d["truth"].sum())
    # the stored product reproduces the mask and is compact
    boxes = res.boxes
    assert np.array_equal(boxes_to_mask(boxes, SHAPE), res.mask)
    assert len(boxes) < 0.2 * res.mask.sum()


def test_defects_from_one_source_only(detector):
    d = detector
    res = find_defects(REGIONS, dark=d["dark"])
    assert res.flat is None
    expected = d["truth_dark"] | d["border"] | (~np.isfinite(d["dark"]))
    assert np.array_equal(res.mask, expected)
    res = find_defects(REGIONS, flat=d["flat"], config=DefectConfig(border=0))
    assert not res.border.any()
    assert np.array_equal(res.mask, d["truth_flat"] | (~np.isfinite(d["flat"])))
    with pytest.raises(ValueError):
        find_defects(REGIONS)
    with pytest.raises(ValueError):
        find_defects(REGIONS, dark=d["dark"], flat=d["flat"][:, :-1])


def test_dark_thresholds(detector):
    d = detector
    hot = find_dark_defects(d["dark"], REGIONS)
    assert not (hot & d["warm"]).any()
    # a 1 e-/s threshold, or a sigma cut (warm pixels are >= 19 sigma), catches them
    assert (find_dark_defects(d["dark"], REGIONS, threshold=1.0) & d["warm"]).sum() == d["warm"].sum()
    sig = find_dark_defects(d["dark"], REGIONS, threshold=None, nsigma=10.0)
    assert (sig & d["warm"]).sum() == d["warm"].sum()
    assert not (sig & ~(d["warm"] | d["truth_dark"])).any()
    # NaN pixels are never "hot" here (they are no-data defects)
    assert not hot[~np.isfinite(d["dark"])].any()


def test_flat_thresholds():
    rng = np.random.default_rng(7)
    regions = [(slice(0, 100), slice(0, 50)), (slice(0, 100), slice(50, 100))]
    flat = np.empty((100, 100))
    flat[:, :50] = 0.8 * (1 + rng.normal(0, 0.005, (100, 50)))
    flat[:, 50:] = 1.2 * (1 + rng.normal(0, 0.005, (100, 50)))
    # relative to each amp's own mean: 0.85*0.8, 0.93*0.8 (kept), 1.15*1.2, 1.05*1.2 (kept)
    flat[10, 10], flat[20, 20] = 0.85 * 0.8, 0.93 * 0.8
    flat[10, 60], flat[20, 70] = 1.15 * 1.2, 1.05 * 1.2
    bad = find_flat_defects(flat, regions)
    assert set(zip(*np.nonzero(bad), strict=False)) == {(10, 10), (10, 60)}
    # configurable ratios and sigma cuts (noise 0.5 %: 0.93 is 14 sigma low)
    assert not find_flat_defects(flat, regions, low_ratio=0.8, high_ratio=1.2).any()
    both = find_flat_defects(flat, regions, low_ratio=None, high_ratio=None, nsigma_low=6, nsigma_high=6)
    assert set(zip(*np.nonzero(both), strict=False)) == {(10, 10), (20, 20), (10, 60), (20, 70)}
    only_low = find_flat_defects(flat, regions, high_ratio=None)
    assert set(zip(*np.nonzero(only_low), strict=False)) == {(10, 10)}


def test_column_rule_50_vs_49():
    rng = np.random.default_rng(3)
    regions = [(slice(0, 250), slice(0, 64)), (slice(250, 500), slice(0, 64))]
    m = np.zeros((500, 64), bool)
    r50 = _scatter_rows(rng, 30, 171, 50)  # 30..200
    r49 = _scatter_rows(rng, 30, 171, 49)
    m[r50, 5] = True
    m[r49, 6] = True
    # 30 + 30 bad pixels in one column but split across two amps: not filled
    m[rng.choice(np.arange(0, 250), 30, replace=False), 7] = True
    m[rng.choice(np.arange(250, 500), 30, replace=False), 7] = True
    out = fill_bad_columns(m, regions, 50)
    expected = m.copy()
    expected[30:201, 5] = True
    assert np.array_equal(out, expected)
    assert not np.array_equal(out, m)  # input untouched, output changed
    assert m[30:201, 5].sum() == 50
    # threshold is configurable: 49 now fills column 6 too
    out49 = fill_bad_columns(m, regions, 49)
    assert out49[30:201, 6].all() and out49[30:201, 5].all()
    assert np.array_equal(fill_bad_columns(m, regions, None), m)
    assert np.array_equal(fill_bad_columns(m, regions, 51), m)  # 50 < 51: nothing filled
    assert fill_bad_columns(m, regions, 30)[:, 7].sum() > 60  # per amp 30 >= 30


def test_column_rule_in_detector(detector):
    d = detector
    res = find_defects(REGIONS, dark=d["dark"], config=DefectConfig(border=0))
    col, rows = d["col_49"]
    assert res.mask[:, col].sum() == 49
    assert res.mask[rows, col].all()


def test_border_and_no_data():
    assert border_mask((20, 30), 5).sum() == 20 * 30 - 10 * 20
    assert not border_mask((20, 30), 0).any()
    assert border_mask((20, 30), 1)[[0, -1], :].all() and border_mask((20, 30), 1)[:, [0, -1]].all()
    with pytest.raises(ValueError):
        border_mask((20, 30), -1)
    # NaNs do not spoil the statistics of their amp
    flat = np.ones((40, 40))
    flat[:5, :5] = np.nan
    flat[20, 20] = 0.5
    res = find_defects([(slice(0, 40), slice(0, 40))], flat=flat, config=DefectConfig(border=0))
    assert res.mask.sum() == 26 and res.mask[:5, :5].all() and res.mask[20, 20]


def test_boxes_round_trip():
    rng = np.random.default_rng(9)
    shape = (300, 257)
    boxes = []
    for _ in range(200):
        w, h = rng.integers(1, 30, 2)
        x0, y0 = rng.integers(0, shape[1] - w), rng.integers(0, shape[0] - h)
        boxes.append((x0, y0, w, h))
    boxes = np.array(boxes)
    mask = boxes_to_mask(boxes, shape)
    b2 = mask_to_boxes(mask)
    mask2 = boxes_to_mask(b2, shape)
    assert np.array_equal(mask, mask2)
    b3 = mask_to_boxes(mask2)
    assert np.array_equal(b2, b3) and b2.dtype == np.int32
    # canonical boxes never overlap: their areas add up to the mask
    assert (b2[:, 2] * b2[:, 3]).sum() == mask.sum()
    # simple shapes are one box each
    m = np.zeros(shape, bool)
    m[10:60, 100] = True
    m[200:210, 20:40] = True
    assert mask_to_boxes(m).tolist() == [[100, 10, 1, 50], [20, 200, 20, 10]]
    assert mask_to_boxes(np.zeros(shape, bool)).shape == (0, 4)
    assert not boxes_to_mask(np.zeros((0, 4)), shape).any()
    # random pixel noise masks round-trip too
    noise = rng.random(shape) < 0.3
    assert np.array_equal(boxes_to_mask(mask_to_boxes(noise), shape), noise)


def test_boxes_outside_image():
    with pytest.raises(ValueError):
        boxes_to_mask([[95, 0, 10, 1]], (10, 100))
    with pytest.raises(ValueError):
        boxes_to_mask([[0, 0, 0, 1]], (10, 100))
    m = boxes_to_mask([[95, -2, 10, 4]], (10, 100), clip=True)
    assert m.sum() == 5 * 2 and m[:2, 95:].all()


def test_table_round_trip(tmp_path, detector):
    d = detector
    res = find_defects(REGIONS, dark=d["dark"], flat=d["flat"], flat_mask=d["flat_mask"])
    table = mask_to_table(res.mask)
    assert table.colnames == list(BOX_COLUMNS)
    assert all(table[c].dtype == np.int32 for c in BOX_COLUMNS)
    assert (table.meta["DET_NY"], table.meta["DET_NX"]) == SHAPE
    for name in ("defects.fits", "defects.ecsv"):
        path = tmp_path / name
        table.write(path)
        back = Table.read(path)
        assert all(back[c].dtype.kind == "i" and back[c].dtype.itemsize == 4 for c in BOX_COLUMNS)
        assert np.array_equal(table_to_boxes(back), res.boxes)
        assert np.array_equal(table_to_mask(back), res.mask)
    empty = boxes_to_table(np.zeros((0, 4)))
    assert len(empty) == 0 and table_to_boxes(empty).shape == (0, 4)
    with pytest.raises(ValueError):
        table_to_mask(empty)  # no shape anywhere
    with pytest.raises(ValueError):
        table_to_boxes(Table({"x0": [1]}))


def test_apply_defects():
    shape = (20, 30)
    defects = np.zeros(shape, bool)
    defects[5:8, 10] = True
    bm = np.zeros(shape, np.uint8)
    bm[5, 10] = masks.BIT["SAT"]
    bm[0, 0] = masks.BIT["CR"]
    for form in (defects, mask_to_boxes(defects), mask_to_table(defects)):
        out = apply_defects(bm, form)
        assert np.array_equal((out & masks.BIT["BAD"]) != 0, defects)
        assert out[5, 10] == masks.bits("SAT", "BAD") and out[0, 0] == masks.BIT["CR"]
    assert bm[6, 10] == 0  # input untouched
    with pytest.raises(ValueError):
        apply_defects(bm, np.zeros((5, 5), bool))


def test_interpolate_defects_plane():
    ny, nx = 60, 80
    y, x = np.mgrid[0:ny, 0:nx]
    image = 100.0 + 2.0 * x + 0.5 * y
    defects = np.zeros((ny, nx), bool)
    defects[10:50, 30] = True  # bad column: rows interpolate exactly
    defects[20:23, 40:45] = True  # block
    defects[55, :] = True  # full row: falls back to columns, exact
    bm = np.zeros((ny, nx), np.uint8)
    bm[21, 46] = masks.BIT["SAT"]  # must not be used as a source
    image_in = image.copy()
    image_in[defects] = 1e6
    image_in[21, 46] = 5e5
    out, om = interpolate_defects(image_in, defects, bm)
    expected = image.copy()
    expected[21, 46] = 5e5
    assert np.allclose(out, expected)
    assert np.array_equal((om & masks.BIT["INTRP"]) != 0, defects)
    assert np.array_equal((om & masks.BIT["BAD"]) != 0, defects)
    assert om[21, 46] == masks.BIT["SAT"]
    assert image_in[30, 30] == 1e6  # input untouched
    _, om2 = interpolate_defects(image_in, defects, set_bad=False)
    assert not (om2 & masks.BIT["BAD"]).any()


def test_interpolate_defects_border_and_corners():
    rng = np.random.default_rng(4)
    image = 10.0 + rng.normal(0, 1, (40, 50))
    defects = border_mask(image.shape, 5)
    defects[15:18, 20] = True
    bad = image.copy()
    bad[defects] = np.nan
    out, om = interpolate_defects(bad, defects)
    assert np.all(np.isfinite(out))
    # left border: nearest good pixel of the row (x = 5)
    assert np.array_equal(out[10, :5], np.full(5, image[10, 5]))
    # top border (rows 0..4) away from corners: nearest good pixel of the column (y = 5)
    assert np.array_equal(out[:5, 25], np.full(5, image[5, 25]))
    # corners get a value of the filled border, i.e. a nearby good value
    assert out[0, 0] == image[5, 5]
    # interior defect: linear between neighbours
    assert out[16, 20] == pytest.approx(0.5 * (image[16, 19] + image[16, 21]))
    assert np.array_equal((om & masks.BIT["INTRP"]) != 0, defects)
    # nothing good at all -> NaN, still flagged
    out_all, om_all = interpolate_defects(np.ones((4, 4)), np.ones((4, 4), bool))
    assert np.isnan(out_all).all() and np.all(om_all & masks.BIT["INTRP"])
