"""Memory-bounded, multithreaded combination of a stack of images.

This is the engine behind the combined bias, dark and flat: a per-pixel
sigma-clipped mean (or median) across ``N`` input images that honours the
inputs' bitmasks, divides each input by a scale factor, estimates the
variance of the combined value and records how many inputs were used.

Inputs are *sources* (`BlockSource`): objects that deliver a block of rows
``[y0:y1, :]`` of their image (and optionally mask and variance) on demand.
The engine walks the image in row blocks, asks every source for the current
block, combines it and moves on, so at any time it only holds
``N × block_rows × nx`` input values; ``block_rows`` is derived from a
memory budget.  Two sources are provided here: `ArraySource` (in-memory
arrays, blocks are zero-copy views) and `NpyFileSource` (``.npy`` files read
block by block with positioned reads, so neither the process's heap nor its
resident set grows with the number of inputs).  Any other storage (e.g. a
butler dataset read by bounding box) only needs to implement
`BlockSource.read_block`.

The numerical work is done by numba kernels (``parallel=True``,
``cache=True``, no fast-math): threads share the rows of a block, and a row
is processed in tiles of ``N × 512`` values that stay in the CPU cache.  For
the clipped mean, one vectorised pass per tile gives every column's first
iteration (mean and population std from float64 moments shifted by one of
the column's own values, so that they suffer no cancellation) and its
extreme values.  A column whose extremes lie within the first iteration's
bounds is final, since no iteration would reject anything; the others
(typically those holding an outlier, a NaN or an inf) are gathered and
clipped on: one vectorised pass for all of them, then scalar passes for the
few that need a third iteration.  Values are accumulated in float64.  The
kernels read the input blocks by address rather than through numba's
reference-counted arrays: taking a row of an array shared by all threads
would otherwise cost an atomic increment and decrement of one counter that
every thread writes to.

Statistics
----------
``method="clipped_mean"`` reproduces ``astropy.stats.sigma_clip(data,
sigma=nsigma, maxiters=niter, cenfunc="mean", stdfunc="std", axis=0)
.mean(axis=0)``: at each of at most ``niter`` iterations the mean and the
population standard deviation (``ddof=0``) of the values still kept are
computed, and values strictly below ``mean - nsigma_low * std`` or strictly
above ``mean + nsigma_high * std`` are rejected; a pixel stops iterating as
soon as an iteration rejects nothing (astropy's stopping rule, which is
global there but equivalent per pixel, since an iteration that changes
nothing leaves the bounds unchanged).  The result is the mean of the values
kept after the last iteration.  ``method="median"`` is the plain median of
the good values (mean of the two central values when their number is even).

Rounding: the bounds are widened by ``1e-13 × |mean|`` so that ties (values
equal to the mean, zero spread) are never clipped by a rounding error.  The
only differences from astropy are then decisions about values lying within
a few float64 rounding errors of a bound (astropy itself works in float32
for float32 data, with errors a billion times larger), and the last digits
of float64 sums added in a different order.
"""

from __future__ import annotations

__all__ = (
    "DEFAULT_BAD_BITS",
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "ArraySource",
    "BlockSource",
    "CombineResult",
    "NpyFileSource",
    "SourceBlock",
    "as_rows",
    "choose_block_rows",
    "clipped_mean",
    "clipped_stats",
    "combine",
    "regular_subsample",
    "window_moments",
    "write_npy_source",
)

import abc
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import carray, get_num_threads, njit, prange, types
from numba.extending import intrinsic

from . import masks

#: Mask bits excluded from the combination by default (biases and flats;
#: darks add ``CR``: ``DEFAULT_BAD_BITS | masks.BIT["CR"]``).
DEFAULT_BAD_BITS: int = masks.bits("SAT", "DETECTED", "INTRP")

#: Default budget for the block buffer (the ``N × block_rows × nx`` input
#: values held at once), in bytes.
DEFAULT_MEMORY_BUDGET_BYTES: int = 256 * 1024**2

_METHODS = ("clipped_mean", "median")
_VARIANCE_METHODS = ("auto", "empirical", "propagated")
_M_CLIPPED_MEAN = 0
_M_MEDIAN = 1

_HALF_PI = 0.5 * math.pi


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceBlock:
    """Rows ``[y0:y1, :]`` of one input.

    Attributes
    ----------
    image : `numpy.ndarray`
        ``(y1 - y0, nx)`` floating-point values.
    mask : `numpy.ndarray` or `None`
        ``(y1 - y0, nx)`` uint8 bitmask (`lsst.cpcombined.algorithms.masks`),
        or `None` when the input has no mask.
    variance : `numpy.ndarray` or `None`
        ``(y1 - y0, nx)`` per-pixel variance of ``image``, or `None`.
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    variance: np.ndarray | None = None


class BlockSource(abc.ABC):
    """One input image that can deliver blocks of rows on demand.

    Implementations must provide `shape`, `dtype`, `has_mask`,
    `has_variance` and `read_block`.  The engine calls `read_block` with
    increasing, non-overlapping row ranges and is done with the arrays of one
    block before it asks for the next one, so an implementation may reuse a
    single buffer for all its blocks: the returned arrays only need to stay
    valid until the next `read_block` call on the same source.
    """

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the full image."""

    @property
    def dtype(self) -> np.dtype:
        """Data type of the image blocks (float32 unless overridden)."""
        return np.dtype(np.float32)

    @property
    def has_mask(self) -> bool:
        """Whether `read_block` returns a mask."""
        return False

    @property
    def has_variance(self) -> bool:
        """Whether `read_block` returns a variance."""
        return False

    @abc.abstractmethod
    def read_block(self, y0: int, y1: int) -> SourceBlock:
        """Return rows ``[y0:y1, :]`` of the image (and mask / variance).

        Parameters
        ----------
        y0, y1 : `int`
            First and one-past-last row, ``0 <= y0 < y1 <= ny``.

        Returns
        -------
        block : `SourceBlock`
            Arrays of shape ``(y1 - y0, nx)``; ``mask`` is `None` unless
            `has_mask`, ``variance`` is `None` unless `has_variance`.
        """


def _check_plane(name: str, arr: np.ndarray | None, shape: tuple[int, int]) -> None:
    if arr is not None and arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")


