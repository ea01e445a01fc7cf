"""The design of a trace at fixed betas: what predictions, plots and reports use.

At given betas every grid segment holds a step density, hence an effective
prefill pressure once the partial chunks are taken back, and every phase a
design row ``[N_i, N_i pbar_pf_i, N_i pbar_dec_i]`` whose product with the
betas is its predicted duration (docs/method.md, section 6).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ._constraints import check_option
from ._corrections import CORRECTION_MODES, static_correction_mass
from ._fixed_point import settled_design, step_density
from ._schema import column, read_timeline, step_model_of
from ._step_count import count_state
from ._step_features import PUBLISHED_FEATURES
from ._units import rescaled_timeline, time_scale

__all__ = ["DesignAtBetas", "design_at_betas"]

#: What the iterative estimator fits the betas to (docs/method.md, section 6).
OBJECTIVES = ("duration", "step_count")


class DesignAtBetas(NamedTuple):
    """A trace seen at fixed betas (:func:`design_at_betas`).

    Per phase, ``design`` of shape (n_phases, 3): ``[N_i, N_i pbar_pf_i,
    N_i pbar_dec_i]``, pressures averaged over the steps inside the phase, so
    that ``design @ beta`` are the predicted durations. Per grid point:
    ``grid`` (time, each instance starting at 0) and ``grid_instance``; per
    segment (one fewer): the full-chunk prefill pressure ``p_pf_full``, the
    effective one ``p_eff`` (tokens per step after the partial-chunk
    correction), the decode pressure ``p_dec`` and ``step_density`` (steps per
    time unit, ``1 / (b0 + b1 p_eff + b2 p_dec)``).
    """

    design: np.ndarray
    grid: np.ndarray
    grid_instance: np.ndarray
    p_pf_full: np.ndarray
    p_eff: np.ndarray
    p_dec: np.ndarray
    step_density: np.ndarray


def design_at_betas(
    exposures: ArrayLike,
    beta: ArrayLike,
    *,
    correction_mode: str,
    objective: str,
    n_passes: int = 3,
) -> DesignAtBetas:
    """The design, pressures and step density of a trace at fixed betas.

    Parameters
    ----------
    exposures : DataFrame or ndarray of shape (n_phases, 12)
        Exposure table of the trace (:class:`PhaseExposureTransformer`).
    beta : array-like of shape (3,)
        ``(beta0, beta1, beta2)`` in the trace's time unit.
    correction_mode : {"end_inside", "beta_informed", "end", "uniform", "none"}
        Placement of the last prefill chunk's missing tokens (a fitted
        :class:`IterativeBetaRegressor`'s ``correction_mode``).
    objective : {"step_count", "duration"}
        ``"step_count"`` solves the density and ``p_eff`` together on each
        segment; ``"duration"`` settles ``p_eff`` by ``n_passes`` lagged
        passes, as the reference's fixed point sees a trace.
    n_passes : int, default=3
        Lagged passes of the duration view.

    Returns
    -------
    result : DesignAtBetas

    Examples
    --------
    >>> from sklearn_beta import PhaseExposureTransformer, design_at_betas
    >>> from sklearn_beta.datasets import load_sample_trace
    >>> table = PhaseExposureTransformer(chunk_size=64).fit_transform(
    ...     load_sample_trace())
    >>> view = design_at_betas(table, [5e-3, 2e-5, 1e-4],
    ...                        correction_mode="end_inside", objective="step_count")
    >>> view.design.shape == (len(table), 3)
    True
    """
    check_option(correction_mode, CORRECTION_MODES, "correction_mode")
    check_option(objective, OBJECTIVES, "objective")
    table = np.asarray(exposures, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    features = step_model_of(table)
    if features != PUBLISHED_FEATURES:
        raise ValueError(
            f"design_at_betas reads the published step model's table; this one "
            f"has step model {list(features)}. Use a fitted "
            "IterativeBetaRegressor(objective='duration').predict on it, or "
            "PhaseExposureTransformer(step_model='published')."
        )
    timeline = read_timeline(table)
    # Floors on step times hold in units of the trace's own steps.
    unit = time_scale(column(table, "n_steps"), column(table, "duration"))
    scaled = rescaled_timeline(timeline, unit)
    beta = beta / unit
    tg = scaled.trace_grid
    fixed = static_correction_mass(correction_mode, tg, scaled.is_prefill, scaled.mu)
    if objective == "step_count":
        state = count_state(
            scaled, beta, correction_mode, fixed, np.ones(scaled.n_phases)
        )
        design, n = state.design, state.n
        density = np.divide(n, tg.seg_len, out=np.zeros_like(n), where=tg.seg_len > 0)
        p_eff = np.divide(state.prefill_mass, n, out=np.zeros_like(n), where=n > 0)
    else:
        design, p_eff = settled_design(scaled, beta, correction_mode, fixed, n_passes)
        density = step_density(beta, p_eff, scaled.p_dec)
    return DesignAtBetas(
        design=design,
        grid=timeline.trace_grid.grid,
        grid_instance=tg.grid_instance,
        p_pf_full=timeline.p_pf_full,
        p_eff=p_eff,
        p_dec=timeline.p_dec,
        step_density=density / unit,
    )
