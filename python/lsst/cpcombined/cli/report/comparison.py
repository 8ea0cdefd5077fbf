"""Comparisons: each of this run's calibrations against the one the
calibration collection served before it (difference image and per-amplifier
changes), and, for a simulated run, against the truth."""

from __future__ import annotations

__all__ = ("previous_section", "truth_section")

import math
from typing import Any

import numpy as np

from ...algorithms.defects import table_to_mask
from ...algorithms.masks import bits, from_mask
from .amp_tables import truth_expectation
from .context import IMAGE_TYPES, ReportContext
from .page import Cell, esc, figure_html, fmt, fmt_err, legend, note, pyplot, table_html
from .products import image_panel
from .stats import amp_statistics

_BAD = bits("BAD", "NO_DATA")
#: A per-amplifier change is highlighted beyond this many combined errors...
CHANGE_SIGMA = 5.0
#: ... and beyond this fraction (bias: of the read noise; others: of the value).
CHANGE_FRACTION = {"bias": 0.1, "dark": 0.1, "flat": 0.005}


def _difference_figure(
    diff: np.ndarray,
    regions: dict,
    label: str,
    title: str,
    changes: list[float],
    amps: list[str],
    bar_label: str,
    bar_title: str = "per-amplifier change",
) -> Any:
    """A difference image (symmetric colour scale) beside a bar chart of
    one number per amplifier."""
    plt = pyplot()
    aspect = min(1.4, max(0.5, diff.shape[0] / diff.shape[1]))
    fig = plt.figure(figsize=(14.0, 5.6 * aspect + 0.9))
    grid = fig.add_gridspec(1, 2, width_ratios=[1.0, 0.9], wspace=0.42)
    ax = fig.add_subplot(grid[0, 0])
    image_panel(
        fig, ax, diff, label=label, cmap="RdBu_r", symmetric=True, percentiles=(1.0, 99.0), regions=regions
    )
    ax.set_title("difference image", fontsize=11)
    ax2 = fig.add_subplot(grid[0, 1])
    colours = ["#c62828" if c > 0 else "#1565c0" for c in changes]
    ax2.bar(range(len(amps)), changes, color=colours)
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xticks(range(len(amps)), amps, rotation=90, fontsize=9)
    ax2.set_ylabel(bar_label, fontsize=10)
    ax2.set_xlabel("amplifier", fontsize=10)
    ax2.tick_params(axis="y", labelsize=9)
    ax2.grid(axis="y", alpha=0.3)
    ax2.set_title(bar_title, fontsize=11)
    fig.suptitle(title, fontsize=12)
    return fig


def _image_comparison(ctx: ReportContext, calib_type: str, det: int, anchor: str) -> str:
    mi = ctx.product(calib_type, det)
    if mi is None:
        return ""
    prev, prev_mi = ctx.previous_product(calib_type, det)
    name = f"{calib_type} detector {det}"
    if prev is None:
        return note(
            f"{name}: no earlier certified {calib_type} in {ctx.calib_collection} or "
            f"{ctx.instrument}/calib — nothing to compare with."
        )
    if prev_mi is None:
        return note(f"{name}: the previous {calib_type} ({prev.label}) could not be read.")
    image = np.asarray(mi.image.array, dtype=np.float64)
    before = np.asarray(prev_mi.image.array, dtype=np.float64)
    header = (
        f"<p>{esc(name)}: previous <b>{esc(prev.ref.run)}</b>, valid [{esc(prev.begin)}, {esc(prev.end)}) "
        f"in {esc(prev.collection)}.</p>"
    )
    if image.shape != before.shape:
        return header + note(
            f"shapes differ ({before.shape} before, {image.shape} now): no difference image."
        )
    bad = (
        (((from_mask(mi.mask) | from_mask(prev_mi.mask)) & _BAD) != 0)
        | ~np.isfinite(image)
        | ~np.isfinite(before)
    )
    diff = np.where(bad, np.nan, image - before)
    regions = ctx.regions(image.shape)
    amps = list(regions)
    now, then = amp_statistics(mi, regions), amp_statistics(prev_mi, regions)
    unit = str(mi.image.unit) if mi.image.unit is not None else "relative"
    rows, changes, flagged = [], [], []
    for amp in amps:
        ys, xs = regions[amp]
        n = max(1, int(np.isfinite(diff[ys, xs]).sum()))
        change = now[amp].median - then[amp].median
        error = math.hypot(now[amp].std, then[amp].std) / math.sqrt(n) * 1.25
        scale = {
            "bias": float(np.nanmedian([now[a].std for a in amps])),
            "dark": abs(then[amp].median),
            "flat": abs(then[amp].median),
        }[calib_type]
        flag = abs(change) > CHANGE_SIGMA * error and abs(change) > CHANGE_FRACTION[calib_type] * (
            scale or 1.0
        )
        changes.append(change)
        diff_rms = float(np.nanstd(diff[ys, xs]))
        rel = change / then[amp].median if then[amp].median else math.nan
        rows.append(
            [
                Cell(amp, "l"),
                fmt(then[amp].median, 4),
                fmt(now[amp].median, 4),
                Cell(fmt_err(change, error), "warn" if flag else ""),
                f"{100 * rel:+.2f} %" if math.isfinite(rel) and calib_type != "bias" else "–",
                fmt(diff_rms, 3),
            ]
        )
        if flag:
            flagged.append(amp)
    fig = _difference_figure(
        diff,
        regions,
        f"now − before ({unit})",
        f"{name}: this run minus the previous certified {calib_type}",
        changes,
        amps,
        f"change of the amp median ({unit})",
    )
    parts = [header, figure_html(fig, f"{name} difference with the previous", dpi=90)]
    parts.append(
        table_html(
            [
                "amp",
                f"previous median ({unit})",
                f"this median ({unit})",
                "change",
                "change (%)",
                "rms of the difference",
            ],
            rows,
        )
    )
    if flagged:
        ctx.add(
            "warn",
            f"{name}: amplifiers changed since the previous certification: {', '.join(flagged)}",
            anchor,
        )
    return "".join(parts)


