"""Per-exposure merge of the detector verification results."""

from __future__ import annotations

__all__ = (
    "CpVerifyExposureConfig",
    "CpVerifyExposureConnections",
    "CpVerifyExposureTask",
    "merge_calibrations",
)

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lsst.pex.config import ChoiceField, Field
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import verify as verify_algo
from ..errors import CpInputError


class CpVerifyExposureConnections(
    PipelineTaskConnections,
    dimensions=("instrument", "exposure"),
    defaultTemplates={"calibType": "Bias"},
):
    inputStats = cT.Input(
        name="verify{calibType}DetStats",
        doc="Detector verification results of this exposure.",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "exposure", "detector"),
        multiple=True,
    )
    outputStats = cT.Output(
        name="verify{calibType}ExpStats",
        doc=(
            "Exposure verification results: per-detector summary, exposure statistics and tests, SUCCESS "
            "and FAILURES (lsst.cpcombined.algorithms.verify.verify_exposure), calibrations used, thresholds."
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


def merge_calibrations(records: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Union of the ``CALIBRATIONS`` of several verification results.

    Parameters
    ----------
    records
        Dictionaries each with an optional ``CALIBRATIONS`` mapping: either
        connection name → one dataset record (detector level) or connection
        name → list of records (exposure and run levels).

    Returns
    -------
    calibrations : `dict` [`str`, `list` [`dict`]]
        Connection name → unique dataset records (``dataset_type``, ``id``,
        ``run``, ``data_id``) sorted by data ID then id.
    """
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in records:
        for name, value in (rec.get("CALIBRATIONS") or {}).items():
            items = value if isinstance(value, list) else [value]
            for item in items:
                if item:
                    merged.setdefault(name, {})[str(item["id"])] = dict(item)
    return {
        name: sorted(by_id.values(), key=lambda r: (sorted(r.get("data_id", {}).items()), r["id"]))
        for name, by_id in sorted(merged.items())
    }


class CpVerifyExposureTask(PipelineTask):
    """Merge the detector results of one exposure and run the exposure tests
    (flat: normalised scatter of the detector means)."""

    ConfigClass = CpVerifyExposureConfig
    _DefaultName = "cpVerifyExposure"
    config: CpVerifyExposureConfig

    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        outputs = self.run(**inputs, instrument=data_id["instrument"], exposure=data_id["exposure"])
        butlerQC.put(outputs, outputRefs)

    def run(self, inputStats: Sequence[Mapping[str, Any]], *, instrument: str, exposure: int) -> Struct:
        """Merge the detector results.

        Parameters
        ----------
        inputStats
            ``verify<Type>DetStats`` of this exposure's detectors.
        instrument, exposure
            Data ID values.

        Returns
        -------
        struct
            ``outputStats``: the exposure results (`dict`).
        """
        if not inputStats:
            raise CpInputError(f"exposure {exposure}: no detector verification results")
        stats = sorted(inputStats, key=lambda r: str(r["DETECTOR"]))
        fields = {f.name for f in dataclasses.fields(verify_algo.VerifyThresholds)}
        known = {k: v for k, v in dict(stats[0].get("THRESHOLDS") or {}).items() if k in fields}
        known["exposure_scatter"] = self.config.exposureScatterThreshold
        thresholds = verify_algo.VerifyThresholds(**known)
        result = verify_algo.verify_exposure(
            self.config.calibrationType, stats, exposure=int(exposure), thresholds=thresholds
        )
        first = stats[0]
        result.update(
            {
                "INSTRUMENT": str(instrument),
                "OBSID": first.get("OBSID", ""),
                "DATE": first.get("DATE", ""),
                "EXPTIME": first.get("EXPTIME"),
                "CALIBRATIONS": merge_calibrations(stats),
                "THRESHOLDS": dataclasses.asdict(thresholds),
            }
        )
        if result["FAILURES"]:
            self.log.info(
                "Exposure %s: %d %s verification failure(s).",
                exposure,
                len(result["FAILURES"]),
                self.config.calibrationType,
            )
        return Struct(outputStats=result)
