"""Wire protocol (internal): msgspec MessagePack messages in little-endian length-prefixed frames.

Every message is a tagged, array-like ``msgspec.Struct`` (the tag is the class name).
Requests carry a ``seq`` that replies echo, so a client may pipeline. A reply that
references a segment the client has not seen yet lists it in ``segments``; the segment
fds travel in the same ``sendmsg`` as SCM_RIGHTS ancillary data, in the same order.

This module is sans-I/O: :class:`FrameDecoder` turns bytes into messages and
:func:`encode` turns a message into one frame; sockets live elsewhere.

Requests are validated as they are decoded: every field of every request has a range or a
length bound (the ``MAX_*`` constants below), so a request that decodes is one the
coordinator can act on without overflowing, spinning or recursing. Replies are decoded
loosely: they come from the coordinator.
"""

from __future__ import annotations

import itertools
import struct
import sys
from typing import Annotated, Any

import msgspec

from plasma.records import MAX_INT as MAX_INT
from plasma.records import (  # the records messages carry, re-exported: p.ObjectLocation, ...
    ArenaObject,
    BoundedInt,
    CreateItem,
    IdBytes,
    NodeInfo,
    ObjectInfo,
    ObjectLocation,
    SegmentInfo,
    TablesInfo,
)

PROTOCOL_VERSION = 2
DEFAULT_MAX_FRAME = 1 << 20
HEADER = struct.Struct("<I")

# ---------------------------------------------------------------- request limits

# MAX_INT (from plasma.records): the largest seq, size, offset, byte count, segment id or
# relay id a request may carry (a signed 64-bit integer, what the store and the kernel
# interfaces below it take).
# The largest NUMA node id a request may name.
MAX_NODE = 65535
# The largest pid ``TaskRegister`` may name (pid_t is a signed 32-bit integer; pids are >= 1).
MAX_PID = 2**31 - 1
# The largest CPU number, and the most CPUs, ``Connect.cpus`` may list.
MAX_CPU = 65535
MAX_CPUS = 65536
# The most characters of a string field (names, task and run ids, error codes and messages).
MAX_STRING = 4096
# The most object ids (or ``CreateMany`` items, or ``SealArena`` objects) in one request; the
# clients send at most ``plasma._client_core.IDS_PER_FRAME`` (16384) per frame.
MAX_IDS_PER_REQUEST = 65536
# The deepest nesting of lists and maps in a free-form payload (``RunCall.payload``,
# ``RunRespond.payload``, ``SubmitSample.sample``), so relaying one never recurses deeply.
MAX_PAYLOAD_DEPTH = 64
# Objects per ``Listing`` page: a listing of a million objects is many requests, so the
# coordinator answers others in between (and no frame grows with the store).
LIST_PAGE = 8192
# Listings a connection may have in progress at once (each holds a snapshot of the ids).
MAX_LISTINGS = 4

_Int = BoundedInt
_Node = Annotated[int, msgspec.Meta(ge=0, le=MAX_NODE)]
_Pid = Annotated[int, msgspec.Meta(ge=1, le=MAX_PID)]
_Cpus = Annotated[
    list[Annotated[int, msgspec.Meta(ge=0, le=MAX_CPU)]], msgspec.Meta(max_length=MAX_CPUS)
]
_Str = Annotated[str, msgspec.Meta(max_length=MAX_STRING)]
_Id = IdBytes
_PER_REQUEST = msgspec.Meta(max_length=MAX_IDS_PER_REQUEST)
_Ids = Annotated[list[_Id], _PER_REQUEST]
# msgspec checks bounds as ``x >= ge and x <= le``, so NaN fails ``ge`` and +inf fails ``le``
_Timeout = Annotated[float, msgspec.Meta(ge=0.0, le=sys.float_info.max)]
_NESTED = (list, dict, tuple)  # what MessagePack arrays, maps and array map keys decode to


def _check_depth(value: Any, field: str) -> None:
    """Raise ValueError if ``value`` nests lists and maps deeper than ``MAX_PAYLOAD_DEPTH``.

    Iterative, level by level, so it cannot recurse however deep ``value`` is.
    """
    level = [value] if type(value) in _NESTED else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_PAYLOAD_DEPTH:
            raise ValueError(f"{field} nests deeper than {MAX_PAYLOAD_DEPTH} levels")
        inner: list[Any] = []
        for v in level:
            items = itertools.chain(v, v.values()) if type(v) is dict else v
            inner += [x for x in items if type(x) in _NESTED]
        level = inner


