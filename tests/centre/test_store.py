"""The receiver's store on both databases it supports: a real SQLite file and a real private
PostgreSQL server. Storage decisions, bad input, and two stores sharing one database."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from guetteur.centre.db.engine import Database
from guetteur.centre.db.migrate import current_revision, head_revision, upgrade
from guetteur.centre.db.schema import clips, events, metadata, refused, register, snapshots
from guetteur.centre.receiver.store import Store
from guetteur.uplink import protocol
from tests.centre.helpers import event_msg, make_store, manifest_for, msg


def stored_events(store: Store, camera: str = "cam1") -> list[str]:
    with store.db.read() as conn:
        return list(
            conn.execute(
                select(events.c.item_id).where(events.c.camera == camera).order_by(events.c.n)
            ).scalars()
        )


def test_migrations_build_the_schema_the_code_uses(database_url: str) -> None:
    db = Database(database_url)
    assert current_revision(db) is None
    assert upgrade(db) is None
    assert current_revision(db) == head_revision()
    assert upgrade(db) == head_revision()  # idempotent
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_clip_reassembly_rejects_bad_chunks_and_a_wrong_sha256(
    database_url: str, tmp_path: Path
) -> None:
    store = make_store(database_url, tmp_path / "media")
    body = os.urandom(10_000)
    man = manifest_for("c1", body, 4096)
    # a chunk before its manifest is not acknowledged (it will come again)
    r = store.handle_batch([msg("clip/c1/0", body[:4096])])
    assert not r.ids and store.stats["early_chunks"] == 1
    r = store.handle_batch([msg("clip/c1/manifest", protocol.dumps(man))])
    assert not r.ids["gw1"]  # the manifest is acknowledged only once the clip is verified
    bad = [
        msg("clip/c1/0", body[:4000]),  # truncated
        msg("clip/c1/1", body[4096:8192] + b"extra"),  # oversized
        msg("clip/c1/2", b"\x00" * (10_000 - 8192)),  # right size, wrong content
        msg("clip/c1/9", b"x"),  # beyond the manifest
        msg("clip/c1/zzz", b"x"),
        msg("clip/..%2f/0", b"x"),
    ]
    r = store.handle_batch(bad)
    assert r.resend["gw1"] == ["clip:c1:0", "clip:c1:1", "clip:c1:2"]
    assert store.stats["bad_chunks"] == 4
    r = store.handle_batch([msg(f"clip/c1/{n}", body[n * 4096 : (n + 1) * 4096]) for n in range(3)])
    assert r.ids["gw1"] == ["clip:c1:0", "clip:c1:1", "clip:c1:2", "clip:c1:manifest"]
    with store.db.read() as conn:
        row = conn.execute(select(clips).where(clips.c.clip_id == "c1")).mappings().one()
    assert row["state"] == "complete" and row["sha256"] == hashlib.sha256(body).hexdigest()
    path = Path(row["path"])
    assert path.read_bytes() == body
    assert path.name == f"{row['sha256']}.mp4"  # content-addressed
    # duplicates after completion are acknowledged again, nothing changes
    r = store.handle_batch(
        [msg("clip/c1/1", body[4096:8192]), msg("clip/c1/manifest", protocol.dumps(man))]
    )
    assert r.ids["gw1"] == ["clip:c1:1", "clip:c1:manifest"]


def test_sha256_mismatch_of_the_whole_clip_asks_for_every_chunk(
    database_url: str, tmp_path: Path
) -> None:
    store = make_store(database_url, tmp_path / "media")
    body = os.urandom(9000)
    man = manifest_for("c2", body, 4096)
    man.pop("chunk_sha256")  # without per-chunk hashes only the whole-clip sha can catch it
    man["sha256"] = hashlib.sha256(b"something else").hexdigest()
    store.handle_batch([msg("clip/c2/manifest", protocol.dumps(man))])
    r = store.handle_batch([msg(f"clip/c2/{n}", body[n * 4096 : (n + 1) * 4096]) for n in range(3)])
    assert r.resend["gw1"] == ["clip:c2:0", "clip:c2:1", "clip:c2:2"]
    assert "clip:c2:manifest" not in r.ids["gw1"]
    assert store.stats["bad_clips"] == 1
    assert not list((tmp_path / "media").rglob("*.mp4"))
    # the gateway repeats the manifest: the receiver asks for what it lacks
    r = store.handle_batch([msg("clip/c2/manifest", protocol.dumps(man))])
    assert r.resend["gw1"] == ["clip:c2:0", "clip:c2:1", "clip:c2:2"]


def test_events_are_deduplicated_and_stored_in_camera_order(
    database_url: str, tmp_path: Path
) -> None:
    store = make_store(database_url, tmp_path / "media")
    r = store.handle_batch([event_msg(1, 1), event_msg(3, 3), event_msg(4, 4), event_msg(3, 3)])
    assert r.ids["gw1"] == ["e1:0", "e3:0", "e4:0", "e3:0"]  # held ones are durable: acked
    store.handle_batch([event_msg(2, 2), event_msg(1, 1), event_msg(5, 5)])
    assert stored_events(store) == ["e1:0", "e2:0", "e3:0", "e4:0", "e5:0"]
    # a new outbox on the gateway (new epoch) starts its own sequence
    store.handle_batch([event_msg(7, 2, "E2"), event_msg(6, 1, "E2")])
    assert stored_events(store)[-2:] == ["e6:0", "e7:0"]
    # a new epoch while the old one still holds events behind a gap: they are stored anyway
    store.handle_batch([event_msg(9, 4, "E2")])  # 3 never comes
    store.handle_batch([event_msg(10, 1, "E3")])
    assert stored_events(store)[-2:] == ["e9:0", "e10:0"]
    with store.db.read() as conn:
        row = conn.execute(select(events).where(events.c.item_id == "e1:0")).mappings().one()
    assert row["event_id"] == "e1" and row["type"] == "start" and row["score"] == 0.5


def test_junk_never_crashes_the_store_and_is_recorded(database_url: str, tmp_path: Path) -> None:
    store = make_store(database_url, tmp_path / "media")
    junk = [
        msg("cam/cam1/event", b"\x00\xff"),
        msg("cam/cam1/event", b"[]"),
        msg("cam/cam1/event", protocol.dumps({"type": "start"})),  # no id: nothing to ack
        msg("cam/bad+id/event", b"{}"),
        msg("audit", b"nope", item_id="a1"),  # an id: acknowledged as refused
        msg("cam/cam1/event", b"[" * 100_000 + b"]" * 100_000, item_id="deep"),
        msg("cam/cam1/event", b'{"id": "big", "seq": ' + b"9" * 5000 + b"}"),
        msg("cam/cam1/event", protocol.dumps({"id": "nul", "event_id": "a\x00b"})),
        msg("cam/cam1/event", b'{"id": "sur", "event_id": "\\ud800"}'),
        msg("cam/cam1/event", protocol.dumps({"id": "x" * 300})),
        msg("cam/cam1/snapshot", b""),
        msg("cam/cam1/status", b"{"),
        msg("elsewhere", b"{}"),
    ]
    r = store.handle_batch(junk)
    assert sorted(r.ids["gw1"]) == ["a1", "deep"]
    assert store.stats["bad_messages"] == len(junk)
    with store.db.read() as conn:
        reasons = list(conn.execute(select(refused.c.reason)).scalars())
    assert len(reasons) == len(junk)
    assert any("deeper than 32" in x for x in reasons)
    assert any("control characters or unpaired surrogates" in x for x in reasons)
    # and the store goes on storing
    store.handle_batch([event_msg(1, 1)])
    assert stored_events(store) == ["e1:0"]


def test_a_manifest_declaring_ten_billion_chunks_is_refused_and_acknowledged(
    database_url: str, tmp_path: Path
) -> None:
    """Issue 12: this 184-byte manifest raised MemoryError and stopped the receiver for good."""
    store = make_store(database_url, tmp_path / "media")
    poison = protocol.dumps(
        {
            "clip_id": "p1",
            "camera": "cam1",
            "size": 10**10,
            "chunk_size": 1,
            "count": 10**10,
            "sha256": "0" * 64,
        }
    )
    assert len(poison) < 200
    r = store.handle_batch([msg("clip/p1/manifest", poison), event_msg(1, 1)])
    assert r.ids["gw1"] == ["clip:p1:manifest", "e1:0"]
    assert store.stats["refused"] == 1
    # its chunks are acknowledged and dropped as they come; nothing is written
    r = store.handle_batch([msg("clip/p1/0", b"x"), msg("clip/p1/99999999", b"x")])
    assert r.ids["gw1"] == ["clip:p1:0", "clip:p1:99999999"]
    with store.db.read() as conn:
        state = conn.execute(select(clips.c.state).where(clips.c.clip_id == "p1")).scalar_one()
    assert state == "refused"
    assert stored_events(store) == ["e1:0"]


def test_snapshots_are_content_addressed_and_audit_records_join_the_register(
    database_url: str, tmp_path: Path
) -> None:
    store = make_store(database_url, tmp_path / "media")
    jpeg = b"\xff\xd8" + os.urandom(2000)
    audit = {
        "id": "rec-1",
        "gateway": "gw1",
        "action": "ptz.move",
        "operator": "op1",
        "camera": "dome",
        "request_id": "cmd-42",
        "outcome": "ok",
    }
    r = store.handle_batch(
        [
            msg("cam/cam1/snapshot", jpeg, item_id="s1", event_id="e1"),
            msg("cam/cam2/snapshot", jpeg, item_id="s2"),  # same bytes, one file
            msg("audit", protocol.dumps(audit), item_id="rec-1"),
            msg("audit", protocol.dumps(audit), item_id="rec-1"),  # again: stored once
        ]
    )
    assert r.ids["gw1"] == ["s1", "s2", "rec-1", "rec-1"]
    with store.db.read() as conn:
        snaps = conn.execute(select(snapshots).order_by(snapshots.c.item_id)).mappings().all()
        rows = conn.execute(select(register)).mappings().all()
    assert [s["sha256"] for s in snaps] == [hashlib.sha256(jpeg).hexdigest()] * 2
    assert Path(snaps[0]["path"]).read_bytes() == jpeg
    assert len(list((tmp_path / "media").rglob("*.jpg"))) == 1
    assert len(rows) == 1
    row = rows[0]
    assert (row["source"], row["action"], row["operator"], row["command_id"]) == (
        "gateway",
        "ptz.move",
        "op1",
        "cmd-42",
    )
    assert json.loads(row["detail"])["camera"] == "dome"


def test_two_stores_sharing_one_database_store_every_event_once_in_order(
    database_url: str, tmp_path: Path
) -> None:
    """Two servers of a share group: the broker hands each message to one of them, duplicates
    (retransmissions) to either; the database decides, per camera, in cseq order."""
    a = make_store(database_url, tmp_path / "media")
    b = make_store(database_url, tmp_path / "media")
    cameras = ("cam1", "cam2", "cam3")
    messages = [
        event_msg(n * 10 + i, n, camera=cam) for n in range(1, 121) for i, cam in enumerate(cameras)
    ]
    # each store gets every other message, and a third of all of them again (duplicates)
    shares = [messages[0::2] + messages[::3], messages[1::2] + messages[1::3]]
    errors: list[BaseException] = []

    def run(store: Store, share: list[object]) -> None:
        try:
            for i in range(0, len(share), 7):
                store.handle_batch(share[i : i + 7])  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(s, m)) for s, m in zip((a, b), shares, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i, cam in enumerate(cameras):
        assert stored_events(a, cam) == [f"e{n * 10 + i}:0" for n in range(1, 121)]
    assert a.stats["events"] + b.stats["events"] == 360
