"""Run the benchmark: ``python -m bench.run [--quick] [--peers a,b] [--scenarios x,y]``.

Installs each peer's venv if needed, drives one worker process per peer, repeats every case
and keeps medians, measures the memcpy baselines of ``put_large`` and ``put_first`` in this
process (see :mod:`bench.memcpy`), then writes results.json, results.md and PNG plots into
``bench/results``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bench import memcpy, report, scenarios
from bench.install import PEERS_DIR, InstallError, peer_python
from bench.peers import PEERS, PeerSpec

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
README = ROOT / "README.md"  # its table is refreshed by runs into RESULTS_DIR
REQUEST_TIMEOUT = 900.0


class WorkerError(RuntimeError):
    """A worker replied with an error, died, or did not answer in time."""


class Worker:
    """One peer's worker process, spoken to in JSON lines."""

    def __init__(self, python: Path, spec: PeerSpec, log: IO[str]) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [str(python), "-m", spec.module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
            env=env,
            text=True,
        )

    def request(self, timeout: float = REQUEST_TIMEOUT, **message: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise WorkerError(f"worker exited ({self.proc.poll()})") from exc
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise WorkerError("no answer in time" if not ready else f"exited ({self.proc.wait()})")
        reply = json.loads(line)
        if not reply["ok"]:
            raise WorkerError(reply["error"])
        return reply["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request(timeout=60, op="stop")
                self.proc.wait(timeout=30)
            except (WorkerError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.proc.wait()


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def log_dir_for(out: Path) -> Path:
    """Where the worker logs go: ``bench/.peers`` for the default results folder, else the
    ``--out`` folder itself, so that a run into a scratch folder (a test) never truncates the
    logs of a run going on meanwhile."""
    return PEERS_DIR if out.resolve() == RESULTS_DIR else out


Session = tuple[int, tuple[str, ...], list[tuple[str, int]]]


def sessions(peer: str, plan: list[tuple[str, int]], args: argparse.Namespace) -> list[Session]:
    """The worker sessions that run ``peer``'s share of ``plan``: (store bytes, extra serve
    arguments, cases). First the cases of every scenario that shares a store, then one
    session per scenario with a store of its own (``Scenario.own_store``), so earlier
    scenarios do not inflate it."""
    mine = [case for case in plan if scenarios.SCENARIOS[case[0]].runs_on(peer)]
    shared = [c for c in mine if not scenarios.SCENARIOS[c[0]].own_store]
    out: list[Session] = [(args.memory, (), shared)] if shared else []
    for name in dict.fromkeys(n for n, _ in mine if scenarios.SCENARIOS[n].own_store):
        scenario = scenarios.SCENARIOS[name]
        cases = [c for c in mine if c[0] == name]
        memory = args.memory
        if scenario.memory is not None:
            wanted = scenario.memory(peer, max(param for _, param in cases))
            memory = wanted if scenario.exact_memory else max(memory, wanted)
        out.append((memory, scenario.serve_args, cases))
    return out


def run_peer(
    spec: PeerSpec, python: Path, plan: list[tuple[str, int]], args: argparse.Namespace
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run every case of ``plan`` that ``spec`` takes part in; (peer info, cases)."""
    log_dir = log_dir_for(args.out)
    log_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"status": "ok"}
    cases: list[dict[str, Any]] = []
    with open(log_dir / f"{spec.name}.log", "w") as log:
        for memory, serve_args, session in sessions(spec.name, plan, args):
            try:
                info["facts"] = _run_session(
                    spec, python, session, memory, serve_args, args, log, cases
                )
            except WorkerError as exc:
                return {"status": "failed", "reason": f"start: {exc}"}, cases
    return info, cases


def _run_session(
    spec: PeerSpec,
    python: Path,
    plan: list[tuple[str, int]],
    memory: int,
    serve_args: tuple[str, ...],
    args: argparse.Namespace,
    log: IO[str],
    cases: list[dict[str, Any]],
) -> dict[str, Any]:
    """Start a worker and its store of ``memory`` bytes (``serve_args``: see
    ``Scenario.serve_args``), run ``plan`` into ``cases``; the start facts."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{spec.name}-", dir="/tmp") as workdir:
        worker = Worker(python, spec, log)
        try:
            extra = [arg.format(workdir=workdir) for arg in serve_args]
            facts: dict[str, Any] = worker.request(
                op="start", workdir=workdir, memory=memory, serve_args=extra
            )
            for name, param in plan:
                cases += _run_case(worker, spec.name, name, param, args)
                if worker.proc.poll() is not None:
                    print(f"  {spec.name}: worker died; skipping its remaining cases", flush=True)
                    break
        finally:
            worker.close()
    return facts


def _run_case(
    worker: Worker, peer: str, name: str, param: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The case, and those of the baseline columns its worker measured alongside. Only
    plasma-coord's worker (the repo's venv) measures them: one value per row."""
    case: dict[str, Any] = {"scenario": name, "param": param, "peer": peer}
    t0 = time.monotonic()
    params = {"param": param, "quick": args.quick, "baselines": peer == report.BASELINE}
    repeats = 1 if name == "memory" else args.repeats
    try:
        runs = [worker.request(op="run", scenario=name, params=params) for _ in range(repeats)]
        case |= {"metrics": medians(runs), "runs": runs}
        shown = ", ".join(f"{k}={report.format_value(v)}" for k, v in case["metrics"].items())
    except WorkerError as exc:
        case["error"] = str(exc)
        shown = f"error: {exc}"
    print(f"  {peer} {name} {param}: {shown} [{time.monotonic() - t0:.1f} s]", flush=True)
    return split_columns(case)


def split_columns(case: dict[str, Any]) -> list[dict[str, Any]]:
    """``case`` without the metrics named ``COLUMN:METRIC`` (a baseline measured in the same
    worker, e.g. rpc's ``echo:p50_us``), then one case per such column; the raw runs stay
    with ``case``."""
    own: dict[str, float] = {}
    columns: dict[str, dict[str, float]] = {}
    for key, value in case.get("metrics", {}).items():
        column, _, metric = key.rpartition(":")
        if column:
            columns.setdefault(column, {})[metric] = value
        else:
            own[key] = value
    if not columns:
        return [case]
    measured_by = {
        "scenario": case["scenario"],
        "param": case["param"],
        "measured_by": case["peer"],
    }
    return [case | {"metrics": own}] + [
        measured_by | {"peer": column, "metrics": metrics} for column, metrics in columns.items()
    ]


def baseline_cases(plan: list[tuple[str, int]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The memcpy columns of ``put_large`` and ``put_first`` (``Scenario.memcpy_baselines``,
    see :mod:`bench.memcpy`), measured here; every repeat measures each column in turn."""
    wanted = [(n, p) for n, p in plan if scenarios.SCENARIOS[n].memcpy_baselines]
    if not wanted:
        return []
    cases = []
    with memcpy.ThreadedCopy(memcpy.threads()) as copier:
        measures = memcpy.columns(copier)
        for name, size in wanted:
            runs: dict[str, list[dict[str, float]]] = {column: [] for column in measures}
            for _ in range(args.repeats):
                for column, measure in measures.items():
                    runs[column].append(measure(size, args.quick))
            for column, column_runs in runs.items():
                metrics = medians(column_runs)
                case = {"scenario": name, "param": size, "peer": column}
                cases.append(case | {"metrics": metrics, "runs": column_runs})
                print(f"  {column} {size}: {report.format_value(metrics['GB_per_s'])} GB/s")
    return cases


def _names(text: str | None, known: Sequence[str], what: str) -> list[str]:
    if text is None:
        return list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--peers", help=f"comma-separated subset of {', '.join(PEERS)}")
    parser.add_argument("--scenarios", help=f"subset of {', '.join(scenarios.SCENARIOS)}")
    parser.add_argument("--repeats", type=int, help="repeats per case (default 3, quick 1)")
    parser.add_argument("--memory", type=int, default=1 << 30, help="store bytes per peer")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--reinstall", action="store_true", help="recreate peer venvs")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    args.peer_names = _names(args.peers, list(PEERS), "peer")
    args.scenario_names = _names(args.scenarios, list(scenarios.SCENARIOS), "scenario")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = [
        (name, param)
        for name in args.scenario_names
        for param in scenarios.SCENARIOS[name].params(args.quick)
    ]
    results: dict[str, Any] = {
        "meta": {
            "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}",
            "quick": args.quick,
            "repeats": args.repeats,
            "memcpy_threads": memcpy.threads(),
        },
        "peers": {},
        "cases": [],
    }
    started = time.monotonic()
    print(f"[bench] {len(plan)} cases x {args.repeats} repeat(s) for {', '.join(args.peer_names)}")
    results["cases"] += baseline_cases(plan, args)
    for name in args.peer_names:
        spec = PEERS[name]
        try:
            python = peer_python(spec, reinstall=args.reinstall)
        except InstallError as exc:
            print(f"[bench] {name}: missing ({exc})", flush=True)
            results["peers"][name] = {"status": "missing", "reason": str(exc)}
            continue
        print(f"[bench] {name} ({python})", flush=True)
        info, cases = run_peer(spec, python, plan, args)
        results["peers"][name] = info
        results["cases"] += cases
    readme = README if args.out.resolve() == RESULTS_DIR else None
    written = report.write(results, args.out, with_plots=not args.no_plots, readme=readme)
    print(report.markdown(results))
    print(f"[bench] done in {time.monotonic() - started:.0f} s: {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
