"""What-if latencies: closed-loop clients and other arrival rates.

Ground truth: ``simulate_trace`` with a closed-loop client (256 in flight,
``view="client"``) at 70 %, 100 % and 130 % of the engine's capacity. The
capacity, 27.4 requests/s, is the simulated engine's completion rate under
an unbounded queue (1024-token prompts, 128 output tokens, budget 8192,
256 running). The same seed draws the same requests at every rate, with the
inter-arrival times scaled: the what-if's rescaled requests are the truth's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    ScheduleBetaRegressor,
)
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.replay import infer_max_in_flight, what_if_latencies

BETA = (6e-3, 2.5e-5, 5e-5)
CAPACITY = 27.4
ENGINE = dict(
    chunk_size=None,
    token_budget=8192,
    max_num_seqs=256,
    prompt_tokens=(1024, 0.3),
    output_tokens=(128, 0.3),
    noise=0.02,
)
REPLAY = dict(token_budget=8192, max_num_seqs=256)
N = 3000


def closed_loop(load, seed=0, **view):
    return simulate_trace(
        N,
        beta=BETA,
        arrival_rate=load * CAPACITY,
        max_in_flight=256,
        view="client",
        random_state=seed,
        **ENGINE,
        **view,
    )


def observed_means(phases) -> dict:
    """Mean TTFT (from the send), ITL and end-to-end of a simulated trace."""
    pre = phases[phases.phase_type == "prefill"].set_index("request_id")
    dec = phases[phases.phase_type == "decode"].set_index("request_id")
    dec = dec.reindex(pre.index)
    return {
        "ttft": float((pre.t_end - pre.arrival).mean()),
        "itl": float(((dec.t_end - dec.t_start) / dec.decode_tokens).mean()),
        "e2e": float((dec.t_end - pre.arrival).mean()),
    }


def relative(predicted, truth) -> dict:
    means = {q: float(predicted[q].mean()) for q in truth}
    return {q: means[q] / truth[q] - 1.0 for q in truth}


def test_closed_loop_cap_is_read_and_replayed_within_three_percent():
    phases = closed_loop(1.3)
    assert infer_max_in_flight(phases) == 256
    truth = observed_means(phases)
    closed = relative(what_if_latencies(phases, BETA, **REPLAY), truth)
    # measured: TTFT +1.5 %, ITL +0.06 %, end-to-end +0.08 %
    assert all(abs(e) < 0.03 for e in closed.values()), closed
    opened = relative(
        what_if_latencies(phases, BETA, max_in_flight=None, **REPLAY), truth
    )
    # Open loop, each send waits for a replayed step boundary the real one
    # met at a completion: measured TTFT +41 %.
    assert abs(opened["ttft"]) > 10 * abs(closed["ttft"]) and opened["ttft"] > 0.2
    # Betas 5 % high: the closed loop holds the sends back as the engine
    # slows, the open loop queues them (measured TTFT +15 % and +2247 %).
    slow = tuple(1.05 * b for b in BETA)
    closed_slow = relative(what_if_latencies(phases, slow, **REPLAY), truth)
    open_slow = relative(
        what_if_latencies(phases, slow, max_in_flight=None, **REPLAY), truth
    )
    assert open_slow["ttft"] > 20 * closed_slow["ttft"] > 0
    assert open_slow["e2e"] > 5 * closed_slow["e2e"] > 0


def test_open_loop_traces_have_no_cap():
    phases = simulate_trace(
        800, beta=BETA, arrival_rate=10.0, view="engine", random_state=0, **ENGINE
    )
    assert infer_max_in_flight(phases) is None  # no intended arrivals
    light = closed_loop(0.3)  # the cap never binds: sends are on time
    assert infer_max_in_flight(light) is None
    # A client's jitter (sends 0.5 ms late) is no cap; a tolerance below it
    # takes every send for held back, not at a cap: still open loop.
    jittery = light.copy()
    jittery["intended_arrival"] -= 5e-4
    assert infer_max_in_flight(jittery) is None
    assert infer_max_in_flight(jittery, lag_tolerance=1e-4) is None
    # The saturated closed loop with the same jitter is still found.
    saturated = closed_loop(1.3)
    saturated["intended_arrival"] -= 5e-4
    assert infer_max_in_flight(saturated) == 256
    with pytest.raises(ValueError, match="lag_tolerance must be a number >= 0"):
        infer_max_in_flight(saturated, lag_tolerance=-1.0)
    assert what_if_latencies(light, BETA, **REPLAY).attrs["max_in_flight"] is None


@pytest.fixture(scope="module")
def fitted_at_40_percent():
    phases = simulate_trace(
        N,
        beta=BETA,
        arrival_rate=0.4 * CAPACITY,
        view="engine",
        random_state=1,
        **ENGINE,
    )
    model = make_pipeline(
        PhaseExposureTransformer(chunk_size=8192, token_budget=8192),
        IterativeBetaRegressor(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(phases)
    return phases, model


@pytest.mark.parametrize("load", [0.7, 1.0, 1.3])
def test_fit_at_40_percent_predicts_higher_loads_within_three_percent(
    fitted_at_40_percent, load
):
    phases, model = fitted_at_40_percent
    truth = observed_means(closed_loop(load, seed=1))
    predicted = what_if_latencies(
        phases, model, rate_scale=load / 0.4, max_in_flight=256, **REPLAY
    )
    errors = relative(predicted, truth)
    # measured (IterativeBetaRegressor, betas within 0.4 %): at most 0.5 %
    assert all(abs(e) < 0.03 for e in errors.values()), errors
    # The intervals hold the point prediction and come from beta_ci_.
    for q in ("ttft", "itl", "e2e"):
        low, high = predicted[f"{q}_low"], predicted[f"{q}_high"]
        assert (low <= predicted[q]).all() and (predicted[q] <= high).all()
    assert (predicted["e2e_high"] > predicted["e2e_low"]).mean() > 0.9
    # The requests are the truth's: sent no earlier than intended.
    assert (predicted["send"] >= predicted["arrival"] - 1e-9).all()


def test_schedule_fit_at_40_percent_predicts_130_percent(fitted_at_40_percent):
    phases, _ = fitted_at_40_percent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ScheduleBetaRegressor(
            chunk_size=None, token_budget=8192, max_num_seqs=256
        ).fit(phases)
    truth = observed_means(closed_loop(1.3, seed=1))
    # The simulated client has no overheads: its sends tie with the step ends
    # that complete requests, which the microseconds of offset the fit finds
    # on such a trace would break (a send just after a boundary waits a
    # step: TTFT +52 %). The model's own offsets are read by default.
    no_overheads = dict(request_delay=0.0, first_token_offset=0.0)
    no_overheads["last_token_offset"] = 0.0
    predicted = what_if_latencies(
        phases,
        model,
        rate_scale=1.3 / 0.4,
        max_in_flight=256,
        **no_overheads,
        **REPLAY,
    )
    errors = relative(predicted, truth)
    # measured: betas within 0.3 %; TTFT -2.0 %, ITL -0.2 %, e2e -0.2 %
    assert all(abs(e) < 0.03 for e in errors.values()), errors
    # Offsets are the caller's: a first-token offset moves every TTFT.
    shifted = what_if_latencies(
        phases,
        model,
        rate_scale=1.3 / 0.4,
        max_in_flight=256,
        **dict(no_overheads, first_token_offset=0.05),
        **REPLAY,
    )
    assert np.allclose(shifted["ttft"] - predicted["ttft"], 0.05, atol=1e-9)


def test_rate_scale_and_intervals_change_the_answer():
    phases = simulate_trace(
        600, beta=BETA, arrival_rate=10.0, view="engine", random_state=0, **ENGINE
    )
    base = what_if_latencies(phases, BETA, max_in_flight=None, **REPLAY)
    faster = what_if_latencies(
        phases, BETA, rate_scale=3.0, max_in_flight=None, **REPLAY
    )
    gaps = np.diff(np.sort(base["arrival"]))
    assert np.allclose(np.diff(np.sort(faster["arrival"])), gaps / 3.0)
    assert faster["e2e"].mean() > base["e2e"].mean()
    ci = np.array([[5e-3, 7e-3], [2e-5, 3e-5], [4e-5, 6e-5]])
    wide = what_if_latencies(phases, BETA, beta_interval=ci, max_in_flight=None)
    assert (wide["e2e_high"] - wide["e2e_low"]).mean() > 0.1 * wide["e2e"].mean()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rate_scale=0), "rate_scale must be a number > 0"),
        (dict(max_in_flight="many"), "max_in_flight must be a positive integer"),
        (dict(max_in_flight=0), "max_in_flight must be a positive integer"),
        (dict(beta_interval=[[1, 0]] * 3), "lower limits exceed the upper"),
        (dict(beta_interval=[1, 2]), r"shape \(3, 2\)"),
    ],
)
def test_bad_arguments(kwargs, message):
    phases = simulate_trace(
        50, beta=BETA, arrival_rate=10.0, view="engine", random_state=0, **ENGINE
    )
    with pytest.raises(ValueError, match=message):
        what_if_latencies(phases, BETA, **kwargs)
