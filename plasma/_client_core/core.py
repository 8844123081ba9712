"""The client core (internal): one sans-I/O state machine that both clients drive.

It numbers and checks requests, chunks id lists, decodes reply frames, maps each segment
once (through :mod:`plasma.linux.memfd`), builds zero-copy views of objects, keeps the
references (views, the release-delay cache, subscription prefetches, revocations), the
small-object arena and deferred errors, and implements every client call once, as a
generator of actions (:data:`Action`): the blocking client (:mod:`plasma.client`) and the trio
client (:mod:`plasma.aio`) only carry out those actions, sending and receiving bytes and
descriptors. A feature written here is a feature of both clients.

An operation yields ``Call(msgs)`` (send ``msgs``, resume with the reply to the last one, or
with its error thrown in), ``Send(msgs)`` (send, do not wait), ``POLL`` (take in what the
coordinator pushed already, without blocking: the blocking client reads only when asked)
and ``EXCLUSIVE`` (no other operation that writes into the arena may run until this one
ends; asked only of a driver that runs operations concurrently).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import mmap
import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, get_args

import msgspec
import numpy as np

from plasma import parallel_copy, serialization
from plasma import protocol as p
from plasma._client_core.fast_path import pin_from_directory
from plasma._client_core.outbox import IDS_PER_FRAME, Outbox, chunks
from plasma.directory import ORDERED_MEMORY, DirectoryReader, Found, PinTable
from plasma.errors import BadRequest, Disconnected, PlasmaError, error_for
from plasma.ids import ID_SIZE, ObjectID, as_id_bytes
from plasma.linux.memfd import map_segment, populate_range

ObjectRef = ObjectID | bytes

# replies such as a full List can be large; requests are capped by the coordinator
REPLY_MAX_FRAME = 1 << 30
RECV_SIZE = 256 * 1024
# Objects up to ARENA_OBJECT_LIMIT bytes (data + metadata) are written into a range of a
# segment the client reserved in advance (its arena): ARENA_SIZE at least, room for
# ARENA_OBJECTS objects of the size at hand, but at most 1/64 of the store.
ARENA_SIZE = 1 << 20
ARENA_OBJECTS = 16
ARENA_OBJECT_LIMIT = 1 << 20
# Released objects whose reference a client keeps, so getting them again needs no round trip
# (as Arrow Plasma's release_delay); dropped on flush(), close() and when revoked by a delete.
# At most RELEASE_DELAY objects and RELEASE_DELAY_BYTES bytes (and 1/32 of the store), so
# that a client never keeps much memory from eviction; all of it goes back when the
# coordinator, short of memory, sends Reclaim.
RELEASE_DELAY = 64
RELEASE_DELAY_BYTES = 64 << 20
RELEASE_DELAY_SHARE = 32
# A get served without a request (through the directory, or of an object the client holds)
# looks at the socket for a hang-up (one poll(2)) at most this often: a client serves
# nothing more later than this after its coordinator hung up (a request learns at once).
HANGUP_CHECK_INTERVAL = 0.001
_monotonic = time.monotonic  # (the vDSO's clock: no syscall)
MAX_DEFERRED_ERRORS = 64  # kept one by one; beyond, only counted
MAX_ARENA_SEALS = 4096  # SealArenas remembered until answered (an older one's failure is missed)
# A segment first received to write into is mapped with its page tables filled in, so a put
# writes at memcpy speed; one received to read from is mapped lazily (a reader of one object
# need not pay for the whole segment), and a large object created in it later has just its
# own range populated.
POPULATE_OBJECT_MIN = 1 << 20


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


POLL = "poll"  # take in pushed messages already received, without blocking
EXCLUSIVE = "exclusive"  # hold this client's arena until the operation ends
Action = Call | Send | str
Op = Generator[Action, Any, Any]


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` if it is None or finite seconds >= 0; else BadRequest (a ValueError)."""
    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise BadRequest(f"timeout must be None or finite seconds >= 0, got {timeout!r}")
    return timeout


_WRITE_REPLIES = (p.Created, p.ArenaGranted)
# replies that are only handed to their caller: nothing to map, queue or answer
_PLAIN_REPLIES = frozenset(
    kind
    for kind in get_args(p.Reply)
    if not {"segments", "tables"} & set(kind.__struct_fields__)
    and kind not in (p.Notification, p.RunRequest, p.Revoked, p.Reclaim, p.SegmentsDropped)
)


def _size(loc: p.ObjectLocation) -> int:
    return loc.data_size + loc.metadata_size


def _id_list(object_ids: ObjectRef | Iterable[ObjectRef]) -> tuple[list[bytes], bool]:
    """The ids as bytes, and whether a single id (not a sequence) was given."""
    if isinstance(object_ids, (ObjectID, bytes)):
        return [as_id_bytes(object_ids)], True
    return [as_id_bytes(o) for o in object_ids], False


