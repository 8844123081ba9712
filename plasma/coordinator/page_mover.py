"""The coordinator's page I/O (internal): copies objects' bytes to their replicas and moves
segment pages between NUMA nodes, in worker threads off the trio loop.

The decisions (which object goes where, which range of which segment, which policy) are the
store's (:class:`~plasma.store.Copy` and :class:`~plasma.store.Place` events); this module
only moves bytes and pages and reports back with :meth:`plasma.store.Store.placed`. It must
never choose a target nor change what the store records. Segment fds are duplicated for the
duration of each move, so a segment the store frees meanwhile stays valid until it ends.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import trio

from plasma import errors
from plasma.linux import memfd, numa
from plasma.segments import SegmentPool
from plasma.store import Copy, Place, Store

__all__ = ["PageMover"]

log = logging.getLogger("plasma.coordinator")


class PageMover:
    """Page I/O for one store. ``bind`` False (``serve --no-bind``): pages stay where they
    are, and a :class:`~plasma.store.Place` only tells the store it is done."""

    def __init__(self, store: Store, pool: SegmentPool, *, bind: bool) -> None:
        self._store = store
        self._pool = pool
        self._bind = bind

    async def copy(self, event: Copy, deliver: Callable[[], None]) -> None:
        """Copy an object's bytes to its replicas (a worker thread: it may be gigabytes);
        then ``deliver`` what the store made of it."""
        error: str | None = None
        fds: list[int] = []
        try:
            source = self._pool.get(event.segment)
            fds.append(os.dup(source.fd))
            targets = []
            for loc in event.targets:
                seg = self._pool.get(loc.segment)
                fds.append(os.dup(seg.fd))
                targets.append((fds[-1], loc.offset, seg.page_size))
            await trio.to_thread.run_sync(
                memfd.copy_ranges, fds[0], event.offset, source.page_size, targets, event.length
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("copying segment %d to replicas failed: %s", event.segment, exc)
        finally:
            for fd in fds:
                os.close(fd)
        self._store.placed(event.token, error, now=time.monotonic())
        deliver()

    async def place(self, event: Place, deliver: Callable[[], None]) -> None:
        """Move the pages of a range of a segment (a worker thread: it may be gigabytes);
        then ``deliver`` what the store made of it."""
        error: str | None = None
        if not self._bind:
            self._store.placed(event.token, now=time.monotonic())  # only the accounting moves
            deliver()
            return
        mode = numa.MPOL_INTERLEAVE if event.mode == "interleave" else numa.MPOL_BIND
        home = None
        try:
            seg = self._pool.get(event.segment)
            home = seg.node
            for node in event.nodes:  # the room of the nodes its pages go to shrank
                if node != home:
                    self._pool.drop_spare(node)
            fd = os.dup(seg.fd)
            try:
                left = await trio.to_thread.run_sync(
                    numa.place_range,
                    fd,
                    event.start,
                    event.length,
                    seg.page_size,
                    mode,
                    event.nodes,
                )
            finally:
                os.close(fd)
            if left:
                log.warning("%d pages of segment %d did not move to %s", left, seg.id, event.nodes)
        except Exception as exc:  # (reported, whatever it is: the store waits for every move)
            if event.nodes == [home] and isinstance(exc, errors.Unsupported):
                pass  # a kernel without NUMA: every page is on the one node already
            else:
                error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "moving pages of segment %d to %s failed: %s", event.segment, event.nodes, exc
                )
        self._store.placed(event.token, error, now=time.monotonic())
        deliver()
