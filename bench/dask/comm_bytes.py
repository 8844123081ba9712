"""Counting the bytes a worker process writes to its TCP comms (for ``python -m bench.dask``).

distributed's own transfer log misses P2P shuffles (they send shards with RPCs of their
own), so the benchmark wraps ``distributed.comm.tcp.TCP.write`` in every worker process, once:
every transfer, shuffle shard and message to the scheduler is counted. Run on the workers
with ``Client.run(install)``; ``written()`` reads the count.
"""

from __future__ import annotations

from typing import Any

_written = [0]


def install() -> None:
    """Wrap ``TCP.write`` in this process (idempotent)."""
    from distributed.comm.tcp import TCP

    if getattr(TCP.write, "counted", False):
        return
    write = TCP.write

    async def counted_write(self: Any, *args: Any, **kwargs: Any) -> int:
        n: int = await write(self, *args, **kwargs)
        _written[0] += n
        return n

    counted_write.counted = True  # type: ignore[attr-defined]
    TCP.write = counted_write  # type: ignore[method-assign]


def written() -> int:
    """Bytes written since :func:`install`."""
    return _written[0]
