"""The distributed backend: the estimators on Dask collections.

Importing this subpackage registers the backend with
:func:`~sklearn_beta.estimators._backend.register_backend`; the package's
face (``sklearn_beta/__init__.py``) does so. Dask itself is imported only
when a Dask collection reaches an estimator (it is an optional dependency).
"""

from ..estimators._backend import Backend, register_backend
from ._dask_fit import (
    check_phase_partitions,
    partition_exposures,
    predict_partitions,
    score_partitions,
    transform_partitions,
)
from ._fleet import is_dask_collection
from ._requests import collect_requests

register_backend(
    is_dask_collection,
    Backend(
        check_phases=check_phase_partitions,
        transform=transform_partitions,
        exposures=partition_exposures,
        predict=predict_partitions,
        score=score_partitions,
        requests=collect_requests,
    ),
)
