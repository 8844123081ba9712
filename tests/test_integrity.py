"""Where features meet, with a real coordinator: the crash, leak and corruption paths of the
round-3 audits (issue 26), each reproduced; sans-I/O ones are in test_store_integrity.py."""

from __future__ import annotations

import errno
import mmap
import os
import socket
from collections.abc import Callable

import numpy as np
import pytest

import plasma
from plasma import protocol as p
from plasma._client_core import fast_path
from plasma._client_core.fast_path import NATIVE, PYTHON, ReadPath
from plasma.directory import DirectoryReader
from tests.conftest import RunningCoordinator, start_coordinator, wait_until
from tests.helpers import READ_ONLY_UID, RawClient, needs_root, oid, result, run_as

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures

Factory = Callable[..., RunningCoordinator]


def shrink(fd: int) -> str:
    """What ``ftruncate(fd, 0)`` did: "shrunk", or the errno's name."""
    try:
        os.ftruncate(fd, 0)
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    return "shrunk"


def alive_after_scans(coord: RunningCoordinator) -> None:
    """Make the coordinator scan every pin table (a delete, a listing) and answer."""
    with plasma.connect(coord.socket) as c:
        ids = [c.put(np.arange(1000)) for _ in range(3)]
        held = c.get(ids[0])
        c.delete(ids)  # one pinned: its delete waits for rescans
        assert not set(ids) & set(c.list())
        del held
        c.flush()
        assert c.stats()["dying"] == 0
    assert coord.proc.poll() is None


def test_no_file_a_client_was_given_can_be_shrunk(
    coordinator: RunningCoordinator, read_path: ReadPath
):
    """Finding 1: shrinking the pin table (or the access bytes, a segment) made the
    coordinator's next pin scan, and every reader, die of SIGBUS."""
    with RawClient(coordinator.socket) as raw, plasma.connect(coordinator.socket) as c:
        connected = raw.connect()
        assert connected.tables is not None
        directory, access, pins = raw.take_fds()
        c.create_and_seal(oid(1), b"x" * 100_000)
        c.flush()
        got = raw.request(p.Get(seq=0, ids=[oid(1)], timeout=5))
        assert isinstance(got, p.Got)
        (segment,) = raw.take_fds()
        outcome = {name: shrink(fd) for name, fd in [("pins", pins), ("access", access)]}
        outcome["segment"] = shrink(segment)
        outcome["directory"] = shrink(directory)  # read-only: not even writable
        assert outcome == {
            "pins": "EPERM",
            "access": "EPERM",
            "segment": "EPERM",
            "directory": "EINVAL",
        }
        for fd in (directory, access, pins, segment):
            os.close(fd)
        # and a client's own map of its pin table cannot be resized either (the kernel
        # refuses; the C read path's buffer export refuses first)
        with pytest.raises(BufferError if read_path is NATIVE else OSError):
            c._core.maps.pin_map.resize(64)  # type: ignore[union-attr]
        alive_after_scans(coordinator)


_SHRINK_AS_READER = """
path = sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.sendall(p.encode(p.Connect(seq=1, protocol_version=p.PROTOCOL_VERSION)))
decoder = p.FrameDecoder(p.Reply, 1 << 30)
fds = []
while decoder.next_message() is None:
    data, anc, flags, _ = s.recvmsg(1 << 16, socket.CMSG_SPACE(16 * 4))
    fds.extend(received_fds(anc, flags))
    decoder.feed(data)
directory, pins = fds
attempt("pins", lambda: os.ftruncate(pins, 0))
attempt("directory", lambda: os.ftruncate(directory, 0))
done()
"""


@needs_root
def test_a_read_only_other_uid_cannot_shrink_its_pin_table(public_dir: str):
    """Finding 1, as the audit found it: any client, even a read-only other uid."""
    coord = start_coordinator(
        os.path.join(public_dir, "plasma.sock"),
        *("--memory", "32MiB", "--allow-uid", str(READ_ONLY_UID)),
    )
    try:
        outcome = result(run_as(READ_ONLY_UID, _SHRINK_AS_READER, coord.socket))
        assert outcome == {"pins": "EPERM", "directory": "EINVAL"}
        alive_after_scans(coord)
    finally:
        assert coord.stop() == 0


