"""Objects that follow their readers (internal, sans-I/O): which object to migrate where.

:class:`ReaderTracker` counts reads of each object by the reader's NUMA node (gets that reach
the coordinator, and pins seen in the pin tables: reads without requests) and proposes a
migration when the recent reads come mostly from one other node. Hysteresis keeps objects
from ping-ponging: a node must have at least ``share`` of at least ``min_reads`` reads in
the window, and an object that moved stays put for ``cooldown`` seconds; its counts start
over after each move. At most ``max_objects`` objects are tracked (the least recently read
are forgotten first), so the memory it takes is bounded.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

__all__ = ["ReaderTracker"]


@dataclass
class _Reads:
    by_node: collections.Counter[int] = field(default_factory=collections.Counter)
    since: float = 0.0  # start of the window
    moved_at: float = float("-inf")


class ReaderTracker:
    """Read counts per object and reader node, and the migrations they call for."""

    def __init__(
        self,
        *,
        share: float = 0.75,
        min_reads: int = 8,
        window: float = 10.0,
        cooldown: float = 30.0,
        max_objects: int = 1 << 16,
    ) -> None:
        if not 0.5 < share <= 1:
            raise ValueError(f"share must be in (0.5, 1], got {share}")
        self.share = share
        self.min_reads = min_reads
        self.window = window
        self.cooldown = cooldown
        self.max_objects = max_objects
        self._reads: collections.OrderedDict[bytes, _Reads] = collections.OrderedDict()

    def read(self, oid: bytes, node: int, now: float, count: int = 1) -> None:
        """``count`` reads of ``oid`` by a reader on ``node``."""
        reads = self._reads.get(oid)
        if reads is None:
            reads = self._reads[oid] = _Reads(since=now)
            if len(self._reads) > self.max_objects:
                self._reads.popitem(last=False)
        else:
            self._reads.move_to_end(oid)
        if now - reads.since > self.window:  # a new window
            reads.by_node.clear()
            reads.since = now
        reads.by_node[node] += count

    def proposal(self, oid: bytes, current: int, now: float) -> int | None:
        """The node ``oid`` (whose pages are on ``current``) should move to, if any."""
        reads = self._reads.get(oid)
        if reads is None or now - reads.moved_at < self.cooldown:
            return None
        total = sum(reads.by_node.values())
        if total < self.min_reads:
            return None
        node, most = reads.by_node.most_common(1)[0]
        if node == current or most < self.share * total:
            return None
        return node

    def candidates(self) -> list[bytes]:
        """Every tracked object (most recently read last)."""
        return list(self._reads)

    def moved(self, oid: bytes, now: float) -> None:
        """``oid`` moved: its counts start over and it stays put for ``cooldown``."""
        reads = self._reads.get(oid)
        if reads is not None:
            reads.by_node.clear()
            reads.since = now
            reads.moved_at = now

    def forget(self, oid: bytes) -> None:
        self._reads.pop(oid, None)