class ArraySource(BlockSource):
    """A source backed by in-memory (or memory-mapped) 2-d arrays.

    Blocks are views of the arrays, so no input data is copied.  A
    `numpy.memmap` works too, but the pages it touches stay mapped (and are
    counted in the process's resident set) for as long as the memmap lives;
    use `NpyFileSource` to keep the resident set bounded.

    Parameters
    ----------
    image : `numpy.ndarray`
        2-d image ``[y, x]``.
    mask : `numpy.ndarray`, optional
        uint8 bitmask of the same shape.
    variance : `numpy.ndarray`, optional
        Variance plane of the same shape.
    """

    def __init__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        variance: np.ndarray | None = None,
    ) -> None:
        image = np.asanyarray(image)
        if image.ndim != 2:
            raise ValueError(f"image must be 2-d, got shape {image.shape}")
        _check_plane("mask", mask, image.shape)
        _check_plane("variance", variance, image.shape)
        self._image = image
        self._mask = mask
        self._variance = variance

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._image.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self._image.dtype

    @property
    def has_mask(self) -> bool:
        return self._mask is not None

    @property
    def has_variance(self) -> bool:
        return self._variance is not None

    def read_block(self, y0: int, y1: int) -> SourceBlock:
        return SourceBlock(
            self._image[y0:y1],
            None if self._mask is None else self._mask[y0:y1],
            None if self._variance is None else self._variance[y0:y1],
        )


@dataclass
class _NpyPlane:
    """Location of a C-ordered 2-d array inside a ``.npy`` file."""

    path: Path
    offset: int
    shape: tuple[int, int]
    dtype: np.dtype
    buffer: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> _NpyPlane:
        path = Path(path)
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
        if len(shape) != 2:
            raise ValueError(f"{path}: expected a 2-d array, got shape {shape}")
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered arrays are not supported")
        if dtype.hasobject:
            raise ValueError(f"{path}: object arrays are not supported")
        return cls(path, offset, (int(shape[0]), int(shape[1])), np.dtype(dtype))

    def read(self, y0: int, y1: int) -> np.ndarray:
        """Read rows ``[y0:y1]`` into a buffer reused between calls."""
        nrows, nx = y1 - y0, self.shape[1]
        if self.buffer is None or self.buffer.shape[0] < nrows:
            self.buffer = np.empty((nrows, nx), dtype=self.dtype)
        out = self.buffer[:nrows]
        view = memoryview(out.reshape(-1).view(np.uint8))
        start = self.offset + y0 * nx * self.dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            done = 0
            while done < len(view):
                n = os.preadv(fd, [view[done:]], start + done)
                if n <= 0:
                    raise OSError(f"{self.path}: short read at byte {start + done}")
                done += n
        finally:
            os.close(fd)
        return out


class NpyFileSource(BlockSource):
    """A source backed by ``.npy`` files on disk, read block by block.

    Each block is read with positioned reads straight into a buffer owned by
    the source (reused from one block to the next), so neither the heap nor
    the resident set grows with the size of the files: the page cache holds
    the file data, outside the process.

    Parameters
    ----------
    image_path : path-like
        ``.npy`` file of a 2-d, C-ordered image.
    mask_path : path-like, optional
        ``.npy`` file of its uint8 bitmask.
    variance_path : path-like, optional
        ``.npy`` file of its variance plane.
    """

    def __init__(
        self,
        image_path: str | os.PathLike,
        mask_path: str | os.PathLike | None = None,
        variance_path: str | os.PathLike | None = None,
    ) -> None:
        self._image = _NpyPlane.open(image_path)
        self._mask = None if mask_path is None else _NpyPlane.open(mask_path)
        self._variance = None if variance_path is None else _NpyPlane.open(variance_path)
        for name, plane in (("mask", self._mask), ("variance", self._variance)):
            if plane is not None and plane.shape != self._image.shape:
                raise ValueError(f"{name} shape {plane.shape} != image shape {self._image.shape}")
        if self._mask is not None and self._mask.dtype != np.uint8:
            raise ValueError(f"mask must be uint8, got {self._mask.dtype}")

    @property
    def shape(self) -> tuple[int, int]:
        return self._image.shape

    @property
    def dtype(self) -> np.dtype:
        return self._image.dtype

    @property
    def has_mask(self) -> bool:
        return self._mask is not None

    @property
    def has_variance(self) -> bool:
        return self._variance is not None

    def read_block(self, y0: int, y1: int) -> SourceBlock:
        return SourceBlock(
            self._image.read(y0, y1),
            None if self._mask is None else self._mask.read(y0, y1),
            None if self._variance is None else self._variance.read(y0, y1),
        )

    def release(self) -> None:
        """Free the block buffers (they are re-allocated on the next read)."""
        for plane in (self._image, self._mask, self._variance):
            if plane is not None:
                plane.buffer = None


def write_npy_source(
    directory: str | os.PathLike,
    name: str,
    image: np.ndarray,
    mask: np.ndarray | None = None,
    variance: np.ndarray | None = None,
) -> NpyFileSource:
    """Save planes as ``<directory>/<name>_{image,mask,variance}.npy`` and
    return the `NpyFileSource` that reads them."""
    directory = Path(directory)
    paths: dict[str, Path | None] = {}
    for plane, arr in (("image", image), ("mask", mask), ("variance", variance)):
        if arr is None:
            paths[plane] = None
            continue
        p = directory / f"{name}_{plane}.npy"
        np.save(p, np.ascontiguousarray(arr))
        paths[plane] = p
    return NpyFileSource(paths["image"], paths["mask"], paths["variance"])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------

_NJIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")

# How the kernels are laid out, and why.
#
# Each thread takes whole rows of a block; a row is processed in tiles of at
# most ``_TW`` columns, so the tile's ``N × _TW`` input values stay in the
# CPU cache between the passes over it.  Inner loops run over the columns
# of a tile, on 1-d slices taken once per (tile, input): they index from 0,
# without negative-index wrap-around code, and LLVM vectorises them.  All
# per-column accumulators are rows of one ``(_NACC, _TW)`` array, allocated
# once per row and thread (in measurements this vectorised better than one
# array per accumulator, which multiplies LLVM's run-time overlap checks).
# Conditions combine booleans
# with ``&``/``|``, never ``and``/``or``: a short-circuit makes a load
# conditional, and a loop with conditional loads is not vectorised.
# Running extremes use ``np.fmin``/``np.fmax``, which vectorise (a select
# that only sometimes stores does not).

_TW = 512  # columns per tile (compile-time constant)
# rows of the accumulator array
_C, _CNT, _S1, _S2, _MN, _MX, _SV, _LO, _HI, _FLAG, _ITL = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
_GC, _GS1, _GS2, _GK, _GMN, _GMX = 11, 12, 13, 14, 15, 16
_NACC = 17
# rows reused by `_clip_gathered` (free once a tile's first pass is done)
_NLO, _NHI, _MEAN, _OVAR, _DONE = _S1, _S2, _MN, _MX, _FLAG
# Clipping bounds are widened by this fraction of |mean|, a few float64
# rounding errors: values equal to the mean (ties, zero spread) are never
# clipped because of rounding in the one-pass moments.
_BOUND_TOL = 1e-13


