"""Pelco-D over RS-485: 7-byte frames, one way (standard commands get no answer).

Frame (Pelco D Protocol Manual, TF-0002 v2 rev 1, "The message format"):
``0xFF, address, command 1, command 2, data 1, data 2, checksum`` where the checksum is the sum
of bytes 2 to 6 (address .. data 2) modulo 256. Command 2 bits: 0x02 right, 0x04 left, 0x08 up,
0x10 down, 0x20 zoom tele, 0x40 zoom wide. Data 1 = pan speed 0x00-0x3F, data 2 = tilt speed
0x00-0x3F. Extended commands: set preset 00 03 00 nn, clear preset 00 05 00 nn, go to preset
00 07 00 nn.
"""

from __future__ import annotations

from guetteur.ptz.base import NotSupported, PtzStatus
from guetteur.ptz.serial_line import SerialLine

SYNC = 0xFF
MAX_SPEED = 0x3F  # 0x40 is "turbo" on some domes: never sent, it ignores the max_speed cap
RIGHT, LEFT, UP, DOWN, ZOOM_TELE, ZOOM_WIDE = 0x02, 0x04, 0x08, 0x10, 0x20, 0x40


def frame(address: int, cmd1: int, cmd2: int, data1: int, data2: int) -> bytes:
    body = bytes((address, cmd1, cmd2, data1, data2))
    if not 0 <= address <= 255 or any(not 0 <= b <= 255 for b in body):
        raise ValueError("Pelco-D bytes must be 0..255")
    return bytes((SYNC, *body, sum(body) % 256))


def speed_byte(velocity: float) -> int:
    """|velocity| in 0..1 → 0x00..0x3F; any non-zero velocity moves at least at speed 1."""
    magnitude = min(1.0, abs(velocity))
    if magnitude == 0.0:
        return 0
    return max(1, round(magnitude * MAX_SPEED))


def move_frame(address: int, pan: float, tilt: float, zoom: float) -> bytes:
    """Continuous pan/tilt/zoom: positive pan = right, positive tilt = up, positive zoom = tele."""
    cmd2 = 0
    if pan > 0:
        cmd2 |= RIGHT
    elif pan < 0:
        cmd2 |= LEFT
    if tilt > 0:
        cmd2 |= UP
    elif tilt < 0:
        cmd2 |= DOWN
    if zoom > 0:
        cmd2 |= ZOOM_TELE
    elif zoom < 0:
        cmd2 |= ZOOM_WIDE
    return frame(address, 0x00, cmd2, speed_byte(pan), speed_byte(tilt))


def stop_frame(address: int) -> bytes:
    return frame(address, 0x00, 0x00, 0x00, 0x00)


def preset_frame(address: int, op: int, preset: int) -> bytes:
    if not 1 <= preset <= 255:
        raise ValueError("Pelco-D preset numbers are 1..255")
    return frame(address, 0x00, op, 0x00, preset)


SET_PRESET, CLEAR_PRESET, GOTO_PRESET = 0x03, 0x05, 0x07


class PelcoDDriver:
    protocol = "pelco-d"

    def __init__(self, line: SerialLine, address: int, home_preset: int | None = None) -> None:
        self.line = line
        self.address = address
        self.home_preset = home_preset

    def move(self, pan: float, tilt: float, zoom: float) -> None:
        self.line.exchange([move_frame(self.address, pan, tilt, zoom)])

    def stop(self) -> None:
        self.line.exchange([stop_frame(self.address)])

    def goto_preset(self, preset: int, speed: float | None = None) -> None:
        self.line.exchange([preset_frame(self.address, GOTO_PRESET, preset)])

    def set_preset(self, preset: int) -> None:
        self.line.exchange([preset_frame(self.address, SET_PRESET, preset)])

    def home(self) -> None:
        # Pelco-D has no home command: the camera config names a home preset.
        if self.home_preset is None:
            raise NotSupported(self.protocol, "home without ptz.home_preset in the camera config")
        self.goto_preset(self.home_preset)

    def absolute(
        self, pan: float | None, tilt: float | None, zoom: float | None, speed: float | None
    ) -> None:
        raise NotSupported(self.protocol, "absolute moves")

    def relative(self, pan: float, tilt: float, zoom: float, speed: float | None) -> None:
        raise NotSupported(self.protocol, "relative moves")

    def status(self) -> PtzStatus | None:
        return None

    def close(self) -> None:
        self.line.close()
