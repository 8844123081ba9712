"""``fds``: descriptor exhaustion. The coordinator runs with ``RLIMIT_NOFILE`` 256 and gets
300 connections; it must stay alive, not spin, keep serving the client it already had, and
serve a fresh client once the connections are closed."""

from __future__ import annotations

import collections
import select
import time
from pathlib import Path

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
    return out


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
