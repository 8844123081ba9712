"""Sans-I/O store core: every operation, its errors, waiters, eviction, arenas, no leaks."""

from __future__ import annotations

import copy
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from plasma.errors import (
    BadRequest,
    ObjectExists,
    ObjectNotFound,
    ObjectNotSealed,
    PlacementImpossible,
    StoreFull,
)
from plasma.records import ArenaObject, CreateItem, ObjectLocation
from plasma.store import (
    AskReclaim,
    CreateDone,
    GetDone,
    Grant,
    Notify,
    Pending,
    Revoke,
    SegmentFreed,
    Store,
)
from tests.helpers import KIB, PAGE, FakeProvider, loc, oid, put


def make(
    budget: int = 64 * KIB, segment_size: int = 64 * KIB, nodes: int = 1, **kw: object
) -> tuple[Store, FakeProvider]:
    provider = FakeProvider()
    kw.setdefault("reclaim_wait", 0)  # tests of the reclaim wait ask for it
    # no client reads without requests here: memory is free as soon as nothing references it
    # (the pin-table tests, tests/test_directory_store.py, use a grace period)
    kw.setdefault("grace", 0.0)
    kw.setdefault("directory_capacity", 64)  # small: cheap to deepcopy, rebuilt often
    kw.setdefault("idle_records", 0)  # every idle object compact between two calls
    store = Store({n: budget for n in range(nodes)}, provider, segment_size=segment_size, **kw)  # type: ignore[arg-type]
    return store, provider


def granted(grant: object) -> tuple[int, int, int, int]:
    """``(segment, offset, size, grant)`` of an arena granted at once."""
    assert isinstance(grant, Grant), grant
    return grant.segment, grant.offset, grant.size, grant.grant


