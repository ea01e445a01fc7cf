"""The fit's time unit: a power of two near the trace's mean time per step.

A power of two divides float64 times exactly, so a fit in that unit sees the
very same trace, only in units where a step lasts about 1: the floors on step
times are then in units of the trace's own steps and the betas scale exactly
with the time unit.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ._grid import Timeline


def time_scale(n_steps: np.ndarray, duration: np.ndarray) -> float:
    """The power of two nearest the mean time per step, ``sum(l) / sum(N)``."""
    return unit_from_totals(
        float(np.sum(n_steps)), float(np.sum(duration)), duration.shape[0]
    )


def unit_from_totals(steps: float, duration: float, n_phases: int) -> float:
    """:func:`time_scale` from the sums of ``N_i`` and ``l_i`` over the phases.

    Without steps, the mean duration stands for the time per step.
    """
    per_step = duration / (steps if steps > 0 else max(n_phases, 1))
    if not np.isfinite(per_step) or per_step <= 0:
        return 1.0
    return float(2.0 ** np.round(np.log2(per_step)))


def rescaled_timeline(timeline: Timeline, unit: float) -> Timeline:
    """The timeline with its times (grid, segment lengths, durations) / ``unit``.

    Its ``time_unit`` records the change, so that times reported to the user
    can be put back in the trace's unit.
    """
    if unit == 1.0:
        return timeline
    tg = timeline.trace_grid
    grid = replace(tg, grid=tg.grid / unit, seg_len=tg.seg_len / unit)
    return replace(
        timeline,
        trace_grid=grid,
        duration=timeline.duration / unit,
        time_unit=timeline.time_unit * unit,
    )
