"""Sans-I/O spilling in the store: spill batches, eviction to disk, restores, deletes of
spilled objects, failures, fallback segments, adopting a previous coordinator's files; and a
state machine that checks no memory an in-flight copy uses is ever given to another object."""

from __future__ import annotations

import collections
import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from plasma.errors import StoreFull
from plasma.records import ObjectLocation, SpillEntry
from plasma.store import (
    IO_ERROR,
    NOT_FOUND,
    OBJECT_LOST,
    CreateDone,
    GetDone,
    Pending,
    Restore,
    SpillDead,
    Store,
)
from plasma.store.objects import Io, State
from tests.helpers import KIB, FallbackProvider, events, loc, oid, reached
from tests.helpers import put as put_by


def make(budget: int = 64 * KIB, **kw: object) -> tuple[Store, FallbackProvider]:
    provider = FallbackProvider()
    kw.setdefault("grace", 0.0)
    kw.setdefault("reclaim_wait", 0)
    kw.setdefault("directory_capacity", 64)
    kw.setdefault("spill", True)
    kw.setdefault("idle_records", 0)  # every idle object compact between two calls
    store = Store({0: budget}, provider, segment_size=budget, **kw)  # type: ignore[arg-type]
    store.register_client(1)
    return store, provider


def put(store: Store, n: int, size: int = 16 * KIB, client: int = 1) -> ObjectLocation:
    return put_by(store, client, n, size)


def write(store: Store, now: float = 0.0) -> list[bytes]:
    """Play the spill I/O: take a batch and report it written; the ids written."""
    batch = store.spill_batch(now, 1 << 30)
    assert batch is not None, "the store wanted nothing spilled"
    file_id, objects = batch
    entries = [
        SpillEntry(o, lc.data_size, lc.metadata_size, lc.node, t, 8 + i, lc.data_size, i, i)
        for i, (o, lc, t) in enumerate(objects)
    ]
    store.spilled(file_id, entries, 100 + sum(e.length for e in entries), 0.01, now)
    return [o for o, _, _ in objects]


def spilled_oldest() -> Store:
    """A full store whose oldest object (0) went to disk to make room, and room for one."""
    store, _ = make()
    for n in range(4):
        put(store, n)
    store.create(1, oid(9), 16 * KIB)
    write(store)
    store.abort(1, oid(9))
    store.drain_events()
    return store


def states(store: Store) -> dict[bytes, str]:
    return {info.id: info.state for info in store.objects()}


def test_without_spill_nothing_is_asked_for():
    store, _ = make(spill=False)
    for n in range(4):
        put(store, n)
    assert store.spill_batch(0.0, 1 << 30) is None
    put(store, 9)  # eviction deletes, as in Plasma
    assert store.stats()["evictions"] == 1 and len(store.objects()) == 4


def test_a_full_store_spills_instead_of_deleting_and_the_create_waits_for_it():
    store, _ = make()
    for n in range(4):
        put(store, n)
    pending = store.create(1, oid(9), 16 * KIB)  # timeout 0: waits for the spill
    assert isinstance(pending, Pending)
    assert store.take_spill_wakeup()
    written = write(store)
    assert oid(0) in written  # CLOCK order: the oldest first
    done = [e for e in store.drain_events() if isinstance(e, CreateDone)]
    assert [d.token for d in done] == [pending.token] and isinstance(done[0].result, list)
    listed = states(store)
    assert listed[oid(0)] == "spilled" and listed[oid(9)] == "created"
    assert store.contains(oid(0))
    stats = store.stats()
    assert stats["evictions"] == 0
    assert stats["spill"]["objects"] == 1 and stats["spill"]["bytes"] == 16 * KIB


