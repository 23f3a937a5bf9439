"""A centre-side MQTT client for tests: records every message under a filter, can acknowledge."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from guetteur.uplink import protocol
from guetteur.uplink.mqttutil import configure_tls, content_type, new_client, user_properties


@dataclass
class Recorded:
    topic: str
    payload: bytes
    props: dict[str, str]
    content_type: str | None
    retain: bool
    qos: int
    at: float

    @property
    def item_id(self) -> str | None:
        return self.props.get(protocol.PROP_ITEM_ID)

    def json(self) -> dict[str, Any]:
        return protocol.loads(self.payload)


class Recorder:
    def __init__(
        self,
        url: str,
        topic: str = "#",
        client_id: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        from guetteur.uplink.mqttutil import parse_broker_url

        self.address = parse_broker_url(url)
        self.messages: list[Recorded] = []
        self.lock = threading.Lock()
        self.client = new_client(client_id, prefix="test-centre")
        if self.address.tls or ca:
            configure_tls(self.client, ca, cert, key)
        self.topic = topic
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_a: self.connected.clear()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)
            self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        rec = Recorded(
            msg.topic,
            bytes(msg.payload),
            user_properties(msg),
            content_type(msg),
            bool(msg.retain),
            msg.qos,
            time.monotonic(),
        )
        with self.lock:
            self.messages.append(rec)

    def start(self) -> Recorder:
        self.client.connect(self.address.host, self.address.port)
        self.client.loop_start()
        assert self.connected.wait(10), "recorder could not connect"
        time.sleep(0.1)  # SUBACK
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[Recorded]:
        with self.lock:
            return list(self.messages)

    def wait(self, predicate: Callable[[list[Recorded]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return True
            time.sleep(0.05)
        return predicate(self.snapshot())

    def ack(
        self,
        root: str,
        gateway: str,
        ids: list[str],
        resend: list[str] | None = None,
        resync: bool = False,
    ) -> None:
        self.client.publish(
            f"{root}/{gateway}/ack", protocol.ack_message(ids, resend, resync), qos=1
        )

    def publish_raw(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)
