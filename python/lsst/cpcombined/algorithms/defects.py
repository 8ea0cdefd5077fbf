"""Defect finding on combined calibrations, defect boxes and their use.

A *defect mask* is a 2-d boolean array over the trimmed, assembled detector
(``True`` = defect).  It is built from

* the combined dark (units e-/s): hot pixels above an absolute dark-current
  threshold (``3 e-/s``) and, optionally, above ``n`` σ of the amplifier's
  clipped mean;
* the combined flat (normalised, unitless): per amplifier, cold pixels below
  ``0.9 ×`` the amplifier's clipped mean and hot pixels above ``1.1 ×`` it
  (both ratios configurable), optionally also ``n`` σ cuts;
* a column rule: a column of one amplifier holding at least
  ``column_threshold`` (50) bad pixels of one source has the span between its
  first and last bad pixel filled;
* a border of ``border`` (5) pixels along each edge of the detector;
* pixels without data in either input (non-finite values, or ``NO_DATA`` /
  ``BAD`` bits of the input bitmask, i.e. pixels the combine could not fill).

The sources are OR-ed into one mask per detector (`find_defects`).

The stored product is a compact list of boxes ``(x0, y0, width, height)``
(0-based, in assembled-detector pixels) — row runs of the mask merged
vertically into rectangles (`mask_to_boxes`).  The conversion is canonical:
the same mask always gives the same boxes, and ``boxes -> mask -> boxes ->
mask`` is exact.  `boxes_to_table` / `table_to_boxes` convert to and from the
`astropy.table.Table` (int32 columns ``x0, y0, width, height``) that is the
``defects`` dataset.

For ISR, `apply_defects` sets ``BAD`` in a bitmask and `interpolate_defects`
replaces defect pixels by linear interpolation along rows (from the nearest
good pixels left and right), falling back to columns, and sets ``INTRP``.
"""

from __future__ import annotations

__all__ = (
    "BOX_COLUMNS",
    "DefectConfig",
    "DefectResult",
    "apply_defects",
    "border_mask",
    "boxes_to_mask",
    "boxes_to_table",
    "clipped_mean_std",
    "fill_bad_columns",
    "find_dark_defects",
    "find_defects",
    "find_flat_defects",
    "interpolate_defects",
    "mask_to_boxes",
    "mask_to_table",
    "no_data_mask",
    "table_to_boxes",
    "table_to_mask",
)

import dataclasses
from collections.abc import Sequence

import numba
import numpy as np
from astropy.table import Table

from . import masks

#: An amplifier region of the assembled detector: ``(y slice, x slice)``.
AmpRegion = tuple[slice, slice]

#: Column names of the stored defect table, in order.
BOX_COLUMNS: tuple[str, ...] = ("x0", "y0", "width", "height")

#: Bits of an input bitmask meaning "no usable data" (combine left it empty).
_DEFAULT_NO_DATA_BITS = masks.bits("NO_DATA", "BAD")


# ---------------------------------------------------------------------------
# configuration and result
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DefectConfig:
    """Parameters of `find_defects` (defaults from the cp_combined SPEC).

    Attributes
    ----------
    dark_threshold
        Absolute dark-current threshold (e-/s) above which a pixel of the
        combined dark is hot; ``None`` disables it.
    dark_nsigma
        If set, a dark pixel is also hot above ``mean + dark_nsigma * std``
        of its amplifier (clipped statistics).  Off by default.
    flat_low_ratio
        A flat pixel is cold below ``flat_low_ratio × amp mean``; ``None``
        disables the ratio cut.
    flat_high_ratio
        A flat pixel is hot above ``flat_high_ratio × amp mean`` (the
        symmetric bright cut); ``None`` disables it.
    flat_nsigma_low, flat_nsigma_high
        Optional σ cuts below / above the amplifier's clipped flat mean.
    clip_nsigma, clip_iterations
        Sigma clipping used for the per-amplifier mean and std.
    column_threshold
        A column of one amplifier with at least this many bad pixels (of one
        source) is filled between its first and last bad pixel; ``0`` or
        ``None`` disables the rule.
    border
        Width in pixels of the defect border along each detector edge;
        ``0`` disables it.
    no_data_bits
        Bits of an input bitmask that mark pixels without usable data; such
        pixels (and non-finite ones) are defects and are excluded from the
        statistics.
    """

    dark_threshold: float | None = 3.0
    dark_nsigma: float | None = None
    flat_low_ratio: float | None = 0.9
    flat_high_ratio: float | None = 1.1
    flat_nsigma_low: float | None = None
    flat_nsigma_high: float | None = None
    clip_nsigma: float = 3.0
    clip_iterations: int = 3
    column_threshold: int | None = 50
    border: int = 5
    no_data_bits: int = _DEFAULT_NO_DATA_BITS


