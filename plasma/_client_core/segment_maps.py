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

from plasma import protocol as p
from plasma._client_core import fast_path
from plasma.errors import PlasmaError
from plasma.linux.memfd import map_segment, populate_range, populate_read

__all__ = ["POPULATE_OBJECT_MIN", "POPULATE_SEGMENT_MAX", "Populator", "SegmentMaps"]

# A segment first received to write into is mapped with its page tables filled in, so a put
# writes at memcpy speed; one received to read from is mapped at once and its page tables
# filled in the background (a get that maps it does not wait for the whole segment, and the
# first reads of the objects sealed in it later do not fault page by page). Neither is done
# for a segment larger than POPULATE_SEGMENT_MAX (a whole budget of `serve --prefault
# budget`: a client that uses a few objects need not pay for gigabytes of page tables): it
# is mapped lazily. A large object created in a lazily mapped segment has just its own
# range populated.
POPULATE_OBJECT_MIN = 1 << 20
POPULATE_SEGMENT_MAX = 64 << 20


class Populator:
    """Fills the page tables of maps (:func:`~plasma.linux.memfd.populate_read`) one at a
    time, in a thread that runs while there is work and then ends. A map closed meanwhile is
    skipped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: collections.deque[mmap.mmap] = collections.deque()
        self._thread: threading.Thread | None = None

    def add(self, mm: mmap.mmap) -> None:
        with self._lock:
            self._queue.append(mm)
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name="plasma-populate", daemon=True)
            self._thread = thread
        thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    return
                mm = self._queue.popleft()
            populate_read(mm)

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
        self.lazy: set[int] = set()  # segments mapped without MAP_POPULATE
        self.populator = Populator()  # fills in the page tables of those, in the background
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
        self.pin_map: mmap.mmap | None = None
        # the directory mapped was superseded and the current one asked for: until it comes
        self.tables_asked = False

    def receive(self, fds: list[int]) -> None:
        """Descriptors received with the bytes at hand, in order: the segments and tables of
        the messages decoded from them take them."""
        self.fds.extend(fds)

    def map_segments(self, segments: list[p.SegmentInfo], *, for_writing: bool) -> None:
        """Map each segment from its fd: read-only where the coordinator sent a read-only fd
        (this client's uid may only read)."""
        for info in segments:
            if not self.fds:
                raise PlasmaError(f"segment {info.id} arrived without its file descriptor")
            fd = self.fds.popleft()
            self._close_segment_fd(info.id)
            with contextlib.suppress(OSError):  # (none: a writable get copies instead)
                self.segment_fds[info.id] = (os.dup(fd), info.page_size)
            small = info.size <= POPULATE_SEGMENT_MAX
            mm = map_segment(fd, info.size, writable=info.writable, populate=for_writing and small)
            self.segments[info.id] = mm
            if not (for_writing and small):
                self.lazy.add(info.id)
                if small:
                    self.populator.add(mm)

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
        self.populator.add(directory)
        if access is not None:
            self.populator.add(access)

    def install_tables(self, directory: Any, access: Any, pins: Any) -> None:
        """Read through ``directory`` (and ``access``, ``pins`` when given) from now on."""
        path = self.read_path
        try:
            reader = path.reader(directory, access) if path is not None else None
        except ValueError:  # a layout this client does not know (or cannot read): requests
            reader = None
        with self._lock:  # (no other thread is in the middle of a fast get)
            old = self.table_maps
            self.table_maps = [m for m in (directory, access) if m is not None]
            if pins is not None:
                self.pin_map = pins
                self.use_tables(reader, path.pins(pins) if path is not None else None)
            else:
                self.use_tables(reader, self.pins)
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
            self.lazy.discard(segment)
            self._close_segment_fd(segment)
            if mm is not None:
                with contextlib.suppress(BufferError):  # (then unmapped when the view goes)
                    mm.close()

    def _close_segment_fd(self, segment: int) -> None:
        kept = self.segment_fds.pop(segment, None)
        if kept is not None:
            with contextlib.suppress(OSError):
                os.close(kept[0])

    def write_object(self, loc: p.ObjectLocation, metadata: bytes) -> memoryview:
        """The writable data view of a created object, its metadata already in place."""
        mm = self.segments[loc.segment]
        if loc.segment in self.lazy and loc.data_size >= POPULATE_OBJECT_MIN:
            populate_range(mm, loc.offset, loc.data_size)
        if metadata:
            start = loc.offset + loc.data_size
            mm[start : start + len(metadata)] = metadata
        return memoryview(mm)[loc.offset : loc.offset + loc.data_size]

    def close(self) -> None:
        """Unmap everything (maps views still use go when the last view does) and close the
        kept descriptors."""
        self.use_tables(None, None)
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
