"""The proof of safety of reads without a round trip (design section 10), under stress.

Readers in processes of their own get objects through the public client API, most of them
from the shared directory with a pin and no request, and check every byte of every object
twice around a hold against the content its id implies; writers churn the same ids at full
speed in a store small enough that creates evict (delete, create the same id again, evict).
With pins, no reader may ever see a wrong byte. The negative control runs the very same
load with the readers' pins erased from their pin tables as soon as written: the coordinator
then frees memory under the readers, and they must see it (so the check is shown to catch
what it is there to catch). Either run ends with no pin and no byte left behind.

The workers are in :mod:`tests.scripts.directory_stress`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import plasma
from tests.conftest import RunningCoordinator, wait_until
from tests.scripts import directory_stress as stress

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures

MEMORY = "32MiB"  # the id space holds 76 MiB: creates evict
SEGMENT = "4MiB"
STARTUP = 60.0  # seconds the workers have to start, connect and fill the store
POSITIVE_SECONDS = 15.0  # the positive run ends earlier once every worker did its quota
NEGATIVE_SECONDS = 15.0  # the negative control ends earlier at the first corruption seen
MIN_PIN_SHARE = 0.3  # of the objects readers got, at least this share came from pins
MAX_FULL_SHARE = 0.05  # of the writers' creates, at most this share may fail StoreFull
# errors a worker may meet: an id got while absent or being made; the same id made again
# while a reader's reference still holds the deleted one; a store short of memory (rare)
READER_ERRORS = frozenset({"ObjectNotFound", "ObjectNotSealed", "PlasmaTimeout"})
WRITER_ERRORS = frozenset({"ObjectExists", "StoreFull"})


@dataclass
class Outcome:
    """What the workers of one run sent back, and what the run saw of them."""

    readers: list[dict[str, Any]]
    writers: list[dict[str, Any]]
    events: list[tuple[str, int, str]]
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)

    def errors(self) -> list[str]:
        """Worker crashes."""
        return [r["error"] for r in [*self.readers, *self.writers] if "error" in r]

    def unexpected(self) -> set[str]:
        """Error counters of kinds a worker should never meet."""
        bad = set()
        for workers, allowed in ((self.readers, READER_ERRORS), (self.writers, WRITER_ERRORS)):
            for worker in workers:
                for key in worker.get("counts", {}):
                    if key.startswith("error:") and key.rsplit(":", 1)[1] not in allowed:
                        bad.add(key)
        return bad

    def total(self, key: str, workers: str = "readers") -> int:
        return sum(r.get("counts", {}).get(key, 0) for r in getattr(self, workers))

    def summary(self) -> str:
        reads: Counter[str] = Counter()
        writes: Counter[str] = Counter()
        for r in self.readers:
            reads.update(r.get("counts", {}))
        for w in self.writers:
            writes.update(w.get("counts", {}))
        examples = [e for r in self.readers for e in r.get("examples", [])]
        failures = [e for w in self.writers for e in w.get("errors", [])]
        return (
            f"{self.seconds:.1f} s; readers {dict(sorted(reads.items()))}; "
            f"writers {dict(sorted(writes.items()))}; store evictions "
            f"{self.stats.get('evictions')}; events {self.events}; corruption {examples}; "
            f"writer errors {failures}; crashes {self.errors()}"
        )


def run_stress(params: stress.Params, seconds: float, *, until_corrupt: bool) -> Outcome:
    """Run the readers and writers of ``params`` against its coordinator for at most
    ``seconds`` after they are all ready: until every worker did its quota, or (with
    ``until_corrupt``) until a reader saw a corrupted byte; a worker's crash ends it too."""
    ctx = multiprocessing.get_context("spawn")
    workers = params.readers + params.writers
    barrier = ctx.Barrier(workers + 1)
    stop = ctx.Event()
    events_q = ctx.Queue()
    procs: list[tuple[str, Any, Any]] = []
    for kind, target, count in (
        ("writer", stress.writer, params.writers),
        ("reader", stress.reader, params.readers),
    ):
        for index in range(count):
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=target,
                args=(index, params, barrier, stop, events_q, send),
                name=f"stress-{kind}-{index}",
                daemon=True,
            )
            proc.start()
            send.close()
            procs.append((kind, proc, receive))
    events: list[tuple[str, int, str]] = []
    start = time.monotonic()
    try:
        barrier.wait(timeout=STARTUP)
        start = time.monotonic()
        deadline = start + seconds
        quotas: set[tuple[str, int]] = set()
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                event = events_q.get(timeout=remaining)
            except queue.Empty:
                break
            events.append(event)
            kind, index, what = event
            if what == "error" or (what == "corrupt" and until_corrupt):
                break
            if what == "quota":
                quotas.add((kind, index))
                if len(quotas) == workers and not until_corrupt:
                    break
    except threading.BrokenBarrierError:
        events.append(("run", -1, "a worker never reached the start barrier"))
    finally:
        elapsed = time.monotonic() - start
        stop.set()
        results: dict[str, list[dict[str, Any]]] = {"reader": [], "writer": []}
        for kind, proc, receive in procs:
            try:
                if not receive.poll(STARTUP):
                    raise EOFError
                results[kind].append(receive.recv())
            except EOFError:
                results[kind].append({"error": f"{proc.name} sent nothing"})
            proc.join(STARTUP)
            if proc.is_alive():
                proc.kill()
            elif proc.exitcode:
                results[kind][-1].setdefault("error", f"{proc.name} exited {proc.exitcode}")
    return Outcome(results["reader"], results["writer"], events, elapsed)


