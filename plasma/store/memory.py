"""The store's memory: NUMA nodes with byte budgets, the segments carved from them, and
the fallback files beyond them.

:class:`Node` keeps one node's budget and what counts against it (its segments, the pages
of other nodes' objects moved to it) and the CLOCK ring of its evictable objects;
:class:`Segment` one shared-memory segment and its :class:`~plasma.allocator.Allocator`.
:class:`Memory` places ranges in a node's segments (growing a new segment within the
budget, dropping empty ones to make room), makes fallback segments when allowed, frees
ranges, and keeps the charges of pages moved to other nodes. A :class:`SegmentProvider`
(the coordinator's memfds, or a fake in tests) makes and frees segments. Which object goes
where, what is evicted and when memory is freed is the store's to decide: this module
never frees or allocates on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from plasma.allocator import Allocator
from plasma.errors import StoreFull
from plasma.store.eviction import ClockRing
from plasma.store.pages import page_charges, round_up
from plasma.store.slots import SlotTable

if TYPE_CHECKING:
    from plasma.store.objects import ObjectRecord


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

    def __init__(self, node_id: int, budget: int, slots: SlotTable | None = None) -> None:
        self.id = node_id
        self.budget = budget
        self.segments: list[Segment] = []
        self.segment_bytes = 0
        self.used = 0
        self.objects = 0
        self.shortage = ""  # why the provider last failed to make a segment (e.g. no hugepages)
        # sealed, unreferenced objects, in the order they became unreferenced (CLOCK's ring)
        # (linked through ``slots``, the store's table beside its directory)
        self.clock = ClockRing(slots)
        self.evicting = 0  # eviction victims waiting for their pin scan
        self.spill_demand = 0  # bytes creates and restores wait to have spilled
        self.placed_in = 0  # bytes of other nodes' objects whose pages were moved here

    def segment_room(self, page: int) -> int:
        """Bytes of the budget new segments may take (whole pages): what its segments and
        the pages of other nodes' objects moved here leave."""
        return (self.budget - self.segment_bytes - self.placed_in) // page * page

    def empty_segments(self) -> list[Segment]:
        """Its segments holding nothing (given back when the room is wanted)."""
        return [s for s in self.segments if s.alloc.free_bytes == s.size]


