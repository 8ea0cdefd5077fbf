"""The Science Pipelines' file layouts, written and read without afw/ip_isr:
afw Exposure FITS (`lsst.cpcombined.repo.exposure_fits`) and ip_isr's
defects and PTC tables (`lsst.cpcombined.repo.calib_tables`).

Every comparison of pixels is exact (``assert_array_equal``): the layouts
are lossless, compressed or not.  Files "written like cp_pipe" are written
here with astropy directly (not with the package's writer), following afw's
layout: tile-compressed HDUs, archive HDUs, afw's cards, another mask-plane
numbering.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import astropy.io.fits as fits
import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table
from lsst.cpcombined.algorithms.masks import BIT, from_mask
from lsst.cpcombined.repo.calib_tables import (
    DEFECT_COLUMNS,
    DEFECTS_CALIBCLS,
    PTC_CALIBCLS,
    PTC_COLUMNS,
    PTC_SCHEMA,
    PTC_VERSION,
    calib_identity,
    check_ptc_table,
    defects_table,
    ptc_amp_results,
    ptc_table,
    read_defects,
    read_ptc,
    write_calib_table,
)
from lsst.cpcombined.repo.exposure_fits import (
    AFW_MASK_PLANES,
    legacy_plane_map,
    read_exposure_fits,
    write_exposure_fits,
)
from lsst.cpcombined.repo.products import from_masked_image, to_masked_image
from lsst.images import Box, Image, MaskedImage

#: A real afw-written (2018) LATISS bias: EXTTYPE but no EXTNAME, GZIP_2, archive HDUs.
REAL_AFW_BIAS = Path(
    "/tmp/up/obs_lsst_data/tests/data/input/latiss/CALIB/bias/2018-09-21/bias-det000_2018-09-21.fits"
)

METADATA = {
    "OBSTYPE": "dark",
    "LSST ISR UNITS": "electron",
    "EXPTIME": 1.0,
    "DARKTIME": 1.0,
    "CPP_INPUT_0": 2026112500001,
    "LSST CALIB DARK C10 DISTRIBUTION 50.0-PCT": 0.0123,
    "LSST CALIB DARK C10 DISTRIBUTION 100.0-PCT": math.nan,
    "UPPER": math.inf,
    "LOWER": -math.inf,
    "FLAG": True,
    "NOTHING": None,
    "LONGTEXT": "x" * 150,
}


def _product(ny: int = 37, nx: int = 29, y0: int = 0, x0: int = 0, seed: int = 1) -> MaskedImage:
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 3.0, (ny, nx)).astype(np.float32)
    image[3, 4] = np.nan
    image[5, 6] = np.inf
    variance = rng.uniform(1.0, 2.0, (ny, nx)).astype(np.float32)
    mask = rng.integers(0, 256, (ny, nx), dtype=np.uint8)  # every plane, every combination
    mi = to_masked_image(image, variance, mask, unit=u.electron / u.s, metadata=METADATA)
    if (y0, x0) != (0, 0):
        bbox = Box.factory[y0 : y0 + ny, x0 : x0 + nx]
        mi = MaskedImage(
            Image(image, unit=u.electron / u.s, bbox=bbox),
            mask=mi.mask.__class__(mi.mask.array, schema=mi.mask.schema, bbox=bbox),
            variance=Image(variance, unit=(u.electron / u.s) ** 2, bbox=bbox),
            metadata=dict(METADATA),
        )
    return mi


def _same_metadata(read: dict, written: dict) -> None:
    for key, value in written.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(read[key]), key
        else:
            assert read[key] == value and type(read[key]) is type(value), (key, read[key], value)


# -- afw Exposure FITS ---------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "GZIP_2"])
def test_exposure_round_trip_is_exact(tmp_path, compression):
    mi = _product(y0=7, x0=-3)
    path = tmp_path / "calib.fits"
    write_exposure_fits(mi, path, compression=compression)
    back = read_exposure_fits(path)
    image, variance, mask = from_masked_image(mi)
    image2, variance2, mask2 = from_masked_image(back)
    assert image2.dtype == np.float32 and image2.dtype.isnative
    np.testing.assert_array_equal(image2, image)  # NaN and inf included
    np.testing.assert_array_equal(variance2, variance)
    for plane, bit in BIT.items():
        np.testing.assert_array_equal(mask2 & bit, mask & bit, err_msg=plane)
    assert back.bbox == mi.bbox
    assert back.image.unit == u.electron / u.s and back.variance.unit == (u.electron / u.s) ** 2
    _same_metadata(dict(back.metadata), METADATA)
    with fits.open(path, disable_image_compression=True) as hdul:
        assert len(hdul) == 4 and hdul[0].header["NAXIS"] == 0
        primary = hdul[0].header
        # afw's conventions: HIERARCH for long keys, 'NAN'/'+INFINITY' strings, undefined for None.
        assert primary["HIERARCH LSST CALIB DARK C10 DISTRIBUTION 100.0-PCT"] == "NAN"
        assert primary["UPPER"] == "+INFINITY" and primary["LOWER"] == "-INFINITY"
        assert primary.cards["NOTHING"].image[10:].strip() == ""  # an undefined value
        for hdu in hdul[1:]:
            h = hdu.header
            if compression:
                assert h["ZCMPTYPE"] == "GZIP_2" and h["ZTILE1"] == 29 and h["ZTILE2"] == 1
                assert h.get("ZQUANTIZ", "NONE") == "NONE"
        with fits.open(path) as plain:
            for hdu, name in zip(plain[1:], ("IMAGE", "MASK", "VARIANCE"), strict=True):
                h = hdu.header
                assert (h["EXTNAME"], h["EXTTYPE"], h["INHERIT"]) == (name, name, True)
                assert (h["LTV1"], h["LTV2"]) == (3.0, -7.0)
                assert (h["CTYPE1A"], h["CRPIX1A"], h["CRPIX2A"], h["CRVAL1A"], h["CRVAL2A"]) == (
                    "LINEAR", 1.0, 1.0, -3.0, 7.0)
            assert plain[1].header["BUNIT"] == "electron / s"
            assert plain[3].header["BUNIT"] == "electron2 / s2"
            assert plain[2].header.cards["BUNIT"].image[10:].strip() == ""  # undefined, as afw writes it
            assert plain[2].data.dtype.kind == "i" and plain[2].data.dtype.itemsize == 4
            mp = {k[3:]: plain[2].header[k] for k in plain[2].header if k.startswith("MP_")}
            assert mp == AFW_MASK_PLANES
            # Our planes sit at afw's bit numbers.
            for plane, bit in BIT.items():
                stored = (plain[2].data >> AFW_MASK_PLANES[plane]) & 1
                np.testing.assert_array_equal(stored, (mask & bit) != 0)


def test_read_legacy_reads_our_files(tmp_path):
    """`lsst.images.MaskedImage.read_legacy` reads the files bit-exactly,
    with cp_combined's plane names or with its own default renaming."""
    mi = _product(y0=4, x0=2)
    image, variance, mask = from_masked_image(mi)
    for compression in (None, "GZIP_2"):
        path = tmp_path / f"calib_{compression}.fits"
        write_exposure_fits(mi, path, compression=compression)
        ours = MaskedImage.read_legacy(path, plane_map=legacy_plane_map())
        assert list(ours.mask.schema.names) == list(BIT)
        np.testing.assert_array_equal(from_mask(ours.mask), mask)
        np.testing.assert_array_equal(ours.image.array, image)
        np.testing.assert_array_equal(ours.variance.array, variance)
        assert ours.bbox == mi.bbox and ours.image.unit == u.electron / u.s
        default = MaskedImage.read_legacy(path)
        renamed = {"SAT": "SATURATED", "INTRP": "INTERPOLATED", "CR": "COSMIC_RAY", "EDGE": "DETECTION_EDGE"}
        for plane, bit in BIT.items():
            np.testing.assert_array_equal(default.mask.get(renamed.get(plane, plane)), (mask & bit) != 0,
                                          err_msg=plane)
        np.testing.assert_array_equal(default.image.array, image)


