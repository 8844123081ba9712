#!/usr/bin/env python3
"""The Python side of the C examples (producer.c, consumer.c): the same frames, from Python.

    python examples/c/frames.py consume [--socket PATH] [--timeout S]
    python examples/c/frames.py produce [--socket PATH] [--count N] [--values V]

``consume`` reads what ``producer`` (or ``produce``) sealed, each frame a numpy view of
the store's memory (no copy), checks every value and prints the lines ``consumer`` prints.
``produce`` seals frames for ``consumer``: numpy arrays written by ``put`` (their bytes are
the object's data; a C reader ignores the metadata header ``put`` adds). Ids and values
are those of ``frames.h``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import plasma

NAME = b"frames"
COUNT_INDEX = 0xFFFFFFFF


def frame_id(index: int) -> plasma.ObjectID:
    """frames.h's ``frame_id``: the name padded to 16 bytes, then the index (big-endian)."""
    return plasma.ObjectID(NAME.ljust(16, b"\0") + index.to_bytes(4, "big"))


def frame(index: int, values: int) -> np.ndarray:
    """frames.h's ``frame_value``: value j of frame i is i + j / 2."""
    return np.arange(values, dtype=np.float32) / 2 + np.float32(index)


def consume(client: plasma.Client, timeout: float) -> int:
    count = int.from_bytes(client.get(frame_id(COUNT_INDEX), timeout=timeout), "little")
    wrong = 0
    for i in range(count):
        data, meta = client.get(frame_id(i), timeout=timeout, with_metadata=True)
        values = np.frombuffer(data, np.float32)  # a view of the store's memory
        wrong += int(np.count_nonzero(values != frame(i, len(values))))
        total = float(values.astype(np.float64).sum())
        print(f"frame {i}: {len(values)} values, sum {total:.1f}, metadata {bytes(meta).decode()}")
        del values, data, meta  # the last view gone, the object is released
    if wrong:
        print(f"frames.py: {wrong} values differ from what the producer wrote", file=sys.stderr)
        return 1
    return 0


def produce(client: plasma.Client, count: int, values: int) -> int:
    for i in range(count):
        buf = client.create(frame_id(i), values * 4, metadata=b"float32")
        np.frombuffer(buf, np.float32)[:] = frame(i, values)
        del buf
        client.seal(frame_id(i))
    client.create_and_seal(frame_id(COUNT_INDEX), count.to_bytes(4, "little"))
    client.flush()
    print(f"sealed {count} frames of {values} float32 values")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=["consume", "produce"])
    ap.add_argument("--socket", help="the coordinator (default: $PLASMA_COORD_SOCKET)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for frames")
    ap.add_argument("--count", type=int, default=4, help="frames to produce")
    ap.add_argument("--values", type=int, default=262144, help="float32 values per frame")
    args = ap.parse_args(argv)
    with plasma.connect(args.socket, client_name=f"py-{args.command}") as client:
        if args.command == "consume":
            return consume(client, args.timeout)
        return produce(client, args.count, args.values)


if __name__ == "__main__":
    sys.exit(main())
