"""Credentials of the process at the other end of a Unix socket (SO_PEERCRED)."""

from __future__ import annotations

import socket
import struct

from plasma.errors import BadRequest, Unsupported
from plasma.linux._syscall import os_error

_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the peer of a connected ``AF_UNIX`` socket."""
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is None:
        raise Unsupported("getsockopt(SO_PEERCRED): not available on this platform")
    if sock.family != socket.AF_UNIX:
        raise BadRequest(f"peer credentials need an AF_UNIX socket, got {sock.family!r}")
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, so_peercred, _UCRED.size)
    except OSError as exc:
        raise os_error(exc.errno or 0, "getsockopt(SO_PEERCRED)") from None
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid
