"""The make-calibrations procedure, independent of SAL.

`MakeCalibrationsCore` follows the ScriptQueue script contract
(``configure``, ``set_metadata``, ``run`` with checkpoints, ``cleanup``,
script states) and drives the whole daily job through three protocols
(`Camera`, `RawWaiter`, `PipelineService`):

1. acquire each image type (discarded frames first) and wait for the raws;
2. in the background, as soon as their inputs exist: generate
   (``cp<Type>``, needing only the *generated* calibrations it uses), verify
   (``verify<Type>``: internal when generated, external otherwise), read the
   majority decision, and certify a passing calibration once everything it
   depends on is certified; the next acquisition overlaps all of this, and
   the pipeline service runs as many jobs at once as it allows;
3. PTC (whose extraction also gives the gain from flat pairs) and defects,
   certified directly once their inputs' calibrations are.

Which pipelines run is the configuration's ``calibration_pipelines``
(`pipeline_path`): this package's (``cp_combined``, the default:
``cp<Type>`` and ``verify<Type>``, the verification including the majority
decision) or the Science Pipelines' (``science_pipelines``: cp_pipe's
``cp<Type>``, cp_verify's ``verify<Type>``, then this package's
``decide<Type>``, the majority decision on cp_verify's outputs, as one more
job).  Pipeline paths are passed to the pipeline service with their
environment variables unexpanded (``${CP_PIPE_DIR}/...``): a local service
expands them, OCPS resolves them in its own environment.

Every pipeline job's status is checked: a failed job, a timeout, a "no"
decision or a failed certification stops the procedure with its cause; a
calibration that failed, and everything that needed it, is never
certified.  With a `RunState`, a procedure killed mid-way and started
again with the same configuration resumes: acquired exposures and finished
jobs are reused, an unfinished job's partial output is removed and the job
re-run, and certification is idempotent.
"""

from __future__ import annotations

__all__ = (
    "SCIENCE_PIPELINES_ENVIRONMENT",
    "CalibrationOutcome",
    "CalibrationRejected",
    "MakeCalibrationsCore",
    "ProcedureError",
    "RunSummary",
    "StepRecord",
    "check_pipeline_files",
    "pipeline_path",
    "procedure_pipelines",
    "record_step",
)

import asyncio
import concurrent.futures
import dataclasses
import datetime
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from lsst.daf.butler import Butler, CollectionType

from ..env import package_root
from ..repo.collections import collection_exists, raw_collection
from .protocols import Camera, JobResult, PipelineService, RawWaiter, ScriptState
from .schema import ConfigError, ScriptConfig, get_schema, validate_config
from .state import RunState

_LOG = logging.getLogger("lsst.cpcombined.script")
_T = TypeVar("_T")

_TYPE_LABEL = {"bias": "Bias", "dark": "Dark", "flat": "Flat", "defects": "Defects", "ptc": "Ptc"}

#: Environment variables naming the Science Pipelines' pipeline directories
#: (set by ``setup cp_pipe`` and ``setup cp_verify``).
SCIENCE_PIPELINES_ENVIRONMENT: tuple[str, ...] = ("CP_PIPE_DIR", "CP_VERIFY_DIR")

#: Steps (pipeline names) of the procedure.
_GENERATION_STEPS = ("cpBias", "cpDark", "cpFlat", "cpDefects", "cpPtc")
_VERIFICATION_STEPS = ("verifyBias", "verifyDark", "verifyFlat")
_DECISION_STEPS = ("decideBias", "decideDark", "decideFlat")

_ENV_REFERENCE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def pipeline_path(
    step: str,
    instrument: str,
    calibration_pipelines: str = "cp_combined",
    pipelines_dir: str = "${CPCOMBINED_DIR}/pipelines",
) -> str:
    """The pipeline one step of the procedure submits.

    Parameters
    ----------
    step
        ``cpBias``, ``cpDark``, ``cpFlat``, ``cpDefects``, ``cpPtc``,
        ``gainFromFlatPairs``, ``verifyBias``, ``verifyDark``,
        ``verifyFlat``, ``decideBias``, ``decideDark`` or ``decideFlat``
        (the majority decision alone, for cp_verify's outputs).
    instrument
        ``LATISS`` or ``LSSTComCam``.
    calibration_pipelines
        ``cp_combined`` (this package's pipelines under ``pipelines_dir``)
        or ``science_pipelines`` (cp_pipe's generation and cp_verify's
        verification pipelines, this package's decision pipelines).
    pipelines_dir
        Directory of this package's per-instrument pipelines.

    Returns
    -------
    path
        Pipeline file, with a ``#subset`` for the gain from flat pairs and
        environment variables unexpanded (e.g.
        ``${CP_PIPE_DIR}/pipelines/LATISS/cpPtc.yaml#cpPtcGainFromFlatPairs``).
    """
    pipelines_dir = pipelines_dir.rstrip("/")
    known = (*_GENERATION_STEPS, "gainFromFlatPairs", *_VERIFICATION_STEPS, *_DECISION_STEPS)
    if step not in known:
        raise ValueError(f"unknown pipeline step {step!r}; expected one of {list(known)}")
    if calibration_pipelines == "cp_combined":
        if step == "gainFromFlatPairs":
            return f"{pipelines_dir}/{instrument}/cpPtc.yaml#gainFromFlatPairs"
        return f"{pipelines_dir}/{instrument}/{step}.yaml"
    if calibration_pipelines != "science_pipelines":
        raise ValueError(
            "calibration_pipelines must be 'cp_combined' or 'science_pipelines', "
            f"not {calibration_pipelines!r}"
        )
    if step == "gainFromFlatPairs":
        return f"${{CP_PIPE_DIR}}/pipelines/{instrument}/cpPtc.yaml#cpPtcGainFromFlatPairs"
    if step in _GENERATION_STEPS:
        return f"${{CP_PIPE_DIR}}/pipelines/{instrument}/{step}.yaml"
    if step in _VERIFICATION_STEPS:
        return f"${{CP_VERIFY_DIR}}/pipelines/{instrument}/{step}.yaml"
    return f"{pipelines_dir}/{instrument}/{step}.yaml"


