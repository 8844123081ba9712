"""Client-side connection state shared by the blocking and the trio client (sans-I/O).

It numbers requests, decodes reply frames, maps each segment fd once, builds zero-copy views
of objects, queues releases from views that died (sent piggy-backed on the next request) and
keeps the small-object arena. The two clients only move bytes and fds.
"""

from __future__ import annotations

import array
import collections
import contextlib
import math
import mmap
import os
import re
import socket
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from plasma import protocol as p
from plasma.errors import BadRequest, PlasmaError, error_for
from plasma.linux.memfd import MADV_POPULATE_WRITE

REPLY_MAX_FRAME = (
    1 << 30
)  # replies such as a full List can be large; requests are capped by the coordinator
MAX_FDS = 253
ANCILLARY_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
RECV_SIZE = 256 * 1024
ALIGN = 64
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
MAX_DEFERRED_ERRORS = 64  # kept one by one; beyond, only counted
# ids per request frame: 20 bytes plus MessagePack framing each, well under the default
# 1 MiB frame limit of the coordinator and its MAX_IDS_PER_REQUEST
IDS_PER_FRAME = 16384


# A segment first received to write into is mapped with its page tables filled in, so a put
# writes at memcpy speed; one received to read from is mapped lazily (a reader of one object
# need not pay for the whole segment), and a large object created in it later has just its
# own range populated.
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
POPULATE_OBJECT_MIN = 1 << 20


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


# Requests the clients build only from values checked already (ids through as_id_bytes,
# timeouts through check_timeout, arena offsets they were granted): sent as they are. Every
# other request is checked against the coordinator's bounds before it leaves, so a bad
# argument is a BadRequest here instead of a connection the coordinator closes.
_TRUSTED = (p.Get, p.Contains, p.Sync, p.Seal, p.Release, p.SealArena, p.ReturnArena)
_REQUEST_DECODER = msgspec.msgpack.Decoder(p.Request)


