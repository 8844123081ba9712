"""``plasma-coord cell create | list | run | attach | destroy | evict-foreign``: cgroup v2 cells."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from typing import Any

from plasma.cells import CellSpec, foreign_processes, place_cell
from plasma.cli.topology import add_cgroup_root, add_request, placement_request
from plasma.errors import BadRequest
from plasma.linux.cgroup import CgroupTree
from plasma.topology import NO_NODE, Topology, format_cpulist


def register(subparsers: Any) -> None:
    """Add the ``cell`` command and its subcommands."""
    cell = subparsers.add_parser("cell", help="cgroup v2 cpuset cells (create, run in, evict)")
    sub = cell.add_subparsers(dest="cell_command", required=True, metavar="SUBCOMMAND")

    create = sub.add_parser("create", help="make a cell on CPUs chosen by a placement policy")
    create.add_argument("name", help="cell name: letters, digits, '_' and '-'")
    add_request(create)
    create.add_argument(
        "--exclusive", action="store_true", help="an isolated CPU partition: no one else runs there"
    )
    create.add_argument("--json", action="store_true", help="print the cell as JSON")
    create.set_defaults(func=cmd_create)

    listing = sub.add_parser("list", help="show the cells and what runs in them")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(func=cmd_list)

    run = sub.add_parser("run", help="run a command inside a cell (it and all it forks)")
    run.add_argument("name", help="the cell (options such as --cgroup-root go before it)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    run.set_defaults(func=cmd_run)

    attach = sub.add_parser("attach", help="move a process (all its threads) into a cell")
    attach.add_argument("name")
    attach.add_argument("pid", type=int)
    attach.set_defaults(func=cmd_attach)

    destroy = sub.add_parser("destroy", help="remove an empty cell")
    destroy.add_argument("name")
    destroy.set_defaults(func=cmd_destroy)

    evict = sub.add_parser(
        "evict-foreign",
        help="list (or signal) processes outside a cell whose CPU affinity overlaps it",
    )
    evict.add_argument("name")
    evict.add_argument(
        "--signal", metavar="SIG", help="send SIG (e.g. STOP, TERM) to them; without it: list only"
    )
    evict.add_argument("--dry-run", action="store_true", help="list only, even with --signal")
    evict.add_argument(
        "--include-unpinned",
        action="store_true",
        help="also processes allowed on every CPU (they overlap every cell)",
    )
    evict.add_argument("--json", action="store_true", help="print a JSON list")
    evict.set_defaults(func=cmd_evict_foreign)

    for parser in (create, listing, run, attach, destroy, evict):
        add_cgroup_root(parser)


def _tree(args: argparse.Namespace) -> CgroupTree:
    tree = CgroupTree(args.cgroup_root)
    tree.check()  # say what is missing before doing anything
    return tree


def _describe(cell: Any) -> str:
    return (
        f"cell {cell.name}: cpus {format_cpulist(cell.cpus_effective)}, "
        f"mems {format_cpulist(cell.mems_effective)}, partition {cell.partition}"
    )


def cmd_create(args: argparse.Namespace) -> int:
    tree = _tree(args)
    topology = Topology.current()
    placement = place_cell(topology, placement_request(args), tree.cells())
    spec = CellSpec.confining(
        args.name, placement.cpus, placement.nodes, topology, exclusive=args.exclusive
    )
    cell = tree.create(spec)
    print(json.dumps(cell.to_json()) if args.json else _describe(cell))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    cells = _tree(args).cells()
    if args.json:
        print(json.dumps([c.to_json() for c in cells], indent=2))
        return 0
    rows = [("NAME", "CPUS", "MEMS", "PARTITION", "PROCS")]
    for c in cells:
        rows.append(
            (
                c.name,
                format_cpulist(c.cpus_effective),
                format_cpulist(c.mems_effective),
                str(c.partition),
                " ".join(map(str, c.procs)) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)) + "  " + row[4])
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or command[0].startswith("-"):
        raise BadRequest(
            "cell run: give options before the cell name and the command after --, e.g. "
            "plasma-coord cell run --cgroup-root DIR c1 -- CMD"
        )
    _tree(args).attach(args.name, os.getpid())
    sys.stdout.flush()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"plasma-coord: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
    return 127


def cmd_attach(args: argparse.Namespace) -> int:
    _tree(args).attach(args.name, args.pid)
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    _tree(args).destroy(args.name)
    return 0


def cmd_evict_foreign(args: argparse.Namespace) -> int:
    from plasma.linux.processes import process_affinities, send_signal

    signum = _signal(args.signal) if args.signal else None
    cell = _tree(args).read(args.name)
    online = frozenset(c for c, info in Topology.current().cpus.items() if info.online)
    affinities = process_affinities()
    pids = foreign_processes(
        cell, affinities, online, exclude=[os.getpid()], include_unpinned=args.include_unpinned
    )
    act = signum is not None and not args.dry_run
    rows = []
    for pid in pids:
        result = "listed"
        if signum is not None and act:
            result = send_signal(pid, signum) or f"sent {signal.Signals(signum).name}"
        rows.append({"pid": pid, "cpus": format_cpulist(affinities[pid]), "result": result})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['pid']}\tcpus {row['cpus']}\t{row['result']}")
    if not act:
        print(f"dry run: {len(rows)} foreign process(es) overlap cell {cell.name}")
    return 0


def _signal(name: str) -> int:
    text = name.upper().removeprefix("SIG")
    try:
        return int(signal.Signals[f"SIG{text}"])
    except KeyError:
        raise BadRequest(f"unknown signal {name!r} (e.g. STOP, TERM, KILL)") from None


def run_in_cell(args: argparse.Namespace, command: list[str]) -> int:
    """``run --cell``: the command runs in a new cell of its placement, removed at its end.

    The launcher (``python -m plasma.dag.launch``) joins the cell, pins and execs the command;
    this process forwards SIGINT, SIGTERM and SIGHUP to it, and whatever way it ends, kills
    what is left in the cell and removes it. Returns the command's exit status.
    """
    tree = _tree(args)
    topology = Topology.current()
    placement = place_cell(topology, placement_request(args), tree.cells())
    if args.explain:
        print("\n".join(placement.explanation), file=sys.stderr)
    nodes = [n for n in placement.nodes if n != NO_NODE]
    if args.membind and not nodes:
        raise BadRequest("--membind: the chosen CPUs belong to no NUMA node")
    spec = CellSpec.confining(f"run-{os.getpid()}", placement.cpus, nodes, topology)
    tree.create(spec)
    try:
        argv = [sys.executable, "-m", "plasma.dag.launch", "--cpus", _ints(placement.cpus)]
        argv += ["--cell", spec.name, "--cgroup-root", str(tree.root)]
        if args.membind:
            argv += ["--membind", _ints(nodes)]
        child = subprocess.Popen([*argv, "--", *command])
        forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {
            s: signal.signal(s, lambda signum, _: child.send_signal(signum)) for s in forwarded
        }
        try:
            status = child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    finally:
        tree.kill_and_remove(spec.name)
    return 128 - status if status < 0 else status


def _ints(values: list[int]) -> str:
    return ",".join(map(str, values))
