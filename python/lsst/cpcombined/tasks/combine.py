"""Combine ISR-processed exposures into a bias, dark or flat."""

from __future__ import annotations

__all__ = ("CpCombineConfig", "CpCombineConnections", "CpCombineTask")

import math
from collections.abc import Mapping, Sequence
from typing import Any

import astropy.units as u
import numpy as np
from lsst.pex.config import ChoiceField, Field, ListField
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import combine as engine
from ..algorithms import read_noise
from ..algorithms.isr import amp_regions
from ..algorithms.masks import BIT, bits
from ..errors import CpInputError
from ..obs.camera import AmpLayout
from ..obs.instrument import get_instrument
from ..repo.products import (
    ButlerBlockSource,
    amp_percentiles,
    calib_exposure_metadata,
    from_masked_image,
    input_date_metadata,
    read_header,
    to_masked_image,
    write_bad_pixel_counts,
    write_input_provenance,
    write_percentiles,
)
from ._memory import collect_garbage_after
from .isr import CAMERA_KEYS


def _product_unit(calibration_type: str, isr_units: str) -> u.UnitBase | None:
    """Unit of a combined calibration made from inputs in ``isr_units``."""
    base = u.electron if isr_units == "electron" else u.adu
    return {"bias": base, "dark": base / u.s, "flat": None}[calibration_type]


class CpCombineConnections(PipelineTaskConnections, dimensions=("instrument", "detector")):
    inputExpHandles = cT.Input(
        name="cpcIsrProc",
        doc="ISR-processed exposures to combine (read in row blocks).",
        storageClass="MaskedImageV2",
        dimensions=("instrument", "exposure", "detector"),
        multiple=True,
        deferLoad=True,
    )
    inputScales = cT.Input(
        name="cpcFlatNormScales",
        doc="Focal-plane normalisation of the flats of one physical filter: per-exposure scale factors.",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "physical_filter"),
    )
    outputData = cT.Output(
        name="bias",
        doc="Combined calibration (afw Exposure FITS with cp_pipe's header conventions).",
        storageClass="ExposureF",
        dimensions=("instrument", "detector"),
        isCalibration=True,
    )

    def __init__(self, *, config: CpCombineConfig) -> None:
        super().__init__(config=config)
        if config.scaling != "focal_plane":
            del self.inputScales


