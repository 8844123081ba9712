"""Where the store's features meet: the integrity findings of the round-3 audits, each as a
sans-I/O reproduction that failed before its fix (issue 26)."""

from __future__ import annotations

import pytest

from plasma.directory import REPLICA, DirectoryReader, PinTable, pin_table_size
from plasma.errors import BadRequest
from plasma.ids import replica_id
from plasma.records import ObjectLocation, SpillEntry
from plasma.store import Copy, Place, Replicated, Store
from tests.test_directory_store import Claim, allocation_violations
from tests.test_store import KIB, FakeProvider, loc, oid

GRACE = 0.002
BUDGET = 64 * KIB


def make(nodes: int = 2, **kw: object) -> Store:
    kw.setdefault("grace", GRACE)
    kw.setdefault("reclaim_wait", 0)
    kw.setdefault("directory_capacity", 16)
    store = Store(
        {n: BUDGET for n in range(nodes)},
        FakeProvider(),
        segment_size=BUDGET,
        **kw,  # type: ignore[arg-type]
    )
    return store


def put(store: Store, n: int, size: int = 4 * KIB, client: int = 10) -> ObjectLocation:
    where = loc(store.create(client, oid(n), size))
    store.seal(client, oid(n))
    store.release(client, oid(n))
    return where


def reader(store: Store, client: int, node: int) -> tuple[DirectoryReader, PinTable]:
    """A client on ``node`` that reads through the directory (its pin table registered)."""
    buf = bytearray(pin_table_size(16))
    store.register_client(client, node=node, pins=buf)
    return DirectoryReader(*store.directory_buffers), PinTable(buf)


def events(store: Store, kind: type) -> list:
    return [e for e in store.drain_events() if isinstance(e, kind)]


def settle(store: Store, now: float) -> float:
    for _ in range(4):
        now += 1.0
        store.expire(now)
    return now


def test_a_rebuild_keeps_the_slots_of_orphaned_copies_so_pins_on_them_hold():
    """Finding 2: the copies of an object freed after a move go to the orphans; a rebuild
    before their scan left their slots pointing into the new directory."""
    store = make(nodes=3)
    store.register_client(10, node=0)
    read, pins = reader(store, 11, node=1)
    put(store, 1)
    store.replicate(10, oid(1), [1])
    (copy,) = events(store, Copy)
    store.placed(copy.token)
    found = read.lookup(replica_id(oid(1), 1), REPLICA)
    assert found is not None and found.location.node == 1
    index = pins.pin(found.generation)  # the reader on node 1 holds the copy
    assert index is not None and read.unchanged(found)
    assert store.migrate(10, oid(1), 2) is not None  # pages moving...
    (place,) = events(store, Place)
    store.delete(10, [oid(1)])  # ...while it is deleted (its copy pinned: deferred)
    now = settle(store, 0.0)  # the object's scan: free, but its bytes wait for the move
    for n in range(2, 20):
        store.create(10, oid(n), 64)
    store.placed(place.token, now=now)  # the move ends: the copy is orphaned
    for n in range(2, 20):  # seals until the directory is rebuilt, before any scan
        store.seal(10, oid(n), now=now)
    for n in range(2, 20):
        store.release(10, oid(n), now=now)
    assert store.stats()["directory"]["capacity"] > 16
    now = settle(store, now)
    claim = Claim("the pinned copy", found.location.segment, found.location.offset, 4 * KIB)
    assert not allocation_violations(store, [claim])
    fresh = DirectoryReader(*store.directory_buffers)
    for n in range(2, 20):  # every object reachable: no slot marked dying by mistake
        assert fresh.lookup(oid(n)) is not None, n
    pins.unpin(index)
    store.unpinned(now)
    settle(store, now)
    assert store.stats()["nodes"][1]["used"] == 0


def spilled_store(**kw: object) -> Store:
    """Three nodes, spilling; object 1 (4 KiB, node 0) has a copy on disk."""
    store = make(nodes=3, spill=True, spill_threshold=0.01, **kw)
    store.register_client(10, node=0)
    put(store, 1)
    file_id, objects = store.spill_batch(0.0, 1 << 30) or (0, [])
    assert [o for o, _, _ in objects] == [oid(1)]
    entry = SpillEntry(oid(1), 4 * KIB, 0, 0, 0.0, 8, 4 * KIB, 0, 0)
    store.spilled(file_id, [entry], 8 + 4 * KIB, 0.0, 0.0)
    return store


@pytest.mark.parametrize("move", ["replicate", "migrate"])
def test_an_eviction_victim_in_its_grace_period_is_not_moved_or_copied(move: str):
    """Finding 3: a move started in an eviction's grace period read memory the end of the
    grace period freed at once (the object went to disk), and a copy was published for an
    object only on disk."""
    store = spilled_store()
    assert store.evict(1, now=0.0) == 4 * KIB  # object 1 is dying: its scan comes after GRACE
    with pytest.raises(BadRequest, match="being evicted"):
        if move == "replicate":
            store.replicate(10, oid(1), [1], now=0.0)
        else:
            store.migrate(10, oid(1), 1, now=0.0)
    assert not events(store, Copy | Place)
    settle(store, 0.0)
    assert store.objects([oid(1)])[0].state == "spilled"
    assert store.stats()["nodes"][0]["used"] == 0


def test_objects_following_their_readers_are_not_moved_in_an_eviction_grace_period():
    """Finding 3: ``--follow-readers`` started such a move with no client call at all."""
    from plasma.follow import ReaderTracker

    store = spilled_store(follow_readers=ReaderTracker(min_reads=1, share=0.6))
    store.register_client(11, node=1)
    for _ in range(4):  # reads from node 1
        got = store.get(11, [oid(1)], timeout=0)
        assert isinstance(got, list) and isinstance(got[0], ObjectLocation)
        store.release(11, oid(1))
    store.drain_events()
    assert store.evict(1, now=0.0) == 4 * KIB
    assert store.follow(0.0) == 0
    assert not events(store, Place)
    settle(store, 0.0)
    assert store.objects([oid(1)])[0].state == "spilled"


def test_a_copy_finishing_after_its_object_went_to_disk_publishes_nothing():
    """Finding 3: a copy of an object that is only on disk survived its delete and served
    the old bytes after the id was created again."""
    store = spilled_store()
    store.replicate(10, oid(1), [1], now=0.0)
    (copy,) = events(store, Copy)
    assert store.evict(1, now=0.0) == 0  # being copied: not evicted
    store.placed(copy.token, now=0.0)
    (done,) = events(store, Replicated)
    assert done.result == [0, 1]
    assert store.evict(1, now=0.0) == 4 * KIB  # evicted with its copy
    settle(store, 0.0)
    assert store.objects([oid(1)])[0].state == "spilled"
    assert store.stats()["replicas"] == 0
    assert DirectoryReader(*store.directory_buffers).lookup(replica_id(oid(1), 1), REPLICA) is None
    store.delete(10, [oid(1)])
    put(store, 1)  # the id again: a reader on node 1 must not get the old copy
    assert DirectoryReader(*store.directory_buffers).lookup(replica_id(oid(1), 1), REPLICA) is None
    assert store.stats()["nodes"][1]["used"] == 0
