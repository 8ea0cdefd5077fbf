"""Tests of the verification statistics, tests and merge (algorithms.verify),
including the cp_verify shapes of the detector, exposure and run dictionaries.

Synthetic detector: 2 rows x 4 amplifiers of 100 x 200 px (20 000 px per amp,
so a clipped std is known to ~0.5 %, a clipped mean to rn/141), serial
overscans of 100 x 64 px in ADU.  All thresholds are the SPEC defaults.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from lsst.cpcombined.algorithms import masks
from lsst.cpcombined.algorithms import verify as v

NY, NX = 100, 200
AMPS = ("C10", "C11", "C12", "C13", "C00", "C01", "C02", "C03")
GAINS = dict(zip(AMPS, (1.05, 1.07, 1.08, 1.11, 1.06, 1.09, 1.10, 1.12), strict=True))
READ_NOISE = dict(zip(AMPS, (8.0, 8.4, 8.8, 9.2, 9.6, 10.0, 8.2, 9.0), strict=True))
DET = "R22_S11"
EXP = 2026112500012


def amp_regions() -> dict[str, tuple[slice, slice]]:
    regions = {}
    for i, amp in enumerate(AMPS):
        row, col = divmod(i, 4)
        y0 = (1 - row) * NY  # C1x on top, C0x below
        regions[amp] = (slice(y0, y0 + NY), slice(col * NX, (col + 1) * NX))
    return regions


def make_bias(
    rng: np.random.Generator,
    offsets: dict[str, float] | None = None,
    noise_factor: dict[str, float] | None = None,
    level: dict[str, float] | None = None,
    gains: dict[str, float] = GAINS,
    poisson: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Image (e-), empty mask and per-amp overscans (ADU, with row-to-row
    bias jumps) of a verification frame.  ``level`` adds a flat-field signal
    (Poisson when ``poisson``)."""
    offsets = offsets or {}
    noise_factor = noise_factor or {}
    level = level or {}
    image = np.zeros((2 * NY, 4 * NX), dtype=np.float32)
    overscans = {}
    for amp, region in amp_regions().items():
        rn = READ_NOISE[amp]
        sigma = rn * noise_factor.get(amp, 1.0)
        signal = level.get(amp, 0.0)
        pix = rng.normal(offsets.get(amp, 0.0), sigma, (NY, NX))
        if signal:
            pix += rng.poisson(signal, (NY, NX)) if poisson else signal
        image[region] = pix
        overscans[amp] = rng.normal(0.0, rn / gains[amp], (NY, 64)) + rng.normal(0.0, 5.0, (NY, 1))
    return image, np.zeros(image.shape, dtype=np.uint8), overscans


def cr_noise_of(image: np.ndarray) -> dict[str, float]:
    """What cosmic-ray repair would report on a frame without cosmic rays."""
    return {amp: v.clipped_stats(image[r]).std for amp, r in amp_regions().items()}


def detector_result(calib_type, image, mask, overscans, *, exposure=EXP, detector=DET,
                    cr_noise=None, cr_overflow=False, gains=GAINS, thresholds=None, config=None):
    stats = v.detector_statistics(
        image,
        mask,
        amp_regions(),
        gains=gains,
        overscans=overscans,
        cr_noise=cr_noise if cr_noise is not None else cr_noise_of(image),
        cr_overflow=cr_overflow,
        config=config,
    )
    return v.verify_detector(calib_type, stats, exposure=exposure, detector=detector, thresholds=thresholds)


def failures(det) -> list[str]:
    """Run-level failure strings of a detector dictionary (with its name)."""
    return v.detector_failures(det, det["CPC_IDENTITY"]["DETECTOR"])


def amp_view(det, amp) -> dict:
    """Every statistic of one amplifier: cp_verify's AMP, our CPC_AMP and the
    metadata read noise."""
    view = dict(det["AMP"][amp])
    view.update(det["CPC_AMP"][amp])
    if "READ_NOISE_ADU" in det["METADATA"]:
        view["READ_NOISE_ADU"] = det["METADATA"]["READ_NOISE_ADU"][amp]
    return view


def amp_tests_of(det, amp) -> dict:
    """The amplifier's tests (without SUCCESS)."""
    return {k: val for k, val in det["VERIFY"]["AMP"][amp].items() if k != "SUCCESS"}