def test_get_of_a_spilled_object_restores_it_and_answers_the_get():
    store, _ = make()
    for n in range(4):
        put(store, n)
    store.create(1, oid(9), 16 * KIB)
    write(store)
    store.seal(1, oid(9))
    store.release(1, oid(9))
    store.drain_events()
    pending = store.get(1, [oid(0)], timeout=0)  # a restore is not a wait for a seal
    assert isinstance(pending, Pending)
    assert not events(store, Restore)  # the store is full: another object goes to disk first
    assert oid(1) in write(store)
    (restore,) = events(store, Restore)
    assert restore.oid == oid(0) and restore.entry.id == oid(0)
    assert store.objects([oid(0)])[0].state == "spilled"  # until the bytes are back
    store.restored(restore.token, seconds=0.01, now=1.0)
    (done,) = events(store, GetDone)
    assert done.token == pending.token and done.results == [restore.location]
    assert states(store)[oid(0)] == "sealed"
    # it keeps its copy: evicting it again needs no write
    assert store.stats()["spill"]["restored_objects"] == 1
    store.release(1, oid(0))
    assert isinstance(store.create(1, oid(10), 16 * KIB), ObjectLocation)


def test_a_lost_copy_fails_its_get_and_drops_only_that_object():
    store, _ = make()
    for n in range(4):
        put(store, n)
    store.create(1, oid(9), 32 * KIB)
    write(store)  # two objects (0 and 1) spilled
    store.abort(1, oid(9))
    store.drain_events()
    p0 = store.get(1, [oid(0)], timeout=5)
    (r0,) = events(store, Restore)
    store.restored(r0.token, "spill file gone", lost=True, now=1.0)
    (done,) = events(store, GetDone)
    assert done.token == p0.token and done.results == [OBJECT_LOST]
    assert oid(0) not in states(store) and states(store)[oid(1)] == "spilled"
    assert store.stats()["spill"]["lost"] == 1
    assert store.stats()["used"] == 2 * 16 * KIB  # the restore's memory went back


def test_a_failed_read_keeps_the_object_on_disk_for_a_later_get():
    store = spilled_oldest()
    store.get(1, [oid(0)], timeout=5)
    (r,) = events(store, Restore)
    store.restored(r.token, "EIO", now=1.0)
    assert events(store, GetDone)[0].results == [IO_ERROR]
    assert states(store)[oid(0)] == "spilled"
    store.get(1, [oid(0)], timeout=5)
    assert events(store, Restore)  # tried again


def test_delete_of_a_spilled_object_removes_it_from_disk():
    store, _ = make()
    for n in range(4):
        put(store, n)
    store.create(1, oid(9), 32 * KIB)
    written = write(store)
    assert len(written) == 2
    store.drain_events()
    deleted, deferred, missing = store.delete(1, [oid(0)])
    assert deleted == [oid(0)] and not deferred and not missing
    (dead,) = events(store, SpillDead)
    assert dead.entry.id == oid(0) and not dead.empty  # object 1 lives on in the file
    store.delete(1, [oid(1)])
    (dead,) = events(store, SpillDead)
    assert dead.empty  # the file goes with its last object
    assert store.stats()["spill"]["files"] == 0 and store.stats()["spill"]["objects"] == 0


def test_an_object_deleted_while_being_written_keeps_its_memory_until_the_write_ends():
    store, _ = make()
    for n in range(4):
        put(store, n)
    waiting = store.create(1, oid(9), 16 * KIB)
    file_id, objects = store.spill_batch(0.0, 1 << 30)
    (victim, where, _), *_ = objects
    store.delete(1, [victim])
    # the memory being read must not go to another object before the write ends: neither
    # to a new create nor to the one waiting since before
    assert isinstance(store.create(1, oid(11), 16 * KIB), Pending)
    assert not events(store, CreateDone)
    entries = [SpillEntry(o, 1, 0, 0, 0.0, 8, 1, 0, i) for i, (o, _, _) in enumerate(objects)]
    store.spilled(file_id, entries, 100, 0.0, 0.0)
    drained = store.drain_events()
    dead = [e for e in drained if isinstance(e, SpillDead)]
    assert dead and dead[0].empty  # nothing live: the file is removed
    (done,) = [e for e in drained if isinstance(e, CreateDone)]  # then the memory is given
    assert isinstance(waiting, Pending) and done.token == waiting.token
    assert done.result == [ObjectLocation(where.segment, where.offset, 16 * KIB, 0, 0)]
    assert store.stats()["used"] <= 4 * 16 * KIB


