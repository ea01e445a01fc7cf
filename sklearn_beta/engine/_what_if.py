"""What-if: a calibrated engine's latencies under another arrival process.

The replay forecasts a trace's own requests; capacity planning asks about
others: the same requests at another rate (the inter-arrival times scaled),
or another trace, served by the engine the betas describe. Benchmark clients
often cap the requests in flight, so the arrival process is either open
loop (each request sent at its arrival) or closed loop (sent at its intended
arrival while fewer than ``max_in_flight`` are outstanding); a closed-loop
trace's cap is read from the trace when not given. See ``docs/replay.md``.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd

from ..core._columns import PhaseColumns
from ._replay import replay_trace, transformer_settings

__all__ = ["fitted_engine", "infer_max_in_flight", "what_if_latencies"]

#: A send lagging its intended arrival by more than this (seconds) was held
#: back by the client; less is the client's own jitter (an asyncio client
#: at a few hundred requests/s lags by well under a millisecond).
LAG_TOLERANCE = 1e-3
#: A trace is closed loop when at least this share of its requests were held
#: back, and at least :data:`AT_CAP_SHARE` of those were sent with the
#: in-flight count at its maximum (one completed, the next one sent).
MIN_LAGGED_SHARE = 0.01
AT_CAP_SHARE = 0.9


def _prefill_rows(phases: pd.DataFrame, cols: PhaseColumns) -> pd.DataFrame:
    kind = phases[cols.phase_type].astype(str).str.lower()
    return phases[(kind == "prefill").to_numpy()]


def _decode_ends(phases: pd.DataFrame, cols: PhaseColumns, ids) -> np.ndarray:
    kind = phases[cols.phase_type].astype(str).str.lower()
    dec = phases[(kind == "decode").to_numpy()]
    position = pd.Index(dec[cols.request_id]).get_indexer(ids)
    if (position < 0).any():
        bad = np.asarray(ids)[position < 0][:5]
        raise ValueError(
            f"Every request needs a decode row (column {cols.phase_type!r}); "
            f"request(s) without one, first: {bad.tolist()}."
        )
    return pd.to_numeric(dec[cols.t_end]).to_numpy(dtype=float)[position]


def infer_max_in_flight(
    phases: pd.DataFrame,
    *,
    arrival: str = "arrival",
    intended_arrival: str = "intended_arrival",
    lag_tolerance: float = LAG_TOLERANCE,
    columns=None,
) -> int | None:
    """A closed-loop client's cap on requests in flight, or None (open loop).

    A trace with both the sends (``arrival``) and the intended arrivals
    (TraceV3's ``intended_arrival``) is closed loop when sends lag their
    intended arrivals (by more than ``lag_tolerance``) for at least
    :data:`MIN_LAGGED_SHARE` of the requests and the in-flight count (sent,
    last token not yet recorded, per instance) right after such a send is at
    its maximum for at least :data:`AT_CAP_SHARE` of them: the client sent
    the next request as one completed. The cap is that maximum.

    Parameters
    ----------
    phases : DataFrame
        The phase table; ``arrival`` and ``intended_arrival`` on prefill rows.
    arrival, intended_arrival : str
        Columns of the sends and the intended arrivals.
    lag_tolerance : float, default=1e-3
        Seconds a send may lag its intended arrival by the client's jitter
        alone.
    columns : PhaseColumns, mapping or None, default=None
        Column names.

    Returns
    -------
    max_in_flight : int or None
        None when a column is missing or the sends do not lag at a cap.
    """
    cols = PhaseColumns.coerce(columns)
    if isinstance(lag_tolerance, bool) or not isinstance(lag_tolerance, Real):
        raise ValueError(f"lag_tolerance must be a number >= 0, got {lag_tolerance!r}.")
    if not 0 <= lag_tolerance < np.inf:
        raise ValueError(f"lag_tolerance must be a number >= 0, got {lag_tolerance!r}.")
    if arrival not in phases.columns or intended_arrival not in phases.columns:
        return None
    pre = _prefill_rows(phases, cols)
    send = pd.to_numeric(pre[arrival]).to_numpy(dtype=float)
    intended = pd.to_numeric(pre[intended_arrival]).to_numpy(dtype=float)
    end = _decode_ends(phases, cols, pre[cols.request_id].to_numpy())
    if cols.instance_id is not None and cols.instance_id in pre.columns:
        instance = pd.factorize(pre[cols.instance_id], sort=True)[0]
    else:
        instance = np.zeros(send.size, dtype=np.intp)
    n = send.size
    if n == 0:
        return None
    # In flight after each send's time (the client sends as one completes).
    # Each instance's changes sum to zero, so one running sum over the
    # instances sorted in turn counts each.
    time = np.concatenate([end, send])
    change = np.concatenate([-np.ones(n, np.int64), np.ones(n, np.int64)])
    inst = np.concatenate([instance, instance])
    order = np.lexsort((time, inst))
    running = np.cumsum(change[order])
    # Several requests complete in one step and as many are sent at once:
    # the count after every event at that time.
    t, i = time[order], inst[order]
    last = np.ones(t.size, dtype=bool)
    last[:-1] = (t[1:] != t[:-1]) | (i[1:] != i[:-1])
    group_end = np.flatnonzero(last)
    group = np.repeat(np.arange(group_end.size), np.diff(np.r_[-1, group_end]))
    count = np.empty(2 * n, dtype=np.int64)
    count[order] = running[group_end][group]
    after_send = count[n:]
    lagged = send - intended > lag_tolerance
    if lagged.sum() < MIN_LAGGED_SHARE * n:
        return None
    cap = int(after_send.max())
    if np.mean(after_send[lagged] == cap) < AT_CAP_SHARE:
        return None
    return cap


def _fitted(beta):
    """The regressor of a fitted estimator or pipeline, else None."""
    source = beta.steps[-1][1] if hasattr(beta, "steps") else beta
    return source if hasattr(source, "beta_") else None


def _beta_and_interval(beta, beta_interval):
    """Betas and their (n_coef, 2) interval from arrays or a fitted estimator."""
    source = _fitted(beta)
    if source is not None:
        if beta_interval is None:
            beta_interval = getattr(source, "beta_ci_", None)
        beta = source.beta_
    values = np.asarray(beta, dtype=float)
    if beta_interval is None:
        return values, None
    bounds = np.asarray(beta_interval, dtype=float)
    if bounds.shape != (values.shape[0], 2) or not np.all(np.isfinite(bounds)):
        raise ValueError(
            "beta_interval must be finite (lower, upper) pairs of the "
            f"{values.shape[0]} coefficients, shape ({values.shape[0]}, 2), got "
            f"{bounds.tolist()!r}."
        )
    if np.any(bounds[:, 0] > bounds[:, 1]):
        raise ValueError(
            f"beta_interval's lower limits exceed the upper: {bounds.tolist()!r}."
        )
    return values, bounds


#: The keywords a fitted estimator supplies, with the function's defaults:
#: a keyword left at its default takes the estimator's value.
FITTED_DEFAULTS = {
    "chunk_size": None,
    "token_budget": None,
    "max_num_seqs": None,
    "num_gpu_blocks": None,
    "block_size": 16,
    "max_in_flight": "auto",
    "decode_tokens_include_first": False,
}
#: ``alpha_`` of a ScheduleBetaRegressor, as the replay's keywords.
OFFSET_KEYWORDS = {
    "queue": "request_delay",
    "first_token": "first_token_offset",
    "last_token": "last_token_offset",
}


def fitted_engine(beta) -> dict:
    """The engine and the client's view a fitted estimator was fitted with.

    A :class:`~sklearn_beta.ScheduleBetaRegressor`: its chunking,
    ``max_num_seqs``, ``engine_settings``, client cap, step model and offsets
    (``alpha_`` as ``request_delay``, ``first_token_offset``,
    ``last_token_offset``). A pipeline (or a regressor's transformer step):
    the transformer's chunking, decode convention and step model. Arrays:
    nothing.
    """
    pipeline = beta if hasattr(beta, "steps") else None
    source = _fitted(beta)
    if source is None:
        return {}
    if hasattr(source, "alpha_"):
        params = source.get_params(deep=False)
        found = {k: params.get(k) for k in ("chunk_size", "token_budget")}
        found["max_num_seqs"] = params.get("max_num_seqs")
        found.update(params.get("engine_settings") or {})
        found["max_in_flight"] = params.get("max_in_flight")
        if params.get("step_model", "published") != "published":
            found["step_model"] = params["step_model"]
        for name, keyword in OFFSET_KEYWORDS.items():
            value = float(source.alpha_.get(name, 0.0))
            if value < 0:
                raise ValueError(_negative_offset_message(source.alpha_, name))
            found[keyword] = value
        return found
    found = transformer_settings(pipeline) if pipeline is not None else None
    if found is None:
        return {}
    if found["step_model"] == "published":
        del found["step_model"]  # the replay's default
    return found


def _negative_offset_message(alpha: dict, name: str) -> str:
    """Why a negative ``alpha_`` entry cannot be replayed, and what can."""
    queue = float(alpha.get("queue", 0.0))
    first = queue + float(alpha.get("first_token", 0.0))
    last = queue + float(alpha.get("last_token", 0.0))
    return (
        f"The estimator's alpha_[{name!r}] = {float(alpha[name]):.6g} s is "
        f"negative: a delay below zero (an event seen before the engine had it) "
        f"is no {OFFSET_KEYWORDS[name]} a replay can run. ScheduleBetaRegressor's "
        "fit holds every offset at 0 or above, so this alpha_ was set otherwise. "
        "Only the totals are identified from client times (a common shift of "
        f"the queue and reporting delays fits them alike): first token "
        f"{first:.6g} s, last token {last:.6g} s after the send. Replay its "
        "beta_ as an array with non-negative request_delay, first_token_offset "
        "and last_token_offset (e.g. 0 and those totals)."
    )


def _with_fitted(settings: dict, engine: dict, fitted: dict) -> tuple[dict, dict]:
    """``settings`` and ``engine`` keywords with the fitted values where the
    caller left the default (or did not give the keyword)."""
    settings, engine = dict(settings), dict(engine)
    for key, value in fitted.items():
        if key in FITTED_DEFAULTS:
            if settings[key] == FITTED_DEFAULTS[key]:
                settings[key] = value
        else:
            engine.setdefault(key, value)
    return settings, engine


def _rescaled(phases, cols, arrival, intended_arrival, rate_scale):
    """The phase table with its arrivals (and intended arrivals) compressed
    by ``rate_scale`` from the first one, each request's phases shifted with
    its arrival so that the table stays valid (its times are not used)."""
    frame = phases.reset_index(drop=True).copy()
    ids = frame[cols.request_id].to_numpy()
    pre = _prefill_rows(frame, cols)
    if arrival is None or arrival not in frame.columns:
        arrival = "arrival"
        first = pd.Series(
            pd.to_numeric(pre[cols.t_start]).to_numpy(dtype=float),
            index=pre[cols.request_id].to_numpy(),
        )
        frame[arrival] = first.reindex(ids).to_numpy()
        pre = _prefill_rows(frame, cols)
    if rate_scale == 1.0:
        return frame, arrival
    old = pd.to_numeric(pre[arrival]).to_numpy(dtype=float)
    origin = float(np.nanmin(old))
    new = origin + (old - origin) / rate_scale
    shift = pd.Series(new - old, index=pre[cols.request_id].to_numpy()).reindex(ids)
    delta = shift.to_numpy()
    for name in (cols.t_start, cols.t_end, arrival):
        frame[name] = pd.to_numeric(frame[name]).to_numpy(dtype=float) + delta
    if intended_arrival in frame.columns:
        held = pd.to_numeric(frame[intended_arrival]).to_numpy(dtype=float)
        frame[intended_arrival] = origin + (held - origin) / rate_scale
    return frame, arrival


def what_if_latencies(
    phases: pd.DataFrame,
    beta,
    *,
    rate_scale: float = 1.0,
    beta_interval=None,
    chunk_size: int | None = None,
    token_budget: int | None = None,
    max_num_seqs: int | None = None,
    num_gpu_blocks: int | None = None,
    block_size: int = 16,
    max_in_flight: int | None | str = "auto",
    arrival: str | None = "arrival",
    intended_arrival: str = "intended_arrival",
    decode_tokens_include_first: bool = False,
    columns=None,
    **engine,
) -> pd.DataFrame:
    """Predicted TTFT, ITL and end-to-end latency under another arrival process.

    The requests of ``phases`` (their token counts; the table may be another
    trace than the one the betas were fitted on) are sent at their arrivals
    with the inter-arrival times divided by ``rate_scale`` (2.0: twice the
    rate), and replayed (:func:`~sklearn_beta.replay.replay_trace`) on the
    engine of ``beta`` and the settings given. The client is open loop
    (``max_in_flight=None``) or closed loop: at most ``max_in_flight``
    requests outstanding per instance, each sent at its intended arrival
    (the ``intended_arrival`` column, scaled alike; the arrivals when it is
    missing) or when one completes; ``"auto"`` reads the cap from the trace
    (:func:`infer_max_in_flight`), open loop when it shows none.

    Intervals: with ``beta_interval`` (lower and upper limits per beta,
    e.g. a fitted regressor's ``beta_ci_``, read from it when ``beta`` is a
    fitted estimator or pipeline), the requests are replayed at the lower
    and at the upper limits of all three betas too, and each latency's
    interval is the range of the three replays (lower limits, ``beta``,
    upper limits). Every step lasts longer at the upper limits, which
    lengthens the decode times and end-to-end latencies; a request's time
    to first token need not follow (a slower engine also holds a
    closed-loop client's sends back, and the step boundaries move: measured
    at capacity with a 256-request cap, the upper limits gave a mean TTFT
    2.8 % *below* the truth while the end-to-end rose 3.6 %), hence the
    range rather than the two ends. The interval carries the coefficients'
    uncertainty only (not the step noise's) and inherits the coverage of
    ``beta_interval``, not more.

    Parameters
    ----------
    phases : DataFrame
        The requests: one prefill and one decode row each, arrivals in the
        ``arrival`` column (else the prefill starts).
    beta : array-like of shape (n_coefficients,) or fitted estimator
        The step model's coefficients (``(beta0, beta1, beta2)`` for the
        published one), or a fitted regressor or pipeline (its last step's
        ``beta_`` and ``beta_ci_``). A fitted estimator also supplies what it
        was fitted with (:func:`fitted_engine`) for every keyword left at its
        default: a :class:`~sklearn_beta.ScheduleBetaRegressor` its engine
        (chunking, ``max_num_seqs``, ``engine_settings``), client cap, step
        model and ``alpha_`` offsets (``request_delay``,
        ``first_token_offset``, ``last_token_offset``: the client's view it
        was fitted in); a pipeline its transformer's chunking, decode
        convention and step model. A keyword given with another value wins.
        The offsets are not harmless defaults: a closed-loop client sends as
        a last token is recorded, and a send even microseconds after a step
        boundary waits for the next step (measured: the 5 us offsets a
        schedule fit of an engine-side trace found put the 130 % TTFT 52 %
        above a client that reads the engine's clock).
    rate_scale : float, default=1.0
        The new arrival rate over the trace's.
    beta_interval : array-like of shape (n_coefficients, 2), default=None
        Lower and upper limits of each coefficient.
    chunk_size, token_budget, max_num_seqs, num_gpu_blocks, block_size
        The engine (see :func:`~sklearn_beta.replay.replay_trace`;
        :func:`~sklearn_beta.engine_config.estimate_engine_settings` reads
        them from a trace).
    max_in_flight : int, None or "auto", default="auto"
        The client's cap on requests in flight per instance.
    arrival : str or None, default="arrival"
        Column of the sends (arrivals) on prefill rows.
    intended_arrival : str, default="intended_arrival"
        Column of the intended arrivals (closed loop).
    decode_tokens_include_first : bool, default=False
        The trace's decode convention (as in the replay).
    columns : PhaseColumns, mapping or None, default=None
        Column names.
    **engine
        Other keyword arguments of :func:`~sklearn_beta.replay.replay_trace`
        (``long_prefill_token_threshold``, ``request_delay``, ...).

    Returns
    -------
    latencies : DataFrame
        One row per request: ``request_id``, ``instance_id``, ``arrival``
        (the new intended arrival), ``send``, ``ttft`` (first token minus
        send), ``itl`` (decode time per decode step; NaN without decode
        steps), ``e2e`` (last token minus send); with ``beta_interval`` also
        ``ttft_low``, ``ttft_high``, ``itl_low``, ``itl_high``, ``e2e_low``,
        ``e2e_high``. ``attrs["max_in_flight"]`` is the cap used.

    Examples
    --------
    >>> from sklearn_beta.datasets import simulate_trace
    >>> from sklearn_beta.replay import what_if_latencies
    >>> phases = simulate_trace(200, beta=(6e-3, 2.5e-5, 5e-5), chunk_size=None,
    ...                         token_budget=8192, max_num_seqs=256,
    ...                         arrival_rate=5.0, view="engine", random_state=0)
    >>> twice = what_if_latencies(phases, (6e-3, 2.5e-5, 5e-5), rate_scale=2.0,
    ...                           token_budget=8192, max_num_seqs=256)
    >>> sorted(twice.columns)[:4]
    ['arrival', 'e2e', 'instance_id', 'itl']
    """
    cols = PhaseColumns.coerce(columns)
    _check_rate_scale(rate_scale)
    given = dict(
        chunk_size=chunk_size,
        token_budget=token_budget,
        max_num_seqs=max_num_seqs,
        num_gpu_blocks=num_gpu_blocks,
        block_size=block_size,
        max_in_flight=max_in_flight,
        decode_tokens_include_first=decode_tokens_include_first,
    )
    given, engine = _with_fitted(given, engine, fitted_engine(beta))
    values, bounds = _beta_and_interval(beta, beta_interval)
    max_in_flight = _client_cap(
        given.pop("max_in_flight"), phases, arrival, intended_arrival, cols
    )
    frame, arrival = _rescaled(phases, cols, arrival, intended_arrival, rate_scale)
    if max_in_flight is not None and intended_arrival not in frame.columns:
        # Without intended arrivals, the arrivals are what the client meant.
        frame[intended_arrival] = frame[arrival]
    settings = dict(
        **given,
        max_in_flight=max_in_flight,
        arrival=arrival,
        intended_arrival=intended_arrival,
        columns=cols,
        **engine,
    )
    out = _latencies(replay_trace(frame, values, **settings))
    if max_in_flight is not None:
        pre = _prefill_rows(frame, cols)
        intended = pd.Series(
            pd.to_numeric(pre[intended_arrival]).to_numpy(dtype=float),
            index=pre[cols.request_id].to_numpy(),
        )
        out["arrival"] = intended.reindex(out["request_id"]).to_numpy()
    if bounds is not None:
        _add_intervals(out, frame, bounds, settings)
    out.attrs["max_in_flight"] = max_in_flight
    return out


def _check_rate_scale(rate_scale) -> None:
    if isinstance(rate_scale, bool) or not isinstance(rate_scale, Real):
        raise ValueError(f"rate_scale must be a number > 0, got {rate_scale!r}.")
    if not 0 < rate_scale < np.inf:
        raise ValueError(f"rate_scale must be a number > 0, got {rate_scale!r}.")


def _client_cap(max_in_flight, phases, arrival, intended_arrival, cols):
    """The client's in-flight cap: given, None (open loop) or ``"auto"``
    (:func:`infer_max_in_flight`)."""
    message = (
        f"max_in_flight must be a positive integer, None or 'auto', got "
        f"{max_in_flight!r}."
    )
    if isinstance(max_in_flight, str):
        if max_in_flight != "auto":
            raise ValueError(message)
        if arrival is None:
            return None
        return infer_max_in_flight(
            phases, arrival=arrival, intended_arrival=intended_arrival, columns=cols
        )
    if max_in_flight is not None and (
        isinstance(max_in_flight, bool)
        or not isinstance(max_in_flight, Integral)
        or max_in_flight < 1
    ):
        raise ValueError(message)
    return max_in_flight


def _add_intervals(out: pd.DataFrame, frame, bounds: np.ndarray, settings) -> None:
    """Each latency's range over replays at the interval's ends and the betas:
    latencies need not rise with the betas (a slower engine can queue less
    of a closed-loop client's load), so the range, not the two ends."""
    low = _latencies(replay_trace(frame, bounds[:, 0], **settings))
    high = _latencies(replay_trace(frame, bounds[:, 1], **settings))
    for name in ("ttft", "itl", "e2e"):
        runs = np.vstack([low[name], out[name], high[name]])
        out[f"{name}_low"] = runs.min(axis=0)
        out[f"{name}_high"] = runs.max(axis=0)


def _latencies(replayed: pd.DataFrame) -> pd.DataFrame:
    send = replayed["send"].to_numpy(dtype=float)
    first = replayed["prefill_end"].to_numpy(dtype=float)
    last = replayed["decode_end"].to_numpy(dtype=float)
    steps = replayed["decode_steps"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        itl = np.where(steps > 0, (last - first) / steps, np.nan)
    return pd.DataFrame(
        {
            "request_id": replayed["request_id"].to_numpy(),
            "instance_id": replayed["instance_id"].to_numpy(),
            "arrival": replayed["arrival"].to_numpy(dtype=float),
            "send": send,
            "ttft": first - send,
            "itl": itl,
            "e2e": last - send,
        }
    )
