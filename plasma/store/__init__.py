"""The object store (internal, sans-I/O): the :class:`Store` façade and what it hands back.

One concern a module (see each module's docstring for what it owns and must never do):

* :mod:`~plasma.store.facade`: :class:`Store`, the API the coordinator calls; it owns the
  clients and subscriptions and applies the decisions the parts below return.
* :mod:`~plasma.store.objects`: an object's record, its state and I/O enums, and the one
  transition table that changes them.
* :mod:`~plasma.store.table`: the object table, id -> record, with no record kept for an
  idle object (its directory slot and the slot table hold it; made a record when touched).
* :mod:`~plasma.store.spilled`: the idle spilled objects, with no record either (their
  ids, sizes, times and places in spill files in arrays, found through a hash table).
* :mod:`~plasma.store.memory`: node budgets, segments, fallback files, the charges of pages
  moved to other nodes (:mod:`~plasma.store.pages`: page and alignment arithmetic).
* :mod:`~plasma.store.eviction`: each node's CLOCK ring, and the victims that make room.
* :mod:`~plasma.store.spill`: the books of spilling (files, batches, restores, figures).
* :mod:`~plasma.store.waiters`: waiting gets and creates (the two request queues), deadlines.
* :mod:`~plasma.store.clients`, :mod:`~plasma.store.arenas`:
  what the store keeps per client and per arena.
* :mod:`~plasma.store.publisher`: the directory readers find sealed objects in (publish,
  mark dying or sealed, unpublish, rebuild).
* :mod:`~plasma.store.slots`, :mod:`~plasma.store.generations`: what the publisher keeps
  beside the directory, with no Python object per object: the record in each slot (None
  for an idle one), its CLOCK ring links and an idle object's other fields (arrays by
  slot), and generation -> slot (sorted arrays).
* :mod:`~plasma.store.dying`: what waits for a scan of the pin tables, and when to scan.
* :mod:`~plasma.store.moves`: page moves and copies under way (dataclass jobs).
* :mod:`~plasma.store.holders`: who holds memory (per client and in all).
* :mod:`~plasma.store.directory_memory`: where the directory's shared memory comes from.
* :mod:`~plasma.store.events`: what the store asks of its caller (answers, messages, I/O).

The coordinator imports from here, never from the modules themselves.
"""

from plasma.store.directory_memory import DirectoryMemory, LocalDirectoryMemory
from plasma.store.dying import PIN_RESCAN, PIN_RESCAN_MAX, UNPIN_INTERVAL
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
    SPILL_MAX_OBJECTS,
    Store,
)
from plasma.store.memory import SegmentProvider

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
