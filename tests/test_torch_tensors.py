"""Torch tensors and DLPack arrays through put / get_object, with both clients.

A tensor read back must live in the store's memory (its pages mapped from a segment's memfd,
not copied into anonymous memory), keep its dtype, shape and strides, and be unable to change
the bytes other readers see: torch has no read-only tensors, so each get maps the object
copy-on-write.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import msgspec
import numpy as np
import pytest
import torch

import plasma
from plasma import serialization
from tests.conftest import RunningCoordinator
from tests.helpers import REPO, open_client

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.bool,
    torch.complex64,
    torch.complex128,
]


def sample(dtype: torch.dtype, shape: tuple[int, ...] = (6, 10)) -> torch.Tensor:
    """Distinct values of ``dtype`` (0..n, truncated to what the dtype holds)."""
    count = int(np.prod(shape))
    values = torch.arange(count, dtype=torch.float64) % 7
    return values.to(dtype).reshape(shape)


def backing(tensor: torch.Tensor) -> str:
    """The path of the mapping holding ``tensor``'s first byte (from /proc/self/maps);
    anonymous memory has none."""
    address = tensor.data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return fields[5].strip() if len(fields) > 5 else ""
    raise AssertionError(f"address {address:#x} is not mapped")


def in_store(tensor: torch.Tensor) -> bool:
    """Whether the tensor's memory is a segment of the store (a memfd), not a copy."""
    return backing(tensor).startswith("/memfd:")


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality, for every dtype (float8 has no ==)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    flat_a, flat_b = (t.contiguous().reshape(-1).view(torch.uint8) for t in (a, b))
    return bool(torch.equal(flat_a, flat_b))


async def test_every_dtype_comes_back_zero_copy(coordinator: RunningCoordinator, kind: str):
    async with open_client(kind, coordinator.socket) as c:
        for dtype in DTYPES:
            for shape in [(6, 10), (300, 1024)]:  # in the arena, and created on its own
                tensor = sample(dtype, shape)
                got = await c.get_object(await c.put(tensor), timeout=5)
                assert type(got) is torch.Tensor and same(got, tensor), (dtype, shape)
                assert got.stride() == tensor.stride()
                assert in_store(got), (dtype, shape, backing(got))


async def test_layouts(coordinator: RunningCoordinator, kind: str):
    base = torch.arange(2 * 3 * 8 * 5, dtype=torch.float32).reshape(2, 3, 8, 5)
    dense = {
        "transposed": base[0, 0].T,
        "permuted": base.permute(3, 1, 0, 2),
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "offset": base[1],  # a view starting inside its storage
        "scalar": torch.tensor(2.5),
        "size_one_dim": base[:1],  # its stride (120) is kept, though no element uses it
    }
    compact = {"step": base[:, :, ::3], "expanded": base[0, 0, 0].expand(4, 5)}
    empty = {"empty": torch.zeros(0, 3), "empty_strided": torch.empty_strided((3, 0), (1, 3))}
    async with open_client(kind, coordinator.socket) as c:
        for name, tensor in {**dense, **compact, **empty}.items():
            got = await c.get_object(await c.put(tensor), timeout=5)
            assert same(got, tensor), name
            if name in dense:  # the same strides, over the same number of bytes
                assert got.stride() == tensor.stride() and in_store(got), name
            elif name in compact:  # written compactly, in C order
                assert got.is_contiguous() and in_store(got), name
            else:
                assert got.stride() == tensor.stride(), name
        # a conjugate view is stored with its values
        z = torch.tensor([1 + 2j, 3 - 4j]).conj()
        assert torch.equal(await c.get_object(await c.put(z), timeout=5), z.resolve_conj())
        # the non-dense tensor took only its own elements' bytes in the store
        step = compact["step"]
        assert (await c.get(await c.put(step), timeout=5)).nbytes == step.numel() * 4


@dataclasses.dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]


