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

import pandas as pd
from distributed.spill import SpillBuffer

import plasma
from plasma.dask import PlasmaData, reap, stale_objects
from plasma.dask._store import PREFIX, Handle, Serving, Shared, _reader, serving
from plasma.ids import ObjectID
from tests.helpers import MIB


@pytest.fixture
def coord(coordinator_factory: Callable[..., RunningCoordinator]) -> RunningCoordinator:
    return coordinator_factory("--memory", "64MiB")


@pytest.fixture
def stores(coord: RunningCoordinator) -> Iterator[Callable[..., PlasmaData]]:
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


def lend(store: PlasmaData, key: str, same_host: bool = True) -> tuple[object, Serving]:
    """What ``store[key]`` gives a peer's ``get_data`` (of this host or not), and the request."""
    request = Serving(same_host=same_host)
    token = serving.set(request)
    try:
        return store[key], request
    finally:
        serving.reset(token)


def transfer(owner: PlasmaData, peer: PlasmaData, key: str) -> None:
    """A same-host transfer of ``key`` from ``owner`` to ``peer``, as the plugin runs it."""
    handle, request = lend(owner, key)
    peer[key] = pickle.loads(pickle.dumps(handle))
    owner.return_lent(request.lent)


def address_range(socket: str, oid: bytes) -> tuple[int, int]:
    """Where this process sees the bytes of object ``oid`` (its reader's mapping)."""
    view = _reader(socket).get(ObjectID(oid), timeout=0)
    start = np.frombuffer(view, np.uint8).ctypes.data
    return start, start + len(view)


def test_results_stay_in_memory_until_a_same_host_peer_reads_them(coord, stores) -> None:
    store = stores()
    x = np.arange(MIB, dtype="f8")
    store["x"] = x
    assert store["x"] is x and store.memory["x"] is x  # the worker's own value, untouched
    assert lend(store, "x", same_host=False)[0] is x  # another host's peer: the bytes
    assert store.object_of("x") is None and not objects(coord)
    assert set(store) == {"x"} and len(store) == 1 and "x" in store


def test_a_same_host_read_moves_the_result_into_the_store_once(coord, stores) -> None:
    store = stores()
    store["x"] = np.arange(MIB, dtype="f8")
    first, request = lend(store, "x")
    assert isinstance(first, Handle) and len(pickle.dumps(first)) < 400
    store.return_lent(request.lent)
    oid = first.oid
    assert store.object_of("x") == (oid, store.node, 8 * MIB)
    assert "x" not in store.memory and objects(coord) == {oid}  # the private copy went
    x = store["x"]  # the worker's own tasks now read the zero-copy view
    assert isinstance(x, np.ndarray) and not x.flags.writeable
    np.testing.assert_array_equal(x, np.arange(MIB))
    again, request = lend(store, "x")
    store.return_lent(request.lent)
    assert isinstance(again, Handle) and again.oid == oid and objects(coord) == {oid}
    assert (store.moves, store.moved_bytes) == (1, 8 * MIB)
    del store["x"]
    assert not objects(coord) and not store


def test_the_sizes_the_worker_measured_decide_what_moves(coord, stores) -> None:
    store = stores()
    store["x"] = store["y"] = np.ones(MIB)  # 8 MiB
    request = Serving(same_host=True, sizes={"x": 1000, "y": 3 * MIB})
    token = serving.set(request)
    try:
        kept, moved = store["x"], store["y"]
    finally:
        serving.reset(token)
    assert kept is store.memory["x"]  # its size said small: not measured again
    assert isinstance(moved, Handle) and moved.nbytes == 3 * MIB


def test_small_and_inexact_values_are_sent_as_bytes(coord, stores) -> None:
    class Tagged(np.ndarray):
        pass

    store = stores()
    store["small"] = np.ones(10)
    store["bytes"] = b"x" * (2 * MIB)  # put would hand back a memoryview
    store["sub"] = np.ones(MIB).view(Tagged)  # put would hand back a plain ndarray
    store["lock"] = {"a": np.ones(MIB), "f": lambda: None}  # put cannot pickle it
    for key in list(store):
        value, request = lend(store, key)
        assert value is store.memory[key] and not request.lent
    assert all(store.object_of(k) is None for k in store) and not objects(coord)


def test_a_same_host_peer_borrows_the_object(coord, stores) -> None:
    owner, peer = stores(), stores()
    owner["x"] = np.arange(MIB, dtype="f8")
    handle, request = lend(owner, "x")
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


def test_a_dataframe_read_by_a_peer_keeps_its_columns_zero_copy(coord, stores) -> None:
    owner, peer = stores(), stores()
    n = MIB // 4
    frame = pd.DataFrame(
        {
            "x": np.arange(n, dtype="f8"),
            "id": np.arange(n, dtype="i8") % 1000,
            "name": pd.array([f"n{i % 7}" for i in range(n)], dtype="string"),
        },
        index=pd.date_range("2000-01-01", periods=n, freq="s"),
    )
    owner["df"] = frame
    transfer(owner, peer, "df")
    got = peer["df"]
    pd.testing.assert_frame_equal(got, frame)
    oid = peer.object_of("df")[0]  # type: ignore[index]
    start, end = address_range(coord.socket, oid)
    for column in ("x", "id"):
        values = got[column].to_numpy()
        assert start <= values.ctypes.data < end, f"{column} was copied out of the object"
        assert not values.flags.writeable
    index = got.index.asi8
    assert start <= index.ctypes.data < end, "the index was copied out of the object"
    strings = got["name"].array.__arrow_array__()  # Arrow-backed: its buffers, not a copy
    for chunk in strings.chunks:
        for buffer in chunk.buffers():
            assert buffer is None or start <= buffer.address < end, "strings were copied"


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
    transfer(owner, peer, "x")
    del owner["x"]
    value, _ = lend(peer, "x")
    assert isinstance(value, np.ndarray)  # its view still holds the bytes
    np.testing.assert_array_equal(value, np.ones(MIB))


