"""BPS batch processing (ctrl_bps with the local parsl site) on a
PostgreSQL registry, checked against the in-process pipetask on SQLite.

The module fixture runs the LATISS bias + dark procedure (generation,
verification, majority decision, certification) with ``cpcombined run``'s
``pipeline_mode: bps`` on a PostgreSQL repository: every pipeline job is a
``bps submit`` workflow (clustered by detector, local parsl site, 2
cores).  The same raw files are then ingested into an SQLite repository
(same exposure ids, same pixels) and the same pipelines are run there with
the in-process ``pipetask`` (``conftest.run_cp_pipeline``); the combined
products and the verification results must be identical.
"""

from __future__ import annotations

import asyncio
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import postgres_database, run_cp_pipeline
from lsst.cpcombined.obs.ingest import ingest_raws
from lsst.cpcombined.repo.create import create_repo
from lsst.cpcombined.repo.exposure_fits import read_exposure_fits
from lsst.cpcombined.repo.products import read_input_provenance
from lsst.cpcombined.script.bps import (
    BpsPipelineService,
    bps_environment,
    read_workflow_status,
)
from lsst.cpcombined.script.runner import run_procedure
from lsst.cpcombined.simulation import SimulationTruth
from lsst.cpcombined.simulation.camera import SimulatedCamera
from lsst.daf.butler import Butler

ROOT = Path(__file__).resolve().parents[1]
RAW = "LATISS/raw/all"
N_BIAS, N_DARK = 6, 5
PROCEDURE = {
    "instrument": "LATISS",
    "script_mode": "BIAS_DARK",
    "generate_calibrations": True,
    "do_verify": True,
    "do_defects": False,
    "do_ptc": False,
    "n_bias": N_BIAS,
    "n_discard_bias": 0,
    "n_dark": N_DARK,
    "n_discard_dark": 0,
    "exp_times_dark": 30,
    "calib_collection": "LATISS/calib/bps",
    "certify_calib_begin_date": "2020-01-01",
    "certify_calib_end_date": "2050-01-01",
    "n_processes": 2,
    "simulation": {"seed": 17, "geometry_scale": 0.125},
}


def _run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def bps_vs_inprocess(postgres_url, tmp_path_factory):
    base = tmp_path_factory.mktemp("bps")
    pg_root = base / "pg"
    create_repo(pg_root, registry_db=postgres_database(postgres_url, "bps_procedure"))
    cfg_path = base / "procedure.yaml"
    cfg_path.write_text(yaml.safe_dump({
        **PROCEDURE, "execution": {"pipeline_mode": "bps", "bps_submit_root": str(base / "submit")},
    }))
    code, summary = run_procedure(cfg_path, repo=pg_root, summary_json=base / "summary.json")
    assert code == 0, summary.error
    pg = Butler.from_config(str(pg_root))

    # The same raws in an SQLite repository.
    sq_root = base / "sqlite"
    sq = create_repo(sq_root)
    raws = list(pg.query_datasets("raw", collections=RAW, instrument="LATISS", explain=False))
    result = ingest_raws(sq, [pg.getURI(r).ospath for r in raws], instrument="LATISS", transfer="symlink")
    assert len(result.ingested) == N_BIAS + N_DARK
    bias_exp = summary.calibrations["bias"].exposures
    dark_exp = summary.calibrations["dark"].exposures
    assert result.exposures == sorted(bias_exp + dark_exp)

    def run(name, inputs, output, exposures, config=None):
        res = run_cp_pipeline(sq_root, "LATISS", name, inputs=inputs, output=output, exposures=exposures,
                              config=config)
        assert res.ok, f"{name}: {res.error_summary()}"

    run("cpBias", [RAW], "gen/bias", bias_exp)
    run("verifyBias", ["gen/bias", RAW], "verify/bias", bias_exp)
    run("cpDark", ["gen/bias", RAW], "gen/dark", dark_exp)
    run("verifyDark", ["gen/dark", "gen/bias", RAW], "verify/dark", dark_exp)
    return types.SimpleNamespace(
        base=base, pg_root=pg_root, pg=pg, sq=Butler.from_config(str(sq_root)), summary=summary,
        bias_exp=bias_exp, dark_exp=dark_exp,
        submit_root=base / "submit",
    )


