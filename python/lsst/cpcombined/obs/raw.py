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
(`lsst.cpcombined.repo.files`), never with ``butler.get``.  The formatter
recorded at ingest is obs_lsst's for full-size raws (a Science Pipelines
user reads them with ``butler.get``) and `RawFormatter` for simulated raws
at a reduced scale.
"""

from __future__ import annotations

__all__ = (
    "LatissRawFormatter",
    "LsstComCamRawFormatter",
    "RawFormatError",
    "RawFormatter",
    "RawImage",
    "read_hdu_header",
    "read_primary_header",
    "read_raw_file",
    "read_raw_header",
    "read_raw_layout",
    "write_raw_file",
)

import contextlib
import gzip
import io
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import astropy.io.fits as fits
import numpy as np

from lsst.daf.butler import FormatterV2
from lsst.images import Image
from lsst.resources import ResourcePath

from ..repo.tiled_fits import FitsIndex, compressed_image_hdu, extension_hdu, primary_hdu, write_hdus
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


def _amp_hdus(extensions: Any, filename: str) -> dict[str, Any]:
    """Find the amplifier image HDUs among a raw file's extensions (astropy
    HDUs, or `_IndexedHdu`), keyed by amp name."""
    hdus: dict[str, Any] = {}
    for hdu in extensions:
        if not isinstance(hdu, (fits.ImageHDU, fits.CompImageHDU, _IndexedHdu)):
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


def read_hdu_header(path: str | os.PathLike, index: int = 0) -> dict[str, Any]:
    """Read the header of one HDU of a FITS file as a dict (an empty dict
    when the file has no such HDU).

    Raises
    ------
    RawFormatError
        If the file is not a readable FITS file.
    """
    filename = os.fspath(path)
    try:
        with fits.open(filename, memmap=False, lazy_load_hdus=True) as hdul:
            try:
                hdu = hdul[index]
            except IndexError:
                return {}
            return _header_to_dict(hdu.header)
    except (OSError, ValueError, TypeError, IndexError) as err:
        raise RawFormatError(f"{filename}: not a readable FITS file ({err})") from err


def read_primary_header(path: str | os.PathLike) -> dict[str, Any]:
    """Read the primary header of a FITS file as a dict.

    Raises
    ------
    RawFormatError
        If the file is not a readable FITS file.
    """
    return read_hdu_header(path, 0)


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


def read_raw_layout(path: str | os.PathLike) -> AmpLayout:
    """Pixel layout of a raw file, from its amplifier headers only.

    Raises
    ------
    RawFormatError
        If the file is not a raw camera file or its amplifiers disagree.
    """
    filename = os.fspath(path)
    try:
        # Headers only, through the package's index: astropy rebuilds every
        # compressed HDU's image header (~15 ms each).  A gzip-compressed
        # file (as some archived raws are) is decompressed first.
        with contextlib.ExitStack() as stack:
            with open(filename, "rb") as f:
                gzipped = f.read(2) == b"\x1f\x8b"
            if gzipped:
                data = _file_bytes(filename)
                index = FitsIndex(data, len(data), filename)
            else:
                fd = os.open(filename, os.O_RDONLY)
                stack.callback(os.close, fd)
                index = FitsIndex(fd, os.fstat(fd).st_size, filename)
            extensions = [
                _IndexedHdu(index, info.index)
                for info in index.hdus[1:]
                if info.is_compressed_image or info.header.get("XTENSION", "").strip() == "IMAGE"
            ]
        hdus = _amp_hdus(extensions, filename)
        layouts = {amp: _layout_from_header(hdus[amp].header, filename, amp) for amp in AMP_NAMES}
    except RawFormatError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as err:
        raise RawFormatError(f"{filename}: not a readable FITS file ({err})") from err
    first = layouts[AMP_NAMES[0]]
    for amp, layout in layouts.items():
        if layout != first:
            raise RawFormatError(f"{filename}: amplifier {amp} geometry {layout} differs from {first}")
    return first


def _file_bytes(filename: str) -> bytes:
    """The bytes of a FITS file, read at once (a gzip-compressed file
    decompressed: astropy reads its HDUs through a gzip stream that restarts
    for every HDU, several times slower than one decompression)."""
    with open(filename, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data


class _IndexedHdu:
    """An image HDU of a `~lsst.cpcombined.repo.tiled_fits.FitsIndex`, with
    the ``header`` and ``data`` of an astropy image HDU."""

    def __init__(self, index: FitsIndex, position: int) -> None:
        self._index = index
        self._position = position
        self.header = index.image_header(position)

    @property
    def data(self) -> np.ndarray:
        return self._index.read_rows(self._position)


def _indexed_hdus(data: bytes, filename: str) -> tuple[fits.Header, list[_IndexedHdu]] | None:
    """Primary header and image extensions of a file whose amplifier HDUs
    the package decodes itself (plain or ``RICE_1`` tile-compressed
    integers, `~lsst.cpcombined.repo.tiled_fits.FitsIndex`: astropy decodes
    one-row tiles one by one in Python and rebuilds each compressed HDU's
    header, ~0.25 s per full-size raw); `None` for any other file, which
    astropy then reads."""
    try:
        index = FitsIndex(data, len(data), filename)
    except (ValueError, KeyError, TypeError):
        return None
    extensions = []
    for info in index.hdus[1:]:
        if not (info.is_compressed_image or info.header.get("XTENSION", "").strip() == "IMAGE"):
            continue
        if info.name.startswith("SEGMENT") and not info.fast_path():
            return None
        extensions.append(_IndexedHdu(index, info.index))
    return index.hdus[0].header, extensions


def read_raw_file(path: str | os.PathLike) -> RawImage:
    """Read a raw camera file into a `RawImage`.

    Raises
    ------
    RawFormatError
        If the file is not a readable FITS file, lacks amplifier HDUs, or
        its amplifiers are inconsistent with each other.
    """
    filename = os.fspath(path)
    with contextlib.ExitStack() as stack:
        try:
            data = _file_bytes(filename)
            indexed = _indexed_hdus(data, filename)
            if indexed is None:
                hdul = stack.enter_context(fits.open(io.BytesIO(data), memmap=False))
                primary, extensions = hdul[0].header, list(hdul[1:])
            else:
                primary, extensions = indexed
        except (OSError, ValueError, TypeError, EOFError) as err:
            raise RawFormatError(f"{filename}: not a readable FITS file ({err})") from err
        try:
            hdus = _amp_hdus(extensions, filename)
            metadata = _header_to_dict(primary)
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
                pixels = hdus[amp].data
                if pixels is None or pixels.shape != (layout.raw_height, layout.raw_width):
                    raise RawFormatError(f"{filename}: amplifier {amp} has no data of the declared size")
                geom = layout.geometry(amp)
                untrimmed[geom.untrimmed_tile] = geom.to_detector_orientation(pixels)
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
        Tile-compress the amplifier HDUs losslessly, as the camera has done
        since 2024: integer arrays with ``RICE_1`` (tiles of one row,
        `lsst.cpcombined.repo.tiled_fits.compressed_image_hdu`), float
        arrays (fault frames carrying NaN) with ``GZIP_2``.
    comments
        Optional comments for primary keywords.
    """
    comments = comments or {}
    phdr = fits.Header()
    for key, value in primary.items():
        card_key = key if len(key) <= 8 and " " not in key else f"HIERARCH {key}"
        phdr[card_key] = (value, comments.get(key, ""))
    hdus: list[bytes] = [primary_hdu(phdr)]
    for amp in AMP_NAMES:
        arr = amp_arrays[amp]
        if arr.shape != (layout.raw_height, layout.raw_width):
            raise ValueError(f"amplifier {amp} array shape {arr.shape} does not match layout")
        hdr = fits.Header()
        for key, value in layout.geometry(amp).header_sections().items():
            hdr[key] = value
        hdr["BUNIT"] = "adu"
        extname = layout.geometry(amp).extname
        if compress and arr.dtype.kind in "iu":
            hdus.append(compressed_image_hdu(np.asarray(arr, dtype=np.int32), hdr, name=extname))
            continue
        if compress:
            hdu = fits.CompImageHDU(arr, header=hdr, compression_type="GZIP_2")
        else:
            hdu = fits.ImageHDU(arr, header=hdr)
        hdu.header["EXTNAME"] = extname
        hdus.append(extension_hdu(hdu))
    tmp = os.fspath(path) + ".part"
    write_hdus(tmp, hdus)
    os.replace(tmp, path)


