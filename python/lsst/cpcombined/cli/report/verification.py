"""Verification of the bias, dark and flat: per-exposure pass/fail grids
(one cell per amplifier, failing cells named), the majority decision, and
the per-amplifier statistics against their thresholds."""

from __future__ import annotations

__all__ = ("TEST_ABBREVIATIONS", "verification_section")

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...obs.camera import AMP_NAMES
from .context import ReportContext
from .page import Cell, esc, figure_html, legend, note, pyplot, table_html

#: Short labels of cp_verify's tests in the grid cells.
TEST_ABBREVIATIONS = {
    "MEAN": "M",
    "NOISE": "N",
    "CR_NOISE": "CR",
    "PROCESSING": "P",
    "READ_NOISE_CONSISTENT": "RN",
    "POISSON_NOISE": "PN",
    "DET_SCATTER": "DS",
    "EXP_SCATTER": "ES",
}

_AMP_ORDER = {name: i for i, name in enumerate(AMP_NAMES)}
#: Largest number of failing cells listed by name.
_MAX_LISTED = 40


def _stage(calib_type: str) -> str:
    return calib_type.upper()


def _tests(table: Any, stage: str) -> tuple[list[str], list[str]]:
    """Amp-level test columns and detector/exposure-level test columns."""
    prefix = f"{stage}_VERIFY_"
    amp_tests = [c for c in table.colnames if c.startswith(prefix) and c != f"{prefix}SUCCESS"]
    level_tests = [
        c for c in table.colnames if c.startswith((f"{stage}_DET_VERIFY_", f"{stage}_EXP_VERIFY_"))
    ]
    return amp_tests, level_tests


def _test_name(column: str, stage: str) -> str:
    for prefix in (f"{stage}_VERIFY_", f"{stage}_DET_VERIFY_", f"{stage}_EXP_VERIFY_"):
        if column.startswith(prefix):
            name = column.removeprefix(prefix)
            if prefix.endswith("_DET_VERIFY_"):
                return f"DET_{name}"
            if prefix.endswith("_EXP_VERIFY_"):
                return f"EXP_{name}"
            return name
    return column


def _abbrev(name: str) -> str:
    return TEST_ABBREVIATIONS.get(name, name[:3])


def _detail(row: Any, stage: str, test: str, thresholds: Mapping[str, float]) -> str:
    """The statistic behind a failed test, in words."""

    def get(name: str) -> float:
        col = f"{stage}_{name}"
        try:
            return float(row[col])
        except (KeyError, TypeError, ValueError):
            return math.nan

    if test == "NOISE" and stage != "FLAT":
        noise, rn = get("NOISE"), get("READ_NOISE")
        if math.isfinite(noise) and rn > 0:
            return (
                f"noise {noise:.2f} vs read noise {rn:.2f} ({100 * (noise / rn - 1):+.1f} %, limit "
                f"+{100 * thresholds.get('noise', 0.05):.0f} %)"
            )
    if test == "NOISE" and stage == "FLAT":
        noise, root = get("NOISE_ADU"), get("SQRT_MEAN_ADU")
        if math.isfinite(noise) and root > 0:
            return f"noise {noise:.1f} ADU vs √mean {root:.1f} ADU (ratio {noise / root:.3f}, limit 1)"
    if test == "MEAN":
        mean, noise = get("MEAN"), get("NOISE")
        if math.isfinite(mean):
            return f"mean {mean:.2f} vs noise {noise:.2f} (|mean| must be < noise)"
    if test == "CR_NOISE":
        noise, cr = get("NOISE"), get("CR_NOISE")
        if math.isfinite(cr) and cr > 0:
            change = 100 * (noise / cr - 1)
            return f"noise {noise:.2f} vs noise after cosmic-ray repair {cr:.2f} ({change:+.1f} %)"
    if test == "DET_SCATTER":
        return f"amp-mean scatter {get('DET_SCATTER'):.3g} of mean {get('DET_MEAN'):.4g}"
    return ""