def _ptc_comparison(ctx: ReportContext, det: int, anchor: str) -> str:
    ptc = ctx.ptc(det)
    if ptc is None:
        return ""
    prev, before = ctx.previous_product("ptc", det)
    if prev is None:
        return note(f"PTC detector {det}: no earlier certified PTC to compare with.")
    if before is None:
        return note(f"PTC detector {det}: the previous PTC ({prev.label}) could not be read.")
    old = {str(r["amplifier"]): r for r in before}
    rows, flagged = [], []
    for row in ptc:
        amp = str(row["amplifier"])
        o = old.get(amp)
        if o is None:
            continue
        dg = float(row["gain"]) - float(o["gain"])
        eg = math.hypot(float(row["gain_err"]), float(o["gain_err"]))
        dn = float(row["noise"]) - float(o["noise"])
        en = math.hypot(float(row["noise_err"]), float(o["noise_err"]))
        gflag = math.isfinite(eg) and eg > 0 and abs(dg) > CHANGE_SIGMA * eg
        nflag = math.isfinite(en) and en > 0 and abs(dn) > CHANGE_SIGMA * en
        if gflag or nflag:
            flagged.append(amp)
        rows.append(
            [
                Cell(amp, "l"),
                fmt_err(o["gain"], o["gain_err"]),
                fmt_err(row["gain"], row["gain_err"]),
                Cell(f"{100 * dg / float(o['gain']):+.2f} %", "warn" if gflag else ""),
                fmt_err(o["noise"], o["noise_err"]),
                fmt_err(row["noise"], row["noise_err"]),
                Cell(fmt(dn, 3), "warn" if nflag else ""),
            ]
        )
    if flagged:
        ctx.add(
            "warn",
            f"PTC detector {det}: gain or noise changed since the previous certification: "
            f"{', '.join(flagged)}",
            anchor,
        )
    return (
        f"<p>PTC detector {det}: previous <b>{esc(prev.ref.run)}</b>, valid [{esc(prev.begin)}, "
        f"{esc(prev.end)}).</p>"
        + table_html(
            [
                "amp",
                "previous gain",
                "this gain",
                "gain change",
                "previous noise (e-)",
                "this noise (e-)",
                "noise change (e-)",
            ],
            rows,
        )
    )


