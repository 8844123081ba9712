"""``serve`` refuses a budget its own memory cgroup cannot hold (plasma.linux.memcg).

Fake ``/proc`` and ``/sys/fs/cgroup`` trees (v1, v2, hybrid, nested, a container's mount
root) for the reading; the CLI refusal on a fake tree (``--cgroup-root``) and in a real
cgroup v1 memory cgroup made for the test (skipped where there is none or it is read-only).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from plasma.cli.serve import SERVE_OVERHEAD
from plasma.linux.memcg import MemoryLimit, memory_limit
from tests.helpers import REPO

MiB = 1 << 20
V1_UNLIMITED = "9223372036854771712"


def fake_tree(
    root: Path, cgroup: str, mountinfo: str, files: dict[str, str], mounts: bool = False
) -> Path:
    """``root``/proc/self/{cgroup,mountinfo (or mounts)} and the given cgroup files."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / f"proc/self/{'mounts' if mounts else 'mountinfo'}").write_text(mountinfo)
    for name, text in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "35 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "42 31 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)


def test_v2_memory_max_of_the_process_cgroup(tmp_path: Path) -> None:
    d = "/sys/fs/cgroup/system.slice/plasma.service"
    root = fake_tree(
        tmp_path,
        "0::/system.slice/plasma.service\n",
        V2_MOUNTINFO,
        {
            f"{d}/memory.max": str(300 * MiB),
            "/sys/fs/cgroup/system.slice/memory.max": "max",
        },
    )
    assert memory_limit(root) == MemoryLimit(300 * MiB, root / d.lstrip("/") / "memory.max")


def test_v2_max_everywhere_is_no_limit(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path,
        "0::/a/b\n",
        V2_MOUNTINFO,
        {
            "/sys/fs/cgroup/a/b/memory.max": "max",
            "/sys/fs/cgroup/a/memory.max": "max",
        },
    )
    assert memory_limit(root) is None


def test_v2_nested_the_tightest_ancestor_wins(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path,
        "0::/kubepods/pod1/ctr\n",
        V2_MOUNTINFO,
        {
            "/sys/fs/cgroup/kubepods/pod1/ctr/memory.max": "max",
            "/sys/fs/cgroup/kubepods/pod1/memory.max": str(200 * MiB),
            "/sys/fs/cgroup/kubepods/memory.max": str(8 << 30),
        },
    )
    limit = memory_limit(root)
    assert limit == MemoryLimit(200 * MiB, root / "sys/fs/cgroup/kubepods/pod1/memory.max")


def test_v1_memory_limit_in_bytes_nested_and_unlimited(tmp_path: Path) -> None:
    cgroup = "9:memory:/process_api/job/step\n4:cpu,cpuacct:/\n0::/\n"
    memory = "/sys/fs/cgroup/memory/process_api"
    root = fake_tree(
        tmp_path,
        cgroup,
        V1_MOUNTINFO,
        {
            f"{memory}/job/step/memory.limit_in_bytes": V1_UNLIMITED,
            f"{memory}/job/memory.limit_in_bytes": str(512 * MiB),
            f"{memory}/memory.limit_in_bytes": str(1 << 30),
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
            "/sys/fs/cgroup/unified/memory.max": str(MiB),  # hybrid: v2 has no memory controller
        },
    )
    assert memory_limit(root) == MemoryLimit(
        512 * MiB, root / memory.lstrip("/") / "job/memory.limit_in_bytes"
    )


def test_v1_unlimited_is_no_limit(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path,
        "4:memory:/\n",
        V1_MOUNTINFO,
        {
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
        },
    )
    assert memory_limit(root) is None


def test_a_container_mount_root_hides_the_cgroup_prefix(tmp_path: Path) -> None:
    """docker without a cgroup namespace: /docker/ID is what /sys/fs/cgroup/memory shows."""
    mountinfo = "35 31 0:30 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
    root = fake_tree(
        tmp_path,
        "5:memory:/docker/abc\n",
        mountinfo,
        {
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": str(100 * MiB),
        },
    )
    limit = memory_limit(root)
    assert limit == MemoryLimit(100 * MiB, root / "sys/fs/cgroup/memory/memory.limit_in_bytes")


