"""Time-integrated exposures (METHOD.md section 5) and the exposure transformer."""

from __future__ import annotations

from dataclasses import replace
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._corrections import (
    FIXED_CORRECTION_MODES,
    budget_capped_mass,
    fixed_correction_mass,
    missing_prefill_mass,
    step_counts,
)
from ._grid import Timeline, build_timeline, phase_integrals, snap_times
from ._validation import PhaseArrays, PhaseColumns, check_chunk_size, check_phases
from .fleet import is_dask_collection

#: Columns of the exposure table, in order. The first three are the baseline
#: design ``[N_i, A_pf_i, A_dec_i]``; the rest let the iterative estimator
#: rebuild the trace's grid and re-weight it.
EXPOSURE_COLUMNS = (
    "n_steps",
    "prefill_exposure",
    "decode_exposure",
    "duration",
    "t_start",
    "t_end",
    "is_prefill",
    "missing_prefill_mass",
    "step_density",
    "chunk_size",
    "token_budget",
    "instance",
)
_COL = {name: i for i, name in enumerate(EXPOSURE_COLUMNS)}


def phase_step_density(
    n_steps: np.ndarray, duration: np.ndarray, min_duration: float = 0.0
) -> np.ndarray:
    """Phase-local step density ``lam_i = N_i / max(l_i, l_min)`` (steps/s)."""
    return n_steps / np.maximum(duration, min_duration)


def baseline_exposures(
    timeline: Timeline, step_density: np.ndarray, correction_mode: str
) -> np.ndarray:
    """The baseline design ``[N_i, A_pf_i, A_dec_i]``, shape (n_phases, 3).

    ``A_pf_i = lam_i * int_i p_pf_full dt - int_i c dt`` and
    ``A_dec_i = lam_i * int_i p_dec dt``. The correction integral is already
    in tokens, so it is not multiplied by ``lam_i``.
    """
    tg = timeline.trace_grid
    correction = budget_capped_mass(
        fixed_correction_mass(correction_mode, tg, timeline.is_prefill, timeline.mu),
        timeline,
    )
    prefill = step_density * phase_integrals(tg, timeline.p_pf_full * tg.seg_len)
    prefill -= phase_integrals(tg, correction)
    decode = step_density * phase_integrals(tg, timeline.p_dec * tg.seg_len)
    return np.column_stack([timeline.n_steps, prefill, decode])


def phase_step_counts(arrays: PhaseArrays, chunk_size: int) -> np.ndarray:
    """``N_i`` of every phase of a validated trace (METHOD.md section 2)."""
    return step_counts(
        arrays.is_prefill,
        arrays.prefill_tokens,
        arrays.decode_tokens,
        chunk_size,
        arrays.n_steps,
    )


#: ``time_resolution="auto"``: this fraction of the trace's mean time per step.
AUTO_RESOLUTION = 1e-3


def with_time_resolution(
    arrays: PhaseArrays, chunk_size: int, time_resolution: float | str
) -> PhaseArrays:
    """The phases with boundaries closer than ``time_resolution`` merged.

    ``"auto"`` is :data:`AUTO_RESOLUTION` times the mean time per step,
    ``sum(l_i) / sum(N_i)``: two boundaries of one engine are either one
    instant or at least a step apart, and float jitter in logged times is
    orders of magnitude below a step. 0 keeps every distinct time (the
    reference's grid).
    """
    if time_resolution == "auto":
        n_steps = phase_step_counts(arrays, chunk_size)
        total = float(n_steps.sum())
        per_step = float(arrays.duration.sum()) / total if total > 0 else 0.0
        time_resolution = AUTO_RESOLUTION * per_step if np.isfinite(per_step) else 0.0
    if time_resolution <= 0:
        return arrays
    t_start, t_end = snap_times(
        arrays.t_start, arrays.t_end, arrays.instance, float(time_resolution)
    )
    collapsed = t_end <= t_start
    if collapsed.any():
        rows = np.flatnonzero(collapsed)[:5]
        raise ValueError(
            f"time_resolution={time_resolution:g} merges the start and end of "
            f"{int(collapsed.sum())} phase(s) (first at positions {rows.tolist()}, "
            f"durations {arrays.duration[rows].tolist()}); pass a smaller "
            "time_resolution, or 0 to keep every distinct time."
        )
    return replace(arrays, t_start=t_start, t_end=t_end)


