"""Extractions for the police: the exact recorded bytes of a camera's range, with a signed manifest.

A supervisor asks (legal reference — the requisition number — and the requesting officer); the
server registers the request, sends the gateway a signed ``export`` (the gateway cuts the range
from its ring by remuxing, never re-encoding, and uploads it as a clip whose ``request_id`` is
the command id), and once the receiver holds that clip, sha256-verified, ``complete`` copies its
bytes into the extraction's folder with ``manifest.json``: camera, range, gateway, clip, the
sha256 and size of every file, who extracted it, when, signed with the centre's Ed25519 key
(``keys.sign_document``). ``guetteur centre verify FOLDER`` checks it offline: the signature,
then every file. The request, the result and any judicial hold are in the register.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select, update

from guetteur.centre.accounts import Principal
from guetteur.centre.commands import Commander, CommandFailed
from guetteur.centre.config import ExtractionsConfig
from guetteur.centre.db.engine import Database
from guetteur.centre.db.schema import clips, extractions
from guetteur.centre.keys import sign_document, verify_document
from guetteur.centre.media import write_atomic
from guetteur.centre.register import Entry, Register
from guetteur.timeutil import iso_ms, parse_iso
from guetteur.uplink.protocol import valid_id

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "guetteur.extraction/1"


@dataclass(frozen=True)
class ExtractionRequest:
    gateway: str
    camera: str
    start: str  # ISO 8601
    end: str
    requisition: str
    officer: str


def check_request(req: ExtractionRequest) -> None:
    """ValueError with a sentence for a request that cannot be sent."""
    if not valid_id(req.gateway) or not valid_id(req.camera):
        raise ValueError("gateway and camera: 1-64 letters, digits, '-' or '_'")
    if not req.requisition.strip() or len(req.requisition) > 256:
        raise ValueError("requisition: the legal reference (requisition number) is required")
    if not req.officer.strip() or len(req.officer) > 256:
        raise ValueError("officer: the requesting officer is required")
    try:
        t0, t1 = parse_iso(req.start), parse_iso(req.end)
    except ValueError:
        raise ValueError("from/to: ISO 8601 times, e.g. 2026-11-23T10:15:00Z") from None
    if t1 <= t0:
        raise ValueError("to must be after from")


class Extractions:
    def __init__(
        self,
        db: Database,
        register: Register,
        commander: Commander,
        key: Ed25519PrivateKey,
        centre_id: str,
        config: ExtractionsConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.register = register
        self.commander = commander
        self.key = key
        self.centre_id = centre_id
        self.config = config
        self.dir = Path(config.dir)
        self.clock = clock

    def request(self, who: Principal, req: ExtractionRequest) -> dict[str, Any]:
        """Register, ask the gateway; the row (state ``requested``, or ``failed`` with why)."""
        check_request(req)
        ext_id = "ext-" + uuid.uuid4().hex[:20]
        now = iso_ms(self.clock())
        self.register.record(
            Entry(
                "export.request",
                operator=who.username,
                role=who.role,
                gateway=req.gateway,
                camera=req.camera,
                session_id=ext_id,
                detail={
                    "extraction": ext_id,
                    "requisition": req.requisition,
                    "officer": req.officer,
                    "from": req.start,
                    "to": req.end,
                },
            )
        )
        row: dict[str, Any] = {
            "id": ext_id,
            "requisition": req.requisition,
            "officer": req.officer,
            "requested_by": who.username,
            "gateway": req.gateway,
            "camera": req.camera,
            "range_from": iso_ms(parse_iso(req.start)),
            "range_to": iso_ms(parse_iso(req.end)),
            "command_id": "",
            "state": "requested",
            "created": now,
            "hold": False,
        }
        failure: CommandFailed | None = None
        try:
            reply = self.commander.send(
                who,
                req.gateway,
                "export",
                {"camera": req.camera, "from": row["range_from"], "to": row["range_to"]},
                camera=req.camera,
                session_id=ext_id,
            )
            row["clip_id"] = reply.get("clip_id")
            row["command_id"] = str(reply.get("id") or "")
        except CommandFailed as exc:
            row["state"], row["error"], failure = "failed", f"{exc.code}: {exc.message}", exc
        with self.db.write() as conn:
            conn.execute(extractions.insert().values(**row))
        if failure is not None:
            raise failure
        return self.get(ext_id)

    def get(self, ext_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            row = (
                conn.execute(select(extractions).where(extractions.c.id == ext_id))
                .mappings()
                .first()
            )
        if row is None:
            raise CommandFailed("not_found", f"Extraction inconnue / no extraction {ext_id}", 404)
        return dict(row)

    def list(self, limit: int = 200) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(extractions).order_by(extractions.c.created.desc()).limit(limit)
            ).mappings()
            return [dict(r) for r in rows]

    def set_hold(self, who: Principal, ext_id: str, hold: bool, reason: str) -> dict[str, Any]:
        row = self.get(ext_id)
        with self.db.write() as conn:
            conn.execute(
                update(extractions)
                .where(extractions.c.id == ext_id)
                .values(hold=hold, hold_reason=reason[:1000] if hold else None)
            )
            self.register.append(
                conn,
                Entry(
                    "export.hold" if hold else "export.release",
                    operator=who.username,
                    role=who.role,
                    gateway=row["gateway"],
                    camera=row["camera"],
                    session_id=ext_id,
                    detail={
                        "extraction": ext_id,
                        "reason": reason,
                        "requisition": row["requisition"],
                    },
                ),
            )
        return self.get(ext_id)

    # -- completion (the server's background task) -------------------------------------------------

    def complete_ready(self) -> int:
        """Finish every requested extraction whose clip has arrived; fail those past the
        timeout. Returns how many changed state."""
        changed = 0
        deadline = iso_ms(self.clock() - self.config.timeout_minutes * 60)
        with self.db.read() as conn:
            pending = (
                conn.execute(
                    select(
                        extractions,
                        clips.c.state.label("clip_state"),
                        clips.c.path,
                        clips.c.sha256,
                        clips.c.size,
                        clips.c.started,
                        clips.c.ended,
                    )
                    .outerjoin(
                        clips,
                        (clips.c.gateway == extractions.c.gateway)
                        & (clips.c.clip_id == extractions.c.clip_id),
                    )
                    .where(extractions.c.state == "requested")
                )
                .mappings()
                .all()
            )
        for row in pending:
            try:
                if row["clip_state"] == "complete":
                    self._finish(dict(row))
                    changed += 1
                elif row["created"] < deadline:
                    self._fail(dict(row), "the gateway's video did not arrive in time")
                    changed += 1
            except Exception as exc:  # one bad extraction must not block the others
                log.exception("extraction %s could not be completed", row["id"])
                self._fail(dict(row), f"{type(exc).__name__}: {exc}")
                changed += 1
        return changed

    def _finish(self, row: dict[str, Any]) -> None:
        folder = self.dir / row["id"]
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{row['camera']}_{row['range_from']}_{row['range_to']}.mp4".replace(":", "-")
        target = folder / name
        source = Path(row["path"])
        with open(source, "rb") as src:  # the exact bytes the gateway recorded, copied
            write_atomic(target, iter(lambda: src.read(1 << 20), b""))
        digest = _sha256(target)
        if digest != row["sha256"]:
            raise RuntimeError(f"the copy of clip {row['clip_id']} does not match its sha256")
        manifest = sign_document(
            {
                "format": FORMAT,
                "extraction": row["id"],
                "centre": self.centre_id,
                "requisition": row["requisition"],
                "officer": row["officer"],
                "extracted_by": row["requested_by"],
                "created": iso_ms(self.clock()),
                "requested": row["created"],
                "gateway": row["gateway"],
                "camera": row["camera"],
                "range": {"from": row["range_from"], "to": row["range_to"]},
                "recorded": {"from": row["started"], "to": row["ended"]},
                "clip_id": row["clip_id"],
                "command_id": row["command_id"],
                "encoding": "as recorded by the camera (remuxed, never re-encoded)",
                "files": [{"name": name, "size": target.stat().st_size, "sha256": digest}],
            },
            self.key,
        )
        text = json.dumps(manifest, indent=2, ensure_ascii=False).encode()
        write_atomic(folder / MANIFEST, [text])
        manifest_sha = hashlib.sha256(text).hexdigest()
        with self.db.write() as conn:
            conn.execute(
                update(extractions)
                .where(extractions.c.id == row["id"])
                .values(
                    state="ready",
                    folder=str(folder),
                    manifest_sha256=manifest_sha,
                    completed=iso_ms(self.clock()),
                )
            )
            self.register.append(
                conn,
                Entry(
                    "export.ready",
                    operator=row["requested_by"],
                    gateway=row["gateway"],
                    camera=row["camera"],
                    command_id=row["command_id"] or None,
                    session_id=row["id"],
                    outcome="ok",
                    detail={"manifest_sha256": manifest_sha, "files": manifest["files"]},
                ),
            )
        log.info("extraction %s ready in %s", row["id"], folder)

    def _fail(self, row: dict[str, Any], why: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(extractions)
                .where(extractions.c.id == row["id"])
                .values(state="failed", error=why[:1000], completed=iso_ms(self.clock()))
            )
            self.register.append(
                conn,
                Entry(
                    "export.failed",
                    operator=row["requested_by"],
                    gateway=row["gateway"],
                    camera=row["camera"],
                    session_id=row["id"],
                    outcome="failed",
                    detail={"reason": why},
                ),
            )
        log.error("extraction %s failed: %s", row["id"], why)

    def delete_folder(self, row: dict[str, Any]) -> None:
        if row.get("folder"):
            shutil.rmtree(row["folder"], ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ExtractionCheck:
    ok: bool
    lines: list[str]


def verify_extraction(folder: Path, trusted: Ed25519PublicKey | None = None) -> ExtractionCheck:
    """Offline: the manifest's signature, then the size and sha256 of every file it lists."""
    lines: list[str] = []
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        return ExtractionCheck(False, [f"{folder / MANIFEST}: cannot be read ({exc})"])
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return ExtractionCheck(False, [f"{folder / MANIFEST}: not a Guetteur extraction manifest"])
    valid, kid, sentence = verify_document(manifest, trusted)
    lines.append(f"manifest: {sentence}")
    ok = valid
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        return ExtractionCheck(False, [*lines, "manifest lists no file"])
    for entry in files:
        name = str(entry.get("name", "")) if isinstance(entry, dict) else ""
        path = folder / name
        if not name or "/" in name or name.startswith("."):
            lines.append(f"{name!r}: not a file name")
            ok = False
        elif not path.is_file():
            lines.append(f"{name}: missing")
            ok = False
        elif path.stat().st_size != entry.get("size") or _sha256(path) != entry.get("sha256"):
            lines.append(f"{name}: ALTERED (size or sha256 differs from the manifest)")
            ok = False
        else:
            lines.append(f"{name}: sha256 {entry['sha256']} verified")
    if ok and trusted is None:
        lines.append(f"compare key id {kid} with the centre's published key (or pass --key)")
    return ExtractionCheck(ok, lines)
