"""Merge the defects of each source into the ``defects`` calibration."""

from __future__ import annotations

__all__ = ("CpMergeDefectsConfig", "CpMergeDefectsConnections", "CpMergeDefectsTask")

from collections.abc import Mapping
from typing import Any

import numpy as np
from astropy.table import Table
from lsst.pex.config import Field
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import defects as defects_algo
from ..errors import CpInputError
from ..obs.instrument import get_instrument
from ..repo.calib_tables import DEFECTS_CALIBCLS, calib_identity, defects_table
from .measure_defects import read_defect_table


class CpMergeDefectsConnections(PipelineTaskConnections, dimensions=("instrument", "detector")):
    darkDefects = cT.Input(
        name="cpcDefectsFromDark",
        doc="Defects found on the combined dark (boxes; detector shape in the metadata).",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "detector"),
        deferLoad=True,
    )
    flatDefects = cT.Input(
        name="cpcDefectsFromFlat",
        doc="Defects found on the combined flat(s) (boxes; detector shape in the metadata).",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "detector"),
        deferLoad=True,
    )
    defects = cT.Output(
        name="defects",
        doc=(
            "Defects of the detector: OR of the sources, the border and the pixels without data, in "
            "ip_isr's defects layout (columns x0, y0, width, height, int64, 0-based assembled-detector "
            "pixels; lsst.cpcombined.repo.calib_tables).  The detector shape is in the metadata (DET_NY, "
            "DET_NX)."
        ),
        storageClass="Defects",
        dimensions=("instrument", "detector"),
        isCalibration=True,
    )

    def __init__(self, *, config: CpMergeDefectsConfig) -> None:
        super().__init__(config=config)
        if not config.useDark:
            del self.darkDefects
        if not config.useFlat:
            del self.flatDefects


class CpMergeDefectsConfig(PipelineTaskConfig, pipelineConnections=CpMergeDefectsConnections):
    """Configuration of `CpMergeDefectsTask`."""

    useDark = Field(dtype=bool, doc="Merge the defects found on the combined dark.", default=True)
    useFlat = Field(dtype=bool, doc="Merge the defects found on the combined flat(s).", default=True)
    borderWidth = Field(
        dtype=int,
        doc="Width (pixels) of the defect border along each detector edge; 0 disables it.",
        default=5,
    )

    def validate(self) -> None:
        super().validate()
        if not (self.useDark or self.useFlat):
            raise ValueError("at least one of useDark, useFlat must be set")
        if self.borderWidth < 0:
            raise ValueError("borderWidth must be >= 0")


class CpMergeDefectsTask(PipelineTask):
    """OR the defect masks of every source, add the border, and write one
    ``defects`` table of boxes per detector.

    The pixels without data in a source are already part of its table
    (`CpMeasureDefectsTask`).
    """

    ConfigClass = CpMergeDefectsConfig
    _DefaultName = "cpMergeDefects"
    config: CpMergeDefectsConfig

    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        handles = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        sources = {}
        for name, key in (("darkDefects", "dark"), ("flatDefects", "flat")):
            if name in handles:
                sources[key] = read_defect_table(handles[name])
        outputs = self.run(sources, instrument=data_id["instrument"], detector=data_id["detector"])
        butlerQC.put(outputs, outputRefs)

    def run(self, sources: Mapping[str, Table], *, instrument: str, detector: int) -> Struct:
        """Merge per-source defect tables.

        Parameters
        ----------
        sources
            ``{source name: defect table}``; each table must carry the
            detector shape (``DET_NY``, ``DET_NX``) in its metadata.
        instrument, detector
            Data ID values.

        Returns
        -------
        struct
            ``defects``: `astropy.table.Table` in ip_isr's defects layout
            (int64 boxes; ip_isr's identity keys, the detector shape and
            per-source pixel counts in its metadata).
        """
        det = get_instrument(instrument).camera_description[detector]
        if not sources:
            raise CpInputError(f"no defect source for detector {det.name}")
        shape: tuple[int, int] | None = None
        for name, table in sources.items():
            try:
                this = (int(table.meta["DET_NY"]), int(table.meta["DET_NX"]))
            except KeyError:
                raise CpInputError(
                    f"the {name} defects of {det.name} do not record the detector shape (DET_NY/DET_NX)"
                ) from None
            if shape is not None and this != shape:
                raise CpInputError(
                    f"defect sources of {det.name} disagree on the detector shape: {this} vs {shape}"
                )
            shape = this
        assert shape is not None
        merged = np.zeros(shape, dtype=bool)
        md: dict[str, Any] = calib_identity(
            "defects",
            schema="",
            version=2.0,
            calibcls=DEFECTS_CALIBCLS,
            instrument=instrument,
            detector=detector,
            detector_name=det.name,
            detector_serial=det.serial,
        )
        md.update(DET_NY=shape[0], DET_NX=shape[1])
        for name, table in sources.items():
            m = defects_algo.table_to_mask(table, shape)
            merged |= m
            md[f"CPC_N_PIXELS_{name.upper()}"] = int(m.sum())
            for key in ("CPC_N_DEFECT_PIXELS", "CPC_N_NO_DATA_PIXELS"):
                if key in table.meta:
                    md[f"{key}_{name.upper()}"] = table.meta[key]
        border = defects_algo.border_mask(shape, self.config.borderWidth)
        merged |= border
        boxes = defects_algo.mask_to_table(merged)
        md.update(
            CPC_SOURCES=",".join(sources),
            CPC_BORDER=self.config.borderWidth,
            CPC_N_PIXELS_BORDER=int(border.sum()),
            CPC_N_PIXELS=int(merged.sum()),
            CPC_N_BOXES=len(boxes),
            CPC_DEFECT_FRACTION=float(merged.mean()),
        )
        out = defects_table(boxes, md)
        self.log.info(
            "Defects of %s: %d pixels (%.3f%%) in %d boxes from %s plus a %d-px border.",
            det.name,
            int(merged.sum()),
            100 * float(merged.mean()),
            len(out),
            "+".join(sources),
            self.config.borderWidth,
        )
        return Struct(defects=out)
