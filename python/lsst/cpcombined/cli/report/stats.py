"""Per-amplifier statistics the report tables show, and the rule that
highlights a value outside expectations."""

from __future__ import annotations

__all__ = ("AmpStats", "amp_statistics", "block_reduce", "clipped_mean_std", "outliers")

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ...algorithms.combine import clipped_stats
from ...algorithms.masks import bits, from_mask


@dataclasses.dataclass(frozen=True)
class AmpStats:
    """Statistics of one amplifier's good pixels.

    Attributes
    ----------
    median, mean, std
        Median, 3-sigma clipped mean and clipped standard deviation.
    n_bad
        Pixels masked ``BAD``/``NO_DATA`` or non-finite.
    """

    median: float
    mean: float
    std: float
    n_bad: int


_BAD = bits("BAD", "NO_DATA")


def amp_statistics(masked_image: object, regions: Mapping[str, tuple[slice, slice]]) -> dict[str, AmpStats]:
    """`AmpStats` of every amplifier region of a `lsst.images.MaskedImage`."""
    image = np.asarray(masked_image.image.array)  # type: ignore[attr-defined]
    mask = from_mask(masked_image.mask)  # type: ignore[attr-defined]
    out = {}
    for amp, (ys, xs) in regions.items():
        sub, sub_mask = image[ys, xs], mask[ys, xs]
        good = ((sub_mask & _BAD) == 0) & np.isfinite(sub)
        if not good.any():
            out[amp] = AmpStats(math.nan, math.nan, math.nan, int(sub.size))
            continue
        values = sub[good].astype(np.float64)
        mean, std = clipped_mean_std(values)
        out[amp] = AmpStats(float(np.median(values)), mean, std, int(sub.size - good.sum()))
    return out


def clipped_mean_std(values: np.ndarray, nsigma: float = 3.0, niter: int = 3) -> tuple[float, float]:
    """Sigma-clipped mean and standard deviation of a 1-d array of finite
    values (`lsst.cpcombined.algorithms.combine.clipped_stats`: at most
    ``niter`` times keep the values within ``nsigma`` standard deviations of
    the mean; one pass of a compiled kernel each, no copies)."""
    mean, std, _ = clipped_stats(values, None, 0, nsigma, niter)
    return mean, std


def outliers(
    values: Sequence[float], *, z: float = 5.0, min_relative: float = 0.05, min_absolute: float = 0.0
) -> list[bool]:
    """Which values stand out from the others (e.g. the amplifiers of one
    detector): farther from their median than ``z`` robust sigmas (1.4826
    median absolute deviations) *and* than ``min_relative`` of the median's
    magnitude *and* than ``min_absolute``.

    Too few finite values (fewer than 4) flag nothing.
    """
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    if finite.sum() < 4:
        return [False] * len(x)
    med = float(np.median(x[finite]))
    sigma = 1.4826 * float(np.median(np.abs(x[finite] - med)))
    dev = np.abs(x - med)
    limit = max(z * sigma, min_relative * abs(med), min_absolute)
    return [bool(f and d > limit) for f, d in zip(finite, dev, strict=False)]


def block_reduce(image: np.ndarray, target: int, how: str = "mean") -> tuple[np.ndarray, int]:
    """Shrink an image by an integer factor so its longer side is at most
    ``target`` pixels, averaging (``mean``) or taking the largest value
    (``max``) of each block; NaNs are ignored.

    Returns
    -------
    small, factor
        The shrunk image (edge rows/columns that do not fill a block are
        dropped) and the block size.
    """
    factor = max(1, int(math.ceil(max(image.shape) / target)))
    if factor == 1:
        return np.asarray(image, dtype=np.float64), 1
    ny, nx = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    shape = (ny // factor, factor, nx // factor, factor)
    if how == "mean":
        # Sums of the finite pixels and their counts: several times faster
        # than nanmean over the block axes.
        pixels = np.asarray(image[:ny, :nx])
        finite = np.isfinite(pixels)
        sums = np.where(finite, pixels, 0).reshape(shape).sum(axis=3, dtype=np.float64).sum(axis=1)
        counts = finite.reshape(shape).sum(axis=3).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), factor
    blocks = np.asarray(image[:ny, :nx], dtype=np.float64).reshape(shape)
    with warnings.catch_warnings():  # blocks that are entirely NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        reduced = np.nanmax(blocks, axis=(1, 3)) if how == "max" else np.nanmean(blocks, axis=(1, 3))
    return reduced, factor
