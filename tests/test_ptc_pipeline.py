"""Photon transfer curve pipeline (cpPtc) on simulated flats, compared with
the simulated truth, and its behaviour on bad input.

Statistics behind the tolerances (main test, ``geometry_scale`` 0.5)
---------------------------------------------------------------------
Each amplifier keeps 214 x 960 = 205 440 pixels after the 20-pixel edge cut,
so each pair's variance has a relative error sqrt(2/205440) = 0.31 %.  With
the 30-pair ladder below (28 pairs under the full well) the eq. 16 fit gives
expected errors of 0.12 % on the gain, 0.30 % on the read noise and 0.8 % on
a00 (Monte-Carlo of the fit; the fit's own errors agree), so the
requirements -- gain within 0.5 %, noise within 2 %, a00 within 10 % -- are
4 sigma or more for every one of the 16 amplifiers.  At ``geometry_scale``
0.125 (5040 pixels per amplifier) the gain error would be 0.8 %: 0.5 % is
not reachable there, hence the larger frames for this one test (~1.5 min).

The read noise compared with the truth is the fitted noise divided by the
known noise of the per-row overscan median (``row_noise_factor``, +2.7 % in
variance for 58 columns); the raw fit (``noise_fit``) is 1.3 % higher.

Turnoff: the simulator clips electrons at ``full_well``.  The ISR of the PTC
does not set SAT at the nominal 142857 ADU (which, bias level included, is
~138 ke- for these gains, *below* the 150 ke- full well), so the PTC sees the
sensor's saturation as a variance turnover.  The turnoff (largest kept mean)
is the amp mean at which the brightest pixels start to clip, i.e. the full
well minus ~3x the pixel-to-pixel spread of the signal; to compare it with
the full well within one sampling step the illumination is flat (no
vignetting) and the PRNU 0.3 %, so the spread is ~600 e- at 150 ke-.  The
ladder has a pair at FW - 2500 e- (kept: 4 sigma below) and two above FW.
"""

from __future__ import annotations

import types
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table
from conftest import exposure_query, run_cp_pipeline
from lsst.cpcombined.algorithms.ptc import ptc_model
from lsst.cpcombined.repo.calib_tables import (
    PTC_CALIBCLS,
    PTC_COLUMNS,
    calib_identity,
    check_ptc_table,
    defects_table,
    ptc_amp_results,
    read_ptc,
)
from lsst.cpcombined.repo.create import create_repo
from lsst.cpcombined.repo.products import to_masked_image
from lsst.cpcombined.script.pipetask import pipetask_run_args, run_pipetask
from lsst.cpcombined.simulation import SimulationTruth
from lsst.cpcombined.simulation.camera import SimulatedCamera
from lsst.cpcombined.tasks.ptc_solve import CpPtcSolveConfig, CpPtcSolveTask
from lsst.daf.butler import DatasetType

FLUX = 10000.0  # e-/s
FULL_WELL = 150000.0  # e-
A00 = -2.0e-6
STEP = 6000.0  # e- between consecutive pairs (< the 9000 e- gap cut)
LEVELS = [50.0, 300.0, 1200.0] + [STEP * k - 2500.0 for k in range(1, 28)]  # 30 pairs, last two past FW
N_BELOW_FW = sum(lv < FULL_WELL for lv in LEVELS)

BIG_TRUTH = {"seed": 5, "geometry_scale": 0.5, "vignetting": 0.0, "prnu": 0.003, "flat_flux": FLUX,
             "full_well": FULL_WELL, "a00": A00}
PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def _run(root, instrument, spec, *, inputs, output, exposures, config=None):
    """Run ``pipelines/<instrument>/<spec>`` where spec may name a subset
    (``cpPtc.yaml#gainFromFlatPairs``)."""
    args = pipetask_run_args(root, f"{PIPELINES / instrument / spec}", inputs=inputs, output=output,
                             data_query=exposure_query(instrument, exposures), config=config,
                             log_level="WARNING")
    return run_pipetask(args)


def _read_ptc(butler, collection, detector=0):
    """The ptc product read through its URI (``butler.get`` would need ip_isr),
    and cp_combined's per-amplifier view of it."""
    ref = butler.find_dataset("ptc", collections=collection, instrument="LATISS", detector=detector)
    return ptc_amp_results(read_ptc(butler.getURI(ref).ospath))


