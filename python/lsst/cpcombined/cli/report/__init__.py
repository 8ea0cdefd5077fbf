"""The report of a procedure run: one self-contained HTML page (styles and
images inline, no scripts, nothing fetched from the network) that a
calibration scientist reads to decide whether the day's calibrations are
good.

Sections, in order:

1. the verdict, the headline numbers and what needs a look (`verdict`);
2. decisions and certification, with the validity ranges as stored
   (`run_info`);
3. read noise of every amplifier from every source, with disagreements
   flagged (`read_noise`);
4. bias, dark and flat: verification grids and the majority decision
   (`verification`), per-amplifier tables (`amp_tables`), the images with
   noise maps and histograms (`products`);
5. the PTC (`ptc`), the defects (`defects`);
6. comparisons with the previously certified calibrations and with the
   simulated truth (`comparison`);
7. the history across days (`history_section`) and the timings of the run
   (`run_info`).

A section that cannot be built says why in place; the report never fails a
run.
"""

from __future__ import annotations

__all__ = (
    "SECTION_COST",
    "ReportContext",
    "ReportWorker",
    "build_report",
    "build_sections",
    "read_noise_checks",
    "read_noise_summary",
    "report_sections",
    "write_report",
)

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from .amp_tables import amp_table_section
from .comparison import previous_section, truth_section
from .context import ReportContext
from .defects import defects_section
from .history_section import history_section
from .page import esc, note, page
from .parallel import RenderedSection, ReportWorker, split_sections
from .products import products_section
from .ptc import ptc_section
from .read_noise import read_noise_checks, read_noise_section, read_noise_summary
from .run_info import decisions_section, timings_section
from .verdict import verdict_section
from .verification import verification_section

_LOG = logging.getLogger(__name__)

_TITLES = {"bias": "Bias", "dark": "Dark", "flat": "Flat"}


#: A section: anchor, title and what builds its HTML body.
Section = tuple[str, str, Callable[[], str]]

#: CPU seconds each section took on a full-size LATISS run (the defaults
#: for splitting the sections between two processes; a section not named
#: here counts 1).
SECTION_COST = {
    "bias-images": 2.2,
    "dark-images": 1.7,
    "flat-images": 1.9,
    "bias-amps": 1.3,
    "dark-amps": 1.5,
    "flat-amps": 1.6,
    "ptc": 1.4,
    "truth": 3.4,
    "history": 2.9,
    "decisions": 0.2,
    "timings": 0.2,
    "previous": 0.1,
}


def render_section(ctx: ReportContext, anchor: str, title: str, build: Callable[[], str]) -> str:
    """One section's HTML; a section that fails says why in place and adds
    a finding (the report never fails)."""
    t0 = time.monotonic()
    try:
        body = build()
    except Exception as err:  # a report must never fail the run
        _LOG.warning(
            "Report section %r not available: %s", title, err, exc_info=_LOG.isEnabledFor(logging.DEBUG)
        )
        ctx.add("warn", f"report section '{title}' could not be built: {err}", anchor)
        body = note(f"This section could not be built: {err}")
    _LOG.debug("Report section %s: %.2f s", title, time.monotonic() - t0)
    return f"<section id='{esc(anchor)}'><h2>{esc(title)}</h2>{body}</section>"


def report_sections(ctx: ReportContext) -> list[Section]:
    """The sections of a run's report, in page order (see the module
    documentation); nothing is built until a section's builder is called."""
    sections: list[Section] = []

    def add(anchor: str, title: str, build: Callable[[], str]) -> None:
        sections.append((anchor, title, build))

    add("decisions", "Decisions and certification", lambda: decisions_section(ctx))
    add(
        "read-noise",
        "Read noise: measured, fitted and nominal",
        lambda: read_noise_section(ctx, read_noise_checks(ctx)),
    )
    for calib_type in ("bias", "dark", "flat"):
        if ctx.outcome(calib_type) is None:
            continue
        title = _TITLES[calib_type]
        add(
            f"{calib_type}-verification",
            f"{title}: verification",
            lambda t=calib_type: verification_section(ctx, t, f"{t}-verification"),
        )
        add(
            f"{calib_type}-amps",
            f"{title}: per-amplifier values",
            lambda t=calib_type: amp_table_section(ctx, t, f"{t}-amps"),
        )
        add(
            f"{calib_type}-images",
            f"{title}: images, noise maps and histograms",
            lambda t=calib_type: products_section(ctx, t),
        )
    if ctx.outcome("ptc") is not None:
        add("ptc", "Photon transfer curves", lambda: ptc_section(ctx, "ptc"))
    if ctx.outcome("defects") is not None:
        add("defects", "Defects: map and table", lambda: defects_section(ctx, "defects"))
    add(
        "previous",
        "Comparison with the previous certified calibrations",
        lambda: previous_section(ctx, "previous"),
    )
    if ctx.truth is not None:
        add("truth", "Comparison with the simulated truth", lambda: truth_section(ctx, "truth"))
    add("history", "History across days", lambda: history_section(ctx, "history"))
    add("timings", "Timings of the steps", lambda: timings_section(ctx))
    return sections


