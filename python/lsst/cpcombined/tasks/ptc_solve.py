"""Photon transfer curve, step 2: fit each amplifier's PTC and write the
``ptc`` calibration.

Per amplifier, the pair measurements of `CpPtcExtractTask` are fitted with
Astier et al. (2019) eq. 16 (`fit_ptc_measurements`: turnover and gap cuts,
5-sigma outlier rejection, flags).  Optionally the full covariance model
(eq. 20, `fit_full_covariance`) is fitted too.

The ``ptc`` product is ip_isr's PTC table, version 2.6
(`lsst.cpcombined.repo.calib_tables`), one row per amplifier:

* ``GAIN``, ``GAIN_ERR`` (e-/ADU; ``GAIN_UNADJUSTED`` the same), ``NOISE``,
  ``NOISE_ERR`` (e-: the amplifier read noise, ``sqrt(n00 /
  row_noise_factor)``, see ``correctOverscanNoise``), ``PTC_FIT_PARS`` =
  ``[a00, gain, n00]`` and their errors, ``PTC_FIT_CHI_SQ`` (reduced),
  ``PTC_TURNOFF`` (ADU, largest kept mean) and its sampling error;
* per flat pair (exposure-time order): ``INPUT_EXP_ID_PAIRS``,
  ``INPUT_EXP_PAIR_MJD_START``, ``RAW_EXP_TIMES``, ``RAW_MEANS``,
  ``RAW_VARS`` (ADU, ADU^2), ``RAW_DELTAS``, ``EXP_ID_MASK`` (kept in the
  fit), ``GAIN_LIST`` (per-pair quick gains), ``NOISE_LIST`` (overscan read
  noise, ADU), ``OVERSCAN_MEDIAN_LIST`` (and its median/sigma over the kept
  pairs), ``FINAL_MEANS``/``FINAL_VARS``/``FINAL_MODEL_VARS`` (NaN where not
  kept), ``COVARIANCES`` and ``COVARIANCES_SQRT_WEIGHTS`` (N x S x S);
* with ``doFullCovariance``: ``A_MATRIX``, ``B_MATRIX``, ``NOISE_MATRIX``
  (``fullCovarianceRange`` square; NaN otherwise);
* what ip_isr has no column for, as ``CPC_*`` columns: ``CPC_BAD``,
  ``CPC_FLAGS``, ``CPC_REASON``, ``CPC_GAIN_QUICK(_ERR)``,
  ``CPC_ROW_NOISE_FACTOR``, ``CPC_TURNOFF_ELECTRONS``, ``CPC_CHI2``,
  ``CPC_DOF``, ``CPC_FIT_STATUS``, ``CPC_N_POINTS``, ``CPC_N_KEPT``, the
  per-pair ``CPC_NPIX``, ``CPC_INVALID``, ``CPC_ABOVE_GAP``,
  ``CPC_SATURATED``, ``CPC_LOW_VARIANCE``, ``CPC_OUTLIER``,
  ``CPC_MODEL_VARIANCES`` (the model at every pair, for plots),
  ``CPC_COV_NPAIRS``, and the ``CPC_FULLCOV_*`` fit results.

A bad amplifier is listed in ``BAD_AMPS`` and has NaN gain, noise and fit
parameters: the parameters of a fit that must not be trusted are never
reported as if they were good.
`lsst.cpcombined.repo.calib_tables.ptc_amp_results` gives cp_combined's
per-amplifier view (``gain``, ``noise``, ``a00``, ``means``, ``kept``,
``flags``...).
"""

from __future__ import annotations

__all__ = ("CpPtcSolveConfig", "CpPtcSolveConnections", "CpPtcSolveTask")

import dataclasses
import math
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Table
from lsst.pex.config import Field, ListField
from lsst.pipe.base import PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct
from lsst.pipe.base import connectionTypes as cT

from ..algorithms import ptc as ptc_algo
from ..errors import CpInputError
from ..obs.instrument import get_instrument
from ..repo.calib_tables import PTC_CALIBCLS, PTC_SCHEMA, PTC_VERSION, calib_identity, ptc_table


