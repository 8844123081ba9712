"""What every subcommand uses: the coordinator under test, raw connections to it with bounded
waits, worker processes, and the outcome of a check."""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec

import plasma
from bench.chaos import objects, probes
from plasma import errors
from plasma import protocol as p
from plasma.errors import PlasmaError

ROOT = Path(__file__).resolve().parents[2]
STABLE_CODES = frozenset(v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str))
BUSY_SHARE = 0.5  # CPU share above which an idle coordinator counts as spinning

# Workers fork from a server that imported the heavy modules once.
CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(["plasma.aio", "bench.chaos.probes"])


@dataclass
class Outcome:
    """Figures of one subcommand and the invariants it found broken."""

    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # the printed summary

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.fail(message)

    def to_json(self) -> dict[str, Any]:
        return {"figures": self.figures, "failures": self.failures, "summary": self.lines}


class Deadline:
    """A point in time; ``left()`` seconds remain (never negative)."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def passed(self) -> bool:
        return time.monotonic() >= self.at


# ---------------------------------------------------------------- the coordinator

_LOG_RECORD = re.compile(r"^(CRITICAL|ERROR|WARNING|INFO|DEBUG):[\w.]+:(.*)")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(: .*)?$")  # "ValueError: why", last in a traceback


class Coordinator:
    """``python -m plasma serve`` in ``workdir``; its stderr goes to a log file there."""

    def __init__(self, workdir: Path, *args: str, nofile: int | None = None) -> None:
        self.socket = str(workdir / "x.sock")
        self.args = args
        self.nofile = nofile
        self.log_path = workdir / f"coordinator-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.idle_sockets = 0

    def start(self, timeout: float = 30.0) -> Coordinator:
        """Start it and wait (bounded) for its ``ready`` line."""
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "plasma", "serve", "--socket", self.socket, *self.args],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=ROOT,
                preexec_fn=self._limit if self.nofile else None,
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("ready"):
            self.proc.kill()
            self.proc.wait(timeout)
            raise RuntimeError(f"coordinator did not start: {line!r} {self.log()[-2000:]}")
        self.idle_sockets = probes.socket_count(self.pid)  # listener and wakeup pairs
        return self

    def _limit(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> str | None:
        """SIGTERM, then SIGKILL after ``timeout``; None when it exited 0, else what went wrong."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            return f"coordinator had already exited with status {self.proc.returncode}"
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
            return f"coordinator did not exit within {timeout:g} s of SIGTERM (killed)"
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        return None if code == 0 else f"coordinator exited with status {code} on SIGTERM"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged_errors(self) -> list[tuple[str, bool]]:
        """Each ERROR or CRITICAL record of the log as ("message: exception", with traceback)."""
        records: list[list[str]] = []
        for line in self.log().splitlines():
            if _LOG_RECORD.match(line):
                records.append([line])
            elif records:
                records[-1].append(line)
        return [
            (_summarise(r), any("Traceback" in ln for ln in r[1:]))
            for r in records
            if r[0].startswith(("ERROR", "CRITICAL"))
        ]

    def last_exception(self) -> str:
        """The last exception line of the log (why it died)."""
        return _exception_line(self.log().splitlines()) or "no exception logged"

    def busy_share(self, seconds: float) -> float:
        """The share of one CPU it used over the next ``seconds``."""
        before, start = probes.cpu_seconds(self.pid), time.monotonic()
        time.sleep(seconds)  # measuring, not synchronising
        return (probes.cpu_seconds(self.pid) - before) / (time.monotonic() - start)

    def wait_sockets(self, count: int, timeout: float) -> bool:
        """Poll /proc until it has at most ``count`` sockets open (its sessions closed)."""
        deadline = Deadline(timeout)
        while self.alive() and probes.socket_count(self.pid) > count:
            if deadline.passed():
                return False
            time.sleep(0.005)
        return self.alive()


def settled(monitor: Monitor, timeout: float) -> bool:
    """Poll the store until no object waits for its pin scan (what the last clients' going
    released is freed a rescan later, rate-limited); False if some still do at ``timeout``."""
    deadline = Deadline(timeout)
    while monitor.stats()["dying"]:
        if deadline.passed():
            return False
        time.sleep(0.005)
    return True


