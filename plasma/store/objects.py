"""An object's record and its two states: where it is in its life, and the I/O on its bytes.

Every object the store knows has one :class:`ObjectRecord`. What may be done with it depends
on two things, each an enum here, and on nothing else:

* its :class:`State`, which changes only by :func:`step`, through the one table
  :data:`TRANSITIONS` (in the style of h11's ``_state.py``): a step the table does not
  list for the current state raises :class:`IllegalTransition` and changes nothing;
* its :class:`Io`: at most one transfer of its bytes at a time (written to disk, read back
  from disk, pages moved or copied to other nodes), begun by :func:`begin_io` and ended by
  :func:`end_io`. Which I/O each state may have under way is :data:`IO_ALLOWED`.

=========  ===========================================================  ==================
state      meaning                                                      I/O it may have
=========  ===========================================================  ==================
CREATED    allocated; its creator writes it (holding one reference)     moving
SEALED     immutable and readable, in memory (and in the directory)     spilling, moving
EVICTING   an eviction victim: its slot reads dying; its pin scan       none
           frees it (or drops it to disk) unless a reader pinned it or
           a get asked for it meanwhile (then SEALED again)
SPILLED    only on disk (its record keeps sizes and last node);         restoring
           a get reads it back
DELETED    hidden: gone for every request; its memory is freed once no  any
           reference, pin or I/O holds it
FREED      its memory is given back (or will be, when its I/O ends)     any
=========  ===========================================================  ==================

This module decides nothing about memory, pins or clients: it records what the store did
and refuses what the store must never do (seal a deleted object, evict one being written
to disk, restore one in memory), and says what a listing shows of a record
(:func:`object_info`). It must never import the store.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import msgspec

from plasma.records import ObjectInfo, ObjectLocation, SpillEntry


class State(enum.Enum):
    """Where an object is in its life (see the module docstring)."""

    __hash__ = object.__hash__  # (members are singletons: identity, in C, not by name)

    CREATED = "created"
    SEALED = "sealed"
    EVICTING = "evicting"
    SPILLED = "spilled"
    DELETED = "deleted"
    FREED = "freed"


class Io(enum.Enum):
    """The transfer of an object's bytes under way, if any."""

    __hash__ = object.__hash__  # (members are singletons: identity, in C, not by name)

    NONE = "none"
    SPILLING = "spilling"  # being written to a spill file
    RESTORING = "restoring"  # being read back from its spill file
    MOVING = "moving"  # its pages being moved to other nodes, or copied to replicas


class Step(enum.Enum):
    """What happens to an object: the edges of :data:`TRANSITIONS`."""

    __hash__ = object.__hash__  # (members are singletons: identity, in C, not by name)

    SEAL = "seal"  # its creator sealed it (or a copy of it was made)
    EVICT = "evict"  # chosen by eviction; freed after its pin scan
    REVIVE = "revive"  # an eviction victim pinned or asked for meanwhile: it stays
    TO_DISK = "to disk"  # evicted with a copy on disk: its memory goes, it stays listed
    RESTORE = "restore"  # read back from disk into memory
    DELETE = "delete"  # deleted (or its copy on disk lost, or superseded)
    FREE = "free"  # its memory is given back: the record is done


TRANSITIONS: dict[State, dict[Step, State]] = {
    State.CREATED: {Step.SEAL: State.SEALED, Step.FREE: State.FREED},
    State.SEALED: {
        Step.EVICT: State.EVICTING,
        Step.TO_DISK: State.SPILLED,  # (evicted and never published: no pin scan to wait for)
        Step.DELETE: State.DELETED,
        Step.FREE: State.FREED,  # (likewise, without a copy)
    },
    State.EVICTING: {
        Step.REVIVE: State.SEALED,
        Step.TO_DISK: State.SPILLED,
        Step.DELETE: State.DELETED,
        Step.FREE: State.FREED,
    },
    State.SPILLED: {Step.RESTORE: State.SEALED, Step.DELETE: State.DELETED},
    State.DELETED: {Step.FREE: State.FREED},
    State.FREED: {},
}

