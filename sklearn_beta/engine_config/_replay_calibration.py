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
reproduces the observed decode phases and first tokens (:func:`replay_
mismatch`), found by Nelder-Mead from the phase fit's (a replay of a
thousand requests takes about 10 ms; the mismatch is piecewise constant in
the betas at the scale of one step's reordering, which a simplex steps
over). A ridge on the log-ratios to the phase fit's betas keeps what the
replay cannot tell apart (beta0 against beta2 when every step runs the same
batch) where the phase fit put it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from ..engine._replay import replay_trace

#: Weight of the squared log-ratios to the start in the calibration's
#: objective, against the mismatch's relative squared errors: a 10 % move
#: of one beta costs 1e-4, what 1 % of systematic error on every decode
#: phase costs. Measured on ``benchmarks/regimes.py --realism``'s six
#: phase-fitted client traces (0.01): mean ITL of their own replay within
#: 2.4 % (before: up to 8.7 %), and each load's fit forecasts the others'
#: within 2.4 %.
PRIOR_WEIGHT = 0.01
#: The simplex's first steps: 5 % on each beta.
_SIMPLEX_STEP = 0.05


@dataclass(frozen=True)
class ReplayCalibration:
    """Result of :func:`calibrate_by_replay`: the calibrated ``beta``, the
    ``start`` it moved from, the mismatch at both (without the ridge), the
    replays it took and whether the simplex converged within them."""

    beta: np.ndarray
    start: np.ndarray
    mismatch_start: float
    mismatch: float
    n_replays: int
    converged: bool


def replay_mismatch(replayed: pd.DataFrame) -> float:
    """How far a replay is from the trace it replays: the relative squared
    errors of the decode phases' durations plus those of the first tokens
    about their mean lag.

    The first-token lag is the client's overheads (the replay starts each
    request at its send, the engine saw it later) plus what the replay gets
    wrong; its mean, held at or above zero, is the overheads', and only the
    spread about it counts. Each term is relative to the observed
    durations' (decode phases) and times to first token's sum of squares,
    so that neither unit dominates.
    """
    observed = replayed["observed_decode_end"] - replayed["observed_prefill_end"]
    duration = replayed["decode_end"] - replayed["prefill_end"]
    observed = observed.to_numpy(dtype=np.float64)
    decode = np.sum((duration.to_numpy(dtype=np.float64) - observed) ** 2)
    seen = replayed["observed_prefill_end"].to_numpy(dtype=np.float64)
    lag = seen - replayed["prefill_end"].to_numpy(dtype=np.float64)
    ttft = seen - replayed["send"].to_numpy(dtype=np.float64)
    first = np.sum((lag - max(float(np.mean(lag)), 0.0)) ** 2)
    return float(decode / np.sum(observed**2) + first / np.sum(ttft**2))


def calibrate_by_replay(
    phases: pd.DataFrame,
    beta,
    *,
    arrival: str = "arrival",
    columns=None,
    prior_weight: float = PRIOR_WEIGHT,
    max_replays: int = 300,
    **engine,
) -> ReplayCalibration:
    """The betas whose replay of a client-side trace's sends best
    reproduces it, from ``beta`` (the phase fit's).

    Minimises :func:`replay_mismatch` plus ``prior_weight`` times the
    squared log-ratios of the betas to ``beta`` by Nelder-Mead over those
    log-ratios (a beta at zero stays there: the phase fit's bound, which
    the replay is no better placed to lift).

    Parameters
    ----------
    phases : DataFrame
        Client-side phase table with the sends in ``arrival``.
    beta : array-like of shape (3,)
        The start: the phase fit's betas, at least one positive.
    arrival : str, default="arrival"
        Column of the sends.
    columns : PhaseColumns, mapping or None, default=None
        Column names.
    prior_weight : float, default=PRIOR_WEIGHT
        Weight of the ridge on the log-ratios to ``beta``; 0: none.
    max_replays : int, default=300
        Most replays.
    **engine
        Engine settings of :func:`~sklearn_beta.replay.replay_trace`
        (``chunk_size``, ``token_budget``, ``max_num_seqs``, KV cache).

    Returns
    -------
    ReplayCalibration
    """
    start = np.asarray(beta, dtype=np.float64)
    free = start > 0
    if not np.all(np.isfinite(start)) or not free.any():
        raise ValueError(
            f"The calibration starts from finite betas, one of them positive; "
            f"got {start.tolist()}."
        )
    if not np.isfinite(prior_weight) or prior_weight < 0:
        raise ValueError(f"prior_weight must be >= 0, got {prior_weight!r}.")

    def betas(log_ratio: np.ndarray) -> np.ndarray:
        out = start.copy()
        out[free] *= np.exp(log_ratio)
        return out

    def mismatch(log_ratio: np.ndarray) -> float:
        replayed = replay_trace(
            phases, betas(log_ratio), arrival=arrival, columns=columns, **engine
        )
        return replay_mismatch(replayed)

    def objective(log_ratio: np.ndarray) -> float:
        return mismatch(log_ratio) + prior_weight * float(np.sum(log_ratio**2))

    n = int(free.sum())
    result = minimize(
        objective,
        np.zeros(n),
        method="Nelder-Mead",
        options={
            "initial_simplex": np.vstack([np.zeros(n), _SIMPLEX_STEP * np.eye(n)]),
            # 0.1 % on a beta; the mismatch's floor is the trace's noise
            "xatol": 1e-3,
            "fatol": 1e-8,
            "maxfev": max_replays,
        },
    )
    return ReplayCalibration(
        beta=betas(result.x),
        start=start,
        mismatch_start=mismatch(np.zeros(n)),
        mismatch=mismatch(result.x),
        n_replays=int(result.nfev) + 2,
        converged=bool(result.success),
    )
