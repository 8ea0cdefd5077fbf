"""Certification of calibrations into CALIBRATION collections
(`lsst.cpcombined.repo.certify`): decision gating, overlap conflicts (clear
error, nothing changed, atomic over data IDs), idempotent re-runs, direct
certification of defects/PTC, chains.

The datasets are tiny stand-ins put directly into a repository (no
pipeline runs), and the decisions are made by the real decision task from
exposure-level dictionaries in cp_verify's shape (and detector dictionaries
recording the calibrations used, when the test wants them).
"""

from __future__ import annotations

import logging

import astropy.time
import numpy as np
import pytest
from astropy.table import Table
from lsst.cpcombined.repo import certify as certify_module
from lsst.cpcombined.repo.certify import (
    CertificationConflict,
    CertificationError,
    CertificationRefused,
    certify_calibration,
    decision_dataset_type,
    resolve_run,
)
from lsst.cpcombined.repo.collections import collection_exists
from lsst.cpcombined.repo.products import to_masked_image
from lsst.cpcombined.tasks.verify_decision import CpVerifyDecisionConfig, CpVerifyDecisionTask
from lsst.daf.butler import CollectionType, DatasetRef, DatasetType, FileDataset, Timespan

ALWAYS = ("1950-01-01", "2050-01-01")


def _register(butler, name, dimensions, storage_class, calibration=True):
    butler.registry.registerDatasetType(
        DatasetType(name, dimensions, storage_class, universe=butler.dimensions, isCalibration=calibration)
    )


def _image(value: float):
    return to_masked_image(np.full((2, 2), value), np.ones((2, 2)), np.zeros((2, 2), np.uint8), unit=None)


def _put_calibs(butler, name, run, instrument, detectors, value=1.0, **extra):
    butler.collections.register(run)
    return [butler.put(_image(value), name, instrument=instrument, detector=d, run=run, **extra)
            for d in detectors]


def _associations(butler, name, collection):
    if not collection_exists(butler, collection):
        return []
    return sorted(
        (str(a.ref.id), str(a.timespan))
        for a in butler.registry.queryDatasetAssociations(name, collections=collection)
    )


def _put_decision(butler, calib_type, instrument, refs, run, *, n_exposures=3, n_failed=0, detectors=("D",),
                  physical_filter=None, record_calibrations=True):
    """Exposure dictionaries with ``n_failed`` failing exposures (one MEAN
    failure each, T = 1, one detector) and a detector dictionary recording
    ``refs`` as the calibrations used → the decision task → ``run``."""
    exp_stats = {}
    for i in range(n_exposures):
        failed = i < n_failed
        entry = {"SUCCESS": False, "FAILURES": ["C10 MEAN"]} if failed else {"SUCCESS": True}
        exp_stats[1000 + i] = {detectors[0]: entry, "SUCCESS": not failed}
    det_stats = []
    if record_calibrations:
        det_stats.append({"SUCCESS": True, "CPC_CALIBRATIONS": {
            calib_type: [{"dataset_type": calib_type, "id": str(r.id), "run": r.run,
                          "data_id": dict(r.dataId.required)} for r in refs]}})
    config = CpVerifyDecisionConfig()
    config.calibrationType = calib_type
    config.connections.calibType = calib_type.capitalize()
    config.threshold = 1
    decision = CpVerifyDecisionTask(config=config).run(
        exp_stats, det_stats, instrument=instrument, physical_filter=physical_filter
    ).outputDecision
    name = decision_dataset_type(calib_type)
    dimensions = ("instrument", "physical_filter") if calib_type == "flat" else ("instrument",)
    if name not in {d.name for d in butler.registry.queryDatasetTypes()}:
        _register(butler, name, dimensions, "StructuredDataDict", calibration=False)
    butler.collections.register(run)
    extra = {"physical_filter": physical_filter} if calib_type == "flat" else {}
    butler.put(decision, name, instrument=instrument, run=run, **extra)
    return decision