def checked(msg: msgspec.Struct) -> msgspec.Struct:
    """``msg`` if the coordinator will accept its fields; else BadRequest naming the field."""
    if isinstance(msg, _TRUSTED):
        return msg
    try:
        _REQUEST_DECODER.decode(msgspec.msgpack.encode(msg))
    except msgspec.ValidationError as exc:
        fields = ("tag", *msg.__struct_fields__)  # array-like: the tag is element 0

        def name(m: re.Match[str]) -> str:
            i = int(m.group(1))
            return fields[i] if i < len(fields) else m.group(0)

        text = re.sub(r"\$\[(\d+)\]", name, str(exc), count=1)
        raise BadRequest(f"{type(msg).__name__}: {text}") from None
    return msg


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` if it is None or finite seconds >= 0; else BadRequest (a ValueError)."""
    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise BadRequest(f"timeout must be None or finite seconds >= 0, got {timeout!r}")
    return timeout


def fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


_WRITE_REPLIES = (p.Created, p.ArenaGranted)


def _size(loc: p.ObjectLocation) -> int:
    return loc.data_size + loc.metadata_size


@dataclass(slots=True)
class _Held:
    loc: p.ObjectLocation
    views: int = 1
    revoked: bool = False


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

    def take(self, nbytes: int) -> int | None:
        """Offset for an object of ``nbytes`` (an empty one still takes ``ALIGN``), or None."""
        need = align(nbytes) or ALIGN
        if self.cursor + need > self.end:
            return None
        offset = self.cursor
        self.cursor += need
        return offset


class ClientState:
    """Everything a client knows about its connection, without doing any I/O."""

    def __init__(self, release_delay: int = RELEASE_DELAY) -> None:
        self.decoder = p.FrameDecoder(p.Reply, REPLY_MAX_FRAME)
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
        self.cache: dict[bytes, p.ObjectLocation] = {}
        self.cache_bytes = 0
        self.cache_limit = RELEASE_DELAY_BYTES  # lowered by connected() for small stores
        self.release_delay = release_delay
        self.fatal: PlasmaError | None = None  # why the coordinator closed the connection
        self.reclaim_requested = False  # a Reclaim arrived: answer with reclaim_messages()
        self._held_lock = threading.RLock()  # finalizers may run on any thread
        # one receive buffer for the connection's life: a fresh 256 KiB bytes object per recv
        # would cost an mmap/munmap and page faults on every reply
        self.recv_view = memoryview(bytearray(RECV_SIZE))
        self._fds: collections.deque[int] = collections.deque()
        self._lazy: set[int] = set()  # segments mapped without MAP_POPULATE
        self._releases: collections.deque[bytes] = collections.deque()  # appended by finalizers
        self._seq = 0
        self._seq_lock = threading.Lock()

    # ---------------------------------------------------------------- outgoing

    def next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def frames(self, *msgs: msgspec.Struct) -> bytes:
        """Encoded frames for ``msgs``, preceded by Releases for views that died meanwhile.

        Raises BadRequest, taking nothing, when a message is out of the coordinator's bounds.
        """
        encoded = [p.encode(checked(m)) for m in msgs]
        out = []
        releases = self._releases
        while releases:
            ids = [releases.popleft() for _ in range(min(len(releases), IDS_PER_FRAME))]
            out.append(p.encode(p.Release(seq=self.next_seq(), ids=ids, ack=False)))
        out += encoded
        return b"".join(out)

    def connected(self, reply: p.Connected) -> None:
        """Take in the coordinator's answer to Connect."""
        self.cache_limit = min(RELEASE_DELAY_BYTES, reply.capacity // RELEASE_DELAY_SHARE)

    def create_request(
        self, object_id: bytes, size: int, metadata: bytes, node: int | None, timeout: float | None
    ) -> p.Create:
        check_timeout(timeout)
        return p.Create(self.next_seq(), object_id, size, len(metadata), node, timeout)

    def reclaim_messages(self) -> list[msgspec.Struct]:
        """The answer to a Reclaim: every cached reference is released (with the next frames)
        and the arena given back; the next small put asks for a new one."""
        self.reclaim_requested = False
        self.drop_cache()
        arena, self.arena = self.arena, None
        return [] if arena is None else [p.ReturnArena(seq=self.next_seq(), segment=arena.segment)]

    def seal_and_release(self, ids: list[bytes]) -> tuple[p.Seal, p.Release]:
        """What finishes ``create_and_seal``: seal, then drop the creator's reference."""
        return p.Seal(self.next_seq(), ids, ack=False), p.Release(self.next_seq(), ids)

    @property
    def has_releases(self) -> bool:
        return bool(self._releases)

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

    # ---------------------------------------------------------------- incoming

    def feed(self, data: bytes | memoryview, fds: list[int]) -> list[Any]:
        """Decode received bytes; returns replies to requests (pushes are queued here)."""
        self._fds.extend(fds)
        self.decoder.feed(data)
        replies = []
        for msg in self.decoder.messages():
            segments = getattr(msg, "segments", None)
            if segments:
                self._map_segments(segments, for_writing=isinstance(msg, _WRITE_REPLIES))
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
            else:
                replies.append(msg)
        return replies

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
        0) the coordinator's reason for closing the connection."""
        if isinstance(reply, p.Error):
            err = error_for(reply.code, reply.message)
            if reply.seq == 0:
                self.fatal = self.fatal or err
            elif len(self.deferred_errors) < MAX_DEFERRED_ERRORS:
                self.deferred_errors.append(err)
            else:
                self.deferred_dropped += 1

    def _map_segments(self, segments: list[p.SegmentInfo], *, for_writing: bool) -> None:
        """Map each segment from its fd (then closed): read-only where the coordinator sent a
        read-only fd (this client's uid may only read)."""
        flags = mmap.MAP_SHARED | (MAP_POPULATE if for_writing else 0)
        for info in segments:
            if not self._fds:
                raise PlasmaError(f"segment {info.id} arrived without its file descriptor")
            fd = self._fds.popleft()
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if info.writable else 0)
            try:
                self.maps[info.id] = mmap.mmap(fd, info.size, flags, prot)
            finally:
                os.close(fd)
            if not for_writing:
                self._lazy.add(info.id)

    # ---------------------------------------------------------------- views

    def write_object(self, loc: p.ObjectLocation, metadata: bytes) -> memoryview:
        """The writable data view of a created object, its metadata already in place."""
        mm = self.maps[loc.segment]
        if loc.segment in self._lazy and loc.data_size >= POPULATE_OBJECT_MIN:
            start = loc.offset - loc.offset % mmap.PAGESIZE
            with contextlib.suppress(OSError):  # an optimisation only (kernels before 5.14)
                mm.madvise(MADV_POPULATE_WRITE, start, loc.offset + loc.data_size - start)
        if metadata:
            start = loc.offset + loc.data_size
            mm[start : start + len(metadata)] = metadata
        return memoryview(mm)[loc.offset : loc.offset + loc.data_size]

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
                self._releases.append(oid)
            return self._views(oid, loc)

    def reuse(self, oid: bytes) -> tuple[memoryview, memoryview] | None:
        """Views of an object this client holds (in use or recently released and cached),
        with no round trip; else None."""
        with self._held_lock:
            held = self.held.get(oid)
            if held is None:
                loc = self.cache.pop(oid, None)
                if loc is None:
                    return None
                self.cache_bytes -= _size(loc)
                self.held[oid] = held = _Held(loc, views=0)
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
                loc = self.cache.pop(oid, None)
                if loc is not None:
                    self.cache_bytes -= _size(loc)
                    self._releases.append(oid)
                elif oid in self.held:
                    self.held[oid].revoked = True

    def drop_cache(self) -> None:
        """Release every cached (unused) reference with the next message."""
        with self._held_lock:
            self._releases.extend(self.cache)
            self.cache.clear()
            self.cache_bytes = 0

    def _views(self, oid: bytes, loc: p.ObjectLocation) -> tuple[memoryview, memoryview]:
        total = loc.data_size + loc.metadata_size
        owner = np.frombuffer(
            self.maps[loc.segment], np.uint8, count=max(total, 1), offset=loc.offset
        )
        owner.flags.writeable = False
        weakref.finalize(owner, self._drop_view, oid)
        view = owner.data  # a memoryview that keeps ``owner`` alive
        return view[: loc.data_size], view[loc.data_size : total]

    def _drop_view(self, oid: bytes) -> None:
        """Finalizer of a view owner (any thread, any time): when the last view of an object
        goes, keep its reference in the release-delay cache (releasing the oldest ones beyond
        ``release_delay`` objects or ``cache_limit`` bytes) or release it."""
        with self._held_lock:
            held = self.held.get(oid)
            if held is None:
                return
            held.views -= 1
            if held.views:
                return
            del self.held[oid]
            if held.revoked or not self.release_delay:
                self._releases.append(oid)
                return
            self.cache[oid] = held.loc
            self.cache_bytes += _size(held.loc)
            cache = self.cache
            while len(cache) > self.release_delay or self.cache_bytes > self.cache_limit:
                oldest = next(iter(cache))
                self.cache_bytes -= _size(cache.pop(oldest))
                self._releases.append(oldest)

    def close_maps(self) -> None:
        for mm in self.maps.values():
            with contextlib.suppress(BufferError):  # views still alive: unmapped when they go
                mm.close()
        self.maps.clear()


Views = tuple[memoryview, memoryview]


class PendingGet:
    """Views of a get being assembled: local ones first, then what the coordinator sent."""

    def __init__(self, state: ClientState, ids: list[bytes], views: list[Views | None]) -> None:
        self._state = state
        self._ids = ids
        self._views = views
        self._wanted = [i for i, v in enumerate(views) if v is None]
        self.missing = [ids[i] for i in self._wanted]  # ids to ask the coordinator for
        self._failure: PlasmaError | None = None

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