# ---------------------------------------------------------------- shared parts
# The records messages carry (SegmentInfo, ObjectLocation, ...) are in plasma.records.


class _Msg(msgspec.Struct, tag=True, array_like=True, gc=False, omit_defaults=False):
    pass


# ---------------------------------------------------------------- requests


class Connect(_Msg):
    seq: _Int
    protocol_version: _Int
    client_name: _Str = ""
    cpus: _Cpus = []  # the client's allowed CPUs, for its default NUMA node


class Create(_Msg):
    seq: _Int
    id: _Id
    data_size: _Int
    metadata_size: _Int = 0
    node: _Node | None = None
    timeout: _Timeout | None = 0.0  # seconds to wait for space; None waits forever
    # pages interleaved across these nodes ([]: every node); None: all on one node
    interleave: Annotated[list[_Node], msgspec.Meta(max_length=MAX_CPUS)] | None = None


class CreateMany(_Msg):
    seq: _Int
    items: Annotated[list[CreateItem], _PER_REQUEST]
    node: _Node | None = None
    timeout: _Timeout | None = 0.0


class Seal(_Msg):
    seq: _Int
    ids: _Ids
    ack: bool = True  # False: no reply on success, an Error reply on failure


class Abort(_Msg):
    seq: _Int
    id: _Id


class Get(_Msg):
    seq: _Int
    ids: _Ids
    timeout: _Timeout | None = None  # seconds; None waits forever


class Release(_Msg):
    seq: _Int
    ids: _Ids
    ack: bool = False


class Delete(_Msg):
    seq: _Int
    ids: _Ids


class Unpin(_Msg):
    """Sent without waiting, never answered: the client cleared its pins of these objects,
    which it saw dying (their delete waits for pins); the coordinator scans again now."""

    seq: _Int
    ids: _Ids


class Contains(_Msg):
    seq: _Int
    id: _Id


class List(_Msg):
    """A page of the object listing: ``listing`` 0 starts one; else it continues listing
    ``listing`` (from an earlier ``Listing``) at position ``start``."""

    seq: _Int
    listing: _Int = 0
    start: _Int = 0


class Evict(_Msg):
    seq: _Int
    nbytes: _Int


class Migrate(_Msg):
    """Move a sealed object's pages to ``node`` (readers keep their views)."""

    seq: _Int
    id: _Id
    node: _Node


class Replicate(_Msg):
    """Make read-only copies of a sealed object on ``nodes``."""

    seq: _Int
    id: _Id
    nodes: Annotated[list[_Node], msgspec.Meta(max_length=MAX_CPUS)]


class Subscribe(_Msg):
    seq: _Int
    with_locations: bool = False  # seal notifications carry a location and a reference


class Arena(_Msg):
    """Reserve up to ``size`` bytes, at least ``min_size`` (0: ``size``), to fill with small
    objects; the unused tail of the previous arena is given back first."""

    seq: _Int
    size: _Int
    node: _Node | None = None
    min_size: _Int = 0


class ReturnArena(_Msg):
    """Sent without waiting: the client stops using its arena ``grant`` (the objects it
    wrote there were registered by earlier ``SealArena``s); its unused tail is freed.
    Naming another arena than the client's current one does nothing."""

    seq: _Int
    grant: _Int


class SealArena(_Msg):
    """Register objects written into arena ``grant`` (sealed, no reference). A bad object
    is left out and the others registered; the error names the first."""

    seq: _Int
    grant: _Int
    objects: Annotated[list[ArenaObject], _PER_REQUEST]
    ack: bool = False


class Stats(_Msg):
    seq: _Int
    placement: bool = False
    top_objects: _Int = 10  # the largest held objects the reply's ``holders`` lists


class Tables(_Msg):
    """The directory this client maps (named by its header's ``token``) is superseded: send
    the current one. Answered by ``TablesMoved``, with descriptors only when ``have`` names
    the last directory sent to this client (so at most one set is ever in flight to it)."""

    seq: _Int
    have: _Int


class Sync(_Msg):
    """A barrier: replied with ``Ok`` after every earlier request was handled."""

    seq: _Int


class TaskRegister(_Msg):
    """Have the coordinator sample process ``pid`` as task ``task_id`` (coordinator's uid only).

    ``node`` is the NUMA node the task was placed on, for its locality.
    """

    seq: _Int
    task_id: _Str
    pid: _Pid
    node: _Node | None = None
    run_id: _Str = ""


