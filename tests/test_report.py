"""The report of a run (lsst.cpcombined.cli.report) and what the runner keeps:

- the default daily run (config/examples/latiss_daily.yaml, simulated):
  read noise measured within 2 % of the truth on every amplifier, a report
  with every section, a defect map that shows each true defect (pixel check
  on the embedded PNG), a headless Chromium screenshot at 1400 px, the
  summary and report kept per run id;
- a bias fault that adds read noise to one amplifier's imaging area is
  flagged in the summary, the log and the report;
- a re-run keeps the earlier run's outputs, and a resumed run's summary and
  report keep the timings of the steps done before the restart.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from lsst.cpcombined.script.runner import run_procedure
from lsst.cpcombined.simulation import SimulationTruth

ROOT = Path(__file__).resolve().parents[1]
DAILY = ROOT / "config" / "examples" / "latiss_daily.yaml"

#: Sections every report of a BIAS_DARK_FLAT run with PTC and defects has.
SECTIONS = (
    "verdict", "decisions", "read-noise",
    "bias-verification", "bias-amps", "bias-images",
    "dark-verification", "dark-amps", "dark-images",
    "flat-verification", "flat-amps", "flat-images",
    "ptc", "defects", "previous", "truth", "history", "timings",
)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_dir(repo: Path, run_id: str) -> Path:
    return repo / "cpcombined" / "runs" / "LATISS" / run_id


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    """The default daily run, as the README runs it."""
    tmp = tmp_path_factory.mktemp("daily")
    repo = tmp / "repo"
    code, summary = run_procedure(DAILY, repo=repo, summary_json=tmp / "s.json", report=tmp / "r.html")
    assert code == 0, summary.error
    doc = yaml.safe_load(DAILY.read_text())
    truth = SimulationTruth(doc["instrument"], doc["simulation"])
    return tmp, repo, summary, truth


def test_read_noise_within_two_percent_of_truth(daily):
    """Both measurements (overscan of the 20 biases; white noise of 5 bias
    pairs) are within 2 % of the simulated read noise on all 16 amps (in
    practice 0.3 %), nothing is flagged, and the combined bias carries them."""
    tmp, repo, summary, truth = daily
    doc = json.loads((tmp / "s.json").read_text())
    result = doc["calibrations"]["bias"]["extra"]["read_noise"]
    amps = result["detectors"]["0"]
    dt = truth.detector_truth(0)
    assert set(amps) == set(dt.read_noise)
    deviations = []
    for amp, entry in amps.items():
        for source in ("overscan", "image"):
            value, error = entry[source]
            dev = value / dt.read_noise[amp] - 1
            assert abs(dev) <= 0.02, (amp, source, value, dt.read_noise[amp])
            assert 0 < error < 0.005 * value, (amp, source, error)
            deviations.append(abs(dev))
        assert entry["truth"] == dt.read_noise[amp]
        assert entry["flags"] == []
    assert max(deviations) < 0.006  # measured: 0.27 % at most
    assert result["flags"] == []
    # The combined bias records the measurement (cp_pipe's key and ours).
    from lsst.cpcombined.repo.exposure_fits import read_exposure_metadata
    from lsst.daf.butler import Butler

    butler = Butler.from_config(str(repo))
    ref = butler.find_dataset("bias", instrument="LATISS", detector=0,
                              collections=summary.calibrations["bias"].generated_collection)
    md = read_exposure_metadata(butler.getURI(ref).ospath)
    assert md["LSST ISR READNOISE C10"] == pytest.approx(amps["C10"]["overscan"][0])
    assert md["CPC_READNOISE_NFRAMES"] == 20 and md["CPC_READNOISE_NPAIRS"] == 5
    assert md["CPC_OVERSCAN_LEVEL_C10"] == pytest.approx(dt.bias_level["C10"], abs=3.0)


def test_report_has_every_section(daily):
    tmp, repo, summary, _ = daily
    text = (tmp / "r.html").read_text()
    for anchor in SECTIONS:
        assert f"id='{anchor}'" in text, anchor
    # Self-contained: no script, nothing fetched.
    assert "<script" not in text and not re.search(r"(src|href)=['\"]https?:", text)
    # 3 verification figures, 3 products, 2 PTC, the defect map, 3 truth comparisons, the timeline.
    assert text.count("data:image/png;base64,") >= 13
    # The verdict, and the validity as stored (a 1950 begin is unbounded).
    assert "All requested calibrations certified" in text
    assert "[-inf, 2050-01-01T00:00:00" in text and "1950-01-01" in text
    # Pass/fail grids: one cell per amp and exposure with a legend.
    assert text.count('<td class="pass" title="20') >= (20 + 22 + 20) * 16
    assert "failed tests (" in text and "not verified" in text
    # Per-amp tables, PTC figures, defects table and truth comparison.
    expected = (
        "overscan level (ADU)", "truth hot pixels", "flat / truth − 1 (%)", "gain (e-/ADU)",
        'alt="PTC curves detector 0"', 'alt="PTC residuals detector 0"', "variance vs mean on log axes",
        "COVARIANCES at lags (0, 1) and (1, 0)", 'alt="defect map detector 0"', "simulated truth",
        "no earlier certified bias", 'alt="timeline of the steps"', 'alt="bias detector 0 minus truth"',
    )
    for words in expected:
        assert words in text, words
    # The defects row says what they were made from (not "0 exposures").
    assert "the dark (22 exposures) and the flat (20 exposures)" in text


def _defect_map(text: str):
    from PIL import Image

    match = re.search(r'<img class="defect-map"[^>]*src="data:image/png;base64,([^"]+)"[^>]*'
                      r'data-axes="([^"]+)" data-shape="([^"]+)"', text)
    assert match, "no defect map"
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(match.group(1)))).convert("RGB")).astype(int)
    left, top, right, bottom = (float(v) for v in match.group(2).split(","))
    ny, nx = (int(v) for v in match.group(3).split(","))

    def pixel(x: float, y: float) -> tuple[int, int]:
        return int(round(left + x / nx * (right - left))), int(round(bottom - y / ny * (bottom - top)))

    return image, pixel


def _coloured(image: np.ndarray, col: int, row: int, radius: int = 2) -> bool:
    patch = image[row - radius: row + radius + 1, col - radius: col + radius + 1]
    saturation = patch.max(axis=2) - patch.min(axis=2)
    return bool((saturation > 100).any())


def test_defect_map_shows_every_true_defect(daily):
    """At the display position of every true hot pixel, cold pixel and bad
    column of the simulation the map is coloured; away from them it is not."""
    tmp, repo, summary, truth = daily
    text = (tmp / "r.html").read_text()
    image, pixel = _defect_map(text)
    dt = truth.detector_truth(0)
    true_mask = dt.hot_mask | dt.cold_mask
    # Defects within the detector border are drawn as part of the (grey) border.
    border = int(re.search(r"detector border \((\d+) px\)", text).group(1))
    inner = np.zeros_like(true_mask)
    inner[border:-border, border:-border] = True
    ys, xs = np.nonzero(true_mask & inner)
    assert len(xs) >= 5  # hot pixels, cold pixels and a 500-pixel dead column
    for x, y in zip(xs[:: max(1, len(xs) // 60)], ys[:: max(1, len(ys) // 60)], strict=True):
        col, row = pixel(x + 0.5, y + 0.5)
        assert _coloured(image, col, row), (x, y)
    # Background far from any defect (and from the border) stays uncoloured.
    rng = np.random.default_rng(0)
    far = 0
    while far < 40:
        x, y = rng.integers(20, true_mask.shape[1] - 20), rng.integers(20, true_mask.shape[0] - 20)
        if true_mask[max(0, y - 15): y + 15, max(0, x - 15): x + 15].any():
            continue
        far += 1
        col, row = pixel(x + 0.5, y + 0.5)
        assert not _coloured(image, col, row, radius=0), (x, y)
    assert "true defect pixels found (100.0 %)" in text


def test_screenshot_in_chromium(daily):
    """Headless Chromium renders the report at 1400 px: the page is wide,
    long, and starts with the green verdict box."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/run_tests.sh installs Debian's chromium package)")
    from PIL import Image

    tmp, *_ = daily
    shot = tmp / "report.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1400,9000",
         (tmp / "r.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.exists(), proc.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[1] == 1400
    # Content down the page (the report is longer than 9000 px).
    assert (image[-500:] < 200).any()
    # The verdict box (#dcf1dd with a #2e7d32 border) near the top.
    top = image[:400]
    green = (np.abs(top - np.array([0xDC, 0xF1, 0xDD])).sum(axis=2) < 12).sum()
    assert green > 20000, green


def test_outputs_kept_per_run(daily):
    tmp, repo, summary, _ = daily
    kept = _run_dir(repo, summary.run_id)
    assert (kept / "report.html").read_bytes() == (tmp / "r.html").read_bytes()
    assert json.loads((kept / "summary.json").read_text()) == json.loads((tmp / "s.json").read_text())
    # The procedure's steps carry their start times and the (single) session.
    doc = json.loads((tmp / "s.json").read_text())
    assert all(s["session"] == 0 for s in doc["steps"])
    procedure = [s for s in doc["steps"] if s["name"].startswith(("take ", "cp", "verify", "certify "))]
    assert len(procedure) >= 16 and all(s["started"] for s in procedure)


def test_report_is_fast(daily):
    """The report of the default daily run costs at most ~10 s of CPU on an
    idle machine (history included); asserted with margin."""
    from lsst.cpcombined.cli.report import write_report
    from lsst.cpcombined.script.schema import validate_config

    tmp, repo, summary, truth = daily
    doc = yaml.safe_load(DAILY.read_text())
    for key in ("instrument", "simulation", "execution"):
        doc.pop(key, None)
    cfg = validate_config({**doc, "repo": str(repo)}, "LATISS")
    t0 = time.process_time()
    ctx = write_report(tmp / "again.html", summary, repo=str(repo), config=cfg, truth=truth)
    cpu = time.process_time() - t0
    assert cpu < 20.0, cpu
    assert not [f for f in ctx.findings if "could not be built" in f.text]


def test_report_built_in_two_processes_is_the_same_page(daily):
    """Half of the sections built by a `ReportWorker` (as `cpcombined run`
    does on a machine with more than one CPU): the same bytes and the same
    findings, in the same order, as the page built in one process."""
    from lsst.cpcombined.cli.report import ReportWorker, write_report
    from lsst.cpcombined.script.schema import validate_config

    tmp, repo, summary, truth = daily
    doc = yaml.safe_load(DAILY.read_text())
    for key in ("instrument", "simulation", "execution"):
        doc.pop(key, None)
    cfg = validate_config({**doc, "repo": str(repo)}, "LATISS")
    alone = write_report(tmp / "alone.html", summary, repo=str(repo), config=cfg, truth=truth)
    worker = ReportWorker()
    try:
        both = write_report(
            tmp / "both.html", summary, repo=str(repo), config=cfg, truth=truth, worker=worker
        )
    finally:
        worker.close()
    assert (tmp / "alone.html").read_bytes() == (tmp / "both.html").read_bytes()
    assert [f.text for f in alone.findings] == [f.text for f in both.findings]


def test_the_runs_report_is_the_page_built_afterwards(daily):
    """The run writes its report in two processes, reusing what the
    read-noise check read: the page is the one built afterwards, from the
    finished run, in one process."""
    from lsst.cpcombined.cli.report import write_report
    from lsst.cpcombined.script.schema import validate_config
    from lsst.cpcombined.script.state import RunState

    tmp, repo, summary, truth = daily
    doc = yaml.safe_load(DAILY.read_text())
    for key in ("instrument", "simulation", "execution"):
        doc.pop(key, None)
    cfg = validate_config({**doc, "repo": str(repo)}, "LATISS")
    state = RunState(_run_dir(repo, summary.run_id).with_suffix(".json"))
    write_report(
        tmp / "afterwards.html",
        summary,
        repo=str(repo),
        config=cfg,
        truth=truth,
        sessions=state.get("sessions", []),
    )
    assert (tmp / "r.html").read_text() == (tmp / "afterwards.html").read_text()


# -- a noisy amplifier -------------------------------------------------------------

SMALL = {"seed": 3, "geometry_scale": 0.125}


def _write(tmp: Path, name: str, doc: dict) -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_extra_read_noise_on_one_amp_is_flagged(tmp_path, capfd):
    """6 e- of extra noise in C03's imaging area (all biases): the imaging
    measurement reads sqrt(9.1² + 6²) = 10.9 e- against the overscan's
    9.1 e-; only C03 is flagged, in the summary, the log and the report."""
    config = {
        "instrument": "LATISS", "script_mode": "BIAS", "generate_calibrations": True, "n_bias": 10,
        "simulation": {**SMALL,
                       "faults": [{"image_type": "bias", "amplifiers": ["C03"], "extra_noise_e": 6.0}]},
    }
    repo = tmp_path / "repo"
    code, summary = run_procedure(_write(tmp_path, "c.yaml", config), repo=repo,
                                  summary_json=tmp_path / "s.json", report=tmp_path / "r.html")
    assert code == 0, summary.error
    result = json.loads((tmp_path / "s.json").read_text())["calibrations"]["bias"]["extra"]["read_noise"]
    c03 = result["detectors"]["0"]["C03"]
    assert c03["image"][0] == pytest.approx(math.hypot(9.1, 6.0), rel=0.02)
    assert c03["overscan"][0] == pytest.approx(9.1, rel=0.02)
    assert len(result["flags"]) == 1 and "C03" in result["flags"][0]
    assert "imaging area" in result["flags"][0] and "overscan" in result["flags"][0]
    assert all(not v["flags"] for amp, v in result["detectors"]["0"].items() if amp != "C03")
    err = capfd.readouterr().err
    assert "Read noise: 1 disagreement(s)" in err and "C03" in err
    text = (tmp_path / "r.html").read_text()
    assert "read noise: detector 0 C03: overscan" in text  # in the verdict's list
    assert re.search(r'<td class="warn"[^>]*>1\d\.\d+ ± 0\.\d+</td>', text)  # the highlighted imaging value



# -- comparison with the previous certification ---------------------------------------


def test_comparison_with_the_previous_certified_bias(tmp_path):
    """Two days: yesterday's bias certified until today, today's from today
    on with C05 5 ADU (≈5.5 e-) higher.  Today's report finds yesterday's by
    its validity, shows the difference image and flags C05 alone."""
    import datetime

    today = datetime.date.today()
    base = {"instrument": "LATISS", "script_mode": "BIAS", "generate_calibrations": True, "n_bias": 6,
            "simulation": SMALL}
    day1 = {**base, "certify_calib_begin_date": (today - datetime.timedelta(days=300)).isoformat(),
            "certify_calib_end_date": today.isoformat()}
    day2 = {**base, "certify_calib_begin_date": today.isoformat(),
            "certify_calib_end_date": (today + datetime.timedelta(days=3650)).isoformat(),
            "simulation": {**SMALL, "faults": [{"image_type": "bias", "amplifiers": ["C05"],
                                                "imaging_offset_adu": 5.0}]}}
    repo = tmp_path / "repo"
    code1, first = run_procedure(_write(tmp_path, "d1.yaml", day1), repo=repo)
    code2, second = run_procedure(_write(tmp_path, "d2.yaml", day2), repo=repo, report=tmp_path / "r.html")
    assert code1 == 0 and code2 == 0, (first.error, second.error)
    text = (tmp_path / "r.html").read_text()
    assert f"previous <b>{first.calibrations['bias'].generated_collection}/" in text
    assert 'alt="bias detector 0 difference with the previous"' in text
    assert "bias detector 0: amplifiers changed since the previous certification: C05 (" in text



def test_rerun_keeps_outputs_and_resume_keeps_timings(tmp_path):
    """A run that fails (a majority of faulty biases), the same command again
    (a new run: the first is kept), then the first resumed: its summary and
    report list the steps of its first session with their timings."""
    config = {
        "instrument": "LATISS", "script_mode": "BIAS", "generate_calibrations": True, "n_bias": 6,
        "simulation": {**SMALL, "faults": [
            {"image_type": "bias", "exposures": [0, 1, 2, 3], "imaging_offset_adu": 40}]},
    }
    path = _write(tmp_path, "c.yaml", config)
    repo = tmp_path / "repo"
    outputs = {"summary_json": tmp_path / "s.json", "report": tmp_path / "r.html"}
    code1, first = run_procedure(path, repo=repo, **outputs)
    code2, second = run_procedure(path, repo=repo, **outputs)
    assert code1 != 0 and code2 != 0 and first.run_id != second.run_id
    for run in (first, second):
        kept = _run_dir(repo, run.run_id)
        assert json.loads((kept / "summary.json").read_text())["run_id"] == run.run_id
        assert run.run_id in (kept / "report.html").read_text()
    assert json.loads((tmp_path / "s.json").read_text())["run_id"] == second.run_id
    before = [(s.name, s.seconds) for s in first.steps]
    assert before[0][0].startswith("take ") and before[1][0] == "cpBias" and all(t > 0 for _, t in before)
    code3, resumed = run_procedure(path, repo=repo, resume=first.run_id)
    assert code3 != 0 and resumed.run_id == first.run_id
    # Every step of the first session is still there, with its duration.
    kept_steps = [(s.name, s.seconds) for s in resumed.steps if s.session == 0]
    assert kept_steps == before
    state = json.loads((_run_dir(repo, first.run_id).with_suffix(".json")).read_text())
    assert len(state["sessions"]) == 2
    text = (_run_dir(repo, first.run_id) / "report.html").read_text()
    assert "cpBias" in text and "1 of 2 (before the restart)" in text and "started 2 times" in text
