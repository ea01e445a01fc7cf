"""The exposure table: its documented schema, its one writer and its readers.

:class:`~sklearn_beta.PhaseExposureTransformer` writes one row per phase and
the regressors, the scorers and the command line read it back. Every access
goes through this module, by column name; nothing else knows the positions.

Columns, in order (all float64; counts and codes are whole numbers):

==========================  ===================================================
``n_steps``                 ``N_i``, steps the phase ran (docs/method.md).
``prefill_exposure``        ``A_pf_i``, time-integrated prefill tokens.
``decode_exposure``         ``A_dec_i``, time-integrated decode tokens.
``duration``                ``l_i = t_end - t_start``.
``t_start``, ``t_end``      The phase window, shifted so that each instance
                            starts at 0 (after ``time_resolution`` merging).
``is_prefill``              1 for a prefill phase, 0 for a decode.
``missing_prefill_mass``    ``mu_i``: tokens the last prefill chunk lacks.
``step_density``            ``N_i / max(l_i, l_min)``, steps per time unit.
``chunk_size``              ``C``, the same on every row.
``token_budget``            ``B``, the same on every row; 0 for no budget.
``instance_id``             Code 0..k-1 of the phase's engine instance.
==========================  ===================================================

The first three columns are the baseline design ``[N_i, A_pf_i, A_dec_i]``
under the transformer's ``correction_mode`` and ``min_duration``.

A step model other than the published one (``step_model`` of the
transformer) appends ``step_features``, its features as one code, the same
on every row (:func:`step_model_code`), ``request_prompt`` (the prompt
``P_r`` of the phase's request), then one ``<feature>_exposure``
column per feature beyond the published three, in the order of
:data:`~sklearn_beta.core._step_features.STEP_FEATURES`. The published
table keeps its twelve columns.
"""

from __future__ import annotations

import numpy as np

from ._grid import Timeline, build_timeline
from ._step_features import PUBLISHED_FEATURES, STEP_FEATURES
from ._trained_physics import identifiable_map_of

__all__ = [
    "DESIGN_COLUMNS",
    "EXPOSURE_COLUMNS",
    "column",
    "design_columns",
    "fit_design",
    "request_prompts_of",
    "step_design",
    "step_basis_of",
    "step_model_of",
    "with_basis_constants",
    "with_step_features",
    "has_column",
    "phase_windows",
    "read_timeline",
    "write_exposure_table",
]

#: Columns of the exposure table, in order (see the module docstring).
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
    "instance_id",
)
#: The baseline design: the first three columns.
DESIGN_COLUMNS = EXPOSURE_COLUMNS[:3]
_POSITION = {name: i for i, name in enumerate(EXPOSURE_COLUMNS)}


def has_column(table: np.ndarray, name: str) -> bool:
    """Whether ``table`` (possibly a truncated exposure table) holds ``name``."""
    return table.shape[1] > _POSITION[name]


def column(table: np.ndarray, name: str) -> np.ndarray:
    """The column ``name`` of an exposure table, as a view."""
    return table[:, _POSITION[name]]


def design_columns(table: np.ndarray) -> np.ndarray:
    """The baseline design ``[N_i, A_pf_i, A_dec_i]``, shape (n_phases, 3)."""
    return table[:, : len(DESIGN_COLUMNS)]


#: The code column of a table with a step model beyond the published one.
STEP_CODE_COLUMN = "step_features"
_CODE_BASE = len(STEP_FEATURES) + 1


def step_model_code(features) -> float:
    """The features of a step model as one whole number: digit ``p`` in base
    7 is 1 + the index of the ``p``-th feature in ``STEP_FEATURES``."""
    code = 0
    for position, name in enumerate(features):
        code += (STEP_FEATURES.index(name) + 1) * _CODE_BASE**position
    return float(code)


def _features_of_code(code: float) -> tuple[str, ...]:
    features = []
    code = int(code)
    while code:
        code, digit = divmod(code, _CODE_BASE)
        if digit == 0 or len(features) == len(STEP_FEATURES):
            raise IndexError("not a step model code")
        features.append(STEP_FEATURES[digit - 1])
    return tuple(features)


def _extra_features(features) -> list[str]:
    """Features with a column of their own, in canonical order."""
    return [f for f in STEP_FEATURES if f in features and f not in PUBLISHED_FEATURES]


#: The request's prompt ``P_r`` on every row of a step model's table.
PROMPT_COLUMN = "request_prompt"


def extra_column_names(features) -> list[str]:
    """Names of the columns a step model appends to the twelve."""
    extra = [f"{f}_exposure" for f in _extra_features(features)]
    return [STEP_CODE_COLUMN, PROMPT_COLUMN, *extra]


