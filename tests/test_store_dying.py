"""The dying set alone (no Store, no pin tables): grace periods, rescans and their backoff,
Unpin hints and their rate limit, copies that die with their object."""

from __future__ import annotations

import itertools
import math

import pytest

from plasma.records import ObjectLocation
from plasma.store.dying import PIN_RESCAN, PIN_RESCAN_MAX, UNPIN_INTERVAL, DyingSet
from plasma.store.objects import ObjectRecord, State


def rec(gen: int = 0) -> ObjectRecord:
    r = ObjectRecord(ObjectLocation(1, 0, 8, 0, 0), 64, 1, 0.0, State.DELETED)
    r.gen = gen
    return r


def test_objects_are_due_after_their_grace_in_the_order_they_died() -> None:
    d = DyingSet(grace=0.5)
    a, b = rec(1), rec(2)
    d.add(1, b"a", a, now=10.0)
    d.add(2, b"b", b, now=10.2)
    assert d.take_wakeup() and not d.take_wakeup()  # (once)
    assert d.next_time() == 10.5 and d.last_time() == pytest.approx(10.7)
    assert d.due(10.4) == ([], 0) and len(d) == 2
    assert d.due(10.5) == ([(1, b"a", a)], 0)
    assert d.due(11.0) == ([(2, b"b", b)], 0)
    assert len(d) == 0 and d.next_time() is None and d.last_time() is None


def test_without_a_grace_period_everything_is_due_whatever_the_clock_says() -> None:
    d = DyingSet(grace=0.0)
    r = rec(1)
    d.add(1, b"a", r, now=5.0)
    assert d.due(0.0) == ([(1, b"a", r)], 0)


def test_a_revived_victim_is_never_due() -> None:
    d = DyingSet(grace=0.1)
    d.add(1, b"a", rec(1), now=0.0)
    assert 1 in d
    d.revive(1)
    assert 1 not in d and d.due(1.0) == ([], 0)


def test_pinned_deleted_objects_are_rescanned_backing_off_while_nothing_frees() -> None:
    d = DyingSet(grace=0.0)
    r = rec(1)
    d.add(1, b"a", r, now=0.0)
    due, rescanned = d.due(0.0)
    d.keep_pinned(1, b"a", r)  # the scan found it pinned
    d.reschedule(0.0, rescanned, added=True)
    assert d.rescan_at == PIN_RESCAN and len(d) == 1
    gaps, now = [], 0.0
    while len(gaps) < 8:  # each rescan still finds it pinned: the gap doubles, up to the max
        now = d.rescan_at
        assert d.due(now - 1e-9) == ([], 0)  # (not before its time)
        due, rescanned = d.due(now)
        assert due == [(1, b"a", r)] and rescanned == 1
        d.keep_pinned(1, b"a", r)
        d.reschedule(now, rescanned, added=False)
        gaps.append(d.rescan_at - now)
    assert gaps[0] == pytest.approx(2 * PIN_RESCAN) and gaps[-1] == pytest.approx(PIN_RESCAN_MAX)
    assert all(b >= a for a, b in itertools.pairwise(gaps))
    due, rescanned = d.due(d.rescan_at)  # now it is free: nothing kept
    d.reschedule(now, rescanned, added=False)
    assert d.rescan_at == math.inf and len(d) == 0


def test_a_hint_brings_the_rescan_forward_at_most_once_per_interval() -> None:
    d = DyingSet(grace=0.0)
    d.hint(0.0)  # nothing pinned: nothing to bring forward
    assert d.rescan_at == math.inf
    r = rec(1)
    d.keep_pinned(1, b"a", r)
    d.reschedule(0.0, 0, added=True)
    _, rescanned = d.due(d.rescan_at)  # a rescan at 0.05 that finds it pinned again
    d.keep_pinned(1, b"a", r)
    d.reschedule(PIN_RESCAN, rescanned, added=False)
    assert d.rescan_at == pytest.approx(3 * PIN_RESCAN)  # backed off
    d.hint(PIN_RESCAN + 0.001)  # too soon after that rescan: moved to the interval's end
    assert d.rescan_at == pytest.approx(PIN_RESCAN + UNPIN_INTERVAL)
    d.hint(1.0)  # long after: now
    assert d.rescan_at == pytest.approx(PIN_RESCAN + UNPIN_INTERVAL)  # (never later)


def test_copies_die_with_their_object_or_wait_their_own_grace() -> None:
    d = DyingSet(grace=1.0)
    old, new = rec(7), rec(8)
    d.mark_copy(7, now=0.0)  # dying with its object since 0
    d.mark_copy(8, now=0.0)
    d.unmark_copy(8)  # ... revived, then orphaned later
    d.orphan(b"old", old)
    d.orphan(b"new", new)
    assert d.next_time() == 0.0 and d.take_wakeup()
    due, later = d.take_orphans(now=1.0)
    assert due == [(7, b"old", old)] and later == [(b"new", new)]
    assert not d.orphans and d.next_time() is None


def test_creates_blocked_by_pins_look_again_once() -> None:
    d = DyingSet(grace=0.0)
    d.pinned_candidate(now=1.0)
    assert d.take_wakeup() and d.rescan_at == 1.0 + PIN_RESCAN
    assert not d.blocked_creates_due(1.0)
    assert d.blocked_creates_due(2.0) and not d.blocked_creates_due(2.0)
