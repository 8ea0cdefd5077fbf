"""Butler formatters of cp_combined (besides the raw formatter).

Products shared with the Science Pipelines are written in their layouts by
formatters that record, in the datastore, the Science Pipelines formatter
that reads the layout (`name`), so ``butler.get`` with the Science Pipelines
set up reads them as cp_pipe's:

* `CalibExposureFormatter` (``bias``, ``dark``, ``flat``): an
  `lsst.images.MaskedImage` as an afw Exposure FITS file
  (`lsst.cpcombined.repo.exposure_fits`), recorded as obs_base's
  ``FitsExposureFormatter``;
* `DefectsFormatter` and `PtcFormatter` (``defects``, ``ptc``): an
  `astropy.table.Table` in ip_isr's layout
  (`lsst.cpcombined.repo.calib_tables`), recorded as obs_base's
  ``FitsGenericFormatter``.

Given an object that is not the package's (an afw ``Exposure`` or an ip_isr
calibration: a Science Pipelines task writing the same dataset type while
cp_combined's butler configuration is active) they hand it, unchanged, to
that Science Pipelines formatter, constructed with the same arguments.

The ISR intermediates (``cpc*Proc``) use `ProcImageFormatter`, a compact
(tile-compressed, quantised) three-HDU masked image read in row blocks by
the combine engine.
"""

from __future__ import annotations

__all__ = (
    "CalibExposureFormatter",
    "CalibTableFormatter",
    "DefectsFormatter",
    "PROC_FORMAT",
    "PROC_FORMATS_READ",
    "PROC_QUANTIZE_LEVEL",
    "ProcImageFormatter",
    "PtcFormatter",
    "read_proc_components",
    "read_proc_image",
    "write_proc_image",
)

import functools
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import astropy.io.fits as fits
import astropy.units as u
import numpy as np
from astropy.table import Table

from lsst.daf.butler import DatasetProvenance, FormatterV2
from lsst.images import Box, Image, Mask, MaskedImage
from lsst.resources import ResourcePath
from lsst.utils import doImportType

from ..algorithms.masks import BIT, MASK_SCHEMA, PLANES, from_mask
from ..algorithms.quantize import row_sigma
from .calib_tables import (
    DEFECT_COLUMNS,
    DEFECTS_CALIBCLS,
    check_ptc_table,
    defects_table,
    read_defects,
    read_ptc,
    write_calib_table,
)
from .exposure_fits import plane_compressions, read_exposure_fits, write_exposure_fits
from .tiled_fits import FitsIndex, compressed_image_hdu, extension_hdu, primary_hdu, write_hdus

#: Value of the ``CPFORMAT`` primary-header card of `ProcImageFormatter` files.
PROC_FORMAT = "cp_combined MaskedImage v2"
#: ``CPFORMAT`` values `read_proc_components` reads (v1: uncompressed planes).
PROC_FORMATS_READ = ("cp_combined MaskedImage v1", PROC_FORMAT)

#: Extensions the obs_base FITS formatters accept.
_FITS_EXTENSIONS = frozenset({".fits", ".fits.gz", ".fits.fz", ".fz", ".fit"})


def _provenance_cards(formatter: FormatterV2, provenance: DatasetProvenance | None) -> dict[str, Any]:
    """``LSST BUTLER ...`` cards of a put (as obs_base's formatters add)."""
    provenance = provenance if provenance is not None else DatasetProvenance()
    return provenance.to_flat_dict(
        formatter.dataset_ref, prefix="LSST BUTLER", sep=" ", simple_types=True, max_inputs=3_000
    )


# ---------------------------------------------------------------------------
# Products in the Science Pipelines' layouts
# ---------------------------------------------------------------------------


