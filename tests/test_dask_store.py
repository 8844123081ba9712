"""plasma.dask's data store and reaper against a real coordinator (no Dask cluster)."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from tests.conftest import RunningCoordinator, wait_until

pytest.importorskip("distributed")

import plasma
from plasma.dask import PlasmaData, reap, stale_objects
from plasma.dask._store import PREFIX, Handle, Serving, Shared, serving
from plasma.ids import ObjectID
from tests.helpers import MIB


@pytest.fixture
def coord(coordinator_factory: Callable[..., RunningCoordinator]) -> RunningCoordinator:
    return coordinator_factory("--memory", "64MiB")


@pytest.fixture
def stores(coord: RunningCoordinator) -> Iterator[Callable[[], PlasmaData]]:
    made: list[PlasmaData] = []

    def make(**kwargs: object) -> PlasmaData:
        store = PlasmaData(coord.socket, name=f"tcp://127.0.0.1:{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def objects(coord: RunningCoordinator) -> set[bytes]:
    with plasma.connect(coord.socket) as client:
        return {o.binary() for o in client.list() if o.binary().startswith(PREFIX)}


def lend(store: PlasmaData, key: str) -> tuple[object, Serving]:
    """What ``store[key]`` gives a same-host peer's ``get_data``, and the request."""
    request = Serving(same_host=True)
    token = serving.set(request)
    try:
        return store[key], request
    finally:
        serving.reset(token)


