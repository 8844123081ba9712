"""Who holds the memory (issue 30): ``Store.holders`` per client (references, pins, unsealed
creates, arena tails) and the largest objects held with their holders; the coordinator's
``stats()["clients"][i]["holds"]`` and ``stats()["holders"]``; ``plasma-coord memory``; the
dashboard's holders table; and the store_full message that names the same numbers."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

import pytest

from plasma.cli import main
from plasma.cli.memory import format_memory
from plasma.client import Client
from plasma.dashboard import state
from plasma.dashboard.state import History, Snapshot
from plasma.errors import StoreFull
from plasma.store import Store
from tests.conftest import RunningCoordinator
from tests.helpers import (
    KIB,
    FakeProvider,
    held_deleted,
    oid,
    pin,
    pin_reader,
    pin_scan_store,
    put,
)

ZERO = {"bytes": 0, "objects": 0}


def by_id(holders: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {c["id"]: c for c in holders["clients"]}


def mixed_store() -> tuple[Store, Any, int]:
    """Client 1 writes: object 1 (1 KiB) sealed and released, object 2 (2 KiB) sealed and
    still referenced, object 3 (512 bytes) unsealed. Client 2 reads: it gets object 2 (a
    reference shared with client 1) and pins it too, and pins object 1 (no reference). Client
    3 holds a 4 KiB arena. ``(store, client 2's pin table, the index of its pin of 1)``"""
    store = pin_scan_store()
    store.register_client(1, label="client 1 'writer' (pid 11)")
    put(store, 1, 1, 1024)
    store.create(1, oid(2), 2048)
    store.seal(1, oid(2))
    store.create(1, oid(3), 512)
    read, table = pin_reader(store, 2)
    assert not isinstance(store.get(2, [oid(2)], timeout=0), Exception)
    index = pin(store, read, table, 1)
    pin(store, read, table, 2)
    store.register_client(3)
    store.grant_arena(3, 4 * KIB)
    return store, table, index


def test_each_client_by_each_means_and_the_largest_objects_with_their_holders() -> None:
    store, _, _ = mixed_store()
    passes = store._pins.passes
    held = store.holders(top_objects=2)
    assert store._pins.passes == passes + 1  # one pass over the pin tables
    assert [c["id"] for c in held["clients"]] == [3, 2, 1]  # most bytes held first
    clients = by_id(held)
    assert clients[1] == {
        "id": 1,
        "label": "client 1 'writer' (pid 11)",
        "references": {"bytes": 2048, "objects": 1},
        "pins": ZERO,
        "unsealed": {"bytes": 512, "objects": 1},
        "arena": 0,
        "total": 2560,
    }
    # a reader holding by two means: a reference (object 2, which it also pins: counted once,
    # as a reference) and a pin (object 1, which nothing references)
    assert clients[2]["references"] == {"bytes": 2048, "objects": 1}
    assert clients[2]["pins"] == {"bytes": 1024, "objects": 1}
    assert clients[2]["total"] == 3072 and clients[2]["label"] == "client 2"
    assert clients[3]["arena"] == 4096 and clients[3]["total"] == 4096
    assert clients[3]["references"] == clients[3]["pins"] == clients[3]["unsealed"] == ZERO
    # in all, each object once: object 2 is shared by two references and a pin
    assert held["total"] == {
        "references": 2048,
        "unsealed": 512,
        "pins": 1024,
        "arenas": 4096,
        "bytes": 2048 + 512 + 1024 + 4096,
    }
    top = held["objects"]
    assert [o["id"] for o in top] == [oid(2).hex(), oid(1).hex()]
    assert top[0]["referenced_by"] == [1, 2] and top[0]["pinned_by"] == [2]
    assert top[0]["state"] == "sealed" and top[0]["size"] == 2048 and top[0]["owner"] == 1
    assert top[1]["referenced_by"] == [] and top[1]["pinned_by"] == [2]
    assert (top[0]["data_size"], top[0]["node"], top[0]["replica"]) == (2048, 0, False)
    unsealed = store.holders(top_objects=3)["objects"][2]
    assert (unsealed["id"], unsealed["state"]) == (oid(3).hex(), "unsealed")
    assert unsealed["referenced_by"] == [1]
    assert store.holders(top_objects=0)["objects"] == []


def test_what_is_let_go_is_no_longer_held() -> None:
    store, table, index = mixed_store()
    table.unpin(index)  # client 2 stops pinning object 1
    store.release(2, oid(2))  # and its reference of object 2 (it still pins it)
    store.abort(1, oid(3))
    store.return_arena(3, store._clients[3].arena.grant)  # type: ignore[union-attr]
    clients = by_id(store.holders())
    assert clients[2]["references"] == ZERO
    assert clients[2]["pins"] == {"bytes": 2048, "objects": 1}  # (now counted as a pin)
    assert clients[1]["unsealed"] == ZERO and clients[3]["total"] == 0
    assert store.holders()["total"]["pins"] == 0  # object 2 is still referenced by client 1
    store.disconnect(2)
    assert 2 not in by_id(store.holders())
    assert store.holders()["total"]["bytes"] == 2048


def test_a_deleted_object_a_reader_still_pins_is_held_by_that_reader() -> None:
    store, _, _, _ = held_deleted(clients=1)
    held = store.holders(top_objects=8)
    assert by_id(held)[100]["pins"] == {"bytes": 64, "objects": 1}
    assert by_id(held)[200]["pins"] == {"bytes": 7 * 64, "objects": 7}
    deleted = next(o for o in held["objects"] if o["id"] == oid(1).hex())
    assert deleted["state"] == "deleting" and deleted["pinned_by"] == [100]
    assert held["total"]["pins"] == 8 * 64


def test_store_full_names_the_holders_with_the_numbers_holders_gives() -> None:
    """The message and ``holders`` are one computation: same clients, same bytes."""
    store, _, _ = mixed_store()
    with pytest.raises(StoreFull) as full:
        store.create(1, oid(30), 250 * KIB)
    text = str(full.value)
    named = re.findall(r"(client \d+[^(]*(?:\(pid \d+\) )?)\((\d+) bytes", text)
    totals = {c["label"]: c["total"] for c in store.holders()["clients"]}
    assert {label.strip(): int(n) for label, n in named} == totals
    assert "client 3 (4096 bytes: 4096 in its arena)" in text
    assert "client 2 (3072 bytes: 2048 referenced, 1024 pinned)" in text
    assert "(2560 bytes: 2048 referenced, 512 being written)" in text


def test_a_node_full_message_counts_only_that_nodes_memory() -> None:
    store = Store(
        {0: 64 * KIB, 1: 64 * KIB},
        FakeProvider(),
        segment_size=64 * KIB,
        grace=0.0,
        reclaim_wait=0,
        directory_capacity=64,
    )
    store.register_client(1, node=1)
    store.create(1, oid(1), 8 * KIB, node=1)
    store.register_client(2, node=0)
    store.create(2, oid(2), 60 * KIB, node=0)
    with pytest.raises(StoreFull) as full:
        store.create(2, oid(3), 8 * KIB, node=0)
    assert "held most by client 2 (61440 bytes: 61440 being written)" in str(full.value)
    assert "client 1" not in str(full.value)
    assert by_id(store.holders())[1]["unsealed"] == {"bytes": 8 * KIB, "objects": 1}


# ---------------------------------------------------------------- coordinator, CLI, dashboard


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_memory_command_names_who_holds_what(
    coordinator: RunningCoordinator, cli: Callable[..., tuple[int, str, str]]
) -> None:
    """Two clients holding different things: ``plasma-coord memory`` lists both (the one
    holding most first) with their pids and names, the totals, and the largest objects with
    who holds them; ``--json`` is ``stats()``'s clients and holders."""
    with (
        Client(coordinator.socket, client_name="big-writer") as writer,
        Client(coordinator.socket, client_name="small-reader") as other,
    ):
        big = writer.create(b"b" * 20, 3 << 20)  # unsealed, 3 MiB
        shared = writer.create(b"s" * 20, 1 << 20)
        writer.seal(b"s" * 20)  # sealed, referenced by its creator
        held = other.get([b"s" * 20])  # read by the other client too
        other.create_and_seal(b"o" * 20, b"y" * 1000)  # (nobody holds it)
        writer.flush()
        other.flush()
        code, out, err = cli("memory", "--socket", coordinator.socket, "--top", "2")
        code_json, raw, _ = cli("memory", "--socket", coordinator.socket, "--json")
        stats = writer.stats()
        del held, big, shared
    assert code == 0, err
    rows = [line.split() for line in out.split("clients:\n", 1)[1].split("\n\n")[0].splitlines()]
    assert rows[0][:3] == ["id", "pid", "uid"] and "name" in rows[0]
    names = [r[-1] for r in rows[1:] if r[0].isdigit()]
    assert names[:2] == ["big-writer", "small-reader"]  # most bytes first
    writer_row = next(r for r in rows if r[-1] == "big-writer")
    assert writer_row[1] == str(os.getpid())
    assert "4.0 MiB" in " ".join(writer_row)  # 3 MiB unsealed + 1 MiB referenced
    assert "total:" in out
    objects = out.split("largest objects held:\n", 1)[1]
    lines = objects.strip().splitlines()
    assert len(lines) == 3  # the header and --top 2
    assert ("62" * 20) in lines[1] and "unsealed" in lines[1] and "big-writer" in lines[1]
    assert ("73" * 20) in lines[2] and "big-writer" in lines[2] and "small-reader" in lines[2]
    assert code_json == 0
    data = json.loads(raw)
    holds = {c["name"]: c["holds"] for c in data["clients"]}
    assert holds["big-writer"]["unsealed"]["objects"] == 1
    assert holds["big-writer"]["references"]["objects"] == 1
    assert holds["small-reader"]["references"]["objects"] == 1
    assert holds["small-reader"]["unsealed"] == ZERO
    assert holds["small-reader"]["references"]["bytes"] < holds["big-writer"]["total"]
    assert data["holders"]["total"]["unsealed"] == holds["big-writer"]["unsealed"]["bytes"]
    assert len(data["holders"]["objects"]) == 2  # the 1000-byte object is held by nobody
    assert {c["name"] for c in stats["clients"]} >= {"big-writer", "small-reader"}
    assert stats["holders"]["total"] == data["holders"]["total"]


def test_memory_command_with_a_bad_top(
    coordinator: RunningCoordinator, cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = cli("memory", "--socket", coordinator.socket, "--top", "20000")
    assert code == 1 and "top_objects must be 0..10000" in err
    with pytest.raises(SystemExit):
        cli("memory", "--socket", coordinator.socket, "--top", "-1")


def test_the_memory_report_of_an_idle_store() -> None:
    text = format_memory(
        {
            "clients": [],
            "holders": {
                "total": {"references": 0, "unsealed": 0, "pins": 0, "arenas": 0, "bytes": 0},
                "objects": [],
            },
            "capacity": 1 << 20,
            "used": 0,
        }
    )
    assert "clients: none" in text and "largest objects held: none" in text


def test_the_dashboard_state_has_the_holders() -> None:
    holds = {
        "references": {"bytes": 2048, "objects": 1},
        "pins": {"bytes": 1024, "objects": 1},
        "unsealed": ZERO,
        "arena": 4096,
        "total": 7168,
    }
    stats = {
        "clients": [
            {"id": 1, "name": "idle", "pid": 10, "uid": 0, "holds": None},
            {"id": 2, "name": "hog", "pid": 20, "uid": 0, "holds": holds},
        ],
        "holders": {
            "total": {"references": 2048, "unsealed": 0, "pins": 1024, "arenas": 4096},
            "objects": [
                {"id": "ab" * 20, "size": 2048, "referenced_by": [2], "pinned_by": [1]},
            ],
        },
    }
    page = state.assemble(Snapshot(stats), history=History(), now=1.0)
    assert json.loads(json.dumps(page)) == page
    assert [c["id"] for c in page["clients"]] == [2, 1]  # most bytes held first
    hog = page["clients"][0]
    assert (hog["name"], hog["pid"], hog["references"], hog["pins"]) == ("hog", 20, 2048, 1024)
    assert (hog["arena"], hog["unsealed"], hog["total"]) == (4096, 0, 7168)
    assert page["clients"][1]["total"] == 0
    held = page["holders"]["objects"][0]
    assert held["holders"] == ["hog (pid 20)", "idle (pid 10) pins"]
    assert page["holders"]["total"]["references"] == 2048


def test_pins_name_the_same_objects_after_the_directory_is_rebuilt() -> None:
    """(The publisher finds a pinned object by its generation through an index of slots: a
    rebuild moves every slot, and the index must follow.)"""
    store = Store({0: 1 << 20}, FakeProvider(), segment_size=1 << 20, directory_capacity=16)
    store.register_client(1)
    put(store, 1, 1, 1024)
    read, table = pin_reader(store, 2)
    pin(store, read, table, 1)
    for n in range(2, 40):  # a dozen more rebuild the 16-slot directory (twice)
        put(store, 1, n, 64)
    assert store.stats()["directory"]["rebuilds"] >= 2
    held = store.holders(top_objects=1)
    assert by_id(held)[2]["pins"] == {"bytes": 1024, "objects": 1}
    assert held["objects"][0]["id"] == oid(1).hex() and held["objects"][0]["pinned_by"] == [2]
