"""The blocking client: ``plasma.connect(path)``.

Every call is an operation of the shared client core (:mod:`plasma._client_core`); this
module only carries out its actions over a blocking socket. Requests that need an answer
make one round trip; ``seal``, ``release`` and small ``create_and_seal`` / ``put`` calls are
sent without waiting (their errors surface on the next reply, or at once with
:meth:`Client.flush`). A client may be shared by threads: one call runs at a time.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import select
import socket
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, overload

import msgspec

from plasma import default_socket
from plasma import protocol as p
from plasma._client_core import (
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
from plasma._client_core.api import ClientAPI, documented
from plasma.errors import Disconnected, PlasmaError, PlasmaTimeout, error_for
from plasma.ids import ObjectID
from plasma.linux.affinity import get_affinity
from plasma.linux.fdpass import ANCILLARY_SPACE, RECV_FLAGS, bytes_alone, received_fds

__all__ = ["Client", "Subscription", "connect"]


@documented
class Client:
    """A connection to a coordinator. Use :func:`connect` to make one."""

    def __init__(
        self,
        socket_path: str | None = None,
        client_name: str = "",
        *,
        release_delay: int = RELEASE_DELAY,
        copy_threads: int | None = None,
    ) -> None:
        self._core = ClientCore(release_delay, copy_threads=copy_threads)
        fast = self._core.refs.fast
        if fast is not None and type(self).get is Client.get:
            # get as one C call where the directory serves a plain get (one id, its data):
            # an instance attribute comes before the class's method (which it calls else).
            # It holds this client weakly; once the client is gone it serves nothing more.
            vars(self)["get"] = fast.bind(Client.get, weakref.ref(self))
            weakref.finalize(self, setattr, fast, "reader", None)
        if fast is not None:  # dropped without close: its socket's watcher stops with it
            weakref.finalize(self, fast.watch, -1)
        self.socket_path = default_socket.resolve(socket_path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(self.socket_path)
        except OSError as exc:
            self._sock.close()
            where = default_socket.describe(socket_path)
            raise Disconnected(f"cannot connect to plasma-coord at {where}: {exc}") from exc
        self._lock = self._core.driver_lock
        self._closed = False
        self._core.watch(self._sock.fileno())
        try:
            msg = self._core.connect_request(client_name, sorted(get_affinity()))
            reply = self._call((msg,))
        except BaseException:
            self._core.unwatch()  # (before the close: see ClientCore.unwatch)
            self._sock.close()
            raise
        self._core.connected(reply)
        self.info: p.Connected = reply
        self.client_id = reply.client_id

    # ------------------------------------------------------------ transport

    def _run(self, op: Op) -> Any:
        """Carry out an operation of the core (see :mod:`plasma._client_core`)."""
        self._core.check_process()
        with self._lock:
            reply: Any = None
            error: BaseException | None = None
            while True:
                try:
                    action = op.throw(error) if error is not None else op.send(reply)
                except StopIteration as done:
                    return done.value
                reply = error = None
                try:
                    if type(action) is Call:
                        reply = self._call(action.msgs)
                    elif type(action) is Send:
                        self._send(action.msgs)
                    else:  # POLL (EXCLUSIVE is not asked: one call runs at a time anyway)
                        for pushed in self._receive(timeout=0):
                            self._core.unexpected(pushed)
                except Exception as exc:  # raised into the operation, which may clean up
                    error = exc

    def _send(self, msgs: Iterable[msgspec.Struct]) -> None:
        """Send ``msgs`` (after queued releases) without waiting."""
        self._check_open()
        data = self._core.frames(*msgs)
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise self._gone(exc) from None

    def _plain(self, call: Plain) -> Any:
        """Carry out a plain call of the core: its request sent alone and the one receive
        that follows taken as its reply when it is exactly that (the fast path), else the
        general way (see :meth:`ClientCore.plain_frame`)."""
        core = self._core
        msg = call.msg
        with self._lock:
            frame = None if self._closed else core.plain_frame(msg)
            if frame is None:
                return self._run(core.plain(call))
            sock = self._sock
            try:
                sock.sendall(frame)
                size, ancdata, flags, _ = sock.recvmsg_into(
                    [core.recv_view], ANCILLARY_SPACE, RECV_FLAGS
                )
            except OSError as exc:
                raise self._gone(exc) from None
            reply = core.plain_reply(size, msg.seq) if bytes_alone(ancdata, flags) else None
            if reply is None:  # more, less or something else came: the general way
                reply = self._reply_to(msg.seq, self._received(size, ancdata, flags))
            elif type(reply) is p.Error:
                raise error_for(reply.code, reply.message)
            return call.done(reply)

    def _call(self, msgs: tuple[msgspec.Struct, ...]) -> Any:
        """Send ``msgs`` and read until the reply to the last one arrives (pushes and
        deferred errors are kept)."""
        self._send(msgs)
        return self._reply_to(msgs[-1].seq, self._receive())  # type: ignore[attr-defined]

    def _reply_to(self, seq: int, replies: list[Any]) -> Any:
        """The reply to ``seq``, among ``replies`` (received already) or read until it
        arrives; the others are the core's (:meth:`ClientCore.unexpected`)."""
        core = self._core
        while True:
            for reply in replies:
                if reply.seq == seq:
                    if isinstance(reply, p.Error):
                        raise error_for(reply.code, reply.message)
                    return reply
                core.unexpected(reply)
            if core.fatal is not None:  # the coordinator is hanging up: say why
                core.check_usable()
            replies = self._receive()

    def _receive(self, timeout: float | None = None) -> list[Any]:
        """Block for the next chunk of bytes (or until ``timeout``; 0 polls); returns the
        replies in it. Answers a Reclaim at once."""
        flags = RECV_FLAGS
        if timeout == 0:
            flags |= socket.MSG_DONTWAIT
        elif timeout is not None:
            ready, _, _ = select.select([self._sock], [], [], max(timeout, 0))
            if not ready:
                return []
        try:
            size, ancdata, msg_flags, _ = self._sock.recvmsg_into(
                [self._core.recv_view], ANCILLARY_SPACE, flags
            )
        except BlockingIOError:
            return []
        except OSError as exc:
            raise self._gone(exc) from None
        return self._received(size, ancdata, msg_flags)

    def _received(self, size: int, ancdata: list[Any], msg_flags: int) -> list[Any]:
        """The replies in the ``size`` bytes (and descriptors) received into the core's
        buffer; a hang-up raises. Answers a Reclaim at once."""
        core = self._core
        view = core.recv_view
        fds = received_fds(ancdata, msg_flags)
        if not size:
            for fd in fds:
                os.close(fd)
            # (the coordinator's reason, if it gave one, stays the reason)
            core.disconnected(Disconnected("the coordinator closed the connection"))
            core.check_usable()  # raises it
        replies = core.feed(view[:size], fds)
        if core.reclaim_requested:  # the store is short: give back what we keep idle
            with contextlib.suppress(OSError):  # a broken connection shows on the next call
                self._sock.sendall(core.frames(*core.reclaim_messages()))
        return replies

    def _gone(self, exc: OSError) -> PlasmaError:
        """Why the connection broke: the coordinator's last word (a ``seq`` 0 Error, read now
        if it is still buffered), else Disconnected saying what happened."""
        core = self._core
        with contextlib.suppress(OSError, PlasmaError):
            while core.fatal is None and (replies := self._receive(timeout=0)):
                for reply in replies:
                    core.unexpected(reply)
        core.disconnected(Disconnected(f"the connection to the coordinator broke: {exc}"))
        assert core.fatal is not None
        return type(core.fatal)(core.fatal.message)

    def _check_open(self) -> None:
        if self._closed:
            raise Disconnected("the client is closed")
        core = self._core
        if core.fatal is not None or core.deferred_errors:
            core.check_usable()

    # ------------------------------------------------------------ objects

    def create(
        self,
        object_id: ObjectRef,
        size: int,
        metadata: bytes = b"",
        *,
        node: Node = None,
        timeout: float | None = 0.0,
    ) -> memoryview:
        return self._run(self._core.create(object_id, size, metadata, node, timeout))

    def seal(self, object_id: ObjectRef, *, wait: bool = False) -> None:
        if wait:
            self._plain(self._core.sealed_call(object_id))
        else:
            self._run(self._core.seal(object_id, False))

    def abort(self, object_id: ObjectRef) -> None:
        self._run(self._core.abort(object_id))

    def release(self, object_id: ObjectRef) -> None:
        self._run(self._core.release(object_id))

    def create_and_seal(
        self,
        object_id: ObjectRef,
        data: bytes | bytearray | memoryview,
        metadata: bytes = b"",
        *,
        node: int | None = None,
    ) -> None:
        self._run(self._core.create_and_seal(object_id, data, metadata, node))

    def create_and_seal_many(
        self,
        items: Iterable[ManyItem],
        *,
        node: int | None = None,
    ) -> None:
        self._run(self._core.create_and_seal_many(items, node))

    @overload
    def get(
        self,
        object_ids: ObjectRef,
        timeout: float | None = None,
        *,
        with_metadata: bool = False,
        writable: bool = False,
    ) -> Any: ...
    @overload
    def get(
        self,
        object_ids: Sequence[ObjectRef],
        timeout: float | None = None,
        *,
        with_metadata: bool = False,
        writable: bool = False,
    ) -> list[Any]: ...

    def get(
        self,
        object_ids: Any,
        timeout: float | None = None,
        *,
        with_metadata: bool = False,
        writable: bool = False,
    ) -> Any:
        local = self._core.get_pinned(object_ids, timeout, with_metadata, writable)
        if local is None:
            local = self._run(self._core.get(object_ids, timeout, with_metadata, writable))
        return local

    def get_buffers(
        self,
        object_ids: Iterable[ObjectRef],
        timeout: float | None = None,
        *,
        with_metadata: bool = False,
    ) -> list[Any]:
        return self._run(self._core.get_buffers(object_ids, timeout, with_metadata, False))

    def get_metadata(
        self, object_ids: Sequence[ObjectRef], timeout: float | None = None
    ) -> list[bytes]:
        return self._run(self._core.get_metadata(object_ids, timeout))

    def contains(self, object_id: ObjectRef) -> bool:
        return self._plain(self._core.contains_call(object_id))

    def delete(self, object_ids: ObjectRef | Iterable[ObjectRef]) -> list[ObjectID]:
        return self._run(self._core.delete(object_ids))

    def list(self) -> dict[ObjectID, dict[str, Any]]:
        return self._run(self._core.list())

    def replicate(self, object_id: ObjectRef, nodes: Iterable[int]) -> builtins.list[int]:
        return self._run(self._core.replicate(object_id, nodes))

    def migrate(self, object_id: ObjectRef, node: int) -> builtins.list[int]:
        return self._run(self._core.migrate(object_id, node))

    def evict(self, nbytes: int) -> int:
        return self._run(self._core.evict(nbytes))

    def stats(self, placement: bool = False, top_objects: int = 10) -> dict[str, Any]:
        return self._run(self._core.stats(placement, top_objects))

    def register_task(
        self, task_id: str, pid: int, node: int | None = None, run_id: str = ""
    ) -> None:
        self._run(self._core.register_task(task_id, pid, node, run_id))

    def task_done(self, task_id: str, run_id: str = "") -> None:
        self._run(self._core.task_done(task_id, run_id))

    def submit_sample(self, task_id: str, sample: Any, run_id: str = "") -> None:
        self._run(self._core.submit_sample(task_id, sample, run_id))

    def flush(self) -> None:
        self._run(self._core.flush())

    def subscribe(self, *, with_locations: bool = False) -> Subscription:
        self._run(self._core.subscribe(with_locations))
        return Subscription(self)

    def run_call(self, run_id: str, payload: Any) -> Any:
        return self._run(self._core.run_call(run_id, payload))

    # ------------------------------------------------------------ values

    def put(
        self,
        value: Any,
        object_id: ObjectRef | None = None,
        *,
        node: Node = None,
        replicas: Iterable[int] = (),
    ) -> ObjectID:
        if replicas:
            return self._run(self._core.put_replicated(value, object_id, node, replicas))
        return self._run(self._core.put(value, object_id, node))

    def get_object(
        self, object_id: ObjectRef, timeout: float | None = None, *, writable: bool = False
    ) -> Any:
        data, meta = self.get(object_id, timeout, with_metadata=True)
        return self._core.value(object_id, data, meta, writable)

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Send pending releases and disconnect (the coordinator drops this client's references)."""
        if self._closed:
            return
        with self._lock:
            with contextlib.suppress(OSError, PlasmaError):
                self._core.check_process()  # a forked child leaves the parent's connection be
                data = self._core.closing_frames()
                if data:
                    self._sock.sendall(data)
            self._closed = True
            self._core.unwatch()
            self._sock.close()
            self._core.close_maps()

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
        core = client._core
        check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with client._lock:
            while not core.notifications:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PlasmaTimeout(f"no notification within {timeout} s")
                for reply in client._receive(remaining):
                    core.unexpected(reply)
            return core.next_notification()

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> p.Notification:
        return self.next()


def connect(
    socket_path: str | None = None,
    client_name: str = "",
    *,
    release_delay: int = RELEASE_DELAY,
    copy_threads: int | None = None,
) -> Client:
    """Connect to the coordinator listening on ``socket_path`` (default:
    ``$PLASMA_COORD_SOCKET``, else ``/tmp/plasma-coord.sock``).

    ``release_delay`` is how many released objects the client keeps a reference to, so that
    getting them again needs no round trip (0 releases at once). ``copy_threads`` is how many
    threads fill an object of 16 MiB or more in ``put`` and ``create_and_seal`` (default:
    ``$PLASMA_COPY_THREADS``, else the CPUs this thread may use, at most 8; 1: this thread).
    """
    return Client(socket_path, client_name, release_delay=release_delay, copy_threads=copy_threads)


if TYPE_CHECKING:
    _conforms: type[ClientAPI] = Client