class _Planes(NamedTuple):
    """The current block of every input, for the kernels: C-contiguous
    ``(rows, nx)`` arrays read by address, so that taking a row costs no
    reference counting (atomic operations on counters shared by all threads,
    which would serialise them)."""

    addr: np.ndarray  # (3, n) int64: image, mask, variance block addresses (0: none)
    nx: int
    n: int
    image: np.ndarray  # empty array with the dtype of the image and variance blocks
    mask: np.ndarray  # empty uint8 array


@intrinsic
def _address_as_pointer(typingctx, proto, addr):
    """Typed pointer (to ``proto``'s dtype) at the integer address ``addr``."""
    if not isinstance(proto, types.Array) or not isinstance(addr, types.Integer):
        return None
    rettype = types.CPointer(proto.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[1], context.get_value_type(rettype))

    return rettype(proto, addr), codegen


@njit(inline="always", **_NJIT)
def _image_row(planes, i, r, x0, w):
    """Columns ``x0:x0+w`` of row ``r`` of input ``i``'s image block."""
    proto = planes.image
    return carray(_address_as_pointer(proto, planes.addr[0, i] + (r * planes.nx + x0) * proto.itemsize), (w,))


@njit(inline="always", **_NJIT)
def _mask_row(planes, i, r, x0, w):
    """Columns ``x0:x0+w`` of row ``r`` of input ``i``'s mask block."""
    return carray(_address_as_pointer(planes.mask, planes.addr[1, i] + r * planes.nx + x0), (w,))


@njit(inline="always", **_NJIT)
def _variance_row(planes, i, r, x0, w):
    """Columns ``x0:x0+w`` of row ``r`` of input ``i``'s variance block."""
    proto = planes.image
    return carray(_address_as_pointer(proto, planes.addr[2, i] + (r * planes.nx + x0) * proto.itemsize), (w,))


@njit(inline="always", **_NJIT)
def _row_of(arr, r, x0, w):
    """Columns ``x0:x0+w`` of row ``r`` of the C-contiguous 2-d ``arr``,
    without reference counting."""
    return carray(_address_as_pointer(arr, arr.ctypes.data + (r * arr.shape[1] + x0) * arr.itemsize), (w,))


@njit(**_NJIT)
def _first_good(planes, has_mask, inv_scale, bad_bits, r, x0, w, acc):
    """``acc[_C, x]`` = first good (finite, unmasked) scaled value of column
    ``x0 + x``, NaN if there is none; usually only the first input is read.

    It is the shift of the one-pass moments: being a member of the set, it
    bounds the cancellation in ``S2/n - (S1/n)**2`` to a factor ``n`` (and
    makes ties exact: all deviations are then 0)."""
    nan = np.nan
    for x in range(w):
        acc[_C, x] = nan
    for i in range(planes.n):
        row = _image_row(planes, i, r, x0, w)
        f = inv_scale[i]
        missing = 0
        if has_mask[i]:
            mrow = _mask_row(planes, i, r, x0, w)
            for x in range(w):
                v = row[x] * f
                cx = acc[_C, x]
                take = ((mrow[x] & bad_bits) == 0) & (v - v == 0.0) & (cx != cx)
                cx = v if take else cx
                acc[_C, x] = cx
                missing += 1 if cx != cx else 0
        else:
            for x in range(w):
                v = row[x] * f
                cx = acc[_C, x]
                take = (v - v == 0.0) & (cx != cx)
                cx = v if take else cx
                acc[_C, x] = cx
                missing += 1 if cx != cx else 0
        if missing == 0:
            break


@njit(**_NJIT)
def _moments(planes, has_mask, inv_scale, bad_bits, r, x0, w, want_var, acc):
    """One pass over the tile: per column, shifted sum ``_S1`` and sum of
    squares ``_S2`` of ``d = value - c``, the extreme deviations ``_MN``,
    ``_MX``, the number ``_CNT`` of unmasked values among the inputs that
    have a mask, and (``want_var``) the sum ``_SV`` of the scaled variances.

    Masked values contribute ``d = 0``.  Unmasked non-finite values are not
    tested for here: they make ``_S1`` or ``_S2`` non-finite, which sends
    the column to the exact path.  Returns the number of inputs without a
    mask (each counts for every column)."""
    for x in range(w):
        acc[_CNT, x] = 0.0
        acc[_S1, x] = 0.0
        acc[_S2, x] = 0.0
        acc[_MN, x] = 0.0
        acc[_MX, x] = 0.0
        acc[_SV, x] = 0.0
    nbase = 0
    for i in range(planes.n):
        row = _image_row(planes, i, r, x0, w)
        f = inv_scale[i]
        if has_mask[i]:
            mrow = _mask_row(planes, i, r, x0, w)
            for x in range(w):
                ok = (mrow[x] & bad_bits) == 0
                d = row[x] * f - acc[_C, x]
                d = d if ok else 0.0
                acc[_CNT, x] += 1.0 if ok else 0.0
                acc[_S1, x] += d
                acc[_S2, x] += d * d
                acc[_MN, x] = np.fmin(acc[_MN, x], d)
                acc[_MX, x] = np.fmax(acc[_MX, x], d)
            if want_var:
                vrow = _variance_row(planes, i, r, x0, w)
                f2 = f * f
                for x in range(w):
                    acc[_SV, x] += vrow[x] * f2 if (mrow[x] & bad_bits) == 0 else 0.0
        else:
            nbase += 1
            for x in range(w):
                d = row[x] * f - acc[_C, x]
                acc[_S1, x] += d
                acc[_S2, x] += d * d
                acc[_MN, x] = np.fmin(acc[_MN, x], d)
                acc[_MX, x] = np.fmax(acc[_MX, x], d)
            if want_var:
                vrow = _variance_row(planes, i, r, x0, w)
                f2 = f * f
                for x in range(w):
                    acc[_SV, x] += vrow[x] * f2
    return nbase


