"""Malformed phase tables for the fuzz run (tests/test_fuzz.py, benchmarks/fuzz.py).

A case is a small valid trace damaged by a few random mutations (bad cells,
dropped, duplicated or retyped columns, duplicated or dropped rows, equal or
swapped times, huge or tiny numbers), fed with random (often invalid)
parameters to one public entry point (for "exposures": both regressors on the
table's exposure table with a few damaged cells). The contract: the entry
point returns finite non-negative betas, or raises ValueError or TypeError
from a check; nothing else comes out and the input table is left as it was.
"""

from __future__ import annotations

import decimal
import traceback
import warnings

import numpy as np
import pandas as pd
from hypothesis import strategies as st
from sklearn.pipeline import make_pipeline
from trace_factory import random_phases

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    clean_phases,
    estimate_betas_baseline,
    estimate_betas_iterative,
)

#: The only exceptions the public layer may raise on bad input (scikit-learn's
#: InvalidParameterError is a ValueError).
DOCUMENTED = (ValueError, TypeError)
COLUMNS = [
    "request_id",
    "phase_type",
    "t_start",
    "t_end",
    "prefill_tokens",
    "decode_tokens",
]

NASTY = [
    np.nan,
    np.inf,
    -np.inf,
    None,
    pd.NA,
    "",
    "abc",
    " 3 ",
    "1e400",
    "nan",
    "prefill",
    " DECODE",
    True,
    False,
    [1],
    {"a": 1},
    (1, 2),
    -1,
    0,
    1,
    2.5,
    1e-300,
    1e300,
    -1e300,
    2**60,
    -(2**63),
    1.7e9,
    complex(1, 1),
    decimal.Decimal("2"),
    np.int8(-5),
    np.float32(3.5),
    pd.Timestamp("2026-01-01"),
    pd.Timedelta(1, "s"),
    b"bytes",
]


def _replace_column(frame, i, values):
    """``frame`` with its i-th column (by position) replaced."""
    columns = [frame.iloc[:, j] for j in range(frame.shape[1])]
    columns[i] = pd.Series(values, index=frame.index, name=frame.columns[i])
    out = pd.concat(columns, axis=1)
    out.columns = frame.columns
    return out


def _set_cell(frame, draw):
    i = draw(st.integers(0, frame.shape[1] - 1))
    row = draw(st.integers(0, len(frame) - 1))
    values = frame.iloc[:, i].astype(object).to_numpy(copy=True)
    values[row] = draw(st.sampled_from(NASTY))
    return _replace_column(frame, i, values)


def _retype_column(frame, draw):
    i = draw(st.integers(0, frame.shape[1] - 1))
    column = frame.iloc[:, i]
    kind = draw(
        st.sampled_from(
            ["bool", "str", "category", "object", "datetime", "Int64", "float32"]
        )
    )
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            if kind == "datetime":
                values = pd.to_datetime(column, unit="s", errors="coerce")
            else:
                values = column.astype(kind)
    except (TypeError, ValueError, OverflowError):
        return frame  # that retyping is impossible for this column
    return _replace_column(frame, i, values)


