"""Per-(exposure, detector) flat levels for the focal-plane normalisation."""

from __future__ import annotations

__all__ = ("CpFlatMeasureConfig", "CpFlatMeasureConnections", "CpFlatMeasureTask")

from typing import Any

import numpy as np
from lsst.images import MaskedImage
from lsst.pex.config import Field, ListField
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms.combine import clipped_stats
from ..algorithms.isr import amp_regions
from ..algorithms.masks import BIT, bits
from ..obs.camera import AmpLayout
from ..repo.products import from_masked_image
from ._memory import collect_garbage_after


class CpFlatMeasureConnections(PipelineTaskConnections, dimensions=("instrument", "exposure", "detector")):
    inputExp = cT.Input(
        name="cpcFlatProc",
        doc="ISR-processed flat.",
        storageClass="MaskedImageV2",
        dimensions=("instrument", "exposure", "detector"),
    )
    outputStats = cT.Output(
        name="cpcFlatStatistics",
        doc="Clipped mean level of the detector and of each amp, saturated fraction.",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "exposure", "detector"),
    )


class CpFlatMeasureConfig(PipelineTaskConfig, pipelineConnections=CpFlatMeasureConnections):
    """Configuration of `CpFlatMeasureTask`."""

    nSigma = Field(dtype=float, doc="Clipping threshold (sigma).", default=3.0)
    nIter = Field(dtype=int, doc="Clipping iterations.", default=3)
    maskPlanes = ListField(
        dtype=str, doc="Pixels with these planes are ignored.", default=["BAD", "SAT", "NO_DATA", "INTRP"]
    )


class CpFlatMeasureTask(PipelineTask):
    """Measure the level of one flat exposure on one detector."""

    ConfigClass = CpFlatMeasureConfig
    _DefaultName = "cpFlatMeasure"
    config: CpFlatMeasureConfig

    @collect_garbage_after
    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        physical_filter = None
        if data_id.hasRecords():
            physical_filter = data_id.records["exposure"].physical_filter
        outputs = self.run(
            inputs["inputExp"],
            exposure=data_id["exposure"],
            detector=data_id["detector"],
            physical_filter=physical_filter,
        )
        butlerQC.put(outputs, outputRefs)

    def run(
        self, inputExp: MaskedImage, *, exposure: int, detector: int, physical_filter: str | None = None
    ) -> Struct:
        """Return ``outputStats``: a plain dict of levels for one flat."""
        image, _, mask = from_masked_image(inputExp)
        bad = bits(*self.config.maskPlanes)
        mean, std, n = clipped_stats(image, mask, bad, self.config.nSigma, self.config.nIter)
        layout = AmpLayout.from_detector_shape(image.shape)
        amps: dict[str, float] = {}
        for amp, (ys, xs) in amp_regions(layout).items():
            amps[amp] = float(
                clipped_stats(image[ys, xs], mask[ys, xs], bad, self.config.nSigma, self.config.nIter)[0]
            )
        md = inputExp.metadata
        stats: dict[str, Any] = {
            "exposure": int(exposure),
            "detector": int(detector),
            "physical_filter": physical_filter,
            "obsid": md.get("OBSID"),
            "exptime": md.get("EXPTIME"),
            "mean": float(mean),
            "std": float(std),
            "npix": int(n),
            "sat_fraction": float(np.count_nonzero(mask & BIT["SAT"]) / mask.size),
            "amp_means": amps,
        }
        return Struct(outputStats=stats)
