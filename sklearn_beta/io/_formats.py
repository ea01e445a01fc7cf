"""Trace file formats: the one table from a file's suffix to its format.

The readers (:mod:`sklearn_beta.io`), the lazy fleet reader
(:mod:`sklearn_beta.fleet`) and the command line all infer a format here, so
that a suffix means the same thing everywhere.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

#: The container of each file suffix. A suffix not listed is read as CSV.
SUFFIX_CONTAINERS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
#: The formats of a phase table in the reference schema (``read_phases``).
PHASE_FORMATS = ("csv", "parquet")
#: The command line's trace format of each container: JSON lines are
#: OpenTelemetry spans and a JSON document is benchmark results unless
#: ``--format`` says otherwise.
CLI_FORMATS = {"jsonl": "otel", "json": "bench"}


def container_of(path: str | PathLike) -> str:
    """The container (``csv``, ``parquet``, ``jsonl``, ``json``) of a file name."""
    return SUFFIX_CONTAINERS.get(Path(path).suffix.lower(), "csv")


def check_format(format: str | None, path, allowed: tuple, reader: str) -> str:
    """``format``, or the one the suffix of ``path`` implies when None.

    Raises
    ------
    ValueError
        If the format (given or inferred) is not one ``reader`` reads.
    """
    if format is None:
        inferred = container_of(path)
        if inferred not in allowed:
            raise ValueError(
                f"{reader} reads {list(allowed)} files; the suffix of "
                f"{str(path)!r} says {inferred!r}. Pass format= to read it as one "
                "of them."
            )
        return inferred
    if format not in allowed:
        raise ValueError(
            f"{reader}: format must be one of {list(allowed)}, got {format!r}."
        )
    return format
