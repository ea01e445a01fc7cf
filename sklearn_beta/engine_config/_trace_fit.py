"""One fit of a trace with everything needed to report and plot it.

The command-line tool and :mod:`sklearn_beta.plotting` need more than the
betas: the observed and predicted durations of every phase, the pressures
and step density on the grid and the history of the iterative fit. This
module runs the scikit-learn estimators (so the command line gets exactly
their defaults and behaviour) and keeps those by-products.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.pipeline import make_pipeline

from ..core._columns import PhaseColumns
from ..core._corrections import FIXED_CORRECTION_MODES
from ..core._design import DesignAtBetas, design_at_betas
from ..core._fixed_point import HISTORY_COLUMNS
from ..core._schema import column
from ..core._warnings import warn
from ..engine._replay import replay_trace
from ..estimators._baseline import BaselineBetaRegressor
from ..estimators._exposure import PhaseExposureTransformer
from ..estimators._iterative import IterativeBetaRegressor
from ..io._export import request_overheads
from ._replay_calibration import decode_errors

ALGORITHMS = ("baseline", "iterative")
#: Chunk sizes among the candidates of :func:`~sklearn_beta.select_engine_config`.
DEFAULT_CHUNK_CANDIDATES = (16, 32, 64, 128, 256, 512, 1024, 2048)


#: A request the replay admits within this many of its own decode step
#: times after its send waited for the step in flight only, not in a queue:
#: its observed minus replayed first-token time is the client's overhead
#: (:func:`replayed_overheads`).
UNQUEUED_STEPS = 1.5
#: Least share of the requests not queued for the overheads to be read;
#: below it they are 0 (the queueing the replay misses would read as
#: overhead).
MIN_UNQUEUED_SHARE = 0.1


#: The windows tried for a client-side prefill phase, in its request's own
#: decode steps per prompt step (:func:`fit_client_phases`; ``inf``: from
#: the send). The step that ran a prompt outlasts a decode step by the
#: prompt's own cost, by how much depends on the engine: no one window
#: fits every trace. One decode step is too short wherever the prompt costs
#: anything, and is not tried: on a light trace of 400-token prompts
#: costing 8 ms on 6 ms decode steps it gave beta1 = 3.6e10, and
#: ``benchmarks/regimes.py --realism``'s decode phases chose it at 8 req/s,
#: whose fit then forecast 18 req/s 7.2 % short (1.5: 2.8 %). Measured
#: (the decode phases' RMSE chooses): that light trace is best at 1.5
#: (from the send beta1 -80 %); the shipped TraceV2 example (256-token
#: chunks of 7.7 ms) at 3 (1.5: -37 % on a prefill step); the realism mix
#: at 12 req/s at 2 (1.5: beta0 0.096 s, 8.7 times the truth).
PREFILL_WINDOWS = (1.5, 2.0, 3.0, np.inf)
#: The window where none is chosen (the command line's chunking search,
#: which runs before the fit that chooses one).
PREFILL_WINDOW = PREFILL_WINDOWS[0]


#: Pressures and step density on the trace grid at the fitted betas.
PressureProfile = DesignAtBetas


@dataclass(frozen=True)
class TraceFit:
    """Result of :func:`fit_trace`: betas, diagnostics and per-phase detail."""

    beta: np.ndarray
    algo: str
    chunk_size: int
    converged: bool | None
    n_iter: int
    tol: float | None
    stopping: str | None
    history: pd.DataFrame
    diagnostics: dict
    instance_names: list
    model: object = None
    #: The regressor's ``beta_ci_`` (shape (3, 2)) and ``confidence_level``,
    #: None when it has none.
    beta_ci: np.ndarray | None = None
    confidence_level: float | None = None
    #: Per phase (in the table's row order) and per grid segment; None for a
    #: fit on a Dask cluster, whose phases never reach the client.
    observed: np.ndarray | None = None
    predicted: np.ndarray | None = None
    is_prefill: np.ndarray | None = None
    t_start: np.ndarray | None = None
    instance: np.ndarray | None = None
    profile: PressureProfile | None = None


#: Options of :func:`make_model` set on the exposure transformer.
TRANSFORMER_OPTIONS = (
    "min_duration",
    "token_budget",
    "time_resolution",
    "decode_tokens_include_first",
)
#: Options of :func:`make_model` set on the iterative estimator only.
ITERATIVE_OPTIONS = (
    "damping",
    "max_iter",
    "tol",
    "init_correction_mode",
    "stopping",
    "objective",
)


def make_model(
    chunk_size: int | None = None,
    *,
    algo: str = "iterative",
    instance_col: str | None = None,
    verbose: int = 0,
    **options,
):
    """The pipeline ``PhaseExposureTransformer -> regressor`` for these options.

    Parameters
    ----------
    chunk_size : int or None, default=None
        Prefill chunk size; None keeps the transformer's default.
    algo : {"baseline", "iterative"}, default="iterative"
        The regressor.
    instance_col : str or None, default=None
        Column naming the engine instance; None fits one instance.
    verbose : int, default=0
        Verbosity of the iterative estimator.
    **options
        ``correction_mode`` and the names of :data:`TRANSFORMER_OPTIONS` and
        :data:`ITERATIVE_OPTIONS`. A value of None (or a missing key) keeps
        the estimator's default
        (:func:`~sklearn_beta.engine_config._search.fit_option_defaults`).

    Raises
    ------
    ValueError
        For an unknown option, an unknown ``algo``, or an option of the
        iterative estimator given with ``algo="baseline"``.
    """
    given = {k: v for k, v in options.items() if v is not None}
    known = {"correction_mode", *TRANSFORMER_OPTIONS, *ITERATIVE_OPTIONS}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"Unknown fit option(s) {unknown}; known: {sorted(known)}.")
    if algo not in ALGORITHMS:
        raise ValueError(f"algo must be one of {ALGORITHMS}, got {algo!r}.")
    transformer = PhaseExposureTransformer(
        **{k: given[k] for k in TRANSFORMER_OPTIONS if k in given},
        columns={"instance_id": instance_col},
    )
    if chunk_size is not None:
        transformer.set_params(chunk_size=chunk_size)
    iterative_given = {k: given[k] for k in ITERATIVE_OPTIONS if k in given}
    mode = given.get("correction_mode")
    if algo == "baseline":
        if iterative_given:
            raise ValueError(
                f"Option(s) {sorted(iterative_given)} belong to the iterative "
                "estimator (algo='iterative'); the baseline has none of them."
            )
        if mode is not None and mode not in FIXED_CORRECTION_MODES:
            raise ValueError(
                f"correction_mode {mode!r} needs the iterative estimator "
                f"(algo='iterative'); the baseline takes {FIXED_CORRECTION_MODES}."
            )
        if mode is not None:
            transformer.set_params(correction_mode=mode)
        return make_pipeline(transformer, BaselineBetaRegressor())
    regressor = IterativeBetaRegressor(verbose=verbose, **iterative_given)
    if given.get("min_duration", 0) > 0 and regressor.objective == "step_count":
        # The regressor would reject the table at fit time (issue 17).
        raise ValueError(
            "min_duration floors the step density of the baseline design "
            "only; the iterative estimator's step-count objective takes every "
            "step density from its betas and would ignore it. Leave "
            "min_duration at 0, or use algo='baseline' (or "
            "objective='duration', which starts from that design)."
        )
    if mode is not None:
        regressor.set_params(correction_mode=mode)
    # The table's fixed correction is the iterative fit's first pass; an
    # explicit init_correction_mode sets it, None keeps the transformer's.
    if regressor.init_correction_mode is not None:
        transformer.set_params(correction_mode=regressor.init_correction_mode)
    return make_pipeline(transformer, regressor)


def check_fit_options(**options) -> None:
    """Validate :func:`make_model` options against the estimators' constraints.

    Raises the estimators' own ``ValueError``/``TypeError`` (naming the
    parameter) without fitting anything, so that a bad option is reported
    before a long chunk-size search rather than by each of its fits.
    """
    for step in make_model(**options).named_steps.values():
        # scikit-learn's own check of _parameter_constraints, run by fit().
        step._validate_params()


def fit_trace(phases: pd.DataFrame, *, chunk_size: int, **options) -> TraceFit:
    """Fit the betas of a phase table and keep what a report needs.

    Parameters
    ----------
    phases : DataFrame
        The phase table (reference column names).
    chunk_size : int
        Prefill chunk size ``C``.
    **options
        Options of :func:`make_model` (``algo``, ``instance_col``,
        ``verbose``, ``correction_mode`` and the estimator options).

    Returns
    -------
    fit : TraceFit
    """
    model = make_model(chunk_size, **options)
    transformer, regressor = model[0], model[-1]
    table = transformer.fit_transform(phases)
    regressor.fit(table)
    values = table.to_numpy()
    instance_col = options.get("instance_col")
    instance_names = (
        ["all"]
        if instance_col is None
        else pd.unique(phases[instance_col].sort_values()).tolist()
    )
    return TraceFit(
        **fitted_summary(model, options.get("algo", "iterative")),
        instance_names=instance_names,
        observed=column(values, "duration"),
        predicted=regressor.predict(table),
        is_prefill=column(values, "is_prefill") == 1,
        t_start=column(values, "t_start"),
        instance=column(values, "instance_id").astype(np.intp),
        profile=pressure_profile(values, regressor),
    )


def fitted_summary(model, algo: str) -> dict:
    """The :class:`TraceFit` fields of a fitted pipeline that need no phase."""
    regressor = model[-1]
    if algo == "iterative":
        history, converged, n_iter = (
            regressor.history_,
            regressor.converged_,
            regressor.n_iter_,
        )
        tol, stopping = regressor.tol, regressor.stopping
    else:
        history, converged, n_iter = _baseline_history(regressor), None, 0
        tol, stopping = None, None
    return dict(
        beta=regressor.beta_,
        algo=algo,
        chunk_size=int(model[0].chunk_size),
        converged=converged,
        n_iter=n_iter,
        tol=tol,
        stopping=stopping,
        history=history,
        diagnostics=regressor.diagnostics_,
        model=model,
        beta_ci=getattr(regressor, "beta_ci_", None),
        confidence_level=getattr(regressor, "confidence_level", None),
    )


def _baseline_history(regressor: BaselineBetaRegressor) -> pd.DataFrame:
    diag = regressor.diagnostics_
    return pd.DataFrame(
        [[0, *regressor.beta_, np.nan, diag["r2"], diag["rmse_seconds"]]],
        columns=list(HISTORY_COLUMNS),
    )


def pressure_profile(table: np.ndarray, regressor) -> PressureProfile:
    """Pressures and step density of the trace at the fitted betas.

    With the iterative estimator's step-count objective, the density and
    ``p_eff`` it solves on each segment; otherwise ``p_eff`` settled by a
    few lagged passes at fixed betas.
    """
    # The baseline's correction already sits inside its exposures; for the
    # profile, "end_inside" places the same mass where the partial step ran.
    return design_at_betas(
        table,
        regressor.beta_,
        correction_mode=getattr(regressor, "correction_mode", "end_inside"),
        objective=getattr(regressor, "objective", "duration"),
    )


def reemit_warnings(caught) -> None:
    """Issue recorded warnings again, each distinct (category, message) once.

    They then go through the caller's warning filters, which the recording
    bypassed.
    """
    seen = set()
    for record in caught:
        key = (record.category, str(record.message))
        if key not in seen:
            seen.add(key)
            warn(record.message)


def prefill_steps_of_client_phases(
    phases: pd.DataFrame,
    *,
    window_steps: float = PREFILL_WINDOW,
    chunk_size: int | None = None,
    columns=None,
) -> pd.DataFrame:
    """A client-side phase table with each prefill phase cut to the steps
    that ran its prompt.

    A client's prefill phase runs from the send to the first token it sees:
    the delay before the engine's queue, any wait there and for the step in
    flight, then the ``ceil(P / chunk_size)`` steps of the prompt (one
    without a chunk cap) and the first token's reporting. Only those steps
    are engine time: exposed over the whole phase, the prompt's tokens are
    spread over steps that never served them, and the betas take the
    client's time as step time. Each prefill phase here starts
    ``window_steps`` times that many of the request's own decode steps (its
    decode phase over its decode tokens, the step time under a similar
    batch) before its end, and never before its send; a request without a
    decode token keeps its start. :func:`fit_client_phases` chooses the
    window.

    Parameters
    ----------
    phases : DataFrame
        Client-side phase table: every prefill row starts at its send.
    window_steps : float, default=PREFILL_WINDOW
        Decode steps per prompt step; ``inf`` keeps every start.
    chunk_size : int or None, default=None
        Most prompt tokens per request and step; None: no chunk cap.
    columns : PhaseColumns, mapping or None, default=None
        Column names.

    Returns
    -------
    DataFrame
        A copy with the prefill rows' start moved, rows and order as given.
    """
    cols = PhaseColumns.coerce(columns)
    kind = phases[cols.phase_type].astype(str).str.strip().str.lower().to_numpy()
    pre = np.flatnonzero(kind == "prefill")
    dec = np.flatnonzero(kind == "decode")
    keys = [c for c in (cols.instance_id, cols.request_id) if c in phases.columns]
    index = pd.MultiIndex.from_frame(phases[keys].iloc[dec])
    at = index.get_indexer(pd.MultiIndex.from_frame(phases[keys].iloc[pre]))
    start = phases[cols.t_start].to_numpy(dtype=np.float64)
    end = phases[cols.t_end].to_numpy(dtype=np.float64)
    tokens = phases[cols.decode_tokens].to_numpy(dtype=np.float64)
    decode_time = (end - start)[dec][at]
    decode_tokens = np.where(at >= 0, tokens[dec][at], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        step = np.where(decode_tokens > 0, decode_time / decode_tokens, np.nan)
    prompt = phases[cols.prefill_tokens].to_numpy(dtype=np.float64)[pre]
    n_steps = np.ones(pre.size) if chunk_size is None else np.ceil(prompt / chunk_size)
    window = window_steps * np.maximum(n_steps, 1.0) * step
    cut = np.fmax(start[pre], end[pre] - window)
    moved = start.copy()
    moved[pre] = np.where(np.isfinite(cut), cut, start[pre])
    out = phases.copy()
    out[cols.t_start] = moved
    return out


def fit_client_phases(
    phases: pd.DataFrame,
    *,
    chunk_size: int,
    prompt_chunk: int | None = None,
    windows=PREFILL_WINDOWS,
    engine: dict | None = None,
    columns=None,
    **options,
) -> tuple[TraceFit, float, pd.DataFrame]:
    """The phase-exposure fit of a client-side phase table, its prefill
    phases cut to the window whose fit explains the decode phases best.

    Each window of ``windows`` cuts the prefill phases
    (:func:`prefill_steps_of_client_phases`) and is fitted; the decode
    phases, which every window leaves as they are and which hold no client
    time but the reporting offsets' difference, judge the fits: their root
    mean squared error in a replay of the sends on ``engine``
    (:func:`~sklearn_beta.replay.replay_trace`), or without an engine their
    residuals in the fit itself. The fit's own residuals read the decode
    phases against the cut prefill phases, which every window distorts, and
    the step model's misfit swamps them: on ``benchmarks/regimes.py
    --realism``'s mix at 6 req/s they chose 2 steps (ITL forecast -8.7 %)
    over 1.5 (-0.5 %) by 2 %, where the replay's errors differ by half.
    One fit and one replay per window; the fits not chosen warn nothing.

    Parameters
    ----------
    phases : DataFrame
        Client-side phase table: every prefill row starts at its send.
    chunk_size : int
        The fit's prefill chunk size (:func:`fit_trace`).
    prompt_chunk : int or None, default=None
        Most prompt tokens per request and step on the engine; None: one
        step per prompt.
    windows : sequence of float, default=PREFILL_WINDOWS
        Decode steps per prompt step; ``inf``: from the send.
    engine : dict or None, default=None
        Engine settings of :func:`~sklearn_beta.replay.replay_trace`
        (``chunk_size``, ``token_budget``, ``max_num_seqs``, KV cache) to
        replay the sends on; None: the fits judge themselves.
    columns : PhaseColumns, mapping or None, default=None
        Column names.
    **options
        Options of :func:`make_model`.

    Returns
    -------
    fit : TraceFit
        The chosen window's fit.
    window : float
        The chosen window.
    cut : DataFrame
        The phase table it fitted.
    """
    cols = PhaseColumns.coerce(columns)
    kind = phases[cols.phase_type].astype(str).str.strip().str.lower()
    is_decode = (kind == "decode").to_numpy()
    sent = None if engine is None else with_sends(phases, cols)
    best, caught, failure = None, {}, None
    for window in windows:  # a handful of fits, not a loop over phases
        cut = prefill_steps_of_client_phases(
            phases, window_steps=window, chunk_size=prompt_chunk, columns=columns
        )
        with warnings.catch_warnings(record=True) as caught[window]:
            warnings.simplefilter("always")
            try:
                fit = fit_trace(cut, chunk_size=chunk_size, **options)
                if sent is None:
                    residual = (fit.observed - fit.predicted)[is_decode]
                else:
                    residual = _replayed_decode_error(sent, fit.beta, cols, engine)
            except ValueError as exc:
                failure = exc  # e.g. phases too short for the grid
                continue
        loss = float(np.mean(residual**2))
        if np.isfinite(loss) and (best is None or loss < best[0]):
            best = (loss, window, fit, cut)
    if best is None:  # every window failed: the last one's error
        raise failure
    _, window, fit, cut = best
    reemit_warnings(caught[window])
    return fit, window, cut


def with_sends(phases: pd.DataFrame, columns=None) -> pd.DataFrame:
    """A client-side phase table with each request's send (its prefill
    start, before its decode) in ``arrival``."""
    cols = PhaseColumns.coerce(columns)
    keys = [c for c in (cols.instance_id, cols.request_id) if c in phases.columns]
    sends = phases.groupby(keys, sort=False)[cols.t_start].transform("min")
    return phases.assign(arrival=sends.to_numpy(dtype=np.float64))


def _replayed_decode_error(sent, beta, cols, engine: dict) -> np.ndarray:
    """Replayed minus observed decode-phase durations of the sends' replay."""
    replayed = replay_trace(sent, beta, arrival="arrival", columns=cols, **engine)
    return decode_errors(replayed)[0]