#: A cp_pipe/afw mask dictionary: afw's first planes, then planes ISR adds
#: in its own order (some beyond the first byte and the second).
CP_PIPE_PLANES = {
    "BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "DETECTED_NEGATIVE": 6, "SUSPECT": 7,
    "NO_DATA": 8, "VIGNETTED": 9, "STREAK": 10, "CROSSTALK": 11, "UNMASKEDNAN": 12, "ITL_DIP": 13,
    "PARTLY_VIGNETTED": 19, "SPIKE": 24, "NOT_IN_ANY_LIST": 31,
}


def _write_like_cp_pipe(path: Path, image, mask, variance, *, xy0=(0, 0), extname=True) -> None:
    """An afw-style Exposure written with astropy alone: GZIP_2 tiles of one
    row, EXTTYPE (and EXTNAME unless old style), A-WCS only for the origin,
    AR_HDU and archive ids in the primary, archive tables after HDU 3."""
    primary = fits.PrimaryHDU()
    cards = (
        ("OBSTYPE", "dark"), ("HIERARCH LSST ISR UNITS", "electron"), ("EXPTIME", 1.0), ("DARKTIME", 1.0),
        ("HIERARCH CALIB_CREATION_DATE", "2025-01-02"),
        ("HIERARCH LSST CALIB DARK C10 DISTRIBUTION 5.0-PCT", "NAN"),
        ("HIERARCH EXPINFO_V", 2), ("AR_HDU", 5), ("HIERARCH ARCHIVE_ID_DETECTOR", 1),
        ("HIERARCH DETECTOR_ID", 1), ("ZQUANTIZ", "NONE"), ("DETNAME", "RXX_S00"),
    )
    for key, value in cards:
        primary.header[key] = value
    hdus = [primary]
    for name, data in (("IMAGE", image), ("MASK", mask), ("VARIANCE", variance)):
        header = fits.Header()
        header["INHERIT"] = True
        header["EXTTYPE"] = name
        if name != "MASK":
            # The raws' BUNIT, carried into cp_pipe's products by its header merging.
            header["BUNIT"] = "adu" if name == "IMAGE" else "adu**2"
        if name == "MASK":
            for plane, bit in sorted(CP_PIPE_PLANES.items()):
                header[f"HIERARCH MP_{plane}"] = bit
        for key, value in (("CTYPE1A", "LINEAR"), ("CTYPE2A", "LINEAR"), ("CRPIX1A", 1.0), ("CRPIX2A", 1.0),
                           ("CRVAL1A", float(xy0[0])), ("CRVAL2A", float(xy0[1])), ("CUNIT1A", "PIXEL"),
                           ("CUNIT2A", "PIXEL")):
            header[key] = value
        hdu = fits.CompImageHDU(data, header=header, compression_type="GZIP_2", quantize_level=0.0,
                                tile_shape=(1, data.shape[1]), name=name if extname else None)
        hdus.append(hdu)
    columns = [fits.Column("id", "J", array=[0]), fits.Column("name", "64A", array=["Detector"])]
    index = fits.BinTableHDU.from_columns(columns, name="ARCHIVE_INDEX")
    index.header["EXTTYPE"] = "ARCHIVE_INDEX"
    index.header["AR_NCAT"] = 2
    data = fits.BinTableHDU.from_columns([fits.Column("name", "16A", array=["RXX_S00"])], name="Detector")
    data.header["EXTTYPE"] = "ARCHIVE_DATA"
    hdus += [index, data]
    fits.HDUList(hdus).writeto(path, overwrite=True)


