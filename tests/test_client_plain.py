"""Plain calls (one request, one plain reply: contains, an acknowledged seal) on both clients,
against a scripted coordinator: the fast path when nothing else is under way, and the
general path, with the same message, for everything it does not take (queued messages,
pushes before the reply, a partial frame, a hang-up, a bad frame, another thread's call, a
cancelled trio call)."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trio

import plasma
import plasma.aio
from plasma import protocol as p
from plasma._client_core import ClientCore
from plasma.errors import BadRequest, Disconnected, PermissionDenied
from plasma.records import NodeInfo

pytestmark = pytest.mark.timeout(30)  # a reply lost is a call that waits forever

PRESENT = bytes([1]) * 20
ABSENT = bytes([2]) * 20


class HangUp(NamedTuple):
    """An answer: send ``before``, then hang up."""

    before: bytes = b""


# what the scripted coordinator answers each request with: the bytes to send, or a hang-up
Answer = Callable[[Any], "bytes | HangUp"]


def contained(msg: Any) -> bytes:
    """Contains: whether the id is PRESENT; Seal: Ok; anything else: nothing."""
    if isinstance(msg, p.Contains):
        return p.encode(p.Contained(msg.seq, msg.id == PRESENT))
    if isinstance(msg, p.Seal) and msg.ack:
        return p.encode(p.Ok(msg.seq))
    return b""


def connected(seq: int) -> p.Connected:
    """A Connected of a store of one node, with no directory."""
    node = NodeInfo(id=0, capacity=1 << 30, cpus=[0])
    return p.Connected(
        seq=seq,
        client_id=1,
        protocol_version=p.PROTOCOL_VERSION,
        capacity=1 << 30,
        nodes=[node],
        page_sizes=[4096],
        max_frame=1 << 20,
        max_object_size=1 << 30,
        node=0,
    )


class Scripted:
    """A coordinator on ``path`` that answers Connect, then each request with ``answer``,
    in a thread; ``received`` holds the requests read so far, in order."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.answer: Answer = contained
        self.received: queue.Queue[Any] = queue.Queue()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        decoder = p.FrameDecoder(p.Request)
        with conn:
            while data := conn.recv(1 << 16):
                for msg in decoder.feed_messages(data):
                    if isinstance(msg, p.Connect):
                        conn.sendall(p.encode(connected(msg.seq)))
                        continue
                    self.received.put(msg)
                    out = self.answer(msg)
                    if isinstance(out, HangUp):
                        conn.sendall(out.before)
                        conn.shutdown(socket.SHUT_RDWR)
                        return
                    conn.sendall(out)

    def requests(self) -> list[Any]:
        """The requests read since the last look."""
        out = []
        while not self.received.empty():
            out.append(self.received.get_nowait())
        return out

    def close(self) -> None:
        self._listener.close()
        self._thread.join(timeout=10)


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Scripted]:
    server = Scripted(tmp_path / "coord.sock")
    yield server
    server.close()


@contextlib.contextmanager
def blocking(server: Scripted) -> Iterator[plasma.Client]:
    client = plasma.connect(server.path)
    try:
        yield client
    finally:
        client.close()


def general_path_refused(client: plasma.Client) -> None:
    """Make the general path fail, for the request and for its reply: what still works took
    the fast path both ways."""

    def refuse(op: Any) -> None:
        op.close()
        raise AssertionError("the general path ran")

    def refuse_feed(data: Any, fds: list[int]) -> list[Any]:
        raise AssertionError("the reply was decoded the general way")

    client._run = refuse  # type: ignore[method-assign]
    client._core.feed = refuse_feed  # type: ignore[method-assign]


def test_plain_calls_with_nothing_under_way_take_the_fast_path(scripted: Scripted) -> None:
    with blocking(scripted) as client:
        general_path_refused(client)
        assert client.contains(PRESENT) is True
        assert client.contains(ABSENT) is False
        client.seal(PRESENT, wait=True)
        assert [type(m) for m in scripted.requests()] == [p.Contains, p.Contains, p.Seal]


