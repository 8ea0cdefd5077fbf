"""Shared pytest configuration and fixtures for cp_combined."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Real camera data shipped next to the project (skipped when absent).
REAL_DATA = Path(
    os.environ.get("CPCOMBINED_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real")
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-fullsize", action="store_true", default=False, help="Also run full-size (4k x 4k) frame tests."
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-fullsize"):
        return
    skip = pytest.mark.skip(reason="full-size test: pass --run-fullsize to run it")
    for item in items:
        if "fullsize" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Directory of real LATISS/ComCam headers and raws (skip if missing)."""
    if not (REAL_DATA / "amplifiers.csv").exists():
        pytest.skip(f"real camera data not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture
def repo(tmp_path: Path):
    """A fresh embedded (SQLite) repository with both instruments registered."""
    from lsst.cpcombined.repo.create import create_repo

    return create_repo(tmp_path / "repo")


def exposure_query(instrument: str, exposures) -> str:
    """Data query selecting some exposures of an instrument."""
    return f"instrument='{instrument}' AND exposure IN ({', '.join(str(int(e)) for e in exposures)})"


def run_cp_pipeline(
    repo_root, instrument: str, name: str, *, inputs, output: str, exposures, config=None, extra=()
):
    """Run ``pipelines/<instrument>/<name>.yaml`` with the in-process pipetask.

    Returns the `~lsst.cpcombined.script.pipetask.PipetaskResult`.
    """
    from lsst.cpcombined.script.pipetask import pipetask_run_args, run_pipetask

    pipeline = Path(__file__).resolve().parents[1] / "pipelines" / instrument / f"{name}.yaml"
    args = pipetask_run_args(
        repo_root,
        pipeline,
        inputs=inputs,
        output=output,
        data_query=exposure_query(instrument, exposures),
        config=config,
        extra=extra,
        log_level="WARNING",
    )
    return run_pipetask(args)


# -- PostgreSQL ------------------------------------------------------------------------

#: Where the PostgreSQL 15 server binaries are (Debian's postgresql-15 package).
PG_BINDIR = Path(os.environ.get("CPCOMBINED_PG_BINDIR", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a database on a throwaway PostgreSQL 15 server (127.0.0.1,
    random port, temporary data directory, ``btree_gist`` created).

    The server is started for the session and stopped, and its data
    directory deleted, afterwards.  ``CPCOMBINED_POSTGRES_URL`` points the
    tests at an existing server's database instead (its role must be
    allowed to create databases).  Skips when the binaries are missing
    (``scripts/run_tests.sh`` installs Debian's postgresql-15 when it can).
    The URL names the psycopg2 driver (``postgresql+psycopg2://``).
    """
    import shutil
    import subprocess
    import tempfile

    external = os.environ.get("CPCOMBINED_POSTGRES_URL")
    if external:
        yield external
        return
    initdb, pg_ctl = PG_BINDIR / "initdb", PG_BINDIR / "pg_ctl"
    if not (initdb.exists() and pg_ctl.exists()):
        pytest.skip(
            f"PostgreSQL 15 server binaries not found in {PG_BINDIR} (install postgresql-15, "
            "or set CPCOMBINED_PG_BINDIR or CPCOMBINED_POSTGRES_URL)"
        )
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:  # initdb refuses to run as root: use the postgres system user
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' system user to run the server as")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root and runuser is missing: cannot start PostgreSQL as 'postgres'")
        prefix = [runuser, "-u", "postgres", "--"]
    # Not under pytest's tmp_path: its parents are private to root.
    base = Path(tempfile.mkdtemp(prefix="cpcombined-pg-"))
    data, log = base / "data", base / "server.log"
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    started = False
    try:
        subprocess.run(
            [
                *prefix,
                str(initdb),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        for _ in range(3):
            port = _free_port()
            proc = subprocess.run(
                [
                    *prefix,
                    str(pg_ctl),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=200",
                    "start",
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode == 0:
                started = True
                break
        if not started:
            text = log.read_text() if log.exists() else proc.stderr
            raise RuntimeError(f"could not start PostgreSQL: {text[-2000:]}")
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE cpcombined")
        conn.close()
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="cpcombined")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/cpcombined"
    finally:
        if started:
            subprocess.run(
                [*prefix, str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True
            )
        shutil.rmtree(base, ignore_errors=True)


def postgres_database(postgres_url: str, name: str) -> str:
    """Create (or re-create, empty) database ``name`` on the server of
    ``postgres_url`` and return its URL; a butler repository needs a
    database of its own."""
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    params = dict(host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database)
    conn = psycopg2.connect(**{k: v for k, v in params.items() if v is not None})
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return url.set(database=name).render_as_string(hide_password=False)
