"""The script core: configuration validation, the ScriptQueue contract,
job-status checking and overlap of processing with acquisition (with fake
camera and pipeline service)."""

from __future__ import annotations

import asyncio
import itertools
import time
import types

import pytest
from lsst.cpcombined.script import (
    ConfigError,
    JobResult,
    MakeCalibrationsCore,
    ProcedureError,
    ScriptState,
    get_schema,
    validate_config,
)


class FakeCamera:
    read_out_time = 2.0

    def __init__(self, delay: float = 0.0) -> None:
        self.ids = itertools.count(2026112500001)
        self.calls: list[tuple] = []
        self.delay = delay

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
        await asyncio.sleep(self.delay)
        self.calls.append((imgtype, exptime, n, discard, time.monotonic()))
        return [next(self.ids) for _ in range(n)]


class FakeWaiter:
    async def wait_for_raws(self, exposures, detectors, timeout):
        return None


class FakePipelines:
    """Fails jobs whose pipeline contains ``fail_on``; records everything."""

    def __init__(self, fail_on: str | None = None, delay: float = 0.0, phase: str = "error") -> None:
        self.fail_on = fail_on
        self.delay = delay
        self.phase = phase
        self.jobs: dict[str, dict] = {}

    async def execute(self, pipeline, version, config, data_query):
        job_id = f"job{len(self.jobs) + 1}"
        self.jobs[job_id] = dict(pipeline=pipeline, config=config, query=data_query, start=time.monotonic())
        return job_id

    async def wait_result(self, job_id, timeout):
        await asyncio.sleep(self.delay)
        job = self.jobs[job_id]
        job["end"] = time.monotonic()
        if self.fail_on and self.fail_on in job["pipeline"]:
            return JobResult(
                jobId=job_id,
                phase=self.phase,
                exit_code=1,
                errors=["Exception CpInputError: exposure 1 is a DARK, not a BIAS"],
            )
        return JobResult(jobId=job_id, phase="completed", exit_code=0, output_collection=f"u/ocps/{job_id}")


def _core(repo_root, camera=None, pipelines=None):
    return MakeCalibrationsCore(
        "LATISS",
        camera=camera or FakeCamera(),
        raw_waiter=FakeWaiter(),
        pipelines=pipelines or FakePipelines(),
    )


# -- configuration ----------------------------------------------------------------


@pytest.mark.parametrize(
    "config, message",
    [
        ({"script_mode": "BIAS", "n_bais": 3}, "Additional properties are not allowed ('n_bais'"),
        ({"n_bias": 3}, "'script_mode' is a required property"),
        ({"script_mode": "FLATS"}, "'FLATS' is not one of"),
        ({"script_mode": "BIAS", "do_ptc": True}, "do_ptc needs script_mode BIAS_DARK_FLAT"),
        ({"script_mode": "BIAS_DARK", "do_defects": True}, "do_defects needs script_mode BIAS_DARK_FLAT"),
        (
            {"script_mode": "BIAS_DARK", "n_dark": 3, "exp_times_dark": [10, 20]},
            "exp_times_dark has 2 values but n_dark + n_discard_dark = 4",
        ),
        (
            {"script_mode": "BIAS_DARK_FLAT", "n_flat": 2, "n_discard_flat": 0, "exp_times_flat": [1, 2, 3]},
            "exp_times_flat has 3 values",
        ),
        ({"script_mode": "BIAS", "n_bias": 0}, "n_bias: 0 is less than the minimum of 1"),
        ({"script_mode": "BIAS", "n_bias": "20"}, "n_bias: '20' is not of type 'integer'"),
        ({"script_mode": "BIAS_DARK", "exp_times_dark": -5}, "exp_times_dark"),
        ({"script_mode": "BIAS", "detectors": [3]}, "detectors.0: 3 is not one of [0]"),
        ({"script_mode": "BIAS", "filter": "SDSSq~empty"}, "filter: 'SDSSq~empty' is not one of"),
        (
            {
                "script_mode": "BIAS",
                "certify_calib_begin_date": "2030-01-01",
                "certify_calib_end_date": "2020-01-01",
            },
            "is not after",
        ),
        (
            {"script_mode": "BIAS", "certify_calib_end_date": "next week"},
            "certify_calib_end_date 'next week' is not a date",
        ),
        (
            {"script_mode": "BIAS", "generate_calibrations": False, "do_verify": False},
            "nothing would be done",
        ),
        (
            {"script_mode": "BIAS_DARK_FLAT", "do_ptc": True, "exp_times_flat": 5},
            "do_ptc needs flats at several exposure times",
        ),
    ],
)
def test_configure_rejects(config, message):
    with pytest.raises(ConfigError) as err:
        validate_config(config, "LATISS")
    assert message in str(err.value)