def live_bytes(store: Store) -> int:
    """Allocation bytes of every object, from the public listing (64-byte rounding)."""
    return sum(-(-max(1, o.data_size + o.metadata_size) // 64) * 64 for o in store.objects())


# ---------------------------------------------------------------- basic lifecycle


def test_create_seal_get_release_roundtrip() -> None:
    store, provider = make()
    store.register_client(1)
    where = loc(store.create(1, oid(1), 100, 10, now=5.0))
    assert (where.offset % 64, where.data_size, where.metadata_size, where.node) == (0, 100, 10, 0)
    assert where.segment in provider.live
    info = store.info(oid(1))
    assert (info.state, info.ref_count, info.owner, info.create_time) == ("created", 1, 1, 5.0)
    assert not store.contains(oid(1))
    store.seal(1, oid(1))
    assert store.contains(oid(1))
    assert store.info(oid(1)).ref_count == 1  # seal keeps the creator's reference
    assert store.get(1, [oid(1), oid(1)]) == [where, where]
    assert store.info(oid(1)).ref_count == 3
    for _ in range(3):
        store.release(1, oid(1))
    with pytest.raises(ObjectNotFound):
        store.release(1, oid(1))
    assert store.stats()["used"] == 128
    assert [o.id for o in store.objects()] == [oid(1)]


def test_zero_size_object_takes_one_aligned_block() -> None:
    store, _ = make()
    store.register_client(1)
    a = loc(store.create(1, oid(1), 0))
    b = loc(store.create(1, oid(2), 0))
    assert b.offset - a.offset == 64
    assert store.stats()["used"] == 128


def test_create_errors() -> None:
    store, _ = make(max_object_size=1000)
    store.register_client(1)
    store.create(1, oid(1), 10)
    with pytest.raises(ObjectExists):
        store.create(1, oid(1), 10)
    with pytest.raises(BadRequest, match="maximum"):
        store.create(1, oid(2), 1001)
    with pytest.raises(BadRequest, match="negative"):
        store.create(1, oid(2), -1)
    with pytest.raises(BadRequest, match="20 bytes"):
        store.create(1, b"short", 1)
    with pytest.raises(BadRequest, match="unknown client"):
        store.create(9, oid(2), 1)
    with pytest.raises(PlacementImpossible):
        store.create(1, oid(2), 1, node=3)
    with pytest.raises(BadRequest, match="timeout"):
        store.create(1, oid(2), 1, timeout=-1)
    assert store.stats()["used"] == 64  # nothing leaked by the failures


def test_seal_and_abort_errors() -> None:
    store, _ = make()
    store.register_client(1)
    store.register_client(2)
    store.create(1, oid(1), 10)
    with pytest.raises(BadRequest, match="another client"):
        store.seal(2, oid(1))
    with pytest.raises(BadRequest, match="another client"):
        store.abort(2, oid(1))
    with pytest.raises(ObjectNotFound):
        store.seal(1, oid(2))
    with pytest.raises(ObjectNotFound):
        store.abort(1, oid(2))
    with pytest.raises(ObjectNotSealed):
        store.release(1, oid(1))
    store.seal(1, oid(1))
    with pytest.raises(BadRequest, match="already sealed"):
        store.seal(1, oid(1))
    with pytest.raises(BadRequest, match="sealed"):
        store.abort(1, oid(1))


def test_abort_frees_and_id_is_reusable() -> None:
    store, _ = make()
    store.register_client(1)
    store.create(1, oid(1), 1000)
    store.abort(1, oid(1))
    assert store.stats()["used"] == 0
    assert store.objects() == []
    with pytest.raises(ObjectNotFound):
        store.info(oid(1))
    store.create(1, oid(1), 10)
    assert store.stats()["objects"] == 1


def test_register_client_errors() -> None:
    store, _ = make()
    store.register_client(1)
    with pytest.raises(BadRequest, match="already"):
        store.register_client(1)
    with pytest.raises(PlacementImpossible):
        store.register_client(2, node=5)


def test_bad_construction() -> None:
    provider = FakeProvider()
    with pytest.raises(ValueError, match="budgets"):
        Store({}, provider)
    with pytest.raises(ValueError, match="page_size"):
        Store({0: 1}, provider, page_size=1000)
    with pytest.raises(ValueError, match="alignment"):
        Store({0: 1}, provider, alignment=3)


def test_create_many_all_or_nothing() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    locs = store.create_many(1, [CreateItem(oid(i), 1000) for i in range(3)])
    assert isinstance(locs, list) and len(locs) == 3
    assert len({x.offset for x in locs}) == 3
    with pytest.raises(StoreFull):
        store.create_many(1, [CreateItem(oid(10), 500), CreateItem(oid(11), 2000)])
    assert store.stats()["used"] == 3 * 1024  # the partial allocation was rolled back
    assert not any(o.id == oid(10) for o in store.objects())
    with pytest.raises(BadRequest, match="twice"):
        store.create_many(1, [CreateItem(oid(20), 1), CreateItem(oid(20), 1)])
    with pytest.raises(ObjectExists):
        store.create_many(1, [CreateItem(oid(21), 1), CreateItem(oid(1), 1)])
    assert store.create_many(1, []) == []


# ---------------------------------------------------------------- get


def test_get_timeout_zero_codes_and_references() -> None:
    store, _ = make()
    store.register_client(1)
    put(store, 1, 1)
    store.create(1, oid(2), 10)
    res = store.get(1, [oid(1), oid(2), oid(3)], timeout=0)
    assert isinstance(res, list)
    assert isinstance(res[0], ObjectLocation)
    assert res[1:] == ["object_not_sealed", "object_not_found"]
    assert store.info(oid(1)).ref_count == 1  # reference taken for the sealed one


def test_get_waiter_completed_by_seal() -> None:
    store, _ = make()
    store.register_client(1)
    store.register_client(2)
    pending = store.get(2, [oid(1), oid(2), oid(1)], timeout=10, now=0)
    assert isinstance(pending, Pending)
    assert store.next_deadline() == 10
    put(store, 1, 2)
    assert store.drain_events() == []
    store.create(1, oid(1), 5)
    store.seal(1, oid(1))
    (done,) = store.drain_events()
    assert isinstance(done, GetDone) and (done.client, done.token) == (2, pending.token)
    assert all(isinstance(r, ObjectLocation) for r in done.results)
    assert done.results[0] == done.results[2]
    assert store.info(oid(1)).ref_count == 3  # creator + two occurrences
    assert store.stats()["get_waiters"] == 0
    store.expire(100)  # the finished waiter's deadline does nothing
    assert store.drain_events() == []
    assert store.next_deadline() is None


def test_get_partial_results_after_expire() -> None:
    store, _ = make()
    store.register_client(1)
    put(store, 1, 1)
    pending = store.get(1, [oid(1), oid(2)], timeout=1.5, now=10)
    assert isinstance(pending, Pending)
    store.expire(11.4)
    assert store.drain_events() == []
    store.expire(11.5)
    (done,) = store.drain_events()
    assert isinstance(done, GetDone)
    assert isinstance(done.results[0], ObjectLocation) and done.results[1] == "timeout"
    # the found object stayed referenced while waiting and after: not evictable
    assert store.evict(10**6) == 0
    store.create(1, oid(2), 1)
    store.seal(1, oid(2))
    assert store.drain_events() == []  # the expired waiter is gone


def test_get_waits_forever_and_ignores_deleted() -> None:
    store, _ = make()
    store.register_client(1)
    pending = store.get(1, [oid(1)])
    assert isinstance(pending, Pending)
    assert store.next_deadline() is None
    store.register_client(2)
    store.create(2, oid(1), 8)
    store.abort(2, oid(1))
    assert store.drain_events() == []
    put(store, 2, 1)
    (done,) = store.drain_events()
    assert isinstance(done, GetDone) and isinstance(done.results[0], ObjectLocation)


def test_get_does_not_see_delete_pending_objects() -> None:
    store, _ = make()
    store.register_client(1)
    store.create(1, oid(1), 8)
    store.seal(1, oid(1))
    assert store.delete(1, [oid(1)]) == ([], [oid(1)], [])
    assert store.get(1, [oid(1)], timeout=0) == ["object_not_found"]
    assert not store.contains(oid(1))
    assert store.objects() == []
    with pytest.raises(ObjectNotFound):
        store.info(oid(1))
    with pytest.raises(ObjectExists):
        store.create(1, oid(1), 8)


def test_many_finished_waiters_leave_one_deadline() -> None:
    store, _ = make()
    store.register_client(1)
    live = store.get(1, [oid(999)], timeout=50, now=0)
    for i in range(200):
        assert isinstance(store.get(1, [oid(i)], timeout=10 + i, now=0), Pending)
    for i in range(200):
        put(store, 1, i)
    assert sum(isinstance(e, GetDone) for e in store.drain_events()) == 200
    assert store.next_deadline() == 50
    store.expire(49)
    assert store.drain_events() == []
    store.expire(50)
    (done,) = store.drain_events()
    assert isinstance(done, GetDone) and isinstance(live, Pending) and done.token == live.token
    assert store.next_deadline() is None
    assert store.stats()["get_waiters"] == 0


# ---------------------------------------------------------------- release / delete / evict


def test_delete_deferred_until_last_release() -> None:
    store, _ = make()
    store.register_client(1)
    store.register_client(2)
    put(store, 1, 1)
    put(store, 1, 2)
    store.get(2, [oid(1)])
    assert store.delete(1, [oid(1), oid(2), oid(3), oid(2)]) == (
        [oid(2)],
        [oid(1)],
        [oid(3), oid(2)],
    )
    assert store.stats()["used"] == 64  # oid(1) still occupies memory
    assert store.stats()["objects"] == 1
    store.release(2, oid(1))
    assert store.stats()["used"] == 0
    assert store.stats()["objects"] == 0


def test_delete_unsealed_is_missing() -> None:
    store, _ = make()
    store.register_client(1)
    store.create(1, oid(1), 8)
    assert store.delete(1, [oid(1)]) == ([], [], [oid(1)])


def test_clock_eviction_order_on_create() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    for i in range(4):
        put(store, 1, i, 1024)
    # touch 0: it becomes most recently used
    store.get(1, [oid(0)])
    store.release(1, oid(0))
    store.create(1, oid(10), 2048)
    assert sorted(o.id for o in store.objects()) == [oid(0), oid(3), oid(10)]
    assert store.stats()["evictions"] == 2


def test_referenced_and_unsealed_objects_are_not_evicted() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    store.create(1, oid(1), 1024)  # unsealed
    store.create(1, oid(2), 1024)
    store.seal(1, oid(2))  # sealed, referenced by its creator
    put(store, 1, 3, 2048)
    with pytest.raises(StoreFull):
        store.create(1, oid(4), 3000)
    assert store.contains(oid(3))  # evicting it could not make room: it stays
    assert store.stats()["evictions"] == 0
    assert store.evict(10**9) == 2048
    assert store.stats()["used"] == 2048


def test_eviction_only_when_it_makes_room() -> None:
    store, _ = make(budget=8 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    store.create(1, oid(1), 3 * KIB)  # referenced, one per segment: no 5 KiB run is possible
    store.create(1, oid(2), 3 * KIB)
    put(store, 1, 3, 512)
    put(store, 1, 4, 512)
    with pytest.raises(StoreFull):
        store.create(1, oid(5), 5 * KIB)
    assert store.contains(oid(3)) and store.contains(oid(4))
    assert store.stats()["evictions"] == 0
    # a fitting create evicts the LRU prefix it needs and no more
    put(store, 1, 6, 256)
    store.create(1, oid(7), 1024)  # seg 2 has 768 free: oid 3 and 4 of seg 1 make 1 KiB
    assert not store.contains(oid(3)) and not store.contains(oid(4))
    assert store.contains(oid(6))
    assert store.stats()["evictions"] == 2


def test_waiting_create_does_not_eat_fresh_objects() -> None:
    store, _ = make(budget=8 * KIB, segment_size=8 * KIB)
    store.register_client(1)
    store.register_client(2)
    store.create(1, oid(1), 4 * KIB)  # held
    pending = store.create(2, oid(2), 6 * KIB, timeout=None)
    assert isinstance(pending, Pending)
    for n in range(10, 30):  # another client keeps putting small objects
        put(store, 1, n, 64)
    assert all(store.contains(oid(n)) for n in range(10, 30))
    assert store.stats()["evictions"] == 0
    store.abort(1, oid(1))
    (done,) = [e for e in store.drain_events() if isinstance(e, CreateDone)]
    assert isinstance(done.result, list)  # room at last: it evicts what it needs and succeeds


def test_evict_in_clock_order_across_nodes_oldest_first() -> None:
    store, _ = make(nodes=2)
    store.register_client(1)
    put(store, 1, 1, node=1)
    put(store, 1, 2, node=0)
    put(store, 1, 3, node=1)
    assert store.evict(100) == 128  # the two oldest 64-byte objects, across both nodes
    assert [o.id for o in store.objects()] == [oid(3)]
    with pytest.raises(BadRequest):
        store.evict(-1)


def test_evict_returns_bytes_freed() -> None:
    store, _ = make()
    store.register_client(1)
    put(store, 1, 1, 1000)
    put(store, 1, 2, 1000)
    assert store.evict(1) == 1000  # the object's size, as Plasma counts, not its 1024 bytes
    assert store.evict(0) == 0
    assert store.evict(10**6) == 1000
    assert store.stats()["used"] == 0


def test_construct_duration_is_seal_time_minus_create_time() -> None:
    store, _ = make()
    store.register_client(1)
    store.create(1, oid(1), 10, now=5.0)
    (info,) = store.objects()
    assert info.construct_duration == -1.0  # not sealed yet
    store.seal(1, oid(1), now=7.5)
    (info,) = store.objects()
    assert info.construct_duration == 2.5


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 20 * KIB), st.booleans(), st.booleans()), min_size=1, max_size=30
    )
)
def test_whole_budget_fits_once_everything_is_unreferenced(
    steps: list[tuple[int, bool, bool]],
) -> None:
    """After any creates, seals and releases, a create of the node's whole budget succeeds
    once nothing is referenced: emptied segments are given back for one big one."""
    store, provider = make(budget=64 * KIB, segment_size=16 * KIB)
    store.register_client(1)
    for n, (size, seal, release) in enumerate(steps):
        try:
            store.create(1, oid(n), size)
        except StoreFull:
            continue
        if seal:
            store.seal(1, oid(n))
            if release:
                store.release(1, oid(n))
    for info in store.objects():  # now drop every reference: unsealed ones are aborted
        if info.state == "created":
            store.abort(1, info.id)
        elif info.ref_count:
            store.release(1, info.id)
    where = store.create(1, oid(10**6), 64 * KIB)
    assert isinstance(where, ObjectLocation) and where.offset == 0
    assert list(provider.live.values()) == [(0, 64 * KIB)]  # one segment: the whole budget
    with pytest.raises(StoreFull, match="budget"):
        store.create(1, oid(10**6 + 1), 64 * KIB + 1)
    with pytest.raises(ObjectNotFound):
        store.info(oid(10**6 + 1))


