"""Verification statistics and DMTN-101-style tests of calibrations, with
results in cp_verify's dictionary shapes.

The functions here work on one ISR-processed *verification* frame at a time
(a raw re-processed with the calibration under test: a bias, dark or flat
exposure in electrons) and merge the per-amplifier results into detector,
exposure and run dictionaries laid out exactly as cp_verify lays out
``verify<Type>DetStats``, ``verify<Type>ExpStats`` and ``verify<Type>Stats``,
so that cp_verify's merge tasks, the ScriptQueue script and our own decision
read either package's outputs alike.  Everything returned is a plain ``dict``
of ``str``/``int``/``float``/``bool``/``list``/``dict`` values, so it can be
written as YAML as it is (``NaN`` marks a statistic that could not be
computed; PyYAML round-trips it; run dictionaries have integer keys, which
YAML keeps and JSON would not).

Statistics (per amplifier, `amp_statistics`)
--------------------------------------------
Pixels whose mask has any of `StatsConfig.mask_planes` set (default
``DETECTED``, ``BAD``, ``NO_DATA``) or that are not finite are ignored.

``MEAN``
    Plain mean of the remaining pixels.
``MEANCLIP``
    Sigma-clipped mean (`clipped_stats`: 5σ, 3 iterations by default).
``NOISE``
    Sigma-clipped standard deviation (same clipping).
``READ_NOISE``, ``READ_NOISE_ADU``
    Read noise in electrons, either given by the caller or measured on the
    serial overscan with `read_noise_from_overscan`, and the overscan noise
    in ADU (cp_verify's ``READ_NOISE_ADU``).
``CR_NOISE``, ``CR_OVERFLOW``
    Clipped standard deviation after cosmic-ray repair and whether that
    repair overflowed; both are computed elsewhere (cosmic-ray module) and
    only carried here.
``AMP_CORNER``
    Plain mean of the unmasked pixels of a box (200 × 200 by default) at the
    amplifier's readout corner (`readout_corner_region`).
``GAIN``
    Gain (e-/ADU) of the amplifier, needed by the flat ``NOISE`` test.
``N_PIXELS``, ``N_CLIPPED``
    Number of unmasked finite pixels, and how many of them clipping rejected.

Tests (section 4 of the specification, thresholds in `VerifyThresholds`)
------------------------------------------------------------------------
bias, dark — amplifier level:

``MEAN``        ``|MEANCLIP| < NOISE``
``NOISE``       ``(NOISE - READ_NOISE) / READ_NOISE <= noise`` (0.05)
``CR_NOISE``    ``|NOISE - CR_NOISE| / CR_NOISE <= cr_noise`` (0.05)
``PROCESSING``  cosmic-ray repair did not overflow
``LEVEL``       ``|CALIB_LEVEL| <= bias_level`` (50 e-) or ``dark_level``
                (1 e-/s): the median of the amplifier in the calibration
                under test (an addition of this package: a bias or dark
                with a level offset in every input verifies internally —
                each frame minus the same offset — but is wrong; in the
                majority rule it fails the calibration when most amplifiers
                have it)

flat — amplifier level (see `flat_metrics`):

``NOISE``           ``NOISE_ADU <= sqrt(MEAN_ADU)`` with ``NOISE_ADU =
                    NOISE / GAIN`` and ``MEAN_ADU = MEANCLIP / GAIN`` — in
                    ADU (in electrons the test could never pass: read noise
                    adds to the shot noise, and it passes in ADU only because
                    the gain exceeds 1 by more than ``READ_NOISE**2 /
                    MEANCLIP``).
``POISSON_NOISE``   only when `VerifyThresholds.flat_poisson` is on:
                    ``POISSON_RATIO = NOISE / sqrt(MEANCLIP + READ_NOISE**2)
                    <= 1 + flat_poisson_tolerance``.  The ratio is always
                    reported.

flat — detector level: ``SCATTER`` ``std(amp MEANCLIP) / mean(amp MEANCLIP)
<= detector_scatter`` (0.05).  flat — exposure level: ``SCATTER``
``std(detector MEAN) / mean(detector MEAN) <= exposure_scatter`` (0.05),
where a detector's ``MEAN`` is the mean of its amplifiers' ``MEANCLIP``.
Standard deviations of means are population ones (``ddof=0``).

Any comparison involving ``NaN`` fails (a missing read noise, ``CR_NOISE``
or gain is a failure, never a silent pass) except that a flat without a gain
raises `ValueError`, since its ``NOISE`` test is then meaningless.

Where the numbers differ from cp_verify's (same names, same places)
---------------------------------------------------------------------
- bias/dark ``MEAN`` compares the *clipped* mean with the noise (cp_verify:
  the plain mean, which one cosmic ray can move); ``AMP.MEAN`` holds the
  plain mean as cp_verify's does.
- bias/dark ``NOISE`` uses the read noise measured on each amplifier's
  overscan by our ISR, in electrons (cp_verify: the PTC read noise from the
  ISR header); ``PROCESSING`` is always present (cp_verify writes it only
  when it fails).  cp_verify's ``READ_NOISE_CONSISTENT`` check (outside
  ``SUCCESS``) is not made.
- flat ``NOISE`` is compared in ADU (cp_verify compares electrons).
- flat ``DET.MEAN`` and ``DET.SCATTER`` are the mean and the absolute
  (``ddof=0``) standard deviation of the amplifiers' *clipped* means; the
  detector test is ``SCATTER / MEAN`` as in cp_verify.
- flat exposure ``EXP.SCATTER`` is *normalised*, ``std/mean`` of the
  detector means (cp_verify stores and tests the absolute standard deviation
  against 0.05, which only makes sense for means near 1).

Dictionaries
------------
Detector level (`verify_detector`), cp_verify's keys in cp_verify's order::

    {"AMP": {amp: {"MEAN", "NOISE", "CR_NOISE"[, "AMP_CORNER"]}},  # flat: MEAN, NOISE
     "METADATA": {"READ_NOISE_ADU": {amp: float}},                 # flat: {}
     "CATALOG": {},
     "DET": {},                                                    # flat: {"MEAN", "SCATTER"}
     "VERIFY": {"AMP": {amp: {test: bool, ..., "SUCCESS": bool}}[, "DET": {"SCATTER", "SUCCESS"}]},
     "SUCCESS": bool,
     ...}

followed by our own dict-valued keys (cp_verify's merges never read them):
``CPC_IDENTITY`` (calibration type, exposure, detector name, ...),
``CPC_AMP`` (the other per-amplifier statistics: ``MEANCLIP``,
``READ_NOISE``, ``GAIN``, ``N_PIXELS``, ... and for a flat `flat_metrics`)
and ``CPC_DET`` (``MEAN``, ``NOISE`` and the normalised ``REL_SCATTER`` of
the amplifier means); the verification task adds ``CPC_CALIBRATIONS``,
``CPC_THRESHOLDS`` and ``CPC_PROCESSING``.

Exposure level (`verify_exposure`), keyed by detector *name*, and nothing
else at the top level::

    {"R22_S11": {"SUCCESS": False, "FAILURES": ["C10 NOISE", "SCATTER"]},
     "R22_S12": {"SUCCESS": True},
     ["EXP": {"SCATTER": float}, "VERIFY": {"EXP": {"SCATTER": bool}},]   # flat only
     "SUCCESS": bool}

Run level (`verify_run`), keyed by the *integer* exposure id, and nothing
else at the top level::

    {2026112500012: {"SUCCESS": False, "FAILURES": ["R22_S11 C10 NOISE", "SCATTER"]},
     2026112500013: {"SUCCESS": True},
     "SUCCESS": bool}

Failure strings are space-separated tokens whose *last* token is always the
test name (what the ScriptQueue script and the majority rule count):

================================  =====================================
where                             string
================================  =====================================
exposure level, amplifier test    ``"<amp> <TEST>"``, e.g. ``"C10 NOISE"``
exposure level, detector test     ``"<TEST>"``, e.g. ``"SCATTER"``
run level, amplifier test         ``"<detector> <amp> <TEST>"``
run level, detector test          ``"<detector> <TEST>"``
run level, exposure test          ``"<TEST>"``
================================  =====================================

A test is listed only when its value is the boolean `False`, and only for a
level whose ``SUCCESS`` is not `True`, as cp_verify's merge does.  Our run
level lists the detector and amplifier failures of flats too (cp_verify's
lists only the exposure-level ``SCATTER`` of flats, because its flat
exposure dictionaries carry a ``VERIFY`` key).  Detector, amplifier and
exposure names must contain no white space (`ValueError` otherwise).

Results tables (`results_rows`) have cp_verify's columns — ``instrument``,
``exposure``, ``detector`` (id), [``physical_filter``], ``mjd``,
``amplifier``, ``<STAGE>_<stat>``, ``<STAGE>_VERIFY_<test>``,
``<STAGE>_VERIFY_SUCCESS``, ``<STAGE>_READ_NOISE_ADU``, flat
``FLAT_DET_MEAN``/``FLAT_DET_SCATTER``/``FLAT_DET_VERIFY_SCATTER`` — plus
``<STAGE>_<stat>`` for our other statistics; one row per amplifier (the flat
detector values are repeated on each amplifier's row instead of cp_verify's
extra detector row).
"""