def _defects_comparison(ctx: ReportContext, det: int, anchor: str) -> str:
    table = ctx.defects(det)
    if table is None:
        return ""
    prev, before = ctx.previous_product("defects", det)
    if prev is None:
        return note(f"defects detector {det}: no earlier certified defects to compare with.")
    if before is None:
        return note(f"defects detector {det}: the previous defects ({prev.label}) could not be read.")
    shape = (int(table.meta.get("DET_NY", 0) or 0), int(table.meta.get("DET_NX", 0) or 0))
    if not all(shape):
        images = [ctx.product(t, det) for t in ("flat", "dark", "bias")]
        mi = next((m for m in images if m is not None), None)
        if mi is None:
            return note(f"defects detector {det}: unknown detector shape.")
        shape = np.asarray(mi.image.array).shape
    now = table_to_mask(table, shape, clip=True) if len(table) else np.zeros(shape, bool)
    then = table_to_mask(before, shape, clip=True) if len(before) else np.zeros(shape, bool)
    new, gone = int((now & ~then).sum()), int((then & ~now).sum())
    text = (
        f"defects detector {det}: previous <b>{esc(prev.ref.run)}</b> had {len(before)} boxes / "
        f"{int(then.sum())} pixels; now {len(table)} boxes / {int(now.sum())} pixels: "
        f"{new} new defect pixels, "
        f"{gone} no longer flagged."
    )
    if new or gone:
        ctx.add(
            "warn" if new + gone > 0.01 * max(1, int(then.sum())) else "info",
            f"defects detector {det}: {new} new and {gone} removed defect pixels since the previous "
            "certification",
            anchor,
        )
    return f"<p>{text}</p>"


def previous_section(ctx: ReportContext, anchor: str) -> str:
    """This run's calibrations against the previously certified ones."""
    parts = [
        f"<p>The previous calibration of each type is the one {esc(ctx.calib_collection)} (then "
        f"{esc(ctx.instrument)}/calib) served for the time of this run's data "
        "before this run certified its own: "
        "its validity range contains that time, or else it is the latest that began before it.</p>",
        legend({"warn": f"change beyond {CHANGE_SIGMA:g} σ and a meaningful size"}),
    ]
    for calib_type in IMAGE_TYPES:
        if ctx.outcome(calib_type) is None:
            continue
        parts.append(f"<h3>{calib_type}</h3>")
        for det in ctx.detectors:
            try:
                parts.append(_image_comparison(ctx, calib_type, det, anchor))
            except Exception as err:  # never hide the rest
                parts.append(note(f"{calib_type} detector {det}: comparison not available ({err})"))
    for calib_type, compare in (("ptc", _ptc_comparison), ("defects", _defects_comparison)):
        if ctx.outcome(calib_type) is None:
            continue
        parts.append(f"<h3>{calib_type}</h3>")
        for det in ctx.detectors:
            try:
                parts.append(compare(ctx, det, anchor))
            except Exception as err:
                parts.append(note(f"{calib_type} detector {det}: comparison not available ({err})"))
    return "".join(parts)


def truth_section(ctx: ReportContext, anchor: str) -> str:
    """Each combined image against what the simulated truth predicts."""
    if ctx.truth is None:
        return note("Not a simulated run: no truth to compare with.")
    parts = [
        "<p>Each product minus what the simulation's truth predicts for it (bias: the fixed structure plus "
        "the dark current of its dark time; dark: the dark current less what the bias holds; flat: "
        "illumination × response, normalised like the flat). The per-amplifier numbers are in the "
        "tables of each product.</p>"
    ]
    for calib_type in IMAGE_TYPES:
        for det in ctx.detectors:
            mi = ctx.product(calib_type, det)
            if mi is None:
                continue
            expected = truth_expectation(ctx, calib_type, det, mi)
            if expected is None:
                parts.append(note(f"{calib_type} detector {det}: the truth does not describe this product."))
                continue
            image = np.asarray(mi.image.array, dtype=np.float64)
            bad = ((from_mask(mi.mask) & _BAD) != 0) | ~np.isfinite(image)
            diff = np.where(bad, np.nan, image - expected)
            regions = ctx.regions(image.shape)
            unit = str(mi.image.unit) if mi.image.unit is not None else "relative"
            meds = [float(np.nanmean(diff[ys, xs])) for ys, xs in regions.values()]
            fig = _difference_figure(
                diff,
                regions,
                f"product − truth ({unit})",
                f"{calib_type} detector {det}: product minus truth",
                meds,
                list(regions),
                f"mean of product − truth ({unit})",
                "per-amplifier mean",
            )
            rms = float(np.nanstd(diff))
            parts.append(
                figure_html(
                    fig,
                    f"{calib_type} detector {det} minus truth",
                    f"rms of the difference {rms:.4g} {unit}; bars: mean per amplifier.",
                    dpi=90,
                )
            )
    return "".join(parts)
