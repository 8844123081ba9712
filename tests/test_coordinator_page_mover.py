"""The page mover (plasma.coordinator.page_mover), without a coordinator: it moves bytes
between memfds as a Copy event says, and reports every move to the store, done or failed."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from plasma.coordinator.page_mover import PageMover
from plasma.linux import memfd
from plasma.records import ObjectLocation
from plasma.store import Copy, Place

PAGE = 4096


class FakeSegment:
    def __init__(self, seg_id: int, fd: int) -> None:
        self.id = seg_id
        self.fd = fd
        self.node = 0
        self.page_size = PAGE


class FakePool:
    def __init__(self) -> None:
        self.segments: dict[int, FakeSegment] = {}
        self.dropped: list[int] = []  # nodes whose spare was given back

    def get(self, seg_id: int) -> FakeSegment:
        return self.segments[seg_id]

    def drop_spare(self, node: int) -> None:
        self.dropped.append(node)


class FakeStore:
    def __init__(self) -> None:
        self.placed_calls: list[tuple[int, str | None]] = []

    def placed(self, token: int, error: str | None = None, *, now: float) -> None:
        self.placed_calls.append((token, error))


@pytest.fixture
def pool() -> Iterator[FakePool]:
    found = FakePool()
    for seg_id in (1, 2, 3):
        fd = memfd.memfd_create(f"test-segment-{seg_id}")
        os.ftruncate(fd, 4 * PAGE)
        found.segments[seg_id] = FakeSegment(seg_id, fd)
    yield found
    for seg in found.segments.values():
        os.close(seg.fd)


def target(segment: int, offset: int, length: int) -> ObjectLocation:
    return ObjectLocation(segment=segment, offset=offset, data_size=length, metadata_size=0, node=0)


def mover(store: FakeStore, pool: FakePool, *, bind: bool = True) -> PageMover:
    return PageMover(store, pool, bind=bind)  # type: ignore[arg-type]


async def test_a_copy_moves_the_bytes_to_every_target(pool: FakePool) -> None:
    payload = os.urandom(PAGE + 100)
    os.pwrite(pool.get(1).fd, payload, PAGE + 8)
    store, delivered = FakeStore(), []
    event = Copy(
        token=5,
        segment=1,
        offset=PAGE + 8,
        length=len(payload),
        targets=[target(2, 0, len(payload)), target(3, 2 * PAGE + 16, len(payload))],
    )
    await mover(store, pool).copy(event, lambda: delivered.append(True))
    assert os.pread(pool.get(2).fd, len(payload), 0) == payload
    assert os.pread(pool.get(3).fd, len(payload), 2 * PAGE + 16) == payload
    assert store.placed_calls == [(5, None)] and delivered == [True]


async def test_a_copy_that_fails_is_reported_failed(pool: FakePool) -> None:
    store, delivered = FakeStore(), []
    event = Copy(token=6, segment=1, offset=0, length=8, targets=[target(99, 0, 8)])
    await mover(store, pool).copy(event, lambda: delivered.append(True))
    ((token, error),) = store.placed_calls
    assert token == 6 and error is not None and error.startswith("KeyError")
    assert delivered == [True]


async def test_a_copy_closes_the_descriptors_it_duplicated(pool: FakePool) -> None:
    before = set(os.listdir("/proc/self/fd"))
    event = Copy(token=7, segment=1, offset=0, length=8, targets=[target(2, 0, 8)])
    await mover(FakeStore(), pool).copy(event, lambda: None)
    assert set(os.listdir("/proc/self/fd")) == before


async def test_without_binding_a_place_only_reports(pool: FakePool) -> None:
    store, delivered = FakeStore(), []
    event = Place(token=8, segment=99, start=0, length=PAGE, mode="bind", nodes=[1])
    await mover(store, pool, bind=False).place(event, lambda: delivered.append(True))
    assert store.placed_calls == [(8, None)] and delivered == [True]


async def test_a_place_in_a_segment_the_pool_lacks_is_reported_failed(pool: FakePool) -> None:
    """(It raised before reporting: the store's move stayed under way for ever, and the
    exception reached the coordinator's nursery.)"""
    store, delivered = FakeStore(), []
    event = Place(token=9, segment=99, start=0, length=PAGE, mode="bind", nodes=[1])
    await mover(store, pool).place(event, lambda: delivered.append(True))
    ((token, error),) = store.placed_calls
    assert token == 9 and error is not None and error.startswith("KeyError")
    assert delivered == [True]


async def test_a_place_gives_back_the_spares_of_the_nodes_pages_go_to(pool: FakePool) -> None:
    """Pages moved to a node take room its spare segment was sized for: the spare goes (the
    coordinator sizes the next); the home node's stays. (The move itself fails here on a
    one-node kernel, and is reported so.)"""
    store = FakeStore()
    event = Place(token=10, segment=1, start=0, length=PAGE, mode="interleave", nodes=[0, 1])
    await mover(store, pool).place(event, lambda: None)
    assert pool.dropped == [1] and [token for token, _ in store.placed_calls] == [10]
