"""The same behaviour, asked of both clients: a divergence between them fails here.

Every test runs twice, against the blocking :mod:`plasma.client` and the trio
:mod:`plasma.aio` client, through :class:`Either`, which awaits the trio client's coroutines
and calls the blocking client's methods directly. The fast paths are checked by counting
the coordinator's operations: a call served without a round trip adds none.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import trio

import plasma
import plasma.aio
from plasma._client_core import ClientCore
from plasma.perf import PerfSample
from tests.conftest import RunningCoordinator, wait_until
from tests.helpers import gets, open_client
from tests.helpers import object_id as oid


async def test_values_round_trip_zero_copy(coordinator: RunningCoordinator, kind: str):
    async with open_client(kind, coordinator.socket) as c:
        array = np.arange(1000, dtype=np.float32).reshape(10, 100)
        table = pa.table({"x": [1, 2, 3]})
        ids = [await c.put(v) for v in (array, table, b"raw bytes")]
        got = [await c.get_object(i, timeout=5) for i in ids]
        np.testing.assert_array_equal(got[0], array)
        assert not got[0].flags.writeable
        assert got[1].equals(table)
        assert bytes(got[2]) == b"raw bytes"
        big = np.ones(3 << 20, dtype=np.uint8)  # past the arena: create + seal
        assert (await c.get_object(await c.put(big), timeout=5)).sum() == 3 << 20
        value = {"n": 42, "names": ["a", "b"], "big": big, "small": np.arange(5)}  # pickle 5
        got = await c.get_object(await c.put(value), timeout=5)
        assert got["n"] == 42 and got["names"] == ["a", "b"] and got["big"].sum() == 3 << 20
        assert not got["big"].flags.writeable  # a zero-copy view of the segment
        with pytest.raises(TypeError, match="cannot store"):
            await c.put(lambda: None)


async def test_lifecycle_and_errors(coordinator: RunningCoordinator, kind: str):
    async with open_client(kind, coordinator.socket) as c:
        buf = await c.create(oid(1), 5, b"meta")
        buf[:] = b"hello"
        with pytest.raises(plasma.ObjectExists):
            await c.create(oid(1), 5)
        with pytest.raises(plasma.ObjectNotSealed):
            await c.get(oid(1), timeout=0)
        await c.seal(oid(1))
        data, meta = await c.get(oid(1), timeout=5, with_metadata=True)
        assert (bytes(data), bytes(meta)) == (b"hello", b"meta")
        assert await c.get_metadata([oid(1)]) == [b"meta"]
        assert await c.contains(oid(1))
        await c.release(oid(1))  # the creator's reference
        del data, meta
        with pytest.raises(plasma.PlasmaTimeout):
            await c.get(oid(2), timeout=0.05)
        assert await c.get_buffers([oid(1), oid(2)], timeout=0) == [await c.get(oid(1)), None]
        await c.create(oid(3), 10)
        await c.abort(oid(3))
        with pytest.raises(plasma.ObjectNotFound):
            await c.abort(oid(3))
        await c.release(oid(9))  # sent without waiting: the error surfaces at flush
        with pytest.raises(plasma.ObjectNotFound):
            await c.flush()
        with pytest.raises(ValueError, match="finite"):
            await c.get(oid(1), timeout=float("nan"))
        with pytest.raises(plasma.BadRequest, match="data_size"):
            await c.create(oid(4), -1)
        assert await c.contains(oid(1))  # the connection survived every error


async def test_delete_takes_one_id_or_many(coordinator: RunningCoordinator, kind: str):
    async with open_client(kind, coordinator.socket) as c:
        for n in range(3):
            await c.create_and_seal(oid(n), b"x")
        await c.flush()
        assert await c.delete(oid(0)) == []
        assert await c.delete([oid(1), oid(2)]) == []
        with pytest.raises(plasma.ObjectNotFound, match=oid(0).binary().hex()):
            await c.delete(oid(0))
        assert await c.list() == {}


async def test_small_objects_need_no_round_trip(coordinator: RunningCoordinator, kind: str):
    async with open_client(kind, coordinator.socket) as c:
        before = (await c.stats())["operations"]
        for n in range(50):
            await c.create_and_seal(oid(n), b"a" * 100)
        await c.create_and_seal_many([(oid(100 + n), b"b" * 64, b"m") for n in range(500)])
        for n in range(50):
            await c.put(np.full(10, n), oid(1000 + n))
        after = (await c.stats())["operations"]
        assert after.get("Create", 0) == before.get("Create", 0)
        assert after.get("CreateMany", 0) == before.get("CreateMany", 0)
        assert after.get("Arena", 0) - before.get("Arena", 0) <= 2
        assert len(await c.list()) == 600
        assert (await c.get_object(oid(1007))).tolist() == [7] * 10


async def test_gets_of_many_ids_are_chunked(coordinator: RunningCoordinator, kind: str):
    async with open_client(kind, coordinator.socket) as c:
        ids = [oid(n) for n in range(60_000)]
        await c.create_and_seal_many([(i, b"", b"") for i in ids])
        views = await c.get(ids, timeout=5)
        assert len(views) == 60_000
        del views
        assert len(await c.delete(ids)) <= 64  # deferred: the release-delay cache holds them
        await c.flush()
        assert await c.list() == {}


async def test_released_objects_are_got_again_without_a_round_trip(
    coordinator: RunningCoordinator, kind: str
):
    async with open_client(kind, coordinator.socket) as c:
        await c.create_and_seal(oid(1), b"cached")
        view = await c.get(oid(1), timeout=5)
        del view
        n = await gets(c)
        for _ in range(10):
            assert bytes(await c.get(oid(1))) == b"cached"
        assert await gets(c) == n
        async with open_client(kind, coordinator.socket) as other:
            assert await other.delete(oid(1)) == [oid(1)]  # deferred: our cache holds it
        await c.flush()
        assert not await c.contains(oid(1))


async def test_subscriptions_hand_over_locations(coordinator: RunningCoordinator, kind: str):
    async with (
        open_client(kind, coordinator.socket) as sub,
        open_client(kind, coordinator.socket) as producer,
    ):
        subscription = await sub.subscribe(with_locations=True)
        await producer.create_and_seal(oid(1), b"pushed")
        await producer.flush()
        note = await subscription.next(timeout=5)
        assert (note.kind, note.id) == ("sealed", oid(1).binary())
        n = await gets(sub)
        assert bytes(await sub.get(oid(1))) == b"pushed"
        assert await gets(sub) == n  # served from the notification's reference
        with pytest.raises(plasma.PlasmaTimeout):
            await subscription.next(timeout=0.05)


async def test_run_calls_and_tasks(coordinator: RunningCoordinator, kind: str):
    async with open_client(kind, coordinator.socket) as c:
        with pytest.raises(plasma.ObjectNotFound, match="no live run"):
            await c.run_call("nope", {"x": 1})
        await c.register_task("t1", 1, None, "run")
        sample = PerfSample(1, 0.0, {"task-clock": 5}, {}, None)
        await c.submit_sample("t1", sample, "run")
        await c.task_done("t1", "run")
        (task,) = [t for t in (await c.stats())["tasks"] if t["task_id"] == "t1"]
        assert task["run_id"] == "run" and task["samples"] >= 1


async def test_evict_and_stats(coordinator: RunningCoordinator, kind: str):
    async with open_client(kind, coordinator.socket, release_delay=0) as c:
        await c.create_and_seal(oid(1), b"x" * 1000)
        await c.flush()
        assert await c.evict(1) == 1000  # data + metadata, as Plasma counts
        stats = await c.stats()
        assert stats["evictions"] == 1 and stats["objects"] == 0


async def test_a_stopped_coordinator_is_one_documented_error(coordinator_factory, kind: str):
    coord = coordinator_factory("--memory", "8MiB")
    async with open_client(kind, coord.socket) as c:
        await c.put(b"x")
        assert coord.stop() == 0
        with pytest.raises(plasma.Disconnected):  # (its socket is closed by now)
            await c.contains(oid(1))
    with pytest.raises(plasma.Disconnected, match="cannot connect"):
        async with open_client(kind, coord.socket):
            pass


def will_look(core: ClientCore) -> bool:
    """A get served without a request looks at the socket now (see ClientCore.gone)."""
    seen = core.refs.fast.hung_up if core.refs.fast is not None else None
    return time.monotonic() >= core.next_hangup_check if seen is None else seen


async def test_a_killed_coordinator_serves_nothing_more_but_held_views_stay(
    coordinator_factory, kind: str
) -> None:
    """Once its coordinator died (kill -9) a client raises Disconnected on every call, gets
    the directory could serve (no request) included; the views it holds stay readable. A
    new coordinator on the same socket path does not bring the old client back: it never
    serves from the dead store's directory; a new client uses the new store."""
    coord = coordinator_factory("--memory", "8MiB")
    held_bytes, other_bytes = b"held" * 1000, b"other" * 1000
    async with open_client(kind, coord.socket) as c, open_client(kind, coord.socket) as d:
        async with open_client(kind, coord.socket) as owner:
            await owner.create_and_seal(oid(1), held_bytes)
            await owner.create_and_seal(oid(2), other_bytes)
            await owner.create_and_seal(oid(3), b"maps the segment")
            await owner.flush()
        for client in (c, d):
            await client.get(oid(3), timeout=0)  # a request: the segment is mapped from now on
        asked = await gets(c)
        held = await c.get(oid(1), timeout=0)
        held_by_d = await d.get(oid(1), timeout=0)
        assert await gets(c) == asked  # through the directory, as the rest would be
        assert c.raw._core.maps.reader is not None

        coord.stop(signal.SIGKILL)
        assert bytes(held) == held_bytes
        # (a get served without a request looks at the socket once the thread watching it
        # saw a hang-up, or at most every HANGUP_CHECK_INTERVAL where none watches: its
        # word or a documented bound, not a synchronisation)
        wait_until(
            lambda: all(will_look(client.raw._core) for client in (c, d)), what="the next look"
        )
        with pytest.raises(plasma.Disconnected):  # d's first call: a get of what it holds
            await d.get(oid(1), timeout=0)
        assert bytes(held_by_d) == held_bytes
        for call in (
            lambda: c.get(oid(2), timeout=0),  # in the directory, never asked for: fast path
            lambda: c.get_object(oid(2), timeout=0),
            lambda: c.get(oid(1), timeout=0),  # held already
            lambda: c.get([oid(1), oid(2)], timeout=0),
            lambda: c.get_buffers([oid(2)], timeout=0),
            lambda: c.contains(oid(2)),
            lambda: c.put(b"new"),
            lambda: c.stats(),
        ):
            with pytest.raises(plasma.Disconnected, match="the coordinator closed the conn"):
                await call()
        assert bytes(held) == held_bytes

        new = coordinator_factory("--memory", "8MiB")
        assert new.socket == coord.socket
        async with open_client(kind, new.socket) as fresh:
            await fresh.create_and_seal(oid(2), b"new store")
            await fresh.flush()
            assert bytes(await fresh.get(oid(2), timeout=0)) == b"new store"
            for call in (
                lambda: c.get(oid(2), timeout=0),
                lambda: c.get(oid(1), timeout=0),
                lambda: c.contains(oid(2)),
            ):
                with pytest.raises(plasma.Disconnected):
                    await call()
            assert bytes(held) == held_bytes
        del held, held_by_d
    assert new.stop() == 0