@pytest.mark.parametrize("extname", [True, False])
def test_reads_files_written_like_cp_pipe(tmp_path, caplog, extname):
    rng = np.random.default_rng(5)
    ny, nx = 40, 33
    image = rng.normal(0.0, 1.0, (ny, nx)).astype(np.float32)
    variance = rng.uniform(0.5, 1.5, (ny, nx)).astype(np.float32)
    afw = np.zeros((ny, nx), dtype=np.int32)
    planes = {}
    for name, bit in CP_PIPE_PLANES.items():
        planes[name] = rng.random((ny, nx)) < 0.1
        value = np.int32(1 << bit) if bit < 31 else np.int32(-(2**31))
        afw |= np.where(planes[name], value, 0).astype(np.int32)
    path = tmp_path / "cp_pipe_dark.fits"
    _write_like_cp_pipe(path, image, afw, variance, xy0=(2, 5), extname=extname)
    with caplog.at_level(logging.INFO, logger="lsst.cpcombined.repo.exposure_fits"):
        mi = read_exposure_fits(path)
    got_image, got_variance, got = from_masked_image(mi)
    np.testing.assert_array_equal(got_image, image)
    np.testing.assert_array_equal(got_variance, variance)
    assert mi.bbox == Box.factory[5 : 5 + ny, 2 : 2 + nx]  # origin from the A WCS, as afw reads it
    # Units from cp_pipe's conventions (not the stale raw BUNIT): electrons, per second of dark time.
    assert mi.image.unit == u.electron / u.s
    md = dict(mi.metadata)
    assert md["OBSTYPE"] == "dark" and md["LSST ISR UNITS"] == "electron"
    assert math.isnan(md["LSST CALIB DARK C10 DISTRIBUTION 5.0-PCT"])
    for key in ("AR_HDU", "EXPINFO_V", "ARCHIVE_ID_DETECTOR", "DETECTOR_ID", "ZQUANTIZ", "NAXIS"):
        assert key not in md
    # Each of our planes holds its afw plane and the afw planes folded into it.
    folded = {
        "DETECTED": ["DETECTED", "DETECTED_NEGATIVE", "STREAK"],
        "NO_DATA": ["NO_DATA", "VIGNETTED", "UNMASKEDNAN"],
        "SUSPECT": ["SUSPECT", "CROSSTALK", "ITL_DIP", "PARTLY_VIGNETTED", "SPIKE", "NOT_IN_ANY_LIST"],
    }
    for plane, bit in BIT.items():
        expected = np.zeros((ny, nx), bool)
        for name in folded.get(plane, [plane]):
            expected |= planes[name]
        np.testing.assert_array_equal((got & bit) != 0, expected, err_msg=plane)
    # Every folded plane is logged with its pixel count: nothing is dropped silently.
    for name in ("DETECTED_NEGATIVE", "STREAK", "VIGNETTED", "UNMASKEDNAN", "CROSSTALK", "ITL_DIP",
                 "PARTLY_VIGNETTED", "SPIKE", "NOT_IN_ANY_LIST"):
        n = int(planes[name].sum())
        message = f"afw mask plane {name} ({n} pixels) read as"
        assert any(message in r.getMessage() for r in caplog.records), name