def test_queued_messages_go_first_the_general_way(scripted: Scripted) -> None:
    with blocking(scripted) as client:
        client._core.outbox.releases.append(ABSENT)
        assert client.contains(PRESENT) is True
        release, contains = scripted.requests()
        assert isinstance(release, p.Release) and release.ids == [ABSENT]
        assert isinstance(contains, p.Contains)  # (after it in the stream)


def test_pushes_before_the_reply_are_taken_in(scripted: Scripted) -> None:
    note = p.Notification(0, "sealed", ABSENT, 1, 0)

    def pushes_first(msg: Any) -> bytes:
        return p.encode(note) + p.encode(p.Reclaim(0)) + contained(msg)

    scripted.answer = pushes_first
    with blocking(scripted) as client:
        assert client.contains(PRESENT) is True
        assert list(client._core.notifications) == [note]
        assert not client._core.reclaim_requested  # answered at once
        client.seal(PRESENT, wait=True)
        assert len(client._core.notifications) == 2


def test_only_one_whole_plain_reply_to_the_call_is_taken_at_once() -> None:
    """What the fast path decodes at once, and what it leaves to the inbox (sans-I/O)."""
    reply = p.encode(p.Contained(7, True))
    note = p.encode(p.Notification(0, "sealed", ABSENT, 1, 0))
    cases = {
        "the reply": (reply, True),
        "another call's reply": (p.encode(p.Contained(6, True)), False),
        "a push": (note, False),
        "a push, then the reply": (note + reply, False),
        "the reply, then a push": (reply + note, False),
        "part of the reply": (reply[:-1], False),
        "part of a header": (reply[:3], False),
        "nothing (a hang-up)": (b"", False),
        "a bad frame": (p.HEADER.pack(2) + b"\xc1\xc1", False),
        "a reply with segments": (p.encode(p.Created(7, [])), False),
    }
    for what, (data, taken) in cases.items():
        core = ClientCore()
        core.recv_view[: len(data)] = data
        got = core.plain_reply(len(data), 7)
        assert (got is not None) is taken, what
    core = ClientCore()
    core.feed(reply[:2], [])  # bytes buffered from before: nothing is whole on its own
    core.recv_view[: len(reply)] = reply
    assert core.plain_reply(len(reply), 7) is None


def test_the_fast_path_is_taken_only_with_nothing_under_way() -> None:
    """plain_frame: the request's frame alone, or None (the general way) when something
    must go ahead of it or be raised first."""
    msg = p.Contains(1, PRESENT)
    assert ClientCore().plain_frame(msg) == p.encode(msg)
    blockers: dict[str, Callable[[ClientCore], object]] = {
        "a release queued": lambda core: core.outbox.releases.append(ABSENT),
        "an unpin queued": lambda core: core.outbox.unpins.append(ABSENT),
        "a cleanup queued": lambda core: core.outbox.cleanup.append(p.Abort(0, ABSENT)),
        "the directory asked for": lambda core: setattr(core.outbox, "tables_wanted", 3),
        "a Reclaim to answer": lambda core: setattr(core.inbox, "reclaim_requested", True),
        "an error kept": lambda core: core.unexpected(p.Error(5, "bad_request", "earlier")),
        "the connection gone": lambda core: core.disconnected(Disconnected("gone")),
        "a forked child": lambda core: core.forked(),
    }
    for what, block in blockers.items():
        core = ClientCore()
        block(core)
        assert core.plain_frame(msg) is None, what


def test_the_fast_path_forgets_answered_arena_seals() -> None:
    """A plain reply means every SealArena before it was handled: the fast path forgets
    them as the inbox does, and a failed one (its Error) drops the arena."""
    core = ClientCore()
    core.inbox.expect_seal(3, grant=9)
    core.inbox.expect_seal(8, grant=9)
    reply = p.encode(p.Contained(7, True))
    core.recv_view[: len(reply)] = reply
    assert core.plain_reply(len(reply), 7) is not None
    assert list(core.inbox.arena_seals) == [8]


