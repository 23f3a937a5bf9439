"""The MQTT contract's JSON Schemas (docs/schemas/*.json), for any test to check real messages.

    from tests.contract import validate, validate_payload
    validate("event", message_dict)            # raises ContractError naming the field and rule
    validate_payload("ack", msg.payload)       # bytes → JSON → validate
    kind_for_topic(root, topic)                # "event", "clip-manifest", "command-ptz", ...

Kinds are the schema file names without ``.json``: event, gateway-status, camera-status, audit,
ack, reply, clip-manifest, clip-chunk-properties, snapshot-properties, outbox-properties,
live-properties, command-{verb}.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from guetteur.uplink import protocol

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


class ContractError(AssertionError):
    pass


def kinds() -> list[str]:
    return sorted(p.stem for p in SCHEMAS.glob("*.json"))


@cache
def validator(kind: str) -> Draft202012Validator:
    path = SCHEMAS / f"{kind}.json"
    if not path.exists():
        raise ContractError(f"no schema {path.name} in docs/schemas (kinds: {', '.join(kinds())})")
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate(kind: str, message: Any) -> None:
    errors = sorted(validator(kind).iter_errors(message), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"{'/'.join(map(str, e.absolute_path)) or '(message)'}: {e.message}"
            for e in errors[:10]
        ]
        raise ContractError(
            f"{kind} message breaks the contract:\n  "
            + "\n  ".join(lines)
            + f"\nmessage: {json.dumps(message)[:500]}"
        )


def validate_payload(kind: str, payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload)
    except ValueError as exc:
        raise ContractError(f"{kind} payload is not JSON: {exc}") from None
    validate(kind, message)
    return message  # type: ignore[no-any-return]


def kind_for_topic(root: str, topic: str) -> str | None:
    """The schema of a JSON message on ``topic`` (None for binary payloads and foreign topics);
    for binary payloads see the *-properties schemas."""
    parts = protocol.parse_topic(root, topic)
    if not parts:
        return None
    kind = parts.get("kind")
    if kind == "cmd":
        return f"command-{parts['verb']}"
    if kind == "clip":
        return "clip-manifest" if parts["part"] == protocol.CLIP_MANIFEST_PART else None
    return {
        "event": "event",
        "status": "camera-status" if "camera" in parts else "gateway-status",
        "audit": "audit",
        "ack": "ack",
    }.get(str(kind))