def check_nothing_left(socket: str, outcome: Outcome) -> None:
    """After the workers left: no pin anywhere, and once every object is deleted (and the
    pin scans of the deletes are done) no byte of the store in use."""
    with plasma.connect(socket, "stress-check") as client:
        stats = client.stats()
        outcome.stats = stats
        # every worker let go of its views (so cleared its pins) before it disconnected
        assert stats["pins"] == 0, outcome.summary()
        # the coordinator learns of a disconnect by itself, nobody can tell us when: poll
        wait_until(lambda: len(client.stats()["clients"]) == 1, what="the workers' disconnects")
        ids = list(client.list())
        if ids:
            client.delete(ids)
        client.flush()
        stats = client.stats()
        left = {k: stats[k] for k in ("used", "objects", "pins", "dying", "arena_bytes")}
        assert left == dict.fromkeys(left, 0), f"{left}; {outcome.summary()}"


def _run(
    coordinator_factory: Callable[..., RunningCoordinator], hide_pins: bool, seconds: float
) -> tuple[RunningCoordinator, Outcome]:
    """One run against a fresh coordinator, which must outlive it, and no worker crashed."""
    coord = coordinator_factory("--memory", MEMORY, "--segment-size", SEGMENT)
    params = stress.Params(socket=coord.socket, hide_pins=hide_pins)
    outcome = run_stress(params, seconds, until_corrupt=hide_pins)
    if outcome.errors():  # a worker lost its connection, maybe as the coordinator died
        with contextlib.suppress(subprocess.TimeoutExpired):
            coord.proc.wait(timeout=10)
    if coord.proc.poll() is not None:
        pytest.fail(
            f"the coordinator died ({coord.proc.returncode}): {coord.log()[-3000:]}\n"
            f"{outcome.summary()}"
        )
    assert not outcome.errors(), outcome.summary()
    return coord, outcome


def check_load(coord: RunningCoordinator, outcome: Outcome) -> None:
    """What both variants must show besides their verdict: nothing left behind, the fast
    path used, real churn, only the errors the load explains."""
    check_nothing_left(coord.socket, outcome)
    print(outcome.summary())
    assert coord.stop() == 0
    assert not outcome.unexpected(), outcome.summary()
    # the run proves the fast path: readers had the directory, and pins served them
    assert all(r["counts"]["fast_path"] for r in outcome.readers), outcome.summary()
    objects, pinned = outcome.total("objects"), outcome.total("pinned")
    assert pinned > MIN_PIN_SHARE * objects, outcome.summary()
    # and the churn was real: ids deleted and made again, the store evicting (and able to)
    assert outcome.total("deletes", "writers") > 0, outcome.summary()
    assert outcome.stats["evictions"] > 0, outcome.summary()
    full = outcome.total("error:create:StoreFull", "writers")
    assert full <= MAX_FULL_SHARE * outcome.total("creates", "writers"), outcome.summary()


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("read_path")
def test_pinned_reads_never_see_freed_memory(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> None:
    """Every byte of every object readers got, pinned or referenced, was the object's own."""
    coord, outcome = _run(coordinator_factory, hide_pins=False, seconds=POSITIVE_SECONDS)
    assert outcome.total("corrupt_checks") == 0, outcome.summary()
    check_load(coord, outcome)
    # every worker did its share within the time (a slow machine fails here, not silently)
    quotas = {(kind, index) for kind, index, what in outcome.events if what == "quota"}
    assert len(quotas) == len(outcome.readers) + len(outcome.writers), outcome.summary()


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("read_path")
def test_hidden_pins_let_readers_see_freed_memory(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> None:
    """The negative control: the same load with pins the coordinator cannot see."""
    coord, outcome = _run(coordinator_factory, hide_pins=True, seconds=NEGATIVE_SECONDS)
    assert outcome.total("corrupt_checks") > 0, outcome.summary()
    check_load(coord, outcome)
