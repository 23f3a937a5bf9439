"""The MQTT link on a real Mosquitto: persistent session, reconnection, Last Will, credentials,
commands with replies — and the messages it publishes checked against docs/schemas."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from guetteur.centre.client import CentreClient
from guetteur.config import MqttConfig
from guetteur.uplink import protocol
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.commands import CommandContext, CommandDispatcher
from guetteur.uplink.link import DirectPublisher, Link
from tests.contract import validate, validate_payload
from tests.fixtures.broker import MosquittoBroker
from tests.recorder import Recorder

ROOT = protocol.DEFAULT_ROOT
REPO = Path(__file__).resolve().parents[1]


class Ping(BaseModel):
    camera: str


def make_link(url: str, gateway: str = "gwl", **mqtt: object) -> tuple[Link, list[str]]:
    cfg = MqttConfig(url=url, reconnect_max_s=1.0, **mqtt)
    link = Link(cfg, gateway)
    seen: list[str] = []
    dispatcher = CommandDispatcher(AuditTrail(DirectPublisher(link), gateway))

    def ping(_ctx: CommandContext, req: Ping) -> dict[str, object]:
        seen.append(req.camera)
        return {"pong": req.camera}

    dispatcher.register("ping", Ping, ping, audited=False)
    link.dispatcher = dispatcher
    return link, seen


def test_commands_reach_a_gateway_that_was_away_thanks_to_its_persistent_session(
    broker: MosquittoBroker,
) -> None:
    link, seen = make_link(broker.url)
    link.start()
    assert link.wait_subscribed(10)
    assert not link.session_present  # first time: a new session
    time.sleep(0.2)
    link.stop()
    centre = CentreClient(broker.url).connect()
    try:
        # the gateway is away: the command waits in its session at the broker
        centre.paho.publish(
            f"{ROOT}/gwl/cmd/ping", protocol.dumps({"id": "r1", "camera": "cam7"}), qos=1
        )
        time.sleep(0.3)
        again, seen = make_link(broker.url)
        again.start()
        assert again.wait_connected(10)
        assert again.session_present
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == ["cam7"]
        reply = centre.request("gwl", "ping", {"camera": "cam8"})
        validate("reply", reply)
        assert reply["ok"] and reply["pong"] == "cam8"
        bad = centre.request("gwl", "ping", {"camera": 5, "extra": 1})
        validate("reply", bad)
        assert bad["error"]["code"] == "bad_request"
        again.stop()
    finally:
        centre.close()


@pytest.mark.slow
def test_reconnects_after_a_broker_crash_and_resubscribes(broker: MosquittoBroker) -> None:
    link, _seen = make_link(broker.url)
    ups: list[float] = []
    downs: list[float] = []
    link.add_connect_listener(lambda: ups.append(time.monotonic()))
    link.add_disconnect_listener(lambda: downs.append(time.monotonic()))
    link.start()
    try:
        assert link.wait_connected(10)
        broker.kill()
        deadline = time.monotonic() + 5
        while link.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not link.connected and link.last_error
        time.sleep(2.0)
        broker.start()
        t0 = time.monotonic()
        assert link.wait_connected(10)
        assert time.monotonic() - t0 < 6.0  # backoff capped at reconnect_max_s (1 s) + slack
        assert len(ups) == 2 and len(downs) == 1 and link.connects == 2
        with CentreClient(broker.url) as centre:
            assert centre.request("gwl", "ping", {"camera": "c1"})["ok"]  # subscribed again
    finally:
        link.stop()


@pytest.mark.slow
def test_last_will_marks_a_vanished_gateway_offline_and_stop_says_why(
    broker: MosquittoBroker,
) -> None:
    status_topic = f"{ROOT}/gwx/status"
    rec = Recorder(broker.url, status_topic).start()
    code = (
        "import sys, time\n"
        "from guetteur.config import MqttConfig\n"
        "from guetteur.uplink.link import Link\n"
        f"link = Link(MqttConfig(url={broker.url!r}), 'gwx')\n"
        "link.start(); link.wait_connected(10)\n"
        "link.publish_json(link.topics.status, {'state': 'online', 'gateway': 'gwx'}, "
        "retain=True).wait_for_publish(5)\n"
        "print('up', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        assert rec.wait(lambda m: any(b"online" in x.payload for x in m))
        proc.kill()  # a crash or a power cut: no goodbye
        assert rec.wait(lambda m: any(b"offline" in x.payload for x in m), timeout=10)
    finally:
        proc.kill()
        proc.wait()
    will = validate_payload("gateway-status", rec.snapshot()[-1].payload)
    assert will["state"] == "offline" and will["reason"] == "link lost"
    for x in rec.snapshot():
        validate_payload("gateway-status", x.payload)

    link, _ = make_link(broker.url, "gwx")
    link.start()
    assert link.wait_connected(10)
    link.stop({"uptime_s": 1.5})
    assert rec.wait(lambda m: b"stopped" in m[-1].payload)
    rec.stop()
    # retained: a centre tool that connects later sees the clean offline status
    late = Recorder(broker.url, status_topic).start()
    try:
        assert late.wait(lambda m: len(m) >= 1)
        final = validate_payload("gateway-status", late.snapshot()[-1].payload)
        assert final["state"] == "offline" and final["reason"] == "stopped"
        assert late.snapshot()[-1].retain
    finally:
        late.stop()


@pytest.mark.slow
def test_username_and_password(broker: MosquittoBroker, tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "gateway", "s3cret"], check=True)
    port = broker.port + 0
    broker.stop()
    secured = MosquittoBroker(
        tmp_path / "secured",
        port=None,
        listen=False,
        extra_conf=(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"),
    )
    secured.port = port
    secured.start()
    try:
        good, _ = make_link(
            f"mqtt://127.0.0.1:{port}", username="gateway", password=SecretStr("s3cret")
        )
        bad, _ = make_link(
            f"mqtt://127.0.0.1:{port}", username="gateway", password=SecretStr("wrong")
        )
        in_url, _ = make_link(f"mqtt://gateway:s3cret@127.0.0.1:{port}")
        for link in (good, bad, in_url):
            link.start()
        assert good.wait_connected(10) and in_url.wait_connected(10)
        assert not bad.wait_connected(2)
        assert bad.last_error and "refused" in bad.last_error
        for link in (good, bad, in_url):
            link.stop()
    finally:
        secured.stop()


def test_publish_item_carries_the_item_id_and_content_type(broker: MosquittoBroker) -> None:
    from guetteur.uplink.publish import OutboundItem, Priority

    rec = Recorder(broker.url, f"{ROOT}/gwl/#").start()
    link, _ = make_link(broker.url)
    link.start()
    try:
        assert link.wait_connected(10)
        DirectPublisher(link).submit(
            OutboundItem(
                "e1:0:snap",
                "snapshot",
                "cam/c1/snapshot",
                b"\xff\xd8jpeg",
                Priority.SNAPSHOT,
                "c1",
                "image/jpeg",
                {"event_id": "e1"},
            )
        )
        assert rec.wait(lambda m: len(m) >= 1)
        msg = rec.snapshot()[0]
        assert msg.content_type == "image/jpeg" and msg.qos == 1
        validate("snapshot-properties", msg.props)
    finally:
        link.stop()
        rec.stop()
