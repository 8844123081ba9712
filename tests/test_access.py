"""Access control: uids allowed read-only (``--allow-uid UID``), read-write (``UID:rw``), or not.

Clients of other uids are Python processes started as root that import everything they need,
then drop to that uid (the interpreter lives under /root, which other uids cannot search) and
print their findings as JSON on a ``RESULT`` line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import plasma
import plasma.client  # imported before the uid drops: the interpreter lives under /root
from plasma.cli import build_parser
from plasma.cli.serve import config_from_args
from plasma.errors import BadRequest
from plasma.linux import memfd
from plasma.segments import SegmentPool
from tests.conftest import REPO, RunningCoordinator, start_coordinator, wait_until

READ_ONLY_UID, READ_WRITE_UID, STRANGER_UID = 65534, 65533, 65532
PWNED = b"PWNED!!!"
ORIGINAL = bytes(range(256)) * 64  # 16 KiB: spans pages, so every attack has a page to aim at

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to run clients as other uids")

_PRELUDE = """
import ctypes, errno, fcntl, json, mmap, os, socket, sys
import numpy as np
import plasma
import plasma.client  # imported before the uid drops: the interpreter lives under /root
from plasma import protocol as p
from plasma.linux.fdpass import received_fds

PWNED = b"PWNED!!!"
libc = ctypes.CDLL(None, use_errno=True)
out = {}

def attempt(name, action):
    '''Record (and print at once, in case a later one crashes us) how ``action`` failed: an
    errno name, an error code, an exception type, or "succeeded".'''
    try:
        action()
    except plasma.PlasmaError as exc:
        out[name] = f"{exc.code}: {exc}"
    except OSError as exc:
        out[name] = errno.errorcode[exc.errno] if exc.errno else f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        out[name] = type(exc).__name__
    else:
        out[name] = "succeeded"
    print(f"{name}: {out[name]}", flush=True)

def check(result):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))

def address(buffer):
    return np.frombuffer(buffer, np.uint8).__array_interface__["data"][0]

def mapping_perms(addr):
    '''The permissions ("r--s", "rw-s", ...) of the mapping holding ``addr``.'''
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(x, 16) for x in span.split("-"))
            if start <= addr < end:
                return perms
    return None

def done():
    print("RESULT " + json.dumps(out), flush=True)

os.setgroups([])
os.setgid(int(sys.argv[1]))
os.setuid(int(sys.argv[1]))
"""


def run_as(
    uid: int, body: str, *args: str, stdin: int | None = None, pass_fds: Sequence[int] = ()
) -> subprocess.Popen[str]:
    """Start ``body`` (after the prelude) as ``uid`` with ``sys.argv[2:] == args``."""
    return subprocess.Popen(
        [sys.executable, "-c", _PRELUDE + body, str(uid), *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        pass_fds=pass_fds,
    )


def result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, stderr = proc.communicate(timeout=60)
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"status {proc.returncode}\n{stdout}\n{stderr}"
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


@pytest.fixture
def public_dir() -> Iterator[str]:
    """A directory other uids may search (but not list): pytest's tmp_path is 0700."""
    path = tempfile.mkdtemp(prefix="plasma-access-")
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def shared(public_dir: str) -> Iterator[RunningCoordinator]:
    """A coordinator that lets READ_ONLY_UID read and READ_WRITE_UID write."""
    coord = start_coordinator(
        os.path.join(public_dir, "plasma.sock"),
        *("--memory", "32MiB", "--segment-size", "4MiB"),
        *("--allow-uid", str(READ_ONLY_UID), "--allow-uid", f"{READ_WRITE_UID}:rw"),
    )
    yield coord
    assert coord.stop() == 0


def owner_object(client: plasma.Client, name: str, data: bytes = ORIGINAL) -> plasma.ObjectID:
    """A sealed object of the owner, created and filled in place (no serialization header)."""
    object_id = plasma.ObjectID.from_name(name)
    client.create(object_id, len(data))[:] = data
    client.seal(object_id)
    return object_id


