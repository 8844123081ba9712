"""Spilled objects kept with no Python object: their ids and what their records hold, in arrays.

An object only on disk, with nothing under way on it (no restore, no get waiting for
memory to read it back into, no reference), needs little: its id, its sizes, node, creator,
create time and construct duration (what ``list()`` shows) and where its copy is in which
spill file (what a :class:`~plasma.store.events.Restore` reads). As an
:class:`~plasma.store.objects.ObjectRecord` with its location, spill entry, id key and
dict entry that was about 500 bytes; :class:`SpilledTable` keeps it in 62 bytes of arrays
and a slot of an open-addressing hash table (linear probing over 4-byte positions, kept
between 1/3 and 2/3 full). Sizes and offsets take 4 bytes: a spill batch is at most 64 MiB
(or one larger object), so only an object of 4 GiB or more keeps its record.
:class:`~plasma.store.table.ObjectTable` demotes idle spilled records here and makes them
records again (:meth:`SpilledTable.pop`) when the store touches one.

A record that the arrays cannot hold exactly (sizes, offset, file or index out of their
ranges, an entry that disagrees with the record, a node the copy was not written from)
stays a record: :meth:`SpilledTable.add` says so. This module holds numbers only: it
decides nothing.
"""

from __future__ import annotations

from array import array
from typing import Any

from plasma.ids import ID_SIZE
from plasma.records import ObjectLocation, SpillEntry
from plasma.store.objects import Io, ObjectRecord, State
from plasma.store.pages import round_up
from plasma.store.slots import kept_duration

__all__ = ["SpilledTable"]

_MIN_CAPACITY = 64  # hash slots at least (a power of two)
_U32 = 1 << 32
_I32 = 1 << 31
_I16 = 1 << 15


