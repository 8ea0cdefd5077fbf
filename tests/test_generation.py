"""Combined bias, dark and flat from simulated frames, compared with the
simulated truth; the products' Science Pipelines layout (afw Exposure FITS
read through their URIs, cp_pipe's header conventions, obs_base formatter
names in the datastore); and the bad-input behaviour of the generation
pipelines."""

from __future__ import annotations

import math
import re
import types

import astropy.io.fits as fits
import numpy as np
import pytest
from conftest import run_cp_pipeline
from lsst.cpcombined.algorithms.combine import clipped_stats
from lsst.cpcombined.algorithms.isr import amp_regions
from lsst.cpcombined.algorithms.masks import bits, from_mask
from lsst.cpcombined.repo.create import create_repo
from lsst.cpcombined.repo.exposure_fits import AFW_MASK_PLANES, read_exposure_fits
from lsst.cpcombined.repo.products import read_input_provenance, read_percentiles
from lsst.cpcombined.simulation import SimulationTruth
from lsst.cpcombined.simulation.camera import DARK_OVERHEAD_SECONDS, SimulatedCamera

N_BIAS, N_DARK, N_FLAT = 12, 8, 8
DARK_TIME = 60.0
FLAT_TIME = 5.0
LATISS_TRUTH = {
    "seed": 11,
    "geometry_scale": 0.125,
    "hot_pixels": [[0, 100, 50, 20.0], [0, 300, 400, 60.0], [0, 450, 250, 8.0], [0, 20, 480, 4.0]],
    "cold_pixels": [[0, 200, 100, 0.5]],
    "bad_columns": [],
    "flat_flux": 2000.0,
}


def _ref(butler, name, collection, **data_id):
    return butler.find_dataset(name, collections=collection, instrument=data_id.pop("instrument", "LATISS"),
                               **data_id)


def _get(butler, name, collection, **data_id):
    """A combined calibration read through its URI (``butler.get`` would need afw)."""
    return read_exposure_fits(butler.getURI(_ref(butler, name, collection, **data_id)).ospath)


def _formatter(butler, ref) -> str:
    return butler._datastore.getStoredItemsInfo(ref)[0].formatter


@pytest.fixture(scope="module")
def latiss(tmp_path_factory):
    """A small LATISS repo with bias, dark and flat generated."""
    root = tmp_path_factory.mktemp("latiss_gen") / "repo"
    butler = create_repo(root)
    truth = SimulationTruth("LATISS", LATISS_TRUTH)
    cam = SimulatedCamera(butler, truth)
    biases = cam.take("bias", [0.0] * N_BIAS)
    darks = cam.take("dark", [DARK_TIME] * N_DARK)
    flats = cam.take("flat", [FLAT_TIME] * N_FLAT)
    res = run_cp_pipeline(
        root, "LATISS", "cpBias", inputs=["LATISS/raw/all"], output="gen/bias", exposures=biases
    )
    assert res.ok, res.error_summary()
    res = run_cp_pipeline(
        root, "LATISS", "cpDark", inputs=["LATISS/raw/all", "gen/bias"], output="gen/dark", exposures=darks
    )
    assert res.ok, res.error_summary()
    res = run_cp_pipeline(
        root,
        "LATISS",
        "cpFlat",
        inputs=["LATISS/raw/all", "gen/bias", "gen/dark"],
        output="gen/flat",
        exposures=flats,
    )
    assert res.ok, res.error_summary()
    return types.SimpleNamespace(
        root=root, butler=butler, truth=truth, camera=cam, biases=biases, darks=darks, flats=flats
    )


