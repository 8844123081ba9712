"""The client core's segment maps alone: descriptors in, maps out, no coordinator."""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from plasma import protocol as p
from plasma._client_core import segment_maps
from plasma._client_core.segment_maps import SegmentMaps
from plasma.directory import Directory, directory_size, pin_table_size
from plasma.errors import PlasmaError
from plasma.linux import memfd

PAGE = mmap.PAGESIZE


def segment(id: int, *, writable: bool = True) -> tuple[p.SegmentInfo, int]:
    fd = memfd.memfd_create(f"plasma-test-{id}")
    os.ftruncate(fd, 4 * PAGE)
    info = p.SegmentInfo(id=id, size=4 * PAGE, node=0, page_size=PAGE)
    info.writable = writable
    return info, fd


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_each_segment_takes_the_next_descriptor_and_keeps_a_copy() -> None:
    maps = SegmentMaps(threading.RLock())
    (one, fd1), (two, fd2) = segment(1), segment(2, writable=False)
    os.pwrite(fd2, b"second", 0)
    maps.receive([fd1, fd2])
    maps.map_segments([one, two], for_writing=False)
    assert not maps.fds and set(maps.segments) == {1, 2}
    assert maps.segments[2][:6] == b"second"
    with pytest.raises(TypeError):  # read-only: mapped as it was sent
        maps.segments[2][:1] = b"x"
    assert maps.lazy == {1, 2}  # received to read: mapped lazily
    assert {s: page for s, (_, page) in maps.segment_fds.items()} == {1: PAGE, 2: PAGE}
    maps.close()
    assert not maps.segments and not maps.segment_fds


def resident(mm: mmap.mmap) -> int:
    """Bytes of ``mm`` this process's page tables map now (its Rss in /proc/self/smaps)."""
    address = np.frombuffer(mm, np.uint8).ctypes.data
    smaps = Path("/proc/self/smaps").read_text().split("\n")
    for i, line in enumerate(smaps):
        span = line.split(" ", 1)[0]
        if "-" in span and int(span.split("-")[0], 16) == address:
            rss = next(row for row in smaps[i + 1 :] if row.startswith("Rss:"))
            return int(rss.split()[1]) * 1024
    raise AssertionError("the map is not in /proc/self/smaps")


def test_a_segment_received_to_read_from_is_populated_in_the_background() -> None:
    """Its page tables are filled (no page of a later object faults on its first read),
    without the map waiting for it; one closed meanwhile is skipped."""
    size = 256 * PAGE
    fds = []
    for n in (1, 2):
        fd = memfd.memfd_create(f"plasma-test-{n}")
        os.ftruncate(fd, size)
        os.pwrite(fd, b"x" * size, 0)  # the coordinator fills its segments' pages in
        fds.append(fd)
    maps = SegmentMaps(threading.RLock())
    maps.receive(fds)
    infos = [p.SegmentInfo(id=n, size=size, node=0, page_size=PAGE) for n in (1, 2)]
    maps.map_segments(infos, for_writing=False)
    maps.unmap([2])  # closed before (or while) its turn comes: skipped
    assert maps.populator.join(timeout=60)
    assert resident(maps.segments[1]) == size
    maps.close()


def test_the_directory_and_access_bytes_are_populated_in_the_background() -> None:
    """A get reads a directory slot at random: no first read of a page of it faults."""
    capacity = 4096
    sizes = (directory_size(capacity), capacity, pin_table_size(8))
    fds = []
    for n, size in enumerate(sizes):
        fd = memfd.memfd_create(f"plasma-test-{n}")
        os.ftruncate(fd, size)
        fds.append(fd)
    with mmap.mmap(fds[0], sizes[0]) as mm:
        Directory(mm, capacity)
    maps = SegmentMaps(threading.RLock())
    maps.receive(fds)
    maps.map_tables(p.TablesInfo(*sizes))
    assert maps.populator.join(timeout=60)
    assert maps.reader is not None
    directory, access = maps.table_maps
    assert resident(directory) >= sizes[0] and resident(access) >= sizes[1]
    maps.close()


