"""Every warning of a fit points at the user's line, whatever the call path.

:func:`sklearn_beta.core._warnings.warn` walks the stack past this package
and scikit-learn instead of counting frames, so the same warning raised from
an estimator, a pipeline, a cross-validation or the functional API names the
line of this file that started it.
"""

from __future__ import annotations

import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    IterativeBetaRegressor,
    PhaseExposureTransformer,
    estimate_betas_iterative,
)
from sklearn_beta.core._warnings import caller_stacklevel, warn


def _not_converging(published_sample):
    return make_pipeline(PhaseExposureTransformer(), IterativeBetaRegressor(max_iter=1))


def _convergence_records(record):
    return [w for w in record if issubclass(w.category, ConvergenceWarning)]


def test_pipeline_fit_warns_at_the_callers_line(published_sample):
    with pytest.warns(ConvergenceWarning) as record:
        _not_converging(published_sample).fit(published_sample)
    assert {w.filename for w in _convergence_records(record)} == {__file__}


def test_cross_validation_warns_at_the_callers_line(published_sample):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cross_val_score(_not_converging(published_sample), published_sample, cv=2)
    caught = _convergence_records(record)
    assert caught and {w.filename for w in caught} == {__file__}


def test_functional_api_warns_at_the_callers_line(published_sample):
    with pytest.warns(ConvergenceWarning) as record:
        estimate_betas_iterative(published_sample, chunk_size=64, max_outer_iters=1)
    assert {w.filename for w in _convergence_records(record)} == {__file__}


def test_warn_outside_the_package_is_its_callers_line():
    # Called from a test (outside the package), the level is the direct caller.
    def helper():
        return caller_stacklevel()

    assert helper() == 2
    with pytest.warns(UserWarning, match="here") as record:
        warn("here")
    assert record[0].filename == __file__