@pytest.fixture
def butler(repo):
    _register(repo, "bias", ("instrument", "detector"), "MaskedImageV2")
    _register(repo, "flat", ("instrument", "detector", "physical_filter"), "MaskedImageV2")
    _register(repo, "defects", ("instrument", "detector"), "ArrowAstropy")
    _register(repo, "ptc", ("instrument", "detector"), "ArrowAstropy")
    return repo


def test_yes_decision_certifies_and_rerun_is_a_noop(butler):
    refs = _put_calibs(butler, "bias", "gen/bias/run1", "LSSTComCam", range(9))
    _put_decision(butler, "bias", "LSSTComCam", refs, "verify/bias", n_exposures=5, n_failed=2)
    result = certify_calibration(butler, dataset_type="bias", run="gen/bias/run1",
                                 calib_collection="LSSTComCam/calib/daily", begin="2026-01-01",
                                 end="2027-01-01", decision_collection="verify/bias")
    assert result.n_certified == 9 and not result.already_certified
    assert result.decision["CERTIFY"] is True and result.decision["N_FAILED_EXPOSURES"] == 2
    assert result.begin.startswith("2026-01-01") and result.end.startswith("2027-01-01")
    assert butler.collections.get_info("LSSTComCam/calib/daily").type is CollectionType.CALIBRATION
    before = _associations(butler, "bias", "LSSTComCam/calib/daily")
    assert len(before) == 9 and {a[0] for a in before} == {str(r.id) for r in refs}
    # Found by validity date.
    t = astropy.time.Time("2026-06-01", scale="tai")
    ref = butler.find_dataset("bias", collections="LSSTComCam/calib/daily", instrument="LSSTComCam",
                              detector=4, timespan=Timespan(t, t + astropy.time.TimeDelta(1, format="sec")))
    assert ref is not None and ref.id == refs[4].id
    # Exactly the same again: no error, no duplicate.
    again = certify_calibration(butler, dataset_type="bias", run="gen/bias/run1",
                                calib_collection="LSSTComCam/calib/daily", begin="2026-01-01",
                                end="2027-01-01", decision_collection="verify/bias")
    assert again.n_certified == 0 and len(again.already_certified) == 9
    assert _associations(butler, "bias", "LSSTComCam/calib/daily") == before
    assert "already certified" in again.summary()


def test_overlapping_range_is_an_error_and_changes_nothing(butler):
    refs = _put_calibs(butler, "bias", "gen/bias/a", "LATISS", [0])
    _put_decision(butler, "bias", "LATISS", refs, "verify/a")
    certify_calibration(butler, dataset_type="bias", run="gen/bias/a", calib_collection="LATISS/calib/test",
                        begin=ALWAYS[0], end=ALWAYS[1], decision_collection="verify/a")
    before = _associations(butler, "bias", "LATISS/calib/test")
    # The same dataset over an overlapping, different range.
    with pytest.raises(CertificationConflict, match="overlapping validity range") as info:
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias/a",
            calib_collection="LATISS/calib/test",
            begin="2020-01-01",
            end="2060-01-01",
            decision_collection="verify/a",
        )
    assert info.value.conflicts[0]["existing_id"] == str(refs[0].id)
    # A new dataset of the same data ID over an overlapping range.
    new = _put_calibs(butler, "bias", "gen/bias/b", "LATISS", [0], value=2.0)
    _put_decision(butler, "bias", "LATISS", new, "verify/b")
    with pytest.raises(CertificationConflict) as info:
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias/b",
            calib_collection="LATISS/calib/test",
            begin="2026-01-01",
            end="2026-02-01",
            decision_collection="verify/b",
        )
    message = str(info.value)
    assert "instrument=LATISS, detector=0" in message
    assert str(refs[0].id) in message and "gen/bias/a" in message
    assert "nothing was certified" in message
    assert _associations(butler, "bias", "LATISS/calib/test") == before
    # Adjacent ranges do not overlap ([begin, end) is half-open).
    certify_calibration(
        butler,
        dataset_type="bias",
        run="gen/bias/b",
        calib_collection="LATISS/calib/test",
        begin=ALWAYS[1],
        end="2060-01-01",
        decision_collection="verify/b",
    )
    assert len(_associations(butler, "bias", "LATISS/calib/test")) == 2


