"""What every PTZ driver offers, and the one error type drivers raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from guetteur.errors import GuetteurError
from guetteur.uplink.protocol import ErrorCode


class DriverError(GuetteurError):
    """A camera that refused, failed or did not answer. ``code`` is a protocol.ErrorCode."""


class NotSupported(DriverError):
    def __init__(self, protocol: str, what: str) -> None:
        super().__init__(ErrorCode.NOT_SUPPORTED, f"{protocol} cameras do not support {what}")


@dataclass(frozen=True)
class PtzStatus:
    """Position read back from the camera (normalised like the commands), when it can say."""

    pan: float
    tilt: float
    zoom: float
    moving: bool | None = None


class PtzDriver(Protocol):
    """Velocities are normalised to -1..1 (already validated and clamped by the arbiter);
    positions to the camera's normalised space; preset numbers start at 1."""

    protocol: str

    def move(self, pan: float, tilt: float, zoom: float) -> None: ...

    def stop(self) -> None: ...

    def goto_preset(self, preset: int, speed: float | None = None) -> None: ...

    def set_preset(self, preset: int) -> None: ...

    def home(self) -> None: ...

    def absolute(
        self, pan: float | None, tilt: float | None, zoom: float | None, speed: float | None
    ) -> None: ...

    def relative(self, pan: float, tilt: float, zoom: float, speed: float | None) -> None: ...

    def status(self) -> PtzStatus | None: ...

    def close(self) -> None: ...
