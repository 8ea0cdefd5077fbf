"""Progress of running pipeline jobs: pipetask's log messages read as
events, the per-job counts and time-left estimate, and the lines the local
pipeline service (in-process, warm workers, subprocesses) and the BPS
service report while a real LATISS bias pipeline runs."""

from __future__ import annotations

import asyncio
import logging
import re
import types

import pytest
from lsst.cpcombined.repo.create import create_repo
from lsst.cpcombined.script.bps import BpsPipelineService, WorkflowProgressReader
from lsst.cpcombined.script.local import LocalPipelineService
from lsst.cpcombined.script.progress import (
    PROGRESS_LOGGERS,
    JobProgress,
    ProgressEvent,
    format_seconds,
    job_name,
    parse_progress,
)
from lsst.cpcombined.simulation import SimulationTruth
from lsst.cpcombined.simulation.camera import SimulatedCamera

PIPELINE = "${CPCOMBINED_DIR}/pipelines/LATISS/cpBias.yaml"
N_BIAS = 6
#: LATISS has one detector: one ISR quantum per bias, one combine.
TOTALS = {"cpBiasIsr": N_BIAS, "cpBiasCombine": 1}
TOTAL = N_BIAS + 1

_COUNTS = re.compile(r"^  cpBias: (?P<done>\d+)/(?P<total>\d+) quanta \((?P<labels>[^)]*)\)(?P<rest>.*)$")
_GRAPH = re.compile(
    r"^  cpBias: quantum graph of (?P<total>\d+) quanta \((?P<labels>[^)]*)\) built in [0-9.]+ s$"
)


# -- messages -------------------------------------------------------------------------

# The messages as the installed pipe_base formats them (the integration
# tests below check they still are).
MESSAGES = [
    ("Generated 20 quanta for task cpBiasIsr.", ProgressEvent("planned", "cpBiasIsr", n=20)),
    ("Generated 1 quantum for task cpBiasCombine (2 had no work to do).",
     ProgressEvent("planned", "cpBiasCombine", n=1)),
    ("Dropping task verifyBiasRun because no quanta remain.", ProgressEvent("dropped", "verifyBiasRun")),
    ("Graph build complete.", ProgressEvent("built")),
    ("Execution of task 'cpBiasIsr' on quantum {instrument: 'LATISS', detector: 0, exposure: 7} "
     "took 0.065 seconds",
     ProgressEvent("done", "cpBiasIsr", seconds=0.065)),
    ("Execution of task 'cpBiasIsr' on quantum {instrument: 'LATISS', exposure: 7} failed. "
     "Exception CpInputError: exposure 7 is a DARK, not a BIAS", ProgressEvent("failed", "cpBiasIsr")),
    ("Nothing to do for task 'cpFlatIsr' on quantum {detector: 1}; saving metadata and skipping: none",
     ProgressEvent("skipped", "cpFlatIsr")),
    ("Skipping already-successful quantum for label=cpDarkIsr dataId={detector: 1}.",
     ProgressEvent("skipped", "cpDarkIsr")),
    ("Upstream job failed for task 01a2-c8cb (cpBiasCombine@{instrument: 'LATISS', detector: 0}), "
     "skipping this quantum.", ProgressEvent("blocked", "cpBiasCombine")),
    ("Upstream job failed for task <cpBiasCombine dataId={instrument: 'LATISS', detector: 0}>, "
     "skipping this task.",
     ProgressEvent("blocked", "cpBiasCombine")),
    ("Executed 3 quanta successfully, 1 failed and 20 remain out of total 24 quanta.",
     ProgressEvent("summary", n=3, failed=1, total=24)),
    ("Preparing execution of quantum for label=cpBiasIsr dataId={detector: 0}.", None),
    ("Fetching and attaching datastore records for all overall inputs.", None),
]


