"""What the store asks of its caller: answers to clients, messages for them, and I/O to do.

The store is sans-I/O: each operation returns at once, and what must happen next (a reply
to a waiting request, a message to a client, bytes to write, read or move) is an event the
coordinator takes with :meth:`Store.drain_events` and carries out. Events are plain
records; this module must never import the store (the store builds them, the coordinator
reads them). Their names are the store's, never a protocol message's: a ``GetDone`` is
answered with a protocol ``Got``, a ``ReplicateDone`` with a ``Replicated``.
"""

from __future__ import annotations

import msgspec

from plasma.errors import PlasmaError
from plasma.records import ObjectLocation, SpillEntry


class Pending(msgspec.Struct, gc=False):
    """An operation that completes later with an event carrying the same ``token``."""

    token: int


class GetDone(msgspec.Struct, gc=False):
    """A waiting get finished: per id a location (reference taken) or an error code."""

    client: int
    token: int
    results: list[ObjectLocation | str]


class Grant(msgspec.Struct, gc=False):
    """An arena: ``size`` bytes at ``offset`` of ``segment``, named ``grant`` (unique for the
    life of the store: a late return or seal of an arena given back names no other one)."""

    segment: int
    offset: int
    size: int
    grant: int


class CreateDone(msgspec.Struct):
    """A pending create finished: the locations (creator holds a reference) or the error."""

    client: int
    token: int
    # the objects' locations, or for a waiting arena request its grant
    result: list[ObjectLocation] | Grant | PlasmaError


class Notify(msgspec.Struct, gc=False):
    """For a subscriber: ``kind`` is "sealed" or "deleted" (deleted or evicted).

    ``location`` is set on "sealed" for ``with_locations`` subscribers, who then hold a
    reference to the object and must release it.
    """

    client: int
    kind: str
    oid: bytes
    data_size: int
    metadata_size: int
    location: ObjectLocation | None = None


class Revoke(msgspec.Struct, gc=False):
    """For a client holding a reference to an object whose delete waits for it: release the
    reference as soon as it is not in use (clients cache released objects for quick gets)."""

    client: int
    oid: bytes


class AskReclaim(msgspec.Struct, gc=False):
    """For a client holding an arena tail or references a create could use: return the
    arena (``return_arena``) and release the references it only caches."""

    client: int


class DirectoryMoved(msgspec.Struct, gc=False):
    """The directory was rebuilt (the old one reads superseded): clients that find theirs
    superseded ask for the new one (:meth:`DirectoryMemory.new_directory`'s latest)."""

    client: int = 0


class SegmentFreed(msgspec.Struct, gc=False):
    """Segment ``segment`` is gone (its memory given back): clients may unmap it."""

    segment: int


class Restore(msgspec.Struct, gc=False):
    """Read spilled object ``oid`` (``entry`` of spill file ``file``) into ``location``, then
    call :meth:`Store.restored` with ``token``."""

    token: int
    oid: bytes
    location: ObjectLocation
    file: int
    entry: SpillEntry


class SpillDead(msgspec.Struct, gc=False):
    """``entry`` of spill file ``file`` is deleted: mark it dead there, or remove the file
    when ``empty`` (nothing in it lives on)."""

    file: int
    entry: SpillEntry | None  # None: a file found with nothing live at start
    empty: bool


class Place(msgspec.Struct, gc=False):
    """Move the pages of ``[start, start + length)`` of ``segment`` (and set its policy):
    ``mode`` "interleave" across ``nodes``, or "bind" to ``nodes[0]``; then call
    :meth:`Store.placed` with ``token``."""

    token: int
    segment: int
    start: int
    length: int
    mode: str
    nodes: list[int]


class Copy(msgspec.Struct, gc=False):
    """Copy ``length`` bytes at ``offset`` of ``segment`` to each of ``targets`` (the
    copies of a replicate request), then call :meth:`Store.placed` with ``token``."""

    token: int
    segment: int
    offset: int
    length: int
    targets: list[ObjectLocation]


class ReplicateDone(msgspec.Struct, gc=False):
    """A replicate request's answer: the nodes with a copy of the object, or an error."""

    client: int
    token: int
    result: list[int] | PlasmaError


class MigrateDone(msgspec.Struct, gc=False):
    """A migrate request's answer: the object's pages are on ``result`` (nodes) now, or an
    error."""

    client: int
    token: int
    result: list[int] | PlasmaError


Event = (
    GetDone
    | CreateDone
    | Notify
    | Revoke
    | AskReclaim
    | DirectoryMoved
    | SegmentFreed
    | Restore
    | SpillDead
    | Place
    | MigrateDone
    | Copy
    | ReplicateDone
)
