"""The decisions the store's parts return, alone (no Store): may pages move and where, what
a finished move answers, what to spill and where to restore, which waiting creates go
next, what a pin scan frees or keeps, eviction headroom, and what store_full and
``holders()`` say."""

from __future__ import annotations

import pytest

from plasma.errors import BadRequest, ObjectNotFound, PlasmaError, StoreFull
from plasma.records import CreateItem, ObjectLocation, SpillEntry
from plasma.store.dying import DyingSet
from plasma.store.eviction import more_victims
from plasma.store.holders import Held, Holding, holders_report, no_space_text
from plasma.store.memory import Node, Segment
from plasma.store.moves import (
    MoveJob,
    Placements,
    check_movable,
    check_room,
    copied_answer,
    copies_wanted,
    moved_answer,
)
from plasma.store.objects import Io, ObjectRecord, State, object_info
from plasma.store.spill import SpillBook, adopted_record, restore_order
from plasma.store.waiters import CreateWaiter, Waiters

OID = bytes(range(20))


def rec(
    size: int = 64, state: State = State.SEALED, segment: int = 1, gen: int = 0
) -> ObjectRecord:
    r = ObjectRecord(ObjectLocation(segment, 0, size, 0, 0), size, 7, 1.0, state)
    r.gen = gen
    return r


def segments(fallback: bool = False) -> dict[int, Segment]:
    seg = Segment(1, Node(0, 1 << 20), 1 << 16, 64, fallback=fallback)
    return {1: seg}


# ---------------------------------------------------------------- page moves


def test_only_a_sealed_object_in_a_numa_segment_with_no_io_may_move() -> None:
    check_movable(OID, rec(), segments())  # (nothing refused)
    refusals = [
        (None, segments(), ObjectNotFound, "not found"),
        (rec(state=State.CREATED), segments(), ObjectNotFound, "not sealed"),
        (rec(state=State.DELETED), segments(), ObjectNotFound, "not found"),
        (rec(state=State.SPILLED), segments(), BadRequest, "spilled to disk"),
        (rec(), segments(fallback=True), BadRequest, "file-backed fallback"),
        (rec(state=State.EVICTING), segments(), BadRequest, "being evicted"),
    ]
    for r, segs, error, text in refusals:
        with pytest.raises(error, match=text):
            check_movable(OID, r, segs)
    busy = rec()
    busy.io = Io.SPILLING
    with pytest.raises(BadRequest, match="being moved or written already"):
        check_movable(OID, busy, segments())


def test_a_move_needs_room_on_each_node_beyond_what_the_object_charges_it_already() -> None:
    room = {1: 4096, 2: 0}.__getitem__
    check_room(OID, {}, {1: 4096}, room)
    check_room(OID, {2: 8192}, {2: 8192}, room)  # (its own share: no new room needed)
    with pytest.raises(StoreFull, match=r"node 1 has no room for 8192 bytes .*\(4096 bytes"):
        check_room(OID, {}, {1: 8192}, room)
    with pytest.raises(StoreFull, match="node 2"):
        check_room(OID, {2: 4096}, {2: 8192}, room)


def test_copies_are_wanted_where_the_object_has_none() -> None:
    assert copies_wanted([3, 1, 2, 3], home=1, replicas=(2,)) == [3]
    assert copies_wanted([1], home=1, replicas=()) == []


def test_a_finished_move_or_copy_says_where_the_object_is_or_why_not() -> None:
    assert moved_answer(OID, [1], None, present=True) == [1]
    failed = moved_answer(OID, [1], "EIO", present=True)
    assert isinstance(failed, PlasmaError) and "moving" in failed.message
    assert isinstance(moved_answer(OID, [1], None, present=False), ObjectNotFound)
    assert copied_answer(OID, [0, 2], None, alive=True) == [0, 2]
    failed = copied_answer(OID, [0], "ENOMEM", alive=True)
    assert isinstance(failed, PlasmaError) and "copying" in failed.message
    assert isinstance(copied_answer(OID, [0], None, alive=False), ObjectNotFound)


def test_a_client_has_a_bounded_number_of_page_moves() -> None:
    jobs = Placements()
    jobs.add(1, MoveJob(5, OID, rec()))
    jobs.add(2, MoveJob(None, OID, rec()))  # (follow-readers: no client's)
    jobs.check_client(5, 2)
    jobs.check_client(6, 1)
    with pytest.raises(BadRequest, match="client 5 already has 1 page moves"):
        jobs.check_client(5, 1)
    assert len(jobs) == 2 and jobs.pop(1).client == 5 and len(jobs) == 1


