"""The replica of a Science Pipelines repository (tests/upstream_replica.py).

The replica is what later tests run the package against, so its records,
dataset types, datastore records and files are checked here against the
facts of obs_lsst, obs_base, cp_pipe and ip_isr (literal values below), and
its calibrations against the raws they are meant to calibrate.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import astropy.io.fits as fits
import lsst
import numpy as np
import pytest
import yaml
from astropy.table import Table
from astropy.time import Time
from lsst.images import MaskedImage, MaskPlane
from upstream_replica import (
    BIAS_OFFSET_FAULT,
    REAL_OBS_PACKAGES,
    STANDINS_DIR,
    ReplicaInfo,
    build_replica,
    exposure_record,
    replica_fixture,
    upstream_formatter_standins,
)

latiss_replica = replica_fixture("latiss_replica")
latiss_replica_bias_fault = replica_fixture("latiss_replica_bias_fault", calib_fault=BIAS_OFFSET_FAULT)

AMPS = tuple(f"C1{i}" for i in range(8)) + tuple(f"C0{i}" for i in range(7, -1, -1))

#: Column order of ip_isr's PTC table, version 2.6.
PTC_COLUMNS_2_6 = [
    "AMPLIFIER_NAME", "PTC_FIT_TYPE", "COV_MATRIX_SIDE", "COV_MATRIX_SIDE_FULL_COV_FIT",
    "INPUT_EXP_ID_PAIRS", "INPUT_EXP_PAIR_MJD_START", "EXP_ID_MASK", "EXP_ID_ROLLOFF_MASK",
    "RAW_EXP_TIMES", "RAW_MEANS", "RAW_VARS", "RAW_DELTAS", "ROW_MEAN_VARIANCE", "GAIN", "GAIN_ERR",
    "GAIN_UNADJUSTED", "GAIN_LIST", "OVERSCAN_MEDIAN_LIST", "OVERSCAN_MEDIAN", "OVERSCAN_MEDIAN_SIGMA",
    "NOISE_LIST", "NOISE", "NOISE_ERR", "HIST_VARS", "HIST_CHI2_DOFS", "KS_PVALUES", "PTC_FIT_PARS",
    "PTC_FIT_PARS_ERROR", "PTC_FIT_CHI_SQ", "PTC_TURNOFF", "PTC_TURNOFF_SAMPLING_ERROR", "PTC_ROLLOFF",
    "PTC_ROLLOFF_ERROR", "PTC_ROLLOFF_TAU", "PTC_ROLLOFF_TAU_ERROR", "A_MATRIX", "B_MATRIX",
    "NOISE_MATRIX", "BAD_AMPS", "PHOTO_CHARGE", "PHOTO_CHARGE_DELTAS", "AMP_OFFSETS",
    "NPIXEL_COVARIANCES", "COVARIANCES", "COVARIANCES_MODEL", "COVARIANCES_SQRT_WEIGHTS", "FINAL_VARS",
    "FINAL_MODEL_VARS", "FINAL_MEANS",
]  # fmt: skip


def _uri_path(replica: ReplicaInfo, ref) -> str:
    return replica.butler().getURI(ref).ospath


def _calib_path(replica: ReplicaInfo, calib_type: str, detector: int = 0) -> str:
    return _uri_path(replica, replica.calib_ref(calib_type, detector))


# -- identity -------------------------------------------------------------------------------------------


def test_build_time(latiss_replica: ReplicaInfo) -> None:
    """10 raws and 5 calibrations at geometry scale 0.125: 2.4 s on an idle
    machine, 11-12 s on 2 cores shared with other jobs (4.3 s of CPU)."""
    print(f"LATISS replica built in {latiss_replica.build_seconds:.1f} s")
    assert latiss_replica.build_seconds < 25.0


def test_instrument_and_detector_records(latiss_replica: ReplicaInfo) -> None:
    registry = latiss_replica.butler().registry
    (inst,) = registry.queryDimensionRecords("instrument")
    assert inst.toDict() == {
        "name": "LATISS", "detector_max": 1, "visit_max": 7050123199999, "exposure_max": 7050123199999,
        "class_name": "lsst.obs.lsst.Latiss", "visit_system": 2,
    }  # fmt: skip
    (det,) = registry.queryDimensionRecords("detector", instrument="LATISS")
    assert det.toDict() == {
        "instrument": "LATISS", "id": 0, "full_name": "RXX_S00", "name_in_raft": "RXX_S00", "raft": None,
        "purpose": "SCIENCE",
    }  # fmt: skip


def test_latiss_physical_filters(latiss_replica: ReplicaInfo) -> None:
    """All 707 of obs_lsst's LATISS filters with their bands."""
    records = list(
        latiss_replica.butler().registry.queryDimensionRecords("physical_filter", instrument="LATISS")
    )
    bands = {r.name: r.band for r in records}
    assert len(records) == len(bands) == 707
    assert Counter(bands.values()) == {
        "g": 225, "r": 141, "white": 112, "z": 57, "i": 57, "u": 29, "y": 29, "unknown": 28, "notch": 28,
        "diffuser": 1,
    }  # fmt: skip
    expected = {
        "empty": "white", "empty~empty": "white", "SDSSr_65mm~empty": "r", "OG550_65mm_1~empty": "g",
        "unknown~unknown": "unknown", "empty~SDSSg_65mm": "g", "SDSSy_65mm~pinhole_2_4_0100": "y",
        "quadnotch1~holo4_003": "notch", "diffuser": "diffuser",
    }  # fmt: skip
    assert {name: bands[name] for name in expected} == expected
    assert not [n for n in bands if n.startswith("diffuser~")]
    assert "SDSSr_65mm~SDSSg_65mm" not in bands
    assert max(len(n) for n in bands) == 32


