"""``plasma-coord serve``: run the coordinator until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import trio

from plasma.coordinator import CoordinatorConfig, serve
from plasma.errors import BadRequest
from plasma.metrics import parse_address
from plasma.protocol import DEFAULT_MAX_FRAME
from plasma.topology import Topology
from plasma.units import parse_size

DEFAULT_SOCKET = "/tmp/plasma-coord.sock"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the shared-memory store coordinator")
    p.add_argument(
        "--socket", "-s", default=DEFAULT_SOCKET, help="Unix socket path (created mode 0600)"
    )
    p.add_argument(
        "--memory",
        "-m",
        default="1GiB",
        help="store capacity: a size split evenly over --nodes (4GiB), or per node (0=2GiB,1=2GiB)",
    )
    p.add_argument(
        "--nodes", help="NUMA nodes to keep memory on, e.g. 0,1 (default: every node with memory)"
    )
    p.add_argument(
        "--hugepages",
        choices=["off", "2M", "1G"],
        default="off",
        help="back segments with hugepages",
    )
    p.add_argument(
        "--hugepages-fallback",
        action="store_true",
        help="use normal pages when hugepages run out instead of failing the create",
    )
    p.add_argument("--segment-size", default="64MiB", help="size of each shared-memory segment")
    p.add_argument("--max-object-size", help="largest object accepted (default: the node budget)")
    p.add_argument(
        "--max-frame", default=str(DEFAULT_MAX_FRAME), help="largest request frame accepted"
    )
    p.add_argument(
        "--allow-uid", type=int, action="append", default=[], help="also accept clients of this uid"
    )
    p.add_argument(
        "--sysfs-root", default="/", help="read the topology from this root (for testing)"
    )
    p.add_argument("--no-bind", action="store_true", help="do not bind segment memory to its node")
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics here; a bare PORT listens on 127.0.0.1",
    )
    p.add_argument(
        "--sample-interval",
        type=float,
        default=1.0,
        help="seconds between perf samples of registered tasks (default 1)",
    )
    p.add_argument("--log-level", default="WARNING")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> CoordinatorConfig:
    nodes = sorted({int(n) for n in args.nodes.split(",")}) if args.nodes else None
    hugepage = {"off": None, "2M": 2 << 20, "1G": 1 << 30}[args.hugepages]
    return CoordinatorConfig.for_topology(
        Topology.from_sysfs(args.sysfs_root),
        os.path.abspath(args.socket),
        args.memory,
        nodes,
        hugepage_size=hugepage,
        hugepage_fallback=args.hugepages_fallback,
        allow_uids=frozenset(args.allow_uid),
        max_frame=parse_size(args.max_frame),
        max_object_size=parse_size(args.max_object_size) if args.max_object_size else None,
        segment_size=parse_size(args.segment_size),
        bind_memory=not args.no_bind,
        sample_interval=_positive(args.sample_interval, "--sample-interval"),
        metrics=_metrics_address(args.metrics),
        sysfs_root=args.sysfs_root,
    )


def _positive(value: float, option: str) -> float:
    if not value > 0:
        raise BadRequest(f"{option} must be a positive number of seconds, got {value}")
    return value


def _metrics_address(text: str | None) -> str | None:
    """Validate ``--metrics`` now, so a typo fails before the store starts."""
    if text is not None:
        parse_address(text)
    return text


async def _serve_until_signal(config: CoordinatorConfig) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve(config, task_status=task_status))
            print(f"ready {config.socket_path}", flush=True)
            async for signum in signals:
                logging.getLogger("plasma.coordinator").info(
                    "stopping on %s", signal.Signals(signum).name
                )
                nursery.cancel_scope.cancel()
                break


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    trio.run(_serve_until_signal, config_from_args(args))
    return 0
