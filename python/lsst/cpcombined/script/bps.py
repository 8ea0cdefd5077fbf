"""A `PipelineService` that submits the pipelines as BPS workflows.

`BpsPipelineService` turns each OCPS-style ``execute(pipeline, version,
config, data_query)`` into a ``bps submit`` of a small submission file that
includes a site configuration from ``$CPCOMBINED_DIR/config/bps`` (the local
parsl site by default) and sets the pipeline, repository, collections and
data query.  ``wait_result`` waits for the ``bps submit`` process, then
checks the workflow's status (``bps submit`` with the parsl plugin exits 0
even when quanta failed): every job's log is read, and a failed quantum, a
job that died, or a failed final (ingest) job gives phase ``error`` with the
cause; a workflow still running after the timeout is killed and gives phase
``aborted``.

Everything a job writes is kept under ``<submit_root>/<job id>/``: the
submission file ``submit.yaml``, the ``bps submit`` output
``bps_submit.log`` and the bps submit directory ``workflow/`` (quantum
graph, expanded configuration, per-job logs in ``workflow/logs``).

While a workflow runs, the service follows it from those files (`WorkflowProgressReader`:
the graph's size per task label from ``quantumGraphGeneration.out``, each
quantum's end from the job logs) and reports lines like::

      cpBias: 12/24 quanta (cpBiasIsr 12/20, cpBiasCombine 0/4), ~35 s left

to its ``progress`` callable.

Running ``bps`` from a pip install needs the variables an eups ``setup``
would give (``CTRL_MPEXEC_DIR``, ``DAF_BUTLER_DIR``...) and ``pipetask`` /
``butler`` on ``PATH``; `bps_environment` provides them for the subprocess
(see ``config/bps/README.md``).
"""

from __future__ import annotations

__all__ = (
    "BpsJobStatus",
    "BpsPipelineService",
    "LocalThreadsSite",
    "WorkflowProgressReader",
    "bps_environment",
    "default_site_config",
    "read_workflow_status",
)

import asyncio
import dataclasses
import datetime
import itertools
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from parsl.executors import ThreadPoolExecutor

from lsst.ctrl.bps.parsl.configuration import get_bps_config_value
from lsst.ctrl.bps.parsl.site import SiteConfig

from ..env import package_root
from .progress import JobProgress, ProgressEvent, job_name, parse_progress
from .protocols import JobResult, ProgressReporter

_LOG = logging.getLogger(__name__)

#: ``pipetask run`` options that only make sense when running quanta.
_RUN_ONLY_OPTIONS = {"--fail-fast", "--no-raise-on-partial-outputs", "--raise-on-partial-outputs"}
#: ``pipetask run`` options that BPS handles itself (dropped, with their value when they take one).
_DROPPED_FLAGS = {"--register-dataset-types", "--init-only", "--no-versions"}
_DROPPED_WITH_VALUE = {"--timeout", "--start-method", "--cores-per-quantum", "--memory-per-quantum"}

_QUANTUM_FAILED = re.compile(
    r"Execution of task '(?P<label>[^']+)' on quantum (?P<data_id>\{.*?\}) failed\. (?P<cause>.*)"
)
_EXEC_SUMMARY = re.compile(
    r"Executed (?P<ok>\d+) quanta successfully, (?P<failed>\d+) failed and (?P<remain>\d+) remain "
    r"out of total (?P<total>\d+) quanta"
)
_PARSL_FAILURE = re.compile(r"bash_app (?P<label>\S+) failed with unix exit code (?P<code>-?\d+)")


def default_site_config() -> str:
    """The local parsl site configuration shipped with the package."""
    root = str(package_root())
    return str(Path(root) / "config" / "bps" / "local_parsl.yaml")