def test_configure_state(tmp_path):
    core = _core(tmp_path)
    assert core.state == ScriptState.UNCONFIGURED
    with pytest.raises(ConfigError):
        asyncio.run(core.configure({"script_mode": "BIAS", "oops": 1}))
    assert core.state == ScriptState.CONFIGURE_FAILED
    asyncio.run(core.configure({"script_mode": "BIAS", "repo": str(tmp_path)}))
    assert core.state == ScriptState.CONFIGURED


def test_schema_defaults_per_instrument():
    latiss = get_schema("LATISS")["properties"]
    comcam = get_schema("LSSTComCam")["properties"]
    assert latiss["n_bias"]["default"] == 20 and latiss["n_dark"]["default"] == 22
    assert latiss["n_flat"]["default"] == 20 and latiss["exp_times_flat"]["default"] == 5
    assert latiss["calib_collection"]["default"] == "LATISS/calib/daily"
    assert latiss["input_collections_verify_bias"]["default"] == "LATISS/calib"
    assert comcam["calib_collection"]["default"] == "LSSTComCam/calib/daily"
    assert comcam["detectors"]["default"] == list(range(9))
    assert latiss["detectors"]["default"] == [0]
    assert latiss["number_verification_tests_threshold_flat"]["default"] == 8
    cfg = validate_config(
        {"script_mode": "BIAS_DARK", "n_dark": 2, "n_discard_dark": 1, "exp_times_dark": [3, 4, 5]}
    )
    assert cfg.exposure_times("dark") == [3.0, 4.0, 5.0]
    assert cfg.exposure_times("bias") == [0.0] * 21


def test_set_metadata_duration(tmp_path):
    core = _core(tmp_path)
    asyncio.run(
        core.configure(
            {
                "script_mode": "BIAS_DARK",
                "n_bias": 5,
                "n_dark": 5,
                "exp_times_dark": 30,
                "repo": str(tmp_path),
            }
        )
    )
    md = types.SimpleNamespace()
    core.set_metadata(md)
    # At least the exposure time of the darks plus read-out of every frame.
    assert md.duration >= 6 * 30 + 12 * 2.0


# -- running --------------------------------------------------------------------------


def test_failed_job_fails_script_with_its_error(repo, tmp_path):
    pipelines = FakePipelines(fail_on="cpBias")
    core = _core(tmp_path, pipelines=pipelines)
    asyncio.run(
        core.configure(
            {
                "script_mode": "BIAS_DARK",
                "n_bias": 3,
                "n_dark": 3,
                "generate_calibrations": True,
                "repo": str(tmp_path / "repo"),
            }
        )
    )
    with pytest.raises(ProcedureError) as err:
        asyncio.run(core.run())
    assert "cpBias job job1 error" in str(err.value)
    assert "is a DARK, not a BIAS" in str(err.value)
    assert core.state == ScriptState.FAILED
    assert core.summary.success is False and "DARK, not a BIAS" in core.summary.error
    assert [s.status for s in core.summary.steps if s.name == "cpBias"] == ["failed"]
    # Nothing after the failure was submitted (no dark generation, no certification).
    assert all("cpDark" not in j["pipeline"] for j in pipelines.jobs.values())
    assert not core.summary.calibrations["bias"].certified


def test_timed_out_job_fails_script(repo, tmp_path):
    pipelines = FakePipelines(fail_on="verifyBias", phase="aborted")
    core = _core(tmp_path, pipelines=pipelines)
    asyncio.run(
        core.configure(
            {
                "script_mode": "BIAS",
                "n_bias": 2,
                "generate_calibrations": False,
                "repo": str(tmp_path / "repo"),
            }
        )
    )
    with pytest.raises(ProcedureError, match="verifyBias job job1 aborted"):
        asyncio.run(core.run())