def fake_amp_stats(mean: float, noise: float, gain: float = 1.1, rn: float = 8.0) -> dict:
    return {"MEAN": mean, "MEANCLIP": mean, "NOISE": noise, "READ_NOISE": rn, "READ_NOISE_ADU": rn / gain,
            "CR_NOISE": noise, "CR_OVERFLOW": False, "AMP_CORNER": mean, "GAIN": gain, "N_PIXELS": 1000,
            "N_CLIPPED": 0}


def flat_detector(exposure, detector, level, amp_levels=None):
    """verify_detector of a flat from statistics only: shot + 8 e- read noise."""
    amp_levels = amp_levels or [level] * 4
    stats = {f"C0{i}": fake_amp_stats(m, math.sqrt(m + 64.0)) for i, m in enumerate(amp_levels)}
    return v.verify_detector("flat", stats, exposure=exposure, detector=detector)


def assert_plain(obj) -> None:
    """Only str/int/float/bool/None/list/dict, with str (or, run level, int) keys."""
    if isinstance(obj, dict):
        for k, val in obj.items():
            assert type(k) in (str, int)
            assert_plain(val)
    elif isinstance(obj, list):
        for val in obj:
            assert_plain(val)
    else:
        assert type(obj) in (str, int, float, bool, type(None)), (obj, type(obj))


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def test_clipped_stats_rejects_outliers():
    rng = np.random.default_rng(1)
    x = rng.normal(100.0, 5.0, 100_000)
    x[:1000] = 1000.0  # 1 % outliers at +180 sigma
    x[1000:1010] = np.nan
    s = v.clipped_stats(x)
    # mean error sigma/sqrt(n) = 0.016, std error 0.22 %
    assert s.mean == pytest.approx(100.0, abs=0.08)
    assert s.std == pytest.approx(5.0, rel=0.01)
    assert s.n_total == 99_990
    assert 99_000 - 10 - 5 <= s.n_used <= 98_990
    plain = v.clipped_stats(x, n_iter=0)
    assert plain.mean == pytest.approx(np.nanmean(x))
    assert plain.n_used == 99_990


def test_clipped_stats_degenerate():
    assert math.isnan(v.clipped_stats(np.array([])).mean)
    one = v.clipped_stats(np.array([3.0]))
    assert one.mean == 3.0 and math.isnan(one.std)
    const = v.clipped_stats(np.full(50, 7.0))
    assert const.mean == 7.0 and const.std == 0.0 and const.n_used == 50


def test_read_noise_from_overscan():
    rng = np.random.default_rng(2)
    gain, rn_e = 1.1, 8.8
    ov = rng.normal(1000.0, rn_e / gain, (500, 64)) + rng.normal(0.0, 30.0, (500, 1))
    rn = v.read_noise_from_overscan(ov, gain=gain)
    # 32 000 px -> 0.4 % rms; the row median removes ~0.3 % (documented): 2 % is > 4 sigma
    assert rn == pytest.approx(rn_e, rel=0.02)
    assert v.read_noise_from_overscan(ov) == pytest.approx(rn_e / gain, rel=0.02)
    # first 3 columns with extra noise of 3x the read noise (CTI-like trail): biased unless skipped
    ov[:, :3] += rng.normal(0.0, 3 * rn_e / gain, (500, 3))
    assert v.read_noise_from_overscan(ov, gain=gain) > 1.05 * rn_e
    assert v.read_noise_from_overscan(ov, gain=gain, skip_leading=3, skip_trailing=3) == pytest.approx(
        rn_e, rel=0.02
    )


def test_amp_statistics_values_and_masks():
    rng = np.random.default_rng(3)
    image, mask, overscans = make_bias(rng, offsets={"C11": 3.0})
    region = amp_regions()["C11"]
    stats = v.amp_statistics(image, mask, region, gain=GAINS["C11"], overscan=overscans["C11"])
    assert stats["MEANCLIP"] == pytest.approx(3.0, abs=5 * 8.4 / math.sqrt(NX * NY))
    assert stats["NOISE"] == pytest.approx(8.4, rel=0.025)
    assert stats["READ_NOISE"] == pytest.approx(8.4, rel=0.04)
    assert stats["N_PIXELS"] == NX * NY
    assert math.isnan(stats["CR_NOISE"]) and stats["CR_OVERFLOW"] is False

    # a bright source flagged DETECTED is ignored; SUSPECT is not, unless configured
    y, x = region[0].start + 10, region[1].start + 10
    image[y : y + 20, x : x + 20] = 5000.0
    mask[y : y + 20, x : x + 10] = masks.BIT["DETECTED"]
    mask[y : y + 20, x + 10 : x + 20] = masks.BIT["SUSPECT"]
    default = v.amp_statistics(image, mask, region, read_noise=8.4)
    assert default["N_PIXELS"] == NX * NY - 200
    assert default["MEAN"] > 3.0 + 40  # plain mean pulled by 200 px at 5000
    assert default["MEANCLIP"] == pytest.approx(3.0, abs=0.3)  # clipping removes them
    assert default["N_CLIPPED"] >= 200
    cfg = v.StatsConfig(mask_planes=("DETECTED", "BAD", "NO_DATA", "SUSPECT"))
    custom = v.amp_statistics(image, mask, region, read_noise=8.4, config=cfg)
    assert custom["N_PIXELS"] == NX * NY - 400
    assert custom["MEAN"] == pytest.approx(3.0, abs=0.3)


