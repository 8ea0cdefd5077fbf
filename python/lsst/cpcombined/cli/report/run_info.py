"""The run itself: what was decided and certified (with the validity range
as stored), and how long each step took (steps of every session of a
resumed run included)."""

from __future__ import annotations

__all__ = ("decisions_section", "timings_section")

import datetime
from typing import Any

from ...repo.validity import validity_range
from .context import ReportContext
from .page import Cell, esc, figure_html, note, pyplot, table_html

_ORDER = ("bias", "dark", "flat", "ptc", "defects")


def _inputs(ctx: ReportContext, calib_type: str, outcome: Any) -> str:
    """What a calibration was made from, in words."""
    if calib_type == "defects":
        n_dark = len(getattr(ctx.outcome("dark"), "exposures", []) or [])
        n_flat = len(getattr(ctx.outcome("flat"), "exposures", []) or [])
        return f"the dark ({n_dark} exposures) and the flat ({n_flat} exposures)"
    n = len(outcome.exposures or [])
    if calib_type == "ptc":
        return f"{n} flats ({n // 2} pairs)"
    return f"{n} exposures"


def _validity(ctx: ReportContext, calib_type: str, outcome: Any) -> tuple[str, str]:
    """The stored validity (``-inf`` for a begin before 1970) and a remark."""
    stored = None
    for det in ctx.detectors:
        stored = ctx.stored_validity(calib_type, det)
        if stored:
            break
    configured = tuple(outcome.validity) if outcome.validity else None
    requested = getattr(ctx.config, "certify_calib_begin_date", None)
    if stored is None and configured:
        try:
            stored = validity_range(*configured).stored
        except ValueError:
            stored = configured
    if stored is None:
        return "", ""
    text = f"[{stored[0]}, {stored[1]})"
    remark = ""
    begin = str(requested) if requested else (configured[0] if configured else "-inf")
    if stored[0] == "-inf" and begin not in ("-inf", "None", ""):
        remark = (
            f"validity configured from {begin}: the butler stores a begin before 1970 as unbounded (-inf)"
        )
    return text, remark


def decisions_section(ctx: ReportContext) -> str:
    """One row per calibration: decision, certification, stored validity,
    inputs and collections."""
    rows = []
    remarks = []
    for calib_type in sorted(ctx.summary.calibrations, key=lambda t: _ORDER.index(t) if t in _ORDER else 99):
        out = ctx.summary.calibrations[calib_type]
        decision_cls = {"pass": "pass", "fail": "fail"}.get(out.decision, "nv")
        validity, remark = _validity(ctx, calib_type, out) if out.certified else ("", "")
        if remark and not remarks:
            remarks.append(remark)
        collections = "\n".join(c for c in (out.generated_collection, out.verification_collection) if c)
        rows.append(
            [
                Cell(calib_type, "l"),
                Cell(out.decision, decision_cls),
                Cell("yes" if out.certified else "no", "pass" if out.certified else "fail"),
                Cell(out.calib_collection or "", "l"),
                Cell(validity, "l nw", remark),
                Cell(_inputs(ctx, calib_type, out), "l"),
                Cell(collections, "l small"),
            ]
        )
    table = table_html(
        [
            "calibration",
            "decision",
            "certified",
            "into",
            "validity (as stored, TAI)",
            "made from",
            "generation / verification collections",
        ],
        rows,
    )
    extra = ""
    if remarks:
        extra = "<p class='small'>" + "; ".join(esc(r) for r in remarks) + ".</p>"
    return table + extra


def _parse(stamp: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return None


def timings_section(ctx: ReportContext) -> str:
    """Steps with their start, duration, status and session (the
    invocations of a resumed run); a timeline."""
    steps = list(ctx.summary.steps)
    if not steps:
        return note("No steps were recorded.")
    n_sessions = max([len(ctx.sessions)] + [int(getattr(s, "session", 0) or 0) + 1 for s in steps])
    rows = []
    for s in steps:
        session = int(getattr(s, "session", 0) or 0)
        when = _parse(getattr(s, "started", "") or "")
        label = ""
        if n_sessions > 1:
            before = " (before the restart)" if session < n_sessions - 1 else ""
            label = f"{session + 1} of {n_sessions}{before}"
        rows.append(
            [
                Cell(s.name, "l"),
                Cell(when.strftime("%H:%M:%S") if when else "", "l"),
                f"{s.seconds:.1f}",
                Cell(s.status, "pass" if s.status == "ok" else "fail"),
                Cell(label, "l"),
                Cell(s.detail, "l"),
            ]
        )
    starts = [(_parse(getattr(s, "started", "") or ""), s) for s in steps]
    timed = [(t, s) for t, s in starts if t is not None]
    total = sum(s.seconds for s in steps)
    parts = []
    if n_sessions > 1:
        begun = ", ".join(str(x.get("started", "?")) if isinstance(x, dict) else str(x) for x in ctx.sessions)
        parts.append(
            f"<p>This run was started {n_sessions} times (resumed after an interruption"
            + (f"; sessions started {esc(begun)}" if begun else "")
            + "): the steps of the earlier sessions are listed with their timings; work they finished was "
            "reused, not repeated.</p>"
        )
    if timed:
        t0 = min(t for t, _ in timed)
        end = max(t + datetime.timedelta(seconds=s.seconds) for t, s in timed)
        parts.append(
            f"<p>{len(steps)} steps; from the first start to the last end {(end - t0).total_seconds():.0f} s "
            f"(steps overlap: their durations add up to {total:.0f} s).</p>"
        )
        parts.append(_timeline(timed, t0))
    else:
        parts.append(f"<p>{len(steps)} steps; durations add up to {total:.0f} s (steps overlap).</p>")
    parts.append(table_html(["step", "started (UTC)", "seconds", "status", "session", "detail"], rows))
    return "".join(parts)


def _timeline(timed: list[tuple[datetime.datetime, Any]], t0: datetime.datetime) -> str:
    plt = pyplot()
    n = len(timed)
    fig, ax = plt.subplots(figsize=(13.0, max(2.2, 0.26 * n + 1.0)))
    colours = {
        "take": "#8d6e63",
        "cp": "#1f77b4",
        "verify": "#2ca02c",
        "certify": "#9467bd",
        "gain": "#1f77b4",
    }
    labels = []
    for i, (t, s) in enumerate(timed):
        start = (t - t0).total_seconds()
        key = next((k for k in colours if s.name.startswith(k)), "")
        colour = "#d62728" if s.status != "ok" else colours.get(key, "#7f7f7f")
        ax.barh(i, max(s.seconds, 0.3), left=start, color=colour, height=0.7)
        labels.append(s.name)
    ax.set_yticks(range(n), labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first step started", fontsize=10)
    ax.tick_params(axis="x", labelsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Timeline of the steps (red: failed)", fontsize=11)
    fig.tight_layout()
    return figure_html(fig, "timeline of the steps", dpi=90)