def procedure_pipelines(
    config: ScriptConfig, pipelines_dir: str = "${CPCOMBINED_DIR}/pipelines"
) -> dict[str, str]:
    """The pipelines a configuration makes the procedure submit.

    Parameters
    ----------
    config
        Validated configuration (its instrument, image types, steps asked
        for and ``calibration_pipelines``).
    pipelines_dir
        Directory of this package's per-instrument pipelines.

    Returns
    -------
    pipelines : `dict` [`str`, `str`]
        Step (job label: ``cpBias``, ``verifyBias``, ``decideBias``,
        ``gainFromFlatPairs``...) → pipeline path (`pipeline_path`,
        environment variables unexpanded), in submission order per image
        type.
    """
    mode = config.calibration_pipelines
    steps: list[str] = []
    for image_type in config.image_types:
        label = _TYPE_LABEL[image_type]
        if config.generate_calibrations:
            steps.append(f"cp{label}")
        if config.do_verify:
            steps.append(f"verify{label}")
            if mode == "science_pipelines":
                steps.append(f"decide{label}")
    if "flat" in config.image_types:
        if config.do_ptc:
            steps.append("cpPtc")
        elif config.do_gain_from_flat_pairs:
            steps.append("gainFromFlatPairs")
        if config.do_defects:
            steps.append("cpDefects")
    return {step: pipeline_path(step, config.instrument, mode, pipelines_dir) for step in steps}


def check_pipeline_files(
    pipelines: Iterable[str],
    environ: Mapping[str, str] | None = None,
    *,
    what: str = "pipelines",
    alternative: str = "",
) -> None:
    """Check that the environment variables pipeline paths name are set and
    that the files exist (as a local pipeline service would expand them).

    Parameters
    ----------
    pipelines
        Pipeline paths (``#subset`` allowed, ``${VAR}`` unexpanded).
    environ
        Environment to expand them in (default `os.environ`);
        ``CPCOMBINED_DIR`` defaults to this package's root, as the local
        pipeline services do.
    what
        What needs them, for the message.
    alternative
        Another way out, added to the message (e.g. another setting).

    Raises
    ------
    ConfigError
        One line naming the unset variables, or else the missing files,
        and the fix.
    """
    env = dict(os.environ if environ is None else environ)
    env.setdefault("CPCOMBINED_DIR", str(package_root()))
    files = list(dict.fromkeys(p.split("#", 1)[0] for p in pipelines))
    unset: list[str] = []
    for path in files:
        for match in _ENV_REFERENCE.finditer(path):
            name = match.group(1) or match.group(2)
            if not env.get(name) and name not in unset:
                unset.append(name)
    tail = f", or {alternative}" if alternative else ""
    if unset:
        products = [n.removesuffix("_DIR").lower() for n in unset if n.endswith("_DIR")]
        fix = f"set up {' and '.join(products)} (`{'; '.join(f'setup {p}' for p in products)}`)"
        raise ConfigError(
            f"{what}: {' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set in the environment "
            f"the pipelines are resolved in: {fix if products else 'set them'}{tail}"
        )
    missing: dict[str, str] = {}
    for path in files:
        expanded = _ENV_REFERENCE.sub(lambda m: env[m.group(1) or m.group(2)], path)
        if not os.path.isfile(expanded):
            missing[path] = expanded
    if missing:
        names = dict.fromkeys(m.group(1) or m.group(2) for p in missing for m in _ENV_REFERENCE.finditer(p))
        where = f"point {' and '.join(names)} to installs that have them" if names else "check the paths"
        shown = "; ".join(f"{p} ({e})" for p, e in missing.items())
        raise ConfigError(f"{what}: pipeline file(s) not found: {shown}: {where}{tail}")


