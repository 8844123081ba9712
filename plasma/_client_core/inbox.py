"""The client core's inbox (internal): what the coordinator sends, decoded and sorted.

It owns the frame decoder, and sorts each message received: a reply goes back to the
driver for the call that waits on it; what the coordinator pushes is kept (notifications
and run requests until read, a Reclaim until answered) or handed to the part it concerns
(segments and tables with their descriptors to the segment maps, dropped segments to be
unmapped, revocations and subscription references to the refs). It matches the replies
nobody waits for by sequence number: those to abandoned requests (whose references and
objects go back through the outbox), to SealArenas sent without waiting (a failure drops
the arena), and the errors kept to raise on a later call. It never sends anything itself,
never maps memory and never does I/O: it is fed bytes and descriptors.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, get_args

import msgspec

from plasma import protocol as p
from plasma._client_core.outbox import Outbox
from plasma._client_core.refs import Refs
from plasma._client_core.segment_maps import SegmentMaps
from plasma.errors import PlasmaError, error_for

__all__ = ["MAX_ARENA_SEALS", "MAX_DEFERRED_ERRORS", "Inbox"]

# replies such as a full List can be large; requests are capped by the coordinator
REPLY_MAX_FRAME = 1 << 30
MAX_DEFERRED_ERRORS = 64  # kept one by one; beyond, only counted
MAX_ARENA_SEALS = 4096  # SealArenas remembered until answered (an older one's failure is missed)

# replies that are only handed to their caller: nothing to map, queue or answer
_PLAIN_REPLIES = frozenset(
    kind
    for kind in get_args(p.Reply)
    if not {"segments", "tables"} & set(kind.__struct_fields__)
    and kind not in (p.Notification, p.RunRequest, p.Revoked, p.Reclaim, p.SegmentsDropped)
)


class Inbox:
    """Messages received, sorted. ``arena_failed`` is told the grant of an arena whose
    SealArena failed."""

    def __init__(
        self,
        outbox: Outbox,
        maps: SegmentMaps,
        refs: Refs,
        arena_failed: Callable[[int], None],
    ) -> None:
        self._outbox = outbox
        self._maps = maps
        self._refs = refs
        self._arena_failed = arena_failed
        self.decoder = p.FrameDecoder(p.Reply, REPLY_MAX_FRAME)
        self.notifications: collections.deque[p.Notification] = collections.deque()
        self.run_requests: collections.deque[p.RunRequest] = collections.deque()
        self.reclaim_requested = False  # a Reclaim arrived and is not answered yet
        self.deferred_errors: list[PlasmaError] = []
        self.deferred_dropped = 0
        # requests whose caller went away (a cancelled trio task), and cleanup messages:
        # seq -> the request, so the references or objects its reply brings are handed back
        self.abandoned: dict[int, msgspec.Struct] = {}
        # SealArena messages whose answer may still come (they are sent without waiting):
        # seq -> arena grant, oldest first; a later reply means every earlier one was handled
        self.arena_seals: dict[int, int] = {}

    def feed(self, data: bytes | memoryview, fds: list[int]) -> list[Any]:
        """Decode received bytes; returns replies to requests (pushes are kept or handed on)."""
        if fds:
            self._maps.receive(fds)
        replies = []
        for msg in self.decoder.feed_messages(data):
            if self.arena_seals and msg.seq:
                self._arena_sealed(msg)
            if type(msg) in _PLAIN_REPLIES:
                replies.append(msg)
                continue
            segments = getattr(msg, "segments", None)
            if segments:
                self._maps.map_segments(segments)
            tables = getattr(msg, "tables", None)
            if tables is not None:  # Connected, TablesMoved: their fds come first
                self._maps.map_tables(tables)
            if isinstance(msg, p.TablesMoved):
                self._maps.tables_asked = False
            if isinstance(msg, p.Notification):
                if msg.location is not None:
                    self._refs.prefetch(msg.id, msg.location)
                self.notifications.append(msg)
            elif isinstance(msg, p.RunRequest):
                self.run_requests.append(msg)
            elif isinstance(msg, p.Revoked):
                self._refs.revoke(msg.ids)
            elif isinstance(msg, p.Reclaim):
                self.reclaim_requested = True
            elif isinstance(msg, p.SegmentsDropped):
                self._maps.unmap(msg.ids)
            else:
                replies.append(msg)
        return replies

    def only_reply(self, data: memoryview, seq: int) -> Any | None:
        """The reply to ``seq`` when ``data`` (received with no descriptors) is that one plain
        reply and nothing else; else None, taking nothing: :meth:`feed` it."""
        msg = self.decoder.only_message(data)
        if msg is None or msg.seq != seq or type(msg) not in _PLAIN_REPLIES:
            return None
        if self.arena_seals:
            self._arena_sealed(msg)
        return msg

    def expect_seal(self, seq: int, grant: int) -> None:
        """A SealArena of the arena ``grant`` goes out as ``seq`` without waiting."""
        seals = self.arena_seals
        seals[seq] = grant
        if len(seals) > MAX_ARENA_SEALS:
            del seals[next(iter(seals))]

    def _arena_sealed(self, reply: Any) -> None:
        """Forget the SealArenas answered by now; one that failed drops its arena: what the
        store and this client think of it may differ, so write there no more."""
        seals = self.arena_seals
        if isinstance(reply, p.Error) and reply.seq in seals:
            self._arena_failed(seals[reply.seq])
        while seals and next(iter(seals)) <= reply.seq:
            del seals[next(iter(seals))]

    def abandon(self, msg: msgspec.Struct) -> None:
        """The caller of ``msg`` will not read its reply: give back what the reply brings."""
        if isinstance(msg, (p.Get, p.Create, p.CreateMany, p.Arena)):
            self.abandoned[msg.seq] = msg

    def nobodys(self, msg: p.Abort | p.ReturnArena) -> None:
        """``msg`` is sent for nobody: its answer, if any, concerns nobody."""
        self.abandoned[msg.seq] = msg

    def unexpected(self, reply: Any) -> PlasmaError | None:
        """A reply nobody waits for: the reply to an abandoned request, whose references and
        objects go back; or an Error of a request sent without waiting (kept for a later
        call); or (``seq`` 0) the coordinator's reason for closing the connection: returned."""
        abandoned = self.abandoned.pop(reply.seq, None) if reply.seq else None
        if abandoned is not None:
            self._give_back(abandoned, reply)
        elif isinstance(reply, p.Error):
            err = error_for(reply.code, reply.message)
            if reply.seq == 0:
                return err
            if len(self.deferred_errors) < MAX_DEFERRED_ERRORS:
                self.deferred_errors.append(err)
            else:
                self.deferred_dropped += 1
        return None

    def _give_back(self, request: Any, reply: Any) -> None:
        if isinstance(reply, p.Got):
            for oid, result in zip(request.ids, reply.results, strict=True):
                if isinstance(result, p.ObjectLocation):
                    self._outbox.releases.append(oid)
        elif isinstance(reply, p.Created):  # queued as aborts of the objects made for nobody
            ids = [request.id] if isinstance(request, p.Create) else [i.id for i in request.items]
            self._outbox.cleanup.extend(p.Abort(seq=0, id=oid) for oid in ids)
        elif isinstance(reply, p.ArenaGranted):  # an arena granted to nobody
            self._outbox.cleanup.append(p.ReturnArena(seq=0, grant=reply.grant))

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