def build_sections(ctx: ReportContext, anchors: Iterable[str] | None = None) -> list[RenderedSection]:
    """Build sections (all, or those of ``anchors``) in page order, each
    with the findings it added to ``ctx``."""
    wanted = None if anchors is None else set(anchors)
    out = []
    for anchor, title, build in report_sections(ctx):
        if wanted is not None and anchor not in wanted:
            continue
        first = len(ctx.findings)
        html = render_section(ctx, anchor, title, build)
        out.append(RenderedSection(anchor, html, ctx.findings[first:]))
    return out


def build_report(ctx: ReportContext, *, repo: str = "", worker: ReportWorker | None = None) -> str:
    """The report page of a run (see the module documentation).

    Parameters
    ----------
    ctx
        What the report reads.
    repo
        Repository (shown in the page).
    worker
        A `ReportWorker` that builds about half of the sections (by
        `SECTION_COST`) while this process builds the others; sections it
        does not deliver are built here.  The page is the same either way.
    """
    summary = ctx.summary
    sections = report_sections(ctx)
    built: dict[str, RenderedSection] = {}
    if worker is not None:
        theirs = split_sections([a for a, _, _ in sections], SECTION_COST)
        if not worker.submit(repo, ctx, theirs):
            theirs = []
        ours = [a for a, _, _ in sections if a not in theirs]
        built.update((r.anchor, r) for r in build_sections(ctx, ours))
        built.update((r.anchor, r) for r in worker.result())
    missing = [a for a, _, _ in sections if a not in built]
    if missing:
        built.update((r.anchor, r) for r in build_sections(ctx, missing))
    # Findings in page order, as one process building every section adds them.
    ctx.findings[:] = [f for a, _, _ in sections for f in built[a].findings]
    body = [built[a].html for a, _, _ in sections]

    status = "SUCCESS" if summary.success else "FAILED"
    head = [
        f"<h1>{esc(ctx.instrument)} daily calibrations — run {esc(summary.run_id)}</h1>",
        f"<p class='small'>{esc(status)}; repository {esc(repo)}; detectors "
        f"{esc(', '.join(str(d) for d in ctx.detectors))}; calibration collection {esc(ctx.calib_collection)}"
        + ("; simulated camera" if ctx.truth is not None else "")
        + ".</p>",
        verdict_section(ctx),
        "<nav class='toc'>" + "".join(f"<a href='#{esc(a)}'>{esc(t)}</a>" for a, t, _ in sections) + "</nav>",
    ]
    title = f"{ctx.instrument} calibrations {summary.run_id}"
    return page(title, head + body)


def write_report(
    path: str | os.PathLike,
    summary: Any,
    *,
    repo: str,
    config: Any = None,
    truth: Any = None,
    butler: Any = None,
    sessions: Any = None,
    worker: ReportWorker | None = None,
    context: ReportContext | None = None,
) -> ReportContext:
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
        The validated `lsst.cpcombined.script.ScriptConfig` (detectors,
        filter, calibration collection).
    truth
        `lsst.cpcombined.simulation.SimulationTruth` of a simulated run
        (adds the comparisons with the truth).
    butler
        An existing butler of ``repo`` (default: a new read-only one).
    sessions
        The invocations of the run (the run state's ``sessions``), for the
        timings of a resumed run.
    worker
        A `ReportWorker` to build about half of the sections in parallel
        (see `build_report`).
    context
        A `ReportContext` of the same run read before (e.g. by the
        read-noise check): what it read and cannot have changed is reused
        (`ReportContext.renew`); ``butler`` is then its butler.

    Returns
    -------
    context
        What the report read (its ``findings`` list what the verdict shows).
    """
    from lsst.daf.butler import Butler

    t0 = time.monotonic()
    if context is not None:
        ctx = context
        ctx.renew(summary, config, truth, sessions)
    else:
        butler = butler or Butler.from_config(repo, writeable=False)
        ctx = ReportContext(butler, summary, config, truth, sessions)
    text = build_report(ctx, repo=str(repo), worker=worker)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    _LOG.info("Report %s written in %.1f s", path, time.monotonic() - t0)
    return ctx
