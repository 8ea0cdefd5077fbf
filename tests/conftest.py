"""Shared pytest configuration and fixtures for cp_combined."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Real camera data shipped next to the project (skipped when absent).
REAL_DATA = Path(os.environ.get("CPCOMBINED_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))


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
    from lsst.cpcombined.repo import create_repo

    return create_repo(tmp_path / "repo")


def exposure_query(instrument: str, exposures) -> str:
    """Data query selecting some exposures of an instrument."""
    return f"instrument='{instrument}' AND exposure IN ({', '.join(str(int(e)) for e in exposures)})"


def run_cp_pipeline(repo_root, instrument: str, name: str, *, inputs, output: str, exposures, config=None,
                    extra=()):
    """Run ``pipelines/<instrument>/<name>.yaml`` with the in-process pipetask.

    Returns the `~lsst.cpcombined.pipetask.PipetaskResult`.
    """
    from lsst.cpcombined.pipetask import pipetask_run_args, run_pipetask

    pipeline = Path(__file__).resolve().parents[1] / "pipelines" / instrument / f"{name}.yaml"
    args = pipetask_run_args(
        repo_root, pipeline, inputs=inputs, output=output,
        data_query=exposure_query(instrument, exposures), config=config, extra=extra, log_level="WARNING",
    )
    return run_pipetask(args)
