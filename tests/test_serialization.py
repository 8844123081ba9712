"""plasma.serialization: round trips, zero-copy proofs and clear errors."""

from __future__ import annotations

import datetime
import decimal
import gc
import mmap
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import hypothesis.extra.numpy as hnp
import msgspec
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plasma.errors import BadRequest
from plasma.serialization import MAGIC, VERSION, Encoded, decode, encode

SEGMENT = 1 << 20
OFFSET = 64  # objects start 64-byte aligned inside a segment, like the store's allocator


@pytest.fixture
def segment() -> Iterator[mmap.mmap]:
    seg = mmap.mmap(-1, SEGMENT)
    yield seg
    gc.collect()
    seg.close()  # fails with BufferError if a decoded view still pins the mapping


def address_range(seg: mmap.mmap | bytearray) -> range:
    start = np.frombuffer(seg, dtype=np.uint8).ctypes.data
    return range(start, start + len(seg))


def store(seg: mmap.mmap | bytearray, value: object) -> tuple[Encoded, memoryview]:
    """Write ``value`` at OFFSET in ``seg``; return its encoding and its data view."""
    enc = encode(value)
    view = memoryview(seg)[OFFSET : OFFSET + enc.data_size]
    enc.write(view)
    return enc, view


def roundtrip(seg: mmap.mmap | bytearray, value: object) -> object:
    enc, view = store(seg, value)
    return decode(view, enc.metadata)


def arrow_buffers(value: object) -> list[pa.Buffer]:
    if isinstance(value, pa.ChunkedArray):
        arrays = list(value.chunks)
    elif isinstance(value, (pa.RecordBatch, pa.Table)):
        arrays = [chunk for col in value.columns for chunk in getattr(col, "chunks", [col])]
    else:
        arrays = [value]
    return [buf for arr in arrays for buf in arr.buffers() if buf is not None and buf.size]


# ---------------------------------------------------------------- numpy


@settings(max_examples=150, deadline=None)
@given(
    arr=hnp.arrays(
        dtype=hnp.scalar_dtypes() | hnp.nested_dtypes(max_itemsize=64),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
    ),
    layout=st.sampled_from(["C", "F", "strided"]),
)
def test_numpy_roundtrip_any_dtype_and_layout(arr: np.ndarray, layout: str) -> None:
    if layout == "F":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        arr = arr[::2]
    seg = bytearray(OFFSET + arr.nbytes)
    out = roundtrip(seg, arr)
    assert isinstance(out, np.ndarray)
    assert out.dtype == arr.dtype
    assert out.shape == arr.shape
    assert out.tobytes() == arr.tobytes()  # bytewise, so NaN and NaT compare equal
    assert not out.flags.writeable
    if arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous:
        assert out.flags.f_contiguous


@pytest.mark.parametrize(
    "arr",
    [
        np.array(["2024-01-01T12:00", "NaT"], dtype="datetime64[ns]"),
        np.array([1, -2], dtype="timedelta64[ms]"),
        np.array([("ab", 1.5, [1, 2])], dtype=[("s", "U2"), ("f", ">f8"), ("v", "<i2", (2,))]),
        np.zeros(4, dtype=np.dtype([("a", "u1"), ("b", "<i8")], align=True)),  # padded
        np.array([b"x", b"yz"], dtype="S3"),
        np.arange(6, dtype=np.complex128).reshape(2, 3),
        np.array(3.5, dtype=np.float16),  # 0-d
        np.empty((0, 4), dtype=np.int32),
    ],
    ids=["datetime", "timedelta", "structured", "aligned", "bytes", "complex", "0d", "empty"],
)
def test_numpy_special_dtypes(segment: mmap.mmap, arr: np.ndarray) -> None:
    out = roundtrip(segment, arr)
    assert isinstance(out, np.ndarray)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert out.tobytes() == arr.tobytes()


def test_numpy_decode_is_a_read_only_view_into_the_segment(segment: mmap.mmap) -> None:
    arr = np.arange(1000, dtype=np.float64).reshape(10, 100)
    out = roundtrip(segment, arr)
    assert isinstance(out, np.ndarray)
    assert out.ctypes.data == address_range(segment).start + OFFSET
    segment[OFFSET : OFFSET + 8] = np.float64(42.0).tobytes()
    assert out[0, 0] == 42.0  # shares memory with the segment, not a copy
    with pytest.raises(ValueError):
        out.flags.writeable = True
    with pytest.raises(ValueError):
        out[0, 0] = 1.0


