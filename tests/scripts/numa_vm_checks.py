"""The in-VM half of tests/test_numa_vm_store.py: run as
``python tests/scripts/numa_vm_checks.py NODES`` inside ``numa-vm --nodes NODES``; prints one
``RESULT {json}`` line for the test to assert on.

Page checks report ``{node: pages}`` counters from move_pages. Everything for one VM boot
happens in this one process (plus the coordinators it starts), since Python is slow there.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import mmap
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STARTED = time.monotonic()

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from plasma.cli import hugepages as hugepages_cli  # noqa: E402
from plasma.client import Client, connect  # noqa: E402
from plasma.errors import PlasmaError  # noqa: E402
from plasma.hugepages import hugepage_counts, reserve_hugepages  # noqa: E402
from plasma.ids import ObjectID  # noqa: E402
from plasma.linux import numa  # noqa: E402
from plasma.placement_report import placement_report  # noqa: E402
from plasma.segments import SegmentPool  # noqa: E402
from plasma.topology import parse_cpulist  # noqa: E402

MiB = 1 << 20
HUGE = 2 * MiB
PAGE = mmap.PAGESIZE
NODE_SYSFS = Path("/sys/devices/system/node")
# `plasma-coord serve` without importing the other subcommands (imports are slow in the VM).
SERVE = """
import argparse, sys
from plasma.cli import serve
parser = argparse.ArgumentParser(prog="plasma-coord")
serve.register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""
KEEP: list[Any] = []  # views whose references must outlive produce()


def page_counts(address: int, length: int, page_size: int) -> dict[str, int]:
    """{node: pages} of a mapped range, negative keys being move_pages errnos."""
    counts = collections.Counter(numa.page_nodes(address, length, page_size))
    return {str(node): n for node, n in sorted(counts.items())}


def start_coordinator(directory: str, name: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    socket_path = os.path.join(directory, name)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "serve", "--socket", socket_path, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    return proc, socket_path


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise RuntimeError(f"coordinator did not start: {line!r} {proc.communicate()[1]}")


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120)


def produce(client: Client, node: int | None, page_size: int, size: int) -> dict[str, Any]:
    """create (and fill) an object on ``node``, plus a large and a small put: the pages per
    node of each and the node list() reports. The client keeps its references, so nothing it
    made can be evicted."""
    oid = ObjectID.from_random()
    view = client.create(oid, size, node=node)
    view[:] = b"\xab" * size
    pages = {"create": page_counts(numa.buffer_address(view), size, page_size)}
    view.release()
    client.seal(oid)
    ids = {"create": oid}
    for kind, count in (("put_large", 256 << 10), ("put_small", 1024)):
        array = np.arange(count, dtype=np.uint32)
        ids[kind] = client.put(array, node=node)
        got = client.get_object(ids[kind])
        pages[kind] = page_counts(got.ctypes.data, got.nbytes, page_size)
        assert np.array_equal(got, array), kind
        KEEP.append(got)
    client.flush()
    listed = client.list()
    return {k: {"pages": pages[k], "listed_node": listed[i]["node"]} for k, i in ids.items()}


def pool_placement(node: int, hugepage_size: int | None) -> list[dict[str, Any]]:
    """placement_report of a local pool with one segment on ``node``."""
    pool = SegmentPool(hugepage_size=hugepage_size)
    try:
        pool.new_segment(node, 2 * (hugepage_size or 2 * MiB))
        return placement_report(pool)
    finally:
        pool.close()


def reserve_cli(*args: str) -> tuple[int, list[dict[str, Any]]]:
    """``plasma-coord hugepages --size 2M --json ARGS``, in this process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = run_subcommand(hugepages_cli, ["hugepages", "--size", "2M", "--json", *args])
    return status, [json.loads(line) for line in out.getvalue().splitlines()]


def run_subcommand(module: Any, argv: list[str]) -> int:
    """Run one ``plasma-coord`` subcommand without importing the others (slow in the VM)."""
    parser = argparse.ArgumentParser(prog="plasma-coord")
    module.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def two_nodes(directory: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    # Node 0 gets 6 hugepages: 2 for the local pool check, 2 for the coordinator's segment,
    # 2 spare. Node 1 gets 2: the coordinator's first 4 MiB segment, none for a second.
    result["reserve_cli"] = reserve_cli("--count", "6", "--node", "0")
    result["reserve_node1"] = reserve_hugepages(HUGE, 2, node=1).granted
    normal, normal_socket = start_coordinator(
        directory, "normal.sock", "--memory", "0=16MiB,1=16MiB", "--segment-size", "4MiB"
    )
    huge, huge_socket = start_coordinator(
        directory,
        "huge.sock",
        "--memory",
        "0=8MiB,1=8MiB",
        "--segment-size",
        "4MiB",
        "--hugepages",
        "2M",
    )
    # While the coordinators start: placement_report on real NUMA, normal and hugepage pages.
    result["pool_normal"] = pool_placement(1, None)
    result["pool_huge"] = pool_placement(0, HUGE)
    wait_ready(normal)
    wait_ready(huge)
    result["ready_seconds"] = time.monotonic() - STARTED

    with connect(normal_socket, "producer") as client:
        result["normal"] = {str(n): produce(client, n, PAGE, 3 * MiB + 123) for n in (0, 1)}
    with connect(huge_socket, "producer") as client:
        result["huge"] = {str(n): produce(client, n, HUGE, MiB + 123) for n in (0, 1)}
        # Node 1's two hugepages hold its first segment; the next segment must fail cleanly
        # while node 0 still has free hugepages that a badly bound reservation would take.
        result["node0_free_before"] = hugepage_counts(HUGE, 0)[1]
        try:
            client.create(ObjectID.from_random(), 3 * MiB, node=1)
            result["shortage"] = None
        except PlasmaError as exc:
            result["shortage"] = {"type": type(exc).__name__, "code": exc.code, "message": str(exc)}
        result["node0_free_after"] = hugepage_counts(HUGE, 0)[1]
        result["alive_after_shortage"] = len(client.list())
    result["produced_seconds"] = time.monotonic() - STARTED
    result["exit_codes"] = {"normal": stop(normal), "huge": stop(huge)}
    return result


def four_nodes(directory: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    granted = reserve_hugepages(HUGE, 4)
    result["global_reserve"] = {"requested": granted.requested, "granted": granted.granted}
    reserve_hugepages(HUGE, 0)
    proc, socket_path = start_coordinator(
        directory, "normal.sock", "--memory", "32MiB", "--segment-size", "4MiB"
    )
    result["pool_normal"] = pool_placement(3, None)
    wait_ready(proc)
    with connect(socket_path, "producer") as client:
        result["normal"] = {str(n): produce(client, n, PAGE, MiB + 123) for n in range(4)}
    # Without node=: the object goes to the caller's node, from its CPU affinity.
    cpus = parse_cpulist((NODE_SYSFS / "node2/cpulist").read_text())
    os.sched_setaffinity(0, cpus)
    with connect(socket_path, "pinned-producer") as client:
        result["default_node"] = produce(client, None, PAGE, MiB)
    result["exit_codes"] = {"normal": stop(proc)}
    return result


def main() -> None:
    nodes = int(sys.argv[1])
    result: dict[str, Any] = {"online": (NODE_SYSFS / "online").read_text().strip()}
    result["import_seconds"] = time.monotonic() - STARTED
    with tempfile.TemporaryDirectory() as directory:
        result.update(two_nodes(directory) if nodes == 2 else four_nodes(directory))
    result["total_seconds"] = time.monotonic() - STARTED
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
