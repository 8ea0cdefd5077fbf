"""Butler formatters: the ISR-intermediate formatter (`ProcImageFormatter`:
exact round trips, row-block reads, components, clear errors), and the
formatters of the products shared with the Science Pipelines (the layouts
they write, the obs_base formatter names the datastore records, and the
hand-over of afw/ip_isr objects to those obs_base formatters)."""

from __future__ import annotations

import math

import astropy.io.fits as fits
import astropy.units as u
import numpy as np
import pytest
from lsst.cpcombined.algorithms.masks import BIT, from_mask
from lsst.cpcombined.algorithms.quantize import row_sigma
from lsst.cpcombined.repo.formatters import (
    PROC_FORMAT,
    PROC_QUANTIZE_LEVEL,
    read_proc_image,
    write_proc_image,
)
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
    strange = Mask(
        0, schema=MaskSchema([MaskPlane("STREAK", "?")], dtype=np.uint8), bbox=Box.factory[0:40, 0:30]
    )
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
    dt = DatasetType("cpcBiasProc", dims, "MaskedImageV2")
    butler.registry.registerDatasetType(dt)
    butler.collections.register("test/run")
    ref = butler.put(mi, dt, instrument="LATISS", detector=0, run="test/run")
    assert butler.getURI(ref).getExtension() == ".fits"
    with fits.open(butler.getURI(ref).ospath) as hdul:
        assert hdul[0].header["CPFORMAT"] == PROC_FORMAT
        assert any(k.startswith("LSST BUTLER") for k in hdul[0].header)  # provenance cards
        assert hdul[0].header["CPQLEVEL"] == PROC_QUANTIZE_LEVEL
    handle = butler.getDeferred(ref)
    md, shape = read_header(handle)
    assert shape == (40, 30) and md["EXPOSURE"] == 2026112500001
    # Through the butler, image and variance are quantised: each pixel within
    # half a step (the row's noise / PROC_QUANTIZE_LEVEL) of its value; the
    # mask is exact.
    half_step = (row_sigma(image, variance) / PROC_QUANTIZE_LEVEL / 2 * 1.0001)[:, np.newaxis]
    block = ButlerBlockSource(handle, shape, with_variance=True).read_block(8, 16)
    assert (np.abs(block.image - image[8:16]) <= half_step[8:16]).all()
    np.testing.assert_array_equal(block.mask, mask[8:16])
    assert (np.abs(block.variance - variance[8:16]) <= half_step[8:16]).all()
    full = butler.get(ref)
    assert (np.abs(full.image.array - image) <= half_step).all()
    np.testing.assert_array_equal(full.image.array[8:16], block.image)
    parts = butler.get(ref.makeComponentRef("components"), parameters={"components": ["bbox", "unit"]})
    assert parts == {"bbox": Box.factory[0:40, 0:30], "unit": u.electron}


# -- products shared with the Science Pipelines ------------------------------------------


EXPOSURE_FORMATTER = "lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter"
GENERIC_FORMATTER = "lsst.obs.base.formatters.fitsGeneric.FitsGenericFormatter"


def _defects():
    from astropy.table import Table
    from lsst.cpcombined.repo.calib_tables import DEFECTS_CALIBCLS, calib_identity, defects_table

    boxes = Table({"x0": [0, 5], "y0": [0, 7], "width": [40, 1], "height": [5, 30]})
    md = calib_identity(
        "defects",
        schema="",
        version=2.0,
        calibcls=DEFECTS_CALIBCLS,
        instrument="LATISS",
        detector=0,
        detector_name="RXX_S00",
        detector_serial="ITL-3800C-068",
    )
    return defects_table(boxes, md)


