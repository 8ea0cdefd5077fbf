"""Per-(exposure, detector) verification of a bias, dark or flat.

The raw is re-processed by `~lsst.cpcombined.tasks.isr.CpIsrTask` (a
subtask) with the calibration under test, which is looked up as an
``isCalibration=True`` prerequisite in the input collections: the
just-generated calibration when its RUN collection is among the inputs
("internal verification") or the one certified in a CALIBRATION collection
such as ``LATISS/calib`` ("external verification").  Defects are applied
when some are found (optional input).  The processed image is *not*
written: the per-amplifier statistics and the DMTN-101 tests of
`lsst.cpcombined.algorithms.verify` are computed here, and only they are
written: ``verify<Type>DetStats``, cp_verify's detector dictionary, and
``verify<Type>DetResults``, a table with cp_verify's columns and one row per
amplifier.

The dictionary has cp_verify's keys, names and nesting (``AMP``,
``METADATA``, ``CATALOG``, ``DET``, ``VERIFY``, ``SUCCESS``; see
`lsst.cpcombined.algorithms.verify`), so cp_verify's exposure merge and
our own read it alike; our other information follows in dict-valued keys
that cp_verify's merges never read: ``CPC_IDENTITY`` (calibration type,
instrument, exposure, detector id and name, physical filter, observation
id, image type, exposure and dark times, date, MJD), ``CPC_AMP`` and
``CPC_DET`` (statistics beyond cp_verify's), ``CPC_CALIBRATIONS`` (dataset
type, id, run and data ID of each calibration used: the decision and
certification check that they concern the calibration being certified),
``CPC_THRESHOLDS`` and ``CPC_PROCESSING`` (cosmic-ray repair, read-noise
source).

Differences from cp_verify's numbers under the same names (details in
`lsst.cpcombined.algorithms.verify`): the bias/dark ``MEAN`` test uses the
clipped mean; the bias/dark ``NOISE`` test uses the read noise measured on
the overscan by our ISR (``readNoiseSource``), and ``PROCESSING`` is always
written; the flat ``NOISE`` test compares ADU values (in electrons it could
never pass); flat ``DET.MEAN``/``DET.SCATTER`` are the mean and absolute
standard deviation of the amplifiers' clipped means;
``READ_NOISE_CONSISTENT`` is not computed.  ``METADATA.READ_NOISE_ADU`` is
our ISR's overscan noise in ADU (cp_verify: the ISR's serial overscan
residual standard deviation).
"""

from __future__ import annotations

__all__ = (
    "CpVerifyDetectorConfig",
    "CpVerifyDetectorConnections",
    "CpVerifyDetectorTask",
    "stats_config_from",
    "thresholds_from",
)

import dataclasses
import math
import threading
from collections.abc import Mapping
from typing import Any

import astropy.time
import numpy as np
from lsst.images import MaskedImage
from lsst.pex.config import ChoiceField, ConfigurableField, Field, ListField
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import cosmic_rays
from ..algorithms import verify as verify_algo
from ..algorithms.isr import amp_regions
from ..algorithms.masks import bits
from ..errors import CpInputError
from ..obs.instrument import get_instrument
from ..obs.raw import RawImage, read_raw_file
from ..repo.files import read_dataset_file
from ..repo.products import from_masked_image, get_inputs_caching_calibrations
from ._memory import collect_garbage_after
from .isr import CALIBRATION_FLAGS, CpCalibrationConnections, CpIsrTask


