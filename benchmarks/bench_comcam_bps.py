#!/usr/bin/env python
"""Benchmark: LSSTComCam daily generation (bias, dark, flat; 9 detectors)
in-process vs BPS (local parsl site, 2 cores), and the per-quantum
overhead.

Simulates full-size frames for the 9 detectors (by default the daily
counts of SPEC §7: 20 biases, 22 darks, 20 flats), ingests them into a
temporary repository, then generates the bias, the dark and the flat
twice:

- **in-process**: the in-process ``pipetask run`` (what ``cpcombined run``
  does with ``pipeline_mode: inprocess``: quanta one after the other), in a
  fresh interpreter per stage so that its peak memory can be measured (and
  one stage's memory does not add to the next's);
- **bps**: `lsst.cpcombined.script.bps.BpsPipelineService` with
  ``config/bps/local_parsl.yaml`` (2 cores: 2 jobs at a time, each job one
  detector's ISR + combine chain).

To bound the disk, each stage's ISR intermediates (``cp*Proc``) and each
mode's outputs are deleted as soon as they are no longer needed, and the
repository at the end (``--keep`` keeps it).  Peak disk ~= raws + one
stage's ISR outputs: ~75 MB per raw and ~150 MB per ISR output per
detector-exposure (uncompressed), i.e. ~42 + ~30 GB for the full daily
counts.  Check ``df -h`` first and use smaller ``--n-*`` if needed: the
script extrapolates the measured per-exposure cost to the full counts.

Per-quantum overhead:

- in-process: (pipetask wall time - sum of the quanta's own execution
  times) / quanta;
- bps: the same over the clustered jobs (job wall time from its log files:
  the empty ``.stdout`` is created when the job starts, ``.stderr`` last
  written when it ends), plus the per-job start-up (job start to its first
  quantum) and the per-workflow fixed costs (quantum-graph build, init job,
  final ingest job, from the bps output).

Run by hand:

    .venv/bin/python benchmarks/bench_comcam_bps.py [--n-bias 20 --n-dark 22 --n-flat 20]
        [--detectors 0 1 2 3 4 5 6 7 8] [--scale 1.0] [--registry postgresql+psycopg2://...]

Last line: ``comcam_bps: inprocess_s=<s> bps_s=<s> per_quantum_overhead_inprocess_s=<s>
per_quantum_overhead_bps_s=<s> full_daily_inprocess_estimate_min=<min>
full_daily_bps_estimate_min=<min> n_bias=.. n_dark=.. n_flat=.. detectors=.. scale=..``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAILY = {"bias": 20, "dark": 22, "flat": 20}
DARK_TIME = 30.0
FLAT_TIME = 5.0
_TOOK = re.compile(r"Execution of task '(?P<label>[^']+)' on quantum .* took (?P<s>[0-9.]+) seconds")
_TS = re.compile(r"^[A-Z]+ (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)")
_BPS_TOOK = re.compile(
    r"(Completed creating quantum graph|Completed submitting to a workflow management system): "
    r"Took ([0-9.]+) seconds"
)


class _TaskTimes(logging.Handler):
    """Collects the quanta's execution times from pipe_base's log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = _TOOK.search(record.getMessage())
        if m:
            self.times.append((m["label"], float(m["s"])))


def _peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def _run_stage_here(spec: str) -> None:
    """Child process: one in-process pipetask run; prints a JSON result."""
    from lsst.cpcombined.script.pipetask import run_pipetask

    pargs = json.loads(spec)
    handler = _TaskTimes()
    logging.getLogger("lsst.pipe.base.single_quantum_executor").addHandler(handler)
    t0 = time.perf_counter()
    res = run_pipetask(pargs)
    wall = time.perf_counter() - t0
    print(
        "STAGE-RESULT "
        + json.dumps(
            {
                "ok": res.ok,
                "error": res.error_summary() if not res.ok else "",
                "wall": wall,
                "quanta": len(handler.times),
                "quanta_s": sum(t for _, t in handler.times),
                "peak_gb": _peak_rss_gb(),
            }
        )
    )


class _JobMemory:
    """Samples the resident memory of running ``pipetask run-qbb`` jobs."""

    def __init__(self, period: float = 1.0) -> None:
        self.peak_job_gb = 0.0
        self.peak_total_gb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            total = 0.0
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if b"run-qbb" not in (proc / "cmdline").read_bytes():
                        continue
                    rss = (
                        next(
                            int(line.split()[1])
                            for line in (proc / "status").read_text().splitlines()
                            if line.startswith("VmRSS:")
                        )
                        / 1e6
                    )
                except (OSError, StopIteration):
                    continue
                total += rss
                self.peak_job_gb = max(self.peak_job_gb, rss)
            self.peak_total_gb = max(self.peak_total_gb, total)

    def __enter__(self) -> _JobMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _disk_free_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 1e9