@dataclasses.dataclass
class DefectResult:
    """Output of `find_defects`.

    Attributes
    ----------
    mask
        The merged defect mask (OR of every source below).
    dark, flat
        Defects from the dark / flat statistics, after the column rule
        (``None`` when that input was not given).
    no_data
        Pixels without data in any input.
    border
        The border mask.
    """

    mask: np.ndarray
    dark: np.ndarray | None
    flat: np.ndarray | None
    no_data: np.ndarray
    border: np.ndarray

    @property
    def boxes(self) -> np.ndarray:
        """The merged mask as ``(n, 4)`` boxes ``x0, y0, width, height``."""
        return mask_to_boxes(self.mask)

    def counts(self) -> dict[str, int]:
        """Number of defect pixels per source and in total."""
        out = {
            "total": int(self.mask.sum()),
            "no_data": int(self.no_data.sum()),
            "border": int(self.border.sum()),
        }
        out["dark"] = int(self.dark.sum()) if self.dark is not None else 0
        out["flat"] = int(self.flat.sum()) if self.flat is not None else 0
        return out


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def clipped_mean_std(values: np.ndarray, nsigma: float = 3.0, niter: int = 3) -> tuple[float, float]:
    """Iteratively sigma-clipped mean and standard deviation.

    Parameters
    ----------
    values
        Values (any shape); non-finite values are ignored.
    nsigma
        Clip at ``|v - mean| > nsigma * std``.
    niter
        Maximum number of clipping iterations (stops early when nothing
        more is clipped).

    Returns
    -------
    mean, std
        ``NaN, NaN`` if no finite value is given.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    mean, std = float(v.mean()), float(v.std())
    for _ in range(max(0, int(niter))):
        if std == 0.0:
            break
        keep = np.abs(v - mean) <= nsigma * std
        if keep.all():
            break
        v = v[keep]
        if v.size == 0:
            break
        mean, std = float(v.mean()), float(v.std())
    return mean, std


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array, got shape {image.shape}")
    return image


def _check_bitmask(bitmask: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if bitmask is None:
        return None
    bitmask = np.asarray(bitmask)
    if bitmask.shape != shape:
        raise ValueError(f"{name} has shape {bitmask.shape}, image has {shape}")
    return bitmask


def _check_regions(amp_regions: Sequence[AmpRegion], shape: tuple[int, ...]) -> list[AmpRegion]:
    regions = []
    ny, nx = shape
    for ys, xs in amp_regions:
        y0, y1, ystep = ys.indices(ny)
        x0, x1, xstep = xs.indices(nx)
        if ystep != 1 or xstep != 1 or y1 <= y0 or x1 <= x0:
            raise ValueError(f"amplifier region {(ys, xs)} is empty or strided for image shape {shape}")
        if (ys.stop is not None and ys.stop > ny) or (xs.stop is not None and xs.stop > nx):
            raise ValueError(f"amplifier region {(ys, xs)} extends outside the image of shape {shape}")
        regions.append((slice(y0, y1), slice(x0, x1)))
    return regions


def no_data_mask(
    image: np.ndarray, bitmask: np.ndarray | None = None, no_data_bits: int = _DEFAULT_NO_DATA_BITS
) -> np.ndarray:
    """Pixels without usable data: non-finite values or any of
    ``no_data_bits`` set in ``bitmask``."""
    image = _check_image(image, "image")
    out = ~np.isfinite(image)
    bitmask = _check_bitmask(bitmask, image.shape, "bitmask")
    if bitmask is not None and no_data_bits:
        out |= (bitmask & no_data_bits) != 0
    return out


def border_mask(shape: tuple[int, int], border: int = 5) -> np.ndarray:
    """Boolean mask of a ``border``-pixel frame along each edge (``0`` = empty)."""
    out = np.zeros(shape, dtype=bool)
    b = int(border)
    if b < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if b:
        out[:b, :] = True
        out[-b:, :] = True
        out[:, :b] = True
        out[:, -b:] = True
    return out


def fill_bad_columns(
    defects: np.ndarray, amp_regions: Sequence[AmpRegion], column_threshold: int | None = 50
) -> np.ndarray:
    """Fill columns with many bad pixels, per amplifier.

    In every amplifier region, a column with at least ``column_threshold``
    bad pixels is marked bad from its first to its last bad pixel (both
    included); columns with fewer keep their pixels as they are.

    Parameters
    ----------
    defects
        Boolean defect mask of the detector (not modified).
    amp_regions
        ``(y slice, x slice)`` of each amplifier.
    column_threshold
        Minimum number of bad pixels; ``None`` or ``0`` returns a copy.

    Returns
    -------
    filled
        New boolean mask.
    """
    defects = np.asarray(defects, dtype=bool)
    out = defects.copy()
    if not column_threshold:
        return out
    for ys, xs in _check_regions(amp_regions, defects.shape):
        sub = defects[ys, xs]
        counts = sub.sum(axis=0)
        cols = np.flatnonzero(counts >= column_threshold)
        if cols.size == 0:
            continue
        n = sub.shape[0]
        first = np.argmax(sub[:, cols], axis=0)
        last = n - 1 - np.argmax(sub[::-1, cols], axis=0)
        rows = np.arange(n)[:, None]
        fill = (rows >= first[None, :]) & (rows <= last[None, :])
        out[ys, xs][:, cols] |= fill
    return out


# ---------------------------------------------------------------------------
# finding
# ---------------------------------------------------------------------------


def find_dark_defects(
    dark: np.ndarray,
    amp_regions: Sequence[AmpRegion],
    bitmask: np.ndarray | None = None,
    *,
    threshold: float | None = 3.0,
    nsigma: float | None = None,
    clip_nsigma: float = 3.0,
    clip_iterations: int = 3,
    no_data_bits: int = _DEFAULT_NO_DATA_BITS,
) -> np.ndarray:
    """Hot pixels of a combined dark (e-/s), per amplifier.

    A pixel is hot when ``dark > threshold`` (absolute, e-/s) or, if
    ``nsigma`` is given, ``dark > mean + nsigma * std`` with the clipped
    statistics of its amplifier.  Pixels without data are never flagged here
    (see `no_data_mask`) and are left out of the statistics; pixels outside
    every amplifier region are not examined.

    Returns
    -------
    hot
        Boolean mask (no column rule applied).
    """
    dark = _check_image(dark, "dark")
    bitmask = _check_bitmask(bitmask, dark.shape, "bitmask")
    nodata = no_data_mask(dark, bitmask, no_data_bits)
    out = np.zeros(dark.shape, dtype=bool)
    for ys, xs in _check_regions(amp_regions, dark.shape):
        sub = dark[ys, xs]
        good = ~nodata[ys, xs]
        hot = np.zeros(sub.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            if threshold is not None:
                hot |= sub > threshold
            if nsigma is not None:
                mean, std = clipped_mean_std(sub[good], clip_nsigma, clip_iterations)
                if np.isfinite(mean):
                    hot |= sub > mean + nsigma * std
        out[ys, xs] = hot & good
    return out


def find_flat_defects(
    flat: np.ndarray,
    amp_regions: Sequence[AmpRegion],
    bitmask: np.ndarray | None = None,
    *,
    low_ratio: float | None = 0.9,
    high_ratio: float | None = 1.1,
    nsigma_low: float | None = None,
    nsigma_high: float | None = None,
    clip_nsigma: float = 3.0,
    clip_iterations: int = 3,
    no_data_bits: int = _DEFAULT_NO_DATA_BITS,
) -> np.ndarray:
    """Cold and hot pixels of a combined (normalised) flat, per amplifier.

    With ``mean, std`` the clipped statistics of the amplifier, a pixel is
    cold when ``flat < low_ratio * mean`` (or ``< mean - nsigma_low * std``)
    and hot when ``flat > high_ratio * mean`` (or ``> mean + nsigma_high *
    std``).  Any cut set to ``None`` is disabled.  Pixels without data are
    not flagged here and are excluded from the statistics.

    Returns
    -------
    bad
        Boolean mask of cold or hot pixels (no column rule applied).
    """
    flat = _check_image(flat, "flat")
    bitmask = _check_bitmask(bitmask, flat.shape, "bitmask")
    nodata = no_data_mask(flat, bitmask, no_data_bits)
    out = np.zeros(flat.shape, dtype=bool)
    for ys, xs in _check_regions(amp_regions, flat.shape):
        sub = flat[ys, xs]
        good = ~nodata[ys, xs]
        mean, std = clipped_mean_std(sub[good], clip_nsigma, clip_iterations)
        if not np.isfinite(mean):
            continue
        bad = np.zeros(sub.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            if low_ratio is not None:
                bad |= sub < low_ratio * mean
            if high_ratio is not None:
                bad |= sub > high_ratio * mean
            if nsigma_low is not None:
                bad |= sub < mean - nsigma_low * std
            if nsigma_high is not None:
                bad |= sub > mean + nsigma_high * std
        out[ys, xs] = bad & good
    return out


def find_defects(
    amp_regions: Sequence[AmpRegion],
    *,
    dark: np.ndarray | None = None,
    flat: np.ndarray | None = None,
    dark_mask: np.ndarray | None = None,
    flat_mask: np.ndarray | None = None,
    config: DefectConfig | None = None,
) -> DefectResult:
    """Find the defects of one detector from its combined dark and/or flat.

    Parameters
    ----------
    amp_regions
        ``(y slice, x slice)`` of each amplifier in the assembled detector.
    dark
        Combined dark in e-/s (optional).
    flat
        Combined, normalised flat (optional).
    dark_mask, flat_mask
        Optional uint8 bitmasks of the inputs (`masks.BIT`).
    config
        Thresholds; `DefectConfig` defaults when omitted.

    Returns
    -------
    result
        Merged mask and the per-source masks.

    Notes
    -----
    The column rule is applied to each statistical source separately (a
    column needs ``column_threshold`` hot-dark *or* ``column_threshold``
    bad-flat pixels), before the border and no-data pixels are added, so
    that the border rows never count towards a column.
    """
    cfg = config or DefectConfig()
    if dark is None and flat is None:
        raise ValueError("find_defects needs a dark, a flat, or both")
    shape = None
    for name, img in (("dark", dark), ("flat", flat)):
        if img is not None:
            img = _check_image(img, name)
            if shape is not None and img.shape != shape:
                raise ValueError(f"dark and flat shapes differ: {shape} vs {img.shape}")
            shape = img.shape
    assert shape is not None
    regions = _check_regions(amp_regions, shape)

    nodata = np.zeros(shape, dtype=bool)
    dark_def = flat_def = None
    if dark is not None:
        nodata |= no_data_mask(dark, dark_mask, cfg.no_data_bits)
        dark_def = find_dark_defects(
            dark,
            regions,
            dark_mask,
            threshold=cfg.dark_threshold,
            nsigma=cfg.dark_nsigma,
            clip_nsigma=cfg.clip_nsigma,
            clip_iterations=cfg.clip_iterations,
            no_data_bits=cfg.no_data_bits,
        )
        dark_def = fill_bad_columns(dark_def, regions, cfg.column_threshold)
    if flat is not None:
        nodata |= no_data_mask(flat, flat_mask, cfg.no_data_bits)
        flat_def = find_flat_defects(
            flat,
            regions,
            flat_mask,
            low_ratio=cfg.flat_low_ratio,
            high_ratio=cfg.flat_high_ratio,
            nsigma_low=cfg.flat_nsigma_low,
            nsigma_high=cfg.flat_nsigma_high,
            clip_nsigma=cfg.clip_nsigma,
            clip_iterations=cfg.clip_iterations,
            no_data_bits=cfg.no_data_bits,
        )
        flat_def = fill_bad_columns(flat_def, regions, cfg.column_threshold)
    border = border_mask(shape, cfg.border)
    merged = nodata | border
    for m in (dark_def, flat_def):
        if m is not None:
            merged |= m
    return DefectResult(mask=merged, dark=dark_def, flat=flat_def, no_data=nodata, border=border)


# ---------------------------------------------------------------------------
# boxes <-> mask <-> table
# ---------------------------------------------------------------------------


def mask_to_boxes(mask: np.ndarray) -> np.ndarray:
    """Convert a boolean mask to a canonical list of boxes.

    Each row is cut into runs of ``True`` pixels; runs with identical
    ``[x0, x1)`` in consecutive rows are merged into one rectangle.  The
    result is sorted by ``(y0, x0)``.  The same mask always gives the same
    boxes and the boxes cover exactly the mask (no overlaps).

    Returns
    -------
    boxes
        ``(n, 4)`` int32 array of ``x0, y0, width, height``.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-d, got shape {m.shape}")
    ny, nx = m.shape
    if not m.any():
        return np.zeros((0, 4), dtype=np.int32)
    padded = np.zeros((ny, nx + 2), dtype=np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)
    sy, sx = np.nonzero(d == 1)  # run starts, row-major order
    _, ex = np.nonzero(d == -1)  # run ends (exclusive), same order
    order = np.lexsort((sy, ex, sx))  # by x0, then x1, then y
    y, x0, x1 = sy[order], sx[order], ex[order]
    new = np.ones(y.size, dtype=bool)
    new[1:] = (x0[1:] != x0[:-1]) | (x1[1:] != x1[:-1]) | (y[1:] != y[:-1] + 1)
    starts = np.flatnonzero(new)
    heights = np.diff(np.append(starts, y.size))
    boxes = np.column_stack([x0[starts], y[starts], x1[starts] - x0[starts], heights]).astype(np.int32)
    return boxes[np.lexsort((boxes[:, 0], boxes[:, 1]))]


