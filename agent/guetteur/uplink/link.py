"""The MQTT session with the centre's broker (paho-mqtt 2, MQTT 5).

Owns: connection, TLS, persistent session, reconnection with capped backoff, the Last Will that
marks the gateway offline, the retained status messages, the command subscription (each command
runs on a worker thread, so a slow camera never stalls the network loop) and raw publishing for
the publisher and live sessions.

Commands run off the network thread in lanes (``uplink.lanes``): one bounded queue per camera and
a small pool for commands naming none, so one stuck camera keeps its trouble to itself. A
command's reply goes to its MQTT 5 response topic only when that lies in the centre's reply area
(``commands.reply_prefix``); otherwise the command is refused, the refusal logged and answered on
the gateway's own ``reply/{verb}`` topic, so a forged response topic can never make the gateway
publish on one of its stream topics (a reply stored by the centre as an event).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from guetteur.config import MqttConfig
from guetteur.uplink import messages, protocol
from guetteur.uplink.commands import VERB_PATTERN, CommandDispatcher
from guetteur.uplink.lanes import CommandLanes
from guetteur.uplink.mqttutil import (
    configure_client,
    new_client,
    parse_broker_url,
    publish_properties,
    user_properties,
)
from guetteur.uplink.protocol import Topics
from guetteur.uplink.publish import ClipFile, OutboundItem

log = logging.getLogger(__name__)

MessageCallback = Callable[[mqtt.MQTTMessage], None]


class Link:
    def __init__(
        self,
        config: MqttConfig,
        gateway_id: str,
        dispatcher: CommandDispatcher | None = None,
        command_workers: int = 2,
        reply_prefix: str = protocol.DEFAULT_REPLY_PREFIX,
        camera_queue: int = 8,
    ) -> None:
        self.config = config
        self.gateway_id = gateway_id
        self.topics = Topics(config.root, gateway_id)
        self.dispatcher = dispatcher
        self._address = parse_broker_url(config.url)
        self.client_id = config.client_id or f"guetteur-{gateway_id}"
        self._client = new_client(self.client_id)
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._pending_subs: set[int] = set()
        self._sub_lock = threading.Lock()
        self._subscriptions: dict[str, tuple[int, MessageCallback]] = {}
        self._connect_listeners: list[Callable[[], object]] = []
        self._disconnect_listeners: list[Callable[[], None]] = []
        self.session_present = False  # did the broker still hold our session at the last CONNACK
        self.connects = 0  # successful connections since start (1 + reconnections)
        self.reply_prefix = reply_prefix
        self.lanes = CommandLanes(camera_depth=camera_queue, gateway_workers=command_workers)
        self._last_error: str | None = None
        self._started = False
        self._setup()

    # -- set-up --------------------------------------------------------------------------------

    def _setup(self) -> None:
        c = self._client
        configure_client(c, self.config, self._address)
        c.will_set(
            self.topics.status,
            protocol.dumps(messages.gateway_offline(self.gateway_id, "link lost", stamped=False)),
            qos=1,
            retain=True,
        )
        c.reconnect_delay_set(min_delay=1, max_delay=max(1, int(self.config.reconnect_max_s)))
        c.max_queued_messages_set(0)
        # QoS 1 messages awaiting their PUBACK: enough to keep a backlog drain streaming (the
        # outbox bounds what it hands over with its own in-flight window)
        c.max_inflight_messages_set(100)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.subscribe(self.topics.command_filter, self._on_command, qos=1)

    def start(self) -> None:
        """Connect in the background; reconnects forever until ``stop``."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        self._client.connect_async(
            self._address.host,
            self._address.port,
            keepalive=self.config.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()
        self._started = True
        log.info(
            "link: connecting to %s:%d as %s (tls=%s)",
            self._address.host,
            self._address.port,
            self.client_id,
            self._address.tls or self.config.tls is not None,
        )

    def stop(self, status: dict[str, Any] | None = None) -> None:
        """Publish a clean offline status, disconnect and stop the network loop."""
        if not self._started:
            return
        self._started = False
        if self.connected:
            body = messages.gateway_offline(self.gateway_id, "stopped")
            body.update(status or {})
            info = self._client.publish(
                self.topics.status, protocol.dumps(body), qos=1, retain=True
            )
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        self.lanes.close()

    # -- state ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def alive(self) -> bool:
        """The network loop is running (connected or reconnecting). A broker outage is normal
        life for a gateway and must not trip the watchdog; a dead loop thread must."""
        thread = getattr(self._client, "_thread", None)  # paho's loop_start thread
        return self._started and thread is not None and thread.is_alive()

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def wait_subscribed(self, timeout: float) -> bool:
        """Connected and every subscription (commands, acks) acknowledged by the broker: from
        then on, a command the centre sends reaches this gateway."""
        return self._connected.wait(timeout) and self._subscribed.wait(timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def add_connect_listener(self, listener: Callable[[], object]) -> None:
        """Called (on the network thread) after every successful (re)connection."""
        self._connect_listeners.append(listener)

    def add_disconnect_listener(self, listener: Callable[[], None]) -> None:
        """Called (on the network thread) when an established connection is lost."""
        self._disconnect_listeners.append(listener)

    # -- publishing ----------------------------------------------------------------------------

    def publish_raw(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        content_type: str | None = None,
        user_props: dict[str, str] | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Publish on a full topic. QoS 0 is dropped while disconnected; QoS 1 is queued by paho."""
        props = publish_properties(content_type, user_props)
        return self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    def publish_json(
        self, topic: str, message: dict[str, Any], qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        return self.publish_raw(
            topic, protocol.dumps(message), qos=qos, retain=retain, content_type="application/json"
        )

    def publish_item(self, item: OutboundItem, qos: int = 1) -> mqtt.MQTTMessageInfo:
        props = dict(item.user_properties)
        props.setdefault("item_id", item.item_id)
        return self.publish_raw(
            self.topics.full(item.topic),
            item.payload,
            qos=qos,
            content_type=item.content_type,
            user_props=props,
        )

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(self, topic: str, callback: MessageCallback, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnection. ``callback`` runs
        on the network thread: it must return at once (no disk commit: keep-alive waits)."""
        self._subscriptions[topic] = (qos, callback)
        self._client.message_callback_add(topic, lambda _c, _u, msg: self._safe(callback, msg))
        if self.connected:
            self._client.subscribe(topic, qos=qos)

    @staticmethod
    def _safe(callback: MessageCallback, msg: mqtt.MQTTMessage) -> None:
        try:
            callback(msg)
        except Exception:  # a bad message must never kill the network loop
            log.exception("link: handler for %s failed; message dropped", msg.topic)

    # -- paho callbacks ------------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: Any,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._last_error = f"broker refused the connection: {reason}"
            log.error(
                "link: %s; retrying (up to every %.0f s)",
                self._last_error,
                self.config.reconnect_max_s,
            )
            return
        self._last_error = None
        self.session_present = bool(getattr(flags, "session_present", False))
        self.connects += 1
        with self._sub_lock:
            self._subscribed.clear()
            self._pending_subs.clear()
            for topic, (qos, _cb) in self._subscriptions.items():
                _rc, mid = client.subscribe(topic, qos=qos)
                if mid is not None:
                    self._pending_subs.add(mid)
            if not self._pending_subs:
                self._subscribed.set()
        self._connected.set()
        log.info("link: connected to %s:%d", self._address.host, self._address.port)
        for listener in list(self._connect_listeners):
            try:
                listener()
            except Exception:
                log.exception("link: connect listener failed")

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, mid: int, _codes: Any, _props: Any
    ) -> None:
        with self._sub_lock:
            self._pending_subs.discard(mid)
            if not self._pending_subs:
                self._subscribed.set()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: Any,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if self._started and (was or self._last_error is None):
            # keep a refusal's reason ("Not authorized") rather than the disconnect that follows
            self._last_error = f"disconnected from broker: {reason}"
            if was:
                log.warning(
                    "link: %s; reconnecting (up to every %.0f s)",
                    self._last_error,
                    self.config.reconnect_max_s,
                )
        if was:
            for listener in list(self._disconnect_listeners):
                try:
                    listener()
                except Exception:
                    log.exception("link: disconnect listener failed")

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        log.debug("link: unexpected message on %s", msg.topic)

    # -- commands ------------------------------------------------------------------------------

    def _on_command(self, msg: mqtt.MQTTMessage) -> None:
        """On the network thread: check where the reply would go, then queue the command on
        its camera's lane; a full lane is answered ``busy`` at once."""
        parts = protocol.parse_topic(self.config.root, msg.topic)
        verb = (parts.get("verb") if parts else None) or ""
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        uprops = user_properties(msg)
        payload = bytes(msg.payload)
        if response_topic is not None:
            problem = protocol.reply_topic_problem(
                response_topic, self.config.root, self.reply_prefix
            )
            if problem:
                log.error(
                    "command %s from %s refused: %s (%r); answered on %s, not run",
                    verb, uprops.get("client_id", "unknown"), problem, response_topic[:200],
                    self._own_reply_topic(verb),
                )  # fmt: skip
                self._reply(
                    None,
                    messages.reply_error(
                        _request_id(payload),
                        protocol.ErrorCode.BAD_REPLY_TOPIC,
                        f"{problem}; the command was not run",
                    ),
                    verb,
                    correlation,
                )
                return
        job = partial(self._run_command, verb, payload, uprops, response_topic, correlation)
        if not self.lanes.submit(_camera_of(payload), job):
            log.warning(
                "command %s from %s refused: its queue is full (camera busy or stuck)",
                verb,
                uprops.get("client_id", "unknown"),
            )
            self._reply(
                response_topic,
                messages.reply_error(
                    _request_id(payload),
                    protocol.ErrorCode.BUSY,
                    "too many commands wait for this camera (busy or not answering); try again",
                ),
                verb,
                correlation,
            )

    def _own_reply_topic(self, verb: str) -> str:
        return self.topics.full(f"reply/{verb if VERB_PATTERN.match(verb) else '_'}")

    def _reply(
        self,
        response_topic: str | None,
        reply: dict[str, Any],
        verb: str,
        correlation: bytes | None,
    ) -> None:
        topic = response_topic or self._own_reply_topic(verb)
        props = publish_properties("application/json", None, None, correlation)
        self._client.publish(topic, protocol.dumps(reply), qos=1, properties=props)

    def _run_command(
        self,
        verb: str,
        payload: bytes,
        uprops: dict[str, str],
        response_topic: str | None,
        correlation: bytes | None,
    ) -> None:
        if self.dispatcher is None:
            reply = messages.reply_error(
                None, protocol.ErrorCode.NOT_SUPPORTED, "this gateway takes no commands"
            )
        else:
            reply = self.dispatcher.handle(verb, payload, uprops)
        self._reply(response_topic, reply, verb, correlation)
        if not reply.get("ok"):
            log.info(
                "command %s from %s refused: %s",
                verb,
                uprops.get("client_id", "unknown"),
                reply["error"]["message"],
            )


def _peek(payload: bytes) -> dict[str, Any] | None:
    try:
        return protocol.loads(payload, protocol.MAX_COMMAND_BYTES)
    except protocol.MessageError:
        return None


def _camera_of(payload: bytes) -> str | None:
    """The camera a command names (its lane), if it is readable at all."""
    data = _peek(payload)
    camera = data.get("camera") if data is not None else None
    return camera if isinstance(camera, str) else None


def _request_id(payload: bytes) -> str | None:
    data = _peek(payload)
    rid = data.get("id") if data is not None else None
    return rid[:128] if isinstance(rid, str) else None


class DirectPublisher:
    """Publishes items straight away with QoS 1 (paho queues them in memory while offline).

    The first, non-durable Publisher. The outbox (guetteur.uplink.outbox.service.Outbox)
    replaces it when enabled.
    """

    def __init__(self, link: Link) -> None:
        self._link = link

    def submit(self, item: OutboundItem) -> None:
        self._link.publish_item(item, qos=1)

    def submit_clip(self, clip: ClipFile) -> None:
        log.warning(
            "clip %s for camera %s not uploaded: clip upload needs the outbox "
            "(outbox.enabled: true)",
            clip.clip_id,
            clip.camera,
        )
