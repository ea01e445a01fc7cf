"""Step-level replay of an engine over a trace's arrivals and token counts.

:func:`replay_trace` runs the engine loop of
:func:`~sklearn_beta.datasets.simulate_trace` (vLLM V1 scheduling, see
``docs/replay.md``) with given betas and engine settings on the requests of a
trace: their arrivals, prompt tokens and decode steps. It forecasts when each
request's prefill and decode end, which is what a simulator calibrated with
the betas would predict, and puts the observed times beside the predicted
ones. :func:`replay_errors` turns that into relative errors of the
time to first token, the decode time and the end-to-end latency, and
:func:`make_replay_scorer` into scorers for
:func:`~sklearn.model_selection.cross_validate` and
:class:`~sklearn.model_selection.GridSearchCV`: a fitted pipeline's betas,
chunk size and token budget replay the whole trace, and the held-out
requests are scored.
"""

from __future__ import annotations

from functools import partial
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ..core._columns import PhaseColumns
from ._loop import EngineSettings, check_step_beta, run_engine
from ._replay_requests import (
    clock_origin,
    observed_concurrency,
    trace_requests,
)

__all__ = [
    "REPLAY_QUANTITIES",
    "make_replay_scorer",
    "replay_errors",
    "replay_scorers",
    "replay_trace",
]

#: What the replay errors and scorers compare, per request.
REPLAY_QUANTITIES = ("ttft", "decode", "e2e")


