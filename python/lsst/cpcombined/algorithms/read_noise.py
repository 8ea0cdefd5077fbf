"""Read noise measured from the data, and checks of the read noise values a
calibration run produces.

Two measurements, independent of any fit:

**Overscan.**  The ISR measures the read noise of every amplifier of every
frame on the serial overscan (`lsst.cpcombined.algorithms.isr.overscan_noise`:
residuals about the row statistic, corrected for the statistic's own noise).
`combine_frame_noise` combines these per-frame values over a stack of
frames (the biases of a run) with a clipped mean; its error is the scatter
of the frames divided by the square root of their number.

**Imaging area.**  The difference of two bias frames of the same amplifier
cancels the fixed bias structure, dark current and everything else common
to both frames, leaving ``sqrt(2)`` times the pixel noise plus whatever the
overscan correction added: a constant per row (the serial row statistic) and
a constant per column (the parallel column statistic).  `pair_difference_noise`
removes a median per row and then per column from the difference, measures
the clipped standard deviation of what is left (`clipped_std`: corrected for
the clipping's truncation) and divides it by ``sqrt(2)`` and by the square
root of the factors by which subtracting a median of ``n`` Gaussian values
reduces their variance (`row_subtraction_variance_factor`, for the row
length and the column length).  Row-correlated noise is therefore not part
of this measurement: it is the white pixel noise.  Cosmic rays and masked
pixels are excluded.

Both measure what the pixels have, so an amplifier whose imaging area is
noisier than its overscan (or whose overscan differs from the camera's
nominal value, or from the photon transfer curve's fitted noise) stands out.
`compare_read_noise` lists the pairs of values that disagree beyond their
combined errors.
"""

from __future__ import annotations

__all__ = (
    "ReadNoiseDisagreement",
    "ReadNoiseEstimate",
    "amp_pair_noise",
    "combine_estimates",
    "combine_frame_noise",
    "compare_read_noise",
    "pair_difference_noise",
)

import dataclasses
import functools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .isr import clipped_std, row_subtraction_variance_factor


@dataclasses.dataclass(frozen=True)
class ReadNoiseEstimate:
    """A read-noise measurement.

    Attributes
    ----------
    value
        Read noise (units of the input: ADU or electrons); NaN when not
        measurable.
    error
        One-sigma statistical error of ``value`` (NaN when unknown).
    n
        Number of values it was measured from (frames, pairs or pixels).
    """

    value: float
    error: float
    n: int

    @property
    def valid(self) -> bool:
        """Whether the value is finite."""
        return math.isfinite(self.value)

    def scaled(self, factor: float) -> ReadNoiseEstimate:
        """The estimate in other units (e.g. ADU times the gain)."""
        return ReadNoiseEstimate(self.value * factor, self.error * abs(factor), self.n)


_NAN = ReadNoiseEstimate(math.nan, math.nan, 0)


@functools.lru_cache(maxsize=64)
def _median_factor(n: int) -> float:
    """`row_subtraction_variance_factor` of a median of ``n`` values (cached:
    it integrates order-statistic densities)."""
    return row_subtraction_variance_factor(n, "median") if n >= 2 else 1.0


def combine_frame_noise(values: Iterable[float], clip_sigma: float = 3.0) -> ReadNoiseEstimate:
    """Combine per-frame read-noise values of one amplifier.

    Parameters
    ----------
    values
        One value per frame (e.g. the ISR's overscan noise of each bias);
        non-finite values are ignored.
    clip_sigma
        Clipping threshold of the clipped mean (`clipped_std`), which keeps a
        frame with a transient (a burst of pickup noise) from pulling the
        result.

    Returns
    -------
    estimate
        Clipped mean of the values; error: their clipped standard deviation
        divided by ``sqrt(n)`` (NaN with fewer than 3 frames).
    """
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return _NAN
    if x.size < 3:
        return ReadNoiseEstimate(float(np.mean(x)), math.nan, int(x.size))
    mean, std = clipped_std(x, sigma=clip_sigma)
    return ReadNoiseEstimate(float(mean), float(std / math.sqrt(x.size)), int(x.size))


def pair_difference_noise(
    image1: np.ndarray,
    image2: np.ndarray,
    bad: np.ndarray | None = None,
    clip_sigma: float = 3.0,
) -> ReadNoiseEstimate:
    """White pixel noise of one amplifier from the difference of two frames.

    Parameters
    ----------
    image1, image2
        The same amplifier region of two overscan-corrected bias frames
        (2-d, [y, x], same units).
    bad
        Pixels to exclude (either frame masked), same shape; non-finite
        pixels are always excluded.
    clip_sigma
        Clipping threshold of `clipped_std` (cosmic rays, hot pixels).

    Returns
    -------
    estimate
        Read noise of one frame; error: the statistical error of a standard
        deviation from ``n`` pixels, ``value / sqrt(2 (n - 1))``; ``n``: the
        pixels used.
    """
    a = np.asarray(image1, dtype=np.float64)
    b = np.asarray(image2, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"pair_difference_noise needs two 2-d arrays of one shape, got {a.shape} and {b.shape}"
        )
    diff = a - b
    exclude = ~np.isfinite(diff)
    if bad is not None:
        exclude |= np.asarray(bad, dtype=bool)
    ny, nx = diff.shape
    if nx < 2 or ny < 2 or exclude.all():
        return _NAN
    diff[exclude] = np.nan
    # Reject gross outliers (cosmic rays in either frame) before the row and
    # column medians, so a track does not shift the statistic of its row.
    centre, sigma = clipped_std(diff, sigma=clip_sigma)
    if not math.isfinite(sigma) or sigma <= 0:
        return _NAN
    diff[np.abs(diff - centre) > 2.0 * clip_sigma * sigma] = np.nan
    with warnings.catch_warnings():  # rows or columns entirely masked
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = np.nanmedian(diff, axis=1)
        diff -= np.where(np.isfinite(rows), rows, 0.0)[:, np.newaxis]
        cols = np.nanmedian(diff, axis=0)
        diff -= np.where(np.isfinite(cols), cols, 0.0)[np.newaxis, :]
    good = np.isfinite(diff)
    n = int(np.count_nonzero(good))
    if n < 10:
        return _NAN
    _, s = clipped_std(diff[good], sigma=clip_sigma)
    n_per_row = max(2, int(round(n / ny)))
    n_per_col = max(2, int(round(n / nx)))
    factor = _median_factor(n_per_row) * _median_factor(n_per_col)
    value = s / math.sqrt(2.0 * factor)
    return ReadNoiseEstimate(float(value), float(value / math.sqrt(2.0 * (n - 1))), n)


