"""Step models beyond three coefficients: the engine's ground truth, the
exposures, the fits and the choice of the model by cross-validation."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    block_bootstrap_ci,
    design_at_betas,
)
from sklearn_beta.core._feature_fixed_point import FeatureDurations
from sklearn_beta.core._schema import (
    EXPOSURE_COLUMNS,
    read_timeline,
    request_prompts_of,
    step_design,
)
from sklearn_beta.core._step_features import STEP_MODELS, attention_pressure
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine import _loop
from sklearn_beta.metrics import get_scorer
from sklearn_beta.model_selection import (
    TraceBlockSplit,
    TraceContextRegressor,
    one_standard_error_rule,
)
from sklearn_beta.replay import make_replay_scorer, replay_trace

ATTENTION = STEP_MODELS["attention"]
# H100-like costs with an attention term (4e-9 s per token x context token)
# and a KV-read term (2e-8 s per context token of a decode).
BETA_ATTENTION = np.array([5e-3, 2e-5, 4e-9, 8e-5, 2e-8])
BETA_PUBLISHED = np.array([5e-3, 2e-5, 8e-5])
CHUNK = 256
LENGTHS = dict(prompt_tokens=(1024, 0.8), output_tokens=(200, 0.8))


def _simulate(n, *, beta=BETA_ATTENTION, step_model="attention", **kwargs):
    options = dict(
        beta=beta,
        step_model=step_model,
        chunk_size=CHUNK,
        max_num_seqs=256,
        arrival_rate=10.0,
        random_state=0,
        **LENGTHS,
    )
    options.update(kwargs)
    return simulate_trace(n, **options)


def _fit(phases, token_budget=None, **regressor):
    options = dict(objective="duration", damping=0.5, max_iter=100)
    options.update(regressor)
    return make_pipeline(
        PhaseExposureTransformer(
            CHUNK, step_model="attention", token_budget=token_budget
        ),
        IterativeBetaRegressor("beta_informed", **options),
    ).fit(phases)


def _step_features(steps: pd.DataFrame) -> np.ndarray:
    return np.column_stack(
        [
            np.ones(len(steps)),
            steps["prefill_tokens"],
            steps["prefill_attention"],
            steps["decode_tokens"],
            steps["decode_context"],
        ]
    )


def _step_time_error(beta_hat, steps) -> float:
    """Mean relative error of the fitted step times over the true steps."""
    features = _step_features(steps)
    true = features @ BETA_ATTENTION
    return float(np.mean(np.abs(features @ beta_hat - true) / true))


# --- the engine's ground truth ------------------------------------------------


def test_engine_step_features_match_an_independent_count():
    # Every step's A_p, C_d and B rebuilt request by request from the engine's
    # per-request times: the j-th prefill step of a request gets min(C, left)
    # tokens, its k-th decode step reads P + k - 1 tokens.
    chunk = 64
    phases, steps, truth = simulate_trace(
        150,
        beta=BETA_ATTENTION,
        step_model="attention",
        chunk_size=chunk,
        max_num_seqs=16,
        arrival_rate=30.0,
        prompt_tokens=(200, 0.8),
        output_tokens=(40, 0.8),
        random_state=3,
        return_steps=True,
        return_truth=True,
    )
    start = steps["t_start"].to_numpy()
    attention = np.zeros(len(steps))
    context = np.zeros(len(steps))
    batch = np.zeros(len(steps))
    for row in truth.itertuples():
        first = np.searchsorted(start, row.scheduled)
        last_prefill = np.searchsorted(start, row.first_token) - 1
        n_prefill = last_prefill - first + 1
        grants = np.minimum(chunk, row.prompt_tokens - chunk * np.arange(n_prefill))
        assert grants[-1] > 0 and grants.sum() == row.prompt_tokens
        attention[first : last_prefill + 1] += grants * (row.prompt_tokens + grants / 2)
        end = np.searchsorted(start, row.last_token)
        k = np.arange(1, end - last_prefill)
        context[last_prefill + 1 : end] += row.prompt_tokens + k - 1
        batch[first:end] += 1
    np.testing.assert_array_equal(steps["prefill_attention"], attention)
    np.testing.assert_array_equal(steps["decode_context"], context)
    np.testing.assert_array_equal(steps["batch_size"], batch)
    # noise-free steps last exactly the model's time
    duration = (steps["t_end"] - steps["t_start"]).to_numpy()
    np.testing.assert_allclose(
        _step_features(steps) @ BETA_ATTENTION, duration, rtol=1e-9
    )


def test_numba_and_numpy_loops_agree_on_a_step_model(monkeypatch):
    pytest.importorskip("numba")
    params = dict(
        noise=0.05,
        token_budget=1024,
        num_gpu_blocks=3000,
        return_steps=True,
        step_model=["steps", "prefill_attention", "decode_context", "batch_size"],
        beta=[4e-3, 5e-9, 3e-8, 2e-5],
    )
    monkeypatch.setattr(_loop, "BACKEND", "numba")
    compiled = _simulate(400, **params)
    monkeypatch.setattr(_loop, "BACKEND", "numpy")
    plain = _simulate(400, **params)
    for got, want in zip(compiled, plain, strict=True):
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert compiled[1]["batch_size"].max() > 1


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_published_step_model_is_bit_identical(noise):
    options = dict(
        beta=BETA_PUBLISHED,
        chunk_size=64,
        max_num_seqs=32,
        arrival_rate=20.0,
        noise=noise,
        random_state=0,
        token_budget=512,
    )
    default = simulate_trace(500, **options)
    named = simulate_trace(500, step_model="published", **options)
    pd.testing.assert_frame_equal(default, named, check_exact=True)
    # the same three features as a list run the six-coefficient path
    listed = simulate_trace(
        500, step_model=["steps", "prefill_tokens", "decode_tokens"], **options
    )
    pd.testing.assert_frame_equal(default, listed, check_exact=True)
    table = PhaseExposureTransformer(64).fit_transform(default)
    assert list(table.columns) == list(EXPOSURE_COLUMNS)
    again = PhaseExposureTransformer(64, step_model="published").fit_transform(default)
    pd.testing.assert_frame_equal(table, again, check_exact=True)


def test_replay_runs_the_simulators_step_model():
    phases = _simulate(400, arrival_rate=15.0, max_num_seqs=32, noise=0.0)
    replayed = replay_trace(
        phases,
        BETA_ATTENTION,
        step_model="attention",
        chunk_size=CHUNK,
        max_num_seqs=32,
    )
    np.testing.assert_array_equal(
        replayed["decode_end"], replayed["observed_decode_end"]
    )
    published = replay_trace(
        phases, BETA_ATTENTION[[0, 1, 3]], chunk_size=CHUNK, max_num_seqs=32
    )
    assert np.all(published["decode_end"] <= published["observed_decode_end"])
    assert np.any(published["decode_end"] < published["observed_decode_end"])


def test_bad_step_models_and_betas_raise():
    with pytest.raises(ValueError, match="unknown feature"):
        _simulate(10, step_model=["steps", "kv_reads"], beta=[1e-3, 1e-6])
    with pytest.raises(ValueError, match="one per feature"):
        _simulate(10, beta=BETA_PUBLISHED)
    with pytest.raises(ValueError, match="zero-length"):
        _simulate(10, beta=[0, 1e-5, 0, 0, 0])
    with pytest.raises(ValueError, match="trained-physics"):
        PhaseExposureTransformer(step_model="trained-physics").fit_transform(
            _simulate(20, beta=BETA_PUBLISHED, step_model="published")
        )


# --- exposures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def moderate():
    """12 000 phases, noise-free, ~50 requests running."""
    return _simulate(6000, noise=0.0, return_steps=True)


def _true_exposures(phases, steps):
    """Each phase's sum of every feature over the steps inside it."""
    cum = np.vstack([np.zeros(5), np.cumsum(_step_features(steps), axis=0)])
    start = steps["t_start"].to_numpy()
    first = np.searchsorted(start, phases["t_start"].to_numpy())
    last = np.searchsorted(start, phases["t_end"].to_numpy())
    return cum[last] - cum[first]


