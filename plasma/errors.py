"""Error codes shared by the wire protocol, the store and the clients.

Every failure that crosses the socket is an ``Error{seq, code, message}`` reply whose
``code`` is one of the stable strings below; clients raise the matching exception class.
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


class PlasmaError(Exception):
    """Base class of every plasma-coord error; ``code`` is the stable wire code."""

    code: str = BAD_REQUEST

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class ObjectExists(PlasmaError):
    code = OBJECT_EXISTS


class ObjectNotFound(PlasmaError, KeyError):
    code = OBJECT_NOT_FOUND

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class ObjectNotSealed(PlasmaError):
    code = OBJECT_NOT_SEALED


class StoreFull(PlasmaError, MemoryError):
    code = STORE_FULL


class PlasmaTimeout(PlasmaError, TimeoutError):
    code = TIMEOUT


class PlacementImpossible(PlasmaError):
    code = PLACEMENT_IMPOSSIBLE


class BadRequest(PlasmaError, ValueError):
    code = BAD_REQUEST


class PermissionDenied(PlasmaError, PermissionError):
    code = PERMISSION_DENIED


class Unsupported(PlasmaError, OSError):
    code = UNSUPPORTED


_BY_CODE: dict[str, type[PlasmaError]] = {
    cls.code: cls
    for cls in (
        ObjectExists,
        ObjectNotFound,
        ObjectNotSealed,
        StoreFull,
        PlasmaTimeout,
        PlacementImpossible,
        BadRequest,
        PermissionDenied,
        Unsupported,
    )
}


def error_for(code: str, message: str) -> PlasmaError:
    """The exception instance a client raises for a wire ``Error`` reply."""
    return _BY_CODE.get(code, PlasmaError)(message)
