"""Helpers the tests share (one definition each): ids, sizes, a raw protocol client, the
reachability check of the state machines, the sans-I/O store's fakes, clients of either kind,
clients run as other uids, a fake cgroupfs. Test modules import from here (and fixtures come
from conftest.py), never from each other."""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

import plasma
import plasma.aio
import plasma.directory
import plasma.store.generations
import plasma.store.slots
from plasma import protocol as p
from plasma._client_core.fast_path import NATIVE, PYTHON
from plasma._native import native
from plasma.directory import DirectoryReader, PinTable, pin_table_size
from plasma.errors import StoreFull
from plasma.linux import perf as perf_event
from plasma.linux.cgroup import CgroupFiles
from plasma.linux.fdpass import ANCILLARY_SPACE, RECV_FLAGS, received_fds
from plasma.linux.perf import HARDWARE_EVENTS
from plasma.records import ObjectLocation
from plasma.store import Store
from plasma.store.moves import RehomeJob
from plasma.topology import format_cpulist, parse_cpulist

REPO = Path(__file__).resolve().parent.parent  # this checkout
KIB = 1024
MIB = 1 << 20
HUGE = 2 << 20  # bytes of a 2 MiB hugepage
PAGE = 4096  # the page size the sans-I/O store's segments are multiples of
GRACE = 0.002  # the store's grace period where clients read without requests (pin tables)
PLASMA = [sys.executable, "-m", "plasma"]  # the plasma-coord command, from this checkout
# the directory's two read paths (plasma._client_core.fast_path), for pytest.mark.parametrize:
# the C one (skipped where it is not built; tests/test_native.py fails CI then) and Python's
READ_PATHS = [
    pytest.param(NATIVE, id="native", marks=pytest.mark.skipif(NATIVE is None, reason="not built")),
    pytest.param(PYTHON, id="python"),
]
# where the coordinator's bulk work (pin scans, a rebuild's placement, the generation index's
# compaction) runs, for bulk_path: the C extension (plasma._native) or numpy's fallback
BULK_PATHS = [
    pytest.param("native", marks=pytest.mark.skipif(native is None, reason="not built")),
    "numpy",
]


@contextlib.contextmanager
def bulk_path(name: str) -> Iterator[None]:
    """Pin scans, rebuilds (their placement and moves) and compactions in this block run
    through ``name`` of BULK_PATHS: "numpy" is the code without the extension (directory
    slots are then written by the Python writer too, slot columns and rings moved by Python
    loops)."""
    with pytest.MonkeyPatch.context() as patch:
        if name == "numpy":
            patch.setattr(plasma.directory, "native", None)
            patch.setattr(plasma.store.generations, "native", None)
            patch.setattr(plasma.store.slots, "native", None)
        yield


def apt_install(packages: Sequence[str]) -> str | None:
    """Install Debian ``packages`` with apt (what a test needs, installed on first use);
    None, or why they could not be."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{' '.join(packages)}: cannot apt-get install them (not root or no apt)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed: {proc.stderr.strip()[-300:]}"
    return None


def oid(n: int) -> bytes:
    """A 20-byte object id derived from ``n`` (big-endian: ids sort like their numbers)."""
    return n.to_bytes(20, "big")


def object_id(n: int) -> plasma.ObjectID:
    """:func:`oid` as the clients' ObjectID."""
    return plasma.ObjectID(oid(n))


COLLIDE_KEY = 0x0123_4567_89AB_CDEF
KEY = struct.Struct("<QQI")  # how home_slot reads an id


def colliding(n: int, key: int = COLLIDE_KEY) -> bytes:
    """The ``n``-th id of a family whose three key words xor to ``key``: every member has
    the same home slot in a directory of any size."""
    a = n + 1
    return KEY.pack(a, a ^ key, 0)


def directory_ids(max_size: int) -> st.SearchStrategy[list[bytes]]:
    """Distinct ids to publish: random ones, and members of families that share a home
    slot (long probe runs)."""
    return st.lists(
        st.one_of(
            st.integers(0, 10**6).map(oid),
            st.tuples(st.integers(0, 40), st.sampled_from([COLLIDE_KEY, 7, 2**63 + 5])).map(
                lambda t: colliding(*t)
            ),
        ),
        max_size=max_size,
        unique=True,
    )