@njit(**_NJIT)
def _gather(planes, has_mask, inv_scale, bad_bits, r, x0, w, cols, m, want_var, gt, gvt):
    """``gt[i, j]`` = scaled value of input ``i`` at column ``x0 + cols[j]``,
    NaN when masked or not finite; ``gvt[i, j]`` its scaled variance."""
    nan = np.nan
    for i in range(planes.n):
        row = _image_row(planes, i, r, x0, w)
        f = inv_scale[i]
        if has_mask[i]:
            mrow = _mask_row(planes, i, r, x0, w)
            for j in range(m):
                x = cols[j]
                v = row[x] * f
                ok = ((mrow[x] & bad_bits) == 0) & (v - v == 0.0)
                gt[i, j] = v if ok else nan
        else:
            for j in range(m):
                v = row[cols[j]] * f
                gt[i, j] = v if v - v == 0.0 else nan
        if want_var:
            vrow = _variance_row(planes, i, r, x0, w)
            f2 = f * f
            for j in range(m):
                gvt[i, j] = vrow[cols[j]] * f2


@njit(**_NJIT)
def _kept_moments(gt, n, m, acc):
    """Per gathered column ``j``, over the values of ``gt[:n, j]`` within
    ``[acc[_LO, j], acc[_HI, j]]`` (NaN never is): their number ``_GK``,
    shifted sum ``_GS1`` and sum of squares ``_GS2`` (shift ``_GC``), and
    their extremes ``_GMN``, ``_GMX`` (vectorised over the columns)."""
    inf = np.inf
    for j in range(m):
        acc[_GS1, j] = 0.0
        acc[_GS2, j] = 0.0
        acc[_GK, j] = 0.0
        acc[_GMN, j] = inf
        acc[_GMX, j] = -inf
    for i in range(n):
        for j in range(m):
            v = gt[i, j]
            keep = (v >= acc[_LO, j]) & (v <= acc[_HI, j])
            d = v - acc[_GC, j]
            d = d if keep else 0.0
            acc[_GS1, j] += d
            acc[_GS2, j] += d * d
            acc[_GK, j] += 1.0 if keep else 0.0
            acc[_GMN, j] = np.fmin(acc[_GMN, j], v if keep else inf)
            acc[_GMX, j] = np.fmax(acc[_GMX, j], v if keep else -inf)


@njit(**_NJIT)
def _kept_moments_column(gt, n, j, lo, hi, c):
    """`_kept_moments` for the single column ``j`` (scalar loop)."""
    s1 = 0.0
    s2 = 0.0
    k = 0.0
    mn = np.inf
    mx = -np.inf
    for i in range(n):
        v = gt[i, j]
        if (v >= lo) & (v <= hi):
            d = v - c
            s1 += d
            s2 += d * d
            k += 1.0
            mn = v if v < mn else mn
            mx = v if v > mx else mx
    return k, s1, s2, mn, mx


@njit(**_NJIT)
def _next_bounds(k, s1, s2, c, mn, mx, nsig_lo, nsig_hi):
    """Bounds of the next iteration from the moments of the current set;
    ``done`` when the set has no value outside them (or is empty), in which
    case no later iteration would change it either."""
    if k == 0:
        return True, -np.inf, np.inf
    dm = s1 / k
    var = s2 / k - dm * dm
    sd = math.sqrt(var) if var > 0.0 else 0.0
    mean = c + dm
    tol = _BOUND_TOL * abs(mean)
    lo = mean - nsig_lo * sd - tol
    hi = mean + nsig_hi * sd + tol
    return (mn >= lo) & (mx <= hi), lo, hi


@njit(**_NJIT)
def _clip_gathered(gt, gvt, n, m, cols, nsig_lo, nsig_hi, var_mode, acc, o_img, o_var, o_n):
    """Finish the clipping of ``m`` gathered columns ``gt[:n, :m]`` (NaN =
    excluded).

    The values kept after any number of iterations are those inside every
    interval used so far, so ``[acc[_LO, j], acc[_HI, j]]`` holds the
    intersection of the intervals (on entry: the first iteration's bounds,
    or ``±inf`` when they are unknown); column ``j`` has ``acc[_ITL, j]``
    iterations left.  One vectorised pass gives the moments and extremes of
    every column's current set; a column is final when it has no iteration
    left or when its extremes lie within its next bounds (the usual case:
    the outliers went with the first iteration).  The few others iterate on
    alone, with scalar passes.  Results go to ``o_*[cols[j]]``.

    Note that the rows ``_S1``, ``_S2``, ``_MN``, ``_MX``, ``_FLAG`` of
    ``acc`` are overwritten."""
    nan = np.nan
    _kept_moments(gt, n, m, acc)
    # vectorised: next bounds, and which columns are final
    for j in range(m):
        k = acc[_GK, j]
        rk = 1.0 / k
        dm = acc[_GS1, j] * rk
        var = np.fmax(acc[_GS2, j] * rk - dm * dm, 0.0)
        sd = math.sqrt(var)
        mean = acc[_GC, j] + dm
        tol = _BOUND_TOL * abs(mean)
        nlo = mean - nsig_lo * sd - tol
        nhi = mean + nsig_hi * sd + tol
        inside = (acc[_GMN, j] >= nlo) & (acc[_GMX, j] <= nhi)
        done = inside | (k == 0.0) | (acc[_ITL, j] <= 0.0)
        acc[_NLO, j] = nlo
        acc[_NHI, j] = nhi
        acc[_DONE, j] = 1.0 if done else 0.0
    # the few columns that need more iterations, one at a time
    for j in range(m):
        if acc[_DONE, j] != 0.0:
            continue
        c = acc[_GC, j]
        left = int(acc[_ITL, j])
        lo = acc[_NLO, j]
        hi = acc[_NHI, j]
        done = False
        while left > 0 and not done:
            lo = lo if lo > acc[_LO, j] else acc[_LO, j]
            hi = hi if hi < acc[_HI, j] else acc[_HI, j]
            acc[_LO, j] = lo
            acc[_HI, j] = hi
            left -= 1
            k, s1, s2, mn, mx = _kept_moments_column(gt, n, j, lo, hi, c)
            acc[_GK, j] = k
            acc[_GS1, j] = s1
            acc[_GS2, j] = s2
            done, lo, hi = _next_bounds(k, s1, s2, c, mn, mx, nsig_lo, nsig_hi)
    if var_mode == 2:
        for j in range(m):
            acc[_SV, j] = 0.0
        for i in range(n):
            for j in range(m):
                v = gt[i, j]
                keep = (v >= acc[_LO, j]) & (v <= acc[_HI, j])
                acc[_SV, j] += gvt[i, j] if keep else 0.0
    # vectorised: results
    for j in range(m):
        k = acc[_GK, j]
        rk = 1.0 / k
        dm = acc[_GS1, j] * rk
        acc[_MEAN, j] = acc[_GC, j] + dm if k > 0 else nan
        if var_mode == 1:
            var = np.fmax(acc[_GS2, j] * rk - dm * dm, 0.0)
            acc[_OVAR, j] = var / (k - 1.0) if k > 1 else nan
        else:
            acc[_OVAR, j] = acc[_SV, j] * (rk * rk) if k > 0 else nan
    for j in range(m):
        x = cols[j]
        o_img[x] = acc[_MEAN, j]
        o_var[x] = acc[_OVAR, j]
        o_n[x] = np.int16(acc[_GK, j])


