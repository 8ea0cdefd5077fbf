"""Ingest of raw files: the records obs_base's raw ingest writes, the
formatter names, idempotence, bad input."""

from __future__ import annotations

import gzip
import shutil
import uuid

import astropy.units as u
import numpy as np
import pytest
from astro_metadata_translator.tests import read_test_file
from astropy.io import fits
from astropy.time import Time
from lsst.cpcombined.obs.ingest import (
    IngestError,
    day_obs_record,
    exposure_record,
    ingest_raws,
    translate_header,
)
from lsst.cpcombined.obs.raw import RawFormatError, read_raw_file, read_raw_header
from lsst.daf.butler import Butler, DatasetIdGenEnum, DatasetRef, DimensionUniverse

#: Exposure records obs_base's raw ingest writes for real headers (computed
#: with obs_lsst's translators and obs_base's makeExposureRecordFromObsInfo),
#: with the begin/end of the timespan as TAI ISO strings.
OBS_BASE_EXPOSURES = {
    "latiss-3018092000065-det000.fits": {
        "instrument": "LATISS", "id": 3018092000065, "obs_id": "AT_C_20180920_000065",
        "begin": "2018-09-21T06:12:18.210", "end": "2018-09-21T06:12:45.210",
        "exposure_time": 27.0, "dark_time": 27.0, "observation_type": "unknown",
        "observation_reason": "unknown", "day_obs": 20180920, "seq_num": 65,
        "physical_filter": "unknown~unknown", "science_program": "unknown",
        "target_name": "UNKNOWN", "tracking_ra": None, "tracking_dec": None, "sky_angle": None,
        "zenith_angle": None, "azimuth": None, "has_simulated": False, "seq_start": 65, "seq_end": 65,
        "can_see_sky": None, "group": "3018092000065",
    },
    "comCam-3019053000001-R22-S00-det000.fits": {
        "instrument": "LSSTComCam", "id": 3019053000001, "obs_id": "CC_C_20190530_000001",
        "begin": "2019-05-31T02:38:37.384", "end": "2019-05-31T02:38:37.384",
        "exposure_time": 0.0, "dark_time": 0.398, "observation_type": "bias", "observation_reason": "bias",
        "day_obs": 20190530, "seq_num": 1, "physical_filter": "unknown", "science_program": "unknown",
        "target_name": "UNKNOWN", "tracking_ra": None, "tracking_dec": None, "sky_angle": None,
        "zenith_angle": None, "azimuth": None, "has_simulated": False, "seq_start": 1, "seq_end": 1,
        "can_see_sky": False, "group": "3019053000001",
    },
    "latiss-AT_O_20240624_000106_R00_S00.yaml": {
        "instrument": "LATISS", "id": 2024062400106, "obs_id": "AT_O_20240624_000106",
        "begin": "2024-06-25T01:27:55.160", "end": "2024-06-25T01:28:25.400",
        "exposure_time": 30.0, "dark_time": 30.2407, "observation_type": "cwfs",
        "observation_reason": "intra", "day_obs": 20240624, "seq_num": 106,
        "physical_filter": "SDSSr_65mm~empty", "science_program": "cwfs",
        "target_name": "HD 131586", "tracking_ra": 223.77379669301, "tracking_dec": -20.013429451065846,
        "sky_angle": 98.63385126206754, "azimuth": 356.63402266391336, "zenith_angle": 10.144164659476743,
        "has_simulated": False, "seq_start": 106, "seq_end": 106, "can_see_sky": True,
        "group": "2024-06-25T01:26:31.895#1",
    },
    "latiss-AT_C_20220426_000004_R00_S00.yaml": {
        "instrument": "LATISS", "id": 3022042600004, "obs_id": "AT_C_20220426_000004",
        "exposure_time": -1.0, "dark_time": 537.406, "observation_type": "unknown",
        "observation_reason": "unknown", "day_obs": 20220426, "seq_num": 4,
        "physical_filter": "unknown~unknown",
        "science_program": "unknown", "target_name": "UNKNOWN", "tracking_ra": None, "tracking_dec": None,
        "sky_angle": None, "zenith_angle": None, "azimuth": None, "has_simulated": False, "seq_start": 4,
        "seq_end": 4, "can_see_sky": None, "group": "3022042600004",
    },
    "comCam-CC_O_20241108_000266_R22_S00.yaml": {
        "instrument": "LSSTComCam", "id": 2024110800266, "obs_id": "CC_O_20241108_000266",
        "exposure_time": 30.0, "dark_time": 30.4306, "observation_type": "science",
        "observation_reason": "science", "day_obs": 20241108, "seq_num": 266, "physical_filter": "g_01",
        "science_program": "PP-SURVEY", "target_name": "slew_icrs", "tracking_ra": 53.312407782266014,
        "tracking_dec": -27.994761670941685, "sky_angle": 102.79926387330579, "azimuth": 270.86285009978087,
        "zenith_angle": 20.273438733832805, "has_simulated": False, "seq_start": 266, "seq_end": 266,
        "can_see_sky": True, "group": "2024-11-09T06:33:55.311",
    },
}

