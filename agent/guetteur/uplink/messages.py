"""Every message the gateway publishes, built in one place.

The JSON bodies (gateway and camera status, events, audit records, clip manifests, command
replies) and the MQTT 5 user properties of binary items (snapshots), each matching its JSON
Schema in docs/schemas (tests/test_messages.py checks every builder against it). Builders only
shape what the caller gathered; ``protocol.dumps`` adds ``"v": 1`` when the body is serialised.
The live stream's per-fragment properties stay with the live session that numbers them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from guetteur.timeutil import iso_ms
from guetteur.uplink.publish import ClipFile

if TYPE_CHECKING:  # the types of what is described; their modules are not needed at run time
    from guetteur.analytics.events import EventUpdate
    from guetteur.sources.base import CameraStatus

# -- status (retained) ---------------------------------------------------------------------------


def gateway_status(
    *,
    gateway: str,
    state: str,
    site: str | None,
    version: str,
    uptime_s: float,
    clock_synced: bool,
    cameras: Mapping[str, str],
    disk_free_bytes: int,
    disk_total_bytes: int,
    recording: dict[str, Any] | None,
    outbox: dict[str, Any] | None,
    warnings: list[str],
) -> dict[str, Any]:
    """``{root}/{gw}/status``: what the centre's supervision shows for one gateway."""
    return {
        "state": state,
        "gateway": gateway,
        "site": site,
        "version": version,
        "time": iso_ms(),
        "uptime_s": round(uptime_s, 1),
        "clock_synced": clock_synced,
        "cameras": dict(cameras),
        "disk": {"free_bytes": disk_free_bytes, "total_bytes": disk_total_bytes},
        "recording": recording,
        "outbox": outbox,
        "warnings": warnings,
    }


def gateway_offline(gateway: str, reason: str, *, stamped: bool = True) -> dict[str, Any]:
    """The offline status: the Last Will (``stamped=False``: the broker holds it from the
    connection on, so a time would say when it was set, not when the gateway vanished) and the
    farewell of a clean stop, which the runtime completes with its last full status."""
    body: dict[str, Any] = {"state": "offline", "gateway": gateway, "reason": reason}
    if stamped:
        body["time"] = iso_ms()
    return body


def camera_status(
    status: CameraStatus,
    *,
    frames_analysed: int,
    frames_dropped: int,
    detector_skipped: int | None,
) -> dict[str, Any]:
    """``{root}/{gw}/cam/{cam}/status``: the source's state plus the analysis counters; the
    source's scalar extras (e.g. its transport) ride along."""
    s = status
    return {
        "camera": s.camera,
        "connected": s.connected,
        "state": s.state,
        "fps": s.fps,
        "resolution": f"{s.width}x{s.height}" if s.width and s.height else None,
        "codec": s.codec,
        "last_error": s.last_error,
        "since": iso_ms(s.since) if s.since else None,
        "frames_analysed": frames_analysed,
        "frames_dropped": frames_dropped,
        "detector_skipped": detector_skipped,
        "time": iso_ms(),
        **{k: v for k, v in s.extra.items() if isinstance(v, str | int | float | bool)},
    }


# -- events and snapshots ------------------------------------------------------------------------


def event(update: EventUpdate, gateway: str) -> dict[str, Any]:
    """``{root}/{gw}/cam/{cam}/event``: one start, update or end of an event (an end says why;
    the parts of a long event are linked by ``previous_event_id``)."""
    return {
        "id": update.message_id,
        "event_id": update.event_id,
        "seq": update.seq,
        "type": update.kind,
        "gateway": gateway,
        "camera": update.camera,
        "start": iso_ms(update.start_wall),
        "end": iso_ms(update.end_wall) if update.end_wall is not None else None,
        "time": iso_ms(),
        "boxes": [b.as_list() for b in update.boxes],
        "labels": [
            {"label": k, "score": round(v, 3)}
            for k, v in sorted(update.labels.items(), key=lambda kv: -kv[1])
        ],
        "score": round(update.peak_score, 4),
        "clock_synced": update.clock_synced,
        "category": update.category,
        "rule": update.rule,
        "preset": update.preset,
        "snapshot_withheld": update.snapshot_withheld,
        "part": update.part,
        "previous_event_id": update.previous_event_id,
        "reason": update.reason,
    }


def event_snapshot_properties(item_id: str, event_id: str, wallclock: float) -> dict[str, str]:
    """User properties of the JPEG illustrating an event (``cam/{cam}/snapshot``)."""
    return {"event_id": event_id, "item_id": item_id, "time": iso_ms(wallclock)}


def requested_snapshot_properties(
    item_id: str, request_id: str | None, wallclock: float
) -> dict[str, str]:
    """User properties of a snapshot taken on a ``snapshot`` command."""
    return {"item_id": item_id, "request_id": request_id or "", "time": iso_ms(wallclock)}


# -- audit ---------------------------------------------------------------------------------------


def audit_record(
    record_id: str, gateway: str, action: str, fields: Mapping[str, Any]
) -> dict[str, Any]:
    """``{root}/{gw}/audit``: who did what (``ptz.move``, ``live.start``...); None fields are
    left out."""
    body = {"id": record_id, "time": iso_ms(), "gateway": gateway, "action": action}
    body.update({k: v for k, v in fields.items() if v is not None})
    return body


# -- clips ---------------------------------------------------------------------------------------


def clip_manifest(
    clip: ClipFile,
    item_id: str,
    gateway: str,
    size: int,
    sha256: str,
    chunk_size: int,
    chunk_sha256: list[str],
) -> dict[str, Any]:
    """``{root}/{gw}/clip/{clip_id}/manifest``: what the chunks that follow add up to."""
    return {
        "id": item_id,
        "clip_id": clip.clip_id,
        "gateway": gateway,
        "camera": clip.camera,
        "event_id": clip.event_id,
        "request_id": clip.request_id,
        "start": clip.start,
        "end": clip.end,
        "content_type": "video/mp4",
        "size": size,
        "sha256": sha256,
        "chunk_size": chunk_size,
        "count": len(chunk_sha256),
        "chunk_sha256": chunk_sha256,
        "time": iso_ms(),
    }


# -- command replies -----------------------------------------------------------------------------


def reply_ok(request_id: str | None, **fields: Any) -> dict[str, Any]:
    """The one reply to a command that was carried out, with the verb's result fields."""
    return {"ok": True, "id": request_id, **fields}


def reply_error(request_id: str | None, code: str, message: str) -> dict[str, Any]:
    """The one reply to a refused command: a ``protocol.ErrorCode`` and a sentence."""
    return {"ok": False, "id": request_id, "error": {"code": code, "message": message}}
