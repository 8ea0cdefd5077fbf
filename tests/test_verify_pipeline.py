"""Verification pipelines (bias, dark, flat), the majority decision and
certification, run with the real ``pipetask`` on small simulated LATISS
frames (geometry_scale 0.125: 64 x 250 pixels per amp).

One module fixture simulates the frames and runs, in order:

- ``cpBias`` on 16 clean biases, ``verifyBias`` on 4 of them (internal
  verification, default thresholds), certification of the bias into
  ``LATISS/calib`` through its decision;
- ``verifyBias`` on new biases against ``LATISS/calib`` (external
  verification) with threshold T = 1, for two sets of N = 3 exposures:
  one with 1 = ⌊N/2⌋ faulty exposure (certify) and one with 2 = ⌊N/2⌋ + 1
  (do not certify);
- ``cpDark`` on 6 darks and ``verifyDark`` on them (internal);
- ``cpFlat`` on 6 flats and ``verifyFlat`` on 2 of them plus a new flat
  with an illumination gradient, and again on the 2 clean ones with a
  defect list.

The outputs have cp_verify's names and shapes: besides the numbers, the
tests read them with a reader that follows cp_verify's merge tasks and the
ScriptQueue script (``test_cp_verify_shapes``).

Noise budget of the NOISE test (SPEC §4): the overscan row median of 58
columns adds ~1.35 % to the noise, so internal verification expects
NOISE/READ_NOISE ≈ √(1 − 1/N)·1.0135 and external ≈ √(1 + 1/N)·1.0135
(1.0447 for N = 16, inside the 5 % margin by only 0.5 %).  On these small
frames each amp's ratio scatters by ~0.8 % (16000 pixels, and the overscan
read noise is measured from ~17000), so the *fault* runs against the
16-frame external reference use a 10 % NOISE margin to keep clean amps from
failing at random (measured: 12 of 46 clean amps above 1.05); the injected
extra noise (8 e- on ~8.5 e-) gives ~1.4.
"""

from __future__ import annotations

import math
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cp_pipeline
from lsst.cpcombined.algorithms import defects as defects_algo
from lsst.cpcombined.obs.instrument import get_instrument
from lsst.cpcombined.repo.calib_tables import DEFECTS_CALIBCLS, calib_identity, defects_table
from lsst.cpcombined.repo.certify import CertificationRefused, certify_calibration
from lsst.cpcombined.repo.collections import collection_exists
from lsst.cpcombined.repo.create import create_repo
from lsst.cpcombined.simulation import SimulationTruth
from lsst.cpcombined.simulation.camera import SimulatedCamera
from lsst.cpcombined.tasks.verify_decision import CpVerifyDecisionTask
from lsst.cpcombined.tasks.verify_detector import CpVerifyDetectorConfig
from lsst.daf.butler import Butler, DimensionUniverse
from lsst.pipe.base import Pipeline
from test_cp_verify_shapes import cp_verify_flat_exposure_tests, cp_verify_merge, script_decision

N_REF_BIAS = 16
N_DARK = 6
N_FLAT = 6
DARK_TIME = 30.0
FLAT_TIME = 5.0
DET = "RXX_S00"
ALL_AMPS = ("C10", "C11", "C12", "C13", "C14", "C15", "C16", "C17",
            "C07", "C06", "C05", "C04", "C03", "C02", "C01", "C00")
MEAN_FAULT_AMPS = ("C10", "C05")
NOISE_FAULT_AMP = "C13"
BAD_COLUMN_X = 150  # in C02 (x 128..191), dead over the bottom amp row
GRADIENT = 0.3
# Overscan row median of 58 columns: sqrt(1 + pi/(2*58)).
OVERSCAN_TERM = math.sqrt(1 + math.pi / (2 * 58))