def test_bias_matches_truth(latiss):
    bias = _get(latiss.butler, "bias", "gen/bias", detector=0)
    dt = latiss.truth.detector_truth(0)
    image = bias.image.array
    assert str(bias.image.unit) == "electron"
    # Truth in electrons: the fixed 2-d structure, plus the dark current of
    # the bias's own dark time (0.3 s).
    expected = dt.bias_structure * dt.amp_value(dt.gain) + dt.dark_current * DARK_OVERHEAD_SECONDS
    for amp, (ys, xs) in amp_regions(latiss.truth.layout).items():
        resid = (image - expected)[ys, xs]
        rn = dt.read_noise[amp]
        sigma_n = rn / np.sqrt(N_BIAS)
        assert abs(resid.mean()) < 0.05 * rn, amp
        # Per-pixel scatter: rn/sqrt(N), plus ~3-7 % from the overscan row/column medians.
        assert 0.9 * sigma_n < resid.std() < 1.15 * sigma_n, (amp, resid.std() / sigma_n)
    md = bias.metadata
    assert md["OBSTYPE"] == "bias" and md["CPC_NINPUTS"] == N_BIAS
    prov = read_input_provenance(md)
    assert [p["exposure"] for p in prov] == latiss.biases
    assert all(p["scale"] == 1.0 and p["exptime"] == 0.0 and p["date"] and p["obsid"] for p in prov)
    pct = read_percentiles(md)
    assert set(pct) == set(amp_regions(latiss.truth.layout)) and set(pct["C10"]) == {
        0,
        5,
        16,
        50,
        84,
        95,
        100,
    }
    assert pct["C10"][0] <= pct["C10"][50] <= pct["C10"][100]
    # The percentiles are those of the amplifier's pixels (no pixel is BAD here).
    ys, xs = amp_regions(latiss.truth.layout)["C10"]
    assert pct["C10"][50] == pytest.approx(float(np.median(image[ys, xs])), rel=1e-6)


def test_dark_matches_truth(latiss):
    dark = _get(latiss.butler, "dark", "gen/dark", detector=0)
    dt = latiss.truth.detector_truth(0)
    assert str(dark.image.unit) == "electron / s"
    t_dark = DARK_TIME + DARK_OVERHEAD_SECONDS
    # The combined bias holds the dark current of its 0.3 s of dark time, so
    # bias subtraction leaves dark·(t_dark − 0.3 s), divided by t_dark.
    expected = dt.dark_current * (t_dark - DARK_OVERHEAD_SECONDS) / t_dark
    rn = dt.amp_value(dt.read_noise)
    # Per-frame Poisson + read noise averages down over the darks; the noise of
    # the combined bias they all had subtracted does not.
    sigma = np.sqrt((dt.dark_current * t_dark + 1.07 * rn**2) / N_DARK + 1.07 * rn**2 / N_BIAS) / t_dark
    z = (dark.image.array - expected) / sigma
    good = ~dt.hot_mask & ((from_mask(dark.mask) & bits("BAD")) == 0)
    assert abs(np.mean(z[good])) < 0.05
    assert 0.85 < np.std(z[good]) < 1.15, np.std(z[good])
    # Hot pixels stand out and are recovered within their Poisson error.
    for _, x, y, rate in LATISS_TRUTH["hot_pixels"]:
        value = dark.image.array[y, x]
        assert abs(z[y, x]) < 5, (x, y, rate, value)
        assert value > 3.0
    md = dark.metadata
    assert [p["scale"] for p in read_input_provenance(md)] == [pytest.approx(t_dark)] * N_DARK
    # A dark per second of dark time: the Science Pipelines' ISR scales it by DARKTIME = 1.
    assert md["OBSTYPE"] == "dark" and md["EXPTIME"] == md["DARKTIME"] == 1.0
    assert md["LSST ISR UNITS"] == "electron"


