"""Run-level merge of the exposure verification results.

Writes ``verify<Type>Stats`` in cp_verify's shape
(`lsst.cpcombined.algorithms.verify.verify_run`): one key per verified
exposure, the *integer* exposure id, with ``SUCCESS`` and, when it failed,
its ``FAILURES`` (``"RXX_S00 C10 NOISE"``, ``"R22_S11 SCATTER"``,
``"SCATTER"``), then ``SUCCESS`` — nothing else, so that the ScriptQueue
script, which takes every other key for an exposure, counts exactly the
exposures.  ``verify<Type>Results`` stacks the per-amplifier
``verify<Type>DetResults`` tables (one row per exposure, detector and
amplifier; cp_verify's columns plus ours).

Quantum: one per instrument for bias and dark; one per (instrument,
physical filter) for flats, as cp_verify's ``verifyFlatStats`` and
``verifyFlatResults`` (the dimensions follow ``calibrationType``).

Differences from cp_verify: for flats, the run dictionary lists the
amplifier and detector failures of each exposure too (cp_verify lists only
the exposure-level ``SCATTER`` of flats); the flat results table carries
the exposure ``SCATTER`` (normalised, see
`lsst.cpcombined.algorithms.verify`) and its test as the columns
``FLAT_EXP_SCATTER`` and ``FLAT_EXP_VERIFY_SCATTER`` of every row instead of
cp_verify's extra per-exposure rows.
"""

from __future__ import annotations

__all__ = ("CpVerifyRunConfig", "CpVerifyRunConnections", "CpVerifyRunTask")

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy.table import Table, vstack
from lsst.pex.config import ChoiceField
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import verify as verify_algo
from ..errors import CpInputError

#: Quantum (and output) dimensions of the run merge of each type.
RUN_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "bias": ("instrument",),
    "dark": ("instrument",),
    "flat": ("instrument", "physical_filter"),
}


class CpVerifyRunConnections(
    PipelineTaskConnections,
    dimensions=("instrument",),
    defaultTemplates={"calibType": "Bias"},
):
    inputStats = cT.Input(
        name="verify{calibType}ExpStats",
        doc="Exposure verification dictionaries.",
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
            "cp_verify's run dictionary: integer exposure id -> SUCCESS [and FAILURES], and SUCCESS "
            "(lsst.cpcombined.algorithms.verify.verify_run).  Per physical filter for flats."
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

    def __init__(self, *, config: CpVerifyRunConfig) -> None:
        super().__init__(config=config)
        dimensions = RUN_DIMENSIONS[config.calibrationType]
        self.dimensions = set(dimensions)
        self.outputStats = dataclasses.replace(self.outputStats, dimensions=dimensions)
        self.outputResults = dataclasses.replace(self.outputResults, dimensions=dimensions)


class CpVerifyRunConfig(PipelineTaskConfig, pipelineConnections=CpVerifyRunConnections):
    """Configuration of `CpVerifyRunTask`."""

    calibrationType = ChoiceField(
        dtype=str,
        doc=(
            "Calibration verified.  Must match connections.calibType; flat makes the quantum and outputs "
            "per (instrument, physical_filter)."
        ),
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
    """Merge the exposure results of a verification run into the run
    dictionary and one per-amp results table."""

    ConfigClass = CpVerifyRunConfig
    _DefaultName = "cpVerifyRun"
    config: CpVerifyRunConfig

    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        stats = {int(ref.dataId["exposure"]): butlerQC.get(ref) for ref in inputRefs.inputStats}
        results = [butlerQC.get(ref) for ref in inputRefs.inputResults]
        data_id = butlerQC.quantum.dataId
        physical_filter = (
            data_id["physical_filter"] if "physical_filter" in data_id.dimensions.names else None
        )
        outputs = self.run(stats, results, instrument=data_id["instrument"], physical_filter=physical_filter)
        butlerQC.put(outputs, outputRefs)

    def run(
        self,
        inputStats: Mapping[int, Mapping[str, Any]],
        inputResults: Sequence[Table] = (),
        *,
        instrument: str,
        physical_filter: str | None = None,
    ) -> Struct:
        """Merge the exposure results.

        Parameters
        ----------
        inputStats
            Exposure id → ``verify<Type>ExpStats``.
        inputResults
            ``verify<Type>DetResults`` tables of every (exposure, detector).
        instrument
            Instrument name.
        physical_filter
            Physical filter of a flat run (for messages).

        Returns
        -------
        struct
            ``outputStats`` (`dict`) and ``outputResults``
            (`astropy.table.Table`, sorted by exposure, detector, amplifier).
        """
        if not inputStats:
            raise CpInputError("no exposure verification results to merge")
        result = verify_algo.verify_run(inputStats)
        n_failed = sum(1 for stats in inputStats.values() if stats["SUCCESS"] is not True)
        detectors = {name for stats in inputStats.values() for name in verify_algo.exposure_detectors(stats)}
        what = self.config.calibrationType + (f" ({physical_filter})" if physical_filter else "")
        self.log.info(
            "%s verification of %d exposure(s) on %d detector(s): %d exposure(s) with failures.",
            what,
            len(inputStats),
            len(detectors),
            n_failed,
        )
        table = self._merge_tables(inputStats, inputResults)
        table.meta["CALIB_TYPE"] = self.config.calibrationType
        table.meta["INSTRUMENT"] = str(instrument)
        if physical_filter is not None:
            table.meta["PHYSICAL_FILTER"] = str(physical_filter)
        return Struct(outputStats=result, outputResults=table)

    def _merge_tables(self, exp_stats: Mapping[int, Mapping[str, Any]], tables: Sequence[Table]) -> Table:
        """Stack the detector tables; for flats add the exposure test columns."""
        tables = [t for t in tables if len(t)]
        if not tables:
            return Table()
        table = vstack(tables, join_type="outer", metadata_conflicts="silent")
        table.sort(["exposure", "detector", "amplifier"])
        if verify_algo.EXPOSURE_TESTS[self.config.calibrationType]:
            stage = verify_algo.STAGE_NAMES[self.config.calibrationType]
            exposures = np.asarray(table["exposure"])
            for test in verify_algo.EXPOSURE_TESTS[self.config.calibrationType]:
                values = {int(e): s.get("EXP", {}).get(test, np.nan) for e, s in exp_stats.items()}
                passed = {int(e): s.get("VERIFY", {}).get("EXP", {}).get(test) for e, s in exp_stats.items()}
                table[f"{stage}_EXP_{test}"] = [float(values.get(int(e), np.nan)) for e in exposures]
                table[f"{stage}_EXP_VERIFY_{test}"] = [passed.get(int(e)) is True for e in exposures]
        return table