class CpVerifyDetectorConnections(
    CpCalibrationConnections,
    dimensions=("instrument", "exposure", "detector"),
    defaultTemplates={"calibType": "Bias"},
):
    inputExp = cT.Input(
        name="raw",
        doc="Raw exposure of one detector to re-process with the calibration under test.",
        storageClass="Exposure",
        dimensions=("instrument", "exposure", "detector"),
        deferLoad=True,
    )
    outputStats = cT.Output(
        name="verify{calibType}DetStats",
        doc=(
            "cp_verify's detector dictionary (AMP, METADATA, CATALOG, DET, VERIFY, SUCCESS; "
            "lsst.cpcombined.algorithms.verify.verify_detector) plus CPC_IDENTITY, CPC_AMP, CPC_DET, "
            "CPC_CALIBRATIONS (the calibrations used), CPC_THRESHOLDS and CPC_PROCESSING."
        ),
        storageClass="StructuredDataDict",
        dimensions=("instrument", "exposure", "detector"),
    )
    outputResults = cT.Output(
        name="verify{calibType}DetResults",
        doc=(
            "One row per amplifier with cp_verify's columns (instrument, exposure, detector, mjd, "
            "amplifier, <STAGE>_<stat>, <STAGE>_VERIFY_<test>, ...) plus our other statistics."
        ),
        storageClass="ArrowAstropy",
        dimensions=("instrument", "exposure", "detector"),
    )

    def __init__(self, *, config: CpVerifyDetectorConfig) -> None:
        super().__init__(config=config)
        self.remove_unused_calibrations(config.isr)


class CpVerifyDetectorConfig(PipelineTaskConfig, pipelineConnections=CpVerifyDetectorConnections):
    """Configuration of `CpVerifyDetectorTask`."""

    calibrationType = ChoiceField(
        dtype=str,
        doc=(
            "Calibration verified: selects the tests (bias/dark: MEAN, NOISE, CR_NOISE, PROCESSING; "
            "flat: NOISE and detector SCATTER).  Must match connections.calibType and the ISR steps."
        ),
        allowed={"bias": "bias", "dark": "dark", "flat": "flat"},
        default="bias",
    )
    isr = ConfigurableField(
        target=CpIsrTask,
        doc="ISR applying the calibration under test (and defects when found).",
    )
    statNSigma = Field(dtype=float, doc="Clipping threshold (sigma) of the per-amp statistics.", default=5.0)
    statNIter = Field(dtype=int, doc="Clipping iterations of the per-amp statistics.", default=3)
    statMaskPlanes = ListField(
        dtype=str,
        doc="Pixels with any of these mask planes are ignored by the statistics.",
        default=["DETECTED", "BAD", "NO_DATA"],
    )
    readNoiseSource = ChoiceField(
        dtype=str,
        doc="Read noise of the NOISE test (electrons).",
        allowed={
            "overscan": "measured on each amp's serial overscan by the ISR (ISR_<amp>_OVERSCAN_NOISE_E)",
            "nominal": "the camera description's nominal per-amp read noise",
        },
        default="overscan",
    )
    noiseThreshold = Field(
        dtype=float,
        doc="bias/dark NOISE: largest allowed (NOISE - READ_NOISE) / READ_NOISE.",
        default=0.05,
    )
    crNoiseThreshold = Field(
        dtype=float,
        doc="bias/dark CR_NOISE: largest allowed |NOISE - CR_NOISE| / CR_NOISE.",
        default=0.05,
    )
    flatPoissonTest = Field(
        dtype=bool,
        doc="flat: also run the stricter POISSON_NOISE test (NOISE / sqrt(MEAN + READ_NOISE^2)).",
        default=False,
    )
    flatPoissonTolerance = Field(
        dtype=float,
        doc="flat POISSON_NOISE: largest allowed NOISE / sqrt(MEAN + READ_NOISE^2) - 1.",
        default=0.05,
    )
    biasLevelThreshold = Field(
        dtype=float,
        doc=(
            "bias LEVEL: largest allowed |median| (e-) of each amplifier of the bias under test (a bias "
            "offset in every input passes the frame tests but is wrong); None disables the test."
        ),
        default=50.0,
        optional=True,
    )
    darkLevelThreshold = Field(
        dtype=float,
        doc="dark LEVEL: largest allowed |median| (e-/s) of each amplifier of the dark under test; None: off.",
        default=1.0,
        optional=True,
    )
    detectorScatterThreshold = Field(
        dtype=float,
        doc="flat detector SCATTER: largest allowed std(amp means) / mean(amp means).",
        default=0.05,
    )
    doCrRepair = Field(
        dtype=bool,
        doc=(
            "Find and repair cosmic rays on a copy of the processed image for the CR_NOISE statistic and "
            "the PROCESSING test (bias/dark; the flat tests do not use them)."
        ),
        default=True,
    )
    crNSigma = Field(dtype=float, doc="Cosmic-ray detection threshold (sigma).", default=6.0)
    crGrow = Field(dtype=int, doc="Pixels by which cosmic-ray masks are grown before repair.", default=2)
    crMinPixels = Field(
        dtype=int,
        doc="Minimum number of pixels of a cosmic ray (1 also flags isolated sharp pixels).",
        default=2,
    )
    crMaxPixels = Field(
        dtype=int,
        doc="More cosmic-ray pixels than this on a detector is an overflow: PROCESSING fails on every amp.",
        default=100_000,
    )
    ampCornerBoxSize = Field(
        dtype=int,
        doc="Side (pixels) of the box at each amp's readout corner whose mean is AMP_CORNER (as cp_verify).",
        default=200,
    )

    def setDefaults(self) -> None:
        super().setDefaults()
        self.isr.doBias = True
        self.isr.doApplyGains = True
        self.isr.doCosmicRays = False

    def validate(self) -> None:
        super().validate()
        if self.statNSigma <= 0 or self.statNIter < 0:
            raise ValueError("statNSigma must be > 0 and statNIter >= 0")
        if self.ampCornerBoxSize < 1:
            raise ValueError(f"ampCornerBoxSize must be >= 1, not {self.ampCornerBoxSize}")
        bits(*self.statMaskPlanes)  # unknown plane names raise KeyError
        if not self.isr.doApplyGains:
            raise ValueError("verification statistics are in electrons: isr.doApplyGains must be true")
        needed = {"bias": "doBias", "dark": "doDark", "flat": "doFlat"}[self.calibrationType]
        if not getattr(self.isr, needed):
            raise ValueError(
                f"verifying a {self.calibrationType} needs isr.{needed} (apply the calibration under test)"
            )
        template = self.connections.calibType
        if template.lower() != self.calibrationType:
            raise ValueError(
                f"connections.calibType={template!r} does not match "
                f"calibrationType={self.calibrationType!r}; "
                f"dataset names would be verify{template}DetStats"
            )