TRUTH = {
    "seed": 21,
    "geometry_scale": 0.125,
    "bad_columns": [[0, BAD_COLUMN_X, 0, 250]],
    "faults": [
        # Sequence indices count every bias/flat taken by the camera: the
        # 16 reference biases are 0..15, the new ones 16..19.
        {"image_type": "bias", "exposures": [N_REF_BIAS], "amplifiers": list(MEAN_FAULT_AMPS),
         "imaging_offset_adu": 40.0},
        {"image_type": "bias", "exposures": [N_REF_BIAS + 1], "amplifiers": [NOISE_FAULT_AMP],
         "extra_noise_e": 8.0},
        {"image_type": "flat", "exposures": [N_FLAT], "illumination_gradient": GRADIENT},
    ],
}
FAULT_RUN_CONFIG = {"verifyBiasDetector:noiseThreshold": 0.10, "verifyBiasDecision:threshold": 1}
RAW = "LATISS/raw/all"
FLAT_FILTER = get_instrument("LATISS").default_flat_filter


def _run(ns, name, inputs, output, exposures, config=None):
    res = run_cp_pipeline(ns.root, "LATISS", name, inputs=inputs, output=output, exposures=exposures,
                          config=config)
    assert res.ok, f"{name} -> {output}: {res.error_summary()}"
    return res


@pytest.fixture(scope="module")
def latiss(tmp_path_factory):
    root = tmp_path_factory.mktemp("latiss_verify") / "repo"
    butler = create_repo(root)
    truth = SimulationTruth("LATISS", TRUTH)
    cam = SimulatedCamera(butler, truth)
    ns = types.SimpleNamespace(root=root, butler=butler, truth=truth)
    ns.ref_biases = cam.take("bias", [0.0] * N_REF_BIAS)
    ns.new_biases = cam.take("bias", [0.0] * 4)  # 16: MEAN fault, 17: NOISE fault, 18, 19: clean
    ns.darks = cam.take("dark", [DARK_TIME] * N_DARK)
    ns.flats = cam.take("flat", [FLAT_TIME] * (N_FLAT + 1))  # the last one has the gradient

    # Bias: generate, verify internally, certify into LATISS/calib.
    _run(ns, "cpBias", [RAW], "gen/bias", ns.ref_biases)
    _run(ns, "verifyBias", [RAW, "gen/bias"], "verify/bias/internal", ns.ref_biases[:4])
    ns.bias_certified = certify_calibration(
        butler, dataset_type="bias", run="gen/bias", calib_collection="LATISS/calib/bias",
        begin="1950-01-01", end="2050-01-01", decision_collection="verify/bias/internal",
        chain="LATISS/calib",
    )
    # External verification of new biases against LATISS/calib, T = 1.
    f_mean, f_noise, c0, c1 = ns.new_biases
    ns.set_yes = [f_mean, c0, c1]
    ns.set_no = [f_mean, f_noise, c0]
    _run(ns, "verifyBias", [RAW, "LATISS/calib"], "verify/bias/yes", ns.set_yes, FAULT_RUN_CONFIG)
    _run(ns, "verifyBias", [RAW, "LATISS/calib"], "verify/bias/no", ns.set_no, FAULT_RUN_CONFIG)

    # Dark: generate and verify internally.
    _run(ns, "cpDark", [RAW, "gen/bias"], "gen/dark", ns.darks)
    _run(ns, "verifyDark", [RAW, "gen/dark", "gen/bias"], "verify/dark", ns.darks)

    # Flat: generate from the clean flats; verify two of them and the gradient one.
    _run(ns, "cpFlat", [RAW, "gen/bias", "gen/dark"], "gen/flat", ns.flats[:N_FLAT])
    ns.flat_set = [ns.flats[0], ns.flats[1], ns.flats[N_FLAT]]
    _run(ns, "verifyFlat", [RAW, "gen/flat", "gen/dark", "gen/bias"], "verify/flat", ns.flat_set)
    # Same two clean flats with a defect list holding the dead column.
    ns.defect_boxes = [[BAD_COLUMN_X, 0, 1, 250]]
    butler.collections.register("defects/manual")
    identity = calib_identity("defects", schema="", version=2.0, calibcls=DEFECTS_CALIBCLS,
                              instrument="LATISS", detector=0, detector_name=DET)
    identity.update(DET_NY=500, DET_NX=512)
    boxes = defects_algo.boxes_to_table(ns.defect_boxes, shape=(500, 512))
    butler.put(defects_table(boxes, identity), "defects", instrument="LATISS", detector=0,
               run="defects/manual")
    _run(ns, "verifyFlat", [RAW, "gen/flat", "gen/dark", "gen/bias", "defects/manual"], "verify/flat/defects",
         ns.flats[:2])
    return ns


