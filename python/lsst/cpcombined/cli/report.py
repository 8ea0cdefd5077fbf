"""Self-contained HTML report of a procedure run (images embedded, no
network): the decision table with its reasons, per-amp verification
pass/fail grids per exposure, noise and mean per amp against their
thresholds, PTC curves with fit and residuals, defect maps, thumbnails of the
combined products and timings per step."""

from __future__ import annotations

__all__ = ("write_report",)

import base64
import html
import io
import logging
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..repo.calib_tables import ptc_amp_results, read_defects, read_ptc
from ..repo.exposure_fits import read_exposure_fits

_LOG = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
h1{margin-bottom:0} h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} .pass{background:#d8f5d8} .fail{background:#f9d4d4} .nv{background:#eee}
pre{background:#f7f7f7;padding:8px;white-space:pre-wrap;font-size:90%} img{max-width:100%}
.thumbs{display:flex;flex-wrap:wrap;gap:12px} .thumbs figure{margin:0} figcaption{font-size:85%;text-align:center}
.note{color:#777;font-style:italic}
"""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _img(fig: Any, width: int | None = None) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    style = f' style="width:{width}px"' if width else ""
    return f'<img src="data:image/png;base64,{data}"{style}>'


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _downsample(image: np.ndarray, target: int = 200) -> np.ndarray:
    step = max(1, int(np.ceil(max(image.shape) / target)))
    ny, nx = (image.shape[0] // step) * step, (image.shape[1] // step) * step
    blocks = image[:ny, :nx].reshape(ny // step, step, nx // step, step)
    with np.errstate(all="ignore"):
        return np.nanmean(blocks, axis=(1, 3))


def _safe(what: str, func, *args, **kwargs) -> str:
    try:
        return func(*args, **kwargs)
    except Exception as err:  # a report must never fail the run
        _LOG.warning("Report section %s unavailable: %s", what, err)
        return f'<p class="note">{_esc(what)}: not available ({_esc(err)})</p>'


# -- sections --------------------------------------------------------------------


def _decision_table(summary: Any) -> str:
    rows = []
    for name, out in summary.calibrations.items():
        cls = {"pass": "pass", "fail": "fail"}.get(out.decision, "nv")
        validity = " – ".join(out.validity) if out.validity else ""
        reasons = f"<pre>{_esc(out.decision_report)}</pre>" if out.decision_report else ""
        rows.append(
            f'<tr><td>{_esc(name)}</td><td class="{cls}">{_esc(out.decision)}</td>'
            f'<td class="{"pass" if out.certified else "fail"}">{out.certified}</td>'
            f"<td>{_esc(out.calib_collection or '')}</td><td>{_esc(validity)}</td>"
            f"<td>{_esc(out.generated_collection or '')}<br>{_esc(out.verification_collection or '')}</td>"
            f"<td>{len(out.exposures)}</td><td>{reasons}</td></tr>"
        )
    return (
        "<table><tr><th>calibration</th><th>decision</th><th>certified</th><th>calib collection</th>"
        "<th>validity</th><th>generated / verification collections</th><th>exposures</th><th>reasons</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _timings(summary: Any) -> str:
    rows = "".join(
        f'<tr><td>{_esc(s.name)}</td><td>{s.seconds:.1f}</td><td class="{"pass" if s.status == "ok" else "fail"}">'
        f"{_esc(s.status)}</td><td>{_esc(s.detail)}</td></tr>"
        for s in summary.steps
    )
    total = sum(s.seconds for s in summary.steps)
    return (
        "<table><tr><th>step</th><th>seconds</th><th>status</th><th>detail</th></tr>"
        + rows
        + f"<tr><th>total (steps overlap)</th><th>{total:.1f}</th><th></th><th></th></tr></table>"
    )


def _verify_results(butler: Any, instrument: str, calib_type: str, collection: str, physical_filter: str):
    label = calib_type.capitalize()
    data_id = {"instrument": instrument}
    if calib_type == "flat":
        data_id["physical_filter"] = physical_filter
    return butler.get(f"verify{label}Results", collections=collection, **data_id)


def _stage(calib_type: str) -> str:
    """Column prefix of a verification results table (cp_verify's stage name)."""
    return calib_type.upper()


def _verification_grid(table: Any, calib_type: str) -> str:
    plt = _plt()
    stage = _stage(calib_type)
    cols = table.colnames
    exposures = sorted({int(e) for e in table["exposure"]})
    keys = sorted({(int(d), str(a)) for d, a in zip(table["detector"], table["amplifier"])})
    grid = np.full((len(exposures), len(keys)), np.nan)
    success_col = f"{stage}_VERIFY_SUCCESS"
    test_cols = [c for c in cols if c.startswith(f"{stage}_VERIFY_") and c != success_col]
    for row in table:
        i = exposures.index(int(row["exposure"]))
        j = keys.index((int(row["detector"]), str(row["amplifier"])))
        grid[i, j] = 1.0 if bool(row[success_col]) else 0.0
    fig, ax = plt.subplots(figsize=(max(4, 0.25 * len(keys) + 2), max(2, 0.22 * len(exposures) + 1.5)))
    from matplotlib.colors import ListedColormap

    ax.imshow(grid, cmap=ListedColormap(["#d9534f", "#5cb85c"]), vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(exposures)), [str(e) for e in exposures], fontsize=7)
    ax.set_xticks(range(len(keys)), [f"{d} {a}" for d, a in keys], rotation=90, fontsize=6)
    ax.set_title(f"{calib_type}: per-amp pass (green) / fail (red) per exposure")
    n_fail = int(np.nansum(grid == 0))
    failures = ""
    if test_cols:
        counts = {
            c.removeprefix(f"{stage}_VERIFY_"): int(np.sum(~np.asarray(table[c], dtype=bool))) for c in test_cols
        }
        failures = ", ".join(f"{k}: {v}" for k, v in counts.items())
    return _img(fig) + f"<p>{n_fail} failing amp-exposures. Failures per test: {_esc(failures or 'none')}.</p>"


def _noise_mean_plot(table: Any, calib_type: str, thresholds: dict[str, float]) -> str:
    plt = _plt()
    stage = _stage(calib_type)
    cols = {c.removeprefix(f"{stage}_"): c for c in table.colnames}
    keys = sorted({(int(d), str(a)) for d, a in zip(table["detector"], table["amplifier"])})
    index = {k: i for i, k in enumerate(keys)}
    x = np.array([index[(int(d), str(a))] for d, a in zip(table["detector"], table["amplifier"])])
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
    if calib_type == "flat" and "NOISE_ADU" in cols and "SQRT_MEAN_ADU" in cols:
        ratio = np.asarray(table[cols["NOISE_ADU"]], float) / np.asarray(table[cols["SQRT_MEAN_ADU"]], float)
        axes[0].plot(x, ratio, "k.", ms=3)
        axes[0].axhline(1.0, color="r", lw=1, label="NOISE threshold: std ≤ √mean (ADU)")
        axes[0].set_ylabel("std / √mean (ADU)")
        means = np.asarray(table[cols["MEANCLIP" if "MEANCLIP" in cols else "MEAN"]], float)
        axes[1].plot(x, means, "k.", ms=3)
        axes[1].set_ylabel("clipped mean (e-)")
    else:
        noise = np.asarray(table[cols["NOISE"]], float)
        rn = np.asarray(table[cols["READ_NOISE"]], float)
        axes[0].plot(x, noise / rn - 1, "k.", ms=3)
        axes[0].axhline(thresholds.get("noise", 0.05), color="r", lw=1, label="NOISE threshold")
        axes[0].set_ylabel("(noise − read noise) / read noise")
        mean = np.asarray(table[cols["MEANCLIP" if "MEANCLIP" in cols else "MEAN"]], float)
        axes[1].plot(x, mean / noise, "k.", ms=3)
        for s in (-1, 1):
            axes[1].axhline(s, color="r", lw=1)
        axes[1].set_ylabel("mean / noise (MEAN passes within ±1)")
    for ax in axes:
        ax.set_xticks(range(len(keys)), [f"{d} {a}" for d, a in keys], rotation=90, fontsize=6)
        ax.legend(fontsize=7, loc="best") if ax.get_legend_handles_labels()[0] else None
    fig.suptitle(f"{calib_type}: per-amp statistics of every exposure vs thresholds")
    return _img(fig)


def _ptc_plots(butler: Any, instrument: str, collection: str, detectors: Iterable[int]) -> str:
    plt = _plt()
    out = []
    for det in detectors:
        uri = butler.getURI("ptc", instrument=instrument, detector=det, collections=collection)
        table = ptc_amp_results(read_ptc(uri.ospath))
        n = len(table)
        ncol = 4
        nrow = int(np.ceil(n / ncol))
        fig, axes = plt.subplots(
            2 * nrow,
            ncol,
            figsize=(14, 4.2 * nrow),
            gridspec_kw={"height_ratios": [3, 1] * nrow, "hspace": 0.55},
        )
        axes = np.atleast_2d(axes)
        rows_html = []
        for k, row in enumerate(table):
            r, c = divmod(k, ncol)
            ax, axr = axes[2 * r, c], axes[2 * r + 1, c]
            mu = np.asarray(row["means"], float)
            var = np.asarray(row["variances"], float)
            model = np.asarray(row["model_variances"], float)
            kept = np.asarray(row["kept"], bool)
            ax.plot(mu[kept], var[kept], "k.", ms=4, label="kept")
            ax.plot(mu[~kept], var[~kept], "rx", ms=4, label="rejected")
            order = np.argsort(mu)
            good = np.isfinite(model[order])
            ax.plot(mu[order][good], model[order][good], "b-", lw=1, label="eq. 16 fit")
            ax.set_title(f"{row['amplifier']}: g={row['gain']:.3f} n={row['noise']:.2f} a00={row['a00']:.2g}", fontsize=8)
            ax.tick_params(labelsize=6)
            with np.errstate(all="ignore"):
                axr.plot(mu[kept], (var[kept] - model[kept]) / model[kept], "k.", ms=3)
            axr.axhline(0, color="b", lw=0.8)
            axr.tick_params(labelsize=6)
            if k == 0:
                ax.legend(fontsize=6)
            rows_html.append(
                f'<tr class="{"fail" if row["bad"] else ""}"><td>{_esc(row["amplifier"])}</td>'
                f"<td>{row['gain']:.4f} ± {row['gain_err']:.4f}</td><td>{row['noise']:.2f} ± {row['noise_err']:.2f}</td>"
                f"<td>{row['a00']:.3g} ± {row['a00_err']:.2g}</td><td>{row['turnoff']:.0f}</td>"
                f"<td>{_esc(row['flags'])} {_esc(row['reason'])}</td></tr>"
            )
        fig.suptitle(f"PTC detector {det}: variance vs mean (ADU) and fractional residuals")
        out.append(
            _img(fig)
            + "<table><tr><th>amp</th><th>gain (e-/ADU)</th><th>noise (e-)</th><th>a00</th><th>turnoff (ADU)</th>"
            "<th>flags</th></tr>" + "".join(rows_html) + "</table>"
        )
    return "".join(out)


def _defect_maps(butler: Any, instrument: str, collection: str, detectors: Iterable[int]) -> str:
    from ..algorithms.defects import table_to_mask

    plt = _plt()
    figs = []
    for det in detectors:
        table = read_defects(butler.getURI("defects", instrument=instrument, detector=det, collections=collection).ospath)
        mask = table_to_mask(table)
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(mask, origin="lower", cmap="gray_r", interpolation="nearest")
        ax.set_title(f"detector {det}: {len(table)} boxes, {int(mask.sum())} px", fontsize=9)
        figs.append(f"<figure>{_img(fig, 320)}</figure>")
    return '<div class="thumbs">' + "".join(figs) + "</div>"


def _thumbnails(butler: Any, instrument: str, summary: Any, detectors: Iterable[int], physical_filter: str) -> str:
    plt = _plt()
    figs = []
    for calib_type in ("bias", "dark", "flat"):
        out = summary.calibrations.get(calib_type)
        if out is None or not out.generated_collection:
            continue
        for det in detectors:
            data_id = dict(instrument=instrument, detector=det)
            if calib_type == "flat":
                data_id["physical_filter"] = physical_filter
            try:
                uri = butler.getURI(calib_type, collections=out.generated_collection, **data_id)
                mi = read_exposure_fits(uri.ospath)
            except Exception as err:
                figs.append(f'<p class="note">{calib_type} detector {det}: {_esc(err)}</p>')
                continue
            small = _downsample(mi.image.array)
            finite = small[np.isfinite(small)]
            lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0, 1)
            fig, ax = plt.subplots(figsize=(3, 3))
            im = ax.imshow(small, origin="lower", cmap="viridis", vmin=lo, vmax=hi)
            fig.colorbar(im, ax=ax, fraction=0.046)
            ax.set_axis_off()
            ax.set_title(f"{calib_type} det {det} ({mi.image.unit or 'rel.'})", fontsize=9)
            figs.append(f"<figure>{_img(fig, 260)}</figure>")
    return '<div class="thumbs">' + "".join(figs) + "</div>"


def write_report(path: str | os.PathLike, summary: Any, *, repo: str, config: Any) -> None:
    """Write the HTML report of a run.

    Parameters
    ----------
    path
        Output HTML file.
    summary
        `lsst.cpcombined.script.RunSummary` of the run.
    repo
        Butler repository.
    config
        The validated `lsst.cpcombined.script.ScriptConfig`.
    """
    from lsst.daf.butler import Butler

    butler = Butler.from_config(repo)
    instrument = summary.instrument
    detectors = list(config.detectors)
    status = "SUCCESS" if summary.success else f"FAILED: {summary.error}"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(instrument)} calibrations {_esc(summary.run_id)}"
        f"</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(instrument)} combined calibrations</h1>",
        f"<p>Run {_esc(summary.run_id)} — <b class='{'pass' if summary.success else 'fail'}'>{_esc(status)}</b>"
        f" — repository {_esc(repo)}</p>",
        "<h2>Decisions and certification</h2>",
        _decision_table(summary),
    ]
    for calib_type in ("bias", "dark", "flat"):
        out = summary.calibrations.get(calib_type)
        if out is None or not out.verification_collection:
            continue
        parts.append(f"<h2>Verification: {calib_type}</h2>")
        try:
            table = _verify_results(butler, instrument, calib_type, out.verification_collection, config.filter)
        except Exception as err:
            parts.append(f'<p class="note">results table not available ({_esc(err)})</p>')
            continue
        parts.append(_safe("pass/fail grid", _verification_grid, table, calib_type))
        parts.append(_safe("noise and mean per amp", _noise_mean_plot, table, calib_type, {"noise": 0.05}))
    ptc = summary.calibrations.get("ptc")
    if ptc is not None and ptc.generated_collection:
        parts.append("<h2>Photon transfer curves</h2>")
        parts.append(_safe("PTC", _ptc_plots, butler, instrument, ptc.generated_collection, detectors))
    defects = summary.calibrations.get("defects")
    if defects is not None and defects.generated_collection:
        parts.append("<h2>Defect maps</h2>")
        parts.append(_safe("defects", _defect_maps, butler, instrument, defects.generated_collection, detectors))
    parts.append("<h2>Combined products</h2>")
    parts.append(_safe("thumbnails", _thumbnails, butler, instrument, summary, detectors, config.filter))
    parts.append("<h2>Timings per step</h2>")
    parts.append(_timings(summary))
    parts.append("</body></html>")
    with open(path, "w") as f:
        f.write("\n".join(parts))
