"""``python -m bench.tensors [--quick]``: torch tensors from one process to another, side by side.

What a torch user hands between processes: one large tensor (256 MiB of float32; quick 16 MiB)
and a ``state_dict`` (16 tensors of 4 MiB = 64 MiB; quick 16 of 256 KiB), through

- ``plasma-coord``: ``client.put(value)`` in the producer, ``client.get_object(id)`` in the
  consumer (a coordinator of its own, 1 GiB);
- ``torch.multiprocessing``: a ``torch.multiprocessing.SimpleQueue`` (torch's reductions: each
  storage moved into shared memory by ``share_memory_()`` and sent as a file descriptor). The
  simple queue pickles in ``put`` itself (``Queue.put`` hands that to a feeder thread), so the
  put and the get can be timed apart; a tensor already in shared memory is not copied again,
  so each round puts a fresh clone (made untimed);
- ``ray``: ``ray.put`` / ``ray.get`` between two drivers of one local cluster (1 GiB object
  store), ``ray-zero-copy`` the same with ``RAY_ENABLE_ZERO_COPY_TORCH_TENSORS=1`` in both
  (Ray runs from its own venv, ``bench/.peers/ray-torch``: ray 2.x, numpy, torch 2.13.0).

Each system runs in a driver process of its own (the producer) that spawns its consumer.
A round: the producer times ``put`` and sends the key over a pipe; the consumer times the
get (until it holds the value: tensors it can index), then, separately, a first read of every
byte (numpy's sum of every tensor: the pages' first touch in this process), which checks the
values, drops the value and times a second get of the same object (``get_again``: what the
``get_large`` scenario of ``bench.run`` times; not for the queue, whose item is got once), and
answers; the producer deletes the object. Medians of ``--rounds`` rounds (11; quick 3) after
one untimed. Two copies of the same bytes in one thread are the put's baselines, each
timed once a round after the put in the plasma-coord driver (in turn with it, as
``bench.run`` measures it): ``memcpy``, ``numpy.copyto`` into a pre-faulted numpy array
(numpy asks for transparent huge pages for an array this large: where the kernel gives
them, 2 MiB pages), and ``memcpy-shm``, the same into a pre-faulted shared mapping of a
memfd, the store's kind of memory (4 KiB pages unless the host enables huge pages for
shared memory): a put compared with a copy into the same kind of pages. GB/s = bytes /
median time. Prints a table; ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.install import InstallError, peer_python
from bench.peers import PeerSpec

MiB = 1 << 20
RAY = PeerSpec(
    "ray-torch",
    "bench.tensors",
    ("ray==2.*", "numpy", "torch==2.13.0"),
    "ray.put / ray.get of torch tensors",
)
SYSTEMS = ("plasma-coord", "torch.multiprocessing", "ray", "ray-zero-copy")
STORE = 1 << 30
REPO = Path(__file__).resolve().parent.parent


def cases(quick: bool) -> dict[str, tuple[str, int, int]]:
    """Case name -> (kind, tensors, bytes each)."""
    if quick:
        return {
            "tensor 16 MiB": ("tensor", 1, 16 * MiB),
            "state_dict 4 MiB": ("dict", 16, MiB // 4),
        }
    return {"tensor 256 MiB": ("tensor", 1, 256 * MiB), "state_dict 64 MiB": ("dict", 16, 4 * MiB)}


def make_value(kind: str, count: int, nbytes: int) -> Any:
    import torch

    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(nbytes // 4, generator=gen) for _ in range(count)]
    if kind == "tensor":
        return tensors[0].reshape(64, -1)
    return {f"layer{i}.weight": t.reshape(1024, -1) for i, t in enumerate(tensors)}


def tensors_of(value: Any) -> list[Any]:
    return list(value.values()) if isinstance(value, dict) else [value]


def checksums(tensors: list[Any]) -> list[float]:
    """numpy's float32 sum of each tensor: reads every byte once, in one thread (torch's
    reductions start OpenMP threads, whose spinning on a loaded machine is all one measures)."""
    return [float(t.numpy().sum()) for t in tensors]


# ---------------------------------------------------------------- one system in one process


class System:
    """The producer's side; ``consumer_side`` builds the consumer's in its process."""

    def put(self, value: Any) -> Any:
        raise NotImplementedError

    def done(self, key: Any) -> None:
        """The consumer dropped what it got: free the object."""

    def close(self) -> None:
        pass


class PlasmaCoord(System):
    def __init__(self, workdir: str) -> None:
        self.socket = os.path.join(workdir, "plasma.sock")
        serve = [sys.executable, "-m", "plasma", "serve", "--socket", self.socket]
        self.server = subprocess.Popen(
            [*serve, "--memory", str(STORE)], stdout=subprocess.PIPE, text=True
        )
        assert self.server.stdout is not None
        line = self.server.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"plasma-coord serve said {line!r}")
        import plasma

        self.client = plasma.connect(self.socket)

    def put(self, value: Any) -> Any:
        return self.client.put(value).binary()

    def done(self, key: Any) -> None:
        import plasma

        self.client.delete([plasma.ObjectID(key)])

    def close(self) -> None:
        self.client.close()
        self.server.terminate()
        self.server.wait(30)

    def config(self) -> dict[str, Any]:
        return {"socket": self.socket}


class TorchQueue(System):
    def __init__(self, ctx: Any) -> None:
        import torch.multiprocessing as tmp

        self.queue = tmp.get_context("spawn").SimpleQueue()

    def put(self, value: Any) -> Any:
        self.queue.put(value)
        return None

    def config(self) -> dict[str, Any]:
        return {"queue": self.queue}


class Ray(System):
    def __init__(self) -> None:
        import ray

        self.ray = ray
        context = ray.init(
            num_cpus=1,
            include_dashboard=False,
            object_store_memory=STORE,
            log_to_driver=False,
            configure_logging=False,
        )
        self.address = context.address_info["gcs_address"]
        self.refs: dict[bytes, Any] = {}

    def put(self, value: Any) -> Any:
        import ray.cloudpickle

        ref = self.ray.put(value)
        key = ray.cloudpickle.dumps(ref)
        self.refs[key] = ref
        return key

    def done(self, key: Any) -> None:
        del self.refs[key]

    def close(self) -> None:
        self.ray.shutdown()

    def config(self) -> dict[str, Any]:
        return {"address": self.address}


def consumer_side(system: str, config: dict[str, Any]) -> Callable[[Any], Any]:
    """In the consumer: how to get a value from its key."""
    if system == "plasma-coord":
        import plasma

        client = plasma.connect(config["socket"])
        return lambda key: client.get_object(plasma.ObjectID(key))
    if system == "torch.multiprocessing":
        queue = config["queue"]
        return lambda key: queue.get()
    import ray
    import ray.cloudpickle

    ray.init(address=config["address"], log_to_driver=False, configure_logging=False)
    return lambda key: ray.get(ray.cloudpickle.loads(key))


def consume(system: str, config: dict[str, Any], conn: Any) -> None:
    """The consumer process: for each key received, time the get and the first read."""
    get = consumer_side(system, config)
    clock = time.perf_counter
    while (msg := conn.recv()) is not None:
        key, expected = msg
        t0 = clock()
        value = get(key)
        tensors = tensors_of(value)
        t1 = clock()
        ok = checksums(tensors) == expected
        t2 = clock()
        del value, tensors
        again = None
        if system != "torch.multiprocessing":  # (a queue's item is got once)
            t3 = clock()
            value = get(key)
            again = clock() - t3
            del value
        conn.send((t1 - t0, t2 - t1, again, ok))


def drive(system: str, case: str, quick: bool, rounds: int) -> dict[str, Any]:
    """Run ``rounds`` (+1 untimed) rounds of ``case`` through ``system``; its figures."""
    kind, count, nbytes = cases(quick)[case]
    value = make_value(kind, count, nbytes)
    expected = checksums(tensors_of(value))
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-tensors-") as workdir:
        made: System = (
            PlasmaCoord(workdir)
            if system == "plasma-coord"
            else TorchQueue(ctx)
            if system == "torch.multiprocessing"
            else Ray()
        )
        ours, theirs = ctx.Pipe()
        consumer = ctx.Process(target=consume, args=(system, made.config(), theirs))  # type: ignore[attr-defined]
        consumer.start()
        puts, gets, reads, agains, wrong = [], [], [], [], 0
        copies: dict[str, list[float]] = {"memcpy": [], "memcpy_shm": []}
        memcpys = (
            {"memcpy": _memcpy(value), "memcpy_shm": _memcpy(value, shared=True)}
            if system == "plasma-coord"
            else {}
        )
        try:
            for i in range(rounds + 1):
                source = value if system != "torch.multiprocessing" else _fresh(value)
                t0 = time.perf_counter()
                key = made.put(source)
                put_time = time.perf_counter() - t0
                ours.send((key, expected))
                get_time, read_time, again, ok = ours.recv()
                made.done(key)
                del source
                wrong += not ok
                for name, memcpy in memcpys.items():  # in turn with the puts, as bench.run
                    copies[name].append(memcpy())
                if i:
                    puts.append(put_time)
                    gets.append(get_time)
                    reads.append(read_time)
                    if again is not None:
                        agains.append(again)
            ours.send(None)
            consumer.join(60)
        finally:
            if consumer.is_alive():
                consumer.kill()
            made.close()
    total = count * nbytes
    figures = {"put": puts, "get": gets, "read": reads, "wrong": wrong, "bytes": total}
    if agains:
        figures["get_again"] = agains
    for name, times in copies.items():
        if times:
            figures[name] = times[1:]
    return figures


def _fresh(value: Any) -> Any:
    """A copy in private memory (torch.multiprocessing moves a put tensor into shared memory)."""
    if isinstance(value, dict):
        return {k: t.clone() for k, t in value.items()}
    return value.clone()


def _memcpy(value: Any, shared: bool = False) -> Callable[[], float]:
    """A timed copy of the bytes of ``value``'s tensors into a pre-faulted buffer, one
    thread: a numpy array, or with ``shared`` a shared mapping of a memfd."""
    import mmap

    import numpy as np

    sources = [t.numpy().reshape(-1).view(np.uint8) for t in tensors_of(value)]
    size = sum(s.size for s in sources)
    if shared:
        fd = os.memfd_create("bench-memcpy", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        dest = np.frombuffer(mmap.mmap(fd, size), dtype=np.uint8)  # (kept until exit)
        os.close(fd)
        dest[:] = 1  # pre-faulted
    else:
        dest = np.ones(size, dtype=np.uint8)  # pre-faulted

    def timed() -> float:
        t0 = time.perf_counter()
        pos = 0
        for s in sources:
            np.copyto(dest[pos : pos + s.size], s)
            pos += s.size
        return time.perf_counter() - t0

    return timed


# ---------------------------------------------------------------- the harness


def run_driver(system: str, case: str, quick: bool, rounds: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    python = sys.executable
    if system.startswith("ray"):
        python = str(peer_python(RAY))
        env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        if system == "ray-zero-copy":
            env["RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"] = "1"
    argv = [python, "-m", "bench.tensors", "--driver", system, "--case", case]
    argv += ["--rounds", str(rounds), *(["--quick"] if quick else [])]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{system} failed ({done.returncode}): {done.stderr[-1500:]}")
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def summary(figures: dict[str, Any]) -> dict[str, float]:
    size = figures["bytes"]
    out = {}
    for what in ("put", "get", "get_again", "read", "memcpy", "memcpy_shm"):
        if what in figures:
            median = statistics.median(figures[what])
            out[f"{what}_ms"] = median * 1e3
            out[f"{what}_GB_per_s"] = size / median / 1e9
    out["wrong"] = figures["wrong"]
    return out


def table(results: dict[str, dict[str, dict[str, float]]], systems: list[str]) -> str:
    baselines = ("memcpy", "memcpy_shm")
    rows = [
        "| case | metric | " + " | ".join(systems) + " | memcpy | memcpy-shm |",
        "| --- | --- |" + " ---: |" * (len(systems) + len(baselines)),
    ]
    for case, by_system in results.items():
        ours = by_system.get("plasma-coord", {})
        for metric, better_high in [
            ("put_GB_per_s", True),
            ("put_ms", False),
            ("get_GB_per_s", True),
            ("get_ms", False),
            ("get_again_ms", False),
            ("read_GB_per_s", True),
        ]:
            cells: list[str] = []
            for system in systems:
                value = by_system.get(system, {}).get(metric)
                if value is None:
                    cells.append(str(by_system.get(system, {}).get("error", "-")))
                    continue
                cell = f"{value:,.3g}" if value < 100 else f"{value:,.0f}"
                mine = ours.get(metric)
                if system != "plasma-coord" and mine:
                    ratio = mine / value if better_high else value / mine
                    cell += f" ({ratio:.2f}x)"
                cells.append(cell)
            for baseline in baselines:
                copy = (
                    ours.get(metric.replace("put", baseline)) if metric.startswith("put") else None
                )
                mem = "-" if copy is None else f"{copy:,.3g}"
                if copy and metric == "put_GB_per_s":
                    mem += f" ({ours[metric] / copy:.2f}x)"
                cells.append(mem)
            rows.append(f"| {case} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=0, help="default: 11 (quick 3)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 11)
    if args.driver:
        print("RESULT " + json.dumps(drive(args.driver, args.case, args.quick, rounds)), flush=True)
        return 0
    systems = args.systems.split(",")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for case in cases(args.quick):
        results[case] = {}
        for system in systems:
            print(f"[tensors] {case}: {system}", file=sys.stderr, flush=True)
            try:
                results[case][system] = summary(run_driver(system, case, args.quick, rounds))
            except (InstallError, RuntimeError, subprocess.TimeoutExpired) as exc:
                results[case][system] = {"error": f"failed: {str(exc)[:200]}"}
    print(f"Command: python -m bench.tensors {' '.join(sys.argv[1:])}")
    print(f"{rounds} rounds, medians; (N.NNx): how many times better plasma-coord is\n")
    print(table(results, systems))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