def thresholds_from(config: Any) -> verify_algo.VerifyThresholds:
    """`~lsst.cpcombined.algorithms.verify.VerifyThresholds` from any config
    with (some of) the verification threshold fields; missing ones take the
    defaults."""
    defaults = verify_algo.VerifyThresholds()
    return verify_algo.VerifyThresholds(
        noise=getattr(config, "noiseThreshold", defaults.noise),
        cr_noise=getattr(config, "crNoiseThreshold", defaults.cr_noise),
        flat_poisson=getattr(config, "flatPoissonTest", defaults.flat_poisson),
        flat_poisson_tolerance=getattr(config, "flatPoissonTolerance", defaults.flat_poisson_tolerance),
        detector_scatter=getattr(config, "detectorScatterThreshold", defaults.detector_scatter),
        exposure_scatter=getattr(config, "exposureScatterThreshold", defaults.exposure_scatter),
        bias_level=getattr(config, "biasLevelThreshold", defaults.bias_level),
        dark_level=getattr(config, "darkLevelThreshold", defaults.dark_level),
    )


def stats_config_from(config: CpVerifyDetectorConfig) -> verify_algo.StatsConfig:
    """`~lsst.cpcombined.algorithms.verify.StatsConfig` of a task config."""
    return verify_algo.StatsConfig(
        n_sigma=config.statNSigma, n_iter=config.statNIter, mask_planes=tuple(config.statMaskPlanes)
    )


