"""Append-only audit trail: who viewed, moved or exported what, handed to the publisher.

Two ways to write: :meth:`AuditTrail.require` before an action (raises :class:`AuditUnavailable`
when the record cannot be stored, and the action must then not run) and :meth:`AuditTrail.record`
for outcomes, which never raises. Field values are kept short (a 1 MB field must not become a
2 MB record) and the audit stream has its own budget of records waiting in the outbox: audit
records are never evicted for clips, and when the budget is spent, commands are refused rather
than run unrecorded.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from guetteur.errors import GuetteurError
from guetteur.uplink import messages, protocol
from guetteur.uplink.protocol import ErrorCode
from guetteur.uplink.publish import OutboundItem, Priority, Publisher

log = logging.getLogger(__name__)

DEFAULT_FIELD_CHARS = 200


@runtime_checkable
class DurablePublisher(Protocol):
    """A publisher that can say when an item is on disk (the durable outbox)."""

    def submit_durable(self, item: OutboundItem) -> None: ...


class AuditUnavailable(GuetteurError):
    """The audit record of an action could not be stored: the action does not run."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.AUDIT_UNAVAILABLE, message)


def shorten(value: Any, limit: int = DEFAULT_FIELD_CHARS) -> Any:
    """A field value fit for an audit record: text cut to ``limit`` characters (with the original
    length said), lists cut to 16 items, nested values shortened too."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return f"{value[:limit]}… ({len(value)} chars)"
    if isinstance(value, list | tuple):
        items = [shorten(v, limit) for v in value[:16]]
        return items + ([f"… ({len(value)} items)"] if len(value) > 16 else [])
    if isinstance(value, dict):
        return {shorten(str(k), 64): shorten(v, limit) for k, v in list(value.items())[:16]}
    return value


class AuditTrail:
    def __init__(
        self,
        publisher: Publisher,
        gateway_id: str,
        budget_records: int | None = None,
        pending: Callable[[], int] | None = None,
        field_chars: int = DEFAULT_FIELD_CHARS,
    ) -> None:
        """``pending()`` tells how many audit records wait in the outbox (asked at most once a
        second); with ``budget_records``, :meth:`require` refuses once that many wait."""
        self._publisher = publisher
        self._gateway_id = gateway_id
        self._budget = budget_records
        self._pending = pending
        self._field_chars = field_chars
        self._lock = threading.Lock()
        self._pending_count = 0
        self._pending_at = float("-inf")

    def require(self, action: str, **fields: Any) -> str:
        """Store the record of an action about to run; raises AuditUnavailable if it cannot be
        (budget spent, outbox unwritable): the caller must then not act."""
        if self._budget is not None and self._pending is not None:
            waiting = self._waiting()
            if waiting >= self._budget:
                raise AuditUnavailable(
                    f"{waiting} audit records wait for the centre (budget {self._budget}): "
                    "commands are refused until the centre acknowledges them"
                )
        try:
            return self._submit(action, fields, durable=True)
        except Exception as exc:
            log.error("audit %s could not be stored (%s): the action is refused", action, exc)
            raise AuditUnavailable(
                f"the audit record could not be stored ({type(exc).__name__}); not run"
            ) from None

    def record(self, action: str, **fields: Any) -> str | None:
        """Record one audited action (e.g. ``ptz.move``, ``live.session``) that has happened;
        returns its id, or None (logged) when it could not be stored. Never raises."""
        try:
            return self._submit(action, fields)
        except Exception:
            log.exception("audit %s could not be stored; the record is lost", action)
            return None

    def _waiting(self) -> int:
        with self._lock:
            now = time.monotonic()
            if now - self._pending_at >= 1.0 and self._pending is not None:
                try:
                    self._pending_count = self._pending()
                except Exception:
                    log.exception("audit: outbox depth unknown")
                self._pending_at = now
            return self._pending_count

    def _submit(self, action: str, fields: dict[str, Any], durable: bool = False) -> str:
        record_id = str(uuid.uuid4())
        short = {k: shorten(v, self._field_chars) for k, v in fields.items() if v is not None}
        body = messages.audit_record(record_id, self._gateway_id, action, short)
        log.info("audit %s %s", action, short)
        camera = short.get("camera")
        item = OutboundItem(
            item_id=record_id,
            kind="audit",
            topic=protocol.REL_AUDIT,
            payload=protocol.dumps(body),
            priority=Priority.AUDIT,
            camera=camera if isinstance(camera, str) else None,
        )
        # Before an action the record must be on disk; the durable outbox may otherwise return
        # with it still waiting for a stalled disk (uplink/outbox/handoff.py).
        if durable and isinstance(self._publisher, DurablePublisher):
            self._publisher.submit_durable(item)
        else:
            self._publisher.submit(item)
        with self._lock:
            self._pending_count += 1
        return record_id