class TaskDone(_Msg):
    """The task ended: take its final sample and stop sampling it."""

    seq: _Int
    task_id: _Str
    run_id: _Str = ""


class SubmitSample(_Msg):
    """A sample a client took itself (the fields of ``plasma.perf.PerfSample``)."""

    seq: _Int
    task_id: _Str
    sample: dict[_Str, Any]
    run_id: _Str = ""

    def __post_init__(self) -> None:
        _check_depth(self.sample, "sample")


class RunRegister(_Msg):
    """Become the owner of ``run_id``: ``RunCall``s for it are relayed to this client."""

    seq: _Int
    run_id: _Str


class RunCall(_Msg):
    """Ask the owner of ``run_id`` (e.g. a DAG runner) something; answered by ``RunResult``."""

    seq: _Int
    run_id: _Str
    payload: Any

    def __post_init__(self) -> None:
        _check_depth(self.payload, "payload")


class RunRespond(_Msg):
    """The owner's answer to a relayed ``RunRequest``; ``code`` set means an error."""

    seq: _Int
    request: _Int
    payload: Any = None
    code: _Str | None = None
    message: _Str = ""

    def __post_init__(self) -> None:
        _check_depth(self.payload, "payload")


# ---------------------------------------------------------------- replies


class RunRequest(_Msg):
    """Pushed to a run owner (``seq`` 0): a ``RunCall`` from client ``client``."""

    seq: int
    request: int
    client: int
    payload: Any


class RunResult(_Msg):
    seq: int
    payload: Any


class Connected(_Msg):
    seq: int
    client_id: int
    protocol_version: int
    capacity: int
    nodes: list[NodeInfo]
    page_sizes: list[int]
    max_frame: int
    max_object_size: int
    node: int | None  # the client's default node
    alignment: int = 64  # objects (and arena objects) start at multiples of this
    tables: TablesInfo | None = None  # the directory and pin table (their fds come along)


class Ok(_Msg):
    seq: int


class Error(_Msg):
    seq: int
    code: str
    message: str


class Created(_Msg):
    seq: int
    locations: list[ObjectLocation]
    segments: list[SegmentInfo] = []


class Got(_Msg):
    seq: int
    # per id: its location (a reference is taken) or an error code string
    results: list[ObjectLocation | str]
    segments: list[SegmentInfo] = []


class Deleted(_Msg):
    seq: int
    deleted: list[bytes]
    deferred: list[bytes]
    missing: list[bytes]


class Contained(_Msg):
    seq: int
    present: bool


class Listing(_Msg):
    """Up to ``LIST_PAGE`` objects; ``next`` 0 when the listing is complete, else the
    ``start`` of the next page of ``listing``."""

    seq: int
    objects: list[ObjectInfo]
    listing: int = 0
    next: int = 0


class Evicted(_Msg):
    seq: int
    nbytes: int


class Migrated(_Msg):
    seq: int
    nodes: list[int]  # where the object's pages are now


class Replicated(_Msg):
    seq: int
    nodes: list[int]  # the nodes with a copy (the object's own included)


class ArenaGranted(_Msg):
    """An arena: ``size`` bytes at ``offset`` of ``segment``, named ``grant`` in the
    ``SealArena`` and ``ReturnArena`` messages about it."""

    seq: int
    segment: int
    offset: int
    size: int
    grant: int
    segments: list[SegmentInfo] = []


class StatsReply(_Msg):
    seq: int
    stats: dict[str, Any]


class Revoked(_Msg):
    """Pushed (``seq`` 0) to clients referencing objects whose delete waits for them: drop
    those references once no view of the object is in use."""

    seq: int
    ids: list[bytes]


class Reclaim(_Msg):
    """Pushed (``seq`` 0) when the store is short of memory: return the arena
    (``ReturnArena``) and release the references kept only for quick gets."""

    seq: int


class SegmentsDropped(_Msg):
    """Pushed (``seq`` 0): these segments are gone (their pages given back already); unmap
    them. Sent to each client that was sent the segment."""

    seq: int
    ids: list[int]


class TablesMoved(_Msg):
    """The answer to ``Tables``: the current directory (its fds come along, as ``tables``
    says), or None when the client has it already or one is on its way."""

    seq: int
    tables: TablesInfo | None = None


class Notification(_Msg):
    """Pushed to subscribers (``seq`` 0): an object was sealed or deleted."""

    seq: int
    kind: str  # "sealed" | "deleted" | "overflow" (the subscription ended: it fell behind)
    id: bytes
    data_size: int
    metadata_size: int
    location: ObjectLocation | None = None  # with_locations subscribers: a reference is held
    segments: list[SegmentInfo] = []


