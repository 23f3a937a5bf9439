"""The live tap of one camera stream: fed by the source thread, it keeps the packets since the
last keyframe and hands every new packet to the attached sessions.

**Instant start**: a new session starts by muxing the cached GOP, so its first fragment (starting
on a keyframe) leaves at once and the viewer does not wait for the camera's next keyframe. The
price: the picture starts up to one GOP behind the live edge (timestamps are kept, never
rewritten).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from guetteur.media.types import EncodedPacket, StreamInfo

Listener = Callable[[EncodedPacket], None]

_RATE_WINDOW_S = 5.0


@dataclass(frozen=True)
class HubState:
    stream: StreamInfo | None
    silent_s: float | None  # seconds since the last packet; None = never had one
    has_keyframe: bool
    gop_frames: int
    gop_s: float  # stream time covered by the cached GOP
    bytes_per_s: float  # measured over the last few seconds
    listeners: int


class LiveHub:
    """The live tap of one camera stream. ``on_packet`` runs on the source thread and only
    appends to lists under a lock; all the muxing happens on the sessions' own threads."""

    def __init__(self, camera: str, max_gop_bytes: int = 32 << 20) -> None:
        self.camera = camera
        self.max_gop_bytes = max_gop_bytes
        self._lock = threading.Lock()
        self._gop: list[EncodedPacket] = []
        self._gop_bytes = 0
        self._listeners: tuple[Listener, ...] = ()
        self._last_mono: float | None = None
        self._rate: deque[tuple[float, int]] = deque()
        self._rate_bytes = 0
        self._stream: StreamInfo | None = None

    def on_packet(self, packet: EncodedPacket) -> None:
        now = time.monotonic()
        size = len(packet.data)
        with self._lock:
            self._last_mono = now
            self._stream = packet.stream
            if packet.keyframe:
                self._gop = [packet]
                self._gop_bytes = size
            elif self._gop:
                if self._gop_bytes + size > self.max_gop_bytes:
                    self._gop = []  # no instant start until the next keyframe
                    self._gop_bytes = 0
                else:
                    self._gop.append(packet)
                    self._gop_bytes += size
            self._rate.append((now, size))
            self._rate_bytes += size
            while self._rate and now - self._rate[0][0] > _RATE_WINDOW_S:
                self._rate_bytes -= self._rate.popleft()[1]
            listeners = self._listeners
        for listener in listeners:
            listener(packet)

    def attach(self, listener: Listener) -> list[EncodedPacket]:
        """Start delivering packets to ``listener``; returns the cached GOP, which precedes the
        first delivered packet with no gap and no repeat."""
        with self._lock:
            self._listeners = (*self._listeners, listener)
            return list(self._gop)

    def detach(self, listener: Listener) -> None:
        with self._lock:
            # ``!=``, not ``is not``: each ``obj.method`` access makes a new bound method
            self._listeners = tuple(x for x in self._listeners if x != listener)

    def state(self) -> HubState:
        now = time.monotonic()
        with self._lock:
            gop = self._gop
            silent = None if self._last_mono is None else now - self._last_mono
            span = (
                float((gop[-1].dts - gop[0].dts) * gop[0].stream.time_base) if len(gop) > 1 else 0.0
            )
            elapsed = now - self._rate[0][0] if self._rate else 0.0
            rate = self._rate_bytes / max(elapsed, 1.0) if self._rate else 0.0
            return HubState(
                stream=self._stream,
                silent_s=silent,
                has_keyframe=bool(gop),
                gop_frames=len(gop),
                gop_s=span,
                bytes_per_s=rate,
                listeners=len(self._listeners),
            )
