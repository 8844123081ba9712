"""Eviction alone (no Store): the CLOCK ring's hooks and walk, and the room planner."""

from __future__ import annotations

import contextlib
from array import array

import pytest

from plasma.records import ObjectLocation
from plasma.store.eviction import ClockRing, plan_room
from plasma.store.memory import Node, Segment
from plasma.store.objects import Io, ObjectRecord, State
from plasma.store.slots import SlotTable
from tests.helpers import BULK_PATHS, bulk_path

PAGE = 4096


def rec(n: int, *, size: int = 64, offset: int = 0, gen: int = 0, slot: int = -1) -> ObjectRecord:
    r = ObjectRecord(ObjectLocation(1, offset, size, 0, 0), size, 1, 0.0, State.SEALED)
    r.gen, r.slot = gen, slot
    return r


def walk(
    ring: ClockRing,
    access: bytearray | None = None,
    pinned: set[int] | None = None,
    copied: bool | None = None,
) -> tuple[list[bytes], int]:
    seen: list[int] = []
    with contextlib.closing(
        ring.candidates(
            access if access is not None else bytearray(16),
            lambda gens: {g for g in gens if g in (pinned or set())},
            lambda: seen.append(1),
            copied,
        )
    ) as w:
        return [oid for oid, _ in w], len(seen)


def test_the_ring_counts_bytes_and_copies_through_its_hooks() -> None:
    ring = ClockRing()
    a, b = rec(1, size=64), rec(2, size=128)
    b.spill = (1, None)  # type: ignore[assignment]  # (a copy on disk)
    ring.add(b"a", a)
    ring.add(b"b", b)
    assert (len(ring), ring.bytes, ring.copied) == (2, 192, 128)
    a.spill = (1, None)  # type: ignore[assignment]
    ring.gained_copy(b"a", a)
    ring.gained_copy(b"x", rec(9))  # not in the ring: nothing
    assert ring.copied == 192
    assert ring.remove(b"a", a) and not ring.remove(b"a", a)
    assert not ring.remove(b"b", rec(2))  # another record of the same id: not this one
    assert (len(ring), ring.bytes, ring.copied) == (1, 128, 128)


def published(n: int) -> tuple[ClockRing, dict[bytes, ObjectRecord]]:
    """A ring over a slot table where objects ``bytes([i])`` are published in slots ``i``."""
    table = SlotTable(16, lambda slot: bytes([slot]))
    records = {bytes([i]): rec(i, gen=i + 1, slot=i) for i in range(n)}
    table.records.update(enumerate(records.values()))
    return ClockRing(table), records


def test_the_walk_gives_second_chances_and_passes_over_pinned_and_moving_objects() -> None:
    ring, records = published(5)
    for oid, r in records.items():
        ring.add(oid, r)
    access = bytearray(16)
    access[1] = 1  # object 1 was read since the hand last passed
    records[b"\x03"].io = Io.MOVING  # its pages move: never a candidate
    order, pinned_seen = walk(ring, access, pinned={3})  # object 2 (generation 3) is pinned
    assert order == [b"\x00", b"\x04", b"\x01"]  # the second chance comes after all others
    assert pinned_seen == 1 and access[1] == 0
    # those passed over went to the back: the next walk starts with the others
    assert [oid for oid, _ in ring.items()] == [b"\x00", b"\x03", b"\x04", b"\x01", b"\x02"]


def test_the_walk_filters_by_copy_on_disk() -> None:
    ring = ClockRing()
    copied, plain = rec(1), rec(2)
    copied.spill = (1, None)  # type: ignore[assignment]
    for oid, r in ((b"c", copied), (b"p", plain)):
        ring.add(oid, r)
    assert walk(ring, copied=True)[0] == [b"c"]
    assert walk(ring, copied=False)[0] == [b"p"]
    assert walk(ring)[0] == [b"c", b"p"]