def _grid(
    ctx: ReportContext, calib_type: str, table: Any, decision: Mapping[str, Any]
) -> tuple[str, list[str]]:
    """The pass/fail grid and the names of the failing cells."""
    stage = _stage(calib_type)
    amp_tests, level_tests = _tests(table, stage)
    success = f"{stage}_VERIFY_SUCCESS"
    exposures = sorted({int(e) for e in table["exposure"]})
    detectors = sorted({int(d) for d in table["detector"]})
    amps = sorted({str(a) for a in table["amplifier"]}, key=lambda a: _AMP_ORDER.get(a, 99))
    cells: dict[tuple[int, int, str], Any] = {}
    for row in table:
        cells[(int(row["exposure"]), int(row["detector"]), str(row["amplifier"]))] = row
    failed_exposures = {str(e) for e in (decision.get("FAILED_EXPOSURES") or {})}
    thresholds = {"noise": 0.05}
    per_amp_columns = len(detectors) * len(amps) <= 64
    failures: list[str] = []
    rows = []
    for exp in exposures:
        line: list[str | Cell] = [Cell(str(exp), "l")]
        level_failed: set[str] = set()
        for det in detectors:
            failing_amps = []
            for amp in amps:
                row = cells.get((exp, det, amp))
                if row is None:
                    if per_amp_columns:
                        line.append(Cell("", "nv", f"{exp} det {det} {amp}: not verified"))
                    continue
                failed = [_test_name(c, stage) for c in amp_tests if not bool(row[c])]
                level_failed |= {_test_name(c, stage) for c in level_tests if not bool(row[c])}
                if failed or not bool(row[success]):
                    failed = failed or ["SUCCESS"]
                    failing_amps.append(amp)
                    details = "; ".join(filter(None, (_detail(row, stage, t, thresholds) for t in failed)))
                    failures.append(
                        f"{exp} detector {det} {amp}: {', '.join(failed)}"
                        + (f" — {details}" if details else "")
                    )
                    if per_amp_columns:
                        line.append(
                            Cell(
                                " ".join(_abbrev(t) for t in failed),
                                "fail",
                                f"{exp} det {det} {amp}: failed {', '.join(failed)}",
                            )
                        )
                elif per_amp_columns:
                    line.append(Cell("✓", "pass", f"{exp} det {det} {amp}: pass"))
            if not per_amp_columns:
                n = len(failing_amps)
                line.append(
                    Cell(
                        str(n) if n else "✓",
                        "fail" if n else "pass",
                        f"det {det}: failing amps {', '.join(failing_amps) or 'none'}",
                    )
                )
        if level_tests:
            line.append(
                Cell(
                    " ".join(_abbrev(t) for t in sorted(level_failed)) or "✓",
                    "fail" if level_failed else "pass",
                )
            )
            for t in sorted(level_failed):
                failures.append(f"{exp}: {t}")
        verdict = "fails" if str(exp) in failed_exposures else "passes"
        line.append(Cell(verdict, "fail" if verdict == "fails" else "pass"))
        rows.append(line)
    header: list[str | Cell] = [Cell("exposure", "l")]
    group_row = ""
    if per_amp_columns:
        header += [a for _ in detectors for a in amps]
        if len(detectors) > 1:
            extra = (1 if level_tests else 0) + 1
            group_row = (
                "<tr><th></th>"
                + "".join(f'<th colspan="{len(amps)}">detector {d}</th>' for d in detectors)
                + f'<th colspan="{extra}"></th></tr>'
            )
    else:
        header += [f"det {d}" for d in detectors]
    if level_tests:
        header.append("det/exp tests")
    header.append("exposure (majority rule)")
    grid = table_html(header, rows, cls="grid", raw_header=group_row)
    used = sorted({_test_name(c, stage) for c in amp_tests + level_tests})
    meaning = ", ".join(f"{_abbrev(t)} = {t}" for t in used)
    key = legend({"pass": "✓ all tests pass", "fail": f"failed tests ({meaning})", "nv": "not verified"})
    return key + grid, failures


