"""Label codes: the fast paths agree with pandas' factorize."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sklearn_beta.core._ids import id_codes, phase_kinds


@pytest.mark.parametrize(
    "ids",
    [
        [0, 0, 1, 1, 2, 2],  # numbered as they arrive: the one-pass path
        [5, 6, 5, 7, 6],
        [10**12, 10**12 + 1, 10**12],
        [0, 2, 1],  # a gap in the running maximum: hashed
        [1, 0],  # the first id is not the smallest: hashed
        [-3, -2, -3],
        list(np.random.default_rng(0).integers(0, 50, 200)),
    ],
)
@pytest.mark.parametrize("sort", [False, True])
def test_id_codes_equal_factorize(ids, sort):
    column = pd.Series(ids)
    expected = pd.factorize(column, sort=sort)[0]
    np.testing.assert_array_equal(id_codes(column, "request_id", sort), expected)


@pytest.mark.parametrize(
    "labels",
    [
        pd.Series(["prefill", "decode", "decode"]),
        pd.Series(["prefill", "decode"], dtype=object),
        pd.Series(["Prefill ", "DECODE", None]),
        pd.Series(["prefill", "decode", "other"], dtype="string[pyarrow]"),
    ],
)
def test_phase_kinds_normalise_labels_on_every_path(labels):
    kind = labels.astype("string").str.strip().str.lower()
    prefill, decode = phase_kinds(labels)
    np.testing.assert_array_equal(prefill, (kind == "prefill").fillna(False))
    np.testing.assert_array_equal(decode, (kind == "decode").fillna(False))