class ProcedureError(RuntimeError):
    """A step of the procedure failed (the message names the step and cause)."""


class CalibrationRejected(ProcedureError):
    """A calibration failed its verification (majority rule said no)."""


@dataclasses.dataclass
class StepRecord:
    """One step of the procedure, for the summary.

    ``started`` is the UTC time the step started (ISO); ``session`` counts
    the invocations of a resumed run (0: the first), so that the steps done
    before a restart keep their timings.
    """

    name: str
    seconds: float
    status: str
    detail: str = ""
    started: str = ""
    session: int = 0


@dataclasses.dataclass
class CalibrationOutcome:
    """What happened to one calibration type."""

    calib_type: str
    exposures: list[int] = dataclasses.field(default_factory=list)
    generated_collection: str | None = None
    verification_collection: str | None = None
    decision: str = "not-verified"
    decision_report: str = ""
    certified: bool = False
    calib_collection: str | None = None
    validity: tuple[str, str] | None = None
    jobs: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (the summary's per-calibration entry)."""
        d = dataclasses.asdict(self)
        d["validity"] = list(self.validity) if self.validity else None
        return d


@dataclasses.dataclass
class RunSummary:
    """Summary of a procedure run (written as JSON by ``cpcombined run``)."""

    instrument: str
    run_id: str = ""
    calibrations: dict[str, CalibrationOutcome] = dataclasses.field(default_factory=dict)
    steps: list[StepRecord] = dataclasses.field(default_factory=list)
    success: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "instrument": self.instrument,
            "run_id": self.run_id,
            "success": self.success,
            "error": self.error,
            "calibrations": {k: v.as_dict() for k, v in self.calibrations.items()},
            "steps": [dataclasses.asdict(s) for s in self.steps],
        }


def record_step(record: StepRecord, summary: RunSummary, state_store: Any = None) -> None:
    """Add a finished step to a run's summary and, with a state store (a
    `~lsst.cpcombined.script.state.RunState`), to its ``steps``, so that a
    resumed run keeps it.

    The step's session is the number of earlier invocations of the run (the
    runner appends one entry to the state's ``sessions`` per invocation).
    """
    if state_store is not None:
        record.session = max(0, len(state_store.get("sessions", []) or []) - 1)
        steps = list(state_store.get("steps", []) or [])
        steps.append(dataclasses.asdict(record))
        state_store.set("steps", steps)
    summary.steps.append(record)


async def _no_checkpoint(name: str) -> None:
    return None


