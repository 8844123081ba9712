"""The C client (clients/c) against a real coordinator and Python clients.

The library is built with its Makefile, warning-free (``-Wall -Wextra -Wpedantic -Werror``),
twice: plainly, and under AddressSanitizer and UndefinedBehaviorSanitizer (any report
aborts the program, so the test sees a failed exit). Every test that runs C code runs both
builds. The programs: ``tests/native/c_client.c`` (one command a run), the examples
(``examples/c``), a C++ program using the header unchanged (``tests/native/cxx_client.cc``)
and the frame reader's check against msgspec's frames (``tests/native/wire_fuzz.c``).
gcc, g++ and make are apt-installed on first use where they are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import plasma
from plasma import protocol as p
from plasma._native import native
from plasma.linux.fdpass import scm_rights
from tests.conftest import RunningCoordinator, wait_until
from tests.helpers import READ_ONLY_UID, REPO, STRANGER_UID, apt_install, needs_root

pytestmark = pytest.mark.coordinator

CLIENT = REPO / "clients" / "c"
NATIVE = REPO / "tests" / "native"
TOOLS = {"gcc": "gcc", "g++": "g++", "make": "make"}  # command: Debian package
WARNINGS = ["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
# sanitizer reports fail the run (and say where); leaks are reported too
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}


@dataclass(frozen=True)
class Build:
    """One build of the library and the programs linked with it."""

    name: str
    dir: Path
    flags: tuple[str, ...]

    def program(self, name: str) -> str:
        return str(self.dir / name)

    def run(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a program of this build to its end; its exit must be 0 and clean."""
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=120, env=env(), **kwargs
        )  # type: ignore[call-overload]
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
        assert "Sanitizer" not in proc.stderr, proc.stderr
        return proc

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Start a program of this build, its standard streams piped (text)."""
        return subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )


def env() -> dict[str, str]:
    return {**os.environ, **SANITIZER_ENV}


@pytest.fixture(scope="module")
def toolchain() -> None:
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        reason = apt_install(missing)
        if reason is not None:
            pytest.skip(reason)
    still = [tool for tool in TOOLS if shutil.which(tool) is None]
    if still:
        pytest.skip(f"{', '.join(still)} still missing after installing them")


def build(name: str, out: Path, sanitize: bool) -> Build:
    """The library and examples by their Makefile, then the test programs against it."""
    flags = ("-O1", "-g", *(SANITIZE if sanitize else ()))
    make = [
        "make",
        "-s",
        "-C",
        str(CLIENT),
        f"BUILD={out}",
        f"CFLAGS={' '.join(flags[:2])}",
        *(["SANITIZE=1"] if sanitize else []),
        "all",
        "examples",
    ]
    proc = subprocess.run(make, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    library = str(out / "libplasma_coord.a")
    for source in ("c_client.c", "wire_fuzz.c"):
        compile_program(
            ["gcc", *WARNINGS, *flags, f"-I{CLIENT}"],
            out / source.removesuffix(".c"),
            NATIVE / source,
            library,
        )
    return Build(name, out, flags)


def compile_program(command: list[str], out: Path, *inputs: object) -> None:
    proc = subprocess.run(
        [*command, "-o", str(out), *map(str, inputs)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module", params=["plain", "sanitized"])
def c(
    request: pytest.FixtureRequest, toolchain: None, tmp_path_factory: pytest.TempPathFactory
) -> Build:
    """The library built warning-free, plainly and under ASan + UBSan."""
    name = request.param
    return build(name, tmp_path_factory.mktemp(name), sanitize=name == "sanitized")


def cid(n: int) -> bytes:
    """A 20-byte id whose first byte (what the C programs' pattern derives from) is n."""
    return bytes([n]) * 20


def pattern(oid: bytes, size: int) -> bytes:
    """The bytes c_client.c puts in object ``oid``: (oid[0] + 131 j) mod 251."""
    return ((oid[0] + 131 * np.arange(size, dtype=np.uint64)) % 251).astype(np.uint8).tobytes()


def gets(client: plasma.Client) -> int:
    """Get requests the coordinator has served."""
    return int(client.stats()["operations"].get("Get", 0))


# ------------------------------------------------------------------ C and Python sharing


def test_a_c_producers_objects_read_by_a_python_consumer(
    c: Build, coordinator: RunningCoordinator
) -> None:
    """Small objects through the C client's arena, larger ones created and filled in place
    (and one over the arena's limit by create_and_seal): a Python client reads them all,
    bytes and metadata equal; the example producer's frames come back as numpy views."""
    small, inplace, large = [cid(n) for n in (1, 2, 3)], [cid(4), cid(5)], [cid(6)]
    c.run(c.program("c_client"), "put", coordinator.socket, "arena:100", *(i.hex() for i in small))
    c.run(
        c.program("c_client"),
        "put",
        coordinator.socket,
        "inplace:70000",
        *(i.hex() for i in inplace),
    )
    c.run(
        c.program("c_client"), "put", coordinator.socket, "arena:3000000", *(i.hex() for i in large)
    )
    c.run(c.program("producer"), "--socket", coordinator.socket, "3", "300000")
    with plasma.connect(coordinator.socket) as py:
        for ids, size in ((small, 100), (inplace, 70000), (large, 3000000)):
            for oid in ids:
                data, meta = py.get(oid, timeout=5, with_metadata=True)
                assert bytes(data) == pattern(oid, size) and bytes(meta) == b"meta"
        for i in range(3):
            frame_id = plasma.ObjectID(b"frames".ljust(16, b"\0") + i.to_bytes(4, "big"))
            values = np.frombuffer(py.get(frame_id, timeout=5), np.float32)
            expected = np.arange(300000, dtype=np.float32) / 2 + np.float32(i)
            assert not values.flags.owndata and not values.flags.writeable  # the store's pages
            assert values.tobytes() == expected.tobytes()
        del values, data, meta
    with plasma.connect(coordinator.socket) as py:
        listed = py.list()
    assert len(listed) == 10 and all(info["state"] == "sealed" for info in listed.values())
    assert all(info["ref_count"] == 0 for info in listed.values())  # no C reference left


def test_a_python_producers_objects_read_by_a_c_consumer(
    c: Build, coordinator_factory: Callable[..., RunningCoordinator], tmp_path: Path
) -> None:
    """Objects a Python client sealed (through its arena, or created and filled) read by
    the C client, bytes equal; in a store of one segment, the first get is a request
    (which maps it) and every other one is served by the directory and a pin."""
    coordinator = coordinator_factory("--memory", "64MiB", "--segment-size", "64MiB")
    ids = [cid(n) for n in range(10, 16)]
    with plasma.connect(coordinator.socket) as py:
        for oid in ids[:3]:
            py.create_and_seal(oid, pattern(oid, 64))
        for oid in ids[3:]:
            py.create(oid, 2 << 20)[:] = pattern(oid, 2 << 20)
            py.seal(oid)
        py.flush()
        before = gets(py)
        out = tmp_path / "got"
        proc = c.run(
            c.program("c_client"), "get", coordinator.socket, "5", str(out), *(i.hex() for i in ids)
        )
        assert proc.stdout.strip() == f"got {len(ids)}, directory 1"
        expected = b"".join(pattern(oid, 64) for oid in ids[:3])
        expected += b"".join(pattern(oid, 2 << 20) for oid in ids[3:])
        assert out.read_bytes() == expected
        assert gets(py) - before == 1
        assert py.stats()["pins"] == 0  # every pin given back


def test_gets_go_on_through_the_directory_after_it_is_rebuilt(
    c: Build, coordinator: RunningCoordinator, tmp_path: Path
) -> None:
    """The C client maps the directory, which the coordinator then rebuilds (more objects
    than 3/4 of its slots): the first get finds it superseded and asks for the new one with
    its request; the others are served by the new directory, with no request."""
    out = tmp_path / "got"
    with plasma.connect(coordinator.socket) as py:
        py.create_and_seal(cid(80), b"first")
        py.flush()
        ids = [cid(80), *(plasma.ObjectID.from_random().binary() for _ in range(60))]
        reader = c.start(
            c.program("c_client"),
            "later",
            coordinator.socket,
            "5",
            str(out),
            *(i.hex() for i in ids),
        )
        assert reader.stdout.readline() == "ready\n"
        capacity = py.stats()["directory"]["capacity"]
        filler = [(plasma.ObjectID.from_random(), b"", b"") for _ in range(capacity)]
        py.create_and_seal_many([*filler, *((i, i[:4], b"") for i in ids[1:])])
        py.flush()
        assert py.stats()["directory"]["capacity"] > capacity  # rebuilt, larger
        before = gets(py)
        stdout, stderr = reader.communicate("\n", timeout=60)
        assert reader.returncode == 0 and "Sanitizer" not in stderr, stderr
        assert stdout == f"got {len(ids)}, directory 1\n"
        assert out.read_bytes() == b"first" + b"".join(i[:4] for i in ids[1:])
        assert gets(py) - before == 1  # the one that found the directory superseded


def test_the_examples_share_frames_both_ways(c: Build, coordinator: RunningCoordinator) -> None:
    """examples/c: the C producer's frames read by frames.py, frames.py's read by the C
    consumer; both consumers print the same lines."""
    frames = str(REPO / "examples" / "c" / "frames.py")
    python = [sys.executable]
    c.run(c.program("producer"), "--socket", coordinator.socket, "2", "1000")
    from_python = c.run(*python, frames, "consume", "--socket", coordinator.socket, cwd=REPO)
    from_c = c.run(c.program("consumer"), "--socket", coordinator.socket)
    assert from_c.stdout == from_python.stdout
    assert from_c.stdout.splitlines() == [
        "frame 0: 1000 values, sum 249750.0, metadata float32",
        "frame 1: 1000 values, sum 250750.0, metadata float32",
    ]
    with plasma.connect(coordinator.socket) as py:
        py.delete(list(py.list()))
    c.run(*python, frames, "produce", "--socket", coordinator.socket, "--count", "3", cwd=REPO)
    assert (
        len(c.run(c.program("consumer"), "--socket", coordinator.socket).stdout.splitlines()) == 3
    )


def test_the_header_is_cxx(c: Build, coordinator: RunningCoordinator) -> None:
    """A C++17 program includes plasma_coord.h unchanged, builds warning-free with g++ and
    links the C library."""
    out = c.dir / "cxx_client"
    compile_program(
        ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", *c.flags, f"-I{CLIENT}"],
        out,
        NATIVE / "cxx_client.cc",
        c.dir / "libplasma_coord.a",
    )
    assert c.run(str(out), coordinator.socket).stdout == "ok\n"


@pytest.fixture(scope="module")
def arm64_client(toolchain: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """c_client cross-compiled for arm64 (static), and qemu-aarch64 to run it (the cross
    tools apt-installed on first use)."""
    tools = ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ar", "qemu-aarch64")
    if not all(shutil.which(t) for t in tools):
        reason = apt_install(["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "qemu-user"])
        if reason is not None:
            pytest.skip(reason)
    if not all(shutil.which(t) for t in tools):
        pytest.skip(f"{tools} still missing after installing them")
    out = tmp_path_factory.mktemp("arm64")
    cross = ["CC=aarch64-linux-gnu-gcc", "AR=aarch64-linux-gnu-ar", "CFLAGS=-O2"]
    proc = subprocess.run(
        ["make", "-s", "-C", str(CLIENT), f"BUILD={out}", *cross],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compile_program(
        ["aarch64-linux-gnu-gcc", *WARNINGS, "-O2", "-static", f"-I{CLIENT}"],
        out / "c_client",
        NATIVE / "c_client.c",
        out / "libplasma_coord.a",
    )
    return str(shutil.which("qemu-aarch64")), str(out / "c_client")


def test_the_client_as_an_arm64_program_reads_through_the_directory(
    arm64_client: tuple[str, str], coordinator: RunningCoordinator, tmp_path: Path
) -> None:
    """On arm64 the directory is read only when its writer says its stores are ordered (the
    coordinator's C writer does): the arm64 build, run by qemu-aarch64 against this
    coordinator, serves every get after the first (which maps the segment) from it; a
    coordinator without the C writer is read through requests only."""
    ids = [cid(n) for n in range(70, 74)]
    with plasma.connect(coordinator.socket) as py:
        for oid in ids:
            py.create_and_seal(oid, pattern(oid, 500))
        py.flush()
        before = gets(py)
        out = tmp_path / "got"
        proc = subprocess.run(
            [*arm64_client, "get", coordinator.socket, "5", str(out), *(i.hex() for i in ids)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == b"".join(pattern(oid, 500) for oid in ids)
        if native is None:  # the coordinator's writer is Python's, unordered: requests only
            assert proc.stdout == f"got {len(ids)}, directory 0\n"
            assert gets(py) - before == len(ids)
        else:
            assert proc.stdout == f"got {len(ids)}, directory 1\n"
            assert gets(py) - before == 1


# ------------------------------------------------------------------ failures


def hold(c: Build, py: plasma.Client, socket: str, ids: list[bytes]) -> subprocess.Popen[str]:
    """The C client holding objects ``py`` sealed: ``ids[0]`` got by a request (which maps
    the segment), the others pinned from the directory; once it says so."""
    for oid in ids:
        py.create_and_seal(oid, pattern(oid, 1000))
    py.flush()
    proc = c.start(c.program("c_client"), "hold", socket, *(i.hex() for i in ids))
    assert proc.stdout.readline() == f"held {len(ids)}\n"
    assert py.stats()["pins"] == len(ids) - 1
    return proc


def test_a_c_reader_killed_while_holding_pins_leaks_nothing(
    c: Build, coordinator: RunningCoordinator
) -> None:
    first, *pinned = [cid(n) for n in range(20, 25)]
    with plasma.connect(coordinator.socket) as py:
        reader = hold(c, py, coordinator.socket, [first, *pinned])
        try:
            assert py.delete(pinned) == [plasma.ObjectID(i) for i in pinned]  # deferred
            assert py.stats()["dying"] == 4
        finally:
            reader.kill()
            reader.communicate(timeout=30)
        wait_until(lambda: len(py.stats()["clients"]) == 1, what="the reader's session to end")
        py.flush()
        stats = py.stats()
        assert stats["pins"] == 0 and stats["dying"] == 0
        assert set(py.list()) == {plasma.ObjectID(first)}
        assert py.list()[plasma.ObjectID(first)]["ref_count"] == 0


def test_a_c_reader_that_releases_lets_deletes_finish(
    c: Build, coordinator: RunningCoordinator
) -> None:
    ids = [cid(n) for n in range(30, 34)]
    with plasma.connect(coordinator.socket) as py:
        reader = hold(c, py, coordinator.socket, ids)
        py.delete(ids)
        assert py.stats()["dying"] == 3
        out, err = reader.communicate("\n", timeout=60)  # it releases, sending Unpin for each
        assert reader.returncode == 0 and out == "released 4\n" and "Sanitizer" not in err, err
        py.flush()
        assert py.stats()["dying"] == 0 and py.stats()["used"] - py.stats()["arena_bytes"] == 0
        assert py.list() == {}


def test_a_coordinator_that_goes_away_is_an_error_not_a_signal(
    c: Build, coordinator_factory: Callable[..., RunningCoordinator]
) -> None:
    """Killed while the C client holds an object and an arena: the next write into the
    arena sends to a dead socket (an error, not SIGPIPE), every later call says so, the
    object held stays readable, and releasing it still works."""
    coord = coordinator_factory("--memory", "16MiB")
    oid = cid(40)
    with plasma.connect(coord.socket) as py:
        py.create_and_seal(oid, pattern(oid, 5000))
        py.flush()
    proc = c.start(c.program("c_client"), "gone", coord.socket, oid.hex())
    assert proc.stdout.readline() == "held\n"
    coord.stop(signal.SIGKILL)
    out, err = proc.communicate("\n", timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}: {out} {err}"
    assert out.splitlines() == [
        "create_and_seal: disconnected",  # written into the arena, the SealArena not sent
        "view: intact",
        "get: disconnected",
        "message: the connection to the coordinator broke: Broken pipe",
        "flush: disconnected",
        "release: ok",
    ], err


def test_a_c_client_gives_its_arena_back_when_the_store_is_short(
    c: Build, coordinator_factory: Callable[..., RunningCoordinator]
) -> None:
    """A create that fits only once the C client's idle arena is given back: the coordinator
    pushes Reclaim, and the C client, blocked in a get (reading its socket), answers."""
    coord = coordinator_factory("--memory", "8MiB", "--segment-size", "8MiB")
    awaited = cid(60)
    holder = c.start(c.program("c_client"), "reclaim", coord.socket, awaited.hex())
    try:
        assert holder.stdout.readline() == "arena\n"
        with plasma.connect(coord.socket) as py:
            assert py.stats()["arena_bytes"] == (1 << 20) - 64  # its tail, idle
            big = py.create(cid(61), (8 << 20) - (512 << 10), timeout=30)  # fits without it
            big[:1] = b"!"
            del big
            py.seal(cid(61))
            py.create(awaited, 5)[:] = b"after"
            py.seal(awaited)
            py.flush()
        out, err = holder.communicate(timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert holder.returncode == 0 and out == "got after\n", err


def test_bad_calls_are_errors_that_lose_nothing(c: Build, coordinator: RunningCoordinator) -> None:
    out = c.run(c.program("c_client"), "errors", coordinator.socket).stdout
    assert out.splitlines() == [
        "get_nan_timeout: invalid_argument",
        "get_missing: object_not_found",
        "release_not_held: invalid_argument",
        "create_null_metadata: invalid_argument",
        "create_too_large: store_full",
        "create_and_seal_existing: ok",  # sent without waiting...
        "flush_after_existing: object_exists",  # ...its error comes back from the flush
        "get_after_errors: ok",
        "data: first",
        "release_twice: invalid_argument",
        "seal_unknown: ok",
        "flush_after_seal_unknown: object_not_found",
        "abort_unknown: object_not_found",
        "delete_missing: object_not_found",
        "contains: 1",
        "delete: ok",
        "contains_after_delete: 0",
    ]


# ------------------------------------------------------------------ other uids


def as_uid(uid: int, build: Build, public_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run c_client as ``uid`` (a copy other uids may execute, in ``public_dir``)."""
    program = os.path.join(public_dir, f"c_client-{build.name}")
    if not os.path.exists(program):
        shutil.copy(build.program("c_client"), program)
        os.chmod(program, 0o755)
    return subprocess.run(
        [program, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
        user=uid,
        group=uid,
        extra_groups=[],
        cwd="/",
    )


@needs_root
def test_a_c_client_of_another_uid_gets_the_coordinators_refusal(
    c: Build, shared: RunningCoordinator, public_dir: str
) -> None:
    proc = as_uid(STRANGER_UID, c, public_dir, "connect", shared.socket)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        f"permission_denied: uid {STRANGER_UID} may not use this store"
    ), proc.stdout
    assert f"--allow-uid {STRANGER_UID}:rw" in proc.stdout


@needs_root
def test_a_read_only_c_client_reads_but_may_not_write(
    c: Build, shared: RunningCoordinator, public_dir: str
) -> None:
    out = os.path.join(public_dir, "out")
    os.mkdir(out, 0o777)
    os.chmod(out, 0o777)
    oid = cid(50)
    with plasma.connect(shared.socket) as py:
        py.create_and_seal(cid(51), b"maps the segment")
        py.create_and_seal(oid, pattern(oid, 300))
        py.flush()
        got = as_uid(
            READ_ONLY_UID,
            c,
            public_dir,
            "get",
            shared.socket,
            "5",
            f"{out}/data",
            cid(51).hex(),
            oid.hex(),
        )
        assert got.returncode == 0, got.stderr
        assert got.stdout == "got 2, directory 1\n"  # read-only maps, no access bytes
        assert Path(out, "data").read_bytes() == b"maps the segment" + pattern(oid, 300)
        put = as_uid(READ_ONLY_UID, c, public_dir, "put", shared.socket, "arena:10", cid(52).hex())
        assert put.returncode == 1
        assert put.stderr.startswith("create_and_seal: permission_denied: "), put.stderr
        assert plasma.ObjectID(cid(52)) not in py.list()


# ------------------------------------------------------------------ the frame reader


def test_the_frame_reader_reads_msgspecs_frames_and_survives_garbage(
    c: Build, tmp_path: Path
) -> None:
    loc = p.ObjectLocation(3, 4096, 100, 4, 0)
    segments = [
        p.SegmentInfo(3, 4 << 20, 0, 4096),
        p.SegmentInfo(70000, 1 << 21, 1, 2 << 20, False),
    ]
    tables = p.TablesInfo(4160, 64, 32832)
    info = p.ObjectInfo(b"i" * 20, 1, 0, 0, "sealed", 0, 1.5, 1)
    messages = [
        p.Connected(
            1,
            7,
            2,
            1 << 30,
            [p.NodeInfo(0, 1 << 30, [0, 1])],
            [4096],
            1 << 20,
            1 << 29,
            0,
            64,
            tables,
        ),
        p.Connected(2, 8, 2, 1 << 40, [], [], 1 << 20, 1 << 39, None),
        p.Error(0, "permission_denied", "uid 5 may not use this store"),
        p.Got(9, [loc, "timeout"], segments),
        p.Created(2**40, [loc]),
        p.ArenaGranted(11, 3, 8192, 1 << 20, 5),
        p.TablesMoved(12, p.TablesInfo(8256, 128)),
        p.TablesMoved(13),
        p.Deleted(14, [b"a" * 20], [], [b"b" * 20, b"c" * 20]),
        p.Contained(15, True),
        p.SegmentsDropped(0, [3, 70000, 2**63]),
        p.Reclaim(0),
        p.Ok(16),
        p.StatsReply(17, {"nested": [[[{"a": 1.5, "b": None, "c": -3}]]], "s": "x" * 300}),
        p.Revoked(0, [b"x" * 20]),
        p.Listing(18, [info]),
    ]
    frames = tmp_path / "frames"
    frames.write_bytes(b"".join(p.encode(m) for m in messages))
    out = c.run(c.program("wire_fuzz"), str(frames), "200000").stdout.splitlines()
    segs = " segments=[(3,4194304,0,4096,1)(70000,2097152,1,2097152,0)]"
    assert out[:-1] == [
        "connected 1 client=7 version=2 capacity=1073741824 max_frame=1048576"
        " max_object=536870912 node=0 alignment=64 tables=4160,64,32832",
        "connected 2 client=8 version=2 capacity=1099511627776 max_frame=1048576"
        " max_object=549755813888 node=-1 alignment=64 tables=none",
        "error 0 permission_denied: uid 5 may not use this store",
        "got 9 results=[(3,4096,100,4,0)'timeout']" + segs,
        "created 1099511627776 results=[(3,4096,100,4,0)] segments=[]",
        "arena 11 segment=3 offset=8192 size=1048576 grant=5 segments=[]",
        "tables 12 tables=8256,128,0",
        "tables 13 tables=none",
        "deleted 14 missing=2",
        "contained 15 present=1",
        f"dropped 0 ids=[3,70000,{2**63},]",
        "reclaim 0",
        "ok 16",
        "unknown 17",
        "unknown 0",
        "unknown 18",
    ]
    fuzzed, parsed = (int(w.rstrip(",")) for w in out[-1].split()[1::2])
    assert fuzzed == 200000 and 0 < parsed < fuzzed  # some mutations parse, most do not


# ------------------------------------------------------------------ a coordinator that lies


def serve_once(path: str, replies: Callable[[p.Connect | p.Get], tuple[list[object], list[int]]]):
    """A fake coordinator in a thread: answers each request read on one connection with
    ``replies(request)`` (messages, descriptors to pass with them)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def run() -> None:
        conn, _ = listener.accept()
        decoder = p.FrameDecoder(p.Request)
        with conn:
            while data := conn.recv(1 << 16):
                decoder.feed(data)
                for request in decoder.messages():
                    msgs, fds = replies(request)
                    frames = b"".join(p.encode(m) for m in msgs)  # type: ignore[arg-type]
                    conn.sendmsg([frames], scm_rights(fds))
        listener.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_segment_shorter_than_it_says_is_refused_not_mapped(c: Build, tmp_path: Path) -> None:
    """A segment whose file is shorter than its SegmentInfo says would fault (SIGBUS) where
    the object lies past the file's end: the C client checks the size (fstat) first."""
    memfd = os.memfd_create("short")
    os.ftruncate(memfd, 4096)

    def replies(request: p.Connect | p.Get) -> tuple[list[object], list[int]]:
        if isinstance(request, p.Connect):
            return [p.Connected(request.seq, 1, 2, 1 << 30, [], [4096], 1 << 20, 1 << 20, None)], []
        location = p.ObjectLocation(1, 65536, 100, 0, 0)
        return [p.Got(request.seq, [location], [p.SegmentInfo(1, 1 << 20, 0, 4096)])], [memfd]

    path = str(tmp_path / "liar.sock")
    thread = serve_once(path, replies)
    proc = subprocess.run(
        [c.program("c_client"), "get", path, "5", str(tmp_path / "out"), cid(1).hex()],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
    )
    os.close(memfd)
    thread.join(10)
    assert proc.returncode == 1, f"exit {proc.returncode}: {proc.stderr}"  # not -SIGBUS
    assert proc.stderr.startswith(
        "get: protocol: segment 1 is shorter than the 1048576 bytes it says"
    ), proc.stderr
