"""Instrument signature removal (ISR) for building and verifying calibrations.

This module holds the pure-numpy steps that turn one detector's raw frame
(`lsst.cpcombined.obs.raw.RawImage`) into a trimmed, assembled image with a mask
and a variance plane, and that apply combined calibrations to it:

1. **Serial overscan** (per amplifier): a per-row statistic (median by
   default) of the serial overscan columns, skipping a few leading columns
   (charge-transfer trailing of the last data pixel) and trailing columns,
   computed over *all* raw rows (data rows and parallel-overscan rows) and
   subtracted row by row from the whole raw amplifier array.
2. **Parallel overscan** (optional, on by default): a per-column statistic of
   the serially corrected parallel-overscan rows, again skipping a few
   leading/trailing rows, subtracted column by column from the data section.
3. **Trim, flip, assemble**: each amplifier's data section is flipped from
   readout into detector orientation (`AmpGeometry.flip_x`/`flip_y`) and
   written at `AmpGeometry.assembled_slices` of the detector image.
4. **Masks**: ``SAT`` where the *raw* value (before any subtraction) is at or
   above the amplifier's saturation level; ``NO_DATA | BAD`` where the raw
   value is NaN (the value stays NaN).
5. **Gains** (optional): ADU -> electrons with the per-amplifier gain.
6. **Variance**: Poisson term plus read noise squared (`make_variance`).
7. **Calibrations** (optional): subtract a bias, subtract a dark (per second)
   times the dark time, divide by a flat (`apply_calibrations`).

Overscan noise
--------------
The serial-overscan *residual* (overscan pixels minus their row statistic)
gives the read noise of each amplifier.  Subtracting a statistic computed
from the same ``N`` pixels makes the residual scatter smaller than the read
noise: for Gaussian noise of variance ``s**2``,

- row mean: ``Var(x - mean) = s**2 (1 - 1/N)`` exactly;
- row median: ``Var(x - median) = s**2 (1 - 2/N + Var(median)/s**2)``,
  because ``Cov(x_i, median) = Var(mean) = s**2/N`` (the sample mean is
  independent of ``median - mean`` for Gaussian data).  Asymptotically
  ``Var(median) = pi s**2 / (2N)``, i.e. a factor ``1 - 0.429/N``; here the
  exact finite-``N`` value is integrated numerically
  (`row_subtraction_variance_factor`).  For ``N = 58`` (64 columns minus
  3 + 3 skipped) the factor is 0.9920 (0.40 % on the noise).

The residual scatter is measured with a sigma-clipped standard deviation
whose truncation bias is corrected (`clipped_std`), then divided by the
square root of that factor.

Conversely, subtracting the row median adds its own noise to every data
pixel: ``Var(median) ~ pi s**2 / (2N)``, i.e. about 2.7 % in variance (1.3 %
in noise) for ``N = 58``.  The variance plane does not include this term.
"""

from __future__ import annotations

__all__ = (
    "AmpOverscanResult",
    "AssembledRaw",
    "CalibFrame",
    "CalibIsrResult",
    "OVERSCAN_STATISTICS",
    "amp_regions",
    "apply_calibrations",
    "assemble_raw",
    "clipped_std",
    "make_variance",
    "median_variance_normal",
    "overscan_correct_amp",
    "overscan_noise",
    "reduce_axis",
    "row_subtraction_variance_factor",
    "run_calib_isr",
)

import dataclasses
import functools
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np
from numba import njit
from scipy import special
from scipy.integrate import cumulative_trapezoid, trapezoid

from ..obs.camera import AMP_NAMES, AmpGeometry, AmpLayout
from . import masks
from .combine import regular_subsample

if TYPE_CHECKING:
    from ..obs.raw import RawImage

#: Overscan statistics understood by `reduce_axis`.
OVERSCAN_STATISTICS: tuple[str, ...] = ("median", "mean", "clipped_mean")

PerAmp = Mapping[str, float] | float

