"""The client core (internal): one sans-I/O state machine that both clients drive.

:class:`ClientCore` wires four parts and runs every client call once over them:

- :mod:`~plasma._client_core.outbox`: sequence numbers, request checking, and what is queued
  to go with the next frames (Releases, Unpins, a Tables request, cleanup messages);
- :mod:`~plasma._client_core.inbox`: reply frames decoded, replies handed back, pushes kept
  or handed on, replies nobody waits for matched by sequence number;
- :mod:`~plasma._client_core.segment_maps`: segments and the directory's tables mapped from
  the descriptors received, and unmapped;
- :mod:`~plasma._client_core.refs`: the references held (views, the release-delay cache,
  revocations, creator references, subscription prefetches) and when each goes.

What stays here is what joins them: the connection's state (its reply to Connect, a
hang-up seen on the socket, a fork), the small-object arena, the directory get's fast path
and the operations. Each operation is a generator of actions (:data:`Action`): the blocking
client (:mod:`plasma.client`) and the trio client (:mod:`plasma.aio`) only carry out those
actions, sending and receiving bytes and descriptors. A feature written here is a feature
of both clients. Nothing here does I/O but the one poll(2) that looks for a hang-up (and,
with the C read path, the thread that waits for one: see :meth:`ClientCore.watch`).

An operation yields ``Call(msgs)`` (send ``msgs``, resume with the reply to the last one, or
with its error thrown in), ``Send(msgs)`` (send, do not wait), ``POLL`` (take in what the
coordinator pushed already, without blocking: the blocking client reads only when asked)
and ``EXCLUSIVE`` (no other operation that writes into the arena may run until this one
ends; asked only of a driver that runs operations concurrently).

A plain call (one request, one reply with nothing to map or keep: :class:`Plain`, such as
``contains`` or an acknowledged seal) is such an operation too (:meth:`ClientCore.plain`),
and has a fast path the drivers take when nothing else is under way: the request's frame
alone (:meth:`ClientCore.plain_frame`) and, in the blocking client, the one receive that
follows taken as its reply when it is exactly that (:meth:`ClientCore.plain_reply`).
"""

from __future__ import annotations

import functools
import math
import mmap
import operator
import os
import select
import sys
import threading
import time
import types
import warnings
import weakref
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from plasma import parallel_copy, serialization
from plasma import protocol as p
from plasma._client_core.fast_path import client_lock, fallback_warning
from plasma._client_core.inbox import Inbox
from plasma._client_core.outbox import IDS_PER_FRAME, Outbox, checked_frame, chunks
from plasma._client_core.refs import (
    RELEASE_DELAY,
    RELEASE_DELAY_BYTES,
    RELEASE_DELAY_SHARE,
    Refs,
    Views,
)
from plasma._client_core.segment_maps import SegmentMaps
from plasma.errors import BadRequest, Disconnected, PlasmaError, error_for
from plasma.ids import ID_SIZE, ObjectID, as_id_bytes

ObjectRef = ObjectID | bytes

RECV_SIZE = 256 * 1024
# Objects up to ARENA_OBJECT_LIMIT bytes (data + metadata) are written into a range of a
# segment the client reserved in advance (its arena): ARENA_SIZE at least, room for
# ARENA_OBJECTS objects of the size at hand, but at most 1/64 of the store.
ARENA_SIZE = 1 << 20
ARENA_OBJECTS = 16
ARENA_OBJECT_LIMIT = 1 << 20
# A get served without a request (through the directory, or of an object the client holds)
# first asks whether the coordinator hung up. With the C read path a thread waits for that on
# the socket and the get reads its flag (no syscall); without it (or where no thread could be
# started) the get looks at the socket (one poll(2)) at most this often: a client serves
# nothing more later than this after its coordinator hung up (a request learns at once).
HANGUP_CHECK_INTERVAL = 0.001
_monotonic = time.monotonic  # (the vDSO's clock: no syscall)


# Where an object goes: a node, "interleave" (pages across every node), a list of nodes to
# interleave across, or None (the client's default node).
Node = int | str | Sequence[int] | None


def placement(node: Node) -> tuple[int | None, list[int] | None]:
    """``(node, interleave)`` of a ``Create`` for what the API takes as ``node``."""
    if node is None or (isinstance(node, int) and not isinstance(node, bool)):
        return node, None
    if node == "interleave":
        return None, []
    if isinstance(node, list | tuple) and all(
        isinstance(n, int) and not isinstance(n, bool) for n in node
    ):
        return None, list(node)
    raise BadRequest(f'node must be a node number, "interleave" or a list of nodes, got {node!r}')


# an item of create_and_seal_many: (id, data) or (id, data, metadata)
ManyItem = (
    tuple[ObjectRef, bytes | bytearray | memoryview]
    | tuple[ObjectRef, bytes | bytearray | memoryview, bytes]
)


def many_items(items: Iterable[Any]) -> list[tuple[Any, Any, bytes]]:
    """``(id, data, metadata)`` for each item of ``create_and_seal_many`` (``(id, data)``
    means no metadata); BadRequest naming the index of the first malformed item."""
    out: list[tuple[Any, Any, bytes]] = []
    for index, item in enumerate(items):
        if isinstance(item, tuple | list) and len(item) == 3:
            out.append((item[0], item[1], item[2]))
        elif isinstance(item, tuple | list) and len(item) == 2:
            out.append((item[0], item[1], b""))
        else:
            what = type(item).__name__
            if isinstance(item, tuple | list):
                what += f" of {len(item)}"
            raise BadRequest(
                f"create_and_seal_many: item {index} must be (id, data) or "
                f"(id, data, metadata), got a {what}"
            )
        meta = out[-1][2]
        if type(meta) is not bytes:
            if not isinstance(meta, bytearray | memoryview):
                raise BadRequest(
                    f"create_and_seal_many: item {index}: metadata must be bytes, "
                    f"got {type(meta).__name__}"
                )
            out[-1] = (out[-1][0], out[-1][1], bytes(meta))
    return out


