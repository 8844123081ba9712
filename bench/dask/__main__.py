"""``python -m bench.dask``: Dask workloads on one host, plain distributed vs plasma.dask.

Two ``LocalCluster`` s of ``--workers`` single-threaded worker processes (no memory limit, so
neither side spills) run side by side, one plain, one with ``PlasmaPlugin`` on a coordinator
started for the run; each repeat runs every workload once on each, the two in turn (plain
first on even repeats, plasma.dask first on odd ones), so that both see the same machine
(it is shared: ratios of runs next to each other say more than absolute times). The
workloads (``bench/dask/workloads.py``): dask.array graphs on a matrix persisted on the
workers before the timed part (a new seed each repeat), and dask.dataframe graphs that
generate their time series inside the timed graph. Measured for each run:

- ``wall``: seconds of the graph (``Client.compute(...).result()``);
- ``sent``: bytes the workers wrote to their TCP comms meanwhile (every comm write is
  counted, ``bench/dask/comm_bytes.py``: transfers, P2P shuffle shards, messages to the
  scheduler);
- ``peak``: the peak, over the timed part, of the memory holding data on the host: the
  private memory (``RssAnon``) of the workers plus, with plasma.dask, the bytes in use in the
  store, sampled every 20 ms (the store's every 100 ms: a ``stats`` call costs it CPU);
  ``over idle``: the same less what the workers held idle before the first run
  (interpreters, dask); ``store held``: the store's pre-faulted
  segments at the peak, which its free room is part of (the store keeps them for the next
  objects, up to its ``--memory``);
- ``cpu``: CPU seconds the workers and the coordinator used (``cpu_store``: the
  coordinator's part, which includes answering the sampler);
- ``moves``: with plasma.dask, how many results were moved into the store, and ``moved``
  their bytes (``PlasmaData.moves``, ``moved_bytes``).

Reported: the median of each over the repeats, and per workload the medians of the ratios
of the two sides, each the geometric mean of two repeats with opposite orders (whichever
side runs second can be faster for it: see :func:`paired`): ``speedup`` = plain wall /
plasma.dask wall (> 1: plasma.dask faster; with the lowest and highest), the CPU ratio
plasma.dask / plain and ``peak ratio`` = plasma.dask peak over idle / plain's (< 1: less
memory). The results of both
sides must be equal. ``--calibrate`` runs both sides plain (what noise alone does to the
ratios); ``--json PATH`` writes every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from bench.dask import comm_bytes
from bench.dask.workloads import FULL, MIB, QUICK, WORKLOADS, Size, Workload, same
from plasma.dask._store import DEFAULT_THRESHOLD

SIDES = ("plain", "plasma.dask")
STORE_INTERVAL = 0.1  # seconds between two looks at the store's memory (private: 0.02 s)


def _proc_status(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakSampler:
    """Samples ``measure()`` every ``interval`` seconds in a thread; ``peak`` is the
    sample whose first element is the largest."""

    def __init__(self, measure: Callable[[], tuple[int, int]], interval: float = 0.02) -> None:
        self._measure, self._interval = measure, interval
        self._stop = threading.Event()
        self.peak = (0, 0)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._measure())
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._measure())


@contextmanager
def coordinator(memory: int) -> Iterator[tuple[str, int]]:
    """A coordinator of ``memory`` bytes for the run: (socket path, pid)."""
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        path = os.path.join(tmp, "plasma.sock")
        argv = [sys.executable, "-m", "plasma", "serve", "--socket", path, "--memory", str(memory)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if not proc.stdout.readline().startswith("ready"):
            proc.kill()
            raise RuntimeError("the coordinator did not start")
        try:
            yield path, proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=60)


@dataclass
class Side:
    """One cluster: plain, or with plasma.dask on the coordinator at ``socket``."""

    name: str
    client: Any  # distributed.Client
    pids: list[int]  # the workers
    store: Any = None  # plasma.Client of the coordinator, plasma.dask only
    coordinator_pid: int | None = None

    def __post_init__(self) -> None:
        self.client.run(comm_bytes.install)
        self._store_asked, self._store_held = float("-inf"), (0, 0)
        self.idle = self.held()[0]

    def held(self) -> tuple[int, int]:
        """(workers' private memory + the store's bytes in use, the store's segments); the
        store's figures are asked for at most every 0.1 s (a stats call costs its CPU)."""
        private = sum(_proc_status(pid, "RssAnon:") for pid in self.pids)
        if self.store is None:
            return (private, 0)
        now = time.monotonic()
        if now - self._store_asked >= STORE_INTERVAL:
            nodes = self.store.stats()["nodes"].values()
            self._store_held = (
                sum(n["used"] for n in nodes),
                sum(n["segment_bytes"] for n in nodes),
            )
            self._store_asked = now
        used, segments = self._store_held
        return (private + used, segments)

    def cpu(self) -> tuple[float, float]:
        """CPU seconds of the workers, and of the coordinator (plasma.dask only)."""
        store = _cpu_seconds(self.coordinator_pid) if self.coordinator_pid else 0.0
        return sum(_cpu_seconds(pid) for pid in self.pids), store

    def sent(self) -> int:
        return sum(self.client.run(comm_bytes.written).values())

    def moves(self) -> tuple[int, int]:
        """Results the workers moved into the store so far, and their bytes."""
        if self.store is None:
            return (0, 0)
        moved = self.client.run(
            lambda dask_worker: (dask_worker.data.moves, dask_worker.data.moved_bytes)
        )
        return (sum(m for m, _ in moved.values()), sum(b for _, b in moved.values()))

    def run(self, workload: Workload, size: Size, seed: int) -> tuple[dict[str, float], Any]:
        """One timed run of ``workload``: its measures and its result."""
        from distributed import wait

        with self.client.as_current():  # this side's client for dask's own choices too
            data = workload.prepare(size, seed)
            if workload.kind == "array":
                data = self.client.persist(data)
                wait(data)
            graph = workload.graph(data)
            sent, cpu, moves = self.sent(), self.cpu(), self.moves()
            with PeakSampler(self.held) as sampler:
                start = time.perf_counter()
                result = self.client.compute(graph).result()
                wall = time.perf_counter() - start
        measures = {
            "wall": wall,
            "sent": self.sent() - sent,
            "cpu": sum(self.cpu()) - sum(cpu),
            "cpu_store": self.cpu()[1] - cpu[1],
            "moves": self.moves()[0] - moves[0],
            "moved": self.moves()[1] - moves[1],
            "peak": sampler.peak[0],
            "peak_data": sampler.peak[0] - self.idle,
            "store_held": sampler.peak[1],
        }
        del data, graph
        _wait_empty(self.client)
        return measures, result


def _wait_empty(client: Any, timeout: float = 60.0) -> None:
    """Until the workers dropped every key (the next run starts from the same memory)."""
    deadline = time.monotonic() + timeout
    while any(client.run(lambda dask_worker: len(dask_worker.data)).values()):
        if time.monotonic() > deadline:
            raise RuntimeError("the workers still hold keys of the previous run")
        time.sleep(0.05)


@contextmanager
def sides(
    workers: int, store_memory: int, threshold: int, calibrate: bool = False
) -> Iterator[dict[str, Side]]:
    """The two clusters, started side by side for the whole run (``calibrate``: the second
    one plain too, to see what the machine's noise alone makes of the ratios)."""
    from distributed import Client, LocalCluster

    import plasma
    from plasma.dask import PlasmaPlugin

    with ExitStack() as stack:
        if not calibrate:
            socket, coordinator_pid = stack.enter_context(coordinator(store_memory))
        made = {}
        for name in SIDES:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    memory_limit=0,
                    dashboard_address=None,
                )
            )
            client = stack.enter_context(Client(cluster, set_as_default=False))
            pids = list(client.run(os.getpid).values())
            if name == "plain" or calibrate:
                made[name] = Side(name, client, pids)
            else:
                client.register_plugin(PlasmaPlugin(socket, threshold=threshold))
                store = stack.enter_context(plasma.connect(socket))
                made[name] = Side(name, client, pids, store, coordinator_pid)
        yield made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dask",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small inputs, 1 repeat")
    parser.add_argument(
        "--repeat", type=int, help="runs per side: 1 or even (default: 10, quick 1)"
    )
    parser.add_argument("--workers", type=int, default=2, help="workers per side (2)")
    parser.add_argument(
        "--threshold",
        type=int,
        default=DEFAULT_THRESHOLD,
        help=f"PlasmaPlugin's threshold in bytes ({DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="run the plasma.dask side without the plugin: two plain clusters, whose "
        "ratios show what the machine's noise alone does",
    )
    parser.add_argument("--json", help="also write every run to this file")
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, of: {', '.join(WORKLOADS)} (default: all)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # clean up
    names = args.workloads.split(",")
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    size = QUICK if args.quick else FULL
    repeat = args.repeat or (1 if args.quick else 10)
    if repeat != 1 and repeat % 2:
        parser.error("--repeat must be 1 or even: each side runs first in half the repeats")
    store_memory = max(4 * size.n * size.n * 8, 1 << 30)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {n: {s: [] for s in SIDES} for n in names}
    with sides(args.workers, store_memory, args.threshold, args.calibrate) as clusters:
        for r in range(repeat):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            for name in names:
                results = {}
                for side in order:
                    measures, results[side] = clusters[side].run(WORKLOADS[name], size, seed=r)
                    runs[name][side].append(measures)
                if not same(results["plain"], results["plasma.dask"]):
                    print(f"{name}: the two sides computed different results", file=sys.stderr)
                    return 1
                print(f"repeat {r + 1}/{repeat} {name}: " + _line(runs[name]), flush=True)
    report = summarise(runs)
    print()
    if args.calibrate:
        print("calibration: the plasma.dask side ran without the plugin (plain too)")
    print(table(report, size, args.workers, repeat))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"size": size.__dict__, "workers": args.workers, "runs": runs, "report": report},
                f,
                indent=2,
            )
    return 0


