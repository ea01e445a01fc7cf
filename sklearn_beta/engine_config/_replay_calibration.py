"""The betas of a client-side trace calibrated by replaying its sends.

A phase-exposure fit reads each phase against the phases observed beside
it. On a client-side trace those are blurred: the overheads jitter request
by request and a prefill phase is known only up to the window that holds
its prompt's steps (:func:`~sklearn_beta.engine_config._trace_fit.
fit_client_phases`). Near saturation, where the batch sits near its cap, a
few per cent of error in the step time moves the queue by much more: on
``benchmarks/regimes.py --realism``'s client trace at 18 req/s the fit's
betas forecast the trace's own mean ITL 7.4 % short, and 5 % on beta2
moves it by 8 %.

A replay of the sends on the engine (:func:`~sklearn_beta.replay.
replay_trace`) makes every request's schedule from the betas, as the engine
made it from its step times. The betas here are those whose replay best
reproduces the observed decode phases (:func:`replay_mismatch`), found
by Nelder-Mead from the phase fit's (a replay of a thousand requests
takes about 10 ms; the mismatch is piecewise constant in the betas at the
scale of one step's reordering, which a simplex steps over). A prior at
the phase fit, as wide as its interval, keeps what the replay cannot tell
apart (beta0 against beta2 when every step runs the same batch) where the
phase fit put it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from ..core._columns import PhaseColumns
from ..engine._replay import replay_trace

#: Weight of the prior at the phase fit in the calibration's objective:
#: moving a beta by one half-width of the phase fit's interval costs what
#: cutting the mismatch by 1 % gains (the objective is the mismatch's log).
#: The data then win wherever the replay tells (on the realism mix at 12
#: req/s, beta0 from 0.0995 s, interval [0, 0.27], to a few ms), and the
#: prior holds what it cannot tell apart. Measured on
#: ``benchmarks/regimes.py --realism``: docs/accuracy.md.
PRIOR_WEIGHT = 0.01
#: Half-widths of the prior without an interval: this share of each beta.
PRIOR_SHARE = 0.1
#: Share of its scale (:func:`beta_scales`) below which a beta lifted from
#: zero goes back there.
NEGLIGIBLE = 0.01
#: The simplex's first steps: 5 % on each beta.
_SIMPLEX_STEP = 0.05


@dataclass(frozen=True)
class ReplayCalibration:
    """Result of :func:`calibrate_by_replay`: the calibrated ``beta``, the
    ``start`` it moved from, the mismatch at both (without the prior), the
    replays it took and whether the simplex converged within them."""

    beta: np.ndarray
    start: np.ndarray
    mismatch_start: float
    mismatch: float
    n_replays: int
    converged: bool


def replay_mismatch(replayed: pd.DataFrame) -> float:
    """How far a replay is from the trace it replays: the relative squared
    errors of its decode phases' durations (their sum of squares over the
    observed durations').

    The decode phases hold the engine's steps only, and the reporting
    offsets' difference. The first tokens are left out: they hold the
    client's overheads, which jitter request by request, and fitted to
    them the betas traded that jitter for prompt cost. On
    ``tests/test_replayed_overheads.py``'s light client trace (published
    step, 20 req/s) the first tokens took beta1 10-23 % low and the
    forecast ITL at 3 and 6 times the load 1.5-2.8 % short; the decode
    phases alone, within 1 % and 0.3 %.
    """
    error, observed = decode_errors(replayed)
    return float(np.sum(error**2) / np.sum(observed**2))


def decode_errors(replayed: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(replayed minus observed, observed)`` decode-phase durations of a
    :func:`~sklearn_beta.replay.replay_trace` result, per request."""
    observed = replayed["observed_decode_end"] - replayed["observed_prefill_end"]
    duration = replayed["decode_end"] - replayed["prefill_end"]
    observed = observed.to_numpy(dtype=np.float64)
    return duration.to_numpy(dtype=np.float64) - observed, observed


def beta_scales(phases: pd.DataFrame, columns=None) -> np.ndarray:
    """Each beta's scale in a trace: what makes one term of a typical step
    as long as the step. The step is the decode phases' mean time per
    decode token; beta1's scale is that over the mean prompt, beta2's over
    the mean number of requests in decode (their decode time over the
    trace's span)."""
    cols = PhaseColumns.coerce(columns)
    kind = phases[cols.phase_type].astype(str).str.strip().str.lower().to_numpy()
    start = phases[cols.t_start].to_numpy(dtype=np.float64)
    end = phases[cols.t_end].to_numpy(dtype=np.float64)
    decode = (kind == "decode") & (phases[cols.decode_tokens].to_numpy() > 0)
    tokens = phases[cols.decode_tokens].to_numpy(dtype=np.float64)[decode]
    step = float(np.mean((end - start)[decode] / tokens))
    prompt = float(np.mean(phases[cols.prefill_tokens].to_numpy()[kind == "prefill"]))
    batch = float(np.sum((end - start)[decode]) / (end.max() - start.min()))
    return np.array([step, step / max(prompt, 1.0), step / max(batch, 1.0)])


