"""Pixel-level simulation of one (exposure, detector) raw frame.

Signal chain (electrons, assembled detector frame):

1. expected charge λ = dark current × dark time (+ flat flux × illumination
   × response × exposure time for flats);
2. photon/shot noise: Poisson (normal approximation from 1000 e-, whose
   variance is also exactly λ);
3. brighter-fatter: the shot-noise deviations D = P − λ are redistributed to
   the four nearest neighbours, Q = λ + (1 − 4α)·D + Σ_neighbours α·D, which
   conserves charge, correlates neighbours positively and reduces the pixel
   variance by 1 − 8α + 20α²; α is chosen per amplifier region, from its
   mean level, so that the variance equals Astier et al. (2019) eq. 16,
   (exp(2·a00·λ) − 1)/(2·a00);
4. cosmic rays, and clipping to [0, full well];

then per amplifier (ADU, raw readout orientation): divide by the gain, add
the bias level, a per-exposure level drift, a per-row jitter common to the
imaging area and the overscans, the fixed 2-d bias structure (imaging area
only), Gaussian read noise, injected faults, and digitise to int32.

Cost (a full-size frame is ~19 million pixels): the noise comes from an
SFC64 generator seeded by the exposure's generator; the Poisson draws of a
bias or dark are exact but cheap (a uniform mean for every pixel plus the
sparse excess of the hot pixels, see `_dark_charge`); the per-pixel passes
are numba kernels that release the GIL and allocate no full-frame
temporaries.
"""

from __future__ import annotations

__all__ = ("simulate_raw_amps", "bf_alpha")

import math

import numba
import numpy as np

from ..obs.camera import AMP_NAMES
from .truth import DetectorTruth, FaultSpec, SimulationTruth

#: 18-bit ADC ceiling.
ADC_MAX = 2**18 - 1

#: Shot noise is drawn from a normal distribution at and above this many
#: electrons (with the exact Poisson mean and variance).
_POISSON_EXACT_BELOW = 1000.0

#: Uniform-mean Poisson draws scatter the frame's events below this mean
#: (cost ∝ mean) and invert the CDF above it (cost ∝ pixels).
_SCATTER_BELOW = 0.25

#: Pixels per block of uniform deviates in the CDF inversion.
_BLOCK = 1 << 18


def bf_alpha(mean_e: np.ndarray | float, a00: float) -> np.ndarray:
    """Nearest-neighbour redistribution fraction α that makes the pixel
    variance of a flat with mean ``mean_e`` follow eq. 16 for ``a00``.

    Solves ``1 − 8α + 20α² = (exp(2·a00·μ) − 1)/(2·a00·μ)``.
    """
    mu = np.maximum(np.asarray(mean_e, dtype=np.float64), 1e-9)
    if a00 == 0.0:
        return np.zeros_like(mu)
    x = 2.0 * a00 * mu
    factor = np.expm1(x) / x
    disc = np.maximum(64.0 - 80.0 * (1.0 - factor), 0.0)
    return (8.0 - np.sqrt(disc)) / 40.0


# -- numba kernels (single-threaded, release the GIL) ---------------------------


@numba.njit(cache=True, nogil=True)
def _invert_cdf(u, cdf, guide, out):  # pragma: no cover - numba
    """``out[i]`` = the smallest k with ``u[i] < cdf[k]`` (``cdf[-1]`` is 1,
    ``u`` in [0, 1)); ``guide[j]`` is that k for ``u = j / guide.size``."""
    m = guide.size
    for i in range(u.size):
        ui = u[i]
        j = min(int(ui * m), m - 1)
        k = guide[j]
        while ui >= cdf[k]:
            k += 1
        out[i] = k


@numba.njit(cache=True, nogil=True)
def _flat_mean(illumination, response, column_factor, scale, offset, out):  # pragma: no cover - numba
    """``out = offset + scale × illumination × response × column_factor``
    (``column_factor`` per column), as float32."""
    ny, nx = out.shape
    for y in range(ny):
        for x in range(nx):
            out[y, x] = offset + scale * illumination[y, x] * response[y, x] * column_factor[x]


@numba.njit(cache=True, nogil=True)
def _scale_by_sqrt(z, lam):  # pragma: no cover - numba
    """``z *= sqrt(lam)`` in place (flattened arrays)."""
    for i in range(z.size):
        z[i] *= np.float32(math.sqrt(lam[i]))


