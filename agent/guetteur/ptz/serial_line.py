"""A serial line (RS-485/RS-232) to one or more domes, opened lazily and reopened after errors."""

from __future__ import annotations

import logging
import threading
import time

import serial

from guetteur.ptz.base import DriverError
from guetteur.uplink.protocol import ErrorCode

log = logging.getLogger(__name__)


class SerialLine:
    def __init__(self, port: str, baudrate: int, timeout_s: float) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self._serial: serial.Serial | None = None
        self._lock = threading.Lock()

    def _open(self) -> serial.Serial:
        if self._serial is None:
            try:
                self._serial = serial.Serial(
                    self.port,
                    self.baudrate,
                    timeout=self.timeout_s,
                    write_timeout=self.timeout_s,
                )
            except (serial.SerialException, OSError, ValueError) as exc:
                raise DriverError(
                    ErrorCode.CAMERA_DOWN,
                    f"cannot open serial port {self.port}: {exc}; check the cable/adapter "
                    "and the port name in the camera's ptz.serial_port",
                ) from None
            log.info("serial port %s opened at %d bd", self.port, self.baudrate)
        return self._serial

    def _drop(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except Exception:
                pass
            self._serial = None

    def exchange(
        self, frames: list[bytes], reply_terminator: int | None = None, replies: int = 0
    ) -> list[bytes]:
        """Write ``frames``; after each, read ``replies`` packets ending in ``reply_terminator``
        (VISCA answers every command; Pelco-D lines are one-way). Bounded by timeout_s."""
        out: list[bytes] = []
        with self._lock:
            line = self._open()
            try:
                if replies:
                    line.reset_input_buffer()  # stale answers of an earlier, timed-out command
                for frame in frames:
                    line.write(frame)
                    line.flush()
                    for _ in range(replies):
                        out.append(self._read_packet(line, reply_terminator or 0xFF))
            except (serial.SerialException, OSError) as exc:
                self._drop()
                raise DriverError(
                    ErrorCode.CAMERA_DOWN, f"serial port {self.port} failed: {exc}"
                ) from None
        return out

    def _read_packet(self, line: serial.Serial, terminator: int) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        buf = bytearray()
        while time.monotonic() < deadline:
            line.timeout = max(0.01, deadline - time.monotonic())
            chunk = line.read(1)
            if not chunk:
                continue
            buf += chunk
            if chunk[0] == terminator:
                return bytes(buf)
        raise DriverError(
            ErrorCode.TIMEOUT,
            f"camera on {self.port} did not answer within {self.timeout_s:g} s "
            "(powered? address? wiring?)",
        )

    def close(self) -> None:
        with self._lock:
            self._drop()
