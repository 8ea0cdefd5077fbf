"""Tests of the majority rule (algorithms.majority), at its boundaries."""

from __future__ import annotations

import json

import pytest
import yaml
from lsst.cpcombined.algorithms import majority as m
from lsst.cpcombined.algorithms import verify as v


def failures(test: str, count: int, n_detectors: int) -> list[str]:
    """``count`` distinct failure strings of ``test`` spread over the detectors."""
    return [f"R22_S{i % n_detectors:02d} C{i // n_detectors:02d} {test}" for i in range(count)]


def exposures(n: int, n_failed: int, n_detectors: int, threshold: int) -> dict[int, list[str]]:
    """N exposures, the first ``n_failed`` failing exactly at the limit, the
    others one failure short of it."""
    limit = m.failure_limit_per_test(n_detectors, threshold)
    base = 2026112500000
    return {
        base + i: failures("NOISE", limit if i < n_failed else limit - 1, n_detectors) for i in range(n)
    }


@pytest.mark.parametrize(("n_detectors", "expected"), [(1, 8), (2, 16), (3, 16), (4, 24), (8, 40), (9, 40)])
def test_failure_limit_per_test(n_detectors, expected):
    assert m.failure_limit_per_test(n_detectors) == expected
    assert m.failure_limit_per_test(n_detectors, 3) == 3 * (n_detectors // 2 + 1)


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (10, 6), (11, 6), (20, 11)]
)
def test_exposure_failure_limit(n, expected):
    assert m.exposure_failure_limit(n) == expected


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 11, 20, 21])
@pytest.mark.parametrize("n_detectors", [1, 2, 3, 9])
def test_calibration_boundary(n, n_detectors):
    t = 8
    at_limit = m.majority_decision(exposures(n, n // 2, n_detectors, t), n_detectors=n_detectors, threshold=t)
    assert at_limit.n_exposures == n
    assert at_limit.n_failed_exposures == n // 2
    assert at_limit.exposure_failure_limit == n // 2 + 1
    assert at_limit.certify is True

    over = m.majority_decision(exposures(n, n // 2 + 1, n_detectors, t), n_detectors=n_detectors, threshold=t)
    assert over.n_failed_exposures == n // 2 + 1
    assert over.certify is False
    assert len(over.failed_exposures) == n // 2 + 1


@pytest.mark.parametrize("n_detectors", [1, 2, 3, 8, 9])
@pytest.mark.parametrize("threshold", [1, 3, 8])
def test_exposure_fails_exactly_at_limit(n_detectors, threshold):
    limit = threshold * (n_detectors // 2 + 1)
    exp_fail = {"e1": failures("MEAN", limit, n_detectors)}
    d = m.majority_decision(exp_fail, n_detectors=n_detectors, threshold=threshold)
    assert d.test_failure_limit == limit
    assert d.exposures["e1"].failed is True
    assert d.failed_exposures == {"e1": {"MEAN": limit}}
    assert d.certify is False  # N = 1: one failed exposure is a majority

    exp_pass = {"e1": failures("MEAN", limit - 1, n_detectors)}
    d = m.majority_decision(exp_pass, n_detectors=n_detectors, threshold=threshold)
    assert d.exposures["e1"].failed is False
    assert d.exposures["e1"].counts == ({"MEAN": limit - 1} if limit > 1 else {})
    assert d.certify is True


def test_different_tests_do_not_add_up():
    n_detectors, t = 9, 8
    limit = 40
    mixed = (
        failures("NOISE", limit - 1, n_detectors)
        + failures("MEAN", limit - 1, n_detectors)
        + failures("CR_NOISE", limit - 1, n_detectors)
    )
    d = m.majority_decision({"e1": mixed}, n_detectors=n_detectors, threshold=t)
    assert len(mixed) == 3 * (limit - 1) > limit
    assert d.exposures["e1"].failed is False
    assert d.exposures["e1"].counts == {"CR_NOISE": 39, "MEAN": 39, "NOISE": 39}
    assert d.certify is True


def test_detector_and_exposure_level_failures_count_by_test_name():
    # "R22_S00 SCATTER" (detector) and "SCATTER" (exposure) are both SCATTER failures
    exps = {"e1": ["R22_S00 SCATTER", "SCATTER", "R22_S00 C10 NOISE"]}
    d = m.majority_decision(exps, n_detectors=1, threshold=2)
    assert d.exposures["e1"].counts == {"SCATTER": 2, "NOISE": 1}
    assert d.failed_exposures == {"e1": {"SCATTER": 2}}


def test_threshold_configurable_per_type():
    exps = {"e1": failures("NOISE", 10, 9), "e2": [], "e3": []}
    assert m.majority_decision(exps, n_detectors=9).exposures["e1"].failed is False  # limit 40
    d = m.majority_decision(exps, n_detectors=9, threshold={"bias": 2, "flat": 20}, calib_type="bias")
    assert d.threshold == 2 and d.test_failure_limit == 10
    assert d.exposures["e1"].failed is True
    assert d.certify is True  # 1 failed exposure of 3 < 2
    d = m.majority_decision(exps, n_detectors=9, threshold={"bias": 2}, calib_type="dark")
    assert d.threshold == m.DEFAULT_THRESHOLD
    with pytest.raises(ValueError, match="calib_type"):
        m.majority_decision(exps, n_detectors=9, threshold={"bias": 2})


def test_report_and_dict():
    exps = exposures(5, 3, 9, 8)
    exps[2026112500000] += failures("MEAN", 7, 9)
    d = m.majority_decision(exps, n_detectors=9, calib_type="dark")
    assert d.certify is False
    text = d.report
    assert "dark: DO NOT CERTIFY" in text
    assert "N = 5 exposures verified, D = 9 detectors, T = 8" in text
    assert "8 x 5 = 40 failures" in text
    assert "failed exposures: 3 of 5 (limit 3)" in text
    assert "2026112500000: NOISE 40 >= 40 (all failures: NOISE 40, MEAN 7)" in text
    assert "2026112500004: NOISE 39" in text  # below the limit, still reported
    out = d.to_dict()
    assert out["CERTIFY"] is False and out["N_FAILED_EXPOSURES"] == 3
    assert out["FAILED_EXPOSURES"]["2026112500001"] == {"NOISE": 40}
    assert out["COUNTS"]["2026112500000"] == {"NOISE": 40, "MEAN": 7}
    assert json.loads(json.dumps(out)) == out
    assert yaml.safe_load(yaml.safe_dump(out)) == out

    ok = m.majority_decision({"e1": [], "e2": []}, n_detectors=1)
    assert ok.certify is True and "CERTIFY" in ok.report and "exposures without any failure: 2" in ok.report


def test_no_exposure_is_never_certified():
    d = m.majority_decision({}, n_detectors=9)
    assert d.certify is False
    assert "no exposure was verified" in d.report


def test_summary_keys_are_not_exposures():
    # the original script's dictionary: SUCCESS sits next to the exposures
    flat = {
        "2026112500001": {"SUCCESS": False, "FAILURES": failures("NOISE", 8, 1)},
        "2026112500002": {"SUCCESS": True, "FAILURES": []},
        "2026112500003": {"SUCCESS": True, "FAILURES": []},
        "SUCCESS": False,
    }
    d = m.majority_decision(flat, n_detectors=1)
    assert d.n_exposures == 3  # not 4
    assert d.exposure_failure_limit == 2
    assert d.n_failed_exposures == 1 and d.certify is True


def test_inputs_from_verify_outputs():
    """Exposure dictionaries, the run dictionary and plain failure lists of
    the same verification give the same decision; D is read from the
    exposure dictionaries (distinct detector names)."""

    def stats(noise):
        return {"MEAN": 0.1, "MEANCLIP": 0.1, "NOISE": noise, "READ_NOISE": 8.0, "READ_NOISE_ADU": 7.3,
                "CR_NOISE": noise, "CR_OVERFLOW": False, "AMP_CORNER": 0.1, "GAIN": 1.1, "N_PIXELS": 100,
                "N_CLIPPED": 0}

    exp_stats = {}
    for e in range(3):
        dets = []
        for d in range(3):  # D = 3 -> limit T x 2; T = 2 -> 4 NOISE failures fail an exposure
            n_bad = 2 if e < 2 else 1  # exposures 0, 1: 6 NOISE failures; exposure 2: 3
            amps = {f"C0{a}": stats(9.0 if a < n_bad else 8.1) for a in range(4)}
            dets.append(v.verify_detector("bias", amps, exposure=100 + e, detector=f"R22_S0{d}"))
        exp_stats[100 + e] = v.verify_exposure("bias", dets)
    run = v.verify_run(exp_stats)

    from_exps = m.decide_from_exposure_stats(exp_stats, threshold={"bias": 2}, calib_type="bias")
    from_run = m.majority_decision(run, n_detectors=3, threshold=2)
    lists = {str(e): v.exposure_failures(x) for e, x in exp_stats.items()}
    plain = m.majority_decision(lists, n_detectors=3, threshold=2)
    for d in (from_run, from_exps, plain):
        assert d.n_exposures == 3 and d.n_detectors == 3 and d.test_failure_limit == 4
        assert d.failed_exposures == {"100": {"NOISE": 6}, "101": {"NOISE": 6}}
        assert d.counts["102"] == {"NOISE": 3}
        assert d.certify is False
    assert from_exps.calib_type == "bias" and from_exps.detectors == ("R22_S00", "R22_S01", "R22_S02")
    assert from_exps.to_dict()["DETECTORS"] == ["R22_S00", "R22_S01", "R22_S02"]
    failures, detectors = m.failures_from_exposure_stats(exp_stats)
    assert failures["102"] == ["R22_S00 C00 NOISE", "R22_S01 C00 NOISE", "R22_S02 C00 NOISE"]
    assert detectors == ["R22_S00", "R22_S01", "R22_S02"]
    with pytest.raises(ValueError, match="n_detectors"):
        m.majority_decision({"e1": []})
    with pytest.raises(ValueError, match="name no detector"):
        m.decide_from_exposure_stats({1: {"SUCCESS": True}})
    with pytest.raises(TypeError, match="list of strings"):
        m.majority_decision({"e1": "R22_S00 C10 NOISE"}, n_detectors=1)
