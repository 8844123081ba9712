"""Zero-copy layouts of numpy arrays, Arrow data, raw bytes and pickles in an object buffer.

(Internal.)

``encode(value)`` measures a value and returns an :class:`Encoded` that writes it straight
into a destination buffer (the object's shared memory), with no intermediate copy.
``decode(data, metadata)`` rebuilds the value as a view of ``data``: numpy arrays are
read-only ``np.ndarray`` views, Arrow objects are read from an IPC stream whose buffers
point into ``data``, raw bytes come back as a read-only ``memoryview``.

The object's metadata is a small versioned header, ``MAGIC`` + one version byte + a
MessagePack record of the kind, so ``decode`` returns the type that was stored.

Kinds: numpy ``ndarray`` (any fixed-width dtype, C or Fortran order; other layouts are
made contiguous while writing; any other object exporting DLPack on the CPU is stored as
the numpy array ``numpy.from_dlpack`` gives), ``torch.tensor`` (a CPU torch tensor: dtype,
shape and strides in the header, see :mod:`plasma.torch_tensors`; torch has no read-only
tensors, so they are built over ``data`` only when it is writable, a private copy-on-write
mapping of the object: see :func:`holds_tensors`), ``bytes`` / ``bytearray`` /
``memoryview``, pyarrow
``Array``, ``ChunkedArray``, ``RecordBatch``, ``Table`` and ``Tensor`` (Arrow IPC; chunk
boundaries survive, except that the IPC writer may drop empty chunks), and ``pickle5``:
every other picklable value (dicts, lists, scalars, dataclasses, pandas ``DataFrame`` and
``Series``...), pickled with protocol 5. Its out-of-band buffers (``pickle.PickleBuffer``:
contiguous numpy arrays, Arrow buffers, pandas blocks, bytearrays) are copied once, each to
a 64-byte aligned offset after the in-band pickle bytes (so are the bytes of the CPU torch
tensors inside, which torch itself would pickle in-band), and handed back to
``pickle.loads`` as read-only views of ``data``, so the arrays inside come back zero-copy
and read-only. Decoding a ``pickle5`` object runs the unpickling code of the classes it
names, in the reader: only read objects from writers you trust (see the README's
Security section: read-write uids are trusted writers of the whole store).

``pandas.dataframe`` (a DataFrame as an Arrow table) is still decoded, for objects
written by earlier versions, but no longer written: pickle keeps the index, dtypes and
extension types exactly. pyarrow, pandas and torch are imported only when a value of theirs
is encoded or such an object is decoded (unpickling imports what the pickle names).
"""

from __future__ import annotations

import ast
import functools
import io
import math
import pickle
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from plasma import torch_tensors
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
PANDAS_DATAFRAME = "pandas.dataframe"  # decoded only: DataFrames are now written as pickle5
PICKLE5 = "pickle5"
TORCH_TENSOR = "torch.tensor"
KINDS = (
    NDARRAY,
    TORCH_TENSOR,
    BYTES,
    ARROW_ARRAY,
    ARROW_CHUNKED_ARRAY,
    ARROW_RECORD_BATCH,
    ARROW_TABLE,
    ARROW_TENSOR,
    PANDAS_DATAFRAME,
    PICKLE5,
)
ALIGNMENT = 64  # out-of-band pickle buffers start at multiples of this (objects themselves do)
_COLUMN = "_"  # column name of a lone Array / ChunkedArray carried as a one-column stream


class _Header(msgspec.Struct, array_like=True, frozen=True):
    kind: str
    dtype: str = ""  # numpy only: dtype.str, or repr() of the .npy descr for structured dtypes
    shape: tuple[int, ...] = ()
    fortran: bool = False
    inband: int = 0  # pickle5 only: length of the in-band pickle bytes, at offset 0
    buffers: tuple[tuple[int, int], ...] = ()  # pickle5 only: (offset, length) per buffer
    strides: tuple[int, ...] = ()  # torch.tensor only: in elements (dtype: torch's name)
    tensors: tuple[int, ...] = ()  # pickle5 only: the buffers torch tensors are built over


_header_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(_Header)


# copy([(dst, src), ...]): the bytes of each contiguous buffer ``src`` into its ``dst``, of
# the same size (all in one call: they may be copied in parallel)
Copy = Callable[[list[tuple[memoryview, Any]]], None]


