"""The durable Publisher: a store-and-forward queue between the pipeline and the link.

Every event, snapshot, audit record and clip enters the outbox before anything is published and
leaves it only when the centre acknowledges its id on ``{root}/{gw}/ack``: a broker PUBACK only
means the broker has the message, the centre's ack means it is stored for good.

Rules, in the order they matter:

- **Nothing acknowledged is lost, nothing unacknowledged is dropped** — except clips, then
  snapshots, when the outbox is over its size cap (oldest first). Events and audit records are
  never dropped: the cap is exceeded and a warning raised instead.
- **Drain order**: priority (events, audit, snapshots, clips), then submission order. Events carry
  a per-camera sequence number (``cseq`` user property, with the database ``epoch``) so the centre
  can store them in camera order even when a retransmission overtakes a later event.
- **In-flight window**: at most ``inflight`` items (and a few MiB) sent and not yet acknowledged.
  An item not acknowledged within ``retry_s`` is sent again, with exponential backoff; after a
  reconnection the in-flight items get a fresh ``retry_s`` (the MQTT session re-sends them first).
- **Bandwidth cap**: ``drain_bytes_per_s`` limits what the outbox publishes, so a backlog drain
  never starves live streams (which never enter the outbox: they are published with QoS 0).
- **Clips**: the file moves into the outbox directory; the manifest goes first (size, sha256, chunk
  size, count, per-chunk sha256), then chunks read from the file at send time. Chunks are
  acknowledged one by one, so after a reconnection or a restart only unacknowledged chunks are
  sent again. The manifest is acknowledged when the centre has the whole clip and its sha256
  matched; the file is deleted then. The centre asks for chunks again with ``resend``.
- **Threads**: neither a camera's analysis thread nor the link's network thread waits for the
  database (a slow SD-card fsync there would stall analysis and MQTT keep-alive). The
  ``outbox-writer`` thread makes the commits: submitted items, in batches (``handoff``: a submit
  waits for its commit at most ``SUBMIT_WAIT_S``, and not at all while the disk is slow), and the
  acks and reconnections the network thread hands over. The ``outbox`` thread sends. ``depth()``
  answers from figures the writer keeps after each commit, so status never waits for the disk.
  Clips (``submit_clip``, on the clip worker) commit on the caller's thread.

Where things live: ``store`` (SQLite and clip files: every durable change), ``policy`` (the
decisions, no I/O), this module (the send loop, the Publisher, clip upload).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from guetteur.config import OutboxConfig
from guetteur.uplink import messages, protocol
from guetteur.uplink.outbox import policy
from guetteur.uplink.outbox.handoff import CommitQueue, HandoffClosed
from guetteur.uplink.outbox.interfaces import InboundMessage, OutboxError, OutboxLink
from guetteur.uplink.outbox.store import KIND_CLIP_CHUNK, OutboxStore, QueuedItem
from guetteur.uplink.publish import ClipFile, OutboundItem

log = logging.getLogger(__name__)

# Ack messages received and not yet committed. One message carries up to MAX_ACK_IDS ids and the
# outbox thread commits everything waiting in one transaction, so this fills only when that thread
# is stuck (a stalled disk): see _on_ack_message for what happens then.
ACK_QUEUE_SIZE = 1000
# Submitted items waiting for the writer's commit: past this bound snapshots are refused, events
# and audit records kept in memory anyway (uplink/outbox/handoff.py).
SUBMIT_QUEUE_ITEMS = 1000
SUBMIT_QUEUE_BYTES = 16 * 1024 * 1024
# How long a submit waits for its item's commit before handing it over without waiting: an
# SD card's fsync takes tens of ms; past a second the card is stalled.
SUBMIT_WAIT_S = 1.0
# How long a record that must be on disk before its action (audit) may wait for it.
DURABLE_WAIT_S = 3.0
WRITE_BATCH = 500  # items per commit
CLOSE_WRITE_S = 5.0  # how long close() lets the writer commit what is still waiting
DISCONNECTED_WAIT_S = 0.5
RATE_WAIT_MAX_S = 0.5
ERROR_WAIT_S = 1.0


def _hash_file(path: Path, chunk_size: int) -> tuple[int, str, list[str]]:
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
            size += len(block)
    return size, whole.hexdigest(), chunks


class Outbox:
    """The durable Publisher. ``Outbox(config.outbox, data_dir, link, gateway_id)``, then
    ``start()``; ``close()`` at shutdown (items stay on disk for the next start)."""

    def __init__(
        self,
        config: OutboxConfig,
        data_dir: str | os.PathLike[str],
        link: OutboxLink,
        gateway_id: str,
        clock: policy.Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.link = link
        self.gateway_id = gateway_id
        # guards the store and the window; held for each commit, never by the network thread
        # and never by a submitting camera thread (they hand over to the writer)
        self._lock = threading.RLock()
        self._wakeup = threading.Event()  # the send loop has something new to look at
        self._window = policy.SendWindow(config.inflight, config.retry_s, clock=clock)
        self._limiter = policy.RateLimiter(config.drain_bytes_per_s, clock=clock)
        self._store = OutboxStore(
            Path(data_dir) / "outbox", config.max_bytes, on_removed=self._window.forget
        )
        self.epoch = self._store.epoch
        self._submits = CommitQueue(SUBMIT_QUEUE_ITEMS, SUBMIT_QUEUE_BYTES, SUBMIT_WAIT_S)
        self._acks: queue.Queue[protocol.Ack] = queue.Queue(ACK_QUEUE_SIZE)
        self._acks_overflowing = False
        self._reconnected = threading.Event()
        self._resync_due = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._depth: dict[str, Any] = {}
        self._refresh_depth()
        self._writer_stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)
        self._counters = {
            "sent": 0,
            "resent": 0,
            "acked": 0,
            "unknown_acks": 0,
            "bad_acks": 0,
            "dropped_acks": 0,
            "resend_requests": 0,
        }
        self._writer.start()
        link.subscribe(link.topics.ack, self._on_ack_message, qos=1)
        link.add_connect_listener(self._on_connect)

    @property
    def counters(self) -> dict[str, int]:
        return {
            **self._counters,
            "dropped_clips": self._store.dropped_clips,
            "dropped_snapshots": self._store.dropped_snapshots + self._submits.refused_snapshots,
            "spilled": self._submits.spilled,
        }

    # -- Publisher -----------------------------------------------------------------------------

    def submit(self, item: OutboundItem) -> None:
        """Hand ``item`` to the writer; returns once it is on disk, or after ``SUBMIT_WAIT_S``
        (at once while the disk is known to be slow). It is sent when the link is up."""
        if item.kind == "live":  # live video is never queued: late video is useless
            self.link.publish_raw(
                self.link.topics.full(item.topic),
                item.payload,
                qos=0,
                content_type=item.content_type,
                user_props=item.user_properties,
            )
            return
        try:
            ticket = self._submits.put(item)
        except HandoffClosed as exc:
            raise OutboxError(str(exc)) from None
        if ticket is not None:
            self._submits.wait(ticket)

    def submit_durable(self, item: OutboundItem, timeout: float = DURABLE_WAIT_S) -> None:
        """Store ``item`` and return only once it is on disk, slow disk or not (an audit record
        before its action). Raises OutboxError when it is not on disk within ``timeout``; the
        item is then taken back and never stored, unless a commit holding it is still under way
        after another ``timeout`` (that commit decides; said in the error)."""
        try:
            ticket = self._submits.put(item)
        except HandoffClosed as exc:
            raise OutboxError(str(exc)) from None
        if ticket is None:
            raise OutboxError(f"{item.kind} {item.item_id} refused: the hand-off is full")
        if self._submits.wait_stored(ticket, timeout):
            return
        withdrawn = self._submits.withdraw(ticket, timeout)
        if withdrawn is False:
            return  # stored while we were taking it back
        if withdrawn:
            raise OutboxError(f"{item.kind} not on disk within {timeout:.0f} s (disk stalled)")
        raise OutboxError(
            f"{item.kind} {item.item_id} not on disk within {2 * timeout:.0f} s (disk stalled); "
            "the commit holding it is still under way and may yet store it"
        )

    def submit_clip(self, clip: ClipFile) -> None:
        """Hash the clip, queue its manifest and chunks, and take the file into the outbox."""
        source = Path(clip.path)
        with self._lock:
            if self._store.has_clip(clip.clip_id):
                return
        if not protocol.valid_id(clip.clip_id):
            log.error(
                "outbox: clip id %r is not a valid id; clip %s not uploaded", clip.clip_id, source
            )
            return
        chunk_size = self.config.chunk_bytes
        try:
            size, sha, chunk_sha = _hash_file(source, chunk_size)
        except OSError as exc:
            log.error(
                "camera %s: clip %s cannot be read (%s); not uploaded",
                clip.camera,
                clip.clip_id,
                exc,
            )
            return
        count = len(chunk_sha)
        manifest = messages.clip_manifest(
            clip,
            protocol.clip_manifest_item_id(clip.clip_id),
            self.gateway_id,
            size,
            sha,
            chunk_size,
            chunk_sha,
        )
        payload = protocol.dumps(manifest)
        with self._lock:
            queued = self._store.add_clip(clip, size, chunk_size, count, payload)
            self._refresh_depth()
        if not queued:
            log.error(
                "camera %s: clip %s (%d bytes) dropped: the outbox is full of "
                "events and audit records",
                clip.camera,
                clip.clip_id,
                size,
            )
            return
        self._wakeup.set()
        log.info(
            "camera %s: clip %s queued for upload (%d bytes, %d chunks)",
            clip.camera,
            clip.clip_id,
            size,
            count,
        )

    # -- from the network thread: hand over, never commit ----------------------------------------

    def _on_ack_message(self, msg: InboundMessage) -> None:
        try:
            ack = protocol.parse_ack(bytes(msg.payload))
        except protocol.MessageError as exc:
            self._counters["bad_acks"] += 1
            log.warning("outbox: ignored a malformed ack on %s: %s", msg.topic, exc)
            return
        try:
            self._acks.put_nowait(ack)
        except queue.Full:
            # The outbox thread is far behind (a stalled disk) and blocking here would stall
            # keep-alive. Dropping this ack loses nothing: its items stay queued and in flight,
            # are sent again at their retry deadline, and the centre acknowledges a duplicate
            # again; a lost ``resend`` is asked again when the clip's manifest comes again. Only
            # ``resync`` is kept, as a flag. Counted in ``dropped_acks`` and logged.
            self._counters["dropped_acks"] += 1
            if ack.resync:
                self._resync_due.set()
            if not self._acks_overflowing:
                self._acks_overflowing = True
                log.warning(
                    "outbox: %d acks wait to be committed (is the disk stalled?); ignoring "
                    "new acks meanwhile, their items will be sent again and acknowledged again",
                    ACK_QUEUE_SIZE,
                )
        else:
            if self._acks_overflowing:
                self._acks_overflowing = False
                log.warning(
                    "outbox: taking acks again; %d ack message(s) ignored since start",
                    self._counters["dropped_acks"],
                )
        self._submits.work.set()

    def _on_connect(self) -> None:
        self._reconnected.set()
        self._submits.work.set()
        self._wakeup.set()

    # -- the writer thread: every commit of submits and acks -----------------------------------

    def _write_loop(self) -> None:
        self._submits.run_writer(self._write, self._writer_stop, str(self._store.db_path))

    def _write(self) -> None:
        self._commit_submits()
        self._take_acks()

    def _commit_submits(self) -> None:
        while (batch := self._submits.take(WRITE_BATCH)) is not None:
            with self._lock:
                if self._closed:
                    return
                self._store.enqueue_many(batch.items)  # one transaction, one fsync
                self._refresh_depth()
            self._submits.done(batch)
            self._wakeup.set()

    def _take_acks(self) -> None:
        """Commit, in one transaction, the acks the network thread handed over; apply the
        reconnections and resync requests it noted."""
        acks: list[protocol.Ack] = []
        while True:
            try:
                acks.append(self._acks.get_nowait())
            except queue.Empty:
                break
        reconnected = self._reconnected.is_set()
        self._reconnected.clear()
        resync = self._resync_due.is_set()
        self._resync_due.clear()
        if not (acks or reconnected or resync):
            return
        with self._lock:
            if self._closed:
                return
            if reconnected:
                self._window.defer_all()
            try:
                with self._store.tx():
                    for ack in acks:
                        self._apply_ack(ack)
            except sqlite3.Error as exc:
                log.error(
                    "outbox: database error while committing %d ack message(s) (%s); their items "
                    "stay queued, are sent again and will be acknowledged again",
                    len(acks),
                    exc,
                )
            if resync:
                self._resync()
            self._refresh_depth()
        self._wakeup.set()

    def _apply_ack(self, ack: protocol.Ack) -> None:
        ids = set(ack.ids)
        found = self._store.remove_acked(ids)
        for item_id in ack.resend:
            self._counters["resend_requests"] += 1
            if not self._window.land(item_id):  # in flight: due again now
                self._store.requeue_chunk(item_id)  # acknowledged chunk of a queued clip
        self._counters["acked"] += found
        self._counters["unknown_acks"] += len(ids) - found
        if len(ids) > found:
            log.debug(
                "outbox: %d acked id(s) were not queued (duplicate or unknown acks)",
                len(ids) - found,
            )
        if ack.resync:
            self._resync()

    def _resync(self) -> None:
        """Everything in flight is due again now (a centre receiver has just connected: what was
        published while none listened may never reach it)."""
        count = self._window.land_all()
        if count:
            log.info(
                "outbox: centre receiver (re)connected; sending %d unacknowledged item(s) "
                "again now",
                count,
            )

    # -- the outbox thread: sending ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop sending; let the writer commit what was submitted and the acks already received
        (not sent again later), within ``CLOSE_WRITE_S``; close the database."""
        self._submits.close()
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._writer_stop.set()
        self._submits.work.set()
        self._writer.join(CLOSE_WRITE_S)
        with self._lock:
            if not self._closed:
                self._closed = True
                left = len(self._submits)
                if left:
                    log.error(
                        "outbox: closing with %d submitted item(s) not committed (the database "
                        "did not answer within %.0f s); they are lost",
                        left,
                        CLOSE_WRITE_S,
                    )
                self._store.close()

    def _run(self) -> None:
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

    # -- status --------------------------------------------------------------------------------

    def _refresh_depth(self) -> None:
        """The store's part of ``depth()``, kept after each commit (under the lock)."""
        backlog = self._store.backlog()
        self._depth = {
            "by_kind": backlog.by_kind,
            "clips": backlog.clips,
            "bytes": self._store.bytes,
            "oldest_created": backlog.oldest_created,
        }

    def depth(self) -> dict[str, Any]:
        """What waits, for the gateway status message: from the figures kept at the last commit
        and the items waiting for the writer, so it never waits for the disk (it is called on
        the network thread when the link comes up)."""
        stored = self._depth
        waiting, waiting_bytes = self._submits.by_kind()
        by_kind = Counter(stored["by_kind"]) + waiting
        oldest = stored["oldest_created"]
        return {
            "items": sum(by_kind.values()),
            "events": by_kind.get("event", 0),
            "snapshots": by_kind.get("snapshot", 0),
            "audit": by_kind.get("audit", 0),
            "clips": stored["clips"],
            "clip_chunks": by_kind.get(KIND_CLIP_CHUNK, 0),
            "bytes": stored["bytes"] + waiting_bytes,
            "max_bytes": self.config.max_bytes,
            "inflight": len(self._window),
            "oldest_s": round(time.time() - oldest, 1) if oldest else 0.0,
            "dropped_clips": self._store.dropped_clips,
            "dropped_snapshots": self._store.dropped_snapshots + self._submits.refused_snapshots,
        }

    def warnings(self) -> list[str]:
        return (
            self._store.startup_warnings
            + self._submits.warnings()
            + policy.capacity_warnings(
                self._store.bytes,
                self.config.max_bytes,
                self._store.dropped_clips,
                self._store.dropped_snapshots + self._submits.refused_snapshots,
            )
        )

    def wait_empty(self, timeout: float) -> bool:
        """Block until every item is acknowledged (tests, orderly shutdown)."""
        deadline = time.monotonic() + timeout
        while self.depth()["items"]:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.05))
        return True
