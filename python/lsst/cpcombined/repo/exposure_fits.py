"""The afw ``Exposure`` FITS layout, written and read without afw.

Combined biases, darks and flats are stored in the layout
``lsst.afw.image.Exposure.writeFits`` produces, minus the afw archive:

* HDU 0: an empty primary HDU holding the metadata (long or spaced keys as
  ``HIERARCH`` cards; non-finite floats as the strings ``'NAN'``,
  ``'+INFINITY'``, ``'-INFINITY'`` and `None` as an undefined value, as afw
  writes them).  No ``AR_HDU``, ``*_ID`` or ``ARCHIVE_ID_*`` card: afw only
  follows those into an archive that exists.
* HDU 1-3: ``IMAGE`` (float32), ``MASK`` (int32) and ``VARIANCE`` (float32),
  each with ``EXTNAME`` and ``EXTTYPE``, ``INHERIT = T``, ``LTV1``/``LTV2``
  (minus the origin) and the ``A`` pixel WCS (``CRVAL1A``/``CRVAL2A`` = the
  origin), from which afw takes the origin; ``BUNIT`` on the image
  (``<unit>``), variance (``<unit>**2``) and mask (undefined), as afw moves it
  out of the metadata.
* The mask uses afw's default plane numbering (`AFW_MASK_PLANES`) and
  declares every one of those planes with an ``MP_<PLANE>`` card.

Each plane is written uncompressed or with lossless tile compression (one
row per tile, no quantization: afw's ``lossless`` recipe, the way cp_pipe's
calibrations are stored), ``GZIP_2``/``GZIP_1`` for any plane and
``RICE_1`` for the mask, coded and decoded by
`lsst.cpcombined.repo.tiled_fits` on every core (the butler's formatter
compresses by default: see ``config/datastores/formatters.yaml``).

`read_exposure_fits` reads these files and files written by afw (cp_pipe's
calibrations): tile-compressed HDUs, archive HDUs after the third, afw
cards (``AR_HDU``, ``EXPINFO_V``...), old files with ``EXTTYPE`` but no
``EXTNAME``, and masks with other plane numberings.  HDUs 1-3 are read by
position, as afw reads them; pixels come back bit-exact.  Mask bits are
translated by plane *name* into the planes of
`lsst.cpcombined.algorithms.masks`:

* the afw names of our planes keep their meaning (``BAD``, ``SAT``,
  ``INTRP``, ``CR``, ``EDGE``, ``DETECTED``, ``SUSPECT``, ``NO_DATA``), and
  so do their `lsst.images` names (``SATURATED``, ``INTERPOLATED``,
  ``COSMIC_RAY``, ``DETECTION_EDGE``);
* afw planes we do not have are folded into the nearest plane we do have
  (`FOREIGN_MASK_PLANES`): detections of either sign and streaks into
  ``DETECTED``, pixels that saw no light or held NaN into ``NO_DATA``, and
  pixels whose value is doubtful (crosstalk from a saturated source, partial
  vignetting, ITL dips, spikes...) into ``SUSPECT``;
* any other plane name becomes ``SUSPECT``.

No set bit is ever dropped: each folded plane that has pixels set is logged
(INFO) with its pixel count.
"""

from __future__ import annotations

__all__ = (
    "AFW_MASK_PLANES",
    "COMPRESSIONS",
    "FOREIGN_MASK_PLANES",
    "MASK_COMPRESSIONS",
    "PLANE_ALIASES",
    "afw_mask_from_bits",
    "bits_from_afw_mask",
    "header_from_metadata",
    "legacy_plane_map",
    "metadata_from_header",
    "plane_compressions",
    "read_exposure_fits",
    "read_exposure_metadata",
    "write_exposure_fits",
)

import functools
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import astropy.io.fits as fits
import astropy.units as u
import numpy as np

from lsst.images import Box, Image, MaskedImage, MaskPlane

from ..algorithms.masks import BIT, PLANES, from_mask, to_mask
from .tiled_fits import FitsIndex, compressed_image_hdu, extension_hdu, primary_hdu, write_hdus

_LOG = logging.getLogger(__name__)

#: afw's default mask dictionary (``lsst::afw::image::detail::MaskDict``):
#: plane name -> bit number.  Written in every ``MASK`` HDU.
AFW_MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
    "VIGNETTED": 9,
    "STREAK": 10,
}