def _mutate(frame, draw):
    what = draw(
        st.sampled_from(
            [
                "cell",
                "cell",
                "cell",
                "retype",
                "drop_column",
                "duplicate_column",
                "duplicate_rows",
                "drop_rows",
                "equal_times",
                "swap_times",
                "scale_times",
                "shuffle",
                "index",
                "multi_level_columns",
                "add_N_steps",
                "steps_instead_of_tokens",
            ]
        )
    )
    if (len(frame) == 0 or frame.shape[1] == 0) and what in ("cell", "retype"):
        return frame
    times = {"t_start", "t_end"} <= set(frame.columns) and not any(
        frame.columns.duplicated()
    )
    if what in ("equal_times", "swap_times", "scale_times", "duplicate_rows") and not (
        times and len(frame)
    ):
        return frame
    if what == "cell":
        return _set_cell(frame, draw)
    if what == "retype":
        return _retype_column(frame, draw)
    if what == "drop_column":
        return frame.drop(columns=draw(st.sampled_from(list(frame.columns))))
    if what == "duplicate_column":
        column = draw(st.sampled_from(list(frame.columns)))
        return pd.concat([frame, frame[[column]]], axis=1)
    if what == "duplicate_rows":
        rows = draw(st.lists(st.integers(0, max(len(frame) - 1, 0)), max_size=4))
        extra = frame.iloc[rows] if len(frame) else frame
        if draw(st.booleans()) and len(extra) and "t_end" in extra:
            extra = extra.assign(
                t_end=pd.to_numeric(extra["t_end"], errors="coerce") + 0.5
            )
        return pd.concat([frame, extra])
    if what == "drop_rows":
        keep = draw(st.lists(st.booleans(), min_size=len(frame), max_size=len(frame)))
        return frame[np.asarray(keep, dtype=bool)]
    if what == "equal_times":
        row = draw(st.integers(0, len(frame) - 1))
        t_end = frame["t_end"].astype(object).to_numpy(copy=True)
        t_end[row] = frame["t_start"].iloc[row]
        return frame.assign(t_end=t_end)
    if what == "swap_times":
        return frame.rename(columns={"t_start": "t_end", "t_end": "t_start"})
    if what == "scale_times":
        factor = draw(st.sampled_from([1e-300, 1e-9, 1e3, 1e300, -1.0]))
        offset = draw(st.sampled_from([0.0, 1.7e9, 2e9, -1e15, 1e300]))
        scaled = {}
        for column in ("t_start", "t_end"):
            try:
                values = pd.to_numeric(frame[column], errors="coerce")
            except (TypeError, ValueError):
                return frame
            with np.errstate(all="ignore"):
                scaled[column] = values * factor + offset
        return frame.assign(**scaled)
    if what == "shuffle":
        return frame.sample(frac=1.0, random_state=draw(st.integers(0, 2**31)))
    if what == "multi_level_columns":
        labels = [frame.columns, ["x"] * frame.shape[1]]
        return frame.set_axis(pd.MultiIndex.from_arrays(labels), axis=1)
    if what == "index":
        labels = draw(st.sampled_from(["dup", "str", "neg"]))
        n = len(frame)
        index = {
            "dup": [0] * n,
            "str": [f"x{i}" for i in range(n)],
            "neg": list(range(-n, 0)),
        }
        return frame.set_axis(index[labels])
    if what == "steps_instead_of_tokens" and _has_clean_tokens(frame):
        # The published rule: with N_steps the token columns are optional.
        steps = np.where(
            frame["phase_type"] == "prefill",
            np.ceil(frame["prefill_tokens"] / 64),
            frame["decode_tokens"],
        )
        kept = draw(st.sampled_from([[], ["prefill_tokens"], ["decode_tokens"]]))
        dropped = [c for c in ("prefill_tokens", "decode_tokens") if c not in kept]
        return frame.assign(N_steps=steps).drop(columns=dropped)
    if what == "add_N_steps" and not isinstance(frame.columns, pd.MultiIndex):
        return frame.assign(N_steps=draw(st.sampled_from([1, 0, -1, 2.5, np.nan, "3"])))
    return frame


def _has_clean_tokens(frame) -> bool:
    names = ("phase_type", "prefill_tokens", "decode_tokens")
    return (
        not isinstance(frame.columns, pd.MultiIndex)
        and not frame.columns.duplicated().any()
        and all(name in frame.columns for name in names)
        and all(pd.api.types.is_numeric_dtype(frame[c]) for c in names[1:])
    )


@st.composite
def malformed_tables(draw) -> pd.DataFrame:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    frame = random_phases(rng, draw(st.integers(1, 6)))
    for _ in range(draw(st.integers(0, 4))):
        frame = _mutate(frame, draw)
    return frame


#: Parameter values tried; the first of each list is valid. Most cases keep
#: all parameters valid so that the tables themselves get exercised.
PARAM_VALUES = {
    "chunk_size": [64, 1, 16, 2.0, 10**12, 0, -8, 2.5, "64", None, True, np.nan],
    "mode": ["end", "uniform", "none", "end_inside", "beta_informed", "END", None],
    "damping": [1.0, 0.5, 0.0, 1.5, np.nan, "1"],
    "tol": [1e-6, 1e-12, 0.0, -1.0, np.inf, np.nan],
    "max_iter": [25, 1, 3, 0, -1, 2.5],
    "min_duration": [0.0, 0.5, -1.0, np.nan, np.inf],
}


def _check_result(beta):
    beta = np.asarray(beta, dtype=float)
    assert beta.shape == (3,), beta
    assert np.all(np.isfinite(beta)), f"non-finite betas {beta}"
    assert np.all(beta >= 0), f"negative betas {beta}"


