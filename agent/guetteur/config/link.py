"""The ``mqtt`` section: how the gateway reaches the centre's broker (URL, credentials, TLS)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from guetteur.config.base import ConfigSection
from guetteur.uplink.protocol import DEFAULT_ROOT


class TlsConfig(ConfigSection):
    ca_file: str | None = Field(
        None,
        description="CA certificate (PEM) that signed the broker's certificate; system CAs when unset",
    )
    cert_file: str | None = Field(
        None, description="This gateway's client certificate (PEM) for mutual TLS"
    )
    key_file: str | None = Field(None, description="Private key (PEM) of the client certificate")


class MqttConfig(ConfigSection):
    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://HOST:PORT or mqtts://HOST:PORT (TLS)",
    )
    root: str = Field(DEFAULT_ROOT, description="Topic prefix of the whole interface")
    client_id: str | None = Field(
        None, description="MQTT client id; defaults to guetteur-{gateway_id}"
    )
    username: str | None = Field(None, description="Broker user name, when the broker asks for one")
    password: SecretStr | None = Field(
        None, description="Broker password (use ${env:...} or ${secret:...})"
    )
    tls: TlsConfig | None = Field(
        None, description="TLS settings; required by mqtts:// URLs with a private CA"
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval in seconds")
    session_expiry_s: int = Field(
        86400,
        ge=0,
        description="MQTT 5 session expiry: how long the broker keeps our session while we are away",
    )
    reconnect_max_s: float = Field(
        30.0, gt=0, description="Longest wait between two reconnection attempts"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_broker_url(v)

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return check_topic_root(v)


def check_broker_url(v: str) -> str:
    """A broker URL the clients can use (also the centre's ``mqtt.url``)."""
    parts = urlsplit(v)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise ValueError("expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("port is not a number between 0 and 65535") from None
    return v


def check_topic_root(v: str) -> str:
    if not v or v.startswith("/") or v.endswith("/") or any(c in v for c in "+#"):
        raise ValueError("expected a topic prefix without wildcards or leading/trailing '/'")
    return v
