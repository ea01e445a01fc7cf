"""The step-level replay: against the simulator, by hand, and as a scorer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
)
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine import _loop as _engine
from sklearn_beta.model_selection import TraceBlockSplit, TraceContextRegressor
from sklearn_beta.replay import (
    make_replay_scorer,
    replay_errors,
    replay_scorers,
    replay_trace,
)

BETA = (5e-3, 2e-5, 8e-5)
ENGINE = dict(chunk_size=64, max_num_seqs=16)
LENGTHS = dict(prompt_tokens=(200, 1.0), output_tokens=(40, 0.8))


def simulate(n=400, **kwargs):
    params = {**ENGINE, "arrival_rate": 40.0, **LENGTHS, "random_state": 0}
    params.update(kwargs)
    return simulate_trace(n, beta=BETA, **params), params


def assert_same_phase_times(replayed):
    for what in ("prefill_start", "prefill_end", "decode_end"):
        np.testing.assert_array_equal(replayed[what], replayed["observed_" + what])


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"token_budget": 90},
        {"max_num_seqs": 4, "arrival_rate": 60.0},  # requests queue
        {"n_instances": 3, "arrival_rate": 120.0, "token_budget": 70},
    ],
)
@pytest.mark.parametrize("observed_cap", [False, True])
def test_replaying_a_simulation_gives_back_its_times(extra, observed_cap):
    phases, params = simulate(**extra)
    replayed = replay_trace(
        phases,
        BETA,
        chunk_size=params["chunk_size"],
        token_budget=params.get("token_budget"),
        max_num_seqs=None if observed_cap else params["max_num_seqs"],
    )
    assert len(replayed) == 400
    np.testing.assert_array_equal(replayed["request_id"], np.arange(400))
    np.testing.assert_array_equal(
        replayed["instance_id"], phases["instance_id"].to_numpy()[::2]
    )
    assert_same_phase_times(replayed)
    for quantity in ("ttft", "decode", "e2e"):
        assert np.all(replay_errors(replayed, quantity) == 0.0)


def test_replay_from_true_arrivals_reproduces_the_queue():
    n, rate = 300, 60.0
    phases, params = simulate(n, max_num_seqs=4, arrival_rate=rate)
    # the simulator's arrivals: the first draws of its seed (its docstring)
    arrival = np.cumsum(np.random.RandomState(0).exponential(1.0 / rate, n))
    traced = phases.assign(arrival=np.repeat(arrival, 2))
    replayed = replay_trace(traced, BETA, chunk_size=64, max_num_seqs=4)
    np.testing.assert_array_equal(replayed["arrival"], arrival)
    assert_same_phase_times(replayed)
    queued = replayed["prefill_start"] - replayed["arrival"]
    assert queued.max() > 0.05  # the requests did wait for a slot
    # the arrival column is only read when asked for by name or by default
    by_start = replay_trace(traced, BETA, chunk_size=64, max_num_seqs=4, arrival=None)
    np.testing.assert_array_equal(by_start["arrival"], phases["t_start"][::2])


def hand_trace(arrival_b):
    """Two requests: A (prompt 100, 2 decode steps) at 0, B (30, 1) later."""
    return pd.DataFrame(
        {
            "request_id": ["A", "A", "B", "B"],
            "phase_type": ["prefill", "decode"] * 2,
            "t_start": [0.0, 1.0, arrival_b, 1.0],
            "t_end": [1.0, 2.0, 1.0, 2.0],  # observed: arbitrary here
            "prefill_tokens": [100, 0, 30, 0],
            "decode_tokens": [0, 2, 0, 1],
        }
    )


def test_hand_worked_chunks_and_late_join():
    # step 1 [0, 1.64 ms): A 64 tokens; B arrives at 1.5 ms, joins step 2;
    # step 2: A 36 + B 30 = 66 tokens, 1.66 ms -> both prefills end at 3.3 ms;
    # step 3: two decodes, 1.2 ms (B done); step 4: A alone, 1.1 ms
    replayed = replay_trace(
        hand_trace(1.5e-3), (1e-3, 1e-5, 1e-4), chunk_size=64, max_num_seqs=2
    )
    np.testing.assert_allclose(replayed["prefill_start"], [0.0, 1.64e-3], rtol=1e-12)
    np.testing.assert_allclose(replayed["prefill_end"], [3.3e-3, 3.3e-3], rtol=1e-12)
    np.testing.assert_allclose(replayed["decode_end"], [5.6e-3, 4.5e-3], rtol=1e-12)


def test_hand_worked_budget_serves_decodes_first():
    # budget 50: step 1 A 50 (1.5 ms); B arrives exactly at the boundary and
    # joins step 2, where A takes the budget's 50; step 3: A decodes (1
    # token), B gets its 30 (1 + 0.3 + 0.1 = 1.4 ms); step 4: both decode
    replayed = replay_trace(
        hand_trace(1.5e-3),
        (1e-3, 1e-5, 1e-4),
        chunk_size=64,
        token_budget=50,
        max_num_seqs=2,
    )
    np.testing.assert_allclose(replayed["prefill_start"], [0.0, 3.0e-3], rtol=1e-12)
    np.testing.assert_allclose(replayed["prefill_end"], [3.0e-3, 4.4e-3], rtol=1e-12)
    np.testing.assert_allclose(replayed["decode_end"], [5.6e-3, 5.6e-3], rtol=1e-12)
    # without a chunk cap the budget alone cuts the prompt
    unchunked = replay_trace(
        hand_trace(1.5e-3), (1e-3, 1e-5, 1e-4), token_budget=50, max_num_seqs=2
    )
    np.testing.assert_allclose(unchunked["prefill_end"], [3.0e-3, 4.4e-3])
    # and with neither, a prompt is one step: A's 100 tokens (2 ms), then
    # A's first decode beside B's 30 tokens (1 + 0.3 + 0.1 ms)
    whole = replay_trace(hand_trace(1.5e-3), (1e-3, 1e-5, 1e-4), max_num_seqs=2)
    np.testing.assert_allclose(whole["prefill_end"], [2e-3, 3.4e-3], rtol=1e-12)


@pytest.mark.skipif(_engine.numba is None, reason="numba is not installed")
def test_compiled_and_numpy_replays_agree_bit_for_bit(monkeypatch):
    phases, _ = simulate(n_instances=2, arrival_rate=80.0, noise=0.05)
    settings = dict(chunk_size=128, token_budget=100, max_num_seqs=8)
    monkeypatch.setattr(_engine, "BACKEND", "numba")
    compiled = replay_trace(phases, (4e-3, 3e-5, 1e-4), **settings)
    monkeypatch.setattr(_engine, "BACKEND", "numpy")
    plain = replay_trace(phases, (4e-3, 3e-5, 1e-4), **settings)
    pd.testing.assert_frame_equal(compiled, plain, check_exact=True)
    assert not np.array_equal(compiled["decode_end"], compiled["observed_decode_end"])


def test_replay_errors_hand_computed():
    replayed = pd.DataFrame(
        {
            "arrival": [0.0, 1.0],
            "prefill_end": [0.3, 1.1],
            "decode_end": [1.0, 1.5],
            "observed_prefill_end": [0.2, 1.2],
            "observed_decode_end": [1.2, 1.7],
        }
    )
    np.testing.assert_allclose(replay_errors(replayed, "ttft"), [0.5, -0.5])
    np.testing.assert_allclose(replay_errors(replayed, "decode"), [-0.3, -0.2])
    np.testing.assert_allclose(replay_errors(replayed, "e2e"), [-1 / 6, -2 / 7])
    with pytest.raises(ValueError, match="quantity"):
        replay_errors(replayed, "tpot")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=(1e-3, 1e-5)), "three finite"),
        (dict(beta=(0.0, 0.0, 1e-4)), "zero-length"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(max_num_seqs=2.5), "max_num_seqs"),
        (dict(token_budget=8, max_num_seqs=16), "token_budget"),
        (dict(arrival="queued_at"), "queued_at"),
    ],
)
def test_parameter_validation(kwargs, match):
    phases, _ = simulate(30)
    params = {"beta": BETA, "chunk_size": 64, **kwargs}
    with pytest.raises(ValueError, match=match):
        replay_trace(phases, params.pop("beta"), **params)


def test_bad_traces_name_the_rows():
    phases, _ = simulate(30)
    with pytest.raises(ValueError, match="a prefill and a decode row"):
        replay_trace(phases.drop(index=7), BETA, chunk_size=64)
    late = phases.assign(arrival=phases["t_start"] + 1.0)
    with pytest.raises(ValueError, match="arrive after its prefill"):
        replay_trace(late, BETA, chunk_size=64)


def pipeline(chunk_size=64, regressor=None):
    return make_pipeline(
        PhaseExposureTransformer(chunk_size=chunk_size),
        regressor if regressor is not None else BaselineBetaRegressor(),
    )


def test_scorer_is_zero_for_the_true_engine_and_negative_otherwise():
    phases, _ = simulate(300)
    model = pipeline().fit(phases)
    scorer = make_replay_scorer(phases, "ttft", max_num_seqs=16)
    held_out = phases.iloc[100:200]
    model[-1].beta_ = np.array(BETA)  # the truth, as if fitted exactly
    assert scorer(model, held_out) == 0.0
    model[-1].beta_ = np.array(BETA) * [1.0, 1.5, 1.0]
    assert scorer(model, held_out) < -0.01
    # the three scorers share one replay per engine, and score as alone
    for name, shared in replay_scorers(phases, max_num_seqs=16).items():
        alone = make_replay_scorer(
            phases, name.removeprefix("replay_"), max_num_seqs=16
        )
        assert shared(model, held_out) == alone(model, held_out) < 0
    with pytest.raises(ValueError, match="not in the scorer's trace"):
        scorer(model, held_out.set_axis(held_out.index + 10_000))
    with pytest.raises(TypeError, match="Pipeline"):
        scorer(model[-1], held_out)


def test_grid_search_picks_the_true_chunk_size_by_replay():
    phases = simulate_trace(
        1500,
        beta=BETA,
        chunk_size=256,
        max_num_seqs=16,
        arrival_rate=12.0,
        prompt_tokens=(600, 0.8),
        output_tokens=(60, 0.8),
        random_state=0,
    )
    search = GridSearchCV(
        pipeline(regressor=IterativeBetaRegressor()),
        {"phaseexposuretransformer__chunk_size": [64, 128, 256, 512, 2048]},
        cv=TraceBlockSplit(3),
        scoring=replay_scorers(phases),
        refit=False,
    )
    search.fit(phases)
    for name in ("replay_ttft", "replay_decode", "replay_e2e"):
        scores = search.cv_results_["mean_test_" + name]
        assert np.argmax(scores) == 2, (name, scores)
    assert search.cv_results_["mean_test_replay_decode"][2] > -0.01


def test_scorers_in_cross_validate_with_trace_context():
    phases, _ = simulate(300)
    model = TraceContextRegressor(pipeline(), trace=phases)
    scores = cross_validate(
        model, phases, cv=TraceBlockSplit(3), scoring=replay_scorers(phases)
    )
    for name in ("replay_ttft", "replay_decode", "replay_e2e"):
        assert scores["test_" + name].shape == (3,)
        assert np.all(scores["test_" + name] < 0)


def test_epoch_clock_is_replayed_precisely():
    # 20 000 steps on an epoch clock (ulp 2.4e-7 s): summed there, the steps
    # would drift by up to a millisecond; replayed from a whole second before
    # the first arrival, only the final time's rounding is left
    epoch = 2.0e9
    local = pd.DataFrame(
        {
            "request_id": [0, 0],
            "phase_type": ["prefill", "decode"],
            "t_start": [0.25, 1.0],
            "t_end": [1.0, 30.0],
            "prefill_tokens": [10, 0],
            "decode_tokens": [0, 20_000],
        }
    )
    shifted = local.assign(
        t_start=local["t_start"] + epoch, t_end=local["t_end"] + epoch
    )
    near = replay_trace(local, (1e-3, 1e-5, 1e-4), max_num_seqs=1)
    far = replay_trace(shifted, (1e-3, 1e-5, 1e-4), max_num_seqs=1)
    ulp = np.spacing(epoch)
    np.testing.assert_allclose(far["decode_end"] - epoch, near["decode_end"], atol=ulp)
    np.testing.assert_allclose(near["decode_end"], 0.25 + 1.1e-3 + 20_000 * 1.1e-3)


def test_requests_keep_the_order_of_their_first_row():
    # decode rows first: the requests still come in the same order, and
    # simultaneous arrivals (prefills starting in one step) are served in it
    phases, _ = simulate(200, token_budget=90)
    regrouped = phases.sort_values("phase_type", kind="stable")
    assert regrouped["phase_type"].iloc[0] == "decode"
    replayed = replay_trace(regrouped, BETA, chunk_size=64, token_budget=90)
    np.testing.assert_array_equal(replayed["request_id"], np.arange(200))
    assert_same_phase_times(replayed)
