"""Ingest of real-format raw files: real files, idempotence, bad input."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from astropy.io import fits
from lsst.cpcombined.obs.ingest import IngestError, ingest_raws
from lsst.cpcombined.obs.raw import RawFormatError, read_raw_file, read_raw_header


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
    result = ingest_raws(repo, files)
    assert result.exposures == [3018092000065, 3019053000001]
    uri = repo.getURI("raw", instrument="LATISS", exposure=3018092000065, detector=0, collections="LATISS/raw/all")
    raw = read_raw_file(uri.ospath)
    assert raw.image.array.shape == (2 * 2048, 8 * 576)
    assert raw.layout.data_width == 509 and raw.layout.serial_overscan == 64
    assert raw.metadata["OBSID"] == "AT_C_20180920_000065"
    rec = repo.query_dimension_records("exposure", instrument="LSSTComCam")[0]
    assert rec.observation_type == "bias" and rec.exposure_time == 0.0 and rec.dark_time == pytest.approx(0.398)
    # The header alone, without loading pixels.
    md = read_raw_header(repo.getURI("raw", instrument="LSSTComCam", exposure=3019053000001, detector=0,
                                     collections="LSSTComCam/raw/all").ospath)
    assert md["IMGTYPE"] == "BIAS"


def test_reingest_is_noop(repo, real_data):
    files = sorted(str(p) for p in (real_data / "raw").glob("*.fits"))
    ingest_raws(repo, files)
    before = _state(repo)
    again = ingest_raws(repo, files)
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
            ingest_raws(repo, [good, str(bad)])
        assert _state(repo) == before
    # A real ComCam file when LATISS was asked for.
    with pytest.raises(IngestError, match="a LSSTComCam file, but ingest was asked for LATISS"):
        ingest_raws(repo, [str(real_data / "raw" / "comCam-3019053000001-R22-S00-det000.fits")],
                    instrument="LATISS")
    assert _state(repo) == before
    # skip_bad ingests only the good one and reports the others.
    result = ingest_raws(repo, [good, str(text), str(foreign)], skip_bad=True)
    assert [i.path for i in result.ingested] == [good]
    assert set(result.failed) == {str(text), str(foreign)}


def test_different_file_same_exposure_is_error(repo, real_data, tmp_path):
    src = real_data / "raw" / "latiss-3018092000065-det000.fits"
    ingest_raws(repo, [str(src)])
    before = _state(repo)
    with fits.open(src) as hdul:
        hdul[1].data[0, 0] = 7  # same header, different pixels
        changed = tmp_path / "changed.fits"
        hdul.writeto(changed)
    with pytest.raises(IngestError, match="a different file is already ingested"):
        ingest_raws(repo, [str(changed)])
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
