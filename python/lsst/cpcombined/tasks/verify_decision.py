"""The majority decision on a verified calibration, as a pipeline step.

Inputs
------
The exposure-level dictionaries ``verify<Type>ExpStats`` (one per exposure,
in cp_verify's shape, written by cp_verify or by this package) are the
source of the failures, so the decision is the same on either package's
outputs.  Per exposure the failure strings are ``"<detector> <amp>
<TEST>"`` and ``"<detector> <TEST>"`` for what each detector entry lists in
its ``FAILURES``, and ``"<TEST>"`` for each failed exposure-level test
(``VERIFY.EXP``) — see `lsst.cpcombined.algorithms.majority`.  The run
dictionary is not read: cp_verify's drops the amplifier and detector
failures of flats.

The detector dictionaries ``verify<Type>DetStats`` are a second input
(``doReadCalibrations``), read only for what this package adds to them: the
calibrations used (``CPC_CALIBRATIONS``: dataset id, run and data ID,
which certification checks against the datasets it certifies) and the test
thresholds.  cp_verify's do not have them: the decision then lists no
calibration, says so (``CALIBRATIONS_NOTE`` and the report), and
certification warns that it cannot check which calibration was verified.

Quantum: one per instrument (``cpcVerifyBiasDecision``,
``cpcVerifyDarkDecision``) or per instrument and physical filter for flats
(``cpcVerifyFlatDecision``); the dimensions follow ``calibrationType``.

Rule as implemented (`lsst.cpcombined.algorithms.majority`)
----------------------------------------------------------
With N the number of exposures verified (one exposure dictionary each), D
the number of distinct detectors in them and T the threshold
(``threshold``, the script's
``number_verification_tests_threshold_{bias,dark,flat}``, default 8):

1. per exposure, count the failures of each test name over all its
   amplifiers, detectors and exposure-level tests;
2. the exposure fails when one test has **at least** ``T × (⌊D/2⌋ + 1)``
   failures — T is a number of *failures* per detector, on a majority of the
   detectors;
3. the calibration is certified unless the failed exposures reach
   ``⌊N/2⌋ + 1`` (a strict majority); with N = 0 nothing is certified.

How this differs from the original ScriptQueue script: the script reads the
run dictionary, whose ``SUCCESS`` key it counted as one more exposure (so N
was one too large, which raises the exposure limit by one whenever the true
N is odd), and documented T as a number of tests that must *pass* while
comparing it with failure counts; reading cp_verify's run dictionary it
also never sees the amplifier and detector failures of flats.  Here N
counts exposures only, T is documented and used as a failure count, the
failures come from the exposure level, and both limits are inclusive
("reaches", ``>=``).  The same text is written into every decision dataset
(``RULE``).
"""

from __future__ import annotations

__all__ = (
    "DECISION_DIMENSIONS",
    "RULE_TEXT",
    "CpVerifyDecisionConfig",
    "CpVerifyDecisionConnections",
    "CpVerifyDecisionTask",
    "merge_calibrations",
)

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lsst.pex.config import ChoiceField, Field
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import majority
from ..errors import CpInputError

#: Description of the rule stored in each decision dataset.
RULE_TEXT = (
    "An exposure fails when any single test has at least T x (floor(D/2) + 1) failures over its "
    "amplifiers, detectors and exposure-level tests, as listed by the exposure-level verification "
    "results (T = threshold, a number of failures; D = detectors verified). The calibration is certified "
    "unless the failed exposures reach floor(N/2) + 1 (N = exposures verified; N = 0 certifies nothing). "
    "Unlike the original ScriptQueue script, N counts exposures only (the script also counted the SUCCESS "
    "key of the run results dictionary as an exposure), T is documented as the failure count it is used as "
    "(the script documented it as a number of passes), and the failures are read from the exposure level "
    "(cp_verify's run level omits the amplifier and detector failures of flats)."
)

#: Note written into a decision whose inputs do not name the calibrations verified.
NO_CALIBRATIONS_NOTE = (
    "The detector verification results do not record the calibrations used (outputs of cp_verify, or "
    "doReadCalibrations=False): certification cannot check that this decision concerns the datasets it "
    "certifies."
)

#: Quantum (and output) dimensions of the decision of each type.
DECISION_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "bias": ("instrument",),
    "dark": ("instrument",),
    "flat": ("instrument", "physical_filter"),
}


class CpVerifyDecisionConnections(
    PipelineTaskConnections,
    dimensions=("instrument",),
    defaultTemplates={"calibType": "Bias"},
):
    inputExpStats = cT.Input(
        name="verify{calibType}ExpStats",
        doc="Exposure verification dictionaries (cp_verify's shape, by cp_verify or this package).",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "exposure"),
        multiple=True,
    )
    inputDetStats = cT.Input(
        name="verify{calibType}DetStats",
        doc=(
            "Detector verification dictionaries, read for the calibrations used and the thresholds "
            "(CPC_CALIBRATIONS, CPC_THRESHOLDS) when present."
        ),
        storageClass="StructuredDataDict",
        dimensions=("instrument", "exposure", "detector"),
        multiple=True,
    )
    outputDecision = cT.Output(
        name="cpcVerify{calibType}Decision",
        doc=(
            "Majority decision: CERTIFY (bool), N_EXPOSURES, N_DETECTORS, DETECTORS, THRESHOLD, "
            "TEST_FAILURE_LIMIT, N_FAILED_EXPOSURES, EXPOSURE_FAILURE_LIMIT, FAILED_EXPOSURES (exposure -> "
            "failing test -> count), COUNTS, REPORT, RULE, THRESHOLDS, EXPOSURES, CALIBRATIONS (the "
            "calibration datasets verified, when recorded), INSTRUMENT [, PHYSICAL_FILTER]."
        ),
        storageClass="StructuredDataDict",
        dimensions=("instrument",),
    )

    def __init__(self, *, config: CpVerifyDecisionConfig) -> None:
        super().__init__(config=config)
        dimensions = DECISION_DIMENSIONS[config.calibrationType]
        self.dimensions = set(dimensions)
        self.outputDecision = dataclasses.replace(self.outputDecision, dimensions=dimensions)
        if not config.doReadCalibrations:
            del self.inputDetStats