@njit(**_NJIT)
def _clip_tile(
    planes, has_mask, inv_scale, bad_bits, r, x0, w,
    nsig_lo, nsig_hi, niter, var_mode, acc, cols, gt, gvt, out_img, out_var, out_n,
):  # fmt: skip
    """Sigma-clipped mean of the columns ``x0:x0+w`` of row ``r``.

    One vectorised pass gives, per column, the first iteration's mean and
    std (shifted one-pass moments) and the extreme values.  A column whose
    extremes lie within the first iteration's bounds is final: that
    iteration rejects nothing, so no later one would.  The other columns
    (something to reject, or a non-finite value) are gathered and clipped on
    by `_clip_gathered`, starting from the first iteration's bounds when
    they are known.
    """
    nan = np.nan
    inf = np.inf
    want_var = var_mode == 2
    no_clip = niter == 0
    _first_good(planes, has_mask, inv_scale, bad_bits, r, x0, w, acc)
    nbase = _moments(planes, has_mask, inv_scale, bad_bits, r, x0, w, want_var, acc)
    for x in range(w):
        n = acc[_CNT, x] + nbase
        cx = acc[_C, x]
        rn = 1.0 / n
        dm = acc[_S1, x] * rn
        var = np.fmax(acc[_S2, x] * rn - dm * dm, 0.0)
        sd = math.sqrt(var)
        mean = cx + dm
        tol = _BOUND_TOL * abs(mean)
        lo = mean - nsig_lo * sd - tol
        hi = mean + nsig_hi * sd + tol
        acc[_LO, x] = lo
        acc[_HI, x] = hi
        # any NaN (no good value, non-finite input) makes this False
        inside = (cx + acc[_MN, x] >= lo) & (cx + acc[_MX, x] <= hi)
        acc[_FLAG, x] = 1.0 if (inside | (no_clip & (mean - mean == 0.0))) else 0.0
        acc[_CNT, x] = n
        acc[_S1, x] = mean
        acc[_S2, x] = var / (n - 1.0) if n > 1 else nan
        acc[_SV, x] = acc[_SV, x] * (rn * rn)
    o_img = _row_of(out_img, r, x0, w)
    o_var = _row_of(out_var, r, x0, w)
    o_n = _row_of(out_n, r, x0, w)
    for x in range(w):
        o_img[x] = acc[_S1, x]
    for x in range(w):
        o_n[x] = np.int16(acc[_CNT, x])
    if var_mode == 1:
        for x in range(w):
            o_var[x] = acc[_S2, x]
    else:
        for x in range(w):
            o_var[x] = acc[_SV, x]
    m = 0
    for x in range(w):
        if acc[_FLAG, x] == 0.0:
            lo = acc[_LO, x]
            hi = acc[_HI, x]
            known = lo - lo == 0.0 and hi - hi == 0.0
            acc[_LO, m] = lo if known else -inf
            acc[_HI, m] = hi if known else inf
            acc[_ITL, m] = niter - 1 if known else niter
            acc[_GC, m] = acc[_C, x]
            cols[m] = x
            m += 1
    if m == 0:
        return
    _gather(planes, has_mask, inv_scale, bad_bits, r, x0, w, cols, m, want_var, gt, gvt)
    _clip_gathered(gt, gvt, planes.n, m, cols, nsig_lo, nsig_hi, var_mode, acc, o_img, o_var, o_n)


@njit(**_NJIT)
def _select(a, k, kth):
    """Partially sort ``a[:k]`` in place so that ``a[kth]`` holds the value of
    rank ``kth`` with ``a[:kth] <= a[kth] <= a[kth+1:k]`` (quickselect with
    median-of-three pivots); returns it."""
    lo = 0
    hi = k - 1
    while hi > lo:
        mid = (lo + hi) // 2
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if kth <= j:
            hi = j
        elif kth >= i:
            lo = i
        else:
            break
    return a[kth]


@njit(**_NJIT)
def _median_tile(
    planes, has_mask, inv_scale, bad_bits, r, x0, w,
    var_mode, cols, gt, gvt, col, out_img, out_var, out_n,
):  # fmt: skip
    """Median of the good values of the columns ``x0:x0+w`` of row ``r``."""
    nan = np.nan
    n = planes.n
    want_var = var_mode == 2
    for x in range(w):
        cols[x] = x
    _gather(planes, has_mask, inv_scale, bad_bits, r, x0, w, cols, w, want_var, gt, gvt)
    for j in range(w):
        x = x0 + j
        k = 0
        sv = 0.0
        for i in range(n):
            v = gt[i, j]
            if v == v:
                col[k] = v
                if want_var:
                    sv += gvt[i, j]
                k += 1
        out_n[r, x] = k
        if k == 0:
            out_img[r, x] = nan
            out_var[r, x] = nan
            continue
        s = 0.0
        for t in range(k):
            s += col[t]
        mean = s / k
        ss = 0.0
        for t in range(k):
            d = col[t] - mean
            ss += d * d
        h = k // 2
        upper = _select(col, k, h)
        if k % 2 == 1:
            med = upper
        else:
            lower = col[0]
            for t in range(1, h):
                lower = col[t] if col[t] > lower else lower
            med = 0.5 * (lower + upper)
        out_img[r, x] = med
        eff = _HALF_PI if k > 2 else 1.0
        if var_mode == 1:
            out_var[r, x] = eff * ss / ((k - 1.0) * k) if k > 1 else nan
        else:
            out_var[r, x] = eff * sv / (k * k)


