"""Photon transfer curve, step 1: pair the flats of a detector, run ISR on
them and measure every pair on every amplifier.

One quantum per (instrument, detector) receives all the flat raws of the
data query (deferred), pairs them by exposure time, processes the two flats
of one pair at a time with its own ISR subtask (`CpIsrTask`: overscan,
bias and dark subtraction, *no* gain conversion) and measures means,
variance and covariances of each amplifier (`measure_pair`).  At most one
pair of full images is in memory.  It also computes the quick gain of each
amplifier from the flat pairs alone (`gain_from_flat_pairs`, what the
ScriptQueue script reports).  The output ``cpcPtcExtract`` table is the
input of `CpPtcSolveTask`.

Saturation
----------
The ISR of this task does not set ``SAT`` by default (``isr.doSaturation =
False``).  The nominal saturation level of the instrument description
(142857 ADU in the *raw*, i.e. including the ~15000 ADU bias level) is below
the full well of the ITL sensors for their ~1.1 e-/ADU gains
(``(142857 - 15000) ADU * 1.08 e-/ADU ~ 138 ke-`` against ~150 ke-).
Masking at that level would (1) truncate the pixel distribution of the
pairs near it from above, biasing their variance low, and (2) stop the PTC
at a number of the instrument description rather than where the sensor
saturates.  Without the mask, saturation shows as the variance turnover
(`turnover_mask`) that the fit detects, so the turnoff is the sensor's.
Set ``isr.doSaturation = True`` to cut the PTC at the nominal level instead
(pairs with more than 1 % ``SAT`` pixels are then saturated).

Noise of the processed pixels
-----------------------------
Subtracting a per-row statistic of ``N`` serial-overscan pixels adds its
variance to every pixel: ``Var(median of N) ~ pi/(2N)`` times the read noise
squared (2.7 % for ``N = 58``).  The ISR's overscan noise estimate is
corrected for that (it is the amplifier's read noise); the processed-pixel
read noise used here for the quick gain is that times
``sqrt(row_noise_factor)``, and `CpPtcSolveTask` uses the same factor to
turn the fitted noise term into the amplifier's read noise.

Defects and fixed-pattern outliers
----------------------------------
Pixels whose response differs from their neighbours' also have a different
variance: a dead column holding 0.4 % of an amplifier's pixels lowers its
pair variances by 0.4 % and raises its gain by as much.  Defects are masked
when a ``defects`` calibration is found (``isr.doDefects``, optional
prerequisite), and pixels whose level in the pair's mean image is a
``fixedPatternNSigma`` outlier are left out as well
(`~lsst.cpcombined.algorithms.ptc.fixed_pattern_outliers`; count in
``n_fixed_pattern``).

Calibration units
-----------------
The combined bias and dark are in electrons (per second); `CpIsrTask`
applies calibrations as they are, so they are converted here to ADU with the
nominal per-amp gains that made them (``convertCalibUnits``).

Output
------
``cpcPtcExtract`` (``ArrowAstropy``), one row per (pair, amplifier), pairs in
exposure-time order: ``pair``, ``exposure1``, ``exposure2``, ``exp_time``,
``mjd_start`` (TAI MJD of the pair's first start), ``physical_filter``,
``amplifier``, ``mean1``, ``mean2``, ``mean`` (ADU),
``variance`` (ADU^2), ``npix``, ``sat_fraction``, ``valid``, ``reason``,
``covariance`` and ``cov_npairs`` (``maxLag+1`` square), ``overscan_noise_adu``
(amplifier read noise from the overscans), ``overscan_level_adu`` (mean
serial overscan level of the two flats), ``read_noise_adu`` (of a
processed pixel), ``row_noise_factor``, ``n_fixed_pattern``, ``gain_pair``,
``gain_pair_err``, ``gain_pair_used`` (per-pair quick gains) and
``gain_quick``, ``gain_quick_err`` (the amplifier's quick gain, repeated on
each of its rows; also ``CPC_QUICK_GAIN_<amp>`` in the metadata).
"""

from __future__ import annotations