def replay_trace(
    phases: pd.DataFrame,
    beta,
    *,
    chunk_size: int | None = None,
    token_budget: int | None = None,
    max_num_seqs: int | None = None,
    arrival: str | None = "arrival",
    columns=None,
    decode_tokens_include_first: bool = False,
    num_gpu_blocks: int | None = None,
    block_size: int = 16,
    long_prefill_token_threshold: int | None = None,
    cached_tokens: str | None = None,
    request_delay: float = 0.0,
    first_token_offset: float = 0.0,
    last_token_offset: float = 0.0,
    max_in_flight: int | None = None,
    intended_arrival: str = "intended_arrival",
    step_model="published",
) -> pd.DataFrame:
    """Replay a trace's requests on an engine with the given betas.

    Each engine instance runs one busy loop of steps lasting ``beta0 + beta1
    * T_pf + beta2 * T_dec``, scheduled as vLLM V1 does: requests are
    admitted first come, first served at step boundaries while fewer than
    ``max_num_seqs`` run; a step serves one token to every running decode,
    then prefill chunks of at most ``chunk_size`` tokens in arrival order
    within ``token_budget``. A request decodes from the step after its last
    prefill step, for as many steps as its decode phase has. Instances (the
    ``instance_id`` column) are replayed independently. It is the loop of
    :func:`~sklearn_beta.datasets.simulate_trace`: replaying a simulated
    trace with the simulator's settings gives back its phase times, KV cache,
    preemptions, prefix-cache hits and client (delay, reporting offsets,
    closed loop) included (``docs/replay.md``).

    Parameters
    ----------
    phases : DataFrame
        Phase table with one prefill and one decode row per request. Decode
        steps come from ``N_steps`` on decode rows when the table has that
        column, else from ``decode_tokens``.
    beta : array-like of shape (3,) or (n_step_features,)
        ``(beta0, beta1, beta2)`` in seconds per step, per prefill token and
        per decode token; non-negative, with ``beta0 > 0`` or both
        ``beta1 > 0`` and ``beta2 > 0``. Under another ``step_model``, one
        coefficient per feature, in its order.
    chunk_size : int, default=None
        Most prompt tokens a request prefills per step; None: no chunk cap.
    token_budget : int, default=None
        Most tokens per step (vLLM's ``max_num_batched_tokens``), at least
        ``max_num_seqs``; None: no budget.
    max_num_seqs : int, default=None
        Most requests running at once per instance. None uses, per instance,
        the most requests the trace shows running at once (overlaps of
        ``[prefill start, decode end)``): a lower bound of the engine's
        setting that never binds where the trace did not.
    arrival : str or None, default="arrival"
        Column of request arrival times, read on prefill rows. When the table
        has no such column (or with None), a request arrives at its prefill's
        ``t_start``: the first step that served it, after any queueing, so the
        replay forecasts from the moment the engine took the request. A name
        other than the default must exist. Requests arriving at the same time
        (e.g. prefills starting in the same step) are served in the order of
        their first row in the table, which should follow the arrivals.
    columns : PhaseColumns, mapping or None, default=None
        Column names of the phase table (defaults: the schema's names).
    decode_tokens_include_first : bool, default=False
        Whether decode rows' ``decode_tokens`` count the first output token,
        which the last prefill step emits: then a request decodes
        ``decode_tokens - 1`` steps, else ``decode_tokens``. An ``N_steps``
        column gives the steps itself and wins. It is the convention of
        :class:`~sklearn_beta.PhaseExposureTransformer`'s parameter of that name.
    num_gpu_blocks : int, default=None
        KV-cache blocks per instance; None: unbounded (no admission stall, no
        preemption). With a bound, requests are admitted while the blocks of
        their prompt are free and the step's budget has room, grow one block
        per ``block_size`` tokens of context, and the most recently admitted
        is preempted (and later recomputed) when a decode finds no free block.
    block_size : int, default=16
        Tokens per KV-cache block; used with ``num_gpu_blocks``.
    long_prefill_token_threshold : int, default=None
        Most prompt tokens one request prefills per step (vLLM's setting);
        with ``chunk_size`` the smaller one caps. None: no cap.
    cached_tokens : str, default=None
        Column of the prefill rows giving each request's prompt tokens found
        in the prefix cache (e.g. vLLM's ``num_cached_tokens``), which skip
        prefill; None: no hits.
    request_delay : float, default=0.0
        Seconds from a request's arrival (its send, for a client-side trace)
        to the engine's queue.
    first_token_offset, last_token_offset : float, default=0.0
        Seconds from the engine emitting the first (last) token to the trace
        recording it; added to the replayed ``prefill_end`` (``decode_end``).
    max_in_flight : int, default=None
        A closed-loop client per instance: requests are sent at their
        intended arrivals (column ``intended_arrival``) while fewer than this
        many are outstanding, else when one completes. None: the arrivals are
        the sends (open loop).
    intended_arrival : str, default="intended_arrival"
        Column of the prefill rows' intended arrivals, read with
        ``max_in_flight``.
    step_model : str or list of str, default="published"
        The step time's features, as
        :func:`~sklearn_beta.datasets.simulate_trace` takes them: the
        replay of a trace simulated with a step model and its betas gives
        back its times.

    Returns
    -------
    replayed : DataFrame
        One row per request, in order of first appearance: ``request_id``,
        ``instance_id``, ``arrival``, ``prefill_tokens``, ``decode_steps``;
        the replay's ``send`` (the arrival, or a closed-loop client's send),
        ``admitted`` (first admission), ``preemptions``, ``prefill_start``
        (first step serving the prompt), ``prefill_end`` and ``decode_end``
        (plus the reporting offsets); and the trace's
        ``observed_prefill_start``, ``observed_prefill_end``,
        ``observed_decode_end``. Times in the trace's clock.

    See Also
    --------
    replay_errors : Relative errors of the replayed latencies.
    make_replay_scorer : Held-out replay error as a scikit-learn scorer.

    Examples
    --------
    >>> from sklearn_beta.datasets import simulate_trace
    >>> from sklearn_beta.replay import replay_trace
    >>> phases = simulate_trace(50, beta=(5e-3, 2e-5, 8e-5), chunk_size=64,
    ...                         max_num_seqs=8, arrival_rate=20.0, random_state=0)
    >>> replayed = replay_trace(phases, (5e-3, 2e-5, 8e-5), chunk_size=64,
    ...                         max_num_seqs=8)
    >>> bool((replayed["decode_end"] == replayed["observed_decode_end"]).all())
    True
    """
    beta = check_step_beta(beta, step_model)
    for value, name in (
        (chunk_size, "chunk_size"),
        (token_budget, "token_budget"),
        (max_num_seqs, "max_num_seqs"),
        (num_gpu_blocks, "num_gpu_blocks"),
        (block_size, "block_size"),
        (long_prefill_token_threshold, "long_prefill_token_threshold"),
        (max_in_flight, "max_in_flight"),
    ):
        _check_count(value, name)
    for value, name in (
        (request_delay, "request_delay"),
        (first_token_offset, "first_token_offset"),
        (last_token_offset, "last_token_offset"),
    ):
        _check_delay(value, name)
    requests = trace_requests(
        phases,
        PhaseColumns.coerce(columns),
        arrival,
        include_first=bool(decode_tokens_include_first),
        cached_col=cached_tokens,
        intended_col=None if max_in_flight is None else intended_arrival,
    )
    caps = max_num_seqs
    if caps is None:
        caps = observed_concurrency(requests)
    origin = clock_origin(requests["intended"], requests["instance"])
    run = run_engine(
        requests["intended"] - origin,
        requests["prompt"],
        requests["decode_steps"],
        requests["instance"],
        beta=beta,
        chunk_size=chunk_size,
        token_budget=token_budget,
        max_num_seqs=caps,
        cached_tokens=requests["cached"],
        settings=EngineSettings(
            block_size=block_size,
            num_gpu_blocks=num_gpu_blocks,
            long_prefill_token_threshold=long_prefill_token_threshold,
            max_in_flight=0 if max_in_flight is None else max_in_flight,
            delay=float(request_delay),
            done_offset=float(last_token_offset),
        ),
    )
    offsets = (first_token_offset, last_token_offset)
    return _replayed_table(requests, run, origin, offsets, max_in_flight is not None)


