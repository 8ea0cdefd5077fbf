"""``cpcombined history``: certified calibrations compared across days.

A repository with four simulated days of certified calibrations (bias,
dark, flat, PTC and defects made by the package's pipelines, certified with
consecutive one-day validity ranges), where on day 3 the imaging area of
amplifier C10 reads 30 e- higher than its overscan in every frame (a bias
shift the overscan does not follow): the history must show a 30 e- jump of
that amplifier's bias level on that day and nothing else.  Also: the values
against the simulated truth, calibrations written by the Science Pipelines
(cp_pipe/ip_isr layouts), missing quantities and unreadable files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import types

import numpy as np
import pytest
from astropy.table import Table
from astropy.time import Time
from conftest import run_cp_pipeline
from lsst.cpcombined.algorithms.combine import clipped_stats
from lsst.cpcombined.algorithms.isr import amp_regions
from lsst.cpcombined.cli.history import (
    HISTORY_COLUMNS,
    collect_history,
    drift_report,
    find_drifts,
    format_history,
    history_figures,
    history_html,
    measure_product,
)
from lsst.cpcombined.cli.main import main
from lsst.cpcombined.repo.calib_tables import read_calib_table, write_calib_table
from lsst.cpcombined.repo.certify import certify_calibration
from lsst.cpcombined.repo.create import create_repo
from lsst.cpcombined.repo.exposure_fits import write_exposure_fits
from lsst.cpcombined.repo.products import to_masked_image
from lsst.cpcombined.simulation import SimulationTruth
from lsst.cpcombined.simulation.camera import DARK_OVERHEAD_SECONDS, SimulatedCamera
from upstream_replica import build_replica

N_DAYS = 4
DRIFT_DAY = 3
DRIFT_AMP = "C10"
DRIFT_E = 30.0
N_BIAS, N_DARK = 5, 3
DARK_TIME = 10.0
FLUX = 2000.0  # e-/s
#: PTC ramp (e- per pixel); its flats also make the combined flat.
LEVELS = [1000.0, 5000.0, 10000.0, 20000.0, 35000.0, 50000.0]
BASE_TRUTH = {
    "seed": 5,
    "geometry_scale": 0.0625,  # 32 x 125 pixel amplifiers
    "flat_flux": FLUX,
    "hot_pixels": [[0, 40, 30, 20.0]],
    "cold_pixels": [],
    "bad_columns": [[0, 100]],
}
#: Border the defects pipeline marks (cpDefects' default).
DEFECT_BORDER = 5
COLLECTION = "LATISS/calib/daily"


def _day(day: int) -> str:
    return f"2026-01-{day:02d}"


def _truth(day: int) -> SimulationTruth:
    truth = SimulationTruth("LATISS", BASE_TRUTH)
    if day != DRIFT_DAY:
        return truth
    offset_adu = DRIFT_E / truth.detector_truth(0).gain[DRIFT_AMP]
    # Every frame of the day (bias, dark, flat): a change of the imaging
    # area's zero level, which only the bias keeps after ISR.
    faults = [
        {"image_type": t, "amplifiers": [DRIFT_AMP], "imaging_offset_adu": offset_adu}
        for t in ("bias", "dark", "flat")
    ]
    return truth.with_overrides(faults=faults)


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Four days of calibrations generated and certified for one day each."""
    root = tmp_path_factory.mktemp("history") / "repo"
    butler = create_repo(root)
    for day in range(1, N_DAYS + 1):
        cam = SimulatedCamera(butler, _truth(day))
        biases = cam.take("bias", [0.0] * N_BIAS)
        darks = cam.take("dark", [DARK_TIME] * N_DARK)
        flats = cam.take("flat", [level / FLUX for level in LEVELS for _ in range(2)])
        raw = "LATISS/raw/all"
        steps = (
            ("bias", "cpBias", [raw], biases, None),
            ("dark", "cpDark", [raw, f"d{day}/bias"], darks, None),
            ("flat", "cpFlat", [raw, f"d{day}/bias", f"d{day}/dark"], flats, None),
            # 32-pixel-wide amplifiers: a 2-pixel edge cut and lags to 2.
            (
                "ptc",
                "cpPtc",
                [raw, f"d{day}/bias", f"d{day}/dark"],
                flats,
                {"cpPtcExtract:edge": 2, "cpPtcExtract:maxLag": 2},
            ),
            ("defects", "cpDefects", [f"d{day}/dark", f"d{day}/flat"], darks + flats, None),
        )
        for calib_type, pipeline, inputs, exposures, config in steps:
            res = run_cp_pipeline(
                root,
                "LATISS",
                pipeline,
                inputs=inputs,
                output=f"d{day}/{calib_type}",
                exposures=exposures,
                config=config,
            )
            assert res.ok, (day, pipeline, res.error_summary())
        for calib_type, *_ in steps:
            certify_calibration(
                butler,
                dataset_type=calib_type,
                run=f"d{day}/{calib_type}",
                calib_collection=COLLECTION,
                begin=_day(day),
                end=_day(day + 1),
                require_decision=False,
            )
    table = collect_history(butler, "LATISS")
    return types.SimpleNamespace(root=root, butler=butler, truth=_truth(1), table=table)


