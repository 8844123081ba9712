"""Zero-copy layouts of numpy arrays, Arrow data and raw bytes in an object buffer (internal).

``encode(value)`` measures a value and returns an :class:`Encoded` that writes it straight
into a destination buffer (the object's shared memory), with no intermediate copy.
``decode(data, metadata)`` rebuilds the value as a view of ``data``: numpy arrays are
read-only ``np.ndarray`` views, Arrow objects are read from an IPC stream whose buffers
point into ``data``, raw bytes come back as a read-only ``memoryview``.

The object's metadata is a small versioned header, ``MAGIC`` + one version byte + a
MessagePack record of the kind, so ``decode`` returns the type that was stored.

Kinds: numpy ``ndarray`` (any fixed-width dtype, C or Fortran order; other layouts are
made contiguous while writing), ``bytes`` / ``bytearray`` / ``memoryview``, pyarrow
``Array``, ``ChunkedArray``, ``RecordBatch``, ``Table`` and ``Tensor`` (Arrow IPC), and
pandas ``DataFrame`` (stored as an Arrow table; pandas is optional). Arrow chunk
boundaries survive, except that the IPC writer may drop empty chunks. pyarrow and pandas
are imported only when a value of theirs is encoded or such an object is decoded.
"""

from __future__ import annotations

import ast
import functools
import math
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from plasma.errors import BadRequest

MAGIC = b"PCS"
VERSION = 1

NDARRAY = "ndarray"
BYTES = "bytes"
ARROW_ARRAY = "arrow.array"
ARROW_CHUNKED_ARRAY = "arrow.chunked_array"
ARROW_RECORD_BATCH = "arrow.record_batch"
ARROW_TABLE = "arrow.table"
ARROW_TENSOR = "arrow.tensor"
PANDAS_DATAFRAME = "pandas.dataframe"
KINDS = (
    NDARRAY,
    BYTES,
    ARROW_ARRAY,
    ARROW_CHUNKED_ARRAY,
    ARROW_RECORD_BATCH,
    ARROW_TABLE,
    ARROW_TENSOR,
    PANDAS_DATAFRAME,
)
_COLUMN = "_"  # column name of a lone Array / ChunkedArray carried as a one-column stream


class _Header(msgspec.Struct, array_like=True, frozen=True):
    kind: str
    dtype: str = ""  # numpy only: dtype.str, or repr() of the .npy descr for structured dtypes
    shape: tuple[int, ...] = ()
    fortran: bool = False


_header_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(_Header)


class Encoded:
    """A measured value: ``data_size`` bytes of data and its ``metadata`` header.

    ``write(dst)`` writes exactly ``data_size`` bytes at the start of ``dst``.
    """

    __slots__ = ("_writer", "data_size", "kind", "metadata")

    def __init__(
        self, header: _Header, data_size: int, writer: Callable[[memoryview], None]
    ) -> None:
        self.kind = header.kind
        self.data_size = data_size
        self.metadata = MAGIC + bytes((VERSION,)) + _header_encoder.encode(header)
        self._writer = writer

    def write(self, dst: memoryview) -> None:
        dst = memoryview(dst).cast("B")
        if dst.readonly:
            raise BadRequest("destination buffer is read-only")
        if len(dst) < self.data_size:
            raise BadRequest(
                f"destination holds {len(dst)} bytes, the value needs {self.data_size}"
            )
        self._writer(dst[: self.data_size])

    def __repr__(self) -> str:
        return f"Encoded(kind={self.kind!r}, data_size={self.data_size})"


def encode(value: object) -> Encoded:
    """Measure ``value`` and return how to write it; raises ``TypeError`` for other types."""
    if isinstance(value, np.ndarray):
        return _encode_ndarray(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _encode_bytes(memoryview(value))
    arrow = sys.modules.get("pyarrow")  # an Arrow value implies pyarrow is already imported
    if arrow is not None and isinstance(
        value, (arrow.Array, arrow.ChunkedArray, arrow.RecordBatch, arrow.Table, arrow.Tensor)
    ):
        return _encode_arrow(value)
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, pd.DataFrame):
        import pyarrow as pa

        return _encode_arrow(pa.Table.from_pandas(value), kind=PANDAS_DATAFRAME)
    raise TypeError(
        f"cannot store a {type(value).__module__}.{type(value).__qualname__}: supported are "
        "numpy.ndarray, bytes, bytearray, memoryview, pyarrow Array, ChunkedArray, "
        "RecordBatch, Table, Tensor and pandas DataFrame"
    )


def decode(data: memoryview | bytes, metadata: bytes | memoryview) -> Any:
    """Rebuild the value stored by ``encode`` as a zero-copy, read-only view of ``data``.

    Raises :class:`~plasma.errors.BadRequest` when ``metadata`` is not a header written by
    ``encode`` or ``data`` does not hold what the header describes.
    """
    header = _parse_header(metadata)
    view = memoryview(data).cast("B").toreadonly()
    if header.kind == NDARRAY:
        return _decode_ndarray(view, header)
    if header.kind == BYTES:
        return view
    return _decode_arrow(view, header.kind)


def _parse_header(metadata: bytes | memoryview) -> _Header:
    return _parse_header_bytes(bytes(metadata))


