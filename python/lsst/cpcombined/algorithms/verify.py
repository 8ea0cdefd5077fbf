"""Verification statistics and DMTN-101-style tests of calibrations.

The functions here work on one ISR-processed *verification* frame at a time
(a raw re-processed with the calibration under test: a bias, dark or flat
exposure in electrons) and merge the per-amplifier results into detector,
exposure and run summaries.  Everything returned is a plain ``dict`` of
``str``/``int``/``float``/``bool``/``list``/``dict`` values, so it can be
written as JSON or YAML as it is (``NaN`` marks a statistic that could not be
computed; Python's `json` and PyYAML both round-trip it).

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
``READ_NOISE``
    Read noise in electrons, either given by the caller or measured on the
    serial overscan with `read_noise_from_overscan`.
``CR_NOISE``, ``CR_OVERFLOW``
    Clipped standard deviation after cosmic-ray repair and whether that
    repair overflowed; both are computed elsewhere (cosmic-ray module) and
    only carried here.
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

flat — amplifier level (see `flat_metrics`):

``NOISE``           ``NOISE_ADU <= sqrt(MEAN_ADU)`` with ``NOISE_ADU =
                    NOISE / GAIN`` and ``MEAN_ADU = MEANCLIP / GAIN`` — in
                    ADU, as cp_verify does (in electrons the test could
                    never pass: read noise adds to the shot noise, and it
                    passes in ADU only because the gain exceeds 1 by more
                    than ``READ_NOISE**2 / MEANCLIP``).
``POISSON_NOISE``   only when `VerifyThresholds.flat_poisson` is on:
                    ``POISSON_RATIO = NOISE / sqrt(MEANCLIP + READ_NOISE**2)
                    <= 1 + flat_poisson_tolerance``.  The ratio is always
                    reported.

flat — detector level: ``SCATTER`` ``std(amp MEANCLIP) / mean(amp MEANCLIP)
<= detector_scatter`` (0.05).  flat — exposure level: ``SCATTER``
``std(detector MEAN) / mean(detector MEAN) <= exposure_scatter`` (0.05),
where a detector's ``MEAN`` is the mean of its amplifiers' ``MEANCLIP``.
cp_verify compares the *unnormalised* standard deviation of the detector
means with 0.05; we normalise, as at the detector level.  Standard
deviations of means are population ones (``ddof=0``).

Any comparison involving ``NaN`` fails (a missing read noise, ``CR_NOISE``
or gain is a failure, never a silent pass) except that a flat without a gain
raises `ValueError`, since its ``NOISE`` test is then meaningless.

Merge and failure strings
-------------------------
An amplifier passes when all its tests pass; a detector when all its
amplifiers and its detector-level tests pass; an exposure when all its
detectors and its exposure-level tests pass; a run when all its exposures
pass.  Each level's dictionary has ``SUCCESS`` (bool) and ``FAILURES`` (list
of str).  The failure strings are space-separated tokens whose *last* token
is always the test name:

================  ==========================================================
level             failure string
================  ==========================================================
amplifier test    ``"<detector> <amp> <TEST>"``, e.g. ``"R22_S11 C10 NOISE"``
detector test     ``"<detector> <TEST>"``, e.g. ``"R22_S11 SCATTER"``
exposure test     ``"<TEST>"``, e.g. ``"SCATTER"``
run level         ``"<exposure> "`` + the exposure-level string, e.g.
                  ``"2026112500012 R22_S11 C10 NOISE"``
================  ==========================================================

Detector, amplifier and exposure names must therefore contain no white
space (`ValueError` otherwise).  Within a run every failure string is unique.
"""

from __future__ import annotations

