"""Stand-in for ``lsst.obs.base.formatters.fitsGeneric`` (tests only)."""
# ruff: noqa: N999  (the module name is the Science Pipelines' own)

from __future__ import annotations

__all__ = ("FitsGenericFormatter",)

from ._standin import StandInFormatter


class FitsGenericFormatter(StandInFormatter):
    """Name of the obs_base formatter of ip_isr calibration tables."""
