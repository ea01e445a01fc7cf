"""Recovery of known betas from simulated traces (benchmarks/accuracy.py in small).

Every trace here is simulated with known betas; the assertions are the
accuracy the benchmark measures at 20k requests, with margins for the smaller
traces used to keep the tests fast.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import column_kwargs
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    estimate_betas_iterative,
)
from sklearn_beta.core._corrections import fixed_correction_mass
from sklearn_beta.core._fixed_point import IterationSettings
from sklearn_beta.core._step_count import fit_step_counts, solved_step_counts
from sklearn_beta.core._validation import PhaseColumns, check_phases
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.estimators._exposure import timeline_from_arrays
from sklearn_beta.metrics import coefficient_errors, step_time_error

BETA = (6e-3, 3e-5, 1e-4)  # H100-like: beta1 * C / beta0 = 2.56 at C = 512
CHUNK = 512
LENGTHS = dict(prompt_tokens=(1024, 0.8), output_tokens=(200, 0.8))


def _simulate(n_requests=10_000, **kwargs):
    options = dict(
        beta=BETA,
        chunk_size=CHUNK,
        max_num_seqs=256,
        arrival_rate=12.0,
        random_state=0,
        return_steps=True,
        **LENGTHS,
    )
    options.update(kwargs)
    return simulate_trace(n_requests, **options)


def _fit(phases, **transformer_options):
    transformer_options.setdefault("chunk_size", CHUNK)
    return make_pipeline(
        PhaseExposureTransformer(**transformer_options), IterativeBetaRegressor()
    ).fit(phases)


@pytest.fixture(scope="module")
def moderate():
    """20k phases, noise-free, no budget, ~120 running requests."""
    return _simulate()


@pytest.fixture(scope="module")
def heavy():
    """~230 running: where the reference iteration oscillates (b0 0 / +200 %)."""
    return _simulate(arrival_rate=17.5, beta=(5e-3, 2.5e-5, 8e-5))


@pytest.fixture(scope="module")
def budgeted():
    """A tight token budget: most steps are capped."""
    return _simulate(arrival_rate=14.0, token_budget=1024)


def test_default_recovers_every_beta_within_one_percent(moderate):
    phases, steps = moderate
    assert len(phases) >= 20_000
    model = _fit(phases)
    regressor = model[-1]
    assert regressor.converged_
    np.testing.assert_array_less(
        np.abs(coefficient_errors(BETA, regressor.beta_)), 0.01
    )
    # In fact exact: the step counts are integers the trace pins down.
    np.testing.assert_allclose(regressor.beta_, BETA, rtol=1e-6)
    assert step_time_error(BETA, regressor.beta_, steps) < 1e-6


def test_step_counts_are_exact_at_the_true_betas(moderate):
    # Solved together, step density and p_eff put on every segment exactly
    # the steps the simulator ran, so each phase holds its N_i steps.
    phases, _ = moderate
    timeline = timeline_from_arrays(check_phases(phases, PhaseColumns()), CHUNK)
    mass = fixed_correction_mass(
        "end_inside", timeline.trace_grid, timeline.is_prefill, timeline.mu
    )
    n, _, _ = solved_step_counts(timeline, np.asarray(BETA), mass)
    cum = np.concatenate([[0.0], np.cumsum(n)])
    per_phase = cum[timeline.trace_grid.end_idx] - cum[timeline.trace_grid.start_idx]
    np.testing.assert_allclose(per_phase, timeline.n_steps, atol=1e-6)
    busy = timeline.trace_grid.seg_len > 0
    np.testing.assert_allclose(n[busy], np.round(n[busy]), atol=1e-6)
    assert np.all(np.round(n[busy]) >= 1)


def test_heavy_load_default_exact_where_reference_oscillates(heavy):
    phases, steps = heavy
    beta = (5e-3, 2.5e-5, 8e-5)
    reference = estimate_betas_iterative(phases, chunk_size=CHUNK)
    assert not reference.converged
    assert step_time_error(beta, reference.beta, steps) > 0.05
    regressor = _fit(phases)[-1]
    assert regressor.converged_
    np.testing.assert_allclose(regressor.beta_, beta, rtol=1e-6)


def test_heavy_noisy_step_time_error_below_one_percent():
    beta = (5e-3, 2.5e-5, 8e-5)
    phases, steps = _simulate(arrival_rate=17.5, beta=beta, noise=0.05)
    regressor = _fit(phases)[-1]
    assert step_time_error(beta, regressor.beta_, steps) < 0.005
    np.testing.assert_array_less(
        np.abs(coefficient_errors(beta, regressor.beta_)), 0.02
    )


def test_token_budget_aware_pressure_recovers_betas(budgeted):
    phases, steps = budgeted
    blind = _fit(phases)[-1]
    aware = _fit(phases, token_budget=1024)[-1]
    assert step_time_error(BETA, blind.beta_, steps) > 0.05
    assert step_time_error(BETA, aware.beta_, steps) < 0.01
    np.testing.assert_array_less(np.abs(coefficient_errors(BETA, aware.beta_)), 0.02)


def test_budget_and_chunk_size_tuned_by_grid_search(budgeted):
    # The score (R^2 of durations predicted as l_i N_i / Lambda_i) peaks
    # where the step counts can be matched: at the engine's C and budget.
    # One in-sample split: exposures need the whole trace, and three
    # coefficients cannot overfit 20k phases.
    phases, _ = budgeted
    everything = np.arange(len(phases))
    search = GridSearchCV(
        make_pipeline(
            PhaseExposureTransformer(chunk_size=CHUNK), IterativeBetaRegressor()
        ),
        {
            "phaseexposuretransformer__token_budget": [None, 768, 1024, 2048],
            "phaseexposuretransformer__chunk_size": [256, 512, 1024],
        },
        cv=[(everything, everything)],
    ).fit(phases)
    assert search.best_params_ == {
        "phaseexposuretransformer__token_budget": 1024,
        "phaseexposuretransformer__chunk_size": 512,
    }


def test_several_instances():
    phases, steps = _simulate(n_requests=6000, arrival_rate=24.0, n_instances=3)
    regressor = _fit(phases, **column_kwargs(instance_id="instance_id"))[-1]
    np.testing.assert_allclose(regressor.beta_, BETA, rtol=1e-6)
    # Without the instance column the pressures mix engines.
    mixed = _fit(phases, **column_kwargs(instance_id=None))[-1]
    assert step_time_error(BETA, mixed.beta_, steps) > 0.05


@pytest.mark.parametrize("mode", ["beta_informed", "uniform", "end", "none"])
def test_correction_modes_of_the_step_count_objective(moderate, mode):
    # beta_informed finds each last step inside the last segment: exact too.
    # The others misplace the partial chunks: small (uniform, end) or large
    # (none, which ignores them) biases, as the benchmark shows.
    phases, steps = moderate
    regressor = make_pipeline(
        PhaseExposureTransformer(chunk_size=CHUNK), IterativeBetaRegressor(mode)
    ).fit(phases)[-1]
    error = step_time_error(BETA, regressor.beta_, steps)
    if mode == "none":
        assert error > 0.01
    else:
        assert error < {"beta_informed": 1e-6, "uniform": 0.005, "end": 0.02}[mode]


def test_step_count_history_and_predictions(moderate):
    phases, _ = moderate
    model = _fit(phases)
    regressor = model[-1]
    history = regressor.history_
    assert history["iteration"].tolist() == list(range(regressor.n_iter_ + 1))
    assert history["step"].iloc[-1] < regressor.tol
    # At exact step counts the predicted durations l_i N_i / Lambda_i are
    # the observed ones.
    duration = (phases["t_end"] - phases["t_start"]).to_numpy()
    np.testing.assert_allclose(model.predict(phases), duration, rtol=1e-6)
    assert regressor.diagnostics_["r2"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_reference_objective_still_available(moderate):
    phases, _ = moderate
    regressor = make_pipeline(
        PhaseExposureTransformer(chunk_size=CHUNK),
        IterativeBetaRegressor(
            "beta_informed", objective="duration", stopping="absolute"
        ),
    ).fit(phases)[-1]
    expected = estimate_betas_iterative(phases, chunk_size=CHUNK)
    np.testing.assert_array_equal(regressor.beta_, expected.beta)


def test_token_budget_validated_and_unused_without_capped_steps(moderate):
    phases, _ = moderate
    with pytest.raises(ValueError, match="token_budget. parameter of estimate_betas"):
        estimate_betas_iterative(phases, chunk_size=CHUNK, token_budget=0)
    with pytest.raises(ValueError, match="token_budget. parameter of estimate_betas"):
        estimate_betas_iterative(phases, chunk_size=CHUNK, token_budget=2.5)
    # A budget no step reaches changes nothing.
    loose = estimate_betas_iterative(
        phases, chunk_size=CHUNK, objective="step_count", token_budget=10**9
    )
    free = estimate_betas_iterative(phases, chunk_size=CHUNK, objective="step_count")
    np.testing.assert_allclose(loose.beta, free.beta, rtol=1e-12)


def test_step_count_objective_needs_a_counted_phase(moderate):
    phases, _ = moderate
    timeline = timeline_from_arrays(check_phases(phases, PhaseColumns()), CHUNK)
    with pytest.raises(ValueError, match="known step count"):
        fit_step_counts(
            timeline,
            np.asarray(BETA),
            IterationSettings("end_inside", 25, 1e-6, 1.0, "relative"),
            sample_weight=np.zeros(timeline.n_phases),
        )


def test_step_count_zero_weight_equals_dropping_an_instance():
    phases, _ = _simulate(n_requests=3000, arrival_rate=18.0, n_instances=3)
    table = PhaseExposureTransformer(
        chunk_size=CHUNK, **column_kwargs(instance_id="instance_id")
    ).fit_transform(phases)
    keep = (table["instance_id"] != 0).to_numpy()
    masked = IterativeBetaRegressor().fit(table, sample_weight=keep.astype(float))
    subset = IterativeBetaRegressor().fit(table[keep])
    np.testing.assert_allclose(masked.beta_, subset.beta_, rtol=1e-9)
    np.testing.assert_allclose(masked.beta_, BETA, rtol=1e-6)


def test_step_count_result_does_not_depend_on_row_order(moderate):
    phases, _ = moderate
    shuffled = phases.sample(frac=1.0, random_state=1)
    np.testing.assert_allclose(
        _fit(shuffled)[-1].beta_, _fit(phases)[-1].beta_, rtol=1e-12
    )
