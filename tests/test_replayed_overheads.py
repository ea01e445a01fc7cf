"""A client's request overheads read by replaying its sends at given betas
(``replayed_overheads``), and the command line's phase-exposure fit that
reports them on client-side CSV traces (issue 19: the fallback's TTFT)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from sklearn_beta.cli import _main
from sklearn_beta.cli._schedule import ScheduleFallback
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine_config._settings import EngineSettings
from sklearn_beta.engine_config._trace_fit import replayed_overheads
from sklearn_beta.replay import what_if_latencies

BETA = (5e-3, 2e-5, 1e-4)
ENGINE = dict(chunk_size=None, token_budget=2048, max_num_seqs=64)
SHAPES = dict(prompt_tokens=(400, 0.5), output_tokens=(100, 0.5))
#: The simulator's lognormal of median 20 ms and sigma 0.5 has mean
#: 20 exp(0.125) = 22.66 ms; 5 ms of median first-token offset, 5.67 ms.
JITTERED_MEAN = (0.02 + 0.005) * np.exp(0.125)


def client_trace(rate, seed=0, **overheads):
    return simulate_trace(
        600,
        beta=BETA,
        arrival_rate=rate,
        noise=0.02,
        view="client",
        random_state=seed,
        **ENGINE,
        **SHAPES,
        **overheads,
    )


def schedule_path_fails(monkeypatch, max_num_seqs) -> None:
    """The command line's schedule path reads an engine of ``max_num_seqs``
    (budget 2048, no chunk cap, no KV cache), then its fits fail."""
    read = EngineSettings(
        max_num_seqs=max_num_seqs,
        num_gpu_blocks=None,
        block_size=16,
        chunk_size=None,
        token_budget=2048,
    )

    def failed(*args, **kwargs):
        raise ScheduleFallback("the schedule fit failed (simulated)")

    monkeypatch.setattr(_main, "_schedule_engine", lambda *a: (read, None))
    monkeypatch.setattr(_main, "fit_schedule", failed)
    monkeypatch.setattr(_main, "_attention_rescue", failed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constant_overheads_are_found_at_the_true_betas(seed):
    phases = client_trace(
        20.0,
        seed,
        request_delay=0.02,
        first_token_offset=0.005,
        last_token_offset=0.008,
    )
    found = replayed_overheads(phases, BETA, **ENGINE)
    # measured 25.10, 25.10 and 25.17 ms: the wait for the step in flight
    # differs between the engine's arrival and the replay's by its phase
    assert found.alpha[0] + found.alpha[1] * 400 == pytest.approx(0.025, rel=0.01)
    assert found.alpha[2] == 0.0  # not told apart from the decode error
    assert not found.queued and 0.9 * 600 < found.n_used < 600
    assert found.n_requests == 600


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jittered_overheads_give_their_mean(seed):
    phases = client_trace(
        20.0,
        seed,
        request_delay=(0.02, 0.5),
        first_token_offset=(0.005, 0.5),
        last_token_offset=0.008,
    )
    found = replayed_overheads(phases, BETA, **ENGINE)
    # measured 28.7, 27.8, 29.4 ms at the mean prompt against 28.3 ms
    mean_prompt = 400.0
    total = found.alpha[0] + found.alpha[1] * mean_prompt
    assert total == pytest.approx(JITTERED_MEAN, rel=0.05)


def test_an_overloaded_trace_gives_no_overheads():
    # Under saturation the delay before the queue is absorbed by it: every
    # request but the first few queues, and what the replay reads is its
    # queue's error (measured 14 ms of the 20 ms over every request).
    phases = client_trace(200.0, request_delay=0.02)
    found = replayed_overheads(phases, BETA, **ENGINE)
    assert found.queued and found.n_used == 0 and found.n_requests == 600
    assert np.array_equal(found.alpha, np.zeros(3))


def test_a_queued_trace_without_a_bounded_engine_gives_no_overheads(
    capsys, tmp_path, monkeypatch
):
    phases = client_trace(200.0, request_delay=0.02)
    path = tmp_path / "queued.csv"
    phases.to_csv(path, index=False)
    schedule_path_fails(monkeypatch, max_num_seqs=None)
    code, out, err = run_cli(capsys, "fit", path, "--output", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["alphas"] == [0.0, 0.0, 0.0]
    note = next(n for n in report["notes"] if n.startswith("alphas"))
    assert "bounds no queue" in note


def test_the_replay_needs_the_sends():
    phases = client_trace(20.0, request_delay=0.02).drop(columns="arrival")
    with pytest.raises(ValueError, match="arrival"):
        replayed_overheads(phases, BETA, **ENGINE)


@pytest.fixture(scope="module")
def light_client(tmp_path_factory):
    phases = client_trace(
        20.0, request_delay=0.02, first_token_offset=0.005, last_token_offset=0.008
    )
    path = tmp_path_factory.mktemp("client") / "client.csv"
    phases.to_csv(path, index=False)
    return path


def test_the_phase_fit_reports_a_client_csv_traces_overheads(capsys, light_client):
    code, out, err = run_cli(
        capsys,
        *("fit", light_client, "--estimator", "phase", "--output", "json"),
        *("--chunk-size", "none", "--token-budget", 2048, "--max-num-seqs", 64),
    )
    assert code == 0, err
    report = json.loads(out)
    a0, a1, a2 = report["alphas"]
    assert a0 > 0 and a2 == 0.0
    assert report["blis"]["alpha_coeffs"][0] == pytest.approx(a0 * 1e6, rel=1e-9)
    # The phase fit (its prefill phases cut to their steps: beta1 -29 %,
    # beta2 +16 %; fitted from the sends, -80 % and -43 %) leaves the
    # client's time to the overheads: measured -59 % without them, -0.1 %
    # with them.
    phases = pd.read_csv(light_client)
    beta = list(report["betas"].values())
    prefill = phases[phases.phase_type == "prefill"]
    observed = (prefill.t_end - prefill.t_start).mean()
    tokens = prefill.prefill_tokens.mean()
    for delay, error in ((0.0, (-0.7, -0.5)), (a0 + a1 * tokens, (-0.05, 0.05))):
        replayed = what_if_latencies(phases, beta, request_delay=delay, **ENGINE)
        assert error[0] < replayed.ttft.mean() / observed - 1 < error[1]
    note = next(n for n in report["notes"] if n.startswith("alphas"))
    assert "replay of the client's sends" in note
    assert "token budget 2048, max_num_seqs 64" in note
    assert not any("server-side trace" in n for n in report["notes"])


def test_an_engine_side_trace_keeps_its_alphas_at_zero(capsys, tmp_path):
    phases = simulate_trace(
        300, beta=BETA, arrival_rate=20.0, view="engine", random_state=0, **ENGINE
    )
    path = tmp_path / "engine.csv"
    phases.to_csv(path, index=False)
    code, out, err = run_cli(
        capsys, "fit", path, "--estimator", "phase", "--output", "json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["alphas"] is None
    assert any("server-side trace" in n for n in report["notes"])


def test_a_schedule_fallback_replays_on_the_schedule_paths_engine(
    capsys, light_client, monkeypatch
):
    schedule_path_fails(monkeypatch, max_num_seqs=64)
    code, out, err = run_cli(capsys, "fit", light_client, "--output", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["fit"]["estimator"] == "phase"
    note = next(n for n in report["notes"] if n.startswith("alphas"))
    # the schedule path's engine, whatever chunking the phase search chose
    assert "chunk size None, token budget 2048, max_num_seqs 64" in note
    assert report["alphas"][0] > 0


@pytest.mark.parametrize(
    "step_model, chosen",
    [
        ("attention", "attention"),
        # the published model by its features: coefficients beta0..beta2
        (
            "steps,prefill_tokens,decode_tokens",
            ["steps", "prefill_tokens", "decode_tokens"],
        ),
    ],
)
def test_a_step_models_phase_fit_replays_the_overheads_with_its_coefficients(
    capsys, light_client, step_model, chosen
):
    code, out, err = run_cli(
        capsys,
        *("fit", light_client, "--estimator", "phase", "--output", "json"),
        *("--step-model", step_model, "--chunk-size", "none"),
        *("--token-budget", 2048, "--max-num-seqs", 64),
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["step_model"] == chosen
    a0, a1, a2 = report["alphas"]
    assert a0 > 0 and a2 == 0.0
    names = list(report["coefficients"])
    beta = [report["coefficients"][n]["value"] for n in names]
    if names == ["beta0", "beta1", "beta2"]:
        names = "published"
    phases = pd.read_csv(light_client)
    prefill = phases[phases.phase_type == "prefill"]
    observed = (prefill.t_end - prefill.t_start).mean()
    delay = a0 + a1 * prefill.prefill_tokens.mean()
    # the overheads are the replay's at these coefficients: with them the
    # step model's TTFT is the trace's (measured -0.13 % with attention,
    # -0.10 % with the published features), without them it misses the
    # client's time (-69 %, -59 %)
    for offset, error in ((0.0, (-0.75, -0.5)), (delay, (-0.05, 0.05))):
        replayed = what_if_latencies(
            phases, beta, step_model=names, request_delay=offset, **ENGINE
        )
        assert error[0] < replayed.ttft.mean() / observed - 1 < error[1]
    note = next(n for n in report["notes"] if n.startswith("alphas"))
    assert "replay of the client's sends" in note
    code, out, err = run_cli(
        capsys,
        *("fit", light_client, "--estimator", "phase", "--output", "table"),
        *("--step-model", step_model, "--chunk-size", "none"),
        *("--token-budget", 2048, "--max-num-seqs", 64),
    )
    assert f"per output token) {1e6 * a0:.4g}, " in out


def test_a_step_models_engine_side_report_has_no_alphas(capsys, tmp_path):
    phases = simulate_trace(
        300, beta=BETA, arrival_rate=20.0, view="engine", random_state=0, **ENGINE
    )
    path = tmp_path / "engine.csv"
    phases.to_csv(path, index=False)
    code, out, err = run_cli(
        capsys,
        *("fit", path, "--estimator", "phase", "--output", "json"),
        *("--step-model", "attention"),
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["alphas"] is None
    assert not any(n.startswith("alphas") for n in report["notes"])
