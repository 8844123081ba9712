"""Interleave and migrate through both clients and a real coordinator on this (one-node)
machine, and their failure paths on an 8-node topology whose nodes the kernel does not have
(the page moves fail: the requests say so and nothing is lost or leaked). The page-by-page
proof on real nodes is tests/test_numa_vm_follow.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import plasma
import plasma.aio
import plasma.client
from plasma.directory import REPLICA
from plasma.errors import BadRequest, ObjectNotFound, PlacementImpossible, PlasmaError
from plasma.ids import replica_id
from tests.conftest import RunningCoordinator, wait_until
from tests.test_topology import unpack


def test_interleave_and_migrate_on_one_node(coordinator: RunningCoordinator) -> None:
    with plasma.connect(coordinator.socket) as client:
        array = np.arange(100_000)
        oid = client.put(array, node="interleave")  # one node: an ordinary object
        assert client.list()[oid]["pages_on"] == []
        assert np.array_equal(client.get_object(oid), array)
        assert client.migrate(oid, 0) == [0]
        with pytest.raises(PlacementImpossible):
            client.migrate(oid, 3)
        with pytest.raises(ObjectNotFound):
            client.migrate(plasma.ObjectID.from_name("nothing"), 0)
        with pytest.raises(BadRequest, match="interleave"):
            client.put(array, node="everywhere")
        with pytest.raises(BadRequest, match="node number"):
            client.migrate(oid, "0")  # type: ignore[arg-type]


async def test_the_trio_client_migrates_too(coordinator: RunningCoordinator) -> None:
    async with plasma.aio.connect(coordinator.socket) as client:
        oid = await client.put(np.arange(10), node=[0])
        assert await client.migrate(oid, 0) == [0]


@pytest.fixture
def eight_nodes(coordinator_factory, tmp_path: Path) -> RunningCoordinator:
    root = unpack("16amd64-8n2c", tmp_path / "sysfs")
    return coordinator_factory(
        "--sysfs-root", str(root), "--no-bind", "--memory", "64MiB", "--segment-size", "4MiB"
    )


@pytest.fixture
def eight_nodes_bound(coordinator_factory, tmp_path: Path) -> RunningCoordinator:
    """The 8-node topology with memory bound to its node: the kernel has only node 0."""
    root = unpack("16amd64-8n2c", tmp_path / "sysfs")
    return coordinator_factory(
        "--sysfs-root", str(root), "--memory", "64MiB", "--segment-size", "4MiB"
    )


def test_failed_page_moves_fail_the_request_and_leak_nothing(eight_nodes_bound) -> None:
    with plasma.connect(eight_nodes_bound.socket) as client:
        # (the kernel has one node: moving pages to node 3 fails)
        with pytest.raises(PlasmaError, match=r"interleaving .* failed"):
            client.put(np.arange(1 << 16), node="interleave")
        oid = client.put(np.arange(1 << 16), node=0)
        with pytest.raises(PlasmaError, match=r"moving .* failed"):
            client.migrate(oid, 3)
        assert np.array_equal(client.get_object(oid), np.arange(1 << 16))  # nothing lost
        client.delete([oid])

        def settled() -> bool:
            stats = client.stats()
            nodes = stats["nodes"].values()
            held = stats["used"] - stats["arena_bytes"]  # (the client's arena stays)
            return held == 0 and not any(n["placed_in"] for n in nodes) and not stats["moving"]

        wait_until(settled, what="the pages moved back and the memory freed")
        assert client.list() == {}
    assert eight_nodes_bound.stop() == 0
    assert "Traceback" not in eight_nodes_bound.log()


def test_replicas_are_made_listed_and_go_with_their_object(eight_nodes) -> None:
    # (--no-bind on one real node: the copies land, in the host's one node's memory)
    with plasma.connect(eight_nodes.socket) as client:
        array = np.arange(1 << 16)
        oid = client.put(array, node=0, replicas=[3, 5])
        assert client.list()[oid]["replicas"] == [3, 5]
        stats = client.stats()
        assert stats["replicas"] == 2
        assert [stats["nodes"][n]["used"] > 0 for n in (3, 5)] == [True, True]
        assert client.replicate(oid, [3]) == [0, 3, 5]
        assert np.array_equal(client.get_object(oid), array)  # a reader of node 0: the object
        with pytest.raises(PlacementImpossible):
            client.replicate(oid, [9])
        client.delete([oid])

        def gone() -> bool:
            s = client.stats()
            return s["replicas"] == 0 and s["used"] == s["arena_bytes"]

        wait_until(gone, what="the object and its copies to be freed")
    assert eight_nodes.stop() == 0


def test_without_binding_moves_are_accounting_and_copies_are_read_from_the_directory(
    eight_nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--no-bind: a migrate moves no page, only the charge; a reader on node 1 (as the CPUs
    it sends say) gets node 1's copy through the directory, with no request."""
    with plasma.connect(eight_nodes.socket) as producer:
        array = np.arange(1 << 16)
        oid = producer.put(array, node=0, replicas=[1])
        moved = producer.put(array + 1, node=0)
        assert producer.migrate(moved, 2) == [2]
        assert producer.stats()["nodes"][2]["placed_in"] >= array.nbytes
        monkeypatch.setattr(plasma.client, "get_affinity", lambda: {2, 3})
        with plasma.connect(eight_nodes.socket) as reader:
            assert reader._core.info is not None and reader._core.info.node == 1
            assert np.array_equal(reader.get_object(moved), array + 1)  # (maps node 0)
            assert np.array_equal(reader.get_object(oid), array)  # (maps node 1's copy)
            asked = reader.stats()["operations"].get("Get", 0)
            assert np.array_equal(reader.get_object(oid), array)
            assert np.array_equal(reader.get_object(moved), array + 1)
            assert reader.stats()["operations"].get("Get", 0) == asked
            directory = reader._core.reader
            assert directory is not None
            copy = directory.lookup(replica_id(oid.binary(), 1), REPLICA)
            assert copy is not None and copy.location.node == 1
        producer.delete([oid, moved])
    assert eight_nodes.stop() == 0
