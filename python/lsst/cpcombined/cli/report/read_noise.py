"""Read noise of every amplifier from every source, side by side: the
camera's nominal value, the measurements recorded in the combined bias
(overscan and imaging area, see `lsst.cpcombined.algorithms.read_noise`),
the photon transfer curve's fitted noise and, for a simulated run, the
truth; with the amplifiers whose values disagree beyond their errors
flagged.

Values are compared in ADU (each converted with its own gain: the ISR's for
the measurements, the PTC's for the fit, the nominal gain for the nominal
value), so a gain that differs from the nominal one does not look like a
read-noise problem; they are shown in electrons.
"""

from __future__ import annotations

__all__ = (
    "NOMINAL_TOLERANCE",
    "N_SIGMA",
    "SYSTEMATIC",
    "AmpReadNoise",
    "read_noise_checks",
    "read_noise_section",
    "read_noise_summary",
)

import dataclasses
import math
from typing import Any

from ...algorithms.read_noise import ReadNoiseDisagreement, ReadNoiseEstimate, compare_read_noise
from .context import ReportContext
from .page import Cell, esc, findings_html, fmt, fmt_err, legend, note, table_html

#: Relative accuracy trusted for each source beyond its statistical error.
SYSTEMATIC = {"overscan": 0.01, "image": 0.01, "ptc": 0.0, "nominal": 0.10}
#: The camera's nominal read noise is trusted to this fraction.
NOMINAL_TOLERANCE = SYSTEMATIC["nominal"]
#: Two sources disagree beyond this many combined errors.
N_SIGMA = 3.0

_LABEL = {"nominal": "nominal", "overscan": "overscan", "image": "imaging area", "ptc": "PTC fit"}
_NAN = ReadNoiseEstimate(math.nan, math.nan, 0)


@dataclasses.dataclass
class AmpReadNoise:
    """Read noise of one amplifier from every source (electrons).

    Attributes
    ----------
    detector, amplifier
        Which amplifier.
    nominal, nominal_gain
        The camera's values.
    overscan, image
        Measurements recorded in the combined bias (clipped mean of the
        inputs' overscan noise; white noise of bias-pair differences).
    isr_gain
        Gain the ISR converted the measurements with.
    ptc, ptc_gain
        The PTC's fitted noise and gain.
    truth
        Simulated truth (NaN for a real run).
    disagreements
        Pairs of sources that disagree (`compare_read_noise`, in ADU).
    """

    detector: int
    amplifier: str
    nominal: float
    nominal_gain: float
    overscan: ReadNoiseEstimate = _NAN
    image: ReadNoiseEstimate = _NAN
    isr_gain: float = math.nan
    ptc: ReadNoiseEstimate = _NAN
    ptc_gain: float = math.nan
    truth: float = math.nan
    disagreements: list[ReadNoiseDisagreement] = dataclasses.field(default_factory=list)

    def electrons(self, source: str) -> tuple[float, float]:
        """``(value, error)`` of a source in electrons."""
        if source == "nominal":
            return self.nominal, self.nominal * NOMINAL_TOLERANCE
        est: ReadNoiseEstimate = getattr(self, source)
        return est.value, est.error

    def gain(self, source: str) -> float:
        """Gain converting a source between ADU and electrons."""
        return {"nominal": self.nominal_gain, "ptc": self.ptc_gain}.get(source, self.isr_gain)

    @property
    def flagged_sources(self) -> set[str]:
        """Sources involved in a disagreement."""
        return {s for d in self.disagreements for s in (d.first, d.second)}

    def describe(self, d: ReadNoiseDisagreement) -> str:
        """One line naming the amplifier and the two values in electrons."""
        (v1, e1), (v2, e2) = self._total(d.first), self._total(d.second)
        return (
            f"detector {self.detector} {self.amplifier}: {_LABEL[d.first]} {v1:.2f} ± {e1:.2f} e- vs "
            f"{_LABEL[d.second]} {v2:.2f} ± {e2:.2f} e- ({d.n_sigma:.1f} σ)"
        )

    def _total(self, source: str) -> tuple[float, float]:
        value, error = self.electrons(source)
        error = error if math.isfinite(error) else 0.0
        return value, math.hypot(error, SYSTEMATIC.get(source, 0.0) * value) if source != "nominal" else error

    @property
    def messages(self) -> list[str]:
        """One line per disagreement."""
        return [self.describe(d) for d in self.disagreements]


