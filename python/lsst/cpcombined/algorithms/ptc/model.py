"""The PTC model of Astier et al. (2019), eq. 16, and its derivatives."""

from __future__ import annotations

__all__ = ("ptc_model",)

import numpy as np


def _expm1_over_x(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(exp(x) - 1) / x`` and its derivative, stable at ``x = 0``."""
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 1e-6
    xs = np.where(small, 1.0, x)
    e = np.where(small, 1.0 + x / 2 + x * x / 6, np.expm1(xs) / xs)
    de = np.where(small, 0.5 + x / 3, (np.exp(xs) * (xs - 1.0) + 1.0) / (xs * xs))
    return e, de


def ptc_model(mu: np.ndarray, a00: float, gain: float, n00: float) -> np.ndarray:
    """Astier et al. (2019) eq. 16: ``C00`` (ADU²) at mean ``mu`` (ADU).

    ``C00 = (exp(2*a00*mu*g) - 1) / (2*a00*g**2) + n00/g**2``, written as
    ``mu/g * E(2*a00*mu*g) + n00/g**2`` with ``E(x) = (exp(x)-1)/x`` so that
    ``a00 = 0`` (the linear PTC ``mu/g + n00/g**2``) is evaluated exactly.
    """
    mu = np.asarray(mu, dtype=np.float64)
    e, _ = _expm1_over_x(2.0 * a00 * mu * gain)
    return mu / gain * e + n00 / gain**2


def _ptc_jacobian(mu: np.ndarray, a00: float, gain: float, n00: float) -> np.ndarray:
    x = 2.0 * a00 * mu * gain
    e, de = _expm1_over_x(x)
    d_a = 2.0 * mu * mu * de
    d_g = -mu / gain**2 * e + mu / gain * de * 2.0 * a00 * mu - 2.0 * n00 / gain**3
    d_n = np.full_like(mu, 1.0 / gain**2)
    return np.column_stack([d_a, d_g, d_n])
