"""Tile-compressed FITS images, written and read in whole-row tiles.

FITS stores a compressed image as a binary table with one row per tile
(the tiled-image convention, FITS standard section 10): ``ZIMAGE = T``, the
image's geometry in ``ZBITPIX``/``ZNAXISn``, the tile shape in ``ZTILEn``,
the algorithm in ``ZCMPTYPE``, and each tile's coded bytes in the
``COMPRESSED_DATA`` variable-length column; quantised float tiles add
``ZSCALE`` and ``ZZERO`` columns and ``ZQUANTIZ``/``ZDITHER0`` cards.
CFITSIO, astropy, afw and ds9 read these files.

This module writes such HDUs with the package's numba kernels
(`lsst.cpcombined.algorithms.rice`, `lsst.cpcombined.algorithms.quantize`)
and reads them back, whole or a range of rows, without astropy's
per-tile Python loop:

* `compressed_image_hdu`: the bytes of one compressed HDU, tiles of one
  row (the default of CFITSIO and afw): ``RICE_1`` for integers (uint8,
  int16, int32) losslessly and for float32 quantised with
  ``SUBTRACTIVE_DITHER_2`` and a step per row given by the caller;
  ``GZIP_2`` (bytes shuffled, then gzip) or ``GZIP_1`` for any of those
  types losslessly (``ZQUANTIZ = 'NONE'``: afw's ``lossless`` recipe),
  tiles coded on every core (zlib, and ISA-L's faster inflate from the
  ``isal`` package when decoding, release the GIL);
* `extension_hdu` / `primary_hdu`: any astropy HDU as bytes, to put
  next to them in one file (`write_hdus`);
* `FitsIndex`: where each HDU of a file starts and what it holds, read
  once per file and kept in a small cache keyed by the file's identity
  (device, inode, size, modification time), and `FitsIndex.read_rows`,
  which reads rows ``y0:y1`` of an image HDU with positioned reads of only
  the bytes of their tiles.

Images the fast path does not handle (other algorithms, tiles narrower than
a row, scaled integers, ...) are read through astropy, with the same
result.
"""

from __future__ import annotations

__all__ = (
    "GZIP_ALGORITHMS",
    "FitsIndex",
    "HduInfo",
    "compressed_image_hdu",
    "extension_hdu",
    "primary_hdu",
    "write_hdus",
)

import collections
import concurrent.futures
import dataclasses
import io
import os
import re
import threading
import zlib
from collections.abc import Iterable
from typing import Any

import astropy.io.fits as fits
import numpy as np

try:  # ISA-L's inflate: the same bytes as zlib's, decoded ~1.8x faster
    from isal.isal_zlib import decompress as _inflate
    from isal.isal_zlib import error as _inflate_error
except ImportError:  # pragma: no cover - isal is a dependency; zlib when absent
    from zlib import decompress as _inflate
    from zlib import error as _inflate_error

from ..algorithms.byteshuffle import pack_tiles, unpack_tiles
from ..algorithms.quantize import BLANK_VALUE, N_RANDOM, decode_dequantize_rows, quantize_encode_rows
from ..algorithms.rice import BLOCK_SIZE, decode_rows, encode_rows

#: FITS block size.
_BLOCK = 2880

#: Integer dtypes written losslessly, and their ``ZBITPIX``.
_INTEGER_BITPIX = {np.dtype(np.uint8): 8, np.dtype(np.int16): 16, np.dtype(np.int32): 32}

#: Lossless gzip tile compressions: ``GZIP_2`` shuffles each tile's bytes
#: (all first bytes, then all second bytes, ...) before gzip, which suits
#: floats whose high bytes vary little.
GZIP_ALGORITHMS = ("GZIP_1", "GZIP_2")

#: zlib settings of gzip tiles: level 1, matching runs of one repeated
#: byte only (``Z_RLE``).  On the shuffled bytes of float32 calibrations
#: (full-size LATISS bias, dark, flat) it codes within 1-4 % of level 6 at
#: a third to half of its time, and no slower than Huffman coding alone,
#: whose output is up to 14 % larger; masks (runs of zeros) shrink ~100 x.
_GZIP_LEVEL = 1
_GZIP_STRATEGY = zlib.Z_RLE
#: Tiles per task when coding on several threads.
_GZIP_CHUNK = 256