def test_amp_statistics_argument_checks():
    image = np.zeros((10, 10))
    region = (slice(0, 10), slice(0, 10))
    with pytest.raises(ValueError, match="either read_noise or overscan"):
        v.amp_statistics(image, None, region, read_noise=5.0, overscan=np.zeros((10, 4)), gain=1.0)
    with pytest.raises(ValueError, match="gain"):
        v.amp_statistics(image, None, region, overscan=np.zeros((10, 4)))
    with pytest.raises(KeyError):
        v.StatsConfig(mask_planes=("NOT_A_PLANE",))


# ---------------------------------------------------------------------------
# bias / dark tests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("calib_type", ["bias", "dark"])
def test_clean_frame_passes_everything(calib_type):
    rng = np.random.default_rng(10)
    image, mask, overscans = make_bias(rng)
    det = detector_result(calib_type, image, mask, overscans)
    assert det["SUCCESS"] is True and failures(det) == []
    for amp in det["AMP"]:
        rec = amp_view(det, amp)
        assert det["VERIFY"]["AMP"][amp] == {"MEAN": True, "NOISE": True, "CR_NOISE": True,
                                             "PROCESSING": True, "SUCCESS": True}
        # measured noise (20 000 px: 0.5 % rms) and overscan read noise (6 400 px: 0.9 % rms,
        # -0.3 % from the row median) agree with the truth within ~4.5 sigma
        assert rec["NOISE"] == pytest.approx(READ_NOISE[amp], rel=0.025)
        assert rec["READ_NOISE"] == pytest.approx(READ_NOISE[amp], rel=0.04)
        assert abs(rec["MEANCLIP"]) < 5 * READ_NOISE[amp] / math.sqrt(NX * NY)
        # cp_verify's READ_NOISE_ADU: the overscan noise in ADU
        assert rec["READ_NOISE_ADU"] == pytest.approx(READ_NOISE[amp] / GAINS[amp], rel=0.04)
    assert det["VERIFY"] == {"AMP": det["VERIFY"]["AMP"]} and det["DET"] == {}


def test_mean_offset_fails_mean_for_that_amp_only():
    rng = np.random.default_rng(11)
    image, mask, overscans = make_bias(rng, offsets={"C12": 40.0})
    det = detector_result("bias", image, mask, overscans)
    assert det["SUCCESS"] is False
    assert failures(det) == ["R22_S11 C12 MEAN"]
    assert amp_view(det, "C12")["MEANCLIP"] == pytest.approx(40.0, abs=0.5)
    assert amp_tests_of(det, "C12")["NOISE"] is True  # the offset does not change the noise


def test_extra_noise_fails_noise_for_that_amp_only():
    rng = np.random.default_rng(12)
    # total noise 1.2 x read noise (extra 0.66 rn added in quadrature)
    image, mask, overscans = make_bias(rng, noise_factor={"C03": 1.2})
    det = detector_result("dark", image, mask, overscans)
    assert failures(det) == ["R22_S11 C03 NOISE"]
    rec = amp_view(det, "C03")
    assert rec["NOISE"] / rec["READ_NOISE"] == pytest.approx(1.2, abs=0.04)
    others = [amp_view(det, a)["NOISE"] / amp_view(det, a)["READ_NOISE"] - 1 for a in AMPS if a != "C03"]
    assert max(others) < 0.03


def test_noise_threshold_is_configurable():
    rng = np.random.default_rng(13)
    image, mask, overscans = make_bias(rng, noise_factor={"C01": 1.2})
    det = detector_result("bias", image, mask, overscans, thresholds=v.VerifyThresholds(noise=0.25))
    assert det["SUCCESS"] is True