def test_an_object_deleted_while_being_restored_frees_its_memory_only_after():
    store = spilled_oldest()
    pending = store.get(1, [oid(0)], timeout=5)
    (r,) = events(store, Restore)
    assert isinstance(pending, Pending)
    store.delete(1, [oid(0)])
    assert events(store, GetDone)[0].results == [NOT_FOUND]
    # the range being written is still allocated: nothing else may get it
    used = store.stats()["used"]
    store.restored(r.token, now=1.0)
    assert store.stats()["used"] == used - 16 * KIB
    assert oid(0) not in states(store)


def test_a_failed_spill_keeps_everything_in_memory_and_says_why_the_create_failed():
    store, _ = make()
    for n in range(4):
        put(store, n)
    pending = store.create(1, oid(9), 16 * KIB, timeout=1)
    file_id, _ = store.spill_batch(0.0, 1 << 30)
    store.spill_failed(file_id, "No space left on device (/spill)", 0.0)
    assert all(s == "sealed" for o, s in states(store).items() if o != oid(9))
    store.expire(2.0)
    (done,) = [e for e in store.drain_events() if isinstance(e, CreateDone)]
    assert done.token == pending.token and isinstance(done.result, StoreFull)
    message = str(done.result)
    assert "No space left on device" in message and "unreferenced" in message
    assert store.stats()["spill"]["errors"] == 1


def test_referenced_and_pinned_objects_are_not_spilled():
    store, _ = make()
    for n in range(4):
        put(store, n)
    store.get(1, [oid(0)], timeout=0)  # held
    store.create(1, oid(9), 16 * KIB)
    assert oid(0) not in write(store)


def test_threshold_spills_ahead_of_need_and_eviction_then_waits_for_nothing():
    store, _ = make(spill_threshold=0.5)
    put(store, 0)
    put(store, 1)
    assert store.spill_batch(0.0, 1 << 30) is None  # at the threshold, not past it
    put(store, 2)
    assert store.take_spill_wakeup()
    assert write(store) == [oid(0), oid(1)]  # down to the threshold, and 1/16 more
    put(store, 3)
    assert store.spill_batch(0.0, 1 << 30) is None  # the bytes without a copy: at 1/2
    assert isinstance(store.create(1, oid(9), 16 * KIB), ObjectLocation)  # no wait


def test_spill_max_bounds_the_bytes_on_disk():
    store, _ = make(spill_max=40 * KIB)
    for n in range(4):
        put(store, n)
    store.create(1, oid(9), 16 * KIB, timeout=1)
    assert write(store) == [oid(0)]  # a file of 16 KiB + 100 bytes
    store.create(1, oid(10), 16 * KIB, timeout=1)
    assert write(store) == [oid(1)]
    pending = store.create(1, oid(11), 16 * KIB, timeout=1)
    assert isinstance(pending, Pending)
    assert store.spill_batch(0.0, 1 << 30) is None  # another file would pass the limit
    store.expire(5.0)
    (failed,) = [e for e in events(store, CreateDone) if e.token == pending.token]
    assert "of at most 40960 bytes" in str(failed.result)
    assert store.stats()["spill"]["disk_bytes"] <= 40 * KIB