def run_entry(entry: str, frame: pd.DataFrame, params: dict) -> str:
    """Run one entry point on ``frame``; return 'ok' or the exception's name.

    Raises AssertionError if an undocumented exception comes out, the betas
    are not finite and non-negative, or ``frame`` was modified.
    """
    before = frame.copy(deep=True)
    chunk = params["chunk_size"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if entry == "baseline":
                result = estimate_betas_baseline(
                    frame,
                    chunk_size=chunk,
                    correction_mode=params["mode"],
                    min_duration_sec=params["min_duration"],
                )
                _check_result(result.beta)
            elif entry == "iterative":
                result = estimate_betas_iterative(
                    frame,
                    chunk_size=chunk,
                    prefill_correction_mode=params["mode"],
                    damping_eta=params["damping"],
                    tol=params["tol"],
                    max_outer_iters=params["max_iter"],
                    min_duration_sec=params["min_duration"],
                )
                _check_result(result.beta)
            elif entry == "clean":
                cleaned, report = clean_phases(frame)
                assert report.n_rows_out == len(cleaned)
                assert report.n_dropped == len(frame) - len(cleaned)
                assert sum(report.dropped.values()) == report.n_dropped
                result = estimate_betas_baseline(cleaned, chunk_size=64)
                _check_result(result.beta)
            elif entry == "exposures":
                _fit_damaged_exposures(frame, params["exposure_edits"])
            else:
                regressor = (
                    BaselineBetaRegressor()
                    if entry == "Baseline"
                    else IterativeBetaRegressor(
                        params["mode"],
                        damping=params["damping"],
                        tol=params["tol"],
                        max_iter=params["max_iter"],
                    )
                )
                model = make_pipeline(
                    PhaseExposureTransformer(
                        chunk,
                        correction_mode=params["mode"],
                        min_duration=params["min_duration"],
                    )
                    if entry == "Baseline"
                    else PhaseExposureTransformer(chunk),
                    regressor,
                ).fit(frame)
                _check_result(model[-1].beta_)
                assert np.all(np.isfinite(model.predict(frame)))
        outcome = "ok"
    except DOCUMENTED as exc:
        _assert_raised_by_a_check(exc)
        outcome = type(exc).__name__
    _assert_unchanged(frame, before)
    return outcome


def _assert_raised_by_a_check(exc):
    """The error must come from a deliberate check (this package's or
    scikit-learn's validation), not from deep inside numpy or pandas."""
    where = traceback.extract_tb(exc.__traceback__)[-1].filename
    assert "sklearn_beta" in where or "/sklearn/utils/" in where, (
        f"{type(exc).__name__} raised inside {where}: {exc}"
    )


def _assert_unchanged(frame, before):
    assert frame.columns.equals(before.columns), "columns were modified"
    assert frame.index.equals(before.index), "index was modified"
    assert list(frame.dtypes) == list(before.dtypes), "dtypes were modified"
    for i in range(frame.shape[1]):
        a, b = frame.iloc[:, i], before.iloc[:, i]
        same = [(x is y) or _equal(x, y) for x, y in zip(a, b, strict=True)]
        assert all(same), f"column {frame.columns[i]!r} was modified"


def _equal(x, y):
    try:
        if pd.isna(x) and pd.isna(y):
            return True
    except (TypeError, ValueError):
        pass
    try:
        return bool(x == y)
    except (TypeError, ValueError):
        return repr(x) == repr(y)


ENTRIES = ["baseline", "iterative", "Baseline", "Iterative", "clean", "exposures"]
EXPOSURE_VALUES = [np.nan, np.inf, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 64.0, 1e-300]
EXPOSURE_VALUES += [1e300, 2.0**62, -1e-300]


def _fit_damaged_exposures(frame, edits):
    """Both regressors on the frame's exposure table with some cells damaged."""
    table = PhaseExposureTransformer(64).fit_transform(frame).to_numpy().copy()
    for row, column, value in edits:
        table[row % table.shape[0], column] = value
    for regressor in (BaselineBetaRegressor(), IterativeBetaRegressor()):
        try:
            model = regressor.fit(table)
        except DOCUMENTED as exc:
            _assert_raised_by_a_check(exc)
            continue
        _check_result(model.beta_)
        assert np.all(np.isfinite(model.predict(table)))


@st.composite
def fuzz_cases(draw):
    frame = draw(malformed_tables())
    entry = draw(st.sampled_from(ENTRIES))
    params = {key: values[0] for key, values in PARAM_VALUES.items()}
    if draw(st.integers(0, 4)) == 0:  # one case in five has a random parameter
        key = draw(st.sampled_from(list(PARAM_VALUES)))
        params[key] = draw(st.sampled_from(PARAM_VALUES[key]))
    cell = st.tuples(
        st.integers(0, 50), st.integers(0, 10), st.sampled_from(EXPOSURE_VALUES)
    )
    params["exposure_edits"] = draw(st.lists(cell, max_size=3))
    return entry, frame, params