class CpCombineConfig(PipelineTaskConfig, pipelineConnections=CpCombineConnections):
    """Configuration of `CpCombineTask`."""

    calibrationType = ChoiceField(
        dtype=str,
        doc="Calibration built (sets units and metadata).",
        allowed={"bias": "bias (electrons)", "dark": "dark (e-/s)", "flat": "flat (dimensionless)"},
        default="bias",
    )
    method = ChoiceField(
        dtype=str,
        doc="Per-pixel statistic.",
        allowed={"clipped_mean": "iterative sigma-clipped mean", "median": "median"},
        default="clipped_mean",
    )
    nSigma = Field(dtype=float, doc="Clipping threshold (sigma).", default=3.0)
    nIter = Field(dtype=int, doc="Maximum clipping iterations.", default=3)
    maskPlanes = ListField(
        dtype=str,
        doc="Input pixels with any of these mask planes are excluded.",
        default=["SAT", "DETECTED", "INTRP"],
    )
    scaling = ChoiceField(
        dtype=str,
        doc="Factor each input is divided by before combining.",
        allowed={
            "none": "no scaling (bias)",
            "exposure_time": "exposure time",
            "dark_time": "dark time (dark: result per second)",
            "clipped_mean": "the input's clipped mean (single-chip flat)",
            "focal_plane": "the exposure factor E of the focal-plane normalisation (cpcFlatNormScales)",
        },
        default="none",
    )
    normalizeOutput = Field(
        dtype=bool,
        doc="Divide the combined image by its clipped mean (single-chip flats: mean 1).",
        default=False,
    )
    minInputs = Field(dtype=int, doc="Minimum number of usable inputs; fewer is an error.", default=1)
    maxSaturatedFraction = Field(
        dtype=float,
        doc="Inputs with more SAT pixels than this fraction are excluded (logged). 1 disables.",
        default=0.01,
    )
    memoryBudgetMB = Field(dtype=int, doc="Memory for the block buffer of input values (MB).", default=256)
    flatSource = Field(
        dtype=str,
        doc="FLATSRC header value of a flat (the light source: DOME, TWILIGHT, SKY...).",
        default="DOME",
    )
    doReadNoise = Field(
        dtype=bool,
        doc=(
            "Bias only: measure the read noise of every amplifier (clipped mean of the inputs' overscan "
            "noise; white noise of the imaging area from differences of input pairs) and record it in the "
            "header (LSST ISR READNOISE <amp>, CPC_READNOISE_* keys; see "
            "lsst.cpcombined.algorithms.read_noise)."
        ),
        default=True,
    )
    readNoisePairs = Field(
        dtype=int,
        doc="Bias only: largest number of disjoint input pairs whose differences measure the imaging-area "
        "read noise (0: overscan only).",
        default=5,
    )
    readNoiseRows = Field(
        dtype=int,
        doc="Bias only: rows of each amplifier (a central band) used by the pair differences (0: all). "
        "400 rows of a LATISS amplifier are ~200k pixels per pair: a statistical error of ~0.2 % per "
        "pair, while reading a quarter of a full-size frame.",
        default=400,
    )

    def validate(self) -> None:
        super().validate()
        if self.nSigma <= 0 or self.nIter < 0:
            raise ValueError("nSigma must be > 0 and nIter >= 0")
        if self.readNoisePairs < 0 or self.readNoiseRows < 0:
            raise ValueError("readNoisePairs and readNoiseRows must be >= 0")
        if self.minInputs < 1:
            raise ValueError("minInputs must be >= 1")
        bits(*self.maskPlanes)  # unknown plane names raise KeyError


