"""The memory limit of this process's own cgroup: cgroup v2 ``memory.max``, v1
``memory.limit_in_bytes``.

The process's cgroup comes from ``/proc/self/cgroup`` and its directory from
``/proc/self/mountinfo``: a cgroup mount's root (field 4) is the part of the cgroup path the
mount hides, as in a container without a cgroup namespace, where ``/docker/ID`` is mounted at
``/sys/fs/cgroup/memory``. A limit set on an ancestor applies too, so the effective limit is
the smallest one from the cgroup up to the top of the mount. When the memory controller is
bound to a v1 hierarchy (hybrid hosts) that hierarchy is the one that limits memory; otherwise
the cgroup2 one does. ``max`` (v2) and v1's "no limit" (a huge page-aligned number) mean
unlimited.

Every path is read under ``root`` (default ``/``), so that tests can stand in a fake tree
for ``/proc`` and ``/sys/fs/cgroup``. Anything that cannot be read means "no known limit":
the caller must not refuse to start because a container hides its cgroup files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["UNLIMITED_FROM", "MemoryLimit", "memory_limit"]

# v1 writes "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 with 4 KiB pages);
# anything this large is no limit
UNLIMITED_FROM = 1 << 62


@dataclass(frozen=True)
class MemoryLimit:
    """The tightest memory limit on this process: ``limit`` bytes, set in file ``path``."""

    limit: int
    path: Path


def memory_limit(root: str | Path = "/") -> MemoryLimit | None:
    """The memory limit of this process's cgroup and its ancestors, or ``None`` for none
    (unlimited, or no memory cgroup this process can see)."""
    base = Path(root)
    try:
        cgroups = _read(base / "proc/self/cgroup").splitlines()
    except OSError:
        return None
    mounts = _mounts(base)
    v1 = _v1_memory_path(cgroups)
    if v1 is not None:
        directory = _locate(base, mounts, v1, "cgroup", "memory")
        return _tightest(directory, "memory.limit_in_bytes") if directory else None
    v2 = next((line[3:] for line in cgroups if line.startswith("0::")), None)
    if v2 is None:
        return None
    directory = _locate(base, mounts, v2, "cgroup2", None)
    return _tightest(directory, "memory.max") if directory else None


def _v1_memory_path(cgroups: list[str]) -> str | None:
    for line in cgroups:
        parts = line.split(":", 2)
        if len(parts) == 3 and "memory" in parts[1].split(","):
            return parts[2]
    return None


def _mounts(base: Path) -> list[tuple[str, str, str, list[str]]]:
    """``(mount root, mount point, fstype, super options)`` of each mount: from mountinfo, or
    ``/proc/self/mounts`` (every root taken as ``/``) where there is no mountinfo."""
    out = []
    try:
        for line in _read(base / "proc/self/mountinfo").splitlines():
            head, sep, tail = line.partition(" - ")
            fields, rest = head.split(), tail.split()
            if sep and len(fields) >= 5 and len(rest) >= 3:
                out.append(
                    (_unescape(fields[3]), _unescape(fields[4]), rest[0], rest[2].split(","))
                )
        return out
    except OSError:
        pass
    try:
        lines = _read(base / "proc/self/mounts").splitlines()
    except OSError:
        return []
    for line in lines:
        words = line.split()
        if len(words) >= 4:
            out.append(("/", _unescape(words[1]), words[2], words[3].split(",")))
    return out


def _locate(
    base: Path,
    mounts: list[tuple[str, str, str, list[str]]],
    cgroup: str,
    fstype: str,
    controller: str | None,
) -> tuple[Path, Path] | None:
    """(the cgroup's directory, the top of its mount), both under ``base``."""
    for mount_root, point, kind, options in mounts:
        if kind != fstype or (controller is not None and controller not in options):
            continue
        prefix = mount_root.rstrip("/")
        if cgroup != prefix and not cgroup.startswith(prefix + "/"):
            continue  # this mount does not show our cgroup
        top = base / point.lstrip("/")
        return top / cgroup[len(prefix) :].lstrip("/"), top
    return None


def _tightest(where: tuple[Path, Path], name: str) -> MemoryLimit | None:
    directory, top = where
    best: MemoryLimit | None = None
    while True:
        limit = _limit(directory / name)
        if limit is not None and (best is None or limit < best.limit):
            best = MemoryLimit(limit, directory / name)
        if directory == top or top not in directory.parents:
            return best
        directory = directory.parent


def _limit(path: Path) -> int | None:
    try:
        text = _read(path).strip()
    except OSError:
        return None  # the root cgroup has no memory.max; a hidden file tells nothing
    if text == "max" or not text.isdigit() or int(text) >= UNLIMITED_FROM:
        return None
    return int(text)


def _read(path: Path) -> str:
    return path.read_text()


def _unescape(field: str) -> str:
    """Mount fields escape space, tab, newline and backslash as octal (``\\040``)."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field
