#!/usr/bin/env python
"""Benchmark: what a daily run stores, by dataset type, before and after the
run's cleanup, and the cost of the compact formats.

Two parts (both by default):

* ``--codec``: one full-size detector (4072 x 4000, the ISR output of a
  simulated flat): bytes, write and read times of a raw file (RICE_1
  compressed vs plain) and of a ``cpc*Proc`` file (quantised and compressed
  vs exact), and of reading it in row blocks as the combine engine does;
  best of ``--repeat`` runs.
* ``--daily``: the daily procedure of ``config/examples/latiss_daily.yaml``
  (20 biases, 22 darks, 20 flats; generation, verification, PTC, defects)
  at ``--scale`` (1 = full size) for LATISS, or for one LSSTComCam detector
  (``--instrument LSSTComCam --detectors 0``), run with
  ``execution.keep_intermediates: true``; then the repository's bytes by
  dataset type, the run's cleanup (`lsst.cpcombined.repo.prune`, the
  step ``cpcombined run`` ends with by default) and the bytes after it.
  "Growth" is the repository's datastore and registry (``gen3.sqlite3``)
  minus those of the empty repository; the package's run records
  (``REPO/cpcombined``: states, summaries, HTML reports) are counted
  apart.

    .venv/bin/python benchmarks/bench_storage.py [--codec] [--daily] [--scale 1.0]
        [--instrument LATISS|LSSTComCam] [--detectors 0] [--keep DIR] [--repeat 3]

Last line: ``storage: instrument=<I> scale=<s> raws_mb=<MB> before_mb=<MB>
after_mb=<MB> growth_over_raws=<x> cleanup_s=<s>``.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _best(func, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def codec(tmp: Path, repeat: int) -> None:
    """Bytes and times of the raw and cpc*Proc formats for one full-size frame."""
    import astropy.units as u
    from lsst.cpcombined.obs.raw import read_raw_file, write_raw_file
    from lsst.cpcombined.repo.formatters import PROC_QUANTIZE_LEVEL, read_proc_image, write_proc_image
    from lsst.cpcombined.repo.products import to_masked_image
    from lsst.cpcombined.repo.tiled_fits import FitsIndex
    from lsst.cpcombined.simulation import SimulationTruth
    from lsst.cpcombined.simulation.sensor import simulate_raw_amps
    from lsst.images import Box

    truth = SimulationTruth("LATISS", {"geometry_scale": 1.0})
    print("full-size LATISS frame (4072 x 4000 imaging pixels)")
    print(f"{'file':42s} {'MB':>7s} {'write s':>8s} {'read s':>8s}")
    header = {"FILENAME": "bench.fits", "OBSID": "bench"}
    for kind, exptime in (("bias", 0.0), ("flat", 20.0)):
        amps = simulate_raw_amps(truth, 0, kind, exptime, exptime, 0, truth.exposure_rng(1, 0))
        for compress in (False, True):
            path = tmp / f"raw_{kind}_{compress}.fits"
            tw = _best(
                lambda p=path, a=amps, c=compress: write_raw_file(p, header, a, truth.layout, compress=c),
                repeat,
            )
            tr = _best(lambda p=path: read_raw_file(p), repeat)
            label = f"raw {kind} ({'RICE_1' if compress else 'plain'})"
            print(f"{label:42s} {os.path.getsize(path) / 1e6:7.1f} {tw:8.3f} {tr:8.3f}")
    # An ISR output: a flat of ~40 ke- (sigma ~ 200 e-, 1 % PRNU), variance = signal + 50 e-^2.
    rng = np.random.default_rng(1)
    ny, nx = 4000, 4072
    signal = 40000.0 * (1 + 0.01 * rng.standard_normal((ny, nx)))
    image = (signal + rng.standard_normal((ny, nx)) * np.sqrt(signal)).astype(np.float32)
    variance = (image + 50.0).astype(np.float32)
    mask = np.zeros((ny, nx), np.uint8)
    mask[:, 1000] = 1
    mi = to_masked_image(image, variance, mask, unit=u.electron, metadata={"EXPOSURE": 1})
    blocks = [Box.factory[y : min(ny, y + 250), 0:nx] for y in range(0, ny, 250)]
    for level in (None, PROC_QUANTIZE_LEVEL):
        path = tmp / f"proc_{level}.fits"
        tw = _best(lambda p=path, q=level: write_proc_image(mi, p, quantize_level=q), repeat)

        def read_all(p: Path = path) -> None:
            FitsIndex.forget()
            read_proc_image(p)

        def read_blocks(p: Path = path) -> None:
            FitsIndex.forget()
            for box in blocks:
                read_proc_image(p, box, component="image")
                read_proc_image(p, box, component="mask")

        tr = _best(read_all, repeat)
        tb = _best(read_blocks, repeat)
        label = "cpc*Proc " + ("exact" if level is None else f"quantised (level {level:g})")
        size = os.path.getsize(path) / 1e6
        print(f"{label:42s} {size:7.1f} {tw:8.3f} {tr:8.3f}  (16 blocks image+mask: {tb:.3f} s)")


def _bytes_by_type(root: Path) -> tuple[dict[str, list[int]], int, int]:
    """{dataset type: [count, bytes]}, registry bytes, run-record bytes."""
    from lsst.daf.butler import Butler, CollectionType

    butler = Butler.from_config(str(root))
    runs = list(butler.collections.query("*", collection_types={CollectionType.RUN}))
    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for ref in butler.registry.queryDatasets(..., collections=runs):
        name = ref.datasetType.name
        for suffix in ("_metadata", "_log", "_config"):
            if name.endswith(suffix):
                name = f"(task {suffix[1:]})"
        out[name][0] += 1
        out[name][1] += os.path.getsize(butler.getURI(ref).ospath)
    registry = sum(p.stat().st_size for p in root.glob("gen3.sqlite3*"))
    records = sum(p.stat().st_size for p in (root / "cpcombined").rglob("*") if p.is_file())
    return dict(out), registry, records


def _repository_bytes(root: Path) -> int:
    """Bytes of the datastore's files and the registry (everything but the
    package's run records, ``REPO/cpcombined``)."""
    total = 0
    for directory, _, names in os.walk(root):
        if Path(directory).relative_to(root).parts[:1] == ("cpcombined",):
            continue
        total += sum(os.path.getsize(os.path.join(directory, n)) for n in names)
    return total