def test_fortran_order_is_kept_without_copy(segment: mmap.mmap) -> None:
    arr = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4))
    out = roundtrip(segment, arr)
    assert isinstance(out, np.ndarray)
    assert out.flags.f_contiguous and not out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)
    assert bytes(segment[OFFSET : OFFSET + arr.nbytes]) == arr.tobytes(order="F")


def test_non_contiguous_input_is_made_contiguous(segment: mmap.mmap) -> None:
    arr = np.arange(100, dtype=np.int64).reshape(10, 10)[::2, ::3]
    enc, _ = store(segment, arr)
    assert enc.data_size == arr.size * 8
    out = decode(memoryview(segment)[OFFSET : OFFSET + enc.data_size], enc.metadata)
    assert isinstance(out, np.ndarray)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)


def test_decoded_array_keeps_the_mapping_alive() -> None:
    seg = mmap.mmap(-1, 4096)
    out = roundtrip(seg, np.arange(10))
    gc.collect()
    with pytest.raises(BufferError):
        seg.close()  # the array's base chain still exports the mapping
    del out
    gc.collect()
    seg.close()


def test_object_dtype_is_refused() -> None:
    with pytest.raises(TypeError, match="object"):
        encode(np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(TypeError, match="object"):
        encode(np.zeros(2, dtype=[("a", "i4"), ("o", "O")]))


def test_masked_array_is_refused() -> None:
    with pytest.raises(TypeError, match="masked"):
        encode(np.ma.masked_array([1, 2], mask=[False, True]))


# ---------------------------------------------------------------- raw bytes


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"hello world",
        bytearray(b"\x00\xff" * 100),
        memoryview(b"abcdefgh")[2:6],
        np.arange(6, dtype=np.int32).reshape(2, 3).data,
        np.arange(12, dtype=np.uint8).reshape(3, 4)[:, ::2].data,  # non-contiguous
    ],
    ids=["empty", "bytes", "bytearray", "slice", "2d", "strided"],
)
def test_bytes_roundtrip_as_read_only_memoryview(segment: mmap.mmap, value: object) -> None:
    expected = memoryview(value).tobytes()  # type: ignore[arg-type]
    out = roundtrip(segment, value)
    assert isinstance(out, memoryview)
    assert out.readonly
    assert out.tobytes() == expected
    if expected:
        assert np.frombuffer(out, np.uint8).ctypes.data == address_range(segment).start + OFFSET


# ---------------------------------------------------------------- Arrow


ARROW_ARRAYS = [
    pa.array([1, None, 3], type=pa.int64()),
    pa.array([0.5, None, -1e30], type=pa.float32()),
    pa.array(["a", None, "ccc"]),
    pa.array(["x" * 100], type=pa.large_string()),
    pa.array([b"\x00\x01", None], type=pa.binary()),
    pa.array([True, False, None]),
    pa.array([[1, 2], None, []], type=pa.list_(pa.int16())),
    pa.array([{"a": 1, "b": "x"}, None]),
    pa.array(["a", "b", "a"]).dictionary_encode(),
    pa.array([datetime.datetime(2024, 5, 1, 12)], type=pa.timestamp("us", tz="UTC")),
    pa.array([decimal.Decimal("1.25")], type=pa.decimal128(10, 2)),
    pa.array([None, None], type=pa.null()),
    pa.array([], type=pa.int32()),
]


@pytest.mark.parametrize("arr", ARROW_ARRAYS, ids=lambda a: str(a.type))
def test_arrow_array_roundtrip(segment: mmap.mmap, arr: pa.Array) -> None:
    out = roundtrip(segment, arr)
    assert isinstance(out, pa.Array)
    assert out.type == arr.type
    assert out.equals(arr)


@settings(max_examples=50, deadline=None)
@given(
    chunks=st.lists(st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), max_size=20), max_size=4)
)
def test_arrow_chunked_array_roundtrip(chunks: list[list[int | None]]) -> None:
    arr = pa.chunked_array(chunks, type=pa.int64())
    seg = bytearray(1 << 16)
    out = roundtrip(seg, arr)
    assert isinstance(out, pa.ChunkedArray)
    assert out.equals(arr)
    # chunk boundaries are kept; Arrow IPC may drop empty chunks
    assert [len(c) for c in out.chunks if len(c)] == [len(c) for c in arr.chunks if len(c)]


