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

cp_verify's ISR step (ip_isr's ``IsrTaskLSST``, ``doHeaderProvenance``,
on by default) records the calibrations it used in the header of each
processed exposure it writes (``verify<Type>IsrExp``): ``LSST CALIB UUID
<NAME>`` (dataset id) and ``LSST CALIB RUN <NAME>`` for each calibration
input ``<name>``.  With ``doReadIsrProvenance`` the task reads these
headers (the primary header of each file, through the dataset's URI, no
afw) and lists the ``bias``, ``dark``, ``flat`` and ``defects`` found there
as the calibrations verified, so that certification checks a decision made
on cp_verify's outputs against the datasets it certifies just as it checks
one made on this package's.  The ``decide<Type>`` pipelines (the majority
decision on cp_verify's outputs) switch it on and ``doReadCalibrations``
off; this package's own verification writes no processed exposure and
leaves it off.

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
    "ISR_PROVENANCE_CALIBRATIONS",
    "NO_CALIBRATIONS_NOTE",
    "RULE_TEXT",
    "CpVerifyDecisionConfig",
    "CpVerifyDecisionConnections",
    "CpVerifyDecisionTask",
    "calibrations_from_isr_header",
    "merge_calibrations",
    "read_primary_header_of",
    "unusable_amplifiers",
)

import dataclasses
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import astropy.io.fits as fits
import numpy as np
from lsst.pex.config import ChoiceField, Field
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import majority
from ..errors import CpInputError
from ..obs.raw import read_primary_header
from ..repo.files import read_dataset_file

#: First read of a processed exposure's primary header (FITS blocks); doubled until its END card.
_HEADER_READ_BYTES = 2880 * 8

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
    "The verification results read do not record the calibrations used (cp_verify's detector results "
    "never do; its processed exposures do unless the ISR ran without header provenance; or "
    "doReadCalibrations and doReadIsrProvenance are both off): certification cannot check that this "
    "decision concerns the datasets it certifies."
)

#: Calibrations taken from the ISR provenance headers (the ones the decision can concern).
ISR_PROVENANCE_CALIBRATIONS: tuple[str, ...] = ("bias", "dark", "flat", "defects")

