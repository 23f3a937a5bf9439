"""Durable store-and-forward queue between the pipeline and the link (SQLite WAL).

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
- **Corrupt database at start**: moved aside (``outbox.db.corrupt-TIME``), reported in the
  warnings, and a fresh database (a new epoch) is started.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from guetteur.config import OutboxConfig
from guetteur.uplink import messages, protocol
from guetteur.uplink.link import Link
from guetteur.uplink.publish import ClipFile, OutboundItem, Priority

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    priority INTEGER NOT NULL,
    camera TEXT,
    content_type TEXT NOT NULL,
    props TEXT NOT NULL,
    payload BLOB,             -- NULL for clip chunks: read from the clip file at send time
    size INTEGER NOT NULL,
    clip_id TEXT,
    chunk INTEGER,
    cseq INTEGER,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_order ON items (priority, seq);
CREATE INDEX IF NOT EXISTS items_clip ON items (clip_id);
CREATE TABLE IF NOT EXISTS clips (
    clip_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    camera TEXT,
    size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    count INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cseq (camera TEXT PRIMARY KEY, last INTEGER NOT NULL);
"""

KIND_CLIP_MANIFEST = "clip_manifest"
KIND_CLIP_CHUNK = "clip_chunk"
MAX_INFLIGHT_BYTES = 8 << 20  # paho keeps unacknowledged payloads in memory: bound them
BACKOFF_MAX_FACTOR = 8  # the retry interval grows up to retry_s * 8
NEAR_FULL = 0.9


class OutboxError(RuntimeError):
    pass


@dataclass
class _Flight:
    deadline: float
    size: int


