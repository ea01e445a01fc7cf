"""Fleet-scale traces on a Dask cluster.

The code is in :mod:`sklearn_beta.distributed._fleet` (the cluster) and
:mod:`sklearn_beta.io._files` (the files); this module is their public face.
"""

from ..core._memory import reuse_freed_memory
from ..distributed._fleet import connect, whole_instances
from ..io._files import expand_trace_paths, read_phases_dask

__all__ = [
    "connect",
    "expand_trace_paths",
    "read_phases_dask",
    "reuse_freed_memory",
    "whole_instances",
]