def raw_socket(path: str) -> socket.socket:
    """A Unix stream socket connected to ``path``, 10 s timeout (for bytes sent by hand)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(10)
    return s


class RawClient:
    """The wire protocol by hand, keeping every descriptor the coordinator sends (so a test
    can do to them what a hostile client would)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(timeout)
        self.decoder = p.FrameDecoder(p.Reply, 1 << 30)
        self.fds: list[int] = []
        self.seq = 0
        self.pushed: list[Any] = []

    def send(self, msg: Any) -> int:
        self.seq += 1
        msg.seq = self.seq
        self.sock.sendall(p.encode(msg))
        return self.seq

    def request(self, msg: Any) -> Any:
        """Send ``msg`` and return its reply (pushed messages are kept in ``pushed``)."""
        seq = self.send(msg)
        while True:
            reply = self.receive()
            if reply.seq == seq:
                return reply
            self.pushed.append(reply)

    def receive(self) -> Any:
        while (reply := self.decoder.next_message()) is None:
            data, anc, flags, _ = self.sock.recvmsg(1 << 16, ANCILLARY_SPACE, RECV_FLAGS)
            if not data:
                raise ConnectionError("the coordinator hung up")
            self.fds.extend(received_fds(anc, flags))
            self.decoder.feed(data)
        return reply

    def connect(self) -> p.Connected:
        return self.request(p.Connect(seq=0, protocol_version=p.PROTOCOL_VERSION))

    def take_fds(self) -> list[int]:
        fds, self.fds = self.fds, []
        return fds

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reached(
    machine: type[RuleBasedStateMachine],
    machine_settings: settings,
    wanted: Sequence[str],
    *,
    examples: int = 100,
    at_least: int = 1,
    runs: int = 4,
) -> collections.Counter[str]:
    """Run ``machine`` (``examples`` each time, at most ``runs`` times) until each outcome
    of ``wanted`` was counted ``at_least`` times in its ``outcomes`` counter, and assert it
    was: a change to the rules that loses these interleavings fails here instead of
    silently testing less. (Random runs, not one derandomized one: a rare outcome that one
    seed misses does not fail it; one the rules cannot reach any more fails every run.)"""
    seen: collections.Counter[str] = collections.Counter()

    class Counting(machine):  # type: ignore[valid-type, misc]
        def teardown(self) -> None:
            seen.update(self.outcomes)
            super().teardown()

    for _ in range(runs):
        run_state_machine_as_test(
            Counting,
            settings=settings(
                machine_settings, max_examples=examples, database=None, derandomize=False
            ),
        )
        if all(seen[w] >= at_least for w in wanted):
            break
    assert not [w for w in wanted if seen[w] < at_least], seen
    return seen


def charges_placed_in(store: Any, records: Iterable[Any]) -> collections.Counter[int]:
    """What each node's ``placed_in`` must be: the charges of ``records`` whose pages were
    moved (those in memory), of ranges being moved back, and of memory freed once its I/O
    ends (the store's own bookkeeping, read from the outside)."""
    want: collections.Counter[int] = collections.Counter()
    for rec in records:
        if rec.pages_on is not None:
            want.update(store._mem.charges(rec, rec.pages_on))
    for job in store._placing.jobs.values():
        if isinstance(job, RehomeJob):
            want.update(job.freed.charges)
    for held in store._after_io.values():
        for freed in held:
            want.update(freed.charges or {})
    return want


# ---------------------------------------------------------------- the sans-I/O store's fakes


class FakeProvider:
    """Hands out segment ids and records which are live."""

    def __init__(self, fail: bool = False) -> None:
        self.live: dict[int, tuple[int, int]] = {}
        self.next_id = 1
        self.fail = fail

    def new_segment(self, node: int, size: int) -> int:
        assert size % PAGE == 0 and size > 0
        if self.fail:
            raise StoreFull("provider refuses")
        sid = self.next_id
        self.next_id += 1
        self.live[sid] = (node, size)
        return sid

    def free_segment(self, segment: int) -> None:
        del self.live[segment]


class FallbackProvider(FakeProvider):
    """A FakeProvider that also hands out fallback (file-backed) segments, ``disk`` bytes."""

    def __init__(self, disk: int = 1 << 30) -> None:
        super().__init__()
        self.disk = disk  # bytes fallback segments may take
        self.fallback: set[int] = set()

    def new_fallback_segment(self, node: int, size: int) -> int:
        if size > self.disk:
            raise StoreFull("fallback disk full")
        self.disk -= size
        sid = self.new_segment(node, size)
        self.fallback.add(sid)
        return sid

    def free_segment(self, segment: int) -> None:
        if segment in self.fallback:
            self.fallback.discard(segment)
            self.disk += self.live[segment][1]
        super().free_segment(segment)