#: The day_obs timespans obs_base writes (TAI): 12:00 on the mountain,
#: midnight US Pacific time (07:00 TAI in May) for ComCam in the lab.
OBS_BASE_DAYS = {
    ("LATISS", 20180920): ("2018-09-20T12:00:00.000", "2018-09-21T12:00:00.000"),
    ("LSSTComCam", 20190530): ("2019-05-30T07:00:00.000", "2019-05-31T07:00:00.000"),
    ("LATISS", 20240624): ("2024-06-24T12:00:00.000", "2024-06-25T12:00:00.000"),
}


def _check_exposure(record, expected):
    got = record.toDict()
    for field, value in expected.items():
        if field in ("begin", "end"):
            # Reference times are written to the millisecond.
            t = getattr(record.timespan, field)
            assert abs((t - Time(value, scale="tai")).to_value(u.s)) < 5e-4, field
        elif isinstance(value, float):
            assert got[field] == pytest.approx(value, abs=1e-9), field
        else:
            assert got[field] == value, field


def _check_day(record, expected):
    """A day_obs timespan equals obs_base's (TAI begin and end, to 1 us)."""
    for t, iso in zip((record.timespan.begin, record.timespan.end), expected, strict=True):
        assert t.scale == "tai" and abs((t - Time(iso, scale="tai")).to_value(u.s)) < 1e-6


def _formatters(butler):
    """Formatter recorded in the datastore for each raw, by data ID."""
    out = {}
    for ref in butler.query_datasets("raw", collections="*", find_first=False, explain=False):
        (info,) = butler._datastore.getStoredItemsInfo(ref)
        out[(ref.dataId["instrument"], ref.dataId["exposure"], ref.dataId["detector"])] = info.formatter
    return out


def _state(butler):
    """Everything ingest can touch: datasets, exposures, day_obs, groups."""
    datasets = sorted(
        (r.dataId["instrument"], r.dataId["exposure"], r.dataId["detector"])
        for r in butler.query_datasets("raw", collections="*", find_first=False, explain=False)
    ) if "raw" in {d.name for d in butler.registry.queryDatasetTypes()} else []
    exposures = sorted(r.id for r in butler.query_dimension_records("exposure", explain=False))
    days = sorted(r.id for r in butler.query_dimension_records("day_obs", explain=False))
    return datasets, exposures, days


