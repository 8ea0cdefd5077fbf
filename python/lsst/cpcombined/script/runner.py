"""``cpcombined run``: the whole procedure with the local implementations.

A run configuration is the script configuration (SPEC §7 keys) plus:

``instrument``
    ``LATISS`` (default) or ``LSSTComCam``.
``simulation``
    Truth of the simulated camera (see `lsst.cpcombined.simulation.truth`).
``execution``
    ``pipeline_mode``: ``inprocess`` (default: one job in this process,
    the others in warm worker processes), ``workers`` (every job in a warm
    worker process), ``subprocess`` (a new ``pipetask`` process per job)
    or ``bps`` (each pipeline job is a ``bps submit`` workflow, see
    `lsst.cpcombined.script.bps`).  With ``bps``: ``bps_config``, the
    BPS site configuration to include (default
    ``$CPCOMBINED_DIR/config/bps/local_parsl.yaml``); ``bps_submit_root``,
    where the workflows' submit directories go (default
    ``REPO/cpcombined/bps``); ``bps_extra_config``, a mapping of more BPS
    settings for every submission (e.g. ``{requestMemory: 8192}``).
    ``keep_intermediates``: keep the generation runs' per-exposure
    intermediates (``cpc*Proc``, ``cpcFlatStatistics``); by default
    (``false``) they are removed once the run succeeded, i.e. once every
    product made from them is certified (`lsst.cpcombined.repo.prune`; a
    step of the run, recorded in its state: a run killed while removing
    them finishes the removal when resumed).
    ``reuse_freed_memory``: while the frames are processed, this process
    and the warm pipeline workers keep freed memory for reuse instead of
    returning every large block to the system (default ``true``;
    `lsst.cpcombined.script.memory`).
"""

from __future__ import annotations

__all__ = ("PreflightError", "RunConfig", "load_run_config", "run_directory", "run_procedure")

import asyncio
import dataclasses
import datetime
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import yaml

from lsst.daf.butler import Butler

from ..repo.collections import collection_exists
from ..repo.create import create_repo
from ..simulation import SimulationTruth
from .core import (
    MakeCalibrationsCore,
    ProcedureError,
    RunSummary,
    StepRecord,
    check_pipeline_files,
    procedure_pipelines,
    record_step,
)
from .local import ButlerRawWaiter, LocalPipelineService, LocalSimulatedCamera
from .memory import freed_memory_reused
from .schema import ConfigError, ScriptConfig, validate_config
from .state import RunBook, RunState, config_key

_LOG = logging.getLogger("lsst.cpcombined.script")

_EXECUTION_KEYS = {
    "pipeline_mode",
    "max_jobs",
    "bps_config",
    "bps_submit_root",
    "bps_extra_config",
    "keep_intermediates",
    "reuse_freed_memory",
}
_PIPELINE_MODES = ("inprocess", "workers", "subprocess", "bps")


@dataclasses.dataclass
class RunConfig:
    """A parsed run configuration file."""

    instrument: str
    script: dict[str, Any]
    simulation: dict[str, Any]
    execution: dict[str, Any]


def load_run_config(path: str | os.PathLike) -> RunConfig:
    """Read a run configuration YAML file.

    Raises
    ------
    ConfigError
        Unreadable file or invalid top-level structure.
    """
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read run configuration {path}: {err}") from err
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{path}: a run configuration must be a mapping")
    doc = dict(doc)
    for key in ("certify_calib_begin_date", "certify_calib_end_date"):
        # YAML turns unquoted dates into date/datetime objects: give the
        # schema the ISO text (a time zone is then refused by name).
        if isinstance(doc.get(key), (datetime.date, datetime.datetime)):
            doc[key] = doc[key].isoformat()
    instrument = doc.pop("instrument", "LATISS")
    simulation = doc.pop("simulation", {}) or {}
    execution = doc.pop("execution", {}) or {}
    if not isinstance(simulation, Mapping) or not isinstance(execution, Mapping):
        raise ConfigError(f"{path}: 'simulation' and 'execution' must be mappings")
    unknown = set(execution) - _EXECUTION_KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown execution keys {sorted(unknown)}; allowed: {sorted(_EXECUTION_KEYS)}"
        )
    mode = execution.get("pipeline_mode", "inprocess")
    if mode not in _PIPELINE_MODES:
        raise ConfigError(
            f"{path}: execution.pipeline_mode must be one of {list(_PIPELINE_MODES)}, got {mode!r}"
        )
    max_jobs = execution.get("max_jobs")
    if max_jobs is not None and (isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1):
        raise ConfigError(f"{path}: execution.max_jobs must be a positive integer, got {max_jobs!r}")
    for key in ("keep_intermediates", "reuse_freed_memory"):
        if not isinstance(execution.get(key, False), bool):
            raise ConfigError(f"{path}: execution.{key} must be true or false, got {execution[key]!r}")
    if "bps_extra_config" in execution and not isinstance(execution["bps_extra_config"], Mapping):
        raise ConfigError(f"{path}: execution.bps_extra_config must be a mapping")
    return RunConfig(instrument, doc, dict(simulation), dict(execution))


