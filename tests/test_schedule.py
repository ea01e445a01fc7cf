"""ScheduleBetaRegressor: recovery on saturated client-side traces (issue 19).

Ground truth comes from the engine loop itself (the simulator's
``run_engine``): a client-side trace is its requests' send times, and the
first and last token times the engine produced, plus optional constant
reporting offsets.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    ScheduleBetaRegressor,
)
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine._loop import run_engine
from sklearn_beta.model_selection import RequestKFold, make_schedule_scorer
from sklearn_beta.replay import replay_errors, replay_trace

BETA = np.array([6e-3, 3e-5, 1.2e-4])
ENGINE = dict(chunk_size=256, token_budget=512, max_num_seqs=64)


def client_phases(send, first, last, prompt, output) -> pd.DataFrame:
    """The client's phase table: prefill ``[send, first token]``, decode
    ``[first token, last token]``, the send in an ``arrival`` column."""
    n = send.shape[0]
    is_prefill = np.tile([True, False], n)
    return pd.DataFrame(
        {
            "request_id": np.repeat(np.arange(n), 2),
            "phase_type": np.where(is_prefill, "prefill", "decode"),
            "t_start": np.ravel(np.column_stack((send, first))),
            "t_end": np.ravel(np.column_stack((first, last))),
            "prefill_tokens": np.where(is_prefill, np.repeat(prompt, 2), 0),
            "decode_tokens": np.where(is_prefill, 0, np.repeat(output, 2)),
            "arrival": np.repeat(send, 2),
        }
    )


def client_trace(
    n,
    *,
    rate,
    noise=0.0,
    seed=0,
    first_offset=0.0,
    last_offset=0.0,
    delay=0.0,
    **engine,
):
    """A client-side phase table: prefill ``[send, first token]``, decode
    ``[first token, last token]``, the send in an ``arrival`` column; and the
    engine's run with its step table. ``delay``: from the send to the
    engine's queue."""
    engine = {**ENGINE, **engine}
    rng = np.random.RandomState(seed)
    send = np.cumsum(rng.exponential(1.0 / rate, n))
    prompt = np.clip(np.rint(300 * np.exp(0.5 * rng.standard_normal(n))), 1, None)
    output = np.clip(np.rint(100 * np.exp(0.5 * rng.standard_normal(n))), 1, None)
    prompt, output = prompt.astype(np.int64), output.astype(np.int64)
    run = run_engine(
        send + delay,
        prompt,
        output,
        np.zeros(n, np.int64),
        beta=BETA,
        noise_normals=rng.standard_normal,
        noise=noise,
        record_steps=True,
        **engine,
    )
    first = run.prefill_end + first_offset
    last = run.decode_end + last_offset
    phases = client_phases(send, first, last, prompt, output)
    return phases, run


def waiting_queue(run, send) -> int:
    """Most requests sent and not yet admitted at once."""
    times = np.concatenate((send, run.admitted))
    delta = np.repeat([1, -1], send.shape[0])
    order = np.lexsort((delta, times))
    return int(np.max(np.cumsum(delta[order])))


@pytest.fixture(scope="module")
def saturated():
    return client_trace(2000, rate=40.0)


@pytest.fixture(scope="module")
def noisy():
    return client_trace(3000, rate=40.0, noise=0.02, seed=1)


def test_saturated_trace_binds_every_limit(saturated):
    # The trace is what the test claims: hundreds waiting, the batch at
    # max_num_seqs, steps filling the token budget.
    phases, run = saturated
    send = phases["arrival"].to_numpy()[0::2]
    assert waiting_queue(run, send) > 400  # 482
    assert run.step_running.max() == ENGINE["max_num_seqs"]
    tokens = run.step_prefill_tokens + run.step_decode_tokens
    assert np.mean(tokens == ENGINE["token_budget"]) > 0.1  # 16 % of steps


