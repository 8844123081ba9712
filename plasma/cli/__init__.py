"""The ``plasma-coord`` command (internal subpackage; the CLI itself is the interface).

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed namespace, returning an exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from plasma.errors import PlasmaError

# command -> module that registers it; only the module of the command being run is imported,
# so `plasma-coord serve` does not pay for numpy, pyarrow and the DAG runner.
_COMMANDS = {
    "serve": "plasma.cli.serve",
    "topology": "plasma.cli.topology",
    "place": "plasma.cli.topology",
    "run": "plasma.cli.topology",
    "dag": "plasma.cli.dag",
    "stats": "plasma.cli.stats",
    "memory": "plasma.cli.memory",
    "hugepages": "plasma.cli.hugepages",
    "cell": "plasma.cli.cell",
    "dask-worker": "plasma.cli.dask_worker",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for ``command``, or for every command (for help and unknown commands)."""
    parser = argparse.ArgumentParser(
        prog="plasma-coord",
        description="NUMA-aware shared-memory object store and task coordinator.",
        epilog="Commands that talk to a coordinator find it at --socket, else at "
        "$PLASMA_COORD_SOCKET, else at /tmp/plasma-coord.sock.",
    )
    parser.add_argument("--version", action="version", version=f"plasma-coord {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = (
        [_COMMANDS[command]] if command in _COMMANDS else list(dict.fromkeys(_COMMANDS.values()))
    )
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from plasma import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
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
