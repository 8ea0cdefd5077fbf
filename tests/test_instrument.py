"""Instrument registration writes obs_lsst's records, and only them.

Reference values are obs_lsst's (``Instrument.register`` of ``Latiss`` and
``LsstComCam``): the instrument record, the detector records of the camera
geometry and the physical filters (707 for LATISS, 15 for ComCam).
"""

from __future__ import annotations

import collections
import hashlib

import pytest
from lsst.cpcombined import LATISS, LSSTComCam, get_instrument
from lsst.cpcombined.obs.filters import LATISS_FILTERS, LSSTCOMCAM_FILTERS
from lsst.cpcombined.obs.instrument import InstrumentConflictError
from lsst.daf.butler import Butler

#: obs_lsst's instrument records.
INSTRUMENT_RECORDS = {
    "LATISS": {
        "name": "LATISS", "detector_max": 1, "visit_max": 7050123199999, "exposure_max": 7050123199999,
        "class_name": "lsst.obs.lsst.Latiss", "visit_system": 2,
    },
    "LSSTComCam": {
        "name": "LSSTComCam", "detector_max": 1000, "visit_max": 7050123199999, "exposure_max": 7050123199999,
        "class_name": "lsst.obs.lsst.LsstComCam", "visit_system": 2,
    },
}

#: obs_lsst's detector records (cameraGeom of policy/latiss and policy/comCam).
DETECTOR_RECORDS = {
    "LATISS": [
        {"instrument": "LATISS", "id": 0, "full_name": "RXX_S00", "name_in_raft": "RXX_S00", "raft": None,
         "purpose": "SCIENCE"},
    ],
    "LSSTComCam": [
        {"instrument": "LSSTComCam", "id": i, "full_name": f"R22_S{s}", "name_in_raft": f"S{s}",
         "raft": "R22", "purpose": "SCIENCE"}
        for i, s in enumerate(["00", "01", "02", "10", "11", "12", "20", "21", "22"])
    ],
}

#: SHA-256 of the "<name> <band>" lines of obs_lsst's filter lists, in
#: registration order (enumerated from obs_lsst's filters.py).
FILTER_LIST_SHA256 = {
    "LATISS": "7de43101e07bdcd4df31ab204ab63df16ae96a9d3d0bd5e7917ebce6bcdfef80",
    "LSSTComCam": "55179fe1a6ae714dfc3332658dc1cf06d79414fe22a37932a22c3495d7c076ff",
}


def _state(butler):
    """Every instrument, detector and physical_filter record of the repo."""
    return {
        element: sorted(
            (tuple(sorted(r.toDict().items(), key=lambda kv: kv[0])) for r in
             butler.registry.queryDimensionRecords(element)),
            key=repr,
        )
        for element in ("instrument", "detector", "physical_filter")
    }


def _write_obs_lsst_records(butler, name, **changes):
    """Write an instrument's records as obs_lsst's register does (sync, in
    its order), optionally with some instrument fields changed."""
    filters = LATISS_FILTERS if name == "LATISS" else LSSTCOMCAM_FILTERS
    with butler.registry.transaction():
        butler.registry.syncDimensionData("instrument", {**INSTRUMENT_RECORDS[name], **changes})
        for record in DETECTOR_RECORDS[name]:
            butler.registry.syncDimensionData("detector", record)
        for f in filters:
            butler.registry.syncDimensionData(
                "physical_filter", {"instrument": name, "name": f.physical_filter, "band": f.band}
            )