__all__ = (
    "AMP_TESTS",
    "CALIB_TYPES",
    "DETECTOR_TESTS",
    "EXPOSURE_TESTS",
    "ClippedStats",
    "StatsConfig",
    "VerifyThresholds",
    "amp_statistics",
    "amp_tests",
    "clipped_stats",
    "detector_statistics",
    "flat_metrics",
    "read_noise_from_overscan",
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
    """

    noise: float = 0.05
    cr_noise: float = 0.05
    flat_poisson: bool = False
    flat_poisson_tolerance: float = 0.05
    detector_scatter: float = 0.05
    exposure_scatter: float = 0.05


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
    """Convert numpy scalars (recursively inside containers) to Python types."""
    if isinstance(value, dict):
        return {str(k): _py(v) for k, v in value.items()}
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

    n, mean, _ = moments(-math.inf, math.inf, 0.0)
    n_total = n
    if n_total < 2:
        return ClippedStats(float(mean), math.nan, n_total, n_total)
    n, mean, std = moments(-math.inf, math.inf, mean)  # centred on the mean: no cancellation
    # The quartiles only seed the clipping, which then iterates on all the
    # values: a regular subsample of large arrays is enough (and 10x faster).
    sample = regular_subsample(x, _QUARTILE_SAMPLE)
    sample = sample[np.isfinite(sample)]
    q25, center, q75 = np.percentile(sample, [25.0, 50.0, 75.0]) if sample.size else (mean, mean, mean)
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
    config : `StatsConfig`, optional
        Clipping and mask planes.

    Returns
    -------
    stats : `dict`
        ``MEAN, MEANCLIP, NOISE, READ_NOISE, CR_NOISE, CR_OVERFLOW, GAIN,
        N_PIXELS, N_CLIPPED`` (see the module docstring).
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

    pixels = np.asarray(image[region], dtype=np.float64)
    good = np.isfinite(pixels)
    if mask is not None:
        good &= (np.asarray(mask)[region] & np.uint8(config.bad_bits)) == 0
    values = pixels[good]
    clipped = clipped_stats(values, n_sigma=config.n_sigma, n_iter=config.n_iter)
    mean = float(values.mean()) if values.size else math.nan

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

    return {
        "MEAN": mean,
        "MEANCLIP": clipped.mean,
        "NOISE": clipped.std,
        "READ_NOISE": rn,
        "CR_NOISE": math.nan if cr_noise is None else float(cr_noise),
        "CR_OVERFLOW": bool(cr_overflow),
        "GAIN": gain_value,
        "N_PIXELS": int(clipped.n_total),
        "N_CLIPPED": int(clipped.n_total - clipped.n_used),
    }


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
    config: StatsConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """`amp_statistics` for every amplifier of a detector.

    Per-amplifier inputs are mappings by amplifier name; ``gains``,
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
        return {
            "MEAN": bool(np.isfinite(mean) and np.isfinite(noise) and abs(mean) < noise),
            "NOISE": _le(noise_excess, thresholds.noise),
            "CR_NOISE": _le(cr_diff, thresholds.cr_noise),
            "PROCESSING": not bool(stats["CR_OVERFLOW"]),
        }
    # flat
    if not float(stats["GAIN"]) > 0:
        raise ValueError("the flat NOISE test needs a positive amplifier gain (GAIN)")
    m = flat_metrics(stats)
    tests = {"NOISE": _le(m["NOISE_ADU"], m["SQRT_MEAN_ADU"])}
    if thresholds.flat_poisson:
        tests["POISSON_NOISE"] = _le(m["POISSON_RATIO"], 1.0 + thresholds.flat_poisson_tolerance)
    return tests


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
# Merge across levels
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
        ``CALIB_TYPE``, ``EXPOSURE``, ``DETECTOR``;
        ``AMP``: amp name → statistics (plus `flat_metrics` for a flat),
        ``TESTS`` (name → bool) and ``SUCCESS``;
        ``STATS``: detector statistics ``MEAN`` (mean of the amp
        ``MEANCLIP``), ``NOISE`` (mean of the amp ``NOISE``), ``SCATTER``;
        ``TESTS``: detector-level tests; ``SUCCESS``; ``FAILURES``
        (``"<detector> <amp> <TEST>"``, ``"<detector> <TEST>"``).
    """
    thresholds = thresholds or VerifyThresholds()
    _check_type(calib_type)
    detector = _check_name("detector", detector)
    _check_name("exposure", exposure)
    if not amp_stats:
        raise ValueError(f"detector {detector}: no amplifier statistics")

    amps: dict[str, Any] = {}
    failures: list[str] = []
    for amp, stats in amp_stats.items():
        amp = _check_name("amplifier", amp)
        record = {k: v for k, v in stats.items() if k not in ("TESTS", "SUCCESS")}
        if calib_type == "flat":
            record.update(flat_metrics(stats))
        tests = amp_tests(calib_type, stats, thresholds)
        record["TESTS"] = tests
        record["SUCCESS"] = all(tests.values())
        amps[amp] = record
        failures.extend(f"{detector} {amp} {name}" for name, ok in tests.items() if not ok)

    means = [float(s["MEANCLIP"]) for s in amp_stats.values()]
    noises = [float(s["NOISE"]) for s in amp_stats.values()]
    det_scatter = scatter(means)
    det_tests: dict[str, bool] = {}
    if "SCATTER" in DETECTOR_TESTS[calib_type]:
        det_tests["SCATTER"] = _le(det_scatter, thresholds.detector_scatter)
    failures.extend(f"{detector} {name}" for name, ok in det_tests.items() if not ok)

    return _py(
        {
            "CALIB_TYPE": calib_type,
            "EXPOSURE": exposure,
            "DETECTOR": detector,
            "AMP": amps,
            "STATS": {
                "MEAN": float(np.mean(means)),
                "NOISE": float(np.mean(noises)),
                "SCATTER": det_scatter,
            },
            "TESTS": det_tests,
            "SUCCESS": not failures,
            "FAILURES": failures,
        }
    )


def verify_exposure(
    calib_type: str,
    detector_results: Sequence[Mapping[str, Any]],
    *,
    exposure: int | str | None = None,
    thresholds: VerifyThresholds | None = None,
) -> dict[str, Any]:
    """Merge the detector results of one exposure and run the exposure tests.

    Parameters
    ----------
    calib_type : {"bias", "dark", "flat"}
        Type of calibration being verified.
    detector_results : `list` [`dict`]
        `verify_detector` outputs, all of the same exposure and type.
    exposure : `int` or `str`, optional
        Exposure id (default: the one of the detector results).
    thresholds : `VerifyThresholds`, optional
        Test thresholds.

    Returns
    -------
    exp_stats : `dict`
        ``CALIB_TYPE``, ``EXPOSURE``; ``DETECTORS``: detector name →
        ``{"MEAN", "NOISE", "SUCCESS", "N_FAILURES"}``; ``STATS``:
        ``MEAN`` (mean of detector means), ``SCATTER``; ``TESTS``:
        exposure-level tests; ``SUCCESS``; ``FAILURES`` (all detector
        failure strings, then ``"<TEST>"`` for exposure tests).
    """
    thresholds = thresholds or VerifyThresholds()
    _check_type(calib_type)
    if not detector_results:
        raise ValueError("no detector results")
    exposures = {str(r["EXPOSURE"]) for r in detector_results}
    if exposure is None:
        if len(exposures) != 1:
            raise ValueError(f"detector results of several exposures: {sorted(exposures)}")
        exposure = detector_results[0]["EXPOSURE"]
    elif exposures != {str(exposure)}:
        raise ValueError(f"detector results of exposures {sorted(exposures)}, expected {exposure}")
    _check_name("exposure", exposure)
    types = {r["CALIB_TYPE"] for r in detector_results}
    if types != {calib_type}:
        raise ValueError(f"detector results of types {sorted(types)}, expected {calib_type!r}")

    detectors: dict[str, Any] = {}
    failures: list[str] = []
    for r in detector_results:
        name = r["DETECTOR"]
        if name in detectors:
            raise ValueError(f"exposure {exposure}: detector {name} given twice")
        detectors[name] = {
            "MEAN": r["STATS"]["MEAN"],
            "NOISE": r["STATS"]["NOISE"],
            "SUCCESS": bool(r["SUCCESS"]),
            "N_FAILURES": len(r["FAILURES"]),
        }
        failures.extend(r["FAILURES"])

    det_means = [d["MEAN"] for d in detectors.values()]
    exp_scatter = scatter(det_means)
    exp_tests: dict[str, bool] = {}
    if "SCATTER" in EXPOSURE_TESTS[calib_type]:
        exp_tests["SCATTER"] = _le(exp_scatter, thresholds.exposure_scatter)
    failures.extend(name for name, ok in exp_tests.items() if not ok)

    return _py(
        {
            "CALIB_TYPE": calib_type,
            "EXPOSURE": exposure,
            "DETECTORS": detectors,
            "STATS": {"MEAN": float(np.mean(det_means)), "SCATTER": exp_scatter},
            "TESTS": exp_tests,
            "SUCCESS": not failures,
            "FAILURES": failures,
        }
    )


def verify_run(instrument: str, exposure_results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge the exposure results of a run.

    Parameters
    ----------
    instrument : `str`
        Instrument name.
    exposure_results : `list` [`dict`]
        `verify_exposure` outputs, all of the same calibration type.

    Returns
    -------
    run_stats : `dict`
        ``INSTRUMENT``, ``CALIB_TYPE``, ``N_EXPOSURES``, ``N_DETECTORS``
        and ``DETECTORS`` (sorted union of the detectors verified);
        ``EXPOSURES``: exposure id (as `str`) → ``{"SUCCESS", "FAILURES",
        "N_DETECTORS"}`` with the exposure-level failure strings;
        ``SUCCESS``; ``FAILURES``: ``"<exposure> <exposure-level
        failure>"``, unique within the run.  The exposures are nested under
        ``EXPOSURES`` so that no other key is ever mistaken for one.
    """
    if not exposure_results:
        raise ValueError("no exposure results")
    types = {r["CALIB_TYPE"] for r in exposure_results}
    if len(types) != 1:
        raise ValueError(f"exposure results of several calibration types: {sorted(types)}")
    exposures: dict[str, Any] = {}
    detectors: set[str] = set()
    failures: list[str] = []
    for r in exposure_results:
        exp = _check_name("exposure", r["EXPOSURE"])
        if exp in exposures:
            raise ValueError(f"exposure {exp} given twice")
        exposures[exp] = {
            "SUCCESS": bool(r["SUCCESS"]),
            "FAILURES": list(r["FAILURES"]),
            "N_DETECTORS": len(r["DETECTORS"]),
        }
        detectors.update(r["DETECTORS"])
        failures.extend(f"{exp} {f}" for f in r["FAILURES"])
    return _py(
        {
            "INSTRUMENT": instrument,
            "CALIB_TYPE": types.pop(),
            "N_EXPOSURES": len(exposures),
            "N_DETECTORS": len(detectors),
            "DETECTORS": sorted(detectors),
            "EXPOSURES": exposures,
            "SUCCESS": not failures,
            "FAILURES": failures,
        }
    )


# ---------------------------------------------------------------------------
# Per-amplifier results table
# ---------------------------------------------------------------------------


def results_rows(detector_results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per amplifier of the given `verify_detector` outputs.

    Each row has ``EXPOSURE``, ``DETECTOR``, ``AMP``, every statistic of the
    amplifier (``MEAN``, ``MEANCLIP``, ``NOISE``, ...), one ``TEST_<NAME>``
    boolean per amplifier test, one ``DETECTOR_TEST_<NAME>`` boolean per
    detector test (repeated on each of its amplifiers) and ``SUCCESS`` (the
    amplifier's).
    """
    rows: list[dict[str, Any]] = []
    for r in detector_results:
        for amp, rec in r["AMP"].items():
            row: dict[str, Any] = {"EXPOSURE": r["EXPOSURE"], "DETECTOR": r["DETECTOR"], "AMP": amp}
            row.update({k: v for k, v in rec.items() if k not in ("TESTS", "SUCCESS")})
            row.update({f"TEST_{name}": ok for name, ok in rec["TESTS"].items()})
            row.update({f"DETECTOR_TEST_{name}": ok for name, ok in r["TESTS"].items()})
            row["SUCCESS"] = rec["SUCCESS"]
            rows.append(row)
    return rows


def results_table(detector_results: Iterable[Mapping[str, Any]]) -> Table:
    """`results_rows` as an `astropy.table.Table` (all rows must have the
    same columns, i.e. come from one calibration type and one set of
    thresholds)."""
    rows = results_rows(detector_results)
    if not rows:
        return Table()
    names = list(rows[0])
    for row in rows:
        if list(row) != names:
            raise ValueError(f"rows with different columns: {names} vs {list(row)}")
    return Table(rows=[[row[n] for n in names] for row in rows], names=names)
