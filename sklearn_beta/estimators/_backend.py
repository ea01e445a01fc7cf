"""Which backend runs an estimator on its input: a registry.

The estimators hold no code for any one kind of collection. A backend
registers a predicate that recognises its inputs (a Dask collection, say)
with :func:`register_backend`; :func:`backend_for` returns the backend of
the most recently registered predicate that accepts the input, and None for
data in memory, which the estimators fit themselves. The Dask backend is
registered by the package's face (``sklearn_beta/__init__.py`` imports
:mod:`sklearn_beta.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backend", "backend_for", "register_backend"]


@dataclass(frozen=True)
class Backend:
    """What a backend does for the estimators, one callable per method.

    ``check_phases(X, columns, need_tokens)`` checks a phase table's
    columns (a :class:`~sklearn_beta.PhaseColumns`; ``need_tokens``: the
    prefill token counts are read) for the transformer's ``fit``;
    ``transform(transformer, X, columns, need_tokens, chunk)`` returns the
    exposure table (``chunk``: the most prompt tokens of a step), calling
    only the transformer's public methods. ``exposures(X, y,
    sample_weight)`` is the data source of an exposure table, on which
    :func:`~sklearn_beta.estimators._fit.fit_baseline` and
    :func:`~sklearn_beta.estimators._fit.fit_iterative` run; it has the
    table's ``columns``. ``predict(estimator, X)`` and ``score(estimator,
    X, y, sample_weight)`` call the fitted estimator's public ``predict``
    on the collection's pieces. ``requests(X, columns, extra)``, where the
    backend has it, reduces a phase table to what the schedule-consistent
    fit reads (a few numbers per request: the prefill and decode rows'
    columns of ``columns`` and ``extra``) and returns it in memory.
    """

    check_phases: Callable
    transform: Callable
    exposures: Callable
    predict: Callable
    score: Callable
    requests: Callable | None = None


_REGISTRY: list[tuple[Callable[[object], bool], Backend]] = []


def register_backend(predicate: Callable[[object], bool], backend: Backend) -> None:
    """Run ``backend`` on every input for which ``predicate(X)`` is true.

    ``predicate`` must not import the backend's optional dependencies
    (registering happens when the package is imported). Registering the same
    predicate again replaces its backend.
    """
    _REGISTRY[:] = [entry for entry in _REGISTRY if entry[0] is not predicate]
    _REGISTRY.insert(0, (predicate, backend))


def backend_for(X) -> Backend | None:
    """The backend registered for ``X``'s kind, or None for data in memory."""
    for predicate, backend in _REGISTRY:
        if predicate(X):
            return backend
    return None
