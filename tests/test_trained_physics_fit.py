"""Trained-physics fits: the transformer builds the identifiable columns, the
regressors fit them non-negatively, and the export reproduces the true BLIS
step times of a trace simulated with a trained-physics step model (issue 20
item 3)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
)
from sklearn_beta.core._model_config import read_model_description
from sklearn_beta.core._step_features import STEP_FEATURES
from sklearn_beta.core._trained_physics import (
    IDENTIFIABLE_FEATURES,
    basis_constants,
    basis_map,
    blis_step_time,
    identifiable_map,
    identifiable_map_of,
    to_blis_betas,
    trained_physics_basis,
)
from sklearn_beta.datasets import simulate_trace

QWEN = "tests/data/qwen3-14b/config.json"
CHUNK = 256
# A trained-physics truth (BLIS's order, microseconds): every identifiable
# coefficient positive, the constant all on b[6].
TRUE_BLIS = np.array([0.6, 0.9, 0.0, 0.0, 0.0, 40.0, 4000.0, 0.0, 2.0, 3.0])


@pytest.fixture(scope="module")
def deployment():
    return read_model_description(QWEN, gpu="H100")


@pytest.fixture(scope="module")
def trace(deployment):
    # The simulator runs step features: the truth through basis_map, in s.
    beta = basis_map(deployment).T @ TRUE_BLIS * 1e-6
    return simulate_trace(
        300,
        beta=beta,
        step_model=STEP_FEATURES,
        chunk_size=CHUNK,
        max_num_seqs=64,
        arrival_rate=8.0,
        prompt_tokens=(1024, 0.8),
        output_tokens=(120, 0.8),
        random_state=3,
        return_steps=True,
    )


def _transformer(**kwargs):
    options = dict(step_model="trained-physics", model_config=QWEN, gpu="H100")
    return PhaseExposureTransformer(CHUNK, **{**options, **kwargs})


def test_identifiable_map_from_the_table_constants(deployment):
    # What the table carries rebuilds the map the model gives.
    np.testing.assert_allclose(
        identifiable_map_of(*basis_constants(deployment)),
        identifiable_map(deployment),
        rtol=1e-15,
    )


def test_table_columns_are_the_identifiable_design(trace, deployment):
    phases, _ = trace
    table = _transformer().fit_transform(phases)
    features = table[
        [
            "n_steps",
            "prefill_exposure",
            "prefill_attention_exposure",
            "decode_exposure",
            "decode_context_exposure",
            "batch_size_exposure",
        ]
    ].to_numpy()
    regressor = BaselineBetaRegressor().fit(table)
    # (partial-chunk corrections leave some prefill exposures negative, which
    # trained_physics_design refuses: the map itself is the oracle)
    expected = features @ identifiable_map(deployment).T @ regressor.beta_
    np.testing.assert_allclose(regressor.predict(table), expected, rtol=1e-12)
    assert list(table.columns[-3:]) == ["tp_token_us", "tp_attention_us", "tp_kv_us"]


@pytest.mark.parametrize("objective", ["duration", "step_count"])
def test_iterative_fit_recovers_blis_step_times(trace, deployment, objective):
    phases, steps = trace
    model = make_pipeline(_transformer(), IterativeBetaRegressor(objective=objective))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(phases)
    regressor = model[-1]
    assert regressor.coef_names_ == IDENTIFIABLE_FEATURES
    assert np.all(regressor.beta_ >= 0)
    exported = to_blis_betas(regressor.beta_, model[0].model_description_)
    basis = trained_physics_basis(
        deployment,
        steps["prefill_tokens"],
        steps["prefill_attention"],
        steps["decode_tokens"],
        steps["decode_context"],
        steps["batch_size"],
    )
    truth = blis_step_time(basis, TRUE_BLIS)
    estimate = blis_step_time(basis, exported.beta_coeffs)
    # noise-free trace: the step times of every simulated step, to 1e-4
    np.testing.assert_allclose(estimate, truth, rtol=1e-4)
    identifiable = [0, 1, 6, 5, 8, 9]
    np.testing.assert_allclose(
        np.asarray(exported.beta_coeffs)[identifiable],
        TRUE_BLIS[identifiable],
        rtol=1e-2,
    )
    assert set(regressor.fixed_coefficients_) == {
        "tp_allreduce",
        "per_moe_layer",
        "weights",
        "per_layer",
    }
    assert regressor.fixed_coefficients_ == exported.fixed


def test_predict_refuses_a_table_of_another_step_model(trace):
    phases, _ = trace
    six = PhaseExposureTransformer(CHUNK, step_model=list(STEP_FEATURES))
    plain = BaselineBetaRegressor().fit(six.fit_transform(phases).to_numpy())
    tp_table = _transformer().fit_transform(phases).to_numpy()
    regressor = BaselineBetaRegressor().fit(tp_table)
    # the same six features, read in another basis: refused both ways
    with pytest.raises(ValueError, match="features"):
        plain.predict(tp_table)
    with pytest.raises(ValueError, match="features"):
        regressor.predict(six.fit_transform(phases).to_numpy())
    assert regressor.fixed_coefficients_


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model_config=None), "needs model_config"),
        (dict(gpu=None), "needs gpu"),
        (dict(model_config=None, gpu=None), "model_config and gpu"),
        (dict(step_model="published"), "model_config, gpu"),
        (dict(step_model="attention", model_config=None), "gpu describe"),
        (dict(tensor_parallelism=3), "tp"),
    ],
)
def test_missing_or_unused_deployment_raises(trace, kwargs, match):
    phases, _ = trace
    with pytest.raises(ValueError, match=match):
        _transformer(**kwargs).fit(phases)