def test_products_record_obs_base_formatters(repo):
    """bias/dark/flat (ExposureF), defects (Defects) and ptc
    (PhotonTransferCurveDataset) are written by cp_combined's formatters,
    which the datastore records under obs_base's names."""
    from lsst.cpcombined.repo.calib_tables import read_defects
    from lsst.cpcombined.repo.exposure_fits import read_exposure_fits
    from lsst.cpcombined.repo.formatters import CalibExposureFormatter, DefectsFormatter, PtcFormatter

    assert CalibExposureFormatter.name() == EXPOSURE_FORMATTER
    assert DefectsFormatter.name() == PtcFormatter.name() == GENERIC_FORMATTER
    butler = repo
    butler.collections.register("test/run")
    butler.collections.register("test/bad")
    butler.collections.register("test/bad2")
    image, variance, mask, mi = _product()
    for name, sc in (("bias", "ExposureF"), ("defects", "Defects")):
        butler.registry.registerDatasetType(
            DatasetType(name, ("instrument", "detector"), sc, isCalibration=True, universe=butler.dimensions)
        )
    ref = butler.put(mi, "bias", instrument="LATISS", detector=0, run="test/run")
    assert butler._datastore.getStoredItemsInfo(ref)[0].formatter == EXPOSURE_FORMATTER
    back = read_exposure_fits(butler.getURI(ref).ospath)
    np.testing.assert_array_equal(back.image.array, image)
    np.testing.assert_array_equal(back.variance.array, variance)
    np.testing.assert_array_equal(from_mask(back.mask), mask)
    assert back.metadata["EXPOSURE"] == 2026112500001 and math.isnan(back.metadata["ISR_C10_NOISE"])
    with fits.open(butler.getURI(ref).ospath) as hdul:
        assert hdul[0].header["LSST BUTLER DATASETTYPE"] == "bias"  # provenance, as obs_base adds
        assert hdul[0].header["LSST BUTLER RUN"] == "test/run"
    ref = butler.put(_defects(), "defects", instrument="LATISS", detector=0, run="test/run")
    assert butler._datastore.getStoredItemsInfo(ref)[0].formatter == GENERIC_FORMATTER
    table = read_defects(butler.getURI(ref).ospath)
    assert list(table["x0"]) == [0, 5] and table.meta["LSST BUTLER DATASETTYPE"] == "defects"
    # A bare table of boxes gets ip_isr's keys from the data ID; other tables are refused.
    from astropy.table import Table

    bare = Table({"x0": [1], "y0": [2], "width": [3], "height": [4]})
    ref = butler.put(bare, "defects", instrument="LATISS", detector=0, run="test/bad")
    with fits.open(butler.getURI(ref).ospath) as hdul:
        h = hdul[1].header
        assert (h["OBSTYPE"], h["defects_VERSION"], h["CALIBCLS"], h["INSTRUME"], h["DETECTOR"]) == (
            "defects",
            2.0,
            "lsst.ip.isr.defects.Defects",
            "LATISS",
            0,
        )
        assert h["TFORM1"] == "K"
    with pytest.raises(RuntimeError) as err:
        butler.put(table[["x0", "y0"]], "defects", instrument="LATISS", detector=0, run="test/bad2")
    assert "not an ip_isr defects table" in str(err.value.__cause__)


def _stand_in(monkeypatch, module_name: str, class_name: str, calls: list):
    """Insert a stand-in module for an obs_base formatter module: its
    formatter records what it was constructed with and given."""
    import sys
    import types

    from lsst.daf.butler import FormatterV2

    class StandIn(FormatterV2):
        default_extension = ".fits"
        supported_extensions = frozenset({".fits"})
        supported_write_parameters = frozenset({"recipe"})

        @classmethod
        def validate_write_recipes(cls, recipes):
            return recipes

        def write_local_file(self, in_memory_dataset, uri):
            calls.append(
                {
                    "object": in_memory_dataset,
                    "write_parameters": self.write_parameters,
                    "write_recipes": self.write_recipes,
                    "ref": self.dataset_ref,
                }
            )
            uri.write(b"written by the stand-in")

    module = types.ModuleType(module_name)
    setattr(module, class_name, StandIn)
    monkeypatch.setitem(sys.modules, module_name, module)
    return StandIn


def _formatter(cls, butler, tmp_path, dataset_type, storage_class, **kwargs):
    from lsst.daf.butler import DatasetRef, FileDescriptor, Location, StorageClassFactory

    dt = DatasetType(
        dataset_type,
        ("instrument", "detector"),
        storage_class,
        isCalibration=True,
        universe=butler.dimensions,
    )
    data_id = butler.registry.expandDataId(instrument="LATISS", detector=0)
    ref = DatasetRef(dt, data_id, run="test/run")
    location = Location(str(tmp_path), f"{dataset_type}.fits")
    sc = StorageClassFactory().getStorageClass(storage_class)
    return cls(FileDescriptor(location, sc), ref=ref, **kwargs), location


