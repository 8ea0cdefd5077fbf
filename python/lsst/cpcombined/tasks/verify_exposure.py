"""Per-exposure merge of the detector verification results.

Writes ``verify<Type>ExpStats`` in cp_verify's shape
(`lsst.cpcombined.algorithms.verify.verify_exposure`): one key per
detector, named by the camera (``RXX_S00``, ``R22_S11``), with ``SUCCESS``
and, when it failed, its ``FAILURES`` (``"C10 NOISE"``, ``"SCATTER"``); for
flats the exposure statistic ``EXP`` and test ``VERIFY``; and ``SUCCESS``.
There is no other key, so cp_verify's run merge and the ScriptQueue script
read it as cp_verify's own.  The detector names come from the data IDs of
the inputs (as in cp_verify), not from their contents, so the merge also
reads detector dictionaries that cp_verify wrote.

Difference from cp_verify: the flat exposure ``SCATTER`` is normalised,
``std/mean`` of the detector means, where cp_verify stores and tests the
absolute standard deviation.
"""

from __future__ import annotations

__all__ = ("CpVerifyExposureConfig", "CpVerifyExposureConnections", "CpVerifyExposureTask")

from collections.abc import Mapping
from typing import Any

from lsst.pex.config import ChoiceField, Field
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import verify as verify_algo
from ..errors import CpInputError
from ..obs.instrument import get_instrument


class CpVerifyExposureConnections(
    PipelineTaskConnections,
    dimensions=("instrument", "exposure"),
    defaultTemplates={"calibType": "Bias"},
):
    inputStats = cT.Input(
        name="verify{calibType}DetStats",
        doc="Detector verification dictionaries of this exposure.",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "exposure", "detector"),
        multiple=True,
    )
    outputStats = cT.Output(
        name="verify{calibType}ExpStats",
        doc=(
            "cp_verify's exposure dictionary: detector name -> SUCCESS [and FAILURES], for flats EXP and "
            "VERIFY, and SUCCESS (lsst.cpcombined.algorithms.verify.verify_exposure)."
        ),
        storageClass="StructuredDataDict",
        dimensions=("instrument", "exposure"),
    )


class CpVerifyExposureConfig(PipelineTaskConfig, pipelineConnections=CpVerifyExposureConnections):
    """Configuration of `CpVerifyExposureTask`."""

    calibrationType = ChoiceField(
        dtype=str,
        doc="Calibration verified (flat: exposure SCATTER test).  Must match connections.calibType.",
        allowed={"bias": "bias", "dark": "dark", "flat": "flat"},
        default="bias",
    )
    exposureScatterThreshold = Field(
        dtype=float,
        doc="flat exposure SCATTER: largest allowed std(detector means) / mean(detector means).",
        default=0.05,
    )

    def validate(self) -> None:
        super().validate()
        if self.connections.calibType.lower() != self.calibrationType:
            raise ValueError(
                f"connections.calibType={self.connections.calibType!r} does not match "
                f"calibrationType={self.calibrationType!r}"
            )


class CpVerifyExposureTask(PipelineTask):
    """Merge the detector results of one exposure and run the exposure tests
    (flat: normalised scatter of the detector means)."""

    ConfigClass = CpVerifyExposureConfig
    _DefaultName = "cpVerifyExposure"
    config: CpVerifyExposureConfig

    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        data_id = butlerQC.quantum.dataId
        camera = get_instrument(data_id["instrument"]).camera_description
        stats: dict[str, Any] = {}
        for ref in inputRefs.inputStats:
            name = camera[int(ref.dataId["detector"])].name
            stats[name] = butlerQC.get(ref)
        outputs = self.run(stats, instrument=data_id["instrument"], exposure=data_id["exposure"])
        butlerQC.put(outputs, outputRefs)

    def run(self, inputStats: Mapping[str, Mapping[str, Any]], *, instrument: str, exposure: int) -> Struct:
        """Merge the detector results.

        Parameters
        ----------
        inputStats
            Detector name → ``verify<Type>DetStats`` of this exposure.
        instrument, exposure
            Data ID values (for messages).

        Returns
        -------
        struct
            ``outputStats``: the exposure dictionary (`dict`).
        """
        if not inputStats:
            raise CpInputError(f"exposure {exposure}: no detector verification results")
        ordered = {name: inputStats[name] for name in sorted(inputStats)}
        thresholds = verify_algo.VerifyThresholds(exposure_scatter=self.config.exposureScatterThreshold)
        try:
            result = verify_algo.verify_exposure(self.config.calibrationType, ordered, thresholds=thresholds)
        except (KeyError, ValueError) as err:
            raise CpInputError(
                f"{instrument} exposure {exposure}: the {self.config.calibrationType} detector verification "
                f"results cannot be merged ({err}); re-run the detector step of this pipeline"
            ) from err
        failures = verify_algo.exposure_failures(result)
        if failures:
            self.log.info(
                "Exposure %s: %d %s verification failure(s): %s",
                exposure,
                len(failures),
                self.config.calibrationType,
                ", ".join(failures),
            )
        return Struct(outputStats=result)
