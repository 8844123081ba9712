"""Runs and tasks (internal): the relay of ``RunCall``s to the client that owns a run, and
the requests that feed task telemetry.

:class:`RunRelay` owns which client owns which run and the calls on their way to it: a
``RunCall`` goes to the owner as a ``RunRequest``, and the owner's ``RunRespond`` goes back
to the caller as a ``RunResult`` (or an ``Error``). It never reads a payload: what a run
does with one is its owner's business. Only the coordinator's own user may start or steer
runs and tasks.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import TYPE_CHECKING

from plasma import errors
from plasma import protocol as p
from plasma.coordinator.session import Session

if TYPE_CHECKING:
    from plasma.coordinator.server import Coordinator

__all__ = [
    "MAX_CALLS_PER_CLIENT",
    "RunRelay",
    "check_may_run",
    "run_call",
    "run_register",
    "run_respond",
    "submit_sample",
    "task_done",
    "task_register",
]

MAX_CALLS_PER_CLIENT = 1024  # RunCalls one client may have waiting for the run's owner


def check_may_run(session: Session, owner_uid: int) -> None:
    """Refuse a client of another uid than the coordinator's (``owner_uid``)."""
    if session.uid != owner_uid:
        raise errors.PermissionDenied(
            f"uid {session.uid} may not start or steer tasks: only the coordinator's user "
            f"(uid {owner_uid}) may"
        )


class RunRelay:
    """The runs of one coordinator, whose clients are ``sessions``; the errors it answers
    are counted in ``error_counts``."""

    def __init__(
        self,
        owner_uid: int,
        sessions: Mapping[int, Session],
        error_counts: collections.Counter[str],
    ) -> None:
        self._owner_uid = owner_uid
        self._sessions = sessions
        self._error_counts = error_counts
        self._runs: dict[str, int] = {}  # run id -> owner client
        self._calls: dict[int, tuple[int, int, str]] = {}  # relay id -> (caller, seq, run id)
        self._calls_by_client: collections.Counter[int] = collections.Counter()
        self._next_call = 1

    def register(self, session: Session, msg: p.RunRegister) -> None:
        check_may_run(session, self._owner_uid)
        owner = self._runs.get(msg.run_id)
        if owner is not None and owner != session.client_id:
            raise errors.ObjectExists(f"run {msg.run_id!r} already has an owner")
        self._runs[msg.run_id] = session.client_id
        session.send(p.Ok(seq=msg.seq))

    def call(self, session: Session, msg: p.RunCall) -> None:
        check_may_run(session, self._owner_uid)
        owner = self._runs.get(msg.run_id)
        if owner is None:
            raise errors.ObjectNotFound(f"no live run {msg.run_id!r}")
        if self._calls_by_client[session.client_id] >= MAX_CALLS_PER_CLIENT:
            raise errors.BadRequest(
                f"{MAX_CALLS_PER_CLIENT} run calls of this client are already waiting"
            )
        call_id = self._next_call
        self._next_call += 1
        self._calls[call_id] = (session.client_id, msg.seq, msg.run_id)
        self._calls_by_client[session.client_id] += 1
        owner_session = self._sessions[owner]
        owner_session.send(
            p.RunRequest(seq=0, request=call_id, client=session.client_id, payload=msg.payload)
        )
        owner_session.flush()

    def respond(self, session: Session, msg: p.RunRespond) -> None:
        call = self._calls.get(msg.request)
        if call is None or self._runs.get(call[2]) != session.client_id:
            raise errors.ObjectNotFound(f"no pending run call {msg.request} for this client")
        del self._calls[msg.request]
        caller, seq, _ = call
        self._calls_by_client[caller] -= 1
        target = self._sessions.get(caller)
        if target is None:
            return
        if msg.code is not None:
            self._reply_error(caller, seq, msg.code, msg.message)
        else:
            target.send(p.RunResult(seq=seq, payload=msg.payload))
            target.flush()

    def forget(self, client: int) -> None:
        """``client`` is gone: its runs end (their callers are told), its calls are dropped."""
        for run_id in [r for r, owner in self._runs.items() if owner == client]:
            del self._runs[run_id]
            for call_id, (caller, seq, call_run) in list(self._calls.items()):
                if call_run == run_id:
                    del self._calls[call_id]
                    self._calls_by_client[caller] -= 1
                    self._reply_error(caller, seq, errors.OBJECT_NOT_FOUND, f"run {run_id} ended")
        self._calls = {c: v for c, v in self._calls.items() if v[0] != client}
        self._calls_by_client.pop(client, None)

    def _reply_error(self, client: int, seq: int, code: str, message: str) -> None:
        session = self._sessions.get(client)
        if session is not None:
            self._error_counts[code] += 1
            session.send(p.Error(seq=seq, code=code, message=message))
            session.flush()


# ------------------------------------------------------------ handlers (see handlers.py)


def run_register(coord: Coordinator, session: Session, msg: p.RunRegister) -> None:
    coord.runs.register(session, msg)


def run_call(coord: Coordinator, session: Session, msg: p.RunCall) -> None:
    coord.runs.call(session, msg)


def run_respond(coord: Coordinator, session: Session, msg: p.RunRespond) -> None:
    coord.runs.respond(session, msg)


def task_register(coord: Coordinator, session: Session, msg: p.TaskRegister) -> None:
    check_may_run(session, coord.uid)
    coord.telemetry.register(msg.task_id, msg.pid, msg.node, msg.run_id)
    session.send(p.Ok(seq=msg.seq))


def task_done(coord: Coordinator, session: Session, msg: p.TaskDone) -> None:
    check_may_run(session, coord.uid)
    coord.telemetry.done(msg.task_id, msg.run_id)
    session.send(p.Ok(seq=msg.seq))


def submit_sample(coord: Coordinator, session: Session, msg: p.SubmitSample) -> None:
    coord.telemetry.submit(msg.task_id, msg.sample, msg.run_id)
    session.send(p.Ok(seq=msg.seq))