class MakeCalibrationsCore:
    """Acquire, generate, verify, decide and certify calibrations.

    Parameters
    ----------
    instrument
        ``LATISS`` or ``LSSTComCam``.
    camera, raw_waiter, pipelines
        Protocol implementations.
    checkpoint
        Async callable awaited at checkpoints (the ScriptQueue's
        ``BaseScript.checkpoint``: may pause or stop the script).
    state_store
        Persistent progress for resuming a killed run (optional).
    pipelines_dir
        Directory of the per-instrument pipelines (``$CPCOMBINED_DIR/pipelines``).
    progress
        Callable receiving human-readable progress lines.
    check_pipelines
        With ``calibration_pipelines: science_pipelines``, check when
        configuring (before anything is acquired) that ``CP_PIPE_DIR`` and
        ``CP_VERIFY_DIR`` are set and the pipeline files exist, in this
        process's environment (`check_pipeline_files`).  Leave it on when
        the pipeline service expands the paths here (the local and BPS
        services); turn it off when another environment resolves them
        (OCPS): the paths are always passed unexpanded, and a missing one
        is then a failed job.
    """

    def __init__(
        self,
        instrument: str,
        *,
        camera: Camera,
        raw_waiter: RawWaiter,
        pipelines: PipelineService,
        checkpoint: Callable[[str], Awaitable[None]] | None = None,
        state_store: RunState | None = None,
        pipelines_dir: str = "${CPCOMBINED_DIR}/pipelines",
        progress: Callable[[str], None] | None = None,
        check_pipelines: bool = True,
    ) -> None:
        self.instrument = instrument
        self.camera = camera
        self.raw_waiter = raw_waiter
        self.pipelines = pipelines
        self.checkpoint = checkpoint or _no_checkpoint
        self.state_store = state_store
        self.pipelines_dir = pipelines_dir.rstrip("/")
        self.progress = progress or (lambda msg: _LOG.info("%s", msg))
        self.check_pipelines = check_pipelines
        self.state = ScriptState.UNCONFIGURED
        self.config: ScriptConfig | None = None
        self.summary = RunSummary(instrument=instrument)
        self._butler: Butler | None = None
        # Every use of ``self._butler`` runs on this one thread: a Butler
        # (its registry connection) must not be used by two threads at once
        # (SQLite: "cannot start a transaction within a transaction").  It
        # also serialises the procedure's own registry writes.
        self._registry_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._tasks: dict[str, asyncio.Task] = {}

    # -- ScriptQueue contract ----------------------------------------------------

    @classmethod
    def get_schema(cls, instrument: str = "LATISS") -> dict[str, Any]:
        """Configuration schema (see `lsst.cpcombined.script.schema`)."""
        return get_schema(instrument)

    async def configure(self, config: Mapping[str, Any]) -> None:
        """Validate and store the configuration.

        Raises
        ------
        ConfigError
            Invalid configuration, or (``science_pipelines`` with
            ``check_pipelines``) unset package directories or missing
            pipeline files (state becomes CONFIGURE_FAILED).
        """
        try:
            cfg = validate_config(config, self.instrument)
            if self.check_pipelines and cfg.calibration_pipelines == "science_pipelines":
                check_pipeline_files(
                    self.pipeline_paths(cfg).values(),
                    what="calibration_pipelines: science_pipelines",
                    alternative="choose calibration_pipelines: cp_combined",
                )
        except ConfigError:
            self.state = ScriptState.CONFIGURE_FAILED
            raise
        self.config = cfg
        self.state = ScriptState.CONFIGURED

    def pipeline_paths(self, config: ScriptConfig | None = None) -> dict[str, str]:
        """The pipelines a configuration makes the procedure submit
        (`procedure_pipelines` with this core's ``pipelines_dir``).

        Parameters
        ----------
        config
            Validated configuration (default: the configured one).
        """
        return procedure_pipelines(config or self._require_config(), self.pipelines_dir)

    def set_metadata(self, metadata: Any) -> None:
        """Set ``metadata.duration`` (s): exposures, read-out and processing."""
        cfg = self._require_config()
        n_det = len(cfg.detectors)
        batches = math.ceil(n_det / cfg.n_processes)
        total = 0.0
        for image_type in cfg.image_types:
            times = cfg.exposure_times(image_type)
            total += sum(times) + len(times) * (self.camera.read_out_time + cfg.wait_between_exposures)
            jobs = int(cfg.generate_calibrations) + int(cfg.do_verify)
            total += jobs * cfg.count(image_type) * batches * 2.0
        if cfg.do_defects:
            total += 30.0 * batches
        if cfg.do_ptc:
            total += cfg.count("flat") * batches * 2.0
        metadata.duration = total

    async def run(self) -> RunSummary:
        """Run the procedure; the summary says what was certified.

        Raises
        ------
        ProcedureError
            A step failed (state FAILED); the summary records the cause.
        """
        cfg = self._require_config()
        self.state = ScriptState.RUNNING
        self._registry_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="cpcombined-registry"
        )
        self._butler = await self._registry(Butler.from_config, cfg.repo, writeable=True)
        self.summary.run_id = self._run_id()
        try:
            await self._run_all(cfg)
        except asyncio.CancelledError:
            self.state = ScriptState.STOPPED
            self.summary.error = "stopped"
            raise
        except Exception as err:
            self.state = ScriptState.FAILED
            self.summary.error = str(err)
            self.summary.success = False
            self.progress(f"FAILED: {err}")
            if isinstance(err, ProcedureError):
                raise
            raise ProcedureError(str(err)) from err
        self.summary.success = self._all_certified(cfg)
        if not self.summary.success:
            missing = [
                k
                for k, v in self.summary.calibrations.items()
                if self._should_certify(cfg, k) and not v.certified
            ]
            self.summary.error = f"not certified: {', '.join(missing)}"
        self.state = ScriptState.DONE
        return self.summary

    async def cleanup(self) -> None:
        """Release resources (nothing is left half-done by design)."""
        self._butler = None
        if self._registry_thread is not None:
            self._registry_thread.shutdown(wait=True)
            self._registry_thread = None

    # -- helpers ------------------------------------------------------------------

    async def _registry(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``func`` on the registry thread (see ``__init__``)."""
        if self._registry_thread is None:
            raise RuntimeError("the registry thread runs only during run()")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._registry_thread, lambda: func(*args, **kwargs))

    def _require_config(self) -> ScriptConfig:
        if self.config is None:
            raise RuntimeError("configure() must be called first")
        return self.config

    def _run_id(self) -> str:
        """The run's id: the state's (whoever created the state chose to
        resume or start it), or a new timestamp without a state."""
        if self.state_store is not None:
            return self.state_store.run_id
        return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")

    def _should_certify(self, cfg: ScriptConfig, calib_type: str) -> bool:
        return bool(cfg.generate_calibrations) or calib_type in ("defects", "ptc")

    def _all_certified(self, cfg: ScriptConfig) -> bool:
        requested = list(cfg.image_types) if cfg.generate_calibrations else []
        if cfg.do_defects:
            requested.append("defects")
        if cfg.do_ptc:
            requested.append("ptc")
        if not cfg.generate_calibrations:
            return all(
                self.summary.calibrations[t].decision == "pass"
                for t in cfg.image_types
                if t in self.summary.calibrations
            )
        return all(
            self.summary.calibrations.get(t) and self.summary.calibrations[t].certified for t in requested
        )

    async def _step(self, name: str, coro: Awaitable[Any]) -> Any:
        """Run a step, timing it and recording its status (in the summary
        and, with a `RunState`, in the run's ``steps`` so that a resumed run
        keeps them)."""
        t0 = time.monotonic()
        started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.progress(f"{name} ...")
        try:
            result = await coro
        except Exception as err:
            self._record_step(StepRecord(name, time.monotonic() - t0, "failed", str(err), started))
            raise
        dt = time.monotonic() - t0
        self._record_step(StepRecord(name, dt, "ok", "", started))
        self.progress(f"{name}: done in {dt:.1f} s")
        return result

    def _record_step(self, record: StepRecord) -> None:
        """Add a finished step to the summary and to the run state
        (`record_step`)."""
        record_step(record, self.summary, self.state_store)

    def _outcome(self, calib_type: str) -> CalibrationOutcome:
        return self.summary.calibrations.setdefault(calib_type, CalibrationOutcome(calib_type))

    def _collection(self, kind: str, label: str) -> str:
        return f"{self.instrument}/{kind}/{self.summary.run_id}/{label}"

    def _query(self, exposures: list[int]) -> str:
        cfg = self._require_config()
        dets = ", ".join(str(d) for d in cfg.detectors)
        exps = ", ".join(str(e) for e in exposures)
        return f"instrument='{self.instrument}' AND detector IN ({dets}) AND exposure IN ({exps})"

    def _pipeline(self, step: str) -> str:
        cfg = self._require_config()
        return pipeline_path(step, self.instrument, cfg.calibration_pipelines, self.pipelines_dir)

    # -- procedure ------------------------------------------------------------------

    async def _run_all(self, cfg: ScriptConfig) -> None:
        """Acquire each type, and start its processing as soon as what it
        needs exists: generation of a type needs the *generated* calibrations
        it uses (not their verification), so generation, verification and
        the next acquisition overlap; every certification waits for the
        certification of what it depends on, so a rejected calibration stops
        everything that needed it from being certified."""
        self._tasks = {}
        try:
            for image_type in cfg.image_types:
                await self.checkpoint(f"take_{image_type}")
                self._raise_first_failure()
                exposures = await self._acquire(image_type)
                self._start_chain(cfg, image_type, exposures)
            if "flat" in cfg.image_types:
                flats = self._outcome("flat").exposures
                if cfg.do_ptc:
                    self._start("ptc", self._ptc(flats))
                elif cfg.do_gain_from_flat_pairs:
                    self._start("gainFromFlatPairs", self._gain_from_pairs(flats))
                if cfg.do_defects:
                    self._start("defects", self._defects())
            pending = set(self._tasks.values())
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                await self._finish_verifications_after_rejection(done)
                self._raise_first_failure()
        finally:
            for t in self._tasks.values():
                if not t.done():
                    t.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _finish_verifications_after_rejection(self, done: set[asyncio.Task]) -> None:
        """When a calibration was rejected, let the verifications still
        running end before the procedure stops, so that the summary has
        every decision and names the first calibration that failed (a dark
        verified on a faulty bias may be rejected before that bias is).
        Nothing is certified meanwhile: certifications wait for what they
        depend on."""
        failures = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
        if not failures or not all(isinstance(err, CalibrationRejected) for err in failures):
            return
        running = [t for name, t in self._tasks.items() if name.startswith("verify:") and not t.done()]
        if running:
            await asyncio.wait(running)

    def _start(self, name: str, coro: Awaitable[Any]) -> None:
        self._tasks[name] = asyncio.ensure_future(coro)

    def _raise_first_failure(self) -> None:
        """Re-raise the earliest failure of a background step."""
        for task in self._tasks.values():
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _after(self, *names: str) -> None:
        """Wait for the named background steps (missing ones are skipped)."""
        tasks = [self._tasks[n] for n in names if n in self._tasks]
        if tasks:
            await asyncio.gather(*tasks)

    def _start_chain(self, cfg: ScriptConfig, image_type: str, exposures: list[int]) -> None:
        needs = {"bias": [], "dark": ["bias"], "flat": ["bias", "dark"]}[image_type]
        if cfg.generate_calibrations:
            self._start(f"gen:{image_type}", self._generate(image_type, exposures, needs))
        if cfg.do_verify:
            self._start(f"verify:{image_type}", self._verify(image_type, exposures, needs))
        if cfg.generate_calibrations:
            self._start(f"certify:{image_type}", self._certify_when_ready(image_type, needs))

    async def _acquire(self, image_type: str) -> list[int]:
        """Take the frames of one image type (discarded ones first), then
        wait for their raws.

        With a state store every frame is recorded as soon as it is taken,
        with its place in the sequence; a procedure resumed after a kill
        goes on from the first frame not recorded (the camera is given the
        frame's place, so a simulated camera re-takes identical frames), and
        an exposure taken but not recorded before the kill is set aside,
        never used.
        """
        cfg = self._require_config()
        outcome = self._outcome(image_type)
        saved = self.state_store.get("acquired", {}).get(image_type) if self.state_store else None
        if saved:
            self.progress(f"Reusing {len(saved)} {image_type} exposures acquired before the restart")
            outcome.exposures = list(saved)
            return outcome.exposures
        times = cfg.exposure_times(image_type)
        n_discard = cfg.discard(image_type)
        progress = self._acquisition_progress(image_type)
        if progress["taken"]:
            self.progress(
                f"Resuming the {image_type} acquisition at frame {progress['taken'] + 1}/{len(times)} "
                f"({len(progress['kept'])} kept so far)"
            )
            await self._registry(self._set_aside_unrecorded, image_type, progress)
        common = dict(
            group_id=progress["group"],
            note=cfg.note,
            program=cfg.program,
            reason=cfg.reason,
            filter=cfg.filter,
        )

        async def take() -> list[int]:
            for i in range(progress["taken"], len(times)):
                discard = i < n_discard
                ids = await self.camera.take_imgtype(
                    image_type.upper(),
                    times[i],
                    1,
                    discard=discard,
                    index=i if discard else i - n_discard,
                    **common,
                )
                progress["ids"].extend(ids)
                if not discard:
                    progress["kept"].extend(ids)
                progress["taken"] = i + 1
                self._save_acquisition_progress(image_type, progress)
                tag = " (discarded)" if discard else ""
                self.progress(f"  {image_type} {i + 1}/{len(times)} ({times[i]:g} s){tag}")
            await self.raw_waiter.wait_for_raws(progress["kept"], list(cfg.detectors), cfg.oods_timeout)
            return list(progress["kept"])

        kept = await self._step(f"take {len(times)} {image_type} ({n_discard} discarded)", take())
        outcome.exposures = kept
        if self.state_store is not None:
            acquired = dict(self.state_store.get("acquired", {}))
            acquired[image_type] = kept
            self.state_store.set("acquired", acquired)
        return kept

    def _acquisition_progress(self, image_type: str) -> dict[str, Any]:
        """The recorded progress of an image type's acquisition (a new one
        when none is recorded)."""
        recorded = (self.state_store.get("acquiring", {}) if self.state_store else {}).get(image_type)
        if recorded:
            return {
                "group": recorded["group"],
                "taken": int(recorded["taken"]),
                "ids": list(recorded["ids"]),
                "kept": list(recorded["kept"]),
            }
        group = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        return {"group": group, "taken": 0, "ids": [], "kept": []}

    def _save_acquisition_progress(self, image_type: str, progress: Mapping[str, Any]) -> None:
        if self.state_store is not None:
            acquiring = dict(self.state_store.get("acquiring", {}))
            acquiring[image_type] = dict(progress)
            self.state_store.set("acquiring", acquiring)

    def _set_aside_unrecorded(self, image_type: str, progress: Mapping[str, Any]) -> None:
        """Report exposures of this acquisition taken but not recorded before
        a kill: they stay in the repository and are never used."""
        butler = self._butler
        assert butler is not None
        records = butler.query_dimension_records(
            "exposure",
            where=f"instrument = '{self.instrument}' AND exposure.group = '{progress['group']}'",
            explain=False,
        )
        unrecorded = sorted({r.id for r in records} - set(progress["ids"]))
        if unrecorded:
            self.progress(
                f"Setting aside {len(unrecorded)} {image_type} exposure(s) taken before the restart but not "
                f"recorded (never used): {', '.join(map(str, unrecorded))}"
            )

    async def _job(
        self,
        label: str,
        pipeline: str,
        inputs: list[str],
        output: str,
        exposures: list[int],
        options: str = "",
        query: str | None = None,
    ) -> JobResult:
        """Submit one pipeline job, wait for it, check its status."""
        cfg = self._require_config()
        jobs_state = self.state_store.get("jobs", {}) if self.state_store else {}
        done = jobs_state.get(label)
        if done and done.get("ok"):
            self.progress(f"{label}: already done before the restart ({done['output']})")
            return JobResult(
                jobId=done["job_id"], phase="completed", exit_code=0, output_collection=done["output"]
            )
        if done and not done.get("ok"):
            await self._registry(self._remove_partial_output, done["output"])
        inputs = await self._registry(self._existing_collections, inputs)
        config = f"-j {cfg.n_processes} -i {','.join(inputs)} -o {output} --register-dataset-types {options}".strip()
        timeout = max(
            120.0,
            cfg.background_task_timeout
            * max(1, len(exposures))
            * math.ceil(len(cfg.detectors) / cfg.n_processes),
        )

        async def run() -> JobResult:
            job_id = await self.pipelines.execute(pipeline, "", config, query or self._query(exposures))
            if self.state_store is not None:
                self._record_job(label, job_id, output, ok=False)
            result = await self.pipelines.wait_result(job_id, timeout)
            if not result.ok:
                cause = "; ".join(result.errors) or f"exit code {result.exit_code}"
                raise ProcedureError(f"{label} job {job_id} {result.phase}: {cause}")
            if self.state_store is not None:
                self._record_job(label, job_id, result.output_collection or output, ok=True)
            return result

        return await self._step(label, run())

    def _record_job(self, label: str, job_id: str, output: str, ok: bool) -> None:
        assert self.state_store is not None
        jobs = dict(self.state_store.get("jobs", {}))
        jobs[label] = {"job_id": job_id, "output": output, "ok": ok}
        self.state_store.set("jobs", jobs)

    def _existing_collections(self, collections: list[str]) -> list[str]:
        """The collections that exist, in order, without repeats or blanks."""
        return [
            c
            for i, c in enumerate(collections)
            if c and c not in collections[:i] and collection_exists(self._butler, c)
        ]

    def _remove_partial_output(self, output: str) -> None:
        """Remove what an interrupted job wrote (its chain and RUNs)."""
        butler = self._butler
        assert butler is not None
        if not collection_exists(butler, output):
            return
        runs = [c for c in butler.collections.query(f"{output}/*", collection_types={CollectionType.RUN})]
        self.progress(f"Removing partial output of an interrupted job: {output} ({len(runs)} run(s))")
        butler.collections.x_remove(output)
        if runs:
            butler.removeRuns(runs)

    def _inputs_for(self, image_type: str, verify: bool) -> list[str]:
        """Input collections of a generation or verification job."""
        cfg = self._require_config()
        raws = raw_collection(self.instrument)
        key = f"verify_{image_type}" if verify else image_type
        # The calibration under test comes first: each generated chain also
        # holds its own inputs (e.g. LATISS/calib), which must not shadow it.
        needs = {"bias": [], "dark": ["bias"], "flat": ["bias", "dark"]}[image_type]
        order = ([image_type] if verify and cfg.generate_calibrations else []) + needs
        generated = []
        for dep in order:
            out = self.summary.calibrations.get(dep)
            if out is not None and out.generated_collection:
                generated.append(out.generated_collection)
        return [*generated, raws, *cfg.collections(key)]

    async def _generate(self, image_type: str, exposures: list[int], needs: list[str]) -> None:
        await self._after(*(f"gen:{t}" for t in needs))
        cfg = self._require_config()
        outcome = self._outcome(image_type)
        label = _TYPE_LABEL[image_type]
        res = await self._job(
            f"cp{label}",
            self._pipeline(f"cp{label}"),
            self._inputs_for(image_type, verify=False),
            self._collection("calib", f"cp{label}"),
            exposures,
            cfg.values[f"config_options_{image_type}"],
        )
        outcome.generated_collection = res.output_collection
        outcome.jobs[f"cp{label}"] = res.jobId

    async def _verify(self, image_type: str, exposures: list[int], needs: list[str]) -> None:
        await self._after(f"gen:{image_type}", *(f"gen:{t}" for t in needs))
        await self.checkpoint(f"verify_{image_type}")
        cfg = self._require_config()
        outcome = self._outcome(image_type)
        label = _TYPE_LABEL[image_type]
        threshold = f"-c verify{label}Decision:threshold={cfg.threshold(image_type)}"
        science_pipelines = cfg.calibration_pipelines == "science_pipelines"
        res = await self._job(
            f"verify{label}",
            self._pipeline(f"verify{label}"),
            self._inputs_for(image_type, verify=True),
            self._collection("verify", f"verify{label}"),
            exposures,
            "" if science_pipelines else threshold,
        )
        outcome.jobs[f"verify{label}"] = res.jobId
        if science_pipelines:
            # cp_verify has no majority decision: decide on its outputs.
            outcome.extra["cp_verify_collection"] = res.output_collection
            res = await self._job(
                f"decide{label}",
                self._pipeline(f"decide{label}"),
                [res.output_collection],
                self._collection("verify", f"decide{label}"),
                exposures,
                threshold,
            )
            outcome.jobs[f"decide{label}"] = res.jobId
        outcome.verification_collection = res.output_collection
        # cpcVerify<Type>Decision: per instrument, and per physical filter for flats.
        decision_id = {"physical_filter": cfg.filter} if image_type == "flat" else {}
        decision = await self._registry(
            self._butler.get,
            f"cpcVerify{label}Decision",
            instrument=self.instrument,
            collections=res.output_collection,
            **decision_id,
        )
        certify = bool(decision.get("CERTIFY", decision.get("certify")))
        outcome.decision = "pass" if certify else "fail"
        outcome.decision_report = str(decision.get("REPORT", decision.get("report", "")))
        outcome.extra["decision"] = decision
        outcome.warnings = [str(w) for w in decision.get("WARNINGS") or []]
        for warning in outcome.warnings:
            self.progress(f"WARNING {image_type}: {warning}")
        self.progress(f"{image_type} decision: {outcome.decision}\n{outcome.decision_report}")
        if not certify:
            first = outcome.decision_report.splitlines()[0] if outcome.decision_report else ""
            raise CalibrationRejected(f"{image_type} failed verification: {first or 'majority rule said no'}")

    async def _certify_when_ready(self, image_type: str, needs: list[str]) -> None:
        await self._after(f"gen:{image_type}", f"verify:{image_type}", *(f"certify:{t}" for t in needs))
        outcome = self._outcome(image_type)
        await self._certify(image_type, outcome.generated_collection, outcome)

    async def _certify(
        self, calib_type: str, run_collection: str | None, outcome: CalibrationOutcome
    ) -> None:
        from ..repo.certify import certify_calibration

        cfg = self._require_config()
        dataset_type = calib_type
        begin, end = cfg.certify_calib_begin_date, cfg.certify_calib_end_date

        def do() -> Any:
            return certify_calibration(
                self._butler,
                dataset_type=dataset_type,
                run=run_collection,
                calib_collection=cfg.calib_collection,
                begin=begin,
                end=end,
                decision_collection=outcome.verification_collection,
                require_decision=calib_type in ("bias", "dark", "flat") and cfg.do_verify,
                chain=cfg.certify_chain or None,
                what=("certify_calib_begin_date", "certify_calib_end_date"),
            )

        result = await self._step(f"certify {calib_type}", self._registry(do))
        self.progress(f"  {result.summary()}")
        outcome.certified = True
        outcome.calib_collection = cfg.calib_collection
        # The range as stored (a begin before 1970 is stored unbounded: -inf).
        outcome.validity = (result.begin, result.end)

    async def _gain_from_pairs(self, flats: list[int]) -> None:
        await self._after("gen:bias", "gen:dark")
        outcome = self._outcome("flat")
        res = await self._job(
            "gainFromFlatPairs",
            self._pipeline("gainFromFlatPairs"),
            self._ptc_inputs(),
            self._collection("calib", "gainFromFlatPairs"),
            flats,
        )
        outcome.jobs["gainFromFlatPairs"] = res.jobId
        outcome.extra["gain_from_flat_pairs_collection"] = res.output_collection

    def _ptc_inputs(self) -> list[str]:
        cfg = self._require_config()
        gens = [
            self.summary.calibrations[t].generated_collection
            for t in ("bias", "dark")
            if t in self.summary.calibrations
        ]
        return [*[g for g in gens if g], raw_collection(self.instrument), *cfg.collections("ptc")]

    async def _defects(self) -> None:
        await self._after("gen:dark", "gen:flat")
        cfg = self._require_config()
        outcome = self._outcome("defects")
        gens = [self.summary.calibrations[t].generated_collection for t in ("dark", "flat")]
        if not all(gens):
            raise ProcedureError(
                "defects need the dark and flat generated in this run (generate_calibrations: true)"
            )
        exposures = self._outcome("dark").exposures + self._outcome("flat").exposures
        res = await self._job(
            "cpDefects",
            self._pipeline("cpDefects"),
            [*gens, raw_collection(self.instrument), *cfg.collections("defects")],
            self._collection("calib", "cpDefects"),
            exposures,
            cfg.config_options_defects,
            query=f"instrument='{self.instrument}' AND detector IN ({', '.join(map(str, cfg.detectors))})",
        )
        outcome.generated_collection = res.output_collection
        outcome.jobs["cpDefects"] = res.jobId
        await self._after("certify:dark", "certify:flat")
        await self._certify("defects", res.output_collection, outcome)

    async def _ptc(self, flats: list[int]) -> None:
        """PTC; its extraction also gives the gain from flat pairs."""
        await self._after("gen:bias", "gen:dark")
        cfg = self._require_config()
        outcome = self._outcome("ptc")
        outcome.exposures = list(flats)
        res = await self._job(
            "cpPtc",
            self._pipeline("cpPtc"),
            self._ptc_inputs(),
            self._collection("calib", "cpPtc"),
            flats,
            cfg.config_options_ptc,
        )
        outcome.generated_collection = res.output_collection
        outcome.jobs["cpPtc"] = res.jobId
        if cfg.do_gain_from_flat_pairs:
            self._outcome("flat").extra["gain_from_flat_pairs_collection"] = res.output_collection
        await self._after("certify:bias", "certify:dark")
        await self._certify("ptc", res.output_collection, outcome)