def bps_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``bps`` and its jobs from a pip (or eups) install.

    Adds, when missing: ``CPCOMBINED_DIR``, the eups product variables
    ctrl_bps configuration refers to (``CTRL_MPEXEC_DIR``,
    ``DAF_BUTLER_DIR``... see `lsst.cpcombined.env`), the package's butler
    ``config`` directory in ``DAF_BUTLER_CONFIG_PATH``, and the directory of
    this interpreter (where pip put ``bps``, ``pipetask`` and ``butler``)
    at the front of ``PATH``.
    """
    from ..env import product_dirs

    env = dict(os.environ if base is None else base)
    root = env.get("CPCOMBINED_DIR") or str(package_root())
    env["CPCOMBINED_DIR"] = root
    for var, value in product_dirs().items():
        env.setdefault(var, value)
    cfg = str(Path(root) / "config")
    paths = [p for p in env.get("DAF_BUTLER_CONFIG_PATH", "").split(os.pathsep) if p]
    if cfg not in paths:
        env["DAF_BUTLER_CONFIG_PATH"] = os.pathsep.join([cfg, *paths])
    bindir = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p]
    if not path or path[0] != bindir:
        env["PATH"] = os.pathsep.join([bindir, *[p for p in path if p != bindir]])
    return env


class LocalThreadsSite(SiteConfig):
    """ctrl_bps_parsl site running jobs on this machine from a thread pool.

    Each job is a ``pipetask run-qbb`` subprocess started by one of
    ``site.<computeSite>.cores`` threads of the submitting ``bps`` process,
    so up to ``cores`` jobs run at once.  Unlike the plugin's ``Local``
    site (a ``HighThroughputExecutor``: an interchange process and a
    worker pool that connect over ZMQ), nothing has to start before the
    first job, which saves ~5-7 s per workflow — most of the overhead of a
    small calibration workflow.  Resource requests are not enforced.
    """

    def get_executors(self) -> list[ThreadPoolExecutor]:
        cores = get_bps_config_value(self.site, "cores", int, required=True)
        return [ThreadPoolExecutor(label="local", max_threads=max(1, cores))]

    def select_executor(self, job: Any) -> str:
        return "local"


@dataclasses.dataclass
class BpsJobStatus:
    """What the logs of a finished BPS workflow say.

    Attributes
    ----------
    quanta_succeeded, quanta_failed, quanta_not_run
        Quantum counts summed over the jobs that ran.
    failures
        One message per failed quantum, job or final step (the cause).
    jobs
        Number of job logs read (clustered jobs, not counting init/final).
    """

    quanta_succeeded: int = 0
    quanta_failed: int = 0
    quanta_not_run: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    jobs: int = 0

    @property
    def ok(self) -> bool:
        """Whether every job ran every quantum successfully."""
        return not self.failures and self.quanta_failed == 0 and self.quanta_not_run == 0


def _message(line: str) -> str:
    """The message of a ``--long-log`` log line (after ``) - ``)."""
    _, sep, msg = line.partition(") - ")
    return msg.strip() if sep else line.strip()


def _last_error(text: str) -> str | None:
    """The most informative last line of a traceback or error output."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Failure|Exit|Interrupt)\b.*:", ln) or ln.startswith(
            "Error:"
        ):
            return ln
    errs = [ln for ln in lines if ln.startswith(("ERROR", "CRITICAL", "FATAL"))]
    if errs:
        return _message(errs[-1])
    return lines[-1] if lines else None