#: Cards that describe an HDU's structure (not copied from a caller's header).
_STRUCTURAL = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|TFIELDS|T(TYPE|FORM|UNIT|DIM|NULL|SCAL|ZERO)\d+"
    r"|THEAP|Z(IMAGE|TENSION|BITPIX|NAXIS\d*|TILE\d+|CMPTYPE|NAME\d+|VAL\d+|QUANTIZ|DITHER0|BLANK|SIMPLE"
    r"|EXTEND|PCOUNT|GCOUNT|HECKSUM|DATASUM)|BSCALE|BZERO|BLANK|CHECKSUM|DATASUM|EXTNAME|END)$"
)


def _pad(nbytes: int) -> int:
    return -nbytes % _BLOCK


def _header_bytes(header: fits.Header) -> bytes:
    text = header.tostring(sep="", endcard=True, padding=True)
    return text.encode("ascii")


def primary_hdu(header: fits.Header | None = None) -> bytes:
    """The bytes of an empty primary HDU with ``header``'s cards."""
    hdu = fits.PrimaryHDU(header=header)
    hdu.header["EXTEND"] = True
    return _header_bytes(hdu.header)


def extension_hdu(hdu: fits.hdu.base.ExtensionHDU) -> bytes:
    """The bytes of an astropy extension HDU (as astropy writes it)."""
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    data = buffer.getvalue()
    return data[_BLOCK:]  # an empty primary header is exactly one block


def _copy_cards(target: fits.Header, header: fits.Header | None) -> None:
    for card in (header or fits.Header()).cards:
        if card.keyword in ("", "COMMENT", "HISTORY") or not _STRUCTURAL.match(card.keyword):
            target.append(card, end=True)


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _map_chunks(func: Any, n: int) -> list[Any]:
    """``func(lo, hi)`` over chunks of ``range(n)``, on several threads when
    there is more than one chunk; results in order."""
    bounds = [(lo, min(n, lo + _GZIP_CHUNK)) for lo in range(0, n, _GZIP_CHUNK)]
    if len(bounds) <= 1 or _threads() == 1:
        return [func(lo, hi) for lo, hi in bounds]
    with concurrent.futures.ThreadPoolExecutor(_threads()) as pool:
        return list(pool.map(lambda b: func(*b), bounds))