def _dir_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9


def _query(exposures: list[int]) -> str:
    return f"instrument='LSSTComCam' AND exposure IN ({', '.join(map(str, exposures))})"


def _remove(butler, pattern: str) -> None:
    """Delete the RUN collections (and their files) and chains matching ``pattern``."""
    from lsst.daf.butler import CollectionType

    runs = list(butler.collections.query(pattern, collection_types={CollectionType.RUN}))
    chains = list(butler.collections.query(pattern, collection_types={CollectionType.CHAINED}))
    for chain in chains:
        butler.collections.x_remove(chain)
    if runs:
        butler.removeRuns(runs)


def _drop_proc(butler, run_pattern: str, dataset_type: str) -> None:
    """Delete a stage's ISR intermediates once its combine is done."""
    from lsst.daf.butler import CollectionType

    runs = list(butler.collections.query(run_pattern, collection_types={CollectionType.RUN}))
    if not runs:
        return
    refs = list(
        butler.query_datasets(dataset_type, collections=runs, find_first=False, explain=False, limit=None)
    )
    if refs:
        butler.pruneDatasets(refs, disassociate=True, unstore=True, purge=True)


def _job_times(workflow: Path) -> dict:
    """Per-job wall time, start-up and quantum times of a finished bps workflow."""
    out = {"jobs": [], "init_s": None, "final_s": None}
    logs = workflow / "logs"
    for stderr in sorted(logs.rglob("*.stderr")):
        stdout = stderr.with_suffix(".stdout")
        name = stderr.stem
        start = stdout.stat().st_ctime if stdout.exists() else None
        end = stderr.stat().st_mtime
        if name in ("pipetaskInit", "finalJob"):
            out["init_s" if name == "pipetaskInit" else "final_s"] = end - start if start else None
            continue
        text = stderr.read_text(errors="replace")
        quanta = [float(m["s"]) for m in _TOOK.finditer(text)]
        first = next(
            (
                m
                for line in text.splitlines()
                if "Preparing execution" in line
                for m in [_TS.match(line)]
                if m
            ),
            None,
        )
        startup = None
        if first is not None and start is not None:
            import datetime

            t_first = datetime.datetime.fromisoformat(first.group(1)).replace(tzinfo=datetime.UTC).timestamp()
            startup = t_first - start
        out["jobs"].append(
            {"name": name, "wall": end - start if start else None, "quanta": quanta, "startup": startup}
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-bias", type=int, default=DAILY["bias"])
    parser.add_argument("--n-dark", type=int, default=DAILY["dark"])
    parser.add_argument("--n-flat", type=int, default=DAILY["flat"])
    parser.add_argument("--detectors", type=int, nargs="+", default=list(range(9)))
    parser.add_argument("--scale", type=float, default=1.0, help="geometry_scale (1 = full size)")
    parser.add_argument("--cores", type=int, default=2, help="BPS local site cores")
    parser.add_argument("--registry", help="registry database URL (default: SQLite in the repository)")
    parser.add_argument("--modes", default="inprocess,bps", help="comma-separated: inprocess, bps")
    parser.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp"))
    parser.add_argument("--keep", action="store_true", help="keep the repository")
    parser.add_argument("--_stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._stage:
        _run_stage_here(args._stage)
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("CPCOMBINED_DIR", str(ROOT))
    from lsst.cpcombined.repo.create import create_repo
    from lsst.cpcombined.script.bps import BpsPipelineService, read_workflow_status
    from lsst.cpcombined.script.pipetask import pipetask_run_args
    from lsst.cpcombined.simulation import SimulationTruth
    from lsst.cpcombined.simulation.camera import SimulatedCamera
    from lsst.daf.butler import Butler

    workdir = Path(tempfile.mkdtemp(prefix="bench-comcam-bps-", dir=args.workdir))
    n = {"bias": args.n_bias, "dark": args.n_dark, "flat": args.n_flat}
    n_det = len(args.detectors)
    print(
        f"work dir {workdir}: {_disk_free_gb(workdir):.0f} GB free; {n_det} detectors, scale {args.scale}, "
        f"counts {n}"
    )
    root = workdir / "repo"
    results: dict[str, dict] = {}
    try:
        butler = create_repo(root, registry_db=args.registry)
        truth = SimulationTruth(
            "LSSTComCam", {"seed": 2026, "geometry_scale": args.scale, "flat_flux": 4000.0}
        )
        camera = SimulatedCamera(butler, truth, detectors=args.detectors)
        t0 = time.perf_counter()
        exposures = {
            "bias": camera.take("bias", [0.0] * n["bias"]),
            "dark": camera.take("dark", [DARK_TIME] * n["dark"]),
            "flat": camera.take("flat", [FLAT_TIME] * n["flat"]),
        }
        t_sim = time.perf_counter() - t0
        raw_gb = _dir_gb(root)
        print(
            f"simulated + ingested {sum(n.values()) * n_det} raws in {t_sim:.0f} s ({raw_gb:.1f} GB)",
            flush=True,
        )

        stages = [
            ("bias", "cpBias", []),
            ("dark", "cpDark", ["bias"]),
            ("flat", "cpFlat", ["bias", "dark"]),
        ]
        dets = ", ".join(map(str, args.detectors))

        def query(kind: str) -> str:
            return f"{_query(exposures[kind])} AND detector IN ({dets})"

        # -- in-process ---------------------------------------------------------------------
        if "inprocess" in args.modes:
            res_mode = {"stages": {}}
            for kind, pipeline, needs in stages:
                out = f"bench/inprocess/{kind}"
                pargs = pipetask_run_args(
                    root,
                    ROOT / "pipelines" / "LSSTComCam" / f"{pipeline}.yaml",
                    inputs=["LSSTComCam/raw/all", *[f"bench/inprocess/{d}" for d in needs]],
                    output=out,
                    data_query=query(kind),
                    log_level="WARNING",
                )
                # Keep the per-quantum "took N seconds" lines.
                pargs = ["--log-level", "lsst.pipe.base.single_quantum_executor=INFO", *map(str, pargs)]
                proc = subprocess.run(
                    [sys.executable, __file__, "--_stage", json.dumps(pargs)], capture_output=True, text=True
                )
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("STAGE-RESULT ")), None)
                if line is None:
                    raise RuntimeError(
                        f"in-process {pipeline} died (exit {proc.returncode}): {proc.stderr[-2000:]}"
                    )
                st = json.loads(line.split(" ", 1)[1])
                if not st["ok"]:
                    raise RuntimeError(f"in-process {pipeline}: {st['error']}")
                res_mode["stages"][kind] = st
                print(
                    f"in-process {pipeline}: {st['wall']:7.1f} s, {st['quanta']} quanta "
                    f"(sum of quantum times {st['quanta_s']:.1f} s), peak memory {st['peak_gb']:.1f} GB",
                    flush=True,
                )
                _drop_proc(Butler.from_config(str(root), writeable=True), f"{out}/*", f"{pipeline}Proc")
            results["inprocess"] = res_mode

        # -- bps ------------------------------------------------------------------------------
        if "bps" in args.modes:
            butler = Butler.from_config(str(root), writeable=True)
            _remove(butler, "bench/inprocess*")
            service = BpsPipelineService(root, submit_root=workdir / "submit")
            res_mode = {"stages": {}}
            for kind, pipeline, needs in stages:
                out = f"bench/bps/{kind}"
                config = (
                    f"-j {args.cores} -i LSSTComCam/raw/all"
                    + "".join(f",bench/bps/{d}" for d in needs)
                    + f" -o {out} --register-dataset-types"
                )

                async def go(pipeline=pipeline, config=config, kind=kind):
                    job = await service.execute(
                        f"${{CPCOMBINED_DIR}}/pipelines/LSSTComCam/{pipeline}.yaml", "", config, query(kind)
                    )
                    return job, await service.wait_result(job, 6 * 3600)

                t0 = time.perf_counter()
                with _JobMemory() as mem:
                    job, res = asyncio.run(go())
                wall = time.perf_counter() - t0
                if not res.ok:
                    raise RuntimeError(f"bps {pipeline}: {res.errors}")
                wf = workdir / "submit" / job / "workflow"
                times = _job_times(wf)
                status = read_workflow_status(wf)
                text = (workdir / "submit" / job / "bps_submit.log").read_text(errors="replace")
                fixed = {m.group(1): float(m.group(2)) for m in _BPS_TOOK.finditer(text)}
                jobs = times["jobs"]
                qsum = sum(sum(j["quanta"]) for j in jobs)
                jsum = sum(j["wall"] or 0.0 for j in jobs)
                nq = sum(len(j["quanta"]) for j in jobs)
                startups = [j["startup"] for j in jobs if j["startup"] is not None]
                res_mode["stages"][kind] = {
                    "wall": wall,
                    "quanta": nq,
                    "quanta_s": qsum,
                    "jobs": len(jobs),
                    "jobs_s": jsum,
                    "startup_s": statistics.median(startups) if startups else float("nan"),
                    "qgraph_s": fixed.get("Completed creating quantum graph", float("nan")),
                    "init_s": times["init_s"],
                    "final_s": times["final_s"],
                    "peak_job_gb": mem.peak_job_gb,
                    "peak_jobs_total_gb": mem.peak_total_gb,
                }
                print(
                    f"bps {pipeline}: {wall:7.1f} s, {len(jobs)} jobs / {nq} quanta (ok {status.quanta_succeeded}); "
                    f"sum of job times {jsum:.1f} s, of quantum times {qsum:.1f} s; job start-up "
                    f"{res_mode['stages'][kind]['startup_s']:.1f} s; qgraph "
                    f"{res_mode['stages'][kind]['qgraph_s']:.1f} s, init {times['init_s'] or 0:.1f} s, "
                    f"final {times['final_s'] or 0:.1f} s; peak memory {mem.peak_job_gb:.1f} GB per job, "
                    f"{mem.peak_total_gb:.1f} GB all jobs",
                    flush=True,
                )
                _drop_proc(Butler.from_config(str(root), writeable=True), f"{out}/*", f"{pipeline}Proc")
            results["bps"] = res_mode
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    # -- summary ---------------------------------------------------------------------------------
    def total(mode: str, key: str = "wall") -> float:
        return sum(s[key] for s in results[mode]["stages"].values()) if mode in results else float("nan")

    def overhead(mode: str) -> float:
        if mode not in results:
            return float("nan")
        st = results[mode]["stages"].values()
        busy = sum(s["jobs_s"] if mode == "bps" else s["wall"] for s in st)
        return (busy - sum(s["quanta_s"] for s in st)) / max(1, sum(s["quanta"] for s in st))

    lines = []
    for mode in results:
        lines.append(
            f"{mode}: {total(mode):.1f} s for bias+dark+flat, per-quantum overhead {overhead(mode):.3f} s"
        )
    # Extrapolation to the daily counts on 9 detectors: the measured wall time
    # of each stage minus its fixed costs scales with the number of
    # exposures (and detectors).  Fixed: in-process, the pipetask overhead
    # outside the quanta (wall - quantum times: graph building, registry);
    # bps, the per-workflow costs (quantum graph, init job, final job) and
    # the job start-ups (one job per detector cluster, `cores` at a time).
    # Scaling measured wall time (not summed quantum time divided by the
    # cores) keeps the contention between concurrent jobs in the estimate.
    estimate = {"inprocess": float("nan"), "bps": float("nan")}
    det_scale = 9 / n_det
    for mode in results:
        est = 0.0
        for kind, st in results[mode]["stages"].items():
            if mode == "bps":
                fixed = (st["qgraph_s"] or 0) + (st["init_s"] or 0) + (st["final_s"] or 0)
                fixed += (
                    st["jobs"] * (st["startup_s"] if math.isfinite(st["startup_s"]) else 0.0) / args.cores
                )
            else:
                fixed = st["wall"] - st["quanta_s"]
            fixed = min(fixed, st["wall"])
            est += fixed + (st["wall"] - fixed) * DAILY[kind] / n[kind] * det_scale
        estimate[mode] = est / 60.0
        lines.append(f"{mode} estimate for the daily counts {DAILY} on 9 detectors: {estimate[mode]:.1f} min")
    for line in lines:
        print(line)
    print(
        f"comcam_bps: inprocess_s={total('inprocess'):.1f} bps_s={total('bps'):.1f} "
        f"per_quantum_overhead_inprocess_s={overhead('inprocess'):.3f} "
        f"per_quantum_overhead_bps_s={overhead('bps'):.3f} full_daily_inprocess_estimate_min={estimate['inprocess']:.1f} "
        f"full_daily_bps_estimate_min={estimate['bps']:.1f} "
        f"n_bias={n['bias']} n_dark={n['dark']} n_flat={n['flat']} detectors={n_det} scale={args.scale}"
    )


if __name__ == "__main__":
    main()
