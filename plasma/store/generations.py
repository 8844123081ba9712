"""Which directory slot holds the object published under a generation: the store's way from
a pin (a generation) to the object it names, with no Python object per object.

Generations only grow (:class:`plasma.directory.GenerationSource`: a counter in the high 32
bits), so publishing appends to two flat arrays kept sorted by generation, and a lookup is a
binary search: 16 bytes an object where a dict of generation to record took over 100. A
removed entry is marked (slot -1) and the arrays are compacted once marks are half of them,
so removals cost O(1) amortised and the arrays hold at most twice the live entries. A
directory rebuild moves slots: :meth:`GenerationIndex.move` maps them all at once. Both are
one C call (:mod:`plasma._native`; numpy where the extension is not built): the coordinator
does not import numpy.

This module only maps numbers: it never reads the directory or touches a record.
"""

from __future__ import annotations

import bisect
from array import array
from typing import Any

from plasma._native import native

__all__ = ["GenerationIndex"]

COMPACT_MIN = 1024  # entries below which removed ones are never compacted away


class GenerationIndex:
    """Generation -> slot of every published object with a slot (see the module docstring)."""

    __slots__ = ("_gens", "_removed", "_slots")

    def __init__(self) -> None:
        self._gens = array("Q")  # ascending
        self._slots = array("q")  # -1: removed
        self._removed = 0

    def __len__(self) -> int:
        return len(self._gens) - self._removed

    def add(self, gen: int, slot: int) -> None:
        """``gen`` (above every generation added before) is published at ``slot``."""
        gens = self._gens
        if slot < 0 or (gens and gen <= gens[-1]):
            if slot < 0:
                raise ValueError(f"slot {slot}: only published objects with a slot are indexed")
            raise ValueError(f"generation {gen:#x} is not above the last one added")
        gens.append(gen)
        self._slots.append(slot)

    def slot(self, gen: int) -> int:
        """The slot ``gen`` is published at, or -1."""
        i = self._find(gen)
        return -1 if i < 0 else self._slots[i]

    def remove(self, gen: int) -> int:
        """``gen``'s object leaves its slot: its slot (KeyError if it has none)."""
        slots = self._slots
        i = bisect.bisect_left(self._gens, gen)
        if i == len(slots) or self._gens[i] != gen or slots[i] < 0:
            raise KeyError(gen)
        slot = slots[i]
        slots[i] = -1
        self._removed += 1
        if self._removed > COMPACT_MIN and 2 * self._removed > len(self._gens):
            self._compact()
        return slot

    def slot_array(self) -> array[int]:
        """The slots of every entry, in the order their generations were added."""
        if self._removed:
            self._compact()
        return array("q", self._slots)

    def move(self, new_of_old: Any) -> None:
        """A rebuild moved every slot ``s`` to ``new_of_old[s]`` (a buffer of int64, e.g. an
        ``array('q')``; -1: the object has no slot now, and leaves the index)."""
        self._compact(new_of_old)

    def _find(self, gen: int) -> int:
        i = bisect.bisect_left(self._gens, gen)
        if i < len(self._gens) and self._gens[i] == gen and self._slots[i] >= 0:
            return i
        return -1

    def _compact(self, new_of_old: Any = None) -> None:
        """Drop the removed entries (after moving the slots through ``new_of_old``): one C
        call in place (numpy, imported then, without the extension), then the arrays cut."""
        if native is not None:
            kept = native.compact(self._gens, self._slots, new_of_old)
        else:
            from plasma import _bulk_numpy

            kept = _bulk_numpy.compact(self._gens, self._slots, new_of_old)
        del self._gens[kept:], self._slots[kept:]
        self._removed = 0
