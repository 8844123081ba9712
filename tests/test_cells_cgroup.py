"""The cgroup v2 file logic of cells (plasma.linux.cgroup) on a temporary tree.

:class:`FakeKernel` stands in for cgroupfs: ``mkdir`` makes the interface files a cgroup gets,
writes update the effective sets and partition states as the kernel would, ``cgroup.procs``
lists only live processes and ``rmdir`` refuses a populated cgroup. Knobs make it refuse a
write, drift an effective set or invalidate a partition, for the error paths.
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from plasma.cells import CellSpec
from plasma.errors import BadRequest, ObjectExists, ObjectNotFound, PermissionDenied, Unsupported
from plasma.linux.cgroup import CgroupTree
from plasma.topology import parse_cpulist
from tests.helpers import FakeKernel


@pytest.fixture
def kernel(tmp_path: Path) -> FakeKernel:
    return FakeKernel(tmp_path / "cgroup")


@pytest.fixture
def tree(kernel: FakeKernel, tmp_path: Path) -> CgroupTree:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {kernel.top} cgroup2 rw 0 0\n")
    return CgroupTree(kernel.top / "plasma-coord", files=kernel, mounts=mounts, kill_timeout=10)


def spec(name: str = "c1", cpus: str = "2-3", mems: str = "1", exclusive: bool = False) -> CellSpec:
    return CellSpec(name, parse_cpulist(cpus), parse_cpulist(mems), exclusive)


def text(path: Path) -> str:
    return path.read_text().strip()


# ---------------------------------------------------------------------- what is missing


def test_cgroup_v1_host_says_cgroup_v2_is_missing_and_where_cpuset_is(tmp_path: Path) -> None:
    (tmp_path / "sys-fs-cgroup").mkdir()  # a tmpfs of v1 hierarchies: no cgroup.controllers
    mounts = tmp_path / "mounts"
    mounts.write_text(
        f"tmpfs {tmp_path}/sys-fs-cgroup tmpfs rw 0 0\n"
        "cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    tree = CgroupTree(tmp_path / "sys-fs-cgroup/plasma-coord", mounts=mounts)
    with pytest.raises(Unsupported) as info:
        tree.create(spec())
    message = str(info.value)
    assert "cells need cgroup v2" in message
    assert f"{tmp_path}/sys-fs-cgroup/cgroup.controllers does not exist" in message
    assert "cpuset is bound to a cgroup v1 hierarchy at /sys/fs/cgroup/cpuset" in message
    assert "cgroup2 is mounted at /sys/fs/cgroup/unified" in message
    assert not (tmp_path / "sys-fs-cgroup/plasma-coord").exists()


def test_no_cgroup2_mounted_at_all(tmp_path: Path) -> None:
    (tmp_path / "mounts").write_text("proc /proc proc rw 0 0\n")
    tree = CgroupTree(tmp_path / "plasma-coord", mounts=tmp_path / "mounts")
    with pytest.raises(Unsupported, match=r"no cgroup2 file system is mounted"):
        tree.check()


def test_missing_cpuset_controller_is_named(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path / "cg", controllers="cpu io memory")
    tree = CgroupTree(kernel.top / "plasma-coord", files=kernel, mounts=tmp_path / "none")
    with pytest.raises(Unsupported, match=r"cpuset controller: .*cgroup.controllers lists cpu io"):
        tree.create(spec())
    with pytest.raises(Unsupported, match="cpuset controller"):
        tree.cells()


def test_exclusive_cell_without_partition_support(kernel: FakeKernel, tree: CgroupTree) -> None:
    tree.prepare()
    (tree.root / "cpuset.cpus.partition").unlink()  # a kernel older than 5.11
    with pytest.raises(Unsupported, match=r"cpuset.cpus.partition does not exist"):
        tree.create(spec(exclusive=True))
    assert tree.names() == []


# ---------------------------------------------------------------------- creating


def test_create_enables_cpuset_top_down_and_reads_back(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path / "cg")
    kernel.mkdir(kernel.top / "system")  # a nested root: cpuset goes on at every level
    kernel.write(kernel.top / "cgroup.subtree_control", "+cpu")
    tree = CgroupTree(kernel.top / "system/plasma-coord", files=kernel, mounts=tmp_path / "x")
    cell = tree.create(spec())
    assert text(kernel.top / "cgroup.subtree_control") == "cpu cpuset"
    assert "cpuset" in text(kernel.top / "system/cgroup.subtree_control").split()
    assert text(tree.root / "cgroup.subtree_control") == "cpuset"
    assert (text(tree.root / "c1/cpuset.cpus"), text(tree.root / "c1/cpuset.mems")) == ("2-3", "1")
    assert cell.cpus_effective == {2, 3} and cell.mems_effective == {1}
    assert str(cell.partition) == "member" and cell.procs == ()
    order = [path for path, _ in kernel.writes if "subtree_control" in path]
    assert order == [
        "cgroup.subtree_control",  # the test's +cpu
        "cgroup.subtree_control",
        "system/cgroup.subtree_control",
        "system/plasma-coord/cgroup.subtree_control",
    ]
    tree.create(spec("c2", cpus="1"))  # already enabled: not written again
    assert [p for p, _ in kernel.writes[len(order) + 3 :] if "subtree" in p] == []
    assert [c.name for c in tree.cells()] == ["c1", "c2"]


def test_create_twice_is_refused(tree: CgroupTree) -> None:
    tree.create(spec())
    with pytest.raises(ObjectExists, match="already exists"):
        tree.create(spec())


def test_refused_write_is_permission_denied_and_leaves_no_cell(
    kernel: FakeKernel, tree: CgroupTree
) -> None:
    kernel.refuse["cpuset.mems"] = errno.EACCES
    with pytest.raises(PermissionDenied, match=r"write '1' to .*c1/cpuset.mems: Permission denied"):
        tree.create(spec())
    assert tree.names() == []


def test_other_write_errors_keep_their_errno(kernel: FakeKernel, tree: CgroupTree) -> None:
    kernel.refuse["cpuset.cpus"] = errno.EINVAL
    with pytest.raises(OSError) as info:
        tree.create(spec())
    assert info.value.errno == errno.EINVAL and "cpuset.cpus" in str(info.value)
    assert not isinstance(info.value, PermissionDenied)
    assert tree.names() == []


def test_effective_mismatch_fails_and_removes_the_cell(
    kernel: FakeKernel, tree: CgroupTree
) -> None:
    kernel.effective_cpus = "3"  # e.g. CPU 2 taken by an isolated partition elsewhere
    with pytest.raises(BadRequest, match=r"cpuset.cpus.effective is 3, not 2-3"):
        tree.create(spec())
    assert tree.names() == []


def test_mems_outside_the_parent_are_a_mismatch(tree: CgroupTree) -> None:
    with pytest.raises(BadRequest, match=r"cpuset.mems.effective is 0-1, not 0-2"):
        tree.create(spec(mems="0-2"))


def test_exclusive_cell_makes_the_root_a_partition_and_gives_it_back(
    kernel: FakeKernel, tree: CgroupTree
) -> None:
    tree.create(spec("shared", cpus="1", mems="0"))
    cell = tree.create(spec("iso", cpus="2-3", exclusive=True))
    assert str(cell.partition) == "isolated" and cell.exclusive
    assert text(tree.root / "cpuset.cpus.partition") == "root"
    assert text(tree.root / "cpuset.cpus") == "1-3"  # every cell's CPUs
    tree.create(spec("later", cpus="0", mems="0"))  # the partition root grows with its cells
    assert text(tree.root / "cpuset.cpus") == "0-3"
    tree.destroy("later")
    assert text(tree.root / "cpuset.cpus") == "1-3"
    tree.destroy("iso")  # the last exclusive cell: the root is a member again, CPUs given back
    assert text(tree.root / "cpuset.cpus.partition") == "member"
    assert text(tree.root / "cpuset.cpus") == ""
    assert tree.names() == ["shared"]


def test_invalid_root_partition_is_reported_and_undone(
    kernel: FakeKernel, tree: CgroupTree
) -> None:
    kernel.partition_error["plasma-coord"] = "Parent unable to distribute cpu downstream"
    with pytest.raises(BadRequest) as info:
        tree.create(spec(exclusive=True))
    assert "'root invalid (Parent unable to distribute cpu downstream)'" in str(info.value)
    assert tree.names() == []
    assert text(tree.root / "cpuset.cpus.partition") == "member"


def test_invalid_cell_partition_is_a_mismatch(kernel: FakeKernel, tree: CgroupTree) -> None:
    kernel.partition_error["c1"] = "Cpu list in cpuset.cpus not exclusive"
    with pytest.raises(BadRequest, match=r"'isolated invalid \(Cpu list .* not exclusive\)'"):
        tree.create(spec(exclusive=True))
    assert tree.names() == []
    assert text(tree.root / "cpuset.cpus.partition") == "member"


# ---------------------------------------------------------------------- processes, removal


def test_attach_and_destroy_a_non_empty_cell(
    tree: CgroupTree, sleeper: subprocess.Popen[bytes]
) -> None:
    tree.create(spec())
    tree.attach("c1", sleeper.pid)
    assert tree.read("c1").procs == (sleeper.pid,)
    with pytest.raises(BadRequest, match=rf"still has processes {sleeper.pid}"):
        tree.destroy("c1")
    sleeper.kill()
    sleeper.wait()
    tree.destroy("c1")
    assert tree.names() == []


def test_destroy_ebusy_says_busy(kernel: FakeKernel, tree: CgroupTree) -> None:
    tree.create(spec())
    kernel.busy.add("c1")
    with pytest.raises(BadRequest, match=r"busy \(EBUSY\)"):
        tree.destroy("c1")


def test_attach_errors(kernel: FakeKernel, tree: CgroupTree) -> None:
    with pytest.raises(ObjectNotFound, match="no cell 'nope'"):
        tree.attach("nope", 1)
    tree.create(spec())
    kernel.refuse["cgroup.procs"] = errno.ESRCH
    with pytest.raises(ObjectNotFound, match="no process 999999"):
        tree.attach("c1", 999999)
    with pytest.raises(ObjectNotFound):
        tree.destroy("nope")


def test_kill_and_remove_ends_what_is_inside(
    tree: CgroupTree, sleeper: subprocess.Popen[bytes]
) -> None:
    tree.create(spec(exclusive=True))
    tree.attach("c1", sleeper.pid)
    tree.kill_and_remove("c1")
    assert sleeper.wait(timeout=10) == -9
    assert tree.names() == []
    assert text(tree.root / "cpuset.cpus.partition") == "member"
    tree.kill_and_remove("c1")  # already gone: nothing to do


def test_kill_and_remove_gives_up_on_a_cell_that_stays_busy(
    kernel: FakeKernel, tree: CgroupTree
) -> None:
    tree.create(spec())
    kernel.busy.add("c1")
    tree.kill_timeout = 0.05
    with pytest.raises(OSError, match="still busy"):
        tree.kill_and_remove("c1")


# ---------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name", ["..", "../etc", "a/b", ".", "", "cpuset.cpus", "x" * 65, "sp ace", "ü", "a\n"]
)
def test_bad_names_never_reach_the_tree(tree: CgroupTree, name: str) -> None:
    with pytest.raises(BadRequest, match="invalid cell name"):
        tree.path(name)
    with pytest.raises(BadRequest, match="invalid cell name"):
        tree.destroy(name)


def test_foreign_directories_are_not_cells(kernel: FakeKernel, tree: CgroupTree) -> None:
    tree.create(spec())
    kernel.mkdir(tree.root / "not.a.cell")
    assert tree.names() == ["c1"]