def test_flat_matches_truth(latiss):
    flat = _get(latiss.butler, "flat", "gen/flat", detector=0, physical_filter="SDSSr_65mm~empty")
    dt = latiss.truth.detector_truth(0)
    image, mask = flat.image.array, from_mask(flat.mask)
    good = ((mask & bits("BAD", "NO_DATA")) == 0) & ~dt.cold_mask & ~dt.hot_mask
    level, _, _ = clipped_stats(image, mask, bits("BAD", "NO_DATA"))
    assert level == pytest.approx(1.0, abs=1e-3)  # single chip: normalised to 1
    truth = dt.flat_field / np.mean(dt.flat_field[good])
    ratio = image[good] / truth[good]
    mu_e = latiss.truth.flat_flux * FLAT_TIME * truth[good]
    expected_sigma = np.sqrt(np.mean(1.0 / (N_FLAT * mu_e)))
    assert abs(np.median(ratio) - 1) < 1e-3
    assert 0.85 * expected_sigma < np.std(ratio) < 1.2 * expected_sigma, np.std(ratio) / expected_sigma
    # The flat has the PRNU (1 % rms) in it: much larger than its noise.
    assert np.corrcoef(image[good], truth[good])[0, 1] > 0.9
    assert image[100, 200] < 0.6  # the cold pixel (response 0.5)


@pytest.mark.parametrize("calib_type", ["bias", "dark", "flat"])
def test_products_in_science_pipelines_layout(latiss, calib_type):
    """bias/dark/flat are afw Exposure FITS files recorded under obs_base's
    FitsExposureFormatter, with cp_pipe's header conventions."""
    butler = latiss.butler
    data_id = {"detector": 0}
    if calib_type == "flat":
        data_id["physical_filter"] = "SDSSr_65mm~empty"
    ref = _ref(butler, calib_type, f"gen/{calib_type}", **data_id)
    assert butler.get_dataset_type(calib_type).storageClass_name == "ExposureF"
    assert _formatter(butler, ref) == "lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter"
    path = butler.getURI(ref).ospath
    inputs = {"bias": latiss.biases, "dark": latiss.darks, "flat": latiss.flats}[calib_type]
    exptime = {"bias": 0.0, "dark": DARK_TIME, "flat": FLAT_TIME}[calib_type]
    with fits.open(path) as hdul:
        # Empty primary + IMAGE/MASK/VARIANCE, no archive.
        assert len(hdul) == 4 and hdul[0].header["NAXIS"] == 0
        md = hdul[0].header
        assert "AR_HDU" not in md and "EXPINFO_V" not in md
        for i, name in enumerate(("IMAGE", "MASK", "VARIANCE"), start=1):
            h = hdul[i].header
            assert (h["EXTNAME"], h["EXTTYPE"], h["INHERIT"]) == (name, name, True)
            assert (h["LTV1"], h["LTV2"], h["CRVAL1A"], h["CRVAL2A"], h["CRPIX1A"]) == (0, 0, 0, 0, 1)
            assert h["CTYPE1A"] == "LINEAR" and h["BITPIX"] == (32 if name == "MASK" else -32)
        unit = {"bias": "electron", "dark": "electron / s", "flat": None}[calib_type]
        assert hdul[1].header.get("BUNIT") == unit
        mask_header = hdul[2].header
        assert {k[3:]: mask_header[k] for k in mask_header if k.startswith("MP_")} == AFW_MASK_PLANES
        # Only BAD (afw bit 0) is ever set, as cp_pipe's censored masks.
        assert set(np.unique(hdul[2].data)) <= {0, 1}
        # cp_pipe's header conventions.
        assert md["OBSTYPE"] == calib_type and md["INSTRUME"] == "LATISS" and md["DETECTOR"] == 0
        assert md["DET_NAME"] == "RXX_S00" and md["LSST ISR UNITS"] == "electron"
        assert md["EXPTIME"] == md["DARKTIME"] == (0.0 if calib_type == "bias" else 1.0)
        assert md.get("FLATSRC") == ("DOME" if calib_type == "flat" else None)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", md["CALIB_CREATION_DATETIME"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", md["CALIB_CREATION_DATE"])
        assert re.match(r"\d\d:\d\d:\d\d", md["CALIB_CREATION_TIME"])
        assert [md[f"CPP_INPUT_{i}"] for i in range(len(inputs))] == inputs
        assert [md[f"CPP_INPUT_EXPT_{i}"] for i in range(len(inputs))] == [exptime] * len(inputs)
        assert f"CPP_INPUT_{len(inputs)}" not in md
        # Dates span the inputs: from the first start to the last end (TAI).
        assert md["TIMESYS"] == "TAI" and md["DATE-OBS"] == md["DATE-BEG"]
        assert md["DATE-BEG"] < md["DATE-AVG"] < md["DATE-END"] or exptime == 0.0
        assert md["MJD-END"] - md["MJD-BEG"] >= exptime / 86400 * 0.999
        assert md["MJD-AVG"] == pytest.approx(0.5 * (md["MJD-BEG"] + md["MJD-END"]), abs=1e-9)
        for amp in amp_regions(latiss.truth.layout):
            assert md[f"LSST CALIB {calib_type.upper()} {amp} BADPIX-NUM"] == 0
            for pct in ("0.0", "5.0", "16.0", "50.0", "84.0", "95.0", "100.0"):
                assert isinstance(md[f"LSST CALIB {calib_type.upper()} {amp} DISTRIBUTION {pct}-PCT"], float)
        assert md["LSST BUTLER DATASETTYPE"] == calib_type
        assert md["LSST BUTLER RUN"].startswith(f"gen/{calib_type}/")


