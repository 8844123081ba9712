"""What a coordinator is asked to serve (internal): :class:`CoordinatorConfig`, and the
checks of its memory budgets.

This module owns the options of ``plasma-coord serve`` and turns ``--memory`` into byte
budgets per node. It must never open sockets, allocate memory or start tasks: the
coordinator does that, from a config made here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from plasma import errors
from plasma import protocol as p
from plasma.linux import numa
from plasma.store import SPILL_MAX_OBJECTS
from plasma.units import parse_size

if TYPE_CHECKING:
    from plasma.topology import Topology

__all__ = ["CoordinatorConfig", "check_nodes", "node_budgets"]


@dataclass
class CoordinatorConfig:
    """What ``plasma-coord serve`` was asked for."""

    socket_path: str
    memory: dict[int, int]  # NUMA node -> byte budget
    hugepage_size: int | None = None
    hugepage_fallback: bool = False
    allow_uids: dict[int, bool] = field(default_factory=dict)  # other uid -> may it write?
    max_frame: int = p.DEFAULT_MAX_FRAME
    max_object_size: int | None = None
    segment_size: int = 64 << 20
    # how much of each budget is faulted in ahead of need: "segment", "budget" or "off"
    # (plasma.coordinator.spares)
    prefault: str = "segment"
    bind_memory: bool = True
    node_cpus: dict[int, list[int]] = field(default_factory=dict)
    node_of_cpus: Callable[[list[int]], int | None] | None = None
    sample_interval: float = 1.0  # seconds between perf samples of registered tasks
    metrics: str | None = None  # serve /metrics here: HOST:PORT or PORT (on 127.0.0.1)
    dashboard: str | None = None  # serve the dashboard here (plasma.dashboard)
    dashboard_token: str | None = None  # bearer token the dashboard requires
    sysfs_root: str = "/"
    max_clients: int = 1024  # connections at once, handshaking ones included
    handshake_timeout: float = 10.0  # seconds a new connection has to send Connect
    pins_per_client: int = 4096  # entries of each client's pin table (0: no reads without requests)
    spill_dir: str | None = None  # eviction spills to files here instead of deleting
    spill_threshold: float = 1.0  # make copies on disk ahead of need past this fraction
    spill_max: int | None = None  # bytes the spill files may take
    spill_max_objects: int = SPILL_MAX_OBJECTS  # objects with a copy in them at most
    restore: bool = False  # take in what a previous coordinator spilled to spill_dir
    # what spilled objects survive: "crash" (of the coordinator: the page cache keeps the
    # files) or "reboot" too (every file and deletion fsynced); docs/spilling.md
    spill_survives: str = "crash"
    fallback_dir: str | None = None  # file-backed segments here when nothing can make room
    fallback_files: int = 1024  # of them at once (each a descriptor)
    fallback_max: int | None = None  # bytes they may take
    follow_readers: bool = False  # move objects to the node most of their reads come from

    @classmethod
    def for_topology(
        cls,
        topology: Topology,
        socket_path: str,
        memory: str,
        nodes: Iterable[int] | None = None,
        **options: Any,
    ) -> CoordinatorConfig:
        """Serve ``nodes`` of ``topology`` (default: every node with memory), with ``memory``
        as ``serve --memory`` takes it (a size split evenly, or ``0=2GiB,1=2GiB``)."""
        if nodes is None:
            with_memory = [n.id for n in topology.nodes.values() if n.memory_total > 0]
            chosen = sorted(with_memory or topology.nodes)
        else:
            chosen = sorted(set(nodes))
            missing = sorted(set(chosen) - set(topology.nodes))
            if missing:
                raise errors.BadRequest(
                    f"node(s) {missing} not on this machine (nodes: {sorted(topology.nodes)})"
                )
        return cls(
            socket_path=socket_path,
            memory=node_budgets(memory, chosen),
            node_cpus={n.id: sorted(n.cpus) for n in topology.nodes.values()},
            node_of_cpus=topology.node_for_cpus,
            **options,
        )


def node_budgets(memory: str, nodes: list[int]) -> dict[int, int]:
    """Byte budget per node from ``--memory`` (``4GiB`` split evenly, or ``0=2GiB,1=2GiB``)."""
    if "=" in memory:
        budgets: dict[int, int] = {}
        for part in memory.split(","):
            node, _, size = part.partition("=")
            try:
                budgets[int(node)] = parse_size(size)
            except ValueError as exc:
                raise errors.BadRequest(f"--memory: bad per-node entry {part!r}: {exc}") from None
        unknown = sorted(set(budgets) - set(nodes))
        if unknown:
            raise errors.BadRequest(f"--memory names node(s) {unknown} not served (nodes: {nodes})")
        return budgets
    return dict.fromkeys(nodes, parse_size(memory) // len(nodes))


def check_nodes(memory: Mapping[int, int]) -> None:
    """Refuse, in one line, to bind memory to nodes this kernel lacks or this process may not
    use (a ``--sysfs-root`` topology of another machine): each create there would fail."""
    usable = numa.usable_nodes()
    lacking = sorted(set(memory) - usable)
    if lacking:
        raise errors.BadRequest(
            f"cannot bind memory to NUMA node(s) {lacking}: this kernel lacks them or this "
            f"process may not use them (usable: {sorted(usable)}); serve only usable ones "
            "(--nodes) or, for a captured topology (--sysfs-root), add --no-bind"
        )
