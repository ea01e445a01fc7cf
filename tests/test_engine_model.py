"""The engine as vLLM V1 schedules it: KV cache, preemption, prefix cache,
long-prefill threshold, client overheads and closed loop, with ground truth.

Hand-computed cases use steps of one second (beta = (1, 0, 0)), so that a
request's times count the steps before them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    select_engine_config,
)
from sklearn_beta.core._engine_model import (
    decode_steps,
    effective_chunk_size,
    loop_caps,
    prefill_grants,
)
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine import _loop as _engine
from sklearn_beta.engine._loop import EngineSettings, run_engine
from sklearn_beta.replay import make_replay_scorer, replay_errors, replay_trace

UNIT = (1.0, 0.0, 0.0)
BETA = (5e-3, 2e-5, 8e-5)


def hand_run(prompt, decode, *, arrival=None, cached=None, record=True, **settings):
    prompt = np.asarray(prompt)
    n = prompt.shape[0]
    chunk = settings.pop("chunk_size", None)
    budget = settings.pop("token_budget", None)
    max_num_seqs = settings.pop("max_num_seqs", n)
    return run_engine(
        np.zeros(n) if arrival is None else np.asarray(arrival, dtype=float),
        prompt,
        np.asarray(decode),
        np.zeros(n, dtype=np.int64),
        beta=UNIT,
        chunk_size=chunk,
        token_budget=budget,
        max_num_seqs=max_num_seqs,
        record_steps=record,
        cached_tokens=None if cached is None else np.asarray(cached),
        settings=EngineSettings(**settings),
    )


@pytest.fixture(params=["numpy", "numba"])
def backend(request, monkeypatch):
    if request.param == "numba" and _engine.numba is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(_engine, "BACKEND", request.param)
    return request.param


def test_a_full_kv_cache_stops_admission_and_preempts_the_latest(backend):
    # 2 blocks of 16 tokens, 3 prompts of 16 tokens, 4 decode steps each.
    # Step 1: A and B take one block each and prefill; C waits (no block).
    # Step 2: A's first decode needs a second block: B, the latest admitted,
    # is preempted to the queue front and nobody is admitted. A decodes
    # steps 2-5. Step 6: B comes back before C and recomputes its 16 prompt
    # tokens plus its first output token (17), which emits its second token:
    # 3 decode steps are left (7-9). C runs steps 10-14.
    run = hand_run([16, 16, 16], [4, 4, 4], num_gpu_blocks=2, block_size=16)
    np.testing.assert_array_equal(run.admitted, [0, 0, 9])
    np.testing.assert_array_equal(run.prefill_start, [0, 0, 9])
    np.testing.assert_array_equal(run.prefill_end, [1, 1, 10])
    np.testing.assert_array_equal(run.decode_end, [5, 9, 14])
    np.testing.assert_array_equal(run.preemptions, [0, 1, 0])
    np.testing.assert_array_equal(
        run.step_prefill_tokens, [32, 0, 0, 0, 0, 17, 0, 0, 0, 16, 0, 0, 0, 0]
    )
    np.testing.assert_array_equal(
        run.step_decode_tokens, [0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1]
    )
    assert run.step_kv_blocks.max() == 2


def test_preemption_order_latest_first_back_to_the_queue_front(backend):
    # 3 blocks of 4 tokens, 3 prompts of 4 tokens, 3 decode steps each.
    # Step 2: A needs a block: C (latest) is preempted; B needs one: B is now
    # the latest and preempts itself. The queue front is B, then C. A decodes
    # steps 2-4; B recomputes 4 + 1 tokens in step 5 and decodes 6-7; C the
    # same in 8 and 9-10. Each recomputation is counted in prefill tokens.
    run = hand_run([4, 4, 4], [3, 3, 3], num_gpu_blocks=3, block_size=4)
    np.testing.assert_array_equal(run.preemptions, [0, 1, 1])
    np.testing.assert_array_equal(run.prefill_end, [1, 1, 1])
    np.testing.assert_array_equal(run.decode_end, [4, 7, 10])
    np.testing.assert_array_equal(
        run.step_prefill_tokens, [12, 0, 0, 0, 5, 0, 0, 5, 0, 0]
    )
    # every output token comes from a decode step or a prefill's last step
    outputs = run.step_decode_tokens.sum() + 3 + run.preemptions.sum()
    assert outputs == 3 * (3 + 1)


def test_unbounded_cache_is_the_default_engine(backend):
    kwargs = dict(chunk_size=8, token_budget=20, max_num_seqs=3)
    free = hand_run([30, 12, 50, 7], [5, 9, 2, 4], **kwargs)
    huge = hand_run([30, 12, 50, 7], [5, 9, 2, 4], num_gpu_blocks=10**6, **kwargs)
    np.testing.assert_array_equal(free.decode_end, huge.decode_end)
    np.testing.assert_array_equal(free.prefill_end, huge.prefill_end)
    assert not free.preemptions.any()


def test_prefix_cache_hits_skip_prefill(backend):
    # 100 prompt tokens of which 60 cached: 40 computed, in chunks of 16
    run = hand_run([100], [2], cached=[60], chunk_size=16)
    np.testing.assert_array_equal(run.step_prefill_tokens, [16, 16, 8, 0, 0])
    with pytest.raises(ValueError, match="last prompt token is always computed"):
        hand_run([100], [2], cached=[100])


def test_long_prefill_threshold_caps_a_request_per_step(backend):
    run = hand_run([100, 10], [1, 1], long_prefill_token_threshold=30)
    np.testing.assert_array_equal(run.step_prefill_tokens, [40, 30, 30, 10, 0])
    # with a chunk size, the smaller of the two caps
    run = hand_run([100], [1], chunk_size=20, long_prefill_token_threshold=30)
    np.testing.assert_array_equal(run.step_prefill_tokens, [20] * 5 + [0])
    assert loop_caps(20, None, 30)[0] == 20
    assert effective_chunk_size(64, 48, 32) == 32
    assert effective_chunk_size(None, None, longest=900) == 900


def test_grants_decodes_first_then_prefills_in_running_order():
    grants = prefill_grants(np.array([0, 50, 0, 30, 40]), 2, 32, 60)
    np.testing.assert_array_equal(grants, [0, 32, 0, 26, 0])
    np.testing.assert_array_equal(decode_steps(np.array([5, 1]), True), [4, 0])


def test_kv_cache_that_cannot_hold_a_request_raises():
    with pytest.raises(ValueError, match="cannot hold 1 request"):
        hand_run([40, 10], [10, 1], num_gpu_blocks=3, block_size=16)


def test_block_boundaries_of_kv_growth_do_not_change_times(backend):
    # a cache that never runs out cuts blocks where decodes take new blocks;
    # step times are summed one after another, so they stay bit-identical
    rng = np.random.RandomState(0)
    prompt, decode = rng.randint(1, 200, 60), rng.randint(1, 100, 60)
    arrival = np.cumsum(rng.exponential(0.01, 60))
    kwargs = dict(chunk_size=64, token_budget=256, max_num_seqs=16)
    free = hand_run(prompt, decode, arrival=arrival, **kwargs)
    roomy = hand_run(prompt, decode, arrival=arrival, num_gpu_blocks=10**4, **kwargs)
    np.testing.assert_array_equal(free.decode_end, roomy.decode_end)
    assert roomy.step_kv_blocks.max() > 0


SIM = dict(
    beta=BETA,
    chunk_size=128,
    max_num_seqs=24,
    arrival_rate=60.0,
    prompt_tokens=(300, 0.5),
    output_tokens=(60, 0.6),
    token_budget=512,
    random_state=3,
)
KV = dict(num_gpu_blocks=400, block_size=16)


def test_simulated_kv_trace_preempts_and_keeps_its_invariants():
    phases, steps, truth = simulate_trace(
        400, **SIM, **KV, return_steps=True, return_truth=True
    )
    assert truth["preemptions"].sum() > 0
    assert (steps["kv_blocks"] <= KV["num_gpu_blocks"]).all()
    assert (steps["prefill_tokens"] + steps["decode_tokens"] <= 512).all()
    assert (steps["n_running"] <= 24).all()
    # every output token: a decode step or a prefill's (or recompute's) last
    recomputed = steps["prefill_tokens"].sum() - truth["prompt_tokens"].sum()
    assert recomputed > 0
    lost = truth["decode_steps"].sum() - steps["decode_tokens"].sum()
    assert 0 < lost <= truth["preemptions"].sum()
    # first admissions are first come, first served
    assert (np.diff(truth["admitted"].to_numpy()) >= 0).all()


REPLAY_CASES = {
    "kv": dict(**KV),
    "prefix": dict(prefix_cached_fraction=0.4),
    "threshold": dict(long_prefill_token_threshold=48),
    "client": dict(
        view="client",
        request_delay=0.03,
        first_token_offset=0.002,
        last_token_offset=0.004,
        **KV,
    ),
    "engine": dict(view="engine", request_delay=0.01, **KV),
    "closed": dict(view="client", max_in_flight=12, last_token_offset=0.004, **KV),
    "first_token_counted": dict(decode_tokens_include_first=True, **KV),
}


def replay_settings(params):
    replay = {
        key: params[key]
        for key in (
            "num_gpu_blocks",
            "block_size",
            "long_prefill_token_threshold",
            "request_delay",
            "first_token_offset",
            "last_token_offset",
            "max_in_flight",
            "decode_tokens_include_first",
        )
        if key in params
    }
    if params.get("prefix_cached_fraction"):
        replay["cached_tokens"] = "cached_tokens"
    if params.get("view") == "engine":  # its arrivals are the queue's already
        replay.pop("request_delay", None)
    return replay


@pytest.mark.parametrize("case", sorted(REPLAY_CASES))
def test_replay_of_a_simulated_trace_gives_back_its_times(case):
    params = {"view": "engine", **REPLAY_CASES[case]}
    phases, truth = simulate_trace(300, **SIM, **params, return_truth=True)
    replayed = replay_trace(
        phases,
        BETA,
        chunk_size=SIM["chunk_size"],
        token_budget=SIM["token_budget"],
        max_num_seqs=SIM["max_num_seqs"],
        **replay_settings(params),
    )
    for name in ("prefill_end", "decode_end"):
        np.testing.assert_allclose(
            replayed[name], replayed["observed_" + name], rtol=0, atol=1e-9
        )
    np.testing.assert_array_equal(replayed["preemptions"], truth["preemptions"])
    sent = truth["send" if params["view"] == "client" else "arrival"]
    np.testing.assert_allclose(replayed["send"], sent, rtol=0, atol=1e-9)
    if case == "kv":
        assert truth["preemptions"].sum() > 0


def test_decode_convention_in_the_replay():
    # a trace whose decode_tokens count the first token, replayed with exact
    # betas: exact with the right convention, one step too many otherwise
    phases = simulate_trace(300, **SIM, decode_tokens_include_first=True)
    decode = phases["phase_type"] == "decode"
    steps = simulate_trace(300, **SIM)
    assert (
        phases.loc[decode, "decode_tokens"] == steps.loc[decode, "decode_tokens"] + 1
    ).all()
    engine = dict(chunk_size=128, token_budget=512, max_num_seqs=24)
    right = replay_trace(phases, BETA, decode_tokens_include_first=True, **engine)
    wrong = replay_trace(phases, BETA, **engine)
    assert np.abs(replay_errors(right, "decode")).max() < 1e-9
    assert np.abs(replay_errors(wrong, "decode")).mean() > 0.01
    with pytest.raises(ValueError, match="at least 1"):
        zero = phases.copy()
        zero.loc[zero.index[1], "decode_tokens"] = 0
        replay_trace(zero, BETA, decode_tokens_include_first=True, **engine)


def test_client_overheads_shift_reported_times_exactly():
    base = dict(SIM, max_num_seqs=64, token_budget=None, arrival_rate=5.0)
    _, plain = simulate_trace(200, **base, return_truth=True)
    phases, late = simulate_trace(
        200,
        **base,
        request_delay=0.25,
        first_token_offset=0.01,
        last_token_offset=0.02,
        view="client",
        return_truth=True,
    )
    np.testing.assert_array_equal(late["arrival"], late["send"] + 0.25)
    for name in ("admitted", "scheduled", "first_token", "last_token"):
        np.testing.assert_allclose(late[name], plain[name] + 0.25, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(
        late["first_token_reported"], late["first_token"] + 0.01
    )
    np.testing.assert_array_equal(
        late["last_token_reported"], late["last_token"] + 0.02
    )
    prefill = phases[phases["phase_type"] == "prefill"]
    decode = phases[phases["phase_type"] == "decode"]
    np.testing.assert_array_equal(prefill["t_start"], late["send"])
    np.testing.assert_array_equal(prefill["t_end"], late["first_token_reported"])
    np.testing.assert_array_equal(decode["t_end"], late["last_token_reported"])
    with pytest.raises(ValueError, match="view='client'"):
        simulate_trace(10, **base, first_token_offset=0.01)


def test_closed_loop_client_never_exceeds_max_in_flight():
    phases, truth = simulate_trace(
        500,
        **SIM,
        max_in_flight=8,
        view="client",
        last_token_offset=0.003,
        return_truth=True,
    )
    send = truth["send"].to_numpy()
    done = truth["last_token_reported"].to_numpy()
    # outstanding at every send: earlier sends not yet completed, plus itself
    outstanding = [
        (send[:i] <= s).sum() - (done[:i] <= s).sum() + 1 for i, s in enumerate(send)
    ]
    assert max(outstanding) == 8
    intended = truth["intended_arrival"].to_numpy()
    assert (send >= intended).all()
    lagged = send > intended
    assert lagged.sum() > 100  # offered load above what 8 in flight carry
    # a lagging send happens exactly when an earlier request completes
    assert np.isin(send[lagged], done).all()
    assert "intended_arrival" in phases.columns


def test_compiled_and_numpy_loops_agree_with_every_setting(monkeypatch):
    if _engine.numba is None:
        pytest.skip("numba is not installed")
    params = dict(
        SIM,
        **KV,
        noise=0.05,
        n_instances=2,
        prefix_cached_fraction=0.2,
        long_prefill_token_threshold=100,
        max_in_flight=20,
        request_delay=0.01,
        view="client",
        last_token_offset=0.001,
        return_steps=True,
        return_truth=True,
    )
    params["arrival_rate"] = 120.0
    monkeypatch.setattr(_engine, "BACKEND", "numba")
    compiled = simulate_trace(300, **params)
    monkeypatch.setattr(_engine, "BACKEND", "numpy")
    plain = simulate_trace(300, **params)
    for got, want in zip(compiled, plain, strict=True):
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert compiled[2]["preemptions"].sum() > 0


def test_saturated_mixed_prompts_preempt_and_keep_invariants():
    # REGIMES-like: budget 8192, 256 running, prompts of 256 and 4096 tokens,
    # 128 output tokens, offered load above capacity, a KV cache that binds
    rng = np.random.RandomState(7)
    n = 3000
    prompt = np.where(rng.rand(n) < 0.5, 256, 4096)
    decode = np.full(n, 128)
    arrival = np.cumsum(rng.exponential(1 / 60.0, n))
    blocks, block_size = 6000, 16
    run = run_engine(
        arrival,
        prompt,
        decode,
        np.zeros(n, dtype=np.int64),
        beta=(6e-3, 2.5e-5, 5e-5),
        chunk_size=None,
        token_budget=8192,
        max_num_seqs=256,
        record_steps=True,
        settings=EngineSettings(num_gpu_blocks=blocks, block_size=block_size),
    )
    assert run.preemptions.sum() > 0
    assert np.isfinite(run.decode_end).all()
    assert (run.step_kv_blocks <= blocks).all()
    assert run.step_kv_blocks.max() > 0.95 * blocks  # the cache binds
    assert (run.step_prefill_tokens + run.step_decode_tokens <= 8192).all()
    assert (run.step_running <= 256).all()
    assert run.step_running.max() < 256  # the cache, not max_num_seqs, binds
    assert (np.diff(run.admitted) >= 0).all()  # FCFS first admissions
    assert (run.prefill_start >= run.admitted).all()
    assert (run.prefill_end > run.prefill_start).all()
    assert (run.decode_end > run.prefill_end).all()
    assert (run.admitted >= arrival).all()
    lost = decode.sum() - run.step_decode_tokens.sum()
    assert 0 < lost <= run.preemptions.sum()
    recomputed = run.step_prefill_tokens.sum() - prompt.sum()
    assert recomputed >= run.preemptions.sum()
    # the steps are back to back while work waits
    assert run.step_start[0] == arrival[0]


COUNTED = dict(
    beta=BETA,
    chunk_size=128,
    max_num_seqs=16,
    arrival_rate=8.0,
    prompt_tokens=(300, 0.5),
    output_tokens=(24, 0.5),
    random_state=5,
    decode_tokens_include_first=True,
)


def counted_pipeline(include_first):
    return make_pipeline(
        PhaseExposureTransformer(
            chunk_size=128, decode_tokens_include_first=include_first
        ),
        IterativeBetaRegressor(confidence_level=None),
    )


def test_replay_scorer_reads_the_pipelines_decode_convention():
    # 24-token outputs whose count includes the first token: read as steps,
    # every decode replays one step too many (about 4 %); read right, the
    # noise-free trace replays to the fitted betas' precision
    phases = simulate_trace(600, **COUNTED)
    scorer = make_replay_scorer(phases, "decode", max_num_seqs=16)
    assert -scorer(counted_pipeline(True).fit(phases), phases) < 1e-3
    assert -scorer(counted_pipeline(False).fit(phases), phases) > 0.01


def test_engine_search_replays_with_the_estimators_decode_convention():
    phases = simulate_trace(600, **COUNTED)
    config = select_engine_config(
        phases,
        counted_pipeline(True),
        candidates=[(64, None), (128, None), (None, None)],
        n_splits=2,
        max_num_seqs=16,
    )
    assert config.chunk_size == 128
    assert config.validation["decode"] < 1e-3