class Memory:
    """Every node's budget and segments, and the fallback files (see the module docstring).
    ``on_freed`` is told the id of each segment given back (readers may unmap it)."""

    def __init__(
        self,
        budgets: dict[int, int],
        provider: SegmentProvider,
        *,
        page_size: int,
        segment_size: int,
        alignment: int,
        fallback: bool,
        fallback_files: int,
        fallback_max: int | None,
        on_freed: Callable[[int], None],
        slots: SlotTable | None = None,
    ) -> None:
        self._provider = provider
        self._page = page_size
        self._segment_size = round_up(segment_size, page_size)
        self._alignment = alignment
        self._on_freed = on_freed
        self.nodes = {
            n: Node(n, b // page_size * page_size, slots) for n, b in sorted(budgets.items())
        }
        self.first = next(iter(self.nodes.values()))
        self.segments: dict[int, Segment] = {}
        self.used = 0  # bytes allocated within the budgets
        self.fallback = fallback
        self.fallback_files = fallback_files  # at most this many fallback segments
        self.fallback_max = fallback_max  # taking at most this many bytes (None: the disk)
        self.fallback_segments = 0
        self.fallback_bytes = 0  # of the fallback files
        self.fallback_used = 0  # bytes allocated in them

    def take(self, nd: Node, size: int) -> tuple[Segment, int] | None:
        """Place ``size`` aligned bytes in ``nd``'s segments, growing a new one if the budget
        allows; None when they do not fit without eviction."""
        while True:
            for seg in nd.segments:
                offset = seg.alloc.allocate(size)
                if offset is not None:
                    nd.used += size
                    self.used += size
                    return seg, offset
            if self.grow(nd, size) is None:
                return None

    def grow(self, nd: Node, size: int) -> Segment | None:
        """A new segment big enough for ``size`` within the budget, freeing empty segments
        of the node if that makes room; None if impossible (``nd.shortage`` says why when
        the provider refused)."""
        need = round_up(size, self._page)
        avail = nd.segment_room(self._page)
        if avail < need:
            empty = nd.empty_segments()
            if avail + sum(s.size for s in empty) < need:
                return None
            empty.sort(key=lambda s: s.size, reverse=True)
            for s in empty:
                self.drop_segment(s)
                avail = nd.segment_room(self._page)
                if avail >= need:
                    break
        seg_size = min(max(self._segment_size, need), avail)
        try:
            segment_id = self._provider.new_segment(nd.id, seg_size)
        except StoreFull as exc:
            nd.shortage = f": {exc}"
            return None
        nd.shortage = ""
        seg = Segment(segment_id, nd, seg_size, self._alignment)
        self.segments[segment_id] = seg
        nd.segments.append(seg)
        nd.segment_bytes += seg_size
        return seg

    def take_fallback(self, nd: Node, size: int) -> tuple[Segment, int] | None:
        """``size`` bytes in a new file-backed segment outside the budgets, when fallback is
        allowed and its bounds leave room; None otherwise (``nd.shortage`` says why)."""
        if not self.fallback:
            return None
        need = round_up(size, self._page)
        if self.fallback_segments >= self.fallback_files:
            nd.shortage = (
                f"; all {self.fallback_files} fallback files are in use (serve --fallback-files)"
            )
            return None
        if self.fallback_max is not None and self.fallback_bytes + need > self.fallback_max:
            nd.shortage = (
                f"; the fallback files take {self.fallback_bytes} of at most "
                f"{self.fallback_max} bytes (serve --fallback-max)"
            )
            return None
        try:
            segment_id = self._provider.new_fallback_segment(nd.id, need)
        except StoreFull as exc:
            nd.shortage = f": {exc}"
            return None
        seg = Segment(segment_id, nd, need, self._alignment, fallback=True)
        self.fallback_segments += 1
        self.fallback_bytes += need
        self.segments[segment_id] = seg
        offset = seg.alloc.allocate(size)
        assert offset is not None
        self.fallback_used += size
        return seg, offset

    def drop_segment(self, seg: Segment) -> None:
        """Give ``seg`` back to the provider (it must hold nothing)."""
        if seg.fallback:
            self.fallback_segments -= 1
            self.fallback_bytes -= seg.size
        else:
            nd = seg.node
            nd.segments.remove(seg)
            nd.segment_bytes -= seg.size
        del self.segments[seg.id]
        self._provider.free_segment(seg.id)
        self._on_freed(seg.id)

    def free_range(self, seg: Segment, offset: int, size: int) -> bool:
        """Free ``size`` bytes at ``offset`` of ``seg``; True when that is room within a
        budget (a fallback segment is given back once empty instead)."""
        seg.alloc.free(offset, size)
        if seg.fallback:
            self.fallback_used -= size
            if seg.alloc.free_bytes == seg.size:
                self.drop_segment(seg)
            return False
        seg.node.used -= size
        self.used -= size
        return True

    def charges(self, rec: ObjectRecord, nodes: tuple[int, ...]) -> dict[int, int]:
        """Bytes of ``rec``'s pages that land on each node of ``nodes`` other than its
        segment's (those count against that node's budget), when placed there evenly."""
        seg = self.segments[rec.loc.segment]
        return page_charges(seg.node.id, rec.loc.offset, rec.size, nodes, self._page)

    def charge(self, charges: dict[int, int], sign: int) -> None:
        """Count (``sign`` 1) or stop counting (-1) ``charges`` against their nodes."""
        for n, nbytes in charges.items():
            self.nodes[n].placed_in += sign * nbytes

    def nodes_of(self, rec: ObjectRecord) -> list[int]:
        """The nodes an object's pages are on (as asked)."""
        if rec.pages_on is not None:
            return list(rec.pages_on)
        return [self.segments[rec.loc.segment].node.id]

    def fallback_stats(self) -> dict[str, int | None]:
        return {
            "bytes": self.fallback_used,
            "segments": self.fallback_segments,
            "file_bytes": self.fallback_bytes,
            "max_files": self.fallback_files,
            "max_bytes": self.fallback_max,
        }