@pytest.mark.parametrize("message, event", MESSAGES)
def test_messages_become_events(message, event):
    assert parse_progress(message) == event
    # A whole stderr line (normal or --long-log format) gives the same event.
    assert parse_progress(f"lsst.pipe.base.single_quantum_executor INFO: {message}") == event
    long_log = "INFO 2026-12-04T14:57:16.462+00:00 lsst.x (cpBiasIsr:{detector: 0})(f.py:345) - "
    assert parse_progress(long_log + message) == event


def test_job_names_and_durations():
    assert job_name("${CPCOMBINED_DIR}/pipelines/LATISS/cpBias.yaml") == "cpBias"
    assert job_name("/x/pipelines/LATISS/cpPtc.yaml#gainFromFlatPairs") == "gainFromFlatPairs"
    assert job_name("/x/verifyFlat.yaml#a,b") == "verifyFlat"
    assert [format_seconds(s) for s in (0.2, 35.4, 99.4, 100, 250, 5939, 5941, 9000)] == [
        "1 s", "35 s", "99 s", "2 min", "4 min", "99 min", "1.7 h", "2.5 h"]


# -- counts and estimate (fake clock) ---------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeScheduler:
    """``schedule(delay, callback)`` keeping the callbacks for the test to run."""

    def __init__(self) -> None:
        self.calls: list[types.SimpleNamespace] = []

    def __call__(self, delay, callback):
        call = types.SimpleNamespace(delay=delay, callback=callback, cancelled=False)
        call.cancel = lambda: setattr(call, "cancelled", True)
        self.calls.append(call)
        return call


def _tracker(interval=5.0, **kw):
    clock, lines, scheduler = FakeClock(), [], FakeScheduler()
    tracker = JobProgress("cpBias", lines.append, interval=interval, clock=clock, schedule=scheduler, **kw)
    return tracker, clock, lines, scheduler


def _plan(tracker, clock, isr=4, combine=1):
    clock.t = 2.0
    for ev in (ProgressEvent("planned", "cpBiasIsr", n=isr),
               ProgressEvent("planned", "cpBiasCombine", n=combine), ProgressEvent("built")):
        tracker.feed(ev)


def test_graph_line_then_counts_with_estimate():
    tracker, clock, lines, _ = _tracker()
    _plan(tracker, clock)
    assert lines == ["  cpBias: quantum graph of 5 quanta (cpBiasIsr 4, cpBiasCombine 1) built in 2.0 s"]
    # Quanta of 1 s, one after the other, from t = 10 s.
    clock.t = 11.0
    tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=1.0))
    # 4 quanta left at the ISR mean (1 s), wall/execution time ratio 1: 4 s.
    assert lines[-1] == "  cpBias: 1/5 quanta (cpBiasIsr 1/4, cpBiasCombine 0/1), ~4 s left"
    # A second quantum ran alongside: 2 s of execution in 1.5 s of wall
    # time since the first started: 3 quanta left x 1 s x 0.75.
    clock.t = 11.5
    tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=1.0))  # within the interval: deferred
    assert len(lines) == 2
    assert tracker.estimate() == pytest.approx(3 * 1.0 * 0.75)
    clock.t = 16.5
    tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=3.0))  # 5.5 s since the last line
    # ISR mean 5/3 s; 2 left (1 ISR, 1 combine at the all-label mean 5/3 s);
    # wall 6.5 s / execution 5 s.
    assert tracker.estimate() == pytest.approx(2 * 5 / 3 * 6.5 / 5)
    assert lines[-1] == "  cpBias: 3/5 quanta (cpBiasIsr 3/4, cpBiasCombine 0/1), ~4 s left"
    # The last ISR quantum completes its label: reported at once.
    clock.t = 17.0
    tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=0.5))
    assert lines[-1].startswith("  cpBias: 4/5 quanta (cpBiasIsr 4/4, cpBiasCombine 0/1), ~")
    clock.t = 17.5
    tracker.feed(ProgressEvent("done", "cpBiasCombine", seconds=0.5))
    assert lines[-1] == "  cpBias: 5/5 quanta (cpBiasIsr 4/4, cpBiasCombine 1/1)"  # no estimate at the end
    assert tracker.done == tracker.total == 5 and tracker.label_counts() == {"cpBiasIsr": (4, 4),
                                                                             "cpBiasCombine": (1, 1)}


