"""plasma.compat: each pyarrow.plasma (pyarrow 11) call as its documentation describes it,
against a real ``plasma-coord serve`` started by ``start_plasma_store``."""

from __future__ import annotations

import gc
import os
import pathlib
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

import plasma.compat as plasma
from plasma.errors import BadRequest, ObjectExists, StoreFull, Unsupported
from tests.conftest import wait_until

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures

STORE_MEMORY = 32 << 20


@pytest.fixture(scope="module")
def store() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with plasma.start_plasma_store(STORE_MEMORY) as (socket_name, proc):
        yield socket_name, proc


@pytest.fixture
def client(store: tuple[str, subprocess.Popen[bytes]]) -> Iterator[plasma.PlasmaClient]:
    c = plasma.connect(store[0])
    yield c
    c.disconnect()


@pytest.fixture
def other(store: tuple[str, subprocess.Popen[bytes]]) -> Iterator[plasma.PlasmaClient]:
    c = plasma.connect(store[0])
    yield c
    c.disconnect()


def random_id() -> plasma.ObjectID:
    return plasma.ObjectID.from_random()


# ---------------------------------------------------------------- ObjectID, connect, store


def test_object_id() -> None:
    a, b = random_id(), random_id()
    assert len(a.binary()) == 20 and a != b
    assert plasma.ObjectID(a.binary()) == a
    assert hash(plasma.ObjectID(a.binary())) == hash(a)
    assert pickle.loads(pickle.dumps(a)) == a
    assert a != a.binary()
    with pytest.raises(ValueError, match="20 bytes"):
        plasma.ObjectID(b"short")


def test_start_plasma_store_yields_socket_and_process(
    store: tuple[str, subprocess.Popen[bytes]], client: plasma.PlasmaClient
) -> None:
    socket_name, proc = store
    assert os.path.exists(socket_name)
    assert proc.poll() is None
    assert client.store_capacity() == STORE_MEMORY
    assert client.store_socket_name == socket_name


def test_store_stops_cleanly_and_cleans_up() -> None:
    with plasma.start_plasma_store(1 << 20) as (socket_name, proc):
        plasma.connect(socket_name).disconnect()
    assert proc.returncode == 0  # SIGTERM: clean exit
    assert not os.path.exists(os.path.dirname(socket_name))


def test_store_start_failure_is_reported(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'cannot serve' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(broken))
    with (
        pytest.raises(RuntimeError, match=r"exited with code 3; stderr:\ncannot serve"),
        plasma.start_plasma_store(1 << 20),
    ):
        pass


def test_store_memory_is_checked() -> None:
    with pytest.raises(BadRequest, match="plasma_store_memory"), plasma.start_plasma_store(-1):
        pass


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"use_valgrind": True}, Unsupported, "valgrind"),
        ({"use_valgrind": True, "use_profiler": True}, BadRequest, "same time"),
        ({"external_store": "/nonexistent/spill"}, BadRequest, "not a directory"),
    ],
)
def test_store_options_that_do_not_apply(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message), plasma.start_plasma_store(1 << 20, **kwargs):  # type: ignore[arg-type]
        pass


def test_store_capacity_is_the_capacity_asked_for_and_an_object_of_it_fits() -> None:
    """pyarrow 11's test_use_full_memory: an object of exactly the store's capacity is created
    (twice, the first evicted), one larger is PlasmaStoreFull; the capacity is not rounded."""
    with plasma.start_plasma_store(10000) as (name, _):
        c = plasma.connect(name)
        assert c.store_capacity() == 10000
        for _ in range(2):
            oid = random_id()
            buf = c.create(oid, 10000)
            np.frombuffer(buf, dtype=np.uint8)[-1] = 7
            c.seal(oid)
            del buf
        assert c.get_buffers([oid])[0].to_pybytes()[-1] == 7
        with pytest.raises(plasma.PlasmaStoreFull):
            c.create(random_id(), 10000 + 9000)
        c.disconnect()


