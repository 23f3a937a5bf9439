"""Initial schema: the receiver's tables, operators, sessions, the register, extractions.

Revision ID: 0001
Revises: (none)
Create Date: 2026-12-02 19:51:57.452239
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "camera_status",
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("camera", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("updated", sa.String(length=24), nullable=False),
        sa.PrimaryKeyConstraint("gateway", "camera", name=op.f("pk_camera_status")),
    )
    op.create_table(
        "clip_chunks",
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("clip_id", sa.String(length=64), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("gateway", "clip_id", "n", name=op.f("pk_clip_chunks")),
    )
    op.create_table(
        "clips",
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("clip_id", sa.String(length=64), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column(
            "state", sa.String(length=16), nullable=False, comment="receiving | complete | refused"
        ),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.Column("chunk_size", sa.Integer(), nullable=True),
        sa.Column("camera", sa.String(length=64), nullable=True),
        sa.Column("event_id", sa.String(length=200), nullable=True),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("started", sa.String(length=24), nullable=True),
        sa.Column("ended", sa.String(length=24), nullable=True),
        sa.Column("received", sa.String(length=24), nullable=True),
        sa.PrimaryKeyConstraint("gateway", "clip_id", name=op.f("pk_clips")),
    )
    with op.batch_alter_table("clips", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_clips_received"), ["received"], unique=False)
        batch_op.create_index(batch_op.f("ix_clips_request_id"), ["request_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_clips_sha256"), ["sha256"], unique=False)

    op.create_table(
        "epochs",
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("camera", sa.String(length=64), nullable=False),
        sa.Column("epoch", sa.String(length=64), nullable=False),
        sa.Column("next_cseq", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.String(length=24), nullable=False),
        sa.PrimaryKeyConstraint("gateway", "camera", "epoch", name=op.f("pk_epochs")),
    )
    op.create_table(
        "events",
        sa.Column(
            "n",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
            comment="storage order",
        ),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=200), nullable=False),
        sa.Column("camera", sa.String(length=64), nullable=True),
        sa.Column("event_id", sa.String(length=200), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("type", sa.String(length=16), nullable=True),
        sa.Column("started", sa.String(length=24), nullable=True),
        sa.Column("ended", sa.String(length=24), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column(
            "labels",
            sa.String(length=256),
            nullable=True,
            comment="comma-separated labels, for filtering",
        ),
        sa.Column("epoch", sa.String(length=64), nullable=True),
        sa.Column("cseq", sa.BigInteger(), nullable=True),
        sa.Column("received", sa.String(length=24), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("n", name=op.f("pk_events")),
        sa.UniqueConstraint("gateway", "item_id", name=op.f("uq_events_gateway_item_id")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_events_gateway_camera_n"), ["gateway", "camera", "n"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_events_gateway_event_id"), ["gateway", "event_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_events_received"), ["received"], unique=False)

    op.create_table(
        "extractions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("requisition", sa.String(length=256), nullable=False),
        sa.Column("officer", sa.String(length=256), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("camera", sa.String(length=64), nullable=False),
        sa.Column("range_from", sa.String(length=24), nullable=False),
        sa.Column("range_to", sa.String(length=24), nullable=False),
        sa.Column("command_id", sa.String(length=200), nullable=False),
        sa.Column("clip_id", sa.String(length=64), nullable=True),
        sa.Column(
            "state", sa.String(length=16), nullable=False, comment="requested | ready | failed"
        ),
        sa.Column("folder", sa.Text(), nullable=True),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created", sa.String(length=24), nullable=False),
        sa.Column("completed", sa.String(length=24), nullable=True),
        sa.Column("hold", sa.Boolean(), nullable=False),
        sa.Column("hold_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_extractions")),
    )
    with op.batch_alter_table("extractions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_extractions_command_id"), ["command_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_extractions_created"), ["created"], unique=False)
        batch_op.create_index(batch_op.f("ix_extractions_state"), ["state"], unique=False)

    op.create_table(
        "gateway_audit",
        sa.Column(
            "n",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("session", sa.String(length=200), nullable=True),
        sa.Column("operator", sa.String(length=128), nullable=True),
        sa.Column("camera", sa.String(length=64), nullable=True),
        sa.Column("time", sa.String(length=24), nullable=True),
        sa.Column("received", sa.String(length=24), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("n", name=op.f("pk_gateway_audit")),
        sa.UniqueConstraint("gateway", "item_id", name=op.f("uq_gateway_audit_gateway_item_id")),
    )
    with op.batch_alter_table("gateway_audit", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_gateway_audit_request_id"), ["request_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_gateway_audit_session"), ["session"], unique=False)

    op.create_table(
        "gateways",
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=True),
        sa.Column("site", sa.String(length=256), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column(
            "since", sa.String(length=24), nullable=True, comment="when the state last changed"
        ),
        sa.Column("updated", sa.String(length=24), nullable=False),
        sa.PrimaryKeyConstraint("gateway", name=op.f("pk_gateways")),
    )
    op.create_table(
        "held",
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("camera", sa.String(length=64), nullable=False),
        sa.Column("epoch", sa.String(length=64), nullable=False),
        sa.Column("cseq", sa.BigInteger(), nullable=False),
        sa.Column("item_id", sa.String(length=200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("gateway", "camera", "epoch", "cseq", name=op.f("pk_held")),
    )
    op.create_table(
        "login_failures",
        sa.Column(
            "n",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("username", sa.String(length=256), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("time", sa.String(length=24), nullable=False),
        sa.PrimaryKeyConstraint("n", name=op.f("pk_login_failures")),
    )
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_login_failures_address_time"), ["address", "time"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_login_failures_username_time"), ["username", "time"], unique=False
        )

    op.create_table(
        "refused",
        sa.Column(
            "n",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("gateway", sa.String(length=256), nullable=True),
        sa.Column("item_id", sa.String(length=200), nullable=True),
        sa.Column("topic", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("received", sa.String(length=24), nullable=False),
        sa.PrimaryKeyConstraint("n", name=op.f("pk_refused")),
    )
    with op.batch_alter_table("refused", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_refused_received"), ["received"], unique=False)

    op.create_table(
        "register",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("time", sa.String(length=24), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False, comment="centre | gateway"),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("operator", sa.String(length=128), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=True),
        sa.Column("gateway", sa.String(length=64), nullable=True),
        sa.Column("camera", sa.String(length=64), nullable=True),
        sa.Column("command_id", sa.String(length=200), nullable=True),
        sa.Column("session_id", sa.String(length=200), nullable=True),
        sa.Column("outcome", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_register")),
    )
    with op.batch_alter_table("register", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_register_camera_time"), ["camera", "time"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_register_command_id"), ["command_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_register_operator_time"), ["operator", "time"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_register_session_id"), ["session_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_register_time"), ["time"], unique=False)

    op.create_table(
        "register_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_register_head")),
    )
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False, comment="session | api"),
        sa.Column("label", sa.String(length=256), nullable=True),
        sa.Column("created", sa.String(length=24), nullable=False),
        sa.Column("expires", sa.String(length=24), nullable=False),
        sa.Column("last_seen", sa.String(length=24), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_sessions")),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sessions_expires"), ["expires"], unique=False)
        batch_op.create_index(batch_op.f("ix_sessions_username"), ["username"], unique=False)

    op.create_table(
        "snapshots",
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=True),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("camera", sa.String(length=64), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("taken", sa.String(length=24), nullable=True),
        sa.Column("received", sa.String(length=24), nullable=False),
        sa.PrimaryKeyConstraint("gateway", "item_id", name=op.f("pk_snapshots")),
    )
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_snapshots_gateway_event_id"), ["gateway", "event_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_snapshots_received"), ["received"], unique=False)
        batch_op.create_index(batch_op.f("ix_snapshots_sha256"), ["sha256"], unique=False)

    op.create_table(
        "users",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created", sa.String(length=24), nullable=False),
        sa.Column("updated", sa.String(length=24), nullable=False),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_users")),
    )


def downgrade() -> None:

    op.drop_table("users")
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_snapshots_sha256"))
        batch_op.drop_index(batch_op.f("ix_snapshots_received"))
        batch_op.drop_index(batch_op.f("ix_snapshots_gateway_event_id"))

    op.drop_table("snapshots")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_username"))
        batch_op.drop_index(batch_op.f("ix_sessions_expires"))

    op.drop_table("sessions")
    op.drop_table("register_head")
    with op.batch_alter_table("register", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_register_time"))
        batch_op.drop_index(batch_op.f("ix_register_session_id"))
        batch_op.drop_index(batch_op.f("ix_register_operator_time"))
        batch_op.drop_index(batch_op.f("ix_register_command_id"))
        batch_op.drop_index(batch_op.f("ix_register_camera_time"))

    op.drop_table("register")
    with op.batch_alter_table("refused", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refused_received"))

    op.drop_table("refused")
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_failures_username_time"))
        batch_op.drop_index(batch_op.f("ix_login_failures_address_time"))

    op.drop_table("login_failures")
    op.drop_table("held")
    op.drop_table("gateways")
    with op.batch_alter_table("gateway_audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gateway_audit_session"))
        batch_op.drop_index(batch_op.f("ix_gateway_audit_request_id"))

    op.drop_table("gateway_audit")
    with op.batch_alter_table("extractions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_extractions_state"))
        batch_op.drop_index(batch_op.f("ix_extractions_created"))
        batch_op.drop_index(batch_op.f("ix_extractions_command_id"))

    op.drop_table("extractions")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_received"))
        batch_op.drop_index(batch_op.f("ix_events_gateway_event_id"))
        batch_op.drop_index(batch_op.f("ix_events_gateway_camera_n"))

    op.drop_table("events")
    op.drop_table("epochs")
    with op.batch_alter_table("clips", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_clips_sha256"))
        batch_op.drop_index(batch_op.f("ix_clips_request_id"))
        batch_op.drop_index(batch_op.f("ix_clips_received"))

    op.drop_table("clips")
    op.drop_table("clip_chunks")
    op.drop_table("camera_status")