def _gzip_encode_rows(array: np.ndarray, shuffle: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gzip tiles of one row each: the coded heap, tile sizes and offsets."""
    ny = array.shape[0]
    rows = pack_tiles(array, 1, shuffle=shuffle)

    def code(lo: int, hi: int) -> list[bytes]:
        tiles = []
        for y in range(lo, hi):
            coder = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31, 8, _GZIP_STRATEGY)
            tiles.append(coder.compress(rows[y]) + coder.flush())
        return tiles

    tiles = [t for chunk in _map_chunks(code, ny) for t in chunk]
    counts = np.fromiter((len(t) for t in tiles), dtype=np.int64, count=ny)
    offsets = np.zeros(ny, dtype=np.int64)
    np.cumsum(counts[:-1], out=offsets[1:])
    heap = np.frombuffer(b"".join(tiles), dtype=np.uint8)
    return heap, counts, offsets


def _gzip_decode_rows(
    heap: np.ndarray,
    counts: np.ndarray,
    offsets: np.ndarray,
    out: np.ndarray,
    *,
    first_tile: int,
    rows_per_tile: int,
    shuffle: bool,
) -> None:
    """Decode gzip tiles ``first_tile...`` (whole rows each) into ``out``
    (C-contiguous, native byte order)."""
    rows, nx = out.shape
    bytepix = out.dtype.itemsize
    stored = np.empty(rows * nx * bytepix, dtype=np.uint8)
    tile_bytes = rows_per_tile * nx * bytepix
    ntiles = (rows + rows_per_tile - 1) // rows_per_tile

    def decode(lo: int, hi: int) -> None:
        for t in range(lo, hi):
            target = stored[t * tile_bytes : (t + 1) * tile_bytes]
            data = _inflate(heap[offsets[first_tile + t] :][: counts[first_tile + t]], 47)
            if len(data) != target.size:
                raise ValueError(f"tile {first_tile + t} holds {len(data)} bytes, not {target.size}")
            target[...] = np.frombuffer(data, dtype=np.uint8)

    _map_chunks(decode, ntiles)
    unpack_tiles(stored, out, rows_per_tile, shuffle=shuffle)


def compressed_image_hdu(
    array: np.ndarray,
    header: fits.Header | None = None,
    *,
    name: str | None = None,
    quantize_step: np.ndarray | float | None = None,
    dither_seed: int | None = None,
    algorithm: str = "RICE_1",
) -> bytes:
    """The bytes of a tile-compressed image HDU, one row per tile.

    Parameters
    ----------
    array
        2-d image: uint8, int16 or int32 (stored losslessly), or float32
        (``RICE_1``: quantised, ``quantize_step`` is required; ``GZIP_1``,
        ``GZIP_2``: stored losslessly).
    header
        Cards of the image HDU (``BUNIT``, ``MP_*``...); structural cards
        are ignored.
    name
        ``EXTNAME``.
    quantize_step
        Quantisation step of each row (or one for all) of a float image; see
        `lsst.cpcombined.algorithms.quantize.quantize_rows` for how it is
        floored.
    dither_seed
        ``ZDITHER0`` (1..10000); by default derived from the first row's
        bytes, so the same pixels give the same file.
    algorithm
        ``RICE_1`` (default), ``GZIP_1`` or ``GZIP_2`` (lossless; no
        ``quantize_step``).

    Returns
    -------
    hdu
        The header and data blocks.

    Raises
    ------
    ValueError
        Another dtype or algorithm, a float image without step (``RICE_1``)
        or holding infinities, a step given to a lossless algorithm.
    """
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"compressed_image_hdu takes a 2-d image, not {array.ndim}-d")
    if algorithm not in ("RICE_1", *GZIP_ALGORITHMS):
        raise ValueError(f"unknown tile compression {algorithm!r} (RICE_1, GZIP_1 or GZIP_2)")
    dtype = array.dtype.newbyteorder("=")
    ny, nx = array.shape
    gzip = algorithm in GZIP_ALGORITHMS
    if gzip and quantize_step is not None:
        raise ValueError(f"{algorithm} is written losslessly: give no quantize_step")
    quantized = dtype == np.float32 and not gzip
    nblank = 0
    scales = zeros = None
    seed = 0
    if gzip:
        if dtype not in (*_INTEGER_BITPIX, np.dtype(np.float32)):
            raise ValueError(f"cannot tile-compress a {array.dtype} image (uint8, int16, int32 or float32)")
        bytepix = dtype.itemsize
        zbitpix = -32 if dtype.kind == "f" else _INTEGER_BITPIX[dtype]
        heap, counts, offsets = _gzip_encode_rows(array.astype(dtype, copy=False), algorithm == "GZIP_2")
    elif quantized:
        if quantize_step is None:
            raise ValueError("a float32 image is quantised: give quantize_step")
        if dither_seed is None:
            first = np.ascontiguousarray(array[:1], dtype=np.float32).tobytes()
            dither_seed = 1 + zlib.crc32(first) % N_RANDOM
        seed = int(dither_seed)
        heap, counts, offsets, scales, zeros, nblank = quantize_encode_rows(array, quantize_step, seed)
        zbitpix, bytepix = -32, 4
    elif dtype in _INTEGER_BITPIX:
        zbitpix, bytepix = _INTEGER_BITPIX[dtype], dtype.itemsize
        heap, counts, offsets = encode_rows(np.ascontiguousarray(array, dtype=dtype), bytepix)
    else:
        raise ValueError(f"cannot tile-compress a {array.dtype} image (uint8, int16, int32 or float32)")
    row = [("count", ">i4"), ("offset", ">i4")]
    if quantized:
        row += [("zscale", ">f8"), ("zzero", ">f8")]
    table = np.empty(ny, dtype=row)
    table["count"] = counts
    table["offset"] = offsets
    if quantized:
        table["zscale"] = scales
        table["zzero"] = zeros
    h = fits.Header()
    h["XTENSION"] = ("BINTABLE", "binary table extension")
    h["BITPIX"] = 8
    h["NAXIS"] = 2
    h["NAXIS1"] = (table.dtype.itemsize, "width of table in bytes")
    h["NAXIS2"] = (ny, "number of rows in table")
    h["PCOUNT"] = (heap.size, "size of the heap")
    h["GCOUNT"] = 1
    h["TFIELDS"] = 3 if quantized else 1
    h["TTYPE1"] = "COMPRESSED_DATA"
    h["TFORM1"] = f"1PB({int(counts.max()) if ny else 0})"
    if quantized:
        h["TTYPE2"] = "ZSCALE"
        h["TFORM2"] = "1D"
        h["TTYPE3"] = "ZZERO"
        h["TFORM3"] = "1D"
    h["ZIMAGE"] = (True, "extension contains compressed image")
    h["ZTENSION"] = ("IMAGE", "Image extension")
    h["ZBITPIX"] = (zbitpix, "array data type")
    h["ZNAXIS"] = (2, "number of array dimensions")
    h["ZNAXIS1"] = nx
    h["ZNAXIS2"] = ny
    h["ZPCOUNT"] = 0
    h["ZGCOUNT"] = 1
    h["ZTILE1"] = (nx, "size of tiles to be compressed")
    h["ZTILE2"] = (1, "size of tiles to be compressed")
    h["ZCMPTYPE"] = (algorithm, "compression algorithm")
    if gzip:
        if zbitpix < 0:
            h["ZQUANTIZ"] = ("NONE", "Lossless compression without quantization")
    else:
        h["ZNAME1"] = ("BLOCKSIZE", "compression block size")
        h["ZVAL1"] = (BLOCK_SIZE, "pixels per block")
        h["ZNAME2"] = ("BYTEPIX", "bytes per pixel (1, 2, 4, or 8)")
        h["ZVAL2"] = (bytepix, "bytes per pixel (1, 2, 4, or 8)")
    if quantized:
        h["ZQUANTIZ"] = ("SUBTRACTIVE_DITHER_2", "Pixel Quantization Algorithm")
        h["ZDITHER0"] = (seed, "dithering offset when quantizing floats")
        if nblank:
            h["ZBLANK"] = (BLANK_VALUE, "quantised value of NaN")
    if name is not None:
        h["EXTNAME"] = name
    _copy_cards(h, header)
    size = table.nbytes + heap.nbytes
    # One copy of the coded tiles (the heap is joined as a view).
    heap_view = memoryview(np.ascontiguousarray(heap, dtype=np.uint8))
    return b"".join((_header_bytes(h), table.tobytes(), heap_view, b"\0" * _pad(size)))


def write_hdus(path: str | os.PathLike, hdus: Iterable[bytes]) -> None:
    """Write HDU bytes (a primary first) as one FITS file."""
    with open(os.fspath(path), "wb") as f:
        for hdu in hdus:
            f.write(hdu)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])(.*)$")
_TFORM_BYTES = {
    "L": 1, "X": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8, "M": 16, "P": 8, "Q": 16
}
_TFORM_DTYPE = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}
_BITPIX_DTYPE = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


@dataclasses.dataclass
class HduInfo:
    """Where one HDU of a file is and what it holds.

    Attributes
    ----------
    index
        Position in the file (0 = primary).
    header
        The HDU's header as stored (a compressed image's is the table's).
    data_offset, data_size
        Byte offset and size (without padding) of its data.
    name
        ``EXTNAME`` (upper case) or ``""``.
    """

    index: int
    header: fits.Header
    data_offset: int
    data_size: int
    name: str
    _tiles: Any = None  # decoded tile table of a compressed image (cached)

    @property
    def is_compressed_image(self) -> bool:
        """Whether this is a tile-compressed image."""
        xtension = str(self.header.get("XTENSION", "")).strip()
        return xtension == "BINTABLE" and bool(self.header.get("ZIMAGE", False))

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of a 2-d image HDU."""
        prefix = "Z" if self.is_compressed_image else ""
        if int(self.header.get(f"{prefix}NAXIS", 0)) != 2:
            raise ValueError(f"HDU {self.index} ({self.name or 'no name'}) is not a 2-d image")
        return int(self.header[f"{prefix}NAXIS2"]), int(self.header[f"{prefix}NAXIS1"])

    def fast_path(self) -> bool:
        """Whether `FitsIndex.read_rows` decodes this HDU itself."""
        h = self.header
        if not self.is_compressed_image:
            if int(h.get("NAXIS", 0)) != 2 or int(h.get("BITPIX", 0)) not in _BITPIX_DTYPE:
                return False
            return float(h.get("BSCALE", 1.0)) == 1.0 and float(h.get("BZERO", 0.0)) == 0.0
        algorithm = str(h.get("ZCMPTYPE", "")).strip()
        if algorithm not in ("RICE_1", "RICE_ONE", *GZIP_ALGORITHMS) or int(h.get("ZNAXIS", 0)) != 2:
            return False
        if int(h.get("ZTILE1", -1)) != int(h["ZNAXIS1"]):
            return False
        if float(h.get("BSCALE", 1.0)) != 1.0 or float(h.get("BZERO", 0.0)) != 0.0:
            return False
        columns = {str(h[f"TTYPE{i}"]).strip().upper() for i in range(1, int(h["TFIELDS"]) + 1)}
        if algorithm in GZIP_ALGORITHMS:
            # Lossless tiles only (quantised gzip tiles go to astropy).
            return int(h["ZBITPIX"]) in (8, 16, 32, -32) and columns == {"COMPRESSED_DATA"}
        params = {str(h.get(f"ZNAME{i}", "")).strip().upper(): h.get(f"ZVAL{i}") for i in range(1, 10)}
        if int(params.get("BLOCKSIZE", BLOCK_SIZE)) != BLOCK_SIZE:
            return False
        # Tiles that could not be quantised are stored in GZIP_COMPRESSED_DATA
        # or UNCOMPRESSED_DATA (their COMPRESSED_DATA is empty): such a tile
        # sends the read to astropy (`FitsIndex.read_rows`).
        columns -= {"GZIP_COMPRESSED_DATA", "UNCOMPRESSED_DATA"}
        zbitpix = int(h["ZBITPIX"])
        if zbitpix < 0:
            method = str(h.get("ZQUANTIZ", "NO_DITHER")).strip()
            return (
                zbitpix == -32
                and method in ("SUBTRACTIVE_DITHER_1", "SUBTRACTIVE_DITHER_2")
                and columns == {"COMPRESSED_DATA", "ZSCALE", "ZZERO"}
            )
        return zbitpix in (8, 16, 32) and columns == {"COMPRESSED_DATA"}


def _read_at(f: Any, offset: int, size: int) -> bytes:
    if isinstance(f, (bytes, bytearray, memoryview)):
        return bytes(f[offset : offset + size])
    data = os.pread(f, size, offset)
    if len(data) != size:
        raise ValueError(f"file ends before byte {offset + size}")
    return data


def _scan(source: Any, size: int) -> list[HduInfo]:
    """Headers and data positions of every HDU."""
    hdus: list[HduInfo] = []
    offset = 0
    while offset < size:
        chunks: list[bytes] = []
        while True:
            if offset + _BLOCK > size:
                if not hdus:
                    raise ValueError("not a FITS file (no complete header)")
                return hdus  # trailing bytes after the last HDU
            block = _read_at(source, offset, _BLOCK)
            if not chunks:
                first = b"SIMPLE  " if not hdus else b"XTENSION"
                if not block.startswith(first):
                    if not hdus:
                        raise ValueError("not a FITS file (no SIMPLE card)")
                    return hdus  # trailing bytes after the last HDU
            offset += _BLOCK
            chunks.append(block)
            if _has_end(block):
                break
        header = fits.Header.fromstring(b"".join(chunks).decode("ascii", errors="replace"))
        bitpix = abs(int(header.get("BITPIX", 8)))
        naxis = int(header.get("NAXIS", 0))
        count = 0
        if naxis:
            count = 1
            for i in range(1, naxis + 1):
                count *= int(header[f"NAXIS{i}"])
        data_size = bitpix // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + count)
        name = str(header.get("EXTNAME", "")).strip().upper()
        hdus.append(HduInfo(len(hdus), header, offset, data_size, name))
        offset += data_size + _pad(data_size)
    return hdus


def _has_end(block: bytes) -> bool:
    for i in range(0, _BLOCK, 80):
        if block[i : i + 8] == b"END     ":
            return True
    return False


@dataclasses.dataclass
class _Tiles:
    counts: np.ndarray
    offsets: np.ndarray
    scales: np.ndarray | None
    zeros: np.ndarray | None
    heap_start: int  # absolute file offset of the heap


def _tile_table(source: Any, hdu: HduInfo) -> _Tiles:
    h = hdu.header
    fields = []
    for i in range(1, int(h["TFIELDS"]) + 1):
        m = _TFORM.match(str(h[f"TFORM{i}"]))
        if m is None:
            raise ValueError(f"cannot read TFORM{i} = {h[f'TFORM{i}']!r}")
        repeat = int(m.group(1) or 1)
        code = m.group(2)
        name = str(h[f"TTYPE{i}"]).strip().upper()
        if code in "PQ":
            width = 4 if code == "P" else 8
            fields.append((name, f">i{width}", (2,)))
        else:
            dtype = _TFORM_DTYPE.get(code, "u1")
            nbytes = _TFORM_BYTES[code] * repeat
            fields.append((name, dtype if repeat == 1 and code in _TFORM_DTYPE else f"V{nbytes}"))
    dtype = np.dtype(fields)
    width = int(h["NAXIS1"])
    if dtype.itemsize != width:
        raise ValueError(f"table rows are {width} bytes, the TFORMs say {dtype.itemsize}")
    nrows = int(h["NAXIS2"])
    table = np.frombuffer(_read_at(source, hdu.data_offset, width * nrows), dtype=dtype)
    descriptors = table["COMPRESSED_DATA"].astype(np.int64)
    names = dtype.names or ()
    theap = int(h.get("THEAP", width * nrows))
    return _Tiles(
        counts=descriptors[:, 0].copy(),
        offsets=descriptors[:, 1].copy(),
        scales=table["ZSCALE"].astype(np.float64) if "ZSCALE" in names else None,
        zeros=table["ZZERO"].astype(np.float64) if "ZZERO" in names else None,
        heap_start=hdu.data_offset + theap,
    )


class FitsIndex:
    """The HDUs of one FITS file, for reading images or rows of them.

    Use `FitsIndex.of` (cached per file) for files on disk, or construct
    from a buffer holding a whole file.

    Parameters
    ----------
    source
        A file descriptor (`int`, kept open by the caller for the index's
        use) or the file's bytes.
    size
        Size of the file.
    path
        File name (for messages and the astropy fallback).
    """

    _cache: collections.OrderedDict[tuple, FitsIndex] = collections.OrderedDict()
    _cache_lock = threading.Lock()
    #: Files whose index is kept (a combine reads row blocks of every input in turn).
    cache_size = 64

    def __init__(self, source: Any, size: int, path: str = "<memory>") -> None:
        self.path = path
        self._source = source
        self.hdus = _scan(source, size)
        self._tile_lock = threading.Lock()

    @classmethod
    def of(cls, path: str | os.PathLike) -> FitsIndex:
        """The index of a file on disk (read once per file version)."""
        path = os.fspath(path)
        st = os.stat(path)
        key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with cls._cache_lock:
            index = cls._cache.get(key)
            if index is not None:
                cls._cache.move_to_end(key)
                return index
        fd = os.open(path, os.O_RDONLY)
        try:
            index = cls(fd, st.st_size, path)
            # The headers are read; tile tables are read on first use with
            # their own descriptor, so the index keeps no file open.
            index._source = None
        finally:
            os.close(fd)
        with cls._cache_lock:
            cls._cache[key] = index
            while len(cls._cache) > cls.cache_size:
                cls._cache.popitem(last=False)
        return index

    @classmethod
    def forget(cls, path: str | os.PathLike | None = None) -> None:
        """Drop cached indexes (of one file, or all)."""
        with cls._cache_lock:
            for key in list(cls._cache):
                if path is None or key[0] == os.fspath(path):
                    del cls._cache[key]

    def hdu(self, key: int | str) -> HduInfo:
        """An HDU by position or ``EXTNAME``."""
        if isinstance(key, int):
            return self.hdus[key]
        for hdu in self.hdus:
            if hdu.name == key.upper():
                return hdu
        raise KeyError(f"{self.path} has no HDU {key!r}")

    def _with_source(self, func: Any) -> Any:
        if self._source is not None:
            return func(self._source)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return func(fd)
        finally:
            os.close(fd)

    def read_rows(
        self, key: int | str, y0: int = 0, y1: int | None = None, columns: slice | None = None
    ) -> np.ndarray:
        """Rows ``y0:y1`` (and ``columns``) of a 2-d image HDU.

        Returns
        -------
        pixels
            Native-byte-order array: the stored integer type, or float32
            for quantised float images (NaN where blank).
        """
        hdu = self.hdu(key)
        ny, nx = hdu.shape
        y1 = ny if y1 is None else y1
        columns = slice(None) if columns is None else columns
        if not 0 <= y0 <= y1 <= ny:
            where = f"{self.path}[{hdu.name or hdu.index}]"
            raise ValueError(f"rows {y0}:{y1} are outside the {ny} rows of {where}")
        if not hdu.fast_path():
            return self._read_with_astropy(hdu, y0, y1, columns)
        if not hdu.is_compressed_image:
            dtype = np.dtype(_BITPIX_DTYPE[int(hdu.header["BITPIX"])])
            row_bytes = nx * dtype.itemsize
            start, size = hdu.data_offset + y0 * row_bytes, (y1 - y0) * row_bytes
            raw = self._with_source(lambda s: _read_at(s, start, size))
            pixels = np.frombuffer(raw, dtype=dtype).reshape(y1 - y0, nx)[:, columns]
            return pixels.astype(dtype.newbyteorder("="))
        return self._read_compressed(hdu, y0, y1)[:, columns]

    def read_bytes(self, key: int | str) -> bytes:
        """The data bytes of an uncompressed HDU, as stored (big-endian)."""
        hdu = self.hdu(key)
        if hdu.is_compressed_image:
            raise ValueError(f"{self.path}[{hdu.name or hdu.index}] is compressed: use read_rows")
        return self._with_source(lambda s: _read_at(s, hdu.data_offset, hdu.data_size))

    def _tiles(self, hdu: HduInfo) -> _Tiles:
        with self._tile_lock:
            if hdu._tiles is None:
                hdu._tiles = self._with_source(lambda s: _tile_table(s, hdu))
            return hdu._tiles

    def _read_compressed(self, hdu: HduInfo, y0: int, y1: int) -> np.ndarray:
        h = hdu.header
        ny, nx = hdu.shape
        rows_per_tile = int(h.get("ZTILE2", 1))
        tiles = self._tiles(hdu)
        t0, t1 = y0 // rows_per_tile, (y1 + rows_per_tile - 1) // rows_per_tile
        zbitpix = int(h["ZBITPIX"])
        if y1 == y0:
            return np.empty((0, nx), dtype=np.float32 if zbitpix < 0 else _BITPIX_DTYPE[zbitpix].lstrip(">"))
        if not np.all(tiles.counts[t0:t1] > 0):
            return self._read_with_astropy(hdu, y0, y1, slice(None))
        start = int(tiles.offsets[t0:t1].min())
        end = int((tiles.offsets[t0:t1] + tiles.counts[t0:t1]).max())
        heap = np.frombuffer(
            self._with_source(lambda s: _read_at(s, tiles.heap_start + start, end - start)), dtype=np.uint8
        )
        rows = min(ny, t1 * rows_per_tile) - t0 * rows_per_tile
        bytepix = 4 if zbitpix < 0 else zbitpix // 8
        algorithm = str(h["ZCMPTYPE"]).strip()
        if algorithm in GZIP_ALGORITHMS:
            pixels = np.empty((rows, nx), dtype=_BITPIX_DTYPE[zbitpix].lstrip(">"))
            try:
                _gzip_decode_rows(
                    heap,
                    tiles.counts,
                    tiles.offsets - start,
                    pixels,
                    first_tile=t0,
                    rows_per_tile=rows_per_tile,
                    shuffle=algorithm == "GZIP_2",
                )
            except (ValueError, zlib.error, _inflate_error) as err:
                raise ValueError(f"{self.path}[{hdu.name or hdu.index}]: {err}") from None
            skip = y0 - t0 * rows_per_tile
            return pixels[skip : skip + (y1 - y0)]
        params = {str(h.get(f"ZNAME{i}", "")).strip().upper(): h.get(f"ZVAL{i}") for i in range(1, 10)}
        if int(params.get("BYTEPIX", bytepix)) != bytepix:
            raise ValueError(f"{self.path}[{hdu.name}]: BYTEPIX {params['BYTEPIX']} for ZBITPIX {zbitpix}")
        try:
            if zbitpix < 0:
                blank = h.get("ZBLANK")
                pixels = np.empty((rows, nx), dtype=np.float32)
                decode_dequantize_rows(
                    heap,
                    tiles.counts,
                    tiles.offsets - start,
                    pixels,
                    scales=tiles.scales,
                    zeros=tiles.zeros,
                    seed=int(h.get("ZDITHER0", 1)),
                    first_tile=t0,
                    rows_per_tile=rows_per_tile,
                    blank=None if blank is None else int(blank),
                    zero_coded=str(h.get("ZQUANTIZ", "")).strip() == "SUBTRACTIVE_DITHER_2",
                )
            else:
                decoded = np.empty((rows, nx), dtype=np.dtype(f"i{bytepix}"))
                decode_rows(
                    heap,
                    tiles.counts,
                    tiles.offsets - start,
                    decoded,
                    bytepix=bytepix,
                    first_tile=t0,
                    rows_per_tile=rows_per_tile,
                )
                pixels = decoded.view(np.uint8) if zbitpix == 8 else decoded
        except ValueError as err:
            raise ValueError(f"{self.path}[{hdu.name or hdu.index}]: {err}") from None
        skip = y0 - t0 * rows_per_tile
        return pixels[skip : skip + (y1 - y0)]

    def _read_with_astropy(self, hdu: HduInfo, y0: int, y1: int, columns: slice) -> np.ndarray:
        def read(source: Any) -> np.ndarray:
            if isinstance(source, int):
                opened = fits.open(self.path, memmap=False, lazy_load_hdus=True)
            else:
                opened = fits.open(io.BytesIO(bytes(source)), memmap=False, lazy_load_hdus=True)
            with opened as hdul:
                data = np.asarray(hdul[hdu.index].section[y0:y1, columns])
            return data.astype(data.dtype.newbyteorder("="))

        return self._with_source(read)

    def image_header(self, key: int | str) -> fits.Header:
        """The header of an image HDU as an image's (a compressed image's
        table and compression cards left out, ``BITPIX``/``NAXISn`` its
        image's)."""
        hdu = self.hdu(key)
        if not hdu.is_compressed_image:
            return hdu.header
        h = hdu.header
        out = fits.Header()
        out["XTENSION"] = "IMAGE"
        out["BITPIX"] = int(h["ZBITPIX"])
        out["NAXIS"] = int(h["ZNAXIS"])
        for i in range(1, int(h["ZNAXIS"]) + 1):
            out[f"NAXIS{i}"] = int(h[f"ZNAXIS{i}"])
        out["PCOUNT"] = 0
        out["GCOUNT"] = 1
        if "EXTNAME" in h:
            out["EXTNAME"] = h["EXTNAME"]
        _copy_cards(out, h)
        return out
