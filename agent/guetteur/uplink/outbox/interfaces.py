"""What the outbox needs of the link (``guetteur.uplink.link.Link`` has it; the tests' in-memory
link too), and the outbox's error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from guetteur.uplink.protocol import Topics


class InboundMessage(Protocol):
    """What the outbox reads of a received MQTT message (paho's MQTTMessage has it)."""

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes | bytearray: ...


class OutboxLink(Protocol):
    """What the outbox needs of guetteur.uplink.link.Link. Callbacks run on the link's network
    thread: they must return at once."""

    topics: Topics

    @property
    def connected(self) -> bool: ...

    def publish_raw(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        content_type: str | None = None,
        user_props: dict[str, str] | None = None,
    ) -> Any: ...

    def subscribe(
        self, topic: str, callback: Callable[[InboundMessage], None], qos: int = 1
    ) -> None: ...

    def add_connect_listener(self, listener: Callable[[], None]) -> None: ...


class OutboxError(RuntimeError):
    pass
