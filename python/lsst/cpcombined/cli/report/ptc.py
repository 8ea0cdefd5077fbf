"""Photon transfer curves as a PTC expert reads them: variance vs mean on
log axes with the model, the fit residuals, variance/mean vs mean (the
inverse gain, falling with the brighter-fatter effect) and the nearest
covariances vs mean; and the per-amplifier fit results, with the simulated
truth beside them."""

from __future__ import annotations

__all__ = ("ptc_model", "ptc_section")

import math
from typing import Any

import numpy as np

from ...obs.camera import AMP_NAMES
from .context import ReportContext
from .page import Cell, esc, figure_html, findings_html, fmt, fmt_err, legend, note, pyplot, table_html


def ptc_model(mu: np.ndarray, a00: float, gain: float, n00: float) -> np.ndarray:
    """Astier et al. (2019) eq. 16 (cp_pipe's ``EXPAPPROXIMATION``):
    variance (ADU²) at mean ``mu`` (ADU) for ``a00`` (1/e-), ``gain``
    (e-/ADU) and ``n00`` (e-²)."""
    mu = np.asarray(mu, dtype=np.float64)
    if a00 == 0 or not math.isfinite(a00):
        return mu / gain + n00 / gain**2
    return 0.5 / (a00 * gain * gain) * np.expm1(2 * a00 * mu * gain) + n00 / gain**2