def loc(result: object) -> ObjectLocation:
    assert isinstance(result, ObjectLocation), result
    return result


def put(store: Store, client: int, n: int, size: int = 64, **kw: object) -> ObjectLocation:
    """create + seal + release: a sealed, unreferenced object."""
    where = loc(store.create(client, oid(n), size, **kw))  # type: ignore[arg-type]
    store.seal(client, oid(n))
    store.release(client, oid(n))
    return where


def events(store: Store, kind: type) -> list:
    """The events of type ``kind`` among those the store has (all of them are drained)."""
    return [e for e in store.drain_events() if isinstance(e, kind)]


def pin_scan_store(budget: int = 256 * KIB, **kw: object) -> Store:
    """One node of ``budget`` bytes in one segment, the grace period of pin tables."""
    kw.setdefault("reclaim_wait", 0)
    kw.setdefault("idle_records", 0)  # every idle object compact between two calls
    return Store(
        {0: budget},
        FakeProvider(),
        segment_size=budget,
        grace=GRACE,
        directory_capacity=1024,
        **kw,  # type: ignore[arg-type]
    )


def pin_reader(
    store: Store, client: int, entries: int = 64, node: int | None = None
) -> tuple[DirectoryReader, PinTable]:
    """Register ``client`` (on ``node``) with a pin table of ``entries``; its directory
    reader and pin table."""
    buf = bytearray(pin_table_size(entries))
    store.register_client(client, node=node, pins=buf)
    return DirectoryReader(*store.directory_buffers), PinTable(buf)


def pin(store: Store, read: DirectoryReader, table: PinTable, n: int) -> int:
    found = read.lookup(oid(n))
    assert found is not None
    index = table.pin(found.generation)
    assert index is not None and read.unchanged(found)
    return index


def held_deleted(clients: int = 3) -> tuple[Store, PinTable, int, float]:
    """A store whose object 1 is deleted while client 100 pins it (found pinned by the scan
    after the grace period); other readers pin other objects. ``(store, table, index, now)``"""
    store = pin_scan_store()
    store.register_client(1)
    for n in range(1, 9):
        put(store, 1, n)
    read, table = pin_reader(store, 100)
    index = pin(store, read, table, 1)
    for c in range(clients):
        other_read, other = pin_reader(store, 200 + c)
        for n in range(2, 9):
            pin(store, other_read, other, n)
    store.delete(1, [oid(1)], now=0.0)
    now = 2 * GRACE
    store.expire(now)
    assert store.stats()["dying"] == 1 and store.stats()["used"] == 8 * 64
    return store, table, index, now


@dataclass(frozen=True)
class Claim:
    """A byte range something holds and the store must not hand out."""

    label: str
    segment: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


def allocation_violations(store: Store, claims: list[Claim]) -> list[str]:
    """What is wrong with ``claims`` (ranges that must stay allocated, one owner each):
    a range in a segment the store dropped or past its end, inside a free range of the
    segment's allocator, or overlapping another claim."""
    problems: list[str] = []
    sizes = {sid: size for sid, _, size in store.segments()}
    by_segment: dict[int, list[Claim]] = {}
    for c in claims:
        if c.segment not in sizes:
            problems.append(f"{c.label}: segment {c.segment} was freed")
        elif c.end > sizes[c.segment]:
            problems.append(f"{c.label}: past the end of segment {c.segment}")
        else:
            by_segment.setdefault(c.segment, []).append(c)
    for sid, cs in by_segment.items():
        cs.sort(key=lambda c: c.offset)
        for a, b in itertools.pairwise(cs):
            if b.offset < a.end:
                problems.append(f"{a.label} and {b.label} overlap in segment {sid}")
        free = store._segments[sid].alloc.free_ranges()
        for c in cs:
            for start, size in free:
                if start < c.end and c.offset < start + size:
                    problems.append(
                        f"{c.label}: [{c.offset}, {c.end}) of segment {sid} is partly free "
                        f"(free range [{start}, {start + size}))"
                    )
    return problems


def store_records(store: Store) -> list[tuple[bytes, Any]]:
    """Every object record the store keeps (listed, dying, or deleted and pinned)."""
    found: dict[int, tuple[bytes, Any]] = {}
    for o, rec in store._objects.items():
        found[id(rec)] = (o, rec)
    for _, o, rec in store._dying.waiting.values():
        found[id(rec)] = (o, rec)
    for o, rec in store._dying.pinned.values():
        found[id(rec)] = (o, rec)
    return list(found.values())


