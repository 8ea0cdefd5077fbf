"""Combine ISR-processed flats into a flat per physical filter."""

from __future__ import annotations

__all__ = ("CpCombineByFilterConfig", "CpCombineByFilterConnections", "CpCombineByFilterTask")

from lsst.pipe.base import connectionTypes as cT

from .combine import CpCombineConfig, CpCombineConnections, CpCombineTask


class CpCombineByFilterConnections(
    CpCombineConnections, dimensions=("instrument", "detector", "physical_filter")
):
    inputExpHandles = cT.Input(
        name="cpcFlatProc",
        doc="ISR-processed flats to combine.",
        storageClass="MaskedImageV2",
        dimensions=("instrument", "exposure", "detector"),
        multiple=True,
        deferLoad=True,
    )
    outputData = cT.Output(
        name="flat",
        doc="Combined flat of one physical filter (afw Exposure FITS, dimensionless).",
        storageClass="ExposureF",
        dimensions=("instrument", "detector", "physical_filter"),
        isCalibration=True,
    )


class CpCombineByFilterConfig(CpCombineConfig, pipelineConnections=CpCombineByFilterConnections):
    """Configuration of `CpCombineByFilterTask` (flat defaults)."""

    def setDefaults(self) -> None:
        super().setDefaults()
        self.calibrationType = "flat"
        self.scaling = "focal_plane"
        self.minInputs = 3


class CpCombineByFilterTask(CpCombineTask):
    """`CpCombineTask` with one quantum per (detector, physical filter)."""

    ConfigClass = CpCombineByFilterConfig
    _DefaultName = "cpCombineByFilter"
