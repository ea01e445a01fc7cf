"""Parity with the published implementation's outputs (../shared/golden)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import load_golden, shared_path

from sklearn_beta import estimate_betas_baseline, estimate_betas_iterative

CASES = [("smoke", 64), ("sample", 64), ("sample", 32)]
RTOL = 1e-9


def _golden_cases(kind):
    for trace, chunk in CASES:
        golden = load_golden(f"{trace}_c{chunk}.json") if _shared_ok() else None
        if golden is None:
            yield pytest.param(
                trace,
                chunk,
                None,
                None,
                marks=pytest.mark.skip(reason="../shared/golden is absent"),
            )
            continue
        for key, expected in golden[kind].items():
            yield pytest.param(
                trace, chunk, key, expected, id=f"{trace}-c{chunk}-{key}"
            )


def _shared_ok() -> bool:
    from conftest import SHARED

    return (SHARED / "golden").exists()


def _phases(trace):
    return pd.read_csv(shared_path("data", f"{trace}.csv"))


def _iterative_fit(trace, chunk, key):
    mode, eta = key.split("/eta=")
    return estimate_betas_iterative(
        _phases(trace),
        chunk_size=chunk,
        prefill_correction_mode=mode,
        damping_eta=float(eta),
    )


def assert_betas_equal(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize(
    ("trace", "chunk", "mode", "expected"), _golden_cases("baseline")
)
def test_baseline_matches_golden(trace, chunk, mode, expected):
    result = estimate_betas_baseline(
        _phases(trace), chunk_size=chunk, correction_mode=mode
    )
    assert_betas_equal(result.beta, expected["beta"])
    diag = result.diagnostics
    for key in ("r2", "rmse_seconds", "mean_A_pf_tokens", "mean_A_dec_tokens"):
        assert diag[key] == pytest.approx(expected[key], rel=RTOL), key


@pytest.mark.parametrize(
    ("trace", "chunk", "key", "expected"), _golden_cases("iterative")
)
def test_iterative_matches_golden(trace, chunk, key, expected):
    result = _iterative_fit(trace, chunk, key)
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


PUBLISHED_KEYS = {
    "converged",
    "n_outer_iters",
    "tol",
    "damping_eta",
    *(f"{kind}_beta{k}" for kind in ("init", "final") for k in range(3)),
    "final_r2",
    "final_rmse_seconds",
    "final_delta_beta_l2",
}


@pytest.mark.parametrize(
    ("trace", "chunk", "key", "expected"), _golden_cases("iterative")
)
def test_iterative_result_has_the_published_layout(trace, chunk, key, expected):
    result = _iterative_fit(trace, chunk, key)
    diag, history = result.diagnostics, result.history
    assert PUBLISHED_KEYS <= set(diag)
    assert diag["converged"] is expected["converged"]
    assert diag["n_outer_iters"] == expected["n_outer_iters"]
    assert diag["damping_eta"] == float(key.split("/eta=")[1]) and diag["tol"] == 1e-6
    final = [diag[f"final_beta{k}"] for k in range(3)]
    assert_betas_equal(final, expected["beta"])
    assert diag["final_r2"] == pytest.approx(expected["r2"], rel=RTOL)
    assert diag["final_rmse_seconds"] == pytest.approx(
        expected["rmse_seconds"], rel=RTOL
    )
    n = expected["n_outer_iters"]
    assert len(history["beta"]) == n + 1
    assert all(isinstance(b, tuple) and len(b) == 3 for b in history["beta"])
    assert_betas_equal(history["beta"][-1], expected["beta"])
    init = [diag[f"init_beta{k}"] for k in range(3)]
    assert_betas_equal(history["beta"][0], init)
    for name in ("delta_beta_l2", "r2", "rmse_seconds", "notes"):
        assert len(history[name]) == n, name
    for name in ("delta_beta_l2", "r2", "rmse_seconds"):
        assert np.all(np.isfinite(history[name])), name
    assert history["r2"][-1] == pytest.approx(expected["r2"], rel=RTOL)
    # The absolute stopping rule: converged exactly when the last move < tol.
    assert diag["final_delta_beta_l2"] == history["delta_beta_l2"][-1]
    assert (diag["final_delta_beta_l2"] < 1e-6) is expected["converged"]
    # The start is the reference's baseline ("end" correction).
    baseline = estimate_betas_baseline(_phases(trace), chunk_size=chunk)
    assert_betas_equal(init, baseline.beta)
