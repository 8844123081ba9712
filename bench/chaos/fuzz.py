"""``fuzz``: malformed and mutated protocol input against a live coordinator.

Every input goes over a fresh connection: random bytes, truncated frames, oversize length
headers, random MessagePack in valid frames, requests before ``Connect``, a wrong
``protocol_version``, 100,000-level nesting, and valid requests with one field mutated
(out-of-range ints, NaN/inf timeouts, wrong-length ids). Between inputs a healthy client in
its own process does a put/get round with byte checks. Per input we record the replies,
whether the coordinator closed the connection and whether it burnt CPU while the connection
sat idle; a dead or stuck coordinator is recorded and restarted.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bench.chaos.harness import (
    BUSY_SHARE,
    CONNECT,
    STABLE_CODES,
    Coordinator,
    Deadline,
    Healthy,
    Monitor,
    Outcome,
    Wire,
    log_failures,
)
from plasma import protocol as p

COORDINATOR_ARGS = ("--memory", "64MiB", "--segment-size", "16MiB")
# Waits that only run out when the coordinator gets an input wrong, so they can be generous.
REPLY_TIMEOUT = 2.0  # for the answer to a complete frame
CLOSE_TIMEOUT = 1.0  # for the close that follows a protocol error
LINGER_TIMEOUT = 2.0  # for the close once we shut our side down
HOLD = 0.3  # seconds a connection with a waiting request is watched for spinning
RESERVE = 3.0  # seconds kept for the final checks and the stop

INTS = (-1, 2**31, 2**63, 2**64 - 1, -(2**63))
FLOATS = (math.nan, math.inf, -math.inf, -1.0, 1e308)
BAD_IDS = (b"", b"\x07" * 19, b"\x07" * 21, b"\x07" * 4096)
VERSIONS = (0, p.PROTOCOL_VERSION + 1, -1, 2**31, 2**64 - 1)  # (never the one we speak)
OVERSIZE = (p.DEFAULT_MAX_FRAME + 1, 2**31, 2**32 - 1)
NESTING = 100_000
MUTATED_SEQ, SYNC_SEQ = 10, 11
SYNC = p.encode(p.Sync(seq=SYNC_SEQ))
INT, FLOAT, ID = "int", "float", "id"
VALUES: dict[str, tuple[Any, ...]] = {INT: INTS, FLOAT: FLOATS, ID: BAD_IDS}
NAMES = {2**31: "2**31", 2**63: "2**63", 2**64 - 1: "2**64-1", -(2**63): "-2**63"}


def frame(obj: Any) -> bytes:
    """One frame of any MessagePack value (valid message or not)."""
    payload = msgspec.msgpack.encode(obj)
    return p.HEADER.pack(len(payload)) + payload


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Setup:
    """What a mutated input's connection made first: a sealed and an unsealed object, an
    arena; ``fresh`` and ``missing`` are ids not in the store."""

    sealed: bytes
    unsealed: bytes
    fresh: bytes
    missing: bytes
    segment: int = 0
    offset: int = 0

    @classmethod
    def new(cls, rng: random.Random) -> Setup:
        return cls(rng.randbytes(20), rng.randbytes(20), rng.randbytes(20), rng.randbytes(20))

    def frames(self) -> bytes:
        """Connect, then requests making the objects and the arena (replied up to seq 5)."""
        return CONNECT + b"".join(
            p.encode(m)
            for m in (
                p.Create(seq=2, id=self.sealed, data_size=64),
                p.Seal(seq=3, ids=[self.sealed], ack=True),
                p.Create(seq=4, id=self.unsealed, data_size=64),
                p.Arena(seq=5, size=4096),
            )
        )


SETUP_SEQ = 5
FieldPath = tuple[int | str, ...]


def templates(s: Setup) -> dict[str, tuple[list[Any], dict[FieldPath, str]]]:
    """A valid request of each kind (fields after the tag) and the fields worth mutating;
    requests and fields ``plasma.protocol`` does not have are left out."""
    out = {}
    for name, (fields, paths) in _templates(s).items():
        known = len(getattr(p, name, msgspec.Struct).__struct_fields__)
        if known:
            kept = {path: kind for path, kind in paths.items() if int(path[0]) < known}
            out[name] = (fields[:known], kept)
    return out


def _templates(s: Setup) -> dict[str, tuple[list[Any], dict[FieldPath, str]]]:
    task = f"fuzz-{s.fresh.hex()[:12]}"
    sample = {"pid": os.getpid(), "time": 0.0, "counters": {}, "unsupported": {}, "locality": None}
    m = MUTATED_SEQ
    return {
        "Create": (
            [m, s.fresh, 64, 0, None, 0.0],
            {(0,): INT, (1,): ID, (2,): INT, (3,): INT, (4,): INT, (5,): FLOAT},
        ),
        "CreateMany": (
            [m, [[s.fresh, 64, 0]], None, 0.0],
            {(1, 0, 0): ID, (1, 0, 1): INT, (1, 0, 2): INT, (2,): INT, (3,): FLOAT},
        ),
        "Seal": ([m, [s.unsealed], True], {(1, 0): ID}),
        "Abort": ([m, s.unsealed], {(1,): ID}),
        "Get": ([m, [s.missing], 0.0], {(1, 0): ID, (2,): FLOAT}),
        "Release": ([m, [s.sealed], True], {(1, 0): ID}),
        "Delete": ([m, [s.sealed]], {(1, 0): ID}),
        "Contains": ([m, s.sealed], {(1,): ID}),
        "Evict": ([m, 0], {(1,): INT}),
        "Arena": ([m, 4096, None, 0], {(1,): INT, (2,): INT, (3,): INT}),
        "ReturnArena": ([m, s.segment], {(1,): INT}),
        "SealArena": (
            [m, s.segment, [[s.fresh, s.offset, 64, 0]], True],
            {(1,): INT, (2, 0, 0): ID, (2, 0, 1): INT, (2, 0, 2): INT, (2, 0, 3): INT},
        ),
        "Sync": ([m], {(0,): INT}),
        "TaskRegister": ([m, task, os.getpid(), None, ""], {(2,): INT, (3,): INT}),
        "SubmitSample": ([m, task, sample, ""], {(2, "pid"): INT, (2, "time"): FLOAT}),
        "RunRespond": ([m, 1, None, None, ""], {(1,): INT}),
        "RunCall": ([m, "no-such-run", None], {}),
        "Subscribe": ([m, True], {}),
        "List": ([m], {}),
        "Stats": ([m, False], {}),
        "TaskDone": ([m, task, ""], {}),
        "RunRegister": ([m, task], {}),
    }


@dataclass(frozen=True)
class FuzzInput:
    """One connection's worth of input and what a correct coordinator must do with it.

    ``mutate`` inputs first run the :class:`Setup` requests, then send the message it builds
    and a ``Sync``. ``expect_seq`` is the reply showing the last complete request was handled
    (without it only an Error counts as an answer).
    """

    label: str
    kind: str
    data: bytes = b""
    mutate: Callable[[Setup], list[Any]] | None = None
    must_answer: bool = True
    must_close: bool = False
    expect_seq: int | None = None
    hold: float = 0.0


def _label(name: str, path: FieldPath, value: Any) -> str:
    fields = getattr(p, name).__struct_fields__
    where = fields[path[0]] + "".join(f"[{k!r}]" for k in path[1:])
    shown = f"<{len(value)}-byte id>" if isinstance(value, bytes) else NAMES.get(value, repr(value))
    return f"{name}.{where}={shown}"


def _set(fields: list[Any], path: FieldPath, value: Any) -> list[Any]:
    out = copy.deepcopy(fields)
    target: Any = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def _mutation(name: str, path: FieldPath, value: Any) -> Callable[[Setup], list[Any]]:
    return lambda s: [name, *_set(templates(s)[name][0], path, value)]


def mutated() -> Iterator[FuzzInput]:
    """Every mutable field of every request, with each of its kind's bad values."""
    for name, (_, paths) in templates(Setup.new(random.Random(0))).items():
        for path, kind in paths.items():
            for value in VALUES[kind]:
                yield FuzzInput(
                    _label(name, path, value),
                    "mutated",
                    mutate=_mutation(name, path, value),
                    expect_seq=SYNC_SEQ,
                    hold=HOLD if name == "Get" and kind == FLOAT else 0.0,
                )


