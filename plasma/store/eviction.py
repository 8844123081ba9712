"""Eviction: each node's CLOCK ring of candidates, and the shortest run of them that makes
room for a request.

The store calls the ring through hooks, as Arrow Plasma's and Ray's ``EvictionPolicy``:
:meth:`ClockRing.add` when a sealed object loses its last reference (end of access),
:meth:`ClockRing.remove` when one gains a reference or goes (begin of access, removal),
:meth:`ClockRing.candidates` to walk the ring, :func:`plan_room` to choose victims for
a size and :func:`more_victims` for headroom beyond it. CLOCK: candidates in the order they
lost their last reference; one whose access byte a reader set since the hand last passed
gets a second chance (the byte is cleared; it comes after all others), one pinned now is
passed over; those passed over go to the back.

This module chooses; it never evicts, frees or touches an object's state: the store does,
with the victims it returns.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from plasma.store.objects import Io
from plasma.store.pages import round_up

if TYPE_CHECKING:
    from plasma.store.memory import Node, Segment
    from plasma.store.objects import ObjectRecord

CLOCK_CHUNK = 64  # candidates per pin scan in a walk (doubling per chunk)

Candidate = tuple[bytes, "ObjectRecord"]


class ClockRing:
    """One node's sealed objects that no reference holds, in CLOCK order, with their
    allocated bytes (``bytes``) and those of the ones with a copy on disk (``copied``:
    evicting them loses nothing)."""

    __slots__ = ("bytes", "copied", "ring")

    def __init__(self) -> None:
        self.ring: OrderedDict[bytes, ObjectRecord] = OrderedDict()
        self.bytes = 0
        self.copied = 0

    def __len__(self) -> int:
        return len(self.ring)

    def holds(self, oid: bytes, rec: ObjectRecord) -> bool:
        return self.ring.get(oid) is rec

    def records(self) -> Iterable[ObjectRecord]:
        return self.ring.values()

    def add(self, oid: bytes, rec: ObjectRecord) -> None:
        """``rec`` lost its last reference: at the back of the ring."""
        self.ring[oid] = rec
        self.bytes += rec.size
        if rec.spill is not None:
            self.copied += rec.size

    def remove(self, oid: bytes, rec: ObjectRecord) -> bool:
        """``rec`` gained a reference or goes: out of the ring (False: it was not in it;
        another record of the same id never is taken out)."""
        if self.ring.get(oid) is not rec:
            return False
        del self.ring[oid]
        self.bytes -= rec.size
        if rec.spill is not None:
            self.copied -= rec.size
        return True

    def gained_copy(self, oid: bytes, rec: ObjectRecord) -> None:
        """``rec`` (its ``spill`` just set) has a copy on disk now."""
        if self.holds(oid, rec):
            self.copied += rec.size

    def candidates(
        self,
        access: Any,
        pinned_of: Callable[[Iterable[int]], set[int]],
        on_pinned: Callable[[], None],
        copied: bool | None = None,
    ) -> Generator[Candidate, None, None]:
        """Eviction candidates in CLOCK order (see the module docstring). ``access`` are the
        directory's access bytes (by slot), ``pinned_of`` says which of some generations a
        reader pins (one pass over the pin tables per chunk of candidates: a walk usually
        ends within its first), ``on_pinned`` is told when a pinned one is passed over.
        ``copied`` True: only objects with a copy on disk; False: only those without one
        (one being written has none yet: the store walks for a batch only when none is being
        written). Objects whose pages move are never candidates. The ring must not change
        during the walk; close the generator to end it."""
        passed: list[bytes] = []
        second: list[Candidate] = []
        items = iter(self.ring.items())
        chunk = CLOCK_CHUNK
        try:
            while batch := list(itertools.islice(items, chunk)):
                chunk *= 2
                pinned = pinned_of(rec.gen for _, rec in batch if rec.gen)
                for oid, rec in batch:
                    if rec.io is Io.MOVING:
                        continue
                    if copied is not None and (rec.spill is not None) is not copied:
                        continue
                    slot = rec.slot
                    if slot >= 0 and access[slot]:
                        access[slot] = 0
                        passed.append(oid)
                        second.append((oid, rec))
                        continue
                    if rec.gen and rec.gen in pinned:
                        passed.append(oid)
                        on_pinned()
                        continue
                    yield oid, rec
            yield from second
        finally:
            ring = self.ring
            for oid in passed:
                if oid in ring:
                    ring.move_to_end(oid)


def plan_room(
    nd: Node, size: int, page: int, segments: dict[int, Segment], walk: Iterator[Candidate]
) -> list[Candidate]:
    """The shortest run of ``walk``'s candidates (of node ``nd``) whose eviction makes room
    for ``size`` bytes: a contiguous free run in one segment, or budget for a new segment
    once the segments it empties are dropped; empty when the whole walk would not (or a new
    segment would fit already: evicting cannot help where the provider refused).

    Simulated on the side: each candidate's range is merged with its free neighbours (the
    allocator's free ranges and earlier candidates), so the common case costs as many steps
    as objects evicted."""
    need = round_up(size, page)
    room = nd.segment_room(page) + sum(s.size for s in nd.empty_segments())  # for new segments
    if room >= need:
        return []
    runs_by_start: dict[Segment, dict[int, int]] = {}  # simulated runs: start -> end
    runs_by_end: dict[Segment, dict[int, int]] = {}  # end -> start
    freed: dict[Segment, int] = {}
    plan: list[Candidate] = []
    for oid, rec in walk:
        seg, lo = segments[rec.loc.segment], rec.loc.offset
        hi = lo + rec.size
        plan.append((oid, rec))
        by_start = runs_by_start.setdefault(seg, {})
        by_end = runs_by_end.setdefault(seg, {})
        left = by_end.pop(lo, None)
        if left is not None:
            del by_start[left]
            lo = left
        else:
            left = seg.alloc.free_before(lo)
            if left is not None:
                lo = left
        right = by_start.pop(hi, None)
        if right is not None:
            del by_end[right]
            hi = right
        else:
            right = seg.alloc.free_after(hi)
            if right is not None:
                hi += right
        by_start[lo] = hi
        by_end[hi] = lo
        if hi - lo >= size:
            return plan
        freed[seg] = freed.get(seg, 0) + rec.size
        if seg.alloc.free_bytes + freed[seg] == seg.size:
            room += seg.size
            if room >= need:
                return plan
    return []


def more_victims(
    walk: Iterator[Candidate], headroom: int, plan: list[Candidate]
) -> list[Candidate]:
    """Candidates of ``walk`` beyond ``plan`` until the two free ``headroom`` bytes: a round
    of eviction waits a grace period, so it frees room for the requests that follow too."""
    more: list[Candidate] = []
    headroom -= sum(rec.size for _, rec in plan)
    for oid, rec in walk:
        if headroom <= 0:
            break
        more.append((oid, rec))
        headroom -= rec.size
    return more