__all__ = ("CpPtcExtractConfig", "CpPtcExtractConnections", "CpPtcExtractTask", "row_noise_factor")

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Table
from lsst.images import MaskedImage
from lsst.pex.config import ConfigurableField, Field, ListField
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import ptc as ptc_algo
from ..algorithms.isr import amp_regions, median_variance_normal
from ..algorithms.masks import BIT, bits
from ..errors import CpInputError
from ..obs.camera import AmpLayout
from ..obs.instrument import get_instrument
from ..obs.raw import RawImage, read_raw_file, read_raw_header
from ..repo.files import read_dataset_file
from ..repo.products import from_masked_image, get_inputs_caching_calibrations, to_masked_image
from ._memory import collect_garbage_after
from .isr import CpCalibrationConnections, CpIsrConfig, CpIsrTask


class CpPtcExtractConnections(CpCalibrationConnections, dimensions=("instrument", "detector")):
    """Bias and dark (electrons; converted to ADU with the nominal gains) and
    optional defects are looked up over the span of all the flats."""

    inputExp = cT.Input(
        name="raw",
        doc="Raw flats of the detector (all exposures of the data query), read one pair at a time.",
        storageClass="Exposure",
        dimensions=("instrument", "exposure", "detector"),
        multiple=True,
        deferLoad=True,
    )
    outputCovariances = cT.Output(
        name="cpcPtcExtract",
        doc=(
            "One row per (flat pair, amplifier): exposures, exposure time, clipped means, variance, "
            "covariances to maxLag, pixels used, read noise, per-pair and per-amp quick gains."
        ),
        storageClass="ArrowAstropy",
        dimensions=("instrument", "detector"),
    )

    def __init__(self, *, config: CpPtcExtractConfig) -> None:
        super().__init__(config=config)
        self.remove_unused_calibrations(config.isr)

    def getTemporalBoundsConnections(self) -> frozenset[str]:
        # The calibrations are looked up over the span of all the flats.
        return frozenset({"inputExp"})


class CpPtcExtractConfig(PipelineTaskConfig, pipelineConnections=CpPtcExtractConnections):
    """Configuration of `CpPtcExtractTask`."""

    isr = ConfigurableField(
        target=CpIsrTask,
        doc=(
            "ISR of each flat: overscan, bias and dark subtraction, in ADU (doApplyGains=False), "
            "without the SAT mask (doSaturation=False; see the module documentation)."
        ),
    )
    nSigma = Field(dtype=float, doc="Sigma clipping of the means and of the difference image.", default=5.5)
    nIter = Field(dtype=int, doc="Clipping iterations.", default=3)
    edge = Field(dtype=int, doc="Pixels dropped along each side of each amplifier.", default=20)
    maxLag = Field(dtype=int, doc="Largest covariance lag (pixels) in each direction.", default=10)
    minPixels = Field(
        dtype=int, doc="Fewer usable pixels than this makes a measurement invalid.", default=100
    )
    badMaskPlanes = ListField(
        dtype=str,
        doc="Pixels with any of these mask planes (in either flat of a pair) are not used.",
        default=["BAD", "SAT", "INTRP", "CR", "NO_DATA", "SUSPECT", "EDGE"],
    )
    fixedPatternNSigma = Field(
        dtype=float,
        doc=(
            "Also leave out pixels whose level in the pair's mean image (each flat divided by its clipped "
            "mean) is more than this many sigma from the amplifier's clipped mean: dead columns and "
            "cold or hot pixels not in the defects, whose low (high) variance would bias the pair's "
            "variance (a dead column of 0.4 % of an amp's pixels lowers it by 0.4 %).  0 disables."
        ),
        default=5.5,
    )
    timeRtol = Field(
        dtype=float, doc="Relative tolerance on equal exposure times when pairing.", default=1e-3
    )
    timeAtol = Field(
        dtype=float, doc="Absolute tolerance (s) on equal exposure times when pairing.", default=1e-6
    )
    convertCalibUnits = Field(
        dtype=bool,
        doc=(
            "Convert a bias/dark in electrons to ADU with the nominal per-amp gains (the ISR stays in "
            "ADU); calibrations already in ADU are used as they are."
        ),
        default=True,
    )
    quickGainCovMaxLag = Field(
        dtype=int,
        doc=(
            "Quick gain: sum the covariances up to this lag instead of using C00 alone.  The "
            "brighter-fatter effect moves variance into the covariances, biasing mu/(C00 - rn^2) high by "
            "~|a00| N (N the signal in electrons: +10 % at 50 ke- for a00 = -2e-6); summing to lag 1 "
            "recovers nearly all of it at the cost of ~3x the noise per pair.  0: plain C00."
        ),
        default=1,
    )
    quickGainMinShotNoiseRatio = Field(
        dtype=float,
        doc=(
            "Quick gain: pairs whose variance is below this fraction of the shot noise of their mean "
            "(C00 < ratio * mean / nominal gain) are saturated and left out (with every pair above them). "
            "0 disables."
        ),
        default=0.25,
    )
    quickGainMaxSatFraction = Field(
        dtype=float,
        doc="Quick gain: pairs with more SAT pixels than this fraction are left out.",
        default=0.01,
    )

    def setDefaults(self) -> None:
        super().setDefaults()
        self.isr.imageType = "flat"
        self.isr.doBias = True
        self.isr.doDark = True
        self.isr.doFlat = False
        self.isr.doDefects = True
        self.isr.doApplyGains = False
        self.isr.doSaturation = False
        self.isr.doCosmicRays = False

    def validate(self) -> None:
        super().validate()
        if self.isr.doApplyGains:
            raise ValueError("the PTC measures the gain: its ISR must stay in ADU (isr.doApplyGains=False)")
        if self.isr.doFlat:
            raise ValueError("the PTC needs flats that are not flat-fielded (isr.doFlat=False)")
        if self.edge < 0 or self.maxLag < 0 or self.nSigma <= 0 or self.nIter < 0:
            raise ValueError("edge and maxLag must be >= 0, nSigma > 0, nIter >= 0")
        if self.quickGainCovMaxLag < 0 or self.quickGainCovMaxLag > self.maxLag:
            raise ValueError("quickGainCovMaxLag must be in [0, maxLag]")
        bits(*self.badMaskPlanes)


