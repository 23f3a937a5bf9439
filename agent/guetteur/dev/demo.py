"""`guetteur demo`: a whole gateway on a laptop, with nothing to configure.

Starts a private Mosquitto on a free loopback port, one `test:` camera whose generated scene has a
person walking across every few seconds, the real agent pipeline, and a centre-side subscriber
that prints every event it receives from the broker. A throw-away centre signing key is made and
trusted, and the centre side sends one signed ``status`` command, as the centre server would.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from guetteur.centre.client import CentreClient, CentreError
from guetteur.config import validate_config
from guetteur.dev.broker import BrokerError, PrivateBroker
from guetteur.uplink import protocol
from guetteur.uplink.mqttutil import user_properties

DEMO_CAMERA = "test:walk?start=3&end=6&duration=10"


def run_demo(seconds: float, stop: threading.Event) -> int:
    from guetteur.runtime.gateway import Gateway

    workdir = Path(tempfile.mkdtemp(prefix="guetteur-demo-"))
    try:
        broker = PrivateBroker(workdir / "broker", persistence=False)
        broker.start()
    except BrokerError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    print(f"demo: private broker on {broker.url}, data in {workdir}")
    from guetteur.uplink.centre_keys import generate_key_pair, load_private_key
    from guetteur.uplink.command_auth import Signer

    key_id = generate_key_pair(workdir / "centre-signing.key", workdir / "centre-signing.pub")
    signer = Signer(load_private_key(workdir / "centre-signing.key"))
    print(f"demo: throw-away centre signing key {key_id}, trusted by the gateway")
    config = validate_config(
        {
            "gateway_id": "demo-gw",
            "site": "demo",
            "data_dir": str(workdir / "data"),
            "mqtt": {"url": broker.url},
            "cameras": [{"id": "demo-cam", "url": DEMO_CAMERA}],
            "outbox": {"enabled": False},
            "events": {"clips": False},  # clips need the durable outbox and a receiver
            "commands": {"trusted_keys": [str(workdir / "centre-signing.pub")]},
        },
        "demo config",
    )
    events: list[dict[str, object]] = []
    snapshots: dict[str, int] = {}
    lock = threading.Lock()

    def on_event(msg: mqtt.MQTTMessage) -> None:
        try:
            event = protocol.loads(bytes(msg.payload))
        except protocol.MessageError as exc:
            print(f"centre: bad event on {msg.topic}: {exc}")
            return
        with lock:
            events.append(event)
            snap = snapshots.get(str(event.get("event_id")), 0)
        print(
            f"centre: event {event.get('type'):<6} id={event.get('event_id')} "
            f"camera={event.get('camera')} start={event.get('start')} "
            f"score={event.get('score')} snapshot={snap} bytes",
            flush=True,
        )

    def on_snapshot(msg: mqtt.MQTTMessage) -> None:
        event_id = user_properties(msg).get("event_id", "?")
        with lock:
            snapshots[event_id] = len(msg.payload)
        print(f"centre: snapshot for event {event_id}: {len(msg.payload)} bytes JPEG", flush=True)

    gateway = Gateway(config)
    centre = CentreClient(broker.url, client_id="demo-centre", signer=signer, operator="demo")
    try:
        centre.connect()
        root = config.mqtt.root
        centre.subscribe(f"{root}/+/cam/+/event", on_event)
        centre.subscribe(f"{root}/+/cam/+/snapshot", on_snapshot)
        centre.subscribe(
            f"{root}/+/cam/+/status",
            lambda m: print(
                "centre: camera status", json.loads(m.payload).get("state"), flush=True
            ),
        )
        gateway.start()
        if gateway.link.wait_subscribed(10):
            reply = centre.request(config.gateway_id, "status", {})
            print(f"centre: signed status command answered ok={reply['ok']}", flush=True)
        print(
            f"demo: camera demo-cam ({DEMO_CAMERA}): a person walks by every 10 s; "
            f"running {seconds:.0f} s (Ctrl-C stops)",
            flush=True,
        )
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            stop.wait(0.2)
    except CentreError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    finally:
        gateway.stop()
        time.sleep(0.3)  # let the last event reach the centre
        centre.close()
        broker.stop()
    with lock:
        count = len(events)
    if count == 0:
        print("demo: no event received: check the log lines above", file=sys.stderr)
        return 1
    print(f"demo: {count} event message(s) received from the broker")
    return 0
