#!/usr/bin/env python3
"""Put a numpy array into a running plasma-coord store under a name.

    python clients/producer.py --name frame --shape 1024,1024 --dtype float32
    python clients/producer.py --name weights --from-file weights.npy

Consumers read it back with ``clients/consumer.py --name frame``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import plasma


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--socket", "-s", default="/tmp/plasma-coord.sock")
    ap.add_argument("--name", "-n", required=True, help="object name (its id is derived from it)")
    ap.add_argument(
        "--shape", default="1024,1024", help="comma-separated shape of a generated array"
    )
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--order", choices=["C", "F"], default="C")
    ap.add_argument("--from-file", help="put this .npy file instead of a generated array")
    ap.add_argument("--node", type=int, help="NUMA node to place the object on")
    return ap.parse_args(argv)


def make_array(args: argparse.Namespace) -> np.ndarray:
    if args.from_file:
        return np.load(args.from_file, allow_pickle=False)
    shape = tuple(int(x) for x in args.shape.split(",") if x)
    count = int(np.prod(shape))
    return np.asarray(np.arange(count).reshape(shape), dtype=args.dtype, order=args.order)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    array = make_array(args)
    oid = plasma.ObjectID.from_name(args.name)
    with plasma.connect(args.socket, client_name="producer") as client:
        start = time.perf_counter()
        client.put(array, oid, node=args.node)
        client.flush()
        elapsed = time.perf_counter() - start
        row = client.list()[oid]
    print(
        f"producer: put {args.name!r} id={oid.hex()} shape={array.shape} dtype={array.dtype} "
        f"bytes={array.nbytes} node={row['node']} in {elapsed * 1e3:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