def test_plan_room_takes_the_shortest_run_that_frees_a_contiguous_range() -> None:
    nd = Node(0, budget=PAGE)
    seg = Segment(1, nd, PAGE, 64)
    nd.segments.append(seg)
    nd.segment_bytes = PAGE
    offsets = [seg.alloc.allocate(1024) for _ in range(4)]  # full: 4 x 1 KiB
    recs = [(bytes([i]), rec(i, size=1024, offset=o)) for i, o in enumerate(offsets)]
    # candidates 0 and 2 are not adjacent: 2 KiB needs 0 and 1 (or 2 and 3)
    walk_order = [recs[0], recs[2], recs[1], recs[3]]
    plan = plan_room(nd, 2048, PAGE, {1: seg}, iter(walk_order))
    assert [oid for oid, _ in plan] == [b"\x00", b"\x02", b"\x01"]  # 1 joins 0 (and 2)
    assert plan_room(nd, 8192, PAGE, {1: seg}, iter(walk_order)) == []  # nothing would do
    seg.alloc.free(offsets[3], 1024)  # a free neighbour counts too
    plan = plan_room(nd, 2048, PAGE, {1: seg}, iter([recs[2], recs[0]]))
    assert [oid for oid, _ in plan] == [b"\x02"]


def test_members_with_and_without_a_slot_walk_in_order_and_leave_by_identity() -> None:
    ring, records = published(3)
    stray = rec(9)  # (no slot: not published)
    ring.add(b"\x01", records[b"\x01"])
    ring.add(b"s", stray)
    ring.add(b"\x00", records[b"\x00"])
    assert [oid for oid, _ in ring.items()] == [b"\x01", b"\x00", b"s"]  # (slotless last)
    assert ring.holds(b"s", stray) and not ring.holds(b"\x02", records[b"\x02"])
    with pytest.raises(AssertionError):
        ring.add(b"\x01", records[b"\x01"])  # (twice: its bytes would count twice)
    assert not ring.remove(b"\x00", rec(0, slot=0))  # another record in that slot's place
    assert ring.remove(b"\x01", records[b"\x01"]) and ring.remove(b"s", stray)
    assert [oid for oid, _ in ring.items()] == [b"\x00"] and (len(ring), ring.bytes) == (1, 64)


def test_a_walk_fails_loudly_if_the_ring_changes_under_it() -> None:
    ring, records = published(3)
    for oid, r in records.items():
        ring.add(oid, r)
    items = ring.items()
    next(items)
    ring.remove(b"\x01", records[b"\x01"])
    with pytest.raises(RuntimeError):
        next(items)


@pytest.mark.parametrize("path", BULK_PATHS)
def test_a_rebuild_keeps_each_rings_order_and_puts_those_left_out_after_them(path: str) -> None:
    table = SlotTable(8, lambda slot: bytes([slot]))
    rings = [ClockRing(table), ClockRing(table)]
    records = {bytes([i]): rec(i, gen=i + 1, slot=i) for i in range(6)}
    table.records.update(enumerate(records.values()))
    table.owner[3] = 7  # (a compact object's column moves with its slot)
    for i in (4, 0, 2):
        rings[0].add(bytes([i]), records[bytes([i])])
    for i in (5, 1):
        rings[1].add(bytes([i]), records[bytes([i])])
    new_slots = [10, 11, -1, 13, 14, 15]  # object 2 is left without a slot
    for r, slot in zip(records.values(), new_slots, strict=True):
        r.slot = slot
    with bulk_path(path):
        table.move(16, array("q", [*new_slots, -1, -1]), lambda slot: bytes([slot]))
    table.id_of = lambda slot: bytes([slot - 10])
    assert [oid for oid, _ in rings[0].items()] == [b"\x04", b"\x00", b"\x02"]
    assert [oid for oid, _ in rings[1].items()] == [b"\x05", b"\x01"]
    assert list(rings[0].overflow) == [b"\x02"]
    assert table.records[14] is records[b"\x04"] and 2 not in table.records
    assert table.owner[13] == 7 and table.owner.count(7) == 1 and len(table.owner) == 16
    assert rings[0].remove(b"\x00", records[b"\x00"]) and rings[0].remove(b"\x02", records[b"\x02"])
    assert [oid for oid, _ in rings[0].items()] == [b"\x04"] and rings[0].bytes == 64
