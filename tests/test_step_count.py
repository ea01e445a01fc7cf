"""Token-budget pressure, capped corrections and solved step counts, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from sklearn_beta.core._corrections import (
    budget_capped_mass,
    counted_phases,
    fixed_correction_mass,
    missing_prefill_mass,
)
from sklearn_beta.core._engine_model import step_counts
from sklearn_beta.core._grid import budgeted_prefill_pressure, build_timeline
from sklearn_beta.core._step_count import solved_step_counts

# tests/data/smoke.csv by hand: A prefill [0,2) P=96, A decode [2,6) D=4,
# B prefill [1,3) P=64, B decode [3,5) D=2. Segments [0,1) [1,2) [2,3) [3,5)
# [5,6): p_pf_full (C=64) = 64, 128, 64, 0, 0 and p_dec = 0, 0, 1, 2, 1.
T_START = np.array([0.0, 2.0, 1.0, 3.0])
T_END = np.array([2.0, 6.0, 3.0, 5.0])
IS_PREFILL = np.array([True, False, True, False])
PREFILL = np.array([96.0, 0.0, 64.0, 0.0])
DECODE = np.array([0.0, 4.0, 0.0, 2.0])


def _timeline(chunk=64, token_budget=None):
    n = step_counts(IS_PREFILL, PREFILL, DECODE, chunk)
    mu = missing_prefill_mass(IS_PREFILL, PREFILL, n, chunk)
    return build_timeline(
        T_START, T_END, None, IS_PREFILL, n, mu, chunk, token_budget=token_budget
    )


def test_budgeted_prefill_pressure():
    p_full = np.array([0.0, 512.0, 1024.0, 1536.0])
    p_dec = np.array([10.0, 10.0, 1000.0, 2000.0])
    np.testing.assert_array_equal(
        budgeted_prefill_pressure(p_full, p_dec, 1024), [0, 512, 24, 0]
    )
    assert budgeted_prefill_pressure(p_full, p_dec, None) is p_full
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="token_budget"):
            budgeted_prefill_pressure(p_full, p_dec, bad)


def test_timeline_under_a_budget():
    # Budget 100: segment [1,2) holds two prefills (128 tokens) and no decode,
    # capped to 100; [2,3) holds one prefill and one decode: 64 <= 99.
    tl = _timeline(token_budget=100)
    np.testing.assert_array_equal(tl.p_pf_full, [64, 100, 64, 0, 0])
    np.testing.assert_array_equal(tl.budget_excess, [0, 28, 0, 0, 0])
    # Both prefills ran through the capped segment: their counts are unknown.
    np.testing.assert_array_equal(counted_phases(tl), [False, True, False, True])
    assert _timeline().budget_excess is None
    assert counted_phases(_timeline()).all()


def test_budget_capped_mass():
    tl = _timeline(token_budget=100)
    # A's missing 32 tokens sit on its last segment [1,2), where the cap
    # already removed 28 of the full-chunk tokens: 4 remain to take back.
    mass = fixed_correction_mass("end_inside", tl.trace_grid, IS_PREFILL, tl.mu)
    np.testing.assert_array_equal(mass, [0, 32, 0, 0, 0])
    np.testing.assert_array_equal(budget_capped_mass(mass, tl), [0, 4, 0, 0, 0])
    assert budget_capped_mass(mass, _timeline()) is mass


def test_solved_step_counts_by_hand():
    tl = _timeline()
    beta = np.array([0.5, 0.01, 0.2])
    mass = fixed_correction_mass("end_inside", tl.trace_grid, IS_PREFILL, tl.mu)
    n, prefill_mass, jac = solved_step_counts(tl, beta, mass)
    # s = n (b0 + b1 P + b2 p_dec) - b1 m on each segment.
    s = np.array([1.0, 1.0, 1.0, 2.0, 1.0])
    full = 0.5 + 0.01 * np.array([64, 128, 64, 0, 0]) + 0.2 * np.array([0, 0, 1, 2, 1])
    expected = (s + 0.01 * np.array([0, 32, 0, 0, 0])) / full
    np.testing.assert_allclose(n, expected)
    np.testing.assert_allclose(
        prefill_mass, expected * [64, 128, 64, 0, 0] - [0, 32, 0, 0, 0]
    )
    np.testing.assert_allclose(n * full - 0.01 * mass, s)
    # The Jacobian against central differences.
    for k in range(3):
        h = 1e-7 * beta[k]
        up = solved_step_counts(tl, beta + h * np.eye(3)[k], mass)[0]
        down = solved_step_counts(tl, beta - h * np.eye(3)[k], mass)[0]
        np.testing.assert_allclose(jac[:, k], (up - down) / (2 * h), rtol=1e-6)


def test_solved_step_counts_when_the_correction_empties_the_chunks():
    # A correction larger than the full chunks of a segment: no prefill
    # tokens are left there, and the steps cost b0 + b2 p_dec.
    tl = _timeline()
    beta = np.array([0.5, 0.01, 0.2])
    mass = np.array([0.0, 1000.0, 0.0, 0.0, 0.0])
    n, prefill_mass, jac = solved_step_counts(tl, beta, mass)
    assert n[1] == pytest.approx(1.0 / 0.5)
    assert prefill_mass[1] == 0.0
    np.testing.assert_allclose(jac[1], [-1.0 / 0.5**2 * 1.0, 0.0, 0.0])
