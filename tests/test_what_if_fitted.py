"""what_if_latencies reads the engine and the client's view from a fitted
estimator (ScheduleBetaRegressor, or a pipeline), keywords given winning."""

import warnings

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    BaselineBetaRegressor,
    PhaseExposureTransformer,
    ScheduleBetaRegressor,
)
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.replay import fitted_engine, what_if_latencies

BETA = np.array([0.011, 5e-6, 3.6e-4])
ENGINE = dict(chunk_size=None, token_budget=8192, max_num_seqs=256)


@pytest.fixture(scope="module")
def client():
    """A client-side trace with 30 ms before the queue and 10 ms reporting
    delays, and its schedule fit."""
    phases = simulate_trace(
        1024,
        beta=BETA,
        arrival_rate=8.0,
        prompt_tokens=(990, 0.1),
        output_tokens=(128, 0.0),
        request_delay=0.03,
        first_token_offset=0.01,
        last_token_offset=0.01,
        view="client",
        random_state=1,
        **ENGINE,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ScheduleBetaRegressor(**ENGINE).fit(phases)
    return phases, model


def observed_means(phases):
    pre = phases[phases.phase_type == "prefill"].set_index("request_id")
    dec = phases[phases.phase_type == "decode"].set_index("request_id")
    ttft = pre.t_end - pre.arrival
    e2e = dec.t_end.reindex(pre.index) - pre.arrival
    return ttft.mean(), e2e.mean()


def test_fitted_engine_of_a_schedule_fit(client):
    _, model = client
    found = fitted_engine(model)
    assert (found["chunk_size"], found["token_budget"]) == (None, 8192)
    assert found["max_num_seqs"] == 256 and found["max_in_flight"] is None
    # client-side: the queue delay is in the first/last-token totals
    assert found["request_delay"] == 0.0
    assert found["first_token_offset"] == pytest.approx(0.04, abs=1e-9)
    assert found["last_token_offset"] == pytest.approx(0.04, abs=1e-9)
    assert fitted_engine(model.beta_) == {}


def test_what_if_of_the_fitted_estimator_replays_the_trace(client):
    phases, model = client
    out = what_if_latencies(phases, model)
    ttft, e2e = observed_means(phases)
    # the simulator's truth, noise-free: exact but for float summation
    assert out.ttft.mean() == pytest.approx(ttft, rel=1e-9)
    assert out.e2e.mean() == pytest.approx(e2e, rel=1e-9)
    # betas alone: the engine's clock, no client overheads, no budget
    bare = what_if_latencies(phases, model.beta_)
    assert bare.ttft.mean() < ttft - 0.035


def test_keywords_given_win(client):
    phases, model = client
    out = what_if_latencies(phases, model)
    seen_at_once = what_if_latencies(phases, model, first_token_offset=0.0)
    # the first token is seen 40 ms earlier; nothing else moves
    np.testing.assert_allclose(out.ttft - seen_at_once.ttft, 0.04, atol=1e-9)
    np.testing.assert_allclose(out.e2e, seen_at_once.e2e, atol=1e-12)


def test_negative_fitted_offset_raises(client):
    _, model = client
    bad = ScheduleBetaRegressor(**ENGINE)
    bad.__dict__.update(model.__dict__)
    bad.alpha_ = dict(model.alpha_, first_token=-0.03)
    with pytest.raises(ValueError, match=r"alpha_\['first_token'\] = -0.03 s"):
        fitted_engine(bad)


def test_pipeline_step_model_and_interval_of_its_coefficients():
    # A five-coefficient step model: the pipeline's transformer says so, and
    # its beta_ci_ has five rows.
    truth = np.array([6e-3, 2.5e-5, 1e-9, 5e-5, 2e-8])
    features = ["steps", "prefill_tokens", "prefill_attention", "decode_tokens"]
    features.append("decode_context")
    phases = simulate_trace(
        400,
        beta=truth,
        step_model=features,
        chunk_size=256,
        max_num_seqs=32,
        arrival_rate=4.0,
        random_state=0,
    )
    pipe = make_pipeline(
        PhaseExposureTransformer(256, step_model=features), BaselineBetaRegressor()
    ).fit(phases)
    assert fitted_engine(pipe) == {
        "chunk_size": 256,
        "token_budget": None,
        "decode_tokens_include_first": False,
        "step_model": features,
    }
    out = what_if_latencies(phases, pipe, max_in_flight=None)
    given = what_if_latencies(
        phases, pipe[-1].beta_, chunk_size=256, step_model=features, max_in_flight=None
    )
    np.testing.assert_array_equal(out.ttft, given.ttft)
    assert {"ttft_low", "ttft_high"} <= set(out.columns)
    with pytest.raises(
        ValueError, match=r"pairs of the 5 coefficients, shape \(5, 2\)"
    ):
        what_if_latencies(phases, pipe[-1].beta_, beta_interval=np.ones((3, 2)))


def test_negative_fitted_offset_message_says_what_is_wrong(client):
    # The fit holds its offsets >= 0; a negative one was set otherwise, and
    # the message names the identified totals instead of a failed fit.
    _, model = client
    bad = ScheduleBetaRegressor(**ENGINE)
    bad.__dict__.update(model.__dict__)
    bad.alpha_ = dict(model.alpha_, queue=0.05, first_token=-0.01)
    with pytest.raises(ValueError) as info:
        what_if_latencies(client[0], bad)
    message = str(info.value)
    assert "set otherwise" in message and "schedule_misfit_" not in message
    assert "first token 0.04 s" in message  # 0.05 - 0.01