def test_processing_overlaps_next_acquisition(repo, tmp_path):
    camera = FakeCamera(delay=0.05)
    pipelines = FakePipelines(delay=0.5)
    core = _core(tmp_path, camera=camera, pipelines=pipelines)
    asyncio.run(
        core.configure(
            {
                "script_mode": "BIAS_DARK",
                "n_bias": 2,
                "n_dark": 4,
                "generate_calibrations": False,
                "repo": str(tmp_path / "repo"),
            }
        )
    )
    with pytest.raises(ProcedureError):
        # The fake verification writes no decision dataset, so reading it
        # fails; by then the dark acquisition has run concurrently.
        asyncio.run(core.run())
    bias_job = next(j for j in pipelines.jobs.values() if "verifyBias" in j["pipeline"])
    dark_takes = [c[4] for c in camera.calls if c[0] == "DARK"]
    assert dark_takes, "darks were not acquired"
    assert dark_takes[0] < bias_job["end"], "dark acquisition waited for bias processing"
    # Discarded frames first, one per call.
    assert [c[3] for c in camera.calls if c[0] == "BIAS"] == [True, False, False]


def test_core_imports_no_sal():
    import subprocess
    import sys

    code = (
        "import sys, lsst.cpcombined.script, lsst.cpcombined.script.local;"
        "bad = [m for m in sys.modules if m.startswith('lsst.ts')]; print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_ocps_result_shape():
    r = JobResult(jobId="j1", phase="error", exit_code=1, errors=["boom"])
    payload = r.as_ocps()
    assert payload["jobId"] == "j1" and payload["phase"] == "error"
    assert JobResult.from_ocps(payload) == r
    assert not r.ok and JobResult.from_ocps({"jobId": "j2", "phase": "completed"}).ok


@pytest.mark.parametrize(
    "execution, message",
    [
        ({"pipeline_mode": "cloud"}, "pipeline_mode must be one of"),
        ({"max_jobs": 0}, "max_jobs must be a positive integer"),
        ({"max_jobs": "2"}, "max_jobs must be a positive integer"),
        ({"threads": 2}, "unknown execution keys"),
    ],
)
def test_run_config_rejects_bad_execution(tmp_path, execution, message):
    import yaml
    from lsst.cpcombined.script.runner import load_run_config

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"instrument": "LATISS", "script_mode": "BIAS", "execution": execution}))
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert message in str(err.value)


def test_run_config_max_jobs_reaches_the_pipeline_service(tmp_path):
    from lsst.cpcombined.script.runner import _pipeline_service

    assert _pipeline_service(tmp_path, {"max_jobs": 3}).max_jobs == 3
    assert _pipeline_service(tmp_path, {}).max_jobs >= 1


def test_local_service_kills_its_subprocess_when_the_procedure_stops(tmp_path, monkeypatch):
    """A pipetask subprocess nobody waits for any more (the procedure failed
    or ended) is killed, not left writing to the repository."""
    from lsst.cpcombined.script import local

    started = {}
    real_exec = asyncio.create_subprocess_exec

    async def fake_exec(*args, **kwargs):
        started["proc"] = await real_exec("sleep", "60", **kwargs)
        return started["proc"]

    monkeypatch.setattr(local.asyncio, "create_subprocess_exec", fake_exec)
    service = local.LocalPipelineService(tmp_path, mode="subprocess")

    async def main():
        await service.execute("pipeline.yaml", "", "-i LATISS/raw/all -o out", "instrument='LATISS'")
        await asyncio.sleep(0.5)  # the job runs; the procedure stops here

    t0 = time.monotonic()
    asyncio.run(main())  # cancels the job's task at shutdown
    proc = started["proc"]
    assert proc.returncode is not None and proc.returncode < 0  # killed
    assert time.monotonic() - t0 < 10


def test_local_service_runs_overflow_jobs_in_a_reused_warm_worker(tmp_path):
    """In-process mode: a job submitted while another runs goes to a warm
    worker process, which is reused by the next job and reports pipetask's
    error like the in-process path; a killed worker reports that it died."""
    from lsst.cpcombined.script import local
    from lsst.cpcombined.script.worker import WarmWorker, WorkerDied

    service = local.LocalPipelineService(tmp_path / "no-repo", mode="inprocess", max_jobs=2)
    config = "-i LATISS/raw/all -o out"

    async def main():
        ids = [await service.execute("pipeline.yaml", "", config, "instrument='LATISS'") for _ in range(2)]
        results = [await service.wait_result(i, 120) for i in ids]
        assert len(service._idle_workers) == 1
        pid = service._idle_workers[0].pid
        ids = [await service.execute("pipeline.yaml", "", config, "instrument='LATISS'") for _ in range(2)]
        results += [await service.wait_result(i, 120) for i in ids]
        assert [w.pid for w in service._idle_workers] == [pid]  # reused, not restarted
        return results

    try:
        results = asyncio.run(main())
    finally:
        service.close()
    assert all(r.phase == "error" and r.exit_code != 0 for r in results)
    # The worker's failure names the cause just as the in-process one does.
    assert len(results) == 4 and all("pipeline.yaml" in r.errors[0] for r in results), results

    worker = WarmWorker()
    worker.kill()
    assert not worker.alive
    with pytest.raises(WorkerDied, match="ended"):
        worker.run(["--help"])


