"""The whole procedure (``cpcombined run``) with the simulated camera and
local pipelines: end to end, injected faults, and kill/restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml
from lsst.cpcombined.script.runner import run_procedure
from lsst.daf.butler import Butler

SMALL = {"seed": 3, "geometry_scale": 0.125}


def _write(tmp_path: Path, name: str, doc: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def _certified(butler: Butler, collection: str) -> Counter:
    """(dataset type, data ID) → number of certifications in a collection."""
    counts: Counter = Counter()
    for dt in ("bias", "dark", "flat", "defects", "ptc"):
        try:
            refs = butler.query_datasets(dt, collections=collection, find_first=False, explain=False)
        except Exception:
            continue
        for ref in refs:
            counts[(dt, tuple(sorted(ref.dataId.required.items())))] += 1
    return counts


def test_latiss_daily_end_to_end(tmp_path):
    config = {
        "instrument": "LATISS",
        "script_mode": "BIAS_DARK_FLAT",
        "generate_calibrations": True,
        "do_defects": True,
        "do_ptc": True,
        "n_bias": 6,
        "n_dark": 5,
        "exp_times_dark": 20,
        "n_flat": 8,
        "n_discard_flat": 1,
        "exp_times_flat": [1, 1, 1, 4, 4, 7, 7, 10, 10],
        "calib_collection": "LATISS/calib/daily",
        "certify_calib_begin_date": "2020-01-01",
        "certify_calib_end_date": "2030-01-01",
        "simulation": SMALL,
    }
    repo = tmp_path / "repo"
    code, summary = run_procedure(_write(tmp_path, "c.yaml", config), repo=repo,
                                  summary_json=tmp_path / "s.json", report=tmp_path / "r.html")
    assert code == 0, summary.error
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["instrument"] == "LATISS" and doc["success"]
    for calib in ("bias", "dark", "flat", "defects", "ptc"):
        entry = doc["calibrations"][calib]
        assert entry["certified"] is True, calib
        assert entry["calib_collection"] == "LATISS/calib/daily"
        assert entry["validity"] == ["2020-01-01T00:00:00.000000", "2030-01-01T00:00:00.000000"]
        assert entry["generated_collection"].startswith("LATISS/calib/")
    for calib in ("bias", "dark", "flat"):
        assert doc["calibrations"][calib]["decision"] == "pass"
        assert doc["calibrations"][calib]["verification_collection"].startswith("LATISS/verify/")
    assert doc["calibrations"]["ptc"]["decision"] == "not-verified"
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in doc["steps"])
    butler = Butler.from_config(str(repo))
    counts = _certified(butler, "LATISS/calib/daily")
    assert sorted({k[0] for k in counts}) == ["bias", "dark", "defects", "flat", "ptc"]
    assert set(counts.values()) == {1}
    # Certified with the configured validity range, found by date.
    from astropy.time import Time
    from lsst.daf.butler import Timespan

    inside = Timespan(Time("2025-01-01", scale="tai"), Time("2025-01-02", scale="tai"))
    assert butler.find_dataset("bias", instrument="LATISS", detector=0, collections="LATISS/calib/daily",
                               timespan=inside) is not None
    outside = Timespan(Time("2031-01-01", scale="tai"), Time("2031-01-02", scale="tai"))
    assert butler.find_dataset("bias", instrument="LATISS", detector=0, collections="LATISS/calib/daily",
                               timespan=outside) is None
    report = (tmp_path / "r.html").read_text()
    assert "data:image/png;base64" in report and "Photon transfer curves" in report
    assert "http://" not in report.replace("http://json-schema", "") and "<script" not in report


def test_comcam_detector_list(tmp_path):
    config = {
        "instrument": "LSSTComCam",
        "script_mode": "BIAS_DARK_FLAT",
        "generate_calibrations": True,
        "do_defects": True,
        "n_bias": 4, "n_dark": 3, "exp_times_dark": 10, "n_flat": 4, "exp_times_flat": 3,
        "detectors": [0, 4],
        "do_gain_from_flat_pairs": False,  # 32-px amps: too small for the PTC edge cut
        "simulation": {**SMALL, "geometry_scale": 0.0625},
    }
    code, summary = run_procedure(_write(tmp_path, "c.yaml", config), repo=tmp_path / "repo")
    assert code == 0, summary.error
    counts = _certified(Butler.from_config(str(tmp_path / "repo")), "LSSTComCam/calib/daily")
    dets = {dict(k[1])["detector"] for k in counts}
    assert dets == {0, 4}
    assert {k[0] for k in counts} == {"bias", "dark", "flat", "defects"}


def _fault_config(n_faulty: int, mode: str) -> dict:
    return {
        "instrument": "LATISS",
        "script_mode": mode,
        "generate_calibrations": True,
        "n_bias": 10, "n_dark": 3, "exp_times_dark": 10,
        "simulation": {**SMALL, "faults": [
            {"image_type": "bias", "exposures": list(range(n_faulty)), "imaging_offset_adu": 40}
        ]},
    }


def test_majority_of_faulty_biases_fails_and_certifies_nothing(tmp_path):
    code, summary = run_procedure(_write(tmp_path, "c.yaml", _fault_config(6, "BIAS_DARK")),
                                  repo=tmp_path / "repo", summary_json=tmp_path / "s.json")
    assert code != 0
    doc = json.loads((tmp_path / "s.json").read_text())
    bias = doc["calibrations"]["bias"]
    assert bias["decision"] == "fail" and not bias["certified"]
    assert "failed exposures" in bias["decision_report"] and "MEAN" in bias["decision_report"]
    assert "bias failed verification" in doc["error"]
    # Nothing that needed the bias was certified (its generation may have
    # started: it only needs the generated bias).
    assert not doc["calibrations"].get("dark", {}).get("certified", False)
    assert not _certified(Butler.from_config(str(tmp_path / "repo")), "LATISS/calib/daily")


def test_minority_of_faulty_biases_certifies(tmp_path):
    code, summary = run_procedure(_write(tmp_path, "c.yaml", _fault_config(1, "BIAS")), repo=tmp_path / "repo")
    assert code == 0, summary.error
    bias = summary.calibrations["bias"]
    assert bias.decision == "pass" and bias.certified
    decision = bias.extra["decision"]
    assert decision["N_FAILED_EXPOSURES"] == 1 and decision["CERTIFY"] is True


def test_killed_run_resumes_without_duplicates(tmp_path):
    config = {
        "instrument": "LATISS",
        "script_mode": "BIAS_DARK",
        "generate_calibrations": True,
        "n_bias": 5,
        "n_dark": 4,
        "exp_times_dark": 10,
        "simulation": SMALL,
    }
    path = _write(tmp_path, "c.yaml", config)
    repo = tmp_path / "repo"
    cmd = [
        sys.executable,
        "-m",
        "lsst.cpcombined.cli.main",
        "run",
        str(path),
        "--repo",
        str(repo),
        "--summary-json",
        str(tmp_path / "s.json"),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    # Kill it once the bias is certified and the darks are being processed.
    deadline = time.monotonic() + 300
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        states = list((repo / "cpcombined" / "runs" / "LATISS").glob("*.json")) if repo.exists() else []
        if states:
            state = json.loads(states[0].read_text())
            if "cpDark" in state.get("jobs", {}):
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        time.sleep(0.2)
    proc.wait()
    assert killed, "the run finished before it could be killed"
    state = json.loads(next((repo / "cpcombined" / "runs" / "LATISS").glob("*.json")).read_text())
    acquired_before = state["acquired"]
    code, summary = run_procedure(path, repo=repo, summary_json=tmp_path / "s.json")
    assert code == 0, summary.error
    assert summary.calibrations["bias"].exposures == acquired_before["bias"]
    butler = Butler.from_config(str(repo))
    counts = _certified(butler, "LATISS/calib/daily")
    assert {k[0] for k in counts} == {"bias", "dark"} and set(counts.values()) == {1}
    # Every generated dataset exists once in the final output chains.
    for label in ("cpBias", "cpDark"):
        chain = summary.calibrations["bias" if label == "cpBias" else "dark"].generated_collection
        refs = butler.query_datasets(
            "bias" if label == "cpBias" else "dark", collections=chain, find_first=False, explain=False
        )
        own = [r for r in refs if r.run.startswith(chain)]
        assert len(own) == 1, (label, [r.run for r in refs])
