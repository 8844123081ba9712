"""The coordinator (internal): one store and the sessions the listener hands it.

All object state lives in the sans-I/O :class:`plasma.store.Store`; this module only decodes
requests, calls the store, encodes replies, attaches segment fds (SCM_RIGHTS, once per segment
per client), routes the store's events (finished waits, notifications) to their sessions and
relays ``RunCall``s to run owners. It also creates the shared tables of reads without
requests (:mod:`plasma.shared_tables`): the directory's fds go to every client with
``Connected`` and again when the directory is rebuilt, each client's pin table with its
``Connected``.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import trio

from plasma import errors
from plasma import protocol as p
from plasma.addresses import parse_address
from plasma.coordinator.config import CoordinatorConfig, check_nodes
from plasma.coordinator.listener import Credentials, Listener, hang_up
from plasma.coordinator.session import MAX_UNSENT, RECV_SIZE, Hangup, Session
from plasma.directory import pin_table_size
from plasma.errors import PlasmaError
from plasma.follow import ReaderTracker
from plasma.ids import ID_SIZE
from plasma.linux import memfd, numa
from plasma.linux.fdlimit import fallback_file_limit
from plasma.placement_report import placement_report
from plasma.segments import BASE_PAGE, SegmentPool
from plasma.shared_tables import SharedTables, close_map, new_pin_table
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
from plasma.telemetry import Telemetry, numa_nodes

log = logging.getLogger("plasma.coordinator")

MESSAGES_PER_TURN = 64  # a connection's messages handled before the others get a turn
# A subscriber with more than this many bytes unread is told it fell behind (an "overflow"
# notification) and its subscription ends.
MAX_UNSENT_NOTIFICATIONS = 8 << 20
FOLLOW_INTERVAL = 1.0  # seconds between looks at where objects' reads come from
MAX_TOP_OBJECTS = 10_000  # the most held objects a stats request may ask for
MAX_CALLS_PER_CLIENT = 1024  # RunCalls one client may have waiting for the run's owner
# Refused to read-only sessions: everything that creates, changes or removes objects, reserves
# memory, or starts and steers tasks.
_WRITE_REQUESTS: frozenset[type] = frozenset(
    {p.Create, p.CreateMany, p.Seal, p.Abort, p.Delete, p.Evict, p.Migrate, p.Replicate}
    | {p.Arena}
    | {p.SealArena}
    | {p.ReturnArena}
    | {p.RunRegister, p.RunCall, p.RunRespond, p.TaskRegister, p.TaskDone, p.SubmitSample}
)


def _holds(holding: dict[str, Any] | None) -> dict[str, Any]:
    """A client's ``holds`` in stats: what :meth:`Store.holders` says it holds (zeros for a
    session the store does not know yet)."""
    if holding is None:
        zero = {"bytes": 0, "objects": 0}
        return {"references": zero, "pins": zero, "unsealed": zero, "arena": 0, "total": 0}
    return {k: holding[k] for k in ("references", "pins", "unsealed", "arena", "total")}


class Coordinator:
    """Dispatches requests of all sessions against one store."""

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
        self._waits: dict[int, tuple[int, int]] = {}  # store token -> (client, seq)
        # Sync and Evict replies sent once the store has scanned for pins what was deleted or
        # evicted before them: (scan time, client, reply)
        self._syncs: list[tuple[float, int, msgspec.Struct]] = []
        self._deadline_changed = trio.Event()
        self._runs: dict[str, int] = {}  # run id -> owner client
        self._calls: dict[int, tuple[int, int, str]] = {}  # relay id -> (caller, seq, run id)
        self._calls_by_client: collections.Counter[int] = collections.Counter()
        self._next_call = 1
        self.telemetry = Telemetry(config.sample_interval)
        self._metrics_bind = parse_address(config.metrics) if config.metrics else None
        self.metrics_address: tuple[str, int] | None = None  # bound address once serving
        self.dashboard_address: tuple[str, int] | None = None
        self._handlers: dict[type, Callable[[Session, Any], None]] = {
            p.Create: self._create,
            p.CreateMany: self._create_many,
            p.Seal: self._seal,
            p.Abort: self._abort,
            p.Get: self._get,
            p.Release: self._release,
            p.Delete: self._delete,
            p.Unpin: self._unpin,
            p.Contains: self._contains,
            p.List: self._list,
            p.Evict: self._evict,
            p.Migrate: self._migrate,
            p.Replicate: self._replicate,
            p.Subscribe: self._subscribe,
            p.Arena: self._arena,
            p.SealArena: self._seal_arena,
            p.ReturnArena: self._return_arena,
            p.Stats: self._stats,
            p.Tables: self._tables,
            p.Sync: self._sync,
            p.RunRegister: self._run_register,
            p.RunCall: self._run_call,
            p.RunRespond: self._run_respond,
            p.TaskRegister: self._task_register,
            p.TaskDone: self._task_done,
            p.SubmitSample: self._submit_sample,
        }
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
                    nursery.start_soon(self.spiller.run, self._deliver_events)
                    self._deliver_events()  # files a restore found with nothing live
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
                    self._handle(session, msg)
                    handled += 1
                    if handled % MESSAGES_PER_TURN == 0:
                        # a buffer full of small frames (a flood) is handled in turns: the
                        # other clients are answered in between
                        self._deliver_events()
                        session.flush()
                        await trio.lowlevel.checkpoint()
            except (p.ProtocolError, Hangup) as exc:
                self.error_counts[errors.BAD_REQUEST] += 1
                session.send(p.Error(seq=0, code=errors.BAD_REQUEST, message=str(exc)))
                self._deliver_events()
                await hang_up(session)
                return
            self._deliver_events()
            session.flush()

    def _disconnect(self, session: Session) -> None:
        self.sessions.pop(session.client_id, None)
        self._waits = {t: w for t, w in self._waits.items() if w[0] != session.client_id}
        for run_id in [r for r, owner in self._runs.items() if owner == session.client_id]:
            del self._runs[run_id]
            for call_id, (caller, seq, call_run) in list(self._calls.items()):
                if call_run == run_id:
                    del self._calls[call_id]
                    self._calls_by_client[caller] -= 1
                    self._reply_error(caller, seq, errors.OBJECT_NOT_FOUND, f"run {run_id} ended")
        self._calls = {c: v for c, v in self._calls.items() if v[0] != session.client_id}
        self._calls_by_client.pop(session.client_id, None)
        self._syncs = [s for s in self._syncs if s[1] != session.client_id]
        if session.connected:
            self.store.disconnect(session.client_id, now=time.monotonic())
            self._deliver_events()
        if session.pin_table is not None:
            close_map(session.pin_table)
            session.pin_table = None
        session.sock.close()
        session.drop_queue()

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
            self._deliver_events()

    def _answer_syncs(self, now: float) -> None:
        if not self._syncs:
            return
        for _, client, reply in [s for s in self._syncs if s[0] <= now]:
            session = self.sessions.get(client)
            if session is not None:
                session.send(reply)
                session.flush()
        self._syncs = [s for s in self._syncs if s[0] > now]

    # ------------------------------------------------------------ dispatch

    def _handle(self, session: Session, msg: Any) -> None:
        kind = type(msg)
        self.op_counts[kind.__name__] += 1
        if not session.connected:
            if kind is not p.Connect:
                raise Hangup(f"the first message must be Connect, got {kind.__name__}")
            handler: Callable[[Session, Any], None] = self._connect
        elif kind in self._handlers:
            handler = self._handlers[kind]
        else:
            raise Hangup(f"unexpected {kind.__name__} after Connect")
        try:
            if not session.writable and kind in _WRITE_REQUESTS:
                raise errors.PermissionDenied(
                    f"uid {session.uid} has read-only access to this store: {kind.__name__} "
                    f"refused (grant writes with `serve --allow-uid {session.uid}:rw`)"
                )
            handler(session, msg)
        except Hangup:
            raise
        except PlasmaError as exc:
            self.error_counts[exc.code] += 1
            session.send(p.Error(seq=msg.seq, code=exc.code, message=exc.message))
        except Exception as exc:  # a bug must not take the whole store down
            log.exception("internal error handling %s", kind.__name__)
            self.error_counts[errors.BAD_REQUEST] += 1
            session.send(
                p.Error(seq=msg.seq, code=errors.BAD_REQUEST, message=f"internal error: {exc!r}")
            )

    def _connect(self, session: Session, msg: p.Connect) -> None:
        if msg.protocol_version != p.PROTOCOL_VERSION:
            raise Hangup(
                f"protocol version {msg.protocol_version} is not supported "
                f"(this coordinator speaks {p.PROTOCOL_VERSION})"
            )
        node = None
        if msg.cpus and self.config.node_of_cpus is not None:
            node = self.config.node_of_cpus(msg.cpus)
        if node not in self.config.memory:
            node = None
        session.name = msg.client_name
        tables, fds = self._tables_for(session)
        session.connected = True
        session.handshake.deadline = math.inf
        label = f"client {session.client_id} {msg.client_name!r} (pid {session.pid})"
        self.store.register_client(session.client_id, node, pins=session.pin_table, label=label)
        session.send(
            p.Connected(
                seq=msg.seq,
                client_id=session.client_id,
                protocol_version=p.PROTOCOL_VERSION,
                capacity=sum(self.budgets.values()),
                nodes=[
                    p.NodeInfo(id=n, capacity=b, cpus=self.config.node_cpus.get(n, []))
                    for n, b in sorted(self.budgets.items())
                ],
                page_sizes=sorted({self.pool.page_size, BASE_PAGE}),
                max_frame=self.config.max_frame,
                max_object_size=self.max_object_size,
                node=node,
                alignment=self.store.alignment,
                tables=tables,
            ),
            fds,
            owned=True,
        )

    def _tables_for(self, session: Session) -> tuple[p.TablesInfo | None, list[int]]:
        """A new client's pin table, and what Connected says of the tables, with their fds
        (new ones, closed once sent). Without tables (``pins_per_client`` 0, or no memory
        for them) the client reads through requests only."""
        entries = self.config.pins_per_client
        if not entries:
            return None, []
        size = pin_table_size(entries)
        try:
            pin_fd, session.pin_table = new_pin_table(size)
        except PlasmaError as exc:
            log.warning("client %d reads through requests only: %s", session.client_id, exc)
            return None, []
        try:
            fds = self.tables.descriptors(writable=session.writable)
        except (PlasmaError, OSError) as exc:
            os.close(pin_fd)
            close_map(session.pin_table)
            session.pin_table = None
            log.warning("client %d reads through requests only: %s", session.client_id, exc)
            return None, []
        access = self.tables.access_size if session.writable else 0
        session.tables_token = self.store.directory_token
        return p.TablesInfo(self.tables.directory_size, access, size), [*fds, pin_fd]

    def _tables(self, session: Session, msg: p.Tables) -> None:
        """The current directory, for a client whose directory was superseded: only when it
        names the last one it was sent (it mapped that: nothing is on its way), so however
        often a client asks, and whether or not it reads, at most one set of the
        directory's descriptors is ever in flight to it."""
        current = self.store.directory_token
        if session.pin_table is None or msg.have != session.tables_token or msg.have == current:
            session.send(p.TablesMoved(seq=msg.seq))
            return
        try:
            fds = self.tables.descriptors(writable=session.writable)
        except (PlasmaError, OSError) as exc:  # it reads through requests meanwhile
            log.warning("client %d keeps a stale directory: %s", session.client_id, exc)
            session.send(p.TablesMoved(seq=msg.seq))
            return
        session.tables_token = current
        access = self.tables.access_size if session.writable else 0
        tables = p.TablesInfo(self.tables.directory_size, access)
        session.send(p.TablesMoved(seq=msg.seq, tables=tables), fds, owned=True)

    def _unseen_segments(
        self, session: Session, segment_ids: Iterable[int], *, creating: bool = False
    ) -> tuple[list[p.SegmentInfo], list[int]]:
        """Segments a reply references that ``session`` has not been sent yet, and their fds
        (which then travel with that reply): read-only ones to a read-only session, and to
        everyone but the creator of its object for a fallback file (a file cannot be sealed
        against shrinking: a writable descriptor of it could make its readers SIGBUS)."""
        new: list[p.SegmentInfo] = []
        fds: list[int] = []
        for seg_id in segment_ids:
            if seg_id not in session.seen_segments:
                seg = self.pool.get(seg_id)
                writable = session.writable and (creating or not seg.file_backed)
                fds.append(seg.fd if writable else seg.read_only_fd())
                new.append(seg.info(writable=writable))
                session.seen_segments.add(seg_id)
        return new, fds

    def _reply_locations(
        self, session: Session, seq: int, locations: list[p.ObjectLocation]
    ) -> None:
        segs, fds = self._unseen_segments(
            session, {loc.segment for loc in locations}, creating=True
        )
        session.send(p.Created(seq=seq, locations=locations, segments=segs), fds)

    def _reply_got(self, session: Session, seq: int, results: list[p.ObjectLocation | str]) -> None:
        segs, fds = self._unseen_segments(
            session, {r.segment for r in results if isinstance(r, p.ObjectLocation)}
        )
        session.send(p.Got(seq=seq, results=results, segments=segs), fds)

    def _reply_error(self, client: int, seq: int, code: str, message: str) -> None:
        session = self.sessions.get(client)
        if session is not None:
            self.error_counts[code] += 1
            session.send(p.Error(seq=seq, code=code, message=message))
            session.flush()

    def _park(self, session: Session, seq: int, pending: Pending) -> None:
        self._waits[pending.token] = (session.client_id, seq)
        self._deadline_changed.set()

    def _create(self, session: Session, msg: p.Create) -> None:
        res = self.store.create(
            session.client_id,
            msg.id,
            msg.data_size,
            msg.metadata_size,
            msg.node,
            timeout=msg.timeout,
            now=time.monotonic(),
            interleave=msg.interleave,
        )
        if isinstance(res, Pending):
            self._park(session, msg.seq, res)
        else:
            self._reply_locations(session, msg.seq, [res])

    def _create_many(self, session: Session, msg: p.CreateMany) -> None:
        res = self.store.create_many(
            session.client_id, msg.items, msg.node, timeout=msg.timeout, now=time.monotonic()
        )
        if isinstance(res, Pending):
            self._park(session, msg.seq, res)
        else:
            self._reply_locations(session, msg.seq, res)

    def _for_each(
        self,
        session: Session,
        seq: int,
        ids: list[bytes],
        op: Callable[[int, bytes], object],
        ack: bool,
    ) -> None:
        """Apply ``op`` to every id; report the failures in one Error, else Ok when asked."""
        failures: list[PlasmaError] = []
        for oid in ids:
            try:
                op(session.client_id, oid)
            except PlasmaError as exc:
                failures.append(exc)
        if failures:
            first = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise type(first)(first.message + more)
        if ack:
            session.send(p.Ok(seq=seq))

    def _seal(self, session: Session, msg: p.Seal) -> None:
        seal = functools.partial(self.store.seal, now=time.monotonic())
        self._for_each(session, msg.seq, msg.ids, seal, msg.ack)

    def _release(self, session: Session, msg: p.Release) -> None:
        release = functools.partial(self.store.release, now=time.monotonic())
        self._for_each(session, msg.seq, msg.ids, release, msg.ack)

    def _abort(self, session: Session, msg: p.Abort) -> None:
        self.store.abort(session.client_id, msg.id, now=time.monotonic())
        session.send(p.Ok(seq=msg.seq))

    def _unpin(self, session: Session, msg: p.Unpin) -> None:
        self.store.unpinned(now=time.monotonic())

    def _get(self, session: Session, msg: p.Get) -> None:
        res = self.store.get(session.client_id, msg.ids, timeout=msg.timeout, now=time.monotonic())
        if isinstance(res, Pending):
            self._park(session, msg.seq, res)
        else:
            self._reply_got(session, msg.seq, res)

    def _delete(self, session: Session, msg: p.Delete) -> None:
        deleted, deferred, missing = self.store.delete(
            session.client_id, msg.ids, now=time.monotonic()
        )
        session.send(p.Deleted(seq=msg.seq, deleted=deleted, deferred=deferred, missing=missing))

    def _contains(self, session: Session, msg: p.Contains) -> None:
        session.send(p.Contained(seq=msg.seq, present=self.store.contains(msg.id)))

    def _list(self, session: Session, msg: p.List) -> None:
        """One page of a listing (see ``p.List``): a big store is listed from a snapshot
        of its ids, a page per request, so no reply is huge and nobody waits long."""
        if msg.listing == 0:
            ids = self.store.object_ids()
            if len(ids) <= p.LIST_PAGE:
                session.send(p.Listing(seq=msg.seq, objects=self.store.objects(ids)))
                return
            session.last_listing += 1
            listing = session.last_listing
            session.listings[listing] = ids
            if len(session.listings) > p.MAX_LISTINGS:
                session.listings.popitem(last=False)
        else:
            listing = msg.listing
            found = session.listings.get(listing)
            if found is None:
                raise errors.BadRequest(
                    f"listing {listing} is not in progress (done, or more than "
                    f"{p.MAX_LISTINGS} listings were started after it)"
                )
            ids = found
        end = min(msg.start + p.LIST_PAGE, len(ids))
        page = self.store.objects(ids[msg.start : end])
        if end == len(ids):
            del session.listings[listing]
            end = 0
        session.send(p.Listing(seq=msg.seq, objects=page, listing=listing, next=end))

    def _migrate(self, session: Session, msg: p.Migrate) -> None:
        res = self.store.migrate(session.client_id, msg.id, msg.node, now=time.monotonic())
        if isinstance(res, Pending):
            self._park(session, msg.seq, res)
        else:
            session.send(p.Migrated(seq=msg.seq, nodes=res))

    def _replicate(self, session: Session, msg: p.Replicate) -> None:
        res = self.store.replicate(session.client_id, msg.id, msg.nodes, now=time.monotonic())
        if isinstance(res, Pending):
            self._park(session, msg.seq, res)
        else:
            session.send(p.Replicated(seq=msg.seq, nodes=res))

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
        self._deliver_events()

    async def _place(self, event: Place) -> None:
        """Move the pages of a range of a segment (a worker thread: it may be gigabytes)."""
        error: str | None = None
        if not self.config.bind_memory:  # --no-bind: pages stay where they are; only the
            self.store.placed(event.token, now=time.monotonic())  # accounting moves
            self._deliver_events()
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
        self._deliver_events()

    async def _follow_loop(self) -> None:
        """``--follow-readers``: once a second, move objects towards their readers."""
        while True:
            await trio.sleep(FOLLOW_INTERVAL)
            if self.store.follow(time.monotonic()):
                self._deliver_events()

    def _evict(self, session: Session, msg: p.Evict) -> None:
        nbytes = self.store.evict(msg.nbytes, now=time.monotonic())
        self._reply_after_scan(session, p.Evicted(seq=msg.seq, nbytes=nbytes))

    def _subscribe(self, session: Session, msg: p.Subscribe) -> None:
        self.store.subscribe(session.client_id, msg.with_locations)
        session.send(p.Ok(seq=msg.seq))

    def _arena(self, session: Session, msg: p.Arena) -> None:
        res = self.store.grant_arena(
            session.client_id, msg.size, msg.node, min_size=msg.min_size, now=time.monotonic()
        )
        if isinstance(res, Pending):
            self._park(session, msg.seq, res)
        else:
            self._reply_arena(session, msg.seq, res)

    def _reply_arena(self, session: Session, seq: int, grant: Grant) -> None:
        segs, fds = self._unseen_segments(session, [grant.segment], creating=True)
        reply = p.ArenaGranted(seq, grant.segment, grant.offset, grant.size, grant.grant, segs)
        session.send(reply, fds)

    def _return_arena(self, session: Session, msg: p.ReturnArena) -> None:
        self.store.return_arena(session.client_id, msg.grant, now=time.monotonic())

    def _seal_arena(self, session: Session, msg: p.SealArena) -> None:
        self.store.seal_arena(session.client_id, msg.grant, msg.objects, now=time.monotonic())
        if msg.ack:
            session.send(p.Ok(seq=msg.seq))

    def _sync(self, session: Session, msg: p.Sync) -> None:
        """Answered once everything deleted or evicted before it was scanned for pins."""
        self._reply_after_scan(session, p.Ok(seq=msg.seq))

    def _reply_after_scan(self, session: Session, reply: msgspec.Struct) -> None:
        """Send ``reply`` once what was deleted or evicted so far was scanned for pins (so
        the memory no pin holds is free by then)."""
        due = self.store.reclaimed_by()
        if due is None:
            session.send(reply)
        else:
            self._syncs.append((due, session.client_id, reply))

    def _stats(self, session: Session, msg: p.Stats) -> None:
        if not 0 <= msg.top_objects <= MAX_TOP_OBJECTS:
            raise errors.BadRequest(f"top_objects must be 0..{MAX_TOP_OBJECTS}")
        stats = self.stats(placement=msg.placement, top_objects=msg.top_objects)
        session.send(p.StatsReply(seq=msg.seq, stats=stats))

    def stats(self, *, placement: bool = False, top_objects: int = 10) -> dict[str, Any]:
        """Everything ``plasma-coord stats`` shows; with ``placement``, where segment pages are.
        Each client says what it holds (``holds``, see :meth:`Store.holders`); ``holders``
        has the totals and the ``top_objects`` largest objects held."""
        stats = self.store.stats()
        stats["uptime"] = time.monotonic() - self.started
        stats["page_size"] = self.pool.page_size
        stats["segments"] = [
            {"id": s.id, "node": s.node, "size": s.size, "page_size": s.page_size}
            for s in self.pool
        ]
        holders = self.store.holders(top_objects)
        holds = {h.pop("id"): h for h in holders.pop("clients")}
        stats["clients"] = [
            {
                "id": s.client_id,
                "name": s.name,
                "pid": s.pid,
                "uid": s.uid,
                "holds": _holds(holds.get(s.client_id)),
            }
            for s in self.sessions.values()
        ]
        stats["holders"] = holders
        stats["operations"] = dict(self.op_counts)
        stats["errors"] = dict(self.error_counts)
        stats["tasks"] = self.telemetry.tasks()
        node_cpus = self.config.node_cpus or {n: [] for n in self.config.memory}
        stats["numa_nodes"] = numa_nodes(node_cpus, self.config.sysfs_root)
        bound = self.metrics_address
        stats["metrics"] = f"{bound[0]}:{bound[1]}" if bound else None
        bound = self.dashboard_address
        stats["dashboard"] = f"{bound[0]}:{bound[1]}" if bound else None
        if self.spiller is not None:
            stats["spill"]["dir"] = self.spiller.directory
        stats["fallback"]["dir"] = self.config.fallback_dir
        if placement:
            stats["placement"] = placement_report(self.pool)
        return stats

    # ------------------------------------------------------------ task telemetry

    def _task_register(self, session: Session, msg: p.TaskRegister) -> None:
        self._check_may_run(session)
        self.telemetry.register(msg.task_id, msg.pid, msg.node, msg.run_id)
        session.send(p.Ok(seq=msg.seq))

    def _task_done(self, session: Session, msg: p.TaskDone) -> None:
        self._check_may_run(session)
        self.telemetry.done(msg.task_id, msg.run_id)
        session.send(p.Ok(seq=msg.seq))

    def _submit_sample(self, session: Session, msg: p.SubmitSample) -> None:
        self.telemetry.submit(msg.task_id, msg.sample, msg.run_id)
        session.send(p.Ok(seq=msg.seq))

    # ------------------------------------------------------------ run relay

    def _check_may_run(self, session: Session) -> None:
        if session.uid != self.uid:
            raise errors.PermissionDenied(
                f"uid {session.uid} may not start or steer tasks: only the coordinator's user "
                f"(uid {self.uid}) may"
            )

    def _run_register(self, session: Session, msg: p.RunRegister) -> None:
        self._check_may_run(session)
        owner = self._runs.get(msg.run_id)
        if owner is not None and owner != session.client_id:
            raise errors.ObjectExists(f"run {msg.run_id!r} already has an owner")
        self._runs[msg.run_id] = session.client_id
        session.send(p.Ok(seq=msg.seq))

    def _run_call(self, session: Session, msg: p.RunCall) -> None:
        self._check_may_run(session)
        owner = self._runs.get(msg.run_id)
        if owner is None:
            raise errors.ObjectNotFound(f"no live run {msg.run_id!r}")
        if self._calls_by_client[session.client_id] >= MAX_CALLS_PER_CLIENT:
            raise errors.BadRequest(
                f"{MAX_CALLS_PER_CLIENT} run calls of this client are already waiting"
            )
        call_id = self._next_call
        self._next_call += 1
        self._calls[call_id] = (session.client_id, msg.seq, msg.run_id)
        self._calls_by_client[session.client_id] += 1
        owner_session = self.sessions[owner]
        owner_session.send(
            p.RunRequest(seq=0, request=call_id, client=session.client_id, payload=msg.payload)
        )
        owner_session.flush()

    def _run_respond(self, session: Session, msg: p.RunRespond) -> None:
        call = self._calls.get(msg.request)
        if call is None or self._runs.get(call[2]) != session.client_id:
            raise errors.ObjectNotFound(f"no pending run call {msg.request} for this client")
        del self._calls[msg.request]
        caller, seq, _ = call
        self._calls_by_client[caller] -= 1
        target = self.sessions.get(caller)
        if target is None:
            return
        if msg.code is not None:
            self._reply_error(caller, seq, msg.code, msg.message)
        else:
            target.send(p.RunResult(seq=seq, payload=msg.payload))
            target.flush()

    # ------------------------------------------------------------ store events

    def _deliver_events(self) -> None:
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
                    self._nursery.start_soon(self.spiller.restore, event, self._deliver_events)
                else:
                    self.spiller.dead(event)
                continue
            session = self.sessions.get(event.client)
            if session is None:
                continue
            if isinstance(event, Notify):
                loc = event.location
                segs, fds = self._unseen_segments(session, [loc.segment] if loc else [])
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
                waiter = self._waits.pop(event.token, None)
                if waiter is None:
                    continue
                seq = waiter[1]
                if isinstance(event, GetDone):
                    self._reply_got(session, seq, event.results)
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
                    self._reply_arena(session, seq, event.result)
                else:
                    self._reply_locations(session, seq, event.result)
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