async def test_errors_leave_the_block_unwrapped(coordinator: RunningCoordinator, kind: str):
    with pytest.raises(plasma.ObjectNotFound):
        async with open_client(kind, coordinator.socket) as c:
            await c.get(oid(1), timeout=0)


async def test_an_idle_trio_client_gives_memory_back_at_once(coordinator_factory):
    """The trio client's reader answers Reclaim while the client itself does nothing, so a
    create of another process that needs that memory succeeds within its reclaim wait."""
    coord = coordinator_factory("--memory", "32MiB", "--segment-size", "32MiB")
    async with plasma.aio.connect(coord.socket) as cacher:
        cacher._core.refs.cache_limit = 1 << 30  # as if the store were large: cache all of it
        ids = [await cacher.put(bytes(3 << 20)) for _ in range(8)]  # 24 MiB
        for i in ids:
            view = await cacher.get(i, timeout=5)
            del view
        assert len(cacher._core.refs.cache) == 8

        def create() -> int:
            with plasma.connect(coord.socket) as creator:
                return len(creator.create(oid(1), 20 << 20))  # timeout 0

        assert await trio.to_thread.run_sync(create) == 20 << 20
        assert not cacher._core.refs.cache


def test_the_trio_client_has_every_method_of_the_blocking_one():
    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}

    missing = public(plasma.Client) - public(plasma.aio.AsyncClient) - {"close"}
    assert not missing, f"plasma.aio.AsyncClient lacks {sorted(missing)}"
    assert "aclose" in public(plasma.aio.AsyncClient)


