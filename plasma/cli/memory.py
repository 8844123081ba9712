"""``plasma-coord memory``: who holds a coordinator's memory, and its largest objects held.

Per client (most bytes held first): pid, uid, name, and the bytes (objects) it holds as
references to sealed objects, pins of objects it does not reference, unsealed creates and
its arena's unused tail; the totals (each object once); the largest objects held with the
clients referencing and pinning them. What ``ray memory`` shows, plus pins and arenas.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from plasma.cli.stats import _table
from plasma.units import format_size

DEFAULT_TOP = 10


def register(subparsers: Any) -> None:
    """Add the ``memory`` subcommand."""
    from plasma.cli.stats import add_socket_option

    p = subparsers.add_parser(
        "memory", help="show which clients hold a coordinator's memory, and its largest objects"
    )
    add_socket_option(p)
    p.add_argument("--json", action="store_true", help="print the clients and holders as JSON")
    p.add_argument(
        "--top",
        type=_count,
        default=DEFAULT_TOP,
        metavar="N",
        help=f"how many of the largest objects held to list (default {DEFAULT_TOP})",
    )
    p.set_defaults(func=run)


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def run(args: argparse.Namespace) -> int:
    from plasma.client import Client

    try:
        with Client(args.socket, client_name="plasma-coord memory") as client:
            stats = client.stats(top_objects=args.top)
            me = client.client_id
    except ConnectionError as exc:
        print(f"plasma-coord memory: {exc}", file=sys.stderr)
        return 1
    stats["clients"] = [c for c in stats["clients"] if c["id"] != me]  # (not this command)
    report = {k: stats.get(k) for k in ("capacity", "used", "clients", "holders")}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_memory(report), end="")
    return 0


def format_memory(stats: Mapping[str, Any]) -> str:
    """The human-readable report: the store's use, the clients by bytes held, the totals and
    the largest objects held."""
    clients = sorted(stats.get("clients", []), key=lambda c: (-_total(c), c["id"]))
    capacity, used = stats.get("capacity", 0), stats.get("used", 0)
    holders = stats.get("holders") or {}
    total = holders.get("total") or {}
    share = f" ({100 * used / capacity:.1f}%)" if capacity else ""
    head = (
        f"store: capacity {format_size(capacity)}, used {format_size(used)}{share}, "
        f"held by clients {format_size(total.get('bytes', 0))}\n"
    )
    rows = []
    for c in clients:
        h = c.get("holds") or {}
        rows.append(
            [
                c["id"],
                "-" if c.get("pid") is None else c["pid"],
                "-" if c.get("uid") is None else c["uid"],
                _bytes(h.get("total", 0)),
                _held(h.get("references")),
                _held(h.get("pins")),
                _held(h.get("unsealed")),
                _bytes(h.get("arena", 0)),
                c.get("name") or "-",
            ]
        )
    headers = ["id", "pid", "uid", "held", "references", "pins", "unsealed", "arena", "name"]
    totals = (
        f"total: {format_size(total.get('bytes', 0))} held (each object once): "
        f"{format_size(total.get('references', 0))} referenced, "
        f"{format_size(total.get('pins', 0))} only pinned, "
        f"{format_size(total.get('unsealed', 0))} being written, "
        f"{format_size(total.get('arenas', 0))} in arenas\n"
    )
    names = {c["id"]: _who(c) for c in stats.get("clients", [])}
    objects = [
        [
            o["id"],
            format_size(o["size"]),
            o["node"],
            o["state"] + (" (replica)" if o.get("replica") else ""),
            _holders(o, names),
        ]
        for o in holders.get("objects", [])
    ]
    return "\n".join(
        [
            head,
            _table("clients", headers, rows),
            totals,
            _table("largest objects held", ["object", "size", "node", "state", "held by"], objects),
        ]
    )


def _total(client: Mapping[str, Any]) -> int:
    return int((client.get("holds") or {}).get("total", 0))


def _bytes(n: int) -> str:
    return format_size(n) if n else "-"


def _held(kind: Mapping[str, int] | None) -> str:
    if not kind or not kind.get("objects"):
        return "-"
    return f"{format_size(kind['bytes'])} ({kind['objects']})"


def _who(client: Mapping[str, Any]) -> str:
    name = client.get("name") or f"client {client['id']}"
    return name if client.get("pid") is None else f"{name} (pid {client['pid']})"


def _holders(obj: Mapping[str, Any], names: Mapping[int, str]) -> str:
    """``"a (pid 1), b (pid 2) pinning"``: who references it, then who pins it."""
    who = [names.get(cid, f"client {cid}") for cid in obj.get("referenced_by", [])]
    who += [f"{names.get(cid, f'client {cid}')} pinning" for cid in obj.get("pinned_by", [])]
    return ", ".join(who) or "-"
