"""Defects of one detector from one kind of combined calibration.

The same task measures a combined dark (hot pixels above a dark-current
threshold) or the combined flats of a detector (cold and bright pixels
relative to each amplifier's mean), depending on ``sourceType``.  Its output
is an intermediate table of defect boxes per detector (``cpcDefectsFrom*``);
`CpMergeDefectsTask` OR-s the sources, adds the border and writes the
``defects`` calibration in ip_isr's layout.
"""

from __future__ import annotations

__all__ = ("CpMeasureDefectsConfig", "CpMeasureDefectsConnections", "CpMeasureDefectsTask")

import dataclasses
from collections.abc import Sequence
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Table
from lsst.images import MaskedImage
from lsst.pex.config import ChoiceField, Field, ListField
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import defects as defects_algo
from ..algorithms.isr import amp_regions
from ..algorithms.masks import bits
from ..errors import CpInputError
from ..obs.camera import AmpLayout
from ..obs.instrument import get_instrument
from ..repo.files import read_dataset_file
from ..repo.products import CALIBRATION_READERS, from_masked_image
from ._memory import collect_garbage_after


class CpMeasureDefectsConnections(PipelineTaskConnections, dimensions=("instrument", "detector")):
    inputCalibs = cT.Input(
        name="dark",
        doc=(
            "Combined calibration(s) to search: the combined dark (e-/s) of the detector, or (with "
            "sourceType='flat') its combined flats, one per physical filter.  A regular input, found in "
            "the input RUN collections (e.g. the ones the generation pipelines just wrote); read from its "
            "afw Exposure FITS file (cp_pipe's or the package's)."
        ),
        storageClass="ExposureF",
        dimensions=("instrument", "detector"),
        isCalibration=True,
        multiple=True,
        deferLoad=True,
    )
    outputDefects = cT.Output(
        name="cpcDefectsFromDark",
        doc=(
            "Defects found in this source (plus its pixels without data), as a table of boxes "
            "x0, y0, width, height; detector shape in the metadata (DET_NY, DET_NX)."
        ),
        storageClass="ArrowAstropy",
        dimensions=("instrument", "detector"),
    )

    def __init__(self, *, config: CpMeasureDefectsConfig) -> None:
        super().__init__(config=config)
        if config.sourceType == "flat":
            self.inputCalibs = dataclasses.replace(
                self.inputCalibs, dimensions=("instrument", "detector", "physical_filter")
            )