#: Data ID dimensions of each calibration in `ISR_PROVENANCE_CALIBRATIONS`.
_CALIBRATION_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "bias": ("instrument", "detector"),
    "dark": ("instrument", "detector"),
    "flat": ("instrument", "detector", "physical_filter"),
    "defects": ("instrument", "detector"),
}

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
    inputIsrExposures = cT.Input(
        name="verify{calibType}IsrExp",
        doc=(
            "Processed exposures of cp_verify's ISR step (only their primary header is read: the "
            "calibrations used, LSST CALIB UUID/RUN <NAME>); used when doReadIsrProvenance is set."
        ),
        storageClass="Exposure",
        dimensions=("instrument", "exposure", "detector"),
        multiple=True,
        deferLoad=True,
    )
    outputDecision = cT.Output(
        name="cpcVerify{calibType}Decision",
        doc=(
            "Majority decision: CERTIFY (bool), N_EXPOSURES, N_DETECTORS, DETECTORS, THRESHOLD, "
            "TEST_FAILURE_LIMIT, N_FAILED_EXPOSURES, EXPOSURE_FAILURE_LIMIT, FAILED_EXPOSURES (exposure -> "
            "failing test -> count), COUNTS, REPORT, RULE, THRESHOLDS, EXPOSURES, CALIBRATIONS (the "
            "calibration datasets verified, when recorded), CALIBRATIONS_SOURCE (where they were read), "
            "INSTRUMENT [, PHYSICAL_FILTER]."
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
        if not config.doReadIsrProvenance:
            del self.inputIsrExposures


def unusable_amplifiers(
    det_stats: Sequence[Mapping[str, Any]], calib_type: str, min_fraction: float
) -> list[str]:
    """Amplifiers of the calibration under test that have (almost) no
    usable pixel, from our detector results (``CPC_AMP`` ...
    ``CALIB_BAD_FRACTION``), one message per (detector, amplifier).

    Parameters
    ----------
    det_stats
        ``verify<Type>DetStats`` dictionaries (cp_verify's have no
        ``CPC_AMP``: nothing is found).
    calib_type
        Calibration type (for the message).
    min_fraction
        Smallest unusable fraction reported.
    """
    worst: dict[tuple[str, str], float] = {}
    for rec in det_stats:
        detector = str((rec.get("CPC_IDENTITY") or {}).get("DETECTOR", "?"))
        for amp, values in (rec.get("CPC_AMP") or {}).items():
            fraction = values.get("CALIB_BAD_FRACTION")
            if fraction is not None and float(fraction) >= min_fraction:
                worst[(detector, amp)] = max(worst.get((detector, amp), 0.0), float(fraction))
    return [
        f"{detector} {amp}: {100 * fraction:.0f}% of the {calib_type} under test is unusable (masked BAD); "
        "the amplifier gives no calibrated data"
        for (detector, amp), fraction in sorted(worst.items())
    ]


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
    unusableAmpFraction = Field(
        dtype=float,
        doc=(
            "An amplifier of the calibration under test with at least this fraction of unusable (BAD or "
            "NO_DATA) pixels is named in the decision's WARNINGS and report (it does not change the "
            "decision: the amplifier is masked in the product, so ISR masks it)."
        ),
        default=0.99,
    )
    doReadCalibrations = Field(
        dtype=bool,
        doc=(
            "Read the detector verification dictionaries for the calibrations used (needed for "
            "certification to check that the decision concerns the datasets it certifies)."
        ),
        default=True,
    )
    doReadIsrProvenance = Field(
        dtype=bool,
        doc=(
            "Read the calibrations used from the headers of the verification's processed exposures "
            "(verify<Type>IsrExp, written by cp_verify's ISR with LSST CALIB UUID/RUN <NAME> cards), for "
            "decisions on cp_verify's outputs; this package's verification writes no such exposure."
        ),
        default=False,
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


def merge_calibrations(
    records: Iterable[Mapping[str, Any]], *, more: Iterable[Mapping[str, Any]] = ()
) -> dict[str, list[dict[str, Any]]]:
    """Union of the calibrations used recorded in detector dictionaries
    (and found elsewhere).

    Parameters
    ----------
    records
        Detector verification dictionaries; those with a
        ``CPC_CALIBRATIONS`` mapping (connection name → one dataset record
        or a list of them) contribute.
    more
        More mappings of the ``CPC_CALIBRATIONS`` form (e.g. from
        `calibrations_from_isr_header`).

    Returns
    -------
    calibrations : `dict` [`str`, `list` [`dict`]]
        Connection name → unique dataset records (``dataset_type``, ``id``,
        ``run``, ``data_id``) sorted by data ID then id.
    """
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    sources = [rec.get("CPC_CALIBRATIONS") or {} for rec in records] + [dict(m) for m in more]
    for source in sources:
        for name, value in source.items():
            items = value if isinstance(value, list) else [value]
            for item in items:
                if item:
                    merged.setdefault(name, {})[str(item["id"])] = dict(item)
    return {
        name: sorted(by_id.values(), key=lambda r: (sorted(r.get("data_id", {}).items()), r["id"]))
        for name, by_id in sorted(merged.items())
    }


def calibrations_from_isr_header(
    header: Mapping[str, Any], data_id: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The calibrations an ISR step recorded in a processed exposure's
    header (ip_isr's header provenance).

    Parameters
    ----------
    header
        Primary header of the processed exposure (keys without
        ``HIERARCH``).
    data_id
        Data ID of the processed exposure (``instrument``, ``detector``
        and, when known, ``physical_filter``).

    Returns
    -------
    calibrations : `dict` [`str`, `dict`]
        For each of `ISR_PROVENANCE_CALIBRATIONS` with an ``LSST CALIB UUID
        <NAME>`` card: ``dataset_type`` (the ISR input's name, which is the
        dataset type in cp_verify's pipelines), ``id``, ``run`` (``LSST
        CALIB RUN <NAME>``) and ``data_id`` (the calibration's dimensions
        taken from ``data_id``).

    Raises
    ------
    ValueError
        A ``LSST CALIB UUID`` card that is not a dataset id.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in ISR_PROVENANCE_CALIBRATIONS:
        value = header.get(f"LSST CALIB UUID {name.upper()}")
        if value is None or str(value).strip() == "":
            continue
        try:
            dataset_id = str(uuid.UUID(str(value).strip()))
        except ValueError:
            raise ValueError(f"LSST CALIB UUID {name.upper()} = {value!r} is not a dataset id") from None
        run = header.get(f"LSST CALIB RUN {name.upper()}")
        out[name] = {
            "dataset_type": name,
            "id": dataset_id,
            "run": None if run is None else str(run),
            "data_id": {
                k: (data_id[k] if isinstance(data_id[k], (int, str)) else str(data_id[k]))
                for k in _CALIBRATION_DIMENSIONS[name]
                if data_id.get(k) is not None
            },
        }
    return out


def read_primary_header_of(uri: Any) -> dict[str, Any] | None:
    """The primary header of a FITS file, reading only its first bytes.

    Parameters
    ----------
    uri
        A `lsst.resources.ResourcePath` (ranged reads for remote stores).

    Returns
    -------
    header : `dict` or `None`
        Keyword → value (``HIERARCH`` dropped from the keywords, undefined
        values as `None`); `None` when the file does not start with a FITS
        primary header (e.g. a whole-file compressed FITS file).
    """
    size = _HEADER_READ_BYTES
    while True:
        data = uri.read(size=size)
        if not data.startswith(b"SIMPLE  "):
            return None
        for start in range(0, len(data) - 79, 80):
            if data[start : start + 8] == b"END     ":
                header = fits.Header.fromstring(data[: start + 80].decode("ascii", errors="replace"))
                out: dict[str, Any] = {}
                for card in header.cards:
                    if card.keyword and card.keyword not in ("COMMENT", "HISTORY"):
                        value = card.value
                        if isinstance(value, fits.card.Undefined):
                            value = None
                        elif isinstance(value, np.bool_):
                            value = bool(value)
                        out[card.keyword] = value
                return out
        if len(data) < size:
            return None
        size *= 2


def _read_isr_header(handle: Any) -> dict[str, Any]:
    """Primary header of a processed exposure: its first bytes only, or
    (files that do not start with a plain FITS header) the whole file."""
    header = read_primary_header_of(handle.butler.getURI(handle.ref))
    if header is None:
        header = read_dataset_file(handle, read_primary_header)
    return header


def _isr_data_id(ref: Any) -> dict[str, Any]:
    """Instrument, detector and (when the data ID has it) physical filter of
    a processed exposure's dataset ref."""
    data_id = ref.dataId
    out = {k: data_id[k] for k in ("instrument", "detector")}
    try:
        out["physical_filter"] = data_id["physical_filter"]
    except (KeyError, LookupError):
        pass
    return out


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
        isr_calibrations = None
        if self.config.doReadIsrProvenance:
            isr_calibrations = []
            for handle in butlerQC.get(inputRefs.inputIsrExposures):
                header = _read_isr_header(handle)
                try:
                    isr_calibrations.append(calibrations_from_isr_header(header, _isr_data_id(handle.ref)))
                except ValueError as err:
                    raise CpInputError(
                        f"{handle.ref.datasetType.name} {dict(handle.ref.dataId.required)}: {err}; the ISR "
                        "provenance header is damaged: re-run the verification"
                    ) from None
        data_id = butlerQC.quantum.dataId
        physical_filter = (
            data_id["physical_filter"] if "physical_filter" in data_id.dimensions.names else None
        )
        outputs = self.run(
            exp_stats,
            det_stats,
            instrument=data_id["instrument"],
            physical_filter=physical_filter,
            isrCalibrations=isr_calibrations,
        )
        butlerQC.put(outputs, outputRefs)

    def run(
        self,
        inputExpStats: Mapping[int, Mapping[str, Any]],
        inputDetStats: Sequence[Mapping[str, Any]] = (),
        *,
        instrument: str,
        physical_filter: str | None = None,
        isrCalibrations: Sequence[Mapping[str, Any]] | None = None,
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
        isrCalibrations
            Calibrations read from the processed exposures' ISR provenance
            headers, one `calibrations_from_isr_header` mapping per
            exposure and detector (`None`: not read).

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
        calibrations = merge_calibrations(inputDetStats, more=isrCalibrations or ())
        sources = []
        if any(rec.get("CPC_CALIBRATIONS") for rec in inputDetStats):
            sources.append("detector verification results (CPC_CALIBRATIONS)")
        if any(isrCalibrations or ()):
            sources.append(f"ISR provenance headers (verify{self.config.connections.calibType}IsrExp)")
        verification_thresholds: dict[str, Any] = {}
        for rec in inputDetStats:
            if rec.get("CPC_THRESHOLDS"):
                verification_thresholds = dict(rec["CPC_THRESHOLDS"])
                break
        out = decision.to_dict()
        report = decision.report
        warnings = unusable_amplifiers(
            inputDetStats, self.config.calibrationType, self.config.unusableAmpFraction
        )
        if warnings:
            report += "".join(f"\n  WARNING: {w}" for w in warnings)
            out["REPORT"] = report
        out["WARNINGS"] = warnings
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
                "CALIBRATIONS_SOURCE": sources,
            }
        )
        if physical_filter is not None:
            out["PHYSICAL_FILTER"] = str(physical_filter)
        log = self.log.info if decision.certify else self.log.warning
        for line in report.splitlines():
            log("%s", line)
        return Struct(outputDecision=out)