def _same_image(a, b) -> None:
    for plane in ("image", "variance"):
        x, y = getattr(a, plane).array, getattr(b, plane).array
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y, err_msg=plane)  # NaNs in the same places count as equal
    np.testing.assert_array_equal(a.mask.array, b.mask.array, err_msg="mask")


def _same_table(ta, tb) -> None:
    assert ta.colnames == tb.colnames and len(ta) == len(tb) > 0
    for name in ta.colnames:
        np.testing.assert_array_equal(np.asarray(ta[name]), np.asarray(tb[name]), err_msg=name)


@pytest.mark.postgres
def test_procedure_through_bps_matches_inprocess(bps_vs_inprocess):
    """One test (the fixture is expensive: under pytest-xdist every test
    using it on another worker would run it again)."""
    ns = bps_vs_inprocess
    summary = json.loads((ns.base / "summary.json").read_text())
    assert summary["success"]
    for calib in ("bias", "dark"):
        out = summary["calibrations"][calib]
        assert out["decision"] == "pass" and out["certified"]
        # Every job went through bps: its submission and per-job logs are kept.
        for label, job_id in out["jobs"].items():
            assert job_id.startswith("bps-"), (label, job_id)
            logs = ns.submit_root / job_id / "workflow" / "logs"
            assert (logs / "pipetaskInit").is_dir() and (logs / "finalJob").is_dir()
    # Clustered by detector: one job ran all 6 ISR quanta and the combine.
    bias_job = summary["calibrations"]["bias"]["jobs"]["cpBias"]
    logs = sorted(p.name for p in (ns.submit_root / bias_job / "workflow" / "logs").iterdir())
    assert logs == ["biasByDetector", "finalJob", "pipetaskInit"]
    status = read_workflow_status(ns.submit_root / bias_job / "workflow")
    assert status.ok and status.jobs == 1 and status.quanta_succeeded == N_BIAS + 1
    # Certified on the PostgreSQL registry.
    for calib in ("bias", "dark"):
        refs = ns.pg.query_datasets(calib, collections="LATISS/calib/bps", instrument="LATISS", explain=False)
        assert len(refs) == 1

    for calib, n_inputs in (("bias", N_BIAS), ("dark", N_DARK)):
        # Combined products: bit-identical to the in-process run on SQLite.
        gen = ns.summary.calibrations[calib].generated_collection
        a = read_exposure_fits(ns.pg.getURI(calib, instrument="LATISS", detector=0, collections=gen).ospath)
        b = read_exposure_fits(
            ns.sq.getURI(calib, instrument="LATISS", detector=0, collections=f"gen/{calib}").ospath
        )
        _same_image(a, b)
        assert len(read_input_provenance(a.metadata)) == len(read_input_provenance(b.metadata)) == n_inputs
        # Verification: same per-amp results, statistics and decision.
        label = calib.capitalize()
        ver = ns.summary.calibrations[calib].verification_collection
        _same_table(ns.pg.get(f"verify{label}Results", instrument="LATISS", collections=ver),
                    ns.sq.get(f"verify{label}Results", instrument="LATISS", collections=f"verify/{calib}"))
        sa = ns.pg.get(f"verify{label}Stats", instrument="LATISS", collections=ver)
        sb = ns.sq.get(f"verify{label}Stats", instrument="LATISS", collections=f"verify/{calib}")
        assert sa["SUCCESS"] == sb["SUCCESS"] and len(sa) == len(sb)
        da = ns.pg.get(f"cpcVerify{label}Decision", instrument="LATISS", collections=ver)
        db = ns.sq.get(f"cpcVerify{label}Decision", instrument="LATISS", collections=f"verify/{calib}")
        assert da["CERTIFY"] is db["CERTIFY"] is True


@pytest.fixture(scope="module")
def small_pg(postgres_url, tmp_path_factory):
    """A small PostgreSQL repo: 3 LATISS biases and 1 dark."""
    base = tmp_path_factory.mktemp("bps_small")
    root = base / "repo"
    butler = create_repo(root, registry_db=postgres_database(postgres_url, f"bps_small_{os.getpid()}"))
    camera = SimulatedCamera(butler, SimulationTruth("LATISS", {"seed": 5, "geometry_scale": 0.125}))
    return types.SimpleNamespace(base=base, root=root, biases=camera.take("bias", [0.0] * 3),
                                 darks=camera.take("dark", [30.0]))