# ------------------------------------------------------------------ units


def test_memfds_are_mode_0600() -> None:
    fd = memfd.memfd_create("plasma-test")
    try:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    finally:
        os.close(fd)
    pool = SegmentPool(bind=False)
    segment = pool.get(pool.new_segment(0, 1 << 20))
    assert stat.S_IMODE(os.fstat(segment.fd).st_mode) == 0o600
    pool.close()


def test_reopened_fd_is_read_only_and_cannot_be_mapped_writable() -> None:
    fd = memfd.memfd_create("plasma-test")
    try:
        os.ftruncate(fd, mmap.PAGESIZE)
        ro = memfd.reopen_read_only(fd)
        try:
            assert os.fstat(ro).st_ino == os.fstat(fd).st_ino
            assert fcntl.fcntl(ro, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
            assert fcntl.fcntl(ro, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            with pytest.raises(PermissionError):
                mmap.mmap(ro, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            with pytest.raises(OSError) as info:
                os.write(ro, b"x")
            assert info.value.errno == errno.EBADF
        finally:
            os.close(ro)
    finally:
        os.close(fd)


def test_segment_reopens_read_only_once_and_closes_it_when_freed() -> None:
    pool = SegmentPool(bind=False)
    seg_id = pool.new_segment(0, 1 << 20)
    segment = pool.get(seg_id)
    ro = segment.read_only_fd()
    assert segment.read_only_fd() == ro
    assert fcntl.fcntl(ro, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    assert segment.info(writable=False).writable is False
    pool.free_segment(seg_id)
    for fd in (segment.fd, ro):
        with pytest.raises(OSError) as info:
            os.fstat(fd)
        assert info.value.errno == errno.EBADF


def test_allow_uid_parses_read_only_and_rw() -> None:
    argv = ["serve", "--allow-uid", "1000", "--allow-uid", "1001:rw", "--allow-uid", "1000"]
    config = config_from_args(build_parser("serve").parse_args(argv))
    assert config.allow_uids == {1000: False, 1001: True}
    conflicting = ["serve", "--allow-uid", "1000", "--allow-uid", "1000:rw"]
    with pytest.raises(BadRequest, match="uid 1000 is given both read-only and read-write"):
        config_from_args(build_parser("serve").parse_args(conflicting))


@pytest.mark.parametrize("bad", ["nobody", "-1", "1000:w", "1000:", ":rw", "1000:rw:rw", ""])
def test_bad_allow_uid_names_the_value(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser("serve").parse_args(["serve", "--allow-uid", bad])
    assert f"argument --allow-uid: {bad!r} is not UID" in capsys.readouterr().err


# ------------------------------------------------------------------ clients of other uids

_REOPEN = """
for name, fd in zip(("kernel_default", "plasma"), map(int, sys.argv[2:])):
    attempt(name, lambda: os.open(f"/proc/self/fd/{fd}", os.O_RDWR))
done()
"""


@needs_root
def test_mode_0600_is_what_stops_a_read_only_fd_being_reopened_writable() -> None:
    """Why memfds are fchmodded: holding a read-only fd of a memfd left at the kernel's
    default mode is enough to reopen it read-write."""
    kernel_default = os.memfd_create("plasma-test-default")
    ours = memfd.memfd_create("plasma-test")
    ro_fds = [memfd.reopen_read_only(kernel_default), memfd.reopen_read_only(ours)]
    try:
        assert stat.S_IMODE(os.fstat(kernel_default).st_mode) & 0o006 == 0o006
        proc = run_as(READ_ONLY_UID, _REOPEN, *map(str, ro_fds), pass_fds=ro_fds)
        assert result(proc) == {"kernel_default": "succeeded", "plasma": "EACCES"}
    finally:
        for fd in (kernel_default, ours, *ro_fds):
            os.close(fd)


_READ_ONLY_CLIENT = """
path, target, spare = sys.argv[2], bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])
new = b"n" * 20

with plasma.connect(path) as c:
    view = c.get(target, timeout=5)
    out["read"] = bytes(view).hex()
    out["mapping"] = mapping_perms(address(view))
    def overwrite_view():
        view[:8] = PWNED
    attempt("write_view", overwrite_view)
    def seal():
        c.seal(target)
        c.flush()
    requests = {
        "create": lambda: c.create(new, 10),
        "create_many": lambda: c.create_and_seal_many([(new, b"x" * (2 << 20), b"")]),
        "arena": lambda: c.put(b"small", new),
        "seal": seal,
        "abort": lambda: c.abort(target),
        "delete": lambda: c.delete([target, spare]),
        "evict": lambda: c.evict(1 << 30),
        "register_task": lambda: c.register_task("t", os.getpid()),
        "submit_sample": lambda: c.submit_sample("t", {}),
        "run_call": lambda: c.run_call("run", None),
    }
    for name, request in requests.items():
        attempt(name, request)
    out["still_connected"] = [c.contains(target), target.hex() in {o.hex() for o in c.list()}]
    out["stats"] = "clients" in c.stats()
    del view
    c.flush()

# The raw protocol, to hold the segment fd itself.
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.settimeout(10)
decoder = p.FrameDecoder(p.Reply, 1 << 30)
fds = []
def request(msg):
    s.sendall(p.encode(msg))
    while (reply := decoder.next_message()) is None:
        data, anc, flags, _ = s.recvmsg(1 << 16, socket.CMSG_SPACE(16 * 4))
        if not data:
            raise ConnectionError("the coordinator hung up")
        fds.extend(received_fds(anc, flags))
        decoder.feed(data)
    return reply

tables = request(p.Connect(seq=1, protocol_version=p.PROTOCOL_VERSION)).tables
# the directory (read-only) and this client's own pin table; no access bytes to write
out["tables"] = [tables.directory_size > 0, tables.access_size, tables.pin_size > 0]
directory_fd, _ = fds
fds.clear()
got = request(p.Get(seq=2, ids=[target], timeout=5))
(loc,) = got.results
(segment,) = got.segments
(fd,) = fds
out["segment_writable"] = segment.writable
out["fd_access"] = {os.O_RDONLY: "O_RDONLY", os.O_RDWR: "O_RDWR"}[
    fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
]
memfd = os.stat(f"/proc/self/fd/{fd}")  # through the link, as a reopen would go
out["memfd"] = [oct(memfd.st_mode & 0o777), memfd.st_uid]
page = loc.offset - loc.offset % mmap.PAGESIZE

def map_writable():
    mm = mmap.mmap(fd, segment.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    mm[loc.offset : loc.offset + 8] = PWNED
def reopen(flags):
    def action():
        reopened = os.open(f"/proc/self/fd/{fd}", flags)
        if flags != os.O_RDONLY:
            os.pwrite(reopened, PWNED, loc.offset)
    return action
def punch_hole():  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: zeroes the page
    check(libc.fallocate(fd, 3, ctypes.c_int64(page), ctypes.c_int64(mmap.PAGESIZE)))
readable = mmap.mmap(fd, segment.size, mmap.MAP_SHARED, mmap.PROT_READ)
base = address(readable)
def mprotect_writable():
    length = ctypes.c_size_t(segment.size)
    check(libc.mprotect(ctypes.c_void_p(base), length, mmap.PROT_READ | mmap.PROT_WRITE))
    ctypes.memmove(base + loc.offset, PWNED, len(PWNED))
def seal_arena():
    obj = p.ArenaObject(id=b"a" * 20, offset=loc.offset, data_size=8, metadata_size=0)
    reply = request(p.SealArena(seq=3, grant=1, objects=[obj], ack=True))
    if isinstance(reply, p.Error):
        raise plasma.errors.error_for(reply.code, reply.message)

def map_directory_writable():
    size = tables.directory_size
    mm = mmap.mmap(directory_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    mm[64:72] = PWNED
attacks = {
    "directory_map_writable": map_directory_writable,
    "directory_pwrite": lambda: os.pwrite(directory_fd, PWNED, 64),
    "directory_reopen_rdwr": lambda: os.open(f"/proc/self/fd/{directory_fd}", os.O_RDWR),
    "map_shared_writable": map_writable,
    "reopen_rdwr": reopen(os.O_RDWR),
    "reopen_wronly": reopen(os.O_WRONLY),
    "reopen_rdonly": reopen(os.O_RDONLY),
    "pwrite": lambda: os.pwrite(fd, PWNED, loc.offset),
    "fchmod": lambda: os.fchmod(fd, 0o666),
    "add_seals": lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE),
    "mprotect_writable": mprotect_writable,
    "seal_arena": seal_arena,
    "madv_remove": lambda: readable.madvise(mmap.MADV_REMOVE, page, mmap.PAGESIZE),
    "punch_hole": punch_hole,
    "ftruncate": lambda: os.ftruncate(fd, 0),  # last: on success the segment is gone
}
for name, action in attacks.items():
    attempt(name, action)
done()
"""

DENIED = f"permission_denied: uid {READ_ONLY_UID} has read-only access to this store"
GRANT = f"`serve --allow-uid {READ_ONLY_UID}:rw`"


@needs_root
def test_read_only_uid_reads_and_cannot_write_through_anything(shared: RunningCoordinator):
    """The regression of the audit: a client of an allowed uid overwrote a sealed object."""
    with plasma.connect(shared.socket) as owner:
        target = owner_object(owner, "target")
        spare = plasma.ObjectID.from_name("spare")  # sealed and unreferenced: evictable
        owner.create_and_seal(spare, b"spare")
        owner.flush()
        before, used = owner.list(), owner.stats()["used"]

        found = result(
            run_as(READ_ONLY_UID, _READ_ONLY_CLIENT, shared.socket, target.hex(), spare.hex())
        )

        assert bytes.fromhex(found.pop("read")) == ORIGINAL
        assert found.pop("mapping") == "r--s"  # mapped PROT_READ
        assert found.pop("write_view") == "TypeError"
        for request in (
            "create",
            "create_many",
            "arena",
            "seal",
            "abort",
            "delete",
            "evict",
            "register_task",
            "submit_sample",
            "run_call",
            "seal_arena",
        ):
            answer = found.pop(request)
            assert answer.startswith(DENIED) and GRANT in answer, (request, answer)
        assert found.pop("still_connected") == [True, True]
        assert found.pop("stats") is True
        # the descriptors it was sent, and the memfds behind them, cannot be turned writable
        assert found == {
            "tables": [True, 0, True],
            "directory_map_writable": "EACCES",
            "directory_pwrite": "EBADF",
            "directory_reopen_rdwr": "EACCES",
            "segment_writable": False,
            "fd_access": "O_RDONLY",
            "memfd": [oct(0o600), os.getuid()],
            "map_shared_writable": "EACCES",
            "reopen_rdwr": "EACCES",
            "reopen_wronly": "EACCES",
            "reopen_rdonly": "EACCES",  # mode 0600: not even a second read-only open
            "pwrite": "EBADF",
            "ftruncate": "EINVAL",
            "punch_hole": "EBADF",
            "fchmod": "EPERM",
            "add_seals": "EPERM",
            "mprotect_writable": "EACCES",
            "madv_remove": "EACCES",
        }

        wait_until(lambda: owner.list() == before, what="the read-only client's refs to go")
        assert owner.stats()["used"] == used
        assert bytes(owner.get(target)) == ORIGINAL
    with plasma.connect(shared.socket) as third:
        assert bytes(third.get(target, timeout=5)) == ORIGINAL


_RAW_WRITE = """
with plasma.connect(sys.argv[2]) as c:
    view = c.get(bytes.fromhex(sys.argv[3]), timeout=5)
    print("writing", flush=True)
    ctypes.memmove(address(view), PWNED, len(PWNED))
    print("wrote", flush=True)
"""


@needs_root
def test_read_only_mapping_faults_on_a_raw_write(shared: RunningCoordinator) -> None:
    with plasma.connect(shared.socket) as owner:
        target = owner_object(owner, "target")
        proc = run_as(READ_ONLY_UID, _RAW_WRITE, shared.socket, target.hex())
        stdout, _ = proc.communicate(timeout=60)
        assert stdout == "writing\n"
        assert proc.returncode == -11  # SIGSEGV: the page is not writable
        assert bytes(owner.get(target)) == ORIGINAL


_SUBSCRIBER = """
with plasma.connect(sys.argv[2]) as c:
    sub = c.subscribe(with_locations=True)
    print("subscribed", flush=True)
    sys.stdin.readline()
    note = sub.next(timeout=10)
    view = c.get(note.id)  # from the notification's location: no round trip
    out.update(kind=note.kind, data=bytes(view).decode(), mapping=mapping_perms(address(view)))
done()
"""


@needs_root
def test_read_only_subscriber_maps_notified_segments_read_only(shared: RunningCoordinator):
    proc = run_as(READ_ONLY_UID, _SUBSCRIBER, shared.socket, stdin=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "subscribed\n"
    with plasma.connect(shared.socket) as owner:
        owner_object(owner, "news", b"fresh")
        owner.flush()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert result(proc) == {"kind": "sealed", "data": "fresh", "mapping": "r--s"}


_WRITER = """
small, large = bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])
with plasma.connect(sys.argv[2]) as c:
    c.put(b"small from rw", small)  # through the arena
    buf = c.create(large, 2 << 20)
    buf[:5] = b"large"
    out["mapping"] = mapping_perms(address(buf))
    c.seal(large)
    c.flush()
done()
"""


@needs_root
def test_read_write_uid_can_put(shared: RunningCoordinator) -> None:
    small, large = plasma.ObjectID.from_name("small"), plasma.ObjectID.from_name("large")
    writer = run_as(READ_WRITE_UID, _WRITER, shared.socket, small.hex(), large.hex())
    assert result(writer) == {"mapping": "rw-s"}
    with plasma.connect(shared.socket) as owner:
        assert owner.get_object(small, timeout=5) == b"small from rw"
        assert bytes(owner.get(large)[:5]) == b"large"


_CONNECT = """
attempt("connect", lambda: plasma.connect(sys.argv[2]))
done()
"""


_HANDSHAKE = """
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[2])
s.settimeout(10)
s.sendall(p.encode(p.Connect(seq=1, protocol_version=p.PROTOCOL_VERSION)))
data = b""
while chunk := s.recv(1 << 16):
    data += chunk
decoder = p.FrameDecoder(p.Reply)
decoder.feed(data)
(reply,) = decoder.messages()  # then the coordinator hung up
out["reply"] = f"{reply.code}: {reply.message}"
done()
"""


@needs_root
def test_uid_not_allowed_is_refused_at_connect(shared: RunningCoordinator) -> None:
    answer = result(run_as(STRANGER_UID, _HANDSHAKE, shared.socket))["reply"]
    assert answer.startswith(f"permission_denied: uid {STRANGER_UID} may not use this store")
    assert f"--allow-uid {STRANGER_UID}:rw" in answer


@needs_root
def test_allowed_uids_need_a_shared_socket_in_a_searchable_directory(public_dir: str):
    private = os.path.join(public_dir, "private")
    os.mkdir(private, 0o700)
    socket_path = os.path.join(private, "plasma.sock")
    coord = start_coordinator(socket_path, "--memory", "8MiB", "--allow-uid", str(READ_ONLY_UID))
    try:
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o666  # SO_PEERCRED gates the rest
        refused = result(run_as(READ_ONLY_UID, _CONNECT, socket_path))["connect"]
        assert refused.startswith("disconnected: ") and "Permission denied" in refused, refused
        os.chmod(private, 0o711)
        assert result(run_as(READ_ONLY_UID, _CONNECT, socket_path)) == {"connect": "succeeded"}
    finally:
        assert coord.stop() == 0
    assert (
        f"uid {READ_ONLY_UID} cannot reach {socket_path}: it may not search directory {private}"
        in coord.log()
    )
