"""The client core's segment maps (internal): what this client maps of the store's memory.

It owns the descriptors received with replies until their segments or tables take them, the
map of each segment (read-only where the coordinator sent a read-only descriptor), a
descriptor of each kept for copy-on-write views, the maps of the directory, access bytes
and pin table with the reader and pin table of the read path over them (the C one, or
:class:`~plasma.directory.DirectoryReader` and :class:`~plasma.directory.PinTable`), and
unmapping: segments the coordinator dropped, a superseded directory, everything at close. It
never decodes a message, never holds or releases a reference and never sends anything: it is
handed segment infos and descriptors, and answers with maps. A map that views (or the C
reader's buffer exports) still use is left for them to unmap (its ``close`` refused); nothing
here is unmapped under a live view.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import threading
from typing import Any

import numpy as np

from plasma import protocol as p
from plasma._client_core import fast_path
from plasma.errors import PlasmaError
from plasma.linux.memfd import map_segment, populate_read

__all__ = [
    "FILLED",
    "FILLING",
    "NOT_FILLED",
    "POPULATE_GRANULE",
    "POPULATE_OBJECT_MIN",
    "POPULATE_SEGMENT_MAX",
    "Populator",
    "SegmentMaps",
    "none_filled",
    "populate",
    "populate_granules",
]

# Page tables: every segment is mapped at once, without them (a map that waited for them
# would hold up the reply that brought it), and they are filled in granules of
# POPULATE_GRANULE bytes, each remembered as filled (a walk over pages already mapped still
# costs about a third of a copy of them, so nothing is filled twice):
# - a created object of POPULATE_OBJECT_MIN bytes or more, and an arena, when created:
#   the put writes into mapped pages at copy speed (a write fault maps one page; a
#   smaller object's few faults cost less than filling a granule);
# - every other granule of a segment up to POPULATE_SEGMENT_MAX bytes, in the background
#   (the Populator's thread), ahead of the next puts and of the first reads of the objects
#   sealed in it later;
# - nothing else of a larger segment (a whole budget of `serve --prefault budget`: a client
#   that uses a few objects need not pay for gigabytes of page tables, 2 MiB a GiB, nor for
#   the CPU time of filling them, about that of copying the bytes).
POPULATE_OBJECT_MIN = 1 << 20
POPULATE_SEGMENT_MAX = 64 << 20
POPULATE_GRANULE = 2 << 20
# what SegmentMaps.filled says of each granule
NOT_FILLED, FILLING, FILLED = 0, 1, 2


class Populator:
    """Fills the page tables of maps in the background, one at a time, a granule at a time,
    in a thread that runs while there is work and then ends. It takes only granules no one
    marked (:data:`FILLING` while it fills one: a put that needs it fills it again rather
    than write into it unfilled). To unmap a map, mark its granules :data:`FILLED` (it takes
    none of them again), then :meth:`let_go` of it (waits for the granule in hand: its call
    holds a view of the map, which a close would fail on)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a granule is done
        self._queue: collections.deque[tuple[mmap.mmap, bytearray, int]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._current: mmap.mmap | None = None  # the map of the granule being filled

    def add(self, mm: mmap.mmap, filled: bytearray) -> None:
        with self._lock:
            self._queue.append((mm, filled, len(mm)))
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name="plasma-populate", daemon=True)
            self._thread = thread
        thread.start()

    def let_go(self, mm: mmap.mmap) -> None:
        """Return once no granule of ``mm`` is being filled (its granules marked FILLED
        before: none is taken after)."""
        with self._idle:
            while self._current is mm:
                self._idle.wait()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    return
                mm, filled, size = self._queue.popleft()
            i = filled.find(NOT_FILLED)
            while i >= 0:
                with self._lock:
                    if filled[i] != NOT_FILLED:  # (a put took it, or the map is let go)
                        i = filled.find(NOT_FILLED, i + 1)
                        continue
                    filled[i] = FILLING
                    self._current = mm
                start = i * POPULATE_GRANULE
                try:
                    done = populate(mm, start, min(POPULATE_GRANULE, size - start))
                finally:
                    with self._idle:
                        self._current = None
                        self._idle.notify_all()
                if filled[i] == FILLING:
                    filled[i] = FILLED
                if not done:
                    break
                i = filled.find(NOT_FILLED, i + 1)
            del mm  # (no reference kept while idle)

    def forked(self) -> None:
        """This process is a fork: the thread that filled, and may have held the lock or a
        granule when the fork happened, does not exist here. Start afresh with nothing to
        fill (a forked child's client never uses its maps), so that a close in the child
        does not wait forever for that thread."""
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue = collections.deque()
        self._thread = None
        self._current = None

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the queue is done (tests); False on a timeout."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True