def test_noise_free_saturated_exact(saturated):
    phases, _ = saturated
    model = ScheduleBetaRegressor(**ENGINE).fit(phases)
    np.testing.assert_allclose(model.beta_, BETA, rtol=1e-6)
    assert model.converged_
    assert model.n_iter_ <= model.max_iter
    assert abs(model.alpha_["first_token"]) < 1e-9
    assert abs(model.alpha_["last_token"]) < 1e-9
    np.testing.assert_array_equal(model.coef_, model.beta_)
    assert model.intercept_ == 0.0
    # the replay with the fitted betas gives the trace back
    assert model.score(phases) == pytest.approx(1.0, abs=1e-12)
    lower, upper = model.beta_ci_.T
    assert np.all(lower <= BETA * (1 + 1e-6)) and np.all(upper >= BETA * (1 - 1e-6))


def test_phase_exposure_estimators_far_off_under_saturation(noisy):
    # The reason for the schedule-consistent fit: on this trace the
    # phase-exposure fits read the queueing as step time. Measured:
    # IterativeBetaRegressor beta = (+73 %, -36 %, -98 %) off,
    # BaselineBetaRegressor (-1 %, +10 %, -100 %).
    phases, _ = noisy
    for regressor in (IterativeBetaRegressor, BaselineBetaRegressor):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = make_pipeline(
                PhaseExposureTransformer(256, token_budget=512),
                regressor(confidence_level=None),
            ).fit(phases)
        error = np.abs(model[-1].beta_ / BETA - 1)
        assert error.max() > 0.3, (regressor.__name__, error)


def test_noisy_saturated_within_one_percent(noisy):
    phases, _ = noisy
    model = ScheduleBetaRegressor(**ENGINE).fit(phases)
    assert model.converged_
    np.testing.assert_allclose(model.beta_, BETA, rtol=0.01)
    lower, upper = model.beta_ci_.T
    assert np.all(lower < model.beta_) and np.all(model.beta_ < upper)


def test_noisy_saturated_held_out_requests(noisy):
    # Fit on 4/5 of the requests, in the whole trace's replay; the held-out
    # fifth's TTFT and end-to-end latency replay within 2 % per request.
    phases, _ = noisy
    train, test = next(RequestKFold(5).split(phases))
    model = ScheduleBetaRegressor(**ENGINE, trace=phases).fit(phases.iloc[train])
    held_out = phases.iloc[test]
    replayed = model.replay(held_out)
    assert len(replayed) == len(test) // 2
    for quantity in ("ttft", "e2e"):
        mape = np.mean(np.abs(replay_errors(replayed, quantity)))
        assert mape <= 0.02, (quantity, mape)
        assert make_schedule_scorer(quantity)(model, held_out) == pytest.approx(-mape)


def test_trace_clock_never_reads_the_held_out_times(noisy):
    # clock="trace" snaps the replay to the fitted requests' observed times
    # only: moving the held-out requests' observed first and last tokens
    # leaves their prediction unchanged, and it beats the model-time
    # forecast (measured: TTFT 0.01 % against 0.49 %).
    phases, _ = noisy
    train, test = next(RequestKFold(5).split(phases))
    model = ScheduleBetaRegressor(**ENGINE, trace=phases).fit(phases.iloc[train])
    assert model.fitted_requests_.sum() == len(train) // 2
    on_trace = model.replay(phases.iloc[test])
    moved = phases.copy()
    held_rows = moved.index[test]
    moved.loc[held_rows, "t_end"] += 0.05  # first and last token 50 ms late
    decode = held_rows[moved.loc[held_rows, "phase_type"] == "decode"]
    moved.loc[decode, "t_start"] += 0.05
    again = clone_fitted(model, trace=moved).replay(moved.iloc[test])
    np.testing.assert_array_equal(again["prefill_end"], on_trace["prefill_end"])
    np.testing.assert_array_equal(again["decode_end"], on_trace["decode_end"])
    trace_mape = np.mean(np.abs(replay_errors(on_trace, "ttft")))
    model_clock = model.set_params(clock="model").replay(phases.iloc[test])
    assert trace_mape < 0.002
    assert trace_mape < np.mean(np.abs(replay_errors(model_clock, "ttft"))) / 5
    with pytest.raises(ValueError, match="clock='trace'"):
        ScheduleBetaRegressor(**ENGINE, clock="trace").fit(phases)


