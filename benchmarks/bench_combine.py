#!/usr/bin/env python
"""Benchmark of the combine engine (`lsst.cpcombined.algorithms.combine`).

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/bench_combine.py [--quick]

(a) Speed, on one stack of N = 20 float32 images of 2000 × 2000 (Gaussian,
    1000 ± 10, with 1 % of the values replaced by outliers uniform in
    [10^4, 10^5] or [-10^5, -10^4]):

    - ours: ``combine(list(stack))``, the 3σ / 3-iteration clipped mean, the
      inputs being `ArraySource` views of one in-memory ``(N, ny, nx)``
      float32 array, outputs image + variance + mask + n_used;
    - numpy: ``np.sum(stack, axis=0)`` on that same in-memory array (also
      shown: summing the N views one by one into an accumulator; the faster
      of the two is the reference);
    - ccdproc: ``ccdproc.combine(list of CCDData, method="average",
      sigma_clip=True, sigma_clip_low_thresh=3, sigma_clip_high_thresh=3,
      sigma_clip_func=np.ma.mean, sigma_clip_dev_func=np.ma.std)`` with
      ccdproc's defaults otherwise (it clips one iteration where we do up
      to three), CCDData built from the same arrays (not copied).

    Times are wall-clock, best of ``--repeat`` runs after a warm-up run (so
    numba compilation or cache loading is not counted), with numba's
    default number of threads (also shown: one thread).  ccdproc runs once.

(b) Memory, when combining 50 full-size LATISS frames (4072 × 4000 float32,
    written as ``.npy`` files in a temporary directory and read through
    `NpyFileSource`, default 256 MB budget): a child process imports the
    package, loads the compiled kernels on a tiny combine, then does only
    that combine; its peak is the child's maximum resident set size
    (``VmHWM`` of ``/proc/self/status``; ``ru_maxrss`` would inherit the
    parent's), i.e. everything the process ever held: interpreter,
    libraries, kernels, block buffers and outputs.
    ``--quick`` skips (b).

The last line is
``combine: vs_ccdproc=<ccdproc time / ours> vs_numpy_sum=<ours / numpy sum>
peak_gb_50_full=<GB>`` (``nan`` for a part that was not run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _stack(n: int, ny: int, nx: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = np.empty((n, ny, nx), dtype=np.float32)
    for i in range(n):
        frame = rng.normal(1000.0, 10.0, (ny, nx)).astype(np.float32)
        bad = rng.random((ny, nx)) < 0.01
        nbad = int(bad.sum())
        frame[bad] = (rng.choice([-1.0, 1.0], nbad) * rng.uniform(1e4, 1e5, nbad)).astype(np.float32)
        stack[i] = frame
    return stack


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _loop_sum(frames: list[np.ndarray]) -> np.ndarray:
    acc = frames[0].copy()
    for f in frames[1:]:
        acc += f
    return acc


def part_a(args: argparse.Namespace) -> tuple[float, float]:
    import numba
    from lsst.cpcombined.algorithms.combine import combine

    print(f"numba threads: {numba.get_num_threads()}, CPUs: {os.cpu_count()}")
    t0 = time.perf_counter()
    stack = _stack(args.n, args.size, args.size, seed=1)
    frames = list(stack)
    print(f"(a) stack {args.n} x {args.size} x {args.size} float32 ({stack.nbytes / 1e9:.2f} GB), "
          f"built in {time.perf_counter() - t0:.1f} s")  # fmt: skip

    t0 = time.perf_counter()
    combine(frames)  # warm-up: compile or load the cached kernels
    print(f"warm-up (compile or cache load + one run): {time.perf_counter() - t0:.2f} s")
    t_ours, res = _best(lambda: combine(frames), args.repeat)
    t_sum, _ = _best(lambda: np.sum(stack, axis=0), args.repeat)
    t_loop, _ = _best(lambda: _loop_sum(frames), args.repeat)
    t_ref = min(t_sum, t_loop)
    nthreads = numba.get_num_threads()
    numba.set_num_threads(1)
    t_ours_1, _ = _best(lambda: combine(frames), args.repeat)
    numba.set_num_threads(nthreads)
    print(f"ours, clipped mean ({nthreads} threads):  {t_ours:8.3f} s")
    print(f"ours, clipped mean (1 thread):   {t_ours_1:8.3f} s")
    t_med, _ = _best(lambda: combine(frames, method="median"), 1)
    print(f"ours, median ({nthreads} threads):        {t_med:8.3f} s")
    print(f"numpy np.sum(stack, axis=0):     {t_sum:8.3f} s")
    print(f"numpy sum of the {args.n} frames:      {t_loop:8.3f} s")

    # correctness on a few rows against astropy
    from astropy.stats import sigma_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = sigma_clip(stack[:, :64], sigma=3, maxiters=3, cenfunc="mean", stdfunc="std", axis=0)
        ref = clipped.mean(axis=0)
    err = np.nanmax(np.abs(res.image[:64] - ref) / np.abs(ref))
    print(f"max relative difference to astropy sigma_clip (64 rows): {err:.2e}")

    t_ccd = float("nan")
    if not args.skip_ccdproc:
        try:
            import ccdproc
            from astropy.nddata import CCDData
        except ImportError:
            print("ccdproc not installed (pip install ccdproc==2.5.1): skipped")
        else:
            ccds = [CCDData(f, unit="adu", copy=False) for f in frames]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                out = ccdproc.combine(
                    ccds,
                    method="average",
                    sigma_clip=True,
                    sigma_clip_low_thresh=3,
                    sigma_clip_high_thresh=3,
                    sigma_clip_func=np.ma.mean,
                    sigma_clip_dev_func=np.ma.std,
                )
                t_ccd = time.perf_counter() - t0
            diff = np.nanmedian(np.abs(np.asarray(out.data) - res.image))
            print(f"ccdproc {ccdproc.__version__} combine:        {t_ccd:8.3f} s "
                  f"(median |ccdproc - ours| = {diff:.3f} ADU; it clips 1 iteration)")  # fmt: skip
    vs_ccdproc = t_ccd / t_ours
    vs_sum = t_ours / t_ref
    print(f"ratios: ccdproc/ours = {vs_ccdproc:.1f}, ours/numpy-sum = {vs_sum:.2f} "
          f"(1 thread: {t_ours_1 / t_ref:.2f})")  # fmt: skip
    return vs_ccdproc, vs_sum


def part_b(args: argparse.Namespace) -> float:
    base = os.environ.get("TMPDIR") or None
    with tempfile.TemporaryDirectory(dir=base, prefix="bench_combine_") as tmp:
        rng = np.random.default_rng(2)
        t0 = time.perf_counter()
        for i in range(args.n_full):
            frame = rng.normal(1000.0, 10.0, (4072, 4000)).astype(np.float32)
            frame[rng.random(frame.shape) < 0.01] = 5e4
            np.save(Path(tmp) / f"frame{i:03d}.npy", frame)
            del frame
        size = sum(p.stat().st_size for p in Path(tmp).glob("*.npy"))
        print(f"(b) wrote {args.n_full} frames 4072 x 4000 float32 ({size / 1e9:.2f} GB) "
              f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        cmd = [sys.executable, __file__, "--child-full", tmp]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        sys.stderr.write(out.stderr)
        info = json.loads(out.stdout.strip().splitlines()[-1])
    peak_gb = info["maxrss_bytes"] / 1e9
    print(f"child: peak RSS after import + warm-up {info['baseline_bytes'] / 1e9:.3f} GB, "
          f"combine {info['seconds']:.1f} s (of which reading {info['read_seconds']:.1f} s), "
          f"block_rows={info['block_rows']}, peak RSS {peak_gb:.3f} GB "
          f"(input {info['read_gb']:.2f} GB, outputs {info['output_bytes'] / 1e9:.3f} GB)")  # fmt: skip
    return peak_gb


def _peak_rss_bytes() -> int:
    """High-water mark of this process's resident set (``VmHWM``).

    ``getrusage().ru_maxrss`` would not do in a child: Linux carries the
    parent's high-water mark over ``fork`` + ``exec``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_full(directory: str) -> None:
    """Run in a fresh process: combine the .npy files of ``directory``."""
    from lsst.cpcombined.algorithms.combine import NpyFileSource, combine

    class TimedSource(NpyFileSource):
        read_seconds = 0.0

        def read_block(self, y0, y1):
            t0 = time.perf_counter()
            blk = super().read_block(y0, y1)
            TimedSource.read_seconds += time.perf_counter() - t0
            return blk

    combine([np.zeros((4, 8), np.float32)] * 3)  # load the compiled kernels
    baseline = _peak_rss_bytes()
    paths = sorted(Path(directory).glob("*.npy"))
    sources = [TimedSource(p) for p in paths]
    t0 = time.perf_counter()
    res = combine(sources)
    seconds = time.perf_counter() - t0
    peak = _peak_rss_bytes()
    out_bytes = sum(a.nbytes for a in (res.image, res.variance, res.mask, res.n_used))
    read = sum(p.stat().st_size for p in paths) / 1e9
    print(json.dumps(dict(maxrss_bytes=peak, baseline_bytes=baseline, seconds=seconds,
                          read_seconds=TimedSource.read_seconds, block_rows=res.block_rows,
                          output_bytes=out_bytes, read_gb=read)))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip (b), the 50 full-size frames")
    parser.add_argument("--n", type=int, default=20, help="inputs in (a)")
    parser.add_argument("--size", type=int, default=2000, help="image side in (a)")
    parser.add_argument("--n-full", type=int, default=50, help="full-size frames in (b)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (best is kept)")
    parser.add_argument("--skip-ccdproc", action="store_true")
    parser.add_argument("--child-full", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_full:
        child_full(args.child_full)
        return
    vs_ccdproc, vs_sum = part_a(args)
    peak = float("nan") if args.quick else part_b(args)
    print(f"combine: vs_ccdproc={vs_ccdproc:.1f} vs_numpy_sum={vs_sum:.2f} peak_gb_50_full={peak:.3f}")


if __name__ == "__main__":
    main()
