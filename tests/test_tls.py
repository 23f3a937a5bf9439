"""The shipped broker configuration (scripts/mosquitto/) with a test CA from scripts/make-test-ca:
mutual TLS, identities from certificates, and the per-gateway ACL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from guetteur.centre.receiver.mqtt import Receiver
from guetteur.config import OutboxConfig
from guetteur.uplink import protocol
from guetteur.uplink.link import Link
from guetteur.uplink.mqttutil import configure_tls, new_client
from guetteur.uplink.outbox.service import Outbox
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.shipped_broker import mqtt_config, url
from tests.recorder import Recorder
from tests.test_outbox import event

ROOT = protocol.DEFAULT_ROOT


def tls_link(broker: MosquittoBroker, certs: Path, gateway: str) -> Link:
    return Link(mqtt_config(broker, certs, gateway), gateway)


def centre_recorder(broker: MosquittoBroker, certs: Path, topic: str) -> Recorder:
    return Recorder(
        url(broker),
        topic,
        ca=str(certs / "ca.crt"),
        cert=str(certs / "centre.crt"),
        key=str(certs / "centre.key"),
    ).start()


@pytest.mark.slow
def test_gateway_connects_with_its_certificate_and_drains_to_a_tls_receiver(
    tls_broker: MosquittoBroker, certs: Path, tmp_path: Path
) -> None:
    receiver = Receiver(
        url(tls_broker),
        tmp_path / "centre",
        client_id="rx-tls",
        ca_file=str(certs / "ca.crt"),
        cert_file=str(certs / "centre.crt"),
        key_file=str(certs / "centre.key"),
    )
    receiver.start()
    link = tls_link(tls_broker, certs, "gw1")
    outbox = Outbox(OutboxConfig(retry_s=5), tmp_path / "agent", link, "gw1")
    try:
        assert receiver.wait_connected(10)
        link.start()
        assert link.wait_connected(10), link.last_error
        outbox.start()
        for n in range(5):
            outbox.submit(event(n))
        # the centre's acks reach gw1 through the ACL: the outbox empties
        assert outbox.wait_empty(15), outbox.depth()
    finally:
        outbox.close()
        link.stop()
        receiver.stop()
    assert receiver.stats["events"] == 5


def try_connect(port: int, ca: Path | None) -> bool:
    """True when the broker accepts an MQTT session from this client within 2 s."""
    client = new_client()
    if ca is not None:
        configure_tls(client, ca_file=str(ca))  # verifies the broker, presents no certificate
    accepted = threading.Event()
    client.on_connect = lambda _c, _u, _f, rc, _p: None if rc.is_failure else accepted.set()
    try:
        client.connect("127.0.0.1", port)
    except OSError:
        return False  # refused during the TLS handshake
    client.loop_start()
    try:
        # with TLS 1.3 the refusal comes after connect() returns: wait for a CONNACK instead
        return accepted.wait(2.0)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.slow
def test_a_client_without_a_certificate_is_refused(
    tls_broker: MosquittoBroker, certs: Path
) -> None:
    assert not try_connect(tls_broker.port, certs / "ca.crt")
    assert not try_connect(tls_broker.port, None)  # nor a plain MQTT client
    link = tls_link(tls_broker, certs, "gw2")  # the same broker accepts a certified gateway
    link.start()
    try:
        assert link.wait_connected(10), link.last_error
    finally:
        link.stop()


@pytest.mark.slow
def test_gateway_cannot_publish_or_read_under_another_gateway(
    tls_broker: MosquittoBroker, certs: Path
) -> None:
    centre = centre_recorder(tls_broker, certs, f"{ROOT}/#")
    gw1 = tls_link(tls_broker, certs, "gw1")
    seen_by_gw1: list[str] = []
    gw1.subscribe(f"{ROOT}/gw2/cmd/+", lambda m: seen_by_gw1.append(m.topic))
    gw1.subscribe(f"{ROOT}/gw2/ack", lambda m: seen_by_gw1.append(m.topic))
    try:
        gw1.start()
        assert gw1.wait_connected(10), gw1.last_error
        time.sleep(0.3)
        gw1.publish_raw(f"{ROOT}/gw2/cam/cam1/event", b'{"v":1,"id":"forged"}', qos=1)
        gw1.publish_raw(f"{ROOT}/gw2/status", b'{"v":1,"state":"offline"}', qos=1)
        gw1.publish_raw(f"{ROOT}/gw1/ack", b'{"v":1,"ids":["forged"]}', qos=1)  # nor fake acks
        gw1.publish_raw(f"{ROOT}/gw1/cam/cam1/event", b'{"v":1,"id":"genuine"}', qos=1)
        centre.client.publish(f"{ROOT}/gw2/cmd/status", b'{"v":1}', qos=1)
        centre.client.publish(f"{ROOT}/gw2/ack", b'{"v":1,"ids":[]}', qos=1)
        assert centre.wait(lambda m: any(x.topic == f"{ROOT}/gw1/cam/cam1/event" for x in m))
        time.sleep(0.5)
        topics = [m.topic for m in centre.snapshot()]
        assert f"{ROOT}/gw2/cam/cam1/event" not in topics
        assert f"{ROOT}/gw2/status" not in topics
        assert f"{ROOT}/gw1/ack" not in topics
        assert seen_by_gw1 == []
        assert gw1.connected
    finally:
        gw1.stop()
        centre.stop()
