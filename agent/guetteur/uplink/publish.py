"""The one interface through which the pipeline hands messages for the centre to the link.

Events, snapshots, clips and audit records go through ``Publisher.submit``. The first
implementation publishes directly; the durable outbox implements the same interface, so the
pipeline never changes when store-and-forward is switched on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol


class Priority(IntEnum):
    """Lower drains first: events before snapshots before clips."""

    EVENT = 0
    AUDIT = 1
    SNAPSHOT = 2
    CLIP = 3


@dataclass
class OutboundItem:
    """A message for the centre: an id the centre acknowledges and de-duplicates by, a topic
    relative to ``{root}/{gw}/``, a payload and MQTT 5 properties."""

    item_id: str
    kind: str  # event | snapshot | clip_manifest | clip_chunk | audit
    topic: str  # relative, e.g. "cam/cam1/event"
    payload: bytes
    priority: Priority
    camera: str | None = None
    content_type: str = "application/json"
    user_properties: dict[str, str] = field(default_factory=dict)


@dataclass
class ClipFile:
    """A finished MP4 clip on local disk, to be uploaded as a manifest then chunks
    (``clip/{clip_id}/{n}``). The publisher owns the file from then on."""

    clip_id: str
    path: str
    camera: str
    event_id: str | None = None  # None for an export requested by the centre
    request_id: str | None = None  # the export command's id, when there is one
    start: str | None = None  # ISO 8601 ms of the first frame
    end: str | None = None


class Publisher(Protocol):
    def submit(self, item: OutboundItem) -> None:
        """Take responsibility for delivering ``item``; must not block the caller for long."""
        ...

    def submit_clip(self, clip: ClipFile) -> None:
        """Take responsibility for uploading a clip file; must not block the caller for long."""
        ...
