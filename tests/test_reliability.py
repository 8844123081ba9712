"""Regression tests of the defects a fault-injection audit found, and of the per-client limits.

Each test drives a real coordinator process the way the audit did and checks the behaviour
that was wrong: silent corruption after a failed arena refill, NaN timeouts, fd exhaustion,
futile eviction, refused handshakes, hostile payloads, the socket path, page rounding,
connection and subscriber limits, and memory that clients hold idle.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading

import pytest

import plasma
import plasma.aio
from plasma import protocol as p
from tests.conftest import RunningCoordinator, start_coordinator, wait_until
from tests.helpers import MIB, REPO, raw_socket
from tests.helpers import object_id as oid

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures


def replies_until_eof(s: socket.socket) -> list[object]:
    """Every message the coordinator sends before it closes the connection."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    dec = p.FrameDecoder(p.Reply, 1 << 30)
    dec.feed(data)
    return dec.messages()


def connect_frame() -> bytes:
    return p.encode(p.Connect(seq=1, protocol_version=p.PROTOCOL_VERSION))


# ---------------------------------------------------------------- 1: failed arena refill


def test_failed_arena_refill_never_writes_into_memory_given_back(coordinator_factory):
    coord = coordinator_factory("--memory", "8MiB", "--segment-size", "8MiB")
    with plasma.connect(coord.socket) as a, plasma.connect(coord.socket) as b:
        held = a.get(a.put(b"x" * 100), timeout=5)  # a holds an arena of ~1 MiB and a ref
        arena_tail = a._core.arena.end - a._core.arena.cursor
        fillers = []
        with pytest.raises(plasma.StoreFull):  # b takes everything else
            for n in range(100):
                fillers.append(b.create(oid(1000 + n), 256 << 10))
        with pytest.raises(plasma.StoreFull):  # needs a new arena of ~1 MiB: none fits
            a.create_and_seal(oid(2), b"y" * (arena_tail + 64))  # <= 1 MiB: an arena object
        # the old arena's tail went back to the store; b now owns part of it
        victim = b.create(oid(1), arena_tail // 2)
        victim[:] = b"B" * len(victim)
        b.seal(oid(1))
        small = a.put(b"A-WAS-HERE" * 10)  # lands in memory granted to a now...
        a.flush()  # ...and nothing a sent was refused
        assert bytes(b.get(oid(1), timeout=1)) == b"B" * len(victim)
        assert a.get_object(small, timeout=1) == b"A-WAS-HERE" * 10
        assert not b.contains(oid(2))
        assert bytes(held) == b"x" * 100


# ---------------------------------------------------------------- 2: timeouts


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0])
def test_bad_timeouts_are_refused_by_the_clients(coordinator: RunningCoordinator, timeout):
    with plasma.connect(coordinator.socket) as c:
        with pytest.raises(ValueError, match="finite"):
            c.get(oid(1), timeout=timeout)
        with pytest.raises(ValueError, match="finite"):
            c.create(oid(1), 10, timeout=timeout)
        with pytest.raises(ValueError, match="finite"):
            c.subscribe().next(timeout=timeout)
        assert c.list() == {}


async def test_bad_timeouts_are_refused_by_the_trio_client(coordinator: RunningCoordinator):
    async with plasma.aio.connect(coordinator.socket) as c:
        with pytest.raises(ValueError, match="finite"):
            await c.get(oid(1), timeout=float("nan"))
        with pytest.raises(ValueError, match="finite"):
            await c.create(oid(1), 10, timeout=float("nan"))


def test_nan_timeout_on_the_wire_does_not_stall_other_clients(coordinator: RunningCoordinator):
    s = raw_socket(coordinator.socket)
    s.sendall(connect_frame())
    get = bytearray(p.encode(p.Get(seq=2, ids=[oid(1).binary()], timeout=1.0)))
    at = get.rindex(struct.pack(">d", 1.0))  # msgpack float64, big-endian
    get[at : at + 8] = struct.pack(">d", float("nan"))
    s.sendall(bytes(get))
    replies = replies_until_eof(s)
    assert isinstance(replies[0], p.Connected)
    assert isinstance(replies[-1], p.Error) and replies[-1].code == "bad_request"
    with plasma.connect(coordinator.socket) as other, pytest.raises(plasma.PlasmaTimeout):
        other.get(oid(1), timeout=0.2)  # deadlines still fire