from __future__ import annotations

__all__ = (
    "AMP_TESTS",
    "CALIB_TYPES",
    "CP_VERIFY_AMP_STATS",
    "DETECTOR_TESTS",
    "EXPOSURE_SUMMARY_KEYS",
    "EXPOSURE_TESTS",
    "STAGE_NAMES",
    "ClippedStats",
    "StatsConfig",
    "VerifyThresholds",
    "amp_statistics",
    "amp_tests",
    "calibration_level",
    "clipped_stats",
    "detector_failures",
    "detector_statistics",
    "exposure_detectors",
    "exposure_failures",
    "flat_metrics",
    "read_noise_from_overscan",
    "readout_corner_region",
    "results_rows",
    "results_table",
    "scatter",
    "tests_for",
    "verify_detector",
    "verify_exposure",
    "verify_run",
)

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from astropy.table import Table

from . import masks
from .combine import as_rows, regular_subsample, window_moments

#: Calibration types that can be verified.
CALIB_TYPES: tuple[str, ...] = ("bias", "dark", "flat")

#: cp_verify's stage name of each type: prefix of the results table columns.
STAGE_NAMES: dict[str, str] = {"bias": "BIAS", "dark": "DARK", "flat": "FLAT"}

#: The statistics in cp_verify's detector-level ``AMP`` dictionary, in its
#: order; our other statistics go to ``CPC_AMP``.
CP_VERIFY_AMP_STATS: dict[str, tuple[str, ...]] = {
    "bias": ("MEAN", "NOISE", "CR_NOISE", "AMP_CORNER"),
    "dark": ("MEAN", "NOISE", "CR_NOISE"),
    "flat": ("MEAN", "NOISE"),
}

#: Top-level keys of an exposure dictionary that are not detector names.
EXPOSURE_SUMMARY_KEYS: frozenset[str] = frozenset({"EXP", "VERIFY", "SUCCESS"})

#: Amplifier-level tests per calibration type (``POISSON_NOISE`` is added to
#: the flat tests when `VerifyThresholds.flat_poisson` is on).
AMP_TESTS: dict[str, tuple[str, ...]] = {
    "bias": ("MEAN", "NOISE", "CR_NOISE", "PROCESSING"),
    "dark": ("MEAN", "NOISE", "CR_NOISE", "PROCESSING"),
    "flat": ("NOISE",),
}

#: Detector-level tests per calibration type.
DETECTOR_TESTS: dict[str, tuple[str, ...]] = {"bias": (), "dark": (), "flat": ("SCATTER",)}

#: Exposure-level tests per calibration type.
EXPOSURE_TESTS: dict[str, tuple[str, ...]] = {"bias": (), "dark": (), "flat": ("SCATTER",)}

#: 1 / (2 * 0.6745): converts an inter-quartile range to a Gaussian sigma.
_IQR_TO_SIGMA = 0.741301109252801


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """How the per-amplifier statistics are measured.

    Attributes
    ----------
    n_sigma : `float`
        Clipping threshold in units of the current standard deviation.
    n_iter : `int`
        Number of clipping iterations.
    mask_planes : `tuple` [`str`, ...]
        Mask planes (names in `lsst.cpcombined.algorithms.masks.BIT`) whose
        pixels are ignored.
    """

    n_sigma: float = 5.0
    n_iter: int = 3
    mask_planes: tuple[str, ...] = ("DETECTED", "BAD", "NO_DATA")

    def __post_init__(self) -> None:
        if not self.n_sigma > 0:
            raise ValueError(f"n_sigma must be positive, not {self.n_sigma}")
        if self.n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, not {self.n_iter}")
        masks.bits(*self.mask_planes)  # unknown plane names raise KeyError

    @property
    def bad_bits(self) -> int:
        """Bitmask of `mask_planes`."""
        return masks.bits(*self.mask_planes)