class CpPtcSolveConnections(PipelineTaskConnections, dimensions=("instrument", "detector")):
    inputCovariances = cT.Input(
        name="cpcPtcExtract",
        doc="Per (flat pair, amplifier) measurements from CpPtcExtractTask.",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "detector"),
    )
    outputPtc = cT.Output(
        name="ptc",
        doc=(
            "Photon transfer curve in ip_isr's layout (version 2.6): one row per amplifier with gain, "
            "read noise, fit parameters, turnoff, their errors, the per-pair arrays, and cp_combined's "
            "flags as CPC_ columns."
        ),
        storageClass="PhotonTransferCurveDataset",
        dimensions=("instrument", "detector"),
        isCalibration=True,
    )


class CpPtcSolveConfig(PipelineTaskConfig, pipelineConnections=CpPtcSolveConnections):
    """Configuration of `CpPtcSolveTask` (defaults from the specification)."""

    minPairs = Field(
        dtype=int,
        doc=(
            "Minimum number of measured flat pairs (valid on at least one amplifier); fewer is an error "
            "since eq. 16 has 3 parameters.  Amps with fewer usable points than minPoints are flagged."
        ),
        default=3,
    )
    minPoints = Field(dtype=int, doc="Minimum number of points in an amplifier's fit.", default=3)
    initialA00 = Field(dtype=float, doc="Starting a00 (1/e-).", default=-2.0e-6)
    initialGain = Field(dtype=float, doc="Starting gain (e-/ADU).", default=1.5)
    initialN00 = Field(dtype=float, doc="Starting noise term n00 (e-^2).", default=25.0)
    a00Bounds = ListField(dtype=float, doc="Bounds of a00 (1/e-).", default=[-1.0e-4, 0.0])
    gainBounds = ListField(dtype=float, doc="Bounds of the gain (e-/ADU).", default=[0.1, 10.0])
    n00Bounds = ListField(dtype=float, doc="Bounds of n00 (e-^2).", default=[0.0, 2000.0])
    maxGapElectrons = Field(
        dtype=float,
        doc="Points above the first gap in mean larger than this (e-) are dropped; 0 disables the cut.",
        default=9000.0,
    )
    useNominalGainForGap = Field(
        dtype=bool,
        doc="Convert means to electrons with each amp's nominal gain for the gap cut (else initialGain).",
        default=True,
    )
    maxSatFraction = Field(
        dtype=float, doc="Pairs with more SAT pixels than this fraction are saturated.", default=0.01
    )
    turnoverNSigma = Field(dtype=float, doc="Variance drop (sigma) that marks the PTC turnover.", default=5.0)
    turnoverMinDrop = Field(dtype=float, doc="Minimum relative variance drop of the turnover.", default=0.0)
    turnoverConfirm = Field(dtype=int, doc="Points that may recover from a variance drop.", default=2)
    minShotNoiseRatio = Field(
        dtype=float,
        doc=(
            "A pair whose variance is below this fraction of the shot noise of its mean, "
            "C00 < minShotNoiseRatio * mean / nominal gain, is saturated (clipped by the full well or "
            "the ADC: an amp saturated everywhere, or pairs past the full well).  Live pixels stay above "
            "~0.55 (brighter-fatter: 0.75 at 150 ke-; nominal gains good to 20 %).  0 disables."
        ),
        default=0.25,
    )
    outlierNSigma = Field(dtype=float, doc="Outlier rejection threshold (sigma).", default=5.0)
    outlierIterations = Field(dtype=int, doc="Outlier rejection iterations.", default=2)
    correctOverscanNoise = Field(
        dtype=bool,
        doc=(
            "Report as 'noise' the amplifier read noise: the fitted noise term divided by the "
            "row_noise_factor of the extraction (the per-row overscan statistic adds its own variance, "
            "~2.7 % for a median of 58 columns, to every processed pixel).  'noise_fit' keeps the raw "
            "sqrt(n00) either way."
        ),
        default=True,
    )
    doFullCovariance = Field(
        dtype=bool,
        doc="Also fit the full covariance model (Astier et al. 2019, eq. 20) of each good amplifier.",
        default=False,
    )
    fullCovarianceRange = Field(
        dtype=int,
        doc="Lags 0..fullCovarianceRange-1 in each direction in the full covariance fit.",
        default=8,
    )

    def validate(self) -> None:
        super().validate()
        for name in ("a00Bounds", "gainBounds", "n00Bounds"):
            b = getattr(self, name)
            if len(b) != 2 or not b[0] < b[1]:
                raise ValueError(f"{name} must be [low, high] with low < high")
        if self.minPairs < 1 or self.minPoints < 3:
            raise ValueError("minPairs must be >= 1 and minPoints >= 3")
        if self.fullCovarianceRange < 1:
            raise ValueError("fullCovarianceRange must be >= 1")


