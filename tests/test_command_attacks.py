"""Attacks on the command path of a running gateway, through a real broker, each written as the
attacker would try it: a forged reply topic, a lone surrogate for an id, control characters for
the log, a megabyte field for the audit trail, a flood of live.start by one operator, and a
centre that stops acknowledging while commands keep coming."""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import serial

from guetteur.centre.client import CentreClient
from guetteur.config import validate_config
from guetteur.logsetup import setup_logging
from guetteur.runtime.gateway import Gateway
from guetteur.uplink import protocol
from guetteur.uplink.mqttutil import publish_properties
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.serial import PtyPair
from tests.fixtures.signing import CentreKey
from tests.fixtures.waiting import wait_for

ROOT = protocol.DEFAULT_ROOT
GW = "gw-atk"

MakeGateway = Callable[..., Gateway]


@pytest.fixture
def make_gateway(
    broker: MosquittoBroker, tmp_path: Path, centre_key: CentreKey
) -> Iterator[MakeGateway]:
    made: list[Gateway] = []

    def make(**sections: Any) -> Gateway:
        raw: dict[str, Any] = {
            "gateway_id": GW,
            "data_dir": str(tmp_path / "gateway"),
            "mqtt": {"url": broker.url},
            "recording": {"enabled": False},
            "outbox": {"enabled": False},
            "cameras": [{"id": "cam", "url": "test:quiet?gop=1"}],
            "commands": centre_key.commands_config(),
        }
        raw.update(sections)
        gateway = Gateway(validate_config(raw))
        gateway.start()
        made.append(gateway)
        assert gateway.link.wait_subscribed(10)
        return gateway

    yield make
    for gateway in made:
        gateway.stop()


class Watcher:
    """Every message on the broker under the interface's root, as an eavesdropping centre."""

    def __init__(self, centre: CentreClient) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        centre.subscribe(f"{ROOT}/#", self._on)

    def _on(self, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)

    def on(self, topic: str) -> list[mqtt.MQTTMessage]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def audit(self) -> list[dict[str, Any]]:
        return [protocol.loads(bytes(m.payload)) for m in self.on(f"{ROOT}/{GW}/audit")]


def centre(broker: MosquittoBroker, key: CentreKey, operator: str = "op1") -> CentreClient:
    return CentreClient(broker.url, f"centre-{operator}", signer=key.signer(), operator=operator)


def publish_raw(
    client: CentreClient, verb: str, payload: bytes, response_topic: str | None
) -> bytes:
    correlation = uuid.uuid4().bytes
    props = publish_properties(
        "application/json", {"client_id": "atk"}, response_topic, correlation
    )
    client.paho.publish(f"{ROOT}/{GW}/cmd/{verb}", payload, qos=1, properties=props)
    return correlation


def replies_on(watcher: Watcher, topic: str, correlation: bytes) -> list[dict[str, Any]]:
    return [
        protocol.loads(bytes(m.payload))
        for m in watcher.on(topic)
        if bytes(getattr(m.properties, "CorrelationData", b"")) == correlation
    ]