def test_proc_mounts_when_there_is_no_mountinfo(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path,
        "0::/job\n",
        "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n",
        {
            "/sys/fs/cgroup/job/memory.max": str(96 * MiB),
        },
        mounts=True,
    )
    assert memory_limit(root) == MemoryLimit(96 * MiB, root / "sys/fs/cgroup/job/memory.max")


def test_nothing_readable_is_no_limit(tmp_path: Path) -> None:
    assert memory_limit(tmp_path) is None  # no /proc/self/cgroup
    root = fake_tree(tmp_path / "x", "0::/elsewhere\n", "", {})  # no cgroup mount
    assert memory_limit(root) is None


def serve(*args: str, wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*wrapper, sys.executable, "-m", "plasma", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_serve_refuses_a_budget_its_cgroup_cannot_hold_in_one_line(tmp_path: Path) -> None:
    root = fake_tree(
        tmp_path / "tree",
        "0::/ctr\n",
        V2_MOUNTINFO,
        {
            "/sys/fs/cgroup/ctr/memory.max": str(256 * MiB),
        },
    )
    sock = str(tmp_path / "s.sock")
    # 192 MiB + 64 MiB overhead fits exactly; one page more does not
    proc = serve("--socket", sock, "--memory", f"{192 * MiB + 4096}", "--cgroup-root", str(root))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(192 * MiB + 4096) in lines[0] and str(256 * MiB) in lines[0], lines[0]
    assert str(192 * MiB + 4096 + SERVE_OVERHEAD) in lines[0], lines[0]
    assert "memory cgroup" in lines[0] and not os.path.exists(sock)


def test_serve_starts_when_budget_and_overhead_fit(
    tmp_path: Path, coordinator_factory: Callable[..., object]
) -> None:
    root = fake_tree(
        tmp_path / "tree",
        "0::/ctr\n",
        V2_MOUNTINFO,
        {
            "/sys/fs/cgroup/ctr/memory.max": str(16 * MiB + SERVE_OVERHEAD),
        },
    )
    coordinator_factory("--memory", "16MiB", "--segment-size", "4MiB", "--cgroup-root", str(root))


@pytest.fixture
def v1_memory_cgroup() -> Iterator[Path]:
    """A child of this process's cgroup v1 memory cgroup, removed afterwards."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        pytest.skip("no /proc/self/cgroup")
    path = next((ln.split(":", 2)[2] for ln in lines if ":memory:" in ln), None)
    top = Path("/sys/fs/cgroup/memory")
    if path is None or not (top / path.lstrip("/") / "memory.limit_in_bytes").exists():
        pytest.skip("no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory")
    cgroup = top / path.lstrip("/") / f"plasma-test-{os.getpid()}"
    try:
        cgroup.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup: {exc}")
    try:
        yield cgroup
    finally:
        cgroup.rmdir()  # the processes in it have exited (subprocess.run waited)


@pytest.mark.coordinator
def test_serve_in_a_real_v1_memory_cgroup(tmp_path: Path, v1_memory_cgroup: Path) -> None:
    (v1_memory_cgroup / "memory.limit_in_bytes").write_text(str(100 * MiB))
    enter = ("sh", "-c", f'echo $$ > {v1_memory_cgroup}/cgroup.procs && exec "$@"', "sh")
    sock = str(tmp_path / "s.sock")
    refused = serve("--socket", sock, "--memory", "64MiB", wrapper=enter)
    assert refused.returncode == 1, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert str(64 * MiB) in refused.stderr and str(100 * MiB) in refused.stderr
    assert str(v1_memory_cgroup / "memory.limit_in_bytes") in refused.stderr
    # the same cgroup with a budget that fits: serve starts (and stops on SIGTERM)
    proc = subprocess.Popen(
        [
            *enter,
            sys.executable,
            "-m",
            "plasma",
            "serve",
            "--socket",
            sock,
            "--memory",
            "16MiB",
            "--segment-size",
            "4MiB",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("ready"), proc.stderr
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