async def test_a_cancelled_trio_call_hands_back_what_its_reply_brings(coordinator_factory):
    coord = coordinator_factory("--memory", "8MiB", "--segment-size", "8MiB")
    async with plasma.aio.connect(coord.socket) as c:
        with plasma.connect(coord.socket) as other:
            kept = other.create(oid(1), 10)  # unsealed: a get of it waits (the buffer kept:
            # the creator reference stays when it is sealed)
            hog = other.create(oid(2), 7 << 20)  # the store is nearly full: a create waits

            async def cancel_once_parked(call: Any, waiters: str) -> None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call)
                    with trio.fail_after(30):  # until the coordinator holds the call
                        while other.stats()[waiters] == 0:
                            await trio.sleep(0.01)
                    nursery.cancel_scope.cancel()

            await cancel_once_parked(lambda: c.get(oid(1), timeout=None), "get_waiters")
            await cancel_once_parked(
                lambda: c.create(oid(3), 4 << 20, timeout=30), "create_waiters"
            )
            assert other.stats()["get_waiters"] == 1 and other.stats()["create_waiters"] == 1
            other.seal(oid(1))  # the get completes for nobody: its reference comes back
            del hog
            other.abort(oid(2))  # the create completes for nobody: its object is aborted
            other.flush()
            await c.flush()  # sends the queued release and abort
            await c.flush()  # ...and waits until they were handled
            listing = other.list()
            assert listing[oid(1)]["ref_count"] == 1  # other's creator reference only
            del kept
            assert oid(3) not in listing
            assert other.stats()["used"] == other.stats()["arena_bytes"] + 64