def test_comcam_flats_keep_detector_ratios(tmp_path):
    butler = create_repo(tmp_path / "repo")
    truth = SimulationTruth("LSSTComCam", {"seed": 5, "geometry_scale": 0.0625, "detector_response": 0.03})
    cam = SimulatedCamera(butler, truth)
    root = tmp_path / "repo"
    biases = cam.take("bias", [0.0] * 3)
    darks = cam.take("dark", [10.0] * 3)
    flats = cam.take("flat", [3.0, 4.0, 5.0, 6.0])
    for name, inputs, exposures in (
        ("cpBias", [], biases),
        ("cpDark", ["gen/cpBias"], darks),
        ("cpFlat", ["gen/cpBias", "gen/cpDark"], flats),
    ):
        res = run_cp_pipeline(
            root,
            "LSSTComCam",
            name,
            inputs=["LSSTComCam/raw/all", *inputs],
            output=f"gen/{name}",
            exposures=exposures,
        )
        assert res.ok, res.error_summary()
    measured, expected = [], []
    for det in range(9):
        flat = _get(
            butler, "flat", "gen/cpFlat", instrument="LSSTComCam", detector=det, physical_filter="r_03"
        )
        dt = truth.detector_truth(det)
        good = ~dt.cold_mask & ~dt.hot_mask
        measured.append(clipped_stats(flat.image.array, from_mask(flat.mask), bits("BAD", "NO_DATA"))[0])
        expected.append(np.mean(dt.flat_field[good]))
    measured, expected = np.array(measured), np.array(expected)
    ratios = (measured / measured[4]) / (expected / expected[4])
    assert np.all(np.abs(ratios - 1) < 0.005), ratios
    # The spread of responses is real (3 % rms), not normalised away.
    assert np.std(measured) / np.mean(measured) > 0.01
    scales = butler.get(
        "cpcFlatNormScales", collections="gen/cpFlat", instrument="LSSTComCam", physical_filter="r_03"
    )
    assert scales["physical_filter"] == "r_03"
    e = [scales["exposure_scales"][str(x)] for x in flats]
    assert np.allclose(np.array(e) / e[0], np.array([3.0, 4.0, 5.0, 6.0]) / 3.0, rtol=2e-3)


# -- bad input -------------------------------------------------------------------


def _has(butler, name, collection, **data_id):
    try:
        return butler.find_dataset(name, collections=collection, **data_id) is not None
    except Exception:
        return False


def test_wrong_image_type(latiss):
    res = run_cp_pipeline(
        latiss.root,
        "LATISS",
        "cpBias",
        inputs=["LATISS/raw/all"],
        output="bad/type",
        exposures=latiss.biases[:3] + latiss.darks[:1],
    )
    assert not res.ok
    assert f"exposure {latiss.darks[0]}" in res.error_summary() and "wrong image type" in res.error_summary()
    assert not _has(latiss.butler, "bias", "bad/type", instrument="LATISS", detector=0)


