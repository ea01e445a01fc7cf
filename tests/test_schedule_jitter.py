"""The schedule-consistent fit on a client-side trace whose reporting
offsets jitter request by request (issue 19): the first and last token are
seen 10 ms after the engine emits them on average, with a CV of 0.3 (a
lognormal per request), on the H100-like engine of tests/test_schedule_offsets.py
at 8 req/s (19 ms steps). Ground truth from the simulator; the replay of the
fit is compared with the trace's mean latencies."""

import warnings

import numpy as np
import pytest

from sklearn_beta import ScheduleBetaRegressor
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.replay import what_if_latencies

BETA = np.array([0.011, 5e-6, 3.6e-4])
ENGINE = dict(chunk_size=None, token_budget=8192, max_num_seqs=256)


def jittered(mean, cv, n, rng):
    sigma = np.sqrt(np.log1p(cv**2))
    return mean * np.exp(sigma * rng.standard_normal(n) - 0.5 * sigma**2)


@pytest.fixture(scope="module")
def trace_and_fit():
    rng = np.random.RandomState(99)
    n = 600
    first, last = jittered(0.01, 0.3, n, rng), jittered(0.01, 0.3, n, rng)
    phases, truth = simulate_trace(
        n,
        beta=BETA,
        arrival_rate=8.0,
        prompt_tokens=(990, 0.1),
        output_tokens=(128, 0.0),
        noise=0.02,
        request_delay=0.03,
        first_token_offset=first,
        last_token_offset=last,
        view="client",
        random_state=1,
        return_truth=True,
        **ENGINE,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ScheduleBetaRegressor(arrival="arrival", **ENGINE).fit(phases)
    return phases, truth, model


def test_jittered_reporting_offsets_fit_within_tolerance(trace_and_fit):
    phases, truth, model = trace_and_fit
    # the offsets' totals: the delay plus each token's mean reporting offset
    seen_first = truth["first_token_reported"] - truth["first_token"]
    seen_last = truth["last_token_reported"] - truth["last_token"]
    # measured: 38.6 and 37.6 ms for 40.1 and 40.3; betas +3.6, +11.9,
    # -5.0 %, misfit 0.134 (above the noise: the jitter, not the schedule)
    assert model.alpha_["first_token"] == pytest.approx(
        0.03 + seen_first.mean(), abs=3e-3
    )
    assert model.alpha_["last_token"] == pytest.approx(
        0.03 + seen_last.mean(), abs=3e-3
    )
    err = model.beta_ / BETA - 1
    assert abs(err[0]) < 0.06 and abs(err[2]) < 0.06
    assert abs(err[1]) < 0.15  # beta1 and the first-token offset trade


def test_jittered_reporting_offsets_replay_the_mean_latencies(trace_and_fit):
    phases, truth, model = trace_and_fit
    alpha = model.alpha_
    out = what_if_latencies(
        phases,
        model.beta_,
        first_token_offset=alpha["first_token"],
        last_token_offset=alpha["last_token"],
        **ENGINE,
    )
    pre = phases[phases.phase_type == "prefill"]
    dec = phases[phases.phase_type == "decode"]
    ttft = (pre.t_end - pre.t_start).mean()
    e2e = (dec.t_end.to_numpy() - pre.t_start.to_numpy()).mean()
    # measured: -0.2 % and +1.1 %; the bar is 3 %
    assert out.ttft.mean() == pytest.approx(ttft, rel=0.03)
    assert out.e2e.mean() == pytest.approx(e2e, rel=0.03)