def _values(table: Table, calib_type: str, quantity: str) -> dict[str, np.ndarray]:
    """Amplifier -> values by day (days in order)."""
    sel = table[(table["calib_type"] == calib_type) & (table["quantity"] == quantity)]
    out: dict[str, list[float]] = {}
    for row in sel:
        out.setdefault(str(row["amplifier"]), []).append(float(row["value"]))
    return {amp: np.array(v) for amp, v in out.items()}


def test_table_has_every_certification(days):
    table = days.table
    assert tuple(table.colnames[: len(HISTORY_COLUMNS)]) == HISTORY_COLUMNS
    assert table.meta == {"instrument": "LATISS", "calib_collection": COLLECTION}
    # 5 types x 4 days certified, 16 amplifiers x 2 quantities each.
    assert len(set(table["dataset_id"])) == 5 * N_DAYS
    assert len(table) == 5 * N_DAYS * 16 * 2
    for calib_type in ("bias", "dark", "flat", "ptc", "defects"):
        sel = table[table["calib_type"] == calib_type]
        assert sorted(set(sel["validity_begin"])) == [
            f"{_day(d)}T00:00:00.000000" for d in range(1, N_DAYS + 1)
        ]
        assert sorted(set(sel["validity_end"])) == [
            f"{_day(d)}T00:00:00.000000" for d in range(2, N_DAYS + 2)
        ]
        for begin, run in zip(sel["validity_begin"], sel["run"], strict=True):
            assert run.startswith(f"d{int(begin[8:10])}/{calib_type}/"), (begin, run)
        assert all(len(c) == 19 and c[10] == "T" for c in sel["creation_date"])
        # Rows are in time order.
        assert list(sel["validity_begin"]) == sorted(sel["validity_begin"])
    assert set(table[table["calib_type"] == "flat"]["physical_filter"]) == {"SDSSr_65mm~empty"}
    assert set(table[table["calib_type"] != "flat"]["physical_filter"]) == {""}
    units = {(r["calib_type"], r["quantity"]): r["unit"] for r in table}
    assert units == {
        ("bias", "level"): "electron",
        ("bias", "noise"): "electron",
        ("dark", "dark_current"): "electron / s",
        ("dark", "noise"): "electron / s",
        ("flat", "response"): "",
        ("flat", "rms"): "",
        ("ptc", "gain"): "electron / adu",
        ("ptc", "read_noise"): "electron",
        ("defects", "n_defects"): "",
        ("defects", "n_defect_pixels"): "",
    }
    # Detector selection by name; an unknown detector is one clear error.
    assert len(collect_history(days.butler, "LATISS", detectors=["RXX_S00"])) == len(table)
    with pytest.raises(ValueError, match="LATISS has no detector 3; its detectors are 0 \\(RXX_S00\\)"):
        collect_history(days.butler, "LATISS", detectors=[3])
    with pytest.raises(LookupError, match="'LATISS/calib/weekly' does not exist"):
        collect_history(days.butler, "LATISS", calib_collection="LATISS/calib/weekly")
    with pytest.raises(ValueError, match="'LATISS/raw/all' is a RUN collection: certifications are in CALIB"):
        collect_history(days.butler, "LATISS", calib_collection="LATISS/raw/all")


