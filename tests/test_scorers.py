"""Phase-duration scorers: targets from the table, phase kinds, routing."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.linear_model import LinearRegression
from sklearn.metrics import (
    mean_absolute_percentage_error,
    median_absolute_error,
    r2_score,
)
from sklearn.model_selection import GridSearchCV, cross_val_score, cross_validate
from sklearn.pipeline import make_pipeline
from trace_factory import make_trace

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
)
from sklearn_beta.metrics import (
    get_scorer,
    get_scorer_names,
    make_phase_scorer,
    phase_durations,
    phase_scorers,
)
from sklearn_beta.model_selection import TraceBlockSplit

INST = "instance_id"


@pytest.fixture(scope="module")
def phases():
    return make_trace(300, n_instances=2, seed=31)


@pytest.fixture(scope="module")
def fitted(phases):
    return make_pipeline(
        PhaseExposureTransformer(columns={"instance_id": INST}),
        IterativeBetaRegressor(),
    ).fit(phases)


@pytest.fixture(scope="module")
def truth(phases, fitted):
    """Observed and predicted durations and the prefill mask, by hand."""
    observed = (phases.t_end - phases.t_start).to_numpy()
    predicted = fitted.predict(phases)
    return observed, predicted, (phases.phase_type == "prefill").to_numpy()


def test_names():
    assert get_scorer_names() == sorted(phase_scorers().scorers)
    assert {"duration_r2", "neg_duration_mape", "prefill_r2", "decode_r2"} <= set(
        get_scorer_names()
    )


def test_scores_match_hand_computation(phases, fitted, truth):
    observed, predicted, pre = truth
    expected = {
        "duration_r2": r2_score(observed, predicted),
        "prefill_r2": r2_score(observed[pre], predicted[pre]),
        "decode_r2": r2_score(observed[~pre], predicted[~pre]),
        "neg_duration_mape": -mean_absolute_percentage_error(observed, predicted),
        "neg_prefill_mape": -mean_absolute_percentage_error(
            observed[pre], predicted[pre]
        ),
        "neg_decode_mape": -mean_absolute_percentage_error(
            observed[~pre], predicted[~pre]
        ),
        "neg_duration_rmse": -np.sqrt(np.mean((observed - predicted) ** 2)),
        "neg_duration_mae": -np.mean(np.abs(observed - predicted)),
    }
    assert set(expected) == set(get_scorer_names())
    for name, value in expected.items():
        assert get_scorer(name)(fitted, phases) == pytest.approx(value, rel=1e-12)
    # The R^2 scorer agrees with the estimator's default score.
    assert get_scorer("duration_r2")(fitted, phases) == pytest.approx(
        fitted.score(phases), rel=1e-12
    )
    # Prefills are the hard part of this trace: the per-phase scores differ.
    assert expected["prefill_r2"] != pytest.approx(expected["decode_r2"], abs=0.05)


def test_explicit_y_wins(phases, fitted, truth):
    observed, predicted, _ = truth
    scorer = get_scorer("neg_duration_mape")
    assert scorer(fitted, phases, 2 * observed) == pytest.approx(
        -mean_absolute_percentage_error(2 * observed, predicted)
    )


def test_bare_regressor_on_exposure_table(phases, fitted):
    table = fitted[0].transform(phases)
    for name in get_scorer_names():
        assert get_scorer(name)(fitted[-1], table) == pytest.approx(
            get_scorer(name)(fitted, phases), rel=1e-12
        )


def test_other_estimators_need_y(phases, fitted):
    table = fitted[0].transform(phases)
    design, durations = table.iloc[:, :3], table["duration"]
    linear = LinearRegression().fit(design, durations)
    scorer = get_scorer("neg_duration_rmse")
    assert scorer(linear, design, durations) < 0
    with pytest.raises(ValueError, match="pass y"):
        scorer(linear, design)
    with pytest.raises(ValueError, match="is_prefill"):
        get_scorer("prefill_r2")(linear, design, durations)


def test_three_column_design_needs_y_and_kinds(phases, fitted):
    table = fitted[0].transform(phases)
    baseline = BaselineBetaRegressor().fit(table.iloc[:, :3], table["duration"])
    with pytest.raises(ValueError, match="duration"):
        get_scorer("duration_r2")(baseline, table.iloc[:, :3])
    assert get_scorer("duration_r2")(
        baseline, table.iloc[:, :3], table["duration"]
    ) == pytest.approx(baseline.score(table.iloc[:, :3], table["duration"]))
    with pytest.raises(ValueError, match="is_prefill"):
        get_scorer("decode_r2")(baseline, table.iloc[:, :3], table["duration"])


def test_no_phase_of_that_kind_is_nan_with_warning(phases, fitted):
    decodes = phases[phases.phase_type == "decode"]
    with pytest.warns(UndefinedMetricWarning, match="No prefill"):
        assert np.isnan(get_scorer("prefill_r2")(fitted, decodes))


def test_make_phase_scorer(phases, fitted, truth):
    observed, predicted, pre = truth
    scorer = make_phase_scorer(
        median_absolute_error, phase="decode", greater_is_better=False
    )
    assert scorer(fitted, phases) == pytest.approx(
        -median_absolute_error(observed[~pre], predicted[~pre])
    )
    assert "phase='decode'" in repr(scorer)
    with pytest.raises(ValueError, match="phase"):
        make_phase_scorer(r2_score, phase="both")


def test_get_scorer_falls_back_to_scikit_learn(phases, fitted):
    assert get_scorer("r2") is not None
    scorer = get_scorer("neg_duration_mape")
    assert get_scorer(scorer) is scorer
    with pytest.raises(ValueError, match="not a valid scoring"):
        get_scorer("no_such_score")
    # Fresh scorers: requesting weights on one does not touch another.
    weighted = get_scorer("duration_r2").set_score_request(sample_weight=True)
    assert get_scorer("duration_r2")._sample_weight_request is None
    assert weighted._sample_weight_request is True


def test_scorer_pickles(phases, fitted):
    scorer = pickle.loads(pickle.dumps(get_scorer("neg_prefill_mape")))
    assert scorer(fitted, phases) == get_scorer("neg_prefill_mape")(fitted, phases)


def _pipe():
    return make_pipeline(
        PhaseExposureTransformer(columns={"instance_id": INST}), BaselineBetaRegressor()
    )


def test_cross_val_score_without_y(phases):
    cv = TraceBlockSplit(3, columns={"instance_id": INST})
    scores = cross_val_score(
        _pipe(), phases, cv=cv, scoring=get_scorer("neg_duration_mape")
    )
    expected = []
    for train, test in cv.split(phases):
        model = _pipe().fit(phases.iloc[train])
        test_phases = phases.iloc[test]
        observed = (test_phases.t_end - test_phases.t_start).to_numpy()
        expected.append(
            -mean_absolute_percentage_error(observed, model.predict(test_phases))
        )
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_multimetric_grid_search_refits_on_a_named_score(phases):
    search = GridSearchCV(
        _pipe(),
        {"phaseexposuretransformer__correction_mode": ["end", "uniform"]},
        cv=TraceBlockSplit(3, columns={"instance_id": INST}),
        scoring=phase_scorers("duration_r2", "neg_duration_mape", "decode_r2"),
        refit="neg_duration_mape",
        error_score="raise",
    )
    search.fit(phases)
    results = search.cv_results_
    best = int(np.argmax(results["mean_test_neg_duration_mape"]))
    assert search.best_index_ == best
    for name in ("duration_r2", "neg_duration_mape", "decode_r2"):
        assert np.all(np.isfinite(results[f"mean_test_{name}"]))


def test_weighted_scoring_without_routing(phases, fitted, truth):
    observed, predicted, pre = truth
    w = np.where(pre, 3.0, 1.0)
    assert get_scorer("duration_r2")(fitted, phases, sample_weight=w) == pytest.approx(
        r2_score(observed, predicted, sample_weight=w)
    )
    assert get_scorer("neg_prefill_mape")(
        fitted, phases, sample_weight=w
    ) == pytest.approx(-mean_absolute_percentage_error(observed[pre], predicted[pre]))


def test_weighted_scoring_with_routing(routing, phases):
    weights = np.random.default_rng(1).uniform(0.5, 2.0, len(phases))
    scorer = get_scorer("neg_decode_mape").set_score_request(sample_weight=True)
    regressor = BaselineBetaRegressor().set_fit_request(sample_weight=True)
    cv = TraceBlockSplit(3, columns={"instance_id": INST})
    result = cross_validate(
        make_pipeline(
            PhaseExposureTransformer(columns={"instance_id": INST}), regressor
        ),
        phases,
        cv=cv,
        scoring=scorer,
        params={"sample_weight": weights},
    )
    expected = []
    for train, test in cv.split(phases):
        table = PhaseExposureTransformer(columns={"instance_id": INST}).fit_transform(
            phases.iloc[train]
        )
        model = BaselineBetaRegressor().fit(table, sample_weight=weights[train])
        test_table = PhaseExposureTransformer(
            columns={"instance_id": INST}
        ).fit_transform(phases.iloc[test])
        dec = test_table["is_prefill"].to_numpy() == 0
        expected.append(
            -mean_absolute_percentage_error(
                test_table["duration"][dec],
                model.predict(test_table)[dec],
                sample_weight=weights[test][dec],
            )
        )
    np.testing.assert_allclose(result["test_score"], expected, rtol=1e-12)


def test_phase_durations_helper(phases, fitted, truth):
    observed, predicted, pre = truth
    y_true, y_pred, is_prefill = phase_durations(fitted, phases)
    np.testing.assert_allclose(y_true, observed, rtol=1e-12)
    np.testing.assert_allclose(y_pred, predicted, rtol=1e-12)
    np.testing.assert_array_equal(is_prefill, pre)


def test_scorers_use_the_context_regressor_full_trace(phases):
    from sklearn_beta.model_selection import TraceContextRegressor

    model = TraceContextRegressor(_pipe(), trace=phases)
    train, test = next(TraceBlockSplit(3, columns={"instance_id": INST}).split(phases))
    model.fit(phases.iloc[train])
    full = model.exposures_
    observed = full["duration"].to_numpy()[test]
    predicted = model.predictions_[test]
    pre = full["is_prefill"].to_numpy()[test] == 1
    assert get_scorer("prefill_r2")(model, phases.iloc[test]) == pytest.approx(
        r2_score(observed[pre], predicted[pre]), rel=1e-12
    )
    assert get_scorer("duration_r2")(model, phases.iloc[test]) == pytest.approx(
        model.score(phases.iloc[test]), rel=1e-12
    )


def test_multimetric_scoring_predicts_once_per_fold(phases, monkeypatch):
    calls = []
    original = BaselineBetaRegressor.predict

    def counting(self, X):
        calls.append(len(X))
        return original(self, X)

    monkeypatch.setattr(BaselineBetaRegressor, "predict", counting)
    cross_validate(
        _pipe(),
        phases,
        cv=TraceBlockSplit(3, columns={"instance_id": INST}),
        scoring=phase_scorers(),
    )
    assert len(calls) == 3