def test_exposure_records(latiss_replica: ReplicaInfo) -> None:
    """The group, day_obs and exposure records of raw ingest, with obs_lsst's
    exposure ids (day_obs × 10⁵ + seq_num), filters and observation types."""
    registry = latiss_replica.butler().registry
    records = {r.id: r for r in registry.queryDimensionRecords("exposure", instrument="LATISS")}
    assert sorted(records) == sorted(sum(latiss_replica.exposures.values(), []))
    (day,) = registry.queryDimensionRecords("day_obs", instrument="LATISS")
    assert day.id == 20240901
    assert day.timespan.begin == Time("2024-09-01T12:00:00", scale="tai")
    assert day.timespan.end == Time("2024-09-02T12:00:00", scale="tai")
    groups = {r.name for r in registry.queryDimensionRecords("group", instrument="LATISS")}
    expected_filter = {"bias": "empty~empty", "dark": "empty~empty", "flat": "SDSSr_65mm~empty"}
    expected_time = {"bias": 0.0, "dark": 30.0, "flat": 5.0}
    for image_type, ids in latiss_replica.exposures.items():
        seqs = [i % 100_000 for i in ids]
        for exposure_id in ids:
            r = records[exposure_id]
            assert exposure_id == 20240901 * 100_000 + r.seq_num
            assert r.obs_id == f"AT_O_20240901_{r.seq_num:06d}"
            assert (r.day_obs, r.physical_filter) == (20240901, expected_filter[image_type])
            assert (r.observation_type, r.observation_reason) == (image_type, image_type)
            assert r.exposure_time == expected_time[image_type]
            assert r.dark_time == pytest.approx(expected_time[image_type] + 0.3)
            assert (r.seq_start, r.seq_end) == (seqs[0], seqs[-1])
            assert r.group in groups
            assert (r.can_see_sky, r.has_simulated, r.target_name, r.science_program) == (
                False, False, "UNKNOWN", "unknown"
            )  # fmt: skip
            # The timespan is DATE-BEG .. DATE-END (dark time), to float-MJD precision.
            span = (r.timespan.end - r.timespan.begin).to_value("s")
            assert span == pytest.approx(r.dark_time, abs=1e-4)
            assert day.timespan.contains(r.timespan.begin)
    assert len(groups) == 3  # one sequence per image type


