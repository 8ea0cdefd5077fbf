"""The ISR-intermediate formatter (`ProcImageFormatter`): exact round trips,
row-block reads, components, and clear errors."""

from __future__ import annotations

import math

import astropy.io.fits as fits
import astropy.units as u
import numpy as np
import pytest
from lsst.cpcombined.algorithms.masks import BIT, from_mask
from lsst.cpcombined.repo.formatters import PROC_FORMAT, read_proc_image, write_proc_image
from lsst.cpcombined.repo.products import ButlerBlockSource, from_masked_image, read_header, to_masked_image
from lsst.daf.butler import DatasetType
from lsst.images import Box, Mask, MaskPlane, MaskSchema


def _product(ny: int = 40, nx: int = 30, seed: int = 3):
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 5.0, (ny, nx)).astype(np.float32)
    variance = rng.uniform(20.0, 30.0, (ny, nx)).astype(np.float32)
    mask = rng.integers(0, 256, (ny, nx), dtype=np.uint8)
    metadata = {"EXPOSURE": 2026112500001, "EXPTIME": 30.0, "OBSID": "AT_O_20261125_000001",
                "ISR_C10_NOISE": math.nan, "FLAG": True, "NOTHING": None}
    return image, variance, mask, to_masked_image(image, variance, mask, unit=u.electron, metadata=metadata)


def test_round_trip_is_exact(tmp_path):
    image, variance, mask, mi = _product()
    path = tmp_path / "proc.fits"
    write_proc_image(mi, path)
    back = read_proc_image(path)
    im2, var2, mask2 = from_masked_image(back)
    np.testing.assert_array_equal(im2, image)
    np.testing.assert_array_equal(var2, variance)
    np.testing.assert_array_equal(mask2, mask)
    assert back.image.unit == u.electron and back.variance.unit == u.electron**2
    md = dict(back.metadata)
    assert md["EXPOSURE"] == 2026112500001 and md["OBSID"] == "AT_O_20261125_000001"
    assert math.isnan(md["ISR_C10_NOISE"]) and md["FLAG"] is True and md["NOTHING"] is None
    # A plain FITS file: the planes are readable by any FITS tool.
    with fits.open(path) as hdul:
        assert hdul[0].header["CPFORMAT"] == PROC_FORMAT
        assert [h.name for h in hdul[1:4]] == ["IMAGE", "MASK", "VARIANCE"]
        assert hdul["MASK"].header["MP_SAT"] == int(math.log2(BIT["SAT"]))
        np.testing.assert_array_equal(hdul["IMAGE"].data, image)


def test_row_block_and_components(tmp_path):
    image, variance, mask, mi = _product()
    path = tmp_path / "proc.fits"
    write_proc_image(mi, path)
    block = read_proc_image(path, Box.factory[10:25, 5:20])
    np.testing.assert_array_equal(block.image.array, image[10:25, 5:20])
    np.testing.assert_array_equal(from_mask(block.mask), mask[10:25, 5:20])
    np.testing.assert_array_equal(block.variance.array, variance[10:25, 5:20])
    assert block.bbox == Box.factory[10:25, 5:20]
    assert read_proc_image(path, component="bbox") == Box.factory[0:40, 0:30]
    assert read_proc_image(path, component="unit") == u.electron
    np.testing.assert_array_equal(read_proc_image(path, component="variance").array, variance)
    with pytest.raises(ValueError, match="not inside"):
        read_proc_image(path, Box.factory[30:50, 0:30])


def test_foreign_mask_layout_and_bad_files(tmp_path):
    image, variance, _, _ = _product()
    # A mask whose planes are ours in another order is translated by name.
    schema = MaskSchema([MaskPlane("CR", "cosmic ray"), MaskPlane("BAD", "bad")], dtype=np.uint8)
    foreign = Mask(0, schema=schema, bbox=Box.factory[0:40, 0:30])
    foreign.set("CR", image > 105)
    mi = to_masked_image(image, variance, np.zeros(image.shape, np.uint8), unit=None)
    mi = type(mi)(mi.image, mask=foreign, variance=mi.variance)
    write_proc_image(mi, tmp_path / "a.fits")
    back = read_proc_image(tmp_path / "a.fits")
    np.testing.assert_array_equal(from_mask(back.mask), np.where(image > 105, BIT["CR"], 0))
    assert back.image.unit is None
    # Planes cp_combined does not know are refused, not dropped.
    strange = Mask(0, schema=MaskSchema([MaskPlane("STREAK", "?")], dtype=np.uint8), bbox=Box.factory[0:40, 0:30])
    with pytest.raises(ValueError, match="STREAK"):
        write_proc_image(type(mi)(mi.image, mask=strange, variance=mi.variance), tmp_path / "b.fits")
    # A FITS file of another kind is named as such.
    fits.PrimaryHDU(image).writeto(tmp_path / "other.fits")
    with pytest.raises(ValueError, match="not a cp_combined masked-image file"):
        read_proc_image(tmp_path / "other.fits")


def test_butler_uses_it_for_isr_outputs(repo):
    """cp*Proc datasets go through ProcImageFormatter; block reads by the
    combine engine's source and the header helper work through it."""
    image, variance, mask, mi = _product()
    butler = repo
    dims = butler.dimensions.conform(["instrument", "detector"])
    dt = DatasetType("cpBiasProc", dims, "MaskedImageV2")
    butler.registry.registerDatasetType(dt)
    butler.collections.register("test/run")
    ref = butler.put(mi, dt, instrument="LATISS", detector=0, run="test/run")
    assert butler.getURI(ref).getExtension() == ".fits"
    with fits.open(butler.getURI(ref).ospath) as hdul:
        assert hdul[0].header["CPFORMAT"] == PROC_FORMAT
        assert any(k.startswith("LSST BUTLER") for k in hdul[0].header)  # provenance cards
    handle = butler.getDeferred(ref)
    md, shape = read_header(handle)
    assert shape == (40, 30) and md["EXPOSURE"] == 2026112500001
    block = ButlerBlockSource(handle, shape, with_variance=True).read_block(8, 16)
    np.testing.assert_array_equal(block.image, image[8:16])
    np.testing.assert_array_equal(block.mask, mask[8:16])
    np.testing.assert_array_equal(block.variance, variance[8:16])
    full = butler.get(ref)
    np.testing.assert_array_equal(full.image.array, image)
    parts = butler.get(ref.makeComponentRef("components"), parameters={"components": ["bbox", "unit"]})
    assert parts == {"bbox": Box.factory[0:40, 0:30], "unit": u.electron}