def _get(ns, name, collection, **data_id):
    return ns.butler.get(name, collections=collection, instrument="LATISS", **data_id)


def _failures_by_test(run_stats):
    """Test name -> {"<exposure> <detector>[ <amp>]"} from a run dictionary."""
    out: dict[str, set[str]] = {}
    for exposure, rec in run_stats.items():
        if exposure == "SUCCESS":
            continue
        for failure in rec.get("FAILURES", []):
            tokens = failure.split()
            out.setdefault(tokens[-1], set()).add(" ".join([str(exposure), *tokens[:-1]]))
    return out


def _exposures(run_stats):
    return {e: rec for e, rec in run_stats.items() if e != "SUCCESS"}


# -- internal verification: clean frames pass every test ---------------------------------


def test_clean_biases_pass_internal_verification(latiss):
    stats = _get(latiss, "verifyBiasStats", "verify/bias/internal")
    assert stats == {**{e: {"SUCCESS": True} for e in latiss.ref_biases[:4]}, "SUCCESS": True}
    table = _get(latiss, "verifyBiasResults", "verify/bias/internal")
    assert len(table) == 4 * 16
    for test in ("MEAN", "NOISE", "CR_NOISE", "PROCESSING"):
        assert np.all(table[f"BIAS_VERIFY_{test}"]), test
    # Frame minus a reference it is part of: rn * sqrt(1 - 1/N) * overscan term.
    ratio = np.asarray(table["BIAS_NOISE"] / table["BIAS_READ_NOISE"])
    expected = math.sqrt(1 - 1 / N_REF_BIAS) * OVERSCAN_TERM
    assert abs(ratio.mean() - expected) < 0.005, (ratio.mean(), expected)
    assert ratio.max() < 1.02  # a 3 % margin or more on every amp
    # Read noise from the overscan matches the simulated truth.
    dt = latiss.truth.detector_truth(0)
    rn_truth = np.array([dt.read_noise[a] for a in table["amplifier"]])
    assert np.all(np.abs(table["BIAS_READ_NOISE"] / rn_truth - 1) < 0.03)
    # cp_verify's READ_NOISE_ADU: the same overscan noise in ADU.
    gain = np.array([dt.gain[a] for a in table["amplifier"]])
    assert np.all(np.abs(table["BIAS_READ_NOISE_ADU"] * gain / rn_truth - 1) < 0.03)
    # Mean of a bias-subtracted bias is ~0: well inside |mean| < noise; so is the readout corner.
    assert np.all(np.abs(table["BIAS_MEANCLIP"]) < 0.1 * table["BIAS_NOISE"])
    assert np.all(np.abs(table["BIAS_AMP_CORNER"]) < 0.2 * table["BIAS_NOISE"])
    assert set(table["detector"]) == {0} and set(table["instrument"]) == {"LATISS"}
    assert np.all((table["mjd"] > 60000) & (table["mjd"] < 70000))
    decision = _get(latiss, "cpcVerifyBiasDecision", "verify/bias/internal")
    assert decision["CERTIFY"] is True and decision["THRESHOLD"] == 8
    assert decision["N_EXPOSURES"] == 4 and decision["N_DETECTORS"] == 1 and decision["DETECTORS"] == [DET]


