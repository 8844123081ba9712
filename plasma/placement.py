"""Choose CPU sets and memory nodes for tasks (internal; sans-I/O, deterministic).

A ``Placer`` holds a ``Topology`` and the CPUs already given out. ``place(request)`` picks
CPUs for one request and accounts them until ``release(placement)``; ``place_gang`` places
several requests together with a spread (``packed``, ``balanced``, ``isolated``).

Policies:

- ``single-numa-node``: all CPUs on one node (the best fit: fewest free CPUs that still
  fit, which keeps whole nodes free for big requests), or ``PlacementImpossible``;
- ``same-numa``: one node if one fits (the largest, ties to the lower id), else start on the
  node with most free CPUs and spill to the nodes nearest to it;
- ``best-effort``: one node if one fits (best fit), else the set of nodes with the fewest
  members and the smallest pairwise distances that holds the request;
- ``none``: no NUMA reasoning: CPUs in packing order from every allowed CPU.

Inside a node CPUs are taken in packing order: whole free L3 groups first, then the
partly used group that fits best; within a group whole free cores first, then lone threads
of partly used cores, and only then a free core is split.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plasma.errors import BadRequest, PlacementImpossible
from plasma.topology import NO_NODE, Topology, format_cpulist
from plasma.units import format_size


class Policy(enum.StrEnum):
    SAME_NUMA = "same-numa"
    SINGLE_NUMA_NODE = "single-numa-node"
    BEST_EFFORT = "best-effort"
    NONE = "none"


class Spread(enum.StrEnum):
    PACKED = "packed"  # members as close together as possible
    BALANCED = "balanced"  # members spread evenly over the nodes
    ISOLATED = "isolated"  # no two members share a node


def _enum(kind: type[enum.StrEnum], value: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise BadRequest(f"unknown {kind.__name__.lower()} {value!r} (one of: {choices})") from None


def _node_set(value: Iterable[int] | None, what: str) -> frozenset[int] | None:
    if value is None:
        return None
    nodes = frozenset(value)
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in nodes):
        raise BadRequest(f"{what} must be NUMA node ids (non-negative integers), got {value!r}")
    return nodes


@dataclass(frozen=True)
class PlacementRequest:
    """What a task needs.

    ``numa`` fixes the home node; ``affinity`` limits the nodes that may be used;
    ``anti_affinity`` forbids nodes; ``full_cores`` keeps SMT siblings together (whole
    cores only); ``prefer_data`` maps node -> bytes of the task's inputs there, and the home
    node is the one with the least bytes x distance to them.
    """

    cpus: int
    policy: Policy | str = Policy.BEST_EFFORT
    numa: int | None = None
    affinity: Collection[int] | None = None
    anti_affinity: Collection[int] = ()
    full_cores: bool = False
    prefer_data: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.cpus, int) or isinstance(self.cpus, bool) or self.cpus < 1:
            raise BadRequest(f"cpus must be a positive integer, got {self.cpus!r}")
        if self.numa is not None and (not isinstance(self.numa, int) or self.numa < 0):
            raise BadRequest(f"numa must be a node id, got {self.numa!r}")
        if any(not isinstance(b, int) or b < 0 for b in self.prefer_data.values()):
            raise BadRequest(f"prefer_data must map node -> bytes, got {self.prefer_data!r}")
        _node_set(self.prefer_data, "prefer_data keys")
        object.__setattr__(self, "policy", _enum(Policy, self.policy))
        object.__setattr__(self, "affinity", _node_set(self.affinity, "affinity"))
        object.__setattr__(self, "anti_affinity", _node_set(self.anti_affinity, "anti_affinity"))
        object.__setattr__(self, "prefer_data", dict(self.prefer_data))


@dataclass(frozen=True, eq=False)
class Placement:
    """A granted CPU set: ``cpus`` sorted, ``nodes`` home node first then spill order."""

    id: int
    cpus: list[int]
    nodes: list[int]
    policy: Policy
    explanation: list[str]

    @property
    def home(self) -> int | None:
        """The node memory should be bound to (None when the CPUs have no node)."""
        return self.nodes[0] if self.nodes else None

    def to_json(self) -> dict[str, Any]:
        return {
            "cpus": self.cpus,
            "nodes": self.nodes,
            "policy": self.policy.value,
            "explanation": self.explanation,
        }


_Choice = tuple[list[int], list[int], list[str]]  # cpus, nodes, explanation


@dataclass
class _Gang:
    spread: Spread
    members: list[Placement]

    def excluded(self) -> frozenset[int]:
        if self.spread is not Spread.ISOLATED:
            return frozenset()
        return frozenset(n for p in self.members for n in p.nodes)

    def key(self, topo: Topology) -> Callable[[int], int]:
        used = [n for p in self.members for n in p.nodes]
        if not used:
            return lambda node: 0
        if self.spread is Spread.BALANCED:
            return used.count
        return lambda node: min(topo.distance(node, u) for u in used)


class Placer:
    """Accounts CPUs of one topology and places requests on them."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        usable = {c for c in topology.allowed_cpus if topology.cpus[c].online}
        self._usable = frozenset(usable)
        self._node_cpus = {
            n.id: frozenset(n.cpus & usable) for n in topology.nodes.values() if n.cpus & usable
        }
        self._core = {c: topology.cpus[c].siblings & self._usable for c in usable}
        self._l3 = {c: topology.cpus[c].l3 & self._usable for c in usable}
        self._allocated: set[int] = set()
        self._active: dict[int, Placement] = {}
        self._ids = itertools.count(1)

    @property
    def allocated(self) -> frozenset[int]:
        """CPUs currently given out."""
        return frozenset(self._allocated)

    def free_cpus(self, node: int | None = None) -> frozenset[int]:
        """Free usable CPUs, on ``node`` or everywhere."""
        pool = self._usable if node is None else self._node_cpus.get(node, frozenset())
        return pool - self._allocated

    def place(self, request: PlacementRequest) -> Placement:
        """Choose CPUs for ``request`` and hold them until ``release``."""
        return self._grant(self._choose(request, _Gang(Spread.PACKED, [])), request)

    def place_gang(
        self, requests: Sequence[PlacementRequest], spread: Spread | str = Spread.PACKED
    ) -> list[Placement]:
        """Place every request or none of them; ``spread`` relates the members' nodes."""
        gang = _Gang(_enum(Spread, spread), [])
        try:
            for i, request in enumerate(requests):
                try:
                    chosen = self._choose(request, gang)
                except PlacementImpossible as exc:
                    raise PlacementImpossible(
                        f"gang member {i} ({gang.spread}): {exc.message}"
                    ) from None
                gang.members.append(self._grant(chosen, request))
        except PlacementImpossible:
            for placement in gang.members:
                self.release(placement)
            raise
        return gang.members

    def release(self, placement: Placement) -> None:
        """Give the placement's CPUs back."""
        if self._active.get(placement.id) is not placement:
            raise BadRequest(f"placement {placement.id} is not held (released twice?)")
        del self._active[placement.id]
        self._allocated.difference_update(placement.cpus)

    def _grant(self, chosen: _Choice, r: PlacementRequest) -> Placement:
        cpus, nodes, notes = chosen
        placement = Placement(next(self._ids), sorted(cpus), nodes, Policy(r.policy), notes)
        self._allocated.update(cpus)
        self._active[placement.id] = placement
        return placement

    # -- choosing ----------------------------------------------------------------------

    def _choose(self, r: PlacementRequest, gang: _Gang) -> _Choice:
        notes = [
            f"request: {r.cpus} CPUs, policy {r.policy}"
            + (", full cores" if r.full_cores else "")
            + (f", gang spread {gang.spread}" if gang.members else "")
        ]
        if r.numa is not None and r.numa not in self.topology.nodes:
            raise BadRequest(f"no NUMA node {r.numa}; nodes are {sorted(self.topology.nodes)}")
        self._check_cores(r)
        free_total = len(self.free_cpus())
        if r.cpus > free_total:
            raise PlacementImpossible(
                f"{r.cpus} CPUs requested but only {free_total} of {len(self._usable)} "
                "allowed CPUs are free"
            )
        candidates = self._candidates(r, gang, notes)
        if r.policy is Policy.NONE:
            pool = frozenset().union(*(self.free_cpus(n) for n in candidates))
            if r.numa is None and r.affinity is None:
                pool |= self._usable - frozenset().union(*self._node_cpus.values())
                pool -= self._allocated
            cpus = self._pick(pool, r.cpus, r.full_cores, notes, "all candidate nodes")
            if len(cpus) < r.cpus:
                raise PlacementImpossible(self._shortage(r, candidates))
            nodes = sorted({self.topology.cpus[c].node for c in cpus} - {NO_NODE})
            return cpus, nodes, notes
        cap = {n: self._capacity(n, r.full_cores) for n in candidates}
        rank = self._ranking(r, gang, cap, notes)
        fitting = [n for n in candidates if cap[n] >= r.cpus]
        if r.numa is not None:
            fitting = [n for n in fitting if n == r.numa]
        if fitting:
            home = min(fitting, key=rank)
            notes.append(f"node {home} chosen: {self._why(home, r, gang, fitting)}")
            plan = [home]
        elif r.policy is Policy.SINGLE_NUMA_NODE:
            where = f"node {r.numa}" if r.numa is not None else "no single node"
            raise PlacementImpossible(
                f"{where} has {r.cpus} free {'whole-core ' if r.full_cores else ''}CPUs "
                f"(free: {self._free_text(cap)})"
            )
        else:
            plan = self._spill_plan(r, candidates, cap, rank, notes)
        return self._take(plan, r, notes)

    def _check_cores(self, r: PlacementRequest) -> None:
        if not r.full_cores:
            return
        sizes = {len(core) for core in self._core.values()}
        if len(sizes) == 1 and r.cpus % (size := sizes.pop()):
            raise PlacementImpossible(
                f"full_cores: {r.cpus} CPUs is not a whole number of {size}-thread cores"
            )

    def _candidates(self, r: PlacementRequest, gang: _Gang, notes: list[str]) -> list[int]:
        nodes = set(self._node_cpus)
        if r.affinity is not None:
            nodes &= set(r.affinity)
            notes.append(f"affinity limits nodes to {sorted(r.affinity)}")
        for reason, banned in (
            ("anti_affinity", frozenset(r.anti_affinity)),
            ("isolated gang (nodes of earlier members)", gang.excluded()),
        ):
            if banned & nodes:
                notes.append(f"{reason} excludes nodes {sorted(banned & nodes)}")
            nodes -= banned
        if r.numa is not None and r.numa not in nodes:
            raise PlacementImpossible(
                f"node {r.numa} is not usable: "
                + ("it has no allowed CPUs" if r.numa not in self._node_cpus else "excluded")
                + f" (usable nodes: {sorted(nodes)})"
            )
        if not nodes:
            raise PlacementImpossible("no NUMA node is left after affinity/anti-affinity")
        return sorted(nodes)

    def _capacity(self, node: int, full_cores: bool) -> int:
        free = self.free_cpus(node)
        if not full_cores:
            return len(free)
        return sum(len(core) for core in {self._core[c] for c in free} if core <= free)

    def _data_cost(self, node: int, r: PlacementRequest) -> int:
        topo = self.topology
        return sum(
            size * (topo.distance(node, d) if d in topo.nodes else 255)
            for d, size in r.prefer_data.items()
        )

    def _ranking(
        self, r: PlacementRequest, gang: _Gang, cap: dict[int, int], notes: list[str]
    ) -> Callable[[int], tuple[int, ...]]:
        gang_key = gang.key(self.topology)
        if r.prefer_data:
            local = ", ".join(
                f"node {n}: {format_size(b)}" for n, b in sorted(r.prefer_data.items())
            )
            notes.append(f"input data: {local}")
        sign = -1 if r.policy is Policy.SAME_NUMA else 1  # largest node, else best fit
        return lambda n: (self._data_cost(n, r), gang_key(n), sign * cap[n], n)

    def _why(self, home: int, r: PlacementRequest, gang: _Gang, fitting: list[int]) -> str:
        if r.numa is not None:
            return "requested with numa"
        if len(fitting) == 1:
            return "the only node with enough free CPUs"
        reasons = []
        if r.prefer_data:
            reasons.append(
                f"nearest to the input data (cost {self._data_cost(home, r)} byte*distance)"
            )
        if gang.members:
            reasons.append(f"{gang.spread} with the other gang members")
        fit = "largest" if r.policy is Policy.SAME_NUMA else "fewest free"
        reasons.append(f"{self._capacity(home, r.full_cores)} free CPUs ({fit} that fits)")
        return ", ".join(reasons) + "; ties go to the lower id"

    def _spill_plan(
        self,
        r: PlacementRequest,
        candidates: list[int],
        cap: dict[int, int],
        rank: Callable[[int], tuple[int, ...]],
        notes: list[str],
    ) -> list[int]:
        if sum(cap.values()) < r.cpus:
            raise PlacementImpossible(self._shortage(r, candidates))
        topo = self.topology

        def grow(home: int) -> list[int]:
            order = sorted(
                (n for n in candidates if n != home and cap[n]),
                key=lambda n: (topo.distance(home, n), rank(n)),
            )
            plan, total = [home], cap[home]
            for n in order:
                if total >= r.cpus:
                    break
                plan.append(n)
                total += cap[n]
            return plan

        homes = [r.numa] if r.numa is not None else [n for n in candidates if cap[n]]
        if r.policy is Policy.SAME_NUMA:
            home = min(homes, key=lambda n: (-cap[n], rank(n)))
            plan = grow(home)
            notes.append(
                f"no single node has {r.cpus} free CPUs; starting on node {home} (most free) "
                "and spilling to the nearest nodes"
            )
        else:

            def spread(plan: list[int]) -> int:
                return sum(topo.distance(a, b) for a, b in itertools.combinations(plan, 2))

            plan = min((grow(h) for h in homes), key=lambda p: (len(p), spread(p), rank(p[0])))
            notes.append(
                f"no single node has {r.cpus} free CPUs; the closest set is nodes {plan} "
                f"(sum of pairwise distances {spread(plan)})"
            )
        for n in plan[1:]:
            notes.append(f"spill to node {n}: distance {topo.distance(plan[0], n)} from {plan[0]}")
        return plan

    def _take(self, plan: list[int], r: PlacementRequest, notes: list[str]) -> _Choice:
        cpus: list[int] = []
        used: list[int] = []
        for node in plan:
            want = r.cpus - len(cpus)
            if want == 0:
                break
            got = self._pick(self.free_cpus(node), want, r.full_cores, notes, f"node {node}")
            if got:
                cpus += got
                used.append(node)
        if len(cpus) < r.cpus:
            raise PlacementImpossible(
                f"full_cores: the free whole cores on nodes {plan} cannot make exactly "
                f"{r.cpus} CPUs"
            )
        return cpus, used, notes

    def _shortage(self, r: PlacementRequest, candidates: list[int]) -> str:
        cap = {n: self._capacity(n, r.full_cores) for n in candidates}
        kind = "whole-core CPUs" if r.full_cores else "CPUs"
        return (
            f"{r.cpus} {kind} requested but the usable nodes have {sum(cap.values())} free "
            f"({self._free_text(cap)})"
        )

    @staticmethod
    def _free_text(cap: dict[int, int]) -> str:
        return ", ".join(f"node {n}: {c}" for n, c in sorted(cap.items()))

    # -- packing inside a pool of CPUs ----------------------------------------------------

    def _pick(
        self, pool: frozenset[int], want: int, full_cores: bool, notes: list[str], where: str
    ) -> list[int]:
        """Up to ``want`` CPUs of ``pool`` in packing order (fewer only with ``full_cores``)."""
        chosen: list[int] = []
        groups = sorted({self._l3.get(c, frozenset({c})) for c in pool}, key=min)
        for group in groups:
            if group <= pool and len(group) <= want - len(chosen):
                chosen += sorted(group)
                notes.append(f"{where}: whole L3 group {format_cpulist(group)}")
        while len(chosen) < want:
            left = {g: (g & pool) - frozenset(chosen) for g in groups}
            room = {g: self._room(cpus, full_cores) for g, cpus in left.items()}
            need = want - len(chosen)
            usable = [g for g in groups if room[g]]
            if not usable:
                break
            fits = [g for g in usable if room[g] >= need]
            group = (
                min(fits, key=lambda g: (room[g], min(g)))
                if fits
                else min(usable, key=lambda g: (-room[g], min(g)))
            )
            got = self._threads(left[group], min(need, room[group]), full_cores)
            if not got:
                break
            chosen += got
            notes.append(
                f"{where}: {format_cpulist(got)} from L3 group {format_cpulist(group)}"
                + (" (best fit)" if fits else " (largest free part)")
            )
        return chosen

    def _room(self, cpus: frozenset[int], full_cores: bool) -> int:
        if not full_cores:
            return len(cpus)
        return sum(len(core) for core in {self._core[c] for c in cpus} if core <= cpus)

    def _threads(self, free: frozenset[int], want: int, full_cores: bool) -> list[int]:
        """Whole free cores first, then lone threads of busy cores, then split cores."""
        cores = sorted({self._core[c] for c in free}, key=min)
        chosen: list[int] = []
        for core in cores:
            if core <= free and len(core) <= want - len(chosen):
                chosen += sorted(core)
        if full_cores:
            return chosen
        rest = sorted(free - set(chosen), key=lambda c: (self._core[c] <= free, c))
        return chosen + rest[: want - len(chosen)]
