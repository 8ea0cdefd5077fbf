"""Defects pipeline (cpDefects) on simulated combined calibrations, compared
with the simulated truth maps, and the behaviour of its tasks on odd input.

What the combined calibrations can reveal, and hence the truth we score
against:

* Hot pixels are *defined* by the dark-current threshold (3 e-/s): a pixel
  at 2 e-/s is hot in the simulation's truth map but not a defect, so the
  truth is cut at the threshold (one such pixel is simulated and must *not*
  be flagged).  The combined dark of a hot pixel is its rate times
  (t_dark - 0.3 s)/t_dark (the bias holds 0.3 s of dark current) with a noise
  of ~0.05 e-/s: rates of 4 e-/s and more are 20 sigma above the threshold.
* Cold pixels are pixels whose response is below 0.9 of the amplifier mean;
  the simulated ones have relative responses 0.2-0.8, dead columns 0.05.
  Responses above 1.1 (over-responsive pixels) are "hot" on the flat; they
  are simulated with the truth's ``cold_pixels`` list (relative response
  1.3-2) and are in the truth's ``cold_mask``.  PRNU (1 % rms), vignetting
  (< 2 % across an amplifier) and the flat noise (0.45 % per pixel for 5
  flats of 10 ke-) keep normal pixels > 8 sigma away from the 0.9/1.1 cuts.
* Hot pixels do not show on the flat (it is dark-subtracted) and cold pixels
  do not show on the dark: the sources must be OR-ed.
* The 5-pixel border is a defect by definition.
"""

from __future__ import annotations

import types

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table
from conftest import run_cp_pipeline
from lsst.cpcombined.algorithms.defects import border_mask, mask_to_table, table_to_mask
from lsst.cpcombined.algorithms.masks import BIT
from lsst.cpcombined.errors import CpInputError
from lsst.cpcombined.repo.calib_tables import DEFECTS_CALIBCLS, read_defects
from lsst.cpcombined.repo.create import create_repo
from lsst.cpcombined.repo.products import to_masked_image
from lsst.cpcombined.simulation import SimulationTruth
from lsst.cpcombined.simulation.camera import SimulatedCamera
from lsst.cpcombined.tasks.measure_defects import CpMeasureDefectsConfig, CpMeasureDefectsTask
from lsst.cpcombined.tasks.merge_defects import CpMergeDefectsConfig, CpMergeDefectsTask

N_BIAS, N_DARK, N_FLAT = 5, 5, 5
DARK_TIME = 60.0
FLAT_TIME = 5.0
SCALE = 0.125
NX, NY = 512, 500  # LATISS assembled detector at SCALE
SUB_THRESHOLD = (0, 222, 111, 2.0)  # a 2 e-/s pixel: not a defect by definition


def _defect_truth() -> dict:
    rng = np.random.default_rng(42)
    rates = np.exp(rng.uniform(np.log(4.0), np.log(150.0), 30))
    hot = [[0, int(x), int(y), float(r)] for x, y, r in zip(
        rng.integers(8, NX - 8, 30), rng.integers(8, NY - 8, 30), rates, strict=False)]
    cold = [[0, int(x), int(y), float(r)] for x, y, r in zip(
        rng.integers(8, NX - 8, 30), rng.integers(8, NY - 8, 30), rng.uniform(0.2, 0.8, 30), strict=False)]
    bright = [[0, int(x), int(y), float(r)] for x, y, r in zip(
        rng.integers(8, NX - 8, 6), rng.integers(8, NY - 8, 6), rng.uniform(1.3, 2.0, 6), strict=False)]
    return {
        "seed": 3,
        "geometry_scale": SCALE,
        "hot_pixels": hot + [list(SUB_THRESHOLD)],
        "cold_pixels": cold + bright,
        # A dead column over the bottom amplifier row, and a partial one in the top row.
        "bad_columns": [[0, 100], [0, 300, 300, 420]],
        "flat_flux": 2000.0,
    }


