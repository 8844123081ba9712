"""Where the store's features meet: the integrity findings of the round-3 audits, each as a
sans-I/O reproduction that failed before its fix (issue 26)."""

from __future__ import annotations

import pytest

from plasma.directory import REPLICA, DirectoryReader, PinTable
from plasma.errors import BadRequest
from plasma.follow import ReaderTracker
from plasma.ids import replica_id
from plasma.records import ObjectLocation, SpillEntry
from plasma.store import Copy, Place, ReplicateDone, Store
from tests.helpers import (
    GRACE,
    KIB,
    Claim,
    FakeProvider,
    allocation_violations,
    events,
    loc,
    oid,
    pin_reader,
)
from tests.helpers import put as put_by

BUDGET = 64 * KIB


def make(nodes: int = 2, **kw: object) -> Store:
    kw.setdefault("grace", GRACE)
    kw.setdefault("reclaim_wait", 0)
    kw.setdefault("directory_capacity", 16)
    kw.setdefault("idle_records", 0)  # every idle object compact between two calls
    store = Store(
        {n: BUDGET for n in range(nodes)},
        FakeProvider(),
        segment_size=BUDGET,
        **kw,  # type: ignore[arg-type]
    )
    return store


def put(store: Store, n: int, size: int = 4 * KIB, client: int = 10) -> ObjectLocation:
    return put_by(store, client, n, size)


def reader(store: Store, client: int, node: int) -> tuple[DirectoryReader, PinTable]:
    """A client on ``node`` that reads through the directory (its pin table registered)."""
    return pin_reader(store, client, entries=16, node=node)


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
    store.rescan_pins_soon(now)
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
    (done,) = events(store, ReplicateDone)
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


def test_an_object_created_under_a_copy_s_id_never_passes_for_the_copy():
    """Finding 11: a writer created replica_id(Y, n): readers on node n got it as Y."""
    store = make(nodes=3)
    store.register_client(10, node=0)
    read, _ = reader(store, 11, node=1)
    put(store, 1)
    fake = replica_id(oid(1), 1)
    where = loc(store.create(10, fake, 64))
    store.seal(10, fake)
    assert read.lookup(fake, REPLICA) is None  # not a copy: no reader on node 1 takes it
    assert read.lookup(fake) is not None and read.lookup(fake).location == where
    store.replicate(10, oid(1), [1])
    (copy,) = events(store, Copy)
    store.placed(copy.token)
    found = read.lookup(fake, REPLICA)
    assert found is not None and found.location == copy.targets[0]  # the real copy


def test_a_client_cannot_pin_an_object_before_it_is_published():
    """Finding 11: generations were sequential: a client pinned the next 4,096 and made
    the deletes and evictions of objects not made yet wait on it. Their low 32 bits are
    random now: the next generation cannot be guessed."""
    store = make(nodes=1)
    store.register_client(10, node=0)
    read, pins = reader(store, 11, node=0)
    put(store, 1)
    first = read.lookup(oid(1))
    assert first is not None
    guesses = [
        ((first.generation >> 32) + k) << 32 | (first.generation & 0xFFFFFFFF) for k in (1, 2)
    ]
    guesses += [((first.generation >> 32) + 1) << 32 | low for low in range(8)]
    for guess in guesses:
        pins.pin(guess)
    put(store, 2)
    second = read.lookup(oid(2))
    assert second is not None and second.generation not in guesses
    assert second.generation >> 32 == (first.generation >> 32) + 1
    store.delete(10, [oid(2)])
    settle(store, 0.0)
    assert store.stats()["dying"] == 0  # no guess held it


def test_fallback_files_are_bounded_by_count_and_bytes():
    """Finding 8: one descriptor per fallback object and no bound: 20,239 small fallback
    objects used every descriptor of the coordinator."""
    from plasma.errors import StoreFull
    from tests.helpers import FallbackProvider

    store = Store(
        {0: 16 * KIB},
        FallbackProvider(),
        segment_size=16 * KIB,
        grace=0.0,
        reclaim_wait=0,
        directory_capacity=64,
        fallback=True,
        fallback_files=3,
        fallback_max=4 * 4096,
    )
    store.register_client(1)
    store.create(1, oid(1), 16 * KIB)  # the budget, referenced
    for n in range(2, 5):
        assert loc(store.create(1, oid(n), 100)).segment  # three fallback files
    with pytest.raises(StoreFull, match="all 3 fallback files are in use"):
        store.create(1, oid(5), 100)
    store.abort(1, oid(2))  # one file goes
    with pytest.raises(StoreFull, match="at most 16384 bytes"):
        store.create(1, oid(6), 3 * 4096)  # 2 + 3 pages > 4
    assert loc(store.create(1, oid(7), 4096)).segment
    assert store.stats()["fallback"]["segments"] == 3


def test_following_readers_passes_over_objects_only_on_disk() -> None:
    """(Found by the combined model: with --follow-readers and spilling, an object read from
    another node and then dropped to disk, its segment given back, made follow() raise
    KeyError, which would end the coordinator's follow loop.)"""
    store = Store(
        {0: BUDGET, 1: BUDGET},
        FakeProvider(),
        segment_size=BUDGET // 4,
        grace=GRACE,
        reclaim_wait=0,
        spill=True,
        follow_readers=ReaderTracker(min_reads=1, cooldown=0.0),
    )
    store.register_client(10, node=0)
    store.register_client(11, node=1)
    put(store, 1)
    store.get(11, [oid(1)], timeout=0)  # read from node 1
    store.release(11, oid(1))
    batch = store.spill_batch(0.0, 1 << 30)
    if batch is None:  # (nothing over the threshold: ask for it as a create would)
        store._nodes[0].spill_demand = BUDGET
        batch = store.spill_batch(0.0, 1 << 30)
    assert batch is not None
    file_id, objects = batch
    entries = [
        SpillEntry(o, lc.data_size, lc.metadata_size, lc.node, t, 8 + i, lc.data_size, i, i)
        for i, (o, lc, t) in enumerate(objects)
    ]
    store.spilled(file_id, entries, 100 + sum(e.length for e in entries), 0.01, 0.0)
    store.evict(BUDGET, now=0.0)
    settle(store, 0.0)
    assert store.objects([oid(1)])[0].state == "spilled"
    loc(store.create(10, oid(2), BUDGET, node=0, now=10.0))  # its segment goes for this one
    assert store.stats()["nodes"][0]["segments"] == 1
    assert store.follow(10.0) == 0  # nothing to move, and no KeyError