@dataclasses.dataclass(frozen=True)
class VerifyThresholds:
    """Thresholds of the verification tests (defaults from the specification).

    Attributes
    ----------
    noise : `float`
        bias/dark ``NOISE``: largest allowed ``(NOISE - READ_NOISE) /
        READ_NOISE``.
    cr_noise : `float`
        bias/dark ``CR_NOISE``: largest allowed ``|NOISE - CR_NOISE| /
        CR_NOISE``.
    flat_poisson : `bool`
        Also run the stricter flat ``POISSON_NOISE`` test.
    flat_poisson_tolerance : `float`
        flat ``POISSON_NOISE``: largest allowed ``POISSON_RATIO - 1``.
    detector_scatter : `float`
        flat detector ``SCATTER``: largest allowed ``std/mean`` of the amp
        means.
    exposure_scatter : `float`
        flat exposure ``SCATTER``: largest allowed ``std/mean`` of the
        detector means.
    bias_level : `float` or `None`
        bias ``LEVEL``: largest allowed ``|CALIB_LEVEL|`` (e-), the median
        level of an amplifier of the bias under test; `None` disables it.
    dark_level : `float` or `None`
        dark ``LEVEL``: largest allowed ``|CALIB_LEVEL|`` (e-/s) of the dark
        under test; `None` disables it.
    """

    noise: float = 0.05
    cr_noise: float = 0.05
    flat_poisson: bool = False
    flat_poisson_tolerance: float = 0.05
    detector_scatter: float = 0.05
    exposure_scatter: float = 0.05
    bias_level: float | None = 50.0
    dark_level: float | None = 1.0


class ClippedStats(NamedTuple):
    """Result of `clipped_stats`."""

    mean: float
    std: float
    n_used: int
    n_total: int


def _check_type(calib_type: str) -> str:
    if calib_type not in CALIB_TYPES:
        raise ValueError(f"Unknown calibration type {calib_type!r}; expected one of {CALIB_TYPES}")
    return calib_type


def _check_name(kind: str, name: Any) -> str:
    text = str(name)
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"{kind} name {text!r} must be non-empty and contain no white space")
    return text


