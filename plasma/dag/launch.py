"""Start one DAG task pinned: ``python -m plasma.dag.launch --cpus 0,1 [--membind 0] TARGET``.

With ``--cell NAME`` (and ``--cgroup-root``) it first joins that cgroup v2 cell, so the task
and everything it forks stay inside the cell's cpuset.

TARGET is ``--call module:function`` (run in this process with the task context) or
``-- argv...`` (exec'd, inheriting the CPU affinity and the memory policy). The runner has
already chosen the CPU set; this only applies it, in the task's own process, before any
task code runs. Exit status 126 means joining the cell or pinning failed (or the runner
went away before saying go), 127 that the command was not found.

With ``--control FD`` (a socket the runner keeps the other end of) the launcher waits for the
runner's :data:`GO` before doing anything, so the coordinator's perf counters, opened when the
runner registers the process, see the whole task. A ``--call`` task also reports its end
(:data:`END`) and waits for the runner's :data:`ACK`: the final sample is then taken while the
process and its memory still exist, so it includes NUMA locality.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from plasma.errors import PlasmaError

SETUP_FAILED = 126
NOT_FOUND = 127
GO = b"g"  # runner -> launcher: the process is registered, start the task
END = b"e"  # launcher -> runner: the call returned, take the final sample now
ACK = b"a"  # runner -> launcher: sampled, exit


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def pin(cpus: list[int], membind: list[int] | None) -> None:
    """Pin the calling thread to ``cpus`` and bind its memory to ``membind`` nodes."""
    from plasma.linux.affinity import set_affinity

    set_affinity(cpus)
    if membind:
        from plasma.linux.numa import MPOL_BIND, set_mempolicy

        set_mempolicy(MPOL_BIND, membind)


def join_cell(name: str, root: str | None) -> None:
    """Move this process into cell ``name`` under ``root``: what it forks stays inside."""
    from plasma.linux.cgroup import DEFAULT_ROOT, CgroupTree

    CgroupTree(root or DEFAULT_ROOT).attach(name, os.getpid())


def await_go(control: int) -> bool:
    """Block until the runner says go; False if it went away (closed its end) first."""
    try:
        return os.read(control, 1) == GO
    except OSError:
        return False


def report_end(control: int) -> None:
    """Tell the runner the task is about to exit and wait until it has taken its sample."""
    try:
        os.write(control, END)
        os.read(control, 1)  # ACK, or EOF if the runner is gone: either way, exit
    except OSError:
        pass


def run_call(target: str) -> int:
    """Import ``module:function``, call it with the task context, put the dict it returns."""
    import plasma.task

    module_name, _, func_name = target.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        print(f"plasma.dag.launch: cannot load {target!r}: {exc}", file=sys.stderr)
        return NOT_FOUND
    ctx = plasma.task.current()
    try:
        result = func(ctx)
        if result is not None:
            if not isinstance(result, dict):
                raise TypeError(
                    f"{target} returned {type(result).__name__}; a task returns a dict of "
                    "outputs or None"
                )
            for name, value in result.items():
                ctx.output(name, value)
    finally:
        ctx.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plasma.dag.launch", description=__doc__)
    parser.add_argument("--cpus", type=_int_list, required=True, help="CPU list, e.g. 0,1")
    parser.add_argument("--membind", type=_int_list, default=None, help="memory nodes, e.g. 0")
    parser.add_argument("--call", default=None, help="module:function to run in-process")
    parser.add_argument(
        "--control", type=int, default=None, help="fd of the runner's control socket"
    )
    parser.add_argument("--cell", default=None, help="join this cgroup v2 cell first")
    parser.add_argument("--cgroup-root", default=None, help="the directory holding the cell")
    parser.add_argument("argv", nargs="*", help="command to exec (after --)")
    args = parser.parse_args(argv)
    if (args.call is None) == (not args.argv):
        parser.error("give exactly one of --call or a command after --")
    control: int | None = args.control
    if control is not None:
        try:
            os.set_inheritable(control, False)  # neither exec'd commands nor children get it
        except OSError as exc:
            parser.error(f"--control {control}: not an open file descriptor ({exc.strerror})")
        if not await_go(control):
            print("plasma.dag.launch: the runner ended before the task started", file=sys.stderr)
            return SETUP_FAILED
    try:
        if args.cell is not None:
            join_cell(args.cell, args.cgroup_root)
        pin(args.cpus, args.membind)
    except (PlasmaError, OSError) as exc:
        print(f"plasma.dag.launch: cannot confine the task: {exc}", file=sys.stderr)
        return SETUP_FAILED
    if args.call is not None:
        try:
            return run_call(args.call)
        except Exception:
            traceback.print_exc()
            return 1
        finally:
            sys.stdout.flush()
            if control is not None:
                report_end(control)
    sys.stdout.flush()
    try:
        os.execvp(args.argv[0], args.argv)
    except OSError as exc:
        print(f"plasma.dag.launch: cannot run {args.argv[0]!r}: {exc.strerror}", file=sys.stderr)
    return NOT_FOUND


if __name__ == "__main__":
    sys.exit(main())
