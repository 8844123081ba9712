"""plasma.linux syscall wrappers on the real kernel (one NUMA node here)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from plasma.errors import BadRequest, Unsupported
from plasma.linux import _syscall, affinity, memfd, numa, peercred
from plasma.linux.perf import PERF_ATTR_SIZE_VER8, PerfEventAttr
from plasma.topology import parse_cpulist

T = TypeVar("T")
PAGE = mmap.PAGESIZE
MiB = 1 << 20


def in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread (per-thread policy/affinity stay out of the test thread)."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


def hugepages(size_kb: int, count: str = "free_hugepages") -> int:
    path = Path(f"/sys/kernel/mm/hugepages/hugepages-{size_kb}kB/{count}")
    return int(path.read_text()) if path.exists() else 0


# ---------------------------------------------------------------- syscall layer


def test_syscall_numbers_per_arch() -> None:
    assert _syscall.syscall_number("mbind", "x86_64") == 237
    assert _syscall.syscall_number("move_pages", "x86_64") == 279
    assert _syscall.syscall_number("set_mempolicy", "aarch64") == 237
    assert _syscall.syscall_number("get_mempolicy", "aarch64") == 236
    assert _syscall.syscall_number("perf_event_open", "aarch64") == 241


def test_unknown_arch_is_unsupported() -> None:
    with pytest.raises(Unsupported, match=r"mbind.*riscv"):
        _syscall.syscall_number("mbind", "riscv64")


def test_non_linux_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(Unsupported, match="Linux only"):
        numa.get_mempolicy()


def test_enosys_maps_to_unsupported_and_other_errnos_to_oserror() -> None:
    assert isinstance(_syscall.os_error(errno.ENOSYS, "mbind(...)"), Unsupported)
    err = _syscall.os_error(errno.EPERM, "mbind(...)")
    assert not isinstance(err, Unsupported)
    assert err.errno == errno.EPERM and "mbind" in str(err)


def test_perf_event_attr_layout() -> None:
    assert ctypes.sizeof(PerfEventAttr) == PERF_ATTR_SIZE_VER8 == 136
    offsets = {name: getattr(PerfEventAttr, name).offset for name, *_ in PerfEventAttr._fields_}
    assert offsets["config"] == 8
    assert offsets["read_format"] == 32
    assert offsets["flags"] == 40
    assert offsets["config1"] == 56
    assert offsets["branch_sample_type"] == 72
    assert offsets["sample_regs_intr"] == 96
    assert offsets["aux_sample_size"] == 112
    assert offsets["config3"] == 128


# ---------------------------------------------------------------- memory policy


def test_set_and_get_mempolicy_round_trip() -> None:
    def bind_then_reset() -> tuple[tuple[int, list[int]], tuple[int, list[int]]]:
        numa.set_mempolicy(numa.MPOL_BIND, [0])
        bound = numa.get_mempolicy()
        numa.set_mempolicy(numa.MPOL_DEFAULT)
        return bound, numa.get_mempolicy()

    bound, reset = in_thread(bind_then_reset)
    assert bound == (numa.MPOL_BIND, [0])
    assert reset == (numa.MPOL_DEFAULT, [])


def test_mempolicy_with_mode_flags_restores_exactly() -> None:
    def restore() -> tuple[int, list[int]]:
        numa.set_mempolicy(numa.MPOL_PREFERRED | numa.MPOL_F_STATIC_NODES, [0])
        saved = numa.get_mempolicy()
        numa.set_mempolicy(numa.MPOL_DEFAULT)
        numa.set_mempolicy(*saved)
        return numa.get_mempolicy()

    assert in_thread(restore) == (numa.MPOL_PREFERRED | numa.MPOL_F_STATIC_NODES, [0])
    assert numa.mode_name(numa.MPOL_BIND | numa.MPOL_F_STATIC_NODES) == (
        "MPOL_BIND|MPOL_F_STATIC_NODES"
    )


def test_set_mempolicy_offline_node_is_a_clear_oserror() -> None:
    with pytest.raises(OSError, match=r"set_mempolicy\(MPOL_BIND, nodes=\[7\]\).*online") as info:
        in_thread(lambda: numa.set_mempolicy(numa.MPOL_BIND, [7]))
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("mode", "nodes", "message"),
    [
        (numa.MPOL_BIND, [], "at least one"),
        (numa.MPOL_BIND, [-1], "out of range"),
        (numa.MPOL_BIND, [numa.MAX_NODES], "out of range"),
        (numa.MPOL_DEFAULT, [0], "takes no nodes"),
        (99, [0], "unknown memory policy mode"),
    ],
)
def test_bad_policy_arguments_are_bad_requests(mode: int, nodes: list[int], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        numa.set_mempolicy(mode, nodes)


def test_mbind_node0_then_every_page_is_on_node0() -> None:
    mm = mmap.mmap(-1, 4 * MiB)
    address = numa.buffer_address(mm)
    numa.mbind(address, len(mm), numa.MPOL_BIND, [0], numa.MPOL_MF_STRICT)
    assert set(numa.page_nodes(address, len(mm), PAGE)) == {-errno.ENOENT}  # not touched yet
    memfd.prefault(mm)
    nodes = numa.page_nodes(address, len(mm), PAGE)
    assert len(nodes) == 4 * MiB // PAGE and set(nodes) == {0}
    mm.close()  # buffer_address held no export


def test_mbind_invalid_node_is_a_clear_error() -> None:
    mm = mmap.mmap(-1, MiB)
    address = numa.buffer_address(mm)
    with pytest.raises(OSError, match=r"mbind\(.*nodes=\[3\].*online") as info:
        numa.mbind(address, len(mm), numa.MPOL_BIND, [3])
    assert info.value.errno == errno.EINVAL
    with pytest.raises(BadRequest):
        numa.mbind(address, 0, numa.MPOL_BIND, [0])
    with pytest.raises(BadRequest, match="flags"):
        numa.mbind(address, len(mm), numa.MPOL_BIND, [0], flags=0x100)
    mm.close()


def test_page_nodes_unmapped_and_partial_pages() -> None:
    mm = mmap.mmap(-1, 2 * PAGE)
    address = numa.buffer_address(mm)
    mm[0] = 1
    assert numa.page_nodes(address, PAGE + 1, PAGE) == [0, -errno.ENOENT]
    assert numa.page_nodes(address, 0, PAGE) == []
    mm.close()
    assert numa.page_nodes(address, PAGE, PAGE) == [-errno.EFAULT]
    with pytest.raises(BadRequest, match="power of two"):
        numa.page_nodes(address, PAGE, 3000)


def test_buffer_address() -> None:
    buf = bytearray(b"abc")
    address = numa.buffer_address(buf)
    assert ctypes.string_at(address, 3) == b"abc"
    assert numa.buffer_address(memoryview(buf)[1:]) == address + 1
    buf.extend(b"d" * 100)  # resizable again: no export left behind
    with pytest.raises(BadRequest, match="writable"):
        numa.buffer_address(b"read-only")
    with pytest.raises(BadRequest, match="non-empty"):
        numa.buffer_address(bytearray())


# ---------------------------------------------------------------- memfd


def test_hugepage_flags() -> None:
    assert memfd.hugepage_flags(2 * MiB) == memfd.MFD_HUGETLB | memfd.MFD_HUGE_2MB
    assert memfd.hugepage_flags(1 << 30) == memfd.MFD_HUGETLB | memfd.MFD_HUGE_1GB
    assert memfd.MFD_HUGE_2MB == 21 << 26 and memfd.MFD_HUGE_1GB == 30 << 26
    with pytest.raises(BadRequest, match="power of two"):
        memfd.hugepage_flags(3 * MiB)


def test_memfd_fallocate_prefault_and_bind() -> None:
    fd = memfd.memfd_create("plasma-test")
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        memfd.fallocate(fd, 0, 2 * MiB)
        assert os.fstat(fd).st_size == 2 * MiB
        mm = mmap.mmap(fd, 2 * MiB)
        address = numa.buffer_address(mm)
        numa.mbind(address, len(mm), numa.MPOL_BIND, [0])
        memfd.prefault(mm)
        assert set(numa.page_nodes(address, len(mm), PAGE)) == {0}
        mm.close()
    finally:
        os.close(fd)


def test_memfd_without_cloexec() -> None:
    fd = memfd.memfd_create("plasma-test", cloexec=False)
    try:
        assert not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(fd)


def test_prefault_falls_back_to_touching_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    def old_kernel(*args: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(memfd, "madvise", old_kernel)
    mm = mmap.mmap(-1, 16 * PAGE)
    address = numa.buffer_address(mm)
    memfd.prefault(mm)
    assert numa.page_nodes(address, len(mm), PAGE) == [0] * 16
    assert not memfd.populate_read(address, len(mm))  # (an optimisation: no error)
    mm.close()


@pytest.mark.parametrize("call", ["prefault", "populate_read"])
def test_populating_lets_the_other_threads_of_the_process_run(call: str) -> None:
    """The madvise runs with the interpreter lock released (``mmap.madvise`` holds it: a
    coordinator populating a spare stopped its event loop, a client's background populate
    its caller). With no forced switch between threads (a switch interval of 100 s), this
    thread runs while the other is inside its loop of populates only if a call in it lets
    go of the lock; the loop goes on until this thread has run (or 200 rounds: one quick
    call may end before this thread is scheduled, not all of them)."""
    size = 16 * MiB
    fd = memfd.memfd_create("plasma-test")
    os.ftruncate(fd, size)
    os.pwrite(fd, b"x" * size, 0)  # pages to map: each populate has work to do
    inside, seen = [False], [False]

    mm = mmap.mmap(fd, size)

    def populate() -> None:
        inside[0] = True
        for _ in range(200):
            if seen[0]:
                break
            if call == "prefault":
                memfd.prefault(mm)
            else:
                memfd.populate_read(numa.buffer_address(mm), size)
            mm.madvise(mmap.MADV_DONTNEED)  # (page tables to fill again; holds the lock)
        inside[0] = False

    interval = sys.getswitchinterval()
    sys.setswitchinterval(100)
    try:
        thread = threading.Thread(target=populate)
        thread.start()
        while thread.is_alive() and not seen[0]:
            seen[0] = inside[0]
            time.sleep(0)  # (lets the other thread take the lock back)
        thread.join()
    finally:
        sys.setswitchinterval(interval)
        mm.close()
        os.close(fd)
    assert seen[0], "the other thread could not run while the madvise ran"


@pytest.mark.skipif(hugepages(2048) > 0, reason="this test needs zero free 2 MiB hugepages")
def test_hugetlb_shortage_is_enospc_not_sigbus() -> None:
    fd = memfd.memfd_create("plasma-huge", hugepage_size=2 * MiB)
    try:
        memfd.fallocate(fd, 0, 2 * MiB)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC and "hugepages" in str(exc)
    else:
        if hugepages(2048, "nr_hugepages") > 0:  # (a machine-wide pool)
            pytest.skip("another process reserved 2 MiB hugepages during the test")
        pytest.fail("a 2 MiB hugepage was allocated with none reserved")
    finally:
        os.close(fd)


def test_unknown_hugepage_size_is_unsupported() -> None:
    with pytest.raises(Unsupported, match="no 64 kB hugepages"):
        memfd.memfd_create("plasma-huge", hugepage_size=64 * 1024)


def test_fallocate_bad_arguments() -> None:
    with pytest.raises(BadRequest):
        memfd.fallocate(0, -1, 10)
    with (
        open("/proc/self/stat", "rb") as read_only,
        pytest.raises(OSError, match=r"fallocate\(fd=") as info,
    ):
        memfd.fallocate(read_only.fileno(), 0, PAGE)
    assert info.value.errno == errno.EBADF


# ---------------------------------------------------------------- affinity, credentials


def test_affinity_round_trip() -> None:
    allowed = affinity.get_affinity()
    assert allowed and allowed <= set(range(os.cpu_count() or 1))
    one = min(allowed)

    def pin() -> tuple[set[int], set[int]]:
        affinity.set_affinity([one])
        pinned = affinity.get_affinity()
        affinity.set_affinity(allowed)
        return pinned, affinity.get_affinity()

    assert in_thread(pin) == ({one}, allowed)


def test_affinity_bad_input() -> None:
    with pytest.raises(BadRequest, match="at least one"):
        affinity.set_affinity([])
    with pytest.raises(BadRequest, match="non-negative"):
        affinity.set_affinity([-1])
    with pytest.raises(OSError, match="allowed CPUs") as info:
        affinity.set_affinity([4000])
    assert info.value.errno == errno.EINVAL
    with pytest.raises(ProcessLookupError):
        affinity.get_affinity(int(Path("/proc/sys/kernel/pid_max").read_text()) + 1)


def test_peer_credentials_over_socketpair() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert peercred.peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        pytest.raises(BadRequest, match="AF_UNIX"),
    ):
        peercred.peer_credentials(tcp)


def test_a_child_that_dies_with_its_parent_does_even_when_it_is_sigkilled() -> None:
    import signal
    import subprocess
    import sys

    from tests.conftest import wait_until
    from tests.helpers import REPO

    middle = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            "from plasma.linux.processes import die_with_parent\n"
            "me = os.getpid()\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
            " preexec_fn=lambda: die_with_parent(me))\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert middle.stdout is not None
    child = int(middle.stdout.readline())
    middle.send_signal(signal.SIGKILL)
    middle.wait()

    def gone() -> bool:
        try:
            with open(f"/proc/{child}/stat") as f:
                return f.read().split(") ")[1].startswith("Z")  # a zombie of init: dead
        except FileNotFoundError:
            return True

    wait_until(gone, what="the child to die with its parent")


def test_usable_nodes_are_online_and_allowed() -> None:
    assert parse_cpulist("0-3,5\n") == {0, 1, 2, 3, 5}
    assert parse_cpulist("0") == {0}
    usable = numa.usable_nodes()
    assert usable and min(usable) >= 0
    online = Path(numa.NODE_ONLINE)
    if online.exists():
        assert usable <= parse_cpulist(online.read_text())
