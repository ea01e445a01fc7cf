"""One core per estimator: every parameter live, one validation, one design.

The functional API and the estimators share their fit; these tests pin the
behaviours issue 11 found missing: damping under the step-count objective,
an unused ``y``, the transformer's correction reaching the regressor, the
functional API's parameter checks, and the design at fixed betas.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    EXPOSURE_COLUMNS,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    design_at_betas,
    estimate_betas_baseline,
    estimate_betas_iterative,
)
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.model_selection import TraceBlockSplit

BETA = (6e-3, 3e-5, 1e-4)
CHUNK = 256
#: How a default IterativeBetaRegressor sees a trace at fixed betas.
SETTINGS = {
    name: IterativeBetaRegressor().get_params()[name]
    for name in ("correction_mode", "objective")
}


@pytest.fixture(scope="module")
def trace():
    """A noise-free simulated trace, ~40 running requests."""
    return simulate_trace(
        1500,
        beta=BETA,
        chunk_size=CHUNK,
        max_num_seqs=64,
        arrival_rate=10.0,
        prompt_tokens=(600, 0.8),
        output_tokens=(120, 0.8),
        random_state=3,
    )


@pytest.fixture(scope="module")
def table(trace):
    return PhaseExposureTransformer(CHUNK).fit_transform(trace)


def test_damping_changes_the_step_count_path_not_the_solution(table):
    fits = {}
    for eta in (1.0, 0.5):
        model = IterativeBetaRegressor(damping=eta, tol=1e-10, max_iter=200)
        fits[eta] = model.fit(table)
    full, damped = fits[1.0], fits[0.5]
    assert full.converged_ and damped.converged_
    assert damped.n_iter_ > full.n_iter_
    # The first damped step covers half the first full one.
    start = full.history_.loc[0, ["beta0", "beta1", "beta2"]].to_numpy(float)
    first_full = full.history_.loc[1, ["beta0", "beta1", "beta2"]].to_numpy(float)
    first_damped = damped.history_.loc[1, ["beta0", "beta1", "beta2"]].to_numpy(float)
    np.testing.assert_allclose(
        first_damped - start, 0.5 * (first_full - start), rtol=1e-9
    )
    np.testing.assert_allclose(damped.beta_, full.beta_, rtol=1e-6)
    np.testing.assert_allclose(full.beta_, BETA, rtol=1e-3)


def test_step_count_objective_warns_about_an_unused_y(table):
    duration = table["duration"].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        IterativeBetaRegressor().fit(table, duration.copy())
    with pytest.warns(UserWarning, match="y given to fit differs"):
        IterativeBetaRegressor().fit(table, duration * 1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        IterativeBetaRegressor(objective="duration").fit(table, duration * 1.5)


def _pipeline(mode, **regressor):
    return make_pipeline(
        PhaseExposureTransformer(CHUNK, correction_mode=mode),
        IterativeBetaRegressor(**regressor),
    )


def test_transformer_correction_reaches_the_iterative_start(trace):
    # init_correction_mode=None: the start is the table's baseline design.
    options = dict(objective="duration", stopping="absolute", max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        end = _pipeline("end", **options).fit(trace)[-1]
        uniform = _pipeline("uniform", **options).fit(trace)[-1]
        explicit = _pipeline("end", init_correction_mode="uniform", **options)
        explicit = explicit.fit(trace)[-1]
    start = ["beta0", "beta1", "beta2"]
    assert not np.allclose(end.history_.loc[0, start], uniform.history_.loc[0, start])
    assert not np.allclose(end.beta_, uniform.beta_, rtol=1e-6)
    # An explicit init_correction_mode starts from its own placement; a
    # table made with another (not the default "end") would be ignored: an
    # error (issue 17).
    np.testing.assert_allclose(explicit.beta_, uniform.beta_, rtol=1e-12)
    with pytest.raises(ValueError, match="correction_mode='uniform'"):
        _pipeline("uniform", init_correction_mode="end", **options).fit(trace)


def test_grid_search_over_the_transformer_correction(trace):
    search = GridSearchCV(
        _pipeline("end", objective="duration", max_iter=3),
        {"phaseexposuretransformer__correction_mode": ["end", "none"]},
        cv=TraceBlockSplit(3),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(trace)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and scores[0] != scores[1]


@pytest.mark.parametrize("value", [-1.0, "bogus", np.inf, True])
def test_functional_time_resolution_is_validated(trace, value):
    for fit in (estimate_betas_baseline, estimate_betas_iterative):
        with pytest.raises(ValueError, match="'time_resolution' parameter of"):
            fit(trace, chunk_size=CHUNK, time_resolution=value)


@pytest.mark.parametrize("value", [0, -64, 2.5, "64"])
def test_chunk_size_error_starts_with_the_published_phrase(trace, value):
    for fit in (estimate_betas_baseline, estimate_betas_iterative):
        with pytest.raises(ValueError, match=r"^chunk_size must be positive: "):
            fit(trace, chunk_size=value)


def test_functional_errors_name_the_published_arguments(trace):
    cases = {
        "damping_eta": 1.5,
        "max_outer_iters": 0,
        "min_duration_sec": -1.0,
        "init_via_baseline_correction": "beta_informed",
        "prefill_correction_mode": "bogus",
    }
    for argument, value in cases.items():
        match = f"'{argument}' parameter of estimate_betas_iterative"
        with pytest.raises(ValueError, match=match):
            estimate_betas_iterative(trace, chunk_size=CHUNK, **{argument: value})


def test_functional_convergence_warning_names_the_published_arguments(trace):
    with pytest.warns(ConvergenceWarning, match="increase max_outer_iters") as caught:
        estimate_betas_iterative(trace, chunk_size=CHUNK, max_outer_iters=1)
    assert "damping_eta < 1" in str(caught[0].message)
    assert caught[0].filename == __file__


def test_exposure_table_schema(table, trace):
    assert tuple(table.columns) == EXPOSURE_COLUMNS
    assert EXPOSURE_COLUMNS[-1] == "instance_id"
    duration = (trace["t_end"] - trace["t_start"]).to_numpy()
    np.testing.assert_allclose(table["duration"], duration, rtol=1e-12)
    assert (table["is_prefill"] == (trace["phase_type"] == "prefill")).all()
    assert (table["chunk_size"] == CHUNK).all() and (table["token_budget"] == 0).all()


def test_design_at_true_betas_predicts_the_durations(table):
    # At the true betas of a noise-free trace every phase holds its N_i steps,
    # so the predicted durations are the observed ones.
    view = design_at_betas(table, BETA, **SETTINGS)
    np.testing.assert_allclose(view.design @ BETA, table["duration"], rtol=1e-6)
    assert np.all(view.p_eff <= view.p_pf_full + 1e-9)
    # Step times are those of the betas: 1 / density = b0 + b1 p_eff + b2 p_dec.
    busy = view.step_density > 0
    step_time = BETA[0] + BETA[1] * view.p_eff + BETA[2] * view.p_dec
    np.testing.assert_allclose(1 / view.step_density[busy], step_time[busy], rtol=1e-9)


def test_predict_is_the_design_at_the_fitted_betas(table):
    model = IterativeBetaRegressor().fit(table)
    view = design_at_betas(table, model.beta_, **SETTINGS)
    np.testing.assert_array_equal(model.predict(table), view.design @ model.beta_)
    # The time unit does not matter: the same trace in milliseconds.
    ms = table.copy()
    for name in ("duration", "t_start", "t_end"):
        ms[name] *= 1e3
    ms["step_density"] /= 1e3
    in_ms = design_at_betas(ms, np.asarray(model.beta_) * 1e3, **SETTINGS)
    np.testing.assert_allclose(in_ms.design, view.design, rtol=1e-9)
    np.testing.assert_allclose(in_ms.step_density * 1e3, view.step_density, rtol=1e-9)


def test_design_at_betas_rejects_unknown_options(table):
    with pytest.raises(ValueError, match="objective"):
        design_at_betas(table, BETA, correction_mode="end", objective="steps")
    with pytest.raises(ValueError, match="correction_mode"):
        design_at_betas(table, BETA, correction_mode="last", objective="duration")
    with pytest.raises(ValueError, match="12 columns"):
        design_at_betas(pd.DataFrame(table.to_numpy()[:, :3]), BETA, **SETTINGS)
