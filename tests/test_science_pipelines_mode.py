"""Science Pipelines mode: cp_pipe generates, cp_verify verifies, this
package decides (``decide<Type>`` pipelines) and certifies.

cp_pipe and cp_verify cannot run here (they need afw), so:

(a) the procedure core runs with a fake camera and a fake OCPS-like
    pipeline service (`FakeScienceStack`) that records every job and, for
    cp_pipe's and cp_verify's pipelines, writes what they would write —
    bias/dark/flat as ExposureF datasets (afw Exposure FITS stand-in files
    registered under obs_base's formatter name), defects and PTC as ip_isr
    tables, cp_verify's ``verify<Type>IsrExp`` (with ip_isr's ``LSST CALIB
    UUID/RUN`` provenance cards naming the calibrations found in the job's
    inputs, as a prerequisite lookup would), ``DetStats``, ``ExpStats`` and
    run ``Stats`` in cp_verify's shapes built from chosen failures — and
    runs this package's decision pipelines for real (in-process pipetask);
(b) the decision pipelines run on cp_verify-shaped datasets registered
    with cp_verify's dataset-type definitions;
(c) the configuration check for CP_PIPE_DIR / CP_VERIFY_DIR and the
    pipeline files.

cp_verify's dictionaries are built by hand and merged with the reader that
follows cp_verify's merge tasks (``test_cp_verify_shapes.cp_verify_merge``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import itertools
import re
import shlex
import uuid
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from astropy.time import Time, TimeDelta
from conftest import run_cp_pipeline
from lsst.cpcombined.obs.raw import read_primary_header
from lsst.cpcombined.repo.create import create_repo
from lsst.cpcombined.script import ConfigError, JobResult, MakeCalibrationsCore, ProcedureError, ScriptState
from lsst.cpcombined.script.core import CalibrationRejected, check_pipeline_files, pipeline_path
from lsst.cpcombined.script.local import LocalPipelineService
from lsst.cpcombined.script.pipetask import run_pipetask
from lsst.cpcombined.tasks.verify_decision import (
    NO_CALIBRATIONS_NOTE,
    calibrations_from_isr_header,
    read_primary_header_of,
)
from lsst.daf.butler import Butler, CollectionType, DatasetRef, DatasetType, FileDataset, Timespan
from lsst.resources import ResourcePath
from test_cp_verify_shapes import cp_verify_flat_exposure_tests, cp_verify_merge
from upstream_replica import FORMATTERS, upstream_formatter_standins, write_afw_exposure, write_isr_table

AMPS = [f"C1{i}" for i in range(8)] + [f"C0{i}" for i in range(7, -1, -1)]
DAY_OBS = 20240901
EMPTY = {"LATISS": "empty~empty", "LSSTComCam": "empty"}

#: cp_pipe's and cp_verify's definitions: name -> (dimensions, storage class, calibration).
CP_PIPE_TYPES = {
    "bias": (("instrument", "detector"), "ExposureF", True),
    "dark": (("instrument", "detector"), "ExposureF", True),
    "flat": (("instrument", "detector", "physical_filter"), "ExposureF", True),
    "defects": (("instrument", "detector"), "Defects", True),
    "ptc": (("instrument", "detector"), "PhotonTransferCurveDataset", True),
}


def cp_verify_types(label: str) -> dict[str, tuple[tuple[str, ...], str, bool]]:
    """cp_verify's dataset types of one verification (as its pipelines declare
    them; flat exposure level with the implied physical_filter spelled out)."""
    exp = ("instrument", "exposure", "physical_filter") if label == "Flat" else ("instrument", "exposure")
    run = ("instrument", "physical_filter") if label == "Flat" else ("instrument",)
    return {
        f"verify{label}IsrExp": (("instrument", "exposure", "detector"), "Exposure", False),
        f"verify{label}DetStats": (("instrument", "exposure", "detector"), "StructuredDataDict", False),
        f"verify{label}ExpStats": (exp, "StructuredDataDict", False),
        f"verify{label}Stats": (run, "StructuredDataDict", False),
    }


def register(butler: Butler, types: dict) -> dict[str, DatasetType]:
    out = {}
    for name, (dims, sc, calib) in types.items():
        out[name] = DatasetType(name, dims, sc, universe=butler.dimensions, isCalibration=calib)
        butler.registry.registerDatasetType(out[name])
    return out


# -- the repository and its exposures ------------------------------------------------------------


def add_exposures(
    butler: Butler, instrument: str, ids: list[int], obstype: str, physical_filter: str, exptime: float = 0.0
) -> None:
    """The ``day_obs``, ``group`` and ``exposure`` records of some exposures."""
    registry = butler.registry
    start = Time("2024-09-01T22:00:00", scale="tai")
    registry.syncDimensionData(
        "day_obs",
        {
            "instrument": instrument,
            "id": DAY_OBS,
            "timespan": Timespan(
                start - TimeDelta(43200, format="sec"), start + TimeDelta(43200, format="sec")
            ),
        },
    )
    for exp_id in ids:
        seq = exp_id % 100000
        begin = start + TimeDelta(60.0 * seq, format="sec")
        group = f"{obstype}-{DAY_OBS}"
        registry.syncDimensionData("group", {"instrument": instrument, "name": group})
        registry.syncDimensionData("exposure", {
            "instrument": instrument, "id": exp_id, "obs_id": f"XX_O_{DAY_OBS}_{seq:06d}",
            "timespan": Timespan(begin, begin + TimeDelta(exptime + 1.0, format="sec")),
            "exposure_time": exptime, "dark_time": exptime, "observation_type": obstype,
            "observation_reason": obstype, "day_obs": DAY_OBS,
            "seq_num": seq, "seq_start": seq, "seq_end": seq,
            "physical_filter": physical_filter, "group": group, "science_program": "CALIBRATIONS",
            "target_name": "UNKNOWN", "has_simulated": True, "can_see_sky": False,
        })  # fmt: skip


def detector_names(butler: Butler, instrument: str) -> dict[int, str]:
    return {
        rec.id: rec.full_name
        for rec in butler.registry.queryDimensionRecords("detector", instrument=instrument)
    }


def stage_path(staging: Path, name: str) -> Path:
    staging.mkdir(parents=True, exist_ok=True)
    return staging / f"{name}-{uuid.uuid4().hex[:8]}.fits"


def ingest(butler: Butler, datasets: list[FileDataset]) -> None:
    """Ingest files under the Science Pipelines' formatter names (stand-ins
    importable only during the ingest)."""
    with upstream_formatter_standins():
        butler.ingest(*datasets, transfer="move")


def exposure_file(path: Path, metadata: dict) -> Path:
    """A small afw Exposure FITS file (the primary header is what matters)."""
    pixels = np.ones((4, 4), dtype=np.float32)
    write_afw_exposure(path, pixels, np.zeros((4, 4), dtype=np.int32), pixels, metadata, visit_info={})
    return path


# -- cp_verify's dictionaries ----------------------------------------------------------------------


def cp_verify_detector(calib_type: str, failing_amps: list[str], det_mean: float = 1.0) -> dict:
    """A detector dictionary as cp_verify writes it: the listed amplifiers
    fail NOISE, everything else passes."""
    tests = {"bias": ("MEAN", "NOISE", "CR_NOISE"), "dark": ("MEAN", "NOISE", "CR_NOISE"), "flat": ("NOISE",)}
    amp_verify = {}
    for amp in AMPS:
        results = {t: not (t == "NOISE" and amp in failing_amps) for t in tests[calib_type]}
        results["SUCCESS"] = all(results.values())
        amp_verify[amp] = results
    det_verify: dict = {}
    det: dict = {}
    if calib_type == "flat":
        det = {"MEAN": det_mean, "SCATTER": 0.01}
        det_verify = {"SCATTER": True, "SUCCESS": True}
    return {
        "AMP": {amp: {"MEAN": 0.1, "NOISE": 9.0 if amp in failing_amps else 8.1} for amp in AMPS},
        "METADATA": {},
        "CATALOG": {},
        "DET": det,
        "VERIFY": {"AMP": amp_verify, "DET": det_verify, "EXP": {}},
        "SUCCESS": not failing_amps,
    }


def cp_verify_exposure(calib_type: str, detectors: dict[str, dict]) -> dict:
    tests = cp_verify_flat_exposure_tests if calib_type == "flat" else None
    return cp_verify_merge(detectors, exposure_tests=tests)


def write_cp_verify_outputs(
    butler: Butler,
    run: str,
    instrument: str,
    calib_type: str,
    exposures: list[int],
    detectors: list[int],
    failing: dict[tuple[int, int], list[str]],
    provenance: dict[tuple[int, int], dict[str, DatasetRef]],
    staging: Path,
) -> None:
    """What cp_verify's ``verify<Type>`` writes into ``run``: per (exposure,
    detector) the processed exposure (ISR provenance cards for the
    calibrations in ``provenance``) and the detector dictionary (the
    ``failing`` amplifiers fail NOISE), per exposure the merged dictionary,
    per instrument (and physical filter) the run dictionary."""
    label = calib_type.capitalize()
    types = register(butler, cp_verify_types(label))
    butler.registry.registerRun(run)
    names = detector_names(butler, instrument)
    staged = []
    exp_stats: dict[int, dict] = {}
    filters: dict[int, str] = {}
    for exposure in exposures:
        dets = {}
        for det in detectors:
            data_id = butler.registry.expandDataId(instrument=instrument, exposure=exposure, detector=det)
            filters[exposure] = data_id["physical_filter"]
            det_stats = cp_verify_detector(calib_type, failing.get((exposure, det), []))
            butler.put(det_stats, types[f"verify{label}DetStats"], data_id, run=run)
            dets[names[det]] = det_stats
            metadata = {"OBSTYPE": calib_type.upper(), "LSST ISR UNITS": "electron"}
            for name, ref in sorted(provenance.get((exposure, det), {}).items()):
                metadata[f"LSST CALIB RUN {name.upper()}"] = ref.run
                metadata[f"LSST CALIB UUID {name.upper()}"] = str(ref.id)
                metadata[f"LSST CALIB DATE {name.upper()}"] = "2024-09-01 12:00:00"
            path = exposure_file(stage_path(staging, f"isr{exposure}-{det}"), metadata)
            ref = DatasetRef(types[f"verify{label}IsrExp"], data_id, run=run)
            staged.append(FileDataset(path=str(path), refs=[ref], formatter=FORMATTERS["exposure"]))
        exp_stats[exposure] = cp_verify_exposure(calib_type, dets)
        butler.put(
            exp_stats[exposure],
            types[f"verify{label}ExpStats"],
            instrument=instrument,
            exposure=exposure,
            run=run,
        )
    ingest(butler, staged)
    by_filter: dict[str | None, dict[int, dict]] = {}
    for exposure, stats in exp_stats.items():
        by_filter.setdefault(filters[exposure] if calib_type == "flat" else None, {})[exposure] = stats
    for physical_filter, group in by_filter.items():
        extra = {"physical_filter": physical_filter} if physical_filter else {}
        butler.put(
            cp_verify_merge(group), types[f"verify{label}Stats"], instrument=instrument, run=run, **extra
        )


# -- (a) the procedure with a fake OCPS running fake cp_pipe / cp_verify ------------------------------


class FakeCamera:
    """Returns new exposure ids and writes their records (as the OODS
    ingest would)."""

    read_out_time = 2.0

    def __init__(self, root: Path, instrument: str) -> None:
        self.root = root
        self.instrument = instrument
        self.seq = itertools.count(10)
        self.calls: list[tuple] = []

    async def take_imgtype(
        self,
        imgtype,
        exptime,
        n,
        *,
        group_id,
        note="",
        program="",
        reason="",
        filter=None,
        discard=False,
        index=None,
    ):
        ids = [DAY_OBS * 100000 + next(self.seq) for _ in range(n)]
        self.calls.append((imgtype, exptime, n, discard, filter))
        flt = filter if imgtype == "FLAT" else EMPTY[self.instrument]
        butler = Butler.from_config(str(self.root), writeable=True)
        add_exposures(butler, self.instrument, ids, imgtype.lower(), flt, exptime)
        return ids


class FakeWaiter:
    async def wait_for_raws(self, exposures, detectors, timeout):
        return None


def parse_job(config: str, query: str) -> dict:
    tokens = shlex.split(config)
    out: dict = {"inputs": [], "output": None, "options": []}
    it = iter(tokens)
    for tok in it:
        if tok == "-i":
            out["inputs"] += next(it).split(",")
        elif tok == "-o":
            out["output"] = next(it)
        elif tok == "-c":
            out["options"].append(next(it))
        elif tok == "-j":
            out["processes"] = int(next(it))
        elif tok == "--register-dataset-types":
            out["register"] = True
    out["detectors"] = [int(d) for d in re.search(r"detector IN \(([^)]*)\)", query).group(1).split(",")]
    exps = re.search(r"exposure IN \(([^)]*)\)", query)
    out["exposures"] = [int(e) for e in exps.group(1).split(",")] if exps else []
    return out


class FakeScienceStack:
    """An OCPS-like `PipelineService`.

    ``${CP_PIPE_DIR}`` pipelines: writes cp_pipe's product of the step
    (stand-in files) into a new RUN chained in front of the inputs under
    the output name, as pipetask does.  ``${CP_VERIFY_DIR}`` pipelines:
    writes cp_verify's outputs for the queried exposures and detectors; the
    ISR provenance names the calibrations a prerequisite lookup finds in
    the job's inputs (or ``provenance_override``).  ``${CPCOMBINED_DIR}``
    pipelines: run for real with the in-process pipetask.  Jobs run one at
    a time in one thread.

    Parameters
    ----------
    failing_amps
        Calibration type -> number of amplifiers failing NOISE on every
        detector of every exposure verified.
    provenance_override
        Calibration type -> dataset id the ISR header names instead of the
        one found.
    """

    def __init__(self, root: Path, instrument: str, failing_amps=None, provenance_override=None) -> None:
        self.root = root
        self.instrument = instrument
        self.failing_amps = failing_amps or {}
        self.provenance_override = provenance_override or {}
        self.jobs: dict[str, dict] = {}
        self.products: dict[str, list[DatasetRef]] = {}
        self._futures: dict[str, asyncio.Future] = {}
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._local = LocalPipelineService(root, mode="inprocess", max_jobs=1)

    async def execute(self, pipeline, version, config, data_query):
        job_id = f"job{len(self.jobs) + 1}"
        self.jobs[job_id] = dict(
            pipeline=pipeline, config=config, query=data_query, **parse_job(config, data_query)
        )
        loop = asyncio.get_running_loop()
        self._futures[job_id] = loop.run_in_executor(self._thread, self._run, job_id)
        return job_id

    async def wait_result(self, job_id, timeout):
        code, errors = await self._futures[job_id]
        job = self.jobs[job_id]
        return JobResult(
            jobId=job_id,
            phase="completed" if code == 0 else "error",
            exit_code=code,
            output_collection=job["output"],
            errors=errors,
        )

    # -- the jobs --

    def _run(self, job_id: str) -> tuple[int, list[str]]:
        job = self.jobs[job_id]
        pipeline = job["pipeline"]
        try:
            if pipeline.startswith("${CPCOMBINED_DIR}"):
                args, _ = self._local.build_args(pipeline, job["config"], job["query"], job_id)
                res = run_pipetask(args)
                return res.exit_code, ([res.error_summary()] if not res.ok else [])
            butler = Butler.from_config(str(self.root), writeable=True)
            run = f"{job['output']}/{job_id}"
            butler.registry.registerRun(run)
            butler.registry.registerCollection(job["output"], CollectionType.CHAINED)
            butler.registry.setCollectionChain(job["output"], [run, *job["inputs"]])
            step = pipeline.rsplit("/", 1)[1].removesuffix(".yaml")
            if pipeline.startswith("${CP_PIPE_DIR}"):
                self._cp_pipe(butler, run, step, job)
            elif pipeline.startswith("${CP_VERIFY_DIR}"):
                self._cp_verify(butler, run, step, job)
            else:
                return 1, [f"unknown pipeline {pipeline}"]
        except Exception as err:  # noqa: BLE001 - a failed job, as OCPS reports it
            return 1, [f"{type(err).__name__}: {err}"]
        return 0, []

    def _cp_pipe(self, butler: Butler, run: str, step: str, job: dict) -> None:
        calib_type = {"cpBias": "bias", "cpDark": "dark", "cpFlat": "flat", "cpDefects": "defects",
                      "cpPtc": "ptc", "cpPtc.yaml#cpPtcGainFromFlatPairs": None}[step]  # fmt: skip
        if calib_type is None:  # the gain from flat pairs writes no calibration
            return
        dtype = register(butler, {calib_type: CP_PIPE_TYPES[calib_type]})[calib_type]
        staged = []
        for det in job["detectors"]:
            data_id = {"instrument": self.instrument, "detector": det}
            if calib_type == "flat":
                (flt,) = {r.physical_filter for r in butler.registry.queryDimensionRecords(
                    "exposure", where=f"exposure IN ({', '.join(map(str, job['exposures']))})",
                    instrument=self.instrument)}  # fmt: skip
                data_id["physical_filter"] = flt
            data_id = butler.registry.expandDataId(data_id)
            path = stage_path(self.root.parent / "staging", f"{calib_type}{det}")
            if calib_type in ("defects", "ptc"):
                table = (
                    Table({"x0": [0], "y0": [0], "width": [5], "height": [100]})
                    if calib_type == "defects"
                    else Table({"AMPLIFIER_NAME": AMPS, "GAIN": [1.1] * 16, "NOISE": [8.0] * 16})
                )
                write_isr_table(path, table, {"OBSTYPE": calib_type, "DETECTOR": det})
                formatter = FORMATTERS["table"]
            else:
                exposure_file(
                    path,
                    {
                        "OBSTYPE": calib_type,
                        "LSST ISR UNITS": "electron",
                        "CALIB_CREATION_DATE": "2024-09-01",
                        "CALIB_CREATION_TIME": "12:00:00 UTC",
                    },
                )
                formatter = FORMATTERS["exposure"]
            ref = DatasetRef(dtype, data_id, run=run)
            staged.append(FileDataset(path=str(path), refs=[ref], formatter=formatter))
            self.products.setdefault(calib_type, []).append(ref)
        ingest(butler, staged)

    def _cp_verify(self, butler: Butler, run: str, step: str, job: dict) -> None:
        calib_type = step.removeprefix("verify").lower()
        uses = {"bias": ["bias"], "dark": ["bias", "dark"], "flat": ["bias", "dark", "flat"]}[calib_type]
        provenance: dict[tuple[int, int], dict[str, DatasetRef]] = {}
        for exposure in job["exposures"]:
            record = next(iter(butler.registry.queryDimensionRecords(
                "exposure", instrument=self.instrument, exposure=exposure)))  # fmt: skip
            for det in job["detectors"]:
                found = {}
                for name in uses:
                    data_id = {"instrument": self.instrument, "detector": det}
                    if name == "flat":
                        data_id["physical_filter"] = record.physical_filter
                    ref = butler.find_dataset(
                        name, data_id, collections=job["inputs"], timespan=record.timespan
                    )
                    if ref is None:
                        if name == calib_type:
                            raise LookupError(f"no {name} for {data_id} in {job['inputs']}")
                        continue
                    if name in self.provenance_override:
                        ref = DatasetRef(
                            ref.datasetType,
                            ref.dataId,
                            run=ref.run,
                            id=uuid.UUID(self.provenance_override[name]),
                        )
                    found[name] = ref
                provenance[(exposure, det)] = found
        n_fail = self.failing_amps.get(calib_type, 0)
        failing = {(e, d): AMPS[:n_fail] for e in job["exposures"] for d in job["detectors"]}
        write_cp_verify_outputs(
            butler,
            run,
            self.instrument,
            calib_type,
            job["exposures"],
            job["detectors"],
            failing,
            provenance,
            self.root.parent / "staging",
        )

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._local.close()


@pytest.fixture
def science_env(tmp_path, monkeypatch):
    """CP_PIPE_DIR and CP_VERIFY_DIR pointing to directories with (empty)
    pipeline files of both instruments, as cp_pipe's and cp_verify's
    installs have."""
    for var, pkg, names in (
        ("CP_PIPE_DIR", "cp_pipe", ["cpBias", "cpDark", "cpFlat", "cpDefects", "cpPtc"]),
        ("CP_VERIFY_DIR", "cp_verify", ["verifyBias", "verifyDark", "verifyFlat"]),
    ):
        for instrument in ("LATISS", "LSSTComCam"):
            d = tmp_path / pkg / "pipelines" / instrument
            d.mkdir(parents=True)
            for name in names:
                (d / f"{name}.yaml").write_text(f"description: stand-in for {pkg}'s {name}\n")
        monkeypatch.setenv(var, str(tmp_path / pkg))
    return tmp_path


def make_repo(root: Path) -> Butler:
    butler = create_repo(root)
    butler.registry.registerRun("LATISS/raw/all")
    return butler


def run_core(root: Path, stack: FakeScienceStack, config: dict) -> MakeCalibrationsCore:
    core = MakeCalibrationsCore(
        "LATISS", camera=FakeCamera(root, "LATISS"), raw_waiter=FakeWaiter(), pipelines=stack
    )

    async def main():
        await core.configure({"repo": str(root), "calibration_pipelines": "science_pipelines", **config})
        try:
            return await core.run()
        finally:
            await core.cleanup()

    try:
        asyncio.run(main())
    finally:
        stack.close()
    return core


def core_certified(root: Path) -> list[DatasetRef]:
    """What is certified into the default calibration collection."""
    butler = Butler.from_config(str(root))
    if "LATISS/calib/daily" not in butler.collections.query("*"):
        return []
    return list(
        butler.query_datasets("bias", collections="LATISS/calib/daily", find_first=False, explain=False)
    )


def jobs_by_label(stack: FakeScienceStack) -> dict[str, dict]:
    out = {}
    for job_id, job in stack.jobs.items():
        name = job["pipeline"].rsplit("/", 1)[1].removesuffix(".yaml")
        out[name] = {**job, "id": job_id, "order": int(job_id.removeprefix("job"))}
    return out


PASS_CONFIG = {
    "script_mode": "BIAS_DARK_FLAT", "generate_calibrations": True, "do_defects": True, "do_ptc": True,
    "n_bias": 3, "n_discard_bias": 1, "n_dark": 3, "n_discard_dark": 0, "exp_times_dark": 30,
    "n_flat": 6, "n_discard_flat": 0, "exp_times_flat": [1, 1, 2, 2, 4, 4],
    "number_verification_tests_threshold_bias": 9, "n_processes": 2,
}  # fmt: skip


def test_procedure_runs_cp_pipe_cp_verify_then_decides_and_certifies(tmp_path, science_env):
    """Passing run: every pipeline is submitted in order with the inputs,
    outputs and queries the ScriptQueue script gives OCPS; the decisions
    are made on cp_verify's outputs by our pipeline; the five cp_pipe
    products are certified, each checked against the calibrations the ISR
    headers name."""
    root = tmp_path / "repo"
    butler = make_repo(root)
    # 8 amplifiers fail NOISE on every bias: below T x (floor(1/2)+1) = 9 x 1.
    stack = FakeScienceStack(root, "LATISS", failing_amps={"bias": 8, "dark": 2})
    core = run_core(root, stack, PASS_CONFIG)
    summary = core.summary
    assert core.state == ScriptState.DONE and summary.success, summary.error
    jobs = jobs_by_label(stack)
    assert {name: job["pipeline"] for name, job in jobs.items()} == {
        "cpBias": "${CP_PIPE_DIR}/pipelines/LATISS/cpBias.yaml",
        "verifyBias": "${CP_VERIFY_DIR}/pipelines/LATISS/verifyBias.yaml",
        "decideBias": "${CPCOMBINED_DIR}/pipelines/LATISS/decideBias.yaml",
        "cpDark": "${CP_PIPE_DIR}/pipelines/LATISS/cpDark.yaml",
        "verifyDark": "${CP_VERIFY_DIR}/pipelines/LATISS/verifyDark.yaml",
        "decideDark": "${CPCOMBINED_DIR}/pipelines/LATISS/decideDark.yaml",
        "cpFlat": "${CP_PIPE_DIR}/pipelines/LATISS/cpFlat.yaml",
        "verifyFlat": "${CP_VERIFY_DIR}/pipelines/LATISS/verifyFlat.yaml",
        "decideFlat": "${CPCOMBINED_DIR}/pipelines/LATISS/decideFlat.yaml",
        "cpPtc": "${CP_PIPE_DIR}/pipelines/LATISS/cpPtc.yaml",
        "cpDefects": "${CP_PIPE_DIR}/pipelines/LATISS/cpDefects.yaml",
    }
    order = {name: job["order"] for name, job in jobs.items()}
    for t in ("Bias", "Dark", "Flat"):
        assert order[f"cp{t}"] < order[f"verify{t}"] < order[f"decide{t}"]
    assert order["cpBias"] < order["cpDark"] < order["cpFlat"] < order["cpDefects"]
    assert order["cpDark"] < order["cpPtc"]
    run_id = summary.run_id
    exposures = {t: summary.calibrations[t].exposures for t in ("bias", "dark", "flat")}
    assert [len(exposures[t]) for t in ("bias", "dark", "flat")] == [3, 3, 6]
    out = {t: f"LATISS/calib/{run_id}/cp{t}" for t in ("Bias", "Dark", "Flat", "Ptc", "Defects")}
    ver = {t: f"LATISS/verify/{run_id}/verify{t}" for t in ("Bias", "Dark", "Flat")}
    dec = {t: f"LATISS/verify/{run_id}/decide{t}" for t in ("Bias", "Dark", "Flat")}
    raws, calib = "LATISS/raw/all", "LATISS/calib"
    expected_io = {
        "cpBias": ([raws, calib], out["Bias"]),
        "verifyBias": ([out["Bias"], raws, calib], ver["Bias"]),
        "decideBias": ([ver["Bias"]], dec["Bias"]),
        "cpDark": ([out["Bias"], raws, calib], out["Dark"]),
        "verifyDark": ([out["Dark"], out["Bias"], raws, calib], ver["Dark"]),
        "decideDark": ([ver["Dark"]], dec["Dark"]),
        "cpFlat": ([out["Bias"], out["Dark"], raws, calib], out["Flat"]),
        "verifyFlat": ([out["Flat"], out["Bias"], out["Dark"], raws, calib], ver["Flat"]),
        "decideFlat": ([ver["Flat"]], dec["Flat"]),
        "cpPtc": ([out["Bias"], out["Dark"], raws, calib], out["Ptc"]),
        "cpDefects": ([out["Dark"], out["Flat"], raws, calib], out["Defects"]),
    }
    for name, (inputs, output) in expected_io.items():
        assert (jobs[name]["inputs"], jobs[name]["output"]) == (inputs, output), name
        assert jobs[name]["processes"] == 2 and jobs[name].get("register"), name
    # cp_verify gets no option of ours; the threshold goes to the decision.
    assert jobs["verifyBias"]["options"] == [] and jobs["cpBias"]["options"] == []
    assert jobs["decideBias"]["options"] == ["verifyBiasDecision:threshold=9"]
    assert jobs["decideDark"]["options"] == ["verifyDarkDecision:threshold=8"]
    # Queries: the image type's exposures (flats for the PTC), none for defects.
    for name, t in (("cpBias", "bias"), ("verifyBias", "bias"), ("decideBias", "bias"), ("cpDark", "dark"),
                    ("decideDark", "dark"), ("verifyFlat", "flat"), ("cpPtc", "flat")):  # fmt: skip
        assert jobs[name]["query"] == (
            f"instrument='LATISS' AND detector IN (0) AND exposure IN ({', '.join(map(str, exposures[t]))})"
        ), name
    assert jobs["cpDefects"]["query"] == "instrument='LATISS' AND detector IN (0)"

    # The decisions, read back: made on cp_verify's exposure dictionaries.
    bias = summary.calibrations["bias"]
    decision = bias.extra["decision"]
    assert decision["CERTIFY"] is True
    assert (decision["N_EXPOSURES"], decision["N_DETECTORS"], decision["TEST_FAILURE_LIMIT"]) == (3, 1, 9)
    assert decision["EXPOSURES"] == exposures["bias"]
    assert all(counts == {"NOISE": 8} for counts in decision["COUNTS"].values())
    assert bias.verification_collection == dec["Bias"] and bias.extra["cp_verify_collection"] == ver["Bias"]
    assert bias.jobs == {
        "cpBias": jobs["cpBias"]["id"],
        "verifyBias": jobs["verifyBias"]["id"],
        "decideBias": jobs["decideBias"]["id"],
    }
    # The calibrations verified come from the ISR headers and are cp_pipe's products.
    products = {t: [str(r.id) for r in refs] for t, refs in stack.products.items()}
    assert [c["id"] for c in decision["CALIBRATIONS"]["bias"]] == products["bias"]
    assert decision["CALIBRATIONS_SOURCE"] == ["ISR provenance headers (verifyBiasIsrExp)"]
    dark_decision = summary.calibrations["dark"].extra["decision"]
    assert {k: [c["id"] for c in v] for k, v in dark_decision["CALIBRATIONS"].items()} == {
        "bias": products["bias"],
        "dark": products["dark"],
    }
    flat_decision = summary.calibrations["flat"].extra["decision"]
    assert flat_decision["PHYSICAL_FILTER"] == "SDSSr_65mm~empty" and flat_decision["N_EXPOSURES"] == 6
    assert flat_decision["CALIBRATIONS"]["flat"][0]["data_id"] == {
        "instrument": "LATISS",
        "detector": 0,
        "physical_filter": "SDSSr_65mm~empty",
    }

    # Certified: exactly cp_pipe's datasets, each of the five types.
    butler = Butler.from_config(str(root))
    for calib_type in ("bias", "dark", "flat", "defects", "ptc"):
        outcome = summary.calibrations[calib_type]
        assert outcome.certified and outcome.calib_collection == "LATISS/calib/daily", calib_type
        certified = butler.query_datasets(calib_type, collections="LATISS/calib/daily", find_first=False)
        assert sorted(str(r.id) for r in certified) == products[calib_type], calib_type
    assert butler.collections.get_info("LATISS/calib").children == ()  # the shared chain is untouched


def test_failing_cp_verify_verification_is_not_certified(tmp_path, science_env):
    """8 NOISE failures per bias exposure reach T x 1 = 8: every exposure
    fails, 3 >= floor(3/2) + 1, so the bias is rejected and nothing is
    certified."""
    root = tmp_path / "repo"
    make_repo(root)
    stack = FakeScienceStack(root, "LATISS", failing_amps={"bias": 8})
    config = {
        **PASS_CONFIG,
        "script_mode": "BIAS",
        "do_defects": False,
        "do_ptc": False,
        "number_verification_tests_threshold_bias": 8,
    }
    with pytest.raises(CalibrationRejected, match="bias failed verification"):
        run_core(root, stack, config)
    jobs = jobs_by_label(stack)
    assert list(jobs) == ["cpBias", "verifyBias", "decideBias"]
    butler = Butler.from_config(str(root))
    decision = butler.get(
        "cpcVerifyBiasDecision", instrument="LATISS", collections=jobs["decideBias"]["output"]
    )
    assert decision["CERTIFY"] is False
    assert (decision["N_FAILED_EXPOSURES"], decision["EXPOSURE_FAILURE_LIMIT"]) == (3, 2)
    assert not core_certified(root)


def test_decision_about_another_bias_does_not_certify(tmp_path, science_env):
    """A verification whose ISR used another bias than cp_pipe's new one
    (its header names another dataset id): the decision says yes, but
    certification refuses, naming the dataset."""
    root = tmp_path / "repo"
    make_repo(root)
    other = "00000000-0000-4000-8000-000000000001"
    stack = FakeScienceStack(root, "LATISS", provenance_override={"bias": other})
    config = {**PASS_CONFIG, "script_mode": "BIAS", "do_defects": False, "do_ptc": False}
    with pytest.raises(ProcedureError, match="does not concern 1 of the 1 dataset"):
        run_core(root, stack, config)
    butler = Butler.from_config(str(root))
    jobs = jobs_by_label(stack)
    decision = butler.get(
        "cpcVerifyBiasDecision", instrument="LATISS", collections=jobs["decideBias"]["output"]
    )
    assert decision["CERTIFY"] is True
    assert [c["id"] for c in decision["CALIBRATIONS"]["bias"]] == [other]
    assert stack.products["bias"][0].id != uuid.UUID(other)
    assert not core_certified(root)


def test_gain_from_flat_pairs_uses_cp_pipe_subset(science_env):
    core = MakeCalibrationsCore("LSSTComCam", camera=None, raw_waiter=None, pipelines=None)
    asyncio.run(
        core.configure(
            {
                "script_mode": "BIAS_DARK_FLAT",
                "calibration_pipelines": "science_pipelines",
                "generate_calibrations": True,
            }
        )
    )
    paths = core.pipeline_paths()
    assert (
        paths["gainFromFlatPairs"] == "${CP_PIPE_DIR}/pipelines/LSSTComCam/cpPtc.yaml#cpPtcGainFromFlatPairs"
    )
    assert list(paths) == [
        "cpBias",
        "verifyBias",
        "decideBias",
        "cpDark",
        "verifyDark",
        "decideDark",
        "cpFlat",
        "verifyFlat",
        "decideFlat",
        "gainFromFlatPairs",
    ]
    assert (
        pipeline_path("gainFromFlatPairs", "LATISS")
        == "${CPCOMBINED_DIR}/pipelines/LATISS/cpPtc.yaml#gainFromFlatPairs"
    )
    assert pipeline_path("verifyFlat", "LATISS") == "${CPCOMBINED_DIR}/pipelines/LATISS/verifyFlat.yaml"


# -- (b) the decision pipelines on cp_verify-shaped datasets ------------------------------------------


@pytest.fixture(scope="module")
def comcam_verified(tmp_path_factory):
    """A repository holding cp_verify's bias and flat outputs for LSSTComCam
    (9 detectors): 3 bias exposures, 2 + 2 flats in two filters, with
    chosen NOISE failures, and calibrations the ISR headers name."""
    root = tmp_path_factory.mktemp("comcam") / "repo"
    butler = create_repo(root)
    bias_exps = [DAY_OBS * 100000 + s for s in (10, 11, 12)]
    flat_r = [DAY_OBS * 100000 + s for s in (20, 21)]
    flat_g = [DAY_OBS * 100000 + s for s in (22, 23)]
    add_exposures(butler, "LSSTComCam", bias_exps, "bias", "empty")
    add_exposures(butler, "LSSTComCam", flat_r, "flat", "r_03", 5.0)
    add_exposures(butler, "LSSTComCam", flat_g, "flat", "g_01", 5.0)
    detectors = list(range(9))
    # Calibrations "made by cp_pipe" (refs only: the decision reads their ids from the ISR headers).
    types = register(butler, CP_PIPE_TYPES)
    butler.registry.registerRun("LSSTComCam/calib/cp")
    calib = {}
    for name in ("bias", "flat"):
        for det in detectors:
            for flt in ["r_03", "g_01"] if name == "flat" else [None]:
                extra = {"physical_filter": flt} if flt else {}
                data_id = butler.registry.expandDataId(instrument="LSSTComCam", detector=det, **extra)
                calib[(name, det, flt)] = DatasetRef(types[name], data_id, run="LSSTComCam/calib/cp")
    # Bias: limit T x (floor(9/2)+1) = 8 x 5 = 40 NOISE failures per exposure.
    # Exposure 10: 40 (fails), 11: 39 (passes), 12: 45 (fails) -> 2 of 3 fail >= floor(3/2)+1 = 2: reject.
    spread = {10: 40, 11: 39, 12: 45}
    failing = {}
    for exp in bias_exps:
        n = spread[exp % 100]
        for det in detectors:
            k = n // 9 + (1 if det < n % 9 else 0)
            failing[(exp, det)] = AMPS[:k]
    prov = {(e, d): {"bias": calib[("bias", d, None)]} for e in bias_exps for d in detectors}
    write_cp_verify_outputs(
        butler,
        "LSSTComCam/verify/cpverify/bias",
        "LSSTComCam",
        "bias",
        bias_exps,
        detectors,
        failing,
        prov,
        root.parent / "staging",
    )
    # Flats: r_03 passes (5 failures per exposure), g_01 fails (every detector 5 amps: 45 >= 40).
    failing = {(e, d): AMPS[:1] if d < 5 else [] for e in flat_r for d in detectors}
    failing |= {(e, d): AMPS[:5] for e in flat_g for d in detectors}
    prov = {}
    for exps, flt in ((flat_r, "r_03"), (flat_g, "g_01")):
        for e in exps:
            for d in detectors:
                prov[(e, d)] = {"bias": calib[("bias", d, None)], "flat": calib[("flat", d, flt)]}
    write_cp_verify_outputs(
        butler,
        "LSSTComCam/verify/cpverify/flat",
        "LSSTComCam",
        "flat",
        flat_r + flat_g,
        detectors,
        failing,
        prov,
        root.parent / "staging",
    )
    return root, bias_exps, flat_r, flat_g, calib


def test_decide_bias_on_cp_verify_outputs(comcam_verified):
    root, bias_exps, _, _, calib = comcam_verified
    res = run_cp_pipeline(
        root,
        "LSSTComCam",
        "decideBias",
        inputs=["LSSTComCam/verify/cpverify/bias"],
        output="decide/bias",
        exposures=bias_exps,
    )
    assert res.ok, res.error_summary()
    butler = Butler.from_config(str(root))
    decision = butler.get("cpcVerifyBiasDecision", instrument="LSSTComCam", collections="decide/bias")
    assert decision["CERTIFY"] is False
    assert (decision["N_EXPOSURES"], decision["N_DETECTORS"], decision["TEST_FAILURE_LIMIT"]) == (3, 9, 40)
    counts = {int(e): c for e, c in decision["COUNTS"].items()}
    assert counts == {e: {"NOISE": n} for e, n in zip(bias_exps, (40, 39, 45), strict=False)}
    assert (decision["N_FAILED_EXPOSURES"], decision["EXPOSURE_FAILURE_LIMIT"]) == (2, 2)
    assert sorted(int(e) for e in decision["FAILED_EXPOSURES"]) == [bias_exps[0], bias_exps[2]]
    # The bias of each of the 9 detectors, from the ISR headers.
    verified = decision["CALIBRATIONS"]["bias"]
    assert [c["id"] for c in verified] == [str(calib[("bias", d, None)].id) for d in range(9)]
    assert verified[4] == {
        "dataset_type": "bias",
        "id": str(calib[("bias", 4, None)].id),
        "run": "LSSTComCam/calib/cp",
        "data_id": {"instrument": "LSSTComCam", "detector": 4},
    }
    # T = 9: limit 45; only exposure 12 fails; 1 < 2: certify.
    res = run_cp_pipeline(
        root,
        "LSSTComCam",
        "decideBias",
        inputs=["LSSTComCam/verify/cpverify/bias"],
        output="decide/bias9",
        exposures=bias_exps,
        config={"verifyBiasDecision:threshold": 9},
    )
    assert res.ok, res.error_summary()
    decision = butler.get("cpcVerifyBiasDecision", instrument="LSSTComCam", collections="decide/bias9")
    assert decision["CERTIFY"] is True and decision["N_FAILED_EXPOSURES"] == 1


def test_decide_flat_per_filter_on_cp_verify_outputs(comcam_verified):
    root, _, flat_r, flat_g, calib = comcam_verified
    res = run_cp_pipeline(
        root,
        "LSSTComCam",
        "decideFlat",
        inputs=["LSSTComCam/verify/cpverify/flat"],
        output="decide/flat",
        exposures=flat_r + flat_g,
    )
    assert res.ok, res.error_summary()
    butler = Butler.from_config(str(root))
    r = butler.get(
        "cpcVerifyFlatDecision", instrument="LSSTComCam", physical_filter="r_03", collections="decide/flat"
    )
    g = butler.get(
        "cpcVerifyFlatDecision", instrument="LSSTComCam", physical_filter="g_01", collections="decide/flat"
    )
    assert (r["CERTIFY"], r["N_EXPOSURES"], r["N_FAILED_EXPOSURES"]) == (True, 2, 0)
    assert (g["CERTIFY"], g["N_EXPOSURES"], g["N_FAILED_EXPOSURES"]) == (False, 2, 2)
    assert sorted(r["EXPOSURES"]) == flat_r and sorted(g["EXPOSURES"]) == flat_g
    assert [c["id"] for c in g["CALIBRATIONS"]["flat"]] == [
        str(calib[("flat", d, "g_01")].id) for d in range(9)
    ]
    assert {c["data_id"]["physical_filter"] for c in r["CALIBRATIONS"]["flat"]} == {"r_03"}
    # cp_verify's flat run dictionary (per filter) is there too, with its own shape.
    stats = butler.get(
        "verifyFlatStats",
        instrument="LSSTComCam",
        physical_filter="g_01",
        collections="LSSTComCam/verify/cpverify/flat",
    )
    assert stats["SUCCESS"] is False and set(stats) == {*flat_g, "SUCCESS"}


def test_decide_without_isr_provenance_lists_no_calibration(comcam_verified):
    root, bias_exps, _, _, _ = comcam_verified
    res = run_cp_pipeline(
        root,
        "LSSTComCam",
        "decideBias",
        inputs=["LSSTComCam/verify/cpverify/bias"],
        output="decide/noprov",
        exposures=bias_exps,
        config={"verifyBiasDecision:doReadIsrProvenance": False},
    )
    assert res.ok, res.error_summary()
    decision = Butler.from_config(str(root)).get(
        "cpcVerifyBiasDecision", instrument="LSSTComCam", collections="decide/noprov"
    )
    assert decision["CALIBRATIONS"] == {} and decision["CALIBRATIONS_NOTE"] == NO_CALIBRATIONS_NOTE
    assert decision["CALIBRATIONS_SOURCE"] == []
    assert decision["CERTIFY"] is False and decision["N_FAILED_EXPOSURES"] == 2


def test_isr_header_reading():
    data_id = {"instrument": "LATISS", "detector": 0, "physical_filter": "SDSSr_65mm~empty"}
    bias_id = str(uuid.uuid4())
    header = {
        "LSST CALIB UUID BIAS": bias_id,
        "LSST CALIB RUN BIAS": "LATISS/calib/x",
        "LSST CALIB UUID CCDEXPOSURE": str(uuid.uuid4()),
        "LSST CALIB UUID FLAT": bias_id.upper(),
    }
    out = calibrations_from_isr_header(header, data_id)
    assert out == {
        "bias": {
            "dataset_type": "bias",
            "id": bias_id,
            "run": "LATISS/calib/x",
            "data_id": {"instrument": "LATISS", "detector": 0},
        },
        "flat": {"dataset_type": "flat", "id": bias_id, "run": None, "data_id": data_id},
    }
    with pytest.raises(ValueError, match="LSST CALIB UUID DARK = 'nope' is not a dataset id"):
        calibrations_from_isr_header({"LSST CALIB UUID DARK": "nope"}, data_id)


def test_primary_header_read_from_first_bytes(tmp_path):
    """The header is read from the file's first bytes (ranged reads on
    remote stores), also when it is longer than the first read (400 cards
    = 11.1 FITS blocks > 8), and gives what astropy reads from the whole
    file; a whole-file gzipped FITS file is left to the full reader."""
    metadata = {f"LSST ISR KEY {i}": float(i) for i in range(400)}
    metadata["LSST CALIB UUID BIAS"] = str(uuid.uuid4())
    path = exposure_file(tmp_path / "isr.fits", metadata)
    uri = ResourcePath(str(path))
    header = read_primary_header_of(uri)
    assert header == read_primary_header(path)
    assert header["LSST CALIB UUID BIAS"] == metadata["LSST CALIB UUID BIAS"]
    assert header["LSST ISR KEY 399"] == 399.0
    reads = []

    class Counting:
        def read(self, size=-1):
            reads.append(size)
            return uri.read(size=size)

    read_primary_header_of(Counting())
    assert reads == [23040, 46080] and path.stat().st_size > 46080 + 2880
    gz = tmp_path / "isr.fits.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert read_primary_header_of(ResourcePath(str(gz))) is None


# -- (c) the configuration check --------------------------------------------------------------------


def _configure(config, **kwargs):
    core = MakeCalibrationsCore("LATISS", camera=None, raw_waiter=None, pipelines=None, **kwargs)
    asyncio.run(core.configure({"script_mode": "BIAS_DARK", "generate_calibrations": True, **config}))
    return core


def test_science_pipelines_need_cp_pipe_and_cp_verify(monkeypatch, tmp_path):
    monkeypatch.delenv("CP_PIPE_DIR", raising=False)
    monkeypatch.delenv("CP_VERIFY_DIR", raising=False)
    core = MakeCalibrationsCore("LATISS", camera=None, raw_waiter=None, pipelines=None)
    with pytest.raises(ConfigError) as err:
        asyncio.run(core.configure({"script_mode": "BIAS", "calibration_pipelines": "science_pipelines"}))
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        "calibration_pipelines: science_pipelines: CP_VERIFY_DIR is not set in the environment the "
        "pipelines are resolved in: set up cp_verify (`setup cp_verify`), or choose "
        "calibration_pipelines: cp_combined"
    )  # BIAS without generation: only cp_verify is needed
    assert core.state == ScriptState.CONFIGURE_FAILED
    with pytest.raises(
        ConfigError,
        match=r"CP_PIPE_DIR and CP_VERIFY_DIR are not set .* set up cp_pipe and "
        r"cp_verify \(`setup cp_pipe; setup cp_verify`\)",
    ):
        _configure({"calibration_pipelines": "science_pipelines"})
    # Set, but without the instrument's pipelines.
    monkeypatch.setenv("CP_PIPE_DIR", str(tmp_path / "cp_pipe"))
    monkeypatch.setenv("CP_VERIFY_DIR", str(tmp_path / "cp_verify"))
    with pytest.raises(ConfigError) as err:
        _configure({"calibration_pipelines": "science_pipelines", "do_verify": False})
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(
        "calibration_pipelines: science_pipelines: pipeline file(s) not found: "
        f"${{CP_PIPE_DIR}}/pipelines/LATISS/cpBias.yaml ({tmp_path}/cp_pipe/pipelines/LATISS/cpBias.yaml); "
    )
    assert str(err.value).endswith(
        ": point CP_PIPE_DIR to installs that have them, or choose calibration_pipelines: cp_combined"
    )


def test_pipeline_check_is_only_for_science_pipelines_and_can_be_left_to_ocps(monkeypatch):
    monkeypatch.delenv("CP_PIPE_DIR", raising=False)
    monkeypatch.delenv("CP_VERIFY_DIR", raising=False)
    assert _configure({}).state == ScriptState.CONFIGURED  # cp_combined (default)
    # OCPS resolves the paths in its own environment: no check here, paths stay unexpanded.
    core = _configure({"calibration_pipelines": "science_pipelines"}, check_pipelines=False)
    assert core.state == ScriptState.CONFIGURED
    assert core.pipeline_paths()["verifyDark"] == "${CP_VERIFY_DIR}/pipelines/LATISS/verifyDark.yaml"
    with pytest.raises(ConfigError, match="calibration_pipelines: 'cp_pipe' is not one of"):
        _configure({"calibration_pipelines": "cp_pipe"})


def test_check_pipeline_files_expands_like_the_services(tmp_path):
    (tmp_path / "a.yaml").write_text("x")
    check_pipeline_files(["$PKG/a.yaml#sub", "${PKG}/a.yaml"], {"PKG": str(tmp_path)})
    # CPCOMBINED_DIR defaults to the package root, as the local services do.
    check_pipeline_files([pipeline_path("decideFlat", "LSSTComCam")], {})
    with pytest.raises(ConfigError, match=r"pipelines: pipeline file\(s\) not found: \$PKG/b.yaml"):
        check_pipeline_files(["$PKG/b.yaml"], {"PKG": str(tmp_path)})
