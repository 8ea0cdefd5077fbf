"""Raw camera files: reading, writing and the butler formatter.

A raw file is what the Rubin camera writes for one (exposure, detector): a
multi-extension FITS file whose primary HDU holds the observation header and
whose 16 image extensions ``Segment10..Segment17, Segment07..Segment00`` hold
the untrimmed amplifier arrays (int32, optionally tile-compressed), each with
its geometry keywords (``DATASEC``, ``DETSEC``, ``DTV``/``DTM``...).

`read_raw_file` turns such a file into a `RawImage`: the untrimmed amplifier
arrays tiled into one image in detector orientation, plus the header
metadata.  The butler's ``raw`` dataset type has the Science Pipelines'
storage class ``Exposure``; the package reads raws from their files
(`lsst.cpcombined.repo.files`), never with ``butler.get``.
"""

from __future__ import annotations

__all__ = (
    "RawFormatError",
    "RawFormatter",
    "RawImage",
    "read_primary_header",
    "read_raw_file",
    "read_raw_header",
    "write_raw_file",
)

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import astropy.io.fits as fits
import numpy as np

from lsst.daf.butler import FormatterV2
from lsst.images import Image
from lsst.resources import ResourcePath

from .camera import AMP_NAMES, AmpGeometry, AmpLayout

_SECTION_RE = re.compile(r"^\[(\d+):(\d+),(\d+):(\d+)\]$")


class RawFormatError(ValueError):
    """A file is not a raw camera file of the expected form."""


def _parse_section(value: str, what: str) -> tuple[int, int, int, int]:
    """Parse a FITS ``[x1:x2,y1:y2]`` section (1-based, inclusive)."""
    m = _SECTION_RE.match(str(value).strip())
    if not m:
        raise RawFormatError(f"cannot parse {what} {value!r}")
    return tuple(int(v) for v in m.groups())  # type: ignore[return-value]


def _header_to_dict(header: fits.Header) -> dict[str, Any]:
    """Convert a FITS header to a plain dict (comments and blank cards
    dropped; undefined values become `None`)."""
    out: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword
        if not key or key in ("COMMENT", "HISTORY"):
            continue
        value = card.value
        if isinstance(value, fits.card.Undefined):
            value = None
        elif isinstance(value, np.bool_):
            value = bool(value)
        out[key] = value
    return out


