"""The simulator's invariants, its parameter checks, and the error metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine import _loop as _engine
from sklearn_beta.metrics import coefficient_errors, step_time_error

BETA = (5e-3, 2e-5, 8e-5)
BASE = dict(beta=BETA, chunk_size=64, max_num_seqs=16, arrival_rate=40.0)
LENGTHS = dict(prompt_tokens=(200, 1.0), output_tokens=(40, 0.8))


def simulate(n=150, **kwargs):
    params = {**BASE, **LENGTHS, "random_state": 0, "return_steps": True}
    params.update(kwargs)
    return simulate_trace(n, **params)


def steps_inside(phases, steps):
    """Per phase: number and summed duration of the steps inside it."""
    inst_p = phases.get("instance_id", pd.Series(0, index=phases.index)).to_numpy()
    count = np.empty(len(phases), dtype=np.int64)
    total = np.empty(len(phases))
    for inst in np.unique(inst_p):
        rows = inst_p == inst
        own = steps[steps["instance_id"] == inst]
        start, end = own["t_start"].to_numpy(), own["t_end"].to_numpy()
        cum = np.r_[0.0, np.cumsum(end - start)]
        lo = np.searchsorted(start, phases["t_start"].to_numpy()[rows], side="left")
        hi = np.searchsorted(end, phases["t_end"].to_numpy()[rows], side="right")
        count[rows] = hi - lo
        total[rows] = cum[hi] - cum[lo]
    return count, total


def model_times(steps):
    tokens = steps[["prefill_tokens", "decode_tokens"]].to_numpy()
    return BETA[0] + tokens @ np.array(BETA[1:])


def expected_steps(phases, chunk_size):
    prefill = phases["phase_type"].to_numpy() == "prefill"
    return np.where(
        prefill,
        np.ceil(phases["prefill_tokens"] / chunk_size),
        phases["decode_tokens"],
    )


@pytest.mark.parametrize("n_instances", [1, 3])
def test_phases_are_made_of_whole_steps(n_instances):
    phases, steps = simulate(n_instances=n_instances, arrival_rate=40.0 * n_instances)
    count, total = steps_inside(phases, steps)
    duration = (phases["t_end"] - phases["t_start"]).to_numpy()
    np.testing.assert_allclose(total, duration, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(count, expected_steps(phases, 64))


def test_step_durations_follow_the_betas_without_noise():
    _, steps = simulate()
    model = model_times(steps)
    np.testing.assert_allclose(steps["t_end"] - steps["t_start"], model, rtol=1e-12)


def test_tokens_are_conserved_and_batches_bounded():
    phases, steps = simulate()
    assert steps["prefill_tokens"].sum() == phases["prefill_tokens"].sum()
    assert steps["decode_tokens"].sum() == phases["decode_tokens"].sum()
    assert steps["n_running"].between(1, 16).all()
    assert steps["n_running"].max() == 16  # the load saturates the batch
    assert (steps["prefill_tokens"] <= 64 * steps["n_running"]).all()


def test_schema_and_order():
    phases, steps = simulate(20)
    assert list(phases.columns) == [
        "request_id",
        "phase_type",
        "t_start",
        "t_end",
        "prefill_tokens",
        "decode_tokens",
        "instance_id",
    ]
    assert (phases["instance_id"] == 0).all()
    np.testing.assert_array_equal(phases["request_id"], np.repeat(np.arange(20), 2))
    assert (phases["phase_type"].to_numpy()[::2] == "prefill").all()
    assert (phases["phase_type"].to_numpy()[1::2] == "decode").all()
    # the decode phase starts where the prefill ends
    np.testing.assert_array_equal(
        phases["t_end"].to_numpy()[::2], phases["t_start"].to_numpy()[1::2]
    )
    assert (phases["t_end"] > phases["t_start"]).all()
    assert list(steps.columns) == [
        "instance_id",
        "t_start",
        "t_end",
        "prefill_tokens",
        "decode_tokens",
        "n_running",
    ]


def test_fixed_lengths_and_a_single_request():
    phases, steps = simulate_trace(
        1,
        beta=(1e-3, 1e-5, 1e-4),
        chunk_size=64,
        max_num_seqs=4,
        arrival_rate=1.0,
        prompt_tokens=(150, 0.0),
        output_tokens=(3, 0.0),
        random_state=0,
        return_steps=True,
    )
    # chunks 64, 64, 22, then three decode steps, back to back
    np.testing.assert_array_equal(steps["prefill_tokens"], [64, 64, 22, 0, 0, 0])
    np.testing.assert_array_equal(steps["decode_tokens"], [0, 0, 0, 1, 1, 1])
    t0 = phases["t_start"].iloc[0]
    prefill_end = t0 + 3 * 1e-3 + 150 * 1e-5
    np.testing.assert_allclose(phases["t_end"], [prefill_end, prefill_end + 3 * 1.1e-3])


def test_token_budget_caps_steps_and_serves_decodes_first():
    phases, steps = simulate(token_budget=100, max_num_seqs=16)
    tokens = steps["prefill_tokens"] + steps["decode_tokens"]
    assert tokens.max() <= 100
    assert tokens.max() == 100  # the budget binds
    count, total = steps_inside(phases, steps)
    duration = (phases["t_end"] - phases["t_start"]).to_numpy()
    np.testing.assert_allclose(total, duration, rtol=0, atol=1e-9)
    prefill = phases["phase_type"].to_numpy() == "prefill"
    needed = expected_steps(phases, 64)
    # prefills may be starved or cut short; decodes still take one step a token
    assert (count[prefill] >= needed[prefill]).all()
    assert (count[prefill] > needed[prefill]).any()
    np.testing.assert_array_equal(count[~prefill], needed[~prefill])
    assert steps["prefill_tokens"].sum() == phases["prefill_tokens"].sum()


def test_token_budget_hand_worked():
    # two requests arriving together: prompts 100, budget 80, chunk 64
    phases, steps = simulate_trace(
        2,
        beta=(1e-3, 1e-5, 1e-4),
        chunk_size=64,
        max_num_seqs=2,
        arrival_rate=1e-6,  # the second arrives long after: run alone ...
        prompt_tokens=(100, 0.0),
        output_tokens=(2, 0.0),
        token_budget=80,
        random_state=0,
        return_steps=True,
    )
    np.testing.assert_array_equal(steps["prefill_tokens"], [64, 36, 0, 0] * 2)
    phases, steps = simulate_trace(
        3,
        beta=(1e-3, 1e-5, 1e-4),
        chunk_size=64,
        max_num_seqs=3,
        arrival_rate=1e6,  # ... or together: FCFS chunks up to the budget
        prompt_tokens=(100, 0.0),
        output_tokens=(2, 0.0),
        token_budget=80,
        random_state=0,
        return_steps=True,
    )
    # r1 and r2 arrive during step 1, which r0 runs alone (64 tokens);
    # step 2: r0 36, then r1 44 (the budget's rest), r2 none;
    # step 3: r0 decodes (1), r1 finishes its 56, r2 gets 80 - 1 - 56 = 23;
    # step 4: r0 and r1 decode, r2 takes a full chunk of its 77 left
    np.testing.assert_array_equal(steps["prefill_tokens"][:4], [64, 80, 79, 64])
    np.testing.assert_array_equal(steps["decode_tokens"][:4], [0, 0, 1, 2])
    prefill = phases[phases["phase_type"] == "prefill"]
    # r2's prefill starts with the first step serving it (step 3), not step 2
    assert prefill["t_start"].iloc[2] == steps["t_start"].iloc[2]


def test_noise_scales_steps_lognormally():
    _, steps = simulate(400, noise=0.05)
    model = model_times(steps)
    log_ratio = np.log((steps["t_end"] - steps["t_start"]) / model)
    assert abs(log_ratio.mean()) < 0.01
    assert log_ratio.std() == pytest.approx(0.05, rel=0.1)


def test_noise_factor_has_mean_one():
    # exp(s Z - s^2 / 2): its log has mean -s^2 / 2 and the factor mean 1, so
    # the betas are the mean step-time coefficients. A large s makes the
    # shift (-0.125) stand far out of the sampling error (~0.5 / sqrt(steps)).
    _, steps = simulate(400, noise=0.5)
    factor = (steps["t_end"] - steps["t_start"]) / model_times(steps)
    assert len(factor) > 1500
    assert np.log(factor).mean() == pytest.approx(-0.125, abs=0.04)
    assert factor.mean() == pytest.approx(1.0, abs=0.04)


def test_seeded_reproducibility():
    first = simulate(60, noise=0.05, n_instances=2)
    again = simulate(60, noise=0.05, n_instances=2)
    other = simulate(60, noise=0.05, n_instances=2, random_state=1)
    pd.testing.assert_frame_equal(first[0], again[0])
    pd.testing.assert_frame_equal(first[1], again[1])
    assert not first[0].equals(other[0])
    rng_state = np.random.RandomState(3)
    from_rng = simulate_trace(30, **BASE, random_state=rng_state)
    pd.testing.assert_frame_equal(from_rng, simulate_trace(30, **BASE, random_state=3))


def test_instances_run_their_own_busy_loops():
    phases, steps = simulate(300, n_instances=3, arrival_rate=120.0, token_budget=64)
    assert "instance_id" in phases.columns
    assert set(phases["instance_id"]) == {0, 1, 2}
    # a request's two phases run on the same instance
    np.testing.assert_array_equal(
        phases["instance_id"].to_numpy()[::2], phases["instance_id"].to_numpy()[1::2]
    )
    for _, own in steps.groupby("instance_id"):
        assert (own["t_start"].to_numpy()[1:] >= own["t_end"].to_numpy()[:-1]).all()
        assert (own["t_end"] > own["t_start"]).all()
    # every phase's steps belong to its instance
    count, _ = steps_inside(phases, steps)
    prefill = phases["phase_type"].to_numpy() == "prefill"
    assert (count[prefill] >= expected_steps(phases, 64)[prefill]).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=(1e-3, 1e-5)), "three finite"),
        (dict(beta=(1e-3, -1e-5, 1e-4)), "non-negative"),
        (dict(beta=(0.0, 1e-5, 0.0)), "zero-length"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(max_num_seqs=0), "max_num_seqs"),
        (dict(arrival_rate=0.0), "arrival_rate"),
        (dict(noise=-0.1), "noise"),
        (dict(n_instances=0), "n_instances"),
        (dict(token_budget=8), "token_budget"),
        (dict(prompt_tokens=(100,)), "prompt_tokens"),
        (dict(prompt_tokens=(0.5, 1.0)), "median"),
        (dict(output_tokens=(10, -1.0)), "sigma"),
        (dict(random_state="seed"), "random_state"),
    ],
)
def test_parameter_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_trace(5, **{**BASE, **kwargs})


def test_n_requests_validation():
    with pytest.raises(ValueError, match="n_requests"):
        simulate_trace(0, **BASE)


def test_coefficient_errors_hand_computed():
    errors = coefficient_errors([5e-3, 2e-5, 8e-5], [4e-3, 3e-5, 8e-5])
    np.testing.assert_allclose(errors, [-0.2, 0.5, 0.0])
    stacked = coefficient_errors([1.0, 2.0, 4.0], [[1.5, 1.0, 4.0], [0.0, 2.0, 5.0]])
    np.testing.assert_allclose(stacked, [[0.5, -0.5, 0.0], [-1.0, 0.0, 0.25]])
    zero_true = coefficient_errors([0.0, 0.0, 1.0], [0.0, 0.1, 1.0])
    np.testing.assert_array_equal(zero_true, [0.0, np.inf, 0.0])
    with pytest.raises(ValueError, match="beta_est"):
        coefficient_errors([1.0, 2.0, 3.0], [1.0, 2.0])


def test_step_time_error_hand_computed():
    beta_true = [1e-3, 1e-5, 1e-4]
    steps = pd.DataFrame({"prefill_tokens": [100, 0, 64], "decode_tokens": [0, 10, 4]})
    # true times 2e-3, 2e-3, 2.04e-3; the estimate doubles beta0:
    # errors 1e-3 / 2e-3, 1e-3 / 2e-3, 1e-3 / 2.04e-3
    expected = np.mean([0.5, 0.5, 1 / 2.04])
    assert step_time_error(beta_true, [2e-3, 1e-5, 1e-4], steps) == pytest.approx(
        expected, rel=1e-12
    )
    assert step_time_error(beta_true, beta_true, steps) == 0.0
    assert step_time_error(beta_true, [2e-3, 1e-5, 1e-4], steps.to_numpy()) == (
        pytest.approx(expected, rel=1e-12)
    )
    with pytest.raises(ValueError, match="decode_tokens"):
        step_time_error(beta_true, beta_true, steps[["prefill_tokens"]])
    with pytest.raises(ValueError, match="non-positive"):
        step_time_error([0.0, 1e-5, 1e-4], beta_true, [[0, 0]])


def test_step_time_error_on_a_simulated_trace():
    _, steps = simulate(noise=0.05)
    # noise does not enter: the true betas score exactly zero
    assert step_time_error(BETA, BETA, steps) == 0.0
    scaled = np.array(BETA) * 1.1
    assert step_time_error(BETA, scaled, steps) == pytest.approx(0.1, rel=1e-9)


def reference_simulation(n, seed, beta, chunk_size, max_num_seqs, rate, budget):
    """The engine of simulate_trace's docstring, one step and request at a time."""
    rng = np.random.RandomState(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate, size=n))
    lengths = []
    for median, sigma in (LENGTHS["prompt_tokens"], LENGTHS["output_tokens"]):
        draws = median * np.exp(sigma * rng.standard_normal(n))
        upper = np.ceil(median * np.exp(4 * sigma))
        lengths.append(np.clip(np.rint(draws), 1, upper).astype(int))
    prompt, output = lengths
    times = np.full((n, 3), np.nan)  # prefill start, prefill end, decode end
    steps, running, nxt, t = [], [], 0, 0.0
    while nxt < n or running:
        if not running:
            t = max(t, arrival[nxt])
        while nxt < n and len(running) < max_num_seqs and arrival[nxt] <= t:
            running.append([nxt, prompt[nxt], output[nxt]])
            nxt += 1
        decoding = [r[1] == 0 for r in running]
        left = budget - sum(decoding) if budget else np.inf
        grants = []
        for r, dec in zip(running, decoding, strict=True):
            grant = 0 if dec else int(min(chunk_size, r[1], left))
            left -= grant
            grants.append(grant)
        t_pf, t_dec = sum(grants), sum(decoding)
        end = t + (beta[0] + beta[1] * t_pf + beta[2] * t_dec)
        steps.append((t, end, t_pf, t_dec, len(running)))
        for r, dec, grant in zip(running, decoding, grants, strict=True):
            if grant and r[1] == prompt[r[0]]:
                times[r[0], 0] = t
            r[1] -= grant
            if grant and r[1] == 0:
                times[r[0], 1] = end
            if dec:
                r[2] -= 1
                if r[2] == 0:
                    times[r[0], 2] = end
        running = [r for r in running if r[2] > 0]
        t = end
    return times, np.array(steps)


