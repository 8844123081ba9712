"""The captured machines of ``../shared/topologies``: sysfs trees for ``--sysfs-root``."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

__all__ = ["DUMPS", "unpack"]

DUMPS = Path("/work/shared/topologies")

# Only the files the parser reads (unpacking whole trees takes a minute on a busy machine).
_WANTED = re.compile(
    r"^[^/]+/(proc/(self/(cgroup|cpuset)|meminfo|mounts)"
    r"|sys/devices/system/cpu/(present|online|cpu\d+/(online|topology/[^/]+"
    r"|cache/index\d+/(level|type|shared_cpu_\w+)))"
    r"|sys/devices/system/node/(online|possible|node\d+/(cpulist|cpumap|distance|meminfo"
    r"|hugepages/[^/]+/nr_hugepages))"
    r"|sys/kernel/mm/hugepages/[^/]+/nr_hugepages"
    r"|(sys/fs/cgroup|dev/cpuset|cgroup)/.*(cpus|mems)[.a-z]*)$"
)


def unpack(name: str, base: Path) -> Path:
    """Unpack dump ``name`` under ``base``; return the root holding sys/ and proc/."""
    with tarfile.open(DUMPS / f"{name}.tar.bz2") as tar:
        wanted = [m for m in tar if m.isdir() or (m.isfile() and _WANTED.match(m.name))]
        tar.extractall(base / name, members=wanted, filter="data")
    (root,) = (base / name).iterdir()
    return root