class CpMeasureDefectsConfig(PipelineTaskConfig, pipelineConnections=CpMeasureDefectsConnections):
    """Configuration of `CpMeasureDefectsTask`.

    Defaults are those of the specification: hot pixels above 3 e-/s on the
    dark, cold pixels below 0.9 and bright pixels above 1.1 times the
    amplifier's clipped mean on the flat, columns with 50 or more bad pixels
    filled between their first and last bad pixel.
    """

    sourceType = ChoiceField(
        dtype=str,
        doc=(
            "Kind of combined calibration searched.  'flat' also makes the input per physical filter "
            "(all filters of the detector are searched and their defects OR-ed)."
        ),
        allowed={"dark": "combined dark (e-/s): hot pixels", "flat": "combined flat: cold and bright pixels"},
        default="dark",
    )
    darkThreshold = Field(
        dtype=float,
        doc="Absolute dark-current threshold (e-/s): dark pixels above it are hot.  None disables it.",
        default=3.0,
        optional=True,
    )
    darkNSigma = Field(
        dtype=float,
        doc="Also flag dark pixels above mean + darkNSigma * std of their amplifier (clipped). None: off.",
        default=None,
        optional=True,
    )
    flatLowRatio = Field(
        dtype=float,
        doc="Flat pixels below flatLowRatio * amplifier mean are cold.  None disables the cut.",
        default=0.9,
        optional=True,
    )
    flatHighRatio = Field(
        dtype=float,
        doc="Flat pixels above flatHighRatio * amplifier mean are bright (hot).  None disables the cut.",
        default=1.1,
        optional=True,
    )
    flatNSigmaLow = Field(
        dtype=float,
        doc="Optional sigma cut below the amplifier's clipped flat mean.",
        default=None,
        optional=True,
    )
    flatNSigmaHigh = Field(
        dtype=float,
        doc="Optional sigma cut above the amplifier's clipped flat mean.",
        default=None,
        optional=True,
    )
    clipNSigma = Field(dtype=float, doc="Clipping threshold of the per-amplifier mean and std.", default=3.0)
    clipIterations = Field(dtype=int, doc="Clipping iterations of the per-amplifier statistics.", default=3)
    columnThreshold = Field(
        dtype=int,
        doc=(
            "A column of one amplifier with at least this many bad pixels is filled between its first and "
            "last bad pixel; 0 disables the rule."
        ),
        default=50,
    )
    noDataMaskPlanes = ListField(
        dtype=str,
        doc="Input pixels with any of these mask planes (or non-finite) have no data and are defects.",
        default=["NO_DATA", "BAD"],
    )
    checkUnits = Field(
        dtype=bool,
        doc="Require the dark to be in e-/s (the threshold's unit): a dark in ADU/s is an error.",
        default=True,
    )

    def validate(self) -> None:
        super().validate()
        bits(*self.noDataMaskPlanes)
        if self.clipNSigma <= 0 or self.clipIterations < 0 or self.columnThreshold < 0:
            raise ValueError("clipNSigma must be > 0, clipIterations and columnThreshold >= 0")
        if self.sourceType == "dark" and self.darkThreshold is None and self.darkNSigma is None:
            raise ValueError("a dark source needs darkThreshold and/or darkNSigma")
        flat_cuts = (self.flatLowRatio, self.flatHighRatio, self.flatNSigmaLow, self.flatNSigmaHigh)
        if self.sourceType == "flat" and all(v is None for v in flat_cuts):
            raise ValueError("a flat source needs at least one of the flat cuts")

    def defect_config(self) -> defects_algo.DefectConfig:
        """The `~lsst.cpcombined.algorithms.defects.DefectConfig` of this
        source (no border: the merge step adds it)."""
        return defects_algo.DefectConfig(
            dark_threshold=self.darkThreshold,
            dark_nsigma=self.darkNSigma,
            flat_low_ratio=self.flatLowRatio,
            flat_high_ratio=self.flatHighRatio,
            flat_nsigma_low=self.flatNSigmaLow,
            flat_nsigma_high=self.flatNSigmaHigh,
            clip_nsigma=self.clipNSigma,
            clip_iterations=self.clipIterations,
            column_threshold=self.columnThreshold or None,
            border=0,
            no_data_bits=bits(*self.noDataMaskPlanes),
        )