@pytest.mark.parametrize("external_store", ["hashtable://test", "file://{tmp}", "{tmp}"])
def test_external_store_spills_to_disk(external_store: str, tmp_path: pathlib.Path) -> None:
    """pyarrow 11's TestEvictionToExternalStore: 20 objects of 100 KiB in a 1000 KiB store all
    come back, from the spill directory (a temporary one for a URL such as hashtable://)."""
    with plasma.start_plasma_store(
        1000 * 1024, external_store=external_store.format(tmp=tmp_path)
    ) as (name, _):
        c = plasma.connect(name)
        ids = [random_id() for _ in range(20)]
        data = b"x" * 100 * 1024
        for oid in ids:
            assert not c.contains(oid)
            c.create_and_seal(oid, data, b"")
            assert c.contains(oid)
        for oid in ids:
            [result] = c.get_buffers([oid], timeout_ms=10_000)
            assert result is not None and result.to_pybytes() == data
            del result
        assert c.get_buffers([random_id()], timeout_ms=100) == [None]
        spill = c._client.stats()["spill"]
        assert spill["written_objects"] >= 10 and spill["restored_objects"] >= 10
        if not external_store.startswith("hashtable"):
            assert spill["dir"] == str(tmp_path)
        c.disconnect()


def test_plasma_directory_is_ignored_with_a_warning() -> None:
    with (
        pytest.warns(UserWarning, match="plasma_directory is ignored"),
        plasma.start_plasma_store(1 << 20, plasma_directory="/dev/shm") as (name, _),
    ):
        plasma.connect(name).disconnect()


def test_connect_retries_then_fails(tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "nothing.sock")
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="after 3 attempt"):
        plasma.connect(missing, num_retries=3)
    assert time.monotonic() - start >= 2 * plasma.CONNECT_RETRY_DELAY
    with pytest.raises(BadRequest):
        plasma.connect(missing, num_retries=-5)


# ---------------------------------------------------------------- create / seal / get_buffers


def test_create_write_seal_get(client: plasma.PlasmaClient, other: plasma.PlasmaClient) -> None:
    oid = random_id()
    buf = client.create(oid, 1000, b"meta")
    assert isinstance(buf, plasma.PlasmaBuffer) and buf.is_mutable and buf.size == 1000
    np.frombuffer(buf, dtype=np.uint8)[:] = np.arange(1000) % 256
    assert not client.contains(oid)
    client.seal(oid)
    assert other.contains(oid)
    [data] = other.get_buffers([oid])
    assert not data.is_mutable
    assert np.array_equal(np.frombuffer(data, np.uint8), np.arange(1000) % 256)
    [(meta, data2)] = other.get_buffers([oid], with_meta=True)
    assert meta == b"meta" and data2.equals(data)
    [meta_buf] = other.get_metadata([oid])
    assert meta_buf.to_pybytes() == b"meta"


def test_buffers_are_zero_copy(client: plasma.PlasmaClient) -> None:
    oid = random_id()
    buf = client.create(oid, 64)
    writer = pa.FixedSizeBufferWriter(buf)
    writer.write(b"x" * 64)
    client.seal(oid)
    [data] = client.get_buffers([oid])
    assert data.address == buf.address  # the same shared memory, mapped once


def test_create_existing_raises_plasma_object_exists(client: plasma.PlasmaClient) -> None:
    oid = random_id()
    client.create_and_seal(oid, b"one")
    with pytest.raises(plasma.PlasmaObjectExists) as info:
        client.create(oid, 10)
    assert isinstance(info.value, (pa.ArrowException, ObjectExists))
    with pytest.raises(plasma.PlasmaObjectExists):
        client.create_and_seal(oid, b"two")  # raised at once, not on a later call


def test_seal_errors_are_immediate(client: plasma.PlasmaClient) -> None:
    with pytest.raises(plasma.PlasmaObjectNonexistent):
        client.seal(random_id())
    oid = random_id()
    client.create_and_seal(oid, b"x")
    with pytest.raises(BadRequest, match="already sealed"):
        client.seal(oid)


def test_get_buffers_timeouts(client: plasma.PlasmaClient, other: plasma.PlasmaClient) -> None:
    missing, unsealed = random_id(), random_id()
    other.create(unsealed, 8)
    assert client.get_buffers([missing, unsealed], timeout_ms=0) == [None, None]
    assert client.get_buffers([missing], timeout_ms=0, with_meta=True) == [(None, None)]
    assert client.get_metadata([missing], timeout_ms=0) == [None]
    start = time.monotonic()
    assert client.get_buffers([unsealed], timeout_ms=200) == [None]
    assert time.monotonic() - start >= 0.19
    with pytest.raises(BadRequest, match="timeout_ms"):
        client.get_buffers([missing], timeout_ms=-2)


