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
from collections.abc import Iterator
from pathlib import Path

import pytest

import plasma
import plasma.client  # imported before the uid drops: the interpreter lives under /root
from bench.topologies import unpack
from plasma.cli import build_parser
from plasma.cli.serve import config_from_args
from plasma.errors import BadRequest, Unsupported
from plasma.hugepages import hugepage_counts
from plasma.linux import memfd
from plasma.segments import SegmentPool
from tests.conftest import RunningCoordinator, start_coordinator, wait_until
from tests.helpers import (
    HUGE,
    READ_ONLY_UID,
    READ_WRITE_UID,
    REPO,
    STRANGER_UID,
    needs_root,
    result,
    run_as,
)

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures

PWNED = b"PWNED!!!"
ORIGINAL = bytes(range(256)) * 64  # 16 KiB: spans pages, so every attack has a page to aim at


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
        "migrate": lambda: c.migrate(target, 0),
        "replicate": lambda: c.replicate(target, [0]),
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
request, fds, connected = raw_session(path)
tables = connected.tables
# the directory (read-only) and this client's own pin table; no access bytes to write
out["tables"] = [tables.directory_size > 0, tables.access_size, tables.pin_size > 0]
directory_fd, _ = fds
fds.clear()

def return_arenas():
    '''ReturnArena, sent without waiting, of every grant the owner may hold.'''
    returns = [p.ReturnArena(seq=10 + grant, grant=grant) for grant in range(1, 9)]
    raise_error(request(p.Sync(seq=20), *returns))
    for reply in request.others:
        raise_error(reply)
attempt("return_arena", return_arenas)
out["return_arena_answers"] = sorted(r.seq for r in request.others)
directory = mmap.mmap(directory_fd, tables.directory_size, mmap.MAP_SHARED, mmap.PROT_READ)
token = int.from_bytes(directory[48:56], "little")
for seq, (name, have) in enumerate({"forged": token ^ 0x5A5A, "current": token}.items(), 30):
    moved = request(p.Tables(seq=seq, have=have))  # new directory descriptors?
    out[f"tables_{name}"] = [type(moved).__name__, moved.tables is None, len(fds)]

got = request(p.Get(seq=2, ids=[target], timeout=5))
(loc,) = got.results
(segment,) = got.segments
(fd,) = fds

def seal_arena():
    obj = p.ArenaObject(id=b"a" * 20, offset=loc.offset, data_size=8, metadata_size=0)
    raise_error(request(p.SealArena(seq=3, grant=1, objects=[obj], ack=True)))

