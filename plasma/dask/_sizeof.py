"""The size of a torch tensor for ``dask.sizeof`` (internal).

Dask measures values it does not know with ``sys.getsizeof``: 80 bytes for any tensor, so
the worker data store would keep every tensor in memory, below its threshold. This registers
the bytes of a tensor's elements: at once when torch is imported already (which also
replaces what dask may have cached for tensors measured before), else lazily, when dask first
measures a value of torch: nothing here imports torch.
"""

from __future__ import annotations

import sys
from typing import Any

from dask.sizeof import sizeof


def _register_torch() -> None:
    import torch

    @sizeof.register((torch.Tensor, torch.nn.Parameter))
    def _tensor(tensor: Any) -> int:
        return int(tensor.nelement() * tensor.element_size())


if "torch" in sys.modules:
    _register_torch()
else:
    sizeof.register_lazy("torch")(_register_torch)
