"""MQTT interface version 1: its vocabulary. Topic layout, ids, (de)serialisation, error codes,
the PTZ actions and their domains, acknowledgements and clip item ids.

Shared by the agent and the centre-side tools, so both sides agree by construction. The bodies
the gateway publishes are built in ``uplink.messages``. See docs/mqtt-interface.md and
docs/asyncapi.yaml for the contract in prose and schema form.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

VERSION = 1
DEFAULT_ROOT = "guetteur/v1"

# Ids that appear in topics and file names: no separators, no wildcards, no dots first.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def valid_id(value: str) -> bool:
    return bool(ID_PATTERN.match(value))


# Broker identities that are not gateways: a gateway's certificate CN is its id, and the ACL's
# per-gateway patterns (``%u``) would hand a gateway named ``centre`` the centre's own topics.
RESERVED_GATEWAY_IDS = frozenset({"centre", "broker", "admin"})
RESERVED_GATEWAY_PREFIXES = ("centre-", "op-")


def gateway_id_problem(value: str) -> str:
    """Why ``value`` cannot be a gateway id, or "" when it can."""
    if not ID_PATTERN.match(value):
        return "expected 1-64 letters, digits, '-' or '_', starting with a letter or digit"
    lowered = value.lower()
    if lowered in RESERVED_GATEWAY_IDS or lowered.startswith(RESERVED_GATEWAY_PREFIXES):
        return (
            f"{value!r} is reserved for the centre's broker identities (reserved: "
            f"{', '.join(sorted(RESERVED_GATEWAY_IDS))}, and names starting with "
            f"{' or '.join(RESERVED_GATEWAY_PREFIXES)})"
        )
    return ""


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
        """Conventional response topic of a centre client for this gateway's replies: in the
        centre's reply area (the only one a gateway answers on), one level per gateway (the
        only level the shipped ACL lets that gateway write)."""
        return f"{self.root}/{DEFAULT_REPLY_PREFIX}{client_id}/{self.gateway}"


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
    """Serialise a JSON message, stamping ``"v": 1``. Never fails on text: a lone surrogate (which
    UTF-8 cannot carry) goes out escaped, so a reply or an audit record is always sent."""
    body = {"v": VERSION, **message}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "backslashreplace"
    )


class MessageError(ValueError):
    """A payload that is not a version-1 JSON object."""


# Limits of what a received message may hold: parsing must stay cheap and bounded whatever a
# sender writes (integers of thousands of digits, nesting 1,000 deep, megabytes of text).
MAX_MESSAGE_BYTES = 256 * 1024  # acks carry up to MAX_ACK_IDS ids
MAX_COMMAND_BYTES = 64 * 1024
MAX_DEPTH = 16
MAX_INT_DIGITS = 20  # beyond 64 bits nothing in the interface means anything


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise MessageError(f"an integer has {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text) if len(text) <= 64 else float("inf")
    if value in (float("inf"), float("-inf")):
        raise MessageError(f"a number of {len(text)} characters is out of range")
    return value


def _parse_constant(name: str) -> Any:
    raise MessageError(f"{name} is not a JSON number")


def _check_shape(data: Any) -> None:
    """Depth and text of a parsed message: every string must be valid Unicode (a lone surrogate
    such as ``\\ud800`` cannot be written back out as UTF-8)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                raise MessageError(f"message is nested deeper than {MAX_DEPTH} levels")
            for key, value in node.items():
                _check_text(key)
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise MessageError(f"message is nested deeper than {MAX_DEPTH} levels")
            stack.extend((value, depth + 1) for value in node)
        elif isinstance(node, str):
            _check_text(node)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MessageError("a string holds a lone surrogate (not valid Unicode)") from None


