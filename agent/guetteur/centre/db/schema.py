"""The centre's tables, one definition for PostgreSQL and SQLite (SQLAlchemy Core).

Times are UTC ISO 8601 text with milliseconds (``2026-12-02T10:00:00.000Z``), as on the wire: one
fixed width, so they sort and compare as text on both databases. Snapshots and clips are files in
the content-addressed media tree (``centre.media``); their rows hold the sha256 and the path.

The migrations in ``migrations/versions`` build exactly this (``tests/centre/test_db.py`` compares
a migrated database with these definitions): change both together.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(64)  # gateway, camera, clip ids (protocol.ID_PATTERN: at most 64)
ITEM = String(200)  # outbox item ids (event_id:seq, clip:{id}:{n}, ...)
TIME = String(24)  # 2026-12-02T10:00:00.000Z
SHA = String(64)
# SQLite only autoincrements an INTEGER PRIMARY KEY (its rowid)
SERIAL = BigInteger().with_variant(Integer(), "sqlite")

# -- what the gateways send (the receiver) -------------------------------------------------------

events = Table(
    "events",
    metadata,
    Column("n", SERIAL, primary_key=True, autoincrement=True, comment="storage order"),
    Column("gateway", ID, nullable=False),
    Column("item_id", ITEM, nullable=False),
    Column("camera", ID),
    Column("event_id", ITEM),
    Column("seq", Integer),
    Column("type", String(16)),
    Column("started", TIME),
    Column("ended", TIME),
    Column("score", Float),
    Column("labels", String(256), comment="comma-separated labels, for filtering"),
    Column("epoch", String(64)),
    Column("cseq", BigInteger),
    Column("received", TIME, nullable=False),
    Column("message", Text, nullable=False),
    UniqueConstraint("gateway", "item_id"),
    Index(None, "gateway", "camera", "n"),
    Index(None, "received"),
    Index(None, "gateway", "event_id"),
)

held = Table(
    "held",
    metadata,
    Column("gateway", ID, nullable=False),
    Column("camera", ID, nullable=False),
    Column("epoch", String(64), nullable=False),
    Column("cseq", BigInteger, nullable=False),
    Column("item_id", ITEM, nullable=False),
    Column("message", Text, nullable=False),
    PrimaryKeyConstraint("gateway", "camera", "epoch", "cseq"),
)

epochs = Table(
    "epochs",
    metadata,
    Column("gateway", ID, nullable=False),
    Column("camera", ID, nullable=False),
    Column("epoch", String(64), nullable=False),
    Column("next_cseq", BigInteger, nullable=False),
    Column("first_seen", TIME, nullable=False),
    PrimaryKeyConstraint("gateway", "camera", "epoch"),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("gateway", ID, nullable=False),
    Column("item_id", ITEM, nullable=False),
    Column("event_id", ITEM),
    Column("request_id", ITEM),
    Column("camera", ID),
    Column("sha256", SHA, nullable=False),
    Column("path", Text, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("taken", TIME),
    Column("received", TIME, nullable=False),
    PrimaryKeyConstraint("gateway", "item_id"),
    Index(None, "gateway", "event_id"),
    Index(None, "received"),
    Index(None, "sha256"),
)

clips = Table(
    "clips",
    metadata,
    Column("gateway", ID, nullable=False),
    Column("clip_id", ID, nullable=False),
    Column("manifest", Text, nullable=False),
    Column("state", String(16), nullable=False, comment="receiving | complete | refused"),
    Column("path", Text),
    Column("size", BigInteger),
    Column("sha256", SHA),
    Column("count", Integer),
    Column("chunk_size", Integer),
    Column("camera", ID),
    Column("event_id", ITEM),
    Column("request_id", ITEM),
    Column("started", TIME),
    Column("ended", TIME),
    Column("received", TIME),
    PrimaryKeyConstraint("gateway", "clip_id"),
    Index(None, "request_id"),
    Index(None, "received"),
    Index(None, "sha256"),
)

clip_chunks = Table(
    "clip_chunks",
    metadata,
    Column("gateway", ID, nullable=False),
    Column("clip_id", ID, nullable=False),
    Column("n", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("gateway", "clip_id", "n"),
)

gateway_audit = Table(
    "gateway_audit",
    metadata,
    Column("n", SERIAL, primary_key=True, autoincrement=True),
    Column("gateway", ID, nullable=False),
    Column("item_id", ITEM, nullable=False),
    Column("action", String(64)),
    Column("request_id", ITEM),
    Column("session", ITEM),
    Column("operator", String(128)),
    Column("camera", ID),
    Column("time", TIME),
    Column("received", TIME, nullable=False),
    Column("message", Text, nullable=False),
    UniqueConstraint("gateway", "item_id"),
    Index(None, "request_id"),
    Index(None, "session"),
)

gateways = Table(
    "gateways",
    metadata,
    Column("gateway", ID, primary_key=True),
    Column("state", String(32)),
    Column("site", String(256)),
    Column("status", Text, nullable=False),
    Column("since", TIME, comment="when the state last changed"),
    Column("updated", TIME, nullable=False),
)

camera_status = Table(
    "camera_status",
    metadata,
    Column("gateway", ID, nullable=False),
    Column("camera", ID, nullable=False),
    Column("state", String(32)),
    Column("status", Text, nullable=False),
    Column("updated", TIME, nullable=False),
    PrimaryKeyConstraint("gateway", "camera"),
)

refused = Table(
    "refused",
    metadata,
    Column("n", SERIAL, primary_key=True, autoincrement=True),
    Column("gateway", String(256)),
    Column("item_id", ITEM),
    Column("topic", Text),
    Column("reason", Text, nullable=False),
    Column("received", TIME, nullable=False),
    Index(None, "received"),
)

# -- the server's own: operators, sessions, the register, extractions ----------------------------

users = Table(
    "users",
    metadata,
    Column("username", ID, primary_key=True),
    Column("display_name", String(256)),
    Column("role", String(16), nullable=False),
    Column("password_hash", Text),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created", TIME, nullable=False),
    Column("updated", TIME, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("token_hash", SHA, primary_key=True),
    Column("username", ID, nullable=False),
    Column("kind", String(16), nullable=False, comment="session | api"),
    Column("label", String(256)),
    Column("created", TIME, nullable=False),
    Column("expires", TIME, nullable=False),
    Column("last_seen", TIME, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Index(None, "username"),
    Index(None, "expires"),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("n", SERIAL, primary_key=True, autoincrement=True),
    Column("username", String(256), nullable=False),
    Column("address", String(64), nullable=False),
    Column("time", TIME, nullable=False),
    Index(None, "username", "time"),
    Index(None, "address", "time"),
)

register = Table(
    "register",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", TIME, nullable=False),
    Column("source", String(16), nullable=False, comment="centre | gateway"),
    Column("action", String(64), nullable=False),
    Column("operator", String(128)),
    Column("role", String(16)),
    Column("gateway", ID),
    Column("camera", ID),
    Column("command_id", ITEM),
    Column("session_id", ITEM),
    Column("outcome", String(64)),
    Column("detail", Text, nullable=False),
    Column("prev_hash", SHA, nullable=False),
    Column("hash", SHA, nullable=False),
    Index(None, "time"),
    Index(None, "camera", "time"),
    Index(None, "operator", "time"),
    Index(None, "command_id"),
    Index(None, "session_id"),
)

register_head = Table(
    "register_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", SHA, nullable=False),
)

extractions = Table(
    "extractions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("requisition", String(256), nullable=False),
    Column("officer", String(256), nullable=False),
    Column("requested_by", ID, nullable=False),
    Column("gateway", ID, nullable=False),
    Column("camera", ID, nullable=False),
    Column("range_from", TIME, nullable=False),
    Column("range_to", TIME, nullable=False),
    Column("command_id", ITEM, nullable=False),
    Column("clip_id", ID),
    Column("state", String(16), nullable=False, comment="requested | ready | failed"),
    Column("folder", Text),
    Column("manifest_sha256", SHA),
    Column("error", Text),
    Column("created", TIME, nullable=False),
    Column("completed", TIME),
    Column("hold", Boolean, nullable=False, default=False),
    Column("hold_reason", Text),
    Index(None, "state"),
    Index(None, "command_id"),
    Index(None, "created"),
)
