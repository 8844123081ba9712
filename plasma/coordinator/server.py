"""The coordinator (internal): one store, its memory and its clients, and the parts wired
around them.

:class:`Coordinator` builds the :class:`~plasma.store.Store` and its segment pool, serves
each connection the :class:`~plasma.coordinator.listener.Listener` hands it (read requests,
:func:`~plasma.coordinator.handlers.handle` them, deliver the store's events), and runs the
loops that wake the store (deadlines, readers followed) and the I/O parts (spiller,
telemetry, metrics, dashboard); it carries out the store's events (finished waits,
notifications, pages to copy or move). It keeps the state that joins the parts: the sessions,
the requests parked on the store, the replies waiting for a pin scan. It must never answer
a request itself: the handler table does.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import time
from typing import Any

import msgspec
import trio

from plasma import errors
from plasma import protocol as p
from plasma.addresses import parse_address
from plasma.coordinator.config import CoordinatorConfig, check_nodes
from plasma.coordinator.handlers import handle
from plasma.coordinator.listener import Credentials, Listener, hang_up
from plasma.coordinator.replies import reply_arena, reply_got, reply_locations, unseen_segments
from plasma.coordinator.runs import RunRelay
from plasma.coordinator.session import MAX_UNSENT, RECV_SIZE, Hangup, Session
from plasma.coordinator.stats import collect_stats
from plasma.errors import PlasmaError
from plasma.follow import ReaderTracker
from plasma.ids import ID_SIZE
from plasma.linux import memfd, numa
from plasma.linux.fdlimit import fallback_file_limit
from plasma.segments import SegmentPool
from plasma.shared_tables import SharedTables, close_map
from plasma.spiller import Spiller
from plasma.store import (
    AskReclaim,
    Copy,
    CreateDone,
    DirectoryMoved,
    GetDone,
    Grant,
    MigrateDone,
    Notify,
    Pending,
    Place,
    ReplicateDone,
    Restore,
    Revoke,
    SegmentFreed,
    SpillDead,
    Store,
)
from plasma.telemetry import Telemetry

__all__ = ["FOLLOW_INTERVAL", "MESSAGES_PER_TURN", "Coordinator", "serve"]

log = logging.getLogger("plasma.coordinator")

MESSAGES_PER_TURN = 64  # a connection's messages handled before the others get a turn
FOLLOW_INTERVAL = 1.0  # seconds between looks at where objects' reads come from
# A subscriber with more than this many bytes unread is told it fell behind (an "overflow"
# notification) and its subscription ends.
MAX_UNSENT_NOTIFICATIONS = 8 << 20


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
        self.tables = SharedTables()
        self.store = Store(
            self.budgets,
            self.pool,
            page_size=self.pool.page_size,
            segment_size=max(config.segment_size, self.pool.page_size),
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
        self.telemetry = Telemetry(config.sample_interval)
        self._metrics_bind = parse_address(config.metrics) if config.metrics else None
        self.metrics_address: tuple[str, int] | None = None  # bound address once serving
        self.dashboard_address: tuple[str, int] | None = None
        self._nursery: trio.Nursery | None = None
        self.spiller: Spiller | None = None
        if config.spill_dir is not None:
            try:
                self.spiller = Spiller(
                    config.spill_dir, self.store, self.pool, restore=config.restore
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

    async def _copy(self, event: Copy) -> None:
        """Copy an object's bytes to its replicas (a worker thread: it may be gigabytes)."""
        error: str | None = None
        fds: list[int] = []
        try:
            source = self.pool.get(event.segment)
            fds.append(os.dup(source.fd))
            targets = []
            for loc in event.targets:
                seg = self.pool.get(loc.segment)
                fds.append(os.dup(seg.fd))
                targets.append((fds[-1], loc.offset, seg.page_size))
            await trio.to_thread.run_sync(
                memfd.copy_ranges, fds[0], event.offset, source.page_size, targets, event.length
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("copying segment %d to replicas failed: %s", event.segment, exc)
        finally:
            for fd in fds:
                os.close(fd)
        self.store.placed(event.token, error, now=time.monotonic())
        self.deliver_events()

    async def _place(self, event: Place) -> None:
        """Move the pages of a range of a segment (a worker thread: it may be gigabytes)."""
        error: str | None = None
        if not self.config.bind_memory:  # --no-bind: pages stay where they are; only the
            self.store.placed(event.token, now=time.monotonic())  # accounting moves
            self.deliver_events()
            return
        seg = self.pool.get(event.segment)
        mode = numa.MPOL_INTERLEAVE if event.mode == "interleave" else numa.MPOL_BIND
        try:
            fd = os.dup(seg.fd)  # (valid until the copy ends, whatever the store frees)
            try:
                left = await trio.to_thread.run_sync(
                    numa.place_range,
                    fd,
                    event.start,
                    event.length,
                    seg.page_size,
                    mode,
                    event.nodes,
                )
            finally:
                os.close(fd)
            if left:
                log.warning("%d pages of segment %d did not move to %s", left, seg.id, event.nodes)
        except Exception as exc:
            if event.nodes == [seg.node] and isinstance(exc, errors.Unsupported):
                pass  # a kernel without NUMA: every page is on the one node already
            else:
                error = f"{type(exc).__name__}: {exc}"
                log.warning("moving pages of segment %d to %s failed: %s", seg.id, event.nodes, exc)
        self.store.placed(event.token, error, now=time.monotonic())
        self.deliver_events()

    async def _follow_loop(self) -> None:
        """``--follow-readers``: once a second, move objects towards their readers."""
        while True:
            await trio.sleep(FOLLOW_INTERVAL)
            if self.store.follow(time.monotonic()):
                self.deliver_events()

    # ------------------------------------------------------------ store events

    def deliver_events(self) -> None:
        """Carry out what the store asked for since the last time."""
        if self.store.take_wakeup():
            self._deadline_changed.set()  # a pin scan is due earlier than the loop waits
        if self.store.take_spill_wakeup() and self.spiller is not None:
            self.spiller.wanted.set()
        events = self.store.drain_events()
        if not events:
            return
        touched: set[Session] = set()
        dropped: list[int] = []
        for event in events:
            if isinstance(event, DirectoryMoved):
                continue  # clients ask for the new one when they find theirs superseded
            if isinstance(event, SegmentFreed):
                dropped.append(event.segment)
                continue
            if isinstance(event, Place | Copy):
                assert self._nursery is not None
                if isinstance(event, Place):
                    self._nursery.start_soon(self._place, event)
                else:
                    self._nursery.start_soon(self._copy, event)
                continue
            if isinstance(event, Restore | SpillDead):
                assert self.spiller is not None
                if isinstance(event, Restore):
                    assert self._nursery is not None
                    self._nursery.start_soon(self.spiller.restore, event, self.deliver_events)
                else:
                    self.spiller.dead(event)
                continue
            session = self.sessions.get(event.client)
            if session is None:
                continue
            if isinstance(event, Notify):
                loc = event.location
                segs, fds = unseen_segments(self.pool, session, [loc.segment] if loc else [])
                note = p.Notification(
                    seq=0,
                    kind=event.kind,
                    id=event.oid,
                    data_size=event.data_size,
                    metadata_size=event.metadata_size,
                    location=loc,
                    segments=segs,
                )
                session.send(note, fds)
                if session.unsent > MAX_UNSENT_NOTIFICATIONS:
                    self._drop_subscriber(session)
            elif isinstance(event, Revoke):
                session.send(p.Revoked(seq=0, ids=[event.oid]))
            elif isinstance(event, AskReclaim):
                session.send(p.Reclaim(seq=0))
            else:
                waiter = self.waits.pop(event.token, None)
                if waiter is None:
                    continue
                seq = waiter[1]
                if isinstance(event, GetDone):
                    reply_got(self.pool, session, seq, event.results)
                elif isinstance(event, MigrateDone | ReplicateDone):
                    if isinstance(event.result, PlasmaError):
                        session.send(
                            p.Error(seq=seq, code=event.result.code, message=event.result.message)
                        )
                    elif isinstance(event, MigrateDone):
                        session.send(p.Migrated(seq=seq, nodes=event.result))
                    else:
                        session.send(p.Replicated(seq=seq, nodes=event.result))
                elif isinstance(event.result, PlasmaError):
                    assert isinstance(event, CreateDone)
                    self.error_counts[event.result.code] += 1
                    session.send(
                        p.Error(seq=seq, code=event.result.code, message=event.result.message)
                    )
                elif isinstance(event.result, Grant):
                    reply_arena(self.pool, session, seq, event.result)
                else:
                    reply_locations(self.pool, session, seq, event.result)
            touched.add(session)
        if dropped:
            touched.update(self._tell_dropped(dropped))
        for session in touched:
            session.flush()

    def _tell_dropped(self, segments: list[int]) -> list[Session]:
        """Tell the clients that were sent these segments that they are gone."""
        told = []
        for session in self.sessions.values():
            gone = [s for s in segments if s in session.seen_segments]
            if gone:
                session.seen_segments.difference_update(gone)
                session.send(p.SegmentsDropped(seq=0, ids=gone))
                told.append(session)
        return told

    def _drop_subscriber(self, session: Session) -> None:
        """A subscriber that fell behind: end its subscription with an "overflow" note (its
        ``data_size`` is the bytes it left unread); events already made still go out."""
        if self.store.unsubscribe(session.client_id):
            log.warning("client %d fell behind its notifications", session.client_id)
            session.send(
                p.Notification(
                    seq=0,
                    kind="overflow",
                    id=bytes(ID_SIZE),
                    data_size=session.unsent,
                    metadata_size=0,
                )
            )


async def serve(
    config: CoordinatorConfig, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a coordinator until cancelled; ``task_status.started()`` once it accepts clients."""
    await Coordinator(config).serve(task_status=task_status)