def test_a_hang_up_mid_reply_is_disconnected(scripted: Scripted) -> None:
    scripted.answer = lambda msg: HangUp(contained(msg)[:-1])
    with blocking(scripted) as client:
        with pytest.raises(Disconnected, match="closed the connection"):
            client.contains(PRESENT)
        with pytest.raises(Disconnected):
            client.contains(PRESENT)


def test_a_hang_up_before_the_reply_is_disconnected(scripted: Scripted) -> None:
    scripted.answer = lambda msg: HangUp()
    with blocking(scripted) as client:
        with pytest.raises(Disconnected, match="closed the connection"):
            client.seal(PRESENT, wait=True)
        with pytest.raises(Disconnected):
            client.contains(PRESENT)


def test_the_coordinators_last_word_beats_the_hang_up(scripted: Scripted) -> None:
    def go_away(msg: Any) -> HangUp:
        return HangUp(p.encode(p.Error(0, "permission_denied", "go away")))

    scripted.answer = go_away
    with blocking(scripted) as client:
        with pytest.raises(PermissionDenied, match="go away"):
            client.contains(PRESENT)
        with pytest.raises(PermissionDenied, match="go away"):
            client.seal(PRESENT, wait=True)


def test_an_error_reply_is_raised_and_a_bad_frame_fails_the_call(scripted: Scripted) -> None:
    def refuse(msg: Any) -> bytes:
        if isinstance(msg, p.Contains) and msg.id == ABSENT:
            return p.HEADER.pack(2) + b"\xc1\xc1"  # not MessagePack
        return p.encode(p.Error(msg.seq, "bad_request", "no"))

    scripted.answer = refuse
    with blocking(scripted) as client:
        with pytest.raises(BadRequest, match="no"):
            client.contains(PRESENT)
        with pytest.raises(BadRequest, match="no"):
            client.seal(PRESENT, wait=True)
        with pytest.raises(p.ProtocolError, match="malformed"):
            client.contains(ABSENT)


def test_threads_sharing_a_client_each_get_their_own_reply(scripted: Scripted) -> None:
    calls = 300
    with blocking(scripted) as client:
        results: dict[bytes, list[bool]] = {}

        def ask(oid: bytes) -> None:
            results[oid] = [client.contains(oid) for _ in range(calls)]

        threads = [threading.Thread(target=ask, args=(oid,)) for oid in (PRESENT, ABSENT)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {PRESENT: [True] * calls, ABSENT: [False] * calls}


async def test_trio_plain_calls_and_a_cancelled_one(scripted: Scripted) -> None:
    """The trio client: plain calls answered; one cancelled while its reply is on its way
    leaves nothing behind, and the next call gets its own reply."""
    release = threading.Event()

    def held(msg: Any) -> bytes:
        if isinstance(msg, p.Contains) and msg.id == ABSENT:
            release.wait(10)  # the reply comes once the call was cancelled
        return contained(msg)

    async with plasma.aio.connect(scripted.path) as client:
        assert await client.contains(PRESENT) is True
        await client.seal(PRESENT, wait=True)
        scripted.answer = held
        with trio.CancelScope() as scope:
            scope.cancel()  # (cancelled at its first checkpoint: the wait for the reply)
            await client.contains(ABSENT)
        assert scope.cancelled_caught
        release.set()
        assert await client.contains(PRESENT) is True
        with trio.move_on_after(0):
            await client.seal(PRESENT, wait=True)
        assert await client.contains(ABSENT) is False
    assert [type(m) for m in scripted.requests()] == [p.Contains, p.Seal] + [p.Contains] * 2 + [
        p.Seal,
        p.Contains,
    ]
