"""``soak``: eight clients mix every operation on a small store for N seconds.

Producers write id-derived objects of 64 B..2 MiB through ``put``, ``create_and_seal``,
``create_and_seal_many`` and create + write + seal, and hand the ids to consumers over a
queue; consumers read and check every byte, and pass some ids on to a deleter; a scanner
reads objects it finds with ``list()``, deletes some and evicts. The store is small, so
eviction and ``StoreFull`` are routine: those (and reading an object that was evicted) are
expected; any other error is a defect. Every second we sample the coordinator's memory,
descriptors, CPU time and the store's used bytes; its RSS must stay bounded during the load
and its descriptors come back to where they started once the clients are gone.

``moves`` serves a fake two-node machine (a captured topology, ``--no-bind``, so page moves
change the accounting only) with ``--follow-readers``: a mover migrates and replicates what
it finds, and a consumer that says it runs on node 1 reads node 1's copies through the
directory, while the store evicts (or spills) around them.
"""

from __future__ import annotations

import collections
import queue
import random
import re
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import plasma
import plasma.client
from bench import topologies
from bench.chaos import objects, probes
from bench.chaos.harness import (
    CTX,
    Coordinator,
    Deadline,
    Monitor,
    Outcome,
    Worker,
    log_failures,
    settled,
)
from bench.chaos.probes import Balance
from plasma.errors import (
    BadRequest,
    ObjectNotFound,
    ObjectNotSealed,
    PlasmaError,
    PlasmaTimeout,
    StoreFull,
)

ROLES = ("producer", "consumer") * 3 + ("deleter", "scanner")
MOVE_ROLES = ("mover", "remote consumer")  # (with ``moves``)
TOPOLOGY = "16amd64-8n2c"  # of which nodes 0 and 1 (CPUs 0-1 and 2-3)
REMOTE_CPUS = {2, 3}  # what the remote consumer says it may run on: node 1
MOVES = ("migrate", "replicate")
HANDOFF = 512  # ids queued between workers at most (more are dropped: readers get fresh ones)
HANDED_PER_BATCH = 4  # ids of a create_and_seal_many batch handed to the consumers
HELD_VIEWS = 24  # views each consumer keeps alive (besides its release-delay cache)
# Errors expected under memory pressure and with objects vanishing under readers, by operation
# (the write kinds of bench.chaos.objects, get, delete, evict, list); any other is a defect.
EXPECTED: dict[str, tuple[type[PlasmaError], ...]] = {
    **dict.fromkeys(objects.KINDS, (StoreFull,)),
    "get": (ObjectNotFound, ObjectNotSealed, PlasmaTimeout),
    "delete": (ObjectNotFound,),
    "migrate": (ObjectNotFound, StoreFull, BadRequest),
    "replicate": (ObjectNotFound, StoreFull, BadRequest),
}
# The refusals of a move that are routine here (the object is on disk, already moving or
# being evicted, or the mover has as many moves under way as allowed); any other is a defect.
MOVE_REFUSED = re.compile(r"spilled to disk|being moved|being evicted|moves under way")
RSS_GROWTH = 64 << 20  # bytes the coordinator's RSS may grow past its first quarter's peak
RSS_GROWTH_SHARE = 0.5  # (or this share of it, whichever is more)
RSS_PER_OBJECT = 2048  # and this much per object in the store (its records are no leak)
FDS_SLACK = 4  # descriptors the coordinator may hold beyond its start once clients are gone
FDS_PER_SEGMENT = 2  # (and per segment it added: its memfd, and the read-only one it reopened)
TAIL = 30.0  # seconds a worker may take to finish its last operation and report
KEEP = 10  # corrupt-read examples kept per worker
FAILED = object()  # what Tally.call returns when the call raised


