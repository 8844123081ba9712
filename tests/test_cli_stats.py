"""``plasma-coord stats`` (tables, --json, --placement) and ``serve --metrics`` validation."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from plasma.cli import main
from plasma.cli.stats import format_stats
from plasma.client import Client
from tests.conftest import RunningCoordinator

REASON = "not supported by this machine's PMU or kernel (ENOENT: No such file or directory)"
STATS: dict[str, Any] = {
    "capacity": 64 << 20,
    "used": 16 << 20,
    "objects": 3,
    "evictions": 0,
    "page_size": 4096,
    "uptime": 5.0,
    "metrics": "127.0.0.1:9464",
    "nodes": {"0": {"capacity": 64 << 20, "used": 16 << 20, "objects": 3, "segments": 2}},
    "numa_nodes": {
        "0": {"cpus": [0, 1, 2, 3], "memory_total": 8 << 30, "memory_free": 2 << 30},
        "1": {"cpus": [], "memory_total": 4 << 30, "memory_free": 4 << 30},
    },
    "segments": [{"id": 1, "node": 0, "size": 4 << 20, "page_size": 4096}],
    "clients": [{"id": 7, "name": "trainer", "pid": 1234, "uid": 0}],
    "operations": {"Connect": 1, "Create": 9},
    "errors": {},
    "tasks": [
        {
            "task_id": "prep",
            "run_id": "r1",
            "pid": 4321,
            "node": 0,
            "state": "running",
            "samples": 12,
            "latest": {
                "counters": {
                    "task-clock": 1_500_000_000,
                    "page-faults": 16_400,
                    "context-switches": 3,
                    "cpu-migrations": 0,
                    "cycles": None,
                    "instructions": None,
                },
                "unsupported": {"cycles": REASON, "instructions": REASON},
                "locality": {"pages_per_node": {"0": 18000}, "local_fraction": 1.0},
            },
        },
        {"task_id": "x", "pid": 9, "node": None, "state": "reported", "latest": None},
    ],
    "placement": [
        {
            "id": 1,
            "node": 0,
            "size": 4 << 20,
            "page_size": 4096,
            "pages": 1024,
            "pages_per_node": {"0": 1000, "1": 24},
            "misplaced": 24,
            "unresolved": 0,
        }
    ],
}


def _lines(text: str, title: str) -> list[str]:
    """The lines of one titled table (the title line excluded)."""
    block = text.split(f"{title}:\n", 1)[1]
    return block.split("\n\n", 1)[0].splitlines()


def test_human_tables() -> None:
    text = format_stats(STATS)
    assert text.startswith("store: capacity 64.0 MiB, used 16.0 MiB (25.0%), objects 3,")
    assert "metrics http://127.0.0.1:9464/metrics" in text
    nodes = [line.split() for line in _lines(text, "nodes")]
    assert nodes[0] == ["node", "capacity", "used", "objects", "segments", "cpus", "memory", "free"]
    assert nodes[1] == [
        "0", "64.0", "MiB", "16.0", "MiB", "3", "2", "0-3", "8.0", "GiB", "2.0", "GiB",
    ]  # fmt: skip
    assert nodes[2][:6] == ["1", "-", "-", "-", "-", "none"]  # a CPU-less memory node
    tasks = [line.split() for line in _lines(text, "tasks")]
    assert " ".join(tasks[1]) == "prep r1 4321 0 running 12 1.50s 16,400 3 0 100% N0=18000"
    assert tasks[2][:5] == ["x", "-", "9", "-", "reported"]
    assert f"unsupported cycles, instructions: {REASON}" in text
    assert "operations: Create 9, Connect 1" in text and "errors: none" in text
    placement = [line.split() for line in _lines(text, "placement")]
    assert " ".join(placement[1]) == "1 0 4.0 KiB 4.0 MiB 1024 N0=1000 N1=24 24 0"


def test_no_placement_section_unless_asked() -> None:
    stats = {k: v for k, v in STATS.items() if k != "placement"}
    assert "placement:" not in format_stats(stats)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``plasma-coord ARGS`` in this process."""

    def run(*args: str) -> Result:
        code = main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def test_stats_command_against_a_coordinator(
    coordinator: RunningCoordinator, cli: Callable[..., Result]
) -> None:
    with Client(coordinator.socket, client_name="holder") as client:
        client.create_and_seal(b"a" * 20, b"x" * 1000)
        client.register_task("me", os.getpid(), node=0, run_id="r9")
        client.flush()
        human = cli("stats", "--socket", coordinator.socket)
        raw = cli("stats", "--socket", coordinator.socket, "--json")
        placed = cli("stats", "--socket", coordinator.socket, "--placement")
    assert human.returncode == 0, human.stderr
    assert "objects 1" in human.stdout
    task_rows = [line.split() for line in _lines(human.stdout, "tasks")]
    assert task_rows[1][:5] == ["me", "r9", str(os.getpid()), "0", "running"]
    assert "holder" in human.stdout and "placement:" not in human.stdout
    stats = json.loads(raw.stdout)
    assert stats["objects"] == 1 and stats["tasks"][0]["task_id"] == "me"
    assert stats["tasks"][0]["latest"]["counters"]["task-clock"] >= 0  # sampled at registration
    assert "placement" not in stats
    assert placed.returncode == 0, placed.stderr
    rows = [line.split() for line in _lines(placed.stdout, "placement")]
    assert rows[0][:3] == ["segment", "node", "page"]
    assert len(rows) >= 2
    assert all(row[1] == "0" and row[-2:] == ["0", "0"] for row in rows[1:])  # all on node 0


def test_stats_without_a_coordinator_says_so(tmp_path: Path, cli: Callable[..., Result]) -> None:
    result = cli("stats", "--socket", str(tmp_path / "none.sock"))
    assert result.returncode == 1
    assert "cannot connect to plasma-coord" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "localhost"], "metrics address 'localhost'"),
        (["--metrics", "1.2.3.4:99999"], "port must be 0..65535"),
        (["--sample-interval", "0"], "--sample-interval must be a positive number"),
    ],
)
def test_serve_refuses_bad_telemetry_options(
    tmp_path: Path, cli: Callable[..., Result], args: list[str], message: str
) -> None:
    result = cli("serve", "--socket", str(tmp_path / "s.sock"), *args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