def _pipeline_service(repo: Path, execution: Mapping[str, Any]):
    """The pipeline service an ``execution`` section asks for."""
    mode = execution.get("pipeline_mode", "inprocess")
    if mode == "bps":
        from .bps import BpsPipelineService

        return BpsPipelineService(
            repo,
            site_config=execution.get("bps_config"),
            submit_root=execution.get("bps_submit_root"),
            extra_config=dict(execution.get("bps_extra_config") or {}),
        )
    return LocalPipelineService(repo, mode=mode, max_jobs=execution.get("max_jobs"))


def _progress(msg: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    for line in msg.splitlines() or [""]:
        print(f"[{stamp}] {line}", file=sys.stderr, flush=True)


class PreflightError(ValueError):
    """The run cannot start: a check made before any exposure is taken
    failed (the message names the problem and the fix)."""


def _check_writable_file(path: str | os.PathLike, what: str) -> Path:
    """Resolve an output file path and check it can be written."""
    out = Path(path).expanduser().resolve()
    if out.is_dir():
        raise PreflightError(f"{what} {out} is a directory: give a file name")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PreflightError(f"{what} {out}: {parent} is not a directory")
    target = out if out.exists() else parent
    if not os.access(target, os.W_OK):
        raise PreflightError(
            f"{what} {out} cannot be written ({target} is not writable): choose another path"
        )
    return out


def _check_repo_path(repo: Path) -> bool:
    """Check the repository path; return whether the repository exists."""
    if repo.is_file():
        raise PreflightError(f"repository {repo} is a file, not a directory: give a repository directory")
    if (repo / "butler.yaml").exists():
        if not os.access(repo, os.W_OK) or not os.access(repo / "butler.yaml", os.R_OK):
            raise PreflightError(f"repository {repo} is read-only: the run writes raws and products into it")
        sqlite = repo / "gen3.sqlite3"
        if sqlite.exists() and not os.access(sqlite, os.W_OK):
            raise PreflightError(f"repository {repo} is read-only ({sqlite.name} is not writable)")
        return True
    # A directory holding only the run book (another run creating the
    # repository right now) is left to the run lock to report.
    if repo.is_dir() and any(p.name != "cpcombined" for p in repo.iterdir()):
        raise PreflightError(
            f"{repo} exists and is not a butler repository (no butler.yaml): give a new or existing repository"
        )
    parent = repo if repo.is_dir() else repo.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise PreflightError(f"cannot create repository {repo}: {parent} is not writable")
    return False


def _check_collections(butler: Butler, cfg: ScriptConfig, repo: Path) -> None:
    """Check the collections the configuration names, before any work."""
    from lsst.daf.butler import CollectionType, MissingCollectionError

    try:
        info = butler.collections.get_info(cfg.calib_collection)
    except MissingCollectionError:
        pass
    else:
        if info.type is not CollectionType.CALIBRATION:
            raise PreflightError(
                f"calib_collection {cfg.calib_collection} exists as a {info.type.name} collection, not "
                "CALIBRATION: choose another calib_collection"
            )
    missing: dict[str, list[str]] = {}
    for key in cfg.values:
        if key.startswith("input_collections_"):
            for name in cfg.collections(key.removeprefix("input_collections_")):
                if not collection_exists(butler, name):
                    missing.setdefault(name, []).append(key)
    if missing:
        listed = "; ".join(f"{name} ({', '.join(keys)})" for name, keys in missing.items())
        raise PreflightError(
            f"input collections that do not exist in {repo}: {listed}; "
            "fix the input_collections_* settings or create them"
        )
    if cfg.certify_chain:
        try:
            chain = butler.collections.get_info(cfg.certify_chain)
        except MissingCollectionError:
            return
        if chain.type is not CollectionType.CHAINED:
            raise PreflightError(
                f"certify_chain {cfg.certify_chain} is a {chain.type.name} collection, not CHAINED"
            )


def run_procedure(
    config_path: str | os.PathLike,
    *,
    repo: str | os.PathLike | None = None,
    summary_json: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    resume: str | None = None,
) -> tuple[int, RunSummary]:
    """Run the procedure described by a run configuration file.

    Everything that can be checked is checked before the first exposure is
    taken: the configuration (dates, combinations), the output files, the
    repository (a directory, writable), the collections named by the
    configuration; then the instrument's run lock is taken (one run per
    instrument at a time) and the run to work on is chosen (`RunBook.start`: an unfinished
    run with the same configuration is resumed, a finished one is not
    repeated).

    Parameters
    ----------
    config_path
        Run configuration (YAML).
    repo
        Butler repository; created (embedded SQLite) when it does not
        exist. Default: ``./cpcombined_repo``.
    summary_json
        Where to write (a copy of) the summary JSON.
    report
        Where to write (a copy of) the HTML report.  The summary and the
        report of every run are kept in its directory,
        ``REPO/cpcombined/runs/<instrument>/<run id>/`` (`run_directory`),
        whether or not these paths are given, so a later run never
        overwrites them; a resumed run's summary and report list the steps
        of its earlier sessions too.
    resume
        Id of a run to resume (a stopped, killed or failed one).

    Returns
    -------
    exit_code, summary
        0 only if every calibration that should be certified was; 130 when
        the run was interrupted (SIGINT/SIGTERM).

    Raises
    ------
    ConfigError, PreflightError, StateFileError, RunInProgress, LookupError
        The run cannot start (nothing was done).
    """
    run_cfg = load_run_config(config_path)
    repo = Path(repo or run_cfg.script.get("repo") or "cpcombined_repo").expanduser().resolve()
    script_cfg = {**run_cfg.script, "repo": str(repo)}
    cfg = validate_config(script_cfg, run_cfg.instrument)
    if cfg.calibration_pipelines == "science_pipelines":
        check_pipeline_files(
            procedure_pipelines(cfg).values(),
            what="calibration_pipelines: science_pipelines",
            alternative="choose calibration_pipelines: cp_combined",
        )
    truth = SimulationTruth(run_cfg.instrument, run_cfg.simulation)
    summary_json = _check_writable_file(summary_json, "--summary-json") if summary_json else None
    report = _check_writable_file(report, "--report") if report else None
    exists = _check_repo_path(repo)
    book = RunBook(repo, run_cfg.instrument)
    with book.lock(run_hint="(starting)"):
        if exists:
            _check_collections(Butler.from_config(str(repo)), cfg, repo)
        else:
            _progress(f"Creating embedded repository {repo}")
            _check_collections(create_repo(repo), cfg, repo)
        selection = book.start(config_key(run_cfg.instrument, script_cfg, run_cfg.simulation), resume=resume)
        book.set_lock_holder(selection.state.run_id)
        _progress(selection.message)
        return _run_locked(run_cfg, cfg, script_cfg, truth, repo, selection.state, summary_json, report)


def run_directory(state: RunState) -> Path:
    """Where a run's summary and report are kept:
    ``REPO/cpcombined/runs/<instrument>/<run id>/``."""
    return state.path.parent / state.run_id


def _check_read_noise(summary: RunSummary, repo: Path, cfg: ScriptConfig, truth: SimulationTruth) -> Any:
    """Compare the measured, fitted and nominal read noise of every
    amplifier (`lsst.cpcombined.cli.report.read_noise`): the values and the
    disagreements go to the summary (``extra["read_noise"]`` of the bias,
    else of the PTC) and the disagreements to the log.  Never fails the
    run.  Returns the `~lsst.cpcombined.cli.report.ReportContext` it read
    (the report reuses what it read), or `None`."""
    target = summary.calibrations.get("bias") or summary.calibrations.get("ptc")
    if target is None:
        return None
    try:
        from ..cli.report import ReportContext, read_noise_checks, read_noise_summary

        butler = Butler.from_config(str(repo), writeable=False)
        context = ReportContext(butler, summary, cfg, truth)
        checks = read_noise_checks(context)
    except Exception as err:  # a check must never fail the run
        _LOG.warning("Read-noise check not available: %s", err)
        return None
    result = read_noise_summary(checks)
    target.extra["read_noise"] = result
    measured = [c.overscan.value for c in checks if c.overscan.valid]
    if measured:
        _progress(
            f"Read noise measured on {len(measured)} amplifiers: {min(measured):.2f}–{max(measured):.2f} e- "
            "(overscan of the biases)"
        )
    if result["flags"]:
        _progress(f"Read noise: {len(result['flags'])} disagreement(s) beyond the errors:")
        for line in result["flags"]:
            _progress(f"  {line}")
            _LOG.warning("Read noise disagreement: %s", line)
    return context


def _write_run_outputs(
    summary: RunSummary,
    state: RunState,
    repo: Path,
    cfg: ScriptConfig,
    truth: SimulationTruth,
    summary_json: Path | None,
    report: Path | None,
    report_worker: Any = None,
    context: Any = None,
) -> None:
    """Write the summary and the report into the run's directory (so that no
    later run overwrites them), and copy them to the requested paths."""
    directory = run_directory(state)
    directory.mkdir(parents=True, exist_ok=True)
    kept_summary = directory / "summary.json"
    kept_summary.write_text(json.dumps(summary.as_dict(), indent=2, default=str))
    if summary_json:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kept_summary, summary_json)
        _progress(f"Summary written to {summary_json} (kept in {kept_summary})")
    kept_report = directory / "report.html"
    try:
        from ..cli.report import write_report

        write_report(
            kept_report,
            summary,
            repo=str(repo),
            config=cfg,
            truth=truth,
            sessions=state.get("sessions", []),
            worker=report_worker,
            context=context,
        )
    except Exception as err:  # the report must never fail the run
        _LOG.warning("Report not written: %s", err, exc_info=_LOG.isEnabledFor(logging.DEBUG))
        _progress(f"Report not written: {err}")
        return
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kept_report, report)
        _progress(f"Report written to {report} (kept in {kept_report})")
    else:
        _progress(f"Report written to {kept_report}")