def _nested(fields: list[Any], opener: bytes) -> bytes:
    """A frame of ``fields`` whose "@nest" element is ``opener`` nested NESTING times."""
    marker = msgspec.msgpack.encode("@nest")
    payload = msgspec.msgpack.encode(fields).replace(marker, opener * NESTING + b"\xc0")
    return p.HEADER.pack(len(payload)) + payload


def protocol_violations() -> Iterator[FuzzInput]:
    """Wrong versions, requests before Connect, oversize headers, deep nesting, truncation."""
    for version in VERSIONS:
        data = frame(["Connect", 1, version, "chaos-fuzz", []])
        label = f"Connect.protocol_version={NAMES.get(version, version)}"
        yield FuzzInput(label, "version", data, must_close=True)
    for name, (fields, _) in templates(Setup.new(random.Random(0))).items():
        yield FuzzInput(
            f"{name} before Connect", "before-connect", frame([name, *fields]), must_close=True
        )
    for size in OVERSIZE:
        header = p.HEADER.pack(size)
        yield FuzzInput(f"length header {size}", "oversize", header + b"\x90", must_close=True)
        yield FuzzInput(
            f"length header {size} after Connect", "oversize", CONNECT + header, must_close=True
        )
    arrays, maps = b"\x91", b"\x81\xa1k"
    nested = {
        "RunCall.payload": ["RunCall", MUTATED_SEQ, "x", "@nest"],
        "RunRespond.payload": ["RunRespond", MUTATED_SEQ, 1, "@nest", None, ""],
        "SubmitSample.sample": ["SubmitSample", MUTATED_SEQ, "t", "@nest", ""],
    }
    for where, fields in nested.items():
        opener = maps if where.startswith("SubmitSample") else arrays
        data = CONNECT + _nested(fields, opener) + SYNC
        yield FuzzInput(f"{where} nested {NESTING} deep", "nesting", data, expect_seq=SYNC_SEQ)
    data = _nested(["@nest"], arrays)
    yield FuzzInput(f"top-level array nested {NESTING} deep", "nesting", data, must_close=True)
    for cut in (1, 3, 4, 5, len(CONNECT) - 1):
        yield FuzzInput(f"Connect cut at byte {cut}", "truncated", CONNECT[:cut], must_answer=False)
    data = CONNECT + SYNC[:-1]
    yield FuzzInput("Connect then Sync cut short", "truncated", data, expect_seq=1)


