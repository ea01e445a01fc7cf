"""The simulator's untidy clients and engines (issue 19): per-request
overheads, the queue in arrival order, slots reused in the order a client sees
requests finish, and heavy-tailed step noise. Oracles: times worked by hand
from the truth table, and the model step times of the step table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine import _loop as _engine

BETA = (5e-3, 2e-5, 8e-5)
BASE = dict(beta=BETA, chunk_size=None, max_num_seqs=16, arrival_rate=40.0)


def simulate(n=200, **kwargs):
    params = dict(BASE, prompt_tokens=(200, 0.5), output_tokens=(20, 0.5))
    params.update(random_state=0, return_truth=True, view="client", **kwargs)
    return simulate_trace(n, **params)


def test_per_request_overheads_are_those_given():
    rng = np.random.RandomState(3)
    delay, first, last = (rng.uniform(0, 0.05, 200) for _ in range(3))
    phases, truth = simulate(
        request_delay=delay, first_token_offset=first, last_token_offset=last
    )
    np.testing.assert_allclose(truth["arrival"] - truth["send"], delay, atol=1e-12)
    seen_first = truth["first_token_reported"] - truth["first_token"]
    seen_last = truth["last_token_reported"] - truth["last_token"]
    np.testing.assert_allclose(seen_first, first, atol=1e-12)
    np.testing.assert_allclose(seen_last, last, atol=1e-12)
    # the trace shows the client's times: send to first token as seen
    np.testing.assert_array_equal(phases["t_start"].to_numpy()[::2], truth["send"])
    np.testing.assert_array_equal(
        phases["t_end"].to_numpy()[1::2], truth["last_token_reported"]
    )


def test_drawn_overheads_are_lognormal_of_the_median_and_sigma():
    _, truth = simulate(4000, request_delay=(0.02, 0.5), arrival_rate=400.0)
    logs = np.log((truth["arrival"] - truth["send"]).to_numpy() / 0.02)
    assert abs(logs.mean()) < 0.03  # 4 standard errors of 0.5 / sqrt(4000)
    assert logs.std() == pytest.approx(0.5, rel=0.05)
    # sigma 0 is the constant: the same trace as the float
    same = simulate(request_delay=(0.02, 0.0))[0]
    constant = simulate(request_delay=0.02)[0]
    pd.testing.assert_frame_equal(same, constant, check_exact=False, atol=1e-15)


def test_the_queue_is_served_in_arrival_order_not_send_order():
    # one running request at a time, no noise: a request sent first but
    # delayed 1 s is admitted after the one sent next, worked by hand
    _, truth = simulate(
        2,
        max_num_seqs=1,
        prompt_tokens=np.array([100, 300]),
        output_tokens=np.array([2, 3]),
        request_delay=np.array([1.0, 0.0]),
        arrival_rate=10.0,
    )
    send = truth["send"].to_numpy()
    assert send[0] < send[1] < send[0] + 1.0
    b0, b1, b2 = BETA
    # request 1: admitted at its arrival, one prefill step, three decodes
    first1 = send[1] + b0 + b1 * 300
    last1 = first1 + 3 * (b0 + b2)
    # request 0 arrives 1 s after its send, once request 1 is done
    start0 = max(send[0] + 1.0, last1)
    first0 = start0 + b0 + b1 * 100
    np.testing.assert_allclose(truth["first_token"], [first0, first1], rtol=1e-12)
    np.testing.assert_allclose(
        truth["last_token"], [first0 + 2 * (b0 + b2), last1], rtol=1e-12
    )


def test_closed_loop_reuses_slots_in_the_order_it_sees_them_freed():
    # two in flight; request 0 finishes first but is seen 1 s late, so the
    # slot of request 1 (seen at once) sends request 2, then request 0's
    # sends request 3: each send is the next seen completion, worked by hand
    last = np.array([1.0, 0.0, 0.0, 0.0])
    _, truth = simulate(
        4,
        max_in_flight=2,
        prompt_tokens=np.array([50, 50, 50, 50]),
        output_tokens=np.array([2, 8, 2, 2]),
        last_token_offset=last,
        arrival_rate=1000.0,
    )
    seen = truth["last_token"].to_numpy() + last
    assert seen[1] < seen[0]  # finished later, seen earlier
    intended = truth["intended_arrival"].to_numpy()
    want = np.maximum(intended[2:], np.sort(seen[:2]))
    np.testing.assert_allclose(truth["send"].to_numpy()[2:], want, rtol=1e-12)


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_outlier_steps_last_factor_times_longer(noise):
    phases, steps = simulate_trace(
        400,
        **BASE,
        noise=noise,
        noise_outliers=(0.05, 4.0),
        random_state=1,
        return_steps=True,
    )
    model = (
        BETA[0] + BETA[1] * steps["prefill_tokens"] + BETA[2] * steps["decode_tokens"]
    )
    ratio = ((steps["t_end"] - steps["t_start"]) / model).to_numpy()
    slow = ratio > 2.0  # the lognormal factor of 2 % never reaches 2
    assert slow.mean() == pytest.approx(0.05, abs=0.01)
    if noise == 0.0:
        np.testing.assert_allclose(ratio[slow], 4.0, rtol=1e-9)
        np.testing.assert_allclose(ratio[~slow], 1.0, rtol=1e-9)
    else:
        np.testing.assert_allclose(np.log(ratio[~slow]).std(), noise, rtol=0.1)


def test_outlier_and_jitter_runs_agree_on_both_loops(monkeypatch):
    if _engine.numba is None:
        pytest.skip("numba is not installed")
    rng = np.random.RandomState(5)
    kwargs = dict(
        request_delay=rng.uniform(0, 0.2, 150),
        last_token_offset=(0.01, 1.0),
        max_in_flight=6,
        noise=0.02,
        noise_outliers=(0.02, 3.0),
        num_gpu_blocks=80,
        token_budget=64,
    )
    monkeypatch.setattr(_engine, "BACKEND", "numba")
    compiled = simulate(150, **kwargs)
    monkeypatch.setattr(_engine, "BACKEND", "numpy")
    plain = simulate(150, **kwargs)
    for got, want in zip(compiled, plain, strict=True):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(request_delay=(0.01,)), "request_delay: a pair"),
        (dict(request_delay=(0.0, 0.5)), "median > 0"),
        (dict(first_token_offset=(0.01, -1.0)), "sigma >= 0"),
        (dict(last_token_offset=np.zeros(3)), r"shape \(n_requests,\)"),
        (
            dict(request_delay=np.r_[0.1, -1.0, np.nan, np.zeros(7)]),
            r"requests \[1, 2\]",
        ),
        (dict(noise_outliers=(0.0, 3.0)), "0 < share < 1"),
        (dict(noise_outliers=(0.1, 1.0)), "other than 1"),
        (dict(noise_outliers=(0.1,)), "noise_outliers"),
        (dict(first_token_offset=(0.01, 0.5), view="engine"), "view='client'"),
        (dict(last_token_offset=np.full(10, 0.01), view="phases"), "view='client'"),
    ],
)
def test_overhead_and_outlier_validation(kwargs, match):
    params = dict(BASE, random_state=0)
    params.update(kwargs)
    with pytest.raises(ValueError, match=match):
        simulate_trace(10, **params)
