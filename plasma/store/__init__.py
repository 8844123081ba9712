"""The object store (internal, sans-I/O): the :class:`Store` façade and what it hands back.

One concern a module (see each module's docstring for what it owns and must never do):

* :mod:`~plasma.store.facade`: :class:`Store`, the API the coordinator calls; it owns the
  clients and subscriptions and applies the decisions the parts below return.
* :mod:`~plasma.store.events`: what the store asks of its caller (answers, messages, I/O).

The coordinator imports from here, never from the modules themselves.
"""

from plasma.store.events import (
    AskReclaim,
    Copy,
    CreateDone,
    DirectoryMoved,
    Event,
    GetDone,
    Grant,
    MigrateDone,
    Notify,
    Pending,
    Place,
    ReplicateDone,
    Restore,
    Revoke,
    SegmentFreed,
    SpillDead,
)
from plasma.store.facade import (
    IO_ERROR,
    NOT_FOUND,
    OBJECT_LOST,
    PIN_RESCAN,
    PIN_RESCAN_MAX,
    SPILL_MAX_OBJECTS,
    UNPIN_INTERVAL,
    DirectoryMemory,
    LocalDirectoryMemory,
    SegmentProvider,
    Store,
)

__all__ = [
    "IO_ERROR",
    "NOT_FOUND",
    "OBJECT_LOST",
    "PIN_RESCAN",
    "PIN_RESCAN_MAX",
    "SPILL_MAX_OBJECTS",
    "UNPIN_INTERVAL",
    "AskReclaim",
    "Copy",
    "CreateDone",
    "DirectoryMemory",
    "DirectoryMoved",
    "Event",
    "GetDone",
    "Grant",
    "LocalDirectoryMemory",
    "MigrateDone",
    "Notify",
    "Pending",
    "Place",
    "ReplicateDone",
    "Restore",
    "Revoke",
    "SegmentFreed",
    "SegmentProvider",
    "SpillDead",
    "Store",
]