def test_exposure_record_rules_on_real_headers(real_data: Path) -> None:
    """The replica's record builder follows obs_lsst's translation of real
    headers (expected values of obs_lsst's translator tests)."""
    expected = {
        ("LATISS", "latiss-AT_C_20220426_000004_R00_S00"):
            (3022042600004, "unknown", "unknown", "unknown~unknown", -1.0, 537.406, None),
        ("LATISS", "latiss-AT_O_20230321_000053"):
            (2023032100053, "dark", "dark", "empty~empty", 30.0, 30.0126, False),
        ("LATISS", "latiss-AT_O_20240624_000106_R00_S00"):
            (2024062400106, "cwfs", "intra", "SDSSr_65mm~empty", 30.0, 30.2407, True),
        ("LSSTComCam", "comCam-CC_O_20241108_000266_R22_S00"):
            (2024110800266, "science", "science", "g_01", 30.0, 30.4306, True),
    }  # fmt: skip
    for (instrument, name), values in expected.items():
        header = yaml.safe_load((real_data / "headers" / f"{name}.yaml").read_text())
        r = exposure_record(instrument, header)
        keys = ("id", "observation_type", "observation_reason", "physical_filter", "exposure_time")
        keys += ("dark_time", "can_see_sky")
        got = tuple(r[k] for k in keys)
        assert got == values, name
    header = yaml.safe_load((real_data / "headers" / "latiss-AT_O_20240624_000106_R00_S00.yaml").read_text())
    r = exposure_record("LATISS", header)
    assert (r["group"], r["target_name"], r["science_program"], r["seq_num"], r["has_simulated"]) == (
        "2024-06-25T01:26:31.895#1", "HD 131586", "cwfs", 106, False
    )  # fmt: skip


# -- dataset types, collections, datastore ---------------------------------------------------------------


def test_dataset_types(latiss_replica: ReplicaInfo) -> None:
    registry = latiss_replica.butler().registry
    got = {
        dt.name: (set(dt.dimensions.required), dt.storageClass_name, dt.isCalibration())
        for dt in registry.queryDatasetTypes()
    }
    assert got == {
        "raw": ({"instrument", "exposure", "detector"}, "Exposure", False),
        "camera": ({"instrument"}, "Camera", True),
        "bias": ({"instrument", "detector"}, "ExposureF", True),
        "dark": ({"instrument", "detector"}, "ExposureF", True),
        "flat": ({"instrument", "detector", "physical_filter"}, "ExposureF", True),
        "defects": ({"instrument", "detector"}, "Defects", True),
        "ptc": ({"instrument", "detector"}, "PhotonTransferCurveDataset", True),
    }


def test_collections_and_certification(latiss_replica: ReplicaInfo) -> None:
    """DMTN-222 layout; every calibration is found through ``LATISS/calib``
    for every raw's timespan."""
    from lsst.daf.butler import CollectionType

    butler = latiss_replica.butler()
    registry = butler.registry
    assert registry.getCollectionType("LATISS/raw/all") == CollectionType.RUN
    assert registry.getCollectionType("LATISS/calib/DM-00000") == CollectionType.CALIBRATION
    assert registry.getCollectionType("LATISS/calib/unbounded") == CollectionType.RUN
    assert list(registry.getCollectionChain("LATISS/calib")) == [
        "LATISS/calib/DM-00000",
        "LATISS/calib/unbounded",
    ]
    assert list(registry.getCollectionChain("LATISS/defaults")) == ["LATISS/raw/all", "LATISS/calib"]
    for calib_type, run in latiss_replica.calib_runs.items():
        assert run.startswith(f"LATISS/calib/DM-00000/{calib_type}Gen.20240901a/")
        assert registry.getCollectionType(run) == CollectionType.RUN
    raws = set(registry.queryDatasets("raw", collections="LATISS/raw/all"))
    assert raws == set(latiss_replica.raw_refs) and len(raws) == 10
    records = {r.id: r for r in registry.queryDimensionRecords("exposure", instrument="LATISS")}
    for record in records.values():
        for calib_type, refs in latiss_replica.calib_refs.items():
            data_id = {"instrument": "LATISS", "detector": 0}
            if calib_type == "flat":
                data_id["physical_filter"] = "SDSSr_65mm~empty"
            found = butler.find_dataset(
                calib_type, data_id, collections="LATISS/calib", timespan=record.timespan
            )
            assert found == refs[0]


