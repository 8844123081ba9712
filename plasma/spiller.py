"""The coordinator's spill I/O (internal): writes the store's spill batches and reads
spilled objects back, in worker threads off the trio loop.

The decisions (what to spill, when, where a restore goes) are the store's
(:meth:`plasma.store.Store.spill_batch`, :class:`~plasma.store.Restore`); this module only
moves bytes between segments and :mod:`plasma.spill_files`, and reports back. Segment fds
are duplicated for the duration of each copy, so a segment the store frees meanwhile
stays valid until the copy ends.
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
from plasma.segments import SegmentPool
from plasma.store import Restore, SpillDead, Store

__all__ = ["SPILL_BATCH", "Spiller"]

SPILL_BATCH = 64 << 20  # bytes of objects fused into one spill file
SPILL_RETRY = 1.0  # seconds after a failed spill before the next attempt
RESTORE_THREADS = 4  # restores under way at once (each reads its parts in parallel)
RESTORE_PART = 8 << 20  # bytes of an object read (and checksummed) by one thread
# objects up to this size are first read on the event loop when the page cache holds them
# (a copy of ~0.1 ms a MiB; a hop to a worker thread and back costs more on a busy machine)
CACHED_RESTORE_MAX = 2 << 20

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
        """Read one spilled object back into the memory the store gave it."""
        started = time.monotonic()
        error: str | None = None
        lost = False
        try:
            crcs = self._read_cached(event)
            if crcs is None:
                async with self._restores:  # (bounds the descriptors restores hold, too)
                    seg = self._pool.get(event.location.segment)
                    fd = os.dup(seg.fd)
                    try:
                        crcs = await self._read_parts(event, fd, seg.page_size, seg.file_backed)
                    finally:
                        os.close(fd)
            spill_files.check_parts(self._dir, event.file, event.entry, crcs)
        except spill_files.SpillDamaged as exc:
            error, lost = str(exc), True
            log.error("spilled object %s is lost: %s", event.oid.hex(), exc)
        except Exception as exc:  # EIO, EMFILE... (or a bug: not the store's end)
            error = f"reading spill file {event.file} failed: {exc}"
            log.error("restoring object %s failed, it stays on disk: %s", event.oid.hex(), exc)
        self._store.restored(
            event.token, error, lost=lost, seconds=time.monotonic() - started, now=time.monotonic()
        )
        deliver()

    def _read_cached(self, event: Restore) -> list[tuple[int, int]] | None:
        """A small object read at once, when the page cache holds all of its bytes (as it
        does for what was spilled lately without a sync); None: read it in threads."""
        seg = self._pool.get(event.location.segment)
        if event.entry.length > CACHED_RESTORE_MAX or seg.file_backed:
            return None
        try:
            crc = spill_files.read_part(
                self._dir,
                event.file,
                event.entry,
                seg.fd,
                event.location.offset,
                seg.page_size,
                0,
                event.entry.length,
                cached_only=True,
            )
        except OSError as exc:  # (BlockingIOError: not all cached; EOPNOTSUPP: old kernel)
            if exc.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
                return None
            raise
        return [(crc, event.entry.length)]

    async def _read_parts(
        self, event: Restore, fd: int, page_size: int, file_backed: bool
    ) -> list[tuple[int, int]]:
        """Read the object in parts of ``RESTORE_PART`` bytes, in parallel threads; the
        parts' CRC-32Cs, or the first part's error."""
        parts = spill_files.parts(event.entry.length, RESTORE_PART)
        crcs: list[tuple[int, int]] = [(0, 0)] * len(parts)
        failures: list[Exception] = []

        async def read(i: int, start: int, length: int) -> None:
            try:
                crc = await trio.to_thread.run_sync(
                    spill_files.read_part,
                    self._dir,
                    event.file,
                    event.entry,
                    fd,
                    event.location.offset,
                    page_size,
                    start,
                    length,
                    file_backed,
                )
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
