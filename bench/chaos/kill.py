"""``kill``: SIGKILL clients at chosen points; the store must forget everything they held.

Each kill point is a child process that connects, gets into some state (an unsealed object,
a half-written one, held references, a waiting get, a subscription with references, a batch
of small objects in flight, a release-delay cache) and reports it; we SIGKILL it there. Once
the coordinator has closed the dead sessions we compare its books with the baseline: no
client, unsealed object, waiter or subscriber left, every delete immediate, and after
deleting what the children sealed, no used byte outside a live object.

The first pass kills each point on its own (so a leak names its point), later rounds kill
all of them at once until the time is up.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import trio
import trio.testing

import plasma
import plasma.aio
from bench.chaos import objects
from bench.chaos.harness import Coordinator, Deadline, Monitor, Outcome, Worker, log_failures
from bench.chaos.probes import Balance
from plasma.errors import PlasmaError, PlasmaTimeout

COORDINATOR_ARGS = ("--memory", "256MiB", "--segment-size", "16MiB")
CHILD_TIMEOUT = 20.0  # for a child to reach its kill point (generous: CI machines are busy)
RESERVE = 3.0  # seconds kept for the last checks and the stop
PAYLOAD = bytes(range(256)) * 16  # small objects' contents (4 KiB)
Body = Callable[[Connection, str, random.Random], None]


def _wait_for_the_kill(conn: Connection) -> None:
    with suppress(EOFError):
        conn.recv()


def after_create(conn: Connection, path: str, rng: random.Random) -> None:
    """Unsealed objects, partly written, of the small and the large create paths."""
    client = plasma.connect(path, "chaos-kill")
    for size in (100, 300_000, 3 << 20):
        buf = client.create(rng.randbytes(20), size, b"meta")
        buf[: size // 2] = bytes(size // 2)
    conn.send("created")
    _wait_for_the_kill(conn)


def mid_write(conn: Connection, path: str, rng: random.Random) -> None:
    """Writing a 32 MiB unsealed object over and over."""
    client = plasma.connect(path, "chaos-kill")
    size, chunk = 32 << 20, 1 << 20
    buf = client.create(rng.randbytes(20), size)
    block = rng.randbytes(chunk)
    for i in itertools.count():
        offset = (i * chunk) % size
        buf[offset : offset + chunk] = block
        if i == 1:
            conn.send("writing")


def holding_refs(conn: Connection, path: str, rng: random.Random) -> None:
    """Sealed objects whose creator reference was kept, and views from gets of others."""
    client = plasma.connect(path, "chaos-kill")
    kept = []
    for size in (1000, 500_000, 2 << 20):
        oid = rng.randbytes(20)
        buf = client.create(oid, size)
        buf[:] = bytes(size)
        buf.release()
        client.seal(oid)  # no release: the creator keeps its reference
        kept.append(oid)
    put = [client.put(bytes(size)) for size in (64, 100_000, 3 << 20)]
    views = [client.get(oid) for oid in kept + put] * 2
    client.flush()
    conn.send(f"holding {len(views)} views")
    _wait_for_the_kill(conn)


def get_waiting(conn: Connection, path: str, rng: random.Random) -> None:
    """Gets parked in the coordinator: one of a present and a missing object, one with a
    deadline; a ``Sync`` answered after them proves they are parked."""

    async def main() -> None:
        async with plasma.aio.connect(path, "chaos-kill") as client:
            present = await client.put(bytes(5000))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.get, [present, rng.randbytes(20)], None)
                nursery.start_soon(client.get, [rng.randbytes(20)], 600.0)
                await trio.testing.wait_all_tasks_blocked()
                await client.flush()
                conn.send("waiting")
                await trio.sleep_forever()

    trio.run(main)


def subscribed(conn: Connection, path: str, rng: random.Random) -> None:
    """A ``with_locations`` subscriber, holding the references its notifications gave it."""
    client = plasma.connect(path, "chaos-kill")
    subscription = client.subscribe(with_locations=True)
    conn.send("subscribed")
    subscription.next(timeout=CHILD_TIMEOUT)
    conn.send("notified")
    _wait_for_the_kill(conn)


def many_small(conn: Connection, path: str, rng: random.Random) -> None:
    """``create_and_seal_many`` of 2000 small objects at a time, without end."""
    client = plasma.connect(path, "chaos-kill")
    for batch in itertools.count():
        items = [(rng.randbytes(20), PAYLOAD[: rng.randint(1, 2048)], b"") for _ in range(2000)]
        client.create_and_seal_many(items)
        conn.send(batch)


def release_cache(conn: Connection, path: str, rng: random.Random) -> None:
    """Objects got, checked and let go: their references sit in the release-delay cache."""
    client = plasma.connect(path, "chaos-kill", release_delay=64)
    oids = [objects.new_id("create_and_seal", objects.log_uniform(rng, 64, 1 << 18), rng)]
    oids += [objects.new_id("put", size, rng) for size in (100, 200_000, 2 << 20)]
    oids += [objects.new_id("many", 3000, rng) for _ in range(20)]
    objects.write(client, oids)
    client.flush()
    for oid in oids:
        objects.check(client, oid)
    conn.send(f"caching {len(oids)}")
    _wait_for_the_kill(conn)


def put_loop(conn: Connection, path: str, rng: random.Random) -> None:
    """Objects of 64 B..2 MiB through put, create_and_seal and create, without end."""
    client = plasma.connect(path, "chaos-kill")
    for i in itertools.count():
        kind = rng.choice(("put", "create_and_seal", "create"))
        objects.write(client, [objects.new_id(kind, objects.log_uniform(rng, 64, 2 << 20), rng)])
        if i % 8 == 0:
            conn.send(i)


@dataclass(frozen=True)
class KillPoint:
    """A child ``body``; killed after ``reports`` of its messages (a random count in that
    range); ``between`` runs after its first message (to give it something to hold)."""

    body: Body
    reports: tuple[int, int] = (1, 1)
    between: Callable[[Monitor, random.Random], None] | None = None


def _seal_some(monitor: Monitor, rng: random.Random) -> None:
    monitor.create_sealed([rng.randbytes(20) for _ in range(10)], 4096)


POINTS: dict[str, KillPoint] = {
    "after_create": KillPoint(after_create),
    "mid_write": KillPoint(mid_write),
    "holding_refs": KillPoint(holding_refs),
    "get_waiting": KillPoint(get_waiting),
    "subscribed": KillPoint(subscribed, (2, 2), _seal_some),
    "many_small": KillPoint(many_small, (1, 3)),
    "release_cache": KillPoint(release_cache),
    "put_loop": KillPoint(put_loop, (1, 6)),
}


def _child(conn: Connection, point: str, path: str, seed: int) -> None:
    """A kill point's process: its body, or ``("error", why)`` if the body failed."""
    try:
        POINTS[point].body(conn, path, random.Random(seed))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------- rounds