def _assign(pairs: list[tuple[memoryview, Any]]) -> None:
    for dst, src in pairs:
        dst[:] = src


class Encoded:
    """A measured value: ``data_size`` bytes of data and its ``metadata`` header.

    ``write(dst, copy)`` writes exactly ``data_size`` bytes at the start of ``dst``; ``copy``
    (default: a plain copy in this thread) copies the large contiguous parts, the bytes of
    arrays, buffers and pickle buffers (Arrow data is written by its IPC writer).
    """

    __slots__ = ("_writer", "data_size", "kind", "metadata")

    def __init__(
        self, header: _Header, data_size: int, writer: Callable[[memoryview, Copy | None], None]
    ) -> None:
        self.kind = header.kind
        self.data_size = data_size
        self.metadata = MAGIC + bytes((VERSION,)) + _header_encoder.encode(header)
        self._writer = writer

    def write(self, dst: memoryview, copy: Copy | None = None) -> None:
        dst = memoryview(dst).cast("B")
        if dst.readonly:
            raise BadRequest("destination buffer is read-only")
        if len(dst) < self.data_size:
            raise BadRequest(
                f"destination holds {len(dst)} bytes, the value needs {self.data_size}"
            )
        self._writer(dst[: self.data_size], copy)

    def __repr__(self) -> str:
        return f"Encoded(kind={self.kind!r}, data_size={self.data_size})"


def _is_masked(array: np.ndarray) -> bool:
    """Whether ``array`` is a masked array, whose elements (and mask) are pickled. Looked up
    in ``sys.modules``: ``np.ma`` would import numpy.ma (~10-30 ms) on a process's first
    put, and a masked array exists only once it is imported."""
    ma = sys.modules.get("numpy.ma")
    return ma is not None and isinstance(array, ma.MaskedArray)


def encode(value: object) -> Encoded:
    """Measure ``value`` and return how to write it; ``TypeError`` if it cannot be pickled."""
    if isinstance(value, np.ndarray) and not (value.dtype.hasobject or _is_masked(value)):
        return _encode_ndarray(value)  # (object and masked arrays are pickled)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _encode_bytes(memoryview(value))
    arrow = sys.modules.get("pyarrow")  # an Arrow value implies pyarrow is already imported
    if arrow is not None and isinstance(
        value, (arrow.Array, arrow.ChunkedArray, arrow.RecordBatch, arrow.Table, arrow.Tensor)
    ):
        return _encode_arrow(value)
    if torch_tensors.is_tensor(value):
        tensor: Any = value
        form = torch_tensors.stored_form(tensor)
        if form is not None and type(form) is type(tensor) and not tensor.requires_grad:
            return _encode_tensor(form)  # (a Parameter, or one requiring grad: pickled)
    elif not isinstance(value, np.ndarray) and hasattr(type(value), "__dlpack__"):
        return _encode_ndarray(_from_dlpack(value))
    # everything else, pandas DataFrame and Series included: pandas pickles its blocks as
    # out-of-band buffers, so numeric columns come back as views of the object
    return _encode_pickle5(value)


def holds_tensors(metadata: bytes | memoryview) -> bool:
    """Whether the object ``metadata`` describes decodes to torch tensors. Torch has no
    read-only tensors: give :func:`decode` a private (copy-on-write) view of such an object,
    or its tensors are copies."""
    header = _parse_header(metadata)
    return header.kind == TORCH_TENSOR or bool(header.tensors)