def test_arrow_record_batch_and_table_roundtrip(segment: mmap.mmap) -> None:
    schema = pa.schema([("i", pa.int32()), ("s", pa.string())], metadata={b"k": b"v"})
    batch = pa.record_batch([pa.array([1, 2]), pa.array(["a", None])], schema=schema)
    table = pa.Table.from_batches([batch, batch.slice(1)])

    out_batch = roundtrip(segment, batch)
    assert isinstance(out_batch, pa.RecordBatch)
    assert out_batch.equals(batch)
    assert out_batch.schema.metadata == {b"k": b"v"}

    out_table = roundtrip(segment, table)
    assert isinstance(out_table, pa.Table)
    assert out_table.equals(table)
    assert out_table.column(0).num_chunks == 2


def test_arrow_tensor_roundtrip_zero_copy(segment: mmap.mmap) -> None:
    tensor = pa.Tensor.from_numpy(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    out = roundtrip(segment, tensor)
    assert isinstance(out, pa.Tensor)
    assert out.equals(tensor)
    assert out.to_numpy().ctypes.data in address_range(segment)


@pytest.mark.parametrize(
    "value",
    [
        pa.array(["a", None, "ccc"] * 10),
        pa.chunked_array([[1, 2], [3, None]]),
        pa.record_batch([pa.array([1.0, 2.0]), pa.array([[1], []])], names=["f", "l"]),
        pa.table({"a": pa.array(range(100)), "b": pa.array(["x"] * 100).dictionary_encode()}),
    ],
    ids=["array", "chunked", "batch", "table"],
)
def test_arrow_buffers_point_into_the_segment(segment: mmap.mmap, value: object) -> None:
    out = roundtrip(segment, value)
    buffers = arrow_buffers(out)
    assert buffers
    inside = address_range(segment)
    for buf in buffers:
        assert buf.address in inside and buf.address + buf.size - 1 in inside
        assert not buf.is_mutable


def test_arrow_size_is_measured_exactly() -> None:
    table = pa.table({"a": list(range(1000)), "b": [str(i) for i in range(1000)]})
    enc = encode(table)
    seg = bytearray(b"\xaa" * (enc.data_size + 16))
    enc.write(memoryview(seg))
    assert seg[enc.data_size :] == b"\xaa" * 16  # nothing written past data_size
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    assert enc.data_size == sink.getvalue().size


def test_pandas_dataframe_roundtrip() -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]})
    out = roundtrip(bytearray(1 << 16), df)
    assert isinstance(out, pd.DataFrame)
    pd.testing.assert_frame_equal(out, df)


def test_numpy_and_bytes_do_not_import_pyarrow() -> None:
    code = (
        "import sys, numpy as np\n"
        "from plasma.serialization import encode, decode\n"
        "e = encode(np.arange(3)); buf = bytearray(e.data_size); e.write(memoryview(buf))\n"
        "decode(buf, e.metadata); decode(b'x', encode(b'x').metadata)\n"
        "assert 'pyarrow' not in sys.modules and 'pandas' not in sys.modules\n"
    )
    repo = pathlib.Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=repo)


# ---------------------------------------------------------------- errors


def test_unsupported_type_is_refused() -> None:
    with pytest.raises(TypeError, match=r"cannot store a builtins\.dict"):
        encode({"a": 1})
    with pytest.raises(TypeError):
        encode(3.5)


def _header(*fields: object) -> bytes:
    return MAGIC + bytes((VERSION,)) + msgspec.msgpack.encode(list(fields))


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (b"", "not a plasma.serialization header"),
        (b"RAW", "not a plasma.serialization header"),
        (MAGIC, "not a plasma.serialization header"),
        (MAGIC + b"\x07" + b"\x90", "version 7 is not supported"),
        (MAGIC + bytes((VERSION,)) + b"\xc1garbage", "corrupt serialization header"),
        (_header("ndarray", "<f8", "not-a-shape", False), "corrupt serialization header"),
        (_header("pickle"), "unknown serialized kind 'pickle'"),
        (_header("ndarray", "<zz9", [2], False), "corrupt numpy dtype"),
        (_header("ndarray", "[('a', 'O')]", [1], False), "object dtype"),
        (_header("ndarray", "<f8", [1000], False), "needs 8000 bytes"),
        (_header("ndarray", "<f8", [-1], False), "negative dimension"),
        (_header("arrow.table"), "corrupt Arrow IPC data"),
        (_header("arrow.tensor"), "corrupt Arrow IPC data"),
    ],
)
def test_decode_garbage_gives_a_clear_error(metadata: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode(memoryview(b"\x01" * 64), metadata)


def test_write_checks_the_destination() -> None:
    enc = encode(np.arange(4, dtype=np.int64))
    with pytest.raises(BadRequest, match="holds 16 bytes"):
        enc.write(memoryview(bytearray(16)))
    with pytest.raises(BadRequest, match="read-only"):
        enc.write(memoryview(bytes(64)))
