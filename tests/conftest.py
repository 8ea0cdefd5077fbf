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