def decode(
    data: memoryview | bytes, metadata: bytes | memoryview, *, writable: bool = False
) -> Any:
    """Rebuild the value stored by ``encode`` as a zero-copy, read-only view of ``data``
    (with ``writable``, a writable one: numpy arrays and raw buffers the caller may modify,
    ``data`` being a private copy-on-write mapping of the object).

    Torch tensors are built over ``data`` itself when it is writable, whatever
    ``writable`` says (they cannot be read-only; see :func:`holds_tensors`), else over a copy.

    Raises :class:`~plasma.errors.BadRequest` when ``metadata`` is not a header written by
    ``encode`` or ``data`` does not hold what the header describes.
    """
    header = _parse_header(metadata)
    source = memoryview(data).cast("B")
    view = source if writable else source.toreadonly()
    if header.kind == NDARRAY:
        return _decode_ndarray(view, header)
    if header.kind == BYTES:
        return view
    if header.kind == PICKLE5:
        return _decode_pickle5(view, header, source)
    if header.kind == TORCH_TENSOR:
        form = torch_tensors.Layout(header.dtype, header.shape, header.strides, len(source))
        return torch_tensors.rebuild(source, form)
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
    fortran = bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)
    header = _Header(NDARRAY, _dtype_to_str(arr.dtype), tuple(arr.shape), fortran)

    def write(dst: memoryview, copy: Copy | None) -> None:
        if copy is not None and (arr.flags.c_contiguous or arr.flags.f_contiguous):
            copy([(dst, arr.view(np.ndarray).ravel(order="K").view(np.uint8))])  # memory order
            return
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


def _from_dlpack(value: Any) -> np.ndarray:
    """A numpy view of the memory a DLPack exporter (JAX, CuPy's host arrays...) shares."""
    try:
        return np.from_dlpack(value)
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        raise TypeError(
            f"cannot store a {_describe(value)} through DLPack: {type(exc).__name__}: {exc} "
            "(numpy reads DLPack exports on the CPU, of the dtypes numpy has; put a torch "
            "tensor of it, torch.from_dlpack(value), for bfloat16 and float8)"
        ) from exc


# ---------------------------------------------------------------- torch


def _encode_tensor(tensor: Any) -> Encoded:
    form, raw = torch_tensors.layout(tensor)
    header = _Header(TORCH_TENSOR, form.dtype, form.shape, strides=form.strides)

    def write(dst: memoryview, copy: Copy | None) -> None:
        if raw is None:
            torch_tensors.write_compact(dst, tensor, form)
        elif form.nbytes:
            (copy or _assign)([(dst, raw)])

    return Encoded(header, form.nbytes, write)


def _rebuild_tensor(
    buf: memoryview,
    dtype: str,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    requires_grad: bool,
    parameter: bool,
) -> Any:
    """Unpickle a tensor of :class:`_Pickler`: over ``buf`` (see :func:`decode`)."""
    tensor = torch_tensors.rebuild(buf, torch_tensors.Layout(dtype, shape, strides, len(buf)))
    if parameter:
        import torch

        return torch.nn.Parameter(tensor, requires_grad)
    return tensor.requires_grad_(requires_grad)


# ---------------------------------------------------------------- raw bytes


def _encode_bytes(mv: memoryview) -> Encoded:
    def write(dst: memoryview, copy: Copy | None) -> None:
        (copy or _assign)([(dst, mv.cast("B") if mv.c_contiguous else mv.tobytes())])

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

    def write(dst: memoryview, copy: Copy | None) -> None:
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


# ---------------------------------------------------------------- pickle protocol 5