def test_get_buffers_blocks_until_sealed(
    client: plasma.PlasmaClient, other: plasma.PlasmaClient
) -> None:
    oid = random_id()
    buf = other.create(oid, 5)
    results: list[object] = []
    waiter = threading.Thread(target=lambda: results.extend(client.get_buffers([oid])))
    before = other._client.stats()["get_waiters"]
    waiter.start()  # timeout_ms=-1: waits however late the seal comes
    wait_until(lambda: other._client.stats()["get_waiters"] > before, what="the get to wait")
    pa.FixedSizeBufferWriter(buf).write(b"later")
    other.seal(oid)
    waiter.join(30)
    assert not waiter.is_alive()
    [data] = results
    assert isinstance(data, pa.Buffer) and data.to_pybytes() == b"later"


def test_create_and_seal_and_put_raw_buffer(client: plasma.PlasmaClient) -> None:
    oid = random_id()
    client.create_and_seal(oid, b"payload", b"md")
    [(meta, data)] = client.get_buffers([oid], with_meta=True)
    assert (meta, data.to_pybytes()) == (b"md", b"payload")

    raw = np.arange(100_000, dtype=np.int32)  # larger than the arena path
    rid = client.put_raw_buffer(raw, metadata=b"RAW")
    [(meta, data)] = client.get_buffers([rid], with_meta=True)
    assert meta == b"RAW" and np.array_equal(np.frombuffer(data, np.int32), raw)
    chosen = random_id()
    assert client.put_raw_buffer(b"abc", object_id=chosen) == chosen
    with pytest.raises(plasma.PlasmaObjectExists):
        client.put_raw_buffer(b"abc", object_id=chosen)


# ---------------------------------------------------------------- put / get


def test_put_get_values(client: plasma.PlasmaClient, other: plasma.PlasmaClient) -> None:
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", None]})
    ids = [client.put(arr), client.put(table), client.put(b"bytes")]
    out_arr, out_table, out_bytes = other.get(ids)
    np.testing.assert_array_equal(out_arr, arr)
    assert not out_arr.flags.writeable
    assert out_table.equals(table)
    assert out_bytes == b"bytes"
    np.testing.assert_array_equal(other.get(ids[0]), arr)  # a single id gives a single value
    chosen = random_id()
    assert client.put(arr, chosen) == chosen
    with pytest.raises(plasma.PlasmaObjectExists):
        client.put(arr, chosen)


def test_get_missing_is_object_not_available(client: plasma.PlasmaClient) -> None:
    present = client.put(np.zeros(3))
    result = client.get([random_id(), present], timeout_ms=0)
    assert result[0] is plasma.ObjectNotAvailable
    np.testing.assert_array_equal(result[1], np.zeros(3))
    assert client.get(random_id(), timeout_ms=0) is plasma.ObjectNotAvailable


def test_get_arrow_is_zero_copy(client: plasma.PlasmaClient) -> None:
    table = pa.table({"a": np.arange(50_000), "b": np.arange(50_000, dtype=np.float32)})
    oid = client.put(table)
    out = client.get(oid)
    [data] = client.get_buffers([oid])
    inside = range(data.address, data.address + data.size)
    for column in out.columns:
        for chunk in column.chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    assert buf.address in inside


def test_put_and_get_refusals(client: plasma.PlasmaClient) -> None:
    assert client.get(client.put({"a": [1, 2]})) == {"a": [1, 2]}  # any picklable value
    with pytest.raises(TypeError, match="cannot store"):
        client.put(lambda: None)
    with pytest.raises(Unsupported, match="serialization_context"):
        client.put(b"x", serialization_context=object())
    raw = client.put_raw_buffer(b"not serialized")
    with pytest.raises(BadRequest, match=r"not a plasma\.serialization header"):
        client.get(raw)


# ---------------------------------------------------------------- store management


