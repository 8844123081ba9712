"""The size of a torch tensor for ``dask.sizeof`` (internal).

Dask measures values it does not know with ``sys.getsizeof``: 80 bytes for any tensor, so
the worker data store would keep every tensor in memory, below its threshold. This registers
the bytes of a tensor's elements, lazily: torch is imported only by whoever made a tensor.
"""

from __future__ import annotations

from typing import Any

from dask.sizeof import sizeof


@sizeof.register_lazy("torch")
def _register_torch() -> None:
    import torch

    @sizeof.register(torch.Tensor)
    def _tensor(tensor: Any) -> int:
        return int(tensor.nelement() * tensor.element_size())