@pytest.fixture(scope="module")
def latiss(tmp_path_factory):
    """LATISS repo with bias, dark and flat generated, then cpDefects run."""
    root = tmp_path_factory.mktemp("latiss_defects") / "repo"
    butler = create_repo(root)
    truth = SimulationTruth("LATISS", _defect_truth())
    cam = SimulatedCamera(butler, truth)
    biases = cam.take("bias", [0.0] * N_BIAS)
    darks = cam.take("dark", [DARK_TIME] * N_DARK)
    flats = cam.take("flat", [FLAT_TIME] * N_FLAT)
    raw = "LATISS/raw/all"
    for name, inputs, exposures in (
        ("cpBias", [raw], biases),
        ("cpDark", [raw, "gen/cpBias"], darks),
        ("cpFlat", [raw, "gen/cpBias", "gen/cpDark"], flats),
    ):
        res = run_cp_pipeline(root, "LATISS", name, inputs=inputs, output=f"gen/{name}", exposures=exposures)
        assert res.ok, res.error_summary()
    res = run_cp_pipeline(root, "LATISS", "cpDefects", inputs=["gen/cpDark", "gen/cpFlat"],
                          output="gen/cpDefects", exposures=darks + flats)
    assert res.ok, res.error_summary()
    return types.SimpleNamespace(root=root, butler=butler, truth=truth, camera=cam, darks=darks, flats=flats)


def _read_defects(butler, collection, instrument="LATISS", detector=0) -> Table:
    """The defects product read through its URI (``butler.get`` would need ip_isr)."""
    ref = butler.find_dataset("defects", collections=collection, instrument=instrument, detector=detector)
    return read_defects(butler.getURI(ref).ospath)