def test_a_get_of_a_spilled_object_fails_when_nothing_can_make_room_for_it():
    """The spill files are full and memory holds only objects without a copy: a get of an
    object on disk fails with store_full at once, instead of waiting forever."""
    store, _ = make(spill_max=20 * KIB)
    for n in range(4):
        put(store, n)
    store.create(1, oid(9), 16 * KIB, timeout=1)
    assert write(store) == [oid(0)]  # (the only file there is room for)
    store.expire(1.0)
    (made,) = events(store, CreateDone)
    assert isinstance(made.result, list) and states(store)[oid(0)] == "spilled"
    store.seal(1, oid(9))
    store.release(1, oid(9))
    pending = store.get(1, [oid(0)], timeout=None)
    assert isinstance(pending, Pending)
    (done,) = [e for e in events(store, GetDone) if e.token == pending.token]
    assert done.results == ["store_full"]
    assert states(store)[oid(0)] == "spilled"  # still on disk, for a later get
    store.delete(1, [oid(3)])  # room: now it comes back
    assert isinstance(store.get(1, [oid(0)], timeout=None), Pending)
    (restore,) = events(store, Restore)
    assert restore.oid == oid(0)


def test_spill_max_objects_bounds_the_objects_on_disk():
    """Each object with a copy on disk costs the coordinator a record even once dropped from
    memory: their number is bounded, and a create that would need more says so."""
    store, _ = make(spill_max_objects=2)
    for n in range(4):
        put(store, n)
    for n in (10, 11):
        store.create(1, oid(n), 16 * KIB, timeout=1)
        write(store)
        store.expire(1.0)
        (made,) = events(store, CreateDone)
        assert isinstance(made.result, list)
        store.seal(1, oid(n))
        store.release(1, oid(n))
    assert store.stats()["spill"]["max_objects"] == 2
    pending = store.create(1, oid(12), 16 * KIB, timeout=1)
    assert isinstance(pending, Pending)
    assert store.spill_batch(0.0, 1 << 30) is None  # a third copy would pass the bound
    store.expire(5.0)
    (failed,) = [e for e in events(store, CreateDone) if e.token == pending.token]
    assert "2 objects, the most allowed" in str(failed.result)


def test_fallback_serves_a_create_when_everything_is_referenced():
    store, provider = make(fallback=True)
    for n in range(4):
        store.create(1, oid(n), 16 * KIB)  # unsealed: nothing to evict or spill
    placed = loc(store.create(1, oid(9), 16 * KIB))
    assert placed.segment in provider.fallback
    stats = store.stats()
    assert stats["fallback"]["bytes"] == 16 * KIB and stats["used"] == 64 * KIB
    store.seal(1, oid(9))
    store.release(1, oid(9))
    store.delete(1, [oid(9)])
    assert not provider.fallback and store.stats()["fallback"]["bytes"] == 0


def test_fallback_is_not_used_while_spilling_can_make_room():
    store, provider = make(fallback=True)
    for n in range(4):
        put(store, n)
    assert isinstance(store.create(1, oid(9), 16 * KIB), Pending)
    assert not provider.fallback


def test_fallback_disk_full_is_store_full():
    store, provider = make(fallback=True)
    provider.disk = 0
    for n in range(4):
        store.create(1, oid(n), 16 * KIB)
    with pytest.raises(StoreFull, match="fallback disk full"):
        store.create(1, oid(9), 16 * KIB)


def test_adopted_files_come_back_as_spilled_objects_and_the_newest_copy_wins():
    store, _ = make()
    old = SpillEntry(oid(1), 100, 4, 0, 5.0, 8, 104, 7, 0)
    new = SpillEntry(oid(1), 200, 0, 0, 6.0, 8, 200, 9, 0)
    other = SpillEntry(oid(2), 10, 0, 3, 7.0, 112, 10, 1, 1)  # node 3 is gone: node 0
    assert store.adopt_spilled({4: ([old, other], 500), 9: ([new], 300)}) == 2
    infos = {i.id: i for i in store.objects()}
    assert infos[oid(1)].data_size == 200 and infos[oid(1)].state == "spilled"
    assert infos[oid(2)].node == 0
    dead = events(store, SpillDead)
    assert [(d.file, d.entry.id, d.empty) for d in dead] == [(4, oid(1), False)]
    batch = None
    for n in range(10, 14):
        put(store, n)
    store.create(1, oid(20), 16 * KIB)
    batch = store.spill_batch(0.0, 1 << 30)
    assert batch is not None and batch[0] == 10  # new files never reuse an old id