class CpVerifyDecisionConfig(PipelineTaskConfig, pipelineConnections=CpVerifyDecisionConnections):
    """Configuration of `CpVerifyDecisionTask`."""

    calibrationType = ChoiceField(
        dtype=str,
        doc=(
            "Calibration decided on.  Must match connections.calibType; flat makes the decision per "
            "(instrument, physical_filter)."
        ),
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
    doReadCalibrations = Field(
        dtype=bool,
        doc=(
            "Read the detector verification dictionaries for the calibrations used (needed for "
            "certification to check that the decision concerns the datasets it certifies)."
        ),
        default=True,
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


def merge_calibrations(records: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Union of the calibrations used recorded in detector dictionaries.

    Parameters
    ----------
    records
        Detector verification dictionaries; those with a
        ``CPC_CALIBRATIONS`` mapping (connection name → one dataset record
        or a list of them) contribute.

    Returns
    -------
    calibrations : `dict` [`str`, `list` [`dict`]]
        Connection name → unique dataset records (``dataset_type``, ``id``,
        ``run``, ``data_id``) sorted by data ID then id.
    """
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in records:
        for name, value in (rec.get("CPC_CALIBRATIONS") or {}).items():
            items = value if isinstance(value, list) else [value]
            for item in items:
                if item:
                    merged.setdefault(name, {})[str(item["id"])] = dict(item)
    return {
        name: sorted(by_id.values(), key=lambda r: (sorted(r.get("data_id", {}).items()), r["id"]))
        for name, by_id in sorted(merged.items())
    }


class CpVerifyDecisionTask(PipelineTask):
    """Apply the majority rule (see the module docstring) to the exposure
    verification results and write the decision with its reasons and a
    human-readable report.  A "no" is a result, not an error: the task
    succeeds and certification refuses to proceed."""

    ConfigClass = CpVerifyDecisionConfig
    _DefaultName = "cpVerifyDecision"
    config: CpVerifyDecisionConfig

    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        exp_stats = {int(ref.dataId["exposure"]): butlerQC.get(ref) for ref in inputRefs.inputExpStats}
        det_stats = []
        if self.config.doReadCalibrations:
            det_stats = [butlerQC.get(ref) for ref in inputRefs.inputDetStats]
        data_id = butlerQC.quantum.dataId
        physical_filter = (
            data_id["physical_filter"] if "physical_filter" in data_id.dimensions.names else None
        )
        outputs = self.run(
            exp_stats, det_stats, instrument=data_id["instrument"], physical_filter=physical_filter
        )
        butlerQC.put(outputs, outputRefs)

    def run(
        self,
        inputExpStats: Mapping[int, Mapping[str, Any]],
        inputDetStats: Sequence[Mapping[str, Any]] = (),
        *,
        instrument: str,
        physical_filter: str | None = None,
    ) -> Struct:
        """Decide.

        Parameters
        ----------
        inputExpStats
            Exposure id → ``verify<Type>ExpStats`` (cp_verify's shape).
        inputDetStats
            ``verify<Type>DetStats`` of the same exposures (only their
            ``CPC_CALIBRATIONS`` and ``CPC_THRESHOLDS`` are read; may be
            empty).
        instrument
            Instrument name.
        physical_filter
            Physical filter (flat decisions).

        Returns
        -------
        struct
            ``outputDecision``: `dict` (see the connection doc).
        """
        ordered = {int(e): inputExpStats[e] for e in sorted(inputExpStats, key=int)}
        try:
            decision = majority.decide_from_exposure_stats(
                ordered, threshold=self.config.threshold, calib_type=self.config.calibrationType
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CpInputError(
                f"{instrument}: the {self.config.calibrationType} exposure verification results are not in "
                f"cp_verify's shape ({err!r}); re-run the verification pipeline"
            ) from err
        calibrations = merge_calibrations(inputDetStats)
        verification_thresholds: dict[str, Any] = {}
        for rec in inputDetStats:
            if rec.get("CPC_THRESHOLDS"):
                verification_thresholds = dict(rec["CPC_THRESHOLDS"])
                break
        out = decision.to_dict()
        report = decision.report
        if not calibrations:
            report += "\n  " + NO_CALIBRATIONS_NOTE
            out["REPORT"] = report
            out["CALIBRATIONS_NOTE"] = NO_CALIBRATIONS_NOTE
        out.update(
            {
                "INSTRUMENT": str(instrument),
                "RULE": RULE_TEXT,
                "THRESHOLDS": {
                    "threshold": decision.threshold,
                    "test_failure_limit": decision.test_failure_limit,
                    "exposure_failure_limit": decision.exposure_failure_limit,
                    "verification": verification_thresholds,
                },
                "EXPOSURES": list(ordered),
                "CALIBRATIONS": calibrations,
            }
        )
        if physical_filter is not None:
            out["PHYSICAL_FILTER"] = str(physical_filter)
        log = self.log.info if decision.certify else self.log.warning
        for line in report.splitlines():
            log("%s", line)
        return Struct(outputDecision=out)
