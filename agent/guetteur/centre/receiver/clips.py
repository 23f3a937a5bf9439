"""Clips at the centre: a manifest, then chunks, reassembled into one verified file.

Each chunk is checked against the manifest (its size, its sha256) and kept in
``partial/{gw}/{clip_id}/{n}``; once every chunk is there the clip is reassembled into
``clips/{gw}/{clip_id}.mp4`` and kept only if its sha256 matches the manifest; the manifest is
acknowledged then, which lets the gateway delete the clip. A bad chunk or clip is asked for again
(``resend``). Runs inside the Store's transaction, on its database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guetteur.timeutil import iso_ms
from guetteur.uplink import protocol

log = logging.getLogger(__name__)


@dataclass
class ClipReply:
    """What to tell the gateway once the transaction is committed."""

    ack: list[str] = field(default_factory=list)
    resend: list[str] = field(default_factory=list)


class ClipAssembler:
    def __init__(self, db: sqlite3.Connection, out: Path, stats: dict[str, int]) -> None:
        self._db = db
        self._out = out
        self._stats = stats

    def on_manifest(
        self, gw: str, clip_id: str, payload: bytes, after_commit: list[Path]
    ) -> ClipReply:
        """A clip's manifest; ``after_commit`` collects folders to delete once committed."""
        reply = ClipReply()
        self._manifest(gw, clip_id, payload, reply, after_commit)
        return reply

    def on_chunk(
        self,
        gw: str,
        clip_id: str,
        n: int,
        payload: bytes,
        item_id: str | None,
        after_commit: list[Path],
    ) -> ClipReply:
        """Chunk ``n`` of a clip (``item_id``: the id it was sent with, if any)."""
        reply = ClipReply()
        self._chunk(gw, clip_id, n, payload, item_id, reply, after_commit)
        return reply

    def _partial_dir(self, gw: str, clip_id: str) -> Path:
        return self._out / "partial" / gw / clip_id

    def _manifest(
        self, gw: str, clip_id: str, payload: bytes, reply: ClipReply, after_commit: list[Path]
    ) -> None:
        manifest_id = protocol.clip_manifest_item_id(clip_id)
        try:
            manifest = protocol.parse_clip_manifest(payload)
        except protocol.MessageError as exc:
            self._stats["bad_messages"] += 1
            log.warning(
                "receiver: bad manifest for clip %s from gateway %s (%s); ignored", clip_id, gw, exc
            )
            return
        if manifest["clip_id"] != clip_id:
            self._stats["bad_messages"] += 1
            log.warning(
                "receiver: manifest on clip/%s names clip %s; ignored", clip_id, manifest["clip_id"]
            )
            return
        row = self._db.execute(
            "SELECT state, manifest FROM clips WHERE gateway=? AND clip_id=?", (gw, clip_id)
        ).fetchone()
        if row and row[0] == "complete":
            self._stats["duplicates"] += 1
            reply.ack.append(manifest_id)
            return
        text = json.dumps(manifest, separators=(",", ":"), sort_keys=True)
        repeat = row is not None
        if row and row[1] != text:
            # a different manifest for the same clip id: start again from scratch
            log.warning(
                "receiver: clip %s from gateway %s has a new manifest; restarting it", clip_id, gw
            )
            self._db.execute("DELETE FROM chunks WHERE gateway=? AND clip_id=?", (gw, clip_id))
            after_commit.append(self._partial_dir(gw, clip_id))
            repeat = False
        self._db.execute(
            "INSERT INTO clips (gateway, clip_id, manifest, state, size, sha256, camera, "
            "event_id, received) VALUES (?, ?, ?, 'receiving', ?, ?, ?, ?, ?) "
            "ON CONFLICT (gateway, clip_id) DO UPDATE SET manifest=excluded.manifest",
            (
                gw,
                clip_id,
                text,
                manifest["size"],
                manifest["sha256"],
                manifest.get("camera"),
                manifest.get("event_id"),
                iso_ms(),
            ),
        )
        missing = self._missing_chunks(gw, clip_id, int(manifest["count"]))
        if not missing:
            self._assemble(gw, clip_id, manifest, reply, after_commit)
        elif repeat:
            # the gateway sent the manifest again: it still waits for the clip; ask for what we
            # lack (chunks it may believe delivered)
            reply.resend.extend(protocol.clip_chunk_item_id(clip_id, n) for n in missing)

    def _missing_chunks(self, gw: str, clip_id: str, count: int) -> list[int]:
        have = {
            r[0]
            for r in self._db.execute(
                "SELECT n FROM chunks WHERE gateway=? AND clip_id=?", (gw, clip_id)
            )
        }
        return [n for n in range(count) if n not in have]

    def _chunk(
        self,
        gw: str,
        clip_id: str,
        n: int,
        payload: bytes,
        item_id: str | None,
        reply: ClipReply,
        after_commit: list[Path],
    ) -> None:
        chunk_id = item_id or protocol.clip_chunk_item_id(clip_id, n)
        row = self._db.execute(
            "SELECT state, manifest FROM clips WHERE gateway=? AND clip_id=?", (gw, clip_id)
        ).fetchone()
        if row is None:
            self._stats["early_chunks"] += 1
            log.info(
                "receiver: chunk %d of clip %s from gateway %s came before its manifest; "
                "not acknowledged, it will come again",
                n,
                clip_id,
                gw,
            )
            return
        if row[0] == "complete":
            self._stats["duplicates"] += 1
            reply.ack.append(chunk_id)
            return
        manifest = json.loads(row[1])
        size, chunk_size, count = manifest["size"], manifest["chunk_size"], manifest["count"]
        expected = min(chunk_size, size - n * chunk_size) if n < count else -1
        problem = None
        if n >= count:
            problem = f"chunk {n} is beyond the {count} chunks of the manifest"
        elif len(payload) != expected:
            problem = f"chunk {n} has {len(payload)} bytes, expected {expected}"
        elif manifest.get("chunk_sha256") and (
            hashlib.sha256(payload).hexdigest() != manifest["chunk_sha256"][n]
        ):
            problem = f"chunk {n} sha256 does not match the manifest"
        if problem:
            self._stats["bad_chunks"] += 1
            log.warning(
                "receiver: clip %s from gateway %s: %s; asking for it again", clip_id, gw, problem
            )
            if n < count:
                reply.resend.append(chunk_id)
            return
        folder = self._partial_dir(gw, clip_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / str(n), payload)
        self._db.execute(
            "INSERT OR IGNORE INTO chunks (gateway, clip_id, n) VALUES (?, ?, ?)", (gw, clip_id, n)
        )
        reply.ack.append(chunk_id)
        if not self._missing_chunks(gw, clip_id, count):
            self._assemble(gw, clip_id, manifest, reply, after_commit)

    def _assemble(
        self,
        gw: str,
        clip_id: str,
        manifest: dict[str, Any],
        reply: ClipReply,
        after_commit: list[Path],
    ) -> None:
        folder = self._partial_dir(gw, clip_id)
        target_dir = self._out / "clips" / gw
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{clip_id}.mp4"
        tmp = target.with_suffix(".mp4.tmp")
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                for n in range(int(manifest["count"])):
                    data = (folder / str(n)).read_bytes()
                    digest.update(data)
                    out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning(
                "receiver: clip %s from gateway %s: a chunk file is unreadable (%s); "
                "asking for the clip again",
                clip_id,
                gw,
                exc,
            )
            self._restart_clip(gw, clip_id, manifest, reply, after_commit)
            return
        if digest.hexdigest() != manifest["sha256"]:
            tmp.unlink(missing_ok=True)
            self._stats["bad_clips"] += 1
            log.error(
                "receiver: clip %s from gateway %s: sha256 of the reassembled file does not "
                "match the manifest; discarded, asking for every chunk again",
                clip_id,
                gw,
            )
            self._restart_clip(gw, clip_id, manifest, reply, after_commit)
            return
        os.replace(tmp, target)
        self._db.execute(
            "UPDATE clips SET state='complete', path=?, received=? WHERE gateway=? AND clip_id=?",
            (str(target), iso_ms(), gw, clip_id),
        )
        self._db.execute("DELETE FROM chunks WHERE gateway=? AND clip_id=?", (gw, clip_id))
        after_commit.append(folder)
        self._stats["clips"] += 1
        log.info(
            "receiver: clip %s from gateway %s complete (%d bytes, sha256 verified)",
            clip_id,
            gw,
            manifest["size"],
        )
        reply.ack.append(protocol.clip_manifest_item_id(clip_id))

    def _restart_clip(
        self,
        gw: str,
        clip_id: str,
        manifest: dict[str, Any],
        reply: ClipReply,
        after_commit: list[Path],
    ) -> None:
        self._db.execute("DELETE FROM chunks WHERE gateway=? AND clip_id=?", (gw, clip_id))
        after_commit.append(self._partial_dir(gw, clip_id))
        reply.resend.extend(
            protocol.clip_chunk_item_id(clip_id, n) for n in range(int(manifest["count"]))
        )


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file whole or not at all (fsync, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
