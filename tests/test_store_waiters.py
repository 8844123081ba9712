"""The waiting-request queues alone (no Store): the index of gets by missing id, creates in
FIFO order, deadlines, and the bounds on what one client may have waiting."""

from __future__ import annotations

import pytest

from plasma.errors import BadRequest
from plasma.records import CreateItem
from plasma.store.memory import Node
from plasma.store.waiters import DEAD_COMPACT, CreateWaiter, GetWaiter, Waiters


def get(token: int, oids: list[bytes], found: int = 0) -> GetWaiter:
    return GetWaiter(1, token, oids, [b"loc"] * found + [None] * (len(oids) - found))


def test_a_client_has_a_bounded_number_of_waiting_calls_and_ids() -> None:
    q = Waiters(max_waiters=2, max_waiting_ids=5)
    waiting: set = {get(1, [b"a", b"b", b"c"])}
    q.check(1, waiting, ids=2)  # 3 + 2 ids: fits
    with pytest.raises(BadRequest, match=r"6 ids in waiting gets and creates \(the limit is 5\)"):
        q.check(1, waiting, ids=3)
    waiting.add(CreateWaiter(1, 2, [CreateItem(b"x", 1, 0)], Node(0, 1), 0.0))
    with pytest.raises(BadRequest, match=r"already has 2 waiting gets and creates"):
        q.check(1, waiting)


def test_gets_are_found_by_the_ids_they_still_miss_and_finish_once() -> None:
    q = Waiters(8, 100)
    w = get(1, [b"a", b"b", b"a"], found=1)  # "a" at 0 found already; "b" and "a" at 2 missing
    q.add_get(w, deadline=None)
    assert q.gets == 1 and q.waits_for(b"b") and q.waits_for(b"a")
    assert q.take(b"a") == [(w, 2)] and not q.waits_for(b"a") and q.take(b"a") == []
    q.finish(w)
    assert q.gets == 0 and w.done


def test_a_cancelled_get_leaves_no_trace_in_the_index() -> None:
    q = Waiters(8, 100)
    a, b = get(1, [b"x", b"y"]), get(2, [b"x"])
    q.add_get(a, deadline=5.0)
    q.add_get(b, deadline=None)
    q.cancel(a)
    assert q.take(b"x") == [(b, 0)] and not q.waits_for(b"y")
    assert q.next_deadline() is None and list(q.expired(10.0)) == []  # (its deadline too)


def test_creates_wait_in_arrival_order() -> None:
    q = Waiters(8, 100)
    nd = Node(0, 1 << 20)
    ws = [CreateWaiter(1, t, [CreateItem(bytes([t]), 1, 0)], nd, 0.0) for t in (3, 1, 2)]
    for w in ws:
        q.add_create(w, deadline=None)
    assert list(q.creates.values()) == ws
    q.finish(ws[1])
    assert list(q.creates.values()) == [ws[0], ws[2]]


def test_deadlines_come_due_in_order_and_each_waiter_once() -> None:
    q = Waiters(8, 100)
    late, early, done = get(1, [b"a"]), get(2, [b"b"]), get(3, [b"c"])
    q.add_get(late, deadline=3.0)
    q.add_get(early, deadline=1.0)
    q.add_get(done, deadline=2.0)
    q.finish(done)  # answered before its deadline: never expires
    assert q.next_deadline() == 1.0
    assert list(q.expired(2.5)) == [early] and early.done and not q.waits_for(b"b")
    assert q.next_deadline() == 3.0 and q.gets == 1
    assert list(q.expired(3.0)) == [late] and q.gets == 0 and q.next_deadline() is None


def test_answered_waiters_do_not_pile_up_in_the_deadline_heap() -> None:
    q = Waiters(1 << 20, 1 << 20)
    keep = get(0, [b"k"])
    q.add_get(keep, deadline=1e9)
    for t in range(1, 10 * DEAD_COMPACT):
        w = get(t, [bytes([t % 256])])
        q.add_get(w, deadline=float(t))
        q.take(w.oids[0])
        q.finish(w)
    assert len(q._deadlines) <= 2 * DEAD_COMPACT + 2  # compacted as it went
    assert q.next_deadline() == 1e9