# ---------------------------------------------------------------- backpressure


def test_pending_create_satisfied_by_release() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    store.register_client(2)
    store.create(1, oid(1), 4096)
    store.seal(1, oid(1))
    with pytest.raises(StoreFull):
        store.create(2, oid(2), 100)
    pending = store.create(2, oid(2), 100, timeout=5, now=1)
    assert isinstance(pending, Pending)
    assert store.stats()["create_waiters"] == 1
    # client 1's reference may be one it only caches: it is asked for it back, once a second
    assert store.drain_events() == [AskReclaim(1), AskReclaim(1)]
    store.release(1, oid(1))  # now evictable: the pending create evicts it
    events = store.drain_events()
    done = [e for e in events if isinstance(e, CreateDone)]
    assert len(done) == 1 and done[0].token == pending.token and done[0].client == 2
    assert isinstance(done[0].result, list)
    assert store.info(oid(2)).create_time == 1
    assert store.info(oid(2)).ref_count == 1
    store.expire(10)
    assert store.drain_events() == []


def test_pending_create_fails_after_expire() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    store.create(1, oid(1), 4096)
    pending = store.create(1, oid(2), 100, timeout=2, now=1)
    assert isinstance(pending, Pending)
    assert store.next_deadline() == 3
    store.expire(3)
    (done,) = store.drain_events()
    assert isinstance(done, CreateDone) and isinstance(done.result, StoreFull)
    store.abort(1, oid(1))
    assert store.drain_events() == []
    assert store.stats()["create_waiters"] == 0


def test_pending_creates_fifo_and_existing_id() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    store.register_client(2)
    store.create(1, oid(1), 4096)
    first = store.create(2, oid(2), 3000, timeout=None)
    second = store.create(2, oid(3), 100, timeout=None)
    racer = store.create(1, oid(2), 100, timeout=None)
    assert isinstance(first, Pending) and isinstance(second, Pending)
    assert isinstance(racer, Pending)
    store.abort(1, oid(1))
    done = {e.token: e.result for e in store.drain_events() if isinstance(e, CreateDone)}
    assert isinstance(done[first.token], list) and isinstance(done[second.token], list)
    assert isinstance(done[racer.token], ObjectExists)


def test_a_pending_head_that_eviction_will_fit_blocks_later_creates_on_its_node() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB, grace=0.002)
    store.register_client(1)
    put(store, 1, 1, 2048)
    put(store, 1, 2, 2048)
    big = store.create(1, oid(3), 4096, timeout=None)  # evicts both: waits for their scan
    small = store.create(1, oid(4), 64, timeout=None)
    assert isinstance(big, Pending) and isinstance(small, Pending)
    store.expire(1.0)
    done = [e.token for e in store.drain_events() if isinstance(e, CreateDone)]
    assert done == [big.token]  # the small one does not take what the big one evicted


def test_a_pending_create_waiting_for_references_lets_others_pass_then_gets_its_turn() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    store.create(1, oid(1), 2048)
    store.create(1, oid(2), 2048)
    big = store.create(1, oid(3), 4096, timeout=None)  # fits only once both are let go
    small = store.create(1, oid(4), 64, timeout=None)
    store.abort(1, oid(1))  # 2 KiB free: the small one fits, the big one still cannot
    assert [e.token for e in store.drain_events() if isinstance(e, CreateDone)] == [small.token]  # type: ignore[union-attr]
    store.abort(1, oid(2))
    assert not [e for e in store.drain_events() if isinstance(e, CreateDone)]
    store.seal(1, oid(4))
    store.release(1, oid(4))  # evictable now: the big one's turn
    assert [e.token for e in store.drain_events() if isinstance(e, CreateDone)] == [big.token]  # type: ignore[union-attr]


def test_object_larger_than_budget_fails_at_once() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    with pytest.raises(StoreFull, match="budget"):
        store.create(1, oid(1), 5000, timeout=None)
    with pytest.raises(StoreFull, match="budget"):
        store.create_many(1, [CreateItem(oid(1), 3000), CreateItem(oid(2), 3000)], timeout=None)


# ---------------------------------------------------------------- segments


def test_segments_created_lazily_sized_and_capped() -> None:
    store, provider = make(budget=40 * KIB, segment_size=16 * KIB)
    store.register_client(1)
    assert store.segments() == [] and provider.live == {}
    store.create(1, oid(1), 10)
    store.create(1, oid(2), 20 * KIB - 100)  # bigger than segment_size: a page-rounded segment
    store.create(1, oid(3), 15 * KIB)  # fits in the first segment
    store.create(1, oid(4), 3 * KIB)  # a new segment, capped to the 4 KiB of budget left
    assert [size for _, _, size in store.segments()] == [16 * KIB, 20 * KIB, 4 * KIB]
    with pytest.raises(StoreFull):
        store.create(1, oid(5), 3 * KIB)
    assert store.stats()["nodes"][0]["segment_bytes"] == 40 * KIB
    assert {sid: (0, size) for sid, _, size in store.segments()} == provider.live


