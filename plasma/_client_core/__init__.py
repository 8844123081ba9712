"""The client core (internal): one sans-I/O state machine that both clients drive.

See :mod:`plasma._client_core.core`. The names here are what the clients and the tests
import; they are re-exported from the modules that own them.
"""

from plasma._client_core.core import (
    ARENA_OBJECT_LIMIT,
    ARENA_OBJECTS,
    ARENA_SIZE,
    EXCLUSIVE,
    HANGUP_CHECK_INTERVAL,
    POLL,
    Action,
    Arena,
    Call,
    ClientCore,
    ManyItem,
    Node,
    ObjectRef,
    Op,
    PendingGet,
    Plain,
    Send,
    check_timeout,
    many_items,
    placement,
)
from plasma._client_core.outbox import IDS_PER_FRAME, checked_frame, chunks
from plasma._client_core.refs import RELEASE_DELAY, RELEASE_DELAY_BYTES

__all__ = [
    "ARENA_OBJECTS",
    "ARENA_OBJECT_LIMIT",
    "ARENA_SIZE",
    "EXCLUSIVE",
    "HANGUP_CHECK_INTERVAL",
    "IDS_PER_FRAME",
    "POLL",
    "RELEASE_DELAY",
    "RELEASE_DELAY_BYTES",
    "Action",
    "Arena",
    "Call",
    "ClientCore",
    "ManyItem",
    "Node",
    "ObjectRef",
    "Op",
    "PendingGet",
    "Plain",
    "Send",
    "check_timeout",
    "checked_frame",
    "chunks",
    "many_items",
    "placement",
]
