"""Per-amplifier tables of the combined bias, dark and flat (levels,
noise, hot and cold pixels), with the simulated truth beside them and the
values outside expectations highlighted."""

from __future__ import annotations

__all__ = ("amp_table_section", "defect_counts", "truth_expectation")

import math
from typing import Any

import numpy as np

from ...algorithms.defects import table_to_mask
from ...algorithms.masks import bits, from_mask
from ...repo.products import read_input_provenance
from ...simulation.camera import DARK_OVERHEAD_SECONDS
from .context import ReportContext
from .page import Cell, esc, findings_html, fmt, legend, note, table_html
from .stats import amp_statistics, clipped_mean_std, outliers

_BAD = bits("BAD", "NO_DATA")


def defect_counts(
    table: Any, shape: tuple[int, int], regions: dict[str, tuple[slice, slice]]
) -> dict[str, int]:
    """Pixels of a defects table in each amplifier region."""
    if table is None:
        return {}
    mask = table_to_mask(table, shape, clip=True)
    return {amp: int(mask[ys, xs].sum()) for amp, (ys, xs) in regions.items()}


def truth_expectation(ctx: ReportContext, calib_type: str, det: int, mi: Any) -> np.ndarray | None:
    """What the product should be according to the simulated truth (the
    product's units), or `None` without a truth of this shape.

    bias: the fixed structure in electrons plus the dark current of the
    bias's own dark time; dark: the dark current less what the bias holds,
    per second of the darks' dark time; flat: illumination × response,
    normalised to the product's clipped mean over good pixels.
    """
    image = np.asarray(mi.image.array)
    if not ctx.truth_matches(image.shape, det):
        return None
    dt = ctx.detector_truth(det)
    if calib_type == "bias":
        return dt.bias_structure * dt.amp_value(dt.gain) + dt.dark_current * DARK_OVERHEAD_SECONDS
    if calib_type == "dark":
        times = [float(p["scale"]) for p in read_input_provenance(mi.metadata) if p.get("scale")]
        t_dark = float(np.median(times)) if times else math.nan
        if not math.isfinite(t_dark) or t_dark <= 0:
            return None
        return dt.dark_current * (t_dark - DARK_OVERHEAD_SECONDS) / t_dark
    flat = dt.flat_field
    good = ((from_mask(mi.mask) & _BAD) == 0) & np.isfinite(image) & ~dt.cold_mask & ~dt.hot_mask
    if not good.any():
        return None
    scale = float(np.mean(image[good])) / float(np.mean(flat[good]))
    return flat * scale


def _text(value: float, digits: int) -> str:
    """``digits`` significant digits; 0: an integer count."""
    if digits == 0:
        return str(int(value)) if math.isfinite(value) else "–"
    return fmt(value, digits)


def _cells(values: list[float], flags: list[bool], digits: int = 4, title: str = "") -> list[Cell]:
    return [
        Cell(_text(v, digits), "warn" if f else "", title if f else "")
        for v, f in zip(values, flags, strict=True)
    ]


def amp_table_section(ctx: ReportContext, calib_type: str, anchor: str) -> str:
    """The per-amplifier table of one calibration type, per detector."""
    parts = [_detector_table(ctx, calib_type, det, anchor) for det in ctx.detectors]
    if not any(parts):
        return note(f"No {calib_type} was made in this run.")
    key = {"warn": "outside expectations (hover for why)"}
    if ctx.truth is not None:
        key["nv"] = "blue text: simulated truth"
    return legend(key) + "".join(parts)


