"""TraceBlockSplit, GroupKFold over instances, and what each split does to exposures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    KFold,
    cross_val_score,
    cross_validate,
)
from sklearn.pipeline import make_pipeline
from trace_factory import make_trace

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
)
from sklearn_beta.exceptions import UncertaintyWarning
from sklearn_beta.model_selection import (
    TraceBlockSplit,
    TraceContextRegressor,
    complete_context_mask,
)

INST = "instance_id"


@pytest.fixture(scope="module")
def fleet():
    return make_trace(600, n_instances=2, seed=1, decode_median=15)


def exposures(phases, idx=None):
    transformer = PhaseExposureTransformer(columns={"instance_id": INST})
    subset = phases if idx is None else phases.iloc[idx]
    return transformer.fit_transform(subset)[
        ["prefill_exposure", "decode_exposure"]
    ].to_numpy()


def relative_error(sub, full):
    return np.abs(sub - full) / np.maximum(np.abs(full), 1e-9)


def test_kfold_exposures_differ_materially_from_full_trace(fleet):
    full = exposures(fleet)
    for _, test in KFold(5, shuffle=True, random_state=0).split(fleet):
        err = relative_error(exposures(fleet, test), full[test])
        # A random fifth of the rows sees about a fifth of the real pressure.
        assert np.median(err) > 0.5
        assert not complete_context_mask(
            fleet, test, columns={"instance_id": INST}
        ).any()


def test_block_split_exposures_equal_full_trace_away_from_edges(fleet):
    full = exposures(fleet)
    cv = TraceBlockSplit(5, columns={"instance_id": INST})
    n_complete = 0
    for train, test in cv.split(fleet):
        for idx in (test, train):
            complete = complete_context_mask(fleet, idx, columns={"instance_id": INST})
            sub = exposures(fleet, idx)
            np.testing.assert_allclose(sub[complete], full[idx][complete], rtol=1e-11)
            n_complete += complete.sum()
        test_complete = complete_context_mask(
            fleet, test, columns={"instance_id": INST}
        )
        assert test_complete.mean() > 0.5
    # Only the edges differ: most phases of every fold are exact.
    assert n_complete > 0.6 * len(fleet) * 2


@pytest.mark.parametrize("mode", ["end", "end_inside", "uniform", "none"])
def test_complete_context_mask_is_exact_for_every_correction_mode(fleet, mode):
    transformer = PhaseExposureTransformer(
        correction_mode=mode, columns={"instance_id": INST}
    )
    full = transformer.fit_transform(fleet).to_numpy()[:, 1:3]
    for _, test in TraceBlockSplit(3, columns={"instance_id": INST}).split(fleet):
        complete = complete_context_mask(fleet, test, columns={"instance_id": INST})
        sub = transformer.fit_transform(fleet.iloc[test]).to_numpy()[:, 1:3]
        np.testing.assert_allclose(sub[complete], full[test][complete], rtol=1e-11)


def test_group_kfold_over_instances_is_exact():
    phases = make_trace(400, n_instances=4, seed=3)
    full = exposures(phases)
    for _, test in GroupKFold(n_splits=2).split(phases, groups=phases[INST]):
        assert complete_context_mask(phases, test, columns={"instance_id": INST}).all()
        np.testing.assert_allclose(exposures(phases, test), full[test], rtol=1e-11)


def test_folds_partition_requests_and_purge_overlaps(fleet):
    gap = 0.3
    seen = np.zeros(len(fleet), dtype=int)
    request = fleet["request_id"].to_numpy()
    for train, test in TraceBlockSplit(4, gap=gap, columns={"instance_id": INST}).split(
        fleet
    ):
        seen[test] += 1
        assert np.intersect1d(train, test).size == 0
        # Both phases of a request are on the same side (or both dropped).
        for idx in (train, test):
            assert pd.Series(request[idx]).value_counts().eq(2).all()
        for inst, rows in fleet.iloc[test].groupby(INST):
            lo, hi = rows["t_start"].min() - gap, rows["t_end"].max() + gap
            others = fleet.iloc[train]
            others = others[others[INST] == inst]
            assert ((others["t_end"] < lo) | (others["t_start"] > hi)).all()
    np.testing.assert_array_equal(seen, 1)


def test_blocks_are_contiguous_in_time_per_instance(fleet):
    starts = fleet.groupby("request_id")["t_start"].min()
    spans = []
    for _, test in TraceBlockSplit(4, columns={"instance_id": INST}).split(fleet):
        rows = fleet.iloc[test]
        spans.append(
            rows.groupby(INST)["request_id"].agg(
                lambda ids: (starts[ids].min(), starts[ids].max())
            )
        )
    for inst in fleet[INST].unique():
        bounds = [span[inst] for span in spans]
        for (_, hi), (lo, _) in zip(bounds[:-1], bounds[1:], strict=True):
            assert hi < lo


def test_larger_gap_trains_on_a_subset():
    phases = make_trace(300, seed=2, decode_median=15, instance_col=None)
    small = list(TraceBlockSplit(3, gap=0.0).split(phases))
    large = list(TraceBlockSplit(3, gap=1.0).split(phases))
    for (train_s, test_s), (train_l, test_l) in zip(small, large, strict=True):
        np.testing.assert_array_equal(test_s, test_l)
        assert set(train_l) < set(train_s)


def test_groups_override_instance_column(fleet):
    renamed = fleet.assign(node=fleet[INST].map({0: "b", 1: "a"}))
    by_col = list(TraceBlockSplit(3, columns={"instance_id": INST}).split(fleet))
    by_groups = list(TraceBlockSplit(3).split(renamed, groups=renamed["node"]))
    for (a_train, a_test), (b_train, b_test) in zip(by_col, by_groups, strict=True):
        np.testing.assert_array_equal(a_train, b_train)
        np.testing.assert_array_equal(a_test, b_test)


def test_epoch_timestamps_split_like_shifted_ones(fleet):
    epoch = fleet.assign(t_start=fleet.t_start + 1.7e9, t_end=fleet.t_end + 1.7e9)
    for (a_tr, a_te), (b_tr, b_te) in zip(
        TraceBlockSplit(3, columns={"instance_id": INST}).split(fleet),
        TraceBlockSplit(3, columns={"instance_id": INST}).split(epoch),
        strict=True,
    ):
        np.testing.assert_array_equal(a_te, b_te)
        np.testing.assert_array_equal(a_tr, b_tr)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_splits": 1}, "n_splits"),
        ({"n_splits": 2.5}, "n_splits"),
        ({"gap": -1.0}, "gap"),
        ({"gap": float("inf")}, "gap"),
        ({"columns": {"instance_id": "node"}}, "missing column"),
    ],
)
def test_bad_parameters_are_named(fleet, kwargs, match):
    with pytest.raises(ValueError, match=match):
        next(TraceBlockSplit(**kwargs).split(fleet))


def test_bad_tables_are_rejected(fleet):
    with pytest.raises(TypeError, match="DataFrame"):
        next(TraceBlockSplit().split(fleet.to_numpy()))
    crossing = fleet.copy()
    crossing.loc[1, INST] = 1 - crossing.loc[0, INST]
    with pytest.raises(ValueError, match="one instance"):
        next(TraceBlockSplit(columns={"instance_id": INST}).split(crossing))
    with pytest.raises(ValueError, match="groups has"):
        next(TraceBlockSplit().split(fleet, groups=[0, 1]))
    tiny = make_trace(3, instance_col=None)
    with pytest.raises(ValueError, match="has no test phases: 3 request"):
        next(TraceBlockSplit(4).split(tiny))
    one_long = make_trace(2, instance_col=None)
    one_long.loc[1, "t_end"] = 1e6
    with pytest.raises(ValueError, match="no training"):
        next(TraceBlockSplit(2).split(one_long))


def test_repr_and_n_splits():
    cv = TraceBlockSplit(4, gap=0.5, columns={"instance_id": INST})
    assert cv.get_n_splits() == 4
    assert "gap=0.5" in repr(cv)


def _pipeline(regressor=None):
    return make_pipeline(
        PhaseExposureTransformer(columns={"instance_id": INST}),
        regressor if regressor is not None else BaselineBetaRegressor(),
    )


@pytest.mark.parametrize(
    "cv",
    [TraceBlockSplit(3, columns={"instance_id": INST}), GroupKFold(n_splits=2)],
    ids=["blocks", "group-kfold"],
)
def test_cross_val_score_routes_groups_without_routing(cv):
    phases = make_trace(400, n_instances=4, seed=5)
    scores = cross_val_score(_pipeline(), phases, groups=phases[INST], cv=cv)
    assert scores.shape == (cv.get_n_splits(),)
    assert np.all(np.isfinite(scores))


@pytest.mark.parametrize(
    "cv",
    [TraceBlockSplit(3), GroupKFold(n_splits=2)],
    ids=["blocks", "group-kfold"],
)
def test_cross_validate_routes_groups_with_routing(routing, cv):
    phases = make_trace(400, n_instances=4, seed=5)
    result = cross_validate(_pipeline(), phases, cv=cv, params={"groups": phases[INST]})
    expected = cross_validate(
        _pipeline(),
        phases,
        cv=list(cv.split(phases, groups=phases[INST])),
    )
    np.testing.assert_allclose(result["test_score"], expected["test_score"])


def test_grid_search_over_chunk_size_and_damping():
    phases = make_trace(300, n_instances=3, seed=6)
    search = GridSearchCV(
        # damping is a parameter of the reference's duration objective.
        _pipeline(IterativeBetaRegressor(max_iter=10, objective="duration")),
        {
            "phaseexposuretransformer__chunk_size": [32, 64],
            "iterativebetaregressor__damping": [0.5, 1.0],
        },
        cv=TraceBlockSplit(3, columns={"instance_id": INST}),
    )
    # ConvergenceWarning allowed, and the UncertaintyWarning of betas fitted
    # on 100-request folds; nothing else.
    with pytest.warns() as record:
        search.fit(phases)
    assert all(
        "converge" in str(w.message) or w.category is UncertaintyWarning for w in record
    )
    assert len(search.cv_results_["mean_test_score"]) == 4
    assert set(search.best_params_) == {
        "phaseexposuretransformer__chunk_size",
        "iterativebetaregressor__damping",
    }


# --- TraceContextRegressor: full-trace exposures inside cross-validation ---


@pytest.mark.parametrize("regressor", [BaselineBetaRegressor, IterativeBetaRegressor])
def test_context_regressor_scores_every_test_phase_in_full_context(fleet, regressor):
    full_table = PhaseExposureTransformer(columns={"instance_id": INST}).fit_transform(
        fleet
    )
    model = TraceContextRegressor(_pipeline(regressor()), trace=fleet)
    for train, test in TraceBlockSplit(4, columns={"instance_id": INST}).split(fleet):
        model.fit(fleet.iloc[train])
        # Every test phase, edges included, has its full-trace exposures.
        np.testing.assert_array_equal(
            model.exposures(fleet.iloc[test]).to_numpy(),
            full_table.iloc[test].to_numpy(),
        )
        weight = np.zeros(len(fleet))
        weight[train] = 1.0
        direct = clone(model.estimator[-1]).fit(full_table, sample_weight=weight)
        np.testing.assert_allclose(model.beta_, direct.beta_, rtol=1e-12)
        np.testing.assert_allclose(
            model.predict(fleet.iloc[test]),
            direct.predict(full_table)[test],
            rtol=1e-12,
        )


def _shrink(phases, rows, factor=0.9, tokens=2):
    """Test phases made shorter and given other token counts."""
    out = phases.copy()
    idx = out.index[rows]
    out.loc[idx, "t_end"] = out.t_start[idx] + factor * (
        out.t_end[idx] - out.t_start[idx]
    )
    out.loc[idx, "prefill_tokens"] *= tokens
    out.loc[idx, "decode_tokens"] *= tokens
    return out


@pytest.mark.parametrize("regressor", [BaselineBetaRegressor, IterativeBetaRegressor])
def test_context_regressor_does_not_leak_test_phases_with_block_split(fleet, regressor):
    for train, test in TraceBlockSplit(3, columns={"instance_id": INST}).split(fleet):
        a = TraceContextRegressor(_pipeline(regressor()), trace=fleet)
        changed = _shrink(fleet, test)
        b = TraceContextRegressor(_pipeline(regressor()), trace=changed)
        a.fit(fleet.iloc[train])
        b.fit(changed.iloc[train])
        np.testing.assert_allclose(a.beta_, b.beta_, rtol=1e-9)


def test_context_regressor_with_random_rows_would_leak(fleet):
    train, test = next(KFold(3, shuffle=True, random_state=0).split(fleet))
    a = TraceContextRegressor(_pipeline(), trace=fleet).fit(fleet.iloc[train])
    changed = _shrink(fleet, test)
    b = TraceContextRegressor(_pipeline(), trace=changed).fit(changed.iloc[train])
    # The training rows carry the pressure of the changed test phases.
    moved = np.abs(a.beta_ - b.beta_) / np.where(a.beta_ > 0, a.beta_, 1.0)
    assert moved.max() > 0.01


def test_context_matches_group_kfold_scores():
    phases = make_trace(400, n_instances=4, seed=8)
    context = TraceContextRegressor(_pipeline(), trace=phases)
    blocks = cross_val_score(
        context, phases, cv=GroupKFold(n_splits=2), groups=phases[INST]
    )
    plain = cross_val_score(
        _pipeline(), phases, cv=GroupKFold(n_splits=2), groups=phases[INST]
    )
    # Whole instances: the plain pipeline already has full context.
    np.testing.assert_allclose(blocks, plain, rtol=1e-10)


def test_context_regressor_in_grid_search_with_weights(routing, fleet):
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(fleet))
    model = TraceContextRegressor(
        _pipeline(IterativeBetaRegressor(max_iter=50)), trace=fleet
    ).set_fit_request(sample_weight=True)
    model.set_score_request(sample_weight=True)
    search = GridSearchCV(
        model,
        {"estimator__iterativebetaregressor__damping": [0.5, 1.0]},
        cv=TraceBlockSplit(3, columns={"instance_id": INST}),
        error_score="raise",
    )
    search.fit(fleet, sample_weight=weights)
    best = search.best_estimator_
    table = PhaseExposureTransformer(columns={"instance_id": INST}).fit_transform(fleet)
    direct = IterativeBetaRegressor(
        max_iter=50, damping=best.estimator[-1].damping
    ).fit(table, sample_weight=weights)
    np.testing.assert_allclose(best.beta_, direct.beta_, rtol=1e-12)


def test_context_regressor_errors(fleet):
    model = TraceContextRegressor(_pipeline(), trace=fleet)
    with pytest.raises(ValueError, match="y"):
        model.fit(fleet, y=np.ones(len(fleet)))
    with pytest.raises(TypeError, match="DataFrame"):
        model.fit(fleet.to_numpy())
    with pytest.raises(ValueError, match="not in trace"):
        model.fit(fleet.set_axis(fleet.index + 10_000))
    bare = TraceContextRegressor(BaselineBetaRegressor(), trace=fleet)
    with pytest.raises(TypeError, match="Pipeline"):
        bare.fit(fleet)
    doubled = TraceContextRegressor(_pipeline(), trace=pd.concat([fleet, fleet]))
    with pytest.raises(ValueError, match="unique index"):
        doubled.fit(fleet)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("split", ["blocks-in-context", "blocks", "group-kfold"])
def test_grid_search_on_simulated_fleet_finds_the_chunk_size(split):
    from sklearn_beta.datasets import simulate_trace
    from sklearn_beta.metrics import phase_scorers

    phases = simulate_trace(
        450,
        beta=(5e-3, 2e-5, 1e-4),
        chunk_size=64,
        max_num_seqs=16,
        arrival_rate=12.0,
        prompt_tokens=(300, 0.6),
        output_tokens=(60, 0.6),
        n_instances=3,
        random_state=0,
    )
    model = _pipeline(IterativeBetaRegressor())
    prefix = ""
    cv = TraceBlockSplit(3, columns={"instance_id": INST})
    if split == "blocks-in-context":
        model, prefix = TraceContextRegressor(model, trace=phases), "estimator__"
    elif split == "group-kfold":
        cv = GroupKFold(n_splits=3)
    search = GridSearchCV(
        model,
        {
            f"{prefix}phaseexposuretransformer__chunk_size": [32, 64, 128],
            f"{prefix}iterativebetaregressor__damping": [0.5, 1.0],
        },
        cv=cv,
        scoring=phase_scorers("duration_r2", "neg_duration_mape"),
        refit="neg_duration_mape",
        error_score="raise",
    ).fit(phases, groups=phases[INST])
    assert search.best_params_[f"{prefix}phaseexposuretransformer__chunk_size"] == 64
    best = search.best_estimator_
    beta = best.beta_ if prefix else best[-1].beta_
    np.testing.assert_allclose(beta, (5e-3, 2e-5, 1e-4), rtol=0.02)
