"""The internals of distributed that plasma.dask relies on, checked before use (internal).

distributed has no public hook for answering a transfer differently, so the worker plugin
uses three internals, each checked here so that a release which changed one stops the
plugin with a message naming the release and the internal, rather than run on with
results in a mapping the worker no longer reads (lost or stale data):

- ``worker.handlers["get_data"]`` is the worker's own ``get_data`` (not another plugin's
  wrapper), called with ``comm, keys, who, serializers``; it reads each value with
  ``self.data[key]`` in the handler's task (so :data:`plasma.dask._store.serving` is seen);
- ``worker.data`` (a property reading ``worker.memory_manager.data``) and
  ``worker.state.data`` are one mapping, and assigning both replaces it everywhere;
- ``worker.state.tasks`` maps each key to its task state, whose ``nbytes`` is the size the
  worker measured when it stored the result (read, not trusted: a key without one is sized
  again).

:func:`check_worker` checks what can be seen before installing; :func:`check_installed`
that the assignment took. ``tests/test_dask_internals.py`` pins the rest (the read through
``self.data`` in the handler's task) against the installed release.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, MutableMapping
from typing import Any, NoReturn

import distributed

from plasma.errors import Unsupported

GET_DATA_PARAMETERS = ("comm", "keys", "who", "serializers")  # what the plugin passes, by name


def check_worker(worker: Any) -> None:
    """Raise :class:`~plasma.errors.Unsupported` unless ``worker`` has the internals above."""
    handler = getattr(worker, "handlers", {}).get("get_data")
    own = getattr(worker, "get_data", None)
    if handler is None or own is None or handler != own:
        _fail(
            "worker.handlers['get_data'] is not the worker's own get_data method "
            f"(found {handler!r}): another plugin replaced it, or transfers are served "
            "another way"
        )
    parameters = inspect.signature(handler).parameters
    names = tuple(parameters)[: len(GET_DATA_PARAMETERS)]
    required = [
        name
        for name, p in parameters.items()
        if name not in GET_DATA_PARAMETERS
        and p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if names != GET_DATA_PARAMETERS or required:
        _fail(
            f"Worker.get_data takes {tuple(parameters)}, plasma.dask calls it with "
            f"{GET_DATA_PARAMETERS}"
        )
    state = getattr(worker, "state", None)
    if not isinstance(getattr(state, "tasks", None), Mapping):
        _fail("worker.state.tasks is not a mapping of the worker's task states")
    manager = getattr(worker, "memory_manager", None)
    data = getattr(worker, "data", None)
    if not (
        isinstance(data, MutableMapping)
        and getattr(state, "data", None) is data
        and getattr(manager, "data", None) is data
    ):
        _fail("worker.data, worker.state.data and worker.memory_manager.data are not one mapping")


def check_installed(worker: Any, data: MutableMapping[Any, object]) -> None:
    """Raise :class:`~plasma.errors.Unsupported` unless every path of ``worker`` to its
    results now leads to ``data``."""
    if worker.data is not data or worker.state.data is not data:
        _fail(
            "assigning worker.memory_manager.data and worker.state.data did not replace worker.data"
        )


def _fail(what: str) -> NoReturn:
    raise Unsupported(
        f"plasma.dask: distributed {distributed.__version__} is not supported: {what}. "
        "plasma.dask replaces the worker's data mapping and get_data handler (see "
        "plasma/dask/_internals.py); use a distributed release its tests pass with"
    )
