"""Prometheus metric families of a coordinator ``stats`` snapshot (internal; no trio, no sockets).

:class:`StatsCollector` turns one stats snapshot (what :meth:`Coordinator.stats` returns, or
what a client fetched with ``stats()``) into metric families at scrape time: every metric
name and help text is here. :func:`write_textfile` writes them for the node exporter's
textfile collector and :func:`task_metrics` gives the ``plasma_task_*`` families alone (a DAG
run's report writes those). The ``/metrics`` HTTP server is :mod:`plasma.metrics`; this module
must not import trio, so a run report can be written without an event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

StatsSource = Callable[[], Mapping[str, Any]]

# perf event name -> (metric name without _total, help, factor to the metric's unit)
TASK_EVENTS: dict[str, tuple[str, str, float]] = {
    "task-clock": ("plasma_task_clock_seconds", "CPU time the task ran (perf task-clock)", 1e-9),
    "page-faults": ("plasma_task_page_faults", "page faults of the task", 1),
    "context-switches": ("plasma_task_context_switches", "context switches of the task", 1),
    "cpu-migrations": ("plasma_task_cpu_migrations", "migrations between CPUs of the task", 1),
    "cycles": ("plasma_task_cycles", "CPU cycles of the task", 1),
    "instructions": ("plasma_task_instructions", "instructions the task retired", 1),
    "llc-references": ("plasma_task_llc_references", "last-level cache references", 1),
    "llc-misses": ("plasma_task_llc_misses", "last-level cache misses", 1),
}
TASK_LABELS = ["task", "run_id"]


class StatsCollector(Collector):
    """Metric families from ``source()``, a stats dict, read anew at every collection."""

    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        return []  # unknown until scraped: registering must not call source()

    def collect(self) -> Iterator[Metric]:
        stats = self._source()
        yield from _store_metrics(stats)
        yield from _spill_metrics(stats)
        yield from _request_metrics(stats)
        yield from _task_states(stats.get("tasks", []))
        yield from task_metrics(stats.get("tasks", []))
        yield from _numa_metrics(stats.get("numa_nodes", {}))


def make_registry(source: StatsSource) -> CollectorRegistry:
    """A registry holding only a :class:`StatsCollector` of ``source``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(source))
    return registry


def write_textfile(path: str | Path, stats: Mapping[str, Any]) -> None:
    """Write the metrics of a ``stats`` snapshot to ``path`` atomically (textfile format)."""
    write_to_textfile(str(path), make_registry(lambda: stats))


def _store_metrics(stats: Mapping[str, Any]) -> Iterator[Metric]:
    nodes: Mapping[Any, Mapping[str, int]] = stats.get("nodes", {})
    per_node = {
        "capacity": ("plasma_store_capacity_bytes", "byte budget of the store on the node"),
        "used": ("plasma_store_used_bytes", "bytes of objects held on the node"),
        "objects": ("plasma_store_objects", "objects held on the node"),
        "segments": ("plasma_store_segments", "shared-memory segments on the node"),
        "segment_bytes": ("plasma_store_segment_bytes", "bytes of segments mapped on the node"),
        "placed_in": (
            "plasma_store_placed_in_bytes",
            "bytes of other nodes' objects whose pages were moved to the node",
        ),
    }
    for key, (name, doc) in per_node.items():
        family = GaugeMetricFamily(name, doc, labels=["node"])
        for node, values in _by_node(nodes):
            if key in values:
                family.add_metric([str(node)], values[key])
        yield family
    evictions = CounterMetricFamily("plasma_store_evictions", "objects evicted to make room")
    evictions.add_metric([], stats.get("evictions", 0))
    yield evictions
    yield GaugeMetricFamily(
        "plasma_store_pins",
        "objects clients hold through their pin tables (gets served without a request)",
        value=stats.get("pins", 0),
    )
    yield GaugeMetricFamily(
        "plasma_store_dying_objects",
        "deleted or evicted objects whose memory waits for a pin scan or for pins to go",
        value=stats.get("dying", 0),
    )
    directory = stats.get("directory", {})
    for key, doc in (
        ("capacity", "slots of the shared object directory"),
        ("objects", "objects published in the shared object directory"),
    ):
        yield GaugeMetricFamily(f"plasma_directory_{key}", doc, value=directory.get(key, 0))
    yield GaugeMetricFamily(
        "plasma_clients", "connected clients", value=len(stats.get("clients", []))
    )
    yield GaugeMetricFamily(
        "plasma_uptime_seconds", "seconds since the coordinator started", stats.get("uptime", 0.0)
    )


# stats()["spill"] key -> (metric, help, counter?)
SPILL_FIGURES: dict[str, tuple[str, str, bool]] = {
    "objects": ("plasma_spilled_objects", "objects only on disk (spilled)", False),
    "bytes": ("plasma_spilled_bytes", "data + metadata bytes of the spilled objects", False),
    "disk_bytes": ("plasma_spill_file_bytes", "bytes of the spill files", False),
    "files": ("plasma_spill_files", "spill files", False),
    "written_bytes": ("plasma_spill_written_bytes", "bytes written to spill files", True),
    "restored_bytes": ("plasma_spill_restored_bytes", "bytes read back from spill files", True),
    "spill_seconds": ("plasma_spill_write_seconds", "seconds spent writing spill files", True),
    "restore_seconds": ("plasma_spill_restore_seconds", "seconds spent restoring", True),
    "errors": ("plasma_spill_errors", "spill batches that failed (disk full...)", True),
    "lost": ("plasma_spill_lost_objects", "spilled objects whose copy was gone or bad", True),
}


