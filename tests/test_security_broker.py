"""Attacks on a running gateway through the shipped broker (scripts/mosquitto: mutual TLS, the
CRL, identities and client ids from certificates, the ACL): both layers hold — the broker keeps
anyone but the centre from publishing commands and acks, and the gateway runs only commands the
centre signed, fresh and once, for a role allowed the verb."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guetteur.centre.client import CentreClient
from guetteur.config import validate_config
from guetteur.runtime.gateway import Gateway
from guetteur.uplink import protocol
from guetteur.uplink.command_auth import AuthCode, Signer
from guetteur.uplink.link import Link
from guetteur.uplink.mqttutil import configure_tls, new_client, publish_properties
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.shipped_broker import (
    make_test_ca,
    mqtt_config,
    revoke,
    shipped_broker,
    tls_files,
    url,
)
from tests.fixtures.signing import CentreKey
from tests.fixtures.waiting import wait_for

ROOT = protocol.DEFAULT_ROOT
GW = "gw1"


def centre_client(broker: MosquittoBroker, certs: Path, signer: Signer | None) -> CentreClient:
    files = tls_files(certs, "centre")
    return CentreClient(
        url(broker),
        client_id="centre",
        ca_file=files["ca"],
        cert_file=files["cert"],
        key_file=files["key"],
        signer=signer,
        operator="op1",
        role="operator",
    )


class AuditLog:
    """The gateway's audit records as the centre receives them."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.records.append(protocol.loads(bytes(msg.payload)))

    def for_request(self, request_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.records if r.get("request_id") == request_id]


@pytest.fixture
def running(
    tls_broker: MosquittoBroker, certs: Path, tmp_path: Path, centre_key: CentreKey
) -> Iterator[Gateway]:
    mqtt_section = mqtt_config(tls_broker, certs, GW).model_dump(mode="json")
    config = validate_config(
        {
            "gateway_id": GW,
            "data_dir": str(tmp_path / "gateway"),
            "mqtt": mqtt_section,
            "recording": {"enabled": False},
            "cameras": [{"id": "cam", "url": "test:quiet"}],
            "commands": centre_key.commands_config(),
        }
    )
    gateway = Gateway(config)
    gateway.start()
    assert gateway.link.wait_subscribed(15), gateway.link.last_error
    yield gateway
    gateway.stop()


def raw_client(broker: MosquittoBroker, certs: Path, identity: str) -> mqtt.Client:
    """A plain MQTT 5 client holding ``identity``'s certificate, connected."""
    client = new_client(f"{identity}-{uuid.uuid4().hex[:6]}")
    files = tls_files(certs, identity)
    configure_tls(client, files["ca"], files["cert"], files["key"])
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, rc, _p: None if rc.is_failure else connected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert connected.wait(10), f"{identity} could not connect"
    return client