def clone_fitted(model, **params):
    """A copy of a fitted estimator with other parameters (``trace``)."""
    import copy

    return copy.copy(model).set_params(**params)


def test_reporting_offsets_recovered():
    phases, _ = client_trace(1500, rate=40.0, first_offset=0.004, last_offset=0.009)
    model = ScheduleBetaRegressor(**ENGINE).fit(phases)
    np.testing.assert_allclose(model.beta_, BETA, rtol=1e-6)
    assert model.alpha_["queue"] == 0.0  # not identified from client times
    assert model.alpha_["first_token"] == pytest.approx(0.004, abs=1e-9)
    assert model.alpha_["last_token"] == pytest.approx(0.009, abs=1e-9)
    # without the offsets the betas must absorb them
    fixed = ScheduleBetaRegressor(**ENGINE, fit_offsets=False, max_iter=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fixed.fit(phases)
    assert fixed.alpha_ == {"queue": 0.0, "first_token": 0.0, "last_token": 0.0}
    assert np.max(np.abs(fixed.beta_ / BETA - 1)) > 1e-3


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_light_load_agrees_with_phase_exposure_fit(noise):
    # An engine-side trace at light load (prefill from the scheduled time),
    # where the phase-exposure fit holds: both fits agree.
    phases = simulate_trace(
        1500,
        beta=BETA,
        arrival_rate=8.0,
        noise=noise,
        random_state=3,
        prompt_tokens=(300, 0.5),
        output_tokens=(100, 0.5),
        **ENGINE,
    )
    exposure = make_pipeline(
        PhaseExposureTransformer(256, token_budget=512),
        IterativeBetaRegressor(confidence_level=None),
    ).fit(phases)
    model = ScheduleBetaRegressor(**ENGINE, arrival=None).fit(phases)
    assert model.converged_
    np.testing.assert_allclose(model.beta_, exposure[-1].beta_, rtol=0.005)
    np.testing.assert_allclose(model.beta_, BETA, rtol=1e-9 if noise == 0 else 0.005)


def test_grid_search_over_max_num_seqs_held_out():
    # GridSearchCV over an engine setting, scored on held-out requests of
    # the whole trace's replay, finds the engine's max_num_seqs.
    phases, _ = client_trace(1200, rate=40.0, noise=0.02, seed=2)
    search = GridSearchCV(
        ScheduleBetaRegressor(**{**ENGINE, "max_num_seqs": None}, trace=phases),
        {"max_num_seqs": [32, 64, 128]},
        cv=RequestKFold(3, shuffle=True, random_state=0),
        scoring=make_schedule_scorer("e2e"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(phases)
    assert search.best_params_ == {"max_num_seqs": 64}
    assert search.best_score_ > -0.02


def test_pipeline_and_predict(saturated):
    phases, _ = saturated
    pipe = make_pipeline(ScheduleBetaRegressor(**ENGINE, init="baseline"))
    pred = pipe.fit(phases).predict(phases)
    observed = (phases["t_end"] - phases["t_start"]).to_numpy()
    np.testing.assert_allclose(pred, observed, rtol=1e-6, atol=1e-9)


def test_init_array_and_convergence_warning(saturated):
    phases, _ = saturated
    model = ScheduleBetaRegressor(**ENGINE, init=BETA * 1.2, max_iter=1)
    with pytest.warns(ConvergenceWarning, match="did not converge in 1"):
        model.fit(phases)
    np.testing.assert_array_equal(model.init_beta_, BETA * 1.2)
    assert not model.converged_ and model.n_iter_ == 1


def test_errors(saturated):
    phases, _ = saturated
    with pytest.raises(ValueError, match="arrival='arrival' is not a column"):
        ScheduleBetaRegressor(**ENGINE).fit(phases.drop(columns="arrival"))
    with pytest.raises(ValueError, match="arrival='send' is not a column"):
        ScheduleBetaRegressor(**ENGINE, arrival="send").fit(phases)
    with pytest.raises(TypeError, match="DataFrame"):
        ScheduleBetaRegressor(**ENGINE).fit(phases.to_numpy())
    with pytest.raises(ValueError, match="three non-negative"):
        ScheduleBetaRegressor(**ENGINE, init=[1.0, -1.0, 0.0]).fit(phases)
    with pytest.raises(ValueError, match="max_num_seqs"):
        ScheduleBetaRegressor(**{**ENGINE, "max_num_seqs": 0}).fit(phases)
    with pytest.raises(TypeError, match="unknown_setting"):
        ScheduleBetaRegressor(**ENGINE, engine_settings={"unknown_setting": 1}).fit(
            phases
        )
    late = phases.copy()
    late.loc[0, "arrival"] = late.loc[0, "t_start"] + 1.0
    with pytest.raises(ValueError, match="cannot arrive after its prefill starts"):
        ScheduleBetaRegressor(**ENGINE).fit(late)
    other = client_trace(20, rate=40.0)[0].set_axis(range(10**6, 10**6 + 40))
    with pytest.raises(ValueError, match="not in trace"):
        ScheduleBetaRegressor(**ENGINE, trace=phases).fit(other)


def test_request_kfold_keeps_requests_whole():
    X = pd.DataFrame({"request_id": np.repeat([5, 3, 9, 1, 7], 2)})
    folds = [test for _, test in RequestKFold(2).split(X)]
    assert [f.tolist() for f in folds] == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7]]
    shuffled = [t for _, t in RequestKFold(2, shuffle=True, random_state=0).split(X)]
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(10))
    assert all(np.all(X["request_id"].iloc[t].value_counts() == 2) for t in shuffled)
    with pytest.raises(ValueError, match="at least 2"):
        RequestKFold(1)
    with pytest.raises(ValueError, match="random_state"):
        RequestKFold(2, random_state=0)
    with pytest.raises(ValueError, match="into n_splits=6"):
        list(RequestKFold(6).split(X))


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_engine_side_saturated_300_requests(noise):
    # Engine-side times: queued (arrival), scheduled (prefill start), first
    # and last token. 300 saturated requests: betas within 2 % (issue 19);
    # the scheduled times identify the queue delay, here 5 ms between the
    # arrival column and the engine's queue.
    phases, run = client_trace(300, rate=40.0, noise=noise, delay=0.005)
    phases.loc[phases["phase_type"] == "prefill", "t_start"] = run.prefill_start
    model = ScheduleBetaRegressor(**ENGINE).fit(phases)
    assert model.converged_
    np.testing.assert_allclose(model.beta_, BETA, rtol=1e-9 if noise == 0 else 0.02)
    assert model.alpha_["queue"] == pytest.approx(
        0.005, abs=1e-9 if noise == 0 else 2e-4
    )
    # predicted prefill phases run from the predicted scheduled time
    held = model.predict(phases)
    observed = (phases["t_end"] - phases["t_start"]).to_numpy()
    if noise == 0:
        np.testing.assert_allclose(held, observed, rtol=1e-6, atol=1e-9)