# ---------------------------------------------------------------- clients of either kind


class Either:
    """One client, either kind, with every method awaitable."""

    def __init__(self, client: Any, is_async: bool) -> None:
        self.raw = client
        self.is_async = is_async

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if self.is_async:
                result = await result
            if isinstance(result, (plasma.Subscription, plasma.aio.AsyncSubscription)):
                return Either(result, self.is_async)
            return result

        return call


@contextlib.asynccontextmanager
async def open_client(kind: str, path: str, **options: Any) -> AsyncIterator[Either]:
    if kind == "trio":
        async with plasma.aio.connect(path, **options) as client:
            yield Either(client, True)
    else:
        with plasma.connect(path, **options) as client:
            yield Either(client, False)


async def gets(c: Either) -> int:
    """How many Get requests the coordinator has served so far."""
    return (await c.stats())["operations"].get("Get", 0)


def watchers(waiting: bool = False) -> set[int]:
    """The thread ids of this process's socket watchers (threads named as the C read path
    names them; asleep, if ``waiting``: one that started waits in epoll_wait then)."""
    found = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError):  # (a thread that ended meanwhile)
            with open(f"/proc/self/task/{tid}/comm") as comm:
                if comm.read().strip() != "plasma-watch":
                    continue
            with open(f"/proc/self/task/{tid}/stat") as stat:
                state = stat.read().rpartition(")")[2].split()[0]
            if not waiting or state == "S":
                found.add(int(tid))
    return found


def in_forked_child(body: Callable[[], bool], timeout: float = 60.0) -> str:
    """Run ``body`` in a forked child: "ok" when it returned True there, "failed" when it
    returned False or raised, "hung" when it had not ended within ``timeout`` s (killed)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = b"f"
        try:
            code = b"o" if body() else b"f"
        except BaseException:
            traceback.print_exc()
        finally:
            os.write(write, code)
            os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], timeout)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    answer = os.read(read, 1) if ready else b""
    os.close(read)
    return {b"o": "ok", b"f": "failed"}.get(answer, "hung")


# ---------------------------------------------------------------- clients run as other uids

READ_ONLY_UID, READ_WRITE_UID, STRANGER_UID = 65534, 65533, 65532

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to run clients as other uids")

# What a script run by run_as starts with: helpers for attacks, then the drop to the uid
AS_OTHER_UID = """
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

def raw_session(path, cpus=()):
    '''The wire protocol by hand, keeping every descriptor sent (in ``fds``): returns
    (request, fds, the Connected reply); request(msg) returns msg's reply, keeping the
    replies to other requests (sent without waiting) in ``others``.'''
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(10)
    decoder = p.FrameDecoder(p.Reply, 1 << 30)
    fds, others = [], []
    def receive():
        while (reply := decoder.next_message()) is None:
            data, anc, flags, _ = s.recvmsg(1 << 16, socket.CMSG_SPACE(16 * 4))
            if not data:
                raise ConnectionError("the coordinator hung up")
            fds.extend(received_fds(anc, flags))
            decoder.feed(data)
        return reply
    def request(msg, *unanswered):
        s.sendall(b"".join(p.encode(m) for m in (*unanswered, msg)))
        while (reply := receive()).seq != msg.seq:
            others.append(reply)
        return reply
    request.others = others
    connected = request(p.Connect(seq=1, protocol_version=p.PROTOCOL_VERSION, cpus=list(cpus)))
    return request, fds, connected

def raise_error(reply):
    if isinstance(reply, p.Error):
        raise plasma.errors.error_for(reply.code, reply.message)

