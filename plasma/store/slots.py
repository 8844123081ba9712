"""What the store keeps per directory slot, beside the directory: the record published in
the slot and the slot's links in its node's CLOCK ring.

Flat arrays indexed by slot (16 bytes a slot: a list of records and two ``array('i')``
of links), so an idle sealed object costs no Python object of its own in the publisher or
the eviction ring (an ``OrderedDict`` entry and a tuple in a dict took over 200 bytes). The
directory is at most 3/4 full, at most half after a rebuild, so that is 21 to 32 bytes an
object. :class:`~plasma.store.publisher.Publisher` owns the table and moves it with the
directory on a rebuild (:meth:`SlotTable.move`); each node's
:class:`~plasma.store.eviction.ClockRing` links its members here.

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


class SlotTable:
    """Per slot of a directory of ``capacity`` slots: ``records`` (the record published
    there, or None) and ``prev``/``next`` (its CLOCK ring links: ``prev`` NOT_LINKED when
    in no ring). ``id_of`` reads the id in a live slot of the current directory."""

    __slots__ = ("id_of", "next", "prev", "records", "rings")

    def __init__(self, capacity: int, id_of: Callable[[int], bytes] = _no_ids) -> None:
        self.records: list[ObjectRecord | None] = [None] * capacity
        self.prev = array("i", [NOT_LINKED]) * capacity
        self.next = array("i", [END]) * capacity
        self.id_of = id_of
        self.rings: list[ClockRing] = []  # the rings linked here (each node's)

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
        records: list[ObjectRecord | None] = [None] * capacity
        for old, new in zip(old_slots, new_slots, strict=True):
            if new >= 0:
                records[new] = old_records[old]
        self.records = records
        self.prev = array("i", [NOT_LINKED]) * capacity
        self.next = array("i", [END]) * capacity
        moved = new_of_old.tolist()
        for ring in self.rings:
            ring.moved(moved, old_next, old_records, old_id)
        return new_of_old
