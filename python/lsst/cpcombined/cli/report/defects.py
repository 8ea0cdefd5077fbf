"""The defects: a map of the detector where every defect is visible (each
box drawn at least a few display pixels wide, coloured by how it was found),
a table of the boxes, and for a simulated run the comparison with the true
defects."""

from __future__ import annotations

__all__ = ("MIN_MARK_PIXELS", "classify_box", "defect_map_figure", "defects_section")

from typing import Any

import numpy as np

from ...algorithms.defects import table_to_boxes, table_to_mask
from .context import ReportContext
from .page import Cell, esc, note, png_data_uri, pyplot, table_html
from .products import draw_amp_grid

#: Smallest size of a drawn defect, in display pixels of the map.
MIN_MARK_PIXELS = 7
#: Colours of the defects by source.
COLOURS = {"dark": "#d62728", "flat": "#1f4fd6", "dark+flat": "#8e24aa", "border": "#9e9e9e", "": "#ef6c00"}
_MAX_ROWS = 80


def classify_box(x0: int, y0: int, w: int, h: int, shape: tuple[int, int], border: int) -> str:
    """``border``, ``pixel``, ``column``, ``row`` or ``cluster``."""
    ny, nx = shape
    if border > 0 and (x0 + w <= border or y0 + h <= border or x0 >= nx - border or y0 >= ny - border):
        return "border"
    if w == 1 and h == 1:
        return "pixel"
    if w <= 2 and h >= 5 * w:
        return "column"
    if h <= 2 and w >= 5 * h:
        return "row"
    return "cluster"


def _source(box_mask: tuple[slice, slice], masks: dict[str, np.ndarray]) -> str:
    found = [name for name, mask in masks.items() if mask[box_mask].any()]
    return "+".join(found)


def defect_map_figure(
    boxes: np.ndarray,
    shape: tuple[int, int],
    *,
    sources: list[str],
    regions: dict[str, tuple[slice, slice]],
    title: str,
    truth_missed: tuple[np.ndarray, np.ndarray] | None = None,
    width_inches: float = 11.0,
    dpi: int = 100,
) -> tuple[str, dict[str, Any]]:
    """Draw the defect map.

    Returns
    -------
    uri, mapping
        The PNG data URI, and where the detector lies in it: ``axes``
        (left, top, right, bottom PNG pixels of the detector's pixel
        ``(0, 0)``–``(nx, ny)`` box) and ``shape`` — so that a reader (a
        test) can find the display pixel of a detector pixel.
    """
    plt = pyplot()
    ny, nx = shape
    aspect = min(2.0, max(0.5, ny / nx))
    # Axes of the detector's aspect, with room for the labels and the legend.
    left, right, bottom, top = 0.75, 2.9, 0.6, 0.45
    ax_w = width_inches - left - right
    ax_h = ax_w * aspect
    fig_h = ax_h + bottom + top
    fig = plt.figure(figsize=(width_inches, fig_h), dpi=dpi)
    ax = fig.add_axes((left / width_inches, bottom / fig_h, ax_w / width_inches, ax_h / fig_h))
    ax.set_xlim(0, nx)
    ax.set_ylim(0, ny)
    ax.set_aspect("equal", adjustable="box")
    ax.set_facecolor("#fbfbfb")
    draw_amp_grid(ax, regions, colour="#555555")
    fig.canvas.draw()
    bbox = ax.get_window_extent()
    data_per_px = max(nx / bbox.width, ny / bbox.height)
    min_size = MIN_MARK_PIXELS * data_per_px
    handles: dict[str, Any] = {}
    for (x0, y0, w, h), source in zip(boxes, sources, strict=False):
        colour = COLOURS.get(source, COLOURS[""])
        cx, cy = x0 + 0.5 * w, y0 + 0.5 * h
        dw, dh = max(w, min_size), max(h, min_size)
        alpha = 0.35 if source == "border" else 0.9
        patch = plt.Rectangle(
            (cx - 0.5 * dw, cy - 0.5 * dh), dw, dh, fc=colour, ec=colour, lw=0.8, alpha=alpha
        )
        ax.add_patch(patch)
        handles.setdefault(source, patch)
    if truth_missed is not None and len(truth_missed[0]):
        ys, xs = truth_missed
        handles["truth, not found"] = ax.scatter(
            xs + 0.5, ys + 0.5, s=60, marker="o", facecolors="none", edgecolors="#2e7d32", linewidths=1.6
        )
    labels = {
        "dark": "hot (found in the dark)",
        "flat": "cold (found in the flat)",
        "dark+flat": "dark and flat",
        "border": "detector border",
        "": "source unknown",
    }
    ax.legend(
        [handles[k] for k in handles],
        [labels.get(k, k) for k in handles],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=9,
        frameon=False,
    )
    ax.set_xlabel("x (pixel)", fontsize=10)
    ax.set_ylabel("y (pixel)", fontsize=10)
    ax.tick_params(labelsize=9)
    ax.set_title(title, fontsize=11)
    fig.canvas.draw()
    bbox = ax.get_window_extent()
    height = fig.get_size_inches()[1] * dpi
    mapping = {
        "axes": (float(bbox.x0), float(height - bbox.y1), float(bbox.x1), float(height - bbox.y0)),
        "shape": (int(ny), int(nx)),
    }
    uri, _ = png_data_uri(fig, dpi=dpi, tight=False)
    return uri, mapping


