"""Prometheus exposition: the stats collector, the /metrics server, the textfile writer."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from plasma import metrics
from plasma.addresses import parse_address
from plasma.client import Client
from plasma.errors import BadRequest
from plasma.metrics import make_registry, serve_metrics, write_textfile
from tests.conftest import RunningCoordinator

STATS: dict[str, Any] = {
    "capacity": 3 << 20,
    "used": 4096,
    "objects": 1,
    "evictions": 2,
    "uptime": 12.5,
    "nodes": {
        0: {"capacity": 1 << 20, "used": 4096, "objects": 1, "segments": 1, "segment_bytes": 4096},
        1: {"capacity": 2 << 20, "used": 0, "objects": 0, "segments": 0, "segment_bytes": 0},
    },
    "clients": [{"id": 1, "name": "", "pid": 10, "uid": 0}],
    "operations": {"Connect": 3, "Create": 5},
    "errors": {"object_not_found": 2},
    "tasks": [
        {
            "task_id": "train",
            "run_id": "r1",
            "pid": 99,
            "node": 1,
            "state": "running",
            "samples": 4,
            "latest": {
                "pid": 99,
                "time": 1.0,
                "counters": {
                    "task-clock": 2_500_000_000,
                    "page-faults": 16_500,
                    "cycles": None,
                    "custom-thing": 5,
                },
                "unsupported": {"cycles": "not supported by this machine's PMU"},
                "locality": {
                    "pages_per_node": {0: 100, 1: 300},
                    "home_node": 1,
                    "local_fraction": 0.75,
                },
            },
        },
        {"task_id": "new", "run_id": "", "pid": 7, "node": None, "state": "exited", "latest": None},
    ],
    "numa_nodes": {
        0: {"cpus": [0, 1], "memory_total": 8 << 30, "memory_free": 1 << 30},
        1: {"cpus": [], "memory_total": 4 << 30, "memory_free": 4 << 30},
    },
}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition as {(name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert isinstance(s, Sample)
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def _exposition(stats: dict[str, Any]) -> str:
    from prometheus_client import generate_latest

    return generate_latest(make_registry(lambda: stats)).decode()


def test_the_collector_exports_store_requests_tasks_and_numa_nodes() -> None:
    got = _samples(_exposition(STATS))
    assert got["plasma_store_capacity_bytes", (("node", "1"),)] == 2 << 20
    assert got["plasma_store_used_bytes", (("node", "0"),)] == 4096
    assert got["plasma_store_objects", (("node", "0"),)] == 1
    assert got["plasma_store_evictions_total", ()] == 2
    assert got["plasma_clients", ()] == 1
    assert got["plasma_uptime_seconds", ()] == 12.5
    assert got["plasma_operations_total", (("op", "Create"),)] == 5
    assert got["plasma_errors_total", (("code", "object_not_found"),)] == 2
    assert got["plasma_tasks", (("state", "running"),)] == 1
    assert got["plasma_tasks", (("state", "exited"),)] == 1
    train = (("run_id", "r1"), ("task", "train"))
    assert got["plasma_task_clock_seconds_total", train] == 2.5
    assert got["plasma_task_page_faults_total", train] == 16_500
    assert got["plasma_task_local_fraction", train] == 0.75
    assert got["plasma_task_resident_pages", (("node", "1"), *train)] == 300
    assert got["plasma_task_event_supported", (("event", "cycles"), *train)] == 0
    assert got["plasma_task_event_supported", (("event", "page-faults"), *train)] == 1
    assert got["numa_node_cpus_count", (("node", "0"),)] == 2
    assert got["numa_node_cpus_count", (("node", "1"),)] == 0
    assert got["numa_node_memory_total_bytes", (("node", "1"),)] == 4 << 30
    assert got["numa_node_memory_free_bytes", (("node", "0"),)] == 1 << 30
    # an unsupported event has no value at all (never a zero); unknown names are not exported
    assert not any(name == "plasma_task_cycles_total" for name, _ in got)
    assert not any("custom" in name for name, _ in got)


def test_a_json_round_tripped_snapshot_exports_the_same() -> None:
    assert _exposition(json.loads(json.dumps(STATS))) == _exposition(STATS)


def test_the_textfile_writer(tmp_path: Path) -> None:
    path = tmp_path / "plasma.prom"
    write_textfile(path, STATS)
    assert _samples(path.read_text()) == _samples(_exposition(STATS))
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically through a temporary file


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_parse_address(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", "host", "host:", ":9464", "::1:9464", "a:70000", "a:-1"])
def test_parse_address_refuses_bad_text(text: str) -> None:
    with pytest.raises(BadRequest, match="metrics address"):
        parse_address(text)


@given(st.integers(0, 65535))
def test_a_bare_port_listens_on_loopback(port: int) -> None:
    assert parse_address(str(port)) == ("127.0.0.1", port)


async def _http(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *headers = head.decode().split("\r\n")
    fields = dict(h.split(": ", 1) for h in headers)
    if not request.startswith(b"HEAD"):  # HEAD: the length of the body it leaves out
        assert int(fields["Content-Length"]) == len(body)
    return status, fields, body


async def test_the_server_answers_scrapes_and_refuses_the_rest(
    nursery: trio.Nursery,
) -> None:
    scrapes = 0

    def source() -> dict[str, Any]:
        nonlocal scrapes
        scrapes += 1
        return STATS

    host, port = await nursery.start(serve_metrics, make_registry(source), "127.0.0.1", 0)
    assert host == "127.0.0.1" and port > 0
    status, fields, body = await _http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == "HTTP/1.1 200 OK" and fields["Content-Type"].startswith("text/plain")
    assert _samples(body.decode()) == _samples(_exposition(STATS))
    assert scrapes == 1  # read at scrape time, once
    openmetrics = b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n"
    status, fields, body = await _http(port, openmetrics)
    assert fields["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, fields, body = await _http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK" and body == b"" and int(fields["Content-Length"]) > 0
    assert (await _http(port, b"GET / HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 404 Not Found"
    refused = await _http(port, b"POST /metrics HTTP/1.1\r\n\r\n")
    assert refused[0] == "HTTP/1.1 405 Method Not Allowed"
    assert (await _http(port, b"nonsense\r\n\r\n"))[0] == "HTTP/1.1 400 Bad Request"


async def test_the_server_stops_accepting_past_its_connection_limit(
    nursery: trio.Nursery,
) -> None:
    """Idle connections beyond MAX_CONNECTIONS wait unaccepted (no descriptor of ours), and
    a scrape is served once they close (issue 27 item 5)."""
    host, port = await nursery.start(serve_metrics, make_registry(lambda: STATS), "127.0.0.1", 0)
    before = len(os.listdir("/proc/self/fd"))
    extra = 8
    idle = [await trio.open_tcp_stream(host, port) for _ in range(metrics.MAX_CONNECTIONS)]
    idle += [await trio.open_tcp_stream(host, port) for _ in range(extra)]
    await trio.sleep(0.3)  # (time for the server to accept what it will)
    opened = len(idle) + metrics.MAX_CONNECTIONS  # ours, and only the limit of the server's
    assert len(os.listdir("/proc/self/fd")) - before == opened
    for stream in idle:
        await stream.aclose()
    with trio.fail_after(10):
        assert (await _http(port, b"GET /metrics HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 200 OK"


def test_a_coordinator_serves_metrics_on_loopback(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> None:
    coord = coordinator_factory("--memory", "64MiB", "--metrics", "127.0.0.1:0")
    with Client(coord.socket) as client:
        client.create_and_seal(b"x" * 20, b"hello")
        client.flush()
        client.register_task("me", os.getpid(), node=0)
        stats = client.stats()
        host, _, port = stats["metrics"].rpartition(":")
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            got = _samples(reply.read().decode())
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert got["plasma_store_objects", (("node", "0"),)] == 1
    assert got["plasma_operations_total", (("op", "Connect"),)] == 1
    assert got["plasma_operations_total", (("op", "TaskRegister"),)] == 1
    assert got["plasma_tasks", (("state", "running"),)] == 1
    assert got["plasma_task_page_faults_total", (("run_id", ""), ("task", "me"))] >= 0
    node0 = stats["numa_nodes"][0]
    assert got["numa_node_cpus_count", (("node", "0"),)] == len(node0["cpus"]) > 0
    assert got["numa_node_memory_total_bytes", (("node", "0"),)] == node0["memory_total"] > 0
    assert coord.stop() == 0


def test_spilling_and_fallback_figures_are_exported_only_with_spilling() -> None:
    plain = _samples(_exposition({**STATS, "spill": None, "fallback": {"bytes": 0}}))
    assert not any(name.startswith("plasma_spill") for name, _ in plain)
    assert plain["plasma_fallback_bytes", ()] == 0
    spill = {
        "objects": 3,
        "bytes": 3 << 20,
        "disk_bytes": 4 << 20,
        "files": 2,
        "written_bytes": 5 << 20,
        "restored_bytes": 1 << 20,
        "spill_seconds": 0.5,
        "restore_seconds": 0.25,
        "errors": 1,
        "lost": 0,
    }
    got = _samples(_exposition({**STATS, "spill": spill, "fallback": {"bytes": 8192}}))
    assert got["plasma_spilled_objects", ()] == 3
    assert got["plasma_spilled_bytes", ()] == 3 << 20
    assert got["plasma_spill_file_bytes", ()] == 4 << 20
    assert got["plasma_spill_written_bytes_total", ()] == 5 << 20
    assert got["plasma_spill_restore_seconds_total", ()] == 0.25
    assert got["plasma_spill_errors_total", ()] == 1
    assert got["plasma_fallback_bytes", ()] == 8192


def test_spare_segments_are_exported_per_node() -> None:
    spares = {"prefault": "segment", "ready": {"0": 64 << 20}, "preparing": [1], "error": ""}
    got = _samples(_exposition({**STATS, "spares": spares}))
    assert got["plasma_spare_segment_bytes", (("node", "0"),)] == 64 << 20
    assert ("plasma_spare_segment_bytes", (("node", "1"),)) not in got  # (not ready yet)


def test_bytes_moved_to_a_node_are_exported_per_node() -> None:
    stats = json.loads(json.dumps(STATS))
    stats["nodes"]["1"]["placed_in"] = 8192
    got = _samples(_exposition(stats))
    assert got["plasma_store_placed_in_bytes", (("node", "1"),)] == 8192
