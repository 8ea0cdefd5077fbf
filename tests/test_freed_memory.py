"""Tests of the reuse of freed memory during a run
(`lsst.cpcombined.script.memory`)."""

import os
import resource

import numpy as np
import pytest
import yaml
from lsst.cpcombined.script.memory import MALLOC_ENVIRONMENT, _glibc, freed_memory_reused
from lsst.cpcombined.script.runner import load_run_config
from lsst.cpcombined.script.schema import ConfigError

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="the C library is not glibc")


def _page_faults_per_plane(n: int = 8) -> float:
    """Minor page faults per full-size LATISS float32 plane (65 MB) made and
    freed, after one that is not counted."""
    a = np.ones((4072, 4000), dtype=np.float32)
    _ = a + a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        b = a + a
        del b
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


@needs_glibc
def test_freed_planes_are_reused_in_scope_and_given_back_after(monkeypatch):
    """In the scope a freed full-frame array's pages serve the next one (no
    new page faults) and the children get the settings through the
    environment; after it glibc's defaults and the environment are back."""
    for name in MALLOC_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    outside = _page_faults_per_plane()
    with freed_memory_reused() as applied:
        assert sorted(applied) == sorted(MALLOC_ENVIRONMENT)
        assert {name: os.environ[name] for name in applied} == MALLOC_ENVIRONMENT
        inside = _page_faults_per_plane()
    after = _page_faults_per_plane()
    assert outside > 20 and inside < 2 and after > 20, (outside, inside, after)
    assert not set(MALLOC_ENVIRONMENT) & set(os.environ)


@needs_glibc
def test_settings_the_user_made_are_kept(monkeypatch):
    for name in MALLOC_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    with freed_memory_reused() as applied:
        assert "MALLOC_ARENA_MAX" not in applied and os.environ["MALLOC_ARENA_MAX"] == "4"
        assert "MALLOC_MMAP_MAX_" in applied
    assert os.environ["MALLOC_ARENA_MAX"] == "4" and "MALLOC_MMAP_MAX_" not in os.environ


def test_disabled_changes_nothing(monkeypatch):
    for name in MALLOC_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    with freed_memory_reused(False) as applied:
        assert applied == [] and not set(MALLOC_ENVIRONMENT) & set(os.environ)


def test_run_configuration_option(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"execution": {"reuse_freed_memory": False}}))
    assert load_run_config(path).execution["reuse_freed_memory"] is False
    path.write_text(yaml.safe_dump({"execution": {"reuse_freed_memory": "no"}}))
    with pytest.raises(ConfigError, match="reuse_freed_memory must be true or false"):
        load_run_config(path)