async def test_state_dicts_and_nested_values(coordinator: RunningCoordinator, kind: str):
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Linear(512, 64))
    state = model.state_dict()
    batch = Batch(torch.randn(16, 3, 8, 8), torch.arange(16), ["a", "b"])
    mixed = {
        "list": [torch.ones(3), (torch.zeros(2, dtype=torch.bfloat16), np.arange(4))],
        "param": torch.nn.Parameter(torch.full((1000,), 3.0)),
        "grad": torch.ones(500, requires_grad=True),
        "empty": torch.zeros(0, 4),
        "step": torch.arange(40.0).reshape(4, 10)[:, ::2],
    }
    async with open_client(kind, coordinator.socket) as c:
        got = await c.get_object(await c.put(state), timeout=5)
        assert list(got) == list(state)
        for name, tensor in state.items():
            assert same(got[name], tensor) and in_store(got[name]), name
        loaded = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Linear(512, 64))
        loaded.load_state_dict(got)  # (copies into the module's own parameters)
        x = torch.randn(2, 256)
        assert torch.equal(loaded(x), model(x))
        got = await c.get_object(await c.put(batch), timeout=5)
        assert isinstance(got, Batch) and got.names == ["a", "b"]
        assert same(got.images, batch.images) and in_store(got.images)
        got = await c.get_object(await c.put(mixed), timeout=5)
        ones, (half, array) = got["list"][0], got["list"][1]
        assert same(ones, torch.ones(3)) and same(half, torch.zeros(2, dtype=torch.bfloat16))
        assert not array.flags.writeable  # numpy arrays beside tensors stay read-only
        assert type(got["param"]) is torch.nn.Parameter and got["param"].requires_grad
        assert in_store(got["param"]) and same(got["param"].detach(), mixed["param"].detach())
        assert got["grad"].requires_grad and got["grad"].is_leaf and in_store(got["grad"])
        assert got["empty"].shape == (0, 4) and same(got["step"], mixed["step"])
        # a tensor computed with grad comes back a leaf requiring grad, as torch pickles it
        got = await c.get_object(await c.put([torch.ones(2, requires_grad=True) * 2]), timeout=5)
        assert got[0].requires_grad and got[0].is_leaf
        assert same(got[0].detach(), torch.full((2,), 2.0))
        sparse = torch.eye(3).to_sparse()  # not strided: torch's own pickling (a copy)
        got = await c.get_object(await c.put({"s": sparse}), timeout=5)
        assert torch.equal(got["s"].to_dense(), torch.eye(3))


async def test_readers_cannot_change_the_stored_bytes(coordinator: RunningCoordinator, kind: str):
    tensor = torch.arange(1 << 18, dtype=torch.float32)  # 1 MiB: created on its own
    small = torch.arange(100, dtype=torch.int64)  # in the arena
    state = {"w": torch.ones(300, 300), "b": torch.zeros(10)}
    async with (
        open_client(kind, coordinator.socket) as c,
        open_client(kind, coordinator.socket) as other,
    ):
        ids = [await c.put(v) for v in (tensor, small, state)]
        got = [await c.get_object(i, timeout=5) for i in ids]
        got[0].add_(1)  # in-place ops write this reader's private copy of the pages
        got[1].zero_()
        got[2]["w"].mul_(-1)
        assert got[0][0] == 1 and got[1].sum() == 0 and got[2]["w"][0, 0] == -1
        writable = await c.get_object(ids[0], timeout=5, writable=True)
        writable.fill_(7)
        for reader in (other, c):  # another client, and a fresh get here, see the stored bytes
            assert same(await reader.get_object(ids[0], timeout=5), tensor)
            assert same(await reader.get_object(ids[1], timeout=5), small)
            fresh = await reader.get_object(ids[2], timeout=5)
            assert same(fresh["w"], state["w"]) and same(fresh["b"], state["b"])
            raw = await reader.get(ids[0], timeout=5)
            assert bytes(raw[:8]) == tensor[:2].numpy().tobytes()
        assert got[0][0] == 1  # the reader keeps what it wrote


async def test_a_tensor_keeps_its_object(coordinator: RunningCoordinator, kind: str):
    async with (
        open_client(kind, coordinator.socket, release_delay=0) as c,
        open_client(kind, coordinator.socket) as other,
    ):
        oid = await c.put(torch.ones(1 << 18))
        view = (await c.get_object(oid, timeout=5))[10:20]  # a view of the tensor
        await c.flush()
        assert (await other.list())[oid]["ref_count"] >= 1
        await other.delete([oid])  # deferred while the view lives
        assert view.sum() == 10
        del view
        await c.flush()
        assert not await other.contains(oid)