def _gen_bias_dark(root, instrument, cam, n_bias=2, n_dark=1, dark_time=10.0):
    raw = f"{instrument}/raw/all"
    biases = cam.take("bias", [0.0] * n_bias)
    darks = cam.take("dark", [dark_time] * n_dark)
    for name, inputs, exposures in (("cpBias", [raw], biases), ("cpDark", [raw, "gen/cpBias"], darks)):
        res = run_cp_pipeline(root, instrument, name, inputs=inputs, output=f"gen/{name}",
                              exposures=exposures)
        assert res.ok, res.error_summary()
    return [raw, "gen/cpBias", "gen/cpDark"]


def _take_pairs(cam, levels, **kwargs):
    return cam.take("flat", [lv / FLUX for lv in levels for _ in range(2)], **kwargs)


# -- the main PTC against truth ------------------------------------------------------------


def _put_truth_calibs(butler, truth, detector=0, run="truth/calib"):
    """Write the exact bias (e-) and dark (e-/s) of the truth into a RUN
    collection: the combined ones of the generation pipelines at this size
    would cost ~30 s of a test that is about the PTC (the small-size tests
    below use the generated ones)."""
    dt = truth.detector_truth(detector)
    shape = dt.dark_current.shape
    zeros = np.zeros(shape, np.uint8)
    butler.registry.registerRun(run)
    for name, image, unit in (("bias", dt.bias_structure * dt.amp_value(dt.gain), u.electron),
                              ("dark", dt.dark_current, u.electron / u.s)):
        butler.registry.registerDatasetType(
            DatasetType(name, ("instrument", "detector"), "ExposureF", isCalibration=True,
                        universe=butler.dimensions))
        butler.put(to_masked_image(image, np.zeros(shape), zeros, unit=unit), name, run=run,
                   instrument=truth.instrument, detector=detector)
    return [f"{truth.instrument}/raw/all", run]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """30 flat pairs at geometry_scale 0.5: the quick-gain subset alone, then
    the solve step on its output."""
    root = tmp_path_factory.mktemp("ptc_big") / "repo"
    butler = create_repo(root)
    truth = SimulationTruth("LATISS", BIG_TRUTH)
    cam = SimulatedCamera(butler, truth)
    inputs = _put_truth_calibs(butler, truth)
    flats = _take_pairs(cam, LEVELS)
    quick = _run(root, "LATISS", "cpPtc.yaml#gainFromFlatPairs", inputs=inputs, output="ptc/extract",
                 exposures=flats)
    assert quick.ok, quick.error_summary()
    solve = _run(root, "LATISS", "cpPtc.yaml#cpPtcSolve", inputs=["ptc/extract"], output="ptc/solve",
                 exposures=flats)
    assert solve.ok, solve.error_summary()
    return types.SimpleNamespace(root=root, butler=butler, truth=truth, flats=flats, quick=quick, solve=solve)


