"""The client core's inbox alone: frames fed by hand, no coordinator, no socket."""

from __future__ import annotations

import mmap

import msgspec
import pytest

from plasma import protocol as p
from plasma._client_core.fast_path import client_lock
from plasma._client_core.inbox import MAX_DEFERRED_ERRORS, Inbox
from plasma._client_core.outbox import Outbox
from plasma._client_core.refs import Refs
from plasma._client_core.segment_maps import SegmentMaps
from plasma.errors import ObjectNotFound, PlasmaError

A, B = b"a" * 20, b"b" * 20


class Parts:
    def __init__(self) -> None:
        lock = client_lock()
        self.failed_arenas: list[int] = []
        self.outbox = Outbox(lambda msg: self.inbox.nobodys(msg))
        self.maps = SegmentMaps(lock)
        self.maps.segments[1] = mmap.mmap(-1, 4096)
        self.refs = Refs(lock, self.outbox, self.maps, release_delay=4)
        self.inbox = Inbox(self.outbox, self.maps, self.refs, self.failed_arenas.append)

    def feed(self, *msgs: msgspec.Struct) -> list[object]:
        return self.inbox.feed(b"".join(p.encode(m) for m in msgs), [])


def at(offset: int) -> p.ObjectLocation:
    return p.ObjectLocation(segment=1, offset=offset, data_size=8, metadata_size=0, node=0)


def test_replies_come_back_in_order_and_pushes_are_kept() -> None:
    parts = Parts()
    note = p.Notification(seq=0, kind="sealed", id=A, data_size=8, metadata_size=0)
    run = p.RunRequest(seq=0, request=1, client=2, payload=None)
    replies = parts.feed(p.Contained(seq=3, present=True), note, run, p.Contained(4, False))
    assert [r.seq for r in replies] == [3, 4]  # type: ignore[attr-defined]
    assert list(parts.inbox.notifications) == [note] and list(parts.inbox.run_requests) == [run]
    assert parts.inbox.next_notification() == note and not parts.inbox.notifications


def test_a_frame_split_anywhere_decodes_once_whole() -> None:
    parts = Parts()
    frame = p.encode(p.Contained(seq=9, present=True))
    assert parts.inbox.feed(frame[:3], []) == []
    assert parts.inbox.feed(frame[3:], []) == [p.Contained(seq=9, present=True)]


def test_an_overflow_notification_says_the_subscription_ended() -> None:
    parts = Parts()
    parts.feed(p.Notification(seq=0, kind="overflow", id=bytes(20), data_size=99, metadata_size=0))
    with pytest.raises(PlasmaError, match="99 bytes of notifications"):
        parts.inbox.next_notification()


def test_pushes_reach_the_part_they_concern() -> None:
    parts = Parts()
    located = p.Notification(seq=0, kind="sealed", id=A, data_size=8, metadata_size=0)
    located.location = at(0)
    view = parts.refs.readable(B, at(64))
    del view  # cached now
    assert parts.feed(located, p.Revoked(seq=0, ids=[B]), p.Reclaim(seq=0)) == []
    assert parts.refs.prefetched == {A: [at(0)]}
    assert list(parts.outbox.releases) == [B] and parts.inbox.reclaim_requested
    parts.feed(p.SegmentsDropped(seq=0, ids=[1]))
    assert not parts.maps.segments


def test_a_segment_without_its_descriptor_is_refused() -> None:
    parts = Parts()
    info = p.SegmentInfo(id=2, size=4096, node=0, page_size=4096)
    with pytest.raises(PlasmaError, match="without its file descriptor"):
        parts.feed(p.Got(seq=1, results=[at(0)], segments=[info]))


def test_errors_of_requests_sent_without_waiting_are_kept_then_counted() -> None:
    parts = Parts()
    for seq in range(1, MAX_DEFERRED_ERRORS + 3):
        assert parts.inbox.unexpected(p.Error(seq, "object_not_found", f"no {seq}")) is None
    errors = []
    while (err := parts.inbox.take_deferred_error()) is not None:
        errors.append(err)
    assert len(errors) == MAX_DEFERRED_ERRORS and isinstance(errors[0], ObjectNotFound)
    assert errors[-1].message == f"no {MAX_DEFERRED_ERRORS} (and 2 more errors)"


def test_the_coordinators_last_word_is_returned_not_kept() -> None:
    parts = Parts()
    err = parts.inbox.unexpected(p.Error(0, "bad_request", "bye"))
    assert err is not None and err.message == "bye" and not parts.inbox.deferred_errors


def test_what_an_abandoned_request_brings_goes_back() -> None:
    parts = Parts()
    get = p.Get(seq=1, ids=[A, B], timeout=0.0)
    create = p.Create(seq=2, id=A, data_size=8, metadata_size=0)
    arena = p.Arena(seq=3, size=4096, node=None, min_size=64)
    for msg in (get, create, arena, p.Contains(seq=4, id=A)):
        parts.inbox.abandon(msg)
    assert set(parts.inbox.abandoned) == {1, 2, 3}  # (a Contains brings nothing)
    parts.inbox.unexpected(p.Got(seq=1, results=[at(0), "object_not_found"]))
    parts.inbox.unexpected(p.Created(seq=2, locations=[at(0)]))
    parts.inbox.unexpected(p.ArenaGranted(seq=3, segment=1, offset=0, size=4096, grant=7))
    assert list(parts.outbox.releases) == [A]
    assert list(parts.outbox.cleanup) == [p.Abort(seq=0, id=A), p.ReturnArena(seq=0, grant=7)]
    assert not parts.inbox.abandoned
    parts.outbox.frames()  # the cleanup goes out for nobody: its answers are not errors
    abort, give_back = sorted(parts.inbox.abandoned)
    assert isinstance(parts.inbox.abandoned[abort], p.Abort)
    parts.inbox.unexpected(p.Error(abort, "object_not_found", "gone already"))
    assert not parts.inbox.deferred_errors and list(parts.inbox.abandoned) == [give_back]


def test_a_failed_arena_seal_drops_its_arena_and_answers_clear_older_ones() -> None:
    parts = Parts()
    parts.inbox.expect_seal(10, grant=1)
    parts.inbox.expect_seal(11, grant=2)
    parts.inbox.expect_seal(13, grant=2)
    parts.feed(p.Error(11, "store_full", "no"))
    assert parts.failed_arenas == [2] and list(parts.inbox.arena_seals) == [13]
    assert parts.inbox.deferred_errors == []  # (not yet: the driver hands it on)
    parts.feed(p.Contained(seq=14, present=True))
    assert not parts.inbox.arena_seals and parts.failed_arenas == [2]
