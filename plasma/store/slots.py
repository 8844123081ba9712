"""What the store keeps per directory slot, beside the directory: the record published in
the slot, the slot's links in its node's CLOCK ring, and what an idle object's record would
hold that the directory slot does not.

Flat arrays indexed by slot (36 bytes a slot: a list of records, two ``array('i')`` of
links, and an idle object's creator, create time and construct duration), so an idle sealed
object costs no Python object of its own (:mod:`plasma.store.table`): its record is None
here until the store touches it. The directory is at most 3/4 full, at most half after a
rebuild, so that is 48 to 72 bytes an object. :class:`~plasma.store.publisher.Publisher`
owns the table and moves it with the directory on a rebuild (:meth:`SlotTable.move`); each
node's :class:`~plasma.store.eviction.ClockRing` links its members here.

This module holds numbers and references only: it decides nothing about any object.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plasma.store.eviction import ClockRing
    from plasma.store.objects import ObjectRecord

__all__ = ["END", "NOT_LINKED", "SlotTable"]

END = -1  # no next (or previous) slot: the end of a ring
NOT_LINKED = -2  # (a slot's ``prev``) the slot is in no ring


def _no_ids(slot: int) -> bytes:
    raise LookupError(f"slot {slot}: this slot table has no directory")


def _no_records(slot: int) -> ObjectRecord:
    raise LookupError(f"slot {slot}: this slot table keeps no compact objects")


class SlotTable:
    """Per slot of a directory of ``capacity`` slots: ``records`` (the record published
    there, or None: no object, or a compact one), ``prev``/``next`` (its CLOCK ring links:
    ``prev`` NOT_LINKED when in no ring), and a compact object's ``owner``, ``created``
    and ``construct`` (its record's ``owner``, ``create_time`` and
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
        self.records: list[ObjectRecord | None] = [None] * capacity
        self.prev = array("i", [NOT_LINKED]) * capacity
        self.next = array("i", [END]) * capacity
        self.owner = array("i", [0]) * capacity
        self.created = array("d", [0.0]) * capacity
        self.construct = array("d", [0.0]) * capacity
        self.id_of = id_of
        self.materialize: Callable[[int], ObjectRecord] = _no_records
        self.rings: list[ClockRing] = []  # the rings linked here (each node's)

    def record(self, slot: int) -> ObjectRecord:
        """The record published at ``slot`` (materialized, if the object was compact)."""
        rec = self.records[slot]
        return self.materialize(slot) if rec is None else rec

    def linked(self, slot: int) -> bool:
        return self.prev[slot] != NOT_LINKED

    def move(
        self,
        capacity: int,
        old_slots: list[int],
        new_slots: list[int],
        old_id: Callable[[int], bytes],
    ) -> array[int]:
        """A rebuild moved the objects of ``old_slots`` to ``new_slots`` (-1: left without a
        slot) in a directory of ``capacity`` slots; ``old_id`` reads ids in the old one.
        Every ring keeps its order; a member left without a slot goes to its ring's
        ``overflow``. Returns the new slot of every old one (-1: none)."""
        new_of_old = array("q", [-1]) * len(self.records)
        for old, new in zip(old_slots, new_slots, strict=True):
            new_of_old[old] = new
        old_records, old_next = self.records, self.next
        old_owner, old_created, old_construct = self.owner, self.created, self.construct
        records: list[ObjectRecord | None] = [None] * capacity
        owner = array("i", [0]) * capacity
        created = array("d", [0.0]) * capacity
        construct = array("d", [0.0]) * capacity
        for old, new in zip(old_slots, new_slots, strict=True):
            if new >= 0:
                rec = records[new] = old_records[old]
                if rec is None:  # (compact: its fields move with it)
                    owner[new] = old_owner[old]
                    created[new] = old_created[old]
                    construct[new] = old_construct[old]
        self.records = records
        self.owner, self.created, self.construct = owner, created, construct
        self.prev = array("i", [NOT_LINKED]) * capacity
        self.next = array("i", [END]) * capacity
        moved = new_of_old.tolist()
        for ring in self.rings:
            ring.moved(moved, old_next, old_records, old_id)
        return new_of_old
