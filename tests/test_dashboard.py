"""The dashboard without a browser: address and token rules, HTTP parsing and routing, the
state JSON from stats dicts, its history, and the trio server over real sockets."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from bench.chaos import fds
from bench.topologies import unpack
from plasma.dashboard import access, http, server, state
from plasma.dashboard.state import History, Snapshot
from plasma.errors import BadRequest, Disconnected
from plasma.linux import fdlimit
from plasma.topology import Topology
from tests.helpers import REPO

TOKEN = "s3cret-token-0123456789"

# ---------------------------------------------------------------- access


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),  # a name may resolve anywhere
    ],
)
def test_loopback_rule(host: str, loopback: bool) -> None:
    assert access.is_loopback(host) is loopback


def test_a_bare_port_listens_on_loopback_without_a_token() -> None:
    assert access.dashboard_address("8080", None) == ("127.0.0.1", 8080)
    assert access.dashboard_address("[::1]:0", None) == ("::1", 0)


@pytest.mark.parametrize("address", ["0.0.0.0:8080", "[::]:80", "example.com:80", "10.0.0.1:1"])
def test_any_other_address_needs_a_token(address: str) -> None:
    with pytest.raises(BadRequest, match=r"not a loopback address.*--dashboard-token"):
        access.dashboard_address(address, None)
    assert access.dashboard_address(address, TOKEN)[1] == int(address.rpartition(":")[2])


@pytest.mark.parametrize("token", ["short", "has space in it 0123456789", "x" * 15, "é" * 20])
def test_weak_or_unsendable_tokens_are_refused(token: str) -> None:
    with pytest.raises(BadRequest, match="at least 16 characters"):
        access.dashboard_address("0.0.0.0:1", token)


def test_a_malformed_address_names_the_dashboard() -> None:
    with pytest.raises(BadRequest, match="dashboard address 'localhost'"):
        access.dashboard_address("localhost", None)
    with pytest.raises(BadRequest, match="port must be"):
        access.dashboard_address("127.0.0.1:70000", None)


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (None, False),
        ("", False),
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Basic {TOKEN}", False),
        (TOKEN, False),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Bearer {TOKEN}x", False),
        ("Bearer ", False),
    ],
)
def test_the_token_must_match_exactly(header: str | None, ok: bool) -> None:
    assert access.authorized(header, TOKEN) is ok
    assert access.authorized(header, None) is True  # no token: loopback, served to all


# ---------------------------------------------------------------- HTTP


def test_parse_a_request_head() -> None:
    req = http.parse_head(b"GET /api/state?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t")
    assert (req.method, req.path) == ("GET", "/api/state")
    assert req.headers == {"host": "a", "authorization": "Bearer t"}


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"", 400),
        (b"hello", 400),
        (b"GET / HTTP/2.0", 400),
        (b"GET  / HTTP/1.1", 400),
        (b"GET http://evil/ HTTP/1.1", 400),
        (b"G3T / HTTP/1.1", 400),
        (b"GET / HTTP/1.1\r\nno colon here", 400),
        (b"GET / HTTP/1.1\r\n folded: header", 400),
        (b"GET / HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * http.MAX_HEAD, 431),
        (b"\xff\xfe / HTTP/1.1", 400),
        (b"get / HTTP/1.1", 400),
        (b"GET /\xe9 HTTP/1.1", 400),
    ],
)
def test_bad_request_heads_are_refused(head: bytes, status: int) -> None:
    with pytest.raises(http.HttpError) as info:
        http.parse_head(head)
    assert info.value.response.status == status


ASSETS = {"/index.html": ("text/html", b"<html>"), "/app.js": ("text/javascript", b"js")}


def answer(raw: bytes, token: str | None = None) -> http.Response:
    return http.route(
        http.parse_head(raw), token=token, assets=ASSETS, state=lambda: (200, b'{"ok": 1}')
    )


def test_routing() -> None:
    assert answer(b"GET / HTTP/1.1").body == b"<html>"
    assert answer(b"GET /app.js HTTP/1.0").content_type == "text/javascript"
    state_response = answer(b"GET /api/state HTTP/1.1")
    assert (state_response.status, state_response.body) == (200, b'{"ok": 1}')
    assert state_response.headers["Cache-Control"] == "no-store"
    assert answer(b"GET /../../etc/passwd HTTP/1.1").status == 404
    assert answer(b"GET /style.css HTTP/1.1").status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head_are_served(method: str) -> None:
    response = answer(f"{method} /api/state HTTP/1.1".encode())
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD"


def test_the_token_is_checked_before_anything_else() -> None:
    for raw in (b"GET / HTTP/1.1", b"GET /nothing HTTP/1.1", b"POST /api/state HTTP/1.1"):
        response = answer(raw, TOKEN)
        assert response.status == 401, raw
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"html" not in response.body
    ok = answer(f"GET / HTTP/1.1\r\nAuthorization: Bearer {TOKEN}".encode(), TOKEN)
    assert ok.body == b"<html>"


def test_every_response_carries_the_security_headers_and_head_has_no_body() -> None:
    for raw in (b"GET / HTTP/1.1", b"GET /x HTTP/1.1", b"POST / HTTP/1.1"):
        wire = answer(raw).encode()
        assert b"Content-Security-Policy: default-src 'self';" in wire
        assert b"X-Content-Type-Options: nosniff" in wire
        assert b"Connection: close" in wire
    wire = answer(b"HEAD / HTTP/1.1").encode(head_only=True)
    assert wire.endswith(b"\r\n\r\n") and b"Content-Length: 6" in wire


# ---------------------------------------------------------------- state


@pytest.fixture(scope="module")
def eight_nodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack("16amd64-8n2c", tmp_path_factory.mktemp("topologies"))


def stats(**overrides: Any) -> dict[str, Any]:
    """A stats dict as ``Coordinator.stats()`` gives it, for two nodes (keys as ints)."""
    base: dict[str, Any] = {
        "capacity": 200,
        "used": 30,
        "objects": 2,
        "evictions": 1,
        "pins": 0,
        "uptime": 5.0,
        "operations": {"Connect": 1, "Create": 4},
        "clients": [{"id": 1, "name": "me", "pid": 9, "uid": 0}],
        "nodes": {
            0: {"capacity": 100, "used": 30, "objects": 2, "segments": 1, "segment_bytes": 64},
            1: {"capacity": 100, "used": 0, "objects": 0, "segments": 0, "segment_bytes": 0},
        },
        "numa_nodes": {
            0: {"cpus": [0, 1], "memory_total": 1000, "memory_free": 500},
            1: {"cpus": [2, 3], "memory_total": 1000, "memory_free": 900},
        },
        "tasks": [],
    }
    base.update(overrides)
    return base


def test_history_rates_and_bound() -> None:
    history = History(size=3)
    history.add(100.0, stats(operations={"A": 10}))
    history.add(102.0, stats(operations={"A": 30}, used=50))
    history.add(103.0, stats(operations={"A": 2}))  # restarted: no rate for this point
    history.add(104.0, stats(operations={"A": 7}))
    points = history.points()
    assert [p["t"] for p in points] == [102.0, 103.0, 104.0]
    assert [p["ops_per_s"] for p in points] == [10.0, None, 5.0]
    assert points[0]["used"] == 50
    assert History().points() == []


@pytest.mark.parametrize(
    ("spilled", "shown"),
    [
        (None, None),
        ({"bytes": 7, "objects": 1}, 7),
        ({"objects": 1}, None),
        ({"bytes": True}, None),
    ],
)
def test_spilled_bytes_only_when_the_stats_have_them(spilled: Any, shown: int | None) -> None:
    s = stats(spill=spilled)
    assert state.spilled_bytes(s) == shown
    history = History()
    history.add(1.0, s)
    assert history.points()[0]["spilled"] == shown
    page = state.assemble(Snapshot(s), history=history, now=1.0)
    assert page["store"]["spilled"] == shown


def test_largest_objects() -> None:
    rows = [
        {"id": f"{i:02x}", "data_size": size, "metadata_size": 1, "node": i % 2}
        | {"state": "sealed", "ref_count": 0}
        for i, size in enumerate([5, 50, 20, 1])
    ]
    top = state.largest_objects(rows, limit=2)
    assert [(o["id"], o["size"], o["node"]) for o in top] == [("01", 51, 1), ("02", 21, 0)]


def test_the_machine_from_stats_and_an_eight_node_topology(eight_nodes: Path) -> None:
    topology = Topology.from_sysfs(eight_nodes)
    page = state.assemble(Snapshot(stats()), history=History(), now=1.0, topology=topology)
    nodes = page["machine"]["nodes"]
    assert [n["id"] for n in nodes] == list(range(8))
    assert sum(len(n["cpus"]) for n in nodes) == 16
    store = {"capacity": 100, "used": 30, "free": 70, "objects": 2, "segments": 1}
    assert nodes[0]["store"] == store
    assert nodes[5]["store"] is None  # not served by this coordinator
    assert nodes[0]["memory_free"] == 500  # live from stats, not the topology's
    assert nodes[3]["distances"]["3"] == 10 and nodes[3]["distances"]["4"] == 20
    assert page["store"]["used"] == 30 and page["clients"][0]["name"] == "me"
    assert page["run"] is None


RECORD = {
    "run_id": "r1",
    "pipeline": "p",
    "status": "running",
    "start": 10.0,
    "end": None,
    "tasks": [
        {"id": "a", "name": "a", "parent": None, "status": "succeeded", "start": 10.0}
        | {"end": 11.0, "cpus": [0], "node": 0, "inputs": [], "outputs": ["x"]}
        | {"perf": {"locality": {"local_fraction": 0.5}}},
        {"id": "b", "name": "b", "parent": None, "status": "running", "start": 11.0}
        | {"end": None, "cpus": [2, 3], "node": 1, "inputs": ["x"], "outputs": []},
        {"id": "b.0", "name": "b0", "parent": "b", "status": "pending", "start": None}
        | {"end": None, "cpus": [], "node": None, "inputs": [], "outputs": []},
        {"id": "c", "name": "c", "parent": None, "status": "pending", "start": None}
        | {"end": None, "cpus": [], "node": None, "inputs": [], "outputs": [], "after": ["b"]},
    ],
}


def test_a_dag_run_as_a_graph_with_live_locality_and_cpu_holders() -> None:
    telemetry = [
        {"task_id": "b", "run_id": "r1", "latest": {"locality": {"local_fraction": 0.75}}},
        {"task_id": "a", "run_id": "other", "latest": {"locality": {"local_fraction": 0.1}}},
    ]
    page = state.assemble(Snapshot(stats(tasks=telemetry), run=RECORD), history=History(), now=14.0)
    run = page["run"]
    tasks = {t["id"]: t for t in run["tasks"]}
    assert sorted(map(tuple, run["edges"])) == [
        ("a", "b", "data"),
        ("b", "b.0", "branch"),
        ("b", "c", "after"),
    ]
    assert {i: t["level"] for i, t in tasks.items()} == {"a": 0, "b": 1, "b.0": 2, "c": 2}
    assert tasks["a"]["locality"] == 0.5  # its final sample: the live one is another run's
    assert tasks["b"]["locality"] == 0.75
    assert tasks["a"]["duration"] == 1.0 and tasks["b"]["duration"] == 3.0
    assert tasks["c"]["duration"] is None
    cpus = {c["id"]: c["task"] for n in page["machine"]["nodes"] for c in n["cpus"]}
    assert cpus == {0: None, 1: None, 2: "b", 3: "b"}  # only running tasks hold CPUs


def test_the_run_from_telemetry_alone() -> None:
    rows = [
        {"task_id": "old", "run_id": "r0", "state": "done", "registered": 1.0, "ended": 2.0},
        {"task_id": "t1", "run_id": "r1", "state": "exited", "registered": 3.0, "ended": 4.0},
        {"task_id": "t2", "run_id": "r1", "state": "running", "registered": 3.5, "ended": None}
        | {"node": 1, "latest": {"locality": {"local_fraction": 1.0}}},
        {"task_id": "late", "run_id": "r2", "state": "done", "registered": 9.0, "ended": 9.5},
    ]
    cpus = {"r1/t2": [3]}
    run = state.run_from_telemetry(rows, cpus, now=5.0)
    assert run is not None
    assert run["run_id"] == "r1"  # the one with a running task, though r2 is newer
    assert [(t["id"], t["state"], t["cpus"]) for t in run["tasks"]] == [
        ("t1", "exited", []),
        ("t2", "running", [3]),
    ]
    assert run["tasks"][1]["locality"] == 1.0 and run["tasks"][1]["duration"] == 1.5
    assert (run["status"], run["start"], run["end"]) == ("running", 3.0, None)
    ended = state.run_from_telemetry(rows[:1] + rows[3:], {}, now=20.0)
    assert ended is not None
    assert (ended["run_id"], ended["status"], ended["end"]) == ("r2", "ended", 9.5)
    assert state.run_from_telemetry([], {}, now=1.0) is None
    page = state.assemble(Snapshot(stats(tasks=rows), task_cpus=cpus), history=History(), now=5.0)
    holders = {c["id"]: c["task"] for n in page["machine"]["nodes"] for c in n["cpus"]}
    assert holders[3] == "t2"


def test_the_page_json_is_json() -> None:
    page = state.assemble(Snapshot(stats(), run=RECORD), history=History(), now=14.0)
    assert json.loads(json.dumps(page)) == page
    assert state.error_state("gone", 1.0) == {"time": 1.0, "source": "coordinator", "error": "gone"}


# ---------------------------------------------------------------- the server, over sockets


async def fetch(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` and read the whole response: status, headers, body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def reader(snapshot: Snapshot | Exception) -> Any:
    async def read() -> Snapshot:
        if isinstance(snapshot, Exception):
            raise snapshot
        return snapshot

    return read


async def start(nursery: trio.Nursery, read: Any, **options: Any) -> int:
    address = await nursery.start(
        lambda task_status: server.serve(
            read, "127.0.0.1", 0, interval=3600, task_status=task_status, **options
        )
    )
    return int(address[1])


async def test_the_server_answers_the_page_and_the_state() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, reader(Snapshot(stats())))
        status, headers, body = await fetch(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b'<script src="app.js"' in body
        for asset in ("/app.js", "/style.css", "/favicon.svg"):
            assert (await fetch(port, f"GET {asset} HTTP/1.1\r\n\r\n".encode()))[0] == 200
        status, headers, body = await fetch(port, b"GET /api/state HTTP/1.1\r\n\r\n")
        assert status == 200 and headers["Cache-Control"] == "no-store"
        assert json.loads(body)["store"]["used"] == 30
        status, _, body = await fetch(port, b"HEAD /api/state HTTP/1.1\r\n\r\n")
        assert (status, body) == (200, b"")
        assert (await fetch(port, b"DELETE /api/state HTTP/1.1\r\n\r\n"))[0] == 405
        nursery.cancel_scope.cancel()


async def test_a_coordinator_that_cannot_be_read_is_a_503_with_the_reason() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, reader(Disconnected("the coordinator closed the connection")))
        status, _, body = await fetch(port, b"GET /api/state HTTP/1.1\r\n\r\n")
        assert status == 503
        assert "closed the connection" in json.loads(body)["error"]
        assert (await fetch(port, b"GET / HTTP/1.1\r\n\r\n"))[0] == 200  # the page still loads
        nursery.cancel_scope.cancel()


async def test_the_server_enforces_the_token() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, reader(Snapshot(stats())), token=TOKEN)
        for auth in (b"", b"Authorization: Bearer wrong-token-0123456789\r\n"):
            status, _, body = await fetch(port, b"GET /api/state HTTP/1.1\r\n" + auth + b"\r\n")
            assert status == 401 and b"capacity" not in body
        good = f"GET /api/state HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        assert (await fetch(port, good))[0] == 200
        nursery.cancel_scope.cancel()


async def test_bad_oversized_and_slow_clients() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, reader(Snapshot(stats())), request_timeout=0.3)
        assert (await fetch(port, b"BLAH\r\n\r\n"))[0] == 400
        huge = b"GET / HTTP/1.1\r\nX: " + b"a" * (2 * http.MAX_HEAD)
        assert (await fetch(port, huge))[0] == 431  # refused before the head ends
        with trio.fail_after(5):  # a client that sends nothing is closed after the timeout
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET / HT")
            assert await stream.receive_some(100) == b""
            await stream.aclose()
        assert (await fetch(port, b"GET / HTTP/1.1\r\n\r\n"))[0] == 200  # still serving
        nursery.cancel_scope.cancel()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_past_the_limit_connections_wait_unaccepted() -> None:
    """Past its connection limit the server stops accepting (issue 27 item 5): the rest wait
    in the listen backlog, holding none of the process's descriptors (they used to be
    accepted and answered 503, each holding a descriptor for up to 10 s), and are served
    in turn once a slot frees."""
    limit = 4
    async with trio.open_nursery() as nursery:
        port = await start(nursery, reader(Snapshot(stats())), max_connections=limit)
        before = open_fds()
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(limit)]
        waiting = await trio.open_tcp_stream("127.0.0.1", port)  # completed by the kernel
        await waiting.send_all(b"GET /api/state HTTP/1.1\r\n\r\n")
        extra = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(limit - 1)]
        # ours: 2 * limit client sockets; the server's: limit accepted ones, no more
        with trio.fail_after(30):
            while open_fds() - before < 2 * limit + limit:
                await trio.sleep(0.01)
        with trio.move_on_after(0.5) as unanswered:
            await waiting.receive_some(100)
        assert unanswered.cancelled_caught  # not accepted, so not answered (nor closed)
        assert open_fds() - before == 2 * limit + limit  # (and nothing more accepted)
        for stream in idle:
            await stream.aclose()
        with trio.fail_after(5):  # served once the idle ones' slots are free
            data = b""
            while chunk := await waiting.receive_some(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK")
        for stream in [waiting, *extra]:
            await stream.aclose()
        assert (await fetch(port, b"GET / HTTP/1.1\r\n\r\n"))[0] == 200
        nursery.cancel_scope.cancel()


def test_the_limit_is_a_share_of_the_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (160, hard))
    try:
        assert fdlimit.side_connection_limit(64) == 10  # 160 // 16
        assert fdlimit.side_connection_limit(4) == 4
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert fdlimit.side_connection_limit(64) == min(64, soft // 16)


async def test_idle_and_lingering_clients_free_their_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "IDLE_TIMEOUT", 0.2)
    monkeypatch.setattr(server, "DRAIN_TIMEOUT", 0.2)
    async with trio.open_nursery() as nursery:
        port = await start(nursery, reader(Snapshot(stats())), max_connections=1)
        with trio.fail_after(5):  # silent: closed after IDLE_TIMEOUT, not request_timeout
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            assert await silent.receive_some(100) == b""
            await silent.aclose()
        with trio.fail_after(5):  # reads the answer but never closes: closed all the same
            lingering = await trio.open_tcp_stream("127.0.0.1", port)
            await lingering.send_all(b"GET / HTTP/1.1\r\n\r\n")
            while await lingering.receive_some(65536):
                pass
            assert (await fetch(port, b"GET / HTTP/1.1\r\n\r\n"))[0] == 200  # its slot
            await lingering.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.coordinator
def test_dashboard_connections_leave_the_store_its_descriptors(tmp_path: Path) -> None:
    """300 dashboard connections left open on a coordinator with RLIMIT_NOFILE 256: fresh
    store clients still put and get, and the dashboard serves again once they close (all
    5 store clients failed 'out of descriptors' before the limit stopped the accepting)."""
    out = fds.dashboard_flood(tmp_path)
    assert out.failures == [], out.lines
    assert out.figures["fds_flooded"] <= out.figures["fds_before"] + 256 // 16 + 2


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dashboard", "0.0.0.0:0"], "not a loopback address"),
        (["--dashboard-token", TOKEN], "--dashboard-token needs --dashboard"),
        (["--dashboard", "0.0.0.0:0", "--dashboard-token", "short"], "at least 16"),
        (["--dashboard", "nonsense"], "dashboard address 'nonsense'"),
    ],
)
def test_serve_refuses_bad_dashboard_options(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "plasma", "serve", "--socket", str(tmp_path / "s"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 1
    assert message in proc.stderr
    assert not (tmp_path / "s").exists()
