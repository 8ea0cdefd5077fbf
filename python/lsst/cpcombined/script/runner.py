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
"""

from __future__ import annotations

__all__ = ("RunConfig", "load_run_config", "run_procedure")

import asyncio
import dataclasses
import datetime
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..repo.create import create_repo
from ..simulation import SimulationTruth
from .core import MakeCalibrationsCore, ProcedureError, RunSummary
from .local import ButlerRawWaiter, LocalPipelineService, LocalSimulatedCamera
from .schema import ConfigError, validate_config
from .state import StateStore, config_key

_LOG = logging.getLogger("lsst.cpcombined.script")

_EXECUTION_KEYS = {"pipeline_mode", "max_jobs", "bps_config", "bps_submit_root", "bps_extra_config"}
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
    instrument = doc.pop("instrument", "LATISS")
    simulation = doc.pop("simulation", {}) or {}
    execution = doc.pop("execution", {}) or {}
    if not isinstance(simulation, Mapping) or not isinstance(execution, Mapping):
        raise ConfigError(f"{path}: 'simulation' and 'execution' must be mappings")
    unknown = set(execution) - _EXECUTION_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown execution keys {sorted(unknown)}; allowed: {sorted(_EXECUTION_KEYS)}")
    mode = execution.get("pipeline_mode", "inprocess")
    if mode not in _PIPELINE_MODES:
        raise ConfigError(
            f"{path}: execution.pipeline_mode must be one of {list(_PIPELINE_MODES)}, got {mode!r}"
        )
    max_jobs = execution.get("max_jobs")
    if max_jobs is not None and (isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1):
        raise ConfigError(f"{path}: execution.max_jobs must be a positive integer, got {max_jobs!r}")
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


def run_procedure(
    config_path: str | os.PathLike,
    *,
    repo: str | os.PathLike | None = None,
    summary_json: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
) -> tuple[int, RunSummary]:
    """Run the procedure described by a run configuration file.

    Parameters
    ----------
    config_path
        Run configuration (YAML).
    repo
        Butler repository; created (embedded SQLite) when it does not
        exist. Default: ``./cpcombined_repo``.
    summary_json
        Where to write the summary JSON.
    report
        Where to write the HTML report.

    Returns
    -------
    exit_code, summary
        0 only if every calibration that should be certified was.
    """
    run_cfg = load_run_config(config_path)
    repo = Path(repo or run_cfg.script.get("repo") or "cpcombined_repo").resolve()
    script_cfg = {**run_cfg.script, "repo": str(repo)}
    cfg = validate_config(script_cfg, run_cfg.instrument)  # fail before touching anything
    truth = SimulationTruth(run_cfg.instrument, run_cfg.simulation)
    if not (repo / "butler.yaml").exists():
        _progress(f"Creating embedded repository {repo}")
        create_repo(repo)
    key = config_key(run_cfg.instrument, script_cfg, run_cfg.simulation)
    store = StateStore(repo / "cpcombined" / "state" / f"{key}.json")
    pipelines = _pipeline_service(repo, run_cfg.execution)
    core = MakeCalibrationsCore(
        run_cfg.instrument,
        camera=LocalSimulatedCamera(repo, truth, list(cfg.detectors), cfg.wait_between_exposures),
        raw_waiter=ButlerRawWaiter(repo, run_cfg.instrument),
        pipelines=pipelines,
        state_store=store,
        progress=_progress,
    )

    async def main() -> RunSummary:
        await core.configure(script_cfg)
        try:
            return await core.run()
        finally:
            await core.cleanup()

    exit_code = 0
    try:
        summary = asyncio.run(main())
    except ProcedureError:
        summary = core.summary
        exit_code = 1
    finally:
        if hasattr(pipelines, "close"):
            pipelines.close()
    if not summary.success:
        exit_code = 1
    if summary_json:
        Path(summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_json).write_text(json.dumps(summary.as_dict(), indent=2, default=str))
        _progress(f"Summary written to {summary_json}")
    if report:
        from ..cli.report import write_report

        write_report(report, summary, repo=str(repo), config=cfg)
        _progress(f"Report written to {report}")
    status = "SUCCESS" if exit_code == 0 else f"FAILED ({summary.error})"
    _progress(f"{run_cfg.instrument} daily calibration: {status}")
    for name, outcome in summary.calibrations.items():
        _progress(
            f"  {name:8s} decision={outcome.decision:12s} certified={outcome.certified} "
            f"{outcome.calib_collection or ''}"
        )
    return exit_code, summary
