"""What an idle sealed object costs the store in Python memory, bounded: a regression that
gives each object another Python object (a dict entry, a tuple, a ring entry) fails here.
Counted with tracemalloc (bytes, not time), in a sans-I/O store grown from the smallest
directory, so its rebuilds and the arrays beside it are counted too (the ids were made
before: the store keeps none of its own for an idle object)."""

from __future__ import annotations

import gc
import tracemalloc

from plasma.records import ArenaObject
from plasma.store import Grant, Store
from tests.helpers import FakeProvider

OBJECTS = 30_000
# Today (every idle object compact: plasma.store.table): the slot table beside the directory
# (36 B a slot, about 2.2 slots an object here) and the generation index (16 B): ~100 B. With
# a Python record per object (its id as the table's key, the dict entry, the record, its
# location, the slot and generation ints) it was ~430 B, and ~570 B before the generation
# index and the slot-linked CLOCK ring.
MAX_BYTES_PER_OBJECT = 120


def test_an_idle_sealed_object_costs_the_store_a_bounded_number_of_bytes() -> None:
    ids = [i.to_bytes(20, "little") for i in range(OBJECTS)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        store = Store({0: 1 << 30}, FakeProvider(), idle_records=0)
        store.register_client(1)
        grant = store.grant_arena(1, 64 * OBJECTS)
        assert isinstance(grant, Grant)
        for start in range(0, OBJECTS, 1000):
            batch = [
                ArenaObject(oid, grant.offset + 64 * (start + i), 64, 0)
                for i, oid in enumerate(ids[start : start + 1000])
            ]
            store.seal_arena(1, grant.grant, batch)
            store.drain_events()
        del batch
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert store.stats()["objects"] == OBJECTS and store.stats()["directory"]["rebuilds"] >= 1
    assert store._objects.compact == OBJECTS
    # (the directory's own buffers are shared memory in the coordinator: not counted)
    shared = tracemalloc.Filter(False, "*directory_memory.py")
    after, before = after.filter_traces([shared]), before.filter_traces([shared])
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per_object = grown / OBJECTS
    assert per_object <= MAX_BYTES_PER_OBJECT, f"{per_object:.0f} B per idle sealed object"