def kill_round(
    coord: Coordinator, monitor: Monitor, names: list[str], rng: random.Random, timeout: float
) -> tuple[list[str], dict[str, int]]:
    """Start the ``names`` kill points at once, SIGKILL each at its point, then check the
    books; returns what is wrong, and the books just before the (last) kill."""
    problems: list[str] = []
    at_kill: dict[str, int] = {}
    started = [(n, Worker(_child, n, coord.socket, rng.getrandbits(32))) for n in names]
    for name, worker in started:
        point = POINTS[name]
        try:
            for i in range(rng.randint(*point.reports)):
                message = worker.recv(timeout)
                if isinstance(message, tuple):
                    problems.append(f"{name}: the child failed before its kill point: {message[1]}")
                    break
                if i == 0 and point.between is not None:
                    point.between(monitor, rng)
        except (TimeoutError, EOFError, PlasmaTimeout) as exc:
            problems.append(f"{name}: the child never reached its kill point ({exc!r})")
        at_kill = vars(monitor.balance())
        worker.kill()
    return problems + _books(coord, monitor), at_kill


def _books(coord: Coordinator, monitor: Monitor) -> list[str]:
    """With only the monitor connected: nothing of the dead clients may be left."""
    if not coord.wait_sockets(coord.idle_sockets + 1, 10.0):
        if not coord.alive():
            return [f"coordinator died (exit {coord.returncode}): {coord.last_exception()}"]
        return ["sessions of killed clients still open 10 s after the kills"]
    baseline = Balance.empty(clients=1)
    before = monitor.balance()
    problems = [
        f"after the kills: {d}" for d in before.differences(baseline, ("used", "objects", "listed"))
    ]
    deferred = monitor.delete_all()
    if deferred:
        problems.append(f"{len(deferred)} deletes deferred: references of dead clients survive")
    after = monitor.balance()
    problems += [f"after deleting everything: {d}" for d in after.differences(baseline)]
    return problems


def run(seconds: float, seed: int, workdir: Path) -> Outcome:
    """Kill each point alone once, then all together in rounds for about ``seconds`` s."""
    out = Outcome("kill")
    deadline = Deadline(seconds)
    rng = random.Random(seed)
    coord = Coordinator(workdir, *COORDINATOR_ARGS).start()
    rounds: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        monitor = Monitor(coord.socket)
        plan = [[name] for name in POINTS]
        while coord.alive() and (plan or deadline.left() > RESERVE):
            names = plan.pop(0) if plan else list(POINTS)
            t = time.monotonic()
            at_kill: dict[str, int] = {}
            try:
                problems, at_kill = kill_round(coord, monitor, names, rng, CHILD_TIMEOUT)
            except (OSError, TimeoutError, PlasmaError) as exc:  # the monitor lost it
                problems = [f"monitor: {exc!r}; coordinator alive: {coord.alive()}"]
            took = round(time.monotonic() - t, 2)
            rounds.append(
                {"points": names, "seconds": took, "at_kill": at_kill, "problems": problems}
            )
            label = names[0] if len(names) == 1 else f"all {len(names)} at once"
            for problem in problems:
                out.fail(f"kill: round {len(rounds)} ({label}): {problem}")
        monitor.close()
    finally:
        stopped = coord.stop()
        out.check(stopped is None, f"kill: {stopped}")
    log_failures(out, [coord])
    kills = sum(len(r["points"]) for r in rounds)
    clean = sum(not r["problems"] for r in rounds)
    out.figures.update(
        rounds=len(rounds),
        kills=kills,
        clean_rounds=clean,
        details=rounds,
        seconds=round(time.monotonic() - started, 1),
    )
    for r in rounds[: len(POINTS)]:
        shown = ("used", "objects", "unsealed", "get_waiters", "subscribers", "arena_bytes")
        held = {k: v for k, v in r["at_kill"].items() if v and k in shown}
        out.lines.append(f"  {r['points'][0]}: at the kill {held}")
    out.lines.insert(
        0,
        f"kill: {kills} clients SIGKILLed in {len(rounds)} rounds ({len(POINTS)} alone, then all "
        f"at once) in {out.figures['seconds']} s; {clean} rounds back to the baseline",
    )
    return out