def _replayed_table(requests, run, origin, offsets, closed_loop) -> pd.DataFrame:
    """One row per request: the trace's inputs, the replay's times in the
    trace's clock (reporting offsets added) and the observed times."""
    return pd.DataFrame(
        {
            "request_id": requests["request_id"],
            "instance_id": requests["instance_id"],
            "arrival": requests["arrival"],
            "prefill_tokens": requests["prompt"],
            "decode_steps": requests["decode_steps"],
            # open loop, the sends are the arrivals themselves (no round trip
            # through the replay's clock origin)
            "send": run.send + origin if closed_loop else requests["arrival"],
            "admitted": run.admitted + origin,
            "preemptions": run.preemptions,
            "prefill_start": run.prefill_start + origin,
            "prefill_end": run.prefill_end + origin + offsets[0],
            "decode_end": run.decode_end + origin + offsets[1],
            "observed_prefill_start": requests["prefill_start"],
            "observed_prefill_end": requests["prefill_end"],
            "observed_decode_end": requests["decode_end"],
        }
    )


def replay_errors(replayed: pd.DataFrame, quantity: str = "ttft") -> np.ndarray:
    """Signed relative error of a replayed latency, per request.

    ``(predicted - observed) / observed`` of

    * ``"ttft"``: prefill end minus arrival (the prefill phase's duration when
      arrivals are the prefill starts); the replay's from its ``send`` when
      it has that column (a closed-loop client's sends), the trace's from its
      ``arrival``;
    * ``"decode"``: decode end minus prefill end;
    * ``"e2e"``: decode end minus arrival.

    Parameters
    ----------
    replayed : DataFrame
        Output of :func:`replay_trace`.
    quantity : {"ttft", "decode", "e2e"}, default="ttft"

    Returns
    -------
    errors : ndarray of shape (n_requests,)

    Examples
    --------
    >>> import pandas as pd
    >>> from sklearn_beta.replay import replay_errors
    >>> replayed = pd.DataFrame({
    ...     "arrival": [0.0], "prefill_end": [0.3], "decode_end": [1.0],
    ...     "observed_prefill_end": [0.2], "observed_decode_end": [1.2]})
    >>> replay_errors(replayed, "ttft").round(6).tolist()
    [0.5]
    >>> replay_errors(replayed, "decode").round(6).tolist()
    [-0.3]
    """
    predicted, observed = replay_latencies(replayed, quantity)
    return (predicted - observed) / observed