def amp_pair_noise(
    image1: np.ndarray,
    image2: np.ndarray,
    regions: Mapping[str, tuple[slice, slice]],
    bad: np.ndarray | None = None,
    clip_sigma: float = 3.0,
) -> dict[str, ReadNoiseEstimate]:
    """`pair_difference_noise` of every amplifier region of two detector
    images.

    Parameters
    ----------
    image1, image2
        Assembled detector images (overscan-corrected biases).
    regions
        Amplifier name -> ``(y slice, x slice)`` in the assembled frame.
    bad
        Pixels to exclude, shape of the images.
    clip_sigma
        See `pair_difference_noise`.
    """
    out = {}
    for amp, (ys, xs) in regions.items():
        out[amp] = pair_difference_noise(
            image1[ys, xs], image2[ys, xs], None if bad is None else bad[ys, xs], clip_sigma
        )
    return out


def combine_estimates(estimates: Sequence[ReadNoiseEstimate]) -> ReadNoiseEstimate:
    """Combine independent estimates of one read noise (e.g. of several
    frame pairs).

    Returns
    -------
    estimate
        Mean of the valid values; error: the larger of their scatter divided
        by ``sqrt(n)`` (with at least 3 of them) and the propagated
        statistical errors; ``n``: the number of estimates combined.
    """
    valid = [e for e in estimates if e.valid]
    if not valid:
        return _NAN
    values = np.array([e.value for e in valid])
    errors = np.array([e.error for e in valid])
    mean = float(values.mean())
    propagated = float(np.sqrt(np.nansum(errors**2)) / len(valid)) if np.isfinite(errors).any() else math.nan
    scatter = float(values.std(ddof=1) / math.sqrt(len(valid))) if len(valid) >= 3 else math.nan
    error = (
        float(np.nanmax([propagated, scatter]))
        if math.isfinite(propagated) or math.isfinite(scatter)
        else math.nan
    )
    return ReadNoiseEstimate(mean, error, len(valid))


@dataclasses.dataclass(frozen=True)
class ReadNoiseDisagreement:
    """Two read-noise values of one amplifier that disagree.

    Attributes
    ----------
    first, second
        Names of the two sources (``overscan``, ``image``, ``ptc``,
        ``nominal``...).
    value1, error1, value2, error2
        Their values and the errors used (statistical and systematic).
    n_sigma
        ``|value1 - value2| / sqrt(error1**2 + error2**2)``.
    """

    first: str
    second: str
    value1: float
    error1: float
    value2: float
    error2: float
    n_sigma: float

    def describe(self, unit: str = "") -> str:
        """One line: ``ptc 12.50 ± 0.90 vs overscan 10.01 ± 0.10 (2.7 σ)``."""
        u = f" {unit}" if unit else ""
        return (
            f"{self.first} {self.value1:.2f} ± {self.error1:.2f}{u} vs {self.second} "
            f"{self.value2:.2f} ± {self.error2:.2f}{u} ({self.n_sigma:.1f} σ)"
        )


def compare_read_noise(
    values: Mapping[str, tuple[float, float]],
    *,
    systematic: Mapping[str, float] | None = None,
    n_sigma: float = 3.0,
) -> list[ReadNoiseDisagreement]:
    """The pairs of read-noise values of one amplifier that disagree.

    Parameters
    ----------
    values
        Source name -> ``(value, error)`` (all in one unit); sources with a
        non-finite value are skipped, a non-finite error counts as 0.
    systematic
        Source name -> relative systematic error added in quadrature to
        its error (e.g. ``{"overscan": 0.01, "nominal": 0.10}``): the
        accuracy a value is trusted to beyond its statistics.
    n_sigma
        Two values disagree when ``|a - b| > n_sigma * sqrt(err_a**2 +
        err_b**2)``.

    Returns
    -------
    disagreements
        In the order of ``values`` (each pair once).
    """
    systematic = systematic or {}
    usable: list[tuple[str, float, float]] = []
    for name, (value, error) in values.items():
        value = float(value)
        if not math.isfinite(value):
            continue
        error = float(error) if error is not None and math.isfinite(float(error)) else 0.0
        total = math.hypot(error, systematic.get(name, 0.0) * abs(value))
        usable.append((name, value, total))
    out = []
    for i, (n1, v1, e1) in enumerate(usable):
        for n2, v2, e2 in usable[i + 1 :]:
            scale = math.hypot(e1, e2)
            if scale <= 0:
                continue
            sig = abs(v1 - v2) / scale
            if sig > n_sigma:
                out.append(ReadNoiseDisagreement(n1, n2, v1, e1, v2, e2, sig))
    return out