def test_clean_darks_pass_internal_verification(latiss):
    stats = _get(latiss, "verifyDarkStats", "verify/dark")
    assert stats["SUCCESS"] is True, stats
    assert len(_exposures(stats)) == N_DARK
    table = _get(latiss, "verifyDarkResults", "verify/dark")
    ratio = np.asarray(table["DARK_NOISE"] / table["DARK_READ_NOISE"])
    # Bias cancels (frame - mean of the darks); dark-current shot noise adds ~0.5 %.
    expected = math.sqrt(1 - 1 / N_DARK) * OVERSCAN_TERM
    assert abs(ratio.mean() - expected) < 0.015, (ratio.mean(), expected)
    assert ratio.max() < 1.0
    assert np.all(table["DARK_VERIFY_CR_NOISE"]) and np.all(table["DARK_VERIFY_PROCESSING"])
    det = _get(latiss, "verifyDarkDetStats", "verify/dark", exposure=latiss.darks[0], detector=0)
    cosmic_rays = det["CPC_PROCESSING"]["COSMIC_RAYS"]
    assert cosmic_rays["DONE"] and not cosmic_rays["OVERFLOW"]
    assert set(det["CPC_CALIBRATIONS"]) == {"bias", "dark"}
    assert det["CPC_IDENTITY"]["EXPOSURE"] == latiss.darks[0] and det["CPC_IDENTITY"]["DETECTOR"] == DET
    assert det["CPC_IDENTITY"]["EXPTIME"] == pytest.approx(DARK_TIME)
    assert DARK_TIME <= det["CPC_IDENTITY"]["DARKTIME"] < DARK_TIME + 1  # plus the readout
    decision = _get(latiss, "cpcVerifyDarkDecision", "verify/dark")
    assert decision["CERTIFY"] is True
    assert {c["run"] for c in decision["CALIBRATIONS"]["dark"]} == {
        latiss.butler.collections.get_info("gen/dark").children[0]}


def test_flats_clean_pass_and_gradient_fails_scatter(latiss):
    clean, grad = latiss.flat_set[:2], latiss.flat_set[2]
    stats = _get(latiss, "verifyFlatStats", "verify/flat", physical_filter=FLAT_FILTER)
    for exp in clean:
        assert stats[exp] == {"SUCCESS": True}
    by_test = _failures_by_test(stats)
    # Detector SCATTER fails on the gradient exposure only.
    assert by_test["SCATTER"] == {f"{grad} {DET}"}
    det = _get(latiss, "verifyFlatDetStats", "verify/flat", exposure=grad, detector=0)
    # 8 amp columns across a linear gradient: std/mean = 0.2864 * gradient.
    assert det["CPC_DET"]["REL_SCATTER"] == pytest.approx(0.2864 * GRADIENT, rel=0.05)
    rel_scatter = det["DET"]["SCATTER"] / det["DET"]["MEAN"]
    assert rel_scatter == pytest.approx(det["CPC_DET"]["REL_SCATTER"], rel=1e-9)
    assert det["VERIFY"]["DET"] == {"SCATTER": False, "SUCCESS": False}
    assert det["CPC_IDENTITY"]["PHYSICAL_FILTER"] == FLAT_FILTER
    for exp in clean:
        d = _get(latiss, "verifyFlatDetStats", "verify/flat", exposure=exp, detector=0)
        assert d["CPC_DET"]["REL_SCATTER"] < 0.002
    # Exposure SCATTER (one detector) always passes.  The gradient left by the flat also ramps
    # within each amp (3.75 % across 64 columns), which fails every amp's NOISE.
    exp_stats = _get(latiss, "verifyFlatExpStats", "verify/flat", exposure=grad)
    grad_failures = ["SCATTER"] + [f"{amp} NOISE" for amp in ALL_AMPS]
    assert exp_stats == {DET: {"SUCCESS": False, "FAILURES": grad_failures}, "EXP": {"SCATTER": 0.0},
                         "VERIFY": {"EXP": {"SCATTER": True}}, "SUCCESS": False}
    # Flat NOISE in ADU: internal ratio sqrt(((1 - 1/N)(1 + a00 mu) + rn^2/mu) / g).
    table = _get(latiss, "verifyFlatResults", "verify/flat", physical_filter=FLAT_FILTER)
    assert set(table["physical_filter"]) == {FLAT_FILTER}
    clean_rows = table[np.isin(table["exposure"], clean) & (table["amplifier"] != "C02")]
    ratio = np.asarray(clean_rows["FLAT_NOISE_ADU"] / clean_rows["FLAT_SQRT_MEAN_ADU"])
    mu = np.asarray(clean_rows["FLAT_MEANCLIP"])
    expected = np.sqrt(((1 - 1 / N_FLAT) * (1 - 2e-6 * mu) + clean_rows["FLAT_READ_NOISE"] ** 2 / mu)
                       / clean_rows["FLAT_GAIN"])
    assert np.all(np.abs(ratio / expected - 1) < 0.03), ratio / expected
    assert np.all(table["FLAT_POISSON_RATIO"][np.isin(table["exposure"], clean)] < 1.0)
    # The detector and exposure tests on every amp row.
    assert np.all(table["FLAT_DET_VERIFY_SCATTER"] == (table["exposure"] != grad))
    assert np.all(table["FLAT_EXP_SCATTER"] == 0.0) and np.all(table["FLAT_EXP_VERIFY_SCATTER"])
    # The decision is per physical filter: the gradient exposure fails (16 NOISE >= T = 8), but
    # 1 failed exposure of 3 is below the limit of 2.
    decision = _get(latiss, "cpcVerifyFlatDecision", "verify/flat", physical_filter=FLAT_FILTER)
    assert decision["CERTIFY"] is True and decision["PHYSICAL_FILTER"] == FLAT_FILTER
    assert decision["COUNTS"][str(grad)] == {"NOISE": 16, "SCATTER": 1}
    assert decision["FAILED_EXPOSURES"] == {str(grad): {"NOISE": 16}}
    assert decision["EXPOSURE_FAILURE_LIMIT"] == 2


