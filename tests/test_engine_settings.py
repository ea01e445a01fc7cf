"""Engine settings from a trace, and the engine search that survives failures.

Ground truth: the simulator's ``max_num_seqs`` and ``num_gpu_blocks`` on
saturated engine-side traces (budget 8192, REGIMES-like) where each binds;
``benchmarks/engine_settings.py`` runs 20 such traces (20 of 20 recovered).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from sklearn_beta import select_engine_config
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine_config import (
    _search,
    concurrency_profile,
    estimate_engine_settings,
    estimate_kv_blocks,
    estimate_max_num_seqs,
)

BETA = (6e-3, 2.5e-5, 5e-5)
#: The searches here choose among a few candidates on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn_beta.EngineConfigWarning")
ENGINE = dict(
    chunk_size=None,
    token_budget=8192,
    output_tokens=(128, 0.3),
    view="engine",
    noise=0.02,
)


def saturated(max_num_seqs, seed=0, n=2000):
    return simulate_trace(
        n,
        beta=BETA,
        max_num_seqs=max_num_seqs,
        arrival_rate=40.0,
        prompt_tokens=(1024, 0.3),
        random_state=seed,
        **ENGINE,
    )


def kv_bound(seed=0, n=3000):
    return simulate_trace(
        n,
        beta=BETA,
        max_num_seqs=256,
        arrival_rate=12.0,
        prompt_tokens=(2048, 0.8),
        num_gpu_blocks=18038,
        random_state=seed,
        return_truth=True,
        **ENGINE,
    )


@pytest.mark.parametrize("max_num_seqs, seed", [(256, 0), (128, 1)])
def test_max_num_seqs_is_the_running_plateau_exactly(max_num_seqs, seed):
    phases = saturated(max_num_seqs, seed)
    assert estimate_max_num_seqs(phases) == max_num_seqs
    settings = estimate_engine_settings(phases, chunk_size=None, token_budget=8192)
    assert settings.max_num_seqs == max_num_seqs
    assert settings.num_gpu_blocks is None
    assert settings.evidence["ceiling_share"] > 0.8
    # Without arrivals nobody is seen waiting: no estimate.
    assert estimate_max_num_seqs(phases.drop(columns="arrival")) is None


def test_kv_cache_is_recovered_within_one_percent_where_it_binds():
    phases, truth = kv_bound()
    assert truth["preemptions"].sum() > 10  # the cache binds
    blocks = estimate_kv_blocks(phases)
    # Not exact (a preempted request counts until readmitted; decode steps
    # are spread evenly): measured within 0.1 %, asserted within 1 %.
    assert abs(blocks / 18038 - 1) < 0.01
    settings = estimate_engine_settings(phases, chunk_size=None, token_budget=8192)
    assert settings.max_num_seqs is None  # 256 never binds here
    assert settings.num_gpu_blocks == blocks
    # The running count never reaches a plateau under a binding cache.
    assert settings.evidence["ceiling_share"] < 0.05
    # Blocks of a different size read a different (smaller) count.
    assert estimate_kv_blocks(phases, block_size=32) < 0.55 * blocks


def test_light_load_shows_no_limit():
    phases = simulate_trace(
        1500,
        beta=BETA,
        max_num_seqs=256,
        arrival_rate=5.0,
        prompt_tokens=(1024, 0.3),
        num_gpu_blocks=18038,
        random_state=0,
        **ENGINE,
    )
    settings = estimate_engine_settings(phases, chunk_size=None, token_budget=8192)
    assert settings.max_num_seqs is None and settings.num_gpu_blocks is None
    assert settings.evidence["waiting_share"] < 0.02


def test_given_settings_are_kept_and_the_budget_is_searched():
    phases = saturated(128, n=1200)
    settings = estimate_engine_settings(
        phases,
        max_num_seqs=100,
        num_gpu_blocks=None,
        chunk_size=None,
        token_budget="auto",
        candidates=[(None, 2048), (None, 8192)],
    )
    assert settings.max_num_seqs == 100 and settings.num_gpu_blocks is None
    assert not any("client-side" in note for note in settings.notes)
    assert settings.evidence["max_num_seqs"] == "given"
    assert settings.token_budget == 8192 and settings.engine_config is not None
    assert settings.replay_settings()["max_num_seqs"] == 100


def test_client_side_traces_are_noted():
    phases = saturated(64, n=300)
    phases.attrs["client_side"] = True
    settings = estimate_engine_settings(phases, chunk_size=None, token_budget=8192)
    assert settings.notes[0].startswith("client-side trace: prefill phases start")


def test_profile_counts_against_an_independent_count():
    phases = saturated(64, n=400)
    profile = concurrency_profile(phases)
    pre = phases[phases.phase_type == "prefill"].set_index("request_id")
    dec = phases[phases.phase_type == "decode"].set_index("request_id")
    start, end = pre["t_start"], dec["t_end"].reindex(pre.index)
    for t in profile.time[:: max(1, profile.time.size // 50)]:
        running = int(((start <= t) & (end > t)).sum())
        assert profile.running[np.searchsorted(profile.time, t, "right") - 1] == running


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_num_seqs=0), "max_num_seqs must be a positive integer"),
        (dict(block_size=1.5), "block_size must be a positive integer"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate_engine_settings(saturated(16, n=50), **kwargs)


# --- robust automatic mode (issue 19 item 7) ---------------------------------


def light_trace(n=300):
    return simulate_trace(
        n,
        beta=(8e-3, 2.5e-5, 6e-5),
        chunk_size=None,
        token_budget=512,
        max_num_seqs=16,
        arrival_rate=8.0,
        prompt_tokens=(600, 0.8),
        output_tokens=(60, 0.6),
        noise=0.05,
        random_state=0,
    )


def failing_replay(monkeypatch, fail_always, fail_after_first):
    """The search's replay, refusing one candidate always and another after
    its first call (so it fails on a later fold) with the loop's message for
    a fit with beta0 = beta2 = 0."""
    real = _search.replay_trace
    calls = {}

    def replay(trace, beta, *, chunk_size, token_budget, **kw):
        pair = (chunk_size, token_budget)
        calls[pair] = calls.get(pair, 0) + 1
        if pair == fail_always or (pair == fail_after_first and calls[pair] > 1):
            raise ValueError(
                "beta=[0.0, 3e-05, 0.0] allows zero-length steps: need beta0 > 0, "
                "or both beta1 > 0 and beta2 > 0."
            )
        return real(trace, beta, chunk_size=chunk_size, token_budget=token_budget, **kw)

    monkeypatch.setattr(_search, "replay_trace", replay)


def test_failing_candidates_are_dropped_with_a_note(monkeypatch):
    failing_replay(monkeypatch, (None, 1024), (None, 512))
    config = select_engine_config(
        light_trace(), candidates=[(None, 512), (None, 1024), (None, 2048)]
    )
    # The truth (512) fails on a later fold: the next engine is chosen.
    assert (config.chunk_size, config.token_budget) == (None, 2048)
    assert len(config.notes) == 2
    assert all("zero-length steps" in note for note in config.notes)
    assert any("token_budget=512 (fold 1)" in note for note in config.notes)
    scores = config.scores
    errors = dict(zip(scores["token_budget"], scores["error"], strict=True))
    assert errors[1024] and errors[512] and not errors[2048]
    assert config.validation["n_splits"] == 3


def test_every_candidate_failing_is_one_clear_error(monkeypatch):
    failing_replay(monkeypatch, (None, 1024), (None, 512))
    with pytest.raises(ValueError, match="No engine configuration could be scored"):
        select_engine_config(light_trace(), candidates=[(None, 512), (None, 1024)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_gpu_blocks=0), "num_gpu_blocks must be an integer >= 1"),
        (dict(block_size=2.0), "block_size must be an integer >= 1"),
        (dict(max_num_seqs=-3), "max_num_seqs must be an integer >= 1"),
    ],
)
def test_bad_engine_limits_fail_before_the_search(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_engine_config(light_trace(60), candidates=[(None, 512)], **kwargs)


def saturated_engine_side_trace():
    """300 requests, 128 running, decodes as long as the arrival window."""
    return simulate_trace(
        300,
        beta=BETA,
        chunk_size=None,
        token_budget=2048,
        max_num_seqs=128,
        arrival_rate=20.0,
        prompt_tokens=(600, 0.8),
        output_tokens=(400, 0.6),
        view="engine",
        noise=0.02,
        random_state=0,
    )


def test_folds_without_training_phases_are_dropped():
    # 300 requests, 128 running, decodes as long as the arrival window.
    phases = saturated_engine_side_trace()
    config = select_engine_config(
        phases, candidates=[(None, 1024), (None, 2048)], max_num_seqs=128
    )
    assert config.token_budget == 2048
    assert config.validation["n_splits"] == 2
    assert config.notes[0].startswith("time-block fold(s) [0] of 3 dropped")
    crowded = simulate_trace(
        60,
        beta=BETA,
        chunk_size=None,
        token_budget=2048,
        max_num_seqs=256,
        arrival_rate=1000.0,
        prompt_tokens=(600, 0.8),
        output_tokens=(400, 0.3),
        random_state=0,
    )
    with pytest.raises(ValueError, match="No time-block fold of 3 has training"):
        select_engine_config(crowded, candidates=[(None, 2048)])


def test_cli_engine_flags_reach_the_replay(capsys, tmp_path):
    path = tmp_path / "trace.csv"
    light_trace(200).to_csv(path, index=False)
    base = ("fit", path, "--token-budget", 512, "--output", "json")
    code, out, err = run_cli(capsys, *base, "--max-num-seqs", 16)
    assert code == 0, err
    report = json.loads(out)
    parameters = report["parameters"]
    assert parameters["max_num_seqs"] == 16 and parameters["num_gpu_blocks"] is None
    assert parameters["block_size"] == 16
    right = report["validation"]["ttft"]
    # A wrong max_num_seqs and a tiny KV cache change the held-out replay.
    code, out, err = run_cli(capsys, *base, "--max-num-seqs", 2)
    assert json.loads(out)["validation"]["ttft"] > 2 * right
    code, out, err = run_cli(capsys, *base, "--num-gpu-blocks", 200, "--block-size", 32)
    report = json.loads(out)
    parameters = report["parameters"]
    assert (parameters["num_gpu_blocks"], parameters["block_size"]) == (200, 32)
    assert report["validation"]["ttft"] != right
    code, out, err = run_cli(capsys, *base, "--max-num-seqs", 0)
    assert code != 0 and "--max-num-seqs" in err


def test_cli_prints_one_line_per_dropped_candidate(capsys, tmp_path, monkeypatch):
    path = tmp_path / "trace.csv"
    light_trace(200).to_csv(path, index=False)
    failing_replay(monkeypatch, (None, 1024), None)
    code, out, err = run_cli(
        capsys,
        "fit",
        path,
        "--budget-candidates",
        "512,1024",
        "--chunk-candidates",
        "64",
    )
    assert code == 0, err
    lines = [line for line in out.splitlines() if "candidate dropped" in line]
    assert len(lines) == 1 and lines[0].startswith("note: engine candidate dropped: ")
    assert "token_budget=1024: beta=" in lines[0]


def test_cli_automatic_mode_completes_on_a_saturated_engine_side_trace(
    capsys, tmp_path
):
    # Issue 19: "TraceBlockSplit: fold has no training phases" aborted this.
    phases = saturated_engine_side_trace()
    path = tmp_path / "saturated.csv"
    phases.to_csv(path, index=False)
    # The phase-exposure search (--estimator auto takes the schedule fit
    # here: tests/test_cli_schedule.py).
    code, out, err = run_cli(
        capsys,
        "fit",
        path,
        "--max-num-seqs",
        128,
        "--estimator",
        "phase",
        "--output",
        "json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert (report["chunk_size"], report["token_budget"]) == (None, 2048)
    assert report["validation"]["n_splits"] == 2
    assert any(n.startswith("time-block fold(s) [0] of 3") for n in report["notes"])
    assert abs(report["betas"]["beta1"] / BETA[1] - 1) < 0.03