def test_values_match_the_truth(days):
    table, truth = days.table, days.truth
    dt = truth.detector_truth(0)
    regions = amp_regions(truth.layout)
    levels = _values(table, "bias", "level")
    noises = _values(table, "bias", "noise")
    for amp, (ys, xs) in regions.items():
        # The combined bias: gain x the fixed 2-d structure + the dark current of its 0.3 s.
        expected = dt.bias_structure[ys, xs] * dt.gain[amp] + dt.dark_current[ys, xs] * DARK_OVERHEAD_SECONDS
        injected = np.where(np.arange(1, N_DAYS + 1) == DRIFT_DAY, DRIFT_E if amp == DRIFT_AMP else 0.0, 0.0)
        # Day to day, the amplifier mean scatters by ~0.1 e- (row-wise overscan noise).
        np.testing.assert_allclose(levels[amp] - injected, expected.mean(), atol=0.6, err_msg=amp)
        # Pixel scatter: the structure and rn/sqrt(N) (x ~1.04 from the overscan correction).
        sigma = math.sqrt(expected.var() + 1.07 * dt.read_noise[amp] ** 2 / N_BIAS)
        assert np.all(np.abs(noises[amp] / sigma - 1) < 0.1), (amp, noises[amp] / sigma)
    # Dark current: 0.02 e-/s minus the 0.3 s the bias already holds, per second of dark time.
    t_dark = DARK_TIME + DARK_OVERHEAD_SECONDS
    dark = np.array(list(_values(table, "dark", "dark_current").values()))
    expected_dark = truth.dark_current * (t_dark - DARK_OVERHEAD_SECONDS) / t_dark
    assert abs(dark.mean() - expected_dark) < 0.006  # 64 values of ~0.015 e-/s scatter
    assert np.all(np.abs(dark - expected_dark) < 0.07)
    # Flat response per amplifier: illumination x response, normalised over the detector.
    good = ~(dt.hot_mask | dt.cold_mask)
    norm = dt.flat_field[good].mean()
    for amp, values in _values(table, "flat", "response").items():
        ys, xs = regions[amp]
        np.testing.assert_allclose(
            values, dt.flat_field[ys, xs][good[ys, xs]].mean() / norm, atol=1.5e-3, err_msg=amp
        )
    # PTC gain within its quoted error (~8 % with 32 x 125 pixel amplifiers).
    gains = table[(table["calib_type"] == "ptc") & (table["quantity"] == "gain")]
    pulls = [(r["value"] - dt.gain[r["amplifier"]]) / r["error"] for r in gains]
    assert np.all(np.abs(pulls) < 4), pulls
    assert 0.05 < np.median(gains["error"] / gains["value"]) < 0.12
    # Defects: the 5-pixel border, the dead column (bottom amplifier row) and the hot pixel.
    bad = np.zeros(dt.hot_mask.shape, dtype=bool)
    bad[:DEFECT_BORDER, :] = bad[-DEFECT_BORDER:, :] = True
    bad[:, :DEFECT_BORDER] = bad[:, -DEFECT_BORDER:] = True
    bad[: truth.layout.data_height, 100] = True
    bad[30, 40] = True
    for amp, values in _values(table, "defects", "n_defect_pixels").items():
        ys, xs = regions[amp]
        assert list(values) == [np.count_nonzero(bad[ys, xs])] * N_DAYS, amp
    for amp, values in _values(table, "defects", "n_defects").items():
        assert len(set(values)) == 1 and values[0] >= 1, amp