def _mjd_start(md: dict[str, Any]) -> float:
    """TAI MJD of the start of a processed exposure (``DATE-BEG`` in its
    ``TIMESYS``, TAI by default); NaN when unknown."""
    import astropy.time

    date = md.get("DATE-BEG", md.get("DATE-OBS"))
    if not date:
        return math.nan
    scale = "utc" if str(md.get("TIMESYS", "TAI")).strip().upper() == "UTC" else "tai"
    try:
        return float(astropy.time.Time(str(date), format="isot", scale=scale).tai.mjd)
    except ValueError:
        return math.nan


def row_noise_factor(isr_config: CpIsrConfig, layout: AmpLayout) -> float:
    """Variance of an ISR-processed pixel's read noise relative to the
    amplifier's read noise squared.

    The per-row serial overscan statistic (and per-column parallel one, when
    enabled) computed from ``N`` pixels adds its own variance,
    ``Var(median) ~ pi/(2N)`` or ``1/N`` for a mean, to every pixel.

    Parameters
    ----------
    isr_config
        The ISR configuration (statistic, skipped columns, parallel).
    layout
        Amplifier layout (overscan sizes).

    Returns
    -------
    factor
        ``1 + Var(statistic)/sigma**2`` (summed over serial and parallel).
    """

    def var_stat(n: int) -> float:
        if n < 1:
            return 0.0
        if isr_config.overscanStatistic == "median":
            return median_variance_normal(n)
        return 1.0 / n

    skip = isr_config.overscanSkipLeading + isr_config.overscanSkipTrailing
    factor = 1.0 + var_stat(layout.serial_overscan - skip)
    if isr_config.doParallelOverscan:
        factor += var_stat(layout.parallel_overscan - skip)
    return float(factor)