def test_pages_of_a_shrunk_map_cannot_fault_the_coordinator(
    coordinator: RunningCoordinator, read_path: ReadPath
):
    """mmap.resize on the client's own maps is how the audit shrank the files: each is
    refused (by the kernel; the maps the C read path holds by their buffer exports first),
    and the coordinator keeps serving."""
    with plasma.connect(coordinator.socket) as c:
        c.put(np.ones(1 << 16))
        core = c._core
        # (the background fill of a segment's page tables holds a view of its map meanwhile,
        # which refuses a resize too, with BufferError: wait until it is done)
        assert core.maps.populator.join(timeout=60)
        _, access = core.maps.table_maps
        for mm, held in [
            *((segment, False) for segment in core.maps.segments.values()),
            (access, read_path is NATIVE),
            (core.maps.pin_map, read_path is NATIVE),
        ]:  # (the directory: read-only)
            assert isinstance(mm, mmap.mmap)
            if held:
                with pytest.raises(BufferError):
                    mm.resize(mmap.PAGESIZE)
                continue
            with pytest.raises(OSError) as refused:
                mm.resize(mmap.PAGESIZE)
            assert refused.value.errno == errno.EPERM
    alive_after_scans(coordinator)


def test_a_dropped_segment_s_pages_are_given_back_at_once():
    """Finding 5: segments the coordinator dropped stayed mapped, their memory taken, in
    every client that mapped them: the pool punches their pages out before closing them."""
    from plasma.segments import SegmentPool

    pool = SegmentPool(bind=False)
    segment = pool.new_segment(0, 1 << 20)
    kept = os.dup(pool.get(segment).fd)  # what a client's map keeps alive
    try:
        assert os.fstat(kept).st_blocks * 512 >= 1 << 20  # pre-faulted
        pool.free_segment(segment)
        assert os.fstat(kept).st_blocks == 0
    finally:
        os.close(kept)
        pool.close()


def memfds_mapped() -> set[tuple[str, str]]:
    """The plasma memfds this process maps (inode and name: a name may be reused)."""
    with open("/proc/self/maps") as maps:
        return {
            (line.split()[4], line.split()[-2])
            for line in maps
            if "memfd:plasma-" in line and "(deleted)" in line
        }