class SpilledTable:
    """Idle spilled objects by id, in arrays (see the module docstring). ``alignment`` is
    the store's: an object's allocated size is its data and metadata rounded up to it."""

    __slots__ = (
        "_alignment",
        "_construct",
        "_crc",
        "_created",
        "_data",
        "_file",
        "_ids",
        "_index",
        "_mask",
        "_meta",
        "_node",
        "_offset",
        "_owner",
        "_slots",
    )

    def __init__(self, alignment: int) -> None:
        self._alignment = alignment
        self._ids = bytearray()  # ID_SIZE bytes a position
        self._file = array("I")  # spill file
        self._index = array("I")  # its entry's position in the file's index
        self._offset = array("I")  # the payload's offset in the file
        self._crc = array("I")
        self._data = array("I")
        self._meta = array("I")
        self._node = array("h")
        self._owner = array("i")
        self._created = array("d")
        self._construct = array("f")
        self._slots = array("i", [-1]) * _MIN_CAPACITY  # hash slot -> position, or -1
        self._mask = _MIN_CAPACITY - 1

    def __len__(self) -> int:
        return len(self._file)

    def __contains__(self, oid: bytes) -> bool:
        return self._slot_of(oid) >= 0

    def nbytes(self) -> int:
        """Bytes the arrays and the hash table take (their lengths, not what is allocated)."""
        columns = (*self._columns(), self._slots)
        return len(self._ids) + sum(a.itemsize * len(a) for a in columns)

    # ------------------------------------------------------------ in and out

    def add(self, oid: bytes, rec: ObjectRecord) -> bool:
        """Keep idle spilled ``rec`` (of ``oid``, not in the table) in the arrays; False
        (nothing kept) when they cannot hold it exactly."""
        if not self._fits(oid, rec):
            return False
        assert rec.spill is not None
        file_id, e = rec.spill
        if 3 * (len(self) + 1) > 2 * len(self._slots):
            self._rehash(2 * len(self._slots))
        pos = len(self)
        self._ids += oid
        self._file.append(file_id)
        self._index.append(e.index)
        self._offset.append(e.offset)
        self._crc.append(e.crc)
        self._data.append(e.data_size)
        self._meta.append(e.metadata_size)
        self._node.append(e.node)
        self._owner.append(rec.owner)
        self._created.append(rec.create_time)
        self._construct.append(rec.construct_duration)
        self._place(oid, pos)
        return True

    def peek(self, oid: bytes) -> ObjectRecord | None:
        """A record of ``oid`` (not kept: the object stays in the table), or None."""
        slot = self._slot_of(oid)
        return None if slot < 0 else self._made(oid, self._slots[slot])

    def pop(self, oid: bytes) -> ObjectRecord | None:
        """``oid``'s record, the object out of the table (None: not in it)."""
        slot = self._slot_of(oid)
        if slot < 0:
            return None
        pos = self._slots[slot]
        rec = self._made(oid, pos)
        self._unlink(slot)
        last = len(self) - 1
        if pos != last:  # the last position fills the hole
            moved = bytes(self._ids[last * ID_SIZE : (last + 1) * ID_SIZE])
            self._slots[self._slot_of(moved)] = pos
            self._ids[pos * ID_SIZE : (pos + 1) * ID_SIZE] = moved
            for column in self._columns():
                column[pos] = column[last]
        del self._ids[last * ID_SIZE :]
        for column in self._columns():
            column.pop()
        if 6 * len(self) < len(self._slots) and len(self._slots) > _MIN_CAPACITY:
            self._rehash(len(self._slots) // 2)
        return rec

    def ids(self) -> list[bytes]:
        """Every id in the table."""
        ids = bytes(self._ids)
        return [ids[i : i + ID_SIZE] for i in range(0, len(ids), ID_SIZE)]

    # ------------------------------------------------------------ internals

    def _columns(self) -> tuple[array[Any], ...]:
        return (self._file, self._index, self._offset, self._crc, self._data, self._meta,
                self._node, self._owner, self._created, self._construct)  # fmt: skip

    def _size(self, data_size: int, metadata_size: int) -> int:
        """An object's allocated size (at least 1 byte, rounded up to the alignment)."""
        return round_up(data_size + metadata_size or 1, self._alignment)

    def _fits(self, oid: bytes, rec: ObjectRecord) -> bool:
        """Whether the arrays hold all of idle spilled ``rec`` (of ``oid``) exactly."""
        if rec.spill is None or len(oid) != ID_SIZE:
            return False
        file_id, e = rec.spill
        loc = rec.loc
        return (
            e.id == oid
            and e.data_size == loc.data_size
            and e.metadata_size == loc.metadata_size
            and e.node == loc.node
            and e.create_time == rec.create_time
            and e.length == e.data_size + e.metadata_size
            and rec.size == self._size(e.data_size, e.metadata_size)
            and 0 <= file_id < _U32
            and 0 <= e.index < _U32
            and 0 <= e.offset < _U32
            and 0 <= e.crc < _U32
            and 0 <= e.data_size < _U32
            and 0 <= e.metadata_size < _U32
            and -_I16 <= e.node < _I16
            and -_I32 <= rec.owner < _I32
            and kept_duration(rec.construct_duration) == rec.construct_duration
        )

    def _made(self, oid: bytes, pos: int) -> ObjectRecord:
        data, meta, node = self._data[pos], self._meta[pos], self._node[pos]
        created = self._created[pos]
        entry = SpillEntry(oid, data, meta, node, created, self._offset[pos], data + meta,
                           self._crc[pos], self._index[pos])  # fmt: skip
        rec = ObjectRecord(
            ObjectLocation(0, 0, data, meta, node), self._size(data, meta), self._owner[pos],
            created, State.SPILLED, Io.NONE, 0, 0, self._construct[pos],
        )  # fmt: skip
        rec.spill = (self._file[pos], entry)
        return rec

    def _slot_of(self, oid: bytes) -> int:
        """The hash slot of ``oid``'s position, or -1."""
        slots, ids, mask = self._slots, self._ids, self._mask
        i = hash(oid) & mask
        while (pos := slots[i]) >= 0:
            start = pos * ID_SIZE
            if ids[start : start + ID_SIZE] == oid:
                return i
            i = (i + 1) & mask
        return -1

    def _place(self, oid: bytes, pos: int) -> None:
        slots, mask = self._slots, self._mask
        i = hash(oid) & mask
        while slots[i] >= 0:
            i = (i + 1) & mask
        slots[i] = pos

    def _unlink(self, slot: int) -> None:
        """Empty hash slot ``slot``, shifting back the entries after it that may take it
        (linear probing's deletion: no tombstones, so a miss stops at the first gap)."""
        slots, ids, mask = self._slots, self._ids, self._mask
        hole, j = slot, slot
        while True:
            j = (j + 1) & mask
            pos = slots[j]
            if pos < 0:
                break
            home = hash(bytes(ids[pos * ID_SIZE : (pos + 1) * ID_SIZE])) & mask
            # it moves to the hole unless its home is in the cyclic range (hole, j]
            if (home <= hole or home > j) if hole < j else (j < home <= hole):
                slots[hole] = pos
                hole = j
        slots[hole] = -1

    def _rehash(self, capacity: int) -> None:
        self._slots = array("i", [-1]) * capacity
        self._mask = capacity - 1
        for pos, oid in enumerate(self.ids()):
            self._place(oid, pos)
