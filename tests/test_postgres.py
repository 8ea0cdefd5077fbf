"""A shared PostgreSQL registry: ``cpcombined init --registry``, two
procedures writing to the same repository at once, and concurrent
certifications into one calibration collection.

Needs a PostgreSQL 15 server: the session fixture ``postgres_url``
(tests/conftest.py) starts a throwaway one on 127.0.0.1 and skips these
tests when the server binaries are missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import postgres_database
from lsst.cpcombined.algorithms import defects as defects_algo
from lsst.cpcombined.cli.main import main as cli_main
from lsst.cpcombined.repo import certify as certify_module
from lsst.cpcombined.repo.certify import CertificationConflict, certify_calibration
from lsst.cpcombined.repo.create import create_repo
from lsst.daf.butler import Butler, CollectionType, DatasetType

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[1]


def _extensions(url: str) -> set[str]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return {r[0] for r in conn.execute(sqlalchemy.text("SELECT extname FROM pg_extension"))}
    finally:
        engine.dispose()


def _check_new_repo(root: Path, url: str) -> None:
    config = yaml.safe_load((root / "butler.yaml").read_text())
    assert config["registry"]["db"] == url
    assert "btree_gist" in _extensions(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    butler = Butler.from_config(str(root))
    names = {r.name for r in butler.registry.queryDimensionRecords("instrument")}
    assert names == {"LATISS", "LSSTComCam"}
    assert len(list(butler.registry.queryDimensionRecords("detector", instrument="LSSTComCam"))) == 9


def test_init_cli_creates_postgres_repo_and_extension(postgres_url, tmp_path):
    # A brand-new database without btree_gist: init creates the extension.
    url = postgres_database(postgres_url, "init_cli")
    assert "btree_gist" not in _extensions(url)
    root = tmp_path / "repo"
    assert cli_main(["init", str(root), "--registry", url]) == 0
    _check_new_repo(root, url)
    # The database now holds a registry: a second repo on it is refused.
    try:
        code = cli_main(["init", str(tmp_path / "again"), "--registry", url])
    except Exception:  # noqa: BLE001 - refused either way
        code = 1
    assert code != 0


def test_init_cli_plain_postgresql_url(postgres_url, tmp_path):
    """``cpcombined init REPO --registry postgresql://...`` (the README form)."""
    url = postgres_database(postgres_url, "init_plain").replace("postgresql+psycopg2://", "postgresql://", 1)
    root = tmp_path / "repo"
    assert cli_main(["init", str(root), "--registry", url]) == 0
    config = yaml.safe_load((root / "butler.yaml").read_text())
    assert config["registry"]["db"].split("://", 1)[1] == url.split("://", 1)[1]
    Butler.from_config(str(root))


# -- two procedures at once --------------------------------------------------------------

PROCEDURES = {
    "LATISS": {
        "instrument": "LATISS",
        "script_mode": "BIAS",
        "n_bias": 5,
        "n_discard_bias": 0,
        "calib_collection": "LATISS/calib/shared",
        "simulation": {"seed": 3, "geometry_scale": 0.125},
    },
    "LSSTComCam": {
        "instrument": "LSSTComCam",
        "script_mode": "BIAS",
        "n_bias": 4,
        "n_discard_bias": 0,
        "detectors": [0, 4],
        "calib_collection": "LSSTComCam/calib/shared",
        "simulation": {"seed": 4, "geometry_scale": 0.0625},
    },
}


def test_two_procedures_write_to_one_repo_at_once(postgres_url, tmp_path):
    """Two ``cpcombined run`` processes (LATISS and ComCam: simulate, ingest,
    generate, verify, certify) on one PostgreSQL repository at the same time."""
    url = postgres_database(postgres_url, "two_procedures")
    root = tmp_path / "repo"
    create_repo(root, registry_db=url)
    procs = {}
    env = {**os.environ, "CPCOMBINED_DIR": str(ROOT)}
    for name, cfg in PROCEDURES.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            **cfg, "generate_calibrations": True, "do_verify": True, "do_defects": False, "do_ptc": False,
            "certify_calib_begin_date": "2020-01-01", "certify_calib_end_date": "2050-01-01",
            "execution": {"pipeline_mode": "inprocess"}, "certify_chain": f"{name}/calib",
        }))
        cmd = [
            sys.executable,
            "-c",
            "import sys; from lsst.cpcombined.cli.main import main; sys.exit(main())",
            "--log-level",
            "WARNING",
            "run",
            str(path),
            "--repo",
            str(root),
            "--summary-json",
            str(tmp_path / f"{name}.json"),
        ]
        procs[name] = (
            time.monotonic(),
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        )
    spans = {}
    for name, (t0, proc) in procs.items():
        out, _ = proc.communicate(timeout=300)
        spans[name] = (t0, time.monotonic())
        assert proc.returncode == 0, f"{name} procedure failed:\n{out[-3000:]}"
    # They did run at the same time (each takes well over the start-up gap).
    (a0, a1), (b0, b1) = spans.values()
    assert max(a0, b0) < min(a1, b1)
    butler = Butler.from_config(str(root))
    for name, cfg in PROCEDURES.items():
        summary = json.loads((tmp_path / f"{name}.json").read_text())
        assert summary["success"], summary["error"]
        assert summary["calibrations"]["bias"]["certified"]
        assert summary["calibrations"]["bias"]["decision"] == "pass"
        n_det = len(cfg.get("detectors", [0]))
        refs = butler.query_datasets(
            "bias", collections=cfg["calib_collection"], instrument=name, find_first=False, explain=False
        )
        assert len(refs) == n_det
        chain = butler.collections.get_info(f"{name}/calib")
        assert cfg["calib_collection"] in chain.children
        exposures = {
            r.dataId["exposure"]
            for r in butler.query_datasets(
                "raw", collections=f"{name}/raw/all", instrument=name, explain=False
            )
        }
        assert len(exposures) == cfg["n_bias"]