def test_segment_capped_to_remaining_budget() -> None:
    store, _ = make(budget=24 * KIB, segment_size=16 * KIB)
    store.register_client(1)
    store.create(1, oid(1), 16 * KIB)
    store.create(1, oid(2), 100)
    assert sorted(s for _, _, s in store.segments()) == [8 * KIB, 16 * KIB]


def test_empty_segment_freed_to_regain_budget() -> None:
    store, provider = make(budget=16 * KIB, segment_size=8 * KIB)
    store.register_client(1)
    put(store, 1, 1, 8 * KIB)
    put(store, 1, 2, 8 * KIB)
    assert len(provider.live) == 2
    store.delete(1, [oid(1), oid(2)])
    store.create(1, oid(3), 12 * KIB)
    assert [s for _, _, s in store.segments()] == [12 * KIB]
    assert len(provider.live) == 1


def test_eviction_frees_segments_for_a_bigger_object() -> None:
    store, _ = make(budget=16 * KIB, segment_size=8 * KIB)
    store.register_client(1)
    put(store, 1, 1, 8 * KIB)
    put(store, 1, 2, 8 * KIB)
    store.create(1, oid(3), 16 * KIB)
    assert [s for _, _, s in store.segments()] == [16 * KIB]
    assert store.stats()["used"] == 16 * KIB


def test_provider_refusal_is_store_full() -> None:
    provider = FakeProvider(fail=True)
    store = Store({0: 64 * KIB}, provider)
    store.register_client(1)
    with pytest.raises(StoreFull):
        store.create(1, oid(1), 10)


# ---------------------------------------------------------------- nodes


def test_node_choice_default_explicit_and_most_free() -> None:
    store, _ = make(nodes=2)
    store.register_client(1, node=1)
    store.register_client(2)
    assert loc(store.create(1, oid(1), 1000)).node == 1
    assert loc(store.create(1, oid(2), 10, node=0)).node == 0
    # node 0 has 64 used, node 1 has 1024: client 2 goes to node 0 (most free) ...
    assert loc(store.create(2, oid(3), 2000)).node == 0
    # ... and now node 1 has more free bytes
    assert loc(store.create(2, oid(4), 10)).node == 1
    stats = store.stats()
    assert stats["nodes"][0]["used"] == 64 + 2048
    assert stats["nodes"][1]["used"] == 1024 + 64
    assert stats["nodes"][0]["objects"] == 2
    assert stats["capacity"] == 2 * 64 * KIB
    assert {o.id: o.node for o in store.objects()} == {oid(1): 1, oid(2): 0, oid(3): 0, oid(4): 1}


def test_an_object_too_big_for_the_most_free_node_goes_where_it_can_fit() -> None:
    store = Store({0: 8 * KIB, 1: 4 * KIB}, FakeProvider(), segment_size=4 * KIB, grace=0.0)
    store.register_client(1)
    assert loc(store.create(1, oid(1), 4097)).node == 0
    # node 1 has the most free bytes now, but its whole budget is too small: wait for node 0
    assert isinstance(store.create(1, oid(2), 4097, timeout=None), Pending)
    with pytest.raises(StoreFull, match="node 0"):
        store.create(1, oid(3), 4097)  # (and with timeout 0, no room there now)
    with pytest.raises(StoreFull, match="exceed"):
        store.create(1, oid(4), 9000, timeout=None)  # fits nowhere: at once


def test_eviction_is_per_node() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB, nodes=2)
    store.register_client(1)
    put(store, 1, 1, 4096, node=1)
    put(store, 1, 2, 4096, node=0)
    store.create(1, oid(3), 4096, node=1)
    assert store.contains(oid(2)) and not store.contains(oid(1))


# ---------------------------------------------------------------- subscriptions


def test_notifications_without_locations() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    store.register_client(2)
    store.subscribe(2)
    put(store, 1, 1, 4096)
    (n,) = store.drain_events()
    assert n == Notify(2, "sealed", oid(1), 4096, 0, None)
    store.create(1, oid(2), 10)  # evicts oid(1)
    assert store.drain_events() == [Notify(2, "deleted", oid(1), 4096, 0, None)]
    store.seal(1, oid(2))
    store.drain_events()
    store.delete(1, [oid(2)])  # deferred: still notified now, and the holder is asked
    assert store.drain_events() == [
        Revoke(1, oid(2)),
        Notify(2, "deleted", oid(2), 10, 0, None),
    ]


def test_deferred_delete_revokes_every_holder() -> None:
    store, _ = make()
    for client in (1, 2, 3):
        store.register_client(client)
    put(store, 1, 1, 10)
    store.get(2, [oid(1)])
    store.get(3, [oid(1), oid(1)])
    store.drain_events()
    assert store.delete(1, [oid(1)]) == ([], [oid(1)], [])
    assert store.drain_events() == [Revoke(2, oid(1)), Revoke(3, oid(1))]
    store.release(2, oid(1))
    store.release(3, oid(1))
    assert store.contains(oid(1)) is False
    store.release(3, oid(1))
    assert store.stats()["objects"] == 0


def test_notifications_with_locations_take_a_reference() -> None:
    store, _ = make()
    store.register_client(1)
    store.register_client(2)
    store.subscribe(2, with_locations=True)
    where = put(store, 1, 1, 10)
    assert store.drain_events() == [Notify(2, "sealed", oid(1), 10, 0, where)]
    assert store.info(oid(1)).ref_count == 1
    assert store.evict(10**6) == 0
    store.release(2, oid(1))
    assert store.evict(10**6) == 10
    with pytest.raises(BadRequest):
        store.subscribe(9)


# ---------------------------------------------------------------- disconnect


def test_disconnect_cleans_everything() -> None:
    store, _ = make()
    store.register_client(1)
    store.register_client(2)
    put(store, 1, 1, 1000)
    put(store, 1, 2, 1000)
    store.create(2, oid(3), 5000)  # unsealed: aborted
    store.create(2, oid(4), 100)
    store.seal(2, oid(4))  # sealed, creator reference dropped
    store.get(2, [oid(1), oid(1)])
    store.delete(1, [oid(1)])  # deferred on client 2's references
    assert store.drain_events() == [Revoke(2, oid(1))]
    store.get(2, [oid(9)], timeout=5)  # waiter cancelled
    store.grant_arena(2, 4096)
    store.subscribe(2, with_locations=True)
    store.disconnect(2)
    stats = store.stats()
    assert stats["clients"] == 1 and stats["subscribers"] == 0 and stats["get_waiters"] == 0
    assert sorted(o.id for o in store.objects()) == [oid(2), oid(4)]
    assert stats["used"] == live_bytes(store) == 1024 + 128
    assert all(o.ref_count == 0 for o in store.objects())
    assert store.evict(10**6) == 1000 + 100  # object sizes; their allocations are 1024 + 128
    assert store.stats()["used"] == 0
    store.create(1, oid(9), 1)
    store.seal(1, oid(9))
    assert store.drain_events() == []  # no waiter, no subscriber left
    store.disconnect(2)  # unknown: ignored


