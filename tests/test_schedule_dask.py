"""ScheduleBetaRegressor on a Dask DataFrame equals the pandas fit of the same
rows: the workers reduce the table to per-request records, the fit runs on
them in memory (issue 19 item 2, issue 20 item 2)."""

from __future__ import annotations

import dask.dataframe as dd
import distributed
import numpy as np
import pandas as pd
import pytest
from test_schedule import ENGINE
from test_schedule_step_models import attention_trace

from sklearn_beta import ScheduleBetaRegressor

RTOL = 1e-9


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
def phases():
    # two engine instances (named by strings), rows shuffled within each so
    # that a request's prefill and decode rows fall in different partitions
    first, _ = attention_trace(400, noise=0.02, seed=3)
    second, _ = attention_trace(300, noise=0.02, seed=4)
    second = second.assign(request_id=second["request_id"] + 1000)
    both = pd.concat([first.assign(instance_id="a"), second.assign(instance_id="b")])
    order = np.random.default_rng(0).permutation(len(both))
    return both.iloc[order].reset_index(drop=True)


@pytest.mark.parametrize("step_model", ["published", "attention"])
def test_dask_fit_equals_the_pandas_fit(client, phases, step_model):
    model = ScheduleBetaRegressor(**ENGINE, step_model=step_model)
    expected = model.fit(phases)
    ddf = dd.from_pandas(phases, npartitions=5)
    fitted = ScheduleBetaRegressor(**ENGINE, step_model=step_model).fit(ddf)
    np.testing.assert_allclose(fitted.beta_, expected.beta_, rtol=RTOL)
    np.testing.assert_allclose(fitted.beta_ci_, expected.beta_ci_, rtol=RTOL)
    for name, value in expected.alpha_.items():
        assert abs(fitted.alpha_[name] - value) < 1e-12
    assert fitted.n_iter_ == expected.n_iter_
    assert fitted.coef_names_ == expected.coef_names_
    # the fitted model predicts the pandas table
    np.testing.assert_allclose(
        fitted.predict(phases), expected.predict(phases), rtol=RTOL
    )


def test_dask_errors(client, phases):
    ddf = dd.from_pandas(phases.iloc[1:], npartitions=3)  # a request short of a row
    with pytest.raises(ValueError, match="one prefill and one decode"):
        ScheduleBetaRegressor(**ENGINE).fit(ddf)
    ddf = dd.from_pandas(phases, npartitions=3)
    with pytest.raises(TypeError, match="without trace="):
        ScheduleBetaRegressor(**ENGINE, trace=phases).fit(ddf)
    with pytest.raises(ValueError, match="arrival='send' is not a column"):
        ScheduleBetaRegressor(**ENGINE, arrival="send").fit(ddf)
