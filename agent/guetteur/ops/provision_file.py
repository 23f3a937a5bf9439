"""The provisioning file (``guetteur-provision.yaml`` on the boot partition): its keys, how it is
parsed and validated, and the error that lists every problem at once. What is done with it is
:mod:`guetteur.ops.provision`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from guetteur.config import validation_problems
from guetteur.errors import GuetteurError
from guetteur.uplink.protocol import gateway_id_problem

PROVISION_FILE = "guetteur-provision.yaml"


class ProvisionError(GuetteurError):
    """Provisioning refused; ``problems`` are ``key.path: sentence`` lines a technician can act on."""

    def __init__(self, code: str, problems: list[str]) -> None:
        super().__init__(code, "; ".join(problems))
        self.problems = problems

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def report(self) -> str:
        lines = [f"provisioning refused ({self.code}): {len(self.problems)} problem(s)"]
        lines += [f"  {p}" for p in self.problems]
        lines.append("  nothing was changed; fix the file on the boot partition and reboot")
        return "\n".join(lines)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProvisionCamera(_Model):
    id: str = Field(description="Camera id (letters, digits, '-', '_')")
    url: str = Field(description="Stream URL (rtsp://...)")
    sub_url: str | None = Field(None, description="Sub-stream URL")
    username: str | None = Field(None, description="Stream user")
    password: SecretStr | None = Field(None, description="Stream password")
    ptz: dict[str, Any] | None = Field(
        None,
        description="PTZ settings, as cameras[].ptz in the agent config (docs/config-reference.md), "
        "e.g. {protocol: pelco-d, serial_port: /dev/ttyS1, address: 1}",
    )


class DiscoverCredentials(_Model):
    username: str | None = Field(None, description="ONVIF user for GetStreamUri")
    password: SecretStr | None = Field(None, description="ONVIF password")


class ProvisionFile(_Model):
    version: int = Field(1, description="Format version of this file (1)")
    gateway_id: str = Field(description="This gateway's id, as the centre knows it")
    site: str | None = Field(None, description="Free-text site name shown to operators")
    broker_url: str = Field(
        description="Centre broker: mqtts://HOST:PORT (or mqtt:// on a lab bench)"
    )
    ca_certificate: str | None = Field(
        None, description="CA certificate: a file name on the boot partition or inline PEM"
    )
    device_certificate: str | None = Field(
        None,
        description="Pre-issued device certificate (file name or PEM), when the centre issues it ahead",
    )
    enrolment_token: SecretStr | None = Field(
        None, description="One-time enrolment token from the centre"
    )
    enrolment_token_ttl_hours: float = Field(
        72.0, gt=0, le=720, description="Hours after which an unused enrolment token is deleted"
    )
    centre_keys: list[str] = Field(
        default_factory=list,
        description="The centre's command-signing public keys: file names on the boot partition "
        "or inline PEM; gateways run only commands signed by one of them",
    )
    cameras: list[ProvisionCamera] | str = Field(description="Cameras, or the word 'discover'")
    discover: DiscoverCredentials | None = Field(
        None, description="Credentials used when cameras is 'discover'"
    )
    board: str | None = Field(
        None, description="Board profile override (rpi4, rpi5, jetson-orin-nano, generic-x86)"
    )

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != 1:
            raise ValueError(
                "only version 1 is known; this gateway software is older than the file"
            )
        return v

    @field_validator("gateway_id")
    @classmethod
    def _gw(cls, v: str) -> str:
        problem = gateway_id_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("broker_url")
    @classmethod
    def _url(cls, v: str) -> str:
        try:
            parts = urlsplit(v)
            port = parts.port
        except ValueError:
            raise ValueError(
                f"{v!r} does not parse as a URL (expected mqtts://HOST:PORT)"
            ) from None
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"{v!r}: expected mqtts://HOST:PORT or mqtt://HOST:PORT")
        if port == 0:
            raise ValueError(f"{v!r}: port 0 is not a broker port")
        return v

    @field_validator("cameras")
    @classmethod
    def _cameras(cls, v: list[ProvisionCamera] | str) -> list[ProvisionCamera] | str:
        if isinstance(v, str) and v != "discover":
            raise ValueError("expected a list of cameras or the word 'discover'")
        return v


def _pydantic_problems(exc: ValidationError) -> list[str]:
    return validation_problems(
        exc,
        unknown="unknown key (check the spelling against docs/technician.md)",
        skip=frozenset({"list[ProvisionCamera]", "str"}),  # union branch names, not keys
    )


def parse_provision_text(text: str, source: str = PROVISION_FILE) -> ProvisionFile:
    """Parse and validate the provisioning YAML. Raises ProvisionError listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProvisionError("provision.syntax", [f"{source}: not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ProvisionError(
            "provision.invalid", [f"{source}: expected a mapping of keys to values"]
        )
    try:
        return ProvisionFile.model_validate(raw)
    except ValidationError as exc:
        raise ProvisionError("provision.invalid", _pydantic_problems(exc)) from None