def test_disconnect_cancels_pending_create_and_retries_others() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    store.register_client(2)
    store.create(1, oid(1), 4096)
    p2 = store.create(2, oid(2), 4096, timeout=None)
    p1 = store.create(1, oid(3), 64, timeout=9)
    assert isinstance(p1, Pending) and isinstance(p2, Pending)
    store.disconnect(2)
    assert store.drain_events() == []
    store.abort(1, oid(1))
    (done,) = store.drain_events()
    assert isinstance(done, CreateDone) and done.token == p1.token


# ---------------------------------------------------------------- arenas


def test_arena_objects_sealed_unreferenced_and_freed_exactly() -> None:
    store, _ = make()
    store.register_client(1)
    store.register_client(2)
    store.subscribe(2)
    seg, off, size, arena = granted(store.grant_arena(1, 1000))
    assert size == 1024 and off % 64 == 0
    assert store.stats()["used"] == 1024 and store.stats()["arena_bytes"] == 1024
    objs = [
        ArenaObject(oid(1), off, 100, 10),
        ArenaObject(oid(2), off + 128, 0, 0),
        ArenaObject(oid(3), off + 512, 64, 0),  # skips [192, 512): freed at once
    ]
    store.seal_arena(1, arena, objs, now=3.0)
    assert store.stats()["used"] == 1024 - 320
    assert [e.kind for e in store.drain_events() if isinstance(e, Notify)] == ["sealed"] * 3
    infos = {o.id: o for o in store.objects()}
    assert infos[oid(1)].state == "sealed" and infos[oid(1)].ref_count == 0
    assert infos[oid(1)].create_time == 3.0
    res = store.get(1, [oid(1)], timeout=0)
    assert res == [ObjectLocation(seg, off, 100, 10, 0)]
    store.release(1, oid(1))
    assert store.delete(1, [oid(1)]) == ([oid(1)], [], [])
    assert store.stats()["used"] == 1024 - 320 - 128
    granted(store.grant_arena(1, 64))  # the old arena's tail comes back
    assert store.stats()["used"] == 64 + 64 + 64
    assert store.stats()["arena_bytes"] == 64
    with pytest.raises(BadRequest, match="no arena"):
        store.seal_arena(1, arena, [])  # the old one
    store.disconnect(1)
    assert store.stats()["used"] == live_bytes(store) == 128


@pytest.mark.parametrize(
    ("offset", "size", "error", "match"),
    [
        (-64, 10, BadRequest, "outside"),
        (960, 100, BadRequest, "outside"),
        (1024, 1, BadRequest, "outside"),
        (32, 10, BadRequest, "aligned"),
        (0, 10, BadRequest, "overlaps"),  # before the cursor after the first object
        (64, -1, BadRequest, "negative"),
    ],
)
def test_arena_validation(offset: int, size: int, error: type, match: str) -> None:
    store, _ = make()
    store.register_client(1)
    _, off, _, arena = granted(store.grant_arena(1, 1024))
    with pytest.raises(error, match=match):
        store.seal_arena(
            1, arena, [ArenaObject(oid(1), off, 60, 0), ArenaObject(oid(2), off + offset, size, 0)]
        )
    assert store.contains(oid(1))  # the other objects are registered
    assert not store.contains(oid(2))
    store.disconnect(1)
    assert store.stats()["used"] == live_bytes(store) == 64


def test_arena_duplicate_id_and_other_client() -> None:
    store, _ = make()
    store.register_client(1)
    store.register_client(2)
    put(store, 1, 7)
    _, off, _, arena = granted(store.grant_arena(1, 1024))
    with pytest.raises(ObjectExists):
        store.seal_arena(
            1, arena, [ArenaObject(oid(1), off, 8, 0), ArenaObject(oid(7), off + 64, 8, 0)]
        )
    assert store.contains(oid(1))
    with pytest.raises(BadRequest, match="no arena"):
        store.seal_arena(2, arena, [ArenaObject(oid(2), off + 128, 8, 0)])
    store.seal_arena(1, arena, [ArenaObject(oid(2), off + 64, 8, 0)])  # the slot is still usable
    assert store.contains(oid(2))


def test_arena_seal_wakes_getters_and_is_evictable() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    store.register_client(2)
    pending = store.get(2, [oid(1)], timeout=None)
    _, off, _, arena = granted(store.grant_arena(1, 2048))
    store.seal_arena(
        1, arena, [ArenaObject(oid(1), off, 10, 0), ArenaObject(oid(2), off + 64, 10, 0)]
    )
    (done,) = store.drain_events()
    assert isinstance(done, GetDone) and isinstance(pending, Pending)
    assert done.token == pending.token
    assert store.info(oid(1)).ref_count == 1 and store.info(oid(2)).ref_count == 0
    with pytest.raises(StoreFull):
        store.grant_arena(2, 4096)  # oid(1) referenced, client 1's arena tail is live
    assert store.contains(oid(1))
    assert store.contains(oid(2))  # evicting it could not make room: it stays
    store.disconnect(1)
    assert granted(store.grant_arena(2, 1024))[2] == 1024


def test_arena_errors() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB)
    store.register_client(1)
    with pytest.raises(BadRequest):
        store.grant_arena(1, 0)
    with pytest.raises(StoreFull):
        store.grant_arena(1, 8192)
    with pytest.raises(PlacementImpossible):
        store.grant_arena(1, 64, node=4)


# ---------------------------------------------------------------- scale


def test_hundred_thousand_objects_batched() -> None:
    store, _ = make(budget=2**30, segment_size=64 * 2**20)
    store.register_client(1)
    n = 100_000
    for start in range(0, n, 1000):
        items = [CreateItem(oid(i), 64) for i in range(start, start + 1000)]
        locs = store.create_many(1, items)
        assert isinstance(locs, list)
        for it in items:
            store.seal(1, it.id)
            store.release(1, it.id)
    assert store.stats()["objects"] == n
    assert store.stats()["used"] == 64 * n
    deleted, deferred, missing = store.delete(1, [oid(i) for i in range(n)])
    assert len(deleted) == n and not deferred and not missing
    assert store.stats()["used"] == 0


# ---------------------------------------------------------------- model-based


