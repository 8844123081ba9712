"""The ``put_large`` and ``put_first`` baselines, measured in the harness process in the same
run as the peers.

Four columns, each numpy's copy of the same float64 array as ``put_large`` puts:

* ``memcpy``: ``numpy.copyto`` in one thread into a pre-faulted array of the same size (numpy
  asks for transparent huge pages for an array this large: where the kernel gives them, its
  destination has 2 MiB pages);
* ``memcpy-shm``: the same copy into a pre-faulted shared mapping of a memfd, its page
  tables filled: the kind of memory a store's segment is (shared memory, whose pages are 4
  KiB unless the host enables huge pages for it, ``shmem_enabled``), so a put can be
  compared with a copy into the same kind of pages;
* ``memcpy-mt``: the same copy split into N contiguous chunks, one per thread of a
  :class:`ThreadedCopy` (N = the CPUs this process may run on), into a pre-faulted array;
* ``memcpy-fresh``: one thread into a fresh anonymous mapping, whose pages the copy faults in.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType

import numpy as np

from bench.scenarios import Metrics, filled_array, large_rounds

WAIT = 120.0  # seconds a copy may take before the caller gives up on its threads


class ThreadedCopy:
    """``numpy.copyto`` split into ``threads`` contiguous chunks, each copied by its own
    thread. The threads start once and wait at a barrier between copies."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._job: tuple[np.ndarray, np.ndarray] | None = None  # None at the barrier: stop
        self._go = threading.Barrier(threads + 1)
        self._done = threading.Barrier(threads + 1)
        self._workers = [
            threading.Thread(target=self._work, args=(i,), name=f"memcpy-{i}", daemon=True)
            for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    def copy(self, dest: np.ndarray, src: np.ndarray) -> None:
        """Copy ``src`` into ``dest`` (same shape, contiguous)."""
        self._job = (dest.reshape(-1), src.reshape(-1))
        self._go.wait(WAIT)
        self._done.wait(WAIT)
        self._job = None

    def close(self) -> None:
        """Stop the threads."""
        self._go.wait(WAIT)  # with no job: they return
        for worker in self._workers:
            worker.join()

    def __enter__(self) -> ThreadedCopy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _work(self, i: int) -> None:
        while True:
            self._go.wait()
            if self._job is None:
                return
            dest, src = self._job
            lo, hi = i * src.size // self.threads, (i + 1) * src.size // self.threads
            np.copyto(dest[lo:hi], src[lo:hi])
            self._done.wait()


def _gb_per_s(size: int, times: list[float]) -> Metrics:
    return {"GB_per_s": size / float(np.median(times)) / 1e9}


def memcpy(
    size: int,
    quick: bool,
    copy: Callable[[np.ndarray, np.ndarray], object] = np.copyto,
    shared: bool = False,
) -> Metrics:
    """``copy`` (one thread: ``np.copyto``), into a pre-faulted destination: an array, or
    with ``shared`` a shared mapping of a memfd."""
    array = filled_array(size)
    with _shared_mapping(size) if shared else contextlib.nullcontext() as mapping:
        dest = np.ones_like(array) if mapping is None else np.frombuffer(mapping, array.dtype)
        dest[:] = 1  # every page allocated and mapped
        times = []
        for _ in range(large_rounds(size, quick)):
            t0 = time.perf_counter()
            copy(dest, array)
            times.append(time.perf_counter() - t0)
        if not np.array_equal(dest, array):
            raise AssertionError("the copy left a different array")
        del dest  # (before the mapping closes)
    return _gb_per_s(size, times)


def _shared_mapping(size: int) -> mmap.mmap:
    """A shared mapping of a new memfd of ``size`` bytes (closed when its ``with`` ends)."""
    fd = os.memfd_create("bench-memcpy", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size)  # MAP_SHARED
    finally:
        os.close(fd)


def memcpy_fresh(size: int, quick: bool) -> Metrics:
    """One thread, into a new anonymous mapping per copy (every page faulted in by it)."""
    array = filled_array(size)
    times = []
    for _ in range(large_rounds(size, quick)):
        mapping = mmap.mmap(-1, size)
        dest = np.frombuffer(mapping, dtype=array.dtype)
        t0 = time.perf_counter()
        np.copyto(dest, array)
        times.append(time.perf_counter() - t0)
        del dest
        mapping.close()
    return _gb_per_s(size, times)


def threads() -> int:
    """The CPUs this process may run on: ``memcpy-mt``'s threads."""
    return len(os.sched_getaffinity(0))


def columns(copier: ThreadedCopy) -> dict[str, Callable[[int, bool], Metrics]]:
    """Each baseline column's measurement of one size (``quick``: fewer copies)."""
    return {
        "memcpy": memcpy,
        "memcpy-shm": functools.partial(memcpy, shared=True),
        "memcpy-mt": functools.partial(memcpy, copy=copier.copy),
        "memcpy-fresh": memcpy_fresh,
    }
