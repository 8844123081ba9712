"""plasma.serialization: round trips, zero-copy proofs and clear errors."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import gc
import mmap
import pathlib
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import hypothesis.extra.numpy as hnp
import msgspec
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plasma.errors import BadRequest
from plasma.serialization import ALIGNMENT, MAGIC, VERSION, Encoded, _parse_header, decode, encode
from tests.helpers import imports_after

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


@pytest.mark.parametrize(
    "value",
    [
        np.array([{"a": 1}, None], dtype=object),
        np.array([(1, "x")], dtype=[("a", "i4"), ("o", "O")]),
        np.ma.masked_array([1, 2], mask=[False, True]),
    ],
    ids=["object", "structured-object", "masked"],
)
def test_arrays_of_python_objects_are_pickled(value: np.ndarray) -> None:
    enc = encode(value)
    assert _parse_header(enc.metadata).kind == "pickle5"
    buf = bytearray(enc.data_size)
    enc.write(memoryview(buf))
    out = decode(memoryview(buf), enc.metadata)
    assert type(out) is type(value) and out.dtype == value.dtype
    assert out.tolist() == value.tolist()
    if isinstance(value, np.ma.MaskedArray):
        assert out.mask.tolist() == value.mask.tolist()


def test_an_array_put_does_not_import_numpy_ma() -> None:
    """Telling a masked array apart must not import numpy.ma: that took 10-30 ms of a
    process's first put."""
    code = (
        "import numpy as np\n"
        "from plasma.serialization import encode\n"
        "assert encode(np.ones(8)).kind == 'ndarray'\n"
    )
    assert not imports_after(code, "numpy.ma")


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


def pandas_frame() -> Any:
    pd = pytest.importorskip("pandas")
    index = pd.MultiIndex.from_arrays(
        [[1, 1, 2, 2, 3], pd.date_range("2024-01-01", periods=5, tz="UTC")], names=["n", "when"]
    )
    return pd.DataFrame(
        {
            "i64": np.arange(5, dtype=np.int64),
            "f64": np.linspace(0.0, 1.0, 5),
            "i8": np.arange(5, dtype=np.int8),
            "f32": np.arange(5, dtype=np.float32),
            "Int64": pd.array([1, None, 3, 4, 5], dtype="Int64"),
            "boolean": pd.array([True, None, False, True, False], dtype="boolean"),
            "string": pd.array(["a", None, "ccc", "d", ""], dtype="string"),
            "str": ["x", "y", None, "z", "w"],
            "category": pd.Categorical(["a", "b", "a", None, "b"], categories=["b", "a"]),
            "ordered": pd.Categorical([3, 1, 2, 1, 3], ordered=True),
            "tz": pd.date_range("2024-03-30 12:00", periods=5, freq="7h", tz="Europe/Paris"),
            "naive": pd.to_datetime(["2024-01-01", None, "2024-01-03", "2024-01-04", "2024-01-05"]),
            "delta": pd.to_timedelta([1, 2, None, 4, 5], unit="s"),
            "object": [{"a": 1}, [1], None, 1.5, "x"],
        },
        index=index,
    )


def test_pandas_frame_keeps_index_and_every_dtype(segment: mmap.mmap) -> None:
    pd = pytest.importorskip("pandas")
    df = pandas_frame()
    enc, view = store(segment, df)
    assert enc.kind == "pickle5"
    out = decode(view, enc.metadata)
    assert isinstance(out, pd.DataFrame)
    pd.testing.assert_frame_equal(out, df, check_exact=True)
    assert out.dtypes.to_dict() == df.dtypes.to_dict()
    assert out.index.names == ["n", "when"]
    assert out.index.levels[1].dtype == df.index.levels[1].dtype
    assert str(out.index.levels[1].dtype).endswith(", UTC]")
    assert str(out["tz"].dtype).endswith("Europe/Paris]")
    assert out["ordered"].cat.ordered and list(out["category"].cat.categories) == ["b", "a"]


def test_pandas_numeric_columns_are_read_only_views(segment: mmap.mmap) -> None:
    pytest.importorskip("pandas")
    df = pandas_frame()
    out = roundtrip(segment, df)
    inside = address_range(segment)
    for column in ("i64", "f64", "i8", "f32"):
        values = out[column].to_numpy()
        assert values.ctypes.data in inside, column
        assert not values.flags.writeable, column
    masked = out["Int64"].array
    assert np.asarray(masked._data).ctypes.data in inside  # nullable: data and mask too
    assert np.asarray(masked._mask).ctypes.data in inside


