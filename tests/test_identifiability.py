"""Designs that cannot separate the betas warn, and say which and why."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from trace_factory import (
    constant_decode_pressure,
    decodes_only,
    prefills_only,
    sequential_trace,
    synthetic_trace,
)

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    estimate_betas_baseline,
    estimate_betas_iterative,
)
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.exceptions import IdentifiabilityWarning
from sklearn_beta.trust._identifiability import CONDITION_LIMIT, condition_number


def fit_trace_diagnostics(phases):
    from sklearn_beta.engine_config._trace_fit import fit_trace

    return fit_trace(phases, chunk_size=64).diagnostics


def fit_functional(fit, phases):
    return fit(phases, chunk_size=64).diagnostics


def fit_pipeline(regressor, phases):
    return (
        make_pipeline(PhaseExposureTransformer(64), regressor)
        .fit(phases)[-1]
        .diagnostics_
    )


FITS = [
    pytest.param(lambda p: fit_functional(estimate_betas_baseline, p), id="baseline"),
    pytest.param(lambda p: fit_functional(estimate_betas_iterative, p), id="iterative"),
    pytest.param(lambda p: fit_pipeline(BaselineBetaRegressor(), p), id="Baseline"),
    pytest.param(lambda p: fit_pipeline(IterativeBetaRegressor(), p), id="Iterative"),
    pytest.param(fit_trace_diagnostics, id="fit_trace"),
]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize(
    ("trace", "coefficients", "why"),
    [
        (sequential_trace, ["beta0", "beta1", "beta2"], "no two phases overlap"),
        (prefills_only, ["beta2"], "no decode phase"),
        (decodes_only, ["beta1"], "no prefill phase"),
        (constant_decode_pressure, ["beta0", "beta2"], "decode pressure is the same"),
    ],
)
def test_degenerate_designs_warn(fit, trace, coefficients, why):
    with pytest.warns(IdentifiabilityWarning, match=why) as record:
        diagnostics = fit(trace())
    message = next(str(w.message) for w in record if why in str(w.message))
    for name in coefficients:
        assert name in message
    assert set(coefficients) <= set(diagnostics["not_identified"])
    assert diagnostics["condition_number"] > 0


def test_warning_is_a_user_warning():
    assert issubclass(IdentifiabilityWarning, UserWarning)


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_traces_are_silent(fit, seed):
    phases = synthetic_trace(seed, 40, horizon=8.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentifiabilityWarning)
        diagnostics = fit(phases)
    assert diagnostics["not_identified"] == []
    assert 1 <= diagnostics["condition_number"] < 100


SIMULATIONS = {
    "light": dict(max_num_seqs=8, arrival_rate=4.0),
    "busy-noisy": dict(max_num_seqs=64, arrival_rate=40.0, noise=0.1),
    "token-budget": dict(max_num_seqs=32, arrival_rate=20.0, token_budget=512),
    "fleet": dict(max_num_seqs=16, arrival_rate=30.0, n_instances=3),
}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("config", SIMULATIONS, ids=list(SIMULATIONS))
def test_simulated_traces_are_silent(config):
    phases = simulate_trace(
        300,
        beta=(5e-3, 3e-5, 2e-4),
        chunk_size=256,
        random_state=7,
        **SIMULATIONS[config],
    )
    instance = "instance_id" if "instance_id" in phases else None
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentifiabilityWarning)
        results = [
            estimate_betas_baseline(
                phases, chunk_size=256, columns={"instance_id": instance}
            ),
            estimate_betas_iterative(
                phases, chunk_size=256, columns={"instance_id": instance}
            ),
        ]
        model = make_pipeline(
            PhaseExposureTransformer(256, columns={"instance_id": instance}),
            IterativeBetaRegressor(),
        ).fit(phases)
    for diagnostics in [r.diagnostics for r in results] + [model[-1].diagnostics_]:
        assert diagnostics["not_identified"] == []
        assert diagnostics["condition_number"] < 100


@pytest.mark.parametrize("fit", FITS)
def test_published_traces_are_silent(fit, smoke_phases, published_sample):
    # Tiny (4 and 8 phases) but with overlapping phases and varying decode
    # pressure: identified, even where NNLS puts a beta at zero.
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentifiabilityWarning)
        for phases in (smoke_phases, published_sample):
            assert fit(phases)["not_identified"] == []


def test_zero_bound_is_reported(smoke_phases):
    # docs/method.md 9: the uniform baseline on tests/data/smoke.csv gives beta0 = 0.
    result = estimate_betas_baseline(
        smoke_phases, chunk_size=64, correction_mode="uniform"
    )
    assert result.beta0 == 0
    assert result.diagnostics["at_zero_bound"] == ["beta0"]
    # Damping only approaches the bound: beta0 = 2.4e-7 s is still reported.
    damped = estimate_betas_iterative(smoke_phases, chunk_size=64, damping_eta=0.5)
    assert 0 < damped.beta0 < 1e-6
    assert damped.diagnostics["at_zero_bound"] == ["beta0"]


def test_condition_number_is_that_of_the_normalised_design():
    rng = np.random.default_rng(0)
    design = rng.uniform(0, 1, (20, 3)) * [1.0, 1e3, 1e-2]
    expected = np.linalg.cond(design / np.linalg.norm(design, axis=0))
    assert condition_number(design) == pytest.approx(expected, rel=1e-12)
    assert condition_number(design[:, [0, 0, 2]]) > CONDITION_LIMIT
    assert condition_number(np.column_stack([design[:, :2], np.zeros(20)])) == np.inf


def test_collinear_columns_of_a_bare_design_warn():
    # Without the trace (a 3-column design), the design itself is judged.
    rng = np.random.default_rng(1)
    steps = rng.integers(1, 50, 30).astype(float)
    design = np.column_stack([steps, rng.uniform(0, 500, 30), 3.0 * steps])
    y = design @ [0.01, 1e-4, 1e-3]
    with pytest.warns(IdentifiabilityWarning, match="beta0 and beta2.*collinear"):
        model = BaselineBetaRegressor().fit(design, y)
    assert model.diagnostics_["not_identified"] == ["beta0", "beta2"]


def test_zero_column_of_a_bare_design_warns():
    rng = np.random.default_rng(2)
    design = np.column_stack([rng.uniform(1, 5, (10, 2)), np.zeros(10)])
    with pytest.warns(IdentifiabilityWarning, match="beta2 is not identified.*zero"):
        model = BaselineBetaRegressor().fit(design, design[:, 0])
    assert model.diagnostics_["condition_number"] == np.inf
