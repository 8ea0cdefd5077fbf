"""The summary at the top of the report: one verdict line, the headline
numbers of each calibration, and what needs a look (the findings of the
sections below, worst first)."""

from __future__ import annotations

__all__ = ("verdict_section",)

import math

import numpy as np

from .context import ReportContext
from .page import esc

#: Findings listed at the top (the rest are in their sections).
MAX_FINDINGS = 20


def _headline(ctx: ReportContext) -> list[str]:
    """One short line per calibration with its key numbers."""
    lines = []
    for calib_type in ("bias", "dark", "flat", "ptc", "defects"):
        out = ctx.outcome(calib_type)
        if out is None:
            continue
        state = "certified" if out.certified else ("rejected" if out.decision == "fail" else "not certified")
        numbers = ""
        try:
            numbers = _numbers(ctx, calib_type)
        except Exception:  # numbers are a convenience: never fail here
            numbers = ""
        lines.append(
            f"<b>{esc(calib_type)}</b>: {esc(state)}"
            + (f" (decision {esc(out.decision)})" if out.decision not in ("not-verified",) else "")
            + (f" — {esc(numbers)}" if numbers else "")
        )
    return lines


def _numbers(ctx: ReportContext, calib_type: str) -> str:
    values: list[float] = []
    if calib_type in ("bias", "dark", "flat"):
        for det in ctx.detectors:
            mi = ctx.product(calib_type, det)
            if mi is None:
                continue
            if calib_type == "bias":
                md = mi.metadata
                values += [
                    float(v)
                    for k, v in md.items()
                    if k.startswith("CPC_READNOISE_")
                    and k.count("_") == 2
                    and not k.endswith(("_ERR", "_ADU", "NFRAMES", "NPAIRS"))
                    and v is not None
                ]
            else:
                image = np.asarray(mi.image.array)
                values.append(float(np.nanmedian(image)))
        values = [v for v in values if math.isfinite(v)]
        if not values:
            return ""
        if calib_type == "bias":
            return f"read noise {min(values):.2f}–{max(values):.2f} e- over {len(values)} amps"
        if calib_type == "dark":
            return f"median dark current {np.median(values):.4f} e-/s"
        return f"median {np.median(values):.4f}"
    if calib_type == "ptc":
        gains = []
        for det in ctx.detectors:
            ptc = ctx.ptc(det)
            if ptc is not None:
                gains += [float(g) for g in ptc["gain"] if math.isfinite(float(g))]
        return f"gain {min(gains):.3f}–{max(gains):.3f} e-/ADU over {len(gains)} amps" if gains else ""
    pixels = 0
    for det in ctx.detectors:
        table = ctx.defects(det)
        if table is not None:
            pixels += int(sum(int(r["width"]) * int(r["height"]) for r in table))
    return f"{pixels} defect pixels (border included)"


def verdict_section(ctx: ReportContext) -> str:
    """The verdict box and the findings."""
    summary = ctx.summary
    bad = [f for f in ctx.findings if f.severity == "bad"]
    warn = [f for f in ctx.findings if f.severity == "warn"]
    certified = [t for t, o in summary.calibrations.items() if o.certified]
    if not summary.success:
        cls, head = "bad", f"FAILED — {summary.error or 'see below'}"
    elif bad:
        cls, head = (
            "warn",
            f"All requested calibrations certified ({', '.join(certified)}), but {len(bad)} "
            "problem(s) need a look",
        )
    elif warn:
        cls, head = (
            "warn",
            f"All requested calibrations certified ({', '.join(certified)}); {len(warn)} item(s) to check",
        )
    else:
        cls, head = (
            "ok",
            f"All requested calibrations certified ({', '.join(certified)}); nothing unusual found",
        )
    parts = [f"<div class='verdict {'ok' if cls == 'ok' else cls}' id='verdict'>{esc(head)}</div>"]
    lines = _headline(ctx)
    if lines:
        parts.append("<ul>" + "".join(f"<li>{line}</li>" for line in lines) + "</ul>")
    listed = (bad + warn)[:MAX_FINDINGS]
    if listed:
        parts.append(
            "<p><b>To look at:</b></p><ul class='findings'>" + "".join(f.html() for f in listed) + "</ul>"
        )
        if len(bad) + len(warn) > MAX_FINDINGS:
            parts.append(
                f"<p class='note'>… and {len(bad) + len(warn) - MAX_FINDINGS} more in the sections below.</p>"
            )
    return "".join(parts)
