"""What ``plasma-coord stats`` shows (internal): the store's numbers with the coordinator's
(clients, segments, operations, errors, tasks, where metrics and the dashboard are).

The ``Stats`` request, ``/metrics`` and the dashboard all read :func:`collect_stats`. This
module only reads: it must never change the store or a session.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from plasma import errors
from plasma import protocol as p
from plasma.coordinator.session import Session
from plasma.placement_report import placement_report
from plasma.telemetry import numa_nodes

if TYPE_CHECKING:
    from plasma.coordinator.server import Coordinator

__all__ = ["MAX_TOP_OBJECTS", "collect_stats", "stats"]

MAX_TOP_OBJECTS = 10_000  # the most held objects a stats request may ask for


def stats(coord: Coordinator, session: Session, msg: p.Stats) -> None:
    if not 0 <= msg.top_objects <= MAX_TOP_OBJECTS:
        raise errors.BadRequest(f"top_objects must be 0..{MAX_TOP_OBJECTS}")
    found = collect_stats(coord, placement=msg.placement, top_objects=msg.top_objects)
    session.send(p.StatsReply(seq=msg.seq, stats=found))


def collect_stats(
    coord: Coordinator, *, placement: bool = False, top_objects: int = 10
) -> dict[str, Any]:
    """Everything ``plasma-coord stats`` shows; with ``placement``, where segment pages are.
    Each client says what it holds (``holds``, see :meth:`Store.holders`); ``holders``
    has the totals and the ``top_objects`` largest objects held."""
    found = coord.store.stats()
    found["uptime"] = time.monotonic() - coord.started
    found["page_size"] = coord.pool.page_size
    found["segments"] = [
        {"id": s.id, "node": s.node, "size": s.size, "page_size": s.page_size} for s in coord.pool
    ]
    found["spares"] = {
        "prefault": coord.prefault,
        "ready": coord.pool.spares(),
        "preparing": coord.pool.preparing(),
        "error": coord.pool.spare_error,
    }
    holders = coord.store.holders(top_objects)
    holds = {h.pop("id"): h for h in holders.pop("clients")}
    found["clients"] = [
        {
            "id": s.client_id,
            "name": s.name,
            "pid": s.pid,
            "uid": s.uid,
            "holds": _holds(holds.get(s.client_id)),
        }
        for s in coord.sessions.values()
    ]
    found["holders"] = holders
    found["operations"] = dict(coord.op_counts)
    found["errors"] = dict(coord.error_counts)
    found["tasks"] = coord.telemetry.tasks()
    config = coord.config
    node_cpus = config.node_cpus or {n: [] for n in config.memory}
    found["numa_nodes"] = numa_nodes(node_cpus, config.sysfs_root)
    bound = coord.metrics_address
    found["metrics"] = f"{bound[0]}:{bound[1]}" if bound else None
    bound = coord.dashboard_address
    found["dashboard"] = f"{bound[0]}:{bound[1]}" if bound else None
    if coord.spiller is not None:
        found["spill"]["dir"] = coord.spiller.directory
    found["fallback"]["dir"] = config.fallback_dir
    if placement:
        found["placement"] = placement_report(coord.pool)
    return found


def _holds(holding: dict[str, Any] | None) -> dict[str, Any]:
    """A client's ``holds`` in stats: what :meth:`Store.holders` says it holds (zeros for a
    session the store does not know yet)."""
    if holding is None:
        zero = {"bytes": 0, "objects": 0}
        return {"references": zero, "pins": zero, "unsealed": zero, "arena": 0, "total": 0}
    return {k: holding[k] for k in ("references", "pins", "unsealed", "arena", "total")}
