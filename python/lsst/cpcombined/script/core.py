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
    "CalibrationOutcome",
    "CalibrationRejected",
    "MakeCalibrationsCore",
    "ProcedureError",
    "RunSummary",
    "StepRecord",
)

import asyncio
import concurrent.futures
import dataclasses
import datetime
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from lsst.daf.butler import Butler, CollectionType

from ..repo.collections import collection_exists, raw_collection
from .protocols import Camera, JobResult, PipelineService, RawWaiter, ScriptState
from .schema import ConfigError, ScriptConfig, get_schema, validate_config
from .state import RunState

_LOG = logging.getLogger("lsst.cpcombined.script")
_T = TypeVar("_T")

_TYPE_LABEL = {"bias": "Bias", "dark": "Dark", "flat": "Flat", "defects": "Defects", "ptc": "Ptc"}


class ProcedureError(RuntimeError):
    """A step of the procedure failed (the message names the step and cause)."""


class CalibrationRejected(ProcedureError):
    """A calibration failed its verification (majority rule said no)."""


@dataclasses.dataclass
class StepRecord:
    """One step of the procedure, for the summary."""

    name: str
    seconds: float
    status: str
    detail: str = ""


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
    ) -> None:
        self.instrument = instrument
        self.camera = camera
        self.raw_waiter = raw_waiter
        self.pipelines = pipelines
        self.checkpoint = checkpoint or _no_checkpoint
        self.state_store = state_store
        self.pipelines_dir = pipelines_dir.rstrip("/")
        self.progress = progress or (lambda msg: _LOG.info("%s", msg))
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
            Invalid configuration (state becomes CONFIGURE_FAILED).
        """
        try:
            self.config = validate_config(config, self.instrument)
        except ConfigError:
            self.state = ScriptState.CONFIGURE_FAILED
            raise
        self.state = ScriptState.CONFIGURED

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
                k for k, v in self.summary.calibrations.items() if self._should_certify(cfg, k) and not v.certified
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
        return all(self.summary.calibrations.get(t) and self.summary.calibrations[t].certified for t in requested)

    async def _step(self, name: str, coro: Awaitable[Any]) -> Any:
        """Run a step, timing it and recording its status."""
        t0 = time.monotonic()
        self.progress(f"{name} ...")
        try:
            result = await coro
        except Exception as err:
            self.summary.steps.append(StepRecord(name, time.monotonic() - t0, "failed", str(err)))
            raise
        dt = time.monotonic() - t0
        self.summary.steps.append(StepRecord(name, dt, "ok"))
        self.progress(f"{name}: done in {dt:.1f} s")
        return result

    def _outcome(self, calib_type: str) -> CalibrationOutcome:
        return self.summary.calibrations.setdefault(calib_type, CalibrationOutcome(calib_type))

    def _collection(self, kind: str, label: str) -> str:
        return f"{self.instrument}/{kind}/{self.summary.run_id}/{label}"

    def _query(self, exposures: list[int]) -> str:
        cfg = self._require_config()
        dets = ", ".join(str(d) for d in cfg.detectors)
        exps = ", ".join(str(e) for e in exposures)
        return f"instrument='{self.instrument}' AND detector IN ({dets}) AND exposure IN ({exps})"

    def _pipeline(self, name: str) -> str:
        return f"{self.pipelines_dir}/{self.instrument}/{name}.yaml"

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
                self._raise_first_failure()
        finally:
            for t in self._tasks.values():
                if not t.done():
                    t.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

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
        cfg = self._require_config()
        outcome = self._outcome(image_type)
        saved = self.state_store.get("acquired", {}).get(image_type) if self.state_store else None
        if saved:
            self.progress(f"Reusing {len(saved)} {image_type} exposures acquired before the restart")
            outcome.exposures = list(saved)
            return outcome.exposures
        times = cfg.exposure_times(image_type)
        n_discard = cfg.discard(image_type)
        group = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        common = dict(
            group_id=group, note=cfg.note, program=cfg.program, reason=cfg.reason, filter=cfg.filter
        )

        async def take() -> list[int]:
            kept: list[int] = []
            for i, t in enumerate(times):
                ids = await self.camera.take_imgtype(image_type.upper(), t, 1, discard=i < n_discard, **common)
                if i >= n_discard:
                    kept.extend(ids)
                tag = " (discarded)" if i < n_discard else ""
                self.progress(f"  {image_type} {i + 1}/{len(times)} ({t:g} s){tag}")
            await self.raw_waiter.wait_for_raws(kept, list(cfg.detectors), cfg.oods_timeout)
            return kept

        kept = await self._step(f"take {len(times)} {image_type} ({n_discard} discarded)", take())
        outcome.exposures = kept
        if self.state_store is not None:
            acquired = dict(self.state_store.get("acquired", {}))
            acquired[image_type] = kept
            self.state_store.set("acquired", acquired)
        return kept

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
            return JobResult(jobId=done["job_id"], phase="completed", exit_code=0, output_collection=done["output"])
        if done and not done.get("ok"):
            await self._registry(self._remove_partial_output, done["output"])
        inputs = await self._registry(self._existing_collections, inputs)
        config = f"-j {cfg.n_processes} -i {','.join(inputs)} -o {output} --register-dataset-types {options}".strip()
        timeout = max(
            120.0,
            cfg.background_task_timeout * max(1, len(exposures)) * math.ceil(len(cfg.detectors) / cfg.n_processes),
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
        res = await self._job(
            f"verify{label}",
            self._pipeline(f"verify{label}"),
            self._inputs_for(image_type, verify=True),
            self._collection("verify", f"verify{label}"),
            exposures,
            f"-c verify{label}Decision:threshold={cfg.threshold(image_type)}",
        )
        outcome.verification_collection = res.output_collection
        outcome.jobs[f"verify{label}"] = res.jobId
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
        self.progress(f"{image_type} decision: {outcome.decision}\n{outcome.decision_report}")
        if not certify:
            first = outcome.decision_report.splitlines()[0] if outcome.decision_report else ""
            raise CalibrationRejected(f"{image_type} failed verification: {first or 'majority rule said no'}")

    async def _certify_when_ready(self, image_type: str, needs: list[str]) -> None:
        await self._after(f"gen:{image_type}", f"verify:{image_type}", *(f"certify:{t}" for t in needs))
        outcome = self._outcome(image_type)
        await self._certify(image_type, outcome.generated_collection, outcome)

    async def _certify(self, calib_type: str, run_collection: str | None, outcome: CalibrationOutcome) -> None:
        from ..repo.certify import certify_calibration

        cfg = self._require_config()
        dataset_type = calib_type
        begin, end = cfg.certify_calib_begin_date, cfg.certify_calib_end_date

        def do() -> None:
            certify_calibration(
                self._butler,
                dataset_type=dataset_type,
                run=run_collection,
                calib_collection=cfg.calib_collection,
                begin=begin,
                end=end,
                decision_collection=outcome.verification_collection,
                require_decision=calib_type in ("bias", "dark", "flat") and cfg.do_verify,
                chain=cfg.certify_chain or None,
            )

        await self._step(f"certify {calib_type}", self._registry(do))
        outcome.certified = True
        outcome.calib_collection = cfg.calib_collection
        outcome.validity = (begin, end)

    async def _gain_from_pairs(self, flats: list[int]) -> None:
        await self._after("gen:bias", "gen:dark")
        outcome = self._outcome("flat")
        res = await self._job(
            "gainFromFlatPairs",
            self._pipeline("cpPtc") + "#gainFromFlatPairs",
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
