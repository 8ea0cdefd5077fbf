"""Faults a user or operator meets: bad input checked before any work, run
semantics (resume only unfinished runs, one run at a time), broken state
files, interruptions.  Each test names the defect it keeps fixed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from lsst.cpcombined.cli.main import main as cli_main
from lsst.cpcombined.repo.validity import parse_validity_date, validity_range
from lsst.cpcombined.script import core as core_module
from lsst.cpcombined.script.runner import PreflightError, run_procedure
from lsst.cpcombined.script.state import RunBook, RunInProgress, StateFileError
from lsst.daf.butler import Butler, CollectionType

BASE = {
    "instrument": "LATISS",
    "script_mode": "BIAS",
    "generate_calibrations": True,
    "n_bias": 2,
    "simulation": {"seed": 5, "geometry_scale": 0.0625},
}


def _config(tmp_path: Path, **changes) -> Path:
    doc = {**BASE, **changes}
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _n_exposures(repo: Path) -> int:
    if not (repo / "butler.yaml").exists():
        return 0
    butler = Butler.from_config(str(repo))
    return len(list(butler.registry.queryDimensionRecords("exposure")))


@pytest.fixture
def fake_core(monkeypatch):
    """Replace the procedure's work by a quick success (the run semantics
    under test do not depend on the pipelines); records each run id."""
    seen: list[str] = []

    async def run(self):
        self.summary.run_id = self._run_id()
        seen.append(self.summary.run_id)
        self.summary.success = True
        return self.summary

    monkeypatch.setattr(core_module.MakeCalibrationsCore, "run", run)
    return seen


# -- validity dates (issue: dates validated with one clear line) -------------------------


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("2026-01-01T00:00:00Z", "has a time zone"),
        ("2026-01-01T00:00:00+00:00", "has a time zone"),
        ("20260101", "not a date of the form YYYY-MM-DD"),
        ("2026-13-01", "not a valid calendar date"),
        ("tomorrow", "not a date of the form"),
    ],
)
def test_bad_validity_dates_are_refused(value, fragment):
    with pytest.raises(ValueError, match=fragment) as err:
        parse_validity_date(value, "certify_calib_begin_date")
    assert "certify_calib_begin_date" in str(err.value) and "\n" not in str(err.value)


def test_validity_ranges():
    rng = validity_range("1950-01-01", "2050-01-01")
    assert rng.unbounded_begin and rng.stored == ("-inf", "2050-01-01T00:00:00.000")
    with pytest.raises(ValueError, match="ends before 1970"):
        validity_range("1950-01-01", "1960-01-01")
    with pytest.raises(ValueError, match="is not after"):
        validity_range("2026-02-01", "2026-01-01")


@pytest.mark.parametrize(
    "begin, fragment",
    [
        ("2026-01-01T00:00:00Z", "has a time zone"),
        ("20260101", "YYYY-MM-DD"),
    ],
)
def test_bad_dates_fail_before_any_exposure(tmp_path, begin, fragment):
    repo = tmp_path / "repo"
    path = _config(tmp_path, certify_calib_begin_date=begin, certify_calib_end_date="2030-01-01")
    with pytest.raises(Exception, match=fragment):
        run_procedure(path, repo=repo)
    assert not repo.exists()


def test_unquoted_yaml_datetime_with_zone_is_refused(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    text = yaml.safe_dump(BASE) + "certify_calib_begin_date: 2026-01-01T00:00:00Z\n"
    path.write_text(text)
    assert cli_main(["run", str(path), "--repo", str(tmp_path / "repo")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "time zone" in err[0] and "Traceback" not in err[0]


# -- checks before acquiring ----------------------------------------------------------------


def test_calib_collection_that_is_a_run_is_refused_up_front(tmp_path, fake_core):
    repo = tmp_path / "repo"
    run_procedure(_config(tmp_path), repo=repo)  # creates the repository
    Butler.from_config(str(repo), writeable=True).collections.register("LATISS/calib/mine", CollectionType.RUN)
    before = _n_exposures(repo)
    with pytest.raises(PreflightError, match="exists as a RUN collection, not CALIBRATION"):
        run_procedure(_config(tmp_path, calib_collection="LATISS/calib/mine", n_bias=3), repo=repo)
    assert _n_exposures(repo) == before


def test_missing_input_collections_are_refused_up_front(tmp_path):
    repo = tmp_path / "repo"
    path = _config(tmp_path, input_collections_bias="LATISS/calib,u/nobody/calibs")
    with pytest.raises(PreflightError, match=r"u/nobody/calibs \(input_collections_bias\)"):
        run_procedure(path, repo=repo)
    assert _n_exposures(repo) == 0


@contextlib.contextmanager
def read_only(directory: Path):
    """Make ``directory`` read-only for this process: a read-only bind
    mount when running as root (root ignores permission bits), else the
    permission bits.  Skips the test when neither is possible."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(directory), str(directory)], check=False, capture_output=True)
        done = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(directory)], check=False, capture_output=True
        )
        if done.returncode != 0:
            subprocess.run(["umount", str(directory)], check=False, capture_output=True)
            pytest.skip(f"cannot make {directory} read-only here: {done.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["umount", str(directory)], check=True, capture_output=True)
    else:
        modes = {p: p.stat().st_mode for p in [directory, *directory.rglob("*")]}
        for path in modes:
            path.chmod(modes[path] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)


def test_unwritable_outputs_are_refused_up_front(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        with pytest.raises(PreflightError, match="--summary-json .* cannot be written"):
            run_procedure(_config(tmp_path), repo=tmp_path / "repo", summary_json=locked / "s.json")
    with pytest.raises(PreflightError, match="--report .* is a directory"):
        run_procedure(_config(tmp_path), repo=tmp_path / "repo", report=tmp_path)
    assert not (tmp_path / "repo").exists()


def test_repository_path_problems(tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    with pytest.raises(PreflightError, match="is a file, not a directory"):
        run_procedure(_config(tmp_path), repo=a_file)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    with pytest.raises(PreflightError, match="is not a butler repository"):
        run_procedure(_config(tmp_path), repo=busy)


def test_read_only_repository_is_refused_up_front(tmp_path, fake_core):
    repo = tmp_path / "repo"
    run_procedure(_config(tmp_path), repo=repo)
    with read_only(repo):
        with pytest.raises(PreflightError, match="read-only"):
            run_procedure(_config(tmp_path, n_bias=3), repo=repo)


# -- run semantics --------------------------------------------------------------------------


def test_finished_run_is_not_replayed(tmp_path, fake_core, capsys):
    repo = tmp_path / "repo"
    path = _config(tmp_path)
    assert run_procedure(path, repo=repo)[0] == 0
    assert run_procedure(path, repo=repo)[0] == 0
    assert len(fake_core) == 2 and fake_core[0] != fake_core[1]
    err = capsys.readouterr().err
    assert (
        f"Starting new run {fake_core[1]} (the last run with this configuration, {fake_core[0]}, succeeded"
        in err
    )
    states = {
        p.stem: json.loads(p.read_text())["status"]
        for p in (repo / "cpcombined" / "runs" / "LATISS").glob("*.json")
    }
    assert states == {fake_core[0]: "succeeded", fake_core[1]: "succeeded"}
    with pytest.raises(ValueError, match="a finished run is not re-entered"):
        run_procedure(path, repo=repo, resume=fake_core[0])


def test_unfinished_run_is_resumed_and_moved_repository_still_resumes(tmp_path, fake_core, capsys):
    repo = tmp_path / "repo"
    path = _config(tmp_path)
    run_procedure(path, repo=repo)
    # Leave the first run unfinished, as a kill does, then move the repository.
    state_path = repo / "cpcombined" / "runs" / "LATISS" / f"{fake_core[0]}.json"
    doc = json.loads(state_path.read_text())
    doc["status"] = "running"
    state_path.write_text(json.dumps(doc))
    moved = tmp_path / "moved"
    shutil.move(repo, moved)
    run_procedure(path, repo=moved)
    assert fake_core[1] == fake_core[0]
    assert f"Resuming unfinished run {fake_core[0]}" in capsys.readouterr().err


def test_second_identical_run_fails_at_once(tmp_path):
    repo = tmp_path / "repo"
    book = RunBook(repo, "LATISS")
    with book.lock("(starting)"):
        book.set_lock_holder("20261204T000000Z")
        with pytest.raises(RunInProgress, match="LATISS run 20261204T000000Z .* is already in progress"):
            with RunBook(repo, "LATISS").lock():
                pass
    # Through the command: one clear line.
    path = _config(tmp_path)
    holder = threading.Event()
    release = threading.Event()

    def hold():
        with book.lock():
            book.set_lock_holder("20261204T010000Z")
            holder.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        holder.wait(10)
        result = subprocess.run(
            [sys.executable, "-m", "lsst.cpcombined.cli.main", "run", str(path), "--repo", str(repo)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        release.set()
        thread.join()
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "run 20261204T010000Z" in lines[0] and "already in progress" in lines[0]


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "is empty"),
        ('{"run_id": "x", "conf', "is not valid JSON"),
        ("[1, 2]", "holds a list"),
        ('{"run_id": 3, "config_key": "k", "status": "running"}', "invalid run_id"),
    ],
)
def test_broken_state_file_names_the_file_and_the_fix(tmp_path, fake_core, capsys, content, fragment):
    repo = tmp_path / "repo"
    run_procedure(_config(tmp_path), repo=repo)
    bad = repo / "cpcombined" / "runs" / "LATISS" / "20200101T000000Z.json"
    bad.write_text(content)
    with pytest.raises(StateFileError, match=fragment):
        run_procedure(_config(tmp_path), repo=repo)
    assert cli_main(["run", str(_config(tmp_path)), "--repo", str(repo)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(bad) in err and "move it away to start afresh" in err


# -- repository creation ---------------------------------------------------------------------


def test_init_edge_cases(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A dotted name is a directory, not a configuration format.
    assert cli_main(["init", "daily_repo.v2"]) == 0
    assert (tmp_path / "daily_repo.v2" / "butler.yaml").exists()
    butler = Butler.from_config("daily_repo.v2")
    assert butler.collections.get_info("LATISS/calib").type is CollectionType.CHAINED
    # Again: the instruments are checked, nothing else changes.
    assert cli_main(["init", "daily_repo.v2"]) == 0
    out = capsys.readouterr()
    assert "already a butler repository" in out.out and out.out.count("\n") == 2 and not out.err
    # A path that is a file.
    Path("afile").write_text("x")
    assert cli_main(["init", "afile"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0]


# -- ingest ---------------------------------------------------------------------------------


def _simulated_raw_files(directory: Path, n: int = 2, image_type: str = "bias") -> list[Path]:
    """Simulated LATISS raw files written to ``directory`` (not ingested)."""
    from astropy.time import Time
    from lsst.cpcombined.obs.instrument import get_instrument
    from lsst.cpcombined.obs.raw import write_raw_file
    from lsst.cpcombined.simulation import SimulationTruth
    from lsst.cpcombined.simulation.camera import primary_header
    from lsst.cpcombined.simulation.sensor import simulate_raw_amps

    truth = SimulationTruth("LATISS", {"seed": 9, "geometry_scale": 0.0625})
    inst = get_instrument("LATISS")
    det = inst.camera_description.detectors[0]
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        seq = 100 + i
        hdr = primary_header(
            inst,
            det,
            image_type=image_type,
            obs_id=inst.make_obs_id("O", 20261203, seq),
            day_obs=20261203,
            seq_num=seq,
            controller="O",
            begin=Time(f"2026-12-03T20:00:0{i}", scale="tai"),
            exposure_time=0.0,
            dark_time=0.3,
            physical_filter="empty~empty",
            group_id=f"g{i}",
        )
        amps = simulate_raw_amps(truth, det.id, image_type, 0.0, 0.3, i, truth.exposure_rng(i, det.id))
        path = directory / f"raw{i}.fits"
        write_raw_file(path, hdr, amps, truth.layout, compress=True)
        files.append(path)
    return files


def _edit_header(path: Path, out: Path, **cards) -> Path:
    from astropy.io import fits

    with fits.open(path) as hdul:
        for key, value in cards.items():
            if value is None:
                del hdul[0].header[key]
            else:
                hdul[0].header[key] = value
        hdul.writeto(out, overwrite=True)
    return out


def test_ingest_of_relative_paths_and_no_empty_collection_on_failure(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    assert cli_main(["init", str(repo)]) == 0
    files = _simulated_raw_files(tmp_path / "raws")
    monkeypatch.chdir(tmp_path / "raws")
    # A bad file among good ones: nothing at all, not even the RUN.
    Path("junk.fits").write_text("not fits")
    assert cli_main(["ingest", str(repo), "raw0.fits", "junk.fits"]) == 1
    butler = Butler.from_config(str(repo))
    assert not list(butler.collections.query("LATISS/raw/*"))
    # Relative names of good files.
    assert cli_main(["ingest", str(repo), *(f.name for f in files)]) == 0
    assert "ingested 2 file(s)" in capsys.readouterr().out
    assert _n_exposures(repo) == 2
    # A relative staging directory for the simulator.
    assert (
        cli_main(
            [
                "simulate",
                str(repo),
                "--instrument",
                "LATISS",
                "--image-type",
                "bias",
                "--count",
                "1",
                "--geometry-scale",
                "0.0625",
                "--staging-dir",
                "stage",
            ]
        )
        == 0
    )
    assert _n_exposures(repo) == 3


@pytest.mark.parametrize(
    "cards, fragment",
    [
        ({"IMGTYPE": None, "TESTTYPE": None}, "no image type"),
        ({"IMGTYPE": "UNKNOWN", "TESTTYPE": None}, "no image type"),
        ({"IMGTYPE": "BANANA", "TESTTYPE": None}, "unknown image type 'BANANA'"),
        ({"EXPTIME": -5.0}, "EXPTIME -5.0 is negative"),
        ({"EXPTIME": None}, "no EXPTIME"),
        ({"DATE-OBS": "yesterday", "DATE-BEG": None, "MJD-BEG": None}, "DATE-OBS 'yesterday' is not a date"),
    ],
)
def test_ingest_refuses_bad_metadata(tmp_path, capsys, cards, fragment):
    repo = tmp_path / "repo"
    assert cli_main(["init", str(repo)]) == 0
    good = _simulated_raw_files(tmp_path / "raws", n=1)[0]
    bad = _edit_header(good, tmp_path / "bad.fits", **cards)
    capsys.readouterr()
    assert cli_main(["ingest", str(repo), str(bad)]) == 1
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert _n_exposures(repo) == 0
    odd_only = all(k in ("IMGTYPE", "TESTTYPE", "EXPTIME") for k in cards) and cards.get("EXPTIME") is None
    if odd_only and "BANANA" not in str(cards.get("IMGTYPE")):
        # A known-odd header is accepted when asked.
        assert cli_main(["ingest", "--allow-odd-headers", str(repo), str(bad)]) == 0


def test_skip_bad_skips_every_bad_file_and_bogus_transfer(tmp_path, capsys):
    repo = tmp_path / "repo"
    assert cli_main(["init", str(repo)]) == 0
    good, other = _simulated_raw_files(tmp_path / "raws")
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(other.read_bytes()[: other.stat().st_size // 2])
    assert cli_main(["ingest", "--skip-bad", str(repo), str(good), str(truncated)]) == 1
    captured = capsys.readouterr()
    assert "ingested 1 file(s)" in captured.out and "truncated.fits" in captured.err
    assert "Traceback" not in captured.err
    with pytest.raises(SystemExit):
        cli_main(["ingest", "--transfer", "bogus", str(repo), str(other)])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_interrupted_ingest_leaves_no_orphan(tmp_path):
    from lsst.cpcombined.obs.ingest import ingest_raws
    from lsst.cpcombined.repo.create import create_repo

    butler = create_repo(tmp_path / "repo")
    (raw,) = _simulated_raw_files(tmp_path / "raws", n=1)
    ingest_raws(butler, [raw])
    uri = butler.getURI(
        "raw", instrument="LATISS", detector=0, exposure=2026120300100, collections="LATISS/raw/all"
    )
    # What a kill between the file copy and the registry commit leaves: the
    # file in the datastore, no record.
    refs = list(butler.query_datasets("raw", collections="LATISS/raw/all", explain=False))
    butler.pruneDatasets(refs, disassociate=True, unstore=True, purge=True)
    shutil.copy(raw, uri.ospath)
    ingest_raws(butler, [raw])
    stored = {str(p) for p in (tmp_path / "repo" / "LATISS").rglob("*.fits")}
    assert stored == {uri.ospath}


# -- policy: faults every frame shares ---------------------------------------------------------


def test_bias_offset_in_every_frame_is_not_certified(tmp_path):
    """A constant offset in the imaging area of every bias (not in the
    overscan) makes a bias that verifies internally (each frame minus the
    same offset) but is wrong: the LEVEL test of the bias under test fails
    on every amplifier of every exposure, so the majority rule refuses it."""
    config = _config(
        tmp_path,
        n_bias=4,
        simulation={
            "seed": 5,
            "geometry_scale": 0.0625,
            "faults": [{"image_type": "bias", "imaging_offset_adu": 5000.0}],
        },
    )
    code, summary = run_procedure(config, repo=tmp_path / "repo")
    assert code == 1
    bias = summary.calibrations["bias"]
    assert bias.decision == "fail" and not bias.certified
    assert "LEVEL" in bias.decision_report
    levels = [v for v in bias.extra["decision"]["COUNTS"].values()]
    assert all(counts.get("LEVEL") == 16 for counts in levels), levels


def test_bias_with_a_dead_amplifier_is_certified_and_named(tmp_path):
    """One amplifier NaN in every bias: the product masks it BAD; the bias is
    certified (the other amplifiers are good and ISR masks the dead one) and
    the amplifier is named in the decision report and the summary."""
    config = _config(
        tmp_path,
        n_bias=4,
        simulation={
            "seed": 5,
            "geometry_scale": 0.0625,
            "faults": [{"image_type": "bias", "amplifiers": ["C10"], "nan": True}],
        },
    )
    summary_path = tmp_path / "summary.json"
    code, summary = run_procedure(config, repo=tmp_path / "repo", summary_json=summary_path)
    assert code == 0, summary.error
    bias = summary.calibrations["bias"]
    assert bias.certified
    assert bias.warnings == [
        "RXX_S00 C10: 100% of the bias under test is unusable (masked BAD); the amplifier gives no calibrated data"
    ]
    assert "WARNING: RXX_S00 C10" in bias.decision_report
    assert json.loads(summary_path.read_text())["calibrations"]["bias"]["warnings"] == bias.warnings


def test_sigint_ends_with_a_summary_and_the_run_resumes(tmp_path):
    import signal
    import time

    config = _config(
        tmp_path,
        n_bias=6,
        script_mode="BIAS_DARK",
        n_dark=3,
        exp_times_dark=10,
        execution={"pipeline_mode": "inprocess", "max_jobs": 1},
    )
    repo = tmp_path / "repo"
    summary = tmp_path / "summary.json"
    cmd = [
        sys.executable,
        "-m",
        "lsst.cpcombined.cli.main",
        "run",
        str(config),
        "--repo",
        str(repo),
        "--summary-json",
        str(summary),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = repo / "cpcombined" / "runs" / "LATISS"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = list(runs.glob("*.json")) if runs.exists() else []
        if states and "cpBias" in json.loads(states[0].read_text()).get("jobs", {}):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    doc = json.loads(summary.read_text())
    assert doc["success"] is False and doc["error"].startswith("interrupted")
    (state,) = runs.glob("*.json")
    assert json.loads(state.read_text())["status"] == "stopped"
    code, resumed = run_procedure(config, repo=repo)
    assert code == 0 and resumed.run_id == state.stem


def test_certify_command_messages(tmp_path, capsys):
    repo = tmp_path / "repo"
    assert cli_main(["init", str(repo)]) == 0
    Butler.from_config(str(repo), writeable=True).collections.register("gen/bias", CollectionType.RUN)
    capsys.readouterr()
    # A bad date: one line naming the flag.
    assert (
        cli_main(
            [
                "certify",
                str(repo),
                "--dataset-type",
                "bias",
                "--run",
                "gen/bias",
                "--collection",
                "LATISS/calib/x",
                "--begin",
                "2026-01-01T00:00:00Z",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--begin" in err[0] and "time zone" in err[0]
    # A missing decision names the CLI flags; the result prints once.
    import numpy as np
    from lsst.cpcombined.repo.products import to_masked_image
    from lsst.daf.butler import DatasetType

    butler = Butler.from_config(str(repo), writeable=True)
    butler.registry.registerDatasetType(
        DatasetType(
            "bias", ("instrument", "detector"), "ExposureF", universe=butler.dimensions, isCalibration=True
        )
    )
    zeros = np.zeros((8, 16))
    butler.put(
        to_masked_image(zeros, zeros, zeros.astype(np.uint8), unit=None),
        "bias",
        instrument="LATISS",
        detector=0,
        run="gen/bias",
    )
    args = [
        "certify",
        str(repo),
        "--dataset-type",
        "bias",
        "--run",
        "gen/bias",
        "--collection",
        "LATISS/calib/x",
    ]
    assert cli_main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--decision-collection" in err[0] and "--no-decision" in err[0]
    assert cli_main([*args, "--no-decision"]) == 0
    out = capsys.readouterr()
    assert out.out.count("certified into LATISS/calib/x") == 1 and "[-inf, 2050-01-01" in out.out
    assert "certified into" not in out.err