def timeline_from_arrays(
    arrays: PhaseArrays, chunk_size: int, token_budget: int | None = None
) -> Timeline:
    """Step counts, missing masses, grid and pressures of a validated trace."""
    n_steps = phase_step_counts(arrays, chunk_size)
    mu = missing_prefill_mass(
        arrays.is_prefill, arrays.prefill_tokens, n_steps, chunk_size
    )
    return build_timeline(
        arrays.t_start,
        arrays.t_end,
        arrays.instance,
        arrays.is_prefill,
        n_steps,
        mu,
        chunk_size,
        token_budget,
    )


def _check_timeline_columns(table: np.ndarray) -> None:
    """Reject a table that is not an exposure table of one trace."""

    def fail(name, bad, what):
        rows = np.flatnonzero(bad)[:5]
        raise ValueError(
            f"Exposure-table column {name!r} {what} (made by "
            f"PhaseExposureTransformer?); {int(np.count_nonzero(bad))} offending "
            f"row(s), first at positions {rows.tolist()}: "
            f"{table[rows, _COL[name]].tolist()}."
        )

    chunk = table[:, _COL["chunk_size"]]
    if np.any(chunk != chunk[0]) or chunk[0] < 1 or chunk[0] != np.round(chunk[0]):
        fail(
            "chunk_size",
            chunk != chunk[0]
            if np.any(chunk != chunk[0])
            else np.ones_like(chunk, dtype=bool),
            "must hold one positive integer",
        )
    for name in ("n_steps", "instance"):
        col = table[:, _COL[name]]
        bad = (col < 0) | (col != np.round(col))
        if bad.any():
            fail(name, bad, "must hold non-negative integers")
    # The transformer numbers instances 0..k-1 (k <= rows); larger codes would
    # size the per-instance arrays of the grid by the code itself.
    bad = table[:, _COL["instance"]] >= table.shape[0]
    if bad.any():
        fail("instance", bad, "must hold instance codes below the number of rows")
    flag = table[:, _COL["is_prefill"]]
    if np.any((flag != 0) & (flag != 1)):
        fail("is_prefill", (flag != 0) & (flag != 1), "must hold 0 or 1")
    bad = table[:, _COL["t_end"]] <= table[:, _COL["t_start"]]
    if bad.any():
        fail("t_end", bad, "must be greater than 't_start'")
    mu = table[:, _COL["missing_prefill_mass"]]
    bad = (mu < 0) | (mu > chunk[0])
    if bad.any():
        fail("missing_prefill_mass", bad, "must lie in [0, chunk_size]")
    budget = table[:, _COL["token_budget"]]
    bad = (budget != budget[0]) | (budget < 0) | (budget != np.round(budget))
    if bad.any():
        fail("token_budget", bad, "must hold one non-negative integer (0: none)")


def timeline_from_exposures(table: np.ndarray) -> Timeline:
    """Rebuild the :class:`Timeline` from an exposure table's columns."""
    _check_timeline_columns(table)
    # Copies, not views: a timeline must not keep the whole table alive.
    return build_timeline(
        table[:, _COL["t_start"]],
        table[:, _COL["t_end"]],
        table[:, _COL["instance"]].astype(np.intp),
        table[:, _COL["is_prefill"]] == 1,
        np.ascontiguousarray(table[:, _COL["n_steps"]]),
        np.ascontiguousarray(table[:, _COL["missing_prefill_mass"]]),
        int(table[0, _COL["chunk_size"]]),
        int(table[0, _COL["token_budget"]]) or None,
    )