def _statistics_figure(calib_type: str, table: Any) -> str:
    """Per-amplifier distributions (over the exposures) of the statistics
    the tests compare with their thresholds."""
    plt = pyplot()
    stage = _stage(calib_type)
    det_amp = sorted(
        {(int(d), str(a)) for d, a in zip(table["detector"], table["amplifier"], strict=False)},
        key=lambda k: (k[0], _AMP_ORDER.get(k[1], 99)),
    )
    single = len({d for d, _ in det_amp}) == 1
    labels = [a if single else f"{d}:{a}" for d, a in det_amp]

    def column(name: str) -> dict[tuple[int, str], np.ndarray]:
        out: dict[tuple[int, str], list[float]] = {k: [] for k in det_amp}
        col = f"{stage}_{name}"
        if col not in table.colnames:
            return {}
        for row in table:
            out[(int(row["detector"]), str(row["amplifier"]))].append(float(row[col]))
        return {k: np.asarray(v) for k, v in out.items()}

    if stage == "FLAT":
        noise, root = column("NOISE_ADU"), column("SQRT_MEAN_ADU")
        panels = []
        if noise and root:
            panels.append(
                ("noise / √mean (ADU)", {k: noise[k] / root[k] for k in det_amp}, [(1.0, "NOISE limit")])
            )
        mean = column("MEAN")
        if mean:
            panels.append(("amp mean (e-)", mean, []))
    else:
        noise, rn, mean = column("NOISE"), column("READ_NOISE"), column("MEAN")
        panels = []
        if noise and rn:
            panels.append(
                (
                    "(noise − read noise) / read noise",
                    {k: noise[k] / rn[k] - 1 for k in det_amp},
                    [(0.05, "NOISE limit +5 %")],
                )
            )
        if mean and noise:
            panels.append(
                (
                    "mean / noise",
                    {k: mean[k] / noise[k] for k in det_amp},
                    [(1.0, "MEAN limits ±1"), (-1.0, "")],
                )
            )
    if not panels:
        return ""
    width = min(13.5, max(8.0, 0.42 * len(det_amp) + 2.5))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(width if len(panels) == 1 else 13.5, 3.6), squeeze=False
    )
    for ax, (ylabel, data, lines) in zip(axes[0], panels, strict=False):
        values = [data[k][np.isfinite(data[k])] for k in det_amp]
        ax.boxplot(
            values,
            tick_labels=labels,
            widths=0.6,
            showfliers=True,
            flierprops={"markersize": 3},
            medianprops={"color": "#1f5fbf"},
        )
        for y, text in lines:
            ax.axhline(y, color="#c62828", lw=1.2, ls="--", label=text or None)
        ax.set_ylabel(ylabel, fontsize=11)
        ax.set_xlabel("amplifier" if single else "detector:amplifier", fontsize=11)
        ax.tick_params(axis="x", labelrotation=90, labelsize=9)
        ax.tick_params(axis="y", labelsize=10)
        ax.grid(axis="y", alpha=0.3)
        if lines:
            ax.legend(fontsize=9, loc="best")
    fig.suptitle(
        f"{calib_type}: per-amplifier statistics over the {len(set(table['exposure']))} exposures",
        fontsize=12,
    )
    fig.tight_layout()
    return figure_html(
        fig,
        f"{calib_type} statistics per amplifier",
        "Boxes: quartiles over the exposures, whiskers 1.5 IQR, points beyond them; dashed red: the "
        "test limits.",
        dpi=90,
    )


def verification_section(ctx: ReportContext, calib_type: str, anchor: str) -> str:
    """The verification of one calibration type."""
    out = ctx.outcome(calib_type)
    if out is None or not out.verification_collection:
        return note(f"The {calib_type} was not verified in this run.")
    table = ctx.verify_results(calib_type)
    parts = [f"<p class='small'>Verification collection {esc(out.verification_collection)}.</p>"]
    decision = out.extra.get("decision") or {}
    if table is None or len(table) == 0:
        parts.append(note(f"verify{calib_type.capitalize()}Results is not available."))
        return "".join(parts)
    grid, failures = _grid(ctx, calib_type, table, decision)
    n_cells = len(table)
    n_fail = len([f for f in failures if " detector " in f])
    parts.append(
        f"<p>{len(set(table['exposure']))} exposures × {len(set(table['detector']))} detector(s) × "
        f"{len(set(table['amplifier']))} amplifiers: <b>{n_fail}</b> failing amplifier-exposures out of "
        f"{n_cells}.</p>"
    )
    parts.append(grid)
    if failures:
        listed = "".join(f"<li>{esc(f)}</li>" for f in failures[:_MAX_LISTED])
        more = f"<li>… and {len(failures) - _MAX_LISTED} more</li>" if len(failures) > _MAX_LISTED else ""
        parts.append(f"<p><b>Failing cells:</b></p><ul class='findings small'>{listed}{more}</ul>")
        severity = "bad" if out.decision == "fail" else "warn"
        ctx.add(severity, f"{calib_type}: {n_fail} failing amplifier-exposures in the verification", anchor)
    report = out.decision_report or decision.get("REPORT", "")
    if report:
        parts.append(
            f"<details open><summary>Majority decision: {esc(out.decision)}</summary>"
            f"<pre>{esc(report)}</pre></details>"
        )
    rule = decision.get("RULE")
    if rule:
        parts.append(f"<details><summary>The rule</summary><p class='small'>{esc(rule)}</p></details>")
    try:
        parts.append(_statistics_figure(calib_type, table))
    except Exception as err:  # a figure must never hide the rest
        parts.append(note(f"statistics figure not available: {err}"))
    return "".join(parts)
