"""The contract every camera source follows.

A source runs in its own thread (``run``), pushes encoded packets and analytic frames into a
``SourceSink`` and reports its state changes there too. It never raises out of ``run`` because of
the camera: it reports why, waits (capped exponential backoff with jitter) and tries again, until
``stop`` is set.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Protocol

from guetteur.media.types import AnalyticFrame, EncodedPacket


@dataclass
class CameraStatus:
    """What the centre sees in ``cam/{cam}/status`` (retained)."""

    camera: str
    connected: bool = False
    state: str = "starting"  # starting | streaming | reconnecting | stalled | failed | stopped
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    last_error: str | None = None
    since: float = 0.0  # epoch seconds of the last state change
    extra: dict[str, object] = field(default_factory=dict)


class SourceSink(Protocol):
    def on_packet(self, packet: EncodedPacket) -> None: ...

    def on_sub_packet(self, packet: EncodedPacket) -> None:
        """Packets of the camera's sub-stream (``sub_url``), for live ``stream: sub``; only
        sources with a sub-stream call it."""
        ...

    def on_frame(self, frame: AnalyticFrame) -> None: ...

    def on_status(self, status: CameraStatus) -> None: ...


class Source(Protocol):
    camera_id: str

    def run(self, sink: SourceSink, stop: threading.Event) -> None:
        """Stream until ``stop`` is set; reconnect on failure. Returns when stopped."""
        ...


class Backoff:
    """Capped exponential backoff with full jitter, reset after a success."""

    def __init__(self, initial_s: float = 1.0, cap_s: float = 30.0) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.initial_s * (2**self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
