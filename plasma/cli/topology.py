"""``plasma-coord topology | place | run``: show the machine, choose CPUs, run pinned."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from plasma.errors import BadRequest, PlasmaError
from plasma.linux.cgroup import DEFAULT_ROOT
from plasma.placement import Placement, PlacementRequest, Placer, Policy
from plasma.topology import NO_NODE, Topology, format_cpulist, parse_cpulist


def register(subparsers: Any) -> None:
    """Add the ``topology``, ``place`` and ``run`` subcommands."""
    topo = subparsers.add_parser(
        "topology", help="show NUMA nodes, CPUs, memory and distances (like numactl -H)"
    )
    topo.add_argument("--json", action="store_true", help="print a JSON object")
    _add_root(topo)
    topo.set_defaults(func=cmd_topology)

    place = subparsers.add_parser("place", help="show the CPUs and nodes a request would get")
    add_request(place)
    place.add_argument("--explain", action="store_true", help="say how the choice was made")
    place.add_argument("--json", action="store_true", help="print a JSON object")
    _add_root(place)
    place.set_defaults(func=cmd_place)

    run = subparsers.add_parser(
        "run", help="choose CPUs, pin to them (and bind memory), then exec a command"
    )
    add_request(run)
    run.add_argument(
        "--membind", action="store_true", help="bind memory to the chosen node(s) (MPOL_BIND)"
    )
    run.add_argument("--explain", action="store_true", help="print the decision to stderr")
    run.add_argument(
        "--cell",
        action="store_true",
        help="run in a cgroup v2 cell of the chosen CPUs and nodes (children stay inside); "
        "the cell is removed when the command ends",
    )
    add_cgroup_root(run)
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    run.set_defaults(func=cmd_run)


def _add_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sysfs-root",
        default="/",
        metavar="DIR",
        help="directory holding sys/ and proc/ (default: the live machine)",
    )


def add_request(parser: argparse.ArgumentParser) -> None:
    """The placement request options (``--cpus``, ``--policy``, ``--numa``, ...)."""
    parser.add_argument("--cpus", type=int, required=True, metavar="N", help="CPUs wanted")
    parser.add_argument(
        "--policy",
        default=Policy.BEST_EFFORT.value,
        choices=[p.value for p in Policy],
        help="placement policy (default: best-effort)",
    )
    parser.add_argument("--numa", type=int, metavar="NODE", help="home NUMA node")
    parser.add_argument("--affinity", type=_node_list, metavar="NODES", help="allowed nodes")
    parser.add_argument(
        "--anti-affinity", type=_node_list, default=(), metavar="NODES", help="forbidden nodes"
    )
    parser.add_argument(
        "--full-cores", action="store_true", help="whole cores only (SMT siblings together)"
    )


def add_cgroup_root(parser: argparse.ArgumentParser) -> None:
    """The ``--cgroup-root`` option of ``run --cell``, ``cell ...`` and ``dag run --cells``."""
    parser.add_argument(
        "--cgroup-root",
        default=DEFAULT_ROOT,
        metavar="DIR",
        help=f"the cgroup v2 directory holding the cells (default: {DEFAULT_ROOT})",
    )


def _node_list(text: str) -> frozenset[int]:
    try:
        return parse_cpulist(text)
    except BadRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def placement_request(args: argparse.Namespace) -> PlacementRequest:
    """The request the options of :func:`add_request` describe."""
    return PlacementRequest(
        cpus=args.cpus,
        policy=args.policy,
        numa=args.numa,
        affinity=args.affinity,
        anti_affinity=args.anti_affinity,
        full_cores=args.full_cores,
    )


def _load(root: str) -> Topology:
    return Topology.current() if root == "/" else Topology.from_sysfs(root)


def cmd_topology(args: argparse.Namespace) -> int:
    topo = _load(args.sysfs_root)
    if args.json:
        print(json.dumps(topo.to_json(), indent=2))
    else:
        print(render_topology(topo))
    return 0


def render_topology(topo: Topology) -> str:
    """The ``numactl --hardware`` view plus packages, cores and L3 groups."""
    ids = sorted(topo.nodes)
    lines = [f"available: {len(ids)} nodes ({format_cpulist(ids)})"]
    for nid in ids:
        node = topo.nodes[nid]
        lines += [
            f"node {nid} cpus: {' '.join(map(str, sorted(node.cpus)))}",
            f"node {nid} size: {node.memory_total // 2**20} MB",
            f"node {nid} free: {node.memory_free // 2**20} MB",
        ]
        pages = ", ".join(f"{n} x {size // 1024} kB" for size, n in node.hugepages.items() if n)
        if pages:
            lines.append(f"node {nid} hugepages: {pages}")
    lines.append("node distances:")
    lines.append("node " + "".join(f"{n:>4}" for n in ids))
    for a in ids:
        lines.append(f"{a:>3}: " + "".join(f"{topo.distance(a, b):>4}" for b in ids))
    packages = topo.packages
    lines.append(f"packages: {len(packages)}")
    for pid, cpus in packages.items():
        lines.append(f"  package {pid}: cpus {format_cpulist(cpus)}")
    cores = topo.cores
    threads = sorted({len(c) for c in cores})
    lines.append(f"cores: {len(cores)} ({'/'.join(map(str, threads))} threads per core)")
    lines.append("L3 groups: " + " | ".join(format_cpulist(g) for g in topo.l3_groups))
    offline = sorted(c for c, info in topo.cpus.items() if not info.online)
    if offline:
        lines.append(f"offline cpus: {format_cpulist(offline)}")
    lines.append(f"allowed cpus: {format_cpulist(topo.allowed_cpus)}")
    lines.append(f"allowed nodes: {format_cpulist(topo.allowed_nodes)}")
    return "\n".join(lines)


def cmd_place(args: argparse.Namespace) -> int:
    placement = Placer(_load(args.sysfs_root)).place(placement_request(args))
    if args.json:
        print(json.dumps(placement.to_json(), indent=2))
        return 0
    print(f"cpus: {format_cpulist(placement.cpus)}")
    print(f"nodes: {','.join(map(str, placement.nodes)) or '-'}")
    if args.explain:
        print("\n".join(f"  {line}" for line in placement.explanation))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise BadRequest("run needs a command after --, e.g. plasma-coord run --cpus 2 -- CMD")
    if args.cell:
        from plasma.cli.cell import run_in_cell

        return run_in_cell(args, command)
    placement = Placer(Topology.current()).place(placement_request(args))
    if args.explain:
        print("\n".join(placement.explanation), file=sys.stderr)
    try:
        pin(placement, membind=args.membind)
    except OSError as exc:
        if isinstance(exc, PlasmaError):  # Unsupported: reported by the CLI entry point
            raise
        print(f"plasma-coord: cannot pin to {placement.cpus}: {exc}", file=sys.stderr)
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"plasma-coord: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached: execvp replaced the process


def pin(placement: Placement, *, membind: bool) -> None:
    """Pin the calling thread to the placement's CPUs and, if asked, bind its memory."""
    from plasma.linux.affinity import set_affinity
    from plasma.linux.numa import MPOL_BIND, set_mempolicy

    set_affinity(placement.cpus)
    if membind:
        nodes = [n for n in placement.nodes if n != NO_NODE]
        if not nodes:
            raise BadRequest("--membind: the chosen CPUs belong to no NUMA node")
        if len(nodes) > 1:
            print(
                f"plasma-coord: note: CPUs span nodes {nodes}; memory bound to all of them",
                file=sys.stderr,
            )
        set_mempolicy(MPOL_BIND, nodes)
