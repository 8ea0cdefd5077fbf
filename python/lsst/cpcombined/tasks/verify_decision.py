"""The majority decision on a verified calibration, as a pipeline step.

Rule as implemented (`lsst.cpcombined.algorithms.majority`)
----------------------------------------------------------
With N the number of exposures verified (only exposures: the run
statistics nest them under ``EXPOSURES``), D the number of detectors
verified and T the threshold (``threshold``, the script's
``number_verification_tests_threshold_{bias,dark,flat}``, default 8):

1. per exposure, count the failures of each test name over all its
   amplifiers, detectors and exposure-level tests;
2. the exposure fails when one test has **at least** ``T × (⌊D/2⌋ + 1)``
   failures — T is a number of *failures* per detector, on a majority of the
   detectors;
3. the calibration is certified unless the failed exposures reach
   ``⌊N/2⌋ + 1`` (a strict majority); with N = 0 nothing is certified.

How this differs from the original ScriptQueue script: the script counted
the run dictionary's ``SUCCESS`` key as one more exposure (so N was one too
large, which raises the exposure limit by one whenever the true N is odd),
and documented T as a number of tests that must *pass* while comparing it
with failure counts.  Here N counts exposures only, T is documented and used
as a failure count, and both limits are inclusive ("reaches", ``>=``).
The same text is written into every decision dataset (``RULE``).
"""

from __future__ import annotations

__all__ = ("RULE_TEXT", "CpVerifyDecisionConfig", "CpVerifyDecisionConnections", "CpVerifyDecisionTask")

from collections.abc import Mapping
from typing import Any

from lsst.pex.config import ChoiceField, Field
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import majority

#: Description of the rule stored in each decision dataset.
RULE_TEXT = (
    "An exposure fails when any single test has at least T x (floor(D/2) + 1) failures over its "
    "amplifiers, detectors and exposure-level tests (T = threshold, a number of failures; D = detectors "
    "verified). The calibration is certified unless the failed exposures reach floor(N/2) + 1 "
    "(N = exposures verified; N = 0 certifies nothing). Unlike the original ScriptQueue script, N counts "
    "exposures only (the script also counted the SUCCESS key of its results dictionary as an exposure) and "
    "T is documented as the failure count it is used as (the script documented it as a number of passes)."
)


class CpVerifyDecisionConnections(
    PipelineTaskConnections,
    dimensions=("instrument",),
    defaultTemplates={"calibType": "Bias"},
):
    inputStats = cT.Input(
        name="verify{calibType}Stats",
        doc="Run verification results.",
        storageClass="StructuredDataDict",
        dimensions=("instrument",),
    )
    outputDecision = cT.Output(
        name="verify{calibType}Decision",
        doc=(
            "Majority decision: CERTIFY (bool), N_EXPOSURES, N_DETECTORS, THRESHOLD, TEST_FAILURE_LIMIT, "
            "N_FAILED_EXPOSURES, EXPOSURE_FAILURE_LIMIT, FAILED_EXPOSURES (exposure -> failing test -> "
            "count), COUNTS, REPORT, RULE, THRESHOLDS, CALIBRATIONS (the calibration datasets verified)."
        ),
        storageClass="StructuredDataDict",
        dimensions=("instrument",),
    )


class CpVerifyDecisionConfig(PipelineTaskConfig, pipelineConnections=CpVerifyDecisionConnections):
    """Configuration of `CpVerifyDecisionTask`."""

    calibrationType = ChoiceField(
        dtype=str,
        doc="Calibration decided on.  Must match connections.calibType.",
        allowed={"bias": "bias", "dark": "dark", "flat": "flat"},
        default="bias",
    )
    threshold = Field(
        dtype=int,
        doc=(
            "T of the majority rule (number_verification_tests_threshold_<type>): an exposure fails when "
            "one test has at least T x (floor(D/2) + 1) failures."
        ),
        default=majority.DEFAULT_THRESHOLD,
    )

    def validate(self) -> None:
        super().validate()
        if self.threshold < 1:
            raise ValueError(f"threshold must be >= 1, not {self.threshold}")
        if self.connections.calibType.lower() != self.calibrationType:
            raise ValueError(
                f"connections.calibType={self.connections.calibType!r} does not match "
                f"calibrationType={self.calibrationType!r}"
            )


class CpVerifyDecisionTask(PipelineTask):
    """Apply the majority rule (see the module docstring) to the run
    verification results and write the decision with its reasons and a
    human-readable report.  A "no" is a result, not an error: the task
    succeeds and certification refuses to proceed."""

    ConfigClass = CpVerifyDecisionConfig
    _DefaultName = "cpVerifyDecision"
    config: CpVerifyDecisionConfig

    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        inputs = butlerQC.get(inputRefs)
        outputs = self.run(**inputs, instrument=butlerQC.quantum.dataId["instrument"])
        butlerQC.put(outputs, outputRefs)

    def run(self, inputStats: Mapping[str, Any], *, instrument: str) -> Struct:
        """Decide.

        Parameters
        ----------
        inputStats
            ``verify<Type>Stats`` run results.
        instrument
            Instrument name.

        Returns
        -------
        struct
            ``outputDecision``: `dict` (see the connection doc).
        """
        decision = majority.majority_decision(
            inputStats,
            threshold=self.config.threshold,
            calib_type=self.config.calibrationType,
        )
        out = decision.to_dict()
        out.update(
            {
                "INSTRUMENT": str(instrument),
                "RULE": RULE_TEXT,
                "THRESHOLDS": {
                    "threshold": decision.threshold,
                    "test_failure_limit": decision.test_failure_limit,
                    "exposure_failure_limit": decision.exposure_failure_limit,
                    "verification": dict(inputStats.get("THRESHOLDS") or {}),
                },
                "EXPOSURES": sorted(decision.exposures, key=lambda e: (len(e), e)),
                "CALIBRATIONS": dict(inputStats.get("CALIBRATIONS") or {}),
            }
        )
        log = self.log.info if decision.certify else self.log.warning
        for line in decision.report.splitlines():
            log("%s", line)
        return Struct(outputDecision=out)
