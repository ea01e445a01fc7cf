"""Time-integrated exposures (docs/method.md, section 5) and their transformer."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from numbers import Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted

from ..core._budget import (
    alone_step_counts,
    budget_group_mass,
)
from ..core._constraints import Number, WholeNumber, check_chunk_size, count
from ..core._corrections import (
    FIXED_CORRECTION_MODES,
    budget_capped_mass,
    fixed_correction_mass,
    missing_prefill_mass,
)
from ..core._engine_model import (
    budget_bound,
    effective_chunk_size,
    exclude_first_decode_token,
    step_counts,
)
from ..core._grid import PhaseIntegrals, Timeline, build_timeline, snap_times
from ..core._memory import large_fit_memory, n_rows
from ..core._model_config import GPU_SPECS, ModelDescription, read_model_description
from ..core._schema import (
    BASIS_COLUMNS,
    EXPOSURE_COLUMNS,
    extra_column_names,
    with_basis_constants,
    with_step_features,
    write_exposure_table,
)
from ..core._step_features import (
    PUBLISHED_FEATURES,
    STEP_FEATURES,
    check_step_model,
    feature_exposures,
    request_prompts,
)
from ..core._trained_physics import basis_constants
from ..core._validation import PhaseArrays, PhaseColumns, check_phases
from ..core._warnings import warn
from ._backend import backend_for

__all__ = ["PhaseExposureTransformer"]


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
    integrals = PhaseIntegrals(tg)
    # Column-major, each column integrated in place.
    design = np.empty((timeline.n_phases, 3), order="F")
    design[:, 0] = timeline.n_steps
    per_segment = np.multiply(timeline.p_pf_full, tg.seg_len)
    prefill = integrals(per_segment, out=design[:, 1])
    prefill *= step_density
    prefill -= integrals(correction)
    np.multiply(timeline.p_dec, tg.seg_len, out=per_segment)
    integrals(per_segment, out=design[:, 2])
    design[:, 2] *= step_density
    return design


def phase_step_counts(arrays: PhaseArrays, chunk_size: int) -> np.ndarray:
    """``N_i`` of every phase of a validated trace (docs/method.md, section 2)."""
    return step_counts(
        arrays.is_prefill,
        arrays.prefill_tokens,
        arrays.decode_tokens,
        chunk_size,
        arrays.n_steps,
    )


#: ``time_resolution="auto"``: this fraction of the trace's mean time per step.
AUTO_RESOLUTION = 1e-3


def resolution_from_totals(total_steps: float, total_duration: float) -> float:
    """The ``"auto"`` time resolution of a trace with these step and time totals."""
    per_step = total_duration / total_steps if total_steps > 0 else 0.0
    return AUTO_RESOLUTION * per_step if np.isfinite(per_step) else 0.0


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
        time_resolution = resolution_from_totals(
            float(n_steps.sum()), float(arrays.duration.sum())
        )
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
    """Step counts, missing masses, grid and pressures of a validated trace.

    Under a budget that caps the steps before any chunk size would
    (``chunk_size >= token_budget``, vLLM V1's default), no prompt takes more
    than ``B`` tokens in a step: the chunk is ``B``, and the missing mass is
    each prefill group's deficit (:mod:`sklearn_beta._budget`).
    """
    chunk_size = effective_chunk_size(chunk_size, token_budget)
    n_steps = phase_step_counts(arrays, chunk_size)
    groups = budget_bound(chunk_size, token_budget)
    # No tokens (N_steps given, no correction wanted): nothing is missing.
    # Prefill groups place their mass once the grid exists.
    if arrays.prefill_tokens is None or groups:
        mu = np.zeros(arrays.n_phases)
    else:
        mu = missing_prefill_mass(
            arrays.is_prefill, arrays.prefill_tokens, n_steps, chunk_size
        )
    timeline = build_timeline(
        arrays.t_start,
        arrays.t_end,
        arrays.instance,
        arrays.is_prefill,
        n_steps,
        mu,
        chunk_size,
        token_budget,
    )
    if groups and arrays.prefill_tokens is not None:
        mu = budget_group_mass(timeline, arrays.prefill_tokens)
        if arrays.n_steps is None:
            n_steps = alone_step_counts(timeline, arrays.prefill_tokens, n_steps)
        timeline = replace(timeline, mu=mu, n_steps=n_steps)
    return timeline


def phase_exposures(
    arrays: PhaseArrays,
    chunk_size: int,
    correction_mode: str,
    min_duration: float,
    token_budget: int | None,
    time_resolution: float | str,
) -> tuple[Timeline, np.ndarray, np.ndarray]:
    """The trace's timeline, its baseline design and phase-local step density.

    The one computation behind the exposure table, the baseline estimator and
    the start of the iterative one.
    """
    chunk_size = effective_chunk_size(chunk_size, token_budget)
    arrays = with_time_resolution(arrays, chunk_size, time_resolution)
    timeline = timeline_from_arrays(arrays, chunk_size, token_budget)
    density = phase_step_density(timeline.n_steps, timeline.duration, min_duration)
    return timeline, baseline_exposures(timeline, density, correction_mode), density


class PhaseExposureTransformer(TransformerMixin, BaseEstimator):
    """Turn a phase table into time-integrated exposures.

    Builds the trace grid of the phases it is given, the full-chunk prefill
    pressure ``C * #prefills active`` and the decode pressure ``#decodes
    active``, and integrates them over each phase window weighted by the
    phase-local step density ``N_i / l_i`` (docs/method.md, section 5). The output
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
        Where the last prefill chunk's missing tokens are taken back in the
        baseline design (docs/method.md, section 4). ``"end"`` is the
        reference's placement. For :class:`IterativeBetaRegressor` this is the
        correction mode of the initialising baseline (docs/method.md, section
        6; its ``init_correction_mode=None``): only where its iterations
        start, since they place the tokens by the regressor's own
        ``correction_mode``, which depends on the betas. Its reference
        objective (``objective="duration"``) starts from it; its step-count
        objective (the default) reaches the same betas from any start, and an
        explicit ``init_correction_mode`` replaces it, so there any value but
        ``"end"`` raises a ``ValueError`` at ``fit``: set the regressor's
        ``correction_mode`` (e.g. ``"none"`` to fit without the correction)
        instead.
    min_duration : float, default=0.0
        Floor ``l_min`` on the duration in the step density
        ``N_i/max(l_i, l_min)`` of the baseline design. The iterative
        estimator takes its step densities from its betas: with its step-count
        objective a floor that changes any phase's density raises a
        ``ValueError`` at ``fit`` (the reference objective starts from it).
    token_budget : int or None, default=None
        Per-step token budget ``B`` of the engine (vLLM's
        ``max_num_batched_tokens``), or None when steps are not capped. A
        step serves the decodes first and fills the rest with prefill chunks,
        so the prefill pressure becomes ``min(C * #prefills, B - p_dec)``; the
        iterative estimator also stops trusting ``ceil(P / C)`` as the step
        count of a prefill that ran through capped steps. With
        ``chunk_size >= token_budget`` (no chunk cap below the budget, vLLM
        V1's default) the budget alone caps the prompts: overlapping prefills
        share every step's budget and only the last step of a group of them
        falls short (docs/method.md, section 4.1); a step model's features
        follow the groups, one prompt served at a time (section 4.2). A
        hyperparameter that :class:`~sklearn.model_selection.GridSearchCV`
        can tune when the engine's budget is unknown.
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
    columns : PhaseColumns, mapping or None, default=None
        Names of the phase table's columns, as
        :meth:`~sklearn_beta.PhaseColumns.coerce` reads them: None for the
        schema's names, or ``{schema name: column}`` for the renamed ones.
        The optional ``n_steps`` (``"N_steps"``) and ``instance_id``
        (``"instance_id"``) columns are used when present; with an instance
        column the grid and pressures are built per instance.
    decode_tokens_include_first : bool, default=False
        Whether ``decode_tokens`` counts the first output token. The last
        prefill step emits that token, so the decode phase (from the end of
        the prefill to the last token) runs one step fewer than the tokens
        counted: with True a decode phase holds ``decode_tokens - 1`` steps.
        False (``D`` steps for ``D`` decode tokens) is the meaning of the
        reference method, of the published sample traces and of
        :func:`~sklearn_beta.datasets.simulate_trace`; many real exports
        (e.g. ``num_generation_tokens``) count all output tokens and need
        True. An ``N_steps`` column overrides both (with a warning when this
        is True). See ``docs/uncertainty.md`` for what the wrong setting
        costs.
    step_model : str or list of str, default="published"
        The step time's features (docs/method.md, section 5.1):
        ``"published"`` is ``(steps, prefill_tokens, decode_tokens)``, the
        table of twelve columns; ``"attention"`` adds ``prefill_attention``
        and ``decode_context``: ``(steps, prefill_tokens, prefill_attention,
        decode_tokens, decode_context)``; a list names features of
        ``("steps", "prefill_tokens", "prefill_attention",
        "decode_tokens", "decode_context", "batch_size")`` in the order of
        the betas. Other models append a ``step_features`` code, the
        ``request_prompt`` of each phase's request and one
        ``<feature>_exposure`` column per feature beyond the published
        three. ``"trained-physics"`` is BLIS's step model
        (``shared/blis/trained-physics.md``) for the deployment that
        ``model_config``, ``gpu`` and ``tensor_parallelism`` describe: the
        table holds the six step features and the deployment's basis
        constants, and the regressors fit the six identifiable
        trained-physics coefficients
        (:data:`~sklearn_beta.core._trained_physics.IDENTIFIABLE_FEATURES`)
        on them. A collection out of memory (Dask) raises under another
        model than the published one.
    model_config : str, path-like or None, default=None
        ``step_model="trained-physics"`` only (required there): the model's
        HuggingFace ``config.json``.
    gpu : str or None, default=None
        ``step_model="trained-physics"`` only (required there): one of
        ``"H100"``, ``"A100-SXM"``, ``"A100-80"``, ``"L40S"``.
    tensor_parallelism : int or None, default=None
        ``step_model="trained-physics"`` only: the tensor-parallel degree
        (None: 1).

    Attributes
    ----------
    n_features_in_ : int
        Number of columns of the phase table seen in ``fit``.
    feature_names_in_ : ndarray of str
        Column names of the phase table seen in ``fit``.
    model_description_ : ModelDescription or None
        The deployment of ``step_model="trained-physics"`` (None otherwise).

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
        "chunk_size": [WholeNumber(1, None, closed="left")],
        "correction_mode": [StrOptions(set(FIXED_CORRECTION_MODES))],
        "min_duration": [Number(Real, 0, None, closed="left")],
        "token_budget": [count(1), None],
        "time_resolution": [
            StrOptions({"auto"}),
            Number(Real, 0, None, closed="left"),
        ],
        "columns": [PhaseColumns, Mapping, None],
        "decode_tokens_include_first": ["boolean"],
        "step_model": [str, list, tuple],
        "model_config": [str, os.PathLike, None],
        "gpu": [StrOptions(set(GPU_SPECS)), None],
        "tensor_parallelism": [count(1), None],
    }

    def __init__(
        self,
        chunk_size=64,
        *,
        correction_mode="end",
        min_duration=0.0,
        token_budget=None,
        time_resolution=0.0,
        columns=None,
        decode_tokens_include_first=False,
        step_model="published",
        model_config=None,
        gpu=None,
        tensor_parallelism=None,
    ):
        self.chunk_size = chunk_size
        self.correction_mode = correction_mode
        self.min_duration = min_duration
        self.token_budget = token_budget
        self.time_resolution = time_resolution
        self.columns = columns
        self.decode_tokens_include_first = decode_tokens_include_first
        self.step_model = step_model
        self.model_config = model_config
        self.gpu = gpu
        self.tensor_parallelism = tensor_parallelism

    def _features(self) -> tuple[str, ...]:
        if self._is_trained_physics():
            return STEP_FEATURES
        return check_step_model(self.step_model)

    def _is_trained_physics(self) -> bool:
        return isinstance(self.step_model, str) and self.step_model == "trained-physics"

    def _model_description(self) -> ModelDescription | None:
        """The trained-physics deployment; raises when its parameters are
        missing, or given to another step model."""
        names = ("model_config", "gpu", "tensor_parallelism")
        if not self._is_trained_physics():
            given = [n for n in names if getattr(self, n) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} describe(s) the trained-physics "
                    f"deployment; step_model={self.step_model!r} does not use "
                    "them. Set step_model='trained-physics' or leave them None."
                )
            return None
        missing = [n for n in names[:2] if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"step_model='trained-physics' needs {' and '.join(missing)}: "
                "the model's HuggingFace config.json and the GPU "
                f"({', '.join(sorted(GPU_SPECS))})."
            )
        return read_model_description(
            self.model_config, gpu=self.gpu, tp=self.tensor_parallelism or 1
        )

    def _columns(self) -> PhaseColumns:
        return PhaseColumns.coerce(self.columns)

    def _phase_arrays(self, X) -> PhaseArrays:
        return validated_phases(self, X)

    def _exposures(
        self, X, arrays: PhaseArrays | None = None
    ) -> tuple[Timeline, np.ndarray, np.ndarray]:
        """Timeline, baseline design and step density of the phases in ``X``
        (``arrays``: ``X`` already validated)."""
        if arrays is None:
            arrays = self._phase_arrays(X)
        return phase_exposures(
            self._decode_convention(arrays),
            check_chunk_size(self.chunk_size),
            self.correction_mode,
            self.min_duration,
            self.token_budget,
            self.time_resolution,
        )

    def _decode_convention(self, arrays: PhaseArrays) -> PhaseArrays:
        """The phases with ``decode_tokens`` counting the decode phase's steps."""
        if not self.decode_tokens_include_first:
            return arrays
        if arrays.n_steps is not None:
            warn(
                "decode_tokens_include_first=True has no effect: the "
                f"{self._columns().n_steps!r} column gives the step counts.",
                UserWarning,  # the caller of transform (set_output wraps it)
            )
            return arrays
        decode = exclude_first_decode_token(arrays.is_prefill, arrays.decode_tokens)
        return replace(arrays, decode_tokens=decode)

    def _need_tokens(self) -> bool:
        # Prefill token counts matter beside N_steps for the correction and
        # for the features that read the prompt lengths.
        features = self._features()
        reads_prompt = {"prefill_attention", "decode_context"} & set(features)
        return self.correction_mode != "none" or bool(reads_prompt)

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
        backend = backend_for(X)
        if backend is not None:  # a collection out of memory, such as Dask's
            self._validate_params()
            self.model_description_ = self._model_description()
            backend.check_phases(X, self._columns(), self._need_tokens())
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
            self.n_features_in_ = len(self.feature_names_in_)
            return self
        self._fit_arrays(X)
        return self

    def _fit_arrays(self, X) -> PhaseArrays:
        """Validate the parameters and the phase table; remember its columns."""
        self._validate_params()
        self.model_description_ = self._model_description()
        arrays = self._phase_arrays(X)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        return arrays

    def fit_transform(self, X, y=None):
        """Fit to the phase table and return its exposure table.

        The same as ``fit(X).transform(X)``, validating the table once.

        Parameters
        ----------
        X : DataFrame of shape (n_phases, n_columns)
            The phase table.
        y : None
            Ignored.

        Returns
        -------
        X_out : DataFrame of shape (n_phases, n_outputs)
            Columns :data:`EXPOSURE_COLUMNS` (and a step model's, see
            ``step_model``), indexed like ``X``.
        """
        if backend_for(X) is not None:
            return self.fit(X).transform(X)
        with large_fit_memory(n_rows(X)):
            return self._exposure_frame(X, self._fit_arrays(X))

    def transform(self, X):
        """Compute the exposure table of the phases in ``X``.

        Parameters
        ----------
        X : DataFrame of shape (n_phases, n_columns)
            The phase table.

        Returns
        -------
        X_out : DataFrame of shape (n_phases, n_outputs)
            Columns :data:`EXPOSURE_COLUMNS` (and a step model's, see
            ``step_model``), indexed like ``X``.
        """
        check_is_fitted(self)
        backend = backend_for(X)
        if backend is not None:
            chunk = effective_chunk_size(self.chunk_size, self.token_budget)
            return backend.transform(
                self, X, self._columns(), self._need_tokens(), chunk
            )
        with large_fit_memory(n_rows(X)):
            return self._exposure_frame(X)

    def _exposure_frame(self, X, arrays: PhaseArrays | None = None) -> pd.DataFrame:
        features = self._features()
        if arrays is None:
            arrays = self._phase_arrays(X)
        timeline, design, density = self._exposures(X, arrays)
        table = write_exposure_table(design, timeline, density)
        if features != PUBLISHED_FEATURES:
            prompt = None
            if arrays.prefill_tokens is not None:
                prompt = request_prompts(
                    arrays.request, arrays.is_prefill, arrays.prefill_tokens
                )
            exposures = feature_exposures(
                timeline, density, design, prompt, features, self.correction_mode
            )
            table = with_step_features(table, features, exposures, prompt)
        if self._is_trained_physics():
            table = with_basis_constants(
                table, basis_constants(self.model_description_)
            )
        del timeline, design, density
        # The fresh column-major table becomes the frame's one block as it is:
        # pandas would otherwise copy (and transpose) a gigabyte at 1e7 phases.
        return pd.DataFrame(
            table, columns=self._output_names(features), index=X.index, copy=False
        )

    def _output_names(self, features) -> list[str]:
        names = list(EXPOSURE_COLUMNS)
        if tuple(features) != PUBLISHED_FEATURES:
            names += extra_column_names(features)
        if self._is_trained_physics():
            names += list(BASIS_COLUMNS)
        return names

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
        return np.asarray(self._output_names(self._features()), dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # The input is a phase table with named, partly non-numeric columns.
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        return tags


def validated_phases(transformer: PhaseExposureTransformer, X) -> PhaseArrays:
    """The phase table ``X`` validated as ``transformer`` reads it: its
    columns, with the prefill tokens where its correction or step features
    need them (for the scorers, which should not call its private members)."""
    return check_phases(
        X, transformer._columns(), need_prefill_tokens=transformer._need_tokens()
    )
