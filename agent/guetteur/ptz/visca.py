"""Sony VISCA over RS-232/RS-422 (and over IP, UDP 52381): variable-length packets.

Packet: header ``0x80 | address`` (address 1-7), message bytes, terminator ``0xFF``. Commands
used (Sony VISCA command lists, e.g. SRG-X400 / EVI-D70 technical manuals):

- Pan-tiltDrive: ``8x 01 06 01 VV WW 0p 0q FF``; VV pan speed 01-18, WW tilt speed 01-17,
  p: 01 left, 02 right, 03 stop; q: 01 up, 02 down, 03 stop (Stop = ``03 03``)
- Home: ``8x 01 06 04 FF``
- CAM_Zoom: Stop ``8x 01 04 07 00 FF``, Tele(variable) ``8x 01 04 07 2p FF``,
  Wide(variable) ``8x 01 04 07 3p FF`` with p 0 (low) - 7 (high)
- CAM_Memory: Reset ``8x 01 04 3F 00 pp FF``, Set ``.. 01 pp FF``, Recall ``.. 02 pp FF``;
  memory numbers start at 0, so our preset n (from 1) is memory n-1.

Replies come from address ``y = x + 8`` (``0x90`` for camera 1): ACK ``y0 4z FF``, completion
``y0 5z FF``, error ``y0 6z ee FF`` (02 syntax, 03 buffer full, 04 cancelled, 05 no socket,
41 not executable).

VISCA over IP (Sony): an 8-byte header before the same packet: payload type ``01 00``
(command) / ``01 11`` (reply), payload length (2 bytes), sequence number (4 bytes), big-endian.
"""

from __future__ import annotations

import socket
import struct
import threading

from guetteur.ptz.base import DriverError, NotSupported, PtzStatus
from guetteur.ptz.serial_line import SerialLine
from guetteur.uplink.protocol import ErrorCode

TERMINATOR = 0xFF
PAN_MAX, TILT_MAX, ZOOM_MAX = 0x18, 0x17, 0x07
LEFT, RIGHT, UP, DOWN, STOP = 0x01, 0x02, 0x01, 0x02, 0x03
ERRORS = {
    0x01: "message length error",
    0x02: "syntax error",
    0x03: "command buffer full",
    0x04: "command cancelled",
    0x05: "no socket",
    0x41: "command not executable now",
}


def packet(address: int, *message: int) -> bytes:
    if not 1 <= address <= 7:
        raise ValueError("VISCA camera addresses are 1..7")
    return bytes((0x80 | address, *message, TERMINATOR))


def _speed(velocity: float, top: int) -> int:
    return max(1, min(top, round(abs(velocity) * top)))


def pan_tilt_frame(address: int, pan: float, tilt: float) -> bytes:
    """Positive pan = right, positive tilt = up; speeds scaled to 01..18 / 01..17."""
    p = RIGHT if pan > 0 else LEFT if pan < 0 else STOP
    q = UP if tilt > 0 else DOWN if tilt < 0 else STOP
    return packet(address, 0x01, 0x06, 0x01, _speed(pan, PAN_MAX), _speed(tilt, TILT_MAX), p, q)


def pan_tilt_stop_frame(address: int) -> bytes:
    return packet(address, 0x01, 0x06, 0x01, 0x01, 0x01, STOP, STOP)


def zoom_frame(address: int, zoom: float) -> bytes:
    """Positive zoom = tele. Variable speed p = 0..7 (any non-zero velocity is at least 0)."""
    if zoom == 0:
        return zoom_stop_frame(address)
    p = min(ZOOM_MAX, round(abs(zoom) * ZOOM_MAX))
    return packet(address, 0x01, 0x04, 0x07, (0x20 if zoom > 0 else 0x30) | p)


def zoom_stop_frame(address: int) -> bytes:
    return packet(address, 0x01, 0x04, 0x07, 0x00)


def home_frame(address: int) -> bytes:
    return packet(address, 0x01, 0x06, 0x04)


MEMORY_RESET, MEMORY_SET, MEMORY_RECALL = 0x00, 0x01, 0x02


def memory_frame(address: int, op: int, preset: int) -> bytes:
    if not 1 <= preset <= 0x80:
        raise ValueError("VISCA presets are 1..128 (memories 0..127)")
    return packet(address, 0x01, 0x04, 0x3F, op, preset - 1)


