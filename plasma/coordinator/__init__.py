"""The trio coordinator (internal): accepts clients on a Unix socket and moves frames and fds.

All object state lives in the sans-I/O :class:`plasma.store.Store`; the coordinator only
decodes requests, calls the store, encodes replies, attaches segment fds (SCM_RIGHTS, once
per segment per client), carries out the store's events (finished waits, notifications,
I/O) and relays ``RunCall``s to run owners. One concern a module (each docstring says what
it owns and must never do):

* :mod:`~plasma.coordinator.config`: what ``serve`` was asked for, and the memory budgets.
* :mod:`~plasma.coordinator.listener`: the listening socket, accepting, refusing, hanging up.
* :mod:`~plasma.coordinator.session`: one client's socket, decoder and outbox.
* :mod:`~plasma.coordinator.handlers`: the handler table (request type -> handler) and the
  dispatch; the handlers are in :mod:`~plasma.coordinator.handshake` (``Connect`` and the
  shared tables), :mod:`~plasma.coordinator.object_requests`,
  :mod:`~plasma.coordinator.stats` and :mod:`~plasma.coordinator.runs` (the run relay and
  task telemetry).
* :mod:`~plasma.coordinator.replies`: the replies that hand clients segment fds.
* :mod:`~plasma.coordinator.delivery`: the event table (store event type -> delivery).
* :mod:`~plasma.coordinator.page_mover`: copies replicas' bytes and moves pages between
  nodes, as :mod:`plasma.spiller` writes and reads spill files: I/O only.
* :mod:`~plasma.coordinator.server`: :class:`Coordinator`, which wires them.

The rest of plasma imports from here, never from the modules themselves.
"""

from plasma.coordinator.config import CoordinatorConfig, node_budgets
from plasma.coordinator.server import MESSAGES_PER_TURN, Coordinator, serve

__all__ = ["MESSAGES_PER_TURN", "Coordinator", "CoordinatorConfig", "node_budgets", "serve"]
