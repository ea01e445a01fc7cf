"""Fleet-scale traces on a Dask cluster.

The code is in :mod:`sklearn_beta.distributed._fleet`;
this module is its public face.
"""

from ..distributed._fleet import (
    connect,
    expand_trace_paths,
    read_phases_dask,
    reuse_freed_memory,
    whole_instances,
)

__all__ = [
    "connect",
    "expand_trace_paths",
    "read_phases_dask",
    "reuse_freed_memory",
    "whole_instances",
]