class Call(NamedTuple):
    """Send ``msgs``; resume with the reply to the last one (its Error raised into the op)."""

    msgs: tuple[msgspec.Struct, ...]


class Send(NamedTuple):
    """Send ``msgs`` without waiting for anything."""

    msgs: tuple[msgspec.Struct, ...]


class Plain(NamedTuple):
    """A call that is one request and one plain reply (nothing to map, keep or answer):
    ``msg``, and ``done``, which makes the call's result of the reply. A driver runs it
    through :meth:`ClientCore.plain_frame` and :meth:`ClientCore.plain_reply` (the fast
    path), or as the operation :meth:`ClientCore.plain` (the general one)."""

    msg: Any
    done: Callable[[Any], Any]


_PRESENT = operator.attrgetter("present")  # contains' result, of its reply

POLL = "poll"  # take in pushed messages already received, without blocking
EXCLUSIVE = "exclusive"  # hold this client's arena until the operation ends
Action = Call | Send | str
Op = Generator[Action, Any, Any]


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` if it is None or finite seconds >= 0; else BadRequest (a ValueError)."""
    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise BadRequest(f"timeout must be None or finite seconds >= 0, got {timeout!r}")
    return timeout


def _id_list(object_ids: ObjectRef | Iterable[ObjectRef]) -> tuple[list[bytes], bool]:
    """The ids as bytes, and whether a single id (not a sequence) was given."""
    if isinstance(object_ids, (ObjectID, bytes)):
        return [as_id_bytes(object_ids)], True
    return [as_id_bytes(o) for o in object_ids], False


# Cores of this process, told when it forks: the child must not touch the parent's pins.
_CORES: weakref.WeakSet[ClientCore] = weakref.WeakSet()


def _hangup_poller(fd: int) -> select.poll:
    """A poll object that reports only the peer hanging up on socket ``fd``, or the socket
    breaking: unread bytes do not count (POLLHUP and POLLERR are always reported)."""
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP)
    return poller


_fallback_warned = False
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # plasma/


def _warn_fallback_once() -> None:
    """The fallback's warning, the first time a client of this process connects, pointed
    at the first caller outside the package (the user's connect)."""
    global _fallback_warned
    message = fallback_warning()
    if message is None or _fallback_warned:
        return
    _fallback_warned = True
    level = 1
    frame: types.FrameType | None = sys._getframe(0)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, RuntimeWarning, stacklevel=level)


def _after_fork_in_child() -> None:
    for core in list(_CORES):
        core.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class Arena:
    """A range of a segment this client fills with small objects itself.

    ``node`` is what the arena was requested for (None: the client's default node); the store
    keeps one arena per client, so asking for another node replaces it.
    """

    segment: int
    start: int
    end: int
    cursor: int
    node: int | None
    grant: int  # its name in SealArena and ReturnArena
    alignment: int = 64

    def take(self, nbytes: int) -> int | None:
        """Offset for an object of ``nbytes`` (an empty one still takes one alignment unit),
        or None when it does not fit."""
        mask = self.alignment - 1
        need = ((nbytes + mask) & ~mask) or self.alignment
        if self.cursor + need > self.end:
            return None
        offset = self.cursor
        self.cursor += need
        return offset


# what the arena takes: bytes (or a byte view) as they are, or a value measured by
# serialization.encode, which writes itself
Payload = bytes | memoryview | serialization.Encoded


def _write_one(
    arena: Arena, mm: mmap.mmap, oid: bytes, data: Payload, meta: bytes
) -> p.ArenaObject | None:
    """Write one object (``data``, then ``meta``) into ``arena`` (mapped as ``mm``): what
    registers it, or None when it does not fit. How every object gets into an arena."""
    dlen = data.data_size if isinstance(data, serialization.Encoded) else len(data)
    offset = arena.take(dlen + len(meta))
    if offset is None:
        return None
    if isinstance(data, serialization.Encoded):  # (a measured value writes itself)
        with memoryview(mm)[offset : offset + dlen] as view:
            data.write(view)
    else:
        mm[offset : offset + dlen] = data
    if meta:
        mm[offset + dlen : offset + dlen + len(meta)] = meta
    return p.ArenaObject(oid, offset, dlen, len(meta))


class ClientCore:
    """Everything a client knows about its connection, and every call, without any I/O."""

    def __init__(
        self,
        release_delay: int = RELEASE_DELAY,
        *,
        concurrent: bool = False,
        copy_threads: int | None = None,
    ) -> None:
        # a driver that runs several operations at once (the trio client) is asked to hold
        # the arena (EXCLUSIVE) around operations that write into it
        self.concurrent = concurrent
        self.outbox = Outbox(self._nobodys)
        self.next_seq: Callable[[], int] = self.outbox.next_seq
        # threads that fill a large object (see plasma.parallel_copy); BadRequest if invalid
        self.copy_threads = parallel_copy.copy_threads(copy_threads)
        self.node_cpus: dict[int, list[int]] = {}  # each node's CPUs (Connected.nodes)
        self.info: p.Connected | None = None
        self.alignment = 64  # what the coordinator aligns objects to (Connected.alignment)
        self.arena: Arena | None = None
        # why the connection is gone (the coordinator's last word, or Disconnected): once
        # set, every call raises it, gets the directory could serve included
        self.fatal: PlasmaError | None = None
        # the socket hung_up() looks at (-1: none) and the poll object that looks
        self._socket_fd = -1
        self._poller = select.poll()
        self.next_hangup_check = 0.0  # (time.monotonic()) when a directory get looks again
        self._held_lock = client_lock()  # finalizers may run on any thread
        # the blocking client's lock around a call (threads may share a client); Any: the
        # type stubs lack the _at_fork_reinit forked() calls
        self.driver_lock: Any = threading.RLock()
        self.maps = SegmentMaps(self._held_lock)
        self.refs = Refs(self._held_lock, self.outbox, self.maps, release_delay)
        self.maps.fast = self.refs.fast
        # a plain get (one id, its data, no timeout) in one call: the C half's, or None
        self.plain_get: Callable[[Any], memoryview | None] | None = (
            self.refs.fast.get if self.refs.fast is not None else None
        )
        self.inbox = Inbox(self.outbox, self.maps, self.refs, self._arena_failed)
        # what the drivers read of the inbox: pushed messages kept, errors to raise
        self.notifications = self.inbox.notifications
        self.run_requests = self.inbox.run_requests
        self.deferred_errors = self.inbox.deferred_errors
        # one receive buffer for the connection's life: a fresh 256 KiB bytes object per recv
        # would cost an mmap/munmap and page faults on every reply
        self.recv_view = memoryview(bytearray(RECV_SIZE))
        self.pid = os.getpid()
        self.forked_from: int | None = None  # set in a forked child: this client is not its
        _CORES.add(self)

    # ---------------------------------------------------------------- outgoing

    def frames(self, *msgs: msgspec.Struct) -> bytes:
        """Encoded frames for ``msgs``, preceded by what is queued (see :class:`Outbox`)."""
        return self.outbox.frames(*msgs)

    def _nobodys(self, msg: p.Abort | p.ReturnArena) -> None:
        self.inbox.nobodys(msg)

    @property
    def reclaim_requested(self) -> bool:
        """A Reclaim arrived: answer with :meth:`reclaim_messages`."""
        return self.inbox.reclaim_requested

    def connect_request(self, client_name: str, cpus: list[int]) -> p.Connect:
        return p.Connect(
            seq=self.next_seq(),
            protocol_version=p.PROTOCOL_VERSION,
            client_name=client_name,
            cpus=cpus,
        )

    def connected(self, reply: p.Connected) -> None:
        """Take in the coordinator's answer to Connect (and say, once per process, when the
        directory is read without the C read path)."""
        _warn_fallback_once()
        self.info = reply
        self.alignment = reply.alignment
        self.node_cpus = {node.id: node.cpus for node in reply.nodes}
        self.refs.cache_limit = min(RELEASE_DELAY_BYTES, reply.capacity // RELEASE_DELAY_SHARE)
        if self.refs.fast is not None:
            self.refs.fast.node = reply.node

    def align(self, n: int) -> int:
        """``n`` rounded up to the coordinator's alignment."""
        mask = self.alignment - 1
        return (n + mask) & ~mask

    def reclaim_messages(self) -> list[msgspec.Struct]:
        """The answer to a Reclaim: every cached reference is released (with the next frames)
        and the arena given back; the next small put asks for a new one."""
        self.inbox.reclaim_requested = False
        self.refs.drop_cache()
        arena, self.arena = self.arena, None
        if arena is None:
            return []
        return [p.ReturnArena(seq=self.next_seq(), grant=arena.grant)]

    def closing_frames(self) -> bytes:
        """What to send before closing: the releases still queued (cached ones included)."""
        self.refs.drop_cache()
        return self.outbox.frames() if self.outbox.queued() else b""

    def abandon(self, msg: msgspec.Struct) -> None:
        """The caller of ``msg`` will not read its reply: give back what the reply brings."""
        self.inbox.abandon(msg)

    def forked(self) -> None:
        """This process is a fork of the one that connected: never touch the connection or
        the pins again (they are the parent's); every call raises."""
        self.forked_from = self.pid
        # first, the locks a thread of the parent may have held (it is not in this process);
        # the core's own is never taken in a child (every path checks forked first)
        self.maps.populator.forked()
        self.driver_lock._at_fork_reinit()
        self.unwatch()  # (nor is the socket's watcher: only its descriptors are closed)
        self.refs.forked = True
        self.pid = os.getpid()
        self.maps.use_tables(None, None)

    def check_process(self) -> None:
        """Raise in a forked child: the connection and its pins belong to the parent."""
        if self.forked_from is not None:
            raise PlasmaError(
                f"this client was connected by process {self.forked_from}; a forked child "
                f"(process {self.pid}) must connect its own client"
            )

    def watch(self, fd: int) -> None:
        """The driver's socket: before serving anything without a request, the core knows
        whether the coordinator hung up. With the C read path a thread of its own waits for
        that (the Getter's watcher, stopped by :meth:`unwatch`); else, or where no thread
        could be started, a get looks (one poll(2), nothing read) at most every
        HANGUP_CHECK_INTERVAL. A socket watched before is let go first."""
        self._socket_fd = fd
        self._poller = _hangup_poller(fd)
        fast = self.refs.fast
        if fast is not None:
            fast.interval_ns = int(HANGUP_CHECK_INTERVAL * 1e9)
            fast.watch(fd)

    def unwatch(self) -> None:
        """The socket is about to close (or is the parent's, in a forked child): look at it
        no more. Its watcher thread is stopped and joined, so that the thread ends with the
        connection (call this before closing the socket; its epoll set would not keep the
        socket open, a poll(2) would); a forked child, which has no such thread, only closes
        its copies of the watcher's descriptors."""
        self._socket_fd = -1  # (once closed, its number may be reused)
        if self.refs.fast is not None:
            self.refs.fast.watch(-1)

    def hung_up(self) -> bool:
        """True when the connection is gone: known already, or seen now on the socket (the
        peer closed it, or it broke). Then the directory is a dead store's (a new
        coordinator on the same path has its own): nothing more is served from it."""
        if self.fatal is not None:
            return True
        if self._socket_fd < 0:
            return False
        try:
            events = self._poller.poll(0)
        except RuntimeError:  # another thread polls it right now (gets take no lock)
            events = _hangup_poller(self._socket_fd).poll(0)
        if not events:
            return False
        self.disconnected(Disconnected("the coordinator closed the connection"))
        return True

    def disconnected(self, exc: PlasmaError) -> None:
        """The connection is gone (``exc`` says why, unless the coordinator said so first):
        every call raises from now on. Views handed out stay valid (their segments stay
        mapped) but nothing new is served, not even through the directory."""
        with self._held_lock:
            if self.fatal is None:
                self.fatal = exc
            # (the pin table stays: views that die still unpin)
            self.maps.use_tables(None, self.maps.pins)

    def gone(self) -> bool:
        """:meth:`hung_up`, for what is served without a request: it looks at the socket
        once the thread watching it saw a hang-up (until then, a read of that thread's flag),
        or, where no thread watches it, at most every HANGUP_CHECK_INTERVAL (between looks it
        costs a read of the clock, the vDSO's: no syscall)."""
        if self.fatal is not None:
            return True
        fast = self.refs.fast
        seen = fast.hung_up if fast is not None else None
        if seen is None:
            return _monotonic() >= self.next_hangup_check and self._look()
        return seen and self.hung_up()

    def _look(self) -> bool:
        self.next_hangup_check = _monotonic() + HANGUP_CHECK_INTERVAL
        return self.hung_up()

    def check_connected(self) -> None:
        """Raise why the connection is gone, if it is (see :meth:`gone`)."""
        if self.gone():
            assert self.fatal is not None
            raise type(self.fatal)(self.fatal.message)

    def check_usable(self) -> None:
        """Raise the coordinator's reason for closing, or the oldest deferred error."""
        self.check_process()
        if self.fatal is not None:
            raise type(self.fatal)(self.fatal.message)
        err = self.inbox.take_deferred_error()
        if err is not None:
            raise err

    # ---------------------------------------------------------------- plain calls
    # A plain call (:class:`Plain`) skips the operation's machinery when nothing else is
    # under way: its request alone is sent and, in the blocking client, the one receive
    # that follows is decoded as its reply when it is exactly that; anything else (queued
    # messages, an error to raise first, pushes, a partial frame, descriptors, a hang-up)
    # goes the general way with the same message.

    def plain_frame(self, msg: Any) -> bytes | None:
        """The frame of ``msg`` alone, when its call may take the fast path: nothing waits
        to go ahead of it or to be raised first, and the connection is this process's and
        up. None: run :meth:`plain` (BadRequest for a message out of bounds)."""
        inbox = self.inbox
        if (
            self.fatal is not None
            or self.forked_from is not None
            or inbox.deferred_errors
            or inbox.reclaim_requested
            or self.outbox.queued()
        ):
            return None
        return checked_frame(msg)

    def plain_reply(self, size: int, seq: int) -> Any | None:
        """The reply to ``seq`` when the ``size`` bytes received into :attr:`recv_view`
        (with no descriptors) are that one plain reply and nothing else; None: :meth:`feed`
        them."""
        return self.inbox.only_reply(self.recv_view[:size], seq)

    def plain(self, call: Plain) -> Op:
        """A plain call the general way (as the operation it is)."""
        reply = yield Call((call.msg,))
        return call.done(reply)

    # ---------------------------------------------------------------- incoming

    def feed(self, data: bytes | memoryview, fds: list[int]) -> list[Any]:
        """Decode received bytes; returns replies to requests (see :class:`Inbox`)."""
        return self.inbox.feed(data, fds)

    def _arena_failed(self, grant: int) -> None:
        """A SealArena of ``grant`` failed: drop that arena, given back with the next frames."""
        if self.arena is not None and self.arena.grant == grant:
            self.arena = None
            self.outbox.cleanup.append(p.ReturnArena(seq=0, grant=grant))

    def next_notification(self) -> p.Notification:
        """See :meth:`Inbox.next_notification`."""
        return self.inbox.next_notification()

    def unexpected(self, reply: Any) -> None:
        """A reply nobody waits for (see :meth:`Inbox.unexpected`); the coordinator's reason
        for closing the connection beats a hang-up seen on the socket before."""
        err = self.inbox.unexpected(reply)
        if err is not None:
            if isinstance(self.fatal, Disconnected):
                self.fatal = None
            self.disconnected(err)

    def get_pinned(
        self, object_ids: Any, timeout: float | None, with_metadata: bool, writable: bool = False
    ) -> Any | None:
        """What ``get`` of one id returns, when the directory serves it at once (no I/O, so
        no operation to drive); None otherwise (run :meth:`get`, which raises if the
        connection is gone). The fast path of both clients' ``get``: the plain case (one
        id, data only, no timeout) is one call of the C half where it is built."""
        plain = self.plain_get
        if plain is not None and timeout is None and not (with_metadata or writable):
            view = plain(object_ids)  # (looks for a hang-up as gone() does)
            if view is not None:
                return view
        if self.maps.reader is None or self.gone():  # (fatal empties the reader)
            return None  # (get raises it)
        kind = type(object_ids)
        if kind is ObjectID:
            oid = object_ids.binary()
        elif kind is bytes and len(object_ids) == ID_SIZE:
            oid = object_ids
        else:
            return None
        refs = self.refs
        if oid in refs.held or oid in refs.cache:
            return None  # served by reuse, after taking in revocations
        check_timeout(timeout)
        views = self.take_pinned(oid)
        if views is None:
            return None
        if writable:
            views = self._writable([oid], [views], True)[0]
        return views if with_metadata else views[0]

    def take_pinned(self, oid: bytes) -> tuple[memoryview, memoryview] | None:
        """Views of the sealed object ``oid`` read from the directory and pinned
        (:mod:`~plasma._client_core.fast_path`: the C read path, or the Python one), with no
        request; None when the directory cannot serve it (ask the coordinator). The lock
        keeps another thread from replacing the directory's maps meanwhile."""
        with self._held_lock:
            maps = self.maps
            reader, pins, path = maps.reader, maps.pins, maps.read_path
            if reader is None or pins is None or path is None:
                return None
            refs = self.refs
            if oid in refs.held or oid in refs.cache:
                return None  # held already (another thread got it meanwhile): reuse that one
            info = self.info
            node = info.node if info is not None else None
            pinned = path.pin(reader, pins, maps.segments, oid, node)
            if pinned is None:
                self._check_superseded(reader)
                return None
            found, index = pinned
            return refs.pinned(oid, found, index)

    def _check_superseded(self, reader: Any) -> None:
        """Ask for the current directory (once) when ``reader``'s was replaced."""
        token = self.maps.superseded(reader)
        if token:
            self.outbox.tables_wanted = token

    # ---------------------------------------------------------------- views

    def copier(self, loc: p.ObjectLocation) -> serialization.Copy:
        """How to fill a created object: in ``copy_threads`` threads on its node's CPUs."""
        return functools.partial(
            parallel_copy.copy_many,
            threads=self.copy_threads,
            cpus=self.node_cpus.get(loc.node, ()),
        )

    def holds_creator_reference(self, object_id: ObjectRef) -> bool:
        """See :meth:`Refs.holds_creator_reference`."""
        return self.refs.holds_creator_reference(as_id_bytes(object_id))

    def start_get(self, ids: list[bytes]) -> PendingGet:
        """A get of ``ids`` with the objects this client holds already filled in."""
        return PendingGet(self, ids, [self.refs.reuse(oid) for oid in ids])

    def _writable(self, ids: list[bytes], results: list[Any], with_metadata: bool) -> list[Any]:
        """``results`` of a get of ``ids`` with each data view made a private writable one
        (:meth:`Refs.private_view`); metadata stays read-only."""
        out: list[Any] = []
        for oid, got in zip(ids, results, strict=True):
            if with_metadata:
                out.append((self.refs.private_view(oid, got[0]), got[1]))
            else:
                out.append(self.refs.private_view(oid, got))
        return out

    def value(
        self, object_id: ObjectRef, data: memoryview, meta: memoryview, writable: bool
    ) -> Any:
        """What ``get_object`` returns for the views of an object: a read-only view of it,
        or with ``writable`` a copy-on-write one the caller may modify. Torch tensors cannot
        be read-only: theirs is always copy-on-write (the rest of the value stays
        read-only without ``writable``), so no reader changes the store's bytes."""
        if not (writable or serialization.holds_tensors(meta)):
            return serialization.decode(data, meta)
        private = self.refs.private_view(as_id_bytes(object_id), data)
        return serialization.decode(private, meta, writable=writable)

    def close_maps(self) -> None:
        """Unmap everything, once the socket is closed (after :meth:`unwatch`)."""
        self.maps.close()

    # ---------------------------------------------------------------- operations
    # Each is a generator the clients drive (see the module docstring); the public methods
    # of plasma.client.Client and plasma.aio.AsyncClient are these, one to one.

    def create(
        self,
        object_id: ObjectRef,
        size: int,
        metadata: bytes = b"",
        node: Node = None,
        timeout: float | None = 0.0,
    ) -> Op:
        loc = yield from self._create(object_id, size, metadata, node, timeout)
        self.maps.write_object(loc, metadata).release()  # (populates, writes the metadata)
        return self.refs.create_buffer(as_id_bytes(object_id), loc)

    def _create(
        self,
        object_id: ObjectRef,
        size: int,
        metadata: bytes,
        node: Node,
        timeout: float | None,
    ) -> Generator[Action, Any, p.ObjectLocation]:
        check_timeout(timeout)
        one, interleave = placement(node)
        msg = p.Create(
            self.next_seq(), as_id_bytes(object_id), size, len(metadata), one, timeout, interleave
        )
        reply = yield Call((msg,))
        return reply.locations[0]

    def replicate(self, object_id: ObjectRef, nodes: Iterable[int]) -> Op:
        nodes = list(nodes)
        if any(isinstance(n, bool) or not isinstance(n, int) for n in nodes):
            raise BadRequest(f"replicate needs node numbers, got {nodes!r}")
        msg = p.Replicate(seq=self.next_seq(), id=as_id_bytes(object_id), nodes=nodes)
        reply = yield Call((msg,))
        return reply.nodes

    def migrate(self, object_id: ObjectRef, node: int) -> Op:
        if isinstance(node, bool) or not isinstance(node, int):
            raise BadRequest(f"migrate needs a node number, got {node!r}")
        reply = yield Call((p.Migrate(seq=self.next_seq(), id=as_id_bytes(object_id), node=node),))
        return reply.nodes

    def seal(self, object_id: ObjectRef, wait: bool = False) -> Op:
        if wait:
            return (yield from self.plain(self.sealed_call(object_id)))
        oid = as_id_bytes(object_id)
        yield Send((p.Seal(seq=self.next_seq(), ids=[oid], ack=False),))
        self.refs.sealed(oid)

    def sealed_call(self, object_id: ObjectRef) -> Plain:
        """``seal(object_id, wait=True)``, a plain call."""
        oid = as_id_bytes(object_id)
        msg = p.Seal(seq=self.next_seq(), ids=[oid], ack=True)
        return Plain(msg, functools.partial(self._sealed, oid))

    def _sealed(self, oid: bytes, reply: Any) -> None:
        self.refs.sealed(oid)
        self.check_usable()  # an error of an earlier call sent without waiting

    def abort(self, object_id: ObjectRef) -> Op:
        oid = as_id_bytes(object_id)
        yield Call((p.Abort(seq=self.next_seq(), id=oid),))
        self.refs.aborted(oid)

    def release(self, object_id: ObjectRef) -> Op:
        oid = as_id_bytes(object_id)
        if not self.refs.release(oid):
            return  # released already, with its buffer
        yield Send((p.Release(seq=self.next_seq(), ids=[oid], ack=False),))

    def create_and_seal(
        self,
        object_id: ObjectRef,
        data: bytes | bytearray | memoryview,
        metadata: bytes = b"",
        node: int | None = None,
    ) -> Op:
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        if len(data) + len(metadata) > ARENA_OBJECT_LIMIT:
            yield from self.create_and_seal_many([(object_id, data, metadata)], node)
            return
        if self.concurrent:
            yield EXCLUSIVE
        oid = object_id.binary() if type(object_id) is ObjectID else as_id_bytes(object_id)
        arena = self._arena_for(node)  # (what fits needs no list and no generator)
        if arena is not None:
            obj = _write_one(arena, self.maps.segments[arena.segment], oid, data, metadata)
            if obj is not None:
                yield Send((self._seal_arena(arena, [obj]),))
                return
        yield Send(tuple((yield from self._write_arena([(oid, data, metadata)], node))))

    def create_and_seal_many(self, items: Iterable[ManyItem], node: int | None = None) -> Op:
        """Objects up to ``ARENA_OBJECT_LIMIT`` bytes are written into the arena and registered
        by ``SealArena`` messages sent without waiting; larger ones by one CreateMany. When
        an arena refill fails (StoreFull) the objects before it are stored, the rest not.
        Each item is ``(id, data)`` or ``(id, data, metadata)``; a malformed one is a
        BadRequest naming its index, before anything is written."""
        small: list[tuple[bytes, Payload, bytes]] = []
        large: list[tuple[bytes, memoryview, bytes]] = []
        for object_id, data, meta in many_items(items):
            oid = object_id.binary() if type(object_id) is ObjectID else as_id_bytes(object_id)
            if type(data) is not bytes:
                data = memoryview(data).cast("B")
            if len(data) + len(meta) > ARENA_OBJECT_LIMIT:
                large.append((oid, memoryview(data), meta))
            else:
                small.append((oid, data, meta))
        if self.concurrent:
            yield EXCLUSIVE
        msgs: list[msgspec.Struct] = []
        if small:
            msgs += yield from self._write_arena(small, node)
        for start in range(0, len(large), IDS_PER_FRAME):
            part = large[start : start + IDS_PER_FRAME]
            # the arena's SealArenas go first: an answer to Reclaim read while waiting for
            # this reply returns the arena, and must come after them
            create = p.CreateMany(
                seq=self.next_seq(),
                items=[p.CreateItem(oid, len(d), len(m)) for oid, d, m in part],
                node=node,
            )
            reply = yield Call((*msgs, create))
            msgs = []
            for (_, data, meta), loc in zip(part, reply.locations, strict=True):
                self.copier(loc)([(self.maps.write_object(loc, meta), data)])
            msgs += self._seal_and_release([oid for oid, _, _ in part])
        if msgs:
            yield Send(tuple(msgs))

    def _write_arena(
        self, items: Sequence[tuple[bytes, Payload, bytes]], node: int | None
    ) -> Generator[Action, Any, list[msgspec.Struct]]:
        """Write each ``(id, data, metadata)`` (at most ``ARENA_OBJECT_LIMIT`` bytes) into an
        arena for ``node``, asking for a fresh arena when the current one is full (the seals
        of the old one go with that request); returns the SealArenas still to send. The one
        path by which this client writes objects into an arena (:meth:`_fill` writes; this
        asks for arenas): the caller holds it (EXCLUSIVE)."""
        msgs: list[msgspec.Struct] = []
        done = self._fill(self._arena_for(node), items, 0, msgs)
        while done < len(items):
            _, data, meta = items[done]
            size = data.data_size if isinstance(data, serialization.Encoded) else len(data)
            arena = yield from self._new_arena(size + len(meta), node, pending=msgs)
            msgs = []
            done = self._fill(arena, items, done, msgs)
        return msgs

    def _arena_for(self, node: int | None) -> Arena | None:
        """The arena to write objects for ``node`` into, if this client has one."""
        arena = self.arena
        if arena is None or arena.node != node or arena.segment not in self.maps.segments:
            return None
        return arena

    def _fill(
        self,
        arena: Arena | None,
        items: Sequence[tuple[bytes, Payload, bytes]],
        start: int,
        msgs: list[msgspec.Struct],
    ) -> int:
        """Write ``items[start:]`` into ``arena`` while they fit, appending their SealArenas
        to ``msgs``; returns the index of the first item not written."""
        if arena is None:
            return start
        batch: list[p.ArenaObject] = []
        mm = self.maps.segments[arena.segment]
        done = start
        for oid, data, meta in items[start:] if start else items:
            obj = _write_one(arena, mm, oid, data, meta)
            if obj is None:
                break
            batch.append(obj)
            done += 1
            if len(batch) == IDS_PER_FRAME:
                msgs.append(self._seal_arena(arena, batch))
                batch = []
        if batch:
            msgs.append(self._seal_arena(arena, batch))
        return done

    def _seal_arena(self, arena: Arena, objects: list[p.ArenaObject]) -> p.SealArena:
        """The message registering ``objects`` written into ``arena``; should it fail, the
        arena is dropped (see :meth:`feed`): its bytes are no longer written."""
        seq = self.next_seq()
        self.inbox.expect_seal(seq, arena.grant)
        return p.SealArena(seq, arena.grant, objects)

    def _new_arena(
        self, size: int, node: int | None, pending: list[msgspec.Struct]
    ) -> Generator[Action, Any, Arena]:
        """Ask for a fresh arena, sending ``pending`` messages in the same write."""
        # The coordinator takes back the old arena's tail when it reads this request, whether
        # or not it can grant a new one: never write into the old one again.
        self.arena = None
        capacity = self.info.capacity if self.info is not None else 0
        # room for many objects of this size, but never much of the store
        need = self.align(size) or self.alignment
        room = min(ARENA_OBJECTS * need, max(ARENA_SIZE, capacity // 64))
        msg = p.Arena(
            seq=self.next_seq(), size=max(ARENA_SIZE, room, need), node=node, min_size=need
        )
        reply = yield Call((*pending, msg))
        self.maps.fill(reply.segment, reply.offset, reply.size)  # (its page tables)
        arena = Arena(
            reply.segment,
            reply.offset,
            reply.offset + reply.size,
            reply.offset,
            node,
            reply.grant,
            self.alignment,
        )
        self.arena = arena
        return arena

    def _seal_and_release(self, ids: list[bytes]) -> tuple[p.Seal, p.Release]:
        """What finishes ``create_and_seal``: seal, then drop the creator's reference."""
        return p.Seal(self.next_seq(), ids, ack=False), p.Release(self.next_seq(), ids)

    def get_buffers(
        self,
        object_ids: Iterable[ObjectRef],
        timeout: float | None,
        with_metadata: bool,
        raise_missing: bool,
    ) -> Op:
        return self._get(
            [as_id_bytes(o) for o in object_ids], timeout, with_metadata, raise_missing
        )

    def _get(
        self, ids: list[bytes], timeout: float | None, with_metadata: bool, raise_missing: bool
    ) -> Op:
        check_timeout(timeout)
        if self.gone():
            self.check_connected()  # a dead store's directory and references serve nothing
        if any(self.refs.holds(oid) for oid in ids):
            yield POLL  # take in revocations already sent before serving locally
        get = self.start_get(ids)
        if get.missing:
            locations = self.refs.take_prefetched(get.missing)
            if locations is None and self.maps.reader is not None:
                get.serve(self.take_pinned)
            if locations is None and get.missing:
                locations = []
                for chunk in chunks(get.missing):
                    reply = yield Call((p.Get(seq=self.next_seq(), ids=chunk, timeout=timeout),))
                    locations += reply.results
            if locations is not None:
                get.fill(locations, timeout)
        return get.result(with_metadata, raise_missing=raise_missing)

    def get(
        self, object_ids: Any, timeout: float | None, with_metadata: bool, writable: bool
    ) -> Op:
        ids, single = _id_list(object_ids)
        results = yield from self._get(ids, timeout, with_metadata, True)
        if writable:
            results = self._writable(ids, results, with_metadata)
        return results[0] if single else results

    def get_metadata(self, object_ids: Sequence[ObjectRef], timeout: float | None) -> Op:
        pairs = yield from self.get_buffers(object_ids, timeout, True, True)
        return [bytes(meta) for _, meta in pairs]

    def contains(self, object_id: ObjectRef) -> Op:
        return self.plain(self.contains_call(object_id))

    def contains_call(self, object_id: ObjectRef) -> Plain:
        """``contains(object_id)``, a plain call."""
        return Plain(p.Contains(seq=self.next_seq(), id=as_id_bytes(object_id)), _PRESENT)

    def delete(self, object_ids: ObjectRef | Iterable[ObjectRef]) -> Op:
        ids, _ = _id_list(object_ids)
        deferred: list[bytes] = []
        missing: list[bytes] = []
        for chunk in chunks(ids):
            reply = yield Call((p.Delete(seq=self.next_seq(), ids=chunk),))
            deferred += reply.deferred
            missing += reply.missing
        if missing:
            raise error_for(
                "object_not_found",
                "not found or not sealed: " + ", ".join(m.hex() for m in missing),
            )
        return [ObjectID(d) for d in deferred]

    def list(self) -> Op:
        reply = yield Call((p.List(seq=self.next_seq()),))
        listed = {}
        while True:
            for o in reply.objects:
                listed[ObjectID(o.id)] = {
                    f: getattr(o, f) for f in o.__struct_fields__ if f != "id"
                }
            if not reply.next:
                return listed
            msg = p.List(seq=self.next_seq(), listing=reply.listing, start=reply.next)
            reply = yield Call((msg,))

    def evict(self, nbytes: int) -> Op:
        reply = yield Call((p.Evict(seq=self.next_seq(), nbytes=nbytes),))
        return reply.nbytes

    def stats(self, placement: bool, top_objects: int = 10) -> Op:
        msg = p.Stats(seq=self.next_seq(), placement=placement, top_objects=top_objects)
        reply = yield Call((msg,))
        return reply.stats

    def register_task(self, task_id: str, pid: int, node: int | None, run_id: str) -> Op:
        msg = p.TaskRegister(self.next_seq(), task_id=task_id, pid=pid, node=node, run_id=run_id)
        yield Call((msg,))

    def task_done(self, task_id: str, run_id: str) -> Op:
        yield Call((p.TaskDone(seq=self.next_seq(), task_id=task_id, run_id=run_id),))

    def submit_sample(self, task_id: str, sample: Any, run_id: str) -> Op:
        data = msgspec.to_builtins(sample)
        yield Call((p.SubmitSample(self.next_seq(), task_id=task_id, sample=data, run_id=run_id),))

    def flush(self) -> Op:
        self.refs.drop_cache()
        yield Call((p.Sync(seq=self.next_seq()),))
        self.check_usable()

    def subscribe(self, with_locations: bool) -> Op:
        yield Call((p.Subscribe(seq=self.next_seq(), with_locations=with_locations),))

    def run_call(self, run_id: str, payload: Any) -> Op:
        reply = yield Call((p.RunCall(seq=self.next_seq(), run_id=run_id, payload=payload),))
        return reply.payload

    def register_run(self, run_id: str) -> Op:
        yield Call((p.RunRegister(seq=self.next_seq(), run_id=run_id),))

    def respond(
        self, request: p.RunRequest, payload: Any = None, code: str | None = None, message: str = ""
    ) -> Op:
        msg = p.RunRespond(
            seq=self.next_seq(),
            request=request.request,
            payload=payload,
            code=code,
            message=message[: p.MAX_STRING],
        )
        yield Send((msg,))

    def put_replicated(
        self, value: Any, object_id: ObjectRef | None, node: Node, replicas: Iterable[int]
    ) -> Op:
        oid = yield from self.put(value, object_id, node)
        yield from self.replicate(oid, replicas)  # (after the seal: requests keep their order)
        return oid

    def put(self, value: Any, object_id: ObjectRef | None, node: Node) -> Op:
        oid = ObjectID(as_id_bytes(object_id)) if object_id is not None else ObjectID.from_random()
        enc = serialization.encode(value)
        size = enc.data_size + len(enc.metadata)
        one, interleave = placement(node)
        if size <= ARENA_OBJECT_LIMIT and interleave is None:  # straight into the arena
            if self.concurrent:
                yield EXCLUSIVE
            seals = yield from self._write_arena([(oid.binary(), enc, enc.metadata)], one)
            yield Send(tuple(seals))
            return oid
        loc = yield from self._create(oid, enc.data_size, enc.metadata, node, 0.0)
        view = self.maps.write_object(loc, enc.metadata)
        enc.write(view, self.copier(loc))
        view.release()
        yield Send(self._seal_and_release([oid.binary()]))
        return oid


class PendingGet:
    """Views of a get being assembled: local ones first, then what the coordinator sent."""

    def __init__(self, state: ClientCore, ids: list[bytes], views: list[Views | None]) -> None:
        self._state = state
        self._ids = ids
        self._views = views
        self._wanted = [i for i, v in enumerate(views) if v is None]
        self.missing = [ids[i] for i in self._wanted]  # ids to ask the coordinator for
        self._failure: PlasmaError | None = None

    def serve(self, local: Callable[[bytes], Views | None]) -> None:
        """Fill in what ``local`` (the directory) has; ``missing`` is what is left."""
        wanted = []
        for i in self._wanted:
            views = local(self._ids[i])
            if views is None:
                wanted.append(i)
            else:
                self._views[i] = views
        self._wanted = wanted
        self.missing = [self._ids[i] for i in wanted]

    def fill(self, locations: list[p.ObjectLocation | str], timeout: float | None) -> None:
        for i, loc in zip(self._wanted, locations, strict=True):
            if isinstance(loc, str):
                if self._failure is None:
                    what = (
                        f"object {self._ids[i].hex()} is not available ({loc}, timeout={timeout})"
                    )
                    self._failure = error_for(loc, what)
            else:
                self._views[i] = self._state.refs.readable(self._ids[i], loc)

    def result(self, with_metadata: bool, *, raise_missing: bool) -> list[Any]:
        """Data views (or (data, metadata) pairs), None where unavailable; or raise for the
        first unavailable id, dropping the views so their references go back."""
        views = self._views
        if self._failure is not None and raise_missing:
            views.clear()
            raise self._failure
        return [v if v is None or with_metadata else v[0] for v in views]
