"""Butler formatters of cp_combined (besides the raw formatter)."""

from __future__ import annotations

__all__ = (
    "ProcImageFormatter",
    "UncompressedImageFormatter",
    "read_proc_components",
    "read_proc_image",
    "write_proc_image",
)

import functools
import json
import os
from collections.abc import Iterable
from typing import Any, ClassVar

import astropy.io.fits as fits
import astropy.units as u
import numpy as np

from lsst.daf.butler import DatasetProvenance, FormatterV2
from lsst.images import Box, Image, Mask, MaskedImage
from lsst.images.formatters import GenericFormatter
from lsst.resources import ResourcePath

from ..algorithms.masks import BIT, MASK_SCHEMA, PLANES, from_mask

#: Planes written without compression.  The mask (written as int32 for afw
#: compatibility) would compress well, but GZIP costs ~0.4 s per full-size
#: write and every row block the combine engine reads decompresses tiles
#: again: ISR outputs are read in blocks, so speed wins over ~65 MB of disk.
_UNCOMPRESSED_PLANES = ("image", "mask", "variance")

#: Value of the ``CPFORMAT`` primary-header card of `ProcImageFormatter` files.
PROC_FORMAT = "cp_combined MaskedImage v1"


class UncompressedImageFormatter(GenericFormatter):
    """`lsst.images` formatter that writes FITS without tile compression.

    Lossless GZIP compression of floating-point noise costs ~4 s per
    full-size detector to write and as much to read back, for little size
    gain; calibrations are read by every ISR quantum, so cp_combined writes
    them uncompressed (~195 MB per full-size detector).  Reading is
    unchanged.
    """

    def _get_compression_options(self) -> dict[str, Any]:
        return dict.fromkeys(_UNCOMPRESSED_PLANES)


# ---------------------------------------------------------------------------
# The ISR intermediates: a plain three-HDU masked image
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _unit(text: str) -> u.UnitBase | None:
    return None if not text else u.Unit(text)


#: Bit number of each mask plane of `MASK_SCHEMA` (the ``MP_<plane>`` cards).
_PLANE_BITS: dict[str, int] = {name: i for i, (name, _) in enumerate(PLANES)}


def write_proc_image(
    mi: MaskedImage, path: str | os.PathLike, provenance: dict[str, Any] | None = None
) -> None:
    """Write a masked image as a plain multi-extension FITS file.

    Layout (the classic masked-image layout, readable by any FITS tool):
    an empty primary HDU with ``CPFORMAT``, the bounding-box origin
    (``BBOX_Y0``/``BBOX_X0``) and butler provenance cards; ``IMAGE``
    (float32, ``BUNIT``); ``MASK`` (uint8, ``MP_<plane>`` = bit number);
    ``VARIANCE`` (float32); ``METADATA`` (the scalar metadata as UTF-8
    JSON bytes, so types and NaNs round-trip exactly).  No compression: the
    combine engine reads row blocks straight from the file.

    Parameters
    ----------
    mi
        The masked image; its mask must use (a subset of) the planes of
        `lsst.cpcombined.algorithms.masks`.
    path
        Output file.
    provenance
        Extra primary-header cards (``HIERARCH`` keys allowed).

    Raises
    ------
    ValueError
        If the mask has planes cp_combined does not know.
    """
    unknown = set(mi.mask.schema.names) - set(BIT)
    if unknown:
        raise ValueError(f"mask planes {sorted(unknown)} are not cp_combined planes: cannot write {path}")
    mask_array = from_mask(mi.mask)
    primary = fits.PrimaryHDU()
    primary.header["CPFORMAT"] = PROC_FORMAT
    primary.header["BBOX_Y0"] = int(mi.bbox.y.start)
    primary.header["BBOX_X0"] = int(mi.bbox.x.start)
    for key, value in (provenance or {}).items():
        primary.header.set(key, value)
    unit = mi.image.unit
    image = fits.ImageHDU(np.asarray(mi.image.array, dtype=np.float32), name="IMAGE")
    variance = fits.ImageHDU(np.asarray(mi.variance.array, dtype=np.float32), name="VARIANCE")
    if unit is not None:
        image.header["BUNIT"] = unit.to_string()
        variance.header["BUNIT"] = (unit**2).to_string()
    mask_hdu = fits.ImageHDU(np.ascontiguousarray(mask_array, dtype=np.uint8), name="MASK")
    for name, bit in _PLANE_BITS.items():
        key = f"MP_{name}"
        mask_hdu.header[key if len(key) <= 8 else f"HIERARCH {key}"] = bit
    md = json.dumps(dict(mi.metadata), allow_nan=True).encode()
    md_hdu = fits.ImageHDU(np.frombuffer(md, dtype=np.uint8), name="METADATA")
    fits.HDUList([primary, image, mask_hdu, variance, md_hdu]).writeto(os.fspath(path), overwrite=True)


def _native(array: np.ndarray) -> np.ndarray:
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


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
    """Read components of a file written by `write_proc_image`, opening it
    once.

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
    with fits.open(os.fspath(path), memmap=False, lazy_load_hdus=True) as hdul:
        head = hdul[0].header
        if head.get("CPFORMAT") != PROC_FORMAT:
            raise ValueError(
                f"{path} is not a cp_combined masked-image file (CPFORMAT={head.get('CPFORMAT')!r})"
            )
        image_hdu = hdul["IMAGE"]
        ny, nx = int(image_hdu.header["NAXIS2"]), int(image_hdu.header["NAXIS1"])
        full = Box.factory[
            head["BBOX_Y0"] : head["BBOX_Y0"] + ny, head["BBOX_X0"] : head["BBOX_X0"] + nx
        ]
        unit = _unit(image_hdu.header.get("BUNIT", ""))
        region = full if bbox is None else bbox
        if {"image", "mask", "variance"} & set(names) and not full.contains(region):
            raise ValueError(f"requested bbox {region} is not inside the image {full}")

        def plane(name: str) -> np.ndarray:
            return _native(np.asarray(hdul[name].section[region.slice_within(full)]))

        readers = {
            "bbox": lambda: full,
            "sky_projection": lambda: None,
            "unit": lambda: unit,
            "metadata": lambda: json.loads(bytes(hdul["METADATA"].data).decode()),
            "image": lambda: Image(plane("IMAGE"), unit=unit, bbox=region),
            "variance": lambda: Image(plane("VARIANCE"), unit=None if unit is None else unit**2, bbox=region),
            "mask": lambda: Mask(
                _mask_from_file(plane("MASK"), hdul["MASK"].header)[:, :, np.newaxis],
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
    """Butler formatter of the ISR intermediates (``cp*Proc``): a plain
    uncompressed multi-extension FITS masked image (`write_proc_image`).

    The `lsst.images` FITS archive converts the mask plane by plane to
    int32 and parses a serialisation tree on every read: ~0.7 s to write and
    ~0.4 s per row block to read a full-size LATISS detector, for products
    written once and read block by block by the combine engine.  This format
    takes ~0.1 s to write and ~0.02 s per block.  The in-memory type is the
    same `lsst.images.MaskedImage` (storage class ``MaskedImageV2``);
    combined calibrations keep the standard `lsst.images` format.

    Supported read parameter: ``bbox``; components: ``bbox``, ``image``,
    ``mask``, ``variance``, ``unit``, ``sky_projection`` and ``components``
    (several at once, as a dict).
    """

    default_extension: ClassVar[str] = ".fits"
    supported_extensions: ClassVar[frozenset[str]] = frozenset({".fits"})
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
        write_proc_image(in_memory_dataset, uri.ospath, cards)

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
