"""The ``commands`` section: who the gateway takes commands from (the centre's signing keys),
where replies may go, and the per-operator quotas applied before anything is audited or run."""

from __future__ import annotations

from pydantic import Field, field_validator

from guetteur.config.base import ConfigSection
from guetteur.uplink.protocol import DEFAULT_REPLY_PREFIX

DEFAULT_CENTRE_KEYS = "/etc/guetteur/centre-keys.pem"


class CommandsConfig(ConfigSection):
    trusted_keys: list[str] = Field(
        default_factory=lambda: [DEFAULT_CENTRE_KEYS],
        description="PEM files holding the centre's Ed25519 public keys (one or more each); a "
        "command runs only when signed by one of them. Several keys at once is how the centre's "
        "key rotates (provisioning writes the first file)",
    )
    reply_prefix: str = Field(
        DEFAULT_REPLY_PREFIX,
        description="The centre's reply area under the topic root: a command's response topic "
        "must lie below {root}/{reply_prefix}, or the command is refused",
    )
    max_clock_skew_s: float = Field(
        30.0, ge=0, le=300, description="Clock difference tolerated between centre and gateway"
    )
    rate_per_s: float = Field(
        5.0, gt=0, description="Commands per second one operator may send for one verb"
    )
    burst: int = Field(20, ge=1, description="Commands one operator may send at once per verb")
    refusals_audited_per_s: float = Field(
        50.0,
        gt=0,
        description="Refused (unverifiable) commands per second audited for one verb; beyond, "
        "they are refused without an audit record (a flood of forged commands)",
    )
    snapshots_per_minute: int = Field(
        12, ge=1, description="Snapshot commands one operator may send per minute"
    )
    exports_per_hour: int = Field(
        20, ge=1, description="Export commands one operator may send per hour"
    )
    camera_queue: int = Field(
        8,
        ge=1,
        le=256,
        description="Commands waiting per camera; more get 'busy' at once, so one stuck camera "
        "never delays the others or status",
    )
    gateway_workers: int = Field(
        2, ge=1, le=16, description="Threads running commands that name no camera (status, live)"
    )
    audit_budget_records: int = Field(
        50_000,
        ge=100,
        description="Audit records that may wait in the outbox; beyond, commands that need one "
        "are refused (audit_unavailable) rather than run unrecorded",
    )
    audit_field_chars: int = Field(
        200, ge=16, le=4096, description="Longest text kept in one audit record field"
    )

    @field_validator("reply_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.endswith("/") or v.startswith(("/", "$")) or any(c in v for c in "+#\0"):
            raise ValueError("expected a topic level ending with '/', without wildcards or '$'")
        return v
