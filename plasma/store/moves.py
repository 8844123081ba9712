"""Page moves and copies: whether one may start, the jobs under way, and what a finished
one answers.

The store starts moving an object's pages (migrate, follow-readers, an interleaved
create), copying it to other nodes (replicate), or moving freed pages back home before the
memory is reused; the coordinator's page mover does the I/O and calls
:meth:`Store.placed` with the job's token. Each job is one of the records here, kept by
token in :class:`Placements` until then. The functions here decide (may these pages move,
does the target have room, which nodes still want a copy, what the client is told when the
job ends); the store applies the decisions. This module never starts I/O, frees memory,
changes an object's state or answers a client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plasma.errors import BadRequest, ObjectNotFound, PlasmaError, StoreFull
from plasma.store.objects import READABLE, Io, State

if TYPE_CHECKING:
    from plasma.store.memory import Segment
    from plasma.store.objects import ObjectRecord


@dataclass(slots=True, eq=False)
class FreedRange:
    """Memory given back: ``size`` bytes at ``offset`` of ``segment``; ``charges`` (bytes
    per node) when some of its pages are on other nodes: moved back before it is reused."""

    segment: Segment
    offset: int
    size: int
    charges: dict[int, int] | None


@dataclass(slots=True, eq=False)
class MoveJob:
    """An object's pages being moved: for a migrate by ``client`` (None: follow-readers)
    or, with ``create``, for its client's interleaved create (answered when placed)."""

    client: int | None
    oid: bytes
    rec: ObjectRecord
    create: bool = False


@dataclass(slots=True, eq=False)
class CopyJob:
    """An object being copied to other nodes for ``client``'s replicate: ``copies`` are
    (node, record of the copy), unsealed until the copy is made."""

    client: int
    oid: bytes
    rec: ObjectRecord
    copies: list[tuple[int, ObjectRecord]]


@dataclass(slots=True, eq=False)
class RehomeJob:
    """Freed memory whose pages are being moved back to their segment's node."""

    freed: FreedRange
    client: None = None


PlaceJob = MoveJob | CopyJob | RehomeJob


class Placements:
    """The page moves and copies under way, by token."""

    __slots__ = ("jobs",)

    def __init__(self) -> None:
        self.jobs: dict[int, PlaceJob] = {}

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, token: int, job: PlaceJob) -> None:
        self.jobs[token] = job

    def pop(self, token: int) -> PlaceJob:
        """The job ``token`` names, which has ended."""
        return self.jobs.pop(token)

    def check_client(self, client: int, most: int) -> None:
        """A client has at most ``most`` page moves under way (BadRequest past that)."""
        if sum(1 for job in self.jobs.values() if job.client == client) >= most:
            raise BadRequest(f"client {client} already has {most} page moves under way")


def check_movable(oid: bytes, rec: ObjectRecord | None, segments: Mapping[int, Segment]) -> None:
    """Refuse to move or copy the pages of ``oid`` (its record, None if absent) unless it is
    a sealed object in memory, in a NUMA segment (not a file-backed one of ``segments``),
    with no I/O on it and not being evicted."""
    if rec is None or rec.state not in READABLE:
        raise ObjectNotFound(f"object {oid.hex()} not found (or not sealed)")
    if rec.state is State.SPILLED:
        raise BadRequest(f"object {oid.hex()} is spilled to disk: get it first")
    if segments[rec.loc.segment].fallback:
        raise BadRequest(f"object {oid.hex()} is in a file-backed fallback segment")
    if rec.io is not Io.NONE:
        raise BadRequest(f"object {oid.hex()} is being moved or written already")
    if rec.state is State.EVICTING:
        raise BadRequest(f"object {oid.hex()} is being evicted: get it first to keep it")


def check_room(
    oid: bytes, old: dict[int, int], new: dict[int, int], room_of: Callable[[int], int]
) -> None:
    """Moving an object's pages charges ``new`` (bytes per node) instead of ``old``: StoreFull
    unless each node's ``room_of`` (what its budget leaves for segments), with what the
    object already charges it, holds its new share."""
    for n, nbytes in new.items():
        room = room_of(n) + old.get(n, 0)
        if nbytes > room:
            raise StoreFull(
                f"node {n} has no room for {nbytes} bytes of object {oid.hex()} "
                f"({room} bytes of its budget are free)"
            )


def copies_wanted(nodes: Iterable[int], home: int, replicas: Iterable[int]) -> list[int]:
    """The nodes of ``nodes`` that still want a copy of an object whose pages are on
    ``home`` and that has copies on ``replicas``, in order."""
    have = {home, *replicas}
    return [n for n in sorted(set(nodes)) if n not in have]


def moved_answer(
    oid: bytes, nodes: list[int], error: str | None, present: bool
) -> list[int] | PlasmaError:
    """What a migrate is answered when its pages moved (or failed to): the nodes they are
    on, or why not (the move failed, or the object was deleted meanwhile)."""
    if error is not None:
        return PlasmaError(f"moving {oid.hex()} failed: {error}")
    if not present:
        return ObjectNotFound(f"object {oid.hex()} was deleted while moving")
    return nodes


def copied_answer(
    oid: bytes, nodes: list[int], error: str | None, alive: bool
) -> list[int] | PlasmaError:
    """What a replicate is answered when its copies were made (or not): the nodes with a
    copy, or why none was kept."""
    if error is not None:
        return PlasmaError(f"copying {oid.hex()} failed: {error}")
    if not alive:
        return ObjectNotFound(f"object {oid.hex()} was deleted while being copied")
    return nodes