def test_datastore_records_name_science_pipelines_formatters(latiss_replica: ReplicaInfo) -> None:
    db = sqlite3.connect(latiss_replica.root / "gen3.sqlite3")
    rows = db.execute(
        "SELECT t.name, r.formatter, r.storage_class, COUNT(*) FROM file_datastore_records r "
        "JOIN dataset d ON r.dataset_id = d.id JOIN dataset_type t ON d.dataset_type_id = t.id "
        "GROUP BY 1, 2, 3"
    ).fetchall()
    db.close()
    assert sorted(rows) == [
        ("bias", "lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter", "ExposureF", 1),
        ("dark", "lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter", "ExposureF", 1),
        ("defects", "lsst.obs.base.formatters.fitsGeneric.FitsGenericFormatter", "Defects", 1),
        ("flat", "lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter", "ExposureF", 1),
        ("ptc", "lsst.obs.base.formatters.fitsGeneric.FitsGenericFormatter", "PhotonTransferCurveDataset", 1),
        ("raw", "lsst.obs.lsst.rawFormatter.LatissRawFormatter", "Exposure", 10),
    ]
    # Files sit where the default templates put them, e.g. the raws:
    path = Path(_uri_path(latiss_replica, latiss_replica.raw_refs[0]))
    assert path.relative_to(latiss_replica.root).as_posix() == (
        "LATISS/raw/all/raw/20240901/AT_O_20240901_000010/"
        "raw_LATISS_empty~empty_AT_O_20240901_000010_RXX_S00_LATISS_raw_all.fits"
    )


@pytest.mark.skipif(REAL_OBS_PACKAGES, reason="the Science Pipelines' lsst.obs is installed: no stand-ins")
def test_standins_only_during_ingest(latiss_replica: ReplicaInfo) -> None:
    """After the build nothing of the stand-ins is importable; inside the
    context they are, without shadowing the real lsst packages."""
    root = str(STANDINS_DIR)
    assert not [m for m in sys.modules if m == "lsst.obs" or m.startswith("lsst.obs.")]
    assert root not in sys.path and str(STANDINS_DIR / "lsst") not in lsst.__path__
    assert importlib.util.find_spec("lsst.obs") is None
    with upstream_formatter_standins():
        from lsst.obs.base.formatters.fitsExposure import FitsExposureFormatter
        from lsst.obs.lsst.rawFormatter import LatissRawFormatter

        assert Path(sys.modules[FitsExposureFormatter.__module__].__file__).is_relative_to(STANDINS_DIR)
        assert LatissRawFormatter.__module__ == "lsst.obs.lsst.rawFormatter"
        import lsst.daf.butler as daf_butler

        assert not Path(daf_butler.__file__).is_relative_to(STANDINS_DIR)
        assert lsst.__path__[-1] == str(STANDINS_DIR / "lsst")
    assert not [m for m in sys.modules if m == "lsst.obs" or m.startswith("lsst.obs.")]
    assert root not in sys.path and importlib.util.find_spec("lsst.obs") is None
    # Without the real obs_base formatter the datasets are read through their files only.
    butler = latiss_replica.butler()
    with pytest.raises(ImportError, match="lsst.obs"):
        butler.get(latiss_replica.calib_refs["bias"][0])
    assert Path(_uri_path(latiss_replica, latiss_replica.calib_refs["bias"][0])).is_file()