def test_layout_errors(tmp_path):
    image = np.zeros((4, 5), np.float32)
    mask = np.zeros((4, 5), np.int32)
    mask[1, 1] = 1 << 20  # no MP_ card declares bit 20
    path = tmp_path / "bad_mask.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, name="IMAGE"),
                  fits.ImageHDU(mask, header=fits.Header([("MP_BAD", 0)]), name="MASK"),
                  fits.ImageHDU(image, name="VARIANCE")]).writeto(path)
    with pytest.raises(ValueError, match=r"mask bits \[20\] are set but no MP_ card declares them"):
        read_exposure_fits(path)
    path = tmp_path / "swapped.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, header=fits.Header([("EXTTYPE", "VARIANCE")])),
                  fits.ImageHDU(mask), fits.ImageHDU(image)]).writeto(path)
    with pytest.raises(ValueError, match="HDU 1 is 'VARIANCE', not 'IMAGE'"):
        read_exposure_fits(path)
    path = tmp_path / "image_only.fits"
    fits.PrimaryHDU(image).writeto(path)
    with pytest.raises(ValueError, match="no IMAGE, MASK and VARIANCE HDUs"):
        read_exposure_fits(path)
    with pytest.raises(ValueError, match="not lossless"):
        write_exposure_fits(_product(), tmp_path / "x.fits", compression="RICE_1")


