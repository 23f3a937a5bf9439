"""What a gateway sent, checked before anything is stored: pure, bounded, never raises.

A gateway is a device in the street: its messages may be corrupt, hostile or simply from a newer
release. ``parse`` turns one MQTT message into one typed value, or a ``Refusal`` saying why not:

- every declared size is bounded (``Limits``): a 184-byte clip manifest declaring 10^10 chunks
  once made the receiver allocate a list of 10^10 numbers and die; now it is refused;
- JSON is parsed only below a size and a nesting depth; every field that reaches a database
  column is checked for type, length and printable text (PostgreSQL refuses NUL characters and
  lone surrogates: such a value would fail the whole batch, again at every redelivery);
- a refusal that names an item id is acknowledged (``ack``): sending it again would not help, and
  an unacknowledged poison message would come back forever.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from guetteur.uplink import protocol

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on what one gateway message may declare or carry."""

    max_json_bytes: int = 256 * 1024  # an event, status, audit record or clip manifest
    max_json_depth: int = 32
    max_snapshot_bytes: int = 16 * MiB
    max_chunk_bytes: int = 16 * MiB
    max_clip_bytes: int = 4096 * MiB
    max_chunks: int = 16384


@dataclass
class Incoming:
    """One MQTT message as the network thread hands it over."""

    topic: str
    payload: bytes
    props: dict[str, str]
    content_type: str | None
    mid: int = 0
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True)
class Refusal:
    """Not stored. ``ack``: acknowledge ``item_id`` anyway (permanently bad, drop it at the
    gateway); else nothing is acknowledged (unexpected topic, no id to acknowledge)."""

    gateway: str | None
    item_id: str | None
    topic: str
    reason: str
    ack: bool


@dataclass(frozen=True)
class Status:
    gateway: str
    state: str | None
    site: str | None
    message: str
    retain: bool


@dataclass(frozen=True)
class CameraStatus:
    gateway: str
    camera: str
    state: str | None
    message: str


@dataclass(frozen=True)
class Event:
    gateway: str
    camera: str
    item_id: str
    message: str  # the body as compact ASCII JSON
    event_id: str | None
    seq: int | None
    type: str | None
    started: str | None
    ended: str | None
    score: float | None
    labels: str | None
    epoch: str | None = None
    cseq: int | None = None


@dataclass(frozen=True)
class Snapshot:
    gateway: str
    camera: str
    item_id: str
    event_id: str | None
    request_id: str | None
    taken: str | None
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class Audit:
    gateway: str
    item_id: str
    action: str | None
    request_id: str | None
    session: str | None
    operator: str | None
    camera: str | None
    time: str | None
    outcome: str | None
    message: str
    body: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Manifest:
    gateway: str
    clip_id: str
    size: int
    sha256: str
    chunk_size: int
    count: int
    chunk_sha256: tuple[str, ...] | None
    camera: str | None
    event_id: str | None
    request_id: str | None
    started: str | None
    ended: str | None
    text: str  # canonical JSON: a different text for one clip id means a new manifest


@dataclass(frozen=True)
class Chunk:
    gateway: str
    clip_id: str
    n: int
    item_id: str
    payload: bytes = field(repr=False)


Parsed = Status | CameraStatus | Event | Snapshot | Audit | Manifest | Chunk | Refusal


class Bad(ValueError):
    """A message that cannot be stored; the sentence goes to the log and the refused table."""


# -- field checks --------------------------------------------------------------------------------


def text(value: Any, limit: int, what: str, required: bool = False) -> str | None:
    """A string a database column can hold: at most ``limit`` characters, printable."""
    if value is None:
        if required:
            raise Bad(f"{what} is missing")
        return None
    if not isinstance(value, str):
        raise Bad(f"{what} must be a string")
    if len(value) > limit:
        raise Bad(f"{what} is longer than {limit} characters")
    if not value.isprintable():
        raise Bad(f"{what} holds control characters or unpaired surrogates")
    if required and not value:
        raise Bad(f"{what} is empty")
    return value


def item_id(value: Any, what: str = "item id") -> str:
    out = text(value, 200, what, required=True)
    assert out is not None
    return out


def iso_time(value: Any, what: str) -> str | None:
    """An ISO time as the gateway wrote it (kept as text), or None when absent or unusable."""
    if not isinstance(value, str) or len(value) > 40 or not value.isprintable():
        return None
    return value


def integer(value: Any, what: str, lo: int = 0, hi: int = 2**62) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise Bad(f"{what} must be an integer in {lo}..{hi}")
    return value


def _depth_exceeds(payload: bytes, limit: int) -> bool:
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def json_object(payload: bytes, limits: Limits) -> dict[str, Any]:
    """A version-1 JSON object within the size and depth limits."""
    if len(payload) > limits.max_json_bytes:
        raise Bad(f"{len(payload)} bytes of JSON, more than {limits.max_json_bytes}")
    if _depth_exceeds(payload, limits.max_json_depth):
        raise Bad(f"JSON nested deeper than {limits.max_json_depth} levels")
    try:
        return protocol.loads(payload)
    except (ValueError, RecursionError) as exc:  # MessageError, huge integers
        raise Bad(str(exc)[:300]) from None


