"""End-to-end: a real coordinator process, real clients, a real Unix socket."""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading

import numpy as np
import pytest

import plasma
from plasma import protocol as p
from tests.conftest import RunningCoordinator, start_coordinator, wait_until
from tests.helpers import REPO, raw_socket
from tests.helpers import object_id as oid

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures


def used(client: plasma.Client) -> int:
    """Bytes held by objects (not counting the unused part of client arenas)."""
    stats = client.stats()
    return int(stats["used"] - stats["arena_bytes"])


def test_socket_is_private_and_stop_is_clean(coordinator_factory):
    coord = coordinator_factory("--memory", "16MiB")
    assert stat.S_IMODE(os.stat(coord.socket).st_mode) == 0o600
    assert coord.stop(signal.SIGINT) == 0
    assert not os.path.exists(coord.socket)


def test_numpy_round_trip_is_zero_copy_and_read_only(coordinator: RunningCoordinator):
    arrays = [
        np.arange(1000, dtype=np.int64),
        np.asfortranarray(np.arange(600, dtype=np.float32).reshape(20, 30)),
        np.array([1 + 2j, 3 - 4j], dtype=np.complex128),
        np.zeros((0, 3), dtype=np.uint8),
        np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "i4"), ("b", "f8")]),
    ]
    with (
        plasma.connect(coordinator.socket) as producer,
        plasma.connect(coordinator.socket) as consumer,
    ):
        ids = [producer.put(a) for a in arrays]
        for original, object_id in zip(arrays, ids, strict=True):
            got = consumer.get_object(object_id, timeout=5)
            np.testing.assert_array_equal(got, original)
            assert got.dtype == original.dtype
            assert got.flags.f_contiguous == original.flags.f_contiguous
            assert not got.flags.writeable
            if got.nbytes:
                addr = got.__array_interface__["data"][0]
                assert any(
                    _address(mm) <= addr < _address(mm) + len(mm)
                    for mm in consumer._core.maps.segments.values()
                ), "the consumer's array does not point into a shared segment"


def _address(mm) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(mm))


def test_reference_released_when_last_view_is_gone(coordinator: RunningCoordinator):
    with plasma.connect(coordinator.socket) as c:
        object_id = c.put(np.arange(10))
        arr = c.get_object(object_id)
        view = arr[2:5]
        del arr
        c.flush()
        assert c.list()[object_id]["ref_count"] == 1  # the slice keeps it
        del view
        c.flush()
        assert c.list()[object_id]["ref_count"] == 0
        assert c.delete([object_id]) == []  # nothing deferred
        assert not c.contains(object_id)


def test_each_segment_fd_is_sent_once(coordinator: RunningCoordinator):
    with plasma.connect(coordinator.socket) as c:
        for i in range(5):
            buf = c.create(oid(i), 100_000)
            buf[:3] = b"abc"
            c.seal(oid(i))
        assert len(c._core.maps.segments) == 1
        with plasma.connect(coordinator.socket) as other:
            views = other.get([oid(i) for i in range(5)], timeout=5)
            assert [bytes(v[:3]) for v in views] == [b"abc"] * 5
            assert len(other._core.maps.segments) == 1


def test_errors_are_clear_and_lose_nothing(coordinator: RunningCoordinator):
    with plasma.connect(coordinator.socket) as c:
        with pytest.raises(plasma.ObjectNotFound):
            c.get(oid(1), timeout=0)
        c.create(oid(1), 10)
        with pytest.raises(plasma.ObjectExists):
            c.create(oid(1), 10)
        with pytest.raises(plasma.ObjectNotSealed):
            c.get(oid(1), timeout=0)
        with pytest.raises(plasma.PlasmaTimeout):
            c.get(oid(1), timeout=0.05)
        with pytest.raises(plasma.ObjectNotFound):
            c.delete([oid(2)])
        with pytest.raises(plasma.ObjectNotFound):
            c.abort(oid(2))
        c.release(oid(3))  # sent without waiting: the error surfaces on flush
        with pytest.raises(plasma.ObjectNotFound):
            c.flush()
        with pytest.raises(plasma.StoreFull, match="budget"):  # larger than the store
            c.create(oid(4), 1 << 40)
        c.abort(oid(1))
        assert c.list() == {}
        assert used(c) == 0


