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
    maps.map_segments([one, two])
    assert not maps.fds and set(maps.segments) == {1, 2}
    assert maps.segments[2][:6] == b"second"
    with pytest.raises(TypeError):  # read-only: mapped as it was sent
        maps.segments[2][:1] = b"x"
    assert set(maps.filled) == {1, 2}
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
    maps.map_segments(infos)
    maps.unmap([2])  # closed before (or while) its turn comes: skipped
    assert maps.populator.join(timeout=60)
    assert resident(maps.segments[1]) == size
    maps.close()


def table_files(capacity: int) -> tuple[list[int], p.TablesInfo]:
    """The descriptors of a directory of ``capacity`` slots, its access bytes and a pin
    table, as the coordinator sends them, and their sizes."""
    sizes = (directory_size(capacity), capacity, pin_table_size(8))
    fds = []
    for n, size in enumerate(sizes):
        fd = memfd.memfd_create(f"plasma-test-{n}")
        os.ftruncate(fd, size)
        fds.append(fd)
    with mmap.mmap(fds[0], sizes[0]) as mm:
        Directory(mm, capacity)
    return fds, p.TablesInfo(*sizes)


def test_the_directory_and_access_bytes_are_populated_in_the_background() -> None:
    """A get reads a directory slot at random: no first read of a page of it faults."""
    fds, sizes = table_files(4096)
    maps = SegmentMaps(threading.RLock())
    maps.receive(fds)
    maps.map_tables(sizes)
    assert maps.populator.join(timeout=60)
    assert maps.reader is not None
    directory, access = maps.table_maps
    assert resident(directory) >= sizes.directory_size
    assert resident(access) >= sizes.access_size
    maps.close()


def test_a_directory_replaced_while_it_is_filled_is_closed_and_filled_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As for a dropped segment: the new directory's install marks the old maps' granules
    filled and waits for the one being filled, then closes them at once (left to their last
    view, a superseded directory stayed mapped, and was filled on, while the background
    worked through it)."""
    entered, release = threading.Event(), threading.Event()

    def slow(mm: mmap.mmap, start: int, length: int) -> bool:
        view = memoryview(mm)  # (as the real one holds it)
        entered.set()
        release.wait(60)
        view.release()
        return True

    monkeypatch.setattr(segment_maps, "POPULATE_GRANULE", PAGE)  # (several granules each)
    monkeypatch.setattr(segment_maps, "populate", slow)
    maps = SegmentMaps(threading.RLock())
    fds, sizes = table_files(4096)
    maps.receive(fds)
    maps.map_tables(sizes)
    old = list(maps.table_maps)
    assert entered.wait(60)
    fds, sizes = table_files(4096)
    maps.receive(fds)
    replacer = threading.Thread(target=maps.map_tables, args=(sizes,))
    replacer.start()
    replacer.join(0.5)  # (replacing without waiting would be done by now, the map open)
    replaced = threading.Event()
    late: list[mmap.mmap] = []  # filled after the replacement returned

    def record(mm: mmap.mmap, start: int, length: int) -> bool:
        if replaced.is_set():
            late.append(mm)
        return True

    monkeypatch.setattr(segment_maps, "populate", record)
    release.set()
    replacer.join(60)
    replaced.set()
    assert not replacer.is_alive() and all(mm.closed for mm in old)
    assert maps.populator.join(timeout=60)
    assert not any(mm in late for mm in old)  # nothing more of them
    maps.close()


def test_a_segment_larger_than_the_populate_bound_is_not_populated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A budget-sized segment (``serve --prefault budget``): no page table is filled in the
    background (only those of the objects a put creates in it)."""
    size = 256 * PAGE
    monkeypatch.setattr(segment_maps, "POPULATE_SEGMENT_MAX", size - PAGE)
    maps = SegmentMaps(threading.RLock())
    maps.receive([filled_segment(size)])
    maps.map_segments([p.SegmentInfo(id=1, size=size, node=0, page_size=PAGE)])
    assert maps.populator.join(timeout=60)
    assert resident(maps.segments[1]) == 0 and not any(maps.filled[1])
    maps.close()


def filled_segment(size: int) -> int:
    """A memfd of ``size`` bytes with its pages in (as the coordinator makes segments)."""
    fd = memfd.memfd_create("plasma-test-filled")
    os.ftruncate(fd, size)
    os.pwrite(fd, b"x" * size, 0)
    return fd


def drop_page_tables(mm: mmap.mmap) -> None:
    """Unmap every page of ``mm`` from this process's page tables (a shared map: the bytes
    stay in the memfd); the next access to each faults it back in."""
    mm.madvise(mmap.MADV_DONTNEED)
    assert resident(mm) == 0