def test_reading_an_object_deleted_before_the_peer_read_it_raises_clearly(stores) -> None:
    owner = stores()
    owner["x"] = np.ones(MIB)
    handle, request = lend(owner, "x")
    owner.return_lent(request.lent)
    del owner["x"]
    with pytest.raises(plasma.ObjectNotFound, match="deleted by the worker that sent its id"):
        pickle.loads(pickle.dumps(handle))


def test_a_full_store_sends_the_bytes_with_a_log_line(
    coordinator_factory: Callable[..., RunningCoordinator], caplog: pytest.LogCaptureFixture
) -> None:
    coord = coordinator_factory("--memory", "8MiB", name="small.sock")
    store = PlasmaData(coord.socket)
    try:
        store["big"] = np.ones(2 * MIB)  # 16 MiB
        with caplog.at_level(logging.WARNING, logger="plasma.dask"):
            value, request = lend(store, "big")
        assert value is store.memory["big"] and not request.lent
        assert store.object_of("big") is None and not objects(coord)
        assert (
            "cannot move a ndarray result of 16.0 MiB into the store, sending its bytes: "
            "StoreFull" in caplog.text
        )
    finally:
        store.close()


def test_without_a_coordinator_results_are_sent_as_bytes_saying_why(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    store = PlasmaData(str(tmp_path / "absent.sock"))
    store["x"] = np.ones(MIB)
    with caplog.at_level(logging.WARNING, logger="plasma.dask"):
        value, _ = lend(store, "x")
    assert value is store.memory["x"]
    assert "sending its bytes: Disconnected: cannot connect to plasma-coord at" in caplog.text


def test_dask_spilling_works_on_results_in_memory(coord, stores, tmp_path) -> None:
    assert not hasattr(stores(), "evict")  # over a dict: Dask sees no spilling, as plain Dask
    buffer = SpillBuffer(str(tmp_path / "spill"), target=64 * MIB)
    store = stores(memory=buffer)
    store["x"] = np.arange(MIB, dtype="f8")
    store["y"] = np.ones(MIB)
    assert store.fast is buffer.fast and store.spilled_total == buffer.spilled_total
    assert store.evict() > 0 and "x" in buffer.slow  # Dask's memory manager spills x
    handle, request = lend(store, "x")  # a same-host peer reads it: unspilled, moved
    store.return_lent(request.lent)
    assert isinstance(handle, Handle) and "x" not in buffer and len(objects(coord)) == 1
    np.testing.assert_array_equal(store["x"], np.arange(MIB))


def test_close_deletes_the_objects_and_keeps_the_memory(coord, stores) -> None:
    store = stores()
    store["x"] = np.ones(MIB)
    store["y"] = np.zeros(MIB)
    lend(store, "x")
    assert len(objects(coord)) == 1
    store.close()
    assert not objects(coord) and set(store) == {"y"}


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
    lend(dead, "x")
    lend(alive, "y")
    dead.client.close()  # a worker that died: its connection goes, its objects stay
    with plasma.connect(coord.socket) as client:
        wait_until(lambda: not reap(client) and len(objects(coord)) == 1, what="the reap")
    assert objects(coord) == {alive.object_of("y")[0]}  # type: ignore[index]


def test_torch_tensors_move_into_the_store_and_travel_by_id(coord, stores) -> None:
    """dask.sizeof measures a tensor by its bytes (plasma.dask registers it), so a large one a
    same-host peer asks for moves into the store, comes back zero-copy, and the peer borrows
    it by id; a small one is sent as it is."""
    import torch

    owner, peer = stores(), stores()
    owner["t"] = torch.arange(MIB, dtype=torch.float32)
    owner["state"] = {"w": torch.ones(512, 512), "b": torch.zeros(512)}
    owner["small"] = torch.ones(10)
    assert not objects(coord)  # nothing moves before a same-host peer asks
    small, request = lend(owner, "small")
    assert small is owner.memory["small"] and not request.lent
    handle, request = lend(owner, "t")
    peer["t"] = pickle.loads(pickle.dumps(handle))
    owner.return_lent(request.lent)
    state, request = lend(owner, "state")
    owner.return_lent(request.lent)
    assert isinstance(state, Handle) and len(objects(coord)) == 2
    t = owner["t"]
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.arange(MIB, dtype=torch.float32))
    t.add_(1)  # a private copy-on-write page: the store's bytes stay
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


def test_a_token_names_the_coordinator_connected_last(coordinator_factory, monkeypatch) -> None:
    """A coordinator started after another stopped may get its socket's inode number again
    (as one test's after the last one's), and with it the same token: a Handle of the new
    coordinator must resolve through the new socket, not the old one remembered."""
    monkeypatch.setattr("plasma.dask._store.coordinator_token", lambda path: "same")
    monkeypatch.setattr("plasma.dask._store._sockets", {})
    first, second = (coordinator_factory("--memory", "64MiB", name=f"{n}.sock") for n in "ab")
    old = PlasmaData(first.socket, name="tcp://127.0.0.1:1")
    new = PlasmaData(second.socket, name="tcp://127.0.0.1:2")
    assert old.location[0] == new.location[0] == "same"
    new["x"] = np.arange(MIB // 8)
    handle, _ = lend(new, "x")
    shared = pickle.loads(pickle.dumps(handle))
    assert np.array_equal(shared.value, np.arange(MIB // 8))
    old.close()
    new.close()