def test_flat_verification_uses_defects_when_present(latiss):
    without = _get(latiss, "verifyFlatResults", "verify/flat", physical_filter=FLAT_FILTER)
    with_defects = _get(latiss, "verifyFlatResults", "verify/flat/defects", physical_filter=FLAT_FILTER)
    for exp in latiss.flats[:2]:
        a = without[(without["exposure"] == exp) & (without["amplifier"] == "C02")][0]
        b = with_defects[(with_defects["exposure"] == exp) & (with_defects["amplifier"] == "C02")][0]
        # The dead column (250 pixels) is masked BAD and left out of the statistics...
        assert a["FLAT_N_PIXELS"] - b["FLAT_N_PIXELS"] == 250
        # ...and its amplified noise (response 0.05) no longer inflates the amp noise.
        assert b["FLAT_NOISE"] < a["FLAT_NOISE"]
        other = with_defects[(with_defects["exposure"] == exp) & (with_defects["amplifier"] == "C03")][0]
        assert b["FLAT_NOISE"] / math.sqrt(b["FLAT_MEANCLIP"]) == pytest.approx(
            other["FLAT_NOISE"] / math.sqrt(other["FLAT_MEANCLIP"]), rel=0.02)
    det = _get(latiss, "verifyFlatDetStats", "verify/flat/defects", exposure=latiss.flats[0], detector=0)
    assert det["CPC_CALIBRATIONS"]["defects"]["run"] == "defects/manual"
    assert "defects" not in _get(latiss, "verifyFlatDetStats", "verify/flat", exposure=latiss.flats[0],
                                 detector=0)["CPC_CALIBRATIONS"]


# -- external verification with faults, and the majority boundary -----------------------