def test_large_values_live_in_the_store_as_read_only_views(coord, stores) -> None:
    store = stores()
    store["x"] = np.arange(MIB, dtype="f8")
    store["frame"] = {"a": np.ones(MIB // 4), "label": "kept"}  # pickle 5, buffers in the object
    x = store["x"]
    assert isinstance(x, np.ndarray) and not x.flags.writeable
    np.testing.assert_array_equal(x, np.arange(MIB))
    assert store["frame"]["label"] == "kept" and not store["frame"]["a"].flags.writeable
    assert len(objects(coord)) == 2 and set(store) == {"x", "frame"} and len(store) == 2
    del store["x"]
    assert len(objects(coord)) == 1
    store.close()
    assert not objects(coord)


def test_small_and_inexact_values_stay_in_memory(coord, stores) -> None:
    class Tagged(np.ndarray):
        pass

    store = stores()
    store["small"] = np.ones(10)
    store["bytes"] = b"x" * (2 * MIB)  # put would hand back a memoryview
    store["sub"] = np.ones(MIB).view(Tagged)  # put would hand back a plain ndarray
    assert type(store["bytes"]) is bytes and type(store["sub"]) is Tagged
    assert all(store.object_of(k) is None for k in store) and not objects(coord)


def test_a_same_host_peer_gets_an_id_and_borrows_the_object(coord, stores) -> None:
    owner, peer = stores(), stores()
    owner["x"] = np.arange(MIB, dtype="f8")
    handle, request = lend(owner, "x")
    assert isinstance(handle, Handle) and len(pickle.dumps(handle)) < 400
    received = pickle.loads(pickle.dumps(handle))
    assert isinstance(received, Shared)
    peer["x"] = received
    owner.return_lent(request.lent)
    assert peer.object_of("x") == owner.object_of("x")  # the same object, not a copy
    np.testing.assert_array_equal(peer["x"], np.arange(MIB))
    del peer["x"]  # a borrower only drops its view
    assert len(objects(coord)) == 1
    del owner["x"]
    assert not objects(coord)


def test_an_object_lent_out_is_deleted_when_the_request_ends(coord, stores) -> None:
    owner = stores()
    owner["x"] = np.ones(MIB)
    handle, request = lend(owner, "x")
    del owner["x"]  # the scheduler freed it while a peer is reading it
    assert len(objects(coord)) == 1
    pickle.loads(pickle.dumps(handle))  # the peer can still read it
    owner.return_lent(request.lent)
    assert not objects(coord)


def test_a_borrowed_key_whose_owner_deleted_it_is_sent_as_bytes(coord, stores) -> None:
    owner, peer = stores(), stores()
    owner["x"] = np.ones(MIB)
    handle, request = lend(owner, "x")
    peer["x"] = pickle.loads(pickle.dumps(handle))
    owner.return_lent(request.lent)
    del owner["x"]
    value, _ = lend(peer, "x")
    assert isinstance(value, np.ndarray)  # its view still holds the bytes
    np.testing.assert_array_equal(value, np.ones(MIB))


def test_reading_an_object_deleted_before_the_peer_read_it_raises_clearly(stores) -> None:
    owner = stores()
    owner["x"] = np.ones(MIB)
    oid, node, nbytes = owner.object_of("x")  # type: ignore[misc]
    del owner["x"]
    data = pickle.dumps(Handle(owner.token, oid, node, nbytes))
    with pytest.raises(plasma.ObjectNotFound, match="deleted by the worker that sent its id"):
        pickle.loads(data)


def test_a_full_store_keeps_results_in_worker_memory_with_a_log_line(
    coordinator_factory: Callable[..., RunningCoordinator], caplog: pytest.LogCaptureFixture
) -> None:
    coord = coordinator_factory("--memory", "8MiB", name="small.sock")
    store = PlasmaData(coord.socket)
    try:
        with caplog.at_level(logging.WARNING, logger="plasma.dask"):
            store["big"] = np.ones(2 * MIB)  # 16 MiB
        assert store.object_of("big") is None
        np.testing.assert_array_equal(store["big"], np.ones(2 * MIB))
        assert "store full, keeping a ndarray result of 16.0 MiB in worker memory" in caplog.text
    finally:
        store.close()


def test_an_unreachable_coordinator_is_a_clear_error(tmp_path) -> None:
    store = PlasmaData(str(tmp_path / "absent.sock"))
    with pytest.raises(plasma.Disconnected, match="cannot connect to plasma-coord at"):
        store["x"] = np.ones(MIB)


def test_stale_objects_are_those_of_clients_gone() -> None:
    ours, theirs, foreign = (ObjectID(PREFIX + bytes([i]) * 15) for i in (1, 2, 3))
    other = ObjectID(b"y" * 20)
    listing = {
        ours: {"owner": 1, "state": "sealed"},
        theirs: {"owner": 2, "state": "sealed"},
        foreign: {"owner": 3, "state": "created"},  # still being written: its owner is alive
        other: {"owner": 2, "state": "sealed"},  # not a plasma.dask object
    }
    assert stale_objects(listing, live_clients={1}) == [theirs]


def test_reap_deletes_the_objects_of_a_store_that_vanished(coord, stores) -> None:
    dead, alive = stores(), stores()
    dead["x"] = np.ones(MIB)
    alive["y"] = np.ones(MIB)
    dead.client.close()  # a worker that died: its connection goes, its objects stay
    with plasma.connect(coord.socket) as client:
        wait_until(lambda: not reap(client) and len(objects(coord)) == 1, what="the reap")
    assert objects(coord) == {alive.object_of("y")[0]}  # type: ignore[index]


def test_torch_tensors_live_in_the_store_and_travel_by_id(coord, stores) -> None:
    """dask.sizeof measures a tensor by its bytes (plasma.dask registers it), so a large one
    goes to the store, comes back zero-copy, and a same-host peer borrows it by id."""
    import torch

    owner, peer = stores(), stores()
    owner["t"] = torch.arange(MIB, dtype=torch.float32)
    owner["state"] = {"w": torch.ones(512, 512), "b": torch.zeros(512)}
    owner["small"] = torch.ones(10)
    assert owner.object_of("small") is None and len(objects(coord)) == 2
    t = owner["t"]
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.arange(MIB, dtype=torch.float32))
    t.add_(1)  # a private copy-on-write page: the store's bytes stay
    handle, request = lend(owner, "t")
    peer["t"] = pickle.loads(pickle.dumps(handle))
    owner.return_lent(request.lent)
    assert peer.object_of("t") == owner.object_of("t")
    assert torch.equal(peer["t"], torch.arange(MIB, dtype=torch.float32))
    assert torch.equal(owner["state"]["w"], torch.ones(512, 512))


@pytest.mark.parametrize(
    "script",
    [  # torch imported (and a tensor measured: dask caches what it found) before plasma.dask
        "import torch; from dask.sizeof import sizeof; sizeof(torch.ones(1)); import plasma.dask",
        # plasma.dask first: it must not import torch; the size registers when dask meets one
        "import sys, plasma.dask; from dask.sizeof import sizeof; assert 'torch' not in"
        " sys.modules; import torch",
    ],
)
def test_dask_measures_tensors_by_their_bytes(script: str) -> None:
    check = "; print(sizeof({'a': torch.ones(1000)}) > 4000,"
    check += " sizeof(torch.nn.Parameter(torch.ones(10))))"
    done = subprocess.run(
        [sys.executable, "-c", script + check], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["True", "40"], done.stderr
