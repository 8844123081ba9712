"""Which worker should run a task, from where its inputs live (internal; sans-I/O).

A location is ``(coordinator token, NUMA node)``: one host's store, one node of it. The
scheduler plugin (:mod:`plasma.dask._plugins`) feeds :func:`choose_worker` the location and
size of each input of a task that is about to be scheduled, and the location of every
worker; it restricts the task to the worker chosen, which logs the reason when it runs it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from plasma.units import format_size

Location = tuple[str, int | None]

MIN_SHARE = 0.5  # the best location must hold at least this share of the input bytes


@dataclass(frozen=True, slots=True)
class Input:
    """One input of a task: its bytes and where they live."""

    nbytes: int
    location: Location


@dataclass(frozen=True, slots=True)
class Choice:
    """The workers a task should run on (those at ``location``) and why (``reason``: one
    line for the logs)."""

    workers: frozenset[str]
    location: Location
    share: float
    reason: str


def choose_worker(
    inputs: Iterable[Input],
    workers: Mapping[str, Location],
    *,
    min_bytes: int = 1,
    min_share: float = MIN_SHARE,
) -> Choice | None:
    """The workers at the location holding most of the input bytes, or None.

    None when the inputs total less than ``min_bytes``, when no location holds at least
    ``min_share`` of them, or when no worker (of ``workers``: address -> location) is there.
    Ties between locations go to the higher (token, node), so the choice is deterministic.
    Several workers at one location (one host, no per-node workers) all qualify: they read
    each other's objects by id, so Dask's own choice among them stands.
    """
    by_location: dict[Location, int] = defaultdict(int)
    total = 0
    for item in inputs:
        total += item.nbytes
        by_location[item.location] += item.nbytes
    if total < min_bytes or not by_location:
        return None
    best = max(by_location, key=lambda loc: (by_location[loc], _sort_key(loc)))
    share = by_location[best] / total
    chosen = frozenset(w for w, loc in workers.items() if loc == best)
    if share < min_share or not chosen:
        return None
    reason = (
        f"{share:.0%} of its {format_size(total)} of input is on node {_node(best)} of "
        f"coordinator {best[0][-12:]}, where {', '.join(sorted(chosen))} runs"
    )
    return Choice(chosen, best, share, reason)


def _sort_key(location: Location) -> tuple[str, int]:
    token, node = location
    return (token, -1 if node is None else node)


def _node(location: Location) -> str:
    return "?" if location[1] is None else str(location[1])


def describe_inputs(nodes: Mapping[int | None, int], memory: int, own_node: int | None) -> str:
    """One line saying where a task's inputs are, for the worker's log: bytes per node of the
    store (``None``: unknown node) and bytes in worker memory, against the worker's node."""
    parts = [
        f"{format_size(n)} on node {'?' if node is None else node}"
        + (" (this worker's)" if node == own_node else "")
        for node, n in sorted(nodes.items(), key=lambda kv: -kv[1])
    ]
    if memory:
        parts.append(f"{format_size(memory)} in worker memory")
    return ", ".join(parts) or "no inputs"
