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
"""

from __future__ import annotations

import numpy as np

from ._grid import Timeline, build_timeline

__all__ = [
    "DESIGN_COLUMNS",
    "EXPOSURE_COLUMNS",
    "column",
    "design_columns",
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