def test_external_verification_finds_faults_at_the_right_amps(latiss):
    f_mean, f_noise, c0, c1 = latiss.new_biases
    stats_no = _get(latiss, "verifyBiasStats", "verify/bias/no")
    assert _failures_by_test(stats_no) == {
        "MEAN": {f"{f_mean} {DET} {amp}" for amp in MEAN_FAULT_AMPS},
        "NOISE": {f"{f_noise} {DET} {NOISE_FAULT_AMP}"},
    }
    stats_yes = _get(latiss, "verifyBiasStats", "verify/bias/yes")
    assert _failures_by_test(stats_yes) == {"MEAN": {f"{f_mean} {DET} {amp}" for amp in MEAN_FAULT_AMPS}}
    table = _get(latiss, "verifyBiasResults", "verify/bias/no")
    row = table[(table["exposure"] == f_mean) & (table["amplifier"] == "C10")][0]
    gain = latiss.truth.detector_truth(0).gain["C10"]
    assert row["BIAS_MEANCLIP"] == pytest.approx(40.0 * gain, rel=0.05)  # the 40 ADU offset, in electrons
    # The offset covers the whole imaging area: the readout corner sees it too.
    assert row["BIAS_AMP_CORNER"] == pytest.approx(40.0 * gain, rel=0.05)
    row = table[(table["exposure"] == f_noise) & (table["amplifier"] == NOISE_FAULT_AMP)][0]
    rn = row["BIAS_READ_NOISE"]
    expected = math.sqrt((rn * math.sqrt(1 + 1 / N_REF_BIAS) * OVERSCAN_TERM) ** 2 + 8.0**2)
    assert row["BIAS_NOISE"] == pytest.approx(expected, rel=0.03)
    # The calibration under test came from the CALIBRATION collection.
    det = _get(latiss, "verifyBiasDetStats", "verify/bias/no", exposure=c0, detector=0)
    certified = latiss.bias_certified.certified[0]
    assert det["CPC_CALIBRATIONS"]["bias"]["id"] == certified.id
    # External noise budget: rn * sqrt(1 + 1/N) * overscan term on the clean frames.
    clean = table[np.isin(table["exposure"], [c0])]
    ratio = np.asarray(clean["BIAS_NOISE"] / clean["BIAS_READ_NOISE"])
    expected = math.sqrt(1 + 1 / N_REF_BIAS) * OVERSCAN_TERM
    assert abs(ratio.mean() - expected) < 0.006, (ratio.mean(), expected)


def test_decision_boundary_at_pipeline_level(latiss):
    f_mean, f_noise, *_ = latiss.new_biases
    yes = _get(latiss, "cpcVerifyBiasDecision", "verify/bias/yes")
    no = _get(latiss, "cpcVerifyBiasDecision", "verify/bias/no")
    for d in (yes, no):
        assert d["N_EXPOSURES"] == 3 and d["N_DETECTORS"] == 1 and d["THRESHOLD"] == 1
        assert d["TEST_FAILURE_LIMIT"] == 1 and d["EXPOSURE_FAILURE_LIMIT"] == 2
        assert d["THRESHOLDS"]["verification"]["noise"] == 0.10
        assert "SUCCESS key" in d["RULE"]
    # floor(N/2) = 1 failed exposure: certified.
    assert yes["CERTIFY"] is True and yes["N_FAILED_EXPOSURES"] == 1
    assert yes["FAILED_EXPOSURES"] == {str(f_mean): {"MEAN": 2}}
    # floor(N/2) + 1 = 2 failed exposures: not certified.
    assert no["CERTIFY"] is False and no["N_FAILED_EXPOSURES"] == 2
    assert no["FAILED_EXPOSURES"] == {str(f_mean): {"MEAN": 2}, str(f_noise): {"NOISE": 1}}
    assert "DO NOT CERTIFY" in no["REPORT"] and f"{f_noise}: NOISE 1 >= 1" in no["REPORT"]


def test_exposure_failure_limit_is_inclusive(latiss):
    """Exposure f_mean has exactly 2 MEAN failures (D = 1): it fails with
    T = 2 (limit 2) and passes with T = 3 (limit 3)."""
    f_mean = latiss.new_biases[0]
    stats = {e: _get(latiss, "verifyBiasExpStats", "verify/bias/no", exposure=e) for e in latiss.set_no}
    for t, failed in ((2, True), (3, False)):
        task = CpVerifyDecisionTask(config=CpVerifyDecisionTask.ConfigClass(threshold=t))
        decision = task.run(stats, instrument="LATISS").outputDecision
        assert decision["TEST_FAILURE_LIMIT"] == t
        assert (str(f_mean) in decision["FAILED_EXPOSURES"]) is failed


