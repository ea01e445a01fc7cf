"""Fleet-scale traces on a Dask cluster.

The estimators accept a ``dask.dataframe.DataFrame`` wherever they accept a
pandas one: ``make_pipeline(PhaseExposureTransformer(chunk_size=C,
columns={"instance_id": "instance_id"}), IterativeBetaRegressor()).fit(ddf)``
runs on
the active ``distributed.Client``, with each instance's timeline built and
kept where its partition lives and only 3 x 3 statistics coming back per
iteration (see ``docs/scale.md``). This module holds what a user calls
around that: reading many trace files lazily and putting each instance in
one partition.

Requires the ``dask`` extra: ``pip install "sklearn-beta[dask]"``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd

from ..core._columns import PhaseColumns
from ..core._memory import reuse_freed_memory
from ..core._validation import check_phases
from ..estimators._exposure import phase_step_counts, resolution_from_totals
from ..io._files import expand_trace_paths, read_phases_dask

__all__ = [
    "connect",
    "expand_trace_paths",
    "read_phases_dask",
    "reuse_freed_memory",
    "whole_instances",
]


def is_dask_collection(obj) -> bool:
    """Whether ``obj`` is a Dask collection; never imports Dask itself."""
    if "dask" not in sys.modules:
        return False
    import dask  # optional dependency: the dask extra

    return dask.is_dask_collection(obj)


def connect(address: str):
    """A ``distributed.Client`` for the command line's ``--dask`` option.

    ``"local"`` starts a ``LocalCluster`` sized to the machine: one
    single-threaded worker process per core (the fit's work per partition
    is single-threaded numpy). Anything else is a scheduler address such as
    ``"tcp://HOST:8786"``. The client becomes the default scheduler of Dask
    collections until it is closed.
    """
    from distributed import Client, LocalCluster  # optional: the dask extra

    if address == "local":
        cluster = LocalCluster(
            n_workers=os.cpu_count() or 1, threads_per_worker=1, processes=True
        )
        return Client(cluster)
    if "://" not in address:
        raise ValueError(
            f"--dask takes 'local' or a scheduler address such as "
            f"'tcp://HOST:8786', got {address!r}."
        )
    return Client(address)


def _distinct(values: pd.Series) -> np.ndarray:
    return pd.unique(values.to_numpy())


def partition_instances(phases, instance_id: str) -> list[np.ndarray]:
    """The distinct instance ids of each partition (one pass over the column)."""
    import dask  # optional dependency: the dask extra

    parts = phases[instance_id].to_delayed()
    return list(dask.compute(*[dask.delayed(_distinct)(p) for p in parts]))


def instance_index(distinct: list[np.ndarray]) -> pd.Index:
    """The fleet's instance ids in the order of their codes: sorted, as
    :class:`~sklearn_beta.PhaseExposureTransformer` codes a table in memory."""
    seen = np.concatenate([np.asarray(d, dtype=object) for d in distinct])
    return pd.Index(pd.factorize(pd.Series(seen), sort=True)[1])


def whole_instances(phases, instance_id: str | None, distinct=None):
    """The Dask phase table with every instance inside one partition.

    The exposures of a phase depend on every phase of its instance, so an
    instance must not straddle partitions. Checking costs one pass over the
    instance column; when an instance does straddle, the table is shuffled
    by instance (an all-to-all transfer of the whole table through the
    cluster, about the cost of writing it once). Without an instance column
    (``instance_id`` None) the trace is one instance and is gathered into a
    single partition. ``distinct`` is :func:`partition_instances`'s result,
    when the caller has it.
    """
    if instance_id is None:
        return phases if phases.npartitions == 1 else phases.repartition(npartitions=1)
    if distinct is None:
        distinct = partition_instances(phases, instance_id)
    seen = np.concatenate([np.asarray(d, dtype=object) for d in distinct])
    if len(pd.unique(seen)) == len(seen):
        return phases
    return phases.shuffle(on=instance_id, npartitions=phases.npartitions)


def fleet_time_resolution(
    phases, columns: PhaseColumns, need_tokens: bool, chunk: int
) -> float:
    """``time_resolution="auto"`` of the whole trace, from partition sums.

    The resolution is a fraction of the mean time per step of the whole
    trace (:func:`~sklearn_beta._exposure.resolution_from_totals`), not of
    each partition.
    """
    import dask  # optional dependency: the dask extra

    sums = dask.compute(
        *[
            dask.delayed(_step_sums)(p, columns, need_tokens, chunk)
            for p in phases.to_delayed()
        ]
    )
    return resolution_from_totals(sum(s[0] for s in sums), sum(s[1] for s in sums))


def _step_sums(
    part: pd.DataFrame, columns: PhaseColumns, need_tokens: bool, chunk: int
) -> tuple[float, float]:
    if len(part) == 0:
        return 0.0, 0.0
    arrays = check_phases(part, columns, need_prefill_tokens=need_tokens)
    n_steps = phase_step_counts(arrays, chunk)
    return float(n_steps.sum()), float(arrays.duration.sum())
