"""SAL adapters: only where lsst.ts.salobj and lsst.ts.observatory.control
exist (a summit-like environment); skipped otherwise."""

from __future__ import annotations

import pytest

salobj = pytest.importorskip("lsst.ts.salobj", reason="SAL (lsst.ts.salobj) is not installed here")
pytest.importorskip("lsst.ts.observatory.control", reason="lsst.ts.observatory.control is not installed here")


def test_scripts_share_the_core_schema():
    from lsst.cpcombined.script import get_schema
    from lsst.cpcombined.script.sal import MakeComCamCalibrations, MakeLATISSCalibrations

    assert MakeLATISSCalibrations.get_schema() == get_schema("LATISS")
    assert MakeComCamCalibrations.get_schema() == get_schema("LSSTComCam")


def test_script_package_has_no_sal_import():
    import sys

    import lsst.cpcombined.script  # noqa: F401

    assert "lsst.cpcombined.script.sal" not in sys.modules or "lsst.ts.salobj" in sys.modules
