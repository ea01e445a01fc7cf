"""The NNLS solve: same minimiser as scipy's on the full problem."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls

from sklearn_beta.core._nnls import fit_statistics, nnls_fit


def _reference(design, target):
    scale = np.linalg.norm(design, axis=0)
    solution, _ = nnls(design / scale, target)
    return solution / scale


@pytest.mark.parametrize("mix", [0.0, 0.9, 0.999, 0.99999])
def test_tall_reduction_matches_full_nnls(mix):
    rng = np.random.default_rng(0)
    design = rng.random((5000, 3))
    design[:, 2] = mix * design[:, 1] + (1 - mix) * design[:, 2]
    design *= [300.0, 2e4, 50.0]  # steps, prefill tokens, decode tokens
    target = design @ [6e-3, 2e-5, 8e-5] + 1e-3 * rng.standard_normal(5000)
    np.testing.assert_allclose(
        nnls_fit(design, target), _reference(design, target), rtol=1e-9, atol=1e-18
    )


def test_active_bound_and_zero_column():
    rng = np.random.default_rng(1)
    design = rng.random((400, 3))
    design[:, 1] = 0.0
    target = design @ [1.0, 0.0, -0.2] + 0.01 * rng.random(400)
    beta = nnls_fit(design, target)
    assert beta[1] == 0.0 and beta[2] == 0.0 and beta[0] > 0


def test_rank_deficient_design_falls_back():
    rng = np.random.default_rng(2)
    base = rng.random((400, 1))
    design = np.hstack([base, 2 * base, rng.random((400, 1))])
    target = design @ [1.0, 1.0, 1.0]
    beta = nnls_fit(design, target)
    np.testing.assert_allclose(design @ beta, target, rtol=1e-9)
    assert np.all(beta >= 0)


def test_weights_equal_duplicated_rows():
    rng = np.random.default_rng(3)
    design = rng.random((300, 3))
    target = design @ [1.0, 2.0, 0.5] + 0.1 * rng.standard_normal(300)
    weights = rng.integers(0, 4, 300)
    duplicated = nnls_fit(np.repeat(design, weights, 0), np.repeat(target, weights))
    np.testing.assert_allclose(
        nnls_fit(design, target, weights), duplicated, rtol=1e-10
    )


def test_fit_statistics():
    r2, rmse = fit_statistics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert r2 == pytest.approx(0.5)
    assert rmse == pytest.approx(np.sqrt(1 / 3))
    r2, _ = fit_statistics(np.ones(3), np.ones(3))
    assert np.isnan(r2)
