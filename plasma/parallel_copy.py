"""Copies of large buffers in parallel threads (internal): how ``put`` fills big objects.

numpy's copy releases the GIL, so a large copy split into contiguous chunks runs in several
threads at once: the caller's thread copies the first chunk, daemon threads of a process-wide
pool the others, each pinned to the CPUs of the destination's NUMA node (those the caller may
use; all of those when the node has none of them). Copies smaller than two chunks of
``MIN_CHUNK`` bytes stay in the caller's thread, with no overhead. The pool starts its threads
when first needed; a forked child gets a new, empty pool (the parent's threads do not exist
there).

The number of threads is ``copy_threads`` of :func:`plasma.connect` / :func:`plasma.aio.connect`,
else the environment variable ``PLASMA_COPY_THREADS``, else the CPUs this thread may use, at
most ``MAX_DEFAULT_THREADS``; 1 copies in the caller's thread only.
"""

from __future__ import annotations

import atexit
import itertools
import os
import queue
import threading
from collections.abc import Collection
from typing import Any

import numpy as np

from plasma.errors import BadRequest
from plasma.linux.affinity import get_affinity, set_affinity

ENV_THREADS = "PLASMA_COPY_THREADS"
MAX_DEFAULT_THREADS = 8  # memory bandwidth, not CPUs, limits a copy beyond a few threads
MIN_CHUNK = 8 << 20  # a thread hand-off costs tens of µs; 8 MiB take about 1 ms to copy
ALIGN = 64 << 10  # chunk boundaries: multiples of every base page size in use

__all__ = ["ENV_THREADS", "copy", "copy_many", "copy_threads", "plan_chunks", "shutdown"]


def copy_threads(requested: int | None = None) -> int:
    """The number of copy threads: ``requested``, else ``$PLASMA_COPY_THREADS``, else the CPUs
    the calling thread may use (at most ``MAX_DEFAULT_THREADS``). BadRequest unless >= 1."""
    if requested is None:
        text = os.environ.get(ENV_THREADS, "").strip()
        if not text:
            return max(1, min(len(get_affinity()), MAX_DEFAULT_THREADS))
        try:
            requested = int(text)
        except ValueError:
            raise BadRequest(f"{ENV_THREADS} must be a whole number >= 1, got {text!r}") from None
    if type(requested) is not int or requested < 1:
        raise BadRequest(f"copy_threads must be a whole number >= 1, got {requested!r}")
    return requested


