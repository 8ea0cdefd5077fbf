"""Instrument signature removal for calibration building and verification."""

from __future__ import annotations

__all__ = (
    "CALIBRATION_FLAGS",
    "CAMERA_KEYS",
    "CpCalibrationConnections",
    "CpIsrConfig",
    "CpIsrConnections",
    "CpIsrTask",
)

import math
from typing import Any

import astropy.units as u
import numpy as np
from lsst.images import MaskedImage
from lsst.pex.config import ChoiceField, Field, ListField
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import cosmic_rays
from ..algorithms import defects as defects_algo
from ..algorithms.isr import CalibFrame, amp_regions, run_calib_isr
from ..errors import CpInputError
from ..obs.instrument import get_instrument
from ..obs.raw import RawImage, read_raw_file
from ..repo.files import read_dataset_file
from ..repo.products import from_masked_image, get_inputs_caching_calibrations, to_masked_image
from ._memory import collect_garbage_after

#: Camera keys of the raw copied to the processed exposure so that combined
#: calibrations can carry them (the Science Pipelines' ISR compares them
#: between a calibration and the exposure it corrects).
CAMERA_KEYS = ("SEQNAME", "SEQFILE", "SEQCKSUM", "ODP", "AP0_RC", "TEMP_SET")

#: Calibration connections an ISR may use, with the `CpIsrConfig` flag that applies each.
CALIBRATION_FLAGS = {"bias": "doBias", "dark": "doDark", "flat": "doFlat", "defects": "doDefects"}


class CpCalibrationConnections(PipelineTaskConnections, dimensions=("instrument", "exposure", "detector")):
    """Calibrations an ISR may apply, found by validity date (or in a RUN
    collection given as input).  Tasks that run `CpIsrTask` (directly or as
    a subtask) inherit these and drop the ones their ISR does not use with
    `remove_unused_calibrations`.

    They are the Science Pipelines' dataset types (storage classes
    ``ExposureF`` and ``Defects``), deferred: tasks read their files with
    `lsst.cpcombined.repo.products.get_inputs_caching_calibrations` (the same
    readers for cp_pipe's files and the package's).
    """

    bias = cT.PrerequisiteInput(
        name="bias",
        doc="Combined bias (electrons; afw Exposure FITS).",
        storageClass="ExposureF",
        dimensions=("instrument", "detector"),
        isCalibration=True,
        deferLoad=True,
    )
    dark = cT.PrerequisiteInput(
        name="dark",
        doc="Combined dark (electrons per second of dark time; afw Exposure FITS).",
        storageClass="ExposureF",
        dimensions=("instrument", "detector"),
        isCalibration=True,
        deferLoad=True,
    )
    flat = cT.PrerequisiteInput(
        name="flat",
        doc="Combined flat (dimensionless; afw Exposure FITS).",
        storageClass="ExposureF",
        dimensions=("instrument", "detector", "physical_filter"),
        isCalibration=True,
        deferLoad=True,
    )
    defects = cT.PrerequisiteInput(
        name="defects",
        doc="Defects (ip_isr table of boxes); optional.",
        storageClass="Defects",
        dimensions=("instrument", "detector"),
        isCalibration=True,
        minimum=0,
        deferLoad=True,
    )

    def remove_unused_calibrations(self, isr_config: CpIsrConfig) -> None:
        """Drop the calibration connections ``isr_config`` does not apply."""
        for name, flag in CALIBRATION_FLAGS.items():
            if not getattr(isr_config, flag) and name in self.prerequisiteInputs:
                delattr(self, name)


class CpIsrConnections(CpCalibrationConnections, dimensions=("instrument", "exposure", "detector")):
    ccdExposure = cT.Input(
        name="raw",
        doc="Raw exposure of one detector (read from its file: see lsst.cpcombined.repo.files).",
        storageClass="Exposure",
        dimensions=("instrument", "exposure", "detector"),
        deferLoad=True,
    )
    outputExposure = cT.Output(
        name="cpcIsrProc",
        doc="ISR-processed, trimmed and assembled exposure (MaskedImage).",
        storageClass="MaskedImageV2",
        dimensions=("instrument", "exposure", "detector"),
    )

    def __init__(self, *, config: CpIsrConfig) -> None:
        super().__init__(config=config)
        self.remove_unused_calibrations(config)


