"""reuse_freed_memory changes where arrays live, never what a fit returns."""

from __future__ import annotations

import ctypes
import os
import time
from contextlib import nullcontext

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

from sklearn_beta import IterativeBetaRegressor, PhaseExposureTransformer
from sklearn_beta.core import _memory
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.fleet import reuse_freed_memory


def _fit(phases):
    model = make_pipeline(
        PhaseExposureTransformer(chunk_size=64), IterativeBetaRegressor()
    )
    return model.fit(phases)[-1]


def test_fit_inside_reuse_freed_memory_is_bit_identical():
    phases = simulate_trace(
        800,
        beta=(5e-3, 2e-5, 1e-4),
        chunk_size=64,
        max_num_seqs=32,
        arrival_rate=40.0,
        noise=0.05,
        random_state=1,
    )
    outside = _fit(phases)
    with reuse_freed_memory():
        # Arrays far above glibc's mmap threshold, freed and made again.
        for _ in range(3):
            big = np.ones(8_000_000)
            assert big.sum() == 8_000_000
            del big
        inside = _fit(phases)
    after = _fit(phases)
    np.testing.assert_array_equal(inside.beta_, outside.beta_)
    np.testing.assert_array_equal(after.beta_, outside.beta_)
    np.testing.assert_allclose(outside.beta_, (5e-3, 2e-5, 1e-4), rtol=0.02)


def _mmapped_bytes():
    """Bytes glibc currently serves from mmap (mallinfo2.hblkhd), or None."""
    libc = _memory._glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in "abcdefghij"]

    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().e  # hblkhd: the fifth field


def _mmap_growth(n_bytes):
    before = _mmapped_bytes()
    block = np.ones(n_bytes // 8)
    grown = _mmapped_bytes() - before
    del block
    return grown


def test_nested_reuse_keeps_the_setting_until_the_last_one_leaves():
    if _mmapped_bytes() is None:
        pytest.skip("needs glibc's mallinfo2")
    size = 64 * 2**20  # above glibc's largest dynamic mmap threshold
    with reuse_freed_memory():
        with reuse_freed_memory():
            assert _mmap_growth(size) == 0
        # The inner exit must not have restored mmap for the outer one.
        assert _mmap_growth(size) == 0
    # Restored: larger than any block freed inside, so not from the heap.
    assert _mmap_growth(4 * size) >= 4 * size


def test_large_fit_memory_only_for_large_untuned_fits(monkeypatch):
    assert isinstance(_memory.large_fit_memory(1000), nullcontext)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for name in [n for n in os.environ if n.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    large = _memory.large_fit_memory(_memory.LARGE_FIT_PHASES)
    assert not isinstance(large, nullcontext)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert isinstance(_memory.large_fit_memory(_memory.LARGE_FIT_PHASES), nullcontext)


def _resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_freed_heap_goes_back_to_the_system_after_the_delay(monkeypatch):
    if _mmapped_bytes() is None:
        pytest.skip("needs glibc's mallinfo2")
    monkeypatch.setattr(_memory, "TRIM_DELAY", 0.05)
    size = 256 * 2**20
    with reuse_freed_memory():
        block = np.ones(size // 8)
        del block
    kept = _resident_bytes()  # freed inside, still resident for the next step
    deadline = time.monotonic() + 5.0
    while _resident_bytes() > kept - size // 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _resident_bytes() <= kept - size // 2
