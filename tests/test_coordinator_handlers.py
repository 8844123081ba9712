"""The coordinator's handler table and dispatch (plasma.coordinator.handlers), without a
coordinator: every request a client may send has a handler, nothing else is dispatched, and
a handler's failure is the client's Error."""

from __future__ import annotations

import collections
import typing
from types import SimpleNamespace
from typing import Any

import pytest

from plasma import errors
from plasma import protocol as p
from plasma.coordinator import handshake
from plasma.coordinator.handlers import HANDLERS, WRITE_REQUESTS, handle, handler_for
from plasma.coordinator.session import Hangup

REQUESTS = set(typing.get_args(p.Request))
REPLIES = set(typing.get_args(p.Reply))


class FakeSession:
    def __init__(self, *, connected: bool = True, writable: bool = True) -> None:
        self.connected = connected
        self.writable = writable
        self.uid = 4242
        self.sent: list[Any] = []

    def send(self, msg: Any, fds: list[int] | None = None, *, owned: bool = False) -> None:
        self.sent.append(msg)


def fake_coordinator() -> Any:
    return SimpleNamespace(op_counts=collections.Counter(), error_counts=collections.Counter())


def test_the_table_has_a_handler_for_every_request_and_nothing_else():
    assert set(HANDLERS) == REQUESTS
    assert not REQUESTS & REPLIES


def test_write_requests_are_requests():
    assert WRITE_REQUESTS <= REQUESTS
    assert p.Connect not in WRITE_REQUESTS and p.Get not in WRITE_REQUESTS


def test_connect_comes_first_and_only_first():
    assert handler_for(p.Connect, connected=False) is handshake.connect
    for kind in REQUESTS - {p.Connect}:
        with pytest.raises(Hangup, match="first message must be Connect"):
            handler_for(kind, connected=False)
        assert handler_for(kind, connected=True) is HANDLERS[kind]
    with pytest.raises(Hangup, match="unexpected Connect after Connect"):
        handler_for(p.Connect, connected=True)


@pytest.mark.parametrize("kind", sorted(REPLIES | {int}, key=lambda k: k.__name__))
def test_anything_but_a_request_is_refused(kind):
    with pytest.raises(Hangup, match=f"unexpected {kind.__name__}"):
        handler_for(kind, connected=True)


@pytest.mark.parametrize("kind", sorted(WRITE_REQUESTS, key=lambda k: k.__name__))
def test_a_read_only_session_is_refused_writes(kind, monkeypatch):
    monkeypatch.setitem(HANDLERS, kind, _never_called)
    coord, session = fake_coordinator(), FakeSession(writable=False)
    handle(coord, session, _request(kind, seq=9))
    (reply,) = session.sent
    assert isinstance(reply, p.Error) and reply.seq == 9
    assert reply.code == errors.PERMISSION_DENIED and "--allow-uid 4242:rw" in reply.message
    assert coord.op_counts[kind.__name__] == 1
    assert coord.error_counts[errors.PERMISSION_DENIED] == 1


def test_a_plasma_error_is_the_clients_error(monkeypatch):
    def missing(coord: Any, session: Any, msg: Any) -> None:
        raise errors.ObjectNotFound("no such object")

    monkeypatch.setitem(HANDLERS, p.Contains, missing)
    coord, session = fake_coordinator(), FakeSession()
    handle(coord, session, p.Contains(seq=3, id=bytes(20)))
    assert session.sent == [p.Error(seq=3, code=errors.OBJECT_NOT_FOUND, message="no such object")]
    assert coord.error_counts == {errors.OBJECT_NOT_FOUND: 1}


def test_a_bug_in_a_handler_is_a_bad_request_not_a_crash(monkeypatch, caplog):
    def broken(coord: Any, session: Any, msg: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setitem(HANDLERS, p.Contains, broken)
    coord, session = fake_coordinator(), FakeSession()
    handle(coord, session, p.Contains(seq=5, id=bytes(20)))
    (reply,) = session.sent
    assert reply.seq == 5 and reply.code == errors.BAD_REQUEST
    assert "internal error: RuntimeError('a bug')" in reply.message
    assert "internal error handling Contains" in caplog.text


def test_a_hangup_ends_the_session(monkeypatch):
    def hangs_up(coord: Any, session: Any, msg: Any) -> None:
        raise Hangup("bye")

    monkeypatch.setitem(HANDLERS, p.Contains, hangs_up)
    session = FakeSession()
    with pytest.raises(Hangup, match="bye"):
        handle(fake_coordinator(), session, p.Contains(seq=1, id=bytes(20)))
    assert session.sent == []


def test_a_request_out_of_order_is_counted_then_hangs_up():
    coord = fake_coordinator()
    with pytest.raises(Hangup):
        handle(coord, FakeSession(connected=False), p.Contains(seq=1, id=bytes(20)))
    assert coord.op_counts == {"Contains": 1}


def _never_called(coord: Any, session: Any, msg: Any) -> None:
    raise AssertionError("a refused request reached its handler")


def _request(kind: type, seq: int) -> Any:
    """A ``kind`` request numbered ``seq``, its other fields None (a refused request is never
    looked at further; msgspec checks types when decoding, not here)."""
    required = len(kind.__struct_fields__) - len(kind.__struct_defaults__)
    assert kind.__struct_fields__[0] == "seq"
    return kind(seq, *[None] * (required - 1))