@pytest.mark.slow
def test_only_signed_fresh_unique_commands_run_and_every_refusal_is_audited(
    running: Gateway, tls_broker: MosquittoBroker, certs: Path, centre_key: CentreKey
) -> None:
    audit = AuditLog()
    signer = centre_key.signer()
    with centre_client(tls_broker, certs, signer) as centre:
        centre.subscribe(f"{ROOT}/{GW}/audit", audit.on_message)

        def send(body: dict[str, Any], verb: str = "snapshot") -> dict[str, Any]:
            return centre.request(GW, verb, body, timeout=10)

        snap = {"camera": "cam"}
        # 1. unsigned
        centre.signer = None
        unsigned = send({"id": "unsigned", **snap})
        centre.signer = signer
        # 2. signed by a key the gateway does not trust
        stranger = Signer(Ed25519PrivateKey.generate())
        other_key = send(
            stranger.sign(GW, "snapshot", {"id": "other-key", **snap}, "op1", "operator")
        )
        # 3. expired: signed two minutes ago with a 30 s lifetime (queued while offline)
        old = centre_key.signer(clock=lambda: time.time() - 120)
        expired = send(old.sign(GW, "snapshot", {"id": "expired", **snap}, "op1", "operator"))
        # 4. altered after signing: the camera changed
        signed = signer.sign(GW, "snapshot", {"id": "altered", **snap}, "op1", "operator")
        altered = send({**signed, "camera": "other"})
        # 5. a viewer may not steer a dome
        viewer = send(
            signer.sign(GW, "ptz", {"id": "viewer-ptz", "camera": "cam", "action": "stop"}, "v1", "viewer"),
            "ptz",
        )  # fmt: skip
        # the same through the client's per-call identity (how a server signs for each operator)
        as_viewer = centre.request(
            GW, "ptz", {"camera": "cam", "action": "stop"}, 10, operator="v2", role="viewer"
        )
        assert as_viewer["error"]["code"] == AuthCode.FORBIDDEN
        # 6. a command signed for op1 runs, once; the same bytes again are a replay
        good = signer.sign(GW, "status", {"id": "op1-status"}, "op1", "operator")
        first = send(good, "status")
        replay = send(good, "status")
        # Wait for a frame without sending snapshots: each would count against op1's quota of
        # snapshots per minute, and the quota is checked before anything is audited.
        wait_for(lambda: running.workers["cam"].last_frame, 15, "the camera's first frame")
        ran = send({"id": "op1-snap", **snap})
        assert ran["ok"], ran
        # the body's claims change nothing: operator and priority come from the signature
        claimed = send({"id": "claims", **snap, "operator": "mallory"})
        refusals = {
            "unsigned": (unsigned, AuthCode.UNSIGNED),
            "other-key": (other_key, AuthCode.UNKNOWN_KEY),
            "expired": (expired, AuthCode.EXPIRED),
            "altered": (altered, AuthCode.BAD_SIGNATURE),
            "viewer-ptz": (viewer, AuthCode.FORBIDDEN),
            "op1-status": (replay, AuthCode.REPLAYED),
        }
        for rid, (reply, code) in refusals.items():
            assert reply["ok"] is False and reply["error"]["code"] == code, (rid, reply)
            assert reply["id"] == rid
        assert first["ok"] and first["gateway"]["gateway"] == GW
        assert ran["snapshot_id"].startswith("snap-")

        # every refusal is in the gateway's audit, as refused, with its own code
        for rid, (_reply, code) in refusals.items():
            if rid == "op1-status":
                continue  # status touches no video: not audited, but its replay is
            records = wait_for(partial(audit.for_request, rid), 10, f"audit of {rid}")
            assert [(r["outcome"], r["code"]) for r in records] == [("refused", code)], records
        replayed = wait_for(
            lambda: [r for r in audit.for_request("op1-status") if r["outcome"] == "refused"],
            10,
            "audit of the replay",
        )
        assert replayed[0]["code"] == AuthCode.REPLAYED

        # the snapshot ran for op1: recorded before it ran, with the verified operator and key
        def both_records() -> list[dict[str, Any]]:
            records = audit.for_request(ran["id"])
            return records if [r["outcome"] for r in records] == ["accepted", "ok"] else []

        done = wait_for(both_records, 10, "audit of op1's snapshot")
        assert {r["operator"] for r in done} == {"op1"} and {r["role"] for r in done} == {
            "operator"
        }
        assert done[0]["key_id"] == signer.key_id
        assert claimed["ok"], claimed
        claims = wait_for(lambda: audit.for_request("claims"), 10, "audit of the claims")
        assert {r["operator"] for r in claims} == {"op1"}