def test_deferred_counts_are_flushed_by_the_scheduler_or_at_close():
    tracker, clock, lines, scheduler = _tracker(interval=5.0)
    _plan(tracker, clock, isr=10)
    clock.t = 3.0
    tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=0.5))
    clock.t = 4.0
    tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=0.5))
    tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=0.5))
    assert [ln.split(" quanta")[0] for ln in lines[1:]] == ["  cpBias: 1/11"]
    # One flush scheduled, when the interval since the last line is up.
    assert len(scheduler.calls) == 1 and scheduler.calls[0].delay == pytest.approx(4.0)
    clock.t = 8.0
    scheduler.calls[0].callback()
    assert lines[-1].startswith("  cpBias: 3/11 quanta (cpBiasIsr 3/10, cpBiasCombine 0/1), ~")
    n = len(lines)
    scheduler.calls[0].callback()  # nothing new: no line
    assert len(lines) == n
    clock.t = 9.0
    tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=0.5))
    tracker.close()  # a pending change is reported at the end...
    assert lines[-1].startswith("  cpBias: 4/11 quanta") and scheduler.calls[-1].cancelled
    tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=0.5))  # ...and nothing after it
    assert lines[-1].startswith("  cpBias: 4/11 quanta")

    tracker, clock, lines, _ = _tracker(interval=5.0)
    _plan(tracker, clock, isr=10)
    tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=0.5))
    tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=0.5))
    tracker.close(flush=False)  # the procedure stopped: nothing more
    assert lines[-1].startswith("  cpBias: 1/11 quanta")


def test_summaries_failures_and_dropped_labels():
    tracker, clock, lines, _ = _tracker(interval=0.0)
    for ev in (ProgressEvent("planned", "a", n=2), ProgressEvent("planned", "b", n=2),
               ProgressEvent("dropped", "b"), ProgressEvent("planned", "c", n=1), ProgressEvent("built")):
        tracker.feed(ev)
    assert lines[0].startswith("  cpBias: quantum graph of 3 quanta (a 2, c 1)")
    tracker.feed(ProgressEvent("failed", "a"))
    tracker.feed(ProgressEvent("blocked", "c"))
    tracker.feed(ProgressEvent("summary", n=0, failed=2, total=3))  # same counts: no new line
    assert lines[1:] == ["  cpBias: 1/3 quanta (a 1/2, c 0/1), 1 failed",
                         "  cpBias: 2/3 quanta (a 1/2, c 1/1), 2 failed"]
    # Without per-label messages (quanta in processes whose logs are not
    # read) the summaries still count; the estimate is the rate since the
    # first quantum ended (4 s per quantum here, 2 left).
    tracker, clock, lines, _ = _tracker(interval=0.0)
    clock.t = 10.0
    tracker.feed(ProgressEvent("summary", n=1, failed=0, total=4))
    clock.t = 14.0
    tracker.feed(ProgressEvent("summary", n=2, failed=0, total=4))
    assert lines == ["  cpBias: 1/4 quanta", "  cpBias: 2/4 quanta, ~8 s left"]
    # A BPS workflow: each job's summary counts that job only, not read.
    tracker, clock, lines, _ = _tracker(interval=0.0, use_summary=False)
    tracker.feed(ProgressEvent("summary", n=1, failed=0, total=1))
    assert lines == [] and tracker.done == 0


def test_a_failing_report_is_logged_once_and_never_raises(caplog):
    calls = []

    def report(line):
        calls.append(line)
        raise OSError("terminal gone")

    tracker = JobProgress("cpBias", report, interval=0.0)
    with caplog.at_level(logging.WARNING, logger="lsst.cpcombined.script.progress"):
        tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=1.0))
        tracker.feed(ProgressEvent("done", "cpBiasIsr", seconds=1.0))
        tracker.flush()
        tracker.close()
    assert len(calls) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "Progress reporting of job cpBias failed; the job goes on without it."]


