"""Error codes shared by the wire protocol, the store and the clients.

Every failure that crosses the socket is an ``Error{seq, code, message}`` reply whose
``code`` is one of the stable strings below; clients raise the matching exception class.
:class:`Disconnected` is the one exception the clients raise themselves, never sent as a
reply: the connection is gone. Every class is a :class:`PlasmaError`; most are also the
builtin exception they refine (``KeyError``, ``MemoryError``, ``TimeoutError``, ...).
"""

from __future__ import annotations

OBJECT_EXISTS = "object_exists"
OBJECT_NOT_FOUND = "object_not_found"
OBJECT_NOT_SEALED = "object_not_sealed"
STORE_FULL = "store_full"
TIMEOUT = "timeout"
PLACEMENT_IMPOSSIBLE = "placement_impossible"
BAD_REQUEST = "bad_request"
PERMISSION_DENIED = "permission_denied"
UNSUPPORTED = "unsupported"
OBJECT_LOST = "object_lost"
IO_ERROR = "io_error"
DISCONNECTED = "disconnected"  # raised by the clients; never an Error reply's code

__all__ = [
    "BAD_REQUEST",
    "DISCONNECTED",
    "IO_ERROR",
    "OBJECT_EXISTS",
    "OBJECT_LOST",
    "OBJECT_NOT_FOUND",
    "OBJECT_NOT_SEALED",
    "PERMISSION_DENIED",
    "PLACEMENT_IMPOSSIBLE",
    "STORE_FULL",
    "TIMEOUT",
    "UNSUPPORTED",
    "BadRequest",
    "Disconnected",
    "ObjectExists",
    "ObjectLost",
    "ObjectNotFound",
    "ObjectNotSealed",
    "PermissionDenied",
    "PlacementImpossible",
    "PlasmaError",
    "PlasmaTimeout",
    "SpillIOError",
    "StoreFull",
    "Unsupported",
    "error_for",
]


class PlasmaError(Exception):
    """Base class of every plasma-coord error; ``code`` is the stable wire code.

    Catch it to handle any failure of the store. Raised as itself for an ``Error`` reply
    whose code this client does not know (a newer coordinator's), for a reply the client
    cannot use (a segment that arrived without its file descriptor), and when a
    subscription ends because the client fell behind.
    """

    code: str = BAD_REQUEST

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class ObjectExists(PlasmaError):
    """An object with this id is already in the store (sealed or not): raised by ``create``,
    ``put``, ``create_and_seal`` and their batch forms."""

    code = OBJECT_EXISTS


class ObjectNotFound(PlasmaError, KeyError):
    """No such object: ``get`` with timeout 0 of an id never created (or deleted), ``seal``
    or ``abort`` of an unknown id, ``release`` of an object this client holds no reference
    to."""

    code = OBJECT_NOT_FOUND

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class ObjectNotSealed(PlasmaError):
    """The object exists but is not sealed yet: ``get`` with timeout 0, or ``release`` of an
    object still being written (seal or abort it instead)."""

    code = OBJECT_NOT_SEALED


class StoreFull(PlasmaError, MemoryError):
    """No room for the object (or arena) on its node, even after evicting every sealed
    unreferenced object and waiting up to the create's ``timeout``: the node's budget is
    used, or too small for it, or its segments cannot be allocated (e.g. hugepages ran out)."""

    code = STORE_FULL


class ObjectLost(PlasmaError, KeyError):
    """``get`` of an object the store had spilled to disk (``serve --spill-dir``) whose copy
    is gone (its file was removed) or damaged (fails its checksum): the object is dropped;
    other objects are not affected."""

    code = OBJECT_LOST

    def __str__(self) -> str:
        return self.message


class SpillIOError(PlasmaError, OSError):
    """``get`` of a spilled object whose file could not be read just now (an I/O error
    other than its loss): the object stays on disk and a later get may succeed."""

    code = IO_ERROR


class PlasmaTimeout(PlasmaError, TimeoutError):
    """A wait ran out: ``get`` of an object not sealed within its ``timeout``, or a
    subscription's ``next(timeout)`` with no notification in time."""

    code = TIMEOUT


class PlacementImpossible(PlasmaError):
    """The requested placement cannot be met: ``node`` names no NUMA node of the store, or a
    placement policy finds no CPUs and memory node that satisfy the request."""

    code = PLACEMENT_IMPOSSIBLE


class BadRequest(PlasmaError, ValueError):
    """An invalid argument or request: a malformed frame, a negative size, a timeout that is
    not None or finite seconds >= 0, an object too large, sealing another client's object."""

    code = BAD_REQUEST


class PermissionDenied(PlasmaError, PermissionError):
    """Not allowed: the coordinator refused this client's uid (see ``serve --allow-uid``), a
    write by a read-only uid, or running tasks as another user than the coordinator's; or
    reserving hugepages without root."""

    code = PERMISSION_DENIED


class Unsupported(PlasmaError, OSError):
    """This machine, kernel or build lacks what the call needs (a syscall, hugepages, a NUMA
    interface, a pyarrow.plasma feature plasma-coord does not offer); the message says what."""

    code = UNSUPPORTED


class Disconnected(PlasmaError, ConnectionError):
    """The connection to the coordinator is gone or was refused: raised by every client call
    once the coordinator closed the connection, the socket broke, or the client was closed;
    the message says which."""

    code = DISCONNECTED


_BY_CODE: dict[str, type[PlasmaError]] = {
    cls.code: cls
    for cls in (
        ObjectExists,
        ObjectNotFound,
        ObjectNotSealed,
        ObjectLost,
        SpillIOError,
        StoreFull,
        PlasmaTimeout,
        PlacementImpossible,
        BadRequest,
        PermissionDenied,
        Unsupported,
        Disconnected,
    )
}


def error_for(code: str, message: str) -> PlasmaError:
    """The exception instance a client raises for a wire ``Error`` reply."""
    return _BY_CODE.get(code, PlasmaError)(message)