def _estimate(md: Any, key: str) -> ReadNoiseEstimate:
    value = md.get(key)
    error = md.get(f"{key}_ERR")
    try:
        return ReadNoiseEstimate(float(value), float(error) if error is not None else math.nan, 1)
    except (TypeError, ValueError):
        return _NAN


def read_noise_checks(ctx: ReportContext) -> list[AmpReadNoise]:
    """Read noise of every amplifier of the run's detectors from every
    source, with the disagreements.

    The measurements come from the run's combined bias (header keys written
    by `lsst.cpcombined.tasks.combine.CpCombineTask`), the fit from its PTC;
    a missing product leaves its sources NaN.
    """
    out: list[AmpReadNoise] = []
    for det in ctx.detectors:
        desc = ctx.detector(det)
        bias = ctx.product("bias", det)
        md = bias.metadata if bias is not None else {}
        ptc = ctx.ptc(det)
        ptc_rows = {str(r["amplifier"]): r for r in ptc} if ptc is not None else {}
        dt = ctx.detector_truth(det)
        for amp in desc.amplifiers:
            rec = AmpReadNoise(det, amp.name, float(amp.read_noise), float(amp.gain))
            rec.overscan = _estimate(md, f"CPC_READNOISE_{amp.name}")
            rec.image = _estimate(md, f"CPC_READNOISE_IMAGE_{amp.name}")
            rec.isr_gain = float(md.get(f"LSST ISR GAIN {amp.name}", amp.gain) or amp.gain)
            row = ptc_rows.get(amp.name)
            if row is not None and not bool(row["bad"]):
                rec.ptc = ReadNoiseEstimate(float(row["noise"]), float(row["noise_err"]), int(row["n_kept"]))
                rec.ptc_gain = float(row["gain"])
            if dt is not None:
                rec.truth = float(dt.read_noise.get(amp.name, math.nan))
            in_adu = {}
            for source in ("overscan", "image", "ptc", "nominal"):
                value, error = rec.electrons(source)
                gain = rec.gain(source)
                if math.isfinite(value) and math.isfinite(gain) and gain > 0:
                    in_adu[source] = (value / gain, error / gain if math.isfinite(error) else math.nan)
            rec.disagreements = compare_read_noise(
                in_adu, systematic={k: v for k, v in SYSTEMATIC.items() if k != "nominal"}, n_sigma=N_SIGMA
            )
            out.append(rec)
    return out


def read_noise_summary(checks: list[AmpReadNoise]) -> dict[str, Any]:
    """JSON-ready form for the run summary: per detector and amplifier the
    values (electrons) and the flags, plus the list of flag lines."""
    detectors: dict[str, dict[str, Any]] = {}
    for rec in checks:
        entry = {
            "nominal": rec.nominal,
            "overscan": [rec.overscan.value, rec.overscan.error],
            "image": [rec.image.value, rec.image.error],
            "ptc": [rec.ptc.value, rec.ptc.error],
            "truth": rec.truth,
            "flags": rec.messages,
        }
        detectors.setdefault(str(rec.detector), {})[rec.amplifier] = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()
        }
    return {
        "unit": "electron",
        "n_sigma": N_SIGMA,
        "systematic": dict(SYSTEMATIC),
        "detectors": detectors,
        "flags": [m for rec in checks for m in rec.messages],
    }