@pytest.mark.parametrize(
    "max_num_seqs, rate, budget", [(16, 40.0, None), (4, 5.0, None), (16, 60.0, 90)]
)
def test_matches_a_step_by_step_reference(max_num_seqs, rate, budget):
    phases, steps = simulate(
        80, max_num_seqs=max_num_seqs, arrival_rate=rate, token_budget=budget
    )
    times, ref_steps = reference_simulation(80, 0, BETA, 64, max_num_seqs, rate, budget)
    np.testing.assert_array_equal(
        steps[["prefill_tokens", "decode_tokens", "n_running"]], ref_steps[:, 2:]
    )
    np.testing.assert_allclose(steps[["t_start", "t_end"]], ref_steps[:, :2], atol=1e-9)
    np.testing.assert_allclose(
        phases["t_start"].to_numpy()[::2], times[:, 0], atol=1e-9
    )
    np.testing.assert_allclose(phases["t_end"].to_numpy()[::2], times[:, 1], atol=1e-9)
    np.testing.assert_allclose(phases["t_end"].to_numpy()[1::2], times[:, 2], atol=1e-9)


@pytest.mark.skipif(_engine.numba is None, reason="numba is not installed")
@pytest.mark.parametrize(
    "extra",
    [{}, {"token_budget": 90}, {"noise": 0.05, "n_instances": 3, "token_budget": 70}],
)
def test_compiled_and_numpy_loops_agree_bit_for_bit(monkeypatch, extra):
    monkeypatch.setattr(_engine, "BACKEND", "numba")
    compiled = simulate(120, **extra)
    monkeypatch.setattr(_engine, "BACKEND", "numpy")
    plain = simulate(120, **extra)
    for got, want in zip(compiled, plain, strict=True):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_steps_are_summed_one_after_another():
    # the reference adds each step to the clock: the times agree exactly
    phases, steps = simulate(80, token_budget=90, arrival_rate=60.0)
    times, ref_steps = reference_simulation(80, 0, BETA, 64, 16, 60.0, 90)
    np.testing.assert_array_equal(steps[["t_start", "t_end"]], ref_steps[:, :2])
    np.testing.assert_array_equal(phases["t_end"].to_numpy()[1::2], times[:, 2])


