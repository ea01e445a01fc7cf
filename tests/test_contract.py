"""The input contract: every row of docs/readme_contract.md has a test here.

Each test feeds one kind of bad (or merely unusual) input to the public layer
and checks the documented answer: the exception type, that the message names
the column or parameter, that it shows the offending rows; or that the input
is accepted and how it is read.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from conftest import column_kwargs
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    clean_phases,
    estimate_betas_baseline,
    estimate_betas_iterative,
)


@pytest.fixture
def phases(published_sample) -> pd.DataFrame:
    return published_sample


def baseline(frame, **kwargs):
    return estimate_betas_baseline(frame, chunk_size=64, **kwargs)


def iterative(frame, **kwargs):
    return estimate_betas_iterative(frame, chunk_size=64, **kwargs)


def transform(frame, **kwargs):
    return PhaseExposureTransformer(64, **kwargs).fit_transform(frame)


PUBLIC = [baseline, iterative, transform]
public = pytest.mark.parametrize("entry", PUBLIC, ids=lambda f: f.__name__)


def assert_rejects(entry, frame, error, *words):
    with pytest.raises(error) as info:
        entry(frame)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    assert "\n" not in message, "messages are one paragraph"
    return message


# --- the table as a whole ---------------------------------------------------


@public
def test_not_a_dataframe(entry, phases):
    assert_rejects(entry, phases.to_numpy(), TypeError, "DataFrame")


@public
def test_missing_column(entry, phases):
    message = assert_rejects(entry, phases.drop(columns="t_end"), ValueError)
    assert message.startswith("Missing required columns: ['t_end']. ")


@public
def test_missing_columns_are_listed_in_schema_order(entry, phases):
    frame = phases[phases.columns[::-1]].drop(columns=["t_end", "request_id"])
    message = assert_rejects(entry, frame, ValueError)
    assert message.startswith("Missing required columns: ['request_id', 't_end']")


@public
def test_duplicated_column_names(entry, phases):
    frame = pd.concat([phases, phases[["t_end"]]], axis=1)
    assert_rejects(entry, frame, ValueError, "t_end", "once")


@public
def test_multi_level_column_labels(entry, phases):
    frame = phases.set_axis(
        pd.MultiIndex.from_arrays([phases.columns, ["x"] * 6]), axis=1
    )
    assert_rejects(entry, frame, TypeError, "multi-level")


@public
def test_empty_table(entry, phases):
    message = assert_rejects(entry, phases.iloc[:0], ValueError, "empty")
    assert message.startswith("No phase rows")


@public
def test_custom_column_names(entry, phases):
    renamed = phases.rename(columns={"t_start": "start", "t_end": "end"})
    result = entry(renamed, **column_kwargs(t_start="start", t_end="end"))
    expected = entry(phases)
    if entry is transform:
        pd.testing.assert_frame_equal(result, expected)
    else:
        np.testing.assert_array_equal(result.beta, expected.beta)


# --- phase types ------------------------------------------------------------


def test_phase_type_case_and_whitespace_are_normalised(phases):
    messy = phases.assign(
        phase_type=phases.phase_type.map({"prefill": " Prefill", "decode": "DECODE "})
    )
    np.testing.assert_array_equal(baseline(messy).beta, baseline(phases).beta)


@public
@pytest.mark.parametrize("value", ["prefil", "", None, 3])
def test_unknown_phase_type(entry, phases, value):
    frame = phases.astype({"phase_type": object})
    frame.loc[3, "phase_type"] = value
    assert_rejects(entry, frame, ValueError, "'phase_type'", "row 3")


# --- numbers ----------------------------------------------------------------


@public
@pytest.mark.parametrize("column", ["t_start", "t_end", "prefill_tokens"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_values(entry, phases, column, value):
    frame = phases.astype({column: float})
    frame.loc[2, column] = value  # row 2 is a prefill
    assert_rejects(entry, frame, ValueError, f"'{column}'", "row 2")


def test_unused_token_values_are_ignored(phases):
    # decode_tokens on prefill rows (and prefill_tokens on decode rows) are not
    # part of the method: exports often leave them empty.
    frame = phases.astype({"decode_tokens": float, "prefill_tokens": float})
    frame.loc[phases.phase_type == "prefill", "decode_tokens"] = np.nan
    frame.loc[phases.phase_type == "decode", "prefill_tokens"] = -7.5
    np.testing.assert_array_equal(baseline(frame).beta, baseline(phases).beta)


@public
@pytest.mark.parametrize("end", [0.8, 0.5], ids=["zero-length", "reversed"])
def test_non_positive_duration(entry, phases, end):
    frame = phases.copy()
    frame.loc[2, "t_end"] = end  # t_start is 0.8
    assert_rejects(entry, frame, ValueError, "'t_end'", "'t_start'", "row 2")


@public
def test_single_distinct_timestamp(entry, phases):
    frame = phases.assign(t_start=5.0, t_end=5.0)
    assert_rejects(entry, frame, ValueError, "'t_end'", "8 offending row(s)")


@public
@pytest.mark.parametrize("value", [-1, 2.5, 2.0**53])
def test_bad_token_counts(entry, phases, value):
    frame = phases.astype({"prefill_tokens": float})
    frame.loc[4, "prefill_tokens"] = value
    assert_rejects(entry, frame, ValueError, "'prefill_tokens'", "row 4")


def test_token_counts_within_rounding_are_integers(phases):
    frame = phases.astype({"prefill_tokens": float})
    frame.loc[0, "prefill_tokens"] = 96 + 1e-9
    np.testing.assert_array_equal(baseline(frame).beta, baseline(phases).beta)


@public
@pytest.mark.parametrize("value", [-1, 1.5])
def test_bad_step_counts(entry, phases, value):
    frame = phases.assign(N_steps=[2, 5, 1, 3, 3, 5, 1, 3]).astype({"N_steps": float})
    frame.loc[5, "N_steps"] = value
    assert_rejects(entry, frame, ValueError, "'N_steps'", "row 5")


def test_observed_step_counts_replace_inferred_ones(phases):
    inferred = baseline(phases).beta
    same = phases.assign(N_steps=[2, 5, 1, 3, 3, 5, 1, 3])
    np.testing.assert_array_equal(baseline(same).beta, inferred)
    other = same.assign(N_steps=[4, 5, 2, 3, 6, 5, 2, 3])
    assert not np.array_equal(baseline(other).beta, inferred)


def test_numeric_strings_are_parsed(phases):
    as_text = phases.astype({"t_start": str, "prefill_tokens": str})
    as_text.loc[0, "t_start"] = " 0.0 "
    as_text.loc[2, "prefill_tokens"] = "6.4e1"
    np.testing.assert_array_equal(baseline(as_text).beta, baseline(phases).beta)


@public
@pytest.mark.parametrize("value", ["abc", "1,5", [1], {"a": 1}])
def test_values_that_are_not_numbers(entry, phases, value):
    frame = phases.astype({"t_start": object})
    frame.at[6, "t_start"] = value
    assert_rejects(entry, frame, TypeError, "'t_start'", "not numbers", "row 6")


@public
def test_boolean_column(entry, phases):
    frame = phases.assign(decode_tokens=phases.decode_tokens > 0)
    assert_rejects(entry, frame, TypeError, "'decode_tokens'", "boolean")


@public
def test_object_column_with_booleans(entry, phases):
    frame = phases.astype({"decode_tokens": object})
    frame.at[1, "decode_tokens"] = True
    assert_rejects(entry, frame, TypeError, "'decode_tokens'", "not numbers", "row 1")


@public
def test_complex_column(entry, phases):
    frame = phases.astype({"t_end": complex})
    assert_rejects(entry, frame, TypeError, "'t_end'", "complex")


@public
def test_datetime_columns(entry, phases):
    epoch = pd.Timestamp("2026-01-01")
    frame = phases.assign(
        t_start=epoch + pd.to_timedelta(phases.t_start, unit="s"),
        t_end=epoch + pd.to_timedelta(phases.t_end, unit="s"),
    )
    assert_rejects(entry, frame, TypeError, "'t_start'", "datetime", "total_seconds")
    frame = phases.assign(t_end=pd.to_timedelta(phases.t_end, unit="s"))
    assert_rejects(entry, frame, TypeError, "'t_end'", "timedelta")


def test_epoch_timestamps(phases):
    # Each instance's earliest time is moved to 0 before any difference is
    # taken: epoch seconds give the same betas as times from 0.
    epoch = phases.assign(t_start=phases.t_start + 1.7e9, t_end=phases.t_end + 1.7e9)
    np.testing.assert_allclose(baseline(epoch).beta, baseline(phases).beta, rtol=1e-6)
    np.testing.assert_allclose(iterative(epoch).beta, iterative(phases).beta, rtol=1e-6)


@public
def test_times_beyond_float64_resolution(entry, phases):
    frame = phases.copy()
    frame.loc[0, "t_start"] = -1e300
    frame.loc[0, "t_end"] = -1e300 * (1 - 1e-15)
    assert_rejects(entry, frame, ValueError, "float64", "row")


@public
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_exposures_that_overflow(entry, phases):
    frame = phases.copy()
    frame.loc[1, ["t_start", "t_end", "decode_tokens"]] = [0.0, 1e-300, 2**52]
    with pytest.raises(ValueError, match="float64|overflow"):
        result = entry(frame)
        if entry is transform:  # the transformer leaves the fit to the regressor
            BaselineBetaRegressor().fit(result)


# --- requests ---------------------------------------------------------------


@public
def test_missing_request_id(entry, phases):
    frame = phases.astype({"request_id": object})
    frame.loc[5, "request_id"] = None
    assert_rejects(entry, frame, ValueError, "'request_id'", "row 5")


@public
def test_unhashable_request_id(entry, phases):
    frame = phases.astype({"request_id": object})
    frame.at[5, "request_id"] = ["C"]
    assert_rejects(entry, frame, TypeError, "'request_id'", "hashable")


@public
@pytest.mark.parametrize("row", [0, 1], ids=["prefill", "decode"])
def test_repeated_phase_of_a_request(entry, phases, row):
    frame = pd.concat([phases, phases.iloc[[row]].assign(t_end=9.9)])
    message = assert_rejects(entry, frame, ValueError, "'request_id'", "at most one")
    assert "clean_phases" in message


def test_prefill_without_decode_is_kept(phases):
    # A request cut at the end of the trace window: its prefill loaded the
    # engine, so it stays (the published code does not require a decode).
    cut = phases.drop(index=7)
    result = baseline(cut)
    assert result.diagnostics["n_phases"] == 7
    assert np.all(np.isfinite(result.beta))


def test_decode_without_prefill_is_kept(phases):
    # A request already prefilled when the window opened.
    cut = phases.drop(index=0)
    assert baseline(cut).diagnostics["n_phases"] == 7
    assert iterative(cut).diagnostics["n_phases"] == 7


def test_decode_starting_before_its_prefill_ends_is_accepted(phases):
    # Clock skew between the two log lines of a request: the method never
    # pairs a request's phases, so each is taken as logged.
    skewed = phases.copy()
    skewed.loc[1, "t_start"] = 1.9  # A's prefill ends at 2.0
    result = baseline(skewed)
    assert np.all(np.isfinite(result.beta))
    assert not np.array_equal(result.beta, baseline(phases).beta)


@public
def test_missing_instance(entry, phases):
    frame = phases.assign(gpu=["a", "a", "b", "b", "a", "a", None, None])
    assert_rejects(
        lambda f: entry(f, **column_kwargs(instance_id="gpu")),
        frame,
        ValueError,
        "'gpu'",
        "row 6",
    )


def test_instances_are_shifted_separately(phases):
    # Two instances, one with epoch times: pressures never mix instances, and
    # each instance's clock starts at 0.
    two = pd.concat(
        [
            phases.assign(gpu="a"),
            phases.assign(
                gpu="b",
                request_id=phases.request_id + "2",
                t_start=phases.t_start + 1.7e9,
                t_end=phases.t_end + 1.7e9,
            ),
        ]
    )
    overlaid = pd.concat(
        [
            phases.assign(gpu="a"),
            phases.assign(gpu="b", request_id=phases.request_id + "2"),
        ]
    )
    np.testing.assert_allclose(
        baseline(two, **column_kwargs(instance_id="gpu")).beta,
        baseline(overlaid, **column_kwargs(instance_id="gpu")).beta,
        rtol=1e-6,
    )


# --- the published messages ---------------------------------------------------
# Scripts written for the published implementation match these phrases; each
# message starts with one, and the package's explanation (the column, the
# first offending rows) follows.


def _with_steps(phases):
    return phases.assign(N_steps=[2, 5, 1, 3, 3, 5, 1, 3]).astype({"N_steps": float})


def _set(column, row, value):
    def damage(phases):
        frame = phases.astype({column: object})
        frame.at[row, column] = value
        return frame

    return damage


PUBLISHED_PHRASES = {
    "No phase rows": lambda p: p.iloc[:0],
    "Missing required columns: ['t_end']": lambda p: p.drop(columns="t_end"),
    "phase_type must be one of": _set("phase_type", 3, "prefil"),
    "non-positive durations": lambda p: p.assign(
        t_end=np.where(p.index == 2, p.t_start, p.t_end)
    ),
    "Multiple prefill rows per request": lambda p: pd.concat([p, p.iloc[[2]]]),
    "N_steps must be integer-valued": lambda p: _set("N_steps", 5, 1.5)(_with_steps(p)),
    "N_steps contains negative values": lambda p: _set("N_steps", 5, -1)(
        _with_steps(p)
    ),
}


@public
@pytest.mark.parametrize("phrase", PUBLISHED_PHRASES)
def test_messages_start_with_the_published_phrase(entry, phases, phrase):
    frame = PUBLISHED_PHRASES[phrase](phases)
    message = assert_rejects(entry, frame, ValueError)
    assert message.startswith(phrase), message
    if phrase != "No phase rows":  # the package's explanation follows
        assert len(message) > len(phrase) + 20
        assert "row" in message or "columns" in message


@public
def test_the_published_phrases_name_the_renamed_column(entry, phases):
    # The phrase keeps the schema's name; the explanation names the column.
    frame = _with_steps(phases).rename(columns={"N_steps": "steps"})
    frame.loc[5, "steps"] = 1.5
    message = assert_rejects(
        lambda f: entry(f, **column_kwargs(n_steps="steps")),
        frame,
        ValueError,
        "'steps'",
        "row 5",
    )
    assert message.startswith("N_steps must be integer-valued")


@public
def test_repeated_decode_rows_are_named_as_such(entry, phases):
    frame = pd.concat([phases, phases.iloc[[3]].assign(t_end=6.9)])
    message = assert_rejects(entry, frame, ValueError, "row 3")
    assert message.startswith("Multiple decode rows per request")


@pytest.mark.parametrize("value", [0, -64])
def test_non_positive_chunk_size_uses_the_published_phrase(phases, value):
    for entry in (estimate_betas_baseline, estimate_betas_iterative):
        with pytest.raises(ValueError, match=r"^chunk_size must be positive"):
            entry(phases, chunk_size=value)


# --- messages ---------------------------------------------------------------


def test_messages_show_at_most_five_rows(phases):
    frame = phases.assign(t_end=phases.t_start)
    message = assert_rejects(baseline, frame, ValueError, "8 offending row(s)")
    assert len(re.findall(r"row \d+ \(", message)) == 5
    assert "and 3 more" in message


def test_messages_name_rows_by_index_label(phases):
    frame = phases.set_axis([f"line{i}" for i in range(8)])
    frame.loc["line3", "decode_tokens"] = -1
    assert_rejects(baseline, frame, ValueError, "row 'line3'")


# --- parameters -------------------------------------------------------------


def fit_iterative_estimator(frame, **params):
    model = make_pipeline(
        PhaseExposureTransformer(64), IterativeBetaRegressor(**params)
    )
    return model.fit(frame)


@pytest.mark.parametrize("value", [0, -64, 1.5, "64", None, True, np.nan])
def test_bad_chunk_size(phases, value):
    for entry in (estimate_betas_baseline, estimate_betas_iterative):
        with pytest.raises((TypeError, ValueError), match="chunk_size"):
            entry(phases, chunk_size=value)
    if value is not True:  # scikit-learn's parameter validation reads True as 1
        with pytest.raises((TypeError, ValueError), match="chunk_size"):
            PhaseExposureTransformer(chunk_size=value).fit(phases)


@pytest.mark.parametrize("mode", ["end", "end_inside", "uniform", "none"])
def test_chunk_size_one_leaves_nothing_to_correct(phases, mode):
    # Found by the fuzz run: with C = 1 no prefill has a partial last chunk,
    # and the empty correction used to be an integer array.
    result = estimate_betas_iterative(
        phases, chunk_size=1, prefill_correction_mode=mode
    )
    assert np.all(np.isfinite(result.beta))


def test_integral_float_chunk_size_is_accepted(phases):
    np.testing.assert_array_equal(
        estimate_betas_baseline(phases, chunk_size=64.0).beta, baseline(phases).beta
    )


@pytest.mark.parametrize("value", [0, -0.5, 1.5, np.nan, "1", True])
def test_bad_damping(phases, value):
    with pytest.raises(ValueError, match="damping"):
        iterative(phases, damping_eta=value)
    with pytest.raises(ValueError, match="damping"):
        fit_iterative_estimator(phases, damping=value)


@pytest.mark.parametrize("value", [0, -1e-6, np.nan, np.inf, "1e-6", True])
def test_bad_tol(phases, value):
    with pytest.raises(ValueError, match="tol"):
        iterative(phases, tol=value)
    # One set of constraints: the estimator refuses True and inf as well.
    with pytest.raises(ValueError, match="tol"):
        fit_iterative_estimator(phases, tol=value)


@pytest.mark.parametrize("value", [0, -3, 2.5, "25", True])
def test_bad_max_iter(phases, value):
    with pytest.raises(ValueError, match="max_outer_iters"):
        iterative(phases, max_outer_iters=value)
    with pytest.raises(ValueError, match="max_iter"):
        fit_iterative_estimator(phases, max_iter=value)


@pytest.mark.parametrize("value", ["End", "beta-informed", "", None])
def test_bad_correction_mode(phases, value):
    with pytest.raises(ValueError, match="correction_mode"):
        baseline(phases, correction_mode=value)
    with pytest.raises(ValueError, match="prefill_correction_mode"):
        iterative(phases, prefill_correction_mode=value)
    with pytest.raises(ValueError, match="init_via_baseline_correction"):
        iterative(phases, init_via_baseline_correction=value)
    with pytest.raises(ValueError, match="correction_mode"):
        transform(phases, correction_mode=value)
    with pytest.raises(ValueError, match="correction_mode"):
        fit_iterative_estimator(phases, correction_mode=value)


def test_beta_informed_is_not_a_baseline_mode(phases):
    with pytest.raises(ValueError, match="correction_mode"):
        baseline(phases, correction_mode="beta_informed")


@pytest.mark.parametrize("value", ["sometimes", None])
def test_bad_stopping(phases, value):
    with pytest.raises(ValueError, match="stopping"):
        iterative(phases, stopping=value)
    with pytest.raises(ValueError, match="stopping"):
        fit_iterative_estimator(phases, stopping=value)


@pytest.mark.parametrize("value", [-1.0, np.nan, np.inf, "0"])
def test_bad_min_duration(phases, value):
    for entry in (baseline, iterative):
        with pytest.raises((TypeError, ValueError), match="min_duration_sec"):
            entry(phases, min_duration_sec=value)
    if value is not np.inf:
        with pytest.raises(ValueError, match="min_duration"):
            transform(phases, min_duration=value)


# --- exposure tables given to the regressors ----------------------------------


@pytest.mark.parametrize("regressor", [BaselineBetaRegressor, IterativeBetaRegressor])
def test_regressors_reject_non_finite_exposures(phases, regressor):
    table = transform(phases)
    table.iloc[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        regressor().fit(table)


def test_regressors_reject_huge_instance_codes(phases):
    # Found by fuzzing the exposure table: a code of 2**40 used to size an
    # array by it (MemoryError). The iterative regressor, which needs the
    # trace, rejects it; the baseline needs only the first three columns and
    # then judges identifiability on the design alone.
    table = transform(phases).to_numpy().copy()
    table[0, -1] = 2.0**40
    with pytest.raises(ValueError, match="instance"):
        IterativeBetaRegressor().fit(table)
    assert np.all(np.isfinite(BaselineBetaRegressor().fit(table).beta_))


@pytest.mark.parametrize("regressor", [BaselineBetaRegressor, IterativeBetaRegressor])
def test_regressors_reject_non_finite_y(phases, regressor):
    table = transform(phases)
    y = table["duration"].to_numpy().copy()
    y[0] = np.inf
    with pytest.raises(ValueError, match="y"):
        regressor().fit(table, y)


# --- the input is never modified ----------------------------------------------


def _snapshot(frame):
    return frame.copy(deep=True), frame.dtypes.copy(), frame.index.copy()


@pytest.mark.parametrize(
    "run",
    [
        baseline,
        iterative,
        transform,
        lambda f: make_pipeline(
            PhaseExposureTransformer(64), BaselineBetaRegressor()
        ).fit(f),
        lambda f: fit_iterative_estimator(f),
        clean_phases,
    ],
    ids=[
        "baseline",
        "iterative",
        "transform",
        "baseline-pipeline",
        "iterative-pipeline",
        "clean",
    ],
)
def test_input_is_not_modified(phases, run):
    messy = phases.astype({"t_start": str, "decode_tokens": float}).set_axis(
        list("hgfedcba")
    )
    messy.loc["h", "phase_type"] = " PREFILL"
    messy.loc["g", "prefill_tokens"] = np.nan  # unused on a decode row
    before, dtypes, index = _snapshot(messy)
    run(messy)
    pd.testing.assert_frame_equal(messy, before)
    pd.testing.assert_series_equal(messy.dtypes, dtypes)
    pd.testing.assert_index_equal(messy.index, index)
