"""CPU torch tensors as bytes in an object, and back as tensors over those bytes (internal).

:mod:`plasma.serialization` asks here whether a value is a tensor it can store, for the bytes
to write and the layout to record, and for the tensor a layout describes over the bytes of an
object. Nothing here imports torch until a tensor is given or asked for: :func:`is_tensor`
looks at ``sys.modules`` (a process holding a tensor has imported torch already), and
:func:`rebuild` imports it to read one back.

What is stored zero-copy: tensors of type ``torch.Tensor`` or ``torch.nn.Parameter`` on the
CPU, strided, not quantized, of any dtype whose elements can be viewed as bytes (every
integer, float, complex and bool dtype, bfloat16 and the float8 ones included); one that
requires grad comes back as a leaf that requires grad, as torch's pickling does. A
*dense* tensor (its elements fill one contiguous span of memory in some order of the
dimensions: contiguous, transposed, permuted, channels-last) is written as that span and
read back with the same strides; any other one (a step slice, an expanded view) is written
compactly in C order, as ``contiguous()`` would, and read back so. Conjugate and negative
views are resolved first. Other tensors (CUDA, sparse, quantized, subclasses) are left to
torch's own pickling, which copies them.

Torch has no read-only tensors, so a tensor read back is built over *writable* memory: the
caller must hand :func:`rebuild` a private (copy-on-write) view of the object, or it gets a
copy (see :func:`rebuild`).
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, NamedTuple

import numpy as np

from plasma.errors import BadRequest

__all__ = ["Layout", "is_tensor", "layout", "rebuild", "stored_form"]


class Layout(NamedTuple):
    """How a tensor's bytes lie in an object: ``dtype`` (torch's name: ``"bfloat16"``),
    ``shape`` and ``strides`` (in elements), and how many bytes they take."""

    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    nbytes: int


def is_tensor(value: object) -> bool:
    """Whether ``value`` is a torch tensor (of any kind), without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def stored_form(tensor: Any) -> Any | None:
    """``tensor`` ready to be stored zero-copy (conjugate and negative bits resolved,
    detached), or None when it is not one :mod:`plasma` stores (see the module docstring)."""
    import torch

    if (
        type(tensor) not in (torch.Tensor, torch.nn.Parameter)
        or tensor.device.type != "cpu"
        or tensor.layout != torch.strided
        or tensor.is_quantized
    ):
        return None
    return tensor.detach().resolve_conj().resolve_neg() if _has_bytes(tensor.dtype) else None


@functools.lru_cache(maxsize=64)
def _has_bytes(dtype: Any) -> bool:
    """Whether tensors of ``dtype`` can be viewed as bytes (quantized and bits ones: no)."""
    import torch

    try:
        torch.empty(0, dtype=dtype).view(torch.uint8)
    except RuntimeError:
        return False
    return True


def layout(tensor: Any) -> tuple[Layout, np.ndarray | None]:
    """The layout of a tensor from :func:`stored_form`, and its bytes as a flat uint8 array
    (a view of its memory) when it is dense or empty; None when it must be copied compactly."""
    import torch

    dtype = str(tensor.dtype).removeprefix("torch.")
    shape, strides = tuple(tensor.shape), tuple(tensor.stride())
    count = tensor.numel()
    nbytes = count * tensor.element_size()
    if not count:
        return Layout(dtype, shape, strides, 0), np.empty(0, np.uint8)
    if _dense(shape, strides):
        span = torch.as_strided(tensor, (count,), (1,), tensor.storage_offset())
        return Layout(dtype, shape, strides, nbytes), span.view(torch.uint8).numpy()
    return Layout(dtype, shape, _c_strides(shape), nbytes), None


def write_compact(dst: memoryview, tensor: Any, form: Layout) -> None:
    """Copy a non-dense ``tensor`` into ``dst`` in C order (``form``'s strides)."""
    import torch

    target = torch.frombuffer(dst, dtype=torch.uint8).view(_dtype(form.dtype))
    target.view(form.shape).copy_(tensor)


def rebuild(buf: memoryview, form: Layout) -> Any:
    """The tensor ``form`` describes, over ``buf`` (its bytes) when ``buf`` is writable, else
    over a private copy of them: torch would write through a read-only buffer."""
    import torch

    dtype = _dtype(form.dtype)
    if len(form.strides) != len(form.shape) or min((*form.shape, *form.strides), default=0) < 0:
        raise BadRequest(f"corrupt tensor layout: shape {form.shape}, strides {form.strides}")
    span = 1 + sum((n - 1) * s for n, s in zip(form.shape, form.strides, strict=True))
    if 0 not in form.shape and span * dtype.itemsize > len(buf):
        raise BadRequest(
            f"a {form.dtype} tensor {form.shape} with strides {form.strides} needs "
            f"{span * dtype.itemsize} bytes, the object holds {len(buf)}"
        )
    try:
        if 0 in form.shape:
            return torch.empty_strided(form.shape, form.strides, dtype=dtype)
        source: Any = buf if not buf.readonly else bytearray(buf[: span * dtype.itemsize])
        flat = torch.frombuffer(source, dtype=dtype, count=span)
        return flat.as_strided(form.shape, form.strides)
    except (RuntimeError, TypeError, ValueError) as exc:  # (sizes torch cannot hold)
        reason = str(exc).splitlines()[0]
        raise BadRequest(f"cannot rebuild a {form.dtype} tensor {form.shape}: {reason}") from None


@functools.lru_cache(maxsize=64)
def _dtype(name: str) -> Any:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise BadRequest(f"{name!r} is not a dtype of torch {torch.__version__}")
    return dtype


def _dense(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether the elements fill exactly ``prod(shape)`` consecutive slots (no gaps, no
    overlaps), in any order of the dimensions."""
    expected = 1
    for stride, size in sorted((s, n) for n, s in zip(shape, strides, strict=True) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
