"""The API of the removed ``pyarrow.plasma`` (pyarrow 11), on top of plasma-coord.

Code written for ``pyarrow.plasma`` runs after changing one import::

    import plasma.compat as plasma        # was: import pyarrow.plasma as plasma

    with plasma.start_plasma_store(10**9) as (socket_name, proc):
        client = plasma.connect(socket_name)
        oid = client.put(np.arange(10))
        client.get(oid)

Semantics follow pyarrow's documentation: timeouts are in milliseconds (-1 blocks, 0 polls),
calls raise their errors at once, buffers returned by ``create`` / ``get_buffers`` are
``pyarrow.Buffer`` objects whose reference to the object is dropped when they are garbage
collected, and deletion notifications carry sizes of -1. Every difference is listed in
``docs/migration.md``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import mmap
import os
import select
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

import plasma
from plasma import serialization
from plasma.client import Client, Subscription
from plasma.client import connect as _connect
from plasma.errors import (
    BadRequest,
    Disconnected,
    ObjectExists,
    ObjectNotFound,
    PlasmaError,
    PlasmaTimeout,
    StoreFull,
    Unsupported,
)
from plasma.ids import ObjectID

__all__ = [
    "ObjectID",
    "ObjectNotAvailable",
    "PlasmaBuffer",
    "PlasmaClient",
    "PlasmaObjectExists",
    "PlasmaObjectNonexistent",
    "PlasmaStoreFull",
    "connect",
    "start_plasma_store",
]

DEFAULT_CONNECT_RETRIES = 50
CONNECT_RETRY_DELAY = 0.1  # seconds between connection attempts, as in Plasma
STORE_START_TIMEOUT = 60.0  # seconds for `plasma-coord serve` to print its ready line
STORE_STOP_TIMEOUT = 10.0  # seconds after SIGTERM before the store is killed
DIGEST_SIZE = 8  # bytes of hash(), as Plasma's 64-bit digest
HUGEPAGE_SIZE = 2 << 20  # use_hugepages=True: serve --hugepages 2M

# socket name -> plasma_store_memory of the stores start_plasma_store runs in this process
_ASKED_CAPACITY: dict[str, int] = {}

PlasmaBuffer = pa.Buffer  # buffers are plain pyarrow Buffers that hold the object's reference


class ObjectNotAvailable:
    """Returned by :meth:`PlasmaClient.get` (the class itself) for an object not available."""


class PlasmaObjectExists(ObjectExists, pa.ArrowException):
    """An object with this id already exists."""


class PlasmaStoreFull(StoreFull, pa.ArrowException):
    """The store cannot make room for the object."""


class PlasmaObjectNonexistent(ObjectNotFound, pa.ArrowException):
    """The object does not exist (or this client holds no reference to it)."""


_TRANSLATED: tuple[tuple[type[PlasmaError], type[PlasmaError]], ...] = (
    (ObjectExists, PlasmaObjectExists),
    (StoreFull, PlasmaStoreFull),
    (ObjectNotFound, PlasmaObjectNonexistent),
)


@contextlib.contextmanager
def _pyarrow_errors() -> Iterator[None]:
    """Raise plasma-coord errors as the matching pyarrow.plasma exception classes."""
    try:
        yield
    except PlasmaError as exc:
        for ours, theirs in _TRANSLATED:
            if isinstance(exc, ours) and not isinstance(exc, theirs):
                raise theirs(exc.message) from exc
        raise


def _timeout_seconds(timeout_ms: int) -> float | None:
    if timeout_ms == -1:
        return None
    if timeout_ms < 0:
        raise BadRequest(f"timeout_ms must be -1 (block) or >= 0, got {timeout_ms}")
    return timeout_ms / 1000


def _no_serialization_context(serialization_context: object) -> None:
    if serialization_context is not None:
        raise Unsupported(
            "serialization_context is not supported: pyarrow.serialize is gone; values are "
            "stored by plasma.serialization (numpy, Arrow, bytes; anything else with pickle 5)"
        )


class PlasmaClient:
    """A pyarrow.plasma-style client; make one with :func:`connect`."""

    def __init__(self, client: Client, store_socket_name: str) -> None:
        self._client = client
        self._socket_name = store_socket_name
        self._subscriber: Client | None = None
        self._notifications: Subscription | None = None

    @property
    def store_socket_name(self) -> str:
        return self._socket_name

    # ------------------------------------------------------------ create / seal

    def create(self, object_id: ObjectID, data_size: int, metadata: bytes = b"") -> pa.Buffer:
        """Create an object; returns its mutable buffer (write, then :meth:`seal`).

        Raises PlasmaObjectExists or PlasmaStoreFull.
        """
        client = self._client
        with _pyarrow_errors():
            view = client.create(object_id, data_size, bytes(metadata))
        # the creator reference goes once the object is sealed and this buffer is gone
        # (the client does that: plasma.Client.create)
        return pa.py_buffer(view)

    def seal(self, object_id: ObjectID) -> None:
        """Make the object immutable and visible to others; raises errors at once."""
        client = self._client
        with _pyarrow_errors():
            client.seal(object_id, wait=True)  # (the client releases it with its buffer)

    def release(self, object_id: ObjectID) -> None:
        """Drop the creator reference of a sealed object now, while its buffer is still alive.

        Buffers from ``get_buffers`` / ``get`` hold their own references, dropped when they
        are garbage collected.
        """
        client = self._client
        if not client._core.holds_creator_reference(object_id):
            raise PlasmaObjectNonexistent(
                f"this client holds no releasable reference to {object_id.hex()}: only sealed "
                "objects whose create() buffer is still alive can be released explicitly"
            )
        client.release(object_id)

    def create_and_seal(
        self, object_id: ObjectID, data: bytes | memoryview, metadata: bytes = b""
    ) -> None:
        """Store ``data`` under ``object_id`` in one call; raises PlasmaObjectExists at once."""
        client = self._client
        with _pyarrow_errors():
            client.create_and_seal(object_id, data, bytes(metadata))
            client.flush()

    def put_raw_buffer(
        self,
        value: Any,
        object_id: ObjectID | None = None,
        metadata: bytes = b"",
        memcopy_threads: int = 6,
    ) -> ObjectID:
        """Store any buffer-protocol object as is; returns its id (``memcopy_threads`` unused)."""
        oid = object_id if object_id is not None else ObjectID.from_random()
        self.create_and_seal(oid, memoryview(value).cast("B"), metadata)
        return oid

    def put(
        self,
        value: Any,
        object_id: ObjectID | None = None,
        memcopy_threads: int = 6,
        serialization_context: Any = None,
    ) -> ObjectID:
        """Store a numpy array, Arrow object or bytes (zero-copy layout); returns its id."""
        _no_serialization_context(serialization_context)
        client = self._client
        with _pyarrow_errors():
            oid = client.put(value, object_id)
            client.flush()
        return oid

    # ------------------------------------------------------------ get

    def get_buffers(
        self, object_ids: Sequence[ObjectID], timeout_ms: int = -1, with_meta: bool = False
    ) -> list[Any]:
        """Data buffers of sealed objects, None for those not available within ``timeout_ms``.

        With ``with_meta`` each entry is ``(metadata bytes, data buffer)`` (``(None, None)``
        when not available).
        """
        client = self._client
        with _pyarrow_errors():
            results = client.get_buffers(
                list(object_ids), _timeout_seconds(timeout_ms), with_metadata=True
            )
        out: list[Any] = []
        for result in results:
            if result is None:
                out.append((None, None) if with_meta else None)
                continue
            data, meta = result
            out.append((bytes(meta), pa.py_buffer(data)) if with_meta else pa.py_buffer(data))
        return out

    def get_metadata(self, object_ids: Sequence[ObjectID], timeout_ms: int = -1) -> list[Any]:
        """Metadata buffers of sealed objects, None for those not available in time."""
        client = self._client
        with _pyarrow_errors():
            results = client.get_buffers(
                list(object_ids), _timeout_seconds(timeout_ms), with_metadata=True
            )
        return [None if r is None else pa.py_buffer(r[1]) for r in results]

    def get(
        self,
        object_ids: ObjectID | Sequence[ObjectID],
        timeout_ms: int = -1,
        serialization_context: Any = None,
    ) -> Any:
        """Values stored by :meth:`put` (zero-copy), ``ObjectNotAvailable`` for missing ones.

        A single ObjectID gives a single value, a list gives a list.
        """
        _no_serialization_context(serialization_context)
        if isinstance(object_ids, ObjectID):
            return self.get([object_ids], timeout_ms)[0]
        client = self._client
        with _pyarrow_errors():
            results = client.get_buffers(
                list(object_ids), _timeout_seconds(timeout_ms), with_metadata=True
            )
        return [
            ObjectNotAvailable if r is None else serialization.decode(r[0], r[1]) for r in results
        ]

    # ------------------------------------------------------------ store

    def contains(self, object_id: ObjectID) -> bool:
        """True when the object is present and sealed."""
        with _pyarrow_errors():
            return self._client.contains(object_id)

    def hash(self, object_id: ObjectID) -> bytes:
        """An 8-byte digest of the object's data and metadata (BLAKE2b, not Plasma's XXH64)."""
        (result,) = self.get_buffers([object_id], timeout_ms=0, with_meta=True)
        meta, data = result
        if data is None:
            raise PlasmaObjectNonexistent(f"object {object_id.hex()} is not available")
        digest = hashlib.blake2b(memoryview(data), digest_size=DIGEST_SIZE)
        digest.update(meta)
        return digest.digest()

    def evict(self, num_bytes: int) -> int:
        """Evict least recently used unreferenced objects; returns the bytes freed."""
        with _pyarrow_errors():
            return self._client.evict(num_bytes)

    def delete(self, object_ids: Sequence[ObjectID]) -> None:
        """Delete objects (deferred while referenced); absent or unsealed ids are ignored."""
        client = self._client
        with contextlib.suppress(ObjectNotFound):
            client.delete(list(object_ids))

    def list(self) -> dict[ObjectID, dict[str, Any]]:
        """Every object: data_size, metadata_size, ref_count, create_time (Unix seconds),
        construct_duration (whole seconds from create to seal, -1 while unsealed, as in
        Plasma), state ("created" or "sealed") and node."""
        with _pyarrow_errors():
            listing = self._client.list()
        return {
            oid: {
                "data_size": info["data_size"],
                "metadata_size": info["metadata_size"],
                "ref_count": info["ref_count"],
                "create_time": int(info["create_time"]),
                "construct_duration": int(info["construct_duration"]),
                "state": info["state"],
                "node": info["node"],
            }
            for oid, info in listing.items()
        }

    def store_capacity(self) -> int:
        """The store's capacity in bytes: for a store :func:`start_plasma_store` started in
        this process, the ``plasma_store_memory`` it was given (its budget is that rounded
        up to whole pages); else the budget the store reports."""
        capacity = self._client.info.capacity
        asked = _ASKED_CAPACITY.get(self._socket_name)
        return asked if asked is not None and asked <= capacity else capacity

    # ------------------------------------------------------------ notifications

    _notification_pump: _NotificationPump | None = None  # set by get_notification_socket()

    def subscribe(self) -> None:
        """Receive seal and delete notifications (on a second connection, as in Plasma)."""
        if self._subscriber is not None:
            return
        with _pyarrow_errors():
            subscriber = _connect(self._socket_name, "pyarrow.plasma notifications")
            self._notifications = subscriber.subscribe()
        self._subscriber = subscriber

    def get_notification_socket(self) -> Any:
        """The socket notifications arrive on (the same ``socket.socket`` on every call), to
        ``select`` / ``poll`` and read from.

        Each notification is one message (as Plasma's store sent them): an 8-byte
        native-endian length, then that many bytes for :meth:`decode_notifications`. A thread
        feeds it from the subscription; once it runs, :meth:`get_next_notification` reads the
        same socket, so every notification reaches exactly one of the two. :meth:`disconnect`
        stops the thread and closes the socket.
        """
        if self._notifications is None:
            raise BadRequest("get_notification_socket() needs subscribe() first")
        if self._notification_pump is None:
            pump = _NotificationPump(self._notifications)
            self._notification_pump = pump
            weakref.finalize(self, pump.close)  # a client dropped without disconnect()
        return self._notification_pump.reader

    def decode_notifications(self, buf: Any) -> _DecodedNotifications:
        """``(object_ids, data_sizes, metadata_sizes)`` of one message read from
        :meth:`get_notification_socket` (the bytes after its length, or the whole message);
        sizes are -1 for a deletion."""
        return _decode_notifications(buf)

    def get_next_notification(self) -> tuple[ObjectID, int, int]:
        """Block for the next ``(object_id, data_size, metadata_size)``; sizes are -1 for a
        deletion."""
        if self._notification_pump is not None:
            return self._notification_pump.next()
        if self._notifications is None:
            raise BadRequest("get_next_notification() needs subscribe() first")
        return _notification_tuple(self._notifications.next())

    def disconnect(self) -> None:
        """Close the connection(s); the store drops this client's references."""
        if self._notification_pump is not None:
            pump, self._notification_pump = self._notification_pump, None
            pump.close()
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = self._notifications = None
        self._client.close()


# Notification messages of get_notification_socket(): an int64 length in native byte order
# (as Plasma framed them), then a payload of _NOTE_MAGIC, a uint32 count and count records of
# 20-byte object id, int64 data_size, int64 metadata_size (little-endian; -1, -1: deleted).
_NOTE_MAGIC = b"PCN1"
_NOTE_LENGTH_SIZE = 8
_NOTE_HEADER_SIZE = 8
_NOTE_RECORD_SIZE = 36
_NOTE_BATCH = 1024  # messages written at once at most (52 KiB: they fit the buffer whole)
_NOTE_POLL = 0.05  # seconds the feeding thread waits before checking whether to stop

_DecodedNotifications = tuple[list[ObjectID], list[int], list[int]]


def _notification_tuple(note: Any) -> tuple[ObjectID, int, int]:
    if note.kind == "deleted":
        return ObjectID(note.id), -1, -1
    return ObjectID(note.id), note.data_size, note.metadata_size


def _encode_notifications(notes: Sequence[tuple[ObjectID, int, int]]) -> bytes:
    parts = [_NOTE_MAGIC, len(notes).to_bytes(4, "little")]
    for oid, data_size, metadata_size in notes:
        parts.append(oid.binary())
        parts.append(data_size.to_bytes(8, "little", signed=True))
        parts.append(metadata_size.to_bytes(8, "little", signed=True))
    payload = b"".join(parts)
    return len(payload).to_bytes(_NOTE_LENGTH_SIZE, sys.byteorder, signed=True) + payload


def _decode_notifications(buf: Any) -> _DecodedNotifications:
    view = memoryview(buf).cast("B")
    length = int.from_bytes(view[:_NOTE_LENGTH_SIZE], sys.byteorder, signed=True)
    if view[_NOTE_LENGTH_SIZE : _NOTE_LENGTH_SIZE + 4] == _NOTE_MAGIC and length == len(view) - 8:
        view = view[_NOTE_LENGTH_SIZE:]  # the whole message, length included
    count = int.from_bytes(view[4:_NOTE_HEADER_SIZE], "little")
    if view[:4] != _NOTE_MAGIC or len(view) != _NOTE_HEADER_SIZE + count * _NOTE_RECORD_SIZE:
        raise BadRequest(
            f"not a notification message of get_notification_socket() ({len(view)} bytes): "
            "pass the bytes that follow the message's 8-byte length"
        )
    object_ids: list[ObjectID] = []
    data_sizes: list[int] = []
    metadata_sizes: list[int] = []
    for start in range(_NOTE_HEADER_SIZE, len(view), _NOTE_RECORD_SIZE):
        object_ids.append(ObjectID(bytes(view[start : start + 20])))
        data_sizes.append(int.from_bytes(view[start + 20 : start + 28], "little", signed=True))
        metadata_sizes.append(int.from_bytes(view[start + 28 : start + 36], "little", signed=True))
    return object_ids, data_sizes, metadata_sizes


class _NotificationPump:
    """Feeds a subscription's notifications into a socket pair, one message each.

    ``reader`` is the user's end. The thread owns the write end and closes it when it stops
    (on :meth:`close`, or when the subscription fails: the reader then sees end of file and
    :meth:`next` raises the failure). It never holds the compat client.
    """

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription
        self.reader, self._writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.error: PlasmaError | OSError | None = None
        self._stop = threading.Event()
        self._read_lock = threading.Lock()
        self._pending: collections.deque[tuple[ObjectID, int, int]] = collections.deque()
        self._thread = threading.Thread(
            target=self._run, name="plasma.compat notifications", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        failure: PlasmaError | OSError | None = None
        try:
            while failure is None and not self._stop.is_set():
                try:
                    batch = [_notification_tuple(self._subscription.next(_NOTE_POLL))]
                except PlasmaTimeout:
                    continue
                while len(batch) < _NOTE_BATCH:
                    try:  # only what has already arrived: timeout 0 does not wait
                        batch.append(_notification_tuple(self._subscription.next(0)))
                    except PlasmaTimeout:
                        break
                    except PlasmaError as exc:  # after the batch read before it
                        failure = exc
                        break
                self._send(b"".join(_encode_notifications([note]) for note in batch))
        except (PlasmaError, OSError) as exc:
            failure = exc
        finally:
            if not self._stop.is_set():
                self.error = failure
            self._writer.close()  # the reader sees end of file

    def _send(self, messages: bytes) -> None:
        while not self._stop.is_set():
            _, writable, _ = select.select([], [self._writer], [], _NOTE_POLL)
            if writable:  # at most a quarter of the buffer in use: the messages fit whole
                self._writer.sendall(messages)
                return

    def next(self) -> tuple[ObjectID, int, int]:
        """The next notification from the socket (a whole message read, the rest kept)."""
        with self._read_lock:
            if not self._pending:
                length = int.from_bytes(self._read(_NOTE_LENGTH_SIZE), sys.byteorder)
                self._pending.extend(zip(*_decode_notifications(self._read(length)), strict=True))
            return self._pending.popleft()

    def _read(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            try:
                chunk = self.reader.recv(size - len(data)) if self.reader.fileno() >= 0 else b""
            except BlockingIOError:  # the program made the socket non-blocking
                select.select([self.reader], [], [])
                continue
            if not chunk:
                error = self.error
                if isinstance(error, PlasmaError):
                    raise type(error)(error.message) from error
                raise Disconnected(
                    f"the notification socket is closed{f': {error}' if error else ''}"
                ) from error
            data += chunk
        return bytes(data)

    def close(self) -> None:
        """Stop the thread and close both ends (the reader at once, for a blocked reader)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self.reader.shutdown(socket.SHUT_RDWR)  # wakes readers and a blocked sendall
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self.reader.close()


def connect(store_socket_name: str, num_retries: int = -1) -> PlasmaClient:
    """Connect to the store at ``store_socket_name``, trying ``num_retries`` times
    (-1: 50) 0.1 s apart while the socket is missing or refuses connections."""
    if num_retries < -1:
        raise BadRequest(f"num_retries must be -1 or >= 0, got {num_retries}")
    attempts = max(1, DEFAULT_CONNECT_RETRIES if num_retries == -1 else num_retries)
    for attempt in range(attempts):
        try:
            return PlasmaClient(_connect(store_socket_name, release_delay=0), store_socket_name)
        except ConnectionError as exc:
            if attempt == attempts - 1:
                raise ConnectionError(
                    f"could not connect to the plasma store at {store_socket_name} "
                    f"after {attempts} attempt(s): {exc}"
                ) from exc
            time.sleep(CONNECT_RETRY_DELAY)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def start_plasma_store(
    plasma_store_memory: int,
    use_valgrind: bool = False,
    use_profiler: bool = False,
    plasma_directory: str | None = None,
    use_hugepages: bool = False,
    external_store: str | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``plasma-coord serve`` with ``plasma_store_memory`` bytes on a temporary socket.

    Yields ``(socket_name, process)`` once the store listens; stops it with SIGTERM (then
    SIGKILL) on exit. The store's budget is ``plasma_store_memory`` rounded up to whole pages,
    so an object of exactly that size fits. ``use_hugepages`` backs segments with 2 MiB
    pages; ``external_store`` spills evicted objects to disk (``serve --spill-dir``: the
    directory of a ``file://`` URL or a path, else a temporary one); valgrind and profiler
    are not supported; ``plasma_directory`` is ignored (segments are memfds).
    """
    if isinstance(plasma_store_memory, bool) or not isinstance(plasma_store_memory, int):
        raise BadRequest(f"plasma_store_memory must be an int, got {plasma_store_memory!r}")
    if plasma_store_memory <= 0:
        raise BadRequest(f"plasma_store_memory must be positive, got {plasma_store_memory}")
    if use_valgrind and use_profiler:
        raise BadRequest("cannot use valgrind and profiler at the same time")
    if use_valgrind or use_profiler:
        raise Unsupported("plasma-coord is a Python process: valgrind and profiler do not apply")
    if plasma_directory is not None:
        warnings.warn(
            "plasma_directory is ignored: plasma-coord keeps objects in memfd segments",
            stacklevel=3,
        )
    tmpdir = tempfile.mkdtemp(prefix="test_plasma-")
    socket_name = os.path.join(tmpdir, "plasma.sock")
    # Plasma's store held an object of exactly its capacity: the budget is rounded up to
    # whole pages (serve rounds --memory down), and store_capacity() reports the number asked
    page = HUGEPAGE_SIZE if use_hugepages else mmap.PAGESIZE
    command = [
        sys.executable,
        "-m",
        "plasma",
        "serve",
        "--socket",
        socket_name,
        "--memory",
        str(-(-plasma_store_memory // page) * page),
        "--hugepages",
        "2M" if use_hugepages else "off",
    ]
    if external_store is not None:  # Plasma's external store is spilling to disk here
        command += ["--spill-dir", _spill_dir(external_store, tmpdir)]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(plasma.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    proc: subprocess.Popen[bytes] | None = None
    try:
        with open(os.path.join(tmpdir, "stderr.log"), "wb") as stderr:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env)
        _wait_until_ready(proc, os.path.join(tmpdir, "stderr.log"))
        _ASKED_CAPACITY[socket_name] = plasma_store_memory
        yield socket_name, proc
    finally:
        _ASKED_CAPACITY.pop(socket_name, None)
        if proc is not None:
            _stop(proc)
        shutil.rmtree(tmpdir, ignore_errors=True)


def _spill_dir(external_store: str, tmpdir: str) -> str:
    """The ``--spill-dir`` for ``external_store``: the directory of a ``file://`` URL or a
    path, else (Plasma's ``hashtable://...`` and other URLs) one inside the store's
    temporary directory, removed with it."""
    if not isinstance(external_store, str) or not external_store:
        raise BadRequest(f"external_store must be a non-empty str, got {external_store!r}")
    if external_store.startswith("file://"):
        directory = external_store.removeprefix("file://")
    elif "://" not in external_store:
        directory = external_store
    else:
        directory = os.path.join(tmpdir, "spill")
        os.mkdir(directory)
    if not os.path.isdir(directory):
        raise BadRequest(f"external_store={external_store!r}: {directory} is not a directory")
    return os.path.abspath(directory)


def _wait_until_ready(proc: subprocess.Popen[bytes], stderr_path: str) -> None:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        readable = bool(sel.select(STORE_START_TIMEOUT))
    line = proc.stdout.readline() if readable else b""
    if line.startswith(b"ready "):
        return
    if readable and not line:  # end of file: the store is exiting
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STORE_STOP_TIMEOUT)
    status = proc.poll()
    if status is not None:
        state = f"exited with code {status}"
    elif line:
        state = f"printed {line!r} instead of its ready line"
    else:
        state = f"was not ready within {STORE_START_TIMEOUT} s"
    with open(stderr_path, "rb") as f:
        err = f.read()[-2000:].decode(errors="replace")
    raise RuntimeError(f"plasma-coord serve {state}; stderr:\n{err}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STORE_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