class CpPtcExtractTask(PipelineTask):
    """Pair the flats of one detector and measure each pair per amplifier.

    Pairs are the first two flats (in exposure-id order) at each exposure
    time; further flats at a time and lone flats are logged and ignored.  A
    pair whose two flats have different physical filters is an error.
    """

    ConfigClass = CpPtcExtractConfig
    _DefaultName = "cpPtcExtract"
    config: CpPtcExtractConfig

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.makeSubtask("isr")

    @collect_garbage_after
    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        # Bias, dark and defects read from their files (no cache: one quantum per detector).
        inputs = get_inputs_caching_calibrations(butlerQC, inputRefs, cached=())
        data_id = butlerQC.quantum.dataId
        outputs = self.run(
            inputs["inputExp"],
            bias=inputs.get("bias"),
            dark=inputs.get("dark"),
            defects=inputs.get("defects"),
            instrument=data_id["instrument"],
            detector=data_id["detector"],
        )
        butlerQC.put(outputs, outputRefs)

    # -- helpers ------------------------------------------------------------------

    @staticmethod
    def _flat_info(item: Any) -> tuple[ptc_algo.FlatExposure, str]:
        """Exposure id, exposure time and physical filter of one flat, and
        its observation type, from its data ID records when present, else
        from its header."""
        data_id = getattr(item, "dataId", None)
        if data_id is not None and data_id.hasRecords() and data_id.records["exposure"] is not None:
            rec = data_id.records["exposure"]
            info = ptc_algo.FlatExposure(
                int(data_id["exposure"]), float(rec.exposure_time), str(rec.physical_filter)
            )
            return info, str(rec.observation_type)
        md = item.metadata if isinstance(item, RawImage) else read_dataset_file(item, read_raw_header)
        if data_id is not None:
            exposure = int(data_id["exposure"])
        else:
            exposure = int(md.get("EXPOSURE", md.get("SEQNUM")))
        flt = str(md.get("FILTER", ""))
        if md.get("GRATING"):
            flt = f"{flt}~{md['GRATING']}"
        exptime = md.get("EXPTIME")
        info = ptc_algo.FlatExposure(exposure, math.nan if exptime is None else float(exptime), flt)
        return info, str(md.get("IMGTYPE") or "unknown").strip().lower()

    @staticmethod
    def _load(item: Any) -> RawImage:
        return item if isinstance(item, RawImage) else read_dataset_file(item, read_raw_file)

    def _to_adu(self, calib: MaskedImage | None, gains: dict[str, float], what: str) -> MaskedImage | None:
        """A bias/dark in electrons (per second) converted to ADU with the
        nominal gains (the ISR here works in ADU)."""
        if calib is None or not self.config.convertCalibUnits:
            return calib
        unit = calib.image.unit
        if unit is None:
            self.log.warning("The combined %s has no unit: assumed to be in ADU.", what)
            return calib
        unit = u.Unit(unit)
        if unit.is_equivalent(u.adu) or unit.is_equivalent(u.adu / u.s):
            return calib
        if not (unit.is_equivalent(u.electron) or unit.is_equivalent(u.electron / u.s)):
            raise CpInputError(f"the combined {what} is in {unit}: expected electrons or ADU")
        image, variance, mask = from_masked_image(calib)
        # Amplifier by amplifier, divided in float64 and stored in float32 (as
        # `to_masked_image` stores them) without full-size float64 temporaries.
        image_adu = np.empty(image.shape, dtype=np.float32)
        variance_adu = np.empty(variance.shape, dtype=np.float32)
        for amp, (ys, xs) in amp_regions(AmpLayout.from_detector_shape(image.shape)).items():
            g = float(gains[amp])
            np.divide(image[ys, xs], g, out=image_adu[ys, xs], dtype=np.float64)
            np.divide(variance[ys, xs], g * g, out=variance_adu[ys, xs], dtype=np.float64)
        new_unit = u.adu / u.s if unit.is_equivalent(u.electron / u.s) else u.adu
        return to_masked_image(image_adu, variance_adu, mask, unit=new_unit, metadata=dict(calib.metadata))

    # -- main -----------------------------------------------------------------------

    def run(
        self,
        inputExp: Sequence[Any],
        bias: MaskedImage | None = None,
        dark: MaskedImage | None = None,
        defects: Table | None = None,
        *,
        instrument: str,
        detector: int,
    ) -> Struct:
        """Pair, process and measure the flats of one detector.

        Parameters
        ----------
        inputExp
            Deferred handles of the raw flats (or `RawImage` objects).
        bias, dark
            Combined bias and dark (electrons, converted to ADU here).
        defects
            Defect table (optional): masked and left out.
        instrument, detector
            Data ID values.

        Returns
        -------
        struct
            ``outputCovariances``: `astropy.table.Table`, one row per (pair,
            amplifier); see `CpPtcExtractConnections.outputCovariances`.

        Raises
        ------
        CpInputError
            A pair mixing physical filters, no pair at all, a flat that is
            not a flat (from the ISR subtask).
        """
        cfg = self.config
        det = get_instrument(instrument).camera_description[detector]
        gains = {a.name: a.gain for a in det.amplifiers}
        items = {}
        flats = []
        for item in inputExp:
            info, obs_type = self._flat_info(item)
            if self.config.isr.imageType != "any" and obs_type != self.config.isr.imageType:
                raise CpInputError(
                    f"exposure {info.exposure_id} is a {obs_type.upper()}, not a "
                    f"{self.config.isr.imageType.upper()}: wrong image type in the query"
                )
            if not (math.isfinite(info.exp_time) and info.exp_time > self.config.isr.minExposureTime):
                raise CpInputError(f"flat {info.exposure_id} has exposure time {info.exp_time!r}: unusable")
            items[info.exposure_id] = item
            flats.append(info)
        try:
            pairing = ptc_algo.pair_flats(flats, rtol=cfg.timeRtol, atol=cfg.timeAtol)
        except ValueError as err:
            raise CpInputError(f"detector {det.name}: {err}") from None
        if not pairing.pairs:
            raise CpInputError(
                f"no flat pair for detector {det.name} among {len(flats)} flat(s): every exposure time has a "
                "single flat"
            )
        if pairing.unused:
            self.log.warning(
                "Detector %s: %d flat(s) not in any pair and ignored: %s.",
                det.name,
                len(pairing.unused),
                ", ".join(f"{f.exposure_id} ({f.exp_time:g} s)" for f in pairing.unused),
            )
        self.log.info("Detector %s: %d flat pairs from %d flats.", det.name, len(pairing.pairs), len(flats))
        bias_adu = self._to_adu(bias, gains, "bias")
        dark_adu = self._to_adu(dark, gains, "dark")
        bad_bits = bits(*cfg.badMaskPlanes)
        if cfg.fixedPatternNSigma > 0:
            bad_bits |= BIT["SUSPECT"]
        if isinstance(defects, (list, tuple)):
            defects = defects[0] if defects else None
        if defects is not None:
            self.log.info("Detector %s: %d defect boxes masked.", det.name, len(defects))
        nlag = cfg.maxLag + 1

        rows: list[dict[str, Any]] = []
        factor = math.nan
        for k, pair in enumerate(pairing.pairs):
            procs = []
            for flat in (pair.first, pair.second):
                out = self.isr.run(
                    self._load(items[flat.exposure_id]),
                    bias=bias_adu,
                    dark=dark_adu,
                    defects=defects,
                    instrument=instrument,
                    detector=detector,
                    exposure=flat.exposure_id,
                ).outputExposure
                image, _, mask = from_masked_image(out)
                procs.append((image, mask, dict(out.metadata)))
                del out
            (im1, m1, md1), (im2, m2, md2) = procs
            layout = AmpLayout.from_detector_shape(im1.shape)
            if math.isnan(factor):
                if 2 * cfg.edge >= min(layout.data_width, layout.data_height):
                    raise CpInputError(
                        f"the amplifiers of {det.name} are {layout.data_width}x{layout.data_height} pixels: "
                        f"an edge of {cfg.edge} px on each side leaves nothing to measure"
                    )
                factor = row_noise_factor(cfg.isr, layout)
            first_row = len(rows)
            for amp, (ys, xs) in amp_regions(layout).items():
                a1, a2, mask1, mask2 = im1[ys, xs], im2[ys, xs], m1[ys, xs], m2[ys, xs]
                n_fixed = 0
                if cfg.fixedPatternNSigma > 0:
                    outliers = ptc_algo.fixed_pattern_outliers(
                        a1, a2, mask1, mask2, bad_bits, cfg.fixedPatternNSigma, cfg.nIter
                    )
                    n_fixed = int(outliers.sum())
                    if n_fixed:
                        mask1 = mask1 | outliers.view(np.uint8) * np.uint8(BIT["SUSPECT"])
                m = ptc_algo.measure_pair(
                    a1,
                    a2,
                    mask1,
                    mask2,
                    bad_bits=bad_bits,
                    n_sigma=cfg.nSigma,
                    n_iter=cfg.nIter,
                    edge=cfg.edge,
                    max_lag=cfg.maxLag,
                    min_pixels=cfg.minPixels,
                    exp_time=pair.exp_time,
                    ids=pair.ids,
                )
                rn1 = float(md1.get(f"ISR_{amp}_OVERSCAN_NOISE_ADU", math.nan))
                rn2 = float(md2.get(f"ISR_{amp}_OVERSCAN_NOISE_ADU", math.nan))
                rn_os = math.sqrt(0.5 * (rn1 * rn1 + rn2 * rn2))
                level = 0.5 * (
                    float(md1.get(f"ISR_{amp}_OVERSCAN_LEVEL_ADU", math.nan))
                    + float(md2.get(f"ISR_{amp}_OVERSCAN_LEVEL_ADU", math.nan))
                )
                rows.append(
                    {
                        "pair": k,
                        "exposure1": int(pair.first.exposure_id),
                        "exposure2": int(pair.second.exposure_id),
                        "exp_time": float(pair.exp_time),
                        "mjd_start": min(_mjd_start(md1), _mjd_start(md2)),
                        "physical_filter": pair.first.physical_filter,
                        "amplifier": amp,
                        "measurement": m,
                        "overscan_noise_adu": rn_os,
                        "overscan_level_adu": level,
                        "read_noise_adu": rn_os * math.sqrt(factor),
                        "row_noise_factor": factor,
                        "n_fixed_pattern": n_fixed,
                    }
                )
            del procs, im1, im2, m1, m2
            if not any(r["measurement"].valid for r in rows[first_row:]):
                self.log.warning(
                    "Pair %s (%g s) of %s could not be measured on any amplifier: %s.",
                    pair.ids,
                    pair.exp_time,
                    det.name,
                    rows[-1]["measurement"].reason,
                )

        table = self._make_table(rows, nlag)
        self._quick_gains(table, rows, det.name, gains)
        md: dict[str, Any] = {"INSTRUME": instrument, "DETECTOR": int(detector), "DET_NAME": det.name}
        md.update(
            CPC_N_FLATS=len(flats),
            CPC_N_PAIRS=len(pairing.pairs),
            CPC_UNUSED=",".join(str(f.exposure_id) for f in pairing.unused),
            CPC_PAIRING_WARNINGS=" | ".join(pairing.warnings),
            CPC_NSIGMA=cfg.nSigma,
            CPC_NITER=cfg.nIter,
            CPC_EDGE=cfg.edge,
            CPC_MAXLAG=cfg.maxLag,
            CPC_ROW_NOISE_FACTOR=factor,
            CPC_ISR_SATURATION=bool(cfg.isr.doSaturation),
            CPC_QUICK_GAIN_COV_MAX_LAG=cfg.quickGainCovMaxLag,
        )
        table.meta.update(md)
        return Struct(outputCovariances=table)

    @staticmethod
    def _make_table(rows: list[dict[str, Any]], nlag: int) -> Table:
        n = len(rows)
        cov = np.full((n, nlag, nlag), np.nan)
        npairs = np.zeros((n, nlag, nlag))
        for i, r in enumerate(rows):
            m = r["measurement"]
            if m.cov is not None:
                cov[i] = m.cov[:nlag, :nlag]
                npairs[i] = m.cov_npairs[:nlag, :nlag]
        ms = [r["measurement"] for r in rows]
        table = Table(
            {
                "pair": np.array([r["pair"] for r in rows], dtype=np.int32),
                "exposure1": np.array([r["exposure1"] for r in rows], dtype=np.int64),
                "exposure2": np.array([r["exposure2"] for r in rows], dtype=np.int64),
                "exp_time": np.array([r["exp_time"] for r in rows]),
                "mjd_start": np.array([r["mjd_start"] for r in rows], dtype=np.float64),
                "physical_filter": np.array([r["physical_filter"] for r in rows], dtype=str),
                "amplifier": np.array([r["amplifier"] for r in rows], dtype=str),
                "mean1": np.array([m.mean1 for m in ms]),
                "mean2": np.array([m.mean2 for m in ms]),
                "mean": np.array([m.mean for m in ms]),
                "variance": np.array([m.variance for m in ms]),
                "npix": np.array([m.npix for m in ms], dtype=np.int64),
                "sat_fraction": np.array([m.sat_fraction for m in ms]),
                "valid": np.array([m.valid for m in ms], dtype=bool),
                "reason": np.array([m.reason or "" for m in ms], dtype=str),
                "covariance": cov,
                "cov_npairs": npairs,
                "overscan_noise_adu": np.array([r["overscan_noise_adu"] for r in rows]),
                "overscan_level_adu": np.array([r["overscan_level_adu"] for r in rows]),
                "read_noise_adu": np.array([r["read_noise_adu"] for r in rows]),
                "row_noise_factor": np.array([r["row_noise_factor"] for r in rows]),
                "n_fixed_pattern": np.array([r["n_fixed_pattern"] for r in rows], dtype=np.int64),
            }
        )
        for name in ("mean1", "mean2", "mean", "overscan_noise_adu", "overscan_level_adu", "read_noise_adu"):
            table[name].unit = u.adu
        table["variance"].unit = u.adu**2
        table["covariance"].unit = u.adu**2
        table["exp_time"].unit = u.s
        return table

    def _quick_gains(
        self, table: Table, rows: list[dict[str, Any]], detector_name: str, nominal_gains: dict[str, float]
    ) -> None:
        """Per-pair and per-amp gains from the flat pairs alone (columns
        ``gain_pair``, ``gain_pair_err``, ``gain_pair_used``, ``gain_quick``,
        ``gain_quick_err``; the per-amp values repeated on each of its rows)."""
        cfg = self.config
        n = len(rows)
        g_pair = np.full(n, np.nan)
        g_pair_err = np.full(n, np.nan)
        used = np.zeros(n, dtype=bool)
        g_amp = np.full(n, np.nan)
        g_amp_err = np.full(n, np.nan)
        amps = list(dict.fromkeys(r["amplifier"] for r in rows))
        for amp in amps:
            idx = [i for i, r in enumerate(rows) if r["amplifier"] == amp]
            ms = [rows[i]["measurement"] for i in idx]
            if cfg.quickGainMinShotNoiseRatio > 0:
                # Clipped (saturated) pairs: far less variance than the shot noise of their mean.
                g_nom = nominal_gains[amp]
                ms = [
                    dataclasses.replace(m, sat_fraction=1.0)
                    if m.valid and m.mean > 0 and m.variance < cfg.quickGainMinShotNoiseRatio * m.mean / g_nom
                    else m
                    for m in ms
                ]
            res = ptc_algo.gain_from_flat_pairs(
                ms,
                [rows[i]["read_noise_adu"] for i in idx],
                cov_max_lag=cfg.quickGainCovMaxLag,
                max_sat_fraction=cfg.quickGainMaxSatFraction,
            )
            g_pair[idx] = res.gains
            g_pair_err[idx] = res.gain_errs
            used[idx] = res.used
            g_amp[idx] = res.gain
            g_amp_err[idx] = res.gain_err
            table.meta[f"CPC_QUICK_GAIN_{amp}"] = float(res.gain)
            if not np.isfinite(res.gain):
                self.log.warning(
                    "Detector %s amp %s: no quick gain (no usable flat pair).", detector_name, amp
                )
        self.log.info(
            "Detector %s quick gains from flat pairs (covariances to lag %d): %s.",
            detector_name,
            cfg.quickGainCovMaxLag,
            ", ".join(f"{a} {table.meta[f'CPC_QUICK_GAIN_{a}']:.4f}" for a in amps),
        )
        table["gain_pair"] = g_pair
        table["gain_pair_err"] = g_pair_err
        table["gain_pair_used"] = used
        table["gain_quick"] = g_amp
        table["gain_quick_err"] = g_amp_err
        for name in ("gain_pair", "gain_pair_err", "gain_quick", "gain_quick_err"):
            table[name].unit = u.electron / u.adu
