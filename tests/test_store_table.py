"""The object table keeps no record for idle objects (plasma.store.table): what the store says
about an object, and what it does with it, is the same whether its record is kept or made
again from the directory slot and the slot table; a directory rebuild keeps both."""

from __future__ import annotations

import itertools
import sys
from array import array

import pytest

import plasma.directory
from plasma.directory import Directory
from plasma.follow import ReaderTracker
from plasma.records import ObjectInfo, ObjectLocation
from plasma.store import Place, Store
from tests.helpers import FakeProvider, oid, pin, pin_reader

KIB = 1024


def make(**kw: object) -> Store:
    clock = itertools.count(1000.0, 0.25)  # (create times that differ)
    kw.setdefault("idle_records", 0)
    kw.setdefault("directory_capacity", 16)
    store = Store(
        {0: 1 << 20},
        FakeProvider(),
        segment_size=1 << 20,
        grace=0.0,
        wall_clock=lambda: next(clock),
        **kw,  # type: ignore[arg-type]
    )
    for client in (1, 2, 3):
        store.register_client(client)
    return store


def put(store: Store, n: int, size: int = 100) -> ObjectLocation:
    """Object ``n``, created by client 1 + n % 3, sealed and released: idle."""
    client = 1 + n % 3
    loc = store.create(client, oid(n), size, n % 7)
    assert isinstance(loc, ObjectLocation)
    store.seal(client, oid(n))
    store.release(client, oid(n))
    return loc


def infos(store: Store) -> dict[bytes, ObjectInfo]:
    return {i.id: i for i in store.objects()}


def test_idle_objects_keep_no_record_and_read_the_same() -> None:
    store = make()
    for n in range(10):
        put(store, n)
    before = infos(store)
    assert store._objects.compact == 0  # (made compact only between two calls)
    store.drain_events()
    assert store._objects.compact == 10 and not store._objects._busy
    assert infos(store) == before
    assert all(store.info(oid(n)) == before[oid(n)] for n in range(10))
    assert sorted(store.object_ids()) == sorted(before)
    assert store.contains(oid(3)) and oid(3) in store._objects
    assert not store.contains(oid(99)) and oid(99) not in store._objects
    assert store.stats()["objects"] == len(store._objects) == 10
    assert store._objects.compact == 10  # (reading them made no record)


def test_a_construct_duration_reads_the_same_compact_and_not() -> None:
    """The slot table keeps construct durations as 4-byte floats, so the store keeps every
    one at that precision from the seal on: what an object reports does not change when it
    is made compact (a duration of 0.1 s is not a 4-byte float)."""
    clock = itertools.count(1000.0, 0.1)
    store = Store({0: 1 << 20}, FakeProvider(), grace=0.0, wall_clock=lambda: next(clock))
    store.register_client(1)
    store.create(1, oid(1), 100)
    store.seal(1, oid(1))
    store.release(1, oid(1))
    before = store.info(oid(1))
    assert before.construct_duration == pytest.approx(0.1, rel=1e-6)
    assert before.construct_duration == array("f", [before.construct_duration])[0]
    store._objects.keep_idle = 0
    store.drain_events()
    assert store._objects.compact == 1 and store.info(oid(1)) == before


def test_a_touched_object_has_its_record_until_it_is_idle_again() -> None:
    store = make()
    locs = [put(store, n) for n in range(5)]
    store.drain_events()
    assert store.get(2, [oid(1)], timeout=0) == [locs[1]]
    record = store._objects.get(oid(1))
    assert store._objects.compact == 4 and record is not None and record.ref_count == 1
    store.drain_events()
    assert store._objects.get(oid(1)) is record  # referenced: kept, the same record
    store.release(2, oid(1))
    store.drain_events()
    assert store._objects.compact == 5
    deleted, _, _ = store.delete(1, [oid(1), oid(4)])
    assert deleted == [oid(1), oid(4)]
    store.drain_events()
    assert store._objects.compact == 3 and sorted(store.object_ids()) == [oid(0), oid(2), oid(3)]


def test_the_most_recently_touched_idle_records_are_kept() -> None:
    store = make(idle_records=2)
    for n in range(5):
        put(store, n)
    store.drain_events()
    assert set(store._objects._busy) == {oid(3), oid(4)}
    store.get(1, [oid(0)], timeout=0)
    store.release(1, oid(0))
    store.drain_events()
    assert set(store._objects._busy) == {oid(4), oid(0)}