def test_conflict_on_one_detector_certifies_none(butler):
    old = _put_calibs(butler, "bias", "gen/bias/old", "LSSTComCam", [4])
    certify_calibration(
        butler,
        dataset_type="bias",
        run="gen/bias/old",
        calib_collection="LSSTComCam/calib/test",
        begin="2026-01-01",
        end="2027-01-01",
        require_decision=False,
    )
    refs = _put_calibs(butler, "bias", "gen/bias/new", "LSSTComCam", range(9), value=3.0)
    _put_decision(butler, "bias", "LSSTComCam", refs, "verify/new")
    before = _associations(butler, "bias", "LSSTComCam/calib/test")
    with pytest.raises(CertificationConflict, match="1 overlapping") as info:
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias/new",
            calib_collection="LSSTComCam/calib/test",
            begin="2026-06-01",
            end="2028-01-01",
            decision_collection="verify/new",
        )
    assert [c["data_id"]["detector"] for c in info.value.conflicts] == [4]
    assert info.value.conflicts[0]["existing_id"] == str(old[0].id)
    assert _associations(butler, "bias", "LSSTComCam/calib/test") == before


def test_registry_conflict_rolls_back_everything(butler, monkeypatch):
    """Even when the pre-check is bypassed (a concurrent writer), the
    registry's own check fails the whole transaction: no detector and no
    chain change is kept."""
    _put_calibs(butler, "bias", "gen/bias/old", "LSSTComCam", [8])
    certify_calibration(
        butler,
        dataset_type="bias",
        run="gen/bias/old",
        calib_collection="LSSTComCam/calib/test",
        begin="2026-01-01",
        end="2027-01-01",
        require_decision=False,
    )
    butler.collections.register("LSSTComCam/chain", CollectionType.CHAINED)
    refs = _put_calibs(butler, "bias", "gen/bias/new", "LSSTComCam", range(9), value=3.0)
    monkeypatch.setattr(certify_module, "_classify", lambda butler, dtype, refs, *args: (list(refs), [], []))
    before = _associations(butler, "bias", "LSSTComCam/calib/test")
    with pytest.raises(CertificationConflict, match="registry reports"):
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias/new",
            calib_collection="LSSTComCam/calib/test",
            begin="2026-06-01",
            end="2028-01-01",
            require_decision=False,
            chain="LSSTComCam/chain",
        )
    assert len(refs) == 9
    assert _associations(butler, "bias", "LSSTComCam/calib/test") == before
    assert butler.collections.get_info("LSSTComCam/chain").children == ()


def test_no_decision_certifies_nothing(butler):
    refs = _put_calibs(butler, "bias", "gen/bias", "LSSTComCam", range(9))
    decision = _put_decision(butler, "bias", "LSSTComCam", refs, "verify/bias", n_exposures=5, n_failed=3)
    assert decision["CERTIFY"] is False
    with pytest.raises(CertificationRefused, match="decision for LSSTComCam is NO") as info:
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias",
            calib_collection="LSSTComCam/calib/test",
            begin=ALWAYS[0],
            end=ALWAYS[1],
            decision_collection="verify/bias",
            chain="LSSTComCam/c",
        )
    assert "DO NOT CERTIFY" in str(info.value)  # the report is part of the message
    assert info.value.decision["N_FAILED_EXPOSURES"] == 3
    assert not collection_exists(butler, "LSSTComCam/calib/test") and not collection_exists(
        butler, "LSSTComCam/c"
    )


