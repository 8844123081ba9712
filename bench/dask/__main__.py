"""``python -m bench.dask [--quick]``: a same-host Dask workload, plain distributed vs plasma.dask.

Four single-threaded worker processes of one host (``LocalCluster``, no memory limit, so
neither side spills) run the same graphs on a float64 matrix of N x N made in row strips and
persisted (untimed): ``pairs``, ``np.vdot`` of every pair of strips (each strip is read by
tasks on every worker: an all-to-all of large blocks, as in a Gram matrix or pairwise
distances); ``rechunk``, ``y = x.rechunk(column strips)`` (every output strip takes a piece
of every input strip) then ``(y + y.T).sum(axis=0)`` (which rechunks again to blocks).
Measured, side by side:

- ``wall``: seconds of the graph, after the persist (each figure is the median of
  ``--repeat`` runs, each on a matrix of its own seed);
- ``sent``: bytes the workers' comms wrote for transfers (``transfer_outgoing_log``'s
  ``compressed``), and ``moved``: the size of the keys transferred (its ``total``);
- ``peak``: the peak, over the timed part, of the memory holding data on the host: the
  private memory (``RssAnon``) of the four workers plus, with plasma.dask, the bytes in use in
  the coordinator's store (its segments are pre-faulted, so host-wide free memory would count
  the whole store from the start), sampled every 20 ms; ``over idle``: the same less what
  the four workers held idle before any data (interpreters, dask itself).

The results of both sides must be equal. Prints a table and, with ``--json PATH``, writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

MIB = 1 << 20


def _rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakSampler:
    """Samples ``measure()`` every ``interval`` seconds in a thread; ``peak`` is the largest."""

    def __init__(self, measure: Callable[[], int], interval: float = 0.02) -> None:
        self._measure, self._interval = measure, interval
        self._stop = threading.Event()
        self.peak = 0
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
def coordinator(memory: int) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        path = os.path.join(tmp, "plasma.sock")
        argv = [sys.executable, "-m", "plasma", "serve", "--socket", path, "--memory", str(memory)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if not proc.stdout.readline().startswith("ready"):
            proc.kill()
            raise RuntimeError("the coordinator did not start")
        try:
            yield path
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def _pairs(x: Any) -> Any:
    """Every pair of row strips of ``x``, each reduced to a number: all-to-all reads."""
    import dask

    blocks = x.to_delayed().ravel()
    pairs = [
        dask.delayed(np.vdot)(blocks[i], blocks[j])
        for i in range(len(blocks))
        for j in range(i, len(blocks))
    ]
    return dask.delayed(sum)(pairs)


def _rechunk(x: Any) -> Any:
    """Row strips to column strips, plus the transpose (which rechunks again to blocks)."""
    n = x.shape[0]
    y = x.rechunk((x.chunks[1][0], n), method="tasks")
    return (y + y.T).sum(axis=0)


WORKLOADS = {"pairs": _pairs, "rechunk": _rechunk}


def run_case(
    workload: str, n: int, strip: int, *, socket: str | None, repeat: int
) -> dict[str, Any]:
    """One side: a fresh 4-worker cluster (with plasma.dask when ``socket`` is given)."""
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    import plasma
    from plasma.dask import PlasmaPlugin

    with (
        LocalCluster(
            n_workers=4, threads_per_worker=1, memory_limit=0, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        if socket is not None:
            client.register_plugin(PlasmaPlugin(socket))
        pids = list(client.run(os.getpid).values())
        store = plasma.connect(socket) if socket is not None else None

        def held() -> int:
            used = store.stats()["used"] if store is not None else 0
            return used + sum(_rss_anon(pid) for pid in pids)

        idle = held()  # the four idle workers (interpreters, dask), before any data
        runs, result = [], None
        for seed in range(repeat):  # a new seed each time: new keys, nothing left to reuse
            x = da.random.default_rng(seed).random((n, n), chunks=(strip, n)).persist()
            wait(x)
            client.run(lambda dask_worker: dask_worker.transfer_outgoing_log.clear())
            with PeakSampler(held) as sampler:
                start = time.perf_counter()
                result = client.compute(WORKLOADS[workload](x)).result()
                wall = time.perf_counter() - start
            logs = client.run(
                lambda dask_worker: [
                    (e["total"], e["compressed"]) for e in dask_worker.transfer_outgoing_log
                ]
            )
            entries = [e for log in logs.values() for e in log]
            runs.append(
                {
                    "wall": wall,
                    "peak": sampler.peak,
                    "peak_data": sampler.peak - idle,
                    "moved": sum(t for t, _ in entries),
                    "sent": sum(c for _, c in entries),
                    "transfers": len(entries),
                }
            )
            del x
            _wait_empty(client)
        if store is not None:
            store.close()
    report: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    report["result"] = result
    report["runs"] = runs
    return report


def _wait_empty(client: Any, timeout: float = 60.0) -> None:
    """Until the workers dropped every key (the next run starts from the same memory)."""
    deadline = time.monotonic() + timeout
    while any(client.run(lambda dask_worker: len(dask_worker.data)).values()):
        if time.monotonic() > deadline:
            raise RuntimeError("the workers still hold keys of the previous run")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dask", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 128 MiB matrix, 1 repeat")
    parser.add_argument("--repeat", type=int, help="runs per side (default: 3, quick 1)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--workloads", default="pairs,rechunk", help="comma-separated: pairs, rechunk"
    )
    args = parser.parse_args(argv)
    n, strip = (4096, 512) if args.quick else (8192, 1024)
    repeat = args.repeat or (1 if args.quick else 3)
    matrix = n * n * 8
    report: dict[str, Any] = {"n": n, "strip": strip}
    for workload in args.workloads.split(","):
        plain = run_case(workload, n, strip, socket=None, repeat=repeat)
        with coordinator(max(4 * matrix, 256 * MIB)) as socket:
            shared = run_case(workload, n, strip, socket=socket, repeat=repeat)
        if not np.allclose(plain.pop("result"), shared.pop("result")):
            print(f"{workload}: the two sides computed different results", file=sys.stderr)
            return 1
        report[workload] = {"plain": plain, "plasma.dask": shared}
        print_table(workload, n, strip, plain, shared)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def print_table(
    workload: str, n: int, strip: int, plain: dict[str, Any], shared: dict[str, Any]
) -> None:
    matrix = n * n * 8
    print(
        f"{workload}: matrix {n} x {n} float64 ({matrix // MIB} MiB) in strips of {strip} "
        "rows, 4 workers"
    )
    print(f"{'':14}{'plain':>12}{'plasma.dask':>14}{'ratio':>9}")
    rows = [
        ("wall (s)", "wall", 1.0, "{:.2f}"),
        ("sent (MiB)", "sent", MIB, "{:.1f}"),
        ("moved (MiB)", "moved", MIB, "{:.1f}"),
        ("peak (MiB)", "peak", MIB, "{:.0f}"),
        ("  over idle", "peak_data", MIB, "{:.0f}"),
    ]
    for label, key, unit, fmt in rows:
        a, b = plain[key] / unit, shared[key] / unit
        ratio = f"{b / a:.2f}x" if a else "-"
        print(f"{label:14}{fmt.format(a):>12}{fmt.format(b):>14}{ratio:>9}")


if __name__ == "__main__":
    sys.exit(main())
