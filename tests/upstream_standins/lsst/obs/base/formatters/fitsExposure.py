"""Stand-in for ``lsst.obs.base.formatters.fitsExposure`` (tests only)."""
# ruff: noqa: N999  (the module name is the Science Pipelines' own)

from __future__ import annotations

__all__ = ("FitsExposureFormatter",)

from ._standin import StandInFormatter


class FitsExposureFormatter(StandInFormatter):
    """Name of the obs_base formatter of afw Exposure FITS files."""