class StoreMachine(RuleBasedStateMachine):
    """Random operations by three clients against a model of live allocations.

    After every step (events applied to the model first): each object the store lists is
    in the model with the model's reference count, objects that vanished were evictable,
    allocations never overlap, ``used`` equals the model, and no get still waits for ids
    that are all sealed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.provider = FakeProvider()
        self.store = Store(
            {0: 8 * KIB, 1: 4 * KIB},
            self.provider,
            segment_size=4 * KIB,
            reclaim_wait=0,
            subscriber_pin_limit=2**40,
            grace=0.0,  # no pins here: tests/test_directory_store.py has the machine with them
            directory_capacity=64,
            idle_records=0,  # every idle object compact between two calls
        )
        for c in (1, 2, 3):
            self.store.register_client(c)
        # oid -> [segment, offset, alloc size, sealed, owner, deleting]
        self.objects: dict[bytes, list] = {}
        self.refs: dict[tuple[int, bytes], int] = {}
        # client -> segment, start, end, cursor, grant
        self.arenas: dict[int, tuple[int, int, int, int, int]] = {}
        self.next_id = 0
        self.now = 0.0
        # token -> client, ids, which ids were found (a reference is taken when found)
        self.waiting_gets: dict[int, tuple[int, list[bytes], list[bool]]] = {}
        self.waiting_creates: dict[int, tuple[int, bytes]] = {}  # token -> client, id
        self.subscribers: set[int] = set()  # with locations

    def _size(self, n: int) -> int:
        return -(-max(1, n) // 64) * 64

    def _new_id(self) -> bytes:
        self.next_id += 1
        return oid(self.next_id)

    def _ref_count(self, o: bytes) -> int:
        return sum(n for (_, x), n in self.refs.items() if x == o)

    def _add(self, o: bytes, where: ObjectLocation, sealed: bool, owner: int) -> None:
        size = self._size(where.data_size + where.metadata_size)
        self.objects[o] = [where.segment, where.offset, size, sealed, owner, False]

    @rule(client=st.integers(1, 3), size=st.integers(0, 3000), node=st.sampled_from([None, 0, 1]))
    def create(self, client: int, size: int, node: int | None) -> None:
        o = self._new_id()
        evictions = self.store.stats()["evictions"]
        try:
            where = self.store.create(client, o, size, node=node)
        except StoreFull:
            assert self.store.stats()["evictions"] == evictions, "evicted for a create that failed"
            clone = copy.deepcopy(self.store)  # and evicting everything would not have helped
            clone.evict(10**9)
            with pytest.raises(StoreFull):
                clone.create(client, o, size, node=node)
            return
        assert isinstance(where, ObjectLocation)
        self._add(o, where, False, client)
        self.refs[(client, o)] = 1

    @rule(client=st.integers(1, 3), size=st.integers(0, 9000), timeout=st.sampled_from([None, 2]))
    def create_waiting(self, client: int, size: int, timeout: float | None) -> None:
        o = self._new_id()
        try:
            res = self.store.create(client, o, size, timeout=timeout, now=self.now)
        except StoreFull:
            assert self._size(size) > 8 * KIB  # only too big for every node fails at once
            return
        if isinstance(res, Pending):
            self.waiting_creates[res.token] = (client, o)
        else:
            self._add(o, res, False, client)
            self.refs[(client, o)] = 1

    @rule(
        client=st.integers(1, 3),
        ahead=st.integers(0, 3),
        timeout=st.sampled_from([None, 1, 3]),
    )
    def get_waiting(self, client: int, ahead: int, timeout: float | None) -> None:
        ids = [oid(self.next_id + ahead), oid(max(1, self.next_id))]
        res = self.store.get(client, ids, timeout=timeout, now=self.now)
        found = [self._visible(o) for o in ids]
        for o, f in zip(ids, found, strict=True):
            if f:
                self.refs[(client, o)] = self.refs.get((client, o), 0) + 1
        if isinstance(res, Pending):
            self.waiting_gets[res.token] = (client, ids, found)
        else:
            assert all(found)

    def _visible(self, o: bytes) -> bool:
        rec = self.objects.get(o)
        return rec is not None and rec[3] and not rec[5]

    def _sealed(self, o: bytes) -> None:
        """Waiting gets take their reference when the object is sealed."""
        for client, ids, found in self.waiting_gets.values():
            for i, x in enumerate(ids):
                if x == o and not found[i]:
                    found[i] = True
                    self.refs[(client, o)] = self.refs.get((client, o), 0) + 1

    @rule(dt=st.sampled_from([0.5, 1, 2.5]))
    def expire(self, dt: float) -> None:
        self.now += dt
        deadline = self.store.next_deadline()
        self.store.expire(self.now)
        after = self.store.next_deadline()
        assert after is None or after > self.now
        assert deadline is None or deadline > self.now or after != deadline or after is None

    @rule(client=st.integers(1, 3))
    def subscribe(self, client: int) -> None:
        self.store.subscribe(client, with_locations=True)
        self.subscribers.add(client)

    def _apply_events(self) -> None:
        for e in self.store.drain_events():
            if isinstance(e, GetDone):
                client, _, found = self.waiting_gets.pop(e.token)
                assert e.client == client
                assert [isinstance(r, ObjectLocation) for r in e.results] == found
                assert all(r == "timeout" for r in e.results if not isinstance(r, ObjectLocation))
            elif isinstance(e, CreateDone):
                client, o = self.waiting_creates.pop(e.token)
                if isinstance(e.result, list):
                    self._add(o, e.result[0], False, client)
                    self.refs[(client, o)] = 1
                else:
                    assert isinstance(e.result, StoreFull)
            elif isinstance(e, Revoke):  # only holders of an object being deleted are asked
                assert self.refs.get((e.client, e.oid), 0) > 0
            elif isinstance(e, AskReclaim):  # only clients that hold references or an arena
                assert e.client in self.arenas or any(c == e.client for c, _ in self.refs)
            elif isinstance(e, SegmentFreed):  # only segments with nothing left in them
                listed = {info.id for info in self.store.objects()}  # (not yet known evicted)
                assert all(v[0] != e.segment for o, v in self.objects.items() if o in listed)
                assert all(a[0] != e.segment or a[3] == a[2] for a in self.arenas.values())
            elif isinstance(e, Notify) and e.kind == "sealed":
                assert e.client in self.subscribers and e.location is not None
                self.refs[(e.client, e.oid)] = self.refs.get((e.client, e.oid), 0) + 1

    @precondition(lambda self: any(not v[3] for v in self.objects.values()))
    @rule(data=st.data(), abort=st.booleans())
    def seal_or_abort(self, data: st.DataObject, abort: bool) -> None:
        o = data.draw(st.sampled_from(sorted(k for k, v in self.objects.items() if not v[3])))
        owner = self.objects[o][4]
        if abort:
            self.store.abort(owner, o)
            del self.objects[o]
            del self.refs[(owner, o)]
        else:
            self.store.seal(owner, o)
            self.objects[o][3] = True
            self._sealed(o)

    @precondition(lambda self: any(v[3] for v in self.objects.values()))
    @rule(data=st.data(), client=st.integers(1, 3))
    def get(self, data: st.DataObject, client: int) -> None:
        o = data.draw(st.sampled_from(sorted(self.objects)))
        res = self.store.get(client, [o], timeout=0)
        assert isinstance(res, list)
        visible = self.objects[o][3] and not self.objects[o][5]
        assert isinstance(res[0], ObjectLocation) == visible
        if visible:
            self.refs[(client, o)] = self.refs.get((client, o), 0) + 1

    @precondition(lambda self: any(o[3] for o in self.objects.values()) and self.refs)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        held = sorted(k for k in self.refs if self.objects[k[1]][3])
        if not held:
            return
        client, o = data.draw(st.sampled_from(held))
        self.store.release(client, o)
        self.refs[(client, o)] -= 1
        if not self.refs[(client, o)]:
            del self.refs[(client, o)]
        if self.objects[o][5] and not self._ref_count(o):
            del self.objects[o]

    @precondition(lambda self: self.objects)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        o = data.draw(st.sampled_from(sorted(self.objects)))
        deleted, deferred, missing = self.store.delete(1, [o])
        rec = self.objects[o]
        if not rec[3] or rec[5]:
            assert missing == [o]
        elif self._ref_count(o):
            assert deferred == [o]
            rec[5] = True
        else:
            assert deleted == [o]
            del self.objects[o]

    @rule(nbytes=st.integers(0, 5000))
    def evict(self, nbytes: int) -> None:
        self.store.evict(nbytes)

    @rule(client=st.integers(1, 3), size=st.integers(1, 4096), least=st.integers(0, 2048))
    def grant_arena(self, client: int, size: int, least: int) -> None:
        self.arenas.pop(client, None)
        evictions = self.store.stats()["evictions"]
        try:
            res = self.store.grant_arena(client, size, min_size=least, now=self.now)
        except StoreFull:
            assert self.store.stats()["evictions"] == evictions, "evicted for a failed grant"
            return
        seg, start, n, grant = granted(res)
        assert self._size(min(least, size) or size) <= n <= self._size(size)
        self.arenas[client] = (seg, start, start + n, start, grant)

    @precondition(lambda self: self.arenas)
    @rule(data=st.data(), stale=st.booleans())
    def return_arena(self, data: st.DataObject, stale: bool) -> None:
        client = data.draw(st.sampled_from(sorted(self.arenas)))
        grant = self.arenas[client][4]
        self.store.return_arena(client, grant + 1000 if stale else grant)
        if not stale:
            del self.arenas[client]

    @precondition(lambda self: self.arenas)
    @rule(data=st.data(), size=st.integers(0, 300), skip=st.integers(0, 2))
    def seal_arena(self, data: st.DataObject, size: int, skip: int) -> None:
        client = data.draw(st.sampled_from(sorted(self.arenas)))
        seg, start, end, cursor, grant = self.arenas[client]
        offset = cursor + 64 * skip
        o = self._new_id()
        if offset + self._size(size) > end:
            with pytest.raises(BadRequest):
                self.store.seal_arena(client, grant, [ArenaObject(o, offset, size, 0)])
            return
        self.store.seal_arena(client, grant, [ArenaObject(o, offset, size, 0)])
        self.objects[o] = [seg, offset, self._size(size), True, client, False]
        self.arenas[client] = (seg, start, end, offset + self._size(size), grant)
        self._sealed(o)

    @rule(client=st.integers(1, 3))
    def disconnect(self, client: int) -> None:
        self.store.disconnect(client)
        self.store.register_client(client)
        self.arenas.pop(client, None)
        self.subscribers.discard(client)
        for waiting in (self.waiting_gets, self.waiting_creates):
            for token, entry in list(waiting.items()):
                if entry[0] == client:
                    del waiting[token]
        for (c, o), _ in list(self.refs.items()):
            if c == client:
                del self.refs[(c, o)]
        for o, rec in list(self.objects.items()):
            if (not rec[3] and rec[4] == client) or (rec[5] and not self._ref_count(o)):
                del self.objects[o]

    @invariant()
    def consistent(self) -> None:
        self._apply_events()
        for _, ids, _ in self.waiting_gets.values():
            assert not all(self.store.contains(o) for o in ids), "a satisfied get still waits"
        listed = {info.id: info for info in self.store.objects()}
        for o, rec in list(self.objects.items()):
            if rec[5]:
                assert o not in listed
                continue
            if o not in listed:  # evicted: must have been sealed and unreferenced
                assert rec[3] and not self._ref_count(o), "evicted a live object"
                del self.objects[o]
                continue
            info = listed.pop(o)
            assert info.ref_count == self._ref_count(o)
            assert info.state == ("sealed" if rec[3] else "created")
        assert not listed, "store lists objects the model does not know"
        arena_bytes = sum(end - cursor for _, _, end, cursor, _ in self.arenas.values())
        used = sum(rec[2] for rec in self.objects.values()) + arena_bytes
        stats = self.store.stats()
        assert stats["used"] == used
        assert stats["arena_bytes"] == arena_bytes
        ranges = sorted((rec[0], rec[1], rec[1] + rec[2]) for rec in self.objects.values())
        ranges += [(seg, c, end) for seg, _, end, c, _ in self.arenas.values() if c < end]
        ranges.sort()
        seg_sizes = {sid: size for sid, _, size in self.store.segments()}
        for (s1, _, e1), (s2, b2, _) in itertools.pairwise(ranges):
            assert s1 != s2 or e1 <= b2, "overlap"
        for seg, _, end in ranges:
            assert end <= seg_sizes[seg]
        for node in (0, 1):
            assert stats["nodes"][node]["segment_bytes"] <= (8 * KIB if node == 0 else 4 * KIB)
        assert {sid: (n, size) for sid, n, size in self.store.segments()} == self.provider.live

    def teardown(self) -> None:
        for c in (1, 2, 3):
            self.store.disconnect(c)
        self.store.register_client(1)
        self.store.evict(10**9)
        assert self.store.stats()["used"] == 0
        assert self.store.stats()["objects"] == 0


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)


# ---------------------------------------------------------------- limits and reclaim


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0, float("-inf")])
def test_timeouts_must_be_finite_and_not_negative(timeout: float) -> None:
    store, _ = make()
    store.register_client(1)
    with pytest.raises(BadRequest, match="finite"):
        store.create(1, oid(1), 10, timeout=timeout)
    with pytest.raises(BadRequest, match="finite"):
        store.get(1, [oid(1)], timeout=timeout)
    with pytest.raises(BadRequest, match="finite"):
        store.create_many(1, [CreateItem(oid(2), 10)], timeout=timeout)
    assert store.stats()["used"] == 0 and store.next_deadline() is None


def test_budgets_are_whole_pages_and_the_largest_object_fits() -> None:
    store, _ = make(budget=100_000, segment_size=4 * KIB)  # not a page multiple
    assert store.stats()["capacity"] == 24 * PAGE
    store.register_client(1)
    assert isinstance(store.create(1, oid(1), 24 * PAGE), ObjectLocation)


def test_waiting_requests_per_client_are_bounded() -> None:
    store, _ = make(max_waiters=3)
    store.register_client(1)
    store.register_client(2)
    for n in range(3):
        assert isinstance(store.get(1, [oid(n)], timeout=None), Pending)
    put(store, 2, 7)
    with pytest.raises(BadRequest, match="limit is 3"):
        store.get(1, [oid(7), oid(9)], timeout=None)
    assert store.objects()[0].ref_count == 0  # the refused get took no reference
    store.create(1, oid(8), 60 * KIB)
    with pytest.raises(BadRequest, match="limit is 3"):
        store.create(1, oid(9), 60 * KIB, timeout=None)
    assert isinstance(store.get(2, [oid(9)], timeout=None), Pending)  # others are not held back


def test_the_ids_a_client_waits_for_are_bounded_in_all_and_a_refused_get_holds_nothing() -> None:
    store, _ = make(max_waiting_ids=100)
    store.register_client(1)
    store.register_client(2)
    put(store, 2, 0)
    ids = [oid(n) for n in range(1000, 1060)]
    assert isinstance(store.get(1, ids, timeout=None), Pending)
    with pytest.raises(BadRequest, match=r"would have 101 ids .* limit is 100"):
        store.get(1, [oid(0), *ids[:40]], timeout=None)  # (60 + 41)
    assert store.objects()[0].ref_count == 0  # the refused get took no reference
    (got,) = store.get(1, [oid(0)], timeout=None)  # (found at once: nothing waits)
    assert isinstance(got, ObjectLocation)
    store.create(2, oid(1), 60 * KIB)  # (held unsealed: creates must wait)
    with pytest.raises(BadRequest, match="ids in waiting gets and creates"):
        store.create_many(1, [CreateItem(oid(n), 128) for n in range(2000, 2041)], timeout=None)
    assert isinstance(store.get(2, ids, timeout=None), Pending)  # others are not held back


def test_arenas_take_at_most_a_quarter_of_the_node_beyond_what_is_needed() -> None:
    store, _ = make(budget=64 * KIB, segment_size=64 * KIB)
    for c in (1, 2, 3):
        store.register_client(c)
    assert granted(store.grant_arena(1, 32 * KIB, min_size=1024))[2] == 16 * KIB
    assert granted(store.grant_arena(2, 32 * KIB, min_size=1024))[2] == 1024  # the quarter is taken
    assert granted(store.grant_arena(3, 32 * KIB))[2] == 32 * KIB  # no smaller size is acceptable
    store.create(3, oid(1), 14 * KIB)  # 64 - 16 - 1 - 32 - 14 = 1 KiB left
    assert granted(store.grant_arena(3, 8 * KIB, min_size=512))[2] == 512  # what fits


def test_create_waits_for_memory_that_clients_hold_idle() -> None:
    store, _ = make(budget=8 * KIB, segment_size=8 * KIB, reclaim_wait=0.25)
    store.register_client(1)
    store.register_client(2)
    store.create(2, oid(1), 1 * KIB)
    store.seal(2, oid(1))  # client 2 holds a reference (perhaps only cached)
    _, _, _, arena = granted(store.grant_arena(1, 4 * KIB))
    pending = store.create(2, oid(2), 5 * KIB, now=10.0)  # timeout 0, but memory is held idle
    assert isinstance(pending, Pending)
    assert store.drain_events() == [AskReclaim(1), AskReclaim(2)]
    with pytest.raises(StoreFull):  # asked less than RECLAIM_INTERVAL ago: no second wait
        store.create(2, oid(3), 5 * KIB, now=10.5)
    assert store.drain_events() == []
    store.return_arena(1, arena - 1)  # stale: ignored
    store.return_arena(1, arena + 1)  # not granted yet: ignored too
    assert store.stats()["arena_bytes"] == 4 * KIB
    store.return_arena(1, arena)
    (done,) = store.drain_events()
    assert isinstance(done, CreateDone) and isinstance(done.result, list)
    assert store.stats()["arena_bytes"] == 0 and store.contains(oid(1))


def test_reclaim_wait_ends_in_store_full() -> None:
    store, _ = make(budget=4 * KIB, segment_size=4 * KIB, reclaim_wait=0.25)
    store.register_client(1)
    store.create(1, oid(1), 4 * KIB)
    store.seal(1, oid(1))
    pending = store.create(1, oid(2), 64, now=1.0)
    assert isinstance(pending, Pending) and store.next_deadline() == 1.25
    store.expire(1.25)
    events = store.drain_events()
    assert events[0] == AskReclaim(1)
    assert isinstance(events[1], CreateDone) and isinstance(events[1].result, StoreFull)
    with pytest.raises(ObjectNotFound):
        store.info(oid(2))


def test_with_locations_subscriber_pins_a_bounded_number_of_bytes() -> None:
    store, _ = make(budget=64 * KIB, subscriber_pin_limit=1024)
    store.register_client(1)
    store.register_client(2)
    store.subscribe(2, with_locations=True)
    for n in range(4):
        put(store, 1, n, 512)
    notes = [e for e in store.drain_events() if isinstance(e, Notify)]
    assert [e.location is not None for e in notes] == [True, True, False, False]
    assert [store.info(oid(n)).ref_count for n in range(4)] == [1, 1, 0, 0]
    store.release(2, oid(0))
    put(store, 1, 9, 512)
    (note,) = store.drain_events()
    assert isinstance(note, Notify) and note.location is not None


@settings(max_examples=300, deadline=None)
@given(
    objects=st.lists(st.tuples(st.integers(1, 3000), st.booleans()), min_size=1, max_size=40),
    size=st.integers(1, 16 * KIB),
)
def test_eviction_plan_is_exact(objects: list[tuple[int, bool]], size: int) -> None:
    """A create fails only if evicting everything evictable would not make it fit either,
    and then evicts nothing; when it succeeds it evicts a prefix of the LRU order."""
    store, _ = make(budget=16 * KIB, segment_size=8 * KIB)
    store.register_client(1)
    for n, (nbytes, held) in enumerate(objects):
        try:
            store.create(1, oid(n), nbytes)
        except StoreFull:
            continue
        store.seal(1, oid(n))
        if not held:
            store.release(1, oid(n))
    before = {o.id: o.ref_count for o in store.objects()}
    lru = [o for o in (oid(n) for n in range(len(objects))) if before.get(o) == 0]
    clone = copy.deepcopy(store)
    clone.evict(10**9)
    try:
        clone.create(1, oid(999), size)
        fits = True
    except StoreFull:
        fits = False
    evictions = store.stats()["evictions"]
    try:
        store.create(1, oid(999), size)
    except StoreFull:
        assert not fits, "evicting could have made room"
        assert store.stats()["evictions"] == evictions
        return
    assert fits
    after = {x.id for x in store.objects()}
    gone = [o for o in lru if o not in after]
    assert gone == lru[: len(gone)], "evicted out of LRU order"
    assert store.stats()["evictions"] - evictions == len(gone)


def _create_waiting_out(
    store: Store, client: int, n: int, size: int, clock: list[float], others: list[CreateDone]
) -> bool:
    """A create with timeout 0 as the coordinator runs it (the grace period passing while it
    waits for what it evicted); sealed and released. False if it failed StoreFull. Other
    calls' answers go to ``others``."""
    clock[0] += 0.001
    try:
        res = store.create(client, oid(n), size, now=clock[0])
    except StoreFull:
        return False
    while isinstance(res, Pending):
        clock[0] += 0.003
        store.expire(clock[0])
        done = [e for e in store.drain_events() if isinstance(e, CreateDone)]
        mine = [e.result for e in done if e.token == res.token]
        others += [e for e in done if e.token != res.token]
        if mine:
            if not isinstance(mine[0], list):
                return False
            break
    store.seal(client, oid(n), now=clock[0])
    store.release(client, oid(n), now=clock[0])
    store.expire(clock[0])
    others += [e for e in store.drain_events() if isinstance(e, CreateDone)]
    return True


def test_a_create_waiting_for_references_does_not_starve_others_and_gets_its_turn() -> None:
    store, _ = make(budget=640 * KIB, segment_size=160 * KIB, grace=0.002)
    for c in (1, 2, 3):
        store.register_client(c)
    store.create(3, oid(99_999), 100 * KIB)  # held by client 3
    store.seal(3, oid(99_999))
    big = store.create(2, oid(88_888), 600 * KIB, timeout=None)  # fits once client 3 lets go
    assert isinstance(big, Pending)
    clock = [0.0]
    answered: list[CreateDone] = []
    assert all(_create_waiting_out(store, 1, n, 2 * KIB, clock, answered) for n in range(600))
    assert not answered
    store.release(3, oid(99_999), now=clock[0])  # now the big one can fit, by evicting
    for n in range(600, 700):  # a stream of small creates goes on meanwhile
        _create_waiting_out(store, 1, n, 2 * KIB, clock, answered)
        if answered:
            break
    (done,) = answered
    assert done.token == big.token and isinstance(done.result, list)
