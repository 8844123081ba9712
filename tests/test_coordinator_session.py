"""One client's outbox (plasma.coordinator.session), without a coordinator: frames go out in
order with their fds, owned fds are closed once sent or dropped, and what the socket does
not take waits for the writer."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from plasma import protocol as p
from plasma.coordinator.session import Session
from plasma.linux.fdpass import MAX_FDS_PER_SEND, RECV_FLAGS, received_fds

CREDS = (os.getpid(), os.getuid(), os.getgid())


@pytest.fixture
def pair() -> Iterator[tuple[Session, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    session = Session(ours, 1, CREDS, p.DEFAULT_MAX_FRAME)
    yield session, theirs
    ours.close()
    theirs.close()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_frames_go_out_in_order_with_their_fds(pair) -> None:
    session, peer = pair
    kept_r, kept_w = os.pipe()
    owned_r, owned_w = os.pipe()
    session.send(p.Ok(seq=1), [kept_r])
    session.send(p.Ok(seq=2), [owned_r], owned=True)
    session.send(p.Ok(seq=3))
    assert session.unsent > 0
    session.flush()
    assert session.unsent == 0
    assert _is_open(kept_r) and not _is_open(owned_r)  # (before recvmsg reuses the number)
    data, ancdata, flags, _ = peer.recvmsg(
        1 << 16, socket.CMSG_SPACE(MAX_FDS_PER_SEND * 4), RECV_FLAGS
    )
    fds = received_fds(ancdata, flags)
    decoder = p.FrameDecoder(p.Reply)
    decoder.feed(data)
    assert [decoder.next_message().seq for _ in range(3)] == [1, 2, 3]
    assert len(fds) == 2
    for fd in (*fds, kept_r, kept_w, owned_w):
        os.close(fd)


def test_what_was_not_sent_is_dropped_with_its_owned_fds(pair) -> None:
    session, _ = pair
    owned_r, owned_w = os.pipe()
    session.send(p.Ok(seq=1), [owned_r], owned=True)
    session.drop_queue()
    assert session.unsent == 0 and not _is_open(owned_r)
    assert session.try_send()  # nothing left
    os.close(owned_w)


def test_what_the_socket_does_not_take_waits(pair) -> None:
    session, _ = pair
    big = p.RunResult(seq=1, payload=b"x" * (1 << 20))
    for _ in range(8):  # more than a socket buffer holds
        session.send(big)
    assert not session.try_send()
    assert 0 < session.unsent < 8 * len(p.encode(big))
