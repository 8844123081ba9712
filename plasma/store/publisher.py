"""The store's side of the shared directory: publishing sealed objects, marking their slots
dying or sealed, unpublishing them, and rebuilding the directory when it fills.

Readers find sealed objects in the directory and pin them with no request (see
:mod:`plasma.directory` for the layout and the seqlock). :class:`Publisher` owns the
directory the store writes, its access bytes (CLOCK's reference bits, set by readers), the
generations pins name, and every published record until it is freed (a rebuilt directory
may have no slot for some: ``slot`` -1, their generation still honoured). It writes slots
only as the store tells it; it never decides an object's life, frees memory or scans pins.

A published record with a slot is kept by its slot in the
:class:`~plasma.store.slots.SlotTable` (its id is the slot's; an idle object kept with no
record has none there, and is made one again when asked for: :mod:`plasma.store.table`),
and found from its generation through a
:class:`~plasma.store.generations.GenerationIndex`; only the rare ones a rebuild left without
a slot are in a dict (:attr:`Publisher.slotless`). The store's own lookups by id go through
a reader of the directory (:meth:`Publisher.lookup`). A rebuild moves what is kept by slot
(the slot table's columns and rings, the access bytes, the index) with a C call each
(:func:`~plasma.store.slots.scatter`, :func:`~plasma.store.slots.relink`), and touches in
Python only the objects that have a record.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any

from plasma._native import native
from plasma.directory import (
    DYING,
    Directory,
    DirectoryReader,
    Found,
    GenerationSource,
    directory_size,
    rebuilt_capacity,
)
from plasma.errors import PlasmaError
from plasma.store.generations import GenerationIndex
from plasma.store.slots import SlotTable, scatter

if TYPE_CHECKING:
    from plasma.store.directory_memory import DirectoryMemory
    from plasma.store.objects import ObjectRecord

REBUILD_ATTEMPTS = 4  # directory sizes tried (doubling) before leaving a published id out


def _reader(buf: Any) -> Any:
    """A reader of the directory in ``buf`` for the store's own lookups (the C one when
    built: the store reads its own writes, so either is consistent)."""
    return DirectoryReader(buf) if native is None else native.Reader(buf)


class Publisher:
    """The directory the store publishes sealed objects in (see the module docstring)."""

    def __init__(self, memory: DirectoryMemory, capacity: int) -> None:
        self._memory = memory
        self._min_capacity = capacity
        buf, access = memory.new_directory(directory_size(capacity), capacity)
        self.directory = Directory(buf, capacity)
        self._reader = _reader(buf)  # (the store's own lookups: no access bytes set)
        self.access = access  # by slot: nonzero once a reader read the object
        self.buffers: tuple[Any, Any] = (buf, access)  # what readers map
        self.rebuilds = 0
        self._generations = GenerationSource()
        self._replicas = False  # whether readers were told copies exist
        # every published record until it is freed: by slot, found by generation (_index);
        # those a rebuild left without a slot by generation -> (id, record)
        self.slots = SlotTable(capacity, self._id_of)  # (its records, and the CLOCK rings)
        self._index = GenerationIndex()
        self.slotless: dict[int, tuple[bytes, ObjectRecord]] = {}

    def publish(self, oid: bytes, rec: ObjectRecord, flags: int = 0) -> bool:
        """Put a newly sealed object (``flags`` REPLICA: a copy) in the directory, with a new
        generation (none when no slot is found: it is then served by requests only).
        True when the directory was rebuilt first (it was full): readers must be told."""
        rebuilt = self.directory.full() and self._rebuild()
        gen = self._generations.next()
        rec.slot = slot = self.directory.insert(oid, gen, rec.loc, flags)
        if slot >= 0:
            rec.gen = gen
            self.slots.records[slot] = rec
            self._index.add(gen, slot)
        return rebuilt

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_reader"]  # (a C reader holds an export of the buffer: made anew)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reader = _reader(self.buffers[0])

    def _id_of(self, slot: int) -> bytes:
        return self.directory.id(slot)

    def find(self, gen: int) -> tuple[bytes, ObjectRecord] | None:
        """The id and record published under generation ``gen`` (until it is freed; a
        compact object's is materialized)."""
        slot = self._index.slot(gen)
        if slot < 0:
            return self.slotless.get(gen)
        rec = self.slots.record(slot)
        assert rec.gen == gen
        return self.directory.id(slot), rec

    def published_id(self, gen: int) -> bytes | None:
        """The id published under generation ``gen`` (until it is freed), with no record
        made for a compact object."""
        slot = self._index.slot(gen)
        if slot < 0:
            published = self.slotless.get(gen)
            return None if published is None else published[0]
        return self.directory.id(slot)

    def lookup(self, oid: bytes) -> Found | None:
        """``oid``'s slot (not a copy's) as read, if it is published and reads sealed."""
        found: Found | None = self._reader.lookup(oid)
        return found

    def compact_ids(self) -> list[bytes]:
        """The ids of the sealed objects (not copies) published with no record."""
        return self.directory.unrecorded_ids(self.slots.recorded())

    def announce_replicas(self) -> None:
        """Readers look for copies on their node from now on."""
        if not self._replicas:
            self.directory.announce_replicas()
            self._replicas = True

    def set_state(self, rec: ObjectRecord, state: int) -> None:
        """``rec``'s slot (if it has one) reads ``state`` (SEALED or DYING) from now on."""
        if rec.slot >= 0 and (state != DYING or self.directory.state(rec.slot) != DYING):
            self.directory.set_state(rec.slot, state)

    def unpublish(self, rec: ObjectRecord) -> None:
        """``rec`` is freed: its slot and generation go."""
        if rec.slot >= 0:
            if (
                self._index.remove(rec.gen) != rec.slot
                or self.slots.records.get(rec.slot) is not rec
                or self.slots.linked(rec.slot)
            ):
                raise AssertionError(f"slot {rec.slot} is not generation {rec.gen:#x}'s alone")
            del self.slots.records[rec.slot]
            self.directory.remove(rec.slot)
            rec.slot = -1
        else:
            del self.slotless[rec.gen]
        rec.gen = 0

    def stats(self) -> dict[str, int]:
        d = self.directory
        return {
            "capacity": d.capacity,
            "objects": d.live,
            "tombstones": d.tombstones,
            "rebuilds": self.rebuilds,
        }

    def _rebuild(self) -> bool:
        """Move the directory's objects into a new one, at most half full, and mark the old
        one superseded (readers fall back to requests until they map the new one). A
        published object that does not fit keeps its generation (``slot`` -1), so pins on
        it are still honoured. When no memory is to be had, the old one stays (False)."""
        old = self.directory
        old_slots = self._index.slot_array()  # (in the order they were published)
        capacity = rebuilt_capacity(old.live, max(old.capacity // 2, self._min_capacity))
        for attempt in range(REBUILD_ATTEMPTS):
            try:
                buf, access = self._memory.new_directory(directory_size(capacity), capacity)
            except PlasmaError:
                return False
            new = Directory(buf, capacity)
            if self._replicas:
                new.announce_replicas()
            slots = new.copy_from(old, old_slots)
            if new.live == len(slots) or attempt == REBUILD_ATTEMPTS - 1:
                break
            self._memory.free_directory(buf, access)
            capacity *= 2
        if new.live < len(slots):  # (compact objects left without a slot: slotless records)
            for old_slot, slot in zip(old_slots, slots, strict=True):
                if slot < 0 and old_slot not in self.slots.records:
                    self.slots.materialize(old_slot)
        new_of_old = array("q", [-1]) * old.capacity
        scatter(new_of_old, slots, old_slots)
        with memoryview(self.access) as whole, whole[: old.capacity] as old_access:
            scatter(access, old_access, new_of_old)
        for old_slot, rec in self.slots.records.items():
            rec.slot = slot = new_of_old[old_slot]
            if slot < 0:
                self.slotless[rec.gen] = (old.id(old_slot), rec)
        self.slots.move(capacity, new_of_old, old.id)
        self._index.move(new_of_old)
        old.supersede()
        self._reader = _reader(buf)  # (the old one's export of the buffer ends here)
        self._memory.free_directory(*self.buffers)
        self.directory, self.access = new, access
        self.buffers = (buf, access)
        self.rebuilds += 1
        return True
