"""The simulated camera: frames written, ingested and read back through the
butler carry exactly the truth that was simulated."""

from __future__ import annotations

import numpy as np
import pytest
from lsst.cpcombined.cli.main import main as cpcombined
from lsst.cpcombined.obs.raw import read_raw_file
from lsst.cpcombined.simulation import SimulationTruth, TruthError
from lsst.cpcombined.simulation.camera import SimulatedCamera
from lsst.cpcombined.simulation.sensor import _bf_charge, _dark_charge, _poisson_uniform, simulate_raw_amps

SMALL = {"geometry_scale": 0.125, "seed": 7}


def _raw(butler, instrument, exposure, detector=0):
    uri = butler.getURI("raw", instrument=instrument, exposure=exposure, detector=detector,
                        collections=f"{instrument}/raw/all")
    return read_raw_file(uri.ospath)


def test_exposure_records(repo):
    truth = SimulationTruth("LATISS", SMALL)
    cam = SimulatedCamera(repo, truth)
    biases = cam.take("bias", [0.0, 0.0])
    flats = cam.take("flat", [2.5, 2.5], physical_filter="SDSSg_65mm~empty")
    recs = {r.id: r for r in repo.query_dimension_records("exposure", instrument="LATISS")}
    assert sorted(recs) == biases + flats
    for e in biases:
        assert recs[e].observation_type == "bias" and recs[e].exposure_time == 0.0
    for e in flats:
        r = recs[e]
        assert r.observation_type == "flat" and r.exposure_time == 2.5 and r.dark_time == pytest.approx(2.8)
        assert r.physical_filter == "SDSSg_65mm~empty"
        assert r.has_simulated
        duration = (r.timespan.end - r.timespan.begin).to_value("s")
        assert duration == pytest.approx(2.8, abs=1e-3)
    # Sequential, non-overlapping exposures with consecutive sequence numbers.
    ordered = [recs[e] for e in biases + flats]
    assert [r.seq_num for r in ordered] == list(range(ordered[0].seq_num, ordered[0].seq_num + 4))
    for a, b in zip(ordered, ordered[1:], strict=False):
        assert a.timespan.end < b.timespan.begin


def test_overscan_read_noise_and_gain_match_truth(repo):
    truth = SimulationTruth(
        "LATISS",
        {**SMALL, "overscan": {"row_jitter_adu": 0.0, "level_drift_adu": 0.0}, "a00": 0.0,
         "cosmic_ray_rate": 0.0, "flat_flux": 4000.0, "bias_structure_adu": 0.0,
         "hot_pixel_density": 0.0, "cold_pixel_density": 0.0, "bad_columns_per_detector": 0},
    )
    dt = truth.detector_truth(0)
    cam = SimulatedCamera(repo, truth)
    (bias,) = cam.take("bias", [0.0])
    f1, f2 = cam.take("flat", [5.0, 5.0])
    raw_b = _raw(repo, "LATISS", bias)
    raw1, raw2 = _raw(repo, "LATISS", f1), _raw(repo, "LATISS", f2)
    lay = truth.layout
    n_os = lay.data_height * (lay.serial_overscan - 6)
    gain_errors = []
    for amp in raw_b.amp_names:
        g = raw_b.geometry(amp)
        gain, rn_e = dt.gain[amp], dt.read_noise[amp]
        rn_adu = rn_e / gain
        ys, xs = g.raw_serial_overscan
        os_pix = raw_b.amp_array(amp)[ys, xs.start + 3: xs.stop - 3]
        # Overscan level: the simulated bias level, within the sampling error of its mean.
        assert os_pix.mean() == pytest.approx(dt.bias_level[amp], abs=5 * rn_adu / np.sqrt(n_os) + 0.01)
        # Read noise (ADU → e-): within 5 sampling sigmas of the std (plus 1/12 ADU² of rounding).
        measured_rn_e = np.sqrt(os_pix.var() - 1 / 12) * gain
        assert measured_rn_e == pytest.approx(rn_e, rel=5 / np.sqrt(2 * n_os))
        # Gain from a pair of flats (photon transfer on the difference image).
        d1 = raw1.amp_array(amp)[g.raw_data] - np.median(raw1.amp_array(amp)[g.raw_serial_overscan])
        d2 = raw2.amp_array(amp)[g.raw_data] - np.median(raw2.amp_array(amp)[g.raw_serial_overscan])
        mu = 0.5 * (d1.mean() + d2.mean())
        var = np.var(d1 - d2) / 2 - rn_adu**2 - 1 / 12
        measured_gain = mu / var
        sigma = np.sqrt(2.0 / d1.size)  # relative error of the variance estimate
        assert measured_gain == pytest.approx(gain, rel=5 * sigma)
        gain_errors.append(measured_gain / gain - 1)
    # Averaged over 16 amps the gain is recovered to better than 1 %.
    assert abs(np.mean(gain_errors)) < 0.01