def test_drift_found_on_the_right_day_and_amplifier(days):
    table = days.table
    drifts = find_drifts(table)
    assert len(drifts) == 1, drift_report(table)
    (drift,) = drifts
    assert (drift["day"], drift["calib_type"], drift["detector"], drift["amplifier"], drift["quantity"]) == (
        _day(DRIFT_DAY),
        "bias",
        0,
        DRIFT_AMP,
        "level",
    )
    assert drift["previous_day"] == _day(DRIFT_DAY - 1)
    assert drift["change"] == pytest.approx(DRIFT_E, abs=0.6)
    assert drift["significance"] > 50
    assert drift["run"].startswith(f"d{DRIFT_DAY}/bias/")
    (line,) = drift_report(table)
    assert line.startswith(f"{_day(DRIFT_DAY)}: bias level of detector 0 amplifier {DRIFT_AMP} changed from ")
    assert "electron" in line and "sigma" in line
    # Without the third day, nothing moved; a lower threshold still singles out C10 on day 3 only
    # among the bias levels.
    assert not drift_report(table[table["validity_begin"] != f"{_day(DRIFT_DAY)}T00:00:00.000000"])
    levels = find_drifts(table[table["quantity"] == "level"], n_sigma=3.0)
    assert [(r["day"], r["amplifier"]) for r in levels] == [(_day(DRIFT_DAY), DRIFT_AMP)]
    # Too short a history judges nothing.
    assert not len(find_drifts(table[table["validity_begin"] < f"{_day(3)}"]))


def test_cli_table_csv_and_html(days, tmp_path):
    csv, page = tmp_path / "history.csv", tmp_path / "history.html"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["history", str(days.root), "--instrument", "LATISS", "--csv", str(csv), "--html", str(page)]
        )
    assert code == 0
    text = out.getvalue()
    assert text.startswith(f"LATISS calibrations certified in {COLLECTION}: {5 * N_DAYS} dataset(s)")
    lines = text.splitlines()
    # The bias level table: one column per day, the drifted value marked.
    start = lines.index("bias level [electron]")
    header = lines[start + 1].split()
    assert header[:2] == ["det", "amp"] and header[2:6] == [_day(d) for d in range(1, N_DAYS + 1)]
    row = lines[start + 2].split()
    assert row[:2] == ["0", DRIFT_AMP]
    assert row[1 + DRIFT_DAY].endswith("!") and float(row[1 + DRIFT_DAY][:-1]) > DRIFT_E - 1
    assert sum(cell.endswith("!") for cell in " ".join(lines).split()) == 1
    assert drift_report(days.table)[0] in text
    # CSV: the whole table.
    back = Table.read(csv, format="ascii.csv")
    assert len(back) == len(days.table)
    np.testing.assert_allclose(back["value"], days.table["value"], rtol=1e-12, equal_nan=True)
    assert list(back["validity_begin"]) == list(days.table["validity_begin"])
    # HTML: self-contained, one figure per (type, quantity), the drift named, the cell highlighted.
    html = page.read_text()
    assert html.count("<img ") == 10 and html.count("data:image/png;base64,") == 10
    assert "http://" not in html and "<script" not in html
    assert drift_report(days.table)[0].replace("'", "&#x27;") in html
    assert html.count("class='flag'") == 1
    # --last limits the terminal columns; a missing collection is one line naming the flag.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["history", str(days.root), "--instrument", "LATISS", "--last", "2"]) == 0
    assert "(2 earlier certification(s) not shown)" in out.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["history", str(days.root), "--instrument", "LATISS", "--calib-collection", "nope"])
    assert code == 1
    assert err.getvalue().strip().splitlines() == [
        "cpcombined history: error: collection 'nope' does not exist in this repository: "
        "name an existing one with --calib-collection"
    ]


def test_figures_highlight_the_last_change(days):
    table = days.table
    figures = history_figures(table)
    assert len(figures) == 10
    titles = [fig.axes[0].get_title() for fig in figures]
    assert titles[0] == "bias level [electron]: value per amplifier at each certification"
    # Up to the drift day, the last change is the drift: C10's bar is the only red one.
    upto = table[table["validity_begin"] < f"{_day(DRIFT_DAY + 1)}"]
    fig = history_figures(upto)[0]
    top, bottom = fig.axes[0], fig.axes[1]
    labels = [t.get_text() for t in bottom.get_xticklabels()]
    colors = [tuple(p.get_facecolor()[:3]) for p in bottom.patches]
    red = (1.0, 0.0, 0.0)
    assert [lab for lab, c in zip(labels, colors, strict=True) if c == red] == [DRIFT_AMP]
    heights = dict(zip(labels, [p.get_height() for p in bottom.patches], strict=True))
    assert heights[DRIFT_AMP] == pytest.approx(DRIFT_E, abs=0.6)
    assert max(abs(h) for amp, h in heights.items() if amp != DRIFT_AMP) < 0.6
    # The top panel: one line per amplifier over the days, and the drifted segment in red.
    amp_lines = [line for line in top.get_lines() if line.get_label() == DRIFT_AMP]
    assert len(amp_lines) == 1 and len(amp_lines[0].get_xdata()) == DRIFT_DAY
    assert any(line.get_color() == "red" and line.get_linewidth() > 3 for line in top.get_lines())
    png = io.BytesIO()
    fig.savefig(png, format="png")
    assert png.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


