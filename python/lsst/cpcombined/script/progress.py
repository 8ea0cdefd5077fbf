"""Progress of pipetask runs, read from the records pipetask logs at INFO.

The quantum-graph builder's ``Generated N quanta for task LABEL`` gives the
graph's size per task label, the quantum executor's ``Execution of task
'LABEL' on quantum ... took S seconds`` (and its failure and skip messages)
each quantum's end, and the graph executor's ``Executed N quanta
successfully...`` a running summary.  `parse_progress` turns one message (or
one line of pipetask's stderr) into a `ProgressEvent`; `JobProgress` counts
the events of one job and writes one-line reports with an estimate of the
time left; `ProgressLogging` reads the events from the loggers of a run in
this process without changing what reaches the terminal.
"""

from __future__ import annotations

__all__ = (
    "PROGRESS_LOGGERS",
    "JobProgress",
    "ProgressEvent",
    "ProgressLogging",
    "format_seconds",
    "job_name",
    "parse_progress",
    "progress_log_level_args",
)

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

_LOG = logging.getLogger(__name__)


#: Loggers whose INFO records tell a run's progress (graph size per task
#: label; each quantum's end; the running summary of the graph executor).
PROGRESS_LOGGERS = (
    "lsst.pipe.base.quantum_graph_builder",
    "lsst.pipe.base.single_quantum_executor",
    "lsst.pipe.base.mp_graph_executor",
)


class ProgressEvent(NamedTuple):
    """One step of a pipetask run, read from one of its log messages.

    Attributes
    ----------
    kind
        ``planned`` (``n`` quanta of task ``label`` in the graph),
        ``dropped`` (task ``label`` has no quanta), ``built`` (the graph is
        complete), ``done`` (a quantum of ``label`` ran in ``seconds``),
        ``failed`` (a quantum of ``label`` failed), ``skipped`` (a quantum
        of ``label`` had nothing to do or was done before), ``blocked`` (a
        quantum of ``label``, if known, was not run because an upstream one
        failed) or ``summary`` (``n`` quanta succeeded, ``failed`` failed,
        out of ``total``).
    label
        Task label, when the message names one.
    n
        Quantum count (``planned``, ``summary``).
    seconds
        Execution time of the quantum (``done``).
    failed
        Failed quanta (``summary``).
    total
        Quanta in the graph (``summary``).
    """

    kind: str
    label: str | None = None
    n: int = 0
    seconds: float = 0.0
    failed: int = 0
    total: int = 0


_PROGRESS_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("done", re.compile(
        r"Execution of task '(?P<label>[^']+)' on quantum .* took (?P<seconds>[0-9.]+) seconds"
    )),
    ("summary", re.compile(
        r"Executed (?P<n>\d+) quanta successfully, (?P<failed>\d+) failed and \d+ remain "
        r"out of total (?P<total>\d+) quanta"
    )),
    ("failed", re.compile(r"Execution of task '(?P<label>[^']+)' on quantum .* failed\.")),
    ("planned", re.compile(r"Generated (?P<n>\d+) quant(?:um|a) for task (?P<label>[\w-]+)(?: \(|\.)")),
    ("dropped", re.compile(r"Dropping task (?P<label>[\w-]+) because no quanta remain")),
    ("built", re.compile(r"Graph build complete\.")),
    ("skipped", re.compile(r"Nothing to do for task '(?P<label>[^']+)' on quantum")),
    ("skipped", re.compile(r"Skipping already-successful quantum for label=(?P<label>[\w-]+) ")),
    # In-process executor: "... for task <id> (label@dataId), ..."; with
    # quantum processes: "... for task <label dataId=...>, ...".
    ("blocked", re.compile(
        r"Upstream job failed for task (?:<(?P<label>[\w-]+) |\S+ \((?P<label2>[\w-]+)@)"
    )),
    ("blocked", re.compile(r"Upstream job failed for task")),
)

#: Words one of the messages above contains (a cheap test before the patterns).
_PROGRESS_WORDS = ("quant", "Graph build", "task")


