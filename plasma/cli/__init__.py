"""The ``plasma-coord`` command: ``serve | topology | place | run | dag run | stats | hugepages``.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed namespace, returning an exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from plasma.errors import PlasmaError

_SUBCOMMAND_MODULES = (
    "plasma.cli.serve",
    "plasma.cli.topology",
    "plasma.cli.dag",
    "plasma.cli.stats",
    "plasma.cli.hugepages",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plasma-coord",
        description="NUMA-aware shared-memory object store and task coordinator.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # subcommand not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PlasmaError as exc:
        print(f"plasma-coord: error [{exc.code}]: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # bad sizes, unreadable sysfs, socket in use...
        print(f"plasma-coord: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
