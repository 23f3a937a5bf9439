"""MQTT interface version 1: topic layout, message schemas and (de)serialisation.

Shared by the agent and the centre-side tools, so both sides agree by construction. See
docs/mqtt-interface.md and docs/asyncapi.yaml for the contract in prose and schema form.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

VERSION = 1
DEFAULT_ROOT = "guetteur/v1"

# Ids that appear in topics and file names: no separators, no wildcards, no dots first.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def valid_id(value: str) -> bool:
    return bool(ID_PATTERN.match(value))


@dataclass(frozen=True)
class Topics:
    """Every topic of one gateway under ``{root}/{gw}``."""

    root: str
    gateway: str

    @property
    def base(self) -> str:
        return f"{self.root}/{self.gateway}"

    def full(self, relative: str) -> str:
        return f"{self.base}/{relative}"

    @property
    def status(self) -> str:
        return self.full("status")

    def camera_status(self, camera: str) -> str:
        return self.full(f"cam/{camera}/status")

    def event(self, camera: str) -> str:
        return self.full(f"cam/{camera}/event")

    def snapshot(self, camera: str) -> str:
        return self.full(f"cam/{camera}/snapshot")

    def clip(self, clip_id: str, n: int | str) -> str:
        return self.full(f"clip/{clip_id}/{n}")

    def live(self, camera: str, session: str) -> str:
        return self.full(f"cam/{camera}/live/{session}")

    @property
    def audit(self) -> str:
        return self.full("audit")

    def command(self, verb: str) -> str:
        return self.full(f"cmd/{verb}")

    @property
    def command_filter(self) -> str:
        return self.full("cmd/+")

    @property
    def ack(self) -> str:
        return self.full("ack")

    def reply(self, client_id: str) -> str:
        """Conventional response topic for a centre tool (any topic works: MQTT 5 says where)."""
        return f"{self.root}/_reply/{client_id}"


# Relative topic builders, for OutboundItem.topic.
def rel_event(camera: str) -> str:
    return f"cam/{camera}/event"


def rel_snapshot(camera: str) -> str:
    return f"cam/{camera}/snapshot"


def rel_clip(clip_id: str, n: int | str) -> str:
    return f"clip/{clip_id}/{n}"


REL_AUDIT = "audit"


def parse_topic(root: str, topic: str) -> dict[str, str] | None:
    """Split a full topic into its parts: gateway, kind and ids. None if not ours."""
    if not topic.startswith(root + "/"):
        return None
    parts = topic[len(root) + 1 :].split("/")
    if len(parts) < 2:
        return None
    out = {"gateway": parts[0]}
    rest = parts[1:]
    if rest[0] == "cam" and len(rest) >= 3:
        out["camera"] = rest[1]
        out["kind"] = rest[2]
        if rest[2] == "live" and len(rest) == 4:
            out["session"] = rest[3]
    elif rest[0] == "clip" and len(rest) == 3:
        out["kind"] = "clip"
        out["clip_id"] = rest[1]
        out["part"] = rest[2]
    elif rest[0] == "cmd" and len(rest) == 2:
        out["kind"] = "cmd"
        out["verb"] = rest[1]
    else:
        out["kind"] = "/".join(rest)
    return out


def dumps(message: dict[str, Any]) -> bytes:
    """Serialise a JSON message, stamping ``"v": 1``."""
    body = {"v": VERSION, **message}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class MessageError(ValueError):
    """A payload that is not a version-1 JSON object."""


def loads(payload: bytes | str) -> dict[str, Any]:
    """Parse a JSON message; raises MessageError with a sentence when it is not one of ours."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError("payload must be a JSON object")
    v = data.get("v", VERSION)
    if v != VERSION:
        raise MessageError(f'unsupported message version "v": {v!r} (this gateway speaks 1)')
    return data


# Error codes of command replies: machine-readable, stable.
class ErrorCode:
    BAD_REQUEST = "bad_request"  # not JSON, missing or wrong fields
    UNKNOWN_VERB = "unknown_verb"
    UNKNOWN_CAMERA = "unknown_camera"
    UNKNOWN_SESSION = "unknown_session"
    CAMERA_DOWN = "camera_down"
    NOT_SUPPORTED = "not_supported"
    OUT_OF_RANGE = "out_of_range"
    FORBIDDEN = "forbidden"
    LOCKED = "locked"
    LIMIT_REACHED = "limit_reached"
    RATE_LIMITED = "rate_limited"
    NOT_FOUND = "not_found"
    TIMEOUT = "timeout"
    DEVICE_ERROR = "device_error"
    INTERNAL = "internal_error"


def reply_ok(request_id: str | None, **fields: Any) -> dict[str, Any]:
    return {"ok": True, "id": request_id, **fields}


def reply_error(request_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "id": request_id, "error": {"code": code, "message": message}}
