"""Command dispatch: rate-limit → parse → verify → quota → validate → audit → act → reply.

Each verb registers a handler and a pydantic model for its payload. ``handle`` never raises: every
command gets exactly one reply, ``{"ok": true, ...}`` or an error with a code and a sentence.

Order matters: parsing is bounded (``protocol.loads``); the signature (``command_auth.Verifier``)
decides who the operator is and what their role allows; the per-operator quotas come next, before
anything is audited or allocated; the audit record of the action is stored *before* the handler
runs (a command that cannot be audited does not run). Refused signatures are audited too
(``refused``) within a gateway-wide budget per verb, so a flood of forged commands costs one
signature check each and fills neither the audit trail nor another operator's quota.

With a verifier (the gateway always has one), the ``operator``, ``priority`` and ``client_id``
fields of a body are ignored: they are what the sender claims, and the signed identity replaces
them. They are dropped rather than refused so that centre software written before signatures
keeps working; nothing they say reaches a decision or the audit trail. Without a verifier (unit
tests of one service, in-process callers), the body's ``operator`` and ``priority`` are taken as
given.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from guetteur.config import validation_problems
from guetteur.errors import GuetteurError
from guetteur.uplink import messages, protocol
from guetteur.uplink.audit import AuditTrail, AuditUnavailable, shorten
from guetteur.uplink.command_auth import AuthError, Identity, Verifier
from guetteur.uplink.protocol import ErrorCode

log = logging.getLogger(__name__)

VERB_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
MAX_REQUEST_ID_CHARS = 128
# Body fields that only a signature may decide (ignored when commands are signed).
CLAIMED_FIELDS = ("operator", "priority", "client_id")


class CommandError(GuetteurError):
    """Raised by a handler to refuse a command with a machine code and a human sentence."""


@dataclass(frozen=True)
class CommandContext:
    verb: str
    request_id: str | None
    client_id: str  # MQTT client id the requester claims (user property "client_id"), or "unknown"
    operator: str | None  # verified operator (signed), or the body's claim without a verifier
    user_properties: dict[str, str]
    role: str | None = None  # the signed role
    priority: int | None = None  # PTZ priority: from the signed role, or the body's claim
    identity: Identity | None = field(default=None, repr=False)

    @property
    def principal(self) -> str:
        """Who owns what this command starts (a live session) and whose quotas it spends: the
        verified operator; without a verifier, the client (a body's claim owns nothing)."""
        return self.identity.operator if self.identity is not None else self.client_id


Handler = Callable[[CommandContext, Any], dict[str, Any]]


@dataclass
class _Verb:
    handler: Handler
    model: type[BaseModel]
    audited: bool
    record_before: bool


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


MAX_BUCKETS = 4096  # distinct (requester, verb) pairs remembered; older ones are forgotten


class CommandDispatcher:
    def __init__(
        self,
        audit: AuditTrail | None = None,
        rate_per_s: float = 20.0,
        burst: int = 40,
        allowed_clients: set[str] | None = None,
        verifier: Verifier | None = None,
        gateway_rate_per_s: float | None = None,
        verb_quotas: Mapping[str, tuple[float, int]] | None = None,
    ) -> None:
        """``rate_per_s``/``burst``: per requester and verb; ``verb_quotas``: tighter (rate,
        burst) for some verbs (snapshots, exports); ``gateway_rate_per_s``: per verb whoever
        sends, checked before anything else."""
        self._verbs: dict[str, _Verb] = {}
        self._audit = audit
        self._rate = rate_per_s
        self._burst = burst
        self._quotas = dict(verb_quotas or {})
        self._buckets: dict[tuple[str, str], _TokenBucket] = {}
        self._gateway_rate = gateway_rate_per_s
        self._gateway_buckets: dict[str, _TokenBucket] = {}
        self._allowed = allowed_clients
        self._verifier = verifier
        self._lock = threading.Lock()

    @property
    def verifier(self) -> Verifier | None:
        return self._verifier

    def register(
        self,
        verb: str,
        model: type[BaseModel],
        handler: Handler,
        audited: bool = True,
        record_before: bool = True,
    ) -> None:
        """Register ``handler(ctx, validated_model)`` for ``cmd/{verb}``. ``record_before``: an
        audit record is stored before the handler runs (and it does not run if that fails);
        ``audited``: the dispatcher also records the outcome (handlers that write richer
        outcome records pass False). Verbs that touch no video (status) pass both False."""
        self._verbs[verb] = _Verb(handler, model, audited, record_before)

    @property
    def verbs(self) -> list[str]:
        return sorted(self._verbs)

    def handle(
        self, verb: str, payload: bytes, user_properties: dict[str, str] | None = None
    ) -> dict[str, Any]:
        try:
            return self._handle(verb, payload, user_properties or {})
        except Exception as exc:  # the last guard: one reply, always
            log.exception("command %r failed", verb)
            return messages.reply_error(
                None, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}"
            )

    def refuse(self, verb: str, code: str, message: str) -> dict[str, Any]:
        """The reply to a command refused before it was read (reply topic, full queue)."""
        return messages.reply_error(None, code, message)

    # -- the steps -----------------------------------------------------------------------------

    def _handle(self, verb: str, payload: bytes, props: dict[str, str]) -> dict[str, Any]:
        if not VERB_PATTERN.match(verb):
            return messages.reply_error(
                None, ErrorCode.BAD_REQUEST, "command verb is empty or not a plain word"
            )
        entry = self._verbs.get(verb)
        if entry is None:
            known = ", ".join(self.verbs) or "none"
            return messages.reply_error(
                None, ErrorCode.UNKNOWN_VERB, f"unknown command {verb!r}; known: {known}"
            )
        try:
            data = protocol.loads(payload, protocol.MAX_COMMAND_BYTES)
        except protocol.MessageError as exc:
            return messages.reply_error(None, ErrorCode.BAD_REQUEST, str(exc))
        rid = data.get("id")
        if rid is not None and (
            not isinstance(rid, str | int)
            or isinstance(rid, bool)
            or len(str(rid)) > MAX_REQUEST_ID_CHARS
        ):
            return messages.reply_error(
                None,
                ErrorCode.BAD_REQUEST,
                f'"id" must be a string of at most {MAX_REQUEST_ID_CHARS} characters',
            )
        request_id = str(rid) if rid is not None else None
        client_id = shorten(props.get("client_id", "unknown"), 128)
        identity: Identity | None = None
        if self._verifier is not None:
            try:
                identity = self._verifier.verify(verb, data)
            except AuthError as exc:
                # refusals are audited within a gateway-wide budget: a flood of forged commands
                # costs a signature check each, and neither the audit trail nor other operators
                if self._take_gateway(verb):
                    self._record_refusal(verb, data, client_id, request_id, exc.code, exc.message)
                else:
                    log.warning(
                        "command %s refused (%s), not audited: refusal flood", verb, exc.code
                    )
                return messages.reply_error(request_id, exc.code, exc.message)
        body = {k: v for k, v in data.items() if k not in ("v", "id", "auth")}
        if identity is not None:
            for claimed in CLAIMED_FIELDS:
                body.pop(claimed, None)
            ctx = CommandContext(
                verb, request_id, client_id, identity.operator, props, identity.role,
                identity.ptz_priority, identity,
            )  # fmt: skip
        else:
            operator = body.get("operator") if isinstance(body.get("operator"), str) else None
            priority = body.get("priority") if isinstance(body.get("priority"), int) else None
            ctx = CommandContext(verb, request_id, client_id, operator, props, None, priority)
        if self._allowed is not None and client_id not in self._allowed:
            return messages.reply_error(
                request_id, ErrorCode.FORBIDDEN, f"client {client_id!r} may not send commands"
            )
        if not self._take(ctx.principal, verb):
            return messages.reply_error(
                request_id,
                ErrorCode.RATE_LIMITED,
                f"too many {verb} commands from {ctx.principal}; slow down",
            )
        try:
            model = entry.model.model_validate(body)
        except ValidationError as exc:
            reply = messages.reply_error(
                request_id, ErrorCode.BAD_REQUEST, format_validation_error(exc)
            )
            if entry.audited or entry.record_before:
                self._record_outcome(ctx, body, reply)
            return reply
        if self._audit is not None and entry.record_before:
            try:
                self._audit.require(f"cmd.{verb}", **self._fields(ctx, body), outcome="accepted")
            except AuditUnavailable as exc:
                return messages.reply_error(request_id, exc.code, exc.message)
        reply = self._run(entry, ctx, model)
        if entry.audited:
            self._record_outcome(ctx, body, reply)
        return reply

    def _run(self, entry: _Verb, ctx: CommandContext, model: BaseModel) -> dict[str, Any]:
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

    # -- rate limits -----------------------------------------------------------------------------

    def _take_gateway(self, verb: str) -> bool:
        if self._gateway_rate is None:
            return True
        with self._lock:
            bucket = self._gateway_buckets.get(verb)
            if bucket is None:
                rate = self._gateway_rate
                bucket = self._gateway_buckets[verb] = _TokenBucket(rate, max(1, int(rate * 2)))
            return bucket.take()

    def _take(self, who: str, verb: str) -> bool:
        rate, burst = self._quotas.get(verb, (self._rate, self._burst))
        with self._lock:
            bucket = self._buckets.get((who, verb))
            if bucket is None:
                if len(self._buckets) >= MAX_BUCKETS:  # forget the fullest (idle) buckets
                    for key in [k for k, b in self._buckets.items() if b.tokens >= b.burst]:
                        del self._buckets[key]
                bucket = self._buckets[(who, verb)] = _TokenBucket(rate, burst)
            return bucket.take()

    # -- audit -----------------------------------------------------------------------------------

    @staticmethod
    def _fields(ctx: CommandContext, body: Mapping[str, Any]) -> dict[str, Any]:
        camera = body.get("camera")
        return {
            "operator": ctx.operator,
            "role": ctx.role,
            "key_id": ctx.identity.key_id if ctx.identity is not None else None,
            "client_id": ctx.client_id,
            "camera": camera if isinstance(camera, str) else None,
            "request_id": ctx.request_id,
        }

    def _record_outcome(
        self, ctx: CommandContext, body: Mapping[str, Any], reply: Mapping[str, Any]
    ) -> None:
        if self._audit is None:
            return
        self._audit.record(
            f"cmd.{ctx.verb}",
            **self._fields(ctx, body),
            outcome="ok" if reply["ok"] else reply["error"]["code"],
        )

    def _record_refusal(
        self,
        verb: str,
        data: Mapping[str, Any],
        client_id: str,
        request_id: str | None,
        code: str,
        message: str,
    ) -> None:
        """A command whose signature did not check out: who it claimed to be, and why not."""
        if self._audit is None:
            return
        auth = data.get("auth")
        claimed = auth.get("operator") if isinstance(auth, dict) else None
        camera = data.get("camera")
        self._audit.record(
            f"cmd.{verb}",
            outcome="refused",
            code=code,
            message=message,
            claimed_operator=claimed if isinstance(claimed, str) else None,
            client_id=client_id,
            camera=camera if isinstance(camera, str) else None,
            request_id=request_id,
        )
