"""The bounded hand-off between the threads that submit (camera analysis, audit, commands) and
the outbox's writer thread, which commits what they submit in batches; and that thread's loop,
which keeps trying while the database refuses.

A ``synchronous=FULL`` commit waits for the SD card's fsync; on a worn card that can take seconds.
Submitters therefore never commit: they append here and wait for their item's commit for at most
``wait_s``. Once one wait has run out the disk counts as slow and later submits return at once,
until a commit goes through: a stalled disk holds up a camera's analysis once, for ``wait_s``,
not at every event. An item not committed yet is in memory only: a power cut meanwhile loses it.

The bound (``max_items``, ``max_bytes``) only decides what is refused while the writer cannot
keep up: events and audit records are never refused (they are kept in memory beyond the bound,
counted in ``spilled``: they are small, and losing them is worse), snapshots are refused and
counted in ``refused_snapshots`` (the size cap drops snapshots first too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from guetteur.uplink.publish import OutboundItem

log = logging.getLogger(__name__)

IDLE_WAKE_S = 0.5  # the writer looks for work at least this often
RETRY_S = 1.0  # after a failed commit
FAILING_LOG_EVERY_S = 60.0  # a database that keeps refusing is logged once a minute


class HandoffClosed(RuntimeError):
    pass


@dataclass(frozen=True)
class Batch:
    """Items taken by the writer, in submission order; ``last`` is the ticket of the last one."""

    items: list[OutboundItem]
    last: int


class CommitQueue:
    """``put`` from any thread (returns the item's ticket, or None when refused); ``take`` and
    ``done`` from the writer thread; ``wait`` for a ticket's commit."""

    def __init__(self, max_items: int, max_bytes: int, wait_s: float) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.wait_s = wait_s
        self._cv = threading.Condition(threading.Lock())
        self._items: deque[tuple[int, OutboundItem]] = deque()
        self._bytes = 0
        self._last_ticket = 0
        self._committed = 0
        self._committing = 0  # the last ticket of the commit under way; 0 when none is
        self._withdrawn: set[int] = set()  # taken back by their submitters: never to be stored
        self._closed = False
        self.slow_since: float | None = None  # monotonic time the current stall was noticed
        self.spilled = 0
        self.refused_snapshots = 0
        self.work = threading.Event()  # set whenever there is something for the writer

    def put(self, item: OutboundItem) -> int | None:
        size = len(item.payload)
        with self._cv:
            if self._closed:
                raise HandoffClosed(f"outbox closed: {item.kind} {item.item_id} not queued")
            full = len(self._items) >= self.max_items or self._bytes + size > self.max_bytes
            if full and item.kind == "snapshot":
                self.refused_snapshots += 1
                log.warning(
                    "outbox: snapshot %s dropped: %d items (%d bytes) already wait for the disk "
                    "(database commits stalled: slow or failing SD card?)",
                    item.item_id,
                    len(self._items),
                    self._bytes,
                )
                return None
            if full:
                self.spilled += 1
                if self.spilled == 1 or self.spilled % 1000 == 0:
                    log.warning(
                        "outbox: %d items wait for the disk (database commits stalled: slow or "
                        "failing SD card?); %s %s kept in memory beyond the bound (%d so far), "
                        "lost if the gateway loses power before the disk answers",
                        len(self._items),
                        item.kind,
                        item.item_id,
                        self.spilled,
                    )
            self._last_ticket += 1
            self._items.append((self._last_ticket, item))
            self._bytes += size
            self.work.set()
            return self._last_ticket

    def wait(self, ticket: int) -> bool:
        """Wait until ``ticket`` is committed, for at most ``wait_s`` — and not at all while the
        disk is known to be slow. True when committed."""
        with self._cv:
            if self._committed >= ticket:
                return True
            if self.slow_since is not None:
                return False
            deadline = time.monotonic() + self.wait_s
            while self._committed < ticket:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.slow_since = time.monotonic()
                    log.warning(
                        "outbox: a commit has taken more than %.1f s (slow or failing SD card?); "
                        "new items are handed to the writer without waiting until it catches up",
                        self.wait_s,
                    )
                    return False
                self._cv.wait(left)
            return True

    def wait_stored(self, ticket: int, timeout: float) -> bool:
        """Wait until ``ticket`` is committed, for at most ``timeout``, slow disk or not (for
        records that must be on disk before something happens). True when committed."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._committed < ticket:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def withdraw(self, ticket: int, timeout: float) -> bool | None:
        """Take back an item not committed yet: True when it will never be stored, False when
        it was stored meanwhile, None when a commit holding it is still under way after
        ``timeout`` (that commit decides; if it fails the item is not tried again)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._withdrawn.add(ticket)
            while ticket <= self._committing:  # in the commit under way: wait for its outcome
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)
            if self._committed >= ticket:
                self._withdrawn.discard(ticket)
                return False
            self._drop_withdrawn()
            return True

    def _drop_withdrawn(self) -> None:  # under the lock; a commit under way keeps its own copy
        for entry in [e for e in self._items if e[0] in self._withdrawn]:
            self._items.remove(entry)
            self._bytes -= len(entry[1].payload)
            self._withdrawn.discard(entry[0])

    def take(self, limit: int) -> Batch | None:
        """The oldest ``limit`` items, left in the queue until ``done``."""
        with self._cv:
            self._drop_withdrawn()
            if not self._items:
                return None
            taken = [self._items[i] for i in range(min(limit, len(self._items)))]
            self._committing = taken[-1][0]
        return Batch([item for _, item in taken], taken[-1][0])

    def done(self, batch: Batch) -> None:
        """``batch`` is committed: its submitters stop waiting."""
        with self._cv:
            while self._items and self._items[0][0] <= batch.last:
                _, item = self._items.popleft()
                self._bytes -= len(item.payload)
            self._committed = batch.last
            self._committing = 0
            if self.slow_since is not None:
                log.warning(
                    "outbox: commits go through again after %.1f s",
                    time.monotonic() - self.slow_since,
                )
                self.slow_since = None
            self._cv.notify_all()

    def warnings(self) -> list[str]:
        """For the gateway status: the stall, while it lasts."""
        since = self.slow_since
        if since is None:
            return []
        return [
            f"outbox: database commits stalled for {time.monotonic() - since:.0f} s (slow or "
            f"failing SD card?); {len(self)} item(s) wait in memory and are lost if power fails now"
        ]

    def run_writer(self, write: Callable[[], None], stop: threading.Event, where: str) -> None:
        """The writer thread's loop: ``write()`` (commit what waits) whenever there is work,
        until ``stop`` (then one last ``write``). A failing ``write`` (disk full, I/O error) is
        tried again every ``RETRY_S``; nothing waiting is dropped meanwhile."""
        failing_since: float | None = None
        last_said = float("-inf")
        while True:
            self.work.wait(IDLE_WAKE_S)
            self.work.clear()  # before looking: what arrives from now on wakes us again
            stopping = stop.is_set()
            try:
                write()
            except Exception as exc:
                with self._cv:  # the commit under way failed: its items wait for the next one
                    self._committing = 0
                    self._cv.notify_all()
                now = time.monotonic()
                failing_since = failing_since or now
                if now - last_said >= FAILING_LOG_EVERY_S:
                    last_said = now
                    log.error(
                        "outbox: cannot commit to %s for %.0f s (%s); %d submitted item(s) wait "
                        "in memory (lost if power fails now); retrying every %.0f s",
                        where,
                        now - failing_since,
                        exc,
                        len(self),
                        RETRY_S,
                    )
                if stop.wait(RETRY_S):
                    return
                self.work.set()
                continue
            if failing_since is not None:
                log.warning(
                    "outbox: commits to %s work again after %.0f s",
                    where,
                    time.monotonic() - failing_since,
                )
                failing_since, last_said = None, float("-inf")
            if stopping:
                return

    def close(self) -> None:
        with self._cv:
            self._closed = True

    def __len__(self) -> int:
        with self._cv:
            return len(self._items)

    def by_kind(self) -> tuple[Counter[str], int]:
        """What waits for the writer, by kind, and its bytes."""
        with self._cv:
            return Counter(item.kind for _, item in self._items), self._bytes
