"""What a crash must not lose of the events: the events still open and the clips still owed.

``{data_dir}/events.sqlite3`` (WAL, ``synchronous=FULL`` like the outbox: a row that is written
survives a ``kill -9`` and a power cut), two tables:

- ``open_events``: per event not yet ended, the last message published about it (start or
  update) and what its end needs. Written *before* that message goes to the outbox, so a crash
  at any point leaves either nothing published or an open row that the next start ends.
- ``clip_jobs``: per ended event, the range of its clip (pre-roll to post-roll). Written in the
  same transaction that removes the open row, so an event is always open, owed a clip, or done.

At start the runtime ends every open event (``restart_end``: an ``end`` with ``reason:
"restart"``) and resumes every clip job (``record.clip_jobs``). The journal is small: one row per
open event (a few per camera) and per clip not yet cut.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from guetteur.analytics.events import EventUpdate
from guetteur.media.types import Box
from guetteur.record import reserve
from guetteur.record.purge import is_disk_full

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS open_events (
    event_id TEXT PRIMARY KEY,
    camera TEXT NOT NULL,
    last TEXT NOT NULL,
    payload BLOB NOT NULL,
    seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS clip_jobs (
    event_id TEXT PRIMARY KEY,
    camera TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    t0 REAL NOT NULL,
    t1 REAL NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class ClipJob:
    """The clip owed for one ended event: [t0, t1] = [start - pre-roll, end + post-roll]."""

    event_id: str
    camera: str
    start: float  # event start, epoch s
    end: float  # event end, epoch s
    t0: float
    t1: float
    created: float  # when the event ended (epoch s)

    @property
    def clip_id(self) -> str:
        return f"evt-{self.event_id}"


@dataclass(frozen=True)
class OpenEvent:
    """An event whose end was never published: its last update, that update's published
    message (sent again at restart: the outbox and the centre de-duplicate it by id) and when it
    was last seen open."""

    last: EventUpdate
    payload: bytes
    seen: float


def _state(update: EventUpdate) -> str:
    """What an end needs of an event's last update (no snapshot: it went with that update)."""
    return json.dumps(
        {
            "event_id": update.event_id,
            "seq": update.seq,
            "camera": update.camera,
            "start_s": update.start_s,
            "start_wall": update.start_wall,
            "boxes": [b.as_list() for b in update.boxes],
            "labels": update.labels,
            "peak_score": update.peak_score,
            "clock_synced": update.clock_synced,
            "category": update.category,
            "rule": update.rule,
            "preset": update.preset,
            "snapshot_withheld": update.snapshot_withheld,
            "part": update.part,
            "previous_event_id": update.previous_event_id,
        }
    )


def _update(state: str) -> EventUpdate:
    s: dict[str, Any] = json.loads(state)
    return EventUpdate(
        kind="update",
        event_id=s["event_id"],
        seq=int(s["seq"]),
        camera=s["camera"],
        start_s=float(s["start_s"]),
        end_s=None,
        start_wall=float(s["start_wall"]),
        end_wall=None,
        boxes=[Box(*b) for b in s["boxes"]],
        labels={str(k): float(v) for k, v in s["labels"].items()},
        peak_score=float(s["peak_score"]),
        clock_synced=bool(s["clock_synced"]),
        category=s["category"],
        rule=s["rule"],
        preset=s["preset"],
        snapshot_withheld=s["snapshot_withheld"],
        part=int(s["part"]),
        previous_event_id=s["previous_event_id"],
    )


def restart_end(open_event: OpenEvent, clock_synced: bool) -> EventUpdate:
    """The end of an event the agent stopped without closing (pure): the next seq, ``reason:
    "restart"``, its end the last time it was seen open (its last update: motion was going on
    then; what came after, up to the crash, is in the clip's post-roll when it was recorded)."""
    last = open_event.last
    return EventUpdate(
        kind="end",
        event_id=last.event_id,
        seq=last.seq + 1,
        camera=last.camera,
        start_s=last.start_s,
        end_s=None,
        start_wall=last.start_wall,
        end_wall=max(open_event.seen, last.start_wall),
        boxes=list(last.boxes),
        labels=dict(last.labels),
        peak_score=last.peak_score,
        clock_synced=clock_synced,
        category=last.category,
        rule=last.rule,
        preset=last.preset,
        snapshot_withheld=last.snapshot_withheld,
        part=last.part,
        previous_event_id=last.previous_event_id,
        reason="restart",
    )