@pytest.mark.parametrize(
    ("factor", "passes"), [(1 / 1.06, False), (1 / 1.04, True), (1.04, True), (1.06, False)]
)
def test_cr_noise_boundary(factor, passes):
    rng = np.random.default_rng(14)
    image, mask, overscans = make_bias(rng)
    cr = cr_noise_of(image)
    cr["C10"] *= factor  # |noise - cr_noise| / cr_noise = |1/factor - 1|
    det = detector_result("dark", image, mask, overscans, cr_noise=cr)
    assert failures(det) == ([] if passes else ["R22_S11 C10 CR_NOISE"])


def test_missing_inputs_fail_rather_than_pass():
    rng = np.random.default_rng(15)
    image, mask, _ = make_bias(rng)
    stats = v.detector_statistics(
        image, mask, amp_regions(), read_noise={"C10": 8.0}, cr_noise=cr_noise_of(image)
    )
    det = v.verify_detector("bias", stats, exposure=EXP, detector=DET)
    # every amp but C10 has no read noise -> NOISE cannot pass
    assert sorted(failures(det)) == sorted(f"R22_S11 {a} NOISE" for a in AMPS if a != "C10")
    stats = v.detector_statistics(image, mask, amp_regions(), read_noise=READ_NOISE)
    det = v.verify_detector("bias", stats, exposure=EXP, detector=DET)
    assert sorted(failures(det)) == sorted(f"R22_S11 {a} CR_NOISE" for a in AMPS)


def test_processing_fails_on_overflow():
    rng = np.random.default_rng(16)
    image, mask, overscans = make_bias(rng)
    det = detector_result("dark", image, mask, overscans, cr_overflow={"C02": True})
    assert failures(det) == ["R22_S11 C02 PROCESSING"]
    det = detector_result("dark", image, mask, overscans, cr_overflow=True)  # whole detector
    assert failures(det) == [f"R22_S11 {a} PROCESSING" for a in AMPS]


# ---------------------------------------------------------------------------
# flat tests
# ---------------------------------------------------------------------------


def test_flat_noise_in_adu_passes_and_poisson_ratio_is_one():
    rng = np.random.default_rng(20)
    level = dict.fromkeys(AMPS, 20_000.0)
    image, mask, overscans = make_bias(rng, level=level, poisson=True)
    det = detector_result("flat", image, mask, overscans)
    assert det["SUCCESS"] is True, failures(det)
    for amp in det["AMP"]:
        rec = amp_view(det, amp)
        assert det["VERIFY"]["AMP"][amp] == {"NOISE": True, "SUCCESS": True}
        assert rec["MEAN_ADU"] == pytest.approx(20_000.0 / GAINS[amp], rel=1e-3)
        assert rec["NOISE_ADU"] <= rec["SQRT_MEAN_ADU"]
        # std / sqrt(mean + rn^2) = 1 within 4 x the 0.5 % precision of a 20 000 px std
        assert rec["POISSON_RATIO"] == pytest.approx(1.0, abs=0.02)
        # the ADU test passes with margin sqrt(gain): NOISE_ADU / SQRT_MEAN_ADU = 1/sqrt(gain)
        assert rec["NOISE_ADU"] / rec["SQRT_MEAN_ADU"] == pytest.approx(1 / math.sqrt(GAINS[amp]), abs=0.02)
    assert det["CPC_DET"]["REL_SCATTER"] < 0.001
    assert det["VERIFY"]["DET"] == {"SCATTER": True, "SUCCESS": True}
    # cp_verify's flat DET: mean and absolute std of the amp means; METADATA empty
    means = [amp_view(det, a)["MEANCLIP"] for a in AMPS]
    assert det["DET"] == {"MEAN": pytest.approx(np.mean(means)), "SCATTER": pytest.approx(np.std(means))}
    assert det["METADATA"] == {} and list(det["AMP"]["C10"]) == ["MEAN", "NOISE"]


