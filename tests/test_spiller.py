"""The spiller's restores through kept segment maps: the bytes come back, a failure (an I/O
error mid-read, a short file, a checksum mismatch) is reported as such and leaves the
spiller working, and the maps go when their segment is freed or when restores pause."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import trio

from plasma import spill_files
from plasma.linux import memfd
from plasma.protocol import ObjectLocation
from plasma.records import SpillEntry
from plasma.segments import SegmentPool
from plasma.spiller import CACHED_RESTORE_MAX, MAP_IDLE, RESTORE_PART, Spiller
from plasma.store import Restore
from tests.helpers import MIB

PAGE = 4096


class FakeStore:
    """What the spiller asks of the store: nothing adopted; every restore's outcome kept."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[int, str | None, bool]] = []

    def adopt_spilled(self, files: dict) -> int:
        return 0

    def restored(self, token: int, error: str | None, *, lost: bool, **_: float) -> None:
        self.outcomes.append((token, error, lost))


@pytest.fixture
def pool() -> Iterator[SegmentPool]:
    pool = SegmentPool(bind=False)
    yield pool
    pool.close()


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def spiller(tmp_path: Path, pool: SegmentPool, store: FakeStore) -> Iterator[Spiller]:
    spiller = Spiller(str(tmp_path / "spill"), store, pool, restore=False, sync=False)  # type: ignore[arg-type]
    yield spiller
    spiller.close()


def spilled(spiller: Spiller, sizes: list[int]) -> tuple[list[SpillEntry], list[bytes]]:
    """Objects of ``sizes`` random bytes written into spill file 1."""
    payloads = [os.urandom(n) for n in sizes]
    fd = memfd.memfd_create("source")
    try:
        os.ftruncate(fd, sum(sizes))
        os.pwrite(fd, b"".join(payloads), 0)
        sources, offset = [], 0
        for n, size in enumerate(sizes):
            oid = bytes([n + 1]) * 20
            sources.append(spill_files.SpillSource(oid, fd, offset, size, 0, 0, 0.0, PAGE))
            offset += size
        entries, _ = spill_files.write_batch(spiller._dir, 1, sources, sync=False)
    finally:
        os.close(fd)
    return entries, payloads


def restore_event(token: int, entry: SpillEntry, segment: int, offset: int = 0) -> Restore:
    return Restore(token, entry.id, ObjectLocation(segment, offset, entry.length, 0, 0), 1, entry)


def maps_of(fd: int) -> int:
    """How many maps of this process are of the file behind ``fd``."""
    inode = os.fstat(fd).st_ino
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if int(line.split()[4]) == inode)