@pytest.mark.slow
def test_only_the_centre_identity_can_publish_commands_and_acks(
    running: Gateway, tls_broker: MosquittoBroker, certs: Path, centre_key: CentreKey
) -> None:
    """An operator's workstation and another gateway hold valid certificates and even a validly
    signed command: the broker drops what they publish on cmd/ and ack."""
    seen: list[str] = []
    replies: list[bytes] = []
    signer = centre_key.signer()
    with centre_client(tls_broker, certs, signer) as centre:
        centre.subscribe(f"{ROOT}/{GW}/cmd/#", lambda m: seen.append(m.topic))
        centre.subscribe(f"{ROOT}/{GW}/ack", lambda m: seen.append(m.topic))
        intruders = [raw_client(tls_broker, certs, who) for who in ("op-alice", "gw2")]
        try:
            for n, client in enumerate(intruders):
                reply_topic = f"{ROOT}/_reply/intruder{n}/{GW}"
                client.subscribe(reply_topic, qos=1)
                client.on_message = lambda _c, _u, m: replies.append(bytes(m.payload))
                body = signer.sign(GW, "status", {"id": f"intruder{n}"}, "op1", "operator")
                props = publish_properties("application/json", None, reply_topic, b"c")
                client.publish(f"{ROOT}/{GW}/cmd/status", protocol.dumps(body), 1, properties=props)
                client.publish(f"{ROOT}/{GW}/ack", protocol.ack_message(["x"]), qos=1)
            # the centre's own command, sent after theirs, is answered: theirs had their chance
            assert centre.request(GW, "status", {}, timeout=10)["ok"]
            time.sleep(1.0)
        finally:
            for client in intruders:
                client.disconnect()
                client.loop_stop()
    assert replies == []
    assert seen == [f"{ROOT}/{GW}/cmd/status"]  # only the centre's


@pytest.mark.slow
def test_another_certificate_cannot_take_over_a_gateways_client_id(
    tls_broker: MosquittoBroker, certs: Path
) -> None:
    """gw2's certificate connecting with gw1's client id used to push gw1 off the broker: the
    broker now names every client after its certificate."""
    link = Link(mqtt_config(tls_broker, certs, GW), GW)
    dropped: list[float] = []
    link.add_disconnect_listener(lambda: dropped.append(time.monotonic()))
    link.start()
    try:
        assert link.wait_connected(10), link.last_error
        intruder = new_client(link.client_id)  # "guetteur-gw1"
        files = tls_files(certs, "gw2")
        configure_tls(intruder, files["ca"], files["cert"], files["key"])
        accepted = threading.Event()
        intruder.on_connect = lambda _c, _u, _f, rc, _p: None if rc.is_failure else accepted.set()
        intruder.connect("127.0.0.1", tls_broker.port)
        intruder.loop_start()
        try:
            assert accepted.wait(10)  # gw2's certificate is valid: it connects, as gw2
            time.sleep(1.5)
            assert dropped == [] and link.connected and link.connects == 1
        finally:
            intruder.disconnect()
            intruder.loop_stop()
    finally:
        link.stop()


@pytest.mark.slow
def test_a_revoked_gateway_certificate_is_refused_and_tls13_is_negotiated(
    tmp_path: Path,
) -> None:
    ca = make_test_ca(tmp_path / "ca", "gw1", "gw2")
    revoke(ca, "gw2")
    broker = shipped_broker(ca, tmp_path / "mosquitto")
    try:
        stolen = Link(mqtt_config(broker, ca, "gw2"), "gw2")
        stolen.start()
        try:
            assert not stolen.wait_connected(3), "a revoked certificate was let in"
        finally:
            stolen.stop()
        client = raw_client(broker, ca, "gw1")
        try:
            sock = client.socket()
            version = sock.version() if sock is not None and hasattr(sock, "version") else None
            assert version == "TLSv1.3", version
        finally:
            client.disconnect()
            client.loop_stop()
    finally:
        broker.stop()


def test_reserved_gateway_ids_are_refused_by_the_test_ca(tmp_path: Path) -> None:
    import subprocess

    from tests.fixtures.shipped_broker import MAKE_CA

    for reserved in ("centre", "centre-2", "op-bob", "broker", "a/b", "gw+", "#"):
        proc = subprocess.run(
            [str(MAKE_CA), str(tmp_path / "ca"), reserved], capture_output=True, text=True
        )
        assert proc.returncode == 2 and "error: gateway id" in proc.stderr, (reserved, proc)
    assert not (tmp_path / "ca").exists()