class _StateJournal:
    """A `~lsst.cpcombined.repo.prune.PruneJournal` kept in the run's state
    (key ``cleanup_journal``)."""

    def __init__(self, state: RunState) -> None:
        self._state = state

    def entries(self) -> dict[str, dict[str, Any]]:
        return dict(self._state.get("cleanup_journal", {}) or {})

    def record(self, run: str, entry: Mapping[str, Any]) -> None:
        entries = self.entries()
        entries[run] = dict(entry)
        self._state.set("cleanup_journal", entries)


def _remove_intermediates(run_cfg: RunConfig, summary: RunSummary, state: RunState, repo: Path) -> int:
    """The run's last step: remove the intermediates of its generation runs
    (`lsst.cpcombined.repo.prune`), every product made from them being
    certified, unless ``execution.keep_intermediates``.

    Progress is in the run's state (``cleanup``: ``started``, ``done`` or
    ``failed``; ``cleanup_journal``: the files of each RUN collection being
    emptied), so a run killed here and resumed finishes the removal and
    leaves no file behind.  Returns the run's exit code: 0, 1 if the
    removal failed (the calibrations stay certified), 130 if interrupted.
    """
    import time

    from ..repo.prune import prune_intermediates, resolve_runs

    if run_cfg.execution.get("keep_intermediates", False):
        return 0
    if (state.get("cleanup") or {}).get("status") == "done":
        return 0
    collections = [
        c
        for outcome in summary.calibrations.values()
        for c in (outcome.generated_collection, outcome.extra.get("gain_from_flat_pairs_collection"))
        if c
    ]
    t0 = time.monotonic()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    name = "remove intermediates"

    def record(status: str, detail: str) -> None:
        record_step(StepRecord(name, time.monotonic() - t0, status, detail, started), summary, state)

    _progress(f"{name} ...")
    state.set("cleanup", {"status": "started", "collections": collections})
    try:
        butler = Butler.from_config(str(repo), writeable=True)
        existing = [c for c in dict.fromkeys(collections) if collection_exists(butler, c)]
        runs = resolve_runs(butler, collections=existing)
        report = prune_intermediates(butler, runs, journal=_StateJournal(state))
    except KeyboardInterrupt:
        record("failed", "interrupted")
        summary.error = "interrupted while removing intermediates; resume by running the same command again"
        return 130
    except Exception as err:
        detail = (
            f"removing the intermediates failed ({err}); the calibrations stay certified: resume with "
            f"--resume {state.run_id}, or run cpcombined prune {repo} --collection "
            + " --collection ".join(collections)
        )
        record("failed", detail)
        summary.error = detail
        state.set("cleanup", {"status": "failed", "collections": collections, "error": str(err)})
        _progress(f"FAILED: {detail}")
        return 1
    dt = time.monotonic() - t0
    detail = report.lines()[-1].removeprefix("total: ")
    record("ok", detail)
    state.set("cleanup", {"status": "done", "files": report.files, "bytes": report.nbytes})
    for line in report.lines()[:-1]:
        _progress(f"  {line}")
    _progress(f"{name}: {detail} in {dt:.1f} s")
    return 0


