"""The worker plugin's own decisions: when it sends dropped views' releases (no cluster), what
it leaves a worker it is removed from, and when results carry their location (two workers in
this process, talking TCP)."""

from __future__ import annotations

import types
from collections.abc import Callable

import numpy as np
import pytest

from tests.conftest import RunningCoordinator
from tests.helpers import MIB, workers_in_this_process

distributed = pytest.importorskip("distributed")

import plasma  # noqa: E402
from plasma.dask import _plugins  # noqa: E402
from plasma.dask._plugins import METADATA, PLACEMENT, PlasmaPlugin  # noqa: E402
from plasma.dask._store import PREFIX  # noqa: E402


class Store:
    """Stands in for the plugin's PlasmaData: counts flushes."""

    def __init__(self) -> None:
        self.holds_objects = False
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_releases_go_every_tick_while_objects_are_held_and_rarely_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _plugins._IDLE_FLUSH_INTERVAL == 1.0  # 8 ticks of 0.125 s below
    clock = types.SimpleNamespace(now=100.0)
    monkeypatch.setattr(_plugins.time, "monotonic", lambda: clock.now)
    plugin = PlasmaPlugin("unused.sock")
    plugin.store = store = Store()  # type: ignore[assignment]
    plugin._flushed, plugin._held = float("-inf"), False

    def ticks(n: int) -> int:
        before = store.flushes
        for _ in range(n):
            plugin._flush()
            clock.now += 0.125  # a tick (exact in binary: the sums stay exact)
        return store.flushes - before

    assert ticks(1) == 1  # the first tick
    assert ticks(7) == 0  # results in memory only: nothing to release for a second
    assert ticks(1) == 1  # ... then one, for views its tasks may have kept
    store.holds_objects = True
    assert ticks(5) == 5  # objects held: every tick
    store.holds_objects = False
    assert ticks(1) == 1  # the last one went: its release goes at once
    assert ticks(5) == 0


def test_removing_the_plugin_gives_the_worker_back_its_mapping_with_copies(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> None:
    coord = coordinator_factory("--memory", "64MiB")
    with workers_in_this_process() as cluster, distributed.Client(cluster) as client:
        a, b = cluster.workers.values()
        own = a.data
        client.register_plugin(PlasmaPlugin(coord.socket))
        x = client.submit(np.arange, MIB, dtype="f8", workers=[a.address], pure=False)
        assert client.submit(np.sum, x, workers=[b.address], pure=False).result() > 0
        assert a.data.object_of(x.key) is not None  # moved: a holds the object, b borrows it
        client.unregister_worker_plugin(PlasmaPlugin.name)
        assert a.data is own and a.state.data is own  # its own mapping again
        value = a.data[x.key]
        assert value.flags.writeable  # a private copy, not a view of the store
        np.testing.assert_array_equal(value, np.arange(MIB))
        assert a.handlers["get_data"] == a.get_data
        with plasma.connect(coord.socket) as store:
            assert not [o for o in store.list() if o.binary().startswith(PREFIX)]
        assert client.submit(np.sum, x, workers=[b.address], pure=False).result() > 0
        del x


@pytest.mark.parametrize("place_tasks", [False, True])
def test_results_carry_their_location_only_for_the_placement_plugin(
    coordinator_factory: Callable[..., RunningCoordinator], place_tasks: bool
) -> None:
    coord = coordinator_factory("--memory", "64MiB")
    with workers_in_this_process() as cluster, distributed.Client(cluster) as client:
        client.register_plugin(PlasmaPlugin(coord.socket, place_tasks=place_tasks))
        a, _ = cluster.workers.values()
        x = client.submit(np.ones, MIB, workers=[a.address], pure=False)  # 8 MiB
        y = client.submit(np.sum, x, pure=False)
        assert y.result() == MIB
        at_scheduler = (cluster.scheduler.tasks[x.key].metadata or {}).get(METADATA)
        placed = (cluster.scheduler.tasks[y.key].annotations or {}).get(PLACEMENT, "")
        if place_tasks:
            assert list(at_scheduler["location"]) == [a.data.token, a.data.node]
            assert "100% of its 8.0 MiB of input is on node" in placed  # the plugin placed y
        else:  # nobody would read it: every task-finished message would carry it for nothing
            assert at_scheduler is None and METADATA not in a.state.tasks[x.key].metadata
            assert not placed
        del x, y
