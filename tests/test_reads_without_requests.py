"""Gets served by the shared directory and pin tables, asked of both clients.

Each test counts the coordinator's Get requests: a get the directory serves adds none. Each
runs with both read paths of the directory (the C one, then the Python one). The proof that
pins keep memory safe under churn is tests/test_directory_stress.py; the state machines over
the sans-I/O tables are tests/test_directory.py and test_directory_store.py.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import warnings
import weakref
from multiprocessing.connection import Connection

import numpy as np
import pytest
import trio

import plasma
from plasma._client_core.fast_path import NATIVE, ReadPath
from plasma.errors import PlasmaError
from tests.conftest import RunningCoordinator, wait_until
from tests.helpers import Either, gets, in_forked_child, open_client, watchers
from tests.helpers import object_id as oid

pytestmark = pytest.mark.usefixtures("read_path")


async def test_a_get_of_what_another_client_sealed_sends_no_request(
    coordinator: RunningCoordinator, kind: str
):
    async with (
        open_client(kind, coordinator.socket) as producer,
        open_client(kind, coordinator.socket, release_delay=0) as consumer,
    ):
        await producer.create_and_seal(oid(1), b"first")
        assert bytes(await consumer.get(oid(1), timeout=5)) == b"first"  # maps the segment
        n = await gets(consumer)
        for i in range(2, 50):
            await producer.create_and_seal(oid(i), b"x%d" % i)
        await producer.flush()
        for i in range(2, 50):
            assert bytes(await consumer.get(oid(i), timeout=0)) == b"x%d" % i
        arrays = [np.arange(i, dtype=np.int64) for i in (10, 1000, 100_000)]
        ids = [await producer.put(a) for a in arrays]
        await producer.flush()  # the puts' seals are sent without waiting
        for i, a in zip(ids, arrays, strict=True):
            np.testing.assert_array_equal(await consumer.get_object(i), a)
        assert await gets(consumer) == n  # no Get request among them


async def test_pins_count_as_references_until_the_view_goes(
    coordinator: RunningCoordinator, kind: str
):
    async with (
        open_client(kind, coordinator.socket) as producer,
        open_client(kind, coordinator.socket, release_delay=0) as consumer,
    ):
        await producer.create_and_seal(oid(1), b"warm")
        del_me = await consumer.get(oid(1), timeout=5)  # maps the segment
        del del_me
        await producer.create_and_seal(oid(2), b"pinned")
        await producer.flush()
        view = await consumer.get(oid(2), timeout=0)
        stats = await producer.stats()
        assert stats["pins"] == 1
        assert (await producer.list())[oid(2)]["ref_count"] == 1
        # deleting it waits for the pin; the bytes stay the reader's meanwhile
        assert await producer.delete(oid(2)) == [oid(2)]
        assert not await producer.contains(oid(2))
        await producer.create_and_seal(oid(2), b"again")  # the id is free at once
        await producer.flush()
        assert bytes(view) == b"pinned"
        used = (await producer.stats())["used"]
        del view
        await consumer.flush()  # sends the hint that the pin of a dying object went
        await producer.flush()  # ... and waits for the scan
        stats = await producer.stats()
        assert stats["pins"] == 0 and stats["dying"] == 0
        assert stats["used"] < used
        assert bytes(await consumer.get(oid(2), timeout=0)) == b"again"


async def test_a_full_pin_table_falls_back_to_requests(coordinator_factory, kind: str):
    coord = coordinator_factory("--memory", "16MiB", "--pins-per-client", "4")
    async with (
        open_client(kind, coord.socket) as producer,
        open_client(kind, coord.socket, release_delay=0) as consumer,
    ):
        ids = [oid(i) for i in range(10)]
        await producer.create_and_seal_many([(i, b"v%d" % n, b"") for n, i in enumerate(ids)])
        await producer.flush()
        await consumer.get(ids[0], timeout=5)  # maps the segment; dropped at once
        n = await gets(consumer)
        views = await consumer.get(ids, timeout=0)
        assert [bytes(v) for v in views] == [b"v%d" % i for i in range(10)]
        assert await gets(consumer) == n + 1  # the 6 the table had no room for: one request
        assert (await producer.stats())["pins"] == 4
        del views
        await consumer.flush()
        assert (await producer.stats())["pins"] == 0
        listed = await producer.list()
        assert all(info["ref_count"] == 0 for info in listed.values())


async def test_gets_go_on_without_requests_after_the_directory_grows(
    coordinator: RunningCoordinator, kind: str
):
    async with (
        open_client(kind, coordinator.socket) as producer,
        open_client(kind, coordinator.socket, release_delay=0) as consumer,
    ):
        await producer.create_and_seal(oid(0), b"warm")
        await consumer.get(oid(0), timeout=5)
        before = (await producer.stats())["directory"]["capacity"]
        count = before  # more objects than 3/4 of the slots: the directory is rebuilt
        ids = [oid(i) for i in range(1, count + 1)]
        await producer.create_and_seal_many([(i, b"", b"") for i in ids])
        await producer.flush()
        after = (await producer.stats())["directory"]
        assert after["capacity"] > before and after["objects"] == count + 1
        await consumer.get(ids[0], timeout=0)  # the old directory reads superseded: a request
        n = await gets(consumer)
        for i in ids[1:200]:
            await consumer.get(i, timeout=0)
        assert await gets(consumer) == n


async def test_without_pin_tables_gets_ask_the_coordinator(coordinator_factory, kind: str):
    coord = coordinator_factory("--memory", "16MiB", "--pins-per-client", "0")
    async with (
        open_client(kind, coord.socket) as producer,
        open_client(kind, coord.socket, release_delay=0) as consumer,
    ):
        assert consumer.raw._core.maps.reader is None
        await producer.create_and_seal(oid(1), b"a")
        await producer.flush()
        n = await gets(consumer)
        assert bytes(await consumer.get(oid(1), timeout=0)) == b"a"
        assert await gets(consumer) == n + 1


async def test_a_reader_that_dies_while_pinning_leaks_nothing(
    coordinator: RunningCoordinator, kind: str
):
    async with open_client(kind, coordinator.socket) as producer:
        await producer.create_and_seal(oid(1), b"held by the dead")
        await producer.flush()
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        reader = ctx.Process(target=_pin_and_wait, args=(coordinator.socket, theirs))
        reader.start()
        try:
            assert ours.poll(60) and ours.recv() == "pinned"
            assert (await producer.stats())["pins"] == 1
            assert await producer.delete(oid(1)) == [oid(1)]  # deferred: the pin holds it
            assert (await producer.stats())["dying"] == 1
        finally:
            reader.kill()
            reader.join(30)
        # the coordinator drops a client's pin table with its connection
        with trio.fail_after(30):  # the coordinator has to notice the hang-up
            while len((await producer.stats())["clients"]) != 1:
                await trio.sleep(0.01)
        # and frees what only its pins held at its next pin scan: at once, or at the end of the
        # rescan interval (20 ms) when the last scan (the delete's) was more recent
        with trio.fail_after(30):
            while (stats := await producer.stats())["dying"]:
                await trio.sleep(0.01)
        assert stats["pins"] == 0
        assert set(await producer.list()) == {oid(2)}  # what the reader sealed stays


def _pin_and_wait(path: str, pipe: Connection) -> None:
    with plasma.connect(path, release_delay=0) as c:
        c.create_and_seal(oid(2), b"to map the segment")
        c.flush()
        view = c.get(oid(1), timeout=0)
        assert c.stats()["operations"].get("Get", 0) == 0  # pinned, not requested
        pipe.send("pinned")
        pipe.recv()  # killed while waiting here
        del view


async def test_a_closed_client_goes_with_its_pins_and_its_watcher(
    coordinator: RunningCoordinator, kind: str, read_path: ReadPath
):
    """Its close stops the thread watching its socket (the C read path's), then closes the
    socket: the coordinator sees it go, and lets go of its pins."""
    async with open_client(kind, coordinator.socket) as producer:
        await producer.create_and_seal(oid(1), b"maps the segment")
        await producer.create_and_seal(oid(2), b"pinned")
        await producer.flush()
        before = watchers()
        async with open_client(kind, coordinator.socket) as c:
            await c.get(oid(1), timeout=5)  # maps the segment (a request)
            assert bytes(await c.get(oid(2), timeout=0)) == b"pinned"  # pinned, then cached
            assert (await producer.stats())["pins"] == 1
            started = watchers() - before
            assert len(started) == (1 if read_path is NATIVE else 0)
        assert not started & watchers()
        await wait_until_gone(producer)


def test_a_client_dropped_without_close_goes_with_its_pins_and_its_watcher(
    coordinator: RunningCoordinator, read_path: ReadPath
):
    """Dropped without close, a client stops the thread watching its socket before its
    socket closes: the coordinator sees it go, and lets go of its pins."""
    with plasma.connect(coordinator.socket) as producer:
        producer.create_and_seal(oid(1), b"maps the segment")
        producer.create_and_seal(oid(2), b"pinned")
        producer.flush()
        before = watchers()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # (its socket, unclosed)
            c = plasma.connect(coordinator.socket)
            c.get(oid(1), timeout=5)
            assert bytes(c.get(oid(2), timeout=0)) == b"pinned"
            assert producer.stats()["pins"] == 1
            started = watchers() - before
            assert len(started) == (1 if read_path is NATIVE else 0)
            gone = weakref.ref(c)
            del c
            assert gone() is None  # (no cycle keeps it: it went here)
        assert not started & watchers()
        wait_until(lambda: len(producer.stats()["clients"]) == 1, what="the client to go")
        assert producer.stats()["pins"] == 0


async def wait_until_gone(producer: Either) -> None:
    """Until the coordinator has no client but ``producer``, and no pins (another process:
    polled, as nothing tells us)."""
    deadline = trio.current_time() + 10
    while len((await producer.stats())["clients"]) > 1:
        assert trio.current_time() < deadline, "the coordinator still has the client"
        await trio.sleep(0.01)
    assert (await producer.stats())["pins"] == 0


def test_a_forked_child_cannot_touch_its_parents_pins(coordinator: RunningCoordinator):
    with plasma.connect(coordinator.socket, release_delay=0) as c:
        c.create_and_seal(oid(1), b"parent's")
        c.create_and_seal(oid(2), b"other")
        c.flush()
        c.get(oid(2), timeout=5)  # maps the segment
        view = c.get(oid(1), timeout=0)
        assert c.stats()["pins"] == 1
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: every call refuses, dropping views touches nothing
            code = 1
            try:
                try:
                    c.get(oid(2), timeout=0)
                except PlasmaError as exc:
                    code = 0 if "forked child" in str(exc) else 2
                del view
                c.close()
            finally:
                os.write(write, bytes([code]))
                os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"\x00"
        os.waitpid(pid, 0)
        os.close(read)
        assert c.stats()["pins"] == 1  # still the parent's
        assert bytes(view) == b"parent's"
        del view
        c.flush()
        assert c.stats()["pins"] == 0


def test_a_fork_while_the_background_fills_page_tables_leaves_the_child_free(
    coordinator: RunningCoordinator,
):
    """Forked while the Populator's thread held its lock in the middle of a granule: the
    child (where that thread does not exist) still closes its client and exits. It waited
    forever for that thread before (a CI timeout)."""
    with plasma.connect(coordinator.socket, release_delay=0) as c:
        c.create_and_seal(oid(1), b"x")
        c.flush()
        c.get(oid(1), timeout=5)  # maps the segment
        populator = c._core.maps.populator
        populator.join()
        segment = next(iter(c._core.maps.segments.values()))
        taken, forked = threading.Event(), threading.Event()

        def busy() -> None:  # as the fill thread is in the middle of a granule of `segment`
            with populator._lock:
                populator._current = segment
                taken.set()
                forked.wait()
                populator._current = None
                populator._idle.notify_all()

        thread = threading.Thread(target=busy)
        thread.start()
        taken.wait()
        ended = in_forked_child(lambda: c.close() is None)
        forked.set()
        thread.join()
        assert ended == "ok", "the forked child hung closing its client"


@pytest.mark.parametrize("lock", ["the client's", "the core's"])
def test_a_fork_while_another_thread_holds_a_lock_of_the_client_leaves_the_child_free(
    coordinator: RunningCoordinator, lock: str
):
    """Forked while another thread of the parent held the client's lock (a call in the
    middle) or the core's (a view dropped, a get): in the child, where that thread does not
    exist, calls still refuse, views still drop and close still returns. close waited
    forever for the client's lock before; nothing in a child takes the core's."""
    with plasma.connect(coordinator.socket, release_delay=0) as c:
        c.create_and_seal(oid(1), b"x")
        c.flush()
        views = [c.get(oid(1), timeout=5)]
        held = c._lock if lock == "the client's" else c._core._held_lock
        taken, forked = threading.Event(), threading.Event()

        def busy() -> None:
            with held:
                taken.set()
                forked.wait()

        def child() -> bool:
            with pytest.raises(PlasmaError, match="forked child"):
                c.contains(oid(1))
            views.clear()
            c.close()
            return True

        thread = threading.Thread(target=busy)
        thread.start()
        taken.wait()
        ended = in_forked_child(child)
        forked.set()
        thread.join()
        assert ended == "ok", "the forked child hung, or its call did not refuse"
        (view,) = views
        assert bytes(view) == b"x"  # the parent's view, untouched


async def test_read_views_stay_valid_while_another_client_evicts(coordinator_factory, kind: str):
    coord = coordinator_factory("--memory", "8MiB", "--segment-size", "8MiB")
    async with (
        open_client(kind, coord.socket) as producer,
        open_client(kind, coord.socket, release_delay=0) as consumer,
    ):
        first = await producer.put(np.full(1 << 17, 7, dtype=np.int64))  # 1 MiB
        await producer.flush()
        held = await consumer.get_object(first, timeout=5)
        for _ in range(20):  # 20 MiB through an 8 MiB store: everything else is evicted
            await producer.put(np.zeros(1 << 17, dtype=np.int64))
        await producer.flush()
        assert (await producer.stats())["evictions"] > 0
        assert await producer.contains(first)  # pinned: never an eviction victim
        assert (held == 7).all()