class SegmentMaps:
    """The segments and tables this client maps. ``lock`` is the one the client core holds
    around a directory read (replacing the directory's maps waits for it)."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self.segments: dict[int, mmap.mmap] = {}
        self.fds: collections.deque[int] = collections.deque()  # received, not yet mapped
        # each mapped segment's granules (of POPULATE_GRANULE bytes): whether this client
        # filled their page tables (NOT_FILLED, FILLING in the background, FILLED)
        self.filled: dict[int, bytearray] = {}
        self.populator = Populator()  # fills those of small segments, in the background
        # a descriptor of each mapped segment (read-only where our uid may only read) and its
        # page size: what a writable get maps privately (copy-on-write) from
        self.segment_fds: dict[int, tuple[int, int]] = {}
        # reads without requests: the directory (read-only) and this client's pin table, read
        # and written by the read path chosen when the client starts (None: requests only)
        self.read_path = fast_path.READ_PATH
        self.reader: Any = None
        self.pins: Any = None
        # the C half of the client's references (a Getter) when there is one: it is told
        # the reader and pin table in use (see use_tables)
        self.fast: Any = None
        self.table_maps: list[mmap.mmap] = []  # directory and access bytes
        # the tables map_tables gave the Populator, with their granule marks
        self.table_fills: list[tuple[mmap.mmap, bytearray]] = []
        self.pin_map: mmap.mmap | None = None
        # the directory mapped was superseded and the current one asked for: until it comes
        self.tables_asked = False

    def receive(self, fds: list[int]) -> None:
        """Descriptors received with the bytes at hand, in order: the segments and tables of
        the messages decoded from them take them."""
        self.fds.extend(fds)

    def map_segments(self, segments: list[p.SegmentInfo]) -> None:
        """Map each segment from its fd: read-only where the coordinator sent a read-only fd
        (this client's uid may only read); the page tables of one of at most
        ``POPULATE_SEGMENT_MAX`` bytes are filled in the background."""
        for info in segments:
            if not self.fds:
                raise PlasmaError(f"segment {info.id} arrived without its file descriptor")
            fd = self.fds.popleft()
            self._close_segment_fd(info.id)
            with contextlib.suppress(OSError):  # (none: a writable get copies instead)
                self.segment_fds[info.id] = (os.dup(fd), info.page_size)
            mm = map_segment(fd, info.size, writable=info.writable)
            self.segments[info.id] = mm
            filled = self.filled[info.id] = none_filled(info.size)
            if info.size <= POPULATE_SEGMENT_MAX:
                self.populator.add(mm, filled)

    def map_tables(self, tables: p.TablesInfo) -> None:
        """Map the directory (and access bytes, and the pin table when sent) from their fds,
        replacing the directory mapped before, their page tables filled (the pin table's
        now, the others' in the background). One that cannot be read leaves this client
        reading through requests."""
        sizes = [tables.directory_size, tables.access_size, tables.pin_size]
        if len(self.fds) < sum(1 for s in sizes if s):
            raise PlasmaError("the directory arrived without its file descriptors")
        maps = [
            map_segment(self.fds.popleft(), size, writable=i > 0, populate=i == 2) if size else None
            for i, size in enumerate(sizes)
        ]
        directory, access, pins = maps
        assert directory is not None
        self.install_tables(directory, access, pins)
        # (their page tables filled in the background too: a get reads a slot at random, and
        # its first read of each page would fault)
        for mm in (directory, access):
            if mm is not None:
                filled = none_filled(len(mm))
                self.table_fills.append((mm, filled))
                self.populator.add(mm, filled)

    def install_tables(self, directory: Any, access: Any, pins: Any) -> None:
        """Read through ``directory`` (and ``access``, ``pins`` when given) from now on."""
        path = self.read_path
        try:
            reader = path.reader(directory, access) if path is not None else None
        except ValueError:  # a layout this client does not know (or cannot read): requests
            reader = None
        with self._lock:  # (no other thread is in the middle of a fast get)
            old, old_fills = self.table_maps, self.table_fills
            self.table_maps = [m for m in (directory, access) if m is not None]
            self.table_fills = []
            if pins is not None:
                self.pin_map = pins
                self.use_tables(reader, path.pins(pins) if path is not None else None)
            else:
                self.use_tables(reader, self.pins)
            for mm, filled in old_fills:
                self._stop_filling(mm, filled)
            for mm in old:
                with contextlib.suppress(BufferError):
                    mm.close()

    def use_tables(self, reader: Any, pins: Any) -> None:
        """Read through ``reader`` and pin in ``pins`` from now on (None: nothing is served
        from the directory; no pin is let go here, the pin table not being ours)."""
        self.reader, self.pins = reader, pins
        if self.fast is not None:
            self.fast.reader, self.fast.pins = reader, pins

    def superseded(self, reader: Any) -> int:
        """The token of ``reader``'s directory when it was replaced and the current one is
        not asked for yet (then it counts as asked); else 0."""
        if self.tables_asked or not reader.superseded:
            return 0
        self.tables_asked = True
        return reader.token

    def unmap(self, segments: list[int]) -> None:
        """The coordinator dropped these segments: unmap them (no view can be left: views
        hold references, and a segment with a referenced object is not dropped)."""
        for segment in segments:
            mm = self.segments.pop(segment, None)
            filled = self.filled.pop(segment, None)
            self._close_segment_fd(segment)
            if mm is not None:
                self._stop_filling(mm, filled)
                with contextlib.suppress(BufferError):  # (then unmapped when the view goes)
                    mm.close()

    def _stop_filling(self, mm: mmap.mmap, filled: bytearray | None) -> None:
        """Mark ``mm``'s granules (``filled``) filled, so the Populator takes none of them
        again, and wait for the one it may be filling (its call holds a view of ``mm``):
        then ``mm`` can be closed at once."""
        if filled is not None:
            filled[:] = bytes([FILLED]) * len(filled)
        self.populator.let_go(mm)

    def _close_segment_fd(self, segment: int) -> None:
        kept = self.segment_fds.pop(segment, None)
        if kept is not None:
            with contextlib.suppress(OSError):
                os.close(kept[0])

    def fill(self, segment: int, offset: int, length: int) -> None:
        """Fill the page tables of the granules of ``segment`` that ``[offset, offset +
        length)`` touches and no one filled yet (:func:`populate_granules`)."""
        populate_granules(self.segments[segment], self.filled[segment], offset, length)

    def write_object(self, loc: p.ObjectLocation, metadata: bytes) -> memoryview:
        """The writable data view of a created object, its metadata already in place."""
        mm = self.segments[loc.segment]
        if loc.data_size >= POPULATE_OBJECT_MIN:
            self.fill(loc.segment, loc.offset, loc.data_size)
        if metadata:
            start = loc.offset + loc.data_size
            mm[start : start + len(metadata)] = metadata
        return memoryview(mm)[loc.offset : loc.offset + loc.data_size]

    def close(self) -> None:
        """Unmap everything (maps views still use go when the last view does) and close the
        kept descriptors."""
        self.use_tables(None, None)
        for segment, mm in self.segments.items():
            self._stop_filling(mm, self.filled.pop(segment, None))
        for mm, filled in self.table_fills:
            self._stop_filling(mm, filled)
        self.table_fills = []
        maps = [*self.segments.values(), *self.table_maps]
        if self.pin_map is not None:
            maps.append(self.pin_map)
        for mm in maps:
            with contextlib.suppress(BufferError):  # views still alive: unmapped when they go
                mm.close()
        for segment in list(self.segment_fds):
            self._close_segment_fd(segment)
        self.segments.clear()
        self.table_maps = []
        self.pin_map = None


def none_filled(size: int) -> bytearray:
    """The granule marks of a map of ``size`` bytes with none filled yet (NOT_FILLED each)."""
    return bytearray(-(-size // POPULATE_GRANULE))


def populate_granules(mm: mmap.mmap, filled: bytearray, offset: int, length: int) -> None:
    """Fill the page tables of the granules of ``mm`` (``POPULATE_GRANULE`` bytes each, the
    last one cut at the map's end) that ``[offset, offset + length)`` touches and ``filled``
    does not mark :data:`FILLED` (:func:`populate`: an optimisation only), each run of them
    in one call, marked first (the Populator then skips them; one it is filling is filled
    again here). A granule marked wrongly (its page tables since dropped) only costs the
    page faults it would have taken."""
    first, end = offset // POPULATE_GRANULE, -(-(offset + length) // POPULATE_GRANULE)
    i = first
    while i < end:
        if filled[i] == FILLED:
            i += 1
            continue
        j = i + 1
        while j < end and filled[j] != FILLED:
            j += 1
        filled[i:j] = bytes([FILLED]) * (j - i)
        start = i * POPULATE_GRANULE
        populate(mm, start, min(j * POPULATE_GRANULE, len(mm)) - start)
        i = j


def populate(mm: mmap.mmap, offset: int, length: int) -> bool:
    """:func:`~plasma.linux.memfd.populate_read` of ``mm[offset:offset + length]``, holding
    a view of ``mm`` meanwhile, so that it cannot be unmapped under the call (a close fails
    with BufferError, which :meth:`SegmentMaps.unmap` expects: the map goes with its last
    reference); False when it could not (``mm`` closed, or the kernel cannot)."""
    try:
        view = np.frombuffer(mm, np.uint8)
    except (ValueError, TypeError):  # closed
        return False
    try:
        return populate_read(view.ctypes.data + offset, length)
    finally:
        del view
