"""What pin scans cost the coordinator (issue 27, item 1): ``python -m bench.pin_scan``.

``store`` (the default): a sans-I/O store with ``--clients`` simulated readers, each with a
full pin table (``--pins`` entries, every one pinning a published object), and one deleted
object still pinned by one of them. Times one scan (``PinScanner.pinned``), ``counts()``
of every generation, a ``list()`` of every object, ``stats()``, and a flood of
``--unpins`` Unpin hints (``Store.rescan_pins_soon``, a fake clock advancing ``--gap`` seconds per
hint), then the store's work while idle (``expire`` at every deadline it asks for) over
``--idle`` seconds of its clock: how many scans it made and their CPU per second.

``e2e``: a real coordinator (a subprocess; ``--code`` runs another source tree's, e.g. an
extracted ``git archive main``) with ``--clients`` connected clients whose pin tables are
filled with pins of real objects (written straight into the tables), one deleted object they
pin, and one more connection sending ``--unpins`` Unpin frames at once, again and again for
``--flood-seconds`` (at least once), while another client times ``contains`` until the
coordinator has handled them all (p50, p99, max); then the coordinator's CPU over ``--idle``
seconds with every client idle (the deleted object still pinned).

Figures depend on the machine: compare runs on one machine (ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from plasma.directory import PIN_HEADER, pin_table_size
from plasma.store import Store


class _Provider:
    def __init__(self) -> None:
        self.next_id = 1

    def new_segment(self, node: int, size: int) -> int:
        self.next_id += 1
        return self.next_id - 1

    def free_segment(self, segment: int) -> None:
        pass


def _oid(n: int) -> bytes:
    return n.to_bytes(20, "big")


def _timed(fn: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def store_bench(clients: int, pins: int, unpins: int, gap: float, idle: float) -> dict[str, Any]:
    objects = pins
    store = Store({0: 1 << 30}, _Provider(), segment_size=1 << 30, reclaim_wait=0)
    writer = 1_000_000
    store.register_client(writer)
    for n in range(objects + 1):
        store.create(writer, _oid(n), 64)
        store.seal(writer, _oid(n))
        store.release(writer, _oid(n))
    gens = np.array([store._objects[_oid(n)].gen for n in range(objects + 1)])
    rng = np.random.default_rng(1)
    tables = []
    for c in range(clients):
        buf = bytearray(pin_table_size(pins))
        words = np.frombuffer(buf, dtype="<u8")
        words[PIN_HEADER // 8 :] = rng.permutation(gens[1:])[:pins]
        words[0] = pins
        store.register_client(c, pins=buf)
        tables.append(buf)
    # client 0 also pins object 0 (in its last entry), which is then deleted
    np.frombuffer(tables[0], dtype="<u8")[-1] = gens[0]
    now = 0.0
    store.delete(writer, [_oid(0)], now=now)
    now += 0.01
    store.expire(now)
    assert store.stats()["dying"] == 1
    scanner = store._pins
    out: dict[str, Any] = {"clients": clients, "pins": pins}
    out["scan_ms"] = 1e3 * _timed(lambda: scanner.pinned([int(gens[0])]))
    out["scan_64_ms"] = 1e3 * _timed(lambda: scanner.pinned(gens[:64].tolist()))
    out["counts_ms"] = 1e3 * _timed(lambda: scanner.counts(gens.tolist()), 1)
    out["list_ms"] = 1e3 * _timed(store.objects, 1)
    out["info_ms"] = 1e3 * _timed(lambda: store.info(_oid(5)))
    out["stats_ms"] = 1e3 * _timed(store.stats)
    # the flood: each hint as the coordinator handles an Unpin frame
    scans = _Counter(scanner)
    t0 = time.perf_counter()
    worst = 0.0
    for _ in range(unpins):
        now += gap
        t1 = time.perf_counter()
        store.rescan_pins_soon(now=now)
        worst = max(worst, time.perf_counter() - t1)
    out["flood_s"] = time.perf_counter() - t0
    out["flood_worst_ms"] = 1e3 * worst
    out["flood_scans"] = scans.take()
    # idle: the expiry loop wakes at every deadline the store asks for
    end = now + idle
    cpu0 = time.process_time()
    wakeups = 0
    while True:
        deadline = store.next_deadline()
        if deadline is None or deadline > end:
            break
        now = max(now, deadline)
        store.expire(now)
        wakeups += 1
    cpu = time.process_time() - cpu0
    out["idle_wakeups_per_s"] = wakeups / idle
    out["idle_scans_per_s"] = scans.take() / idle
    out["idle_cpu_pct"] = 100 * cpu / idle
    scans.restore()
    return out


class _Counter:
    """Counts the scans (calls of ``pinned``) of a scanner."""

    def __init__(self, scanner: Any) -> None:
        self.scanner = scanner
        self.n = 0
        real = scanner.pinned

        def counted(*a: Any, **kw: Any) -> Any:
            self.n += 1
            return real(*a, **kw)

        scanner.pinned = counted

    def take(self) -> int:
        n, self.n = self.n, 0
        return n

    def restore(self) -> None:
        del self.scanner.pinned


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def e2e_bench(
    clients: int, pins: int, unpins: int, idle: float, code: str | None, flood_seconds: float
) -> dict[str, Any]:
    import plasma.client
    from plasma import protocol as p
    from plasma.ids import ObjectID

    work = tempfile.mkdtemp(prefix="pin-scan-")
    sock_path = os.path.join(work, "s.sock")
    tree = code or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=tree)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plasma",
            "serve",
            "--socket",
            sock_path,
            "--memory",
            "256MiB",
            "--max-clients",
            str(clients + 16),
        ],
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out: dict[str, Any] = {"clients": clients, "pins": pins, "code": tree}
    held: list[Any] = []
    try:
        for _ in range(300):
            if os.path.exists(sock_path):
                break
            time.sleep(0.05)
        writer = plasma.client.connect(sock_path, "writer", release_delay=0)
        ids = [ObjectID(_oid(n + 1)) for n in range(pins + 1)]
        for i in ids:
            writer.put(b"x" * 64, i)
        probe = plasma.client.connect(sock_path, "probe")
        probe.get(ids[0])  # maps the directory
        reader = probe._core.maps.reader
        gens = np.array([reader.lookup(i.binary()).generation for i in ids], dtype="<u8")
        rng = np.random.default_rng(1)
        for c in range(clients):
            client = plasma.client.connect(sock_path, f"reader{c}", release_delay=0)
            client.contains(ids[0])
            client.get(ids[1])  # maps the tables
            words = np.frombuffer(client._core.maps.pin_map, dtype="<u8")
            table = rng.permutation(gens[1:])[:pins]
            if c == 0:
                table[-1] = gens[0]  # reader 0 pins the object deleted next
            words[PIN_HEADER // 8 : PIN_HEADER // 8 + pins] = table
            words[0] = pins
            held.append(client)
        out["pins_total"] = probe.stats()["pins"]
        writer.delete(ids[0])
        for _ in range(100):  # the deleted object waits for reader 0's pin
            writer.contains(ids[1])  # (sends the writer's pending releases too)
            if (dying := probe.stats()["dying"]) == 1:
                break
            time.sleep(0.05)
        out["dying"] = dying
        # the flood: raw Unpin frames from one more connection, while the probe times contains
        flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        flood.connect(sock_path)
        flood.sendall(p.encode(p.Connect(seq=1, protocol_version=p.PROTOCOL_VERSION)))
        frames = b"".join(p.encode(p.Unpin(seq=2 + n, ids=[_oid(1)])) for n in range(unpins))
        out["flood_bytes"] = len(frames)
        times: list[float] = []

        def timed_contains(until: float) -> None:
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                probe.contains(ids[2])
                times.append(time.perf_counter() - t0)
                time.sleep(0.001)

        handled = threading.Event()

        rounds = 0

        def send_flood() -> None:
            nonlocal rounds
            end = time.perf_counter() + flood_seconds
            while rounds == 0 or time.perf_counter() < end:  # at least once
                flood.sendall(frames)
                rounds += 1
            # the coordinator has handled every Unpin once it answers the next request
            flood.sendall(p.encode(p.Contains(seq=unpins + 10, id=_oid(1))))
            flood.settimeout(900)
            flood.recv(1 << 16)
            handled.set()

        cpu0 = _cpu_seconds(server.pid)
        t0 = time.perf_counter()
        sender = threading.Thread(target=send_flood)
        sender.start()
        while not handled.is_set():  # contains from another client, all along the flood
            timed_contains(time.perf_counter() + 0.05)
        out["flood_handled_s"] = time.perf_counter() - t0
        sender.join()
        out["unpins_sent"] = rounds * unpins
        out["flood_cpu_s"] = _cpu_seconds(server.pid) - cpu0
        lat = np.array(times) * 1e3
        out["contains_n"] = len(lat)
        out["contains_p50_ms"] = float(np.percentile(lat, 50))
        out["contains_p99_ms"] = float(np.percentile(lat, 99))
        out["contains_max_ms"] = float(lat.max())
        flood.close()
        time.sleep(1.0)
        cpu0 = _cpu_seconds(server.pid)
        time.sleep(idle)
        out["idle_cpu_pct"] = 100 * (_cpu_seconds(server.pid) - cpu0) / idle
    finally:
        for client in held:
            with contextlib.suppress(Exception):
                client.close()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.pin_scan", description=__doc__)
    ap.add_argument("mode", nargs="?", default="store", choices=["store", "e2e"])
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--pins", type=int, default=4096)
    ap.add_argument("--unpins", type=int, default=2000)
    ap.add_argument("--gap", type=float, default=0.0001, help="seconds between hints")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured")
    ap.add_argument(
        "--flood-seconds",
        type=float,
        default=3.0,
        help="e2e: send --unpins frames again and again for this long (at least once)",
    )
    ap.add_argument(
        "--code",
        default=None,
        help="e2e: run the coordinator from this source tree (default: this one), e.g. an "
        "extracted `git archive main` to compare with",
    )
    args = ap.parse_args(argv)
    if args.mode == "store":
        res = store_bench(args.clients, args.pins, args.unpins, args.gap, args.idle)
    else:
        res = e2e_bench(
            args.clients, args.pins, args.unpins, args.idle, args.code, args.flood_seconds
        )
    for k, v in res.items():
        print(f"{k:>20}: {v:.3f}" if isinstance(v, float) else f"{k:>20}: {v}")


if __name__ == "__main__":
    main()