def _exception_line(lines: list[str]) -> str:
    body = [ln.strip(" |+-") for ln in lines]
    return next((ln for ln in reversed(body) if _EXCEPTION.match(ln)), "")


def _summarise(record: list[str]) -> str:
    match = _LOG_RECORD.match(record[0])
    head = match.group(2) if match else record[0]
    exc = _exception_line(record[1:])
    return f"{head}: {exc}" if exc else head


def log_failures(outcome: Outcome, coordinators: Iterable[Coordinator]) -> None:
    """Fail ``outcome`` for every traceback the coordinators logged (internal errors, failed
    sessions); plain error messages (say, out of descriptors) are only counted."""
    logged = [entry for c in coordinators for entry in c.logged_errors()]
    tracebacks = [text for text, traced in logged if traced]
    outcome.figures["coordinator_log"] = {
        "tracebacks": len(tracebacks),
        "messages": sorted({text for text, traced in logged if not traced}),
    }
    for text, n in _grouped(tracebacks):
        outcome.fail(f"{outcome.name}: coordinator logged {n}x: {text}")


def _grouped(texts: Iterable[str]) -> list[tuple[str, int]]:
    """Texts that differ only in numbers, once each (the first) with their count."""
    groups: dict[str, list[str]] = {}
    for text in texts:
        groups.setdefault(re.sub(r"\d+", "N", text), []).append(text)
    return [(same[0], len(same)) for same in groups.values()]


# ---------------------------------------------------------------- raw connections

REPLY_MAX = 1 << 30
CONNECT = p.encode(p.Connect(seq=1, protocol_version=p.PROTOCOL_VERSION, client_name="chaos"))


class Wire:
    """A raw socket to the coordinator: frames out, decoded replies in, every wait bounded.

    Segment fds that come with replies are discarded by the kernel (no ancillary buffer).
    """

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # a blocking connect waits while the listen backlog is full, for at most this
            seconds, micros = divmod(int(timeout * 1e6), 1_000_000)
            timeval = struct.pack("ll", seconds, micros)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.sock.settimeout(timeout)
        self.decoder = p.FrameDecoder(p.Reply, REPLY_MAX)
        self.eof = False
        self._seq = 100

    def seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, until: Callable[[Any], bool], timeout: float) -> list[Any]:
        """Replies until one satisfies ``until``, the peer closes, or ``timeout`` passes."""
        out: list[Any] = []
        deadline = Deadline(timeout)
        while not self.eof:
            ready, _, _ = select.select([self.sock], [], [], deadline.left())
            if not ready:
                break
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                break
            self.decoder.feed(chunk)
            out += self.decoder.messages()
            if any(until(m) for m in out):
                break
        return out

    def request(self, msg: msgspec.Struct, timeout: float = 10.0) -> Any:
        """Send ``msg`` and return its reply; raise on an Error, a close or a timeout."""
        seq = msg.seq  # type: ignore[attr-defined]
        self.send(p.encode(msg))
        for reply in self.read(lambda m: m.seq == seq, timeout):
            if reply.seq == seq:
                if isinstance(reply, p.Error):
                    raise errors.error_for(reply.code, reply.message)
                return reply
        raise TimeoutError(f"no reply to {type(msg).__name__} within {timeout:g} s")

    def close(self) -> None:
        self.sock.close()