def test_contains(client: plasma.PlasmaClient, other: plasma.PlasmaClient) -> None:
    oid = random_id()
    assert not client.contains(oid)
    other.create(oid, 4)
    assert not client.contains(oid)  # created, not sealed
    other.seal(oid)
    assert client.contains(oid)


def test_hash(client: plasma.PlasmaClient) -> None:
    a = client.put_raw_buffer(b"same", metadata=b"m")
    b = client.put_raw_buffer(b"same", metadata=b"m")
    c = client.put_raw_buffer(b"diff", metadata=b"m")
    d = client.put_raw_buffer(b"same", metadata=b"n")
    digest = client.hash(a)
    assert len(digest) == 8
    assert client.hash(b) == digest
    assert client.hash(c) != digest and client.hash(d) != digest
    with pytest.raises(plasma.PlasmaObjectNonexistent):
        client.hash(random_id())


def test_list_entries(client: plasma.PlasmaClient) -> None:
    sealed, created = random_id(), random_id()
    client.create_and_seal(sealed, b"12345", b"mm")
    buf = client.create(created, 7)
    listing = client.list()
    entry = listing[sealed]
    assert set(entry) >= {
        "data_size",
        "metadata_size",
        "ref_count",
        "create_time",
        "construct_duration",
        "state",
    }
    assert (entry["data_size"], entry["metadata_size"], entry["state"]) == (5, 2, "sealed")
    assert entry["construct_duration"] == 0  # sealed within the second it was created
    assert listing[created]["construct_duration"] == -1
    assert listing[created]["state"] == "created"
    assert listing[created]["ref_count"] == 1
    del buf


def test_creator_reference_lives_as_long_as_the_create_buffer(
    client: plasma.PlasmaClient, other: plasma.PlasmaClient
) -> None:
    oid = random_id()
    buf = client.create(oid, 16)
    client.seal(oid)
    assert other.list()[oid]["ref_count"] == 1  # the buffer still pins the object
    del buf
    gc.collect()
    assert client.list()[oid]["ref_count"] == 0  # released with the buffer

    explicit = random_id()
    buf = client.create(explicit, 16)
    client.seal(explicit)
    client.release(explicit)
    assert client.list()[explicit]["ref_count"] == 0
    with pytest.raises(plasma.PlasmaObjectNonexistent, match="no releasable reference"):
        client.release(explicit)
    del buf
    gc.collect()
    assert client.list()[explicit]["ref_count"] == 0  # not released twice


def test_get_buffer_holds_a_reference_until_collected(
    client: plasma.PlasmaClient, other: plasma.PlasmaClient
) -> None:
    oid = other.put_raw_buffer(b"held")
    [data] = client.get_buffers([oid])
    assert other.list()[oid]["ref_count"] == 1
    del data
    gc.collect()
    client.contains(oid)  # any request carries the queued release
    assert other.list()[oid]["ref_count"] == 0


def test_get_value_holds_a_reference_until_collected(
    client: plasma.PlasmaClient, other: plasma.PlasmaClient
) -> None:
    oid = other.put(np.arange(100_000))
    value = client.get(oid)
    gc.collect()
    assert other.list()[oid]["ref_count"] == 1  # the array's base keeps the reference
    assert int(value.sum()) == sum(range(100_000))
    del value
    gc.collect()
    client.contains(oid)
    assert other.list()[oid]["ref_count"] == 0


def test_empty_objects(client: plasma.PlasmaClient) -> None:
    empty_bytes, empty_array = client.put(b""), client.put(np.zeros((0, 3), np.int8))
    out_bytes, out_array = client.get([empty_bytes, empty_array], timeout_ms=0)
    assert out_bytes == b""
    assert out_array.shape == (0, 3) and out_array.dtype == np.int8
    [data] = client.get_buffers([client.put_raw_buffer(b"")])
    assert data is not None and data.size == 0


def test_delete(client: plasma.PlasmaClient, other: plasma.PlasmaClient) -> None:
    a, b = client.put_raw_buffer(b"a"), client.put_raw_buffer(b"b")
    client.delete([a, random_id()])  # unknown ids are ignored
    assert not other.contains(a) and other.contains(b)
    [held] = other.get_buffers([b])
    client.delete([b])
    assert not client.contains(b)
    assert held.to_pybytes() == b"b"  # freed only when the last reference goes