async def test_a_seal_that_waits_raises_its_error_and_earlier_ones_at_once(
    coordinator: RunningCoordinator, kind: str
):
    async with open_client(kind, coordinator.socket) as c:
        buf = await c.create(oid(1), 3)
        buf[:] = b"abc"
        del buf
        await c.seal(oid(1), wait=True)
        async with open_client(kind, coordinator.socket) as other:
            assert bytes(await other.get(oid(1), timeout=0)) == b"abc"  # visible already
        with pytest.raises(plasma.errors.ObjectNotFound):
            await c.seal(oid(2), wait=True)  # never created: raised here, not later
        buf = await c.create(oid(4), 1)
        del buf
        await c.seal(oid(3))  # sent without waiting: its error comes back meanwhile ...
        with pytest.raises(plasma.errors.ObjectNotFound, match=oid(3).binary().hex()):
            # ... and is raised by the next call: before it sends, when the trio client's
            # reader took the error in already, else once oid 4 is sealed
            await c.seal(oid(4), wait=True)
        if not c.is_async:  # (the blocking client reads only while it waits: no race)
            assert await c.contains(oid(4))
        buf = await c.create(oid(5), 1)
        del buf
        await c.seal(oid(5), wait=True)
        with pytest.raises(plasma.errors.BadRequest, match="already sealed"):
            await c.seal(oid(5), wait=True)


async def test_create_and_seal_many_takes_pairs_and_triples(
    coordinator: RunningCoordinator, kind: str
):
    async with open_client(kind, coordinator.socket) as c:
        big = b"L" * (2 << 20)  # past the arena: a CreateMany
        await c.create_and_seal_many(
            [
                (oid(400), b"pair"),
                (oid(401), b"triple", b"meta"),
                [oid(402), big],
                (oid(403), big, b"m"),
            ]
        )
        assert bytes(await c.get(oid(400), timeout=5)) == b"pair"
        data, meta = await c.get(oid(401), timeout=5, with_metadata=True)
        assert (bytes(data), bytes(meta)) == (b"triple", b"meta")
        data, meta = await c.get(oid(402), timeout=5, with_metadata=True)
        assert bytes(data) == big and bytes(meta) == b""
        assert bytes((await c.get(oid(403), timeout=5, with_metadata=True))[1]) == b"m"
        for bad, index in (
            ([(oid(404), b"x"), (oid(405),)], 1),
            ([(oid(404), b"x"), (oid(405), b"x", b"m"), oid(406)], 2),
            ([(oid(404), b"x", b"m", b"extra")], 0),
            ([(oid(404), b"x", 7)], 0),
        ):
            with pytest.raises(plasma.BadRequest, match=f"item {index}") as raised:
                await c.create_and_seal_many(bad)
            assert "unpack" not in str(raised.value)
        await c.flush()
        assert not await c.contains(oid(404))  # nothing of a malformed batch is stored