class CpIsrConfig(PipelineTaskConfig, pipelineConnections=CpIsrConnections):
    """Configuration of `CpIsrTask`."""

    imageType = ChoiceField(
        dtype=str,
        doc="Image type the inputs must have (raw IMGTYPE / exposure observation_type).",
        allowed={"bias": "bias frames", "dark": "dark frames", "flat": "flat fields", "any": "no check"},
        default="any",
    )
    overscanStatistic = ChoiceField(
        dtype=str,
        doc="Per-row statistic of the serial (and parallel) overscan.",
        allowed={"median": "median", "mean": "mean", "clipped_mean": "3-sigma clipped mean"},
        default="median",
    )
    overscanSkipLeading = Field(dtype=int, doc="Leading overscan columns/rows skipped.", default=3)
    overscanSkipTrailing = Field(dtype=int, doc="Trailing overscan columns/rows skipped.", default=3)
    doParallelOverscan = Field(
        dtype=bool,
        doc=(
            "Also subtract a per-column median of the parallel overscan rows.  Off by default: fixed "
            "column structure is removed by the combined bias, and the ~42-row median adds ~2 % rms of "
            "noise, which the 5 % verification NOISE margin cannot afford.  Enable where the column "
            "bias varies between exposures."
        ),
        default=False,
    )
    doSaturation = Field(dtype=bool, doc="Set SAT where the raw value reaches the saturation level.", default=True)
    saturation = Field(
        dtype=float,
        doc="Saturation level (ADU) for every amp; NaN uses each amp's nominal level.",
        default=math.nan,
    )
    doApplyGains = Field(dtype=bool, doc="Convert to electrons with the nominal per-amp gains.", default=True)
    doBias = Field(dtype=bool, doc="Subtract the combined bias.", default=False)
    doDark = Field(dtype=bool, doc="Subtract the combined dark scaled by the dark time.", default=False)
    doFlat = Field(dtype=bool, doc="Divide by the combined flat.", default=False)
    doDefects = Field(dtype=bool, doc="Mask (BAD) and interpolate (INTRP) known defects.", default=False)
    doCosmicRays = Field(
        dtype=bool, doc="Find cosmic rays and set the CR mask plane (no repair).", default=False
    )
    crNSigma = Field(dtype=float, doc="Cosmic-ray detection threshold (sigma).", default=6.0)
    crGrow = Field(dtype=int, doc="Pixels by which cosmic-ray masks are grown.", default=2)
    crMaxPixels = Field(
        dtype=int, doc="More CR pixels than this is an overflow (logged; mask kept).", default=100_000
    )
    minExposureTime = Field(
        dtype=float,
        doc="Minimum exposure time (s) for flats (a flat with less, e.g. an unknown -1, is rejected).",
        default=0.0,
    )
    checkFilter = ListField(
        dtype=str,
        doc="If non-empty, flats must have one of these physical filters.",
        default=[],
    )