def parse_progress(message: str) -> ProgressEvent | None:
    """The progress event a pipetask log message (or stderr line) tells, if any.

    Parameters
    ----------
    message
        A log message, or a whole line of pipetask's log output (any
        format: the message is searched for anywhere in the line).
    """
    if not any(word in message for word in _PROGRESS_WORDS):
        return None
    for kind, pattern in _PROGRESS_PATTERNS:
        m = pattern.search(message)
        if m is None:
            continue
        groups = m.groupdict()
        return ProgressEvent(
            kind,
            label=groups.get("label") or groups.get("label2"),
            n=int(groups.get("n") or 0),
            seconds=float(groups.get("seconds") or 0.0),
            failed=int(groups.get("failed") or 0),
            total=int(groups.get("total") or 0),
        )
    return None


def progress_log_level_args() -> list[str]:
    """``pipetask`` options raising the `PROGRESS_LOGGERS` to INFO (for a
    pipetask whose log output is read, e.g. a subprocess's stderr; with
    ``-j N`` the quantum processes inherit the levels)."""
    args: list[str] = []
    for name in PROGRESS_LOGGERS:
        args += ["--log-level", f"{name}=INFO"]
    return args


def job_name(pipeline: str) -> str:
    """Short name of a pipeline job: the pipeline file's stem, or the subset
    (``.../cpPtc.yaml#gainFromFlatPairs`` gives ``gainFromFlatPairs``)."""
    path, _, subset = str(pipeline).partition("#")
    if subset and "," not in subset:
        return subset.strip()
    stem = Path(path).name
    for suffix in (".yaml", ".yml"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem or "pipeline"


def format_seconds(seconds: float) -> str:
    """A duration, rounded for a progress line (``35 s``, ``4 min``, ``1.5 h``)."""
    if seconds < 99.5:
        return f"{max(1, round(seconds))} s"
    if seconds < 5940:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


@dataclasses.dataclass
class _LabelCount:
    total: int = 0
    done: int = 0
    failed: int = 0
    timed: int = 0
    seconds: float = 0.0


class JobProgress:
    """Counts the quanta of one pipeline job and reports its progress.

    Reports are single lines (for a terminal and a log file alike)::

          cpBias: quantum graph of 24 quanta (cpBiasIsr 20, cpBiasCombine 4) built in 3.1 s
          cpBias: 12/24 quanta (cpBiasIsr 12/20, cpBiasCombine 0/4), ~35 s left

    One when the graph is built, then at most one every ``interval`` seconds
    while quanta end, plus one whenever every quantum of a task label has
    ended.  A change not reported because of the interval is reported by
    `flush` (which ``schedule`` is asked to call when the interval is up)
    or by `close`.

    The estimate of the time left weighs the quanta still to run by the
    mean execution time of their task label (of all labels for a label
    none of whose quanta has ended yet) and scales the sum by the ratio of
    the wall time since the first quantum started to the execution time
    of the quanta ended (which accounts for parallel quanta and for the
    time between quanta); without execution times it extrapolates the
    rate at which quanta ended since the first one did.

    Parameters
    ----------
    name
        Job name shown on each line.
    report
        Receives each line.
    interval
        Minimum seconds between two lines of counts.
    use_summary
        Also count the graph executor's ``Executed N quanta...`` summaries
        (false when several executors report, e.g. the jobs of a BPS
        workflow, each summary counting its own job only).
    clock
        Monotonic clock (seconds).
    schedule
        ``schedule(delay, callback)`` calls ``callback`` after ``delay``
        seconds and returns an object with ``cancel()`` (e.g. an event
        loop's ``call_later``); without it a delayed line waits for the
        next event or `close`.
    """

    def __init__(
        self,
        name: str,
        report: Callable[[str], None],
        *,
        interval: float = 5.0,
        use_summary: bool = True,
        clock: Callable[[], float] = time.monotonic,
        schedule: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        self.name = name
        self._report = report
        self.interval = interval
        self._use_summary = use_summary
        self._clock = clock
        self._schedule = schedule
        self.started = clock()
        self.labels: dict[str, _LabelCount] = {}
        self.built = False
        self._summary_done = 0
        self._summary_failed = 0
        self._summary_total = 0
        self._exec_start: float | None = None
        self._first_end: tuple[float, int] | None = None
        self._last_line_at: float | None = None
        self._last_counts: tuple | None = None
        self._pending: object | None = None
        self._closed = False
        self._broken = False

    # -- counts -----------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Quanta in the graph (0 until it is known)."""
        return max(sum(c.total for c in self.labels.values()), self._summary_total)

    @property
    def done(self) -> int:
        """Quanta ended (successfully, failed, skipped or blocked)."""
        return max(sum(c.done for c in self.labels.values()), self._summary_done + self._summary_failed)

    @property
    def failed(self) -> int:
        """Quanta failed or not run because an upstream quantum failed."""
        return max(sum(c.failed for c in self.labels.values()), self._summary_failed)

    def label_counts(self) -> dict[str, tuple[int, int]]:
        """``{label: (ended, total)}`` in graph order, labels with quanta only."""
        return {label: (c.done, c.total) for label, c in self.labels.items() if c.total or c.done}

    def estimate(self) -> float | None:
        """Seconds left (None before the first quantum ends or after the last)."""
        remaining = self.total - self.done
        if remaining <= 0 or self.done == 0 or self._exec_start is None or self._first_end is None:
            return None
        now = self._clock()
        timed = sum(c.timed for c in self.labels.values())
        work = sum(c.seconds for c in self.labels.values())
        if timed == 0 or work <= 0.0:
            t0, n0 = self._first_end
            if now <= t0 or self.done <= n0:
                return None
            return (now - t0) / (self.done - n0) * remaining
        elapsed = max(0.0, now - self._exec_start)
        mean_all = work / timed
        left_work = 0.0
        for c in self.labels.values():
            mean = c.seconds / c.timed if c.timed else mean_all
            left_work += max(0, c.total - c.done) * mean
        # Quanta of labels the graph did not announce (summary-only counts).
        announced = sum(max(0, c.total - c.done) for c in self.labels.values())
        left_work += max(0, remaining - announced) * mean_all
        return left_work * max(elapsed / work, 0.0)

    def line(self) -> str:
        """The current counts as one report line."""
        parts = ", ".join(f"{label} {d}/{t}" for label, (d, t) in self.label_counts().items())
        text = f"  {self.name}: {self.done}/{self.total or '?'} quanta"
        if parts:
            text += f" ({parts})"
        if self.failed:
            text += f", {self.failed} failed"
        left = self.estimate()
        if left is not None:
            text += f", ~{format_seconds(left)} left"
        return text

    # -- events -----------------------------------------------------------------------

    def feed(self, event: ProgressEvent | Sequence) -> None:
        """Count one event and report if it is time to.

        Never raises: a failure is logged once and the job's progress is no
        longer reported (the job itself is not affected).
        """
        if self._closed or self._broken:
            return
        try:
            self._feed(event if isinstance(event, ProgressEvent) else ProgressEvent(*event))
        except Exception:  # noqa: BLE001 - progress must never break a job
            self._broken = True
            self._warn_broken()

    def _warn_broken(self) -> None:
        _LOG.warning(
            "Progress reporting of job %s failed; the job goes on without it.", self.name
        )

    def _label(self, label: str | None) -> _LabelCount | None:
        if label is None:
            return None
        return self.labels.setdefault(label, _LabelCount())

    def _feed(self, ev: ProgressEvent) -> None:
        now = self._clock()
        counts = self._label(ev.label)
        if ev.kind == "planned" and counts is not None:
            counts.total = ev.n
            return
        if ev.kind == "dropped" and ev.label is not None:
            self.labels.pop(ev.label, None)
            return
        if ev.kind == "built":
            if not self.built:
                self.built = True
                self._emit_built(now)
            return
        completed_label = False
        if ev.kind == "summary":
            if not self._use_summary:
                return
            self._summary_done = max(self._summary_done, ev.n)
            self._summary_failed = max(self._summary_failed, ev.failed)
            self._summary_total = max(self._summary_total, ev.total)
            if self._exec_start is None:
                self._exec_start = now
        elif ev.kind in ("done", "failed", "skipped", "blocked"):
            if self._exec_start is None:
                self._exec_start = now - (ev.seconds if ev.kind == "done" else 0.0)
            if counts is not None:
                counts.done += 1
                if ev.kind in ("failed", "blocked"):
                    counts.failed += 1
                if ev.kind == "done":
                    counts.timed += 1
                    counts.seconds += ev.seconds
                completed_label = counts.total > 0 and counts.done == counts.total
        else:
            return
        if self._first_end is None and self.done > 0:
            self._first_end = (now, self.done)
        if completed_label or self._last_line_at is None or now - self._last_line_at >= self.interval:
            self._emit(now)
        else:
            self._defer(now)

    def _counts_key(self) -> tuple:
        return (self.done, self.failed, tuple(self.label_counts().items()))

    def _emit_built(self, now: float) -> None:
        parts = ", ".join(f"{label} {t}" for label, (_, t) in self.label_counts().items())
        total = self.total
        self._report(
            f"  {self.name}: quantum graph of {total} quant{'um' if total == 1 else 'a'}"
            f"{f' ({parts})' if parts else ''} built in {now - self.started:.1f} s"
        )

    def _emit(self, now: float) -> None:
        self._cancel_pending()
        key = self._counts_key()
        if key == self._last_counts:
            return
        self._last_counts = key
        self._last_line_at = now
        self._report(self.line())

    def _defer(self, now: float) -> None:
        if self._pending is not None or self._schedule is None or self._last_line_at is None:
            return
        delay = max(0.0, self._last_line_at + self.interval - now)
        self._pending = self._schedule(delay, self.flush)

    def _cancel_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.cancel()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                pass

    def flush(self) -> None:
        """Report counts not reported yet (never raises)."""
        self._pending = None
        if self._closed or self._broken:
            return
        try:
            self._emit(self._clock())
        except Exception:  # noqa: BLE001 - progress must never break a job
            self._broken = True
            self._warn_broken()

    def close(self, flush: bool = True) -> None:
        """Stop: report counts not reported yet (if ``flush``), then ignore
        further events."""
        if self._closed:
            return
        self._cancel_pending()
        if flush and self._last_line_at is not None:
            self.flush()
        self._closed = True


class _ProgressFilter(logging.Filter):
    """Filter on a progress logger raised to INFO: passes each message to
    ``sink`` as a `ProgressEvent`, and lets a record on to the handlers
    only if the logger's parent would have let it through (the terminal
    and the task logs see what they saw before progress was read)."""

    def __init__(self, logger: logging.Logger, sink: Callable[[ProgressEvent], None]) -> None:
        super().__init__()
        self._logger = logger
        self._sink = sink
        self._broken = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._broken:
            try:
                event = parse_progress(record.getMessage())
                if event is not None:
                    self._sink(event)
            except Exception:  # noqa: BLE001 - progress must never break a job
                self._broken = True
                _LOG.warning("Reading pipetask progress failed; the job goes on without it.")
                _LOG.debug("Cause of the progress failure", exc_info=True)
        parent = self._logger.parent
        return record.levelno >= (parent.getEffectiveLevel() if parent is not None else logging.WARNING)


class ProgressLogging:
    """Raise the `PROGRESS_LOGGERS` to INFO with a `_ProgressFilter` each
    (context manager; levels and filters are restored on exit)."""

    def __init__(self, sink: Callable[[ProgressEvent], None] | None) -> None:
        self._sink = sink
        self._saved: list[tuple[logging.Logger, int, _ProgressFilter]] = []

    def __enter__(self) -> ProgressLogging:
        if self._sink is None:
            return self
        for name in PROGRESS_LOGGERS:
            logger = logging.getLogger(name)
            flt = _ProgressFilter(logger, self._sink)
            self._saved.append((logger, logger.level, flt))
            logger.addFilter(flt)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        for logger, level, flt in self._saved:
            logger.removeFilter(flt)
            logger.setLevel(level)
        self._saved.clear()
