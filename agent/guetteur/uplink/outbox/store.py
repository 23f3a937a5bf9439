"""The outbox's durable state: one SQLite database (WAL, ``synchronous=FULL``) and the clip files
it has taken over, under ``{data_dir}/outbox/``.

Every durable change happens here, each in one write transaction: enqueueing an item, taking a
clip (its manifest and chunk rows, then the file), deleting acknowledged items, re-queueing a
chunk the centre asks for again, evicting clips and snapshots when the size cap says so, and the
numbers that order events at the centre: the database ``epoch`` and a sequence number per camera
(``cseq``). A database unreadable at start is moved aside (``outbox.db.corrupt-TIME``) and a
fresh one — a new epoch — started.

Not thread-safe by itself: the ``Outbox`` serialises every call with its lock, and its writer
thread makes almost every commit (submits in batches, acks), never a camera's analysis thread or
the MQTT network thread.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from guetteur.record import reserve
from guetteur.uplink import protocol
from guetteur.uplink.outbox import policy
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

_T = TypeVar("_T")
_SQLITE_FULL = 13  # "database or disk is full"
_SQLITE_IOERR = 10
FULL_DISK_WAIT_S = 15.0  # the recorder's urgent purge frees space within a second or two

KIND_CLIP_MANIFEST = "clip_manifest"
KIND_CLIP_CHUNK = "clip_chunk"
DELETE_BATCH = 500  # ids per DELETE statement (SQLite's bound-parameter limit)


@dataclass(frozen=True)
class QueuedItem:
    """One row of the queue (its fields are the columns of the same names), as it is sent.
    ``payload`` is None for a clip chunk: its bytes are read from the clip file at send time."""

    item_id: str
    kind: str
    topic: str  # relative to {root}/{gw}/
    priority: int
    camera: str | None
    content_type: str
    props: dict[str, str]
    payload: bytes | None
    size: int
    clip_id: str | None = None
    chunk: int | None = None
    cseq: int | None = None


@dataclass(frozen=True)
class ChunkLocation:
    path: Path
    offset: int
    length: int


@dataclass(frozen=True)
class Backlog:
    """What waits, by kind, for the gateway status."""

    by_kind: dict[str, int]
    clips: int
    oldest_created: float | None  # wall-clock time of the oldest item


class OutboxStore:
    """``OutboxStore(directory, max_bytes)``; ``on_removed(item_id)`` is called for every item
    that leaves the queue (acknowledged, evicted or dropped), so the sender forgets it too."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        on_removed: Callable[[str], None] = lambda _item_id: None,
    ) -> None:
        self.dir = directory
        self.clip_dir = directory / "clips"
        self.clip_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = directory / "outbox.db"
        self.max_bytes = max_bytes
        self._on_removed = on_removed
        self.startup_warnings: list[str] = []
        self.dropped_clips = 0
        self.dropped_snapshots = 0
        self._db = self._open()
        self.epoch = self._epoch()
        # Kept as rows come and go (recounted after a rollback), so the status never scans the
        # queue: what counts against the cap (items and clip files), items by kind, clips.
        self.bytes = 0
        self.by_kind: Counter[str] = Counter()
        self.clips = 0
        self._recount()
        self._recover_clips()

    def close(self) -> None:
        self._db.close()

    # -- opening -------------------------------------------------------------------------------

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

    def _disk_full(self, exc: sqlite3.Error) -> bool:
        """A full disk, not a damaged database: SQLITE_FULL, or an I/O error (SQLite cannot
        create its WAL index) on a partition with less than 1 MiB free."""
        code = getattr(exc, "sqlite_errorcode", 0) or 0
        if code == _SQLITE_FULL:
            return True
        return code & 0xFF == _SQLITE_IOERR and shutil.disk_usage(self.dir).free < 1 << 20

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as first:
            exc = first
            if self._disk_full(exc):
                # Never move a sound database aside for a full disk: its items are undelivered.
                reserve.release(self.dir.parent, "the outbox (opening its database)")
                try:
                    return self._connect()
                except sqlite3.DatabaseError as again:
                    if self._disk_full(again):
                        raise OSError(
                            errno.ENOSPC,
                            f"outbox database {self.db_path} cannot be opened: the data "
                            "partition is full and no reserve is left; free space on it",
                        ) from again
                    exc = again
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
            self.startup_warnings.append(msg)
            return self._connect()

    def _epoch(self) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        if row:
            return str(row[0])
        epoch = uuid.uuid4().hex[:16]
        self._db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        return epoch

    def _recount(self) -> None:
        items = self._db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM items WHERE kind != ?", (KIND_CLIP_CHUNK,)
        ).fetchone()[0]
        clip_rows = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM clips")
        clips, clip_bytes = clip_rows.fetchone()
        self.bytes = int(items) + int(clip_bytes)
        self.clips = int(clips)
        self.by_kind = Counter(
            dict(self._db.execute("SELECT kind, COUNT(*) FROM items GROUP BY kind").fetchall())
        )

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
                self.drop_clip(clip_id, "its file is missing")
        for f in self.clip_dir.iterdir():
            if f.name not in known:
                log.warning("outbox: deleting %s, a clip file no queued clip refers to", f)
                f.unlink(missing_ok=True)

    @contextmanager
    def tx(self) -> Iterator[None]:
        """One write transaction (nested calls join the outer one)."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            self._recount()  # the counts followed changes that were not kept
            raise

    def _rollback(self) -> None:
        # On a full disk SQLite may have rolled back already: a second ROLLBACK would hide the
        # real error behind "no transaction is active".
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _retry_when_full(self, what: str, write: Callable[[], _T]) -> _T:
        """Run ``write``; if the disk is full, release the data partition's reserve file
        (``record/reserve.py``) and run it again; if something else took that space first (a
        camera's recording), retry while the recorder's retention frees more, for at most
        ``FULL_DISK_WAIT_S``: an event is not lost to a full disk, and nothing waits forever."""
        deadline = time.monotonic() + FULL_DISK_WAIT_S
        delay = 0.05
        released = False
        while True:
            try:
                return write()
            except sqlite3.Error as exc:
                if getattr(exc, "sqlite_errorcode", None) != _SQLITE_FULL:
                    raise
                self._recount()  # the failed attempt may have counted its rows
                if not released:
                    released = True
                    if reserve.release(self.dir.parent, f"the outbox ({what})"):
                        continue
                if time.monotonic() + delay > deadline:
                    log.error(
                        "outbox: disk full for %.0f s; %s not stored: %s",
                        FULL_DISK_WAIT_S,
                        what,
                        exc,
                    )
                    raise
                log.warning("outbox: disk full; %s waits for retention to free space", what)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- queries -------------------------------------------------------------------------------

    def has_item(self, item_id: str) -> bool:
        return bool(self._db.execute("SELECT 1 FROM items WHERE item_id=?", (item_id,)).fetchone())

    def has_clip(self, clip_id: str) -> bool:
        return bool(self._db.execute("SELECT 1 FROM clips WHERE clip_id=?", (clip_id,)).fetchone())

    def is_empty(self) -> bool:
        return not self._db.execute("SELECT 1 FROM items LIMIT 1").fetchone()

    def head(self, limit: int) -> list[tuple[str, int]]:
        """The first ``limit`` items in drain order — priority (events, audit, snapshots, clips),
        then submission order — as ``(item_id, size)``, without their payloads."""
        rows = self._db.execute(
            "SELECT item_id, size FROM items ORDER BY priority, seq LIMIT ?", (limit,)
        ).fetchall()
        return [(str(i), int(s)) for i, s in rows]

    def load(self, ids: list[str]) -> dict[str, QueuedItem]:
        """The queued items among ``ids``, with their payloads."""
        marks = ",".join("?" * len(ids))
        names = [f.name for f in fields(QueuedItem)]  # columns of the same names
        rows = self._db.execute(
            f"SELECT {', '.join(names)} FROM items WHERE item_id IN ({marks})", ids
        ).fetchall()
        out: dict[str, QueuedItem] = {}
        for r in rows:
            row = dict(zip(names, r, strict=True))
            row["props"] = json.loads(row["props"])
            out[row["item_id"]] = QueuedItem(**row)
        return out

    def chunk_location(self, clip_id: str, n: int) -> ChunkLocation | None:
        """Where chunk ``n`` of a queued clip lies in its file; None when the clip is gone."""
        row = self._db.execute(
            "SELECT path, chunk_size, size FROM clips WHERE clip_id=?", (clip_id,)
        ).fetchone()
        if row is None:
            return None
        path, chunk_size, size = Path(row[0]), int(row[1]), int(row[2])
        return ChunkLocation(path, n * chunk_size, min(chunk_size, size - n * chunk_size))

    def backlog(self) -> Backlog:
        # the first row is the oldest (rows are created in seq order): no scan of the queue
        oldest = self._db.execute("SELECT created FROM items ORDER BY seq LIMIT 1").fetchone()
        by_kind = {kind: n for kind, n in self.by_kind.items() if n > 0}
        return Backlog(by_kind, self.clips, oldest[0] if oldest else None)

    # -- enqueueing ----------------------------------------------------------------------------

    def enqueue(self, item: OutboundItem) -> bool:
        """Store ``item`` durably (committed when this returns). False when it is not queued:
        already there (enqueue is idempotent by id), or a snapshot the size cap refuses."""
        return self._retry_when_full(f"{item.kind} {item.item_id}", lambda: self._enqueue(item))

    def _enqueue(self, item: OutboundItem) -> bool:
        if self.has_item(item.item_id):
            return False
        size = len(item.payload)
        with self.tx():
            if not self._make_room(size, item.kind):
                return False
            cseq = self._next_cseq(item.camera) if item.kind == "event" and item.camera else None
            self._insert(
                QueuedItem(
                    item.item_id,
                    item.kind,
                    item.topic,
                    int(item.priority),
                    item.camera,
                    item.content_type,
                    item.user_properties,
                    item.payload,
                    size,
                    cseq=cseq,
                )
            )
        self.bytes += size
        return True

    def enqueue_many(self, items: list[OutboundItem]) -> int:
        """Store ``items`` in one transaction — one fsync for the lot — and in their order;
        returns how many were queued (``enqueue`` for each). When the commit fails nothing is
        stored and the counts are as before, so the caller can try the same items again."""

        def write() -> int:
            with self.tx():
                return sum(1 for item in items if self._enqueue(item))

        return self._retry_when_full(f"{len(items)} items", write)

    def add_clip(
        self,
        clip: ClipFile,
        size: int,
        chunk_size: int,
        count: int,
        manifest: bytes,
    ) -> bool:
        """Queue a clip's manifest and its ``count`` chunks, then move its file into the outbox.
        False (file left where it is) when the outbox is full of events and audit records."""
        source = Path(clip.path)
        target = self.clip_dir / f"{clip.clip_id}.mp4"
        now = time.time()
        with self.tx():
            if not self._make_room(size + len(manifest), "clip"):
                return False
            self._db.execute(
                "INSERT INTO clips (clip_id, path, source, camera, size, chunk_size, count, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (clip.clip_id, str(target), str(source), clip.camera, size, chunk_size, count, now),
            )
            self.clips += 1
            base_props = {"clip_id": clip.clip_id}
            if clip.event_id:
                base_props["event_id"] = clip.event_id
            self._insert(
                QueuedItem(
                    protocol.clip_manifest_item_id(clip.clip_id),
                    KIND_CLIP_MANIFEST,
                    protocol.rel_clip(clip.clip_id, protocol.CLIP_MANIFEST_PART),
                    int(Priority.CLIP),
                    clip.camera,
                    "application/json",
                    base_props,
                    manifest,
                    len(manifest),
                    clip_id=clip.clip_id,
                )
            )
            for n in range(count):
                self._insert(_chunk(clip.clip_id, n, clip.camera, size, chunk_size, base_props))
        # after the commit: a crash before the move is finished by _recover_clips at next start;
        # the caller holds the Outbox lock, so the sender never looks for the file before this
        shutil.move(str(source), str(target))
        self.bytes += size + len(manifest)
        return True

    def requeue_chunk(self, item_id: str) -> bool:
        """Queue again a clip chunk the centre asks for (``resend``) after it was acknowledged.
        False when that is not a chunk of a queued clip, or it is still queued."""
        parsed = protocol.parse_clip_item_id(item_id)
        if parsed is None or parsed[1] is None:
            return False
        clip_id, n = parsed[0], parsed[1]
        row = self._db.execute(
            "SELECT camera, size, chunk_size, count FROM clips WHERE clip_id=?", (clip_id,)
        ).fetchone()
        if row is None or not 0 <= n < int(row[3]):
            log.info("outbox: centre asked again for %s, which is no longer queued", item_id)
            return False
        if self.has_item(item_id):
            return False
        camera, size, chunk_size = row[0], int(row[1]), int(row[2])
        self._insert(_chunk(clip_id, n, camera, size, chunk_size, {"clip_id": clip_id}))
        log.info("outbox: centre asked for chunk %d of clip %s again", n, clip_id)
        return True

    def _insert(self, item: QueuedItem) -> None:  # in the caller's transaction
        row = asdict(item) | {"props": json.dumps(item.props), "created": time.time()}
        self._db.execute(
            f"INSERT INTO items ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
        self.by_kind[item.kind] += 1

    def _next_cseq(self, camera: str) -> int:
        row = self._db.execute(
            "INSERT INTO cseq (camera, last) VALUES (?, 1) "
            "ON CONFLICT (camera) DO UPDATE SET last = last + 1 RETURNING last",
            (camera,),
        ).fetchone()
        return int(row[0])

    # -- size cap ------------------------------------------------------------------------------

    def _make_room(self, size: int, kind: str) -> bool:
        """Evict what ``policy.room_for`` says until ``size`` more bytes of ``kind`` fit;
        False when the new item is refused."""
        while True:
            # only a full outbox looks for something to evict (the snapshot query scans)
            full = self.bytes + size > self.max_bytes
            oldest_clip = (
                self._oldest("SELECT clip_id FROM clips ORDER BY created") if full else None
            )
            oldest_snap = (
                self._oldest("SELECT item_id FROM items WHERE kind='snapshot' ORDER BY seq")
                if full and oldest_clip is None
                else None
            )
            step = policy.room_for(
                kind,
                size,
                self.bytes,
                self.max_bytes,
                clips_queued=oldest_clip is not None,
                snapshots_queued=oldest_snap is not None,
            )
            if step is policy.Room.EVICT_OLDEST_CLIP:
                assert oldest_clip is not None
                self.drop_clip(oldest_clip, f"the outbox is full, room needed for a {kind}")
            elif step is policy.Room.EVICT_OLDEST_SNAPSHOT:
                assert oldest_snap is not None
                self.delete_items([oldest_snap])
                self.dropped_snapshots += 1
                log.warning(
                    "outbox full: snapshot %s dropped to make room for a %s", oldest_snap, kind
                )
            elif step is policy.Room.REFUSE:
                if kind == "clip":
                    self.dropped_clips += 1
                else:
                    self.dropped_snapshots += 1
                    log.warning(
                        "outbox full (%d of %d bytes): new snapshot dropped",
                        self.bytes,
                        self.max_bytes,
                    )
                return False
            else:  # FITS, or OVER_CAP for events and audit records
                return True

    def _oldest(self, query: str) -> str | None:
        row = self._db.execute(query + " LIMIT 1").fetchone()
        return None if row is None else str(row[0])

    # -- removal -------------------------------------------------------------------------------

    def remove_acked(self, ids: Iterable[str]) -> int:
        """Delete acknowledged items; an acknowledged manifest means the centre has the whole
        clip, verified: the clip and its file go too. Returns how many of ``ids`` were queued."""
        wanted = set(ids)
        return self._retry_when_full("acknowledgement", lambda: self._remove_acked(wanted))

    def _remove_acked(self, ids: set[str]) -> int:
        with self.tx():
            found = self.delete_items(ids)
            for _item_id, kind, clip_id in found:
                if kind == KIND_CLIP_MANIFEST and clip_id:
                    self._finish_clip(clip_id)
        return len(found)

    def _finish_clip(self, clip_id: str) -> None:
        row = self._db.execute(
            "SELECT path, size FROM clips WHERE clip_id=?", (clip_id,)
        ).fetchone()
        rest = [
            r[0] for r in self._db.execute("SELECT item_id FROM items WHERE clip_id=?", (clip_id,))
        ]
        self.delete_items(rest)
        if row:
            self._db.execute("DELETE FROM clips WHERE clip_id=?", (clip_id,))
            self.clips -= 1
            self.bytes -= int(row[1])
            Path(row[0]).unlink(missing_ok=True)
            log.info("outbox: clip %s uploaded and verified by the centre", clip_id)

    def drop_clip(self, clip_id: str, why: str) -> None:
        """Give up a clip: its items, its row and its file."""
        with self.tx():
            row = self._db.execute(
                "SELECT path, size FROM clips WHERE clip_id=?", (clip_id,)
            ).fetchone()
            ids = [
                r[0]
                for r in self._db.execute("SELECT item_id FROM items WHERE clip_id=?", (clip_id,))
            ]
            self.delete_items(ids)
            if row:
                self._db.execute("DELETE FROM clips WHERE clip_id=?", (clip_id,))
                self.clips -= 1
                self.bytes -= int(row[1])
                Path(row[0]).unlink(missing_ok=True)
                self.dropped_clips += 1
                log.warning("outbox: clip %s dropped (%s)", clip_id, why)

    def delete_items(self, ids: Iterable[str]) -> list[tuple[str, str, str | None]]:
        """Delete rows by id; returns ``(item_id, kind, clip_id)`` of the rows that existed."""
        found: list[tuple[str, str, str | None]] = []
        batch = list(ids)
        with self.tx():
            for i in range(0, len(batch), DELETE_BATCH):
                part = batch[i : i + DELETE_BATCH]
                marks = ",".join("?" * len(part))
                rows: list[Any] = self._db.execute(
                    f"SELECT item_id, kind, size, clip_id FROM items WHERE item_id IN ({marks})",
                    part,
                ).fetchall()
                if rows:
                    self._db.execute(f"DELETE FROM items WHERE item_id IN ({marks})", part)
                for item_id, kind, size, clip_id in rows:
                    found.append((item_id, kind, clip_id))
                    self.by_kind[kind] -= 1
                    if kind != KIND_CLIP_CHUNK:
                        self.bytes -= int(size)
                    self._on_removed(item_id)
        return found


def _chunk(
    clip_id: str, n: int, camera: str | None, size: int, chunk_size: int, props: dict[str, str]
) -> QueuedItem:
    """Chunk ``n`` of a clip of ``size`` bytes: its bytes stay in the clip file."""
    return QueuedItem(
        protocol.clip_chunk_item_id(clip_id, n),
        KIND_CLIP_CHUNK,
        protocol.rel_clip(clip_id, n),
        int(Priority.CLIP),
        camera,
        "video/mp4",
        {**props, "n": str(n)},
        None,
        min(chunk_size, size - n * chunk_size),
        clip_id=clip_id,
        chunk=n,
    )
