"""``plasma-coord dag run PIPELINE``: run a pipeline and print what happened."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trio

from plasma import default_socket
from plasma.cli.topology import add_cgroup_root
from plasma.dag.report import summary
from plasma.dag.runner import EXIT_STATUS, RunOptions, run_pipeline
from plasma.dag.spec import load_pipeline
from plasma.dashboard import options as dashboard_options
from plasma.default_socket import DEFAULT_SOCKET, SOCKET_ENV
from plasma.errors import PlasmaError
from plasma.linux.cgroup import CgroupTree


def register(sub: argparse._SubParsersAction) -> None:
    dag = sub.add_parser("dag", help="run DAG pipelines of pinned tasks near their data")
    dag_sub = dag.add_subparsers(dest="dag_command", required=True, metavar="SUBCOMMAND")
    p = dag_sub.add_parser("run", help="run a pipeline file (YAML, JSON or TOML)")
    p.add_argument("pipeline", type=Path, help="the pipeline spec")
    store = p.add_mutually_exclusive_group()
    store.add_argument(
        "--socket",
        "-s",
        help=f"a running coordinator (default: ${SOCKET_ENV} if set, else {DEFAULT_SOCKET} if "
        "a coordinator listens there, else start one)",
    )
    store.add_argument(
        "--memory", "-m", default="512MiB", help="capacity of the embedded coordinator"
    )
    p.add_argument("--prom-file", type=Path, help="write Prometheus textfile metrics here")
    p.add_argument("--record", type=Path, help="write the JSON run record here")
    p.add_argument("--run-id", help="run id (default: pipeline name, time and a random suffix)")
    p.add_argument("--quiet", "-q", action="store_true", help="do not relay the tasks' output")
    p.add_argument(
        "--no-perf",
        action="store_true",
        help="do not sample the tasks' perf counters and NUMA locality",
    )
    p.add_argument("--json", action="store_true", help="print the run record instead of a table")
    p.add_argument(
        "--cells",
        action="store_true",
        help="run every task in its own cgroup v2 cell (what it forks stays on its CPUs)",
    )
    add_cgroup_root(p)
    dashboard_options.add_arguments(p, "the run, live while it runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_pipeline(args.pipeline)
    dashboard, dashboard_token = dashboard_options.from_args(args)
    options = RunOptions(
        socket_path=args.socket or default_socket.found(),
        memory=args.memory,
        workdir=args.pipeline.resolve().parent,
        prom_file=args.prom_file,
        record_file=args.record,
        log=(lambda line: None) if args.quiet else (lambda line: print(line, flush=True)),
        perf=not args.no_perf,
        cells=args.cells,
        cgroups=CgroupTree(args.cgroup_root),
        dashboard=dashboard,
        dashboard_token=dashboard_token,
    )
    try:
        record = trio.run(run_pipeline, spec, options, args.run_id)
    except BaseExceptionGroup as group:
        cause = _root_cause(group)
        if not isinstance(cause, (PlasmaError, OSError)):
            raise
        print(f"plasma-coord dag run: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(record, sys.stdout, indent=2)
        print()
    else:
        print(summary(record))
    return EXIT_STATUS.get(record["status"], 1)


def _root_cause(group: BaseExceptionGroup) -> BaseException:
    """The first leaf exception of a (nested) trio exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
