#!/usr/bin/env python3
"""Get a named numpy array from a running plasma-coord store, zero-copy, and summarise it.

    python clients/consumer.py --socket /tmp/plasma-coord.sock --name frame --timeout 10

Waits up to ``--timeout`` seconds for the producer to seal it.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import plasma


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--socket", "-s", default="/tmp/plasma-coord.sock")
    ap.add_argument("--name", "-n", required=True)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the object")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--save", help="also write the array to this .npy file")
    args = ap.parse_args(argv)

    oid = plasma.ObjectID.from_name(args.name)
    with plasma.connect(args.socket, client_name="consumer") as client:
        try:
            array = client.get_object(oid, timeout=args.timeout)
        except plasma.PlasmaError as exc:
            print(f"consumer: cannot get {args.name!r}: {exc}", file=sys.stderr)
            return 1
        if not isinstance(array, np.ndarray):
            print(
                f"consumer: {args.name!r} holds a {type(array).__name__}, not an array",
                file=sys.stderr,
            )
            return 1
        summary = {
            "name": args.name,
            "id": oid.hex(),
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "bytes": int(array.nbytes),
            "sum": float(array.sum()),
            "zero_copy": not array.flags.owndata and not array.flags.writeable,
        }
        if args.save:
            np.save(args.save, array)
        del array
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"consumer: got {summary['name']!r} shape={tuple(summary['shape'])} "
            f"dtype={summary['dtype']} "
            f"sum={summary['sum']:.6g} zero_copy={summary['zero_copy']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
