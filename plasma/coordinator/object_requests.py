"""The requests on objects and arenas (internal): each decodes into one call of the store and
an answer (now, or once the store's event says it is done).

Every handler here takes the coordinator, the session and its request, calls the
:class:`~plasma.store.Store` and queues the reply; a request the store cannot answer at
once is parked (:meth:`Coordinator.park`) until its event comes. This module owns the
shape of those replies; it must never keep object state of its own, nor do I/O beyond
queueing replies (the store decides, the session sends).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from plasma import errors
from plasma import protocol as p
from plasma.coordinator.replies import reply_arena, reply_got, reply_locations
from plasma.coordinator.session import Session
from plasma.errors import PlasmaError
from plasma.store import Pending

if TYPE_CHECKING:
    from plasma.coordinator.server import Coordinator

__all__ = [
    "abort",
    "arena",
    "contains",
    "create",
    "create_many",
    "delete",
    "evict",
    "get",
    "list_objects",
    "migrate",
    "release",
    "replicate",
    "return_arena",
    "seal",
    "seal_arena",
    "subscribe",
    "sync",
    "unpin",
]


def create(coord: Coordinator, session: Session, msg: p.Create) -> None:
    res = coord.store.create(
        session.client_id,
        msg.id,
        msg.data_size,
        msg.metadata_size,
        msg.node,
        timeout=msg.timeout,
        now=time.monotonic(),
        interleave=msg.interleave,
    )
    if isinstance(res, Pending):
        coord.park(session, msg.seq, res)
    else:
        reply_locations(coord.pool, session, msg.seq, [res])


def create_many(coord: Coordinator, session: Session, msg: p.CreateMany) -> None:
    res = coord.store.create_many(
        session.client_id, msg.items, msg.node, timeout=msg.timeout, now=time.monotonic()
    )
    if isinstance(res, Pending):
        coord.park(session, msg.seq, res)
    else:
        reply_locations(coord.pool, session, msg.seq, res)


def _for_each(
    session: Session, seq: int, ids: list[bytes], op: Callable[[int, bytes], object], ack: bool
) -> None:
    """Apply ``op`` to every id; report the failures in one Error, else Ok when asked."""
    if len(ids) == 1:  # the usual case: its failure is the Error as it is
        op(session.client_id, ids[0])
    else:
        failures: list[PlasmaError] = []
        for oid in ids:
            try:
                op(session.client_id, oid)
            except PlasmaError as exc:
                failures.append(exc)
        if failures:
            first = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise type(first)(first.message + more)
    if ack:
        session.send(p.Ok(seq=seq))


def seal(coord: Coordinator, session: Session, msg: p.Seal) -> None:
    op = functools.partial(coord.store.seal, now=time.monotonic())
    _for_each(session, msg.seq, msg.ids, op, msg.ack)


def release(coord: Coordinator, session: Session, msg: p.Release) -> None:
    op = functools.partial(coord.store.release, now=time.monotonic())
    _for_each(session, msg.seq, msg.ids, op, msg.ack)


def abort(coord: Coordinator, session: Session, msg: p.Abort) -> None:
    coord.store.abort(session.client_id, msg.id, now=time.monotonic())
    session.send(p.Ok(seq=msg.seq))


def unpin(coord: Coordinator, session: Session, msg: p.Unpin) -> None:
    coord.store.rescan_pins_soon(now=time.monotonic())


def get(coord: Coordinator, session: Session, msg: p.Get) -> None:
    res = coord.store.get(session.client_id, msg.ids, timeout=msg.timeout, now=time.monotonic())
    if isinstance(res, Pending):
        coord.park(session, msg.seq, res)
    else:
        reply_got(coord.pool, session, msg.seq, res)


def delete(coord: Coordinator, session: Session, msg: p.Delete) -> None:
    deleted, deferred, missing = coord.store.delete(
        session.client_id, msg.ids, now=time.monotonic()
    )
    session.send(p.Deleted(seq=msg.seq, deleted=deleted, deferred=deferred, missing=missing))


def contains(coord: Coordinator, session: Session, msg: p.Contains) -> None:
    session.send(p.Contained(seq=msg.seq, present=coord.store.contains(msg.id)))


def list_objects(coord: Coordinator, session: Session, msg: p.List) -> None:
    """One page of a listing (see ``p.List``): a big store is listed from a snapshot
    of its ids, a page per request, so no reply is huge and nobody waits long."""
    if msg.listing == 0:
        ids = coord.store.object_ids()
        if len(ids) <= p.LIST_PAGE:
            session.send(p.Listing(seq=msg.seq, objects=coord.store.objects(ids)))
            return
        session.last_listing += 1
        listing = session.last_listing
        session.listings[listing] = ids
        if len(session.listings) > p.MAX_LISTINGS:
            session.listings.popitem(last=False)
    else:
        listing = msg.listing
        found = session.listings.get(listing)
        if found is None:
            raise errors.BadRequest(
                f"listing {listing} is not in progress (done, or more than "
                f"{p.MAX_LISTINGS} listings were started after it)"
            )
        ids = found
    end = min(msg.start + p.LIST_PAGE, len(ids))
    page = coord.store.objects(ids[msg.start : end])
    if end == len(ids):
        del session.listings[listing]
        end = 0
    session.send(p.Listing(seq=msg.seq, objects=page, listing=listing, next=end))


def migrate(coord: Coordinator, session: Session, msg: p.Migrate) -> None:
    res = coord.store.migrate(session.client_id, msg.id, msg.node, now=time.monotonic())
    if isinstance(res, Pending):
        coord.park(session, msg.seq, res)
    else:
        session.send(p.Migrated(seq=msg.seq, nodes=res))


def replicate(coord: Coordinator, session: Session, msg: p.Replicate) -> None:
    res = coord.store.replicate(session.client_id, msg.id, msg.nodes, now=time.monotonic())
    if isinstance(res, Pending):
        coord.park(session, msg.seq, res)
    else:
        session.send(p.Replicated(seq=msg.seq, nodes=res))


def evict(coord: Coordinator, session: Session, msg: p.Evict) -> None:
    nbytes = coord.store.evict(msg.nbytes, now=time.monotonic())
    coord.reply_after_scan(session, p.Evicted(seq=msg.seq, nbytes=nbytes))


def subscribe(coord: Coordinator, session: Session, msg: p.Subscribe) -> None:
    coord.store.subscribe(session.client_id, msg.with_locations)
    session.send(p.Ok(seq=msg.seq))


def arena(coord: Coordinator, session: Session, msg: p.Arena) -> None:
    res = coord.store.grant_arena(
        session.client_id, msg.size, msg.node, min_size=msg.min_size, now=time.monotonic()
    )
    if isinstance(res, Pending):
        coord.park(session, msg.seq, res)
    else:
        reply_arena(coord.pool, session, msg.seq, res)


def return_arena(coord: Coordinator, session: Session, msg: p.ReturnArena) -> None:
    coord.store.return_arena(session.client_id, msg.grant, now=time.monotonic())


def seal_arena(coord: Coordinator, session: Session, msg: p.SealArena) -> None:
    coord.store.seal_arena(session.client_id, msg.grant, msg.objects, now=time.monotonic())
    if msg.ack:
        session.send(p.Ok(seq=msg.seq))


def sync(coord: Coordinator, session: Session, msg: p.Sync) -> None:
    """Answered once everything deleted or evicted before it was scanned for pins."""
    coord.reply_after_scan(session, p.Ok(seq=msg.seq))