def test_a_segment_larger_than_the_populate_bound_is_mapped_lazily_either_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A budget-sized segment (``serve --prefault budget``): neither mapped populated to
    write into nor populated in the background to read from."""
    size = 256 * PAGE
    monkeypatch.setattr(segment_maps, "POPULATE_SEGMENT_MAX", size - PAGE)
    fds = []
    for n in (1, 2):
        fd = memfd.memfd_create(f"plasma-test-{n}")
        os.ftruncate(fd, size)
        os.pwrite(fd, b"x" * size, 0)
        fds.append(fd)
    maps = SegmentMaps(threading.RLock())
    maps.receive(fds)
    read, write = (p.SegmentInfo(id=n, size=size, node=0, page_size=PAGE) for n in (1, 2))
    maps.map_segments([read], for_writing=False)
    maps.map_segments([write], for_writing=True)
    assert maps.populator.join(timeout=60)
    assert maps.lazy == {1, 2}
    assert resident(maps.segments[1]) == resident(maps.segments[2]) == 0
    maps.close()


def test_a_segment_received_to_write_into_is_populated_and_writable() -> None:
    maps = SegmentMaps(threading.RLock())
    info, fd = segment(3)
    maps.receive([fd])
    maps.map_segments([info], for_writing=True)
    assert 3 not in maps.lazy
    where = p.ObjectLocation(segment=3, offset=PAGE, data_size=5, metadata_size=2, node=0)
    view = maps.write_object(where, b"md")
    view[:] = b"hello"
    view.release()
    assert maps.segments[3][PAGE : PAGE + 7] == b"hellomd"
    maps.close()


def test_a_segment_without_its_descriptor_is_refused() -> None:
    maps = SegmentMaps(threading.RLock())
    info, fd = segment(4)
    os.close(fd)
    with pytest.raises(PlasmaError, match="segment 4 arrived without its file descriptor"):
        maps.map_segments([info], for_writing=False)
    assert not maps.segments


def test_a_descriptor_that_cannot_be_mapped_is_refused_and_closed() -> None:
    maps = SegmentMaps(threading.RLock())
    info, fd = segment(5)
    os.close(fd)
    read_end, write_end = os.pipe()  # not a segment: mmap(2) refuses it
    maps.receive([read_end])
    with pytest.raises(OSError):
        maps.map_segments([info], for_writing=False)
    assert 5 not in maps.segments and not fd_open(read_end)
    os.close(write_end)
    maps.close()


def test_dropped_segments_are_unmapped_and_their_descriptors_closed() -> None:
    maps = SegmentMaps(threading.RLock())
    (one, fd1), (two, fd2) = segment(1), segment(2)
    maps.receive([fd1, fd2])
    maps.map_segments([one, two], for_writing=False)
    kept = maps.segment_fds[1][0]
    dropped = maps.segments[1]
    maps.unmap([1, 99])  # (an unknown one: nothing to do)
    assert set(maps.segments) == {2} and 1 not in maps.lazy and 1 not in maps.segment_fds
    assert dropped.closed and not fd_open(kept)
    maps.close()


def test_a_segment_still_viewed_is_left_for_its_view_to_unmap() -> None:
    maps = SegmentMaps(threading.RLock())
    info, fd = segment(1)
    maps.receive([fd])
    maps.map_segments([info], for_writing=True)
    view = memoryview(maps.segments[1])
    maps.unmap([1])  # (no error: the view keeps it)
    assert not maps.segments
    view[:2] = b"ok"
    view.release()


def test_tables_without_their_descriptors_are_refused() -> None:
    maps = SegmentMaps(threading.RLock())
    tables = p.TablesInfo(directory_size=PAGE, access_size=PAGE, pin_size=0)
    fd = memfd.memfd_create("plasma-test-dir")
    maps.receive([fd])
    with pytest.raises(PlasmaError, match="without its file descriptors"):
        maps.map_tables(tables)
    os.close(fd)


def test_a_directory_it_cannot_read_leaves_requests_and_replaces_the_old_maps() -> None:
    maps = SegmentMaps(threading.RLock())
    first = [mmap.mmap(-1, PAGE), mmap.mmap(-1, PAGE)]
    maps.install_tables(*first, mmap.mmap(-1, PAGE))
    assert maps.reader is None  # zeros are no directory layout this client knows
    assert maps.pins is not None and maps.table_maps == first
    second = [mmap.mmap(-1, PAGE), mmap.mmap(-1, PAGE)]
    pins = maps.pins
    maps.install_tables(*second, None)
    assert all(mm.closed for mm in first) and maps.table_maps == second
    assert maps.pins is pins  # no new pin table sent: the one there stays
    maps.close()
    assert maps.pins is None and maps.pin_map is None and all(mm.closed for mm in second)
