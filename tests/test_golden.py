"""Parity with the published implementation's outputs (tests/data/golden)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import REPO, golden_cases, load_golden, published_trace

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


def _iterative_fit(trace, chunk, key):
    mode, eta = key.split("/eta=")
    return estimate_betas_iterative(
        published_trace(trace),
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


def _quoted(text: str, label: str) -> list[str]:
    """The numbers docs/method.md quotes after ``label``, as printed."""
    line = next(line for line in text.splitlines() if line.startswith(f"* {label}"))
    return re.findall(r"\d+(?:\.\d+)?", line.split(":", 1)[1])


def _agrees(printed: str, value: float) -> bool:
    decimals = len(printed.partition(".")[2])
    return abs(float(printed) - value) <= 0.5 * 10.0**-decimals


def test_figures_quoted_in_the_docs_are_the_golden_ones():
    text = (REPO / "docs" / "method.md").read_text()
    golden = load_golden("smoke_c64.json")
    uniform = golden["baseline"]["uniform"]
    *beta, r2 = _quoted(text, "baseline, `uniform` correction")
    assert all(map(_agrees, beta, uniform["beta"]))
    assert _agrees(r2, uniform["r2"])
    default = golden["iterative"]["beta_informed/eta=1.0"]
    *beta, n_iter = _quoted(text, "iterative, defaults")
    assert all(map(_agrees, beta, default["beta"]))
    assert default["converged"] and int(n_iter) == default["n_outer_iters"]


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
    baseline = estimate_betas_baseline(published_trace(trace), chunk_size=chunk)
    assert_betas_equal(init, baseline.beta)
