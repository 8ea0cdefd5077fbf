"""The verification dictionaries in cp_verify's shapes, read both ways.

1. Readers that follow what cp_verify's merge tasks and the ScriptQueue
   script read (`cp_verify_merge`, `script_decision`; rules written down from
   cp_verify's ``mergeResults.py`` and the script's
   ``count_failed_verification_tests``) — used here on hand-built cp_verify
   dictionaries and by ``test_verify_pipeline`` on our pipeline outputs.
2. Exposure dictionaries built by hand as cp_verify writes them (LATISS bias
   with ``"RXX_S00": {"SUCCESS": false, "FAILURES": ["C10 NOISE",
   "C10 READ_NOISE_CONSISTENT"]}``, ComCam flats whose run level has only
   ``SCATTER``) and ours built by `lsst.cpcombined.algorithms.verify` from the
   same failures (same exposures, detectors, failing amplifiers and tests):
   the decision task gives the same decision on both, at and around the
   exact thresholds.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import yaml
from lsst.cpcombined.algorithms import majority as m
from lsst.cpcombined.algorithms import verify as v
from lsst.cpcombined.tasks.verify_decision import CpVerifyDecisionConfig, CpVerifyDecisionTask

COMCAM = [f"R22_S{i}{j}" for i in range(3) for j in range(3)]
AMPS = [f"C1{i}" for i in range(8)] + [f"C0{i}" for i in range(7, -1, -1)]
BASE = 2024061500010


# ---------------------------------------------------------------------------
# Readers following cp_verify's merge and the ScriptQueue script
# ---------------------------------------------------------------------------


def cp_verify_merge(inputs: dict, *, exposure_tests=None) -> dict:
    """What cp_verify's CpVerifyExpMergeTask / CpVerifyRunMergeTask build
    from their inputs (name → dictionary of the level below).

    Reads only what cp_verify reads: each input's ``SUCCESS`` (``is True``);
    when it is not true, ``VERIFY`` if present (``EXP``/``DET`` with
    ``SUCCESS`` popped with default False; ``AMP[amp]`` with ``SUCCESS``
    popped *without* default; ``CATALOG``; tests listed only when ``is
    False``), otherwise every other top-level value with ``"SUCCESS" in
    value`` and ``value["FAILURES"]``.  ``exposure_tests`` (flat exposure
    merge) maps the detector dictionaries to ``(EXP, VERIFY)``.
    Works on deep copies: cp_verify pops keys from its inputs.
    """
    out: dict = {}
    success = True
    for name, in_stats in inputs.items():
        in_stats = copy.deepcopy(in_stats)
        if in_stats["SUCCESS"] is True:
            out[name] = {"SUCCESS": True}
            continue
        calc = {"SUCCESS": False, "FAILURES": []}
        success = False
        if "VERIFY" in in_stats:
            verify = in_stats["VERIFY"]
            for level in ("EXP", "DET"):
                if level in verify and len(verify[level]) > 0:
                    if not verify[level].pop("SUCCESS", False):
                        calc["FAILURES"] += [t for t, ok in verify[level].items() if ok is False]
            if "AMP" in verify and len(verify["AMP"]) > 0:
                for amp, tests in verify["AMP"].items():
                    if not tests.pop("SUCCESS"):
                        calc["FAILURES"] += [f"{amp} {t}" for t, ok in tests.items() if ok is False]
            if "CATALOG" in verify and len(verify["CATALOG"]) > 0:
                calc["FAILURES"] += [t for t, ok in verify["CATALOG"].items() if ok is False]
        else:
            in_stats.pop("SUCCESS", False)
            for key, value in in_stats.items():
                if "SUCCESS" in value and not value["SUCCESS"]:
                    calc["FAILURES"] += [f"{key} {f}" for f in value["FAILURES"]]
        out[name] = calc
    group_success = True
    if exposure_tests is not None:
        out["EXP"], out["VERIFY"] = exposure_tests(inputs)
        group_success = all(out["VERIFY"]["EXP"].values())
    out["SUCCESS"] = success and group_success
    return out


def cp_verify_flat_exposure_tests(det_stats: dict) -> tuple[dict, dict]:
    """cp_verify's flat exposure statistic and test: absolute std of the
    detectors' DET.MEAN, <= 0.05."""
    value = float(np.std([d["DET"]["MEAN"] for d in det_stats.values()]))
    return {"SCATTER": value}, {"EXP": {"SCATTER": bool(value <= 0.05)}}