def replay_latencies(replayed: pd.DataFrame, quantity: str) -> tuple:
    """``(predicted, observed)`` per request of ``quantity`` in a replay, as
    :func:`replay_errors` defines them."""
    if quantity not in REPLAY_QUANTITIES:
        raise ValueError(
            f"quantity must be one of {list(REPLAY_QUANTITIES)}, got {quantity!r}."
        )
    start = {"ttft": "arrival", "decode": "prefill_end", "e2e": "arrival"}[quantity]
    end = {"ttft": "prefill_end", "decode": "decode_end", "e2e": "decode_end"}[quantity]
    observed_start = "arrival" if start == "arrival" else "observed_" + start
    if start == "arrival" and "send" in replayed.columns:
        start = "send"
    predicted = replayed[end].to_numpy() - replayed[start].to_numpy()
    observed = (
        replayed["observed_" + end].to_numpy() - replayed[observed_start].to_numpy()
    )
    return predicted, observed


def make_replay_scorer(
    trace: pd.DataFrame,
    quantity: str = "ttft",
    *,
    max_num_seqs: int | None = None,
    arrival: str | None = "arrival",
    columns=None,
    **engine,
):
    """Held-out replay error as a scorer ``scorer(estimator, X, y=None)``.

    The scorer takes the fitted estimator's betas (its last step's
    ``beta_``) and its engine settings (``chunk_size``, ``token_budget``,
    ``decode_tokens_include_first`` and ``step_model`` of the first pipeline
    step that has a chunk size), replays the WHOLE ``trace`` with
    them, so that the held-out requests run amid their real concurrency, and
    returns minus the mean absolute relative error (MAPE, as a fraction) of
    ``quantity`` over the requests of ``X``. Greater is better, as
    scikit-learn expects. The relative error weighs short and long requests
    alike, and reads as "the replay is off by x %".

    Parameters
    ----------
    trace : DataFrame
        The full phase table the folds are cut from, with a unique index: the
        rows of ``X`` are matched to it by index label.
    quantity : {"ttft", "decode", "e2e"}, default="ttft"
        See :func:`replay_errors`.
    max_num_seqs, arrival, columns
        Passed to :func:`replay_trace`.
    **engine
        Other engine and client settings of :func:`replay_trace`
        (``num_gpu_blocks``, ``block_size``, ``long_prefill_token_threshold``,
        ``cached_tokens``, ``request_delay``, the reporting offsets,
        ``max_in_flight``, ``intended_arrival``); the pipeline gives the
        chunking and the decode convention.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y=None) -> float``. ``estimator`` is a fitted
        :class:`~sklearn.pipeline.Pipeline` (or a
        :class:`~sklearn_beta.model_selection.TraceContextRegressor` around
        one); ``y`` is ignored.

    See Also
    --------
    replay_scorers : The three quantities at once, for multi-metric scoring.

    Examples
    --------
    >>> from sklearn.model_selection import cross_validate
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn_beta import BaselineBetaRegressor, PhaseExposureTransformer
    >>> from sklearn_beta.datasets import simulate_trace
    >>> from sklearn_beta.model_selection import TraceBlockSplit
    >>> from sklearn_beta.replay import make_replay_scorer
    >>> phases = simulate_trace(300, beta=(5e-3, 2e-5, 8e-5), chunk_size=64,
    ...                         max_num_seqs=16, arrival_rate=20.0,
    ...                         random_state=0)
    >>> model = make_pipeline(PhaseExposureTransformer(chunk_size=64),
    ...                       BaselineBetaRegressor())
    >>> scores = cross_validate(model, phases, cv=TraceBlockSplit(3),
    ...                         scoring=make_replay_scorer(phases, "decode"))
    >>> scores["test_score"].shape
    (3,)
    """
    if quantity not in REPLAY_QUANTITIES:
        raise ValueError(
            f"quantity must be one of {list(REPLAY_QUANTITIES)}, got {quantity!r}."
        )
    if not isinstance(trace, pd.DataFrame) or not trace.index.is_unique:
        raise ValueError(
            "trace must be the phase table (DataFrame) with a unique index: its "
            "labels identify the rows the scorer is given."
        )
    return partial(
        _replay_score,
        trace=trace,
        quantity=quantity,
        replay_kwargs=dict(
            max_num_seqs=max_num_seqs, arrival=arrival, columns=columns, **engine
        ),
        cache={},
    )