@pytest.mark.slow
def test_a_forged_response_topic_never_becomes_a_gateway_message(
    broker: MosquittoBroker,
    make_gateway: MakeGateway,
    centre_key: CentreKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A snapshot command whose response topic is the gateway's own event topic used to make
    the centre store the reply as an event (the same for audit, status, snapshot)."""
    make_gateway()
    own_reply = f"{ROOT}/{GW}/reply/snapshot"
    forged = [
        f"{ROOT}/{GW}/cam/cam/event",
        f"{ROOT}/{GW}/audit",
        f"{ROOT}/{GW}/status",
        f"{ROOT}/{GW}/cam/cam/snapshot",
        f"{ROOT}/_reply",  # the area itself, not below it
        f"{ROOT}/_replyX/a",
        "elsewhere/topic",
    ]
    caplog.set_level(logging.ERROR, "guetteur.uplink.link")
    with centre(broker, centre_key) as client:
        watcher = Watcher(client)
        time.sleep(0.2)
        sent: dict[bytes, str] = {}
        for n, topic in enumerate(forged):
            body = client.sign(GW, "snapshot", {"id": f"forged-{n}", "camera": "nope"})
            sent[publish_raw(client, "snapshot", protocol.dumps(body), topic)] = topic
        for correlation, topic in sent.items():
            answer = wait_for(
                partial(replies_on, watcher, own_reply, correlation), 10, f"reply for {topic}"
            )
            assert answer[0]["error"]["code"] == "bad_reply_topic", (topic, answer)
        time.sleep(0.5)
        for correlation, topic in sent.items():
            assert replies_on(watcher, topic, correlation) == [], topic
        # the commands did not run: no audit record was written for them
        assert not [r for r in watcher.audit() if str(r.get("request_id", "")).startswith("forged")]
        # a reply area topic works as before
        assert client.request(GW, "status", {})["ok"]
    refusals = [r.getMessage() for r in caplog.records if "reply area" in r.getMessage()]
    assert len(refusals) >= 3, refusals


@pytest.mark.slow
def test_a_lone_surrogate_id_gets_its_reply_and_the_dome_does_not_move(
    broker: MosquittoBroker,
    make_gateway: MakeGateway,
    centre_key: CentreKey,
    pty_pair: PtyPair,
) -> None:
    """``"id": "\\ud800"`` used to break the audit hand-off: the PTZ move ran, with no reply."""
    ptz = {"protocol": "pelco-d", "serial_port": pty_pair.gateway}
    make_gateway(cameras=[{"id": "dome", "url": "test:quiet", "ptz": ptz}])
    with (
        centre(broker, centre_key) as client,
        serial.Serial(pty_pair.device, 9600, timeout=0.2) as dome,
    ):
        watcher = Watcher(client)
        reply_topic = f"{ROOT}/_reply/{client.client_id}/{GW}"
        signed = client.sign(GW, "ptz", {"id": "ID", "camera": "dome", "action": "move", "pan": 1})
        payload = protocol.dumps(signed).replace(b'"id":"ID"', b'"id":"\\ud800"')
        correlation = publish_raw(client, "ptz", payload, reply_topic)
        answer = wait_for(lambda: replies_on(watcher, reply_topic, correlation), 10, "the reply")
        assert answer[0]["ok"] is False and answer[0]["error"]["code"] == "bad_request"
        assert "surrogate" in answer[0]["error"]["message"]
        time.sleep(0.5)
        assert dome.read(64) == b""  # not one Pelco-D frame reached the dome
        # the same move, well-formed, does move it
        assert client.request(GW, "ptz", {"camera": "dome", "action": "move", "pan": 1})["ok"]
        assert dome.read(7)[:1] == b"\xff"


@pytest.mark.slow
def test_control_characters_never_reach_a_log_line_raw(
    broker: MosquittoBroker, make_gateway: MakeGateway, centre_key: CentreKey
) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    setup_logging("INFO", env={}, stream=out)
    try:
        make_gateway()
        with centre(broker, centre_key) as client:
            evil = "cam\x00\x1b[2J\r\n2026-12-02T10:00:00.000Z INFO guetteur: all fine"
            reply = client.request(GW, "snapshot", {"camera": evil})
            assert reply["error"]["code"] == "unknown_camera"
            bad = publish_raw(client, "ptz\x07", b'{"v":1,"camera":"\\u0000x"}', None)
            assert bad
            time.sleep(0.5)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    text = out.getvalue()
    assert "cam\\x00\\x1b[2J\\r\\n2026-12-02T10:00:00.000Z" in text, text[-2000:]
    assert not any(c in text for c in "\x00\x1b\x07\r")
    assert not any(line.startswith("2026-12-02T10:00:00.000Z") for line in text.splitlines())


@pytest.mark.slow
def test_big_fields_make_short_audit_records(
    broker: MosquittoBroker, make_gateway: MakeGateway, centre_key: CentreKey
) -> None:
    """A 1 MB field once became a 2 MB audit record."""
    make_gateway()
    with centre(broker, centre_key) as client:
        watcher = Watcher(client)
        time.sleep(0.2)
        huge = client.sign(GW, "snapshot", {"id": "huge", "camera": "x" * (1 << 20)})
        refused = client.request(GW, "snapshot", huge)
        assert refused["error"]["code"] == "bad_request" and "bytes" in refused["error"]["message"]
        long = client.request(GW, "snapshot", {"id": "long", "camera": "y" * 50_000})
        assert long["error"]["code"] == "unknown_camera"
        forged_auth = client.sign(GW, "snapshot", {"id": "forged-op", "camera": "cam"})
        forged_auth["auth"] = {**forged_auth["auth"], "operator": "z" * 50_000}
        assert client.request(GW, "snapshot", forged_auth)["error"]["code"] in {
            "bad_signature_fields",
            "bad_signature",
        }
        records = wait_for(
            lambda: [r for r in watcher.audit() if r.get("request_id") in ("long", "forged-op")],
            10,
            "the audit records",
        )
        time.sleep(0.5)
    sizes = [len(m.payload) for m in watcher.on(f"{ROOT}/{GW}/audit")]
    assert records and max(sizes) < 2000, sizes
    assert not [r for r in watcher.audit() if r.get("request_id") == "huge"]  # never parsed


@pytest.mark.slow
def test_one_operator_cannot_take_every_live_slot(
    broker: MosquittoBroker, make_gateway: MakeGateway, centre_key: CentreKey
) -> None:
    """One operator's flood of 150 live.start used to hold all four slots of a camera."""
    gateway = make_gateway()
    with centre(broker, centre_key, "op1") as op1, centre(broker, centre_key, "op2") as op2:
        first = wait_for(
            lambda: (r := op1.request(GW, "live.start", {"camera": "cam"}))["ok"] and r,
            20,
            "a first live session once the camera has a keyframe",
        )
        codes = [op1.request(GW, "live.start", {"camera": "cam"}) for _ in range(149)]
        ok = [r for r in codes if r["ok"]]
        refused = {r["error"]["code"] for r in codes if not r["ok"]}
        assert len(ok) == 1 and refused <= {"limit_reached", "rate_limited"}, refused
        assert [s.owner for s in gateway.live.sessions()] == ["op1", "op1"]
        other = op2.request(GW, "live.start", {"camera": "cam"})
        assert other["ok"], other
        # and op2's session is op2's: op1 cannot stop it
        stolen = op1.request(GW, "live.stop", {"session": other["session"]})
        assert stolen["error"]["code"] == "forbidden"
        for session in (first["session"], ok[0]["session"]):
            assert op1.request(GW, "live.stop", {"session": session})["ok"]


@pytest.mark.slow
def test_commands_are_refused_once_the_audit_budget_is_spent(
    broker: MosquittoBroker, make_gateway: MakeGateway, centre_key: CentreKey
) -> None:
    """No centre acknowledges anything: audit records pile up in the outbox until the budget is
    spent; from then on, commands that need a record are refused and do not run."""
    lenient = {"snapshots_per_minute": 100_000, "rate_per_s": 1000, "burst": 1000}
    gateway = make_gateway(
        outbox={"enabled": True},
        commands=centre_key.commands_config(audit_budget_records=100, **lenient),
    )
    with centre(broker, centre_key) as client:
        watcher = Watcher(client)
        replies = [client.request(GW, "snapshot", {"camera": "nope"}) for _ in range(60)]
        codes = [r["error"]["code"] for r in replies]
        assert "unknown_camera" in codes and codes[-1] == "audit_unavailable", codes
        assert gateway.outbox is not None and gateway.outbox.depth()["audit"] >= 100
        time.sleep(1.1)  # the outbox is asked again: still over budget
        ran = client.request(GW, "snapshot", {"id": "would-run", "camera": "cam"})
        assert ran["error"]["code"] == "audit_unavailable", ran
        assert "audit" in ran["error"]["message"]
        # status touches no video: still answered
        assert client.request(GW, "status", {})["ok"]
        time.sleep(0.3)
    assert not [m for m in watcher.on(f"{ROOT}/{GW}/cam/cam/snapshot")]


@pytest.mark.slow
def test_a_command_queued_while_the_gateway_was_away_is_refused_once_expired_and_a_replay_stays_refused_across_a_restart(
    broker: MosquittoBroker, make_gateway: MakeGateway, centre_key: CentreKey
) -> None:
    """The broker keeps a gateway's commands while it is away (persistent session): a PTZ move
    must not run 30 s late. And the nonce of a command that ran is remembered across a restart."""
    strict = centre_key.commands_config(max_clock_skew_s=0)
    first = make_gateway(commands=strict)
    with centre(broker, centre_key) as client:
        watcher = Watcher(client)
        reply_topic = f"{ROOT}/_reply/{client.client_id}/{GW}"
        ran = client.sign(GW, "status", {"id": "ran-before-restart"})
        assert client.request(GW, "status", ran)["ok"]
        first.stop()
        client.command_lifetime_s = 1.0
        late = client.sign(GW, "status", {"id": "queued-while-away"})
        late_corr = publish_raw(client, "status", protocol.dumps(late), reply_topic)
        time.sleep(1.5)  # its lifetime passes while the gateway is away
        make_gateway(commands=strict)  # same data_dir, same MQTT session: the broker delivers it
        answer = wait_for(lambda: replies_on(watcher, reply_topic, late_corr), 15, "the late reply")
        assert answer[0]["error"]["code"] == "expired", answer
        client.command_lifetime_s = 30.0
        replay = client.request(GW, "status", ran)  # signed 2 s ago: still fresh, already used
        assert replay["error"]["code"] == "replayed", replay
