"""``python -m bench.chaos {fuzz,kill,soak,fds,all} [--seconds S] [--seed N] [--json OUT]``
(soak: ``[--memory SIZE] [--spill] [--moves]``).

Prints each subcommand's figures and every broken invariant; exits 1 if any broke.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.chaos import fds, fuzz, kill, soak
from bench.chaos.harness import Deadline, Outcome

Run = Callable[[float, int, Path], Outcome]
COMMANDS: dict[str, Run] = {"fuzz": fuzz.run, "kill": kill.run, "soak": soak.run, "fds": fds.run}
DEFAULT_SECONDS = {"fuzz": 20.0, "kill": 20.0, "soak": 60.0, "fds": 10.0, "all": 60.0}
# ``all``: fds first (a few seconds), then these shares of the time, soak the rest
SHARES = {"fuzz": 0.25, "kill": 0.25}
SOAK_OVERHEAD = 4.0  # seconds soak takes beyond its load: start, last reports, books, stop
MIN_SOAK = 5.0


def run_one(name: str, run: Run, seconds: float, seed: int, tmp: Path) -> Outcome:
    """Run a subcommand in its own directory; a harness crash is a failure, not an exit."""
    workdir = tmp / name
    workdir.mkdir()
    try:
        outcome = run(seconds, seed, workdir)
    except Exception as exc:
        outcome = Outcome(name)
        outcome.fail(f"{name}: the harness failed: {exc!r}")
        outcome.figures["traceback"] = traceback.format_exc()
    for line in outcome.lines:
        print(line)
    for failure in outcome.failures:
        print(f"  FAIL {failure}")
    sys.stdout.flush()
    return outcome


def run_all(seconds: float, seed: int, tmp: Path, memory: str) -> list[Outcome]:
    """Every subcommand within ``seconds`` in all."""
    deadline = Deadline(seconds)
    outcomes = [run_one("fds", fds.run, 10.0, seed, tmp)]
    for name, share in SHARES.items():
        outcomes.append(run_one(name, COMMANDS[name], seconds * share, seed, tmp))
    load = max(MIN_SOAK, deadline.left() - SOAK_OVERHEAD)
    outcomes.append(run_one("soak", _soak(memory), load, seed, tmp))
    return outcomes


def _soak(memory: str, spill: bool = False, moves: bool = False) -> Run:
    return lambda seconds, seed, workdir: soak.run(seconds, seed, workdir, memory, spill, moves)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description="fault injection against plasma-coord"
    )
    parser.add_argument("command", choices=[*COMMANDS, "all"])
    parser.add_argument(
        "--seconds",
        type=float,
        help="time budget (defaults: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_SECONDS.items())
        + "; soak: of load)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    parser.add_argument("--json", type=Path, help="write every figure (and soak's series) here")
    parser.add_argument("--memory", default="128MiB", help="soak's store size (default 128MiB)")
    parser.add_argument(
        "--spill", action="store_true", help="soak a store that spills to disk (--spill-dir)"
    )
    parser.add_argument(
        "--moves",
        action="store_true",
        help="soak a fake two-node store while objects are migrated and replicated",
    )
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else DEFAULT_SECONDS[args.command]
    started = time.monotonic()
    print(f"chaos {args.command}: {seconds:g} s, seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="plasma-chaos-") as tmp:
        if args.command == "all":
            outcomes = run_all(seconds, args.seed, Path(tmp), args.memory)
        else:
            run = (
                _soak(args.memory, args.spill, args.moves)
                if args.command == "soak"
                else COMMANDS[args.command]
            )
            outcomes = [run_one(args.command, run, seconds, args.seed, Path(tmp))]
    failures = [f for o in outcomes for f in o.failures]
    elapsed = time.monotonic() - started
    if args.json:
        report = {
            "command": args.command,
            "seconds": seconds,
            "seed": args.seed,
            "elapsed": round(elapsed, 1),
            "ok": not failures,
            "results": {o.name: o.to_json() for o in outcomes},
        }
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    broken = ", ".join(f"{o.name} {len(o.failures)}" for o in outcomes)
    verdict = "every invariant held" if not failures else f"broken invariants: {broken}"
    print(f"chaos {args.command}: {verdict} ({elapsed:.1f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
