"""A bare trio echo server: the floor under a request/reply round trip through the coordinator.

``python -m bench.echo_server SOCKET`` listens on a Unix stream socket, prints ``ready`` once
it does, and writes every frame it receives back to its sender as soon as the frame is
complete, until it is terminated. Frames are plasma's: a 4-byte little-endian payload length,
then the payload (:data:`plasma.protocol.HEADER`). A connection is served as the coordinator
serves a session, minus the decoding and the work: wait until readable, ``recv_into`` a reused
buffer, split off the complete frames, send them back with a non-blocking send.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Sequence

import trio

from plasma.protocol import HEADER

RECV_SIZE = 1 << 16


def complete_frames(data: bytes | bytearray) -> int:
    """How many leading bytes of ``data`` are whole frames."""
    pos = 0
    while len(data) - pos >= HEADER.size:
        (length,) = HEADER.unpack_from(data, pos)
        if len(data) - pos - HEADER.size < length:
            break
        pos += HEADER.size + length
    return pos


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def _echo(sock: socket.socket) -> None:
    """Echo the frames of one connection until its client hangs up."""
    buf = memoryview(bytearray(RECV_SIZE))
    pending = bytearray()
    with sock:
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                size = sock.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not size:
                return
            pending += buf[:size]
            end = complete_frames(pending)
            if end:
                frames = bytes(pending[:end])
                del pending[:end]
                try:
                    await _send_all(sock, frames)
                except OSError:
                    return


async def serve(path: str) -> None:
    """Accept connections on ``path`` and echo each one's frames, until cancelled."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    listener.setblocking(False)
    print("ready", flush=True)
    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            nursery.start_soon(_echo, conn)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__)
    parser.add_argument("socket", help="the Unix socket to listen on")
    trio.run(serve, parser.parse_args(argv).socket)


if __name__ == "__main__":
    main()