def test_get_waits_for_seal_by_another_client(coordinator: RunningCoordinator):
    results: list[bytes] = []
    with plasma.connect(coordinator.socket) as producer:
        buf = producer.create(oid(7), 4)

        def consume() -> None:
            with plasma.connect(coordinator.socket) as consumer:
                results.append(bytes(consumer.get(oid(7), timeout=10)))

        t = threading.Thread(target=consume)
        t.start()
        wait_until(lambda: producer.stats()["get_waiters"] == 1, what="the consumer to wait")
        buf[:] = b"done"
        producer.seal(oid(7))
        t.join(10)
    assert results == [b"done"]


def _read_error_and_eof(s: socket.socket) -> p.Error:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    dec = p.FrameDecoder(p.Reply)
    dec.feed(data)
    (msg,) = dec.messages()
    assert isinstance(msg, p.Error)
    return msg


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack("<I", 64 << 20),  # a frame far over the limit
        b"\x10\x00\x00\x00" + b"\xff" * 16,  # garbage MessagePack
        p.encode(p.Get(seq=1, ids=[b"x" * 20])),  # a request before Connect
    ],
    ids=["oversized", "garbage", "no-connect"],
)
def test_bad_frames_are_refused_and_others_keep_working(
    coordinator: RunningCoordinator, payload: bytes
):
    with plasma.connect(coordinator.socket) as c:
        c.put(b"still here", oid(9))
        s = raw_socket(coordinator.socket)
        s.sendall(payload)
        err = _read_error_and_eof(s)
        assert err.code == "bad_request"
        assert bytes(c.get(oid(9), timeout=1)) == b"still here"