def test_exposures_at_the_true_betas_are_the_steps_features(moderate):
    # At the engine's betas the fixed point's design sums each feature over
    # the steps each phase ran: the decode context from the cumulative steps,
    # the partial chunks' attention where the last steps ran.
    phases, steps = moderate
    table = (
        PhaseExposureTransformer(CHUNK, step_model="attention")
        .fit_transform(phases)
        .to_numpy()
    )
    problem = FeatureDurations(
        read_timeline(table), request_prompts_of(table), ATTENTION, "beta_informed"
    )
    for _ in range(3):
        design = problem.reweighted(BETA_ATTENTION)
    true = _true_exposures(phases, steps)
    # per phase within 0.1 % of the column's largest value (measured 6e-4:
    # the last prefill step's place within a segment is interpolated)
    scale = np.abs(true).max(axis=0)
    np.testing.assert_array_less(np.abs(design - true).max(axis=0) / scale, 1e-3)
    # in total within 0.05 % (measured: prefill tokens -4.2e-4)
    np.testing.assert_allclose(design.sum(axis=0), true.sum(axis=0), rtol=5e-4)
    # the transformer's own exposures (phase-local step densities) are the
    # baseline's approximation: near in total for the decodes' own features
    # (measured within 1.5 %), off for the prefills they overlap (x 2)
    baseline = step_design(table)
    decode = phases["phase_type"].to_numpy() == "decode"
    total = baseline[decode].sum(axis=0) / true[decode].sum(axis=0)
    np.testing.assert_allclose(total[[0, 3, 4]], 1.0, rtol=0.02)
    assert total[1] > 1.5


