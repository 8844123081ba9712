"""Read bandwidth of an object from each NUMA node: local, remote, interleaved, migrated,
replicated.

``python -m bench.numa_read [--size MiB] [--repeats N]`` on a multi-node host, or inside the
emulated VM: ``../shared/numa-vm --nodes 4 -- python -m bench.numa_read``. It starts its own
coordinator, puts one array on node 0 and one interleaved over every node, then for each
node pins itself there and times full reads (``numpy.sum`` of every byte) of: the node-0
array (local on node 0, remote elsewhere), the interleaved array, a copy migrated to the
reader's node, and one replicated there (the reader gets the replica). Prints a Markdown
table (GB/s, medians) and its JSON.

Under QEMU's emulation (TCG) every node's memory is the same host memory: the figures there
only show that the mechanism works, not what NUMA distances cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import plasma
from plasma.topology import Topology

MiB = 1 << 20


def read_gbps(array: np.ndarray, repeats: int) -> float:
    """GB/s of ``repeats`` full reads, median."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        array.sum()
        times.append(time.perf_counter() - t0)
    return array.nbytes / statistics.median(times) / 1e9


def measure(socket_path: str, nodes: list[int], size: int, repeats: int) -> dict[str, dict]:
    topology = Topology.current()
    rows: dict[str, dict] = {}
    with plasma.connect(socket_path, "bench.numa_read") as client:
        data = np.ones(size // 8)
        # (held for the whole run: nothing may evict them)
        home = client.get_object(client.put(data, node=nodes[0]), timeout=60)
        spread = client.get_object(client.put(data, node="interleave"), timeout=60)
        for node in nodes:
            os.sched_setaffinity(0, topology.nodes[node].cpus)
            oid = client.put(data, node=nodes[0])
            client.migrate(oid, node)
            moved = client.get_object(oid, timeout=60)
            copied = client.put(data, node=nodes[0], replicas=[node])
            replica = client.get_object(copied, timeout=60)
            views = {"node 0": home, "interleaved": spread, "migrated": moved}
            views["replicated"] = replica
            rows[str(node)] = {name: read_gbps(view, repeats) for name, view in views.items()}
            del moved, replica, views
            client.delete([oid, copied])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.numa_read", description=__doc__)
    parser.add_argument("--size", type=int, default=64, help="MiB per object (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="reads per figure (median)")
    args = parser.parse_args(argv)
    nodes = sorted(Topology.current().nodes)
    size = args.size * MiB
    memory = ",".join(f"{n}={10 * args.size}MiB" for n in nodes)
    with tempfile.TemporaryDirectory() as tmp:
        socket_path = str(Path(tmp, "bench.sock"))
        coord = subprocess.Popen(
            [sys.executable, "-m", "plasma", "serve", "-s", socket_path, "-m", memory],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert coord.stdout is not None
            if not coord.stdout.readline().startswith("ready"):
                raise SystemExit("the coordinator did not start")
            rows = measure(socket_path, nodes, size, args.repeats)
        finally:
            coord.terminate()
            coord.wait(30)
    print(f"read GB/s of a {args.size} MiB object, by reader node ({len(nodes)} nodes)")
    print("| reader node | object on node 0 | interleaved | migrated to it | replicated to it |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for node, row in rows.items():
        kinds = ("node 0", "interleaved", "migrated", "replicated")
        figures = " | ".join(f"{row[k]:.2f}" for k in kinds)
        print(f"| {node} | {figures} |")
    print("JSON " + json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
