"""plasma-coord: a NUMA-aware, Plasma-style shared-memory object store.

>>> import plasma, numpy as np
>>> with plasma.connect("/tmp/plasma-coord.sock") as client:   # doctest: +SKIP
...     oid = client.put(np.arange(10))
...     client.get_object(oid)

The public API is the names in ``__all__`` and these modules, each with its own ``__all__``:
``plasma.client`` (the blocking client, ``plasma.connect``), ``plasma.aio`` (the trio
client), ``plasma.compat`` (the ``pyarrow.plasma`` API), ``plasma.errors`` (exceptions and
their stable codes), ``plasma.ids`` (``ObjectID``), ``plasma.task`` (inside a DAG task) and
``plasma.dask`` (Dask distributed workers on the host's store; needs ``plasma-coord[dask]``).
Every other module is internal (its docstring says so) and may change without notice;
``tests/test_exports.py`` holds this list.

The client (and numpy/pyarrow with it), ``plasma.aio`` (and trio) and ``plasma.compat`` are
imported on first use, so the command line and the coordinator start quickly (the
coordinator never imports numpy: tests/test_coordinator_numpy.py).
"""

import importlib
from typing import TYPE_CHECKING, Any

from plasma.errors import (
    BadRequest,
    Disconnected,
    ObjectExists,
    ObjectLost,
    ObjectNotFound,
    ObjectNotSealed,
    PermissionDenied,
    PlacementImpossible,
    PlasmaError,
    PlasmaTimeout,
    SpillIOError,
    StoreFull,
    Unsupported,
)
from plasma.ids import ObjectID

if TYPE_CHECKING:
    from plasma import aio, compat
    from plasma.client import Client, Subscription, connect

__version__ = "0.1.0"

_LAZY = {"Client", "Subscription", "connect"}
_LAZY_MODULES = {"aio", "compat"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from plasma import client

        return getattr(client, name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"plasma.{name}")
    raise AttributeError(f"module 'plasma' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_LAZY_MODULES})


__all__ = [
    "BadRequest",
    "Client",
    "Disconnected",
    "ObjectExists",
    "ObjectID",
    "ObjectLost",
    "ObjectNotFound",
    "ObjectNotSealed",
    "PermissionDenied",
    "PlacementImpossible",
    "PlasmaError",
    "PlasmaTimeout",
    "SpillIOError",
    "StoreFull",
    "Subscription",
    "Unsupported",
    "aio",
    "compat",
    "connect",
    "errors",
]