def plan_chunks(
    nbytes: int, parts: int, min_chunk: int = MIN_CHUNK, align: int = ALIGN
) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``nbytes`` in order: at most ``parts`` of them, none
    smaller than ``min_chunk`` unless there is just one, every start a multiple of ``align``."""
    if nbytes < 0 or parts < 1 or align < 1 or min_chunk < align or min_chunk % align:
        raise ValueError(
            f"plan_chunks needs nbytes >= 0, parts >= 1 and min_chunk a positive multiple of "
            f"align, got {nbytes}, {parts}, {min_chunk}, {align}"
        )
    count = max(1, min(parts, nbytes // min_chunk))
    step = nbytes // count // align * align  # >= min_chunk when count > 1
    bounds = [i * step for i in range(count)] + [nbytes]
    return list(itertools.pairwise(bounds))


def copy(dst: Any, src: Any, threads: int, cpus: Collection[int] = ()) -> None:
    """Copy the bytes of ``src`` into ``dst`` (contiguous buffers of one size, ``dst``
    writable) in up to ``threads`` threads, those of the pool pinned to ``cpus`` (the
    destination's node) as far as the caller may use them. Returns, or raises the first
    chunk's error, once every chunk is done."""
    copy_many([(dst, src)], threads, cpus)


def copy_many(pairs: list[tuple[Any, Any]], threads: int, cpus: Collection[int] = ()) -> None:
    """:func:`copy` of each ``(dst, src)`` pair, all in one go: their bytes, taken in order
    as one run, are split into chunks as one buffer's would be (a chunk may span the end of
    one pair and the start of the next), so many buffers smaller than a chunk (the tensors
    of a state dict) are copied in parallel too."""
    arrays = [(np.frombuffer(dst, np.uint8), np.frombuffer(src, np.uint8)) for dst, src in pairs]
    for out, data in arrays:
        if out.size != data.size:
            raise ValueError(f"copy of {data.size} bytes into a buffer of {out.size}")
    total = sum(out.size for out, _ in arrays)
    if threads > 1 and total >= 2 * MIN_CHUNK:
        allowed = frozenset(get_affinity())
        pinned = frozenset(cpus) & allowed or allowed
        # a thread per CPU the caller may use: the pool's on the node, and the caller's own
        chunks = plan_chunks(total, min(threads, len(allowed), len(pinned) + 1))
        if len(chunks) > 1:
            _pool.run([_pieces(arrays, start, stop) for start, stop in chunks], pinned)
            return
    for out, data in arrays:
        _copy_chunk(out, data)


_Pieces = list[tuple[np.ndarray, np.ndarray]]


def _pieces(arrays: _Pieces, start: int, stop: int) -> _Pieces:
    """The parts of ``arrays`` (taken in order as one run of bytes) in ``[start, stop)``."""
    pieces = []
    pos = 0
    for out, data in arrays:
        lo, hi = max(start, pos), min(stop, pos + out.size)
        if lo < hi:
            pieces.append((out[lo - pos : hi - pos], data[lo - pos : hi - pos]))
        pos += out.size
    return pieces


def _copy_chunk(dst: np.ndarray, src: np.ndarray) -> None:
    np.copyto(dst, src)  # a memcpy that releases the GIL


_Task = tuple[_Pieces, frozenset[int], "queue.SimpleQueue[BaseException | None]"]


class CopyPool:
    """Daemon threads copying chunks for :func:`copy`, started as needed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []

    def run(self, chunks: list[_Pieces], cpus: frozenset[int]) -> None:
        """Copy ``chunks`` (each a list of (dst, src) pieces): the first in this thread, the
        rest in the pool's threads pinned to ``cpus``; raise the first error once all are
        done."""
        done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._submit([(pieces, cpus, done) for pieces in chunks[1:]])
        error: BaseException | None = None
        try:
            _copy_pieces(chunks[0])
        except BaseException as exc:
            error = exc
        pending = len(chunks) - 1
        while pending:  # even when interrupted: the threads write into dst until they finish
            try:
                failed = done.get()
            except BaseException as exc:
                error = error or exc
                continue
            pending -= 1
            error = error or failed
        if error is not None:
            raise error

    def _submit(self, tasks: list[_Task]) -> None:
        """Queue ``tasks`` with a thread running for each (under the lock: a shutdown stops
        the threads only after the tasks queued before it)."""
        with self._lock:
            while len(self._workers) < len(tasks):
                worker = threading.Thread(
                    target=_work,
                    args=(self._tasks,),
                    name=f"plasma-copy-{len(self._workers) + 1}",
                    daemon=True,
                )
                worker.start()
                self._workers.append(worker)
            for task in tasks:
                self._tasks.put(task)

    def shutdown(self) -> None:
        """Stop the threads (after the chunks queued) and wait for them; later copies start
        new ones."""
        with self._lock:
            tasks, workers = self._tasks, self._workers
            self._tasks, self._workers = queue.SimpleQueue(), []
        for _ in workers:
            tasks.put(None)
        for worker in workers:
            worker.join()


def _work(tasks: queue.SimpleQueue[_Task | None]) -> None:
    pinned: frozenset[int] | None = None  # inherited from the thread that started this one
    while (task := tasks.get()) is not None:
        pieces, cpus, done = task
        del task
        try:
            if cpus != pinned:
                set_affinity(cpus)  # pid 0: this thread only
                pinned = cpus
            _copy_pieces(pieces)
        except BaseException as exc:
            done.put(exc)
        else:
            done.put(None)
        del pieces  # hold no view of the buffers while idle


def _copy_pieces(pieces: _Pieces) -> None:
    for dst, src in pieces:
        _copy_chunk(dst, src)


_pool = CopyPool()


def shutdown() -> None:
    """Stop the pool's threads (at exit, and for tests)."""
    _pool.shutdown()


def _after_fork_in_child() -> None:
    global _pool
    _pool = CopyPool()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown)