# ---------------------------------------------------------------- spilling


def walk_over(by_node: dict[int, list[tuple[bytes, ObjectRecord]]]):  # type: ignore[no-untyped-def]
    closed: list[int] = []

    def walk_of(nd: Node):  # type: ignore[no-untyped-def]
        try:
            yield from by_node[nd.id]
        finally:
            closed.append(nd.id)

    return walk_of, closed


def test_a_batch_takes_what_each_node_wants_within_its_bounds_and_meets_the_demand() -> None:
    a, b = Node(0, 1 << 20), Node(1, 1 << 20)
    a.spill_demand, b.spill_demand = 200, 0
    objs = {0: [(bytes([i]), rec(100)) for i in range(5)], 1: [(b"z", rec(100))]}
    walk_of, closed = walk_over(objs)
    book = SpillBook(True, 1.0, None, 100)
    picked = book.pick([a, b], walk_of, max_bytes=1 << 20, max_objects=100)
    assert [oid for oid, _ in picked] == [b"\x00", b"\x01"]  # node 0 wants 200; node 1 nothing
    assert closed == [0, 1] and a.spill_demand == b.spill_demand == 0
    a.spill_demand = 1000
    assert len(book.pick([a], walk_of, max_bytes=250, max_objects=100)) == 2  # bytes bound
    a.spill_demand = 1000
    assert len(book.pick([a], walk_of, max_bytes=1 << 20, max_objects=3)) == 3
    bounded = SpillBook(True, 1.0, 150, 100)  # at most 150 bytes on disk
    a.spill_demand = 1000
    assert len(bounded.pick([a], walk_of, max_bytes=1 << 20, max_objects=100)) == 1


def test_no_batch_while_one_is_written_or_spilling_is_off_or_the_disk_holds_its_most() -> None:
    nd = Node(0, 1 << 20)
    walk_of, _ = walk_over({0: [(b"a", rec(100))]})
    book = SpillBook(True, 1.0, None, 100)
    book.batches[1] = []
    nd.spill_demand = 100
    assert book.pick([nd], walk_of, 1 << 20, 100) == [] and nd.spill_demand == 100
    assert SpillBook(False, 1.0, None, 100).pick([nd], walk_of, 1 << 20, 100) == []
    full = SpillBook(True, 1.0, None, 1)
    full.files[1] = [1, 4096]
    assert full.pick([nd], walk_of, 1 << 20, 100) == []


def test_copies_are_asked_for_only_when_they_would_make_room_and_may_be_written() -> None:
    nd = Node(0, 800)
    nd.used = 800
    nd.clock.add(b"a", rec(400))  # unreferenced, no copy yet
    book = SpillBook(True, 1.0, None, 100)
    assert book.ask_copies(nd, 300) and nd.spill_demand == 300 and book.take_wakeup()
    assert book.ask_copies(nd, 10) and nd.spill_demand == 300  # (at least a batch: 1/8)
    assert not book.ask_copies(nd, 500)  # copying all it could would not make room
    assert not SpillBook(False, 1.0, None, 100).ask_copies(nd, 100)
    assert not SpillBook(True, 1.0, 0, 100).ask_copies(nd, 100)  # the disk is at its bound
    done = Node(0, 800)
    done.used = 800
    copied = rec(400)
    copied.spill = (1, SpillEntry(b"c", 400, 0, 0, 0.0, 0, 400, 0))
    done.clock.add(b"c", copied)
    assert not book.ask_copies(done, 300)  # every unreferenced object has a copy already


def test_a_restore_looks_at_home_first_then_the_nodes_with_most_room() -> None:
    home, roomy, tight = Node(0, 100), Node(1, 100), Node(2, 100)
    home.used, roomy.used, tight.used = 100, 10, 90
    assert restore_order(home, [tight, home, roomy]) == [home, roomy, tight]


def test_an_adopted_object_is_spilled_with_its_copy_and_aligned_size() -> None:
    entry = SpillEntry(OID, 100, 3, 5, 2.5, 4096, 103, 0)
    r = adopted_record(entry, 9, node=1, alignment=64)
    assert r.state is State.SPILLED and r.spill == (9, entry) and r.size == 128
    assert (r.loc.node, r.loc.data_size, r.create_time) == (1, 100, 2.5)


# ---------------------------------------------------------------- the create queue


