"""Replies that hand a client segments (internal): each segment's fd goes to a client once,
with the first reply that references it (SCM_RIGHTS).

This module owns which descriptor of a segment a client gets (read-only or writable) and
the replies that carry them (``Created``, ``Got``, ``ArenaGranted``). It must never decide
what is answered, nor change the store: the handlers and the event delivery call it with
the store's answer.
"""

from __future__ import annotations

from collections.abc import Iterable

from plasma import protocol as p
from plasma.coordinator.session import Session
from plasma.segments import SegmentPool
from plasma.store import Grant

__all__ = ["reply_arena", "reply_got", "reply_locations", "unseen_segments"]


def unseen_segments(
    pool: SegmentPool, session: Session, segment_ids: Iterable[int], *, creating: bool = False
) -> tuple[list[p.SegmentInfo], list[int]]:
    """Segments a reply references that ``session`` has not been sent yet, and their fds
    (which then travel with that reply): read-only ones to a read-only session, and to
    everyone but the creator of its object for a fallback file (a file cannot be sealed
    against shrinking: a writable descriptor of it could make its readers SIGBUS)."""
    new: list[p.SegmentInfo] = []
    fds: list[int] = []
    for seg_id in segment_ids:
        if seg_id not in session.seen_segments:
            seg = pool.get(seg_id)
            writable = session.writable and (creating or not seg.file_backed)
            fds.append(seg.fd if writable else seg.read_only_fd())
            new.append(seg.info(writable=writable))
            session.seen_segments.add(seg_id)
    return new, fds


def reply_locations(
    pool: SegmentPool, session: Session, seq: int, locations: list[p.ObjectLocation]
) -> None:
    """``Created``: the new objects' locations, for their creator."""
    segs, fds = unseen_segments(pool, session, {loc.segment for loc in locations}, creating=True)
    session.send(p.Created(seq=seq, locations=locations, segments=segs), fds)


def reply_got(
    pool: SegmentPool, session: Session, seq: int, results: list[p.ObjectLocation | str]
) -> None:
    """``Got``: per id a location (a reference taken) or an error code."""
    segs, fds = unseen_segments(
        pool, session, {r.segment for r in results if isinstance(r, p.ObjectLocation)}
    )
    session.send(p.Got(seq=seq, results=results, segments=segs), fds)


def reply_arena(pool: SegmentPool, session: Session, seq: int, grant: Grant) -> None:
    """``ArenaGranted``: an arena, for the client that asked for it."""
    segs, fds = unseen_segments(pool, session, [grant.segment], creating=True)
    reply = p.ArenaGranted(seq, grant.segment, grant.offset, grant.size, grant.grant, segs)
    session.send(reply, fds)
