"""Focal-plane normalisation of a sequence of flats."""

from __future__ import annotations

__all__ = ("CpFlatNormalizeConfig", "CpFlatNormalizeConnections", "CpFlatNormalizeTask")

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from lsst.pex.config import Field
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms.normalization import build_level_matrix, solve_focal_plane_normalization
from ..errors import CpInputError


class CpFlatNormalizeConnections(PipelineTaskConnections, dimensions=("instrument", "physical_filter")):
    inputStats = cT.Input(
        name="cpcFlatStatistics",
        doc="Per-(exposure, detector) flat levels of the flats of one physical filter.",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "exposure", "detector"),
        multiple=True,
    )
    outputScales = cT.Output(
        name="cpcFlatNormScales",
        doc=(
            "Per-exposure scale E and per-detector response G of B = E·G for one physical filter: "
            "{physical_filter, exposure_scales: {exposure: E}, detector_response: {detector: G}, rms, "
            "n_rejected, excluded: {exposure: reason}}."
        ),
        storageClass="StructuredDataDict",
        dimensions=("instrument", "physical_filter"),
    )


class CpFlatNormalizeConfig(PipelineTaskConfig, pipelineConnections=CpFlatNormalizeConnections):
    """Configuration of `CpFlatNormalizeTask`."""

    maxSaturatedFraction = Field(
        dtype=float,
        doc="Exposures with more SAT pixels than this fraction (on any detector) are left out (logged).",
        default=0.01,
    )
    rejectSigma = Field(
        dtype=float,
        doc="Outlier rejection of (detector, exposure) levels in the fit; 0 disables.",
        default=5.0,
    )


class CpFlatNormalizeTask(PipelineTask):
    """Solve B[det, exp] = E[exp]·G[det] in log space.

    Each flat is later divided by E only, so the detector-to-detector
    response G survives in the combined flats.  With one detector (LATISS)
    this reduces to dividing each flat by its own clipped mean.  One quantum
    per (instrument, physical_filter), as cp_pipe's normalisation.
    """

    ConfigClass = CpFlatNormalizeConfig
    _DefaultName = "cpFlatNormalize"
    config: CpFlatNormalizeConfig

    def run(self, inputStats: Sequence[Mapping[str, Any]]) -> Struct:
        """Return ``outputScales``: a plain dict (see the connection doc).

        One quantum per physical filter: the flats of one filter are
        normalised together (each filter gets its own combined flat).

        Raises
        ------
        CpInputError
            No statistics, statistics of flats in different filters (the
            inputs of one quantum share one), every flat saturated.
        """
        if not inputStats:
            raise CpInputError("no flat statistics to normalise")
        filters: dict[int, str | None] = {}
        for s in inputStats:
            filters[int(s["exposure"])] = s.get("physical_filter")
        distinct = sorted({f for f in filters.values() if f is not None})
        if len(distinct) > 1:
            counts = {f: sum(1 for v in filters.values() if v == f) for f in distinct}
            main = max(counts, key=counts.get)
            odd = sorted(e for e, f in filters.items() if f != main)
            raise CpInputError(
                f"flats with mismatched filters in one normalisation: {len(odd)} exposure(s) "
                + ", ".join(f"{e} ({filters[e]})" for e in odd)
                + f" differ from the {counts[main]} flats in {main}"
            )
        excluded: dict[str, str] = {}
        for s in inputStats:
            if s["sat_fraction"] > self.config.maxSaturatedFraction:
                reason = f"{100 * s['sat_fraction']:.1f}% saturated on detector {s['detector']}"
                if str(s["exposure"]) not in excluded:
                    self.log.warning(
                        "Leaving flat %s (%s) out of the normalisation: %s.",
                        s["exposure"],
                        s.get("obsid"),
                        reason,
                    )
                excluded[str(s["exposure"])] = reason
        levels = {
            (int(s["detector"]), int(s["exposure"])): float(s["mean"])
            for s in inputStats
            if str(s["exposure"]) not in excluded
        }
        if not levels:
            raise CpInputError("every flat is saturated: nothing to normalise")
        matrix, dets, exps = build_level_matrix(levels)
        solution = solve_focal_plane_normalization(matrix, reject_sigma=self.config.rejectSigma or None)
        self.log.info(
            "Normalised %d flats over %d detectors (log-residual rms %.2g).",
            len(exps),
            len(dets),
            solution.rms,
        )
        scales = {str(e): float(v) for e, v in zip(exps, solution.exposure_scale, strict=False)}
        for e in excluded:
            scales[e] = float("nan")
        result = {
            "physical_filter": distinct[0] if len(distinct) == 1 else None,
            "exposure_scales": scales,
            "detector_response": {
                str(d): float(v) for d, v in zip(dets, solution.detector_response, strict=False)
            },
            "rms": float(solution.rms),
            "n_rejected": int(np.count_nonzero(solution.rejected)),
            "excluded": excluded,
        }
        return Struct(outputScales=result)