#: Columns a trained-physics table appends after its step features: the
#: :func:`~sklearn_beta.core._trained_physics.basis_constants` of the
#: deployment, the same on every row. Its code column holds the negated code
#: of the six step features.
BASIS_COLUMNS = ("tp_token_us", "tp_attention_us", "tp_kv_us")


def step_model_of(table: np.ndarray) -> tuple[str, ...]:
    """The step model's features of an exposure table.

    A table of twelve columns, or one whose thirteenth column is no step
    model's code (extra columns of the caller's, which the fits ignore as
    they always did), is the published model's. A trained-physics table's
    features are all six (its basis is :func:`step_basis_of`).
    """
    if table.shape[1] <= len(EXPOSURE_COLUMNS) or table.shape[0] == 0:
        return PUBLISHED_FEATURES
    code = table[:, len(EXPOSURE_COLUMNS)]
    first = code[0]
    if not (np.isfinite(first) and first == np.round(first) and first != 0):
        return PUBLISHED_FEATURES
    try:
        features = _features_of_code(abs(first))
    except IndexError:
        return PUBLISHED_FEATURES
    if len(set(features)) != len(features) or np.any(code != first):
        return PUBLISHED_FEATURES
    need = len(EXPOSURE_COLUMNS) + len(extra_column_names(features))
    if first < 0:
        if features != STEP_FEATURES:
            return PUBLISHED_FEATURES
        need += len(BASIS_COLUMNS)
    if table.shape[1] != need:
        return PUBLISHED_FEATURES
    return features


def step_basis_of(table: np.ndarray) -> tuple[float, float, float] | None:
    """The trained-physics basis constants of a table (None for another
    step model)."""
    if step_model_of(table) != STEP_FEATURES or table[0, len(EXPOSURE_COLUMNS)] > 0:
        return None
    return tuple(float(v) for v in table[0, -len(BASIS_COLUMNS) :])


def with_basis_constants(table: np.ndarray, constants) -> np.ndarray:
    """A six-feature table marked as trained-physics, with the basis
    constants appended (:data:`BASIS_COLUMNS`)."""
    n_base = len(EXPOSURE_COLUMNS)
    wide = np.empty((table.shape[0], table.shape[1] + len(BASIS_COLUMNS)), order="F")
    wide[:, : table.shape[1]] = table
    wide[:, n_base] = -step_model_code(STEP_FEATURES)
    wide[:, table.shape[1] :] = np.asarray(constants, dtype=np.float64)
    return wide


def step_design(table: np.ndarray) -> np.ndarray:
    """The design of the table's step model, one column per feature, in the
    model's order; the published one is :func:`design_columns`."""
    features = step_model_of(table)
    if features == PUBLISHED_FEATURES:
        return design_columns(table)
    extra = _extra_features(features)
    position = {f: i for i, f in enumerate(PUBLISHED_FEATURES)}
    offset = len(EXPOSURE_COLUMNS) + 2
    position.update({f: offset + i for i, f in enumerate(extra)})
    return table[:, [position[f] for f in features]]


def fit_design(table: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The design a regressor fits and the basis that made it: the step
    features' design, or for a trained-physics table the identifiable
    trained-physics columns ``step_design @ K.T`` and ``K``."""
    constants = step_basis_of(table)
    if constants is None:
        return step_design(table), None
    basis = identifiable_map_of(*constants)
    return step_design(table) @ basis.T, basis


def request_prompts_of(table: np.ndarray) -> np.ndarray | None:
    """Each phase's request prompt of a step model's table (None: published)."""
    if step_model_of(table) == PUBLISHED_FEATURES:
        return None
    return table[:, len(EXPOSURE_COLUMNS) + 1]


def with_step_features(
    table: np.ndarray, features, exposures: np.ndarray, prompt: np.ndarray | None
) -> np.ndarray:
    """The table with the step model's code, the request prompts (NaN when
    the trace has none) and the extra exposure columns; ``exposures`` holds
    one column per feature, in the model's order."""
    if tuple(features) == PUBLISHED_FEATURES:
        return table
    extra = _extra_features(features)
    n_base = len(EXPOSURE_COLUMNS)
    wide = np.empty((table.shape[0], n_base + 2 + len(extra)), order="F")
    wide[:, :n_base] = table
    wide[:, n_base] = step_model_code(features)
    wide[:, n_base + 1] = np.nan if prompt is None else prompt
    order = list(features)
    for i, name in enumerate(extra):
        wide[:, n_base + 2 + i] = exposures[:, order.index(name)]
    return wide