class _UpstreamLayoutFormatter(FormatterV2):
    """A formatter writing the package's objects in a Science Pipelines
    layout and delegating other objects to the Science Pipelines formatter
    named by `upstream`, which is also what `name` returns (and so what the
    datastore records)."""

    #: Full name of the Science Pipelines formatter that reads the layout.
    upstream: ClassVar[str]
    default_extension: ClassVar[str] = ".fits"
    supported_extensions: ClassVar[frozenset[str]] = _FITS_EXTENSIONS
    can_read_from_local_file: ClassVar[bool] = True

    def __init__(self, file_descriptor: Any, *, ref: Any, **kwargs: Any) -> None:
        self._init_args = (file_descriptor, ref, dict(kwargs))
        self._butler_provenance: DatasetProvenance | None = None
        super().__init__(file_descriptor, ref=ref, **kwargs)

    @classmethod
    def name(cls) -> str:
        """The Science Pipelines formatter that reads this layout (recorded
        by the datastore)."""
        return cls.upstream

    def is_ours(self, in_memory_dataset: Any) -> bool:
        """Whether the object is one the package writes itself."""
        raise NotImplementedError

    def can_accept(self, in_memory_dataset: Any) -> bool:
        # Our objects need no conversion; anything else goes through the
        # storage class as it would for the Science Pipelines formatter.
        return self.is_ours(in_memory_dataset)

    def upstream_formatter(self) -> FormatterV2:
        """The Science Pipelines formatter, constructed with this
        formatter's arguments (imported on first use)."""
        file_descriptor, ref, kwargs = self._init_args
        cls = doImportType(self.upstream)
        return cls(file_descriptor, ref=ref, **kwargs)

    def write(self, in_memory_dataset: Any, /, **kwargs: Any) -> None:
        if not self.is_ours(in_memory_dataset):
            self.upstream_formatter().write(in_memory_dataset, **kwargs)
            return
        super().write(in_memory_dataset, **kwargs)

    def add_provenance(
        self, in_memory_dataset: Any, /, *, provenance: DatasetProvenance | None = None
    ) -> Any:
        self._butler_provenance = provenance
        return in_memory_dataset