# -- files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("calib_type", ["bias", "dark", "flat"])
def test_exposure_files_afw_layout(latiss_replica: ReplicaInfo, calib_type: str) -> None:
    """afw Exposure FITS as current afw writes it with the lossless recipe,
    with cp_pipe's header keys."""
    path = _calib_path(latiss_replica, calib_type)
    with fits.open(path, disable_image_compression=True) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "ARCHIVE_INDEX"]
        primary = hdul[0].header
        assert primary["NAXIS"] == 0
        assert (primary["EXPINFO_V"], primary["AR_HDU"]) == (2, 5)
        assert primary["OBSTYPE"] == calib_type
        assert primary["LSST ISR UNITS"] == "electron"
        assert primary["EXPTIME"] == primary["DARKTIME"] == (0.0 if calib_type == "bias" else 1.0)
        for key in (
            "CALIB_CREATION_DATE",
            "CALIB_CREATION_TIME",
            "CALIB_CREATION_DATETIME",
            "DATE-AVG",
            "MJD-AVG",
        ):
            assert key in primary
        assert primary["TIMESYS"] == "TAI" and primary["INSTRUMENT"] == "LATISS"
        ids = latiss_replica.exposures[calib_type]
        assert [primary[f"CPP_INPUT_{i}"] for i in range(len(ids))] == ids
        assert f"CPP_INPUT_{len(ids)}" not in primary
        assert ("FLATSRC" in primary) == (calib_type == "flat")
        assert "BUNIT" not in primary and "FILTER_ID" not in primary
        for i, extname in enumerate(("IMAGE", "MASK", "VARIANCE"), start=1):
            h = hdul[i].header
            assert (h["EXTNAME"], h["EXTTYPE"], h["INHERIT"], h["ZCMPTYPE"], h["ZTILE2"]) == (
                extname,
                extname,
                True,
                "GZIP_2",
                1,
            )
            assert (h["LTV1"], h["LTV2"], h["CRPIX1A"], h["CRVAL1A"], h["CTYPE1A"]) == (
                0.0,
                0.0,
                1.0,
                0.0,
                "LINEAR",
            )
            assert h["ZBITPIX"] == (32 if extname == "MASK" else -32)
        assert hdul[1].header["BUNIT"] == "adu" and hdul[3].header["BUNIT"] == "adu**2"
        planes = {k[3:]: v for k, v in hdul[2].header.items() if k.startswith("MP_")}
        assert planes["BAD"] == 0 and planes["SAT"] == 1 and planes["NO_DATA"] == 8
        assert (planes["DETECTED_NEGATIVE"], planes["VIGNETTED"], planes["STREAK"], planes["CROSSTALK"]) == (
            6,
            9,
            10,
            11,
        )
        archive = hdul[4].header
        assert (archive["EXTTYPE"], archive["AR_CATN"], archive["AR_NCAT"], archive["NAXIS2"]) == (
            "ARCHIVE_INDEX", 0, 1, 0
        )  # fmt: skip
    with fits.open(path) as hdul:
        mask = hdul["MASK"].data
        assert mask.dtype.kind == "i" and mask.dtype.itemsize == 4
        assert np.count_nonzero(mask & ~np.int32(1)) == 0  # only BAD
        image = hdul["IMAGE"].data
        for amp in ("C10", "C03"):
            ys, xs = latiss_replica.truth.layout.geometry(amp).assembled_slices
            assert hdul[0].header[
                f"LSST CALIB {calib_type.upper()} {amp} DISTRIBUTION 50.0-PCT"
            ] == pytest.approx(float(np.median(image[ys, xs])), rel=1e-6)
            assert hdul[0].header[f"LSST CALIB {calib_type.upper()} {amp} BADPIX-NUM"] == np.count_nonzero(
                mask[ys, xs] & 1
            )


@pytest.mark.parametrize("calib_type", ["bias", "dark", "flat"])
def test_exposure_files_read_by_lsst_images(latiss_replica: ReplicaInfo, calib_type: str) -> None:
    """lsst.images reads the files as legacy afw Exposures, bit for bit
    (lossless compression), with BAD the only plane in use."""
    path = _calib_path(latiss_replica, calib_type)
    mi = MaskedImage.read_legacy(path, plane_map={"BAD": MaskPlane("BAD", "Bad pixel")})
    image, mask, variance = latiss_replica.calibrations[calib_type][0]
    assert mi.image.array.shape == (500, 512) == image.shape
    assert mi.bbox.x.start == 0 and mi.bbox.y.start == 0
    assert str(mi.image.unit) == "electron"  # BUNIT 'adu' corrected by LSST ISR UNITS, as for cp_pipe files
    np.testing.assert_array_equal(mi.image.array, image)
    np.testing.assert_array_equal(mi.variance.array, variance)
    bad = mi.mask.array[..., 0] != 0
    np.testing.assert_array_equal(bad, mask != 0)
    truth = latiss_replica.truth.detector_truth(0)
    assert bad.sum() == (truth.hot_mask | truth.cold_mask).sum() > 0
    # Without a plane map, lsst.images' default legacy renaming also works (no other plane is set).
    MaskedImage.read_legacy(path)