def script_decision(run_stats: dict, n_detectors: int, threshold: int = 8) -> tuple[bool, int, int]:
    """The ScriptQueue script's certification decision on a run dictionary
    (``check_verification_stats`` and ``count_failed_verification_tests``),
    off-by-ones included: (certify, failed exposures, its exposure limit)."""
    max_failed_exposures = int(len(run_stats) / 2) + 1  # len counts the SUCCESS key
    if run_stats["SUCCESS"] is not False:
        return True, 0, max_failed_exposures
    limit = threshold * (int(n_detectors / 2) + 1)
    n_failed = 0
    any_failures = False
    for key, value in run_stats.items():
        if key == "SUCCESS" or "FAILURES" not in value:
            continue
        any_failures = True
        counts: dict[str, int] = {}
        for failure in value["FAILURES"]:
            test = failure.split(" ")[-1]
            counts[test] = counts.get(test, 0) + 1
        n_failed += any(c >= limit for c in counts.values())
    if not any_failures:
        return True, 0, max_failed_exposures
    return n_failed < max_failed_exposures, n_failed, max_failed_exposures


# ---------------------------------------------------------------------------
# Builders: cp_verify's dictionaries by hand, ours from the algorithms
# ---------------------------------------------------------------------------


def cp_verify_exposure(failing: dict[str, list[str]], detectors=COMCAM, flat_scatter=None) -> dict:
    """An exposure dictionary as cp_verify writes it: ``failing`` maps a
    detector name to its exposure-level failure strings."""
    out: dict = {}
    for det in detectors:
        failures = list(failing.get(det) or [])
        out[det] = {"SUCCESS": False, "FAILURES": failures} if failures else {"SUCCESS": True}
    exp_ok = True
    if flat_scatter is not None:
        exp_ok = flat_scatter <= 0.05
        out["EXP"] = {"SCATTER": flat_scatter}
        out["VERIFY"] = {"EXP": {"SCATTER": exp_ok}}
    out["SUCCESS"] = not any(failing.get(d) for d in detectors) and exp_ok
    return out


def _amp_stats(noise: float = 8.1, mean: float = 0.2) -> dict:
    return {"MEAN": mean, "MEANCLIP": mean, "NOISE": noise, "READ_NOISE": 8.0, "READ_NOISE_ADU": 7.3,
            "CR_NOISE": noise, "CR_OVERFLOW": False, "AMP_CORNER": mean, "GAIN": 1.1, "N_PIXELS": 1000,
            "N_CLIPPED": 0}


def our_bias_exposure(exposure: int, noisy: dict[str, list[str]], detectors=COMCAM) -> dict:
    """Our exposure dictionary: `verify_detector` on statistics whose
    ``noisy`` amplifiers (per detector) fail NOISE (9.0 e- for 8.0 e- read
    noise: +12.5 %), then `verify_exposure`."""
    dets = {}
    for det in detectors:
        stats = {amp: _amp_stats(9.0 if amp in noisy.get(det, []) else 8.1) for amp in AMPS}
        dets[det] = v.verify_detector("bias", stats, exposure=exposure, detector=det)
    return v.verify_exposure("bias", dets)


def our_flat_exposure(exposure: int, noisy: dict[str, list[str]], levels: dict[str, float]) -> dict:
    """Our flat exposure dictionary: ``noisy`` amplifiers have twice the
    shot noise (fail NOISE in ADU), detector levels from ``levels``."""
    dets = {}
    for det, level in levels.items():
        # shot + 8 e- read noise; x2 fails NOISE (in ADU: needs noise <= sqrt(level x gain 1.1))
        stats = {amp: _amp_stats(math.sqrt(level + 64.0) * (2.0 if amp in noisy.get(det, []) else 1.0), level)
                 for amp in AMPS}
        dets[det] = v.verify_detector("flat", stats, exposure=exposure, detector=det)
    return v.verify_exposure("flat", dets)


def decide(exp_stats: dict, calib_type: str = "bias", threshold: int = 8, det_stats=(), physical_filter=None):
    config = CpVerifyDecisionConfig()
    config.calibrationType = calib_type
    config.connections.calibType = calib_type.capitalize()
    config.threshold = threshold
    task = CpVerifyDecisionTask(config=config)
    return task.run(exp_stats, list(det_stats), instrument="LSSTComCam",
                    physical_filter=physical_filter).outputDecision


