"""The delivery of the store's events (plasma.coordinator.delivery), without a coordinator:
every event type has a delivery, answers go to the request parked for them, messages to
their client, I/O to the part that does it, and nothing to a client that is gone."""

from __future__ import annotations

import collections
import typing
from types import SimpleNamespace
from typing import Any

from plasma import errors
from plasma import protocol as p
from plasma.coordinator.delivery import DELIVERIES, MAX_UNSENT_NOTIFICATIONS, deliver
from plasma.records import ObjectLocation
from plasma.store import (
    AskReclaim,
    Copy,
    CreateDone,
    DirectoryMoved,
    Event,
    GetDone,
    Grant,
    MigrateDone,
    Notify,
    Place,
    ReplicateDone,
    Restore,
    Revoke,
    SegmentFreed,
    SpillDead,
)

OID = bytes(range(20))


class FakeSession:
    def __init__(self, client_id: int, seen: set[int] | None = None) -> None:
        self.client_id = client_id
        self.writable = True
        self.seen_segments = set(seen or ())
        self.unsent = 0
        self.sent: list[Any] = []
        self.fds: list[int] = []
        self.flushes = 0

    def send(self, msg: Any, fds: list[int] | None = None, *, owned: bool = False) -> None:
        self.sent.append(msg)
        self.fds.extend(fds or [])

    def flush(self) -> None:
        self.flushes += 1


class FakeSegment:
    def __init__(self, seg_id: int) -> None:
        self.id = seg_id
        self.fd = 100 + seg_id
        self.file_backed = False

    def read_only_fd(self) -> int:
        return 200 + self.id

    def info(self, *, writable: bool) -> p.SegmentInfo:
        return p.SegmentInfo(id=self.id, size=4096, node=0, page_size=4096, writable=writable)


class FakeStore:
    def __init__(self) -> None:
        self.unsubscribed: list[int] = []

    def unsubscribe(self, client: int) -> bool:
        self.unsubscribed.append(client)
        return True


def fake_coordinator(*sessions: FakeSession) -> Any:
    coord = SimpleNamespace(
        sessions={s.client_id: s for s in sessions},
        waits={},
        error_counts=collections.Counter(),
        pool=SimpleNamespace(get=FakeSegment),
        store=FakeStore(),
        pages=SimpleNamespace(place="place", copy="copy"),
        spiller=SimpleNamespace(restore="restore", dead=lambda event: coord.dead.append(event)),
        dead=[],
        started=[],
        deliver_events="deliver_events",
    )
    coord.start_soon = lambda fn, *args: coord.started.append((fn, *args))
    return coord


def location(segment: int = 3) -> ObjectLocation:
    return ObjectLocation(segment=segment, offset=0, data_size=8, metadata_size=0, node=0)


def test_every_store_event_has_a_delivery():
    assert set(DELIVERIES) == set(typing.get_args(Event))


def test_a_get_answers_the_request_parked_for_it_with_the_new_segments():
    session = FakeSession(1)
    coord = fake_coordinator(session)
    coord.waits = {7: (1, 42), 8: (1, 43)}
    deliver(coord, [GetDone(client=1, token=7, results=[location(3), "not_found"])])
    (got,) = session.sent
    assert got.seq == 42 and got.results == [location(3), "not_found"]
    assert [s.id for s in got.segments] == [3] and session.fds == [103]
    assert coord.waits == {8: (1, 43)} and session.flushes == 1


def test_an_answer_nobody_waits_for_is_dropped():
    session = FakeSession(1)
    coord = fake_coordinator(session)
    deliver(coord, [GetDone(client=1, token=7, results=[]), Revoke(client=2, oid=OID)])
    assert session.sent == [] and session.flushes == 0


def test_an_answer_for_a_client_gone_leaves_its_wait_alone():
    coord = fake_coordinator()
    coord.waits = {7: (1, 42)}
    deliver(coord, [CreateDone(client=1, token=7, result=[location()])])
    assert coord.waits == {7: (1, 42)}