def present(mm: mmap.mmap, start: int, stop: int) -> int:
    """Pages of ``mm[start:stop]`` this process's page tables map now (/proc/self/pagemap)."""
    address = np.frombuffer(mm, np.uint8).ctypes.data + start
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(address // PAGE * 8)
        entries = np.frombuffer(pagemap.read((stop - start) // PAGE * 8), np.uint64)
    return int(np.count_nonzero(entries >> np.uint64(63)))


def test_a_large_object_in_a_lazy_segment_fills_its_granules_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its range's page tables are filled when it is created (a whole granule each side),
    and a later object in granules filled before fills nothing again (a reused segment:
    each walk over pages already mapped costs a third of a copy of them). (Fault-around may
    map a few pages past a granule's edge: counts allow less than a granule there.)"""
    granule = segment_maps.POPULATE_GRANULE
    pages = granule // PAGE
    size = 8 * granule
    monkeypatch.setattr(segment_maps, "POPULATE_SEGMENT_MAX", size - PAGE)
    maps = SegmentMaps(threading.RLock())
    maps.receive([filled_segment(size)])
    maps.map_segments([p.SegmentInfo(id=1, size=size, node=0, page_size=PAGE)])
    mm = maps.segments[1]
    assert resident(mm) == 0  # too large to populate whole
    big = segment_maps.POPULATE_OBJECT_MIN

    def write(offset: int, size: int) -> None:
        where = p.ObjectLocation(segment=1, offset=offset, data_size=size, metadata_size=0, node=0)
        maps.write_object(where, b"").release()

    write(granule + PAGE, big)  # inside granule 1
    assert present(mm, granule, 2 * granule) == pages
    assert resident(mm) < 2 * granule and bytes(maps.filled[1]) == b"\0\2" + b"\0" * 6
    drop_page_tables(mm)
    write(granule + big, 2 * granule)  # granule 1 again (another offset in it), 2 and 3
    assert present(mm, 2 * granule, 4 * granule) == 2 * pages
    assert present(mm, granule, 2 * granule) < pages // 2  # filled before: not again
    assert bytes(maps.filled[1]) == b"\0\2\2\2" + b"\0" * 4
    write(0, big - 1)  # below POPULATE_OBJECT_MIN: left to fault
    assert present(mm, 0, granule) < pages // 2 and maps.filled[1][0] == 0
    maps.close()


def test_a_segment_populated_in_the_background_is_not_filled_again() -> None:
    """Received to read (filled in the background), then written into by this client."""
    size = 4 * segment_maps.POPULATE_GRANULE
    maps = SegmentMaps(threading.RLock())
    maps.receive([filled_segment(size)])
    maps.map_segments([p.SegmentInfo(id=1, size=size, node=0, page_size=PAGE)])
    assert maps.populator.join(timeout=60)
    assert bytes(maps.filled[1]) == b"\2" * 4
    drop_page_tables(maps.segments[1])
    where = p.ObjectLocation(segment=1, offset=0, data_size=size, metadata_size=0, node=0)
    maps.write_object(where, b"").release()
    assert resident(maps.segments[1]) == 0
    maps.close()


def maps_holding_back_the_populator(
    size: int,
) -> tuple[SegmentMaps, list[tuple[mmap.mmap, bytearray]]]:
    """Maps with segment 1 (``size`` bytes, its pages in) mapped, and what they gave their
    Populator to fill kept back in the list returned, for the test to run when it chooses."""
    queued: list[tuple[mmap.mmap, bytearray]] = []
    maps = SegmentMaps(threading.RLock())
    maps.populator.add = lambda mm, filled: queued.append((mm, filled))  # type: ignore[method-assign]
    maps.receive([filled_segment(size)])
    maps.map_segments([p.SegmentInfo(id=1, size=size, node=0, page_size=PAGE)])
    return maps, queued


def test_a_put_fills_its_granules_and_the_background_fills_the_others() -> None:
    """A small segment received with a created object: the object's granule is filled by
    the put (before its copy), the others by the Populator, which skips the put's."""
    granule = segment_maps.POPULATE_GRANULE
    size = 4 * granule
    maps, queued = maps_holding_back_the_populator(size)
    mm = maps.segments[1]
    assert resident(mm) == 0 and queued == [(mm, maps.filled[1])]  # mapped at once
    big = segment_maps.POPULATE_OBJECT_MIN
    where = p.ObjectLocation(segment=1, offset=granule, data_size=big, metadata_size=0, node=0)
    maps.write_object(where, b"").release()
    assert present(mm, granule, 2 * granule) == granule // PAGE
    drop_page_tables(mm)
    populator = segment_maps.Populator()
    populator.add(*queued[0])
    assert populator.join(timeout=60)
    assert bytes(maps.filled[1]) == b"\2" * 4
    assert present(mm, 0, granule) == granule // PAGE
    assert present(mm, 2 * granule, size) == 2 * granule // PAGE
    assert present(mm, granule, 2 * granule) < granule // PAGE // 2  # the put's: skipped
    maps.close()


def test_a_put_fills_a_granule_the_background_is_filling_and_unmapping_stops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A granule the Populator marked FILLING is not filled yet: a put into it fills it
    itself rather than write page by page. A segment unmapped has its granules marked
    FILLED, so that a Populator still at it fills nothing more of it (the coordinator has
    punched its pages out: filling them would allocate them again)."""
    granule = segment_maps.POPULATE_GRANULE
    size = 4 * granule
    maps, queued = maps_holding_back_the_populator(size)
    mm, filled = queued[0]
    filled[1] = segment_maps.FILLING  # (as the Populator does before its call)
    where = p.ObjectLocation(segment=1, offset=granule, data_size=granule, metadata_size=0, node=0)
    maps.write_object(where, b"").release()
    assert present(mm, granule, 2 * granule) == granule // PAGE
    assert filled[1] == segment_maps.FILLED
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(segment_maps, "populate", lambda mm, start, n: calls.append((start, n)))
    maps.unmap([1])
    assert bytes(filled) == bytes([segment_maps.FILLED]) * 4
    populator = segment_maps.Populator()
    populator.add(mmap.mmap(-1, size), filled)  # (a map still open, as it was when queued)
    assert populator.join(timeout=60)
    assert calls == []
    maps.close()


def test_a_segment_received_to_write_into_is_writable() -> None:
    maps = SegmentMaps(threading.RLock())
    info, fd = segment(3)
    maps.receive([fd])
    maps.map_segments([info])
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
        maps.map_segments([info])
    assert not maps.segments


def test_a_descriptor_that_cannot_be_mapped_is_refused_and_closed() -> None:
    maps = SegmentMaps(threading.RLock())
    info, fd = segment(5)
    os.close(fd)
    read_end, write_end = os.pipe()  # not a segment: mmap(2) refuses it
    maps.receive([read_end])
    with pytest.raises(OSError):
        maps.map_segments([info])
    assert 5 not in maps.segments and not fd_open(read_end)
    os.close(write_end)
    maps.close()


def test_dropped_segments_are_unmapped_and_their_descriptors_closed() -> None:
    maps = SegmentMaps(threading.RLock())
    (one, fd1), (two, fd2) = segment(1), segment(2)
    maps.receive([fd1, fd2])
    maps.map_segments([one, two])
    kept = maps.segment_fds[1][0]
    dropped = maps.segments[1]
    maps.unmap([1, 99])  # (an unknown one: nothing to do)
    assert set(maps.segments) == {2} and 1 not in maps.filled and 1 not in maps.segment_fds
    assert dropped.closed and not fd_open(kept)
    maps.close()


def test_unmapping_waits_for_the_granule_being_filled_then_closes_the_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The background fill holds a view of the map during its call (so that the map cannot
    be unmapped under it); unmapping waits for that call, then closes the map."""
    entered, release = threading.Event(), threading.Event()

    def slow(mm: mmap.mmap, start: int, length: int) -> bool:
        view = memoryview(mm)  # (as the real one holds it)
        entered.set()
        release.wait(60)
        view.release()
        return True

    monkeypatch.setattr(segment_maps, "populate", slow)
    maps = SegmentMaps(threading.RLock())
    info, fd = segment(1)
    maps.receive([fd])
    maps.map_segments([info])
    dropped = maps.segments[1]
    assert entered.wait(60)
    unmapper = threading.Thread(target=maps.unmap, args=([1],))
    unmapper.start()
    unmapper.join(0.5)  # (unmapping without waiting would be done by now, the map open)
    release.set()
    unmapper.join(60)
    assert not unmapper.is_alive() and dropped.closed
    assert maps.populator.join(timeout=60)
    maps.close()


def test_a_segment_still_viewed_is_left_for_its_view_to_unmap() -> None:
    maps = SegmentMaps(threading.RLock())
    info, fd = segment(1)
    maps.receive([fd])
    maps.map_segments([info])
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
