"""The coordinator's spill I/O (internal): writes the store's spill batches and reads
spilled objects back, in worker threads off the trio loop.

The decisions (what to spill, when, where a restore goes) are the store's
(:meth:`plasma.store.Store.spill_batch`, :class:`~plasma.store.Restore`); this module only
moves bytes between segments and :mod:`plasma.spill_files`, and reports back. A spill
write duplicates the segment fds for the duration of the copy, so a segment the store frees
meanwhile stays valid until the copy ends. A restore reads into the segment's map
(:meth:`plasma.segments.Segment.mapping`), kept from one restore to the next: making,
filling and tearing down a map for each restore cost more CPU than the copy and its
checksum. The maps go when their segment is freed, or once no restore began for
``MAP_IDLE`` seconds (each page a map touched counts in the coordinator's RSS). A view of
the map held by a restore keeps it mapped even then (the store frees no memory under I/O).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
from collections.abc import Callable

import trio

from plasma import spill_files
from plasma.errors import BadRequest
from plasma.records import SpillEntry
from plasma.segments import BASE_PAGE, Segment, SegmentPool
from plasma.store import Restore, SpillDead, Store

__all__ = ["SPILL_BATCH", "Spiller"]

SPILL_BATCH = 64 << 20  # bytes of objects fused into one spill file
SPILL_RETRY = 1.0  # seconds after a failed spill before the next attempt
RESTORE_THREADS = 4  # restores under way at once (each reads its parts in parallel)
RESTORE_PART = 8 << 20  # bytes of an object read (and checksummed) by one thread
# objects up to this size are first read on the event loop when the page cache holds them
# (a copy of ~0.1 ms a MiB; a hop to a worker thread and back costs more on a busy machine)
CACHED_RESTORE_MAX = 2 << 20
MAP_IDLE = 1.0  # seconds without a restore after which the segments' maps go

log = logging.getLogger("plasma.coordinator")


class Spiller:
    """Spill I/O for one store and one directory (locked for this coordinator).

    ``restore``: take in the objects a previous coordinator spilled there; without it, a
    directory that holds spill files is refused (so nothing spilled is dropped by
    accident). ``sync``: fsync every file written and every deletion recorded, so spilled
    objects survive a reboot; without it they survive the coordinator (the page cache holds
    them) but not the machine."""

    def __init__(
        self, directory: str, store: Store, pool: SegmentPool, *, restore: bool, sync: bool
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.sync = sync
        self._store = store
        self._pool = pool
        self._dir = spill_files.open_directory(self.directory)
        self.wanted = trio.Event()
        self._restores = trio.CapacityLimiter(RESTORE_THREADS)
        self._restoring = 0  # restores under way
        self._restores_begun = 0
        self._maps_held = trio.Event()  # set: segments may be mapped for restores
        # deletions to record in the files (a worker thread: each is synced)
        self._dead: list[SpillDead] = []
        self._dead_wanted = trio.Event()
        try:
            files, damaged = spill_files.scan(self._dir)
            for problem in damaged:
                log.error("spill file problem, what it names is not served: %s", problem)
            if files and not restore:
                raise BadRequest(
                    f"spill directory {self.directory} holds {len(files)} spill file(s) of a "
                    "previous coordinator: pass --restore to bring their objects back, or "
                    "remove them"
                )
            self.adopted = store.adopt_spilled(files)
            self.damaged = damaged
            if files:
                log.warning(
                    "restored %d spilled object(s) from %d file(s) in %s",
                    self.adopted,
                    len(files),
                    self.directory,
                )
        except BaseException:
            self._dir.close()
            raise

    def close(self) -> None:
        """Record the deletions still queued (so a restart does not bring them back), then
        let the directory go."""
        self._record(self._dead)
        self._dead = []
        self._dir.close()

    async def run(self, deliver: Callable[[], None]) -> None:
        """Write batches whenever the store wants some (``wanted`` is set), and record
        deletions; ``deliver`` sends what the store's answers produced."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._record_deaths)
            nursery.start_soon(self._unmap_when_idle)
            await self._write_batches(deliver)

    async def _write_batches(self, deliver: Callable[[], None]) -> None:
        while True:
            await self.wanted.wait()
            self.wanted = trio.Event()
            while (batch := self._store.spill_batch(time.monotonic(), SPILL_BATCH)) is not None:
                if not await self._write(*batch):
                    deliver()
                    await trio.sleep(SPILL_RETRY)
                    break
                deliver()

    async def _write(self, file_id: int, objects: list) -> bool:
        sources: list[spill_files.SpillSource] = []
        fds: dict[int, int] = {}  # segment -> our duplicate of its fd (one per segment)
        started = time.monotonic()
        try:
            for oid, loc, create_time in objects:
                seg = self._pool.get(loc.segment)
                if seg.id not in fds:
                    fds[seg.id] = os.dup(seg.fd)
                sources.append(
                    spill_files.SpillSource(
                        oid,
                        fds[seg.id],
                        loc.offset,
                        loc.data_size,
                        loc.metadata_size,
                        loc.node,
                        create_time,
                        seg.page_size,
                    )
                )
            entries, size = await trio.to_thread.run_sync(
                functools.partial(
                    spill_files.write_batch, self._dir, file_id, sources, sync=self.sync
                )
            )
        except Exception as exc:  # disk full, unwritable... (or a bug: not the store's end)
            nbytes = sum(loc.data_size + loc.metadata_size for _, loc, _ in objects)
            log.error(
                "spilling %d object(s) (%d bytes) to %s failed, they stay in memory: %s",
                len(objects),
                nbytes,
                self.directory,
                exc,
                exc_info=not isinstance(exc, OSError),
            )
            what = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            reason = f"{what} ({self.directory})"
            self._store.spill_failed(file_id, reason, time.monotonic())
            return False
        finally:
            for fd in fds.values():
                os.close(fd)
        self._store.spilled(file_id, entries, size, time.monotonic() - started, time.monotonic())
        return True

    async def restore(self, event: Restore, deliver: Callable[[], None]) -> None:
        """Read one spilled object back into the memory the store gave it: through the
        segment's map (:meth:`~plasma.segments.Segment.mapping`, kept while restores go on),
        or through its descriptor for a fallback file."""
        started = time.monotonic()
        error: str | None = None
        lost = False
        self._restoring += 1
        self._restores_begun += 1
        try:
            seg = self._pool.get(event.location.segment)
            if seg.file_backed:
                async with self._restores:  # (bounds the descriptors restores hold, too)
                    fd = os.dup(seg.fd)
                    try:
                        crcs = await self._read_parts(event, functools.partial(self._pwrite, fd))
                    finally:
                        os.close(fd)
            else:
                if not self._maps_held.is_set():
                    self._maps_held.set()
                crcs = await self._read_mapped(event, seg)
            spill_files.check_parts(self._dir, event.file, event.entry, crcs)
        except spill_files.SpillDamaged as exc:
            error, lost = str(exc), True
            log.error("spilled object %s is lost: %s", event.oid.hex(), exc)
        except Exception as exc:  # EIO, EMFILE, ENOMEM... (or a bug: not the store's end)
            error = f"reading spill file {event.file} failed: {exc}"
            log.error("restoring object %s failed, it stays on disk: %s", event.oid.hex(), exc)
        finally:
            self._restoring -= 1
        self._store.restored(
            event.token, error, lost=lost, seconds=time.monotonic() - started, now=time.monotonic()
        )
        deliver()

    async def _read_mapped(self, event: Restore, seg: Segment) -> list[tuple[int, int]]:
        offset, length = event.location.offset, event.entry.length
        with memoryview(seg.mapping()) as whole, whole[offset : offset + length] as target:
            crcs = self._read_cached(event, seg, target)
            if crcs is None:
                async with self._restores:
                    crcs = await self._read_parts(
                        event, functools.partial(self._read_into, seg, target)
                    )
        return crcs

    def _read_cached(
        self, event: Restore, seg: Segment, target: memoryview
    ) -> list[tuple[int, int]] | None:
        """A small object read at once, when the page cache holds all of its bytes (as it
        does for what was spilled lately without a sync); None: read it in threads."""
        if event.entry.length > CACHED_RESTORE_MAX:
            return None
        try:
            crc = self._read_into(seg, target, event, 0, len(target), cached_only=True)
        except OSError as exc:  # (BlockingIOError: not all cached; EOPNOTSUPP: old kernel)
            if exc.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
                return None
            raise
        return [(crc, event.entry.length)]

    def _read_into(
        self,
        seg: Segment,
        target: memoryview,
        event: Restore,
        start: int,
        length: int,
        *,
        cached_only: bool = False,
    ) -> int:
        """Bytes ``[start, start + length)`` of the object read into ``target`` (its memory in
        the segment's map); their CRC-32C."""
        if not length:
            return spill_files.read_into(self._dir, event.file, event.entry, target[:0])
        seg.fill(event.location.offset + start, length)
        with target[start : start + length] as part:
            return spill_files.read_into(
                self._dir, event.file, event.entry, part, start, cached_only=cached_only
            )

    def _pwrite(self, fd: int, event: Restore, start: int, length: int) -> int:
        """Bytes ``[start, start + length)`` of the object written into fallback file ``fd``
        at its place; their CRC-32C."""
        return spill_files.read_part(
            self._dir,
            event.file,
            event.entry,
            fd,
            event.location.offset,
            BASE_PAGE,
            start,
            length,
            file_backed=True,
        )

    async def _read_parts(
        self, event: Restore, read_part: Callable[[Restore, int, int], int]
    ) -> list[tuple[int, int]]:
        """Read the object in parts of ``RESTORE_PART`` bytes (``read_part(event, start,
        length)``, returning their CRC-32C), in parallel threads; the parts' CRC-32Cs, or the
        first part's error."""
        parts = spill_files.parts(event.entry.length, RESTORE_PART)
        crcs: list[tuple[int, int]] = [(0, 0)] * len(parts)
        failures: list[Exception] = []

        async def read(i: int, start: int, length: int) -> None:
            try:
                crc = await trio.to_thread.run_sync(read_part, event, start, length)
            except Exception as exc:  # (raised below, as itself: not as a group)
                failures.append(exc)
            else:
                crcs[i] = (crc, length)

        async with trio.open_nursery() as nursery:
            for i, (start, length) in enumerate(parts):
                nursery.start_soon(read, i, start, length)
        if failures:
            raise failures[0]
        return crcs

    async def _unmap_when_idle(self) -> None:
        """Let go of the segments' maps once restores paused for ``MAP_IDLE`` seconds (a map
        costs the coordinator RSS for every page it touched)."""
        while True:
            await self._maps_held.wait()
            while True:
                begun = self._restores_begun
                await trio.sleep(MAP_IDLE)
                if self._restores_begun == begun and not self._restoring:
                    break
            self._maps_held = trio.Event()
            self._pool.unmap_all()

    def dead(self, event: SpillDead) -> None:
        """An object in a spill file was deleted: mark it, or remove the emptied file (in a
        worker thread, soon)."""
        self._dead.append(event)
        self._dead_wanted.set()

    async def _record_deaths(self) -> None:
        while True:
            await self._dead_wanted.wait()
            self._dead_wanted = trio.Event()
            events, self._dead = self._dead, []
            await trio.to_thread.run_sync(self._record, events)

    def _record(self, events: list[SpillDead]) -> None:
        """Mark the deleted objects dead in their files (one sync per file) and remove the
        files emptied."""
        marks: dict[int, list[SpillEntry]] = {}
        empty: set[int] = set()
        for event in events:
            if event.empty:
                empty.add(event.file)
            elif event.entry is not None:
                marks.setdefault(event.file, []).append(event.entry)
        for file_id in sorted(empty | set(marks)):
            try:
                if file_id in empty:
                    spill_files.remove_file(self._dir, file_id, sync=self.sync)
                else:
                    spill_files.mark_dead(self._dir, file_id, marks[file_id], sync=self.sync)
            except (OSError, spill_files.SpillDamaged) as exc:
                # a restart may bring the objects back; nothing else is wrong
                log.error("could not record deletions in spill file %d: %s", file_id, exc)