class Exporter:
    """A DLPack exporter that is neither numpy nor torch (a stand-in for JAX, CuPy...)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __dlpack__(self, **kwargs: object) -> object:
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.array.__dlpack_device__()


async def test_dlpack_values(coordinator: RunningCoordinator, kind: str):
    source = np.arange(60, dtype=np.int32).reshape(6, 10)[:, ::2]
    async with open_client(kind, coordinator.socket) as c:
        oid = await c.put(Exporter(source))
        got = await c.get_object(oid, timeout=5)
        assert type(got) is np.ndarray and not got.flags.writeable
        np.testing.assert_array_equal(got, source)
        # read back as the caller's framework's array, zero-copy: from a copy-on-write get
        writable = await c.get_object(oid, timeout=5, writable=True)
        tensor = torch.from_dlpack(writable)
        assert tensor.data_ptr() == writable.ctypes.data and in_store(tensor)
        tensor.fill_(-1)
        np.testing.assert_array_equal(await c.get_object(oid, timeout=5), source)
        with pytest.raises(TypeError, match="through DLPack"):  # numpy has no bfloat16
            await c.put(Exporter(torch.ones(2, dtype=torch.bfloat16)))  # type: ignore[arg-type]


def test_decode_checks_what_a_header_says():
    encoded = serialization.encode(torch.ones(4, 4))
    data = bytearray(encoded.data_size)
    encoded.write(memoryview(data))
    header = serialization._parse_header(encoded.metadata)
    for bad, match in [
        (msgspec.structs.replace(header, dtype="nonsense"), "not a dtype"),
        (msgspec.structs.replace(header, dtype="Tensor"), "not a dtype"),
        (msgspec.structs.replace(header, shape=(4, 5), strides=(5, 1)), "needs 80 bytes"),
        (msgspec.structs.replace(header, strides=(4, -1)), "corrupt tensor layout"),
        (msgspec.structs.replace(header, strides=(4,)), "corrupt tensor layout"),
        (msgspec.structs.replace(header, shape=(0, 1 << 63), strides=(1, 1)), "cannot rebuild"),
    ]:
        metadata = serialization.MAGIC + b"\x01" + serialization._header_encoder.encode(bad)
        with pytest.raises(plasma.BadRequest, match=match):
            serialization.decode(memoryview(data), metadata)


def test_a_read_only_view_decodes_to_copies():
    """Only a writable (private) view is safe to build tensors over: a read-only one is
    copied, so a tensor never writes through a buffer that said it could not be written."""
    tensor = torch.arange(10.0)
    encoded = serialization.encode({"t": tensor})
    data = bytearray(encoded.data_size)
    encoded.write(memoryview(data))
    assert serialization.holds_tensors(encoded.metadata)
    got = serialization.decode(memoryview(data).toreadonly(), encoded.metadata)
    got["t"].add_(1)
    assert same(serialization.decode(memoryview(data), encoded.metadata)["t"], tensor)
    assert not serialization.holds_tensors(serialization.encode({"a": np.ones(3)}).metadata)


def test_torch_is_imported_only_for_tensors(coordinator: RunningCoordinator):
    """A process that neither puts nor gets a tensor never imports torch; one that gets a
    tensor imports it then."""
    script = f"""
import sys, numpy as np, plasma
with plasma.connect({coordinator.socket!r}) as c:
    for value in (np.ones(3), {{"a": np.ones(3)}}, b"raw", [1, 2]):
        c.get_object(c.put(value), timeout=5)
    assert "torch" not in sys.modules, "imported by put/get of other values"
    oid = plasma.ObjectID(bytes.fromhex(sys.argv[1]))
    got = c.get_object(oid, timeout=5)
    assert "torch" in sys.modules and type(got).__name__ == "Tensor"
print("ok")
"""
    with plasma.connect(coordinator.socket) as c:
        oid = c.put(torch.ones(3))
        done = subprocess.run(
            [sys.executable, "-c", script, oid.binary().hex()],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.stdout.strip() == "ok", done.stderr