# -- calibrations written by the Science Pipelines ----------------------------------------------------


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return build_replica(tmp_path_factory.mktemp("history_replica") / "repo", compress_raws=False)


def test_science_pipelines_products(replica, caplog):
    """cp_pipe's afw Exposure files and ip_isr's tables, certified in a
    DM-00000 collection under the LATISS/calib chain."""
    butler = replica.butler()
    table = collect_history(butler, "LATISS", calib_collection=replica.calib_chain)
    assert len(set(table["dataset_id"])) == 5 and len(table) == 5 * 16 * 2
    (begin,), (end,) = set(table["validity_begin"]), set(table["validity_end"])
    assert (Time(begin, scale="tai"), Time(end, scale="tai")) == (
        replica.validity.begin,
        replica.validity.end,
    )
    assert set(table["run"]) == set(replica.calib_runs.values())
    dt = replica.truth.detector_truth(0)
    regions = amp_regions(replica.truth.layout)
    for calib_type, quantity in (
        ("bias", "level"),
        ("bias", "noise"),
        ("dark", "dark_current"),
        ("flat", "response"),
    ):
        image, mask, _ = replica.calibrations[calib_type][0]
        for amp, value in _values(table, calib_type, quantity).items():
            ys, xs = regions[amp]
            # cp_pipe's masks: only BAD (afw bit 0), on the truth's defects.
            mean, std, _ = clipped_stats(
                np.ascontiguousarray(image[ys, xs]), ((mask[ys, xs] & 1) != 0).astype(np.uint8), bad_bits=1
            )
            assert value[0] == pytest.approx(std if quantity == "noise" else mean, rel=1e-5, abs=1e-9)
    for amp, value in _values(table, "ptc", "gain").items():
        assert value[0] == dt.gain[amp]
    for amp, value in _values(table, "ptc", "read_noise").items():
        assert value[0] == dt.read_noise[amp]
    # Defects per amplifier with the bias's shape (cp_pipe's tables do not declare it).
    bad = dt.hot_mask | dt.cold_mask
    bad[:5, :] = bad[-5:, :] = True
    bad[:, :5] = bad[:, -5:] = True
    for amp, value in _values(table, "defects", "n_defect_pixels").items():
        ys, xs = regions[amp]
        assert value[0] == np.count_nonzero(bad[ys, xs]), amp
    # Creation dates from cp_pipe's and ip_isr's keys.
    created = {r["calib_type"]: r["creation_date"] for r in table}
    assert created["bias"] == created["dark"] == created["flat"]
    assert created["ptc"] == created["defects"] and created["ptc"][:16] == created["bias"][:16]

    # An unreadable product: NaN rows and a warning, the rest as before.
    ref = replica.calib_ref("ptc")
    path = butler.getURI(ref).ospath
    with open(path, "rb") as f:
        original = f.read()
    try:
        with open(path, "r+b") as f:
            f.truncate(100)
        with caplog.at_level(logging.WARNING, logger="lsst.cpcombined.cli.history"):
            broken = collect_history(butler, "LATISS", calib_collection=replica.calib_chain)
    finally:
        with open(path, "wb") as f:
            f.write(original)
    ptc = broken[broken["calib_type"] == "ptc"]
    assert list(ptc["quantity"]) == ["gain", "read_noise"] and list(ptc["amplifier"]) == ["", ""]
    assert np.all(np.isnan(ptc["value"]))
    assert any(f"Cannot read ptc {ref.id}" in m for m in caplog.messages)
    assert len(broken[broken["calib_type"] != "ptc"]) == 4 * 16 * 2
    assert "ptc gain" in format_history(broken) and "<img " in history_html(broken)


