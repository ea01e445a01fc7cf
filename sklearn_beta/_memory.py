"""Keeping freed memory for reuse during a large fit (glibc only).

A fit of 1e7 phases makes and drops many arrays of 80-500 MB. glibc's
``malloc`` serves each from a fresh ``mmap`` and unmaps it on ``free``, so
every temporary is faulted in page by page again: on the 2-core virtual
machine of the benchmarks that was half of the default pipeline's time
(22.6 s of system time for 22.2 s of user time at 1e7 phases, 4e5 page
faults). Inside :func:`reuse_freed_memory` freed blocks stay in the heap and
are handed out again; on leaving, the defaults come back and the heap is
trimmed. No effect on results; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt parameters and glibc's defaults (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_KEEP = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of free heap top


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

    Process-wide while it lasts (other threads' allocations too). The peak
    resident memory can grow a little, since freed blocks are kept.

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
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, _KEEP)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