def _float(value: Any) -> float:
    """``float(value)``, or NaN for a missing or non-numeric value."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _mjd(date: Any) -> float:
    """MJD (TAI) of an ISO date string, or NaN."""
    if not date:
        return math.nan
    try:
        return float(astropy.time.Time(str(date), scale="tai").mjd)
    except ValueError:
        return math.nan


def _physical_filter(data_id: Any) -> str | None:
    """The physical filter implied by an expanded exposure data ID, if any."""
    try:
        value = data_id["physical_filter"]
    except (KeyError, LookupError, TypeError):
        return None
    return None if value is None else str(value)


def _ref_record(ref: Any) -> dict[str, Any] | None:
    """Identity of a calibration dataset used (id, run, data ID)."""
    if ref is None:
        return None
    if isinstance(ref, (list, tuple)):
        return _ref_record(ref[0]) if ref else None
    return {
        "dataset_type": ref.datasetType.name,
        "id": str(ref.id),
        "run": str(ref.run),
        "data_id": {
            str(k): (v if isinstance(v, (int, str)) else str(v)) for k, v in ref.dataId.required.items()
        },
    }


class CpVerifyDetectorTask(PipelineTask):
    """Verify one (exposure, detector) against the calibration under test.

    Steps: ISR with the calibration under test (subtask ``isr``; defects
    masked and interpolated when found); per amplifier the statistics of
    `lsst.cpcombined.algorithms.verify.amp_statistics` (clipped mean and
    std masking ``statMaskPlanes``; read noise from the ISR's overscan
    measurement); for bias and dark also the clipped std after cosmic-ray
    repair (`lsst.cpcombined.algorithms.cosmic_rays.repair_cosmic_rays`)
    and whether that repair overflowed; then the amplifier and detector
    tests (`lsst.cpcombined.algorithms.verify.verify_detector`).  Only the
    statistics are written; the processed image is dropped.
    """

    ConfigClass = CpVerifyDetectorConfig
    _DefaultName = "cpVerifyDetector"
    config: CpVerifyDetectorConfig

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.makeSubtask("isr")

    @collect_garbage_after
    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        inputs = get_inputs_caching_calibrations(butlerQC, inputRefs)
        inputs["inputExp"] = read_dataset_file(inputs["inputExp"], read_raw_file)
        data_id = butlerQC.quantum.dataId
        calibrations = {}
        for name in CALIBRATION_FLAGS:
            record = _ref_record(getattr(inputRefs, name, None))
            if record is not None:
                calibrations[name] = record
        outputs = self.run(
            **inputs,
            instrument=data_id["instrument"],
            detector=data_id["detector"],
            exposure=data_id["exposure"],
            calibrations=calibrations,
            physical_filter=_physical_filter(data_id),
        )
        butlerQC.put(outputs, outputRefs)

    def run(
        self,
        inputExp: RawImage,
        bias: MaskedImage | None = None,
        dark: MaskedImage | None = None,
        flat: MaskedImage | None = None,
        defects: Any = None,
        *,
        instrument: str,
        detector: int,
        exposure: int,
        calibrations: Mapping[str, Any] | None = None,
        physical_filter: str | None = None,
    ) -> Struct:
        """Process one raw and verify it.

        Parameters
        ----------
        inputExp
            Raw image.
        bias, dark, flat, defects
            Calibrations (those the ISR is configured to apply; defects may
            be `None` or an empty list when none were found).
        instrument, detector, exposure
            Data ID values.
        calibrations
            Identity (id, run, data ID) of each calibration used, recorded
            in the output so that certification can check that the decision
            concerns the calibration it certifies.
        physical_filter
            Physical filter of the exposure (default: the raw's ``FILTER``
            header); recorded, and a column of flat results tables.

        Returns
        -------
        struct
            ``outputStats`` (`dict`, cp_verify's detector dictionary plus
            our ``CPC_*`` keys) and ``outputResults``
            (`astropy.table.Table`, one row per amplifier).
        """
        cfg = self.config
        if isinstance(defects, (list, tuple)):
            defects = defects[0] if defects else None
        det = get_instrument(instrument).camera_description[detector]
        processed = self.isr.run(
            inputExp,
            bias=bias,
            dark=dark,
            flat=flat,
            defects=defects,
            instrument=instrument,
            detector=detector,
            exposure=exposure,
        ).outputExposure
        image, variance, mask = from_masked_image(processed)
        md = dict(processed.metadata)
        if md.get("ISR_UNITS") != "electron":
            raise CpInputError(f"verification ISR output of exposure {exposure} is not in electrons")
        regions = amp_regions(inputExp.layout)

        gains: dict[str, float] = {}
        read_noise: dict[str, float] = {}
        read_noise_adu: dict[str, float] = {}
        corners: dict[str, tuple[slice, slice]] = {}
        nominal = {a.name: a for a in det.amplifiers}
        for amp, region in regions.items():
            gains[amp] = float(md.get(f"ISR_{amp}_GAIN", nominal[amp].gain))
            if cfg.readNoiseSource == "overscan":
                read_noise[amp] = float(md.get(f"ISR_{amp}_OVERSCAN_NOISE_E", math.nan))
            else:
                read_noise[amp] = float(nominal[amp].read_noise)
            read_noise_adu[amp] = float(md.get(f"ISR_{amp}_OVERSCAN_NOISE_ADU", math.nan))
            geometry = inputExp.layout.geometry(amp)
            corners[amp] = verify_algo.readout_corner_region(
                region, flip_x=geometry.flip_x, flip_y=geometry.flip_y, size=cfg.ampCornerBoxSize
            )

        stats_config = stats_config_from(cfg)
        cr_noise: dict[str, float] | None = None
        cr_overflow = False
        cr_info: dict[str, Any] = {"DONE": False}
        if cfg.doCrRepair and cfg.calibrationType in ("bias", "dark"):
            repair = cosmic_rays.repair_cosmic_rays(
                image,
                variance,
                mask,
                nsigma=cfg.crNSigma,
                grow=cfg.crGrow,
                min_pixels=cfg.crMinPixels,
                max_cr_pixels=cfg.crMaxPixels,
            )
            cr_overflow = bool(repair.overflow)
            cr_info = {
                "DONE": True,
                "N_PIXELS": int(repair.n_pixels),
                "N_FEATURES": int(repair.n_features),
                "OVERFLOW": cr_overflow,
                "MAX_PIXELS": int(cfg.crMaxPixels),
            }
            if cr_overflow:
                self.log.warning(
                    "Exposure %s detector %s: cosmic-ray repair overflowed (%d pixels > %d): "
                    "PROCESSING fails.",
                    exposure,
                    det.name,
                    repair.n_pixels,
                    cfg.crMaxPixels,
                )
            cr_noise = {}
            bad = np.uint8(stats_config.bad_bits)
            for amp, region in regions.items():
                pixels = np.asarray(repair.image[region], dtype=np.float64)
                good = np.isfinite(pixels) & ((mask[region] & bad) == 0)
                clipped = verify_algo.clipped_stats(
                    pixels[good], n_sigma=stats_config.n_sigma, n_iter=stats_config.n_iter
                )
                cr_noise[amp] = clipped.std

        amp_stats = verify_algo.detector_statistics(
            image,
            mask,
            regions,
            gains=gains,
            read_noise=read_noise,
            cr_noise=cr_noise,
            cr_overflow=cr_overflow,
            read_noise_adu=read_noise_adu,
            corner_regions=corners,
            config=stats_config,
        )
        under_test = {"bias": bias, "dark": dark, "flat": flat}[cfg.calibrationType]
        if under_test is not None:
            # The calibration under test itself: its level (bias and dark
            # LEVEL test) and its unusable pixels, per amplifier.
            for amp, (level, bad_fraction) in _calibration_levels(under_test, regions).items():
                amp_stats[amp]["CALIB_LEVEL"] = level
                amp_stats[amp]["CALIB_BAD_FRACTION"] = bad_fraction
        thresholds = thresholds_from(cfg)
        result = verify_algo.verify_detector(
            cfg.calibrationType, amp_stats, exposure=int(exposure), detector=det.name, thresholds=thresholds
        )
        if physical_filter is None and md.get("FILTER"):
            physical_filter = str(md["FILTER"])
        date = str(md.get("DATE-BEG", md.get("DATE-OBS", "")))
        mjd = _mjd(date)
        # exposure_scatter belongs to the exposure task (recorded in its config).
        detector_thresholds = dataclasses.asdict(thresholds)
        del detector_thresholds["exposure_scatter"]
        result["CPC_IDENTITY"].update(
            {
                "INSTRUMENT": str(instrument),
                "DETECTOR_ID": int(detector),
                "PHYSICAL_FILTER": physical_filter,
                "OBSID": str(md.get("OBSID", "")),
                "IMGTYPE": str(md.get("IMGTYPE", "")),
                "EXPTIME": _float(md.get("EXPTIME")),
                "DARKTIME": _float(md.get("DARKTIME")),
                "DATE": date,
                "MJD": mjd,
            }
        )
        result["CPC_CALIBRATIONS"] = dict(calibrations or {})
        result["CPC_THRESHOLDS"] = detector_thresholds
        result["CPC_PROCESSING"] = {"COSMIC_RAYS": cr_info, "READ_NOISE_SOURCE": cfg.readNoiseSource}
        failures = verify_algo.detector_failures(result)
        if failures:
            self.log.info(
                "Exposure %s detector %s: %d %s verification failure(s): %s",
                exposure,
                det.name,
                len(failures),
                cfg.calibrationType,
                ", ".join(failures),
            )
        rows = verify_algo.results_rows(
            cfg.calibrationType,
            result,
            instrument=str(instrument),
            exposure=int(exposure),
            detector=int(detector),
            mjd=mjd,
            physical_filter=physical_filter,
        )
        table = verify_algo.results_table(rows)
        table.meta["CALIB_TYPE"] = cfg.calibrationType
        table.meta["INSTRUMENT"] = str(instrument)
        return Struct(outputStats=result, outputResults=table)


#: Levels of the calibrations under test: id -> (calibration, levels), the
#: calibration kept alive so that its id is not reused.
_LEVELS: dict[int, tuple[Any, dict[str, tuple[float, float]]]] = {}
_LEVELS_LOCK = threading.Lock()


def _calibration_levels(
    under_test: Any, regions: Mapping[str, tuple[slice, slice]]
) -> dict[str, tuple[float, float]]:
    """`~lsst.cpcombined.algorithms.verify.calibration_level` of every
    amplifier of the calibration under test, computed once per calibration:
    every exposure of a verification run is compared with the same one, and
    the calibration cache (`~lsst.cpcombined.repo.products.get_inputs_caching_calibrations`)
    hands the quanta of a process the same object."""
    key = id(under_test)
    with _LEVELS_LOCK:
        known = _LEVELS.get(key)
        if known is not None and known[0] is under_test:
            return known[1]
    calib_image, _, calib_mask = from_masked_image(under_test)
    bad = bits("BAD", "NO_DATA")
    levels = {
        amp: verify_algo.calibration_level(calib_image, calib_mask, region, bad)
        for amp, region in regions.items()
    }
    with _LEVELS_LOCK:
        while len(_LEVELS) >= 4:
            _LEVELS.pop(next(iter(_LEVELS)))
        _LEVELS[key] = (under_test, levels)
    return levels