@functools.lru_cache(maxsize=1024)
def _parse_header_bytes(raw: bytes) -> _Header:
    if raw[: len(MAGIC)] != MAGIC or len(raw) <= len(MAGIC):
        raise BadRequest(
            f"metadata {raw[:16]!r} is not a plasma.serialization header; the object was "
            "not stored by put(): read it as raw bytes instead"
        )
    version = raw[len(MAGIC)]
    if version != VERSION:
        raise BadRequest(
            f"serialization header version {version} is not supported (this plasma-coord "
            f"reads version {VERSION})"
        )
    try:
        header = _header_decoder.decode(raw[len(MAGIC) + 1 :])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequest(f"corrupt serialization header: {exc}") from None
    if header.kind not in KINDS:
        raise BadRequest(f"unknown serialized kind {header.kind!r}; known: {', '.join(KINDS)}")
    return header


# ---------------------------------------------------------------- numpy


def _encode_ndarray(arr: np.ndarray) -> Encoded:
    if isinstance(arr, np.ma.MaskedArray):
        raise TypeError("masked arrays are not supported: store .data and .mask separately")
    if arr.dtype.hasobject:
        raise TypeError(
            f"numpy arrays of dtype {arr.dtype} hold Python object pointers, which cannot be "
            "shared: convert to a fixed-width dtype or to an Arrow array first"
        )
    fortran = bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)
    header = _Header(NDARRAY, _dtype_to_str(arr.dtype), tuple(arr.shape), fortran)

    def write(dst: memoryview) -> None:
        out = np.ndarray(arr.shape, arr.dtype, buffer=dst, order="F" if fortran else "C")
        np.copyto(out, arr, casting="no")

    return Encoded(header, arr.nbytes, write)


def _dtype_to_str(dtype: np.dtype) -> str:
    if dtype.fields is None and dtype.subdtype is None:
        return dtype.str
    return repr(np.lib.format.dtype_to_descr(dtype))


@functools.lru_cache(maxsize=256)
def _dtype_from_str(text: str) -> np.dtype:
    try:
        if text.startswith(("[", "(")):
            return np.lib.format.descr_to_dtype(ast.literal_eval(text))
        return np.dtype(text)
    except (ValueError, TypeError, SyntaxError) as exc:
        raise BadRequest(f"corrupt numpy dtype {text!r} in serialization header: {exc}") from None


def _decode_ndarray(view: memoryview, header: _Header) -> np.ndarray:
    dtype = _dtype_from_str(header.dtype)
    if dtype.hasobject:
        raise BadRequest("serialization header describes an object dtype")
    if any(n < 0 for n in header.shape):
        raise BadRequest(f"negative dimension in shape {header.shape}")
    count = math.prod(header.shape)
    if count * dtype.itemsize > len(view):
        raise BadRequest(
            f"array of shape {header.shape} and dtype {dtype} needs {count * dtype.itemsize} "
            f"bytes, the object holds {len(view)}"
        )
    # frombuffer keeps the read-only memoryview as the base, so the view cannot be made
    # writeable again (np.ndarray(buffer=...) would expose the writable exporter instead)
    try:
        flat = np.frombuffer(view, dtype, count=count)
        return flat.reshape(header.shape, order="F" if header.fortran else "C")
    except (ValueError, TypeError) as exc:
        raise BadRequest(
            f"cannot view the object as a {dtype} array {header.shape}: {exc}"
        ) from None


# ---------------------------------------------------------------- raw bytes


def _encode_bytes(mv: memoryview) -> Encoded:
    def write(dst: memoryview) -> None:
        dst[:] = mv.cast("B") if mv.c_contiguous else mv.tobytes()

    return Encoded(_Header(BYTES), mv.nbytes, write)


# ---------------------------------------------------------------- Arrow


def _encode_arrow(value: Any, kind: str | None = None) -> Encoded:
    import pyarrow as pa

    emit: Callable[[Any], None]
    if isinstance(value, pa.Tensor):
        kind = ARROW_TENSOR

        def emit(sink: Any) -> None:
            pa.ipc.write_tensor(value, sink)

    else:
        if isinstance(value, pa.Array):
            kind = ARROW_ARRAY
            value = pa.RecordBatch.from_arrays([value], [_COLUMN])
        elif isinstance(value, pa.ChunkedArray):
            kind = ARROW_CHUNKED_ARRAY
            value = pa.Table.from_arrays([value], [_COLUMN])
        elif kind is None:
            kind = ARROW_RECORD_BATCH if isinstance(value, pa.RecordBatch) else ARROW_TABLE
        table_or_batch = value

        def emit(sink: Any) -> None:
            with pa.ipc.new_stream(sink, table_or_batch.schema) as writer:
                writer.write(table_or_batch)

    mock = pa.MockOutputStream()
    emit(mock)
    size = mock.size()

    def write(dst: memoryview) -> None:
        sink = pa.FixedSizeBufferWriter(pa.py_buffer(dst))
        emit(sink)
        if sink.tell() != size:
            raise RuntimeError(f"Arrow IPC wrote {sink.tell()} bytes, measured {size}")

    return Encoded(_Header(kind), size, write)


def _decode_arrow(view: memoryview, kind: str) -> Any:
    import pyarrow as pa

    buf = pa.py_buffer(view)
    try:
        if kind == ARROW_TENSOR:
            return pa.ipc.read_tensor(pa.BufferReader(buf))
        reader = pa.ipc.open_stream(buf)
        if kind in (ARROW_ARRAY, ARROW_RECORD_BATCH):
            batch = reader.read_next_batch()
            return batch.column(0) if kind == ARROW_ARRAY else batch
        table = reader.read_all()
    except (pa.ArrowException, StopIteration) as exc:
        raise BadRequest(f"corrupt Arrow IPC data for a {kind}: {exc}") from None
    if kind == ARROW_CHUNKED_ARRAY:
        return table.column(0)
    if kind == PANDAS_DATAFRAME:
        return table.to_pandas(split_blocks=True)
    return table