def test_faults_only_in_imaging_area(repo):
    truth = SimulationTruth(
        "LSSTComCam",
        {
            **SMALL,
            "overscan": {"row_jitter_adu": 0.0, "level_drift_adu": 0.0},
            "faults": [
                {
                    "image_type": "bias",
                    "exposures": [1],
                    "detectors": [4],
                    "amplifiers": ["C10"],
                    "imaging_offset_adu": 40,
                },
                {
                    "image_type": "bias",
                    "exposures": [1],
                    "detectors": ["R22_S11"],
                    "amplifiers": ["C00"],
                    "nan": True,
                },
                {
                    "image_type": "bias",
                    "exposures": [1],
                    "detectors": [4],
                    "amplifiers": ["C05"],
                    "saturate": True,
                },
            ],
        },
    )
    cam = SimulatedCamera(repo, truth, detectors=[3, 4])
    (discard,) = cam.take("bias", [0.0], discard=True)
    clean, faulty = cam.take("bias", [0.0, 0.0])
    a = _raw(repo, "LSSTComCam", clean, 4)
    b = _raw(repo, "LSSTComCam", faulty, 4)
    other = _raw(repo, "LSSTComCam", faulty, 3)
    g = a.geometry("C10")
    diff_data = b.amp_array("C10")[g.raw_data].mean() - a.amp_array("C10")[g.raw_data].mean()
    diff_os = (
        b.amp_array("C10")[g.raw_serial_overscan].mean() - a.amp_array("C10")[g.raw_serial_overscan].mean()
    )
    assert diff_data == pytest.approx(40, abs=1.0)
    assert diff_os == pytest.approx(0, abs=1.0)
    assert np.isnan(b.amp_array("C00")[g.raw_data]).all()
    assert np.isfinite(b.amp_array("C00")[g.raw_serial_overscan]).all()
    assert b.amp_array("C05")[g.raw_data].min() >= 142857
    other_clean = _raw(repo, "LSSTComCam", clean, 3)
    assert np.isfinite(other.amp_array("C00")).all()  # other detector untouched
    other_diff = other.amp_array("C10")[g.raw_data].mean() - other_clean.amp_array("C10")[g.raw_data].mean()
    assert other_diff == pytest.approx(0, abs=1.0)


def test_truth_validation():
    with pytest.raises(TruthError, match="unknown keys"):
        SimulationTruth("LATISS", {"gian": 1.2})
    with pytest.raises(TruthError, match="geometry_scale"):
        SimulationTruth("LATISS", {"geometry_scale": 2})
    with pytest.raises(TruthError, match="unknown amplifier names"):
        SimulationTruth("LATISS", {"gain": {"C99": 1.0}})
    with pytest.raises(TruthError, match="faults\\[0\\].image_type"):
        SimulationTruth("LATISS", {"faults": [{"image_type": "science"}]})
    with pytest.raises(TruthError, match="outside"):
        SimulationTruth("LATISS", {"geometry_scale": 0.125, "hot_pixels": [[0, 600, 10, 20.0]]})
    with pytest.raises(TruthError, match="no detector 5"):
        SimulationTruth("LATISS", {"cold_pixels": [[5, 1, 1, 0.5]]})
    t = SimulationTruth("LATISS", {"gain": {"C10": 1.5}, "read_noise": 6.0})
    dt = t.detector_truth(0)
    assert dt.gain["C10"] == 1.5 and dt.gain["C11"] == pytest.approx(1.047)
    assert set(dt.read_noise.values()) == {6.0}


def test_truth_is_deterministic():
    a = SimulationTruth("LSSTComCam", SMALL).detector_truth(2)
    b = SimulationTruth("LSSTComCam", SMALL).detector_truth(2)
    np.testing.assert_array_equal(a.response, b.response)
    np.testing.assert_array_equal(a.dark_current, b.dark_current)
    c = SimulationTruth("LSSTComCam", {**SMALL, "seed": 8}).detector_truth(2)
    assert not np.array_equal(a.response, c.response)