# ---------------------------------------------------------------- 3: fd exhaustion


def test_out_of_descriptors_refuses_newcomers_and_keeps_serving(coordinator_factory):
    coord = coordinator_factory(wrapper=["prlimit", "--nofile=64:64"], name="fd.sock")
    path, proc = coord.socket, coord.proc
    try:
        with plasma.connect(path) as keeper:
            keeper.put(b"kept", oid(1))
            keeper.flush()
            conns = []
            for _ in range(100):
                s = raw_socket(path)
                # (a refused one may be closed already: its Error waits to be read)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    s.sendall(connect_frame())
                conns.append(s)
            first = [first_reply(s) for s in conns]
            refused = [m for m in first if isinstance(m, p.Error)]
            assert {type(m) for m in first} == {p.Connected, p.Error}
            assert refused, "no connection was refused although descriptors ran out"
            assert all("descriptors" in e.message for e in refused)
            for s in conns:
                s.close()
            assert proc.poll() is None, "the coordinator died"
            assert bytes(keeper.get(oid(1), timeout=5)) == b"kept"
        wait_until(lambda: _can_connect(path), what="a new client to be served")
        with plasma.connect(path) as c:
            assert c.contains(oid(1))
    finally:
        assert coord.stop() == 0


def first_reply(s: socket.socket) -> object:
    """The first message the coordinator sends on this connection."""
    dec = p.FrameDecoder(p.Reply, 1 << 30)
    while not (msgs := dec.messages()):
        chunk = s.recv(65536)
        assert chunk, "closed without a word"
        dec.feed(chunk)
    return msgs[0]


def _can_connect(path: str) -> bool:
    try:
        plasma.connect(path).close()
    except (plasma.PlasmaError, OSError):
        return False
    return True


# ---------------------------------------------------------------- 4: futile eviction


def test_a_create_that_cannot_fit_evicts_nothing(coordinator_factory):
    coord = coordinator_factory("--memory", "8MiB", "--segment-size", "8MiB")
    with plasma.connect(coord.socket) as holder, plasma.connect(coord.socket) as putter:
        holder.create(oid(1), 4 * MIB)  # held: an 6 MiB object can never fit
        results: list[BaseException | None] = []

        def big_create() -> None:
            with plasma.connect(coord.socket) as c:
                try:
                    c.create(oid(2), 6 * MIB, timeout=3)
                    results.append(None)
                except plasma.PlasmaError as exc:
                    results.append(exc)

        t = threading.Thread(target=big_create)
        t.start()
        wait_until(lambda: putter.stats()["create_waiters"] == 1, what="the create to wait")
        ids = [putter.put(b"fresh" * 100) for _ in range(20)]
        putter.flush()
        assert all(putter.contains(i) for i in ids), "fresh objects were evicted"
        assert putter.stats()["evictions"] == 0
        t.join(10)
        assert isinstance(results[0], plasma.StoreFull)
        assert all(putter.contains(i) for i in ids)


# ---------------------------------------------------------------- 5, 6: refused handshakes


def test_wrong_protocol_version_is_refused_and_the_connection_closed(
    coordinator: RunningCoordinator,
):
    s = raw_socket(coordinator.socket)
    s.sendall(p.encode(p.Connect(seq=1, protocol_version=p.PROTOCOL_VERSION + 1)))
    s.sendall(connect_frame())  # a valid Connect afterwards is not answered
    replies = replies_until_eof(s)
    assert len(replies) == 1 and isinstance(replies[0], p.Error)
    assert replies[0].code == "bad_request"
    assert "protocol version" in replies[0].message and "internal" not in replies[0].message
    assert _stderr_has_no_traceback(coordinator)


def _stderr_has_no_traceback(coord: RunningCoordinator) -> bool:
    """Stop the coordinator (the fixture's stop then finds it exited) and read its log."""
    return coord.stop() == 0 and "Traceback" not in coord.log()


