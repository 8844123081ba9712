"""``plasma-coord stats``: the store, segments, clients, requests and tasks of a coordinator."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from plasma.topology import format_cpulist
from plasma.units import format_size


def add_socket_option(p: argparse.ArgumentParser) -> None:
    """``--socket`` of the commands that connect to a coordinator (default: found)."""
    from plasma.default_socket import DEFAULT_SOCKET, SOCKET_ENV

    p.add_argument(
        "--socket",
        "-s",
        help=f"coordinator's Unix socket (default: ${SOCKET_ENV}, else {DEFAULT_SOCKET})",
    )


def register(subparsers: Any) -> None:
    """Add the ``stats`` subcommand."""
    p = subparsers.add_parser("stats", help="show the store, clients and tasks of a coordinator")
    add_socket_option(p)
    p.add_argument("--json", action="store_true", help="print the raw stats as one JSON object")
    p.add_argument(
        "--placement",
        action="store_true",
        help="also show on which NUMA node each segment's pages are (asks the kernel)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from plasma.client import Client

    try:
        with Client(args.socket, client_name="plasma-coord stats") as client:
            stats = client.stats(placement=args.placement)
    except ConnectionError as exc:
        print(f"plasma-coord stats: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(stats), end="")
    return 0


def format_stats(stats: Mapping[str, Any]) -> str:
    """The human-readable report: one titled table per section."""
    sections = [
        _store(stats),
        _nodes(stats),
        _table(
            "segments",
            ["id", "node", "size", "page size"],
            [
                [s["id"], s["node"], format_size(s["size"]), format_size(s["page_size"])]
                for s in stats.get("segments", [])
            ],
        ),
        _table(
            "clients",
            ["id", "pid", "uid", "name"],
            [[c["id"], c["pid"], c["uid"], c["name"]] for c in stats.get("clients", [])],
        ),
        _counts("operations", stats.get("operations", {})),
        _counts("errors", stats.get("errors", {})),
        _tasks(stats.get("tasks", [])),
    ]
    if "placement" in stats:
        sections.append(_placement(stats["placement"]))
    return "\n".join(sections)


def _store(stats: Mapping[str, Any]) -> str:
    capacity, used = stats.get("capacity", 0), stats.get("used", 0)
    share = f" ({100 * used / capacity:.1f}%)" if capacity else ""
    facts = [
        f"capacity {format_size(capacity)}",
        f"used {format_size(used)}{share}",
        f"objects {stats.get('objects', 0)}",
        f"pins {stats.get('pins', 0)}",
        f"evictions {stats.get('evictions', 0)}",
        f"page size {format_size(stats.get('page_size', 0))}",
        f"uptime {stats.get('uptime', 0.0):.1f} s",
    ]
    if stats.get("metrics"):
        facts.append(f"metrics http://{stats['metrics']}/metrics")
    return "store: " + ", ".join(facts) + "\n" + _spill(stats)


def _spill(stats: Mapping[str, Any]) -> str:
    spill, fallback = stats.get("spill"), stats.get("fallback") or {}
    lines = ""
    if spill:
        lines += (
            f"spill: {spill['objects']} objects ({format_size(spill['bytes'])}) on disk in "
            f"{spill['files']} files ({format_size(spill['disk_bytes'])}) at {spill['dir']}, "
            f"written {format_size(spill['written_bytes'])} at "
            f"{format_size(int(spill['spill_bytes_per_second']))}/s, restored "
            f"{format_size(spill['restored_bytes'])} at "
            f"{format_size(int(spill['restore_bytes_per_second']))}/s, "
            f"errors {spill['errors']}, lost {spill['lost']}\n"
        )
        if spill["last_error"]:
            lines += f"spill: the last spill failed: {spill['last_error']}\n"
    if fallback.get("bytes"):
        lines += (
            f"fallback: {format_size(fallback['bytes'])} in {fallback['segments']} "
            f"file-backed segments at {fallback.get('dir')}\n"
        )
    return lines


def _nodes(stats: Mapping[str, Any]) -> str:
    store = {int(k): v for k, v in stats.get("nodes", {}).items()}
    machine = {int(k): v for k, v in stats.get("numa_nodes", {}).items()}
    rows = []
    for node in sorted(store.keys() | machine.keys()):
        s, m = store.get(node, {}), machine.get(node, {})
        rows.append(
            [
                node,
                _size(s.get("capacity")),
                _size(s.get("used")),
                s.get("objects", "-"),
                s.get("segments", "-"),
                (format_cpulist(m["cpus"]) or "none") if "cpus" in m else "-",
                _size(m.get("memory_total")),
                _size(m.get("memory_free")),
            ]
        )
    headers = ["node", "capacity", "used", "objects", "segments", "cpus", "memory", "free"]
    return _table("nodes", headers, rows)


def _counts(title: str, counts: Mapping[str, int]) -> str:
    if not counts:
        return f"{title}: none\n"
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"{title}: " + ", ".join(f"{name} {n}" for name, n in items) + "\n"


def _tasks(tasks: Sequence[Mapping[str, Any]]) -> str:
    headers = ["task", "run", "pid", "node", "state", "samples", "cpu", "faults", "ctx sw"]
    headers += ["migr", "local", "pages per node"]
    rows = []
    unsupported: dict[str, set[str]] = {}  # reason -> events
    for t in tasks:
        sample = t.get("latest") or {}
        counters = sample.get("counters", {})
        locality = sample.get("locality") or {}
        clock = counters.get("task-clock")
        fraction = locality.get("local_fraction")
        rows.append(
            [
                t["task_id"],
                t.get("run_id") or "-",
                t["pid"],
                "-" if t.get("node") is None else t["node"],
                t["state"],
                t.get("samples", 0),
                "-" if clock is None else f"{clock / 1e9:.2f}s",
                _count(counters.get("page-faults")),
                _count(counters.get("context-switches")),
                _count(counters.get("cpu-migrations")),
                "-" if fraction is None else f"{100 * fraction:.0f}%",
                _pages(locality.get("pages_per_node", {})),
            ]
        )
        for event, reason in sample.get("unsupported", {}).items():
            unsupported.setdefault(reason, set()).add(event)
    out = _table("tasks", headers, rows)
    for reason, events in sorted(unsupported.items()):
        out += f"unsupported {', '.join(sorted(events))}: {reason}\n"
    return out


def _placement(report: Sequence[Mapping[str, Any]]) -> str:
    headers = ["segment", "node", "page size", "size", "pages", "pages per node", "misplaced"]
    headers.append("unresolved")
    rows = [
        [
            r["id"],
            r["node"],
            format_size(r["page_size"]),
            format_size(r["size"]),
            r["pages"],
            _pages(r["pages_per_node"]),
            r["misplaced"],
            r["unresolved"],
        ]
        for r in report
    ]
    return _table("placement", headers, rows)


def _size(value: int | None) -> str:
    return "-" if value is None else format_size(value)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _pages(per_node: Mapping[Any, int]) -> str:
    items = sorted(per_node.items(), key=lambda kv: int(kv[0]))
    return " ".join(f"N{node}={count}" for node, count in items) or "-"


def _table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    """``title``, then aligned columns; ``title: none`` for no rows."""
    if not rows:
        return f"{title}: none\n"
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [f"{title}:"]
    for row in cells:
        padded = (c.ljust(w) for c, w in zip(row, widths, strict=True))
        lines.append(("  " + "  ".join(padded)).rstrip())
    return "\n".join(lines) + "\n"
