"""A client's arena: a range of a segment it carves small objects from with no request.

The store grants an arena (:meth:`Store.grant_arena`), registers the objects a client
sealed in it (:meth:`Store.seal_arena`) and takes back its unused tail. :class:`Arena`
records the range and how far the client has used it, checks each object a client says it
wrote there (inside, aligned, after the previous one) and says which bytes it skipped;
:func:`arena_size` is how big a grant may be. This module never allocates or frees: the
store frees what it is told was skipped or left over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plasma.errors import BadRequest

if TYPE_CHECKING:
    from plasma.store.memory import Segment

ARENA_SHARE = 4  # the arenas of a node reserve at most 1/4 of its budget beyond what fits


def arena_size(wanted: int, least: int, budget: int, reserved: int) -> int:
    """How many bytes to grant of ``wanted`` (at least ``least``) on a node of ``budget``
    bytes whose arenas hold ``reserved`` bytes unused already."""
    return max(least, min(wanted, budget // ARENA_SHARE - reserved))


class Arena:
    __slots__ = ("cursor", "end", "grant", "segment", "start")

    def __init__(self, segment: Segment, start: int, end: int, grant: int) -> None:
        self.segment = segment
        self.start = start
        self.end = end
        self.grant = grant
        self.cursor = start  # first byte not yet handed to an object or returned

    def check(self, oid: bytes, offset: int, size: int, alignment: int) -> None:
        """BadRequest unless ``size`` bytes at ``offset`` may go to object ``oid``: they lie
        in the arena, are aligned and start at or after the end of the previous object
        (bump order)."""
        if offset < self.start or offset + size > self.end:
            raise BadRequest(
                f"object {oid.hex()} at [{offset}, {offset + size}) is outside the arena "
                f"[{self.start}, {self.end})"
            )
        if offset & (alignment - 1):
            raise BadRequest(f"object {oid.hex()} offset {offset} is not aligned")
        if offset < self.cursor:
            raise BadRequest(
                f"object {oid.hex()} at {offset} overlaps an earlier object "
                f"(next free {self.cursor})"
            )

    def take(self, oid: bytes, offset: int, size: int, alignment: int) -> tuple[int, int]:
        """Hand ``size`` bytes at ``offset`` to object ``oid`` (BadRequest, and nothing
        changes, unless :meth:`check` passes): returns the bytes skipped before them
        (``(start, length)``, length 0 when none), which the store frees."""
        self.check(oid, offset, size, alignment)
        skipped = (self.cursor, offset - self.cursor)
        self.cursor = offset + size
        return skipped

    def tail(self) -> int:
        """Bytes of the arena not handed to an object yet."""
        return self.end - self.cursor
