"""The report's sections built in two processes (`ReportWorker`): how they
are split, and that a worker that is gone costs nothing but time."""

from __future__ import annotations

import pickle

import pytest
from lsst.cpcombined.cli.report import SECTION_COST, ReportWorker
from lsst.cpcombined.cli.report.parallel import split_sections
from lsst.cpcombined.script.schema import validate_config


def test_split_sections_halves_the_cost():
    anchors = ["decisions", *(a for a in SECTION_COST if a != "decisions")]
    theirs = split_sections(anchors, SECTION_COST)
    assert anchors[0] not in theirs  # the decisions stay with the run's process
    assert theirs == [a for a in anchors if a in theirs]  # page order
    total = sum(SECTION_COST.get(a, 1.0) for a in anchors)
    share = sum(SECTION_COST.get(a, 1.0) for a in theirs)
    biggest = max(SECTION_COST.values())
    assert abs(total - 2 * share) <= biggest
    assert split_sections(["decisions"], SECTION_COST) == []


def test_script_config_pickles():
    """What the worker is sent pickles (the configuration's attribute
    lookup must not recurse while it is rebuilt)."""
    cfg = validate_config({"script_mode": "BIAS", "repo": "/tmp/x", "detectors": [0]}, "LATISS")
    back = pickle.loads(pickle.dumps(cfg))
    assert back.detectors == [0] and back.repo == "/tmp/x"
    with pytest.raises(AttributeError):
        _ = back.no_such_option


def test_dead_worker_is_not_used():
    worker = ReportWorker()
    worker.kill()

    class Ctx:
        summary = config = truth = None
        sessions: list = []

    assert worker.submit("/some/repo", Ctx(), ["bias-images"]) is False
    assert worker.result() == []
    worker.close()