def _spill_metrics(stats: Mapping[str, Any]) -> Iterator[Metric]:
    spill = stats.get("spill")
    if spill:
        for key, (name, doc, counter) in SPILL_FIGURES.items():
            if counter:
                total = CounterMetricFamily(name, doc)
                total.add_metric([], spill.get(key, 0))
                yield total
            else:
                yield GaugeMetricFamily(name, doc, value=spill.get(key, 0))
    fallback = stats.get("fallback") or {}
    yield GaugeMetricFamily(
        "plasma_fallback_bytes",
        "bytes of objects in file-backed fallback segments (outside the budgets)",
        value=fallback.get("bytes", 0),
    )
    spares = GaugeMetricFamily(
        "plasma_spare_segment_bytes",
        "bytes faulted in ahead of need, ready for the node's next segment (serve --prefault)",
        labels=["node"],
    )
    for node, nbytes in ((stats.get("spares") or {}).get("ready") or {}).items():
        spares.add_metric([str(node)], nbytes)
    yield spares


def _request_metrics(stats: Mapping[str, Any]) -> Iterator[Metric]:
    ops = CounterMetricFamily("plasma_operations", "requests handled, by type", labels=["op"])
    for op, count in sorted(stats.get("operations", {}).items()):
        ops.add_metric([op], count)
    yield ops
    errs = CounterMetricFamily("plasma_errors", "error replies, by code", labels=["code"])
    for code, count in sorted(stats.get("errors", {}).items()):
        errs.add_metric([code], count)
    yield errs


def _task_states(tasks: list[Mapping[str, Any]]) -> Iterator[Metric]:
    states = GaugeMetricFamily("plasma_tasks", "known tasks, by state", labels=["state"])
    by_state: dict[str, int] = {}
    for task in tasks:
        by_state[task["state"]] = by_state.get(task["state"], 0) + 1
    for state, count in sorted(by_state.items()):
        states.add_metric([state], count)
    yield states


def task_metrics(tasks: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    """The ``plasma_task_*`` families (perf counters, locality) of ``stats`` task rows."""
    events = {
        event: CounterMetricFamily(name, doc, labels=TASK_LABELS)
        for event, (name, doc, _) in TASK_EVENTS.items()
    }
    supported = GaugeMetricFamily(
        "plasma_task_event_supported",
        "1 if the perf event is counted for the task, 0 if unsupported (see stats for why)",
        labels=[*TASK_LABELS, "event"],
    )
    pages = GaugeMetricFamily(
        "plasma_task_resident_pages",
        "resident pages of the task per NUMA node (4 KiB units)",
        labels=[*TASK_LABELS, "node"],
    )
    local = GaugeMetricFamily(
        "plasma_task_local_fraction",
        "share of the task's pages on the node it was placed on",
        labels=TASK_LABELS,
    )
    for task in tasks:
        sample = task.get("latest")
        if not sample:
            continue
        key = [task["task_id"], task.get("run_id", "")]
        unsupported = sample.get("unsupported", {})
        for event, value in sample.get("counters", {}).items():
            if event not in TASK_EVENTS:
                continue
            supported.add_metric([*key, event], 0 if event in unsupported else 1)
            if value is not None:  # an unsupported event has no value, never a zero
                events[event].add_metric(key, value * TASK_EVENTS[event][2])
        locality = sample.get("locality")
        if locality:
            for node, count in sorted(
                locality["pages_per_node"].items(), key=lambda kv: int(kv[0])
            ):
                pages.add_metric([*key, str(node)], count)
            if locality.get("local_fraction") is not None:
                local.add_metric(key, locality["local_fraction"])
    yield from events.values()
    yield supported
    yield pages
    yield local


def _numa_metrics(nodes: Mapping[Any, Mapping[str, Any]]) -> Iterator[Metric]:
    cpus = GaugeMetricFamily(
        "numa_node_cpus_count", "online CPUs of the NUMA node", labels=["node"]
    )
    total = GaugeMetricFamily(
        "numa_node_memory_total_bytes", "memory of the NUMA node", labels=["node"]
    )
    free = GaugeMetricFamily(
        "numa_node_memory_free_bytes", "free memory of the NUMA node", labels=["node"]
    )
    for node, info in _by_node(nodes):
        cpus.add_metric([str(node)], len(info["cpus"]))
        total.add_metric([str(node)], info["memory_total"])
        free.add_metric([str(node)], info["memory_free"])
    yield cpus
    yield total
    yield free


def _by_node(mapping: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
    """Items of a node-keyed dict in node order (keys are ints, or strings after JSON)."""
    return sorted(mapping.items(), key=lambda kv: int(kv[0]))