def compact(body: dict[str, Any]) -> str:
    """The body as stored: compact JSON, ASCII only (no NUL or surrogate reaches the database)."""
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except ValueError:
        raise Bad("JSON holds NaN or Infinity") from None


# -- per kind ------------------------------------------------------------------------------------


def parse(msg: Incoming, root: str, limits: Limits) -> Parsed:
    """One message → what to store, or a Refusal. Never raises."""
    try:
        return _parse(msg, root, limits)
    except Bad as exc:
        return _refusal(msg, root, str(exc))
    except Exception as exc:  # a bug must not stop the receiver: refuse, say what
        return _refusal(msg, root, f"unexpected {type(exc).__name__}: {str(exc)[:200]}")


def _refusal(msg: Incoming, root: str, reason: str) -> Refusal:
    parts = protocol.parse_topic(root, msg.topic) or {}
    gw = parts.get("gateway")
    gateway = gw if gw and protocol.valid_id(gw) else None
    ack_id: str | None = None
    if gateway is not None and parts.get("kind") in ("event", "snapshot", "audit", "clip"):
        candidate = msg.props.get(protocol.PROP_ITEM_ID)
        if parts.get("kind") == "clip" and protocol.valid_id(parts.get("clip_id", "")):
            part = parts.get("part", "")
            if part == protocol.CLIP_MANIFEST_PART:
                candidate = protocol.clip_manifest_item_id(parts["clip_id"])
            elif part.isdigit() and len(part) <= 9:
                candidate = candidate or protocol.clip_chunk_item_id(parts["clip_id"], int(part))
        if isinstance(candidate, str) and 0 < len(candidate) <= 200 and candidate.isprintable():
            ack_id = candidate
    topic = msg.topic if msg.topic.isprintable() else msg.topic.encode(errors="replace").hex()
    return Refusal(gateway, ack_id, topic[:512], reason, ack=ack_id is not None)


def _parse(msg: Incoming, root: str, limits: Limits) -> Parsed:
    parts = protocol.parse_topic(root, msg.topic)
    if not parts or not protocol.valid_id(parts["gateway"]):
        raise Bad("unexpected topic")
    gw, kind, camera = parts["gateway"], parts.get("kind"), parts.get("camera")
    if camera is not None and not protocol.valid_id(camera):
        raise Bad("invalid camera id in the topic")
    if kind == "status" and camera is None:
        return _status(gw, msg, limits)
    if kind == "status" and camera:
        body = json_object(msg.payload, limits)
        state = text(body.get("state"), 32, "state")
        return CameraStatus(gw, camera, state, compact(body))
    if kind == "event" and camera:
        return _event(gw, camera, msg, limits)
    if kind == "snapshot" and camera:
        return _snapshot(gw, camera, msg, limits)
    if kind == "audit" and camera is None:
        return _audit(gw, msg, limits)
    if kind == "clip":
        clip_id = parts["clip_id"]
        if not protocol.valid_id(clip_id):
            raise Bad("invalid clip id in the topic")
        part = parts["part"]
        if part == protocol.CLIP_MANIFEST_PART:
            return _manifest(gw, clip_id, msg, limits)
        if part.isdigit() and len(part) <= 9:
            n = int(part)
            if n >= limits.max_chunks:
                raise Bad(f"chunk number {n} beyond the limit of {limits.max_chunks} chunks")
            if len(msg.payload) > limits.max_chunk_bytes:
                raise Bad(f"chunk of {len(msg.payload)} bytes, more than {limits.max_chunk_bytes}")
            default = protocol.clip_chunk_item_id(clip_id, n)
            declared = msg.props.get(protocol.PROP_ITEM_ID)
            return Chunk(gw, clip_id, n, item_id(declared or default), msg.payload)
        raise Bad(f"unknown clip part {part[:20]!r}")
    raise Bad(f"unexpected topic kind {str(kind)[:40]!r}")


def _status(gw: str, msg: Incoming, limits: Limits) -> Status:
    body = json_object(msg.payload, limits)
    state = text(body.get("state"), 32, "state")
    site = body.get("site")
    site_text = site[:256] if isinstance(site, str) and site.isprintable() else None
    return Status(gw, state, site_text, compact(body), msg.retain)


def _event(gw: str, camera: str, msg: Incoming, limits: Limits) -> Event:
    body = json_object(msg.payload, limits)
    iid = item_id(msg.props.get(protocol.PROP_ITEM_ID) or body.get("id"), "event id")
    epoch = msg.props.get(protocol.PROP_EPOCH)
    cseq_text = msg.props.get(protocol.PROP_CSEQ)
    ordered = epoch is not None and cseq_text is not None and cseq_text.isdigit()
    if ordered and len(cseq_text or "") > 15:
        raise Bad("cseq out of range")
    return event_from_body(
        gw,
        camera,
        iid,
        body,
        text(epoch, 64, "epoch") if ordered else None,
        int(cseq_text) if ordered and cseq_text else None,
    )


