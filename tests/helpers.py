"""Helpers the tests share (one definition each): ids, a raw protocol client, the
reachability check of the state machines."""

from __future__ import annotations

import collections
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

import plasma
from plasma import protocol as p
from plasma.linux.fdpass import ANCILLARY_SPACE, RECV_FLAGS, received_fds
from plasma.store.moves import RehomeJob


def oid(n: int) -> bytes:
    """A 20-byte object id derived from ``n`` (big-endian: ids sort like their numbers)."""
    return n.to_bytes(20, "big")


def object_id(n: int) -> plasma.ObjectID:
    """:func:`oid` as the clients' ObjectID."""
    return plasma.ObjectID(oid(n))


class RawClient:
    """The wire protocol by hand, keeping every descriptor the coordinator sends (so a test
    can do to them what a hostile client would)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(timeout)
        self.decoder = p.FrameDecoder(p.Reply, 1 << 30)
        self.fds: list[int] = []
        self.seq = 0
        self.pushed: list[Any] = []

    def send(self, msg: Any) -> int:
        self.seq += 1
        msg.seq = self.seq
        self.sock.sendall(p.encode(msg))
        return self.seq

    def request(self, msg: Any) -> Any:
        """Send ``msg`` and return its reply (pushed messages are kept in ``pushed``)."""
        seq = self.send(msg)
        while True:
            reply = self.receive()
            if reply.seq == seq:
                return reply
            self.pushed.append(reply)

    def receive(self) -> Any:
        while (reply := self.decoder.next_message()) is None:
            data, anc, flags, _ = self.sock.recvmsg(1 << 16, ANCILLARY_SPACE, RECV_FLAGS)
            if not data:
                raise ConnectionError("the coordinator hung up")
            self.fds.extend(received_fds(anc, flags))
            self.decoder.feed(data)
        return reply

    def connect(self) -> p.Connected:
        return self.request(p.Connect(seq=0, protocol_version=p.PROTOCOL_VERSION))

    def take_fds(self) -> list[int]:
        fds, self.fds = self.fds, []
        return fds

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reached(
    machine: type[RuleBasedStateMachine],
    machine_settings: settings,
    wanted: Sequence[str],
    *,
    examples: int = 100,
    at_least: int = 1,
    runs: int = 4,
) -> collections.Counter[str]:
    """Run ``machine`` (``examples`` each time, at most ``runs`` times) until each outcome
    of ``wanted`` was counted ``at_least`` times in its ``outcomes`` counter, and assert it
    was: a change to the rules that loses these interleavings fails here instead of
    silently testing less. (Random runs, not one derandomized one: a rare outcome that one
    seed misses does not fail it; one the rules cannot reach any more fails every run.)"""
    seen: collections.Counter[str] = collections.Counter()

    class Counting(machine):  # type: ignore[valid-type, misc]
        def teardown(self) -> None:
            seen.update(self.outcomes)
            super().teardown()

    for _ in range(runs):
        run_state_machine_as_test(
            Counting,
            settings=settings(
                machine_settings, max_examples=examples, database=None, derandomize=False
            ),
        )
        if all(seen[w] >= at_least for w in wanted):
            break
    assert not [w for w in wanted if seen[w] < at_least], seen
    return seen


def charges_placed_in(store: Any, records: Iterable[Any]) -> collections.Counter[int]:
    """What each node's ``placed_in`` must be: the charges of ``records`` whose pages were
    moved (those in memory), of ranges being moved back, and of memory freed once its I/O
    ends (the store's own bookkeeping, read from the outside)."""
    want: collections.Counter[int] = collections.Counter()
    for rec in records:
        if rec.pages_on is not None:
            want.update(store._charges(rec, rec.pages_on))
    for job in store._placing.values():
        if isinstance(job, RehomeJob):
            want.update(job.freed.charges)
    for held in store._after_io.values():
        for freed in held:
            want.update(freed.charges or {})
    return want
