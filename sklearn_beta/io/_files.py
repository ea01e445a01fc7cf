"""Trace files on disk: which files a path names, and reading them lazily with Dask.

:func:`read_phases` (one table in memory) and :func:`read_phases_dask` (one
partition per file) both find files with :func:`expand_trace_paths` and put
the schema's columns first with :func:`schema_columns_first`.
"""

from __future__ import annotations

import glob
from os import PathLike
from pathlib import Path

from ..core._columns import PHASE_COLUMNS
from ._formats import PHASE_FORMATS, SUFFIX_CONTAINERS, check_format, container_of


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
    import dask.dataframe as dd  # optional dependency: the dask extra

    paths = [str(p) for p in expand_trace_paths(path_or_glob)]
    format = check_format(format, paths[0], PHASE_FORMATS, "read_phases_dask")
    if format == "parquet":
        frame = dd.read_parquet(paths, blocksize=blocksize)
    else:
        frame = dd.read_csv(paths, blocksize=None)
    return schema_columns_first(frame, columns, str(path_or_glob))


def schema_columns_first(frame, columns: dict | None, source: str):
    """``frame`` (pandas or Dask) renamed by ``columns``, schema columns first.

    Raises ValueError naming ``source`` if a schema column is missing.
    """
    if columns:
        frame = frame.rename(columns=columns)
    missing = [c for c in PHASE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{source!r} lacks phase-table column(s) {missing}; it has "
            f"{list(frame.columns)}. Map differently named columns with "
            "columns={'name in file': 'schema name'}."
        )
    rest = [c for c in frame.columns if c not in PHASE_COLUMNS]
    return frame[list(PHASE_COLUMNS) + rest]
