"""`guetteur centre receive`: the centre's durable store of events, snapshots, clips and audit.

- Persistent MQTT session (fixed client id, clean_start false, long session expiry) so the broker
  queues messages while the receiver is down; PUBACKs are sent only after the SQLite commit.
- Shared subscriptions (``$share/GROUP/...``) so several receivers split the load. Receivers of
  one group that share an ``--out`` directory share one SQLite database (WAL, on one host).
- End-to-end acknowledgements on ``{root}/{gw}/ack`` once an item is stored for good; the outbox
  of the gateway deletes it only then. De-duplication by (gateway, item id).
- Events are stored in per-camera order: the outbox numbers them (``epoch``, ``cseq``); an event
  that overtakes an earlier one waits in a ``held`` table (acknowledged: it is durable) until the
  gap fills.
- Clips: manifest, then chunks checked against their size and sha256; the reassembled file is
  checked against the clip sha256 before it is kept; a bad chunk or clip is asked for again
  (``resend``). Bad input is logged and never crashes the receiver.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from guetteur.timeutil import iso_ms
from guetteur.uplink import protocol
from guetteur.uplink.mqttutil import configure_tls, content_type, parse_broker_url, user_properties

log = logging.getLogger(__name__)

DEFAULT_GROUP = "guetteur-receivers"
SESSION_EXPIRY_S = 7 * 86400
MAX_CHUNK_BYTES = 16 << 20
BATCH = 500

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
                self._manifest(gw, clip_id, msg, replies, after_commit)
            elif part.isdigit():
                self._chunk(gw, clip_id, int(part), msg, replies, after_commit)
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
        _write_atomic(path, msg.payload)
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

    # -- clips ---------------------------------------------------------------------------------

    def _partial_dir(self, gw: str, clip_id: str) -> Path:
        return self.out / "partial" / gw / clip_id

    def _manifest(
        self, gw: str, clip_id: str, msg: Incoming, replies: Replies, after_commit: list[Path]
    ) -> None:
        manifest_id = protocol.clip_manifest_item_id(clip_id)
        try:
            manifest = protocol.parse_clip_manifest(msg.payload)
        except protocol.MessageError as exc:
            self.stats["bad_messages"] += 1
            log.warning(
                "receiver: bad manifest for clip %s from gateway %s (%s); ignored", clip_id, gw, exc
            )
            return
        if manifest["clip_id"] != clip_id:
            self.stats["bad_messages"] += 1
            log.warning(
                "receiver: manifest on clip/%s names clip %s; ignored", clip_id, manifest["clip_id"]
            )
            return
        row = self.db.execute(
            "SELECT state, manifest FROM clips WHERE gateway=? AND clip_id=?", (gw, clip_id)
        ).fetchone()
        if row and row[0] == "complete":
            self.stats["duplicates"] += 1
            replies.ids[gw].append(manifest_id)
            return
        text = json.dumps(manifest, separators=(",", ":"), sort_keys=True)
        repeat = row is not None
        if row and row[1] != text:
            # a different manifest for the same clip id: start again from scratch
            log.warning(
                "receiver: clip %s from gateway %s has a new manifest; restarting it", clip_id, gw
            )
            self.db.execute("DELETE FROM chunks WHERE gateway=? AND clip_id=?", (gw, clip_id))
            after_commit.append(self._partial_dir(gw, clip_id))
            repeat = False
        self.db.execute(
            "INSERT INTO clips (gateway, clip_id, manifest, state, size, sha256, camera, "
            "event_id, received) VALUES (?, ?, ?, 'receiving', ?, ?, ?, ?, ?) "
            "ON CONFLICT (gateway, clip_id) DO UPDATE SET manifest=excluded.manifest",
            (
                gw,
                clip_id,
                text,
                manifest["size"],
                manifest["sha256"],
                manifest.get("camera"),
                manifest.get("event_id"),
                iso_ms(),
            ),
        )
        missing = self._missing_chunks(gw, clip_id, int(manifest["count"]))
        if not missing:
            self._assemble(gw, clip_id, manifest, replies, after_commit)
        elif repeat:
            # the gateway sent the manifest again: it still waits for the clip; ask for what we
            # lack (chunks it may believe delivered)
            replies.resend[gw].extend(protocol.clip_chunk_item_id(clip_id, n) for n in missing)

    def _missing_chunks(self, gw: str, clip_id: str, count: int) -> list[int]:
        have = {
            r[0]
            for r in self.db.execute(
                "SELECT n FROM chunks WHERE gateway=? AND clip_id=?", (gw, clip_id)
            )
        }
        return [n for n in range(count) if n not in have]

    def _chunk(
        self,
        gw: str,
        clip_id: str,
        n: int,
        msg: Incoming,
        replies: Replies,
        after_commit: list[Path],
    ) -> None:
        chunk_id = msg.props.get(protocol.PROP_ITEM_ID) or protocol.clip_chunk_item_id(clip_id, n)
        row = self.db.execute(
            "SELECT state, manifest FROM clips WHERE gateway=? AND clip_id=?", (gw, clip_id)
        ).fetchone()
        if row is None:
            self.stats["early_chunks"] += 1
            log.info(
                "receiver: chunk %d of clip %s from gateway %s came before its manifest; "
                "not acknowledged, it will come again",
                n,
                clip_id,
                gw,
            )
            return
        if row[0] == "complete":
            self.stats["duplicates"] += 1
            replies.ids[gw].append(chunk_id)
            return
        manifest = json.loads(row[1])
        size, chunk_size, count = manifest["size"], manifest["chunk_size"], manifest["count"]
        expected = min(chunk_size, size - n * chunk_size) if n < count else -1
        problem = None
        if n >= count:
            problem = f"chunk {n} is beyond the {count} chunks of the manifest"
        elif len(msg.payload) != expected:
            problem = f"chunk {n} has {len(msg.payload)} bytes, expected {expected}"
        elif manifest.get("chunk_sha256") and (
            hashlib.sha256(msg.payload).hexdigest() != manifest["chunk_sha256"][n]
        ):
            problem = f"chunk {n} sha256 does not match the manifest"
        if problem:
            self.stats["bad_chunks"] += 1
            log.warning(
                "receiver: clip %s from gateway %s: %s; asking for it again", clip_id, gw, problem
            )
            if n < count:
                replies.resend[gw].append(chunk_id)
            return
        folder = self._partial_dir(gw, clip_id)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / str(n), msg.payload)
        self.db.execute(
            "INSERT OR IGNORE INTO chunks (gateway, clip_id, n) VALUES (?, ?, ?)", (gw, clip_id, n)
        )
        replies.ids[gw].append(chunk_id)
        if not self._missing_chunks(gw, clip_id, count):
            self._assemble(gw, clip_id, manifest, replies, after_commit)

    def _assemble(
        self,
        gw: str,
        clip_id: str,
        manifest: dict[str, Any],
        replies: Replies,
        after_commit: list[Path],
    ) -> None:
        folder = self._partial_dir(gw, clip_id)
        target_dir = self.out / "clips" / gw
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{clip_id}.mp4"
        tmp = target.with_suffix(".mp4.tmp")
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                for n in range(int(manifest["count"])):
                    data = (folder / str(n)).read_bytes()
                    digest.update(data)
                    out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning(
                "receiver: clip %s from gateway %s: a chunk file is unreadable (%s); "
                "asking for the clip again",
                clip_id,
                gw,
                exc,
            )
            self._restart_clip(gw, clip_id, manifest, replies, after_commit)
            return
        if digest.hexdigest() != manifest["sha256"]:
            tmp.unlink(missing_ok=True)
            self.stats["bad_clips"] += 1
            log.error(
                "receiver: clip %s from gateway %s: sha256 of the reassembled file does not "
                "match the manifest; discarded, asking for every chunk again",
                clip_id,
                gw,
            )
            self._restart_clip(gw, clip_id, manifest, replies, after_commit)
            return
        os.replace(tmp, target)
        self.db.execute(
            "UPDATE clips SET state='complete', path=?, received=? WHERE gateway=? AND clip_id=?",
            (str(target), iso_ms(), gw, clip_id),
        )
        self.db.execute("DELETE FROM chunks WHERE gateway=? AND clip_id=?", (gw, clip_id))
        after_commit.append(folder)
        self.stats["clips"] += 1
        log.info(
            "receiver: clip %s from gateway %s complete (%d bytes, sha256 verified)",
            clip_id,
            gw,
            manifest["size"],
        )
        replies.ids[gw].append(protocol.clip_manifest_item_id(clip_id))

    def _restart_clip(
        self,
        gw: str,
        clip_id: str,
        manifest: dict[str, Any],
        replies: Replies,
        after_commit: list[Path],
    ) -> None:
        self.db.execute("DELETE FROM chunks WHERE gateway=? AND clip_id=?", (gw, clip_id))
        after_commit.append(self._partial_dir(gw, clip_id))
        replies.resend[gw].extend(
            protocol.clip_chunk_item_id(clip_id, n) for n in range(int(manifest["count"]))
        )


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Receiver:
    """The MQTT side: a persistent session, shared subscriptions, PUBACK after commit, acks."""

    def __init__(
        self,
        url: str,
        out_dir: str | os.PathLike[str],
        root: str = protocol.DEFAULT_ROOT,
        share_group: str | None = DEFAULT_GROUP,
        client_id: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self.root = root
        self.address = parse_broker_url(url)
        self.store = Store(out_dir, root)
        self.share_group = share_group
        default_id = (
            "receiver-"
            + hashlib.sha256(
                f"{socket.gethostname()}:{Path(out_dir).resolve()}".encode()
            ).hexdigest()[:12]
        )
        self.client_id = client_id or default_id
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if self.address.username:
            self._client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls or ca_file or cert_file:
            configure_tls(self._client, ca_file, cert_file, key_file)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 10)
        self._queue: queue.Queue[Incoming | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.connected = threading.Event()
        self._stopping = False

    @property
    def stats(self) -> dict[str, int]:
        return self.store.stats

    def topics(self) -> list[str]:
        prefix = f"$share/{self.share_group}/" if self.share_group else ""
        base = f"{self.root}/+"
        return [
            prefix + t
            for t in (
                f"{base}/cam/+/event",
                f"{base}/cam/+/snapshot",
                f"{base}/clip/+/+",
                f"{base}/audit",
            )
        ]

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._worker = threading.Thread(target=self._work, name="receiver", daemon=True)
        self._worker.start()
        self._client.connect_async(
            self.address.host, self.address.port, keepalive=30, clean_start=False, properties=props
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(10.0)
        self._client.disconnect()
        self._client.loop_stop()
        self.store.close()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        if reason.is_failure:
            log.error("receiver: broker refused the connection: %s; retrying", reason)
            return
        for topic in self.topics():
            client.subscribe(topic, qos=1)
        # plain, not shared: retained statuses are not sent on shared subscriptions
        client.subscribe(f"{self.root}/+/status", qos=1)
        self.connected.set()
        log.info(
            "receiver %s: connected to %s:%d (session present: %s)",
            self.client_id,
            self.address.host,
            self.address.port,
            getattr(flags, "session_present", "?"),
        )

    def _on_disconnect(self, *_args: Any) -> None:
        if self.connected.is_set() and not self._stopping:
            log.warning("receiver: disconnected from the broker; reconnecting")
        self.connected.clear()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.put(
            Incoming(
                msg.topic,
                bytes(msg.payload),
                user_properties(msg),
                content_type(msg),
                msg.mid,
                msg.qos,
                bool(msg.retain),
            )
        )

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._store_batch(batch)
            if stop:
                return

    def _store_batch(self, batch: list[Incoming]) -> None:
        try:
            replies = self.store.handle_batch(batch)
        except sqlite3.Error:
            log.exception(
                "receiver: database error; %d message(s) not acknowledged, the "
                "broker and the gateways will send them again",
                len(batch),
            )
            time.sleep(1.0)
            return
        for msg in batch:
            if msg.qos > 0:
                self._client.ack(msg.mid, msg.qos)
        self._send_replies(replies)
        for gw in sorted(replies.resync):
            self._client.publish(
                f"{self.root}/{gw}/ack", protocol.ack_message([], resync=True), qos=1
            )
            log.info("receiver: gateway %s is online; asked it to re-send what is in flight", gw)

    def _send_replies(self, replies: Replies) -> None:
        for gw in set(replies.ids) | set(replies.resend):
            ids, resend = replies.ids.get(gw, []), replies.resend.get(gw, [])
            for i in range(0, max(len(ids), len(resend), 1), protocol.MAX_ACK_IDS):
                part_ids = ids[i : i + protocol.MAX_ACK_IDS]
                part_resend = resend[i : i + protocol.MAX_ACK_IDS]
                if part_ids or part_resend:
                    self._client.publish(
                        f"{self.root}/{gw}/ack", protocol.ack_message(part_ids, part_resend), qos=1
                    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-b", "--broker", required=True, help="broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT"
    )
    parser.add_argument("--out", required=True, help="directory for receiver.db, snapshots, clips")
    parser.add_argument("--root", default=protocol.DEFAULT_ROOT, help="topic prefix")
    parser.add_argument(
        "--share-group",
        default=DEFAULT_GROUP,
        help="shared-subscription group: receivers of one group split the load "
        "(default %(default)s; '' for a plain subscription)",
    )
    parser.add_argument(
        "--client-id",
        help="MQTT client id (stable across restarts: the "
        "broker keeps this receiver's session); default derived from host and --out",
    )
    parser.add_argument("--ca", help="CA file verifying the broker (mqtts://)")
    parser.add_argument("--cert", help="client certificate (mutual TLS)")
    parser.add_argument("--key", help="client certificate key")


def run(args: argparse.Namespace) -> int:
    try:
        receiver = Receiver(
            args.broker,
            args.out,
            root=args.root,
            share_group=args.share_group or None,
            client_id=args.client_id,
            ca_file=args.ca,
            cert_file=args.cert,
            key_file=args.key,
        )
    except (ValueError, OSError, sqlite3.Error) as exc:
        print(f"error: {exc}", flush=True)
        return 2
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    receiver.start()
    log.info("receiver: storing into %s; subscriptions: %s", args.out, ", ".join(receiver.topics()))
    if not receiver.wait_connected(10.0):
        log.warning("receiver: broker %s not reachable yet; still trying", args.broker)
    while not stop.wait(1.0):
        pass
    receiver.stop()
    stats = ", ".join(f"{k}={v}" for k, v in sorted(receiver.stats.items()))
    print(f"receiver stopped: {stats or 'nothing received'}", flush=True)
    return 0
