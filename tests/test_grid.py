"""The trace grid, pressures and integrals, checked by hand on the smoke trace."""

from __future__ import annotations

import numpy as np
import pytest

from sklearn_beta.core._corrections import (
    beta_informed_correction_mass,
    fixed_correction_mass,
    missing_prefill_mass,
)
from sklearn_beta.core._engine_model import step_counts
from sklearn_beta.core._grid import build_grid, build_timeline, phase_integrals

# tests/data/smoke.csv by hand: A prefill [0,2) P=96, A decode [2,6) D=4,
# B prefill [1,3) P=64, B decode [3,5) D=2.
T_START = np.array([0.0, 2.0, 1.0, 3.0])
T_END = np.array([2.0, 6.0, 3.0, 5.0])
IS_PREFILL = np.array([True, False, True, False])
PREFILL = np.array([96.0, 0.0, 64.0, 0.0])
DECODE = np.array([0.0, 4.0, 0.0, 2.0])


def _timeline(chunk=64):
    n = step_counts(IS_PREFILL, PREFILL, DECODE, chunk)
    mu = missing_prefill_mass(IS_PREFILL, PREFILL, n, chunk)
    return build_timeline(T_START, T_END, None, IS_PREFILL, n, mu, chunk)


def test_grid_points_and_positions():
    tg = build_grid(T_START, T_END)
    np.testing.assert_array_equal(tg.grid, [0, 1, 2, 3, 5, 6])
    np.testing.assert_array_equal(tg.seg_len, [1, 1, 1, 2, 1])
    np.testing.assert_array_equal(tg.start_idx, [0, 2, 1, 3])
    np.testing.assert_array_equal(tg.end_idx, [2, 5, 3, 4])


def test_pressures():
    tl = _timeline()
    np.testing.assert_array_equal(tl.p_pf_full, [64, 128, 64, 0, 0])
    np.testing.assert_array_equal(tl.p_dec, [0, 0, 1, 2, 1])


def test_step_counts_and_missing_mass():
    n = step_counts(IS_PREFILL, PREFILL, DECODE, 64)
    np.testing.assert_array_equal(n, [2, 4, 1, 2])
    np.testing.assert_array_equal(
        missing_prefill_mass(IS_PREFILL, PREFILL, n, 64), [32, 0, 0, 0]
    )
    observed = np.array([3.0, 4.0, 1.0, 2.0])
    np.testing.assert_array_equal(
        step_counts(IS_PREFILL, PREFILL, DECODE, 64, observed), observed
    )
    # With 3 observed steps for 96 tokens the last step lacks 64 - 0 tokens.
    assert missing_prefill_mass(IS_PREFILL, PREFILL, observed, 64)[0] == 64


def test_integrals_of_pressures():
    tl = _timeline()
    tg = tl.trace_grid
    np.testing.assert_array_equal(
        phase_integrals(tg, tl.p_pf_full * tg.seg_len), [192, 64, 192, 0]
    )
    np.testing.assert_array_equal(
        phase_integrals(tg, tl.p_dec * tg.seg_len), [0, 6, 1, 4]
    )


@pytest.mark.parametrize(
    ("mode", "mass"),
    [
        ("end", [0, 0, 32, 0, 0]),  # the segment starting at A's prefill end
        ("end_inside", [0, 32, 0, 0, 0]),  # A's last segment inside its window
        ("uniform", [16, 16, 0, 0, 0]),
        ("none", [0, 0, 0, 0, 0]),
    ],
)
def test_fixed_corrections(mode, mass):
    tl = _timeline()
    got = fixed_correction_mass(mode, tl.trace_grid, tl.is_prefill, tl.mu)
    np.testing.assert_allclose(got, mass)


def test_end_correction_clamps_to_last_segment():
    # A prefill ending at the trace's last grid point keeps its mass inside.
    tg = build_grid(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    mass = fixed_correction_mass(
        "end", tg, np.array([False, True]), np.array([0.0, 5.0])
    )
    np.testing.assert_array_equal(mass, [0, 0, 5])


def test_beta_informed_uniform_density_is_last_step_window():
    # Constant density: A's 2 steps over [0,2) -> last step is [1,2).
    tl = _timeline()
    density = np.ones(tl.trace_grid.n_segments)
    mass = beta_informed_correction_mass(
        tl.trace_grid, density, tl.is_prefill, tl.n_steps, tl.mu
    )
    np.testing.assert_allclose(mass, [0, 32, 0, 0, 0])


def test_beta_informed_splits_by_steps_taken():
    # Density 3 on [0,1) and 1 on [1,2): L = 4, last step = the last 2 units of
    # steps, i.e. [2/3, 2): 1 step in segment 0 and 1 step in segment 1.
    tl = _timeline()
    density = np.array([3.0, 1.0, 1.0, 1.0, 1.0])
    mass = beta_informed_correction_mass(
        tl.trace_grid, density, tl.is_prefill, tl.n_steps, tl.mu
    )
    np.testing.assert_allclose(mass, [16, 16, 0, 0, 0], rtol=1e-14)
    assert mass.sum() == pytest.approx(32, rel=1e-15)


def test_instances_get_separate_grids():
    inst = np.array([0, 0, 1, 1])
    tg = build_grid(
        np.array([0.0, 1.0, 0.0, 0.5]), np.array([2.0, 3.0, 1.0, 1.5]), inst
    )
    np.testing.assert_array_equal(tg.grid, [0, 1, 2, 3, 0, 0.5, 1, 1.5])
    np.testing.assert_array_equal(tg.seg_len, [1, 1, 1, 0, 0.5, 0.5, 0.5])


def test_single_timestamp_is_an_error():
    with pytest.raises(ValueError, match="at least two distinct timestamps"):
        build_grid(np.array([1.0, 2.0]), np.array([3.0, 2.0]), np.array([0, 1]))