def test_a_create_answers_locations_a_grant_or_a_counted_error():
    session = FakeSession(1, seen={3})
    coord = fake_coordinator(session)
    coord.waits = {1: (1, 10), 2: (1, 11), 3: (1, 12)}
    failed = errors.StoreFull("no room")
    deliver(
        coord,
        [
            CreateDone(client=1, token=1, result=[location(3)]),
            CreateDone(client=1, token=2, result=Grant(segment=3, offset=64, size=128, grant=5)),
            CreateDone(client=1, token=3, result=failed),
        ],
    )
    created, granted, error = session.sent
    assert created == p.Created(seq=10, locations=[location(3)], segments=[])
    assert granted == p.ArenaGranted(11, 3, 64, 128, 5, [])
    assert error == p.Error(seq=12, code=errors.STORE_FULL, message="no room")
    assert coord.error_counts == {errors.STORE_FULL: 1}


def test_a_migrate_or_replicate_answers_nodes_or_the_error():
    session = FakeSession(1)
    coord = fake_coordinator(session)
    coord.waits = {1: (1, 10), 2: (1, 11), 3: (1, 12)}
    lost = errors.PlacementImpossible("node 9 is not served")
    deliver(
        coord,
        [
            MigrateDone(client=1, token=1, result=[1]),
            ReplicateDone(client=1, token=2, result=[0, 1]),
            ReplicateDone(client=1, token=3, result=lost),
        ],
    )
    assert session.sent == [
        p.Migrated(seq=10, nodes=[1]),
        p.Replicated(seq=11, nodes=[0, 1]),
        p.Error(seq=12, code=lost.code, message=lost.message),
    ]


def test_freed_segments_are_told_once_to_each_client_that_had_them():
    had_both, had_one, had_none = FakeSession(1, {3, 4}), FakeSession(2, {4}), FakeSession(3)
    coord = fake_coordinator(had_both, had_one, had_none)
    deliver(coord, [SegmentFreed(segment=3), SegmentFreed(segment=4)])
    assert had_both.sent == [p.SegmentsDropped(seq=0, ids=[3, 4])] and not had_both.seen_segments
    assert had_one.sent == [p.SegmentsDropped(seq=0, ids=[4])]
    assert had_none.sent == [] and had_none.flushes == 0


def test_messages_to_clients():
    session = FakeSession(1)
    coord = fake_coordinator(session)
    deliver(
        coord,
        [
            Revoke(client=1, oid=OID),
            AskReclaim(client=1),
            Notify(client=1, kind="deleted", oid=OID, data_size=8, metadata_size=0),
            DirectoryMoved(),
        ],
    )
    assert session.sent == [
        p.Revoked(seq=0, ids=[OID]),
        p.Reclaim(seq=0),
        p.Notification(seq=0, kind="deleted", id=OID, data_size=8, metadata_size=0),
    ]
    assert session.flushes == 1


def test_a_subscriber_that_falls_behind_is_told_and_unsubscribed():
    session = FakeSession(1)
    session.unsent = MAX_UNSENT_NOTIFICATIONS + 1
    coord = fake_coordinator(session)
    deliver(coord, [Notify(client=1, kind="sealed", oid=OID, data_size=8, metadata_size=0)])
    sealed, overflow = session.sent
    assert sealed.kind == "sealed" and overflow.kind == "overflow"
    assert overflow.data_size == session.unsent and coord.store.unsubscribed == [1]


def test_io_goes_to_the_part_that_does_it():
    coord = fake_coordinator()
    place = Place(token=1, segment=3, start=0, length=4096, mode="bind", nodes=[1])
    copy = Copy(token=2, segment=3, offset=0, length=8, targets=[location(4)])
    restore = Restore(token=3, oid=OID, location=location(), file=1, entry=None)
    dead = SpillDead(file=1, entry=None, empty=True)
    deliver(coord, [place, copy, restore, dead])
    assert coord.started == [
        ("place", place, "deliver_events"),
        ("copy", copy, "deliver_events"),
        ("restore", restore, "deliver_events"),
    ]
    assert coord.dead == [dead]
