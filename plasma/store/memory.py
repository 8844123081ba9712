"""The store's memory: NUMA nodes with byte budgets, and the segments carved from them.

:class:`Node` keeps one node's budget and what counts against it (its segments, the pages
of other nodes' objects moved to it) and the CLOCK ring of its evictable objects;
:class:`Segment` one shared-memory segment and its :class:`~plasma.allocator.Allocator`.
A :class:`SegmentProvider` (the coordinator's memfds, or a fake in tests) makes and frees
segments. Page and alignment rounding is :mod:`plasma.store.pages`'. This module holds records
and arithmetic only: which object goes where, and when memory is freed, is the store's to
decide; it must never free or allocate on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from plasma.allocator import Allocator
from plasma.store.eviction import ClockRing

if TYPE_CHECKING:
    pass


class SegmentProvider(Protocol):
    """Creates and frees the shared-memory segments objects are carved from."""

    def new_segment(self, node: int, size: int) -> int:
        """A new segment of ``size`` bytes (a page multiple) on ``node``; returns its id.

        May raise :class:`~plasma.errors.PlasmaError` (StoreFull, Unsupported).
        """
        ...

    def free_segment(self, segment: int) -> None: ...

    def new_fallback_segment(self, node: int, size: int) -> int:
        """A file-backed segment of ``size`` bytes with every block allocated (only called
        with ``fallback``); raises StoreFull when the disk cannot hold it."""
        ...


class Segment:
    __slots__ = ("alloc", "fallback", "id", "node", "size")

    def __init__(
        self, segment_id: int, node: Node, size: int, alignment: int, fallback: bool = False
    ) -> None:
        self.id = segment_id
        self.node = node
        self.size = size
        self.alloc = Allocator(size, alignment)
        self.fallback = fallback  # file-backed, outside the node's budget


class Node:
    __slots__ = (
        "budget",
        "clock",
        "evicting",
        "id",
        "objects",
        "placed_in",
        "segment_bytes",
        "segments",
        "shortage",
        "spill_demand",
        "used",
    )

    def __init__(self, node_id: int, budget: int) -> None:
        self.id = node_id
        self.budget = budget
        self.segments: list[Segment] = []
        self.segment_bytes = 0
        self.used = 0
        self.objects = 0
        self.shortage = ""  # why the provider last failed to make a segment (e.g. no hugepages)
        # sealed, unreferenced objects, in the order they became unreferenced (CLOCK's ring)
        self.clock = ClockRing()
        self.evicting = 0  # eviction victims waiting for their pin scan
        self.spill_demand = 0  # bytes creates and restores wait to have spilled
        self.placed_in = 0  # bytes of other nodes' objects whose pages were moved here
