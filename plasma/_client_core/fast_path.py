"""The directory fast path of a get (internal): one object read and pinned with no request.

It owns the read-pin-re-read sequence against the coordinator's shared directory and this
client's pin table, and nothing else: it never builds views, keeps references, sends
anything or takes a lock (its caller, :meth:`ClientCore.take_pinned`, holds the one that
keeps the directory's maps in place).

Two implementations, one signature: the C one (:mod:`plasma._native`, C11 acquire loads and
release stores, so it is safe on any CPU) and the Python one below (plain loads and stores:
safe only where the CPU keeps them in order, x86-64). :data:`READ_PATH` is the one clients
use; :func:`fallback_warning` is the line a client prints at connect when it is not the C
one.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Container
from typing import Any, NamedTuple, Protocol

from plasma._native import native, unavailable
from plasma.directory import ORDERED_MEMORY, REPLICA, DirectoryReader, Found, PinTable
from plasma.ids import replica_id
from plasma.records import ObjectLocation

__all__ = [
    "NATIVE",
    "PYTHON",
    "READ_PATH",
    "Read",
    "ReadPath",
    "client_lock",
    "fallback_warning",
    "pin_from_directory",
]


class Read(Protocol):
    """A consistent read of a sealed object's slot, by either read path."""

    @property
    def slot(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def location(self) -> ObjectLocation: ...


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


class ReadPath(NamedTuple):
    """One implementation of the fast path: a reader of the directory (its map, the access
    bytes' map or None), a pin table (its map), the get over them, and what makes an
    object's views (``views(segment map, offset, data size, metadata size, done, key)``,
    calling ``done(key)`` when both are gone; None: numpy arrays own them), and the C half
    of a client's references (``Getter``, see :class:`~plasma._client_core.refs.Refs`; None:
    there is none) with the lock it takes (a ``threading.RLock`` for the Python one)."""

    name: str
    reader: Callable[[Any, Any], Any]
    pins: Callable[[Any], Any]
    pin: Callable[[Any, Any, Container[int], bytes, int | None], tuple[Any, int] | None]
    views: Callable[..., tuple[memoryview, memoryview]] | None
    getter: Callable[..., Any] | None
    lock: Callable[[], Any]


PYTHON = ReadPath(
    "python", DirectoryReader, PinTable, pin_from_directory, None, None, threading.RLock
)
NATIVE = (
    None
    if native is None
    else ReadPath(
        "native",
        native.Reader,
        native.PinTable,
        native.pin_from_directory,
        native.views,
        native.Getter,
        native.RLock,
    )
)
# the C one where it was built, else the Python one where the CPU orders memory, else none
# (every get a request)
READ_PATH: ReadPath | None = NATIVE or (PYTHON if ORDERED_MEMORY else None)


def client_lock() -> Any:
    """A new client core's lock (reentrant: finalizers take it, on any thread): the one the
    read path in use takes (the C one with no call), else a ``threading.RLock``."""
    return READ_PATH.lock() if READ_PATH is not None else threading.RLock()


def fallback_warning() -> str | None:
    """What a client says at connect when the C read path is not in use (None when it is,
    or when it was turned off on purpose with ``PLASMA_COORD_NATIVE=0``)."""
    if unavailable is None:
        return None
    if ORDERED_MEMORY:
        instead = "gets through the object directory run in Python (slower)"
    else:
        instead = f"on this CPU ({platform.machine()}) every get is a request to the coordinator"
    return (
        f"plasma-coord: the native read path is not available ({unavailable}): {instead}; "
        "reinstall with a C compiler and Python's headers (Debian: apt-get install gcc "
        "python3-dev) to build it"
    )