class CpMeasureDefectsTask(PipelineTask):
    """Find the defects of one detector in its combined dark or flat(s).

    Per amplifier: hot pixels of the dark (``darkThreshold`` e-/s, optional
    sigma cut), or cold/bright pixels of each flat relative to the
    amplifier's clipped mean; the column rule per source; pixels without
    data are defects too.  Several flats (filters) are OR-ed.  The border is
    not added here (see `CpMergeDefectsTask`).
    """

    ConfigClass = CpMeasureDefectsConfig
    _DefaultName = "cpMeasureDefects"
    config: CpMeasureDefectsConfig

    @collect_garbage_after
    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        handles = butlerQC.get(inputRefs.inputCalibs)
        data_id = butlerQC.quantum.dataId
        refs = [getattr(ref, "datasetRef", ref) for ref in inputRefs.inputCalibs]
        filters = [ref.dataId.get("physical_filter") for ref in refs]
        reader = CALIBRATION_READERS[self.config.sourceType]
        outputs = self.run(
            [read_dataset_file(h, reader) for h in handles],
            instrument=data_id["instrument"],
            detector=data_id["detector"],
            physical_filters=filters,
        )
        butlerQC.put(outputs, outputRefs)

    def run(
        self,
        inputCalibs: Sequence[MaskedImage],
        *,
        instrument: str,
        detector: int,
        physical_filters: Sequence[str | None] | None = None,
    ) -> Struct:
        """Find the defects of one detector.

        Parameters
        ----------
        inputCalibs
            The combined dark (one), or the combined flats (one per filter).
        instrument, detector
            Data ID values.
        physical_filters
            Physical filter of each input (flats; for metadata and logs).

        Returns
        -------
        struct
            ``outputDefects``: `astropy.table.Table` of boxes
            ``x0, y0, width, height`` (int32) with the detector shape
            (``DET_NY``, ``DET_NX``) and per-source pixel counts in its
            metadata.

        Raises
        ------
        CpInputError
            No input, inputs of different shapes, or a dark not in e-/s.
        """
        cfg = self.config
        det = get_instrument(instrument).camera_description[detector]
        source = cfg.sourceType
        if not inputCalibs:
            raise CpInputError(f"no combined {source} for detector {det.name}: nothing to search for defects")
        filters = list(physical_filters) if physical_filters is not None else [None] * len(inputCalibs)
        if source == "dark" and len(inputCalibs) > 1:
            raise CpInputError(f"{len(inputCalibs)} combined darks for detector {det.name}; expected one")
        shape: tuple[int, int] | None = None
        found: np.ndarray | None = None
        stat_total = np.zeros(0, dtype=bool)
        nodata_total = np.zeros(0, dtype=bool)
        md: dict[str, Any] = {
            "INSTRUME": instrument,
            "DETECTOR": int(detector),
            "DET_NAME": det.name,
            "CPC_SOURCE": source,
        }
        for k, (calib, flt) in enumerate(zip(inputCalibs, filters, strict=True)):
            image, _, mask = from_masked_image(calib)
            this_shape = (int(image.shape[0]), int(image.shape[1]))
            if shape is None:
                shape = this_shape
                found = np.zeros(shape, dtype=bool)
                stat_total = np.zeros(shape, dtype=bool)
                nodata_total = np.zeros(shape, dtype=bool)
            elif this_shape != shape:
                raise CpInputError(
                    f"combined {source}s of detector {det.name} have different shapes: "
                    f"{this_shape} and {shape}"
                )
            if source == "dark" and cfg.checkUnits:
                unit = calib.image.unit
                if unit is None or not u.Unit(unit).is_equivalent(u.electron / u.s):
                    raise CpInputError(
                        f"the combined dark of {det.name} is in {unit}, not e-/s: the hot-pixel threshold "
                        f"of {cfg.darkThreshold} e-/s does not apply (set checkUnits=False to override)"
                    )
            regions = list(amp_regions(AmpLayout.from_detector_shape(this_shape)).values())
            result = defects_algo.find_defects(
                regions,
                dark=image if source == "dark" else None,
                flat=image if source == "flat" else None,
                dark_mask=mask if source == "dark" else None,
                flat_mask=mask if source == "flat" else None,
                config=cfg.defect_config(),
            )
            stat = result.dark if source == "dark" else result.flat
            assert stat is not None and found is not None
            stat_total |= stat
            nodata_total |= result.no_data
            found |= result.mask
            label = flt or "-"
            md[f"CPC_INPUT_FILTER_{k}"] = label
            md[f"CPC_INPUT_N_DEFECT_{k}"] = int(stat.sum())
            md[f"CPC_INPUT_N_NO_DATA_{k}"] = int(result.no_data.sum())
            self.log.info(
                "Detector %s, %s%s: %d defect pixels (%d without data).",
                det.name,
                source,
                f" ({flt})" if flt else "",
                int(stat.sum()),
                int(result.no_data.sum()),
            )
        assert shape is not None and found is not None
        table = defects_algo.mask_to_table(found)
        md.update(
            CPC_NINPUTS=len(inputCalibs),
            CPC_N_DEFECT_PIXELS=int(stat_total.sum()),
            CPC_N_NO_DATA_PIXELS=int(nodata_total.sum()),
            CPC_N_PIXELS=int(found.sum()),
            CPC_N_BOXES=len(table),
            CPC_DARK_THRESHOLD=cfg.darkThreshold,
            CPC_DARK_NSIGMA=cfg.darkNSigma,
            CPC_FLAT_LOW_RATIO=cfg.flatLowRatio,
            CPC_FLAT_HIGH_RATIO=cfg.flatHighRatio,
            CPC_COLUMN_THRESHOLD=cfg.columnThreshold,
        )
        table.meta.update(md)
        return Struct(outputDefects=table)


def read_defect_table(handle: Any) -> Table:
    """Read a stored defect table *with* its metadata.

    The butler strips astropy table metadata from ``ArrowAstropy`` datasets
    unless asked not to; the detector shape (``DET_NY``, ``DET_NX``) lives
    there.

    Parameters
    ----------
    handle
        Deferred dataset handle (or anything with ``get(parameters=...)``).
    """
    return handle.get(parameters={"strip_astropy_meta_yaml": False})
