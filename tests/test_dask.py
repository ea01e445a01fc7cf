"""The estimators on a Dask DataFrame equal the pandas fit of the same rows."""

from __future__ import annotations

import glob
import json
import re
import warnings

import dask.dataframe as dd
import distributed
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline

from sklearn_beta import (
    BaselineBetaRegressor,
    IterativeBetaRegressor,
    PhaseExposureTransformer,
)
from sklearn_beta.datasets import cut_window, simulate_trace
from sklearn_beta.exceptions import UncertaintyWarning

BETA = (5e-3, 2e-5, 1e-4)
RTOL = 1e-9

# Every setting: the distributed fit's betas, intervals and diagnostics are
# the pandas fit's (edges="auto" is tested on windows below).
REGRESSORS = [
    BaselineBetaRegressor(),
    IterativeBetaRegressor(),
    IterativeBetaRegressor(edges="fit"),
    IterativeBetaRegressor(objective="duration"),
    IterativeBetaRegressor(
        "beta_informed", objective="duration", stopping="absolute", damping=0.7
    ),
]


@pytest.fixture(scope="module")
def windows() -> pd.DataFrame:
    """Two engines' windows cut from busy serving: edges with missing load."""
    parts = []
    for instance, how in enumerate(("arrival", "completion")):
        phases = simulate_trace(
            3000,
            beta=BETA,
            chunk_size=64,
            max_num_seqs=64,
            arrival_rate=24.0,
            prompt_tokens=(300, 0.6),
            output_tokens=(100, 0.8),
            noise=0.05,
            random_state=instance,
        )
        times = phases.groupby("request_id")["t_start" if how == "arrival" else "t_end"]
        per_request = times.min() if how == "arrival" else times.max()
        t0, t1 = per_request.quantile([0.3, 0.7])
        window = cut_window(phases, t0, t1, how=how)
        parts.append(
            window.assign(
                instance_id=instance,
                request_id=window["request_id"].astype(str) + f"-{instance}",
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_edges_auto_on_windows_equals_pandas(client, windows):
    # The second engine in the first partition: per-instance results must
    # come back in the fleet's order, not the partitions'.
    ddf = dd.concat(
        [
            dd.from_pandas(group, npartitions=1)
            for _, group in reversed(list(windows.groupby("instance_id")))
        ]
    )
    regressor = IterativeBetaRegressor()
    local = _fit_quietly(_model(regressor), windows)[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        remote = _model(regressor).fit(ddf)[-1]
    edges, expected = remote.diagnostics_["edges"], local.diagnostics_["edges"]
    # Both windows have incomplete edges: their phases are left as context.
    assert edges["n_context"] == expected["n_context"] > 0
    assert edges["limit"] == pytest.approx(expected["limit"], rel=RTOL)
    for key in ("start_bias", "end_bias"):
        np.testing.assert_allclose(edges[key], expected[key], rtol=RTOL)
    np.testing.assert_allclose(remote.beta_, local.beta_, rtol=RTOL)
    np.testing.assert_allclose(remote.beta_ci_, local.beta_ci_, rtol=RTOL)
    assert remote.n_iter_ == local.n_iter_
    for key in ("condition_number", "r2"):
        assert remote.diagnostics_[key] == pytest.approx(
            local.diagnostics_[key], rel=RTOL
        )
    assert remote.diagnostics_["not_identified"] == local.diagnostics_["not_identified"]
    # The edge treatment is what recovers the betas of a window.
    np.testing.assert_allclose(remote.beta_, BETA, rtol=0.02)
    every_phase = _fit_quietly(_model(IterativeBetaRegressor(edges="fit")), ddf)
    assert np.max(np.abs(every_phase[-1].beta_ / BETA - 1)) > 0.02


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, processes=False, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def fleet() -> pd.DataFrame:
    return simulate_trace(
        1500,
        beta=BETA,
        chunk_size=64,
        max_num_seqs=32,
        arrival_rate=40.0,
        noise=0.05,
        n_instances=4,
        random_state=0,
    )


def _model(regressor):
    return make_pipeline(
        PhaseExposureTransformer(chunk_size=64, columns={"instance_id": "instance_id"}),
        type(regressor)(**regressor.get_params()),
    )


def _fit_quietly(model, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return model.fit(X)


@pytest.mark.parametrize("regressor", REGRESSORS, ids=lambda r: repr(r))
def test_dask_fit_equals_pandas_fit(client, fleet, regressor):
    # Sorted by instance then cut into 3 partitions: instances straddle
    # partitions, so the transformer must shuffle them whole.
    ddf = dd.from_pandas(fleet.sort_values("instance_id"), npartitions=3)
    local = _fit_quietly(_model(regressor), fleet)
    remote = _fit_quietly(_model(regressor), ddf)
    np.testing.assert_allclose(remote[-1].beta_, local[-1].beta_, rtol=RTOL)
    # Both fits recover the simulator's betas (the baseline with its known
    # bias under load): they are not both wrong.
    recovery = 0.2 if isinstance(regressor, BaselineBetaRegressor) else 0.02
    np.testing.assert_allclose(remote[-1].beta_, BETA, rtol=recovery)
    for key in ("r2", "rmse_seconds", "mean_A_pf_tokens", "condition_number"):
        assert remote[-1].diagnostics_[key] == pytest.approx(
            local[-1].diagnostics_[key], rel=RTOL
        )
    for key in ("not_identified", "at_zero_bound"):
        assert remote[-1].diagnostics_[key] == local[-1].diagnostics_[key]
    assert remote[-1].diagnostics_["n_phases"] == len(fleet)
    # The time-block sandwich from per-partition sums: the pandas intervals.
    np.testing.assert_allclose(remote[-1].beta_ci_, local[-1].beta_ci_, rtol=RTOL)
    lower, upper = remote[-1].beta_ci_.T
    assert np.all((lower < remote[-1].beta_) & (remote[-1].beta_ < upper))
    if isinstance(regressor, IterativeBetaRegressor):
        assert remote[-1].n_iter_ == local[-1].n_iter_
        assert remote[-1].time_scale_ == local[-1].time_scale_
        cols = ["beta0", "beta1", "beta2", "r2", "rmse_seconds"]
        np.testing.assert_allclose(
            remote[-1].history_[cols].to_numpy(),
            local[-1].history_[cols].to_numpy(),
            rtol=RTOL,
        )
    predicted = remote.predict(ddf)
    assert isinstance(predicted, dd.Series)
    np.testing.assert_allclose(
        predicted.compute().reindex(fleet.index).to_numpy(),
        local.predict(fleet),
        rtol=RTOL,
    )
    assert remote.score(ddf) == pytest.approx(local.score(fleet), rel=RTOL)


def test_dask_exposure_table_is_the_pandas_one(client, fleet):
    # Instances straddle the partitions, and a partition's own instance codes
    # (0, 1, ... within it) become the fleet's.
    ddf = dd.from_pandas(fleet.sort_values("instance_id"), npartitions=3)
    transformer = _model(BaselineBetaRegressor())[0]
    local = transformer.fit_transform(fleet)
    remote = transformer.fit_transform(ddf).compute().loc[local.index]
    assert sorted(remote["instance_id"].unique()) == [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_allclose(remote.to_numpy(), local.to_numpy(), rtol=RTOL)


def test_partitions_holding_whole_instances_are_kept(client, fleet):
    from sklearn_beta.fleet import whole_instances

    by_instance = [g for _, g in fleet.groupby("instance_id")]
    ddf = dd.from_pandas(fleet, npartitions=1)
    ddf = dd.concat([dd.from_pandas(g, npartitions=1) for g in by_instance])
    assert whole_instances(ddf, "instance_id") is ddf
    split = dd.from_pandas(fleet.sort_values("instance_id"), npartitions=3)
    shuffled = whole_instances(split, "instance_id")
    parts = [p["instance_id"].unique() for p in shuffled.to_delayed()]
    import dask

    seen = np.concatenate(dask.compute(*parts))
    assert sorted(seen) == sorted(fleet["instance_id"].unique())


def test_y_is_read_on_the_workers(client, fleet):
    ddf = dd.from_pandas(fleet, npartitions=2)
    model = _model(BaselineBetaRegressor())
    table = model[0].fit_transform(ddf)
    with pytest.raises(TypeError, match="must be None"):
        model[-1].fit(table, y=np.ones(len(fleet)))


def test_missing_column_is_named(client, fleet):
    ddf = dd.from_pandas(fleet.drop(columns="decode_tokens"), npartitions=2)
    with pytest.raises(ValueError, match="decode_tokens"):
        _model(BaselineBetaRegressor()).fit(ddf)


@pytest.mark.parametrize("objective", ["step_count", "duration"])
def test_worker_lost_between_iterations_changes_nothing(fleet, objective, monkeypatch):
    import sklearn_beta.estimators._fit as fit_module

    regressor = IterativeBetaRegressor(objective=objective, edges="fit", verbose=1)
    local = _fit_quietly(_model(regressor), fleet)
    lost = []
    with (
        distributed.LocalCluster(
            n_workers=2, processes=False, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):

        def close_a_worker(record, unit=1.0):
            # Between iterations 2 and 3 a worker goes, with the timelines
            # (and lagged passes) it held; they must be rebuilt elsewhere.
            if record["iteration"] == 2:
                worker = next(iter(cluster.workers.values()))
                lost.append(len(worker.data))
                cluster.sync(worker.close)

        monkeypatch.setattr(fit_module, "print_progress", close_a_worker)
        ddf = dd.from_pandas(fleet.sort_values("instance_id"), npartitions=4)
        remote = _fit_quietly(_model(regressor), ddf)
        assert len(client.scheduler_info()["workers"]) == 1
    assert lost and lost[0] > 0
    np.testing.assert_allclose(remote[-1].beta_, local[-1].beta_, rtol=RTOL)
    assert remote[-1].n_iter_ == local[-1].n_iter_ > 2


def test_read_phases_dask_directory_and_glob(client, fleet, tmp_path):
    from sklearn_beta.fleet import expand_trace_paths, read_phases_dask

    for instance, group in fleet.groupby("instance_id"):
        group.to_parquet(tmp_path / f"engine-{instance}.parquet")
    (tmp_path / "notes.txt").write_text("not a trace")
    assert len(expand_trace_paths(tmp_path)) == fleet["instance_id"].nunique()
    by_glob = read_phases_dask(str(tmp_path / "engine-*.parquet"), blocksize=None)
    by_dir = read_phases_dask(tmp_path, blocksize=None)
    assert by_dir.npartitions == by_glob.npartitions == 4
    model = _fit_quietly(_model(IterativeBetaRegressor(edges="fit")), by_glob)
    local = _fit_quietly(_model(IterativeBetaRegressor(edges="fit")), fleet)
    np.testing.assert_allclose(model[-1].beta_, local[-1].beta_, rtol=RTOL)
    with pytest.raises(ValueError, match="No trace file"):
        read_phases_dask(tmp_path / "*.csv")
    fleet.head(10).to_csv(tmp_path / "extra.csv")
    with pytest.raises(ValueError, match="mixes CSV and Parquet"):
        read_phases_dask(tmp_path)


def test_connect_names_a_bad_address():
    from sklearn_beta.fleet import connect

    with pytest.raises(ValueError, match="scheduler address"):
        connect("localhost")


def test_renamed_instance_column_and_auto_resolution(client, fleet):
    # The instance column under another name, named through columns=, and the
    # auto time resolution taken over the whole trace, not per partition.
    renamed = fleet.rename(columns={"instance_id": "engine"})
    ddf = dd.from_pandas(renamed.sort_values("engine"), npartitions=3)

    def model():
        return make_pipeline(
            PhaseExposureTransformer(
                chunk_size=64, columns={"instance_id": "engine"}, time_resolution="auto"
            ),
            IterativeBetaRegressor(edges="fit"),
        )

    local = _fit_quietly(model(), renamed)
    remote = _fit_quietly(model(), ddf)
    np.testing.assert_allclose(remote[-1].beta_, local[-1].beta_, rtol=RTOL)
    np.testing.assert_allclose(remote[-1].beta_, BETA, rtol=0.02)


def test_not_converged_warns_like_pandas(client, fleet):
    from sklearn.exceptions import ConvergenceWarning

    ddf = dd.from_pandas(fleet, npartitions=2)
    regressor = IterativeBetaRegressor(objective="duration", max_iter=2)
    with pytest.warns(ConvergenceWarning) as local:
        _model(regressor).fit(fleet)
    with pytest.warns(ConvergenceWarning) as remote:
        _model(regressor).fit(ddf)
    (local,) = [w for w in local if w.category is ConvergenceWarning]
    (remote,) = [w for w in remote if w.category is ConvergenceWarning]
    assert "did not converge in max_iter=2" in str(remote.message)
    # The same words; the last change agrees to the 3 digits shown.
    assert str(remote.message) == str(local.message)


class _InMemory:
    """Partitions held in this process: each block function, then the reduction."""

    def __init__(self, items):
        self.items = items

    def map(self, fn, *args):
        from sklearn_beta.distributed._blocks import combine_stats

        return combine_stats([fn(item, *args) for item in self.items])


def _duration_tables(durations, n_parts):
    from sklearn_beta.core._schema import EXPOSURE_COLUMNS

    tables = []
    for part in np.array_split(durations, n_parts):
        table = pd.DataFrame(0.0, index=range(len(part)), columns=EXPOSURE_COLUMNS)
        table["t_start"] = 10.0
        table["t_end"] = 10.0 + part
        tables.append(table)
    return tables


@pytest.mark.parametrize(
    "durations",
    [
        # Continuous, millisecond-rounded (ties), and all equal: the last
        # fixes all 64 bits of the key without ever gathering.
        np.random.default_rng(0).lognormal(0.0, 2.0, 30_000),
        np.round(np.random.default_rng(1).exponential(0.5, 20_000), 3) + 1e-3,
        np.full(9_000, 0.25),
    ],
    ids=["lognormal", "rounded", "constant"],
)
def test_order_statistics_of_partitions_are_exact(durations):
    from sklearn_beta.distributed._trust import order_statistics
    from sklearn_beta.trust._time_blocks import duration_quantiles

    parts = _InMemory(_duration_tables(durations, 3))
    stored = np.concatenate([t["t_end"] - t["t_start"] for t in parts.items])
    n = stored.shape[0]
    ranks = np.array([0, n // 2, n // 2 + 1, int(0.99 * (n - 1)), n - 1])
    got = order_statistics(parts, 1.0, n, ranks)
    np.testing.assert_array_equal(got, np.sort(stored)[ranks])
    # The in-memory quantiles that size the blocks: NumPy's, exactly.
    np.testing.assert_allclose(
        duration_quantiles(stored), np.quantile(stored, [0.5, 0.99]), rtol=1e-15
    )


# --- Command line ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet_files(fleet, tmp_path_factory):
    """The fleet as one Parquet file per engine, and as one file."""
    directory = tmp_path_factory.mktemp("fleet")
    for instance, group in fleet.groupby("instance_id"):
        group.to_parquet(directory / f"engine-{instance}.parquet")
    return str(directory / "engine-*.parquet")


def _cli(capsys, *argv):
    from sklearn_beta.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _fit_json(capsys, *argv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code, out, err = _cli(capsys, "fit", *argv, "--output", "json", "--quiet")
    assert code == 0, err
    return json.loads(out)


def _limits(report):
    ci = report["confidence_interval"]
    return np.array([ci[name] for name in ("beta0", "beta1", "beta2")])


def test_cli_dask_local_equals_the_pandas_cli(capsys, fleet_files):
    local = _fit_json(capsys, fleet_files, "--chunk-size", 64)
    remote = _fit_json(capsys, fleet_files, "--chunk-size", 64, "--dask", "local")
    np.testing.assert_allclose(
        list(remote["betas"].values()), list(local["betas"].values()), rtol=RTOL
    )
    np.testing.assert_allclose(_limits(remote), _limits(local), rtol=RTOL)
    np.testing.assert_allclose(list(remote["betas"].values()), BETA, rtol=0.02)
    assert remote["trace"] == local["trace"]
    assert remote["fleet"]["n_partitions"] == 4
    assert remote["fleet"]["engine_search_sample"] is None
    assert remote["validation"] is None and local["validation"] is not None
    assert any("validation is null" in note for note in remote["notes"])
    for key in ("r2", "rmse_seconds", "condition_number"):
        assert remote["diagnostics"][key] == pytest.approx(
            local["diagnostics"][key], rel=RTOL
        )
    assert remote["convergence"]["n_iter"] == local["convergence"]["n_iter"]


def test_cli_dask_engine_search_runs_on_a_sample_of_whole_instances(
    capsys, client, fleet_files, monkeypatch
):
    import sklearn_beta.cli._fleet as cli_fleet

    # Two of the four engines fit under the bound; the fit uses all four.
    sizes = sorted(len(pd.read_parquet(p)) for p in glob.glob(fleet_files))
    monkeypatch.setattr(cli_fleet, "SEARCH_SAMPLE_PHASES", sizes[0] + sizes[1])
    address = client.scheduler.address
    remote = _fit_json(
        capsys, fleet_files, "--dask", address, "--chunk-candidates", "32,64"
    )
    sample = remote["fleet"]["engine_search_sample"]
    assert 1 <= len(sample["instances"]) <= 2
    assert sample["n_phases"] <= sizes[0] + sizes[1]
    assert remote["engine_config"]["candidates"]
    assert remote["chunk_size"] == 64  # the simulator's engine
    assert remote["trace"]["n_phases"] == sum(sizes)
    assert any("sample collected to the client" in n for n in remote["notes"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dask", "localhost"], "--dask takes 'local' or a scheduler address"),
        (["--dask", "local", "--plot", "figures"], "--plot draws every phase"),
        (["--dask", "local", "--format", "otel"], "--dask reads csv or parquet"),
    ],
)
def test_cli_dask_usage_errors_are_one_line(capsys, fleet_files, argv, message):
    code, out, err = _cli(capsys, "fit", fleet_files, *argv)
    assert code == 2 and out == ""
    assert err.startswith("sklearn-beta: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_cli_dask_data_errors_are_one_line(capsys, client, fleet, tmp_path):
    import dask

    address = client.scheduler.address
    code, _, err = _cli(capsys, "fit", tmp_path / "*.parquet", "--dask", address)
    assert code == 1 and "No trace file matches" in err
    fleet.drop(columns="decode_tokens").to_parquet(tmp_path / "a.parquet")
    code, _, err = _cli(
        capsys, "fit", tmp_path / "a.parquet", "--dask", address, "--chunk-size", 64
    )
    assert code == 1 and "decode_tokens" in err
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code, _, err = _cli(
            capsys, "fit", tmp_path / "a.parquet", "--dask", "tcp://127.0.0.1:9"
        )
    assert code == 1 and "cannot reach the Dask scheduler" in err
    for text in (err,):
        assert len(text.strip().splitlines()) == 1 and "Traceback" not in text


@pytest.mark.parametrize(
    "regressor",
    [
        BaselineBetaRegressor(confidence_level=None),
        IterativeBetaRegressor(confidence_level=None),
        IterativeBetaRegressor(objective="duration", confidence_level=None),
    ],
    ids=["baseline", "step_count", "duration"],
)
def test_no_intervals_when_not_asked(client, fleet, regressor):
    ddf = dd.from_pandas(fleet, npartitions=2)
    local = _fit_quietly(_model(regressor), fleet)[-1]
    remote = _fit_quietly(_model(regressor), ddf)[-1]
    assert remote.beta_ci_ is None and local.beta_ci_ is None
    np.testing.assert_allclose(remote.beta_, local.beta_, rtol=RTOL)


def _edge_lifetime(record) -> float:
    (message,) = [str(w.message) for w in record if "test the edges" in str(w.message)]
    return float(re.search(r"the longest request lasts up to (\S+) s,", message)[1])


def test_short_trace_warning_in_seconds_like_the_pandas_fit(client):
    # The edge zones live in the fit's time unit; both fits report seconds.
    phases = simulate_trace(
        12,
        beta=BETA,
        chunk_size=64,
        max_num_seqs=64,
        arrival_rate=50.0,
        random_state=0,
    )
    model = _model(IterativeBetaRegressor())
    with pytest.warns(UncertaintyWarning) as local:
        model.fit(phases)
    with pytest.warns(UncertaintyWarning) as remote:
        _model(IterativeBetaRegressor()).fit(dd.from_pandas(phases, npartitions=1))
    life = (
        phases.groupby("request_id").t_end.max()
        - phases.groupby("request_id").t_start.min()
    )
    assert _edge_lifetime(remote) == pytest.approx(_edge_lifetime(local), rel=1e-9)
    assert _edge_lifetime(local) <= 2 * life.max()


@pytest.mark.parametrize(
    "transformer",
    [
        {"correction_mode": "none"},
        {"correction_mode": "uniform"},
        {"min_duration": 1.0},
    ],
)
def test_ignored_transformer_settings_raise_on_dask_as_in_memory(
    client, fleet, transformer
):
    # The step-count fit would ignore these settings: both backends say so.
    def model():
        return make_pipeline(
            PhaseExposureTransformer(
                chunk_size=64, columns={"instance_id": "instance_id"}, **transformer
            ),
            IterativeBetaRegressor(),
        )

    with pytest.raises(ValueError, match="would (be )?ignored?") as local:
        _fit_quietly(model(), fleet)
    with pytest.raises(ValueError, match="would (be )?ignored?") as remote:
        _fit_quietly(model(), dd.from_pandas(fleet, npartitions=3))
    first_sentence = str(local.value).split(";")[0].split(" (first at")[0]
    assert str(remote.value).startswith(first_sentence)


# --- step models beyond the published one ---------------------------------------

BETA_ATTENTION = np.array([5e-3, 2e-5, 4e-9, 8e-5, 2e-8])


def _attention_trace(n, **kwargs):
    options = dict(
        beta=BETA_ATTENTION,
        step_model="attention",
        chunk_size=256,
        max_num_seqs=64,
        arrival_rate=12.0,
        prompt_tokens=(1024, 0.8),
        output_tokens=(100, 0.8),
        noise=0.02,
    )
    return simulate_trace(n, **{**options, **kwargs})


@pytest.fixture(scope="module")
def attention_fleet() -> pd.DataFrame:
    return _attention_trace(1500, n_instances=3, random_state=0)


def _attention_model(regressor, **transformer):
    return make_pipeline(
        PhaseExposureTransformer(
            256,
            step_model="attention",
            columns={"instance_id": "instance_id"},
            **transformer,
        ),
        type(regressor)(**regressor.get_params()),
    )


@pytest.mark.parametrize(
    "regressor",
    [
        BaselineBetaRegressor(),
        IterativeBetaRegressor(edges="fit"),
        IterativeBetaRegressor(objective="duration", max_iter=60),
    ],
    ids=lambda r: repr(r),
)
def test_step_model_dask_fit_equals_pandas_fit(client, attention_fleet, regressor):
    ddf = dd.from_pandas(attention_fleet.sort_values("instance_id"), npartitions=2)
    local = _fit_quietly(_attention_model(regressor), attention_fleet)[-1]
    remote = _fit_quietly(_attention_model(regressor), ddf)[-1]
    assert remote.step_features_ == local.step_features_
    assert remote.coef_names_ == local.coef_names_
    np.testing.assert_allclose(remote.beta_, local.beta_, rtol=RTOL)
    np.testing.assert_allclose(remote.beta_ci_, local.beta_ci_, rtol=RTOL)
    assert remote.beta_ci_.shape == (5, 2)
    assert remote.diagnostics_["r2"] == pytest.approx(
        local.diagnostics_["r2"], rel=RTOL
    )
    for name, mean in local.diagnostics_["mean_exposures"].items():
        assert remote.diagnostics_["mean_exposures"][name] == pytest.approx(
            mean, rel=RTOL
        )
    for key in ("not_identified", "at_zero_bound"):
        assert remote.diagnostics_[key] == local.diagnostics_[key]
    if isinstance(regressor, IterativeBetaRegressor):
        # both recover the simulator's betas (2 % noise; measured 0.55 %
        # and 0.48 %): they are not both wrong
        np.testing.assert_allclose(remote.beta_, BETA_ATTENTION, rtol=0.01)
        assert remote.n_iter_ == local.n_iter_
        columns = [f"beta_{f}" for f in remote.step_features_]
        np.testing.assert_allclose(
            remote.history_[columns].to_numpy(),
            local.history_[columns].to_numpy(),
            rtol=RTOL,
        )


def test_step_model_windows_edges_auto_equal_pandas(client):
    # Two engines' windows cut from serving at 4 requests/s: edges="auto"
    # leaves the incomplete edges out on the partitions as in memory.
    parts = []
    for instance, how in enumerate(("arrival", "completion")):
        phases = _attention_trace(
            1500, max_num_seqs=256, arrival_rate=4.0, random_state=instance
        )
        times = phases.groupby("request_id")["t_start" if how == "arrival" else "t_end"]
        per_request = times.min() if how == "arrival" else times.max()
        t0, t1 = per_request.quantile([0.3, 0.7])
        window = cut_window(phases, t0, t1, how=how)
        parts.append(
            window.assign(
                instance_id=instance,
                request_id=window["request_id"].astype(str) + f"-{instance}",
            )
        )
    fleet = pd.concat(parts, ignore_index=True)
    ddf = dd.from_pandas(fleet, npartitions=2)
    local = _fit_quietly(_attention_model(IterativeBetaRegressor()), fleet)[-1]
    remote = _fit_quietly(_attention_model(IterativeBetaRegressor()), ddf)[-1]
    assert remote.diagnostics_["edges"]["n_context"] > 0
    assert (
        remote.diagnostics_["edges"]["n_context"]
        == (local.diagnostics_["edges"]["n_context"])
    )
    np.testing.assert_allclose(remote.beta_, local.beta_, rtol=RTOL)
    np.testing.assert_allclose(remote.beta_ci_, local.beta_ci_, rtol=RTOL)
    # measured within 0.7 % (every phase fitted: 51 % off)
    np.testing.assert_allclose(remote.beta_, BETA_ATTENTION, rtol=0.02)


def test_trained_physics_dask_fit_equals_pandas_fit(client, attention_fleet):
    regressor = IterativeBetaRegressor(edges="fit")
    options = dict(model_config="tests/data/qwen3-14b/config.json", gpu="H100")
    transformer = dict(step_model="trained-physics", **options)
    model = make_pipeline(
        PhaseExposureTransformer(
            256, columns={"instance_id": "instance_id"}, **transformer
        ),
        regressor,
    )
    ddf = dd.from_pandas(attention_fleet.sort_values("instance_id"), npartitions=2)
    local = _fit_quietly(model, attention_fleet)[-1]
    remote = _fit_quietly(clone(model), ddf)[-1]
    assert remote.coef_names_ == local.coef_names_
    np.testing.assert_allclose(remote.beta_, local.beta_, rtol=RTOL)
    np.testing.assert_allclose(remote.beta_ci_, local.beta_ci_, rtol=RTOL, atol=0)


def test_dask_table_without_durations_raises(client, fleet):
    table = _model(BaselineBetaRegressor())[0].fit_transform(fleet)
    ddf = dd.from_pandas(table.iloc[:, :3], npartitions=2)
    with pytest.raises(ValueError, match="'duration' column"):
        BaselineBetaRegressor().fit(ddf)
