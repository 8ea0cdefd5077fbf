#!/usr/bin/env python
"""Benchmark: simulate + ingest N full-size LATISS frames.

Prints wall time per frame for each image type, the on-disk size of the
ingested raws, with and without tile compression.  Run by hand:

    .venv/bin/python benchmarks/bench_simulate.py [--count 20] [--compress]

Last line: ``simulate: seconds_per_frame=<s> mb_per_frame=<mb> n=<N> compress=<bool>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.fits"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--compress", action="store_true", help="RICE-compress amp HDUs, as the camera does.")
    parser.add_argument("--scale", type=float, default=1.0, help="geometry_scale (1 = full size)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from lsst.cpcombined.repo.create import create_repo
    from lsst.cpcombined.simulation import SimulationTruth
    from lsst.cpcombined.simulation.camera import SimulatedCamera

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp) / "repo"
        butler = create_repo(root)
        truth = SimulationTruth("LATISS", {"geometry_scale": args.scale, "compress": args.compress})
        camera = SimulatedCamera(butler, truth)
        t0 = time.perf_counter()
        truth.detector_truth(0)
        print(f"fixed-pattern truth: {time.perf_counter() - t0:.2f} s (once per detector)")
        total_t, total_n = 0.0, 0
        for image_type, exptime in (("bias", 0.0), ("dark", 30.0), ("flat", 5.0)):
            t0 = time.perf_counter()
            camera.take(image_type, [exptime] * args.count)
            dt = time.perf_counter() - t0
            total_t += dt
            total_n += args.count
            print(f"{image_type:5s}: {args.count} frames in {dt:6.1f} s = {dt / args.count:5.2f} s/frame")
        size = _dir_size(root)
        mb = size / total_n / 1e6
        print(f"on disk: {size / 1e9:.2f} GB for {total_n} frames = {mb:.1f} MB/frame")
        print(
            f"simulate: seconds_per_frame={total_t / total_n:.2f} mb_per_frame={mb:.1f} "
            f"n={total_n} compress={args.compress}"
        )


if __name__ == "__main__":
    main()