def phase_windows(
    timeline: Timeline, out: tuple = (None, None)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t_start, t_end, instance_id)`` of every phase, read off the grid.

    The grid's points are the phases' own (merged, per-instance shifted)
    boundaries: these are the windows the exposures were integrated over.
    ``out``: two float arrays (e.g. table columns) to gather the times into.
    """
    tg = timeline.trace_grid
    # mode="clip" lets take write straight into ``out`` (indices are valid).
    t_start = np.take(tg.grid, tg.start_idx, out=out[0], mode="clip")
    t_end = np.take(tg.grid, tg.end_idx, out=out[1], mode="clip")
    return t_start, t_end, tg.grid_instance[tg.start_idx]


def write_exposure_table(
    design: np.ndarray, timeline: Timeline, step_density: np.ndarray
) -> np.ndarray:
    """The exposure table of a trace: its design and what rebuilds its grid.

    The phase windows and instance codes are :func:`phase_windows`.
    """
    # Column-major: every column is written (and later read) contiguously,
    # and a DataFrame takes the array as its one block without a copy. The
    # phase windows are gathered straight into it.
    table = np.empty((timeline.n_phases, len(EXPOSURE_COLUMNS)), order="F")
    table[:, : len(DESIGN_COLUMNS)] = design
    times = (column(table, "t_start"), column(table, "t_end"))
    _, _, instance = phase_windows(timeline, out=times)
    for name, values in (
        ("duration", timeline.duration),
        ("is_prefill", timeline.is_prefill),
        ("missing_prefill_mass", timeline.mu),
        ("step_density", step_density),
        ("chunk_size", float(timeline.chunk_size)),
        ("token_budget", float(timeline.token_budget or 0)),
        ("instance_id", instance),
    ):
        table[:, _POSITION[name]] = values
    return table


def _fail(table, name, bad, what):
    rows = np.flatnonzero(bad)[:5]
    raise ValueError(
        f"Exposure-table column {name!r} {what} (made by "
        f"PhaseExposureTransformer?); {int(np.count_nonzero(bad))} offending "
        f"row(s), first at positions {rows.tolist()}: "
        f"{column(table, name)[rows].tolist()}."
    )


def _check_timeline_columns(table: np.ndarray) -> None:
    """Reject a table that is not an exposure table of one trace."""
    chunk = column(table, "chunk_size")
    if np.any(chunk != chunk[0]):
        _fail(table, "chunk_size", chunk != chunk[0], "must hold one value")
    if chunk[0] < 1 or chunk[0] != np.round(chunk[0]):
        _fail(table, "chunk_size", np.ones_like(chunk, dtype=bool), "must be >= 1")
    for name in ("n_steps", "instance_id"):
        values = column(table, name)
        bad = (values < 0) | (values != np.round(values))
        if bad.any():
            _fail(table, name, bad, "must hold non-negative integers")
    # The transformer numbers instances 0..k-1 (k <= rows); larger codes would
    # size the per-instance arrays of the grid by the code itself.
    bad = column(table, "instance_id") >= table.shape[0]
    if bad.any():
        _fail(table, "instance_id", bad, "must hold codes below the number of rows")
    flag = column(table, "is_prefill")
    if np.any((flag != 0) & (flag != 1)):
        _fail(table, "is_prefill", (flag != 0) & (flag != 1), "must hold 0 or 1")
    bad = column(table, "t_end") <= column(table, "t_start")
    if bad.any():
        _fail(table, "t_end", bad, "must be greater than 't_start'")
    mu = column(table, "missing_prefill_mass")
    bad = (mu < 0) | (mu > chunk[0])
    if bad.any():
        _fail(table, "missing_prefill_mass", bad, "must lie in [0, chunk_size]")
    budget = column(table, "token_budget")
    bad = (budget != budget[0]) | (budget < 0) | (budget != np.round(budget))
    if bad.any():
        _fail(table, "token_budget", bad, "must hold one integer >= 0 (0: none)")


def read_timeline(table: np.ndarray) -> Timeline:
    """Rebuild the trace's grid and pressures from an exposure table."""
    if not has_column(table, EXPOSURE_COLUMNS[-1]):
        raise ValueError(
            f"The exposure table needs its {len(EXPOSURE_COLUMNS)} columns "
            f"{list(EXPOSURE_COLUMNS)} to rebuild the trace; got {table.shape[1]}."
        )
    _check_timeline_columns(table)
    return build_timeline(
        column(table, "t_start"),
        column(table, "t_end"),
        column(table, "instance_id").astype(np.intp),
        column(table, "is_prefill") == 1,
        # Copies, not views: a timeline must not keep the whole table alive.
        column(table, "n_steps").copy(),
        column(table, "missing_prefill_mass").copy(),
        int(column(table, "chunk_size")[0]),
        int(column(table, "token_budget")[0]) or None,
    )