class _ForeignObject:
    """Stands for an afw Exposure or an ip_isr calibration."""


def test_foreign_objects_are_handed_to_obs_base(repo, tmp_path, monkeypatch):
    """An object that is not cp_combined's goes, unchanged, to the obs_base
    formatter of the layout, constructed with the same arguments (write
    parameters and recipes included)."""
    from lsst.cpcombined.repo.formatters import CalibExposureFormatter, DefectsFormatter, PtcFormatter

    calls: list = []
    _stand_in(monkeypatch, "lsst.obs.base.formatters.fitsExposure", "FitsExposureFormatter", calls)
    _stand_in(monkeypatch, "lsst.obs.base.formatters.fitsGeneric", "FitsGenericFormatter", calls)
    recipes = {
        "default": {
            "image": {"algorithm": "GZIP_2"},
            "mask": {"algorithm": "GZIP_2"},
            "variance": {"algorithm": "GZIP_2"},
        }
    }
    formatter, location = _formatter(
        CalibExposureFormatter,
        repo,
        tmp_path,
        "bias",
        "ExposureF",
        write_recipes=recipes,
        write_parameters={"recipe": "default"},
    )
    foreign = _ForeignObject()
    assert not formatter.can_accept(foreign) and formatter.can_accept(_product()[3])
    formatter.write(foreign)
    assert len(calls) == 1 and calls[0]["object"] is foreign
    assert calls[0]["write_recipes"] == recipes and calls[0]["write_parameters"] == {"recipe": "default"}
    assert calls[0]["ref"] == formatter.dataset_ref
    with open(location.path, "rb") as f:
        assert f.read() == b"written by the stand-in"
    tables = ((DefectsFormatter, "defects", "Defects"), (PtcFormatter, "ptc", "PhotonTransferCurveDataset"))
    for cls, name, sc in tables:
        formatter, _ = _formatter(cls, repo, tmp_path, name, sc)
        formatter.write(foreign)
        assert calls[-1]["object"] is foreign and calls[-1]["ref"].datasetType.name == name
    assert len(calls) == 3
    # cp_combined's own objects are written by cp_combined, not handed on.
    formatter, location = _formatter(DefectsFormatter, repo, tmp_path, "defects", "Defects")
    formatter.write(_defects())
    assert len(calls) == 3
    with fits.open(location.path) as hdul:
        assert hdul[1].header["OBSTYPE"] == "defects"


