"""A one-minute look at plasma-coord alone: ``python -m bench.quick [--n 20000]``.

Starts its own coordinator (``python -m plasma serve``) and prints create+seal ops/s of 64-byte
objects through three paths (create + seal RPCs, the ``create_and_seal`` arena path, batched
``create_and_seal_many``) and the p50/p99 latency of ``get`` of a sealed object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import plasma
from bench.peers.base import stop_process, wait_for_path
from bench.peers.plasma_coord import SERVE_COMMAND

SIZE = 64
BATCH = 1000


def _rate(n: int, body: Callable[[list[plasma.ObjectID]], None]) -> float:
    ids = [plasma.ObjectID.from_random() for _ in range(n)]
    t0 = time.perf_counter()
    body(ids)
    return n / (time.perf_counter() - t0)


def measure(client: plasma.Client, n: int) -> dict[str, float]:
    """Ops/s of the three create paths and get latency percentiles (µs)."""
    data = bytes(SIZE)

    def rpc(ids: list[plasma.ObjectID]) -> None:
        for oid in ids:
            client.create(oid, SIZE)[:] = data
            client.seal(oid)
        client.flush()

    def arena(ids: list[plasma.ObjectID]) -> None:
        for oid in ids:
            client.create_and_seal(oid, data)
        client.flush()

    def batched(ids: list[plasma.ObjectID]) -> None:
        for i in range(0, len(ids), BATCH):
            client.create_and_seal_many([(oid, data, b"") for oid in ids[i : i + BATCH]])
        client.flush()

    results = {
        "create_seal_rpc_ops_per_s": _rate(n, rpc),
        "create_and_seal_ops_per_s": _rate(n, arena),
        "create_and_seal_many_ops_per_s": _rate(n, batched),
    }
    oid = plasma.ObjectID.from_random()
    client.create_and_seal(oid, data)
    samples = np.empty(min(n, 5000))
    for i in range(len(samples)):
        t0 = time.perf_counter_ns()
        view = client.get([oid])[0]
        view[0]
        del view
        samples[i] = time.perf_counter_ns() - t0
    results["get_p50_us"] = float(np.percentile(samples, 50)) / 1e3
    results["get_p99_us"] = float(np.percentile(samples, 99)) / 1e3
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quick", description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="objects per create path")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    memory = max(256 << 20, 4 * args.n * 128)
    with tempfile.TemporaryDirectory(prefix="plasma-quick-") as tmp:
        socket_path = Path(tmp) / "plasma.sock"
        server = subprocess.Popen(
            [*SERVE_COMMAND, "--socket", str(socket_path), "--memory", str(memory)],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_path(socket_path, server, 30)
            with plasma.connect(str(socket_path), client_name="bench.quick") as client:
                results = measure(client, args.n)
        finally:
            stop_process(server)
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:32s} {value:12,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