def test_dark_without_bias(latiss):
    res = run_cp_pipeline(
        latiss.root,
        "LATISS",
        "cpDark",
        inputs=["LATISS/raw/all"],
        output="bad/nobias",
        exposures=latiss.darks,
    )
    assert not res.ok
    assert "cpDarkIsr.bias" in res.error_summary()


def test_flats_of_two_filters(latiss):
    """The normalisation and the flat are per physical filter (as cp_pipe's):
    a lone flat of another filter gets a quantum of its own, which fails for
    want of inputs (3 needed) and names its filter."""
    (odd,) = latiss.camera.take("flat", [FLAT_TIME], physical_filter="SDSSg_65mm~empty")
    res = run_cp_pipeline(
        latiss.root,
        "LATISS",
        "cpFlat",
        inputs=["LATISS/raw/all", "gen/bias", "gen/dark"],
        output="bad/filter",
        exposures=latiss.flats[:4] + [odd],
    )
    assert not res.ok
    summary = res.error_summary()
    expected = "only 1 usable input(s) for the flat of RXX_S00 in SDSSg_65mm~empty (minimum 3)"
    assert expected in summary, summary
    assert not _has(
        latiss.butler,
        "flat",
        "bad/filter",
        instrument="LATISS",
        detector=0,
        physical_filter="SDSSg_65mm~empty",
    )
    scales = latiss.butler.get(
        "cpcFlatNormScales", collections="bad/filter", instrument="LATISS", physical_filter="SDSSg_65mm~empty"
    )
    assert list(scales["exposure_scales"]) == [str(odd)]


def test_saturated_flats_excluded(latiss):
    ramp_top = latiss.camera.take("flat", [150.0, 150.0])  # 300 ke- requested: past full well
    res = run_cp_pipeline(
        latiss.root,
        "LATISS",
        "cpFlat",
        inputs=["LATISS/raw/all", "gen/bias", "gen/dark"],
        output="gen/flat_sat",
        exposures=latiss.flats[:4] + ramp_top,
    )
    assert res.ok, res.error_summary()
    for e in ramp_top:
        assert any(f"{e}" in w and "saturated" in w for w in res.warnings), res.warnings
    flat = _get(latiss.butler, "flat", "gen/flat_sat", detector=0, physical_filter="SDSSr_65mm~empty")
    assert [p["exposure"] for p in read_input_provenance(flat.metadata)] == latiss.flats[:4]
    assert clipped_stats(flat.image.array, from_mask(flat.mask), bits("BAD"))[0] == pytest.approx(
        1.0, abs=1e-3
    )


def test_all_nan_amp_is_masked(tmp_path):
    butler = create_repo(tmp_path / "repo")
    truth = SimulationTruth(
        "LATISS",
        {
            "seed": 2,
            "geometry_scale": 0.125,
            "faults": [{"image_type": "bias", "amplifiers": ["C05"], "nan": True}],
        },
    )
    biases = SimulatedCamera(butler, truth).take("bias", [0.0] * 3)
    res = run_cp_pipeline(
        tmp_path / "repo", "LATISS", "cpBias", inputs=["LATISS/raw/all"], output="gen/nan", exposures=biases
    )
    assert res.ok, res.error_summary()
    assert any("C05" in w and "entirely NaN" in w for w in res.warnings)
    assert any("no usable input" in w for w in res.warnings)
    bias = _get(butler, "bias", "gen/nan", detector=0)
    regions = amp_regions(truth.layout)
    mask = from_mask(bias.mask)
    ys, xs = regions["C05"]
    assert np.all(mask[ys, xs] & bits("BAD")) and np.all(np.isnan(bias.image.array[ys, xs]))
    ys, xs = regions["C04"]
    assert not np.any(mask[ys, xs] & bits("BAD")) and np.all(np.isfinite(bias.image.array[ys, xs]))
    # cp_pipe's per-amp keys: all of C05 BAD, its percentiles NaN (written as afw's 'NAN' strings).
    md = bias.metadata
    assert md["LSST CALIB BIAS C05 BADPIX-NUM"] == int(mask[regions["C05"]].size)
    assert md["LSST CALIB BIAS C04 BADPIX-NUM"] == 0
    assert all(math.isnan(v) for v in read_percentiles(md)["C05"].values())
    with fits.open(butler.getURI(_ref(butler, "bias", "gen/nan", detector=0)).ospath) as hdul:
        assert hdul[0].header["HIERARCH LSST CALIB BIAS C05 DISTRIBUTION 50.0-PCT"] == "NAN"


