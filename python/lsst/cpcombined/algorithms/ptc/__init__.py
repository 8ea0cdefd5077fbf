"""Photon Transfer Curve (PTC): flat pairing, pair measurement, fits.

Everything here works on plain `numpy.ndarray` objects (no butler, no I/O).
Units: means in ADU, variances and covariances in ADU², gain in e-/ADU,
read noise in e-, ``a00`` (and the ``a_ij`` of the full model) in 1/e-.
Images are 2-d arrays indexed ``[y, x]``, already ISR-processed (overscan,
bias and dark subtracted) and **not** gain-corrected.

The steps, one module each
--------------------------
1. `pair_flats` (`.pairing`) — pair the flats by equal exposure time (the
   first two, in id order, at each time; leftovers and lone flats are
   reported).
2. `measure_pair` (`.measurement`) — per amplifier and pair:
   sigma-clipped means ``mu1``, ``mu2`` (5.5σ, 3 iterations, 20 edge
   pixels dropped on each side; `.clipping`), their average ``mu``, the
   difference image ``D = (mu2*I1 - mu1*I2)/mu`` (which cancels the fixed
   pattern exactly even when the two fluxes differ), the variance
   ``C00 = var(D)/2`` (same clipping) and the covariances ``C_ij`` of
   ``D/√2`` up to lag 10 by FFT (`covariances_fft`, `.covariances`).
3. `fit_ptc` (`.fits`) — per amplifier: turnover (saturation) and gap cuts
   (`.selection`), then the fit of Astier et al. (2019), eq. 16 (`.model`),
   ``C00(mu) = (exp(2*a00*mu*g) - 1)/(2*a00*g**2) + n00/g**2``
   with 5σ outlier rejection, giving gain, noise (``sqrt(n00)``), ``a00``,
   turnoff and their errors, the point arrays for plots, and flags.
4. `gain_from_flat_pairs` (`.gains`) — the quick per-pair gain
   ``mu/(C00 - rn_adu**2)`` and its median over the unsaturated pairs (what
   the ScriptQueue script reports); optionally with the covariances summed
   to a small lag, which removes the brighter-fatter bias of the plain
   formula.
5. `fit_full_covariance` (`.full_covariance`) — the full covariance model
   of Astier et al. (2019), eq. 20, fitted to the ``C_ij`` of small lags
   (``a_ij``, ``b_ij``).

Covariance index convention: ``cov[i, j]`` is the covariance between pixels
separated by ``i`` columns (x, serial direction) and ``j`` rows (y, parallel
direction).  ``cov[i, j]`` for ``i, j > 0`` averages the lags ``(i, j)`` and
``(i, -j)`` (the two diagonals), as the PTC literature does.
"""

from __future__ import annotations

__all__ = (
    "DEFAULT_BAD_BITS",
    "FlatExposure",
    "FlatPair",
    "FullCovarianceResult",
    "PairMeasurement",
    "PairGainResult",
    "PairingResult",
    "PtcAmpResult",
    "clipped_stats",
    "covariances_fft",
    "covariance_model",
    "fit_full_covariance",
    "fit_ptc",
    "fit_ptc_measurements",
    "fixed_pattern_outliers",
    "gain_from_flat_pair",
    "gain_from_flat_pairs",
    "measure_pair",
    "pair_flats",
    "ptc_model",
    "turnover_mask",
)

from .clipping import clipped_stats
from .covariances import covariances_fft
from .fits import PtcAmpResult, fit_ptc, fit_ptc_measurements
from .full_covariance import FullCovarianceResult, covariance_model, fit_full_covariance
from .gains import PairGainResult, gain_from_flat_pair, gain_from_flat_pairs
from .measurement import DEFAULT_BAD_BITS, PairMeasurement, fixed_pattern_outliers, measure_pair
from .model import ptc_model
from .pairing import FlatExposure, FlatPair, PairingResult, pair_flats
from .selection import turnover_mask
