"""``fds``: descriptor exhaustion. The coordinator runs with ``RLIMIT_NOFILE`` 256 and gets
300 connections; it must stay alive, not spin, keep serving the client it already had, and
serve a fresh client once the connections are closed.

Then :func:`dashboard_flood`: a coordinator with ``--dashboard``, the same limit, and 300
connections to the dashboard left open (any local user can open them, even one the store
socket refuses): store clients must still connect and work meanwhile (the dashboard stops
accepting at its connection limit, so it cannot take the store's descriptors), and the
dashboard must serve again once those connections are closed."""

from __future__ import annotations

import collections
import errno
import select
import socket
import time
import urllib.request
from pathlib import Path

import plasma
from bench.chaos import probes
from bench.chaos.harness import (
    BUSY_SHARE,
    CONNECT,
    Coordinator,
    Deadline,
    Healthy,
    Outcome,
    Wire,
    log_failures,
)
from plasma import protocol as p

LIMIT = 256
CONNECTIONS = 300
COORDINATOR_ARGS = ("--memory", "64MiB", "--segment-size", "4MiB")
CONNECT_TIMEOUT = 10.0  # for opening the connections (each waits while the backlog is full)
ANSWER_TIMEOUT = 5.0  # for their first answers, together
DASHBOARD_CONNECTIONS = 300  # more than RLIMIT_NOFILE
STORE_CLIENTS = 5  # fresh store clients tried while the dashboard connections are open
SETTLE = 1.0  # seconds the coordinator gets to accept what it will of the flood


def flood(coord: Coordinator) -> tuple[list[Wire], collections.Counter[str]]:
    """Open CONNECTIONS connections that each send Connect; how each was answered."""
    wires: list[Wire] = []
    outcomes: collections.Counter[str] = collections.Counter()
    connecting = Deadline(CONNECT_TIMEOUT)
    for n in range(CONNECTIONS):
        if connecting.passed():
            outcomes["not attempted (connecting took too long)"] += CONNECTIONS - n
            break
        try:
            wire = Wire(coord.socket, timeout=1.0)
            wire.send(CONNECT)
        except OSError as exc:
            outcomes[f"connect failed: {type(exc).__name__}"] += 1
            continue
        wires.append(wire)
    pending = {w.sock: w for w in wires}
    deadline = Deadline(ANSWER_TIMEOUT)
    while pending and not deadline.passed():
        ready, _, _ = select.select(list(pending), [], [], deadline.left())
        for sock in ready:
            wire = pending[sock]
            replies = wire.read(lambda m: True, 0.1)
            if replies or wire.eof:
                del pending[sock]
                outcomes[_answer(replies, wire.eof)] += 1
    outcomes["no answer (not accepted)"] += len(pending)
    return wires, outcomes


def _answer(replies: list[object], eof: bool) -> str:
    first = replies[0] if replies else None
    if isinstance(first, p.Connected):
        return "connected"
    if isinstance(first, p.Error):
        return f"refused: {first.code}"
    return "closed without an answer" if eof else "no answer"


def run(seconds: float, seed: int, workdir: Path) -> Outcome:
    """One flood; ``seconds`` only bounds the waits."""
    out = Outcome("fds")
    started = time.monotonic()
    coord = Coordinator(workdir, *COORDINATOR_ARGS, nofile=LIMIT).start()
    try:
        _flood_and_recover(out, coord, seed, min(10.0, max(1.0, seconds)))
    finally:
        problem = coord.stop()
        out.check(problem is None, f"fds: {problem}")
    log_failures(out, [coord])
    out.figures["seconds"] = round(time.monotonic() - started, 1)
    answered = ", ".join(f"{k} {n}" for k, n in out.figures.get("answers", {}).items())
    out.lines.append(
        f"fds: RLIMIT_NOFILE {LIMIT}, {CONNECTIONS} connections: {answered}; "
        f"client at the limit: {out.figures.get('healthy_at_limit', '-')}; "
        f"fresh client after: {out.figures.get('fresh_client', '-')}"
    )
    dashboard = dashboard_flood(workdir)
    out.failures.extend(dashboard.failures)
    out.lines.extend(dashboard.lines)
    out.figures["dashboard"] = dashboard.figures
    return out


