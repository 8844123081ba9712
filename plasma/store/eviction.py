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
from array import array
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from plasma.store.objects import Io
from plasma.store.pages import round_up
from plasma.store.slots import END, NOT_LINKED, SlotTable, relink

if TYPE_CHECKING:
    from plasma.store.memory import Node, Segment
    from plasma.store.objects import ObjectRecord

CLOCK_CHUNK = 64  # candidates per pin scan in a walk (doubling per chunk)

Candidate = tuple[bytes, "ObjectRecord"]


class ClockRing:
    """One node's sealed objects that no reference holds, in CLOCK order, with their
    allocated bytes (``bytes``) and those of the ones with a copy on disk (``copied``:
    evicting them loses nothing).

    Members with a directory slot are a doubly linked list through the store's
    :class:`~plasma.store.slots.SlotTable` (no Python object per member, and no record for
    a compact one until a walk reaches it); the rare ones
    without a slot (not published, or left out by a directory rebuild) are in ``overflow``
    and come after them in a walk. A record is only ever in its own node's ring."""

    __slots__ = ("_changes", "_head", "_linked", "_slots", "_tail", "bytes", "copied", "overflow")

    def __init__(self, slots: SlotTable | None = None) -> None:
        self._slots = SlotTable(0) if slots is None else slots
        self._slots.rings.append(self)
        self._head = self._tail = END
        self._linked = 0
        self._changes = 0  # (a walk fails loudly if the ring changes under it)
        self.overflow: OrderedDict[bytes, ObjectRecord] = OrderedDict()
        self.bytes = 0
        self.copied = 0

    def __len__(self) -> int:
        return self._linked + len(self.overflow)

    def holds(self, oid: bytes, rec: ObjectRecord) -> bool:
        if self.overflow.get(oid) is rec:
            return True
        slot = rec.slot
        t = self._slots
        return slot >= 0 and t.prev[slot] != NOT_LINKED and t.records.get(slot) is rec

    def items(self) -> Generator[Candidate, None, None]:
        """Its members in CLOCK order (the ring must not change meanwhile)."""
        t = self._slots
        changes = self._changes
        slot = self._head
        while slot != END:
            rec = t.record(slot)  # (materialized, if compact)
            nxt = t.next[slot]
            yield t.id_of(slot), rec
            if self._changes != changes:
                raise RuntimeError("the CLOCK ring changed during a walk")
            slot = nxt
        yield from self.overflow.items()

    def records(self) -> Iterator[ObjectRecord]:
        return (rec for _, rec in self.items())

    def add(self, oid: bytes, rec: ObjectRecord) -> None:
        """``rec`` lost its last reference: at the back of the ring."""
        slot = rec.slot
        if slot >= 0:
            t = self._slots
            if t.records.get(slot) is not rec or t.prev[slot] != NOT_LINKED:
                raise AssertionError(f"slot {slot} is not free to join a ring")
            self._link(slot)
        else:
            if oid in self.overflow:
                raise AssertionError(f"object {oid.hex()} is in the ring already")
            self.overflow[oid] = rec
        self._changes += 1
        self.bytes += rec.size
        if rec.spill is not None:
            self.copied += rec.size

    def remove(self, oid: bytes, rec: ObjectRecord) -> bool:
        """``rec`` gained a reference or goes: out of the ring (False: it was not in it;
        another record of the same id never is taken out)."""
        slot = rec.slot
        t = self._slots
        if slot >= 0 and t.prev[slot] != NOT_LINKED and t.records.get(slot) is rec:
            before, after = t.prev[slot], t.next[slot]  # (unlinked: on every get and delete)
            if before == END:
                self._head = after
            else:
                t.next[before] = after
            if after == END:
                self._tail = before
            else:
                t.prev[after] = before
            t.prev[slot] = NOT_LINKED
            t.next[slot] = END
            self._linked -= 1
        elif self.overflow and self.overflow.get(oid) is rec:
            del self.overflow[oid]
        else:
            return False
        self._changes += 1
        self.bytes -= rec.size
        if rec.spill is not None:
            self.copied -= rec.size
        return True

    def gained_copy(self, oid: bytes, rec: ObjectRecord) -> None:
        """``rec`` (its ``spill`` just set) has a copy on disk now."""
        if self.holds(oid, rec):
            self.copied += rec.size

    def moved(
        self,
        new_of_old: array[int],
        old_next: array[int],
        old_records: dict[int, ObjectRecord],
        old_id: Callable[[int], bytes],
    ) -> None:
        """The directory was rebuilt (:meth:`SlotTable.move`: the table's arrays are new):
        relink the members in their order, those left without a slot into ``overflow``."""
        t = self._slots
        self._head, self._tail, self._linked, left = relink(
            self._head, old_next, new_of_old, t.prev, t.next
        )
        self._changes += 1
        for old in left:
            self.overflow[old_id(old)] = old_records[old]

    def _link(self, slot: int) -> None:
        t = self._slots
        t.prev[slot] = self._tail
        t.next[slot] = END
        if self._tail == END:
            self._head = slot
        else:
            t.next[self._tail] = slot
        self._tail = slot
        self._linked += 1

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
        passed: list[Candidate] = []
        second: list[Candidate] = []
        items = self.items()
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
                        passed.append((oid, rec))
                        second.append((oid, rec))
                        continue
                    if rec.gen and rec.gen in pinned:
                        passed.append((oid, rec))
                        on_pinned()
                        continue
                    yield oid, rec
            yield from second
        finally:
            items.close()
            for oid, rec in passed:  # (to the back, if still in the ring)
                if self.remove(oid, rec):
                    self.add(oid, rec)


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