@numba.njit(cache=True, nogil=True)
def _bf_charge(dev, lam, alpha, band_height):  # pragma: no cover - numba
    """Brighter-fatter redistribution of the shot-noise deviations ``dev``,
    replaced in place by the charge ``lam + D'``.

    Each pixel gives ``g = α·D`` to each of its four nearest neighbours:
    ``D' = D − 4g + Σ_neighbours g``; at the frame edges the missing
    neighbour's share stays in the pixel (edge padding).  ``alpha[b, x]``
    is α of column ``x`` in the band of rows ``b·band_height ...``.
    """
    ny, nx = dev.shape
    g_prev = np.empty(nx, dtype=np.float32)
    g_cur = np.empty(nx, dtype=np.float32)
    g_next = np.empty(nx, dtype=np.float32)
    for x in range(nx):
        g_cur[x] = alpha[0, x] * dev[0, x]
    for y in range(ny):
        if y + 1 < ny:
            a = alpha[(y + 1) // band_height]
            for x in range(nx):
                g_next[x] = a[x] * dev[y + 1, x]
        up = g_prev if y > 0 else g_cur
        down = g_next if y + 1 < ny else g_cur
        for x in range(nx):
            gc = g_cur[x]
            left = g_cur[x - 1] if x > 0 else gc
            right = g_cur[x + 1] if x + 1 < nx else gc
            dev[y, x] = lam[y, x] + (dev[y, x] - 4.0 * gc + up[x] + down[x] + left + right)
        g_prev, g_cur, g_next = g_cur, g_next, g_prev


@numba.njit(cache=True, nogil=True)
def _readout(
    tile, noise_scale, row_offset, charge, full_well, inv_gain, structure, y0, x0, flip_y, flip_x, prescan,
    data_height, data_width,
):  # pragma: no cover - numba
    """Amplifier readout (ADU, float32) in place of the standard normal
    deviates ``tile`` (readout orientation): ``tile × noise_scale +
    row_offset[row]``, plus ``clip(charge, 0, full_well) × inv_gain +
    structure`` in the data section (rows ``0..data_height``, columns
    ``prescan..prescan + data_width``).  Data pixel (r, c) reads the
    assembled pixel (``y0 + r``, ``x0 + c``), with ``r`` counted from the
    top of the amplifier's region if ``flip_y`` and ``c`` from its right
    edge if ``flip_x``."""
    h, w = tile.shape
    for r in range(h):
        off = row_offset[r]
        for c in range(w):
            tile[r, c] = tile[r, c] * noise_scale + off
        if r < data_height:
            yd = y0 + (data_height - 1 - r if flip_y else r)
            for c in range(data_width):
                xd = x0 + (data_width - 1 - c if flip_x else c)
                q = min(max(charge[yd, xd], 0.0), full_well)
                tile[r, prescan + c] += q * inv_gain + structure[yd, xd]


@numba.njit(cache=True, nogil=True)
def _digitise(tile, out):  # pragma: no cover - numba
    """Round to integers, clip to [0, ADC_MAX] and store as big-endian
    int32 (FITS byte order) in ``out`` (uint32 of the same shape)."""
    h, w = tile.shape
    for r in range(h):
        for c in range(w):
            v = min(max(np.rint(tile[r, c]), 0.0), ADC_MAX)
            iv = np.int64(v)
            out[r, c] = ((iv & 0xFF) << 24) | ((iv & 0xFF00) << 8) | ((iv >> 8) & 0xFF00) | (iv >> 24)


# -- shot noise -------------------------------------------------------------------


def _poisson_cdf(lam0: float) -> np.ndarray:
    """CDF of Poisson(``lam0``) at k = 0, 1, ... far into the upper tail
    (the last value is set to 1)."""
    kmax = int(lam0 + 12.0 * math.sqrt(lam0) + 40.0)
    k = np.arange(kmax + 1, dtype=np.float64)
    lgam = np.array([math.lgamma(v + 1.0) for v in range(kmax + 1)])
    cdf = np.cumsum(np.exp(k * math.log(lam0) - lam0 - lgam))
    cdf[-1] = 1.0
    return cdf


def _poisson_uniform(lam0: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` independent Poisson(``lam0``) draws, as float32.

    Exact: below `_SCATTER_BELOW` the frame's events (a Poisson total) fall
    on uniformly chosen pixels; otherwise each pixel inverts the Poisson
    CDF at a double-precision uniform deviate.
    """
    out = np.zeros(n, dtype=np.float32)
    if n == 0 or lam0 <= 0.0:
        return out
    if lam0 < _SCATTER_BELOW:
        total = int(rng.poisson(lam0 * n))
        np.add.at(out, rng.integers(0, n, total), np.float32(1.0))
        return out
    cdf = _poisson_cdf(lam0)
    # Guide table: the search for u starts at guide[int(u × size)] (a few
    # comparisons at most, for any mean).
    size = max(4096, 4 * cdf.size)
    guide = np.searchsorted(cdf, np.arange(size) / size, side="right")
    u = np.empty(min(n, _BLOCK))
    for start in range(0, n, _BLOCK):
        m = min(_BLOCK, n - start)
        rng.random(out=u[:m])
        _invert_cdf(u[:m], cdf, guide, out[start : start + m])
    return out


def _shot_deviation(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photon shot noise: deviations ``P − lam`` (float32, shape of
    ``lam``), P Poisson with mean ``lam``, or normal with the same mean and
    variance at and above `_POISSON_EXACT_BELOW` electrons."""
    flat = lam.reshape(-1)
    is_low = flat < _POISSON_EXACT_BELOW
    n_low = int(np.count_nonzero(is_low))
    if n_low <= flat.size // 2:
        dev = rng.standard_normal(lam.shape, dtype=np.float32)
        _scale_by_sqrt(dev.reshape(-1), flat)
        if n_low:
            low = np.flatnonzero(is_low)
            dev.reshape(-1)[low] = rng.poisson(flat[low]) - flat[low]
        return dev
    dev = np.empty(lam.shape, dtype=np.float32)
    out = dev.reshape(-1)
    out[is_low] = rng.poisson(flat[is_low]) - flat[is_low]
    if n_low < flat.size:
        high = np.flatnonzero(~is_low)
        out[high] = np.sqrt(flat[high]) * rng.standard_normal(high.size, dtype=np.float32)
    return dev


def _dark_charge(dt: DetectorTruth, dark_time: float, rng: np.random.Generator) -> np.ndarray:
    """Charge of a bias or dark (float32, assembled frame, not clipped).

    Poisson(base dark × dark time) in every pixel plus Poisson(excess ×
    dark time) in the hot pixels, which is exactly Poisson(dark current ×
    dark time); normal above `_POISSON_EXACT_BELOW` as in `_shot_deviation`.
    """
    shape = dt.dark_current.shape
    t = max(dark_time, 0.0)
    base, idx, excess = dt.dark_decomposition
    if base * t >= _POISSON_EXACT_BELOW:
        lam = (dt.dark_current * t).astype(np.float32)
        charge = _shot_deviation(lam, rng)
        charge += lam
        return charge
    out = _poisson_uniform(base * t, int(np.prod(shape)), rng)
    if idx.size and t > 0.0:
        lam = (base + excess) * t
        faint = lam < _POISSON_EXACT_BELOW
        out[idx[faint]] += rng.poisson(excess[faint] * t)
        bright = ~faint
        if bright.any():
            lb = lam[bright]
            out[idx[bright]] = lb + np.sqrt(lb) * rng.standard_normal(lb.size)
    return out.reshape(shape)


def _flat_expected_charge(
    truth: SimulationTruth, dt: DetectorTruth, exposure_time: float, dark_time: float, faults: list[FaultSpec]
) -> np.ndarray:
    """Expected charge of a flat (e-, float32, assembled frame): dark
    current × dark time + flat flux × exposure time × illumination ×
    response (× any fault's illumination gradient)."""
    lay = truth.layout
    t = max(dark_time, 0.0)
    base, idx, excess = dt.dark_decomposition
    column_factor = np.ones(lay.detector_width)
    x = np.linspace(-0.5, 0.5, lay.detector_width)
    for f in faults:
        if f.illumination_gradient:
            column_factor *= 1.0 + f.illumination_gradient * x
    lam = np.empty((lay.detector_height, lay.detector_width), dtype=np.float32)
    _flat_mean(dt.illumination, dt.response, column_factor, truth.flat_flux * exposure_time, base * t, lam)
    if idx.size and t > 0.0:
        lam.reshape(-1)[idx] += excess * t
    return lam


def _add_cosmic_rays(
    image: np.ndarray, rate: float, dark_time: float, scale: float, rng: np.random.Generator
) -> int:
    """Add cosmic-ray tracks in place; returns the number of tracks."""
    ny, nx = image.shape
    area_cm2 = nx * ny * 1e-6  # 10 µm pixels
    n = int(rng.poisson(rate * area_cm2 * max(dark_time, 0.0)))
    for _ in range(n):
        length = rng.uniform(1.0, max(2.0, 25.0))
        angle = rng.uniform(0, np.pi)
        x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
        npts = int(np.ceil(length)) + 1
        t = np.linspace(0.0, length, npts)
        xs = np.clip(np.round(x0 + t * np.cos(angle)).astype(int), 0, nx - 1)
        ys = np.clip(np.round(y0 + t * np.sin(angle)).astype(int), 0, ny - 1)
        charge = rng.uniform(300.0, 3000.0)
        np.add.at(image, (ys, xs), charge)
    return n


def _noise_generator(rng: np.random.Generator) -> np.random.Generator:
    """The frame's noise generator, seeded from ``rng``: SFC64, whose
    normal deviates are cheaper than PCG64's (10-25 % here)."""
    return np.random.Generator(np.random.SFC64(rng.integers(0, 2**63, size=4)))


def simulate_raw_amps(
    truth: SimulationTruth,
    detector: int | str,
    image_type: str,
    exposure_time: float,
    dark_time: float,
    sequence_index: int | None,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Simulate the raw amplifier arrays of one (exposure, detector).

    Parameters
    ----------
    truth
        Simulation truth.
    detector
        Detector id or name.
    image_type
        ``bias``, ``dark`` or ``flat``.
    exposure_time, dark_time
        Seconds.
    sequence_index
        0-based index of the exposure in the acquired sequence of its image
        type (selects injected faults), or `None` for a discarded frame.
    rng
        Per-exposure generator; it seeds the generator of the frame's noise
        (see `_noise_generator`), so the frame is a function of its state.

    Returns
    -------
    amps
        Raw arrays (readout orientation, ``layout.raw_height x
        layout.raw_width``) keyed by amplifier name, in FITS (big-endian)
        byte order so that they are written without byte swapping: int32,
        or float32 for an amplifier with a NaN fault.
    """
    dt: DetectorTruth = truth.detector_truth(detector)
    det = dt.detector
    lay = truth.layout
    faults: list[FaultSpec] = [f for f in truth.faults if f.applies(image_type, sequence_index, det)]
    rng = _noise_generator(rng)

    if image_type == "flat":
        lam = _flat_expected_charge(truth, dt, exposure_time, dark_time, faults)
        charge = _shot_deviation(lam, rng)
        if truth.a00 != 0.0:
            # α varies slowly with the level: one value per amplifier region.
            alpha = np.empty((lay.n_y, lay.detector_width), dtype=np.float32)
            for amp in AMP_NAMES:
                ys, xs = lay.geometry(amp).assembled_slices
                alpha[ys.start // lay.data_height, xs] = bf_alpha(float(lam[ys, xs].mean()), truth.a00)
            _bf_charge(charge, lam, alpha, lay.data_height)
        else:
            charge += lam
        del lam
    else:
        charge = _dark_charge(dt, dark_time, rng)
    _add_cosmic_rays(charge, truth.cosmic_ray_rate, dark_time, lay.scale, rng)
    # (the readout clips the charge to [0, full well])

    drift = rng.normal(0.0, truth.level_drift_adu) if truth.level_drift_adu else 0.0
    amps: dict[str, np.ndarray] = {}
    for amp in AMP_NAMES:
        g = lay.geometry(amp)
        ys, xs = g.assembled_slices
        gain = dt.gain[amp]
        row_offset = np.full(lay.raw_height, dt.bias_level[amp] + drift, dtype=np.float32)
        if truth.row_jitter_adu:
            jitter = rng.standard_normal(lay.raw_height, dtype=np.float32)
            row_offset += np.float32(truth.row_jitter_adu) * jitter
        # float32 resolves 1/64 ADU at the 18-bit ceiling: plenty before rounding.
        raw = rng.standard_normal((lay.raw_height, lay.raw_width), dtype=np.float32)
        _readout(
            raw, np.float32(dt.read_noise[amp] / gain), row_offset, charge, np.float32(truth.full_well),
            np.float32(1.0 / gain), dt.bias_structure, ys.start, xs.start, g.flip_y, g.flip_x, lay.prescan,
            lay.data_height, lay.data_width,
        )
        data = raw[g.raw_data]
        nan = False
        for f in faults:
            if not f.amp_selected(amp):
                continue
            data += f.imaging_offset_adu
            if f.extra_noise_e:
                data += rng.normal(0.0, f.extra_noise_e / gain, size=data.shape).astype(np.float32)
            if f.saturate:
                data[...] = det.saturation + dt.bias_level[amp] + 1000.0
            nan = nan or f.nan
        if nan:
            np.rint(raw, out=raw)
            np.clip(raw, 0, ADC_MAX, out=raw)
            raw[g.raw_data] = np.nan
            amps[amp] = raw.astype(">f4")
        else:
            out = np.empty(raw.shape, dtype=np.uint32)
            _digitise(raw, out)
            amps[amp] = out.view(">i4")
    return amps