# --- fits with ground truth -----------------------------------------------------


def test_noise_free_attention_traces_are_recovered_exactly(moderate):
    phases, _ = moderate
    regressor = _fit(phases)[-1]
    assert regressor.converged_
    assert regressor.step_features_ == ATTENTION
    np.testing.assert_allclose(regressor.beta_, BETA_ATTENTION, rtol=1e-4)
    assert list(regressor.history_.columns[1:6]) == [f"beta_{f}" for f in ATTENTION]
    assert regressor.beta_ci_.shape == (5, 2)


def test_heavy_load_noise_free_exact_with_damping():
    # ~170 running requests: the undamped fixed point diverges (beta0 and
    # the decode context driven to 0), damping 0.5 converges to the truth.
    phases = _simulate(6000, arrival_rate=14.0, noise=0.0)
    damped = _fit(phases)[-1]
    assert damped.converged_
    np.testing.assert_allclose(damped.beta_, BETA_ATTENTION, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        undamped = _fit(phases, damping=1.0)[-1]
    assert not undamped.converged_


@pytest.fixture(scope="module")
def heavy_budget():
    """12 000 phases, noise-free, ~170 running, a 2048-token budget caps 17 %
    of the steps."""
    return _simulate(
        6000, arrival_rate=14.0, token_budget=2048, noise=0.0, return_steps=True
    )


def test_capped_attention_pressure_is_the_engines(heavy_budget):
    # On every segment where no prefill ends, the attention pressure is the
    # simulator's per-step attention: on a capped one the first started
    # prefills get the chunks, the next one the rest, the others nothing.
    phases, steps = heavy_budget
    table = PhaseExposureTransformer(
        CHUNK, step_model="attention", token_budget=2048
    ).fit_transform(phases)
    timeline = read_timeline(table.to_numpy())
    tg = timeline.trace_grid
    pressure = attention_pressure(timeline, request_prompts_of(table.to_numpy()))
    middle = 0.5 * (steps["t_start"] + steps["t_end"]) - phases["t_start"].min()
    segment = np.searchsorted(tg.grid, middle.to_numpy()) - 1
    inside = (segment >= 0) & (segment < tg.n_segments)
    per_step = steps["prefill_attention"].to_numpy()[inside]
    segment = segment[inside]
    ends = np.zeros(tg.n_segments, dtype=bool)
    ends[tg.end_idx[timeline.is_prefill] - 1] = True
    check = ~ends[segment]
    capped = timeline.budget_excess[segment] > 0
    assert np.count_nonzero(check & capped) > 200
    np.testing.assert_allclose(pressure[segment[check]], per_step[check], rtol=1e-12)


def test_heavy_budget_noise_free_exact(heavy_budget):
    # Capped steps serve the first started prefills; the capped prefills run
    # more steps than ceil(P / C) and their last chunks are not P - C (N - 1).
    # With those modelled the fit is exact; the attention pressure scaled by
    # the capped share of tokens (the previous model) was 0.9-8 % off here.
    phases, _ = heavy_budget
    regressor = _fit(phases, token_budget=2048)[-1]
    assert regressor.converged_
    np.testing.assert_allclose(regressor.beta_, BETA_ATTENTION, rtol=1e-4)


@pytest.mark.parametrize(
    "load, token_budget, n_requests",
    [("light", None, 6000), ("moderate", None, 6000), ("moderate", 2048, 20000)],
)
def test_noisy_attention_traces_recovered_within_one_percent(
    load, token_budget, n_requests
):
    # The errors are scatter, shrinking like 1 / sqrt(n): over 8 seeds their
    # means are within 0.2 % (0.65 % on the attention pair at 6000 requests
    # under the budget) and their standard deviations, decode context last,
    # are 0.02-0.48 % at light load (6000 requests), 0.16-1.24 % at moderate
    # load (6000) and 0.08-0.88 % under the budget at 20 000 requests
    # (0.17-1.25 % at 6000, where this seed's decode context is 1.07 % off).
    rate = {"light": 4.0, "moderate": 10.0}[load]
    phases, steps = _simulate(
        n_requests,
        arrival_rate=rate,
        token_budget=token_budget,
        noise=0.02,
        random_state=1,
        return_steps=True,
    )
    if token_budget is not None:  # the budget caps some steps
        capped = steps["prefill_tokens"] + steps["decode_tokens"] == token_budget
        assert capped.any()
    with warnings.catch_warnings():
        # at light load the relative stopping rule keeps moving by 1e-5
        warnings.simplefilter("ignore")
        regressor = _fit(phases, token_budget=token_budget)[-1]
    errors = regressor.beta_ / BETA_ATTENTION - 1
    np.testing.assert_array_less(np.abs(errors), 0.01)
    assert _step_time_error(regressor.beta_, steps) < 0.005
    # the baseline's phase-local densities cannot: off by tens of percents
    baseline = make_pipeline(
        PhaseExposureTransformer(
            CHUNK, step_model="attention", token_budget=token_budget
        ),
        BaselineBetaRegressor(confidence_level=None),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        beta = baseline.fit(phases)[-1].beta_
    assert np.max(np.abs(beta / BETA_ATTENTION - 1)) > 0.2


def test_heavy_noisy_step_time_error_below_one_percent():
    # At heavy load the decode tokens and the decode context move together
    # (condition number ~100): their split is off by up to 3 % under 2 %
    # step noise, the step times they predict by well under 1 %. It is
    # scatter, not bias: over 8 seeds the means are within 0.2 % (0.53 % on
    # the decode context, 0.3 standard errors), and the standard deviations
    # of the decode tokens and context fall like 1 / sqrt(n), 3.4 and 7.0 %
    # at 1500 requests, 1.7 and 3.0 % at 6000, 0.6 and 1.7 % at 24 000.
    phases, steps = _simulate(
        6000, arrival_rate=14.0, noise=0.02, random_state=1, return_steps=True
    )
    regressor = _fit(phases)[-1]
    assert regressor.converged_
    np.testing.assert_array_less(np.abs(regressor.beta_ / BETA_ATTENTION - 1), 0.03)
    assert _step_time_error(regressor.beta_, steps) < 0.005


@pytest.mark.parametrize(
    "rate, token_budget, published_min, attention_max",
    [
        # measured: e2e 15.2 % against 0.39 %, 15.2 % against 0.40 %, 52.8 %
        # against 6.9 % (TTFT 68 % against 7 %, 88 % against 17 %)
        (4.0, None, 0.10, 0.01),
        (4.0, 2048, 0.10, 0.01),
        (10.0, None, 0.30, 0.10),
    ],
)
def test_published_fit_shows_model_form_error_in_held_out_replay(
    rate, token_budget, published_min, attention_max
):
    # Saturated traces (14 requests/s) are left out: there a held-out replay
    # of either model is off by 70-85 % e2e, the queue amplifying any error.
    phases = _simulate(
        2000, noise=0.02, max_num_seqs=128, arrival_rate=rate, token_budget=token_budget
    )
    scorer = make_replay_scorer(phases, "e2e", max_num_seqs=128)
    pipe = make_pipeline(
        PhaseExposureTransformer(CHUNK, token_budget=token_budget),
        IterativeBetaRegressor(
            "beta_informed", objective="duration", damping=0.5, max_iter=100
        ),
    )
    search = GridSearchCV(
        pipe,
        {"phaseexposuretransformer__step_model": ["published", "attention"]},
        cv=TraceBlockSplit(4),
        scoring=scorer,
        refit=False,
    )
    with warnings.catch_warnings():
        # the moderate trace's folds stop at max_iter, 1e-5 from settled
        warnings.simplefilter("ignore")
        search.fit(phases)
    published, attention = -search.cv_results_["mean_test_score"]
    assert published > published_min
    assert attention < attention_max
    assert published > 3 * attention


def test_step_model_paths_that_cannot_fit_raise():
    phases = _simulate(300, noise=0.0)
    table = PhaseExposureTransformer(CHUNK, step_model="attention").fit_transform(
        phases
    )
    with pytest.raises(ValueError, match="init_correction_mode"):
        IterativeBetaRegressor(objective="duration", init_correction_mode="end").fit(
            table
        )
    # a published fit refuses an attention table and vice versa
    published = PhaseExposureTransformer(CHUNK).fit_transform(phases)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = BaselineBetaRegressor().fit(published)
    with pytest.raises(ValueError, match="features"):
        fitted.predict(table)


def test_baseline_fits_a_list_of_features_with_named_diagnostics():
    phases = _simulate(1500, noise=0.0, beta=BETA_PUBLISHED, step_model="published")
    features = ["steps", "prefill_tokens", "decode_tokens", "batch_size"]
    transformer = PhaseExposureTransformer(CHUNK, step_model=features)
    table = transformer.fit_transform(phases)
    assert list(transformer.get_feature_names_out()[12:]) == [
        "step_features",
        "request_prompt",
        "batch_size_exposure",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        regressor = BaselineBetaRegressor().fit(table)
    assert regressor.step_features_ == tuple(features)
    assert regressor.beta_.shape == (4,) and regressor.beta_ci_.shape == (4, 2)
    assert set(regressor.diagnostics_["mean_exposures"]) == set(features)
    names = set(regressor.diagnostics_["not_identified"])
    names |= set(regressor.diagnostics_["at_zero_bound"])
    assert names <= set(features)


def test_bootstrap_and_design_at_betas_with_a_step_model():
    phases = _simulate(600, noise=0.02, max_num_seqs=64)
    table = PhaseExposureTransformer(CHUNK, step_model="attention").fit_transform(
        phases
    )
    ci = block_bootstrap_ci(
        BaselineBetaRegressor(), table, n_resamples=5, random_state=0
    )
    assert ci.shape == (5, 2) and np.all(ci[:, 0] <= ci[:, 1])
    with pytest.raises(ValueError, match="published step model"):
        design_at_betas(
            table, BETA_ATTENTION, correction_mode="end_inside", objective="duration"
        )


# --- model comparison -----------------------------------------------------------


CONTEXT = ("steps", "prefill_tokens", "decode_tokens", "decode_context")
#: The true models of benchmarks/step_model_cv.py, its candidates simplest first.
TRUTHS = {
    "published": ("published", BETA_PUBLISHED),
    "context": (list(CONTEXT), np.array([5e-3, 2e-5, 8e-5, 2e-8])),
    "attention": ("attention", BETA_ATTENTION),
}


@pytest.mark.parametrize(
    "rate, token_budget, truth, seed",
    [
        # four of the benchmark's twenty traces (20 of 20 picked right)
        (14.0, 2048, "published", 0),  # was "context" before the capped counts
        (14.0, 2048, "context", 0),
        (14.0, None, "published", 1),
        (4.0, None, "attention", 0),
        # moderate load (~50 running)
        (10.0, None, "attention", 1),
        (10.0, None, "published", 2),
    ],
)
def test_cross_validation_picks_the_true_step_model(rate, token_budget, truth, seed):
    step_model, beta = TRUTHS[truth]
    phases = _simulate(
        2000,
        beta=beta,
        step_model=step_model,
        arrival_rate=rate,
        token_budget=token_budget,
        noise=0.02,
        random_state=seed,
        max_num_seqs=128,
    )
    pipe = make_pipeline(
        PhaseExposureTransformer(CHUNK, token_budget=token_budget),
        IterativeBetaRegressor(
            "beta_informed", objective="duration", damping=0.5, max_iter=100
        ),
    )
    param = "estimator__phaseexposuretransformer__step_model"
    search = GridSearchCV(
        TraceContextRegressor(pipe, trace=phases),
        {param: [TRUTHS[name][0] for name in ("published", "context", "attention")]},
        cv=TraceBlockSplit(4),
        scoring=get_scorer("neg_duration_mape"),
        refit=one_standard_error_rule(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(phases)
    assert search.best_params_ == {param: step_model}


def test_one_standard_error_rule_prefers_the_simpler_model_in_ties():
    results = {
        "params": [
            {"m__step_model": "attention"},
            {"m__step_model": "published"},
            {"m__step_model": ["steps", "decode_tokens"]},
        ],
        "mean_test_score": [-0.010, -0.0104, -0.05],
        "std_test_score": [0.001, 0.001, 0.001],
        **{f"split{i}_test_score": [0, 0, 0] for i in range(4)},
    }
    # SE = 0.001 / 2: published is within it, the two-feature model is not
    assert one_standard_error_rule()(results) == 1
    results["mean_test_score"] = [-0.010, -0.0106, -0.05]
    assert one_standard_error_rule()(results) == 0