class EventJournal:
    """The open events and the clip jobs, in SQLite; safe from several threads (one connection
    behind a lock: the analysis threads, the clip worker and the runtime at start and stop).

    The journal never stops an event from being published: on a full disk it releases the data
    partition's reserve file (``record/reserve.py``) and tries again once; if it still cannot
    write (or open), it says so and the events go out without their crash protection."""

    def __init__(self, data_dir: Path | str, clock: Callable[[], float] = time.time) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "events.sqlite3"
        self.clock = clock
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._retry_when_full("opening", lambda: self._open(str(self.path)))
        except (sqlite3.Error, OSError) as exc:
            log.error(
                "event journal %s cannot be opened (%s): events in progress and clips owed are "
                "not protected against a crash until the agent starts with it again",
                self.path,
                exc,
            )
            self._db = self._open(":memory:")

    @staticmethod
    def _open(where: str) -> sqlite3.Connection:
        db = sqlite3.connect(where, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: an event recorded as open, or a clip recorded as owed, survives a power cut
            # (the rows are few: one per event update at most every events.update_interval_s).
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _retry_when_full(self, what: str, write: Callable[[], _T]) -> _T:
        try:
            return write()
        except sqlite3.Error as exc:
            if not is_disk_full(exc) and "disk I/O error" not in str(exc):
                raise
            if not reserve.release(self.data_dir, f"the event journal ({what})"):
                raise
            return write()

    def _guarded(self, what: str, write: Callable[[], None]) -> None:
        """Run a write; a failure is logged, never raised (the event goes out all the same)."""
        try:
            self._retry_when_full(what, write)
        except sqlite3.Error as exc:
            log.error(
                "event journal: %s not recorded (%s); if the agent crashes now, that event's "
                "end or clip may be missing",
                what,
                exc,
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def opened(self, update: EventUpdate, payload: bytes) -> None:
        """Record an event's start or update (call before publishing ``payload``)."""
        row = (update.event_id, update.camera, _state(update), payload, self.clock())

        def write() -> None:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO open_events (event_id, camera, last, payload, seen) "
                    "VALUES (?, ?, ?, ?, ?)",
                    row,
                )

        self._guarded(f"event {update.event_id} of {update.camera} open", write)

    def ended(self, event_id: str, job: ClipJob | None) -> None:
        """The event is no longer open and, with ``job``, its clip is owed: one transaction."""

        def write() -> None:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute("DELETE FROM open_events WHERE event_id = ?", (event_id,))
                    if job is not None:
                        self._db.execute(
                            "INSERT OR REPLACE INTO clip_jobs "
                            "(event_id, camera, start, end, t0, t1, created) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (
                                job.event_id,
                                job.camera,
                                job.start,
                                job.end,
                                job.t0,
                                job.t1,
                                job.created,
                            ),
                        )
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back (disk full)
                        self._db.execute("ROLLBACK")
                    raise

        self._guarded(f"end of event {event_id} and its clip owed", write)

    def done(self, event_id: str) -> None:
        """The clip is with the publisher (or can never be cut): the job is finished."""

        def write() -> None:
            with self._lock:
                self._db.execute("DELETE FROM clip_jobs WHERE event_id = ?", (event_id,))

        self._guarded(f"clip of event {event_id} done", write)

    def open_events(self) -> list[OpenEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT last, payload, seen FROM open_events ORDER BY seen"
            ).fetchall()
        return [OpenEvent(_update(r[0]), bytes(r[1]), float(r[2])) for r in rows]

    def jobs(self) -> list[ClipJob]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, camera, start, end, t0, t1, created FROM clip_jobs "
                "ORDER BY created"
            ).fetchall()
        return [ClipJob(r[0], r[1], *(float(x) for x in r[2:])) for r in rows]
