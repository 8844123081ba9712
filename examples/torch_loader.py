"""A data loader whose workers hand batches to the trainer through plasma-coord, zero-copy.

``PlasmaLoader(dataset, socket, num_workers=N)`` iterates like ``torch.utils.data.DataLoader(
dataset, batch_size=None, num_workers=N)`` over a map-style dataset whose items are batches
(dicts of tensors): worker processes compute batches and ``put`` them into the store, the
trainer ``get_object``s each one, in order, as tensors over the store's memory (mapped
copy-on-write: the trainer may normalise a batch in place; the store's bytes never change),
and the batch's object is deleted once the trainer asks for the next one. At most
``prefetch_factor`` batches per worker are in flight, as with the DataLoader.

``python examples/torch_loader.py [--socket PATH] [--batches N] [--batch-size B] [--image S]
[--workers W]`` runs the same synthetic dataset (uint8 images B x 3 x S x S and int64 labels,
made by the workers) through both loaders, a trainer step that reads every byte of each batch,
and prints batches/s and GB/s of each and their ratio; both trainers must see the same bytes
(a checksum). DataLoader's workers send each batch through a multiprocessing queue, its
tensors moved into shared memory one file descriptor per tensor (torch.multiprocessing).
Without ``--socket`` it starts a coordinator of its own.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

import plasma


class SyntheticImages(Dataset[dict[str, torch.Tensor]]):
    """Batch ``i``: ``batch_size`` uint8 images of ``3 x size x size``, new memory each time
    (one random batch, seeded, rolled by ``i`` pixels: a copy, as cheap as a batch can be
    made, so that what is measured is the hand-over), and their labels."""

    def __init__(self, batches: int, batch_size: int, size: int) -> None:
        self.batches, self.batch_size, self.size = batches, batch_size, size
        self._base: torch.Tensor | None = None  # made on first use, in each process

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._base is None:
            gen = torch.Generator().manual_seed(0)
            shape = (self.batch_size, 3, self.size, self.size)
            self._base = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
        labels = (torch.arange(self.batch_size) + i) % 1000
        return {"images": self._base.roll(i, dims=-1), "labels": labels}


def _worker(dataset: Dataset[Any], socket: str, tasks: Any, done: Any) -> None:
    torch.set_num_threads(1)  # as DataLoader's workers do
    with plasma.connect(socket) as client:
        while (i := tasks.get()) is not None:
            done.put((i, client.put(dataset[i]).binary()))


class PlasmaLoader:
    """Batches of ``dataset`` computed by ``num_workers`` processes, handed over through the
    coordinator at ``socket`` (see the module docstring)."""

    def __init__(
        self, dataset: Dataset[Any], socket: str, num_workers: int = 2, prefetch_factor: int = 2
    ) -> None:
        self.dataset, self.socket = dataset, socket
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        ctx = mp.get_context("fork")  # as DataLoader's workers on Linux (each connects anew)
        tasks, done = ctx.Queue(), ctx.Queue()
        workers = [
            ctx.Process(target=_worker, args=(self.dataset, self.socket, tasks, done), daemon=True)
            for _ in range(self.num_workers)
        ]
        for w in workers:
            w.start()
        total, sent, ready = len(self), 0, {}
        with plasma.connect(self.socket) as client:
            try:
                for sent in range(min(total, self.num_workers * self.prefetch_factor)):
                    tasks.put(sent)
                sent = min(total, self.num_workers * self.prefetch_factor)
                for i in range(total):
                    while i not in ready:  # batches arrive in any order: hand them out in order
                        index, oid = done.get(timeout=120)
                        ready[index] = plasma.ObjectID(oid)
                    oid = ready.pop(i)
                    if sent < total:
                        tasks.put(sent)
                        sent += 1
                    yield client.get_object(oid)
                    client.delete([oid])  # (deferred while the trainer still holds the batch)
            finally:
                for _ in workers:
                    tasks.put(None)
                for w in workers:
                    w.join(30)
                client.delete([*ready.values()])


def train(loader: Any) -> tuple[float, int, float]:
    """One pass: seconds, bytes handed over, and a checksum of every batch's bytes."""
    nbytes, checksum = 0, 0.0
    start = time.perf_counter()
    for batch in loader:
        images = batch["images"]  # every byte read once (the trainer's first touch)
        checksum += float(images.sum(dtype=torch.int64)) + float(batch["labels"].sum())
        nbytes += images.nbytes + batch["labels"].nbytes
    return time.perf_counter() - start, nbytes, checksum


def _own_coordinator(workdir: str) -> tuple[str, subprocess.Popen[str]]:
    socket = os.path.join(workdir, "plasma.sock")
    serve = [sys.executable, "-m", "plasma", "serve", "--socket", socket, "--memory", "1GiB"]
    proc = subprocess.Popen(serve, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("ready"):
        raise SystemExit("the coordinator did not start")
    return socket, proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="a running coordinator (default: start one)")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    dataset = SyntheticImages(args.batches, args.batch_size, args.image)
    with tempfile.TemporaryDirectory(prefix="torch-loader-") as workdir:
        server = None
        socket = args.socket
        if socket is None:
            socket, server = _own_coordinator(workdir)
        try:
            loaders = {
                "DataLoader": DataLoader(dataset, batch_size=None, num_workers=args.workers),
                "PlasmaLoader": PlasmaLoader(dataset, socket, num_workers=args.workers),
            }
            results = {name: train(loader) for name, loader in loaders.items()}
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
    for name, (seconds, nbytes, checksum) in results.items():
        print(
            f"{name}: {args.batches / seconds:.1f} batches/s, {nbytes / seconds / 1e9:.2f} GB/s"
            f" ({args.batches} batches of {nbytes // args.batches} bytes, checksum {checksum:.6f})"
        )
    (base, _, sum_a), (ours, _, sum_b) = results.values()
    print(f"PlasmaLoader / DataLoader throughput: {base / ours:.2f}x")
    if sum_a != sum_b:
        print("the two loaders handed over different bytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