_ALL_IO = frozenset(Io)
IO_ALLOWED: dict[State, frozenset[Io]] = {
    State.CREATED: frozenset({Io.NONE, Io.MOVING}),
    State.SEALED: frozenset({Io.NONE, Io.SPILLING, Io.MOVING}),
    State.EVICTING: frozenset({Io.NONE}),
    State.SPILLED: frozenset({Io.NONE, Io.RESTORING}),
    State.DELETED: _ALL_IO,
    State.FREED: _ALL_IO,
}

# states whose bytes are in the store's memory and readable by a get (EVICTING: until its
# pin scan; a get revives it)
IN_MEMORY = frozenset({State.SEALED, State.EVICTING})
# sealed and not deleted: a get returns it (from memory, or read back from disk)
READABLE = frozenset({State.SEALED, State.EVICTING, State.SPILLED})
# deleted: gone for every request (its memory may still be held by references, pins or I/O)
GONE = frozenset({State.DELETED, State.FREED})


class IllegalTransition(Exception):
    """The store tried a step or an I/O its object's state does not allow (a bug)."""


class ObjectRecord(msgspec.Struct, gc=False):
    """One object's record (a C-level struct: fast to create, small). Change ``state`` and
    ``io`` only through :func:`step`, :func:`begin_io` and :func:`end_io`."""

    loc: ObjectLocation
    size: int  # allocated bytes
    owner: int  # creator's client id
    create_time: float
    state: State = State.CREATED
    io: Io = Io.NONE
    io_token: int = 0  # names the last I/O begun (what is freed when it ends is kept under it)
    ref_count: int = 0
    construct_duration: float = 0.0  # seconds from create to seal (arena objects: 0)
    slot: int = -1  # its directory slot once published, else -1
    gen: int = 0  # its generation once published (pins name it), else 0
    spill: tuple[int, SpillEntry] | None = None  # its copy on disk: (file, entry)
    pages_on: tuple[int, ...] | None = None  # nodes its pages were moved to (None: its node's)
    replicas: tuple[int, ...] = ()  # nodes with a read-only copy (see Store.replicate)


def step(rec: ObjectRecord, what: Step) -> State:
    """Apply ``what`` to ``rec`` (its new state), or raise :class:`IllegalTransition`."""
    new = TRANSITIONS[rec.state].get(what)
    if new is None or rec.io not in IO_ALLOWED[new]:
        raise IllegalTransition(
            f"cannot {what.value} an object that is {rec.state.value}"
            + (f" (and {rec.io.value})" if rec.io is not Io.NONE else "")
        )
    rec.state = new
    return new


def begin_io(rec: ObjectRecord, io: Io, token: int) -> None:
    """``io`` on ``rec``'s bytes starts, named ``token`` (unique for the store's life):
    refused while another is under way, or when its state does not allow it."""
    if rec.io is not Io.NONE or io is Io.NONE or io not in IO_ALLOWED[rec.state]:
        raise IllegalTransition(
            f"cannot start {io.value} on an object that is {rec.state.value} and {rec.io.value}"
        )
    rec.io = io
    rec.io_token = token


def end_io(rec: ObjectRecord, io: Io) -> None:
    """``io`` on ``rec``'s bytes ended (refused if it was not the one under way)."""
    if rec.io is not io or io is Io.NONE:
        raise IllegalTransition(f"{io.value} ended on an object that is {rec.io.value}")
    rec.io = Io.NONE


def object_info(oid: bytes, rec: ObjectRecord, pins: Mapping[int, int]) -> ObjectInfo:
    """What ``list``/``info`` show of an object: its reference count includes the pins
    (``pins``: count by generation) on it while it is in memory."""
    loc = rec.loc
    in_memory = rec.state in IN_MEMORY
    pinned = pins.get(rec.gen, 0) if pins and in_memory else 0
    return ObjectInfo(
        oid,
        loc.data_size,
        loc.metadata_size,
        loc.node,
        "sealed" if in_memory else rec.state.value,
        rec.ref_count + pinned,
        rec.create_time,
        rec.owner,
        rec.construct_duration if rec.state is not State.CREATED else -1.0,
        list(rec.pages_on) if rec.pages_on is not None else [],
        list(rec.replicas),
    )