def test_ptc_matches_truth(big):
    ptc = _read_ptc(big.butler, "ptc/solve")
    assert isinstance(ptc, Table) and len(ptc) == 16
    for col in ("amplifier", "gain", "gain_err", "noise", "noise_err", "a00", "a00_err", "turnoff", "bad",
                "flags", "reason", "exp_times", "means", "variances", "kept"):
        assert col in ptc.colnames, col
    assert str(ptc["gain"].unit) == "electron / adu"
    dt = big.truth.detector_truth(0)
    dev = {"gain": [], "noise": [], "a00": []}
    for row in ptc:
        amp = row["amplifier"]
        g, rn = dt.gain[amp], dt.read_noise[amp]
        assert not row["bad"], (amp, row["flags"], row["reason"])
        # Expected statistical errors (see the module docstring): 0.12 %, 0.3 %, 0.8 %.
        assert row["gain_err"] / g < 0.002 and row["noise_err"] / rn < 0.005 and row["a00_err"] / -A00 < 0.015
        # Digitisation adds g^2/12 ADU-equivalent to the noise term (0.07 % on the noise).
        rn_expected = np.sqrt(rn**2 + g**2 / 12)
        dev["gain"].append(row["gain"] / g - 1)
        dev["noise"].append(row["noise"] / rn_expected - 1)
        dev["a00"].append(row["a00"] / A00 - 1)
        assert abs(row["gain"] / g - 1) < 0.005, (amp, row["gain"], g)
        assert abs(row["noise"] / rn - 1) < 0.02, (amp, row["noise"], rn)
        assert abs(row["a00"] / A00 - 1) < 0.10, (amp, row["a00"])
        # The raw fitted noise includes the overscan median's noise (+1.3 %).
        assert row["noise_fit"] / row["noise"] == pytest.approx(np.sqrt(row["row_noise_factor"]))
        assert 1.02 < row["row_noise_factor"] < 1.03
        # Turnoff within one sampling step below the full well.
        turnoff_e = row["turnoff"] * g
        assert FULL_WELL - STEP <= turnoff_e <= FULL_WELL, (amp, turnoff_e)
        # Points: the two pairs past the full well are saturated, the rest kept.
        assert len(row["means"]) == len(LEVELS)
        assert np.count_nonzero(row["kept"]) == N_BELOW_FW, (amp, row["kept"])
        assert np.all(row["saturated"][N_BELOW_FW:]) and not np.any(row["saturated"][:N_BELOW_FW])
        np.testing.assert_allclose(row["exp_times"], np.array(LEVELS) / FLUX, rtol=1e-6)
        kept = row["kept"]
        np.testing.assert_allclose(row["model_variances"][kept],
                                   ptc_model(row["means"][kept], row["a00"], row["gain"], row["n00"]))
    # The deviations are statistical: no common bias beyond the errors.
    for key, sigma in (("gain", 0.0012), ("noise", 0.003), ("a00", 0.008)):
        values = np.array(dev[key])
        assert abs(values.mean()) < 3 * sigma / np.sqrt(len(values)) + 0.5 * sigma, (key, values.mean())
    assert not [e for e in big.solve.errors if "bad" in e]