def test_workflow_reader_reads_new_lines_only(tmp_path):
    """The BPS reader: nothing before the graph is complete, then the graph,
    then each job log's new complete lines (a line being written waits)."""
    reader = WorkflowProgressReader(tmp_path)
    assert reader.poll() == []
    graph = tmp_path / "quantumGraphGeneration.out"
    pre = "INFO 2026-12-04T14:57:08 lsst.pipe.base.quantum_graph_builder ()(q.py:759) - "
    graph.write_text(f"{pre}Generated 2 quanta for task cpBiasIsr.\n")
    assert reader.poll() == []
    graph.write_text(f"{pre}Generated 2 quanta for task cpBiasIsr.\n{pre}Generated 1 quantum for task "
                     f"cpBiasCombine.\n{pre}Graph build complete.\n")
    log = tmp_path / "logs" / "biasByDetector" / "biasByDetector_0.stderr"
    log.parent.mkdir(parents=True)
    (tmp_path / "logs" / "finalJob").mkdir()
    (tmp_path / "logs" / "finalJob" / "finalJob.stderr").write_text(
        # Not a quantum job: ignored.
        "INFO x - Execution of task 'cpBiasIsr' on quantum {} took 9.0 seconds\n")
    pre = "INFO 2026-12-04T14:57:16 lsst.pipe.base.single_quantum_executor (cpBiasIsr:{})(s.py:345) - "
    done = f"{pre}Execution of task 'cpBiasIsr' on quantum {{exposure: 1}} took 0.5 seconds\n"
    summary = ("INFO x lsst.pipe.base.mp_graph_executor - Executed 1 quanta successfully, 0 failed and "
               "2 remain out of total 3 quanta.\n")
    log.write_text(done + summary + done[:40])
    assert reader.poll() == [
        ProgressEvent("planned", "cpBiasIsr", n=2), ProgressEvent("planned", "cpBiasCombine", n=1),
        ProgressEvent("built"), ProgressEvent("done", "cpBiasIsr", seconds=0.5)]
    with open(log, "a") as f:
        f.write(done[40:])
    assert reader.poll() == [ProgressEvent("done", "cpBiasIsr", seconds=0.5)]
    assert reader.poll() == []


# -- real pipelines ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def latiss(tmp_path_factory):
    """A small LATISS repository: biases, and one dark (a bias job with it fails)."""
    root = tmp_path_factory.mktemp("progress") / "repo"
    butler = create_repo(root)
    camera = SimulatedCamera(butler, SimulationTruth("LATISS", {"seed": 21, "geometry_scale": 0.0625}))
    return types.SimpleNamespace(root=root, base=root.parent, biases=camera.take("bias", [0.0] * N_BIAS),
                                 dark=camera.take("dark", [30.0])[0])


def _query(exposures) -> str:
    return f"instrument='LATISS' AND exposure IN ({', '.join(map(str, exposures))})"


def _run_job(service, output, exposures, options=""):
    async def go():
        job = await service.execute(PIPELINE, "", f"{options} -i LATISS/raw/all -o {output} "
                                                  "--register-dataset-types", _query(exposures))
        return await service.wait_result(job, 300)

    try:
        return asyncio.run(go())
    finally:
        close = getattr(service, "close", None)
        if close is not None:
            close()


def _labels(text: str) -> dict[str, tuple[int, int]]:
    out = {}
    for part in text.split(", "):
        label, counts = part.split(" ")
        done, _, total = counts.partition("/")
        out[label] = (int(done), int(total or 0))
    return out