def random_value(rng: random.Random, depth: int = 3) -> Any:
    """Any MessagePack value: scalars of every type, lists and maps up to ``depth`` deep."""
    roll = rng.random()
    if depth > 0 and roll < 0.2:
        return [random_value(rng, depth - 1) for _ in range(rng.randint(0, 5))]
    if depth > 0 and roll < 0.3:
        keys = [
            rng.choice([rng.randbytes(3).hex(), rng.randint(-5, 5)])
            for _ in range(rng.randint(0, 4))
        ]
        return {k: random_value(rng, depth - 1) for k in keys}
    return rng.choice(
        [
            rng.choice(INTS),
            rng.randint(-1000, 1000),
            rng.choice(FLOATS),
            rng.random() * 1e6,
            "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 12))),
            rng.randbytes(rng.randint(0, 40)),
            rng.choice([True, False, None]),
        ]
    )


def _randomised(name: str, seed: int) -> Callable[[Setup], list[Any]]:
    def build(s: Setup) -> list[Any]:
        rng = random.Random(seed)
        fields = [random_value(rng) if rng.random() < 0.3 else f for f in templates(s)[name][0]]
        if rng.random() < 0.1:
            fields = fields[: rng.randint(0, len(fields))] + [random_value(rng)] * rng.randint(0, 2)
        return [name, *fields]

    return build