def test_missing_quantities_are_nan(replica, tmp_path):
    """An older PTC layout without NOISE, and an image whose shape is not
    the amplifier grid (cp_pipe's percentile keys are used)."""
    butler = replica.butler()
    table = read_calib_table(butler.getURI(replica.calib_ref("ptc")).ospath)
    table.remove_columns(["NOISE", "NOISE_ERR"])
    table.meta["PTC_VERSION"] = 2.4
    path = tmp_path / "old_ptc.fits"
    write_calib_table(table, path)
    rows = measure_product("ptc", path).rows
    gain = {r["amplifier"]: r["value"] for r in rows if r["quantity"] == "gain"}
    noise = [r["value"] for r in rows if r["quantity"] == "read_noise"]
    assert gain == replica.truth.detector_truth(0).gain
    assert len(noise) == 16 and np.all(np.isnan(noise))

    image = np.full((37, 29), 5.0, dtype=np.float32)
    md = {"OBSTYPE": "bias", "LSST ISR UNITS": "electron", "CALIB_CREATION_DATETIME": "2025-03-04T05:06:07"}
    for pct, value in (("16.0", 1.0), ("50.0", 2.0), ("84.0", 5.0)):
        md[f"LSST CALIB BIAS C10 DISTRIBUTION {pct}-PCT"] = value
    path = tmp_path / "odd_bias.fits"
    mi = to_masked_image(image, np.ones_like(image), np.zeros(image.shape, np.uint8), unit=None, metadata=md)
    write_exposure_fits(mi, path)
    measured = measure_product("bias", path)
    assert measured.creation_date == "2025-03-04T05:06:07" and measured.shape == (37, 29)
    assert [(r["amplifier"], r["quantity"], r["value"], r["unit"]) for r in measured.rows] == [
        ("C10", "level", 2.0, "electron"),
        ("C10", "noise", 2.0, "electron"),
    ]
    with pytest.raises(ValueError, match="calibration type 'crosstalk'"):
        measure_product("crosstalk", path)


def _synthetic(n_days: int = 10, step_day: int = 7) -> Table:
    """Bias levels of two detectors over ``n_days`` certifications, all
    valid from -inf (placed by creation date), with a lasting +20 step on
    detector 4, amplifier C13 from certification ``step_day`` on, and two
    certifications on the last day."""
    rng = np.random.default_rng(42)
    rows = []
    amps = ["C10", "C11", "C12", "C13", "C14", "C15", "C16", "C17"]
    for k in range(1, n_days + 1):
        created = f"2026-02-{min(k, n_days - 1):02d}T{10 + k:02d}:00:00"
        for det in (0, 4):
            for i, amp in enumerate(amps):
                value = 100.0 + i + det + rng.normal(0.0, 1.0)
                if det == 4 and amp == "C13" and k >= step_day:
                    value += 20.0
                rows.append(
                    (
                        "bias",
                        det,
                        "",
                        amp,
                        "level",
                        value,
                        0.5,
                        "electron",
                        f"id-{k}-{det}",
                        f"run/{k}",
                        "-inf",
                        "+inf",
                        created,
                    )
                )
    return Table(rows=rows, names=HISTORY_COLUMNS, meta={"instrument": "LSSTComCam", "calib_collection": "x"})


def test_drifts_of_a_synthetic_history():
    table = _synthetic()
    drifts = find_drifts(table)
    # The step is a jump once; the certifications after it are compared with the step's value.
    assert [(r["day"], r["detector"], r["amplifier"]) for r in drifts] == [("2026-02-07", 4, "C13")]
    assert drifts[0]["change"] == pytest.approx(20.0, abs=4.0)
    # Two certifications the same day: the later is labelled #2.
    text = format_history(table, last=None)
    assert "2026-02-09  2026-02-09#2" in text
    assert text.count("!") == 2  # the flagged cell, and the legend line
    figures = history_figures(table)
    assert len(figures) == 1
    # Two detectors: the bars are labelled detector and amplifier.
    labels = [t.get_text() for t in figures[0].axes[1].get_xticklabels()]
    assert labels[:2] == ["0 C10", "0 C11"] and len(labels) == 16
    # A shorter threshold flags more; an empty table reports nothing.
    assert len(find_drifts(table, n_sigma=1.0)) > 1
    assert drift_report(table[:0]) == [] and "No certified calibrations" in format_history(table[:0])
