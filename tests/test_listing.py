"""``list()`` of a big store: pages from a snapshot of the ids, so no reply grows with the
store and the coordinator answers other clients between pages."""

from __future__ import annotations

from typing import Any

import pytest

import plasma
from plasma import protocol as p
from plasma.errors import BadRequest
from tests.conftest import RunningCoordinator
from tests.helpers import object_id as oid
from tests.helpers import open_client

COUNT = 2 * p.LIST_PAGE + 100  # three pages


def fill(client: plasma.Client, count: int = COUNT, first: int = 1) -> None:
    for start in range(first, first + count, 4096):
        items = [
            (oid(n), n.to_bytes(4, "big"), b"m")
            for n in range(start, min(start + 4096, first + count))
        ]
        client.create_and_seal_many(items)
    client.flush()


async def test_a_listing_of_several_pages_has_every_object_once(
    coordinator: RunningCoordinator, kind: str
):
    with plasma.connect(coordinator.socket) as filler:
        fill(filler)
    async with open_client(kind, coordinator.socket) as c:
        listed = await c.list()
    assert set(listed) == {oid(n) for n in range(1, COUNT + 1)}
    assert all(v["data_size"] == 4 and v["metadata_size"] == 1 for v in listed.values())


async def test_objects_kept_with_no_record_are_read_deleted_and_made_again(
    coordinator: RunningCoordinator, kind: str
):
    """Beyond the 4,096 idle objects touched last the coordinator keeps no record of an
    idle object (plasma.store.table): every request still finds it as it was."""
    with plasma.connect(coordinator.socket) as filler:
        fill(filler)
    numbers = range(1, COUNT + 1, 97)
    async with open_client(kind, coordinator.socket) as c:
        assert (await c.stats())["objects"] == COUNT
        assert all([await c.contains(oid(n)) for n in numbers])
        got = await c.get_buffers([oid(n) for n in numbers], timeout=0)
        assert [bytes(b) for b in got] == [n.to_bytes(4, "big") for n in numbers]
        del got
        deferred = await c.delete([oid(n) for n in range(1, COUNT + 1)])
        assert set(deferred) <= {oid(n) for n in numbers}  # (what this client still caches)
        with plasma.connect(coordinator.socket) as filler:
            fill(filler, count=10, first=2)  # (none of them read: their ids are free)
        assert sorted(await c.list()) == sorted(oid(n) for n in range(2, 12))
        assert not await c.contains(oid(12))


def pages(client: plasma.Client) -> Any:
    """The client core's list operation driven one page at a time: yields after each."""
    op = client._core.list()
    action = op.send(None)
    while True:
        reply = client._call(action.msgs)
        yield reply
        try:
            action = op.send(reply)
        except StopIteration as done:
            yield done.value
            return


def test_a_listing_is_of_the_objects_there_when_it_began(coordinator: RunningCoordinator):
    """Objects deleted between pages are left out, those created after the first page are
    not listed (they were not in the snapshot), and nothing is listed twice."""
    with plasma.connect(coordinator.socket) as a, plasma.connect(coordinator.socket) as b:
        fill(a)
        walk = pages(a)
        first = next(walk)
        assert len(first.objects) == p.LIST_PAGE and first.next == p.LIST_PAGE
        on_first = {o.id for o in first.objects}
        later = [n for n in range(1, COUNT + 1) if oid(n).binary() not in on_first]
        gone = {oid(n) for n in later[:50]}
        b.delete(list(gone))
        fill(b, 10, first=COUNT + 1)
        *_, listed = walk
        assert set(listed) == {oid(n) for n in range(1, COUNT + 1)} - gone


def test_a_listing_not_in_progress_is_refused(coordinator: RunningCoordinator):
    with plasma.connect(coordinator.socket) as c:
        fill(c)
        with pytest.raises(BadRequest, match="listing 99 is not in progress"):
            c._call((p.List(seq=c._core.next_seq(), listing=99, start=0),))
        walks = [pages(c) for _ in range(p.MAX_LISTINGS + 1)]
        for walk in walks:
            next(walk)  # each holds a snapshot; the oldest is dropped
        with pytest.raises(BadRequest, match="is not in progress"):
            list(walks[0])
        *_, listed = walks[-1]
        assert len(listed) == COUNT
        with pytest.raises(BadRequest, match="is not in progress"):
            c._call((p.List(seq=c._core.next_seq(), listing=p.MAX_LISTINGS + 1, start=1),))