def random_inputs(rng: random.Random) -> Iterator[FuzzInput]:
    """Random inputs of every kind, without end."""
    names = list(templates(Setup.new(rng)))
    for n in itertools.count():
        roll = rng.random()
        if roll < 0.2:
            payload = rng.randbytes(rng.randint(0, 64))
            data = payload if rng.random() < 0.5 else p.HEADER.pack(len(payload)) + payload
            complete = _has_complete_frame(data)
            label = f"random bytes #{n}"
            yield FuzzInput(label, "random-bytes", data, must_answer=complete, must_close=complete)
        elif roll < 0.4:
            prefix = CONNECT if rng.random() < 0.5 else b""
            yield FuzzInput(
                f"random msgpack #{n}",
                "random-msgpack",
                prefix + frame(random_value(rng, 4)),
                must_close=True,
            )
        elif roll < 0.85:
            name = rng.choice(names)
            build = _randomised(name, rng.getrandbits(64))
            yield FuzzInput(
                f"random {name} #{n}", "random-fields", mutate=build, expect_seq=SYNC_SEQ
            )
        else:
            s = Setup.new(rng)
            name = rng.choice(names)
            full = CONNECT + frame([name, *templates(s)[name][0]]) + SYNC
            cut = rng.randint(1, len(full) - 1)
            answered = cut >= len(CONNECT)
            yield FuzzInput(
                f"truncated {name} #{n} at {cut}/{len(full)}",
                "truncated",
                full[:cut],
                must_answer=answered,
                expect_seq=1 if answered else None,
            )


def _has_complete_frame(data: bytes) -> bool:
    """Whether the first frame is complete, or announces more than the maximum (refused)."""
    if len(data) < p.HEADER.size:
        return False
    (length,) = p.HEADER.unpack_from(data)
    return length > p.DEFAULT_MAX_FRAME or len(data) >= p.HEADER.size + length


def inputs(rng: random.Random) -> Iterator[FuzzInput]:
    """The targeted inputs, then random ones until the time runs out."""
    yield from protocol_violations()
    yield from mutated()
    yield from random_inputs(rng)


# ---------------------------------------------------------------- probing


@dataclass
class Probe:
    """What the coordinator did with one input."""

    replies: list[Any] = field(default_factory=list)
    closed: bool = False  # by the coordinator, before we shut our side down
    lingered: bool = False  # still open LINGER_TIMEOUT after we shut our side down
    busy: float | None = None  # CPU share while the connection was held idle
    problem: str | None = None

    def errors(self) -> list[p.Error]:
        return [r for r in self.replies if isinstance(r, p.Error)]

    def answered(self, expect_seq: int | None) -> bool:
        return bool(self.errors()) or any(r.seq == expect_seq for r in self.replies)


def _ends_wait(expect_seq: int | None) -> Callable[[Any], bool]:
    def done(m: Any) -> bool:
        if isinstance(m, p.Error) and (m.seq == 0 or expect_seq is None):
            return True
        return expect_seq is not None and m.seq == expect_seq

    return done


