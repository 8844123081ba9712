"""A client's arena: a range of a segment it carves small objects from with no request.

The store grants an arena (:meth:`Store.grant_arena`), registers the objects a client
sealed in it (:meth:`Store.seal_arena`) and takes back its unused tail. This module only
records the range and how far the client has used it; it never allocates or frees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plasma.store.memory import Segment


class Arena:
    __slots__ = ("cursor", "end", "grant", "segment", "start")

    def __init__(self, segment: Segment, start: int, end: int, grant: int) -> None:
        self.segment = segment
        self.start = start
        self.end = end
        self.grant = grant
        self.cursor = start  # first byte not yet handed to an object or returned