def _run_locked(
    run_cfg: RunConfig,
    cfg: ScriptConfig,
    script_cfg: dict[str, Any],
    truth: SimulationTruth,
    repo: Path,
    state: RunState,
    summary_json: Path | None,
    report: Path | None,
) -> tuple[int, RunSummary]:
    """Run the procedure on a chosen run (the repository lock is held)."""
    report_worker = _report_worker()
    try:
        pipelines = _pipeline_service(repo, run_cfg.execution)
        pipelines.progress = _progress
        core = MakeCalibrationsCore(
            run_cfg.instrument,
            camera=LocalSimulatedCamera(repo, truth, list(cfg.detectors), cfg.wait_between_exposures),
            raw_waiter=ButlerRawWaiter(repo, run_cfg.instrument),
            pipelines=pipelines,
            state_store=state,
            progress=_progress,
        )
        # A resumed run's summary keeps the steps of its earlier sessions.
        earlier = [StepRecord(**step) for step in state.get("steps", []) or [] if isinstance(step, dict)]
        core.summary.steps.extend(earlier)
        sessions = list(state.get("sessions", []) or [])
        sessions.append({"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")})
        state.set("sessions", sessions)

        async def main() -> RunSummary:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task()
            assert task is not None
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
            await core.configure(script_cfg)
            try:
                return await core.run()
            finally:
                await core.cleanup()

        # The frames are processed with freed memory reused (by this process
        # and the warm workers started meanwhile); the report, afterwards,
        # with glibc's defaults.
        with freed_memory_reused(run_cfg.execution.get("reuse_freed_memory", True)):
            exit_code, summary = _process_frames(core, main, pipelines)
            if exit_code == 0:
                exit_code = _remove_intermediates(run_cfg, summary, state, repo)
        if exit_code == 130:
            state.set_status("stopped", "interrupted")
        else:
            state.set_status("succeeded" if exit_code == 0 else "failed", summary.error or "")
        context = _check_read_noise(summary, repo, cfg, truth)
        _write_run_outputs(summary, state, repo, cfg, truth, summary_json, report, report_worker, context)
        status = "SUCCESS" if exit_code == 0 else f"FAILED ({summary.error})"
        _progress(f"{run_cfg.instrument} daily calibration, run {state.run_id}: {status}")
        for name, outcome in summary.calibrations.items():
            _progress(
                f"  {name:8s} decision={outcome.decision:12s} certified={outcome.certified} "
                f"{outcome.calib_collection or ''}"
            )
            for warning in outcome.warnings:
                _progress(f"           warning: {warning}")
        return exit_code, summary
    finally:
        if report_worker is not None:
            report_worker.close()


