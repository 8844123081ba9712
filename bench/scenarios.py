"""The benchmark scenarios: their sizes, units and targets, and the code that measures them.

The measuring functions run inside a peer worker (any venv: standard library and numpy only)
against a :class:`bench.peers.base.Peer`. Each returns one repeat's metrics; the harness
repeats and takes medians. Those of ``scale``, ``spill`` and ``rpc`` are in
:mod:`bench.scale`, :mod:`bench.spill` and :mod:`bench.rpc`; ``put_large``'s memcpy
baselines, measured by the harness itself, in :mod:`bench.memcpy`.
"""

from __future__ import annotations

import dataclasses
import mmap
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import c_consumer, rpc, scale, spill
from bench.peers.base import Peer, cpu_seconds, load_peer_class, store_memory

KiB = 1024
MiB = 1024 * 1024

Metrics = dict[str, float]

# handoff: (object size, seconds between two objects) of each case, and the consumers
HANDOFF_CASES = {1: (64, 0.0002), 2: (64, 0.002), 3: (MiB, 0.0002), 4: (MiB, 0.002)}
HANDOFF_CONSUMERS = 2
HANDOFF_OBJECTS = ((600, 300), (200, 100))  # per repeat (full, quick): 64 B, 1 MiB


Values = dict[str, float]  # one case's metric by peer (and "memcpy")
Check = Callable[[Values, Values], bool | None]


@dataclasses.dataclass(frozen=True)
class Target:
    """A design-section-9 target on one metric of one case of a scenario."""

    param: int
    metric: str
    text: str
    #: given the case's values by peer and those at ``vs_param`` (``{}`` without one),
    #: whether plasma-coord meets it (None: cannot tell, a value is missing)
    check: Check
    vs_param: int | None = None


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    param_name: str  # what the parameter is: "size" (bytes), "N" (processes), "objects"
    full: tuple[int, ...]
    quick: tuple[int, ...]
    metrics: dict[str, tuple[str, bool]]  # metric -> (unit, higher is better)
    targets: tuple[Target, ...] = ()
    #: the peers that run it (None: all); the others' cells read "n/a"
    peers: tuple[str, ...] | None = None
    #: what each parameter stands for, where it is not a number (rpc's calls)
    labels: dict[int, str] = dataclasses.field(default_factory=dict)
    #: run in a store of its own: a fresh worker and store for all its cases, in order
    own_store: bool = False
    #: that store's bytes, given the peer and the largest parameter (the harness gives at
    #: least ``--memory``); None: ``--memory``
    memory: Callable[[str, int], int] | None = None
    #: give that store exactly ``memory(...)`` bytes, not at least ``--memory``
    exact_memory: bool = False
    #: extra arguments of plasma-coord's ``serve`` for that store, ``{workdir}`` standing for
    #: its work dir (a temporary directory, removed afterwards); the other peers ignore them
    serve_args: tuple[str, ...] = ()
    #: plot each metric as one line per peer over the parameter (log scale), not as bars
    lines: bool = False
    #: the harness measures the memcpy baseline columns (:mod:`bench.memcpy`) at its sizes
    memcpy_baselines: bool = False

    def params(self, quick: bool) -> tuple[int, ...]:
        return self.quick if quick else self.full

    def runs_on(self, peer: str) -> bool:
        return self.peers is None or peer in self.peers


def _ratio_at_least(peer: str, factor: float) -> Check:
    """plasma-coord's value ≥ ``factor`` times ``peer``'s (higher is better)."""

    def check(values: Values, base: Values) -> bool | None:
        if "plasma-coord" not in values or peer not in values:
            return None
        return values["plasma-coord"] >= factor * values[peer]

    return check


def _faster(peer: str, factor: float) -> Check:
    """plasma-coord's latency ≤ ``peer``'s divided by ``factor`` (lower is better)."""

    def check(values: Values, base: Values) -> bool | None:
        if "plasma-coord" not in values or peer not in values:
            return None
        return factor * values["plasma-coord"] <= values[peer]

    return check


def _within(peer: str, factor: float) -> Check:
    """plasma-coord's value ≤ ``factor`` times ``peer``'s (lower is better)."""

    def check(values: Values, base: Values) -> bool | None:
        if "plasma-coord" not in values or peer not in values:
            return None
        return values["plasma-coord"] <= factor * values[peer]

    return check


def _at_most(limit: float) -> Check:
    def check(values: Values, base: Values) -> bool | None:
        return values["plasma-coord"] <= limit if "plasma-coord" in values else None

    return check


def _at_least(limit: float) -> Check:
    def check(values: Values, base: Values) -> bool | None:
        return values["plasma-coord"] >= limit if "plasma-coord" in values else None

    return check


