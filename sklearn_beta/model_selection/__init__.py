"""Cross-validation that respects the overlap of phases in time.

The exposures of a phase integrate the pressure of every other phase running
on the same engine instance during its window. Splitting the rows of a phase
table at random (``KFold``) therefore hands each fold a thinned-out trace: the
pressures a fold's transformer sees are a fraction of the real ones, and a
request's prefill and decode rows land in different folds. The scores such a
split reports describe a trace nobody ran.

Two splits are honest:

* :class:`TraceBlockSplit` cuts each instance's timeline into contiguous
  blocks of requests. A test fold is a stretch of real time with all its
  phases, so a test phase's exposures are those of the full trace unless it
  overlaps a phase outside the block (the block's edges). Training drops
  every request overlapping a test block (``gap`` widens that margin), so no
  training row's exposures contain a test phase.
* ``GroupKFold`` with the instance column as ``groups`` keeps whole engine
  instances together: pressures never cross instances, so every exposure is
  exactly that of the full trace. It needs at least ``n_splits`` instances.

:func:`complete_context_mask` tells which phases of a subset have exactly
their full-trace exposures; it measures the edge effect of any split.
:class:`TraceContextRegressor` removes the edge effect: it fits on the full
trace with zero weight outside the training rows and predicts the full
trace, so every phase keeps its full-trace exposures in training and test.
:func:`one_standard_error_rule` is a ``refit`` for GridSearchCV over the
step model that prefers the simplest model within one standard error of the
best; :func:`compare_step_models` runs that search and tabulates it.
"""

from ._context import TraceContextRegressor
from ._request_split import RequestKFold, make_schedule_scorer
from ._step_models import compare_step_models, one_standard_error_rule
from ._trace_split import TraceBlockSplit, complete_context_mask

__all__ = [
    "RequestKFold",
    "TraceBlockSplit",
    "TraceContextRegressor",
    "compare_step_models",
    "complete_context_mask",
    "make_schedule_scorer",
    "one_standard_error_rule",
]
