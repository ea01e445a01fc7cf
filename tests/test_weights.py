"""sample_weight: what a weight means, and how it travels through scikit-learn.

A weight multiplies a phase's row in the least-squares fit. It is *not* a copy
of the phase in the trace: a duplicated phase-table row would add its load to
the pressures of everything it overlaps (and the table validation rejects a
request with two prefill rows). The equivalence "integer weight == repeated
rows" therefore holds at the level of the NNLS rows: the exposure table for
the baseline, and each iteration's design for the iterative estimator, whose
timeline stays that of the trace.
"""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate
from sklearn.pipeline import make_pipeline
from trace_factory import make_trace

import sklearn_beta.core._fixed_point as fixed_point_module
import sklearn_beta.estimators._iterative as iterative_module
from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
)
from sklearn_beta.core._nnls import nnls_fit
from sklearn_beta.model_selection import TraceBlockSplit

INST = "instance_id"


@pytest.fixture(scope="module")
def phases():
    return make_trace(300, n_instances=3, seed=21)


@pytest.fixture(scope="module")
def table(phases):
    return PhaseExposureTransformer(columns={"instance_id": INST}).fit_transform(phases)


@pytest.fixture(scope="module")
def weights(phases):
    return np.random.default_rng(0).integers(0, 4, len(phases)).astype(float)


@pytest.fixture
def routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


def test_nnls_weights_equal_repeated_rows(table, weights):
    design = table.iloc[:, :3].to_numpy()
    target = table["duration"].to_numpy()
    repeat = weights.astype(int)
    np.testing.assert_allclose(
        nnls_fit(design, target, weights),
        nnls_fit(np.repeat(design, repeat, axis=0), np.repeat(target, repeat)),
        rtol=1e-10,
    )


def test_baseline_weights_equal_repeated_exposure_rows(table, weights):
    weighted = BaselineBetaRegressor().fit(table, sample_weight=weights)
    repeated = BaselineBetaRegressor().fit(table.loc[table.index.repeat(weights)])
    np.testing.assert_allclose(weighted.beta_, repeated.beta_, rtol=1e-10)
    assert weighted.diagnostics_["r2"] == pytest.approx(
        repeated.diagnostics_["r2"], rel=1e-10
    )
    assert weighted.score(table, sample_weight=weights) == pytest.approx(
        repeated.score(table.loc[table.index.repeat(weights)]), rel=1e-10
    )


def test_iterative_weights_equal_repeated_nnls_rows(table, weights, monkeypatch):
    # The duration objective: its NNLS sees the weights and nothing else.
    model = IterativeBetaRegressor(damping=0.5, max_iter=8, objective="duration")
    weighted = model.fit(table, sample_weight=weights).beta_.copy()
    n_weighted = model.n_iter_

    calls = []

    def repeated_rows(design, target, sample_weight=None):
        # Same timeline, each NNLS row repeated weight times, no weights.
        calls.append(sample_weight is not None)
        repeat = weights.astype(int)
        return nnls_fit(np.repeat(design, repeat, axis=0), np.repeat(target, repeat))

    for module in (iterative_module, fixed_point_module):
        monkeypatch.setattr(module, "nnls_fit", repeated_rows)
    repeated = model.fit(table).beta_
    assert calls and not any(calls)
    np.testing.assert_allclose(weighted, repeated, rtol=1e-9)
    assert model.n_iter_ == n_weighted


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_zero_weight_removes_rows_from_the_fit_not_from_the_trace():
    from sklearn_beta.datasets import simulate_trace

    phases = simulate_trace(
        450,
        beta=(5e-3, 2e-5, 1e-4),
        chunk_size=64,
        max_num_seqs=16,
        arrival_rate=12.0,
        prompt_tokens=(300, 0.6),
        output_tokens=(60, 0.6),
        n_instances=3,
        noise=0.05,
        random_state=0,
    )
    table = PhaseExposureTransformer(columns={"instance_id": INST}).fit_transform(
        phases
    )
    keep = (table["instance_id"] != 0).to_numpy()
    # The duration objective, compared iteration by iteration.
    duration = dict(damping=0.5, max_iter=15, objective="duration")
    masked = IterativeBetaRegressor(**duration)
    masked.fit(table, sample_weight=keep.astype(float))
    subset = IterativeBetaRegressor(**duration).fit(table[keep])
    # Instances are independent, so dropping instance 0 or weighting it 0 is
    # the same fit, iteration by iteration.
    np.testing.assert_allclose(masked.beta_, subset.beta_, rtol=1e-9)
    np.testing.assert_allclose(
        masked.history_["step"][1:], subset.history_["step"][1:], rtol=1e-7
    )
    # Within one instance, a zero weight keeps the phase's load: the fit
    # differs from dropping the rows from the trace.
    one = table[table["instance_id"] == 1]
    early = (one["t_start"] < one["t_start"].median()).to_numpy()
    weighted = IterativeBetaRegressor(**duration)
    weighted.fit(one, sample_weight=early.astype(float))
    dropped = IterativeBetaRegressor(**duration).fit(one[early])
    assert not np.allclose(weighted.beta_, dropped.beta_, rtol=1e-3)


