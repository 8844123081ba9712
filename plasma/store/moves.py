"""Page moves and copies under way, and memory given back while I/O still reads it.

The store starts moving an object's pages (migrate, follow-readers, an interleaved
create), copying it to other nodes (replicate), or moving freed pages back home before the
memory is reused; the coordinator's page mover does the I/O and calls
:meth:`Store.placed` with the job's token. Each job is one of the records here, kept by
token until then. This module only records: it never starts I/O, frees memory or answers
a client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plasma.store.memory import Segment
    from plasma.store.objects import ObjectRecord


@dataclass(slots=True, eq=False)
class FreedRange:
    """Memory given back: ``size`` bytes at ``offset`` of ``segment``; ``charges`` (bytes
    per node) when some of its pages are on other nodes: moved back before it is reused."""

    segment: Segment
    offset: int
    size: int
    charges: dict[int, int] | None


@dataclass(slots=True, eq=False)
class MoveJob:
    """An object's pages being moved: for a migrate by ``client`` (None: follow-readers)
    or, with ``create``, for its client's interleaved create (answered when placed)."""

    client: int | None
    oid: bytes
    rec: ObjectRecord
    create: bool = False


@dataclass(slots=True, eq=False)
class CopyJob:
    """An object being copied to other nodes for ``client``'s replicate: ``copies`` are
    (node, record of the copy), unsealed until the copy is made."""

    client: int
    oid: bytes
    rec: ObjectRecord
    copies: list[tuple[int, ObjectRecord]]


@dataclass(slots=True, eq=False)
class RehomeJob:
    """Freed memory whose pages are being moved back to their segment's node."""

    freed: FreedRange
    client: None = None


PlaceJob = MoveJob | CopyJob | RehomeJob