_VICTIM = textwrap.dedent(
    """
    import sys, plasma
    c = plasma.connect(sys.argv[1])
    buf = c.create(plasma.ObjectID(b"u" * 20), 1 << 20)
    held = c.get(plasma.ObjectID(b"s" * 20), timeout=5)
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def test_client_killed_mid_write_and_holding_refs_leaks_nothing(coordinator: RunningCoordinator):
    with plasma.connect(coordinator.socket) as c:
        c.put(b"shared", plasma.ObjectID(b"s" * 20))
        c.flush()
        base = used(c)
        victim = subprocess.Popen(
            [sys.executable, "-c", _VICTIM, coordinator.socket],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == "ready"
        rows = c.list()
        assert rows[plasma.ObjectID(b"s" * 20)]["ref_count"] == 1
        assert rows[plasma.ObjectID(b"u" * 20)]["state"] == "created"
        victim.kill()
        victim.wait()
        wait_until(
            lambda: plasma.ObjectID(b"u" * 20) not in c.list(),
            what="the unsealed object to be aborted",
        )
        assert c.list()[plasma.ObjectID(b"s" * 20)]["ref_count"] == 0
        assert used(c) == base
        assert c.delete([plasma.ObjectID(b"s" * 20)]) == []
        c.flush()  # memory is free once the pin tables were scanned for the object
        assert used(c) == 0


def test_full_store_fails_then_waits_for_space(coordinator_factory):
    coord = coordinator_factory("--memory", "8MiB", "--segment-size", "8MiB")
    with plasma.connect(coord.socket) as c, plasma.connect(coord.socket) as holder:
        c.create_and_seal(oid(1), b"x" * (6 << 20))
        held = holder.get(oid(1))
        with pytest.raises(plasma.StoreFull):
            c.create(oid(2), 6 << 20)
        result: list[object] = []

        def create_waiting() -> None:
            with plasma.connect(coord.socket) as waiter:
                waiter.create(oid(2), 6 << 20, timeout=10)
                result.append("created")

        t = threading.Thread(target=create_waiting)
        t.start()
        wait_until(lambda: c.stats()["create_waiters"] == 1, what="the create to wait for space")
        del held
        holder.flush()  # the release lets LRU eviction make room
        t.join(10)
        assert result == ["created"]
        assert not c.contains(oid(1))


def test_create_timeout_gives_store_full(coordinator_factory):
    coord = coordinator_factory("--memory", "4MiB", "--segment-size", "4MiB")
    with plasma.connect(coord.socket) as c:
        c.create(oid(1), 3 << 20)
        with pytest.raises(plasma.StoreFull):
            c.create(oid(2), 3 << 20, timeout=0.05)
        c.abort(oid(1))
        c.create(oid(2), 3 << 20)


def test_notifications_and_prefetched_get(coordinator: RunningCoordinator):
    with (
        plasma.connect(coordinator.socket) as producer,
        plasma.connect(coordinator.socket) as consumer,
    ):
        sub = consumer.subscribe(with_locations=True)
        producer.put(b"hello", oid(5))
        note = sub.next(timeout=5)
        assert (note.kind, note.id, note.data_size) == (
            "sealed",
            oid(5).binary(),
            len(note_bytes := b"hello"),
        )
        assert (
            bytes(consumer.get(oid(5))) == note_bytes
        )  # served from the notification, no round trip
        consumer.flush()
        producer.delete([oid(5)])
        assert sub.next(timeout=5).kind == "deleted"
        with pytest.raises(plasma.PlasmaTimeout):
            sub.next(timeout=0.01)


def test_batched_create_and_seal_through_the_arena(coordinator: RunningCoordinator):
    items = [(oid(i), i.to_bytes(8, "little") * 8, b"m") for i in range(3000)]
    with plasma.connect(coordinator.socket) as c:
        c.create_and_seal_many(items)
        c.flush()
        got = c.get([i for i, _, _ in items[:10]], with_metadata=True)
        assert [(bytes(d), bytes(m)) for d, m in got] == [(d, m) for _, d, m in items[:10]]
        del got
        assert len(c.list()) == 3000
        c.create_and_seal(oid(1), b"dup")  # already exists: reported on the next reply
        with pytest.raises(plasma.ObjectExists):
            c.flush()


def test_other_uid_is_refused():
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid")
    public_dir = tempfile.mkdtemp(prefix="plasma-uid-test-")
    os.chmod(public_dir, 0o711)
    coordinator = start_coordinator(os.path.join(public_dir, "s.sock"), "--memory", "8MiB")
    os.chmod(coordinator.socket, 0o666)  # get past the file mode to reach the SO_PEERCRED check
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, then try the handshake
        try:
            os.setuid(65534)
            s = raw_socket(coordinator.socket)
            s.sendall(p.encode(p.Connect(seq=1, protocol_version=p.PROTOCOL_VERSION)))
            err = _read_error_and_eof(s)
            os.write(write_end, f"{err.code}: {err.message}".encode())
        except BaseException as exc:
            os.write(write_end, f"child failed: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        answer = f.read()
    os.waitpid(pid, 0)
    assert coordinator.stop() == 0
    os.rmdir(public_dir)
    assert answer.startswith("permission_denied: uid 65534 may not use this store"), answer


async def test_trio_client_pipelines_requests(coordinator: RunningCoordinator):
    import trio

    from plasma import aio

    async with aio.connect(coordinator.socket) as c:
        ids = [await c.put(np.full(100, i)) for i in range(20)]
        results: dict[int, float] = {}

        async def fetch(i: int) -> None:
            results[i] = float((await c.get_object(ids[i], timeout=5)).sum())

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(fetch, i)
        assert results == {i: 100.0 * i for i in range(20)}
        with pytest.raises(plasma.ObjectNotFound):
            await c.get(oid(99), timeout=0)


def test_requests_for_many_ids_stay_under_the_frame_limit(coordinator: RunningCoordinator):
    ids = [oid(i) for i in range(40_000)]  # ~1 MiB of ids: more than one frame may carry
    with plasma.connect(coordinator.socket) as c:
        c.create_and_seal_many([(i, b"", b"") for i in ids])
        c.flush()
        assert len(c.get(ids, timeout=5)) == len(ids)
        c.flush()
        assert c.delete(ids) == []
        assert c.list() == {}
        assert used(c) == 0


def test_released_objects_are_cached_until_a_delete_revokes_them(coordinator: RunningCoordinator):
    with plasma.connect(coordinator.socket) as c, plasma.connect(coordinator.socket) as other:
        other.put(b"cached", oid(1))
        other.flush()
        view = c.get(oid(1))
        del view  # the reference stays in c's release-delay cache
        gets = other.stats()["operations"]["Get"]
        assert bytes(c.get(oid(1))) == b"cached"  # served locally
        assert other.stats()["operations"]["Get"] == gets
        assert other.list()[oid(1)]["ref_count"] == 1
        assert other.delete([oid(1)]) == [oid(1)]  # deferred: c still holds it
        with pytest.raises(plasma.ObjectNotFound):
            c.get(oid(1), timeout=0)  # revoked: asks the store, which hides it
        assert oid(1) not in other.list()  # the revoked reference went with that request
        other.flush()  # memory is free once the pin tables were scanned for the object
        assert used(other) == 0


def test_release_delay_zero_releases_at_once(coordinator: RunningCoordinator):
    with plasma.connect(coordinator.socket, release_delay=0) as c:
        c.put(b"x", oid(2))
        c.flush()
        view = c.get(oid(2))
        del view
        c.contains(oid(2))  # carries the queued release
        assert c.list()[oid(2)]["ref_count"] == 0
