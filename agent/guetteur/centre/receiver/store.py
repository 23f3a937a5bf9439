"""The centre receiver's store: one SQLite database (WAL) and the files beside it in ``--out``
(``receiver.db``, ``snapshots/``, ``clips/``, ``partial/``). A batch of messages in, acks out;
no MQTT here.

- De-duplication by (gateway, item id): a message seen again is acknowledged again, stored once.
- Events are stored in per-camera order: the outbox numbers them (``epoch``, ``cseq``); an event
  that overtakes an earlier one waits in a ``held`` table (acknowledged: it is durable) until the
  gap fills.
- Clips: manifest, then chunks, reassembled and checked against their sha256 by
  ``clips.ClipAssembler``, within the same transaction and database.
- Bad input is logged and never crashes the receiver; what could not be stored is not
  acknowledged, so the gateway sends it again.
- Several receivers may share one ``--out`` directory: every batch is one write transaction.
  This module and ``clips`` hold every SQL statement of the receiver (the place to port to
  another database).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guetteur.centre.receiver.clips import ClipAssembler, ClipReply, write_atomic
from guetteur.timeutil import iso_ms
from guetteur.uplink import protocol

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    n INTEGER PRIMARY KEY AUTOINCREMENT,   -- storage order: per camera, the event order
    gateway TEXT NOT NULL, item_id TEXT NOT NULL, camera TEXT, event_id TEXT, seq INTEGER,
    type TEXT, epoch TEXT, cseq INTEGER, received TEXT NOT NULL, message TEXT NOT NULL,
    UNIQUE (gateway, item_id)
);
CREATE TABLE IF NOT EXISTS held (
    gateway TEXT NOT NULL, camera TEXT NOT NULL, epoch TEXT NOT NULL, cseq INTEGER NOT NULL,
    item_id TEXT NOT NULL, message TEXT NOT NULL,
    PRIMARY KEY (gateway, camera, epoch, cseq)
);
CREATE TABLE IF NOT EXISTS epochs (
    gateway TEXT NOT NULL, camera TEXT NOT NULL, epoch TEXT NOT NULL, next_cseq INTEGER NOT NULL,
    first_seen TEXT NOT NULL,
    PRIMARY KEY (gateway, camera, epoch)
);
CREATE TABLE IF NOT EXISTS snapshots (
    gateway TEXT NOT NULL, item_id TEXT NOT NULL, event_id TEXT, camera TEXT, path TEXT NOT NULL,
    bytes INTEGER NOT NULL, received TEXT NOT NULL,
    PRIMARY KEY (gateway, item_id)
);
CREATE TABLE IF NOT EXISTS audit (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway TEXT NOT NULL, item_id TEXT NOT NULL, action TEXT, received TEXT NOT NULL,
    message TEXT NOT NULL,
    UNIQUE (gateway, item_id)
);
CREATE TABLE IF NOT EXISTS clips (
    gateway TEXT NOT NULL, clip_id TEXT NOT NULL, manifest TEXT NOT NULL, state TEXT NOT NULL,
    path TEXT, size INTEGER, sha256 TEXT, camera TEXT, event_id TEXT, received TEXT,
    PRIMARY KEY (gateway, clip_id)
);
CREATE TABLE IF NOT EXISTS gateways (
    gateway TEXT PRIMARY KEY, state TEXT, status TEXT NOT NULL, updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    gateway TEXT NOT NULL, clip_id TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (gateway, clip_id, n)
);
"""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_name(item_id: str) -> str:
    return _UNSAFE.sub("_", item_id)[:120] or "_"


@dataclass
class Incoming:
    topic: str
    payload: bytes
    props: dict[str, str]
    content_type: str | None
    mid: int = 0
    qos: int = 0
    retain: bool = False


@dataclass
class Replies:
    """Acks and resend requests per gateway, published after the commit."""

    ids: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    resend: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    resync: set[str] = field(default_factory=set)

    def add(self, gw: str, reply: ClipReply) -> None:
        if reply.ack:
            self.ids[gw].extend(reply.ack)
        if reply.resend:
            self.resend[gw].extend(reply.resend)


