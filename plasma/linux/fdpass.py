"""File descriptors over Unix sockets (SCM_RIGHTS), both directions, in one place.

The coordinator sends each segment's descriptor with the first reply that references it;
the clients receive them close-on-exec and check that none were dropped: a message whose
descriptors did not fit the receive buffer (``MSG_CTRUNC``) is an error, never a segment
silently missing.
"""

from __future__ import annotations

import array
import os
import socket

from plasma.errors import PlasmaError

MAX_FDS = 253  # the kernel's SCM_MAX_FD: the most one message can carry
MAX_FDS_PER_SEND = 250  # what the coordinator puts in one sendmsg, under MAX_FDS
ANCILLARY_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC)  # received descriptors are close-on-exec
_CTRUNC = int(socket.MSG_CTRUNC)  # (plain ints: flag enums cost microseconds per operation)


def scm_rights(fds: list[int]) -> list[tuple[int, int, array.array]]:
    """The ancillary data of a ``sendmsg`` that passes ``fds`` (nothing when empty)."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


def bytes_alone(ancdata: list[tuple[int, int, bytes]], msg_flags: int) -> bool:
    """True when a ``recvmsg`` with :data:`RECV_FLAGS` brought bytes and nothing else: no
    descriptor, none cut off. (``msg_flags`` is never 0 then: the kernel starts it from
    the flags given, so it carries ``MSG_CMSG_CLOEXEC`` back.)"""
    return not ancdata and not msg_flags & _CTRUNC


def received_fds(ancdata: list[tuple[int, int, bytes]], msg_flags: int) -> list[int]:
    """The descriptors a ``recvmsg`` returned, in order.

    Raises PlasmaError, after closing those that did arrive, when the kernel truncated them.
    """
    fds: list[int] = []
    if bytes_alone(ancdata, msg_flags):  # the common case: a reply without descriptors
        return fds
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    if msg_flags & _CTRUNC:
        for fd in fds:
            os.close(fd)
        raise PlasmaError("segment descriptors were truncated (more than one message can carry)")
    return fds