class _Handle:
    """A deferred handle of an ISR-processed exposure held in memory."""

    def __init__(self, mi):
        self._mi = mi

    def get(self, parameters=None, component=None):
        if component == "bbox":
            return self._mi.bbox
        bbox = (parameters or {}).get("bbox")
        if bbox is None:
            return self._mi
        sub = self._mi[bbox]
        return type(sub)(sub.image, mask=sub.mask, variance=sub.variance, metadata=dict(self._mi.metadata))


def test_combine_headers_without_a_butler():
    """cp_pipe's conventions on a 3-input dark: input keys, dates spanning
    the inputs, camera keys constant over the inputs, BAD only where no
    input is usable."""
    from lsst.cpcombined.repo.products import to_masked_image
    from lsst.cpcombined.tasks.combine import CpCombineConfig, CpCombineTask

    rng = np.random.default_rng(4)
    shape = (500, 512)
    handles = []
    for i in range(3):
        image = rng.normal(10.0, 1.0, shape).astype(np.float32)
        mask = np.zeros(shape, np.uint8)
        mask[0, :7] = bits("SAT")  # the same 7 pixels unusable in every input
        md = {
            "EXPOSURE": 2026010100010 + i,
            "OBSID": f"AT_O_20260101_{10 + i:06d}",
            "EXPTIME": 30.0,
            "DARKTIME": 30.3,
            "DATE-BEG": f"2026-01-01T00:0{i}:00.000",
            "TIMESYS": "TAI",
            "ISR_UNITS": "electron",
            "SEQNAME": "seq_a.seq",
            "SEQFILE": f"file_{i}",
        }
        handles.append(_Handle(to_masked_image(image, np.ones(shape), mask, unit=None, metadata=md)))
    cfg = CpCombineConfig()
    cfg.calibrationType, cfg.scaling = "dark", "dark_time"
    out = CpCombineTask(config=cfg).run(handles, instrument="LATISS", detector=0).outputData
    md = out.metadata
    assert md["SEQNAME"] == "seq_a.seq" and "SEQFILE" not in md  # constant over the inputs only
    assert [md[f"CPP_INPUT_{i}"] for i in range(3)] == [2026010100010, 2026010100011, 2026010100012]
    assert [md[f"CPP_INPUT_SCALE_{i}"] for i in range(3)] == [30.3] * 3
    # TAI mid-exposure of each input; the span from the first start to the last end.
    assert md["CPP_INPUT_DATE_0"] == "2026-01-01T00:00:15.000"
    assert (md["DATE-BEG"], md["DATE-END"]) == ("2026-01-01T00:00:00.000", "2026-01-01T00:02:30.000")
    assert md["DATE-AVG"] == "2026-01-01T00:01:15.000" and md["TIMESYS"] == "TAI"
    assert md["MJD-END"] - md["MJD-BEG"] == pytest.approx(150 / 86400, abs=1e-9)
    assert md["DET_SER"] and md["DET_NAME"] == "RXX_S00" and "FLATSRC" not in md
    mask = from_mask(out.mask)
    assert set(np.unique(mask)) == {0, bits("BAD")} and np.count_nonzero(mask) == 7
    assert md["LSST CALIB DARK C00 BADPIX-NUM"] == 7 and md["CPC_N_BAD_PIXELS"] == 7
    assert str(out.image.unit) == "electron / s"
