"""The trio client: ``async with plasma.aio.connect(path) as client: ...``.

Several tasks may use one client at once: requests are pipelined and matched to replies by
``seq`` in a reader task. Run owners (DAG runners) receive relayed calls from
:meth:`AsyncClient.run_requests`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from plasma import protocol as p
from plasma import serialization
from plasma.client_state import ANCILLARY_SPACE, ClientState, check_timeout, fds_from_ancillary
from plasma.errors import PlasmaError, error_for
from plasma.ids import ObjectID, as_id_bytes

ObjectRef = ObjectID | bytes


class AsyncClient:
    """A trio connection to a coordinator; make one with :func:`connect`."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._state = ClientState()
        self._send_lock = trio.Lock()
        self._waiting: dict[int, trio.Event] = {}
        self._replies: dict[int, Any] = {}
        self._notifications_changed = trio.Event()
        self._run_requests_changed = trio.Event()
        self._closed: BaseException | None = None
        self._nursery: trio.Nursery | None = None  # where helper tasks run while connected
        self.info: p.Connected | None = None

    async def _reader(self) -> None:
        try:
            while True:
                view = self._state.recv_view
                size, ancdata, _, _ = await self._sock.recvmsg_into(
                    [view], ANCILLARY_SPACE, socket.MSG_CMSG_CLOEXEC
                )
                fds = fds_from_ancillary(ancdata)
                if not size:
                    for fd in fds:
                        os.close(fd)
                    raise ConnectionError("the coordinator closed the connection")
                for reply in self._state.feed(view[:size], fds):
                    event = self._waiting.pop(reply.seq, None)
                    if event is None:
                        self._state.unexpected(reply)
                    else:
                        self._replies[reply.seq] = reply
                        event.set()
                if self._state.fatal is not None:  # the coordinator is hanging up: say why
                    self._fail(self._state.fatal)
                    return
                if self._state.reclaim_requested and self._nursery is not None:
                    self._nursery.start_soon(self._answer_reclaim)
                if self._state.notifications:
                    self._notifications_changed.set()
                if self._state.run_requests:
                    self._run_requests_changed.set()
        except (OSError, PlasmaError) as exc:
            self._fail(exc)

    async def _answer_reclaim(self) -> None:
        """The store is short of memory: give back what this client keeps idle (a task of
        its own, so the reader never waits for the send lock)."""
        data = self._state.frames(*self._state.reclaim_messages())
        try:
            async with self._send_lock:
                await _sendall(self._sock, data)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._closed = exc
        for event in self._waiting.values():
            event.set()
        self._notifications_changed.set()
        self._run_requests_changed.set()

    def _check_open(self) -> None:
        closed = self._closed
        if isinstance(closed, PlasmaError):  # the coordinator's reason for hanging up
            raise type(closed)(closed.message)
        if closed is not None:
            raise ConnectionError(f"connection to the coordinator is closed: {closed}")
        err = self._state.take_deferred_error()
        if err is not None:
            raise err

    async def _send(self, *msgs: msgspec.Struct) -> None:
        self._check_open()
        data = self._state.frames(*msgs)
        async with self._send_lock:
            await _sendall(self._sock, data)

    async def _request(self, msg: Any) -> Any:
        event = trio.Event()
        self._waiting[msg.seq] = event
        try:
            await self._send(msg)
            await event.wait()
        finally:
            self._waiting.pop(msg.seq, None)
        reply = self._replies.pop(msg.seq, None)
        if reply is None:
            self._check_open()
            raise ConnectionError("no reply from the coordinator")
        if isinstance(reply, p.Error):
            raise error_for(reply.code, reply.message)
        return reply

    def _seq(self) -> int:
        return self._state.next_seq()

    # ------------------------------------------------------------ objects

    async def create(
        self,
        object_id: ObjectRef,
        size: int,
        metadata: bytes = b"",
        *,
        node: int | None = None,
        timeout: float | None = 0.0,
    ) -> memoryview:
        """Create an object; returns its writable buffer (see ``Client.create``)."""
        reply = await self._request(
            self._state.create_request(as_id_bytes(object_id), size, metadata, node, timeout)
        )
        return self._state.write_object(reply.locations[0], metadata)

    async def seal(self, object_id: ObjectRef) -> None:
        await self._send(p.Seal(seq=self._seq(), ids=[as_id_bytes(object_id)], ack=False))

    async def abort(self, object_id: ObjectRef) -> None:
        await self._request(p.Abort(seq=self._seq(), id=as_id_bytes(object_id)))

    async def release(self, object_id: ObjectRef) -> None:
        await self._send(p.Release(seq=self._seq(), ids=[as_id_bytes(object_id)]))

    async def create_and_seal(
        self,
        object_id: ObjectRef,
        data: bytes | memoryview,
        metadata: bytes = b"",
        *,
        node: int | None = None,
    ) -> None:
        view = await self.create(object_id, len(memoryview(data).cast("B")), metadata, node=node)
        view[:] = memoryview(data).cast("B")
        view.release()
        ids = [as_id_bytes(object_id)]
        await self._send(*self._state.seal_and_release(ids))

    async def get(
        self, object_ids: Any, timeout: float | None = None, *, with_metadata: bool = False
    ) -> Any:
        """Zero-copy read-only buffers; see :meth:`plasma.client.Client.get`."""
        check_timeout(timeout)
        single = isinstance(object_ids, (ObjectID, bytes))
        ids = [as_id_bytes(o) for o in ([object_ids] if single else object_ids)]
        get = self._state.start_get(ids)  # revocations are taken in by the reader task
        if get.missing:
            reply = await self._request(p.Get(seq=self._seq(), ids=get.missing, timeout=timeout))
            get.fill(reply.results, timeout)
        out = get.result(with_metadata, raise_missing=True)
        return out[0] if single else out

    async def contains(self, object_id: ObjectRef) -> bool:
        return (await self._request(p.Contains(seq=self._seq(), id=as_id_bytes(object_id)))).present

    async def delete(self, object_ids: Iterable[ObjectRef]) -> list[ObjectID]:
        ids = [as_id_bytes(o) for o in object_ids]
        reply = await self._request(p.Delete(seq=self._seq(), ids=ids))
        if reply.missing:
            raise error_for(
                "object_not_found",
                "not found or not sealed: " + ", ".join(m.hex() for m in reply.missing),
            )
        return [ObjectID(d) for d in reply.deferred]

    async def list(self) -> dict[ObjectID, dict[str, Any]]:
        reply = await self._request(p.List(seq=self._seq()))
        return {
            ObjectID(o.id): {f: getattr(o, f) for f in o.__struct_fields__ if f != "id"}
            for o in reply.objects
        }

    async def evict(self, nbytes: int) -> int:
        return (await self._request(p.Evict(seq=self._seq(), nbytes=nbytes))).nbytes

    async def stats(self, placement: bool = False) -> dict[str, Any]:
        """See :meth:`plasma.client.Client.stats`."""
        return (await self._request(p.Stats(seq=self._seq(), placement=placement))).stats

    async def register_task(
        self, task_id: str, pid: int, node: int | None = None, run_id: str = ""
    ) -> None:
        """Have the coordinator sample process ``pid`` as ``task_id`` (placed on ``node``)."""
        msg = p.TaskRegister(seq=self._seq(), task_id=task_id, pid=pid, node=node, run_id=run_id)
        await self._request(msg)

    async def task_done(self, task_id: str, run_id: str = "") -> None:
        """``task_id`` ended: the coordinator takes a final sample and stops sampling it."""
        await self._request(p.TaskDone(seq=self._seq(), task_id=task_id, run_id=run_id))

    async def submit_sample(self, task_id: str, sample: Any, run_id: str = "") -> None:
        """Record a sample taken by the caller (a ``plasma.perf.PerfSample`` or its dict)."""
        data = msgspec.to_builtins(sample)
        msg = p.SubmitSample(seq=self._seq(), task_id=task_id, sample=data, run_id=run_id)
        await self._request(msg)

    async def flush(self) -> None:
        """Release cached references and wait until everything sent so far was handled."""
        self._state.drop_cache()
        await self._request(p.Sync(seq=self._seq()))
        self._check_open()

    async def put(
        self, value: Any, object_id: ObjectRef | None = None, *, node: int | None = None
    ) -> ObjectID:
        oid = ObjectID(as_id_bytes(object_id)) if object_id is not None else ObjectID.from_random()
        enc = serialization.encode(value)
        view = await self.create(oid, enc.data_size, enc.metadata, node=node)
        enc.write(view)
        view.release()
        ids = [oid.binary()]
        await self._send(*self._state.seal_and_release(ids))
        return oid

    async def get_object(self, object_id: ObjectRef, timeout: float | None = None) -> Any:
        data, meta = await self.get(object_id, timeout, with_metadata=True)
        return serialization.decode(data, meta)

    async def subscribe(self) -> AsyncIterator[p.Notification]:
        """Seal and delete notifications, as an async iterator (PlasmaError if this client
        falls so far behind that the coordinator ends the subscription)."""
        await self._request(p.Subscribe(seq=self._seq()))
        return self._notifications()

    async def _notifications(self) -> AsyncIterator[p.Notification]:
        state = self._state
        while True:
            while state.notifications:
                yield state.next_notification()
            self._check_open()
            await self._notifications_changed.wait()
            self._notifications_changed = trio.Event()

    # ------------------------------------------------------------ run relay

    async def run_call(self, run_id: str, payload: Any) -> Any:
        return (
            await self._request(p.RunCall(seq=self._seq(), run_id=run_id, payload=payload))
        ).payload

    async def register_run(self, run_id: str) -> None:
        """Become the owner of ``run_id``: tasks' ``run_call``s arrive in :meth:`run_requests`."""
        await self._request(p.RunRegister(seq=self._seq(), run_id=run_id))

    def run_requests(self) -> AsyncIterator[p.RunRequest]:
        return self._pushed(self._state.run_requests, "_run_requests_changed")

    async def respond(self, request: p.RunRequest, payload: Any) -> None:
        await self._send(p.RunRespond(seq=self._seq(), request=request.request, payload=payload))

    async def respond_error(self, request: p.RunRequest, code: str, message: str) -> None:
        await self._send(
            p.RunRespond(seq=self._seq(), request=request.request, code=code, message=message)
        )

    async def _pushed(self, queue: Any, event_name: str) -> AsyncIterator[Any]:
        while True:
            while queue:
                yield queue.popleft()
            self._check_open()
            await getattr(self, event_name).wait()
            setattr(self, event_name, trio.Event())

    async def aclose(self) -> None:
        if self._closed is None:
            self._fail(ConnectionError("client closed"))
        self._sock.close()
        self._state.close_maps()


async def _sendall(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


@asynccontextmanager
async def connect(socket_path: str, client_name: str = "") -> AsyncIterator[AsyncClient]:
    """Connect to the coordinator at ``socket_path`` for the duration of the ``async with``."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.connect(socket_path)
    except OSError as exc:
        sock.close()
        raise ConnectionError(f"cannot connect to plasma-coord at {socket_path}: {exc}") from exc
    client = AsyncClient(sock)
    refused: BaseException | None = None
    async with trio.open_nursery() as nursery:
        client._nursery = nursery
        nursery.start_soon(client._reader)
        try:
            reply = await client._request(
                p.Connect(
                    seq=client._seq(),
                    protocol_version=p.PROTOCOL_VERSION,
                    client_name=client_name,
                    cpus=sorted(os.sched_getaffinity(0)),
                )
            )
        except (OSError, PlasmaError) as exc:  # raised below, not wrapped in the nursery's group
            refused = exc
        try:
            if refused is None:
                client.info = reply
                client._state.connected(reply)
                yield client
        finally:
            nursery.cancel_scope.cancel()
            await client.aclose()
    if refused is not None:
        raise refused
