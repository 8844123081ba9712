"""Real runs: pinned task processes, an embedded coordinator, objects exchanged through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from plasma.dag.runner import RunOptions, run_pipeline
from plasma.dag.spec import decode_pipeline
from tests.helpers import REPO, alive

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures

CPUS = sorted(os.sched_getaffinity(0))

TASKS_MODULE = """
import numpy as np

def produce(ctx):
    return {"x": np.arange(ctx.args["n"], dtype=np.int64)}

def double(ctx):
    x = ctx.input("x")
    assert not x.flags.writeable  # a read-only view of the shared segment
    return {"y": x * 2}

def square(ctx):
    return {ctx.outputs[0]: ctx.input(ctx.inputs[0]) ** 2}

def fan(ctx):
    names = []
    for i in range(3):
        ctx.output(f"part-{i}", np.full(4, i, dtype=np.int64))
        names.append(f"part-{i}")
    handles = ctx.map({"name": "square", "call": "dagtasks:square", "outputs": ["sq-{i}"]}, names)
    extra = ctx.submit({"name": "late", "cmd": ["true"]})
    results = ctx.wait([*handles, extra])
    total = sum(int(out[h.outputs[0]].sum()) for h, out in zip(handles, results[:3]))
    return {"total": np.array([total])}

def fan_fails(ctx):
    ctx.output("in", b"data")
    (h,) = ctx.map({"name": "boom", "cmd": ["sh", "-c", "exit 4"]}, ["in"])
    ctx.wait([h])

def weights(ctx):
    import torch
    return {"state": {"w": torch.full((256, 256), 2.0, dtype=torch.bfloat16), "b": torch.ones(256)}}

def apply(ctx):
    import torch
    state = ctx.input("state")
    w = state["w"]  # a tensor over the object's pages, mapped copy-on-write
    with open("/proc/self/maps") as maps:
        spans = [line.split() for line in maps]
    where = [s[5] for s in spans if len(s) > 5 and
             int(s[0].split("-")[0], 16) <= w.data_ptr() < int(s[0].split("-")[1], 16)]
    assert where[0].startswith("/memfd:"), where
    return {"out": (w.float() @ state["b"]).to(torch.float64)}

def deadlock(ctx):
    (h,) = ctx.map({"name": "needs-parent", "cmd": ["true"]}, ["x"])  # x: the parent's output
    try:
        ctx.wait([h])
    except Exception as exc:
        print(f"refused: {exc}")
    ctx.output("x", b"done")