def test_evict_and_store_full() -> None:
    with plasma.start_plasma_store(4 << 20) as (name, _):
        client = plasma.connect(name)
        ids = [client.put_raw_buffer(np.full(256 << 10, i, np.uint8)) for i in range(8)]
        [held] = client.get_buffers([ids[0]])
        freed = client.evict(1 << 20)
        assert freed >= 1 << 20
        assert client.contains(ids[0])  # referenced objects are never evicted
        assert sum(not client.contains(i) for i in ids) >= 4
        # a full store evicts unreferenced objects to make room, as Plasma does
        big = client.create(random_id(), 3 << 20)
        assert held.to_pybytes()[:4] == b"\x00" * 4
        # ... and raises PlasmaStoreFull when everything left is referenced
        with pytest.raises(plasma.PlasmaStoreFull) as info:
            client.create(random_id(), 1 << 20)
        assert isinstance(info.value, (pa.ArrowException, StoreFull))
        del big
        client.disconnect()


# ---------------------------------------------------------------- notifications, disconnect


def test_notifications(client: plasma.PlasmaClient, other: plasma.PlasmaClient) -> None:
    with pytest.raises(BadRequest, match="subscribe"):
        client.get_next_notification()
    client.subscribe()
    oid = random_id()
    other.create_and_seal(oid, b"12345", b"md")
    seen = client.get_next_notification()
    while seen[0] != oid:  # notifications of other tests' objects may come first
        seen = client.get_next_notification()
    assert seen == (oid, 5, 2)
    other.delete([oid])
    seen = client.get_next_notification()
    while seen[0] != oid:
        seen = client.get_next_notification()
    assert seen == (oid, -1, -1)


def test_disconnect_aborts_unsealed_and_drops_references(
    store: tuple[str, subprocess.Popen[bytes]], other: plasma.PlasmaClient
) -> None:
    client = plasma.connect(store[0])
    unsealed = random_id()
    client.create(unsealed, 10)
    sealed = other.put_raw_buffer(b"ref")
    [held] = client.get_buffers([sealed])
    client.disconnect()
    # the store notices the closed connection on its own time
    wait_until(lambda: unsealed not in other.list(), what="the unsealed object to be aborted")
    assert other.list()[sealed]["ref_count"] == 0
    del held


# ---------------------------------------------------------------- notification socket


def _read_message(sock: object, timeout: float = 10.0) -> bytes:
    """One notification message read as a pyarrow 11 program did: select, 8-byte length, body."""
    import select
    import struct

    readable, _, _ = select.select([sock], [], [], timeout)
    assert readable, "no notification message arrived"
    (msg_len,) = struct.unpack("L", sock.recv(8))  # type: ignore[attr-defined]
    return sock.recv(msg_len)  # type: ignore[attr-defined,no-any-return]


def _notification_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "plasma.compat notifications"]


def _decoded_until(
    client: plasma.PlasmaClient, sock: object, wanted: set[plasma.ObjectID]
) -> dict[plasma.ObjectID, tuple[int, int]]:
    seen: dict[plasma.ObjectID, tuple[int, int]] = {}
    while not wanted <= set(seen):
        ids, data_sizes, metadata_sizes = client.decode_notifications(_read_message(sock))
        assert len(ids) == len(data_sizes) == len(metadata_sizes) >= 1
        for oid, data_size, metadata_size in zip(ids, data_sizes, metadata_sizes, strict=True):
            assert oid not in seen, "a notification came twice"
            seen[oid] = (data_size, metadata_size)
    return seen


def test_notification_socket_as_a_pyarrow_program(
    client: plasma.PlasmaClient, other: plasma.PlasmaClient
) -> None:
    import socket

    with pytest.raises(BadRequest, match="subscribe"):
        client.get_notification_socket()
    client.subscribe()
    sock = client.get_notification_socket()
    assert isinstance(sock, socket.socket) and sock.fileno() >= 0
    assert client.get_notification_socket() is sock
    sizes = {random_id(): (10 * i + 1, i) for i in range(20)}
    for oid, (data_size, metadata_size) in sizes.items():
        buf = other.create(oid, data_size, b"m" * metadata_size)
        pa.FixedSizeBufferWriter(buf).write(b"x" * data_size)
        other.seal(oid)
    seen = _decoded_until(client, sock, set(sizes))
    assert {oid: seen[oid] for oid in sizes} == sizes
    other.delete(list(sizes))
    seen = _decoded_until(client, sock, set(sizes))
    assert {seen[oid] for oid in sizes} == {(-1, -1)}


