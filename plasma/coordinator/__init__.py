"""The trio coordinator (internal): see :mod:`plasma.coordinator.server`.

The rest of plasma imports from here, never from the modules themselves.
"""

from plasma.coordinator.server import (
    MESSAGES_PER_TURN,
    Coordinator,
    CoordinatorConfig,
    node_budgets,
    serve,
)

__all__ = ["MESSAGES_PER_TURN", "Coordinator", "CoordinatorConfig", "node_budgets", "serve"]