def _as_boxes(boxes: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    b = np.asarray(boxes)
    if b.size == 0:
        return np.zeros((0, 4), dtype=np.int64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (n, 4), got {b.shape}")
    if not np.issubdtype(b.dtype, np.integer):
        if not np.all(np.equal(np.mod(b, 1), 0)):
            raise ValueError("box coordinates must be integers")
    return b.astype(np.int64)


def boxes_to_mask(
    boxes: np.ndarray | Sequence[Sequence[int]], shape: tuple[int, int], *, clip: bool = False
) -> np.ndarray:
    """Paint boxes ``x0, y0, width, height`` into a boolean mask.

    Parameters
    ----------
    boxes
        ``(n, 4)`` integer boxes (overlaps allowed).
    shape
        ``(ny, nx)`` of the mask.
    clip
        If true, boxes are clipped to the mask; otherwise a box extending
        outside it (e.g. defects of another geometry) raises `ValueError`.

    Returns
    -------
    mask
        Boolean array of ``shape``.
    """
    b = _as_boxes(boxes)
    ny, nx = shape
    out = np.zeros((ny, nx), dtype=bool)
    if b.shape[0] == 0:
        return out
    x0, y0, w, h = b.T
    if np.any(w <= 0) or np.any(h <= 0):
        raise ValueError("box width and height must be positive")
    x1, y1 = x0 + w, y0 + h
    outside = (x0 < 0) | (y0 < 0) | (x1 > nx) | (y1 > ny)
    if outside.any() and not clip:
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"box {tuple(int(v) for v in b[i])} extends outside the image of shape {(ny, nx)}")
    x0, y0 = np.clip(x0, 0, nx), np.clip(y0, 0, ny)
    x1, y1 = np.clip(x1, 0, nx), np.clip(y1, 0, ny)
    for a, c, e, f in zip(y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist(), strict=True):
        out[a:c, e:f] = True
    return out


def boxes_to_table(
    boxes: np.ndarray | Sequence[Sequence[int]], shape: tuple[int, int] | None = None
) -> Table:
    """Defect boxes as the stored `~astropy.table.Table`.

    Parameters
    ----------
    boxes
        ``(n, 4)`` boxes ``x0, y0, width, height``.
    shape
        Optional ``(ny, nx)`` of the detector, kept in the table metadata
        (``DET_NY``, ``DET_NX``) so `table_to_mask` can rebuild the mask.

    Returns
    -------
    table
        Columns ``x0, y0, width, height``, all int32.
    """
    b = _as_boxes(boxes)
    table = Table({name: b[:, i].astype(np.int32) for i, name in enumerate(BOX_COLUMNS)})
    if shape is not None:
        table.meta["DET_NY"] = int(shape[0])
        table.meta["DET_NX"] = int(shape[1])
    return table


def table_to_boxes(table: Table) -> np.ndarray:
    """Boxes ``(n, 4)`` int32 from a defect table (`boxes_to_table`)."""
    missing = [c for c in BOX_COLUMNS if c not in table.colnames]
    if missing:
        raise ValueError(f"defect table lacks columns {missing}")
    if len(table) == 0:
        return np.zeros((0, 4), dtype=np.int32)
    return np.column_stack([np.asarray(table[c], dtype=np.int64) for c in BOX_COLUMNS]).astype(np.int32)


def mask_to_table(mask: np.ndarray) -> Table:
    """Defect table of a boolean mask (boxes of `mask_to_boxes`, shape in meta)."""
    mask = np.asarray(mask, dtype=bool)
    return boxes_to_table(mask_to_boxes(mask), shape=mask.shape)


def table_to_mask(table: Table, shape: tuple[int, int] | None = None, *, clip: bool = False) -> np.ndarray:
    """Boolean mask of a defect table; ``shape`` defaults to the table's
    ``DET_NY``/``DET_NX`` metadata."""
    if shape is None:
        try:
            shape = (int(table.meta["DET_NY"]), int(table.meta["DET_NX"]))
        except KeyError:
            raise ValueError("shape not given and not found in the table metadata") from None
    return boxes_to_mask(table_to_boxes(table), shape, clip=clip)


def _as_defect_mask(
    defects: np.ndarray | Table | Sequence[Sequence[int]], shape: tuple[int, ...]
) -> np.ndarray:
    """A boolean mask of ``shape`` from a mask, a table or boxes."""
    if isinstance(defects, Table):
        return table_to_mask(defects, shape)  # type: ignore[arg-type]
    arr = np.asarray(defects)
    if arr.dtype == bool:
        if arr.shape != shape:
            raise ValueError(f"defect mask has shape {arr.shape}, image has {shape}")
        return arr
    return boxes_to_mask(arr, shape)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# using defects
# ---------------------------------------------------------------------------


def apply_defects(
    bitmask: np.ndarray, defects: np.ndarray | Table | Sequence[Sequence[int]], plane: str = "BAD"
) -> np.ndarray:
    """Return a copy of ``bitmask`` with ``plane`` (``BAD``) set on defects.

    ``defects`` may be a boolean mask, ``(n, 4)`` boxes or a defect table.
    """
    bitmask = np.asarray(bitmask)
    out = bitmask.astype(np.uint8, copy=True)
    out[_as_defect_mask(defects, bitmask.shape)] |= masks.BIT[plane]
    return out


@numba.njit(cache=True, nogil=True)
def _fill_rows(values, good, target, two_sided, filled):  # pragma: no cover - numba
    """Numba kernel of `_interp_axis1` (see there)."""
    ny, nx = values.shape
    for y in range(ny):
        left = -1
        x = 0
        while x < nx:
            if good[y, x]:
                left = x
                x += 1
                continue
            stop = x
            while stop < nx and not good[y, stop]:
                stop += 1
            right = stop if stop < nx else -1
            for k in range(x, stop):
                if not target[y, k]:
                    continue
                if left >= 0 and right >= 0:
                    if two_sided:
                        vl = values[y, left]
                        values[y, k] = vl + (values[y, right] - vl) * (k - left) / (right - left)
                    elif k - left <= right - k:
                        values[y, k] = values[y, left]
                    else:
                        values[y, k] = values[y, right]
                elif two_sided:
                    continue
                elif left >= 0:
                    values[y, k] = values[y, left]
                elif right >= 0:
                    values[y, k] = values[y, right]
                else:
                    continue
                filled[y, k] = True
            x = stop


def _interp_axis1(values: np.ndarray, good: np.ndarray, target: np.ndarray, two_sided: bool) -> np.ndarray:
    """Fill ``target`` pixels of ``values`` along axis 1 (rows).

    With ``two_sided``, only pixels with a good pixel on both sides are
    filled, by linear interpolation; otherwise every pixel with a good pixel
    on at least one side gets the value of the nearest one.  ``values`` is
    modified in place (it may be a transposed view); returns the boolean
    mask of the pixels filled.
    """
    filled = np.zeros(values.shape, dtype=bool)
    if target.any():
        _fill_rows(values, good, target, two_sided, filled)
    return filled


def interpolate_defects(
    image: np.ndarray,
    defects: np.ndarray | Table | Sequence[Sequence[int]],
    bitmask: np.ndarray | None = None,
    *,
    exclude_bits: int = masks.bits("BAD", "SAT", "NO_DATA", "CR"),
    set_bad: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate over defect pixels, along rows first.

    Order of preference for each defect pixel:

    1. linear interpolation between the nearest good pixels to its left and
       right in the same row;
    2. linear interpolation between the nearest good pixels above and below
       in the same column (e.g. a defect spanning a whole row);
    3. the nearest good pixel in its row, else in its column (defects that
       touch the detector edge, such as the border);
    4. repeat 3 with the pixels already filled (corners of the border);
       if the image has no good pixel at all, the defects become NaN.

    A *good* pixel is finite, not a defect and has none of ``exclude_bits``
    set in ``bitmask``.

    Parameters
    ----------
    image
        2-d image (not modified).
    defects
        Boolean defect mask, ``(n, 4)`` boxes or a defect table.
    bitmask
        Optional uint8 bitmask (not modified).
    exclude_bits
        Bits marking pixels that must not serve as interpolation sources.
    set_bad
        Also set ``BAD`` on the defect pixels (as `apply_defects`).

    Returns
    -------
    image, bitmask
        Float copy of the image with defects interpolated, and a copy of the
        bitmask (zeros if none was given) with ``INTRP`` (and ``BAD``) set on
        the defect pixels.
    """
    image = _check_image(image, "image")
    defect = _as_defect_mask(defects, image.shape)
    out = np.array(image, dtype=np.result_type(image.dtype, np.float32), copy=True)
    bm = _check_bitmask(bitmask, image.shape, "bitmask")
    out_mask = np.zeros(image.shape, dtype=np.uint8) if bm is None else bm.astype(np.uint8, copy=True)
    if not defect.any():
        return out, out_mask
    good = ~defect & np.isfinite(out)
    if bm is not None and exclude_bits:
        good &= (bm & exclude_bits) == 0
    todo = defect.copy()
    if good.any():
        todo &= ~_interp_axis1(out, good, todo, two_sided=True)
        if todo.any():
            filled_t = _interp_axis1(out.T, good.T, todo.T, two_sided=True)
            todo &= ~filled_t.T
        # one-sided (nearest) passes; filled pixels become sources
        while todo.any():
            src = ~todo & (good | defect)
            done = _interp_axis1(out, src, todo, two_sided=False)
            todo &= ~done
            if todo.any():
                src = ~todo & (good | defect)
                done_t = _interp_axis1(out.T, src.T, todo.T, two_sided=False).T
                todo &= ~done_t
                done = done | done_t
            if not done.any():
                break
    out[todo] = np.nan
    out_mask[defect] |= masks.BIT["INTRP"]
    if set_bad:
        out_mask[defect] |= masks.BIT["BAD"]
    return out, out_mask
