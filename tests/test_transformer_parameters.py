"""Every PhaseExposureTransformer parameter reaches each regressor's fit, or
raises where the regressor cannot use it (issue 17, item 4)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
)
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine_config._trace_fit import make_model

BETA = (6e-3, 2e-5, 1e-4)
CHUNK = 256


@pytest.fixture(scope="module")
def trace() -> pd.DataFrame:
    phases = simulate_trace(
        300,
        beta=BETA,
        chunk_size=CHUNK,
        max_num_seqs=64,
        arrival_rate=20.0,
        prompt_tokens=(600, 0.8),
        output_tokens=(100, 0.8),
        noise=0.03,
        random_state=1,
    )
    # Logged decode starts after their prefill's end: by 1e-10 s, as float
    # rounding leaves them (slivers time_resolution="auto" merges), or by
    # 1 ms, a sixth of a step, as a logging delay would (merged by a
    # time_resolution above it).
    decode = phases["phase_type"].to_numpy() == "decode"
    odd = phases["request_id"].to_numpy() % 2 == 1
    phases.loc[decode & ~odd, "t_start"] += 1e-10
    phases.loc[decode & odd, "t_start"] += 1e-3
    # A second instance code that splits the requests: a column to point
    # ``columns`` at.
    phases["shard"] = phases["request_id"] % 2
    return phases


REGRESSORS = {
    "baseline": BaselineBetaRegressor,
    "step_count": IterativeBetaRegressor,
    # The reference fixed point; a few iterations show where it started.
    "duration": lambda: IterativeBetaRegressor(
        "beta_informed", objective="duration", stopping="absolute", max_iter=3
    ),
}

#: Every transformer parameter with a value other than its default.
VARIANTS = {
    "chunk_size": dict(chunk_size=128),
    "correction_mode=none": dict(correction_mode="none"),
    "correction_mode=end_inside": dict(correction_mode="end_inside"),
    "correction_mode=uniform": dict(correction_mode="uniform"),
    "min_duration": dict(min_duration=0.3),
    "token_budget": dict(token_budget=512),
    # A third of a step: the 1 ms gaps close, windows move.
    "time_resolution": dict(time_resolution=0.002),
    "columns": dict(columns={"instance_id": "shard"}),
    "decode_tokens_include_first": dict(decode_tokens_include_first=True),
    # The published features in another order: the betas follow it.
    "step_model": dict(step_model=["steps", "decode_tokens", "prefill_tokens"]),
}


QWEN = "tests/data/qwen3-14b/config.json"
TRAINED_PHYSICS = dict(step_model="trained-physics", model_config=QWEN, gpu="H100")
# The deployment's parameters, each against the trained-physics fit above
# (their betas have another length than the published default's).
DEPLOYMENT_VARIANTS = {
    "model_config": dict(model_config=None),  # a narrower MLP's, written below
    "gpu": dict(gpu="A100-80"),
    "tensor_parallelism": dict(tensor_parallelism=2),
}


def test_variants_cover_every_transformer_parameter():
    covered = {
        k
        for options in (*VARIANTS.values(), *DEPLOYMENT_VARIANTS.values())
        for k in options
    }
    assert covered == set(PhaseExposureTransformer().get_params())


@pytest.mark.parametrize("variant", list(DEPLOYMENT_VARIANTS))
def test_deployment_parameters_change_the_trained_physics_fit(trace, variant, tmp_path):
    options = dict(DEPLOYMENT_VARIANTS[variant])
    if variant == "model_config":
        config = json.loads(Path(QWEN).read_text())
        config["intermediate_size"] //= 2  # a model with a narrower MLP
        options["model_config"] = tmp_path / "config.json"
        options["model_config"].write_text(json.dumps(config))
    for regressor in ("baseline", "duration", "step_count"):
        default = _fit(trace, regressor, **TRAINED_PHYSICS).beta_
        beta = _fit(trace, regressor, **{**TRAINED_PHYSICS, **options}).beta_
        change = np.max(np.abs(beta / np.where(default > 0, default, 1) - 1))
        assert change > 1e-6, f"{variant} left {regressor}'s fit unchanged"
    # Given to a step model that does not use it, it raises (naming it).
    with pytest.raises(ValueError, match=variant):
        _fit(trace, "baseline", **{**options, "step_model": "attention"})


def _fit(phases, regressor, **options):
    transformer = PhaseExposureTransformer(**{"chunk_size": CHUNK, **options})
    model = make_pipeline(transformer, REGRESSORS[regressor]())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # trust warnings
        return model.fit(phases)[-1]


@pytest.fixture(scope="module")
def default_betas(trace):
    return {name: _fit(trace, name).beta_ for name in REGRESSORS}


@pytest.mark.parametrize("regressor", list(REGRESSORS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parameter_changes_the_betas_or_raises(
    trace, default_betas, regressor, variant
):
    options = VARIANTS[variant]
    try:
        beta = _fit(trace, regressor, **options).beta_
    except ValueError as error:
        # The message names the parameter, the estimator and the way out.
        parameter = next(iter(options))
        assert parameter in str(error)
        assert "IterativeBetaRegressor" in str(error)
        assert "Set " in str(error) or "set " in str(error)
        return
    change = np.max(np.abs(beta / default_betas[regressor] - 1.0))
    assert change > 1e-6, f"{variant} left {regressor}'s betas unchanged ({change})"


@pytest.mark.parametrize(
    "variant",
    ["correction_mode=none", "correction_mode=uniform", "min_duration"],
)
def test_step_count_fit_rejects_what_only_sets_its_start(trace, variant):
    # The step-count objective reaches the same betas from any start: these
    # settings shape only the start, so they raise instead of being ignored.
    with pytest.raises(ValueError, match="objective='step_count'"):
        _fit(trace, "step_count", **VARIANTS[variant])


def test_auto_time_resolution_merges_rounding_slivers(trace, default_betas):
    # The slivers put the "end" correction's mass outside the decode phases
    # of the baseline; merged, it lands where it does on an exact trace. The
    # step-count fit holds ~1e-8 steps in a sliver: unmoved by them.
    merged = _fit(trace, "baseline", time_resolution="auto").beta_
    assert np.max(np.abs(merged / default_betas["baseline"] - 1.0)) > 1e-3
    merged = _fit(trace, "step_count", time_resolution="auto").beta_
    np.testing.assert_allclose(merged, default_betas["step_count"], rtol=1e-6)


def test_the_named_way_out_fits_without_the_correction(trace, default_betas):
    # What the error of correction_mode="none" asks for: the regressor's own
    # "none", which drops the missing last-chunk tokens from every step.
    model = make_pipeline(
        PhaseExposureTransformer(CHUNK), IterativeBetaRegressor("none")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        beta = model.fit(trace)[-1].beta_
    assert np.max(np.abs(beta / default_betas["step_count"] - 1.0)) > 1e-3


def test_init_correction_mode_conflicting_with_the_table_raises(trace):
    model = make_pipeline(
        PhaseExposureTransformer(CHUNK, correction_mode="uniform"),
        IterativeBetaRegressor(objective="duration", init_correction_mode="end"),
    )
    with pytest.raises(ValueError, match="init_correction_mode='end'"):
        model.fit(trace)
    # The same placement on both is no conflict.
    model.set_params(iterativebetaregressor__init_correction_mode="uniform")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.fit(trace)


def test_command_line_model_rejects_min_duration_with_the_step_count_fit():
    with pytest.raises(ValueError, match="min_duration.*step-count objective"):
        make_model(CHUNK, min_duration=0.3)
    # Where it is used: the baseline's design, the reference's start.
    make_model(CHUNK, algo="baseline", min_duration=0.3)
    make_model(CHUNK, min_duration=0.3, objective="duration")
