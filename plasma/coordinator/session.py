"""One connected client's side of the coordinator (internal): :class:`Session`, its socket,
frame decoder and outbox, and the task that writes the outbox when the client reads slowly.

A session owns what is queued for its client (frames, the fds they carry, which of those to
close once sent) and what the client was sent already (segments, listings, tables). It
must never decide what to answer: the handlers and the event delivery queue replies here.
"""

from __future__ import annotations

import collections
import os
import socket
from typing import Any

import msgspec
import trio

from plasma import protocol as p
from plasma.linux.fdpass import MAX_FDS_PER_SEND, scm_rights

__all__ = ["MAX_UNSENT", "RECV_SIZE", "Hangup", "Session"]

RECV_SIZE = 256 * 1024
# Bytes queued for a client that does not read: past MAX_UNSENT the coordinator reads no more
# of its requests until it catches up.
MAX_UNSENT = 32 << 20


class Hangup(Exception):
    """A protocol violation after which the connection is closed."""


class Session:
    """One connected client: its socket, decoder, outgoing queue and the segments it knows."""

    def __init__(
        self, sock: socket.socket, client_id: int, creds: tuple[int, int, int], max_frame: int
    ) -> None:
        self.sock = sock
        self.client_id = client_id
        self.pid, self.uid, self.gid = creds
        self.name = ""
        self.connected = False
        self.decoder = p.FrameDecoder(p.Request, max_frame)
        self.seen_segments: set[int] = set()
        # listings in progress: number -> the ids snapshot they page through (oldest first)
        self.listings: collections.OrderedDict[int, list[bytes]] = collections.OrderedDict()
        self.last_listing = 0
        self.writable = True  # False: a read-only uid, sent read-only fds and refused writes
        self.pin_table: Any = None  # the coordinator's read-only map of the client's pin table
        self.tables_token = 0  # the directory last sent to this client (its header's token)
        # frames, their fds, and which of those to close once sent
        self._out: collections.deque[tuple[bytes, list[int], list[int]]] = collections.deque()
        self.unsent = 0  # bytes queued in _out
        self.handshake = trio.CancelScope()  # ends the session unless Connect comes in time
        self._wake_writer = trio.Event()

    def send(
        self, msg: msgspec.Struct, fds: list[int] | None = None, *, owned: bool = False
    ) -> None:
        """Queue ``msg`` with ``fds``; ``owned`` fds are closed once sent (or dropped)."""
        frame = p.encode(msg)
        self.unsent += len(frame)
        fds = fds or []
        self._out.append((frame, fds, fds if owned else []))

    def drop_queue(self) -> None:
        """Forget what was not sent (the peer is gone), closing the fds it owned."""
        for _, _, owned in self._out:
            for fd in owned:
                os.close(fd)
        self._out.clear()
        self.unsent = 0

    def flush(self) -> None:
        """Send what the socket takes now; leave the rest to the writer task."""
        if self._out and not self.try_send():
            self._wake_writer.set()

    def try_send(self) -> bool:
        """Non-blocking send of queued frames; True when the queue is empty."""
        while self._out:
            frames: list[bytes] = []
            fds: list[int] = []
            owned: list[int] = []
            while self._out and len(fds) + len(self._out[0][1]) <= MAX_FDS_PER_SEND:
                frame, frame_fds, frame_owned = self._out.popleft()
                frames.append(frame)
                fds.extend(frame_fds)
                owned.extend(frame_owned)
            if (
                not frames
            ):  # a single frame with too many fds cannot happen: segments per reply are bounded
                raise AssertionError("frame carries more fds than one sendmsg allows")
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            try:
                sent = self.sock.sendmsg([data], scm_rights(fds)) if fds else self.sock.send(data)
            except BlockingIOError:
                self._out.appendleft((data, fds, owned))
                return False
            except OSError:
                self._out.appendleft((data, fds, owned))
                self.drop_queue()  # peer gone; the reader will notice and clean up
                return True
            for fd in owned:  # the receiver has its own copies now
                os.close(fd)
            self.unsent -= sent
            if sent < len(data):
                self._out.appendleft((data[sent:], [], []))  # fds travelled with the first byte
                return False
        return True

    async def writer(self) -> None:
        """Waits for the socket to drain when a client reads slower than we reply."""
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            while not self.try_send():
                await trio.lowlevel.wait_writable(self.sock)