@pytest.mark.postgres
def test_failing_quantum_gives_error_with_cause(small_pg):
    ns = small_pg
    service = BpsPipelineService(ns.root, submit_root=ns.base / "submit_fail")
    exposures = ns.biases + ns.darks
    query = f"instrument='LATISS' AND exposure IN ({', '.join(map(str, exposures))})"

    async def go():
        job = await service.execute("${CPCOMBINED_DIR}/pipelines/LATISS/cpBias.yaml", "",
                                    f"-j 2 -i {RAW} -o bad/type --register-dataset-types", query)
        return await service.wait_result(job, 300)

    res = _run(go())
    assert res.phase == "error" and res.exit_code != 0 and not res.ok
    cause = "; ".join(res.errors)
    assert "cpBiasIsr" in cause and f"exposure {ns.darks[0]}" in cause and "not a BIAS" in cause
    assert res.as_ocps()["jobId"] == res.jobId and res.output_collection == "bad/type"


@pytest.mark.postgres
def test_timeout_aborts_and_kills_workflow(small_pg):
    ns = small_pg
    service = BpsPipelineService(ns.root, submit_root=ns.base / "submit_timeout")
    query = f"instrument='LATISS' AND exposure IN ({', '.join(map(str, ns.biases))})"

    async def go():
        job = await service.execute("${CPCOMBINED_DIR}/pipelines/LATISS/cpBias.yaml", "",
                                    f"-i {RAW} -o slow/bias", query)
        res = await service.wait_result(job, 2.0)
        return res, service._jobs[job].process.pid

    res, pid = _run(go())
    assert res.phase == "aborted" and res.exit_code == -1
    assert "timed out after 2 s" in res.errors[0]
    with pytest.raises(ProcessLookupError):  # the whole process group (bps and its jobs) is gone
        os.killpg(pid, 0)


# -- configuration only (no server) ----------------------------------------------------


def test_submission_from_ocps_config(tmp_path):
    service = BpsPipelineService(tmp_path / "repo", submit_root=tmp_path / "submit",
                                 extra_config={"requestMemory": 8192})
    sub, output = service.build_submission(
        "${CPCOMBINED_DIR}/pipelines/LATISS/verifyBias.yaml",
        "-j 3 -i A,B -i C -o out/coll --register-dataset-types -c verifyBiasDecision:threshold=2 --fail-fast",
        "instrument='LATISS' AND exposure IN (1, 2)", "job1",
    )
    assert output == "out/coll"
    assert sub["pipelineYaml"] == str(ROOT / "pipelines" / "LATISS" / "verifyBias.yaml")
    assert sub["includeConfigs"] == [str(ROOT / "config" / "bps" / "local_parsl.yaml")]
    assert sub["payload"]["inCollection"] == "A,B,C" and sub["payload"]["output"] == "out/coll"
    assert sub["payload"]["dataQuery"] == "instrument='LATISS' AND exposure IN (1, 2)"
    assert sub["payload"]["butlerConfig"] == str(tmp_path / "repo")
    assert sub["extraQgraphOptions"] == "-c verifyBiasDecision:threshold=2"
    assert sub["extraRunQuantumOptions"] == "--fail-fast"
    assert sub["site"] == {"local": {"cores": 3}} and sub["requestMemory"] == 8192
    assert sub["submitPath"] == str(tmp_path / "submit" / "job1" / "workflow")
    _, default_out = service.build_submission("p.yaml", "-i A", "q", "job2")
    assert default_out == "u/ocps/job2"
    with pytest.raises(ValueError, match="may not set -b"):
        service.build_submission("p.yaml", "-i A -b other", "q", "job3")


