"""Images of the combined bias, dark and flat: the image with a colour bar
and pixel axes, the noise map of the combined pixels, and the histogram of
the pixel values."""

from __future__ import annotations

__all__ = ("DISPLAY_PIXELS", "draw_amp_grid", "image_panel", "product_figure", "products_section")

from typing import Any

import numpy as np

from ...algorithms.masks import bits, from_mask
from .context import ReportContext
from .page import esc, figure_html, note, pyplot
from .stats import block_reduce

#: Longest side of a displayed image (display pixels per panel).
DISPLAY_PIXELS = 620

_UNITS = {"bias": "e-", "dark": "e-/s", "flat": "relative"}
_CMAPS = {"bias": "viridis", "dark": "magma", "flat": "cividis"}


def draw_amp_grid(
    ax: Any, regions: dict[str, tuple[slice, slice]], *, labels: bool = True, colour: str = "w"
) -> None:
    """Amplifier boundaries (and names) on an axis in detector pixels."""
    for amp, (ys, xs) in regions.items():
        ax.add_patch(
            pyplot().Rectangle(
                (xs.start, ys.start),
                xs.stop - xs.start,
                ys.stop - ys.start,
                fill=False,
                lw=0.6,
                ec=colour,
                alpha=0.6,
            )
        )
        if labels:
            ax.text(
                xs.start + 0.5 * (xs.stop - xs.start),
                ys.start + 0.06 * (ys.stop - ys.start),
                amp,
                ha="center",
                va="bottom",
                fontsize=7,
                color=colour,
                alpha=0.85,
            )


def image_panel(
    fig: Any,
    ax: Any,
    image: np.ndarray,
    *,
    label: str,
    cmap: str = "viridis",
    symmetric: bool = False,
    percentiles: tuple[float, float] = (0.5, 99.5),
    regions: dict[str, tuple[slice, slice]] | None = None,
    amp_labels: bool = True,
) -> None:
    """Show an image (block-averaged to `DISPLAY_PIXELS`) in detector pixel
    coordinates with a colour bar, robust limits and amplifier outlines."""
    small, factor = block_reduce(image, DISPLAY_PIXELS)
    ny, nx = small.shape[0] * factor, small.shape[1] * factor
    finite = small[np.isfinite(small)]
    if finite.size:
        lo, hi = np.percentile(finite, percentiles)
        if symmetric:
            hi = max(abs(lo), abs(hi))
            lo = -hi
        if hi <= lo:
            hi = lo + 1e-9
    else:
        lo, hi = 0.0, 1.0
    im = ax.imshow(
        small,
        origin="lower",
        cmap=cmap,
        vmin=lo,
        vmax=hi,
        extent=(0, nx, 0, ny),
        interpolation="nearest",
        aspect="equal",
    )
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label(label, fontsize=10)
    bar.ax.tick_params(labelsize=9)
    ax.set_xlabel("x (pixel)", fontsize=10)
    ax.set_ylabel("y (pixel)", fontsize=10)
    ax.tick_params(labelsize=9)
    if regions:
        draw_amp_grid(ax, regions, labels=amp_labels, colour="w" if not symmetric else "k")
    if factor > 1:
        ax.text(
            0.01,
            0.99,
            f"{factor}×{factor} block means",
            transform=ax.transAxes,
            ha="left",
            va="top",
            fontsize=8,
            color="w" if not symmetric else "k",
        )


#: Inches of canvas right of the panels (for the colour bar's labels).
_RIGHT_MARGIN = 0.8

#: Pixels sampled (evenly) for the histogram's range and median; the counts
#: are of every pixel.
_SAMPLE = 1_000_000


