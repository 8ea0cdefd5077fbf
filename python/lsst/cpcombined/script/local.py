"""Local implementations of the script's protocols (the embedded default):
the simulated camera, a butler-polling raw waiter, and a pipeline service
that runs the same pipelines with ``pipetask`` in-process or as a
subprocess, returning OCPS-shaped results.

The pipeline service reports each running job's progress (quanta ended per
task label, estimate of the time left) through a callable it is given; see
`LocalPipelineService`."""

from __future__ import annotations

__all__ = ("ButlerRawWaiter", "LocalPipelineService", "LocalSimulatedCamera")

import asyncio
import collections
import concurrent.futures
import dataclasses
import datetime
import functools
import itertools
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable

from lsst.daf.butler import Butler

from ..env import package_root
from ..simulation import SimulationTruth
from ..simulation.camera import READOUT_SECONDS, SimulatedCamera
from .pipetask import run_pipetask
from .progress import (
    PROGRESS_LOGGERS,
    JobProgress,
    ProgressEvent,
    job_name,
    parse_progress,
    progress_log_level_args,
)
from .protocols import JobResult, ProgressReporter
from .worker import WarmWorker, WorkerDied, die_with_parent

_LOG = logging.getLogger(__name__)


class LocalSimulatedCamera:
    """`Camera` backed by the simulated camera (frames ingested at once).

    Parameters
    ----------
    repo
        Butler repository the frames are ingested into.
    truth
        Simulation truth (instrument, geometry, faults...).
    detectors
        Detector ids read out.
    wait_between_exposures
        Simulated seconds between exposures.
    """

    read_out_time = READOUT_SECONDS

    def __init__(
        self,
        repo: str | os.PathLike,
        truth: SimulationTruth,
        detectors: list[int],
        wait_between_exposures: float = 0.0,
    ) -> None:
        self._camera = SimulatedCamera(
            Butler.from_config(str(repo), writeable=True),
            truth,
            detectors=detectors,
            wait_between_exposures=wait_between_exposures,
        )

    async def take_imgtype(
        self,
        imgtype: str,
        exptime: float,
        n: int,
        *,
        group_id: str,
        note: str = "",
        program: str = "",
        reason: str = "",
        filter: str | None = None,
        discard: bool = False,
        index: int | None = None,
    ) -> list[int]:
        image_type = imgtype.lower()
        return await asyncio.to_thread(
            self._camera.take,
            image_type,
            [exptime] * n,
            physical_filter=filter if image_type == "flat" else None,
            group_id=group_id,
            note=note,
            program=program,
            reason=reason,
            discard=discard,
            first_index=index,
        )


