"""Column names (PhaseColumns) and the published rule on step counts.

With an ``N_steps`` column the step counts come from it: ``decode_tokens`` is
not needed, and ``prefill_tokens`` only on prefill rows whose partial-chunk
correction uses it (any correction mode but ``"none"``).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseColumns,
    PhaseExposureTransformer,
    clean_phases,
    estimate_betas_baseline,
    estimate_betas_iterative,
)
from sklearn_beta.core._columns import OPTIONAL_COLUMNS, PHASE_COLUMNS
from sklearn_beta.core._validation import check_phases
from sklearn_beta.exceptions import IdentifiabilityWarning

TOKENS = ["prefill_tokens", "decode_tokens"]


@pytest.fixture
def with_steps(published_sample):
    """The sample trace with its step counts (C = 64) as an N_steps column."""
    steps = np.where(
        published_sample.phase_type == "prefill",
        np.ceil(published_sample.prefill_tokens / 64),
        published_sample.decode_tokens,
    )
    return published_sample.assign(N_steps=steps.astype(int))


# --- PhaseColumns -------------------------------------------------------------


def test_defaults_are_the_schema_names():
    columns = PhaseColumns.coerce(None)
    assert columns == PhaseColumns()
    assert (columns.request_id, columns.t_end) == ("request_id", "t_end")
    assert (columns.n_steps, columns.instance_id) == ("N_steps", "instance_id")


def test_schema_constants_are_the_documented_defaults():
    # The constants derive from PhaseColumns' defaults; docs/method.md section 2
    # is the independent spelling they must match.
    table = Path(__file__).parents[1].joinpath("docs", "method.md").read_text()
    section = table.split("## 2. The phase table")[1].split("## 3.")[0]
    documented = re.findall(r"^\| `([A-Za-z_]+)`", section, flags=re.MULTILINE)
    documented += re.findall(r"^\| `[a-z_]+`, `([a-z_]+)`", section, flags=re.MULTILINE)
    assert PHASE_COLUMNS == (
        "request_id",
        "phase_type",
        "t_start",
        "t_end",
        "prefill_tokens",
        "decode_tokens",
    )
    assert OPTIONAL_COLUMNS == {"n_steps": "N_steps", "instance_id": "instance_id"}
    assert set(documented) == {*PHASE_COLUMNS, *OPTIONAL_COLUMNS.values()}
    assert PhaseColumns(n_steps=None, instance_id=None).n_steps is None


def test_coerce_reads_a_mapping_of_schema_names():
    columns = PhaseColumns.coerce({"t_start": "start", "instance_id": None})
    assert columns == PhaseColumns(t_start="start", instance_id=None)
    given = PhaseColumns(t_end="end")
    assert PhaseColumns.coerce(given) is given


def test_coerce_names_an_unknown_key_and_the_valid_ones():
    with pytest.raises(ValueError) as info:
        PhaseColumns.coerce({"t_start": "start", "instance": "gpu"})
    message = str(info.value)
    assert "['instance']" in message
    assert "'instance_id'" in message and "'request_id'" in message


@pytest.mark.parametrize("columns", [["t_start"], "t_start", 3])
def test_coerce_rejects_other_types(columns):
    with pytest.raises(TypeError, match="columns must be"):
        PhaseColumns.coerce(columns)


@pytest.mark.parametrize("field", ["request_id", "t_end", "prefill_tokens"])
def test_required_columns_cannot_be_switched_off(field):
    with pytest.raises(TypeError, match=field):
        PhaseColumns(**{field: None})


def test_phase_columns_are_frozen():
    with pytest.raises(AttributeError):
        PhaseColumns().t_end = "end"


def test_the_instance_column_is_used_when_present(published_sample):
    two = published_sample.assign(instance_id=[0, 0, 1, 1, 0, 0, 1, 1])
    arrays = check_phases(two, None)
    np.testing.assert_array_equal(arrays.instance, two.instance_id)
    ignored = check_phases(two, {"instance_id": None})
    np.testing.assert_array_equal(ignored.instance, 0)
    # Each instance's clock starts at 0: instance 1 starts at 0.8 s.
    np.testing.assert_array_equal(arrays.time_origin, [0.0, 0.8])
    np.testing.assert_array_equal(ignored.time_origin, [0.0])


@pytest.mark.parametrize("field", ["n_steps", "instance_id"])
def test_an_optional_column_named_on_purpose_must_exist(published_sample, field):
    with pytest.raises(ValueError, match=r"^Missing required columns: \['gpu'\]"):
        check_phases(published_sample, {field: "gpu"})


def test_clean_phases_takes_the_same_columns(published_sample):
    renamed = published_sample.rename(columns={"t_start": "start"})
    renamed.loc[2, "t_end"] = renamed.loc[2, "start"]
    cleaned, report = clean_phases(renamed, columns={"t_start": "start"})
    assert report.dropped == {"non_positive_duration": 1}
    assert list(cleaned.index) == [0, 1, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="Unknown key"):
        clean_phases(renamed, columns={"start": "t_start"})


# --- the published rule on step counts -----------------------------------------


def test_absent_unneeded_token_columns_are_none(with_steps):
    arrays = check_phases(
        with_steps.drop(columns=TOKENS), None, need_prefill_tokens=False
    )
    assert arrays.prefill_tokens is None and arrays.decode_tokens is None
    np.testing.assert_array_equal(arrays.n_steps, with_steps.N_steps)
    kept = check_phases(with_steps, None, need_prefill_tokens=False)
    np.testing.assert_array_equal(kept.prefill_tokens, [96, 0, 64, 0, 130, 0, 32, 0])


@pytest.mark.parametrize("need", [True, False])
def test_decode_tokens_are_not_needed_with_step_counts(with_steps, need):
    arrays = check_phases(
        with_steps.drop(columns="decode_tokens"), None, need_prefill_tokens=need
    )
    assert arrays.decode_tokens is None
    assert arrays.prefill_tokens is not None


def test_without_step_counts_both_token_columns_are_needed(published_sample):
    for column in TOKENS:
        with pytest.raises(
            ValueError, match=rf"^Missing required columns: \['{column}'"
        ):
            check_phases(
                published_sample.drop(columns=column), None, need_prefill_tokens=False
            )


def test_prefill_tokens_are_needed_for_the_estimators_correction(with_steps):
    # The estimators refuse a correction they could not apply; the published
    # functions fit such a trace with no correction (test_functional_keywords).
    frame = with_steps.drop(columns=TOKENS)
    message = r"^Missing required columns: \['prefill_tokens'\]"
    with pytest.raises(ValueError, match=message):
        check_phases(frame, None)
    for mode in ("end", "uniform"):
        with pytest.raises(ValueError, match=message):
            PhaseExposureTransformer(64, correction_mode=mode).fit(frame)


def test_no_correction_needs_no_token_column(with_steps):
    # Without a correction the tokens enter nowhere: the same betas as with
    # them, and different from step counts the tokens would give.
    full = estimate_betas_baseline(with_steps, chunk_size=64, correction_mode="none")
    bare = with_steps.drop(columns=TOKENS)
    fit = estimate_betas_baseline(bare, chunk_size=64, correction_mode="none")
    np.testing.assert_array_equal(fit.beta, full.beta)
    table = PhaseExposureTransformer(64, correction_mode="none").fit_transform(bare)
    expected = PhaseExposureTransformer(64, correction_mode="none").fit_transform(
        with_steps
    )
    # The table keeps mu for the regressor; without tokens none is known.
    assert (table.pop("missing_prefill_mass") == 0).all()
    assert (expected.pop("missing_prefill_mass") > 0).any()
    pd.testing.assert_frame_equal(table, expected)
    kwargs = dict(
        chunk_size=64,
        prefill_correction_mode="none",
        init_via_baseline_correction="none",
    )
    np.testing.assert_array_equal(
        estimate_betas_iterative(bare, **kwargs).beta,
        estimate_betas_iterative(with_steps, **kwargs).beta,
    )


def test_step_counts_come_from_the_column(with_steps):
    doubled = with_steps.assign(N_steps=2 * with_steps.N_steps).drop(
        columns="decode_tokens"
    )
    fit = estimate_betas_baseline(doubled, chunk_size=64, correction_mode="none")
    base = estimate_betas_baseline(with_steps, chunk_size=64, correction_mode="none")
    # Twice the steps in the same time: beta0 halves; pressures are per step.
    np.testing.assert_allclose(fit.beta[0], base.beta[0] / 2, rtol=1e-12)


@pytest.fixture
def decode_only(with_steps):
    """Decode rows with step counts and no token column at all."""
    decodes = with_steps[with_steps.phase_type == "decode"]
    return decodes.drop(columns=TOKENS).reset_index(drop=True)


@pytest.mark.filterwarnings("ignore::sklearn_beta.exceptions.IdentifiabilityWarning")
def test_decode_only_trace_with_step_counts_fits(decode_only, with_steps):
    # The oracle: the same decodes with their token column, which the
    # package has always fitted.
    with_tokens = with_steps[with_steps.phase_type == "decode"].reset_index(drop=True)
    expected = estimate_betas_baseline(with_tokens, chunk_size=64).beta
    assert np.all(np.isfinite(expected))
    np.testing.assert_array_equal(
        estimate_betas_baseline(decode_only, chunk_size=64).beta, expected
    )
    for regressor in (BaselineBetaRegressor(), IterativeBetaRegressor()):
        model = make_pipeline(PhaseExposureTransformer(64), clone(regressor))
        reference = make_pipeline(PhaseExposureTransformer(64), clone(regressor))
        np.testing.assert_array_equal(
            model.fit(decode_only)[-1].beta_, reference.fit(with_tokens)[-1].beta_
        )


def test_decode_only_trace_says_what_it_cannot_separate(decode_only):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimate_betas_baseline(decode_only, chunk_size=64)
    assert any(issubclass(w.category, IdentifiabilityWarning) for w in caught)


def test_one_token_column_can_serve_both_phase_types(published_sample):
    # Some exporters log one "tokens" column: P on prefill rows, D on decodes.
    merged = published_sample.assign(
        tokens=published_sample.prefill_tokens + published_sample.decode_tokens
    ).drop(columns=TOKENS)
    columns = {"prefill_tokens": "tokens", "decode_tokens": "tokens"}
    arrays = check_phases(merged, columns)
    expected = check_phases(published_sample, None)
    np.testing.assert_array_equal(arrays.prefill_tokens, expected.prefill_tokens)
    np.testing.assert_array_equal(arrays.decode_tokens, expected.decode_tokens)
    merged.loc[3, "tokens"] = -2  # a decode row
    with pytest.raises(ValueError, match=r"^decode_tokens contains negative values"):
        check_phases(merged, columns)


# --- columns= reaches every function that reads columns (issue 18 item 4) ---

RENAMED = {
    "request_id": "rid",
    "phase_type": "kind",
    "t_start": "start_s",
    "t_end": "end_s",
    "prefill_tokens": "prompt",
    "decode_tokens": "generated",
    "instance_id": "host",
}


@pytest.fixture(scope="module")
def fleet():
    from sklearn_beta.datasets import simulate_trace

    return simulate_trace(
        200,
        beta=(5e-3, 2e-5, 8e-5),
        chunk_size=64,
        max_num_seqs=8,
        arrival_rate=6.0,
        n_instances=2,
        random_state=0,
    )


def _replayed(phases, **kwargs):
    from sklearn_beta.replay import replay_trace

    table = replay_trace(phases, (5e-3, 2e-5, 8e-5), chunk_size=64, **kwargs)
    return table[["prefill_end", "decode_end"]].to_numpy()


def _scored(phases, **kwargs):
    from sklearn_beta.replay import make_replay_scorer

    columns = PhaseColumns.coerce(kwargs.get("columns"))
    transformer = PhaseExposureTransformer(chunk_size=64, columns=columns)
    model = make_pipeline(transformer, BaselineBetaRegressor()).fit(phases)
    return make_replay_scorer(phases, "e2e", **kwargs)(model, phases.iloc[::3])


def _window(phases, **kwargs):
    from sklearn_beta.datasets import cut_window

    return cut_window(phases, 3.0, 9.0, **kwargs).index.to_numpy()


def _folds(phases, **kwargs):
    from sklearn_beta.model_selection import TraceBlockSplit

    return np.concatenate([t for _, t in TraceBlockSplit(3, **kwargs).split(phases)])


def _context(phases, **kwargs):
    from sklearn_beta.model_selection import complete_context_mask

    return complete_context_mask(phases, np.arange(0, len(phases), 2), **kwargs)


def _cleaned(phases, **kwargs):
    return clean_phases(phases, **kwargs)[0].index.to_numpy()


@pytest.mark.parametrize(
    "reader", [_replayed, _scored, _window, _folds, _context, _cleaned]
)
def test_renamed_columns_give_the_default_names_result(fleet, reader):
    expected = reader(fleet)
    got = reader(fleet.rename(columns=RENAMED), columns=RENAMED)
    np.testing.assert_array_equal(got, expected)
    # The renamed table without columns= is refused, never misread.
    with pytest.raises(ValueError):
        reader(fleet.rename(columns=RENAMED))