class RawImage:
    """One detector's raw exposure.

    Parameters
    ----------
    image
        Untrimmed image: every amplifier's raw array (data, prescan and
        overscans), flipped into detector orientation and tiled on the
        ``2 x 8`` amplifier grid (see `AmpGeometry`).  float32, in ADU.
    layout
        Per-amplifier pixel layout of the file.
    metadata
        Primary header of the file as a plain mapping.
    amp_metadata
        Per-amplifier extension headers, keyed by amplifier name.
    """

    def __init__(
        self,
        image: Image,
        layout: AmpLayout,
        metadata: Mapping[str, Any],
        amp_metadata: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        expected = (layout.n_y * layout.raw_height, layout.n_x * layout.raw_width)
        if image.array.shape != expected:
            raise ValueError(f"untrimmed image shape {image.array.shape} does not match layout {expected}")
        self.image = image
        self.layout = layout
        self.metadata = dict(metadata)
        self.amp_metadata = {k: dict(v) for k, v in (amp_metadata or {}).items()}

    def __repr__(self) -> str:
        return (
            f"RawImage(obsid={self.metadata.get('OBSID')!r}, shape={self.image.array.shape}, "
            f"amp={self.layout.data_width}x{self.layout.data_height})"
        )

    @property
    def amp_names(self) -> tuple[str, ...]:
        """Amplifier names in raw HDU order."""
        return AMP_NAMES

    def geometry(self, amp: str) -> AmpGeometry:
        """Geometry of one amplifier."""
        return self.layout.geometry(amp)

    def amplifiers(self) -> Iterator[AmpGeometry]:
        """Iterate over the geometry of every amplifier, in HDU order."""
        for name in AMP_NAMES:
            yield self.layout.geometry(name)

    def amp_array(self, amp: str) -> np.ndarray:
        """Raw array of one amplifier in *raw readout orientation*
        (a view into `image`; data section at `AmpGeometry.raw_data`)."""
        geom = self.layout.geometry(amp)
        tile = self.image.array[geom.untrimmed_tile]
        return geom.from_detector_orientation(tile)

    def copy(self) -> RawImage:
        """Return a deep copy."""
        return RawImage(self.image.copy(), self.layout, self.metadata, self.amp_metadata)


def _amp_hdus(hdul: fits.HDUList, filename: str) -> dict[str, fits.ImageHDU | fits.CompImageHDU]:
    """Find the amplifier image HDUs of a raw file, keyed by amp name."""
    hdus: dict[str, Any] = {}
    for hdu in hdul[1:]:
        if not isinstance(hdu, (fits.ImageHDU, fits.CompImageHDU)):
            continue
        extname = str(hdu.header.get("EXTNAME", "")).strip()
        if not extname.startswith("Segment"):
            continue
        amp = "C" + extname.removeprefix("Segment")
        if amp not in AMP_NAMES:
            raise RawFormatError(f"{filename}: unexpected amplifier extension {extname!r}")
        if amp in hdus:
            raise RawFormatError(f"{filename}: duplicate amplifier extension {extname!r}")
        hdus[amp] = hdu
    missing = [a for a in AMP_NAMES if a not in hdus]
    if missing:
        raise RawFormatError(
            f"{filename}: not a raw ITL detector file: missing amplifier extensions "
            + ", ".join("Segment" + a[1:] for a in missing)
        )
    return hdus


def _layout_from_header(header: fits.Header, filename: str, amp: str) -> AmpLayout:
    """Derive the amplifier layout from one amp HDU's header."""
    nx = int(header.get("ZNAXIS1", header.get("NAXIS1", 0)))
    ny = int(header.get("ZNAXIS2", header.get("NAXIS2", 0)))
    if "DATASEC" not in header:
        raise RawFormatError(f"{filename}: amplifier {amp} has no DATASEC")
    x1, x2, y1, y2 = _parse_section(header["DATASEC"], f"{filename}: {amp} DATASEC")
    if x2 < x1 or y2 < y1 or y1 != 1 or x1 < 1 or x2 > nx or y2 > ny:
        raise RawFormatError(f"{filename}: amplifier {amp} DATASEC {header['DATASEC']} inconsistent with {nx}x{ny}")
    prescan = x1 - 1
    width = x2 - x1 + 1
    height = y2
    return AmpLayout(
        data_width=width,
        data_height=height,
        prescan=prescan,
        serial_overscan=nx - x2,
        parallel_overscan=ny - height,
    )


def read_primary_header(path: str | os.PathLike) -> dict[str, Any]:
    """Read the primary header of a FITS file as a dict.

    Raises
    ------
    RawFormatError
        If the file is not a readable FITS file.
    """
    filename = os.fspath(path)
    try:
        with fits.open(filename, memmap=False, lazy_load_hdus=True) as hdul:
            return _header_to_dict(hdul[0].header)
    except (OSError, ValueError, TypeError, IndexError) as err:
        raise RawFormatError(f"{filename}: not a readable FITS file ({err})") from err


def read_raw_header(path: str | os.PathLike) -> dict[str, Any]:
    """Read the primary header of a raw file, merged with the header of its
    first amplifier extension (as `astro_metadata_translator` expects).

    Raises
    ------
    RawFormatError
        If the file is not a readable FITS file or has no amplifier HDU.
    """
    filename = os.fspath(path)
    try:
        with fits.open(filename, memmap=False, lazy_load_hdus=True) as hdul:
            primary = _header_to_dict(hdul[0].header)
            first = None
            for hdu in hdul[1:]:
                if str(hdu.header.get("EXTNAME", "")).startswith("Segment"):
                    first = hdu.header
                    break
    except (OSError, ValueError, TypeError, IndexError) as err:
        raise RawFormatError(f"{filename}: not a readable FITS file ({err})") from err
    if first is None:
        raise RawFormatError(f"{filename}: no amplifier (Segment) extension: not a raw camera file")
    merged = dict(primary)
    for key, value in _header_to_dict(first).items():
        if key in ("XTENSION", "PCOUNT", "GCOUNT", "CHECKSUM", "DATASUM") or key.startswith("Z"):
            continue
        merged[key] = value
    return merged


def read_raw_file(path: str | os.PathLike) -> RawImage:
    """Read a raw camera file into a `RawImage`.

    Raises
    ------
    RawFormatError
        If the file is not a readable FITS file, lacks amplifier HDUs, or
        its amplifiers are inconsistent with each other.
    """
    filename = os.fspath(path)
    try:
        hdul = fits.open(filename, memmap=False)
    except (OSError, ValueError, TypeError) as err:
        raise RawFormatError(f"{filename}: not a readable FITS file ({err})") from err
    with hdul:
        try:
            hdus = _amp_hdus(hdul, filename)
            metadata = _header_to_dict(hdul[0].header)
            layout: AmpLayout | None = None
            amp_metadata: dict[str, dict[str, Any]] = {}
            for amp in AMP_NAMES:
                this = _layout_from_header(hdus[amp].header, filename, amp)
                if layout is None:
                    layout = this
                elif this != layout:
                    raise RawFormatError(f"{filename}: amplifier {amp} geometry {this} differs from {layout}")
                amp_metadata[amp] = _header_to_dict(hdus[amp].header)
            assert layout is not None
            untrimmed = np.empty(
                (layout.n_y * layout.raw_height, layout.n_x * layout.raw_width), dtype=np.float32
            )
            for amp in AMP_NAMES:
                data = hdus[amp].data
                if data is None or data.shape != (layout.raw_height, layout.raw_width):
                    raise RawFormatError(f"{filename}: amplifier {amp} has no data of the declared size")
                geom = layout.geometry(amp)
                untrimmed[geom.untrimmed_tile] = geom.to_detector_orientation(data)
        except RawFormatError:
            raise
        except (OSError, ValueError, TypeError, EOFError) as err:
            # Truncated or corrupt data blocks surface here.
            raise RawFormatError(f"{filename}: corrupt raw file ({err})") from err
    return RawImage(Image(untrimmed, unit=None), layout, metadata, amp_metadata)


def write_raw_file(
    path: str | os.PathLike,
    primary: Mapping[str, Any],
    amp_arrays: Mapping[str, np.ndarray],
    layout: AmpLayout,
    *,
    compress: bool = True,
    comments: Mapping[str, str] | None = None,
) -> None:
    """Write a raw camera file.

    Parameters
    ----------
    path
        Output file.
    primary
        Primary header keywords, in the order they should appear.
    amp_arrays
        Raw arrays in readout orientation, keyed by amplifier name; int32
        (as the camera writes) or float32 (to carry NaN faults).
    layout
        Amplifier layout of the arrays.
    compress
        Tile-compress the amplifier HDUs with RICE_1 (lossless), as the
        camera has done since 2024.
    comments
        Optional comments for primary keywords.
    """
    comments = comments or {}
    phdr = fits.Header()
    for key, value in primary.items():
        card_key = key if len(key) <= 8 and " " not in key else f"HIERARCH {key}"
        phdr[card_key] = (value, comments.get(key, ""))
    hdus: list[Any] = [fits.PrimaryHDU(header=phdr)]
    for amp in AMP_NAMES:
        arr = amp_arrays[amp]
        if arr.shape != (layout.raw_height, layout.raw_width):
            raise ValueError(f"amplifier {amp} array shape {arr.shape} does not match layout")
        hdr = fits.Header()
        for key, value in layout.geometry(amp).header_sections().items():
            hdr[key] = value
        hdr["BUNIT"] = "adu"
        if compress and arr.dtype.kind in "iu":
            hdu = fits.CompImageHDU(np.asarray(arr, dtype=np.int32), header=hdr, compression_type="RICE_1")
        elif compress:
            hdu = fits.CompImageHDU(arr, header=hdr, compression_type="GZIP_2")
        else:
            hdu = fits.ImageHDU(arr, header=hdr)
        hdu.header["EXTNAME"] = layout.geometry(amp).extname
        hdus.append(hdu)
    tmp = os.fspath(path) + ".part"
    fits.HDUList(hdus).writeto(tmp, overwrite=True)
    os.replace(tmp, path)


class RawFormatter(FormatterV2):
    """Butler formatter recorded for raw files ingested by cp_combined.

    Read-only for files ingested from the camera; writing is supported for
    completeness (uncompressed FITS).  Components: ``image`` (untrimmed
    `lsst.images.Image`) and ``metadata`` (primary header as a dict).
    """

    default_extension: ClassVar[str] = ".fits"
    supported_extensions: ClassVar[frozenset[str]] = frozenset({".fits", ".fz", ".fits.fz", ".fits.gz"})
    can_read_from_local_file: ClassVar[bool] = True

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        if component == "metadata":
            return read_raw_header(path)
        raw = read_raw_file(path)
        if component == "image":
            return raw.image
        if component is not None:
            raise ValueError(f"Unknown component {component!r} of a raw image")
        return raw

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        raw: RawImage = in_memory_dataset
        arrays = {a: raw.amp_array(a) for a in AMP_NAMES}
        write_raw_file(uri.ospath, raw.metadata, arrays, raw.layout, compress=False)
