"""``centre.yaml``: the configuration of ``guetteur centre serve`` (and ``centre receive -c``).

Validated like the gateway's file, with the same error style (every wrong key path at once, via
``guetteur.config.validation_problems``) and the same ``${env:…}``, ``${file:…}``,
``${secret:…}`` references. ``guetteur centre config check FILE`` validates a file;
``guetteur centre config reference`` prints docs/centre-config-reference.md.

    centre_id: csu-nancy
    database: {url: "postgresql+psycopg://guetteur@db.csu.local/guetteur"}
    media_dir: /srv/guetteur/media
    signing_key_file: /etc/guetteur-centre/signing.pem
    mqtt: {url: "mqtts://broker.csu.local:8883", client_id: centre-srv-1,
           tls: {ca_file: ca.pem, cert_file: centre.pem, key_file: centre.key}}
    http: {listen: 0.0.0.0, port: 8080}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from guetteur.config import ConfigError, ConfigSection, TlsConfig
from guetteur.config.link import check_broker_url, check_topic_root
from guetteur.config.loading import validate_model
from guetteur.uplink.protocol import DEFAULT_ROOT, ID_PATTERN

MAX_RETENTION_DAYS = 30  # the legal maximum, as at the gateway


class DatabaseConfig(ConfigSection):
    url: str = Field(
        "sqlite:////var/lib/guetteur-centre/centre.db",
        description="SQLAlchemy URL: postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/NAME "
        "(production, several servers) or sqlite:////path/centre.db (one server)",
    )
    pool_size: int = Field(10, ge=1, le=200, description="Connections kept open per server")
    migrate_on_start: bool = Field(
        True, description="Bring the schema up to date when the server starts"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("postgresql", "sqlite:")):
            raise ValueError("expected postgresql+psycopg://… or sqlite:////path/centre.db")
        return v


class CentreMqttConfig(ConfigSection):
    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="The gateways' broker: mqtt://HOST:PORT or mqtts://HOST:PORT (TLS); a "
        "user name and password, if the broker wants them, go in the URL (${secret:...})",
    )
    root: str = Field(DEFAULT_ROOT, description="Topic prefix of the whole interface")
    client_id: str | None = Field(
        None,
        description="The receiver's MQTT client id, stable and unique per server (the broker "
        "keeps its session while it restarts); default {centre_id}-{server}-rx",
    )
    tls: TlsConfig | None = Field(
        None, description="CA, and the centre's client certificate (CN centre) and key"
    )
    share_group: str = Field(
        "guetteur-receivers",
        description="Shared-subscription group of the receivers: the servers of one centre "
        "split the gateways' traffic ('' for plain subscriptions)",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_broker_url(v)

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return check_topic_root(v)


class HttpConfig(ConfigSection):
    listen: str = Field("127.0.0.1", description="Address the API and console listen on")
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the API and console")
    cert_file: str | None = Field(
        None, description="TLS certificate (PEM) to serve HTTPS directly; else behind a proxy"
    )
    key_file: str | None = Field(None, description="Key of cert_file")
    static_dir: str | None = Field(
        None, description="Folder served at / (the console); default: the one in the package"
    )
    secure_cookies: bool = Field(
        False, description="Mark the session cookie Secure (set when served over HTTPS)"
    )


class AuthConfig(ConfigSection):
    session_hours: float = Field(
        10.0, gt=0, le=24, description="A login lasts this long at most (a shift and a margin)"
    )
    idle_minutes: float = Field(30.0, gt=0, description="A session unused this long expires")
    max_failures: int = Field(
        5, ge=1, description="Failed logins (per account or per address) before a pause"
    )
    failure_window_minutes: float = Field(
        15.0, gt=0, description="Failed logins are counted over this window"
    )
    api_token_days: int = Field(
        90, ge=1, le=3650, description="Default lifetime of a script's API token"
    )


class CommandsConfig(ConfigSection):
    timeout_s: float = Field(
        5.0, gt=0, le=120, description="How long the API waits for a gateway's reply"
    )
    lifetime_s: float = Field(
        30.0, gt=0, le=600, description="Signed commands expire this long after signing"
    )
    ptz_session_idle_s: float = Field(
        60.0, gt=0, description="A PTZ session ends after this long without a command"
    )


class LiveConfig(ConfigSection):
    lease_s: float = Field(
        30.0, ge=5, le=300, description="Lease of a live view: the client renews within it"
    )
    max_sessions: int = Field(64, ge=1, description="Live views relayed at once by this server")
    client_queue: int = Field(
        64, ge=4, description="Fragments queued per viewer; beyond, skip to the next keyframe"
    )


class RetentionConfig(ConfigSection):
    max_age_days: float = Field(
        MAX_RETENTION_DAYS,
        gt=0,
        le=MAX_RETENTION_DAYS,
        description="Events, snapshots, clips and extractions older than this are purged "
        "(30 days at most); extractions under judicial hold are kept",
    )
    interval_minutes: float = Field(60.0, gt=0, description="How often the purge runs")


class ExtractionsConfig(ConfigSection):
    dir: str = Field(
        "/var/lib/guetteur-centre/extractions",
        description="Folder of police extractions (one sub-folder each, with its signed manifest)",
    )
    timeout_minutes: float = Field(
        30.0, gt=0, description="An extraction whose video has not arrived by then has failed"
    )


class ReceiverLimits(ConfigSection):
    max_json_bytes: int = Field(256 * 1024, ge=1024, description="Largest JSON message")
    max_snapshot_bytes: int = Field(16 * 2**20, ge=1024, description="Largest snapshot")
    max_chunk_bytes: int = Field(16 * 2**20, ge=1024, description="Largest clip chunk")
    max_clip_bytes: int = Field(
        4 * 2**30, ge=1024, description="Largest clip a manifest may declare"
    )
    max_chunks: int = Field(16384, ge=1, description="Most chunks a manifest may declare")


class ReceiverConfig(ConfigSection):
    enabled: bool = Field(True, description="Store what the gateways send (events, clips...)")
    limits: ReceiverLimits = Field(
        default_factory=ReceiverLimits,
        description="Bounds on gateway messages; beyond, refused and acknowledged",
    )


class CentreConfig(ConfigSection):
    centre_id: str = Field(
        description="This centre's id: names its reports and default MQTT client ids"
    )
    server_id: str | None = Field(
        None, description="This server's id among the centre's servers; default: the host name"
    )
    database: DatabaseConfig = Field(default_factory=DatabaseConfig, description="The database")
    media_dir: str = Field(
        "/var/lib/guetteur-centre/media",
        description="Content-addressed tree of snapshots and clips (shared by every server)",
    )
    signing_key_file: str = Field(
        description="The centre's Ed25519 private key (PEM): signs commands, extraction "
        "manifests and register reports (`guetteur centre key generate FILE`)"
    )
    mqtt: CentreMqttConfig = Field(
        default_factory=CentreMqttConfig, description="The broker of the gateways"
    )
    http: HttpConfig = Field(default_factory=HttpConfig, description="The API and the console")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Logins and sessions")
    commands: CommandsConfig = Field(
        default_factory=CommandsConfig, description="Commands to gateways"
    )
    live: LiveConfig = Field(default_factory=LiveConfig, description="Live views relayed")
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig, description="Purge of old data"
    )
    extractions: ExtractionsConfig = Field(
        default_factory=ExtractionsConfig, description="Police extractions"
    )
    receiver: ReceiverConfig = Field(
        default_factory=ReceiverConfig, description="Storing what gateways send"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    secrets_file: str | None = Field(
        None, description="YAML mapping of secrets for ${secret:NAME} references"
    )

    @field_validator("centre_id", "server_id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and not ID_PATTERN.match(v):
            raise ValueError("expected 1-64 letters, digits, '-' or '_'")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
        return v.upper()

    @property
    def server_name(self) -> str:
        return self.server_id or os.uname().nodename.split(".")[0][:64]


def validate_centre_config(raw: Any, source: str = "centre config") -> CentreConfig:
    return validate_model(CentreConfig, raw, source)


def load_centre_config(path: str | os.PathLike[str]) -> CentreConfig:
    """Read and validate a centre.yaml. Raises ConfigError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, [f"(file): cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"(syntax): not valid YAML: {exc}"]) from None
    return validate_centre_config(raw, source)