class CalibExposureFormatter(_UpstreamLayoutFormatter):
    """``bias``, ``dark`` and ``flat``: an `lsst.images.MaskedImage` written
    as an archive-free afw Exposure FITS file
    (`~lsst.cpcombined.repo.exposure_fits.write_exposure_fits`), butler
    provenance cards in the primary header.

    Planes are compressed as the recipe named by the ``recipe`` write
    parameter says, or the ``default`` recipe when none is named, as
    obs_base does (``write_recipes`` of this class; each plane's
    ``algorithm`` is lossless: ``GZIP_2``/``GZIP_1``, or ``RICE_1`` for the
    mask; a plane without options, or no recipe at all, is not
    compressed).  Recipes are passed on unchanged when delegating.
    """

    upstream: ClassVar[str] = "lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter"
    supported_write_parameters: ClassVar[frozenset[str]] = frozenset({"recipe"})

    def is_ours(self, in_memory_dataset: Any) -> bool:
        return isinstance(in_memory_dataset, MaskedImage)

    @classmethod
    def validate_write_recipes(cls, recipes: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        if not recipes:
            return recipes
        for name, recipe in recipes.items():
            if recipe is not None and not isinstance(recipe, Mapping):
                raise RuntimeError(f"write recipe {name!r} must map image/mask/variance to options or null")
        return recipes

    def _compression(self) -> dict[str, str | None]:
        name = (self.write_parameters or {}).get("recipe")
        recipes = self.write_recipes or {}
        if name is None:
            name = "default"
            if name not in recipes:
                return plane_compressions(None)
        if name not in recipes:
            raise ValueError(f"unknown write recipe {name!r} (known: {sorted(recipes)})")
        recipe = recipes[name] or {}
        algorithms: dict[str, str | None] = {}
        for plane in ("image", "mask", "variance"):
            options = recipe.get(plane)
            if options is None:
                algorithms[plane] = None
                continue
            if options.get("quantization"):
                raise ValueError(f"write recipe {name!r} quantizes {plane}: cp_combined writes lossless only")
            algorithms[plane] = options.get("algorithm", "GZIP_2")
        try:
            return plane_compressions(algorithms)
        except ValueError as err:
            raise ValueError(f"write recipe {name!r}: {err}") from None

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        write_exposure_fits(
            in_memory_dataset,
            uri.ospath,
            metadata=_provenance_cards(self, self._butler_provenance),
            compression=self._compression(),
        )

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        mi = read_exposure_fits(path)
        if component is None:
            return mi
        if component in ("image", "variance"):
            return getattr(mi, component)
        if component == "mask":
            return mi.mask
        if component == "metadata":
            return dict(mi.metadata)
        if component == "bbox":
            return mi.bbox
        raise ValueError(f"component {component!r} is not read by {type(self).__name__}")


class CalibTableFormatter(_UpstreamLayoutFormatter):
    """An `astropy.table.Table` in an ip_isr calibration layout
    (`~lsst.cpcombined.repo.calib_tables.write_calib_table`), butler
    provenance cards in the table header."""

    upstream: ClassVar[str] = "lsst.obs.base.formatters.fitsGeneric.FitsGenericFormatter"

    def is_ours(self, in_memory_dataset: Any) -> bool:
        return isinstance(in_memory_dataset, Table)

    def conform(self, table: Table) -> Table:
        """The table to write in the layout; raise `ValueError` if it
        cannot be."""
        return table

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        table = self.conform(in_memory_dataset)
        write_calib_table(table, uri.ospath, _provenance_cards(self, self._butler_provenance))


class DefectsFormatter(CalibTableFormatter):
    """``defects``: ip_isr's defects table (columns ``x0, y0, width,
    height``; see `lsst.cpcombined.repo.calib_tables`).

    A table of boxes without ip_isr's metadata (e.g. written by hand) gets
    the keys ip_isr needs (``OBSTYPE``, schema and version, ``CALIBCLS``,
    ``INSTRUME``, ``DETECTOR``, from the data ID); a table with other
    columns is refused.
    """

    def conform(self, table: Table) -> Table:
        if set(table.colnames) != set(DEFECT_COLUMNS):
            raise ValueError(
                f"not an ip_isr defects table: columns {table.colnames}, expected {list(DEFECT_COLUMNS)} "
                "(build it with lsst.cpcombined.repo.calib_tables.defects_table)"
            )
        if table.meta.get("OBSTYPE", "defects") != "defects":
            raise ValueError(f"not an ip_isr defects table: OBSTYPE is {table.meta['OBSTYPE']!r}")
        data_id = self.dataset_ref.dataId
        meta = {
            "OBSTYPE": "defects",
            "defects_SCHEMA": "",
            "defects_VERSION": 2.0,
            "CALIBCLS": DEFECTS_CALIBCLS,
            "INSTRUME": data_id.get("instrument"),
            "DETECTOR": data_id.get("detector"),
        }
        meta.update(table.meta)
        return defects_table(table, {k: v for k, v in meta.items() if v is not None})

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        return read_defects(path)


class PtcFormatter(CalibTableFormatter):
    """``ptc``: ip_isr's PTC table, version 2.6 (see
    `lsst.cpcombined.repo.calib_tables`); any other table is refused."""

    def conform(self, table: Table) -> Table:
        check_ptc_table(table)
        return table

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        return read_ptc(path)


# ---------------------------------------------------------------------------
# The ISR intermediates: a compact masked image read in row blocks
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _unit(text: str) -> u.UnitBase | None:
    return None if not text else u.Unit(text)


#: Bit number of each mask plane of `MASK_SCHEMA` (the ``MP_<plane>`` cards).
_PLANE_BITS: dict[str, int] = {name: i for i, (name, _) in enumerate(PLANES)}

#: Quantisation level of the image and variance planes `ProcImageFormatter`
#: writes: the step of each row is the row's per-pixel noise (square root
#: of the median of its variance) divided by this level.
PROC_QUANTIZE_LEVEL = 16.0


def _plane_hdu(array: np.ndarray, header: fits.Header, name: str, step: np.ndarray | None) -> bytes:
    """A float plane: quantised and tile-compressed with ``step``, or
    uncompressed (exact) when ``step`` is `None` or the plane holds an
    infinity (which quantisation cannot represent)."""
    array = np.asarray(array, dtype=np.float32)
    if step is not None:
        try:
            return compressed_image_hdu(array, header, name=name, quantize_step=step)
        except ValueError:
            if np.isfinite(array[~np.isnan(array)]).all():
                raise
    return extension_hdu(fits.ImageHDU(array, header=header, name=name))


def write_proc_image(
    mi: MaskedImage,
    path: str | os.PathLike,
    provenance: dict[str, Any] | None = None,
    *,
    quantize_level: float | None = None,
) -> None:
    """Write a masked image as a compact multi-extension FITS file.

    Layout (the classic masked-image layout; FITS tile compression, which
    CFITSIO, astropy and ds9 read): an empty primary HDU with ``CPFORMAT``,
    the bounding-box origin (``BBOX_Y0``/``BBOX_X0``), ``CPQLEVEL`` (the
    quantisation level, when quantised) and butler provenance cards;
    ``IMAGE`` (float32, ``BUNIT``); ``MASK`` (uint8, ``MP_<plane>`` = bit
    number); ``VARIANCE`` (float32); ``METADATA`` (the scalar metadata as
    UTF-8 JSON bytes, so types and NaNs round-trip exactly).

    The mask is always ``RICE_1`` tile-compressed, losslessly (tiles of one
    row).  With ``quantize_level`` = ``q``, the image and variance are
    ``RICE_1`` tile-compressed too, one row per tile, after quantisation
    with subtractive dithering (``SUBTRACTIVE_DITHER_2``,
    `lsst.cpcombined.algorithms.quantize`): the step of a row is
    ``sigma / q`` with ``sigma`` the square root of the row's median
    variance (the per-pixel noise), so each pixel's error is uniform within
    ``±sigma / (2 q)``, of rms ``sigma / (q sqrt(12))``, independent of the
    signal and of the other pixels; exact zeros and NaNs are kept exactly.
    Without ``quantize_level`` (the default) they are written uncompressed
    and round-trip exactly.

    Parameters
    ----------
    mi
        The masked image; its mask must use (a subset of) the planes of
        `lsst.cpcombined.algorithms.masks`.
    path
        Output file.
    provenance
        Extra primary-header cards (``HIERARCH`` keys allowed).
    quantize_level
        ``q`` above, or `None` for exact image and variance planes.

    Raises
    ------
    ValueError
        If the mask has planes cp_combined does not know.
    """
    unknown = set(mi.mask.schema.names) - set(BIT)
    if unknown:
        raise ValueError(f"mask planes {sorted(unknown)} are not cp_combined planes: cannot write {path}")
    mask_array = np.ascontiguousarray(from_mask(mi.mask), dtype=np.uint8)
    primary = fits.Header()
    primary["CPFORMAT"] = PROC_FORMAT
    primary["BBOX_Y0"] = int(mi.bbox.y.start)
    primary["BBOX_X0"] = int(mi.bbox.x.start)
    if quantize_level is not None:
        primary["CPQLEVEL"] = (float(quantize_level), "quantisation step = row noise / CPQLEVEL")
    for key, value in (provenance or {}).items():
        primary.set(key, value)
    image = np.asarray(mi.image.array, dtype=np.float32)
    variance = np.asarray(mi.variance.array, dtype=np.float32)
    step = None if quantize_level is None else row_sigma(image, variance) / float(quantize_level)
    image_header, variance_header, mask_header = fits.Header(), fits.Header(), fits.Header()
    unit = mi.image.unit
    if unit is not None:
        image_header["BUNIT"] = unit.to_string()
        variance_header["BUNIT"] = (unit**2).to_string()
    for name, bit in _PLANE_BITS.items():
        key = f"MP_{name}"
        mask_header[key if len(key) <= 8 else f"HIERARCH {key}"] = bit
    md = json.dumps(dict(mi.metadata), allow_nan=True).encode()
    write_hdus(
        path,
        [
            primary_hdu(primary),
            _plane_hdu(image, image_header, "IMAGE", step),
            compressed_image_hdu(mask_array, mask_header, name="MASK"),
            _plane_hdu(variance, variance_header, "VARIANCE", step),
            extension_hdu(fits.ImageHDU(np.frombuffer(md, dtype=np.uint8), name="METADATA")),
        ],
    )


def _mask_from_file(array: np.ndarray, header: fits.Header) -> np.ndarray:
    """Bits of a stored mask translated to `MASK_SCHEMA` by plane name."""
    stored = {key[3:]: int(header[key]) for key in header if key.startswith("MP_")}
    ours = _PLANE_BITS
    if stored == ours:
        return np.ascontiguousarray(array, dtype=np.uint8)
    unknown = set(stored) - set(ours)
    if unknown:
        raise ValueError(f"stored mask has planes {sorted(unknown)} that cp_combined does not know")
    out = np.zeros(array.shape, dtype=np.uint8)
    for name, bit in stored.items():
        out |= (((array >> bit) & 1) << ours[name]).astype(np.uint8)
    return out


#: Components `read_proc_components` can return.
PROC_COMPONENTS = ("bbox", "image", "mask", "variance", "unit", "metadata", "sky_projection")


def read_proc_components(
    path: str | os.PathLike, names: Iterable[str], bbox: Box | None = None
) -> dict[str, Any]:
    """Read components of a file written by `write_proc_image`.

    The file's layout is read once per process and file
    (`lsst.cpcombined.repo.tiled_fits.FitsIndex`); pixels are read with
    positioned reads of the requested rows only (their tiles, for
    compressed planes).  Files of earlier versions (``CPFORMAT`` in
    `PROC_FORMATS_READ`) are read alike.

    Parameters
    ----------
    path
        The file.
    names
        Components among `PROC_COMPONENTS` (``sky_projection`` is always
        `None`; ``bbox`` is the whole image's).
    bbox
        Region of the pixel components (image coordinates); only its rows
        are read from disk.

    Returns
    -------
    components
        ``{name: value}``.
    """
    names = list(names)
    unknown = set(names) - set(PROC_COMPONENTS)
    if unknown:
        raise ValueError(f"unknown components {sorted(unknown)} of a cp_combined masked image")
    try:
        index = FitsIndex.of(path)
    except ValueError as err:
        raise ValueError(f"{path} is not a cp_combined masked-image file ({err})") from None
    head = index.hdu(0).header
    if head.get("CPFORMAT") not in PROC_FORMATS_READ:
        raise ValueError(f"{path} is not a cp_combined masked-image file (CPFORMAT={head.get('CPFORMAT')!r})")
    image_hdu = index.hdu("IMAGE")
    ny, nx = image_hdu.shape
    full = Box.factory[head["BBOX_Y0"] : head["BBOX_Y0"] + ny, head["BBOX_X0"] : head["BBOX_X0"] + nx]
    unit = _unit(image_hdu.header.get("BUNIT", ""))
    region = full if bbox is None else bbox
    if {"image", "mask", "variance"} & set(names) and not full.contains(region):
        raise ValueError(f"requested bbox {region} is not inside the image {full}")

    def plane(name: str) -> np.ndarray:
        rows, columns = region.slice_within(full)
        return index.read_rows(name, rows.start or 0, rows.stop, columns)

    readers = {
        "bbox": lambda: full,
        "sky_projection": lambda: None,
        "unit": lambda: unit,
        "metadata": lambda: json.loads(index.read_bytes("METADATA").decode()),
        "image": lambda: Image(plane("IMAGE"), unit=unit, bbox=region),
        "variance": lambda: Image(plane("VARIANCE"), unit=None if unit is None else unit**2, bbox=region),
        "mask": lambda: Mask(
            _mask_from_file(plane("MASK"), index.hdu("MASK").header)[:, :, np.newaxis],
            schema=MASK_SCHEMA,
            bbox=region,
        ),
    }
    return {name: readers[name]() for name in names}


def read_proc_image(
    path: str | os.PathLike, bbox: Box | None = None, component: str | None = None
) -> Any:
    """Read (part of) a file written by `write_proc_image`.

    Parameters
    ----------
    path
        The file.
    bbox
        Region to read (in the image's pixel coordinates); only its rows
        are read from disk.
    component
        `None` for the `lsst.images.MaskedImage`, or one of
        `PROC_COMPONENTS` (see `read_proc_components`).

    Returns
    -------
    value
        The masked image or the component.
    """
    if component is not None:
        return read_proc_components(path, [component], bbox)[component]
    parts = read_proc_components(path, ("image", "mask", "variance", "metadata"), bbox)
    return MaskedImage(
        parts["image"], mask=parts["mask"], variance=parts["variance"], metadata=parts["metadata"]
    )


class ProcImageFormatter(FormatterV2):
    """Butler formatter of the ISR intermediates (``cpc*Proc``): a compact
    multi-extension FITS masked image (`write_proc_image`), read in row
    blocks by the combine engine.

    The mask is compressed losslessly; the image and variance are
    quantised with a step of 1/`PROC_QUANTIZE_LEVEL` (1/16) of each row's
    per-pixel noise and tile-compressed, one row per tile: the error of a
    pixel is uniform within ±1/32 of its noise (rms 1.8 % of the noise, so
    the noise variance grows by 0.03 %), unbiased and independent of
    everything else, and averages down in a combination as the noise does.
    A full-size LATISS detector (4072 x 4000) takes 25-35 MB instead of
    147 MB.  The write parameter ``quantize_level`` (e.g. in a datastore
    formatter configuration) sets another level, or with `None` writes the
    image and variance exactly (uncompressed).  The in-memory type is
    `lsst.images.MaskedImage` (storage class ``MaskedImageV2``).

    Supported read parameter: ``bbox``; components: ``bbox``, ``image``,
    ``mask``, ``variance``, ``unit``, ``sky_projection`` and ``components``
    (several at once, as a dict).
    """

    default_extension: ClassVar[str] = ".fits"
    supported_extensions: ClassVar[frozenset[str]] = frozenset({".fits"})
    supported_write_parameters: ClassVar[frozenset[str]] = frozenset({"quantize_level"})
    can_read_from_local_file: ClassVar[bool] = True
    butler_provenance: DatasetProvenance | None = None

    def add_provenance(
        self, in_memory_dataset: Any, /, *, provenance: DatasetProvenance | None = None
    ) -> Any:
        self.butler_provenance = provenance
        return in_memory_dataset

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        provenance = self.butler_provenance if self.butler_provenance is not None else DatasetProvenance()
        cards = provenance.to_flat_dict(
            self.dataset_ref, prefix="HIERARCH LSST BUTLER", sep=" ", simple_types=True, max_inputs=3_000
        )
        level = (self.write_parameters or {}).get("quantize_level", PROC_QUANTIZE_LEVEL)
        write_proc_image(in_memory_dataset, uri.ospath, cards, quantize_level=level)

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        params = dict(self.file_descriptor.parameters or {})
        bbox = params.pop("bbox", None)
        names = params.pop("components", None) if component == "components" else None
        if params:
            raise ValueError(f"unsupported read parameters {sorted(params)} for {path}")
        if component == "components":
            names = names or [n for n in PROC_COMPONENTS if n != "metadata"]
            return read_proc_components(path, [names] if isinstance(names, str) else names, bbox)
        return read_proc_image(path, bbox, component)
