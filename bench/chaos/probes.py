"""Observations: /proc samples of a process and the store's accounting of its bytes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers.base import read_memory

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def fd_targets(pid: int) -> list[str]:
    """What each open fd of ``pid`` points at (fds closed while we look are skipped)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue
    return out


def socket_count(pid: int) -> int:
    return _sockets(fd_targets(pid))


def _sockets(targets: list[str]) -> int:
    return sum(t.startswith("socket:") for t in targets)


def private_bytes(pid: int) -> int | None:
    """Private_Clean + Private_Dirty from /proc/PID/smaps_rollup (None where it is missing)."""
    path = Path(f"/proc/{pid}/smaps_rollup")
    if not path.exists():
        return None
    total = 0
    for line in path.read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Private_Clean", "Private_Dirty"):
            total += int(value.split()[0]) * 1024
    return total


def sample(pid: int) -> dict[str, Any]:
    """RSS, shared and private memory, open fds and sockets, CPU seconds of ``pid``."""
    memory = read_memory(pid)
    targets = fd_targets(pid)
    return {
        "rss": memory.get("VmRSS", 0),
        "shmem": memory.get("RssShmem", 0),
        "private": private_bytes(pid),
        "fds": len(targets),
        "sockets": _sockets(targets),
        "cpu_s": cpu_seconds(pid),
    }


# ---------------------------------------------------------------- store accounting


@dataclass
class Balance:
    """The store's books: every used byte must belong to a live object or an arena tail.

    Only conclusive while no other client is connected: an object deleted while referenced
    is in the table (``objects``) but neither listed nor free until its references go.
    """

    used: int
    objects: int  # in the object table (also those whose delete waits for a reference)
    listed: int  # visible objects
    unsealed: int
    clients: int
    subscribers: int
    get_waiters: int
    create_waiters: int
    arena_bytes: int
    leaked_bytes: int  # used bytes not accounted to a listed object or an arena

    @classmethod
    def empty(cls, clients: int) -> Balance:
        """The books of a store with no object and ``clients`` idle clients."""
        return cls(0, 0, 0, 0, clients, 0, 0, 0, 0, 0)

    @classmethod
    def of(cls, stats: dict[str, Any], listing: list[Any], alignment: int) -> Balance:
        """From ``stats()`` and ``list()`` replies taken with nothing else talking; each
        object in memory (not spilled to disk), and each of its copies on other nodes, takes
        ``max(1, data + metadata)`` bytes rounded up to ``alignment``."""
        mask = alignment - 1
        accounted = sum(
            ((max(1, o.data_size + o.metadata_size) + mask) & ~mask) * (1 + len(o.replicas))
            for o in listing
            if o.state != "spilled"
        )
        return cls(
            used=stats["used"],
            objects=stats["objects"],
            listed=len(listing),
            unsealed=sum(o.state == "created" for o in listing),
            clients=len(stats["clients"]),
            subscribers=stats["subscribers"],
            get_waiters=stats["get_waiters"],
            create_waiters=stats["create_waiters"],
            arena_bytes=stats["arena_bytes"],
            leaked_bytes=stats["used"] - stats["arena_bytes"] - accounted,
        )

    def differences(self, baseline: Balance, ignore: tuple[str, ...] = ()) -> list[str]:
        """How this differs from ``baseline`` (empty when it is back to it, with no leak)."""
        out = [
            f"{name} {getattr(self, name)} (baseline {getattr(baseline, name)})"
            for name in self.__dataclass_fields__
            if name not in (*ignore, "leaked_bytes")
            and getattr(self, name) != getattr(baseline, name)
        ]
        if self.leaked_bytes:
            out.append(f"{self.leaked_bytes} leaked bytes (used, not in any object or arena)")
        return out