class Store:
    """The receiver's storage and decisions, without MQTT: a batch of messages in, acks out.

    Several processes may share one ``out`` directory: every batch is one SQLite write
    transaction."""

    def __init__(self, out_dir: str | os.PathLike[str], root: str = protocol.DEFAULT_ROOT) -> None:
        self.root = root
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(
            self.out / "receiver.db", check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.stats: dict[str, int] = defaultdict(int)
        self.clips = ClipAssembler(self.db, self.out, self.stats)

    def close(self) -> None:
        self.db.close()

    # -- batches -------------------------------------------------------------------------------

    def handle_batch(self, batch: list[Incoming]) -> Replies:
        replies = Replies()
        after_commit: list[Path] = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for msg in batch:
                try:
                    self._handle(msg, replies, after_commit)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    self.stats["bad_messages"] += 1
                    log.warning(
                        "receiver: message on %s not stored (%s); not acknowledged, "
                        "the gateway will send it again",
                        msg.topic,
                        exc,
                    )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        for path in after_commit:
            shutil.rmtree(path, ignore_errors=True)
        return replies

    def _handle(self, msg: Incoming, replies: Replies, after_commit: list[Path]) -> None:
        parts = protocol.parse_topic(self.root, msg.topic)
        if not parts or not protocol.valid_id(parts["gateway"]):
            self.stats["bad_messages"] += 1
            log.warning("receiver: ignored a message on unexpected topic %s", msg.topic)
            return
        gw, kind = parts["gateway"], parts.get("kind")
        camera = parts.get("camera")
        if camera is not None and not protocol.valid_id(camera):
            self.stats["bad_messages"] += 1
            log.warning("receiver: ignored a message with an invalid camera id on %s", msg.topic)
            return
        if kind == "status" and camera is None:
            self._status(gw, msg, replies)
        elif kind == "event" and camera:
            self._event(gw, camera, msg, replies)
        elif kind == "snapshot" and camera:
            self._snapshot(gw, camera, msg, replies)
        elif kind == "audit":
            self._audit(gw, msg, replies)
        elif kind == "clip":
            clip_id, part = parts["clip_id"], parts["part"]
            if not protocol.valid_id(clip_id):
                self.stats["bad_messages"] += 1
                log.warning(
                    "receiver: ignored a clip message with an invalid clip id on %s", msg.topic
                )
            elif part == protocol.CLIP_MANIFEST_PART:
                reply = self.clips.on_manifest(gw, clip_id, msg.payload, after_commit)
                replies.add(gw, reply)
            elif part.isdigit():
                item_id = msg.props.get(protocol.PROP_ITEM_ID)
                reply = self.clips.on_chunk(
                    gw, clip_id, int(part), msg.payload, item_id, after_commit
                )
                replies.add(gw, reply)
            else:
                self.stats["bad_messages"] += 1
                log.warning("receiver: ignored clip part %r on %s", part, msg.topic)

    # -- gateway status -------------------------------------------------------------------------

    def _status(self, gw: str, msg: Incoming, replies: Replies) -> None:
        """Keep the last status; when a gateway is (again) online for us — a retained status
        delivered as we subscribe, or a change to online — ask it to re-send what it has in
        flight: what it published while no receiver of the group listened may be gone
        (Mosquitto 2.0 does not keep $share subscriptions across its restarts)."""
        try:
            body = protocol.loads(msg.payload)
        except protocol.MessageError as exc:
            log.warning("receiver: bad status from gateway %s (%s); ignored", gw, exc)
            return
        state = body.get("state") if isinstance(body.get("state"), str) else None
        row = self.db.execute("SELECT state FROM gateways WHERE gateway=?", (gw,)).fetchone()
        self.db.execute(
            "INSERT INTO gateways (gateway, state, status, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (gateway) DO UPDATE SET state=excluded.state, status=excluded.status, "
            "updated=excluded.updated",
            (gw, state, json.dumps(body, separators=(",", ":")), iso_ms()),
        )
        if state == "online" and (msg.retain or row is None or row[0] != "online"):
            replies.resync.add(gw)

    # -- events --------------------------------------------------------------------------------

    def _event(self, gw: str, camera: str, msg: Incoming, replies: Replies) -> None:
        try:
            body = protocol.loads(msg.payload)
        except protocol.MessageError as exc:
            self.stats["bad_messages"] += 1
            log.warning(
                "receiver: gateway %s camera %s sent a bad event (%s); ignored", gw, camera, exc
            )
            return
        item_id = msg.props.get(protocol.PROP_ITEM_ID) or body.get("id")
        if not isinstance(item_id, str) or not item_id:
            self.stats["bad_messages"] += 1
            log.warning("receiver: event without id from gateway %s camera %s; ignored", gw, camera)
            return
        epoch = msg.props.get(protocol.PROP_EPOCH)
        cseq_text = msg.props.get(protocol.PROP_CSEQ)
        message = json.dumps(body, separators=(",", ":"))
        if epoch is None or cseq_text is None or not cseq_text.isdigit():
            self._store_event(gw, camera, item_id, body, message, None, None)  # arrival order
            replies.ids[gw].append(item_id)
            return
        cseq = int(cseq_text)
        next_cseq = self._next_cseq(gw, camera, epoch)
        if cseq < next_cseq:
            self.stats["duplicates"] += 1
        elif cseq > next_cseq:
            self.db.execute(
                "INSERT OR IGNORE INTO held (gateway, camera, epoch, cseq, item_id, message) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (gw, camera, epoch, cseq, item_id, message),
            )
            self.stats["held"] += 1
        else:
            self._store_event(gw, camera, item_id, body, message, epoch, cseq)
            next_cseq = self._release_held(gw, camera, epoch, cseq + 1)
            self.db.execute(
                "UPDATE epochs SET next_cseq=? WHERE gateway=? AND camera=? AND epoch=?",
                (next_cseq, gw, camera, epoch),
            )
        replies.ids[gw].append(item_id)

    def _next_cseq(self, gw: str, camera: str, epoch: str) -> int:
        row = self.db.execute(
            "SELECT next_cseq FROM epochs WHERE gateway=? AND camera=? AND epoch=?",
            (gw, camera, epoch),
        ).fetchone()
        if row:
            return int(row[0])
        # A new outbox database on that gateway: whatever the old one still had waiting behind
        # a gap will never come; store it now rather than hold it forever.
        for (old_epoch,) in self.db.execute(
            "SELECT epoch FROM epochs WHERE gateway=? AND camera=?", (gw, camera)
        ).fetchall():
            left = self.db.execute(
                "SELECT COUNT(*) FROM held WHERE gateway=? AND camera=? AND epoch=?",
                (gw, camera, old_epoch),
            ).fetchone()[0]
            if left:
                log.warning(
                    "receiver: gateway %s camera %s started a new outbox; %d event(s) "
                    "of the previous one stored despite a gap",
                    gw,
                    camera,
                    left,
                )
                self._release_held(gw, camera, old_epoch, None)
        self.db.execute(
            "INSERT INTO epochs (gateway, camera, epoch, next_cseq, first_seen) "
            "VALUES (?, ?, ?, 1, ?)",
            (gw, camera, epoch, iso_ms()),
        )
        return 1

    def _release_held(self, gw: str, camera: str, epoch: str, next_cseq: int | None) -> int:
        """Store held events that follow ``next_cseq`` without a gap (all of them when None);
        returns the next expected cseq."""
        rows = self.db.execute(
            "SELECT cseq, item_id, message FROM held WHERE gateway=? AND camera=? AND epoch=? "
            "ORDER BY cseq",
            (gw, camera, epoch),
        ).fetchall()
        expected = next_cseq
        for cseq, item_id, message in rows:
            if expected is not None and cseq != expected:
                break
            self._store_event(gw, camera, item_id, json.loads(message), message, epoch, cseq)
            self.db.execute(
                "DELETE FROM held WHERE gateway=? AND camera=? AND epoch=? AND cseq=?",
                (gw, camera, epoch, cseq),
            )
            expected = cseq + 1
        return expected if expected is not None else 1

    def _store_event(
        self,
        gw: str,
        camera: str,
        item_id: str,
        body: dict[str, Any],
        message: str,
        epoch: str | None,
        cseq: int | None,
    ) -> None:
        cur = self.db.execute(
            "INSERT OR IGNORE INTO events (gateway, item_id, camera, event_id, seq, type, epoch, "
            "cseq, received, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                gw,
                item_id,
                camera,
                body.get("event_id"),
                body.get("seq"),
                body.get("type"),
                epoch,
                cseq,
                iso_ms(),
                message,
            ),
        )
        self.stats["events" if cur.rowcount else "duplicates"] += 1

    # -- snapshots and audit -------------------------------------------------------------------

    def _snapshot(self, gw: str, camera: str, msg: Incoming, replies: Replies) -> None:
        item_id = msg.props.get(protocol.PROP_ITEM_ID)
        if not item_id:
            item_id = "sha-" + hashlib.sha256(msg.payload).hexdigest()[:24]
        if self.db.execute(
            "SELECT 1 FROM snapshots WHERE gateway=? AND item_id=?", (gw, item_id)
        ).fetchone():
            self.stats["duplicates"] += 1
            replies.ids[gw].append(item_id)
            return
        if not msg.payload:
            self.stats["bad_messages"] += 1
            log.warning(
                "receiver: empty snapshot %s from gateway %s camera %s; acknowledged "
                "and dropped (sending it again would not help)",
                item_id,
                gw,
                camera,
            )
            replies.ids[gw].append(item_id)
            return
        folder = self.out / "snapshots" / gw / camera
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{safe_name(item_id)}.jpg"
        write_atomic(path, msg.payload)
        self.db.execute(
            "INSERT INTO snapshots (gateway, item_id, event_id, camera, path, bytes, received) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (gw, item_id, msg.props.get("event_id"), camera, str(path), len(msg.payload), iso_ms()),
        )
        self.stats["snapshots"] += 1
        replies.ids[gw].append(item_id)

    def _audit(self, gw: str, msg: Incoming, replies: Replies) -> None:
        try:
            body = protocol.loads(msg.payload)
        except protocol.MessageError as exc:
            self.stats["bad_messages"] += 1
            log.warning("receiver: bad audit record from gateway %s (%s); ignored", gw, exc)
            return
        item_id = msg.props.get(protocol.PROP_ITEM_ID) or body.get("id")
        if not isinstance(item_id, str) or not item_id:
            self.stats["bad_messages"] += 1
            log.warning("receiver: audit record without id from gateway %s; ignored", gw)
            return
        cur = self.db.execute(
            "INSERT OR IGNORE INTO audit (gateway, item_id, action, received, message) "
            "VALUES (?, ?, ?, ?, ?)",
            (gw, item_id, body.get("action"), iso_ms(), json.dumps(body, separators=(",", ":"))),
        )
        self.stats["audit" if cur.rowcount else "duplicates"] += 1
        replies.ids[gw].append(item_id)