def test_missing_or_foreign_decision_is_refused(butler):
    refs = _put_calibs(butler, "bias", "gen/bias", "LATISS", [0])
    with pytest.raises(CertificationRefused, match="needs its verification decision"):
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias",
            calib_collection="LATISS/calib/test",
            begin=ALWAYS[0],
            end=ALWAYS[1],
        )
    butler.collections.register("verify/empty")
    with pytest.raises(CertificationRefused, match="no cpcVerifyBiasDecision for LATISS"):
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias",
            calib_collection="LATISS/calib/test",
            begin=ALWAYS[0],
            end=ALWAYS[1],
            decision_collection="verify/empty",
        )
    # A "yes" about another bias (e.g. the previously certified one) does not certify this one.
    other = _put_calibs(butler, "bias", "gen/bias/other", "LATISS", [0])
    _put_decision(butler, "bias", "LATISS", other, "verify/other")
    with pytest.raises(CertificationRefused, match="does not concern 1 of the 1"):
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias",
            calib_collection="LATISS/calib/test",
            begin=ALWAYS[0],
            end=ALWAYS[1],
            decision_collection="verify/other",
        )
    assert not collection_exists(butler, "LATISS/calib/test")
    # Explicit opt-outs.
    result = certify_calibration(
        butler,
        dataset_type="bias",
        run="gen/bias",
        calib_collection="LATISS/calib/test",
        begin=ALWAYS[0],
        end=ALWAYS[1],
        decision_collection="verify/other",
        match_decision=False,
    )
    assert result.n_certified == 1 and result.certified[0].id == str(refs[0].id)
    result = certify_calibration(
        butler,
        dataset_type="bias",
        run="gen/bias/other",
        calib_collection="LATISS/calib/unverified",
        begin=ALWAYS[0],
        end=ALWAYS[1],
        require_decision=False,
    )
    assert result.n_certified == 1 and result.decision is None


def _ingest_table(butler, table, name, run, tmp_path, **data_id):
    """Store a table as a plain Parquet file (daf_butler's own formatter): a
    stand-in whose layout does not matter to certification."""
    butler.collections.register(run)
    path = tmp_path / f"{name}_{run.replace('/', '_')}.parq"
    table.write(path, format="parquet")
    ref = DatasetRef(butler.get_dataset_type(name), butler.registry.expandDataId(**data_id), run=run)
    parquet = "lsst.daf.butler.formatters.parquet.ParquetFormatter"
    butler.ingest(FileDataset(path=str(path), refs=[ref], formatter=parquet), transfer="copy")
    return ref


def test_defects_and_ptc_are_certified_directly(butler, tmp_path):
    table = Table({"x0": [1], "y0": [2], "width": [1], "height": [10]})
    refs = [_ingest_table(butler, table, "defects", "gen/defects", tmp_path, instrument="LATISS", detector=0)]
    ptc = Table({"amp": ["C10"], "gain": [1.08], "noise": [8.4]})
    refs.append(_ingest_table(butler, ptc, "ptc", "gen/ptc", tmp_path, instrument="LATISS", detector=0))
    for name, run, ref in (("defects", "gen/defects", refs[0]), ("ptc", "gen/ptc", refs[1])):
        result = certify_calibration(
            butler,
            dataset_type=name,
            run=run,
            calib_collection="LATISS/calib/test",
            begin=ALWAYS[0],
            end=ALWAYS[1],
        )
        assert result.n_certified == 1 and result.decision is None
        assert _associations(butler, name, "LATISS/calib/test")[0][0] == str(ref.id)


