"""perf_event_open(2) counters on a task, read with time enabled/running.

``perf_event_attr`` is laid out as in ``include/uapi/linux/perf_event.h`` up to
``config3`` (PERF_ATTR_SIZE_VER8, 136 bytes); the layout is the same on x86_64 and
aarch64. One fd per event (no group) so that ``inherit`` works on every kernel.

An event that cannot be opened because the machine lacks it or perf_event_paranoid
forbids it becomes a :class:`Counter` with ``value=None`` and the reason in
``unsupported``, never a zero.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import msgspec

from plasma.errors import Unsupported
from plasma.linux._syscall import syscall

PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1
PERF_TYPE_HW_CACHE = 3

PERF_COUNT_HW_CPU_CYCLES = 0
PERF_COUNT_HW_INSTRUCTIONS = 1
PERF_COUNT_SW_TASK_CLOCK = 1
PERF_COUNT_SW_PAGE_FAULTS = 2
PERF_COUNT_SW_CONTEXT_SWITCHES = 3
PERF_COUNT_SW_CPU_MIGRATIONS = 4
PERF_COUNT_HW_CACHE_LL = 2
PERF_COUNT_HW_CACHE_OP_READ = 0
PERF_COUNT_HW_CACHE_RESULT_ACCESS = 0
PERF_COUNT_HW_CACHE_RESULT_MISS = 1

PERF_FORMAT_TOTAL_TIME_ENABLED = 1 << 0
PERF_FORMAT_TOTAL_TIME_RUNNING = 1 << 1
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_ATTR_SIZE_VER8 = 136

# Bits of the flags word after read_format.
ATTR_DISABLED = 1 << 0
ATTR_INHERIT = 1 << 1
ATTR_EXCLUDE_KERNEL = 1 << 5
ATTR_EXCLUDE_HV = 1 << 6
ATTR_ENABLE_ON_EXEC = 1 << 12

PARANOID_PATH = Path("/proc/sys/kernel/perf_event_paranoid")
_READ = struct.Struct("=3Q")  # value, time_enabled, time_running


class PerfEventAttr(ctypes.Structure):
    """``struct perf_event_attr`` (ABI version 8)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("reserved_2", ctypes.c_uint16),
        ("aux_sample_size", ctypes.c_uint32),
        ("reserved_3", ctypes.c_uint32),
        ("sig_data", ctypes.c_uint64),
        ("config3", ctypes.c_uint64),
    ]


assert ctypes.sizeof(PerfEventAttr) == PERF_ATTR_SIZE_VER8


class Event(msgspec.Struct, frozen=True):
    """A countable event: perf ``type`` and ``config``, under a stable ``name``."""

    name: str
    type: int
    config: int


def _llc(result: int) -> int:
    return PERF_COUNT_HW_CACHE_LL | PERF_COUNT_HW_CACHE_OP_READ << 8 | result << 16


SOFTWARE_EVENTS = (
    Event("task-clock", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_TASK_CLOCK),
    Event("page-faults", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS),
    Event("context-switches", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CONTEXT_SWITCHES),
    Event("cpu-migrations", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_MIGRATIONS),
)
HARDWARE_EVENTS = (
    Event("cycles", PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES),
    Event("instructions", PERF_TYPE_HARDWARE, PERF_COUNT_HW_INSTRUCTIONS),
    Event("llc-references", PERF_TYPE_HW_CACHE, _llc(PERF_COUNT_HW_CACHE_RESULT_ACCESS)),
    Event("llc-misses", PERF_TYPE_HW_CACHE, _llc(PERF_COUNT_HW_CACHE_RESULT_MISS)),
)
DEFAULT_EVENTS = SOFTWARE_EVENTS + HARDWARE_EVENTS


class Counter(msgspec.Struct, frozen=True):
    """One read counter: ``value`` scaled for multiplexing, or None with the reason."""

    name: str
    value: int | None
    unsupported: str | None = None
    time_enabled: int = 0  # ns
    time_running: int = 0  # ns


def make_attr(
    event: Event,
    *,
    inherit: bool = True,
    enable_on_exec: bool = False,
    exclude_kernel: bool = False,
) -> PerfEventAttr:
    """The attr for counting ``event`` (disabled until exec when ``enable_on_exec``)."""
    attr = PerfEventAttr()
    attr.type = event.type
    attr.size = PERF_ATTR_SIZE_VER8
    attr.config = event.config
    attr.read_format = PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING
    flags = ATTR_EXCLUDE_HV
    if inherit:
        flags |= ATTR_INHERIT
    if enable_on_exec:
        flags |= ATTR_DISABLED | ATTR_ENABLE_ON_EXEC
    if exclude_kernel:
        flags |= ATTR_EXCLUDE_KERNEL
    attr.flags = flags
    return attr


