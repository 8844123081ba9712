"""A client's handshake and its shared tables (internal): ``Connect`` and ``Tables``.

``Connect`` registers the client with the store and answers with what it needs to work
alone: nodes, sizes, and the fds of the shared tables of reads without requests
(:mod:`plasma.shared_tables`: the directory, and a new pin table of its own). ``Tables``
sends the directory again once the store rebuilt it. This module owns when a client is sent
the directory's fds: at most one set is ever in flight to a client. It must never write the
tables (the store does).
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING

from plasma import protocol as p
from plasma.coordinator.session import Hangup, Session
from plasma.directory import pin_table_size
from plasma.errors import PlasmaError
from plasma.segments import BASE_PAGE
from plasma.shared_tables import close_map, new_pin_table

if TYPE_CHECKING:
    from plasma.coordinator.server import Coordinator

__all__ = ["connect", "tables"]

log = logging.getLogger("plasma.coordinator")


def connect(coord: Coordinator, session: Session, msg: p.Connect) -> None:
    if msg.protocol_version != p.PROTOCOL_VERSION:
        raise Hangup(
            f"protocol version {msg.protocol_version} is not supported "
            f"(this coordinator speaks {p.PROTOCOL_VERSION})"
        )
    config = coord.config
    node = None
    if msg.cpus and config.node_of_cpus is not None:
        node = config.node_of_cpus(msg.cpus)
    if node not in config.memory:
        node = None
    session.name = msg.client_name
    tables_info, fds = _tables_for(coord, session)
    session.connected = True
    session.handshake.deadline = math.inf
    label = f"client {session.client_id} {msg.client_name!r} (pid {session.pid})"
    coord.store.register_client(session.client_id, node, pins=session.pin_table, label=label)
    session.send(
        p.Connected(
            seq=msg.seq,
            client_id=session.client_id,
            protocol_version=p.PROTOCOL_VERSION,
            capacity=sum(coord.budgets.values()),
            nodes=[
                p.NodeInfo(id=n, capacity=b, cpus=config.node_cpus.get(n, []))
                for n, b in sorted(coord.budgets.items())
            ],
            page_sizes=sorted({coord.pool.page_size, BASE_PAGE}),
            max_frame=config.max_frame,
            max_object_size=coord.max_object_size,
            node=node,
            alignment=coord.store.alignment,
            tables=tables_info,
        ),
        fds,
        owned=True,
    )


def _tables_for(coord: Coordinator, session: Session) -> tuple[p.TablesInfo | None, list[int]]:
    """A new client's pin table, and what Connected says of the tables, with their fds
    (new ones, closed once sent). Without tables (``pins_per_client`` 0, or no memory
    for them) the client reads through requests only."""
    entries = coord.config.pins_per_client
    if not entries:
        return None, []
    size = pin_table_size(entries)
    try:
        pin_fd, session.pin_table = new_pin_table(size)
    except PlasmaError as exc:
        log.warning("client %d reads through requests only: %s", session.client_id, exc)
        return None, []
    try:
        fds = coord.tables.descriptors(writable=session.writable)
    except (PlasmaError, OSError) as exc:
        os.close(pin_fd)
        close_map(session.pin_table)
        session.pin_table = None
        log.warning("client %d reads through requests only: %s", session.client_id, exc)
        return None, []
    access = coord.tables.access_size if session.writable else 0
    session.tables_token = coord.store.directory_token
    return p.TablesInfo(coord.tables.directory_size, access, size), [*fds, pin_fd]


def tables(coord: Coordinator, session: Session, msg: p.Tables) -> None:
    """The current directory, for a client whose directory was superseded: only when it
    names the last one it was sent (it mapped that: nothing is on its way), so however
    often a client asks, and whether or not it reads, at most one set of the
    directory's descriptors is ever in flight to it."""
    current = coord.store.directory_token
    if session.pin_table is None or msg.have != session.tables_token or msg.have == current:
        session.send(p.TablesMoved(seq=msg.seq))
        return
    try:
        fds = coord.tables.descriptors(writable=session.writable)
    except (PlasmaError, OSError) as exc:  # it reads through requests meanwhile
        log.warning("client %d keeps a stale directory: %s", session.client_id, exc)
        session.send(p.TablesMoved(seq=msg.seq))
        return
    session.tables_token = current
    access = coord.tables.access_size if session.writable else 0
    info = p.TablesInfo(coord.tables.directory_size, access)
    session.send(p.TablesMoved(seq=msg.seq, tables=info), fds, owned=True)