class RawFormatter(FormatterV2):
    """Butler formatter recorded for raws that only cp_combined reads.

    Raws of the real, full-size ITL layout are recorded with obs_lsst's raw
    formatter (`LatissRawFormatter`, `LsstComCamRawFormatter`), so that a
    Science Pipelines user reads them with ``butler.get`` like any camera
    raw.  Simulated raws at a reduced geometry scale are not shaped like
    obs_lsst's camera and are recorded with this formatter, which does not
    read them: they are read from their file with `read_raw_file`, as the
    package's tasks do.
    """

    default_extension: ClassVar[str] = ".fits"
    supported_extensions: ClassVar[frozenset[str]] = frozenset({".fits", ".fz", ".fits.fz", ".fits.gz"})
    can_read_from_uri: ClassVar[bool] = True

    def read_from_uri(self, uri: ResourcePath, component: str | None = None, expected_size: int = -1) -> Any:
        raise NotImplementedError(
            f"{uri}: a cp_combined raw is not read with butler.get; read it with "
            "lsst.cpcombined.obs.raw.read_raw_file(butler.getURI(ref).ospath)"
        )


class _ObsLsstRawFormatter(RawFormatter):
    """A raw formatter that records obs_lsst's formatter in the datastore.

    The datastore records a formatter by `name`; these name obs_lsst's raw
    formatters, which read the file when obs_lsst is set up.
    """

    #: Fully qualified name of obs_lsst's formatter.
    obs_lsst_name: ClassVar[str]

    @classmethod
    def name(cls) -> str:
        return cls.obs_lsst_name


class LatissRawFormatter(_ObsLsstRawFormatter):
    """Records ``lsst.obs.lsst.rawFormatter.LatissRawFormatter``."""

    obs_lsst_name = "lsst.obs.lsst.rawFormatter.LatissRawFormatter"


class LsstComCamRawFormatter(_ObsLsstRawFormatter):
    """Records ``lsst.obs.lsst.rawFormatter.LsstComCamRawFormatter``."""

    obs_lsst_name = "lsst.obs.lsst.rawFormatter.LsstComCamRawFormatter"
