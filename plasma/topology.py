"""The host's CPUs and NUMA nodes (internal), parsed from sysfs/procfs under a root.

``Topology.from_sysfs(root)`` reads ``root/sys/devices/system/{cpu,node}`` and ``root/proc``
so that captured trees load exactly like the live machine. Missing files degrade to
documented defaults instead of failing:

- no ``node/`` directory (non-NUMA kernel): one node 0 holding every CPU, memory from
  ``/proc/meminfo``, hugepages from ``/sys/kernel/mm/hugepages``;
- no or malformed ``distance`` row: 10 to itself, 20 to every other node;
- no cache information: a CPU's last-level-cache group is its package (or itself);
- no ``topology/`` directory (offline CPU): package and core are -1, the CPU is its own core;
- a CPU whose node is not online: ``node`` is ``NO_NODE``;
- no cgroup cpuset: every online CPU and every node is allowed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from plasma.errors import BadRequest

NO_NODE = -1
LOCAL_DISTANCE = 10
REMOTE_DISTANCE = 20


def parse_cpulist(text: str) -> frozenset[int]:
    """``"0-3,8,10-11"`` → ``{0, 1, 2, 3, 8, 10, 11}``; an empty string is the empty set."""
    out: set[int] = set()
    for part in text.strip(" \n\x00").split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise BadRequest(f"not a CPU/node list: {text!r}")
        out.update(range(int(lo), int(hi) + 1) if sep else (int(lo),))
    return frozenset(out)


def parse_cpumask(text: str) -> frozenset[int]:
    """A sysfs hex bitmap such as ``"00000000,00002222"`` → the set bits."""
    digits = text.strip(" \n\x00").replace(",", "")
    if not re.fullmatch(r"[0-9a-fA-F]*", digits):
        raise BadRequest(f"not a CPU mask: {text!r}")
    value = int(digits or "0", 16)
    return frozenset(i for i in range(value.bit_length()) if value >> i & 1)


def format_cpulist(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 3, 8}`` → ``"0-3,8"`` (the inverse of :func:`parse_cpulist`)."""
    ranges: list[str] = []
    run: list[int] = []
    for cpu in sorted(cpus):
        if run and cpu != run[-1] + 1:
            ranges.append(_range_text(run))
            run = []
        run.append(cpu)
    if run:
        ranges.append(_range_text(run))
    return ",".join(ranges)


