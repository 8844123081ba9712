"""The trio client: ``async with plasma.aio.connect(path) as client: ...``.

Every method of the blocking :class:`plasma.Client` is here as a coroutine, with the same
semantics and fast paths: both run the operations of one client core
(:mod:`plasma._client_core`); this module only carries out their actions on a trio socket.
Several tasks may use one client at once: requests are pipelined and matched to replies by
``seq`` in a reader task; operations that write into the arena take turns. A task
cancelled while it waits for a reply leaves nothing behind: what the late reply brings
(references, created objects) is handed back. Run owners (DAG runners) receive relayed
calls from :meth:`AsyncClient.run_requests`.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from plasma import default_socket, parallel_copy
from plasma import protocol as p
from plasma._client_core import (
    EXCLUSIVE,
    RELEASE_DELAY,
    Call,
    ClientCore,
    ManyItem,
    Node,
    ObjectRef,
    Op,
    Plain,
    Send,
    check_timeout,
)
from plasma._client_core.api import documented
from plasma.errors import Disconnected, PlasmaError, PlasmaTimeout, error_for
from plasma.ids import ObjectID
from plasma.linux.affinity import get_affinity
from plasma.linux.fdpass import ANCILLARY_SPACE, RECV_FLAGS, received_fds

__all__ = ["AsyncClient", "AsyncSubscription", "connect"]


@documented
class AsyncClient:
    """A trio connection to a coordinator; make one with :func:`connect`."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        release_delay: int = RELEASE_DELAY,
        copy_threads: int | None = None,
    ) -> None:
        self._sock = sock
        self._core = ClientCore(release_delay, concurrent=True, copy_threads=copy_threads)
        self._send_lock = trio.Lock()
        self._arena_lock = trio.Lock()
        self._waiting: dict[int, trio.Event] = {}
        self._replies: dict[int, Any] = {}
        self._notifications_changed = trio.Event()
        self._run_requests_changed = trio.Event()
        self._closed: BaseException | None = None
        self._nursery: trio.Nursery | None = None  # where helper tasks run while connected
        self.info: p.Connected | None = None
        self.client_id = 0

    # ------------------------------------------------------------ transport

    async def _run(self, op: Op) -> Any:
        """Carry out an operation of the core (see :mod:`plasma._client_core`)."""
        self._core.check_process()
        reply: Any = None
        error: BaseException | None = None
        exclusive = False
        try:
            while True:
                try:
                    action = op.throw(error) if error is not None else op.send(reply)
                except StopIteration as done:
                    return done.value
                reply = error = None
                try:
                    if type(action) is Call:
                        reply = await self._call(action.msgs)
                    elif type(action) is Send:
                        await self._send(action.msgs)
                    elif action is EXCLUSIVE:
                        await self._arena_lock.acquire()
                        exclusive = True
                    # POLL needs nothing: the reader task takes pushes in as they arrive
                except Exception as exc:  # raised into the operation, which may clean up
                    error = exc
        finally:
            if exclusive:
                self._arena_lock.release()

    async def _plain(self, call: Plain) -> Any:
        """Carry out a plain call of the core: its frame made in one step when nothing waits
        to go ahead of it (see :meth:`ClientCore.plain_frame`), else the general way; the
        reader task takes its reply in as any other."""
        frame = None if self._closed is not None else self._core.plain_frame(call.msg)
        if frame is None:
            return await self._run(self._core.plain(call))
        return call.done(await self._call((call.msg,), frame))

    async def _send(self, msgs: Iterable[msgspec.Struct]) -> None:
        self._check_open()
        await self._send_frames(self._core.frames(*msgs))

    async def _send_frames(self, data: bytes) -> None:
        # shielded: a frame cut short by a cancellation would garble the stream
        with trio.CancelScope(shield=True):
            async with self._send_lock:
                try:
                    await _sendall(self._sock, data)
                except OSError as exc:
                    self._fail(Disconnected(f"the connection to the coordinator broke: {exc}"))
                    self._check_open()  # the coordinator's reason, if the reader heard one
                    raise

    async def _call(self, msgs: tuple[msgspec.Struct, ...], frame: bytes | None = None) -> Any:
        """Send ``msgs`` (``frame``: encoded already) and wait for the reply to the last."""
        msg = msgs[-1]
        seq = msg.seq  # type: ignore[attr-defined]
        event = trio.Event()
        self._waiting[seq] = event
        try:
            if frame is None:
                await self._send(msgs)
            else:
                await self._send_frames(frame)
            await event.wait()
        except BaseException:  # cancelled, or the send failed: nobody will read the reply
            self._waiting.pop(seq, None)
            self._core.abandon(msg)
            late = self._replies.pop(seq, None)
            if late is not None:
                self._core.unexpected(late)
            raise
        reply = self._replies.pop(seq, None)
        if reply is None:
            self._check_open()
            raise Disconnected("no reply from the coordinator")
        if isinstance(reply, p.Error):
            raise error_for(reply.code, reply.message)
        return reply

    async def _reader(self) -> None:
        core = self._core
        try:
            while True:
                view = core.recv_view
                size, ancdata, msg_flags, _ = await self._sock.recvmsg_into(
                    [view], ANCILLARY_SPACE, RECV_FLAGS
                )
                fds = received_fds(ancdata, msg_flags)
                if not size:
                    for fd in fds:
                        os.close(fd)
                    raise Disconnected("the coordinator closed the connection")
                for reply in core.feed(view[:size], fds):
                    event = self._waiting.pop(reply.seq, None)
                    if event is None:
                        core.unexpected(reply)
                    else:
                        self._replies[reply.seq] = reply
                        event.set()
                if core.fatal is not None:  # the coordinator is hanging up: say why
                    self._fail(core.fatal)
                    return
                if core.reclaim_requested and self._nursery is not None:
                    self._nursery.start_soon(self._answer_reclaim)
                if core.notifications:
                    self._notifications_changed.set()
                if core.run_requests:
                    self._run_requests_changed.set()
        except (OSError, PlasmaError) as exc:
            self._fail(exc)

    async def _answer_reclaim(self) -> None:
        """The store is short of memory: give back what this client keeps idle (a task of
        its own, so the reader never waits for the send lock)."""
        with contextlib.suppress(OSError, PlasmaError):  # a broken connection shows elsewhere
            await self._send(self._core.reclaim_messages())

    def _fail(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        if not isinstance(exc, PlasmaError):
            exc = Disconnected(f"the connection to the coordinator is closed: {exc}")
        self._core.disconnected(exc)  # every call raises now, directory gets included
        for event in self._waiting.values():
            event.set()
        self._notifications_changed.set()
        self._run_requests_changed.set()

    def _check_open(self) -> None:
        closed = self._closed
        if isinstance(closed, PlasmaError):  # the coordinator's reason, or Disconnected
            raise type(closed)(closed.message)
        if closed is not None:
            raise Disconnected(f"the connection to the coordinator is closed: {closed}")
        self._core.check_usable()

    # ------------------------------------------------------------ objects

    async def create(
        self,
        object_id: ObjectRef,
        size: int,
        metadata: bytes = b"",
        *,
        node: Node = None,
        timeout: float | None = 0.0,
    ) -> memoryview:
        return await self._run(self._core.create(object_id, size, metadata, node, timeout))

    async def seal(self, object_id: ObjectRef, *, wait: bool = False) -> None:
        if wait:
            await self._plain(self._core.sealed_call(object_id))
        else:
            await self._run(self._core.seal(object_id, False))

    async def abort(self, object_id: ObjectRef) -> None:
        await self._run(self._core.abort(object_id))

    async def release(self, object_id: ObjectRef) -> None:
        await self._run(self._core.release(object_id))

    async def create_and_seal(
        self,
        object_id: ObjectRef,
        data: bytes | bytearray | memoryview,
        metadata: bytes = b"",
        *,
        node: int | None = None,
    ) -> None:
        await self._run(self._core.create_and_seal(object_id, data, metadata, node))

    async def create_and_seal_many(
        self,
        items: Iterable[ManyItem],
        *,
        node: int | None = None,
    ) -> None:
        await self._run(self._core.create_and_seal_many(items, node))

    async def get(
        self,
        object_ids: Any,
        timeout: float | None = None,
        *,
        with_metadata: bool = False,
        writable: bool = False,
    ) -> Any:
        local = self._core.get_pinned(object_ids, timeout, with_metadata, writable)
        if local is None:
            local = await self._run(self._core.get(object_ids, timeout, with_metadata, writable))
        return local

    async def get_buffers(
        self,
        object_ids: Iterable[ObjectRef],
        timeout: float | None = None,
        *,
        with_metadata: bool = False,
    ) -> list[Any]:
        return await self._run(self._core.get_buffers(object_ids, timeout, with_metadata, False))

    async def get_metadata(
        self, object_ids: Sequence[ObjectRef], timeout: float | None = None
    ) -> list[bytes]:
        return await self._run(self._core.get_metadata(object_ids, timeout))

    async def contains(self, object_id: ObjectRef) -> bool:
        return await self._plain(self._core.contains_call(object_id))

    async def delete(self, object_ids: ObjectRef | Iterable[ObjectRef]) -> list[ObjectID]:
        return await self._run(self._core.delete(object_ids))

    async def list(self) -> dict[ObjectID, dict[str, Any]]:
        return await self._run(self._core.list())

    async def replicate(self, object_id: ObjectRef, nodes: Iterable[int]) -> builtins.list[int]:
        return await self._run(self._core.replicate(object_id, nodes))

    async def migrate(self, object_id: ObjectRef, node: int) -> builtins.list[int]:
        return await self._run(self._core.migrate(object_id, node))

    async def evict(self, nbytes: int) -> int:
        return await self._run(self._core.evict(nbytes))

    async def stats(self, placement: bool = False, top_objects: int = 10) -> dict[str, Any]:
        return await self._run(self._core.stats(placement, top_objects))

    async def register_task(
        self, task_id: str, pid: int, node: int | None = None, run_id: str = ""
    ) -> None:
        await self._run(self._core.register_task(task_id, pid, node, run_id))

    async def task_done(self, task_id: str, run_id: str = "") -> None:
        await self._run(self._core.task_done(task_id, run_id))

    async def submit_sample(self, task_id: str, sample: Any, run_id: str = "") -> None:
        await self._run(self._core.submit_sample(task_id, sample, run_id))

    async def flush(self) -> None:
        await self._run(self._core.flush())

    async def subscribe(self, *, with_locations: bool = False) -> AsyncSubscription:
        await self._run(self._core.subscribe(with_locations))
        return AsyncSubscription(self)

    async def put(
        self,
        value: Any,
        object_id: ObjectRef | None = None,
        *,
        node: Node = None,
        replicas: Iterable[int] = (),
    ) -> ObjectID:
        if replicas:
            return await self._run(self._core.put_replicated(value, object_id, node, replicas))
        return await self._run(self._core.put(value, object_id, node))

    async def get_object(
        self, object_id: ObjectRef, timeout: float | None = None, *, writable: bool = False
    ) -> Any:
        data, meta = await self.get(object_id, timeout, with_metadata=True)
        return self._core.value(object_id, data, meta, writable)

    # ------------------------------------------------------------ run relay

    async def run_call(self, run_id: str, payload: Any) -> Any:
        return await self._run(self._core.run_call(run_id, payload))

    async def register_run(self, run_id: str) -> None:
        """Become the owner of ``run_id``: tasks' ``run_call``s arrive in :meth:`run_requests`."""
        await self._run(self._core.register_run(run_id))

    async def run_requests(self) -> AsyncIterator[p.RunRequest]:
        """The relayed calls of a run this client owns, as they arrive."""
        queue = self._core.run_requests
        while True:
            while queue:
                yield queue.popleft()
            self._check_open()
            await self._run_requests_changed.wait()
            self._run_requests_changed = trio.Event()

    async def respond(self, request: p.RunRequest, payload: Any) -> None:
        """Answer a relayed call."""
        await self._run(self._core.respond(request, payload))

    async def respond_error(self, request: p.RunRequest, code: str, message: str) -> None:
        """Answer a relayed call with an error (``code`` one of ``plasma.errors``' codes)."""
        await self._run(self._core.respond(request, code=code, message=message))

    # ------------------------------------------------------------ lifetime

    async def aclose(self) -> None:
        """Send pending releases and disconnect."""
        if self._closed is None:
            with contextlib.suppress(OSError, PlasmaError), trio.CancelScope(shield=True):
                self._core.check_process()  # a forked child leaves the parent's connection be
                data = self._core.closing_frames()
                if data:
                    async with self._send_lock:
                        await _sendall(self._sock, data)
            self._fail(Disconnected("the client is closed"))
        self._core.unwatch()  # (before the close: see ClientCore.unwatch)
        self._sock.close()
        self._core.close_maps()


class AsyncSubscription:
    """Seal/delete notifications of an :class:`AsyncClient`, in order (``async for``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def next(self, timeout: float | None = None) -> p.Notification:
        """The next notification; ``PlasmaTimeout`` when none arrives within ``timeout`` s."""
        client = self._client
        core = client._core
        check_timeout(timeout)
        with trio.move_on_after(timeout if timeout is not None else float("inf")):
            while not core.notifications:
                client._check_open()
                await client._notifications_changed.wait()
                client._notifications_changed = trio.Event()
            return core.next_notification()
        raise PlasmaTimeout(f"no notification within {timeout} s")

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> p.Notification:
        return await self.next()


async def _sendall(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


@asynccontextmanager
async def connect(
    socket_path: str | None = None,
    client_name: str = "",
    *,
    release_delay: int = RELEASE_DELAY,
    copy_threads: int | None = None,
) -> AsyncIterator[AsyncClient]:
    """Connect to the coordinator at ``socket_path`` (default: ``$PLASMA_COORD_SOCKET``, else
    ``/tmp/plasma-coord.sock``) for the duration of the ``async with``
    (``release_delay`` and ``copy_threads`` as for :func:`plasma.connect`).

    Errors raised in the block leave it as themselves (not wrapped in an exception group).
    """
    copy_threads = parallel_copy.copy_threads(copy_threads)  # a bad value fails before connecting
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.connect(default_socket.resolve(socket_path))
    except OSError as exc:
        sock.close()
        where = default_socket.describe(socket_path)
        raise Disconnected(f"cannot connect to plasma-coord at {where}: {exc}") from exc
    client = AsyncClient(sock, release_delay, copy_threads)
    client._core.watch(sock.fileno())
    try:
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            nursery.start_soon(client._reader)
            try:
                msg = client._core.connect_request(client_name, sorted(get_affinity()))
                reply = await client._call((msg,))
                client._core.connected(reply)
                client.info = reply
                client.client_id = reply.client_id
                yield client
            finally:
                nursery.cancel_scope.cancel()
                await client.aclose()
    except BaseExceptionGroup as group:  # the reader never raises: the block's own error
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