def test_refusal_reason_reaches_both_clients():
    """A refused uid sees the coordinator's permission_denied message, not a bare
    ConnectionError or an ExceptionGroup (run as another uid in a child process)."""
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid")
    public_dir = tempfile.mkdtemp(prefix="plasma-uid-test-")  # /tmp/pytest-of-root is 0700
    os.chmod(public_dir, 0o711)
    coord = start_coordinator(os.path.join(public_dir, "s.sock"), "--memory", "8MiB")
    os.chmod(coord.socket, 0o666)  # past the file mode, to the SO_PEERCRED check
    script = (
        "import os, sys, trio, plasma, plasma.aio\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "def blocking():\n"
        "    try: plasma.connect(sys.argv[1])\n"
        "    except plasma.PermissionDenied as e: print('blocking', e)\n"
        "async def aio():\n"
        "    try:\n"
        "        async with plasma.aio.connect(sys.argv[1]): pass\n"
        "    except plasma.PermissionDenied as e: print('trio', e)\n"
        "blocking(); trio.run(aio)\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", script, coord.socket],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        assert coord.stop() == 0
        os.rmdir(public_dir)
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["blocking", "trio"], out.stdout + out.stderr
    assert all("uid 65534 may not use this store" in line for line in lines)


# ---------------------------------------------------------------- 7, 8: hostile payloads


def _deeply_nested_run_call() -> bytes:
    """A RunCall whose payload is 100,000 nested arrays: [tag, seq, run_id, payload]."""
    body = b"\x94\xa7RunCall\x02\xa1r" + b"\x91" * 100_000 + b"\xc0"
    return struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    "frame",
    [
        _deeply_nested_run_call(),
        p.encode(p.TaskRegister(seq=2, task_id="t", pid=2**31)),
        p.encode(p.TaskRegister(seq=2, task_id="t", pid=2**63)),
    ],
    ids=["deep-nesting", "pid-2**31", "pid-2**63"],
)
def test_hostile_payloads_get_bad_request_and_a_hang_up(coordinator: RunningCoordinator, frame):
    s = raw_socket(coordinator.socket)
    s.sendall(connect_frame() + frame)
    replies = replies_until_eof(s)
    assert isinstance(replies[0], p.Connected)
    (err,) = replies[1:]
    assert isinstance(err, p.Error) and err.code == "bad_request"
    assert "internal error" not in err.message
    with plasma.connect(coordinator.socket) as c:  # the coordinator still serves
        assert c.contains(oid(1)) is False
    assert _stderr_has_no_traceback(coordinator)


# ---------------------------------------------------------------- 9: the socket path