def _grows(factor: float) -> Check:
    """plasma-coord's value ≥ ``factor`` times its own at the target's ``vs_param``."""

    def check(values: Values, base: Values) -> bool | None:
        if "plasma-coord" not in values or "plasma-coord" not in base:
            return None
        return values["plasma-coord"] >= factor * base["plasma-coord"]

    return check


def _all(*checks: Check) -> Check:
    """Met when every part is; not met when one part is not; else unknown."""

    def check(values: Values, base: Values) -> bool | None:
        verdicts = [c(values, base) for c in checks]
        if False in verdicts:
            return False
        return None if None in verdicts else True

    return check


def _first_get_target(size: int) -> Target:
    text = "≤ 10 µs and ≥ 2.5x arrow-plasma"
    return Target(size, "p50_us", text, _all(_at_most(10.0), _faster("arrow-plasma", 2.5)))


def _handoff_targets(case: int) -> tuple[Target, ...]:
    return (
        Target(case, "p50_us", "≤ 10 µs", _at_most(10.0)),
        Target(case, "p50_us", "≥ 2.5x arrow-plasma", _faster("arrow-plasma", 2.5)),
    )


def _handoff_label(case: int) -> str:
    size, spacing = HANDOFF_CASES[case]
    what = "64 B" if size < KiB else f"{size // MiB} MiB"
    return f"{what}, {spacing * 1e3:g} ms apart"


def _handover_target(n: int) -> Target:
    check = _all(_ratio_at_least("arrow-plasma", 2.0), _ratio_at_least("shared_memory", 1.0))
    return Target(n, "ops_per_s", "≥ 2x arrow-plasma and ≥ shared_memory", check)


SCALE_FIRST, SCALE_LAST = 10_000, 1_000_000  # scale's smallest and largest store
SCALE_KEEPS = 0.8  # scale: op rates at SCALE_LAST ≥ this times plasma-coord's own at SCALE_FIRST
RPC_VS_ECHO = 1.3  # rpc: plasma-coord's p50 ≤ this times the bare trio echo's


def _scale_targets() -> tuple[Target, ...]:
    keeps = tuple(
        Target(
            SCALE_LAST,
            f"{op}_ops_per_s",
            f"≥ {SCALE_KEEPS:g}x objects={SCALE_FIRST:,}",
            _grows(SCALE_KEEPS),
            vs_param=SCALE_FIRST,
        )
        for op in ("create", "get", "delete")
    )
    return (
        Target(100_000, "private_MiB", "≤ arrow-plasma", _within("arrow-plasma", 1.0)),
        Target(SCALE_LAST, "private_MiB", "≤ 0.5x arrow-plasma", _within("arrow-plasma", 0.5)),
        *keeps,
    )


def _rpc_target(call: int) -> Target:
    text = f"≤ {RPC_VS_ECHO:g}x echo"
    return Target(call, "p50_us", text, _within("echo", RPC_VS_ECHO))


READERS_CPU_PCT = 5.0  # the store process's CPU during the readers' run, % of its wall time


