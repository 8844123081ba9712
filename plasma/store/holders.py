"""Who holds memory: per client and in all (what ``plasma-coord memory`` and store_full say).

:func:`count_held` adds up, in one pass over the clients' references and the generations
their pin tables hold, what each client holds and what is held in all;
:func:`no_space_text` and :func:`holders_report` say it (a store_full message,
:meth:`Store.holders`). This module only counts and formats: it never changes what it
counts.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from plasma.store.objects import State

TOP_HOLDERS = 3  # clients a store_full message names (those holding the most memory)

if TYPE_CHECKING:
    from plasma.store.clients import ClientRecord
    from plasma.store.memory import Node, Segment
    from plasma.store.objects import ObjectRecord


class Holding:
    """What one client holds (see Store.holders): bytes and objects it references (sealed),
    creates (unsealed), pins without referencing them, and its arena's unused tail."""

    __slots__ = ("arena", "pin_bytes", "pins", "ref_bytes", "refs", "unsealed", "unsealed_bytes")

    def __init__(self) -> None:
        self.refs = self.ref_bytes = 0
        self.pins = self.pin_bytes = 0
        self.unsealed = self.unsealed_bytes = 0
        self.arena = 0

    @property
    def total(self) -> int:
        return self.ref_bytes + self.pin_bytes + self.unsealed_bytes + self.arena


def holding_text(h: Holding) -> str:
    """``"N bytes: R referenced, P pinned, ..."`` (the kinds it holds some of)."""
    kinds = [
        (h.ref_bytes, "referenced"),
        (h.pin_bytes, "pinned"),
        (h.unsealed_bytes, "being written"),
        (h.arena, "in its arena"),
    ]
    parts = ", ".join(f"{n} {kind}" for n, kind in kinds if n)
    return f"{h.total} bytes: {parts}"


class Held:
    """What holds memory (of one node, or of all): see Store._held_on and Store.holders."""

    __slots__ = (
        "arenas",
        "clients",
        "objects",
        "pinned_only",
        "pinned_unreferenced",
        "referenced",
        "writing",
    )

    def __init__(self) -> None:
        self.referenced = 0  # sealed objects with references (bytes; shared ones once each)
        self.writing = 0  # unsealed objects
        self.arenas = 0  # the unused tails of arenas
        self.pinned_unreferenced = 0  # bytes of live unreferenced objects readers pin
        self.pinned_only = 0  # bytes of every object pins hold and no reference (dying too)
        self.clients: dict[int, Holding] = {}  # every client, holding something or not
        # with objects asked for: id -> (record, clients referencing it, clients pinning it)
        self.objects: dict[bytes, tuple[ObjectRecord, list[int], list[int]]] | None = None

    @property
    def total(self) -> int:
        return self.referenced + self.writing + self.arenas

    @property
    def by_client(self) -> Counter[int]:
        """Bytes held per client (those holding some)."""
        return Counter({cid: h.total for cid, h in self.clients.items() if h.total})