def exposure_table(
    arrays: PhaseArrays,
    chunk_size: int,
    correction_mode: str = "end",
    min_duration: float = 0.0,
    token_budget: int | None = None,
    time_resolution: float | str = 0.0,
) -> np.ndarray:
    """Compute the exposure table (see :data:`EXPOSURE_COLUMNS`) as an array."""
    arrays = with_time_resolution(arrays, chunk_size, time_resolution)
    timeline = timeline_from_arrays(arrays, chunk_size, token_budget)
    density = phase_step_density(timeline.n_steps, timeline.duration, min_duration)
    design = baseline_exposures(timeline, density, correction_mode)
    return np.column_stack(
        [
            design,
            timeline.duration,
            arrays.t_start,
            arrays.t_end,
            arrays.is_prefill.astype(np.float64),
            timeline.mu,
            density,
            np.full(arrays.n_phases, float(chunk_size)),
            np.full(arrays.n_phases, float(token_budget or 0)),
            arrays.instance.astype(np.float64),
        ]
    )


class PhaseExposureTransformer(TransformerMixin, BaseEstimator):
    """Turn a phase table into time-integrated exposures.

    Builds the trace grid of the phases it is given, the full-chunk prefill
    pressure ``C * #prefills active`` and the decode pressure ``#decodes
    active``, and integrates them over each phase window weighted by the
    phase-local step density ``N_i / l_i`` (METHOD.md section 5). The output
    has one row per phase: the baseline design ``[N_i, A_pf_i, A_dec_i]``
    followed by what the iterative estimator needs to re-weight the trace.

    Exposures of a phase depend on every other phase overlapping it in time,
    so ``transform`` works on the whole table it is given; see
    :mod:`sklearn_beta.model_selection` for cross-validation that respects
    this.

    Parameters
    ----------
    chunk_size : int, default=64
        Prefill chunk size ``C`` in tokens.
    correction_mode : {"end", "end_inside", "uniform", "none"}, default="end"
        Where the last prefill chunk's missing tokens are taken back
        (METHOD.md section 4). ``"end"`` is the reference's placement.
    min_duration : float, default=0.0
        Floor ``l_min`` on the duration in the step density ``N_i/max(l_i, l_min)``.
    token_budget : int or None, default=None
        Per-step token budget ``B`` of the engine (vLLM's
        ``max_num_batched_tokens``), or None when steps are not capped. A
        step serves the decodes first and fills the rest with prefill chunks,
        so the prefill pressure becomes ``min(C * #prefills, B - p_dec)``; the
        iterative estimator also stops trusting ``ceil(P / C)`` as the step
        count of a prefill that ran through capped steps. A hyperparameter
        that :class:`~sklearn.model_selection.GridSearchCV` can tune when the
        engine's budget is unknown.
    time_resolution : "auto" or float, default=0.0
        Phase boundaries of an instance closer than this (in the trace's
        time unit) are one instant. Logged times of events of one engine step
        often differ by float rounding (a decode's end rebuilt as ``arrival +
        queue + prefill + decode`` against the next prefill's ``arrival +
        queue``), leaving slivers of 1e-15 s that hold no step; without
        merging, a partial-chunk correction can land on one and bias
        ``beta1`` by percents (measured: -1.9 % on ``data/otel/spans.jsonl``
        before its reader snapped the times). ``0`` keeps every distinct
        time, as the reference does; ``"auto"`` is 1e-3 of the trace's mean
        time per step, which depends on the durations and so should not be
        used inside cross-validation that must not see test durations. The
        OTLP reader and the command line already merge within 1 us.
    request_id_col, phase_type_col, t_start_col, t_end_col, prefill_tokens_col, \
decode_tokens_col : str
        Column names of the phase table.
    n_steps_col : str or None, default="N_steps"
        Optional column of observed step counts; used when present.
    instance_col : str or None, default=None
        Optional column naming the engine instance of each phase; the grid
        and pressures are then built per instance.

    Attributes
    ----------
    n_features_in_ : int
        Number of columns of the phase table seen in ``fit``.
    feature_names_in_ : ndarray of str
        Column names of the phase table seen in ``fit``.

    See Also
    --------
    BaselineBetaRegressor : NNLS on the exposures.
    IterativeBetaRegressor : Step-density re-weighted NNLS.

    Examples
    --------
    >>> from sklearn_beta import PhaseExposureTransformer
    >>> from sklearn_beta.datasets import load_sample_trace
    >>> phases = load_sample_trace()
    >>> exposures = PhaseExposureTransformer(chunk_size=64).fit_transform(phases)
    >>> list(exposures.columns[:3])
    ['n_steps', 'prefill_exposure', 'decode_exposure']
    """

    _parameter_constraints: dict = {
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
        "correction_mode": [StrOptions(set(FIXED_CORRECTION_MODES))],
        "min_duration": [Interval(Real, 0, None, closed="left")],
        "token_budget": [Interval(Integral, 1, None, closed="left"), None],
        "time_resolution": [
            StrOptions({"auto"}),
            Interval(Real, 0, None, closed="left"),
        ],
        "request_id_col": [str],
        "phase_type_col": [str],
        "t_start_col": [str],
        "t_end_col": [str],
        "prefill_tokens_col": [str],
        "decode_tokens_col": [str],
        "n_steps_col": [str, None],
        "instance_col": [str, None],
    }

    def __init__(
        self,
        chunk_size=64,
        *,
        correction_mode="end",
        min_duration=0.0,
        token_budget=None,
        time_resolution=0.0,
        request_id_col="request_id",
        phase_type_col="phase_type",
        t_start_col="t_start",
        t_end_col="t_end",
        prefill_tokens_col="prefill_tokens",
        decode_tokens_col="decode_tokens",
        n_steps_col="N_steps",
        instance_col=None,
    ):
        self.chunk_size = chunk_size
        self.correction_mode = correction_mode
        self.min_duration = min_duration
        self.token_budget = token_budget
        self.time_resolution = time_resolution
        self.request_id_col = request_id_col
        self.phase_type_col = phase_type_col
        self.t_start_col = t_start_col
        self.t_end_col = t_end_col
        self.prefill_tokens_col = prefill_tokens_col
        self.decode_tokens_col = decode_tokens_col
        self.n_steps_col = n_steps_col
        self.instance_col = instance_col

    def _columns(self) -> PhaseColumns:
        return PhaseColumns(
            request_id=self.request_id_col,
            phase_type=self.phase_type_col,
            t_start=self.t_start_col,
            t_end=self.t_end_col,
            prefill_tokens=self.prefill_tokens_col,
            decode_tokens=self.decode_tokens_col,
            n_steps=self.n_steps_col,
            instance=self.instance_col,
        )

    def fit(self, X, y=None):
        """Validate the phase table and remember its columns.

        Parameters
        ----------
        X : DataFrame of shape (n_phases, n_columns)
            The phase table.
        y : None
            Ignored.

        Returns
        -------
        self : object
            Fitted transformer.
        """
        if is_dask_collection(X):  # fleet scale: see sklearn_beta._dask_fit
            from ._dask_fit import check_phase_partitions

            check_phase_partitions(self, X)
            return self
        self._validate_params()
        check_phases(X, self._columns())
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        return self

    def transform(self, X):
        """Compute the exposure table of the phases in ``X``.

        Parameters
        ----------
        X : DataFrame of shape (n_phases, n_columns)
            The phase table.

        Returns
        -------
        X_out : DataFrame of shape (n_phases, 12)
            Columns :data:`EXPOSURE_COLUMNS`, indexed like ``X``.
        """
        check_is_fitted(self)
        if is_dask_collection(X):
            from ._dask_fit import transform_partitions

            return transform_partitions(self, X)
        arrays = check_phases(X, self._columns())
        table = exposure_table(
            arrays,
            check_chunk_size(self.chunk_size),
            self.correction_mode,
            self.min_duration,
            self.token_budget,
            self.time_resolution,
        )
        return pd.DataFrame(table, columns=list(EXPOSURE_COLUMNS), index=X.index)

    def get_feature_names_out(self, input_features=None):
        """Names of the exposure table's columns.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Ignored; the output columns do not depend on the input's names.

        Returns
        -------
        feature_names_out : ndarray of str
        """
        check_is_fitted(self)
        return np.asarray(EXPOSURE_COLUMNS, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # The input is a phase table with named, partly non-numeric columns.
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        return tags
