"""The graphs ``python -m bench.dask`` times: dask.array and dask.dataframe workloads.

Each :class:`Workload` makes its input (``prepare``: an array persisted on the workers, or
nothing for the dataframes, which generate their data inside the timed graph, as a user's
graph reading its data would) and the collection to compute from it (``graph``). The same
seed gives the same result on both sides; ``same`` compares two results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MIB = 1 << 20


@dataclass(frozen=True)
class Size:
    """How big the inputs are: an ``n`` x ``n`` float64 matrix in strips of ``strip`` rows;
    a ``days``-long time series at one row a second in partitions of ``partition_days``."""

    n: int
    strip: int
    days: int
    partition_days: int

    def describe_array(self) -> str:
        return (
            f"matrix {self.n} x {self.n} float64 ({self.n * self.n * 8 // MIB} MiB) in strips "
            f"of {self.strip} rows ({self.strip * self.n * 8 // MIB} MiB)"
        )

    def describe_frame(self) -> str:
        rows = self.days * 86400
        return (
            f"time series of {self.days} days at 1 s ({rows:,} rows of name, id, x, y; "
            f"~{rows * 40 // MIB} MiB) in partitions of {self.partition_days} days"
        )


FULL = Size(n=8192, strip=1024, days=60, partition_days=4)
QUICK = Size(n=4096, strip=512, days=16, partition_days=2)


@dataclass(frozen=True)
class Workload:
    kind: str  # "array" or "dataframe"
    what: str  # one line for the table
    prepare: Callable[[Size, int], Any]  # (size, seed) -> input (lazy; persisted if array)
    graph: Callable[[Any], Any]  # input -> the collection to compute
    scale: int = 1  # arrays: the matrix is n / scale wide (a matrix product of n is slow)

    def describe(self, size: Size) -> str:
        if self.kind == "array":
            return f"{self.what}; {_scaled(size, self.scale).describe_array()}"
        return f"{self.what}; {size.describe_frame()}"


def _scaled(size: Size, scale: int) -> Size:
    return Size(size.n // scale, size.strip // scale, size.days, size.partition_days)


def same(a: Any, b: Any) -> bool:
    """Whether two results are equal (floating sums in any order: close)."""
    if hasattr(a, "sort_index"):  # pandas: groups come back in any order
        a, b = a.sort_index(), b.sort_index()
        return bool(a.index.equals(b.index)) and np.allclose(a.to_numpy(), b.to_numpy())
    return bool(np.allclose(a, b))


# ---------------------------------------------------------------- arrays


def _matrix(size: Size, seed: int) -> Any:
    import dask.array as da

    return da.random.default_rng(seed).random((size.n, size.n), chunks=(size.strip, size.n))


def _half_matrix(size: Size, seed: int) -> Any:
    return _matrix(_scaled(size, 2), seed)


def _pairs(x: Any) -> Any:
    """Every pair of row strips of ``x``, each reduced to a number: all-to-all reads."""
    import dask

    blocks = x.to_delayed().ravel()
    pairs = [
        dask.delayed(np.vdot)(blocks[i], blocks[j])
        for i in range(len(blocks))
        for j in range(i, len(blocks))
    ]
    return dask.delayed(sum)(pairs)


def _rechunk(x: Any) -> Any:
    """Row strips to column strips, plus the transpose (which rechunks again to blocks)."""
    n = x.shape[0]
    y = x.rechunk((x.chunks[1][0], n), method="tasks")
    return (y + y.T).sum(axis=0)


def _matmul(x: Any) -> Any:
    """``(x @ x.T).sum()``: every output block reads two strips."""
    return (x @ x.T).sum()


# ---------------------------------------------------------------- dataframes


def _series(size: Size, seed: int) -> Any:
    import dask

    return dask.datasets.timeseries(
        start="2000-01-01",
        end=str(np.datetime64("2000-01-01") + np.timedelta64(size.days, "D")),
        freq="1s",
        partition_freq=f"{size.partition_days}D",
        seed=seed,
    )


def _two_series(size: Size, seed: int) -> Any:
    """Two frames with a unique ``key`` (the row's time), in partitions that differ, so
    that joining them moves data."""
    left = _series(size, seed).map_partitions(_with_key)
    halves = Size(size.n, size.strip, size.days, max(1, size.partition_days // 2))
    right = _series(halves, seed + 1).map_partitions(_with_key)
    return left, right.rename(columns={"x": "rx", "y": "ry", "name": "rname", "id": "rid"})


def _with_key(part: Any) -> Any:
    return part.assign(key=part.index.asi8)


def _groupby(df: Any) -> Any:
    return df.groupby("name").x.mean()


def _shuffle(df: Any) -> Any:
    return df.shuffle("id", shuffle_method="p2p").x.sum()


def _shuffle_tasks(df: Any) -> Any:
    return df.shuffle("id", shuffle_method="tasks").x.sum()


def _merge(frames: Any) -> Any:
    left, right = frames
    joined = left.merge(right, on="key", shuffle_method="p2p")
    return (joined.x + joined.ry).sum()


WORKLOADS: dict[str, Workload] = {
    "pairs": Workload("array", "np.vdot of every pair of strips (all-to-all)", _matrix, _pairs),
    "rechunk": Workload(
        "array", "rechunk to column strips, then (y + y.T).sum(axis=0)", _matrix, _rechunk
    ),
    "matmul": Workload("array", "(x @ x.T).sum()", _half_matrix, _matmul, scale=2),
    "groupby": Workload("dataframe", 'groupby("name").x.mean()', _series, _groupby),
    "shuffle": Workload(
        "dataframe", 'shuffle("id") (P2P, the default), then x.sum()', _series, _shuffle
    ),
    "shuffle-tasks": Workload(
        "dataframe", 'shuffle("id", shuffle_method="tasks"), then x.sum()', _series, _shuffle_tasks
    ),
    "merge": Workload(
        "dataframe",
        "merge of two frames on a unique key (P2P hash join), then (x + ry).sum()",
        _two_series,
        _merge,
    ),
}
