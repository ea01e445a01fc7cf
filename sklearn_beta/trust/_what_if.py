"""Steps a trace rarely shows: probe steps, and whether the fit knows them.

A simulator calibrated on one stretch of serving is asked about others: a
quiet hour's betas predict a busy hour's steps. The step-time error on the
trace's own steps does not say how well that works; the error on a few probe
steps far from the trace's usual mix does. Under a saturated engine the decode
batch barely moves, so only ``beta0 + beta2 * batch`` is measured, and beta0
and beta2 apart are as uncertain as the step noise makes them.
"""

from __future__ import annotations

import numpy as np

#: Default probe steps ``(prefill tokens, decode tokens)``: a 256-request
#: decode batch, a lone 2048-token prefill chunk, and a mixed step.
WHAT_IF_PROBES = ((0, 256), (2048, 0), (512, 128))
#: beta0 and beta2 are reported as not separated when their estimates'
#: correlation is below minus this and either standard error exceeds
#: SPLIT_SHARE_LIMIT of the typical step. The covariance ignores the steps
#: overlapping phases share, so it understates the spread (about fivefold
#: measured under saturation): the limit is set low accordingly.
SPLIT_CORRELATION = 0.99
SPLIT_SHARE_LIMIT = 0.005


def probe_tokens(probes) -> np.ndarray:
    """The probe steps as an array of ``(prefill, decode)`` token counts, validated."""
    probes = np.asarray(probes, dtype=np.float64)
    if probes.ndim != 2 or probes.shape[1] != 2 or probes.shape[0] == 0:
        raise ValueError(
            "probes must be a non-empty sequence of (prefill_tokens, "
            f"decode_tokens) pairs, got shape {probes.shape}."
        )
    bad = ~np.isfinite(probes).all(axis=1) | (probes < 0).any(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5]
        raise ValueError(
            "probes must hold finite non-negative token counts; offending "
            f"probe(s) at positions {rows.tolist()}: {probes[rows].tolist()}."
        )
    return probes


def relative_step_errors(
    beta_est: np.ndarray, beta_true: np.ndarray, tokens: np.ndarray, what: str
) -> np.ndarray:
    """``|dt_est - dt_true| / dt_true`` of each step of ``tokens``.

    ``tokens`` holds ``(T_pf, T_dec)`` per step and ``dt = b0 + b1 T_pf +
    b2 T_dec``; ``what`` names the steps in the error raised when
    ``beta_true`` gives one a non-positive time.
    """
    design = np.column_stack([np.ones(tokens.shape[0]), tokens])
    true = design @ beta_true
    if np.any(true <= 0):
        rows = np.flatnonzero(true <= 0)[:5]
        raise ValueError(
            f"beta_true gives non-positive step times on {what} {rows.tolist()}: "
            "relative errors are undefined there."
        )
    return np.abs(design @ beta_est - true) / true


def split_uncertainty(
    jac: np.ndarray,
    residual: np.ndarray,
    weight: np.ndarray,
    beta: np.ndarray,
    typical: np.ndarray,
) -> tuple[np.ndarray, float]:
    """Each coefficient's standard error as a share of the typical step.

    The Gauss-Newton covariance of the step-count fit, ``s^2 (J' W J)^-1``
    with ``s^2`` the weighted residual variance, gives each coefficient a
    standard error; times the coefficient's token count in the trace's
    typical step (``typical = [1, mean T_pf, mean T_dec]``) and over that
    step's time, it says how well the fit splits the step among them.
    Returns ``(shares, correlation of beta0 and beta2)``; zeros without
    noise. The covariance ignores that overlapping phases share steps: a
    lower bound of the real uncertainty. :func:`split_from_sums` of the
    phases' sums.
    """
    keep = weight > 0
    jw = jac[keep] * np.sqrt(weight[keep])[:, None]
    return split_from_sums(
        jw.T @ jw,
        float(np.sum(weight[keep] * residual[keep] ** 2)),
        int(np.count_nonzero(keep)),
        beta,
        typical,
    )


def split_from_sums(
    gram: np.ndarray,
    loss: float,
    n_weighted: int,
    beta: np.ndarray,
    typical: np.ndarray,
) -> tuple[np.ndarray, float]:
    """:func:`split_uncertainty` from ``J' W J``, ``sum w r^2`` and the
    number of phases of positive weight (sums a fleet's partitions add up)."""
    n_free = n_weighted - 3
    zeros = np.zeros(3)
    if n_free <= 0:
        return zeros, 0.0
    s2 = loss / n_free
    scale = np.sqrt(np.diag(gram))
    step = float(typical @ beta)
    if s2 <= 0 or np.any(scale == 0) or step <= 0:
        return zeros, 0.0
    try:
        inv = np.linalg.inv(gram / np.outer(scale, scale))
    except np.linalg.LinAlgError:
        return np.full(3, np.inf), -1.0
    cov = s2 * inv / np.outer(scale, scale)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    corr = cov[0, 2] / max(se[0] * se[2], np.finfo(float).tiny)
    return se * typical / step, float(corr)


def noise_limited_findings(
    jac: np.ndarray,
    residual: np.ndarray,
    weight: np.ndarray,
    beta: np.ndarray,
    typical: np.ndarray,
) -> list[tuple[tuple[str, ...], str]]:
    """beta0 and beta2 when the step noise cannot split the decode step.

    A saturated engine runs the same decode batch on every step: the trace
    measures ``beta0 + beta2 * batch`` well and each coefficient apart only
    through the small variation of the batch, which the noise drowns. This
    is reported when the two estimates are almost perfectly anti-correlated
    and either one's standard error exceeds :data:`SPLIT_SHARE_LIMIT` of the
    typical step (:func:`split_uncertainty`).
    """
    return findings_of_split(
        *split_uncertainty(jac, residual, weight, beta, typical), typical
    )


def findings_of_split(
    shares: np.ndarray, corr: float, typical: np.ndarray
) -> list[tuple[tuple[str, ...], str]]:
    """:func:`noise_limited_findings` from :func:`split_uncertainty`'s result."""
    if corr > -SPLIT_CORRELATION or max(shares[0], shares[2]) <= SPLIT_SHARE_LIMIT:
        return []
    return [
        (
            ("beta0", "beta2"),
            "the decode batch barely varies (a saturated engine: the typical "
            f"step runs {typical[2]:.0f} decode tokens), so the step noise "
            "cannot split the step between them (correlation of their "
            f"estimates {corr:.3f}; standard errors {100 * shares[0]:.1f} % and "
            f"{100 * shares[2]:.1f} % of the typical step); beta0 + beta2 * "
            f"{typical[2]:.0f} is measured, each apart is not",
        )
    ]
