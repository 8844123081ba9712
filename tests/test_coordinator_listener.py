"""Where clients come in (plasma.coordinator.listener), without a coordinator: the socket
file, a newcomer's credentials, and the refusal of one too many."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from plasma import errors
from plasma import protocol as p
from plasma.coordinator.listener import Credentials, Listener, listen


def test_the_socket_is_private_and_replaces_only_a_stale_one(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a socket file nobody answers on
    sock = listen(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with pytest.raises(errors.BadRequest, match="in use by a running coordinator"):
            listen(path)
    finally:
        sock.close()


def test_another_file_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    with pytest.raises(errors.BadRequest, match="is not a socket"):
        listen(str(path))
    assert path.read_text() == "precious"


async def _error_frame(client: trio.SocketStream) -> p.Error:
    decoder = p.FrameDecoder(p.Reply)
    while (msg := decoder.next_message()) is None:
        data = await client.receive_some()
        assert data, "closed before an Error came"
        decoder.feed(data)
    assert isinstance(msg, p.Error)
    return msg


async def test_a_newcomer_is_served_with_its_credentials_and_one_too_many_refused(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "s.sock")
    listener = Listener(path, max_clients=1)
    served: list[Credentials] = []
    release = trio.Event()

    async def serve_peer(conn: socket.socket, creds: Credentials) -> None:
        served.append(creds)
        await release.wait()
        conn.close()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.accept_loop, nursery, serve_peer)
            first = await trio.open_unix_socket(path)
            while not served:
                await trio.testing.wait_all_tasks_blocked()
            assert served == [(os.getpid(), os.getuid(), os.getgid())]
            assert listener.connections == 1
            second = await trio.open_unix_socket(path)
            refused = await _error_frame(second)
            assert refused.code == errors.STORE_FULL and "--max-clients" in refused.message
            release.set()
            await trio.testing.wait_all_tasks_blocked()
            assert listener.connections == 0
            await first.aclose()
            await second.aclose()
            nursery.cancel_scope.cancel()
    finally:
        listener.close()
    assert not os.path.exists(path)