def _arrays(row: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mu = np.asarray(row["means"], dtype=np.float64)
    var = np.asarray(row["variances"], dtype=np.float64)
    kept = np.asarray(row["kept"], dtype=bool) & np.isfinite(mu) & np.isfinite(var)
    model = np.asarray(row["model_variances"], dtype=np.float64)
    return mu, var, kept, model


def _pars(row: Any) -> tuple[float, float, float]:
    return float(row["a00"]), float(row["gain"]), float(row["n00"])


def _smooth(row: Any, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    good = mu[np.isfinite(mu) & (mu > 0)]
    if good.size == 0:
        return np.array([]), np.array([])
    grid = np.geomspace(good.min() * 0.8, good.max() * 1.15, 120)
    a00, gain, n00 = _pars(row)
    if not (math.isfinite(gain) and gain > 0 and math.isfinite(n00)):
        return np.array([]), np.array([])
    return grid, ptc_model(grid, a00, gain, n00)


def _colours(n: int) -> list[Any]:
    cmap = pyplot().get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


#: Inches of canvas right of the PTC panels, for the legend.
_LEGEND_INCHES = 1.0


def _overview_figure(rows: list[Any], det: int, name: str) -> Any:
    """Variance vs mean (log–log), variance/mean vs mean and the nearest
    covariances vs mean, all amplifiers overlaid."""
    plt = pyplot()
    # The panels span 14 inches; the legend right of them is inside the
    # canvas (the figure is drawn once, then cropped).
    width = 14.0 + _LEGEND_INCHES
    fig, axes = plt.subplots(1, 3, figsize=(width, 4.6))
    ax_var, ax_ratio, ax_cov = axes
    colours = _colours(len(rows))
    handles = []
    for row, colour in zip(rows, colours, strict=False):
        mu, var, kept, _ = _arrays(row)
        x, y = _smooth(row, mu)
        (h,) = ax_var.plot(mu[kept], var[kept], "o", ms=3.2, color=colour, label=str(row["amplifier"]))
        handles.append(h)
        ax_var.plot(mu[~kept], var[~kept], "x", ms=5, color=colour)
        ax_var.plot(x, y, "-", lw=0.8, color=colour)
        with np.errstate(all="ignore"):
            ax_ratio.plot(mu[kept], var[kept] / mu[kept], "o", ms=3.2, color=colour)
            ax_ratio.plot(mu[~kept], var[~kept] / mu[~kept], "x", ms=5, color=colour)
            ax_ratio.plot(x, y / x, "-", lw=0.8, color=colour)
        cov = np.asarray(row["covariances"], dtype=np.float64) if "covariances" in row.colnames else None
        if cov is not None and cov.ndim == 3 and cov.shape[1] > 1 and cov.shape[2] > 1:
            ax_cov.plot(mu[kept], cov[kept, 0, 1], "o", ms=3.2, color=colour)
            ax_cov.plot(mu[kept], cov[kept, 1, 0], "s", ms=3.6, mfc="none", color=colour)
    ax_var.set_xscale("log")
    ax_var.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (ax_var.xaxis, ax_var.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax_var.set_xlabel("mean (ADU)", fontsize=10)
    ax_var.set_ylabel("variance (ADU²)", fontsize=10)
    ax_var.set_title("variance vs mean, with the model", fontsize=11)
    ax_ratio.set_xlabel("mean (ADU)", fontsize=10)
    ax_ratio.set_ylabel("variance / mean (ADU)", fontsize=10)
    ax_ratio.set_title("variance/mean vs mean (≈ 1/gain)", fontsize=11)
    ax_cov.axhline(0, color="#999", lw=0.8)
    ax_cov.set_xlabel("mean (ADU)", fontsize=10)
    ax_cov.set_ylabel("covariance (ADU²)", fontsize=10)
    ax_cov.set_title("C01 (filled) and C10 (open) vs mean", fontsize=11)
    for ax in axes:
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.25)
    fig.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(0.995 * 14.0 / width, 0.5),
        fontsize=8,
        ncol=1,
        title="amp",
        title_fontsize=9,
        frameon=False,
    )
    fig.suptitle(
        f"PTC detector {det} ({name}): points kept (•) and rejected (×); lines: the eq. 16 model",
        fontsize=12,
        x=0.5 * 14.0 / width,
    )
    fig.tight_layout(rect=(0.0, 0.0, 14.0 / width, 1.0))
    return fig


def _residual_figure(rows: list[Any], det: int) -> Any:
    """Fractional fit residuals, one small panel per amplifier."""
    plt = pyplot()
    n = len(rows)
    ncol = 8 if n > 8 else n
    nrow = int(math.ceil(n / ncol))
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(14.0, 1.75 * nrow + 0.8), sharex=True, sharey=True, squeeze=False
    )
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_axis_off()
            continue
        row = rows[k]
        mu, var, kept, model = _arrays(row)
        with np.errstate(all="ignore"):
            frac = 100 * (var - model) / model
        ax.axhline(0, color="#1f5fbf", lw=0.9)
        ax.plot(mu[kept], frac[kept], "o", ms=3, color="#222")
        ax.plot(mu[~kept], frac[~kept], "x", ms=4.5, color="#d62728")
        ax.text(0.05, 0.9, str(row["amplifier"]), transform=ax.transAxes, fontsize=9, va="top")
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25)
    for ax in axes[-1]:
        ax.set_xlabel("mean (ADU)", fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("residual (%)", fontsize=9)
    fig.suptitle(
        f"PTC detector {det}: (variance − model) / model per amplifier (red ×: rejected)", fontsize=11
    )
    fig.subplots_adjust(
        left=0.06,
        right=0.99,
        bottom=0.22 if nrow == 1 else 0.14,
        top=0.86 if nrow > 1 else 0.8,
        hspace=0.12,
        wspace=0.06,
    )
    return fig


def _figures(ptc: Any, det: int, name: str) -> list[str]:
    order = {a: i for i, a in enumerate(AMP_NAMES)}
    rows = sorted(ptc, key=lambda r: order.get(str(r["amplifier"]), 99))
    return [
        figure_html(
            _overview_figure(rows, det, name),
            f"PTC curves detector {det}",
            "Left: variance vs mean on log axes with each amplifier's fitted model. Middle: variance/mean, "
            "1/gain at low flux, rising at the faint end (read noise) and falling at high flux "
            "(brighter-fatter). Right: the COVARIANCES at lags (0, 1) and (1, 0) in the normalisation of "
            "the variance (the lag (0, 0)), growing with the flux through the brighter-fatter effect.",
            dpi=90,
        ),
        figure_html(
            _residual_figure(rows, det),
            f"PTC residuals detector {det}",
            "Residuals in per cent of the model; the panels are in the order of the amplifiers' "
            "read-out (C10–C17, then C07–C00).",
            dpi=90,
        ),
    ]


def ptc_section(ctx: ReportContext, anchor: str) -> str:
    """Fit results table and figures of every detector's PTC."""
    out = ctx.outcome("ptc")
    if out is None or not out.generated_collection:
        return note("No PTC was made in this run.")
    parts = []
    for det in ctx.detectors:
        ptc = ctx.ptc(det)
        if ptc is None:
            parts.append(note(f"PTC of detector {det}: not available."))
            continue
        desc = ctx.detector(det)
        dt = ctx.detector_truth(det)
        parts.append(f"<h3>Detector {det} ({esc(desc.name)})</h3>")
        rows = []
        reasons = []
        for row in ptc:
            amp = str(row["amplifier"])
            nominal = desc.amplifier(amp)
            gain, gerr = float(row["gain"]), float(row["gain_err"])
            cells: list[str | Cell] = [Cell(amp, "l")]
            gain_cls = ""
            why = ""
            if abs(gain / nominal.gain - 1) > 0.10:
                gain_cls, why = (
                    "warn",
                    f"gain {gain:.3f} is more than 10 % from the nominal {nominal.gain:.3f}",
                )
            truth_gain = float(dt.gain[amp]) if dt is not None else math.nan
            if math.isfinite(truth_gain) and abs(gain - truth_gain) > max(3 * gerr, 0.01 * truth_gain):
                gain_cls, why = (
                    "warn",
                    f"gain {gain:.4f} ± {gerr:.4f} differs from the truth {truth_gain:.4f}",
                )
            if why:
                reasons.append(f"{amp}: {why}")
            cells.append(Cell(fmt_err(gain, gerr), gain_cls, why))
            cells.append(fmt(nominal.gain, 4))
            if dt is not None:
                cells.append(Cell(fmt(truth_gain, 4), "truth"))
            cells.append(fmt_err(row["noise"], row["noise_err"]))
            cells.append(fmt(nominal.read_noise, 3))
            if dt is not None:
                cells.append(Cell(fmt(dt.read_noise[amp], 3), "truth"))
            cells.append(fmt_err(row["a00"], row["a00_err"]))
            if dt is not None:
                cells.append(Cell(fmt(dt.a00, 3), "truth"))
            cells.append(fmt(row["turnoff"], 5))
            chi2 = float(row["chi2_dof"])
            cells.append(Cell(fmt(chi2, 3), "warn" if math.isfinite(chi2) and chi2 > 5 else ""))
            n_kept = int(row["n_kept"]) if "n_kept" in ptc.colnames else int(np.sum(row["kept"]))
            n_points = int(row["n_points"]) if "n_points" in ptc.colnames else len(row["kept"])
            cells.append(f"{n_kept}/{n_points}")
            flags = " ".join(
                str(row[c]) for c in ("flags", "reason") if c in ptc.colnames and str(row[c]).strip()
            )
            bad = bool(row["bad"])
            cells.append(Cell(("BAD " if bad else "") + flags, "l fail" if bad else "l"))
            if bad:
                reasons.append(f"{amp}: marked bad ({flags})")
                ctx.add("bad", f"PTC detector {det} {amp}: marked bad ({flags})", anchor)
            rows.append(cells)
        header = ["amp", "gain (e-/ADU)", "nominal gain"] + (["truth gain"] if dt is not None else [])
        header += ["noise (e-)", "nominal noise"] + (["truth noise"] if dt is not None else [])
        header += ["a00 (1/e-)"] + (["truth a00"] if dt is not None else [])
        header += ["turnoff (ADU)", "χ²/dof", "pairs kept", "flags"]
        parts.append(table_html(header, rows))
        if reasons:
            parts.append(findings_html(reasons, small=True))
            ctx.add(
                "warn",
                f"PTC detector {det}: {len(reasons)} amplifier(s) with values outside expectations",
                anchor,
            )
        try:
            parts.extend(_figures(ptc, det, desc.name))
        except Exception as err:  # a figure must never hide the rest
            parts.append(note(f"PTC figures of detector {det} not available: {err}"))
    key = {"warn": "outside expectations (hover for why)", "fail": "amplifier marked bad"}
    return legend(key) + "".join(parts)
