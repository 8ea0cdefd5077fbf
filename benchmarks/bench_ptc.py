#!/usr/bin/env python
"""Benchmark: the photon transfer curve of a full-size LATISS detector.

Simulates 2 x N full-size flats (a ramp from 50 e- to past the 150 ke- full
well, ~6 ke- steps) plus the bias and dark the PTC needs (generated with the
cpBias and cpDark pipelines), then times the whole ``cpPtc`` pipeline
(extraction: ISR of every flat, one pair at a time, and the measurement of
16 amplifiers per pair; then the eq. 16 fit).  The temporary repository is
deleted at the end.  Run by hand:

    .venv/bin/python benchmarks/bench_ptc.py [--pairs 30] [--scale 1.0]

Last line: ``ptc: seconds=<s> pairs=<n>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

FLUX = 10000.0  # e-/s


def _levels(n_pairs: int) -> list[float]:
    """Signal levels (e-) of the pairs: a few low ones, then steps of ~6 ke-
    to past the 150 ke- full well (the last two pairs are saturated)."""
    low = [50.0, 300.0, 1200.0][: max(0, min(3, n_pairs - 3))]
    n_ramp = n_pairs - len(low)
    top = 159500.0
    step = (top - 3500.0) / max(1, n_ramp - 1)
    return low + [3500.0 + step * k for k in range(n_ramp)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=30, help="number of flat pairs")
    parser.add_argument("--scale", type=float, default=1.0, help="geometry_scale (1 = full size)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from lsst.cpcombined.repo.create import create_repo
    from lsst.cpcombined.script.pipetask import pipetask_run_args, run_pipetask
    from lsst.cpcombined.simulation import SimulationTruth
    from lsst.cpcombined.simulation.camera import SimulatedCamera

    pipelines = Path(__file__).resolve().parents[1] / "pipelines" / "LATISS"

    def run(name: str, inputs: list[str], output: str, exposures: list[int]) -> float:
        query = f"instrument='LATISS' AND exposure IN ({', '.join(map(str, exposures))})"
        t0 = time.perf_counter()
        res = run_pipetask(
            pipetask_run_args(
                root, pipelines / f"{name}.yaml", inputs=inputs, output=output, data_query=query,
                log_level="WARNING",
            )
        )
        dt = time.perf_counter() - t0
        if not res.ok:
            sys.exit(f"{name} failed: {res.error_summary()}")
        return dt

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp) / "repo"
        butler = create_repo(root)
        truth = SimulationTruth("LATISS", {"geometry_scale": args.scale, "flat_flux": FLUX})
        camera = SimulatedCamera(butler, truth)
        t0 = time.perf_counter()
        biases = camera.take("bias", [0.0] * 3)
        darks = camera.take("dark", [10.0] * 2)
        print(f"bias/dark simulated in {time.perf_counter() - t0:.1f} s")
        raw = "LATISS/raw/all"
        t_bias = run("cpBias", [raw], "bench/bias", biases)
        t_dark = run("cpDark", [raw, "bench/bias"], "bench/dark", darks)
        print(f"cpBias {t_bias:.1f} s, cpDark {t_dark:.1f} s")
        levels = _levels(args.pairs)
        steps = [b - a for a, b in zip(levels, levels[1:], strict=False)]
        if steps and max(steps) > 9000:
            print(f"note: {max(steps):.0f} e- between pairs exceeds the 9000 e- gap cut: use more pairs")
        t0 = time.perf_counter()
        flats = camera.take("flat", [lv / FLUX for lv in levels for _ in range(2)])
        print(f"{len(flats)} flats simulated in {time.perf_counter() - t0:.1f} s")
        seconds = run("cpPtc", [raw, "bench/bias", "bench/dark"], "bench/ptc", flats)
        ptc = butler.get("ptc", collections="bench/ptc", instrument="LATISS", detector=0)
        dtruth = truth.detector_truth(0)
        for row in ptc:
            amp = row["amplifier"]
            print(
                f"  {amp}: gain {row['gain']:.4f} ({100 * (row['gain'] / dtruth.gain[amp] - 1):+.2f} %), "
                f"noise {row['noise']:.2f} e- ({100 * (row['noise'] / dtruth.read_noise[amp] - 1):+.2f} %), "
                f"a00 {row['a00']:.3g}, turnoff {row['turnoff'] * dtruth.gain[amp]:.0f} e-, "
                f"{row['n_kept']}/{row['n_points']} points{' BAD' if row['bad'] else ''}"
            )
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(f"repository: {size / 1e9:.2f} GB (deleted at exit)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {rss:.0f} MB (simulation included)")
    print(f"cpPtc: {seconds:.1f} s for {len(levels)} pairs = {seconds / len(levels):.2f} s per pair")
    print(f"ptc: seconds={seconds:.1f} pairs={len(levels)}")


if __name__ == "__main__":
    main()