@pytest.mark.parametrize(("calib", "collection", "exposures"), [
    ("Bias", "verify/bias/internal", "ref4"), ("Bias", "verify/bias/yes", "set_yes"),
    ("Bias", "verify/bias/no", "set_no"), ("Dark", "verify/dark", "darks"),
    ("Flat", "verify/flat", "flat_set"),
])
def test_outputs_read_as_cp_verify_reads_them(latiss, calib, collection, exposures):
    """Our three levels, read with the rules of cp_verify's merge tasks and
    of the ScriptQueue script (test_cp_verify_shapes): cp_verify's exposure
    merge of our detector dictionaries gives our exposure dictionaries, and
    its run merge of those gives our run dictionary (flats: the same SUCCESS
    values; cp_verify's run merge drops flat detector failures, ours keeps
    them)."""
    exposures = latiss.ref_biases[:4] if exposures == "ref4" else getattr(latiss, exposures)
    flat = calib == "Flat"
    run_id = {"physical_filter": FLAT_FILTER} if flat else {}
    ours_run = _get(latiss, f"verify{calib}Stats", collection, **run_id)
    assert list(ours_run) == sorted(exposures) + ["SUCCESS"]
    assert all(type(e) is int for e in _exposures(ours_run))
    exp_dicts = {}
    for exposure in exposures:
        det = _get(latiss, f"verify{calib}DetStats", collection, exposure=exposure, detector=0)
        assert list(det)[:6] == ["AMP", "METADATA", "CATALOG", "DET", "VERIFY", "SUCCESS"]
        assert all(k.startswith("CPC_") and isinstance(det[k], dict) for k in list(det)[6:])
        assert type(det["SUCCESS"]) is bool
        assert all(type(t["SUCCESS"]) is bool for t in det["VERIFY"]["AMP"].values())
        ours_exp = _get(latiss, f"verify{calib}ExpStats", collection, exposure=exposure)
        exposure_tests = cp_verify_flat_exposure_tests if flat else None
        theirs_exp = cp_verify_merge({DET: det}, exposure_tests=exposure_tests)
        # One detector: cp_verify's absolute exposure scatter is 0, as our normalised one.
        assert ours_exp == theirs_exp
        exp_dicts[exposure] = ours_exp
    theirs_run = cp_verify_merge(exp_dicts)
    if not flat:
        assert ours_run == theirs_run
    else:
        for e in exposures:
            assert ours_run[e]["SUCCESS"] is theirs_run[e]["SUCCESS"]
            assert set(theirs_run[e].get("FAILURES", [])) <= set(ours_run[e].get("FAILURES", []))
        # cp_verify's run merge drops the gradient exposure's 17 failures (its exposure test passed).
        grad = latiss.flat_set[2]
        assert theirs_run[grad] == {"SUCCESS": False, "FAILURES": []}
        assert ours_run[grad] == {"SUCCESS": False,
                                  "FAILURES": [f"{DET} SCATTER"] + [f"{DET} {amp} NOISE" for amp in ALL_AMPS]}
    # The ScriptQueue script reads our run level: every key but SUCCESS is an exposure.
    threshold = 1 if collection in ("verify/bias/yes", "verify/bias/no") else 8
    certify, n_failed, limit = script_decision(ours_run, n_detectors=1, threshold=threshold)
    decision = _get(latiss, f"cpcVerify{calib}Decision", collection, **run_id)
    assert n_failed == decision["N_FAILED_EXPOSURES"] and limit == int((len(exposures) + 1) / 2) + 1
    # ...and, counting its SUCCESS key as an exposure, certifies the 2-of-3 "no" set that we refuse.
    assert certify is True
    assert decision["CERTIFY"] is (collection != "verify/bias/no")