async def test_writable_results_are_copy_on_write_views(coordinator: RunningCoordinator, kind: str):
    async with (
        open_client(kind, coordinator.socket) as c,
        open_client(kind, coordinator.socket) as other,
    ):
        small = np.arange(100, dtype=np.int64)  # in the arena: not page-aligned
        big = np.arange(1 << 20, dtype=np.int64)  # 8 MiB: created and sealed on its own
        value = {"a": np.arange(50_000, dtype=np.float64), "n": 7}  # pickle 5, buffer in-band
        ids = [await c.put(v) for v in (small, big, value, b"raw bytes")]
        got = await c.get_object(ids[0], timeout=5, writable=True)
        assert got.flags.writeable
        got[:] = -1
        np.testing.assert_array_equal(got, -np.ones(100))
        got_big = await c.get_object(ids[1], timeout=5, writable=True)
        got_big[::1000] = 0
        assert got_big[1000] == 0 and got_big[1001] == 1001
        got_value = await c.get_object(ids[2], timeout=5, writable=True)
        got_value["a"][0] = 99.0
        assert got_value["a"][0] == 99.0
        raw = await c.get_object(ids[3], timeout=5, writable=True)
        raw[:3] = b"RAW"
        assert bytes(raw) == b"RAW bytes"
        data, meta = await c.get(ids[3], timeout=5, with_metadata=True, writable=True)
        assert not data.readonly and meta.readonly
        data[0:1] = b"X"
        [buffer] = await c.get([ids[0]], timeout=5, writable=True)
        np.frombuffer(buffer, np.uint8)[:] = 0xFF  # (a raw buffer of the array's bytes)
        # the store's bytes never change: another client, and a fresh get here, see them
        for reader in (other, c):
            np.testing.assert_array_equal(await reader.get_object(ids[0], timeout=5), small)
            np.testing.assert_array_equal(await reader.get_object(ids[1], timeout=5), big)
            fresh = await reader.get_object(ids[2], timeout=5)
            assert fresh["a"][0] == 0.0 and not fresh["a"].flags.writeable
            assert bytes(await reader.get(ids[3], timeout=5)) == b"raw bytes"
        # a writable result keeps its object's reference until it dies
        assert (await other.list())[ids[1]]["ref_count"] >= 1
        await c.flush()
        assert (await other.list())[ids[1]]["ref_count"] == 1
        del got, got_big, got_value, raw, data, meta, buffer, fresh
        await c.flush()  # (the cache dropped, the releases sent)
        assert (await other.list())[ids[1]]["ref_count"] == 0


async def test_the_creators_reference_follows_its_buffer(coordinator_factory, kind: str):
    coord = coordinator_factory("--memory", "8MiB", "--segment-size", "8MiB")
    async with open_client(kind, coord.socket) as c, open_client(kind, coord.socket) as other:
        # pyarrow.plasma's loop: create, write, seal, drop; nothing released explicitly
        for n in range(200):
            buf = await c.create(oid(1000 + n), 1 << 20)
            buf[:8] = n.to_bytes(8, "little")
            await c.seal(oid(1000 + n))
            del buf
        await c.flush()
        refs = [o["ref_count"] for o in (await other.list()).values() if o["data_size"] == 1 << 20]
        assert refs and not any(refs)  # every creator reference went with its buffer

        # an explicit release after seal still works, once: the buffer's death adds nothing
        buf = await c.create(oid(1), 16)
        await c.seal(oid(1))
        assert (await other.list())[oid(1)]["ref_count"] == 1  # the buffer keeps it
        await c.release(oid(1))
        await c.flush()
        assert (await other.list())[oid(1)]["ref_count"] == 0
        del buf
        await c.flush()  # no error: not released twice
        assert (await other.list())[oid(1)]["ref_count"] == 0
        # and after the buffer took the reference, an explicit release is not a second one
        buf = await c.create(oid(2), 16)
        await c.seal(oid(2), wait=True)
        del buf
        await c.release(oid(2))
        await c.flush()
        assert (await other.list())[oid(2)]["ref_count"] == 0

        # a view of the buffer kept alive keeps the reference, past the seal, until it dies
        buf = await c.create(oid(3), 16)
        array = np.frombuffer(buf, np.uint8)
        del buf
        await c.flush()
        assert (await other.list())[oid(3)]["ref_count"] == 1  # unsealed: still the creator's
        array[:] = 7
        await c.seal(oid(3))
        await c.flush()
        assert (await other.list())[oid(3)]["ref_count"] == 1
        del array
        await c.flush()
        assert (await other.list())[oid(3)]["ref_count"] == 0
        assert bytes(await other.get(oid(3), timeout=5)) == bytes([7] * 16)

        # an aborted object's reference went with it: its buffer's death releases nothing
        buf = await c.create(oid(4), 16)
        await c.abort(oid(4))
        del buf
        await c.flush()
        assert oid(4) not in await other.list()
