"""Run-level merge of the exposure verification results."""

from __future__ import annotations

__all__ = ("CpVerifyRunConfig", "CpVerifyRunConnections", "CpVerifyRunTask")

from collections.abc import Mapping, Sequence
from typing import Any

from astropy.table import Table, vstack
from lsst.pex.config import ChoiceField
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import verify as verify_algo
from ..errors import CpInputError
from .verify_exposure import merge_calibrations


class CpVerifyRunConnections(
    PipelineTaskConnections,
    dimensions=("instrument",),
    defaultTemplates={"calibType": "Bias"},
):
    inputStats = cT.Input(
        name="verify{calibType}ExpStats",
        doc="Exposure verification results.",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "exposure"),
        multiple=True,
    )
    inputResults = cT.Input(
        name="verify{calibType}DetResults",
        doc="Per-amp results tables of every (exposure, detector).",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "exposure", "detector"),
        multiple=True,
    )
    outputStats = cT.Output(
        name="verify{calibType}Stats",
        doc=(
            "Run verification results: N_EXPOSURES, N_DETECTORS, EXPOSURES (each with SUCCESS and "
            "FAILURES), SUCCESS, FAILURES (lsst.cpcombined.algorithms.verify.verify_run), calibrations "
            "used, thresholds."
        ),
        storageClass="StructuredDataDict",
        dimensions=("instrument",),
    )
    outputResults = cT.Output(
        name="verify{calibType}Results",
        doc="One row per (exposure, detector, amplifier): statistics and test results of the run.",
        storageClass="ArrowAstropy",
        dimensions=("instrument",),
    )


class CpVerifyRunConfig(PipelineTaskConfig, pipelineConnections=CpVerifyRunConnections):
    """Configuration of `CpVerifyRunTask`."""

    calibrationType = ChoiceField(
        dtype=str,
        doc="Calibration verified.  Must match connections.calibType.",
        allowed={"bias": "bias", "dark": "dark", "flat": "flat"},
        default="bias",
    )

    def validate(self) -> None:
        super().validate()
        if self.connections.calibType.lower() != self.calibrationType:
            raise ValueError(
                f"connections.calibType={self.connections.calibType!r} does not match "
                f"calibrationType={self.calibrationType!r}"
            )


class CpVerifyRunTask(PipelineTask):
    """Merge the exposure results of a verification run into run statistics
    and one per-amp results table."""

    ConfigClass = CpVerifyRunConfig
    _DefaultName = "cpVerifyRun"
    config: CpVerifyRunConfig

    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        inputs = butlerQC.get(inputRefs)
        outputs = self.run(**inputs, instrument=butlerQC.quantum.dataId["instrument"])
        butlerQC.put(outputs, outputRefs)

    def run(
        self,
        inputStats: Sequence[Mapping[str, Any]],
        inputResults: Sequence[Table] = (),
        *,
        instrument: str,
    ) -> Struct:
        """Merge the exposure results.

        Parameters
        ----------
        inputStats
            ``verify<Type>ExpStats`` of every exposure.
        inputResults
            ``verify<Type>DetResults`` tables of every (exposure, detector).
        instrument
            Instrument name.

        Returns
        -------
        struct
            ``outputStats`` (`dict`) and ``outputResults``
            (`astropy.table.Table`, sorted by exposure, detector, amp).
        """
        if not inputStats:
            raise CpInputError("no exposure verification results to merge")
        stats = sorted(inputStats, key=lambda r: int(r["EXPOSURE"]))
        types = {r["CALIB_TYPE"] for r in stats}
        if types != {self.config.calibrationType}:
            raise CpInputError(
                f"exposure results of types {sorted(types)}, expected {self.config.calibrationType!r}"
            )
        result = verify_algo.verify_run(str(instrument), stats)
        for exp in stats:
            rec = result["EXPOSURES"][str(exp["EXPOSURE"])]
            rec["OBSID"] = exp.get("OBSID", "")
            rec["DATE"] = exp.get("DATE", "")
        result["CALIBRATIONS"] = merge_calibrations(stats)
        result["THRESHOLDS"] = dict(stats[0].get("THRESHOLDS") or {})
        n_failed = sum(1 for r in stats if not r["SUCCESS"])
        self.log.info(
            "%s verification of %d exposure(s) on %d detector(s): %d exposure(s) with failures, "
            "%d failure(s).",
            self.config.calibrationType,
            result["N_EXPOSURES"],
            result["N_DETECTORS"],
            n_failed,
            len(result["FAILURES"]),
        )

        tables = [t for t in inputResults if len(t)]
        if tables:
            table = vstack(tables, join_type="outer", metadata_conflicts="silent")
            table.sort(["EXPOSURE", "DETECTOR", "AMP"])
        else:
            table = Table()
        table.meta["CALIB_TYPE"] = self.config.calibrationType
        table.meta["INSTRUMENT"] = str(instrument)
        return Struct(outputStats=result, outputResults=table)