def vllm_sized_trace(seed):
    """256 running, budget 8192, no chunk cap, ~1000-token prompts, 128
    output tokens, steps of ~125 ms with 256 running (REGIMES.md), 3000
    requests at 25/s (~1.5 x capacity), 2 % step noise."""
    beta = np.array([8e-3, 5e-6, 3e-4])
    rng = np.random.RandomState(seed)
    n = 3000
    send = np.cumsum(rng.exponential(1.0 / 25.0, n))
    prompt = np.clip(np.rint(1000 * np.exp(0.3 * rng.standard_normal(n))), 1, None)
    output = np.full(n, 128, np.int64)
    run = run_engine(
        send,
        prompt.astype(np.int64),
        output,
        np.zeros(n, np.int64),
        beta=beta,
        chunk_size=None,
        token_budget=8192,
        max_num_seqs=256,
        noise_normals=rng.standard_normal,
        noise=0.02,
    )
    phases = client_phases(send, run.prefill_end, run.decode_end, prompt, output)
    return phases, beta


def test_vllm_sized_engine_auto_start():
    # The iterative start (beta0 = beta2 = 0, beta1 2.4 x too high) was outside
    # the iteration's basin here when started alone (beta1 fitted 0, no
    # convergence); init="auto" profiles short fits from both starts and
    # starts from the better: its fit on differences is at the noise level
    # (measured 0.0041, 0.67 sigma of the 2 % step noise is 0.013).
    phases, beta = vllm_sized_trace(0)
    model = ScheduleBetaRegressor(None, 8192, 256).fit(phases)
    assert min(model.init_misfit_.values()) < 0.013
    assert model.converged_
    np.testing.assert_allclose(model.beta_, beta, rtol=0.01)
    train, test = next(RequestKFold(5).split(phases))
    held = ScheduleBetaRegressor(None, 8192, 256, trace=phases).fit(phases.iloc[train])
    # clock="auto" with trace=: the replay on the training requests' observed
    # token times, admissions aligned. Measured: TTFT 0.05 %, decode and
    # end-to-end 0.00 %.
    replayed = held.replay(phases.iloc[test])
    for quantity in ("ttft", "decode", "e2e"):
        assert np.mean(np.abs(replay_errors(replayed, quantity))) <= 0.02
    # on model time (a forecast) the requests sent before the queue formed,
    # TTFTs of a step or two, miss by a step or two of the noise's random
    # walk. Measured: TTFT 6.2 %, decode 0.15 %, end-to-end 0.27 %.
    forecast = held.set_params(clock="model").replay(phases.iloc[test])
    for quantity in ("decode", "e2e"):
        assert np.mean(np.abs(replay_errors(forecast, quantity))) <= 0.01
    # The oracle: the true betas, replayed on model time, miss the same
    # requests by as much (measured 5.1 %): no estimator reaches a 2 %
    # per-request TTFT forecast on such a trace.
    truth = replay_trace(
        phases, beta, chunk_size=None, token_budget=8192, max_num_seqs=256
    )
    truth = truth.set_index("request_id").loc[forecast["request_id"]].reset_index()
    floor = np.mean(np.abs(replay_errors(truth, "ttft")))
    assert floor > 0.03
    assert np.mean(np.abs(replay_errors(forecast, "ttft"))) <= 1.3 * floor