# ---------------------------------------------------------------- state machine


class SpillMachine(RuleBasedStateMachine):
    """Random creates, gets, releases, deletes and disconnects by two clients, spill batches
    and restores (completing, failing, or losing the copy), with the I/O's completions in
    any order. Invariant: the memory ranges of resident objects and of in-flight restores
    never overlap, and a range an in-flight spill reads is never reused while the write is
    under way."""

    def __init__(self) -> None:
        super().__init__()
        self.store, _ = make(budget=64 * KIB, spill_threshold=0.75)
        self.store.register_client(2)
        self.clients = [1, 2]  # a disconnected client comes back under a new id
        self.n = 0
        self.held: list[tuple[int, bytes]] = []  # (client, id) of each reference taken
        self.batch: tuple[int, list] | None = None
        self.restores: list[Restore] = []
        self.now = 0.0
        self.waiting: dict[int, tuple[int, bytes]] = {}  # token of a get or create -> ...
        self.outcomes: collections.Counter[str] = collections.Counter()  # what happened

    def _drain(self) -> None:
        for e in self.store.drain_events():
            if isinstance(e, Restore):
                self.restores.append(e)
            elif isinstance(e, GetDone):
                if isinstance(e.results[0], ObjectLocation):
                    self.held.append(self.waiting.pop(e.token))
                else:
                    del self.waiting[e.token]
            elif isinstance(e, CreateDone) and isinstance(e.result, list):
                client, created = self.waiting.pop(e.token)
                self.store.seal(client, created, now=self.now)
                self.store.release(client, created, now=self.now)

    @rule(c=st.integers(0, 1), size=st.sampled_from([1, 4 * KIB, 16 * KIB, 24 * KIB]))
    def create(self, c: int, size: int) -> None:
        self.n += 1
        client = self.clients[c]
        try:
            result = self.store.create(client, oid(self.n), size, timeout=1)
        except StoreFull:
            return
        if isinstance(result, ObjectLocation):
            self.store.seal(client, oid(self.n))
            self.store.release(client, oid(self.n))
        else:
            self.waiting[result.token] = (client, oid(self.n))
        self._drain()

    @rule(c=st.integers(0, 1), size=st.sampled_from([4 * KIB, 16 * KIB]))
    def create_another(self, c: int, size: int) -> None:  # (creates twice as often as the rest)
        self.create(c, size)

    @rule(c=st.integers(0, 1), data=st.data(), spilled=st.booleans())
    def get(self, c: int, data: st.DataObject, spilled: bool) -> None:
        wanted = ("spilled",) if spilled else ("sealed", "spilled")
        ids = [i.id for i in self.store.objects() if i.state in wanted]
        if not ids:
            return
        client, target = self.clients[c], data.draw(st.sampled_from(ids))
        result = self.store.get(client, [target], timeout=None, now=self.now)
        if isinstance(result, Pending):
            self.waiting[result.token] = (client, target)
        elif isinstance(result[0], ObjectLocation):
            self.held.append((client, target))
        self._drain()

    @rule(c=st.integers(0, 1), data=st.data(), ok=st.sampled_from([True, True, False]))
    def spill_then_get(self, c: int, data: st.DataObject, ok: bool) -> None:
        """Fill the store past its threshold, write what it asks for, get a spilled object
        (so that restores happen: spill batches are rare otherwise)."""
        for _ in range(8):
            if self.batch is not None or self.store.stats()["used"] > 52 * KIB:
                break
            self.create(c, 16 * KIB)
        if self.batch is None:
            self.take_batch()
        if self.batch is not None:
            self.finish_batch(ok)
        self.get(c, data, spilled=True)

    @precondition(lambda self: self.restores)
    @rule(c=st.integers(0, 1), data=st.data())
    def delete_restoring(self, c: int, data: st.DataObject) -> None:
        restoring = data.draw(st.sampled_from(self.restores)).oid
        self.store.delete(self.clients[c], [restoring], now=self.now)
        self._drain()

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        client, target = data.draw(st.sampled_from(self.held))
        self.held.remove((client, target))
        self.store.release(client, target, now=self.now)
        self._drain()

    @rule(c=st.integers(0, 1), data=st.data())
    def delete(self, c: int, data: st.DataObject) -> None:
        ids = [i.id for i in self.store.objects() if i.state != "created"]
        if ids:
            self.store.delete(self.clients[c], [data.draw(st.sampled_from(ids))], now=self.now)
            self._drain()

    @rule(c=st.integers(0, 1))
    def disconnect(self, c: int) -> None:
        gone = self.clients[c]
        self.outcomes["disconnect"] += 1
        if any(client == gone for client, _ in self.waiting.values()):
            self.outcomes["disconnect while waiting"] += 1
        self.store.disconnect(gone, now=self.now)
        self.held = [h for h in self.held if h[0] != gone]
        self.waiting = {t: w for t, w in self.waiting.items() if w[0] != gone}
        self.clients[c] = max(self.clients) + 1
        self.store.register_client(self.clients[c])
        self._drain()

    @precondition(lambda self: self.batch is None)
    @rule()
    def take_batch(self) -> None:
        self.batch = self.store.spill_batch(self.now, 32 * KIB)
        self._drain()

    @precondition(lambda self: self.batch is not None)
    @rule(ok=st.sampled_from([True, True, False]))
    def finish_batch(self, ok: bool) -> None:
        assert self.batch is not None
        file_id, objects = self.batch
        self.batch = None
        if ok:
            entries = [
                SpillEntry(o, lc.data_size, lc.metadata_size, 0, t, 8, lc.data_size, 0, i)
                for i, (o, lc, t) in enumerate(objects)
            ]
            self.store.spilled(file_id, entries, 64 + len(entries), 0.0, self.now)
            self.outcomes["spilled"] += 1
        else:
            self.store.spill_failed(file_id, "ENOSPC", self.now)
            self.outcomes["spill failed"] += 1
        self._drain()

    @precondition(lambda self: self.restores)
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "ok", "lost", "error"]))
    def finish_restore(self, data: st.DataObject, outcome: str) -> None:
        r = self.restores.pop(data.draw(st.integers(0, len(self.restores) - 1)))
        if r.oid not in self.store._objects:
            self.outcomes["restore of a deleted object"] += 1
        error = None if outcome == "ok" else outcome
        self.store.restored(r.token, error, lost=outcome == "lost", now=self.now)
        self.outcomes[f"restore {outcome}"] += 1
        self._drain()

    @rule()
    def tick(self) -> None:
        self.now += 0.5
        self.store.expire(self.now)
        self._drain()

    @invariant()
    def memory_is_never_shared(self) -> None:
        store = self.store
        ranges = []
        for o, rec in store._objects.items():
            if rec.state is not State.SPILLED or rec.io is Io.RESTORING:
                ranges.append((rec.loc.segment, rec.loc.offset, rec.size, o))
        for r in self.restores:  # restores of objects deleted meanwhile still own memory
            size = r.location.data_size + r.location.metadata_size
            ranges.append((r.location.segment, r.location.offset, max(1, size), r.oid))
        if self.batch is not None:
            for o, lc, _ in self.batch[1]:
                ranges.append((lc.segment, lc.offset, max(1, lc.data_size), o))
        ranges = sorted(set(ranges))
        for (s1, o1, n1, id1), (s2, o2, _, id2) in itertools.pairwise(ranges):
            if s1 == s2 and id1 != id2:
                assert o1 + n1 <= o2, f"{id1.hex()} and {id2.hex()} share memory"

    @invariant()
    def accounting_adds_up(self) -> None:
        store = self.store
        stats = store.stats()
        spilled = [r for r in store._objects.values() if r.state is State.SPILLED]
        assert stats["spill"]["objects"] == sum(1 for r in spilled)
        assert stats["spill"]["bytes"] == sum(r.loc.data_size for r in spilled)
        for r in spilled:
            assert r.spill is not None and r.spill[0] in store._spill.files
        live = {}
        for r in store._objects.values():
            if r.spill is not None:
                live[r.spill[0]] = live.get(r.spill[0], 0) + 1
        assert live == {f: v[0] for f, v in store._spill.files.items()}
        for nd in store._nodes.values():
            assert nd.clock.copied == sum(r.size for r in nd.clock.records() if r.spill is not None)

    @invariant()
    def no_memory_leaks(self) -> None:
        store = self.store
        holders = [
            r
            for r in store._objects.values()
            if r.state is not State.SPILLED or r.io is Io.RESTORING
        ]
        holders += [r for _, r in store._spill.restoring.values()]
        holders += [r for _, _, r in store._dying.waiting.values()] + [
            r for _, r in store._dying.pinned.values()
        ]
        unique = {id(r): r for r in holders}
        after_io = sum(f.size for held in store._after_io.values() for f in held)
        assert store.stats()["used"] == sum(r.size for r in unique.values()) + after_io


