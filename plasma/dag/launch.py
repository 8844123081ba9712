"""Start one DAG task pinned: ``python -m plasma.dag.launch --cpus 0,1 [--membind 0] TARGET``.

TARGET is ``--call module:function`` (run in this process with the task context) or
``-- argv...`` (exec'd, inheriting the CPU affinity and the memory policy). The runner has
already chosen the CPU set; this only applies it, in the task's own process, before any
task code runs. Exit status 126 means the pinning failed, 127 that the command was not found.
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
    parser.add_argument("argv", nargs="*", help="command to exec (after --)")
    args = parser.parse_args(argv)
    if (args.call is None) == (not args.argv):
        parser.error("give exactly one of --call or a command after --")
    try:
        pin(args.cpus, args.membind)
    except (PlasmaError, OSError) as exc:
        print(f"plasma.dag.launch: cannot pin the task: {exc}", file=sys.stderr)
        return SETUP_FAILED
    if args.call is not None:
        try:
            return run_call(args.call)
        except Exception:
            traceback.print_exc()
            return 1
    sys.stdout.flush()
    try:
        os.execvp(args.argv[0], args.argv)
    except OSError as exc:
        print(f"plasma.dag.launch: cannot run {args.argv[0]!r}: {exc.strerror}", file=sys.stderr)
    return NOT_FOUND


if __name__ == "__main__":
    sys.exit(main())
