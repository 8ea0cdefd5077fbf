"""The history of the certified calibrations across days, from
`lsst.cpcombined.cli.history` (``collect_history``, ``drift_report`` and
``history_figures``); a clear note when reading the history fails."""

from __future__ import annotations

__all__ = ("history_section",)

import math
from typing import Any

from ..history import HISTORY_COLUMNS, collect_history, drift_report, history_figures
from .context import IMAGE_TYPES, ReportContext
from .page import Cell, esc, figure_html, findings_html, note, table_html

#: Rows of the history table shown in full (the rest is summarised).
MAX_ROWS = 300


def history_section(ctx: ReportContext, anchor: str) -> str:
    """Drifts, figures and the table of the history of
    ``ctx.calib_collection``."""
    try:
        table = collect_history(
            ctx.butler,
            ctx.instrument,
            calib_collection=ctx.calib_collection,
            detectors=ctx.detectors,
            images=_run_images(ctx),
        )
    except Exception as err:  # the history must never stop the report
        return note(f"History not available: {err}")
    if table is None or len(table) == 0:
        return note(f"No certified calibrations in {ctx.calib_collection} yet.")
    parts = []
    n_sets = len(set(table["dataset_id"])) if "dataset_id" in table.colnames else len(table)
    parts.append(f"<p>{n_sets} certified dataset(s) in {esc(ctx.calib_collection)}.</p>")
    try:
        drifts = list(drift_report(table))
    except Exception as err:
        drifts = []
        parts.append(note(f"drift report not available: {err}"))
    if drifts:
        parts.append(findings_html(drifts))
        for d in drifts[:5]:
            ctx.add("warn", f"history: {d}", anchor)
    else:
        parts.append("<p>No change beyond the earlier scatter.</p>")
    if _max_certifications(table) < 2:
        parts.append(note("A single certification per calibration so far: the plots start with the next one"))
    else:
        try:
            for i, fig in enumerate(history_figures(table)):
                parts.append(figure_html(fig, f"history figure {i + 1}", dpi=85))
        except Exception as err:
            parts.append(note(f"history figures not available: {err}"))
    parts.append(_table(table))
    return "".join(parts)


def _run_images(ctx: ReportContext) -> dict[str, Any]:
    """This run's bias, dark and flat images (read once for the whole
    report), by dataset id: the history measures them without reading their
    files again."""
    out = {}
    for calib_type in IMAGE_TYPES:
        for det in ctx.detectors:
            ref = ctx.ref(calib_type, det)
            if ref is not None:
                out[str(ref.id)] = ctx.product(calib_type, det)
    return out


def _max_certifications(table: Any) -> int:
    """Largest number of certified datasets of one calibration type."""
    if "dataset_id" not in table.colnames or "calib_type" not in table.colnames:
        return len(table)
    per_type: dict[str, set[str]] = {}
    for calib_type, dataset_id in zip(table["calib_type"], table["dataset_id"], strict=True):
        per_type.setdefault(str(calib_type), set()).add(str(dataset_id))
    return max((len(v) for v in per_type.values()), default=0)


def _table(table: Any) -> str:
    shown = [c for c in HISTORY_COLUMNS if c not in ("dataset_id", "run", "creation_date")]
    columns = [c for c in shown if c in table.colnames]
    rows = []
    for row in table[:MAX_ROWS]:
        cells: list[str | Cell] = []
        for c in columns:
            value = row[c]
            if isinstance(value, float) and not math.isfinite(value):
                cells.append("–")
            elif isinstance(value, float):
                cells.append(f"{value:.5g}")
            else:
                cells.append(Cell(str(value), "l"))
        rows.append(cells)
    more = f" (first {MAX_ROWS} of {len(table)} rows)" if len(table) > MAX_ROWS else ""
    return f"<details><summary>History table{esc(more)}</summary>" + table_html(columns, rows) + "</details>"