class CpIsrTask(PipelineTask):
    """Overscan-correct, trim, assemble, mask and (optionally) apply
    calibrations to one raw detector exposure.

    Output units are electrons when ``doApplyGains`` (the default).
    Metadata of the output records the exposure's identity and times and
    per-amp overscan level, noise, gain and saturated-pixel count
    (``ISR_<amp>_<KEY>``).
    """

    ConfigClass = CpIsrConfig
    _DefaultName = "cpIsr"
    config: CpIsrConfig

    @collect_garbage_after
    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        inputs = get_inputs_caching_calibrations(butlerQC, inputRefs)
        inputs["ccdExposure"] = read_dataset_file(inputs["ccdExposure"], read_raw_file)
        data_id = butlerQC.quantum.dataId
        outputs = self.run(
            **inputs,
            instrument=data_id["instrument"],
            detector=data_id["detector"],
            exposure=data_id["exposure"],
        )
        butlerQC.put(outputs, outputRefs)

    # -- checks -------------------------------------------------------------------

    def _check_exposure(self, md: dict[str, Any], exposure: int) -> None:
        obsid = md.get("OBSID", exposure)
        imgtype = str(md.get("IMGTYPE") or "unknown").strip().lower()
        if self.config.imageType != "any" and imgtype != self.config.imageType:
            raise CpInputError(
                f"exposure {exposure} ({obsid}) is a {imgtype.upper()}, not a "
                f"{self.config.imageType.upper()}: wrong image type in the query"
            )
        if self.config.imageType == "flat":
            exptime = md.get("EXPTIME")
            if exptime is None or float(exptime) <= self.config.minExposureTime:
                raise CpInputError(f"flat {exposure} ({obsid}) has exposure time {exptime!r}: unusable")

    # -- main ---------------------------------------------------------------------

    def run(
        self,
        ccdExposure: RawImage,
        bias: MaskedImage | None = None,
        dark: MaskedImage | None = None,
        flat: MaskedImage | None = None,
        defects: Any = None,
        *,
        instrument: str,
        detector: int,
        exposure: int = -1,
    ) -> Struct:
        """Process one raw exposure.

        Parameters
        ----------
        ccdExposure
            Raw image.
        bias, dark, flat
            Calibrations to apply (when configured).
        defects
            Defect table (``x0, y0, width, height``; when configured; may be
            `None` or an empty list).
        instrument, detector, exposure
            Data ID values (for nominal amp values and messages).

        Returns
        -------
        struct
            ``outputExposure``: the processed `lsst.images.MaskedImage`.
        """
        md = ccdExposure.metadata
        self._check_exposure(md, exposure)
        if isinstance(defects, (list, tuple)):
            defects = defects[0] if defects else None
        det = get_instrument(instrument).camera_description[detector]
        gains = {a.name: a.gain for a in det.amplifiers}
        saturation = self.config.saturation if not math.isnan(self.config.saturation) else det.saturation
        calib: dict[str, Any] = {}
        if self.config.doBias:
            calib["bias"] = _calib_frame(bias, "bias")
        if self.config.doDark:
            calib["dark"] = _calib_frame(dark, "dark")
            calib["dark_time"] = float(md.get("DARKTIME", md.get("EXPTIME", 0.0)) or 0.0)
        if self.config.doFlat:
            calib["flat"] = _calib_frame(flat, "flat")
        result = run_calib_isr(
            ccdExposure,
            gains=gains,
            saturation=saturation,
            do_saturation=self.config.doSaturation,
            do_parallel=self.config.doParallelOverscan,
            apply_gains=self.config.doApplyGains,
            statistic=self.config.overscanStatistic,
            serial_skip=(self.config.overscanSkipLeading, self.config.overscanSkipTrailing),
            parallel_skip=(self.config.overscanSkipLeading, self.config.overscanSkipTrailing),
            **calib,
        )
        image, variance, mask = result.image, result.variance, result.mask
        layout = ccdExposure.layout
        regions = amp_regions(layout)
        for amp in regions:
            n_nan = int(result.amp_stats[amp]["n_nan"])
            if n_nan == layout.data_width * layout.data_height:
                self.log.warning(
                    "Exposure %s detector %s amp %s is entirely NaN: masked NO_DATA/BAD.",
                    exposure,
                    det.name,
                    amp,
                )
        if self.config.doDefects and defects is not None:
            defect_mask = defects_algo.table_to_mask(defects, image.shape, clip=True)
            image, mask = defects_algo.interpolate_defects(image, defect_mask, mask)
        n_cr = 0
        if self.config.doCosmicRays:
            cr = cosmic_rays.find_cosmic_rays(
                image,
                variance,
                mask,
                nsigma=self.config.crNSigma,
                grow=self.config.crGrow,
                max_cr_pixels=self.config.crMaxPixels,
            )
            mask = cr.bitmask
            n_cr = int(cr.n_pixels)
            if cr.overflow:
                self.log.warning(
                    "Exposure %s detector %s: %d cosmic-ray pixels exceed the limit %d.",
                    exposure,
                    det.name,
                    n_cr,
                    self.config.crMaxPixels,
                )
        unit = u.electron if result.units == "electron" else u.adu
        out_md = _exposure_metadata(md, exposure, det.name)
        out_md["ISR_UNITS"] = result.units
        out_md["ISR_N_CR_PIXELS"] = n_cr
        for amp, stats in result.amp_stats.items():
            for key, value in stats.items():
                out_md[f"ISR_{amp}_{key.upper()}"] = float(value)
        out = to_masked_image(image, variance, mask, unit=unit, metadata=out_md)
        return Struct(outputExposure=out)


def _calib_frame(calib: MaskedImage | None, what: str) -> CalibFrame:
    if calib is None:
        raise CpInputError(f"no {what} calibration available for this exposure")
    image, variance, mask = from_masked_image(calib)
    return CalibFrame(image=image, variance=variance, mask=mask)


def _exposure_metadata(md: dict[str, Any], exposure: int, detector_name: str) -> dict[str, Any]:
    """Identity and time keys of an exposure, copied to processed outputs."""
    out: dict[str, Any] = {"EXPOSURE": int(exposure), "DETECTOR_NAME": detector_name}
    for key in (
        "OBSID",
        "IMGTYPE",
        "EXPTIME",
        "DARKTIME",
        "DATE-BEG",
        "DATE-OBS",
        "TIMESYS",
        "FILTER",
        "DAYOBS",
        "SEQNUM",
        *CAMERA_KEYS,
    ):
        value = md.get(key)
        if isinstance(value, (np.floating, np.integer)):
            value = value.item()
        if value is not None:
            out[key] = value
    return out