def open_fds() -> set[str]:
    """What this process's descriptors are open on."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
    return out


# read on the event loop (more than one call); in threads (two parts)
SIZES = [spill_files.CRC_CHUNK + 5 * PAGE, CACHED_RESTORE_MAX + RESTORE_PART + 3 * PAGE]


async def test_restores_read_every_byte_back_through_the_segments_map(spiller, pool, store):
    entries, payloads = spilled(spiller, SIZES)
    segment = pool.new_segment(0, 32 * MIB)
    seg = pool.get(segment)
    offset = 0
    for token, entry in enumerate(entries):
        await spiller.restore(restore_event(token, entry, segment, offset), lambda: None)
        offset += -(-entry.length // PAGE) * PAGE
    assert store.outcomes == [(0, None, False), (1, None, False)]
    assert seg.mapped and maps_of(seg.fd) == 1  # one map, kept for the next restores
    offset = 0
    for payload in payloads:
        assert os.pread(seg.fd, len(payload), offset) == payload
        offset += -(-len(payload) // PAGE) * PAGE


async def test_a_freed_segment_is_unmapped(spiller, pool, store):
    entries, _ = spilled(spiller, [MIB])
    segment = pool.new_segment(0, 4 * MIB)
    seg = pool.get(segment)  # (held here: the map must not wait for the record's end)
    fd = os.dup(seg.fd)  # (to find its maps once the pool closed its own)
    try:
        await spiller.restore(restore_event(0, entries[0], segment), lambda: None)
        assert maps_of(fd) == 1
        pool.free_segment(segment)
        assert maps_of(fd) == 0  # else its memory stays allocated as long as the coordinator
        assert not seg.mapped
    finally:
        os.close(fd)


async def test_the_maps_go_once_restores_pause(spiller, pool, store, autojump_clock):
    entries, _ = spilled(spiller, [MIB, MIB])
    segment = pool.new_segment(0, 4 * MIB)
    seg = pool.get(segment)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spiller._unmap_when_idle)
        await spiller.restore(restore_event(0, entries[0], segment), lambda: None)
        await trio.sleep(MAP_IDLE / 2)
        await spiller.restore(restore_event(1, entries[1], segment, MIB), lambda: None)
        await trio.sleep(MAP_IDLE * 0.9)  # a restore began in the last period: kept
        assert seg.mapped
        await trio.sleep(MAP_IDLE * 1.2)
        assert not seg.mapped and maps_of(seg.fd) == 0
        await spiller.restore(restore_event(2, entries[0], segment, 2 * MIB), lambda: None)
        assert seg.mapped  # mapped again when needed
        await trio.sleep(MAP_IDLE * 2.1)
        assert not seg.mapped
        nursery.cancel_scope.cancel()
    assert [error for _, error, _ in store.outcomes] == [None, None, None]


@pytest.mark.parametrize("size", SIZES)
async def test_an_io_error_mid_read_is_reported_and_the_next_restore_works(
    spiller, pool, store, autojump_clock, size
):
    entries, payloads = spilled(spiller, [size])
    segment = pool.new_segment(0, 16 * MIB)
    seg = pool.get(segment)
    real = os.preadv
    calls = []

    def failing(fd: int, buffers: list, offset: int, flags: int = 0) -> int:
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers, offset, flags)

    fds = open_fds()
    with mock.patch.object(os, "preadv", failing):
        await spiller.restore(restore_event(0, entries[0], segment), lambda: None)
    assert len(calls) >= 2  # (it failed mid-read)
    [(_, error, lost)] = store.outcomes
    assert "Input/output error" in str(error) and not lost  # on disk still: retried later
    assert open_fds() == fds  # no spill file left open
    assert spiller._restoring == 0
    await spiller.restore(restore_event(1, entries[0], segment), lambda: None)
    assert store.outcomes[1] == (1, None, False)
    assert os.pread(seg.fd, size, 0) == payloads[0]
    async with trio.open_nursery() as nursery:  # the failure did not keep the maps for ever
        nursery.start_soon(spiller._unmap_when_idle)
        await trio.sleep(MAP_IDLE * 2.1)
        assert not seg.mapped
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("size", SIZES)
async def test_a_short_file_or_a_flipped_byte_loses_the_object(spiller, pool, store, size):
    entries, _ = spilled(spiller, [size])
    segment = pool.new_segment(0, 16 * MIB)
    path = Path(spiller.directory) / spill_files.file_name(1)
    with open(path, "r+b") as f:
        f.seek(entries[0].offset + size - 5)  # in the last part
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    await spiller.restore(restore_event(0, entries[0], segment), lambda: None)
    os.truncate(path, entries[0].offset + size // 2)
    await spiller.restore(restore_event(1, entries[0], segment), lambda: None)
    [(_, checksum, lost_1), (_, short, lost_2)] = store.outcomes
    assert "fails its checksum" in str(checksum) and lost_1
    assert "shorter" in str(short) and lost_2


def test_a_file_cut_short_while_it_is_read_is_damaged(spiller, pool):
    """The size is checked when the file is opened; one cut after that ends the read."""
    entries, _ = spilled(spiller, [MIB])
    path = Path(spiller.directory) / spill_files.file_name(1)
    target = memoryview(bytearray(MIB))
    real = os.preadv

    def cut_then_read(fd: int, buffers: list, offset: int, flags: int = 0) -> int:
        os.truncate(path, offset)
        return real(fd, buffers, offset, flags)

    with (
        mock.patch.object(os, "preadv", cut_then_read),
        pytest.raises(spill_files.SpillDamaged, match="ends early"),
    ):
        spill_files.read_into(spiller._dir, 1, entries[0], target)