def check_reply(reply: bytes, address: int) -> None:
    """Raise DriverError unless ``reply`` is an ACK or completion from camera ``address``."""
    if len(reply) < 3 or reply[0] != (0x80 | ((address + 8) << 4)) & 0xFF:
        raise DriverError(
            ErrorCode.DEVICE_ERROR, f"unexpected VISCA answer {reply.hex(' ')} (wrong address?)"
        )
    kind = reply[1] & 0xF0
    if kind in (0x40, 0x50):
        return
    if kind == 0x60 and len(reply) >= 4:
        reason = ERRORS.get(reply[2], f"error 0x{reply[2]:02x}")
        raise DriverError(ErrorCode.DEVICE_ERROR, f"camera refused the command: {reason}")
    raise DriverError(ErrorCode.DEVICE_ERROR, f"unexpected VISCA answer {reply.hex(' ')}")


class ViscaUdpLine:
    """VISCA over IP: one UDP datagram per packet, Sony 8-byte header, reply awaited."""

    COMMAND, REPLY = 0x0100, 0x0111

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.address = (host, port)
        self.timeout_s = timeout_s
        self._sequence = 0
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def exchange(
        self, frames: list[bytes], reply_terminator: int | None = None, replies: int = 0
    ) -> list[bytes]:
        out: list[bytes] = []
        with self._lock:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._sock.settimeout(self.timeout_s)
            for frame in frames:
                self._sequence = (self._sequence + 1) & 0xFFFFFFFF
                header = struct.pack(">HHI", self.COMMAND, len(frame), self._sequence)
                try:
                    self._sock.sendto(header + frame, self.address)
                    for _ in range(replies):
                        data, _peer = self._sock.recvfrom(1024)
                        out.append(data[8:] if len(data) > 8 else data)
                except TimeoutError:
                    raise DriverError(
                        ErrorCode.TIMEOUT,
                        f"camera at {self.address[0]}:{self.address[1]} did not answer within "
                        f"{self.timeout_s:g} s",
                    ) from None
                except OSError as exc:
                    raise DriverError(
                        ErrorCode.CAMERA_DOWN,
                        f"camera at {self.address[0]}:{self.address[1]} unreachable: {exc}",
                    ) from None
        return out

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class ViscaDriver:
    protocol = "visca"

    def __init__(self, line: SerialLine | ViscaUdpLine, address: int) -> None:
        self.line = line
        self.address = address
        # Pan-tilt and zoom are separate VISCA commands: send each only when it changes
        # something, so a pan does not put a zoom-stop frame on the line.
        self._pan_tilt_moving = False
        self._zooming = False

    def _send(self, *frames: bytes) -> None:
        for reply in self.line.exchange(list(frames), TERMINATOR, replies=1):
            check_reply(reply, self.address)

    def move(self, pan: float, tilt: float, zoom: float) -> None:
        frames = []
        if pan or tilt or self._pan_tilt_moving:
            frames.append(pan_tilt_frame(self.address, pan, tilt))
        if zoom or self._zooming:
            frames.append(zoom_frame(self.address, zoom))
        self._send(*frames)
        self._pan_tilt_moving, self._zooming = bool(pan or tilt), bool(zoom)

    def stop(self) -> None:
        self._send(pan_tilt_stop_frame(self.address), zoom_stop_frame(self.address))
        self._pan_tilt_moving = self._zooming = False

    def goto_preset(self, preset: int, speed: float | None = None) -> None:
        self._send(memory_frame(self.address, MEMORY_RECALL, preset))

    def set_preset(self, preset: int) -> None:
        self._send(memory_frame(self.address, MEMORY_SET, preset))

    def home(self) -> None:
        self._send(home_frame(self.address))

    def absolute(
        self, pan: float | None, tilt: float | None, zoom: float | None, speed: float | None
    ) -> None:
        # Position units of 8x 01 06 02 differ per camera model: no safe normalised mapping.
        raise NotSupported(self.protocol, "absolute moves")

    def relative(self, pan: float, tilt: float, zoom: float, speed: float | None) -> None:
        raise NotSupported(self.protocol, "relative moves")

    def status(self) -> PtzStatus | None:
        return None

    def close(self) -> None:
        self.line.close()