def test_a_burst_of_records_leaves_no_large_table_behind() -> None:
    """Thousands of objects sealed between two drains, then all but the last 100 made
    compact: the dicts that held every record are copied into tables sized for what is left
    (Python's dicts do not shrink), keeping the same records, in the same order."""
    store = make(idle_records=100, directory_capacity=8192)
    for n in range(3000):
        put(store, n)
    table, slots = store._objects, store._dir.slots
    assert sys.getsizeof(table._busy) > 100 * KIB  # (the burst's tables)
    kept = [table._busy[oid(n)] for n in range(2900, 3000)]
    store.drain_events()
    for held in (table._busy, table._idle, slots.records):
        assert len(held) == 100 and sys.getsizeof(held) < 16 * KIB
    assert list(table._idle) == [oid(n) for n in range(2900, 3000)]
    assert all(table._busy[oid(n)] is rec for n, rec in zip(range(2900, 3000), kept, strict=True))
    assert all(slots.records[rec.slot] is rec for rec in kept)
    assert store.contains(oid(5)) and store.info(oid(2950)).data_size == 100
    put(store, 3000)  # (the copies are the table's from now on)
    store.drain_events()
    assert oid(3000) in table._busy and next(reversed(table._idle)) == oid(3000)


def test_a_rebuild_moves_compact_objects_with_what_they_were() -> None:
    store = make()
    for n in range(8):
        put(store, n)
    store.drain_events()
    before = infos(store)
    capacity = store.stats()["directory"]["capacity"]
    n = 8
    while store.stats()["directory"]["capacity"] == capacity:  # (grown: rebuilt)
        put(store, n)
        n += 1
    store.drain_events()
    after = infos(store)
    assert {k: after[k] for k in before} == before
    assert store._objects.compact == n


def test_a_compact_object_a_rebuild_has_no_slot_for_stays_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = make()
    locs = [put(store, n) for n in range(4)]
    store.drain_events()
    before = infos(store)
    left_out = store._dir.lookup(oid(2)).slot  # type: ignore[union-attr]
    real = Directory.copy_from

    def copy_without(self: Directory, old: Directory, slots: array[int]) -> array[int]:
        placed = iter(real(self, old, array("q", (s for s in slots if s != left_out))))
        return array("q", (-1 if s == left_out else next(placed) for s in slots))

    monkeypatch.setattr(Directory, "copy_from", copy_without)
    n = 4
    while not store._dir.slotless:
        put(store, n)
        n += 1
    monkeypatch.undo()
    store.drain_events()
    assert [key for key, _ in store._dir.slotless.values()] == [oid(2)]
    assert infos(store)[oid(2)] == before[oid(2)]
    assert store._objects.compact == n - 1  # (it has a record: it has no slot to be compact in)
    assert store.get(1, [oid(2)], timeout=0) == [locs[2]]
    store.release(1, oid(2))
    assert store.delete(1, [oid(2)])[0] == [oid(2)]
    store.drain_events()
    assert oid(2) not in store._objects and not store._dir.slotless
    assert len(store.object_ids()) == n - 1


def test_pins_on_compact_objects_count_as_reads_of_their_readers_node() -> None:
    store = Store(
        {0: 1 << 20, 1: 1 << 20},
        FakeProvider(),
        segment_size=1 << 20,
        idle_records=0,
        follow_readers=ReaderTracker(min_reads=2, cooldown=0.0),
    )
    for client in (1, 2, 3):
        store.register_client(client, node=0)
    put(store, 3)
    loc = put(store, 4)
    store.drain_events()
    read, table = pin_reader(store, 7, node=1)
    pin(store, read, table, 4)
    for now in (1.0, 2.0):
        assert store.follow(now) == (1 if now == 2.0 else 0)  # (two reads: the second pass)
    (place,) = [e for e in store.drain_events() if isinstance(e, Place)]
    assert place.nodes == [1] and place.segment == loc.segment
    assert place.start <= loc.offset < place.start + place.length


@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_the_ids_of_compact_objects_by_either_reader(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not native:
        monkeypatch.setattr(plasma.directory, "native", None)
    elif plasma.directory.native is None:
        pytest.skip("the C extension is not built")
    store = make(directory_capacity=64)
    for n in range(20):
        put(store, n)
    store.drain_events()
    store.get(1, [oid(5)], timeout=0)  # (a record again: not compact)
    store.delete(1, [oid(7)])  # (gone)
    assert store._dir.compact_ids() == sorted(
        (oid(n) for n in range(20) if n not in (5, 7)),
        key=lambda o: store._dir.lookup(o).slot,  # type: ignore[union-attr]
    )


def test_the_c_scan_refuses_a_short_record_mask() -> None:
    if plasma.directory.native is None:
        pytest.skip("the C extension is not built")
    store = make()
    put(store, 1)
    directory = store._dir.directory
    with pytest.raises(ValueError, match="fewer bytes"):
        plasma.directory.native.compact_ids(directory._mv, directory.capacity, b"\0")
