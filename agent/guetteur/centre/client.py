"""Centre-side MQTT client: request/response commands to gateways, and subscriptions.

Used by every centre tool (events, live, ptz, snapshot, receiver). Commands follow MQTT 5
request/response: a Response Topic private to this client and Correlation Data matching the reply.
The tools' shared flags (broker, topic root, TLS files, gateway) are defined here, once.

Gateways run only commands signed by a key they trust (``uplink.command_auth``): a client given
a ``Signer`` (and the operator and role it signs for) signs every command it sends. The centre
server signs for its logged-in operators through the same hook; scripts and tests use a key an
admin issued them (``--signing-key``). The response topic is ``{root}/_reply/{client}/{gateway}``:
the shipped broker ACL lets each gateway write only the level named after itself.
"""

from __future__ import annotations

import argparse
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from guetteur.uplink import messages, protocol
from guetteur.uplink.command_auth import DEFAULT_LIFETIME_S, Signer
from guetteur.uplink.mqttutil import configure_tls, new_client, parse_broker_url, publish_properties

log = logging.getLogger(__name__)


LOCAL_BROKER = "mqtt://127.0.0.1:1883"


class CentreError(RuntimeError):
    """The broker or the gateway could not be reached, or did not answer in time."""


def add_connection_arguments(parser: argparse.ArgumentParser, broker: str | None = None) -> None:
    """``-b/--broker`` (required, or ``broker`` as its default), ``--root``, ``--ca/--cert/--key``:
    the flags every centre tool shares."""
    url_help = "broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT"
    if broker is None:
        parser.add_argument("-b", "--broker", required=True, help=url_help)
    else:
        parser.add_argument(
            "-b", "--broker", default=broker, help=f"{url_help} (default %(default)s)"
        )
    parser.add_argument(
        "--root", default=protocol.DEFAULT_ROOT, help="topic prefix (default %(default)s)"
    )
    parser.add_argument("--ca", help="CA file verifying the broker (mqtts://)")
    parser.add_argument("--cert", help="client certificate (mutual TLS)")
    parser.add_argument("--key", help="client certificate key")


def add_gateway_argument(
    parser: argparse.ArgumentParser, default: str | None = None, help: str = "gateway id"
) -> None:
    """``-g/--gateway``: required, or ``default`` (e.g. ``+``: every gateway)."""
    if default is None:
        parser.add_argument("-g", "--gateway", required=True, help=help)
    else:
        parser.add_argument(
            "-g", "--gateway", default=default, help=f"{help} (default %(default)s)"
        )


def client_from_args(args: argparse.Namespace) -> CentreClient:
    """A client (not yet connected) for the flags of ``add_connection_arguments``: a watcher of
    the broker (``centre events``); raises ValueError with a sentence for a bad broker URL.
    Tools that send commands go through the centre server, which signs them."""
    return CentreClient(
        args.broker, root=args.root, ca_file=args.ca, cert_file=args.cert, key_file=args.key
    )