@njit(parallel=True, **_NJIT)
def _combine_block(
    planes, has_mask, inv_scale, bad_bits,
    method, nsig_lo, nsig_hi, niter, var_mode,
    out_img, out_var, out_n, out_mask, bad_bit, nchunks,
):  # fmt: skip
    """Combine one block of rows; rows are distributed over threads, each
    row is processed in tiles of ``_TW`` columns.  ``out_mask`` gets
    ``bad_bit`` where no input was used, 0 elsewhere."""
    n = planes.n
    nrows, nx = out_img.shape
    want_var = var_mode == 2
    # rows are dealt out in chunks, each with its scratch arrays allocated once
    nchunks = max(1, min(nrows, nchunks))
    for chunk in prange(nchunks):
        acc = np.empty((_NACC, _TW), dtype=np.float64)
        cols = np.empty(_TW, dtype=np.int64)
        gt = np.empty((n, _TW), dtype=np.float64)
        gvt = np.empty((n if want_var else 1, _TW), dtype=np.float64)
        col = np.empty(n, dtype=np.float64)
        for r in range(chunk * nrows // nchunks, (chunk + 1) * nrows // nchunks):
            for x0 in range(0, nx, _TW):
                w = min(_TW, nx - x0)
                if method == _M_CLIPPED_MEAN:
                    _clip_tile(
                        planes, has_mask, inv_scale, bad_bits, r, x0, w,
                        nsig_lo, nsig_hi, niter, var_mode, acc, cols, gt, gvt, out_img, out_var, out_n,
                    )  # fmt: skip
                else:
                    _median_tile(
                        planes, has_mask, inv_scale, bad_bits, r, x0, w,
                        var_mode, cols, gt, gvt, col, out_img, out_var, out_n,
                    )  # fmt: skip
            n_row = _row_of(out_n, r, 0, nx)
            m_row = _row_of(out_mask, r, 0, nx)
            for x in range(nx):
                m_row[x] = bad_bit if n_row[x] == 0 else np.uint8(0)


_MW = 128  # accumulator lanes of `_masked_moments` (compile-time constant)


@njit(parallel=True, **_NJIT)
def _masked_moments(image, mask, use_mask, bad_bits, lo, hi, centre):
    """Per-row count, sum of ``x - centre`` and sum of ``(x - centre)**2`` of
    the good values inside ``[lo, hi]`` (a finite window: non-finite values
    are outside it).

    Column ``x`` of a row is accumulated in lane ``x % _MW``, the lanes are
    then added in order: no loop-carried dependency in the inner loop, which
    LLVM vectorises, and the same summation order on every machine.
    """
    ny, nx = image.shape
    acc = np.zeros((ny, 3), dtype=np.float64)
    bb = np.uint8(bad_bits)
    nfull = nx - nx % _MW
    for y in prange(ny):
        lanes = np.zeros((3, _MW), dtype=np.float64)
        c = lanes[0]
        s = lanes[1]
        q = lanes[2]
        row = image[y]
        mrow = mask[y] if use_mask else mask[0]
        for x0 in range(0, nfull + _MW, _MW):
            n = _MW if x0 < nfull else nx - nfull
            v_tile = row[x0 : x0 + n]
            m_tile = mrow[x0 : x0 + n] if use_mask else mrow[:1]
            for j in range(n):
                v = np.float64(v_tile[j])
                ok = (v >= lo) & (v <= hi)
                if use_mask:
                    ok = ok & ((m_tile[j] & bb) == 0)
                d = v - centre
                c[j] += 1.0 if ok else 0.0
                s[j] += d if ok else 0.0
                q[j] += d * d if ok else 0.0
        cc = 0.0
        ss = 0.0
        qq = 0.0
        for j in range(_MW):
            cc += c[j]
            ss += s[j]
            qq += q[j]
        acc[y, 0] = cc
        acc[y, 1] = ss
        acc[y, 2] = qq
    return acc


#: The widest finite window: ``[-_FMAX, _FMAX]`` holds every finite float
#: and no infinity or NaN.
_FMAX = float(np.finfo(np.float64).max)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def as_rows(values: np.ndarray) -> np.ndarray:
    """``values`` as a 2-d array of rows (a view when possible): 1-d as one
    row, more dimensions folded into rows of the last axis."""
    values = np.asarray(values)
    if values.ndim == 2:
        return values
    return values.reshape(1, -1) if values.ndim < 2 else values.reshape(-1, values.shape[-1])


def regular_subsample(values: np.ndarray, max_size: int) -> np.ndarray:
    """At most ``max_size`` of ``values`` (flattened), regularly spaced.

    All of them when there are no more than ``max_size``; otherwise every
    ``k``-th with ``k = size // max_size + 1``.  A view when ``values`` is
    contiguous.  For the quartiles or the median that only seed or bound a
    statistic computed on every value.
    """
    flat = np.asarray(values).reshape(-1)
    return flat if flat.size <= max_size else flat[:: flat.size // max_size + 1]


_NO_MASK = np.zeros((1, 1), np.uint8)


def window_moments(
    values: np.ndarray,
    lo: float,
    hi: float,
    centre: float,
    mask: np.ndarray | None = None,
    bad_bits: int = 0,
) -> tuple[int, float, float]:
    """Count, mean and population variance of the good values in ``[lo, hi]``.

    Good: finite and, with ``mask`` (uint8, same shape), none of
    ``bad_bits`` set.  One parallel pass over the rows (numba), accumulated
    in float64 as deviations from ``centre``: pass a centre close to the
    mean (e.g. a previous estimate) so that the variance suffers no
    cancellation.

    Returns
    -------
    n : `int`
        Number of good values in the window.
    mean, variance : `float`
        Their mean and population variance (``ddof=0``); NaN when ``n`` is 0.
    """
    image = as_rows(values)
    m = _NO_MASK if mask is None else np.asarray(mask).reshape(image.shape)
    # An infinite bound becomes the largest finite float (NaN bounds stay
    # NaN: an empty window), so that the kernel needs no finiteness test.
    lo = -_FMAX if lo < -_FMAX else lo
    hi = _FMAX if hi > _FMAX else hi
    acc = _masked_moments(image, m, mask is not None, int(bad_bits), lo, hi, centre).sum(axis=0)
    n = int(acc[0])
    if n == 0:
        return 0, math.nan, math.nan
    d = acc[1] / n
    return n, centre + d, max(acc[2] / n - d * d, 0.0)


def clipped_stats(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    bad_bits: int = DEFAULT_BAD_BITS,
    nsigma: float = 3.0,
    niter: int = 3,
) -> tuple[float, float, int]:
    """Sigma-clipped mean and standard deviation of the good pixels of an image.

    Same rule as ``astropy.stats.sigma_clip(values, sigma=nsigma,
    maxiters=niter, cenfunc="mean", stdfunc="std")`` applied to the good
    values (mask has none of ``bad_bits`` and the value is finite): at most
    ``niter`` times, compute the mean and population std of the kept values
    and keep only values within ``[mean - nsigma*std, mean + nsigma*std]``,
    stopping early when nothing changes.

    Parameters
    ----------
    image : `numpy.ndarray`
        2-d image.
    mask : `numpy.ndarray`, optional
        uint8 bitmask of the same shape.
    bad_bits : `int`
        Mask bits that exclude a pixel.
    nsigma : `float`
        Clipping threshold, in standard deviations.
    niter : `int`
        Maximum number of clipping iterations.

    Returns
    -------
    mean : `float`
        Mean of the values kept after the last iteration (NaN if none).
    std : `float`
        Population standard deviation (ddof=0) of those values.
    n : `int`
        Number of values kept.
    """
    image = as_rows(image)
    m = None if mask is None else np.asarray(mask, dtype=np.uint8).reshape(image.shape)

    def moments(lo: float, hi: float, centre: float) -> tuple[int, float, float]:
        n, mean, var = window_moments(image, lo, hi, centre, m, bad_bits)
        if n and (mean - centre) ** 2 > max(var, (_BOUND_TOL * mean) ** 2):
            # farther from the centre than a standard deviation: again,
            # centred on the mean, so that the variance suffers no cancellation
            n, mean, var = window_moments(image, lo, hi, mean, m, bad_bits)
        return n, mean, var

    lo, hi = -math.inf, math.inf
    n, mean, var = moments(lo, hi, _centre_guess(image, m, bad_bits))
    if n == 0:
        return math.nan, math.nan, 0
    for _ in range(niter):
        std = math.sqrt(var)
        tol = _BOUND_TOL * abs(mean)
        lo = max(lo, mean - nsigma * std - tol)
        hi = min(hi, mean + nsigma * std + tol)
        n_new, mean_new, var_new = moments(lo, hi, mean)
        changed = n_new != n
        n, mean, var = n_new, mean_new, var_new
        if n == 0 or not changed:
            break
    if n == 0:
        return math.nan, math.nan, 0
    return float(mean), float(math.sqrt(var)), n


def _centre_guess(image: np.ndarray, mask: np.ndarray | None, bad_bits: int) -> float:
    """A value close to the mean of the good pixels, to centre the first
    moments on: the median of those on a regular grid of about 64 × 64
    pixels (0 when the grid catches none)."""
    ny, nx = image.shape
    grid = (slice(None, None, max(1, ny // 64)), slice(None, None, max(1, nx // 64)))
    sample = image[grid]
    good = np.isfinite(sample)
    if mask is not None:
        good &= (mask[grid] & np.uint8(bad_bits & 0xFF)) == 0
    return float(np.median(sample[good])) if good.any() else 0.0


def clipped_mean(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    bad_bits: int = DEFAULT_BAD_BITS,
    nsigma: float = 3.0,
    niter: int = 3,
) -> float:
    """Sigma-clipped mean of the good pixels of an image (see `clipped_stats`);
    used to scale flats before combining."""
    return clipped_stats(image, mask, bad_bits, nsigma, niter)[0]


@dataclass
class CombineResult:
    """Result of `combine`.

    Attributes
    ----------
    image : `numpy.ndarray`
        Combined image (float32 for float32 inputs, float64 otherwise); NaN
        where no input was usable.
    variance : `numpy.ndarray`
        Estimated variance of each combined value (same dtype), NaN where it
        cannot be estimated (see `combine`).
    mask : `numpy.ndarray`
        uint8 bitmask: ``BAD`` where no input was usable.
    n_used : `numpy.ndarray`
        int16 number of inputs that contributed to each pixel.
    method : `str`
        Statistic used.
    variance_method : `str`
        ``"empirical"`` or ``"propagated"``.
    nsigma : `tuple` [`float`, `float`]
        Lower and upper clipping thresholds.
    niter : `int`
        Maximum number of clipping iterations.
    bad_bits : `int`
        Mask bits that excluded an input value.
    scales : `numpy.ndarray`
        Scale factor each input was divided by.
    block_rows : `int`
        Rows processed per block.
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    n_used: np.ndarray
    method: str
    variance_method: str
    nsigma: tuple[float, float]
    niter: int
    bad_bits: int
    scales: np.ndarray
    block_rows: int


def choose_block_rows(n_inputs: int, nx: int, bytes_per_value: int, memory_budget_bytes: int, ny: int) -> int:
    """Largest number of rows whose ``n_inputs × rows × nx`` input values fit
    in ``memory_budget_bytes`` (at least 1, at most ``ny``)."""
    per_row = max(1, n_inputs * nx * bytes_per_value)
    return int(min(max(1, memory_budget_bytes // per_row), ny))


def combine(
    sources: Sequence[BlockSource] | Sequence[np.ndarray],
    *,
    method: str = "clipped_mean",
    nsigma: float | tuple[float, float] = 3.0,
    niter: int = 3,
    bad_bits: int = DEFAULT_BAD_BITS,
    scales: Sequence[float] | np.ndarray | None = None,
    variance_method: str = "auto",
    block_rows: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> CombineResult:
    """Combine a stack of images pixel by pixel, in row blocks.

    Parameters
    ----------
    sources : sequence of `BlockSource` or of 2-d `numpy.ndarray`
        The inputs, all of the same shape ``(ny, nx)``.  Plain arrays are
        wrapped in `ArraySource`.
    method : {"clipped_mean", "median"}
        ``"clipped_mean"``: iterative sigma-clipped mean, identical in its
        rules to ``astropy.stats.sigma_clip(data, sigma=nsigma,
        maxiters=niter, cenfunc="mean", stdfunc="std", axis=0).mean(axis=0)``
        (see the module docstring).  ``"median"``: median of the good values,
        no clipping.
    nsigma : `float` or (`float`, `float`)
        Clipping threshold in units of the population standard deviation;
        a pair gives the (lower, upper) thresholds.
    niter : `int`
        Maximum number of clipping iterations (``0`` = plain mean of the
        good values).
    bad_bits : `int`
        An input value is excluded when its mask has any of these bits
        (default ``SAT | DETECTED | INTRP``; darks add ``CR``).  Non-finite
        values are always excluded.
    scales : sequence of `float`, optional
        Each input (and its variance, by the square) is divided by its
        factor before combining: none for biases, the dark time for darks,
        the clipped mean (`clipped_mean`) or the focal-plane exposure factor
        for flats.  Default: all 1.
    variance_method : {"auto", "empirical", "propagated"}
        How the output variance is estimated, from the values kept for each
        pixel (``n`` of them):

        - ``"empirical"``: clipped mean: ``s² / n`` where ``s²`` is the
          sample variance (``ddof=1``) of the kept values; median: the same
          times ``π/2`` (asymptotic efficiency of the median for Gaussian
          data) when ``n > 2``.  NaN when ``n < 2``.  For Gaussian inputs
          this is unbiased without clipping; 3σ clipping trims the tails, so
          it underestimates the true variance of the clipped mean by 1–4 %
          for ``N`` = 20–50.
        - ``"propagated"``: the input variances (divided by the square of
          the scales) of the kept values: ``Σ var_i / n²`` for the clipped
          mean, times ``π/2`` for the median when ``n > 2``.  Requires every
          source to have a variance plane.
        - ``"auto"``: ``"propagated"`` when every source has a variance
          plane, else ``"empirical"``.
    block_rows : `int`, optional
        Rows per block; default: the largest value that keeps the block of
        input values within ``memory_budget_bytes``.
    memory_budget_bytes : `int`
        Budget for the input values held at once (``N × block_rows × nx``
        values, plus their mask and variance when present).  The outputs
        (image, variance, mask, n_used: 11 bytes per pixel for float32
        inputs, 19 for float64) come on top of it.

    Returns
    -------
    result : `CombineResult`
        Combined image, variance, mask (``BAD`` where no input was usable,
        with NaN image and variance) and number of inputs used per pixel.

    Notes
    -----
    Values are divided by their scale, tested for finiteness and accumulated
    in float64; the outputs are float32 when every input is float32.  Rows
    are shared among numba's threads (``numba.set_num_threads`` or
    ``NUMBA_NUM_THREADS``); the result does not depend on their number nor
    on ``block_rows``.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if variance_method not in _VARIANCE_METHODS:
        raise ValueError(f"variance_method must be one of {_VARIANCE_METHODS}, got {variance_method!r}")
    srcs: list[BlockSource] = [s if isinstance(s, BlockSource) else ArraySource(s) for s in sources]
    if not srcs:
        raise ValueError("no inputs to combine")
    shape = srcs[0].shape
    for i, s in enumerate(srcs):
        if tuple(s.shape) != tuple(shape):
            raise ValueError(f"input {i} has shape {s.shape}, expected {shape}")
    ny, nx = shape
    n = len(srcs)
    if n > np.iinfo(np.int16).max:
        raise ValueError(f"at most {np.iinfo(np.int16).max} inputs can be combined, got {n}")

    if np.ndim(nsigma) == 0:
        nsig_lo = nsig_hi = float(nsigma)  # type: ignore[arg-type]
    else:
        nsig_lo, nsig_hi = (float(v) for v in nsigma)  # type: ignore[union-attr]
    niter = int(niter)
    if niter < 0:
        raise ValueError("niter must be >= 0")

    if scales is None:
        scale_arr = np.ones(n, dtype=np.float64)
    else:
        scale_arr = np.asarray(scales, dtype=np.float64).reshape(-1)
        if scale_arr.size != n:
            raise ValueError(f"got {scale_arr.size} scales for {n} inputs")
        if not np.all(np.isfinite(scale_arr)) or np.any(scale_arr == 0):
            raise ValueError(f"scales must be finite and non-zero, got {scale_arr}")
    inv_scale = 1.0 / scale_arr

    all_var = all(s.has_variance for s in srcs)
    if variance_method == "auto":
        variance_method = "propagated" if all_var else "empirical"
    if variance_method == "propagated" and not all_var:
        raise ValueError("variance_method='propagated' needs a variance plane in every source")
    var_mode = 2 if variance_method == "propagated" else 1

    all_f32 = all(np.dtype(s.dtype) == np.float32 for s in srcs)
    dtype = np.dtype(np.float32) if all_f32 else np.dtype(np.float64)
    any_mask = any(s.has_mask for s in srcs)
    bytes_per_value = dtype.itemsize + (1 if any_mask else 0) + (dtype.itemsize if var_mode == 2 else 0)
    if block_rows is None:
        block_rows = choose_block_rows(n, nx, bytes_per_value, memory_budget_bytes, ny)
    block_rows = int(min(max(1, block_rows), ny))

    out_img = np.empty((ny, nx), dtype=dtype)
    out_var = np.empty((ny, nx), dtype=dtype)
    out_n = np.empty((ny, nx), dtype=np.int16)
    out_mask = np.empty((ny, nx), dtype=np.uint8)
    method_code = _M_CLIPPED_MEAN if method == "clipped_mean" else _M_MEDIAN
    has_mask = np.zeros(n, dtype=np.bool_)

    for y0 in range(0, ny, block_rows):
        y1 = min(ny, y0 + block_rows)
        bshape = (y1 - y0, nx)
        addr = np.zeros((3, n), dtype=np.int64)
        held = []  # keeps the blocks alive while the kernel reads them by address
        for i, s in enumerate(srcs):
            blk = s.read_block(y0, y1)
            img = _as_block(blk.image, dtype, bshape, "image")
            held.append(img)
            addr[0, i] = img.ctypes.data
            has_mask[i] = blk.mask is not None
            if blk.mask is not None:
                msk = _as_block(blk.mask, np.dtype(np.uint8), bshape, "mask")
                held.append(msk)
                addr[1, i] = msk.ctypes.data
            if var_mode == 2:
                var = _as_block(blk.variance, dtype, bshape, "variance")
                held.append(var)
                addr[2, i] = var.ctypes.data
        planes = _Planes(addr, nx, n, np.empty(0, dtype), np.empty(0, np.uint8))
        _combine_block(
            planes, has_mask, inv_scale, np.uint8(bad_bits),
            method_code, nsig_lo, nsig_hi, niter, var_mode,
            out_img[y0:y1], out_var[y0:y1], out_n[y0:y1], out_mask[y0:y1], np.uint8(masks.BIT["BAD"]),
            4 * get_num_threads(),
        )  # fmt: skip
        del held, planes, blk

    return CombineResult(
        image=out_img,
        variance=out_var,
        mask=out_mask,
        n_used=out_n,
        method=method,
        variance_method=variance_method,
        nsigma=(nsig_lo, nsig_hi),
        niter=niter,
        bad_bits=int(bad_bits),
        scales=scale_arr,
        block_rows=block_rows,
    )


def _as_block(arr: np.ndarray | None, dtype: np.dtype, shape: tuple[int, int], name: str) -> np.ndarray:
    """The block as a C-contiguous array of ``dtype`` (copy only if needed)."""
    if arr is None:
        raise ValueError(f"source returned no {name} block")
    arr = np.asarray(arr)
    if arr.shape != shape:
        raise ValueError(f"{name} block has shape {arr.shape}, expected {shape}")
    return np.ascontiguousarray(arr, dtype=dtype)