def _process_frames(
    core: MakeCalibrationsCore, main: Callable[[], Coroutine[Any, Any, RunSummary]], pipelines: Any
) -> tuple[int, RunSummary]:
    """Run the procedure's coroutine ``main`` to its end; return the exit
    code (0, 1 when it failed, 130 when interrupted) and the summary.  The
    pipeline service is closed whatever happens."""
    exit_code = 0
    try:
        summary = asyncio.run(main())
    except ProcedureError:
        summary = core.summary
        exit_code = 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        summary = core.summary
        summary.success = False
        summary.error = "interrupted (SIGINT/SIGTERM); resume by running the same command again"
        exit_code = 130
    finally:
        if hasattr(pipelines, "close"):
            pipelines.close()
    if not summary.success and exit_code == 0:
        exit_code = 1
    return exit_code, summary


def _report_worker() -> Any:
    """A process that will build half of the report at the end of the run
    (`lsst.cpcombined.cli.report.ReportWorker`), started now so that its
    imports overlap the acquisition; `None` on a single core."""
    if (os.cpu_count() or 1) < 2:
        return None
    try:
        from ..cli.report import ReportWorker

        return ReportWorker()
    except Exception as err:  # noqa: BLE001 - the report is then built in one process
        _LOG.info("Report worker not started: %s", err)
        return None
