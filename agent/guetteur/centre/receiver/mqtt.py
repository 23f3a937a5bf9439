"""The centre receiver's MQTT side: a persistent session (fixed client id, clean_start false,
long session expiry) so the broker queues messages while the receiver is down; shared
subscriptions (``$share/GROUP/...``) so several receivers (servers) split the load; PUBACKs sent
only after the store's commit; end-to-end acks on ``{root}/{gw}/ack``, and a resync request to a
gateway that comes online.

Hand-off: the network thread queues messages for the store thread. The queue needs no bound of
its own: the broker sends at most ``RECEIVE_MAXIMUM`` unacknowledged messages (MQTT 5 Receive
Maximum), and the receiver acknowledges nothing it has not stored — while the database is away,
the batch waits and is tried again, and the broker and the gateways keep the rest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import socket
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from guetteur.centre.receiver.parse import Incoming
from guetteur.centre.receiver.store import Replies, Store, StoreUnavailable
from guetteur.uplink import protocol
from guetteur.uplink.mqttutil import configure_tls, content_type, parse_broker_url, user_properties

log = logging.getLogger(__name__)

DEFAULT_GROUP = "guetteur-receivers"
SESSION_EXPIRY_S = 7 * 86400
BATCH = 500  # most messages stored (and acknowledged) per transaction
RECEIVE_MAXIMUM = 2 * BATCH  # unacknowledged messages the broker may have in flight to us
RETRY_MAX_S = 30.0


class Receiver:
    """The MQTT side: a persistent session, shared subscriptions, PUBACK after commit, acks.

    ``store``: a Store (the server shares its database), or a directory for the embedded layout
    (``DIR/receiver.db`` and the media tree)."""

    def __init__(
        self,
        url: str,
        store: Store | str | os.PathLike[str],
        root: str = protocol.DEFAULT_ROOT,
        share_group: str | None = DEFAULT_GROUP,
        client_id: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self.root = root
        self.address = parse_broker_url(url)
        if isinstance(store, Store):
            self.store, self._owns_store = store, False
            default_seed = f"{socket.gethostname()}:{store.db.describe()}"
        else:
            self.store, self._owns_store = Store.open_directory(store, root), True
            default_seed = f"{socket.gethostname()}:{Path(store).resolve()}"
        self.share_group = share_group
        self.client_id = (
            client_id or "receiver-" + hashlib.sha256(default_seed.encode()).hexdigest()[:12]
        )
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if self.address.username:
            self._client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls or ca_file or cert_file:
            configure_tls(self._client, ca_file, cert_file, key_file)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 10)
        self._queue: queue.Queue[Incoming | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.database_ok = threading.Event()
        self.database_ok.set()

    @property
    def stats(self) -> dict[str, int]:
        return self.store.stats

    def topics(self) -> list[str]:
        prefix = f"$share/{self.share_group}/" if self.share_group else ""
        base = f"{self.root}/+"
        return [
            prefix + t
            for t in (
                f"{base}/cam/+/event",
                f"{base}/cam/+/snapshot",
                f"{base}/clip/+/+",
                f"{base}/audit",
            )
        ]

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self._worker = threading.Thread(target=self._work, name="receiver", daemon=True)
        self._worker.start()
        self._client.connect_async(
            self.address.host, self.address.port, keepalive=30, clean_start=False, properties=props
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(10.0)
        self._client.disconnect()
        self._client.loop_stop()
        if self._owns_store:
            self.store.close()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        if reason.is_failure:
            log.error("receiver: broker refused the connection: %s; retrying", reason)
            return
        for topic in self.topics():
            client.subscribe(topic, qos=1)
        # plain, not shared: retained statuses are not sent on shared subscriptions, and every
        # server keeps the fleet's state
        client.subscribe(f"{self.root}/+/status", qos=1)
        client.subscribe(f"{self.root}/+/cam/+/status", qos=1)
        self.connected.set()
        log.info(
            "receiver %s: connected to %s:%d (session present: %s)",
            self.client_id,
            self.address.host,
            self.address.port,
            getattr(flags, "session_present", "?"),
        )

    def _on_disconnect(self, *_args: Any) -> None:
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("receiver: disconnected from the broker; reconnecting")
        self.connected.clear()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.put(
            Incoming(
                msg.topic,
                bytes(msg.payload),
                user_properties(msg),
                content_type(msg),
                msg.mid,
                msg.qos,
                bool(msg.retain),
            )
        )

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            if not self._store_batch(batch) or stop:
                return

    def _store_batch(self, batch: list[Incoming]) -> bool:
        """Store, then acknowledge; while the database is away, keep the batch and try again
        (the broker holds back more). False when stopped meanwhile."""
        delay = 1.0
        while True:
            try:
                replies = self.store.handle_batch(batch)
                break
            except StoreUnavailable as exc:
                if self.database_ok.is_set():
                    log.error(
                        "receiver: database %s unreachable (%s); %d message(s) kept, not "
                        "acknowledged; retrying every few seconds",
                        self.store.db.describe(),
                        exc,
                        len(batch),
                    )
                self.database_ok.clear()
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, RETRY_MAX_S)
        if not self.database_ok.is_set():
            log.warning("receiver: database %s is back; storing again", self.store.db.describe())
            self.database_ok.set()
        for msg in batch:
            if msg.qos > 0:
                self._client.ack(msg.mid, msg.qos)
        self._send_replies(replies)
        for gw in sorted(replies.resync):
            self._client.publish(
                f"{self.root}/{gw}/ack", protocol.ack_message([], resync=True), qos=1
            )
            log.info("receiver: gateway %s is online; asked it to re-send what is in flight", gw)
        return True

    def _send_replies(self, replies: Replies) -> None:
        for gw in set(replies.ids) | set(replies.resend):
            ids, resend = replies.ids.get(gw, []), replies.resend.get(gw, [])
            for i in range(0, max(len(ids), len(resend), 1), protocol.MAX_ACK_IDS):
                part_ids = ids[i : i + protocol.MAX_ACK_IDS]
                part_resend = resend[i : i + protocol.MAX_ACK_IDS]
                if part_ids or part_resend:
                    self._client.publish(
                        f"{self.root}/{gw}/ack", protocol.ack_message(part_ids, part_resend), qos=1
                    )
