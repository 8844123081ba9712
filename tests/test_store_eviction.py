"""Eviction alone (no Store): the CLOCK ring's hooks and walk, and the room planner."""

from __future__ import annotations

import contextlib

from plasma.records import ObjectLocation
from plasma.store.eviction import ClockRing, plan_room
from plasma.store.memory import Node, Segment
from plasma.store.objects import Io, ObjectRecord, State

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


def test_the_walk_gives_second_chances_and_passes_over_pinned_and_moving_objects() -> None:
    ring = ClockRing()
    records = {bytes([i]): rec(i, gen=i + 1, slot=i) for i in range(5)}
    for oid, r in records.items():
        ring.add(oid, r)
    access = bytearray(16)
    access[1] = 1  # object 1 was read since the hand last passed
    records[b"\x03"].io = Io.MOVING  # its pages move: never a candidate
    order, pinned_seen = walk(ring, access, pinned={3})  # object 2 (generation 3) is pinned
    assert order == [b"\x00", b"\x04", b"\x01"]  # the second chance comes after all others
    assert pinned_seen == 1 and access[1] == 0
    # those passed over went to the back: the next walk starts with the others
    assert list(ring.ring) == [b"\x00", b"\x03", b"\x04", b"\x01", b"\x02"]


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