def test_defects_table(latiss_replica: ReplicaInfo) -> None:
    """ip_isr defects table: x0/y0/width/height (int64) boxes covering the
    truth's defects and the 5-pixel border, without overlaps."""
    path = _calib_path(latiss_replica, "defects")
    with fits.open(path) as hdul:
        assert len(hdul) == 2 and hdul[0].header["NAXIS"] == 0
        h = hdul[1].header
        assert (h["OBSTYPE"], h["defects_SCHEMA"], h["defects_VERSION"], h["CALIBCLS"]) == (
            "defects", "", 2.0, "lsst.ip.isr.defects.Defects"
        )  # fmt: skip
        assert (h["INSTRUME"], h["DETECTOR"], h["DET_NAME"], h["DET_SER"], h["RAFTNAME"], h["SLOTNAME"]) == (
            "LATISS", 0, "RXX_S00", "ITL-3800C-068", "RXX", "S00"
        )  # fmt: skip
        assert "FILTER" not in h  # None values are dropped
    table = Table.read(path, hdu=1)
    assert table.colnames == ["x0", "y0", "width", "height"]
    assert all((table[c].dtype.kind, table[c].dtype.itemsize) == ("i", 8) for c in table.colnames)  # FITS K
    covered = np.zeros((500, 512), dtype=int)
    for x0, y0, w, hgt in table:
        covered[y0 : y0 + hgt, x0 : x0 + w] += 1
    assert covered.max() == 1
    truth = latiss_replica.truth.detector_truth(0)
    expected = truth.hot_mask | truth.cold_mask
    expected[:5, :] = expected[-5:, :] = expected[:, :5] = expected[:, -5:] = True
    np.testing.assert_array_equal(covered == 1, expected)


def test_ptc_table(latiss_replica: ReplicaInfo) -> None:
    """ip_isr PTC table, version 2.6: every column, one row per amplifier,
    the truth's gains and read noise (e-)."""
    path = _calib_path(latiss_replica, "ptc")
    table = Table.read(path, hdu=1)
    assert table.colnames == PTC_COLUMNS_2_6
    assert list(table["AMPLIFIER_NAME"]) == list(AMPS)
    meta = table.meta
    assert (meta["OBSTYPE"], meta["PTC_VERSION"], meta["PTC_SCHEMA"], meta["PTC_FIT_TYPE"]) == (
        "PTC", 2.6, "Gen3 Photon Transfer Curve", "EXPAPPROXIMATION"
    )  # fmt: skip
    assert meta["CALIBCLS"] == "lsst.ip.isr.ptcDataset.PhotonTransferCurveDataset" and meta["FILTER"] == ""
    truth = latiss_replica.truth.detector_truth(0)
    np.testing.assert_allclose(table["GAIN"], [truth.gain[a] for a in AMPS])
    np.testing.assert_allclose(table["NOISE"], [truth.read_noise[a] for a in AMPS])
    assert np.all(np.isfinite(table["PTC_TURNOFF"]))
    flats = latiss_replica.exposures["flat"]
    np.testing.assert_array_equal(table["INPUT_EXP_ID_PAIRS"][0], [flats[0:2], flats[2:4]])
    assert table["COVARIANCES"].shape == (16, 2 * 8 * 8)
    assert table["BAD_AMPS"].shape == (16, 0)


# -- content: consistent with the raws ---------------------------------------------------------------------