SPILL_MACHINE_SETTINGS = settings(max_examples=200, stateful_step_count=60, deadline=None)
SpillMachine.TestCase.settings = SPILL_MACHINE_SETTINGS
TestSpillMachine = SpillMachine.TestCase


def test_the_spill_machine_reaches_restores_failures_and_disconnects() -> None:
    """A change to the rules that stops the machine restoring, failing or disconnecting
    fails here instead of silently testing less."""
    wanted = [
        "spilled",
        "spill failed",
        "restore ok",
        "restore lost",
        "restore error",
        "restore of a deleted object",
        "disconnect",
        "disconnect while waiting",
    ]
    reached(SpillMachine, SPILL_MACHINE_SETTINGS, wanted, examples=100, at_least=3)


def test_a_reader_that_disconnects_during_its_restore_leaves_the_object_evictable():
    store = spilled_oldest()
    store.register_client(2)
    store.get(2, [oid(0)], timeout=None)
    (r,) = events(store, Restore)
    store.disconnect(2)
    store.restored(r.token, now=1.0)
    assert not events(store, GetDone)
    assert states(store)[oid(0)] == "sealed"
    # unreferenced, with its copy: the next create drops it at once, no write needed
    assert isinstance(store.create(1, oid(10), 16 * KIB), ObjectLocation)
    assert states(store)[oid(0)] == "spilled"


