"""A procedure killed at any moment and run again gives the products an
uninterrupted run gives (same configuration and seed): identical pixels.

Each killed run is a ``cpcombined run`` subprocess that SIGKILLs itself at a
chosen moment (a wrapper replaces one function of the package by one that
kills the process right after or before the real work); the same command is
then run again in this process and resumes the run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from lsst.cpcombined.repo.exposure_fits import read_exposure_fits
from lsst.cpcombined.script.runner import run_procedure
from lsst.daf.butler import Butler

CONFIG = {
    "instrument": "LATISS",
    "script_mode": "BIAS_DARK",
    "generate_calibrations": True,
    "do_verify": True,
    "n_bias": 4,
    "n_discard_bias": 1,
    "n_dark": 3,
    "n_discard_dark": 1,
    "exp_times_dark": 10,
    "n_processes": 1,
    "calib_collection": "LATISS/calib/daily",
    "certify_calib_begin_date": "2020-01-01",
    "certify_calib_end_date": "2040-01-01",
    "simulation": {"seed": 11, "geometry_scale": 0.0625},
    "execution": {"pipeline_mode": "inprocess", "max_jobs": 1},
}

#: Where each kill happens: (module, function, when, condition) — the wrapper
#: kills the process when the function is called for the n-th time, before
#: or after the real call.
KILLS = {
    # The third bias frame is taken (ingested) but not recorded.
    "acquisition": ("lsst.cpcombined.script.local", "LocalSimulatedCamera.take_imgtype", "after", 3),
    # The dark generation job is running (its output partly written).
    "generation": ("lsst.cpcombined.script.local", "run_pipetask", "during:cpDark", 1),
    # The bias verification job has finished, its result not recorded.
    "verification": ("lsst.cpcombined.script.local", "run_pipetask", "after:verifyBias", 1),
    # The bias is certified; nothing after it happened.
    "certification": ("lsst.cpcombined.repo.certify", "certify_calibration", "after", 1),
}

WRAPPER = textwrap.dedent(
    """
    import os, signal, sys, importlib, functools, inspect, threading
    module_name, qualname, when, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    module = importlib.import_module(module_name)
    owner, _, name = qualname.rpartition(".")
    target = getattr(module, owner) if owner else module
    original = getattr(target, name)
    calls = [0]

    def matches(args):
        if ":" not in when:
            return True
        pipeline = next((a for a in args[0] if str(a).endswith(".yaml")), "") if args and isinstance(args[0], list) else ""
        return when.split(":", 1)[1] + ".yaml" in str(pipeline)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if inspect.iscoroutinefunction(original):
        async def wrapped(*args, **kwargs):
            result = await original(*args, **kwargs)
            calls[0] += 1
            if calls[0] == nth:
                die()
            return result
    else:
        def wrapped(*args, **kwargs):
            if when.startswith("during") and matches(args):
                calls[0] += 1
                if calls[0] == nth:
                    threading.Timer(1.5, die).start()
                return original(*args, **kwargs)
            result = original(*args, **kwargs)
            if matches(args):
                calls[0] += 1
                if calls[0] == nth:
                    die()
            return result
    setattr(target, name, wrapped)
    from lsst.cpcombined.cli.main import main
    sys.exit(main(sys.argv[5:]))
    """
)


def _write_config(path: Path) -> Path:
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def _pixel_hashes(repo: Path) -> dict[str, str]:
    """SHA-256 of the pixels (image, variance, mask) of every certified
    product, by dataset type."""
    butler = Butler.from_config(str(repo))
    out = {}
    for dataset_type in ("bias", "dark"):
        (ref,) = butler.query_datasets(dataset_type, collections="LATISS/calib/daily", explain=False)
        mi = read_exposure_fits(butler.getURI(ref).ospath)
        digest = hashlib.sha256()
        for array in (mi.image.array, mi.variance.array, mi.mask.array):
            digest.update(array.tobytes())
        out[dataset_type] = digest.hexdigest()
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    base = tmp_path_factory.mktemp("clean")
    code, summary = run_procedure(_write_config(base / "c.yaml"), repo=base / "repo")
    assert code == 0, summary.error
    return _pixel_hashes(base / "repo")


@pytest.mark.parametrize("moment", list(KILLS))
def test_killed_run_resumes_to_identical_products(tmp_path, clean, moment):
    config = _write_config(tmp_path / "c.yaml")
    repo = tmp_path / "repo"
    module, function, when, nth = KILLS[moment]
    cmd = [
        sys.executable,
        "-c",
        WRAPPER,
        module,
        function,
        when,
        str(nth),
        "--log-level",
        "WARNING",
        "run",
        str(config),
        "--repo",
        str(repo),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert proc.returncode == -9, f"the run was not killed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    (state_file,) = (repo / "cpcombined" / "runs" / "LATISS").glob("*.json")
    state = json.loads(state_file.read_text())
    assert state["status"] == "running"
    if moment == "acquisition":
        assert state["acquiring"]["bias"]["taken"] == 2  # the third frame was taken but not recorded
    code, summary = run_procedure(config, repo=repo)
    assert code == 0, summary.error
    assert summary.run_id == state["run_id"]
    assert _pixel_hashes(repo) == clean
    butler = Butler.from_config(str(repo))
    # Exactly one certified bias and dark; the kill left nothing doubled.
    for dataset_type in ("bias", "dark"):
        refs = butler.query_datasets(
            dataset_type, collections="LATISS/calib/daily", find_first=False, explain=False
        )
        assert len(refs) == 1