Request = (
    Connect
    | Create
    | CreateMany
    | Seal
    | Abort
    | Get
    | Release
    | Delete
    | Unpin
    | Contains
    | List
    | Evict
    | Migrate
    | Replicate
    | Subscribe
    | Arena
    | ReturnArena
    | SealArena
    | Stats
    | Tables
    | Sync
    | RunRegister
    | RunCall
    | RunRespond
    | TaskRegister
    | TaskDone
    | SubmitSample
)
Reply = (
    Connected
    | Ok
    | Error
    | Created
    | Got
    | Deleted
    | Contained
    | Listing
    | Evicted
    | Migrated
    | Replicated
    | ArenaGranted
    | StatsReply
    | Notification
    | Revoked
    | Reclaim
    | TablesMoved
    | SegmentsDropped
    | RunRequest
    | RunResult
)

# ---------------------------------------------------------------- framing


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame; the connection must close."""


_encode = msgspec.msgpack.Encoder().encode
_pack_header = HEADER.pack


def encode(msg: msgspec.Struct) -> bytes:
    """One frame: 4-byte little-endian payload length, then the MessagePack payload."""
    payload = _encode(msg)  # (then one copy: a third of encode_into's cost for small frames)
    return _pack_header(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, then iterate ``messages()``.

    Raises :class:`ProtocolError` for a frame longer than ``max_frame`` or a payload that is
    not a valid message of ``kind`` (whatever the bytes: malformed MessagePack, a field out of
    range, nesting too deep to decode); the caller answers with an ``Error`` and closes. The
    decoder then stays failed: every later ``next_message`` raises the same error.
    """

    def __init__(self, kind: Any, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._decoder = msgspec.msgpack.Decoder(kind)
        self._buf = bytearray()
        self._pos = 0
        self._error: str | None = None  # why the stream failed, once it has
        self.max_frame = max_frame

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        return len(self._buf) - self._pos

    def only_message(self, data: memoryview) -> Any | None:
        """The message ``data`` holds when it is exactly one whole frame and nothing is
        buffered before it; else None, taking nothing (``feed`` it: a bad frame is reported
        there)."""
        if self._pos != len(self._buf) or self._error is not None or len(data) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(data)
        if length != len(data) - HEADER.size:
            return None
        try:
            return self._decoder.decode(data[HEADER.size :])
        except MemoryError:
            raise
        except Exception:  # DecodeError, ValidationError, ...: feed reports it
            return None

    def next_message(self) -> Any | None:
        """The next complete message, or None when more bytes are needed."""
        if self._error is not None:
            raise ProtocolError(self._error)
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER.size:
            self._compact()
            return None
        (length,) = HEADER.unpack_from(buf, pos)
        if length > self.max_frame:
            self._error = f"frame of {length} bytes exceeds the maximum of {self.max_frame}"
            raise ProtocolError(self._error)
        end = pos + HEADER.size + length
        if len(buf) < end:
            self._compact()
            return None
        msg = self._decode(memoryview(buf)[pos + HEADER.size : end])
        self._pos = end
        return msg

    def messages(self) -> list[Any]:
        """All complete messages buffered so far."""
        out = []
        while (msg := self.next_message()) is not None:
            out.append(msg)
        return out

    def feed_messages(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """``feed(data)`` then ``messages()``; the frames ``data`` holds whole are decoded
        in place (not copied) when nothing was buffered before, the common case."""
        if self._pos != len(self._buf) or self._error is not None:
            self.feed(data)
            return self.messages()
        view = memoryview(data)
        out = []
        pos, n = 0, len(view)
        while n - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(view, pos)
            end = pos + HEADER.size + length
            if length > self.max_frame or end > n:
                break  # the slow path below reports it or waits for the rest
            out.append(self._decode(view[pos + HEADER.size : end]))
            pos = end
        self._pos = 0
        if pos == n:
            self._buf.clear()
            return out
        self._buf = bytearray(view[pos:])
        return out + self.messages()

    def _decode(self, payload: memoryview) -> Any:
        try:
            return self._decoder.decode(payload)
        except MemoryError:
            raise  # this process is short of memory: not the peer's fault
        except Exception as exc:  # DecodeError, ValidationError, RecursionError, ...
            self._error = f"malformed message: {exc}"
            raise ProtocolError(self._error) from None

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