def test_flat_poisson_test_is_stricter_and_optional():
    rng = np.random.default_rng(21)
    level = dict.fromkeys(AMPS, 20_000.0)
    gains = dict(GAINS, C13=1.40)
    # 10 % excess noise on a gain-1.40 amp: the ADU test allows up to ~18 % there
    rn = READ_NOISE["C13"]
    factor = math.sqrt((1.10**2 * (20_000 + rn**2) - 20_000) / rn**2)  # total = 1.10 x Poisson + read
    image, mask, overscans = make_bias(
        rng, level=level, poisson=True, gains=gains, noise_factor={"C13": factor}
    )
    det = detector_result("flat", image, mask, overscans, gains=gains)
    rec = amp_view(det, "C13")
    assert rec["POISSON_RATIO"] == pytest.approx(1.10, abs=0.02)
    assert det["SUCCESS"] is True and "POISSON_NOISE" not in amp_tests_of(det, "C13")
    strict = v.VerifyThresholds(flat_poisson=True)
    det = detector_result("flat", image, mask, overscans, gains=gains, thresholds=strict)
    assert failures(det) == ["R22_S11 C13 POISSON_NOISE"]
    assert amp_tests_of(det, "C12") == {"NOISE": True, "POISSON_NOISE": True}
    loose = v.VerifyThresholds(flat_poisson=True, flat_poisson_tolerance=0.15)
    assert detector_result("flat", image, mask, overscans, gains=gains, thresholds=loose)["SUCCESS"]


def test_flat_without_gain_raises():
    with pytest.raises(ValueError, match="gain"):
        v.amp_tests("flat", dict(fake_amp_stats(20_000.0, 142.0), GAIN=math.nan))


def test_flat_illumination_gradient_fails_detector_scatter():
    rng = np.random.default_rng(22)
    # amp levels rising linearly from 0.85 to 1.15 x 20 000 e-: std/mean = 0.098
    level = {amp: 20_000.0 * (0.85 + 0.30 * i / 7) for i, amp in enumerate(AMPS)}
    image, mask, overscans = make_bias(rng, level=level, poisson=True)
    det = detector_result("flat", image, mask, overscans)
    expected = np.std(list(level.values())) / np.mean(list(level.values()))
    assert det["CPC_DET"]["REL_SCATTER"] == pytest.approx(expected, rel=0.01)
    assert det["DET"]["SCATTER"] / det["DET"]["MEAN"] == pytest.approx(expected, rel=0.01)
    assert failures(det) == ["R22_S11 SCATTER"]  # every amp passes its own tests
    assert all(rec["SUCCESS"] for rec in det["VERIFY"]["AMP"].values())
    assert det["VERIFY"]["DET"] == {"SCATTER": False, "SUCCESS": False}
    assert det["SUCCESS"] is False


def test_exposure_scatter_is_normalised():
    # nine detectors at 20 000 e- +- 2 %: normalised scatter ~0.016 passes,
    # while the unnormalised std (what cp_verify compares to 0.05) is ~300 e-
    rng = np.random.default_rng(23)
    levels = 20_000.0 * (1 + rng.uniform(-0.02, 0.02, 9))
    dets = [flat_detector(EXP, f"R22_S{i // 3}{i % 3}", lvl) for i, lvl in enumerate(levels)]
    exp = v.verify_exposure("flat", dets)
    assert np.std(levels) > 0.05  # cp_verify would fail this exposure
    assert exp["EXP"]["SCATTER"] == pytest.approx(np.std(levels) / np.mean(levels), rel=1e-9)
    assert exp["SUCCESS"] is True and exp["VERIFY"] == {"EXP": {"SCATTER": True}}
    # cp_verify's keys only: detector names, EXP, VERIFY, SUCCESS
    assert list(exp) == [f"R22_S{i // 3}{i % 3}" for i in range(9)] + ["EXP", "VERIFY", "SUCCESS"]

    # low-level case where the unnormalised std passes but the scatter fails
    dets = [flat_detector(EXP, "R22_S00", 0.10), flat_detector(EXP, "R22_S01", 0.13)]
    exp = v.verify_exposure("flat", dets)
    assert np.std([0.10, 0.13]) < 0.05
    assert exp["EXP"]["SCATTER"] == pytest.approx(0.015 / 0.115)
    assert v.exposure_failures(exp)[-1] == "SCATTER"

    # a single detector (LATISS) has scatter 0
    exp = v.verify_exposure("flat", [flat_detector(EXP, "RXX_S00", 20_000.0)])
    assert exp["EXP"]["SCATTER"] == 0.0 and exp["SUCCESS"] is True


# ---------------------------------------------------------------------------
# merge, failure strings, outputs
# ---------------------------------------------------------------------------


