"""The internals of distributed that plasma.dask relies on, pinned against the installed release.

A distributed release that changes one of them must fail here, naming it, and make the
plugin refuse to start with a message, never leave a worker whose results go to a mapping
it no longer reads.
"""

from __future__ import annotations

import asyncio
import re
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import RunningCoordinator
from tests.helpers import MIB, workers_in_this_process

distributed = pytest.importorskip("distributed")

from plasma.dask import PlasmaPlugin  # noqa: E402
from plasma.dask._internals import check_installed, check_worker  # noqa: E402
from plasma.errors import Unsupported  # noqa: E402

VERSION = distributed.__version__


@pytest.fixture
def local_cluster() -> Iterator[Any]:
    """Two workers in this process talking TCP; no plugin yet."""
    with workers_in_this_process() as cluster:
        yield cluster


def test_the_installed_release_has_what_plasma_dask_relies_on(local_cluster) -> None:
    for worker in local_cluster.workers.values():
        check_worker(worker)  # raises Unsupported, naming the internal, if not


def test_get_data_reads_results_through_the_worker_data_in_its_handler(
    local_cluster, coordinator_factory: Callable[..., RunningCoordinator]
) -> None:
    """The one internal no attribute shows: ``Worker.get_data`` reads each value with
    ``worker.data[key]`` in the task of the handler the plugin wraps. If it stops doing
    so, same-host transfers silently go back to bytes; this test says so."""
    coord = coordinator_factory("--memory", "64MiB")
    with distributed.Client(local_cluster) as client:
        client.register_plugin(PlasmaPlugin(coord.socket))
        a, b = local_cluster.workers.values()
        x = client.submit(np.ones, MIB, workers=[a.address], pure=False)  # 8 MiB
        assert client.submit(np.sum, x, workers=[b.address], pure=False).result() == MIB
        sent = [e["compressed"] for e in a.transfer_outgoing_log if e["who"] == b.address]
        assert sent and max(sent) < 4096, (
            f"distributed {VERSION}: Worker.get_data no longer reads results through "
            "worker.data[key] inside the get_data handler the plugin wraps (the same-host "
            f"transfer wrote {sent} bytes, not an object id): see plasma/dask/_internals.py"
        )
        assert a.data.object_of(x.key) is not None and b.data.object_of(x.key) is not None
        del x


def test_workers_of_one_process_hand_each_other_values_not_ids(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> None:
    """``inproc://`` comms pass objects without pickling: a handle would arrive as is."""
    coord = coordinator_factory("--memory", "64MiB")
    with workers_in_this_process(protocol=None) as cluster, distributed.Client(cluster) as client:
        client.register_plugin(PlasmaPlugin(coord.socket))
        a, b = cluster.workers.values()
        assert a.address.startswith("inproc://")
        x = client.submit(np.ones, MIB, workers=[a.address], pure=False)
        assert client.submit(np.sum, x, workers=[b.address], pure=False).result() == MIB
        assert a.data.object_of(x.key) is None  # nothing went through the store
        del x


def fake_worker(**changes: Any) -> Any:
    """A stand-in for a worker of a distributed release with ``changes``."""
    data: dict[str, object] = {}
    worker = types.SimpleNamespace(
        data=data,
        state=types.SimpleNamespace(data=data, tasks={}),
        memory_manager=types.SimpleNamespace(data=data),
    )

    async def get_data(comm: Any, keys: Any, who: Any = None, serializers: Any = None) -> Any:
        return None

    worker.get_data = get_data
    worker.handlers = {"get_data": get_data}
    for name, value in changes.items():
        setattr(worker, name, value)
    return worker


def test_a_worker_like_the_installed_ones_passes() -> None:
    check_worker(fake_worker())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"handlers": {}}, "worker.handlers['get_data'] is not the worker's own get_data"),
        (
            {"handlers": {"get_data": lambda comm, keys, who=None, serializers=None: None}},
            "another plugin replaced it",
        ),
        ({"state": types.SimpleNamespace(data={}, tasks={})}, "are not one mapping"),
        ({"state": types.SimpleNamespace(tasks={})}, "are not one mapping"),
        ({"state": types.SimpleNamespace(data={})}, "worker.state.tasks is not a mapping"),
    ],
)
def test_a_release_without_them_is_refused_clearly(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(
        Unsupported, match=f"distributed {VERSION} is not supported: .*{re.escape(message)}"
    ):
        check_worker(fake_worker(**changes))


def test_a_get_data_with_other_parameters_is_refused_clearly() -> None:
    async def get_data(comm: Any, keys: Any, who: Any, serializers: Any, stream: Any) -> Any:
        return None

    worker = fake_worker(get_data=get_data, handlers={"get_data": get_data})
    with pytest.raises(Unsupported, match=r"Worker.get_data takes \('comm', 'keys'"):
        check_worker(worker)


def test_a_data_assignment_that_does_not_take_is_refused() -> None:
    worker = fake_worker()
    with pytest.raises(Unsupported, match=r"did not replace worker\.data"):
        check_installed(worker, {})  # the worker's own mapping is still there


def test_the_plugin_leaves_a_worker_it_refuses_as_it_was(tmp_path) -> None:
    worker = fake_worker(state=types.SimpleNamespace(data={}, tasks={}))
    before = (worker.data, worker.state.data, worker.handlers["get_data"])
    with pytest.raises(Unsupported, match="not one mapping"):
        asyncio.run(PlasmaPlugin(str(tmp_path / "unused.sock")).setup(worker))
    assert (worker.data, worker.state.data, worker.handlers["get_data"]) == before