def test_vllm_sized_other_start_when_the_fit_settles_far_above_noise():
    # Fold 1 of seed 1: the profile on the trace's head prefers the
    # iterative start (short-fit misfits 0.0056 against 0.0064), whose full
    # fit settles on another schedule (beta1 -100 %, misfit 0.32, measured);
    # a fit so far above the noise is no answer, the baseline start gets its
    # run and its fit is kept. Measured: -0.46 %, +0.56 %, -0.20 %.
    phases, beta = vllm_sized_trace(1)
    train, _ = list(RequestKFold(5).split(phases))[1]
    model = ScheduleBetaRegressor(None, 8192, 256, trace=phases)
    model.fit(phases.iloc[train])
    assert model.init_misfit_["iterative"] < model.init_misfit_["baseline"]
    assert model.init_beta_[0] == 0.0  # the iterative start (beta0 = beta2 = 0)
    assert model.converged_
    np.testing.assert_allclose(model.beta_, beta, rtol=0.01)
    assert model.schedule_misfit_ < 0.02  # measured 0.0046


def test_kv_cache_bound_with_preemptions_exact():
    # A KV cache of 900 blocks of 16 tokens bounds the batch at ~44 of the
    # 64 slots and preempts 457 times (recomputing the preempted): given the
    # KV settings, the noise-free fit is exact; the engine without them
    # cannot carry the trace (measured: all betas fitted about 0).
    kv = dict(num_gpu_blocks=900, block_size=16)
    phases, run = kv_bound_trace(5, 0.0)
    assert run.preemptions.sum() > 400
    model = ScheduleBetaRegressor(**ENGINE, engine_settings=kv).fit(phases)
    assert model.converged_
    np.testing.assert_allclose(model.beta_, BETA, rtol=1e-9)