def defects_section(ctx: ReportContext, anchor: str) -> str:
    """Defect maps and tables of every detector."""
    out = ctx.outcome("defects")
    if out is None or not out.generated_collection:
        return note("No defects were made in this run.")
    parts = []
    for det in ctx.detectors:
        table = ctx.defects(det)
        if table is None:
            parts.append(note(f"defects of detector {det}: not available."))
            continue
        meta = table.meta
        shape = (int(meta.get("DET_NY", 0) or 0), int(meta.get("DET_NX", 0) or 0))
        if not all(shape):
            for calib_type in ("flat", "dark", "bias"):
                mi = ctx.product(calib_type, det)
                if mi is not None:
                    shape = tuple(np.asarray(mi.image.array).shape)
                    break
        if not all(shape):
            parts.append(note(f"defects of detector {det}: the detector's shape is unknown."))
            continue
        border = int(meta.get("CPC_BORDER", 0) or 0)
        boxes = table_to_boxes(table) if len(table) else np.zeros((0, 4), dtype=int)
        source_masks = {
            name: table_to_mask(t, shape, clip=True)
            for name, t in ctx.defect_sources(det).items()
            if t is not None
        }
        regions = ctx.regions(shape)
        mask = table_to_mask(table, shape, clip=True) if len(table) else np.zeros(shape, dtype=bool)
        kinds, sources, amps = [], [], []
        for x0, y0, w, h in boxes:
            kind = classify_box(int(x0), int(y0), int(w), int(h), shape, border)
            kinds.append(kind)
            sel = (slice(max(0, y0), min(shape[0], y0 + h)), slice(max(0, x0), min(shape[1], x0 + w)))
            sources.append("border" if kind == "border" else _source(sel, source_masks))
            cx, cy = x0 + w // 2, y0 + h // 2
            amps.append(
                next(
                    (
                        a
                        for a, (ys, xs) in regions.items()
                        if ys.start <= cy < ys.stop and xs.start <= cx < xs.stop
                    ),
                    "",
                )
            )
        dt = ctx.detector_truth(det) if ctx.truth_matches(shape, det) else None
        truth_missed = None
        truth_line = ""
        truth_kind = None
        if dt is not None:
            true_mask = dt.hot_mask | dt.cold_mask
            missed = true_mask & ~mask
            truth_missed = np.nonzero(missed)
            n_true = int(true_mask.sum())
            n_found = int((true_mask & mask).sum())
            inner = mask.copy()
            for (x0, y0, w, h), kind in zip(boxes, kinds, strict=False):
                if kind == "border":
                    inner[y0 : y0 + h, x0 : x0 + w] = False
            extra = int((inner & ~true_mask).sum())
            truth_line = (
                f"Simulated truth: {n_found} of {n_true} true defect pixels found "
                f"({100 * n_found / max(1, n_true):.1f} %); {extra} flagged pixels (outside the border) "
                "are not true defects."
            )
            if n_found < n_true:
                ctx.add(
                    "warn", f"defects detector {det}: {n_true - n_found} true defect pixels not found", anchor
                )
            truth_kind = (dt.hot_mask, dt.cold_mask)
        n_pix = int(mask.sum())
        title = (
            f"detector {det} ({ctx.detector(det).name}): {len(boxes)} boxes, {n_pix} pixels "
            f"({100 * n_pix / (shape[0] * shape[1]):.2f} %)"
        )
        uri, mapping = defect_map_figure(
            boxes, shape, sources=sources, regions=regions, title=title, truth_missed=truth_missed
        )
        left, top, right, bottom = mapping["axes"]
        parts.append(
            f'<figure><img class="defect-map" alt="defect map detector {det}" src="{uri}" '
            f'data-detector="{det}" data-axes="{left:.2f},{top:.2f},{right:.2f},{bottom:.2f}" '
            f'data-shape="{shape[0]},{shape[1]}"><figcaption>Every defect box is drawn at least '
            f"{MIN_MARK_PIXELS} display pixels wide so that single pixels and one-pixel columns show; "
            "colour: how "
            "it was found."
            + (" Green circles: true defects not found." if dt is not None else "")
            + "</figcaption></figure>"
        )
        if truth_line:
            parts.append(f"<p>{esc(truth_line)}</p>")
        rows = []
        border_boxes = [i for i, k in enumerate(kinds) if k == "border"]
        if border_boxes:
            n_border = int(sum(boxes[i][2] * boxes[i][3] for i in border_boxes))
            rows.append(
                [
                    Cell("–", "l"),
                    Cell(f"detector border ({border} px)", "l"),
                    "",
                    "",
                    "",
                    "",
                    str(n_border),
                    Cell("border", "l"),
                    Cell("", "l"),
                    Cell(f"{len(border_boxes)} boxes", "l"),
                ]
            )
        listed = [i for i, k in enumerate(kinds) if k != "border"]
        for n, i in enumerate(listed[:_MAX_ROWS], start=1):
            x0, y0, w, h = (int(v) for v in boxes[i])
            truth_text = ""
            cls = ""
            if truth_kind is not None:
                sel = (slice(y0, y0 + h), slice(x0, x0 + w))
                hot, cold = int(truth_kind[0][sel].sum()), int(truth_kind[1][sel].sum())
                if hot or cold:
                    truth_text = f"true {'hot' if hot >= cold else 'cold'} ({hot + cold} of {w * h} px)"
                    cls = "pass"
                else:
                    truth_text, cls = "not a true defect", "warn"
            rows.append(
                [
                    Cell(str(n), "l"),
                    Cell(kinds[i], "l"),
                    str(x0),
                    str(y0),
                    str(w),
                    str(h),
                    str(w * h),
                    Cell(sources[i] or "?", "l"),
                    Cell(amps[i], "l"),
                    Cell(truth_text, f"l {cls}".strip()),
                ]
            )
        header = ["#", "kind", "x0", "y0", "width", "height", "pixels", "found in", "amp"]
        header.append("simulated truth" if truth_kind is not None else "")
        parts.append(table_html(header, rows))
        if len(listed) > _MAX_ROWS:
            parts.append(note(f"… and {len(listed) - _MAX_ROWS} more boxes."))
        parts.append(f"<p class='small'>{esc(_counts(kinds))}</p>")
    return "".join(parts)


def _counts(kinds: list[str]) -> str:
    counts: dict[str, int] = {}
    for k in kinds:
        counts[k] = counts.get(k, 0) + 1
    return "Boxes by kind: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none") + "."