class Monitor(Wire):
    """A connected raw client (no arena, no mapped segment) that reads the store's books,
    deletes and makes objects."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        super().__init__(path, timeout)
        connected = self.request(
            p.Connect(
                seq=self.seq(), protocol_version=p.PROTOCOL_VERSION, client_name="chaos-monitor"
            )
        )
        # what allocations are rounded up to (coordinators that do not say use 64)
        self.alignment: int = getattr(connected, "alignment", 64)

    def stats(self) -> dict[str, Any]:
        return self.request(p.Stats(seq=self.seq())).stats

    def balance(self) -> probes.Balance:
        stats = self.stats()
        return probes.Balance.of(stats, self.objects(), self.alignment)

    def objects(self) -> list[p.ObjectInfo]:
        """Every listed object, page after page."""
        reply = self.request(p.List(seq=self.seq()))
        objects = list(reply.objects)
        while getattr(reply, "next", 0):  # (coordinators that do not page send one Listing)
            msg = p.List(seq=self.seq(), listing=reply.listing, start=reply.next)
            reply = self.request(msg)
            objects += reply.objects
        return objects

    def delete_all(self) -> list[bytes]:
        """Delete every visible object; returns those whose delete was deferred. Returns once
        the coordinator scanned the pin tables for them (a Sync): their memory is free."""
        ids = [o.id for o in self.objects()]
        deferred: list[bytes] = []
        for start in range(0, len(ids), 16384):
            deferred += self.request(
                p.Delete(seq=self.seq(), ids=ids[start : start + 16384])
            ).deferred
        self.request(p.Sync(seq=self.seq()))
        return deferred

    def create_sealed(self, ids: list[bytes], size: int) -> None:
        """Create, seal and release objects (contents left as they are)."""
        items = [p.CreateItem(oid, size) for oid in ids]
        self.request(p.CreateMany(seq=self.seq(), items=items))
        self.request(p.Seal(seq=self.seq(), ids=ids, ack=True))
        self.request(p.Release(seq=self.seq(), ids=ids, ack=True))


# ---------------------------------------------------------------- worker processes


class Worker:
    """A process started through the forkserver that talks to us over a pipe."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def recv(self, timeout: float) -> Any:
        """The next message; TimeoutError if none within ``timeout``, EOFError if it died."""
        if not self.conn.poll(timeout):
            raise TimeoutError(f"worker {self.proc.pid} sent nothing within {timeout:g} s")
        return self.conn.recv()

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        if self.proc.pid is not None and self.proc.exitcode is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(10)
        self.conn.close()


def reply_to(conn: Connection, work: Callable[[], Any]) -> None:
    """Send ``("ok", work())``, ``("refused", "code: why")`` for an error the coordinator
    answered, or ``("error", what)`` for any other failure, back over ``conn``."""
    try:
        conn.send(("ok", work()))
    except PlasmaError as exc:
        conn.send(("refused", f"{exc.code}: {exc}"))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------- the healthy client

HEALTHY_OBJECTS = (
    ("create_and_seal", 100),
    ("many", 2000),
    ("put", 300_000),
    ("create", 1_500_000),
)


def _healthy_worker(conn: Connection, path: str, seed: int) -> None:
    """Serve ``round`` requests: write, read back, check and delete one object per path."""
    rng = random.Random(seed)
    try:
        client = plasma.connect(path, "chaos-healthy")
    except ConnectionError as exc:
        while conn.recv() is not None:
            conn.send(("error", str(exc)))
        return

    def one_round() -> int:
        oids = [objects.new_id(kind, size, rng) for kind, size in HEALTHY_OBJECTS]
        objects.write(client, oids)
        client.flush()
        for oid in oids:
            objects.check(client, oid, timeout=5)
        client.delete(oids)
        return len(oids)

    while conn.recv() is not None:
        reply_to(conn, one_round)
    client.close()


class Healthy:
    """A well-behaved client in its own process, asked for a checked round trip at a time."""

    def __init__(self, path: str, seed: int) -> None:
        self.worker = Worker(_healthy_worker, path, seed)

    def round(self, timeout: float = 10.0) -> str | None:
        """None when a put/get round with byte checks succeeded, else what went wrong."""
        try:
            self.worker.send("round")
            status, value = self.worker.recv(timeout)
        except TimeoutError:
            return f"healthy client got no answer within {timeout:g} s"
        except (EOFError, OSError) as exc:
            return f"healthy client died ({type(exc).__name__}, exit {self.worker.proc.exitcode})"
        if status == "ok":
            return None
        return f"healthy client {'refused' if status == 'refused' else 'failed'}: {value}"

    def close(self) -> None:
        self.worker.kill()