def _detector_table(ctx: ReportContext, calib_type: str, det: int, anchor: str) -> str:
    """The per-amplifier table of one product (empty without the product)."""
    mi = ctx.product(calib_type, det)
    if mi is None:
        return ""
    image = np.asarray(mi.image.array)
    regions = ctx.regions(image.shape)
    amps = list(regions)
    stats = amp_statistics(mi, regions)
    md = mi.metadata
    expected = truth_expectation(ctx, calib_type, det, mi)
    dt = ctx.detector_truth(det) if expected is not None else None
    mask = from_mask(mi.mask)
    header: list[str] = ["amp"]
    columns: list[list[Cell]] = []
    reasons: list[str] = []

    def add(
        name: str,
        values: list[float],
        flags: list[bool] | None = None,
        digits: int = 4,
        why: str = "",
        cls: str = "",
    ) -> None:
        flags = flags or [False] * len(values)
        header.append(name)
        col = _cells(values, flags, digits, why)
        if cls:
            col = [Cell(c.text, c.cls or cls, c.title) for c in col]
        columns.append(col)
        reasons.extend(f"{amp} {name}: {why}" for amp, flag in zip(amps, flags, strict=True) if flag)

    def residual(amp: str) -> tuple[float, float]:
        """5-sigma clipped mean and rms of the product minus the truth (of
        their ratio minus 1 for a flat) over the amplifier's good pixels."""
        ys, xs = regions[amp]
        good = ((mask[ys, xs] & _BAD) == 0) & np.isfinite(image[ys, xs])
        if calib_type == "flat":
            diff = (image[ys, xs] / expected[ys, xs] - 1.0)[good]
        else:
            diff = (image[ys, xs] - expected[ys, xs])[good]
        return clipped_mean_std(diff.astype(np.float64), nsigma=5.0) if diff.size else (math.nan, math.nan)

    def n_pixels(amp: str) -> int:
        ys, xs = regions[amp]
        return max(1, (ys.stop - ys.start) * (xs.stop - xs.start))

    unit = {"bias": "e-", "dark": "e-/s", "flat": ""}[calib_type]
    u = f" ({unit})" if unit else ""
    medians = [stats[a].median for a in amps]
    means = [stats[a].mean for a in amps]
    rms = [stats[a].std for a in amps]
    stand_out = "stands out from the other amps"
    if calib_type == "bias":
        levels = [float(md.get(f"CPC_OVERSCAN_LEVEL_{a}", math.nan)) for a in amps]
        if any(math.isfinite(v) for v in levels):
            add("overscan level (ADU)", levels, digits=6)
            if dt is not None:
                truth_levels = [float(dt.bias_level[a]) for a in amps]
                flags = [abs(m - t) > 5.0 for m, t in zip(levels, truth_levels, strict=True)]
                add(
                    "truth level (ADU)",
                    truth_levels,
                    flags,
                    6,
                    "overscan level more than 5 ADU from truth",
                    "truth",
                )
        add(f"median{u}", medians, outliers(medians, min_absolute=2.0), 3, stand_out)
        add(f"clipped rms{u}", rms, outliers(rms, min_relative=0.2), 3, stand_out)
    elif calib_type == "dark":
        add(f"median{u}", medians, outliers(medians, min_absolute=0.01), 3, stand_out)
        add(f"clipped mean{u}", means, digits=3)
        add(f"clipped rms{u}", rms, outliers(rms, min_relative=0.2), 3, stand_out)
    else:
        add("clipped mean", means, outliers(means, min_relative=0.03), 4, stand_out)
        relative = [r / m if m else math.nan for r, m in zip(rms, means, strict=True)]
        add(
            "clipped rms (%)", [100 * r for r in relative], outliers(relative, min_relative=0.3), 3, stand_out
        )
    if expected is not None:
        res = [residual(a) for a in amps]
        med_res = [r[0] for r in res]
        if calib_type == "bias":
            tol = [max(0.5, 3 * s / math.sqrt(n_pixels(a))) for a, s in zip(amps, rms, strict=True)]
            flags = [abs(m) > t for m, t in zip(med_res, tol, strict=True)]
            add(f"mean − truth{u}", med_res, flags, 2, "bias differs from the truth", "truth")
            add(f"rms of (bias − truth){u}", [r[1] for r in res], digits=3, cls="truth")
        elif calib_type == "dark":
            tol = [max(0.002, 5 * s / math.sqrt(n_pixels(a))) for a, s in zip(amps, rms, strict=True)]
            flags = [abs(m) > t for m, t in zip(med_res, tol, strict=True)]
            add(f"truth mean{u}", [float(np.mean(expected[regions[a]])) for a in amps], digits=3, cls="truth")
            add(f"mean − truth{u}", med_res, flags, 2, "dark current differs from the truth", "truth")
        else:
            flags = [abs(r) > 0.005 for r in med_res]
            add(
                "flat / truth − 1 (%)",
                [100 * r for r in med_res],
                flags,
                2,
                "response differs from the truth by more than 0.5 %",
                "truth",
            )
            add("rms of flat / truth (%)", [100 * r[1] for r in res], digits=3, cls="truth")
    if calib_type in ("dark", "flat"):
        source = "dark" if calib_type == "dark" else "flat"
        what = "hot" if calib_type == "dark" else "cold"
        found = defect_counts(ctx.defect_sources(det).get(source), image.shape, regions)
        if found:
            add(f"{what} pixels found", [float(found[a]) for a in amps], digits=0)
            if dt is not None:
                truth_mask = dt.hot_mask if calib_type == "dark" else dt.cold_mask
                counts = [float(truth_mask[regions[a]].sum()) for a in amps]
                flags = [abs(found[a] - t) > max(2.0, 0.2 * t) for a, t in zip(amps, counts, strict=True)]
                add(
                    f"truth {what} pixels",
                    counts,
                    flags,
                    0,
                    f"found {what} pixels differ from the truth",
                    "truth",
                )
    add("BAD pixels", [float(stats[a].n_bad) for a in amps], digits=0)
    rows = [[Cell(amp, "l")] + [col[i] for col in columns] for i, amp in enumerate(amps)]
    parts = [f"<h3>Detector {det} ({esc(ctx.detector(det).name)})</h3>", table_html(header, rows)]
    if reasons:
        parts.append(findings_html(reasons, small=True))
        ctx.add(
            "warn",
            f"{calib_type} detector {det}: {len(reasons)} per-amplifier value(s) outside expectations",
            anchor,
        )
    return "".join(parts)
