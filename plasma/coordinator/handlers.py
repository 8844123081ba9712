"""The coordinator's handler table (internal): which function answers which request, and the
one place a request is dispatched.

:data:`HANDLERS` maps every request type of :mod:`plasma.protocol` to its handler (every
legal request, in one screen); :func:`handler_for` adds the one rule of order (``Connect``
first, and only first); :func:`handle` refuses writes to read-only sessions and turns a
handler's :class:`~plasma.errors.PlasmaError` into the client's ``Error``. This module must
never answer a request itself: the handlers do, in the modules they come from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from plasma import errors
from plasma import protocol as p
from plasma.coordinator import handshake, object_requests, runs, stats
from plasma.coordinator.session import Hangup, Session
from plasma.errors import PlasmaError

if TYPE_CHECKING:
    from plasma.coordinator.server import Coordinator

__all__ = ["HANDLERS", "WRITE_REQUESTS", "Handler", "handle", "handler_for"]

log = logging.getLogger("plasma.coordinator")

Handler = Callable[["Coordinator", Session, Any], None]

HANDLERS: dict[type, Handler] = {
    p.Connect: handshake.connect,
    p.Tables: handshake.tables,
    p.Create: object_requests.create,
    p.CreateMany: object_requests.create_many,
    p.Seal: object_requests.seal,
    p.Abort: object_requests.abort,
    p.Get: object_requests.get,
    p.Release: object_requests.release,
    p.Delete: object_requests.delete,
    p.Unpin: object_requests.unpin,
    p.Contains: object_requests.contains,
    p.List: object_requests.list_objects,
    p.Evict: object_requests.evict,
    p.Migrate: object_requests.migrate,
    p.Replicate: object_requests.replicate,
    p.Subscribe: object_requests.subscribe,
    p.Arena: object_requests.arena,
    p.SealArena: object_requests.seal_arena,
    p.ReturnArena: object_requests.return_arena,
    p.Sync: object_requests.sync,
    p.Stats: stats.stats,
    p.RunRegister: runs.run_register,
    p.RunCall: runs.run_call,
    p.RunRespond: runs.run_respond,
    p.TaskRegister: runs.task_register,
    p.TaskDone: runs.task_done,
    p.SubmitSample: runs.submit_sample,
}

# Refused to read-only sessions: everything that creates, changes or removes objects, reserves
# memory, or starts and steers tasks.
WRITE_REQUESTS: frozenset[type] = frozenset(
    {p.Create, p.CreateMany, p.Seal, p.Abort, p.Delete, p.Evict, p.Migrate, p.Replicate}
    | {p.Arena}
    | {p.SealArena}
    | {p.ReturnArena}
    | {p.RunRegister, p.RunCall, p.RunRespond, p.TaskRegister, p.TaskDone, p.SubmitSample}
)


def handler_for(kind: type, *, connected: bool) -> Handler:
    """The handler of a ``kind`` request; :class:`Hangup` for one out of order (anything
    before ``Connect``, ``Connect`` again) or of no known request type."""
    if not connected:
        if kind is not p.Connect:
            raise Hangup(f"the first message must be Connect, got {kind.__name__}")
    elif kind is p.Connect or kind not in HANDLERS:
        raise Hangup(f"unexpected {kind.__name__} after Connect")
    return HANDLERS[kind]


def handle(coord: Coordinator, session: Session, msg: Any) -> None:
    """Answer one request of ``session``. A failure is the client's ``Error``, never the
    coordinator's: only :class:`Hangup` (the session ends) leaves here."""
    kind = type(msg)
    coord.op_counts[kind.__name__] += 1
    handler = handler_for(kind, connected=session.connected)
    try:
        if not session.writable and kind in WRITE_REQUESTS:
            raise errors.PermissionDenied(
                f"uid {session.uid} has read-only access to this store: {kind.__name__} "
                f"refused (grant writes with `serve --allow-uid {session.uid}:rw`)"
            )
        handler(coord, session, msg)
    except Hangup:
        raise
    except PlasmaError as exc:
        coord.error_counts[exc.code] += 1
        session.send(p.Error(seq=msg.seq, code=exc.code, message=exc.message))
    except Exception as exc:  # a bug must not take the whole store down
        log.exception("internal error handling %s", kind.__name__)
        coord.error_counts[errors.BAD_REQUEST] += 1
        session.send(
            p.Error(seq=msg.seq, code=errors.BAD_REQUEST, message=f"internal error: {exc!r}")
        )
