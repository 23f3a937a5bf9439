"""The centre receiver's store: a batch of messages in, acknowledgements out; no MQTT here.

One database for every server (``centre.db``: PostgreSQL, or SQLite embedded), files in the
content-addressed media tree (``centre.media``).

- Every message is first checked by ``parse`` (pure, bounded); what it refuses is recorded in
  ``refused`` and acknowledged when it names an item (sending it again would not help).
- De-duplication by (gateway, item id): a message seen again is acknowledged again, stored once,
  whichever server of the group stored it first.
- Events are stored in per-camera order: the outbox numbers them (``epoch``, ``cseq``); an event
  that overtakes an earlier one waits in ``held`` (acknowledged: it is durable) until the gap
  fills. The camera's ``epochs`` row is locked for the transaction, so two servers sharing the
  database take turns per camera.
- Clips: ``clips.ClipAssembler``. Gateway audit records are also appended to the access register
  (``source = gateway``), joined there with the centre's own rows by command id.
- One transaction per batch. The database gone: ``StoreUnavailable``, nothing is acknowledged and
  the caller tries the same batch again later. A message that breaks its transaction for another
  reason is retried alone, so it cannot take the rest of the batch with it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.engine import Connection

from guetteur.centre.db.engine import Database
from guetteur.centre.db.migrate import upgrade
from guetteur.centre.db.schema import (
    camera_status,
    epochs,
    events,
    gateway_audit,
    gateways,
    held,
    refused,
    snapshots,
)
from guetteur.centre.media import MediaStore
from guetteur.centre.receiver.clips import ClipAssembler, ClipReply
from guetteur.centre.receiver.parse import (
    Audit,
    CameraStatus,
    Chunk,
    Event,
    Incoming,
    Limits,
    Manifest,
    Parsed,
    Refusal,
    Snapshot,
    Status,
    event_from_body,
    parse,
)
from guetteur.centre.register import Entry, Register
from guetteur.timeutil import iso_ms
from guetteur.uplink import protocol

log = logging.getLogger(__name__)

__all__ = ["Incoming", "Replies", "Store", "StoreUnavailable"]


class StoreUnavailable(RuntimeError):
    """The database cannot be reached: nothing of the batch was stored or acknowledged."""


@dataclass
class Replies:
    """Acks and resend requests per gateway, published after the commit."""

    ids: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    resend: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    resync: set[str] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)  # what was stored: "event", "status"...
    register: list[Entry] = field(default_factory=list)  # appended last (see _transaction)

    def add(self, gw: str, reply: ClipReply) -> None:
        if reply.ack:
            self.ids[gw].extend(reply.ack)
        if reply.resend:
            self.resend[gw].extend(reply.resend)

    def merge(self, other: Replies) -> None:
        for gw, ids in other.ids.items():
            self.ids[gw].extend(ids)
        for gw, ids in other.resend.items():
            self.resend[gw].extend(ids)
        self.resync |= other.resync
        self.kinds |= other.kinds


EpochKey = tuple[str, str, str]  # gateway, camera, epoch


@dataclass
class EpochState:
    """A camera's place in its outbox sequence, for one transaction (its row is locked)."""

    next_cseq: int
    has_held: bool
    dirty: bool = False


class Statements:
    """The event path's statements, built once: building a SQLAlchemy statement costs more
    than running it on a small row."""

    def __init__(self, db: Database) -> None:
        g: Any = bindparam("g")
        c: Any = bindparam("c")
        e: Any = bindparam("e")
        self.lock_epoch = db.lock(
            select(epochs.c.next_cseq).where(
                epochs.c.gateway == g, epochs.c.camera == c, epochs.c.epoch == e
            )
        )
        self.save_epoch = (
            epochs.update()
            .where(epochs.c.gateway == g, epochs.c.camera == c, epochs.c.epoch == e)
            .values(next_cseq=bindparam("n"))
        )
        held_of = (held.c.gateway == g) & (held.c.camera == c) & (held.c.epoch == e)
        self.any_held = select(held.c.cseq).where(held_of).limit(1)
        self.held_rows = (
            select(held.c.cseq, held.c.item_id, held.c.message).where(held_of).order_by(held.c.cseq)
        )
        self.unhold = delete(held).where(held_of, held.c.cseq == bindparam("n"))
        self.hold = db.insert(held).on_conflict_do_nothing()


