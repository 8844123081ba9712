"""Task functions of examples/pipeline.yaml (each receives its plasma.task.TaskContext)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from plasma.task import TaskContext

STATS = ("rows", "sum", "sum_sq", "min", "max")


def generate(ctx: TaskContext) -> dict[str, object]:
    """Cut a synthetic dataset into Arrow partitions `part-0`, `part-1`, ... and a manifest."""
    rows, per_part = int(ctx.args["rows"]), int(ctx.args["partition_rows"])
    rng = np.random.default_rng(int(ctx.args["seed"]))
    names = []
    for i, start in enumerate(range(0, rows, per_part)):
        n = min(per_part, rows - start)
        table = pa.table(
            {"key": np.arange(start, start + n, dtype=np.int64), "x": rng.normal(10.0, 2.0, n)}
        )
        ctx.output(f"part-{i}", table)
        names.append(f"part-{i}")
    print(f"{len(names)} partitions of up to {per_part} rows, CPUs {_cpus()}")
    return {"manifest": pa.table({"partition": names})}


def fan_out(ctx: TaskContext) -> dict[str, object]:
    """Map `summarize` over however many partitions the manifest lists, then stack results."""
    names = ctx.input("manifest").column("partition").to_pylist()
    handles = ctx.map(
        {"name": "summarize", "call": "pipeline_tasks:summarize", "outputs": ["stats-{i}"]},
        names,
    )
    print(f"mapped {len(handles)} summarize tasks: {', '.join(h.id for h in handles)}")
    results = ctx.wait(handles)
    partials = np.stack([out[h.outputs[0]] for h, out in zip(handles, results, strict=True)])
    return {"partials": partials}


def summarize(ctx: TaskContext) -> dict[str, object]:
    """Statistics of one partition, read zero-copy from the store."""
    name = ctx.inputs[0]
    table = ctx.input(name)
    x = table.column("x").chunk(0).to_numpy(zero_copy_only=True)
    print(f"{name}: {len(x)} rows, zero-copy={not x.flags.owndata}, CPUs {_cpus()}")
    return {ctx.outputs[0]: np.array([len(x), x.sum(), (x * x).sum(), x.min(), x.max()])}


def reduce(ctx: TaskContext) -> dict[str, object]:
    """Combine the partial statistics into the dataset's count, mean, std, min and max."""
    p = ctx.input("partials")
    rows, total, total_sq = p[:, 0].sum(), p[:, 1].sum(), p[:, 2].sum()
    mean = total / rows
    std = np.sqrt(total_sq / rows - mean * mean)
    summary = np.array([rows, mean, std, p[:, 3].min(), p[:, 4].max()])
    print(
        f"rows={int(rows)} mean={mean:.4f} std={std:.4f} "
        f"min={summary[3]:.3f} max={summary[4]:.3f} (from {len(p)} partitions)"
    )
    return {"summary": summary}


def _cpus() -> str:
    return ",".join(map(str, sorted(os.sched_getaffinity(0))))
