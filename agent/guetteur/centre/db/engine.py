"""One data-access layer for PostgreSQL (production, several servers) and SQLite (embedded default).

``Database`` wraps a SQLAlchemy engine with what both dialects need to behave alike:

- ``write()`` opens a write transaction: ``BEGIN IMMEDIATE`` on SQLite (writers queue on the
  database lock instead of failing on a lock upgrade), a plain transaction on PostgreSQL where
  rows are locked with ``lock()`` (``SELECT ... FOR UPDATE``; SQLite needs none).
- ``insert(table)`` is the dialect's INSERT with ``on_conflict_do_nothing/do_update``.
- ``unavailable(exc)`` / ``retryable(exc)`` classify errors: a server that went away (reconnect,
  try again later, nothing acknowledged meanwhile) and a deadlock or lock timeout (try again now).

The PostgreSQL driver is psycopg 3 (``postgresql+psycopg://``): maintained by PostgreSQL's own
community, binary wheels for x86_64 and aarch64.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, Select, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger(__name__)

SQLITE_BUSY_S = 30.0


class DatabaseError(RuntimeError):
    """The database cannot be used (bad URL, unreachable, not migrated): a sentence for people."""


def _sqlite_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own would be deferred)
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_S * 1000)}")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql(
        "BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN"
    )


class Database:
    """An engine and the dialect-specific pieces; thread-safe (a connection pool)."""

    def __init__(self, url: str, pool_size: int = 5, connect_timeout_s: float = 5.0) -> None:
        try:
            parsed = make_url(url)
        except Exception as exc:  # ArgumentError, ValueError: a sentence, not a traceback
            raise DatabaseError(f"database URL {url!r} is not valid: {exc}") from None
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise DatabaseError(
                f"database URL {parsed.render_as_string(hide_password=True)}: use "
                "postgresql+psycopg://USER@HOST/NAME or sqlite:////path/centre.db"
            )
        self.url = parsed
        self._insert_new: dict[str, Any] = {}
        if self.dialect == "sqlite":
            self.engine: Engine = create_engine(
                parsed,
                connect_args={"timeout": SQLITE_BUSY_S, "check_same_thread": False},
                pool_size=pool_size,
                max_overflow=pool_size,
            )
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(
                parsed,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,  # a server restarted under us: fresh connections
                pool_timeout=30,
                connect_args={"connect_timeout": max(1, int(connect_timeout_s))},
            )

    def __repr__(self) -> str:
        return f"Database({self.describe()})"

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def insert(self, table: Table) -> Any:
        """The dialect's INSERT (``on_conflict_do_nothing()``, ``on_conflict_do_update()``)."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def insert_new(self, conn: Connection, table: Table, **values: Any) -> bool:
        """INSERT unless the key exists; True when a row was inserted. (``rowcount`` cannot
        tell: with the RETURNING PostgreSQL's serial keys use, drivers report -1.)"""
        stmt = self._insert_new.get(table.name)
        if stmt is None:  # built once per table: building costs more than running
            stmt = self.insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)
            self._insert_new[table.name] = stmt
        return conn.execute(stmt, values).first() is not None

    @staticmethod
    def lock(query: Select[Any]) -> Select[Any]:
        """``FOR UPDATE`` on PostgreSQL (SQLite's write transaction already excludes others)."""
        return query.with_for_update()

    def dispose(self) -> None:
        self.engine.dispose()

    # -- errors ----------------------------------------------------------------------------------

    @staticmethod
    def unavailable(exc: BaseException) -> bool:
        """The server went away or refuses connections: reconnect later."""
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, OperationalError):
            text = str(exc.orig).lower()
            return not any(s in text for s in ("deadlock", "locked", "could not serialize"))
        return False

    @staticmethod
    def retryable(exc: BaseException) -> bool:
        """A deadlock, a serialisation failure or a busy SQLite: the same work again succeeds."""
        if not isinstance(exc, DBAPIError):
            return False
        code = getattr(exc.orig, "sqlstate", None)
        if code in ("40P01", "40001", "55P03"):
            return True
        text = str(exc.orig).lower()
        return "database is locked" in text or "deadlock" in text
