"""The outbox's SQLite database: the schema, opening it (a database unreadable at start is moved
aside as ``outbox.db.corrupt-TIME`` and a fresh one — a new epoch — started; a full disk is never
mistaken for damage), the database ``epoch``, write transactions, and waiting out a full disk.

What the rows mean, and every durable change, is ``store``'s; this module knows nothing of items
or clips. Not thread-safe by itself (the ``Outbox`` serialises every call with its lock).
"""

from __future__ import annotations

import errno
import logging
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from guetteur.record import reserve

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


class OutboxDatabase:
    """``OutboxDatabase(directory, on_rollback)``: ``{directory}/outbox.db``, opened (or started
    afresh, said in ``startup_warnings``). ``on_rollback()`` is called after every write that was
    not kept, so the store recounts the figures that followed it."""

    def __init__(self, directory: Path, on_rollback: Callable[[], None]) -> None:
        self.dir = directory
        self.path = directory / "outbox.db"
        self.startup_warnings: list[str] = []
        self._on_rollback = on_rollback
        self._conn = self._open()
        self.epoch = self._epoch()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    def close(self) -> None:
        self._conn.close()

    # -- opening -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
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
                            f"outbox database {self.path} cannot be opened: the data "
                            "partition is full and no reserve is left; free space on it",
                        ) from again
                    exc = again
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            msg = (
                f"outbox database {self.path} was unreadable at start ({exc}); moved aside "
                f"to {aside.name}; its unsent items are lost; a fresh outbox was started"
            )
            log.error("%s", msg)
            self.startup_warnings.append(msg)
            return self._connect()

    def _epoch(self) -> str:
        row = self._conn.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        if row:
            return str(row[0])
        epoch = uuid.uuid4().hex[:16]
        self._conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        return epoch

    @contextmanager
    def tx(self) -> Iterator[None]:
        """One write transaction (nested calls join the outer one)."""
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            self._on_rollback()  # the counts followed changes that were not kept
            raise

    def _rollback(self) -> None:
        # On a full disk SQLite may have rolled back already: a second ROLLBACK would hide the
        # real error behind "no transaction is active".
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def retry_when_full(self, what: str, write: Callable[[], _T]) -> _T:
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
                self._on_rollback()  # the failed attempt may have counted its rows
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