def dashboard_flood(
    workdir: Path, connections: int = DASHBOARD_CONNECTIONS, nofile: int = LIMIT
) -> Outcome:
    """``connections`` dashboard connections left open on a coordinator with RLIMIT_NOFILE
    ``nofile``; meanwhile STORE_CLIENTS fresh store clients each put, get and delete an
    object; then the connections close and the dashboard must answer again."""
    out = Outcome("fds-dashboard")
    args = (*COORDINATOR_ARGS, "--dashboard", "127.0.0.1:0")
    coord = Coordinator(workdir, *args, nofile=nofile).start()
    try:
        with plasma.connect(coord.socket) as client:
            port = int(client.stats()["dashboard"].rpartition(":")[2])
        out.figures["fds_before"] = probes.sample(coord.pid)["fds"]
        flood = _open_without_waiting(port, connections)
        try:
            time.sleep(SETTLE)  # measuring what it accepted, not synchronising
            out.figures["fds_flooded"] = probes.sample(coord.pid)["fds"]
            results = [_store_round(coord.socket, n) for n in range(STORE_CLIENTS)]
        finally:
            for sock in flood:
                sock.close()
        ok = results.count(None)
        out.figures["store_clients_ok"] = f"{ok}/{STORE_CLIENTS}"
        out.check(
            ok == STORE_CLIENTS,
            f"fds-dashboard: store clients failed with {connections} dashboard connections "
            f"open: {[r for r in results if r is not None][:2]}",
        )
        served = _dashboard_answers(port, timeout=15.0)
        out.figures["dashboard_after"] = served or "ok"
        out.check(served is None, f"fds-dashboard: the dashboard did not recover: {served}")
    finally:
        problem = coord.stop()
        out.check(problem is None, f"fds-dashboard: {problem}")
    log_failures(out, [coord])
    out.lines.append(
        f"fds-dashboard: RLIMIT_NOFILE {nofile}, {connections} dashboard connections open: "
        f"coordinator fds {out.figures.get('fds_before')} -> {out.figures.get('fds_flooded')}; "
        f"fresh store clients ok {out.figures.get('store_clients_ok', '-')}; "
        f"dashboard after: {out.figures.get('dashboard_after', '-')}"
    )
    return out


def _open_without_waiting(port: int, connections: int) -> list[socket.socket]:
    """``connections`` TCP connects to the dashboard, not waiting for them to complete
    (past the server's backlog the kernel drops their SYNs, and they keep retrying)."""
    socks = []
    for _ in range(connections):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(code, f"connecting to the dashboard: {errno.errorcode.get(code)}")
        socks.append(sock)
    return socks


def _store_round(path: str, n: int) -> str | None:
    """None when a fresh client put, got back (the same bytes) and deleted an object."""
    data = bytes([n % 256]) * (1 << 20)
    try:
        with plasma.connect(path, client_name=f"fds-dashboard-{n}") as client:
            oid = client.put(data)
            if bytes(client.get_object(oid, timeout=5)) != data:
                return "read back different bytes"
            client.delete([oid])
    except Exception as exc:  # the failure is the figure
        return f"{type(exc).__name__}: {exc}"
    return None


def _dashboard_answers(port: int, timeout: float) -> str | None:
    """None once ``/api/state`` answers 200 (retried until ``timeout``), else the last error."""
    deadline = Deadline(timeout)
    last = "never tried"
    while not deadline.passed():
        try:
            url = f"http://127.0.0.1:{port}/api/state"
            with urllib.request.urlopen(url, timeout=max(0.5, deadline.left())) as response:
                if response.status == 200:
                    return None
                last = f"status {response.status}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    return last


def _flood_and_recover(out: Outcome, coord: Coordinator, seed: int, timeout: float) -> None:
    healthy = Healthy(coord.socket, seed)  # connected before the flood
    out.check(healthy.round() is None, "fds: the healthy client failed before the flood")
    out.figures["fds_before"] = probes.sample(coord.pid)["fds"]
    wires, answers = flood(coord)
    out.figures["answers"] = dict(answers)
    try:
        if not coord.alive():
            out.fail(f"fds: coordinator died in the flood: {coord.last_exception()}")
            return
        out.figures["fds_at_limit"] = probes.sample(coord.pid)["fds"]
        busy = coord.busy_share(0.5)
        out.figures["busy_share_at_limit"] = round(busy, 3)
        out.check(busy <= BUSY_SHARE, f"fds: coordinator spins at the limit ({busy:.0%} CPU)")
        at_limit = healthy.round()
        out.figures["healthy_at_limit"] = at_limit or "ok"
        out.check(
            at_limit is None or at_limit.startswith("healthy client refused"),  # an Error is fine
            f"fds: the client connected before the flood got no service: {at_limit}",
        )
    finally:
        for wire in wires:
            wire.close()
        healthy.close()
    if not coord.alive():
        out.fail(f"fds: coordinator died at the limit: {coord.last_exception()}")
        return
    drained = coord.wait_sockets(coord.idle_sockets, timeout)
    out.check(drained, f"fds: sessions still open {timeout:g} s after all connections closed")
    fresh = Healthy(coord.socket, seed + 1)
    after = fresh.round()
    fresh.close()
    out.figures["fresh_client"] = after or "ok"
    out.check(after is None, f"fds: a fresh client failed after the flood: {after}")