def test_stopped_procedure_kills_its_workflow(tmp_path):
    """A workflow whose waiter is cancelled (the procedure stopped) is killed
    with its whole process group, not left writing to the repository."""
    fake_bps = tmp_path / "bps"
    fake_bps.write_text("#!/bin/sh\nsleep 60 &\nwait\n")  # a "workflow" with a child process
    fake_bps.chmod(0o755)
    service = BpsPipelineService(tmp_path / "repo", submit_root=tmp_path / "submit", bps_command=str(fake_bps))

    async def go():
        job = await service.execute("p.yaml", "", "-i A -o out", "q")
        waiter = asyncio.ensure_future(service.wait_result(job, 600))
        await asyncio.sleep(0.5)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return service._jobs[job].process

    proc = _run(go())
    assert proc.returncode is not None and proc.returncode < 0  # killed
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_bps_environment_for_pip_install():
    env = bps_environment({"PATH": "/usr/bin"})
    for var in ("CPCOMBINED_DIR", "CTRL_MPEXEC_DIR", "CTRL_BPS_DIR", "CTRL_BPS_PARSL_DIR", "DAF_BUTLER_DIR"):
        assert Path(env[var]).is_dir(), var
    bindir = env["PATH"].split(os.pathsep)[0]
    for exe in ("bps", "pipetask", "butler"):
        assert (Path(bindir) / exe).exists(), exe
    assert env["DAF_BUTLER_CONFIG_PATH"].split(os.pathsep)[0] == str(Path(env["CPCOMBINED_DIR"]) / "config")


def test_workflow_status_from_logs(tmp_path):
    logs = tmp_path / "logs"
    (logs / "darkByDetector").mkdir(parents=True)
    (logs / "finalJob").mkdir()
    (logs / "darkByDetector" / "darkByDetector_3.stderr").write_text(
        "INFO 2026-01-01T00:00:00 lsst.x ()(f.py:1) - Executed 1 quanta successfully, 0 failed and 3 remain "
        "out of total 4 quanta.\n"
        "ERROR 2026-01-01T00:00:01 lsst.pipe.base.single_quantum_executor (cpDarkIsr:{detector: 3})"
        "(f.py:2) - Execution of task 'cpDarkIsr' on quantum "
        "{instrument: 'LSSTComCam', detector: 3, exposure: 7} failed. "
        "Exception CpInputError: no bias for detector 3\n"
        "INFO 2026-01-01T00:00:02 lsst.x ()(f.py:1) - Executed 1 quanta successfully, 1 failed and 2 remain "
        "out of total 4 quanta.\n"
    )
    (logs / "finalJob" / "finalJob.stderr").write_text("INFO all good\n")
    bps_output = "parsl.app.errors.BashExitFailure: bash_app darkByDetector failed with unix exit code 1\n"
    status = read_workflow_status(tmp_path, bps_output)
    assert not status.ok
    assert status.quanta_succeeded == 1 and status.quanta_failed == 1 and status.quanta_not_run == 2
    assert status.failures == [
        "cpDarkIsr {instrument: 'LSSTComCam', detector: 3, exposure: 7}: CpInputError: no bias for detector 3"
    ]


@pytest.mark.postgres
def test_usdf_htcondor_site_transforms(small_pg, monkeypatch):
    """The HTCondor site config builds the same clustered workflow (checked
    with bps transform: no HTCondor scheduler here; the WMS class is
    swapped for the parsl one, which transform does not use)."""
    from lsst.ctrl.bps.drivers import transform_driver

    ns = small_pg
    for key, value in bps_environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ns.base)
    sub = ns.base / "usdf_submission.yaml"
    sub.write_text(
        yaml.safe_dump(
            {
                "includeConfigs": [str(ROOT / "config" / "bps" / "usdf_htcondor.yaml")],
                "pipelineYaml": str(ROOT / "pipelines" / "LATISS" / "cpBias.yaml"),
                "payload": {
                    "payloadName": "cpBias",
                    "butlerConfig": str(ns.root),
                    "inCollection": RAW,
                    "output": "usdf/cpBias",
                    "dataQuery": f"instrument='LATISS' AND exposure IN ({', '.join(map(str, ns.biases))})",
                },
                "submitPath": str(ns.base / "usdf_submit"),
            }
        )
    )
    config, workflow = transform_driver(str(sub), wms_service="lsst.ctrl.bps.parsl.ParslService")
    assert config["computeSite"] == "usdf" and config["provisionResources"] is True
    jobs = [workflow.get_job(name) for name in workflow]
    # A detector's ISR quanta and its combine in one job.
    assert sorted(job.label for job in jobs) == ["biasByDetector", "pipetaskInit"]
    by_det = next(j for j in jobs if j.label == "biasByDetector")
    assert by_det.quanta_counts == {"cpBiasIsr": 3, "cpBiasCombine": 1}
    assert by_det.request_memory == 4096 and by_det.number_of_retries == 3
    assert by_det.executable.src_uri.endswith("pipetask")
    assert workflow.get_final() is not None