def test_real_raw_files(repo, real_data):
    files = sorted(str(p) for p in (real_data / "raw").glob("*.fits"))
    assert len(files) == 2
    result = ingest_raws(repo, files, allow_odd=True)
    assert result.exposures == [3018092000065, 3019053000001]
    # The records obs_base writes.
    exposures = {r.id: r for r in repo.registry.queryDimensionRecords("exposure")}
    for name in ("latiss-3018092000065-det000.fits", "comCam-3019053000001-R22-S00-det000.fits"):
        _check_exposure(exposures[OBS_BASE_EXPOSURES[name]["id"]], OBS_BASE_EXPOSURES[name])
    # The zero-length ComCam bias gets daf_butler's 1 ns timespan.
    span = exposures[3019053000001].timespan
    assert (span.end - span.begin).to_value("s") == pytest.approx(1e-9, abs=1e-10)
    days = {(r.instrument, r.id): r for r in repo.registry.queryDimensionRecords("day_obs")}
    assert set(days) == {("LATISS", 20180920), ("LSSTComCam", 20190530)}
    for key, (begin, end) in OBS_BASE_DAYS.items():
        if key in days:
            _check_day(days[key], (begin, end))
    groups = {(r.instrument, r.name) for r in repo.registry.queryDimensionRecords("group")}
    assert groups == {("LATISS", "3018092000065"), ("LSSTComCam", "3019053000001")}
    # Full-size camera raws record obs_lsst's raw formatters.
    assert _formatters(repo) == {
        ("LATISS", 3018092000065, 0): "lsst.obs.lsst.rawFormatter.LatissRawFormatter",
        ("LSSTComCam", 3019053000001, 0): "lsst.obs.lsst.rawFormatter.LsstComCamRawFormatter",
    }
    # obs_base's deterministic dataset ids and the default file template.
    for ref in repo.query_datasets("raw", collections="*", find_first=False, explain=False):
        expected = DatasetRef(
            ref.datasetType, ref.dataId, run=ref.run, id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN
        )
        assert ref.id == expected.id and isinstance(ref.id, uuid.UUID)
    latiss_id = {"instrument": "LATISS", "exposure": 3018092000065, "detector": 0}
    uri = repo.getURI("raw", **latiss_id, collections="LATISS/raw/all")
    assert uri.path.endswith(
        "LATISS/raw/all/raw/20180920/AT_C_20180920_000065/"
        "raw_LATISS_unknown~unknown_AT_C_20180920_000065_RXX_S00_LATISS_raw_all.fits"
    )
    raw = read_raw_file(uri.ospath)
    assert raw.image.array.shape == (2 * 2048, 8 * 576)
    assert raw.layout.data_width == 509 and raw.layout.serial_overscan == 64
    assert raw.metadata["OBSID"] == "AT_C_20180920_000065"
    rec = repo.query_dimension_records("exposure", instrument="LSSTComCam")[0]
    assert rec.observation_type == "bias" and rec.exposure_time == 0.0
    assert rec.dark_time == pytest.approx(0.398)
    # The header alone, without loading pixels.
    md = read_raw_header(repo.getURI("raw", instrument="LSSTComCam", exposure=3019053000001, detector=0,
                                     collections="LSSTComCam/raw/all").ospath)
    assert md["IMGTYPE"] == "BIAS"


def test_reingest_is_noop(repo, real_data):
    files = sorted(str(p) for p in (real_data / "raw").glob("*.fits"))
    ingest_raws(repo, files, allow_odd=True)
    before = _state(repo)
    again = ingest_raws(repo, files, allow_odd=True)
    assert len(again.ingested) == 0 and len(again.already_present) == 2
    assert _state(repo) == before


