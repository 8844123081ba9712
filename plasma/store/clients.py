"""What the store keeps per client: its references, the objects it is writing, its
waiting requests and its arena. The store changes these; this module only holds them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plasma.store.arenas import Arena
    from plasma.store.waiters import CreateWaiter, GetWaiter


class ClientRecord:
    __slots__ = (
        "arena",
        "creating",
        "id",
        "label",
        "node",
        "reclaim_at",
        "ref_bytes",
        "refs",
        "waiters",
    )

    def __init__(self, client_id: int, node: int | None, label: str = "") -> None:
        self.id = client_id
        self.node = node
        self.label = label or f"client {client_id}"
        self.refs: dict[bytes, int] = {}
        self.ref_bytes = 0  # allocated bytes of the objects in ``refs``
        self.reclaim_at = -math.inf  # when it was last sent an AskReclaim
        self.creating: set[bytes] = set()
        self.waiters: set[GetWaiter | CreateWaiter] = set()
        self.arena: Arena | None = None