@dataclass(slots=True)
class _Held:
    """An object this client holds one reference to: a coordinator reference, or a pin
    (``pin`` >= 0, its pin-table entry; ``found`` the directory read it was taken on)."""

    loc: p.ObjectLocation
    views: int = 1
    revoked: bool = False
    pin: int = -1
    found: Found | None = None


def _keep_until_called(*kept: object) -> None:
    """A finalizer that does nothing: its arguments live as long as what it watches."""


@dataclass(slots=True)
class _Creation:
    """An object this client made with ``create``, whose creator reference it still holds:
    released once the object is sealed and no view of its buffer is left."""

    buffer_alive: bool = True
    sealed: bool = False


# Ids whose creator reference went with its buffer, remembered (the newest ones) so that an
# explicit release of one afterwards is not a second release.
MAX_AUTO_RELEASED = 1 << 16


# Cores of this process, told when it forks: the child must not touch the parent's pins.
_CORES: weakref.WeakSet[ClientCore] = weakref.WeakSet()


def _hangup_poller(fd: int) -> select.poll:
    """A poll object that reports only the peer hanging up on socket ``fd``, or the socket
    breaking: unread bytes do not count (POLLHUP and POLLERR are always reported)."""
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP)
    return poller


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


def write_payload(mm: mmap.mmap, offset: int, data: Payload, dlen: int, metadata: bytes) -> None:
    """Write an object (``dlen`` bytes of ``data``, then ``metadata``) at ``offset``."""
    if isinstance(data, serialization.Encoded):
        with memoryview(mm)[offset : offset + dlen] as view:
            data.write(view)
    else:
        mm[offset : offset + dlen] = data
    if metadata:
        mm[offset + dlen : offset + dlen + len(metadata)] = metadata


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
        self.decoder = p.FrameDecoder(p.Reply, REPLY_MAX_FRAME)
        self.info: p.Connected | None = None
        self.alignment = 64  # what the coordinator aligns objects to (Connected.alignment)
        self.maps: dict[int, mmap.mmap] = {}
        self.notifications: collections.deque[p.Notification] = collections.deque()
        self.run_requests: collections.deque[p.RunRequest] = collections.deque()
        self.deferred_errors: list[PlasmaError] = []
        self.deferred_dropped = 0
        self.arena: Arena | None = None
        self.prefetched: dict[bytes, list[p.ObjectLocation]] = {}
        # objects we hold one reference to: with live views (held) or recently released
        # (cache, oldest first, at most release_delay; revoked when someone deletes them)
        self.held: dict[bytes, _Held] = {}
        self.cache: dict[bytes, _Held] = {}
        self.cache_bytes = 0
        self.cache_limit = RELEASE_DELAY_BYTES  # lowered by connected() for small stores
        self.release_delay = release_delay
        # why the connection is gone (the coordinator's last word, or Disconnected): once
        # set, every call raises it, gets the directory could serve included
        self.fatal: PlasmaError | None = None
        # the socket hung_up() looks at (-1: none) and the poll object that looks
        self._socket_fd = -1
        self._poller = select.poll()
        self.next_hangup_check = 0.0  # (time.monotonic()) when a directory get looks again
        self.reclaim_requested = False  # a Reclaim arrived: answer with reclaim_messages()
        self._held_lock = threading.RLock()  # finalizers may run on any thread
        # one receive buffer for the connection's life: a fresh 256 KiB bytes object per recv
        # would cost an mmap/munmap and page faults on every reply
        self.recv_view = memoryview(bytearray(RECV_SIZE))
        self._fds: collections.deque[int] = collections.deque()
        self._lazy: set[int] = set()  # segments mapped without MAP_POPULATE
        # a descriptor of each mapped segment (read-only where our uid may only read) and its
        # page size: what a writable get maps privately (copy-on-write) from
        self._segment_fds: dict[int, tuple[int, int]] = {}
        # the arrays behind live views: id of a weak reference -> (it, the object's id)
        self._owners: dict[int, tuple[weakref.ref[np.ndarray], bytes]] = {}
        # objects created here whose creator reference is still held, the arrays behind
        # their create buffers, and the ids whose creator reference went with its buffer
        self._creations: dict[bytes, _Creation] = {}
        self._create_owners: dict[int, tuple[weakref.ref[np.ndarray], bytes, _Creation]] = {}
        self._auto_released: dict[bytes, None] = {}
        # requests whose caller went away (a cancelled trio task): seq -> the request, so the
        # references or objects its reply brings are handed back
        self._abandoned: dict[int, msgspec.Struct] = {}
        # SealArena messages whose answer may still come (they are sent without waiting):
        # seq -> arena grant, oldest first; a later reply means every earlier one was handled
        self._arena_seals: dict[int, int] = {}
        # reads without requests: the directory (read-only) and this client's pin table
        self.reader: DirectoryReader | None = None
        self.pins: PinTable | None = None
        self._table_maps: list[mmap.mmap] = []  # directory and access bytes
        self._pin_map: mmap.mmap | None = None
        # the directory we map was superseded and the current one asked for (the outbox
        # sends the request once): until the answer comes
        self._tables_asked = False
        self.pid = os.getpid()
        self.forked_from: int | None = None  # set in a forked child: this client is not its
        _CORES.add(self)

    # ---------------------------------------------------------------- outgoing

    def frames(self, *msgs: msgspec.Struct) -> bytes:
        """Encoded frames for ``msgs``, preceded by what is queued (see :class:`Outbox`)."""
        return self.outbox.frames(*msgs)

    def _nobodys(self, msg: p.Abort | p.ReturnArena) -> None:
        self._abandoned[msg.seq] = msg  # its answer, if any, concerns nobody

    def connect_request(self, client_name: str, cpus: list[int]) -> p.Connect:
        return p.Connect(
            seq=self.next_seq(),
            protocol_version=p.PROTOCOL_VERSION,
            client_name=client_name,
            cpus=cpus,
        )

    def connected(self, reply: p.Connected) -> None:
        """Take in the coordinator's answer to Connect."""
        self.info = reply
        self.alignment = reply.alignment
        self.node_cpus = {node.id: node.cpus for node in reply.nodes}
        self.cache_limit = min(RELEASE_DELAY_BYTES, reply.capacity // RELEASE_DELAY_SHARE)

    def align(self, n: int) -> int:
        """``n`` rounded up to the coordinator's alignment."""
        mask = self.alignment - 1
        return (n + mask) & ~mask

    def reclaim_messages(self) -> list[msgspec.Struct]:
        """The answer to a Reclaim: every cached reference is released (with the next frames)
        and the arena given back; the next small put asks for a new one."""
        self.reclaim_requested = False
        self.drop_cache()
        arena, self.arena = self.arena, None
        if arena is None:
            return []
        return [p.ReturnArena(seq=self.next_seq(), grant=arena.grant)]

    def closing_frames(self) -> bytes:
        """What to send before closing: the releases still queued (cached ones included)."""
        self.drop_cache()
        return self.outbox.frames() if self.outbox.queued() else b""

    def abandon(self, msg: msgspec.Struct) -> None:
        """The caller of ``msg`` will not read its reply: give back what the reply brings."""
        if isinstance(msg, (p.Get, p.Create, p.CreateMany, p.Arena)):
            self._abandoned[msg.seq] = msg

    def take_deferred_error(self) -> PlasmaError | None:
        """An error of an earlier request sent without waiting, to raise now (the count of
        those beyond ``MAX_DEFERRED_ERRORS`` comes with the last one kept)."""
        if not self.deferred_errors:
            return None
        err = self.deferred_errors.pop(0)
        if not self.deferred_errors and self.deferred_dropped:
            err = type(err)(f"{err.message} (and {self.deferred_dropped} more errors)")
            self.deferred_dropped = 0
        return err

    def forked(self) -> None:
        """This process is a fork of the one that connected: never touch the connection or
        the pins again (they are the parent's); every call raises."""
        self.forked_from = self.pid
        self.pid = os.getpid()
        self.reader = None
        self.pins = None

    def check_process(self) -> None:
        """Raise in a forked child: the connection and its pins belong to the parent."""
        if self.forked_from is not None:
            raise PlasmaError(
                f"this client was connected by process {self.forked_from}; a forked child "
                f"(process {self.pid}) must connect its own client"
            )

    def watch(self, fd: int) -> None:
        """The driver's socket: before serving anything without a request, the core looks
        (one poll(2), nothing read) whether the coordinator hung up."""
        self._socket_fd = fd
        self._poller = _hangup_poller(fd)

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
            self.reader = None  # (the pin table stays: views that die still unpin)

    def gone(self) -> bool:
        """:meth:`hung_up`, for what is served without a request: it looks at the socket at
        most every HANGUP_CHECK_INTERVAL (between looks it costs a read of the clock, the
        vDSO's: no syscall)."""
        return self.fatal is not None or (_monotonic() >= self.next_hangup_check and self._look())

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
        err = self.take_deferred_error()
        if err is not None:
            raise err

    # ---------------------------------------------------------------- incoming

    def feed(self, data: bytes | memoryview, fds: list[int]) -> list[Any]:
        """Decode received bytes; returns replies to requests (pushes are queued here)."""
        if fds:
            self._fds.extend(fds)
        replies = []
        for msg in self.decoder.feed_messages(data):
            if self._arena_seals and msg.seq:
                self._arena_sealed(msg)
            if type(msg) in _PLAIN_REPLIES:
                replies.append(msg)
                continue
            segments = getattr(msg, "segments", None)
            if segments:
                self._map_segments(segments, for_writing=isinstance(msg, _WRITE_REPLIES))
            tables = getattr(msg, "tables", None)
            if tables is not None:  # Connected, TablesMoved: their fds come first
                self._map_tables(tables)
            if isinstance(msg, p.TablesMoved):
                self._tables_asked = False
            if isinstance(msg, p.Notification):
                if msg.location is not None:
                    self.prefetched.setdefault(msg.id, []).append(msg.location)
                self.notifications.append(msg)
            elif isinstance(msg, p.RunRequest):
                self.run_requests.append(msg)
            elif isinstance(msg, p.Revoked):
                self.revoke(msg.ids)
            elif isinstance(msg, p.Reclaim):
                self.reclaim_requested = True
            elif isinstance(msg, p.SegmentsDropped):
                self._unmap(msg.ids)
            else:
                replies.append(msg)
        return replies

    def _arena_sealed(self, reply: Any) -> None:
        """Forget the SealArenas answered by now; one that failed drops its arena (given
        back with the next frames): what the store and this client think of it may differ,
        so write there no more."""
        seals = self._arena_seals
        if isinstance(reply, p.Error) and reply.seq in seals:
            grant = seals[reply.seq]
            if self.arena is not None and self.arena.grant == grant:
                self.arena = None
                self.outbox.cleanup.append(p.ReturnArena(seq=0, grant=grant))
        while seals and next(iter(seals)) <= reply.seq:
            del seals[next(iter(seals))]

    def _unmap(self, segments: list[int]) -> None:
        """The coordinator dropped these segments: unmap them (no view can be left: views
        hold references, and a segment with a referenced object is not dropped)."""
        for segment in segments:
            mm = self.maps.pop(segment, None)
            self._lazy.discard(segment)
            self._close_segment_fd(segment)
            if mm is not None:
                with contextlib.suppress(BufferError):  # (then unmapped when the view goes)
                    mm.close()

    def _close_segment_fd(self, segment: int) -> None:
        kept = self._segment_fds.pop(segment, None)
        if kept is not None:
            with contextlib.suppress(OSError):
                os.close(kept[0])

    def next_notification(self) -> p.Notification:
        """The oldest notification received; PlasmaError when it says the subscription ended
        because this client fell behind."""
        note = self.notifications.popleft()
        if note.kind == "overflow":
            raise PlasmaError(
                f"the subscription ended: {note.data_size} bytes of notifications were left "
                "unread (read them faster, or subscribe again)"
            )
        return note

    def unexpected(self, reply: Any) -> None:
        """A reply nobody waits for: an Error of a request sent without waiting, or (``seq``
        0) the coordinator's reason for closing the connection, or the reply to an abandoned
        request, whose references and objects go back."""
        abandoned = self._abandoned.pop(reply.seq, None) if reply.seq else None
        if abandoned is not None:
            self._give_back(abandoned, reply)
        elif isinstance(reply, p.Error):
            err = error_for(reply.code, reply.message)
            if reply.seq == 0:  # (its reason beats a hang-up seen on the socket before)
                if isinstance(self.fatal, Disconnected):
                    self.fatal = None
                self.disconnected(err)
            elif len(self.deferred_errors) < MAX_DEFERRED_ERRORS:
                self.deferred_errors.append(err)
            else:
                self.deferred_dropped += 1

    def _give_back(self, request: Any, reply: Any) -> None:
        if isinstance(reply, p.Got):
            for oid, result in zip(request.ids, reply.results, strict=True):
                if isinstance(result, p.ObjectLocation):
                    self.outbox.releases.append(oid)
        elif isinstance(reply, p.Created):  # queued as aborts of the objects made for nobody
            ids = [request.id] if isinstance(request, p.Create) else [i.id for i in request.items]
            self.outbox.cleanup.extend(p.Abort(seq=0, id=oid) for oid in ids)
        elif isinstance(reply, p.ArenaGranted):  # an arena granted to nobody
            self.outbox.cleanup.append(p.ReturnArena(seq=0, grant=reply.grant))

    def _map_segments(self, segments: list[p.SegmentInfo], *, for_writing: bool) -> None:
        """Map each segment from its fd: read-only where the coordinator sent a read-only fd
        (this client's uid may only read)."""
        for info in segments:
            if not self._fds:
                raise PlasmaError(f"segment {info.id} arrived without its file descriptor")
            fd = self._fds.popleft()
            self._close_segment_fd(info.id)
            with contextlib.suppress(OSError):  # (none: a writable get copies instead)
                self._segment_fds[info.id] = (os.dup(fd), info.page_size)
            self.maps[info.id] = map_segment(
                fd, info.size, writable=info.writable, populate=for_writing
            )
            if not for_writing:
                self._lazy.add(info.id)

    def _map_tables(self, tables: p.TablesInfo) -> None:
        """Map the directory (and access bytes, and the pin table when sent) from their fds,
        replacing the directory mapped before. One that cannot be read leaves this client
        reading through requests."""
        sizes = [tables.directory_size, tables.access_size, tables.pin_size]
        if len(self._fds) < sum(1 for s in sizes if s):
            raise PlasmaError("the directory arrived without its file descriptors")
        maps = [
            map_segment(self._fds.popleft(), size, writable=i > 0, populate=i == 2)
            if size
            else None
            for i, size in enumerate(sizes)
        ]
        directory, access, pins = maps
        assert directory is not None
        self._install_tables(directory, access, pins)

    def _install_tables(self, directory: Any, access: Any, pins: Any) -> None:
        """Read through ``directory`` (and ``access``, ``pins`` when given) from now on."""
        try:
            reader = DirectoryReader(directory, access) if ORDERED_MEMORY else None
        except ValueError:  # a layout this client does not know: requests it is
            reader = None
        with self._held_lock:  # (no other thread is in the middle of a fast get)
            old = self._table_maps
            self.reader = reader
            self._table_maps = [m for m in (directory, access) if m is not None]
            for mm in old:
                with contextlib.suppress(BufferError):
                    mm.close()
            if pins is not None:
                self._pin_map = pins
                self.pins = PinTable(pins)

    def get_pinned(
        self, object_ids: Any, timeout: float | None, with_metadata: bool, writable: bool = False
    ) -> Any | None:
        """What ``get`` of one id returns, when the directory serves it at once (no I/O, so
        no operation to drive); None otherwise (run :meth:`get`, which raises if the
        connection is gone). The fast path of both clients' ``get``."""
        # (inlined gone(): between looks, one read of the clock; fatal empties the reader)
        if self.reader is None or (_monotonic() >= self.next_hangup_check and self._look()):
            return None  # (get raises it)
        kind = type(object_ids)
        if kind is ObjectID:
            oid = object_ids.binary()
        elif kind is bytes and len(object_ids) == ID_SIZE:
            oid = object_ids
        else:
            return None
        if oid in self.held or oid in self.cache:
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
        (:func:`~plasma._client_core.fast_path.pin_from_directory`), with no request; None
        when the directory cannot serve it (ask the coordinator). The lock keeps another
        thread from replacing the directory's maps meanwhile."""
        with self._held_lock:
            reader, pins = self.reader, self.pins
            if reader is None or pins is None:
                return None
            if oid in self.held or oid in self.cache:
                return None  # held already (another thread got it meanwhile): reuse that one
            info = self.info
            node = info.node if info is not None else None
            pinned = pin_from_directory(reader, pins, self.maps, oid, node)
            if pinned is None:
                self._check_superseded(reader)
                return None
            found, index = pinned
            self.held[oid] = _Held(found.location, pin=index, found=found)
            return self._views(oid, found.location)

    def _check_superseded(self, reader: DirectoryReader) -> None:
        """Ask for the current directory (once) when ``reader``'s was replaced."""
        if not self._tables_asked and reader.superseded:
            self._tables_asked = True
            self.outbox.tables_wanted = reader.token

    def _let_go(self, oid: bytes, held: _Held) -> None:
        """Give up the reference ``held`` stands for: clear its pin (telling the coordinator
        when the object is dying, so its delete finishes now), or release it."""
        if held.pin < 0:
            self.outbox.releases.append(oid)
            return
        pins, reader = self.pins, self.reader
        if pins is None:  # forked child: the pin table is the parent's
            return
        pins.unpin(held.pin)
        if held.found is not None and reader is not None and reader.dying(held.found):
            self.outbox.unpins.append(oid)

    # ---------------------------------------------------------------- views

    def write_object(self, loc: p.ObjectLocation, metadata: bytes) -> memoryview:
        """The writable data view of a created object, its metadata already in place."""
        mm = self.maps[loc.segment]
        if loc.segment in self._lazy and loc.data_size >= POPULATE_OBJECT_MIN:
            populate_range(mm, loc.offset, loc.data_size)
        if metadata:
            start = loc.offset + loc.data_size
            mm[start : start + len(metadata)] = metadata
        return memoryview(mm)[loc.offset : loc.offset + loc.data_size]

    def copier(self, loc: p.ObjectLocation) -> serialization.Copy:
        """How to fill a created object: in ``copy_threads`` threads on its node's CPUs."""
        return functools.partial(
            parallel_copy.copy, threads=self.copy_threads, cpus=self.node_cpus.get(loc.node, ())
        )

    def readable(self, oid: bytes, loc: p.ObjectLocation) -> tuple[memoryview, memoryview]:
        """Read-only (data, metadata) views of an object for which the coordinator gave us a
        reference. While views of it are alive the client holds exactly one reference: a
        second reference (from a concurrent get) is handed back at once.
        """
        with self._held_lock:
            held = self.held.get(oid)
            if held is None:
                self.held[oid] = _Held(loc)
            else:
                held.views += 1
                self.outbox.releases.append(oid)
            return self._views(oid, loc)

    def reuse(self, oid: bytes) -> tuple[memoryview, memoryview] | None:
        """Views of an object this client holds (in use or recently released and cached),
        with no round trip; else None."""
        with self._held_lock:
            held = self.held.get(oid)
            if held is None:
                held = self.cache.pop(oid, None)
                if held is None:
                    return None
                self.cache_bytes -= _size(held.loc)
                self.held[oid] = held
            elif held.revoked:
                return None
            held.views += 1
            return self._views(oid, held.loc)

    def start_get(self, ids: list[bytes]) -> PendingGet:
        """A get of ``ids`` with the objects this client holds already filled in."""
        return PendingGet(self, ids, [self.reuse(oid) for oid in ids])

    def take_prefetched(self, ids: list[bytes]) -> list[p.ObjectLocation | str] | None:
        """Locations handed over by a with_locations subscription (a reference each), when
        there is one for every id: no round trip needed."""
        prefetched = self.prefetched
        if not prefetched or any(not prefetched.get(oid) for oid in ids):
            return None
        locations: list[p.ObjectLocation | str] = []
        for oid in ids:
            locations.append(prefetched[oid].pop())
            if not prefetched[oid]:
                del prefetched[oid]
        return locations

    def revoke(self, ids: list[bytes]) -> None:
        """The coordinator waits for our references to these to delete them."""
        with self._held_lock:
            for oid in ids:
                held = self.cache.pop(oid, None)
                if held is not None:
                    self.cache_bytes -= _size(held.loc)
                    self._let_go(oid, held)
                elif oid in self.held:
                    self.held[oid].revoked = True

    def drop_cache(self) -> None:
        """Release every cached (unused) reference with the next message."""
        with self._held_lock:
            for oid, held in self.cache.items():
                self._let_go(oid, held)
            self.cache.clear()
            self.cache_bytes = 0

    def _views(self, oid: bytes, loc: p.ObjectLocation) -> tuple[memoryview, memoryview]:
        total = loc.data_size + loc.metadata_size
        owner = np.frombuffer(
            self.maps[loc.segment], np.uint8, count=max(total, 1), offset=loc.offset
        )
        owner.flags.writeable = False
        # when ``owner`` dies, the weak reference calls back (on whatever thread collects it)
        ref = weakref.ref(owner, self._owner_died)
        self._owners[id(ref)] = (ref, oid)
        view = owner.data  # a memoryview that keeps ``owner`` alive
        return view[: loc.data_size], view[loc.data_size : total]

    def private_view(self, oid: bytes, data: memoryview) -> memoryview:
        """A writable copy-on-write view of the data of object ``oid``, of which ``data`` is
        the read-only view a get returned: a private mapping (MAP_PRIVATE, PROT_READ |
        PROT_WRITE) of the pages covering it, from the segment's descriptor (allowed on a
        read-only one too). Writes go to pages of this process only: the store's bytes never
        change. Pages not written yet are the segment's, so the object must not go: the view
        keeps ``data`` (and with it this client's reference) alive until it dies. Where no
        private mapping can be made (no descriptor, hugepages short), a copy."""
        size = len(data)
        with self._held_lock:
            held = self.held.get(oid)
            loc = held.loc if held is not None else None
            kept = self._segment_fds.get(loc.segment) if loc is not None else None
            if loc is None or kept is None:
                return memoryview(bytearray(data))
            fd, page = kept
            start = loc.offset - loc.offset % page
            try:
                mm = mmap.mmap(
                    fd,
                    loc.offset - start + max(size, 1),
                    mmap.MAP_PRIVATE,
                    mmap.PROT_READ | mmap.PROT_WRITE,
                    offset=start,
                )
            except OSError:
                return memoryview(bytearray(data))
        owner = np.frombuffer(mm, np.uint8, count=max(size, 1), offset=loc.offset - start)
        weakref.finalize(owner, _keep_until_called, data)
        return owner.data[:size]

    def _writable(self, ids: list[bytes], results: list[Any], with_metadata: bool) -> list[Any]:
        """``results`` of a get of ``ids`` with each data view made a private writable one
        (:meth:`private_view`); metadata stays read-only."""
        out: list[Any] = []
        for oid, got in zip(ids, results, strict=True):
            if with_metadata:
                out.append((self.private_view(oid, got[0]), got[1]))
            else:
                out.append(self.private_view(oid, got))
        return out

    def value(
        self, object_id: ObjectRef, data: memoryview, meta: memoryview, writable: bool
    ) -> Any:
        """What ``get_object`` returns for the views of an object: a read-only view of it,
        or with ``writable`` a copy-on-write one the caller may modify."""
        if not writable:
            return serialization.decode(data, meta)
        private = self.private_view(as_id_bytes(object_id), data)
        return serialization.decode(private, meta, writable=True)

    def _owner_died(self, ref: weakref.ref[np.ndarray]) -> None:
        entry = self._owners.pop(id(ref), None)
        if entry is not None:
            self._drop_view(entry[1])

    def _drop_view(self, oid: bytes) -> None:
        """Finalizer of a view owner (any thread, any time): when the last view of an object
        goes, keep its reference in the release-delay cache (releasing the oldest ones beyond
        ``release_delay`` objects or ``cache_limit`` bytes) or release it."""
        if self.forked_from is not None:
            return  # a forked child's copies of the parent's views: not this process's
        with self._held_lock:
            held = self.held.get(oid)
            if held is None:
                return
            held.views -= 1
            if held.views:
                return
            del self.held[oid]
            if held.revoked or not self.release_delay:
                self._let_go(oid, held)
                return
            self.cache[oid] = held
            self.cache_bytes += _size(held.loc)
            cache = self.cache
            while len(cache) > self.release_delay or self.cache_bytes > self.cache_limit:
                oldest = next(iter(cache))
                old = cache.pop(oldest)
                self.cache_bytes -= _size(old.loc)
                self._let_go(oldest, old)

    def close_maps(self) -> None:
        self.reader = None
        self._socket_fd = -1  # (the socket is closed: its number may be reused)
        self.pins = None
        maps = [*self.maps.values(), *self._table_maps]
        if self._pin_map is not None:
            maps.append(self._pin_map)
        for mm in maps:
            with contextlib.suppress(BufferError):  # views still alive: unmapped when they go
                mm.close()
        for segment in list(self._segment_fds):
            self._close_segment_fd(segment)
        self.maps.clear()
        self._table_maps = []
        self._pin_map = None

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
        self.write_object(loc, metadata).release()  # (populates, writes the metadata)
        return self._create_buffer(as_id_bytes(object_id), loc)

    def _create_buffer(self, oid: bytes, loc: p.ObjectLocation) -> memoryview:
        """The writable buffer ``create`` returns: the creator reference follows it, as a
        reader's follows its views. Once the object is sealed and no view of the buffer is
        left, the reference is released (see :meth:`_sealed` and :meth:`release`)."""
        owner = np.frombuffer(
            self.maps[loc.segment], np.uint8, count=max(loc.data_size, 1), offset=loc.offset
        )
        creation = _Creation()
        ref = weakref.ref(owner, self._create_buffer_died)
        with self._held_lock:
            self._creations[oid] = creation
            self._auto_released.pop(oid, None)
            self._create_owners[id(ref)] = (ref, oid, creation)
        return owner.data[: loc.data_size]

    def _create_buffer_died(self, ref: weakref.ref[np.ndarray]) -> None:
        """Finalizer of a create buffer (any thread, any time)."""
        entry = self._create_owners.pop(id(ref), None)
        if entry is None or self.forked_from is not None:
            return
        _, oid, creation = entry
        with self._held_lock:
            creation.buffer_alive = False
            if creation.sealed and self._creations.get(oid) is creation:
                self._release_creator(oid)

    def _sealed(self, oid: bytes) -> None:
        """``oid`` was sealed (its Seal is sent): its creator reference goes now if no view
        of its create buffer is left, else when the last one dies."""
        with self._held_lock:
            creation = self._creations.get(oid)
            if creation is None or creation.sealed:
                return
            creation.sealed = True
            if not creation.buffer_alive:
                self._release_creator(oid)

    def _release_creator(self, oid: bytes) -> None:
        """Release the creator reference of ``oid`` with the next frames (after its Seal)."""
        del self._creations[oid]
        self.outbox.releases.append(oid)
        released = self._auto_released
        released[oid] = None
        while len(released) > MAX_AUTO_RELEASED:
            del released[next(iter(released))]

    def holds_creator_reference(self, object_id: ObjectRef) -> bool:
        """True while this client holds the creator reference of a sealed object it made
        with ``create`` (its buffer still alive): what an explicit ``release`` drops."""
        creation = self._creations.get(as_id_bytes(object_id))
        return creation is not None and creation.sealed

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
        oid = as_id_bytes(object_id)
        msg = p.Seal(seq=self.next_seq(), ids=[oid], ack=wait)
        if not wait:
            yield Send((msg,))
            self._sealed(oid)
            return
        yield Call((msg,))
        self._sealed(oid)
        self.check_usable()  # an error of an earlier call sent without waiting

    def abort(self, object_id: ObjectRef) -> Op:
        oid = as_id_bytes(object_id)
        yield Call((p.Abort(seq=self.next_seq(), id=oid),))
        with self._held_lock:  # (the object and the creator reference are gone)
            self._creations.pop(oid, None)

    def release(self, object_id: ObjectRef) -> Op:
        oid = as_id_bytes(object_id)
        prefetched = self.prefetched.get(oid)
        if prefetched:
            prefetched.pop()
            if not prefetched:
                del self.prefetched[oid]
        else:
            with self._held_lock:
                creation = self._creations.get(oid)
                if creation is not None and creation.sealed:
                    del self._creations[oid]  # released now: not again when the buffer goes
                elif creation is None and oid in self._auto_released:
                    del self._auto_released[oid]
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
        seals = yield from self._write_arena([(oid, data, metadata)], node)
        yield Send(tuple(seals))

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
                self.copier(loc)(self.write_object(loc, meta), data)
            msgs += self._seal_and_release([oid for oid, _, _ in part])
        if msgs:
            yield Send(tuple(msgs))

    def _write_arena(
        self, items: list[tuple[bytes, Payload, bytes]], node: int | None
    ) -> Generator[Action, Any, list[msgspec.Struct]]:
        """Write each ``(id, data, metadata)`` (at most ``ARENA_OBJECT_LIMIT`` bytes) into an
        arena for ``node``, asking for a fresh arena when the current one is full (the seals
        of the old one go with that request); returns the SealArenas still to send. The one
        path by which this client writes objects into an arena: the caller holds it
        (EXCLUSIVE)."""
        msgs: list[msgspec.Struct] = []
        batch: list[p.ArenaObject] = []
        arena = self.arena
        if arena is not None and (arena.node != node or arena.segment not in self.maps):
            arena = None
        for oid, data, meta in items:
            dlen = data.data_size if isinstance(data, serialization.Encoded) else len(data)
            size = dlen + len(meta)
            offset = arena.take(size) if arena is not None else None
            if arena is None or offset is None:
                if arena is not None and batch:
                    msgs.append(self._seal_arena(arena, batch))
                    batch = []
                arena = yield from self._new_arena(size, node, pending=msgs)
                msgs = []
                offset = arena.take(size)
                assert offset is not None
            write_payload(self.maps[arena.segment], offset, data, dlen, meta)
            batch.append(p.ArenaObject(oid, offset, dlen, len(meta)))
            if len(batch) == IDS_PER_FRAME:
                msgs.append(self._seal_arena(arena, batch))
                batch = []
        if batch:
            assert arena is not None
            msgs.append(self._seal_arena(arena, batch))
        return msgs

    def _seal_arena(self, arena: Arena, objects: list[p.ArenaObject]) -> p.SealArena:
        """The message registering ``objects`` written into ``arena``; should it fail, the
        arena is dropped (see :meth:`feed`): its bytes are no longer written."""
        seq = self.next_seq()
        seals = self._arena_seals
        seals[seq] = arena.grant
        if len(seals) > MAX_ARENA_SEALS:
            del seals[next(iter(seals))]
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
        if self.fatal is not None or (_monotonic() >= self.next_hangup_check and self._look()):
            self.check_connected()  # a dead store's directory and references serve nothing
        if any(oid in self.held or oid in self.cache for oid in ids):
            yield POLL  # take in revocations already sent before serving locally
        get = self.start_get(ids)
        if get.missing:
            locations = self.take_prefetched(get.missing)
            if locations is None and self.reader is not None:
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
        reply = yield Call((p.Contains(seq=self.next_seq(), id=as_id_bytes(object_id)),))
        return reply.present

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
        self.drop_cache()
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
        view = self.write_object(loc, enc.metadata)
        enc.write(view, self.copier(loc))
        view.release()
        yield Send(self._seal_and_release([oid.binary()]))
        return oid


Views = tuple[memoryview, memoryview]


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
                self._views[i] = self._state.readable(self._ids[i], loc)

    def result(self, with_metadata: bool, *, raise_missing: bool) -> list[Any]:
        """Data views (or (data, metadata) pairs), None where unavailable; or raise for the
        first unavailable id, dropping the views so their references go back."""
        views = self._views
        if self._failure is not None and raise_missing:
            views.clear()
            raise self._failure
        return [v if v is None or with_metadata else v[0] for v in views]
