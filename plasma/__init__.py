"""plasma-coord: a NUMA-aware, Plasma-style shared-memory object store.

>>> import plasma, numpy as np
>>> with plasma.connect("/tmp/plasma-coord.sock") as client:   # doctest: +SKIP
...     oid = client.put(np.arange(10))
...     client.get_object(oid)

The client (and numpy/pyarrow with it) is imported on first use, so the command line and
the coordinator start quickly.
"""

from typing import TYPE_CHECKING, Any

from plasma.errors import (
    BadRequest,
    ObjectExists,
    ObjectNotFound,
    ObjectNotSealed,
    PermissionDenied,
    PlacementImpossible,
    PlasmaError,
    PlasmaTimeout,
    StoreFull,
    Unsupported,
)
from plasma.ids import ObjectID

if TYPE_CHECKING:
    from plasma.client import Client, Subscription, connect

__version__ = "0.1.0"

_LAZY = {"Client", "Subscription", "connect"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from plasma import client

        return getattr(client, name)
    raise AttributeError(f"module 'plasma' has no attribute {name!r}")


__all__ = [
    "BadRequest",
    "Client",
    "ObjectExists",
    "ObjectID",
    "ObjectNotFound",
    "ObjectNotSealed",
    "PermissionDenied",
    "PlacementImpossible",
    "PlasmaError",
    "PlasmaTimeout",
    "StoreFull",
    "Subscription",
    "Unsupported",
    "connect",
]