def test_local_service_modes_and_arguments(tmp_path):
    """``-j`` is dropped where jobs run in one interpreter (in-process and
    warm workers) and kept for subprocesses; an unknown mode is refused."""
    from lsst.cpcombined.script import local

    config = "-j 4 -i LATISS/raw/all -o out/x --register-dataset-types"
    for mode, keeps_j in (("inprocess", False), ("workers", False), ("subprocess", True)):
        args, output = local.LocalPipelineService(tmp_path, mode=mode).build_args(
            "p.yaml", config, "q", "job"
        )
        assert output == "out/x"
        assert ("-j" in args) is keeps_j, (mode, args)
        assert args[args.index("-d") + 1] == "q" and args[args.index("-b") + 1] == str(tmp_path)
    with pytest.raises(ValueError, match="'inprocess', 'workers' or 'subprocess'"):
        local.LocalPipelineService(tmp_path, mode="threads")


def test_registry_calls_run_on_one_thread_one_at_a_time(repo, tmp_path, monkeypatch):
    """The core's butler is used from one thread, never by two calls at once
    (a certification in a thread beside a collection lookup on the event
    loop once failed with SQLite's "cannot start a transaction within a
    transaction")."""
    import threading

    import lsst.cpcombined.repo.certify as certify_module
    import lsst.cpcombined.script.core as core_module

    calls: list[tuple[str, str, float, float]] = []

    def recorded(name, func, pause=0.0):
        def wrapper(*args, **kwargs):
            t0 = time.monotonic()
            time.sleep(pause)
            try:
                return func(*args, **kwargs)
            finally:
                calls.append((name, threading.current_thread().name, t0, time.monotonic()))

        return wrapper

    monkeypatch.setattr(
        core_module, "collection_exists", recorded("exists", core_module.collection_exists, 0.02)
    )

    def fake_certify(*args, dataset_type, run, calib_collection, begin, end, **kwargs):
        return certify_module.CertifyResult(
            dataset_type=dataset_type,
            run=run,
            calib_collection=calib_collection,
            begin=str(begin),
            end=str(end),
            certified=(),
            already_certified=(),
        )

    monkeypatch.setattr(certify_module, "certify_calibration", recorded("certify", fake_certify, 0.3))
    core = _core(tmp_path, pipelines=FakePipelines(delay=0.05))
    asyncio.run(
        core.configure(
            {
                "script_mode": "BIAS_DARK",
                "n_bias": 2,
                "n_dark": 2,
                "generate_calibrations": True,
                "do_verify": False,
                "repo": str(tmp_path / "repo"),
            }
        )
    )
    try:
        asyncio.run(core.run())
    finally:
        asyncio.run(core.cleanup())
    assert core.summary.calibrations["bias"].certified and core.summary.calibrations["dark"].certified
    names = [c[0] for c in calls]
    assert names.count("certify") == 2 and "exists" in names
    assert {c[1] for c in calls} == {"cpcombined-registry_0"}
    spans = sorted((c[2], c[3]) for c in calls)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)), (
        "registry calls overlapped"
    )


def test_child_of_a_parent_already_gone_ends_at_once():
    """A worker whose procedure was killed while the worker was still
    starting (before it could ask for SIGKILL on its parent's death) must not
    go on to run a job left in its pipe: die_with_parent ends it when its
    parent is no longer the one that started it."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from lsst.cpcombined.script.worker import die_with_parent\n"
        "die_with_parent(os.getppid() + int(sys.argv[1]))\n"
        "print('alive')\n"
    )
    same = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True, timeout=120)
    assert same.returncode == 0 and same.stdout.strip() == "alive"
    gone = subprocess.run(
        [sys.executable, "-c", code, "1000000"], capture_output=True, text=True, timeout=120
    )
    assert gone.returncode == -9 and "alive" not in gone.stdout


def test_schema_command_prints_yaml_that_reads_back(capsys):
    import yaml
    from lsst.cpcombined.cli.main import main as cli_main
    from lsst.cpcombined.script.schema import get_schema

    assert cli_main(["schema", "--instrument", "LSSTComCam"]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text) == get_schema("LSSTComCam")
    assert "\n  certify_chain:\n" in text and max(len(line) for line in text.splitlines()) < 140