def test_flats_conflict_only_within_a_filter(butler):
    r = _put_calibs(butler, "flat", "gen/flat/r", "LATISS", [0], physical_filter="SDSSr_65mm~empty")
    g = _put_calibs(butler, "flat", "gen/flat/g", "LATISS", [0], physical_filter="SDSSg_65mm~empty")
    _put_decision(butler, "flat", "LATISS", r, "verify/flat", physical_filter="SDSSr_65mm~empty")
    _put_decision(butler, "flat", "LATISS", g, "verify/flat", physical_filter="SDSSg_65mm~empty")
    for run in ("gen/flat/r", "gen/flat/g"):
        result = certify_calibration(
            butler,
            dataset_type="flat",
            run=run,
            calib_collection="LATISS/calib/test",
            begin=ALWAYS[0],
            end=ALWAYS[1],
            decision_collection="verify/flat",
        )
        assert result.n_certified == 1
        assert result.decision["PHYSICAL_FILTER"] == run.replace("gen/flat/", "SDSS") + "_65mm~empty"
    assert len(_associations(butler, "flat", "LATISS/calib/test")) == 2


def test_flat_decision_is_per_physical_filter(butler):
    """A flat is certified only on the decision of its own filter: a "yes"
    for r does not certify g, a "no" for g refuses g, and a run holding both
    filters needs a "yes" for each."""
    r = _put_calibs(butler, "flat", "gen/flat/rg", "LATISS", [0], physical_filter="SDSSr_65mm~empty")
    g = _put_calibs(
        butler, "flat", "gen/flat/rg", "LATISS", [0], physical_filter="SDSSg_65mm~empty", value=2.0
    )
    _put_decision(butler, "flat", "LATISS", r, "verify/r", physical_filter="SDSSr_65mm~empty")
    kwargs = dict(
        dataset_type="flat",
        run="gen/flat/rg",
        calib_collection="LATISS/calib/test",
        begin=ALWAYS[0],
        end=ALWAYS[1],
    )
    with pytest.raises(CertificationRefused, match="no cpcVerifyFlatDecision for LATISS SDSSg_65mm~empty"):
        certify_calibration(butler, decision_collection="verify/r", **kwargs)
    _put_decision(
        butler, "flat", "LATISS", g, "verify/g", physical_filter="SDSSg_65mm~empty", n_exposures=3, n_failed=2
    )
    with pytest.raises(CertificationRefused, match="decision for LATISS SDSSg_65mm~empty is NO"):
        certify_calibration(butler, decision_collection=["verify/r", "verify/g"], **kwargs)
    assert not collection_exists(butler, "LATISS/calib/test")
    # Only r: certified on its own decision.
    only_r = "instrument = 'LATISS' AND physical_filter = 'SDSSr_65mm~empty'"
    result = certify_calibration(butler, decision_collection="verify/r", where=only_r, **kwargs)
    assert [c.id for c in result.certified] == [str(r[0].id)]
    # Both, with a "yes" for g too: one decision per filter.
    _put_decision(butler, "flat", "LATISS", g, "verify/g2", physical_filter="SDSSg_65mm~empty")
    result = certify_calibration(butler, decision_collection=["verify/r", "verify/g2"], **kwargs)
    assert set(result.decision) == {"LATISS SDSSr_65mm~empty", "LATISS SDSSg_65mm~empty"}
    assert result.n_certified == 1 and len(result.already_certified) == 1


def test_decision_without_calibrations_certifies_with_a_warning(butler, caplog):
    """A decision made from cp_verify's outputs lists no calibration: it is
    followed, and certification warns that it could not check the datasets."""
    refs = _put_calibs(butler, "bias", "gen/bias", "LSSTComCam", range(3))
    decision = _put_decision(butler, "bias", "LSSTComCam", refs, "verify/cpv", record_calibrations=False)
    assert decision["CALIBRATIONS"] == {}
    assert "do not record the calibrations" in decision["CALIBRATIONS_NOTE"]
    assert "do not record the calibrations" in decision["REPORT"]
    with caplog.at_level(logging.WARNING, logger="lsst.cpcombined.repo.certify"):
        result = certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias",
            calib_collection="LSSTComCam/calib/test",
            begin=ALWAYS[0],
            end=ALWAYS[1],
            decision_collection="verify/cpv",
        )
    assert result.n_certified == 3
    assert any(
        "does not list the calibration datasets it verified" in r.message and "3 dataset(s)" in r.message
        for r in caplog.records
    )


