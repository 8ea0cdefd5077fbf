#!/usr/bin/env python
"""Benchmark: the full-size LATISS daily run (all steps) with a per-step
breakdown.

Uses ``config/examples/latiss_daily.yaml`` (20 bias, 22 dark, 20 flats as
10 PTC pairs, generation, verification, decision, certification, defects,
PTC, gain from flat pairs) at full size unless ``--scale`` is given, on a
temporary embedded repository that is deleted afterwards.  With
``--instrument LSSTComCam --detectors 0 1 2`` the same daily procedure runs
on those LSSTComCam detectors (filter ``r_03``).

    .venv/bin/python benchmarks/bench_daily.py [--scale 1.0] [--keep DIR] [--mode workers]
        [--max-jobs N] [--instrument LSSTComCam --detectors 0 1 2]

Last line: ``daily: seconds=<total> frames=<n> scale=<s> success=<bool>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="geometry_scale (1 = full size)")
    parser.add_argument("--keep", help="Keep the repository in this directory.")
    parser.add_argument("--mode", default="inprocess", help="execution.pipeline_mode")
    parser.add_argument("--max-jobs", type=int, help="execution.max_jobs (pipeline jobs at once)")
    parser.add_argument("--instrument", default="LATISS", choices=("LATISS", "LSSTComCam"))
    parser.add_argument("--detectors", type=int, nargs="+", help="LSSTComCam detectors (default: 0)")
    args = parser.parse_args()
    from lsst.cpcombined.script.runner import run_procedure

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "config" / "examples" / "latiss_daily.yaml").read_text())
    config["simulation"]["geometry_scale"] = args.scale
    if args.instrument == "LSSTComCam":
        config.update(
            instrument="LSSTComCam",
            filter="r_03",
            calib_collection="LSSTComCam/calib/daily",
            detectors=list(args.detectors or [0]),
        )
    config["execution"] = {"pipeline_mode": args.mode}
    if args.max_jobs:
        config["execution"]["max_jobs"] = args.max_jobs
    tmp = (
        Path(args.keep)
        if args.keep
        else Path(tempfile.mkdtemp(prefix="bench-daily-", dir=os.environ.get("TMPDIR")))
    )
    try:
        cfg_path = tmp / "config.yaml"
        tmp.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(config))
        t0 = time.perf_counter()
        code, summary = run_procedure(cfg_path, repo=tmp / "repo", summary_json=tmp / "summary.json")
        total = time.perf_counter() - t0
        frames = sum(
            len(v.exposures) for k, v in summary.calibrations.items() if k in ("bias", "dark", "flat")
        )
        print(f"{'step':45s} {'seconds':>8s}  status")
        for step in summary.steps:
            print(f"{step.name:45s} {step.seconds:8.1f}  {step.status}")
        print(
            f"total wall time {total:.1f} s (steps overlap: acquisition runs while the previous type is processed)"
        )
        n_det = len(config.get("detectors", [0]))
        print(
            f"daily: seconds={total:.1f} frames={frames} detectors={n_det} instrument={args.instrument} "
            f"scale={args.scale} success={code == 0}"
        )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