def attack_segment(fd, segment, loc):
    '''Every way we know to write, shrink, grow, punch or reopen ``segment`` through the
    read-only descriptor ``fd`` we were sent with the object at ``loc``; each outcome goes
    to ``out``, then what our read-only mapping reads at ``loc`` afterwards.'''
    out["segment_writable"] = segment.writable
    out["fd_access"] = {os.O_RDONLY: "O_RDONLY", os.O_RDWR: "O_RDWR"}[
        fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    ]
    memfd = os.stat(f"/proc/self/fd/{fd}")  # through the link, as a reopen would go
    out["memfd"] = [oct(memfd.st_mode & 0o777), memfd.st_uid]
    size, page_size = segment.size, segment.page_size
    page = loc.offset - loc.offset % page_size  # (hugetlb: whole hugepages only)
    readable = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    base = address(readable)

    def map_writable():
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mm[loc.offset : loc.offset + 8] = PWNED
    def reopen(flags):
        def action():
            reopened = os.open(f"/proc/self/fd/{fd}", flags)
            if flags != os.O_RDONLY:
                os.pwrite(reopened, PWNED, loc.offset)
        return action
    def fallocate(mode, offset, length):
        def action():
            check(libc.fallocate(fd, mode, ctypes.c_int64(offset), ctypes.c_int64(length)))
        return action
    def mprotect_writable():
        check(libc.mprotect(ctypes.c_void_p(base), ctypes.c_size_t(size), 3))  # READ|WRITE
        ctypes.memmove(base + loc.offset, PWNED, len(PWNED))
    def write():
        os.lseek(fd, loc.offset, os.SEEK_SET)
        os.write(fd, PWNED)

    attacks = {
        "map_shared_writable": map_writable,
        "reopen_rdwr": reopen(os.O_RDWR),
        "reopen_wronly": reopen(os.O_WRONLY),
        "reopen_rdonly": reopen(os.O_RDONLY),
        "pwrite": lambda: os.pwrite(fd, PWNED, loc.offset),
        "write": write,
        "fchmod": lambda: os.fchmod(fd, 0o666),
        "add_seals": lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE),
        "mprotect_writable": mprotect_writable,
        "madv_remove": lambda: readable.madvise(mmap.MADV_REMOVE, page, page_size),
        # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: zeroes the page
        "punch_hole": fallocate(3, page, page_size),
        "fallocate_extend": fallocate(0, size, page_size),
        "ftruncate_extend": lambda: os.ftruncate(fd, size + page_size),
        "ftruncate": lambda: os.ftruncate(fd, 0),  # last: on success the segment is gone
    }
    for name, action in attacks.items():
        attempt(name, action)
    out["read_after"] = readable[loc.offset : loc.offset + loc.data_size].hex()

