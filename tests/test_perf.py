"""Perf counters on real processes, numa_maps locality and the sample ring."""

from __future__ import annotations

import errno
import os
import sys
import textwrap
from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from plasma.linux import perf as perf_event
from plasma.linux.perf import HARDWARE_EVENTS, SOFTWARE_EVENTS, CounterSet
from plasma.perf import (
    Locality,
    PerfSample,
    SampleRing,
    TaskSampler,
    numa_locality,
    parse_numa_maps,
)
from tests.helpers import HARDWARE_COUNTERS, HAS_CPU_PMU, NO_HARDWARE_COUNTERS, NO_SUCH_PID

TOUCH_64_MIB = textwrap.dedent(
    """
    import mmap, os
    size = 64 << 20
    m = mmap.mmap(-1, size)
    m.madvise(mmap.MADV_NOHUGEPAGE)  # one fault per 4 KiB page, whatever THP says
    for offset in range(0, size, mmap.PAGESIZE):
        m[offset] = 1
    os.write(1, b"touched")
    os.read(0, 1)  # stay alive until the parent has sampled
    """
)


class GatedChild:
    """A forked child that execs ``python -c script`` only when ``start()`` is called."""

    def __init__(self, script: str) -> None:
        gate_r, self._gate_w = os.pipe()
        stdin_r, self.stdin = os.pipe()
        self.stdout, stdout_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # child
            try:
                os.read(gate_r, 1)
                os.dup2(stdin_r, 0)
                os.dup2(stdout_w, 1)
                os.execv(sys.executable, [sys.executable, "-c", script])
            finally:
                os._exit(127)
        for fd in (gate_r, stdin_r, stdout_w):
            os.close(fd)

        self.returncode: int | None = None

    def start(self) -> None:
        os.write(self._gate_w, b"x")

    def wait(self) -> int:
        """Let the child run to its end (stdin EOF) and reap it; idempotent."""
        if self.returncode is None:
            for fd in (self._gate_w, self.stdin, self.stdout):
                os.close(fd)
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


@pytest.fixture
def touching_child() -> Iterator[GatedChild]:
    child = GatedChild(TOUCH_64_MIB)
    try:
        yield child
    finally:
        child.wait()


def test_counters_of_a_child_touching_64_mib(touching_child: GatedChild) -> None:
    with TaskSampler(touching_child.pid, home_node=0, enable_on_exec=True) as sampler:
        before = sampler.sample()
        assert before.counters["page-faults"] == 0  # disabled until exec
        touching_child.start()
        assert os.read(touching_child.stdout, 16) == b"touched"
        live = sampler.sample()
        assert 15_000 <= (live.counters["page-faults"] or 0) <= 20_000  # 16,384 pages + startup
        assert (live.counters["task-clock"] or 0) > 1_000_000  # ns
        assert live.counters["context-switches"] is not None
        assert live.counters["cpu-migrations"] is not None
        assert live.locality is not None
        assert live.locality.total_pages >= 16_384 and live.locality.local_fraction == 1.0
        assert live.pid == touching_child.pid and live.time >= before.time
        assert touching_child.wait() == 0
        final = sampler.sample()  # counters outlive the task; locality does not
        assert (final.counters["page-faults"] or 0) >= (live.counters["page-faults"] or 0)
        assert final.locality is None


@pytest.mark.skipif(not HARDWARE_COUNTERS, reason=NO_HARDWARE_COUNTERS)
def test_hardware_events_count_where_the_kernel_counts_them() -> None:
    with TaskSampler(os.getpid()) as sampler:
        assert sum(range(1_000_000)) > 0  # work to count
        sample = sampler.sample()
    for event in HARDWARE_EVENTS:
        assert event.name not in sample.unsupported, sample.unsupported
    assert (sample.counters["cycles"] or 0) > 1_000_000
    assert (sample.counters["instructions"] or 0) > 1_000_000
    assert (sample.counters["llc-references"] or 0) > 0


@pytest.mark.skipif(HAS_CPU_PMU, reason="this machine has a hardware PMU")
def test_hardware_events_are_unsupported_with_a_reason() -> None:
    with TaskSampler(os.getpid()) as sampler:
        sample = sampler.sample()
    for event in HARDWARE_EVENTS:
        assert sample.counters[event.name] is None  # never a zero
        assert "not supported" in sample.unsupported[event.name]
    for event in SOFTWARE_EVENTS:
        assert event.name not in sample.unsupported
        assert sample.counters[event.name] is not None


def test_permission_denied_is_reported_with_the_paranoid_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def denied(attr: perf_event.PerfEventAttr, pid: int, *args: int) -> int:
        calls.append(attr.flags)
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(perf_event, "perf_event_open", denied)
    counters = CounterSet(os.getpid(), SOFTWARE_EVENTS)
    assert counters.names == []
    for counter in counters.read():
        assert counter.value is None
        assert counter.unsupported is not None
        assert "permission denied (EACCES)" in counter.unsupported
        assert "perf_event_paranoid=" in counter.unsupported
    # each event was retried restricted to user space, as perf does under paranoid >= 2
    assert len(calls) == 2 * len(SOFTWARE_EVENTS)
    assert all(flags & perf_event.ATTR_EXCLUDE_KERNEL for flags in calls[1::2])


