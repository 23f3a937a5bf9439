"""Schema migrations (Alembic), run by ``guetteur centre db upgrade`` and at server start.

Several servers may start at once against one PostgreSQL: the upgrade holds an advisory lock, so
one migrates and the others find the schema current. SQLite's write transaction does the same.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from guetteur.centre.db.engine import Database

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_KEY = 0x6775_6574  # "guet": the advisory lock of migrations


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database, revision: str = "head") -> str | None:
    """Bring the schema to ``revision``; returns the revision it was at before."""
    config = _config()
    with db.engine.connect().execution_options(write=True) as conn:
        if db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            conn.commit()
        try:
            before = MigrationContext.configure(conn).get_current_revision()
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            conn.commit()
        finally:
            if db.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                conn.commit()
    return before
