"""The directory fast path of a get (internal): one object read and pinned with no request.

It owns the read-pin-re-read sequence against the coordinator's shared directory and this
client's pin table, and nothing else: it never builds views, keeps references, sends
anything or takes a lock (its caller, :meth:`ClientCore.take_pinned`, holds the one that
keeps the directory's maps in place). Its signature is kept narrow (a reader, a pin table,
the mapped segments, an id, a node) so that a native implementation can replace it alone.
"""

from __future__ import annotations

from collections.abc import Container

from plasma.directory import REPLICA, DirectoryReader, Found, PinTable
from plasma.ids import replica_id

__all__ = ["pin_from_directory"]


def pin_from_directory(
    reader: DirectoryReader,
    pins: PinTable,
    mapped: Container[int],
    oid: bytes,
    node: int | None,
) -> tuple[Found, int] | None:
    """The sealed object ``oid`` (its copy on ``node`` if there is one) found in the
    directory, in a segment in ``mapped``, and pinned: ``(found, pin index)``; None when
    the directory cannot serve it (ask the coordinator).

    The pin is written between a consistent read of the object's slot and a re-read of its
    sequence word; unchanged, the object was not marked dying before the pin could be seen,
    so the coordinator's scan (a grace period after any mark) sees the pin."""
    found = None
    if node is not None and reader.replicas:
        found = reader.lookup(replica_id(oid, node), REPLICA)
    if found is None:
        found = reader.lookup(oid)
    if found is None or found.location.segment not in mapped:
        return None
    index = pins.pin(found.generation)
    if index is None:
        return None  # the pin table is full
    if not reader.unchanged(found):
        pins.unpin(index)
        return None
    return found, index