def replay_scorers(trace: pd.DataFrame, **kwargs) -> dict:
    """The replay scorers of every quantity, for multi-metric ``scoring=``.

    Parameters
    ----------
    trace : DataFrame
        The full phase table.
    **kwargs
        Passed to :func:`make_replay_scorer`.

    Returns
    -------
    scorers : dict
        ``{"replay_ttft": ..., "replay_decode": ..., "replay_e2e": ...}``.

    Examples
    --------
    >>> from sklearn_beta.datasets import load_sample_trace
    >>> from sklearn_beta.replay import replay_scorers
    >>> sorted(replay_scorers(load_sample_trace()))
    ['replay_decode', 'replay_e2e', 'replay_ttft']
    """
    scorers = {
        f"replay_{q}": make_replay_scorer(trace, q, **kwargs) for q in REPLAY_QUANTITIES
    }
    shared: dict = {}  # one replay per fitted engine serves the three scores
    for scorer in scorers.values():
        scorer.keywords["cache"] = shared
    return scorers


def _replay_score(estimator, X, y=None, *, trace, quantity, replay_kwargs, cache):
    beta, settings = _engine_settings(estimator)
    if not isinstance(X, pd.DataFrame):
        raise TypeError(
            "A replay scorer identifies the held-out rows by their index labels "
            f"in the trace: X must be a DataFrame of its rows, got {type(X).__name__}."
        )
    pos = trace.index.get_indexer(X.index)
    if np.any(pos < 0):
        raise ValueError(
            f"{int(np.count_nonzero(pos < 0))} row(s) of X are not in the scorer's "
            f"trace, first index labels: {X.index[pos < 0][:5].tolist()}."
        )
    key = (tuple(beta), *settings.values())
    if key not in cache:
        cache.clear()  # the last engine only: folds come one after another
        cache[key] = replay_trace(trace, beta, **settings, **replay_kwargs)
    replayed = cache[key]
    request_col = PhaseColumns.coerce(replay_kwargs["columns"]).request_id
    held_out = replayed["request_id"].isin(trace[request_col].iloc[pos]).to_numpy()
    errors = replay_errors(replayed, quantity)[held_out]
    return -float(np.mean(np.abs(errors)))


def _engine_settings(estimator) -> tuple[np.ndarray, dict]:
    """Fitted betas and engine settings of a pipeline (or a wrapper of one)."""
    pipeline = getattr(estimator, "estimator_", estimator)
    if not isinstance(pipeline, Pipeline):
        raise TypeError(
            "A replay scorer needs a fitted Pipeline of a phase-table transformer "
            "(with chunk_size/token_budget) and a beta regressor, or a "
            f"TraceContextRegressor around one; got {type(estimator).__name__}."
        )
    check_is_fitted(pipeline[-1], "beta_")
    settings = transformer_settings(pipeline)
    if settings is None:
        raise ValueError(
            "No step of the pipeline has a chunk_size parameter: the replay needs "
            "the engine's chunk size (e.g. PhaseExposureTransformer(chunk_size=...))."
        )
    if not isinstance(settings["step_model"], str):
        settings["step_model"] = tuple(settings["step_model"])  # a cache key
    return np.asarray(pipeline[-1].beta_, dtype=float), settings


def transformer_settings(pipeline: Pipeline) -> dict | None:
    """The replay settings of a pipeline's phase-table transformer (its first
    step with a ``chunk_size``): chunking, decode convention and step model;
    None when no step has one."""
    for _, step in pipeline.steps[:-1]:
        params = step.get_params(deep=False)
        if "chunk_size" in params:
            settings = {k: params.get(k) for k in ("chunk_size", "token_budget")}
            # the transformer's decode convention is the trace's: the replay
            # must read decode_tokens as the fit did
            settings["decode_tokens_include_first"] = bool(
                params.get("decode_tokens_include_first", False)
            )
            # the replay's steps last what the fitted step model says
            settings["step_model"] = params.get("step_model", "published")
            return settings
    return None


def _check_delay(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}.")


def _check_count(value, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