def test_merge_levels_and_failure_strings():
    e1, e2 = 2026112500012, 2026112500013
    good = {f"C0{i}": fake_amp_stats(0.5, 8.1) for i in range(4)}
    bad = dict(good, C01=fake_amp_stats(0.5, 9.0))  # NOISE 12 % over the read noise
    d11 = v.verify_detector("bias", bad, exposure=e1, detector="R22_S11")
    d12 = v.verify_detector("bias", good, exposure=e1, detector="R22_S12")
    d21 = v.verify_detector("bias", bad, exposure=e2, detector="R22_S11")
    d22 = v.verify_detector("bias", good, exposure=e2, detector="R22_S12")
    assert failures(d11) == ["R22_S11 C01 NOISE"] and d11["SUCCESS"] is False
    assert v.detector_failures(d11) == ["C01 NOISE"]  # exposure-level form
    assert d11["VERIFY"]["AMP"]["C00"]["SUCCESS"] is True and d11["VERIFY"]["AMP"]["C01"]["SUCCESS"] is False
    assert d12["SUCCESS"] is True
    # cp_verify's detector keys in cp_verify's order, then ours
    assert list(d11) == ["AMP", "METADATA", "CATALOG", "DET", "VERIFY", "SUCCESS",
                         "CPC_IDENTITY", "CPC_AMP", "CPC_DET"]
    assert list(d11["AMP"]["C00"]) == ["MEAN", "NOISE", "CR_NOISE", "AMP_CORNER"]

    x1 = v.verify_exposure("bias", [d11, d12])
    assert x1 == {"R22_S11": {"SUCCESS": False, "FAILURES": ["C01 NOISE"]}, "R22_S12": {"SUCCESS": True},
                  "SUCCESS": False}
    assert v.exposure_failures(x1) == ["R22_S11 C01 NOISE"]
    assert v.exposure_detectors(x1) == ["R22_S11", "R22_S12"]
    # detector names may also be given by the caller (as the task does from the data IDs)
    assert v.verify_exposure("bias", {"R22_S11": d11, "R22_S12": d12}) == x1

    x2 = v.verify_exposure("bias", [d21, d22])
    run = v.verify_run({e2: x2, e1: x1})
    assert run == {e1: {"SUCCESS": False, "FAILURES": ["R22_S11 C01 NOISE"]},
                   e2: {"SUCCESS": False, "FAILURES": ["R22_S11 C01 NOISE"]},
                   "SUCCESS": False}
    assert list(run) == [e1, e2, "SUCCESS"]  # integer exposure ids, ascending
    passing = v.verify_exposure("bias", [d12])
    assert v.verify_run({e1: passing}) == {e1: {"SUCCESS": True}, "SUCCESS": True}

    # flat: an exposure fails on its own test even when all detectors pass
    f1 = flat_detector(e1, "R22_S00", 20_000.0)
    f2 = flat_detector(e1, "R22_S01", 30_000.0)
    f3 = flat_detector(e2, "R22_S00", 20_000.0, amp_levels=[16_000.0, 18_000.0, 22_000.0, 24_000.0])
    assert f1["SUCCESS"] and f2["SUCCESS"]
    xf1 = v.verify_exposure("flat", [f1, f2])
    assert v.exposure_failures(xf1) == ["SCATTER"] and xf1["SUCCESS"] is False
    assert xf1["R22_S00"] == {"SUCCESS": True} and xf1["VERIFY"] == {"EXP": {"SCATTER": False}}
    xf2 = v.verify_exposure("flat", [f3])
    assert xf2["R22_S00"] == {"SUCCESS": False, "FAILURES": ["SCATTER"]}
    assert v.exposure_failures(xf2) == ["R22_S00 SCATTER"]
    runf = v.verify_run({e1: xf1, e2: xf2})
    assert runf[e1]["FAILURES"] == ["SCATTER"] and runf[e2]["FAILURES"] == ["R22_S00 SCATTER"]

    # every failure string ends with the test name
    for f in [f for level in (run, runf) for e, rec in level.items() if e != "SUCCESS"
              for f in rec.get("FAILURES", [])]:
        assert f.split()[-1] in {"MEAN", "NOISE", "CR_NOISE", "PROCESSING", "SCATTER"}

    # all levels are plain YAML data (JSON too, except the integer keys of the run level)
    for obj in (d11, x1, run, f3, xf1, runf):
        assert_plain(obj)
        assert yaml.safe_load(yaml.safe_dump(obj, sort_keys=False)) == obj
    for obj in (d11, x1, f3, xf1):
        assert json.loads(json.dumps(obj)) == obj


