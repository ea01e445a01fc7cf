"""How close noisy step-model fits come to the engine's coefficients, light
and heavy, and the duration objective's variance weights (issue 20,
done-when 1; the trace sizes at which every coefficient is within 1 % are
benchmarks/step_model_accuracy.py's)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.core._feature_fixed_point import duration_variance_weights
from sklearn_beta.core._step_features import STEP_MODELS
from sklearn_beta.datasets import load_sample_trace, simulate_trace

BETA_ATTENTION = np.array([5e-3, 2e-5, 4e-9, 8e-5, 2e-8])
CHUNK = 256


def _trace(n_requests, rate, seed, **kwargs):
    """The benchmark's traces: attention truth, chunk 256, 2 % step noise."""
    return simulate_trace(
        n_requests,
        beta=BETA_ATTENTION,
        step_model="attention",
        chunk_size=CHUNK,
        max_num_seqs=256,
        arrival_rate=rate,
        prompt_tokens=(1024, 0.8),
        output_tokens=(200, 0.8),
        noise=0.02,
        random_state=seed,
        **kwargs,
    )


def _table(phases, step_model="attention"):
    return PhaseExposureTransformer(CHUNK, step_model=step_model).fit_transform(phases)


def _fit(table, **regressor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return IterativeBetaRegressor(confidence_level=None, **regressor).fit(table)


def _step_bound(steps) -> np.ndarray:
    """The weighted least squares of the engine's own steps (rows over their
    model time): what a regression of the true steps recovers."""
    features = STEP_MODELS["attention"]
    x = np.column_stack(
        [np.ones(len(steps))] + [steps[f].to_numpy(float) for f in features[1:]]
    )
    y = (steps["t_end"] - steps["t_start"]).to_numpy()
    scale = 1.0 / (x @ BETA_ATTENTION)
    return np.linalg.lstsq(x * scale[:, None], y * scale, rcond=None)[0]


@pytest.mark.parametrize("seed", range(10))
def test_light_load_every_coefficient_within_one_percent(seed):
    # 6000 requests at 4/s (~8 decodes running): the benchmark's 10 of 10
    # seeds within 1 % (largest error 0.65 %, the decode context).
    regressor = _fit(_table(_trace(6000, 4.0, seed)))
    assert regressor.converged_
    np.testing.assert_array_less(np.abs(regressor.beta_ / BETA_ATTENTION - 1), 0.01)


@pytest.mark.parametrize("seed", [0, 2])
def test_heavy_load_scatter_is_the_engine_steps_scatter(seed):
    # Saturated at 14/s: the decode tokens and context split is as uncertain
    # from the phases as from the engine's own steps. At 6000 requests the
    # largest errors over 10 seeds are 3.5 % (fit) and 3.9 % (steps), both
    # the decode context; within 1 % for 10 of 10 seeds takes the
    # benchmark's larger traces.
    phases, steps = _trace(6000, 14.0, seed, return_steps=True)
    regressor = _fit(_table(phases))
    assert regressor.converged_
    fit_error = np.abs(regressor.beta_ / BETA_ATTENTION - 1)
    steps_error = np.abs(_step_bound(steps) / BETA_ATTENTION - 1)
    np.testing.assert_array_less(fit_error, 0.04)
    np.testing.assert_array_less(steps_error, 0.04)
    # the per-step costs and the prefill terms are much tighter than the split
    np.testing.assert_array_less(fit_error[:3], 0.01)


def test_duration_variance_weights_by_hand():
    # Var(duration) = sigma^2 N tau^2 = sigma^2 predicted^2 / N: phases of 4
    # steps of 50 ms, 1 step of 100 ms, 9 steps of 10 ms, one predicted 0.
    n_steps = np.array([4.0, 1.0, 9.0, 2.0])
    predicted = np.array([0.2, 0.1, 0.09, 0.0])
    inverse_variance = np.array([4 / 0.04, 1 / 0.01, 9 / 0.0081, 0.0])
    np.testing.assert_allclose(
        duration_variance_weights(n_steps, predicted),
        inverse_variance / inverse_variance.mean(),
    )
    sample_weight = np.array([1.0, 2.0, 0.5, 1.0])
    weighted = inverse_variance * sample_weight
    np.testing.assert_allclose(
        duration_variance_weights(n_steps, predicted, sample_weight),
        weighted / weighted.mean(),
    )


def test_variance_weights_change_the_duration_fit():
    # One heavy trace: the variance weights move the betas (10 seeds at 6000
    # requests: decode-context scatter 2.8 % unweighted, 2.0 % weighted) and
    # the fit stays within the heavy scatter of the truth.
    table = _table(_trace(3000, 14.0, 0))
    options = dict(correction_mode="beta_informed", objective="duration")
    options.update(damping=0.5, max_iter=100)
    plain = _fit(table, **options)
    weighted = _fit(table, weights="variance", **options)
    assert weighted.converged_
    assert np.max(np.abs(weighted.beta_ / plain.beta_ - 1)) > 1e-3
    np.testing.assert_array_less(np.abs(weighted.beta_ / BETA_ATTENTION - 1), 0.05)
    # the step counts are weighted by their variance already: no change
    counts = _fit(table)
    np.testing.assert_array_equal(_fit(table, weights="variance").beta_, counts.beta_)


def test_variance_weights_of_the_published_model():
    # The published reference's fixed point weighs no phase: the weighted fit
    # runs on the step-model path, on the sample trace's exact steps as well.
    table = PhaseExposureTransformer(64).fit_transform(load_sample_trace())
    options = dict(objective="duration", weights="variance", max_iter=100)
    regressor = _fit(table, **options)
    np.testing.assert_allclose(regressor.beta_, [5e-3, 2e-5, 8e-5], rtol=1e-6)
    assert regressor.coef_names_ == ("beta0", "beta1", "beta2")


def test_variance_weights_out_of_memory_raise():
    regressor = IterativeBetaRegressor(objective="duration", weights="variance")
    with pytest.raises(ValueError, match="in memory only"):
        regressor._fit_source(object())
