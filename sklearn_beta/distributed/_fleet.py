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

import glob
import sys
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from ..core._engine_model import effective_chunk_size
from ..core._memory import reuse_freed_memory
from ..io._formats import PHASE_FORMATS, SUFFIX_CONTAINERS, check_format, container_of

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
    import dask

    return dask.is_dask_collection(obj)


def connect(address: str):
    """A ``distributed.Client`` for the command line's ``--dask`` option.

    ``"local"`` starts a ``LocalCluster`` sized to the machine: one
    single-threaded worker process per core (the fit's work per partition
    is single-threaded numpy). Anything else is a scheduler address such as
    ``"tcp://HOST:8786"``. The client becomes the default scheduler of Dask
    collections until it is closed.
    """
    from distributed import Client, LocalCluster

    if address == "local":
        import os

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


def expand_trace_paths(path_or_glob: str | PathLike | list) -> list[Path]:
    """The trace files named by a file, a directory, a glob or a list of them.

    A directory stands for its ``*.csv``, ``*.parquet`` and ``*.pq`` files.
    Files are returned sorted, so that partitions come in a stable order.

    Raises
    ------
    ValueError
        If nothing matches, or CSV and Parquet files are mixed.
    """
    if isinstance(path_or_glob, list | tuple):
        found = [p for item in path_or_glob for p in expand_trace_paths(item)]
    else:
        path = Path(path_or_glob)
        if path.is_dir():
            found = [
                p
                for p in path.iterdir()
                if p.suffix.lower() in SUFFIX_CONTAINERS
                and container_of(p) in PHASE_FORMATS
            ]
        elif path.is_file():
            found = [path]
        else:
            found = [Path(p) for p in glob.glob(str(path_or_glob), recursive=True)]
            found = [p for p in found if p.is_file()]
    if not found:
        raise ValueError(f"No trace file matches {str(path_or_glob)!r}.")
    kinds = {container_of(p) == "parquet" for p in found}
    if len(kinds) > 1:
        raise ValueError(
            f"{str(path_or_glob)!r} mixes CSV and Parquet files; read them apart."
        )
    return sorted(dict.fromkeys(found))


def read_phases_dask(
    path_or_glob: str | PathLike | list,
    *,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    blocksize: int | str | None = "default",
):
    """Read phase tables lazily as a Dask DataFrame, one partition per file.

    Parameters
    ----------
    path_or_glob : str, path-like or list
        A file, a directory (its CSV / Parquet files), a glob such as
        ``"traces/*.parquet"``, or a list of these.
    format : {"csv", "parquet"} or None, default=None
        Format of every file; None infers it from the first file's suffix
        (``.parquet``/``.pq`` is Parquet, ``.csv`` or an unlisted suffix CSV).
    columns : dict or None, default=None
        Renames applied after reading, ``{name in the file: schema name}``.
    blocksize : int, str or None, default="default"
        Parquet: ``None`` keeps one partition per file (one engine per file
        then needs no repartitioning); otherwise Dask's default splitting.
        CSV files are always read one partition per file.

    Returns
    -------
    phases : dask.dataframe.DataFrame
        Nothing is read until the data is used.

    Raises
    ------
    ValueError
        If nothing matches, the format is not CSV or Parquet, or a schema
        column is missing.

    Examples
    --------
    >>> from sklearn_beta.fleet import read_phases_dask
    >>> phases = read_phases_dask("traces/*.parquet")  # doctest: +SKIP
    """
    import dask.dataframe as dd

    from ..io._readers import schema_columns_first

    paths = [str(p) for p in expand_trace_paths(path_or_glob)]
    format = check_format(format, paths[0], PHASE_FORMATS, "read_phases_dask")
    if format == "parquet":
        frame = dd.read_parquet(paths, blocksize=blocksize)
    else:
        frame = dd.read_csv(paths, blocksize=None)
    return schema_columns_first(frame, columns, str(path_or_glob))


def _distinct(values: pd.Series) -> np.ndarray:
    return pd.unique(values.to_numpy())


def partition_instances(phases, instance_id: str) -> list[np.ndarray]:
    """The distinct instance ids of each partition (one pass over the column)."""
    import dask

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


def fleet_time_resolution(phases, transformer) -> float:
    """``time_resolution="auto"`` of the whole trace, from partition sums.

    The resolution is a fraction of the mean time per step of the whole
    trace (:func:`~sklearn_beta._exposure.resolution_from_totals`), not of
    each partition.
    """
    import dask

    from ..estimators._exposure import resolution_from_totals

    sums = dask.compute(
        *[dask.delayed(_step_sums)(p, transformer) for p in phases.to_delayed()]
    )
    return resolution_from_totals(sum(s[0] for s in sums), sum(s[1] for s in sums))


def _step_sums(part: pd.DataFrame, transformer) -> tuple[float, float]:
    from ..estimators._exposure import phase_step_counts

    if len(part) == 0:
        return 0.0, 0.0
    arrays = transformer._phase_arrays(part)
    n_steps = phase_step_counts(
        arrays, effective_chunk_size(transformer.chunk_size, transformer.token_budget)
    )
    return float(n_steps.sum()), float(arrays.duration.sum())