os.setgroups([])
os.setgid(int(sys.argv[1]))
os.setuid(int(sys.argv[1]))
"""


def run_as(
    uid: int,
    body: str,
    *args: str,
    stdin: int | None = None,
    pass_fds: Sequence[int] = (),
    prelude: str = "",
) -> subprocess.Popen[str]:
    """Start ``body`` (after the prelude) as ``uid`` with ``sys.argv[2:] == args``;
    ``prelude`` names more modules to import before the uid drops."""
    imports = f"import {prelude}\n" if prelude else ""
    return subprocess.Popen(
        [sys.executable, "-c", imports + AS_OTHER_UID + body, str(uid), *args],
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


# ---------------------------------------------------------------- processes and the kernel


def alive(pid: int) -> bool:
    """``pid`` is a process that runs (not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class FakeKernel(CgroupFiles):
    """cgroupfs semantics on plain files (only what the cell code relies on)."""

    def __init__(
        self,
        top: Path,
        controllers: str = "cpuset cpu memory",
        cpus: str = "0-3",
        mems: str = "0-1",
    ) -> None:
        self.top = top
        self.refuse: dict[str, int] = {}  # file name -> errno its writes fail with
        self.effective_cpus: str | None = None  # forced cpuset.cpus.effective of new cells
        self.partition_error: dict[str, str] = {}  # cgroup name -> reason its partition fails
        self.busy: set[str] = set()  # cgroup names whose rmdir fails with EBUSY
        self.writes: list[tuple[str, str]] = []  # (path relative to top, text)
        self.removed: dict[str, list[int]] = {}  # removed cgroup -> every pid ever written in
        top.mkdir()
        for name, text in {
            "cgroup.controllers": controllers,
            "cgroup.subtree_control": "",
            "cgroup.procs": "",
            "cpuset.cpus.effective": cpus,
            "cpuset.mems.effective": mems,
        }.items():
            (top / name).write_text(text + "\n")

    def mkdir(self, path: Path) -> None:
        super().mkdir(path)
        enabled = (path.parent / "cgroup.subtree_control").read_text().split()
        files = {"cgroup.controllers": "", "cgroup.subtree_control": "", "cgroup.procs": ""}
        for name, text in files.items():
            (path / name).write_text(text + "\n")
        if "cpuset" in enabled:
            self._cpuset_files(path)

    def _cpuset_files(self, path: Path) -> None:
        """The files a cgroup gets when its parent enables cpuset."""
        for name, text in {
            "cpuset.cpus": "",
            "cpuset.mems": "",
            "cpuset.cpus.effective": self._parent(path, "cpuset.cpus.effective"),
            "cpuset.mems.effective": self._parent(path, "cpuset.mems.effective"),
            "cpuset.cpus.partition": "member",
        }.items():
            (path / name).write_text(text + "\n")

    def write(self, path: Path, text: str) -> None:
        self.writes.append((str(path.relative_to(self.top)), text))
        if path.name in self.refuse:
            raise OSError(self.refuse[path.name], os.strerror(self.refuse[path.name]))
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
        directory = path.parent
        if path.name == "cgroup.subtree_control":
            own = self.read(directory / "cgroup.controllers").split()
            current = path.read_text().split()
            wanted = text.strip().removeprefix("+")
            if wanted not in own:
                raise OSError(errno.ENOENT, "controller not available")
            text = " ".join([*current, wanted] if wanted not in current else current)
            if wanted == "cpuset" and wanted not in current:
                for child in directory.iterdir():
                    if child.is_dir():
                        self._cpuset_files(child)
        elif path.name in ("cpuset.cpus", "cpuset.mems"):
            kind = path.name.split(".")[1]
            parent = parse_cpulist(self._parent(directory, f"cpuset.{kind}.effective"))
            asked = parse_cpulist(text)
            effective = asked & parent if asked else parent
            if kind == "cpus" and self.effective_cpus is not None:
                effective = parse_cpulist(self.effective_cpus)
            (directory / f"cpuset.{kind}.effective").write_text(format_cpulist(effective) + "\n")
        elif path.name == "cpuset.cpus.partition":
            text = self._partition(directory, text.strip())
        elif path.name == "cgroup.procs":
            text = " ".join([*path.read_text().split(), text.strip()])
        path.write_text(text.strip() + "\n")

    def read(self, path: Path) -> str:
        text = super().read(path)
        if path.name == "cgroup.procs":  # the kernel lists live processes only
            return "\n".join(pid for pid in text.split() if alive(int(pid)))
        if path.name == "cgroup.controllers" and path.parent != self.top:
            return self._parent(path.parent, "cgroup.subtree_control")  # what the parent passes on
        return text

    def rmdir(self, path: Path) -> None:
        if path.name in self.busy or self.read(path / "cgroup.procs").split():
            raise OSError(errno.EBUSY, "busy")
        self.removed[path.name] = [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
        for child in path.iterdir():
            child.unlink()
        super().rmdir(path)

    def _partition(self, directory: Path, kind: str) -> str:
        if kind == "member":
            return kind
        parent = directory.parent / "cpuset.cpus.partition"
        parent_kind = parent.read_text().strip() if parent.exists() else "root"  # top: root
        if directory.name in self.partition_error:
            return f"{kind} invalid ({self.partition_error[directory.name]})"
        if parent_kind not in ("root", "isolated"):
            return f"{kind} invalid (Parent is not a partition root)"
        return kind

    def _parent(self, path: Path, name: str) -> str:
        return (path.parent / name).read_text().strip()


HAS_CPU_PMU = Path("/sys/bus/event_source/devices/cpu").exists()
NO_SUCH_PID = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def _hardware_counters_work() -> bool:
    """perf_event_open counts this process's cycles: a PMU, and a paranoid level that lets
    us (the question asked of the kernel directly, not of the code under test)."""
    if not HAS_CPU_PMU:
        return False
    attr = perf_event.make_attr(HARDWARE_EVENTS[0], exclude_kernel=True)
    try:
        os.close(perf_event.perf_event_open(attr, 0))
    except OSError:
        return False
    return True


HARDWARE_COUNTERS = _hardware_counters_work()
NO_HARDWARE_COUNTERS = "perf_event_open cannot count hardware events here (no PMU, or denied)"

# the dask scheduler on a free port of localhost (the dask tests and the dask-worker CLI's)
SCHEDULER = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
SCHEDULER += ["--port", "0", "--no-dashboard"]


def workers_in_this_process(protocol: str | None = "tcp") -> Any:
    """A ``distributed.LocalCluster`` of two single-threaded workers in this process (their
    objects are at hand to the test); ``tcp`` by default, so they pickle what they send each
    other as workers of two processes do (``None``: distributed's ``inproc://``)."""
    import distributed

    return distributed.LocalCluster(
        n_workers=2,
        processes=False,
        protocol=protocol,
        threads_per_worker=1,
        dashboard_address=None,
    )


def imports_after(code: str, module: str) -> bool:
    """Whether running ``code`` in a fresh interpreter leaves ``module`` imported (it must
    run without error)."""
    probe = f"{code}\nimport sys\nprint({module!r} in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"