def test_chain_prepend_and_run_resolution(butler):
    refs = _put_calibs(butler, "bias", "gen/bias/20260101T000000Z", "LATISS", [0])
    # A pipetask-style output chain: its first child is the RUN.
    butler.collections.register("gen/bias", CollectionType.CHAINED)
    butler.collections.register("LATISS/raw/all")
    butler.collections.redefine_chain("gen/bias", ["gen/bias/20260101T000000Z", "LATISS/raw/all"])
    assert resolve_run(butler, "gen/bias") == "gen/bias/20260101T000000Z"
    _put_decision(butler, "bias", "LATISS", refs, "verify/bias")
    butler.collections.register("LATISS/calib/old", CollectionType.CALIBRATION)
    butler.collections.register("LATISS/calib", CollectionType.CHAINED)
    butler.collections.redefine_chain("LATISS/calib", ["LATISS/calib/old"])
    kwargs = dict(
        dataset_type="bias",
        run="gen/bias",
        calib_collection="LATISS/calib/daily",
        begin=ALWAYS[0],
        end=ALWAYS[1],
        decision_collection="verify/bias",
        chain="LATISS/calib",
    )
    result = certify_calibration(butler, **kwargs)
    assert result.run == "gen/bias/20260101T000000Z" and result.chain_updated
    assert butler.collections.get_info("LATISS/calib").children == ("LATISS/calib/daily", "LATISS/calib/old")
    again = certify_calibration(butler, **kwargs)
    assert not again.chain_updated and again.n_certified == 0
    assert butler.collections.get_info("LATISS/calib").children == ("LATISS/calib/daily", "LATISS/calib/old")


def test_bad_arguments(butler):
    _put_calibs(butler, "bias", "gen/bias", "LATISS", [0])
    with pytest.raises(ValueError, match="empty"):
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias",
            calib_collection="LATISS/calib",
            begin="2027-01-01",
            end="2026-01-01",
            require_decision=False,
        )
    with pytest.raises(CertificationError, match="no bias datasets"):
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias",
            calib_collection="LATISS/calib",
            begin=ALWAYS[0],
            end=ALWAYS[1],
            require_decision=False,
            where="instrument = 'LATISS' AND detector = 5",
        )
    with pytest.raises(CertificationError, match="does not exist"):
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/nothing",
            calib_collection="LATISS/calib",
            begin=ALWAYS[0],
            end=ALWAYS[1],
            require_decision=False,
        )
    with pytest.raises(CertificationError, match="not CALIBRATION"):
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias",
            calib_collection="gen/bias",
            begin=ALWAYS[0],
            end=ALWAYS[1],
            require_decision=False,
        )
    _register(butler, "notACalib", ("instrument",), "StructuredDataDict", calibration=False)
    with pytest.raises(CertificationError, match="not a calibration dataset type"):
        certify_calibration(
            butler,
            dataset_type="notACalib",
            run="gen/bias",
            calib_collection="LATISS/calib",
            begin=ALWAYS[0],
            end=ALWAYS[1],
        )
    with pytest.raises(ValueError, match="not verified"):
        decision_dataset_type("defects")
    assert [decision_dataset_type(t) for t in ("bias", "dark", "flat")] == [
        "cpcVerifyBiasDecision",
        "cpcVerifyDarkDecision",
        "cpcVerifyFlatDecision",
    ]
    with pytest.raises(CertificationError, match="invalid dataset query"):
        certify_calibration(
            butler,
            dataset_type="bias",
            run="gen/bias",
            calib_collection="LATISS/calib",
            begin=ALWAYS[0],
            end=ALWAYS[1],
            require_decision=False,
            where="detector = 5",
        )
    with pytest.raises(CertificationError, match="unknown dataset type 'bfk'"):
        certify_calibration(
            butler,
            dataset_type="bfk",
            run="gen/bias",
            calib_collection="LATISS/calib",
            begin=ALWAYS[0],
            end=ALWAYS[1],
        )
