"""``plasma-coord hugepages``: reserve hugepages per NUMA node and print what was granted."""

from __future__ import annotations

import argparse
import json
import sys

from plasma.errors import BadRequest
from plasma.hugepages import reserve_hugepages
from plasma.units import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hugepages",
        help="reserve hugepages (per NUMA node) and print what the kernel granted",
        description="Set the hugepage pool of each given node (or the global pool) to --count "
        "pages. Exits with status 1 when the kernel granted fewer pages than asked for.",
    )
    p.add_argument("--size", default="2M", help="hugepage size, e.g. 2M or 1G (default 2M)")
    p.add_argument("--count", type=int, required=True, help="pages to hold on each node")
    p.add_argument(
        "--node",
        type=int,
        action="append",
        help="NUMA node to reserve on (repeatable; default: the global pool)",
    )
    p.add_argument("--sysfs-root", default="/", help="directory holding sys/ (for testing)")
    p.add_argument("--json", action="store_true", help="print one JSON object per reservation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        page_size = parse_size(args.size)
    except ValueError as exc:
        raise BadRequest(f"--size: {exc}") from None
    nodes: list[int | None] = list(dict.fromkeys(args.node)) if args.node else [None]
    short = False
    for node in nodes:
        result = reserve_hugepages(page_size, args.count, node, args.sysfs_root)
        short |= not result.complete
        if args.json:
            print(
                json.dumps(
                    {
                        "node": result.node,
                        "page_size": result.page_size,
                        "requested": result.requested,
                        "granted": result.granted,
                        "free": result.free,
                    }
                )
            )
        else:
            print(result.describe())
    if short:
        print("plasma-coord: the kernel granted fewer hugepages than requested", file=sys.stderr)
    return 1 if short else 0
