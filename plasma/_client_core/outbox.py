"""The client core's outbox (internal): the frames that leave with the next send.

It owns request sequence numbers, the checking and encoding of requests
(:func:`checked_frame`), and what waits to go ahead of the next request: Releases of
references let go (at most ``IDS_PER_FRAME`` ids a frame), Unpin hints, one Tables request
for a superseded directory, and the Aborts and ReturnArenas that hand back what was made for
nobody. It never decides when a reference goes (the refs do), never reads a reply (the
inbox does: it is told which sequence numbers are nobody's) and never does I/O: it returns
bytes for a driver to send.
"""

from __future__ import annotations

import collections
import itertools
import re
from collections.abc import Callable, Iterator

import msgspec

from plasma import protocol as p
from plasma.errors import BadRequest

__all__ = ["IDS_PER_FRAME", "Outbox", "checked_frame", "chunks"]

# ids per request frame: 20 bytes plus MessagePack framing each, well under the default
# 1 MiB frame limit of the coordinator and its MAX_IDS_PER_REQUEST
IDS_PER_FRAME = 16384

# Requests the clients build only from values checked already (ids through as_id_bytes,
# timeouts through check_timeout, arena offsets they were granted): sent as they are. Every
# other request is checked against the coordinator's bounds before it leaves, so a bad
# argument is a BadRequest here instead of a connection the coordinator closes.
_TRUSTED = frozenset({p.Get, p.Contains, p.Sync, p.Seal, p.Release, p.SealArena, p.ReturnArena})
_REQUEST_DECODER = msgspec.msgpack.Decoder(p.Request)


def checked_frame(msg: msgspec.Struct) -> bytes:
    """The frame of ``msg`` if the coordinator will accept its fields (decoded back from the
    frame itself, so nothing is encoded twice); else BadRequest naming the field."""
    frame = p.encode(msg)
    if type(msg) in _TRUSTED:
        return frame
    try:
        _REQUEST_DECODER.decode(memoryview(frame)[p.HEADER.size :])
    except msgspec.ValidationError as exc:
        fields = ("tag", *msg.__struct_fields__)  # array-like: the tag is element 0

        def name(m: re.Match[str]) -> str:
            i = int(m.group(1))
            return fields[i] if i < len(fields) else m.group(0)

        text = re.sub(r"\$\[(\d+)\]", name, str(exc), count=1)
        raise BadRequest(f"{type(msg).__name__}: {text}") from None
    return frame


def chunks(ids: list[bytes]) -> Iterator[list[bytes]]:
    """``ids`` in pieces of at most ``IDS_PER_FRAME``."""
    for start in range(0, len(ids), IDS_PER_FRAME):
        yield ids[start : start + IDS_PER_FRAME]


class Outbox:
    """Sequence numbers, and the messages queued to go with the next frames.

    ``nobodys`` is told of each queued Abort or ReturnArena once it has its sequence number:
    its answer, if any, concerns nobody."""

    def __init__(self, nobodys: Callable[[p.Abort | p.ReturnArena], None]) -> None:
        self.releases: collections.deque[bytes] = collections.deque()  # appended by finalizers
        self.unpins: collections.deque[bytes] = collections.deque()  # hints: pins let go
        # the token of a superseded directory to ask the current one for (0: none)
        self.tables_wanted = 0
        # what hands back the objects and arenas made for nobody (Abort, ReturnArena)
        self.cleanup: collections.deque[p.Abort | p.ReturnArena] = collections.deque()
        self._nobodys = nobodys
        # 1, 2, ...: one C call, atomic for any thread (no lock to take per request)
        self.next_seq: Callable[[], int] = itertools.count(1).__next__

    def queued(self) -> bool:
        """Whether anything waits to go with the next frames."""
        return bool(self.releases or self.cleanup or self.unpins or self.tables_wanted)

    def frames(self, *msgs: msgspec.Struct) -> bytes:
        """Encoded frames for ``msgs``, preceded by what is queued (Releases first, then
        Unpins, the Tables request, the cleanup messages).

        Raises BadRequest, taking nothing, when a message is out of the coordinator's bounds.
        """
        if len(msgs) == 1 and not (
            self.releases or self.cleanup or self.unpins or self.tables_wanted
        ):
            return checked_frame(msgs[0])  # the common case
        encoded = [checked_frame(m) for m in msgs]
        out = []
        releases = self.releases
        while releases:
            ids = [releases.popleft() for _ in range(min(len(releases), IDS_PER_FRAME))]
            out.append(p.encode(p.Release(seq=self.next_seq(), ids=ids, ack=False)))
        unpins = self.unpins
        while unpins:
            ids = [unpins.popleft() for _ in range(min(len(unpins), IDS_PER_FRAME))]
            out.append(p.encode(p.Unpin(seq=self.next_seq(), ids=ids)))
        if self.tables_wanted:
            out.append(p.encode(p.Tables(seq=self.next_seq(), have=self.tables_wanted)))
            self.tables_wanted = 0
        while self.cleanup:
            msg = self.cleanup.popleft()
            msg.seq = self.next_seq()
            self._nobodys(msg)
            out.append(p.encode(msg))
        out += encoded
        return b"".join(out)
