"""Covariance of a bisquare-weighted least-squares fit whose rows' noise is
modelled: the schedule-consistent fit's intervals (docs/schedule.md,
"Intervals").

The schedule fit's rows are differences of event times; a row's error is the
sum of the step noise between its two events, of variance ``sigma^2 v_i``
with ``v_i`` the sum of the squared model step times there (the noise is
proportional to the step time) and ``sigma`` the step noise's relative
standard deviation, one number per trace. Its estimate weighs rows by
``p_i = 1 / (v_i + floor)`` and Tukey's bisquare on ``z_i = e_i sqrt(p_i)``.

A residual sandwich (HC0-HC3) estimates each row's variance from its own
residual. Under saturation ``beta0`` and ``beta2 * max_num_seqs`` are told
apart by the few rows of the ramps, so the sandwich's variance is carried
by a few residuals and came out too narrow (75-78 % coverage at 95 %). Here
every row's variance is the model's, ``sigma^2 v_i``, with ``sigma`` from
the median absolute residual over all rows, and the bisquare's expectations
(its slope in the bread, its square in the meat) are taken under that
noise: the M-estimator's sandwich at the modelled noise.

Everything here takes arrays; the estimator's rows are read in
``engine_config._schedule_solve``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf, gammainc, poch

#: Normal-consistency factor of the median absolute deviation.
MAD_TO_SD = 1.4826
#: Smallest ``sd`` of :func:`truncated_moments`: below it nothing of the
#: normal lies beyond the truncation (``a^2 / 2`` is 5e23).
MIN_SD = 1e-12
LOG_ROOT_2PI = 0.5 * np.log(2.0 * np.pi)


def truncated_moments(sd, k_max: int) -> np.ndarray:
    """``E[z^(2k); |z| < 1 / sd]`` for a standard normal ``z``.

    Parameters
    ----------
    sd : ndarray of shape (n,)
        Non-negative; 0 truncates nothing.
    k_max : int
        Highest ``k``.

    Returns
    -------
    moments : ndarray of shape (k_max + 1, n)
        Row ``k`` holds the ``2k``-th moment. With ``a = 1 / sd``, by parts,
        ``M_k = (2k - 1) M_(k-1) - 2 a^(2k-1) phi(a)`` from ``M_0 = erf(a /
        sqrt 2)``; where ``sd > 1`` that recursion cancels, and ``M_k`` is
        ``(2k - 1)!!`` times the regularised lower incomplete gamma
        ``P(k + 1/2, a^2 / 2)`` (``z^2`` is chi-squared with one degree of
        freedom), ten times slower.
    """
    sd = np.asarray(sd, dtype=float)
    a = 1.0 / np.maximum(sd, MIN_SD)
    out = np.empty((k_max + 1, sd.shape[0]))
    out[0] = erf(a / np.sqrt(2.0))
    # 2 a^(2k-1) phi(a), one power of a^2 per k; a <= 1 / MIN_SD keeps
    # a^(2k-1) finite where phi(a) is 0
    with np.errstate(under="ignore"):  # phi(a) is 0 far out: no edge
        edge = 2.0 * a * np.exp(-0.5 * a * a - LOG_ROOT_2PI)
        square = a * a
        for k in range(1, k_max + 1):
            out[k] = (2 * k - 1) * out[k - 1] - edge
            edge *= square
    wide = sd > 1.0
    if np.any(wide):
        k = np.arange(k_max + 1, dtype=float)[:, None]
        # (2k - 1)!! = 2^k Gamma(k + 1/2) / Gamma(1/2)
        double_factorial = 2.0**k * poch(0.5, k)
        out[:, wide] = double_factorial * gammainc(k + 0.5, 0.5 * a[wide] ** 2)
    return out


def bisquare_expectations(sd) -> tuple[np.ndarray, np.ndarray]:
    """Expectations of Tukey's bisquare at normal errors.

    With ``u = sd * z`` (a row's error over the bisquare's cutoff, ``z``
    standard normal), ``w(u) = (1 - u^2)^2`` inside ``|u| < 1`` and 0
    outside, and ``psi(u) = u w(u)``:

    Parameters
    ----------
    sd : ndarray of shape (n,)
        Standard deviation of ``u`` per row (non-negative).

    Returns
    -------
    slope : ndarray of shape (n,)
        ``E[psi'(u)] = E[(1 - u^2)(1 - 5 u^2); |u| < 1]``: the bread's
        factor (1 at ``sd = 0``).
    square : ndarray of shape (n,)
        ``E[z^2 w(u)^2]``: the meat's factor over ``sd``-free units (1 at
        ``sd = 0``, a plain least-squares row).
    """
    m = truncated_moments(sd, 5)
    s2 = np.square(np.asarray(sd, dtype=float))
    slope = m[0] - 6.0 * s2 * m[1] + 5.0 * s2**2 * m[2]
    # (1 - u^2)^4 = 1 - 4 u^2 + 6 u^4 - 4 u^6 + u^8, times z^2
    square = m[1] - 4 * s2 * m[2] + 6 * s2**2 * m[3] - 4 * s2**3 * m[4] + s2**4 * m[5]
    return slope, square


def noise_sigma(residual, variance) -> float:
    """Relative step noise from the rows' residuals: the median absolute
    ``residual / sqrt(variance)`` over rows with step noise, times
    :data:`MAD_TO_SD`. Rows the fit set aside (a request scheduled
    otherwise than the trace did) barely move a median. 0 without rows
    of positive variance."""
    has_noise = variance > 0
    if not np.any(has_noise):
        return 0.0
    scaled = residual[has_noise] / np.sqrt(variance[has_noise])
    return MAD_TO_SD * float(np.median(np.abs(scaled)))


def bisquare_covariance(design, prior_weight, variance, sigma, cutoff):
    """Covariance of the bisquare-weighted fit at the modelled noise.

    The estimate solves ``sum_i x_i p_i e_i w(u_i) = 0`` with ``u_i = e_i
    sqrt(p_i) / cutoff``; with ``e_i ~ N(0, sigma^2 v_i)`` its covariance is
    ``B^-1 M B^-1``, ``B = sum p_i E[psi'(u_i)] x_i x_i'`` and ``M = sum
    p_i^2 sigma^2 v_i E[z^2 w(u_i)^2] x_i x_i'``.

    Parameters
    ----------
    design : ndarray of shape (n_rows, n_coef)
        The fitted columns.
    prior_weight : ndarray of shape (n_rows,)
        ``p_i``, the weights before the bisquare.
    variance : ndarray of shape (n_rows,)
        ``v_i``, each row's modelled noise variance over ``sigma^2``.
    sigma : float
        The noise scale (:func:`noise_sigma`).
    cutoff : float
        The bisquare's cutoff on ``z_i = e_i sqrt(p_i)``: its constant times
        the robust scale of the fit.

    Returns
    -------
    covariance : ndarray of shape (n_coef, n_coef)
    """
    row_var = sigma**2 * variance
    sd = np.sqrt(row_var * prior_weight) / cutoff
    slope, square = bisquare_expectations(sd)
    bread = (design * (prior_weight * slope)[:, None]).T @ design
    middle = (design * (prior_weight**2 * row_var * square)[:, None]).T @ design
    inverse = np.linalg.pinv(bread)
    return inverse @ middle @ inverse


def residual_sandwich(design, weight, residual, min_gap: float = 1e-3):
    """HC3 sandwich of a weighted least-squares fit: each residual over one
    minus its leverage (at least ``min_gap``: a row fitted by one coefficient
    alone has leverage 1 and no residual).

    Parameters
    ----------
    design : ndarray of shape (n_rows, n_coef)
    weight : ndarray of shape (n_rows,)
    residual : ndarray of shape (n_rows,)
    min_gap : float, default=1e-3

    Returns
    -------
    covariance : ndarray of shape (n_coef, n_coef)
    """
    inverse = np.linalg.pinv((design * weight[:, None]).T @ design)
    leverage = weight * np.einsum("ij,jk,ik->i", design, inverse, design)
    scaled = residual / np.clip(1.0 - leverage, min_gap, None)
    meat_rows = design * (weight * scaled)[:, None]
    return inverse @ (meat_rows.T @ meat_rows) @ inverse
