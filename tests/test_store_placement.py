"""Sans-I/O pages on other nodes: interleaved creates, migrate, objects that follow their
readers, the budgets they count against, and pages moved back before memory is reused."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from plasma.errors import BadRequest, ObjectNotFound, PlacementImpossible, PlasmaError, StoreFull
from plasma.follow import ReaderTracker
from plasma.records import ObjectLocation
from plasma.store import Copy, CreateDone, MigrateDone, Pending, Place, ReplicateDone, Store
from plasma.store.moves import RehomeJob
from tests.helpers import KIB, PAGE, FakeProvider, charges_placed_in, events, loc, oid, reached
from tests.helpers import put as put_by

BUDGET = 64 * KIB


def make(nodes: int = 4, **kw: object) -> Store:
    kw.setdefault("grace", 0.0)
    kw.setdefault("reclaim_wait", 0)
    kw.setdefault("directory_capacity", 64)
    store = Store(
        {n: BUDGET for n in range(nodes)},
        FakeProvider(),
        segment_size=BUDGET,
        **kw,  # type: ignore[arg-type]
    )
    for n in range(nodes):
        store.register_client(10 + n, node=n)  # client 10 + n runs on node n
    return store


def put(store: Store, n: int, size: int = 16 * KIB, client: int = 10) -> ObjectLocation:
    return put_by(store, client, n, size)


def placed_in(store: Store) -> list[int]:
    return [store.stats()["nodes"][n]["placed_in"] for n in range(4)]


def test_an_interleaved_create_is_page_aligned_and_charges_every_node_its_share():
    store = make()
    pending = store.create(10, oid(1), 16 * KIB - 100, interleave=[])
    assert isinstance(pending, Pending)
    (place,) = events(store, Place)
    assert place.mode == "interleave" and place.nodes == [0, 1, 2, 3]
    assert place.start % PAGE == 0 and place.length == 16 * KIB
    assert placed_in(store) == [0, 4 * KIB, 4 * KIB, 4 * KIB]  # a page each, node 0 is home
    store.placed(place.token)
    (done,) = events(store, CreateDone)
    assert done.token == pending.token and done.result[0].offset == place.start
    store.seal(10, oid(1))
    info = store.objects([oid(1)])[0]
    assert info.pages_on == [0, 1, 2, 3] and info.node == 0


def test_interleaving_over_one_node_is_an_ordinary_create():
    store = make()
    assert isinstance(store.create(10, oid(1), 100, interleave=[2]), ObjectLocation)
    assert not events(store, Place)
    assert store.objects([oid(1)])[0].node == 2


def test_an_interleaved_create_fails_when_a_node_has_no_room_for_its_share():
    store = make()
    for n in range(4):
        put(store, 100 + n, client=12)  # node 2 is full
    with pytest.raises(StoreFull, match="node 2 has no room"):
        store.create(10, oid(1), 16 * KIB, interleave=[0, 1, 2, 3])
    assert oid(1) not in {i.id for i in store.objects()}
    assert placed_in(store) == [0, 0, 0, 0]
    assert not events(store, Place)  # nothing was started


def test_unknown_nodes_are_refused():
    store = make()
    with pytest.raises(PlacementImpossible):
        store.create(10, oid(1), 100, interleave=[0, 9])
    put(store, 2)
    with pytest.raises(PlacementImpossible):
        store.migrate(10, oid(2), 9)


def test_migrate_moves_pages_and_the_charge_and_back_home():
    store = make()
    where = put(store, 1, 16 * KIB)
    pending = store.migrate(11, oid(1), 1)
    assert isinstance(pending, Pending)
    (place,) = events(store, Place)
    assert place.mode == "bind" and place.nodes == [1]
    assert place.start <= where.offset and where.offset + 16 * KIB <= place.start + place.length
    assert placed_in(store) == [0, 16 * KIB, 0, 0]
    store.placed(place.token)
    (moved,) = events(store, MigrateDone)
    assert moved.token == pending.token and moved.result == [1]
    assert store.objects([oid(1)])[0].pages_on == [1]
    assert store.migrate(11, oid(1), 1) == [1]  # there already: no move
    store.migrate(10, oid(1), 0)  # home again: no charge elsewhere
    assert placed_in(store) == [0, 0, 0, 0]
    (place,) = events(store, Place)
    store.placed(place.token)
    assert store.objects([oid(1)])[0].pages_on == []


def test_a_migrated_object_s_memory_is_reused_only_after_its_pages_came_back():
    store = make()
    for n in range(4):
        put(store, n)  # node 0 full
    store.migrate(10, oid(0), 3)
    (place,) = events(store, Place)
    store.placed(place.token)
    store.delete(10, [oid(0)])
    (rehome,) = events(store, Place)
    assert rehome.mode == "bind" and rehome.nodes == [0]
    # the range is still taken: a create on node 0 finds no room (nothing evictable either)
    for n in range(1, 4):
        store.get(10, [oid(n)], timeout=0)
    with pytest.raises(StoreFull):
        store.create(10, oid(9), 16 * KIB)
    assert placed_in(store)[3] == 16 * KIB
    store.placed(rehome.token)
    assert placed_in(store) == [0, 0, 0, 0]
    assert isinstance(store.create(10, oid(9), 16 * KIB), ObjectLocation)


def test_migrate_refuses_what_it_cannot_move():
    store = make()
    store.create(10, oid(1), 100)
    with pytest.raises(ObjectNotFound):
        store.migrate(10, oid(1), 1)  # not sealed
    for n in range(4):
        put(store, 100 + n, client=11)  # node 1 full
    put(store, 2)
    with pytest.raises(StoreFull, match="node 1 has no room"):
        store.migrate(10, oid(2), 1)
    store.migrate(10, oid(2), 2)
    with pytest.raises(BadRequest, match="being moved"):
        store.migrate(10, oid(2), 3)


def test_an_object_being_moved_is_not_evicted_and_a_delete_waits_for_the_move():
    store = make()
    put(store, 0)
    store.migrate(10, oid(0), 1)
    (place,) = events(store, Place)
    for n in range(1, 4):
        put(store, n)
        store.get(10, [oid(n)], timeout=0)  # held
    with pytest.raises(StoreFull):  # the only evictable object on node 0 is moving
        store.create(10, oid(9), 16 * KIB)
    store.delete(10, [oid(0)])
    assert not events(store, Place)  # no move back while the move is under way
    store.placed(place.token)
    drained = store.drain_events()
    (moved,) = [e for e in drained if isinstance(e, MigrateDone)]  # the migrate is answered
    assert moved.client == 10 and isinstance(moved.result, ObjectNotFound)
    (rehome,) = [e for e in drained if isinstance(e, Place)]
    assert rehome.nodes == [0]
    store.placed(rehome.token)
    assert isinstance(store.create(10, oid(9), 16 * KIB), ObjectLocation)


def test_a_failed_interleave_fails_the_create_and_gives_the_memory_back_after_rehoming():
    store = make()
    store.create(10, oid(1), 16 * KIB, interleave=[])
    (place,) = events(store, Place)
    store.placed(place.token, "ENOMEM")
    drained = store.drain_events()
    (done,) = [e for e in drained if isinstance(e, CreateDone)]
    assert isinstance(done.result, PlasmaError) and "ENOMEM" in str(done.result)
    (rehome,) = [e for e in drained if isinstance(e, Place)]
    assert oid(1) not in {i.id for i in store.objects()}
    store.placed(rehome.token)
    assert store.stats()["used"] == 0 and placed_in(store) == [0, 0, 0, 0]


def test_a_creator_that_disconnects_during_its_interleave_leaks_nothing():
    store = make()
    store.create(10, oid(1), 16 * KIB, interleave=[])
    (place,) = events(store, Place)
    store.disconnect(10)
    store.placed(place.token)
    drained = store.drain_events()
    assert not [e for e in drained if isinstance(e, CreateDone)]
    (rehome,) = [e for e in drained if isinstance(e, Place)]
    store.placed(rehome.token)
    assert store.stats()["used"] == 0 and placed_in(store) == [0, 0, 0, 0]


def test_objects_follow_their_readers_with_hysteresis():
    tracker = ReaderTracker(min_reads=4, cooldown=5.0)
    store = make(follow_readers=tracker)
    put(store, 1)  # on node 0
    for i in range(4):
        store.get(12, [oid(1)], timeout=0, now=float(i))  # a reader on node 2
        store.release(12, oid(1))
    store.get(10, [oid(1)], timeout=0, now=4.0)  # one read from home
    store.release(10, oid(1))
    assert store.follow(4.5) == 1
    (place,) = events(store, Place)
    assert place.nodes == [2]
    store.placed(place.token, now=5.0)
    for i in range(6):  # now node 3 reads it: not before the cooldown
        store.get(13, [oid(1)], timeout=0, now=5.5 + i * 0.1)
        store.release(13, oid(1))
    assert store.follow(6.5) == 0
    assert store.follow(10.5) == 1
    assert events(store, Place)[0].nodes == [3]


def test_the_reader_tracker_needs_a_clear_majority_and_forgets_the_oldest():
    t = ReaderTracker(share=0.75, min_reads=4, window=10.0, cooldown=0.0, max_objects=2)
    for node in (1, 1, 2, 2):
        t.read(b"a", node, 0.0)
    assert t.proposal(b"a", 0, 1.0) is None  # half from each: no majority
    for _ in range(3):
        t.read(b"a", 1, 1.0)
    assert t.proposal(b"a", 0, 1.0) is None  # 5 of 7
    t.read(b"a", 1, 1.0)
    assert t.proposal(b"a", 0, 1.0) == 1  # 6 of 8: three quarters
    assert t.proposal(b"a", 1, 1.0) is None  # already there
    t.read(b"a", 2, 20.0)  # a new window: one read is not enough
    assert t.proposal(b"a", 0, 20.0) is None
    t.read(b"b", 1, 20.0)
    t.read(b"c", 1, 20.0)
    assert t.candidates() == [b"b", b"c"]  # "a" was the least recently read
    with pytest.raises(ValueError):
        ReaderTracker(share=0.5)


def replicated(store: Store, n: int, nodes: list[int]) -> Copy:
    """Object ``n`` (16 KiB on node 0) with copies on ``nodes`` made."""
    put(store, n)
    pending = store.replicate(10, oid(n), nodes)
    assert isinstance(pending, Pending)
    (copy,) = events(store, Copy)
    store.placed(copy.token)
    (done,) = events(store, ReplicateDone)
    assert done.token == pending.token and done.result == sorted({0, *nodes})
    return copy


def used_on(store: Store) -> list[int]:
    return [store.stats()["nodes"][n]["used"] for n in range(4)]


def test_a_reader_gets_the_copy_on_its_node_and_the_others_the_object():
    store = make()
    copy = replicated(store, 1, [2, 3])
    assert [t.node for t in copy.targets] == [2, 3] and copy.length == 16 * KIB
    assert used_on(store) == [16 * KIB, 0, 16 * KIB, 16 * KIB]
    assert store.objects([oid(1)])[0].replicas == [2, 3]
    assert [i.id for i in store.objects()] == [oid(1)]  # the copies are not objects
    on2 = loc(store.get(12, [oid(1)], timeout=0)[0])
    on1 = loc(store.get(11, [oid(1)], timeout=0)[0])
    assert on2.node == 2 and on2 == copy.targets[0]
    assert on1.node == 0 and on1 != on2
    assert store.replicate(10, oid(1), [2]) == [0, 2, 3]  # there already


def test_copies_go_with_the_object_but_not_before_its_readers_let_go():
    store = make()
    replicated(store, 1, [2])
    store.get(12, [oid(1)], timeout=0)  # a reader on node 2 holds the copy
    _, deferred, _ = store.delete(10, [oid(1)])
    assert deferred == [oid(1)]
    assert used_on(store)[2] == 16 * KIB  # its copy stays while it is read
    store.release(12, oid(1))
    assert used_on(store) == [0, 0, 0, 0] and store.stats()["replicas"] == 0


def test_eviction_takes_the_copies_too():
    store = make()
    replicated(store, 1, [3])
    for n in range(2, 6):
        put(store, n)  # node 0 fills: object 1, the oldest, is evicted
    assert oid(1) not in {i.id for i in store.objects()}
    assert used_on(store)[3] == 0 and store.stats()["replicas"] == 0


def test_no_copy_is_made_when_a_node_has_no_room():
    store = make()
    for n in range(4):
        put(store, 100 + n, client=13)
        store.get(13, [oid(100 + n)], timeout=0)  # node 3 full, held
    put(store, 1)
    with pytest.raises(StoreFull):
        store.replicate(10, oid(1), [2, 3])
    assert used_on(store) == [16 * KIB, 0, 0, 64 * KIB]
    assert not events(store, Copy)


def test_a_failed_copy_keeps_no_copy():
    store = make()
    put(store, 1)
    pending = store.replicate(10, oid(1), [1])
    (copy,) = events(store, Copy)
    store.placed(copy.token, "EIO")
    (done,) = events(store, ReplicateDone)
    assert done.token == pending.token and isinstance(done.result, PlasmaError)
    assert used_on(store) == [16 * KIB, 0, 0, 0] and store.objects([oid(1)])[0].replicas == []


def test_an_object_deleted_while_being_copied_keeps_no_copy_and_frees_after():
    store = make()
    put(store, 1)
    store.replicate(10, oid(1), [1])
    (copy,) = events(store, Copy)
    store.delete(10, [oid(1)])
    assert used_on(store)[0] == 16 * KIB  # being read by the copy: not freed yet
    store.placed(copy.token)
    assert used_on(store) == [0, 0, 0, 0]


def test_what_a_sync_waits_for_includes_the_copies_of_what_was_deleted():
    store = make(grace=0.002)
    put(store, 1)
    store.replicate(10, oid(1), [1, 2])
    (copy,) = events(store, Copy)
    store.placed(copy.token)
    store.delete(10, [oid(1)], now=1.0)
    due = store.reclaimed_by()
    assert due is not None
    store.expire(due)  # (what a Sync waits for: everything deleted before it is free)
    assert used_on(store) == [0, 0, 0, 0] and store.stats()["replicas"] == 0


# ---------------------------------------------------------------- state machine


class PlacementMachine(RuleBasedStateMachine):
    """Random creates (some interleaved), gets, releases, deletes, migrations, disconnects
    and page moves finishing (or failing) in any order, on three nodes. Invariants: no two
    objects (or a range being moved back) share memory, nothing leaks, and each node's
    charge is what the objects on it add up to."""

    def __init__(self) -> None:
        super().__init__()
        self.store = make(nodes=3, max_waiters=64)
        self.n = 0
        self.places: list[Place | Copy] = []
        self.held: list[tuple[int, bytes]] = []
        self.creating: dict[int, tuple[int, bytes]] = {}  # token -> (client, id)
        self.outcomes: collections.Counter[str] = collections.Counter()  # what happened

    def _drain(self) -> None:
        for e in self.store.drain_events():
            if isinstance(e, Place | Copy):
                self.places.append(e)
            elif isinstance(e, CreateDone) and e.token in self.creating:
                client, created = self.creating.pop(e.token)
                if isinstance(e.result, list):
                    self.store.seal(client, created)
                    self.store.release(client, created)

    @rule(
        client=st.sampled_from([10, 11, 12]),
        interleave=st.booleans(),
        size=st.sampled_from([100, 4 * KIB, 9 * KIB]),
    )
    def create(self, client: int, interleave: bool, size: int) -> None:
        self.n += 1
        try:
            res = self.store.create(
                client, oid(self.n), size, interleave=[] if interleave else None
            )
        except (StoreFull, BadRequest):
            return
        if isinstance(res, Pending):
            self.creating[res.token] = (client, oid(self.n))
        else:
            self.store.seal(client, oid(self.n))
            self.store.release(client, oid(self.n))
        self._drain()

    def _sealed(self) -> list[bytes]:
        return [i.id for i in self.store.objects() if i.state == "sealed"]

    @rule(data=st.data(), client=st.sampled_from([10, 11, 12]))
    def get(self, data: st.DataObject, client: int) -> None:
        ids = self._sealed()
        if ids:
            target = data.draw(st.sampled_from(ids))
            if isinstance(self.store.get(client, [target], timeout=0)[0], ObjectLocation):
                self.held.append((client, target))

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        client, target = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.store.release(client, target)
        self._drain()

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        ids = self._sealed()
        if ids:
            self.store.delete(10, [data.draw(st.sampled_from(ids))])
            self._drain()

    def _move(self, what: str, call: Callable[[], list[int] | Pending]) -> None:
        """Make a migrate or replicate ``call`` and count how it went."""
        try:
            result = call()
        except (StoreFull, BadRequest) as exc:
            self.outcomes[f"{what} {type(exc).__name__}"] += 1
        else:
            self.outcomes[f"{what} {'started' if isinstance(result, Pending) else 'done'}"] += 1
        self._drain()

    @rule(data=st.data(), node=st.integers(0, 2))
    def migrate(self, data: st.DataObject, node: int) -> None:
        ids = self._sealed()
        if ids:
            target = data.draw(st.sampled_from(ids))
            self._move("migrate", lambda: self.store.migrate(10, target, node))

    @rule(data=st.data(), nodes=st.lists(st.integers(0, 2), min_size=1, max_size=2))
    def replicate(self, data: st.DataObject, nodes: list[int]) -> None:
        ids = self._sealed()
        if ids:
            target = data.draw(st.sampled_from(ids))
            self._move("replicate", lambda: self.store.replicate(10, target, nodes))

    @precondition(lambda self: self.places)
    @rule(data=st.data(), ok=st.sampled_from([True, True, False]))
    def finish_place(self, data: st.DataObject, ok: bool) -> None:
        place = self.places.pop(data.draw(st.integers(0, len(self.places) - 1)))
        self.store.placed(place.token, None if ok else "EIO")
        self.outcomes[f"{type(place).__name__} {'placed' if ok else 'failed'}"] += 1
        self._drain()

    @rule()
    def reconnect_a_client(self) -> None:
        self.store.disconnect(12)
        self.held = [(c, o) for c, o in self.held if c != 12]
        self.creating = {t: v for t, v in self.creating.items() if v[0] != 12}
        self.store.register_client(12, node=2)
        self._drain()

    @invariant()
    def memory_is_never_shared_and_nothing_leaks(self) -> None:
        store = self.store
        ranges = []
        for o, rec in store._objects.items():
            ranges.append((rec.loc.segment, rec.loc.offset, rec.size, o))
        copies = [*store._replicas.items(), *store._dying.orphans]
        copies += [
            (o, r) for _, o, r in store._dying.waiting.values() if store._objects.get(o) is not r
        ]
        copies += [
            (o, r) for o, r in store._dying.pinned.values() if store._objects.get(o) is not r
        ]
        for o, rec in copies:
            ranges.append((rec.loc.segment, rec.loc.offset, rec.size, o))
        for job in store._placing.jobs.values():
            if isinstance(job, RehomeJob):
                f = job.freed
                ranges.append((f.segment.id, f.offset, f.size, b"rehome" + bytes([f.offset % 251])))
        for held in store._after_io.values():  # freed while moved: given back after
            for f in held:
                ranges.append(
                    (f.segment.id, f.offset, f.size, b"after io" + bytes([f.offset % 251]))
                )
        ranges = sorted(set(ranges))
        for (s1, o1, n1, id1), (s2, o2, _, id2) in itertools.pairwise(ranges):
            if s1 == s2:
                assert o1 + n1 <= o2, f"{id1.hex()} and {id2.hex()} share memory"
        assert store.stats()["used"] == sum(n for _, _, n, _ in ranges)

    @invariant()
    def charges_add_up(self) -> None:
        store = self.store
        want = charges_placed_in(store, store._objects.values())
        assert [store.stats()["nodes"][n]["placed_in"] for n in range(3)] == [
            want[n] for n in range(3)
        ]


PLACEMENT_MACHINE_SETTINGS = settings(max_examples=200, stateful_step_count=50, deadline=None)
PlacementMachine.TestCase.settings = PLACEMENT_MACHINE_SETTINGS
TestPlacementMachine = PlacementMachine.TestCase


def test_the_placement_machine_moves_and_copies() -> None:
    """Migrates and replicates succeed, at once or by moving pages, and the moves finish
    both ways (a regression refusing every move fails here; refusals are counted too)."""
    wanted = [
        "migrate started",
        "migrate done",
        "replicate started",
        "replicate done",
        "Place placed",
        "Place failed",
        "Copy placed",
        "Copy failed",
    ]
    reached(PlacementMachine, PLACEMENT_MACHINE_SETTINGS, wanted, examples=100, at_least=3)