SIMULATED = dict(prompt_tokens=(300, 0.5), output_tokens=(100, 0.5), **ENGINE)


def test_prefix_cache_hits_read_from_the_trace():
    # Half of every prompt is a prefix-cache hit (the simulator's
    # cached_tokens column): read by default, the fit is exact; ignored, the
    # replays prefill twice the tokens and beta1 is lost (measured: -96 %).
    phases = simulate_trace(
        1500,
        beta=BETA,
        arrival_rate=40.0,
        random_state=3,
        view="client",
        prefix_cached_fraction=0.5,
        **SIMULATED,
    )
    assert "cached_tokens" in phases.columns
    model = ScheduleBetaRegressor(**ENGINE).fit(phases)
    assert model.converged_
    np.testing.assert_allclose(model.beta_, BETA, rtol=1e-9)
    blind = ScheduleBetaRegressor(**ENGINE, cached_tokens=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        blind.fit(phases)
    assert abs(blind.beta_[1] / BETA[1] - 1) > 0.5
    with pytest.raises(ValueError, match="'hits' is not a column"):
        ScheduleBetaRegressor(**ENGINE, cached_tokens="hits").fit(phases)


def test_closed_loop_client_at_130_percent_of_capacity():
    # A client holding at most 96 requests in flight, offered 30 requests/s
    # (about 1.3 times the engine's capacity), 2 % step noise: the sends lag
    # the intended arrivals by 0.5 s on average (2.1 s at most). The fit
    # replays the observed sends; the forecast sends from the intended
    # arrivals under the cap. Measured: betas -0.01 %, +0.06 %, +0.11 %;
    # mean TTFT +0.13 %, decode +0.05 %, end-to-end +0.07 %.
    phases, truth = simulate_trace(
        2000,
        beta=BETA,
        arrival_rate=30.0,
        noise=0.02,
        random_state=7,
        view="client",
        max_in_flight=96,
        return_truth=True,
        **SIMULATED,
    )
    assert (truth["send"] - truth["intended_arrival"]).mean() > 0.3
    model = ScheduleBetaRegressor(**ENGINE, max_in_flight=96).fit(phases)
    assert model.converged_
    np.testing.assert_allclose(model.beta_, BETA, rtol=0.01)
    replayed = model.replay(phases)
    assert np.all(replayed["send"] >= truth["intended_arrival"] - 1e-12)
    observed = {
        "ttft": replayed["observed_prefill_end"] - replayed["arrival"],
        "decode": replayed["observed_decode_end"] - replayed["observed_prefill_end"],
        "e2e": replayed["observed_decode_end"] - replayed["arrival"],
    }
    predicted = {
        "ttft": replayed["prefill_end"] - replayed["send"],
        "decode": replayed["decode_end"] - replayed["prefill_end"],
        "e2e": replayed["decode_end"] - replayed["send"],
    }
    for quantity in observed:
        error = predicted[quantity].mean() / observed[quantity].mean() - 1
        assert abs(error) <= 0.03, (quantity, error)
    # predict's prefill phases run from the predicted sends
    pred = model.predict(phases)[0::2]
    np.testing.assert_allclose(pred, predicted["ttft"].to_numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="max_in_flight="):
        ScheduleBetaRegressor(**ENGINE, engine_settings={"max_in_flight": 96}).fit(
            phases
        )


def kv_bound_trace(seed, noise):
    """2000 requests at 40/s on the ENGINE with a KV cache of 900 blocks of
    16 tokens (the batch bound at ~44 of 64, ~460 preemptions)."""
    from sklearn_beta.engine._loop import EngineSettings

    rng = np.random.RandomState(seed)
    n = 2000
    send = np.cumsum(rng.exponential(1.0 / 40.0, n))
    prompt = np.clip(np.rint(300 * np.exp(0.5 * rng.standard_normal(n))), 1, None)
    output = np.clip(np.rint(100 * np.exp(0.5 * rng.standard_normal(n))), 1, None)
    run = run_engine(
        send,
        prompt.astype(np.int64),
        output.astype(np.int64),
        np.zeros(n, np.int64),
        beta=BETA,
        settings=EngineSettings(num_gpu_blocks=900, block_size=16),
        noise_normals=rng.standard_normal,
        noise=noise,
        **ENGINE,
    )
    phases = client_phases(send, run.prefill_end, run.decode_end, prompt, output)
    return phases, run


def test_kv_bound_noisy_admissions_aligned():
    # 2 % step noise, 472 preemptions. Without aligning the replay's
    # admissions with the trace (an arrival within the step noise of a step
    # boundary is admitted a step late or early, and under a KV bound that
    # changes every later preemption) the fit ended at +0.8 %, -26 %, +19 %;
    # aligned: 0.00 %, -0.20 %, +0.13 %. On 11 seeds (5, 10 to 19) 11 fits
    # come within 1 % with the misfit-guided search (docs/schedule.md).
    phases, run = kv_bound_trace(19, 0.02)
    assert run.preemptions.sum() > 400
    kv = dict(num_gpu_blocks=900, block_size=16)
    model = ScheduleBetaRegressor(**ENGINE, engine_settings=kv).fit(phases)
    assert model.converged_
    np.testing.assert_allclose(model.beta_, BETA, rtol=0.01)
    # the schedule found: residuals at the noise level (0.67 sigma = 0.013)
    assert model.schedule_misfit_ < 0.02  # measured 0.009


def test_schedule_misfit_flags_a_wrong_schedule(noisy):
    # The KV-bound trace fitted without its KV settings: no replay carries
    # it (measured: misfit 0.5, betas tens of percent off), and the fit
    # warns; against 0.007 on the open-queue noisy trace.
    phases, _ = kv_bound_trace(17, 0.02)
    with pytest.warns(ConvergenceWarning, match="did not find the trace's schedule"):
        wrong = ScheduleBetaRegressor(**ENGINE, max_iter=8).fit(phases)
    assert np.max(np.abs(wrong.beta_ / BETA - 1)) > 0.05
    assert wrong.schedule_misfit_ > 0.2
    right = ScheduleBetaRegressor(**ENGINE).fit(noisy[0])
    assert right.schedule_misfit_ < 0.02  # measured 0.007


@pytest.mark.parametrize(("seed", "offsets"), [(18, (0.0, 0.0)), (17, (0.004, 0.009))])
def test_kv_bound_misfit_guided_search(monkeypatch, seed, offsets):
    # The iteration alone settles on another schedule (misfit ~0.5, beta1
    # 10-17 % low, beta2 as much high, measured); the search of the
    # snapping offsets that a misfit far above the noise starts finds the
    # trace's (measured: seed 18 -0.12 %, +0.01 %, +0.17 %; seed 17 with
    # reporting offsets of 4 and 9 ms -0.17 %, -0.05 %, +0.12 %).
    from sklearn_beta.engine_config import _schedule

    phases, _ = kv_bound_trace(seed, 0.02)
    prefill = phases["phase_type"] == "prefill"
    phases.loc[prefill, "t_end"] += offsets[0]
    phases.loc[~prefill, "t_start"] += offsets[0]
    phases.loc[~prefill, "t_end"] += offsets[1]
    kv = dict(num_gpu_blocks=900, block_size=16)
    monkeypatch.setattr(_schedule, "SEARCH_ROUNDS", 0)
    # and without the profile of the offsets' level, which restarts the
    # fits snapped at the level the admissions show (it finds seed 17's
    # schedule with the offsets by itself)
    monkeypatch.setattr(
        _schedule.ScheduleBetaRegressor, "_settle_level", lambda self, *a: a[-1]
    )
    with pytest.warns(ConvergenceWarning, match="did not find"):
        alone = ScheduleBetaRegressor(**ENGINE, engine_settings=kv).fit(phases)
    assert alone.schedule_misfit_ > 0.3
    assert np.max(np.abs(alone.beta_ / BETA - 1)) > 0.05
    monkeypatch.undo()
    model = ScheduleBetaRegressor(**ENGINE, engine_settings=kv).fit(phases)
    np.testing.assert_allclose(model.beta_, BETA, rtol=0.01)
    assert model.schedule_misfit_ < 0.02  # measured 0.009
    assert model.n_iter_ > alone.n_iter_
    # their gap is exact (coincident first and last tokens); their common
    # level only the busy periods' starts show (measured: +0.86 ms on seed
    # 18, of steps of ~6 ms)
    first, last = model.alpha_["first_token"], model.alpha_["last_token"]
    assert last - first == pytest.approx(offsets[1] - offsets[0], abs=1e-5)
    assert first == pytest.approx(offsets[0], abs=1e-3)


def test_closed_loop_client_with_a_delay_before_the_queue():
    # Issue 19 recheck: a closed-loop client (96 in flight, 130 % of
    # capacity) whose requests reach the queue 5 ms after the send, first
    # and last tokens seen 2 and 3 ms late, 2 % step noise. From client
    # times the delay folds into the reporting offsets (7 and 8 ms).
    # Measured: betas -0.02 %, +0.02 %, +0.08 %; offsets 6.98 and 7.98 ms;
    # mean TTFT +0.01 %, decode +0.02 %, end-to-end +0.01 %.
    phases = simulate_trace(
        2000,
        beta=BETA,
        arrival_rate=30.0,
        noise=0.02,
        random_state=7,
        view="client",
        max_in_flight=96,
        request_delay=0.005,
        first_token_offset=0.002,
        last_token_offset=0.003,
        **SIMULATED,
    )
    model = ScheduleBetaRegressor(**ENGINE, max_in_flight=96).fit(phases)
    assert model.converged_
    np.testing.assert_allclose(model.beta_, BETA, rtol=0.01)
    assert model.alpha_["first_token"] == pytest.approx(0.007, abs=1e-4)
    assert model.alpha_["last_token"] == pytest.approx(0.008, abs=1e-4)
    replayed = model.replay(phases)
    predicted = replayed["decode_end"] - replayed["send"]
    observed = replayed["observed_decode_end"] - replayed["arrival"]
    assert abs(predicted.mean() / observed.mean() - 1) <= 0.03


def test_trace_without_prefill_cost():
    # Issue 19 recheck: beta1 = 0 (prefill tokens cost nothing), a saturated
    # client-side trace with 2 % step noise. Measured: beta0 +0.03 %,
    # beta2 -0.12 %, beta1 exactly 0.
    truth = np.array([6e-3, 0.0, 1.2e-4])
    phases = simulate_trace(
        2000,
        beta=truth,
        arrival_rate=40.0,
        noise=0.02,
        random_state=3,
        view="client",
        **SIMULATED,
    )
    model = ScheduleBetaRegressor(**ENGINE).fit(phases)
    assert model.converged_
    np.testing.assert_allclose(model.beta_[[0, 2]], truth[[0, 2]], rtol=0.01)
    assert model.beta_[1] < 1e-3 * BETA[1]
    assert model.schedule_misfit_ < 0.02  # the trace's schedule: measured 0.0125