class CpPtcSolveTask(PipelineTask):
    """Fit the PTC of each amplifier of one detector."""

    ConfigClass = CpPtcSolveConfig
    _DefaultName = "cpPtcSolve"
    config: CpPtcSolveConfig

    def runQuantum(self, butlerQC, inputRefs, outputRefs) -> None:
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        outputs = self.run(
            inputs["inputCovariances"], instrument=data_id["instrument"], detector=data_id["detector"]
        )
        butlerQC.put(outputs, outputRefs)

    def run(self, inputCovariances: Table, *, instrument: str, detector: int) -> Struct:
        """Fit every amplifier.

        Parameters
        ----------
        inputCovariances
            The ``cpcPtcExtract`` table.
        instrument, detector
            Data ID values.

        Returns
        -------
        struct
            ``outputPtc``: `astropy.table.Table` in ip_isr's PTC layout, one
            row per amplifier (see the module documentation).

        Raises
        ------
        CpInputError
            Fewer than ``minPairs`` measured flat pairs.
        """
        cfg = self.config
        det = get_instrument(instrument).camera_description[detector]
        table = inputCovariances
        pairs = np.unique(np.asarray(table["pair"]))
        measured = sorted({int(p) for p, v in zip(table["pair"], table["valid"], strict=False) if v})
        if len(measured) < cfg.minPairs:
            raise CpInputError(
                f"only {len(measured)} measured flat pair(s) for detector {det.name} (of {len(pairs)}; "
                f"minimum {cfg.minPairs}): a PTC needs more exposure times with two flats each"
            )
        amps = list(dict.fromkeys(str(a) for a in table["amplifier"]))
        nominal = {a.name: a.gain for a in det.amplifiers}
        start = (cfg.initialA00, cfg.initialGain, cfg.initialN00)
        bounds = (
            (cfg.a00Bounds[0], cfg.gainBounds[0], cfg.n00Bounds[0]),
            (cfg.a00Bounds[1], cfg.gainBounds[1], cfg.n00Bounds[1]),
        )
        rows: list[dict[str, Any]] = []
        for amp in amps:
            sub = table[np.asarray(table["amplifier"]) == amp]
            sub = sub[np.argsort(np.asarray(sub["pair"]), kind="stable")]
            ms = [_measurement(r) for r in sub]
            low = _low_variance(ms, nominal.get(amp, cfg.initialGain), cfg.minShotNoiseRatio)
            # Low-variance pairs enter the fit as saturated (every pair above the lowest one too).
            ms = [dataclasses.replace(m, sat_fraction=1.0) if lo else m for m, lo in zip(ms, low, strict=False)]
            res = ptc_algo.fit_ptc_measurements(
                ms,
                amp_name=amp,
                start=start,
                bounds=bounds,
                nominal_gain=nominal.get(amp) if cfg.useNominalGainForGap else None,
                max_gap_e=cfg.maxGapElectrons or None,
                max_sat_fraction=cfg.maxSatFraction,
                turnover_nsigma=cfg.turnoverNSigma,
                turnover_min_drop=cfg.turnoverMinDrop,
                turnover_confirm=cfg.turnoverConfirm,
                outlier_nsigma=cfg.outlierNSigma,
                outlier_iter=cfg.outlierIterations,
                min_points=cfg.minPoints,
            )
            if low.any():
                note = (
                    f"{int(low.sum())} of {len(ms)} pairs have a variance below {cfg.minShotNoiseRatio:g} of "
                    "the shot noise of their mean (clipped: saturated)"
                )
                valid = np.array([m.valid for m in ms])
                if low[valid].all():
                    note += "; amplifier saturated everywhere"
                res.reason = "; ".join(x for x in (note, res.reason) if x)
            rows.append(self._row(amp, sub, res, det.name, low))
        out = self._make_table(rows)
        if cfg.doFullCovariance:
            self._full_covariance(out, det.name)
        n_bad = int(np.count_nonzero(out["bad"]))
        if n_bad == len(out):
            self.log.error(
                "Every amplifier of %s has a bad PTC fit; the ptc is written with all amps flagged: %s",
                det.name,
                "; ".join(f"{a}: {r}" for a, r in zip(out["amplifier"], out["reason"], strict=False)),
            )
        md = calib_identity(
            "PTC",
            schema=PTC_SCHEMA,
            version=PTC_VERSION,
            calibcls=PTC_CALIBCLS,
            instrument=instrument,
            detector=detector,
            detector_name=det.name,
            detector_serial=det.serial,
            unset="",
        )
        md.update(
            CPC_N_PAIRS=len(pairs),
            CPC_N_MEASURED_PAIRS=len(measured),
            CPC_N_BAD_AMPS=n_bad,
            CPC_NOISE_CORRECTED=bool(cfg.correctOverscanNoise),
            CPC_FULL_COVARIANCE=bool(cfg.doFullCovariance),
        )
        cov_side = int(np.asarray(table["covariance"]).shape[-1])
        ptc = ptc_table(
            [_ptc_columns(row, cov_side) for row in out],
            n_pairs=int(np.asarray(out["means"]).shape[1]),
            cov_side=cov_side,
            fit_side=cfg.fullCovarianceRange,
            bad_amps=[str(a) for a, b in zip(out["amplifier"], out["bad"], strict=False) if b],
            metadata=md,
        )
        return Struct(outputPtc=ptc)

    def _row(
        self, amp: str, sub: Table, res: ptc_algo.PtcAmpResult, detector_name: str, low: np.ndarray
    ) -> dict[str, Any]:
        cfg = self.config
        factor = _column_median(sub, "row_noise_factor", default=1.0)
        n00, n00_err = res.n00, res.n00_err
        if cfg.correctOverscanNoise and math.isfinite(n00) and n00 > 0:
            noise = math.sqrt(n00 / factor)
            noise_err = n00_err / (2.0 * math.sqrt(n00 * factor))
        else:
            noise, noise_err = res.noise, res.noise_err
        quick = _column_median(sub, "gain_quick", default=math.nan)
        quick_err = _column_median(sub, "gain_quick_err", default=math.nan)
        nan = math.nan
        if res.bad:
            # Never report the parameters of a bad fit as if they were good.
            gain = gain_err = noise = noise_err = n00 = n00_err = a00 = a00_err = nan
            model = np.full(res.means.shape, nan)
            kept = 0
        else:
            gain, gain_err, a00, a00_err = res.gain, res.gain_err, res.a00, res.a00_err
            model = res.model(np.where(np.isfinite(res.means), res.means, 0.0))
            kept = int(np.count_nonzero(res.kept))
        if res.bad:
            self.log.warning(
                "Detector %s amp %s: bad PTC (%s): %s.", detector_name, amp, ",".join(res.flags), res.reason
            )
        else:
            self.log.info(
                "Detector %s amp %s: gain %.4f ± %.4f e-/ADU, noise %.2f ± %.2f e-, a00 %.3g ± %.2g, "
                "turnoff %.0f ADU, %d/%d points%s.",
                detector_name,
                amp,
                res.gain,
                res.gain_err,
                noise,
                noise_err,
                res.a00,
                res.a00_err,
                res.turnoff,
                kept,
                len(res.means),
                f" (warnings: {','.join(res.flags)})" if res.flags else "",
            )
        return {
            "amplifier": amp,
            "gain": gain,
            "gain_err": gain_err,
            "noise": noise,
            "noise_err": noise_err,
            "noise_fit": math.sqrt(n00) if n00 >= 0 else nan,
            "n00": n00,
            "n00_err": n00_err,
            "row_noise_factor": factor,
            "a00": a00,
            "a00_err": a00_err,
            "turnoff": res.turnoff,
            "turnoff_electrons": res.turnoff * gain,
            "gain_quick": quick,
            "gain_quick_err": quick_err,
            "chi2": res.chi2,
            "dof": res.dof,
            "fit_status": res.fit_status,
            "n_points": len(res.means),
            "n_kept": kept,
            "bad": bool(res.bad),
            "flags": ",".join(res.flags),
            "reason": res.reason,
            "exposure1": np.asarray(sub["exposure1"], dtype=np.int64),
            "exposure2": np.asarray(sub["exposure2"], dtype=np.int64),
            "exp_times": np.asarray(res.exp_times, dtype=np.float64),
            "means": np.asarray(res.means, dtype=np.float64),
            "variances": np.asarray(res.variances, dtype=np.float64),
            "model_variances": np.asarray(model, dtype=np.float64),
            "npix": np.asarray(res.npix, dtype=np.float64),
            "kept": np.asarray(res.kept, dtype=bool) & (not res.bad),
            "invalid": np.asarray(res.invalid, dtype=bool),
            "above_gap": np.asarray(res.above_gap, dtype=bool),
            "saturated": np.asarray(res.saturated, dtype=bool),
            "low_variance": np.asarray(low, dtype=bool),
            "outlier": np.asarray(res.outlier, dtype=bool),
            "covariances": np.asarray(sub["covariance"], dtype=np.float64),
            "cov_npairs": np.asarray(sub["cov_npairs"], dtype=np.float64),
            "deltas": np.asarray(sub["mean2"], dtype=np.float64) - np.asarray(sub["mean1"], dtype=np.float64),
            "mjd_start": _column(sub, "mjd_start"),
            "overscan_levels": _column(sub, "overscan_level_adu"),
            "overscan_noises": _column(sub, "overscan_noise_adu"),
            "gain_pairs": _column(sub, "gain_pair"),
        }

    @staticmethod
    def _make_table(rows: list[dict[str, Any]]) -> Table:
        names = list(rows[0])
        cols = {}
        for name in names:
            values = [r[name] for r in rows]
            if isinstance(values[0], str):
                cols[name] = np.array(values, dtype=str)
            else:
                cols[name] = np.array(values)
        table = Table(cols)
        for name in ("gain", "gain_err", "gain_quick", "gain_quick_err"):
            table[name].unit = u.electron / u.adu
        for name in ("noise", "noise_err", "noise_fit", "turnoff_electrons"):
            table[name].unit = u.electron
        for name in ("n00", "n00_err"):
            table[name].unit = u.electron**2
        for name in ("a00", "a00_err"):
            table[name].unit = 1 / u.electron
        for name in ("turnoff", "means"):
            table[name].unit = u.adu
        for name in ("variances", "model_variances", "covariances"):
            table[name].unit = u.adu**2
        table["exp_times"].unit = u.s
        return table

    def _full_covariance(self, table: Table, detector_name: str) -> None:
        """Add the eq. 20 fit of each good amp (``fullcov_*`` columns)."""
        r = self.config.fullCovarianceRange
        n = len(table)
        gain = np.full(n, np.nan)
        gain_err = np.full(n, np.nan)
        a = np.full((n, r, r), np.nan)
        a_err = np.full((n, r, r), np.nan)
        b = np.full((n, r, r), np.nan)
        noise = np.full((n, r, r), np.nan)
        chi2 = np.full(n, np.nan)
        bad = np.ones(n, dtype=bool)
        flags = [""] * n
        for i, row in enumerate(table):
            if row["bad"]:
                flags[i] = "EQ16_FIT_BAD"
                continue
            if row["covariances"].shape[-1] < r:
                flags[i] = "LAGS_TOO_SHORT"
                continue
            res = ptc_algo.fit_full_covariance(
                row["means"],
                row["covariances"],
                row["cov_npairs"],
                kept=row["kept"],
                r=r,
                gain0=float(row["gain"]),
                a00_0=float(row["a00"]),
                n00_0=float(row["n00"]),
            )
            gain[i], gain_err[i], bad[i] = res.gain, res.gain_err, res.bad
            chi2[i] = res.chi2 / max(res.dof, 1)
            a[i], a_err[i], b[i], noise[i] = res.a, res.a_err, res.b, res.noise
            flags[i] = ",".join(res.flags)
            self.log.info(
                "Detector %s amp %s: full covariance fit gain %.4f ± %.4f, a00 %.3g%s.",
                detector_name,
                row["amplifier"],
                res.gain,
                res.gain_err,
                res.a[0, 0],
                f" (flags {flags[i]})" if flags[i] else "",
            )
        table["fullcov_gain"] = gain
        table["fullcov_gain_err"] = gain_err
        table["fullcov_a"] = a
        table["fullcov_a_err"] = a_err
        table["fullcov_b"] = b
        table["fullcov_noise"] = noise
        table["fullcov_chi2_dof"] = chi2
        table["fullcov_bad"] = bad
        table["fullcov_flags"] = np.array(flags, dtype=str)