#: `lsst.images` names (its legacy renaming) of our planes.
PLANE_ALIASES: dict[str, str] = {
    "SATURATED": "SAT",
    "INTERPOLATED": "INTRP",
    "COSMIC_RAY": "CR",
    "DETECTION_EDGE": "EDGE",
}

#: afw (and `lsst.images`) planes that cp_combined does not have, and the
#: plane each is read into.  Any other unknown plane is read into
#: `DEFAULT_FOREIGN_PLANE`.
FOREIGN_MASK_PLANES: dict[str, str] = {
    "DETECTED_NEGATIVE": "DETECTED",  # a detection below the background
    "STREAK": "DETECTED",  # a detected satellite or meteor trail
    "NOT_DEBLENDED": "DETECTED",  # part of a detection too large to deblend
    "VIGNETTED": "NO_DATA",  # fully vignetted: the pixel sees no light
    "UNMASKEDNAN": "NO_DATA",  # NaN that no other plane explained
    "UNMASKED_NAN": "NO_DATA",
    "PARTLY_VIGNETTED": "SUSPECT",  # partial vignetting: value not flat-field quality
    "CROSSTALK": "SUSPECT",  # crosstalk from a saturated source was removed
    "ITL_DIP": "SUSPECT",  # ITL sensor dip next to bright columns
    "SPIKE": "SUSPECT",  # diffraction spike of a bright star
}

#: Plane of an afw plane name cp_combined does not recognise at all.
DEFAULT_FOREIGN_PLANE = "SUSPECT"

#: Our bit number (``masks.BIT``) of each of our planes.
_OUR_BIT_NUMBER: dict[str, int] = {name: i for i, (name, _) in enumerate(PLANES)}

#: Structural cards never taken from (or written into) the primary metadata.
_STRUCTURAL = frozenset(
    {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT", "TFIELDS", "EXTNAME", "EXTVER",
     "EXTTYPE", "INHERIT", "BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", "",
     "BUNIT"}
)

#: Pointers into an afw archive (meaningless without one; afw fails on an
#: ``AR_HDU`` that points nowhere).
_ARCHIVE_KEYS = frozenset({"AR_HDU", "EXPINFO_V"})
_ARCHIVE_PATTERN = re.compile(
    r"^(ARCHIVE_ID_.*|(SKYWCS|PSF|PHOTOCALIB|FILTER|DETECTOR|VALID_POLYGON|AP_CORR_MAP|COADD_INPUTS"
    r"|TRANSMISSION_CURVE|SUMMARYSTATS|BACKGROUND)_ID)$"
)
_NAXIS_PATTERN = re.compile(r"^NAXIS\d+$")
#: Tile-compression cards (CFITSIO leaks ZQUANTIZ into afw primaries).
_COMPRESSION_PATTERN = re.compile(
    r"^Z(IMAGE|CMPTYPE|BITPIX|NAXIS\d*|TILE\d+|NAME\d+|VAL\d+|QUANTIZ|DITHER0|SIMPLE|EXTEND|BLOCKED|PCOUNT"
    r"|GCOUNT|TENSION|HECKSUM|DATASUM)$"
)
_BUTLER_PREFIX = "LSST BUTLER"
_PLAIN_KEY = re.compile(r"^[A-Z0-9_-]{1,8}$")

#: afw's strings for non-finite floats in headers.
_NONFINITE = {"NAN": math.nan, "+INFINITY": math.inf, "-INFINITY": -math.inf}

_EXTENSIONS = ("IMAGE", "MASK", "VARIANCE")


# ---------------------------------------------------------------------------
# headers
# ---------------------------------------------------------------------------


def _skip_key(key: str, *, butler: bool = True) -> bool:
    return (
        key in _STRUCTURAL
        or key in _ARCHIVE_KEYS
        or _NAXIS_PATTERN.match(key) is not None
        or _ARCHIVE_PATTERN.match(key) is not None
        or _COMPRESSION_PATTERN.match(key) is not None
        or (butler and key.startswith(_BUTLER_PREFIX))
    )


def _card_keyword(key: str) -> str:
    return key if _PLAIN_KEY.match(key) else f"HIERARCH {key}"