def test_failures_follow_cp_verify_rules():
    """Only boolean False is a failure, a level with SUCCESS True lists
    nothing, detector tests come before amplifier tests, and a detector
    dictionary written by cp_verify (no CPC_ keys) merges the same way."""
    det = {
        "AMP": {"C10": {"MEAN": 1.0, "NOISE": 5.0}, "C11": {"MEAN": 1.0, "NOISE": 9.0}},
        "METADATA": {}, "CATALOG": {}, "DET": {"MEAN": 1.0, "SCATTER": 0.2},
        "VERIFY": {"AMP": {"C10": {"NOISE": True, "SUCCESS": True},
                           "C11": {"NOISE": False, "EXTRA": None, "SUCCESS": False}},
                   "DET": {"SCATTER": False, "SUCCESS": False}},
        "SUCCESS": False,
    }
    assert v.detector_failures(det) == ["SCATTER", "C11 NOISE"]
    assert v.detector_failures(dict(det, SUCCESS=True)) == []
    # an amp whose SUCCESS is true lists nothing, as in cp_verify (READ_NOISE_CONSISTENT)
    det["VERIFY"]["AMP"]["C10"]["READ_NOISE_CONSISTENT"] = False
    assert v.detector_failures(det) == ["SCATTER", "C11 NOISE"]
    exp = v.verify_exposure("flat", {"R22_S11": det, "R22_S12": dict(det, SUCCESS=True, DET={"MEAN": 1.1})})
    assert exp["R22_S11"] == {"SUCCESS": False, "FAILURES": ["SCATTER", "C11 NOISE"]}
    assert exp["EXP"]["SCATTER"] == pytest.approx(0.05 / 1.05)
    assert exp["VERIFY"] == {"EXP": {"SCATTER": True}} and exp["SUCCESS"] is False
    assert v.exposure_failures(exp) == ["R22_S11 SCATTER", "R22_S11 C11 NOISE"]


def test_amp_corner_at_the_readout_corner():
    region = (slice(100, 200), slice(400, 600))
    corner = v.readout_corner_region
    assert corner(region, flip_x=True, flip_y=False, size=50) == (slice(100, 150), slice(550, 600))
    assert corner(region, flip_x=False, flip_y=True, size=50) == (slice(150, 200), slice(400, 450))
    # clipped to the amplifier (a 0.125-scale amp is smaller than cp_verify's 200 px box)
    assert v.readout_corner_region(region, flip_x=True, flip_y=True) == (slice(100, 200), slice(400, 600))
    rng = np.random.default_rng(5)
    image, mask, overscans = make_bias(rng)
    r = amp_regions()["C13"]
    corner = v.readout_corner_region(r, flip_x=True, flip_y=False, size=40)
    image[corner] += 25.0  # a warm readout corner: 1600 px at +25 e-
    mask[corner[0].start, corner[1].start] = masks.BIT["BAD"]  # masked pixels are ignored
    stats = v.detector_statistics(image, mask, amp_regions(), gains=GAINS, overscans=overscans,
                                  cr_noise=cr_noise_of(image), corner_regions={"C13": corner})
    # mean of 1599 px of noise 9.2 e-: +-0.23 e- rms
    assert stats["C13"]["AMP_CORNER"] == pytest.approx(25.0, abs=1.2)
    assert math.isnan(stats["C12"]["AMP_CORNER"])
    det = v.verify_detector("bias", stats, exposure=EXP, detector=DET)
    assert det["AMP"]["C13"]["AMP_CORNER"] == stats["C13"]["AMP_CORNER"]
    assert "AMP_CORNER" not in v.verify_detector("dark", stats, exposure=EXP, detector=DET)["AMP"]["C13"]


def test_merge_consistency_checks():
    good = {"C00": fake_amp_stats(0.5, 8.1)}
    d1 = v.verify_detector("bias", good, exposure=1, detector="R22_S00")
    d2 = v.verify_detector("bias", good, exposure=2, detector="R22_S01")
    with pytest.raises(ValueError, match="several exposures"):
        v.verify_exposure("bias", [d1, d2])
    with pytest.raises(ValueError, match="twice"):
        v.verify_exposure("bias", [d1, d1])
    with pytest.raises(ValueError, match="no exposure"):
        v.verify_run({})
    with pytest.raises(ValueError, match="types"):
        v.verify_exposure("dark", [d1])
    with pytest.raises(ValueError, match="white space"):
        v.verify_detector("bias", good, exposure=1, detector="R22 S00")
    with pytest.raises(ValueError, match="Unknown calibration type"):
        v.verify_detector("defects", good, exposure=1, detector="R22_S00")


