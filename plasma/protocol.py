"""Wire protocol: msgspec MessagePack messages in little-endian length-prefixed frames.

Every message is a tagged, array-like ``msgspec.Struct`` (the tag is the class name).
Requests carry a ``seq`` that replies echo, so a client may pipeline. A reply that
references a segment the client has not seen yet lists it in ``segments``; the segment
fds travel in the same ``sendmsg`` as SCM_RIGHTS ancillary data, in the same order.

This module is sans-I/O: :class:`FrameDecoder` turns bytes into messages and
:func:`encode` turns a message into one frame; sockets live elsewhere.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 1 << 20
HEADER = struct.Struct("<I")

# ---------------------------------------------------------------- shared parts


class _Msg(msgspec.Struct, tag=True, array_like=True, gc=False, omit_defaults=False):
    pass


class SegmentInfo(msgspec.Struct, array_like=True, gc=False):
    """A shared-memory segment; its fd accompanies the frame that first lists it."""

    id: int
    size: int
    node: int
    page_size: int


class ObjectLocation(msgspec.Struct, array_like=True, gc=False):
    """Where an object's bytes live: data at ``offset``, metadata right after it."""

    segment: int
    offset: int
    data_size: int
    metadata_size: int
    node: int


class ObjectInfo(msgspec.Struct, array_like=True, gc=False):
    """One row of ``list()``."""

    id: bytes
    data_size: int
    metadata_size: int
    node: int
    state: str  # "created" | "sealed"
    ref_count: int
    create_time: float
    owner: int  # client id of the creator


class NodeInfo(msgspec.Struct, array_like=True, gc=False):
    id: int
    capacity: int
    cpus: list[int]


class CreateItem(msgspec.Struct, array_like=True, gc=False):
    id: bytes
    data_size: int
    metadata_size: int = 0


class ArenaObject(msgspec.Struct, array_like=True, gc=False):
    """An object a client carved out of its arena, registered sealed by ``SealArena``."""

    id: bytes
    offset: int
    data_size: int
    metadata_size: int


# ---------------------------------------------------------------- requests


class Connect(_Msg):
    seq: int
    protocol_version: int
    client_name: str = ""
    cpus: list[int] = []  # the client's allowed CPUs, for its default NUMA node


class Create(_Msg):
    seq: int
    id: bytes
    data_size: int
    metadata_size: int = 0
    node: int | None = None
    timeout: float | None = 0.0  # seconds to wait for space; None waits forever


class CreateMany(_Msg):
    seq: int
    items: list[CreateItem]
    node: int | None = None
    timeout: float | None = 0.0


class Seal(_Msg):
    seq: int
    ids: list[bytes]
    ack: bool = True  # False: no reply on success, an Error reply on failure


class Abort(_Msg):
    seq: int
    id: bytes


class Get(_Msg):
    seq: int
    ids: list[bytes]
    timeout: float | None = None  # seconds; None waits forever


class Release(_Msg):
    seq: int
    ids: list[bytes]
    ack: bool = False


class Delete(_Msg):
    seq: int
    ids: list[bytes]


class Contains(_Msg):
    seq: int
    id: bytes


class List(_Msg):
    seq: int


class Evict(_Msg):
    seq: int
    nbytes: int


class Subscribe(_Msg):
    seq: int
    with_locations: bool = False  # seal notifications carry a location and a reference


class Arena(_Msg):
    seq: int
    size: int
    node: int | None = None


class SealArena(_Msg):
    seq: int
    segment: int
    objects: list[ArenaObject]
    ack: bool = False


class Stats(_Msg):
    seq: int
    placement: bool = False


class Sync(_Msg):
    """A barrier: replied with ``Ok`` after every earlier request was handled."""

    seq: int


class TaskRegister(_Msg):
    """Have the coordinator sample process ``pid`` as task ``task_id`` (coordinator's uid only).

    ``node`` is the NUMA node the task was placed on, for its locality.
    """

    seq: int
    task_id: str
    pid: int
    node: int | None = None
    run_id: str = ""


class TaskDone(_Msg):
    """The task ended: take its final sample and stop sampling it."""

    seq: int
    task_id: str
    run_id: str = ""


class SubmitSample(_Msg):
    """A sample a client took itself (the fields of ``plasma.perf.PerfSample``)."""

    seq: int
    task_id: str
    sample: dict[str, Any]
    run_id: str = ""


class RunRegister(_Msg):
    """Become the owner of ``run_id``: ``RunCall``s for it are relayed to this client."""

    seq: int
    run_id: str


class RunCall(_Msg):
    """Ask the owner of ``run_id`` (e.g. a DAG runner) something; answered by ``RunResult``."""

    seq: int
    run_id: str
    payload: Any


class RunRespond(_Msg):
    """The owner's answer to a relayed ``RunRequest``; ``code`` set means an error."""

    seq: int
    request: int
    payload: Any = None
    code: str | None = None
    message: str = ""


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
    seq: int
    objects: list[ObjectInfo]


class Evicted(_Msg):
    seq: int
    nbytes: int


class ArenaGranted(_Msg):
    seq: int
    segment: int
    offset: int
    size: int
    segments: list[SegmentInfo] = []


class StatsReply(_Msg):
    seq: int
    stats: dict[str, Any]


class Revoked(_Msg):
    """Pushed (``seq`` 0) to clients referencing objects whose delete waits for them: drop
    those references once no view of the object is in use."""

    seq: int
    ids: list[bytes]


class Notification(_Msg):
    """Pushed to subscribers (``seq`` 0): an object was sealed or deleted."""

    seq: int
    kind: str  # "sealed" | "deleted"
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
    | Contains
    | List
    | Evict
    | Subscribe
    | Arena
    | SealArena
    | Stats
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
    | ArenaGranted
    | StatsReply
    | Notification
    | Revoked
    | RunRequest
    | RunResult
)

# ---------------------------------------------------------------- framing


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame; the connection must close."""


_encoder = msgspec.msgpack.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    """One frame: 4-byte little-endian payload length, then the MessagePack payload."""
    buf = bytearray(HEADER.size)
    _encoder.encode_into(msg, buf, HEADER.size)
    HEADER.pack_into(buf, 0, len(buf) - HEADER.size)
    return bytes(buf)


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, then iterate ``messages()``.

    Raises :class:`ProtocolError` for a frame longer than ``max_frame`` or a payload that is
    not a valid message of ``kind``; the caller answers with an ``Error`` and closes.
    """

    def __init__(self, kind: Any, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._decoder = msgspec.msgpack.Decoder(kind)
        self._buf = bytearray()
        self._pos = 0
        self.max_frame = max_frame

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        return len(self._buf) - self._pos

    def next_message(self) -> Any | None:
        """The next complete message, or None when more bytes are needed."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER.size:
            self._compact()
            return None
        (length,) = HEADER.unpack_from(buf, pos)
        if length > self.max_frame:
            raise ProtocolError(f"frame of {length} bytes exceeds the maximum of {self.max_frame}")
        end = pos + HEADER.size + length
        if len(buf) < end:
            self._compact()
            return None
        try:
            msg = self._decoder.decode(memoryview(buf)[pos + HEADER.size : end])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolError(f"malformed message: {exc}") from None
        self._pos = end
        return msg

    def messages(self) -> list[Any]:
        """All complete messages buffered so far."""
        out = []
        while (msg := self.next_message()) is not None:
            out.append(msg)
        return out

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
