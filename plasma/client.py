"""The blocking client: ``plasma.connect(path)``.

Requests that need an answer make one round trip; ``seal``, ``release`` and small
``create_and_seal`` calls are sent without waiting (their errors surface on the next reply,
or at once with :meth:`Client.flush`). Not safe for concurrent use from several threads
without the built-in lock, which serialises requests.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import msgspec

from plasma import protocol as p
from plasma import serialization
from plasma.client_state import (
    ALIGN,
    ANCILLARY_SPACE,
    ARENA_OBJECT_LIMIT,
    ARENA_OBJECTS,
    ARENA_SIZE,
    IDS_PER_FRAME,
    RELEASE_DELAY,
    Arena,
    ClientState,
    align,
    check_timeout,
    fds_from_ancillary,
)
from plasma.errors import PlasmaError, PlasmaTimeout, error_for
from plasma.ids import ObjectID, as_id_bytes

ObjectRef = ObjectID | bytes


class Client:
    """A connection to a coordinator. Use :func:`connect` to make one."""

    def __init__(
        self, socket_path: str, client_name: str = "", *, release_delay: int = RELEASE_DELAY
    ) -> None:
        self.socket_path = socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(socket_path)
        except OSError as exc:
            self._sock.close()
            raise ConnectionError(
                f"cannot connect to plasma-coord at {socket_path}: {exc}"
            ) from exc
        self._state = ClientState(release_delay)
        self._lock = threading.RLock()
        self._closed = False
        try:
            reply = self._request(
                p.Connect(
                    seq=self._state.next_seq(),
                    protocol_version=p.PROTOCOL_VERSION,
                    client_name=client_name,
                    cpus=sorted(os.sched_getaffinity(0)),
                )
            )
        except BaseException:
            self._sock.close()
            raise
        assert isinstance(reply, p.Connected)
        self._state.connected(reply)
        self.info: p.Connected = reply
        self.client_id = reply.client_id

    # ------------------------------------------------------------ transport

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise self._gone(exc) from None

    def _gone(self, exc: OSError) -> PlasmaError | OSError:
        """Why the connection broke: the coordinator's last word (a ``seq`` 0 Error, read now
        if it is still buffered), else a ConnectionError saying what happened."""
        state = self._state
        with contextlib.suppress(OSError, PlasmaError):
            while state.fatal is None and self._receive(timeout=0):
                pass
        if state.fatal is not None:
            return type(state.fatal)(state.fatal.message)
        return ConnectionError(f"the connection to the coordinator broke: {exc}")

    def _receive(self, timeout: float | None = None) -> list[Any]:
        """Block for the next chunk of bytes (or until ``timeout``; 0 polls); returns the
        replies in it."""
        recv_flags = int(socket.MSG_CMSG_CLOEXEC)
        if timeout == 0:
            recv_flags |= socket.MSG_DONTWAIT
        elif timeout is not None:
            ready, _, _ = select.select([self._sock], [], [], max(timeout, 0))
            if not ready:
                return []
        view = self._state.recv_view
        try:
            size, ancdata, flags, _ = self._sock.recvmsg_into([view], ANCILLARY_SPACE, recv_flags)
        except BlockingIOError:
            return []
        fds = fds_from_ancillary(ancdata)
        if not size:
            for fd in fds:
                os.close(fd)
            if self._state.fatal is not None:
                raise type(self._state.fatal)(self._state.fatal.message)
            raise ConnectionError("the coordinator closed the connection")
        if flags & socket.MSG_CTRUNC:
            raise PlasmaError("segment descriptors were truncated (too many in one message)")
        replies = self._state.feed(view[:size], fds)
        if self._state.reclaim_requested:  # the store is short: give back what we keep idle
            with contextlib.suppress(OSError):  # a broken connection shows on the next call
                self._sock.sendall(self._state.frames(*self._state.reclaim_messages()))
        return replies

    def _request(self, msg: msgspec.Struct, before: Iterable[msgspec.Struct] = ()) -> Any:
        """Send ``msg`` (after any queued releases and ``before``) and wait for its reply."""
        with self._lock:
            self._raise_deferred()
            self._send(self._state.frames(*before, msg))
            return self._wait_reply(msg.seq)  # type: ignore[attr-defined]

    def _send_nowait(self, *msgs: msgspec.Struct) -> None:
        with self._lock:
            self._raise_deferred()
            self._send(self._state.frames(*msgs))

    def _raise_deferred(self) -> None:
        if self._closed:
            raise ConnectionError("the client is closed")
        if self._state.fatal is not None:
            raise type(self._state.fatal)(self._state.fatal.message)
        err = self._state.take_deferred_error()
        if err is not None:
            raise err

    def _seq(self) -> int:
        return self._state.next_seq()

    # ------------------------------------------------------------ objects

    def create(
        self,
        object_id: ObjectRef,
        size: int,
        metadata: bytes = b"",
        *,
        node: int | None = None,
        timeout: float | None = 0.0,
    ) -> memoryview:
        """Create an object of ``size`` bytes; returns its writable buffer. Seal it when filled.

        ``timeout`` is how long to wait for space when the store is full (None: forever).
        """
        reply = self._request(
            self._state.create_request(as_id_bytes(object_id), size, metadata, node, timeout)
        )
        return self._state.write_object(reply.locations[0], metadata)

    def seal(self, object_id: ObjectRef) -> None:
        """Make the object immutable and visible; the creator keeps its reference."""
        self._send_nowait(p.Seal(seq=self._seq(), ids=[as_id_bytes(object_id)], ack=False))

    def abort(self, object_id: ObjectRef) -> None:
        """Drop an unsealed object this client created."""
        self._request(p.Abort(seq=self._seq(), id=as_id_bytes(object_id)))

    def release(self, object_id: ObjectRef) -> None:
        """Drop one reference this client holds (views already handed out stay mapped)."""
        oid = as_id_bytes(object_id)
        prefetched = self._state.prefetched.get(oid)
        if prefetched:
            prefetched.pop()
            if not prefetched:
                del self._state.prefetched[oid]
        self._send_nowait(p.Release(seq=self._seq(), ids=[oid], ack=False))

    def create_and_seal(
        self,
        object_id: ObjectRef,
        data: bytes | bytearray | memoryview,
        metadata: bytes = b"",
        *,
        node: int | None = None,
    ) -> None:
        """Create, fill and seal in one go; small objects need no round trip."""
        self.create_and_seal_many([(object_id, data, metadata)], node=node)

    def create_and_seal_many(
        self,
        items: Sequence[tuple[ObjectRef, bytes | bytearray | memoryview, bytes]],
        *,
        node: int | None = None,
    ) -> None:
        """Create, fill and seal many objects with at most one round trip (plus arena refills).

        Objects up to ``ARENA_OBJECT_LIMIT`` bytes are written into this client's arena and
        registered by one ``SealArena`` message; an error (say, an id that exists) surfaces on
        the next reply or :meth:`flush`. When a refill of the arena fails (StoreFull), the
        objects before it are stored and the rest are not.
        """
        with self._lock:  # the arena is this connection's: one writer at a time
            self._create_and_seal_many(items, node)

    def _create_and_seal_many(
        self,
        items: Sequence[tuple[ObjectRef, bytes | bytearray | memoryview, bytes]],
        node: int | None,
    ) -> None:
        state = self._state
        msgs: list[msgspec.Struct] = []
        batch: list[p.ArenaObject] = []
        large: list[tuple[bytes, memoryview, bytes]] = []
        arena = state.arena if state.arena is not None and state.arena.node == node else None
        mm = state.maps.get(arena.segment) if arena is not None else None
        for object_id, data, meta in items:
            oid = object_id.binary() if type(object_id) is ObjectID else as_id_bytes(object_id)
            if type(data) is not bytes:
                data = memoryview(data).cast("B")
            dlen = len(data)
            size = dlen + len(meta)
            if size > ARENA_OBJECT_LIMIT:
                large.append((oid, memoryview(data), meta))
                continue
            need = (size + ALIGN - 1) & -ALIGN or ALIGN  # what Arena.take uses, inlined
            if arena is not None and mm is not None and arena.cursor + need <= arena.end:
                offset = arena.cursor
                arena.cursor += need
            else:
                if batch:
                    assert arena is not None
                    msgs.append(p.SealArena(self._seq(), arena.segment, batch))
                    batch = []
                arena = self._new_arena(size, node, pending=msgs)
                mm = state.maps[arena.segment]
                msgs = []
                taken = arena.take(size)
                assert taken is not None
                offset = taken
            assert mm is not None
            mm[offset : offset + dlen] = data
            if meta:
                mm[offset + dlen : offset + size] = meta
            batch.append(p.ArenaObject(oid, offset, dlen, len(meta)))
            if len(batch) == IDS_PER_FRAME:
                msgs.append(p.SealArena(self._seq(), arena.segment, batch))
                batch = []
        if batch:
            assert arena is not None
            msgs.append(p.SealArena(self._seq(), arena.segment, batch))
        if large:
            # the arena's SealArenas go first: an answer to Reclaim read while waiting for
            # this reply returns the arena, and must come after them
            create = p.CreateMany(
                seq=self._seq(),
                items=[p.CreateItem(oid, len(d), len(m)) for oid, d, m in large],
                node=node,
            )
            reply = self._request(create, before=msgs)
            msgs = []
            for (_, data, meta), loc in zip(large, reply.locations, strict=True):
                state.write_object(loc, meta)[:] = data
            ids = [oid for oid, _, _ in large]
            msgs += self._state.seal_and_release(ids)
        if msgs:
            self._send_nowait(*msgs)

    def _arena_slot(self, size: int, node: int | None) -> tuple[Arena, int]:
        """An arena for ``node`` with room for ``size`` bytes, and the offset taken there."""
        arena = self._state.arena
        if arena is None or arena.node != node or arena.segment not in self._state.maps:
            arena = self._new_arena(size, node, pending=[])
        offset = arena.take(size)
        if offset is None:
            arena = self._new_arena(size, node, pending=[])
            offset = arena.take(size)
            assert offset is not None
        return arena, offset

    def _new_arena(self, size: int, node: int | None, pending: list[msgspec.Struct]) -> Arena:
        """Ask for a fresh arena, sending ``pending`` messages in the same write."""
        with self._lock:
            self._raise_deferred()
            # The coordinator takes back the old arena's tail when it reads this request,
            # whether or not it can grant a new one: never write into the old one again.
            self._state.arena = None
            # room for many objects of this size, but never much of the store
            room = min(ARENA_OBJECTS * align(size), max(ARENA_SIZE, self.info.capacity // 64))
            need = align(size) or ALIGN
            msg = p.Arena(
                seq=self._seq(), size=max(ARENA_SIZE, room, need), node=node, min_size=need
            )
            self._send(self._state.frames(*pending, msg))
            reply = self._wait_reply(msg.seq)
        arena = Arena(reply.segment, reply.offset, reply.offset + reply.size, reply.offset, node)
        self._state.arena = arena
        return arena

    def _wait_reply(self, seq: int) -> Any:
        """Read until the reply to ``seq`` arrives (pushes and deferred errors are kept)."""
        while True:
            for reply in self._receive():
                if reply.seq == seq:
                    if isinstance(reply, p.Error):
                        raise error_for(reply.code, reply.message)
                    return reply
                self._state.unexpected(reply)
            if self._state.fatal is not None:  # the coordinator is hanging up: say why
                raise type(self._state.fatal)(self._state.fatal.message)

    @overload
    def get(
        self, object_ids: ObjectRef, timeout: float | None = None, *, with_metadata: bool = False
    ) -> Any: ...
    @overload
    def get(
        self,
        object_ids: Sequence[ObjectRef],
        timeout: float | None = None,
        *,
        with_metadata: bool = False,
    ) -> list[Any]: ...

    def get(
        self, object_ids: Any, timeout: float | None = None, *, with_metadata: bool = False
    ) -> Any:
        """Zero-copy read-only buffers of sealed objects, waiting up to ``timeout`` seconds.

        Returns one buffer (or ``(data, metadata)`` pair) per id; a single id gives a single
        result. Raises ``ObjectNotSealed``, ``ObjectNotFound`` or ``PlasmaTimeout`` when an
        object is not available; the references already taken are then released.
        """
        single = isinstance(object_ids, (ObjectID, bytes))
        ids = [object_ids] if single else list(object_ids)
        results = self.get_buffers(ids, timeout, with_metadata=with_metadata, _raise=True)
        return results[0] if single else results

    def get_buffers(
        self,
        object_ids: Iterable[ObjectRef],
        timeout: float | None = None,
        *,
        with_metadata: bool = False,
        _raise: bool = False,
    ) -> list[Any]:
        """Like :meth:`get` but returns None for objects that are not available."""
        check_timeout(timeout)
        state = self._state
        ids = [as_id_bytes(o) for o in object_ids]
        if any(oid in state.held or oid in state.cache for oid in ids):
            with self._lock:  # take in revocations already sent before serving locally
                for reply in self._receive(timeout=0):
                    state.unexpected(reply)
        get = state.start_get(ids)
        if get.missing:
            locations = state.take_prefetched(get.missing)
            if locations is None:
                locations = []
                for chunk in _chunks(get.missing):
                    reply = self._request(p.Get(seq=self._seq(), ids=chunk, timeout=timeout))
                    locations += reply.results
            get.fill(locations, timeout)
        return get.result(with_metadata, raise_missing=_raise)

    def get_metadata(
        self, object_ids: Sequence[ObjectRef], timeout: float | None = None
    ) -> list[bytes]:
        return [bytes(meta) for _, meta in self.get(list(object_ids), timeout, with_metadata=True)]

    def contains(self, object_id: ObjectRef) -> bool:
        """True when the object exists and is sealed."""
        return self._request(p.Contains(seq=self._seq(), id=as_id_bytes(object_id))).present

    def delete(self, object_ids: ObjectRef | Iterable[ObjectRef]) -> list[ObjectID]:
        """Delete objects (deferred while referenced); returns the ids whose delete was deferred.

        Raises ``ObjectNotFound`` naming ids that are absent or unsealed, after deleting the rest.
        """
        ids = (
            [as_id_bytes(object_ids)]
            if isinstance(object_ids, (ObjectID, bytes))
            else [as_id_bytes(o) for o in object_ids]
        )
        deferred: list[bytes] = []
        missing: list[bytes] = []
        for chunk in _chunks(ids):
            reply = self._request(p.Delete(seq=self._seq(), ids=chunk))
            deferred += reply.deferred
            missing += reply.missing
        if missing:
            raise error_for(
                "object_not_found",
                "not found or not sealed: " + ", ".join(m.hex() for m in missing),
            )
        return [ObjectID(d) for d in deferred]

    def list(self) -> dict[ObjectID, dict[str, Any]]:
        """Every object: data_size, metadata_size, node, state, ref_count, create_time, owner."""
        reply = self._request(p.List(seq=self._seq()))
        return {
            ObjectID(o.id): {f: getattr(o, f) for f in o.__struct_fields__ if f != "id"}
            for o in reply.objects
        }

    def evict(self, nbytes: int) -> int:
        """Evict sealed unreferenced objects, LRU first, until ``nbytes`` are freed; returns the
        bytes freed."""
        return self._request(p.Evict(seq=self._seq(), nbytes=nbytes)).nbytes

    def stats(self, placement: bool = False) -> dict[str, Any]:
        """Store, segments, clients, operations, errors, tasks with their latest perf sample.

        With ``placement`` also where each segment's pages are (slower: it asks the kernel).
        """
        return self._request(p.Stats(seq=self._seq(), placement=placement)).stats

    def register_task(
        self, task_id: str, pid: int, node: int | None = None, run_id: str = ""
    ) -> None:
        """Have the coordinator sample process ``pid`` as ``task_id`` (placed on ``node``)."""
        msg = p.TaskRegister(seq=self._seq(), task_id=task_id, pid=pid, node=node, run_id=run_id)
        self._request(msg)

    def task_done(self, task_id: str, run_id: str = "") -> None:
        """Tell the coordinator ``task_id`` ended: it takes a final sample and stops sampling."""
        self._request(p.TaskDone(seq=self._seq(), task_id=task_id, run_id=run_id))

    def submit_sample(self, task_id: str, sample: Any, run_id: str = "") -> None:
        """Record a sample taken by the caller (a ``plasma.perf.PerfSample`` or its dict)."""
        data = msgspec.to_builtins(sample)
        msg = p.SubmitSample(seq=self._seq(), task_id=task_id, sample=data, run_id=run_id)
        self._request(msg)

    def flush(self) -> None:
        """Release cached references, wait until the coordinator handled everything sent so
        far, and raise its deferred errors."""
        self._state.drop_cache()
        self._request(p.Sync(seq=self._seq()))
        self._raise_deferred()

    def subscribe(self, *, with_locations: bool = False) -> Subscription:
        """Start receiving seal and delete notifications.

        With ``with_locations`` each seal notification also hands this client a reference to
        the object, so a following :meth:`get` of it needs no round trip (release it if unused).
        """
        self._request(p.Subscribe(seq=self._seq(), with_locations=with_locations))
        return Subscription(self)

    def run_call(self, run_id: str, payload: Any) -> Any:
        """Ask the owner of ``run_id`` (a DAG runner) something and wait for its answer."""
        return self._request(p.RunCall(seq=self._seq(), run_id=run_id, payload=payload)).payload

    # ------------------------------------------------------------ values

    def put(
        self, value: Any, object_id: ObjectRef | None = None, *, node: int | None = None
    ) -> ObjectID:
        """Store a numpy array, Arrow object or bytes; returns its id."""
        oid = ObjectID(as_id_bytes(object_id)) if object_id is not None else ObjectID.from_random()
        enc = serialization.encode(value)
        size = enc.data_size + len(enc.metadata)
        if size <= ARENA_OBJECT_LIMIT:  # written straight into the arena, no round trip
            with self._lock:  # the arena is this connection's: one writer at a time
                arena, offset = self._arena_slot(size, node)
                mm = self._state.maps[arena.segment]
                mm[offset + enc.data_size : offset + size] = enc.metadata
                with memoryview(mm)[offset : offset + enc.data_size] as view:
                    enc.write(view)
                obj = p.ArenaObject(oid.binary(), offset, enc.data_size, len(enc.metadata))
                self._send_nowait(p.SealArena(self._seq(), arena.segment, [obj]))
            return oid
        view = self.create(oid, enc.data_size, enc.metadata, node=node)
        enc.write(view)
        view.release()
        ids = [oid.binary()]
        self._send_nowait(*self._state.seal_and_release(ids))
        return oid

    def get_object(self, object_id: ObjectRef, timeout: float | None = None) -> Any:
        """The value stored by :meth:`put`, as a zero-copy read-only view."""
        data, meta = self.get(object_id, timeout, with_metadata=True)
        return serialization.decode(data, meta)

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Send pending releases and disconnect (the coordinator drops this client's references)."""
        if self._closed:
            return
        with self._lock:
            self._state.drop_cache()
            try:
                if self._state.has_releases:
                    self._send(self._state.frames())
            except OSError:
                pass
            self._closed = True
            self._sock.close()
            self._state.close_maps()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscription:
    """Seal/delete notifications of a :class:`Client`, in order."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def next(self, timeout: float | None = None) -> p.Notification:
        """The next notification; ``PlasmaTimeout`` when none arrives within ``timeout`` s."""
        client = self._client
        state = client._state
        check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with client._lock:
            while not state.notifications:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PlasmaTimeout(f"no notification within {timeout} s")
                for reply in client._receive(remaining):
                    state.unexpected(reply)
            return state.next_notification()

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> p.Notification:
        return self.next()


def _chunks(ids: list[bytes]) -> Iterator[list[bytes]]:
    for start in range(0, len(ids), IDS_PER_FRAME):
        yield ids[start : start + IDS_PER_FRAME]


def connect(
    socket_path: str, client_name: str = "", *, release_delay: int = RELEASE_DELAY
) -> Client:
    """Connect to the coordinator listening on ``socket_path``.

    ``release_delay`` is how many released objects the client keeps a reference to, so that
    getting them again needs no round trip (0 releases at once).
    """
    return Client(socket_path, client_name, release_delay=release_delay)