@pytest.mark.parametrize("regressor", [BaselineBetaRegressor, IterativeBetaRegressor])
def test_weight_scale_does_not_matter(table, weights, regressor):
    a = regressor().fit(table, sample_weight=weights).beta_
    b = regressor().fit(table, sample_weight=7.5 * weights).beta_
    np.testing.assert_allclose(a, b, rtol=1e-9)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("negative", "Negative"),
        ("short", "shape"),
        ("zeros", "zero"),
    ],
)
def test_bad_weights_raise(table, bad, match):
    w = {
        "negative": -np.ones(len(table)),
        "short": np.ones(3),
        "zeros": np.zeros(len(table)),
    }[bad]
    with pytest.raises(ValueError, match=match):
        BaselineBetaRegressor().fit(table, sample_weight=w)


def _pipeline(regressor):
    return make_pipeline(
        PhaseExposureTransformer(columns={"instance_id": INST}), regressor
    )


@pytest.mark.parametrize("regressor", [BaselineBetaRegressor, IterativeBetaRegressor])
def test_pipeline_without_routing(phases, table, weights, regressor):
    step = regressor.__name__.lower()
    pipe = _pipeline(regressor()).fit(phases, **{f"{step}__sample_weight": weights})
    direct = regressor().fit(table, sample_weight=weights)
    np.testing.assert_allclose(pipe[-1].beta_, direct.beta_, rtol=1e-12)


@pytest.mark.parametrize("regressor", [BaselineBetaRegressor, IterativeBetaRegressor])
def test_pipeline_with_routing(routing, phases, table, weights, regressor):
    pipe = _pipeline(regressor().set_fit_request(sample_weight=True))
    pipe.fit(phases, sample_weight=weights)
    direct = regressor().fit(table, sample_weight=weights)
    np.testing.assert_allclose(pipe[-1].beta_, direct.beta_, rtol=1e-12)
    # Requested but not passed: fine. Not requested but passed: an error.
    _pipeline(regressor().set_fit_request(sample_weight=True)).fit(phases)
    with pytest.raises(ValueError, match="sample_weight"):
        _pipeline(regressor()).fit(phases, sample_weight=weights)


def _manual_cv(phases, weights, folds, score_weights):
    with sklearn.config_context(enable_metadata_routing=False):
        return _manual_folds(phases, weights, list(folds), score_weights)


def _manual_folds(phases, weights, folds, score_weights):
    scores, betas = [], []
    for train, test in folds:
        pipe = _pipeline(BaselineBetaRegressor())
        pipe.fit(
            phases.iloc[train], baselinebetaregressor__sample_weight=weights[train]
        )
        sw = weights[test] if score_weights else None
        scores.append(pipe.score(phases.iloc[test], sample_weight=sw))
        betas.append(pipe[-1].beta_)
    return np.array(scores), np.array(betas)