class _RateLimiter:
    """Token bucket in bytes; an item larger than the bucket is let through when it is full and
    then paid back, so the long-run rate holds whatever the item sizes."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.burst = float(max(rate // 4, 16 * 1024)) if rate else 0.0
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def delay(self, size: int) -> float:
        """Seconds to wait before ``size`` bytes may go; 0 means take them now."""
        if not self.rate:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(float(size), self.burst)
        if self.tokens >= need:
            self.tokens -= size
            return 0.0
        return (need - self.tokens) / self.rate


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
        self, config: OutboxConfig, data_dir: str | os.PathLike[str], link: Link, gateway_id: str
    ) -> None:
        self.config = config
        self.link = link
        self.gateway_id = gateway_id
        self.dir = Path(data_dir) / "outbox"
        self.clip_dir = self.dir / "clips"
        self.clip_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.dir / "outbox.db"
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._inflight: dict[str, _Flight] = {}
        self._inflight_bytes = 0
        self._attempts: dict[str, int] = {}
        self._limiter = _RateLimiter(config.drain_bytes_per_s)
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._startup_warnings: list[str] = []
        self.counters = {
            "sent": 0,
            "resent": 0,
            "acked": 0,
            "unknown_acks": 0,
            "bad_acks": 0,
            "dropped_clips": 0,
            "dropped_snapshots": 0,
            "resend_requests": 0,
        }
        self._db = self._open()
        self.epoch = self._epoch()
        self._bytes = self._count_bytes()
        self._recover_clips()
        link.subscribe(link.topics.ack, self._on_ack_message, qos=1)
        link.add_connect_listener(self._on_connect)

    # -- database ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.db_path, check_same_thread=False, isolation_level=None, timeout=10.0
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged submit survives a power cut
            db.executescript(SCHEMA)
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(
                    f"integrity check failed: {row[0] if row else 'no answer'}"
                )
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = self.db_path.with_name(f"{self.db_path.name}.corrupt-{stamp}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.db_path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            msg = (
                f"outbox database {self.db_path} was unreadable at start ({exc}); moved aside "
                f"to {aside.name}; its unsent items are lost; a fresh outbox was started"
            )
            log.error("%s", msg)
            self._startup_warnings.append(msg)
            return self._connect()

    def _epoch(self) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        if row:
            return str(row[0])
        epoch = uuid.uuid4().hex[:16]
        self._db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        return epoch

    def _count_bytes(self) -> int:
        items = self._db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM items WHERE kind != ?", (KIND_CLIP_CHUNK,)
        ).fetchone()[0]
        clips = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM clips").fetchone()[0]
        return int(items) + int(clips)

    def _recover_clips(self) -> None:
        """Finish a clip move cut short by a crash; forget clips whose file is gone; delete
        files no clip refers to."""
        known: set[str] = set()
        for clip_id, path, source in self._db.execute(
            "SELECT clip_id, path, source FROM clips"
        ).fetchall():
            if not Path(path).exists() and Path(source).exists():
                shutil.move(source, path)
            if Path(path).exists():
                known.add(Path(path).name)
            else:
                log.error(
                    "outbox: clip %s file %s is missing; the clip cannot be uploaded and "
                    "is dropped",
                    clip_id,
                    path,
                )
                self._drop_clip(clip_id, "its file is missing")
        for f in self.clip_dir.iterdir():
            if f.name not in known:
                log.warning("outbox: deleting %s, a clip file no queued clip refers to", f)
                f.unlink(missing_ok=True)

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction (nested calls join the outer one)."""
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- Publisher -----------------------------------------------------------------------------

    def submit(self, item: OutboundItem) -> None:
        """Store ``item`` durably (returns once it is on disk); it is sent when the link is up."""
        if item.kind == "live":  # live video is never queued: late video is useless
            self.link.publish_raw(
                self.link.topics.full(item.topic),
                item.payload,
                qos=0,
                content_type=item.content_type,
                user_props=item.user_properties,
            )
            return
        size = len(item.payload)
        with self._lock:
            if self._closed:
                raise OutboxError(f"outbox closed: {item.kind} {item.item_id} not queued")
            if self._db.execute("SELECT 1 FROM items WHERE item_id=?", (item.item_id,)).fetchone():
                return  # already queued: submit is idempotent by id
            with self._tx():
                if not self._make_room(size, item.kind):
                    return
                cseq = (
                    self._next_cseq(item.camera) if item.kind == "event" and item.camera else None
                )
                self._insert(
                    item.item_id,
                    item.kind,
                    item.topic,
                    int(item.priority),
                    item.camera,
                    item.content_type,
                    item.user_properties,
                    item.payload,
                    size,
                    None,
                    None,
                    cseq,
                )
            self._bytes += size
            self._wake.notify_all()

    def submit_clip(self, clip: ClipFile) -> None:
        """Hash the clip, queue its manifest and chunks, and take the file into the outbox."""
        source = Path(clip.path)
        with self._lock:
            if self._db.execute("SELECT 1 FROM clips WHERE clip_id=?", (clip.clip_id,)).fetchone():
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
        target = self.clip_dir / f"{clip.clip_id}.mp4"
        with self._lock:
            with self._tx():
                if not self._make_room(size + len(payload), "clip"):
                    log.error(
                        "camera %s: clip %s (%d bytes) dropped: the outbox is full of "
                        "events and audit records",
                        clip.camera,
                        clip.clip_id,
                        size,
                    )
                    return
                self._db.execute(
                    "INSERT INTO clips (clip_id, path, source, camera, size, chunk_size, count, "
                    "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        clip.clip_id,
                        str(target),
                        str(source),
                        clip.camera,
                        size,
                        chunk_size,
                        count,
                        time.time(),
                    ),
                )
                base_props = {"clip_id": clip.clip_id}
                if clip.event_id:
                    base_props["event_id"] = clip.event_id
                self._insert(
                    protocol.clip_manifest_item_id(clip.clip_id),
                    KIND_CLIP_MANIFEST,
                    protocol.rel_clip(clip.clip_id, protocol.CLIP_MANIFEST_PART),
                    int(Priority.CLIP),
                    clip.camera,
                    "application/json",
                    base_props,
                    payload,
                    len(payload),
                    clip.clip_id,
                    None,
                    None,
                )
                for n in range(count):
                    length = min(chunk_size, size - n * chunk_size)
                    self._insert(
                        protocol.clip_chunk_item_id(clip.clip_id, n),
                        KIND_CLIP_CHUNK,
                        protocol.rel_clip(clip.clip_id, n),
                        int(Priority.CLIP),
                        clip.camera,
                        "video/mp4",
                        {**base_props, "n": str(n)},
                        None,
                        length,
                        clip.clip_id,
                        n,
                        None,
                    )
            # under the lock: the sender must not look for the file before it is in place
            shutil.move(str(source), str(target))
            self._bytes += size + len(payload)
            self._wake.notify_all()
        log.info(
            "camera %s: clip %s queued for upload (%d bytes, %d chunks)",
            clip.camera,
            clip.clip_id,
            size,
            count,
        )

    def _insert(
        self,
        item_id: str,
        kind: str,
        topic: str,
        priority: int,
        camera: str | None,
        content_type: str,
        props: dict[str, str],
        payload: bytes | None,
        size: int,
        clip_id: str | None,
        chunk: int | None,
        cseq: int | None,
    ) -> None:
        self._db.execute(
            "INSERT INTO items (item_id, kind, topic, priority, camera, content_type, props, "
            "payload, size, clip_id, chunk, cseq, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                item_id,
                kind,
                topic,
                priority,
                camera,
                content_type,
                json.dumps(props),
                payload,
                size,
                clip_id,
                chunk,
                cseq,
                time.time(),
            ),
        )

    def _next_cseq(self, camera: str) -> int:
        row = self._db.execute(
            "INSERT INTO cseq (camera, last) VALUES (?, 1) "
            "ON CONFLICT (camera) DO UPDATE SET last = last + 1 RETURNING last",
            (camera,),
        ).fetchone()
        return int(row[0])

    # -- size cap ------------------------------------------------------------------------------

    def _make_room(self, size: int, kind: str) -> bool:
        """Drop the oldest clips, then the oldest snapshots, until ``size`` more bytes fit.
        Events and audit records always get in (the cap is then exceeded, with a warning);
        a new clip or snapshot that cannot fit is refused."""
        cap = self.config.max_bytes
        while self._bytes + size > cap:
            clip = self._db.execute("SELECT clip_id FROM clips ORDER BY created LIMIT 1").fetchone()
            if clip:
                self._drop_clip(str(clip[0]), f"the outbox is full, room needed for a {kind}")
                continue
            if kind == "clip":
                self.counters["dropped_clips"] += 1
                return False
            snap = self._db.execute(
                "SELECT item_id FROM items WHERE kind='snapshot' ORDER BY seq LIMIT 1"
            ).fetchone()
            if snap:
                self._delete_items([str(snap[0])])
                self.counters["dropped_snapshots"] += 1
                log.warning("outbox full: snapshot %s dropped to make room for a %s", snap[0], kind)
                continue
            if kind == "snapshot":
                self.counters["dropped_snapshots"] += 1
                log.warning("outbox full (%d of %d bytes): new snapshot dropped", self._bytes, cap)
                return False
            return True  # events and audit records are never dropped
        return True

    def _drop_clip(self, clip_id: str, why: str) -> None:
        with self._tx():
            self._drop_clip_rows(clip_id, why)

    def _drop_clip_rows(self, clip_id: str, why: str) -> None:
        row = self._db.execute(
            "SELECT path, size FROM clips WHERE clip_id=?", (clip_id,)
        ).fetchone()
        ids = [
            r[0] for r in self._db.execute("SELECT item_id FROM items WHERE clip_id=?", (clip_id,))
        ]
        self._delete_items(ids)
        if row:
            self._db.execute("DELETE FROM clips WHERE clip_id=?", (clip_id,))
            self._bytes -= int(row[1])
            Path(row[0]).unlink(missing_ok=True)
            self.counters["dropped_clips"] += 1
            log.warning("outbox: clip %s dropped (%s)", clip_id, why)

    def _delete_items(self, ids: Iterable[str]) -> list[tuple[str, str, int, str | None]]:
        """Delete rows by id; returns (item_id, kind, size, clip_id) of the rows that existed."""
        found: list[tuple[str, str, int, str | None]] = []
        batch = list(ids)
        for i in range(0, len(batch), 500):
            part = batch[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self._db.execute(
                f"SELECT item_id, kind, size, clip_id FROM items WHERE item_id IN ({marks})", part
            ).fetchall()
            if rows:
                self._db.execute(f"DELETE FROM items WHERE item_id IN ({marks})", part)
            for item_id, kind, size, clip_id in rows:
                found.append((item_id, kind, size, clip_id))
                if kind != KIND_CLIP_CHUNK:
                    self._bytes -= int(size)
                self._land(item_id)
                self._attempts.pop(item_id, None)
        return found

    # -- acknowledgements ------------------------------------------------------------------------

    def _on_ack_message(self, msg: mqtt.MQTTMessage) -> None:
        try:
            ack = protocol.parse_ack(bytes(msg.payload))
        except protocol.MessageError as exc:
            self.counters["bad_acks"] += 1
            log.warning("outbox: ignored a malformed ack on %s: %s", msg.topic, exc)
            return
        self.ack(ack.ids, ack.resend)
        if ack.resync:
            self.resync()

    def resync(self) -> None:
        """Everything in flight is due again now (a centre receiver has just connected: what was
        published while none listened may never reach it)."""
        with self._lock:
            count = len(self._inflight)
            for item_id in list(self._inflight):
                self._land(item_id)
            self._wake.notify_all()
        if count:
            log.info(
                "outbox: centre receiver (re)connected; sending %d unacknowledged item(s) "
                "again now",
                count,
            )

    def ack(self, ids: list[str], resend: list[str] | None = None) -> int:
        """Remove acknowledged items; re-queue the ``resend`` ones. Returns items removed."""
        with self._lock:
            if self._closed:  # an ack that arrives during shutdown comes again next time
                return 0
            with self._tx():
                found = self._delete_items(set(ids))
                for _item_id, kind, _size, clip_id in found:
                    if kind == KIND_CLIP_MANIFEST and clip_id:
                        self._finish_clip(clip_id)
                self._resend(resend or [])
            unknown = len(set(ids)) - len(found)
            self.counters["acked"] += len(found)
            self.counters["unknown_acks"] += unknown
            if unknown:
                log.debug(
                    "outbox: %d acked id(s) were not queued (duplicate or unknown acks)", unknown
                )
            self._wake.notify_all()
        return len(found)

    def _finish_clip(self, clip_id: str) -> None:
        row = self._db.execute(
            "SELECT path, size FROM clips WHERE clip_id=?", (clip_id,)
        ).fetchone()
        rest = [
            r[0] for r in self._db.execute("SELECT item_id FROM items WHERE clip_id=?", (clip_id,))
        ]
        self._delete_items(rest)
        if row:
            self._db.execute("DELETE FROM clips WHERE clip_id=?", (clip_id,))
            self._bytes -= int(row[1])
            Path(row[0]).unlink(missing_ok=True)
            log.info("outbox: clip %s uploaded and verified by the centre", clip_id)

    def _resend(self, ids: list[str]) -> None:
        for item_id in ids:
            self.counters["resend_requests"] += 1
            if item_id in self._inflight:
                self._land(item_id)  # due again now
                continue
            parsed = protocol.parse_clip_item_id(item_id)
            if parsed is None or parsed[1] is None:
                continue
            clip_id, n = parsed[0], parsed[1]
            row = self._db.execute(
                "SELECT camera, size, chunk_size, count FROM clips WHERE clip_id=?", (clip_id,)
            ).fetchone()
            if row is None or not 0 <= n < int(row[3]):
                log.info("outbox: centre asked again for %s, which is no longer queued", item_id)
                continue
            if self._db.execute("SELECT 1 FROM items WHERE item_id=?", (item_id,)).fetchone():
                continue
            camera, size, chunk_size = row[0], int(row[1]), int(row[2])
            props = {"clip_id": clip_id, "n": str(n)}
            self._insert(
                item_id,
                KIND_CLIP_CHUNK,
                protocol.rel_clip(clip_id, n),
                int(Priority.CLIP),
                camera,
                "video/mp4",
                props,
                None,
                min(chunk_size, size - n * chunk_size),
                clip_id,
                n,
                None,
            )
            log.info("outbox: centre asked for chunk %d of clip %s again", n, clip_id)

    # -- sending -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)
        with self._lock:
            self._closed = True
            self._db.close()

    def _on_connect(self) -> None:
        # The session re-sends what was in flight; give it a full retry period before we do.
        with self._lock:
            deadline = time.monotonic() + self.config.retry_s
            for flight in self._inflight.values():
                flight.deadline = max(flight.deadline, deadline)
            self._wake.notify_all()

    def _retry_interval(self, attempts: int) -> float:
        return float(self.config.retry_s * min(2 ** max(attempts - 1, 0), BACKOFF_MAX_FACTOR))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._pump()
            except sqlite3.Error:
                log.exception("outbox: database error while sending; retrying in 1 s")
                wait = 1.0
            except Exception:
                log.exception("outbox: unexpected error while sending; retrying in 1 s")
                wait = 1.0
            if wait > 0:
                with self._lock:
                    if not self._stop.is_set():
                        self._wake.wait(wait)

    def _pump(self) -> float:
        """Send what the window, the bandwidth cap and the link allow; returns how long to wait
        before trying again (woken earlier by submits, acks and connections)."""
        if not self.link.connected:
            return 0.5
        now = time.monotonic()
        with self._lock:
            expired = [i for i, f in self._inflight.items() if f.deadline <= now]
            for item_id in expired:
                self._land(item_id)
            if expired:
                log.info("outbox: %d item(s) not acknowledged in time; sending again", len(expired))
            free = self.config.inflight - len(self._inflight)
            if free <= 0:
                return self._next_deadline(now)
            # the head of the queue without payloads; in-flight items are skipped
            head = self._db.execute(
                "SELECT item_id, size FROM items ORDER BY priority, seq LIMIT ?",
                (len(self._inflight) + free,),
            ).fetchall()
            chosen: list[str] = []
            room = MAX_INFLIGHT_BYTES - self._inflight_bytes
            for item_id, size in head:
                if item_id in self._inflight:
                    continue
                if len(chosen) >= free or ((chosen or self._inflight) and size > room):
                    break
                chosen.append(item_id)
                room -= size
            if not chosen:
                return self._next_deadline(now) if self._inflight else 1.0
            marks = ",".join("?" * len(chosen))
            found = {
                r[0]: r
                for r in self._db.execute(
                    "SELECT item_id, kind, topic, camera, content_type, props, payload, size, "
                    f"clip_id, chunk, cseq FROM items WHERE item_id IN ({marks})",
                    chosen,
                )
            }
        sent = 0
        for item_id in chosen:
            row = found.get(item_id)
            if row is None:
                continue
            delay = self._limiter.delay(int(row[7]))
            if delay > 0:
                return min(delay, 0.5)
            if not self.link.connected or self._stop.is_set():
                return 0.2
            if self._send(row):
                sent += 1
        if sent:
            return 0.0
        with self._lock:
            return self._next_deadline(time.monotonic())

    def _fly(self, item_id: str, flight: _Flight) -> None:
        self._land(item_id)
        self._inflight[item_id] = flight
        self._inflight_bytes += flight.size

    def _land(self, item_id: str) -> None:
        flight = self._inflight.pop(item_id, None)
        if flight is not None:
            self._inflight_bytes -= flight.size

    def _next_deadline(self, now: float) -> float:
        if not self._inflight:
            return 1.0
        return max(0.01, min(min(f.deadline for f in self._inflight.values()) - now, 1.0))

    def _send(self, row: tuple[Any, ...]) -> bool:
        (
            item_id,
            _kind,
            topic,
            _camera,
            content_type,
            props_json,
            payload,
            size,
            clip_id,
            chunk,
            cseq,
        ) = row
        if payload is None:
            payload = self._read_chunk(str(clip_id), int(chunk))
            if payload is None:
                return False
        props: dict[str, str] = json.loads(props_json)
        props[protocol.PROP_ITEM_ID] = item_id
        props[protocol.PROP_EPOCH] = self.epoch
        if cseq is not None:
            props[protocol.PROP_CSEQ] = str(cseq)
        with self._lock:
            # an ack may have removed it meanwhile
            if not self._db.execute("SELECT 1 FROM items WHERE item_id=?", (item_id,)).fetchone():
                return False
            attempts = self._attempts.get(item_id, 0) + 1
            self._attempts[item_id] = attempts
            self._fly(
                item_id, _Flight(time.monotonic() + self._retry_interval(attempts), int(size))
            )
        self.link.publish_raw(
            self.link.topics.full(str(topic)),
            bytes(payload),
            qos=1,
            content_type=str(content_type),
            user_props=props,
        )
        self.counters["sent"] += 1
        if attempts > 1:
            self.counters["resent"] += 1
            log.debug("outbox: %s sent again (attempt %d)", item_id, attempts)
        return True

    def _read_chunk(self, clip_id: str, n: int) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT path, chunk_size, size FROM clips WHERE clip_id=?", (clip_id,)
            ).fetchone()
        if row is None:
            with self._lock:
                self._delete_items([protocol.clip_chunk_item_id(clip_id, n)])
            return None
        path, chunk_size, size = str(row[0]), int(row[1]), int(row[2])
        try:
            with open(path, "rb") as f:
                f.seek(n * chunk_size)
                data = f.read(min(chunk_size, size - n * chunk_size))
        except OSError as exc:
            log.error("outbox: clip %s file %s unreadable (%s); clip dropped", clip_id, path, exc)
            with self._lock:
                self._drop_clip(clip_id, "its file is unreadable")
            return None
        return data

    # -- status --------------------------------------------------------------------------------

    def depth(self) -> dict[str, Any]:
        """What waits, for the gateway status message."""
        with self._lock:
            by_kind = dict(
                self._db.execute("SELECT kind, COUNT(*) FROM items GROUP BY kind").fetchall()
            )
            clips = self._db.execute("SELECT COUNT(*) FROM clips").fetchone()[0]
            oldest = self._db.execute("SELECT MIN(created) FROM items").fetchone()[0]
            return {
                "items": sum(by_kind.values()),
                "events": by_kind.get("event", 0),
                "snapshots": by_kind.get("snapshot", 0),
                "audit": by_kind.get("audit", 0),
                "clips": int(clips),
                "clip_chunks": by_kind.get(KIND_CLIP_CHUNK, 0),
                "bytes": self._bytes,
                "max_bytes": self.config.max_bytes,
                "inflight": len(self._inflight),
                "oldest_s": round(time.time() - oldest, 1) if oldest else 0.0,
                "dropped_clips": self.counters["dropped_clips"],
                "dropped_snapshots": self.counters["dropped_snapshots"],
            }

    def warnings(self) -> list[str]:
        out = list(self._startup_warnings)
        cap = self.config.max_bytes
        if self._bytes > cap:
            out.append(
                f"outbox over its size cap ({self._bytes / 1e6:.1f} of {cap / 1e6:.1f} MB)"
                f": only events and audit records are left, none is dropped"
            )
        elif self._bytes > NEAR_FULL * cap:
            out.append(
                f"outbox nearly full ({self._bytes / 1e6:.1f} of {cap / 1e6:.1f} MB): "
                f"the oldest clips will be dropped next"
            )
        if self.counters["dropped_clips"] or self.counters["dropped_snapshots"]:
            out.append(
                f"outbox was full: {self.counters['dropped_clips']} clip(s) and "
                f"{self.counters['dropped_snapshots']} snapshot(s) dropped since start"
            )
        return out

    def wait_empty(self, timeout: float) -> bool:
        """Block until every item is acknowledged (tests, orderly shutdown)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if not self._db.execute("SELECT 1 FROM items LIMIT 1").fetchone():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.2))