class Store:
    """The receiver's storage and decisions. Several servers may share one database."""

    def __init__(
        self,
        db: Database,
        media: MediaStore,
        root: str = protocol.DEFAULT_ROOT,
        limits: Limits | None = None,
        register: Register | None = None,
    ) -> None:
        self.db = db
        self.media = media
        self.root = root
        self.limits = limits or Limits()
        self.register = register or Register(db)
        self.stats: dict[str, int] = defaultdict(int)
        self.clips = ClipAssembler(db, media, self.stats)
        self._q = Statements(db)
        self._epochs: dict[EpochKey, EpochState] = {}
        self.on_stored: Callable[[Replies], None] | None = None

    @classmethod
    def open_directory(
        cls, out_dir: str | os.PathLike[str], root: str = protocol.DEFAULT_ROOT
    ) -> Store:
        """The embedded layout of ``centre receive --out DIR``: ``DIR/receiver.db`` (SQLite)
        and the media tree under ``DIR``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        db = Database(f"sqlite:///{out.resolve() / 'receiver.db'}")
        upgrade(db)
        return cls(db, MediaStore(out), root)

    def close(self) -> None:
        self.db.dispose()

    # -- batches -------------------------------------------------------------------------------

    def handle_batch(self, batch: list[Incoming]) -> Replies:
        """Store a batch; raises StoreUnavailable when the database is unreachable."""
        parsed = [parse(m, self.root, self.limits) for m in batch]
        try:
            return self._transaction(parsed)
        except Exception as exc:
            if self.db.unavailable(exc):
                raise StoreUnavailable(str(exc).splitlines()[0]) from exc
            if len(parsed) == 1:
                self._failed(parsed[0], exc)
                return Replies()
        # isolate the message that breaks the transaction: the others are stored without it
        replies = Replies()
        for item in parsed:
            try:
                replies.merge(self._transaction([item]))
            except Exception as exc:
                if self.db.unavailable(exc):
                    raise StoreUnavailable(str(exc).splitlines()[0]) from exc
                self._failed(item, exc)
        return replies

    def _failed(self, item: Parsed, exc: Exception) -> None:
        self.stats["failed"] += 1
        log.error(
            "receiver: could not store %s from gateway %s (%s: %s); not acknowledged, the "
            "gateway will send it again",
            type(item).__name__.lower(),
            getattr(item, "gateway", "?"),
            type(exc).__name__,
            str(exc).splitlines()[0][:300] if str(exc) else "",
            exc_info=not isinstance(exc, OSError),
        )

    def _transaction(self, parsed: list[Parsed]) -> Replies:
        for attempt in range(5):
            replies = Replies()
            stats_before = dict(self.stats)
            try:
                with self.db.write() as conn:
                    self._epochs = self._prelock(conn, parsed)
                    for item in parsed:
                        self._apply(conn, item, replies)
                    self._save_epochs(conn)
                    # last: the register's head is locked from the first append to the commit,
                    # and every server's commands append to it too
                    for entry in replies.register:
                        self.register.append(conn, entry)
                if self.on_stored is not None:
                    self.on_stored(replies)
                return replies
            except Exception as exc:
                self.stats.clear()
                self.stats.update(stats_before)
                if not self.db.retryable(exc) or attempt == 4:
                    raise
                log.info("receiver: transaction conflict (%s); trying again", type(exc).__name__)
        raise AssertionError("unreachable")

    def _prelock(self, conn: Connection, parsed: list[Parsed]) -> dict[EpochKey, EpochState]:
        """Lock every camera's epoch row of the batch in one global order (no deadlock between
        servers), creating rows for new epochs; their state is kept for the transaction (one
        read and one write per camera, not per event)."""
        keys = sorted(
            {
                (p.gateway, p.camera, p.epoch)
                for p in parsed
                if isinstance(p, Event) and p.epoch is not None
            }
        )
        state: dict[EpochKey, EpochState] = {}
        for key in keys:
            gw, camera, epoch = key
            created = self.db.insert_new(
                conn, epochs, gateway=gw, camera=camera, epoch=epoch, next_cseq=1,
                first_seen=iso_ms(),
            )  # fmt: skip
            params = {"g": gw, "c": camera, "e": epoch}
            next_cseq = int(conn.execute(self._q.lock_epoch, params).scalar_one())
            if created:
                self._new_epoch(conn, gw, camera, epoch)
            has_held = conn.execute(self._q.any_held, params).first() is not None
            state[key] = EpochState(next_cseq, has_held)
        return state

    def _save_epochs(self, conn: Connection) -> None:
        for (gw, camera, epoch), st in self._epochs.items():
            if st.dirty:
                conn.execute(
                    self._q.save_epoch, {"g": gw, "c": camera, "e": epoch, "n": st.next_cseq}
                )

    def _apply(self, conn: Connection, item: Parsed, replies: Replies) -> None:
        if isinstance(item, Event):
            self._event(conn, item, replies)
        elif isinstance(item, Snapshot):
            self._snapshot(conn, item, replies)
        elif isinstance(item, Chunk):
            replies.add(item.gateway, self.clips.on_chunk(conn, item))
        elif isinstance(item, Manifest):
            replies.add(item.gateway, self.clips.on_manifest(conn, item))
        elif isinstance(item, Audit):
            self._audit(conn, item, replies)
        elif isinstance(item, Status):
            self._status(conn, item, replies)
        elif isinstance(item, CameraStatus):
            self._camera_status(conn, item, replies)
        else:
            self._refused(conn, item, replies)

    # -- refusals ------------------------------------------------------------------------------

    def _refused(self, conn: Connection, r: Refusal, replies: Replies) -> None:
        self.stats["bad_messages"] += 1
        if r.ack:
            self.stats["refused"] += 1
        log.warning(
            "receiver: refused a message from gateway %s on %s: %s; %s",
            r.gateway or "?",
            r.topic,
            r.reason,
            "acknowledged and dropped (sending it again would not help)"
            if r.ack
            else "dropped (nothing to acknowledge)",
        )
        conn.execute(
            refused.insert().values(
                gateway=r.gateway,
                item_id=r.item_id,
                topic=r.topic,
                reason=r.reason[:1000],
                received=iso_ms(),
            )
        )
        if r.gateway is None or r.item_id is None:
            return
        clip = protocol.parse_clip_item_id(r.item_id)
        if clip is not None and clip[1] is None:  # a manifest: its chunks are refused too
            self.clips.refuse(conn, r, clip[0])
        replies.ids[r.gateway].append(r.item_id)

    # -- gateway and camera status -------------------------------------------------------------

    def _status(self, conn: Connection, s: Status, replies: Replies) -> None:
        """Keep the last status; when a gateway is (again) online for us — a retained status
        delivered as we subscribe, or a change to online — ask it to re-send what it has in
        flight: what it published while no receiver of the group listened may be gone
        (Mosquitto 2.0 does not keep $share subscriptions across its restarts)."""
        row = conn.execute(
            select(gateways.c.state, gateways.c.since).where(gateways.c.gateway == s.gateway)
        ).first()
        now = iso_ms()
        changed = row is None or row[0] != s.state
        since = now if changed else (row[1] if row else now)
        values = dict(state=s.state, site=s.site, status=s.message, since=since, updated=now)
        conn.execute(
            self.db.insert(gateways)
            .values(gateway=s.gateway, **values)
            .on_conflict_do_update(index_elements=["gateway"], set_=values)
        )
        replies.kinds.add("status")
        if s.state == "online" and (s.retain or changed):
            replies.resync.add(s.gateway)

    def _camera_status(self, conn: Connection, s: CameraStatus, replies: Replies) -> None:
        values = dict(state=s.state, status=s.message, updated=iso_ms())
        conn.execute(
            self.db.insert(camera_status)
            .values(gateway=s.gateway, camera=s.camera, **values)
            .on_conflict_do_update(index_elements=["gateway", "camera"], set_=values)
        )
        replies.kinds.add("status")

    # -- events --------------------------------------------------------------------------------

    def _event(self, conn: Connection, e: Event, replies: Replies) -> None:
        if e.epoch is None or e.cseq is None:
            self._store_event(conn, e)  # arrival order
            replies.ids[e.gateway].append(e.item_id)
            return
        st = self._epochs[(e.gateway, e.camera, e.epoch)]
        if e.cseq < st.next_cseq:
            self.stats["duplicates"] += 1
        elif e.cseq > st.next_cseq:
            conn.execute(
                self._q.hold,
                {"gateway": e.gateway, "camera": e.camera, "epoch": e.epoch, "cseq": e.cseq,
                 "item_id": e.item_id, "message": e.message},
            )  # fmt: skip
            st.has_held = True
            self.stats["held"] += 1
        else:
            self._store_event(conn, e)
            st.next_cseq = e.cseq + 1
            if st.has_held:
                st.next_cseq = self._release_held(conn, e.gateway, e.camera, e.epoch, st.next_cseq)
            st.dirty = True
        replies.ids[e.gateway].append(e.item_id)
        replies.kinds.add("event")

    def _new_epoch(self, conn: Connection, gw: str, camera: str, epoch: str) -> None:
        """A new outbox database on that gateway: whatever the old one still had waiting behind
        a gap will never come; store it now rather than hold it forever."""
        for old in conn.execute(
            select(epochs.c.epoch).where(
                epochs.c.gateway == gw, epochs.c.camera == camera, epochs.c.epoch != epoch
            )
        ).scalars():
            left = conn.execute(
                select(func.count())
                .select_from(held)
                .where(held.c.gateway == gw, held.c.camera == camera, held.c.epoch == old)
            ).scalar_one()
            if left:
                log.warning(
                    "receiver: gateway %s camera %s started a new outbox; %d event(s) "
                    "of the previous one stored despite a gap",
                    gw,
                    camera,
                    left,
                )
                self._release_held(conn, gw, camera, old, None)

    def _release_held(
        self, conn: Connection, gw: str, camera: str, epoch: str, next_cseq: int | None
    ) -> int:
        """Store held events that follow ``next_cseq`` without a gap (all of them when None);
        returns the next expected cseq."""
        rows = conn.execute(self._q.held_rows, {"g": gw, "c": camera, "e": epoch}).all()
        expected = next_cseq
        for cseq, iid, message in rows:
            if expected is not None and cseq != expected:
                break
            body = json.loads(message)
            self._store_event(conn, event_from_body(gw, camera, iid, body, epoch, cseq))
            conn.execute(self._q.unhold, {"g": gw, "c": camera, "e": epoch, "n": cseq})
            expected = cseq + 1
        return expected if expected is not None else 1

    def _store_event(self, conn: Connection, e: Event) -> None:
        inserted = self.db.insert_new(
            conn,
            events,
            gateway=e.gateway,
            item_id=e.item_id,
            camera=e.camera,
            event_id=e.event_id,
            seq=e.seq,
            type=e.type,
            started=e.started,
            ended=e.ended,
            score=e.score,
            labels=e.labels,
            epoch=e.epoch,
            cseq=e.cseq,
            received=iso_ms(),
            message=e.message,
        )
        self.stats["events" if inserted else "duplicates"] += 1

    # -- snapshots and audit -------------------------------------------------------------------

    def _snapshot(self, conn: Connection, s: Snapshot, replies: Replies) -> None:
        exists = conn.execute(
            select(snapshots.c.sha256).where(
                snapshots.c.gateway == s.gateway, snapshots.c.item_id == s.item_id
            )
        ).first()
        if exists:
            self.stats["duplicates"] += 1
            replies.ids[s.gateway].append(s.item_id)
            return
        sha, path = self.media.put(s.payload, "jpg")  # OSError (disk full): not acknowledged
        inserted = self.db.insert_new(
            conn,
            snapshots,
            gateway=s.gateway,
            item_id=s.item_id,
            event_id=s.event_id,
            request_id=s.request_id,
            camera=s.camera,
            sha256=sha,
            path=str(path),
            bytes=len(s.payload),
            taken=s.taken,
            received=iso_ms(),
        )
        self.stats["snapshots" if inserted else "duplicates"] += 1
        replies.ids[s.gateway].append(s.item_id)
        replies.kinds.add("snapshot")

    def _audit(self, conn: Connection, a: Audit, replies: Replies) -> None:
        inserted = self.db.insert_new(
            conn,
            gateway_audit,
            gateway=a.gateway,
            item_id=a.item_id,
            action=a.action,
            request_id=a.request_id,
            session=a.session,
            operator=a.operator,
            camera=a.camera,
            time=a.time,
            received=iso_ms(),
            message=a.message,
        )
        if inserted:
            self.stats["audit"] += 1
            replies.register.append(
                Entry(
                    action=a.action or "gateway.audit",
                    source="gateway",
                    operator=a.operator,
                    gateway=a.gateway,
                    camera=a.camera,
                    command_id=a.request_id,
                    session_id=a.session,
                    outcome=a.outcome,
                    detail=a.body,
                ),
            )
            replies.kinds.add("audit")
        else:
            self.stats["duplicates"] += 1
        replies.ids[a.gateway].append(a.item_id)