def _line(runs: dict[str, list[dict[str, float]]]) -> str:
    plain, shared = runs["plain"][-1], runs["plasma.dask"][-1]
    return (
        f"wall {plain['wall']:.2f} s vs {shared['wall']:.2f} s "
        f"({plain['wall'] / shared['wall']:.2f}x)"
    )


def summarise(runs: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    """Medians per side, and the ratios of the two sides per workload (see :func:`paired`)."""
    report: dict[str, Any] = {}
    for name, by_side in runs.items():
        medians = {
            side: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for side, rs in by_side.items()
        }
        pairs = list(zip(by_side["plain"], by_side["plasma.dask"], strict=True))
        speedups = paired([p["wall"] / s["wall"] for p, s in pairs])
        report[name] = {
            **medians,
            "speedup": statistics.median(speedups),
            "speedups": speedups,
            "cpu_ratio": statistics.median(paired([s["cpu"] / p["cpu"] for p, s in pairs])),
            "peak_ratio": statistics.median(
                paired([s["peak_data"] / max(p["peak_data"], 1) for p, s in pairs])
            ),
        }
    return report


def paired(ratios: list[float]) -> list[float]:
    """The ratios of repeats 2k and 2k + 1 (one with each side first) merged by their
    geometric mean: whichever side runs second in a repeat may be faster for it (on this VM,
    up to 3x on the array graphs between two plain clusters), and the mean of the two
    orders cancels that. One repeat: its ratio as it is."""
    if len(ratios) < 2:
        return ratios
    return [math.sqrt(a * b) for a, b in zip(ratios[0::2], ratios[1::2], strict=False)]


def table(report: dict[str, Any], size: Size, workers: int, repeat: int) -> str:
    """The Markdown table of the report."""
    lines = [
        f"{workers} single-threaded workers; {size.describe_array()}; "
        f"{size.describe_frame()}; medians of {repeat} runs per side"
        + (
            f", ratios of {repeat // 2} pairs of runs (one with each side first)."
            if repeat > 1
            else "."
        ),
        "",
        "| workload | wall plain | wall plasma.dask | speedup | sent plain | sent plasma.dask "
        "| peak over idle plain | plasma.dask (store held) | peak ratio | cpu plain "
        "| cpu plasma.dask | moved |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in report.items():
        plain, shared = r["plain"], r["plasma.dask"]
        lines.append(
            f"| {name} | {plain['wall']:.2f} s | {shared['wall']:.2f} s | "
            f"{r['speedup']:.2f}x ({min(r['speedups']):.2f}-{max(r['speedups']):.2f}) "
            f"| {plain['sent'] / MIB:.1f} MiB | {shared['sent'] / MIB:.1f} MiB"
            f" | {plain['peak_data'] / MIB:.0f} MiB | {shared['peak_data'] / MIB:.0f} MiB "
            f"({shared['store_held'] / MIB:.0f}) | {r['peak_ratio']:.2f}x "
            f"| {plain['cpu']:.1f} s | {shared['cpu']:.1f} s ({r['cpu_ratio']:.2f}x) "
            f"| {shared['moves']:.0f} ({shared['moved'] / MIB:.0f} MiB) |"
        )
    lines.append("")
    lines.extend(f"- {name}: {WORKLOADS[name].describe(size)}" for name in report)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