def test_cli_init_simulate_query(tmp_path, capsys):
    from click.testing import CliRunner
    from lsst.daf.butler.cli.butler import cli as butler_cli

    root = str(tmp_path / "cli_repo")
    assert cpcombined(["init", root]) == 0
    capsys.readouterr()
    rc = cpcombined(
        [
            "simulate",
            root,
            "--instrument",
            "LATISS",
            "--image-type",
            "dark",
            "--count",
            "2",
            "--exp-time",
            "30",
            "--geometry-scale",
            "0.125",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    ids = [int(x) for x in capsys.readouterr().out.split()]
    assert len(ids) == 2
    out = CliRunner().invoke(butler_cli, ["query-datasets", root, "raw", "--collections", "LATISS/raw/all"])
    assert out.exit_code == 0, out.output
    for e in ids:
        assert str(e) in out.output
    out = CliRunner().invoke(butler_cli, ["query-dimension-records", root, "exposure"])
    assert out.exit_code == 0 and out.output.count("DARK") == 2  # target_name of each dark
    # Bad input gives an error message and a non-zero exit, not a traceback.
    assert (
        cpcombined(["simulate", root, "--instrument", "LATISS", "--image-type", "flat", "--count", "1"]) == 1
    )
    assert "--exp-time is required" in capsys.readouterr().err


def test_frames_are_deterministic_and_in_fits_byte_order():
    truth = SimulationTruth("LATISS", SMALL)
    for image_type, exptime in (("bias", 0.0), ("dark", 30.0), ("flat", 5.0)):
        a, b, c = (
            simulate_raw_amps(truth, 0, image_type, exptime, exptime + 0.3, 0, truth.exposure_rng(serial, 0))
            for serial in (0, 0, 1)
        )
        assert all(arr.dtype == np.dtype(">i4") for arr in a.values())
        assert all(np.array_equal(a[amp], b[amp]) for amp in a)
        assert not np.array_equal(a["C10"], c["C10"])


@pytest.mark.parametrize("lam0", [0.006, 0.6, 7.0, 300.0])
def test_uniform_poisson_draws(lam0):
    n = 400_000
    x = _poisson_uniform(lam0, n, np.random.default_rng(11))
    assert x.dtype == np.float32 and np.array_equal(x, np.round(x)) and x.min() >= 0
    assert x.mean() == pytest.approx(lam0, abs=5 * np.sqrt(lam0 / n))
    # Variance of the sample variance of a Poisson: (lam + 2 lam^2) / n.
    assert x.var() == pytest.approx(lam0, abs=5 * np.sqrt((lam0 + 2 * lam0**2) / n))
    p0 = np.exp(-lam0)
    assert np.mean(x == 0) == pytest.approx(p0, abs=5 * np.sqrt(p0 * (1 - p0) / n) + 1e-9)


def test_dark_charge_is_poisson_with_hot_pixels():
    truth = SimulationTruth("LATISS", {**SMALL, "hot_pixels": [[0, 5, 7, 20.0], [0, 60, 30, 50.0]]})
    dt = truth.detector_truth(0)
    lam = dt.dark_current * 30.3
    draws = np.stack([_dark_charge(dt, 30.3, np.random.default_rng(s)) for s in range(200)])
    assert draws.mean() == pytest.approx(lam.mean(), rel=0.01)
    # Hot pixels: Poisson below 1000 e- (20 e-/s), normal with variance λ above (50 e-/s).
    for y, x in ((7, 5), (30, 60)):
        assert draws[:, y, x].mean() == pytest.approx(lam[y, x], abs=5 * np.sqrt(lam[y, x] / 200))
        assert draws[:, y, x].var() == pytest.approx(lam[y, x], rel=0.5)
    faint = draws[:, 100:, 100:]
    assert faint.var() == pytest.approx(faint.mean(), rel=0.02)


def test_brighter_fatter_kernel_matches_edge_padded_redistribution():
    rng = np.random.default_rng(3)
    ny, nx, band = 6, 7, 3
    lam = rng.uniform(1000, 2000, (ny, nx)).astype(np.float32)
    dev = rng.normal(0, 40, (ny, nx)).astype(np.float32)
    alpha = rng.uniform(0.001, 0.01, (2, nx)).astype(np.float32)
    give = np.repeat(alpha, band, axis=0).astype(np.float64) * dev
    padded = np.pad(give, 1, mode="edge")
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    expected = lam + dev - 4 * give + neighbours
    charge = dev.copy()
    _bf_charge(charge, lam, alpha, band)
    np.testing.assert_allclose(charge, expected, rtol=0, atol=1e-3)
    assert charge.sum() == pytest.approx(float((lam + dev).sum()), abs=0.05)  # charge is conserved
