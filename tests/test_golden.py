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