def _histogram(ax: Any, values: np.ndarray, unit: str) -> None:
    sample = values[:: max(1, values.size // _SAMPLE)]
    lo, hi, med = np.percentile(sample, [0.05, 99.95, 50.0])
    if hi <= lo:
        hi = lo + 1e-9
    counts, bins = np.histogram(values, bins=159, range=(lo, hi))  # uniform bins: one linear pass
    ax.stairs(counts, bins, fill=True, color="#9bb7d4", ec="#2d5c8a", lw=0.8, label="all amps")
    n_low, n_high = int((values < lo).sum()), int((values > hi).sum())
    ax.set_yscale("log")
    ax.set_xlabel(f"pixel value ({unit})", fontsize=10)
    ax.set_ylabel("pixels", fontsize=10)
    ax.tick_params(labelsize=9)
    med = float(med)
    ax.axvline(med, color="#c62828", lw=1, ls="--", label=f"median {med:.4g}")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"{n_low} pixels below, {n_high} above the range shown", fontsize=9)


def product_figure(ctx: ReportContext, calib_type: str, det: int) -> str:
    """Image, noise map and histogram of one combined product."""
    mi = ctx.product(calib_type, det)
    if mi is None:
        return note(f"{calib_type} of detector {det}: not available.")
    plt = pyplot()
    # float32 as stored (block means and histograms need no more): no
    # full-frame float64 copies
    image = np.asarray(mi.image.array, dtype=np.float32)
    variance = np.asarray(mi.variance.array, dtype=np.float32) if mi.variance is not None else None
    mask = from_mask(mi.mask)
    bad = ((mask & bits("BAD", "NO_DATA")) != 0) | ~np.isfinite(image)
    shown = np.where(bad, np.nan, image)
    regions = ctx.regions(image.shape)
    unit = str(mi.image.unit) if mi.image.unit is not None else _UNITS[calib_type]
    aspect = min(1.4, max(0.5, image.shape[0] / image.shape[1]))
    # The panels span 14 inches; the canvas is wider so that the right colour
    # bar's labels fit inside it (the figure is drawn once, then cropped).
    width = 14.0 + _RIGHT_MARGIN
    fig = plt.figure(figsize=(width, 6.0 * aspect + 3.2))
    grid = fig.add_gridspec(
        2,
        2,
        height_ratios=[6.0 * aspect, 2.2],
        hspace=0.3,
        wspace=0.3,
        top=0.93,
        bottom=0.07,
        left=0.06 * 14.0 / width,
        right=0.97 * 14.0 / width,
    )
    ax_img, ax_noise = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_hist = fig.add_subplot(grid[1, :])
    image_panel(fig, ax_img, shown, label=f"{calib_type} ({unit})", cmap=_CMAPS[calib_type], regions=regions)
    ax_img.set_title("combined image", fontsize=11)
    if variance is not None and np.isfinite(variance).any():
        noise = np.sqrt(np.where(bad | (variance < 0), np.nan, variance))
        image_panel(
            fig,
            ax_noise,
            noise,
            label=f"noise of a combined pixel ({unit})",
            cmap="plasma",
            regions=regions,
            percentiles=(1.0, 99.0),
            amp_labels=False,
        )
        ax_noise.set_title("noise map (√variance plane)", fontsize=11)
    else:
        ax_noise.set_axis_off()
    values = image[~bad]
    if values.size:
        _histogram(ax_hist, values, unit)
    n_bad = int(((mask & bits("BAD")) != 0).sum())
    name = ctx.detector(det).name
    fig.suptitle(
        f"{calib_type}, detector {det} ({name}): {image.shape[1]} × {image.shape[0]} pixels, {n_bad} BAD",
        fontsize=12,
        x=0.5 * 14.0 / width,
        y=0.995,
    )
    caption = (
        f"Left: the combined {calib_type} with amplifier outlines (colour limits: 0.5–99.5 percentiles). "
        "Right: the noise of each combined pixel from the stack's scatter (1–99 percentiles). "
        "Below: histogram of the good pixels (log scale)."
    )
    return figure_html(fig, f"{calib_type} detector {det}", caption, dpi=90)


def products_section(ctx: ReportContext, calib_type: str) -> str:
    """The figures of one calibration type for every detector."""
    parts = []
    for det in ctx.detectors:
        try:
            parts.append(product_figure(ctx, calib_type, det))
        except Exception as err:  # a figure must never hide the rest
            parts.append(note(f"{calib_type} detector {det}: figure not available ({esc(err)})"))
    return "".join(parts)