@dataclass(frozen=True)
class ReplayedOverheads:
    """Result of :func:`replayed_overheads`: ``alpha`` (seconds, seconds per
    input token, seconds per output token), the requests it was read from
    (``n_used`` of ``n_requests``) and whether the replay queued too many
    for any (``queued``: then ``alpha`` is 0)."""

    alpha: np.ndarray
    n_used: int
    n_requests: int
    queued: bool


def replayed_overheads(
    phases: pd.DataFrame,
    beta,
    *,
    arrival: str = "arrival",
    columns=None,
    **engine,
) -> ReplayedOverheads:
    """The client's request overheads on a client-side trace, at given betas.

    A client-side prefill phase runs from the send to the first token the
    client sees: the request's delay before the engine's queue, its wait
    there, its steps and the reporting of the first token. The trace's
    requests are replayed from their sends with ``beta`` on ``engine``
    (:func:`~sklearn_beta.replay.replay_trace`, no delay, open loop: the
    sends are data), and each request's observed minus replayed first-token
    time is its overhead. Only requests the replay admits within
    ``UNQUEUED_STEPS`` of their own decode steps of the send count: a queue
    the replay gets wrong by a few per cent would otherwise read as
    overhead. Where fewer than ``MIN_UNQUEUED_SHARE`` of them are, ``alpha``
    is 0 and ``queued`` says why. The replay's engine must bound its queue
    as the trace's did: without ``max_num_seqs`` or a KV cache it admits
    every request at once, and a trace's queue reads as overhead (seconds
    of it on a saturated trace). ``alpha0,
    alpha1`` are the non-negative line in the input tokens through those
    overheads (:func:`~sklearn_beta.export.request_overheads`); the betas
    stay as given, and the overheads average over requests, which is what
    a real client's, jittering request by request, allows.

    ``alpha2`` is 0: what the client adds to the last token beyond the first
    one's delay shows only as the observed minus replayed decode time, which
    is as much the betas' decode error as the client's. Measured on
    ``benchmarks/regimes.py --realism``'s client trace at 8 req/s with the
    engine given: taken from the decode residuals (5.4 ms per output token)
    it matched that trace's ITL exactly, but the decode error it carried
    varies with the load: the other loads' ITL missed by -62 to +28 %.

    Parameters
    ----------
    phases : DataFrame
        Client-side phase table with the sends in ``arrival``.
    beta : array-like of shape (3,) or (n_step_features,)
        The engine's betas; under another ``step_model`` (one of
        ``**engine``), one coefficient per feature, in its order.
    arrival : str, default="arrival"
        Column of the sends.
    columns : PhaseColumns, mapping or None, default=None
        Column names.
    **engine
        Engine settings of :func:`~sklearn_beta.replay.replay_trace`
        (``chunk_size``, ``token_budget``, ``max_num_seqs``, KV cache,
        ``step_model``).

    Returns
    -------
    ReplayedOverheads
    """
    if arrival not in phases.columns:
        raise ValueError(
            f"The client's sends are read from the column {arrival!r}, which the "
            f"phase table does not have (columns: {list(phases.columns)[:20]}): "
            "pass arrival= the column of each request's send time."
        )
    replayed = replay_trace(phases, beta, arrival=arrival, columns=columns, **engine)
    first = replayed["prefill_end"].to_numpy(dtype=np.float64)
    last = replayed["decode_end"].to_numpy(dtype=np.float64)
    seen_first = replayed["observed_prefill_end"].to_numpy(dtype=np.float64)
    steps = replayed["decode_steps"].to_numpy(dtype=np.float64)
    waited = (replayed["admitted"] - replayed["arrival"]).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        step = np.where(steps > 0, (last - first) / steps, np.nan)
    unqueued = waited <= UNQUEUED_STEPS * step  # NaN (no decode step): False
    n = first.shape[0]
    if np.count_nonzero(unqueued) < max(MIN_UNQUEUED_SHARE * n, 1):
        return ReplayedOverheads(np.zeros(3), 0, n, True)
    alpha = request_overheads(
        (seen_first - first)[unqueued],
        replayed["prefill_tokens"].to_numpy(dtype=np.float64)[unqueued],
        np.zeros(0),
        np.zeros(0),
    )
    return ReplayedOverheads(alpha, int(np.count_nonzero(unqueued)), n, False)