def test_ptc_in_ip_isr_layout(big):
    """The ptc file is ip_isr's version 2.6 PTC table: every column ip_isr
    reads, with its dtype and per-row shape, then cp_combined's CPC_
    columns; ip_isr's metadata; recorded under obs_base's
    FitsGenericFormatter."""
    import astropy.io.fits as fits

    butler = big.butler
    ref = butler.find_dataset("ptc", collections="ptc/solve", instrument="LATISS", detector=0)
    assert butler.get_dataset_type("ptc").storageClass_name == "PhotonTransferCurveDataset"
    assert butler._datastore.getStoredItemsInfo(ref)[0].formatter == (
        "lsst.obs.base.formatters.fitsGeneric.FitsGenericFormatter"
    )
    path = butler.getURI(ref).ospath
    table = read_ptc(path)
    check_ptc_table(table)
    names = list(PTC_COLUMNS)
    assert table.colnames[: len(names)] == names
    assert all(c.startswith("CPC_") for c in table.colnames[len(names):])
    n, s = len(LEVELS), 11  # 30 pairs, lags 0..10
    with fits.open(path) as hdul:
        assert len(hdul) == 2 and hdul[0].header["NAXIS"] == 0
        h = hdul[1].header
        forms = {h[f"TTYPE{i}"]: h[f"TFORM{i}"] for i in range(1, h["TFIELDS"] + 1)}
    expected = {"AMPLIFIER_NAME": "3A", "COV_MATRIX_SIDE": "K", "INPUT_EXP_ID_PAIRS": f"{2 * n}K",
                "EXP_ID_MASK": f"{n}L", "RAW_MEANS": f"{n}D", "GAIN": "D", "PTC_FIT_PARS": "3D",
                "A_MATRIX": "64D", "BAD_AMPS": "3A", "NPIXEL_COVARIANCES": "K",
                "COVARIANCES": f"{n * s * s}D", "COVARIANCES_MODEL": f"{n * 64}D",
                "COVARIANCES_SQRT_WEIGHTS": f"{n * s * s}D", "FINAL_MEANS": f"{n}D"}
    assert {k: forms[k] for k in expected} == expected
    md = table.meta
    assert (md["OBSTYPE"], md["PTC_VERSION"], md["PTC_FIT_TYPE"], md["CALIBCLS"]) == (
        "PTC", 2.6, "EXPAPPROXIMATION", PTC_CALIBCLS)
    assert md["PTC_SCHEMA"] == "Gen3 Photon Transfer Curve"
    assert (md["INSTRUME"], md["DETECTOR"], md["DET_NAME"], md["RAFTNAME"], md["SLOTNAME"]) == (
        "LATISS", 0, "RXX_S00", "RXX", "S00")
    assert md["FILTER"] == md["SEQFILE"] == md["SEQNAME"] == md["SEQCKSUM"] == ""  # unset, as ip_isr writes
    assert md["CALIB_ID"].startswith("instrument=LATISS raftName=RXX detectorName=RXX_S00 calibDate=")
    assert md["LSST BUTLER DATASETTYPE"] == "ptc"
    # Values: the eq. 16 parameters, noise in electrons, NaN for what is not measured.
    assert list(table["PTC_FIT_TYPE"]) == ["EXPAPPROXIMATION"] * 16 and len(table["BAD_AMPS"][0]) == 0
    np.testing.assert_array_equal(table["PTC_FIT_PARS"][:, 1], table["GAIN"])
    n00 = np.asarray(table["PTC_FIT_PARS"])[:, 2]
    np.testing.assert_allclose(table["NOISE"], np.sqrt(n00 / table["CPC_ROW_NOISE_FACTOR"]))
    kept = np.asarray(table["EXP_ID_MASK"])
    assert np.array_equal(np.isfinite(table["FINAL_MEANS"]), kept)
    final, raw = np.asarray(table["FINAL_MEANS"]), np.asarray(table["RAW_MEANS"])
    np.testing.assert_array_equal(final[kept], raw[kept])
    assert np.all(np.isnan(table["ROW_MEAN_VARIANCE"])) and np.all(np.isnan(table["PTC_ROLLOFF"]))
    assert np.all(np.isnan(table["A_MATRIX"]))  # no full-covariance fit by default
    np.testing.assert_array_equal(table["GAIN_UNADJUSTED"], table["GAIN"])
    assert np.all(np.isfinite(table["INPUT_EXP_PAIR_MJD_START"]))
    pairs = np.asarray(table["INPUT_EXP_ID_PAIRS"])
    assert pairs.shape == (16, n, 2) and np.all(pairs[:, :, 1] > pairs[:, :, 0])
    # Overscan level of the simulated raws (ADU) and its spread over the kept pairs.
    assert np.all(np.isfinite(table["OVERSCAN_MEDIAN"])) and np.all(table["OVERSCAN_MEDIAN_SIGMA"] >= 0)
    # cp_pipe's covariance weights: 1/sqrt(Var(C00)) = sqrt(n/2)/C00 at lag 0.
    cov = np.asarray(table["COVARIANCES"]).reshape(16, n, s, s)
    w = np.asarray(table["COVARIANCES_SQRT_WEIGHTS"]).reshape(16, n, s, s)
    npairs = np.asarray(table["CPC_COV_NPAIRS"]).reshape(16, n, s, s)
    np.testing.assert_allclose(w[:, :, 0, 0], np.sqrt(npairs[:, :, 0, 0] / 2) / cov[:, :, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(w[:, :, 1, 0], np.sqrt(npairs[:, :, 1, 0]) / cov[:, :, 0, 0], rtol=1e-12)


def test_dead_column_left_out(big):
    """The simulated dead column (response 0.05, 1000 pixels of C00) would
    lower C00's variances by its 0.4 % of the pixels and bias its gain high by
    as much; the fixed-pattern cut on the pairs' mean images leaves it out."""
    table = big.butler.get("cpcPtcExtract", collections="ptc/extract", instrument="LATISS", detector=0)
    dt = big.truth.detector_truth(0)
    assert np.count_nonzero(dt.cold_mask[:1000, :254]) >= 1000  # C00 holds the dead column
    sub = table[(table["amplifier"] == "C00") & (table["mean"] * dt.gain["C00"] > 20e3)]
    assert np.all(sub["n_fixed_pattern"] >= 1000)
    others = table[(table["amplifier"] == "C01") & (table["mean"] * dt.gain["C01"] > 20e3)]
    assert np.all(others["n_fixed_pattern"] < 20)


def test_quick_gain_from_flat_pairs(big):
    """The #gainFromFlatPairs subset alone: per-amp gains from the pairs."""
    table = big.butler.get("cpcPtcExtract", collections="ptc/extract", instrument="LATISS", detector=0)
    assert len(table) == 16 * len(LEVELS)
    # The subset wrote no ptc.
    assert not _has(big.butler, "ptc", "ptc/extract")
    dt = big.truth.detector_truth(0)
    for amp in dt.gain:
        sub = table[table["amplifier"] == amp]
        g = dt.gain[amp]
        quick = sub["gain_quick"][0]
        # Covariances summed to lag 1: per-pair error ~1.2 %, median of 28 pairs ~0.3 %, plus
        # <0.2 % of brighter-fatter variance beyond lag 1 at the top of the ramp.
        assert abs(quick / g - 1) < 0.015, (amp, quick, g)
        assert np.all(sub["gain_quick"] == quick)
        assert np.count_nonzero(sub["gain_pair_used"]) == N_BELOW_FW
        # The plain estimate mu / (C00 - rn^2) is biased high at high flux by the brighter-fatter
        # effect, by the factor predicted by eq. 16: 1/E(2 a00 N), E(x) = (exp(x) - 1)/x.
        n_e = sub["mean"] * g
        sel = sub["gain_pair_used"] & (n_e > 100e3)
        assert np.count_nonzero(sel) >= 6
        plain = sub["mean"][sel] / (sub["variance"][sel] - sub["read_noise_adu"][sel] ** 2)
        x = 2 * A00 * n_e[sel]
        predicted = g * x / np.expm1(x)
        assert np.all(plain / g > 1.15)  # > +15 % above 100 ke-
        np.testing.assert_allclose(plain / predicted, 1.0, atol=0.015)


def test_full_covariance_option(big):
    """The eq. 20 fit (off by default: ~2 s per amplifier) on two amplifiers."""
    table = big.butler.get("cpcPtcExtract", collections="ptc/extract", instrument="LATISS", detector=0)
    sub = table[np.isin(table["amplifier"], ["C10", "C05"])]
    cfg = CpPtcSolveConfig()
    cfg.doFullCovariance = True
    out = ptc_amp_results(CpPtcSolveTask(config=cfg).run(sub, instrument="LATISS", detector=0).outputPtc)
    dt = big.truth.detector_truth(0)
    for row in out:
        g = dt.gain[row["amplifier"]]
        assert not row["fullcov_bad"], row["fullcov_flags"]
        assert abs(row["fullcov_gain"] / g - 1) < 5 * row["fullcov_gain_err"] / g + 1e-3
        assert row["fullcov_gain_err"] / g < 0.004
        assert row["a_matrix"][0, 0] == pytest.approx(A00, rel=0.15)
        # Nearest-neighbour charge redistribution: positive a10, a01, and |a00| = sum of the others
        # (charge conservation) within errors.
        a = row["a_matrix"]
        assert a[1, 0] > 0 and a[0, 1] > 0
        assert 0.7 < (2 * a[1, 0] + 2 * a[0, 1]) / -a[0, 0] < 1.3
        assert 0.9 < row["fullcov_chi2_dof"] < 1.3


# -- the whole pipeline and bad input at small size ---------------------------------------

SMALL_LEVELS = [1000.0 + 7000.0 * k for k in range(8)]  # 1 ke- .. 50 ke-
SMALL_TRUTH = {"seed": 9, "geometry_scale": 0.125, "vignetting": 0.0, "prnu": 0.003, "flat_flux": FLUX,
               # The second ramp (flats 17..32 of this camera) has amplifier C03 saturated everywhere.
               "faults": [{"image_type": "flat", "exposures": list(range(17, 33)), "amplifiers": ["C03"],
                           "saturate": True}]}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptc_small") / "repo"
    butler = create_repo(root)
    truth = SimulationTruth("LATISS", SMALL_TRUTH)
    cam = SimulatedCamera(butler, truth)
    inputs = _gen_bias_dark(root, "LATISS", cam)
    ramp = _take_pairs(cam, SMALL_LEVELS)  # flats 0..15
    (odd,) = cam.take("flat", [SMALL_LEVELS[2] / FLUX])  # 16: a third flat at one exposure time
    sat_ramp = _take_pairs(cam, SMALL_LEVELS)  # 17..32: C03 saturated
    good = _take_pairs(cam, SMALL_LEVELS[:2])  # 33..36
    (r_flat,) = cam.take("flat", [4.0])  # 37
    (g_flat,) = cam.take("flat", [4.0], physical_filter="SDSSg_65mm~empty")  # 38
    single_pair = _take_pairs(cam, [20000.0])
    (lone,) = cam.take("flat", [3.3])
    past_fw = _take_pairs(cam, [200e3, 250e3, 300e3])  # every pair past the full well
    return types.SimpleNamespace(
        root=root, butler=butler, truth=truth, inputs=inputs, ramp=ramp, odd=odd, sat_ramp=sat_ramp,
        mismatched=good + [r_flat, g_flat], r_flat=r_flat, g_flat=g_flat, single_pair=single_pair, lone=lone,
        past_fw=past_fw,
    )


def _has(butler, name, collection):
    try:
        refs = butler.query_datasets(name, collections=collection, instrument="LATISS", explain=False)
        return bool(list(refs))
    except Exception:
        return False


def test_pipeline_with_an_odd_flat(small):
    res = run_cp_pipeline(small.root, "LATISS", "cpPtc", inputs=small.inputs, output="ptc/odd",
                          exposures=small.ramp + [small.odd])
    assert res.ok, res.error_summary()
    assert any(str(small.odd) in w and "ignored" in w for w in res.warnings), res.warnings
    ptc = _read_ptc(small.butler, "ptc/odd")
    dt = small.truth.detector_truth(0)
    assert len(ptc) == 16
    for row in ptc:
        assert not row["bad"], (row["amplifier"], row["reason"])
        assert small.odd not in row["exposure1"] and small.odd not in row["exposure2"]
        assert len(row["means"]) == len(SMALL_LEVELS) and np.all(row["kept"])
        # 8 pairs of 5040 pixels fitted for gain, a00 and n00: 2-3.5 % gain errors
        # (measured over realisations); the estimate agrees with the truth within them.
        g = dt.gain[row["amplifier"]]
        assert row["gain_err"] / g < 0.05
        assert abs(row["gain"] - g) < 5 * row["gain_err"], (row["amplifier"], row["gain"], g, row["gain_err"])
        assert np.isfinite(row["gain_quick"])


def test_defects_are_masked(small):
    """With a defects product in the inputs (here: the truth's), defects are
    left out of the measurement, even with the fixed-pattern cut off."""
    from lsst.cpcombined.algorithms.defects import border_mask, mask_to_table
    from lsst.cpcombined.algorithms.isr import amp_regions

    dt = small.truth.detector_truth(0)
    defect_mask = dt.hot_mask | dt.cold_mask | border_mask(dt.hot_mask.shape, 5)
    run = "truth/defects"
    small.butler.registry.registerRun(run)
    small.butler.registry.registerDatasetType(DatasetType(
        "defects", ("instrument", "detector"), "Defects", isCalibration=True,
        universe=small.butler.dimensions))
    identity = calib_identity("defects", schema="", version=2.0, calibcls="lsst.ip.isr.defects.Defects",
                              instrument="LATISS", detector=0, detector_name="RXX_S00")
    small.butler.put(defects_table(mask_to_table(defect_mask), identity), "defects", run=run,
                     instrument="LATISS", detector=0)
    res = run_cp_pipeline(small.root, "LATISS", "cpPtc", inputs=small.inputs + [run], output="ptc/defects",
                          exposures=small.ramp, config={"cpPtcExtract:fixedPatternNSigma": 0})
    assert res.ok, res.error_summary()
    table = small.butler.get("cpcPtcExtract", collections="ptc/defects", instrument="LATISS", detector=0)
    assert np.all(table["n_fixed_pattern"] == 0)
    for amp, (ys, xs) in amp_regions(small.truth.layout).items():
        inner = defect_mask[ys, xs][20:-20, 20:-20]
        npix = table[table["amplifier"] == amp]["npix"]
        # Every defect inside the measured area is out (a few more pixels are clipped).
        assert np.all(npix <= inner.size - inner.sum()), amp
        assert np.all(npix >= inner.size - inner.sum() - 5), amp
    assert np.count_nonzero(dt.cold_mask) >= 250  # the simulated dead column is among them


def test_amp_saturated_everywhere_is_flagged(small):
    res = run_cp_pipeline(small.root, "LATISS", "cpPtc", inputs=small.inputs, output="ptc/sat",
                          exposures=small.sat_ramp)
    assert res.ok, res.error_summary()
    ptc = _read_ptc(small.butler, "ptc/sat")
    bad = {row["amplifier"]: row for row in ptc if row["bad"]}
    assert set(bad) == {"C03"}
    row = bad["C03"]
    assert row["flags"] and row["reason"] and not np.any(row["kept"])
    assert "saturated everywhere" in row["reason"]
    assert np.isnan(row["turnoff_electrons"]) and np.isnan(row["gain"]) and np.isnan(row["gain_quick"])
    assert any("C03" in w and "bad PTC" in w for w in res.warnings)
    assert not res.errors  # one bad amp is a warning, not an error


def test_mismatched_filter_is_an_error(small):
    res = run_cp_pipeline(small.root, "LATISS", "cpPtc", inputs=small.inputs, output="ptc/filter",
                          exposures=small.mismatched)
    assert not res.ok
    summary = res.error_summary()
    assert "mixes filters" in summary and str(small.r_flat) in summary and str(small.g_flat) in summary
    assert "SDSSg_65mm~empty" in summary
    assert not _has(small.butler, "cpcPtcExtract", "ptc/filter")
    assert not _has(small.butler, "ptc", "ptc/filter")


def test_too_few_pairs_is_an_error(small):
    res = run_cp_pipeline(small.root, "LATISS", "cpPtc", inputs=small.inputs, output="ptc/few",
                          exposures=small.single_pair + [small.lone])
    assert not res.ok
    assert "only 1 measured flat pair" in res.error_summary(), res.error_summary()
    assert any(str(small.lone) in w and "ignored" in w for w in res.warnings)
    # The measurements are kept (extraction succeeded); no ptc is written.
    assert _has(small.butler, "cpcPtcExtract", "ptc/few") and not _has(small.butler, "ptc", "ptc/few")
    res = run_cp_pipeline(small.root, "LATISS", "cpPtc", inputs=small.inputs, output="ptc/none",
                          exposures=[small.lone])
    assert not res.ok and "no flat pair" in res.error_summary()


def test_all_amps_bad_is_written_with_an_error(small):
    res = run_cp_pipeline(small.root, "LATISS", "cpPtc", inputs=small.inputs, output="ptc/pastfw",
                          exposures=small.past_fw)
    assert res.ok, res.error_summary()
    assert any("Every amplifier" in e for e in res.errors), res.errors
    ptc = _read_ptc(small.butler, "ptc/pastfw")
    assert np.all(ptc["bad"]) and all(ptc["reason"])
    assert all("saturated everywhere" in r for r in ptc["reason"])
    assert np.all(np.isnan(ptc["gain"])) and np.all(np.isnan(ptc["noise"]))
    # Nor is there a quick gain from pairs that are all clipped.
    assert np.all(np.isnan(ptc["gain_quick"]))


@pytest.mark.parametrize("instrument", ["LATISS", "LSSTComCam"])
def test_pipelines_load(instrument, monkeypatch):
    """The per-instrument pipelines and their #gainFromFlatPairs subset."""
    from lsst.pipe.base import Pipeline

    monkeypatch.setenv("CPCOMBINED_DIR", str(PIPELINES.parent))
    full = Pipeline.from_uri(str(PIPELINES / instrument / "cpPtc.yaml")).to_graph()
    assert set(full.tasks.keys()) == {"cpPtcExtract", "cpPtcSolve"}
    assert full.tasks["cpPtcSolve"].outputs["outputPtc"].dataset_type_name == "ptc"
    assert set(full.tasks["cpPtcExtract"].prerequisite_inputs.keys()) == {"bias", "dark", "defects"}
    subset = Pipeline.from_uri(str(PIPELINES / instrument / "cpPtc.yaml") + "#gainFromFlatPairs").to_graph()
    assert set(subset.tasks.keys()) == {"cpPtcExtract"}