def test_filter_lists_are_obs_lsst():
    for name, filters in (("LATISS", LATISS_FILTERS), ("LSSTComCam", LSSTCOMCAM_FILTERS)):
        text = "\n".join(f"{f.physical_filter} {f.band}" for f in filters)
        assert hashlib.sha256(text.encode()).hexdigest() == FILTER_LIST_SHA256[name], name
    assert len(LATISS_FILTERS) == 707 and len(LSSTCOMCAM_FILTERS) == 15
    bands = collections.Counter(f.band for f in LATISS_FILTERS)
    assert bands == {"g": 225, "r": 141, "white": 112, "z": 57, "i": 57, "u": 29, "y": 29, "unknown": 28,
                     "notch": 28, "diffuser": 1}
    latiss = {f.physical_filter: f.band for f in LATISS_FILTERS}
    assert latiss["OG550_65mm_1~empty"] == "g"
    assert latiss["empty~SDSSr_65mm"] == "r"
    assert latiss["SDSSr_65mm~holo4_003"] == "r"
    assert latiss["unknown~unknown"] == "unknown"
    assert latiss["diffuser"] == "diffuser" and not any(n.startswith("diffuser~") for n in latiss)
    assert "SDSSr_65mm~SDSSg_65mm" not in latiss  # grating-wheel filters only behind the empty slot
    assert max(len(n) for n in latiss) == 32  # the registry's column width
    special = ["empty", "none", "unknown", "pinhole", "OG590_2_5mm"]
    assert [f.physical_filter for f in LSSTCOMCAM_FILTERS][:5] == special
    assert {f.physical_filter: f.band for f in LSSTCOMCAM_FILTERS}["OG590_2_5mm"] == "OG590"


def test_fresh_repo_records(repo):
    for name in ("LATISS", "LSSTComCam"):
        (inst,) = repo.registry.queryDimensionRecords("instrument", instrument=name)
        assert inst.toDict() == INSTRUMENT_RECORDS[name]
        dets = sorted((r.toDict() for r in repo.registry.queryDimensionRecords("detector", instrument=name)),
                      key=lambda d: d["id"])
        assert dets == DETECTOR_RECORDS[name]
        filters = LATISS_FILTERS if name == "LATISS" else LSSTCOMCAM_FILTERS
        records = repo.registry.queryDimensionRecords("physical_filter", instrument=name)
        recs = {r.name: r.band for r in records}
        assert recs == {f.physical_filter: f.band for f in filters}
    assert len(list(repo.registry.queryDimensionRecords("physical_filter", instrument="LATISS"))) == 707
    assert len(list(repo.registry.queryDimensionRecords("physical_filter", instrument="LSSTComCam"))) == 15
    (rec,) = repo.registry.queryDimensionRecords("physical_filter", instrument="LATISS",
                                                 physical_filter="OG550_65mm_1~empty")
    assert rec.band == "g"


def test_register_twice_is_noop(repo, tmp_path):
    before = _state(repo)
    # A read-only butler can "register" again: nothing needs to be written.
    readonly = Butler.from_config(str(tmp_path / "repo"), writeable=False)  # the `repo` fixture's root
    for inst in (LATISS(), LSSTComCam()):
        inst.register(readonly.registry)
        inst.register(repo.registry)
    assert _state(repo) == before


def test_register_over_obs_lsst_records(tmp_path):
    """A repository whose records obs_lsst wrote is already registered."""
    root = str(tmp_path / "obs_lsst_repo")
    Butler.makeRepo(root)
    butler = Butler.from_config(root, writeable=True)
    for name in ("LATISS", "LSSTComCam"):
        _write_obs_lsst_records(butler, name)
    before = _state(butler)
    readonly = Butler.from_config(root, writeable=False)
    LATISS().register(readonly.registry)
    LSSTComCam().register(readonly.registry)
    LATISS().register(butler.registry)
    assert _state(butler) == before


def test_missing_records_are_added(tmp_path):
    """Only the instrument present (e.g. an older registration): the
    detectors and filters are added, the instrument record is kept."""
    root = str(tmp_path / "partial")
    Butler.makeRepo(root)
    butler = Butler.from_config(root, writeable=True)
    butler.registry.syncDimensionData("instrument", INSTRUMENT_RECORDS["LSSTComCam"])
    butler.registry.syncDimensionData(
        "physical_filter", {"instrument": "LSSTComCam", "name": "g_01", "band": "g"}
    )
    LSSTComCam().register(butler.registry)
    assert len(list(butler.registry.queryDimensionRecords("detector", instrument="LSSTComCam"))) == 9
    assert len(list(butler.registry.queryDimensionRecords("physical_filter", instrument="LSSTComCam"))) == 15


