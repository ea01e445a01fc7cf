"""The published ``*_col`` keywords of the functional drop-in (issue 17).

Each keyword names one column of the phase table, with the published
default; an ``N_steps`` column is authoritative, and a trace that has it
fits with no token column at all.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from conftest import golden_cases, load_golden, published_trace

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseColumns,
    PhaseExposureTransformer,
    estimate_betas_baseline,
    estimate_betas_iterative,
)
from sklearn_beta.datasets import simulate_trace

FUNCTIONS = [estimate_betas_baseline, estimate_betas_iterative]
#: The published keywords and defaults, as the published functions spell them.
PUBLISHED = {
    "n_steps_col": "N_steps",
    "prefill_tokens_col": "prefill_tokens",
    "decode_tokens_col": "decode_tokens",
    "t_start_col": "t_start",
    "t_end_col": "t_end",
    "phase_type_col": "phase_type",
    "request_id_col": "request_id",
}
TOKENS = ["prefill_tokens", "decode_tokens"]


def _with_steps(frame, chunk_size, factor=1):
    """``frame`` with an ``N_steps`` column: ``factor`` times the inferred counts."""
    steps = np.where(
        frame.phase_type == "prefill",
        np.ceil(frame.prefill_tokens / chunk_size),
        frame.decode_tokens,
    )
    return frame.assign(N_steps=(factor * steps).astype(int))


def _renamed(frame, keywords):
    """``frame`` with each column a keyword names renamed to ``<name>_x``."""
    columns = {PUBLISHED[k]: f"{PUBLISHED[k]}_x" for k in keywords}
    return frame.rename(columns=columns), {k: columns[PUBLISHED[k]] for k in keywords}


# --- the signature ----------------------------------------------------------------


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_published_keyword_with_its_published_default(function):
    parameters = inspect.signature(function).parameters
    defaults = {k: parameters[k].default for k in PUBLISHED if k in parameters}
    assert defaults == PUBLISHED
    assert all(parameters[k].kind is inspect.Parameter.KEYWORD_ONLY for k in PUBLISHED)


@pytest.mark.parametrize(
    "estimator",
    [PhaseExposureTransformer(), BaselineBetaRegressor(), IterativeBetaRegressor()],
)
def test_the_estimators_keep_columns_only(estimator):
    assert not [name for name in estimator.get_params() if name.endswith("_col")]


# --- each keyword renames its column --------------------------------------------------


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("keyword", sorted(set(PUBLISHED) - {"n_steps_col"}))
@pytest.mark.parametrize("trace", ["sample", "smoke"])
def test_each_keyword_renames_its_column(function, keyword, trace):
    phases = published_trace(trace)
    expected = function(phases, chunk_size=64).beta
    renamed, keywords = _renamed(phases, [keyword])
    # Without the keyword the renamed column is missing.
    with pytest.raises(ValueError, match=f"Missing required columns: .*{keyword[:-4]}"):
        function(renamed, chunk_size=64)
    np.testing.assert_array_equal(
        function(renamed, chunk_size=64, **keywords).beta, expected
    )


@pytest.mark.parametrize("function", FUNCTIONS)
def test_n_steps_col_renames_the_step_counts(function, published_sample):
    # Twice the inferred steps, so that a step column read under the wrong
    # name (or not read) changes the betas.
    doubled = _with_steps(published_sample, 64, factor=2)
    expected = function(doubled, chunk_size=64).beta
    inferred = function(published_sample, chunk_size=64).beta
    assert not np.allclose(expected, inferred)
    renamed, keywords = _renamed(doubled, ["n_steps_col"])
    assert keywords == {"n_steps_col": "N_steps_x"}
    np.testing.assert_array_equal(function(renamed, chunk_size=64).beta, inferred)
    np.testing.assert_array_equal(
        function(renamed, chunk_size=64, **keywords).beta, expected
    )
    # None ignores the column.
    np.testing.assert_array_equal(
        function(doubled, chunk_size=64, n_steps_col=None).beta, inferred
    )


@pytest.mark.parametrize(("trace", "chunk"), golden_cases())
def test_all_keywords_at_once_reproduce_the_golden_betas(trace, chunk):
    golden = load_golden(f"{trace}_c{chunk}.json")
    phases = published_trace(trace)
    renamed, keywords = _renamed(phases, sorted(set(PUBLISHED) - {"n_steps_col"}))
    for mode, expected in golden["baseline"].items():
        result = estimate_betas_baseline(
            renamed, chunk_size=chunk, correction_mode=mode, **keywords
        )
        np.testing.assert_allclose(result.beta, expected["beta"], rtol=1e-9, atol=1e-15)
    for key, expected in golden["iterative"].items():
        mode, eta = key.split("/eta=")
        result = estimate_betas_iterative(
            renamed,
            chunk_size=chunk,
            prefill_correction_mode=mode,
            damping_eta=float(eta),
            **keywords,
        )
        np.testing.assert_allclose(result.beta, expected["beta"], rtol=1e-9, atol=1e-15)
        assert result.n_outer_iters == expected["n_outer_iters"]


# --- keywords and columns= together ------------------------------------------------


@pytest.mark.parametrize("function", FUNCTIONS)
def test_keywords_and_columns_name_different_fields(function, published_sample):
    expected = function(published_sample, chunk_size=64).beta
    renamed = published_sample.rename(columns={"t_start": "start", "t_end": "end"})
    for columns in ({"t_start": "start"}, PhaseColumns(t_start="start")):
        fit = function(renamed, chunk_size=64, columns=columns, t_end_col="end")
        np.testing.assert_array_equal(fit.beta, expected)
    # Naming a column the same way twice is no conflict.
    fit = function(
        renamed,
        chunk_size=64,
        columns={"t_end": "end"},
        t_end_col="end",
        t_start_col="start",
    )
    np.testing.assert_array_equal(fit.beta, expected)
    # A keyword left at its default leaves columns= in charge.
    fit = function(
        renamed,
        chunk_size=64,
        columns={"t_start": "start", "t_end": "end"},
        t_end_col="t_end",
    )
    np.testing.assert_array_equal(fit.beta, expected)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize(
    "columns", [{"t_end": "stop"}, PhaseColumns(t_end="stop")], ids=["dict", "object"]
)
def test_a_keyword_conflicting_with_columns_raises(function, published_sample, columns):
    with pytest.raises(ValueError) as info:
        function(published_sample, chunk_size=64, columns=columns, t_end_col="end")
    message = str(info.value)
    assert message.startswith("Conflicting column names: t_end_col='end'")
    assert "'stop'" in message and "columns=" in message


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_required_keyword_cannot_be_none(function, published_sample):
    with pytest.raises(TypeError, match="^t_start_col must be a column name"):
        function(published_sample, chunk_size=64, t_start_col=None)


# --- N_steps: authoritative, validated, enough without tokens ------------------------


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize(
    ("value", "phrase"),
    [(2.5, "N_steps must be integer-valued"), (-1, "N_steps contains negative values")],
)
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "no-tokens"])
def test_bad_step_counts_name_the_column_and_rows(
    function, published_sample, value, phrase, tokens
):
    phases = _with_steps(published_sample, 64).astype({"N_steps": float})
    phases.loc[[3, 6], "N_steps"] = value
    if not tokens:
        phases = phases.drop(columns=TOKENS)
    phases = phases.rename(columns={"N_steps": "steps"})
    with pytest.raises(ValueError) as info:
        function(phases, chunk_size=64, n_steps_col="steps")
    message = str(info.value)
    assert message.startswith(phrase)
    assert "column 'steps'" in message
    assert "2 offending row(s): row 3 (" in message and f"steps={value!r}" in message
    assert "; row 6 (" in message


@pytest.mark.parametrize("function", FUNCTIONS)
def test_steps_within_the_tolerance_are_whole(function, published_sample):
    phases = _with_steps(published_sample, 64, factor=2)
    jittered = phases.astype({"N_steps": float})
    jittered["N_steps"] += np.array([1, -1, 0, 1, 0, -1, 1, 0]) * 5e-7
    np.testing.assert_array_equal(
        function(jittered, chunk_size=64).beta, function(phases, chunk_size=64).beta
    )


BETA = (6e-3, 3e-5, 1e-4)
CHUNK = 256


@pytest.fixture(scope="module")
def simulated():
    """A simulated trace whose prompts are two full chunks: nothing is missing.

    Every prefill runs exactly 2 steps and every decode its ``D`` steps (the
    simulator's engine), so the ``N_steps`` column below is the truth.
    """
    phases = simulate_trace(
        2000,
        beta=BETA,
        chunk_size=CHUNK,
        max_num_seqs=64,
        arrival_rate=6.0,
        prompt_tokens=(2 * CHUNK, 0.0),
        output_tokens=(100, 0.8),
        random_state=0,
    )
    steps = np.where(phases.phase_type == "prefill", 2, phases.decode_tokens)
    return phases.assign(N_steps=steps)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_trace_with_step_counts_and_no_tokens_fits(function, simulated):
    bare = simulated.drop(columns=TOKENS)
    fit = function(bare, chunk_size=CHUNK)
    assert np.all(np.isfinite(fit.beta))
    # Whole chunks: the tokens would add no correction, so the betas are
    # those of the full trace, whose step counts the tokens imply.
    full = function(simulated.drop(columns="N_steps"), chunk_size=CHUNK)
    np.testing.assert_allclose(fit.beta, full.beta, rtol=1e-12, atol=1e-18)


def test_step_counts_alone_recover_the_simulated_betas(simulated):
    bare = simulated.drop(columns=TOKENS).rename(columns={"N_steps": "steps"})
    # The step-count objective pins the true betas down exactly; the
    # published duration fixed point comes within half a percent.
    exact = estimate_betas_iterative(
        bare, chunk_size=CHUNK, objective="step_count", n_steps_col="steps"
    )
    np.testing.assert_allclose(exact.beta, BETA, rtol=1e-8)
    published = estimate_betas_iterative(bare, chunk_size=CHUNK, n_steps_col="steps")
    assert published.converged
    np.testing.assert_allclose(published.beta, BETA, rtol=5e-3)


def test_step_counts_replace_the_tokens(simulated):
    # With N_steps present the decode tokens are never read: scaling them
    # changes nothing, while without N_steps it does.
    scaled = simulated.assign(decode_tokens=3 * simulated.decode_tokens)
    fit = estimate_betas_iterative(scaled, chunk_size=CHUNK, objective="step_count")
    np.testing.assert_allclose(fit.beta, BETA, rtol=1e-8)
    inferred = estimate_betas_iterative(
        scaled, chunk_size=CHUNK, objective="step_count", n_steps_col=None
    )
    assert not np.allclose(inferred.beta, BETA, rtol=0.05)