@pytest.mark.parametrize("kind", ["blocking", "trio"])
def test_clients_unmap_the_segments_the_coordinator_dropped(coordinator_factory: Factory, kind):
    """Finding 5: fill, delete, put a big object (which takes the room of the emptied
    segments): the client unmaps the segments that were dropped."""
    import trio

    import plasma.aio

    coord = coordinator_factory("--memory", "64MiB", "--segment-size", "4MiB")
    small = [np.full(3 << 20, n, np.uint8) for n in range(12)]
    mapped_before = memfds_mapped()  # (what other tests of this process may have left)

    def blocking() -> tuple[int, int]:
        with plasma.connect(coord.socket) as c:
            ids = [c.put(a) for a in small]
            before = len(c._core.maps.segments)
            c.delete(ids)
            c.flush()
            big = c.put(np.ones(48 << 20, np.uint8))
            c.flush()
            assert c.get_object(big)[-1] == 1
            return before, len(c._core.maps.segments)

    async def with_trio() -> tuple[int, int]:
        async with plasma.aio.connect(coord.socket) as c:
            ids = [await c.put(a) for a in small]
            before = len(c._core.maps.segments)
            await c.delete(ids)
            await c.flush()
            big = await c.put(np.ones(48 << 20, np.uint8))
            await c.flush()
            assert (await c.get_object(big))[-1] == 1
            return before, len(c._core.maps.segments)

    before, after = blocking() if kind == "blocking" else trio.run(with_trio)
    assert before >= 12 and after <= 4, (before, after)
    assert memfds_mapped() <= mapped_before  # the clients closed: nothing left mapped
    assert coord.stop() == 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_clients_hold_no_directory_and_the_coordinator_no_descriptors(
    coordinator_factory: Factory,
):
    """Finding 6: every rebuild sent each client the new directory's descriptors, and a
    client that was not reading piled them up (in its socket and in the coordinator's
    queue): tables now go only to a client that asks, at most one set in flight."""
    coord = coordinator_factory("--memory", "256MiB")
    idle = [plasma.connect(coord.socket) for _ in range(3)]
    try:
        with plasma.connect(coord.socket) as c:
            first = c.put(b"first")
            assert bytes(c.get(first)) == b"first"  # the fast path works
            start = fd_count(coord.proc.pid)
            n = 0
            while c.stats()["directory"]["rebuilds"] < 3:
                ids = [oid(10_000_000 + n + i) for i in range(4000)]
                n += 4000
                c.create_and_seal_many([(i, b"x", b"") for i in ids])
                c.delete(ids)
            assert fd_count(coord.proc.pid) <= start + 2
            gets = c.stats()["operations"].get("Get", 0)
            for _ in range(2):  # the first finds its directory superseded and asks
                assert bytes(c.get(first)) == b"first"
            second = c.put(b"second")
            c.flush()
            assert bytes(c.get(second)) == b"second"
            ops = c.stats()["operations"]
            assert ops["Tables"] == 1 and ops.get("Get", 0) <= gets + 2
        for client in idle:  # nothing was sent to them
            with pytest.raises(BlockingIOError):
                client._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        assert bytes(idle[0].get(second)) == b"second"  # served, by request or directory
    finally:
        for client in idle:
            client.close()
    assert coord.stop() == 0


def rebuild(c: plasma.Client, base: int) -> None:
    """Churn small objects until the directory is rebuilt once more."""
    rebuilds = c.stats()["directory"]["rebuilds"]
    n = base
    while c.stats()["directory"]["rebuilds"] == rebuilds:
        ids = [oid(n + i) for i in range(4000)]
        n += 4000
        c.create_and_seal_many([(i, b"x", b"") for i in ids])
        c.delete(ids)


def token_of(fd: int, size: int) -> int:
    with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as mm:
        return DirectoryReader(mm).token


def test_tables_are_sent_only_for_the_directory_a_client_has(coordinator: RunningCoordinator):
    """Finding 6, the bound: however often a client asks (and whether or not it reads),
    descriptors go only in answer to the directory it was sent last: one set at a time."""
    with RawClient(coordinator.socket) as raw, plasma.connect(coordinator.socket) as c:
        tables = raw.connect().tables
        assert tables is not None
        directory, _, _ = raw.take_fds()
        have = token_of(directory, tables.directory_size)
        os.close(directory)
        assert raw.request(p.Tables(seq=0, have=have)).tables is None  # it is current
        rebuild(c, 10_000_000)
        for wrong in (have + 2, 0):  # not the one it was sent: nothing
            assert raw.request(p.Tables(seq=0, have=wrong)).tables is None
            assert not raw.take_fds()
        moved = raw.request(p.Tables(seq=0, have=have))
        assert moved.tables is not None and len(raw.fds) == 2
        new_directory, _ = raw.take_fds()
        for _ in range(3):  # again for the old one: its answer went out already
            assert raw.request(p.Tables(seq=0, have=have)).tables is None
        assert not raw.fds
        rebuild(c, 20_000_000)
        newer = token_of(new_directory, moved.tables.directory_size)
        os.close(new_directory)
        assert raw.request(p.Tables(seq=0, have=newer)).tables is not None
        assert len(raw.take_fds()) == 2


_STEPPED_CLOCK = """
import os, sys, time
real = time.time
flag = sys.argv[1]
def stepped():  # the wall clock steps back an hour once the flag file exists (NTP, a resume)
    return real() - (3600 if os.path.exists(flag) else 0)
time.time = stepped
sys.argv = ["plasma-coord", *sys.argv[2:]]
from plasma.cli import main
main()
"""