def read_noise_section(ctx: ReportContext, checks: list[AmpReadNoise], anchor: str = "read-noise") -> str:
    """The read-noise table of every detector, flags highlighted."""
    if not checks:
        return note("No read-noise values: the run made no bias and no PTC.")
    have_truth = any(math.isfinite(r.truth) for r in checks)
    parts = [
        "<p>Read noise per amplifier in electrons. <b>overscan</b>: clipped mean over the biases of the "
        "ISR's serial-overscan noise; <b>imaging area</b>: white noise of differences of bias pairs (rows "
        "and columns removed); <b>PTC fit</b>: the photon transfer curve's noise term. Values are compared "
        "in ADU (each with its own gain); a pair is flagged when it differs by more than "
        f"{N_SIGMA:g} σ, with systematic floors of {100 * SYSTEMATIC['overscan']:g} % on the measurements "
        f"and ±{100 * NOMINAL_TOLERANCE:g} % on the nominal value.</p>",
        legend(
            {
                "warn": "source involved in a disagreement",
                "pass": "within 2 % of the simulated truth",
                "fail": "more than 2 % from the simulated truth",
            }
            if have_truth
            else {"warn": "source involved in a disagreement"}
        ),
    ]
    flagged = [m for r in checks for m in r.messages]
    for det in ctx.detectors:
        rows = []
        for rec in (r for r in checks if r.detector == det):
            flagged_sources = rec.flagged_sources
            cells: list[str | Cell] = [Cell(rec.amplifier, "l")]
            for source in ("nominal", "overscan", "image", "ptc"):
                value, error = rec.electrons(source)
                text = fmt(value, 3) if source == "nominal" else fmt_err(value, error)
                cells.append(Cell(text, "warn" if source in flagged_sources else ""))
            cells.append(fmt(rec.ptc_gain, 4))
            if have_truth:
                cells.append(Cell(fmt(rec.truth, 3), "truth"))
                for source in ("overscan", "image"):
                    value = rec.electrons(source)[0]
                    dev = value / rec.truth - 1 if math.isfinite(value) and rec.truth > 0 else math.nan
                    cls = "" if not math.isfinite(dev) else ("pass" if abs(dev) <= 0.02 else "fail")
                    cells.append(Cell(f"{100 * dev:+.2f} %" if math.isfinite(dev) else "–", cls))
            cells.append(
                Cell(
                    "; ".join(
                        f"{_LABEL[d.first]} vs {_LABEL[d.second]} {d.n_sigma:.1f}σ" for d in rec.disagreements
                    )
                    or "",
                    "l",
                )
            )
            rows.append(cells)
        header = [
            "amp",
            "nominal (e-)",
            "overscan (e-)",
            "imaging area (e-)",
            "PTC fit (e-)",
            "PTC gain (e-/ADU)",
        ]
        if have_truth:
            header += ["truth (e-)", "overscan − truth", "imaging − truth"]
        header.append("disagreements")
        parts.append(f"<h3>Detector {det} ({esc(ctx.detector(det).name)})</h3>")
        parts.append(table_html(header, rows))
    if flagged:
        parts.append(findings_html(flagged, title="Flagged:"))
        for m in flagged:
            ctx.add("warn", f"read noise: {m}", anchor)
    else:
        parts.append("<p>No amplifier's read-noise values disagree beyond their errors.</p>")
    if have_truth:
        devs = [
            abs(r.electrons(s)[0] / r.truth - 1)
            for r in checks
            for s in ("overscan",)
            if math.isfinite(r.electrons(s)[0]) and r.truth > 0
        ]
        if devs:
            worst = max(devs)
            parts.append(
                f"<p>Overscan measurement vs simulated truth: largest deviation {100 * worst:.2f} % "
                f"over {len(devs)} amplifiers.</p>"
            )
            if worst > 0.02:
                ctx.add(
                    "bad",
                    f"measured read noise deviates from the simulated truth by up to {100 * worst:.1f} %",
                    anchor,
                )
    return "".join(parts)
