"""Who holds memory: per client and in all (what ``plasma-coord memory`` and store_full say).

The store fills these in one pass over its clients and the pin tables
(:meth:`Store.holders`); this module only adds up and formats. It must never change what
it counts.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plasma.store.objects import ObjectRecord


class Holding:
    """What one client holds (see Store.holders): bytes and objects it references (sealed),
    creates (unsealed), pins without referencing them, and its arena's unused tail."""

    __slots__ = ("arena", "pin_bytes", "pins", "ref_bytes", "refs", "unsealed", "unsealed_bytes")

    def __init__(self) -> None:
        self.refs = self.ref_bytes = 0
        self.pins = self.pin_bytes = 0
        self.unsealed = self.unsealed_bytes = 0
        self.arena = 0

    @property
    def total(self) -> int:
        return self.ref_bytes + self.pin_bytes + self.unsealed_bytes + self.arena


def holding_text(h: Holding) -> str:
    """``"N bytes: R referenced, P pinned, ..."`` (the kinds it holds some of)."""
    kinds = [
        (h.ref_bytes, "referenced"),
        (h.pin_bytes, "pinned"),
        (h.unsealed_bytes, "being written"),
        (h.arena, "in its arena"),
    ]
    parts = ", ".join(f"{n} {kind}" for n, kind in kinds if n)
    return f"{h.total} bytes: {parts}"


class Held:
    """What holds memory (of one node, or of all): see Store._held_on and Store.holders."""

    __slots__ = (
        "arenas",
        "clients",
        "objects",
        "pinned_only",
        "pinned_unreferenced",
        "referenced",
        "writing",
    )

    def __init__(self) -> None:
        self.referenced = 0  # sealed objects with references (bytes; shared ones once each)
        self.writing = 0  # unsealed objects
        self.arenas = 0  # the unused tails of arenas
        self.pinned_unreferenced = 0  # bytes of live unreferenced objects readers pin
        self.pinned_only = 0  # bytes of every object pins hold and no reference (dying too)
        self.clients: dict[int, Holding] = {}  # every client, holding something or not
        # with objects asked for: id -> (record, clients referencing it, clients pinning it)
        self.objects: dict[bytes, tuple[ObjectRecord, list[int], list[int]]] | None = None

    @property
    def total(self) -> int:
        return self.referenced + self.writing + self.arenas

    @property
    def by_client(self) -> Counter[int]:
        """Bytes held per client (those holding some)."""
        return Counter({cid: h.total for cid, h in self.clients.items() if h.total})
