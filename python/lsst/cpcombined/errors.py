"""Exceptions of cp_combined tasks (bad input that retrying will not fix)."""

from __future__ import annotations

__all__ = ("CpInputError",)

from lsst.pipe.base import RepeatableQuantumError


class CpInputError(RepeatableQuantumError):
    """The inputs of a quantum cannot make a valid calibration (wrong image
    type, mismatched filters, too few usable exposures...).  The message
    names the offending exposures."""
