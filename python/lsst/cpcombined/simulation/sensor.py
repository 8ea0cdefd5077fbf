"""Pixel-level simulation of one (exposure, detector) raw frame.

Signal chain (electrons, assembled detector frame):

1. expected charge λ = dark current × dark time (+ flat flux × illumination
   × response × exposure time for flats);
2. photon/shot noise: Poisson (normal approximation above 1000 e-, whose
   variance is also exactly λ);
3. brighter-fatter: the shot-noise deviations D = P − λ are redistributed to
   the four nearest neighbours, Q = λ + (1 − 4α)·D + Σ_neighbours α·D, which
   conserves charge, correlates neighbours positively and reduces the pixel
   variance by 1 − 8α + 20α²; α is chosen per pixel so that the variance
   equals Astier et al. (2019) eq. 16, (exp(2·a00·λ) − 1)/(2·a00);
4. full-well clipping and cosmic rays;

then per amplifier (ADU, raw readout orientation): divide by the gain, add
the bias level, a per-exposure level drift, a per-row jitter common to the
imaging area and the overscans, the fixed 2-d bias structure (imaging area
only), Gaussian read noise, injected faults, and digitise to int32.
"""

from __future__ import annotations

__all__ = ("simulate_raw_amps", "bf_alpha")

import numpy as np

from ..camera import AMP_NAMES
from .truth import DetectorTruth, FaultSpec, SimulationTruth

#: 18-bit ADC ceiling.
ADC_MAX = 2**18 - 1

#: Shot noise is drawn from a normal distribution above this many electrons.
_POISSON_EXACT_BELOW = 1000.0


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


def _shot_noise(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = lam + np.sqrt(lam) * rng.standard_normal(lam.shape, dtype=np.float32)
    low = lam < _POISSON_EXACT_BELOW
    if np.any(low):
        out[low] = rng.poisson(lam[low])
    return out


def _redistribute(dev: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Charge-conserving nearest-neighbour redistribution of deviations."""
    give = alpha * dev
    out = dev - 4.0 * give
    padded = np.pad(give, 1, mode="edge")
    out += padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    return out


def _add_cosmic_rays(image: np.ndarray, rate: float, dark_time: float, scale: float, rng: np.random.Generator) -> int:
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
        Per-exposure noise generator.

    Returns
    -------
    amps
        Raw arrays (readout orientation, ``layout.raw_height x
        layout.raw_width``) keyed by amplifier name: int32, or float32 for
        an amplifier with a NaN fault.
    """
    dt: DetectorTruth = truth.detector_truth(detector)
    det = dt.detector
    lay = truth.layout
    faults: list[FaultSpec] = [f for f in truth.faults if f.applies(image_type, sequence_index, det)]

    lam = dt.dark_current * max(dark_time, 0.0)
    if image_type == "flat":
        illum = dt.illumination
        for f in faults:
            if f.illumination_gradient:
                x = np.linspace(-0.5, 0.5, lay.detector_width)[np.newaxis, :]
                illum = illum * (1.0 + f.illumination_gradient * x)
        lam = lam + truth.flat_flux * exposure_time * illum * dt.response
    lam = np.broadcast_to(lam, (lay.detector_height, lay.detector_width)).astype(np.float64)

    charge = _shot_noise(lam, rng)
    if image_type == "flat" and truth.a00 != 0.0:
        # α varies slowly with the level: one value per amplifier region.
        alpha = np.empty_like(lam)
        for amp in AMP_NAMES:
            sl = lay.geometry(amp).assembled_slices
            alpha[sl] = bf_alpha(float(lam[sl].mean()), truth.a00)
        charge = lam + _redistribute(charge - lam, alpha)
    np.minimum(charge, truth.full_well, out=charge)
    np.maximum(charge, 0.0, out=charge)
    _add_cosmic_rays(charge, truth.cosmic_ray_rate, dark_time, lay.scale, rng)
    np.minimum(charge, truth.full_well, out=charge)

    drift = rng.normal(0.0, truth.level_drift_adu) if truth.level_drift_adu else 0.0
    amps: dict[str, np.ndarray] = {}
    for amp in AMP_NAMES:
        g = lay.geometry(amp)
        gain = dt.gain[amp]
        rn_adu = dt.read_noise[amp] / gain
        # float32 resolves 1/64 ADU at the 18-bit ceiling: plenty before rounding.
        raw = rng.standard_normal((lay.raw_height, lay.raw_width), dtype=np.float32)
        raw *= np.float32(rn_adu)
        raw += np.float32(dt.bias_level[amp] + drift)
        if truth.row_jitter_adu:
            raw += rng.normal(0.0, truth.row_jitter_adu, size=(lay.raw_height, 1)).astype(np.float32)
        data_e = g.from_detector_orientation(charge[g.assembled_slices])
        structure = g.from_detector_orientation(dt.bias_structure[g.assembled_slices])
        data = raw[g.raw_data]
        data += data_e / gain + structure
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
        np.rint(raw, out=raw)
        np.clip(raw, 0, ADC_MAX, out=raw)
        if nan:
            raw[g.raw_data] = np.nan
            amps[amp] = raw
        else:
            amps[amp] = raw.astype(np.int32)
    return amps