"""


async def run(tmp_path: Path, pipeline: str, **options: Any) -> tuple[dict[str, Any], list[str]]:
    (tmp_path / "dagtasks.py").write_text(TASKS_MODULE)
    lines: list[str] = []
    opts = RunOptions(
        workdir=tmp_path,
        memory="64MiB",
        record_file=tmp_path / "record.json",
        prom_file=tmp_path / "metrics.prom",
        log=lines.append,
        handle_signals=False,
        kill_grace=1.0,
        **options,
    )
    record = await run_pipeline(decode_pipeline(textwrap.dedent(pipeline), "yaml"), opts, "r1")
    assert json.loads((tmp_path / "record.json").read_text())["status"] == record["status"]
    return record, lines


def tasks(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in record["tasks"]}


def metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            labels = tuple(
                sorted((k, v) for k, v in s.labels.items() if k not in ("run_id", "pipeline"))
            )
            out[(s.name, labels)] = s.value
    return out


async def test_dependent_tasks_exchange_objects_in_order(tmp_path: Path) -> None:
    record, lines = await run(
        tmp_path,
        """
        tasks:
          - {name: produce, call: "dagtasks:produce", outputs: [x], args: {n: 5}}
          - {name: double, call: "dagtasks:double", inputs: [x], outputs: [y]}
          - name: show
            cmd: [python, -c, "import plasma.task as t; print(t.current().input('y').tolist())"]
            inputs: [y]
        """,
    )
    assert record["status"] == "succeeded" and record["run_id"] == "r1"
    t = tasks(record)
    assert t["produce"]["end"] <= t["double"]["start"] <= t["double"]["end"] <= t["show"]["start"]
    for row in t.values():
        assert row["exit_code"] == 0 and row["attempts"] == 1 and row["parent"] is None
        assert row["cpus"] and set(row["cpus"]) <= set(CPUS) and row["node"] is not None
    assert "[show] [0, 2, 4, 6, 8]" in lines
    m = metrics(tmp_path / "metrics.prom")
    assert m[("plasma_dag_run_success", ())] == 1
    assert m[("plasma_dag_tasks", (("status", "succeeded"),))] == 3
    assert m[("plasma_dag_task_attempts", (("task", "double"),))] == 1


SHOW_TENSOR = (
    "import plasma.task as t; o = t.current().input('out');"
    " print(type(o).__name__, o.dtype, o.sum().item())"
)


async def test_tasks_exchange_torch_tensors(tmp_path: Path) -> None:
    """Task outputs and inputs of torch tensors: a state dict put by one task is read by the
    next zero-copy (its tensors over the store's memory), and its result read back here."""
    record, lines = await run(
        tmp_path,
        """
        tasks:
          - {name: weights, call: "dagtasks:weights", outputs: [state]}
          - {name: apply, call: "dagtasks:apply", inputs: [state], outputs: [out]}
          - name: show
            cmd: [python, -c, "{SHOW}"]
            inputs: [out]
        """.replace("{SHOW}", SHOW_TENSOR),
    )
    assert record["status"] == "succeeded", lines
    assert "[show] Tensor torch.float64 131072.0" in lines


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to run two tasks at once")
async def test_independent_tasks_run_at_the_same_time(tmp_path: Path) -> None:
    # Each task marks its arrival and waits for the other's mark: both can only finish if they
    # run concurrently. The recorded intervals must overlap.
    rendezvous = (
        "touch {me}; i=0;"
        " while [ ! -e {other} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done;"
        " test -e {other}"
    )
    record, _ = await run(
        tmp_path,
        f"""
        tasks:
          - {{name: left, cmd: [sh, -c, "{rendezvous.format(me="L", other="R")}"]}}
          - {{name: right, cmd: [sh, -c, "{rendezvous.format(me="R", other="L")}"]}}
        """,
    )
    assert record["status"] == "succeeded"
    left, right = tasks(record)["left"], tasks(record)["right"]
    assert left["start"] < right["end"] and right["start"] < left["end"]
    assert not set(left["cpus"]) & set(right["cpus"])  # each had its own CPU


async def test_failure_skips_dependents_and_writes_partial_metrics(tmp_path: Path) -> None:
    record, _ = await run(
        tmp_path,
        """
        tasks:
          - {name: bad, cmd: [sh, -c, "echo oops; exit 3"], outputs: [x]}
          - {name: after-bad, cmd: ["true"], inputs: [x]}
        """,
    )
    t = tasks(record)
    assert record["status"] == "failed"
    assert (t["bad"]["status"], t["bad"]["exit_code"]) == ("failed", 3)
    assert t["after-bad"]["status"] == "skipped" and t["after-bad"]["start"] is None
    m = metrics(tmp_path / "metrics.prom")
    assert m[("plasma_dag_run_success", ())] == 0
    assert m[("plasma_dag_task_exit_code", (("task", "bad"),))] == 3
    assert m[("plasma_dag_tasks", (("status", "skipped"),))] == 1


async def test_retry_succeeds_on_the_second_attempt(tmp_path: Path) -> None:
    record, _ = await run(
        tmp_path,
        """
        tasks:
          - {name: flaky, cmd: [sh, -c, "test $PLASMA_TASK_ATTEMPT -ge 2"], retries: 2}
        """,
    )
    row = tasks(record)["flaky"]
    assert (record["status"], row["status"], row["attempts"], row["exit_code"]) == (
        "succeeded",
        "succeeded",
        2,
        0,
    )


async def test_timeout_kills_the_task_and_its_children(tmp_path: Path) -> None:
    record, _ = await run(
        tmp_path,
        """
        tasks:
          - {name: slow, cmd: [sh, -c, "sleep 60 & echo $! > child.pid; echo $$ > task.pid; wait"],
             timeout: 1}
        """,
    )
    row = tasks(record)["slow"]
    assert row["status"] == "failed" and "timed out after 1s" in row["error"]
    assert row["end"] - row["start"] < 10
    for name in ("task.pid", "child.pid"):
        assert not alive(int((tmp_path / name).read_text()))


async def test_dynamic_map_and_submit_join_the_run(tmp_path: Path) -> None:
    record, lines = await run(
        tmp_path,
        """
        tasks:
          - {name: fan, call: "dagtasks:fan", outputs: [total]}
          - name: show
            cmd: [python, -c, "import plasma.task as t; print(int(t.current().input('total')[0]))"]
            inputs: [total]
        """,
    )
    assert record["status"] == "succeeded", record
    t = tasks(record)
    children = ["fan/square-0", "fan/square-1", "fan/square-2", "fan/late"]
    for child in children:
        assert t[child]["parent"] == "fan" and t[child]["status"] == "succeeded"
        assert t["fan"]["start"] < t[child]["start"] <= t[child]["end"] < t["fan"]["end"]
    assert t["fan/square-2"]["inputs"] == ["part-2"] and t["fan/square-2"]["outputs"] == ["sq-2"]
    assert "[show] 20" in lines  # four squares each of 0, 1 and 2


async def test_failed_branch_fails_its_parent_and_the_run(tmp_path: Path) -> None:
    record, _ = await run(
        tmp_path,
        """
        tasks:
          - {name: fan, call: "dagtasks:fan_fails", outputs: [x]}
          - {name: later, cmd: ["true"], inputs: [x]}
        """,
    )
    t = tasks(record)
    assert record["status"] == "failed"
    assert t["fan/boom-0"]["status"] == "failed" and t["fan/boom-0"]["exit_code"] == 4
    assert t["fan"]["status"] in ("cancelled", "failed")
    assert t["later"]["status"] == "skipped"


async def test_waiting_for_a_task_that_needs_the_waiter_is_refused(tmp_path: Path) -> None:
    record, lines = await run(
        tmp_path,
        """
        tasks:
          - {name: p, call: "dagtasks:deadlock", outputs: [x]}
        """,
    )
    assert record["status"] == "succeeded"
    assert any("refused: " in line and "deadlock" in line for line in lines), lines
    assert tasks(record)["p/needs-parent-0"]["start"] >= tasks(record)["p"]["end"]


def test_sigint_stops_every_task_and_leaves_no_process(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        textwrap.dedent("""
        tasks:
          - {name: a, cmd: [sh, -c, "sleep 60 & echo $! > a.pid; wait"]}
          - {name: b, cmd: [sh, -c, "trap '' TERM; echo $$ > b.pid; while :; do sleep 0.1; done"]}
          - {name: c, cmd: ["true"], after: [a, b]}
        """)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "plasma", "dag", "run", "p.yaml", "--record", "rec.json"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # (the shell creates each file, then writes the pid and its newline in one write)
        files = [tmp_path / n for n in ("a.pid", "b.pid")]
        _wait_for(lambda: all(f.exists() and f.read_text().endswith("\n") for f in files))
        pids = [int(f.read_text()) for f in files]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert "SIGINT: stopping 2 running task(s)" in out
    for pid in pids:
        assert not alive(pid)  # b ignored SIGTERM: it was SIGKILLed after the grace period
    record = json.loads((tmp_path / "rec.json").read_text())
    assert record["status"] == "interrupted"
    assert [t["status"] for t in record["tasks"]] == ["cancelled", "cancelled", "skipped"]


def test_cli_rejects_a_bad_pipeline_before_running(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("tasks: [{name: a, cmd: [x], inputs: [nowhere]}]")
    proc = subprocess.run(
        [sys.executable, "-m", "plasma", "dag", "run", str(tmp_path / "p.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "input 'nowhere' is not an output of any task" in proc.stderr


def test_example_pipeline_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "plasma",
            "dag",
            "run",
            "examples/pipeline.yaml",
            "--record",
            str(tmp_path / "rec.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "summary check passed" in proc.stdout
    record = json.loads((tmp_path / "rec.json").read_text())
    mapped = [t for t in record["tasks"] if t["parent"] == "fan-out"]
    assert len(mapped) == 5 and all(t["status"] == "succeeded" for t in mapped)


def _wait_for(predicate: Any, timeout: float = 60.0) -> None:
    """Poll for an effect of another process (a file it writes) that nothing can signal."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
