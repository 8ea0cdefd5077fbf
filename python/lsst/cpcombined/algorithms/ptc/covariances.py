"""Pixel covariances of a (difference) image at small lags, by FFT.

Index convention: ``cov[i, j]`` is the covariance between pixels separated
by ``i`` columns (x, serial direction) and ``j`` rows (y, parallel
direction).  ``cov[i, j]`` for ``i, j > 0`` averages the lags ``(i, j)`` and
``(i, -j)`` (the two diagonals), as the PTC literature does.
"""

from __future__ import annotations

__all__ = ("covariances_fft",)

import math

import numpy as np
import scipy.fft
from numba import njit

#: `covariances_fft` takes the sums involving the weights from the pixels of
#: zero weight (`_zero_weight_lag_sums`) instead of two more FFTs when those
#: number at most this many per pixel divided by ``(2*max_lag+1)**2`` (7 %
#: of the pixels for ``max_lag = 10``; the two cost the same near 10 % of
#: scattered zero weights on a 2000 x 500 amplifier).
_SPARSE_WORK_PER_PIXEL: float = 32.0


@njit(cache=True, nogil=True, error_model="numpy")
def _zero_weight_lag_sums(d: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums over the zero-weight pixels ``p`` of ``b(p+k)`` and ``d(p+k)``.

    ``d`` (float64) and ``b`` (uint8, 1 = zero weight) hold the image in
    ``[L:L+ny, L:L+nx]`` (``L = max_lag``) and zeros around it (at least
    ``L`` on every side).  Returns two ``(2L+1, 2L+1)`` arrays indexed
    ``[ky + L, kx + L]`` for the lags ``|ky|, |kx| <= L``.
    """
    n = 2 * max_lag + 1
    ny = d.shape[0] - 2 * max_lag
    nx = d.shape[1] - 2 * max_lag
    bb = np.zeros((n, n))
    bd = np.zeros((n, n))
    for y in range(max(ny, 0)):
        centre = b[y + max_lag]
        for x in range(max(nx, 0)):
            if centre[x + max_lag] == 0:
                continue
            for ky in range(n):
                d_row = d[y + ky]
                b_row = b[y + ky]
                bd_k = bd[ky]
                bb_k = bb[ky]
                for kx in range(n):
                    bd_k[kx] += d_row[x + kx]
                    bb_k[kx] += b_row[x + kx]
    return bb, bd


def _lag_rect_sums(values: np.ndarray, max_lag: int) -> np.ndarray:
    """``out[ky+L, kx+L]`` = sum of ``values`` over the pixels ``q`` with
    ``q - k`` also in the array (``L = max_lag``, ``|ky|, |kx| <= L``).

    Needs ``values.shape >= (2L, 2L)``: the rows (columns) more than ``L``
    from both edges are summed into one before the ``(2L+1)**2`` rectangle
    sums are taken from the cumulative sums of the reduced array.
    """
    lag = max_lag
    ny, nx = values.shape
    c = np.concatenate([values[:lag], values[lag : ny - lag].sum(axis=0, keepdims=True), values[ny - lag :]])
    c = np.concatenate(
        [c[:, :lag], c[:, lag : nx - lag].sum(axis=1, keepdims=True), c[:, nx - lag :]], axis=1
    ).astype(np.float64)
    n = 2 * lag + 1
    integral = np.zeros((n + 1, n + 1))
    integral[1:, 1:] = c.cumsum(axis=0).cumsum(axis=1)
    k = np.arange(-lag, lag + 1)
    lo, hi = np.maximum(k, 0), n - np.maximum(-k, 0)  # rows (columns) [max(0, k), N + min(0, k))
    return integral[hi][:, hi] - integral[lo][:, hi] - integral[hi][:, lo] + integral[lo][:, lo]


def _lag_rows(g: np.ndarray, max_lag: int) -> np.ndarray:
    """Rows ``0..L, -L..-1`` of ``g`` (so that ``out[-k]`` is row ``-k``)."""
    ny = g.shape[0]
    return g[np.r_[0 : max_lag + 1, ny - max_lag : ny]]


@njit(cache=True, nogil=True, error_model="numpy")
def _paired_power(f: np.ndarray) -> np.ndarray:
    """``|f|**2`` with columns ``2j`` and ``2j+1`` as real and imaginary
    parts of column ``j`` (a last odd column alone, imaginary part 0)."""
    ny, m = f.shape
    q = np.zeros((ny, (m + 1) // 2), dtype=np.complex128)
    for y in range(ny):
        row = f[y]
        out = q[y]
        for j in range(m // 2):
            a = row[2 * j]
            b = row[2 * j + 1]
            out[j] = complex(a.real * a.real + a.imag * a.imag, b.real * b.real + b.imag * b.imag)
        if m % 2:
            a = row[m - 1]
            out[m // 2] = a.real * a.real + a.imag * a.imag
    return q


def _power_lag_rows(f: np.ndarray, max_lag: int, nx: int) -> np.ndarray:
    """Inverse real 2-d FFT of ``|f|**2`` (``f`` from `scipy.fft.rfft2`, of
    an ``(ny, nx)`` array) at the rows of lags ``-max_lag..max_lag``.

    ``|f|**2`` is real: its columns are paired as real and imaginary parts of
    one complex inverse FFT along y (half the work), each column's transform
    having ``g(-y) = conj(g(y))``; the inverse along x is done on the needed
    rows only.
    """
    ny, m = f.shape
    g = scipy.fft.ifft(_paired_power(f), axis=0, overwrite_x=True)
    g_pos = _lag_rows(g, max_lag)
    g_neg = np.conj(g[-_lag_rows(np.arange(ny), max_lag) % ny])
    del g
    h = np.empty((g_pos.shape[0], m), dtype=np.complex128)
    h[:, 0::2] = 0.5 * (g_pos + g_neg)
    h[:, 1::2] = (-0.5j * (g_pos - g_neg))[:, : m // 2]
    return scipy.fft.irfft(h, n=nx, axis=1)


def covariances_fft(
    image: np.ndarray, weight: np.ndarray, max_lag: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel covariances of an image at lags ``0..max_lag`` by FFT.

    For each lag ``(i, j)`` (``i`` columns, ``j`` rows) the covariance is
    taken over all pixel pairs ``(p, p + (j, i))`` whose two pixels both have
    non-zero weight::

        cov = sum(w w' d d') / n - sum(w w' d) sum(w w' d') / n**2

    with ``n = sum(w w')`` the number of such pairs: each lag uses its own
    means, exactly as a direct computation would.  The sums are correlations
    computed with real FFTs (float64) of the zero-padded (so nothing wraps
    around) arrays ``w*d`` and ``w``, the inverse transforms evaluated at the
    rows of lags ``-max_lag..max_lag`` only.  With 0/1 weights and few zero
    weights the sums involving ``w`` are taken instead from the total and
    border sums of ``w*d`` and from the pixels of zero weight (no FFT of
    ``w``).  For ``i, j > 0`` the lags ``(i, j)`` and ``(i, -j)`` are averaged
    and their pair counts added.

    Parameters
    ----------
    image : `numpy.ndarray`
        2-d image ``d`` (masked pixels may hold anything, even NaN).
    weight : `numpy.ndarray`
        2-d 0/1 weights ``w`` (1 = use the pixel), boolean or numeric.
    max_lag : `int`, optional
        Largest lag in each direction.

    Returns
    -------
    cov : `numpy.ndarray`
        ``(max_lag+1, max_lag+1)`` covariances, ``cov[i, j]``.
    npairs : `numpy.ndarray`
        Number of pixel pairs used for each lag (``npairs[0, 0]`` = number of
        pixels).
    """
    w = np.asarray(weight)
    if max_lag < 0:
        return np.empty((0, 0)), np.empty((0, 0))
    lag = max_lag
    ny, nx = w.shape
    good = w if w.dtype == bool else w != 0
    binary = w.dtype == bool or bool(np.all(w[good] == 1))
    # The image sits at offset (L, L) in zero-padded arrays (at least L zeros
    # on every side, so nothing wraps around; a shift does not change a
    # correlation).
    shape = (scipy.fft.next_fast_len(ny + 2 * lag), scipy.fft.next_fast_len(nx + 2 * lag, real=True))
    n_zero = good.size - int(np.count_nonzero(good))
    sparse = (
        binary
        and min(ny, nx) >= 2 * lag
        and n_zero * (2 * lag + 1) ** 2 <= _SPARSE_WORK_PER_PIXEL * good.size
    )
    if sparse:
        s_dd, s_dw, s_ww = _lag_sums_from_zero_weights(image, good, lag, shape)
    else:
        s_dd, s_dw, s_ww = _lag_sums_by_fft(image, w, good, binary, lag, shape)
    return _fold_lags(s_dd, s_dw, s_ww, max_lag)


def _padded_image(image: np.ndarray, good: np.ndarray, lag: int, shape: tuple[int, int]) -> np.ndarray:
    """``image`` where ``good`` (0 elsewhere) at offset ``(lag, lag)`` in a
    float64 array of zeros of ``shape``."""
    ny, nx = good.shape
    d = np.zeros(shape)
    np.copyto(d[lag : lag + ny, lag : lag + nx], image, where=good)
    return d


def _lag_sums_from_zero_weights(
    image: np.ndarray, good: np.ndarray, lag: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The correlation sums of `covariances_fft` for 0/1 weights with few
    zeros: ``sum d d'`` by FFT, the sums involving the weights from the
    border sums and the pixels of zero weight.

    Returns ``(s_dd, s_dw, s_ww)`` at the rows of lags ``-lag..lag``, indexed
    like an FFT output (``[k]`` is lag ``k``, ``[-k]`` lag ``-k``).
    """
    ny, nx = good.shape
    inner = (slice(lag, lag + ny), slice(lag, lag + nx))
    d = _padded_image(image, good, lag, shape)
    # corr(A, B)[k] = sum_p A(p + k) B(p).  With w = 1 - b (b = 1 at zero
    # weight) and R(k) the pixels p with p + k in the image:
    #   sum_{R(k)} w(p) w(p+k) = |R(k)| - #b(R(k)) - #b(R(-k)) + sum_b b(p+k)
    #   sum_{R(k)} w(p) d(p+k) = sum_{R(-k)} d - sum_b d(p+k)
    # (sums "sum_b" over the zero-weight pixels p, d = 0 there).
    b = np.zeros(shape, dtype=np.uint8)
    b[inner] = ~good
    bb, bd = _zero_weight_lag_sums(d, b, lag)
    del b
    k = np.abs(np.arange(-lag, lag + 1))
    area = np.outer(ny - k, nx - k)
    n_bad = _lag_rect_sums(~good, lag)  # #b(R(-k))
    s_ww = area - n_bad - n_bad[::-1, ::-1] + bb
    s_dw = _lag_rect_sums(d[inner], lag) - bd
    # Indexed like the FFT outputs: [k] is lag k, [-k] lag -k.
    s_ww = np.roll(s_ww, (-lag, -lag), axis=(0, 1))
    s_dw = np.roll(s_dw, (-lag, -lag), axis=(0, 1))
    s_dd = _power_lag_rows(scipy.fft.rfft2(d, overwrite_x=True), lag, shape[1])
    return s_dd, s_dw, s_ww


def _lag_sums_by_fft(
    image: np.ndarray, w: np.ndarray, good: np.ndarray, binary: bool, lag: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The correlation sums of `covariances_fft` from the FFTs of ``w*d``
    and ``w`` (any weights).

    Returns ``(s_dd, s_dw, s_ww)`` at the rows of lags ``-lag..lag``, indexed
    like an FFT output (``[k]`` is lag ``k``, ``[-k]`` lag ``-k``).
    """
    ny, nx = w.shape
    inner = (slice(lag, lag + ny), slice(lag, lag + nx))
    d = _padded_image(image, good, lag, shape)
    if not binary:
        d[inner] *= w
    wp = np.zeros(shape)
    wp[inner] = w
    f_d = scipy.fft.rfft2(d, overwrite_x=True)
    f_w = scipy.fft.rfft2(wp, overwrite_x=True)
    del d, wp
    # corr(A, B)[k] = sum_p A(p + k) B(p) = inverse FFT of F_A conj(F_B),
    # needed at the rows of lags -L..L only: the inverse along y (the
    # complex axis) is done in full, the one along x on those rows only.
    s_dd = _power_lag_rows(f_d, lag, shape[1])
    s_ww = _power_lag_rows(f_w, lag, shape[1])
    f_d *= np.conj(f_w)
    del f_w
    g_dw = _lag_rows(scipy.fft.ifft(f_d, axis=0, overwrite_x=True), lag)
    s_dw = scipy.fft.irfft(g_dw, n=shape[1], axis=1)
    return s_dd, s_dw, s_ww


def _fold_lags(
    s_dd: np.ndarray, s_dw: np.ndarray, s_ww: np.ndarray, max_lag: int
) -> tuple[np.ndarray, np.ndarray]:
    """Covariances and pair counts of the lag quadrant from the correlation
    sums (`covariances_fft`): ``s_ww[k]`` pairs at lag ``k``, ``s_dw[k] =
    sum w(p) w(p+k) d(p+k)``, ``s_dd[k] = sum w w' d d'``; the lags
    ``(i, j)`` and ``(i, -j)`` averaged for ``i, j > 0``."""

    def one(dy: int, dx: int) -> tuple[float, float]:
        n = round(float(s_ww[dy, dx]))
        if n <= 0:
            return math.nan, 0.0
        mean2 = s_dw[dy, dx]  # second pixel of the pair
        mean1 = s_dw[-dy, -dx]  # first pixel of the pair
        return float(s_dd[dy, dx] / n - mean1 * mean2 / (n * n)), float(n)

    cov = np.empty((max_lag + 1, max_lag + 1))
    npairs = np.empty((max_lag + 1, max_lag + 1))
    for i in range(max_lag + 1):  # x lag
        for j in range(max_lag + 1):  # y lag
            c1, n1 = one(j, i)
            if i == 0 or j == 0:
                cov[i, j], npairs[i, j] = c1, n1
                continue
            c2, n2 = one(-j, i)
            cov[i, j] = 0.5 * (c1 + c2)
            npairs[i, j] = n1 + n2
    return cov, npairs
