"""``python -m bench.bounds {parked,starve}``: what one client can make a coordinator do
(issue 27), before and after, on a fresh coordinator each.

- ``parked``: 50 waiting Gets of 40,000 ids on one connection: how many are accepted and how
  much the coordinator's RSS grows.
- ``starve``: a 64 MiB store with 10 MiB held and a 60 MiB create(timeout=None) waiting: how
  many of 600 puts of 200 KB fail StoreFull (and how many without the waiter).

Run it against another tree with ``cd TREE && PYTHONPATH=TREE python -m bench.bounds ...``
(from here, ``python -m`` finds this tree's ``plasma`` first: the current directory goes
ahead of ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

import plasma
from bench.chaos.probes import sample
from plasma import protocol as p
from plasma.errors import StoreFull
from tests.conftest import wait_until
from tests.helpers import RawClient


@contextmanager
def coordinator(*args: str) -> Iterator[tuple[str, int]]:
    """A coordinator in a temporary directory: (socket path, pid)."""
    with tempfile.TemporaryDirectory(prefix="plasma-bounds-") as tmp:
        sock = os.path.join(tmp, "s.sock")
        argv = [sys.executable, "-m", "plasma", "serve", "-s", sock, *args]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None and proc.stdout.readline().startswith(b"ready")
            yield sock, proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def parked() -> None:
    with coordinator("--memory", "256MiB", "--max-frame", "4MiB") as (sock, pid):
        c = RawClient(sock)
        c.connect()
        before = sample(pid)["rss"]
        for _ in range(50):
            c.send(p.Get(seq=0, ids=[secrets.token_bytes(20) for _ in range(40_000)], timeout=None))
        c.send(p.Stats(seq=0))  # (answered after everything sent before it)
        refused, last = 0, ""
        while not isinstance(reply := c.receive(), p.StatsReply):
            if isinstance(reply, p.Error):
                refused, last = refused + 1, reply.message
        grew = (sample(pid)["rss"] - before) / 2**20
        print(
            f"parked: {50 - refused} of 50 Gets of 40,000 ids accepted, {refused} refused; "
            f"coordinator RSS +{grew:.1f} MiB"
        )
        if last:
            print(f"  refusal: {last}")


def starve() -> None:
    with coordinator("--memory", "64MiB", "--segment-size", "16MiB") as (sock, _):
        for waiter in (False, True):
            holder = plasma.connect(sock)
            holder.create(plasma.ObjectID.from_random(), 10 << 20)  # held, unsealed
            big = plasma.connect(sock) if waiter else None
            if big is not None:
                threading.Thread(target=_wait_for_room, args=(big,), daemon=True).start()
                wait_until(_waiting(holder), what="the waiter")
            with plasma.connect(sock) as c:
                failed = 0
                for _ in range(600):
                    try:
                        c.put(np.zeros(200_000 // 8))
                    except StoreFull:
                        failed += 1
                print(f"starve: waiter={waiter}: {failed} of 600 puts of 200 KB failed StoreFull")
                c.delete([o for o, i in c.list().items() if i["state"] == "sealed"])
            holder.close()
            if big is not None:
                big.close()


def _waiting(client: plasma.Client) -> Callable[[], bool]:
    return lambda: client.stats()["create_waiters"] == 1


def _wait_for_room(client: plasma.Client) -> None:
    with contextlib.suppress(plasma.PlasmaError):  # (its connection closes under it at the end)
        client.create(plasma.ObjectID.from_random(), 60 << 20, timeout=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bounds", description=__doc__)
    parser.add_argument("scenario", choices=["parked", "starve"], nargs="+")
    for scenario in parser.parse_args(argv).scenario:
        {"parked": parked, "starve": starve}[scenario]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