def _encode_pickle5(value: object) -> Encoded:
    raws: list[memoryview] = []
    tensors: list[int] = []  # indices in raws of the buffers of torch tensors

    def keep(buf: pickle.PickleBuffer) -> bool:
        try:
            raw = buf.raw()  # one flat byte view of the source, C or Fortran order
        except BufferError:
            return True  # not contiguous: in-band (pickle refuses such buffers, see below)
        if id(buf) in pickler.tensor_buffers:
            tensors.append(len(raws))
        raws.append(raw)
        return False

    try:
        sink = io.BytesIO()
        pickler = _Pickler(sink, protocol=5, buffer_callback=keep)
        pickler.dump(value)
        inband = sink.getvalue()
    except Exception as exc:
        for raw in raws:
            raw.release()
        raise TypeError(
            f"cannot store a {_describe(value)}: {type(exc).__name__}: {exc} (values other "
            "than numpy arrays, bytes and Arrow objects are stored with pickle protocol 5)"
        ) from exc
    layout: list[tuple[int, int]] = []
    end = len(inband)
    for raw in raws:
        offset = -(-end // ALIGNMENT) * ALIGNMENT
        layout.append((offset, raw.nbytes))
        end = offset + raw.nbytes
    header = _Header(PICKLE5, inband=len(inband), buffers=tuple(layout), tensors=tuple(tensors))

    def write(dst: memoryview, copy: Copy | None) -> None:
        dst[: len(inband)] = inband
        pos = len(inband)
        pairs = []
        for (offset, length), raw in zip(layout, raws, strict=True):
            dst[pos:offset] = bytes(offset - pos)  # zeroed padding: equal values, equal bytes
            pairs.append((dst[offset : offset + length], raw))
            pos = offset + length
        (copy or _assign)(pairs)  # every buffer in one call: small ones in parallel too

    return Encoded(header, end, write)


class _Pickler(pickle.Pickler):
    """Protocol 5 with every contiguous plain ndarray and every CPU torch tensor
    :mod:`plasma.torch_tensors` stores out-of-band, byte order kept.

    numpy itself pickles datetime64 / timedelta64 arrays in-band (and in native byte
    order), since they do not export the buffer protocol; here their bytes go out-of-band
    like any other fixed-width array's. Torch pickles a tensor's storage in-band, through
    ``torch.save``; here its bytes go out-of-band too (``tensor_buffers``: the ids of their
    ``PickleBuffer`` objects, for the buffer callback).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tensor_buffers: set[int] = set()

    def reducer_override(self, obj: Any) -> Any:
        if torch_tensors.is_tensor(obj):
            return self._reduce_tensor(obj)
        if (
            type(obj) is not np.ndarray
            or obj.dtype.hasobject
            or obj.dtype.itemsize == 0
            or not (obj.flags.c_contiguous or obj.flags.f_contiguous)
        ):
            return NotImplemented  # pickled as usual
        fortran = bool(obj.flags.f_contiguous and not obj.flags.c_contiguous)
        # the bytes in memory order (a view: the array is contiguous); datetime arrays do not
        # export the buffer protocol themselves
        raw: Any = obj.ravel(order="K").view(np.uint8)  # numpy stubs: not a Buffer on 3.11
        return _rebuild_ndarray, (pickle.PickleBuffer(raw), obj.dtype, obj.shape, fortran)

    def _reduce_tensor(self, obj: Any) -> Any:
        tensor = torch_tensors.stored_form(obj)
        if tensor is None:
            return NotImplemented  # torch's own pickling
        form, raw = torch_tensors.layout(tensor)
        if raw is None:  # not dense: its elements in C order, copied once here
            form, raw = torch_tensors.layout(tensor.contiguous())
        buf = pickle.PickleBuffer(raw)  # type: ignore[arg-type]  # (contiguous: not None)
        self.tensor_buffers.add(id(buf))
        parameter = type(obj) is not type(tensor)
        return _rebuild_tensor, (buf, *form[:3], obj.requires_grad, parameter)


def _rebuild_ndarray(buf: Any, dtype: np.dtype, shape: tuple[int, ...], fortran: bool) -> Any:
    """Unpickle an array of :class:`_Pickler`: a view of ``buf``, read-only if it is."""
    flat = np.frombuffer(buf, dtype, count=math.prod(shape))
    return flat.reshape(shape, order="F" if fortran else "C")


def _describe(value: object) -> str:
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    try:
        own = getattr(value, "__qualname__", None)  # functions and classes have one
    except Exception:
        own = None
    return f"{own} ({name})" if isinstance(own, str) else name


def _decode_pickle5(view: memoryview, header: _Header, source: memoryview) -> Any:
    """Unpickle, handing buffers as read-only views of ``view`` (tensors': of ``source``)."""
    size = len(view)
    if not 0 < header.inband <= size:
        raise BadRequest(f"pickle of {header.inband} bytes does not fit the object's {size}")
    buffers = []
    for offset, length in header.buffers:
        if offset < header.inband or length < 0 or offset + length > size:
            raise BadRequest(
                f"pickle buffer at {offset} of {length} bytes lies outside the object's "
                f"{size} bytes (after the {header.inband}-byte pickle)"
            )
        buffers.append(view[offset : offset + length])
    for i in header.tensors:
        if not 0 <= i < len(buffers):
            raise BadRequest(f"tensor buffer {i} of {len(buffers)} buffers")
        offset, length = header.buffers[i]
        buffers[i] = source[offset : offset + length]
    try:
        return pickle.loads(view[: header.inband], buffers=buffers)
    except Exception as exc:
        raise BadRequest(f"cannot unpickle the object: {type(exc).__name__}: {exc}") from exc
