"""The coordinator (internal): one store, its memory and its clients, and the parts wired
around them.

:class:`Coordinator` builds the :class:`~plasma.store.Store` and its segment pool, serves
each connection the :class:`~plasma.coordinator.listener.Listener` hands it (read requests,
:func:`~plasma.coordinator.handlers.handle` them, deliver the store's events), and runs the
loops that wake the store (deadlines, readers followed) and the I/O parts (spiller, page
mover, telemetry, metrics, dashboard). It keeps the state that joins the parts: the sessions,
the requests parked on the store, the replies waiting for a pin scan. It must never answer
a request nor carry out an event itself: the handler table and the delivery table do.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from plasma import errors
from plasma import protocol as p
from plasma.addresses import parse_address
from plasma.coordinator.config import CoordinatorConfig, check_nodes
from plasma.coordinator.delivery import deliver
from plasma.coordinator.handlers import handle
from plasma.coordinator.listener import Credentials, Listener, hang_up
from plasma.coordinator.page_mover import PageMover
from plasma.coordinator.runs import RunRelay
from plasma.coordinator.session import MAX_UNSENT, RECV_SIZE, Hangup, Session
from plasma.coordinator.spares import Spares, fits_in_free_memory
from plasma.coordinator.stats import collect_stats
from plasma.follow import ReaderTracker
from plasma.linux.fdlimit import fallback_file_limit
from plasma.segments import SegmentPool
from plasma.shared_tables import SharedTables, close_map
from plasma.store import Pending, Store
from plasma.store.pages import round_up
from plasma.telemetry import Telemetry

if TYPE_CHECKING:
    from plasma.spiller import Spiller

__all__ = ["FOLLOW_INTERVAL", "MESSAGES_PER_TURN", "Coordinator", "serve"]

log = logging.getLogger("plasma.coordinator")

MESSAGES_PER_TURN = 64  # a connection's messages handled before the others get a turn
FOLLOW_INTERVAL = 1.0  # seconds between looks at where objects' reads come from


class Coordinator:
    """Serves the requests of all sessions against one store."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        if config.bind_memory:
            check_nodes(config.memory)
        self.pool = SegmentPool(
            bind=config.bind_memory,
            hugepage_size=config.hugepage_size,
            hugepage_fallback=config.hugepage_fallback,
            fallback_dir=config.fallback_dir,
        )
        page = self.pool.page_size
        # budgets in whole pages (segments are), so an object of the largest size fits
        self.budgets = {n: b // page * page for n, b in config.memory.items()}
        small = sorted(n for n, b in self.budgets.items() if not b)
        if small:
            raise errors.BadRequest(
                f"--memory for node(s) {small} is less than one {page}-byte page"
            )
        largest = max(self.budgets.values())
        self.max_object_size = min(config.max_object_size or largest, largest)
        self.prefault = config.prefault
        if self.prefault == "budget" and not all(
            fits_in_free_memory(b, n) for n, b in self.budgets.items()
        ):
            log.warning(
                "--prefault budget: the free memory of a node cannot hold its budget twice "
                "over; preparing one spare segment per node instead (--prefault segment)"
            )
            self.prefault = "segment"
        # with the whole budget prefaulted, a node's first segment is all of it
        segment_size = largest if self.prefault == "budget" else config.segment_size
        self.tables = SharedTables()
        self.store = Store(
            self.budgets,
            self.pool,
            page_size=self.pool.page_size,
            segment_size=max(segment_size, self.pool.page_size),
            # unset: only the budgets limit objects, and a create larger than them is
            # store_full (as in Plasma), not bad_request
            max_object_size=config.max_object_size,
            directory_memory=self.tables,
            spill=config.spill_dir is not None,
            spill_threshold=config.spill_threshold,
            spill_max=config.spill_max,
            spill_max_objects=config.spill_max_objects,
            fallback=config.fallback_dir is not None,
            fallback_files=fallback_file_limit(config.fallback_files),
            fallback_max=config.fallback_max,
            follow_readers=ReaderTracker() if config.follow_readers else None,
            wall_clock=time.time,  # for create_time only
        )
        self.sessions: dict[int, Session] = {}
        self.started = time.monotonic()
        self.uid = os.getuid()
        self.op_counts: collections.Counter[str] = collections.Counter()
        self.error_counts: collections.Counter[str] = collections.Counter()
        self._next_client = 1
        self.waits: dict[int, tuple[int, int]] = {}  # store token -> (client, seq)
        # Sync and Evict replies sent once the store has scanned for pins what was deleted or
        # evicted before them: (scan time, client, reply)
        self._syncs: list[tuple[float, int, msgspec.Struct]] = []
        self._deadline_changed = trio.Event()
        self.runs = RunRelay(self.uid, self.sessions, self.error_counts)
        self.pages = PageMover(self.store, self.pool, bind=config.bind_memory)
        self.spares: Spares | None = None
        if self.prefault != "off":
            # what the store asks for a segment of (it rounds the size up to whole pages)
            size = None if self.prefault == "budget" else round_up(segment_size, page)
            self.spares = Spares(self.store, self.pool, size)
        self.telemetry = Telemetry(config.sample_interval)
        self._metrics_bind = parse_address(config.metrics) if config.metrics else None
        self.metrics_address: tuple[str, int] | None = None  # bound address once serving
        self.dashboard_address: tuple[str, int] | None = None
        self._nursery: trio.Nursery | None = None
        self.spiller: Spiller | None = None
        if config.spill_dir is not None:
            # (imported here: its checksum package imports importlib.metadata, 1.7 MiB of a
            # coordinator that never spills)
            from plasma.spiller import Spiller

            try:
                self.spiller = Spiller(
                    config.spill_dir,
                    self.store,
                    self.pool,
                    restore=config.restore,
                    sync=config.spill_survives == "reboot",
                )
            except BaseException:
                self.tables.close()
                raise

    # ------------------------------------------------------------ serving

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = Listener(self.config.socket_path, self.config.max_clients)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._expiry_loop)
                nursery.start_soon(self.telemetry.run)
                if self.spares is not None:
                    nursery.start_soon(self.spares.run)
                if self.config.follow_readers:
                    nursery.start_soon(self._follow_loop)
                if self.spiller is not None:
                    nursery.start_soon(self.spiller.run, self.deliver_events)
                    self.deliver_events()  # files a restore found with nothing live
                if self._metrics_bind is not None:
                    # (imported here: prometheus_client is 3 MiB of memory nobody else needs)
                    from plasma.metrics import make_registry, serve_metrics

                    self.metrics_address = await nursery.start(
                        serve_metrics, make_registry(self.stats), *self._metrics_bind
                    )
                if self.config.dashboard is not None:
                    from plasma.dashboard.server import serve_coordinator

                    self.dashboard_address = await nursery.start(serve_coordinator, self)
                task_status.started()
                await listener.accept_loop(nursery, self._session)
        finally:
            listener.close()
            for session in list(self.sessions.values()):
                session.sock.close()
                session.drop_queue()
            self.telemetry.close()
            self.pool.close()
            self.tables.close()
            if self.spiller is not None:
                self.spiller.close()

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run ``fn(*args)`` in the coordinator's nursery (I/O the store asked for)."""
        assert self._nursery is not None  # the store makes I/O events only while serving
        self._nursery.start_soon(fn, *args)

    def stats(self, *, placement: bool = False, top_objects: int = 10) -> dict[str, Any]:
        """Everything ``plasma-coord stats`` shows (see :func:`collect_stats`)."""
        return collect_stats(self, placement=placement, top_objects=top_objects)

    # ------------------------------------------------------------ sessions

    async def _session(self, conn: socket.socket, creds: Credentials) -> None:
        client_id = self._next_client
        self._next_client += 1
        session = Session(conn, client_id, creds, self.config.max_frame)
        # the owner may always write; another uid only as --allow-uid says
        writable = session.uid == self.uid or self.config.allow_uids.get(session.uid)
        if writable is None:
            session.send(
                p.Error(
                    seq=0,
                    code=errors.PERMISSION_DENIED,
                    message=f"uid {session.uid} may not use this store (owner uid {self.uid}; "
                    f"allow it with `serve --allow-uid {session.uid}` to read, "
                    f"`--allow-uid {session.uid}:rw` to read and write)",
                )
            )
            await hang_up(session)
            conn.close()
            return
        session.writable = writable
        self.sessions[client_id] = session
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.writer)
                session.handshake.deadline = trio.current_time() + self.config.handshake_timeout
                with session.handshake:
                    await self._read_loop(session)
                if session.handshake.cancelled_caught:
                    self.error_counts[errors.BAD_REQUEST] += 1
                    message = f"no Connect within {self.config.handshake_timeout} s"
                    session.send(p.Error(seq=0, code=errors.BAD_REQUEST, message=message))
                    await hang_up(session)
                nursery.cancel_scope.cancel()
        except Exception:  # one broken session must not stop the store
            log.exception("session %d (pid %d) failed", client_id, session.pid)
        finally:
            self._disconnect(session)

    async def _read_loop(self, session: Session) -> None:
        sock = session.sock
        buf = memoryview(bytearray(RECV_SIZE))  # reused: no allocation per recv
        while True:
            while session.unsent > MAX_UNSENT and not session.try_send():
                await trio.lowlevel.wait_writable(sock)  # read no more until it reads ours
            await trio.lowlevel.wait_readable(sock)
            try:
                size = sock.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not size:
                return
            session.decoder.feed(buf[:size])
            try:
                handled = 0
                while (msg := session.decoder.next_message()) is not None:
                    handle(self, session, msg)
                    handled += 1
                    if handled % MESSAGES_PER_TURN == 0:
                        # a buffer full of small frames (a flood) is handled in turns: the
                        # other clients are answered in between
                        self.deliver_events()
                        session.flush()
                        await trio.lowlevel.checkpoint()
            except (p.ProtocolError, Hangup) as exc:
                self.error_counts[errors.BAD_REQUEST] += 1
                session.send(p.Error(seq=0, code=errors.BAD_REQUEST, message=str(exc)))
                self.deliver_events()
                await hang_up(session)
                return
            self.deliver_events()
            session.flush()

    def _disconnect(self, session: Session) -> None:
        self.sessions.pop(session.client_id, None)
        self.waits = {t: w for t, w in self.waits.items() if w[0] != session.client_id}
        self.runs.forget(session.client_id)
        self._syncs = [s for s in self._syncs if s[1] != session.client_id]
        if session.connected:
            self.store.disconnect(session.client_id, now=time.monotonic())
            self.deliver_events()
        if session.pin_table is not None:
            close_map(session.pin_table)
            session.pin_table = None
        session.sock.close()
        session.drop_queue()

    # ------------------------------------------------------------ requests the store answers later

    def park(self, session: Session, seq: int, pending: Pending) -> None:
        """Answer request ``seq`` of ``session`` when the store's event for ``pending`` comes."""
        self.waits[pending.token] = (session.client_id, seq)
        self._deadline_changed.set()

    def reply_after_scan(self, session: Session, reply: msgspec.Struct) -> None:
        """Send ``reply`` once what was deleted or evicted so far was scanned for pins (so
        the memory no pin holds is free by then)."""
        due = self.store.reclaimed_by()
        if due is None:
            session.send(reply)
        else:
            self._syncs.append((due, session.client_id, reply))

    def deliver_events(self) -> None:
        """Carry out what the store asked for since the last time (see :mod:`.delivery`)."""
        if self.store.take_wakeup():
            self._deadline_changed.set()  # a pin scan is due earlier than the loop waits
        if self.store.take_spill_wakeup() and self.spiller is not None:
            self.spiller.wanted.set()
        events = self.store.drain_events()
        if events:
            deliver(self, events)
        if self.spares is not None:
            self.spares.check()

    async def _expiry_loop(self) -> None:
        while True:
            deadline = self.store.next_deadline()
            # The store's clock is monotonic (time.monotonic: trio's may differ).
            wait = math.inf if deadline is None else max(0.0, deadline - time.monotonic())
            with trio.move_on_after(wait):
                await self._deadline_changed.wait()
            self._deadline_changed = trio.Event()
            now = time.monotonic()
            self.store.expire(now)
            self._answer_syncs(now)
            self.deliver_events()

    def _answer_syncs(self, now: float) -> None:
        if not self._syncs:
            return
        for _, client, reply in [s for s in self._syncs if s[0] <= now]:
            session = self.sessions.get(client)
            if session is not None:
                session.send(reply)
                session.flush()
        self._syncs = [s for s in self._syncs if s[0] > now]

    async def _follow_loop(self) -> None:
        """``--follow-readers``: once a second, move objects towards their readers."""
        while True:
            await trio.sleep(FOLLOW_INTERVAL)
            if self.store.follow(time.monotonic()):
                self.deliver_events()


async def serve(
    config: CoordinatorConfig, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a coordinator until cancelled; ``task_status.started()`` once it accepts clients."""
    await Coordinator(config).serve(task_status=task_status)