def _range_text(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


@dataclass(frozen=True)
class Cpu:
    """One logical CPU (hardware thread)."""

    id: int
    node: int  # NO_NODE when its NUMA node is not online
    package: int  # -1 when unknown (offline CPU)
    core: int  # core_id, unique within a package; -1 when unknown
    siblings: frozenset[int]  # SMT threads of the same core, itself included
    l3: frozenset[int]  # CPUs sharing its last-level cache, itself included
    online: bool = True


@dataclass(frozen=True)
class NumaNode:
    """One NUMA node; CPU-less memory nodes (HBM, NVM, GPU memory) have no CPUs."""

    id: int
    cpus: frozenset[int]
    memory_total: int  # bytes
    memory_free: int  # bytes
    distances: dict[int, int] = field(default_factory=dict)  # node id -> ACPI SLIT distance
    hugepages: dict[int, int] = field(default_factory=dict)  # page size in bytes -> count


@dataclass(frozen=True)
class Topology:
    """CPUs and NUMA nodes of one machine plus what this process may use."""

    nodes: dict[int, NumaNode]
    cpus: dict[int, Cpu]
    allowed_cpus: frozenset[int]  # online CPUs the cgroup cpuset / affinity mask allows
    allowed_nodes: frozenset[int]  # nodes the cgroup cpuset allows memory on
    root: str = "/"

    @classmethod
    def from_sysfs(cls, root: str | Path = "/") -> Topology:
        """Parse the tree under ``root`` (the directory holding ``sys/`` and ``proc/``)."""
        return _SysfsReader(Path(root)).read()

    @classmethod
    def current(cls) -> Topology:
        """The live machine, parsed once per process."""
        return _current()

    def node_of_cpu(self, cpu: int) -> int:
        """The NUMA node of ``cpu`` (``NO_NODE`` if its node is not online)."""
        try:
            return self.cpus[cpu].node
        except KeyError:
            raise BadRequest(f"no CPU {cpu} on this machine") from None

    def node_for_cpus(self, cpus: Iterable[int]) -> int | None:
        """The node holding most of ``cpus`` (ties to the lower id), None if none is known."""
        counts: dict[int, int] = {}
        for cpu in cpus:
            info = self.cpus.get(cpu)
            if info is not None and info.node != NO_NODE:
                counts[info.node] = counts.get(info.node, 0) + 1
        if not counts:
            return None
        return min(counts, key=lambda node: (-counts[node], node))

    def distance(self, a: int, b: int) -> int:
        """Distance between two nodes (10 local; default 20 when unknown)."""
        if a == b:
            return LOCAL_DISTANCE
        return self.nodes[a].distances.get(b, REMOTE_DISTANCE)

    @property
    def packages(self) -> dict[int, frozenset[int]]:
        """Package id → its online CPUs."""
        out: dict[int, set[int]] = {}
        for c in self.cpus.values():
            if c.online and c.package >= 0:
                out.setdefault(c.package, set()).add(c.id)
        return {k: frozenset(v) for k, v in sorted(out.items())}

    @property
    def cores(self) -> list[frozenset[int]]:
        """Every online core as the set of its SMT threads, ordered by lowest CPU."""
        return sorted({c.siblings for c in self.cpus.values() if c.online}, key=min)

    @property
    def l3_groups(self) -> list[frozenset[int]]:
        """Every last-level-cache group of online CPUs, ordered by lowest CPU."""
        return sorted({c.l3 for c in self.cpus.values() if c.online}, key=min)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data: ``nodes``, ``cpus``, ``allowed_cpus``, ``allowed_nodes``."""
        return {
            "nodes": [
                {
                    "id": n.id,
                    "cpus": sorted(n.cpus),
                    "memory_total": n.memory_total,
                    "memory_free": n.memory_free,
                    "distances": {str(k): v for k, v in sorted(n.distances.items())},
                    "hugepages": {str(k): v for k, v in sorted(n.hugepages.items())},
                    "allowed": n.id in self.allowed_nodes,
                }
                for n in sorted(self.nodes.values(), key=lambda n: n.id)
            ],
            "cpus": [
                {
                    "id": c.id,
                    "node": c.node,
                    "package": c.package,
                    "core": c.core,
                    "siblings": sorted(c.siblings),
                    "l3": sorted(c.l3),
                    "online": c.online,
                    "allowed": c.id in self.allowed_cpus,
                }
                for c in sorted(self.cpus.values(), key=lambda c: c.id)
            ],
            "allowed_cpus": sorted(self.allowed_cpus),
            "allowed_nodes": sorted(self.allowed_nodes),
        }


@functools.cache
def _current() -> Topology:
    return Topology.from_sysfs("/")


class _SysfsReader:
    """Reads one sysfs/procfs tree; every path is taken relative to ``root``."""

    def __init__(self, root: Path) -> None:
        if not (root / "sys").is_dir():
            raise BadRequest(f"{root} holds no sys/ directory (expected a sysfs root)")
        self.root = root
        self.cpu_dir = root / "sys/devices/system/cpu"
        self.node_dir = root / "sys/devices/system/node"
        self.node_cpus: dict[int, frozenset[int]] = {}

    def text(self, path: Path) -> str | None:
        try:
            return path.read_text(errors="replace")
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None

    def cpuset(self, directory: Path, name: str) -> frozenset[int] | None:
        """A ``NAME_list`` file, else the ``NAME`` hex mask, else None."""
        listed = self.text(directory / f"{name}_list")
        if listed is not None:
            return parse_cpulist(listed)
        mask = self.text(directory / name)
        return parse_cpumask(mask) if mask is not None else None

    def read(self) -> Topology:
        present = self._present_cpus()
        online = self._online_cpus(present)
        nodes = self._nodes(online)
        node_of = {cpu: nid for nid, cpus in self.node_cpus.items() for cpu in cpus}
        cpus = {cpu: self._cpu(cpu, online, node_of.get(cpu, NO_NODE)) for cpu in present}
        cpus = _default_l3(_split_compute_units(cpus))
        cgroup_cpus, cgroup_mems = self._cgroup_cpuset()
        allowed = frozenset(online if cgroup_cpus is None else online & cgroup_cpus)
        if self.root.resolve() == Path("/"):
            from plasma.linux.affinity import get_affinity

            allowed = allowed & frozenset(get_affinity())
        allowed_nodes = frozenset(nodes if cgroup_mems is None else set(nodes) & cgroup_mems)
        return Topology(nodes, cpus, allowed, allowed_nodes, str(self.root))

    def _present_cpus(self) -> frozenset[int]:
        text = self.text(self.cpu_dir / "present")
        if text is not None:
            return parse_cpulist(text)
        found = [p.name[3:] for p in self.cpu_dir.glob("cpu[0-9]*")]
        cpus = frozenset(int(n) for n in found if n.isdigit())
        if not cpus:
            raise BadRequest(f"no CPUs found under {self.cpu_dir}")
        return cpus

    def _online_cpus(self, present: frozenset[int]) -> frozenset[int]:
        text = self.text(self.cpu_dir / "online")
        if text is not None:
            return parse_cpulist(text) & present
        return frozenset(
            cpu
            for cpu in present
            if (self.text(self.cpu_dir / f"cpu{cpu}/online") or "1").strip() != "0"
        )

    def _cpu(self, cpu: int, online: frozenset[int], node: int) -> Cpu:
        """One CPU; sibling and cache groups are restricted to online CPUs."""
        if cpu not in online:
            return Cpu(cpu, node, -1, -1, frozenset({cpu}), frozenset({cpu}), online=False)
        topo = self.cpu_dir / f"cpu{cpu}/topology"
        package = self.text(topo / "physical_package_id")
        core = self.text(topo / "core_id")
        siblings = self.cpuset(topo, "thread_siblings") or frozenset()
        llc = self._llc(cpu)
        return Cpu(
            id=cpu,
            node=node,
            package=int(package) if package is not None else -1,
            core=int(core) if core is not None else -1,
            siblings=(siblings & online) | {cpu},
            l3=(llc & online) | {cpu} if llc else frozenset(),
            online=True,
        )

    def _llc(self, cpu: int) -> frozenset[int]:
        """CPUs sharing the highest-level data/unified cache (empty when unknown)."""
        best: tuple[int, frozenset[int]] = (0, frozenset())
        for index in (self.cpu_dir / f"cpu{cpu}/cache").glob("index[0-9]*"):
            level = self.text(index / "level")
            kind = (self.text(index / "type") or "").strip()
            shared = self.cpuset(index, "shared_cpu")
            if level is None or shared is None or kind == "Instruction":
                continue
            if int(level) > best[0]:
                best = (int(level), shared)
        return best[1]

    def _nodes(self, online_cpus: frozenset[int]) -> dict[int, NumaNode]:
        """Online nodes; a node's ``cpus`` are its online CPUs (``node_cpus`` keeps all)."""
        if not self.node_dir.is_dir():
            self.node_cpus = {0: self._present_cpus()}
            return {0: self._single_node(online_cpus)}
        online_text = self.text(self.node_dir / "online")
        found = sorted(
            int(p.name[4:]) for p in self.node_dir.glob("node[0-9]*") if p.name[4:].isdigit()
        )
        online = sorted(parse_cpulist(online_text)) if online_text is not None else found
        ids = [n for n in online if n in found] or found
        possible_text = self.text(self.node_dir / "possible")
        possible = sorted(parse_cpulist(possible_text)) if possible_text else ids
        nodes = {}
        for nid in ids:
            d = self.node_dir / f"node{nid}"
            self.node_cpus[nid] = self._node_cpus(d)
            total, free = self._meminfo(d / "meminfo", prefix=f"Node {nid} ")
            nodes[nid] = NumaNode(
                id=nid,
                cpus=self.node_cpus[nid] & online_cpus,
                memory_total=total,
                memory_free=free,
                distances=self._distances(nid, d / "distance", ids, online, possible),
                hugepages=self._hugepages(d / "hugepages"),
            )
        return nodes

    def _node_cpus(self, directory: Path) -> frozenset[int]:
        listed = self.text(directory / "cpulist")
        if listed is not None:
            return parse_cpulist(listed)
        mask = self.text(directory / "cpumap")
        return parse_cpumask(mask) if mask is not None else frozenset()

    def _single_node(self, cpus: frozenset[int]) -> NumaNode:
        total, free = self._meminfo(self.root / "proc/meminfo", prefix="")
        return NumaNode(
            id=0,
            cpus=cpus,
            memory_total=total,
            memory_free=free,
            distances={0: LOCAL_DISTANCE},
            hugepages=self._hugepages(self.root / "sys/kernel/mm/hugepages"),
        )

    def _meminfo(self, path: Path, prefix: str) -> tuple[int, int]:
        values: dict[str, int] = {}
        for line in (self.text(path) or "").splitlines():
            line = line.removeprefix(prefix)
            key, _, rest = line.partition(":")
            words = rest.split()
            if words and words[0].isdigit():
                scale = 1024 if len(words) > 1 and words[1].lower() == "kb" else 1
                values[key.strip()] = int(words[0]) * scale
        return values.get("MemTotal", 0), values.get("MemFree", 0)

    def _distances(
        self, nid: int, path: Path, ids: list[int], online: list[int], possible: list[int]
    ) -> dict[int, int]:
        """The row is indexed by the online nodes (or, in edited trees, the possible ones)."""
        text = self.text(path)
        row = [int(v) for v in text.split()] if text and text.split()[0].isdigit() else []
        for order in (online, possible, ids):
            if len(row) == len(order):
                return {n: d for n, d in zip(order, row, strict=True) if n in ids}
        return {n: LOCAL_DISTANCE if n == nid else REMOTE_DISTANCE for n in ids}

    def _hugepages(self, directory: Path) -> dict[int, int]:
        out = {}
        for sub in sorted(directory.glob("hugepages-*kB")):
            size = sub.name.removeprefix("hugepages-").removesuffix("kB")
            count = self.text(sub / "nr_hugepages")
            if size.isdigit() and count is not None and count.strip().isdigit():
                out[int(size) * 1024] = int(count)
        return out

    def _cgroup_cpuset(self) -> tuple[frozenset[int] | None, frozenset[int] | None]:
        """(cpus, mems) of this process's cpuset cgroup, as hwloc finds them; None if none."""
        mount = self._cpuset_mount()
        if mount is None:
            return None, None
        mountpoint, kind = mount
        name = self._cgroup_name(kind)
        if name is None:
            return None, None
        directory = self.root / mountpoint.lstrip("/") / name.lstrip("/")
        files = {
            "cgroup2": ("cpuset.cpus.effective", "cpuset.mems.effective"),
            "cgroup": ("cpuset.cpus", "cpuset.mems"),
            "cpuset": ("cpus", "mems"),
        }[kind]
        cpus, mems = (self.text(directory / f) for f in files)
        return (
            parse_cpulist(cpus) if cpus is not None else None,
            parse_cpulist(mems) if mems is not None else None,
        )

    def _cpuset_mount(self) -> tuple[str, str] | None:
        """(mount point, kind) where kind is ``cpuset`` (no prefix), ``cgroup`` or ``cgroup2``."""
        v2 = None
        for line in (self.text(self.root / "proc/mounts") or "").splitlines():
            words = line.split()
            if len(words) < 4:
                continue
            point, fstype, options = words[1], words[2], words[3].split(",")
            if fstype == "cpuset" or (fstype == "cgroup" and "cpuset" in options):
                return point, "cpuset" if fstype == "cpuset" or "noprefix" in options else "cgroup"
            if fstype == "cgroup2" and v2 is None:
                v2 = (point, "cgroup2")
        return v2

    def _cgroup_name(self, kind: str) -> str | None:
        for line in (self.text(self.root / "proc/self/cgroup") or "").splitlines():
            _, controllers, path = line.split(":", 2)
            if kind == "cgroup2" and controllers == "":
                return path
            if kind != "cgroup2" and "cpuset" in controllers.split(","):
                return path
        cpuset = self.text(self.root / "proc/self/cpuset")
        return cpuset.strip() if cpuset is not None else None


def _split_compute_units(cpus: dict[int, Cpu]) -> dict[int, Cpu]:
    """Keep only siblings with the same core id: AMD compute units (Bulldozer) report their
    two cores as thread siblings although each has its own ``core_id``, as hwloc knows."""
    out = {}
    for cid, c in cpus.items():
        same = frozenset(s for s in c.siblings if s in cpus and cpus[s].core == c.core)
        out[cid] = replace(c, siblings=same | {cid})
    return out


def _default_l3(cpus: dict[int, Cpu]) -> dict[int, Cpu]:
    """Give CPUs without cache information their package (or themselves) as L3 group."""
    by_package: dict[int, set[int]] = {}
    for c in cpus.values():
        if c.online and c.package >= 0:
            by_package.setdefault(c.package, set()).add(c.id)
    out = {}
    for cid, c in cpus.items():
        if not c.l3:
            group = frozenset(by_package.get(c.package, {cid}))
            c = replace(c, l3=group)
        out[cid] = c
    return out


__all__ = [
    "NO_NODE",
    "Cpu",
    "NumaNode",
    "Topology",
    "format_cpulist",
    "parse_cpulist",
    "parse_cpumask",
]
