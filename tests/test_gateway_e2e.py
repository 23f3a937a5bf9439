"""The whole gateway as shipped, end to end on a real Mosquitto: camera → motion event → outbox →
centre receiver (event, snapshot and the event's clip cut from the ring buffer, sha256 verified),
an export requested over MQTT, and `guetteur run` stopping cleanly on SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
import yaml

from guetteur.centre.client import CentreClient
from guetteur.centre.receiver.mqtt import Receiver
from guetteur.config import validate_config
from guetteur.runtime.gateway import Gateway
from guetteur.timeutil import iso_ms, parse_iso
from guetteur.uplink import protocol
from tests.centre.harness import PASSWORD, Centre
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.signing import CentreKey
from tests.fixtures.waiting import wait_for


def query(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql, args))


def clip_seconds(path: Path) -> tuple[float, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.time for f in container.decode(stream) if f.time is not None]
    return (max(frames) - min(frames), len(frames))


def guetteur(*argv: str) -> subprocess.CompletedProcess[Any]:
    """``python -m guetteur ARGV``; text output unless it writes to stdout (``-o -``)."""
    return subprocess.run(
        [sys.executable, "-m", "guetteur", *argv],
        capture_output=True,
        text="-" not in argv,
        timeout=60,
    )


@pytest.mark.slow
def test_event_snapshot_clip_and_export_reach_the_centre_receiver(
    broker: MosquittoBroker, tmp_path: Path, centre_key: CentreKey
) -> None:
    config = validate_config(
        {
            "gateway_id": "gw-e2e",
            "data_dir": str(tmp_path / "gateway"),
            "mqtt": {"url": broker.url},
            "cameras": [{"id": "street", "url": "test:walk?start=3&end=5&duration=60&gop=1"}],
            "recording": {"segment_s": 2},
            "events": {"pre_roll_s": 1, "post_roll_s": 1, "end_quiet_s": 1.5},
            "commands": centre_key.commands_config(),
        }
    )
    receiver = Receiver(broker.url, tmp_path / "centre", client_id="centre-e2e")
    receiver.start()
    gateway = Gateway(config)
    gateway.start()
    db = tmp_path / "centre" / "receiver.db"
    try:
        ended = wait_for(
            lambda: query(db, "SELECT event_id, message FROM events WHERE type='end'"),
            30,
            "the event's end at the receiver",
        )
        event_id, message = ended[0]
        end_msg = json.loads(message)
        clip = wait_for(
            lambda: query(
                db,
                "SELECT path, sha256, size FROM clips WHERE event_id=? AND state='complete'",
                event_id,
            ),
            30,
            "the event's clip at the receiver",
        )
        snaps = query(db, "SELECT bytes FROM snapshots WHERE event_id=?", event_id)
        # export a range that was recorded, through the MQTT command
        signer = centre_key.signer()
        with CentreClient(
            broker.url, "centre-export", signer=signer, operator="sup1", role="supervisor"
        ) as centre:
            start = parse_iso(end_msg["start"])
            reply = centre.request(
                "gw-e2e",
                "export",
                {"camera": "street", "from": iso_ms(start - 1), "to": iso_ms(start + 2)},
            )
            bad = centre.request(
                "gw-e2e",
                "export",
                {"camera": "../etc", "from": iso_ms(start - 1), "to": iso_ms(start + 2)},
            )
        assert reply["ok"], reply
        exported = wait_for(
            lambda: query(
                db, "SELECT path FROM clips WHERE clip_id=? AND state='complete'", reply["clip_id"]
            ),
            30,
            "the exported clip at the receiver",
        )
    finally:
        gateway.stop()
        receiver.stop()

    path, sha256, size = clip[0]
    clip_path = Path(path) if Path(path).is_absolute() else tmp_path / "centre" / path
    assert clip_path.stat().st_size == size
    assert hashlib.sha256(clip_path.read_bytes()).hexdigest() == sha256
    duration, frames = clip_seconds(clip_path)
    event_s = parse_iso(end_msg["end"]) - parse_iso(end_msg["start"])
    # pre-roll + event + post-roll, cut at keyframes (1 s GOP here)
    assert duration >= 1 + event_s + 1 - 1.0 - 0.1, (duration, event_s)
    assert frames > 25
    assert snaps and snaps[0][0] > 1000
    assert bad["ok"] is False and bad["error"]["code"] == "bad_request"
    export_path = Path(exported[0][0])
    export_path = export_path if export_path.is_absolute() else tmp_path / "centre" / export_path
    assert clip_seconds(export_path)[0] >= 2.0


@pytest.mark.slow
def test_run_stops_cleanly_on_sigterm(broker: MosquittoBroker, tmp_path: Path) -> None:
    cfg = tmp_path / "guetteur.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "gateway_id": "gw-run",
                "data_dir": str(tmp_path / "data"),
                "mqtt": {"url": broker.url},
                "cameras": [{"id": "cam", "url": "test:quiet"}],
            }
        )
    )
    statuses: list[dict[str, Any]] = []
    with CentreClient(broker.url) as centre:
        centre.subscribe(
            "guetteur/v1/gw-run/status", lambda m: statuses.append(protocol.loads(bytes(m.payload)))
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "guetteur", "run", "-c", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            wait_for(
                lambda: any(s.get("state") == "online" for s in statuses),
                30,
                "the agent's online status",
            )
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(10)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
        wait_for(lambda: statuses[-1].get("state") == "offline", 5, "the offline status")
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert code == 0, output
    assert took < 5.0, f"stopped in {took:.1f} s"
    assert statuses[-1]["reason"] == "stopped"


def test_malformed_commands_get_codes_and_the_gateway_carries_on(
    broker: MosquittoBroker,
    tmp_path: Path,
    centre_server: Callable[..., Centre],
    centre_key: CentreKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading
    import uuid

    from guetteur.uplink.mqttutil import publish_properties

    config = validate_config(
        {
            "gateway_id": "gw-bad",
            "data_dir": str(tmp_path / "gateway"),
            "mqtt": {"url": broker.url},
            "recording": {"enabled": False},
            "cameras": [{"id": "cam", "url": "test:quiet"}],
            # this test polls for a first snapshot: above the default per-operator quota
            "commands": centre_key.commands_config(snapshots_per_minute=600),
        }
    )
    gateway = Gateway(config)
    gateway.start()
    signer = centre_key.signer()
    replies: dict[bytes, dict[str, Any]] = {}
    got = threading.Event()
    try:
        with CentreClient(broker.url, "centre-bad", signer=signer, operator="op1") as centre:
            reply_topic = "guetteur/v1/_reply/centre-bad-raw"

            def on_reply(msg: Any) -> None:
                replies[bytes(msg.properties.CorrelationData)] = protocol.loads(bytes(msg.payload))
                got.set()

            centre.subscribe(reply_topic, on_reply)
            assert gateway.link.wait_subscribed(10)
            raw = {
                b"\x00\xff garbage": "cmd/ptz",
                b'{"v":1,"camera":"cam","action":"spin"}': "cmd/ptz",
                b'{"v":1,"camera":"nope"}': "cmd/snapshot",
                b"{}": "cmd/self-destruct",
                b'{"v":1,"session":"../../etc"}': "cmd/live.renew",
            }
            sent: dict[bytes, bytes] = {}
            for payload, sub in raw.items():
                corr = uuid.uuid4().bytes
                sent[corr] = payload
                if payload.startswith(b'{"v"'):  # well-formed JSON, signed: only its body is bad
                    body = centre.sign("gw-bad", sub[4:], protocol.loads(payload))
                    payload = protocol.dumps(body)
                props = publish_properties(
                    "application/json", {"client_id": "centre-bad"}, reply_topic, corr
                )
                centre.paho.publish(f"guetteur/v1/gw-bad/{sub}", payload, qos=1, properties=props)
            # garbage where the centre's acknowledgements go: logged and ignored
            centre.paho.publish("guetteur/v1/gw-bad/ack", b"\x00not an ack", qos=1)
            try:
                wait_for(lambda: len(replies) == len(raw), 15, "one reply per command")
            except AssertionError:
                raise AssertionError({sent[c]: r for c, r in replies.items()}) from None
            codes = {sent[c]: r["error"]["code"] for c, r in replies.items() if not r["ok"]}
            assert codes == {
                b"\x00\xff garbage": "bad_request",
                b'{"v":1,"camera":"cam","action":"spin"}': "bad_request",
                b'{"v":1,"camera":"nope"}': "unknown_camera",
                b"{}": "unknown_verb",
                b'{"v":1,"session":"../../etc"}': "unknown_session",
            }
            assert all(len(r["error"]["message"]) > 10 for r in replies.values())
            # and it still works
            status = centre.request("gw-bad", "status", {})
            assert status["ok"] and status["gateway"]["gateway"] == "gw-bad"
            snap = wait_for(
                lambda: (r := centre.request("gw-bad", "snapshot", {"camera": "cam"}))["ok"] and r,
                15,
                "a snapshot from the test camera",
            )
            assert snap["bytes"] > 1000
        # the centre tool, through the centre server, saves the picture, to a file or to stdout
        server = centre_server(broker)
        wait_for(lambda: server.login("op1").ok("GET", "/api/gateways")["gateways"], 10, "gw-bad")
        for name, value in (("SERVER", server.url), ("USER", "op1"), ("PASSWORD", PASSWORD)):
            monkeypatch.setenv(f"GUETTEUR_{name}", value)
        jpeg = tmp_path / "cam.jpg"
        common = ["centre", "snapshot", "-g", "gw-bad", "--camera", "cam"]
        saved = guetteur(*common, "-o", str(jpeg))
        assert saved.returncode == 0, saved.stderr
        assert f"written to {jpeg}" in saved.stdout
        piped = guetteur(*common, "-o", "-")
        assert piped.returncode == 0, piped.stderr
        assert "asked of gw-bad/cam" in piped.stderr.decode()
        for picture in (jpeg.read_bytes(), piped.stdout):
            image = cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.shape[2] == 3
        refused = guetteur("centre", "snapshot", "-g", "gw-bad", "--camera", "x")
        assert refused.returncode == 1 and "unknown_camera" in refused.stderr
    finally:
        gateway.stop()


@pytest.mark.slow
def test_live_sub_stream_is_the_cameras_sub_stream(
    broker: MosquittoBroker, rtsp_server: Any, media: Any, tmp_path: Path, centre_key: CentreKey
) -> None:
    main = rtsp_server()
    sub = rtsp_server(file=media.h264_clip(size=(480, 270), duration=6.0))
    config = validate_config(
        {
            "gateway_id": "gw-sub",
            "data_dir": str(tmp_path / "gateway"),
            "mqtt": {"url": broker.url},
            "recording": {"enabled": False},
            "cameras": [{"id": "dome", "url": main.url, "sub_url": sub.url}],
            "commands": centre_key.commands_config(),
        }
    )
    gateway = Gateway(config)
    gateway.start()
    try:
        assert gateway.link.wait_subscribed(10)
        # A sub-stream not flowing yet is answered with the main stream (a fallback by design):
        # ask once the sub-stream's first keyframe is in, as an operator would on a live camera.
        wait_for(
            lambda: gateway.live.sub_hubs["dome"].state().has_keyframe,
            15,
            "the sub-stream's first keyframe",
        )
        signer = centre_key.signer()
        with CentreClient(broker.url, "centre-sub", signer=signer, operator="op1") as centre:
            reply = wait_for(
                lambda: (
                    (
                        r := centre.request(
                            "gw-sub", "live.start", {"camera": "dome", "stream": "sub"}
                        )
                    )["ok"]
                    and r
                ),
                15,
                "a live session on the sub-stream",
            )
            main_reply = centre.request("gw-sub", "live.start", {"camera": "dome"})
            for r in (reply, main_reply):
                centre.request("gw-sub", "live.stop", {"session": r["session"]})
    finally:
        gateway.stop()
    assert (reply["stream"], reply["width"], reply["height"]) == ("sub", 480, 270)
    assert "note" not in reply  # served what was asked, no fallback
    assert (main_reply["width"], main_reply["height"]) == (640, 360)
