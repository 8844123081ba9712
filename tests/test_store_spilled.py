"""Idle spilled objects kept in arrays (plasma.store.spilled and the object table): the table
against a dict of records (adds, lookups and removals through growth, shrinking and hash
collisions), the records it will not hold, and the store reading, restoring and deleting
spilled objects the same whether they have a record or not."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from plasma.ids import ID_SIZE
from plasma.records import ObjectInfo, ObjectLocation, SpillEntry
from plasma.store import Restore, SpillDead, Store
from plasma.store.objects import Io, ObjectRecord, State
from plasma.store.spilled import SpilledTable
from tests.helpers import KIB, FallbackProvider, oid
from tests.helpers import put as put_by

ALIGN = 64


def spilled_record(
    n: int,
    *,
    data: int = 100,
    meta: int = 3,
    node: int = 1,
    file: int = 7,
    entry: dict[str, Any] | None = None,
) -> tuple[bytes, ObjectRecord]:
    """Object ``n`` only on disk, as the store keeps it (its entry agreeing with it)."""
    o = hashlib.blake2b(n.to_bytes(8, "big"), digest_size=ID_SIZE).digest()
    fields = dict(id=o, data_size=data, metadata_size=meta, node=node, create_time=1000.5 + n,
                  offset=8 + 1000 * n, length=data + meta, crc=(n * 2654435761) % (1 << 32),
                  index=n)  # fmt: skip
    fields.update(entry or {})
    size = ((data + meta or 1) + ALIGN - 1) // ALIGN * ALIGN
    rec = ObjectRecord(ObjectLocation(0, 0, data, meta, node), size, n % 5, 1000.5 + n,
                       State.SPILLED, Io.NONE, 0, 0, 0.25)  # fmt: skip
    rec.spill = (file, SpillEntry(**fields))  # type: ignore[arg-type]
    return o, rec


class TableMachine(RuleBasedStateMachine):
    """The arrays agree with a dict of the records put in, through any adds and removals."""

    def __init__(self) -> None:
        super().__init__()
        self.table = SpilledTable(ALIGN)
        self.model: dict[bytes, ObjectRecord] = {}
        self.next = 0

    @rule(n=st.integers(1, 200))
    def add(self, n: int) -> None:
        for _ in range(n):
            o, rec = spilled_record(self.next, data=self.next % 3 * 4000)
            self.next += 1
            assert self.table.add(o, rec)
            self.model[o] = rec

    @precondition(lambda self: self.model)
    @rule(data=st.data(), share=st.floats(0.0, 1.0))
    def pop(self, data: st.DataObject, share: float) -> None:
        ids = sorted(self.model)
        for o in data.draw(st.permutations(ids))[: max(1, int(share * len(ids)))]:
            assert self.table.pop(o) == self.model.pop(o)
            assert self.table.pop(o) is None and o not in self.table

    @rule(n=st.integers(0, 10_000))
    def absent(self, n: int) -> None:
        o = hashlib.blake2b(b"absent" + n.to_bytes(4, "big"), digest_size=ID_SIZE).digest()
        assert o not in self.table and self.table.peek(o) is None

    @invariant()
    def same_as_the_dict(self) -> None:
        table = self.table
        assert len(table) == len(self.model)
        assert sorted(table.ids()) == sorted(self.model)
        for o, rec in self.model.items():
            assert table.peek(o) == rec
        slots = len(table._slots)
        assert slots == 64 or 6 * len(table) >= slots // 2, "a table this empty shrinks"
        assert 3 * len(table) <= 2 * slots


TestTableMachine = TableMachine.TestCase
TestTableMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("an entry of another id", {"entry": {"id": b"x" * ID_SIZE}}),
        ("an entry of other sizes", {"entry": {"data_size": 99}}),
        ("an entry of another length", {"entry": {"length": 104}}),
        ("an entry written from another node", {"entry": {"node": 0}}),
        ("an entry of another create time", {"entry": {"create_time": 1.0}}),
        ("metadata of 4 GiB", {"meta": 1 << 32}),
        ("a node past 16 bits", {"node": 1 << 15}),
        ("a file past 32 bits", {"file": 1 << 32}),
        ("an index past 32 bits", {"entry": {"index": 1 << 32}}),
        ("a negative offset", {"entry": {"offset": -1}}),
        ("an offset past 32 bits", {"entry": {"offset": 1 << 32}}),
        ("data of 4 GiB", {"data": 1 << 32}),
    ],
)
def test_a_record_the_arrays_cannot_hold_exactly_stays_a_record(
    what: str, change: dict[str, Any]
) -> None:
    o, rec = spilled_record(1, **change)
    table = SpilledTable(ALIGN)
    assert not table.add(o, rec), what
    assert len(table) == 0 and o not in table


def test_other_refusals_and_the_bytes_an_object_takes() -> None:
    table = SpilledTable(ALIGN)
    o, rec = spilled_record(1)
    rec.owner = 1 << 31
    assert not table.add(o, rec)  # (an owner past 32 bits)
    o, rec = spilled_record(1)
    rec.construct_duration = 0.1  # (not a 4-byte float's value)
    assert not table.add(o, rec)
    o, rec = spilled_record(1)
    rec.spill = None
    assert not table.add(o, rec)
    for n in range(10_000):
        assert table.add(*spilled_record(n))
    assert table.nbytes() / 10_000 <= 62 + 4 * 3  # 62 B of arrays, hash table >= 1/3 full


@given(st.lists(st.integers(0, 63), min_size=1, max_size=40, unique=True))
def test_colliding_ids_are_found_and_removed(homes: list[int]) -> None:
    """Ids whose hashes collide in a small table (long probe runs, wrapping around) are
    found, and removing any keeps every other findable."""
    table = SpilledTable(ALIGN)
    chosen: list[bytes] = []
    n = 0
    for home in homes:  # an id hashing to slot ``home`` of the 64 (the starting capacity)
        while True:
            o, rec = spilled_record(n)
            n += 1
            if hash(o) & 63 == home % 8 * 8:  # (few distinct homes: runs collide)
                break
        assert table.add(o, rec)
        chosen.append(o)
    for i, o in enumerate(chosen):
        assert table.pop(o) is not None
        assert all(table.peek(other) is not None for other in chosen[i + 1 :])


# ---------------------------------------------------------------- in the store


def make(**kw: Any) -> Store:
    kw.setdefault("idle_records", 0)
    store = Store({0: 64 * KIB}, FallbackProvider(), segment_size=64 * KIB, grace=0.0,
                  reclaim_wait=0, spill=True, spill_threshold=0.01, **kw)  # fmt: skip
    store.register_client(1)
    return store


def spill_all(store: Store, n: int) -> None:
    """Objects 0..n-1 of 8 KiB, written to disk and evicted: only on disk."""
    for i in range(n):
        put_by(store, 1, i, 8 * KIB)
    batch = store.spill_batch(0.0, 1 << 30)
    assert batch is not None
    file_id, objects = batch
    entries = [SpillEntry(o, lc.data_size, lc.metadata_size, lc.node, t, 8 + i * 9000,
                          lc.data_size + lc.metadata_size, 1000 + i, i)
               for i, (o, lc, t) in enumerate(objects)]  # fmt: skip
    store.spilled(file_id, entries, 9000 * n, 0.01, 0.0)
    store.drain_events()  # (idle, with a copy on disk: they keep their records)
    store.evict(1 << 30, now=0.0)
    store.drain_events()


def listed(store: Store) -> dict[bytes, ObjectInfo]:
    return {i.id: i for i in store.objects()}


def test_spilled_objects_keep_no_record_and_read_the_same() -> None:
    store = make(idle_records=10)
    spill_all(store, 5)
    before = listed(store)
    assert {i.state for i in before.values()} == {"spilled"} and len(before) == 5
    store._objects.keep_idle = 0
    store.drain_events()
    table = store._objects
    assert len(table.spilled) == 5 and not table._busy
    assert listed(store) == before and len(table) == 5
    assert all(store.contains(o) and store.info(o) == before[o] for o in before)
    assert sorted(store.object_ids()) == sorted(before) and len(table.spilled) == 5


def test_a_get_restores_a_compact_spilled_object_from_where_it_was_written() -> None:
    store = make()
    spill_all(store, 3)
    assert len(store._objects.spilled) == 3
    got = store.get(1, [oid(1)], timeout=1.0)
    restores = [e for e in store.drain_events() if isinstance(e, Restore)]
    assert [r.oid for r in restores] == [oid(1)] and got is not None
    r = restores[0]
    where = (r.entry.offset, r.entry.crc, r.entry.index, r.entry.length)
    assert where == (8 + 9000, 1001, 1, 8 * KIB)
    assert store._objects.materialized_spilled == 1 and len(store._objects.spilled) == 2
    store.restored(r.token, "EIO", now=0.0)  # (it stays on disk: compact again)
    store.drain_events()
    assert len(store._objects.spilled) == 3 and listed(store)[oid(1)].state == "spilled"


def test_a_deleted_compact_spilled_object_is_marked_dead_in_its_file() -> None:
    store = make()
    spill_all(store, 3)
    assert store.delete(1, [oid(2)])[0] == [oid(2)]
    dead = [e for e in store.drain_events() if isinstance(e, SpillDead)]
    assert [(d.entry.id, d.entry.index, d.empty) for d in dead if d.entry] == [(oid(2), 2, False)]
    assert oid(2) not in store._objects and len(store._objects.spilled) == 2
    assert sorted(store.object_ids()) == [oid(0), oid(1)]


def test_a_spilled_object_waiting_for_memory_keeps_its_record() -> None:
    """A get of a spilled object when no memory can be had: the restore waits (the queue
    keeps its record, so the table must too), and starts once memory is freed."""
    store = make()
    spill_all(store, 3)
    for n in range(10, 18):  # 8 objects of 8 KiB referenced by their creator: no room
        store.create(1, oid(n), 8 * KIB)
        store.seal(1, oid(n))
    store.get(1, [oid(0)], timeout=10.0)
    store.drain_events()
    assert oid(0) in store._objects._busy and len(store._objects.spilled) == 2
    store.release(1, oid(10))
    store.delete(1, [oid(10)])
    restores = [e for e in store.drain_events() if isinstance(e, Restore)]
    assert [r.oid for r in restores] == [oid(0)] and restores[0].entry.crc == 1000