def _half_widths(start: np.ndarray, interval) -> np.ndarray:
    """The prior's half-widths: the interval's, else PRIOR_SHARE of each
    beta; never below a millionth of the beta (a degenerate interval)."""
    if interval is None:
        return PRIOR_SHARE * start
    interval = np.asarray(interval, dtype=np.float64)
    if interval.shape != (start.size, 2) or not np.all(np.isfinite(interval)):
        raise ValueError(
            f"beta_interval must be finite, of shape ({start.size}, 2); got "
            f"{interval.tolist()}."
        )
    return np.maximum((interval[:, 1] - interval[:, 0]) / 2, 1e-6 * start)


def calibrate_by_replay(
    phases: pd.DataFrame,
    beta,
    *,
    beta_interval=None,
    arrival: str = "arrival",
    columns=None,
    prior_weight: float = PRIOR_WEIGHT,
    max_replays: int = 300,
    **engine,
) -> ReplayCalibration:
    """The betas whose replay of a client-side trace's sends best
    reproduces it, from ``beta`` (the phase fit's).

    Minimises the log of :func:`replay_mismatch` plus ``prior_weight``
    times the squared distances of the betas to ``beta`` in half-widths of
    ``beta_interval``, by Nelder-Mead over the betas' log-ratios to
    ``beta``. A beta the phase fit held at zero starts at a tenth of its
    scale in the trace (:func:`beta_scales`) and carries no prior: the
    bound says only that the phase fit could not place it. On the realism
    mix at 12 req/s the phase fit held beta1 at 0 (beta0 and beta2
    collinear); kept there, the calibration's mismatch stayed 14 times
    what it reached from a positive start.

    Parameters
    ----------
    phases : DataFrame
        Client-side phase table with the sends in ``arrival``.
    beta : array-like of shape (3,)
        The start: the phase fit's betas, at least one positive.
    beta_interval : array-like of shape (3, 2) or None, default=None
        The phase fit's interval (``beta_ci_``), the prior's width; None:
        :data:`PRIOR_SHARE` of each beta on either side.
    arrival : str, default="arrival"
        Column of the sends.
    columns : PhaseColumns, mapping or None, default=None
        Column names.
    prior_weight : float, default=PRIOR_WEIGHT
        Weight of the prior at ``beta``; 0: none.
    max_replays : int, default=300
        Most replays from each start.
    **engine
        Engine settings of :func:`~sklearn_beta.replay.replay_trace`
        (``chunk_size``, ``token_budget``, ``max_num_seqs``, KV cache).

    Returns
    -------
    ReplayCalibration
    """
    start = np.asarray(beta, dtype=np.float64)
    anchored = start > 0
    if start.shape != (3,) or not np.all(np.isfinite(start)) or not anchored.any():
        raise ValueError(
            "The calibration starts from three finite betas, one of them "
            f"positive; got {start.tolist()}."
        )
    if not np.isfinite(prior_weight) or prior_weight < 0:
        raise ValueError(f"prior_weight must be >= 0, got {prior_weight!r}.")
    scales = beta_scales(phases, columns)
    origin = np.where(anchored, start, 0.1 * scales)
    width = _half_widths(start, beta_interval)

    def betas(log_ratio: np.ndarray) -> np.ndarray:
        return origin * np.exp(log_ratio)

    def mismatch(log_ratio: np.ndarray) -> float:
        replayed = replay_trace(
            phases, betas(log_ratio), arrival=arrival, columns=columns, **engine
        )
        return replay_mismatch(replayed)

    def objective(log_ratio: np.ndarray) -> float:
        distance = (betas(log_ratio) - start)[anchored] / width[anchored]
        prior = prior_weight * float(np.sum(distance**2))
        return float(np.log(max(mismatch(log_ratio), 1e-300))) + prior

    n = start.size
    # Two starts: the phase fit's betas, and each term a third of the
    # trace's step (beta_scales). Where the phase fit's split is far off
    # along a valley the replay barely tells apart (the realism mix at 12
    # req/s: beta0 0.0995 s for a step of 0.11 s), a simplex from it spends
    # its replays creeping along; the balanced start is on the other side.
    balanced = np.log(scales / 3 / origin)
    steps = np.vstack([np.zeros(n), _SIMPLEX_STEP * np.eye(n)])
    results = [
        minimize(
            objective,
            x0,
            method="Nelder-Mead",
            options={
                "initial_simplex": x0 + steps,
                # 0.1 % on a beta, 0.01 % on the mismatch: below, the noise
                "xatol": 1e-3,
                "fatol": 1e-4,
                "maxfev": max_replays,
            },
        )
        for x0 in (np.zeros(n), balanced)
    ]
    result = min(results, key=lambda r: r.fun)
    beta = betas(result.x)
    # A beta lifted from the phase fit's bound by less than NEGLIGIBLE of
    # its scale is the simplex's rounding, not the trace's: the phase fit
    # of a trace whose decode tokens cost nothing held beta2 at 0, and the
    # calibration put it at 0.04 % of a step's share.
    beta[~anchored & (beta < NEGLIGIBLE * scales)] = 0.0
    return ReplayCalibration(
        beta=beta,
        start=start,
        mismatch_start=replay_mismatch(
            replay_trace(phases, start, arrival=arrival, columns=columns, **engine)
        ),
        mismatch=replay_mismatch(
            replay_trace(phases, beta, arrival=arrival, columns=columns, **engine)
        ),
        n_replays=sum(int(r.nfev) for r in results) + 2,
        converged=bool(result.success),  # the chosen start's simplex
    )
