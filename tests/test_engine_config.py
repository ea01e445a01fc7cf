"""select_engine_config: the engine's chunking chosen by held-out replay.

The truth is the simulator's engine (``simulate_trace``'s ``chunk_size`` and
``token_budget``); the oracle of the held-out errors is the replay scorer of
``sklearn_beta.replay`` inside scikit-learn's ``cross_validate``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.model_selection import cross_validate

from sklearn_beta import (
    EngineConfigWarning,
    default_engine_candidates,
    select_engine_config,
)
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine_config._trace_fit import make_model
from sklearn_beta.model_selection import TraceBlockSplit, TraceContextRegressor
from sklearn_beta.replay import make_replay_scorer

BETA = (8e-3, 2.5e-5, 6e-5)
#: No chunk cap in the simulator: longer than any prompt it draws.
NO_CAP = 10**6


def trace(n=600, *, chunk_size=NO_CAP, token_budget=None, seed=0, **engine):
    engine = {
        "max_num_seqs": 16,
        "arrival_rate": 4.0,
        "prompt_tokens": (600, 0.8),
        "output_tokens": (150, 0.6),
        **engine,
    }
    return simulate_trace(
        n,
        beta=BETA,
        chunk_size=chunk_size,
        token_budget=token_budget,
        noise=0.05,
        random_state=seed,
        **engine,
    )


def choose(phases, candidates=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineConfigWarning)
        return select_engine_config(phases, candidates=candidates, **kwargs)


NEIGHBOURS = [(128, None), (256, None), (512, None), (None, 2048), (None, None)]


@pytest.mark.parametrize(
    "engine, truth",
    [
        ({"chunk_size": 256}, (256, None)),  # light load, fixed chunk
        (
            {"chunk_size": 256, "arrival_rate": 25.0, "max_num_seqs": 64},
            (256, None),
        ),  # heavy load
        ({"token_budget": 512, "arrival_rate": 8.0}, (None, 512)),  # budgeted
        ({}, (None, None)),  # unchunked
    ],
    ids=["light", "heavy", "budgeted", "unchunked"],
)
def test_finds_the_simulated_engine(engine, truth):
    candidates = NEIGHBOURS + [(None, 512), (None, 1024)]
    config = choose(trace(**engine), candidates)
    assert (config.chunk_size, config.token_budget) == truth
    assert config.runner_up is not None and config.runner_up != truth
    assert config.margin > 0
    assert config.edge is None


def test_finds_a_vllm_budget_among_the_default_candidates():
    # vLLM V1 on a small GPU: budget 2048, no chunk cap, light load, long
    # prompts: the budget cuts the longest prompts and the overlapping ones.
    phases = trace(
        800,
        token_budget=2048,
        arrival_rate=3.0,
        max_num_seqs=64,
        prompt_tokens=(1500, 0.5),
        output_tokens=(120, 0.6),
    )
    config = choose(phases)
    assert (config.chunk_size, config.token_budget) == (None, 2048)
    assert config.model_chunk_size == 2048
    assert len(config.scores) == len(default_engine_candidates())


def test_budget_that_never_binds_is_the_same_engine_as_no_chunking():
    phases, steps = simulate_trace(
        300,
        beta=BETA,
        chunk_size=NO_CAP,
        max_num_seqs=8,
        arrival_rate=3.0,
        prompt_tokens=(300, 0.5),
        output_tokens=(60, 0.5),
        random_state=1,
        return_steps=True,
    )
    # Independent oracle: no simulated step came near the budget.
    assert (steps["prefill_tokens"] + steps["decode_tokens"]).max() < 16384
    config = choose(phases, [(64, None), (None, 16384), (None, None)])
    # Reported as no chunking, the plainer description of that engine.
    assert (config.chunk_size, config.token_budget) == (None, None)
    assert config.equivalent == [(None, 16384)]
    assert config.runner_up == (64, None)
    same = config.scores.loc[config.scores["same_engine_as"] != "", "n_folds"]
    assert same.tolist() == [1]  # scored once: the trace cannot tell them apart


def test_warns_at_the_low_edge_with_the_runner_up():
    phases = trace(chunk_size=32)
    with pytest.warns(
        EngineConfigWarning, match=r"smallest.*Runner-up: chunk_size=128"
    ):
        config = select_engine_config(
            phases, candidates=[(64, None), (128, None), (256, None), (None, None)]
        )
    assert (config.chunk_size, config.edge) == (64, "low")
    assert config.margin > 0


def test_warns_at_the_high_edge_without_an_uncapped_candidate():
    phases = trace(chunk_size=1024, prompt_tokens=(1500, 0.6))
    with pytest.warns(EngineConfigWarning, match="largest"):
        config = select_engine_config(
            phases, candidates=[(128, None), (256, None), (512, None)]
        )
    assert (config.chunk_size, config.edge) == (512, "high")


def test_validation_is_the_replay_scorers_cross_validation():
    phases = trace(400, chunk_size=256)
    config = choose(phases, [(256, None)], n_splits=3)
    model = TraceContextRegressor(make_model(256), trace=phases)
    for quantity in ("ttft", "decode", "e2e"):
        scores = cross_validate(
            model,
            phases,
            cv=TraceBlockSplit(3),
            scoring=make_replay_scorer(phases, quantity),
        )["test_score"]
        np.testing.assert_allclose(
            config.validation["folds"][quantity], -scores, rtol=1e-12
        )
    held = config.held_out
    assert len(held) == phases["request_id"].nunique()
    relative = np.abs(held["predicted_decode"] / held["observed_decode"] - 1)
    np.testing.assert_allclose(
        relative.mean(), np.mean(config.validation["folds"]["decode"]), rtol=0.05
    )
    assert config.runner_up is None and np.isnan(config.margin)


def test_chunks_longer_than_every_prompt_are_no_chunking():
    phases = trace(300, prompt_tokens=(200, 0.3))
    longest = int(phases["prefill_tokens"].max())
    config = choose(phases, [(64, None), (longest, None), (None, None)])
    assert len(config.scores) == 2
    assert (config.chunk_size, config.token_budget) == (None, None)
    assert config.model_chunk_size == longest


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"candidates": [(64,)]}, "pairs"),
        ({"candidates": [(0, None)]}, "chunk_size"),
        ({"candidates": [(64, 2.5)]}, "token_budget"),
        ({"candidates": []}, "empty"),
        ({"n_splits": 1}, "n_splits"),
        ({"n_keep": 0}, "n_keep"),
        # every request needs its decode token: no budget below the running
        ({"candidates": [(None, 1)]}, "No engine configuration could be scored"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_engine_config(trace(100), **kwargs)


def test_tolerance_prefers_the_largest_cap_among_ties():
    phases = trace(400, chunk_size=256)
    candidates = [(128, None), (256, None), (512, None), (None, None)]
    exact = choose(phases, candidates, tolerance=0.0)
    assert exact.chunk_size == 256 and exact.margin > 0
    # Everything ties: no chunking cuts fewest prompts; the better runner-up
    # shows as a negative margin.
    loose = choose(phases, candidates, tolerance=100.0, n_keep=4)
    assert (loose.chunk_size, loose.token_budget) == (None, None)
    assert loose.runner_up == (256, None) and loose.margin < 0
    assert loose.scores.loc[0, "score"] > loose.scores.loc[1, "score"]
    with pytest.raises(ValueError, match="tolerance"):
        select_engine_config(phases, candidates=candidates, tolerance=-0.1)


def test_renamed_columns_choose_and_score_as_the_schema_names():
    # Every column renamed, the instance one too: the folds, the default
    # model and the replay must all read the renamed columns.
    phases = trace(300, chunk_size=256).assign(instance_id="engine-0")
    names = {
        "request_id": "rid",
        "phase_type": "kind",
        "t_start": "start_s",
        "t_end": "end_s",
        "prefill_tokens": "prompt",
        "decode_tokens": "generated",
        "instance_id": "host",
    }
    renamed = phases.rename(columns=names)
    candidates = [(128, None), (256, None), (None, None)]
    default = choose(phases, candidates)
    other = choose(renamed, candidates, columns=names)
    assert (other.chunk_size, other.token_budget) == (256, None)
    assert (other.chunk_size, other.token_budget) == (
        default.chunk_size,
        default.token_budget,
    )
    np.testing.assert_allclose(
        other.scores["score"].to_numpy(), default.scores["score"].to_numpy(), rtol=1e-12
    )
    np.testing.assert_allclose(
        other.held_out["predicted_ttft"].to_numpy(),
        default.held_out["predicted_ttft"].to_numpy(),
        rtol=1e-12,
    )


def test_candidate_fits_warn_nothing(monkeypatch):
    # beta2 = 0 in truth: every candidate's fit puts it on its zero bound.
    phases = simulate_trace(
        300,
        beta=(8e-3, 2.5e-5, 0.0),
        chunk_size=256,
        max_num_seqs=16,
        arrival_rate=4.0,
        noise=0.05,
        random_state=0,
    )
    real_fit, warned = TraceContextRegressor.fit, []

    def fit_and_count(self, *args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            real_fit(self, *args, **kwargs)
        warned.append(len(caught))
        for record in caught:  # raised again, as the fit itself raised them
            warnings.warn(record.message, stacklevel=2)
        return self

    monkeypatch.setattr(TraceContextRegressor, "fit", fit_and_count)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = select_engine_config(
            phases, candidates=[(128, None), (256, None), (None, None)]
        )
    assert config.chunk_size == 256
    assert len(warned) >= 3 and sum(warned) >= len(warned), warned
    assert [w.category for w in caught] == []
