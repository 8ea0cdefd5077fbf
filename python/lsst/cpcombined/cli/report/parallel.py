"""Building a report's sections in two processes.

A full-size report costs ~20 s of CPU in one process, mostly matplotlib and
numpy on one core, at the end of a run when the other cores are idle.  A
`ReportWorker` is a second process, started at the beginning of a run so
that its imports (~3.5 s of CPU) overlap the acquisition; at the end it
builds about half of the sections (`split_sections`) from its own butler
while the run's process builds the rest.  Each side returns its sections'
HTML with the findings they added (`RenderedSection`), and the page is
assembled in page order, identical to the page one process builds.

A worker that is gone, fails or does not answer in time costs nothing but
time: the sections it did not deliver are built by the run's process.
"""

from __future__ import annotations

__all__ = ("RenderedSection", "ReportWorker", "split_sections")

import dataclasses
import logging
import multiprocessing.connection
from collections.abc import Mapping, Sequence
from typing import Any

from ...script.worker import HelperProcess

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class RenderedSection:
    """One built section: its anchor, its HTML and the findings it added."""

    anchor: str
    html: str
    findings: list[Any]


def split_sections(anchors: Sequence[str], cost: Mapping[str, float]) -> list[str]:
    """The sections a second process should build: about half of the total
    cost (a section not in ``cost`` counts 1), taken greedily from the
    costliest, so that both processes finish at about the same time.

    The first section (the decisions, which every reader looks at first and
    which costs little) always stays with the caller.
    """
    ours = theirs = 0.0
    picked: list[str] = []
    for anchor in sorted(anchors[1:], key=lambda a: -cost.get(a, 1.0)):
        c = cost.get(anchor, 1.0)
        if theirs + c <= ours:
            theirs += c
            picked.append(anchor)
        else:
            ours += c
    return [a for a in anchors if a in picked]


def _worker_loop(
    conn: multiprocessing.connection.Connection, parent_pid: int
) -> None:  # pragma: no cover - child process
    """Body of the worker process: import, then build the sections of each
    job received on ``conn`` until it is closed."""
    import signal

    from ...script.worker import die_with_parent

    # Ctrl-C is the run's to handle: it closes this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    import matplotlib

    matplotlib.use("Agg")
    from lsst.daf.butler import Butler

    from . import ReportContext, build_sections

    while True:
        try:
            repo, summary, config, truth, sessions, anchors = conn.recv()
        except (EOFError, OSError):
            return
        try:
            ctx = ReportContext(Butler.from_config(repo, writeable=False), summary, config, truth, sessions)
            conn.send(("result", build_sections(ctx, anchors)))
        except Exception as err:  # noqa: BLE001 - the caller builds what is missing
            conn.send(("error", f"{type(err).__name__}: {err}"))


class ReportWorker(HelperProcess):
    """A process that builds report sections for `build_report`.

    Started at once (imports in the background); one job at a time.
    """

    #: Seconds `result` waits for the worker's sections.
    timeout = 600.0

    def __init__(self) -> None:
        super().__init__(_worker_loop, "cpcombined-report")
        self._pending = False

    def submit(self, repo: str, ctx: Any, anchors: Sequence[str]) -> bool:
        """Ask for the sections ``anchors`` of the report ``ctx`` describes
        (its summary, configuration, truth and sessions are sent; the worker
        opens ``repo`` itself).  Returns whether the job was sent."""
        if not anchors or not repo or not self.process.is_alive():
            return False
        try:
            self._conn.send((repo, ctx.summary, ctx.config, ctx.truth, ctx.sessions, list(anchors)))
        except (OSError, ValueError, TypeError, AttributeError) as err:
            _LOG.info("Report worker not used: %s", err)
            return False
        self._pending = True
        return True

    def result(self) -> list[RenderedSection]:
        """The sections of the job sent last (none if the worker failed)."""
        if not self._pending:
            return []
        self._pending = False
        try:
            if not self._conn.poll(self.timeout):
                _LOG.info("Report worker did not answer in %.0f s", self.timeout)
                self.kill()
                return []
            kind, value = self._conn.recv()
        except (EOFError, OSError) as err:
            _LOG.info("Report worker ended: %s", err)
            return []
        if kind != "result":
            _LOG.info("Report worker failed: %s", value)
            return []
        return list(value)
