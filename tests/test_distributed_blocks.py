"""The partitions' kept state: lean, exact, and alone on the workers once built."""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace

import numpy as np
import pytest

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.core._schema import column, read_timeline
from sklearn_beta.core._step_count import TimelineCounts
from sklearn_beta.core._units import rescaled_timeline
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.distributed._blocks import build_block, count_block, step_totals_block

BETA = (5e-3, 2e-5, 1e-4)


@pytest.fixture(scope="module")
def table():
    phases = simulate_trace(
        1500,
        beta=BETA,
        chunk_size=64,
        max_num_seqs=32,
        arrival_rate=40.0,
        noise=0.05,
        n_instances=3,
        random_state=1,
    )
    transformer = PhaseExposureTransformer(
        chunk_size=64, columns={"instance_id": "instance_id"}
    )
    return transformer.fit_transform(phases)


def _arrays(block):
    timeline = block.timeline
    grid = timeline.trace_grid
    return [
        *(getattr(grid, name) for name in grid.__dataclass_fields__),
        *(value for value in vars(timeline).values() if isinstance(value, np.ndarray)),
        block.counts.weight,
    ]


@pytest.mark.parametrize("mode", ["beta_informed", "end", "uniform"])
@pytest.mark.parametrize("unit", [1.0, 2.0**-6])
def test_block_states_equal_the_full_timeline_bit_for_bit(table, mode, unit):
    # The oracle: the pandas fit's problem on the table's own float64 timeline.
    values = table.to_numpy()
    timeline = replace(read_timeline(values), duration=column(values, "duration"))
    full = TimelineCounts(rescaled_timeline(timeline, unit), mode)
    block = build_block(table, unit, mode, None)
    beta = np.array([0.08, 3e-4, 1.7e-3]) / unit
    lean = count_block(block, beta)
    state = full.state(beta)
    assert lean["loss"] == state.loss
    np.testing.assert_array_equal(
        lean["jac_sumsq"], np.einsum("ij,ij->j", state.jac, state.jac)
    )
    assert step_totals_block(block, beta)["total"] == full.step_totals(beta)[0]
    np.testing.assert_array_equal(block.counts.weight, full.weight)


def test_block_owns_narrow_arrays_and_says_its_size(table):
    block = build_block(table, 2.0**-6, "beta_informed", None)
    values = table.to_numpy()
    grid = block.timeline.trace_grid
    assert grid.start_idx.dtype == grid.end_idx.dtype == np.int32
    assert grid.grid_instance.dtype == np.uint8
    # No view of the exposure table: releasing the table frees it.
    for array in _arrays(block):
        assert not np.shares_memory(array, values)
    # Dask sizes objects by sys.getsizeof: it must see the arrays. On this
    # lightly loaded trace (1.1 grid points per phase) they take 78 bytes per
    # phase, under the table's 96.
    size = sys.getsizeof(block)
    assert size >= sum(a.nbytes for a in _arrays(block))
    assert size < values.nbytes


def test_workers_hold_only_blocks_and_the_fit_equals_pandas(table):
    import dask.dataframe as dd
    import distributed
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline

    import sklearn_beta.estimators._fit as fit_module

    phases = simulate_trace(
        600,
        beta=BETA,
        chunk_size=64,
        max_num_seqs=32,
        arrival_rate=40.0,
        n_instances=2,
        random_state=2,
    ).sort_values("instance_id")
    held = []
    with (
        distributed.LocalCluster(
            n_workers=1, processes=False, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
        pytest.MonkeyPatch.context() as patch,
    ):
        worker = next(iter(cluster.workers.values()))

        def record(entry, unit=1.0):
            held.append({type(value).__name__ for value in worker.data.values()})

        patch.setattr(fit_module, "print_progress", record)
        model = make_pipeline(
            PhaseExposureTransformer(
                chunk_size=64, columns={"instance_id": "instance_id"}
            ),
            # A placed initial correction: the start reads the table's
            # step density while the block is built.
            IterativeBetaRegressor(
                init_correction_mode="uniform",
                verbose=1,
                edges="fit",
                confidence_level=None,
            ),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.fit(dd.from_pandas(phases, npartitions=2))
    assert held
    assert all("Block" in kinds and "DataFrame" not in kinds for kinds in held)
    local = clone(model).set_params(iterativebetaregressor__verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        local.fit(phases)
    np.testing.assert_allclose(model[-1].beta_, local[-1].beta_, rtol=1e-9)
    assert model[-1].n_iter_ == local[-1].n_iter_
