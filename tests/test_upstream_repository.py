"""The package working in a Science Pipelines repository, end to end.

Everything runs on replicas of the summit's ``/repo/LATISS``
(`upstream_replica.build_replica`): LATISS registered as obs_lsst registers
it, raws ingested into ``LATISS/raw/all`` as obs_base ingests them, and
cp_pipe-layout bias, dark, flat, defects and PTC (compressed afw Exposure
FITS, ip_isr tables, obs_base formatter names) certified into
``LATISS/calib/DM-00000`` under the ``LATISS/calib`` chain.  One replica
has correct calibrations; the other's bias is 100 e- too high on amplifier
C10 (`upstream_replica.BIAS_OFFSET_FAULT`).  The tests show that:

1. ``cpcombined ingest`` of simulated raw files (the replica's truth, written
   to files by the test, not ingested by the simulator) registers them as
   upstream's ``raw`` with the exposure, day_obs and group records the
   replica's own raws have, and re-registers nothing; ``butler
   register-instrument REPO lsst.cpcombined.LATISS`` changes nothing at all,
   nor does `lsst.cpcombined.repo.create.prepare_existing_repo` (what
   ``cpcombined init`` must do in an existing repository; the command itself
   still registers LSSTComCam there: an expected failure until it calls it);
2. every pipeline in ``pipelines/LATISS`` runs with ``-i
   LATISS/raw/all,LATISS/calib`` as a user would give it, reads the replica's
   raws and cp_pipe's calibrations, and writes its products under the
   upstream dataset types (registered definitions unchanged) with obs_base's
   formatter names; the products agree with the replica's calibrations;
3. ``cpcombined run`` with the replica's truth verifies new frames against
   ``LATISS/calib`` (external verification, the default) and passes; against
   the faulty bias it says no, certifies nothing and names the cause; in
   ``generate_calibrations`` mode it certifies into ``LATISS/calib/daily``;
   no run registers an instrument or touches ``LATISS/calib``;
4. the decision task decides the same on cp_verify's dictionaries built
   from the same failures as on ours;
5. ``cpcombined certify`` certifies our bias into ``LATISS/calib/daily``,
   refuses an overlapping certification and leaves
   ``LATISS/calib/DM-00000`` alone;
6. a Science Pipelines user finds and reads our products: obs_base formatter
   names in the datastore, files read by ``lsst.images`` and astropy with
   the columns ip_isr expects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import astropy.io.fits as fits
import numpy as np
import pytest
import yaml
from astropy.table import Table
from astropy.time import Time, TimeDelta
from conftest import exposure_query
from lsst.cpcombined.cli.main import main as cpcombined
from lsst.cpcombined.obs.instrument import get_instrument
from lsst.cpcombined.obs.raw import write_raw_file
from lsst.cpcombined.repo.collections import collection_exists
from lsst.cpcombined.script.pipetask import PipetaskResult, pipetask_run_args, run_pipetask
from lsst.cpcombined.simulation.camera import DARK_OVERHEAD_SECONDS, READOUT_SECONDS, primary_header
from lsst.cpcombined.simulation.sensor import simulate_raw_amps
from lsst.daf.butler import Butler, CollectionType, Timespan
from lsst.images import MaskedImage, MaskPlane
from test_cp_verify_shapes import cp_verify_merge, script_decision
from test_upstream_replica import PTC_COLUMNS_2_6
from upstream_replica import (
    BIAS_OFFSET_FAULT,
    DATASET_TYPES,
    FORMATTERS,
    REAL_OBS_PACKAGES,
    ReplicaInfo,
    build_replica,
    exposure_record,
)

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines" / "LATISS"
AMPS = tuple(f"C1{i}" for i in range(8)) + tuple(f"C0{i}" for i in range(7, -1, -1))
#: What a user passes to every pipeline.
USER_INPUTS = ["LATISS/raw/all", "LATISS/calib"]
#: Registry tables holding the identity and the dataset type definitions.
IDENTITY_TABLES = ("instrument", "detector", "physical_filter", "dataset_type")
#: cp_verify's definitions (cp_verify pipelines; physical_filter next to
#: exposure is implied by it, so verifyFlatExpStats is (I, E)).
CP_VERIFY_TYPES = {
    **{
        f"verify{t}{level}": (("instrument", "exposure", "detector"), sc)
        for t in ("Bias", "Dark", "Flat")
        for level, sc in (("DetStats", "StructuredDataDict"), ("DetResults", "ArrowAstropy"))
    },
    **{
        f"verify{t}ExpStats": (("instrument", "exposure"), "StructuredDataDict")
        for t in ("Bias", "Dark", "Flat")
    },
    **{f"verify{t}Stats": (("instrument",), "StructuredDataDict") for t in ("Bias", "Dark")},
    **{f"verify{t}Results": (("instrument",), "ArrowAstropy") for t in ("Bias", "Dark")},
    "verifyFlatStats": (("instrument", "physical_filter"), "StructuredDataDict"),
    "verifyFlatResults": (("instrument", "physical_filter"), "ArrowAstropy"),
}
#: Task labels of cp_pipe's LATISS pipelines (and the legacy cpPtcExtract)
#: that ours share, with cp_pipe's quantum dimensions.
CP_PIPE_LABELS = {
    "cpBiasIsr": ("instrument", "exposure", "detector"), "cpBiasCombine": ("instrument", "detector"),
    "cpDarkIsr": ("instrument", "exposure", "detector"), "cpDarkCombine": ("instrument", "detector"),
    "cpFlatIsr": ("instrument", "exposure", "detector"),
    "cpFlatMeasure": ("instrument", "exposure", "detector"),
    "cpFlatNormalize": ("instrument", "physical_filter"),
    "cpFlatCombine": ("instrument", "detector", "physical_filter"),
    "cpPtcExtract": ("instrument", "detector"), "cpPtcSolve": ("instrument", "detector"),
}  # fmt: skip
#: The ingested flat ramp (pairs at four exposure times: enough for a PTC).
PTC_EXPOSURE_TIMES = (1.0, 1.0, 3.0, 3.0, 6.0, 6.0, 10.0, 10.0)
PTC_DAY_OBS = 20240902


# -- helpers ------------------------------------------------------------------------------------------


def table_rows(root: Path, *tables: str) -> dict[str, list[tuple]]:
    """Every row of some registry tables (sorted): a full dump to compare."""
    db = sqlite3.connect(root / "gen3.sqlite3")
    try:
        return {t: sorted(db.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    finally:
        db.close()


def registry_dump(root: Path) -> list[str]:
    """The whole registry database as SQL statements."""
    db = sqlite3.connect(root / "gen3.sqlite3")
    try:
        return list(db.iterdump())
    finally:
        db.close()


def datastore_formatters(root: Path, runs: list[str]) -> dict[str, set[tuple[str, str]]]:
    """Dataset type → {(formatter, storage class)} recorded for the datasets of some runs."""
    db = sqlite3.connect(root / "gen3.sqlite3")
    try:
        rows = db.execute(
            "SELECT t.name, r.formatter, r.storage_class, c.name FROM file_datastore_records r "
            "JOIN dataset d ON r.dataset_id = d.id JOIN dataset_type t ON d.dataset_type_id = t.id "
            "JOIN collection c ON d.run_id = c.collection_id"
        ).fetchall()
    finally:
        db.close()
    out: dict[str, set[tuple[str, str]]] = {}
    for name, formatter, storage_class, run in rows:
        if any(run == r or run.startswith(r) for r in runs):
            out.setdefault(name, set()).add((formatter, storage_class))
    return out


def calib_state(replica: ReplicaInfo) -> dict[str, Any]:
    """What must never change: the LATISS/calib chain and every certification
    in LATISS/calib/DM-00000 (dataset, data ID, validity)."""
    butler = replica.butler()
    registry = butler.registry
    assoc = sorted(
        (a.ref.datasetType.name, str(a.ref.id), str(a.timespan))
        for t in replica.calib_refs
        for a in registry.queryDatasetAssociations(t, collections=replica.calib_collection)
    )
    return {
        "chain": list(registry.getCollectionChain(replica.calib_chain)),
        "defaults": list(registry.getCollectionChain(replica.defaults_chain)),
        "associations": assoc,
    }


def provenance_inputs(path: str) -> dict[str, set[str]]:
    """Dataset type → ids of the inputs the butler recorded in a FITS primary header."""
    header = fits.getheader(path, 0)
    out: dict[str, set[str]] = {}
    for i in range(int(header.get("LSST BUTLER N_INPUTS", 0))):
        out.setdefault(header[f"LSST BUTLER INPUT {i} DATASETTYPE"].strip(), set()).add(
            header[f"LSST BUTLER INPUT {i} ID"]
        )
    return out


def run_pipeline(replica: ReplicaInfo, name: str, *, inputs: list[str], output: str, query: str,
                 config: dict[str, Any] | None = None) -> PipetaskResult:  # fmt: skip
    """``pipetask run`` of ``pipelines/LATISS/<name>.yaml`` (``#label`` subsets allowed), in process."""
    args = pipetask_run_args(
        replica.root, f"{PIPELINES}/{name}" if "#" in name else PIPELINES / f"{name}.yaml", inputs=inputs,
        output=output, data_query=query, config=config, log_level="WARNING",
    )  # fmt: skip
    return run_pipetask(args)


def cli(*args: str) -> tuple[int, str]:
    """``cpcombined ARGS``: exit code and standard output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cpcombined(list(args))
    return code, out.getvalue()


def amp_medians(truth, image: np.ndarray, good: np.ndarray) -> dict[str, float]:
    out = {}
    for amp in AMPS:
        sl = truth.layout.geometry(amp).assembled_slices
        out[amp] = float(np.median(image[sl][good[sl]]))
    return out


def read_calib(path: str) -> MaskedImage:
    return MaskedImage.read_legacy(path, plane_map={"BAD": MaskPlane("BAD", "Bad pixel")})


def simulate_raw_files(replica: ReplicaInfo, directory: Path, exposure_times, *, day_obs: int,
                       first_serial: int) -> list[tuple[Path, dict[str, Any]]]:  # fmt: skip
    """Flats of the replica's truth written as camera raw files (one
    sequence, one group), not ingested: (path, primary header) each."""
    instrument = get_instrument(replica.instrument)
    (detector,) = instrument.camera_description.resolve_detectors(replica.detectors)
    truth = replica.truth
    clock = Time(f"{str(day_obs)[:4]}-{str(day_obs)[4:6]}-{str(day_obs)[6:]}T22:00:00", scale="tai")
    group = clock.isot
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for index, exposure_time in enumerate(exposure_times):
        seq_num = index + 1
        dark_time = exposure_time + DARK_OVERHEAD_SECONDS
        header = primary_header(
            instrument, detector, image_type="flat", obs_id=instrument.make_obs_id("O", day_obs, seq_num),
            day_obs=day_obs, seq_num=seq_num, controller="O", begin=clock, exposure_time=exposure_time,
            dark_time=dark_time, physical_filter=replica.physical_filters["flat"], group_id=group,
            program="CALIBRATIONS", reason="ptc", seed=truth.seed,
        )  # fmt: skip
        header.update(CURINDEX=index + 1, MAXINDEX=len(exposure_times))  # the camera's sequence keywords
        amps = simulate_raw_amps(
            truth, detector.id, "flat", exposure_time, dark_time, index,
            truth.exposure_rng(first_serial + index, detector.id),
        )  # fmt: skip
        path = directory / header["FILENAME"]
        write_raw_file(path, header, amps, truth.layout, compress=True)
        out.append((path, header))
        clock = clock + TimeDelta(dark_time + READOUT_SECONDS, format="sec")
    return out


def run_config(tmp: Path, name: str, **settings: Any) -> Path:
    """A ``cpcombined run`` configuration with the replicas' truth (default
    seed, geometry scale 0.125), in-process pipelines one at a time."""
    doc = {
        "instrument": "LATISS",
        "n_bias": 3, "n_discard_bias": 0, "n_dark": 3, "n_discard_dark": 0, "exp_times_dark": 30,
        "n_flat": 3, "n_discard_flat": 0, "exp_times_flat": 5, "n_processes": 1,
        "simulation": {"geometry_scale": 0.125},
        "execution": {"pipeline_mode": "inprocess", "max_jobs": 1},
        **settings,
    }  # fmt: skip
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclasses.dataclass
class ProcedureRun:
    """One ``cpcombined run`` on a replica and what it left behind."""

    code: int
    summary: dict[str, Any]
    identity_before: dict[str, list[tuple]]
    identity_after: dict[str, list[tuple]]
    calib_before: dict[str, Any]
    calib_after: dict[str, Any]


def run_procedure_on(replica: ReplicaInfo, config: Path) -> ProcedureRun:
    tables = ("instrument", "detector", "physical_filter")
    identity, calib = table_rows(replica.root, *tables), calib_state(replica)
    summary_path = config.with_suffix(".json")
    code, _ = cli("run", str(config), "--repo", str(replica.root), "--summary-json", str(summary_path))
    return ProcedureRun(
        code, json.loads(summary_path.read_text()), identity, table_rows(replica.root, *tables), calib,
        calib_state(replica),
    )  # fmt: skip


# -- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> ReplicaInfo:
    """A replica with correct calibrations."""
    return build_replica(tmp_path_factory.mktemp("good") / "repo")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> ReplicaInfo:
    """A replica whose bias is 100 e- too high on C10."""
    return build_replica(tmp_path_factory.mktemp("faulty") / "repo", calib_fault=BIAS_OFFSET_FAULT)


@dataclasses.dataclass
class Ingested:
    code: int
    stdout: str
    files: list[tuple[Path, dict[str, Any]]]
    exposures: list[int]
    before: dict[str, list[tuple]]
    after: dict[str, list[tuple]]


@pytest.fixture(scope="module")
def ingested(replica: ReplicaInfo, tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    """``cpcombined ingest`` of a simulated flat ramp (the next day's)."""
    files = simulate_raw_files(replica, tmp_path_factory.mktemp("raws"), PTC_EXPOSURE_TIMES,
                               day_obs=PTC_DAY_OBS, first_serial=100)  # fmt: skip
    before = table_rows(replica.root, *IDENTITY_TABLES)
    code, stdout = cli("ingest", str(replica.root), *[str(p) for p, _ in files])
    return Ingested(
        code, stdout, files, [exposure_record("LATISS", h)["id"] for _, h in files], before,
        table_rows(replica.root, *IDENTITY_TABLES),
    )  # fmt: skip


@pytest.fixture(scope="module")
def products(replica: ReplicaInfo, ingested: Ingested) -> dict[str, tuple[PipetaskResult, str]]:
    """Every LATISS pipeline run on the replica with the user's inputs:
    name → (result, output collection).  ``verifyOurBias`` verifies the bias
    made by cpBias (its collection first, as the procedure does)."""
    ex = replica.exposures
    queries = {
        "cpBias": exposure_query("LATISS", ex["bias"]),
        "cpDark": exposure_query("LATISS", ex["dark"]),
        "cpFlat": exposure_query("LATISS", ex["flat"]),
        "cpPtc": exposure_query("LATISS", ingested.exposures),
        # Defects from the replica's dark and flat (cp_pipe's files), per
        # detector as the procedure runs it: with an exposure constraint the
        # query would have to relate the exposures' times to both
        # calibrations' validity ranges, which the butler refuses to guess.
        "cpDefects": "instrument='LATISS' AND detector IN (0)",
        "verifyBias": exposure_query("LATISS", ex["bias"]),
        "verifyDark": exposure_query("LATISS", ex["dark"]),
        "verifyFlat": exposure_query("LATISS", ex["flat"]),
    }
    out = {}
    for name, query in queries.items():
        output = f"u/user/{name}"
        out[name] = (run_pipeline(replica, name, inputs=USER_INPUTS, output=output, query=query), output)
    out["verifyOurBias"] = (
        run_pipeline(replica, "verifyBias", inputs=["u/user/cpBias", *USER_INPUTS],
                     output="u/user/verifyOurBias", query=exposure_query("LATISS", ex["bias"])),
        "u/user/verifyOurBias",
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def external_pass(replica: ReplicaInfo, tmp_path_factory: pytest.TempPathFactory) -> ProcedureRun:
    """External verification of new bias, dark and flat frames against the replica's LATISS/calib."""
    config = run_config(tmp_path_factory.mktemp("runs"), "external", script_mode="BIAS_DARK_FLAT")
    return run_procedure_on(replica, config)


@pytest.fixture(scope="module")
def external_fail(faulty: ReplicaInfo, tmp_path_factory: pytest.TempPathFactory) -> ProcedureRun:
    """External verification of new biases against the faulty bias.  With
    LATISS's one detector and T = 1 an exposure fails on one failing
    amplifier (with the default T = 8 it takes 8 amplifiers failing one test)."""
    config = run_config(tmp_path_factory.mktemp("runs"), "external_fault", script_mode="BIAS",
                        number_verification_tests_threshold_bias=1)  # fmt: skip
    return run_procedure_on(faulty, config)


@pytest.fixture(scope="module")
def generated(faulty: ReplicaInfo, external_fail: ProcedureRun,
              tmp_path_factory: pytest.TempPathFactory) -> ProcedureRun:  # fmt: skip
    """The whole procedure in generate mode on the faulty replica (after the
    failed external run): new calibrations verified against themselves,
    certified into LATISS/calib/daily."""
    config = run_config(
        tmp_path_factory.mktemp("runs"), "generate", script_mode="BIAS_DARK_FLAT", generate_calibrations=True,
        do_defects=True, do_ptc=True, n_flat=6, exp_times_flat=[3, 3, 6, 6, 9, 9],
        certify_calib_begin_date="2024-01-01", certify_calib_end_date="2040-01-01",
    )  # fmt: skip
    return run_procedure_on(faulty, config)


# -- 1. identity and ingest ------------------------------------------------------------------------------


def test_ingest_cli_registers_upstream_raws(replica: ReplicaInfo, ingested: Ingested) -> None:
    """``cpcombined ingest`` writes upstream's ``raw`` datasets and the records
    obs_base's ingest writes, and re-registers nothing."""
    assert ingested.code == 0, ingested.stdout
    assert "ingested 8 file(s), 0 already present, 0 failed" in ingested.stdout
    # Identity and dataset type definitions: every row identical (raw is still
    # (instrument, exposure, detector) Exposure, as obs_base registered it).
    assert ingested.after == ingested.before
    butler = replica.butler()
    (raw,) = [dt for dt in butler.registry.queryDatasetTypes("raw")]
    assert (set(raw.dimensions.required), raw.storageClass_name, raw.isCalibration()) == (
        set(DATASET_TYPES["raw"][0]), "Exposure", False
    )  # fmt: skip
    refs = butler.query_datasets("raw", collections="LATISS/raw/all",
        where=f"exposure.day_obs = {PTC_DAY_OBS}",
                                 instrument="LATISS")  # fmt: skip
    assert sorted(r.dataId["exposure"] for r in refs) == sorted(ingested.exposures)
    assert ingested.exposures == [PTC_DAY_OBS * 100_000 + i for i in range(1, 9)]
    # The exposure records are the ones the replica's record builder (obs_lsst's
    # translation rules) makes from the same headers, field by field.
    records = {
        r.id: r.toDict() for r in butler.registry.queryDimensionRecords("exposure", instrument="LATISS")
    }
    for _, header in ingested.files:
        expected = exposure_record("LATISS", header)
        assert records[expected["id"]] == {k: expected[k] for k in records[expected["id"]]}, expected["id"]
        assert set(records[expected["id"]]) == set(expected)
    r = records[ingested.exposures[2]]
    assert (r["observation_type"], r["observation_reason"], r["physical_filter"], r["exposure_time"]) == (
        "flat", "ptc", "SDSSr_65mm~empty", 3.0
    )  # fmt: skip
    assert (r["seq_start"], r["seq_end"], r["can_see_sky"], r["has_simulated"]) == (1, 8, False, True)
    # day_obs: the next observing day, same offset (12:00 TAI) as the replica's own record.
    days = {d.id: d.timespan for d in butler.registry.queryDimensionRecords("day_obs", instrument="LATISS")}
    assert days[PTC_DAY_OBS] == Timespan(Time("2024-09-02T12:00:00", scale="tai"),
                                         Time("2024-09-03T12:00:00", scale="tai"))  # fmt: skip
    assert days[20240901] == Timespan(Time("2024-09-01T12:00:00", scale="tai"),
                                      Time("2024-09-02T12:00:00", scale="tai"))  # fmt: skip
    groups = {g.name for g in butler.registry.queryDimensionRecords("group", instrument="LATISS")}
    assert ingested.files[0][1]["GROUPID"] in groups and {
        records[e]["group"] for e in ingested.exposures
    } == {ingested.files[0][1]["GROUPID"]}
    # Scaled (0.125) raws are not camera-shaped: ingest records the package's raw
    # formatter for them (obs_lsst's only for camera-shaped raws); the replica's
    # raws keep the obs_lsst name they were ingested with.
    formatters = datastore_formatters(replica.root, ["LATISS/raw/all"])["raw"]
    assert formatters == {
        ("lsst.cpcombined.obs.raw.RawFormatter", "Exposure"),
        (FORMATTERS["raw"]["LATISS"], "Exposure"),
    }
    # Ingesting the same files again registers nothing new.
    code, stdout = cli("ingest", str(replica.root), *[str(p) for p, _ in ingested.files])
    assert code == 0 and "ingested 0 file(s), 8 already present" in stdout
    assert table_rows(replica.root, *IDENTITY_TABLES) == ingested.before


@pytest.fixture
def replica_copy(replica: ReplicaInfo, tmp_path: Path) -> Path:
    """A copy of the replica's repository (for commands that might write)."""
    root = tmp_path / "repo"
    shutil.copytree(replica.root, root)
    return root


def test_register_instrument_changes_nothing(replica_copy: Path) -> None:
    """``butler register-instrument REPO lsst.cpcombined.LATISS`` over obs_lsst's records: a no-op."""
    from click.testing import CliRunner
    from lsst.daf.butler.cli.butler import cli as butler_cli

    before = registry_dump(replica_copy)
    result = CliRunner().invoke(
        butler_cli, ["register-instrument", str(replica_copy), "lsst.cpcombined.LATISS"]
    )
    assert result.exit_code == 0, result.output
    assert registry_dump(replica_copy) == before


def test_existing_repository_preparation_changes_nothing(replica_copy: Path) -> None:
    """What ``cpcombined init`` must do on an existing repository
    (`prepare_existing_repo`): check LATISS (identical: nothing written) and
    leave the absent LSSTComCam absent."""
    from lsst.cpcombined.repo.create import prepare_existing_repo

    before = registry_dump(replica_copy)
    assert prepare_existing_repo(Butler.from_config(str(replica_copy), writeable=True)) == ["LATISS"]
    assert registry_dump(replica_copy) == before


def test_cli_init_changes_nothing(replica_copy: Path) -> None:
    before = registry_dump(replica_copy)
    code, stdout = cli("init", str(replica_copy))
    assert code == 0 and "already a butler repository with LATISS: nothing was changed" in stdout
    assert registry_dump(replica_copy) == before


# -- 2. the pipelines on the replica -------------------------------------------------------------------


#: The pipelines of pipelines/LATISS that make and verify calibrations.
PIPELINE_NAMES = (
    "cpBias",
    "cpDark",
    "cpFlat",
    "cpDefects",
    "cpPtc",
    "verifyBias",
    "verifyDark",
    "verifyFlat",
)


@pytest.mark.parametrize("name", [*PIPELINE_NAMES, "verifyOurBias"])
def test_pipeline_runs_on_the_replica(products: dict[str, tuple[PipetaskResult, str]], name: str) -> None:
    result, output = products[name]
    assert result.ok, f"{result.command}\n{result.error_summary()}"
    assert not result.errors


def test_pipelines_keep_upstream_dataset_types(replica: ReplicaInfo, products) -> None:
    """After every pipeline (with ``--register-dataset-types``): the shared
    names have upstream's definitions (obs_base / cp_pipe / cp_verify), and
    every other dataset type is the package's own (``cpc*``) or pipetask's
    (task configs, metadata, logs, packages)."""
    assert all(r.ok for r, _ in products.values())
    registered = {
        dt.name: (set(dt.dimensions.required), dt.storageClass_name, dt.isCalibration())
        for dt in replica.butler().registry.queryDatasetTypes()
    }
    for name, (dims, sc, calib) in DATASET_TYPES.items():
        assert registered[name] == (set(dims), sc, calib), name
    for name, (dims, sc) in CP_VERIFY_TYPES.items():
        assert registered[name] == (set(dims), sc, False), name
    others = set(registered) - set(DATASET_TYPES) - set(CP_VERIFY_TYPES)
    ours = {n for n in others if n.startswith("cpc")}
    pipetask = {n for n in others if n.endswith(("_config", "_metadata", "_log")) or n == "packages"}
    assert others == ours | pipetask
    assert ours == {
        "cpcBiasProc", "cpcDarkProc", "cpcFlatProc", "cpcFlatStatistics", "cpcFlatNormScales",
        "cpcDefectsFromDark", "cpcDefectsFromFlat", "cpcPtcExtract", "cpcVerifyBiasDecision",
        "cpcVerifyDarkDecision", "cpcVerifyFlatDecision",
    }  # fmt: skip
    # Task labels shared with cp_pipe's pipelines have cp_pipe's quantum
    # dimensions, so their <label>_metadata/_log dataset types agree too.
    for label, dims in CP_PIPE_LABELS.items():
        for suffix in ("_metadata", "_log"):
            assert registered[label + suffix][0] == set(dims), label + suffix


def _one(butler: Butler, dataset_type: str, collection: str):
    (ref,) = butler.query_datasets(dataset_type, collections=collection, explain=False)
    return ref


def test_pipelines_read_the_replica_calibrations(replica: ReplicaInfo, products) -> None:
    """The calibrations the pipelines used are the replica's, found through
    LATISS/calib: the butler's provenance in our ISR outputs, and the
    verification's record of the calibrations it used."""
    butler = replica.butler()
    ids = {t: str(replica.calib_ref(t).id) for t in replica.calib_refs}
    raw_ids = {str(r.id) for r in replica.raw_refs}
    for name, dataset_type, calibs in (
        ("cpDark", "cpcDarkProc", ["bias"]),
        ("cpFlat", "cpcFlatProc", ["bias", "dark"]),
    ):
        refs = butler.query_datasets(dataset_type, collections=products[name][1])
        assert len(refs) == len(replica.exposures[name[2:].lower()])
        for ref in refs:
            inputs = provenance_inputs(butler.getURI(ref).ospath)
            assert inputs.keys() == {"raw", *calibs}
            assert inputs["raw"] <= raw_ids
            for calib in calibs:
                assert inputs[calib] == {ids[calib]}, (name, calib)
    for calib in ("bias", "dark", "flat"):
        label = calib.capitalize()
        decision = butler.get(_one(butler, f"cpcVerify{label}Decision", products[f"verify{label}"][1]))
        used = {k: {r["id"] for r in v} for k, v in decision["CALIBRATIONS"].items()}
        assert used[calib] == {ids[calib]}
        assert used["defects"] == {ids["defects"]}
        assert decision["CERTIFY"] is True and decision["N_EXPOSURES"] == len(replica.exposures[calib])
    # Our own bias, verified with its collection first, is the one the decision names.
    decision = butler.get(_one(butler, "cpcVerifyBiasDecision", "u/user/verifyOurBias"))
    ours = _one(butler, "bias", "u/user/cpBias")
    assert [r["id"] for r in decision["CALIBRATIONS"]["bias"]] == [str(ours.id)]


def test_products_agree_with_the_replica(replica: ReplicaInfo, ingested: Ingested, products) -> None:
    """Our bias, dark and flat made from the replica's raws agree with
    cp_pipe's (the replica's, computed from the truth); the PTC finds the
    truth's gains; the defects are the truth's defects and the border.

    Tolerances: bias per-amplifier median of the difference < 0.5 e- (3
    frames of 8-10 e- read noise over ~15000 pixels: 0.04 e- rms; found
    0.14 at most); dark < 0.02 e-/s (pixel noise 0.17 e-/s; found 0.004);
    flat ratio within 0.3 % (shot noise 1 % per pixel; found 0.01 %); PTC
    gains within 3 sigma of their fit errors (4.5-9 %: 4 pairs on
    64 x 250-pixel amplifiers; found 1.2 sigma) and within 10 % (found 6 %)."""
    butler = replica.butler()
    truth = replica.truth.detector_truth(0)
    good = ~(truth.hot_mask | truth.cold_mask)
    limits = {"bias": 0.5, "dark": 0.02, "flat": 0.003}
    for calib, limit in limits.items():
        mi = read_calib(butler.getURI(_one(butler, calib, products[f"cp{calib.capitalize()}"][1])).ospath)
        reference = replica.calibrations[calib][0][0]
        assert mi.image.array.shape == reference.shape == (500, 512)
        diff = mi.image.array / reference - 1.0 if calib == "flat" else mi.image.array - reference
        medians = amp_medians(replica.truth, diff, good)
        assert max(abs(v) for v in medians.values()) < limit, (calib, medians)
    ptc = Table.read(butler.getURI(_one(butler, "ptc", products["cpPtc"][1])).ospath, hdu=1)
    gain = np.array(ptc["GAIN"])
    expected = np.array([truth.gain[a] for a in ptc["AMPLIFIER_NAME"]])
    assert list(ptc["AMPLIFIER_NAME"]) == list(AMPS)
    assert np.all(np.abs(gain - expected) < 3 * np.array(ptc["GAIN_ERR"]))
    assert np.all(np.abs(gain / expected - 1) < 0.10)
    pairs = {tuple(sorted(p)) for p in np.asarray(ptc["INPUT_EXP_ID_PAIRS"][0]).tolist()}
    ramp = ingested.exposures
    assert pairs == {(ramp[i], ramp[i + 1]) for i in range(0, len(ramp), 2)}
    defects = Table.read(butler.getURI(_one(butler, "defects", products["cpDefects"][1])).ospath, hdu=1)
    covered = np.zeros((500, 512), dtype=int)
    for x0, y0, width, height in defects:
        covered[y0 : y0 + height, x0 : x0 + width] += 1
    expected_defects = truth.hot_mask | truth.cold_mask
    expected_defects[:5, :] = expected_defects[-5:, :] = expected_defects[:, :5] = expected_defects[
        :, -5:
    ] = True
    assert covered.max() == 1
    np.testing.assert_array_equal(covered == 1, expected_defects)


# -- 3. the procedure on the replica ----------------------------------------------------------------------


def _certified(replica: ReplicaInfo, collection: str) -> list[tuple[str, str]]:
    butler = replica.butler()
    if not collection_exists(butler, collection):
        return []
    out = []
    for t in ("bias", "dark", "flat", "defects", "ptc"):
        out += [(t, str(r.id)) for r in butler.query_datasets(t, collections=collection, find_first=False,
                                                             explain=False)]  # fmt: skip
    return sorted(out)


def test_external_verification_passes(replica: ReplicaInfo, external_pass: ProcedureRun) -> None:
    """``cpcombined run`` with the replica's default collections: new frames
    verified against LATISS/calib pass; nothing is certified (no
    generation), registered or changed in LATISS/calib."""
    run = external_pass
    assert run.code == 0, run.summary["error"]
    assert run.summary["success"] is True
    ids = {t: str(replica.calib_ref(t).id) for t in replica.calib_refs}
    for calib in ("bias", "dark", "flat"):
        entry = run.summary["calibrations"][calib]
        assert (entry["decision"], entry["certified"], entry["generated_collection"]) == ("pass", False, None)
        assert entry["verification_collection"].startswith("LATISS/verify/")
        decision = entry["extra"]["decision"]
        assert (
            decision["CERTIFY"] is True
            and decision["N_EXPOSURES"] == 3
            and decision["FAILED_EXPOSURES"] == {}
        )
        assert [r["id"] for r in decision["CALIBRATIONS"][calib]] == [ids[calib]]
        assert all(e not in sum(replica.exposures.values(), []) for e in decision["EXPOSURES"])
    assert run.identity_after == run.identity_before
    assert run.calib_after == run.calib_before
    assert _certified(replica, "LATISS/calib/daily") == []


def test_external_verification_of_a_faulty_bias_fails(
    faulty: ReplicaInfo, external_fail: ProcedureRun
) -> None:
    """Against the bias 100 e- too high on C10 every new bias fails MEAN on
    C10 (mean -100 e- for 8-10 e- noise), and the package's LEVEL test of the
    bias under test (C10's median +100 e-, limit 50 e-): decision no, nothing
    certified, the summary names the calibration, the tests and the
    exposures."""
    run = external_fail
    assert run.code == 1
    summary = run.summary
    assert summary["success"] is False and summary["error"].startswith("bias failed verification")
    bias = summary["calibrations"]["bias"]
    assert (bias["decision"], bias["certified"], bias["calib_collection"]) == ("fail", False, None)
    decision = bias["extra"]["decision"]
    assert decision["CERTIFY"] is False and decision["N_FAILED_EXPOSURES"] == decision["N_EXPOSURES"] == 3
    assert decision["TEST_FAILURE_LIMIT"] == 1 and decision["EXPOSURE_FAILURE_LIMIT"] == 2
    assert all(counts["MEAN"] == counts["LEVEL"] == 1 for counts in decision["FAILED_EXPOSURES"].values())
    assert "DO NOT CERTIFY" in bias["decision_report"] and "MEAN 1 >= 1" in bias["decision_report"]
    assert [r["id"] for r in decision["CALIBRATIONS"]["bias"]] == [str(faulty.calib_ref("bias").id)]
    butler = faulty.butler()
    for ref in butler.query_datasets("verifyBiasExpStats", collections=bias["verification_collection"]):
        exp = butler.get(ref)
        assert exp["SUCCESS"] is False and "C10 MEAN" in exp["RXX_S00"]["FAILURES"]
    for ref in butler.query_datasets("verifyBiasDetStats", collections=bias["verification_collection"]):
        stats = butler.get(ref)
        assert stats["AMP"]["C10"]["MEAN"] == pytest.approx(-100.0, abs=1.0)
        assert max(abs(stats["AMP"][a]["MEAN"]) for a in AMPS if a != "C10") < 1.0
    assert run.identity_after == run.identity_before
    assert run.calib_after == run.calib_before
    assert _certified(faulty, "LATISS/calib/daily") == []


def test_generated_calibrations_are_certified_into_their_own_collection(
    faulty: ReplicaInfo, generated: ProcedureRun
) -> None:
    """Generate mode on the same repository: bias, dark, flat (verified
    against themselves), defects and PTC certified into LATISS/calib/daily,
    found by date; LATISS/calib and its DM-00000 certifications unchanged
    (no ``certify_chain``); no instrument registered."""
    run = generated
    assert run.code == 0, run.summary["error"]
    for calib in ("bias", "dark", "flat", "defects", "ptc"):
        entry = run.summary["calibrations"][calib]
        assert entry["certified"] is True and entry["calib_collection"] == "LATISS/calib/daily", calib
        assert entry["generated_collection"].startswith("LATISS/calib/")
    butler = faulty.butler()
    assert butler.collections.get_info("LATISS/calib/daily").type is CollectionType.CALIBRATION
    certified = _certified(faulty, "LATISS/calib/daily")
    assert [t for t, _ in certified] == ["bias", "dark", "defects", "flat", "ptc"]
    replica_ids = {str(r.id) for refs in faulty.calib_refs.values() for r in refs}
    assert not replica_ids & {i for _, i in certified}
    inside = Timespan(Time("2030-01-01", scale="tai"), Time("2030-01-02", scale="tai"))
    found = butler.find_dataset("bias", instrument="LATISS", detector=0, collections="LATISS/calib/daily",
                                timespan=inside)  # fmt: skip
    assert found is not None and str(found.id) == dict(certified)["bias"]
    assert run.identity_after == run.identity_before
    assert run.calib_after == run.calib_before


# -- 4. the decision on cp_verify's dictionaries ------------------------------------------------------------


def cp_verify_detector_stats(ours: dict[str, Any]) -> dict[str, Any]:
    """cp_verify's bias detector dictionary for our statistics: its keys
    (AMP, METADATA, CATALOG, DET, ISR, VERIFY, SUCCESS) and its tests,
    evaluated by its rules on our amplifier statistics (MEAN |mean| < noise;
    NOISE (noise - rn)/rn <= 0.05; CR_NOISE |noise - cr_noise|/cr_noise <=
    0.05; SUCCESS; then READ_NOISE_CONSISTENT, gain x overscan noise in ADU
    at most 5 % above rn), rn being the read noise ISR recorded."""
    amp_stats, verify = {}, {}
    for amp, s in ours["AMP"].items():
        amp_stats[amp] = {k: s[k] for k in ("MEAN", "NOISE", "CR_NOISE", "AMP_CORNER")}
        rn = ours["CPC_AMP"][amp]["READ_NOISE"]
        tests = {
            "MEAN": bool(abs(s["MEAN"]) < s["NOISE"]),
            "NOISE": bool((s["NOISE"] - rn) / rn <= 0.05),
            "CR_NOISE": bool(abs(s["NOISE"] - s["CR_NOISE"]) / s["CR_NOISE"] <= 0.05),
        }
        tests["SUCCESS"] = all(tests.values())
        adu = ours["CPC_AMP"][amp]["GAIN"] * ours["METADATA"]["READ_NOISE_ADU"][amp]
        tests["READ_NOISE_CONSISTENT"] = bool((adu - rn) / rn <= 0.05)
        verify[amp] = tests
    return {
        "AMP": amp_stats,
        "METADATA": {"READ_NOISE_ADU": dict(ours["METADATA"]["READ_NOISE_ADU"])},
        "CATALOG": {},
        "DET": {},
        "ISR": {"MJD": ours["CPC_IDENTITY"]["MJD"], "CALIBDIST": {}},
        "VERIFY": {"AMP": verify},
        "SUCCESS": all(t["SUCCESS"] for t in verify.values()),
    }


@dataclasses.dataclass
class CpVerifyComparison:
    ours: dict[str, Any]
    theirs: dict[str, Any]
    our_exposures: dict[int, dict]
    their_exposures: dict[int, dict]
    their_run: dict
    our_run: dict
    result: PipetaskResult


@pytest.fixture(scope="module")
def cp_verify_comparison(faulty: ReplicaInfo, external_fail: ProcedureRun) -> CpVerifyComparison:
    """cp_verify's dictionaries of the failing run, put into a collection of
    the replica with cp_verify's dataset types, and our decision task alone
    run on them."""
    butler = faulty.butler(writeable=True)
    verification = external_fail.summary["calibrations"]["bias"]["verification_collection"]
    det_refs = butler.query_datasets("verifyBiasDetStats", collections=verification)
    exposures = sorted(int(r.dataId["exposure"]) for r in det_refs)
    run = "u/cp_verify/verifyBias"
    butler.collections.register(run)
    their_exposures, our_exposures = {}, {}
    for ref in det_refs:
        exposure, det = int(ref.dataId["exposure"]), butler.get(ref)
        theirs = cp_verify_detector_stats(det)
        butler.put(theirs, "verifyBiasDetStats", ref.dataId, run=run)
        their_exposures[exposure] = cp_verify_merge({det["CPC_IDENTITY"]["DETECTOR"]: theirs})
        butler.put(
            their_exposures[exposure], "verifyBiasExpStats", instrument="LATISS", exposure=exposure, run=run
        )
        our_exposures[exposure] = butler.get("verifyBiasExpStats", instrument="LATISS", exposure=exposure,
                                             collections=verification)  # fmt: skip
    their_run = cp_verify_merge(their_exposures)
    butler.put(their_run, "verifyBiasStats", instrument="LATISS", run=run)
    result = run_pipeline(
        faulty, "verifyBias.yaml#verifyBiasDecision", inputs=[run], output="u/cp_verify/decision",
        query=exposure_query("LATISS", exposures), config={"verifyBiasDecision:threshold": 1},
    )  # fmt: skip
    theirs = butler.get("cpcVerifyBiasDecision", instrument="LATISS", collections="u/cp_verify/decision")
    ours = butler.get("cpcVerifyBiasDecision", instrument="LATISS", collections=verification)
    our_run = butler.get("verifyBiasStats", instrument="LATISS", collections=verification)
    return CpVerifyComparison(ours, theirs, our_exposures, their_exposures, their_run, our_run, result)


def _without(stats: Any, test: str) -> Any:
    """A verification dictionary without the failures of one test (and with
    SUCCESS as if that test did not exist)."""
    if isinstance(stats, dict):
        out = {k: _without(v, test) for k, v in stats.items()}
        if "FAILURES" in out:
            out["FAILURES"] = [f for f in out["FAILURES"] if f.split(" ")[-1] != test]
            out["SUCCESS"] = not out["FAILURES"]
        if "SUCCESS" in out and "FAILURES" not in out and any(isinstance(v, dict) for v in out.values()):
            out["SUCCESS"] = all(v.get("SUCCESS", True) for v in out.values() if isinstance(v, dict))
        return out
    return stats


def test_decision_is_the_same_on_cp_verify_outputs(faulty: ReplicaInfo, cp_verify_comparison) -> None:
    """cp_verify's dictionaries built from the same statistics have the same
    failures — ``C10 MEAN`` in every exposure, and a cosmic ray's
    ``CR_NOISE`` where there was one — except the package's own ``LEVEL``
    test (the bias under test is 100 e- high on C10; cp_verify has no such
    test), and give the same decision: every exposure fails, no
    certification.  Only the record of the calibrations used is missing
    from cp_verify's (and its decision says so)."""
    c = cp_verify_comparison
    assert c.result.ok, c.result.error_summary()
    assert all("C10 LEVEL" in e["RXX_S00"]["FAILURES"] for e in c.our_exposures.values())
    assert c.their_exposures == _without(c.our_exposures, "LEVEL")  # same shape, same failure strings
    assert all("C10 MEAN" in e["RXX_S00"]["FAILURES"] for e in c.their_exposures.values())
    for key in ("CERTIFY", "N_EXPOSURES", "N_DETECTORS", "DETECTORS", "TEST_FAILURE_LIMIT",
                "N_FAILED_EXPOSURES",
                "EXPOSURE_FAILURE_LIMIT", "EXPOSURES"):  # fmt: skip
        assert c.theirs[key] == c.ours[key], key
    assert c.theirs["CERTIFY"] is False and c.theirs["N_FAILED_EXPOSURES"] == 3
    for key in ("FAILED_EXPOSURES", "COUNTS"):
        assert all(counts["LEVEL"] == 1 for counts in c.ours[key].values())
        assert c.theirs[key] == {
            e: {t: n for t, n in counts.items() if t != "LEVEL"} for e, counts in c.ours[key].items()
        }, key
    assert c.theirs["CALIBRATIONS"] == {} and "CALIBRATIONS_NOTE" in c.theirs
    assert [r["id"] for r in c.ours["CALIBRATIONS"]["bias"]] == [str(faulty.calib_ref("bias").id)]
    # The run dictionaries agree too (ours lists LEVEL as well), and read as
    # the ScriptQueue script reads them they say no (N counted with the
    # SUCCESS key: limit int(4/2) + 1 = 3; 3 failed exposures).
    assert _without(c.our_run, "LEVEL") == c.their_run
    assert script_decision(c.their_run, n_detectors=1, threshold=1) == (False, 3, 3)
    assert script_decision(c.our_run, n_detectors=1, threshold=1) == (False, 3, 3)


# -- 5. certification ---------------------------------------------------------------------------------------


def test_certify_cli_on_the_replica(replica: ReplicaInfo, products) -> None:
    """Our bias (its decision: verified as the one under test) is certified
    into LATISS/calib/daily; the replica's bias over the same range is refused
    (overlap), and LATISS/calib/DM-00000 is untouched."""
    before = calib_state(replica)
    code, stdout = cli(
        "certify", str(replica.root), "--dataset-type", "bias", "--run", "u/user/cpBias",
        "--collection", "LATISS/calib/daily", "--decision-collection", "u/user/verifyOurBias",
    )  # fmt: skip
    assert code == 0 and "1 dataset(s) from u/user/cpBias/" in stdout
    butler = replica.butler()
    ours = _one(butler, "bias", "u/user/cpBias")
    assert [
        str(r.id) for r in butler.query_datasets("bias", collections="LATISS/calib/daily", find_first=False)
    ] == [str(ours.id)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code, stdout = cli(
            "certify", str(replica.root), "--dataset-type", "bias", "--run", replica.calib_runs["bias"],
            "--collection", "LATISS/calib/daily", "--no-decision",
        )  # fmt: skip
    assert code == 1 and "overlapping validity range" in err.getvalue()
    assert "nothing was certified" in err.getvalue()
    # The decision of the replica's own verification concerns the replica's bias, not ours: refused.
    with contextlib.redirect_stderr(err):
        code, _ = cli(
            "certify", str(replica.root), "--dataset-type", "bias", "--run", "u/user/cpBias",
            "--collection", "LATISS/calib/other", "--decision-collection", "u/user/verifyBias",
        )  # fmt: skip
    assert code == 1 and "does not concern" in err.getvalue()
    assert [
        str(r.id) for r in butler.query_datasets("bias", collections="LATISS/calib/daily", find_first=False)
    ] == [str(ours.id)]
    assert calib_state(replica) == before


# -- 6. a Science Pipelines user reads our products --------------------------------------------------


def test_products_found_and_read_as_science_pipelines_products(replica: ReplicaInfo, products) -> None:
    """The datastore names obs_base's formatters for our bias, dark, flat,
    defects and PTC (as for cp_pipe's); the files read with
    ``lsst.images`` (afw Exposure layout, only BAD in the mask) and astropy
    (ip_isr tables: defects boxes, PTC version 2.6 columns first)."""
    runs = [products[n][1] + "/" for n in ("cpBias", "cpDark", "cpFlat", "cpDefects", "cpPtc")]
    recorded = datastore_formatters(replica.root, runs)
    assert recorded["bias"] == recorded["dark"] == recorded["flat"] == {(FORMATTERS["exposure"], "ExposureF")}
    assert recorded["defects"] == {(FORMATTERS["table"], "Defects")}
    assert recorded["ptc"] == {(FORMATTERS["table"], "PhotonTransferCurveDataset")}
    butler = replica.butler()
    for calib, unit in (("bias", "electron"), ("dark", "electron / s"), ("flat", None)):
        ref = _one(butler, calib, products[f"cp{calib.capitalize()}"][1])
        path = butler.getURI(ref).ospath
        mi = read_calib(path)
        assert mi.image.array.shape == (500, 512) and np.all(np.isfinite(mi.image.array))
        assert (str(mi.image.unit) if mi.image.unit is not None else None) == unit
        MaskedImage.read_legacy(path)  # lsst.images' default legacy plane renaming works too
        with fits.open(path) as hdul:
            assert [h.name for h in hdul][:4] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
            assert hdul[0].header["OBSTYPE"] == calib and hdul[0].header["LSST ISR UNITS"] == "electron"
            assert [hdul[0].header[f"CPP_INPUT_{i}"] for i in range(3)] == replica.exposures[calib][:3]
            mask = hdul["MASK"].data
            assert np.count_nonzero(mask & ~np.int32(1 << hdul["MASK"].header["MP_BAD"])) == 0
        if calib == "flat":
            assert ref.dataId["physical_filter"] == "SDSSr_65mm~empty"
    defects_path = butler.getURI(_one(butler, "defects", products["cpDefects"][1])).ospath
    defects = Table.read(defects_path, hdu=1)
    assert defects.colnames == ["x0", "y0", "width", "height"]
    assert (defects.meta["OBSTYPE"], defects.meta["CALIBCLS"]) == ("defects", "lsst.ip.isr.defects.Defects")
    ptc = Table.read(butler.getURI(_one(butler, "ptc", products["cpPtc"][1])).ospath, hdu=1)
    assert ptc.colnames[: len(PTC_COLUMNS_2_6)] == PTC_COLUMNS_2_6
    assert all(c.startswith("CPC_") for c in ptc.colnames[len(PTC_COLUMNS_2_6) :])
    assert (ptc.meta["OBSTYPE"], ptc.meta["PTC_VERSION"], ptc.meta["CALIBCLS"]) == (
        "PTC", 2.6, "lsst.ip.isr.ptcDataset.PhotonTransferCurveDataset"
    )  # fmt: skip
    if not REAL_OBS_PACKAGES:
        # butler.get goes through the recorded obs_base formatter, as for cp_pipe's files.
        with pytest.raises(ImportError, match="lsst.obs"):
            butler.get(_one(butler, "bias", products["cpBias"][1]))
