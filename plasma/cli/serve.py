"""``plasma-coord serve``: run the coordinator until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import trio

from plasma.addresses import parse_address
from plasma.coordinator import CoordinatorConfig, serve
from plasma.coordinator.spares import PREFAULT_MODES
from plasma.dashboard import options as dashboard_options
from plasma.default_socket import DEFAULT_SOCKET, SOCKET_ENV, resolve
from plasma.errors import BadRequest, PlasmaError
from plasma.linux import heap
from plasma.linux.memcg import memory_limit
from plasma.protocol import DEFAULT_MAX_FRAME
from plasma.store import SPILL_MAX_OBJECTS
from plasma.topology import Topology
from plasma.units import format_size, parse_size

SHARED_SOCKET_MODE = 0o666  # with --allow-uid: SO_PEERCRED, not the mode, decides who is served
SPILL_THRESHOLD = 0.8  # (Ray's default)
SPILL_SURVIVES = ("crash", "reboot")
FALLBACK_FILES = 1024
MAX_PINS = 1 << 20  # pin-table entries per client (8 MiB of memory each)
# what the coordinator itself needs besides its budget (Python, trio, tables, pin tables of a
# few clients): a memory cgroup limit must hold the budget plus this (docs/deploy.md)
SERVE_OVERHEAD = 64 << 20

log = logging.getLogger("plasma.coordinator")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the shared-memory store coordinator")
    p.add_argument(
        "--socket",
        "-s",
        default=None,
        help="Unix socket path (mode 0600; 0666 with --allow-uid, peers still checked; "
        f"default: ${SOCKET_ENV}, else {DEFAULT_SOCKET})",
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
    p.add_argument(
        "--prefault",
        choices=PREFAULT_MODES,
        default="segment",
        help="memory faulted in ahead of need, in the background, so that no create waits "
        "for it: one spare segment per node (default), the whole budget at start (when the "
        "node's free memory holds it twice over), or none (docs/protocol.md)",
    )
    p.add_argument("--max-object-size", help="largest object accepted (default: the node budget)")
    p.add_argument(
        "--max-frame", default=str(DEFAULT_MAX_FRAME), help="largest request frame accepted"
    )
    p.add_argument(
        "--allow-uid",
        type=_allow_uid,
        action="append",
        default=[],
        metavar="UID[:rw]",
        help="also accept clients of this uid: read-only, or read-write with :rw (repeatable; "
        "the coordinator's own uid is always read-write)",
    )
    p.add_argument(
        "--max-clients",
        type=int,
        default=1024,
        help="connections served at once; more are refused with store_full (default 1024)",
    )
    p.add_argument(
        "--handshake-timeout",
        type=float,
        default=10.0,
        help="seconds a new connection has to send Connect before it is closed (default 10)",
    )
    p.add_argument(
        "--pins-per-client",
        type=int,
        default=4096,
        help="entries of each client's pin table: objects a client holds from gets served "
        "by the directory, without a request (beyond, gets ask the coordinator); 0 turns "
        f"reads without requests off (default 4096; at most {MAX_PINS})",
    )
    p.add_argument(
        "--sysfs-root", default="/", help="read the topology from this root (for testing)"
    )
    p.add_argument(
        "--no-bind",
        action="store_true",
        help="do not bind segment memory to its node (migrate and follow-readers then move "
        "only the accounting); needed to serve a --sysfs-root with nodes this kernel lacks",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics here; a bare PORT listens on 127.0.0.1",
    )
    dashboard_options.add_arguments(p, "the machine, the store and its runs")
    p.add_argument(
        "--sample-interval",
        type=float,
        default=1.0,
        help="seconds between perf samples of registered tasks (default 1)",
    )
    spill = p.add_argument_group("when memory runs out (docs/spilling.md)")
    spill.add_argument(
        "--spill-dir",
        metavar="DIR",
        help="evicting spills sealed objects to files here (a get brings them back) instead "
        "of deleting them",
    )
    spill.add_argument(
        "--spill-threshold",
        type=float,
        default=SPILL_THRESHOLD,
        metavar="F",
        help="copy objects to disk ahead of need once the bytes without a copy pass this "
        f"fraction of a node's memory (default {SPILL_THRESHOLD}; 1: only when a create "
        "needs the room)",
    )
    spill.add_argument("--spill-max", metavar="SIZE", help="bytes the spill files may take")
    spill.add_argument(
        "--spill-max-objects",
        type=int,
        default=SPILL_MAX_OBJECTS,
        metavar="N",
        help="objects the spill files may hold (each costs the coordinator a few hundred "
        f"bytes of memory; default {SPILL_MAX_OBJECTS:,})",
    )
    spill.add_argument(
        "--spill-survives",
        choices=SPILL_SURVIVES,
        default="crash",
        help="what spilled objects survive: a crash of the coordinator (default: written "
        "into the page cache, at the disk's write-back speed) or a reboot too (every file "
        "and deletion fsynced, at the disk's synchronous speed)",
    )
    spill.add_argument(
        "--restore",
        action="store_true",
        help="bring back the objects a previous coordinator spilled to --spill-dir",
    )
    spill.add_argument(
        "--fallback-dir",
        metavar="DIR",
        help="when everything is referenced, serve creates from file-backed segments here",
    )
    spill.add_argument(
        "--fallback-files",
        type=int,
        default=FALLBACK_FILES,
        metavar="N",
        help=f"fallback files (a descriptor each) at most at once (default {FALLBACK_FILES}, "
        "and never more than a quarter of the descriptors this process may open)",
    )
    spill.add_argument(
        "--fallback-max", metavar="SIZE", help="bytes the fallback files may take in all"
    )
    p.add_argument(
        "--follow-readers",
        action="store_true",
        help="move an object's pages to the NUMA node most of its reads come from (docs/numa.md)",
    )
    p.add_argument(
        "--cgroup-root",
        default="/",
        help="read /proc/self/cgroup and the cgroup mounts under this root (for testing)",
    )
    p.add_argument("--log-level", default="WARNING")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> CoordinatorConfig:
    nodes = sorted({int(n) for n in args.nodes.split(",")}) if args.nodes else None
    hugepage = {"off": None, "2M": 2 << 20, "1G": 1 << 30}[args.hugepages]
    dashboard, dashboard_token = dashboard_options.from_args(args)
    return CoordinatorConfig.for_topology(
        Topology.from_sysfs(args.sysfs_root),
        os.path.abspath(resolve(args.socket)),
        args.memory,
        nodes,
        hugepage_size=hugepage,
        hugepage_fallback=args.hugepages_fallback,
        allow_uids=_allowed_uids(args.allow_uid),
        max_frame=parse_size(args.max_frame),
        max_object_size=parse_size(args.max_object_size) if args.max_object_size else None,
        segment_size=parse_size(args.segment_size),
        prefault=args.prefault,
        bind_memory=not args.no_bind,
        sample_interval=_positive(args.sample_interval, "--sample-interval"),
        max_clients=_at_least_one(args.max_clients, "--max-clients"),
        handshake_timeout=_positive(args.handshake_timeout, "--handshake-timeout"),
        pins_per_client=_pins(args.pins_per_client),
        metrics=_metrics_address(args.metrics),
        dashboard=dashboard,
        dashboard_token=dashboard_token,
        **_spill_options(args),
        follow_readers=args.follow_readers,
        sysfs_root=args.sysfs_root,
    )


def _spill_options(args: argparse.Namespace) -> dict[str, Any]:
    changed = (
        args.spill_threshold != SPILL_THRESHOLD
        or args.spill_max_objects != SPILL_MAX_OBJECTS
        or args.spill_survives != "crash"
    )
    if args.spill_dir is None and (args.restore or args.spill_max or changed):
        raise BadRequest(
            "--restore, --spill-max, --spill-max-objects, --spill-survives and "
            "--spill-threshold need --spill-dir"
        )
    if args.spill_max_objects < 1:
        raise BadRequest(f"--spill-max-objects must be at least 1, got {args.spill_max_objects}")
    if not 0 < args.spill_threshold <= 1:
        raise BadRequest(f"--spill-threshold must be in (0, 1], got {args.spill_threshold}")
    if args.fallback_dir is not None and not os.path.isdir(args.fallback_dir):
        raise BadRequest(f"--fallback-dir {args.fallback_dir} is not a directory")
    fallback_changed = args.fallback_files != FALLBACK_FILES or args.fallback_max
    if args.fallback_dir is None and fallback_changed:
        raise BadRequest("--fallback-files and --fallback-max need --fallback-dir")
    if args.fallback_files < 1:
        raise BadRequest(f"--fallback-files must be at least 1, got {args.fallback_files}")
    return {
        "spill_dir": args.spill_dir,
        "spill_threshold": args.spill_threshold,
        "spill_max": parse_size(args.spill_max) if args.spill_max else None,
        "spill_max_objects": args.spill_max_objects,
        "restore": args.restore,
        "spill_survives": args.spill_survives,
        "fallback_dir": os.path.abspath(args.fallback_dir) if args.fallback_dir else None,
        "fallback_files": args.fallback_files,
        "fallback_max": parse_size(args.fallback_max) if args.fallback_max else None,
    }


def _pins(value: int) -> int:
    if not 0 <= value <= MAX_PINS:
        raise BadRequest(f"--pins-per-client must be 0 to {MAX_PINS}, got {value}")
    return value


def _allow_uid(text: str) -> tuple[int, bool]:
    """``(uid, writable)`` from an ``--allow-uid`` value: ``UID`` (read-only) or ``UID:rw``."""
    uid, sep, mode = text.partition(":")
    if not (uid.isascii() and uid.isdigit()) or (sep and mode != "rw"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not UID (read-only access) or UID:rw (read-write access)"
        )
    return int(uid), mode == "rw"


def _allowed_uids(entries: list[tuple[int, bool]]) -> dict[int, bool]:
    allowed: dict[int, bool] = {}
    for uid, writable in entries:
        if allowed.setdefault(uid, writable) != writable:
            raise BadRequest(f"--allow-uid: uid {uid} is given both read-only and read-write")
    return allowed


def _share_socket(config: CoordinatorConfig) -> None:
    """Let the allowed uids reach the socket, and warn about each that a directory on the way
    keeps out (mode bits only: an ACL may still let it through)."""
    os.chmod(config.socket_path, SHARED_SOCKET_MODE)
    for uid in config.allow_uids:
        blocked = _unsearchable_dir(Path(config.socket_path).parent, uid)
        if blocked is not None:
            log.warning(
                "uid %d cannot reach %s: it may not search directory %s",
                uid,
                config.socket_path,
                blocked,
            )


def _unsearchable_dir(directory: Path, uid: int) -> Path | None:
    """The first directory from / down to ``directory`` whose mode denies ``uid`` search."""
    if uid == 0:
        return None
    try:
        entry = pwd.getpwuid(uid)
        groups = set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except KeyError:  # no passwd entry: no groups to go by
        groups = set()
    for path in [*reversed(directory.parents), directory]:
        st = path.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return path
    return None


def _at_least_one(value: int, option: str) -> int:
    if value < 1:
        raise BadRequest(f"{option} must be at least 1, got {value}")
    return value


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
            if config.allow_uids:
                _share_socket(config)
            print(f"ready {config.socket_path}", flush=True)
            async for signum in signals:
                log.info("stopping on %s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def check_memory_limit(config: CoordinatorConfig, cgroup_root: str | Path = "/") -> None:
    """Refuse (BadRequest, one line with both numbers) a budget that this process's memory
    cgroup cannot hold with :data:`SERVE_OVERHEAD`: better than an OOM kill once the store
    fills. Hugepage segments are charged to the hugetlb controller, not to the memory limit."""
    if config.hugepage_size and not config.hugepage_fallback:
        return
    limit = memory_limit(cgroup_root)
    budget = sum(config.memory.values())
    if limit is None or budget + SERVE_OVERHEAD <= limit.limit:
        return
    raise BadRequest(
        f"--memory {format_size(budget)} ({budget} bytes) plus {format_size(SERVE_OVERHEAD)} "
        f"of coordinator overhead needs {budget + SERVE_OVERHEAD} bytes, but this process's "
        f"memory cgroup allows {limit.limit} bytes ({format_size(limit.limit)}, {limit.path}): "
        f"lower --memory to at most {format_size(max(0, limit.limit - SERVE_OVERHEAD))} or "
        "raise the limit"
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    config = config_from_args(args)
    check_memory_limit(config, args.cgroup_root)
    if not heap.map_large_blocks():
        log.debug("this C library keeps its own mmap threshold (no glibc mallopt)")
    try:
        trio.run(_serve_until_signal, config)
    except BaseExceptionGroup as group:
        # a refusal to start (socket in use, bad option) is one error, not a traceback
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], PlasmaError | OSError):
            raise group.exceptions[0] from None
        raise
    return 0