@dataclass
class Tally:
    """One worker's counts."""

    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    objects_written: int = 0
    verified: int = 0
    bytes_verified: int = 0
    corrupt: int = 0
    corrupt_examples: list[str] = field(default_factory=list)
    expected: collections.Counter[str] = field(default_factory=collections.Counter)
    defects: collections.Counter[str] = field(default_factory=collections.Counter)
    dropped_handoffs: int = 0
    fatal: str | None = None

    def call(self, op: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, counted as ``op``; FAILED (and the error counted) if it raised.

        A lost connection is not counted: it ends the worker.
        """
        self.ops[op] += 1
        try:
            return fn(*args)
        except ConnectionError:
            raise
        except objects.CorruptRead as exc:
            self.corrupt += 1
            if len(self.corrupt_examples) < KEEP:
                self.corrupt_examples.append(str(exc))
        except Exception as exc:
            if isinstance(exc, EXPECTED.get(op, ())) and _routine(exc):
                self.expected[f"{type(exc).__name__} in {op}"] += 1
            else:  # ids and numbers masked, so that one defect is one line
                text = re.sub(r"\b[0-9a-f]{16,}\b", "<id>", str(exc))
                text = re.sub(r"[0-9]+", "N", text)[:200]
                self.defects[f"{type(exc).__name__} in {op}: {text}"] += 1
        return FAILED

    def succeeded(self, op: str) -> None:
        self.ops[f"{op} done"] += 1

    def read(self, client: plasma.Client, oid: bytes) -> Any:
        """Get and check ``oid``: the view read, or FAILED."""
        view = self.call("get", objects.check, client, oid)
        if view is not FAILED:
            self.verified += 1
            self.bytes_verified += objects.size_of(oid)
        return view

    def hand(self, ids: Any, oid: bytes) -> None:
        """Queue ``oid`` for the next worker, or count it dropped if the queue is full."""
        try:
            ids.put_nowait(oid)
        except queue.Full:
            self.dropped_handoffs += 1


def _routine(exc: Exception) -> bool:
    return not isinstance(exc, BadRequest) or MOVE_REFUSED.search(str(exc)) is not None


Role = Callable[[plasma.Client, Tally, random.Random, Any, Any, float], None]


def producer(
    client: plasma.Client, tally: Tally, rng: random.Random, ids: Any, done: Any, stop: float
) -> None:
    while time.monotonic() < stop:
        if rng.random() < 0.25:
            sizes = [objects.log_uniform(rng, 64, 16384) for _ in range(rng.randint(8, 128))]
            oids = [objects.new_id("many", size, rng) for size in sizes]
        else:
            kind = rng.choice(("put", "create_and_seal", "create"))
            oids = [objects.new_id(kind, _size(rng), rng)]
        if tally.call(objects.kind_of(oids[0]), _write, client, oids) is FAILED:
            continue
        tally.objects_written += len(oids)
        for oid in rng.sample(oids, min(len(oids), HANDED_PER_BATCH)):
            tally.hand(ids, oid)


def _write(client: plasma.Client, oids: list[bytes]) -> None:
    objects.write(client, oids)
    client.flush()  # sealed before anyone is told, and deferred errors surface here


def _size(rng: random.Random) -> int:
    """64 B..2 MiB: half log-uniform (mostly small), half uniform over 256 KiB..2 MiB."""
    if rng.random() < 0.5:
        return objects.log_uniform(rng, 64, 2 << 20)
    return rng.randint(256 << 10, 2 << 20)


def consumer(
    client: plasma.Client, tally: Tally, rng: random.Random, ids: Any, done: Any, stop: float
) -> None:
    held: collections.deque[Any] = collections.deque(maxlen=HELD_VIEWS)
    while time.monotonic() < stop:
        for oid in _drain(ids, 1):
            view = tally.read(client, oid)
            if view is not FAILED:
                held.append(view)  # readers holding data is what pins memory
                if rng.random() < 0.5:
                    tally.hand(done, oid)


def deleter(
    client: plasma.Client, tally: Tally, rng: random.Random, ids: Any, done: Any, stop: float
) -> None:
    while time.monotonic() < stop:
        batch = _drain(done, 64)
        if batch:
            tally.call("delete", client.delete, batch)
        if rng.random() < 0.05:
            tally.call("evict", client.evict, rng.randint(1, 16 << 20))


def scanner(
    client: plasma.Client, tally: Tally, rng: random.Random, ids: Any, done: Any, stop: float
) -> None:
    while time.monotonic() < stop:
        sealed = _sealed(client, tally)
        for oid in rng.sample(sealed, min(20, len(sealed))):
            tally.read(client, oid)
        if sealed and rng.random() < 0.3:
            tally.call("delete", client.delete, rng.sample(sealed, min(5, len(sealed))))
        if rng.random() < 0.1:
            tally.call("evict", client.evict, rng.randint(1 << 20, 16 << 20))


def mover(
    client: plasma.Client, tally: Tally, rng: random.Random, ids: Any, done: Any, stop: float
) -> None:
    """Migrates objects between the two nodes and replicates them, then reads them back."""
    while time.monotonic() < stop:
        sealed = _sealed(client, tally)
        for oid in rng.sample(sealed, min(8, len(sealed))):
            op = rng.choice(MOVES)
            if op == "migrate":
                result = tally.call(op, client.migrate, oid, rng.choice((0, 1)))
            else:
                result = tally.call(op, client.replicate, oid, [0, 1])
            if result is not FAILED:
                tally.succeeded(op)
                tally.read(client, oid)


def _sealed(client: plasma.Client, tally: Tally) -> list[bytes]:
    """The sealed objects ``list()`` shows (none when it failed)."""
    listing = tally.call("list", client.list)
    if listing is FAILED:
        return []
    return [oid.binary() for oid, info in listing.items() if info["state"] == "sealed"]


def _drain(ids: Any, most: int) -> list[bytes]:
    """Up to ``most`` queued ids, waiting a little for the first."""
    try:
        batch = [ids.get(timeout=0.2)]
    except queue.Empty:
        return []
    with suppress(queue.Empty):
        while len(batch) < most:
            batch.append(ids.get_nowait())
    return batch


RUNNERS: dict[str, Role] = {
    "producer": producer,
    "consumer": consumer,
    "deleter": deleter,
    "scanner": scanner,
    "mover": mover,
    "remote consumer": consumer,  # (on node 1: see _worker)
}


def _worker(
    conn: Connection, role: str, path: str, seed: int, ids: Any, done: Any, stop: float
) -> None:
    """One soak client: its role's loop until ``stop`` (monotonic time), then its tally."""
    tally = Tally()
    if role == "remote consumer":  # the CPUs a client sends decide its node
        plasma.client.get_affinity = lambda: REMOTE_CPUS  # type: ignore[attr-defined]
    try:
        with plasma.connect(path, f"chaos-soak-{role.replace(' ', '-')}") as client:
            node = client._core.info.node if client._core.info else None
            if role == "remote consumer" and node != 1:
                raise RuntimeError(f"the remote consumer is on node {node}, not 1")
            RUNNERS[role](client, tally, random.Random(seed), ids, done, stop)
    except Exception as exc:  # the connection broke: the worker cannot go on
        tally.fatal = f"{type(exc).__name__}: {exc}"
    conn.send(tally)


# ---------------------------------------------------------------- the run


def run(
    seconds: float,
    seed: int,
    workdir: Path,
    memory: str = "128MiB",
    spill: bool = False,
    moves: bool = False,
) -> Outcome:
    """Soak for ``seconds`` seconds of load, sampling every second; with ``spill``, the
    coordinator spills to ``workdir/spill`` instead of evicting (and must lose nothing);
    with ``moves``, objects are migrated and replicated between two nodes meanwhile."""
    out = Outcome("soak")
    rng = random.Random(seed)
    args = ["--memory", memory, "--segment-size", "16MiB"]
    if spill:
        args += ["--spill-dir", str(workdir / "spill")]
    roles = ROLES
    if moves:
        root = topologies.unpack(TOPOLOGY, workdir / "topology")
        args += ["--sysfs-root", str(root), "--nodes", "0,1", "--no-bind", "--follow-readers"]
        roles += MOVE_ROLES
    coord = Coordinator(workdir, *args).start()
    series: list[dict[str, Any]] = []
    tallies: list[tuple[str, Tally | None]] = []
    started = time.monotonic()
    try:
        monitor = Monitor(coord.socket)
        start = {**probes.sample(coord.pid), "segments": _segments(monitor)}
        ids, done = CTX.Queue(HANDOFF), CTX.Queue(HANDOFF)
        stop = time.monotonic() + seconds
        workers = [
            (role, Worker(_worker, role, coord.socket, rng.getrandbits(32), ids, done, stop))
            for role in roles
        ]
        _sample(coord, monitor, series, out, Deadline(seconds), started)
        for role, worker in workers:
            try:
                tallies.append((role, worker.recv(max(1.0, stop + TAIL - time.monotonic()))))
            except (TimeoutError, EOFError) as exc:
                tallies.append((role, None))
                out.fail(f"soak: a {role} did not finish ({exc!r})")
            worker.kill()
        for q in (ids, done):
            q.cancel_join_thread()
            q.close()
        _books(out, coord, monitor)
        if spill:
            _spill_books(out, monitor)
        if coord.alive():
            end = {**probes.sample(coord.pid), "segments": _segments(monitor)}
            _bounds(out, start, end, series)
        if moves:
            done = sum(t.ops[f"{op} done"] for _, t in tallies if t is not None for op in MOVES)
            out.check(done > 0, "soak: no migrate or replicate succeeded")
        monitor.close()
    finally:
        problem = coord.stop()
        out.check(problem is None, f"soak: {problem}")
    if spill and problem is None:  # (deletions are recorded in the files by the stop at last)
        left = sorted(p.name for p in (workdir / "spill").iterdir() if p.name != ".lock")
        out.check(not left, f"soak: spill files left after deleting everything: {left[:5]}")
    log_failures(out, [coord])
    _report(out, tallies, series, time.monotonic() - started, seconds)
    return out


def _sample(
    coord: Coordinator,
    monitor: Monitor,
    series: list[dict[str, Any]],
    out: Outcome,
    deadline: Deadline,
    started: float,
) -> None:
    """Every second until ``deadline``: /proc figures of the coordinator and store stats."""
    tick = time.monotonic()
    while not deadline.passed():
        if not coord.alive():
            out.fail(f"soak: coordinator died (exit {coord.returncode}): {coord.last_exception()}")
            return
        now = time.monotonic()
        point: dict[str, Any] = {"t": round(now - started, 2), **probes.sample(coord.pid)}
        try:
            stats = monitor.stats()
        except (OSError, TimeoutError, PlasmaError) as exc:
            out.fail(f"soak: stats() failed at {point['t']} s: {exc!r}")
            return
        point.update({k: stats[k] for k in ("used", "objects", "evictions")})
        point["clients"] = len(stats["clients"])
        if series:
            last = series[-1]
            point["cpu_share"] = round(
                (point["cpu_s"] - last["cpu_s"]) / (point["t"] - last["t"]), 3
            )
        series.append(point)
        tick += 1.0
        time.sleep(max(0.0, min(tick - time.monotonic(), deadline.left())))  # pacing


def _books(out: Outcome, coord: Coordinator, monitor: Monitor) -> None:
    """Once the workers are gone: no leaked byte, and nothing left once everything is deleted."""
    if not coord.alive():
        return  # its death is reported already
    if not coord.wait_sockets(coord.idle_sockets + 1, 10.0):
        out.fail("soak: client sessions still open 10 s after the workers ended")
        return
    if not settled(monitor, 10.0):
        out.fail("soak: objects still wait for their pin scan 10 s after the workers ended")
    before = monitor.balance()
    deferred = monitor.delete_all()
    after = monitor.balance()
    stats = monitor.stats()
    out.figures["books"] = {
        "before_delete": vars(before),
        "after_delete": vars(after),
        "store": {k: stats[k] for k in ("replicas", "moving", "dying", "pins", "nodes")},
    }
    for problem in before.differences(Balance.empty(1), ("used", "objects", "listed")):
        out.fail(f"soak: after the workers ended: {problem}")
    out.check(not deferred, f"soak: {len(deferred)} deletes deferred with no client left")
    for problem in after.differences(Balance.empty(1)):
        out.fail(f"soak: after deleting everything: {problem}")


def _bounds(
    out: Outcome, start: dict[str, Any], end: dict[str, Any], series: list[dict[str, Any]]
) -> None:
    """The coordinator's RSS stays within a bound of its first quarter's peak (and of the
    objects it keeps) during the load, and its descriptors come back to where they started
    (and its segments' own) once the clients are gone."""
    out.figures["bounds"] = {"start": start, "end": end}
    out.lines.append(
        f"  bounds: rss {start['rss'] / 2**20:,.1f} -> {end['rss'] / 2**20:,.1f} MiB, "
        f"fds {start['fds']} -> {end['fds']}, segments {start['segments']} -> "
        f"{end['segments']} (at the start, and once every client left)"
    )
    bound = start["fds"] + FDS_PER_SEGMENT * max(0, end["segments"] - start["segments"])
    out.check(
        end["fds"] <= bound + FDS_SLACK,
        f"soak: the coordinator holds {end['fds']} descriptors once every client left "
        f"({start['fds']} at the start, {end['segments']} segments)",
    )
    if len(series) < 4:
        return
    early = max(p["rss"] for p in series[: len(series) // 4])
    base = early + max(RSS_GROWTH, int(early * RSS_GROWTH_SHARE))
    for point in series:
        bound = base + point["objects"] * RSS_PER_OBJECT
        if point["rss"] > bound:
            out.fail(
                f"soak: the coordinator's RSS was {point['rss'] / 2**20:,.1f} MiB at "
                f"{point['t']} s with {point['objects']:,} objects (first quarter's peak "
                f"{early / 2**20:,.1f} MiB, bound {bound / 2**20:,.1f})"
            )
            return


def _segments(monitor: Monitor) -> int:
    return sum(n["segments"] for n in monitor.stats()["nodes"].values())


def _spill_books(out: Outcome, monitor: Monitor) -> None:
    """Spilling lost nothing and failed nowhere."""
    figures = monitor.stats()["spill"]
    out.figures["spill"] = figures
    out.check(figures["lost"] == 0, f"soak: {figures['lost']} spilled objects lost")
    out.check(figures["errors"] == 0, f"soak: spilling failed: {figures['last_error']}")
    out.check(figures["written_objects"] > 0, "soak: the store never spilled (too big?)")


def _report(
    out: Outcome,
    tallies: list[tuple[str, Tally | None]],
    series: list[dict[str, Any]],
    elapsed: float,
    seconds: float,
) -> None:
    total = Tally()
    workers = []
    for role, tally in tallies:
        if tally is None:
            continue
        workers.append({"role": role, **vars(tally)})
        total.ops.update(tally.ops)
        total.expected.update(tally.expected)
        total.defects.update(tally.defects)
        total.corrupt_examples += tally.corrupt_examples
        for name in (
            "objects_written",
            "verified",
            "bytes_verified",
            "corrupt",
            "dropped_handoffs",
        ):
            setattr(total, name, getattr(total, name) + getattr(tally, name))
        if tally.fatal:
            out.fail(f"soak: a {role} stopped: {tally.fatal}")
    ops_per_s = {op: round(n / seconds, 1) for op, n in sorted(total.ops.items())}
    keys = ("rss", "private", "shmem", "fds", "cpu_share", "used", "objects", "evictions")
    summary = {k: _span(series, k) for k in keys}
    out.figures.update(
        seconds=round(elapsed, 1),
        load_seconds=seconds,
        ops=dict(total.ops),
        ops_per_s=ops_per_s,
        objects_written=total.objects_written,
        reads_verified=total.verified,
        bytes_verified=total.bytes_verified,
        corrupt_reads=total.corrupt,
        corrupt_examples=total.corrupt_examples[:KEEP],
        expected_errors=dict(total.expected),
        defects=dict(total.defects),
        dropped_handoffs=total.dropped_handoffs,
        summary=summary,
        workers=workers,
        series=series,
    )
    rate = sum(total.ops.values()) / seconds
    out.lines.append(
        f"soak: {len(tallies)} clients for {seconds:.0f} s; {rate:,.0f} ops/s "
        f"({', '.join(f'{k} {v:,.0f}' for k, v in ops_per_s.items())}); "
        f"{total.verified:,} reads verified ({total.bytes_verified / 2**20:,.0f} MiB), "
        f"corrupt {total.corrupt}"
    )
    out.lines.append(f"  expected errors: {_listed(total.expected)}")
    out.lines.append(f"  defects: {_listed(total.defects)}")
    for key, span in summary.items():
        if span:
            shown = ", ".join(f"{k} {_fmt(key, v)}" for k, v in span.items())
            out.lines.append(f"  {key}: {shown}")
    if total.corrupt:
        examples = "; ".join(total.corrupt_examples[:3])
        out.fail(f"soak: {total.corrupt} corrupt reads, e.g. {examples}")
    for defect, n in total.defects.items():
        out.fail(f"soak: {n}x {defect}")


def _span(series: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    values = [p[key] for p in series if p.get(key) is not None]
    return {"min": min(values), "max": max(values), "last": values[-1]} if values else None


def _fmt(key: str, value: float) -> str:
    if key in ("rss", "private", "shmem", "used"):
        return f"{value / 2**20:,.1f} MiB"
    if key == "cpu_share":
        return f"{value:.0%}"
    return f"{value:,}"


def _listed(counts: collections.Counter[str]) -> str:
    return ", ".join(f"{k} {n:,}" for k, n in counts.most_common()) or "none"