def test_creates_retry_in_order_and_only_one_that_eviction_would_fit_blocks_its_node() -> None:
    q = Waiters(8, 100)
    n0, n1 = Node(0, 1 << 20), Node(1, 1 << 20)
    ws = [CreateWaiter(1, t, [CreateItem(bytes([t]), 1, 0)], nd, 0.0) for t, nd in
          [(1, n0), (2, n0), (3, n1), (4, n0)]]  # fmt: skip
    for w in ws:
        q.add_create(w, None)
    tried: list[int] = []

    def attempt(w: CreateWaiter) -> list[ObjectLocation] | None:
        tried.append(w.token)
        return None if w.token in (1, 3) else []

    # 1 does not fit but would by eviction: 2 and 4 (node 0) wait behind it; 3 waits for
    # references (could not fit): it does not hold back node 1
    answered = q.retry_creates(attempt, could_fit=lambda w: w.token == 1)
    assert tried == [1, 3] and answered == []
    answered = q.retry_creates(attempt, could_fit=lambda w: False)
    assert tried == [1, 3, 1, 2, 3, 4] and [w.token for w, _ in answered] == [2, 4]
    assert list(q.creates) == [1, 3] and all(w.done for w, _ in answered)


# ---------------------------------------------------------------- pin scans


def test_a_scan_frees_the_unpinned_revives_pinned_victims_and_keeps_pinned_deletes() -> None:
    dying = DyingSet(0.0)
    free, victim, deleted = rec(gen=1), rec(state=State.EVICTING, gen=2), rec(gen=3)
    deleted.state = State.DELETED
    due = [(1, b"f", free), (2, b"v", victim), (3, b"d", deleted)]
    freed, revived = dying.settle(0.0, due, rescanned=0, pinned={2, 3})
    assert freed == [due[0]] and revived == [due[1]]
    assert dying.pinned == {3: (b"d", deleted)} and dying.rescan_at < float("inf")
    # a rescan that finds it unpinned frees it, and nothing is rescheduled
    again, rescanned = dying.due(dying.rescan_at)
    assert rescanned == 1
    freed, _ = dying.settle(dying.rescan_at, again, rescanned, pinned=set())
    assert freed == again and not dying.pinned and dying.rescan_at == float("inf")


# ---------------------------------------------------------------- eviction headroom


def test_more_victims_free_the_headroom_beyond_the_plan() -> None:
    plan = [(b"p", rec(100))]
    walk = iter([(bytes([i]), rec(100)) for i in range(5)])
    assert len(more_victims(walk, 350, plan)) == 3  # 100 planned + 3 x 100 >= 350
    assert more_victims(iter([(b"x", rec(100))]), 100, plan) == []


# ---------------------------------------------------------------- what holds memory


def test_store_full_says_what_holds_the_node_and_names_the_biggest_holders() -> None:
    nd = Node(0, 1000)
    nd.used = 900
    held = Held()
    held.referenced, held.writing, held.arenas = 300, 200, 100
    for cid, nbytes in [(1, 300), (2, 200), (3, 100), (4, 50)]:
        h = held.clients[cid] = Holding()
        h.refs, h.ref_bytes = 1, nbytes
    text = no_space_text(nd, held, {1: "a", 2: "b", 3: "c", 4: "d"}, ", 7 spilled to disk")
    assert text.startswith("no space on node 0: 300 bytes referenced, 200 being written")
    assert "100 free, 7 spilled to disk; held most by a (300 bytes: 300 referenced)" in text
    assert "c (100" in text and "d (" not in text  # the three that hold the most


def test_holders_lists_clients_by_bytes_and_the_largest_objects() -> None:
    held = Held()
    for cid, nbytes in [(1, 10), (2, 30)]:
        h = held.clients[cid] = Holding()
        h.refs, h.ref_bytes = 1, nbytes
    small, big = rec(64), rec(4096)
    held.objects = {b"s": (small, [1], []), b"b": (big, [2], [1, 3])}
    report = holders_report(held, {1: "one", 2: "two"}, 1, lambda k, r: {"id": k.hex()})
    assert [c["label"] for c in report["clients"]] == ["two", "one"]
    assert report["objects"] == [{"id": "62", "referenced_by": [2], "pinned_by": [1, 3]}]


def test_a_listing_counts_pins_only_on_objects_in_memory() -> None:
    r = rec(gen=5)
    r.ref_count = 1
    info = object_info(OID, r, {5: 2})
    assert (info.state, info.ref_count) == ("sealed", 3)
    r.state = State.SPILLED
    assert object_info(OID, r, {5: 2}).ref_count == 1
    r.state = State.CREATED
    assert object_info(OID, r, {}).construct_duration == -1.0
