"""End to end: RTSP camera → decode → motion → event with snapshot → real Mosquitto → centre.

Three cameras on one gateway at once: a person walks across one from t=5 s to t=8 s, the other has
a global lighting step, the third is unreachable. The first yields exactly one event starting
within 0.5 s of t=5 s, the second none, the third says why in its retained status while the
others keep working. And one camera worker alone, on nothing but its callbacks.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from guetteur.centre.client import CentreClient
from guetteur.config import validate_config
from guetteur.media.types import EncodedPacket
from guetteur.runtime.camera_worker import CameraWorker
from guetteur.runtime.gateway import Gateway
from guetteur.sources import open_source
from guetteur.timeutil import parse_iso
from guetteur.uplink import protocol
from guetteur.uplink.mqttutil import user_properties
from tests.contract import validate
from tests.fixtures.broker import MosquittoBroker, free_port
from tests.fixtures.media import MediaFactory
from tests.fixtures.rtsp import RtspServerFactory

RUN_S = 14.0


@pytest.mark.slow
def test_motion_event_from_rtsp_camera_reaches_the_centre(
    broker: MosquittoBroker, rtsp_server: RtspServerFactory, media: MediaFactory, tmp_path: Path
) -> None:
    walk = media.scenario_clip("walk", width=640, height=360, fps=25, start=5, end=8, duration=16)
    lighting = media.scenario_clip("lighting", width=640, height=360, fps=25, duration=16)
    walk_cam = rtsp_server(walk, loop=False)
    light_cam = rtsp_server(lighting, loop=False)
    dead_port = free_port()
    config = validate_config(
        {
            "gateway_id": "gw-test",
            "data_dir": str(tmp_path / "data"),
            "mqtt": {"url": broker.url},
            "outbox": {"enabled": False},
            "recording": {"enabled": False},
            "cameras": [
                {
                    "id": "walk",
                    "url": walk_cam.url,
                    # a home's window in the top-left corner: black in every snapshot
                    "privacy_masks": [[[0.0, 0.0], [0.25, 0.0], [0.25, 0.25], [0.0, 0.25]]],
                },
                {"id": "light", "url": light_cam.url},
                {"id": "dead", "url": f"rtsp://127.0.0.1:{dead_port}/cam", "open_timeout_s": 1},
            ],
        }
    )
    events: list[dict[str, Any]] = []
    snapshots: list[tuple[str, bytes, str | None]] = []
    statuses: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def on_event(msg: mqtt.MQTTMessage) -> None:
        with lock:
            events.append(protocol.loads(bytes(msg.payload)))

    def on_snapshot(msg: mqtt.MQTTMessage) -> None:
        with lock:
            snapshots.append(
                (
                    user_properties(msg).get("event_id", ""),
                    bytes(msg.payload),
                    getattr(msg.properties, "ContentType", None),
                )
            )

    def on_status(msg: mqtt.MQTTMessage) -> None:
        with lock:
            statuses[msg.topic.split("/")[-2]] = json.loads(msg.payload)

    first_packet: dict[str, float] = {}

    def first(camera: str) -> Any:
        def consume(packet: EncodedPacket) -> None:
            first_packet.setdefault(camera, packet.wallclock - packet.pts_s)

        return consume

    with CentreClient(broker.url, client_id="test-centre") as centre:
        centre.subscribe("guetteur/v1/gw-test/cam/+/event", on_event)
        centre.subscribe("guetteur/v1/gw-test/cam/+/snapshot", on_snapshot)
        centre.subscribe("guetteur/v1/gw-test/cam/+/status", on_status)
        gateway = Gateway(config)
        for cam in ("walk", "light"):
            gateway.workers[cam].packet_consumers.append(first(cam))
        gateway.start()
        try:
            time.sleep(RUN_S)
            states = {cid: w.status.state for cid, w in gateway.workers.items()}
        finally:
            gateway.stop()
        time.sleep(0.5)

    with lock:
        walk_events = [e for e in events if e["camera"] == "walk"]
        light_events = [e for e in events if e["camera"] == "light"]
    starts = [e for e in walk_events if e["type"] == "start"]
    assert len(starts) == 1, walk_events
    assert len({e["event_id"] for e in walk_events}) == 1
    onset = parse_iso(starts[0]["start"]) - first_packet["walk"]
    assert abs(onset - 5.0) <= 0.5, f"event started {onset:.2f} s into the stream"
    assert [e["type"] for e in walk_events][-1] == "end"
    assert light_events == [], light_events
    # the snapshot of the event, as a JPEG with its event id
    jpegs = [
        jpeg
        for eid, jpeg, ctype in snapshots
        if eid == starts[0]["event_id"] and ctype == "image/jpeg"
    ]
    assert jpegs, [(eid, len(j), c) for eid, j, c in snapshots]
    picture = cv2.imdecode(np.frombuffer(jpegs[-1], np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None
    # rendered from the full-resolution frame (640x360), not the 320 px analysed one
    assert picture.shape == (360, 640, 3)
    assert picture[:90, :160].mean() < 8  # privacy mask blacked out
    assert picture[180:, 320:].mean() > 30  # the street is there
    # the unreachable camera says why; the others streamed meanwhile
    assert states == {"walk": "streaming", "light": "streaming", "dead": "reconnecting"}
    dead = statuses["dead"]
    assert dead["connected"] is False and dead["last_error"], dead
    assert str(dead_port) in dead["last_error"]
    assert statuses["walk"]["codec"] == "h264" and statuses["walk"]["resolution"] == "640x360"


def test_camera_worker_needs_nothing_but_its_callbacks() -> None:
    config = validate_config(
        {
            "gateway_id": "gw-alone",
            "mqtt": {"url": "mqtt://127.0.0.1:1"},
            "events": {"end_quiet_s": 1.0},
            "cameras": [{"id": "street", "url": "test:walk?start=1&end=2.5&duration=30&gop=1"}],
        }
    )
    camera = config.cameras[0]
    updates: list[Any] = []
    statuses: list[dict[str, Any]] = []
    packets: list[EncodedPacket] = []
    worker = CameraWorker(
        camera,
        open_source(camera),
        config.events,
        publish_event=updates.append,
        publish_status=lambda w: statuses.append(w.status_message()),
    )
    worker.packet_consumers.append(packets.append)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not any(u.kind == "end" for u in updates) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        worker.stop()
    kinds = [u.kind for u in updates]
    assert kinds[0] == "start" and kinds[-1] == "end", kinds
    assert updates[0].snapshot is not None and updates[0].snapshot[:2] == b"\xff\xd8"
    assert packets and worker.frames_analysed > 0
    states = [status["state"] for status in statuses]
    assert states[0] == "streaming" and states[-1] == "stopped", states  # changes only
    for status in statuses:
        validate("camera-status", {"v": 1, **status})