def read_workflow_status(submit_dir: str | os.PathLike, bps_output: str = "") -> BpsJobStatus:
    """Read a finished workflow's job logs and report failures.

    Parameters
    ----------
    submit_dir
        The workflow's ``submitPath``.
    bps_output
        What ``bps submit`` printed (parsl reports job exit codes there).
    """
    status = BpsJobStatus()
    logs = Path(submit_dir) / "logs"
    failed_jobs: set[str] = set()
    for stderr in sorted(logs.rglob("*.stderr")) if logs.is_dir() else []:
        name = stderr.name[: -len(".stderr")]
        if name in ("pipetaskInit", "finalJob"):
            text = stderr.read_text(errors="replace")
            if name == "finalJob" and re.search(r"^(ERROR|CRITICAL)", text, re.M):
                status.failures.append(f"final job (aggregate-graph): {_last_error(text)} (log {stderr})")
            continue
        status.jobs += 1
        text = stderr.read_text(errors="replace")
        summary = None
        for line in text.splitlines():
            m = _QUANTUM_FAILED.search(line)
            if m:
                cause = m.group("cause")
                cause = cause[len("Exception ") :] if cause.startswith("Exception ") else cause
                status.failures.append(f"{m.group('label')} {m.group('data_id')}: {cause}")
                failed_jobs.add(name)
            m = _EXEC_SUMMARY.search(line)
            if m:
                summary = m
        if summary is not None:
            # Each quantum executed logs a running summary: the last one is final.
            status.quanta_succeeded += int(summary["ok"])
            status.quanta_failed += int(summary["failed"])
            status.quanta_not_run += int(summary["remain"])
            if (int(summary["failed"]) or int(summary["remain"])) and name not in failed_jobs:
                status.failures.append(
                    f"job {name}: {summary['failed']} quanta failed, {summary['remain']} not run "
                    f"(log {stderr})"
                )
                failed_jobs.add(name)
        elif name not in failed_jobs and ("Traceback" in text or re.search(r"^ERROR", text, re.M)):
            status.failures.append(
                f"job {name} failed before running its quanta: {_last_error(text)} (log {stderr})"
            )
            failed_jobs.add(name)
    for m in _PARSL_FAILURE.finditer(bps_output):
        label, code = m["label"], m["code"]
        if not any(j == label or j.startswith(label + "_") for j in failed_jobs):
            status.failures.append(f"a {label} job failed with exit code {code} (logs in {logs})")
            failed_jobs.add(label)
    if "DependencyError" in bps_output and not status.failures:
        status.failures.append(f"jobs were not run because a job they depend on failed (logs in {logs})")
    return status



class WorkflowProgressReader:
    """Reads the progress of a running BPS workflow from its submit directory.

    The graph's size per task label comes from the quantum-graph build's
    output (``quantumGraphGeneration.out``, read once the build is
    complete); each quantum's end from the job logs (``logs/**/*.stderr``,
    read incrementally).  Both are written at INFO by the settings of
    ``config/bps/cpcombined.yaml`` (``--log-level=INFO``).  The per-job
    ``Executed N quanta...`` summaries are not returned (each counts one
    job only).

    Parameters
    ----------
    submit_dir
        The workflow's ``submitPath``.
    """

    def __init__(self, submit_dir: str | os.PathLike) -> None:
        self.submit_dir = Path(submit_dir)
        self._graph_read = False
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}

    def poll(self) -> list[ProgressEvent]:
        """Events written since the last call (graph first, then quanta)."""
        events: list[ProgressEvent] = []
        if not self._graph_read:
            graph_log = self.submit_dir / "quantumGraphGeneration.out"
            if not graph_log.is_file():
                return events
            graph_events = [
                ev
                for ev in map(parse_progress, graph_log.read_text(errors="replace").splitlines())
                if ev is not None and ev.kind in ("planned", "dropped", "built")
            ]
            if not any(ev.kind == "built" for ev in graph_events):
                return events  # the quanta are not counted before the graph
            self._graph_read = True
            events += graph_events
        logs = self.submit_dir / "logs"
        for path in sorted(logs.rglob("*.stderr")) if logs.is_dir() else []:
            if path.name in ("pipetaskInit.stderr", "finalJob.stderr"):
                continue
            offset = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            if not data:
                continue
            self._offsets[path] = offset + len(data)
            *lines, rest = (self._partial.pop(path, b"") + data).split(b"\n")
            if rest:
                self._partial[path] = rest
            for raw in lines:
                ev = parse_progress(raw.decode(errors="replace"))
                if ev is not None and ev.kind in ("done", "failed", "skipped", "blocked"):
                    events.append(ev)
        return events

@dataclasses.dataclass
class _Job:
    process: asyncio.subprocess.Process
    output: str
    submit_dir: Path
    log_path: Path
    started: float
    result: JobResult | None = None
    tracker: JobProgress | None = None
    reader: WorkflowProgressReader | None = None
    watcher: asyncio.Task | None = None