def test_noise_pool_refill_keeps_the_stream(monkeypatch):
    # a budget-starved prompt takes far more steps than the first pool holds
    params = dict(
        beta=BETA,
        chunk_size=100_000,
        max_num_seqs=16,
        arrival_rate=1.0,
        prompt_tokens=(100_000, 0.0),
        output_tokens=(3, 0.0),
        token_budget=16,
        noise=0.05,
        random_state=0,
        return_steps=True,
    )
    refilled = simulate_trace(1, **params)
    assert len(refilled[1]) == 6250 + 3
    monkeypatch.setattr(_engine, "_NOISE_BLOCK", 10**5)  # one draw, no refill
    at_once = simulate_trace(1, **params)
    for got, want in zip(refilled, at_once, strict=True):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_given_lengths_are_used_as_they_are():
    # REGIMES.md's prompt mix: half 256-token, half 4096-token prompts.
    rng = np.random.RandomState(0)
    prompt = np.where(rng.rand(300) < 0.5, 256, 4096)
    output = np.full(300, 128)
    phases, truth = simulate_trace(
        300,
        beta=(6e-3, 2.5e-5, 5e-5),
        chunk_size=None,
        token_budget=8192,
        max_num_seqs=64,
        arrival_rate=5.0,
        prompt_tokens=prompt,
        output_tokens=output,
        random_state=0,
        return_truth=True,
    )
    np.testing.assert_array_equal(truth["prompt_tokens"], prompt)
    np.testing.assert_array_equal(truth["decode_steps"], output)
    pre = phases[phases.phase_type == "prefill"].sort_values("request_id")
    np.testing.assert_array_equal(pre["prefill_tokens"], prompt)


@pytest.mark.parametrize(
    "lengths, message",
    [
        (np.full(9, 100), r"shape \(n_requests,\) = \(10,\), got \(9,\)"),
        (np.r_[np.full(9, 100), 0], r"requests \[9\] have \[0\]"),
        (np.r_[np.full(9, 100.0), 1.5], r"requests \[9\] have \[1.5\]"),
    ],
)
def test_given_lengths_checked(lengths, message):
    with pytest.raises(ValueError, match=message):
        simulate_trace(
            10,
            beta=(6e-3, 2.5e-5, 5e-5),
            chunk_size=None,
            max_num_seqs=8,
            arrival_rate=5.0,
            prompt_tokens=lengths,
        )