def _store_cpu_target(n: int) -> Target:
    text = f"≤ {READERS_CPU_PCT:g} % of the wall time"
    return Target(n, "store_cpu_pct", text, _at_most(READERS_CPU_PCT))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "create_seal",
            "create+seal, one by one",
            "size",
            (64, KiB, 100 * KiB),
            (64, KiB, 100 * KiB),
            {"ops_per_s": ("ops/s", True)},
            (Target(64, "ops_per_s", "≥ 1.5x arrow-plasma", _ratio_at_least("arrow-plasma", 1.5)),),
        ),
        Scenario(
            "create_seal_batch",
            "create+seal, batches of 1000",
            "size",
            (64, KiB, 100 * KiB),
            (64, KiB),
            {"ops_per_s": ("ops/s", True)},
            (Target(64, "ops_per_s", "≥ 250,000 ops/s", _at_least(250_000)),),
        ),
        Scenario(
            "get",
            "get of a sealed object",
            "size",
            (64, MiB),
            (64, MiB),
            {"p50_us": ("µs", False), "p99_us": ("µs", False)},
            (
                Target(64, "p50_us", "≤ 25 µs", _at_most(25.0)),
                Target(MiB, "p50_us", "≤ 25 µs", _at_most(25.0)),
            ),
        ),
        Scenario(
            "get_first",
            "first get of an object another process just sealed",
            "size",
            (64, MiB),
            (64,),
            {"p50_us": ("µs", False), "p99_us": ("µs", False)},
            (_first_get_target(64), _first_get_target(MiB)),
        ),
        Scenario(
            "handoff",
            f"hand-off: {HANDOFF_CONSUMERS} consumers blocked on pipes, one object per id sent",
            "case",
            tuple(HANDOFF_CASES),
            tuple(HANDOFF_CASES),
            {"p50_us": ("µs", False), "p99_us": ("µs", False)},
            tuple(t for case in HANDOFF_CASES for t in _handoff_targets(case)),
            labels={case: _handoff_label(case) for case in HANDOFF_CASES},
        ),
        Scenario(
            "put_large",
            "put of a numpy array",
            "size",
            (MiB, 16 * MiB, 64 * MiB, 256 * MiB),
            (MiB, 16 * MiB),
            {"GB_per_s": ("GB/s", True)},
            (Target(256 * MiB, "GB_per_s", "≥ 1.3x memcpy", _ratio_at_least("memcpy", 1.3)),),
            memcpy_baselines=True,
        ),
        Scenario(
            "put_first",
            "first put of a numpy array into a fresh store",
            "size",
            (256 * MiB,),
            (16 * MiB,),
            {"GB_per_s": ("GB/s", True)},
            # both copies: into numpy's memory and into the store's kind (bench/memcpy.py)
            (
                Target(
                    256 * MiB,
                    "GB_per_s",
                    "≥ 0.9x memcpy and memcpy-shm",
                    _all(_ratio_at_least("memcpy", 0.9), _ratio_at_least("memcpy-shm", 0.9)),
                ),
            ),
            own_store=True,
            # the whole budget faulted in at start (the default, one spare segment of 64 MiB,
            # is too small for a first object of 256 MiB)
            serve_args=("--prefault", "budget"),
            memcpy_baselines=True,
        ),
        Scenario(
            "get_large",
            "get of a numpy array",
            "size",
            (MiB, 16 * MiB, 64 * MiB, 256 * MiB),
            (MiB, 16 * MiB, 64 * MiB),
            {"GB_per_s": ("GB/s", True)},
            tuple(
                Target(size, "GB_per_s", "≥ 2x arrow-plasma", _ratio_at_least("arrow-plasma", 2))
                for size in (64 * MiB, 256 * MiB)
            ),
        ),
        Scenario(
            "put_get_dict",
            "put + get of a dict of ten numpy arrays",
            "size",
            (100 * MiB,),
            (10 * MiB,),
            {"both_GB_per_s": ("GB/s", True), "get_us": ("µs", False)},
            # Arrow Plasma stores buffers, not Python values (its adapter: arrays only)
            peers=("plasma-coord", "ray", "vineyard", "shared_memory"),
        ),
        Scenario(
            "producers_consumers",
            "N producers → N consumers, 16 KiB objects",
            "N",
            (1, 2, 4),
            (1, 2),
            {"ops_per_s": ("objects/s", True)},
            tuple(_handover_target(n) for n in (1, 2, 4)),
        ),
        Scenario(
            "readers",
            "N reader processes getting 64 B objects",
            "N",
            (1, 2, 4, 8),
            (1, 8),
            {
                "gets_per_s": ("/s", True),
                "store_cpu_s": ("CPU s", False),
                "store_cpu_pct": ("CPU % of wall", False),
            },
            (
                Target(2, "gets_per_s", "≥ 1.5x N=1", _grows(1.5), vs_param=1),
                Target(4, "gets_per_s", "≥ 1.5x N=1", _grows(1.5), vs_param=1),
                Target(8, "gets_per_s", "≥ 1.5x N=1", _grows(1.5), vs_param=1),
                *(_store_cpu_target(n) for n in (1, 2, 4, 8)),
            ),
        ),
        Scenario(
            "memory",
            "store memory with live 64 B objects",
            "objects",
            (100_000,),
            (100_000,),
            {"private_MiB": ("MiB", False), "vmrss_MiB": ("MiB", False)},
            (Target(100_000, "private_MiB", "≤ 100 MiB", _at_most(100.0)),),
            own_store=True,
        ),
        Scenario(
            "scale",
            "store as it grows, 64 B objects",
            "objects",
            (SCALE_FIRST, 30_000, 100_000, 300_000, SCALE_LAST),
            (SCALE_FIRST, 30_000, 100_000),
            {
                "private_MiB": ("MiB", False),
                "shmem_MiB": ("MiB", False),
                "create_ops_per_s": ("ops/s", True),
                "get_ops_per_s": ("ops/s", True),
                "delete_ops_per_s": ("ops/s", True),
            },
            _scale_targets(),
            peers=("plasma-coord", "arrow-plasma"),
            own_store=True,
            memory=scale.store_bytes,
            lines=True,
        ),
        Scenario(
            "rpc",
            "request/reply round trip",
            "call",
            tuple(rpc.CALLS),
            tuple(rpc.CALLS),
            {"p50_us": ("µs", False), "p99_us": ("µs", False)},
            tuple(_rpc_target(call) for call in rpc.CALLS),
            peers=("plasma-coord", "arrow-plasma"),
            labels=rpc.CALLS,
        ),
        Scenario(
            "spill",
            "3x the store's memory streamed through it, spilling",
            "size",
            (MiB, 16 * MiB),
            (MiB,),
            {
                "write_objects_per_s": ("objects/s", True),
                "write_GB_per_s": ("GB/s", True),
                "read_objects_per_s": ("objects/s", True),
                "read_GB_per_s": ("GB/s", True),
                "verified_GB": ("GB", True),
            },
            peers=("plasma-coord", "ray"),
            own_store=True,
            memory=spill.store_bytes,
            exact_memory=True,
            serve_args=("--spill-dir", "{workdir}/spill"),
        ),
    )
}