class CentreClient:
    def __init__(
        self,
        url: str,
        client_id: str | None = None,
        root: str = protocol.DEFAULT_ROOT,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        signer: Signer | None = None,
        operator: str | None = None,
        role: str = "operator",
        command_lifetime_s: float = DEFAULT_LIFETIME_S,
    ) -> None:
        """``signer``: signs every command for ``operator`` with ``role`` (the gateway runs only
        signed commands); ``command_lifetime_s``: how long a command stays valid."""
        self.root = root
        self.signer = signer
        self.operator = operator or "centre"
        self.role = role
        self.command_lifetime_s = command_lifetime_s
        self.address = parse_broker_url(url)
        self.client_id = client_id or f"centre-{uuid.uuid4().hex[:10]}"
        self._client = new_client(self.client_id)
        if self.address.username:
            self._client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls or ca_file or cert_file:
            configure_tls(self._client, ca_file, cert_file, key_file)
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._reply_area = f"{root}/_reply/{self.client_id}"
        self._reply_topic = f"{self._reply_area}/#"
        self._pending: dict[bytes, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._subs: dict[str, tuple[int, Callable[[mqtt.MQTTMessage], None]]] = {}
        self._connected = threading.Event()
        # SUBACKs still awaited for the subscriptions of the last connection: "connected" means
        # subscribed too, so nothing published right after connect() is missed
        self._unacked_subs: set[int] = set()
        self._lock = threading.Lock()
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.message_callback_add(self._reply_topic, self._on_reply)

    # -- lifecycle -----------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> CentreClient:
        from paho.mqtt.packettypes import PacketTypes

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s
        try:
            self._client.connect(
                self.address.host,
                self.address.port,
                keepalive=30,
                clean_start=self._clean_start,
                properties=props,
            )
        except OSError as exc:
            raise CentreError(
                f"cannot reach broker {self.address.host}:{self.address.port}: {exc}"
            ) from None
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise CentreError(
                f"broker {self.address.host}:{self.address.port} did not accept "
                f"the connection and its subscriptions within {timeout:.0f} s"
            )
        return self

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> CentreClient:
        return self.connect()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def paho(self) -> mqtt.Client:
        """The underlying paho client (for tools that need raw publishing)."""
        return self._client

    # -- commands ------------------------------------------------------------------------------

    def request(
        self,
        gateway: str,
        verb: str,
        payload: dict[str, Any],
        timeout: float = 5.0,
        *,
        operator: str | None = None,
        role: str | None = None,
    ) -> dict[str, Any]:
        """Send ``cmd/{verb}`` to a gateway and wait for its one reply; signed (with a signer)
        for ``operator``/``role``, by default this client's (a server signs for each of its
        logged-in operators through one client)."""
        correlation = uuid.uuid4().bytes
        done = threading.Event()
        box: list[dict[str, Any]] = []
        with self._lock:
            self._pending[correlation] = (done, box)
        body = {**payload, "id": payload.get("id") or uuid.uuid4().hex}
        body = self.sign(gateway, verb, body, operator=operator, role=role)
        props = publish_properties(
            "application/json",
            {"client_id": self.client_id},
            protocol.Topics(self.root, gateway).reply(self.client_id),
            correlation,
        )
        topic = f"{self.root}/{gateway}/cmd/{verb}"
        self._client.publish(topic, protocol.dumps(body), qos=1, properties=props)
        try:
            if not done.wait(timeout):
                raise CentreError(f"gateway {gateway} did not answer {verb} within {timeout:.0f} s")
        finally:
            with self._lock:
                self._pending.pop(correlation, None)
        return box[0]

    def sign(
        self,
        gateway: str,
        verb: str,
        body: dict[str, Any],
        *,
        operator: str | None = None,
        role: str | None = None,
    ) -> dict[str, Any]:
        """``body`` signed for ``operator``/``role`` (default: this client's); unchanged without
        a signer, or when it is signed already (sent as it is)."""
        if self.signer is None or "auth" in body:
            return body
        return self.signer.sign(
            gateway,
            verb,
            body,
            operator or self.operator,
            role or self.role,
            self.command_lifetime_s,
        )

    def _on_reply(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        with self._lock:
            waiter = self._pending.get(bytes(correlation)) if correlation else None
        if waiter is None:
            return
        try:
            waiter[1].append(protocol.loads(bytes(msg.payload)))
        except protocol.MessageError as exc:
            waiter[1].append(messages.reply_error(None, "bad_reply", str(exc)))
        waiter[0].set()

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(
        self, topic: str, callback: Callable[[mqtt.MQTTMessage], None], qos: int = 1
    ) -> None:
        """Subscribe (again after reconnections); ``callback`` runs on the network thread."""
        self._subs[topic] = (qos, callback)
        self._client.message_callback_add(topic, lambda _c, _u, m: self._safe(callback, m))
        if self._connected.is_set():
            self._client.subscribe(topic, qos=qos)

    def unsubscribe(self, topic: str) -> None:
        self._subs.pop(topic, None)
        self._client.message_callback_remove(topic)
        self._client.unsubscribe(topic)

    @staticmethod
    def _safe(callback: Callable[[mqtt.MQTTMessage], None], msg: mqtt.MQTTMessage) -> None:
        try:
            callback(msg)
        except Exception:
            log.exception("centre: handler for %s failed", msg.topic)

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        if reason.is_failure:
            log.error("centre: broker refused the connection: %s", reason)
            return
        topics = [(self._reply_topic, 1)] + [(t, qos) for t, (qos, _cb) in self._subs.items()]
        mids = [client.subscribe(t, qos=qos)[1] for t, qos in topics]
        with self._lock:
            self._unacked_subs = {mid for mid in mids if mid is not None}

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, *_rest: Any) -> None:
        with self._lock:
            self._unacked_subs.discard(mid)
            if not self._unacked_subs:
                self._connected.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self._connected.clear()