def loads(payload: bytes | str, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Parse a JSON message within limits (size, integer digits, depth, valid Unicode); raises
    MessageError with a sentence when it is not one of ours. Never raises anything else."""
    if len(payload) > max_bytes:
        raise MessageError(f"message is {len(payload)} bytes (at most {max_bytes})")
    try:
        data = json.loads(
            payload,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except MessageError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise MessageError(f"message is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a float of 10^400 digits
        raise MessageError(f"payload is not acceptable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError("payload must be a JSON object")
    _check_shape(data)
    v = data.get("v", VERSION)
    if v != VERSION:
        raise MessageError(f'unsupported message version "v": {v!r} (this gateway speaks 1)')
    return data


# Where command replies may go: the centre's reply area, never a topic of a gateway's streams
# (a reply published on ``{gw}/cam/{cam}/event`` would be stored by the centre as an event).
DEFAULT_REPLY_PREFIX = "_reply/"


def reply_topic_problem(topic: str | None, root: str, prefix: str = DEFAULT_REPLY_PREFIX) -> str:
    """Why ``topic`` may not receive a command's reply, or "" when it may: it must lie under
    ``{root}/{prefix}``, below it, with no wildcard, no NUL, and not be a ``$`` topic."""
    area = f"{root}/{prefix}"
    if not topic:
        return "no response topic"
    if topic.startswith("$"):
        return "response topic is a $-topic"
    if any(c in topic for c in "+#\0"):
        return "response topic holds a wildcard or NUL"
    if len(topic) > 512:
        return "response topic is longer than 512 characters"
    if not topic.startswith(area) or len(topic) == len(area) or "//" in topic[len(area) - 1 :]:
        return f"response topic is outside the centre's reply area {area}"
    return ""


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
    BAD_REPLY_TOPIC = "bad_reply_topic"  # response topic outside the centre's reply area
    AUDIT_UNAVAILABLE = "audit_unavailable"  # the audit record could not be written: not run
    BUSY = "busy"  # the camera's command queue is full: one stuck camera keeps its trouble


# -- cmd/ptz: the PTZ vocabulary (the agent's command model and arbiter, the centre tool) ----------

PtzAction = Literal[
    "move", "stop", "zoom", "goto_preset", "set_preset", "home", "absolute", "relative"
]
PTZ_ACTIONS: tuple[PtzAction, ...] = get_args(PtzAction)
# Continuous moves run until stopped: the centre renews them within the camera's dead_man_s.
PTZ_CONTINUOUS: frozenset[str] = frozenset({"move", "zoom"})
PTZ_PRESET_ACTIONS: frozenset[str] = frozenset({"goto_preset", "set_preset"})
PTZ_AXES = ("pan", "tilt", "zoom")
PTZ_FIELDS = (*PTZ_AXES, "speed", "preset")  # the values an action may carry

# The protocol's domains (a camera's config may narrow positions and speed further).
PtzDomain = tuple[float, float]
PTZ_SPEED: PtzDomain = (0.0, 1.0)  # scales moves; for presets and positioned moves, their speed
PTZ_VELOCITY: PtzDomain = (-1.0, 1.0)  # move/zoom, every axis; positive = right/up/tele
PTZ_ABSOLUTE: dict[str, PtzDomain] = {"pan": (-1.0, 1.0), "tilt": (-1.0, 1.0), "zoom": (0.0, 1.0)}
PTZ_RELATIVE: dict[str, PtzDomain] = {"pan": (-2.0, 2.0), "tilt": (-2.0, 2.0), "zoom": (-1.0, 1.0)}
PTZ_FIRST_PRESET = 1


def _span(domain: PtzDomain) -> str:
    return f"{domain[0]:g}..{domain[1]:g}"


# One sentence per field, for the command model's schema and the centre tool's --help.
PTZ_FIELD_HELP: dict[str, str] = {
    axis: f"velocity {_span(PTZ_VELOCITY)} (move{'/zoom' if axis == 'zoom' else ''}), "
    f"position {_span(PTZ_ABSOLUTE[axis])} (absolute), step {_span(PTZ_RELATIVE[axis])} (relative)"
    for axis in PTZ_AXES
} | {
    "action": "|".join(PTZ_ACTIONS),
    "speed": f"speed {_span(PTZ_SPEED)}",
    "preset": f"preset number (from {PTZ_FIRST_PRESET})",
}


# -- end-to-end acknowledgements and clip upload (outbox ↔ centre receiver) ---------------------

# MQTT 5 user properties carried by every item the outbox publishes.
PROP_ITEM_ID = "item_id"  # the id the centre acknowledges and de-duplicates by
PROP_EPOCH = "epoch"  # id of the gateway's outbox database (changes if it is ever recreated)
PROP_CSEQ = "cseq"  # per-camera sequence number of events within one epoch: 1, 2, 3...

CLIP_MANIFEST_PART = "manifest"  # clip/{clip_id}/manifest, then clip/{clip_id}/0..count-1
MAX_ACK_IDS = 10000  # most ids one ack message may carry


def clip_manifest_item_id(clip_id: str) -> str:
    return f"clip:{clip_id}:{CLIP_MANIFEST_PART}"


def clip_chunk_item_id(clip_id: str, n: int) -> str:
    return f"clip:{clip_id}:{n}"


def parse_clip_item_id(item_id: str) -> tuple[str, int | None] | None:
    """``clip:{id}:manifest`` → (id, None); ``clip:{id}:{n}`` → (id, n); anything else → None."""
    parts = item_id.split(":")
    if len(parts) != 3 or parts[0] != "clip" or not valid_id(parts[1]):
        return None
    if parts[2] == CLIP_MANIFEST_PART:
        return parts[1], None
    if parts[2].isdigit():
        return parts[1], int(parts[2])
    return None


def ack_message(ids: list[str], resend: list[str] | None = None, resync: bool = False) -> bytes:
    """The centre's acknowledgement on ``{root}/{gw}/ack``: ``ids`` are stored for good and may
    leave the gateway's outbox; ``resend`` are ids the centre wants again (lost or corrupt);
    ``resync`` asks the gateway to send again, now, everything not yet acknowledged (a receiver
    that has just (re)connected: what was published while no receiver listened may be lost)."""
    body: dict[str, Any] = {"ids": ids}
    if resend:
        body["resend"] = resend
    if resync:
        body["resync"] = True
    return dumps(body)


@dataclass(frozen=True)
class Ack:
    ids: list[str]
    resend: list[str]
    resync: bool


def parse_ack(payload: bytes | str) -> Ack:
    """An ack message; raises MessageError with a sentence when malformed."""
    data = loads(payload)
    if "ids" not in data:
        raise MessageError('ack has no "ids" list')
    out: list[list[str]] = []
    for key in ("ids", "resend"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
            raise MessageError(f'ack "{key}" must be a list of strings')
        if len(value) > MAX_ACK_IDS:
            raise MessageError(f'ack "{key}" has {len(value)} ids (at most {MAX_ACK_IDS})')
        out.append(value)
    resync = data.get("resync", False)
    if not isinstance(resync, bool):
        raise MessageError('ack "resync" must be true or false')
    return Ack(out[0], out[1], resync)


MANIFEST_FIELDS = ("clip_id", "camera", "size", "sha256", "chunk_size", "count")


def parse_clip_manifest(payload: bytes | str) -> dict[str, Any]:
    """A clip manifest, checked for consistency; raises MessageError with a sentence."""
    data = loads(payload)
    missing = [f for f in MANIFEST_FIELDS if f not in data]
    if missing:
        raise MessageError(f"clip manifest lacks {', '.join(missing)}")
    clip_id, size, chunk, count = data["clip_id"], data["size"], data["chunk_size"], data["count"]
    if not isinstance(clip_id, str) or not valid_id(clip_id):
        raise MessageError(f"clip manifest has an invalid clip_id {clip_id!r}")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (size, chunk, count)):
        raise MessageError("clip manifest size, chunk_size and count must be integers")
    if size < 0 or chunk <= 0 or count != (size + chunk - 1) // chunk:
        raise MessageError(
            f"clip manifest is inconsistent: size {size}, chunk_size {chunk}, count {count}"
        )
    sha = data["sha256"]
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise MessageError("clip manifest sha256 must be 64 lowercase hex digits")
    chunk_sha = data.get("chunk_sha256")
    if chunk_sha is not None and (
        not isinstance(chunk_sha, list)
        or len(chunk_sha) != count
        or not all(isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in chunk_sha)
    ):
        raise MessageError("clip manifest chunk_sha256 must list one sha256 per chunk")
    return data
