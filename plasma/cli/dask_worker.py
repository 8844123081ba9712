"""``plasma-coord dask-worker SCHEDULER``: one Dask worker per NUMA node, sharing the store.

Each worker is a ``dask worker`` process (with its nanny) pinned to its node's CPUs with its
memory bound to the node (the ``run`` machinery: :class:`~plasma.placement.Placer` and
:func:`~plasma.cli.topology.pin`), advertising the resource ``numa-N`` and running
:class:`~plasma.dask.PlasmaPlugin` (through ``plasma.dask.preload``) on the host's
coordinator, which is started here when ``--socket`` names none. The planning is plain
functions (:func:`plan`, :func:`worker_argv`); :func:`cmd_dask_worker` runs the plan, waits,
reaps the objects of a worker that exits and stops everything on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from plasma import default_socket
from plasma.default_socket import DEFAULT_SOCKET, SOCKET_ENV
from plasma.errors import BadRequest
from plasma.linux.processes import die_with_parent
from plasma.placement import Placement, PlacementRequest, Placer, Policy
from plasma.topology import Topology, format_cpulist, parse_cpulist
from plasma.units import format_size, parse_size


def register(subparsers: Any) -> None:
    """Add the ``dask-worker`` subcommand."""
    p = subparsers.add_parser(
        "dask-worker",
        help="start one Dask worker per NUMA node, pinned, sharing the host's store",
    )
    p.add_argument("scheduler", metavar="SCHEDULER_ADDRESS", help="e.g. tcp://host:8786")
    p.add_argument("--nthreads", type=int, help="threads per worker (default: its node's CPUs)")
    p.add_argument(
        "--memory-limit", help="memory limit of each worker (default: its node's memory)"
    )
    p.add_argument("--nodes", type=parse_cpulist, help="the nodes to start workers on (0,2-3)")
    p.add_argument(
        "--socket",
        help=f"the host's coordinator (default: ${SOCKET_ENV} if set, else {DEFAULT_SOCKET} if "
        "a coordinator listens there, else start one for them)",
    )
    p.add_argument(
        "--store-memory",
        default="25%",
        help="memory of the coordinator started here: SIZE or a share of the nodes' (25%%)",
    )
    p.add_argument(
        "--threshold",
        default="1MiB",
        help="results of this size or more are shared with same-host workers by id",
    )
    p.add_argument(
        "--no-place",
        action="store_true",
        help="do not route tasks to the node of their inputs (PlasmaScheduler)",
    )
    p.set_defaults(func=cmd_dask_worker)


@dataclass(frozen=True)
class NodeWorker:
    """The worker of one node: where it runs and with how many threads."""

    node: int
    placement: Placement
    nthreads: int


def plan(topo: Topology, nodes: Iterable[int] | None, nthreads: int | None) -> list[NodeWorker]:
    """One worker per node (default: every allowed node with CPUs this process may use)."""
    usable = sorted(n for n, info in topo.nodes.items() if info.cpus & topo.allowed_cpus)
    wanted = sorted(nodes) if nodes is not None else usable
    missing = sorted(set(wanted) - set(usable))
    if missing or not wanted:
        raise BadRequest(
            f"no CPUs this process may use on node(s) {format_cpulist(missing)}"
            if missing
            else "no NUMA node with CPUs this process may use"
        )
    placer = Placer(topo)
    workers = []
    for node in wanted:
        cpus = nthreads or len(topo.nodes[node].cpus & topo.allowed_cpus)
        request = PlacementRequest(cpus=cpus, policy=Policy.SINGLE_NUMA_NODE, numa=node)
        workers.append(NodeWorker(node, placer.place(request), cpus))
    return workers


def worker_argv(
    scheduler: str,
    worker: NodeWorker,
    *,
    socket_path: str,
    memory_limit: int,
    threshold: int,
    place: bool,
) -> list[str]:
    """The ``dask worker`` command line of ``worker``."""
    return [
        sys.executable,
        "-m",
        "distributed.cli.dask_worker",
        scheduler,
        "--nthreads",
        str(worker.nthreads),
        "--resources",
        f"numa-{worker.node}={worker.nthreads}",
        "--name",
        f"{socket.gethostname()}-numa-{worker.node}",
        "--memory-limit",
        str(memory_limit),
        "--preload",
        "plasma.dask.preload",
        "--plasma-socket",
        socket_path,
        "--plasma-threshold",
        str(threshold),
        "--plasma-place" if place else "--no-plasma-place",
    ]


def store_memory(text: str, topo: Topology, nodes: Sequence[int]) -> int:
    """``--store-memory``: a size, or a percentage of the memory of ``nodes``."""
    if text.endswith("%"):
        share = float(text[:-1]) / 100
        if not 0 < share <= 1:
            raise BadRequest(f"--store-memory {text}: a share must be in (0%, 100%]")
        return int(share * sum(topo.nodes[n].memory_total for n in nodes))
    return parse_size(text)


def cmd_dask_worker(args: argparse.Namespace) -> int:
    topo = Topology.current()
    workers = plan(topo, args.nodes, args.nthreads)
    nodes = [w.node for w in workers]
    threshold = parse_size(args.threshold)
    with contextlib.ExitStack() as stack:
        if (running := args.socket or default_socket.found()) is not None:
            socket_path = running
            _check_reachable(socket_path)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="plasma-dask-"))
            socket_path = os.path.join(tmp, "plasma-coord.sock")
            size = store_memory(args.store_memory, topo, nodes)
            stack.enter_context(_coordinator(socket_path, size, nodes))
        procs: dict[int, tuple[NodeWorker, subprocess.Popen[bytes]]] = {}
        stopping = False

        def stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True
            for _, proc in procs.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for worker in workers:
            limit = (
                parse_size(args.memory_limit)
                if args.memory_limit
                else topo.nodes[worker.node].memory_total
            )
            argv = worker_argv(
                args.scheduler,
                worker,
                socket_path=socket_path,
                memory_limit=limit,
                threshold=threshold,
                place=not args.no_place,
            )
            proc = subprocess.Popen(argv, preexec_fn=_pinner(worker.placement, os.getpid()))
            procs[proc.pid] = (worker, proc)
            print(
                f"plasma-coord: worker numa-{worker.node} (pid {proc.pid}): cpus "
                f"{format_cpulist(worker.placement.cpus)}, memory bound to node {worker.node}, "
                f"{worker.nthreads} threads, memory limit {format_size(limit)}, store "
                f"{socket_path}",
                file=sys.stderr,
                flush=True,
            )
        status = 0
        while procs:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            if pid not in procs:
                continue  # the coordinator we started: reported when we stop it
            worker, _ = procs.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if not stopping:
                print(
                    f"plasma-coord: worker numa-{worker.node} exited with status {code}",
                    file=sys.stderr,
                    flush=True,
                )
                status = status or (code if code > 0 else 1)
                _reap(socket_path)
    return 0 if stopping else status


def _pinner(placement: Placement, parent: int) -> Any:
    from plasma.cli.topology import pin

    def run_in_child() -> None:
        die_with_parent(parent)  # (a worker never outlives this command, even SIGKILLed)
        pin(placement, membind=True)

    return run_in_child


def _check_reachable(socket_path: str) -> None:
    from plasma.client import connect

    connect(socket_path, "plasma-coord dask-worker").close()  # Disconnected says why not


@contextlib.contextmanager
def _coordinator(socket_path: str, size: int, nodes: Sequence[int]) -> Any:
    """A coordinator for the workers, with ``size`` bytes split over ``nodes``."""
    per_node = size // len(nodes)
    memory = ",".join(f"{n}={per_node}" for n in nodes)
    argv = [sys.executable, "-m", "plasma", "serve", "--socket", socket_path, "--memory", memory]
    parent = os.getpid()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, preexec_fn=lambda: die_with_parent(parent)
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        proc.wait()
        raise BadRequest(f"the coordinator did not start (status {proc.returncode})")
    print(f"plasma-coord: coordinator {socket_path}: {format_size(size)}", file=sys.stderr)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _reap(socket_path: str) -> None:
    from plasma.client import connect
    from plasma.dask import reap

    with connect(socket_path, "plasma-coord dask-worker") as client:
        reaped = reap(client)
    if reaped:
        print(f"plasma-coord: deleted {reaped} objects of the worker", file=sys.stderr)