def same_decision(a: dict, b: dict, *, counts: bool = True) -> None:
    keys = ["CERTIFY", "N_EXPOSURES", "N_DETECTORS", "DETECTORS", "TEST_FAILURE_LIMIT", "N_FAILED_EXPOSURES",
            "EXPOSURE_FAILURE_LIMIT", "FAILED_EXPOSURES", "EXPOSURES"]
    for key in keys + (["COUNTS"] if counts else []):
        assert a[key] == b[key], key


def noisy_amps(n: int, detectors=COMCAM) -> dict[str, list[str]]:
    """``n`` failing amplifiers spread over the detectors, 16 per detector at most."""
    out: dict[str, list[str]] = {}
    for i in range(n):
        out.setdefault(detectors[i // len(AMPS)], []).append(AMPS[i % len(AMPS)])
    return out


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_latiss_bias_example_decides_like_ours():
    """cp_verify's LATISS example: C10 fails NOISE and READ_NOISE_CONSISTENT.
    D = 1, T = 1: an exposure fails with one failure of one test, so the
    one cp_verify exposure of three fails on NOISE (1 >= 1) and on its
    separately counted READ_NOISE_CONSISTENT; 1 < 2 failed exposures:
    certify.  Ours (no READ_NOISE_CONSISTENT test) gives the same."""
    e1, e2, e3 = BASE, BASE + 1, BASE + 2
    theirs = {
        e1: {"RXX_S00": {"SUCCESS": False, "FAILURES": ["C10 NOISE", "C10 READ_NOISE_CONSISTENT"]},
             "SUCCESS": False},
        e2: {"RXX_S00": {"SUCCESS": True}, "SUCCESS": True},
        e3: {"RXX_S00": {"SUCCESS": True}, "SUCCESS": True},
    }
    ours = {e: our_bias_exposure(e, {"RXX_S00": ["C10"]} if e == e1 else {}, ["RXX_S00"]) for e in theirs}
    assert ours[e1] == {"RXX_S00": {"SUCCESS": False, "FAILURES": ["C10 NOISE"]}, "SUCCESS": False}
    a, b = decide(theirs, threshold=1), decide(ours, threshold=1)
    assert a["FAILED_EXPOSURES"] == {str(e1): {"NOISE": 1, "READ_NOISE_CONSISTENT": 1}}
    assert b["FAILED_EXPOSURES"] == {str(e1): {"NOISE": 1}}
    for d in (a, b):
        assert d["CERTIFY"] is True and d["N_EXPOSURES"] == 3 and d["N_DETECTORS"] == 1
        assert d["DETECTORS"] == ["RXX_S00"] and d["EXPOSURES"] == [e1, e2, e3]
        assert d["N_FAILED_EXPOSURES"] == 1 and d["EXPOSURE_FAILURE_LIMIT"] == 2
    # A second failing exposure is a strict majority of three: no.
    theirs[e2] = copy.deepcopy(theirs[e1])
    ours[e2] = our_bias_exposure(e2, {"RXX_S00": ["C10"]}, ["RXX_S00"])
    assert decide(theirs, threshold=1)["CERTIFY"] is False and decide(ours, threshold=1)["CERTIFY"] is False


@pytest.mark.parametrize(("n_noisy", "failed"), [(39, False), (40, True)])
def test_comcam_bias_exact_threshold(n_noisy, failed):
    """ComCam, D = 9, T = 8: an exposure fails at 8 x 5 = 40 NOISE failures,
    not at 39.  N = 4: 2 failed exposures certify, 3 do not.  cp_verify's
    dictionaries and ours built from the same failing amplifiers are equal
    and decide alike."""
    n_exp = 4
    for n_failing_exposures, certify in ((2, True), (3, False)):
        theirs, ours = {}, {}
        for i in range(n_exp):
            e = BASE + i
            noisy = noisy_amps(n_noisy) if i < n_failing_exposures else noisy_amps(3)
            theirs[e] = cp_verify_exposure({d: [f"{a} NOISE" for a in amps] for d, amps in noisy.items()})
            ours[e] = our_bias_exposure(e, noisy)
            assert ours[e] == theirs[e]  # same shape, same strings, same order
        a, b = decide(theirs), decide(ours)
        same_decision(a, b)
        assert a["TEST_FAILURE_LIMIT"] == 40 and a["N_DETECTORS"] == 9 and a["EXPOSURE_FAILURE_LIMIT"] == 3
        assert a["N_FAILED_EXPOSURES"] == (n_failing_exposures if failed else 0)
        assert a["CERTIFY"] is (certify if failed else True)
        assert a["COUNTS"][str(BASE)] == {"NOISE": n_noisy}


def test_comcam_flats_decide_on_the_exposure_level():
    """cp_verify's ComCam flat run dictionary lists only SCATTER (and its
    exposure SCATTER is the unnormalised std, here 387 e-, so it fails
    everywhere); the exposure dictionaries list the amplifier and detector
    failures.  The decision reads the exposure level: with 40 NOISE
    failures in 2 of 3 exposures the flat is refused on both packages'
    outputs, while the script, reading cp_verify's run level, counts no
    failed exposure."""
    levels = {d: 20_000.0 + 150.0 * i for i, d in enumerate(COMCAM)}  # 1.7 % normalised scatter
    abs_scatter = float(np.std(list(levels.values())))
    theirs, ours = {}, {}
    for i in range(3):
        e = BASE + i
        noisy = noisy_amps(40) if i < 2 else noisy_amps(5)
        theirs[e] = cp_verify_exposure({d: [f"{a} NOISE" for a in amps] for d, amps in noisy.items()},
                                       flat_scatter=abs_scatter)
        ours[e] = our_flat_exposure(e, noisy, levels)
        # Same detector entries; the exposure SCATTER is normalised in ours (passes), absolute in
        # cp_verify's (fails).
        assert {k: val for k, val in ours[e].items() if k in COMCAM} == \
            {k: val for k, val in theirs[e].items() if k in COMCAM}
        assert ours[e]["EXP"]["SCATTER"] == pytest.approx(abs_scatter / np.mean(list(levels.values())))
        assert ours[e]["VERIFY"] == {"EXP": {"SCATTER": True}}
        assert theirs[e]["VERIFY"]["EXP"]["SCATTER"] is False
    assert abs_scatter == pytest.approx(387.3, abs=0.1)
    a = decide(theirs, "flat", physical_filter="r_03")
    b = decide(ours, "flat", physical_filter="r_03")
    same_decision(a, b, counts=False)
    assert a["CERTIFY"] is False and a["N_FAILED_EXPOSURES"] == 2
    assert a["FAILED_EXPOSURES"] == {str(BASE): {"NOISE": 40}, str(BASE + 1): {"NOISE": 40}}
    assert a["COUNTS"][str(BASE)] == {"NOISE": 40, "SCATTER": 1}  # cp_verify's failed exposure SCATTER
    assert b["COUNTS"][str(BASE)] == {"NOISE": 40}
    assert a["PHYSICAL_FILTER"] == "r_03"

    # cp_verify's run level (its run merge, read as cp_verify reads it): only SCATTER survives.
    run = cp_verify_merge(theirs)
    assert run == {e: {"SUCCESS": False, "FAILURES": ["SCATTER"]} for e in theirs} | {"SUCCESS": False}
    assert script_decision(run, n_detectors=9) == (True, 0, 3)  # the script never sees the NOISE failures
    # Our run level keeps them: the script counts the 2 failed exposures (and, counting its SUCCESS
    # key as a fourth exposure, still certifies: 2 < int(4/2) + 1 = 3 — the off-by-one we fixed).
    ours_run = v.verify_run(ours)
    assert ours_run[BASE]["FAILURES"][:2] == ["R22_S00 C10 NOISE", "R22_S00 C11 NOISE"]
    assert len(ours_run[BASE]["FAILURES"]) == 40
    assert script_decision(ours_run, n_detectors=9) == (True, 2, 3)


def test_cp_verify_detector_dictionaries_merge_like_ours():
    """A detector dictionary as cp_verify writes it (with ISR, and
    READ_NOISE_CONSISTENT outside SUCCESS) merges to the documented
    exposure dictionary with our merge and with cp_verify's reader."""
    det = {
        "AMP": {"C10": {"MEAN": 0.3, "NOISE": 9.6, "CR_NOISE": 9.5, "AMP_CORNER": 0.4},
                "C11": {"MEAN": 0.1, "NOISE": 8.0, "CR_NOISE": 8.0, "AMP_CORNER": 0.2}},
        "METADATA": {"READ_NOISE_ADU": {"C10": 9.9, "C11": 7.2}},
        "CATALOG": {}, "DET": {}, "ISR": {"MJD": 60477.1, "CALIBDIST": {}},
        "VERIFY": {"AMP": {
            "C10": {"MEAN": True, "NOISE": False, "CR_NOISE": True, "SUCCESS": False,
                    "READ_NOISE_CONSISTENT": False},
            "C11": {"MEAN": True, "NOISE": True, "CR_NOISE": True, "SUCCESS": True,
                    "READ_NOISE_CONSISTENT": True}}},
        "SUCCESS": False,
    }
    det = yaml.safe_load(yaml.safe_dump(det, sort_keys=False))  # as read back from the repository
    expected = {"RXX_S00": {"SUCCESS": False, "FAILURES": ["C10 NOISE", "C10 READ_NOISE_CONSISTENT"]},
                "SUCCESS": False}
    assert v.verify_exposure("bias", {"RXX_S00": det}) == expected
    assert cp_verify_merge({"RXX_S00": det}) == expected
    assert det["VERIFY"]["AMP"]["C10"]["SUCCESS"] is False  # the reader did not modify its input
    run = {BASE: expected, BASE + 1: {"RXX_S00": {"SUCCESS": True}, "SUCCESS": True}}
    assert v.verify_run(run) == cp_verify_merge(run) == {
        BASE: {"SUCCESS": False, "FAILURES": ["RXX_S00 C10 NOISE", "RXX_S00 C10 READ_NOISE_CONSISTENT"]},
        BASE + 1: {"SUCCESS": True}, "SUCCESS": False}


def test_decision_without_our_detector_records():
    """On cp_verify's outputs the detector dictionaries have no
    CPC_CALIBRATIONS: the decision lists none and says so; with ours it
    lists the union of the calibrations used and the thresholds."""
    exp = {BASE: cp_verify_exposure({}), BASE + 1: cp_verify_exposure({})}
    cp_det = {"AMP": {}, "METADATA": {}, "CATALOG": {}, "DET": {}, "VERIFY": {"AMP": {}}, "SUCCESS": True}
    plain = decide(exp, det_stats=[cp_det, cp_det])
    assert plain["CERTIFY"] is True and plain["CALIBRATIONS"] == {}
    assert "do not record the calibrations" in plain["CALIBRATIONS_NOTE"]
    assert plain["REPORT"].endswith(plain["CALIBRATIONS_NOTE"])
    assert plain["THRESHOLDS"]["verification"] == {}
    record = {"dataset_type": "bias", "id": "b1", "run": "gen/bias", "data_id": {"instrument": "LSSTComCam",
                                                                                 "detector": 0}}
    other = dict(record, id="b2", data_id={"instrument": "LSSTComCam", "detector": 1})
    ours = [dict(cp_det, CPC_CALIBRATIONS={"bias": record}, CPC_THRESHOLDS={"noise": 0.05}),
            dict(cp_det, CPC_CALIBRATIONS={"bias": other}),
            dict(cp_det, CPC_CALIBRATIONS={"bias": record})]
    full = decide(exp, det_stats=ours)
    assert full["CALIBRATIONS"] == {"bias": [record, other]} and "CALIBRATIONS_NOTE" not in full
    assert full["THRESHOLDS"]["verification"] == {"noise": 0.05}
    same_decision(plain, full)


def test_decision_task_connections_follow_the_type():
    """Flat decisions are per (instrument, physical_filter) and named
    cpcVerify<Type>Decision; the detector input can be switched off."""
    for calib, dims in (("bias", {"instrument"}), ("dark", {"instrument"}),
                        ("flat", {"instrument", "physical_filter"})):
        config = CpVerifyDecisionConfig()
        config.calibrationType = calib
        config.connections.calibType = calib.capitalize()
        connections = config.connections.ConnectionsClass(config=config)
        assert set(connections.dimensions) == dims
        assert connections.outputDecision.name == f"cpcVerify{calib.capitalize()}Decision"
        assert set(connections.outputDecision.dimensions) == dims
        assert connections.inputExpStats.name == f"verify{calib.capitalize()}ExpStats"
        assert "inputDetStats" in connections.inputs
        config.doReadCalibrations = False
        assert "inputDetStats" not in config.connections.ConnectionsClass(config=config).inputs
    with pytest.raises(ValueError, match="calibType"):
        config = CpVerifyDecisionConfig()
        config.calibrationType = "flat"
        config.validate()


def test_malformed_exposure_results_are_a_clear_error():
    from lsst.cpcombined.errors import CpInputError

    with pytest.raises(CpInputError, match="not in cp_verify's shape"):
        decide({BASE: {"RXX_S00": {"FAILURES": []}}})  # no SUCCESS anywhere
    assert m.failures_from_exposure_stats({BASE: cp_verify_exposure({})})[0] == {str(BASE): []}
