"""Append-only audit trail: who viewed, moved or exported what, handed to the publisher."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from guetteur.uplink import messages, protocol
from guetteur.uplink.publish import OutboundItem, Priority, Publisher

log = logging.getLogger(__name__)


class AuditTrail:
    def __init__(self, publisher: Publisher, gateway_id: str) -> None:
        self._publisher = publisher
        self._gateway_id = gateway_id

    def record(self, action: str, **fields: Any) -> str:
        """Record one audited action (e.g. ``ptz.move``, ``live.start``); returns its id."""
        record_id = str(uuid.uuid4())
        body = messages.audit_record(record_id, self._gateway_id, action, fields)
        log.info("audit %s %s", action, {k: v for k, v in fields.items() if v is not None})
        self._publisher.submit(
            OutboundItem(
                item_id=record_id,
                kind="audit",
                topic=protocol.REL_AUDIT,
                payload=protocol.dumps(body),
                priority=Priority.AUDIT,
                camera=fields.get("camera") if isinstance(fields.get("camera"), str) else None,
            )
        )
        return record_id