def test_pandas_named_index_frame(segment: mmap.mmap) -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(
        {"v": np.arange(4.0)}, index=pd.Index(["a", "b", "c", "d"], name="key")
    ).rename_axis(columns="cols")
    out = roundtrip(segment, df)
    pd.testing.assert_frame_equal(out, df, check_exact=True)
    assert out.index.name == "key" and out.columns.name == "cols"


@pytest.mark.parametrize(
    "make",
    [
        lambda pd: pd.Series(np.arange(5.0), index=pd.Index(list("abcde"), name="k"), name="s"),
        lambda pd: pd.Series(pd.array([1, None, 3], dtype="Int64"), name="nullable"),
        lambda pd: pd.Series(pd.Categorical(["x", "y", "x"])),
        lambda pd: pd.Series(pd.date_range("2024-01-01", periods=3, tz="US/Eastern")),
        lambda pd: pd.Series(["a", None, "b"], dtype="string"),
        lambda pd: pd.Series(
            [1, 2], index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["x", "y"])
        ),
    ],
    ids=["float", "Int64", "category", "tz", "string", "multiindex"],
)
def test_pandas_series_roundtrip(segment: mmap.mmap, make: Any) -> None:
    pd = pytest.importorskip("pandas")
    series = make(pd)
    out = roundtrip(segment, series)
    assert isinstance(out, pd.Series)
    pd.testing.assert_series_equal(out, series, check_exact=True)
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "if":
        values = out.to_numpy()
        assert values.ctypes.data in address_range(segment)
        assert not values.flags.writeable


def test_pandas_frame_inside_a_container(segment: mmap.mmap) -> None:
    pd = pytest.importorskip("pandas")
    df = pandas_frame()
    out = roundtrip(segment, {"frame": df, "meta": {"rows": 5}})
    assert isinstance(out, dict)
    pd.testing.assert_frame_equal(out["frame"], df, check_exact=True)
    assert out["meta"] == {"rows": 5}


def test_pandas_dataframe_from_arrow_kind_still_decodes() -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]})
    enc = encode(pa.Table.from_pandas(df))  # how earlier versions stored a DataFrame
    buf = bytearray(enc.data_size)
    enc.write(memoryview(buf))
    out = decode(memoryview(buf), _header("pandas.dataframe"))
    assert isinstance(out, pd.DataFrame)
    assert out["a"].tolist() == [1, 2, 3] and out["b"].tolist()[:2] == ["x", "y"]


def test_numpy_bytes_and_pickles_do_not_import_pyarrow() -> None:
    code = (
        "import sys, numpy as np\n"
        "from plasma.serialization import encode, decode\n"
        "e = encode(np.arange(3)); buf = bytearray(e.data_size); e.write(memoryview(buf))\n"
        "decode(buf, e.metadata); decode(b'x', encode(b'x').metadata)\n"
        "e = encode({'a': [np.arange(3), 1]}); buf = bytearray(e.data_size)\n"
        "e.write(memoryview(buf)); decode(memoryview(buf), e.metadata)\n"
        "assert 'pyarrow' not in sys.modules and 'pandas' not in sys.modules\n"
    )
    repo = pathlib.Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=repo)


# ---------------------------------------------------------------- pickle protocol 5


@dataclasses.dataclass
class Point:
    name: str
    coords: np.ndarray
    tags: tuple[str, ...] = ()


class CountingReduce:
    """Counts how often it is pickled: encode must measure once and write without pickling."""

    calls = 0

    def __reduce__(self) -> tuple[Any, ...]:
        CountingReduce.calls += 1
        return (CountingReduce, ())


def pickle_layout(enc: Encoded) -> tuple[int, list[tuple[int, int]]]:
    """(in-band length, [(offset, length)...]) read from the metadata's MessagePack header."""
    assert enc.metadata[: len(MAGIC) + 1] == MAGIC + bytes((VERSION,))
    fields = msgspec.msgpack.decode(enc.metadata[len(MAGIC) + 1 :])
    assert fields[0] == "pickle5"
    return fields[4], [tuple(pair) for pair in fields[5]]


def assert_same(out: object, value: object) -> None:
    """Equal, recursively; types kept; numpy arrays equal bytewise (NaN, NaT)."""
    assert type(out) is type(value), (type(out), type(value))
    if isinstance(value, np.ndarray):
        assert isinstance(out, np.ndarray)
        assert out.dtype == value.dtype and out.shape == value.shape
        assert out.tobytes() == value.tobytes()
    elif isinstance(value, dict):
        assert isinstance(out, dict) and list(out) == list(value)
        for key in value:
            assert_same(out[key], value[key])
    elif isinstance(value, (list, tuple)):
        assert isinstance(out, (list, tuple)) and len(out) == len(value)
        for a, b in zip(out, value, strict=True):
            assert_same(a, b)
    else:
        assert out == value


