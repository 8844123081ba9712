"""The object record's state machine alone (no Store): the transition table and the I/O rules."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plasma.records import ObjectLocation
from plasma.store.objects import (
    IO_ALLOWED,
    TRANSITIONS,
    IllegalTransition,
    Io,
    ObjectRecord,
    State,
    Step,
    begin_io,
    end_io,
    step,
)


def record(state: State = State.CREATED, io: Io = Io.NONE) -> ObjectRecord:
    rec = ObjectRecord(ObjectLocation(1, 0, 10, 0, 0), 64, 1, 0.0, state)
    rec.io = io
    return rec


def test_the_table_names_every_state_and_io() -> None:
    assert set(TRANSITIONS) == set(State) and set(IO_ALLOWED) == set(State)
    assert all(Io.NONE in allowed for allowed in IO_ALLOWED.values())  # I/O may always end
    assert TRANSITIONS[State.FREED] == {}  # freed is the end


@pytest.mark.parametrize(("state", "what"), list(itertools.product(State, Step)))
def test_every_step_the_table_lacks_is_refused_and_changes_nothing(
    state: State, what: Step
) -> None:
    rec = record(state)
    new = TRANSITIONS[state].get(what)
    if new is None:
        with pytest.raises(IllegalTransition, match=f"cannot {what.value} an object that is"):
            step(rec, what)
        assert rec.state is state
    else:
        assert step(rec, what) is new and rec.state is new


@pytest.mark.parametrize(
    ("state", "what", "io"),
    [
        (State.SEALED, Step.EVICT, Io.SPILLING),  # eviction never takes an object being written
        (State.SEALED, Step.EVICT, Io.MOVING),  # ... nor one whose pages move
        (State.SEALED, Step.TO_DISK, Io.MOVING),
        (State.CREATED, Step.SEAL, Io.RESTORING),  # (no such I/O on an object being written)
    ],
)
def test_a_step_into_a_state_that_does_not_allow_the_io_under_way_is_refused(
    state: State, what: Step, io: Io
) -> None:
    rec = record(state, io)
    with pytest.raises(IllegalTransition, match=f"and {io.value}"):
        step(rec, what)
    assert rec.state is state and rec.io is io


@pytest.mark.parametrize(("state", "io"), list(itertools.product(State, Io)))
def test_io_begins_only_where_the_state_allows_it_and_one_at_a_time(state: State, io: Io) -> None:
    rec = record(state)
    if io is Io.NONE or io not in IO_ALLOWED[state]:
        with pytest.raises(IllegalTransition):
            begin_io(rec, io, 7)
        assert rec.io is Io.NONE
        return
    begin_io(rec, io, 7)
    assert rec.io is io and rec.io_token == 7
    for other in Io:
        with pytest.raises(IllegalTransition):
            begin_io(rec, other, 8)  # (one at a time, the same one again too)
    assert rec.io_token == 7
    for other in set(Io) - {io}:
        with pytest.raises(IllegalTransition):
            end_io(rec, other)  # only the I/O under way ends
    end_io(rec, io)
    assert rec.io is Io.NONE and rec.io_token == 7  # (what was freed meanwhile is under it)
    with pytest.raises(IllegalTransition):
        end_io(rec, io)


@given(st.lists(st.one_of(st.sampled_from(Step), st.sampled_from(Io)), max_size=40))
def test_whatever_is_tried_the_record_stays_in_a_legal_combination(
    tries: list[Step | Io],
) -> None:
    rec = record()
    for t in tries:
        before = (rec.state, rec.io)
        try:
            if isinstance(t, Step):
                step(rec, t)
            elif rec.io is Io.NONE:
                begin_io(rec, t, 1)
            else:
                end_io(rec, t)
        except IllegalTransition:
            assert (rec.state, rec.io) == before  # a refused try changes nothing
        assert rec.io in IO_ALLOWED[rec.state]


def test_the_states_a_store_reaches_are_all_listed() -> None:
    """Every state can be reached from CREATED (none is dead text)."""
    reached, frontier = {State.CREATED}, [State.CREATED]
    while frontier:
        for new in TRANSITIONS[frontier.pop()].values():
            if new not in reached:
                reached.add(new)
                frontier.append(new)
    assert reached == set(State)