def count_held(
    nd: Node | None,
    clients: Mapping[int, ClientRecord],
    record_of: Callable[[bytes], ObjectRecord | None],
    segments: Mapping[int, Segment],
    pins: Mapping[int, Iterable[int]],
    published: Callable[[int], tuple[bytes, ObjectRecord] | None],
    objects: bool = False,
) -> Held:
    """Who holds memory (of ``nd``; None: of every node), per client and in all:
    references (sealed objects, and unsealed ones being written), arena tails, and pins
    (``pins``: the generations each client pins) of objects the pinning client does not
    reference. ``objects`` also gathers each held object with the clients holding it."""
    held = Held()
    if objects:
        held.objects = {}
    found = held.objects
    seen: set[bytes] = set()
    for c in clients.values():
        mine = held.clients[c.id] = Holding()
        for oid in c.refs:
            rec = record_of(oid)
            if rec is None or rec.state is State.SPILLED:
                continue
            if nd is not None and segments[rec.loc.segment].node is not nd:
                continue
            writing = oid in c.creating
            if writing:
                mine.unsealed += 1
                mine.unsealed_bytes += rec.size
            else:
                mine.refs += 1
                mine.ref_bytes += rec.size
            if found is not None:
                found.setdefault(oid, (rec, [], []))[1].append(c.id)
            if oid in seen:
                continue
            seen.add(oid)
            if writing:
                held.writing += rec.size
            else:
                held.referenced += rec.size
        a = c.arena
        if a is not None and (nd is None or a.segment.node is nd) and a.cursor < a.end:
            mine.arena = a.end - a.cursor
            held.arenas += mine.arena
    counted: set[int] = set()
    for cid, gens in pins.items():  # (as many steps as pins)
        holding = held.clients.get(cid)
        refs = clients[cid].refs if holding is not None else {}
        for gen in set(gens):
            found_pin = published(gen)
            if found_pin is None:
                continue
            key, rec = found_pin
            segment = segments.get(rec.loc.segment)
            if segment is None or rec.state is State.SPILLED:
                continue
            if nd is not None and segment.node is not nd:
                continue
            if holding is not None and key not in refs:
                holding.pins += 1
                holding.pin_bytes += rec.size
            if found is not None:
                found.setdefault(key, (rec, [], []))[2].append(cid)
            if gen in counted or key in seen:
                continue  # (counted once, or counted as referenced)
            counted.add(gen)
            held.pinned_only += rec.size
            if segment.node.clock.holds(key, rec):
                held.pinned_unreferenced += rec.size
    return held


def no_space_text(nd: Node, held: Held, labels: Mapping[int, str], spill: str = "") -> str:
    """Why a create on ``nd`` found no space: what holds the node's memory (``held``: bytes
    referenced, being written, in arenas, pinned by readers, unreferenced, being freed and
    free), ``spill`` (what spilling says, if on), and the clients that hold the most of it
    (named by ``labels``)."""
    pinned = held.pinned_unreferenced
    unreferenced = nd.clock.bytes - pinned
    freeing = nd.used - held.total - nd.clock.bytes
    text = (
        f"no space on node {nd.id}: {held.referenced} bytes referenced, {held.writing} "
        f"being written, {held.arenas} in arenas, {pinned} pinned by readers, "
        f"{unreferenced} unreferenced, {max(0, freeing)} being freed, "
        f"{nd.budget - nd.used} free{spill}"
    )
    top = held.by_client.most_common(TOP_HOLDERS)
    if top:
        text += "; held most by " + ", ".join(
            f"{labels[cid]} ({holding_text(held.clients[cid])})" for cid, _ in top
        )
        text += " (`plasma-coord memory` lists every holder)"
    return text + nd.shortage


def holders_report(
    held: Held,
    labels: Mapping[int, str],
    top_objects: int,
    describe: Callable[[bytes, ObjectRecord], dict[str, Any]],
) -> dict[str, Any]:
    """What :meth:`Store.holders` returns, from ``held`` (counted with its objects): each
    client (named by ``labels``, most bytes held first), the totals, and the
    ``top_objects`` largest objects held (``describe`` says what each is) with the clients
    referencing and pinning them."""
    clients = [
        {
            "id": cid,
            "label": labels[cid],
            "references": {"bytes": h.ref_bytes, "objects": h.refs},
            "pins": {"bytes": h.pin_bytes, "objects": h.pins},
            "unsealed": {"bytes": h.unsealed_bytes, "objects": h.unsealed},
            "arena": h.arena,
            "total": h.total,
        }
        for cid, h in sorted(held.clients.items(), key=lambda kv: (-kv[1].total, kv[0]))
    ]
    found = held.objects or {}
    top = heapq.nlargest(top_objects, found.items(), key=lambda kv: (kv[1][0].size, kv[0]))
    return {
        "clients": clients,
        "total": {
            "references": held.referenced,
            "unsealed": held.writing,
            "pins": held.pinned_only,
            "arenas": held.arenas,
            "bytes": held.total + held.pinned_only,
        },
        "objects": [
            {
                **describe(key, rec),
                "referenced_by": sorted(referenced_by),
                "pinned_by": sorted(pinned_by),
            }
            for key, (rec, referenced_by, pinned_by) in top
        ],
    }
