"""Where clients come in (internal): the listening socket, the accept loop and the last
words to a connection that will not be served.

:class:`Listener` owns the socket file (mode 0600, a stale one replaced), the count of
open connections, a reserve descriptor to refuse newcomers with when the process is out of
them, and each newcomer's peer credentials; a connection it accepts is handed on with
them. It must never read a request: what a connection may do, and what it is answered, is
the coordinator's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable

import trio

from plasma import errors
from plasma import protocol as p
from plasma.coordinator.session import RECV_SIZE, Session
from plasma.errors import PlasmaError
from plasma.linux.fdlimit import EXHAUSTED, FdReserve, raise_nofile_limit
from plasma.linux.peercred import peer_credentials

__all__ = ["HANG_UP_GRACE", "Listener", "hang_up", "listen", "refuse"]

log = logging.getLogger("plasma.coordinator")

HANG_UP_GRACE = 2.0  # seconds a refused peer gets to read our last Error before we close
EXHAUSTED_PAUSE = 0.05  # seconds between accepts while out of descriptors, not to spin

Credentials = tuple[int, int, int]  # pid, uid, gid
ServePeer = Callable[[socket.socket, Credentials], Awaitable[None]]


class Listener:
    """The listening socket at ``path``; at most ``max_clients`` connections at once,
    handshaking ones included."""

    def __init__(self, path: str, max_clients: int) -> None:
        raise_nofile_limit()
        self.path = path
        self.max_clients = max_clients
        self.connections = 0  # accepted and not yet closed
        self._sock = listen(path)
        self._reserve = FdReserve()

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        self._reserve.close()
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def accept_loop(self, nursery: trio.Nursery, serve_peer: ServePeer) -> None:
        """Accept clients for ever, each served by ``serve_peer`` in ``nursery``. Out of
        descriptors, the listener spends its reserve one to tell the newcomer why and close
        it (the queued connection would otherwise make accept fail again at once); past
        ``max_clients`` it refuses likewise."""
        exhausted = False
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno not in EXHAUSTED:
                    log.warning("accept failed: %s", exc)
                    continue
                if not exhausted:
                    log.error("out of file descriptors (%s): refusing new clients", exc)
                    exhausted = True
                if not self._reserve.release():
                    self._reserve.restore()  # spent earlier: take it back when one frees
                    await trio.sleep(EXHAUSTED_PAUSE)
                    continue
                try:
                    conn, _ = self._sock.accept()
                except OSError:
                    self._reserve.restore()
                    continue
                refuse(conn, errors.STORE_FULL, f"the coordinator is out of descriptors ({exc})")
                self._reserve.restore()
                continue
            exhausted = False
            if self.connections >= self.max_clients:
                refuse(
                    conn,
                    errors.STORE_FULL,
                    f"the coordinator serves at most {self.max_clients} clients "
                    "(serve --max-clients)",
                )
                continue
            self.connections += 1
            nursery.start_soon(self._serve, conn, serve_peer)

    async def _serve(self, conn: socket.socket, serve_peer: ServePeer) -> None:
        """Serve one accepted connection: only one whose peer is known (its credentials)."""
        try:
            conn.setblocking(False)
            try:
                creds = peer_credentials(conn)
            except PlasmaError as exc:
                log.warning("refused a client whose credentials are unknown: %s", exc)
                conn.close()
                return
            await serve_peer(conn, creds)
        finally:
            self.connections -= 1


def listen(path: str) -> socket.socket:
    """A non-blocking listening socket at ``path``, mode 0600. Only a stale socket (one no
    coordinator answers on) is replaced; any other file there is an error."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISSOCK(mode):
        raise errors.BadRequest(f"{path} exists and is not a socket: refusing to replace it")
    if mode is not None:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # left behind by a coordinator that died
        else:
            raise errors.BadRequest(f"{path} is in use by a running coordinator")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def refuse(conn: socket.socket, code: str, message: str) -> None:
    """Tell a connection that will not be served why, and close it, without waiting."""
    try:
        conn.setblocking(False)
        conn.send(p.encode(p.Error(seq=0, code=code, message=message)))
        conn.shutdown(socket.SHUT_WR)
        conn.recv(RECV_SIZE)  # what it sent already, so that closing does not reset it
    except OSError:
        pass
    finally:
        conn.close()


async def hang_up(session: Session) -> None:
    """Deliver the final Error, then close gracefully.

    Closing a socket with unread input makes the kernel send RST, which can destroy our reply
    before the peer reads it; so stop writing, discard input until the peer closes (or the
    grace period ends), and only then close.
    """
    with trio.move_on_after(HANG_UP_GRACE):
        while not session.try_send():
            await trio.lowlevel.wait_writable(session.sock)
        with contextlib.suppress(OSError):
            session.sock.shutdown(socket.SHUT_WR)
            while True:
                await trio.lowlevel.wait_readable(session.sock)
                try:
                    if not session.sock.recv(RECV_SIZE):
                        break
                except BlockingIOError:
                    continue