def _py(value: Any) -> Any:
    """Convert numpy scalars (recursively inside containers) to Python types;
    integer keys stay integers, other keys become strings."""
    if isinstance(value, dict):
        return {
            (int(k) if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else str(k)): _py(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_py(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def tests_for(calib_type: str, thresholds: VerifyThresholds | None = None) -> dict[str, tuple[str, ...]]:
    """Names of the tests run for ``calib_type`` at each level.

    Returns
    -------
    names : `dict`
        ``{"amp": (...), "detector": (...), "exposure": (...)}``.
    """
    thresholds = thresholds or VerifyThresholds()
    amp = AMP_TESTS[_check_type(calib_type)]
    if calib_type == "flat" and thresholds.flat_poisson:
        amp = amp + ("POISSON_NOISE",)
    if _level_threshold(calib_type, thresholds) is not None:
        amp = amp + ("LEVEL",)
    return {"amp": amp, "detector": DETECTOR_TESTS[calib_type], "exposure": EXPOSURE_TESTS[calib_type]}


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


#: Largest number of values whose quartiles seed `clipped_stats` exactly.
_QUARTILE_SAMPLE = 50_000


def clipped_stats(values: np.ndarray, n_sigma: float = 5.0, n_iter: int = 3) -> ClippedStats:
    """Iteratively sigma-clipped mean and standard deviation.

    The first clipping is centred on the median with a width estimated from
    the inter-quartile range (robust against the outliers being clipped);
    each following one is centred on the mean of the values kept by the
    previous iteration, with their standard deviation.  Exactly ``n_iter``
    clippings are made (fewer only if fewer than 2 values would remain); the
    result is the mean and standard deviation of the values kept by the last
    one.

    Parameters
    ----------
    values : `numpy.ndarray`
        Values of any shape; non-finite values are ignored.
    n_sigma : `float`
        Values further than ``n_sigma`` standard deviations from the centre
        are rejected.
    n_iter : `int`
        Maximum number of clipping iterations (0: plain mean and std).

    Returns
    -------
    stats : `ClippedStats`
        Mean and standard deviation (``ddof=1``) of the kept values, the
        number kept and the number of finite input values.  Mean and std are
        ``NaN`` when fewer than 2 finite values remain.
    """
    x = np.asarray(values)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    rows = as_rows(x)  # the moments run on the rows in place (numba, no copies)

    def moments(lo: float, hi: float, centre: float) -> tuple[int, float, float]:
        """Count, mean and std (``ddof=1``) of the finite values in ``[lo, hi]``."""
        n, mean, var = window_moments(rows, lo, hi, centre)
        return n, mean, math.sqrt(var * n / (n - 1)) if n > 1 else math.nan

    # The quartiles only seed the clipping, which then iterates on all the
    # values: a regular subsample of large arrays is enough (and 10x faster).
    sample = regular_subsample(x, _QUARTILE_SAMPLE)
    sample = sample[np.isfinite(sample)]
    quartiles = np.percentile(sample, [25.0, 50.0, 75.0]) if sample.size else None
    # All the values, centred close to their mean (the median of the
    # sample; again on the mean when that is far from it) so that the
    # variance suffers no cancellation.
    centre = 0.0 if quartiles is None else float(quartiles[1])
    n, mean, std = moments(-math.inf, math.inf, centre)
    n_total = n
    if n_total < 2:
        return ClippedStats(float(mean), math.nan, n_total, n_total)
    if quartiles is None or abs(mean - centre) > std:
        n, mean, std = moments(-math.inf, math.inf, mean)
    q25, center, q75 = (mean, mean, mean) if quartiles is None else quartiles
    sigma = _IQR_TO_SIGMA * (q75 - q25)
    if not sigma > 0:
        sigma = std
    for _ in range(n_iter):
        n_k, mean_k, std_k = moments(center - n_sigma * sigma, center + n_sigma * sigma, center)
        if n_k < 2:
            break
        n, mean, std = n_k, mean_k, std_k
        center, sigma = mean, std
    return ClippedStats(float(mean), float(std), int(n), n_total)


def read_noise_from_overscan(
    overscan: np.ndarray,
    *,
    gain: float = 1.0,
    n_sigma: float = 5.0,
    n_iter: int = 3,
    skip_leading: int = 0,
    skip_trailing: int = 0,
) -> float:
    """Read noise measured on a serial overscan.

    The overscan is indexed ``[y, x]`` (one row per readout line, the
    overscan columns along ``x``).  Each row's median is subtracted (this
    removes the row-to-row bias level, whether or not the caller already
    did so — subtracting it again from an overscan-corrected overscan
    changes nothing), and the read noise is the sigma-clipped standard
    deviation (`clipped_stats`) of all residuals, times ``gain``.

    Subtracting a row median of ``n`` columns lowers the residual variance
    by a factor ``≈ 1 - 0.43/n`` (Gaussian noise), i.e. 0.3 % in the
    standard deviation for the 64 columns of the ITL serial overscan; this
    bias is not corrected.

    Parameters
    ----------
    overscan : `numpy.ndarray`
        2-d serial overscan pixels.
    gain : `float`
        Multiplies the result: the amplifier gain (e-/ADU) turns an overscan
        in ADU into a read noise in electrons; use 1 for an overscan already
        in electrons.
    n_sigma, n_iter
        Clipping parameters of `clipped_stats`.
    skip_leading, skip_trailing : `int`
        Overscan columns to ignore at the start and end of each row (ISR
        skips 3 and 3 in the raw overscan, where the first columns carry
        charge transfer inefficiency trails).

    Returns
    -------
    read_noise : `float`
        Read noise (``NaN`` if fewer than 2 usable pixels).
    """
    arr = np.asarray(overscan, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"overscan must be 2-d, not {arr.ndim}-d")
    if skip_leading < 0 or skip_trailing < 0:
        raise ValueError("skip_leading and skip_trailing must be >= 0")
    arr = arr[:, skip_leading : arr.shape[1] - skip_trailing]
    if arr.size == 0 or arr.shape[1] < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN, ignored below
        row_median = np.nanmedian(arr, axis=1)
    residual = arr - row_median[:, np.newaxis]
    stats = clipped_stats(residual, n_sigma=n_sigma, n_iter=n_iter)
    return float(stats.std * gain)


def amp_statistics(
    image: np.ndarray,
    mask: np.ndarray | None,
    region: tuple[slice, slice],
    *,
    gain: float | None = None,
    read_noise: float | None = None,
    overscan: np.ndarray | None = None,
    overscan_units: Literal["adu", "electron"] = "adu",
    cr_noise: float | None = None,
    cr_overflow: bool = False,
    read_noise_adu: float | None = None,
    corner_region: tuple[slice, slice] | None = None,
    config: StatsConfig | None = None,
) -> dict[str, Any]:
    """Statistics of one amplifier of an ISR-processed frame.

    Parameters
    ----------
    image : `numpy.ndarray`
        2-d assembled, trimmed image ``[y, x]`` in electrons.
    mask : `numpy.ndarray` or `None`
        2-d uint8 bitmask (`lsst.cpcombined.algorithms.masks`), same shape;
        `None` means nothing is masked.
    region : `tuple` [`slice`, `slice`]
        The amplifier's ``(y slice, x slice)`` in ``image``.
    gain : `float`, optional
        Gain in e-/ADU (needed by the flat ``NOISE`` test and to convert an
        overscan given in ADU).
    read_noise : `float`, optional
        Precomputed read noise in electrons.  Give this or ``overscan``.
    overscan : `numpy.ndarray`, optional
        The amplifier's (overscan-corrected) serial overscan pixels, ``[y,
        x]``; the read noise is measured with `read_noise_from_overscan`.
    overscan_units : {"adu", "electron"}
        Units of ``overscan`` (ADU needs ``gain``).
    cr_noise : `float`, optional
        Clipped std of the amplifier after cosmic-ray repair (``NaN`` when
        not given, which fails the ``CR_NOISE`` test).
    cr_overflow : `bool`
        Whether the cosmic-ray repair overflowed (fails ``PROCESSING``).
    read_noise_adu : `float`, optional
        Overscan noise in ADU as measured by the ISR (cp_verify's
        ``READ_NOISE_ADU``).  When not given: measured on ``overscan`` if
        given, else ``read_noise / gain`` (``NaN`` without a gain).
    corner_region : `tuple` [`slice`, `slice`], optional
        Box at the readout corner (`readout_corner_region`) whose plain
        mean of unmasked pixels is ``AMP_CORNER`` (``NaN`` when not given).
    config : `StatsConfig`, optional
        Clipping and mask planes.

    Returns
    -------
    stats : `dict`
        ``MEAN, MEANCLIP, NOISE, READ_NOISE, READ_NOISE_ADU, CR_NOISE,
        CR_OVERFLOW, AMP_CORNER, GAIN, N_PIXELS, N_CLIPPED`` (see the module
        docstring).
    """
    config = config or StatsConfig()
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-d, not {image.ndim}-d")
    if mask is not None and np.shape(mask) != image.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from image shape {image.shape}")
    if len(region) != 2 or not all(isinstance(s, slice) for s in region):
        raise ValueError(f"region must be a (y slice, x slice) pair, not {region!r}")
    if read_noise is not None and overscan is not None:
        raise ValueError("give either read_noise or overscan, not both")

    def unmasked(sl: tuple[slice, slice]) -> np.ndarray:
        pixels = np.asarray(image[sl], dtype=np.float64)
        good = np.isfinite(pixels)
        if mask is not None:
            good &= (np.asarray(mask)[sl] & np.uint8(config.bad_bits)) == 0
        return pixels[good]

    values = unmasked(region)
    clipped = clipped_stats(values, n_sigma=config.n_sigma, n_iter=config.n_iter)
    mean = float(values.mean()) if values.size else math.nan
    corner = math.nan
    if corner_region is not None:
        corner_values = unmasked(corner_region)
        corner = float(corner_values.mean()) if corner_values.size else math.nan

    gain_value = math.nan if gain is None else float(gain)
    if overscan is not None:
        if overscan_units == "adu":
            if not np.isfinite(gain_value):
                raise ValueError("an overscan in ADU needs the amplifier gain")
            rn = read_noise_from_overscan(
                overscan, gain=gain_value, n_sigma=config.n_sigma, n_iter=config.n_iter
            )
        elif overscan_units == "electron":
            rn = read_noise_from_overscan(overscan, gain=1.0, n_sigma=config.n_sigma, n_iter=config.n_iter)
        else:
            raise ValueError(f"overscan_units must be 'adu' or 'electron', not {overscan_units!r}")
    else:
        rn = math.nan if read_noise is None else float(read_noise)
    if read_noise_adu is not None:
        rn_adu = float(read_noise_adu)
    else:
        rn_adu = rn / gain_value if gain_value > 0 else math.nan

    return {
        "MEAN": mean,
        "MEANCLIP": clipped.mean,
        "NOISE": clipped.std,
        "READ_NOISE": rn,
        "READ_NOISE_ADU": rn_adu,
        "CR_NOISE": math.nan if cr_noise is None else float(cr_noise),
        "CR_OVERFLOW": bool(cr_overflow),
        "AMP_CORNER": corner,
        "GAIN": gain_value,
        "N_PIXELS": int(clipped.n_total),
        "N_CLIPPED": int(clipped.n_total - clipped.n_used),
    }


def readout_corner_region(
    region: tuple[slice, slice], *, flip_x: bool, flip_y: bool, size: int = 200
) -> tuple[slice, slice]:
    """Box of ``size`` × ``size`` pixels (clipped to the amplifier) at an
    amplifier's readout corner, where cp_verify measures ``AMP_CORNER``.

    Parameters
    ----------
    region : `tuple` [`slice`, `slice`]
        The amplifier's ``(y slice, x slice)`` in the assembled image.
    flip_x, flip_y : `bool`
        Whether the raw amplifier is flipped in x / y during assembly (the
        readout corner, lower-left in the raw amplifier, is then on the
        high-x / high-y side).
    size : `int`
        Side of the box.

    Returns
    -------
    corner : `tuple` [`slice`, `slice`]
        ``(y slice, x slice)`` of the box.
    """
    if size < 1:
        raise ValueError(f"corner box size must be >= 1, not {size}")

    def side(sl: slice, high: bool) -> slice:
        n = min(size, sl.stop - sl.start)
        return slice(sl.stop - n, sl.stop) if high else slice(sl.start, sl.start + n)

    ys, xs = region
    return side(ys, flip_y), side(xs, flip_x)


def _per_amp(value: Any, amp: str, what: str) -> Any:
    """Value for ``amp`` from a mapping (missing → None) or a scalar."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(amp)
    if isinstance(value, np.ndarray) and value.ndim > 0:
        raise TypeError(f"{what} must be a scalar or a mapping by amplifier name")
    return value


def detector_statistics(
    image: np.ndarray,
    mask: np.ndarray | None,
    amp_regions: Mapping[str, tuple[slice, slice]],
    *,
    gains: Mapping[str, float] | float | None = None,
    read_noise: Mapping[str, float] | float | None = None,
    overscans: Mapping[str, np.ndarray] | None = None,
    overscan_units: Literal["adu", "electron"] = "adu",
    cr_noise: Mapping[str, float] | None = None,
    cr_overflow: Mapping[str, bool] | bool = False,
    read_noise_adu: Mapping[str, float] | None = None,
    corner_regions: Mapping[str, tuple[slice, slice]] | None = None,
    config: StatsConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """`amp_statistics` for every amplifier of a detector.

    Per-amplifier inputs (``read_noise_adu`` and ``corner_regions`` too)
    are mappings by amplifier name; ``gains``,
    ``read_noise`` and ``cr_overflow`` may also be one value for all
    amplifiers (a cosmic-ray repair that overflows on the whole detector
    fails ``PROCESSING`` on every amplifier).  An amplifier missing from a
    mapping gets `None` (``NaN`` in the statistics).  For an amplifier with
    an overscan in ``overscans`` the read noise is measured on it and
    ``read_noise`` is not used.

    Returns
    -------
    stats : `dict` [`str`, `dict`]
        Amplifier name → statistics, in the order of ``amp_regions``.
    """
    out: dict[str, dict[str, Any]] = {}
    for amp, region in amp_regions.items():
        amp = _check_name("amplifier", amp)
        overscan = None if overscans is None else overscans.get(amp)
        rn = _per_amp(read_noise, amp, "read_noise")
        out[amp] = amp_statistics(
            image,
            mask,
            region,
            gain=_per_amp(gains, amp, "gains"),
            read_noise=None if overscan is not None else rn,
            overscan=overscan,
            overscan_units=overscan_units,
            cr_noise=_per_amp(cr_noise, amp, "cr_noise"),
            cr_overflow=bool(_per_amp(cr_overflow, amp, "cr_overflow") or False),
            read_noise_adu=_per_amp(read_noise_adu, amp, "read_noise_adu"),
            corner_region=None if corner_regions is None else corner_regions.get(amp),
            config=config,
        )
    return out


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def _le(a: float, b: float) -> bool:
    """``a <= b`` that is False when either is NaN."""
    return bool(np.isfinite(a) and np.isfinite(b) and a <= b)


def flat_metrics(stats: Mapping[str, Any]) -> dict[str, float]:
    """Derived flat-field noise quantities of one amplifier.

    Returns
    -------
    metrics : `dict`
        ``MEAN_ADU = MEANCLIP/GAIN``, ``NOISE_ADU = NOISE/GAIN``,
        ``SQRT_MEAN_ADU = sqrt(MEAN_ADU)`` (``NaN`` for a non-positive mean)
        and ``POISSON_RATIO = NOISE / sqrt(MEANCLIP + READ_NOISE**2)``
        (expected ≈ 1 for a frame with only shot and read noise, slightly
        more from the noise of the reference flat).
    """
    mean_e = float(stats["MEANCLIP"])
    noise_e = float(stats["NOISE"])
    gain = float(stats["GAIN"])
    rn = float(stats["READ_NOISE"])
    mean_adu = mean_e / gain if gain > 0 else math.nan
    noise_adu = noise_e / gain if gain > 0 else math.nan
    sqrt_mean = math.sqrt(mean_adu) if mean_adu > 0 else math.nan
    expected = mean_e + rn * rn
    ratio = noise_e / math.sqrt(expected) if expected > 0 else math.nan
    return {"MEAN_ADU": mean_adu, "NOISE_ADU": noise_adu, "SQRT_MEAN_ADU": sqrt_mean, "POISSON_RATIO": ratio}


def amp_tests(
    calib_type: str, stats: Mapping[str, Any], thresholds: VerifyThresholds | None = None
) -> dict[str, bool]:
    """Amplifier-level tests of one amplifier.

    Parameters
    ----------
    calib_type : {"bias", "dark", "flat"}
        Type of calibration being verified.
    stats : `dict`
        Output of `amp_statistics` (for a flat, `flat_metrics` values may be
        included; they are recomputed anyway).
    thresholds : `VerifyThresholds`, optional
        Test thresholds.

    Returns
    -------
    tests : `dict` [`str`, `bool`]
        Test name → passed, in the order of `tests_for`.
    """
    thresholds = thresholds or VerifyThresholds()
    _check_type(calib_type)
    noise = float(stats["NOISE"])
    if calib_type in ("bias", "dark"):
        mean = float(stats["MEANCLIP"])
        rn = float(stats["READ_NOISE"])
        cr = float(stats["CR_NOISE"])
        with np.errstate(all="ignore"):
            noise_excess = (noise - rn) / rn if rn > 0 else math.nan
            cr_diff = abs(noise - cr) / cr if cr > 0 else math.nan
        tests = {
            "MEAN": bool(np.isfinite(mean) and np.isfinite(noise) and abs(mean) < noise),
            "NOISE": _le(noise_excess, thresholds.noise),
            "CR_NOISE": _le(cr_diff, thresholds.cr_noise),
            "PROCESSING": not bool(stats["CR_OVERFLOW"]),
        }
        level_limit = _level_threshold(calib_type, thresholds)
        if level_limit is not None and "CALIB_LEVEL" in stats:
            tests["LEVEL"] = _le(abs(float(stats["CALIB_LEVEL"])), level_limit)
        return tests
    # flat
    if not float(stats["GAIN"]) > 0:
        raise ValueError("the flat NOISE test needs a positive amplifier gain (GAIN)")
    m = flat_metrics(stats)
    tests = {"NOISE": _le(m["NOISE_ADU"], m["SQRT_MEAN_ADU"])}
    if thresholds.flat_poisson:
        tests["POISSON_NOISE"] = _le(m["POISSON_RATIO"], 1.0 + thresholds.flat_poisson_tolerance)
    return tests


def _level_threshold(calib_type: str, thresholds: VerifyThresholds) -> float | None:
    """Threshold of the ``LEVEL`` test of a calibration type (`None`: no test)."""
    return {"bias": thresholds.bias_level, "dark": thresholds.dark_level}.get(calib_type)


def calibration_level(
    image: np.ndarray, mask: np.ndarray, region: tuple[slice, slice], bad_bits: int
) -> tuple[float, float]:
    """Median level and unusable fraction of one amplifier of a calibration.

    Parameters
    ----------
    image, mask
        The calibration's image and bitmask.
    region
        The amplifier's ``(y, x)`` slices.
    bad_bits
        Mask bits of unusable pixels (with non-finite values).

    Returns
    -------
    level, bad_fraction
        Median of the usable pixels (NaN when none is usable) and the
        fraction of pixels that are not usable.
    """
    pixels = image[region]
    good = np.isfinite(pixels) & ((mask[region] & np.uint8(bad_bits)) == 0)
    n_good = int(np.count_nonzero(good))
    level = float(np.median(pixels[good])) if n_good else math.nan
    return level, 1.0 - n_good / pixels.size


def scatter(values: Iterable[float]) -> float:
    """Normalised scatter ``std(values) / mean(values)`` (``ddof=0``).

    ``NaN`` if any value is not finite, there are no values, or the mean is
    not positive.  A single value has scatter 0.
    """
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)):
        return math.nan
    mean = float(v.mean())
    if not mean > 0:
        return math.nan
    return float(v.std() / mean)


# ---------------------------------------------------------------------------
# Merge across levels (cp_verify's shapes)
# ---------------------------------------------------------------------------


def verify_detector(
    calib_type: str,
    amp_stats: Mapping[str, Mapping[str, Any]],
    *,
    exposure: int | str,
    detector: str,
    thresholds: VerifyThresholds | None = None,
) -> dict[str, Any]:
    """Run the amplifier and detector tests of one detector of one exposure.

    Parameters
    ----------
    calib_type : {"bias", "dark", "flat"}
        Type of calibration being verified.
    amp_stats : `dict` [`str`, `dict`]
        Amplifier name → `amp_statistics` output (e.g. from
        `detector_statistics`).
    exposure : `int` or `str`
        Exposure id.
    detector : `str`
        Detector name (``"R22_S11"``).
    thresholds : `VerifyThresholds`, optional
        Test thresholds.

    Returns
    -------
    det_stats : `dict`
        cp_verify's detector dictionary (``AMP``, ``METADATA``,
        ``CATALOG``, ``DET``, ``VERIFY``, ``SUCCESS``; see the module
        docstring) followed by ``CPC_IDENTITY`` (``CALIB_TYPE``,
        ``EXPOSURE``, ``DETECTOR``), ``CPC_AMP`` (amp name → the
        statistics not in ``AMP``/``METADATA``, plus `flat_metrics` for a
        flat) and ``CPC_DET`` (``MEAN`` and ``NOISE``: means of the amp
        ``MEANCLIP`` and ``NOISE``; ``REL_SCATTER``: `scatter` of the amp
        ``MEANCLIP``).
    """
    thresholds = thresholds or VerifyThresholds()
    _check_type(calib_type)
    detector = _check_name("detector", detector)
    _check_name("exposure", exposure)
    if not amp_stats:
        raise ValueError(f"detector {detector}: no amplifier statistics")

    cp_keys = CP_VERIFY_AMP_STATS[calib_type]
    with_metadata = calib_type in ("bias", "dark")
    amp_out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    read_noise_adu: dict[str, float] = {}
    verify_amp: dict[str, Any] = {}
    for amp, stats in amp_stats.items():
        amp = _check_name("amplifier", amp)
        amp_out[amp] = {k: stats.get(k, math.nan) for k in cp_keys}
        record = {k: v for k, v in stats.items() if k not in cp_keys}
        if with_metadata:
            read_noise_adu[amp] = float(record.pop("READ_NOISE_ADU", math.nan))
        if calib_type == "flat":
            record.update(flat_metrics(stats))
        extra[amp] = record
        tests: dict[str, Any] = dict(amp_tests(calib_type, stats, thresholds))
        tests["SUCCESS"] = all(tests.values())
        verify_amp[amp] = tests

    means = [float(s["MEANCLIP"]) for s in amp_stats.values()]
    noises = [float(s["NOISE"]) for s in amp_stats.values()]
    rel_scatter = scatter(means)
    det_out: dict[str, Any] = {}
    verify: dict[str, Any] = {"AMP": verify_amp}
    success = all(t["SUCCESS"] for t in verify_amp.values())
    if DETECTOR_TESTS[calib_type]:
        det_out = {"MEAN": float(np.mean(means)), "SCATTER": float(np.std(means))}
        det_tests: dict[str, Any] = {}
        if "SCATTER" in DETECTOR_TESTS[calib_type]:
            det_tests["SCATTER"] = _le(rel_scatter, thresholds.detector_scatter)
        det_tests["SUCCESS"] = all(det_tests.values())
        verify["DET"] = det_tests
        success = success and det_tests["SUCCESS"]

    return _py(
        {
            "AMP": amp_out,
            "METADATA": {"READ_NOISE_ADU": read_noise_adu} if with_metadata else {},
            "CATALOG": {},
            "DET": det_out,
            "VERIFY": verify,
            "SUCCESS": success,
            "CPC_IDENTITY": {"CALIB_TYPE": calib_type, "EXPOSURE": exposure, "DETECTOR": detector},
            "CPC_AMP": extra,
            "CPC_DET": {
                "MEAN": float(np.mean(means)),
                "NOISE": float(np.mean(noises)),
                "REL_SCATTER": rel_scatter,
            },
        }
    )


def _failed_tests(tests: Mapping[str, Any]) -> list[str]:
    """Names of the tests whose value is the boolean False."""
    return [name for name, ok in tests.items() if name != "SUCCESS" and ok is False]


def detector_failures(det_stats: Mapping[str, Any], detector: str | None = None) -> list[str]:
    """Failure strings of one detector dictionary, as cp_verify's exposure
    merge lists them.

    Parameters
    ----------
    det_stats : `dict`
        A detector dictionary (ours or cp_verify's).
    detector : `str`, optional
        Detector name to prefix each string with (run-level strings).

    Returns
    -------
    failures : `list` [`str`]
        Empty when ``SUCCESS`` is `True`; otherwise, from ``VERIFY``, the
        failed exposure-, detector- and catalog-level tests as ``"<TEST>"``
        and the failed amplifier tests as ``"<amp> <TEST>"`` (in cp_verify's
        order: ``EXP``, ``DET``, ``AMP``, ``CATALOG``; a level's tests are
        listed only when its ``SUCCESS`` is not `True`, and only tests whose
        value is the boolean `False`).
    """
    if det_stats["SUCCESS"] is True:
        return []
    verify = det_stats.get("VERIFY") or {}
    out: list[str] = []
    for level in ("EXP", "DET"):
        tests = verify.get(level) or {}
        if tests and not tests.get("SUCCESS", False):
            out.extend(_failed_tests(tests))
    for amp, tests in (verify.get("AMP") or {}).items():
        if not tests["SUCCESS"]:
            out.extend(f"{amp} {name}" for name in _failed_tests(tests))
    out.extend(_failed_tests(verify.get("CATALOG") or {}))
    if detector is not None:
        out = [f"{detector} {f}" for f in out]
    return out


def _detector_results_by_name(
    detector_results: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
) -> dict[str, Mapping[str, Any]]:
    if isinstance(detector_results, Mapping):
        return {_check_name("detector", name): r for name, r in detector_results.items()}
    out: dict[str, Mapping[str, Any]] = {}
    for r in detector_results:
        name = _check_name("detector", r["CPC_IDENTITY"]["DETECTOR"])
        if name in out:
            raise ValueError(f"detector {name} given twice")
        out[name] = r
    return out


def verify_exposure(
    calib_type: str,
    detector_results: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    *,
    thresholds: VerifyThresholds | None = None,
) -> dict[str, Any]:
    """Merge the detector results of one exposure and run the exposure tests.

    Parameters
    ----------
    calib_type : {"bias", "dark", "flat"}
        Type of calibration being verified.
    detector_results : `dict` [`str`, `dict`] or `list` [`dict`]
        Detector name → detector dictionary (cp_verify's or ours), or a list
        of our `verify_detector` outputs (named by their ``CPC_IDENTITY``).
        A flat's exposure test reads each detector's ``DET.MEAN``.
    thresholds : `VerifyThresholds`, optional
        Test thresholds.

    Returns
    -------
    exp_stats : `dict`
        cp_verify's exposure dictionary: detector name → ``{"SUCCESS":
        True}`` or ``{"SUCCESS": False, "FAILURES": [...]}`` (see
        `detector_failures`), for a flat ``EXP`` (``SCATTER``: normalised
        scatter of the detector means) and ``VERIFY`` (``{"EXP":
        {"SCATTER": bool}}``), and ``SUCCESS``.  No other key.
    """
    thresholds = thresholds or VerifyThresholds()
    _check_type(calib_type)
    by_name = _detector_results_by_name(detector_results)
    if not by_name:
        raise ValueError("no detector results")
    exposures = {str(r["CPC_IDENTITY"]["EXPOSURE"]) for r in by_name.values() if "CPC_IDENTITY" in r}
    if len(exposures) > 1:
        raise ValueError(f"detector results of several exposures: {sorted(exposures)}")
    types = {r["CPC_IDENTITY"]["CALIB_TYPE"] for r in by_name.values() if "CPC_IDENTITY" in r}
    if types - {calib_type}:
        raise ValueError(f"detector results of types {sorted(types)}, expected {calib_type!r}")

    out: dict[Any, Any] = {}
    success = True
    for name, r in by_name.items():
        if r["SUCCESS"] is True:
            out[name] = {"SUCCESS": True}
        else:
            out[name] = {"SUCCESS": False, "FAILURES": detector_failures(r)}
            success = False
    if EXPOSURE_TESTS[calib_type]:
        det_means = [float(r["DET"]["MEAN"]) for r in by_name.values()]
        exp_tests: dict[str, bool] = {}
        value = scatter(det_means)
        if "SCATTER" in EXPOSURE_TESTS[calib_type]:
            exp_tests["SCATTER"] = _le(value, thresholds.exposure_scatter)
        out["EXP"] = {"SCATTER": value}
        out["VERIFY"] = {"EXP": exp_tests}
        success = success and all(exp_tests.values())
    out["SUCCESS"] = success
    return _py(out)


def exposure_detectors(exp_stats: Mapping[str, Any]) -> list[str]:
    """Detector names of an exposure dictionary (ours or cp_verify's): the
    top-level keys other than ``EXP``, ``VERIFY`` and ``SUCCESS`` whose
    value is a dictionary with ``SUCCESS``."""
    return [
        str(name)
        for name, value in exp_stats.items()
        if name not in EXPOSURE_SUMMARY_KEYS and isinstance(value, Mapping) and "SUCCESS" in value
    ]


def exposure_failures(exp_stats: Mapping[str, Any]) -> list[str]:
    """Run-level failure strings of one exposure dictionary (ours or
    cp_verify's).

    Returns
    -------
    failures : `list` [`str`]
        ``"<detector> <failure>"`` for each failure listed by a detector
        whose ``SUCCESS`` is not `True` (``"R22_S11 C10 NOISE"``,
        ``"R22_S11 SCATTER"``), then ``"<TEST>"`` for each exposure-level
        test (``VERIFY.EXP``) whose value is `False`.  Empty when the
        exposure's ``SUCCESS`` is `True`.
    """
    if exp_stats["SUCCESS"] is True:
        return []
    out: list[str] = []
    for name in exposure_detectors(exp_stats):
        entry = exp_stats[name]
        if entry["SUCCESS"] is not True:
            out.extend(f"{name} {failure}" for failure in entry.get("FAILURES") or [])
    out.extend(_failed_tests((exp_stats.get("VERIFY") or {}).get("EXP") or {}))
    return out


def verify_run(exposure_results: Mapping[int, Mapping[str, Any]]) -> dict[Any, Any]:
    """Merge the exposure results of a run.

    Parameters
    ----------
    exposure_results : `dict` [`int`, `dict`]
        Exposure id → exposure dictionary (`verify_exposure`, or
        cp_verify's).

    Returns
    -------
    run_stats : `dict`
        cp_verify's run dictionary: integer exposure id (ascending) →
        ``{"SUCCESS": True}`` or ``{"SUCCESS": False, "FAILURES":
        [...]}`` (`exposure_failures`), then ``SUCCESS``.  No other key:
        every key but ``SUCCESS`` is an exposure.
    """
    if not exposure_results:
        raise ValueError("no exposure results")
    out: dict[Any, Any] = {}
    success = True
    for exposure in sorted(exposure_results, key=int):
        exp = int(exposure)
        if exp in out:
            raise ValueError(f"exposure {exp} given twice")
        stats = exposure_results[exposure]
        if stats["SUCCESS"] is True:
            out[exp] = {"SUCCESS": True}
        else:
            out[exp] = {"SUCCESS": False, "FAILURES": exposure_failures(stats)}
            success = False
    out["SUCCESS"] = success
    return _py(out)


# ---------------------------------------------------------------------------
# Results tables (one row per amplifier)
# ---------------------------------------------------------------------------


def results_rows(
    calib_type: str,
    det_stats: Mapping[str, Any],
    *,
    instrument: str,
    exposure: int,
    detector: int,
    mjd: float = math.nan,
    physical_filter: str | None = None,
) -> list[dict[str, Any]]:
    """One results row per amplifier of a detector dictionary.

    Parameters
    ----------
    calib_type : {"bias", "dark", "flat"}
        Type of calibration verified (``<STAGE>`` prefix of the columns).
    det_stats : `dict`
        `verify_detector` output (cp_verify's keys are enough; ``CPC_AMP``
        and ``CPC_DET`` add columns when present).
    instrument, exposure, detector
        Data ID values (``detector`` is the integer id).
    mjd : `float`
        MJD of the exposure.
    physical_filter : `str`, optional
        Physical filter (a column of flat tables only).

    Returns
    -------
    rows : `list` [`dict`]
        ``instrument``, ``exposure``, ``detector``, [``physical_filter``],
        ``mjd``, ``amplifier``, ``<STAGE>_<stat>`` for the ``AMP``
        statistics, ``<STAGE>_VERIFY_<test>`` (with ``SUCCESS``),
        ``<STAGE>_READ_NOISE_ADU``; for a flat ``FLAT_DET_MEAN``,
        ``FLAT_DET_SCATTER``, ``FLAT_DET_VERIFY_SCATTER``; then
        ``<STAGE>_<stat>`` for each ``CPC_AMP`` statistic and
        ``<STAGE>_DET_<stat>`` for each ``CPC_DET`` value not already set.
    """
    stage = STAGE_NAMES[_check_type(calib_type)]
    det = dict(det_stats.get("DET") or {})
    det_verify = dict((det_stats.get("VERIFY") or {}).get("DET") or {})
    read_noise_adu = (det_stats.get("METADATA") or {}).get("READ_NOISE_ADU") or {}
    extra_amp = det_stats.get("CPC_AMP") or {}
    extra_det = det_stats.get("CPC_DET") or {}
    rows: list[dict[str, Any]] = []
    for amp, stats in det_stats["AMP"].items():
        row: dict[str, Any] = {
            "instrument": str(instrument),
            "exposure": int(exposure),
            "detector": int(detector),
        }
        if calib_type == "flat":
            row["physical_filter"] = "" if physical_filter is None else str(physical_filter)
        row["mjd"] = float(mjd)
        row["amplifier"] = str(amp)
        row.update({f"{stage}_{k}": v for k, v in stats.items()})
        row.update({f"{stage}_VERIFY_{k}": v for k, v in det_stats["VERIFY"]["AMP"][amp].items()})
        if calib_type in ("bias", "dark"):
            row[f"{stage}_READ_NOISE_ADU"] = float(read_noise_adu.get(amp, math.nan))
        for k, v in det.items():
            row[f"{stage}_DET_{k}"] = v
        for k, v in det_verify.items():
            if k != "SUCCESS":
                row[f"{stage}_DET_VERIFY_{k}"] = v
        for k, v in (extra_amp.get(amp) or {}).items():
            row.setdefault(f"{stage}_{k}", v)
        for k, v in extra_det.items():
            row.setdefault(f"{stage}_DET_{k}", v)
        rows.append(_py(row))
    return rows


def results_table(rows: Iterable[Mapping[str, Any]]) -> Table:
    """Rows of `results_rows` as an `astropy.table.Table` (all rows must
    have the same columns, i.e. come from one calibration type and one set
    of thresholds)."""
    rows = list(rows)
    if not rows:
        return Table()
    names = list(rows[0])
    for row in rows:
        if list(row) != names:
            raise ValueError(f"rows with different columns: {names} vs {list(row)}")
    return Table(rows=[[row[n] for n in names] for row in rows], names=names)