def _column(table: Table, name: str) -> np.ndarray:
    """A float column of the extract table (NaN if the table has none)."""
    if name not in table.colnames:
        return np.full(len(table), np.nan)
    return np.asarray(table[name], dtype=np.float64)


def _turnoff_sampling_error(means: np.ndarray, kept: np.ndarray) -> float:
    """Half the spacing of the points around the turnoff, as cp_pipe
    computes it (the whole spacing below it for the last point)."""
    order = np.argsort(np.where(np.isfinite(means), means, np.inf), kind="stable")
    mu, keep = means[order], kept[order]
    if np.count_nonzero(keep) < 2:
        return math.nan
    last = int(np.nonzero(keep)[0][-1])
    below = mu[last - 1]
    if last == len(mu) - 1 or not np.isfinite(mu[last + 1]):
        return float(mu[last] - below)
    return float((mu[last + 1] - below) / 2.0)


def _ptc_columns(row: Any, cov_side: int) -> dict[str, Any]:
    """ip_isr PTC columns (and ``CPC_`` extras) of one amplifier's row of
    the solve's own table."""
    kept = np.asarray(row["kept"], dtype=bool)
    means = np.asarray(row["means"], dtype=np.float64)
    variances = np.asarray(row["variances"], dtype=np.float64)
    model = np.asarray(row["model_variances"], dtype=np.float64)
    npix = np.asarray(row["npix"], dtype=np.float64)
    cov = np.asarray(row["covariances"], dtype=np.float64)
    npairs = np.asarray(row["cov_npairs"], dtype=np.float64)
    levels = np.asarray(row["overscan_levels"], dtype=np.float64)
    bad = bool(row["bad"])
    n = len(means)
    # Weights of the covariances as cp_pipe's extraction defines them:
    # 1/sqrt(Var(C_ij)) with Var(C_ij) = C00^2/n_ij (twice that for C00).
    c00 = cov[:, :1, :1] if n else np.zeros((0, 1, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        vcov = c00**2 / npairs
        vcov[:, 0, 0] *= 2.0
        weights = np.nan_to_num(1.0 / np.sqrt(vcov), nan=0.0, posinf=0.0, neginf=0.0)
    level_kept = levels[kept & np.isfinite(levels)]
    if bad or level_kept.size == 0:
        level_median = level_sigma = math.nan
    else:
        level_median = float(np.median(level_kept))
        level_sigma = float(1.4826 * np.median(np.abs(level_kept - level_median)))
    valid_npix = npix[np.isfinite(npix) & (npix > 0)]
    gain = float(row["gain"])
    dof = float(row["dof"])
    chi2 = float(row["chi2"])
    out: dict[str, Any] = {
        "AMPLIFIER_NAME": str(row["amplifier"]),
        "INPUT_EXP_ID_PAIRS": np.stack(
            [np.asarray(row[f"exposure{k}"], dtype=np.int64) for k in (1, 2)], axis=-1
        ),
        "INPUT_EXP_PAIR_MJD_START": np.asarray(row["mjd_start"], dtype=np.float64),
        "EXP_ID_MASK": kept,
        "EXP_ID_ROLLOFF_MASK": np.zeros(n, dtype=bool),
        "RAW_EXP_TIMES": np.asarray(row["exp_times"], dtype=np.float64),
        "RAW_MEANS": means,
        "RAW_VARS": variances,
        "RAW_DELTAS": np.asarray(row["deltas"], dtype=np.float64),
        "GAIN": gain,
        "GAIN_ERR": float(row["gain_err"]),
        "GAIN_UNADJUSTED": gain,
        "GAIN_LIST": np.asarray(row["gain_pairs"], dtype=np.float64),
        "OVERSCAN_MEDIAN_LIST": levels,
        "OVERSCAN_MEDIAN": level_median,
        "OVERSCAN_MEDIAN_SIGMA": level_sigma,
        "NOISE_LIST": np.asarray(row["overscan_noises"], dtype=np.float64),
        "NOISE": float(row["noise"]),
        "NOISE_ERR": float(row["noise_err"]),
        "PTC_FIT_PARS": [float(row["a00"]), gain, float(row["n00"])],
        "PTC_FIT_PARS_ERROR": [float(row["a00_err"]), float(row["gain_err"]), float(row["n00_err"])],
        "PTC_FIT_CHI_SQ": chi2 / dof if dof > 0 and math.isfinite(chi2) else math.nan,
        "PTC_TURNOFF": float(row["turnoff"]),
        "PTC_TURNOFF_SAMPLING_ERROR": math.nan if bad else _turnoff_sampling_error(means, kept),
        "NPIXEL_COVARIANCES": int(np.median(valid_npix)) if valid_npix.size else -1,
        "COVARIANCES": cov.reshape(n, cov_side, cov_side),
        "COVARIANCES_SQRT_WEIGHTS": weights.reshape(n, cov_side, cov_side),
        "FINAL_VARS": np.where(kept, variances, np.nan),
        "FINAL_MODEL_VARS": np.where(kept, model, np.nan),
        "FINAL_MEANS": np.where(kept, means, np.nan),
        "CPC_BAD": bad,
        "CPC_FLAGS": str(row["flags"]),
        "CPC_REASON": str(row["reason"]),
        "CPC_GAIN_QUICK": float(row["gain_quick"]),
        "CPC_GAIN_QUICK_ERR": float(row["gain_quick_err"]),
        "CPC_ROW_NOISE_FACTOR": float(row["row_noise_factor"]),
        "CPC_TURNOFF_ELECTRONS": float(row["turnoff_electrons"]),
        "CPC_CHI2": chi2,
        "CPC_DOF": int(row["dof"]),
        "CPC_FIT_STATUS": int(row["fit_status"]),
        "CPC_N_POINTS": int(row["n_points"]),
        "CPC_N_KEPT": int(row["n_kept"]),
        "CPC_NPIX": npix,
        "CPC_INVALID": np.asarray(row["invalid"], dtype=bool),
        "CPC_ABOVE_GAP": np.asarray(row["above_gap"], dtype=bool),
        "CPC_SATURATED": np.asarray(row["saturated"], dtype=bool),
        "CPC_LOW_VARIANCE": np.asarray(row["low_variance"], dtype=bool),
        "CPC_OUTLIER": np.asarray(row["outlier"], dtype=bool),
        "CPC_MODEL_VARIANCES": model,
        "CPC_COV_NPAIRS": npairs.reshape(n, cov_side * cov_side).ravel(),
    }
    if "fullcov_gain" in row.colnames:
        out.update(
            A_MATRIX=np.asarray(row["fullcov_a"], dtype=np.float64).ravel(),
            B_MATRIX=np.asarray(row["fullcov_b"], dtype=np.float64).ravel(),
            NOISE_MATRIX=np.asarray(row["fullcov_noise"], dtype=np.float64).ravel(),
            CPC_FULLCOV_GAIN=float(row["fullcov_gain"]),
            CPC_FULLCOV_GAIN_ERR=float(row["fullcov_gain_err"]),
            CPC_FULLCOV_A_ERR=np.asarray(row["fullcov_a_err"], dtype=np.float64).ravel(),
            CPC_FULLCOV_CHI2_DOF=float(row["fullcov_chi2_dof"]),
            CPC_FULLCOV_BAD=bool(row["fullcov_bad"]),
            CPC_FULLCOV_FLAGS=str(row["fullcov_flags"]),
        )
    return out


def _measurement(row: Any) -> ptc_algo.PairMeasurement:
    """A `PairMeasurement` from one row of the extract table."""
    valid = bool(row["valid"])
    return ptc_algo.PairMeasurement(
        mean1=float(row["mean1"]),
        mean2=float(row["mean2"]),
        mean=float(row["mean"]),
        variance=float(row["variance"]),
        cov=np.asarray(row["covariance"]) if valid else None,
        cov_npairs=np.asarray(row["cov_npairs"]) if valid else None,
        npix=int(row["npix"]),
        sat_fraction=float(row["sat_fraction"]),
        exp_time=float(row["exp_time"]),
        ids=(int(row["exposure1"]), int(row["exposure2"])),
        valid=valid,
        reason=str(row["reason"]),
    )


def _low_variance(ms: list[ptc_algo.PairMeasurement], gain: float, ratio: float) -> np.ndarray:
    """Pairs whose variance is below ``ratio`` times the shot noise of their
    mean (``mean / gain``): pixel distributions clipped by saturation."""
    out = np.zeros(len(ms), dtype=bool)
    if not ratio:
        return out
    for k, m in enumerate(ms):
        if m.valid and np.isfinite(m.mean) and m.mean > 0 and np.isfinite(m.variance):
            out[k] = m.variance < ratio * m.mean / gain
    return out


def _column_median(table: Table, name: str, default: Any) -> Any:
    """Median of the finite values of a column (``default`` if none)."""
    if name not in table.colnames:
        return default
    values = np.asarray(table[name], dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else default