def probe(coord: Coordinator, inp: FuzzInput, rng: random.Random) -> Probe:
    """Send ``inp`` on a fresh connection and watch what the coordinator does."""
    out = Probe()
    try:
        wire = Wire(coord.socket)
    except OSError as exc:
        out.problem = f"cannot connect: {exc}"
        return out
    try:
        with suppress(BrokenPipeError, ConnectionResetError):  # it may close mid-send
            if inp.mutate is None:
                wire.send(inp.data)
            else:
                setup = Setup.new(rng)
                wire.send(setup.frames())
                out.replies += wire.read(lambda m: m.seq == SETUP_SEQ, REPLY_TIMEOUT)
                granted = [r for r in out.replies if isinstance(r, p.ArenaGranted)]
                if not granted:
                    out.problem = f"setup requests not served: {_shown(out.replies)}"
                    return out
                setup = dataclasses.replace(
                    setup, segment=granted[0].segment, offset=granted[0].offset
                )
                out.replies = []
                wire.send(frame(inp.mutate(setup)) + SYNC)
            if inp.must_answer:
                out.replies += wire.read(_ends_wait(inp.expect_seq), REPLY_TIMEOUT)
        if inp.must_close and not wire.eof:
            out.replies += wire.read(lambda m: False, CLOSE_TIMEOUT)
        out.closed = wire.eof
        if inp.hold and not wire.eof:
            out.busy = coord.busy_share(inp.hold)
        with suppress(OSError):
            wire.sock.shutdown(socket.SHUT_WR)
        out.replies += wire.read(lambda m: False, LINGER_TIMEOUT)
        out.lingered = not wire.eof
    except p.ProtocolError as exc:
        out.problem = f"undecodable reply: {exc}"
    finally:
        wire.close()
    return out


def _shown(replies: list[Any]) -> str:
    return (
        ", ".join(f"{type(r).__name__}({getattr(r, 'message', r.seq)})" for r in replies)
        or "nothing"
    )


def verdicts(inp: FuzzInput, pr: Probe) -> list[tuple[str, str]]:
    """``(category, detail)`` of every way the coordinator got this input wrong."""
    out: list[tuple[str, str]] = []
    if pr.problem:
        out.append((pr.problem.partition(":")[0], pr.problem))
    for err in pr.errors():
        if "internal error" in err.message.lower():
            kind = re.search(r"internal error: (\w+)", err.message)
            out.append((f"internal error reply ({kind.group(1) if kind else '?'})", err.message))
        if err.code not in STABLE_CODES:
            out.append(("unstable error code", f"{err.code!r}: {err.message}"))
    if inp.must_answer and not pr.problem and not pr.answered(inp.expect_seq):
        what = "closed without an answer" if pr.closed else f"no answer within {REPLY_TIMEOUT:g} s"
        out.append((what, _shown(pr.replies)))
    if inp.must_close and not pr.closed:
        out.append(("connection left open after a protocol violation", _shown(pr.replies)))
    if pr.lingered:
        out.append(("connection still open after the client shut its side", _shown(pr.replies)))
    if pr.busy is not None and pr.busy > BUSY_SHARE:
        out.append(("coordinator spins while a connection waits", f"{pr.busy:.0%} of a CPU"))
    return out


# ---------------------------------------------------------------- the run


class Target:
    """The coordinator under fuzz and the healthy client beside it; restartable."""

    def __init__(self, workdir: Path, seed: int) -> None:
        self.workdir = workdir
        self.seed = seed
        self.used: list[Coordinator] = []
        self.start()

    def start(self) -> None:
        self.coord = Coordinator(self.workdir, *COORDINATOR_ARGS).start()
        self.used.append(self.coord)
        self.healthy = Healthy(self.coord.socket, self.seed + len(self.used))

    def stop(self) -> str | None:
        self.healthy.close()
        return self.coord.stop(5.0)