_NODATA_BAD = masks.bits("NO_DATA", "BAD")


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def reduce_axis(
    array: np.ndarray,
    axis: int,
    statistic: str = "median",
    *,
    clip_sigma: float = 3.0,
    clip_iterations: int = 3,
) -> np.ndarray:
    """Reduce a 2-d array along one axis with an overscan statistic.

    NaN values are ignored (a slice with no finite value gives NaN).

    Parameters
    ----------
    array
        2-d array.
    axis
        Axis to reduce (1: one value per row; 0: one value per column).
    statistic
        ``"median"``, ``"mean"`` or ``"clipped_mean"`` (mean after iterative
        ``clip_sigma`` clipping around a median/MAD start).
    clip_sigma, clip_iterations
        Clipping parameters of ``"clipped_mean"``.

    Returns
    -------
    values : `numpy.ndarray`
        1-d float64 array.
    """
    if statistic not in OVERSCAN_STATISTICS:
        raise ValueError(f"unknown overscan statistic {statistic!r}; expected one of {OVERSCAN_STATISTICS}")
    a = np.asarray(array)
    has_nan = bool(np.isnan(a).any()) if a.dtype.kind == "f" else False
    if statistic == "median":
        if not has_nan:
            return np.median(a, axis=axis).astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(a, axis=axis).astype(np.float64)
    if statistic == "mean":
        if not has_nan:
            return np.mean(a, axis=axis, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(a, axis=axis, dtype=np.float64)
    return _clipped_mean(a, axis, clip_sigma, clip_iterations)


def _clipped_mean(a: np.ndarray, axis: int, sigma: float, n_iter: int) -> np.ndarray:
    """Vectorised iterative sigma-clipped mean along ``axis``."""
    x = np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)
    finite = np.isfinite(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        center = np.nanmedian(np.where(finite, x, np.nan), axis=-1)
        spread = 1.4826 * np.nanmedian(np.abs(np.where(finite, x, np.nan) - center[..., None]), axis=-1)
        for _ in range(max(1, n_iter)):
            keep = finite & (np.abs(x - center[..., None]) <= sigma * spread[..., None])
            n = keep.sum(axis=-1)
            xs = np.where(keep, x, 0.0)
            center = xs.sum(axis=-1) / n
            dev = np.where(keep, x - center[..., None], 0.0)
            spread = np.sqrt((dev * dev).sum(axis=-1) / np.maximum(n - 1, 1))
    return center


@functools.lru_cache(maxsize=256)
def median_variance_normal(n: int) -> float:
    """Variance of the sample median of ``n`` unit-variance Gaussian values.

    For even ``n`` the median is the mean of the two middle order statistics.
    Computed by numerical integration of the order-statistic densities
    (accurate to ~1e-6); tends to ``pi / (2 n)`` for large ``n``.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if n == 1:
        return 1.0
    x = np.linspace(-10.0, 10.0, 40001)
    log_phi = -0.5 * x * x - 0.5 * math.log(2 * math.pi)
    log_cdf = special.log_ndtr(x)
    log_sf = special.log_ndtr(-x)

    def order_density(r: int) -> np.ndarray:
        # density of the r-th (1-based) order statistic of n
        logc = special.gammaln(n + 1) - special.gammaln(r) - special.gammaln(n - r + 1)
        return np.exp(logc + (r - 1) * log_cdf + (n - r) * log_sf + log_phi)

    if n % 2 == 1:
        k = (n + 1) // 2
        return float(trapezoid(x * x * order_density(k), x))
    k = n // 2
    second_moment = float(trapezoid(x * x * order_density(k), x))  # same for k+1 by symmetry
    # E[X_(k) X_(k+1)] = C * int_y y g(y) int_{x<y} x h(x) dx dy
    logc = special.gammaln(n + 1) - special.gammaln(k) - special.gammaln(n - k)
    h = x * np.exp((k - 1) * log_cdf + log_phi)
    inner = cumulative_trapezoid(h, x, initial=0.0)
    g = x * np.exp((n - k - 1) * log_sf + log_phi + logc)
    cross = float(trapezoid(g * inner, x))
    return 0.5 * (second_moment + cross)


def row_subtraction_variance_factor(n: int, statistic: str = "median") -> float:
    """Ratio ``Var(x - stat) / Var(x)`` for Gaussian noise when a statistic
    of the same ``n`` values is subtracted from each of them.

    ``"mean"``: ``1 - 1/n``.  ``"median"``: ``1 - 2/n + Var(median)`` with
    the exact finite-``n`` median variance (`median_variance_normal`).
    ``"clipped_mean"``: treated as the mean (a 3-sigma clipped mean of
    Gaussian data is within 0.5 % of the mean's efficiency).
    """
    if n < 2:
        raise ValueError("need at least 2 overscan columns to measure a residual noise")
    if statistic == "median":
        return 1.0 - 2.0 / n + median_variance_normal(n)
    if statistic in ("mean", "clipped_mean"):
        return 1.0 - 1.0 / n
    raise ValueError(f"unknown overscan statistic {statistic!r}")


def _truncation_std_factor(k: float) -> float:
    """Std of a unit Gaussian truncated to ``|x| < k``."""
    phi = math.exp(-0.5 * k * k) / math.sqrt(2 * math.pi)
    inside = math.erf(k / math.sqrt(2.0))
    return math.sqrt(1.0 - 2.0 * k * phi / inside)


#: Largest number of values whose quartiles seed `clipped_std` exactly.
_SEED_SAMPLE = 20_000


def clipped_std(values: np.ndarray, sigma: float = 3.0, max_iterations: int = 10) -> tuple[float, float]:
    """Sigma-clipped mean and standard deviation, corrected for truncation.

    Starts from the median and the interquartile-range sigma (of a regular
    subsample of 20 000 values when there are more), then
    iteratively keeps ``|x - mean| < sigma * s`` and re-estimates
    ``s = std(kept) / t(sigma)`` where ``t`` is the standard deviation of a
    unit Gaussian truncated at ``+-sigma`` (0.9866 for 3 sigma).  For Gaussian
    data the fixed point is the true sigma (a plain clipped std would be
    ~1.4 % low at 3 sigma).

    Parameters
    ----------
    values
        Values (any shape; NaNs ignored).
    sigma
        Clipping threshold in units of the current sigma.
    max_iterations
        Maximum number of clipping iterations.

    Returns
    -------
    mean, std : `float`
        NaN if fewer than 2 finite values.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2:
        return float("nan"), float("nan")
    # The quartiles only seed the iterations, which use every value: a
    # regular subsample of large inputs is enough (an overscan has ~10^5).
    q25, center, q75 = np.percentile(regular_subsample(x, _SEED_SAMPLE), [25.0, 50.0, 75.0])
    s = (q75 - q25) / 1.3489795
    if not s > 0:
        s = float(np.std(x))
        if not s > 0:
            return float(center), 0.0
    t = _truncation_std_factor(sigma)
    keep = None
    for _ in range(max_iterations):
        new_keep = np.abs(x - center) < sigma * s
        if keep is not None and np.array_equal(new_keep, keep):
            break
        keep = new_keep
        kept = x[keep]
        if kept.size < 2:
            break
        center = float(kept.mean())
        s = float(kept.std(ddof=1)) / t
    return float(center), float(s)


def overscan_noise(
    residuals: np.ndarray, n_columns: int, statistic: str = "median", clip_sigma: float = 3.0
) -> float:
    """Read-noise estimate from serial-overscan residuals.

    Parameters
    ----------
    residuals
        Overscan pixels minus their per-row statistic, shape
        ``(rows, n_columns)``.
    n_columns
        Number of columns the row statistic was computed from.
    statistic
        The row statistic that was subtracted.
    clip_sigma
        Clipping threshold of `clipped_std`.

    Returns
    -------
    noise : `float`
        Clipped, truncation-corrected std of the residuals divided by
        ``sqrt(row_subtraction_variance_factor(n_columns, statistic))``.
    """
    _, s = clipped_std(residuals, sigma=clip_sigma)
    return s / math.sqrt(row_subtraction_variance_factor(n_columns, statistic))


# ---------------------------------------------------------------------------
# Overscan correction of one amplifier
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class AmpOverscanResult:
    """Overscan correction of one amplifier.

    Attributes
    ----------
    data
        Corrected data section, float32, in *raw readout orientation*
        (``data_height x data_width``), in ADU.
    serial_profile
        Per-row serial overscan statistic over all raw rows (ADU).
    parallel_profile
        Per-column parallel overscan statistic over the data columns (ADU),
        or `None` when the parallel correction was not done.
    level
        Overscan level: median of ``serial_profile`` (ADU).
    noise
        Read noise estimated from the serial-overscan residual (ADU).
    bad_rows
        Boolean per data row: the serial statistic was undefined (all
        overscan pixels NaN) and the amp level was used instead.
    """

    data: np.ndarray
    serial_profile: np.ndarray
    parallel_profile: np.ndarray | None
    level: float
    noise: float
    bad_rows: np.ndarray


def _skip_slice(start: int, stop: int, lead: int, trail: int, what: str) -> slice:
    if lead < 0 or trail < 0:
        raise ValueError(f"{what} skip counts must be >= 0")
    a, b = start + lead, stop - trail
    if b - a < 1:
        raise ValueError(f"{what}: skipping {lead}+{trail} of {stop - start} leaves nothing")
    return slice(a, b)


def overscan_correct_amp(
    raw_amp: np.ndarray,
    geom: AmpGeometry,
    *,
    statistic: str = "median",
    serial_skip: tuple[int, int] = (3, 3),
    do_parallel: bool = True,
    parallel_statistic: str | None = None,
    parallel_skip: tuple[int, int] = (3, 3),
    noise_clip_sigma: float = 3.0,
    out: np.ndarray | None = None,
) -> AmpOverscanResult:
    """Serial (and parallel) overscan correction of one raw amplifier.

    Parameters
    ----------
    raw_amp
        Raw amplifier array in readout orientation
        (``raw_height x raw_width``, ADU), e.g. `RawImage.amp_array`.
    geom
        Geometry of the amplifier.
    statistic
        Serial overscan row statistic (see `reduce_axis`).
    serial_skip
        Leading and trailing serial overscan columns to ignore.
    do_parallel
        Also subtract the per-column parallel overscan statistic.
    parallel_statistic
        Column statistic of the parallel overscan (default: ``statistic``).
    parallel_skip
        Leading and trailing parallel overscan rows to ignore.
    noise_clip_sigma
        Clipping threshold of the overscan noise estimate.
    out
        Optional float32 array (``data_height x data_width``, any strides)
        receiving the corrected data section; allocated when `None`.

    Returns
    -------
    result : `AmpOverscanResult`
    """
    lay = geom.layout
    if raw_amp.shape != (lay.raw_height, lay.raw_width):
        raise ValueError(f"raw amp shape {raw_amp.shape} != {(lay.raw_height, lay.raw_width)}")
    ys, xs = geom.raw_serial_overscan_all_rows
    cols = _skip_slice(xs.start, xs.stop, serial_skip[0], serial_skip[1], "serial overscan")
    serial = raw_amp[ys, cols]
    profile = reduce_axis(serial, 1, statistic)
    n_cols = cols.stop - cols.start

    finite_profile = np.isfinite(profile)
    level = float(np.median(profile[finite_profile])) if finite_profile.any() else float("nan")
    if not finite_profile.all():
        profile = np.where(finite_profile, profile, level)

    # read noise from the residual of the serial overscan
    resid = serial.astype(np.float64) - profile[:, None]
    if n_cols >= 2:
        noise = overscan_noise(resid, n_cols, statistic, noise_clip_sigma)
    else:
        noise = float("nan")

    h = lay.data_height
    data = raw_amp[geom.raw_data]
    if out is None:
        out = np.empty(data.shape, dtype=np.float32)
    np.subtract(data, profile[:h, None].astype(np.float32), out=out, casting="unsafe")

    par_profile = None
    if do_parallel and lay.parallel_overscan > 0:
        pys, pxs = geom.raw_parallel_overscan
        rows = _skip_slice(pys.start, pys.stop, parallel_skip[0], parallel_skip[1], "parallel overscan")
        par = raw_amp[rows, pxs].astype(np.float64) - profile[rows, None]
        par_profile = reduce_axis(par, 0, parallel_statistic or statistic)
        bad_cols = ~np.isfinite(par_profile)
        if bad_cols.any():
            par_profile[bad_cols] = 0.0
        out -= par_profile[None, :].astype(np.float32)

    return AmpOverscanResult(
        data=out,
        serial_profile=profile,
        parallel_profile=par_profile,
        level=level,
        noise=noise,
        bad_rows=~finite_profile[:h],
    )


# ---------------------------------------------------------------------------
# Whole detector
# ---------------------------------------------------------------------------


def _per_amp(value: PerAmp | None, what: str) -> dict[str, float] | None:
    """Normalise a per-amp parameter (mapping or scalar) to a dict."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        missing = [a for a in AMP_NAMES if a not in value]
        if missing:
            raise KeyError(f"{what} missing for amplifiers {missing}")
        return {a: float(value[a]) for a in AMP_NAMES}
    return {a: float(value) for a in AMP_NAMES}


def amp_regions(layout: AmpLayout) -> dict[str, tuple[slice, slice]]:
    """``(y, x)`` slices of every amplifier in the assembled detector."""
    return {a: layout.geometry(a).assembled_slices for a in AMP_NAMES}


@dataclasses.dataclass
class AssembledRaw:
    """Overscan-corrected, assembled detector (output of `assemble_raw`).

    Attributes
    ----------
    image
        float32 ``detector_height x detector_width`` image (ADU, or
        electrons when gains were applied).
    mask
        uint8 bitmask (``SAT``, ``NO_DATA | BAD``, ``SUSPECT``).
    amps
        Per-amp `AmpOverscanResult` (``data`` is a view into ``image``).
    n_saturated, n_nan
        Per-amp counts of saturated and NaN raw data pixels.
    """

    image: np.ndarray
    mask: np.ndarray
    amps: dict[str, AmpOverscanResult]
    n_saturated: dict[str, int]
    n_nan: dict[str, int]


def assemble_raw(
    raw: RawImage,
    *,
    statistic: str = "median",
    serial_skip: tuple[int, int] = (3, 3),
    do_parallel: bool = True,
    parallel_statistic: str | None = None,
    parallel_skip: tuple[int, int] = (3, 3),
    saturation: PerAmp | None = None,
    gains: PerAmp | None = None,
    noise_clip_sigma: float = 3.0,
) -> AssembledRaw:
    """Overscan-correct, trim, flip and assemble all amplifiers of a raw frame.

    Parameters
    ----------
    raw
        `lsst.cpcombined.obs.raw.RawImage`.
    statistic, serial_skip, do_parallel, parallel_statistic, parallel_skip, noise_clip_sigma
        See `overscan_correct_amp`.
    saturation
        Per-amp saturation level (ADU) compared with the *raw* value;
        `None` disables the ``SAT`` mask.
    gains
        Per-amp gains (e-/ADU); when given the image is converted to
        electrons.

    Returns
    -------
    assembled : `AssembledRaw`
    """
    lay: AmpLayout = raw.layout
    sat = _per_amp(saturation, "saturation")
    gain = _per_amp(gains, "gain")
    image = np.empty((lay.detector_height, lay.detector_width), dtype=np.float32)
    mask = np.zeros(image.shape, dtype=np.uint8)
    amps: dict[str, AmpOverscanResult] = {}
    n_sat: dict[str, int] = {}
    n_nan: dict[str, int] = {}
    sat_bit = np.uint8(masks.BIT["SAT"])
    suspect_bit = np.uint8(masks.BIT["SUSPECT"])
    for amp in AMP_NAMES:
        geom = lay.geometry(amp)
        raw_amp = raw.amp_array(amp)
        # destination views, seen in raw readout orientation
        dest = geom.from_detector_orientation(image[geom.assembled_slices])
        mdest = geom.from_detector_orientation(mask[geom.assembled_slices])
        res = overscan_correct_amp(
            raw_amp,
            geom,
            statistic=statistic,
            serial_skip=serial_skip,
            do_parallel=do_parallel,
            parallel_statistic=parallel_statistic,
            parallel_skip=parallel_skip,
            noise_clip_sigma=noise_clip_sigma,
            out=dest,
        )
        data = raw_amp[geom.raw_data]
        nan = np.isnan(data)
        n_nan[amp] = int(nan.sum())
        if n_nan[amp]:
            mdest[nan] |= np.uint8(_NODATA_BAD)
        if sat is not None:
            s = data >= sat[amp]
            n_sat[amp] = int(s.sum())
            if n_sat[amp]:
                mdest[s] |= sat_bit
        else:
            n_sat[amp] = 0
        if res.bad_rows.any():
            mdest[res.bad_rows, :] |= suspect_bit
        if gain is not None:
            dest *= np.float32(gain[amp])
        amps[amp] = res
    return AssembledRaw(image, mask, amps, n_sat, n_nan)


def _check_tiling(regions: Iterable[tuple[slice, slice]], shape: tuple[int, ...]) -> None:
    """Raise unless the rectangles ``regions`` tile an image of ``shape``
    exactly (inside it, disjoint, areas adding up to the whole)."""
    ny, nx = shape
    boxes = []
    for ys, xs in regions:
        y0, y1, _ = ys.indices(ny)
        x0, x1, _ = xs.indices(nx)
        boxes.append((y0, max(y0, y1), x0, max(x0, x1)))
    area = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in boxes)
    overlap = any(
        a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]
        for i, a in enumerate(boxes)
        for b in boxes[i + 1 :]
    )
    if overlap or area != ny * nx:
        raise ValueError("amp_regions do not cover the whole image")


def make_variance(
    image: np.ndarray,
    read_noise_per_amp: PerAmp,
    amp_regions: Mapping[str, tuple[slice, slice]],
    gain_per_amp: PerAmp,
    units: Literal["electron", "adu"] = "electron",
) -> np.ndarray:
    """Variance plane: Poisson term plus read noise squared, per amplifier.

    Parameters
    ----------
    image
        Overscan-corrected (bias-level-free) image.
    read_noise_per_amp
        Read noise in **electrons** per amplifier (mapping or scalar).
    amp_regions
        ``(y, x)`` slices of each amplifier in ``image`` (see `amp_regions`).
    gain_per_amp
        Gain (e-/ADU) per amplifier (mapping or scalar).
    units
        Units of ``image``: ``"electron"`` -> ``var = max(image, 0) + rn**2``
        (e-^2); ``"adu"`` -> ``var = max(image, 0)/g + (rn/g)**2`` (ADU^2).

    Returns
    -------
    variance : `numpy.ndarray`
        float32, same shape as ``image``; NaN where ``image`` is NaN.
    """
    if units not in ("electron", "adu"):
        raise ValueError(f"units must be 'electron' or 'adu', got {units!r}")
    _check_tiling(amp_regions.values(), image.shape)
    var = np.maximum(image, np.float32(0.0), dtype=np.float32)  # NaN propagates
    for amp, region in amp_regions.items():
        rn = float(read_noise_per_amp[amp] if isinstance(read_noise_per_amp, Mapping) else read_noise_per_amp)
        g = float(gain_per_amp[amp] if isinstance(gain_per_amp, Mapping) else gain_per_amp)
        out = var[region]
        if units == "electron":
            out += np.float32(rn * rn)
        else:
            out /= np.float32(g)
            out += np.float32((rn / g) ** 2)
    return var


# ---------------------------------------------------------------------------
# Calibrations
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class CalibFrame:
    """A combined calibration to apply: image plus optional variance and mask.

    The image must be in the units of the frame it is applied to (electrons
    when gains are applied); a dark is *per second*.  ``mask`` bits are OR-ed
    into the output mask.
    """

    image: np.ndarray
    variance: np.ndarray | None = None
    mask: np.ndarray | None = None


def _as_calib(value: np.ndarray | CalibFrame | None, shape: tuple[int, ...], what: str) -> CalibFrame | None:
    if value is None:
        return None
    frame = value if isinstance(value, CalibFrame) else CalibFrame(np.asarray(value))
    if frame.image.shape != shape:
        raise ValueError(f"{what} shape {frame.image.shape} != image shape {shape}")
    for attr in ("variance", "mask"):
        arr = getattr(frame, attr)
        if arr is not None and arr.shape != shape:
            raise ValueError(f"{what} {attr} shape {arr.shape} != image shape {shape}")
    return frame


def apply_calibrations(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    *,
    bias: np.ndarray | CalibFrame | None = None,
    dark: np.ndarray | CalibFrame | None = None,
    dark_time: float | None = None,
    flat: np.ndarray | CalibFrame | None = None,
) -> None:
    """Apply bias, dark and flat in place.

    ``image -= bias``; ``image -= dark * dark_time``; ``image /= flat``.
    Variance: ``var += var_bias + dark_time**2 var_dark`` then
    ``var = var/flat**2 + image_out**2 var_flat/flat**2`` (calibration
    variances only when given).  Calibration masks are OR-ed into ``mask``.
    Pixels where a calibration is NaN, or the flat is ``<= 0``, get
    ``NO_DATA | BAD`` and NaN image and variance.

    Parameters
    ----------
    image, variance, mask
        Frame to correct (modified in place).
    bias
        Combined bias (same units as ``image``).
    dark
        Combined dark, per second (same units as ``image`` per second).
    dark_time
        Dark time of the frame in seconds (required with ``dark``).
    flat
        Combined flat (dimensionless, normalised).

    Raises
    ------
    ValueError
        If a calibration's shape differs from the image's, or a dark comes
        without a dark time.
    TypeError
        If the image or variance is not float32 or the mask not uint8.

    Notes
    -----
    One pass over the pixels (numba), each operation in float32 in the
    order of the formulas above: the same numbers as the whole-array
    expressions, without their ~20 full-frame temporaries (0.21 s -> 0.04 s
    for a full-size LATISS frame with bias, dark and flat).
    """
    shape = image.shape
    b = _as_calib(bias, shape, "bias")
    d = _as_calib(dark, shape, "dark")
    f = _as_calib(flat, shape, "flat")
    if d is not None and dark_time is None:
        raise ValueError("a dark needs the exposure's dark time")
    if image.dtype != np.float32 or variance.dtype != np.float32 or mask.dtype != np.uint8:
        raise TypeError("apply_calibrations corrects a float32 image and variance and a uint8 mask")
    t = 0.0 if dark_time is None else float(dark_time)
    _calibrate_pixels(
        image,
        variance,
        mask,
        *_kernel_planes(b),
        *_kernel_planes(d),
        *_kernel_planes(f),
        np.float32(t),
        np.float32(t * t),
        np.uint8(_NODATA_BAD),
    )


_ABSENT_PLANE = np.zeros((1, 1), dtype=np.float32)
_ABSENT_MASK = np.zeros((1, 1), dtype=np.uint8)


def _kernel_planes(
    frame: CalibFrame | None,
) -> tuple[bool, np.ndarray, bool, np.ndarray, bool, np.ndarray]:
    """``(has_image, image, has_variance, variance, has_mask, mask)`` of a
    calibration as `_calibrate_pixels` takes them (float32 planes, uint8
    mask; a one-pixel placeholder for what is absent)."""
    if frame is None:
        return False, _ABSENT_PLANE, False, _ABSENT_PLANE, False, _ABSENT_MASK
    image = np.asarray(frame.image, dtype=np.float32)
    variance = _ABSENT_PLANE if frame.variance is None else np.asarray(frame.variance, dtype=np.float32)
    mask = _ABSENT_MASK if frame.mask is None else frame.mask.astype(np.uint8, copy=False)
    return True, image, frame.variance is not None, variance, frame.mask is not None, mask


@njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
def _calibrate_pixels(
    image, variance, mask,
    has_b, b_img, has_bv, b_var, has_bm, b_mask,
    has_d, d_img, has_dv, d_var, has_dm, d_mask,
    has_f, f_img, has_fv, f_var, has_fm, f_mask,
    t, t2, nodata_bad,
):  # pragma: no cover - numba  # fmt: skip
    """The pixel loop of `apply_calibrations`: one pass, no temporary
    arrays, each operation in float32 in the order the formulas give it."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    nan = np.float32(np.nan)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            img = image[y, x]
            var = variance[y, x]
            m = mask[y, x]
            bad = False
            if has_b:
                c = b_img[y, x]
                img = img - c
                if has_bv:
                    var = var + b_var[y, x]
                if has_bm:
                    m |= b_mask[y, x]
                bad = bad or np.isnan(c)
            if has_d:
                c = d_img[y, x]
                img = img - c * t
                if has_dv:
                    var = var + d_var[y, x] * t2
                if has_dm:
                    m |= d_mask[y, x]
                bad = bad or np.isnan(c)
            if has_f:
                c = f_img[y, x]
                safe = c
                if not (c > zero):
                    bad = True
                    safe = one
                img = img / safe
                s2 = safe * safe
                var = var / s2
                if has_fv:
                    var = var + img * img * (f_var[y, x] / s2)
                if has_fm:
                    m |= f_mask[y, x]
            if bad:
                img = nan
                var = nan
                m |= nodata_bad
            image[y, x] = img
            variance[y, x] = var
            mask[y, x] = m


# ---------------------------------------------------------------------------
# Top level
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class CalibIsrResult:
    """Output of `run_calib_isr` for one detector.

    Attributes
    ----------
    image
        Assembled, trimmed image, float32 (``units``).
    variance
        Variance plane, float32 (``units`` squared).
    mask
        uint8 bitmask (`lsst.cpcombined.algorithms.masks`).
    units
        ``"electron"`` or ``"adu"``.
    amp_stats
        Per-amp diagnostics keyed by amp name, each a dict with
        ``overscan_level_adu``, ``overscan_noise_adu``, ``overscan_noise_e``,
        ``parallel_level_adu`` (median of the column profile, NaN when not
        done), ``gain`` (e-/ADU used for the conversions), ``gain_applied``
        (1.0/0.0), ``read_noise_e`` (used in the variance), ``n_saturated``,
        ``n_nan``.
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    units: str
    amp_stats: dict[str, dict[str, float]]


def run_calib_isr(
    raw: RawImage,
    *,
    gains: PerAmp,
    read_noise: PerAmp | None = None,
    saturation: PerAmp | None = 142857.0,
    do_saturation: bool = True,
    do_parallel: bool = True,
    apply_gains: bool = True,
    statistic: str = "median",
    serial_skip: tuple[int, int] = (3, 3),
    parallel_statistic: str | None = None,
    parallel_skip: tuple[int, int] = (3, 3),
    noise_clip_sigma: float = 3.0,
    bias: np.ndarray | CalibFrame | None = None,
    dark: np.ndarray | CalibFrame | None = None,
    dark_time: float | None = None,
    flat: np.ndarray | CalibFrame | None = None,
) -> CalibIsrResult:
    """Run the calibration ISR of one detector.

    Steps: serial (and parallel) overscan per amp, trim/flip/assemble,
    ``SAT`` and NaN masks, optional gain conversion, variance plane (before
    calibrations, so the Poisson term includes the dark current), then
    optional bias / dark / flat application (`apply_calibrations`).

    Parameters
    ----------
    raw
        `lsst.cpcombined.obs.raw.RawImage`.
    gains
        Per-amp gains in e-/ADU (mapping keyed by amp name, or a scalar).
        Used for the conversion (``apply_gains``), for the noise in
        electrons, and for the Poisson term of an ADU variance.
    read_noise
        Per-amp read noise in electrons for the variance plane; `None` uses
        the read noise measured in the serial overscan.
    saturation
        Per-amp saturation level in ADU (default: the camera's nominal
        142857 for every amp).
    do_saturation
        Set the ``SAT`` mask.
    do_parallel
        Do the parallel overscan correction.
    apply_gains
        Convert the image to electrons.
    statistic, serial_skip, parallel_statistic, parallel_skip, noise_clip_sigma
        Overscan options (see `overscan_correct_amp`).
    bias, dark, dark_time, flat
        Calibrations to apply (see `apply_calibrations`), in the output
        units (electrons when ``apply_gains``).

    Returns
    -------
    result : `CalibIsrResult`
    """
    gain = _per_amp(gains, "gain")
    assert gain is not None
    asm = assemble_raw(
        raw,
        statistic=statistic,
        serial_skip=serial_skip,
        do_parallel=do_parallel,
        parallel_statistic=parallel_statistic,
        parallel_skip=parallel_skip,
        saturation=saturation if do_saturation else None,
        gains=gain if apply_gains else None,
        noise_clip_sigma=noise_clip_sigma,
    )
    if read_noise is None:
        rn = {a: asm.amps[a].noise * gain[a] for a in AMP_NAMES}
    else:
        rn = _per_amp(read_noise, "read noise")
        assert rn is not None
    units = "electron" if apply_gains else "adu"
    regions = amp_regions(raw.layout)
    variance = make_variance(asm.image, rn, regions, gain, units=units)
    image, mask = asm.image, asm.mask
    if bias is not None or dark is not None or flat is not None:
        apply_calibrations(image, variance, mask, bias=bias, dark=dark, dark_time=dark_time, flat=flat)
    stats: dict[str, dict[str, float]] = {}
    for a in AMP_NAMES:
        r = asm.amps[a]
        par = r.parallel_profile
        stats[a] = {
            "overscan_level_adu": r.level,
            "overscan_noise_adu": r.noise,
            "overscan_noise_e": r.noise * gain[a],
            "parallel_level_adu": float(np.median(par)) if par is not None else float("nan"),
            "gain": gain[a],
            "gain_applied": 1.0 if apply_gains else 0.0,
            "read_noise_e": rn[a],
            "n_saturated": float(asm.n_saturated[a]),
            "n_nan": float(asm.n_nan[a]),
        }
    return CalibIsrResult(image=image, variance=variance, mask=mask, units=units, amp_stats=stats)