# -- concurrent certification --------------------------------------------------------------


@pytest.fixture(scope="module")
def race_repo(postgres_url, tmp_path_factory):
    """A PostgreSQL repo with a ``defects`` dataset for LATISS detector 0 in
    each of the RUN collections race/a .. race/d."""
    url = postgres_database(postgres_url, "certify_race")
    root = tmp_path_factory.mktemp("race") / "repo"
    butler = create_repo(root, registry_db=url)
    butler.registry.registerDatasetType(
        DatasetType(
            "defects",
            ("instrument", "detector"),
            "ArrowAstropy",
            universe=butler.dimensions,
            isCalibration=True,
        )
    )
    for i, run in enumerate(("race/a", "race/b", "race/c", "race/d")):
        butler.collections.register(run)
        butler.put(
            defects_algo.boxes_to_table([[10 + i, 0, 1, 250]], shape=(500, 512)),
            "defects",
            instrument="LATISS",
            detector=0,
            run=run,
        )
    return root


def _race(root: Path, monkeypatch, jobs: dict[str, tuple[str, str]], calib: str):
    """Certify ``run -> (begin, end)`` from one thread (and butler) each,
    all having passed certify's own overlap check before any writes, so
    that the registry has to arbitrate."""
    barrier = threading.Barrier(len(jobs))
    classify = certify_module._classify

    def classify_then_wait(*args, **kwargs):
        result = classify(*args, **kwargs)
        barrier.wait(timeout=30)
        return result

    monkeypatch.setattr(certify_module, "_classify", classify_then_wait)
    outcome: dict[str, object] = {}

    def work(run: str, begin: str, end: str) -> None:
        butler = Butler.from_config(str(root), writeable=True)
        try:
            outcome[run] = certify_calibration(
                butler,
                dataset_type="defects",
                run=run,
                calib_collection=calib,
                begin=begin,
                end=end,
                chain="LATISS/calib",
            )
        except Exception as err:  # noqa: BLE001 - the test inspects it
            outcome[run] = err

    threads = [threading.Thread(target=work, args=(run, *span)) for run, span in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outcome


def test_concurrent_overlapping_certifications_one_wins(race_repo, monkeypatch):
    calib = "LATISS/calib/race"
    outcome = _race(
        race_repo,
        monkeypatch,
        {"race/a": ("2020-01-01", "2030-01-01"), "race/b": ("2025-01-01", "2035-01-01")},
        calib,
    )
    winners = [run for run, res in outcome.items() if not isinstance(res, Exception)]
    losers = {run: res for run, res in outcome.items() if isinstance(res, Exception)}
    assert len(winners) == 1 and len(losers) == 1, outcome
    ((loser, err),) = losers.items()
    assert isinstance(err, CertificationConflict), repr(err)
    assert "overlapping validity range" in str(err) and "nothing was certified" in str(err)
    assert calib in str(err)
    # The registry holds the winner's certification only.
    butler = Butler.from_config(str(race_repo))
    assocs = list(
        butler.registry.queryDatasetAssociations(
            "defects", collections=[calib], collectionTypes={CollectionType.CALIBRATION}
        )
    )
    assert [a.ref.run for a in assocs] == winners
    assert outcome[winners[0]].n_certified == 1
    assert butler.collections.get_info("LATISS/calib").children[0] == calib


def test_concurrent_disjoint_certifications_both_succeed(race_repo, monkeypatch):
    calib = "LATISS/calib/race_disjoint"
    outcome = _race(
        race_repo,
        monkeypatch,
        {"race/c": ("2020-01-01", "2025-01-01"), "race/d": ("2025-01-01", "2030-01-01")},
        calib,
    )
    assert all(not isinstance(res, Exception) for res in outcome.values()), outcome
    butler = Butler.from_config(str(race_repo))
    assocs = list(
        butler.registry.queryDatasetAssociations(
            "defects", collections=[calib], collectionTypes={CollectionType.CALIBRATION}
        )
    )
    assert sorted(a.ref.run for a in assocs) == ["race/c", "race/d"]
    assert list(butler.collections.get_info("LATISS/calib").children).count(calib) == 1
