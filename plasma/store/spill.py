"""The books of spilling: what is on disk, what is being written or read back, and the
figures ``stats()["spill"]`` and store_full messages show.

:class:`SpillBook` keeps the spill files (live objects and bytes of each), the batch being
written, the restores under way and those waiting for memory, the bounds (``max_bytes``,
``max_objects``) and the last error. The store decides what to spill, drop or restore and
changes objects' states; the coordinator's spiller writes and reads the files. This class
only counts and chooses (:meth:`SpillBook.pick`, :meth:`SpillBook.wanted`,
:func:`restore_order`): it never frees memory, changes an object's state or touches a file.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from plasma.records import ObjectLocation, SpillEntry
from plasma.store.objects import ObjectRecord, State
from plasma.store.pages import round_up

if TYPE_CHECKING:
    from plasma.store.memory import Node

Candidate = tuple[bytes, ObjectRecord]

SPILL_FRACTION = 8  # a spill batch copies at least 1/8 of the node's budget (if it can)

# what stats()["spill"] counts
SPILL_COUNTS = (
    "objects",  # only on disk now
    "bytes",  # ... their data + metadata bytes
    "written_objects",
    "written_bytes",
    "restored_objects",
    "restored_bytes",
    "errors",  # spill batches that failed (disk full, unwritable)
    "lost",  # spilled objects whose copy turned out to be gone or damaged
)


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds if seconds > 0 else 0.0


class SpillBook:
    """Spill files, batches, restores and their figures (see the module docstring)."""

    def __init__(
        self, enabled: bool, threshold: float, max_bytes: int | None, max_objects: int
    ) -> None:
        self.enabled = enabled
        self.threshold = threshold  # copies are made ahead once this share of a budget has none
        self.max_bytes = max_bytes
        self.max_objects = max_objects
        self.files: dict[int, list[int]] = {}  # file -> [live objects, file bytes]
        self.batches: dict[int, list[tuple[bytes, ObjectRecord]]] = {}  # being written
        self.restoring: dict[int, tuple[bytes, ObjectRecord]] = {}  # token -> object
        # restores waiting for memory: id -> (record, the reader's node)
        self.restore_queue: dict[bytes, tuple[ObjectRecord, int | None]] = {}
        self.error = ""  # why the last batch failed ("" once one succeeds)
        self.counts = dict.fromkeys(SPILL_COUNTS, 0)
        self._seconds = {"spill": 0.0, "restore": 0.0}
        self._next_file = 1
        self._wakeup = False

    # ------------------------------------------------------------ the files

    def disk_objects(self) -> int:
        """Objects with a copy in the spill files."""
        return sum(f[0] for f in self.files.values())

    def disk_bytes(self) -> int:
        """Bytes of the spill files."""
        return sum(f[1] for f in self.files.values())

    def room(self) -> float:
        """Bytes more the spill files may take."""
        return math.inf if self.max_bytes is None else self.max_bytes - self.disk_bytes()

    def full(self) -> bool:
        """No more copies may be written (bytes or objects at their bound)."""
        return self.room() <= 0 or self.disk_objects() >= self.max_objects

    def new_batch(self, picked: list[tuple[bytes, ObjectRecord]]) -> int:
        """``picked`` are being written as a new spill file: its id."""
        file_id = self._next_file
        self._next_file += 1
        self.batches[file_id] = picked
        return file_id

    def written(
        self, file_id: int, written: int, nbytes: int, live: int, file_bytes: int, seconds: float
    ) -> list[tuple[bytes, ObjectRecord]]:
        """Batch ``file_id`` is on disk (``written`` objects, ``nbytes`` of them, in
        ``seconds``), ``live`` of them not deleted meanwhile: its objects."""
        self.counts["written_objects"] += written
        self.counts["written_bytes"] += nbytes
        self._seconds["spill"] += seconds
        self.error = ""  # (spilling works again)
        if live:
            self.files[file_id] = [live, file_bytes]
        return self.batches.pop(file_id)

    def failed(self, file_id: int, reason: str) -> list[tuple[bytes, ObjectRecord]]:
        """Batch ``file_id`` could not be written: its objects."""
        self.counts["errors"] += 1
        self.error = reason
        return self.batches.pop(file_id)

    def drop_copy(self, file_id: int) -> bool:
        """A copy in ``file_id`` is dead; True when the file has no live copy left (it goes)."""
        f = self.files[file_id]
        f[0] -= 1
        if not f[0]:
            del self.files[file_id]
        return not f[0]

    def adopt_file(self, file_id: int, file_bytes: int) -> None:
        """A spill file a previous coordinator left (its copies are counted as adopted)."""
        self._next_file = max(self._next_file, file_id + 1)
        self.files[file_id] = [0, file_bytes]

    def adopt_copy(self, file_id: int) -> None:
        self.files[file_id][0] += 1

    def forget_empty(self, file_id: int) -> bool:
        """True (and the file is forgotten) when ``file_id`` holds no live copy."""
        if self.files[file_id][0]:
            return False
        del self.files[file_id]
        return True

    # ------------------------------------------------------------ decisions

    def wanted(self, nd: Node) -> int:
        """Bytes of ``nd``'s objects to copy to disk now: what creates and restores wait for
        (``nd.spill_demand``), or, past the threshold, enough to bring the bytes without a
        copy under it and a batch's worth more (at least 1/``SPILL_FRACTION`` of the
        budget: fewer, bigger files)."""
        over = nd.used - nd.clock.copied - int(self.threshold * nd.budget)
        if self.threshold < 1 and over > 0:
            return max(nd.spill_demand, over + nd.budget // SPILL_FRACTION)
        return nd.spill_demand

    def pick(
        self,
        nodes: Iterable[Node],
        walk_of: Callable[[Node], Generator[Candidate, None, None]],
        max_bytes: int,
        max_objects: int,
    ) -> list[Candidate]:
        """The objects to write as the next spill file: up to ``max_bytes`` of data and
        ``max_objects`` objects (and what the bounds on disk leave), taken from each node's
        candidates without a copy (``walk_of``, in CLOCK order) while it wants some
        (:meth:`wanted`). Empty when spilling is off or a batch is being written. Each
        node's ``spill_demand`` is met by this batch (or cannot be now): it is reset."""
        if not self.enabled or self.batches:
            return []
        room = self.room()
        max_objects = min(max_objects, self.max_objects - self.disk_objects())
        picked: list[Candidate] = []
        if max_objects <= 0:
            return picked
        total = 0
        for nd in nodes:
            want = self.wanted(nd)
            with contextlib.closing(walk_of(nd)) as walk:
                for oid, rec in walk:
                    length = rec.loc.data_size + rec.loc.metadata_size
                    full = total + length > max_bytes or len(picked) >= max_objects
                    if want <= 0 or (picked and full) or total + length > room:
                        break
                    picked.append((oid, rec))
                    want -= rec.size
                    total += length
            nd.spill_demand = 0
        return picked

    def ask_copies(self, nd: Node, size: int) -> bool:
        """Eviction cannot make room for ``size`` bytes on ``nd`` now: True (and the spiller
        is woken, ``nd.spill_demand`` raised) when copies on disk of its unreferenced
        objects without one would, and may be written; the request then waits for them. A
        batch copies at least 1/``SPILL_FRACTION`` of the budget: fewer, bigger files, and
        later evictions find copies ready."""
        if not (
            self.enabled
            and nd.budget - nd.used + nd.clock.bytes >= size
            and nd.clock.bytes > nd.clock.copied
            and not self.full()
        ):
            return False
        nd.spill_demand = max(nd.spill_demand, size, nd.budget // SPILL_FRACTION)
        self.wake()
        return True

    def restore_hopeless(self, nd: Node, size: int) -> bool:
        """No memory will come for a restore of ``size`` bytes on ``nd`` without a client
        letting go: nothing is being evicted or written to disk, dropping the objects that
        have a copy on disk would not make room, and the copies that would cannot be
        written (the last spill failed, or they would not fit under the bounds)."""
        if nd.evicting or self.batches:
            return False
        short = size - (nd.budget - nd.used) - nd.clock.copied  # bytes that need a copy first
        if short <= 0:
            return False
        return bool(self.error) or self.room() < short or self.full()

    # ------------------------------------------------------------ objects only on disk

    def to_disk(self, length: int) -> None:
        """An object of ``length`` bytes is only on disk now."""
        self.counts["objects"] += 1
        self.counts["bytes"] += length

    def off_disk(self, length: int) -> None:
        """An object only on disk went (deleted or lost)."""
        self.counts["objects"] -= 1
        self.counts["bytes"] -= length

    def restored(self, length: int, seconds: float) -> None:
        """An object of ``length`` bytes was read back into memory in ``seconds``."""
        self.off_disk(length)
        self.counts["restored_objects"] += 1
        self.counts["restored_bytes"] += length
        self._seconds["restore"] += seconds

    # ------------------------------------------------------------ wakeups and figures

    def wake(self) -> None:
        """Something may want spilling: the spiller asks for a batch."""
        self._wakeup = True

    def take_wakeup(self) -> bool:
        wakeup, self._wakeup = self._wakeup, False
        return wakeup

    def stats(self) -> dict[str, Any]:
        seconds, counts = self._seconds, self.counts
        return {
            **counts,
            "disk_bytes": self.disk_bytes(),
            "files": len(self.files),
            "max_bytes": self.max_bytes,
            "max_objects": self.max_objects,
            "in_flight": sum(len(b) for b in self.batches.values()) + len(self.restoring),
            "spill_seconds": seconds["spill"],
            "restore_seconds": seconds["restore"],
            "spill_bytes_per_second": _rate(counts["written_bytes"], seconds["spill"]),
            "restore_bytes_per_second": _rate(counts["restored_bytes"], seconds["restore"]),
            "last_error": self.error,
        }

    def describe(self) -> str:
        """What a store_full message says of spilling."""
        text = f", {self.counts['bytes']} spilled to disk"
        if self.max_bytes is not None:
            text += f" (spill files: {self.disk_bytes()} of at most {self.max_bytes} bytes)"
        copies = self.disk_objects()
        if copies >= self.max_objects:
            text += f" (spill files: {copies} objects, the most allowed)"
        if self.error:
            text += f"; the last spill failed: {self.error}"
        return text


def restore_order(home: Node, nodes: Iterable[Node]) -> list[Node]:
    """Where a restore looks for free memory: ``home`` (the reader's node, else the
    object's), then the other nodes, those with the most budget left first."""
    others = sorted((nd for nd in nodes if nd is not home), key=lambda nd: nd.used - nd.budget)
    return [home, *others]


def adopted_record(entry: SpillEntry, file_id: int, node: int, alignment: int) -> ObjectRecord:
    """The record of an object a previous coordinator left in spill file ``file_id``
    (``entry``), as spilled, to be read back on ``node``."""
    loc = ObjectLocation(0, 0, entry.data_size, entry.metadata_size, node)
    size = round_up(entry.length or 1, alignment)
    rec = ObjectRecord(loc, size, 0, entry.create_time, State.SPILLED)
    rec.spill = (file_id, entry)
    return rec