class BpsPipelineService:
    """`PipelineService` submitting each job with ``bps submit``.

    Parameters
    ----------
    repo
        Butler repository (path or URI of its ``butler.yaml``).
    site_config
        BPS site configuration to include (default: the package's
        ``config/bps/local_parsl.yaml``; use ``usdf_htcondor.yaml`` or your
        own at a cluster).
    submit_root
        Directory for the workflows' submit directories (default
        ``<repo>/cpcombined/bps`` for a local repository, ``./submit``
        otherwise).
    output_prefix
        Output collection of a job whose config has no ``-o``:
        ``<output_prefix>/<job id>`` (OCPS uses ``u/ocps``).
    extra_config
        More BPS settings merged into every submission file (e.g.
        ``{"site": {"local": {"cores": 4}}}``, ``{"requestMemory": 8192}``).
    bps_command
        The ``bps`` executable (default: next to this interpreter, else
        ``bps`` on ``PATH``).
    progress
        Receives the progress lines of the running workflows (see the
        module doc), in the event loop's thread; default: this module's
        logger at INFO.  May also be set later through the ``progress``
        attribute.  A failure in reporting progress is logged and the
        workflow goes on.
    progress_interval
        Minimum seconds between two progress lines of a workflow (a line is
        also given whenever every quantum of a task label has ended).
    progress_poll
        Seconds between two reads of a running workflow's logs.
    """

    def __init__(
        self,
        repo: str | os.PathLike,
        *,
        site_config: str | os.PathLike | None = None,
        submit_root: str | os.PathLike | None = None,
        output_prefix: str = "u/ocps",
        extra_config: dict[str, Any] | None = None,
        bps_command: str | None = None,
        progress: ProgressReporter | None = None,
        progress_interval: float = 5.0,
        progress_poll: float = 2.0,
    ) -> None:
        self.repo = str(repo)
        self.site_config = str(Path(os.path.expandvars(str(site_config))).resolve()) if site_config else None
        if submit_root is None:
            local = Path(self.repo)
            base = local.parent if local.name.endswith(".yaml") else local
            submit_root = base / "cpcombined" / "bps" if base.is_dir() else Path.cwd() / "submit"
        self.submit_root = Path(submit_root).resolve()
        self.output_prefix = output_prefix
        self.extra_config = dict(extra_config or {})
        if bps_command is None:
            candidate = Path(sys.executable).parent / "bps"
            bps_command = str(candidate) if candidate.exists() else (shutil.which("bps") or "bps")
        self.bps_command = bps_command
        self.progress = progress
        self.progress_interval = progress_interval
        self.progress_poll = progress_poll
        self._jobs: dict[str, _Job] = {}
        self._counter = itertools.count(1)

    # -- submission -----------------------------------------------------------------

    def _job_id(self) -> str:
        """A new job id; its directory is created here, atomically, so
        services in several processes can share a ``submit_root``."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        self.submit_root.mkdir(parents=True, exist_ok=True)
        while True:
            job_id = f"bps-{stamp}-{next(self._counter):03d}"
            try:
                (self.submit_root / job_id).mkdir()
            except FileExistsError:
                continue
            return job_id

    def build_submission(
        self, pipeline: str, config: str, data_query: str, job_id: str
    ) -> tuple[dict[str, Any], str]:
        """The BPS submission mapping and output collection of a job.

        ``config`` holds ``pipetask run``-style options: ``-i``/``--input``
        and ``-o``/``--output`` become the payload's collections, ``-j N``
        the local site's core count, ``--fail-fast`` goes to the quantum
        execution, ``--register-dataset-types`` is implied (the final job
        registers them) and everything else (``-c label:field=value``,
        ``-C``, ``--skip-existing-in``...) goes to the quantum-graph
        builder.
        """
        tokens = shlex.split(config)
        inputs: list[str] = []
        output: str | None = None
        cores: int | None = None
        qgraph_opts: list[str] = []
        run_opts: list[str] = []
        it = iter(tokens)
        for tok in it:
            key, eq, value = tok.partition("=")
            if key in ("-i", "--input"):
                inputs.append(value if eq else next(it))
            elif key in ("-o", "--output"):
                output = value if eq else next(it)
            elif key in ("-j", "--processes"):
                cores = int(value if eq else next(it))
            elif key in ("-b", "--butler-config", "-p", "--pipeline", "-d", "--data-query", "-g", "--qgraph"):
                raise ValueError(f"job config may not set {key}: the service sets it")
            elif key in _DROPPED_FLAGS:
                continue
            elif key in _DROPPED_WITH_VALUE:
                if not eq:
                    next(it)
            elif key in _RUN_ONLY_OPTIONS:
                run_opts.append(tok)
            else:
                qgraph_opts.append(tok)
        output = output or f"{self.output_prefix}/{job_id}"
        in_collections = ",".join(c for part in inputs for c in part.split(",") if c)
        if not in_collections:
            raise ValueError("job config needs input collections (-i)")
        root = bps_environment()["CPCOMBINED_DIR"]
        pipeline = os.path.expandvars(pipeline.replace("${CPCOMBINED_DIR}", root))
        site = self.site_config or default_site_config()
        sub: dict[str, Any] = {
            "includeConfigs": [site],
            "pipelineYaml": pipeline,
            "payload": {
                "payloadName": Path(pipeline.split("#")[0]).stem,
                "butlerConfig": self.repo,
                "inCollection": in_collections,
                "output": output,
                "dataQuery": data_query,
            },
            "submitPath": str(self.submit_root / job_id / "workflow"),
        }
        if qgraph_opts:
            sub["extraQgraphOptions"] = shlex.join(qgraph_opts)
        if run_opts:
            sub["extraRunQuantumOptions"] = shlex.join(run_opts)
        if cores is not None:
            sub["site"] = {"local": {"cores": max(1, cores)}}
        _merge(sub, self.extra_config)
        return sub, output

    async def execute(self, pipeline: str, version: str, config: str, data_query: str) -> str:
        """Write the submission file and start ``bps submit``; return the job id.

        ``version`` (the OCPS pipeline version) is recorded in the
        submission file but not used: the pipelines are this package's.
        """
        job_id = self._job_id()
        sub, output = self.build_submission(pipeline, config, data_query, job_id)
        if version:
            sub["cpcombinedPipelineVersion"] = version
        meta = self.submit_root / job_id
        submit_dir = meta / "workflow"
        # bps copies the submission file into its submit directory: keep
        # ours (and the bps output) one level up.
        sub_file = meta / "submit.yaml"
        sub_file.write_text(yaml.safe_dump(sub, sort_keys=False))
        log_path = meta / "bps_submit.log"
        env = bps_environment()
        _LOG.info("Job %s: %s submit %s (output %s)", job_id, self.bps_command, sub_file, output)
        with open(log_path, "wb") as log:
            proc = await asyncio.create_subprocess_exec(
                self.bps_command,
                "submit",
                str(sub_file),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=str(meta),
                start_new_session=True,  # its own process group: parsl workers are killed with it
            )
        job = _Job(
            process=proc, output=output, submit_dir=submit_dir, log_path=log_path, started=time.monotonic()
        )
        job.tracker = JobProgress(
            job_name(pipeline),
            self._report,
            interval=self.progress_interval,
            use_summary=False,
            schedule=asyncio.get_running_loop().call_later,
        )
        job.reader = WorkflowProgressReader(submit_dir)
        job.watcher = asyncio.ensure_future(self._watch(job))
        self._jobs[job_id] = job
        return job_id

    # -- progress -------------------------------------------------------------------

    def _report(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)
        else:
            _LOG.info("%s", line)

    async def _poll_progress(self, job: _Job) -> None:
        """Read the workflow's new progress events and count them (never raises)."""
        if job.reader is None or job.tracker is None:
            return
        try:
            events = await asyncio.to_thread(job.reader.poll)
        except Exception:  # noqa: BLE001 - progress must never break a workflow
            _LOG.warning(
                "Reading the progress of %s failed; the workflow goes on.", job.submit_dir
            )
            job.reader = None
            return
        for event in events:
            job.tracker.feed(event)

    async def _watch(self, job: _Job) -> None:
        """Follow a workflow's progress until its ``bps submit`` ends."""
        while job.process.returncode is None:
            await asyncio.sleep(self.progress_poll)
            await self._poll_progress(job)

    async def _stop_watching(self, job: _Job, final: bool) -> None:
        """Stop following a workflow (after a last read if ``final``)."""
        if job.watcher is not None:
            job.watcher.cancel()
            try:
                await job.watcher
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            job.watcher = None
        if final:
            await self._poll_progress(job)
        if job.tracker is not None:
            job.tracker.close(flush=final)

    # -- results --------------------------------------------------------------------

    def _kill(self, job: _Job) -> None:
        """Terminate the ``bps submit`` process group (parsl workers included)."""
        pid = job.process.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)

    async def _stop(self, job: _Job) -> None:
        """Kill the workflow (`_kill`, off the event loop) and reap it."""
        await asyncio.to_thread(self._kill, job)
        await job.process.wait()

    async def wait_result(self, job_id: str, timeout: float) -> JobResult:
        """Wait for the workflow and check its status (see the module doc)."""
        job = self._jobs[job_id]
        if job.result is not None:
            return job.result
        try:
            await asyncio.wait_for(asyncio.shield(job.process.wait()), timeout)
        except asyncio.CancelledError:
            # The procedure stopped (a failure elsewhere, or its end): a
            # workflow nobody waits for must not go on writing to the repo.
            if job.process.returncode is None:
                _LOG.warning("Killing the bps workflow writing %s: its procedure stopped.", job.output)
                await self._stop(job)
            if job.watcher is not None:
                job.watcher.cancel()
            if job.tracker is not None:
                job.tracker.close(flush=False)
            raise
        except TimeoutError:
            await self._stop(job)
            await self._stop_watching(job, final=False)
            return JobResult(
                jobId=job_id,
                phase="aborted",
                exit_code=-1,
                output_collection=job.output,
                errors=[
                    f"job timed out after {timeout:g} s: bps workflow killed "
                    f"(submit directory {job.submit_dir})"
                ],
                seconds=time.monotonic() - job.started,
            )
        await self._stop_watching(job, final=True)
        job.result = await asyncio.to_thread(self._finish, job_id, job)
        return job.result

    def _finish(self, job_id: str, job: _Job) -> JobResult:
        seconds = time.monotonic() - job.started
        code = job.process.returncode or 0
        text = job.log_path.read_text(errors="replace") if job.log_path.exists() else ""
        status = read_workflow_status(job.submit_dir, text)
        errors = list(status.failures)
        if code != 0 and not errors:
            cause = _last_error(text) or f"bps submit exited with code {code}"
            errors = [f"bps submit failed: {cause} (log {job.log_path})"]
        if code == 0 and not errors:
            if status.jobs == 0:
                errors = [f"bps ran no job (empty quantum graph?); see {job.log_path}"]
            elif not self._output_exists(job.output):
                errors = [
                    f"the workflow finished but its output collection {job.output} is not in the registry"
                ]
        ok = code == 0 and not errors
        _LOG.info(
            "Job %s: %s in %.1f s (%d quanta ok, %d failed, %d not run)",
            job_id,
            "completed" if ok else "error",
            seconds,
            status.quanta_succeeded,
            status.quanta_failed,
            status.quanta_not_run,
        )
        return JobResult(
            jobId=job_id,
            phase="completed" if ok else "error",
            exit_code=0 if ok else (code or 1),
            output_collection=job.output,
            errors=errors[:10],
            seconds=seconds,
        )

    def _output_exists(self, output: str) -> bool:
        from lsst.daf.butler import Butler

        from ..repo.collections import collection_exists

        butler = Butler.from_config(self.repo)
        try:
            return collection_exists(butler, output)
        finally:
            butler.close()


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Recursively merge ``extra`` into ``into``."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