def map_directory_writable():
    size = tables.directory_size
    mm = mmap.mmap(directory_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    mm[64:72] = PWNED
attacks = {
    "directory_map_writable": map_directory_writable,
    "directory_pwrite": lambda: os.pwrite(directory_fd, PWNED, 64),
    "directory_reopen_rdwr": lambda: os.open(f"/proc/self/fd/{directory_fd}", os.O_RDWR),
    "seal_arena": seal_arena,
}
for name, action in attacks.items():
    attempt(name, action)
attack_segment(fd, segment, loc)
done()
"""

DENIED = f"permission_denied: uid {READ_ONLY_UID} has read-only access to this store"
GRANT = f"`serve --allow-uid {READ_ONLY_UID}:rw`"


# What every attack on a segment gets through the read-only descriptor a read-only uid was
# sent with an object (attack_segment): memfds of normal pages, hugetlb memfds, copies.
SEGMENT_ATTACKS_FAIL = {
    "segment_writable": False,
    "fd_access": "O_RDONLY",
    "memfd": [oct(0o600), os.getuid()],
    "map_shared_writable": "EACCES",
    "reopen_rdwr": "EACCES",
    "reopen_wronly": "EACCES",
    "reopen_rdonly": "EACCES",  # mode 0600: not even a second read-only open
    "pwrite": "EBADF",
    "write": "EBADF",
    "fchmod": "EPERM",
    "add_seals": "EPERM",
    "mprotect_writable": "EACCES",
    "madv_remove": "EACCES",
    "punch_hole": "EBADF",
    "fallocate_extend": "EBADF",
    "ftruncate_extend": "EINVAL",
    "ftruncate": "EINVAL",
}


def coordinator_log_is_clean(coord: RunningCoordinator) -> None:
    """After its stop: no traceback, no internal error (it logs one and carries on)."""
    log = coord.log()
    assert "Traceback" not in log and "internal error" not in log, log


@needs_root
def test_read_only_uid_reads_and_cannot_write_through_anything(shared: RunningCoordinator):
    """The regression of the audit: a client of an allowed uid overwrote a sealed object."""
    with plasma.connect(shared.socket) as owner:
        target = owner_object(owner, "target")
        spare = plasma.ObjectID.from_name("spare")  # sealed and unreferenced: evictable
        owner.create_and_seal(spare, b"spare")  # (through the owner's arena)
        owner.flush()
        before, stats = owner.list(), owner.stats()

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
            "migrate",
            "replicate",
            "register_task",
            "submit_sample",
            "run_call",
            "seal_arena",
            "return_arena",
        ):
            answer = found.pop(request)
            assert answer.startswith(DENIED) and GRANT in answer, (request, answer)
        # every ReturnArena was answered (refused), though a client never waits for one
        assert found.pop("return_arena_answers") == list(range(11, 19))
        assert found.pop("still_connected") == [True, True]
        assert found.pop("stats") is True
        assert bytes.fromhex(found.pop("read_after")) == ORIGINAL
        # the descriptors it was sent, and the memfds behind them, cannot be turned writable;
        # asking for the directory again (naming it, or forging its token) brings nothing
        assert found == {
            "tables": [True, 0, True],
            "tables_forged": ["TablesMoved", True, 0],
            "tables_current": ["TablesMoved", True, 0],
            "directory_map_writable": "EACCES",
            "directory_pwrite": "EBADF",
            "directory_reopen_rdwr": "EACCES",
            **SEGMENT_ATTACKS_FAIL,
        }

        wait_until(lambda: owner.list() == before, what="the read-only client's refs to go")
        after = owner.stats()
        assert [after["used"], after["arena_bytes"]] == [stats["used"], stats["arena_bytes"]]
        assert bytes(owner.get(target)) == ORIGINAL
        # the owner's arena is still its own: the next small put needs no new one
        arenas = after["operations"]["Arena"]
        owner.create_and_seal(plasma.ObjectID.from_name("after"), b"after")
        assert bytes(owner.get(plasma.ObjectID.from_name("after"), timeout=5)) == b"after"
        assert owner.stats()["operations"]["Arena"] == arenas
    with plasma.connect(shared.socket) as third:
        assert bytes(third.get(target, timeout=5)) == ORIGINAL


_MEMORY_ATTACK = """
path, target, cpus = sys.argv[2], bytes.fromhex(sys.argv[3]), json.loads(sys.argv[4])
request, fds, connected = raw_session(path, cpus)
fds.clear()
got = request(p.Get(seq=2, ids=[target], timeout=5))
(loc,) = got.results
(segment,) = got.segments
(fd,) = fds
link = os.readlink(f"/proc/self/fd/{fd}")
out["memory"] = ["memfd" if link.startswith("/memfd:") else "file", segment.page_size, loc.node]
moves = {
    "migrate": p.Migrate(seq=3, id=target, node=2),
    "replicate": p.Replicate(seq=4, id=target, nodes=[3]),
}
for name, msg in moves.items():
    attempt(name, lambda: raise_error(request(msg)))
attack_segment(fd, segment, loc)
done()
"""


@pytest.fixture
def hugepages() -> Iterator[None]:
    """Two free 2 MiB hugepages, reserved with ``plasma-coord hugepages`` if need be (the
    pool is set back afterwards); skips where the kernel grants none."""
    try:
        total, free = hugepage_counts(HUGE)
    except Unsupported as exc:
        pytest.skip(str(exc))
    wanted = total + max(0, 2 - free)

    def reserve(count: int) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "plasma", "hugepages", "--size", "2M", "--count"]
        return subprocess.run([*argv, str(count)], capture_output=True, text=True, cwd=REPO)

    if wanted != total:
        reserved = reserve(wanted)
        if reserved.returncode != 0:
            reserve(total)
            pytest.skip(f"no 2 MiB hugepages to be had here: {reserved.stdout}{reserved.stderr}")
    try:
        yield
    finally:
        if wanted != total:
            assert reserve(total).returncode == 0


@needs_root
@pytest.mark.parametrize("memory", ["fallback", "hugetlb", "replica"])
def test_read_only_uid_cannot_write_fallback_hugetlb_or_replica_memory(
    memory: str, public_dir: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attacks on a segment's descriptor, on the other kinds of memory an object lives
    in: a fallback file (a file, not a sealed memfd), hugetlb memfds, and the copies
    ``replicate`` makes on another node (read by a client of that node). Moving or copying
    the object is refused too, and the bytes stay as they were."""
    socket_path = os.path.join(public_dir, "plasma.sock")
    args = ["--allow-uid", str(READ_ONLY_UID), "--segment-size", "4MiB"]
    cpus: list[int] = []
    if memory == "fallback":
        private = tempfile.mkdtemp(prefix="plasma-fallback-")  # (0700: the store's alone)
        request.addfinalizer(lambda: shutil.rmtree(private))
        args += ["--memory", "8MiB", "--fallback-dir", private]
    elif memory == "hugetlb":
        request.getfixturevalue("hugepages")
        args += ["--memory", "4MiB", "--hugepages", "2M"]
    else:
        root = unpack("16amd64-8n2c", Path(public_dir) / "sysfs")
        args += ["--memory", "64MiB", "--sysfs-root", str(root), "--no-bind"]
        cpus = [2, 3]  # node 1's
    coord = start_coordinator(socket_path, *args)
    try:
        with plasma.connect(socket_path) as owner:
            fillers = []
            if memory == "fallback":  # memory used up by objects not sealed yet
                while not owner.stats()["fallback"]["segments"]:
                    fillers.append(owner.create(plasma.ObjectID.from_random(), 1 << 20))
            target = owner_object(owner, "target")
            expected = {"fallback": ["file", mmap.PAGESIZE, 0], "hugetlb": ["memfd", HUGE, 0]}
            if memory == "fallback":
                assert owner.stats()["fallback"]["bytes"] >= (1 << 20) + len(ORIGINAL)
            if memory == "replica":
                assert owner.replicate(target, [1]) == [0, 1]
                expected["replica"] = ["memfd", mmap.PAGESIZE, 1]
            placed = owner.list()[target]

            found = result(
                run_as(READ_ONLY_UID, _MEMORY_ATTACK, socket_path, target.hex(), json.dumps(cpus))
            )

            assert found.pop("memory") == expected[memory]
            for name in ("migrate", "replicate"):
                answer = found.pop(name)
                assert answer.startswith(DENIED) and GRANT in answer, (name, answer)
            assert bytes.fromhex(found.pop("read_after")) == ORIGINAL
            assert found == SEGMENT_ATTACKS_FAIL  # (a fallback file too: mode 0600, ours)
            del fillers
            now = owner.list()[target]
            assert [now["node"], now.get("replicas")] == [placed["node"], placed.get("replicas")]
            assert bytes(owner.get(target)) == ORIGINAL
        if memory == "replica":  # the copy itself, as a client of node 1 reads it
            monkeypatch.setattr(plasma.client, "get_affinity", lambda: set(cpus))
        with plasma.connect(socket_path) as reader:
            assert bytes(reader.get(target, timeout=5)) == ORIGINAL
            assert reader.list()[target]["ref_count"] == 1  # (the attacker's reference went)
    finally:
        assert coord.stop() == 0
    coordinator_log_is_clean(coord)


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


_TENSOR_READER = """
with plasma.connect(sys.argv[2]) as c:
    oid = plasma.ObjectID(bytes.fromhex(sys.argv[3]))
    state = c.get_object(oid, timeout=5)
    out["mapping"] = mapping_perms(state["w"].data_ptr())
    state["w"].add_(1)  # a tensor has no read-only mode: this writes a private copy
    out["written"] = float(state["w"].sum())
    out["fresh"] = float(c.get_object(oid, timeout=5)["w"].sum())
done()
"""


@needs_root
def test_read_only_uid_gets_tensors_it_may_write_privately(shared: RunningCoordinator) -> None:
    """A tensor read by a read-only uid is a copy-on-write mapping: writing it neither faults
    (as a write to the shared read-only mapping would) nor reaches the store."""
    import torch

    with plasma.connect(shared.socket) as owner:
        oid = owner.put({"w": torch.zeros(1 << 18)})
        reader = run_as(READ_ONLY_UID, _TENSOR_READER, shared.socket, oid.hex(), prelude="torch")
        assert result(reader) == {"mapping": "rw-p", "written": 1 << 18, "fresh": 0.0}
        assert float(owner.get_object(oid)["w"].sum()) == 0.0


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