def test_decode_notifications_reads_only_its_messages(
    client: plasma.PlasmaClient, other: plasma.PlasmaClient
) -> None:
    import select
    import struct

    client.subscribe()
    sock = client.get_notification_socket()
    oid = other.put_raw_buffer(b"abc", metadata=b"z")
    readable, _, _ = select.select([sock], [], [], 10)
    assert readable
    (msg_len,) = struct.unpack("=q", sock.recv(8))
    body = sock.recv(msg_len)
    whole = struct.pack("=q", msg_len) + body
    for buf in (body, whole, bytearray(body), memoryview(body), pa.py_buffer(body)):
        ids, data_sizes, metadata_sizes = client.decode_notifications(buf)
        assert (ids[-1], data_sizes[-1], metadata_sizes[-1]) == (oid, 3, 1)
    for garbage in (b"", b"nonsense", body[:-1], body + b"\0"):
        with pytest.raises(BadRequest, match="not a notification message"):
            client.decode_notifications(garbage)


def test_get_next_notification_reads_the_socket_once_it_exists(
    client: plasma.PlasmaClient, other: plasma.PlasmaClient
) -> None:
    import select

    client.subscribe()
    before = other.put_raw_buffer(b"1")  # queued before the socket exists: not lost
    sock = client.get_notification_socket()
    after = [other.put_raw_buffer(b"22"), other.put_raw_buffer(b"333")]
    seen = [client.get_next_notification() for _ in range(3)]
    assert seen == [(before, 1, 0), (after[0], 2, 0), (after[1], 3, 0)]
    # get_next_notification consumed them: nothing is left on the socket
    assert select.select([sock], [], [], 0.3)[0] == []
    # and what the program reads itself, get_next_notification does not see again
    last = other.put_raw_buffer(b"4444")
    assert _decoded_until(client, sock, {last}) == {last: (4, 0)}
    other.delete([last])
    assert client.get_next_notification() == (last, -1, -1)


def test_get_next_notification_without_the_socket_starts_no_thread(
    client: plasma.PlasmaClient, other: plasma.PlasmaClient
) -> None:
    threads = len(_notification_threads())
    client.subscribe()
    oid = other.put_raw_buffer(b"12345", metadata=b"md")
    assert client.get_next_notification() == (oid, 5, 2)
    assert len(_notification_threads()) == threads


def test_disconnect_stops_the_notification_thread_and_closes_its_fds(
    store: tuple[str, subprocess.Popen[bytes]], other: plasma.PlasmaClient
) -> None:
    other.put_raw_buffer(b"warm")  # other's segment is mapped before fds are counted
    gc.collect()
    fds = set(os.listdir("/proc/self/fd"))
    threads = set(_notification_threads())
    client = plasma.connect(store[0])
    client.subscribe()
    sock = client.get_notification_socket()
    (thread,) = set(_notification_threads()) - threads
    assert thread.daemon and thread.is_alive()
    oid = other.put_raw_buffer(b"x")
    assert oid in _decoded_until(client, sock, {oid})
    client.disconnect()
    assert not thread.is_alive()
    assert sock.fileno() == -1
    assert set(os.listdir("/proc/self/fd")) == fds
    other.put_raw_buffer(b"after")  # the store is unaffected
    client.disconnect()  # twice is harmless


def test_disconnect_wakes_a_blocked_get_next_notification(
    store: tuple[str, subprocess.Popen[bytes]],
) -> None:
    client = plasma.connect(store[0])
    client.subscribe()
    client.get_notification_socket()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            client.get_next_notification()
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    pump = client._notification_pump
    assert pump is not None
    wait_until(pump._read_lock.locked, what="the waiter to read")  # held while it reads
    client.disconnect()
    waiter.join(5)
    assert not waiter.is_alive()
    from plasma.errors import Disconnected

    assert len(errors) == 1 and isinstance(errors[0], Disconnected)


