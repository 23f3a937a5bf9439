"""Command dispatch: validate → authorise → rate-limit → audit → act → reply.

Each verb registers a handler and a pydantic model for its payload. ``handle`` never raises: every
command gets exactly one reply, ``{"ok": true, ...}`` or an error with a code and a sentence.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from guetteur.config import validation_problems
from guetteur.errors import GuetteurError
from guetteur.uplink import messages, protocol
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.protocol import ErrorCode

log = logging.getLogger(__name__)


class CommandError(GuetteurError):
    """Raised by a handler to refuse a command with a machine code and a human sentence."""


@dataclass(frozen=True)
class CommandContext:
    verb: str
    request_id: str | None
    client_id: str  # MQTT client id of the requester (user property "client_id"), or "unknown"
    operator: str | None
    user_properties: dict[str, str]


Handler = Callable[[CommandContext, Any], dict[str, Any]]


@dataclass
class _Verb:
    handler: Handler
    model: type[BaseModel]
    audited: bool


class _TokenBucket:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def format_validation_error(exc: ValidationError) -> str:
    """One sentence naming every wrong field of a command payload."""
    return "; ".join(validation_problems(exc, unknown="unknown field", missing=None))


class CommandDispatcher:
    def __init__(
        self,
        audit: AuditTrail | None = None,
        rate_per_s: float = 20.0,
        burst: int = 40,
        allowed_clients: set[str] | None = None,
    ) -> None:
        self._verbs: dict[str, _Verb] = {}
        self._audit = audit
        self._rate = rate_per_s
        self._burst = burst
        self._buckets: dict[tuple[str, str], _TokenBucket] = {}
        self._allowed = allowed_clients
        self._lock = threading.Lock()

    def register(
        self, verb: str, model: type[BaseModel], handler: Handler, audited: bool = True
    ) -> None:
        """Register ``handler(ctx, validated_model)`` for ``cmd/{verb}``. ``audited`` makes the
        dispatcher record every outcome; handlers that write richer records pass False."""
        self._verbs[verb] = _Verb(handler=handler, model=model, audited=audited)

    @property
    def verbs(self) -> list[str]:
        return sorted(self._verbs)

    def handle(
        self, verb: str, payload: bytes, user_properties: dict[str, str] | None = None
    ) -> dict[str, Any]:
        props = user_properties or {}
        request_id: str | None = None
        try:
            data = protocol.loads(payload)
            rid = data.pop("id", None)
            request_id = str(rid) if rid is not None else None
            data.pop("v", None)
            # the centre server's signature (uplink.command_auth); verified once gateways check
            # signed commands, and never one of the verb's fields
            data.pop("auth", None)
        except protocol.MessageError as exc:
            return messages.reply_error(None, ErrorCode.BAD_REQUEST, str(exc))
        operator = data.get("operator") if isinstance(data.get("operator"), str) else None
        ctx = CommandContext(
            verb=verb,
            request_id=request_id,
            client_id=props.get("client_id", "unknown"),
            operator=operator,
            user_properties=props,
        )
        reply = self._dispatch(ctx, data)
        entry = self._verbs.get(verb)
        if self._audit is not None and (entry is None or entry.audited):
            self._audit.record(
                f"cmd.{verb}",
                client_id=ctx.client_id,
                operator=operator,
                camera=data.get("camera") if isinstance(data.get("camera"), str) else None,
                request_id=request_id,
                outcome="ok" if reply["ok"] else reply["error"]["code"],
            )
        return reply

    def _dispatch(self, ctx: CommandContext, data: dict[str, Any]) -> dict[str, Any]:
        entry = self._verbs.get(ctx.verb)
        if entry is None:
            known = ", ".join(self.verbs) or "none"
            return messages.reply_error(
                ctx.request_id,
                ErrorCode.UNKNOWN_VERB,
                f"unknown command {ctx.verb!r}; known: {known}",
            )
        try:
            model = entry.model.model_validate(data)
        except ValidationError as exc:
            return messages.reply_error(
                ctx.request_id, ErrorCode.BAD_REQUEST, format_validation_error(exc)
            )
        if self._allowed is not None and ctx.client_id not in self._allowed:
            return messages.reply_error(
                ctx.request_id,
                ErrorCode.FORBIDDEN,
                f"client {ctx.client_id!r} may not send commands",
            )
        with self._lock:
            bucket = self._buckets.setdefault(
                (ctx.client_id, ctx.verb), _TokenBucket(self._rate, self._burst)
            )
            allowed = bucket.take()
        if not allowed:
            return messages.reply_error(
                ctx.request_id,
                ErrorCode.RATE_LIMITED,
                f"too many {ctx.verb} commands from {ctx.client_id}; slow down",
            )
        try:
            fields = entry.handler(ctx, model)
        except GuetteurError as exc:  # CommandError, or a service's own coded error
            return messages.reply_error(ctx.request_id, exc.code, exc.message)
        except Exception as exc:  # a bug must not cost the requester its reply
            log.exception("command %s failed", ctx.verb)
            return messages.reply_error(
                ctx.request_id, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
            )
        return messages.reply_ok(ctx.request_id, **fields)