def test_conflicting_records_are_refused(tmp_path):
    root = str(tmp_path / "conflict")
    Butler.makeRepo(root)
    butler = Butler.from_config(root, writeable=True)
    # An instrument record as an older cp_combined wrote it, and no filters yet.
    butler.registry.syncDimensionData(
        "instrument",
        {**INSTRUMENT_RECORDS["LATISS"], "class_name": "lsst.cpcombined.obs.instrument.LATISS",
         "visit_max": 2**31},
    )
    before = _state(butler)
    with pytest.raises(InstrumentConflictError) as err:
        LATISS().register(butler.registry)
    message = str(err.value)
    assert "\n" not in message
    assert "class_name is 'lsst.cpcombined.obs.instrument.LATISS' in the repository" in message
    assert "obs_lsst's is 'lsst.obs.lsst.Latiss'" in message
    assert "visit_max is 2147483648" in message
    assert "butler register-instrument --update REPO lsst.cpcombined.LATISS" in message
    assert _state(butler) == before  # the missing detector and filters were not added either
    # A filter with another band.
    butler.registry.syncDimensionData(
        "physical_filter", {"instrument": "LATISS", "name": "OG550_65mm_1~empty", "band": "r"}
    )
    with pytest.raises(InstrumentConflictError, match=r"physical_filter OG550_65mm_1~empty: band is 'r'"):
        LATISS().register(butler.registry)
    # --update overwrites them with obs_lsst's.
    LATISS().register(butler.registry, update=True)
    (inst,) = butler.registry.queryDimensionRecords("instrument", instrument="LATISS")
    assert inst.toDict() == INSTRUMENT_RECORDS["LATISS"]
    (rec,) = butler.registry.queryDimensionRecords("physical_filter", instrument="LATISS",
                                                   physical_filter="OG550_65mm_1~empty")
    assert rec.band == "g"
    assert len(list(butler.registry.queryDimensionRecords("physical_filter", instrument="LATISS"))) == 707


def test_register_instrument_cli(tmp_path, caplog):
    from click.testing import CliRunner
    from lsst.daf.butler.cli.butler import cli as butler_cli

    runner = CliRunner()
    root = str(tmp_path / "plain")
    assert runner.invoke(butler_cli, ["create", root]).exit_code == 0
    for _ in range(2):  # idempotent
        for name in ("LATISS", "LSSTComCam"):
            result = runner.invoke(butler_cli, ["register-instrument", root, f"lsst.cpcombined.{name}"])
            assert result.exit_code == 0, result.output
    butler = Butler.from_config(root)
    for name in ("LATISS", "LSSTComCam"):
        (inst,) = butler.registry.queryDimensionRecords("instrument", instrument=name)
        assert inst.toDict() == INSTRUMENT_RECORDS[name]
    dets = {r.full_name for r in butler.query_dimension_records("detector", instrument="LSSTComCam")}
    assert dets == {f"R22_S{i}{j}" for i in range(3) for j in range(3)}
    # A conflicting repository: the command fails with the message.
    butler = Butler.from_config(root, writeable=True)
    butler.registry.syncDimensionData(
        "physical_filter", {"instrument": "LSSTComCam", "name": "g_01", "band": "r"}, update=True
    )
    result = runner.invoke(butler_cli, ["register-instrument", root, "lsst.cpcombined.LSSTComCam"])
    assert result.exit_code != 0
    assert "physical_filter g_01: band is 'r' in the repository, obs_lsst's is 'g'" in caplog.text


def test_instrument_api():
    latiss, comcam = get_instrument("LATISS"), get_instrument("LSSTComCam")
    assert latiss.default_flat_filter == "SDSSr_65mm~empty" and latiss.filter_band("SDSSr_65mm~empty") == "r"
    assert comcam.default_flat_filter == "r_03" and comcam.filter_band("r_03") == "r"
    assert len(latiss.filters) == 707 and len(comcam.filters) == 15
    with pytest.raises(LookupError, match="no physical filter 'r'"):
        comcam.filter_band("r")
    assert type(latiss).translator_class.name == "CpLATISS"
    assert latiss.getRawFormatter({}).name() == "lsst.obs.lsst.rawFormatter.LatissRawFormatter"
    assert comcam.getRawFormatter({}).name() == "lsst.obs.lsst.rawFormatter.LsstComCamRawFormatter"
    with pytest.raises(LookupError):
        get_instrument("LSSTCam")
