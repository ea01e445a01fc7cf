"""Parity with the published implementation's outputs (tests/data/golden)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import golden_cases, load_golden, published_trace

from sklearn_beta import estimate_betas_baseline, estimate_betas_iterative

CASES = golden_cases()
RTOL = 1e-9


def _golden_cases(kind):
    for trace, chunk in CASES:
        for key, expected in load_golden(f"{trace}_c{chunk}.json")[kind].items():
            yield pytest.param(
                trace, chunk, key, expected, id=f"{trace}-c{chunk}-{key}"
            )


def test_every_published_case_is_here():
    assert CASES == [("sample", 32), ("sample", 64), ("smoke", 64)]


def assert_betas_equal(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize(
    ("trace", "chunk", "mode", "expected"), _golden_cases("baseline")
)
def test_baseline_matches_golden(trace, chunk, mode, expected):
    result = estimate_betas_baseline(
        published_trace(trace), chunk_size=chunk, correction_mode=mode
    )
    assert_betas_equal(result.beta, expected["beta"])
    diag = result.diagnostics
    for key in ("r2", "rmse_seconds", "mean_A_pf_tokens", "mean_A_dec_tokens"):
        assert diag[key] == pytest.approx(expected[key], rel=RTOL), key


@pytest.mark.parametrize(
    ("trace", "chunk", "key", "expected"), _golden_cases("iterative")
)
def test_iterative_matches_golden(trace, chunk, key, expected):
    mode, eta = key.split("/eta=")
    result = estimate_betas_iterative(
        published_trace(trace),
        chunk_size=chunk,
        prefill_correction_mode=mode,
        damping_eta=float(eta),
    )
    assert_betas_equal(result.beta, expected["beta"])
    assert result.converged is expected["converged"]
    assert result.n_outer_iters == expected["n_outer_iters"]
    assert result.diagnostics["r2"] == pytest.approx(expected["r2"], rel=RTOL)
    assert result.diagnostics["rmse_seconds"] == pytest.approx(
        expected["rmse_seconds"], rel=RTOL
    )


def test_method_md_quoted_figures(smoke_phases):
    # METHOD.md section 8 quotes these two results on smoke.csv verbatim.
    uniform = estimate_betas_baseline(
        smoke_phases, chunk_size=64, correction_mode="uniform"
    )
    np.testing.assert_allclose(uniform.beta, [0, 0.0143380, 0.5152288], atol=5e-8)
    assert uniform.diagnostics["r2"] == pytest.approx(0.85176, abs=5e-6)
    default = estimate_betas_iterative(smoke_phases, chunk_size=64)
    np.testing.assert_allclose(default.beta, [0, 0.0163045, 0.5662300], atol=5e-8)
    assert default.converged and default.n_outer_iters == 7
