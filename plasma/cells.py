"""Cells: named cgroup v2 cpusets for tasks, runs and the operator (sans-I/O model).

A cell is a directory ``ROOT/NAME`` of a cgroup v2 tree whose ``cpuset.cpus`` and
``cpuset.mems`` confine every process inside it and everything those processes fork; an
*exclusive* cell is also an isolated CPU partition (``cpuset.cpus.partition = isolated``): its
CPUs leave every other cgroup's effective set. This module owns what a cell *should* be and
how to tell whether the kernel agreed; :mod:`plasma.linux.cgroup` writes and reads the files.
It never touches a file, a process or the clock.

Rules kept here:

- a cell name is 1-64 letters, digits, ``_`` and ``-`` (no ``.``, so it can neither climb the
  tree nor collide with an interface file such as ``cpuset.cpus``);
- a new cell's CPUs are chosen by the placement policies among the CPUs no other cell holds;
- while the root is a partition root (needed for isolated cells, whose parent must be one),
  its ``cpuset.cpus`` is the union of its cells' CPUs;
- foreign processes (for ``evict-foreign``) are the processes outside the cell whose CPU
  affinity overlaps its CPUs and was narrowed from the whole machine: a process allowed on
  every CPU overlaps every cell, so it is listed only when asked (``include_unpinned``).
  NexusFlow lists every overlapping process; this one departs to keep ``--signal`` safe.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from plasma.errors import BadRequest, PlacementImpossible
from plasma.placement import Placement, PlacementRequest, Placer
from plasma.topology import Topology, format_cpulist

__all__ = [
    "MEMBER",
    "Cell",
    "CellSpec",
    "Partition",
    "cell_mismatch",
    "foreign_processes",
    "parse_partition",
    "place_cell",
    "root_cpus",
    "task_cell_name",
    "validate_cell_name",
]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MEMBER = "member"
_PARTITION_KINDS = (MEMBER, "root", "isolated")


def validate_cell_name(name: str) -> str:
    """``name`` if it is a valid cell name, else :class:`BadRequest` saying why."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadRequest(
            f"invalid cell name {name!r}: use 1-64 letters, digits, '_' and '-' "
            "(no '/', '.', spaces)"
        )
    return name


def task_cell_name(run_id: str, task_id: str, attempt: int) -> str:
    """The cell of one task attempt: readable, valid, and unique for (run, task, attempt)."""
    digest = hashlib.sha256(f"{run_id}\0{task_id}\0{attempt}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", task_id).strip("_")[:40] or "task"
    return f"t-{slug}-{digest}"


@dataclass(frozen=True)
class CellSpec:
    """What a cell should be: its CPUs, memory nodes and whether its CPUs are exclusive."""

    name: str
    cpus: frozenset[int]
    mems: frozenset[int]
    exclusive: bool = False

    def __post_init__(self) -> None:
        validate_cell_name(self.name)
        for what, values in (("CPUs", self.cpus), ("memory nodes", self.mems)):
            if not values or any(not isinstance(v, int) or v < 0 for v in values):
                raise BadRequest(f"cell {self.name}: needs at least one of its {what}")
        object.__setattr__(self, "cpus", frozenset(self.cpus))
        object.__setattr__(self, "mems", frozenset(self.mems))

    @classmethod
    def confining(
        cls,
        name: str,
        cpus: Iterable[int],
        nodes: Iterable[int],
        topology: Topology,
        *,
        exclusive: bool = False,
    ) -> CellSpec:
        """The cell of a placement: its CPUs, and its nodes (or every allowed node if none)."""
        return cls(name, frozenset(cpus), frozenset(nodes) or topology.allowed_nodes, exclusive)


@dataclass(frozen=True)
class Partition:
    """A ``cpuset.cpus.partition`` value: ``member``, ``root`` or ``isolated``, maybe invalid."""

    kind: str
    valid: bool = True
    reason: str = ""

    def __str__(self) -> str:
        if self.valid:
            return self.kind
        return f"{self.kind} invalid" + (f" ({self.reason})" if self.reason else "")


