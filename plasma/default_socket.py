"""Where a coordinator is found when no socket path is given.

``$PLASMA_COORD_SOCKET`` when it is set (and not empty), else :data:`DEFAULT_SOCKET`. The
command line (``serve`` listens there, ``stats`` connects there) and both clients
(``plasma.connect()`` / ``plasma.aio.connect()`` without a path) use the same rule, and a
failure to connect names the path and why it was chosen.
"""

from __future__ import annotations

import contextlib
import os
import socket

__all__ = ["DEFAULT_SOCKET", "SOCKET_ENV", "describe", "found", "resolve"]

DEFAULT_SOCKET = "/tmp/plasma-coord.sock"
SOCKET_ENV = "PLASMA_COORD_SOCKET"


def resolve(socket_path: str | None = None) -> str:
    """``socket_path`` if given, else ``$PLASMA_COORD_SOCKET``, else the default path."""
    if socket_path is not None:
        return socket_path
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def describe(socket_path: str | None) -> str:
    """The path ``resolve(socket_path)`` chose and why, for error messages."""
    if socket_path is not None:
        return socket_path
    from_env = os.environ.get(SOCKET_ENV)
    if from_env:
        return f"{from_env} (from ${SOCKET_ENV}; the default {DEFAULT_SOCKET} is not tried)"
    return f"{DEFAULT_SOCKET} (the default path; ${SOCKET_ENV} is not set)"


def found() -> str | None:
    """For commands that start a coordinator of their own when they find none (``dag run``,
    ``dask-worker``): ``$PLASMA_COORD_SOCKET`` when it is set, else the default path when a
    coordinator listens there, else None."""
    from_env = os.environ.get(SOCKET_ENV)
    if from_env:
        return from_env
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(DEFAULT_SOCKET)
        return DEFAULT_SOCKET
    return None
