"""The object table: every object the store lists, by id, with no Python object for the idle.

A store of a million objects holds most of them *idle*: sealed, in memory, published in the
directory, with no reference, pin-scan, I/O, copy or page move under way. Such an object
needs no :class:`~plasma.store.objects.ObjectRecord` of its own (with its location, ints,
key and dict entry, about 450 bytes): the shared directory already holds its id, location
and generation, and the publisher's :class:`~plasma.store.slots.SlotTable` keeps the rest
(creator, create time, construct duration) in arrays by slot. :class:`ObjectTable` keeps a
record only for *busy* objects (unsealed, referenced, dying, with a copy on disk, moving,
copied, restoring or waiting to, or without a directory slot) and for the ``keep_idle``
idle ones touched last; the others are *compact*: found through the directory, made into a
record again (*materialized*) the moment the store touches one, and made compact again
(*demoted*) by :meth:`ObjectTable.settle`. An idle *spilled* object (only on disk, nothing
under way on it, no get waiting for memory to read it back into) is compact the same way,
in the arrays of a :class:`~plasma.store.spilled.SpilledTable`.

Identity is what the store's checks rely on (``table.holds(oid, rec)``, a ring's ``is``
tests): while an object is materialized, every lookup returns the same record. So records are
demoted only in :meth:`~ObjectTable.settle`, which the store calls between two calls of its
own (in ``drain_events``), and only when nothing but the table and the slot table holds
them: every other keeper of a record (the dying set, page moves and copies, spill batches
and restores, copies' records) keeps only busy ones, which are never demoted.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Container, Iterator
from typing import TYPE_CHECKING, Any

from plasma.store.objects import Io, ObjectRecord, State
from plasma.store.spilled import SpilledTable

if TYPE_CHECKING:
    from plasma.directory import Found
    from plasma.records import ObjectLocation
    from plasma.store.publisher import Publisher

__all__ = ["IDLE_RECORDS", "ObjectTable"]

IDLE_RECORDS = 4096  # idle objects' records kept (the most recently touched), by default
# a dict (an OrderedDict) of more bytes than this an entry, and than _SMALL_TABLE, is
# copied into one sized for its entries (twice what a copy takes at most: ~47 B, ~100 B)
_SPARSE_DICT = 96
_SPARSE_ORDERED = 200
_SMALL_TABLE = 64 << 10
SEALED, NO_IO = State.SEALED, Io.NONE


class ObjectTable:
    """Object id -> record, over ``publisher``'s directory (see the module docstring).
    ``alignment`` is the store's (an object's allocated size is its data and metadata
    rounded up to it); ``keep_idle`` records of idle objects stay materialized at most;
    ``restoring`` holds the ids of spilled objects something waits to read back (they stay
    records)."""

    __slots__ = (
        "_busy",
        "_compact",
        "_idle",
        "_mask",
        "_pub",
        "_restoring",
        "_spilled",
        "keep_idle",
        "materialized",
        "materialized_spilled",
    )

    def __init__(
        self,
        publisher: Publisher,
        alignment: int,
        keep_idle: int = IDLE_RECORDS,
        restoring: Container[bytes] = (),
    ):
        if keep_idle < 0:
            raise ValueError(f"keep_idle must not be negative, got {keep_idle}")
        self._busy: dict[bytes, ObjectRecord] = {}  # every materialized record
        self._compact = 0  # sealed objects with no record (idle, in the slot table)
        self._spilled = SpilledTable(alignment)  # spilled objects with no record
        self._restoring = restoring
        # materialized records that may be idle, least recently touched first
        self._idle: OrderedDict[bytes, ObjectRecord] = OrderedDict()
        self._mask = alignment - 1
        self._pub = publisher
        self.keep_idle = keep_idle
        self.materialized = 0  # compact objects made a record of again, so far
        self.materialized_spilled = 0  # ... of them spilled ones
        publisher.slots.materialize = self._materialize_slot

    # ------------------------------------------------------------ the mapping

    def get(self, oid: bytes) -> ObjectRecord | None:
        """``oid``'s record (materialized, if it was compact), or None."""
        rec = self._busy.get(oid)
        if rec is None and self._compact:
            found = self._find(oid)
            if found is not None:
                return self._materialize(oid, found.slot, found.generation, found.location)
        if rec is None and len(self._spilled):
            rec = self._spilled.pop(oid)
            if rec is not None:
                self._busy[oid] = self._idle[oid] = rec
                self.materialized += 1
                self.materialized_spilled += 1
        return rec

    def __getitem__(self, oid: bytes) -> ObjectRecord:
        rec = self.get(oid)
        if rec is None:
            raise KeyError(oid)
        return rec

    def peek(self, oid: bytes) -> ObjectRecord | None:
        """``oid``'s record to read only: a compact object's is made up and not kept (so
        reading a million objects keeps none of them)."""
        rec = self._busy.get(oid)
        if rec is None and self._compact:
            found = self._find(oid)
            if found is not None:
                return self._made(found.slot, found.generation, found.location)
        if rec is None and len(self._spilled):
            return self._spilled.peek(oid)
        return rec

    def busy(self, oid: bytes) -> ObjectRecord | None:
        """``oid``'s record if it has one now (None: a compact object, or unknown)."""
        return self._busy.get(oid)

    def is_compact(self, oid: bytes) -> bool:
        """Whether ``oid`` is an object kept with no record (sealed or spilled, and idle)."""
        return (self._compact > 0 and self._find(oid) is not None) or (
            len(self._spilled) > 0 and oid in self._spilled
        )

    def holds(self, oid: bytes, rec: ObjectRecord) -> bool:
        """Whether ``rec`` (a materialized record) is ``oid``'s record in the table."""
        return self._busy.get(oid) is rec

    def __contains__(self, oid: bytes) -> bool:
        return oid in self._busy or self.is_compact(oid)

    def __setitem__(self, oid: bytes, rec: ObjectRecord) -> None:
        """Add a new object's record (``oid`` must not be in the table)."""
        self._busy[oid] = rec

    def __delitem__(self, oid: bytes) -> None:
        """Remove a materialized record (an object leaves the table)."""
        del self._busy[oid]
        self._idle.pop(oid, None)

    def __len__(self) -> int:
        return len(self._busy) + self._compact + len(self._spilled)

    def __iter__(self) -> Iterator[bytes]:
        yield from list(self._busy)
        if self._compact:
            yield from self._pub.compact_ids()
        if len(self._spilled):
            yield from self._spilled.ids()

    def items(self) -> Iterator[tuple[bytes, ObjectRecord]]:
        """Every ``(id, record)``; compact objects' records made up (to read only)."""
        yield from list(self._busy.items())
        if self._compact:
            yield from self._compact_records()
        if len(self._spilled):
            for oid in self._spilled.ids():
                rec = self._spilled.peek(oid)
                if rec is not None:  # (not touched meanwhile)
                    yield oid, rec

    def values(self) -> Iterator[ObjectRecord]:
        return (rec for _, rec in self.items())

    @property
    def compact(self) -> int:
        """Sealed objects kept with no record now."""
        return self._compact

    @property
    def spilled(self) -> SpilledTable:
        """The spilled objects kept with no record now."""
        return self._spilled

    # ------------------------------------------------------------ idle and busy

    def touched(self, oid: bytes, rec: ObjectRecord) -> None:
        """``rec`` may have become idle (it lost its last reference, its I/O ended, ...): a
        candidate for :meth:`settle`, the most recently touched (a record no longer in the
        table is ignored)."""
        if self._busy.get(oid) is rec:
            idle = self._idle
            idle[oid] = rec
            idle.move_to_end(oid)

    def settle(self) -> int:
        """Demote the idle records beyond the ``keep_idle`` most recently touched (only
        between two calls of the store: see the module docstring); returns how many."""
        idle = self._idle
        busy = self._busy
        demoted = 0
        while len(idle) > self.keep_idle:
            oid, rec = idle.popitem(last=False)
            if busy.get(oid) is not rec:
                continue
            if self._demotable(rec):
                t = self._pub.slots
                slot = rec.slot
                t.owner[slot] = rec.owner
                t.created[slot] = rec.create_time
                t.construct[slot] = rec.construct_duration
                del t.records[slot]
                del busy[oid]
                self._compact += 1
                demoted += 1
            elif self._spilled_idle(oid, rec) and self._spilled.add(oid, rec):
                del busy[oid]
                demoted += 1
        if demoted:
            self._shrink()
        return demoted

    def _shrink(self) -> None:
        """Copy a dict of records that keeps a hash table much larger than its entries need
        (Python's dicts do not shrink as entries go: the table of a burst of records, such
        as a seal of many objects, stays until the dict grows again). A copy is sized for
        its entries; it is made only once at least half of them went since the table was
        that size, so copying costs O(1) per record."""
        if _oversized(self._busy, _SPARSE_DICT):
            self._busy = dict(self._busy)
        if _oversized(self._idle, _SPARSE_ORDERED):
            self._idle = OrderedDict(self._idle)
        slots = self._pub.slots
        if _oversized(slots.records, _SPARSE_DICT):
            slots.records = dict(slots.records)

    def _demotable(self, rec: ObjectRecord) -> bool:
        """Idle, and all of it kept by the directory slot and the slot table."""
        slot = rec.slot
        if not (
            rec.state is State.SEALED
            and rec.io is Io.NONE
            and rec.ref_count == 0
            and slot >= 0
            and rec.spill is None
            and rec.pages_on is None
            and not rec.replicas
            and self._pub.slots.records.get(slot) is rec
            and -(2**31) <= rec.owner < 2**31
        ):
            return False
        return rec.size == self._size(rec.loc)

    def _spilled_idle(self, oid: bytes, rec: ObjectRecord) -> bool:
        """Only on disk, with nothing under way or waiting on it, and kept by nothing else."""
        return (
            rec.state is State.SPILLED
            and rec.io is Io.NONE
            and rec.ref_count == 0
            and rec.slot < 0
            and not rec.gen
            and rec.pages_on is None
            and not rec.replicas
            and oid not in self._restoring
        )

    def _size(self, loc: ObjectLocation) -> int:
        """The allocated size of an object at ``loc`` made with no page alignment: its data
        and metadata (at least 1 byte) rounded up to the store's alignment."""
        mask = self._mask
        return ((loc.data_size + loc.metadata_size or 1) + mask) & ~mask

    # ------------------------------------------------------------ compact objects

    def _find(self, oid: bytes) -> Found | None:
        """Compact object ``oid``'s slot as read (None: not compact: busy or unknown)."""
        found = self._pub.lookup(oid)
        if found is not None and found.slot in self._pub.slots.records:
            # (a sealed object's slot with a record: the record is in the table)
            raise AssertionError(f"slot {found.slot} of {oid.hex()} has a record the table lacks")
        return found

    def _made(self, slot: int, gen: int, loc: ObjectLocation) -> ObjectRecord:
        """A record of the compact object published at ``slot`` (not kept)."""
        t = self._pub.slots
        return ObjectRecord(
            loc, self._size(loc), t.owner[slot], t.created[slot], SEALED, NO_IO, 0, 0,
            t.construct[slot], slot, gen,
        )  # fmt: skip

    def _materialize_slot(self, slot: int) -> ObjectRecord:
        oid, gen, loc, _ = self._pub.directory.entry(slot)
        return self._materialize(oid, slot, gen, loc)

    def _materialize(self, oid: bytes, slot: int, gen: int, loc: ObjectLocation) -> ObjectRecord:
        """Make compact object ``oid``'s record, kept from now on (until demoted)."""
        rec = self._made(slot, gen, loc)
        self._pub.slots.records[slot] = rec
        self._busy[oid] = rec
        self._compact -= 1
        self.materialized += 1
        self._idle[oid] = rec  # (a candidate: a compact object's id is not in _idle)
        return rec

    def _compact_records(self) -> Iterator[tuple[bytes, ObjectRecord]]:
        """Every compact object's id and a record of it (not kept)."""
        for oid in self._pub.compact_ids():
            found = self._find(oid)
            assert found is not None
            yield oid, self._made(found.slot, found.generation, found.location)


def _oversized(table: dict[Any, Any], per_entry: int) -> bool:
    """Whether ``table`` takes over ``per_entry`` bytes an entry (and more than a small
    table's bytes)."""
    return sys.getsizeof(table) > per_entry * len(table) + _SMALL_TABLE