def test_bad_files_leave_repo_unchanged(repo, real_data, tmp_path):
    good = str(real_data / "raw" / "latiss-3018092000065-det000.fits")
    # Not FITS at all.
    text = tmp_path / "notes.fits"
    text.write_text("this is not a FITS file\n")
    # Corrupt: a real file truncated in the middle of its pixel data.
    data = gzip.decompress((real_data / "raw" / "comCam-3019053000001-R22-S00-det000.fits").read_bytes())
    corrupt = tmp_path / "truncated.fits"
    corrupt.write_bytes(data[: len(data) // 2])
    # Another instrument's file (DECam-like header, one image HDU).
    foreign = tmp_path / "foreign.fits"
    hdr = fits.Header({"INSTRUME": "DECam", "OBSID": "ct4m20200101t000000"})
    fits.HDUList([fits.PrimaryHDU(header=hdr), fits.ImageHDU(np.zeros((4, 4), np.int32), name="Segment10")]
                 ).writeto(foreign)
    before = _state(repo)
    for bad, pattern in [
        (text, "not a readable FITS file"),
        (corrupt, "corrupt|missing amplifier|no data|truncated"),
        (foreign, "not a LATISS or LSSTComCam raw file"),
    ]:
        with pytest.raises(IngestError, match=pattern):
            ingest_raws(repo, [good, str(bad)], allow_odd=True)
        assert _state(repo) == before
    # A real ComCam file when LATISS was asked for.
    with pytest.raises(IngestError, match="a LSSTComCam file, but ingest was asked for LATISS"):
        ingest_raws(repo, [str(real_data / "raw" / "comCam-3019053000001-R22-S00-det000.fits")],
                    instrument="LATISS")
    assert _state(repo) == before
    # skip_bad ingests only the good one and reports the others.
    result = ingest_raws(repo, [good, str(text), str(foreign)], skip_bad=True, allow_odd=True)
    assert [i.path for i in result.ingested] == [good]
    assert set(result.failed) == {str(text), str(foreign)}


def test_different_file_same_exposure_is_error(repo, real_data, tmp_path):
    src = real_data / "raw" / "latiss-3018092000065-det000.fits"
    ingest_raws(repo, [str(src)], allow_odd=True)
    before = _state(repo)
    with fits.open(src) as hdul:
        hdul[1].data[0, 0] = 7  # same header, different pixels
        changed = tmp_path / "changed.fits"
        hdul.writeto(changed)
    with pytest.raises(IngestError, match="a different file is already ingested"):
        ingest_raws(repo, [str(changed)], allow_odd=True)
    assert _state(repo) == before


def test_read_raw_file_errors(tmp_path, real_data):
    empty = tmp_path / "empty.fits"
    fits.PrimaryHDU().writeto(empty)
    with pytest.raises(RawFormatError, match="no amplifier"):
        from lsst.cpcombined.obs.raw import read_raw_header

        read_raw_header(empty)
    src = real_data / "raw" / "latiss-3018092000065-det000.fits"
    with fits.open(src) as hdul:
        del hdul[16]
        missing = tmp_path / "missing_amp.fits"
        hdul.writeto(missing)
    with pytest.raises(RawFormatError, match="missing amplifier extensions Segment00"):
        read_raw_file(missing)
    shutil.copy(src, tmp_path / "ok.fits")
    assert read_raw_file(tmp_path / "ok.fits").layout.data_height == 2000


@pytest.mark.parametrize(
    "name", ["latiss-AT_O_20240624_000106_R00_S00.yaml", "latiss-AT_C_20220426_000004_R00_S00.yaml",
             "comCam-CC_O_20241108_000266_R22_S00.yaml"],
)
def test_exposure_records_of_headers(real_data, name):
    """Pointing, sky angle, the -1 s exposure time: obs_base's records."""
    header = read_test_file(name, dir=str(real_data / "obs_lsst_tests" / "headers"))
    instrument, info = translate_header(header, name)
    universe = DimensionUniverse()
    record = exposure_record(universe, info)
    _check_exposure(record, OBS_BASE_EXPOSURES[name])
    if name.startswith("latiss-AT_C"):
        # No EXPTIME: -1 s, and an instantaneous (1 ns) exposure.
        assert (record.timespan.end - record.timespan.begin).to_value("s") == pytest.approx(1e-9, abs=1e-10)
    day = day_obs_record(universe, info)
    if (instrument, day.id) in OBS_BASE_DAYS:
        _check_day(day, OBS_BASE_DAYS[(instrument, day.id)])


def test_ingest_into_obs_lsst_registered_repo(tmp_path, real_data):
    """Instrument records written by obs_lsst (class lsst.obs.lsst.Latiss,
    not importable here) are all ingest needs."""
    from test_instrument import _write_obs_lsst_records

    root = str(tmp_path / "science_pipelines_repo")
    Butler.makeRepo(root)
    butler = Butler.from_config(root, writeable=True)
    _write_obs_lsst_records(butler, "LATISS")
    (inst,) = butler.registry.queryDimensionRecords("instrument")
    assert inst.class_name == "lsst.obs.lsst.Latiss"
    result = ingest_raws(butler, [str(real_data / "raw" / "latiss-3018092000065-det000.fits")], allow_odd=True)
    assert result.exposures == [3018092000065]
    (rec,) = butler.registry.queryDimensionRecords("exposure")
    _check_exposure(rec, OBS_BASE_EXPOSURES["latiss-3018092000065-det000.fits"])
    assert _formatters(butler) == {
        ("LATISS", 3018092000065, 0): "lsst.obs.lsst.rawFormatter.LatissRawFormatter"
    }


def test_simulated_raws(repo):
    """Reduced-scale simulated raws record the package's RawFormatter,
    whose read says how to read them."""
    from lsst.cpcombined.simulation import SimulationTruth
    from lsst.cpcombined.simulation.camera import SimulatedCamera

    truth = SimulationTruth("LSSTComCam", {"geometry_scale": 0.0625, "seed": 1})
    cam = SimulatedCamera(repo, truth, detectors=[0, 4])
    (bias,) = cam.take("bias", [0.0])
    (flat,) = cam.take("flat", [3.0])
    recs = {r.id: r for r in repo.registry.queryDimensionRecords("exposure", instrument="LSSTComCam")}
    for exposure, image_type in ((bias, "bias"), (flat, "flat")):
        r = recs[exposure]
        day, seq = divmod(exposure, 100_000)
        # Controller O: the id is day_obs and sequence number; day_obs rolls over at 12:00 TAI.
        assert (r.day_obs, r.seq_num, r.seq_start, r.seq_end) == (day, seq, seq, seq)
        assert r.obs_id == f"CC_O_{day}_{seq:06d}"
        assert int((r.timespan.begin.tai - 12 * u.hour).strftime("%Y%m%d")) == day
        assert (r.observation_type, r.observation_reason) == (image_type, image_type)
        assert r.has_simulated is True and r.can_see_sky is False
        assert r.physical_filter == ("r_03" if image_type == "flat" else "empty")
        # The group (GROUPID) is the start time written to the millisecond.
        assert abs((Time(r.group, scale="tai") - r.timespan.begin).to_value(u.s)) <= 5e-4
    groups = {g.name for g in repo.registry.queryDimensionRecords("group", instrument="LSSTComCam")}
    assert groups == {recs[bias].group, recs[flat].group}
    (day,) = {r.day_obs for r in recs.values()}
    (day_rec,) = repo.registry.queryDimensionRecords("day_obs", instrument="LSSTComCam")
    noon = f"{str(day)[:4]}-{str(day)[4:6]}-{str(day)[6:]}T12:00:00"
    assert day_rec.id == day
    _check_day(day_rec, (noon, (Time(noon, scale="tai") + 1 * u.day).isot))
    assert _formatters(repo) == {
        ("LSSTComCam", e, d): "lsst.cpcombined.obs.raw.RawFormatter" for e in (bias, flat) for d in (0, 4)
    }
    how = r"read it with lsst.cpcombined.obs.raw.read_raw_file\(butler.getURI\(ref\).ospath\)"
    where = {"instrument": "LSSTComCam", "exposure": bias, "collections": "LSSTComCam/raw/all"}
    with pytest.raises(ValueError, match=how):  # daf_butler wraps the formatter's error
        repo.get("raw", detector=0, **where)
    uri = repo.getURI("raw", detector=4, **where)
    assert read_raw_file(uri.ospath).layout == truth.layout