def _raw_electrons(replica: ReplicaInfo, exposure_id: int) -> np.ndarray:
    """A minimal independent ISR of one LATISS raw: per-row median of the
    serial overscan subtracted, times the truth's gain, assembled."""
    butler = replica.butler()
    (ref,) = [r for r in replica.raw_refs if r.dataId["exposure"] == exposure_id]
    layout = replica.truth.layout
    truth = replica.truth.detector_truth(0)
    out = np.empty((layout.detector_height, layout.detector_width))
    with fits.open(butler.getURI(ref).ospath) as hdul:
        for amp in AMPS:
            g = layout.geometry(amp)
            raw = hdul[g.extname].data.astype(np.float64)
            overscan = np.median(raw[g.raw_serial_overscan], axis=1)
            data = (raw[g.raw_data] - overscan[:, np.newaxis]) * truth.gain[amp]
            out[g.assembled_slices] = g.to_detector_orientation(data)
    return out


def _amp_medians(replica: ReplicaInfo, image: np.ndarray, good: np.ndarray) -> dict[str, float]:
    layout = replica.truth.layout
    out = {}
    for amp in AMPS:
        sl = layout.geometry(amp).assembled_slices
        out[amp] = float(np.median(image[sl][good[sl]]))
    return out


def test_calibrations_match_the_raws(latiss_replica: ReplicaInfo) -> None:
    """Processing the raws with the reference calibrations leaves no
    structure: the mean of the overscan-corrected biases minus the bias is 0
    per amplifier (|median| < 0.5 e-, noise 9 e-/√3 over 16000 pixels) with
    the rms of 3-frame read noise; flats divided by the flat are flat to
    0.3 % per amplifier (shot noise 1 % per pixel)."""
    truth = latiss_replica.truth.detector_truth(0)
    good = ~(truth.hot_mask | truth.cold_mask)
    bias = latiss_replica.calibrations["bias"][0][0]
    biases = np.mean([_raw_electrons(latiss_replica, e) for e in latiss_replica.exposures["bias"]], axis=0)
    residual = biases - bias
    medians = _amp_medians(latiss_replica, residual, good)
    assert max(abs(v) for v in medians.values()) < 0.5, medians
    for amp in AMPS:
        sl = latiss_replica.truth.layout.geometry(amp).assembled_slices
        rms = float(np.std(residual[sl][good[sl]]))
        assert rms == pytest.approx(truth.read_noise[amp] / np.sqrt(3), rel=0.15), amp

    dark = latiss_replica.calibrations["dark"][0][0]
    flats = []
    for exposure_id in latiss_replica.exposures["flat"]:
        signal = _raw_electrons(latiss_replica, exposure_id) - bias - dark * 5.3
        flats.append(signal / signal[good].mean())
    ratio = np.mean(flats, axis=0) / latiss_replica.calibrations["flat"][0][0]
    medians = _amp_medians(latiss_replica, ratio, good)
    assert max(abs(v - 1.0) for v in medians.values()) < 0.003, medians
    flat = latiss_replica.calibrations["flat"][0][0]
    assert float(flat[good].mean()) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(dark, truth.dark_current, rtol=1e-6)


def test_bias_fault(latiss_replica: ReplicaInfo, latiss_replica_bias_fault: ReplicaInfo) -> None:
    """The faulty replica differs only in its bias, +100 e- on C10: the raws
    processed with it are 100 e- low there."""
    faulty = latiss_replica_bias_fault
    assert faulty.fault is not None and faulty.exposures == latiss_replica.exposures
    layout = faulty.truth.layout
    diff = faulty.calibrations["bias"][0][0] - latiss_replica.calibrations["bias"][0][0]
    c10 = layout.geometry("C10").assembled_slices
    assert np.allclose(diff[c10], 100.0, atol=1e-3)
    diff[c10] = 0.0
    assert not diff.any()
    for calib_type in ("dark", "flat"):
        np.testing.assert_array_equal(
            faulty.calibrations[calib_type][0][0], latiss_replica.calibrations[calib_type][0][0]
        )
    path = _calib_path(faulty, "bias")
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul["IMAGE"].data, faulty.calibrations["bias"][0][0])
        assert hdul[0].header["LSST CALIB BIAS C10 DISTRIBUTION 50.0-PCT"] > 100.0
    truth = faulty.truth.detector_truth(0)
    good = ~(truth.hot_mask | truth.cold_mask)
    biases = np.mean([_raw_electrons(faulty, e) for e in faulty.exposures["bias"]], axis=0)
    medians = _amp_medians(faulty, biases - faulty.calibrations["bias"][0][0], good)
    assert medians["C10"] == pytest.approx(-100.0, abs=0.5)
    assert max(abs(v) for a, v in medians.items() if a != "C10") < 0.5


