"""Cells as cgroup v2 cpusets: the files under a root such as ``/sys/fs/cgroup/plasma-coord``.

:class:`CgroupTree` enables ``+cpuset`` in ``cgroup.subtree_control`` from the top of the
cgroup2 mount down to the root, makes ``ROOT/NAME`` for a cell, writes ``cpuset.cpus``,
``cpuset.mems`` and (exclusive cells) ``cpuset.cpus.partition = isolated``, reads the
``*.effective`` files and the partition state back and fails on any mismatch, moves processes
with ``cgroup.procs`` and removes cells. What a cell should be, and the rules about the root's
partition, live in :mod:`plasma.cells`; this module only does the file I/O they call for.

An isolated partition's parent must itself be a partition root, so while an exclusive cell
exists the root is one (``cpuset.cpus.partition = root``) holding the union of its cells'
CPUs: those CPUs leave the rest of the machine until the last exclusive cell is destroyed.

Failures: :class:`~plasma.errors.Unsupported` when cgroup v2, the cpuset controller or the
partition file is missing (the message names the file and what the host has instead),
:class:`~plasma.errors.PermissionDenied` for a refused write, ``OSError`` with the errno for
anything else; :class:`~plasma.errors.BadRequest` for a mismatch the kernel reports, an
unknown or existing cell, or destroying a cell that still has processes. The file operations
go through a :class:`CgroupFiles` so tests can stand in for the kernel on a temporary tree.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from plasma.cells import (
    MEMBER,
    Cell,
    CellSpec,
    Partition,
    cell_mismatch,
    parse_partition,
    root_cpus,
    validate_cell_name,
)
from plasma.errors import BadRequest, ObjectExists, ObjectNotFound, PermissionDenied, Unsupported
from plasma.linux._syscall import os_error
from plasma.topology import format_cpulist, parse_cpulist

__all__ = ["DEFAULT_ROOT", "CgroupFiles", "CgroupTree"]

_T = TypeVar("_T")
DEFAULT_ROOT = "/sys/fs/cgroup/plasma-coord"
_CONTROLLERS = "cgroup.controllers"
_SUBTREE = "cgroup.subtree_control"
_PARTITION = "cpuset.cpus.partition"


class CgroupFiles:
    """The file operations on a cgroup tree: each write is one ``write(2)``, as cgroupfs needs."""

    def read(self, path: Path) -> str:
        return path.read_text()

    def write(self, path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o755)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def subdirs(self, path: Path) -> list[str]:
        return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())

    def exists(self, path: Path) -> bool:
        return path.exists()


class CgroupTree:
    """The cells under ``root``, a directory in a cgroup2 mount (created when needed)."""

    def __init__(
        self,
        root: str | Path = DEFAULT_ROOT,
        *,
        files: CgroupFiles | None = None,
        mounts: str | Path = "/proc/self/mounts",
        kill_timeout: float = 10.0,
    ) -> None:
        self.root = Path(root)
        self.files = files or CgroupFiles()
        self.mounts = Path(mounts)
        self.kill_timeout = kill_timeout

    # ------------------------------------------------------------------ availability

    def check(self) -> None:
        """Raise :class:`Unsupported` saying what is missing for cells under the root."""
        base = self.root.parent
        if not self.files.exists(base / _CONTROLLERS):
            raise Unsupported(
                f"cells need cgroup v2: {base / _CONTROLLERS} does not exist, so {base} is not "
                f"a cgroup2 directory{self._mount_hint()}"
            )
        top = self._ancestors()[0]
        controllers = self._read(top / _CONTROLLERS).split()
        if "cpuset" not in controllers:
            raise Unsupported(
                f"cells need the cpuset controller: {top / _CONTROLLERS} lists "
                f"{' '.join(controllers) or 'no controllers'}{self._mount_hint()}"
            )

    def _mount_hint(self) -> str:
        """Where this host mounts cpuset (cgroup v1) or cgroup2 instead, from ``/proc/mounts``."""
        try:
            lines = self.mounts.read_text().splitlines()
        except OSError:
            return ""
        hints = []
        for line in lines:
            words = line.split()
            if len(words) < 4:
                continue
            point, fstype, options = words[1], words[2], words[3].split(",")
            if fstype == "cgroup" and "cpuset" in options:
                hints.append(f"cpuset is bound to a cgroup v1 hierarchy at {point}")
            elif fstype == "cgroup2":
                hints.append(f"cgroup2 is mounted at {point}")
        return f" ({'; '.join(hints)})" if hints else " (no cgroup2 file system is mounted)"

    def prepare(self) -> None:
        """Check, then enable ``+cpuset`` top-down to the root (made if missing) and in it."""
        self.check()
        for directory in self._ancestors():
            self._enable_cpuset(directory)
        if not self.files.exists(self.root):
            self._do(f"mkdir {self.root}", self.files.mkdir, self.root)
        self._enable_cpuset(self.root)

    def _ancestors(self) -> list[Path]:
        """The cgroup directories from the top of the mount down to the root's parent."""
        chain = [self.root.parent]
        while chain[-1].parent != chain[-1] and self.files.exists(chain[-1].parent / _CONTROLLERS):
            chain.append(chain[-1].parent)
        return chain[::-1]

    def _enable_cpuset(self, directory: Path) -> None:
        path = directory / _SUBTREE
        if "cpuset" not in self._read(path).split():
            self._write(path, "+cpuset")

    # ------------------------------------------------------------------ reading

    def names(self) -> list[str]:
        """The cells under the root (directories with valid cell names), sorted."""
        if not self.files.exists(self.root):
            return []
        out = []
        for name in self._do(f"list {self.root}", self.files.subdirs, self.root):
            try:
                out.append(validate_cell_name(name))
            except BadRequest:
                continue  # not made by plasma-coord
        return out

    def cells(self) -> list[Cell]:
        """Every cell under the root as the kernel reports it."""
        self.check()
        return [self.read(name) for name in self.names()]

    def read(self, name: str) -> Cell:
        """Cell ``name``: its cpuset files, partition and processes (ObjectNotFound if none)."""
        path = self.path(name)
        if not self.files.exists(path):
            raise ObjectNotFound(f"no cell {name!r} under {self.root}")
        if not self.files.exists(path / "cpuset.cpus.effective"):
            raise Unsupported(
                f"{path} has no cpuset files: the cpuset controller is not enabled in "
                f"{self.root / _SUBTREE}"
            )
        partition = path / _PARTITION
        return Cell(
            name=name,
            cpus=self._cpus(path / "cpuset.cpus"),
            mems=self._cpus(path / "cpuset.mems"),
            cpus_effective=self._cpus(path / "cpuset.cpus.effective"),
            mems_effective=self._cpus(path / "cpuset.mems.effective"),
            partition=(
                parse_partition(self._read(partition))
                if self.files.exists(partition)
                else Partition(MEMBER)
            ),
            procs=self._procs(path),
        )

    def path(self, name: str) -> Path:
        """The directory of cell ``name`` (a validated name: never outside the root)."""
        return self.root / validate_cell_name(name)

    def _cpus(self, path: Path) -> frozenset[int]:
        return parse_cpulist(self._read(path))

    def _procs(self, path: Path) -> tuple[int, ...]:
        return tuple(int(pid) for pid in self._read(path / "cgroup.procs").split())

    # ------------------------------------------------------------------ changing

    def create(self, spec: CellSpec) -> Cell:
        """Make cell ``spec.name`` and check the kernel gives it exactly ``spec``."""
        self.prepare()
        others = self.cells()
        path = self.path(spec.name)
        if self.files.exists(path):
            raise ObjectExists(f"cell {spec.name!r} already exists under {self.root}")
        self._do(f"mkdir {path}", self.files.mkdir, path)
        try:
            if spec.exclusive or self._root_partition().kind != MEMBER:
                self._make_root_partition([*others, spec])
            self._write(path / "cpuset.cpus", format_cpulist(spec.cpus))
            self._write(path / "cpuset.mems", format_cpulist(spec.mems))
            if spec.exclusive:
                self._write(path / _PARTITION, "isolated")
            cell = self.read(spec.name)
            problem = cell_mismatch(spec, cell)
            if problem:
                raise BadRequest(f"cell {spec.name}: the kernel did not apply it: {problem}")
        except BaseException:
            self._do(f"rmdir {path}", self.files.rmdir, path)
            self._fit_root()
            raise
        return cell

    def attach(self, name: str, pid: int) -> None:
        """Move process ``pid`` (0: the caller) and all its threads into cell ``name``."""
        procs = self.path(name) / "cgroup.procs"
        if not self.files.exists(procs):
            raise ObjectNotFound(f"no cell {name!r} under {self.root}")
        try:
            self.files.write(procs, str(pid))
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise ObjectNotFound(f"no process {pid} to move into cell {name}") from None
            raise self._failure(exc, f"write {pid} to {procs}") from None

    def destroy(self, name: str) -> None:
        """Remove cell ``name``; it must be empty (BadRequest lists its processes)."""
        cell = self.read(name)
        if cell.procs:
            raise BadRequest(
                f"cell {name} still has processes {', '.join(map(str, cell.procs))}: stop them "
                "or move them out first"
            )
        try:
            self.files.rmdir(self.path(name))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise BadRequest(
                    f"cell {name} is busy (EBUSY): processes or child cgroups are still in it"
                ) from None
            raise self._failure(exc, f"rmdir {self.path(name)}") from None
        self._fit_root()

    def kill_and_remove(self, name: str) -> None:
        """SIGKILL everything in cell ``name`` and remove it once it is empty (a task's end)."""
        path = self.path(name)
        deadline = time.monotonic() + self.kill_timeout
        while self.files.exists(path):
            self._kill_all(path)
            try:
                self.files.rmdir(path)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise self._failure(exc, f"rmdir {path}") from None
                if time.monotonic() > deadline:
                    raise OSError(
                        errno.EBUSY, f"cell {name}: still busy {self.kill_timeout:g}s after SIGKILL"
                    ) from None
                time.sleep(0.01)  # the kernel empties the cgroup as the killed processes exit
        self._fit_root()

    def _kill_all(self, path: Path) -> None:
        if self.files.exists(path / "cgroup.kill"):  # Linux 5.14+: the whole cgroup at once
            self._write(path / "cgroup.kill", "1")
            return
        for pid in self._procs(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue

    # ------------------------------------------------------------------ the root's partition

    def _root_partition(self) -> Partition:
        path = self.root / _PARTITION
        if not self.files.exists(path):
            return Partition(MEMBER)
        return parse_partition(self._read(path))

    def _make_root_partition(self, cells: list[Cell | CellSpec]) -> None:
        """Make the root a partition root holding every cell's CPUs (for isolated cells)."""
        path = self.root / _PARTITION
        if not self.files.exists(path):
            raise Unsupported(
                f"exclusive cells need CPU partitions: {path} does not exist (Linux 5.11+)"
            )
        self._write(self.root / "cpuset.cpus", format_cpulist(root_cpus(cells)))
        if self._root_partition().kind == MEMBER:
            self._write(path, "root")
        state = self._root_partition()
        if not state.valid or state.kind != "root":
            raise BadRequest(
                f"cannot make {self.root} the partition root exclusive cells need: "
                f"{_PARTITION} is {str(state)!r}"
            )

    def _fit_root(self) -> None:
        """After a cell went: shrink a partition root to its cells, or end it with the last
        exclusive cell (every CPU goes back to the machine)."""
        if self._root_partition().kind == MEMBER:
            return
        cells = [self.read(name) for name in self.names()]
        if any(c.exclusive for c in cells):
            self._write(self.root / "cpuset.cpus", format_cpulist(root_cpus(cells)))
        else:
            self._write(self.root / _PARTITION, MEMBER)
            self._write(self.root / "cpuset.cpus", "\n")  # empty: the parent's CPUs again

    # ------------------------------------------------------------------ I/O with clear errors

    def _read(self, path: Path) -> str:
        try:
            return self.files.read(path)
        except FileNotFoundError:
            raise Unsupported(
                f"{path} does not exist (not a cgroup v2 cpuset directory?)"
            ) from None
        except OSError as exc:
            raise self._failure(exc, f"read {path}") from None

    def _write(self, path: Path, text: str) -> None:
        try:
            self.files.write(path, text)
        except OSError as exc:
            raise self._failure(exc, f"write {text.strip() or 'empty'!r} to {path}") from None

    def _do(self, what: str, func: Callable[..., _T], *args: Path) -> _T:
        try:
            return func(*args)
        except OSError as exc:
            raise self._failure(exc, what) from None

    @staticmethod
    def _failure(exc: OSError, what: str) -> OSError:
        code = exc.errno or 0
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PermissionDenied(
                f"{what}: {os.strerror(code)}; cells need root or a cgroup delegated to this user"
            )
        if code == errno.EBUSY and what.endswith(_SUBTREE):
            return os_error(
                code,
                f"{what} (a cgroup with processes of its own cannot pass on controllers: "
                "cgroup v2's no-internal-process rule)",
            )
        return os_error(code, what)