def _check_lines(lines, *, every_quantum: bool) -> list[re.Match]:
    """The graph line first, then counts that only grow, to the graph's
    total and the right per-label totals; returns the count lines."""
    graph = _GRAPH.match(lines[0])
    assert graph, lines
    assert int(graph["total"]) == TOTAL
    assert {k: t for k, (t, _) in _labels(graph["labels"]).items()} == TOTALS
    counts = [_COUNTS.match(ln) for ln in lines[1:]]
    assert all(counts), lines
    done = [int(m["done"]) for m in counts]
    assert done == sorted(set(done)), lines  # strictly increasing
    if every_quantum:
        assert done == list(range(1, TOTAL + 1)), lines
    previous = {label: 0 for label in TOTALS}
    for m in counts:
        assert int(m["total"]) == TOTAL
        per_label = _labels(m["labels"])
        assert {k: t for k, (_, t) in per_label.items()} == TOTALS
        assert sum(d for d, _ in per_label.values()) == int(m["done"])
        for label, (d, t) in per_label.items():
            assert previous[label] <= d <= t
            previous[label] = d
    assert _labels(counts[-1]["labels"]) == {k: (t, t) for k, t in TOTALS.items()}
    assert counts[-1]["rest"] == ""  # nothing left: no estimate
    assert any(re.fullmatch(r", ~\d+ (s|min) left", m["rest"]) for m in counts), lines
    return counts


@pytest.mark.parametrize("mode, options", [("inprocess", ""), ("workers", ""), ("subprocess", "-j 2")])
def test_local_service_reports_every_quantum(latiss, mode, options, capfd):
    """With no interval every quantum's end is a line; the terminal shows
    none of the INFO records progress is read from; the progress loggers
    are left as they were."""
    lines = []
    service = LocalPipelineService(latiss.root, mode=mode, max_jobs=1, progress=lines.append,
                                   progress_interval=0.0)
    res = _run_job(service, f"progress/{mode}", latiss.biases, options)
    assert res.ok, res.errors
    _check_lines(lines, every_quantum=True)
    err = capfd.readouterr().err
    assert "Execution of task" not in err and "Generated 6 quanta" not in err
    assert all(logging.getLogger(name).level == logging.NOTSET and not logging.getLogger(name).filters
               for name in PROGRESS_LOGGERS)


def test_interval_limits_lines_to_label_completions(latiss):
    """With a long interval: the graph, the first count, then a line only
    when a task label completes."""
    lines = []
    service = LocalPipelineService(latiss.root, mode="inprocess", max_jobs=1, progress=lines.append,
                                   progress_interval=600)
    res = _run_job(service, "progress/interval", latiss.biases)
    assert res.ok, res.errors
    counts = _check_lines(lines, every_quantum=False)
    assert [int(m["done"]) for m in counts] == [1, N_BIAS, TOTAL]


def test_failed_quanta_are_counted(latiss):
    """A dark in a bias job: its ISR quantum fails, the combine is blocked;
    the last line (given when the job ends) counts both."""
    lines = []
    service = LocalPipelineService(latiss.root, mode="inprocess", max_jobs=1, progress=lines.append,
                                   progress_interval=600)
    res = _run_job(service, "progress/failed", latiss.biases[:3] + [latiss.dark])
    assert not res.ok and "not a BIAS" in res.errors[0]
    assert lines[-1] == "  cpBias: 5/5 quanta (cpBiasIsr 4/4, cpBiasCombine 1/1), 2 failed"


def test_a_failing_progress_callable_does_not_break_the_job(latiss, caplog):
    def report(line):
        raise RuntimeError("broken terminal")

    service = LocalPipelineService(latiss.root, mode="inprocess", max_jobs=1, progress=report,
                                   progress_interval=0.0)
    with caplog.at_level(logging.WARNING):
        res = _run_job(service, "progress/broken", latiss.biases[:2])
    assert res.ok, res.errors
    assert sum("Progress reporting of job cpBias failed" in r.getMessage() for r in caplog.records) == 1


def test_bps_service_reports_progress_from_the_workflow_logs(latiss):
    lines = []
    service = BpsPipelineService(latiss.root, submit_root=latiss.base / "submit", progress=lines.append,
                                 progress_interval=0.0, progress_poll=0.5)
    res = _run_job(service, "progress/bps", latiss.biases, "-j 2")
    assert res.ok, res.errors
    _check_lines(lines, every_quantum=False)