# -- LSSTComCam -------------------------------------------------------------------------------------------


def test_comcam_replica(tmp_path: Path) -> None:
    """ComCam: obs_lsst's records (9 detectors of raft R22, 15 filters), raws
    of two detectors, flats in r_03 found through LSSTComCam/calib."""
    replica = build_replica(tmp_path / "repo", instrument="LSSTComCam", detectors=[0, 4], n_bias=1, n_dark=1,
                            n_flat=2, with_ptc=False, compress_raws=False)  # fmt: skip
    print(f"LSSTComCam replica (2 detectors, 4 exposures) built in {replica.build_seconds:.1f} s")
    butler = replica.butler()
    registry = butler.registry
    (inst,) = registry.queryDimensionRecords("instrument")
    assert (inst.name, inst.class_name, inst.detector_max, inst.visit_max, inst.visit_system) == (
        "LSSTComCam", "lsst.obs.lsst.LsstComCam", 1000, 7050123199999, 2
    )  # fmt: skip
    dets = {d.id: d for d in registry.queryDimensionRecords("detector", instrument="LSSTComCam")}
    assert sorted(dets) == list(range(9))
    assert (dets[4].full_name, dets[4].raft, dets[4].name_in_raft, dets[4].purpose) == (
        "R22_S11",
        "R22",
        "S11",
        "SCIENCE",
    )
    assert dets[8].full_name == "R22_S22"
    filters = {
        r.name: r.band for r in registry.queryDimensionRecords("physical_filter", instrument="LSSTComCam")
    }
    assert filters == {
        "empty": "white", "none": "white", "unknown": "unknown", "pinhole": "white", "OG590_2_5mm": "OG590",
        "u_05": "u", "u_02": "u", "u_06": "u", "g_07": "g", "g_01": "g", "r_03": "r", "i_06": "i",
        "z_03": "z", "z_02": "z", "y_04": "y",
    }  # fmt: skip
    records = {r.id: r for r in registry.queryDimensionRecords("exposure", instrument="LSSTComCam")}
    flat = records[replica.exposures["flat"][0]]
    assert (flat.obs_id[:14], flat.physical_filter, flat.observation_type) == (
        "CC_O_20240901_",
        "r_03",
        "flat",
    )
    assert flat.can_see_sky is None  # ComCam has no observation-type fallback
    assert records[replica.exposures["bias"][0]].can_see_sky is False  # SHUTTIME 0
    assert len(replica.raw_refs) == 8
    assert {r.dataId["detector"] for r in replica.raw_refs} == {0, 4}
    found = butler.find_dataset("flat", instrument="LSSTComCam", detector=4, physical_filter="r_03",
                                collections="LSSTComCam/calib", timespan=flat.timespan)  # fmt: skip
    assert found is not None
    with fits.open(butler.getURI(found).ospath) as hdul:
        assert hdul[0].header["INSTRUME"] == "ComCam" and hdul[0].header["INSTRUMENT"] == "LSSTComCam"
    # Focal-plane normalisation (cp_pipe's ComCam flats): one scale for all
    # detectors, so their relative response (QE x vignetting) is kept.
    ff = {d: replica.truth.detector_truth(d).flat_field for d in (0, 4)}
    flats = {d: replica.calibrations["flat"][d][0] for d in (0, 4)}
    assert flats[4][0, 0] / flats[0][0, 0] == pytest.approx(ff[4][0, 0] / ff[0][0, 0], rel=1e-6)
    ratio = float(np.median(flats[4])) / float(np.median(flats[0]))
    assert abs(ratio - 1.0) > 0.02  # detector 4 (centre) is brighter than 0 (corner): not renormalised
    good = {
        d: ~(replica.truth.detector_truth(d).hot_mask | replica.truth.detector_truth(d).cold_mask)
        for d in (0, 4)
    }
    assert float(np.concatenate([flats[d][good[d]] for d in (0, 4)]).mean()) == pytest.approx(1.0, abs=1e-5)
