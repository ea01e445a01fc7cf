"""Confidence intervals, trust warnings and the decode token convention."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    block_bootstrap_ci,
    estimate_betas_baseline,
    estimate_betas_iterative,
)
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.exceptions import UncertaintyWarning
from sklearn_beta.trust._uncertainty import (
    bartlett_covariance,
    long_run_covariance,
    sandwich_covariance,
    time_blocks,
)

# The light-load scenario of benchmarks/accuracy.py, on a smaller engine.
BETA = (6e-3, 3e-5, 1e-4)
LIGHT = dict(
    chunk_size=512,
    max_num_seqs=64,
    arrival_rate=7.0,
    prompt_tokens=(1024, 0.8),
    output_tokens=(200, 0.8),
)
NOISE = 0.05


def light_trace(n_requests=1000, *, seed=0, beta=BETA, noise=NOISE, **kwargs):
    return simulate_trace(
        n_requests,
        beta=beta,
        noise=noise,
        random_state=seed,
        **(LIGHT | kwargs),
    )


def fit(phases, regressor=None, **transformer_options):
    model = make_pipeline(
        PhaseExposureTransformer(
            chunk_size=transformer_options.pop("chunk_size", LIGHT["chunk_size"]),
            **transformer_options,
        ),
        regressor if regressor is not None else IterativeBetaRegressor(),
    )
    return model.fit(phases)[-1]


# --- The covariance ---------------------------------------------------------


def _kernel_double_sum(scores, block_instance, weight):
    expected = np.zeros((scores.shape[1],) * 2)
    for b in range(scores.shape[0]):
        for c in range(scores.shape[0]):
            if block_instance[b] == block_instance[c]:
                expected += weight(abs(b - c)) * np.outer(scores[b], scores[c])
    return expected


def test_bartlett_covariance_is_the_bartlett_double_sum():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(23, 3))
    block_instance = np.repeat([0, 1, 2], [10, 6, 7])
    width = 4
    expected = _kernel_double_sum(
        scores, block_instance, lambda lag: max(1.0 - lag / width, 0.0)
    )
    got = bartlett_covariance(scores, block_instance, width)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_long_run_covariance_weighs_every_lag_in_reach_by_at_least_half():
    # L = 2 lags of overlap reach: Bartlett weights over a window of 6 blocks,
    # 1 - lag / 6, so lags 0..2 count at least 2/3 and lags up to 5 enter.
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(40, 3))
    block_instance = np.repeat([0, 1], [22, 18])
    expected = _kernel_double_sum(
        scores, block_instance, lambda lag: max(1.0 - lag / 6.0, 0.0)
    )
    got = long_run_covariance(scores, block_instance, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_sandwich_with_independent_rows_is_the_ols_covariance():
    # Homoscedastic independent noise, one row per block and no lag: the
    # sandwich must agree with sigma^2 (X'X)^-1.
    rng = np.random.default_rng(1)
    n, sigma = 20000, 0.3
    design = rng.uniform(1.0, 5.0, size=(n, 3))
    residual = rng.normal(scale=sigma, size=n)
    cov, _ = sandwich_covariance(
        design, residual, None, np.arange(n), np.zeros(n, dtype=int), 0
    )
    ols = sigma**2 * np.linalg.inv(design.T @ design)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), np.sqrt(np.diag(ols)), rtol=0.05)


def test_zero_design_column_gives_an_infinite_variance():
    rng = np.random.default_rng(2)
    design = np.column_stack(
        [rng.uniform(1, 2, 50), np.zeros(50), rng.uniform(size=50)]
    )
    cov, _ = sandwich_covariance(
        design, rng.normal(size=50), None, np.arange(50), np.zeros(50, dtype=int), 0
    )
    assert np.isinf(cov[1, 1])
    assert np.all(np.isfinite(cov[np.ix_([0, 2], [0, 2])]))


def test_time_blocks_never_join_instances():
    t_start = np.array([0.0, 1.0, 2.0, 0.0, 5.0, 9.0])
    t_end = t_start + 1.0
    instance = np.array([0, 0, 0, 1, 1, 1])
    block, block_instance, _ = time_blocks(t_start, t_end, instance)
    assert np.all(block_instance[block] == instance)
    assert np.all(np.diff(block[:3]) >= 0) and np.all(np.diff(block[3:]) > 0)


def test_time_blocks_lag_window_sees_interleaved_long_phases():
    # An exposure table interleaves each request's short prefill row with its
    # decode row. Past the duration sample size the lag window must still
    # reach the longest decodes (60 here, 10 % of the rows): blocks are at
    # most 0.5 long (half the median, or span / 4000), so over 100 lags.
    # Sampling every second row saw only the prefills: 1 lag.
    n = 40_000
    decode = np.where(np.random.default_rng(0).random(n // 2) < 0.2, 60.0, 1.0)
    duration = np.column_stack([np.full(n // 2, 0.1), decode]).ravel()
    t_start = np.repeat(np.linspace(0.0, 1000.0, n // 2), 2)
    _, _, n_lags = time_blocks(t_start, t_start + duration)
    assert n_lags >= 100


# --- Intervals on simulated traces ------------------------------------------


def _covered(level, seeds, n_requests=600):
    """Covered (seed, beta) pairs of the default estimator's intervals.

    The simulator's step noise has mean one: its betas are the mean
    step-time coefficients a least-squares fit estimates.
    """
    truth = np.asarray(BETA)
    hits = []
    for seed in seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UncertaintyWarning)
            model = fit(
                light_trace(n_requests, seed=seed),
                IterativeBetaRegressor(confidence_level=level),
            )
        hits.append((model.beta_ci_[:, 0] <= truth) & (truth <= model.beta_ci_[:, 1]))
    return np.mean(hits)


def test_intervals_cover_the_true_betas():
    # 12 seeds x 3 betas at 95 %: a calibrated interval covers 34 of 36 on
    # average; below 30 happens with probability < 1e-3.
    assert _covered(0.95, range(12)) >= 30 / 36


def test_too_narrow_intervals_are_caught():
    # The same check at a 30 % level must fail the 95 % bound by far: it
    # proves the test above can tell a broken interval.
    assert _covered(0.30, range(12)) < 0.6


def test_noise_free_trace_gives_tight_intervals_around_the_truth():
    model = fit(light_trace(300, noise=0.0))
    np.testing.assert_allclose(model.beta_ci_, np.column_stack([BETA, BETA]), rtol=1e-6)


def test_fleet_intervals_cover_the_truth():
    truth = np.asarray(BETA)
    hits = 0
    for seed in range(6):
        phases = light_trace(900, seed=seed, n_instances=3, arrival_rate=15.0)
        ci = fit(phases).beta_ci_
        hits += np.sum((ci[:, 0] <= truth) & (truth <= ci[:, 1]))
    # 95 % intervals: 17 of 18 expected; a 30 % interval would give ~6.
    assert hits >= 13


def test_interval_width_scales_with_the_level():
    phases = light_trace(600, seed=1)
    wide = fit(phases, IterativeBetaRegressor(confidence_level=0.99)).beta_ci_
    narrow = fit(phases, IterativeBetaRegressor(confidence_level=0.5)).beta_ci_
    assert np.all(wide[:, 1] - wide[:, 0] > 2.0 * (narrow[:, 1] - narrow[:, 0]))


def test_intervals_follow_the_time_unit():
    phases = light_trace(400, seed=2)
    in_ms = phases.assign(t_start=phases.t_start * 1e3, t_end=phases.t_end * 1e3)
    seconds = fit(phases).beta_ci_
    np.testing.assert_allclose(fit(in_ms).beta_ci_, 1e3 * seconds, rtol=1e-6)


@pytest.mark.parametrize("objective", ["step_count", "duration"])
def test_intervals_of_each_objective_hold_their_betas(objective):
    model = fit(light_trace(400, seed=3), IterativeBetaRegressor(objective=objective))
    assert np.all(model.beta_ci_[:, 0] <= model.beta_)
    assert np.all(model.beta_ <= model.beta_ci_[:, 1])


def test_confidence_level_none_disables_intervals():
    model = fit(light_trace(300), IterativeBetaRegressor(confidence_level=None))
    assert model.beta_ci_ is None
    assert fit(light_trace(300), BaselineBetaRegressor(None)).beta_ci_ is None


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, "high", True])
def test_invalid_confidence_level_raises(level):
    with pytest.raises(InvalidParameterError, match="confidence_level"):
        BaselineBetaRegressor(confidence_level=level).fit(np.ones((5, 3)))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_functional_results_carry_the_estimators_intervals():
    # The published defaults are the estimators' reference configurations;
    # their intervals come along in the diagnostics, which stay a superset.
    phases = light_trace(300, seed=4)
    names = ("beta0", "beta1", "beta2")
    iterative = estimate_betas_iterative(phases, chunk_size=512)
    reference = IterativeBetaRegressor(
        "beta_informed", objective="duration", stopping="absolute"
    )
    for result, regressor in [
        (iterative, reference),
        (estimate_betas_baseline(phases, chunk_size=512), BaselineBetaRegressor()),
    ]:
        ci = result.diagnostics["confidence_interval"]
        assert ci["level"] == 0.95
        model = fit(phases, regressor)
        np.testing.assert_allclose(result.beta, model.beta_, rtol=1e-12)
        np.testing.assert_allclose([ci[n] for n in names], model.beta_ci_, rtol=1e-12)
        assert np.all(model.beta_ci_[:, 0] < model.beta_)
        assert np.all(model.beta_ < model.beta_ci_[:, 1])


def test_design_only_table_gives_nan_intervals_with_a_warning():
    table = PhaseExposureTransformer(chunk_size=512).fit_transform(light_trace(200))
    with pytest.warns(UncertaintyWarning, match="full exposure table"):
        model = BaselineBetaRegressor().fit(table.iloc[:, :3], table["duration"])
    assert model.beta_ci_.shape == (3, 2) and np.all(np.isnan(model.beta_ci_))


def test_block_bootstrap_agrees_with_the_sandwich():
    # Validation of the analytic route against the resampling one, on a trace
    # long enough for a few dozen bootstrap blocks.
    table = PhaseExposureTransformer(chunk_size=512).fit_transform(
        light_trace(3000, seed=5)
    )
    sandwich = IterativeBetaRegressor().fit(table).beta_ci_
    boot = block_bootstrap_ci(
        IterativeBetaRegressor(), table, n_resamples=60, random_state=0
    )
    ratio = (boot[:, 1] - boot[:, 0]) / (sandwich[:, 1] - sandwich[:, 0])
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio


def test_block_bootstrap_is_reproducible_and_checks_its_input():
    table = PhaseExposureTransformer(chunk_size=512).fit_transform(light_trace(300))
    first = block_bootstrap_ci(
        BaselineBetaRegressor(), table, n_resamples=10, random_state=3
    )
    again = block_bootstrap_ci(
        BaselineBetaRegressor(), table, n_resamples=10, random_state=3
    )
    np.testing.assert_array_equal(first, again)
    with pytest.raises(ValueError, match="full exposure table"):
        block_bootstrap_ci(
            BaselineBetaRegressor(), table.iloc[:, :3], table["duration"]
        )
    with pytest.raises(ValueError, match="n_resamples"):
        block_bootstrap_ci(BaselineBetaRegressor(), table, n_resamples=1)
    with pytest.raises(ValueError, match="confidence_level"):
        block_bootstrap_ci(BaselineBetaRegressor(), table, confidence_level=1.0)


# --- Warnings ---------------------------------------------------------------


def test_healthy_trace_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = fit(light_trace(1000, seed=3))
    assert model.beta_ci_.shape == (3, 2)


def test_beta_at_zero_bound_warns():
    phases = light_trace(300, beta=(6e-3, 0.0, 1e-4), noise=0.0)
    with pytest.warns(UncertaintyWarning) as record:
        model = fit(phases)
    message = str(record[0].message)
    assert "beta1 = 0 " in message and "zero bound" in message
    assert "95% interval [0, " in message and "chunk_size" in message
    assert model.beta_ci_[1, 0] == 0.0


def test_wide_interval_warns():
    phases = light_trace(40, noise=0.3)
    with pytest.warns(UncertaintyWarning, match=r"beta\d = .* is uncertain") as rec:
        model = fit(phases)
    # The first wide-interval warning (a 40-request trace also warns that it
    # has no phase clear of its edges).
    message = next(str(w.message) for w in rec if "is uncertain" in str(w.message))
    wide = [k for k in range(3) if f"beta{k} = " in message][0]
    low, high = model.beta_ci_[wide]
    assert high - low > 0.5 * model.beta_[wide]
    assert f"[{low:.4g}, {high:.4g}]" in message
    assert "longer trace" in message


# --- Decode token convention (issue 10, point 7) ----------------------------


# Short outputs: an off-by-one step per decode phase then matters by percents
# (about 1 / D of the decode steps).
SHORT = dict(output_tokens=(16, 0.5))


def _counting_first_token(phases):
    out = phases.copy()
    out.loc[out["phase_type"] == "decode", "decode_tokens"] += 1
    return out


def test_decode_tokens_including_the_first_token_recover_the_betas():
    phases = _counting_first_token(light_trace(400, noise=0.0, **SHORT))
    right = fit(phases, decode_tokens_include_first=True)
    np.testing.assert_allclose(right.beta_, BETA, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncertaintyWarning)
        wrong = fit(phases, decode_tokens_include_first=False)
    assert np.max(np.abs(wrong.beta_ / BETA - 1.0)) > 0.03


def test_default_convention_is_the_simulators():
    phases = light_trace(400, noise=0.0, **SHORT)
    np.testing.assert_allclose(fit(phases).beta_, BETA, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncertaintyWarning)
        shifted = fit(phases, decode_tokens_include_first=True)
    assert np.max(np.abs(shifted.beta_ / BETA - 1.0)) > 0.03


def test_decode_phase_left_without_steps_raises():
    phases = light_trace(50, noise=0.0)
    decode = np.flatnonzero(phases["phase_type"] == "decode")[:2]
    phases.loc[phases.index[decode], "decode_tokens"] = 1
    with pytest.raises(ValueError, match="'decode_tokens' must be at least 2"):
        PhaseExposureTransformer(decode_tokens_include_first=True).fit_transform(phases)


def test_decode_convention_with_n_steps_column_warns():
    phases = light_trace(50, noise=0.0)
    phases["N_steps"] = np.where(
        phases["phase_type"] == "decode",
        phases["decode_tokens"],
        np.ceil(phases["prefill_tokens"] / 512),
    )
    transformer = PhaseExposureTransformer(512, decode_tokens_include_first=True)
    with pytest.warns(UserWarning, match="N_steps"):
        flagged = transformer.fit_transform(phases)
    plain = PhaseExposureTransformer(512).fit_transform(phases)
    np.testing.assert_array_equal(flagged.to_numpy(), plain.to_numpy())


def test_decode_convention_parameter_is_validated():
    with pytest.raises(InvalidParameterError, match="decode_tokens_include_first"):
        PhaseExposureTransformer(decode_tokens_include_first="yes").fit(light_trace(5))


def test_trust_warnings_point_at_the_callers_fit_in_memory_and_on_dask():
    import dask.dataframe as dd

    table = PhaseExposureTransformer(chunk_size=LIGHT["chunk_size"]).fit_transform(
        light_trace(40, noise=0.3)
    )
    for X in (table, dd.from_pandas(table, npartitions=1)):
        with pytest.warns(UncertaintyWarning, match="is uncertain") as record:
            IterativeBetaRegressor().fit(X)
        uncertain = [w for w in record if "is uncertain" in str(w.message)]
        assert uncertain[0].filename == __file__
