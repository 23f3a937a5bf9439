"""The ``outbox`` thread: sends what the queue holds, in drain order, within the in-flight window
and the bandwidth cap, while the link is up; an item not acknowledged in time is sent again.

It never commits, except dropping a clip whose file is gone or unreadable: submits and acks are
committed by the writer (``service``). It holds the ``Outbox`` lock only to choose and to mark
what it sends, never while it reads a chunk from the SD card or publishes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from guetteur.uplink import protocol
from guetteur.uplink.outbox import policy
from guetteur.uplink.outbox.interfaces import OutboxLink
from guetteur.uplink.outbox.store import OutboxStore, QueuedItem

log = logging.getLogger(__name__)

DISCONNECTED_WAIT_S = 0.5
RATE_WAIT_MAX_S = 0.5
ERROR_WAIT_S = 1.0


class Sender:
    """The send loop of one ``Outbox``, sharing its store, lock, window and counters:
    ``run()`` on the ``outbox`` thread until ``stop`` is set; ``wakeup`` makes it look again at
    once (something was committed, acknowledged, or the link came up)."""

    def __init__(
        self,
        link: OutboxLink,
        store: OutboxStore,
        lock: threading.RLock,
        window: policy.SendWindow,
        limiter: policy.RateLimiter,
        counters: dict[str, int],
        refresh_depth: Callable[[], None],
        stop: threading.Event,
        wakeup: threading.Event,
    ) -> None:
        self.link = link
        self.epoch = store.epoch
        self._store = store
        self._lock = lock
        self._window = window
        self._limiter = limiter
        self._counters = counters
        self._refresh_depth = refresh_depth
        self._stop = stop
        self._wakeup = wakeup

    def run(self) -> None:
        while not self._stop.is_set():
            self._wakeup.clear()  # before looking: what arrives from now on wakes the next turn
            try:
                wait = self._pump()
            except sqlite3.Error:
                log.exception("outbox: database error while sending; retrying in 1 s")
                wait = ERROR_WAIT_S
            except Exception:
                log.exception("outbox: unexpected error while sending; retrying in 1 s")
                wait = ERROR_WAIT_S
            if wait > 0 and not self._stop.is_set():
                self._wakeup.wait(wait)

    def _pump(self) -> float:
        """Send what the window, the bandwidth cap and the link allow; returns how long to wait
        before trying again (woken earlier by submits, acks and connections)."""
        if not self.link.connected:
            return DISCONNECTED_WAIT_S
        with self._lock:
            expired = self._window.expire()
            if expired:
                log.info("outbox: %d item(s) not acknowledged in time; sending again", len(expired))
            if self._window.free <= 0:
                return self._window.next_wait()
            # the head of the queue, without payloads; in-flight items are skipped
            chosen = self._window.choose(self._store.head(self._window.max_items))
            if not chosen:
                return self._window.next_wait()
            found = self._store.load(chosen)
        sent = 0
        for item_id in chosen:
            item = found.get(item_id)
            if item is None:
                continue
            delay = self._limiter.delay(item.size)
            if delay > 0:
                return min(delay, RATE_WAIT_MAX_S)
            if not self.link.connected or self._stop.is_set():
                return 0.2
            if self._send(item):
                sent += 1
        if sent:
            return 0.0
        with self._lock:
            return self._window.next_wait()

    def _send(self, item: QueuedItem) -> bool:
        payload = item.payload
        if payload is None and item.clip_id is not None and item.chunk is not None:
            payload = self._read_chunk(item.clip_id, item.chunk)
        if payload is None:
            return False
        props = dict(item.props)
        props[protocol.PROP_ITEM_ID] = item.item_id
        props[protocol.PROP_EPOCH] = self.epoch
        if item.cseq is not None:
            props[protocol.PROP_CSEQ] = str(item.cseq)
        with self._lock:
            # the size cap may have evicted it meanwhile (a submit on another thread)
            if not self._store.has_item(item.item_id):
                return False
            attempts = self._window.fly(item.item_id, item.size)
        self.link.publish_raw(
            self.link.topics.full(item.topic),
            payload,
            qos=1,
            content_type=item.content_type,
            user_props=props,
        )
        self._counters["sent"] += 1
        if attempts > 1:
            self._counters["resent"] += 1
            log.debug("outbox: %s sent again (attempt %d)", item.item_id, attempts)
        return True

    def _read_chunk(self, clip_id: str, n: int) -> bytes | None:
        with self._lock:
            where = self._store.chunk_location(clip_id, n)
            if where is None:
                self._store.delete_items([protocol.clip_chunk_item_id(clip_id, n)])
                self._refresh_depth()
                return None
        try:  # outside the lock: a chunk read from the SD card must not hold up submits
            with open(where.path, "rb") as f:
                f.seek(where.offset)
                return f.read(where.length)
        except OSError as exc:
            log.error(
                "outbox: clip %s file %s unreadable (%s); clip dropped", clip_id, where.path, exc
            )
            with self._lock:
                self._store.drop_clip(clip_id, "its file is unreadable")
                self._refresh_depth()
            return None