def parse_partition(text: str) -> Partition:
    """``"isolated invalid (Parent is not a partition root)"`` → ``Partition`` (or BadRequest)."""
    words = text.strip()
    match = re.fullmatch(r"(member|root|isolated)(?: (invalid)(?: \((.*)\))?)?", words)
    if match is None:
        raise BadRequest(f"not a cpuset.cpus.partition value: {text!r}")
    kind, invalid, reason = match.groups()
    return Partition(kind, invalid is None, reason or "")


@dataclass(frozen=True)
class Cell:
    """A cell as the kernel reports it: requested and effective sets, partition, processes."""

    name: str
    cpus: frozenset[int]
    mems: frozenset[int]
    cpus_effective: frozenset[int]
    mems_effective: frozenset[int]
    partition: Partition
    procs: tuple[int, ...] = ()

    @property
    def exclusive(self) -> bool:
        return self.partition.kind == "isolated"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cpus": format_cpulist(self.cpus),
            "mems": format_cpulist(self.mems),
            "cpus_effective": format_cpulist(self.cpus_effective),
            "mems_effective": format_cpulist(self.mems_effective),
            "partition": str(self.partition),
            "exclusive": self.exclusive,
            "procs": list(self.procs),
        }


def cell_mismatch(spec: CellSpec, cell: Cell) -> str | None:
    """Why the kernel's view of ``cell`` differs from ``spec`` (None: it matches)."""
    problems = []
    if cell.cpus_effective != spec.cpus:
        problems.append(
            f"cpuset.cpus.effective is {format_cpulist(cell.cpus_effective) or 'empty'}, "
            f"not {format_cpulist(spec.cpus)}"
        )
    if cell.mems_effective != spec.mems:
        problems.append(
            f"cpuset.mems.effective is {format_cpulist(cell.mems_effective) or 'empty'}, "
            f"not {format_cpulist(spec.mems)}"
        )
    wanted = "isolated" if spec.exclusive else MEMBER
    if not cell.partition.valid or cell.partition.kind != wanted:
        problems.append(f"cpuset.cpus.partition is {str(cell.partition)!r}, not {wanted!r}")
    return "; ".join(problems) or None


def place_cell(
    topology: Topology, request: PlacementRequest, cells: Iterable[Cell | CellSpec]
) -> Placement:
    """Place ``request`` with the placement policies on the CPUs no cell in ``cells`` holds."""
    taken = frozenset().union(*(c.cpus for c in cells))
    free = replace(topology, allowed_cpus=topology.allowed_cpus - taken)
    try:
        return Placer(free).place(request)
    except PlacementImpossible as exc:
        if not taken & topology.allowed_cpus:
            raise
        raise PlacementImpossible(
            f"{exc.message} (CPUs {format_cpulist(taken)} belong to other cells)"
        ) from None


def root_cpus(cells: Iterable[Cell | CellSpec]) -> frozenset[int]:
    """The ``cpuset.cpus`` of a partition root holding ``cells``: the union of their CPUs."""
    return frozenset().union(*(c.cpus for c in cells))


def foreign_processes(
    cell: Cell,
    affinities: Mapping[int, frozenset[int]],
    all_cpus: frozenset[int],
    *,
    exclude: Iterable[int] = (),
    include_unpinned: bool = False,
) -> list[int]:
    """Pids outside ``cell`` (and ``exclude``) whose affinity overlaps the cell's CPUs.

    ``affinities`` maps pid → its CPU affinity; ``all_cpus`` are the machine's online CPUs. A
    process whose affinity covers all of them is left out unless ``include_unpinned``.
    """
    inside = {*cell.procs, *exclude}
    return sorted(
        pid
        for pid, cpus in affinities.items()
        if pid not in inside and cpus & cell.cpus and (include_unpinned or not all_cpus <= cpus)
    )