# Operation counts per repeat: (full, quick).
SMALL_OPS = (5000, 500)
BATCH_OPS = (20_000, 4000)
BATCH_SIZE = 1000
GET_OPS = (3000, 500)
LARGE_BYTES = (512 * MiB, 64 * MiB)  # bytes moved per repeat and size, at least one array
PC_OBJECTS = (5000, 2000)  # per producer (quick: enough for a run of ~0.1 s, not a start-up)
PC_SIZE = 16 * KiB
WARMUP = 50
LARGE_GETS = 20  # get_large: at least this many timed gets per repeat (a get copies nothing)
READERS_OBJECTS = 1000  # readers: distinct objects, far more than a client cache holds (64)
READERS_SIZE = 64


def _budget(quick: bool) -> float:
    """Seconds one repeat of a small-object scenario may take (slow peers stop early)."""
    return 0.5 if quick else 2.0


def _payload(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


def _small_ops(size: int, quick: bool, counts: tuple[int, int]) -> int:
    n = counts[1] if quick else counts[0]
    return max(100, n // 10) if size >= 100 * KiB else n


def create_seal(peer: Peer, size: int, quick: bool) -> Metrics:
    data = _payload(size)
    peer.delete([peer.put_small(data) for _ in range(WARMUP)])
    n = _small_ops(size, quick, SMALL_OPS)
    deadline = time.perf_counter() + _budget(quick)
    keys: list[Any] = []
    t0 = time.perf_counter()
    while len(keys) < n and (len(keys) % 64 or time.perf_counter() < deadline):  # clock / 64 ops
        keys.append(peer.put_small(data))
    elapsed = time.perf_counter() - t0
    peer.delete(keys)
    return {"ops_per_s": len(keys) / elapsed}


def create_seal_batch(peer: Peer, size: int, quick: bool) -> Metrics:
    data = _payload(size)
    n = _small_ops(size, quick, BATCH_OPS)
    peer.delete(peer.put_many([data] * WARMUP))
    elapsed, done = 0.0, 0
    while done < n and elapsed < _budget(quick):
        batch = [data] * min(BATCH_SIZE, n - done)
        t0 = time.perf_counter()
        keys = peer.put_many(batch)
        elapsed += time.perf_counter() - t0
        done += len(keys)
        peer.delete(keys)
    return {"ops_per_s": done / elapsed}


def get(peer: Peer, size: int, quick: bool) -> Metrics:
    key = peer.put_small(_payload(size))
    n = GET_OPS[1] if quick else GET_OPS[0]
    samples = np.empty(n, dtype=np.float64)
    clock = time.perf_counter_ns
    for _ in range(WARMUP):
        view = peer.get(key)
        view[0]
        del view
    deadline = clock() + int(_budget(quick) * 1e9)
    done = 0
    while done < n and (done < 100 or clock() < deadline):
        t0 = clock()
        view = peer.get(key)
        view[0]
        del view
        samples[done] = clock() - t0
        done += 1
    samples = samples[:done]
    peer.delete([key])
    return {
        "p50_us": float(np.percentile(samples, 50)) / 1e3,
        "p99_us": float(np.percentile(samples, 99)) / 1e3,
    }


def _writer(module: str, config: dict[str, Any], size: int, n: int, conn: Any, quick: bool) -> None:
    """get_first's other process: seal ``n`` objects of ``size`` bytes, hand over their keys
    once the store applied the seals, and delete them when the reader is done."""
    peer = load_peer_class(module).child(config)
    keys = peer.put_many([_payload(size)] * n)
    peer.sync()
    conn.send([peer.key_to_bytes(key) for key in keys])
    conn.recv()  # the reader is done with them
    peer.delete(keys)
    peer.close()


def get_first(peer: Peer, module: str, size: int, quick: bool) -> Metrics:
    """Get + read one byte + drop of objects another process (a fresh client) just sealed, each
    got once: no cache and no subscription can serve them. The first object is got untimed,
    so the store's memory is mapped as a long-lived client's would be."""
    n = (200 if quick else 1000) if size < MiB else 100
    ctx = mp.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    writer = ctx.Process(
        target=_writer, args=(module, peer.child_config(), size, n + 1, child_conn, quick)
    )
    writer.start()
    try:
        if not conn.poll(300):
            raise TimeoutError("the writer process sealed nothing within 300 s")
        keys = [peer.key_from_bytes(token) for token in conn.recv()]
        view = peer.get(keys[0])  # warm-up: maps the writer's segment
        view[0]
        del view
        samples = np.empty(n, dtype=np.float64)
        clock = time.perf_counter_ns
        for i, key in enumerate(keys[1:]):
            t0 = clock()
            view = peer.get(key)
            view[0]
            del view
            samples[i] = clock() - t0
        keys.clear()  # drop every reference before the writer deletes (Ray: borrows)
        del key
        conn.send(None)
    finally:
        conn.close()  # on an error above, the writer's recv ends (EOFError) rather than hang
        writer.join(timeout=120)
        if writer.exitcode is None:
            writer.kill()
            writer.join()
    if writer.exitcode:
        raise RuntimeError(f"writer process exited with {writer.exitcode}")
    return {
        "p50_us": float(np.percentile(samples, 50)) / 1e3,
        "p99_us": float(np.percentile(samples, 99)) / 1e3,
    }


def filled_array(size: int) -> np.ndarray:
    """A float64 array of ``size`` bytes (a multiple of 8)."""
    array = np.empty(size // 8, dtype=np.float64)
    array[:] = np.arange(array.size)  # faulted in and not all zeros
    return array


def large_rounds(size: int, quick: bool) -> int:
    """Copies of ``size`` bytes per repeat of a large-array case: ``LARGE_BYTES``, at least one."""
    return max(1, (LARGE_BYTES[1] if quick else LARGE_BYTES[0]) // size)


def put_large(peer: Peer, size: int, quick: bool) -> Metrics:
    array = filled_array(size)
    times = []
    for _ in range(large_rounds(size, quick)):
        t0 = time.perf_counter()
        key = peer.put_array(array)
        times.append(time.perf_counter() - t0)
        peer.delete([key])
    return {"GB_per_s": size / float(np.median(times)) / 1e9}


def put_first(peer: Peer, size: int, quick: bool) -> Metrics:
    """The first put into a fresh store: the store is restarted, given time to get ready
    (``Peer.settle``), then one array is put, timed."""
    array = filled_array(size)
    peer.stop()
    peer.start()
    peer.settle()
    t0 = time.perf_counter()
    key = peer.put_array(array)
    seconds = time.perf_counter() - t0
    peer.delete([key])
    return {"GB_per_s": size / seconds / 1e9}


def get_large(peer: Peer, size: int, quick: bool) -> Metrics:
    """Zero-copy get of an array sealed by the worker's client, by a second client that no
    release-delay cache serves (``Peer.reader``), after one untimed get (the mapping)."""
    array = filled_array(size)
    key = peer.put_array(array)
    peer.sync()
    reader = peer.reader()
    try:
        reader.get_array(key)[-1]
        times = []
        for _ in range(max(LARGE_GETS, large_rounds(size, quick))):
            t0 = time.perf_counter()
            got = reader.get_array(key)
            got[-1]
            times.append(time.perf_counter() - t0)
            if got.nbytes != size or got[-1] != array[-1]:
                raise AssertionError(f"get_array returned {got.nbytes} bytes, wrong contents")
            del got
    finally:
        if reader is not peer:
            reader.close()
    peer.delete([key])
    return {"GB_per_s": size / float(np.median(times)) / 1e9}


def put_get_dict(peer: Peer, size: int, quick: bool) -> Metrics:
    """``size`` bytes as a dict of ten float64 arrays: put it, then get it back and read the
    last element of each array; throughput of the pair, and the get's latency alone."""
    value = {f"a{i}": filled_array(size // 10) for i in range(10)}
    rounds, pair, gets = large_rounds(size, quick), [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        key = peer.put_value(value)
        t1 = time.perf_counter()
        got = peer.get_value(key)
        tails = [got[name][-1] for name in value]
        t2 = time.perf_counter()
        pair.append(t2 - t0)
        gets.append(t2 - t1)
        if sorted(got) != sorted(value) or tails != [a[-1] for a in value.values()]:
            raise AssertionError("get_value returned a different dict")
        del got
        peer.delete([key])
    return {
        "both_GB_per_s": size / float(np.median(pair)) / 1e9,
        "get_us": float(np.median(gets)) * 1e6,
    }


def _producer(
    module: str, config: dict[str, Any], conn: Any, n: int, bars: Any, q: Any, quick: bool
) -> None:
    peer = load_peer_class(module).child(config)
    data = _payload(PC_SIZE)
    bars[0].wait()
    t0 = time.perf_counter()
    deadline = t0 + 3 * _budget(quick)
    keys: list[Any] = []
    while len(keys) < n and time.perf_counter() < deadline:
        key = peer.put_small(data)
        keys.append(key)
        conn.send_bytes(peer.key_to_bytes(key))
    conn.send_bytes(b"")
    q.put((t0, time.perf_counter(), len(keys)))
    bars[1].wait()  # consumers are done: the owner may drop its objects
    peer.delete(keys)
    peer.close()


def _consumer(
    module: str, config: dict[str, Any], conn: Any, n: int, bars: Any, q: Any, quick: bool
) -> None:
    """Get every object whose key arrives on ``conn`` (``quick``: same signature as producers)."""
    peer = load_peer_class(module).child(config)
    bars[0].wait()
    t0 = time.perf_counter()
    got = 0
    while token := conn.recv_bytes():
        view = peer.get(peer.key_from_bytes(token))
        if view[0] != 0:
            raise AssertionError("consumer read wrong bytes")
        del view
        got += 1
    q.put((t0, time.perf_counter(), -got))
    bars[1].wait()
    peer.close()


def _reap(procs: list[Any]) -> None:
    """Join the worker processes, killing those still running after two minutes."""
    for proc in procs:
        proc.join(timeout=120)
        if proc.exitcode is None:
            proc.kill()


def _check_exits(procs: list[Any], what: str) -> None:
    if any(proc.exitcode for proc in procs):
        raise RuntimeError(f"{what} exit codes {[proc.exitcode for proc in procs]}")


def producers_consumers(peer: Peer, module: str, n_pairs: int, quick: bool) -> Metrics:
    ctx = mp.get_context("spawn")
    n = PC_OBJECTS[1] if quick else PC_OBJECTS[0]
    bars = (ctx.Barrier(2 * n_pairs + 1), ctx.Barrier(2 * n_pairs + 1))
    q = ctx.Queue()
    config = peer.child_config()
    procs = []
    for _ in range(n_pairs):
        recv, send = ctx.Pipe(duplex=False)
        for target, conn in ((_producer, send), (_consumer, recv)):
            procs.append(ctx.Process(target=target, args=(module, config, conn, n, bars, q, quick)))
    for p in procs:
        p.start()
    try:
        bars[0].wait(timeout=300)
        spans = [q.get(timeout=300) for _ in procs]
        bars[1].wait(timeout=60)
    finally:
        _reap(procs)
    _check_exits(procs, "producer/consumer")
    produced = sum(count for _, _, count in spans if count > 0)
    if produced != -sum(count for _, _, count in spans if count < 0):
        raise AssertionError(f"consumers did not get all {produced} objects")
    wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    return {"ops_per_s": produced / wall}


def _reader(
    module: str, config: dict[str, Any], tokens: list[bytes], bars: Any, q: Any, quick: bool
) -> None:
    """readers' process: get + read one byte + drop every object, round after round."""
    peer = load_peer_class(module).child(config)
    keys = [peer.key_from_bytes(token) for token in tokens]
    view = peer.get(keys[-1])  # warm-up: maps the store (and is out of any cache by round 1)
    view[0]
    del view
    bars[0].wait()  # connected and mapped
    bars[1].wait()  # the harness has read the store's CPU time
    t0 = time.perf_counter()
    deadline = t0 + 3 * _budget(quick)
    done = 0
    while time.perf_counter() < deadline:
        for i in range(0, len(keys), 100):  # the clock every 100 gets
            for key in keys[i : i + 100]:
                view = peer.get(key)
                if view[0] != 0:
                    raise AssertionError("reader read wrong bytes")
                del view
            done += len(keys[i : i + 100])
            if time.perf_counter() >= deadline:
                break
    q.put((t0, time.perf_counter(), done))
    bars[2].wait()  # the harness has read the store's CPU time again
    peer.close()


def readers(peer: Peer, module: str, n_readers: int, quick: bool) -> Metrics:
    """``n_readers`` processes get the same ``READERS_OBJECTS`` objects of 64 B (sealed by the
    worker beforehand) in order, round after round: aggregate gets/s, and the CPU time the
    store process used meanwhile (its connects and disconnects excluded)."""
    keys = peer.put_many([_payload(READERS_SIZE)] * READERS_OBJECTS)
    peer.sync()
    tokens = [peer.key_to_bytes(key) for key in keys]
    pids = peer.store_pids()
    ctx = mp.get_context("spawn")
    bars = tuple(ctx.Barrier(n_readers + 1) for _ in range(3))
    q = ctx.Queue()
    config = peer.child_config()
    procs = [
        ctx.Process(target=_reader, args=(module, config, tokens, bars, q, quick))
        for _ in range(n_readers)
    ]
    for p in procs:
        p.start()
    try:
        bars[0].wait(timeout=300)
        cpu0, wall0 = cpu_seconds(pids), time.perf_counter()
        bars[1].wait(timeout=60)
        spans = [q.get(timeout=300) for _ in procs]
        cpu1, wall1 = cpu_seconds(pids), time.perf_counter()
        bars[2].wait(timeout=60)
    finally:
        _reap(procs)
    _check_exits(procs, "reader")
    peer.delete(keys)
    gets = sum(count for _, _, count in spans)
    wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    metrics = {"gets_per_s": gets / wall}
    if pids:  # a store process (shared_memory has none)
        cpu = cpu1 - cpu0
        metrics |= {"store_cpu_s": cpu, "store_cpu_pct": 100 * cpu / (wall1 - wall0)}
    return metrics


def memory(peer: Peer, n_objects: int) -> Metrics:
    pids = peer.store_pids() or [os.getpid()]
    data = _payload(64)
    keys = []
    for i in range(0, n_objects, BATCH_SIZE):
        keys.extend(peer.put_many([data] * min(BATCH_SIZE, n_objects - i)))
    mem = store_memory(pids)
    for i in range(0, n_objects, BATCH_SIZE):
        peer.delete(keys[i : i + BATCH_SIZE])
    return {"private_MiB": mem["private"] / MiB, "vmrss_MiB": mem["vmrss"] / MiB}


def _handoff_consumer(module: str, config: dict[str, Any], conn: Any) -> None:
    """handoff's consumer: block on ``conn`` for a key, get the object, read one byte, drop
    it (timed), tell the producer it is done; at the end send the timings."""
    peer = load_peer_class(module).child(config)
    clock = time.perf_counter_ns
    samples: list[int] = []
    warm = True
    while token := conn.recv_bytes():
        key = peer.key_from_bytes(token)
        t0 = clock()
        view = peer.get(key)
        view[0]
        del view
        elapsed = clock() - t0
        if not warm:
            samples.append(elapsed)
        warm = False  # the first get maps the producer's memory: not timed
        del key
        conn.send_bytes(b"done")
    conn.send(samples)
    peer.close()


def _floor_consumer(size: int, conn: Any) -> None:
    """handoff's Python floor: woken as a consumer is, view and read one byte of a mapped
    buffer of ``size`` bytes (no store, no id decoded), timed the same way."""
    buf = mmap.mmap(-1, max(size, 1))
    clock = time.perf_counter_ns
    samples: list[int] = []
    warm = True
    while conn.recv_bytes():
        t0 = clock()
        view = memoryview(buf)[:size]
        view[0]
        del view
        elapsed = clock() - t0
        if not warm:
            samples.append(elapsed)
        warm = False
        conn.send_bytes(b"done")
    conn.send(samples)


def _consumers(ctx: Any, target: Any, args: tuple[Any, ...]) -> tuple[list[Any], list[Any]]:
    """``HANDOFF_CONSUMERS`` processes running ``target(*args, conn)``, started: (pipes, procs)."""
    pipes, procs = [], []
    for _ in range(HANDOFF_CONSUMERS):
        mine, theirs = ctx.Pipe()
        pipes.append(mine)
        procs.append(ctx.Process(target=target, args=(*args, theirs)))
    for proc in procs:
        proc.start()
    return pipes, procs


def _timed_hand_off(
    peer: Peer, pipes: list[Any], procs: list[Any], size: int, spacing: float, n: int
) -> Metrics:
    try:
        metrics = _percentiles(_hand_off(peer, pipes, size, spacing, n))
    finally:
        for conn in pipes:
            conn.close()
        _reap(procs)
    _check_exits(procs, "hand-off consumer")
    return metrics


def handoff(peer: Peer, module: str, case: int, quick: bool, c_consumers: bool = False) -> Metrics:
    """The hand-off pattern: ``HANDOFF_CONSUMERS`` consumer processes, each blocked on a pipe;
    this process, the producer, seals one object at a time (and waits until the store applied
    the seal: plasma-coord ``flush``, the others' seals are acknowledged), sends its key to
    the next consumer, and lets ``spacing`` seconds pass between two objects. Timed: each
    consumer's get + read of one byte + drop, from the moment its pipe read returned. With
    ``c_consumers`` (plasma-coord's worker), the same again right after with consumers
    written in C (:mod:`bench.c_consumer`): the ``c-consumer`` column; and with Python
    consumers that do no more than view and read one byte of a buffer they mapped before
    (:func:`_floor_consumer`): the ``python-floor`` column."""
    size, spacing = HANDOFF_CASES[case]
    n = HANDOFF_OBJECTS[size >= MiB][quick]
    ctx = mp.get_context("spawn")
    pipes, procs = _consumers(ctx, _handoff_consumer, (module, peer.child_config()))
    metrics = _timed_hand_off(peer, pipes, procs, size, spacing, n)
    if not c_consumers:
        return metrics
    pipes, procs = _consumers(ctx, _floor_consumer, (size,))
    floor = _timed_hand_off(peer, pipes, procs, size, spacing, n)
    metrics |= {f"python-floor:{metric}": value for metric, value in floor.items()}
    config = peer.child_config()
    try:
        program = c_consumer.build(peer.workdir)
    except RuntimeError as exc:  # (no compiler or make here: the column stays empty)
        print(f"handoff: no c-consumer column: {exc}", file=sys.stderr, flush=True)
        return metrics
    consumers = [c_consumer.Consumer(program, config["socket"]) for _ in range(HANDOFF_CONSUMERS)]
    try:
        timed = _percentiles(_hand_off(peer, consumers, size, spacing, n))
    finally:
        for consumer in consumers:
            consumer.close()
    return metrics | {f"c-consumer:{metric}": value for metric, value in timed.items()}


def _hand_off(peer: Peer, conns: list[Any], size: int, spacing: float, n: int) -> list[int]:
    """The producer's side of handoff, over ``conns`` (one per consumer: the calls of a
    ``multiprocessing.Connection``): the consumers' timings (ns)."""
    payload = _payload(size)
    next_at = time.perf_counter()
    for i in range(n + len(conns)):  # one untimed warm-up object per consumer
        key = peer.put_small(payload)
        peer.sync()
        conn = conns[i % len(conns)]
        conn.send_bytes(peer.key_to_bytes(key))
        if not conn.poll(120):
            raise TimeoutError("a hand-off consumer did not get its object within 120 s")
        conn.recv_bytes()
        peer.delete([key])
        del key
        next_at += spacing
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        else:
            next_at = time.perf_counter()
    for conn in conns:
        conn.send_bytes(b"")
    samples: list[int] = []
    for conn in conns:
        if not conn.poll(120):
            raise TimeoutError("a hand-off consumer sent no timings within 120 s")
        samples.extend(conn.recv())
    return samples


def _percentiles(samples: list[int]) -> Metrics:
    timed = np.asarray(samples, dtype=np.float64)
    return {
        "p50_us": float(np.percentile(timed, 50)) / 1e3,
        "p99_us": float(np.percentile(timed, 99)) / 1e3,
    }


def run(peer: Peer, module: str, name: str, params: dict[str, Any]) -> Metrics:
    """One repeat of scenario ``name`` at ``params["param"]`` (called by the worker loop);
    ``params["baselines"]``: also measure the scenario's baseline column (rpc's echo)."""
    param, quick = int(params["param"]), bool(params.get("quick", False))
    if name == "producers_consumers":
        return producers_consumers(peer, module, param, quick)
    if name == "readers":
        return readers(peer, module, param, quick)
    if name == "get_first":
        return get_first(peer, module, param, quick)
    if name == "handoff":
        return handoff(peer, module, param, quick, bool(params.get("baselines", False)))
    if name == "memory":
        return memory(peer, param)
    if name == "scale":
        return scale.scale(peer, param, quick)
    if name == "spill":
        return spill.spill(peer, param)
    if name == "rpc":
        return rpc.rpc(peer, param, quick, echo=bool(params.get("baselines", False)))
    simple = {
        "create_seal": create_seal,
        "create_seal_batch": create_seal_batch,
        "get": get,
        "put_large": put_large,
        "put_first": put_first,
        "get_large": get_large,
        "put_get_dict": put_get_dict,
    }
    if name not in simple:
        raise ValueError(f"unknown scenario {name!r}")
    return simple[name](peer, param, quick)
