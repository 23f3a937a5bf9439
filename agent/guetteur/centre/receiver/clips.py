"""Clips at the centre: a manifest, then chunks, reassembled into one verified file.

Chunks wait in the database (``clip_chunks``) until the last one arrives, so any server sharing
the database can finish a clip whose chunks were split between servers by the shared
subscription. Each chunk is checked against the manifest (size, sha256) on arrival; the clip is
then written into the content-addressed media tree and kept only if its sha256 matches the
manifest, and the manifest is acknowledged (the gateway deletes the clip). A bad chunk or clip is
asked for again (``resend``). A manifest beyond the receiver's limits is refused and acknowledged
(``refused``): its chunks are acknowledged as they come, and dropped.

Runs inside the store's transaction; the clip's row is locked first (``FOR UPDATE``) so two
servers never assemble one clip twice or both miss its last chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

from guetteur.centre.db.engine import Database
from guetteur.centre.db.schema import clip_chunks, clips
from guetteur.centre.media import MediaStore
from guetteur.centre.receiver.parse import Chunk, Manifest, Refusal
from guetteur.timeutil import iso_ms
from guetteur.uplink import protocol

log = logging.getLogger(__name__)


@dataclass
class ClipReply:
    """What to tell the gateway once the transaction is committed."""

    ack: list[str] = field(default_factory=list)
    resend: list[str] = field(default_factory=list)


class ClipAssembler:
    def __init__(self, db: Database, media: MediaStore, stats: dict[str, int]) -> None:
        self.db = db
        self.media = media
        self.stats = stats

    def _row(self, conn: Connection, gw: str, clip_id: str) -> tuple[str, str] | None:
        row = conn.execute(
            self.db.lock(select(clips.c.state, clips.c.manifest)).where(
                clips.c.gateway == gw, clips.c.clip_id == clip_id
            )
        ).first()
        return (str(row[0]), str(row[1])) if row else None

    def refuse(self, conn: Connection, refusal: Refusal, clip_id: str) -> None:
        """A manifest refused for good: remember it, so its chunks are acknowledged and dropped."""
        assert refusal.gateway is not None
        conn.execute(
            self.db.insert(clips)
            .values(
                gateway=refusal.gateway,
                clip_id=clip_id,
                manifest=json.dumps({"refused": refusal.reason}),
                state="refused",
                received=iso_ms(),
            )
            .on_conflict_do_nothing()
        )
        conn.execute(
            delete(clip_chunks).where(
                clip_chunks.c.gateway == refusal.gateway, clip_chunks.c.clip_id == clip_id
            )
        )

    def on_manifest(self, conn: Connection, m: Manifest) -> ClipReply:
        reply = ClipReply()
        manifest_id = protocol.clip_manifest_item_id(m.clip_id)
        row = self._row(conn, m.gateway, m.clip_id)
        if row and row[0] in ("complete", "refused"):
            self.stats["duplicates"] += 1
            reply.ack.append(manifest_id)
            return reply
        repeat = row is not None
        if row and row[1] != m.text:
            log.warning(
                "receiver: clip %s from gateway %s has a new manifest; restarting it",
                m.clip_id,
                m.gateway,
            )
            self._drop_chunks(conn, m.gateway, m.clip_id)
            repeat = False
        values = dict(
            manifest=m.text,
            state="receiving",
            size=m.size,
            sha256=m.sha256,
            count=m.count,
            chunk_size=m.chunk_size,
            camera=m.camera,
            event_id=m.event_id,
            request_id=m.request_id,
            started=m.started,
            ended=m.ended,
        )
        conn.execute(
            self.db.insert(clips)
            .values(gateway=m.gateway, clip_id=m.clip_id, received=iso_ms(), **values)
            .on_conflict_do_update(index_elements=["gateway", "clip_id"], set_=values)
        )
        missing = self._missing(conn, m.gateway, m.clip_id, m.count)
        if not missing:
            self._assemble(conn, m, reply)
        elif repeat:
            # the gateway sent the manifest again: it still waits for the clip; ask for what we
            # lack (chunks it may believe delivered)
            reply.resend.extend(protocol.clip_chunk_item_id(m.clip_id, n) for n in missing)
        return reply

    def on_chunk(self, conn: Connection, c: Chunk) -> ClipReply:
        reply = ClipReply()
        row = self._row(conn, c.gateway, c.clip_id)
        if row is None:
            self.stats["early_chunks"] += 1
            log.info(
                "receiver: chunk %d of clip %s from gateway %s came before its manifest; "
                "not acknowledged, it will come again",
                c.n,
                c.clip_id,
                c.gateway,
            )
            return reply
        if row[0] in ("complete", "refused"):
            self.stats["duplicates" if row[0] == "complete" else "refused"] += 1
            reply.ack.append(c.item_id)
            return reply
        m = json.loads(row[1])
        size, chunk_size, count = int(m["size"]), int(m["chunk_size"]), int(m["count"])
        expected = min(chunk_size, size - c.n * chunk_size) if c.n < count else -1
        problem = None
        if c.n >= count:
            problem = f"chunk {c.n} is beyond the {count} chunks of the manifest"
        elif len(c.payload) != expected:
            problem = f"chunk {c.n} has {len(c.payload)} bytes, expected {expected}"
        elif m.get("chunk_sha256") and (
            hashlib.sha256(c.payload).hexdigest() != m["chunk_sha256"][c.n]
        ):
            problem = f"chunk {c.n} sha256 does not match the manifest"
        if problem:
            self.stats["bad_chunks"] += 1
            log.warning(
                "receiver: clip %s from gateway %s: %s; asking for it again",
                c.clip_id,
                c.gateway,
                problem,
            )
            if c.n < count:
                reply.resend.append(c.item_id)
            return reply
        conn.execute(
            self.db.insert(clip_chunks)
            .values(gateway=c.gateway, clip_id=c.clip_id, n=c.n, data=c.payload)
            .on_conflict_do_nothing()
        )
        reply.ack.append(c.item_id)
        if not self._missing(conn, c.gateway, c.clip_id, count):
            self._assemble(conn, _manifest_of(c.gateway, c.clip_id, m, row[1]), reply)
        return reply

    def _missing(self, conn: Connection, gw: str, clip_id: str, count: int) -> list[int]:
        """Chunk numbers not yet received; ``count`` is bounded by ``Limits.max_chunks``."""
        have_count = conn.execute(
            select(func.count())
            .select_from(clip_chunks)
            .where(clip_chunks.c.gateway == gw, clip_chunks.c.clip_id == clip_id)
        ).scalar_one()
        if have_count >= count:
            return []
        have = set(
            conn.execute(
                select(clip_chunks.c.n).where(
                    clip_chunks.c.gateway == gw, clip_chunks.c.clip_id == clip_id
                )
            ).scalars()
        )
        return [n for n in range(count) if n not in have]

    def _chunks(self, conn: Connection, gw: str, clip_id: str, count: int) -> Iterator[bytes]:
        for n in range(count):  # one at a time: a clip may be bigger than memory
            yield conn.execute(
                select(clip_chunks.c.data).where(
                    clip_chunks.c.gateway == gw,
                    clip_chunks.c.clip_id == clip_id,
                    clip_chunks.c.n == n,
                )
            ).scalar_one()

    def _assemble(self, conn: Connection, m: Manifest, reply: ClipReply) -> None:
        path = self.media.put_parts(
            self._chunks(conn, m.gateway, m.clip_id, m.count), "mp4", m.sha256
        )
        if path is None:
            self.stats["bad_clips"] += 1
            log.error(
                "receiver: clip %s from gateway %s: sha256 of the reassembled file does not "
                "match the manifest; discarded, asking for every chunk again",
                m.clip_id,
                m.gateway,
            )
            self._drop_chunks(conn, m.gateway, m.clip_id)
            reply.resend.extend(protocol.clip_chunk_item_id(m.clip_id, n) for n in range(m.count))
            return
        conn.execute(
            clips.update()
            .where(clips.c.gateway == m.gateway, clips.c.clip_id == m.clip_id)
            .values(state="complete", path=str(path), received=iso_ms())
        )
        self._drop_chunks(conn, m.gateway, m.clip_id)
        self.stats["clips"] += 1
        log.info(
            "receiver: clip %s from gateway %s complete (%d bytes, sha256 verified)",
            m.clip_id,
            m.gateway,
            m.size,
        )
        reply.ack.append(protocol.clip_manifest_item_id(m.clip_id))

    def _drop_chunks(self, conn: Connection, gw: str, clip_id: str) -> None:
        conn.execute(
            delete(clip_chunks).where(clip_chunks.c.gateway == gw, clip_chunks.c.clip_id == clip_id)
        )


def _manifest_of(gw: str, clip_id: str, m: dict[str, object], text: str) -> Manifest:
    chunk_sha = m.get("chunk_sha256")
    return Manifest(
        gateway=gw,
        clip_id=clip_id,
        size=int(m["size"]),  # type: ignore[call-overload]
        sha256=str(m["sha256"]),
        chunk_size=int(m["chunk_size"]),  # type: ignore[call-overload]
        count=int(m["count"]),  # type: ignore[call-overload]
        chunk_sha256=tuple(chunk_sha) if isinstance(chunk_sha, list) else None,
        camera=None,
        event_id=None,
        request_id=None,
        started=None,
        ended=None,
        text=text,
    )
