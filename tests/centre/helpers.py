"""Small builders shared by the centre's tests: a migrated store on a database URL, messages."""

from __future__ import annotations

import hashlib
from pathlib import Path

from guetteur.centre.db.engine import Database
from guetteur.centre.db.migrate import upgrade
from guetteur.centre.media import MediaStore
from guetteur.centre.receiver.parse import Incoming
from guetteur.centre.receiver.store import Store
from guetteur.uplink import protocol

ROOT = protocol.DEFAULT_ROOT


def make_store(url: str, media: Path) -> Store:
    db = Database(url)
    upgrade(db)
    return Store(db, MediaStore(media))


def msg(topic: str, payload: bytes, gateway: str = "gw1", **props: str) -> Incoming:
    return Incoming(f"{ROOT}/{gateway}/{topic}", payload, props, None, qos=1)


def event_msg(n: int, cseq: int | None, epoch: str = "E1", camera: str = "cam1") -> Incoming:
    body = protocol.dumps(
        {"id": f"e{n}:0", "event_id": f"e{n}", "type": "start", "seq": 0, "score": 0.5}
    )
    props = {"item_id": f"e{n}:0"}
    if cseq is not None:
        props |= {"epoch": epoch, "cseq": str(cseq)}
    return msg(f"cam/{camera}/event", body, **props)


def manifest_for(clip_id: str, body: bytes, chunk: int) -> dict[str, object]:
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    return {
        "id": protocol.clip_manifest_item_id(clip_id),
        "clip_id": clip_id,
        "camera": "cam1",
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "chunk_size": chunk,
        "count": len(chunks),
        "chunk_sha256": [hashlib.sha256(c).hexdigest() for c in chunks],
    }
