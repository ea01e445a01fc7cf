"""Steps a trace rarely shows: probe steps, and whether the fit knows them.

A simulator calibrated on one stretch of serving is asked about others: a
quiet hour's betas predict a busy hour's steps. The step-time error on the
trace's own steps does not say how well that works; the error on a few probe
steps far from the trace's usual mix does. Under a saturated engine the decode
batch barely moves, so only ``beta0 + beta2 * batch`` is measured, and beta0
and beta2 apart are as uncertain as the step noise makes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._identifiability import BETA_NAMES

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


@dataclass(frozen=True)
class Split:
    """How well a step-count fit splits the typical step among the betas.

    ``shares``: each coefficient's standard error as a share of the typical
    step; ``worst``: the standard error (same unit) of the combination of
    shares the fit determines worst, and ``direction`` that combination (a
    unit vector over beta0, beta1, beta2); ``corr``: the correlation matrix
    of the estimates.
    """

    shares: np.ndarray
    worst: float
    direction: np.ndarray
    corr: np.ndarray


def no_split(k: int = 3) -> Split:
    """The split of a fit without noise or without enough phases (``k``
    coefficients): nothing to say."""
    return Split(np.zeros(k), 0.0, np.zeros(k), np.eye(k))


#: :func:`no_split` of the published three coefficients.
NO_SPLIT = no_split()


def split_uncertainty(
    jac: np.ndarray,
    residual: np.ndarray,
    weight: np.ndarray,
    beta: np.ndarray,
    typical: np.ndarray,
) -> Split:
    """How well the step-count fit splits the typical step among the betas.

    The Gauss-Newton covariance of the step-count fit, ``s^2 (J' W J)^-1``
    with ``s^2`` the weighted residual variance, gives each coefficient a
    standard error; times the coefficient's token count in the trace's
    typical step (``typical = [1, mean T_pf, mean T_dec]``) and over that
    step's time, it says how well the fit splits the step among them. The
    same covariance in those share units gives the worst-determined
    combination (:class:`Split`). Zeros without noise. The covariance
    ignores that overlapping phases share steps: a lower bound of the real
    uncertainty. :func:`split_from_sums` of the phases' sums.
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
) -> Split:
    """:func:`split_uncertainty` from ``J' W J``, ``sum w r^2`` and the
    number of phases of positive weight (sums a fleet's partitions add up)."""
    k = gram.shape[0]
    n_free = n_weighted - k
    if n_free <= 0:
        return no_split(k)
    s2 = loss / n_free
    scale = np.sqrt(np.diag(gram))
    step = float(typical @ beta)
    if s2 <= 0 or np.any(scale == 0) or step <= 0:
        return no_split(k)
    information = gram / np.outer(scale, scale)
    try:
        inv = np.linalg.inv(information)
    except np.linalg.LinAlgError:
        # Exactly collinear: the null direction, in share units, along
        # which the estimates move together (correlation +-1).
        null = np.linalg.eigh(information)[1][:, 0] / scale * typical
        null /= max(float(np.linalg.norm(null)), 1e-300)
        together = np.sign(np.outer(null, null))
        return Split(np.full(k, np.inf), np.inf, null, together)
    cov = s2 * inv / np.outer(scale, scale)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    corr = cov / np.maximum(np.outer(se, se), np.finfo(float).tiny)
    # The covariance of the shares beta_k typical_k / step: its top
    # eigenvector is the split of the typical step the trace resolves worst.
    share = typical / step
    values, vectors = np.linalg.eigh(cov * np.outer(share, share))
    return Split(
        se * share,
        float(np.sqrt(max(values[-1], 0.0))),
        vectors[:, -1],
        corr,
    )


def noise_limited_findings(
    jac: np.ndarray,
    residual: np.ndarray,
    weight: np.ndarray,
    beta: np.ndarray,
    typical: np.ndarray,
    names=BETA_NAMES,
) -> list[tuple[tuple[str, ...], str]]:
    """Coefficients the step noise cannot split the typical step among.

    A saturated engine runs the same decode batch on every step: the trace
    measures ``beta0 + beta2 * batch`` well and each coefficient apart only
    through the small variation of the batch, which the noise drowns. A
    token budget that every step fills (``T_pf + T_dec = B``) ties beta1 to
    beta0 and beta2 the same way. Both are the weighted Jacobian of the
    objective failing to separate its columns. Reported for the combination
    of shares the fit determines worst (:func:`split_uncertainty`): when the
    estimates of its two main coefficients trade off with a correlation
    beyond :data:`SPLIT_CORRELATION` and either one's standard error exceeds
    :data:`SPLIT_SHARE_LIMIT` of the typical step; every coefficient with a
    part of at least :data:`SPLIT_MEMBER` in it is named (``names``: a step
    model's features, whose ``typical`` step is its features per step).
    """
    return findings_of_split(
        split_uncertainty(jac, residual, weight, beta, typical), typical, names
    )


#: A coefficient takes part in the worst-determined split when its entry of
#: that (unit) direction is at least this.
SPLIT_MEMBER = 0.2


def findings_of_split(
    split: Split, typical: np.ndarray, names=BETA_NAMES
) -> list[tuple[tuple[str, ...], str]]:
    """:func:`noise_limited_findings` from :func:`split_uncertainty`'s result."""
    direction = split.direction
    members = [k for k in range(len(direction)) if abs(direction[k]) >= SPLIT_MEMBER]
    a, b = sorted(np.argsort(-np.abs(direction))[:2])
    # The estimates' errors lie along the direction: for a trade-off their
    # correlation nears +-1 with the sign of the direction's two entries.
    trade_off = split.corr[a, b] * np.sign(direction[a] * direction[b])
    if (
        len(members) < 2
        or not trade_off > SPLIT_CORRELATION
        or max(split.shares[a], split.shares[b]) <= SPLIT_SHARE_LIMIT
    ):
        return []
    published = tuple(names) == BETA_NAMES
    shares = " and ".join(f"{100 * split.shares[k]:.1f} %" for k in members)
    names = tuple(names[k] for k in members)
    if not published:
        return [(names, _feature_split_reason(shares, split.worst))]
    if names == ("beta0", "beta2"):
        return [
            (
                names,
                "the decode batch barely varies (a saturated engine: the "
                f"typical step runs {typical[2]:.0f} decode tokens), so the step "
                "noise cannot split the step between them (correlation of "
                f"their estimates {split.corr[0, 2]:.3f}; standard errors "
                f"{100 * split.shares[0]:.1f} % and {100 * split.shares[2]:.1f} % "
                f"of the typical step); beta0 + beta2 * {typical[2]:.0f} is "
                "measured, each apart is not",
            )
        ]
    return [
        (
            names,
            "the weighted phases' steps barely vary in their token mix (the "
            f"typical step runs {typical[1]:.0f} prefill and {typical[2]:.0f} "
            "decode tokens; e.g. a token budget every step fills keeps their "
            "sum fixed), so the objective's Jacobian cannot separate these "
            "coefficients and the step noise cannot split the step among "
            f"them (standard errors {shares} of the typical step; the worst "
            f"combination {100 * split.worst:.1f} %); the typical step's "
            "time is measured, its split is not",
        )
    ]


def _feature_split_reason(shares: str, worst: float) -> str:
    """The finding of :func:`findings_of_split` under a step model's features."""
    return (
        "the weighted phases' steps barely vary in the mix of these features, "
        "so the objective's Jacobian cannot separate them and the step noise "
        f"cannot split the step among them (standard errors {shares} of the "
        f"typical step; the worst combination {100 * worst:.1f} %); the "
        "typical step's time is measured, its split is not"
    )
