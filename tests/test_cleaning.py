"""clean_phases: drop the rows the estimators reject, and say how many and why."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sklearn_beta import CleaningReport, clean_phases, estimate_betas_baseline


@pytest.fixture
def phases(published_sample) -> pd.DataFrame:
    return published_sample


def damaged(phases):
    """The sample trace with one instance of each kind of real-world damage."""
    bad = phases.astype({"t_start": object, "phase_type": object})
    extra = pd.DataFrame(
        [
            ("E", "prefill", 1.0, 1.0, 64, 0),  # zero-length
            ("F", "prefill", 3.0, 2.0, 64, 0),  # reversed
            ("G", "prefil", 1.0, 2.0, 64, 0),  # unknown phase type
            ("H", "prefill", "n/a", 2.0, 64, 0),  # not a number
            ("I", "decode", np.nan, 2.0, 0, 4),  # missing time
            ("J", "decode", 1.0, 2.0, 0, -4),  # negative tokens
            (None, "decode", 1.0, 2.0, 0, 4),  # missing request id
        ],
        columns=phases.columns,
        index=[f"bad{i}" for i in range(7)],
    )
    exact = phases.iloc[[0]].set_axis(["copy_of_0"])  # logged twice
    conflicting = phases.iloc[[3]].assign(t_end=6.9).set_axis(["other_B_decode"])
    return pd.concat([bad, extra, exact, conflicting])


def test_each_kind_of_damage_is_dropped_and_counted(phases):
    frame = damaged(phases)
    cleaned, report = clean_phases(frame)
    assert isinstance(report, CleaningReport)
    assert report.dropped == {
        "missing_request_id": 1,
        "unknown_phase_type": 1,
        "not_a_number": 1,
        "not_finite": 1,
        "non_positive_duration": 2,
        "bad_count": 1,
        "exact_duplicate": 1,
        "conflicting_duplicate": 3,  # B's prefill and both B decodes
    }
    assert report.n_rows_in == 17 and report.n_rows_out == 6 == len(cleaned)
    assert report.n_dropped == 11 == sum(report.dropped.values())
    assert set(report.dropped_index) == set(frame.index) - set(cleaned.index)
    # The first copy of an exact duplicate is kept; request B is gone.
    assert 0 in cleaned.index and "copy_of_0" not in cleaned.index
    assert "B" not in set(cleaned.request_id)


def test_cleaned_table_keeps_columns_dtypes_and_labels(phases):
    frame = damaged(phases)
    cleaned, _ = clean_phases(frame)
    assert list(cleaned.columns) == list(frame.columns)
    assert list(cleaned.dtypes) == list(frame.dtypes)
    pd.testing.assert_frame_equal(cleaned, frame.loc[cleaned.index])


def test_cleaned_table_fits_like_the_undamaged_one(phases):
    cleaned, _ = clean_phases(damaged(phases))
    without_b = phases[phases.request_id != "B"]
    np.testing.assert_array_equal(
        estimate_betas_baseline(cleaned.astype({"t_start": float}), chunk_size=64).beta,
        estimate_betas_baseline(without_b, chunk_size=64).beta,
    )


def test_a_clean_table_is_returned_whole(phases):
    cleaned, report = clean_phases(phases)
    pd.testing.assert_frame_equal(cleaned, phases)
    assert report.n_dropped == 0 and report.dropped == {}
    assert str(report) == "clean_phases kept 8 of 8 rows and dropped 0."


def test_requests_cut_at_the_window_are_kept_and_counted(phases):
    cut = phases.drop(index=[0, 7])  # A lost its prefill, D its decode
    cleaned, report = clean_phases(cut)
    assert len(cleaned) == 6
    assert report.n_prefill_without_decode == 1
    assert report.n_decode_without_prefill == 1
    assert "1 prefill(s) without a decode" in str(report)


def test_drop_unpaired(phases):
    cut = phases.drop(index=[0, 7])
    cleaned, report = clean_phases(cut, drop_unpaired=True)
    assert set(cleaned.request_id) == {"B", "C"}
    assert report.dropped == {"unpaired": 2}
    assert report.n_prefill_without_decode == report.n_decode_without_prefill == 0


def test_report_is_one_paragraph(phases):
    _, report = clean_phases(damaged(phases))
    text = str(report)
    assert "\n" not in text
    assert text.startswith("clean_phases kept 6 of 17 rows and dropped 11 (")
    assert "2 non_positive_duration" in text


def test_nothing_left_raises(phases):
    with pytest.raises(ValueError, match="dropped all 8 rows"):
        clean_phases(phases.assign(t_end=phases.t_start))


def test_column_problems_still_raise(phases):
    with pytest.raises(ValueError, match=r"^Missing required columns: \['t_start'\]"):
        clean_phases(phases.drop(columns="t_start"))
    with pytest.raises(TypeError, match="boolean"):
        clean_phases(phases.assign(decode_tokens=True))
    with pytest.raises(ValueError, match="empty"):
        clean_phases(phases.iloc[:0])


def test_bad_drop_unpaired(phases):
    with pytest.raises(TypeError, match="drop_unpaired"):
        clean_phases(phases, drop_unpaired="yes")


def test_instances_and_step_counts_are_checked(phases):
    frame = phases.assign(gpu=["a"] * 7 + [None], N_steps=[2, 5, 1, 3, 3, 5, 1.5, 3])
    cleaned, report = clean_phases(frame, columns={"instance_id": "gpu"})
    assert report.dropped == {"bad_count": 1, "missing_instance": 1}
    assert list(cleaned.index) == [0, 1, 2, 3, 4, 5]


def test_exact_duplicates_are_judged_on_the_values_used(phases):
    # The copy spells t_start as a string and has junk in the unused
    # decode_tokens cell: the same phase as far as the method is concerned.
    copy = phases.iloc[[0]].astype({"t_start": object, "decode_tokens": object})
    copy.iat[0, 2] = " 0.0"
    copy.iat[0, 5] = [1]
    cleaned, report = clean_phases(pd.concat([phases, copy.set_axis(["again"])]))
    assert report.dropped == {"exact_duplicate": 1}
    assert list(cleaned.index) == list(phases.index)