def test_cross_validate_without_routing(phases, weights):
    cv = TraceBlockSplit(3, columns={"instance_id": INST})
    result = cross_validate(
        _pipeline(BaselineBetaRegressor()),
        phases,
        cv=cv,
        params={"baselinebetaregressor__sample_weight": weights},
        return_estimator=True,
    )
    # Without routing, weights reach fit only; the score is unweighted.
    scores, betas = _manual_cv(phases, weights, cv.split(phases), False)
    np.testing.assert_allclose(result["test_score"], scores, rtol=1e-12)
    fitted = np.array([est[-1].beta_ for est in result["estimator"]])
    np.testing.assert_allclose(fitted, betas, rtol=1e-12)


def test_cross_validate_with_routing(routing, phases, weights):
    regressor = BaselineBetaRegressor().set_fit_request(sample_weight=True)
    regressor.set_score_request(sample_weight=True)
    groups = phases[INST].to_numpy()
    result = cross_validate(
        _pipeline(regressor),
        phases,
        cv=GroupKFold(n_splits=3),
        params={"sample_weight": weights, "groups": groups},
    )
    folds = GroupKFold(n_splits=3).split(phases, groups=groups)
    scores, _ = _manual_cv(phases, weights, folds, True)
    np.testing.assert_allclose(result["test_score"], scores, rtol=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_grid_search_with_routing(routing, phases, weights):
    # The default scorer forwards every metadata to the pipeline's score, so
    # the regressor must request the weights there too (False is an error).
    regressor = IterativeBetaRegressor(damping=0.5).set_fit_request(sample_weight=True)
    regressor.set_score_request(sample_weight=True)
    search = GridSearchCV(
        _pipeline(regressor),
        {"iterativebetaregressor__damping": [0.5, 0.8]},
        cv=TraceBlockSplit(3),
        error_score="raise",
    )
    search.fit(phases, sample_weight=weights, groups=phases[INST])
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    best = search.best_estimator_[-1]
    direct = IterativeBetaRegressor(damping=best.damping)
    table = PhaseExposureTransformer(columns={"instance_id": INST}).fit_transform(
        phases
    )
    np.testing.assert_allclose(
        best.beta_, direct.fit(table, sample_weight=weights).beta_, rtol=1e-12
    )


def test_grid_search_without_routing(phases, weights):
    search = GridSearchCV(
        _pipeline(BaselineBetaRegressor()),
        {"phaseexposuretransformer__chunk_size": [32, 64]},
        cv=TraceBlockSplit(3),
        error_score="raise",
    )
    search.fit(
        phases,
        groups=phases[INST],
        baselinebetaregressor__sample_weight=weights,
    )
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_context_regressor_weights_without_routing(phases, weights):
    from sklearn_beta.model_selection import TraceContextRegressor

    model = TraceContextRegressor(_pipeline(BaselineBetaRegressor()), trace=phases)
    cv = TraceBlockSplit(3, columns={"instance_id": INST})
    search = GridSearchCV(
        model,
        {"estimator__phaseexposuretransformer__correction_mode": ["end", "none"]},
        cv=cv,
        error_score="raise",
    ).fit(phases, sample_weight=weights)
    train, _ = next(cv.split(phases))
    fold = TraceContextRegressor(_pipeline(BaselineBetaRegressor()), trace=phases)
    fold.fit(phases.iloc[train], sample_weight=weights[train])
    table = PhaseExposureTransformer(columns={"instance_id": INST}).fit_transform(
        phases
    )
    masked = np.zeros(len(phases))
    masked[train] = weights[train]
    direct = BaselineBetaRegressor().fit(table, sample_weight=masked)
    np.testing.assert_allclose(fold.beta_, direct.beta_, rtol=1e-12)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
