"""Delivery of the store's events (internal): which function carries out which event.

:data:`DELIVERIES` maps every type of :data:`plasma.store.Event` to what the coordinator does
with it: answer a parked request (``GetDone``, ``CreateDone``, ``MigrateDone``,
``ReplicateDone``), tell a client something (``Notify``, ``Revoke``, ``AskReclaim``,
``SegmentFreed``), or start the I/O the store asked for (``Place`` and ``Copy`` on the page
mover, ``Restore`` and ``SpillDead`` on the spiller). :func:`deliver` carries out one drain
of events and flushes the sessions it wrote to. This module must never decide anything the
store decides: an event is carried out as it is, or dropped when its client is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from plasma import protocol as p
from plasma.coordinator.replies import reply_arena, reply_got, reply_locations, unseen_segments
from plasma.coordinator.session import Session
from plasma.errors import PlasmaError
from plasma.ids import ID_SIZE
from plasma.store import (
    AskReclaim,
    Copy,
    CreateDone,
    DirectoryMoved,
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

if TYPE_CHECKING:
    from plasma.coordinator.server import Coordinator

__all__ = ["DELIVERIES", "MAX_UNSENT_NOTIFICATIONS", "Drain", "deliver"]

log = logging.getLogger("plasma.coordinator")

# A subscriber with more than this many bytes unread is told it fell behind (an "overflow"
# notification) and its subscription ends.
MAX_UNSENT_NOTIFICATIONS = 8 << 20


@dataclass
class Drain:
    """What carrying out one drain of events did: the sessions written to (flushed at the
    end), and the segments freed (told in one message per client at the end)."""

    touched: set[Session] = field(default_factory=set)
    dropped: list[int] = field(default_factory=list)


Delivery = Callable[["Coordinator", Any, Drain], None]


def deliver(coord: Coordinator, events: Iterable[Any]) -> None:
    """Carry out ``events`` in order, then flush every session written to."""
    drain = Drain()
    for event in events:
        DELIVERIES[type(event)](coord, event, drain)
    if drain.dropped:
        drain.touched.update(_tell_dropped(coord.sessions.values(), drain.dropped))
    for session in drain.touched:
        session.flush()


# ------------------------------------------------------------ the store's I/O


def _directory_moved(coord: Coordinator, event: DirectoryMoved, drain: Drain) -> None:
    """Nothing: clients ask for the new directory when they find theirs superseded."""


def _segment_freed(coord: Coordinator, event: SegmentFreed, drain: Drain) -> None:
    drain.dropped.append(event.segment)


def _place(coord: Coordinator, event: Place, drain: Drain) -> None:
    coord.start_soon(coord.pages.place, event, coord.deliver_events)


def _copy(coord: Coordinator, event: Copy, drain: Drain) -> None:
    coord.start_soon(coord.pages.copy, event, coord.deliver_events)


def _restore(coord: Coordinator, event: Restore, drain: Drain) -> None:
    assert coord.spiller is not None  # the store restores only what it spilled
    coord.start_soon(coord.spiller.restore, event, coord.deliver_events)


def _spill_dead(coord: Coordinator, event: SpillDead, drain: Drain) -> None:
    assert coord.spiller is not None
    coord.spiller.dead(event)


# ------------------------------------------------------------ messages to clients


def _notify(coord: Coordinator, event: Notify, drain: Drain) -> None:
    session = coord.sessions.get(event.client)
    if session is None:
        return
    loc = event.location
    segs, fds = unseen_segments(coord.pool, session, [loc.segment] if loc else [])
    note = p.Notification(
        seq=0,
        kind=event.kind,
        id=event.oid,
        data_size=event.data_size,
        metadata_size=event.metadata_size,
        location=loc,
        segments=segs,
    )
    session.send(note, fds)
    if session.unsent > MAX_UNSENT_NOTIFICATIONS:
        _drop_subscriber(coord, session)
    drain.touched.add(session)


def _revoke(coord: Coordinator, event: Revoke, drain: Drain) -> None:
    _tell(coord, event.client, p.Revoked(seq=0, ids=[event.oid]), drain)


def _ask_reclaim(coord: Coordinator, event: AskReclaim, drain: Drain) -> None:
    _tell(coord, event.client, p.Reclaim(seq=0), drain)


def _tell(coord: Coordinator, client: int, message: Any, drain: Drain) -> None:
    session = coord.sessions.get(client)
    if session is not None:
        session.send(message)
        drain.touched.add(session)


def _tell_dropped(sessions: Iterable[Session], segments: list[int]) -> list[Session]:
    """Tell the clients that were sent these segments that they are gone."""
    told = []
    for session in sessions:
        gone = [s for s in segments if s in session.seen_segments]
        if gone:
            session.seen_segments.difference_update(gone)
            session.send(p.SegmentsDropped(seq=0, ids=gone))
            told.append(session)
    return told


def _drop_subscriber(coord: Coordinator, session: Session) -> None:
    """A subscriber that fell behind: end its subscription with an "overflow" note (its
    ``data_size`` is the bytes it left unread); events already made still go out."""
    if coord.store.unsubscribe(session.client_id):
        log.warning("client %d fell behind its notifications", session.client_id)
        session.send(
            p.Notification(
                seq=0,
                kind="overflow",
                id=bytes(ID_SIZE),
                data_size=session.unsent,
                metadata_size=0,
            )
        )


# ------------------------------------------------------------ answers to parked requests


def _waiter(
    coord: Coordinator, client: int, token: int, drain: Drain
) -> tuple[Session, int] | None:
    """The session and ``seq`` of the request parked under ``token``, if both still are."""
    session = coord.sessions.get(client)
    if session is None:
        return None
    waiter = coord.waits.pop(token, None)
    if waiter is None:
        return None
    drain.touched.add(session)
    return session, waiter[1]


def _get_done(coord: Coordinator, event: GetDone, drain: Drain) -> None:
    if (found := _waiter(coord, event.client, event.token, drain)) is not None:
        session, seq = found
        reply_got(coord.pool, session, seq, event.results)


def _create_done(coord: Coordinator, event: CreateDone, drain: Drain) -> None:
    if (found := _waiter(coord, event.client, event.token, drain)) is None:
        return
    session, seq = found
    result = event.result
    if isinstance(result, PlasmaError):
        coord.error_counts[result.code] += 1
        session.send(p.Error(seq=seq, code=result.code, message=result.message))
    elif isinstance(result, Grant):
        reply_arena(coord.pool, session, seq, result)
    else:
        reply_locations(coord.pool, session, seq, result)


def _migrate_done(coord: Coordinator, event: MigrateDone, drain: Drain) -> None:
    if (found := _waiter(coord, event.client, event.token, drain)) is not None:
        session, seq = found
        _reply_nodes(session, seq, event.result, p.Migrated)


def _replicate_done(coord: Coordinator, event: ReplicateDone, drain: Drain) -> None:
    if (found := _waiter(coord, event.client, event.token, drain)) is not None:
        session, seq = found
        _reply_nodes(session, seq, event.result, p.Replicated)


def _reply_nodes(
    session: Session,
    seq: int,
    result: list[int] | PlasmaError,
    reply: type[p.Migrated] | type[p.Replicated],
) -> None:
    """The answer to a migrate or replicate: the nodes with the object, or the error."""
    if isinstance(result, PlasmaError):
        session.send(p.Error(seq=seq, code=result.code, message=result.message))
    else:
        session.send(reply(seq=seq, nodes=result))


DELIVERIES: dict[type, Delivery] = {
    GetDone: _get_done,
    CreateDone: _create_done,
    MigrateDone: _migrate_done,
    ReplicateDone: _replicate_done,
    Notify: _notify,
    Revoke: _revoke,
    AskReclaim: _ask_reclaim,
    SegmentFreed: _segment_freed,
    DirectoryMoved: _directory_moved,
    Place: _place,
    Copy: _copy,
    Restore: _restore,
    SpillDead: _spill_dead,
}