class ButlerRawWaiter:
    """`RawWaiter` that polls the repository for the raws.

    Works wherever raws are ingested into a butler repository (by the
    simulated camera here, by the OODS at the summit).
    """

    def __init__(self, repo: str | os.PathLike, instrument: str, poll_seconds: float = 1.0) -> None:
        self._repo = str(repo)
        self._instrument = instrument
        self._poll = poll_seconds

    def _missing(self, exposures: list[int], detectors: list[int]) -> set[tuple[int, int]]:
        butler = Butler.from_config(self._repo)
        wanted = {(e, d) for e in exposures for d in detectors}
        where = (
            f"instrument='{self._instrument}' AND exposure IN ({', '.join(map(str, exposures))}) "
            f"AND detector IN ({', '.join(map(str, detectors))})"
        )
        try:
            refs = butler.query_datasets("raw", collections="*", where=where, find_first=False, explain=False)
        except Exception:  # no raw dataset type yet
            refs = []
        found = {(r.dataId["exposure"], r.dataId["detector"]) for r in refs}
        return wanted - found

    async def wait_for_raws(self, exposures: list[int], detectors: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            missing = await asyncio.to_thread(self._missing, exposures, detectors)
            if not missing:
                return
            if time.monotonic() > deadline:
                sample = ", ".join(f"{e}/{d}" for e, d in sorted(missing)[:5])
                raise TimeoutError(
                    f"{len(missing)} raw(s) not in the repository after {timeout:g} s (exposure/detector: {sample})"
                )
            await asyncio.sleep(self._poll)


#: INFO lines of pipetask's progress loggers in a subprocess's stderr (read
#: for progress, not kept for the error summary).
_PROGRESS_LINE_PREFIXES = tuple(
    f"{name} {level}:" for name in PROGRESS_LOGGERS for level in ("INFO", "VERBOSE")
)
#: Lines of a subprocess's stderr kept for its error summary.
_STDERR_TAIL_LINES = 2000


@dataclasses.dataclass
class _Job:
    output: str
    started: float
    name: str = "pipeline"
    tracker: JobProgress | None = None
    future: asyncio.Future | None = None
    process: asyncio.subprocess.Process | None = None
    worker: WarmWorker | None = None


class LocalPipelineService:
    """`PipelineService` running ``pipetask`` locally.

    In every mode the service follows each job's quanta, from the records
    pipetask logs at INFO (which do not reach the terminal: in this process
    and in workers a logging filter reads them, from a subprocess its
    stderr), and reports lines like::

          cpBias: 12/24 quanta (cpBiasIsr 12/20, cpBiasCombine 0/4), ~35 s left

    to ``progress`` (see `~lsst.cpcombined.script.progress.JobProgress`).

    Parameters
    ----------
    repo
        Butler repository.
    mode
        ``inprocess``: the real pipetask code runs in this process (quanta
        in this process, ``-j`` ignored, no interpreter start-up); a job
        submitted while another runs in-process goes to a warm worker
        process (`WarmWorker`: imports done ahead of time, reused from job
        to job).  ``workers``: every job runs in a warm worker (the main
        process only acquires and orchestrates, so simulated acquisition
        never shares its interpreter with a pipeline).  ``subprocess``:
        every job is a new ``pipetask`` process
        (``-j`` honoured).  Subprocesses and workers are killed on timeout
        and when their procedure stops.
    output_prefix
        Output collection of a job whose config has no ``-o``:
        ``<output_prefix>/<job id>`` (OCPS uses ``u/ocps``).
    max_jobs
        Jobs running at once (more wait for a slot); default: the number of
        CPUs.  The numerical kernels use every core, but a job also spends
        much of its time in I/O and the registry, so jobs overlap well:
        on 2 cores the full-size LATISS daily run took 202-219 s with 2
        jobs at once and 231 s with 3 (`benchmarks/bench_daily.py`).
    progress
        Receives the progress lines of the running jobs (one line each, no
        trailing newline), in the event loop's thread; default: this
        module's logger at INFO.  May also be set later through the
        ``progress`` attribute.  A failure in reporting progress is logged
        and the job goes on.
    progress_interval
        Minimum seconds between two progress lines of a job (a line is also
        given whenever every quantum of a task label has ended).
    """

    def __init__(
        self,
        repo: str | os.PathLike,
        *,
        mode: str = "inprocess",
        output_prefix: str = "u/ocps",
        max_jobs: int | None = None,
        progress: ProgressReporter | None = None,
        progress_interval: float = 5.0,
    ) -> None:
        if mode not in ("inprocess", "workers", "subprocess"):
            raise ValueError(f"mode must be 'inprocess', 'workers' or 'subprocess', got {mode!r}")
        self.repo = str(repo)
        self.mode = mode
        self.output_prefix = output_prefix
        self.max_jobs = max_jobs or max(1, os.cpu_count() or 1)
        self.progress = progress
        self.progress_interval = progress_interval
        self._jobs: dict[str, _Job] = {}
        self._counter = itertools.count(1)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipetask")
        self._slots: asyncio.Semaphore | None = None
        self._inprocess_busy = False
        self._idle_workers: list[WarmWorker] = []
        self._worker_threads: concurrent.futures.ThreadPoolExecutor | None = None

    def _job_id(self) -> str:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        return f"{stamp}-{next(self._counter):03d}"

    def build_args(self, pipeline: str, config: str, data_query: str, job_id: str) -> tuple[list[str], str]:
        """``pipetask`` arguments and output collection of a job."""
        tokens = shlex.split(config)
        output = None
        rest: list[str] = []
        it = iter(tokens)
        for tok in it:
            if tok in ("-o", "--output"):
                output = next(it)
            elif tok.startswith("--output="):
                output = tok.split("=", 1)[1]
            elif tok in ("-j", "--processes") and self.mode != "subprocess":
                next(it)
            elif tok in ("-b", "--butler-config", "-p", "--pipeline", "-d", "--data-query"):
                raise ValueError(f"job config may not set {tok}: the service sets it")
            else:
                rest.append(tok)
        output = output or f"{self.output_prefix}/{job_id}"
        os.environ.setdefault("CPCOMBINED_DIR", str(package_root()))
        pipeline = os.path.expandvars(pipeline)
        # A subprocess's stderr is read for progress: raise the loggers that
        # tell it (in this interpreter a logging filter reads them instead).
        levels = progress_log_level_args() if self.mode == "subprocess" else []
        args = ["--log-level", "WARNING", *levels, "run", "-b", self.repo, "-p", pipeline, *rest]
        args += ["-o", output, "-d", data_query]
        return args, output

    async def execute(self, pipeline: str, version: str, config: str, data_query: str) -> str:
        job_id = self._job_id()
        args, output = self.build_args(pipeline, config, data_query, job_id)
        _LOG.info("Job %s: pipetask %s", job_id, " ".join(shlex.quote(a) for a in args))
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_jobs)
            # Warm up workers while the first job starts.
            n_warm = {"inprocess": self.max_jobs - 1, "workers": self.max_jobs}.get(self.mode, 0)
            self._idle_workers.extend(WarmWorker() for _ in range(n_warm))
        job = _Job(output=output, started=time.monotonic(), name=job_name(pipeline))
        job.future = asyncio.ensure_future(self._run(job, args))
        self._jobs[job_id] = job
        return job_id

    def _report(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)
        else:
            _LOG.info("%s", line)

    async def _run(self, job: _Job, args: list[str]) -> tuple[int, list[str]]:
        """Run one job when a slot is free; return (exit code, errors)."""
        assert self._slots is not None
        async with self._slots:
            job.started = time.monotonic()
            loop = asyncio.get_running_loop()
            job.tracker = JobProgress(
                job.name, self._report, interval=self.progress_interval, schedule=loop.call_later
            )
            cancelled = False
            try:
                return await self._run_now(job, args)
            except asyncio.CancelledError:
                cancelled = True
                raise
            finally:
                # Counts not reported yet (a failure's last ones), unless the
                # procedure stopped: then nobody wants them.
                job.tracker.close(flush=not cancelled)

    def _thread_sink(self, job: _Job) -> Callable[[ProgressEvent | tuple], None]:
        """A progress callable for a thread other than the event loop's: the
        events are counted in the loop's thread, in order."""
        loop = asyncio.get_running_loop()
        tracker = job.tracker
        assert tracker is not None

        def sink(event: ProgressEvent | tuple) -> None:
            if loop.is_closed():
                return  # the procedure has ended (e.g. interrupted) while this job still runs
            loop.call_soon_threadsafe(tracker.feed, event)

        return sink

    async def _run_now(self, job: _Job, args: list[str]) -> tuple[int, list[str]]:
        if self.mode == "inprocess" and not self._inprocess_busy:
            self._inprocess_busy = True
            try:
                res = await asyncio.get_running_loop().run_in_executor(
                    self._pool, functools.partial(run_pipetask, args, progress=self._thread_sink(job))
                )
            finally:
                self._inprocess_busy = False
            return res.exit_code, ([res.error_summary()] if not res.ok else [])
        if self.mode != "subprocess":
            return await self._run_in_worker(job, args)
        job.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from lsst.ctrl.mpexec.cli.pipetask import main; sys.exit(main())",
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        try:
            assert job.process.stderr is not None
            await self._read_stderr(job.process.stderr, job.tracker, tail)
            code = await job.process.wait() or 0
        except asyncio.CancelledError:
            # The procedure stopped (a failure elsewhere, or its end): a
            # job nobody waits for must not go on writing to the repo.
            if job.process.returncode is None:
                _LOG.warning(
                    "Killing the pipetask job writing %s (pid %d): its procedure stopped.",
                    job.output,
                    job.process.pid,
                )
                job.process.kill()
                await job.process.wait()
            raise
        finally:
            # Drop the process (and its transport) while the event loop
            # still runs: a transport collected after the loop closed
            # raises "Event loop is closed" in its __del__.
            job.process = None
        errors: list[str] = []
        if code:
            errors = [ln for ln in tail if "Error" in ln or "ERROR" in ln][-5:]
            errors = errors or [f"pipetask exited with code {code}"]
        return code, errors

    @staticmethod
    async def _read_stderr(
        stream: asyncio.StreamReader, tracker: JobProgress | None, tail: collections.deque[str]
    ) -> None:
        """Read a pipetask subprocess's stderr to its end: progress lines go
        to ``tracker``, the others to ``tail`` (for the error summary)."""
        pending = b""
        while True:
            chunk = await stream.read(1 << 16)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
            else:
                lines, pending = ([pending] if pending else []), b""
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")
                if tracker is not None:
                    event = None
                    try:
                        event = parse_progress(line)
                    except Exception:  # noqa: BLE001 - progress must never break a job
                        _LOG.debug("Unreadable progress line %r", line, exc_info=True)
                    if event is not None:
                        tracker.feed(event)
                if not line.startswith(_PROGRESS_LINE_PREFIXES):
                    tail.append(line)
            if not chunk:
                return

    async def _run_in_worker(self, job: _Job, args: list[str]) -> tuple[int, list[str]]:
        """Run a job in an idle warm worker (a new one if none is idle)."""
        while self._idle_workers and not self._idle_workers[-1].alive:
            self._idle_workers.pop().kill()  # reap it and close its pipe
        worker = self._idle_workers.pop() if self._idle_workers else WarmWorker()
        if self._worker_threads is None:
            self._worker_threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.max_jobs, thread_name_prefix="pipetask-worker"
            )
        job.worker = worker
        try:
            loop = asyncio.get_running_loop()
            code, errors = await loop.run_in_executor(
                self._worker_threads, worker.run, args, self._thread_sink(job)
            )
        except WorkerDied as err:
            return -1, [str(err)]
        except asyncio.CancelledError:
            _LOG.warning(
                "Killing the pipetask worker writing %s (pid %s): its procedure stopped.",
                job.output,
                worker.pid,
            )
            worker.kill()
            raise
        finally:
            job.worker = None
        self._idle_workers.append(worker)
        return code, errors

    def close(self) -> None:
        """Stop the idle worker processes (running jobs are not waited for)."""
        while self._idle_workers:
            self._idle_workers.pop().close()
        if self._worker_threads is not None:
            self._worker_threads.shutdown(wait=False, cancel_futures=True)
            self._worker_threads = None

    async def wait_result(self, job_id: str, timeout: float) -> JobResult:
        job = self._jobs[job_id]
        assert job.future is not None
        try:
            code, errors = await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            if job.tracker is not None:
                # An in-process job cannot be stopped: no more of its lines.
                job.tracker.close(flush=False)
            if job.process is not None and job.process.returncode is None:
                job.process.kill()
            if job.worker is not None:
                job.worker.kill()
            return JobResult(
                jobId=job_id,
                phase="aborted",
                exit_code=-1,
                output_collection=job.output,
                errors=[f"job timed out after {timeout:g} s"],
                seconds=time.monotonic() - job.started,
            )
        return JobResult(
            jobId=job_id,
            phase="completed" if code == 0 else "error",
            exit_code=code,
            output_collection=job.output,
            errors=errors,
            seconds=time.monotonic() - job.started,
        )
