"""Spare segments made ahead of need (internal): so that no create waits for the kernel to
fault in fresh memory.

``serve --prefault`` says how much of each node's budget is populated before a create asks
for it (:data:`PREFAULT_MODES`):

* ``segment`` (the default): one spare segment of the segment size per node (the room its
  budget leaves, when less), prepared in the background at start and again each time the
  store takes it. A create that needs a larger segment (an object larger than
  ``--segment-size``) faults its own in, as with ``off``.
* ``budget``: each node's whole budget is one segment, prepared in the background at start
  (the store's segment size becomes the budget, so its first create on the node takes all
  of it). Plasma's model: the memory is committed at start and nothing is faulted in later;
  no room is left for pages moved in from other nodes (migrate, interleave). It falls back
  to ``segment`` when a node's free memory cannot hold its budget twice over.
* ``off``: a segment is faulted in when a create first needs it (the create waits).

:class:`Spares` sizes them (the room each node's budget leaves: its budget less its
segments and the pages moved in from other nodes) and asks the pool
(:meth:`plasma.segments.SegmentPool.prepare_spare`) to make them in its worker thread;
it never touches a segment itself, and never makes a spare the budget has no room for.
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from plasma.segments import SegmentPool
from plasma.store import Store

__all__ = ["PREFAULT_MODES", "Spares", "fits_in_free_memory"]

PREFAULT_MODES = ("segment", "budget", "off")

log = logging.getLogger("plasma.coordinator")


class Spares:
    """Keeps a spare ready on each node of ``store`` (see the module docstring); ``size``
    bytes (at most) each, None: the whole room of the node's budget."""

    def __init__(self, store: Store, pool: SegmentPool, size: int | None) -> None:
        self._store = store
        self._pool = pool
        self._size = size
        self.wanted = trio.Event()
        self.wanted.set()  # the first ones, at start

    def rooms(self) -> dict[int, int]:
        """Bytes of each node's budget that neither its segments nor pages moved in from
        other nodes take: what a spare may take, in whole pages."""
        page = self._pool.page_size
        return {
            node: (n["capacity"] - n["segment_bytes"] - n["placed_in"]) // page * page
            for node, n in self._store.stats()["nodes"].items()
        }

    def wanted_sizes(self) -> dict[int, int]:
        """The spare each node should get now: nodes with none ready or being prepared
        and with room for one."""
        ready, preparing = self._pool.spares(), set(self._pool.preparing())
        out = {}
        for node, room in self.rooms().items():
            size = room if self._size is None else min(self._size, room)
            if size > 0 and node not in ready and node not in preparing:
                out[node] = size
        return out

    async def run(self) -> None:
        """Prepare spares whenever ``wanted`` is set (at start, and by :meth:`check`)."""
        while True:
            await self.wanted.wait()
            self.wanted = trio.Event()
            for node, size in self.wanted_sizes().items():
                future = self._pool.prepare_spare(node, size)
                # (waits off the loop; at shutdown the pool's close waits for the worker)
                await trio.to_thread.run_sync(future.exception, abandon_on_cancel=True)
                # the room may have shrunk meanwhile (the store grew, pages moved in)
                self._pool.collect_spare(node, self.rooms()[node])

    def check(self) -> None:
        """After the store's work: prepare again once a spare was taken or dropped or a
        segment freed (cheap when nothing changed)."""
        if self._pool.spares_changed:
            self._pool.spares_changed = False
            self.wanted.set()


def fits_in_free_memory(budget: int, node: int, sysfs_root: str = "/") -> bool:
    """Whether ``node``'s free memory (``MemFree`` of its sysfs meminfo, else of
    ``/proc/meminfo``'s ``MemAvailable``) holds ``budget`` bytes with as much to spare."""
    root = Path(sysfs_root)
    for path, key in (
        (root / f"sys/devices/system/node/node{node}/meminfo", "MemFree:"),
        (root / "proc/meminfo", "MemAvailable:"),
    ):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split()
            if key in words and words[-1] == "kB":
                return 2 * budget <= int(words[words.index(key) + 1]) * 1024
    return False
