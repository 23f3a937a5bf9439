"""Every message builder of uplink.messages against its JSON Schema in docs/schemas: what the
gateway publishes obeys the contract the centre is written against."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from guetteur.analytics.events import EventTracker
from guetteur.config import EventsConfig, validate_config
from guetteur.runtime.gateway import Gateway
from guetteur.sources.base import CameraStatus
from guetteur.uplink import messages, protocol
from guetteur.uplink.command_auth import AuthCode
from guetteur.uplink.protocol import ErrorCode
from guetteur.uplink.publish import ClipFile
from tests.contract import ContractError, validate, validate_payload
from tests.test_events import Det, run

WALL = 1_790_000_000.0


def test_gateway_and_camera_status_of_a_real_gateway(tmp_path: Path) -> None:
    config = validate_config(
        {
            "gateway_id": "gw-msg",
            "site": "Place du Marché",
            "data_dir": str(tmp_path / "data"),
            "mqtt": {"url": "mqtt://127.0.0.1:1"},  # never connected: nothing is started
            "cameras": [{"id": "street", "url": "test:quiet"}],
        }
    )
    gateway = Gateway(config)
    try:
        assert gateway.recorder is not None and gateway.outbox is not None
        for state in ("online", "offline"):
            status = validate_payload(
                "gateway-status", protocol.dumps(gateway.status_message(state))
            )
            assert status["state"] == state and status["cameras"] == {"street": "starting"}
        camera = validate_payload(
            "camera-status", protocol.dumps(gateway.workers["street"].status_message())
        )
        assert camera["camera"] == "street" and camera["connected"] is False
    finally:
        gateway.stop()


def test_offline_status_will_and_farewell() -> None:
    will = validate_payload(
        "gateway-status",
        protocol.dumps(messages.gateway_offline("gw1", "link lost", stamped=False)),
    )
    assert will == {"v": 1, "state": "offline", "gateway": "gw1", "reason": "link lost"}
    farewell = validate_payload(
        "gateway-status", protocol.dumps(messages.gateway_offline("gw1", "stopped"))
    )
    assert farewell["reason"] == "stopped" and farewell["time"].endswith("Z")


def test_camera_status_of_a_streaming_and_a_failed_source() -> None:
    streaming = CameraStatus(
        camera="dome",
        connected=True,
        state="streaming",
        fps=25.0,
        width=1920,
        height=1080,
        codec="h264",
        since=WALL,
        extra={"transport": "tcp", "reconnects": 2, "nested": {"dropped": True}},
    )
    msg = messages.camera_status(
        streaming, frames_analysed=120, frames_dropped=3, detector_skipped=0
    )
    body = validate_payload("camera-status", protocol.dumps(msg))
    assert body["resolution"] == "1920x1080" and body["transport"] == "tcp"
    assert "nested" not in body  # only scalar extras ride along
    failed = CameraStatus(camera="dome", state="failed", last_error="401 Unauthorized")
    msg = messages.camera_status(failed, frames_analysed=0, frames_dropped=0, detector_skipped=None)
    body = validate_payload("camera-status", protocol.dumps(msg))
    assert body["resolution"] is None and body["since"] is None


def test_events_from_the_tracker_start_update_end() -> None:
    cfg = EventsConfig(start_frames=3, end_quiet_s=2.0, update_interval_s=1.0)
    tracker = EventTracker("cam1", cfg, clock_synced=lambda: True)
    updates = run(
        tracker, [(0, 5, False), (5, 8, True), (8, 14, False)], {5.6: [Det("person", 0.8123)]}
    )
    assert {u.kind for u in updates} == {"start", "update", "end"}
    for update in updates:
        body = validate_payload("event", protocol.dumps(messages.event(update, "gw1")))
        assert body["id"] == update.message_id and body["type"] == update.kind
    assert body["end"] is not None and body["labels"] == [{"label": "person", "score": 0.812}]
    assert body["reason"] == "quiet" and body["part"] == 1 and body["previous_event_id"] is None


def test_parts_of_a_split_event_and_an_end_after_a_restart() -> None:
    cfg = EventsConfig(start_frames=1, end_quiet_s=1.0, max_duration_s=2.0)
    updates = run(EventTracker("cam1", cfg), [(0, 5, True), (5, 7, False)])
    bodies = [validate_payload("event", protocol.dumps(messages.event(u, "gw1"))) for u in updates]
    second = [b for b in bodies if b["part"] == 2]
    assert second and second[0]["previous_event_id"] == bodies[0]["event_id"]
    assert [b["reason"] for b in bodies if b["type"] == "end"] == ["split", "split", "quiet"]
    restart = dataclasses.replace(updates[-1], reason="restart")
    assert validate_payload("event", protocol.dumps(messages.event(restart, "gw1")))["reason"] == (
        "restart"
    )
    with pytest.raises(ContractError):
        validate("event", {**bodies[-1], "reason": "bored"})


def test_snapshot_properties_of_an_event_and_of_a_command() -> None:
    of_event = messages.event_snapshot_properties("ev1:0:snap", "ev1", WALL)
    validate("snapshot-properties", of_event)
    assert of_event["event_id"] == "ev1"
    on_demand = messages.requested_snapshot_properties("snap-1", "r42", WALL)
    validate("snapshot-properties", on_demand)
    assert "event_id" not in on_demand and on_demand["request_id"] == "r42"
    validate("snapshot-properties", messages.requested_snapshot_properties("snap-2", None, WALL))


def test_audit_record_leaves_out_what_is_unknown() -> None:
    fields = {"camera": "dome", "operator": None, "client_id": "centre-1", "outcome": "ok"}
    body = validate_payload(
        "audit", protocol.dumps(messages.audit_record("a1", "gw1", "ptz.move", fields))
    )
    assert body["action"] == "ptz.move" and "operator" not in body and body["outcome"] == "ok"


@pytest.mark.parametrize("event_id", ["ev1", None], ids=["event-clip", "export"])
def test_clip_manifest_is_what_the_receiver_accepts(event_id: str | None) -> None:
    chunks = [b"a" * 10, b"b" * 10, b"c" * 5]
    clip = ClipFile(
        clip_id="evt-ev1" if event_id else "exp-1",
        path="/nowhere.mp4",
        camera="street",
        event_id=event_id,
        request_id=None if event_id else "r1",
        start="2026-11-23T10:00:00.000Z",
        end="2026-11-23T10:00:04.000Z",
    )
    manifest = messages.clip_manifest(
        clip,
        protocol.clip_manifest_item_id(clip.clip_id),
        "gw1",
        size=25,
        sha256=hashlib.sha256(b"".join(chunks)).hexdigest(),
        chunk_size=10,
        chunk_sha256=[hashlib.sha256(c).hexdigest() for c in chunks],
    )
    payload = protocol.dumps(manifest)
    validate_payload("clip-manifest", payload)
    assert protocol.parse_clip_manifest(payload)["count"] == 3


def test_replies_ok_and_every_error_code() -> None:
    ok = validate_payload("reply", protocol.dumps(messages.reply_ok("r1", session="s1")))
    assert ok == {"v": 1, "ok": True, "id": "r1", "session": "s1"}
    codes = [v for k, v in vars(ErrorCode).items() if k.isupper()]
    codes += [v for k, v in vars(AuthCode).items() if k.isupper()]  # refused signatures
    assert len(codes) >= 25
    for code in codes:
        validate_payload("reply", protocol.dumps(messages.reply_error(None, code, "a sentence")))