def test_calibration_compression_recipe(repo, tmp_path):
    """The ``default`` recipe when none is named (as obs_base), the
    ``recipe`` write parameter otherwise: lossless GZIP (pixels bit-exact,
    astropy reads the same), ``noCompression`` plain HDUs, RICE_1 allowed
    for the mask only; lossy recipes are refused."""
    from lsst.cpcombined.repo.exposure_fits import read_exposure_fits
    from lsst.cpcombined.repo.formatters import CalibExposureFormatter

    image, variance, mask, mi = _product()
    lossless = {
        "image": {"algorithm": "GZIP_2"},
        "mask": {"algorithm": "GZIP_2"},
        "variance": {"algorithm": "GZIP_2"},
    }
    rice = {"algorithm": "RICE_1", "quantization": {"level": 16.0}}
    lossy = {"image": rice, "mask": {"algorithm": "GZIP_2"}, "variance": rice}
    rice_mask = {**lossless, "mask": {"algorithm": "RICE_1"}}
    rice_image = {**lossless, "image": {"algorithm": "RICE_1"}}
    recipes = {
        "lossless": lossless,
        "lossy16": lossy,
        "default": lossless,
        "noCompression": None,
        "riceMask": rice_mask,
        "riceImage": rice_image,
    }
    for recipe, expected in (
        (None, ["GZIP_2"] * 3),
        ("noCompression", [None] * 3),
        ("riceMask", ["GZIP_2", "RICE_1", "GZIP_2"]),
    ):
        formatter, location = _formatter(
            CalibExposureFormatter,
            repo,
            tmp_path,
            "bias",
            "ExposureF",
            write_recipes=recipes,
            write_parameters={} if recipe is None else {"recipe": recipe},
        )
        formatter.write(mi)
        with fits.open(location.path, disable_image_compression=True) as hdul:
            assert [h.header.get("ZCMPTYPE") for h in hdul[1:4]] == expected
            assert [h.header.get("ZQUANTIZ") for h in (hdul[1], hdul[3])] == [
                None if e is None else "NONE" for e in expected[::2]
            ]
        with fits.open(location.path) as hdul:  # astropy decodes the tiles alike
            np.testing.assert_array_equal(hdul[1].data, image)
            np.testing.assert_array_equal(hdul[3].data, variance)
        back = read_exposure_fits(location.path)
        np.testing.assert_array_equal(back.image.array, image)
        np.testing.assert_array_equal(back.variance.array, variance)
        np.testing.assert_array_equal(from_mask(back.mask), mask)
    formatter, _ = _formatter(
        CalibExposureFormatter,
        repo,
        tmp_path,
        "bias",
        "ExposureF",
        write_recipes=recipes,
        write_parameters={"recipe": "riceImage"},
    )
    with pytest.raises(ValueError, match="image plane is not lossless"):
        formatter.write(mi)
    formatter, _ = _formatter(
        CalibExposureFormatter,
        repo,
        tmp_path,
        "bias",
        "ExposureF",
        write_recipes=recipes,
        write_parameters={"recipe": "lossy16"},
    )
    with pytest.raises(ValueError, match="lossless only"):
        formatter.write(mi)


def test_calibrations_read_through_files_and_cached(repo):
    """Tasks get calibrations as in-memory objects read from their files
    (bias/dark/flat as MaskedImage, defects as a Table), the cached ones
    once per process per dataset id; other deferred inputs stay handles."""
    from lsst.cpcombined.repo import products
    from lsst.images import MaskedImage
    from lsst.pipe.base.connections import DeferredDatasetRef

    butler = repo
    butler.collections.register("test/run")
    for name, sc in (("bias", "ExposureF"), ("defects", "Defects"), ("cpcIsrProc", "MaskedImageV2")):
        butler.registry.registerDatasetType(
            DatasetType(
                name,
                ("instrument", "detector"),
                sc,
                isCalibration=name != "cpcIsrProc",
                universe=butler.dimensions,
            )
        )
    image, _, mask, mi = _product()
    bias = butler.put(mi, "bias", instrument="LATISS", detector=0, run="test/run")
    defects = butler.put(_defects(), "defects", instrument="LATISS", detector=0, run="test/run")
    proc = butler.put(mi, "cpcIsrProc", instrument="LATISS", detector=0, run="test/run")

    class QuantumContext:
        def __init__(self):
            self.gets = 0

        def get(self, ref):
            self.gets += 1
            return (
                butler.getDeferred(ref.datasetRef) if isinstance(ref, DeferredDatasetRef) else butler.get(ref)
            )

    refs = [
        ("bias", DeferredDatasetRef(bias)),
        ("defects", DeferredDatasetRef(defects)),
        ("ccdExposure", DeferredDatasetRef(proc)),
    ]
    products._CALIB_CACHE.clear()
    qc = QuantumContext()
    first = products.get_inputs_caching_calibrations(qc, refs)
    assert isinstance(first["bias"], MaskedImage) and not hasattr(first["ccdExposure"], "image")
    np.testing.assert_array_equal(first["bias"].image.array, image)
    np.testing.assert_array_equal(from_mask(first["bias"].mask), mask)
    assert list(first["defects"]["x0"]) == [0, 5]
    second = products.get_inputs_caching_calibrations(qc, refs)
    assert second["bias"] is first["bias"]  # cached by dataset id: the file is not read again
    assert second["defects"] is not first["defects"]  # not in `cached`: read again
    # Every input is still got from the quantum context (a deferred handle for
    # the cached bias): that records it as used, in the outputs' provenance.
    assert qc.gets == 6
    products._CALIB_CACHE.clear()
