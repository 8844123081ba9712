"""The dying set: objects whose memory waits for a scan of the pin tables, and when to scan.

Readers pin objects in their own pin tables, with no request (see :mod:`plasma.directory`),
so the store may free a deleted or evicted object's bytes only once a scan of every table
finds no pin on it. An object marked dying waits ``grace`` seconds (the time a reader that
saw the slot before it read dying needs to pin it or to see it gone), then is scanned;
deleted objects a scan finds pinned are scanned again, at ``PIN_RESCAN`` and backing off to
``PIN_RESCAN_MAX`` while scans free nothing; an ``Unpin`` hint or a disconnect brings the
next scan forward, at most once per ``UNPIN_INTERVAL``. Copies of an object on other nodes
die with it.

This class keeps that schedule, hands the store what is due and, told what the scan found,
decides what becomes of each (:meth:`DyingSet.settle`); it never scans the pin tables,
frees memory or touches the directory itself: the store does.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Container
from typing import TYPE_CHECKING

from plasma.store.objects import State

if TYPE_CHECKING:
    from plasma.store.objects import ObjectRecord

PIN_RESCAN = 0.05  # seconds between scans for pins that hold deleted objects or block creates
PIN_RESCAN_MAX = 1.0  # ...doubling up to this while a scan frees nothing
UNPIN_INTERVAL = 0.02  # seconds from one scan of pinned deleted objects to one an Unpin asks

Dying = tuple[int, bytes, "ObjectRecord"]  # (generation, id, record)


class DyingSet:
    """Objects waiting for their pin scan (by generation), and the schedule of scans."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        # generation -> (scan time, id, record), in scan-time order
        self.waiting: OrderedDict[int, tuple[float, bytes, ObjectRecord]] = OrderedDict()
        # deleted objects a scan found pinned: generation -> (id, record)
        self.pinned: dict[int, tuple[bytes, ObjectRecord]] = {}
        # copies whose object's memory was freed, to doom or scan next (id, record)
        self.orphans: list[tuple[bytes, ObjectRecord]] = []
        self._copies_since: dict[int, float] = {}  # copy's generation -> when marked dying
        self.rescan_at = math.inf  # when to look at pins again (pinned deletes, blocked creates)
        self._rescan_gap = PIN_RESCAN  # from one scan of pinned deletes to the next
        self._rescanned_at = -math.inf  # the last scan of pinned deletes
        self._wakeup = False  # a scan was scheduled since take_wakeup() last said so

    def __contains__(self, gen: int) -> bool:
        return gen in self.waiting

    def __len__(self) -> int:
        """Objects whose memory waits for a scan (pinned deleted ones too)."""
        return len(self.waiting) + len(self.pinned)

    def add(self, gen: int, oid: bytes, rec: ObjectRecord, now: float) -> None:
        """``rec`` (published as ``gen``) is dying from ``now``: scan it after the grace."""
        self.waiting[gen] = (now + self.grace, oid, rec)
        self._wakeup = True

    def revive(self, gen: int) -> None:
        """An eviction victim stays (a get asked for it before its scan)."""
        del self.waiting[gen]

    def mark_copy(self, gen: int, now: float) -> None:
        """A copy's slot reads dying from ``now`` (with its object's)."""
        self._copies_since.setdefault(gen, now)

    def unmark_copy(self, gen: int) -> None:
        """A copy's slot reads sealed again (its object was revived)."""
        self._copies_since.pop(gen, None)

    def orphan(self, key: bytes, copy: ObjectRecord) -> None:
        """A copy whose object's memory was freed: it goes too, once no pin holds it."""
        self.orphans.append((key, copy))
        self._wakeup = True

    def take_orphans(self, now: float) -> tuple[list[Dying], list[tuple[bytes, ObjectRecord]]]:
        """The orphaned copies: those dying with their object long enough to be scanned now,
        and the others (the store dooms them: they wait for their own grace period)."""
        due: list[Dying] = []
        later: list[tuple[bytes, ObjectRecord]] = []
        orphans, self.orphans = self.orphans, []
        for key, copy in orphans:
            since = self._copies_since.pop(copy.gen, None)
            if since is not None and (since + self.grace <= now or not self.grace):
                due.append((copy.gen, key, copy))
            else:
                later.append((key, copy))
        return due, later

    def due(self, now: float) -> tuple[list[Dying], int]:
        """Take what a scan at ``now`` must look at: the objects whose grace ended (every
        one without a grace period), then, when a rescan is due, the pinned deleted ones;
        and how many of those last there are. The store scans them and calls
        :meth:`keep_pinned` for each deleted one still pinned, then :meth:`reschedule`."""
        waiting = self.waiting
        due: list[Dying] = []
        while waiting:
            gen, (when, oid, rec) = waiting.popitem(last=False)
            if when > now and self.grace:
                waiting[gen] = (when, oid, rec)
                waiting.move_to_end(gen, last=False)
                break
            due.append((gen, oid, rec))
        rescanned = len(self.pinned) if self.rescan_at <= now else 0
        if rescanned:
            due += [(gen, oid, rec) for gen, (oid, rec) in self.pinned.items()]
            self.pinned.clear()
            self._rescanned_at = now
        return due, rescanned

    def settle(
        self, now: float, due: list[Dying], rescanned: int, pinned: Container[int]
    ) -> tuple[list[Dying], list[Dying]]:
        """A scan at ``now`` of what :meth:`due` returned (``rescanned`` of them pinned
        deleted objects scanned again) found ``pinned`` generations pinned: the objects to
        free (or drop to disk), and the eviction victims a reader pinned meanwhile (they
        stay: sealed again). Deleted objects still pinned are kept for a later scan,
        rescheduled (:meth:`reschedule`)."""
        free: list[Dying] = []
        revive: list[Dying] = []
        newly = len(due) - rescanned  # (the rescanned ones come last)
        added = False  # deleted objects found pinned for the first time
        for i, (gen, oid, rec) in enumerate(due):
            if gen not in pinned:
                free.append((gen, oid, rec))
            elif rec.state is State.EVICTING:
                revive.append((gen, oid, rec))
            else:
                self.keep_pinned(gen, oid, rec)
                added = added or i < newly
        self.reschedule(now, rescanned, added)
        return free, revive

    def keep_pinned(self, gen: int, oid: bytes, rec: ObjectRecord) -> None:
        """A deleted object the scan found pinned: scan it again later."""
        self.pinned[gen] = (oid, rec)

    def reschedule(self, now: float, rescanned: int, added: bool) -> None:
        """When to scan the pinned deleted objects next (``rescanned`` of them were just
        scanned again; ``added``: some were found pinned for the first time):
        ``PIN_RESCAN`` after a scan that freed some of them or found new ones, twice the
        last gap (up to ``PIN_RESCAN_MAX``) after one that freed none: pins held by idle
        clients cost a scan a second, not twenty. :meth:`hint` brings it forward again."""
        if not self.pinned:
            self.rescan_at = math.inf
            self._rescan_gap = PIN_RESCAN
            return
        if added or (rescanned and len(self.pinned) < rescanned):
            self._rescan_gap = PIN_RESCAN
        elif rescanned:
            self._rescan_gap = min(2 * self._rescan_gap, PIN_RESCAN_MAX)
        if rescanned or not now < self.rescan_at <= now + self._rescan_gap:
            self.rescan_at = now + self._rescan_gap
        self._wakeup = True

    def hint(self, now: float) -> None:
        """Pins may have gone (an Unpin, a disconnect): rescan the pinned deleted objects
        (if any) as soon as the rate limit allows, and at the shortest gap from then on."""
        if not self.pinned:
            return
        self._rescan_gap = PIN_RESCAN
        at = max(now, self._rescanned_at + UNPIN_INTERVAL)
        if at < self.rescan_at:
            self.rescan_at = at
            self._wakeup = True

    def pinned_candidate(self, now: float) -> None:
        """An eviction walk passed over a pinned object: a create may wait for it, so look
        at the pins again soon."""
        self.rescan_at = min(self.rescan_at, now + PIN_RESCAN)
        self._wakeup = True

    def blocked_creates_due(self, now: float) -> bool:
        """True (once) when a rescan asked for by :meth:`pinned_candidate` is due with no
        pinned deleted object to scan: the creates it was for should look again."""
        if self.rescan_at <= now and not self.pinned:
            self.rescan_at = math.inf
            return True
        return False

    def next_time(self) -> float | None:
        """When the next scan is due (0: orphaned copies wait), None when nothing waits."""
        times = [0.0] if self.orphans else []
        if self.waiting:
            times.append(next(iter(self.waiting.values()))[0])
        if self.rescan_at < math.inf:
            times.append(self.rescan_at)
        return min(times) if times else None

    def last_time(self) -> float | None:
        """When the last object marked dying so far is scanned (None: none waits)."""
        return next(reversed(self.waiting.values()))[0] if self.waiting else None

    def take_wakeup(self) -> bool:
        """True once after a scan was scheduled (:meth:`next_time` may be earlier)."""
        wakeup, self._wakeup = self._wakeup, False
        return wakeup