def test_unexpected_open_errors_propagate_and_close_opened_fds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_open = perf_event.perf_event_open
    opened: list[int] = []

    def fail_second(attr: perf_event.PerfEventAttr, pid: int, *args: int) -> int:
        if opened:
            raise OSError(errno.EMFILE, "Too many open files")
        opened.append(real_open(attr, pid))
        return opened[-1]

    monkeypatch.setattr(perf_event, "perf_event_open", fail_second)
    with pytest.raises(OSError, match="Too many") as info:
        CounterSet(os.getpid(), SOFTWARE_EVENTS)
    assert info.value.errno == errno.EMFILE
    with pytest.raises(OSError):
        os.fstat(opened[0])  # closed on the way out


def test_missing_process() -> None:
    with pytest.raises(ProcessLookupError):
        TaskSampler(NO_SUCH_PID)
    with pytest.raises(ProcessLookupError):
        numa_locality(NO_SUCH_PID, 0)


@given(
    value=st.integers(0, 2**48),
    running=st.integers(1, 2**40),
    extra=st.integers(0, 2**40),
)
def test_scale_extrapolates_multiplexed_counts(value: int, running: int, extra: int) -> None:
    enabled = running + extra
    scaled = perf_event.scale(value, enabled, running)
    assert scaled is not None and scaled >= value
    assert abs(scaled - value * enabled / running) <= 1 + value * enabled / running * 1e-12
    assert perf_event.scale(value, enabled, enabled) == value


def test_never_scheduled_counter_is_none_not_zero() -> None:
    raw = (0).to_bytes(8, sys.byteorder) + (500).to_bytes(8, sys.byteorder) + bytes(8)
    counter = perf_event.parse_read("cycles", raw)
    assert counter.value is None and counter.unsupported and "multiplexed" in counter.unsupported
    with pytest.raises(ValueError, match="24"):
        perf_event.parse_read("cycles", b"short")


# ---------------------------------------------------------------- numa_maps

NUMA_MAPS = """\
55d4c3a00000 default file=/usr/bin/python3.11 mapped=100 N0=60 N1=40 kernelpagesize_kB=4
7f0000000000 bind:1 anon=512 dirty=512 N1=512 kernelpagesize_kB=4
7f2000000000 default file=/memfd:seg\\040(deleted) huge anon=3 N0=1 N1=2 kernelpagesize_kB=2048
7f4000000000 interleave:0-1 anon=1 dirty=1 N0=1 kernelpagesize_kB=1048576
7ffd1c000000 default stack anon=3 dirty=3 N0=3 kernelpagesize_kB=4
7ffd1c7f0000 default
"""


def test_parse_numa_maps_weights_hugepages() -> None:
    locality = parse_numa_maps(NUMA_MAPS, home_node=1)
    node0 = 60 + 1 * 512 + 1 * 262_144 + 3
    node1 = 40 + 512 + 2 * 512
    assert locality.pages_per_node == {0: node0, 1: node1}
    assert locality.total_pages == node0 + node1
    assert locality.local_fraction == pytest.approx(node1 / (node0 + node1))
    assert parse_numa_maps(NUMA_MAPS).local_fraction is None
    assert parse_numa_maps("", home_node=0) == Locality({}, 0, None)


def test_numa_locality_of_this_process() -> None:
    locality = numa_locality(os.getpid(), home_node=0)
    assert set(locality.pages_per_node) == {0}  # one node here
    assert locality.total_pages > 1000 and locality.local_fraction == 1.0


def test_perf_sample_round_trips_through_msgpack_and_json() -> None:
    sample = PerfSample(
        pid=42,
        time=1.5,
        counters={"page-faults": 7, "cycles": None},
        unsupported={"cycles": "not supported"},
        locality=Locality({0: 10, 1: 30}, 1, 0.75),
    )
    for codec in (msgspec.msgpack, msgspec.json):
        assert codec.decode(codec.encode(sample), type=PerfSample) == sample


# ---------------------------------------------------------------- ring


def sample_at(t: float) -> PerfSample:
    return PerfSample(pid=1, time=t, counters={}, unsupported={}, locality=None)


@given(maxlen=st.integers(1, 8), times=st.lists(st.floats(0, 1e9), max_size=30))
def test_ring_keeps_the_last_maxlen_samples_per_task(maxlen: int, times: list[float]) -> None:
    ring = SampleRing(maxlen)
    for t in times:
        ring.append("a", sample_at(t))
        ring.append("b", sample_at(-t))
    assert [s.time for s in ring.series("a")] == times[-maxlen:]
    assert [s.time for s in ring.series("b")] == [-t for t in times[-maxlen:]]
    assert ring.latest("a") == (sample_at(times[-1]) if times else None)


def test_ring_tasks_and_discard() -> None:
    ring = SampleRing(2)
    ring.append("a", sample_at(1))
    ring.append("b", sample_at(2))
    assert ring.tasks() == ["a", "b"]
    ring.discard("a")
    ring.discard("unknown")
    assert ring.tasks() == ["b"] and ring.series("a") == [] and ring.latest("a") is None
    with pytest.raises(ValueError, match="positive"):
        SampleRing(0)
