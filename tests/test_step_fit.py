"""Every phase-exposure path fits any step model through one orchestration
(issue 20 item 2): the step-count objective, the window edges, the intervals
and the duration objective's fixed placements, with the simulator's betas
as ground truth."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.core._feature_fixed_point import FeatureCounts, FeatureDurations
from sklearn_beta.core._schema import read_timeline
from sklearn_beta.core._step_count import count_state, step_count_weights
from sklearn_beta.core._step_features import PUBLISHED_FEATURES, STEP_MODELS
from sklearn_beta.datasets import cut_window, simulate_trace

ATTENTION = STEP_MODELS["attention"]
BETA_ATTENTION = np.array([5e-3, 2e-5, 4e-9, 8e-5, 2e-8])
CHUNK = 256


def _simulate(n, *, rate=10.0, noise=0.0, seed=1, **kwargs):
    return simulate_trace(
        n,
        beta=BETA_ATTENTION,
        step_model="attention",
        chunk_size=CHUNK,
        max_num_seqs=256,
        arrival_rate=rate,
        prompt_tokens=(1024, 0.8),
        output_tokens=(200, 0.8),
        noise=noise,
        random_state=seed,
        **kwargs,
    )


def _fit(phases, **regressor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_pipeline(
            PhaseExposureTransformer(CHUNK, step_model="attention"),
            IterativeBetaRegressor(**regressor),
        ).fit(phases)[-1]


@pytest.fixture(scope="module")
def moderate():
    return _simulate(2000)


def test_step_count_default_recovers_a_noise_free_attention_trace(moderate):
    # The estimator's defaults: step-count objective, end_inside, edges="auto".
    regressor = _fit(moderate)
    assert regressor.converged_
    # end_inside converges in a few Gauss-Newton steps (measured: 7); the
    # decode context lags one state behind, so at tol=1e-6 the betas are
    # within a few 1e-6 (measured 3.0e-6; a published fit: 1e-9)
    assert regressor.n_iter_ <= 10
    np.testing.assert_allclose(regressor.beta_, BETA_ATTENTION, rtol=1e-5)
    columns = [f"beta_{f}" for f in ATTENTION]
    assert list(regressor.history_.columns[1:6]) == columns
    assert regressor.history_["beta_steps"].iloc[-1] == regressor.beta_[0]
    assert regressor.diagnostics_["edges"]["n_context"] == 0
    # an interval for every feature, around the truth
    assert regressor.beta_ci_.shape == (5, 2)
    lower, upper = regressor.beta_ci_.T
    assert np.all((lower <= BETA_ATTENTION * (1 + 1e-6)) & (BETA_ATTENTION <= upper))


@pytest.mark.parametrize(
    ("rate", "tolerance"), [(4.0, 0.01), (10.0, 0.01), (14.0, 0.04)]
)
def test_step_count_recovers_noisy_attention_traces(rate, tolerance):
    # 2 % step noise, light to heavy load (~170 running at 14/s); measured
    # largest errors on this seed: 0.65 % (the decode context at 4/s), 0.23 %,
    # 0.31 %. At 14/s that 0.31 % is one seed's luck: over ten seeds the
    # decode context scatters up to 3.5 % at 6000 requests, as a regression
    # of the engine's own steps does (tests/test_step_model_accuracy.py).
    phases = _simulate(6000, rate=rate, noise=0.02)
    regressor = _fit(phases)
    assert regressor.converged_
    np.testing.assert_array_less(
        np.abs(regressor.beta_ / BETA_ATTENTION - 1), tolerance
    )
    lower, upper = regressor.beta_ci_.T
    assert np.all((lower < regressor.beta_) & (regressor.beta_ < upper))


@pytest.mark.parametrize("mode", ["end_inside", "beta_informed"])
def test_duration_objective_converges_with_either_placement(moderate, mode):
    # end_inside used to oscillate under the lagged density (100 iterations
    # without converging): the density of a fixed placement is now solved.
    regressor = _fit(moderate, correction_mode=mode, objective="duration", max_iter=60)
    assert regressor.converged_
    np.testing.assert_allclose(regressor.beta_, BETA_ATTENTION, rtol=1e-5)


def test_feature_counts_of_the_published_features_are_count_state(moderate):
    # Two implementations of the same objective: the step model's with the
    # published features, the published one's own.
    table = PhaseExposureTransformer(CHUNK).fit_transform(moderate).to_numpy()
    timeline = read_timeline(table)
    beta = np.array([4e-3, 3e-5, 1e-4])
    problem = FeatureCounts(
        FeatureDurations(timeline, None, PUBLISHED_FEATURES, "end_inside")
    )
    state = problem.state(beta)
    fixed = problem.problem.fixed
    weight = step_count_weights(timeline)
    expected = count_state(timeline, beta, "end_inside", fixed, weight)
    np.testing.assert_allclose(state.residual, expected.residual, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(state.jac, expected.jac, rtol=1e-10, atol=1e-6)
    np.testing.assert_allclose(state.design, expected.design, rtol=1e-12, atol=1e-9)
    assert state.loss == pytest.approx(expected.loss, rel=1e-10)


@pytest.mark.parametrize("how", ["arrival", "completion"])
def test_edges_auto_on_a_window_of_a_step_model_trace(how):
    # A window cut from serving: its first (arrival) or last (completion)
    # requests miss the load of those outside it. edges="auto" leaves the
    # incomplete edges out; fitting every phase is biased. Measured at 4
    # requests/s, 2 % noise: auto within 1.4 % / 1.8 %, every phase 53 % /
    # 112 % off. (At 12/s, ~170 running, the five coefficients absorb the
    # missing load and the edge test finds no incomplete edge: both fits
    # are off by a factor 2-4.)
    phases = _simulate(3000, rate=4.0, noise=0.02, seed=2)
    times = phases.groupby("request_id")["t_start" if how == "arrival" else "t_end"]
    per_request = times.min() if how == "arrival" else times.max()
    t0, t1 = per_request.quantile([0.3, 0.7])
    window = cut_window(phases, t0, t1, how=how)
    auto = _fit(window)
    every = _fit(window, edges="fit")
    assert auto.diagnostics_["edges"]["n_context"] > 0
    np.testing.assert_array_less(np.abs(auto.beta_ / BETA_ATTENTION - 1), 0.02)
    assert np.max(np.abs(every.beta_ / BETA_ATTENTION - 1)) > 0.3


def test_identifiability_warnings_name_a_step_models_features():
    # One request at a time: every step's batch is 1, so the batch_size
    # feature is the steps feature again and the trace cannot split them.
    phases = simulate_trace(
        200,
        beta=(5e-3, 2e-5, 8e-5),
        chunk_size=64,
        max_num_seqs=1,
        arrival_rate=2.0,
        noise=0.02,
        random_state=0,
    )
    model = make_pipeline(
        PhaseExposureTransformer(
            64, step_model=["steps", "prefill_tokens", "decode_tokens", "batch_size"]
        ),
        IterativeBetaRegressor(),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(phases)
    found = [
        str(w.message)
        for w in caught
        if w.category.__name__ == "IdentifiabilityWarning"
    ]
    assert found and "batch_size" in found[0]
    assert "batch_size" in model[-1].diagnostics_["not_identified"]
    assert model[-1].beta_ci_.shape == (4, 2)
