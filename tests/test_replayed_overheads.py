"""A client's request overheads read by replaying its sends at given betas
(``replayed_overheads``), the prefill phases cut to the steps that ran their
prompts (``prefill_steps_of_client_phases``), and the command line's
phase-exposure fit of client-side CSV traces that fits the one and reports
the other (issue 19: the fallback's TTFT, and its betas, which took the
client's time as step time)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from sklearn_beta.cli import _main
from sklearn_beta.cli._schedule import ScheduleFallback
from sklearn_beta.core._columns import PHASE_COLUMNS
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine_config._settings import EngineSettings
from sklearn_beta.engine_config._trace_fit import (
    PREFILL_WINDOWS,
    fit_client_phases,
    prefill_steps_of_client_phases,
    replayed_overheads,
)
from sklearn_beta.io import read_tracev2
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


@pytest.mark.parametrize("step_model", ["published", "attention"])
def test_an_engine_side_trace_is_fitted_as_given_without_alphas(
    capsys, tmp_path, step_model
):
    phases = simulate_trace(
        300, beta=BETA, arrival_rate=20.0, view="engine", random_state=0, **ENGINE
    )
    path = tmp_path / "engine.csv"
    phases.to_csv(path, index=False)
    code, out, err = run_cli(
        capsys,
        *("fit", path, "--estimator", "phase", "--output", "json"),
        *("--step-model", step_model),
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["alphas"] is None
    assert not any(n.startswith("client-side times") for n in report["notes"])
    if step_model == "published":
        assert any("server-side trace" in n for n in report["notes"])
    else:
        assert not any(n.startswith("alphas") for n in report["notes"])


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


# The phase-exposure fit's part of a client-side prefill phase: the steps
# that ran its prompt (prefill_steps_of_client_phases).


def table(rows):
    return pd.DataFrame(rows, columns=[*PHASE_COLUMNS, "instance_id"])


HAND = table(
    [
        # decode steps of 0.1 s: 1.5 of them before the first token
        (0, "prefill", 0.0, 1.0, 300, 0, 0),
        (0, "decode", 1.0, 2.0, 0, 10, 0),
        # steps of 0.2 s reach back past the send: the send stays
        (1, "prefill", 0.95, 1.0, 300, 0, 0),
        (1, "decode", 1.0, 3.0, 0, 10, 0),
        # no decode token: no step to measure, the start stays
        (2, "prefill", 0.5, 1.2, 300, 0, 0),
        (2, "decode", 1.2, 1.2, 0, 0, 0),
        # the same request id on another instance, steps of 0.05 s
        (0, "decode", 4.0, 4.5, 0, 10, 1),
        (0, "prefill", 3.0, 4.0, 300, 0, 1),
    ]
)


def test_each_prefill_starts_its_own_decode_steps_before_its_first_token():
    cut = prefill_steps_of_client_phases(HAND, window_steps=1.5)
    expected = HAND.t_start.to_numpy().copy()
    expected[0] = 1.0 - 1.5 * 0.1
    expected[7] = 4.0 - 1.5 * 0.05
    np.testing.assert_allclose(cut.t_start.to_numpy(), expected, rtol=0, atol=1e-12)
    # rows, order, ends and the other columns as given; the input untouched
    pd.testing.assert_frame_equal(
        cut.drop(columns="t_start"), HAND.drop(columns="t_start")
    )
    assert HAND.t_start.iloc[0] == 0.0


def test_a_chunk_cap_gives_the_prompt_its_steps():
    cut = prefill_steps_of_client_phases(HAND, window_steps=2.0, chunk_size=100)
    # 300 tokens in chunks of 100: three steps of 0.1 s, two decode steps each
    assert cut.t_start.iloc[0] == pytest.approx(1.0 - 3 * 2.0 * 0.1)
    assert cut.t_start.iloc[2] == 0.95  # request 1: its send


def test_renamed_columns_are_read():
    renamed = HAND.rename(columns={"t_start": "begin", "instance_id": "gpu"})
    columns = {"t_start": "begin", "instance_id": "gpu"}
    cut = prefill_steps_of_client_phases(renamed, window_steps=1.5, columns=columns)
    expected = [0.85, 1.0, 0.95, 1.0, 0.5, 1.2, 4.0, 3.925]  # by hand, above
    np.testing.assert_allclose(cut.begin.to_numpy(), expected, rtol=0, atol=1e-12)
    # an infinite window reaches every send: the table as given
    kept = prefill_steps_of_client_phases(HAND, window_steps=np.inf)
    pd.testing.assert_frame_equal(kept, HAND)


def test_a_light_client_fit_forecasts_heavier_loads(capsys, light_client):
    code, out, err = run_cli(
        capsys,
        *("fit", light_client, "--estimator", "phase", "--output", "json"),
        *("--chunk-size", "none", "--token-budget", 2048, "--max-num-seqs", 64),
    )
    assert code == 0, err
    report = json.loads(out)
    beta = list(report["betas"].values())
    cut = [n for n in report["notes"] if n.startswith("client-side times")]
    # the decode phases choose 1.5 decode steps here, 2 all but as well
    # (their RMSE 0.0262 s both, at a 2048-token model chunk; three
    # 0.057 s, from the send 0.125 s; one step, not tried, 0.035 s)
    assert len(cut) == 1
    assert any(f"fitted from {w} x ceil(P / 2048)" in cut[0] for w in ("1.5", "2"))
    # The simulator with these betas against the simulated truth (which
    # replays within 0.3 %): fitted at 20 req/s, the mean ITL at 20, 60 and
    # 120 req/s measured +2.4, -0.9, -0.8 %; with the prefill phases fitted
    # from the sends (before), -34, -44, -43 %.
    for rate in (20.0, 60.0, 120.0):
        phases = client_trace(
            rate, request_delay=0.02, first_token_offset=0.005, last_token_offset=0.008
        )
        decode = phases[phases.phase_type == "decode"]
        observed = ((decode.t_end - decode.t_start) / decode.decode_tokens).mean()
        replayed = what_if_latencies(phases, beta, **ENGINE).itl.mean()
        assert replayed / observed - 1 == pytest.approx(0.0, abs=0.03)
    # the truth's own forecast, the oracle's check
    truth = what_if_latencies(phases, BETA, **ENGINE).itl.mean()
    assert truth / observed - 1 == pytest.approx(0.0, abs=0.005)


@pytest.mark.parametrize("engine", [None, dict(chunk_size=256, max_num_seqs=16)])
def test_the_window_is_the_one_whose_fit_explains_the_decode_phases(engine):
    # The shipped TraceV2 example: 256-token chunks costing 7.7 ms on steps
    # of about 5 ms, 2-3 ms of client overhead. A window of 1.5 decode steps
    # per chunk is shorter than the chunks' steps (a prefill step -37 %);
    # the decode phases choose 3 (their RMSE 0.0100 s against 0.0276 s),
    # in the fits themselves and in a replay of the sends.
    data = Path(__file__).resolve().parents[1] / "data" / "tracev2"  # the shipped
    phases = read_tracev2(data / "trace.csv", data / "header.yaml")
    phases = phases.assign(arrival=phases.t_start.where(phases.phase_type == "prefill"))
    fit, window, cut = fit_client_phases(
        phases, chunk_size=256, prompt_chunk=256, engine=engine, time_resolution=1e-6
    )
    assert window == 3.0 and window in PREFILL_WINDOWS
    true_beta = np.array([4e-3, 3e-5, 2e-4])  # data/make_examples.py
    probes = np.array([[1, 256, 0], [1, 0, 1], [1, 0, 16], [1, 256, 16]])
    error = probes @ fit.beta / (probes @ true_beta) - 1
    assert np.abs(error).max() < 0.1, error  # measured 7.8 %
    assert (cut.t_start >= phases.t_start).all()


def jittered_mix_trace(n=400, rate=6.0, seed=0):
    """REGIMES.md's client-side prompt mix (half 256, half 4096 tokens) on
    an engine whose steps grow with context (the attention step model),
    overheads that jitter request by request (CV 0.5) and the client's own
    prompt counts: the light mix of ``benchmarks/regimes.py --realism``."""
    rng = np.random.RandomState(seed)
    prompt = np.where(rng.rand(n) < 0.5, 256, 4096)
    sigma = np.sqrt(np.log1p(0.5**2))
    overhead = {
        key: mean * np.exp(sigma * rng.standard_normal(n) - 0.5 * sigma**2)
        for key, mean in (
            ("request_delay", 0.03),
            ("first_token_offset", 0.01),
            ("last_token_offset", 0.01),
        )
    }
    phases = simulate_trace(
        n,
        beta=(0.011, 3.0e-6, 2.0e-9, 1.6e-4, 1.8e-7),
        step_model="attention",
        noise=0.02,
        arrival_rate=rate,
        prompt_tokens=prompt,
        output_tokens=(128, 0.0),
        view="client",
        random_state=seed,
        **MIX_ENGINE,
        **overhead,
    )
    pre = (phases.phase_type == "prefill").to_numpy()
    counted = phases.loc[pre, "prefill_tokens"] * 1024 / 990
    counted *= np.exp(0.03 * rng.standard_normal(pre.sum()))
    phases.loc[pre, "prefill_tokens"] = np.rint(counted).astype(np.int64)
    return phases


MIX_ENGINE = dict(chunk_size=None, token_budget=8192, max_num_seqs=256)


def test_a_replay_of_the_sends_judges_the_windows():
    # The fits' own decode residuals read the decode phases against the cut
    # prefill phases, which every window distorts: here they choose 2 decode
    # steps per prompt, whose ITL forecast misses by -5.2 %; a replay of the
    # sends chooses 1.5, within 1.5 %. Seeds 0-5 of 400 and 600 requests: the
    # fits chose 2 on eight of twelve (-4.1 to -5.7 %), the replay 1.5 on
    # all (-1.2 to -2.7 %); on the benchmark's 1024 requests, -8.7 and -0.5 %.
    phases = jittered_mix_trace(seed=2)
    table = phases.drop(columns="arrival")
    longest = int(table.prefill_tokens.max())
    decode = phases[phases.phase_type == "decode"]
    observed = ((decode.t_end - decode.t_start) / decode.decode_tokens).mean()
    errors = {}
    for engine in (None, MIX_ENGINE):
        fit, window, _ = fit_client_phases(
            table, chunk_size=longest, engine=engine, algo="iterative"
        )
        replayed = what_if_latencies(phases, fit.beta, **MIX_ENGINE).itl.mean()
        errors[window] = replayed / observed - 1
    assert list(errors) == [2.0, 1.5]
    assert errors[2.0] < -0.04 and abs(errors[1.5]) < 0.02, errors