def arrays_in(value: object) -> Iterator[np.ndarray]:
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from arrays_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from arrays_in(item)


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1, 2], "c": None},
        [1, 2],
        (1, "two", 3.0, None, True),
        42,
        -(2**100),
        3.5,
        None,
        "text ✓",
        {"nested": {"deeper": [({"x": b"\x00\xff"},)]}},
        {1, 2, 3},
        frozenset({"a"}),
        complex(1, -2),
        datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.UTC),
        decimal.Decimal("1.25"),
        np.float32(1.5),
        [],
        {},
        (),
        "",
    ],
    ids=repr,
)
def test_python_values_roundtrip(segment: mmap.mmap, value: object) -> None:
    enc, view = store(segment, value)
    assert enc.kind == "pickle5"
    out = decode(view, enc.metadata)
    assert type(out) is type(value)
    assert out == value


def test_containers_with_arrays_and_bytes_roundtrip(segment: mmap.mmap) -> None:
    value = {
        "ints": np.arange(100, dtype=np.int64),
        "list": [np.ones((3, 4), dtype=np.float32), b"raw", bytearray(b"mutable")],
        "tuple": (np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)), "s"),
        "strided": np.arange(20)[::3],  # not contiguous: pickled in-band, as a copy
        "objects": np.array([{"a": 1}, None], dtype=object),  # in-band too
        "empty": np.empty((0, 3)),
        "scalar": np.array(2.5),
        "point": Point("p", np.array([1.0, 2.0]), ("t",)),
    }
    out = roundtrip(segment, value)
    assert isinstance(out, dict)
    for key in ("ints", "list", "tuple", "strided", "empty", "scalar"):
        assert_same(out[key], value[key])
    assert out["tuple"][0].flags.f_contiguous and not out["tuple"][0].flags.c_contiguous
    assert out["objects"].tolist() == value["objects"].tolist()
    assert isinstance(out["point"], Point)
    assert out["point"].name == "p" and out["point"].tags == ("t",)
    np.testing.assert_array_equal(out["point"].coords, value["point"].coords)
    assert isinstance(out["list"][2], bytearray)


def test_arrays_inside_containers_are_read_only_views_of_the_buffer(segment: mmap.mmap) -> None:
    value = {
        "a": np.arange(1000, dtype=np.float64),
        "nested": [(np.arange(24, dtype=np.int32).reshape(2, 3, 4),)],
        "point": Point("p", np.linspace(0, 1, 50)),
        "when": np.array(["2024-01-01T12:00", "NaT"], dtype=">M8[s]"),  # numpy: in-band
    }
    enc, view = store(segment, value)
    out = decode(view, enc.metadata)
    inside = address_range(segment)
    start = np.frombuffer(view, np.uint8).ctypes.data
    passed = range(start, start + len(view))  # the very buffer handed to decode
    arrays = [out["a"], out["nested"][0][0], out["point"].coords, out["when"]]
    assert out["when"].dtype == np.dtype(">M8[s]")  # byte order kept
    assert out["when"].tobytes() == value["when"].tobytes()
    for arr in arrays:
        assert arr.ctypes.data in passed
        assert arr.ctypes.data + arr.nbytes - 1 in passed
        assert arr.ctypes.data in inside
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr.flags.writeable = True
    # shares memory: writing the segment under the array changes what it reads
    position = out["a"].ctypes.data - address_range(segment).start
    segment[position : position + 8] = np.float64(-7.0).tobytes()
    assert out["a"][0] == -7.0


def test_out_of_band_buffers_are_aligned_and_copied_in_place(segment: mmap.mmap) -> None:
    arrays = [np.arange(n, dtype=np.uint8) for n in (1, 3, 64, 65, 100)]
    value = {"arrays": arrays, "pad": "x" * 37}
    enc, view = store(segment, value)
    inband, layout = pickle_layout(enc)
    assert len(layout) == len(arrays)
    assert layout[0][0] >= inband
    end = inband
    for (offset, length), arr in zip(layout, arrays, strict=True):
        assert offset % ALIGNMENT == 0
        assert 0 <= offset - end < ALIGNMENT  # packed: the least padding that aligns
        assert length == arr.nbytes
        assert bytes(view[offset : offset + length]) == arr.tobytes()
        assert bytes(view[end:offset]) == bytes(offset - end)  # zeroed padding
        end = offset + length
    assert enc.data_size == end
    out = decode(view, enc.metadata)
    base = address_range(segment).start  # page aligned, and the object starts at OFFSET
    for arr in out["arrays"]:
        assert (arr.ctypes.data - base) % ALIGNMENT == 0