class CpCombineTask(PipelineTask):
    """Combine a stack of ISR-processed exposures into one calibration.

    Inputs are read in row blocks (`lsst.cpcombined.repo.products.ButlerBlockSource`)
    so memory does not grow with their number.  The output carries
    provenance (each input's exposure, date, exposure/dark time and scale),
    per-amp percentiles and ``BAD`` where no input was usable.
    """

    ConfigClass = CpCombineConfig
    _DefaultName = "cpCombine"
    config: CpCombineConfig

    @collect_garbage_after
    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        outputs = self.run(
            inputExpHandles=inputs["inputExpHandles"],
            inputScales=inputs.get("inputScales"),
            instrument=data_id["instrument"],
            detector=data_id["detector"],
            physical_filter=data_id.required.get("physical_filter"),
        )
        butlerQC.put(outputs, outputRefs)

    def run(
        self,
        inputExpHandles: Sequence[Any],
        inputScales: Mapping[str, Any] | None = None,
        *,
        instrument: str,
        detector: int,
        physical_filter: str | None = None,
    ) -> Struct:
        """Combine the inputs.

        Parameters
        ----------
        inputExpHandles
            Deferred handles of the ISR-processed exposures.
        inputScales
            Focal-plane normalisation (``scaling="focal_plane"``).
        instrument, detector, physical_filter
            Data ID values.

        Returns
        -------
        struct
            ``outputData``: the combined `lsst.images.MaskedImage` (unit e-,
            e-/s or none; metadata in cp_pipe's conventions).
        """
        cfg = self.config
        det = get_instrument(instrument).camera_description[detector]
        headers = []
        shape = None
        for handle in inputExpHandles:
            md, this_shape = read_header(handle)
            if shape is None:
                shape = this_shape
            elif this_shape != shape:
                raise CpInputError(f"exposure {md.get('EXPOSURE')} has shape {this_shape}, others {shape}")
            headers.append(md)
        if shape is None:
            raise CpInputError(f"no inputs to combine for detector {det.name}")
        npix = shape[0] * shape[1]

        keep: list[int] = []
        for i, md in enumerate(headers):
            n_sat = sum(v for k, v in md.items() if k.startswith("ISR_") and k.endswith("_N_SATURATED"))
            fraction = n_sat / npix
            if fraction > cfg.maxSaturatedFraction:
                self.log.warning(
                    "Excluding exposure %s (%s) from the %s of %s: %.1f%% of its pixels are saturated "
                    "(limit %.1f%%).",
                    md.get("EXPOSURE"),
                    md.get("OBSID"),
                    cfg.calibrationType,
                    det.name,
                    100 * fraction,
                    100 * cfg.maxSaturatedFraction,
                )
                continue
            keep.append(i)
        handles = [inputExpHandles[i] for i in keep]
        headers = [headers[i] for i in keep]
        scales = self._scales(handles, headers, inputScales, det.name)
        good = [i for i, s in enumerate(scales) if math.isfinite(s) and s > 0]
        for i in set(range(len(scales))) - set(good):
            h = headers[i]
            self.log.warning("Excluding exposure %s (%s): unusable scale %s.", h.get("EXPOSURE"), h.get("OBSID"), scales[i])
        handles = [handles[i] for i in good]
        headers = [headers[i] for i in good]
        scales = [scales[i] for i in good]
        if len(handles) < cfg.minInputs:
            raise CpInputError(
                f"only {len(handles)} usable input(s) for the {cfg.calibrationType} of {det.name}"
                f"{' in ' + physical_filter if physical_filter else ''} (minimum {cfg.minInputs})"
            )
        self.log.info(
            "Combining %d exposures into the %s of %s.", len(handles), cfg.calibrationType, det.name
        )
        result = engine.combine(
            [ButlerBlockSource(h, shape) for h in handles],
            method=cfg.method,
            nsigma=cfg.nSigma,
            niter=cfg.nIter,
            bad_bits=bits(*cfg.maskPlanes),
            scales=scales,
            variance_method="empirical",
            memory_budget_bytes=cfg.memoryBudgetMB * 1024**2,
        )
        image, variance = result.image, result.variance
        no_input = result.n_used == 0
        n_bad = int(np.count_nonzero(no_input))
        if n_bad:
            self.log.warning("%d pixels of %s had no usable input: masked BAD.", n_bad, det.name)
        # As cp_pipe: the product's mask holds BAD (no usable input) only.
        mask = np.where(no_input, BIT["BAD"], 0).astype(np.uint8)
        if cfg.normalizeOutput:
            norm = engine.clipped_mean(image, mask, bad_bits=bits("BAD", "NO_DATA"))
            image = image / norm
            variance = variance / norm**2
        units = {str(h.get("ISR_UNITS", "electron")) for h in headers}
        if len(units) > 1:
            raise CpInputError(
                f"the inputs of the {cfg.calibrationType} of {det.name} are in different units "
                f"{sorted(units)}: process them with the same ISR configuration"
            )
        isr_units = units.pop()
        layout = AmpLayout.from_detector_shape(shape)
        regions = amp_regions(layout)
        md = calib_exposure_metadata(
            cfg.calibrationType,
            instrument=instrument,
            detector=detector,
            detector_name=det.name,
            detector_serial=det.serial,
            physical_filter=physical_filter,
            units=isr_units,
            flat_source=cfg.flatSource,
        )
        inputs = [
            {
                "exposure": h.get("EXPOSURE"),
                "obsid": h.get("OBSID"),
                "date": h.get("DATE-BEG", h.get("DATE-OBS")),
                "timesys": h.get("TIMESYS"),
                "exptime": h.get("EXPTIME"),
                "darktime": h.get("DARKTIME"),
                "scale": s,
            }
            for h, s in zip(headers, scales, strict=False)
        ]
        md.update(input_date_metadata(inputs))
        # Camera keys with one value over all inputs (cp_pipe merges its inputs' headers so).
        for key in CAMERA_KEYS:
            values = {repr(h.get(key)) for h in headers}
            if len(values) == 1 and headers[0].get(key) is not None:
                md[key] = headers[0][key]
        write_input_provenance(md, inputs)
        write_percentiles(md, cfg.calibrationType, amp_percentiles(image, mask, regions))
        n_bad_amp = {amp: int(np.count_nonzero(no_input[ys, xs])) for amp, (ys, xs) in regions.items()}
        write_bad_pixel_counts(md, cfg.calibrationType, n_bad_amp)
        if cfg.calibrationType == "bias" and cfg.doReadNoise:
            md.update(self._measure_read_noise(handles, headers, shape, regions, det.name))
        from .. import __version__

        md.update(
            CPC_VERSION=str(__version__),
            CPC_NINPUTS=len(handles),
            CPC_METHOD=cfg.method,
            CPC_NSIGMA=cfg.nSigma,
            CPC_NITER=cfg.nIter,
            CPC_SCALING=cfg.scaling,
            CPC_MASKPLANES=",".join(cfg.maskPlanes),
            CPC_N_BAD_PIXELS=n_bad,
        )
        out = to_masked_image(
            image, variance, mask, unit=_product_unit(cfg.calibrationType, isr_units), metadata=md
        )
        return Struct(outputData=out)

    def _measure_read_noise(
        self,
        handles: Sequence[Any],
        headers: Sequence[Mapping[str, Any]],
        shape: tuple[int, int],
        regions: Mapping[str, tuple[slice, slice]],
        detector_name: str,
    ) -> dict[str, Any]:
        """Read noise per amplifier measured on the inputs (see
        `lsst.cpcombined.algorithms.read_noise`), as header keys.

        ``LSST ISR READNOISE <amp>`` and ``CPC_READNOISE_<amp>`` (e-):
        clipped mean of the inputs' overscan noise, ``CPC_READNOISE_<amp>_ERR``
        its error, ``CPC_READNOISE_<amp>_ADU`` the same in ADU;
        ``CPC_READNOISE_IMAGE_<amp>`` and ``_ERR`` (e-): white noise of the
        imaging area from input-pair differences; ``LSST ISR GAIN <amp>``:
        the gain the ISR applied; ``CPC_OVERSCAN_LEVEL_<amp>`` (ADU): median
        of the inputs' overscan levels; ``CPC_READNOISE_NFRAMES`` and
        ``CPC_READNOISE_NPAIRS``.
        """
        md: dict[str, Any] = {}
        overscan: dict[str, read_noise.ReadNoiseEstimate] = {}
        to_electrons: dict[str, float] = {}  # factor from the inputs' pixel units to electrons
        for amp in regions:
            gains = np.array([float(h.get(f"ISR_{amp}_GAIN", math.nan)) for h in headers])
            gain = float(np.nanmedian(gains)) if np.isfinite(gains).any() else math.nan
            applied = all(float(h.get(f"ISR_{amp}_GAIN_APPLIED", 1.0)) == 1.0 for h in headers)
            to_electrons[amp] = 1.0 if applied else gain
            in_adu = read_noise.combine_frame_noise(
                h.get(f"ISR_{amp}_OVERSCAN_NOISE_ADU", math.nan) for h in headers
            )
            overscan[amp] = in_adu.scaled(gain)
            levels = np.array([float(h.get(f"ISR_{amp}_OVERSCAN_LEVEL_ADU", math.nan)) for h in headers])
            md[f"LSST ISR READNOISE {amp}"] = overscan[amp].value
            md[f"LSST ISR GAIN {amp}"] = gain
            md[f"CPC_READNOISE_{amp}"] = overscan[amp].value
            md[f"CPC_READNOISE_{amp}_ERR"] = overscan[amp].error
            md[f"CPC_READNOISE_{amp}_ADU"] = in_adu.value
            md[f"CPC_OVERSCAN_LEVEL_{amp}"] = (
                float(np.nanmedian(levels)) if np.isfinite(levels).any() else math.nan
            )
        md["CPC_READNOISE_NFRAMES"] = len(headers)
        n_pairs = min(self.config.readNoisePairs, len(handles) // 2)
        pairs: dict[str, list[read_noise.ReadNoiseEstimate]] = {amp: [] for amp in regions}
        for (y0, y1), band in _row_bands(regions, self.config.readNoiseRows).items():
            for k in range(n_pairs):
                first = ButlerBlockSource(handles[2 * k], shape).read_block(y0, y1)
                second = ButlerBlockSource(handles[2 * k + 1], shape).read_block(y0, y1)
                bad = (first.mask | second.mask) != 0
                for amp, estimate in read_noise.amp_pair_noise(first.image, second.image, band, bad).items():
                    pairs[amp].append(estimate)
                del first, second, bad
        md["CPC_READNOISE_NPAIRS"] = n_pairs
        for amp in regions:
            image = read_noise.combine_estimates(pairs[amp]).scaled(to_electrons[amp])
            md[f"CPC_READNOISE_IMAGE_{amp}"] = image.value
            md[f"CPC_READNOISE_IMAGE_{amp}_ERR"] = image.error
        summary = ", ".join(
            f"{amp} {overscan[amp].value:.2f}/{md[f'CPC_READNOISE_IMAGE_{amp}']:.2f}" for amp in regions
        )
        self.log.info(
            "Read noise of %s (overscan/imaging area, %d frames, %d pairs): %s",
            detector_name,
            len(headers),
            n_pairs,
            summary,
        )
        return md

    def _scales(
        self,
        handles: Sequence[Any],
        headers: Sequence[Mapping[str, Any]],
        inputScales: Mapping[str, Any] | None,
        detector_name: str,
    ) -> list[float]:
        """Scale factor of each input, per ``config.scaling``."""
        scaling = self.config.scaling
        if scaling == "none":
            return [1.0] * len(handles)
        if scaling in ("exposure_time", "dark_time"):
            key = "EXPTIME" if scaling == "exposure_time" else "DARKTIME"
            return [float(h.get(key, math.nan) or math.nan) for h in headers]
        if scaling == "clipped_mean":
            out = []
            for handle in handles:
                image, _, mask = from_masked_image(handle.get())
                bad = bits(*self.config.maskPlanes, "BAD", "NO_DATA")
                out.append(float(engine.clipped_mean(image, mask, bad_bits=bad)))
            return out
        if inputScales is None:
            raise CpInputError("focal-plane scaling needs cpcFlatNormScales")
        exposure_scales = inputScales.get("exposure_scales", {})
        return [float(exposure_scales.get(str(h.get("EXPOSURE")), math.nan)) for h in headers]


def _row_bands(
    regions: Mapping[str, tuple[slice, slice]], n_rows: int
) -> dict[tuple[int, int], dict[str, tuple[slice, slice]]]:
    """Central bands of ``n_rows`` rows (all rows with 0) of the amplifiers,
    grouped by band: ``(y0, y1)`` of the rows to read -> amplifier -> its
    region within those rows."""
    bands: dict[tuple[int, int], dict[str, tuple[slice, slice]]] = {}
    for amp, (ys, xs) in regions.items():
        start, stop = int(ys.start or 0), int(ys.stop)
        if 0 < n_rows < stop - start:
            start += (stop - start - n_rows) // 2
            stop = start + n_rows
        bands.setdefault((start, stop), {})[amp] = (slice(0, stop - start), xs)
    return bands