def test_results_table():
    rng = np.random.default_rng(30)
    rows = []
    for exp in (EXP, EXP + 1):
        image, mask, overscans = make_bias(rng, offsets={"C12": 40.0} if exp == EXP else None)
        det = detector_result("bias", image, mask, overscans, exposure=exp)
        rows += v.results_rows("bias", det, instrument="LSSTComCam", exposure=exp, detector=4, mjd=61000.5)
    table = v.results_table(rows)
    assert len(table) == 2 * len(AMPS)
    # cp_verify's columns first, in its order (analysis_tools reads detector, amplifier and BIAS_*)
    assert table.colnames[:16] == [
        "instrument", "exposure", "detector", "mjd", "amplifier", "BIAS_MEAN", "BIAS_NOISE", "BIAS_CR_NOISE",
        "BIAS_AMP_CORNER", "BIAS_VERIFY_MEAN", "BIAS_VERIFY_NOISE", "BIAS_VERIFY_CR_NOISE",
        "BIAS_VERIFY_PROCESSING", "BIAS_VERIFY_SUCCESS", "BIAS_READ_NOISE_ADU", "BIAS_MEANCLIP"]
    for col in ("BIAS_READ_NOISE", "BIAS_CR_OVERFLOW", "BIAS_GAIN", "BIAS_N_PIXELS", "BIAS_DET_NOISE"):
        assert col in table.colnames
    failed = table[~table["BIAS_VERIFY_SUCCESS"]]
    assert len(failed) == 1
    assert (failed["exposure"][0], failed["detector"][0], failed["amplifier"][0]) == (EXP, 4, "C12")
    assert not failed["BIAS_VERIFY_MEAN"][0] and failed["BIAS_VERIFY_NOISE"][0]
    assert failed["BIAS_MEANCLIP"][0] == pytest.approx(40.0, abs=0.5)
    assert rows[0]["exposure"] == EXP and rows[0]["amplifier"] == "C10" and rows[0]["mjd"] == 61000.5
    assert rows[0]["instrument"] == "LSSTComCam"

    det = flat_detector(EXP, "R22_S00", 20_000.0)
    flat = v.results_table(v.results_rows("flat", det, instrument="LSSTComCam", exposure=EXP, detector=0,
                                          physical_filter="r_03"))
    assert flat.colnames[:12] == [
        "instrument", "exposure", "detector", "physical_filter", "mjd", "amplifier", "FLAT_MEAN",
        "FLAT_NOISE", "FLAT_VERIFY_NOISE", "FLAT_VERIFY_SUCCESS", "FLAT_DET_MEAN", "FLAT_DET_SCATTER"]
    for col in ("FLAT_DET_VERIFY_SCATTER", "FLAT_MEAN_ADU", "FLAT_NOISE_ADU", "FLAT_POISSON_RATIO",
                "FLAT_DET_REL_SCATTER"):
        assert col in flat.colnames
    assert set(flat["physical_filter"]) == {"r_03"} and np.all(flat["FLAT_DET_VERIFY_SCATTER"])


def test_tests_for():
    assert v.tests_for("bias")["amp"] == ("MEAN", "NOISE", "CR_NOISE", "PROCESSING", "LEVEL")
    assert v.tests_for("dark", v.VerifyThresholds(dark_level=None))["amp"] == ("MEAN", "NOISE", "CR_NOISE", "PROCESSING")
    assert v.tests_for("flat") == {"amp": ("NOISE",), "detector": ("SCATTER",), "exposure": ("SCATTER",)}
    assert v.tests_for("flat", v.VerifyThresholds(flat_poisson=True))["amp"] == ("NOISE", "POISSON_NOISE")


def test_level_of_the_calibration_under_test():
    image = np.zeros((20, 40), dtype=np.float32)
    image[:, 20:] = 80.0
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[:5, :20] = masks.BIT["BAD"]
    left, right = (slice(0, 20), slice(0, 20)), (slice(0, 20), slice(20, 40))
    assert v.calibration_level(image, mask, left, masks.bits("BAD")) == (0.0, 0.25)
    assert v.calibration_level(image, mask, right, masks.bits("BAD")) == (80.0, 0.0)
    stats = {"NOISE": 9.0, "MEANCLIP": 0.1, "READ_NOISE": 9.0, "CR_NOISE": 9.0, "CR_OVERFLOW": False}
    assert v.amp_tests("bias", {**stats, "CALIB_LEVEL": 49.0})["LEVEL"] is True
    assert v.amp_tests("bias", {**stats, "CALIB_LEVEL": -80.0})["LEVEL"] is False
    assert v.amp_tests("bias", {**stats, "CALIB_LEVEL": float("nan")})["LEVEL"] is False
    assert "LEVEL" not in v.amp_tests("bias", stats)  # no calibration level measured: no test
