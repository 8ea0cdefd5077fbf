"""Stand-in for ``lsst.obs.lsst.rawFormatter`` (tests only)."""
# ruff: noqa: N999  (the module name is the Science Pipelines' own)

from __future__ import annotations

__all__ = ("LatissRawFormatter", "LsstComCamRawFormatter")

from lsst.obs.base.formatters._standin import StandInFormatter


class LatissRawFormatter(StandInFormatter):
    """Name of obs_lsst's formatter of LATISS raw files."""


class LsstComCamRawFormatter(StandInFormatter):
    """Name of obs_lsst's formatter of LSSTComCam raw files."""
