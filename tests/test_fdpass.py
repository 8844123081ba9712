"""Descriptor passing (plasma.linux.fdpass): in order, close-on-exec, truncation refused."""

from __future__ import annotations

import fcntl
import os
import socket

import pytest

from plasma.errors import PlasmaError
from plasma.linux.fdpass import (
    ANCILLARY_SPACE,
    RECV_FLAGS,
    bytes_alone,
    received_fds,
    scm_rights,
)


def _pipes(n: int) -> list[int]:
    fds = []
    for _ in range(n):
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    return fds


def test_descriptors_arrive_in_order_and_close_on_exec():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sent = _pipes(3)
    try:
        a.sendmsg([b"x"], scm_rights(sent))
        data, anc, flags, _ = b.recvmsg(16, ANCILLARY_SPACE, RECV_FLAGS)
        got = received_fds(anc, flags)
        assert data == b"x" and len(got) == 3
        for mine, theirs in zip(sent, got, strict=True):
            assert os.fstat(mine).st_ino == os.fstat(theirs).st_ino
            assert fcntl.fcntl(theirs, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            os.close(theirs)
        assert scm_rights([]) == []
    finally:
        for fd in sent:
            os.close(fd)
        a.close()
        b.close()


def test_bytes_alone_despite_the_flag_the_kernel_echoes():
    """A receive of bytes only is told apart from one with descriptors, though its flags
    are not 0 (the kernel hands MSG_CMSG_CLOEXEC back): the clients' fast path for a plain
    reply depends on it."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sent = _pipes(1)
    try:
        a.sendall(b"x")
        _, anc, flags, _ = b.recvmsg(16, ANCILLARY_SPACE, RECV_FLAGS)
        assert flags and bytes_alone(anc, flags) and received_fds(anc, flags) == []
        a.sendmsg([b"y"], scm_rights(sent))
        _, anc, flags, _ = b.recvmsg(16, ANCILLARY_SPACE, RECV_FLAGS)
        assert not bytes_alone(anc, flags)
        for fd in received_fds(anc, flags):
            os.close(fd)
    finally:
        os.close(sent[0])
        a.close()
        b.close()


def test_truncated_descriptors_are_an_error_and_none_leak():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sent = _pipes(8)
    try:
        a.sendmsg([b"x"], scm_rights(sent))
        before = set(os.listdir("/proc/self/fd"))
        _, anc, flags, _ = b.recvmsg(16, socket.CMSG_SPACE(2 * 4), RECV_FLAGS)  # room for 2
        with pytest.raises(PlasmaError, match="truncated"):
            received_fds(anc, flags)
        assert set(os.listdir("/proc/self/fd")) <= before  # the ones that did arrive: closed
    finally:
        for fd in sent:
            os.close(fd)
        a.close()
        b.close()