def test_a_restore_waiting_for_memory_is_dropped_when_its_get_gives_up():
    store, _ = make()
    for n in range(4):
        store.create(1, oid(n), 16 * KIB)  # unsealed: memory nothing can free
    store.adopt_spilled({1: ([SpillEntry(oid(7), 100, 0, 0, 1.0, 8, 100, 0, 0)], 200)})
    pending = store.get(1, [oid(7)], timeout=1, now=0.0)
    assert isinstance(pending, Pending) and not events(store, Restore)
    store.expire(2.0)
    assert events(store, GetDone)[0].results == ["timeout"]
    store.abort(1, oid(0), now=3.0)  # room now, but nobody wants the object
    assert not events(store, Restore)
    assert states(store)[oid(7)] == "spilled"


def test_evict_with_spilling_drops_only_objects_with_a_copy():
    store, _ = make(spill_threshold=0.5)
    for n in range(4):
        put(store, n)
    assert store.evict(64 * KIB) == 0  # no copies yet: nothing may go
    # copies ahead of need (down to half the budget, and 1/8 more), still in memory
    assert write(store) == [oid(0), oid(1), oid(2)]
    assert store.evict(64 * KIB) == 48 * KIB
    assert list(states(store).values()) == ["spilled", "spilled", "spilled", "sealed"]