def _card_value(key: str, value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NAN"
        if math.isinf(value):
            return "+INFINITY" if value > 0 else "-INFINITY"
        return value
    raise TypeError(f"metadata {key!r} has a {type(value).__name__} value: only scalars go in a FITS header")


def header_from_metadata(
    metadata: Mapping[str, Any], header: fits.Header | None = None, *, provenance: bool = False
) -> fits.Header:
    """FITS cards of scalar metadata, as afw writes a ``PropertyList``.

    Keys that are not plain 8-character FITS keywords become ``HIERARCH``
    cards; NaN and infinities become afw's strings; `None` an undefined
    value.  Structural cards, ``BUNIT`` and afw archive pointers are left
    out, and so are butler provenance cards (``LSST BUTLER ...``, stale
    once the data are written again) unless ``provenance``.

    Parameters
    ----------
    metadata
        ``{key: scalar}``.
    header
        Header to append to (a new one by default).
    provenance
        Write ``LSST BUTLER`` cards (the new ones of a butler put).

    Returns
    -------
    header
        The header.
    """
    header = fits.Header() if header is None else header
    for key, value in metadata.items():
        if _skip_key(key, butler=not provenance):
            continue
        header.append(fits.Card(_card_keyword(key), _card_value(key, value)), end=True)
    return header


def _python_value(value: Any) -> Any:
    if isinstance(value, fits.card.Undefined):
        return None
    if isinstance(value, str):
        return _NONFINITE.get(value.strip(), value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def metadata_from_header(header: fits.Header) -> dict[str, Any]:
    """Scalar metadata of a primary header: the inverse of
    `header_from_metadata` (afw's ``'NAN'`` strings become NaN again,
    undefined values `None`); structural, compression, archive and butler
    provenance cards are dropped."""
    out: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword
        if _skip_key(key):
            continue
        out[key] = _python_value(card.value)
    return out


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------


def _our_plane(name: str) -> tuple[str, bool]:
    """Our plane for an afw/lsst.images plane name, and whether it is a
    fold of a plane we do not have."""
    if name in BIT:
        return name, False
    if name in PLANE_ALIASES:
        return PLANE_ALIASES[name], False
    return FOREIGN_MASK_PLANES.get(name, DEFAULT_FOREIGN_PLANE), True


@functools.lru_cache(maxsize=1)
def _to_afw_lut() -> np.ndarray:
    lut = np.zeros(256, dtype=np.int32)
    for value in range(256):
        for name, bit in BIT.items():
            if value & bit:
                lut[value] |= np.int32(1 << AFW_MASK_PLANES[name])
    return lut


#: Our bits that have the same number in afw's default dictionary
#: (BAD, SAT, INTRP, CR: bits 0-3).
_SAME_BITS = sum(bit for name, bit in BIT.items() if _OUR_BIT_NUMBER[name] == AFW_MASK_PLANES[name])


def afw_mask_from_bits(bitmask: np.ndarray) -> np.ndarray:
    """int32 afw mask (numbering `AFW_MASK_PLANES`) of a uint8 bitmask of
    `lsst.cpcombined.algorithms.masks`."""
    bitmask = np.asarray(bitmask, dtype=np.uint8)
    used = int(np.bitwise_or.reduce(bitmask, axis=None)) if bitmask.size else 0
    if not used & ~_SAME_BITS:
        return bitmask.astype(np.int32)  # e.g. only BAD: same numbers, no table needed
    return _to_afw_lut()[bitmask]


def _read_mask_planes(header: fits.Header) -> dict[str, int]:
    planes: dict[str, int] = {}
    for card in header.cards:
        key = card.keyword
        if key.startswith("MP_"):
            name, bit = key[3:], int(card.value)
            if bit in planes.values():
                other = next(k for k, v in planes.items() if v == bit)
                raise ValueError(f"mask planes {name} and {other} share bit {bit}")
            if not 0 <= bit < 32:
                raise ValueError(f"mask plane {name} has bit {bit}: afw masks have 32 bits")
            planes[name] = bit
    return planes or dict(AFW_MASK_PLANES)


def bits_from_afw_mask(
    array: np.ndarray, planes: Mapping[str, int], *, source: str = "mask", log: logging.Logger | None = None
) -> np.ndarray:
    """uint8 bitmask of `lsst.cpcombined.algorithms.masks` from an afw mask.

    Parameters
    ----------
    array
        Integer mask array (int32 in afw files, any byte order).
    planes
        ``{afw plane name: bit number}`` of the file (its ``MP_`` cards).
    source
        What is read (for the log).
    log
        Logger of the fold messages (this module's by default).

    Returns
    -------
    bitmask
        2-d uint8 array.  Planes we do not have are folded as documented in
        the module; bits set that no plane declares raise `ValueError`.
    """
    log = log or _LOG
    arr = np.asarray(array)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{source}: a mask must hold integers, not {arr.dtype}")
    used = int(np.bitwise_or.reduce(arr, axis=None)) if arr.size else 0
    used &= 0xFFFFFFFF
    declared = 0
    for bit in planes.values():
        declared |= 1 << bit
    if used & ~declared:
        undeclared = [b for b in range(32) if (used >> b) & 1 and not (declared >> b) & 1]
        raise ValueError(f"{source}: mask bits {undeclared} are set but no MP_ card declares them")
    # One 256-entry table per byte of the stored integers: a gather per byte
    # that has any bit set (usually one or two).
    nbytes = arr.dtype.itemsize
    luts = np.zeros((nbytes, 256), dtype=np.uint8)
    for name, bit in planes.items():
        if bit >= 8 * nbytes:
            continue
        ours, folded = _our_plane(name)
        byte, shift = divmod(bit, 8)
        values = np.arange(256)
        luts[byte][(values >> shift) & 1 == 1] |= np.uint8(BIT[ours])
        if folded and (used >> bit) & 1:
            log.info(
                "%s: afw mask plane %s (%d pixels) read as %s: cp_combined has no %s plane.",
                source, name, int(np.count_nonzero(arr & _signed_bit(bit, arr.dtype))), ours, name,
            )
    identity = all(
        _our_plane(name) == (name, False) and _OUR_BIT_NUMBER[name] == bit
        for name, bit in planes.items()
        if (used >> bit) & 1
    )
    if identity and used < 256:
        return (arr & 0xFF).astype(np.uint8)  # e.g. only BAD set: same bit numbers
    out = np.zeros(arr.shape, dtype=np.uint8)
    as_bytes = np.ascontiguousarray(arr).view(np.uint8).reshape(*arr.shape, nbytes)
    little = arr.dtype.byteorder == "<" or (arr.dtype.byteorder in "=|" and np.little_endian)
    for byte in range(nbytes):
        if not (used >> (8 * byte)) & 0xFF:
            continue
        column = byte if little else nbytes - 1 - byte
        out |= luts[byte][as_bytes[..., column]]
    return out


def _signed_bit(bit: int, dtype: np.dtype) -> Any:
    value = 1 << bit
    if dtype.kind == "i" and bit == 8 * dtype.itemsize - 1:
        value -= 1 << (8 * dtype.itemsize)
    return dtype.type(value)


def legacy_plane_map() -> dict[str, MaskPlane]:
    """``plane_map`` for `lsst.images.MaskedImage.read_legacy` that keeps
    cp_combined's plane names and order.

    `lsst.images` cannot merge two legacy planes into one, so afw's other
    planes are not mapped: they are dropped when no pixel has them (as in
    every file `write_exposure_fits` writes) and make ``read_legacy`` fail
    otherwise; `read_exposure_fits` folds them instead.
    """
    return {name: MaskPlane(name, doc) for name, doc in PLANES}


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def _origin(mi: MaskedImage) -> tuple[int, int]:
    return int(mi.bbox.x.start), int(mi.bbox.y.start)


def _extension_header(name: str, x0: int, y0: int, bunit: Any = ...) -> fits.Header:
    header = fits.Header()
    header["EXTNAME"] = name
    header["LTV1"] = float(-x0) + 0.0
    header["LTV2"] = float(-y0) + 0.0
    header["INHERIT"] = True
    header["EXTTYPE"] = name
    if name == "MASK":
        for plane, bit in sorted(AFW_MASK_PLANES.items()):
            header.append(fits.Card(_card_keyword(f"MP_{plane}"), bit), end=True)
    header["CTYPE1A"] = ("LINEAR", "Type of projection")
    header["CTYPE2A"] = ("LINEAR", "Type of projection")
    header["CRPIX1A"] = (1.0, "Column Pixel Coordinate of Reference")
    header["CRPIX2A"] = (1.0, "Row Pixel Coordinate of Reference")
    header["CRVAL1A"] = (float(x0), "Column pixel of Reference Pixel")
    header["CRVAL2A"] = (float(y0), "Row pixel of Reference Pixel")
    header["CUNIT1A"] = ("PIXEL", "Column unit")
    header["CUNIT2A"] = ("PIXEL", "Row unit")
    if bunit is not ...:
        header["BUNIT"] = bunit
    return header


#: Compression types `write_exposure_fits` accepts (lossless only), and
#: those it accepts for the mask plane.
COMPRESSIONS = ("GZIP_1", "GZIP_2")
MASK_COMPRESSIONS = (*COMPRESSIONS, "RICE_1")


def plane_compressions(compression: str | Mapping[str, str | None] | None) -> dict[str, str | None]:
    """The compression of each plane (``IMAGE``, ``MASK``, ``VARIANCE``).

    Parameters
    ----------
    compression
        One algorithm for the three planes, a mapping from plane name
        (``image``, ``mask``, ``variance``, in any case; a missing plane is
        not compressed) to algorithm or `None`, or `None` for no compression.

    Raises
    ------
    ValueError
        An unknown plane, or an algorithm that is not lossless for its plane.
    """
    if compression is None or isinstance(compression, str):
        compression = dict.fromkeys(("image", "mask", "variance"), compression)
    compression = {str(k).lower(): v for k, v in compression.items()}
    unknown = set(compression) - {"image", "mask", "variance"}
    if unknown:
        raise ValueError(f"unknown planes {sorted(unknown)}: give image, mask and variance")
    out = {}
    for name in _EXTENSIONS:
        algorithm = compression.get(name.lower())
        allowed = MASK_COMPRESSIONS if name == "MASK" else COMPRESSIONS
        if algorithm is not None and algorithm not in allowed:
            raise ValueError(
                f"compression {algorithm!r} of the {name.lower()} plane is not lossless; use None or one of "
                f"{allowed}"
            )
        out[name] = algorithm
    return out


def write_exposure_fits(
    mi: MaskedImage,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, Any] | None = None,
    compression: str | Mapping[str, str | None] | None = None,
) -> None:
    """Write a masked image as an archive-free afw Exposure FITS file.

    Parameters
    ----------
    mi
        The image; its mask must use planes of
        `lsst.cpcombined.algorithms.masks` (any schema whose plane names are
        ours is translated).
    path
        Output file (overwritten).
    metadata
        Primary-header cards written after ``mi.metadata``, including
        butler provenance cards; same conventions.
    compression
        `None` (default), a lossless tile compression of `COMPRESSIONS`
        for the three planes, or one per plane (see `plane_compressions`):
        one row per tile, no quantization, pixels round-trip exactly.

    Raises
    ------
    ValueError
        Unknown mask planes, or an unsupported compression.
    """
    algorithms = plane_compressions(compression)
    unknown = set(mi.mask.schema.names) - set(BIT)
    if unknown:
        raise ValueError(f"mask planes {sorted(unknown)} are not cp_combined planes: cannot write {path}")
    x0, y0 = _origin(mi)
    primary = fits.PrimaryHDU()
    cards = {k: v for k, v in mi.metadata.items() if not k.startswith(_BUTLER_PREFIX)}
    cards.update(metadata or {})
    header_from_metadata(cards, primary.header, provenance=True)
    unit = mi.image.unit
    image_unit = ... if unit is None else unit.to_string()
    variance_unit = ... if unit is None else (unit**2).to_string()
    mask_unit = ... if unit is None else None
    arrays = (
        (np.asarray(mi.image.array, dtype=np.float32), image_unit),
        (afw_mask_from_bits(from_mask(mi.mask)), mask_unit),
        (np.asarray(mi.variance.array, dtype=np.float32), variance_unit),
    )
    hdus = [primary_hdu(primary.header)]
    for name, (array, bunit) in zip(_EXTENSIONS, arrays, strict=True):
        header = _extension_header(name, x0, y0, bunit)
        if algorithms[name] is None:
            hdus.append(extension_hdu(fits.ImageHDU(array, header=header, name=name)))
        else:
            hdus.append(compressed_image_hdu(array, header, name=name, algorithm=algorithms[name]))
    write_hdus(path, hdus)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _check_extension(header: fits.Header, expected: str, path: str) -> None:
    exttype = header.get("EXTTYPE")
    if exttype is not None and str(exttype).strip() != expected:
        raise ValueError(
            f"{path}: HDU {_EXTENSIONS.index(expected) + 1} is {exttype!r}, not {expected!r}: not an afw "
            "Exposure/MaskedImage file"
        )


def _xy0(header: fits.Header) -> tuple[int, int]:
    """Origin as afw reads it: the ``A`` WCS, else LTV, else (0, 0)."""
    if header.get("CTYPE1A") == "LINEAR" and "CRVAL1A" in header:
        x = header["CRVAL1A"] - (header.get("CRPIX1A", 1.0) - 1.0)
        y = header["CRVAL2A"] - (header.get("CRPIX2A", 1.0) - 1.0)
        return round(x), round(y)
    if "LTV1" in header:
        return -round(header["LTV1"]), -round(header.get("LTV2", 0.0))
    return 0, 0


def _conventional_unit(metadata: Mapping[str, Any]) -> u.UnitBase | None:
    """Unit of a calibration by cp_pipe's conventions: ``LSST ISR UNITS``
    (afw's ISR default: adu), per second for a dark normalised to a dark
    time of 1 s, none for a flat."""
    obstype = str(metadata.get("OBSTYPE") or "").strip().lower()
    if obstype == "flat":
        return None
    isr_units = metadata.get("LSST ISR UNITS")
    if isr_units is None:
        return None
    unit = u.electron if str(isr_units).strip().lower() == "electron" else u.adu
    if obstype == "dark" and metadata.get("DARKTIME") == 1.0:
        return unit / u.s
    return unit


def _unit_of(image_header: fits.Header, metadata: Mapping[str, Any]) -> u.UnitBase | None:
    """Unit of the image: ``BUNIT`` when present, except a plain ``adu`` on
    a bias, dark or flat (the raw's ``BUNIT``, which cp_pipe's header merging
    carries into its products whatever the ISR did to the pixels: cp_pipe's
    conventions say what they are, see `_conventional_unit`); without
    ``BUNIT``, cp_pipe's conventions."""
    bunit = image_header.get("BUNIT")
    if isinstance(bunit, str) and bunit.strip():
        try:
            unit = u.Unit(bunit.strip(), parse_strict="raise")
        except ValueError:
            unit = u.Unit(bunit.strip().lower(), parse_strict="silent")
        obstype = str(metadata.get("OBSTYPE") or "").strip().lower()
        if not (unit == u.adu and obstype in ("bias", "dark", "flat")):
            return unit
    return _conventional_unit(metadata)


def read_exposure_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Primary-header metadata of an afw Exposure FITS file (see
    `metadata_from_header`), reading nothing else."""
    with fits.open(os.fspath(path), memmap=False, lazy_load_hdus=True) as hdul:
        return metadata_from_header(hdul[0].header)


def read_exposure_fits(path: str | os.PathLike, *, log: logging.Logger | None = None) -> MaskedImage:
    """Read an afw Exposure/MaskedImage FITS file (ours or afw's).

    Parameters
    ----------
    path
        The file.
    log
        Logger for mask-plane folding messages (this module's by default).

    Returns
    -------
    masked_image
        Image and variance bit-exact (float32, native byte order), mask in
        the planes of `lsst.cpcombined.algorithms.masks` (see the module
        documentation), origin from the ``A`` WCS, unit from ``BUNIT`` or
        cp_pipe's conventions (``LSST ISR UNITS``, ``OBSTYPE``,
        ``DARKTIME``), and the primary header as metadata.

    Raises
    ------
    ValueError
        A file that is not in this layout (an HDU 1-3 whose ``EXTTYPE`` is
        not IMAGE/MASK/VARIANCE, fewer than four HDUs), or mask bits no plane
        declares.
    """
    spath = os.fspath(path)
    # Pixels through FitsIndex: plain and lossless tile-compressed HDUs are
    # decoded on every core, anything else by astropy.
    try:
        index = FitsIndex.of(spath)
    except ValueError as err:
        raise ValueError(f"{spath}: {err}") from None
    metadata = metadata_from_header(index.hdus[0].header)
    if len(index.hdus) < 4:
        raise ValueError(f"{spath} has no IMAGE, MASK and VARIANCE HDUs: not an afw Exposure file")
    image_header, mask_header, variance_header = (index.image_header(i) for i in (1, 2, 3))
    for header, name in zip((image_header, mask_header, variance_header), _EXTENSIONS, strict=True):
        _check_extension(header, name, spath)
    x0, y0 = _xy0(image_header)
    unit = _unit_of(image_header, metadata)
    image = index.read_rows(1)
    variance = index.read_rows(3)
    bitmask = bits_from_afw_mask(index.read_rows(2), _read_mask_planes(mask_header), source=spath, log=log)
    ny, nx = image.shape
    bbox = Box.factory[y0 : y0 + ny, x0 : x0 + nx]
    return MaskedImage(
        Image(image, unit=unit, bbox=bbox),
        mask=to_mask(bitmask, bbox=bbox),
        variance=Image(variance, unit=None if unit is None else unit**2, bbox=bbox),
        metadata=metadata,
    )