def test_pickle_is_measured_once_and_not_rerun_by_write() -> None:
    CountingReduce.calls = 0
    enc = encode({"x": CountingReduce(), "a": np.arange(5)})
    assert CountingReduce.calls == 1
    buf = bytearray(enc.data_size)
    enc.write(memoryview(buf))
    assert CountingReduce.calls == 1
    out = decode(memoryview(buf), enc.metadata)
    assert isinstance(out["x"], CountingReduce)


def test_write_copies_the_source_at_write_time_without_intermediate_copy() -> None:
    arr = np.zeros(16, dtype=np.int64)
    enc = encode([arr])
    arr[0] = 99  # the encoding holds a view of the source, not a copy made at encode time
    buf = bytearray(enc.data_size)
    enc.write(memoryview(buf))
    [out] = decode(memoryview(buf), enc.metadata)
    assert out[0] == 99


def test_numpy_buffer_destination() -> None:
    value = {"a": np.arange(10, dtype=np.float32), "b": [b"x", 1]}
    enc = encode(value)
    dst = np.zeros(enc.data_size, dtype=np.uint8)
    enc.write(memoryview(dst))
    out = decode(memoryview(dst), enc.metadata)
    assert_same(out, value)
    assert out["a"].ctypes.data in range(dst.ctypes.data, dst.ctypes.data + dst.nbytes)


def test_arrow_objects_inside_containers_are_zero_copy(segment: mmap.mmap) -> None:
    table = pa.table({"a": pa.array(range(100)), "s": pa.array(["x", None] * 50)})
    out = roundtrip(segment, {"table": table, "n": 1})
    assert isinstance(out, dict)
    assert out["table"].equals(table)
    inside = address_range(segment)
    for buf in arrow_buffers(out["table"]):
        assert buf.address in inside and not buf.is_mutable


def test_unpickling_errors_are_bad_requests(segment: mmap.mmap) -> None:
    enc, view = store(segment, {"a": np.arange(4)})
    corrupt = bytearray(view)
    corrupt[2:6] = b"\xff\xff\xff\xff"
    with pytest.raises(BadRequest, match="cannot unpickle"):
        decode(memoryview(corrupt), enc.metadata)


SCALAR_ARRAYS = hnp.arrays(
    dtype=hnp.scalar_dtypes(),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)
NESTED = st.recursive(
    st.none() | st.integers() | st.text(max_size=20) | st.binary(max_size=40) | SCALAR_ARRAYS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(value=NESTED)
def test_nested_structures_roundtrip(value: object) -> None:
    value = [value]  # a lone array or bytes would be stored as its own kind
    enc = encode(value)
    buf = np.zeros(enc.data_size + ALIGNMENT, dtype=np.uint8)
    shift = -buf.ctypes.data % ALIGNMENT  # place the object 64-byte aligned, as the store does
    view = memoryview(buf)[shift : shift + enc.data_size]
    enc.write(view)
    out = decode(view, enc.metadata)
    assert_same(out, value)
    for arr in arrays_in(out):
        assert not arr.flags.writeable
    _, layout = pickle_layout(enc)
    assert len(layout) == sum(1 for _ in arrays_in(value) if _.dtype.itemsize)
    assert all(offset % ALIGNMENT == 0 for offset, _ in layout)


# ---------------------------------------------------------------- errors


def test_unpicklable_value_is_refused_naming_its_type() -> None:
    with pytest.raises(TypeError, match=r"cannot store a \S*<lambda> \(builtins\.function\)"):
        encode(lambda: 0)
    with pytest.raises(TypeError, match=r"cannot store a builtins\.dict: .*_thread\.lock"):
        encode({"lock": threading.Lock()})
    with pytest.raises(TypeError, match=r"cannot store a builtins\.list: .*generator"):
        encode([1, (i for i in range(3))])
    # a non-contiguous PickleBuffer can be neither out-of-band nor in-band
    strided = pickle.PickleBuffer(np.arange(10, dtype=np.uint8)[::2])
    with pytest.raises(TypeError, match=r"cannot store a builtins\.tuple"):
        encode((strided,))


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
        (_header("pickle5", "", [], False, 0, []), "pickle of 0 bytes"),
        (_header("pickle5", "", [], False, 65, []), "does not fit"),
        (_header("pickle5", "", [], False, 8, [[0, 8]]), "lies outside"),
        (_header("pickle5", "", [], False, 8, [[8, 57]]), "lies outside"),
        (_header("pickle5", "", [], False, 8, [[8]]), "corrupt serialization header"),
        (_header("pickle5", "", [], False, 64, []), "cannot unpickle"),
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