def run(seconds: float, seed: int, workdir: Path) -> Outcome:
    """Fuzz for about ``seconds`` seconds: the targeted inputs first, then random ones."""
    out = Outcome("fuzz")
    deadline = Deadline(seconds)
    rng = random.Random(seed)
    target = Target(workdir, seed)
    started = time.monotonic()
    records: list[dict[str, Any]] = []
    found: dict[str, list[tuple[str, str]]] = {}
    deaths: list[str] = []
    try:
        for inp in inputs(rng):
            if deadline.left() < RESERVE:
                break
            pr = probe(target.coord, inp, rng)
            problems = verdicts(inp, pr)
            health = target.healthy.round()
            if health is not None:
                problems.append(("healthy client failed after the input", health))
            for category, detail in problems:
                found.setdefault(category, []).append((inp.label, detail))
            records.append(_record(inp, pr, problems))
            if not target.coord.alive():
                coord = target.coord
                deaths.append(f"{inp.label}: exit {coord.returncode}, {coord.last_exception()}")
                target.healthy.close()
                target.start()
            elif health is not None:  # stuck: restart it, and say how it stopped
                problem = target.stop()
                if problem:
                    found.setdefault("stuck coordinator", []).append((inp.label, problem))
                target.start()
        _final_checks(out, target)
    finally:
        problem = target.stop()
        out.check(problem is None, f"fuzz: {problem}")
    log_failures(out, target.used)
    _report(out, records, found, deaths, time.monotonic() - started)
    return out


def _final_checks(out: Outcome, target: Target) -> None:
    """Idle CPU with no fuzz connection, then the books once only the monitor is left."""
    idle = target.coord.busy_share(HOLD)
    out.figures["idle_busy_share"] = round(idle, 3)
    out.check(idle <= BUSY_SHARE, f"fuzz: coordinator uses {idle:.0%} of a CPU while idle")
    target.healthy.close()
    monitor = Monitor(target.coord.socket)
    try:
        if not target.coord.wait_sockets(target.coord.idle_sockets + 1, 10.0):
            out.fail("fuzz: sessions still open 10 s after every client closed")
        monitor.delete_all()
        balance = monitor.balance()
    finally:
        monitor.close()
    out.figures["final_balance"] = vars(balance)
    out.check(balance.leaked_bytes == 0, f"fuzz: {balance.leaked_bytes} leaked bytes at the end")
    out.check(balance.objects == 0, f"fuzz: {balance.objects} objects left after deleting all")


def _record(inp: FuzzInput, pr: Probe, problems: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "label": inp.label,
        "kind": inp.kind,
        "answered": pr.answered(inp.expect_seq),
        "closed": pr.closed,
        "replies": [
            [type(r).__name__, r.seq, getattr(r, "code", None), getattr(r, "message", "")[:200]]
            for r in pr.replies
        ],
        "busy": pr.busy,
        "problems": [f"{c}: {d[:200]}" for c, d in problems],
    }


def _report(
    out: Outcome,
    records: list[dict[str, Any]],
    found: dict[str, list[tuple[str, str]]],
    deaths: list[str],
    elapsed: float,
) -> None:
    kinds: dict[str, int] = {}
    for r in records:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    internal = sum(len(v) for k, v in found.items() if k.startswith("internal error"))
    out.figures.update(
        inputs=len(records),
        by_kind=kinds,
        answered=sum(r["answered"] for r in records),
        hangups=sum(r["closed"] for r in records),
        coordinator_deaths=len(deaths),
        deaths=deaths,
        internal_error_replies=internal,
        inputs_with_problems=sum(bool(r["problems"]) for r in records),
        problems={k: len(v) for k, v in found.items()},
        seconds=round(elapsed, 1),
        records=records,
    )
    out.lines.append(
        f"fuzz: {len(records)} inputs in {elapsed:.1f} s; answered {out.figures['answered']}, "
        f"hung up {out.figures['hangups']}, coordinator deaths {len(deaths)}, "
        f"internal-error replies {internal}"
    )
    out.lines.append("  inputs: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
    for death in deaths:
        out.fail(f"fuzz: coordinator died after {death}")
    for category, hits in found.items():
        examples = "; ".join(f"{label} -> {detail[:120]}" for label, detail in hits[:2])
        out.fail(f"fuzz: {category}: {len(hits)} input(s), e.g. {examples}")