def test_serve_never_replaces_a_file_or_a_live_coordinator(
    coordinator: RunningCoordinator, tmp_path
):
    regular = tmp_path / "not-a-socket"
    regular.write_text("precious")
    for path in (str(regular), coordinator.socket):
        out = subprocess.run(
            [sys.executable, "-m", "plasma", "serve", "--socket", path, "--memory", "8MiB"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert out.returncode == 1
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Traceback" not in out.stderr
    assert regular.read_text() == "precious"
    with plasma.connect(coordinator.socket) as c:  # the live one is untouched
        assert not c.contains(oid(1))


# ---------------------------------------------------------------- 10: budgets in pages


def test_memory_that_is_not_a_page_multiple_still_fits_the_largest_object(coordinator_factory):
    coord = coordinator_factory("--memory", "100MB")
    with plasma.connect(coord.socket) as c:
        largest = c.info.max_object_size
        assert largest == c.info.capacity == 100_000_000 // 4096 * 4096
        c.create(oid(1), largest)
        c.seal(oid(1))
        c.release(oid(1))
        c.flush()


# ---------------------------------------------------------------- limits


def test_connections_beyond_max_clients_are_refused(coordinator_factory):
    coord = coordinator_factory("--memory", "8MiB", "--max-clients", "2")
    with (
        plasma.connect(coord.socket),
        plasma.connect(coord.socket),
        pytest.raises(plasma.StoreFull, match="at most 2 clients"),
    ):
        plasma.connect(coord.socket)
    wait_until(lambda: _can_connect(coord.socket), what="a freed slot")


def test_a_connection_that_never_sends_connect_is_closed(coordinator_factory):
    coord = coordinator_factory("--memory", "8MiB", "--handshake-timeout", "0.3")
    s = raw_socket(coord.socket)
    (err,) = replies_until_eof(s)
    assert isinstance(err, p.Error) and "no Connect within 0.3 s" in err.message


def test_a_subscriber_that_does_not_read_is_dropped(coordinator: RunningCoordinator):
    with plasma.connect(coordinator.socket) as sub, plasma.connect(coordinator.socket) as c:
        subscription = sub.subscribe()
        for chunk in range(15):  # a notification of about 50 bytes per object: > 8 MiB
            c.create_and_seal_many([(oid(chunk * 10**6 + n), b"", b"") for n in range(20_000)])
        c.flush()
        stats = c.stats()
        assert stats["subscribers"] == 0, "the lagging subscriber is still subscribed"
        assert stats["objects"] == 300_000
        with pytest.raises(plasma.PlasmaError, match="subscription ended"):
            while True:
                subscription.next(timeout=5)


def test_idle_memory_of_other_clients_is_reclaimed_before_a_create_fails(coordinator_factory):
    coord = coordinator_factory("--memory", "32MiB", "--segment-size", "32MiB")
    with plasma.connect(coord.socket) as cacher, plasma.connect(coord.socket) as creator:
        cacher._core.refs.cache_limit = 1 << 30  # as if the store were large: cache all of it
        ids = [cacher.put(bytes(3 * MIB)) for _ in range(8)]  # 24 MiB
        for i in ids:  # got and dropped: kept in cacher's release-delay cache
            view = cacher.get(i, timeout=5)
            del view
        assert len(cacher._core.refs.cache) == 8
        assert creator.stats()["used"] >= 24 * MIB
        got: dict[str, object] = {}

        def create() -> None:
            try:
                got["view"] = creator.create(oid(1), 20 * MIB)  # timeout 0
            except plasma.PlasmaError as exc:
                got["view"] = exc

        t = threading.Thread(target=create)
        t.start()
        # the blocking cacher answers the Reclaim when it next reads: at its next call
        wait_until(lambda: not cacher.contains(oid(99)) and "view" in got, timeout=10)
        t.join(10)
        assert isinstance(got["view"], memoryview) and len(got["view"]) == 20 * MIB
        assert not cacher._core.refs.cache


def test_threads_sharing_a_client_never_write_over_each_other(coordinator: RunningCoordinator):
    with plasma.connect(coordinator.socket) as c:
        stored: dict[int, bytes] = {}
        errors: list[BaseException] = []

        def putter(t: int) -> None:
            try:
                for n in range(400):
                    key = t * 10_000 + n
                    data = bytes([key % 251]) * (64 + (key * 37) % 4000)
                    c.create_and_seal(oid(key), data) if n % 2 else c.put(data, oid(key))
                    stored[key] = data
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=putter, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
            assert not t.is_alive(), "a putter thread still runs after 60 s"
        if errors:
            raise errors[0]
        assert len(stored) == 4 * 400
        c.flush()
        for key, data in stored.items():
            got = c.get(oid(key), timeout=5)
            assert (bytes(got) if key % 2 else c.get_object(oid(key))) == data


def test_bad_arguments_are_refused_before_they_cost_the_connection(
    coordinator: RunningCoordinator,
):
    with plasma.connect(coordinator.socket) as c:
        kept = c.put(b"kept")
        for call in (
            lambda: c.create(oid(1), -5),
            lambda: c.create(oid(1), 10, node=70_000),
            lambda: c.create_and_seal_many([(oid(2), b"x" * (2 << 20), b"")], node=-1),
            lambda: c.evict(-1),
            lambda: c.register_task("t", 2**31),
            lambda: c.run_call("r" * 5000, None),
        ):
            with pytest.raises(plasma.BadRequest, match="at `"):
                call()
        assert c.get_object(kept, timeout=1) == b"kept"  # same connection, nothing lost
        assert set(c.list()) == {kept}
