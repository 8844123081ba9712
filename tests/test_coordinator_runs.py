"""The run relay (plasma.coordinator.runs), without a coordinator: a call goes to the run's
owner, its answer back to the caller, and a run that ends answers every call still open."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from plasma import errors
from plasma import protocol as p
from plasma.coordinator.runs import MAX_CALLS_PER_CLIENT, RunRelay

OWNER_UID = 1000


class FakeSession:
    def __init__(self, client_id: int, uid: int = OWNER_UID) -> None:
        self.client_id = client_id
        self.uid = uid
        self.sent: list[Any] = []

    def send(self, msg: Any, fds: list[int] | None = None, *, owned: bool = False) -> None:
        self.sent.append(msg)

    def flush(self) -> None:
        pass


@pytest.fixture
def relay() -> tuple[RunRelay, dict[int, FakeSession], collections.Counter[str]]:
    sessions = {n: FakeSession(n) for n in (1, 2, 3)}
    counts: collections.Counter[str] = collections.Counter()
    return RunRelay(OWNER_UID, sessions, counts), sessions, counts  # type: ignore[arg-type]


def test_a_call_goes_to_the_owner_and_its_result_back(relay):
    runs, sessions, _ = relay
    owner, caller = sessions[1], sessions[2]
    runs.register(owner, p.RunRegister(seq=1, run_id="r"))
    assert owner.sent == [p.Ok(seq=1)]
    runs.call(caller, p.RunCall(seq=7, run_id="r", payload={"x": 1}))
    request = owner.sent[-1]
    assert request == p.RunRequest(seq=0, request=request.request, client=2, payload={"x": 1})
    runs.respond(owner, p.RunRespond(seq=2, request=request.request, payload=[3]))
    assert caller.sent == [p.RunResult(seq=7, payload=[3])]
    with pytest.raises(errors.ObjectNotFound):  # answered already
        runs.respond(owner, p.RunRespond(seq=3, request=request.request, payload=[3]))


def test_an_error_answer_is_counted(relay):
    runs, sessions, counts = relay
    runs.register(sessions[1], p.RunRegister(seq=1, run_id="r"))
    runs.call(sessions[2], p.RunCall(seq=7, run_id="r", payload=None))
    call_id = sessions[1].sent[-1].request
    answer = p.RunRespond(seq=2, request=call_id, code="bad_request", message="no")
    runs.respond(sessions[1], answer)
    assert sessions[2].sent == [p.Error(seq=7, code="bad_request", message="no")]
    assert counts == {"bad_request": 1}


def test_only_the_owner_answers_and_a_run_has_one_owner(relay):
    runs, sessions, _ = relay
    runs.register(sessions[1], p.RunRegister(seq=1, run_id="r"))
    with pytest.raises(errors.ObjectExists):
        runs.register(sessions[2], p.RunRegister(seq=1, run_id="r"))
    runs.call(sessions[2], p.RunCall(seq=7, run_id="r", payload=None))
    call_id = sessions[1].sent[-1].request
    with pytest.raises(errors.ObjectNotFound):
        runs.respond(sessions[3], p.RunRespond(seq=2, request=call_id, payload=None))
    with pytest.raises(errors.ObjectNotFound, match="no live run"):
        runs.call(sessions[2], p.RunCall(seq=8, run_id="other", payload=None))


def test_another_uid_may_not_run(relay):
    runs, _, _ = relay
    stranger = FakeSession(9, uid=OWNER_UID + 1)
    with pytest.raises(errors.PermissionDenied, match="may not start or steer tasks"):
        runs.register(stranger, p.RunRegister(seq=1, run_id="r"))


def test_a_client_has_a_bounded_number_of_calls_waiting(relay):
    runs, sessions, _ = relay
    runs.register(sessions[1], p.RunRegister(seq=1, run_id="r"))
    for seq in range(MAX_CALLS_PER_CLIENT):
        runs.call(sessions[2], p.RunCall(seq=seq, run_id="r", payload=None))
    with pytest.raises(errors.BadRequest, match="already waiting"):
        runs.call(sessions[2], p.RunCall(seq=0, run_id="r", payload=None))
    runs.call(sessions[3], p.RunCall(seq=0, run_id="r", payload=None))  # others may still


def test_when_the_owner_goes_its_callers_are_answered(relay):
    runs, sessions, counts = relay
    runs.register(sessions[1], p.RunRegister(seq=1, run_id="r"))
    runs.call(sessions[2], p.RunCall(seq=7, run_id="r", payload=None))
    runs.call(sessions[3], p.RunCall(seq=8, run_id="r", payload=None))
    runs.forget(1)
    assert sessions[2].sent == [p.Error(seq=7, code=errors.OBJECT_NOT_FOUND, message="run r ended")]
    assert sessions[3].sent == [p.Error(seq=8, code=errors.OBJECT_NOT_FOUND, message="run r ended")]
    assert counts == {errors.OBJECT_NOT_FOUND: 2}
    runs.register(sessions[2], p.RunRegister(seq=2, run_id="r"))  # the run id is free again


def test_when_a_caller_goes_its_calls_are_dropped(relay):
    runs, sessions, _ = relay
    runs.register(sessions[1], p.RunRegister(seq=1, run_id="r"))
    runs.call(sessions[2], p.RunCall(seq=7, run_id="r", payload=None))
    call_id = sessions[1].sent[-1].request
    runs.forget(2)
    with pytest.raises(errors.ObjectNotFound):
        runs.respond(sessions[1], p.RunRespond(seq=2, request=call_id, payload=None))