def _score(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = np.count_nonzero(found & truth)
    return tp / max(1, np.count_nonzero(truth)), tp / max(1, np.count_nonzero(found))


def test_defects_match_truth(latiss):
    butler = latiss.butler
    table = _read_defects(butler, "gen/cpDefects")
    assert isinstance(table, Table)
    assert table.colnames == ["x0", "y0", "width", "height"]
    assert all(table[c].dtype == np.int64 for c in table.colnames)
    assert (table.meta["DET_NY"], table.meta["DET_NX"]) == (NY, NX)
    assert table.meta["OBSTYPE"] == "defects"
    found = table_to_mask(table)

    dt = latiss.truth.detector_truth(0)
    x, y = SUB_THRESHOLD[1], SUB_THRESHOLD[2]
    hot = dt.hot_mask & (dt.dark_current >= 3.0)
    assert dt.hot_mask[y, x] and not hot[y, x]
    columns = np.zeros_like(hot)
    columns[0:250, 100] = True
    columns[300:420, 300] = True
    assert np.all(dt.cold_mask[columns])
    cold = dt.cold_mask & ~columns
    border = border_mask((NY, NX), 5)
    truth = hot | dt.cold_mask | border

    recall, precision = _score(found, truth)
    assert recall >= 0.99 and precision >= 0.99, (recall, precision)
    for name, m in (("hot", hot), ("cold/bright", cold), ("columns", columns), ("border", border)):
        r, _ = _score(found, m)
        assert r >= 0.99, (name, r)
    # Exact on these clean simulations: every truth pixel found, nothing else.
    assert np.array_equal(found, truth), (np.count_nonzero(found & ~truth), np.count_nonzero(truth & ~found))
    assert not found[y, x]  # the 2 e-/s pixel is below the threshold
    # Metadata counts add up.
    assert table.meta["CPC_N_PIXELS"] == np.count_nonzero(found)
    assert table.meta["CPC_N_PIXELS_BORDER"] == np.count_nonzero(border)


def test_defects_in_ip_isr_layout(latiss):
    """The defects file is ip_isr's: an empty primary HDU, then a table of
    int64 x0, y0, width, height with ip_isr's metadata; recorded under
    obs_base's FitsGenericFormatter."""
    import astropy.io.fits as fits

    butler = latiss.butler
    ref = butler.find_dataset("defects", collections="gen/cpDefects", instrument="LATISS", detector=0)
    assert butler._datastore.getStoredItemsInfo(ref)[0].formatter == (
        "lsst.obs.base.formatters.fitsGeneric.FitsGenericFormatter"
    )
    with fits.open(butler.getURI(ref).ospath) as hdul:
        assert len(hdul) == 2 and hdul[0].header["NAXIS"] == 0 and len(hdul[0].header) <= 6
        h = hdul[1].header
        assert [h[f"TTYPE{i}"] for i in range(1, 5)] == ["x0", "y0", "width", "height"]
        assert [h[f"TFORM{i}"] for i in range(1, 5)] == ["K"] * 4
        assert h["OBSTYPE"] == "defects" and h["defects_SCHEMA"] == "" and h["defects_VERSION"] == 2.0
        assert h["CALIBCLS"] == DEFECTS_CALIBCLS
        assert (h["INSTRUME"], h["DETECTOR"], h["DET_NAME"], h["RAFTNAME"], h["SLOTNAME"]) == (
            "LATISS", 0, "RXX_S00", "RXX", "S00")
        assert h["DET_SER"] and h["CALIBDATE"].startswith(h["CALIB_CREATION_DATE"])
        # ip_isr's CALIB_ID leaves detector 0 out (a falsy value).
        calib_id = f"instrument=LATISS raftName=RXX detectorName=RXX_S00 calibDate={h['CALIBDATE']}"
        assert h["CALIB_ID"] == calib_id
        assert "CALIB_CREATION_TIME" in h and "FILTER" not in h and "SEQFILE" not in h
        assert h["LSST BUTLER DATASETTYPE"] == "defects"
        assert len(hdul[1].data) == len(_read_defects(butler, "gen/cpDefects"))


def test_each_source_finds_its_defects(latiss):
    butler = latiss.butler
    dt = latiss.truth.detector_truth(0)
    kw = dict(collections="gen/cpDefects", instrument="LATISS", detector=0,
              parameters={"strip_astropy_meta_yaml": False})
    dark = table_to_mask(butler.get("cpcDefectsFromDark", **kw))
    flat = table_to_mask(butler.get("cpcDefectsFromFlat", **kw))
    hot = dt.hot_mask & (dt.dark_current >= 3.0)
    # The dark sees the hot pixels only; the flat the cold/bright pixels and columns only.
    assert np.array_equal(dark, hot)
    assert np.array_equal(flat, dt.cold_mask)
    # No border in the per-source tables: the merge adds it.
    border = border_mask(dark.shape, 5)
    assert not (dark & border & ~hot).any() and not (flat & border & ~dt.cold_mask).any()


def test_defects_usable_by_isr(latiss):
    """The defects product is what CpIsrTask expects (dimensions, storage class)."""
    from lsst.cpcombined.tasks.isr import CpIsrConfig, CpIsrConnections

    cfg = CpIsrConfig()
    cfg.doDefects = True
    conn = CpIsrConnections(config=cfg)
    dstype = latiss.butler.get_dataset_type("defects")
    assert dstype.storageClass_name == conn.defects.storageClass
    assert set(dstype.dimensions.names) == set(conn.defects.dimensions)
    assert dstype.isCalibration()


# -- LSSTComCam ---------------------------------------------------------------------


def test_comcam_defects_pipeline(tmp_path):
    root = tmp_path / "repo"
    butler = create_repo(root)
    truth = SimulationTruth("LSSTComCam", {
        "seed": 8, "geometry_scale": 0.0625, "hot_pixels": [[4, 40, 30, 20.0]],
        "cold_pixels": [[4, 200, 100, 0.3]], "bad_columns": [[4, 150]],
    })
    cam = SimulatedCamera(butler, truth, detectors=[4])
    biases = cam.take("bias", [0.0] * 3)
    darks = cam.take("dark", [30.0] * 3)
    flats = cam.take("flat", [5.0] * 3)
    raw = "LSSTComCam/raw/all"
    for name, inputs, exposures in (
        ("cpBias", [raw], biases),
        ("cpDark", [raw, "gen/cpBias"], darks),
        ("cpFlat", [raw, "gen/cpBias", "gen/cpDark"], flats),
        ("cpDefects", ["gen/cpDark", "gen/cpFlat"], darks + flats),
    ):
        res = run_cp_pipeline(root, "LSSTComCam", name, inputs=inputs, output=f"gen/{name}",
                              exposures=exposures)
        assert res.ok, (name, res.error_summary())
    table = _read_defects(butler, "gen/cpDefects", instrument="LSSTComCam", detector=4)
    calib_id = "instrument=LSSTComCam raftName=R22 detectorName=R22_S11 detector=4 "
    assert table.meta["CALIB_ID"].startswith(calib_id)
    found = table_to_mask(table)
    dt = truth.detector_truth(4)
    expected = dt.hot_mask | dt.cold_mask | border_mask(found.shape, 5)
    assert np.array_equal(found, expected)


# -- the tasks on odd input (no butler) ---------------------------------------------------


def _image(value, shape=(NY, NX), unit=u.electron / u.s, mask=None, rng=None):
    rng = rng or np.random.default_rng(0)
    img = value + 0.01 * rng.standard_normal(shape)
    bitmask = np.zeros(shape, np.uint8) if mask is None else mask
    return img, to_masked_image(img, np.full(shape, 1e-4), bitmask, unit=unit)


def test_dark_in_wrong_units_is_an_error():
    _, dark = _image(0.02, unit=u.adu / u.s)
    task = CpMeasureDefectsTask(config=CpMeasureDefectsConfig())
    with pytest.raises(CpInputError, match="not e-/s"):
        task.run([dark], instrument="LATISS", detector=0)


def test_no_data_pixels_are_defects_and_flats_are_ored():
    cfg = CpMeasureDefectsConfig()
    cfg.sourceType = "flat"
    task = CpMeasureDefectsTask(config=cfg)
    mask = np.zeros((NY, NX), np.uint8)
    mask[:250, 64:128] = BIT["NO_DATA"] | BIT["BAD"]  # an amplifier the combine could not fill
    img1, _ = _image(1.0, unit=None, mask=mask)
    img2 = 1.0 + 0.01 * np.random.default_rng(1).standard_normal((NY, NX))
    img1[10, 10] = np.nan
    flat1 = to_masked_image(img1, np.full((NY, NX), 1e-4), mask, unit=None)
    img2[300, 300] = 0.5  # cold only in the second filter
    flat2 = to_masked_image(img2, np.full((NY, NX), 1e-4), np.zeros((NY, NX), np.uint8), unit=None)
    out = task.run([flat1, flat2], instrument="LATISS", detector=0, physical_filters=["r", "g"]).outputDefects
    found = table_to_mask(out)
    assert found[:250, 64:128].all() and found[10, 10] and found[300, 300]
    assert found.sum() == 250 * 64 + 2
    assert out.meta["CPC_N_NO_DATA_PIXELS"] == 250 * 64 + 1 and out.meta["CPC_N_DEFECT_PIXELS"] == 1
    # Merge: border added, sources OR-ed.
    dark_def = mask_to_table(np.zeros((NY, NX), bool))
    dark_def.meta["DET_NY"], dark_def.meta["DET_NX"] = NY, NX
    merged = CpMergeDefectsTask(config=CpMergeDefectsConfig()).run(
        {"dark": dark_def, "flat": out}, instrument="LATISS", detector=0).defects
    m = table_to_mask(merged)
    assert np.array_equal(m, found | border_mask((NY, NX), 5))


def test_merge_needs_consistent_shapes():
    a = mask_to_table(np.zeros((NY, NX), bool))
    b = mask_to_table(np.zeros((NY // 2, NX), bool))
    task = CpMergeDefectsTask(config=CpMergeDefectsConfig())
    with pytest.raises(CpInputError, match="disagree on the detector shape"):
        task.run({"dark": a, "flat": b}, instrument="LATISS", detector=0)
    del b.meta["DET_NY"]
    with pytest.raises(CpInputError, match="do not record the detector shape"):
        task.run({"dark": a, "flat": b}, instrument="LATISS", detector=0)