def test_a_wall_clock_step_changes_no_deadline_and_no_grace(tmp_path):
    """Finding 9: the store's clock was the wall clock: a step back stalled every free by
    the step; a step forward timed gets out early. Only create_time is wall time now."""
    import subprocess
    import sys
    import threading
    import time

    flag = tmp_path / "stepped"
    path = str(tmp_path / "clock.sock")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _STEPPED_CLOCK,
            str(flag),
            "serve",
            "--socket",
            path,
            "--memory",
            "32MiB",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        with plasma.connect(path) as c, plasma.connect(path) as watcher:
            waited: list[BaseException] = []

            def wait_across_the_step() -> None:
                try:
                    c.get(oid(98), timeout=1.0)
                except BaseException as exc:  # (PlasmaTimeout expected)
                    waited.append(exc)

            waiting = threading.Thread(target=wait_across_the_step)
            waiting.start()
            wait_until(lambda: watcher.stats()["get_waiters"] == 1, what="the get to wait")
            flag.touch()  # the clock steps back an hour under the waiting get
            waiting.join(60)
            assert not waiting.is_alive(), "a get waiting across the step waited for the step"
            assert len(waited) == 1 and isinstance(waited[0], plasma.PlasmaTimeout), waited
            before = c.put(b"before")
            held = c.get(before)
            c.delete(before)  # pinned: freed after the pin goes and a scan
            del held
            c.flush()  # answered once the scan ran: not an hour later
            assert c.stats()["dying"] == 0
            started = time.monotonic()
            with pytest.raises(plasma.PlasmaTimeout):
                c.get(oid(99), timeout=0.5)
            assert time.monotonic() - started >= 0.45  # not timed out early either
            after = c.put(b"after")
            listed = c.list()
            # create_time stays wall time: an hour behind the process's clock now
            assert abs(listed[after]["create_time"] - (time.time() - 3600)) < 600
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_a_directory_moving_under_another_thread_s_get_leaks_no_pin(
    coordinator: RunningCoordinator, monkeypatch: pytest.MonkeyPatch
):
    """Finding 10: a blocking client shared by threads; one thread's call took in a new
    directory and closed the old maps while another thread's fast get had written its pin:
    that get failed ("mmap closed") and its pin was never let go. The maps are swapped
    under the same lock as the fast path now. (The Python read path, whose re-read can be
    interrupted here; the C one holds the interpreter from lookup to re-read, and its reader
    holds the maps it reads.)"""
    import threading

    monkeypatch.setattr(fast_path, "READ_PATH", PYTHON)

    from plasma.directory import DirectoryReader as Reader

    with plasma.connect(coordinator.socket) as c:
        target = c.put(b"pinned")
        c.flush()  # sealed: the directory serves it
        core = c._core
        real_unchanged = Reader.unchanged
        swapped = threading.Event()

        def swap() -> None:  # another thread installs a new directory (as a reply would)
            directory, access = core.maps.table_maps
            copies = []
            for mm in (directory, access):
                copy = mmap.mmap(-1, len(mm))
                copy[:] = mm[:]
                copies.append(copy)
            core.maps.install_tables(copies[0], copies[1], None)
            swapped.set()

        def unchanged(self: Reader, found: object) -> bool:
            thread = threading.Thread(target=swap)
            thread.start()
            thread.join(timeout=0.5)  # blocked on the lock now: it swaps once we are done
            return real_unchanged(self, found)

        Reader.unchanged = unchanged  # type: ignore[method-assign]
        try:
            view = c.get(target)
        finally:
            Reader.unchanged = real_unchanged  # type: ignore[method-assign]
        assert swapped.wait(10)
        assert bytes(view) == b"pinned" and core.maps.pins is not None and core.maps.pins.count == 1
        del view
        c.flush()
        assert core.maps.pins.count == 0