def daily(tmp: Path, scale: float, instrument: str, detectors: list[int] | None) -> None:
    """The daily run with its intermediates kept, then the cleanup."""
    from lsst.cpcombined.repo.create import create_repo
    from lsst.cpcombined.repo.prune import prune_intermediates, resolve_runs
    from lsst.cpcombined.script.runner import run_procedure
    from lsst.daf.butler import Butler

    config = yaml.safe_load((ROOT / "config" / "examples" / "latiss_daily.yaml").read_text())
    config["simulation"]["geometry_scale"] = scale
    if instrument == "LSSTComCam":
        config.update(
            instrument="LSSTComCam",
            filter="r_03",
            calib_collection="LSSTComCam/calib/daily",
            certify_chain="LSSTComCam/calib",
            detectors=list(detectors or [0]),
        )
    config["execution"] = {"pipeline_mode": "inprocess", "keep_intermediates": True}
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    repo = tmp / "repo"
    create_repo(repo)
    empty = _repository_bytes(repo)
    t0 = time.perf_counter()
    code, summary = run_procedure(cfg_path, repo=repo)
    run_s = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"the daily run failed: {summary.error}")
    before, registry_before, records = _bytes_by_type(repo)
    growth_before = _repository_bytes(repo) - empty
    butler = Butler.from_config(str(repo), writeable=True)
    collections_ = [o.generated_collection for o in summary.calibrations.values() if o.generated_collection]
    t0 = time.perf_counter()
    runs = resolve_runs(butler, collections=collections_)
    report = prune_intermediates(butler, runs)
    cleanup_s = time.perf_counter() - t0
    after, registry_after, _ = _bytes_by_type(repo)
    growth_after = _repository_bytes(repo) - empty
    frames = sum(len(summary.calibrations[t].exposures) for t in ("bias", "dark", "flat"))
    n_raw, raw_bytes = before["raw"]
    n_det = len(config.get("detectors", [0]))
    print(
        f"\n{instrument} daily run, {n_det} detector(s), scale {scale}: {n_raw} raws ({frames} kept frames), "
        f"run {run_s:.0f} s"
    )
    print(f"{'dataset type':28s} {'n':>5s} {'MB before':>10s} {'MB after':>10s} {'MB each':>9s}")
    for name in sorted(before, key=lambda k: -before[k][1]):
        n, b = before[name]
        a = after.get(name, [0, 0])[1]
        print(f"{name:28s} {n:5d} {b / 1e6:10.2f} {a / 1e6:10.2f} {b / n / 1e6:9.3f}")
    blank = ""
    registry = f"{registry_before / 1e6:10.2f} {registry_after / 1e6:10.2f}"
    print(f"{'registry (gen3.sqlite3)':28s} {blank:5s} {registry}")
    print(f"{'run records (REPO/cpcombined)':28s} {blank:5s} {records / 1e6:10.2f}  (not counted)")
    print(
        f"growth: {growth_before / 1e6:.1f} MB before the cleanup ({growth_before / raw_bytes:.2f} x raws), "
        f"{growth_after / 1e6:.1f} MB after ({growth_after / raw_bytes:.3f} x raws); "
        f"cleanup {cleanup_s:.1f} s: {report.lines()[-1]}"
    )
    written = sum(
        os.path.getsize(butler.getURI(ref).ospath)
        for name in ("bias", "dark", "flat")
        for ref in butler.query_datasets(name, collections=runs, find_first=False, explain=False)
    )
    print(f"bias + dark + flat as written (lossless GZIP_2 tiles): {written / 1e6:.1f} MB")
    print(
        f"storage: instrument={instrument} scale={scale} raws_mb={raw_bytes / 1e6:.1f} "
        f"before_mb={growth_before / 1e6:.1f} after_mb={growth_after / 1e6:.1f} "
        f"growth_over_raws={growth_after / raw_bytes:.3f} cleanup_s={cleanup_s:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--codec", action="store_true", help="Only the one-frame format measurements.")
    parser.add_argument("--daily", action="store_true", help="Only the daily run.")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="geometry_scale of the daily run (1 = full size)"
    )
    parser.add_argument("--instrument", default="LATISS", choices=("LATISS", "LSSTComCam"))
    parser.add_argument("--detectors", type=int, nargs="+", help="LSSTComCam detectors (default: 0)")
    parser.add_argument("--repeat", type=int, default=3, help="Repetitions of each codec timing (best kept).")
    parser.add_argument("--keep", help="Keep the temporary files in this directory.")
    args = parser.parse_args()
    both = not (args.codec or args.daily)
    if args.keep:
        tmp = Path(args.keep)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=os.environ.get("TMPDIR")))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if args.codec or both:
            codec(tmp, args.repeat)
        if args.daily or both:
            daily(tmp, args.scale, args.instrument, args.detectors)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
