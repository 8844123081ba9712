"""Where features meet, with a real coordinator: the crash, leak and corruption paths of the
round-3 audits (issue 26), each reproduced; sans-I/O ones are in test_store_integrity.py."""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable

import numpy as np
import pytest

import plasma
from plasma import protocol as p
from tests.conftest import RunningCoordinator, start_coordinator
from tests.helpers import RawClient, oid
from tests.test_access import READ_ONLY_UID, needs_root, public_dir, result, run_as  # noqa: F401

Factory = Callable[..., RunningCoordinator]


def shrink(fd: int) -> str:
    """What ``ftruncate(fd, 0)`` did: "shrunk", or the errno's name."""
    try:
        os.ftruncate(fd, 0)
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    return "shrunk"


def alive_after_scans(coord: RunningCoordinator) -> None:
    """Make the coordinator scan every pin table (a delete, a listing) and answer."""
    with plasma.connect(coord.socket) as c:
        ids = [c.put(np.arange(1000)) for _ in range(3)]
        held = c.get(ids[0])
        c.delete(ids)  # one pinned: its delete waits for rescans
        assert not set(ids) & set(c.list())
        del held
        c.flush()
        assert c.stats()["dying"] == 0
    assert coord.proc.poll() is None


def test_no_file_a_client_was_given_can_be_shrunk(coordinator: RunningCoordinator):
    """Finding 1: shrinking the pin table (or the access bytes, a segment) made the
    coordinator's next pin scan, and every reader, die of SIGBUS."""
    with RawClient(coordinator.socket) as raw, plasma.connect(coordinator.socket) as c:
        connected = raw.connect()
        assert connected.tables is not None
        directory, access, pins = raw.take_fds()
        c.create_and_seal(oid(1), b"x" * 100_000)
        c.flush()
        got = raw.request(p.Get(seq=0, ids=[oid(1)], timeout=5))
        assert isinstance(got, p.Got)
        (segment,) = raw.take_fds()
        outcome = {name: shrink(fd) for name, fd in [("pins", pins), ("access", access)]}
        outcome["segment"] = shrink(segment)
        outcome["directory"] = shrink(directory)  # read-only: not even writable
        assert outcome == {
            "pins": "EPERM",
            "access": "EPERM",
            "segment": "EPERM",
            "directory": "EINVAL",
        }
        for fd in (directory, access, pins, segment):
            os.close(fd)
        # and a client's own map of its pin table cannot be resized either
        with pytest.raises(OSError):
            c._core._pin_map.resize(64)  # type: ignore[union-attr]
        alive_after_scans(coordinator)


_SHRINK_AS_READER = """
path = sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.sendall(p.encode(p.Connect(seq=1, protocol_version=p.PROTOCOL_VERSION)))
decoder = p.FrameDecoder(p.Reply, 1 << 30)
fds = []
while decoder.next_message() is None:
    data, anc, flags, _ = s.recvmsg(1 << 16, socket.CMSG_SPACE(16 * 4))
    fds.extend(received_fds(anc, flags))
    decoder.feed(data)
directory, pins = fds
attempt("pins", lambda: os.ftruncate(pins, 0))
attempt("directory", lambda: os.ftruncate(directory, 0))
done()
"""


@needs_root
def test_a_read_only_other_uid_cannot_shrink_its_pin_table(public_dir: str):  # noqa: F811
    """Finding 1, as the audit found it: any client, even a read-only other uid."""
    coord = start_coordinator(
        os.path.join(public_dir, "plasma.sock"),
        *("--memory", "32MiB", "--allow-uid", str(READ_ONLY_UID)),
    )
    try:
        outcome = result(run_as(READ_ONLY_UID, _SHRINK_AS_READER, coord.socket))
        assert outcome == {"pins": "EPERM", "directory": "EINVAL"}
        alive_after_scans(coord)
    finally:
        assert coord.stop() == 0


def test_pages_of_a_shrunk_map_cannot_fault_the_coordinator(coordinator: RunningCoordinator):
    """mmap.resize on the client's own maps is how the audit shrank the files: each is
    refused, and the coordinator keeps serving."""
    with plasma.connect(coordinator.socket) as c:
        c.put(np.ones(1 << 16))
        core = c._core
        _, access = core._table_maps
        for mm in [*core.maps.values(), access, core._pin_map]:  # (the directory: read-only)
            assert isinstance(mm, mmap.mmap)
            with pytest.raises(OSError) as refused:
                mm.resize(mmap.PAGESIZE)
            assert refused.value.errno == errno.EPERM
    alive_after_scans(coordinator)