def test_refused_decision_certifies_nothing(latiss):
    with pytest.raises(CertificationRefused, match="decision for LATISS is NO"):
        certify_calibration(
            latiss.butler, dataset_type="bias", run="gen/bias", calib_collection="LATISS/calib/refused",
            begin="1950-01-01", end="2050-01-01", decision_collection="verify/bias/no",
        )
    assert not collection_exists(latiss.butler, "LATISS/calib/refused")


def test_certified_bias_is_found_by_validity_range(latiss):
    result = latiss.bias_certified
    assert result.n_certified == 1 and result.chain_updated
    assert latiss.butler.collections.get_info("LATISS/calib").children == ("LATISS/calib/bias",)
    (assoc,) = latiss.butler.registry.queryDatasetAssociations("bias", collections="LATISS/calib/bias")
    assert str(assoc.ref.id) == result.certified[0].id
    # The butler stores times from 1970 on: a 1950 begin is an unbounded one.
    assert assoc.timespan.begin is None and assoc.timespan.end.isot.startswith("2050-01-01")
    assert result.begin == "-inf" and result.end.startswith("2050-01-01")


def test_outputs_hold_no_images(latiss):
    butler = Butler.from_config(latiss.root)  # fresh: sees the dataset types pipetask registered
    run = butler.collections.get_info("verify/bias/no").children[0]
    names = {ref.datasetType.name for ref in butler.registry.queryDatasets(..., collections=run)}
    products = {n for n in names if not n.endswith(("_config", "_metadata", "_log")) and n != "packages"}
    assert products == {"verifyBiasDetStats", "verifyBiasDetResults", "verifyBiasExpStats", "verifyBiasStats",
                        "verifyBiasResults", "cpcVerifyBiasDecision"}


def test_config_validation():
    config = CpVerifyDetectorConfig()
    config.calibrationType = "dark"
    with pytest.raises(ValueError, match="isr.doDark"):
        config.validate()
    config.isr.doDark = True
    with pytest.raises(ValueError, match="connections.calibType"):
        config.validate()
    config.connections.calibType = "Dark"
    config.validate()
    config.isr.doApplyGains = False
    with pytest.raises(ValueError, match="electrons"):
        config.validate()


@pytest.mark.parametrize("instrument", ["LATISS", "LSSTComCam"])
@pytest.mark.parametrize("calib", ["Bias", "Dark", "Flat"])
def test_pipelines_build(instrument, calib, monkeypatch):
    """Every per-instrument verification pipeline loads, validates its
    configs and has the four stages with the expected dataset types."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("CPCOMBINED_DIR", str(root))
    graph = Pipeline.from_uri(str(root / "pipelines" / instrument / f"verify{calib}.yaml")).to_graph()
    labels = {f"verify{calib}{stage}" for stage in ("Detector", "Exposure", "Run", "Decision")}
    assert set(graph.tasks) == labels
    outputs = {graph.tasks[label].outputs[c].dataset_type_name
               for label in labels for c in graph.tasks[label].outputs}
    shared = {f"verify{calib}{kind}" for kind in ("DetStats", "DetResults", "ExpStats", "Stats", "Results")}
    assert outputs == shared | {f"cpcVerify{calib}Decision"}
    # cp_verify's dimensions: the flat run outputs and our flat decision are per physical filter.
    graph.resolve(dimensions=DimensionUniverse())
    per_run = {"instrument", "physical_filter"} if calib == "Flat" else {"instrument"}
    for name in (f"verify{calib}Stats", f"verify{calib}Results", f"cpcVerify{calib}Decision"):
        assert set(graph.dataset_types[name].dimensions.required) == per_run, name
    exp_dims = set(graph.dataset_types[f"verify{calib}ExpStats"].dimensions.required)
    assert exp_dims == {"instrument", "exposure"}
    detector = graph.tasks[f"verify{calib}Detector"]
    prerequisites = {detector.prerequisite_inputs[c].dataset_type_name for c in detector.prerequisite_inputs}
    expected = {"Bias": {"bias"}, "Dark": {"bias", "dark"}, "Flat": {"bias", "dark", "flat"}}[calib]
    assert prerequisites == expected | {"defects"}