def test_real_afw_file():
    """A 2018 afw-written LATISS bias (old style: EXTTYPE only, GZIP_2,
    archive HDUs): pixels bit-exact against astropy's decompression."""
    if not REAL_AFW_BIAS.exists():
        pytest.skip(f"{REAL_AFW_BIAS} not available")
    mi = read_exposure_fits(REAL_AFW_BIAS)
    with fits.open(REAL_AFW_BIAS) as hdul:
        np.testing.assert_array_equal(mi.image.array, hdul[1].data)
        np.testing.assert_array_equal(mi.variance.array, hdul[3].data)
        assert not np.any(hdul[2].data) and not np.any(from_mask(mi.mask))
    assert mi.bbox == Box.factory[0:4000, 0:4072]
    md = dict(mi.metadata)
    assert md["OBSTYPE"] == "bias" and md["DETNAME"] == "RXX_S00" and "AR_HDU" not in md


@pytest.mark.fullsize
def test_fullsize_speed(tmp_path):
    """A full-size LATISS calibration (4072 x 4000) writes and reads in well
    under a second uncompressed (measured ~0.13 s and ~0.09 s warm), and in
    a few seconds with the lossless GZIP_2 tiles products are stored with
    (measured ~1 s and ~0.7 s on two cores)."""
    rng = np.random.default_rng(2)
    image = rng.normal(0.0, 5.0, (4000, 4072)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[::97, ::13] = BIT["BAD"]
    mi = to_masked_image(image, np.full(image.shape, 25.0, np.float32), mask, unit=u.electron)
    path = tmp_path / "full.fits"
    write_exposure_fits(mi, path)
    read_exposure_fits(path)
    t0 = time.perf_counter()
    write_exposure_fits(mi, path)
    t1 = time.perf_counter()
    back = read_exposure_fits(path)
    t2 = time.perf_counter()
    print(f"full-size write {t1 - t0:.3f} s, read {t2 - t1:.3f} s")
    np.testing.assert_array_equal(from_mask(back.mask), mask)
    assert t1 - t0 < 1.0 and t2 - t1 < 1.0
    t0 = time.perf_counter()
    write_exposure_fits(mi, path, compression="GZIP_2")
    t1 = time.perf_counter()
    back = read_exposure_fits(path)
    t2 = time.perf_counter()
    print(f"full-size GZIP_2 write {t1 - t0:.3f} s, read {t2 - t1:.3f} s, {path.stat().st_size / 1e6:.1f} MB")
    np.testing.assert_array_equal(back.image.array, image)
    assert t1 - t0 < 4.0 and t2 - t1 < 4.0


# -- ip_isr tables ---------------------------------------------------------------------------


def _identity(obstype: str, **kwargs) -> dict:
    if obstype == "defects":
        return calib_identity("defects", schema="", version=2.0, calibcls=DEFECTS_CALIBCLS,
                              instrument="LSSTComCam", detector=4, detector_name="R22_S11",
                              detector_serial="ITL-3800C-229", **kwargs)
    return calib_identity("PTC", schema=PTC_SCHEMA, version=PTC_VERSION, calibcls=PTC_CALIBCLS,
                          instrument="LSSTComCam", detector=4, detector_name="R22_S11", unset="", **kwargs)


def test_defects_table_layout_and_round_trip(tmp_path):
    import datetime

    now = datetime.datetime(2026, 3, 4, 5, 6, 7, 890)
    boxes = Table({"x0": np.array([0, 10], np.int32), "y0": np.array([0, 20], np.int32),
                   "width": np.array([5, 1], np.int32), "height": np.array([3, 100], np.int32)})
    table = defects_table(boxes, {**_identity("defects", now=now), "DET_NY": 500, "DET_NX": 512})
    assert table.colnames == list(DEFECT_COLUMNS) and all(table[c].dtype == np.int64 for c in DEFECT_COLUMNS)
    assert dict(table.meta) == {
        "OBSTYPE": "defects", "defects_SCHEMA": "", "defects_VERSION": 2.0, "INSTRUME": "LSSTComCam",
        "RAFTNAME": "R22", "SLOTNAME": "S11", "DETECTOR": 4, "DET_NAME": "R22_S11",
        "DET_SER": "ITL-3800C-229",
        "CALIB_ID": "instrument=LSSTComCam raftName=R22 detectorName=R22_S11 detector=4 "
                    "calibDate=2026-03-04T05:06:07.000890",
        "CALIBCLS": DEFECTS_CALIBCLS, "CALIBDATE": "2026-03-04T05:06:07.000890",
        "CALIB_CREATION_DATE": "2026-03-04", "CALIB_CREATION_TIME": "05:06:07.000890",
        "DET_NY": 500, "DET_NX": 512,
    }
    path = tmp_path / "defects.fits"
    write_calib_table(table, path)
    with fits.open(path) as hdul:
        assert len(hdul) == 2 and hdul[0].header["NAXIS"] == 0
        assert [hdul[1].header[f"TFORM{i}"] for i in range(1, 5)] == ["K"] * 4
        assert hdul[1].header["defects_SCHEMA"] == ""  # case kept, as ip_isr writes it
    back = read_defects(path)
    assert back.colnames == list(DEFECT_COLUMNS)
    for c in DEFECT_COLUMNS:
        np.testing.assert_array_equal(back[c], table[c])
    assert dict(back.meta) == dict(table.meta)


def test_defects_region_tables_are_read_as_boxes(tmp_path):
    """ip_isr's FITS-region style (1-based centres, R = sizes) becomes boxes."""
    region = Table({"X": [3.0, 11.0, 21.0], "Y": [2.0, 70.0, 5.0],
                    "R": [[5.0, 3.0], [1.0, 100.0], [2.0, 4.0]], "ROTANG": [0.0, 0.0, 90.0],
                    "SHAPE": ["BOX", "BOX", "ROTBOX"], "COMPONENT": [0, 1, 2]})
    region.meta.update(_identity("defects"))
    write_calib_table(region, tmp_path / "region.fits")
    back = read_defects(tmp_path / "region.fits")
    # Even sizes: afw's Box2I.makeCenteredBox rounds the corner half up (centre 20, 4 -> 19, 4).
    assert [tuple(int(v) for v in r) for r in back] == [(0, 0, 5, 3), (10, 20, 1, 100), (19, 4, 4, 2)]


def _ptc_amp(name: str, n: int, s: int, rng) -> dict:
    means = np.sort(rng.uniform(100, 1e5, n))
    kept = np.ones(n, bool)
    kept[-1] = False
    return {
        "AMPLIFIER_NAME": name,
        "INPUT_EXP_ID_PAIRS": np.arange(2 * n).reshape(n, 2) + 2026010100001,
        "INPUT_EXP_PAIR_MJD_START": 61000.0 + np.arange(n) / 1440,
        "EXP_ID_MASK": kept,
        "RAW_EXP_TIMES": np.linspace(0.1, 10, n),
        "RAW_MEANS": means,
        "RAW_VARS": means / 1.5,
        "GAIN": 1.5,
        "GAIN_ERR": 0.01,
        "NOISE": 6.5,
        "NOISE_ERR": 0.1,
        "PTC_FIT_PARS": [-2e-6, 1.5, 42.25],
        "PTC_FIT_PARS_ERROR": [1e-8, 0.01, 0.5],
        "PTC_TURNOFF": float(means[-2]),
        "COVARIANCES": rng.normal(size=(n, s, s)),
        "NPIXEL_COVARIANCES": 200000,
        "CPC_FLAGS": "",
        "CPC_BAD": False,
        "CPC_NPIX": np.full(n, 2e5),
        "CPC_COV_NPAIRS": np.full(n * s * s, 1e5),
    }


def test_ptc_table_has_every_ip_isr_column(tmp_path):
    rng = np.random.default_rng(3)
    n, s, f = 6, 4, 8
    amps = [_ptc_amp(a, n, s, rng) for a in ("C10", "C11", "C12")]
    amps[1]["CPC_BAD"] = True
    table = ptc_table(amps, n_pairs=n, cov_side=s, fit_side=f, bad_amps=["C11"], metadata=_identity("PTC"))
    check_ptc_table(table)
    assert table.colnames == [*PTC_COLUMNS, "CPC_FLAGS", "CPC_BAD", "CPC_NPIX", "CPC_COV_NPAIRS"]
    shapes = {"": (), "N": (n,), "N2": (n, 2), "P": (3,), "FF": (f * f,), "NSS": (n * s * s,),
              "NFF": (n * f * f,), "B": (1,)}
    kinds = {"str": "U", "int": "i", "float": "f", "bool": "b"}
    for name, (kind, spec) in PTC_COLUMNS.items():
        col = np.asarray(table[name])
        assert col.dtype.kind == kinds[kind] and col.shape == (3, *shapes[spec]), (name, col.dtype, col.shape)
        if kind == "int":
            assert col.dtype == np.int64, name
        if kind == "float":
            assert col.dtype == np.float64, name
    # What was not given is NaN (float), False (bool); the fixed values are ip_isr's.
    assert np.all(np.isnan(table["HIST_VARS"])) and np.all(np.isnan(table["COVARIANCES_MODEL"]))
    assert not np.any(table["EXP_ID_ROLLOFF_MASK"])
    assert list(table["PTC_FIT_TYPE"]) == ["EXPAPPROXIMATION"] * 3
    assert list(table["COV_MATRIX_SIDE"]) == [s] * 3
    assert list(table["COV_MATRIX_SIDE_FULL_COV_FIT"]) == [f] * 3
    assert [list(b) for b in table["BAD_AMPS"]] == [["C11"]] * 3
    assert table.meta["PTC_FIT_TYPE"] == "EXPAPPROXIMATION" and table.meta["PTC_VERSION"] == 2.6
    assert table.meta["OBSTYPE"] == "PTC" and table.meta["FILTER"] == ""
    assert table.meta["CALIBCLS"] == PTC_CALIBCLS

    path = tmp_path / "ptc.fits"
    write_calib_table(table, path)
    with fits.open(path) as hdul:
        h = hdul[1].header
        forms = {h[f"TTYPE{i}"]: h[f"TFORM{i}"] for i in range(1, h["TFIELDS"] + 1)}
        assert h["PTC_VERSION"] == 2.6 and h["PTC_SCHEMA"] == PTC_SCHEMA
    assert (forms["INPUT_EXP_ID_PAIRS"], forms["EXP_ID_MASK"], forms["RAW_MEANS"], forms["GAIN"]) == (
        f"{2 * n}K", f"{n}L", f"{n}D", "D")
    assert (forms["COVARIANCES"], forms["A_MATRIX"], forms["BAD_AMPS"], forms["NPIXEL_COVARIANCES"]) == (
        f"{n * s * s}D", f"{f * f}D", "3A", "K")
    back = read_ptc(path)
    check_ptc_table(back)
    assert back.colnames == table.colnames
    for name in table.colnames:
        a, b = np.asarray(table[name]), np.asarray(back[name])
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            assert a.tolist() == b.tolist(), name
    # cp_combined's view of it.
    view = ptc_amp_results(back)
    assert list(view["amplifier"]) == ["C10", "C11", "C12"] and list(view["bad"]) == [False, True, False]
    assert view["a00"][0] == -2e-6 and view["n00"][0] == 42.25 and view["noise_fit"][0] == 6.5
    assert view["covariances"].shape == (3, n, s, s) and view["cov_npairs"].shape == (3, n, s, s)
    np.testing.assert_array_equal(view["covariances"][0], amps[0]["COVARIANCES"])
    np.testing.assert_array_equal(view["exposure1"][0], amps[0]["INPUT_EXP_ID_PAIRS"][:, 0])
    assert str(view["gain"].unit) == "electron / adu"


def test_ptc_table_errors():
    rng = np.random.default_rng(4)
    amp = _ptc_amp("C10", 5, 3, rng)
    kw = {"cov_side": 3, "fit_side": 8, "bad_amps": [], "metadata": _identity("PTC")}
    message = r"INPUT_EXP_ID_PAIRS: amplifier 0 has 10 values, expected shape \(4, 2\)"
    with pytest.raises(ValueError, match=message):
        ptc_table([amp], n_pairs=4, **kw)
    with pytest.raises(ValueError, match="neither ip_isr's nor CPC_ extras"):
        ptc_table([{**amp, "gain": 1.0}], n_pairs=5, **kw)
    table = ptc_table([amp], n_pairs=5, **kw)
    del table["NOISE_MATRIX"]
    with pytest.raises(ValueError, match=r"missing columns \['NOISE_MATRIX'\]"):
        check_ptc_table(table)
