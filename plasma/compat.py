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
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

import plasma
from plasma import serialization
from plasma.client import Client, Subscription
from plasma.client import connect as _connect
from plasma.errors import (
    BadRequest,
    ObjectExists,
    ObjectNotFound,
    PlasmaError,
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
        # creator references: released once the object is sealed and its create() buffer is gone
        self._create_buffers_alive: set[bytes] = set()
        self._sealed_with_buffer_alive: set[bytes] = set()
        self._dead_create_buffers: collections.deque[bytes] = collections.deque()

    @property
    def store_socket_name(self) -> str:
        return self._socket_name

    def _settle_creates(self) -> Client:
        """Release creator references whose create() buffer died; returns the client."""
        while self._dead_create_buffers:
            oid = self._dead_create_buffers.popleft()
            self._create_buffers_alive.discard(oid)
            if oid in self._sealed_with_buffer_alive:
                self._sealed_with_buffer_alive.discard(oid)
                self._client.release(oid)
        return self._client

    # ------------------------------------------------------------ create / seal

    def create(self, object_id: ObjectID, data_size: int, metadata: bytes = b"") -> pa.Buffer:
        """Create an object; returns its mutable buffer (write, then :meth:`seal`).

        Raises PlasmaObjectExists or PlasmaStoreFull.
        """
        client = self._settle_creates()
        with _pyarrow_errors():
            view = client.create(object_id, data_size, bytes(metadata))
        oid = object_id.binary()
        owner = np.frombuffer(view, dtype=np.uint8)
        self._create_buffers_alive.add(oid)
        weakref.finalize(owner, self._dead_create_buffers.append, oid)
        return pa.py_buffer(owner)

    def seal(self, object_id: ObjectID) -> None:
        """Make the object immutable and visible to others; raises errors at once."""
        client = self._settle_creates()
        oid = object_id.binary()
        with _pyarrow_errors():
            client.seal(object_id)
            client.flush()
        if oid in self._create_buffers_alive:
            self._sealed_with_buffer_alive.add(oid)
        else:
            client.release(oid)

    def release(self, object_id: ObjectID) -> None:
        """Drop the creator reference of a sealed object now, while its buffer is still alive.

        Buffers from ``get_buffers`` / ``get`` hold their own references, dropped when they
        are garbage collected.
        """
        client = self._settle_creates()
        oid = object_id.binary()
        if oid not in self._sealed_with_buffer_alive:
            raise PlasmaObjectNonexistent(
                f"this client holds no releasable reference to {object_id.hex()}: only sealed "
                "objects whose create() buffer is still alive can be released explicitly"
            )
        self._sealed_with_buffer_alive.discard(oid)
        client.release(oid)

    def create_and_seal(
        self, object_id: ObjectID, data: bytes | memoryview, metadata: bytes = b""
    ) -> None:
        """Store ``data`` under ``object_id`` in one call; raises PlasmaObjectExists at once."""
        client = self._settle_creates()
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
        client = self._settle_creates()
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
        client = self._settle_creates()
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
        client = self._settle_creates()
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
        client = self._settle_creates()
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
            return self._settle_creates().contains(object_id)

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
            return self._settle_creates().evict(num_bytes)

    def delete(self, object_ids: Sequence[ObjectID]) -> None:
        """Delete objects (deferred while referenced); absent or unsealed ids are ignored."""
        client = self._settle_creates()
        with contextlib.suppress(ObjectNotFound):
            client.delete(list(object_ids))

    def list(self) -> dict[ObjectID, dict[str, Any]]:
        """Every object: data_size, metadata_size, ref_count, create_time (Unix seconds),
        construct_duration (-1: not tracked), state ("created" or "sealed") and node."""
        with _pyarrow_errors():
            listing = self._settle_creates().list()
        return {
            oid: {
                "data_size": info["data_size"],
                "metadata_size": info["metadata_size"],
                "ref_count": info["ref_count"],
                "create_time": int(info["create_time"]),
                "construct_duration": -1,
                "state": info["state"],
                "node": info["node"],
            }
            for oid, info in listing.items()
        }

    def store_capacity(self) -> int:
        """The store's capacity in bytes."""
        return self._client.info.capacity

    # ------------------------------------------------------------ notifications

    def subscribe(self) -> None:
        """Receive seal and delete notifications (on a second connection, as in Plasma)."""
        if self._subscriber is not None:
            return
        with _pyarrow_errors():
            subscriber = _connect(self._socket_name, "pyarrow.plasma notifications")
            self._notifications = subscriber.subscribe()
        self._subscriber = subscriber

    def get_next_notification(self) -> tuple[ObjectID, int, int]:
        """Block for the next ``(object_id, data_size, metadata_size)``; sizes are -1 for a
        deletion."""
        if self._notifications is None:
            raise BadRequest("get_next_notification() needs subscribe() first")
        note = self._notifications.next()
        if note.kind == "deleted":
            return ObjectID(note.id), -1, -1
        return ObjectID(note.id), note.data_size, note.metadata_size

    def disconnect(self) -> None:
        """Close the connection(s); the store drops this client's references."""
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = self._notifications = None
        self._client.close()


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
    SIGKILL) on exit. ``use_hugepages`` backs segments with 2 MiB pages; valgrind, profiler
    and external stores are not supported; ``plasma_directory`` is ignored (segments are
    memfds).
    """
    if isinstance(plasma_store_memory, bool) or not isinstance(plasma_store_memory, int):
        raise BadRequest(f"plasma_store_memory must be an int, got {plasma_store_memory!r}")
    if plasma_store_memory <= 0:
        raise BadRequest(f"plasma_store_memory must be positive, got {plasma_store_memory}")
    if use_valgrind and use_profiler:
        raise BadRequest("cannot use valgrind and profiler at the same time")
    if use_valgrind or use_profiler:
        raise Unsupported("plasma-coord is a Python process: valgrind and profiler do not apply")
    if external_store is not None:
        raise Unsupported("external stores are not supported by plasma-coord")
    if plasma_directory is not None:
        warnings.warn(
            "plasma_directory is ignored: plasma-coord keeps objects in memfd segments",
            stacklevel=3,
        )
    tmpdir = tempfile.mkdtemp(prefix="test_plasma-")
    socket_name = os.path.join(tmpdir, "plasma.sock")
    command = [
        sys.executable,
        "-m",
        "plasma",
        "serve",
        "--socket",
        socket_name,
        "--memory",
        str(plasma_store_memory),
        "--hugepages",
        "2M" if use_hugepages else "off",
    ]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(plasma.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    proc: subprocess.Popen[bytes] | None = None
    try:
        with open(os.path.join(tmpdir, "stderr.log"), "wb") as stderr:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env)
        _wait_until_ready(proc, os.path.join(tmpdir, "stderr.log"))
        yield socket_name, proc
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(tmpdir, ignore_errors=True)


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
