"""What the store keeps per directory slot, beside the directory: the record published in
the slot, the slot's links in its node's CLOCK ring, and what an idle object's record would
hold that the directory slot does not.

Flat arrays indexed by slot (24 bytes a slot: two ``array('i')`` of links, and an idle
object's creator, create time and construct duration, the last as a 4-byte float: the
store keeps every construct duration at that precision, :func:`kept_duration`), and a dict
of the records of the slots that have one, so an idle sealed object costs no Python object
of its own (:mod:`plasma.store.table`): its slot has no record here until the store touches
it. The directory is at most 3/4 full, at most half after a rebuild, so that is 32 to 48
bytes an object. :class:`~plasma.store.publisher.Publisher` owns the table and moves it
with the directory on a rebuild (:meth:`SlotTable.move`: a C call per array and ring, see
:func:`scatter` and :func:`relink`); each node's :class:`~plasma.store.eviction.ClockRing`
links its members here.

This module holds numbers and references only: it decides nothing about any object.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from plasma._native import native

if TYPE_CHECKING:
    from plasma.store.eviction import ClockRing
    from plasma.store.objects import ObjectRecord

__all__ = ["END", "NOT_LINKED", "SlotTable", "kept_duration", "relink", "scatter"]

END = -1  # no next (or previous) slot: the end of a ring
NOT_LINKED = -2  # (a slot's ``prev``) the slot is in no ring


def kept_duration(seconds: float) -> float:
    """``seconds`` as the slot table's ``construct`` column keeps it (a 4-byte float: 7
    significant digits), so a record made compact and back reports what it did before."""
    return array("f", [seconds])[0]


def _no_ids(slot: int) -> bytes:
    raise LookupError(f"slot {slot}: this slot table has no directory")


def _no_records(slot: int) -> ObjectRecord:
    raise LookupError(f"slot {slot}: this slot table keeps no compact objects")


class SlotTable:
    """Per slot of a directory of ``capacity`` slots: ``records`` (slot -> the record
    published there; none for a free slot or a compact object), ``prev``/``next`` (its
    CLOCK ring links: ``prev`` NOT_LINKED when in no ring), and a compact object's
    ``owner``, ``created`` and ``construct`` (its record's ``owner``, ``create_time`` and
    ``construct_duration``). ``id_of`` reads the id in a live slot of the current
    directory; ``materialize`` makes a compact object's record (and keeps it in
    ``records``): the :class:`~plasma.store.table.ObjectTable`'s."""

    __slots__ = (
        "construct",
        "created",
        "id_of",
        "materialize",
        "next",
        "owner",
        "prev",
        "records",
        "rings",
    )

    def __init__(self, capacity: int, id_of: Callable[[int], bytes] = _no_ids) -> None:
        self.records: dict[int, ObjectRecord] = {}
        self.prev = array("i", [NOT_LINKED]) * capacity
        self.next = array("i", [END]) * capacity
        self.owner = array("i", [0]) * capacity
        self.created = array("d", [0.0]) * capacity
        self.construct = array("f", [0.0]) * capacity  # (see kept_duration)
        self.id_of = id_of
        self.materialize: Callable[[int], ObjectRecord] = _no_records
        self.rings: list[ClockRing] = []  # the rings linked here (each node's)

    def record(self, slot: int) -> ObjectRecord:
        """The record published at ``slot`` (materialized, if the object was compact)."""
        rec = self.records.get(slot)
        return self.materialize(slot) if rec is None else rec

    def linked(self, slot: int) -> bool:
        return self.prev[slot] != NOT_LINKED

    def recorded(self) -> bytearray:
        """A byte per slot: 1 where the slot has a record."""
        mask = bytearray(len(self.prev))
        for slot in self.records:
            mask[slot] = 1
        return mask

    def move(self, capacity: int, new_of_old: array[int], old_id: Callable[[int], bytes]) -> None:
        """A rebuild moved the object of every slot ``s`` to ``new_of_old[s]`` (-1: no
        object, or one left without a slot) in a directory of ``capacity`` slots; ``old_id``
        reads ids in the old one. Every ring keeps its order; a member left without a slot
        goes to its ring's ``overflow`` (its record must be in ``records`` by then)."""
        old_records, old_next = self.records, self.next
        self.records = {
            new: rec for old, rec in old_records.items() if (new := new_of_old[old]) >= 0
        }
        self.owner = _moved(self.owner, capacity, new_of_old)
        self.created = _moved(self.created, capacity, new_of_old)
        self.construct = _moved(self.construct, capacity, new_of_old)
        self.prev = array("i", [NOT_LINKED]) * capacity
        self.next = array("i", [END]) * capacity
        for ring in self.rings:
            ring.moved(new_of_old, old_next, old_records, old_id)


def _moved(old: array[Any], capacity: int, new_of_old: array[int]) -> array[Any]:
    """A new column of ``capacity`` zeros with ``old``'s values at their new slots."""
    new = array(old.typecode, [0]) * capacity
    scatter(new, old, new_of_old)
    return new


def scatter(dst: Any, src: Any, index: array[int]) -> None:
    """``dst[index[i]] = src[i]`` for every ``index[i] >= 0`` (``dst`` and ``src`` buffers of
    items of one size, ``index`` an ``array('q')`` as long as ``src``): one C call (a loop
    without the extension). IndexError, nothing written, for an index outside ``dst``."""
    if native is not None:
        native.scatter(dst, src, index)
        return
    with memoryview(dst) as to, memoryview(src) as values:
        if len(values) != len(index) or to.itemsize != values.itemsize:
            raise ValueError("scatter: as many indexes as items of src, of dst's size")
        if any(i >= len(to) for i in index):
            raise IndexError("an index outside dst")
        for i, at in enumerate(index):
            if at >= 0:
                to[at] = values[i]


def relink(
    head: int, old_next: array[int], new_of_old: array[int], prev: array[int], next: array[int]
) -> tuple[int, int, int, list[int]]:
    """A ring that starts at ``head`` and goes on through ``old_next`` (END ends it), relinked
    in order in ``prev``/``next`` (all NOT_LINKED and END) at the new slots ``new_of_old``
    of its members: ``(head, tail, linked, [the old slots of the members left out])``. One C
    call (a loop without the extension)."""
    if native is not None:
        ring: tuple[int, int, int, list[int]] = native.relink(
            head, old_next, new_of_old, prev, next
        )
        return ring
    first = last = END
    linked = 0
    left: list[int] = []
    old = head
    while old != END:
        if old < 0 or linked + len(left) >= len(old_next):
            raise IndexError("a ring slot outside the arrays, or a cycle")
        at = new_of_old[old]
        if at < 0:
            left.append(old)
        else:
            prev[at], next[at] = last, END
            if last == END:
                first = at
            else:
                next[last] = at
            last = at
            linked += 1
        old = old_next[old]
    return first, last, linked, left
