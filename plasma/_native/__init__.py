"""The C part of the package (internal): the object directory's read path, and the
coordinator's bulk work.

``directory.h`` / ``directory.c`` are a plain C11 library (lookup, pin, re-check, unpin, and
the coordinator's ordered slot writes) that C programs compile against unchanged;
``module.c`` wraps it as :mod:`plasma._native._directory`, and ``fast_get.c`` adds the
client's plain get in one call (a ``Getter``: the C half of
:class:`~plasma._client_core.refs.Refs`). ``bulk.h`` / ``bulk.c`` (bound by
``bulk_module.c``) are the coordinator's bulk work: pin scans, a directory rebuild's
placement and moves, the generation index's compaction, one call each, so the coordinator
needs no numpy (:mod:`plasma._bulk_numpy` and the loops of :mod:`plasma.store.slots` are
their fallback). ``native`` is that module, or
None where it was not built or cannot be loaded (``unavailable`` then says why), or where
``$PLASMA_COORD_NATIVE`` is ``0`` (the Python read path, for comparison and tests).
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["native", "unavailable"]

native: ModuleType | None
unavailable: str | None  # why native is None, unless it was turned off on purpose

if os.environ.get("PLASMA_COORD_NATIVE", "1") == "0":
    native, unavailable = None, None
else:
    try:
        from plasma._native import _directory as native
    except ImportError as exc:
        native, unavailable = None, f"{type(exc).__name__}: {exc}"
    else:
        unavailable = None