def event_from_body(
    gw: str,
    camera: str,
    iid: str,
    body: dict[str, Any],
    epoch: str | None,
    cseq: int | None,
) -> Event:
    """An event's columns from its JSON body (also for events released from ``held``)."""
    seq = body.get("seq")
    score = body.get("score")
    labels = body.get("labels")
    label_text = None
    if isinstance(labels, list):
        names = [
            x["label"]
            for x in labels
            if isinstance(x, dict) and isinstance(x.get("label"), str) and x["label"].isprintable()
        ]
        label_text = ",".join(names)[:256] or None
    return Event(
        gateway=gw,
        camera=camera,
        item_id=iid,
        message=compact(body),
        event_id=text(body.get("event_id"), 200, "event_id"),
        seq=seq
        if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**31
        else None,
        type=text(body.get("type"), 16, "type"),
        started=iso_time(body.get("start"), "start"),
        ended=iso_time(body.get("end"), "end"),
        score=float(score)
        if isinstance(score, int | float) and not isinstance(score, bool) and math.isfinite(score)
        else None,
        labels=label_text,
        epoch=epoch,
        cseq=cseq,
    )


def _snapshot(gw: str, camera: str, msg: Incoming, limits: Limits) -> Snapshot:
    declared = msg.props.get(protocol.PROP_ITEM_ID)
    if not msg.payload:
        raise Bad("empty snapshot")
    if len(msg.payload) > limits.max_snapshot_bytes:
        raise Bad(f"snapshot of {len(msg.payload)} bytes, more than {limits.max_snapshot_bytes}")
    if declared is None:
        declared = "sha-" + hashlib.sha256(msg.payload).hexdigest()[:24]
    return Snapshot(
        gateway=gw,
        camera=camera,
        item_id=item_id(declared),
        event_id=text(msg.props.get("event_id"), 200, "event_id") or None,
        request_id=text(msg.props.get("request_id"), 200, "request_id") or None,
        taken=iso_time(msg.props.get("time"), "time"),
        payload=msg.payload,
    )


def _audit(gw: str, msg: Incoming, limits: Limits) -> Audit:
    body = json_object(msg.payload, limits)
    iid = item_id(msg.props.get(protocol.PROP_ITEM_ID) or body.get("id"), "audit record id")

    def field_text(key: str, limit: int) -> str | None:
        value = body.get(key)
        return (
            value
            if isinstance(value, str) and len(value) <= limit and value.isprintable()
            else None
        )

    return Audit(
        gateway=gw,
        item_id=iid,
        action=field_text("action", 64),
        request_id=field_text("request_id", 200),
        session=field_text("session", 200),
        operator=field_text("operator", 128),
        camera=field_text("camera", 64),
        time=iso_time(body.get("time"), "time"),
        outcome=field_text("outcome", 64),
        message=compact(body),
        body=body,
    )


def _manifest(gw: str, clip_id: str, msg: Incoming, limits: Limits) -> Manifest:
    body = json_object(msg.payload, limits)
    # the bounds first: nothing below may allocate in proportion to a declared number
    for key, limit in (
        ("size", limits.max_clip_bytes),
        ("chunk_size", limits.max_chunk_bytes),
        ("count", limits.max_chunks),
    ):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            raise Bad(f"clip manifest declares {key} {value}, more than the limit of {limit}")
    try:
        manifest = protocol.parse_clip_manifest(msg.payload)
    except (ValueError, RecursionError) as exc:
        raise Bad(str(exc)[:300]) from None
    if manifest["clip_id"] != clip_id:
        raise Bad(f"manifest on clip/{clip_id} names clip {str(manifest['clip_id'])[:64]}")
    count = integer(manifest["count"], "count", 0, limits.max_chunks)
    chunk_sha = manifest.get("chunk_sha256")
    return Manifest(
        gateway=gw,
        clip_id=clip_id,
        size=integer(manifest["size"], "size", 0, limits.max_clip_bytes),
        sha256=manifest["sha256"],
        chunk_size=integer(manifest["chunk_size"], "chunk_size", 1, limits.max_chunk_bytes),
        count=count,
        chunk_sha256=tuple(chunk_sha) if chunk_sha is not None else None,
        camera=text(manifest.get("camera"), 64, "camera"),
        event_id=text(manifest.get("event_id"), 200, "event_id"),
        request_id=text(manifest.get("request_id"), 200, "request_id"),
        started=iso_time(manifest.get("start"), "start"),
        ended=iso_time(manifest.get("end"), "end"),
        text=json.dumps(manifest, separators=(",", ":"), sort_keys=True, ensure_ascii=True),
    )
