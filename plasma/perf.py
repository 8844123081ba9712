"""Per-task perf samples (internal): counters, NUMA locality and a bounded series store.

:class:`TaskSampler` opens the counter set on a task's pid; :meth:`TaskSampler.sample`
returns a :class:`PerfSample` (counters plus locality from ``/proc/PID/numa_maps``).
:func:`parse_numa_maps` and :class:`SampleRing` are pure and do no I/O.
The coordinator calls samplers periodically from a worker thread.
"""

from __future__ import annotations

import errno
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import msgspec

from plasma.linux.perf import DEFAULT_EVENTS, CounterSet, Event

BASE_PAGE_SIZE = 4096
_NODE_COUNT = re.compile(r"^N(\d+)=(\d+)$")


class Locality(msgspec.Struct, frozen=True):
    """Resident pages per NUMA node (in 4 KiB units, hugepages weighted by their size)."""

    pages_per_node: dict[int, int]
    home_node: int | None
    local_fraction: float | None  # share of pages on home_node; None if unknown or no pages

    @property
    def total_pages(self) -> int:
        return sum(self.pages_per_node.values())


class PerfSample(msgspec.Struct, frozen=True):
    """One sample of a task: scaled counters, unsupported events with reasons, locality."""

    pid: int
    time: float  # wall clock, seconds since the epoch
    counters: dict[str, int | None]
    unsupported: dict[str, str]
    locality: Locality | None  # None once the task has exited


def parse_numa_maps(text: str, home_node: int | None = None) -> Locality:
    """Locality from the text of ``/proc/PID/numa_maps``.

    Each ``N<node>=<count>`` counts pages of the line's ``kernelpagesize_kB`` (4 kB if
    absent), so a 2 MiB hugepage weighs 512 base pages.
    """
    pages: dict[int, int] = {}
    for line in text.splitlines():
        weight = 1
        counts: list[tuple[int, int]] = []
        for token in line.split()[2:]:
            if token.startswith("kernelpagesize_kB="):
                weight = max(1, int(token.partition("=")[2]) * 1024 // BASE_PAGE_SIZE)
            elif m := _NODE_COUNT.match(token):
                counts.append((int(m.group(1)), int(m.group(2))))
        for node, count in counts:
            pages[node] = pages.get(node, 0) + count * weight
    total = sum(pages.values())
    fraction = pages.get(home_node, 0) / total if home_node is not None and total else None
    return Locality(dict(sorted(pages.items())), home_node, fraction)


def numa_locality(pid: int, home_node: int | None, proc: Path = Path("/proc")) -> Locality:
    """Locality of process ``pid``; ProcessLookupError if it is gone."""
    try:
        text = (proc / str(pid) / "numa_maps").read_text()
    except FileNotFoundError:
        missing = f"no process {pid} (or no NUMA support: no {proc}/{pid}/numa_maps)"
        raise ProcessLookupError(errno.ESRCH, missing) from None
    return parse_numa_maps(text, home_node)


class TaskSampler:
    """Perf counters and locality of one task; ``sample()`` as often as needed, then ``close()``.

    ``enable_on_exec`` counts from the task's next execve (for a forked, not yet exec'd
    child); ``home_node`` is the node the task was placed on, for the local fraction.
    """

    def __init__(
        self,
        pid: int,
        home_node: int | None = None,
        *,
        events: Iterable[Event] = DEFAULT_EVENTS,
        enable_on_exec: bool = False,
    ) -> None:
        self.pid = pid
        self.home_node = home_node
        self._counters = CounterSet(pid, events, enable_on_exec=enable_on_exec)

    def sample(self) -> PerfSample:
        """Read every counter now; locality is None if the task has already exited."""
        now = time.time()
        counters: dict[str, int | None] = {}
        unsupported: dict[str, str] = {}
        for counter in self._counters.read():
            counters[counter.name] = counter.value
            if counter.unsupported is not None:
                unsupported[counter.name] = counter.unsupported
        try:
            locality: Locality | None = numa_locality(self.pid, self.home_node)
        except (ProcessLookupError, PermissionError):
            locality = None
        return PerfSample(self.pid, now, counters, unsupported, locality)

    def close(self) -> None:
        self._counters.close()

    def __enter__(self) -> TaskSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SampleRing:
    """The last ``maxlen`` samples of each task, keyed by task name; thread-safe."""

    def __init__(self, maxlen: int) -> None:
        if maxlen <= 0:
            raise ValueError(f"SampleRing maxlen must be positive, got {maxlen}")
        self.maxlen = maxlen
        self._series: dict[str, deque[PerfSample]] = {}
        self._lock = threading.Lock()

    def append(self, task: str, sample: PerfSample) -> None:
        """Record ``sample`` for ``task``, dropping its oldest beyond ``maxlen``."""
        with self._lock:
            series = self._series.get(task)
            if series is None:
                series = self._series[task] = deque(maxlen=self.maxlen)
            series.append(sample)

    def series(self, task: str) -> list[PerfSample]:
        """Samples of ``task``, oldest first (empty if unknown)."""
        with self._lock:
            return list(self._series.get(task, ()))

    def latest(self, task: str) -> PerfSample | None:
        with self._lock:
            series = self._series.get(task)
            return series[-1] if series else None

    def tasks(self) -> list[str]:
        with self._lock:
            return list(self._series)

    def discard(self, task: str) -> None:
        """Forget ``task``'s series."""
        with self._lock:
            self._series.pop(task, None)
