"""The KV cache's size, searched by the schedule fit's misfit (docs/schedule.md).

A KV cache read from a client-side trace is only near the engine's: the
requests in prefill do not show as running (the reading is low), and a
preempted request still shows until its last token (high). The schedule fit
is sharp in the size: a block either way changes which request is admitted
or preempted when, and the schedule never resynchronises. From coefficients
near the truth, one replay and one fit on differences per size (the
search's restarts: admissions aligned, snapping offsets kept) give a misfit
curve with one clear valley about ten blocks wide (measured on a
vLLM-sized trace of 14 000 blocks, from the true betas: 0.08 at -10
blocks, 0.012 at -5, 0.005 at the size, 0.014 at +5, 0.31 at +10), where a
short fit from the phase-exposure start at each size (the search before
this) is rough and costs a profile per size. The trials start from the fit
of the requests done before the queue forms, with the KV bound off
(``_kv_start``), which does not depend on the size: the start and the size
are found together (measured: 14000 found from readings of 14020-14069 on
four vLLM-sized traces, 15-40 trials, 2.5-3.9 s).
"""

from __future__ import annotations

import warnings

import numpy as np

from ._schedule_solve import MISFIT_SEARCH, solve_schedule

__all__ = ["KVTrials", "scan_kv_blocks"]

#: The scan's stride in blocks (under half the valley's width), then every
#: block within a stride of the best.
KV_STRIDE = 4


class KVTrials:
    """One-replay schedule fits of a trace at trial KV sizes.

    Parameters
    ----------
    model : ScheduleBetaRegressor
        The estimator of the engine, its ``engine_settings`` holding a KV
        cache. The coefficients and snapping offsets every trial starts
        from are those of its fit, with the KV bound off, of the requests
        done before the queue forms (``from_head``); where that does not
        apply, its start (``init``, profiled offsets) and a fit of
        ``max_iter`` replays at that size.
    frame : DataFrame
        The phase table.
    max_iter : int
        Replays of the start's fit.
    """

    def __init__(self, model, frame, max_iter: int):
        self.model = model.set_params(confidence_level=None)
        self.max_iter = max_iter
        model._set_step_model()
        self.trace = model._read(frame)
        self.free = model._free_columns(self.trace.scheduled, len(model.coef_names_))
        self.tried: dict = {}
        self.start_blocks = int(model.engine_settings["num_gpu_blocks"])
        # the fit of the requests done before the queue forms does not depend
        # on the cache's size: every trial starts from it, and no fit at the
        # reading (which ran off on a vLLM-sized trace) is needed
        head = model._unbound_head_start(self.trace, None, self.free)
        self.from_head = head is not None
        if self.from_head:
            self.theta = head[0]
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            starts = model._initial_betas(frame)
            beta, snap = model._start(frame, self.trace, starts, None, self.free)
        self.theta = np.r_[beta, snap]
        self.restart(self.start_blocks)

    def restart(self, blocks: int) -> None:
        """Start the trials from a fit (``max_iter`` replays, no search of
        the snapping offsets) at ``blocks``; forgets the trials."""
        self._set_blocks(blocks)
        solved = solve_schedule(
            self.trace,
            self.theta,
            None,
            self.free,
            self.model._schedule,
            self.max_iter,
            self.model.tol,
            self.theta[-3:],
        )
        self.theta = solved.theta
        self.start_blocks = int(blocks)
        self.tried = {}

    def _set_blocks(self, blocks: int) -> None:
        settings = dict(self.model.engine_settings, num_gpu_blocks=int(blocks))
        self.model.set_params(engine_settings=settings)

    def misfit(self, blocks: int) -> float:
        """``schedule_misfit`` of the trial at ``blocks`` (inf when it fails
        or gives no positive step time)."""
        blocks = int(blocks)
        if blocks not in self.tried:
            self.tried[blocks] = self._trial(blocks)
        return self.tried[blocks]

    def _trial(self, blocks: int) -> float:
        model = self.model
        self._set_blocks(blocks)
        try:
            solved = solve_schedule(
                self.trace,
                self.theta,
                None,
                self.free,
                model._schedule,
                1,
                model.tol,
                self.theta[-3:],
                True,
            )
        except (ValueError, ArithmeticError, RuntimeError):
            # e.g. a cache too small for the longest request alone
            return np.inf
        misfit = float(solved.misfit)
        return misfit if np.isfinite(misfit) and solved.theta[0] > 0 else np.inf


def scan_kv_blocks(trials: KVTrials, low: int, high: int) -> int:
    """The size of least misfit in ``[low, high]``: every
    :data:`KV_STRIDE`-th block from the trials' start outwards (nearest
    first, stopping at the first at the noise level), then one block at a
    time downhill from the best."""
    centre = min(max(trials.start_blocks, low), high)
    up = range(centre, high + 1, KV_STRIDE)
    down = range(centre - KV_STRIDE, low - 1, -KV_STRIDE)
    # nearest first: the reading is within a few tenths of a percent
    order = [b for pair in zip(up, down, strict=False) for b in pair]
    order += list(up[len(down) :]) + list(down[len(up) :])
    best = centre
    for blocks in order:  # a loop over trial sizes, not requests
        if trials.misfit(blocks) < trials.misfit(best):
            best = blocks
        if trials.misfit(best) <= MISFIT_SEARCH:
            break
    # then block by block downhill: the valley's floor is smooth
    for _ in range(high - low):  # at most the bracket, usually a few steps
        step = min(
            (b for b in (best - 1, best + 1) if low <= b <= high),
            key=trials.misfit,
            default=best,
        )
        if not trials.misfit(step) < trials.misfit(best):
            break
        best = step
    return best
