"""Memory faulted in ahead of need (``serve --prefault``): the pool's spare segments, the
coordinator that keeps them ready, and a client's first write into a fresh segment."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

import plasma
from plasma._client_core import segment_maps
from plasma.cli import build_parser
from plasma.cli.serve import config_from_args
from plasma.coordinator import Coordinator
from plasma.coordinator.spares import fits_in_free_memory
from plasma.segments import SegmentPool
from tests.conftest import RunningCoordinator, wait_until
from tests.helpers import MIB

PAGE = 4096


def allocated(fd: int) -> int:
    """Bytes of a memfd whose pages exist (faulted in or fallocated)."""
    return os.fstat(fd).st_blocks * 512


@contextlib.contextmanager
def closes() -> Iterator[list[int]]:
    """The descriptors closed within the block (a closed fd's number is soon reused, so
    it cannot be checked afterwards)."""
    closed: list[int] = []
    real = os.close

    def close(fd: int) -> None:
        closed.append(fd)
        real(fd)

    with mock.patch.object(os, "close", close):
        yield closed


def ready_spare(pool: SegmentPool, node: int, size: int) -> int:
    """Prepare a spare for ``node`` and wait for it; its fd."""
    pool.prepare_spare(node, size).result()
    pool.collect_spare(node)
    return pool._spares[node].fd


def test_a_segment_taken_from_a_spare_is_not_faulted_in_on_the_request_path():
    pool = SegmentPool(bind=False)
    try:
        fd = ready_spare(pool, 0, 4 * MIB)
        assert allocated(fd) >= 4 * MIB  # populated ahead of need, in the worker
        assert pool.spares() == {0: 4 * MIB}
        with mock.patch.object(SegmentPool, "_populated", side_effect=AssertionError("faulted")):
            seg = pool.get(pool.new_segment(0, 4 * MIB))
        assert seg.fd == fd and seg.size == 4 * MIB and pool.spares() == {}
        assert pool.spares_changed  # (the coordinator prepares the next one)
        with pytest.raises(OSError):  # its size is sealed now, as every segment's
            os.ftruncate(fd, 8 * MIB)
    finally:
        pool.close()


def test_a_larger_spare_gives_back_its_tail_and_a_smaller_one_is_dropped():
    pool = SegmentPool(bind=False)
    try:
        ready_spare(pool, 0, 8 * MIB)
        seg = pool.get(pool.new_segment(0, 2 * MIB))
        assert os.fstat(seg.fd).st_size == 2 * MIB and allocated(seg.fd) <= 2 * MIB
        small = ready_spare(pool, 0, MIB)
        with closes() as closed:  # too small: dropped, a new one made
            seg = pool.get(pool.new_segment(0, 4 * MIB))
        assert seg.size == 4 * MIB and allocated(seg.fd) >= 4 * MIB
        assert pool.spares() == {}
        assert closed == [small]  # its memory went back, not kept beside the new segment
    finally:
        pool.close()


def test_a_create_waits_for_the_spare_being_prepared_rather_than_making_a_second():
    pool = SegmentPool(bind=False)
    made = []
    real = SegmentPool._populated

    def counting(self: SegmentPool, name: str, node: int, size: int) -> object:
        made.append(size)
        return real(self, name, node, size)

    try:
        with mock.patch.object(SegmentPool, "_populated", counting):
            pool.prepare_spare(0, 4 * MIB)
            seg = pool.get(pool.new_segment(0, 4 * MIB))
        assert made == [4 * MIB] and seg.size == 4 * MIB and pool.preparing() == []
    finally:
        pool.close()


def test_a_spare_that_no_longer_fits_its_room_is_given_back():
    pool = SegmentPool(bind=False)
    try:
        future = pool.prepare_spare(0, 4 * MIB)
        future.result()
        pool.spares_changed = False
        with closes() as closed:
            pool.collect_spare(0, room=2 * MIB)
        assert pool.spares() == {} and pool.spares_changed
        assert closed == [future.result().fd]
    finally:
        pool.close()


def test_a_spare_that_cannot_be_made_is_reported_and_creates_still_work():
    pool = SegmentPool(bind=False)
    try:
        with mock.patch.object(SegmentPool, "_populated", side_effect=OSError(12, "no memory")):
            pool.prepare_spare(0, 4 * MIB)
            pool.collect_spare(0)
        assert "no memory" in pool.spare_error and pool.spares() == {}
        seg = pool.get(pool.new_segment(0, 4 * MIB))
        assert allocated(seg.fd) >= 4 * MIB
    finally:
        pool.close()


def test_closing_the_pool_closes_its_spares():
    pool = SegmentPool(bind=False)
    fd = ready_spare(pool, 0, MIB)
    other = pool.prepare_spare(1, MIB)  # (still being made, maybe)
    with closes() as closed:
        pool.close()
    assert fd in closed and (other.cancelled() or other.result().fd in closed)
    assert pool.spares() == {} and pool.preparing() == []


def test_free_memory_decides_whether_a_whole_budget_fits(tmp_path):
    node = tmp_path / "sys/devices/system/node/node0"
    node.mkdir(parents=True)
    (node / "meminfo").write_text("Node 0 MemTotal: 8388608 kB\nNode 0 MemFree: 4194304 kB\n")
    assert fits_in_free_memory(2 << 30, 0, str(tmp_path))
    assert not fits_in_free_memory((2 << 30) + 4096, 0, str(tmp_path))
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 8388608 kB\nMemAvailable: 1048576 kB\n")
    assert fits_in_free_memory(512 << 20, 1, str(tmp_path))  # no node 1: the whole machine
    assert not fits_in_free_memory(1 << 30, 1, str(tmp_path))
    assert not fits_in_free_memory(1, 0, str(tmp_path / "nowhere"))  # cannot tell: no


def test_a_budget_that_does_not_fit_falls_back_to_one_spare_segment(tmp_path):
    args = ["serve", "--socket", str(tmp_path / "s.sock"), "--prefault", "budget"]
    config = config_from_args(build_parser("serve").parse_args([*args, "--memory", "64TiB"]))
    coordinator = Coordinator(config)
    try:
        assert coordinator.prefault == "segment" and coordinator.spares is not None
    finally:
        coordinator.pool.close()
        coordinator.tables.close()


def test_a_spare_is_the_size_the_store_asks_for_a_segment(tmp_path):
    """Whole pages, as the store rounds ``--segment-size`` (a spare one byte short would be
    dropped by every create it was made for)."""
    args = ["serve", "--socket", str(tmp_path / "s.sock"), "--segment-size", "1000000"]
    coordinator = Coordinator(config_from_args(build_parser("serve").parse_args(args)))
    try:
        assert coordinator.spares is not None
        assert coordinator.spares.wanted_sizes() == {0: 1003520}  # 245 pages
    finally:
        coordinator.pool.close()
        coordinator.tables.close()


def spares(client: plasma.Client) -> dict:
    found: dict = client.stats()["spares"]
    return found


def test_the_coordinator_keeps_a_spare_segment_ready(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> None:
    coord = coordinator_factory("--memory", "16MiB", "--segment-size", "4MiB")
    with plasma.connect(coord.socket) as client:
        wait_until(lambda: spares(client)["ready"] == {0: 4 * MIB}, what="the first spare")
        assert spares(client)["prefault"] == "segment"
        client.put(np.ones(MIB // 8))  # takes the spare
        wait_until(lambda: spares(client)["ready"] == {0: 4 * MIB}, what="the next spare")
        assert len(client.stats()["segments"]) == 1
        for _ in range(3):  # the budget is taken: no room for another spare
            client.put(np.ones(3 * MIB // 8))
        stats = client.stats()
        assert sum(s["size"] for s in stats["segments"]) == 16 * MIB
        assert stats["spares"]["ready"] == {} and stats["spares"]["preparing"] == []


def test_prefault_budget_makes_the_whole_budget_one_segment_ready_at_start(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> None:
    coord = coordinator_factory("--memory", "16MiB", "--prefault", "budget")
    with plasma.connect(coord.socket) as client:
        wait_until(lambda: spares(client)["ready"] == {0: 16 * MIB}, what="the budget")
        client.put(np.ones(1000))
        stats = client.stats()
        assert [s["size"] for s in stats["segments"]] == [16 * MIB]
        assert stats["spares"]["ready"] == {} and stats["spares"]["preparing"] == []


def test_prefault_off_prepares_nothing(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> None:
    coord = coordinator_factory("--memory", "16MiB", "--prefault", "off")
    with plasma.connect(coord.socket) as client:
        client.put(np.ones(1000))
        assert spares(client) == {"prefault": "off", "ready": {}, "preparing": [], "error": ""}


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


@pytest.mark.parametrize("prefault", ["segment", "budget"])
def test_a_clients_first_write_into_a_fresh_segment_does_not_fault_page_by_page(
    coordinator_factory: Callable[..., RunningCoordinator], prefault: str
) -> None:
    """The page tables of the object's range of the client's mapping are filled before
    the create returns, in a segment of the segment size (whose other pages are filled in
    the background) as in a whole budget. Writing every page then takes (almost) no page
    fault."""
    coord = coordinator_factory(
        "--memory", "256MiB", "--segment-size", "32MiB", "--prefault", prefault
    )
    size = 8 * MIB
    source = np.full(size, 7, dtype=np.uint8)
    with plasma.connect(coord.socket, copy_threads=1) as client:
        wait_until(lambda: spares(client)["ready"], what="a spare")
        oid = plasma.ObjectID.from_random()
        buf = np.frombuffer(client.create(oid, size), dtype=np.uint8)
        before = minor_faults()
        buf[:] = source
        faults = minor_faults() - before
        del buf
        client.seal(oid)
        assert faults < size // PAGE // 16, f"{faults} faults writing {size // PAGE} pages"
        [segment] = client.stats()["segments"]
        assert segment["size"] == (256 * MIB if prefault == "budget" else 32 * MIB)


def test_a_clients_writes_into_a_fresh_arena_do_not_fault_page_by_page(
    coordinator_factory: Callable[..., RunningCoordinator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The arena's page tables are filled when it is granted: small objects written into
    it take (almost) no page fault. (The background fill of whole segments is turned off
    here: only the arena's own fill can have filled them.)"""
    monkeypatch.setattr(segment_maps, "POPULATE_SEGMENT_MAX", 0)
    coord = coordinator_factory("--memory", "64MiB", "--segment-size", "32MiB")
    item = 64 * 1024
    with plasma.connect(coord.socket, copy_threads=1) as client:
        client.create_and_seal(plasma.ObjectID.from_random(), b"x" * item)  # (the arena)
        data = [bytes([i]) * item for i in range(8)]
        before = minor_faults()
        for chunk in data:
            client.create_and_seal(plasma.ObjectID.from_random(), chunk)
        faults = minor_faults() - before
        assert faults < len(data) * item // PAGE // 4, f"{faults} faults writing 8 objects"


def test_the_serve_option_is_checked(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        build_parser("serve").parse_args(["serve", "--prefault", "everything"])