def perf_event_open(
    attr: PerfEventAttr, pid: int, cpu: int = -1, group_fd: int = -1, flags: int = 0
) -> int:
    """The raw syscall; the fd is always close-on-exec."""
    call = f"perf_event_open(type={attr.type}, config={attr.config:#x}, pid={pid}, cpu={cpu})"
    return syscall(
        "perf_event_open",
        ctypes.byref(attr),
        pid,
        cpu,
        group_fd,
        flags | PERF_FLAG_FD_CLOEXEC,
        call=call,
    )


def scale(value: int, time_enabled: int, time_running: int) -> int | None:
    """``value`` extrapolated to the whole enabled time; None if it never ran while enabled."""
    if time_running >= time_enabled:
        return value
    if time_running == 0:
        return None
    return round(value * time_enabled / time_running)


def parse_read(name: str, raw: bytes) -> Counter:
    """A :class:`Counter` from the 24 bytes read(2) returns for our read_format."""
    if len(raw) != _READ.size:
        raise ValueError(f"perf read of {name!r} returned {len(raw)} bytes, expected {_READ.size}")
    value, enabled, running = _READ.unpack(raw)
    scaled = scale(value, enabled, running)
    reason = None if scaled is not None else "multiplexed out: never ran while enabled"
    return Counter(name, scaled, reason, enabled, running)


def paranoid_level() -> int | None:
    """kernel.perf_event_paranoid, or None when it cannot be read."""
    try:
        return int(PARANOID_PATH.read_text())
    except (OSError, ValueError):
        return None


def unsupported_reason(exc: OSError) -> str | None:
    """Why an event could not be opened, or None when the error is not about support."""
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    if isinstance(exc, Unsupported):
        return str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied ({code}): kernel.perf_event_paranoid={paranoid_level()}; "
            "needs CAP_PERFMON (or CAP_SYS_ADMIN) or a lower perf_event_paranoid"
        )
    if exc.errno in (errno.ENOENT, errno.ENODEV, errno.EOPNOTSUPP, errno.EINVAL):
        why = os.strerror(exc.errno or 0)
        return f"not supported by this machine's PMU or kernel ({code}: {why})"
    return None


class CounterSet:
    """Counters for ``events`` on task ``pid`` (and, with ``inherit``, its later children).

    With ``enable_on_exec`` the counters start at the task's next execve: open them on a
    forked child that has not exec'd yet to count the whole program. Raises
    ``ProcessLookupError`` if ``pid`` does not exist.
    """

    def __init__(
        self,
        pid: int,
        events: Iterable[Event] = DEFAULT_EVENTS,
        *,
        inherit: bool = True,
        enable_on_exec: bool = False,
    ) -> None:
        self.pid = pid
        self._fds: dict[str, int] = {}
        self.unsupported: dict[str, str] = {}
        try:
            for event in events:
                self._open(event, inherit, enable_on_exec)
        except BaseException:
            self.close()
            raise

    def _open(self, event: Event, inherit: bool, enable_on_exec: bool) -> None:
        attr = make_attr(event, inherit=inherit, enable_on_exec=enable_on_exec)
        try:
            self._fds[event.name] = perf_event_open(attr, self.pid)
            return
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise ProcessLookupError(errno.ESRCH, f"perf: no process {self.pid}") from None
            if exc.errno not in (errno.EACCES, errno.EPERM):
                self._mark_unsupported(event, exc)
                return
        # Unprivileged under perf_event_paranoid >= 2: user-space counting only, as perf does.
        attr = make_attr(event, inherit=inherit, enable_on_exec=enable_on_exec, exclude_kernel=True)
        try:
            self._fds[event.name] = perf_event_open(attr, self.pid)
        except OSError as exc:
            self._mark_unsupported(event, exc)

    def _mark_unsupported(self, event: Event, exc: OSError) -> None:
        reason = unsupported_reason(exc)
        if reason is None:
            raise exc
        self.unsupported[event.name] = reason

    @property
    def names(self) -> list[str]:
        """Names of the events that are being counted."""
        return list(self._fds)

    def read(self) -> list[Counter]:
        """Every event: counted ones with their scaled value, the others with the reason."""
        counters = [parse_read(name, os.read(fd, _READ.size)) for name, fd in self._fds.items()]
        counters += [Counter(name, None, why) for name, why in self.unsupported.items()]
        return counters

    def close(self) -> None:
        """Close the counter fds (idempotent)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> CounterSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
