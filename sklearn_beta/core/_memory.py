"""Keeping freed memory for reuse during a large fit (glibc only).

A fit of 1e7 phases makes and drops many arrays of 80-500 MB. glibc's
``malloc`` serves each from a fresh ``mmap`` and unmaps it on ``free``, so
every temporary is faulted in page by page again: at 1e7 phases that was as
much system time as arithmetic (11.4 s of system time for 11.7 s of user
time in the default pipeline, 2.4e5 page faults, on the shared 2-core
machine of the benchmarks). Inside :func:`reuse_freed_memory` freed blocks
stay in the heap and are handed out again. No effect on results; elsewhere
than glibc it does nothing.

The estimators enter it by themselves for traces of at least
:data:`LARGE_FIT_PHASES` phases (:func:`large_fit_memory`): measured at 1e7
phases, 28.9 s -> 18.5 s wall and 23.1 s -> 15.2 s of CPU, with the same
peak resident set (4.40 GB); see docs/scale.md, "Where the time goes at
10M". The setting is process-wide, so it is reference-counted: nested and
concurrent fits apply it once and the last one out restores it. glibc
cannot report the thresholds it had, and any ``mallopt`` call turns its
dynamic thresholds off for good; on leaving, the thresholds are therefore
set to the values the dynamic rule converges to in a process that frees
large arrays (mmap above 32 MiB, trim above 64 MiB), so later allocations
behave as after any large numpy computation. A process that tunes
``malloc`` through the environment (``MALLOC_*_`` variables or
``GLIBC_TUNABLES``) is left alone by the automatic use. The free heap goes
back to the system :data:`TRIM_DELAY` seconds after the last fit, so that
the next step of a pipeline reuses it first.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_DEFAULT_MMAP_MAX = 65536
#: glibc's dynamic mmap threshold stops growing here on 64-bit systems, and
#: its dynamic trim threshold is twice the mmap threshold.
_SETTLED_MMAP_THRESHOLD = 32 * 1024 * 1024
_SETTLED_TRIM_THRESHOLD = 2 * _SETTLED_MMAP_THRESHOLD
_KEEP = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of free heap top
#: Traces from this many phases on are fitted inside reuse_freed_memory():
#: their temporaries exceed glibc's 32 MiB mmap threshold (at 1e6 phases the
#: gain was within the noise, 4.9 s -> 4.8 s).
LARGE_FIT_PHASES = 2_000_000

#: Seconds after the last fit leaves before the free heap goes back to the
#: system: the next step of a pipeline (the regressor after the transformer)
#: reuses it meanwhile (at once, a 1e7-phase pipeline spent 6 s more of
#: system time than inside one outer context: 18.6 s against 12.2 s).
TRIM_DELAY = 2.0

_lock = threading.Lock()
_depth = 0
_trim = None  # the pending threading.Timer


@cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - musl and others lack it
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Serve large arrays from the heap and keep freed ones for reuse.

    Process-wide while it lasts (other threads' allocations too); nested and
    concurrent uses apply it once. The last one out sets glibc's mmap
    thresholds to their settled values (see the module docstring); the trim
    threshold follows :data:`TRIM_DELAY` seconds later, unless another fit
    is running then, and the free heap goes back to the system. The peak
    resident memory can grow a little, since freed blocks are kept. The
    estimators use it by themselves for traces of at least
    ``LARGE_FIT_PHASES`` phases.

    Examples
    --------
    >>> from sklearn_beta.fleet import reuse_freed_memory
    >>> with reuse_freed_memory():
    ...     pass  # model.fit(phases) on a large trace
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_MMAP_THRESHOLD, _SETTLED_MMAP_THRESHOLD)
                _schedule_trim(libc)


def _schedule_trim(libc) -> None:
    """Set the settled trim threshold and return the free heap to the system
    :data:`TRIM_DELAY` seconds from now, unless a fit is running then (its
    own exit schedules another). Until then glibc hands the freed blocks out
    again to any request they fit; larger ones are mmapped as usual."""
    global _trim
    if _trim is not None:
        _trim.cancel()
    _trim = threading.Timer(TRIM_DELAY, _trim_if_idle, args=(libc,))
    _trim.daemon = True
    _trim.start()


def _trim_if_idle(libc) -> None:
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_TRIM_THRESHOLD, _SETTLED_TRIM_THRESHOLD)
            libc.malloc_trim(0)


def large_fit_memory(n_phases: int):
    """:func:`reuse_freed_memory` for a fit of ``n_phases`` phases, if large.

    A no-op below :data:`LARGE_FIT_PHASES` phases, and where the process
    tunes ``malloc`` through its environment.
    """
    if n_phases < LARGE_FIT_PHASES or _malloc_tuned_by_environment():
        return contextlib.nullcontext()
    return reuse_freed_memory()


def n_rows(table) -> int:
    """Rows of a table for :func:`large_fit_memory`; 0 for what is not one
    (validation then says what is wrong with it)."""
    shape = getattr(table, "shape", None)
    return int(shape[0]) if isinstance(shape, tuple) and shape else 0


def _malloc_tuned_by_environment() -> bool:
    return "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(
        name.startswith("MALLOC_") and name.endswith("_") for name in os.environ
    )
