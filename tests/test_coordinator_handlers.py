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
from plasma.store import Store
from tests.helpers import FakeProvider, oid

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


def _sealing(ids: list[bytes]) -> tuple[Any, FakeSession, Store]:
    """A coordinator of a real store where client 1 created ``ids``, and its session."""
    store = Store({0: 1 << 20}, FakeProvider(), segment_size=1 << 20)
    store.register_client(1)
    for key in ids:
        store.create(1, key, 8)
    coord = fake_coordinator()
    coord.store = store
    session = FakeSession()
    session.client_id = 1  # type: ignore[attr-defined]
    return coord, session, store


@pytest.mark.parametrize("ack", [True, False])
def test_a_seal_of_one_id_or_of_several_is_acknowledged_only_when_asked(ack: bool) -> None:
    coord, session, store = _sealing([oid(1), oid(2), oid(3)])
    handle(coord, session, p.Seal(seq=5, ids=[oid(1)], ack=ack))
    handle(coord, session, p.Seal(seq=6, ids=[oid(2), oid(3)], ack=ack))
    assert session.sent == ([p.Ok(seq=5), p.Ok(seq=6)] if ack else [])
    assert all(store.info(oid(n)).state == "sealed" for n in (1, 2, 3))


def test_a_failed_seal_of_one_id_is_the_same_error_as_in_a_list() -> None:
    """The one-id seal (no failure list) answers as the general one does."""
    coord, session, _ = _sealing([oid(1)])
    handle(coord, session, p.Seal(seq=1, ids=[oid(1)], ack=True))
    for seq, ids in ((2, [oid(1)]), (3, [oid(9)])):  # sealed already; never created
        handle(coord, session, p.Seal(seq=seq, ids=ids, ack=True))
        handle(coord, session, p.Seal(seq=seq, ids=[*ids, oid(1)], ack=True))
    one_sealed, two_sealed, one_missing, two_missing = session.sent[1:]
    assert all(isinstance(r, p.Error) for r in session.sent[1:])
    assert [r.seq for r in session.sent[1:]] == [2, 2, 3, 3]
    assert one_sealed.code == two_sealed.code == errors.BAD_REQUEST
    assert one_missing.code == two_missing.code == errors.OBJECT_NOT_FOUND
    assert two_sealed.message == one_sealed.message + " (and 1 more)"
    assert two_missing.message == one_missing.message + " (and 1 more)"