def test_notification_socket_ends_when_the_store_stops() -> None:
    import select

    from plasma.errors import Disconnected

    threads = set(_notification_threads())
    with plasma.start_plasma_store(1 << 20) as (socket_name, _):
        client = plasma.connect(socket_name)
        client.subscribe()
        sock = client.get_notification_socket()
        (thread,) = set(_notification_threads()) - threads
    assert select.select([sock], [], [], 10)[0], "no end of file after the store stopped"
    assert sock.recv(8) == b""
    with pytest.raises(Disconnected):
        client.get_next_notification()
    thread.join(5)
    assert not thread.is_alive()
    client.disconnect()
    assert sock.fileno() == -1


def test_one_message_per_notification_as_pyarrow_test_subscribe_socket(
    client: plasma.PlasmaClient, other: plasma.PlasmaClient
) -> None:
    """pyarrow's own test_subscribe_socket reads ``recv_objids[0]`` of one message per object."""
    client.subscribe()
    rsock = client.get_notification_socket()
    for count in (1, 10, 300):
        object_ids = [random_id() for _ in range(count)]
        for j, oid in enumerate(object_ids):
            other.create(oid, j + 1, b"m" * (j % 7))
            other.seal(oid)
        for j, oid in enumerate(object_ids):
            recv_objids, recv_dsizes, recv_msizes = client.decode_notifications(
                _read_message(rsock)
            )
            assert len(recv_objids) == 1
            assert (recv_objids[0], recv_dsizes[0], recv_msizes[0]) == (oid, j + 1, j % 7)


def test_a_full_store_of_small_objects_takes_one_object_of_the_whole_capacity() -> None:
    """As in Plasma: evicting every unreferenced object makes room for one object of the
    whole capacity, even though the small objects were spread over several segments; a
    create larger than the store fails at once with PlasmaStoreFull and creates nothing."""
    with plasma.start_plasma_store(100_000_000) as (socket_name, _):
        c = plasma.connect(socket_name)
        capacity = c.store_capacity()
        ids = [random_id() for _ in range(3000)]
        for oid in ids:
            c.create_and_seal(oid, b"s" * 30_000)  # 90 MB of sealed, unreferenced objects
        assert len(c.list()) > 1000
        big = random_id()
        buf = c.create(big, capacity)
        np.frombuffer(buf, dtype=np.uint8)[:4] = np.frombuffer(b"full", dtype=np.uint8)
        c.seal(big)
        assert c.list()[big]["data_size"] == capacity
        del buf
        assert bytes(c.get_buffers([big])[0][:4]) == b"full"
        too_big = random_id()
        with pytest.raises(plasma.PlasmaStoreFull):
            c.create(too_big, capacity + 4096)  # past the page rounding
        assert not c.contains(too_big) and too_big not in c.list()
        c.disconnect()


def test_put_and_get_of_a_pandas_frame(client: plasma.PlasmaClient) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {"x": np.arange(5), "when": pd.date_range("2026-01-01", periods=5, tz="Europe/Paris")},
        index=pd.Index(list("abcde"), name="k"),
    )
    got = client.get(client.put(frame))
    pd.testing.assert_frame_equal(got, frame)


def test_buffers_of_objects_another_client_sealed_hold_pins_not_requests(
    client: plasma.PlasmaClient, other: plasma.PlasmaClient
) -> None:
    warm, oid = random_id(), random_id()
    other.put_raw_buffer(b"maps the segment", warm)
    client.get_buffers([warm])  # the first get maps the segment (a request)
    other.put_raw_buffer(b"pinned", oid)
    stats = other._client.stats
    gets = stats()["operations"].get("Get", 0)
    [buffer] = client.get_buffers([oid], timeout_ms=0)
    assert buffer.to_pybytes() == b"pinned"
    assert stats()["operations"].get("Get", 0) == gets  # served by the directory
    assert other.list()[oid]["ref_count"] == 1  # the pin, counted as a reference
    del buffer
    gc.collect()
    assert other.list()[oid]["ref_count"] == 0  # released with the buffer (release_delay 0)
