"""The engine's prefill chunking chosen from a trace by held-out replay error.

A trace does not say how the engine cut its prefills: a fixed chunk size, a
per-step token budget (vLLM V1's ``max_num_batched_tokens``, no chunk cap),
or neither. The betas fitted under a wrong configuration can still explain
the observed phase durations (the R^2 of all phases, which decode phases
dominate, moves by 1e-4 between candidates), yet forecast the latencies
badly. :func:`select_engine_config` therefore scores every candidate the way
a simulator would use it: fit on time blocks of the trace
(:class:`~sklearn_beta.model_selection.TraceBlockSplit`, in full-trace
context), replay the whole trace with the fitted betas and the candidate's
chunking (:func:`~sklearn_beta.replay.replay_trace`), and measure the
relative error of the held-out requests' time to first token and decode
time. See ``docs/engine_config.md``.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field, replace
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import clone

from ..core._columns import PhaseColumns
from ..core._engine_model import effective_chunk_size
from ..core._warnings import warn
from ..engine._replay import replay_trace
from ..estimators._exposure import PhaseExposureTransformer
from ..estimators._iterative import IterativeBetaRegressor
from ..model_selection import TraceBlockSplit, TraceContextRegressor
from ..model_selection._trace_split import (
    _trace_times,
    overlapping_test,
    request_blocks,
)
from ._scores import (
    cap,
    edge_message,
    errors,
    held_out,
    label,
    on_edge,
    pair_of,
    score,
    score_table,
    simplest_within,
    validation,
)
from ._trace_fit import (
    DEFAULT_CHUNK_CANDIDATES,
    ITERATIVE_OPTIONS,
    TRANSFORMER_OPTIONS,
    make_model,
)

__all__ = [
    "VLLM_TOKEN_BUDGETS",
    "EngineConfig",
    "EngineConfigWarning",
    "default_engine_candidates",
    "select_engine_config",
]

#: vLLM's usual ``max_num_batched_tokens``: 2048 on smaller GPUs, 8192 for the
#: OpenAI server on 80 GB GPUs, and the powers of two around them.
VLLM_TOKEN_BUDGETS = (2048, 4096, 8192, 16384)


class EngineConfigWarning(UserWarning):
    """The chosen engine configuration sits at the edge of the candidates.

    The engine's real chunk size or token budget may lie beyond the
    candidates: its message names the choice, the runner-up and the margin;
    add candidates beyond the edge.
    """


@dataclass(frozen=True)
class EngineConfig:
    """Result of :func:`select_engine_config`.

    Attributes
    ----------
    chunk_size : int or None
        Most prompt tokens a request prefills per step; None: no chunk cap.
    token_budget : int or None
        Most tokens per step (``max_num_batched_tokens``); None: no budget.
    model_chunk_size : int
        The ``chunk_size`` the betas were fitted with (give it to
        :class:`~sklearn_beta.PhaseExposureTransformer`, with
        ``token_budget``): the most prompt tokens a request can prefill in a
        step, the smaller of ``chunk_size`` and ``token_budget``, or the
        longest prompt when neither caps the steps.
    scores : DataFrame
        One row per candidate, best first: ``chunk_size``, ``token_budget``
        (``<NA>`` for None), ``prefill``, ``ttft``, ``decode``, ``e2e`` (mean
        over folds of the held-out mean absolute relative replay errors),
        ``score`` (``sqrt(prefill * decode)``), ``n_folds`` (folds scored: 1 for a
        candidate screened out on the first fold or identical to a better
        one), ``same_engine_as`` (the better candidate it replays exactly
        like, else empty) and ``error`` (why a candidate could not be
        scored, else empty).
    runner_up : tuple or None
        ``(chunk_size, token_budget)`` of the second best engine (not
        identical to the choice on this trace), scored on every fold; None
        when there is no other engine.
    margin : float
        The runner-up's score over the choice's, minus 1 (0.05: the
        runner-up's held-out error is 5 % larger; negative, down to
        ``-tolerance``, when the runner-up scored better but tied and the
        choice cuts fewer prompts); NaN without a runner-up.
    equivalent : list of tuple
        Other candidates that replay the trace exactly as the choice does
        (with the same betas): the trace cannot tell them apart, e.g. a token
        budget that never binds and no budget. The truth may be any of them.
    edge : {"low", "high"} or None
        ``"low"`` when the choice has the smallest per-step prefill cap
        (``min(chunk_size, token_budget)``) among several candidates,
        ``"high"`` when it has the largest finite one and no candidate is
        uncapped; then :class:`EngineConfigWarning` was issued.
    validation : dict
        The chosen configuration's held-out replay errors: ``prefill``,
        ``ttft``, ``decode``, ``e2e`` (means over folds), ``score``,
        ``folds`` (the per-fold values, one list per quantity) and
        ``n_splits``.
    held_out : DataFrame
        Per request, the chosen configuration's held-out replay (each request
        replayed with the betas of the fold that did not train on it):
        ``request_id``, ``observed_ttft``, ``predicted_ttft``,
        ``observed_decode``, ``predicted_decode``.
    notes : list of str
        One line per thing the search dropped rather than fail the run: a
        candidate whose fit or replay failed (on any fold; its reason is also
        in ``scores["error"]``), a time-block fold without training phases.
    """

    chunk_size: int | None
    token_budget: int | None
    model_chunk_size: int
    scores: pd.DataFrame
    runner_up: tuple | None
    margin: float
    equivalent: list
    edge: str | None
    validation: dict
    held_out: pd.DataFrame
    notes: list = field(default_factory=list)


def default_engine_candidates(
    chunk_sizes=DEFAULT_CHUNK_CANDIDATES, token_budgets=VLLM_TOKEN_BUDGETS
) -> list[tuple]:
    """Candidate ``(chunk_size, token_budget)`` pairs of :func:`select_engine_config`.

    Every chunk size without a budget, every budget without a chunk cap
    (vLLM V1), and ``(None, None)``: no chunking at all.

    Parameters
    ----------
    chunk_sizes : iterable of int, default=(16, 32, ..., 2048)
        Fixed chunk sizes (the command line's ``--chunk-candidates``).
    token_budgets : iterable of int, default=(2048, 4096, 8192, 16384)
        Per-step token budgets (:data:`VLLM_TOKEN_BUDGETS`).

    Returns
    -------
    candidates : list of tuple

    Examples
    --------
    >>> from sklearn_beta import default_engine_candidates
    >>> default_engine_candidates([256, 512], [8192])
    [(256, None), (512, None), (None, 8192), (None, None)]
    """
    return (
        [(int(c), None) for c in chunk_sizes]
        + [(None, int(b)) for b in token_budgets]
        + [(None, None)]
    )


def select_engine_config(
    phases: pd.DataFrame,
    estimator=None,
    *,
    candidates=None,
    n_splits: int = 3,
    n_keep: int = 3,
    tolerance: float = 0.02,
    max_num_seqs: int | None = None,
    num_gpu_blocks: int | None = None,
    block_size: int = 16,
    columns=None,
) -> EngineConfig:
    """Choose the engine's chunk size and/or token budget by held-out replay.

    For each candidate ``(chunk_size, token_budget)`` and each of
    ``n_splits`` time-block folds
    (:class:`~sklearn_beta.model_selection.TraceBlockSplit`), the estimator
    is fitted on the other blocks in full-trace context
    (:class:`~sklearn_beta.model_selection.TraceContextRegressor`), the whole
    trace is replayed with its betas and the candidate's chunking
    (:func:`~sklearn_beta.replay.replay_trace`), and the held-out requests'
    mean absolute relative errors are measured: of the prefill phase's
    duration (from the first step serving the prompt, in the replay and in
    the trace), the time to first token (TTFT, from the arrival), the decode
    time and the end-to-end latency. The score is
    ``sqrt(prefill * decode)``, lower is better: a geometric mean, so that
    a relative improvement of either counts alike and neither the prefill
    errors (larger) nor the decode errors (small at light load, where
    prefills rarely share steps with decodes) decide alone. The TTFT adds
    the wait for admission and for the next step boundary to the prefill;
    queueing amplifies that wait at heavy load whatever the chunking
    (measured: replays of the true engine 50 % off, and the wrong chunk
    ranked first), so it is reported, not scored.

    The betas of a candidate with a token budget are fitted with the
    budget-aware exposures (the transformer gets ``model_chunk_size`` and
    the budget; with no chunk cap below the budget, prefill groups,
    docs/method.md section 4.1), the same engine the replay runs. The
    replay reads decode tokens with the estimator's
    ``decode_tokens_include_first``, as its fit does.

    To keep the cost down, every candidate is first scored on the first
    fold only. Candidates that replay the trace identically at the same
    betas (the first fold's best) are one engine on this trace and are
    grouped (``equivalent``); the best of each of the ``n_keep`` best groups
    goes on to the other folds, and the choice is the best mean over all
    folds. Chunk sizes at least as long as the
    longest prompt are the same engine as no chunking and are dropped.

    Robustness: a candidate whose fit or replay raises (a fit with
    ``beta0 = beta2 = 0`` that the replay refuses, a solver failure), on the
    first fold or a later one, is dropped with a one-line note
    (``notes``, and its ``error`` in ``scores``) and the next best engine
    takes its place; a time-block fold without training phases (a saturated
    trace whose requests span the whole window) is dropped with a note while
    another fold remains. Only when every candidate (or every fold) fails
    does the search raise.

    Parameters
    ----------
    phases : DataFrame
        The phase table, one prefill and one decode row per request.
    estimator : Pipeline or None, default=None
        ``make_pipeline(PhaseExposureTransformer(...), regressor)``; its first
        step with ``chunk_size`` and ``token_budget`` parameters gets each
        candidate's ``model_chunk_size`` (see :class:`EngineConfig`) and
        budget. None: the exposure transformer and
        :class:`~sklearn_beta.IterativeBetaRegressor` with their defaults, per
        instance when the trace has an instance column.
    candidates : iterable of (int or None, int or None), default=None
        ``(chunk_size, token_budget)`` pairs; None: every pair of
        :func:`default_engine_candidates`.
    n_splits : int, default=3
        Time-block folds (at least 2).
    n_keep : int, default=3
        Candidates scored on every fold after the first-fold screening.
    tolerance : float, default=0.02
        Candidates scored on every fold whose score is within this fraction of
        the best are ties; of those, the one with the largest per-step prefill
        cap (the fewest cuts, counting the candidates identical to it on the
        trace) is chosen, as the one-standard-error rule picks the simplest
        model the data cannot reject. Measured on simulated traces of 2000
        requests: caps that cut under 1 % of the prompts differently (budgets of
        4096, 8192 and none on prompts up to 6640 tokens) scored 0.1 to 1.8 %
        apart, either way; a budget of 2048 and a chunk size of 2048 at light
        load 4.6 to 7.2 % apart, the truth ahead. 0 takes the best score.
    max_num_seqs : int or None, default=None
        The engine's most running requests, passed to the replay (None: the
        most the trace shows running at once).
    num_gpu_blocks : int or None, default=None
        The engine's KV cache in blocks, passed to the replay (None: no KV
        bound; :func:`~sklearn_beta.engine_config.estimate_engine_settings`
        reads it from a trace where it binds).
    block_size : int, default=16
        Tokens per KV block, passed to the replay.
    columns : PhaseColumns, mapping or None, default=None
        Column names of the phase table, used by the folds, the default
        estimator's transformer and the replay (a given ``estimator`` names
        its columns itself).

    Returns
    -------
    config : EngineConfig
        The choice, the scores of every candidate, the runner-up and margin,
        and the chosen configuration's held-out replay errors.

    Warns
    -----
    EngineConfigWarning
        When the choice has the smallest per-step prefill cap of the
        candidates, or the largest finite one with no uncapped candidate.
        Nothing else: the candidates' fits and replays are discarded and warn
        nothing (their trouble shows in their scores); fit the chosen engine
        to see its own :class:`~sklearn_beta.exceptions.UncertaintyWarning`
        or :class:`~sklearn_beta.exceptions.IdentifiabilityWarning`.

    Raises
    ------
    ValueError
        For a bad candidate, ``n_splits``, ``n_keep``, ``max_num_seqs``,
        ``num_gpu_blocks`` or ``block_size``, when every fold lacks
        training phases, or when no candidate could be scored (every
        candidate's reason is given).

    Examples
    --------
    >>> from sklearn_beta import select_engine_config
    >>> from sklearn_beta.datasets import simulate_trace
    >>> phases = simulate_trace(600, beta=(8e-3, 2.5e-5, 6e-5), chunk_size=256,
    ...                         max_num_seqs=16, arrival_rate=4.0,
    ...                         prompt_tokens=(600, 0.8), random_state=0)
    >>> config = select_engine_config(
    ...     phases, candidates=[(128, None), (256, None), (512, None), (None, None)])
    >>> config.chunk_size, config.token_budget
    (256, None)
    """
    cols = PhaseColumns.coerce(columns)
    if cols.instance_id is not None and cols.instance_id not in phases.columns:
        cols = replace(cols, instance_id=None)
    instance_col = cols.instance_id
    _check_search_settings(
        n_splits, n_keep, tolerance, max_num_seqs, num_gpu_blocks, block_size
    )
    trace = phases.reset_index(drop=True)
    longest = int(pd.to_numeric(trace[cols.prefill_tokens]).max())
    pairs = _engine_candidates(candidates, longest)
    if estimator is None:
        estimator = make_model(instance_col=instance_col)
        estimator[0].set_params(columns=cols)
    notes: list[str] = []
    folds = usable_folds(trace, n_splits, cols, notes)
    n_splits = len(folds)
    held = [trace[cols.request_id].to_numpy()[test] for _, test in folds]
    replay = dict(
        max_num_seqs=max_num_seqs,
        num_gpu_blocks=num_gpu_blocks,
        block_size=block_size,
        columns=cols,
        decode_tokens_include_first=decode_convention(estimator),
    )

    def run(pair, beta):
        with warnings.catch_warnings():
            # A candidate's replay is discarded; its errors are its score.
            warnings.simplefilter("ignore")
            return replay_trace(
                trace, beta, chunk_size=pair[0], token_budget=pair[1], **replay
            )

    def evaluate(pair, k):
        model = _with_engine(estimator, pair, longest)
        with warnings.catch_warnings():
            # A candidate's fit is discarded: a non-converged or unidentified
            # fit shows in its score, and the chosen engine's own fit (the
            # caller's) warns about the betas it reports.
            warnings.simplefilter("ignore")
            fitted = TraceContextRegressor(model, trace).fit(trace.iloc[folds[k][0]])
        replayed = run(pair, fitted.beta_)
        return replayed[replayed["request_id"].isin(held[k]).to_numpy()], fitted.beta_

    first = {pair: _attempt(evaluate, pair, 0) for pair in pairs}
    screened = _screened_runs(pairs, first, evaluate, run, n_keep, n_splits)
    config = _chosen_config(
        pairs, first, screened, tolerance=tolerance, longest=longest, n_splits=n_splits
    )
    notes += [
        f"engine candidate dropped: {reason}"
        for reason in first.values()
        if isinstance(reason, str)
    ]
    config = replace(config, notes=notes)
    _warn_if_at_edge(config)
    return config


def _check_search_settings(
    n_splits, n_keep, tolerance, max_num_seqs, num_gpu_blocks, block_size
) -> None:
    _check_count(n_splits, "n_splits", minimum=2)
    _check_count(n_keep, "n_keep", minimum=1)
    _check_tolerance(tolerance)
    # Engine limits every candidate shares: wrong ones are the caller's, not
    # a candidate's failure.
    if max_num_seqs is not None:
        _check_count(max_num_seqs, "max_num_seqs", minimum=1)
    if num_gpu_blocks is not None:
        _check_count(num_gpu_blocks, "num_gpu_blocks", minimum=1)
    _check_count(block_size, "block_size", minimum=1)


def _warn_if_at_edge(config) -> None:
    """The chosen engine at the edge of the candidates: say so."""
    if config.edge is None:
        return
    best = (config.chunk_size, config.token_budget)
    warn(
        edge_message(best, config.edge, config.runner_up, config.margin, config.scores),
        EngineConfigWarning,
    )


def _screened_runs(pairs, first, evaluate, run, n_keep: int, n_splits: int):
    """Every fold's held-out replays of the candidates kept after the first.

    ``first`` holds each candidate's first-fold result (or why it failed).
    The candidates scored there are grouped into engines that replay the
    trace alike at the first fold's best betas; the best of the ``n_keep``
    best groups is replayed on every other fold. A candidate that fails on
    a later fold is dropped (``first`` then holds why) and the next group's
    best takes its place. Returns ``(runs, classes, n_kept)``: per scored
    candidate the list of its folds' held-out replays, the groups best
    first (the fully scored ones first), and how many candidates were scored
    on every fold.
    """
    scored = [p for p in pairs if not isinstance(first[p], str)]
    if not scored:
        raise ValueError(
            "No engine configuration could be scored: "
            + "; ".join(first[p] for p in pairs)
        )
    scored.sort(key=lambda p: score(errors(first[p][0])))
    reference = first[scored[0]][1]
    classes = _same_engine_classes(
        scored, lambda p: _attempt(lambda q, _: run(q, reference), p, 0)
    )
    runs = {p: [first[p][0]] for p in scored}
    kept, rest = [], []
    for members in classes:
        pair = members[0]
        if len(kept) < n_keep:
            later = [_attempt(evaluate, pair, k) for k in range(1, n_splits)]
            failed = next((r for r in later if isinstance(r, str)), None)
            if failed is None:
                runs[pair] += [r[0] for r in later]
                kept.append(members)
                continue
            first[pair] = failed
            del runs[pair]
            members = members[1:]
        if members:
            rest.append(members)
    if not kept:
        raise ValueError(
            "No engine configuration could be scored on every fold: "
            + "; ".join(r for r in first.values() if isinstance(r, str))
        )
    return runs, kept + rest, len(kept)


def _chosen_config(
    pairs, first, screened: tuple, *, tolerance: float, longest: int, n_splits: int
) -> EngineConfig:
    """The :class:`EngineConfig` of the simplest candidate within ``tolerance``
    of the best, from the first fold's results and :func:`_screened_runs`'s."""
    runs, classes, n_kept = screened
    table = score_table(pairs, runs, first, classes)
    best = simplest_within(table, n_kept, classes, tolerance)
    table = pd.concat([table.iloc[[best]], table.drop(index=best)], ignore_index=True)
    best, runner_up, margin = pair_of(table.iloc[0]), None, float("nan")
    if n_kept > 1:
        runner_up = pair_of(table.iloc[1])
        margin = float(table.loc[1, "score"] / table.loc[0, "score"] - 1.0)
    same = next(members for members in classes if best in members)
    equivalent = [p for p in same if p != best]
    return EngineConfig(
        chunk_size=best[0],
        token_budget=best[1],
        model_chunk_size=model_chunk_size(best, longest),
        scores=table,
        runner_up=runner_up,
        margin=margin,
        equivalent=equivalent,
        edge=on_edge([best, *equivalent], pairs),
        validation=validation(runs[best], n_splits),
        held_out=held_out(runs[best]),
    )


def _check_tolerance(tolerance) -> None:
    if isinstance(tolerance, bool) or not isinstance(tolerance, Real):
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}.")
    if not 0 <= tolerance < np.inf:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}.")


def _check_count(value, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _engine_candidates(candidates, longest: int) -> list[tuple]:
    """Validated ``(chunk_size, token_budget)`` pairs, a chunk at least as long
    as the longest prompt read as no chunk, duplicates dropped in order."""
    if candidates is None:
        candidates = default_engine_candidates()
    pairs = []
    for pair in candidates:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(
                f"candidates must be (chunk_size, token_budget) pairs, got {pair!r}."
            )
        for name, value in zip(("chunk_size", "token_budget"), pair, strict=True):
            if value is not None:
                _check_count(value, f"A candidate's {name}", minimum=1)
        chunk, budget = (None if v is None else int(v) for v in pair)
        pairs.append(
            (None if chunk is not None and chunk >= longest else chunk, budget)
        )
    pairs = list(dict.fromkeys(pairs))
    if not pairs:
        raise ValueError("candidates is empty.")
    return pairs


def model_chunk_size(pair: tuple, longest: int) -> int:
    """The exposure model's chunk size for an engine configuration.

    The most prompt tokens a request can prefill in one step: the chunk
    size or the budget, whichever is smaller, or the longest prompt when
    neither caps the steps. A budget stays the chunk even above the longest
    prompt: the exposures then model the budget alone (prefill groups).
    """
    return effective_chunk_size(pair[0], pair[1], longest=longest)


def decode_convention(estimator) -> bool:
    """The pipeline's ``decode_tokens_include_first``: the replay reads the
    trace's decode tokens as the fit does (False when no step has it)."""
    for _, step in getattr(estimator, "steps", [])[:-1]:
        params = step.get_params(deep=False)
        if "decode_tokens_include_first" in params:
            return bool(params["decode_tokens_include_first"])
    return False


def _with_engine(estimator, pair: tuple, longest: int):
    """A clone of the pipeline with the candidate's chunking on its transformer."""
    model = clone(estimator)
    steps = getattr(model, "steps", None)
    if steps is None:
        raise TypeError(
            "estimator must be a Pipeline of a phase-table transformer and a beta "
            f"regressor, got {type(estimator).__name__}."
        )
    for _, step in steps[:-1]:
        params = step.get_params(deep=False)
        if "chunk_size" in params and "token_budget" in params:
            step.set_params(
                chunk_size=model_chunk_size(pair, longest), token_budget=pair[1]
            )
            return model
    raise ValueError(
        "No step of the pipeline has chunk_size and token_budget parameters "
        "(e.g. PhaseExposureTransformer) to set each candidate on."
    )


#: What a candidate's fit or replay may raise on a trace it does not suit
#: (a fit the replay refuses, a singular solve, a solver that gives up): the
#: candidate is dropped, not the search. Other errors are bugs and propagate.
CANDIDATE_ERRORS = (ValueError, ArithmeticError, np.linalg.LinAlgError, RuntimeError)


def _attempt(evaluate, pair, k):
    """``evaluate(pair, k)``, or a one-line reason it failed."""
    try:
        return evaluate(pair, k)
    except CANDIDATE_ERRORS as exc:  # e.g. a budget below the running requests
        text = " ".join(str(exc).split()) or type(exc).__name__
        fold = "" if k == 0 else f" (fold {k})"
        return f"{label(pair)}{fold}: {text}"


def usable_folds(trace: pd.DataFrame, n_splits: int, cols, notes: list) -> list:
    """The time-block folds of the trace that have training phases.

    :class:`~sklearn_beta.model_selection.TraceBlockSplit` refuses a trace
    where some fold's test block overlaps every request (a saturated trace
    whose requests live as long as the arrival window); the search drops
    those folds with a note in ``notes`` and goes on while one remains.
    """
    splitter = TraceBlockSplit(n_splits, columns=cols)
    try:
        return list(splitter.split(trace))
    except ValueError as exc:
        if "no training phases" not in str(exc):
            raise
    folds = list(block_folds(trace, n_splits, cols))
    kept = [(train, test) for train, test in folds if train.size]
    dropped = [k for k, (train, _) in enumerate(folds) if not train.size]
    if not kept:
        raise ValueError(
            f"No time-block fold of {n_splits} has training phases: every "
            "request overlaps every test block (a trace whose requests span "
            "the whole window). Set the engine (--chunk-size/--token-budget) "
            "to fit without held-out replay, or use fewer --cv-folds."
        )
    notes.append(
        f"time-block fold(s) {dropped} of {n_splits} dropped: every request "
        "overlaps their test block, so they have no training phases; "
        f"{len(kept)} fold(s) scored"
    )
    return kept


def block_folds(trace: pd.DataFrame, n_splits: int, cols):
    """Every time-block fold's ``(train, test)`` rows, as
    :class:`~sklearn_beta.model_selection.TraceBlockSplit` cuts them, also
    those without training phases (empty ``train``)."""
    times = _trace_times(trace, cols)
    block = request_blocks(times, n_splits)
    for k in range(n_splits):
        test = block == k
        train = ~test & ~overlapping_test(times, test, 0.0)
        yield np.flatnonzero(train), np.flatnonzero(test)


def _same_engine_classes(scored, replay_at_reference) -> list[list[tuple]]:
    """Candidates grouped by identical replays at the same betas, best first.

    Two configurations that schedule every step of the trace alike (a budget
    that never binds and no budget, say) are one engine on this trace: its
    data cannot tell them apart, and a margin between them would only measure
    the fits' noise. Each group lists its largest prefill cap first: the
    plainest description of that engine (no chunking rather than a budget
    that never binds).
    """
    classes: dict[bytes, list[tuple]] = {}
    for pair in scored:
        replayed = replay_at_reference(pair)
        if isinstance(replayed, str):
            # Unreplayable at the reference betas: its own engine.
            classes[replayed.encode()] = [pair]
            continue
        key = np.concatenate(
            [replayed["prefill_end"].to_numpy(), replayed["decode_end"].to_numpy()]
        ).tobytes()
        classes.setdefault(key, []).append(pair)
    return [sorted(group, key=lambda p: -cap(p)) for group in classes.values()]


def fit_option_defaults() -> dict:
    """The estimators' defaults of every :func:`make_model` option.

    Read from the scikit-learn estimators themselves, so that the command
    line and its ``--help`` never type a default a second time.
    ``correction_mode`` is per algorithm: ``{"baseline": ..., "iterative": ...}``;
    ``algo`` is :func:`make_model`'s and ``n_splits``
    :func:`~sklearn_beta.select_engine_config`'s.
    """
    transformer = PhaseExposureTransformer().get_params()
    iterative = IterativeBetaRegressor().get_params()
    defaults = {name: transformer[name] for name in TRANSFORMER_OPTIONS}
    defaults |= {name: iterative[name] for name in ITERATIVE_OPTIONS}
    defaults["chunk_size"] = transformer["chunk_size"]
    defaults["algo"] = inspect.signature(make_model).parameters["algo"].default
    search = inspect.signature(select_engine_config).parameters
    defaults["n_splits"] = search["n_splits"].default
    defaults["correction_mode"] = {
        "baseline": transformer["correction_mode"],
        "iterative": iterative["correction_mode"],
    }
    return defaults
