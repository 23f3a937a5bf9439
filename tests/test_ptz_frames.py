"""Pelco-D and VISCA frames, byte for byte, written by the drivers through a real pty pair.

Expected frames are copied from the protocols' published command tables (checksums worked out by
hand from the rule, not by the code under test):
- Pelco-D: Pelco "D" Protocol Manual, TF-0002 v2 rev 1 (2003), "The message format": sync 0xFF,
  address, command 1, command 2, data 1, data 2, checksum = sum of bytes 2..6 modulo 256;
  command 2 bits 0x02 right, 0x04 left, 0x08 up, 0x10 down, 0x20 zoom tele, 0x40 zoom wide;
  extended commands set preset 00 03 00 nn, go to preset 00 07 00 nn. The same table is
  reproduced in camera manuals, e.g. https://manualshive.com/en/manual/benq/dvy23/2733512?page=50
  ("Left 0xFF Address 0x00 0x04 Pan Speed Tilt Speed SUM", "Zoom In ... 0x00 0x20 0x00 0x00").
- VISCA: Sony SRG-X400 command list, https://easymanua.ls/sony/srg-x400/manual/36555?p=20
  ("Left 8x 01 06 01 vv ww 01 03 FF", "UpRight 8x 01 06 01 vv ww 02 01 FF",
  "Stop 8x 01 06 01 vv ww 03 03 FF", "Home 8x 01 06 04 FF", vv 01-18, ww 01-17);
  CAM_Zoom Tele(variable) 8x 01 04 07 2p FF, Wide(variable) 3p, Stop 00 and CAM_Memory
  Set/Recall 8x 01 04 3F 01/02 pp FF (Sony EVI-D70 / Blackmagic VISCA command lists).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import serial

from guetteur.config import PtzConfig
from guetteur.ptz import pelco_d, visca
from guetteur.ptz.base import DriverError
from guetteur.ptz.pelco_d import PelcoDDriver
from guetteur.ptz.serial_line import SerialLine
from guetteur.ptz.service import make_driver
from guetteur.ptz.visca import ViscaDriver
from guetteur.uplink.protocol import ErrorCode
from tests.fixtures.serial import PtyPair, read_exactly


def h(text: str) -> bytes:
    return bytes.fromhex(text)


@pytest.fixture
def device(pty_pair: PtyPair) -> Iterator[serial.Serial]:
    port = serial.Serial(pty_pair.device, 9600, timeout=1.0)
    yield port
    port.close()


@pytest.fixture
def line(pty_pair: PtyPair) -> Iterator[SerialLine]:
    ln = SerialLine(pty_pair.gateway, 9600, timeout_s=1.0)
    yield ln
    ln.close()


# Pelco-D: (driver call, frame from the spec table with a hand-computed checksum)
PELCO_CASES = [
    # Left, pan speed 0x20: 01+00+04+20+00 = 0x25
    (lambda d: d.move(-32 / 63, 0.0, 0.0), "FF 01 00 04 20 00 25"),
    # Up, tilt speed 0x3F (full): 01+08+3F = 0x48
    (lambda d: d.move(0.0, 1.0, 0.0), "FF 01 00 08 00 3F 48"),
    # Right + down (0x12), both 0x3F: 01+12+3F+3F = 0x91
    (lambda d: d.move(1.0, -1.0, 0.0), "FF 01 00 12 3F 3F 91"),
    # Zoom in (tele) / out (wide)
    (lambda d: d.move(0.0, 0.0, 0.5), "FF 01 00 20 00 00 21"),
    (lambda d: d.move(0.0, 0.0, -0.5), "FF 01 00 40 00 00 41"),
    # Stop: all zero
    (lambda d: d.stop(), "FF 01 00 00 00 00 01"),
    # Set preset 3 / go to preset 3
    (lambda d: d.set_preset(3), "FF 01 00 03 00 03 07"),
    (lambda d: d.goto_preset(3), "FF 01 00 07 00 03 0B"),
]


@pytest.mark.parametrize(("call", "expected"), PELCO_CASES)
def test_pelco_d_frames_on_the_wire(
    line: SerialLine, device: serial.Serial, call: object, expected: str
) -> None:
    driver = PelcoDDriver(line, address=1)
    call(driver)  # type: ignore[operator]
    assert read_exactly(device, 7).hex(" ").upper() == expected


def test_pelco_d_checksum_wraps_modulo_256(line: SerialLine, device: serial.Serial) -> None:
    # address 0xFE, go to preset 0xFF: FE+00+07+00+FF = 0x204 -> 0x04
    PelcoDDriver(line, address=0xFE).goto_preset(0xFF)
    # address 0x0A, right+down at 0x3F/0x3F: 0A+00+12+3F+3F = 0x9A
    PelcoDDriver(line, address=0x0A).move(1.0, -1.0, 0.0)
    assert read_exactly(device, 14) == h("FF FE 00 07 00 FF 04") + h("FF 0A 00 12 3F 3F 9A")


def test_pelco_d_home_uses_the_configured_preset(line: SerialLine, device: serial.Serial) -> None:
    PelcoDDriver(line, address=1, home_preset=1).home()
    assert read_exactly(device, 7) == h("FF 01 00 07 00 01 09")
    with pytest.raises(DriverError) as err:
        PelcoDDriver(line, address=1).home()
    assert err.value.code == ErrorCode.NOT_SUPPORTED


def test_pelco_d_frame_rejects_bad_bytes() -> None:
    with pytest.raises(ValueError):
        pelco_d.frame(256, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        pelco_d.preset_frame(1, pelco_d.GOTO_PRESET, 0)


class ViscaPeer:
    """The camera's end of the line: collects VISCA packets and answers each with an ACK
    (``y0 41 FF``) — or with an error when told to."""

    def __init__(self, port: serial.Serial, address: int = 1) -> None:
        self.port = port
        self.reply_from = (address + 8) << 4
        self.packets: list[bytes] = []
        self.answer_error: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        self.port.timeout = 0.05
        while not self._stop.is_set():
            buf += self.port.read(max(1, self.port.in_waiting))
            while b"\xff" in buf:
                pkt, buf = buf.split(b"\xff", 1)
                self.packets.append(pkt + b"\xff")
                if self.answer_error is None:
                    self.port.write(bytes((self.reply_from, 0x41, 0xFF)))
                else:
                    self.port.write(bytes((self.reply_from, 0x61, self.answer_error, 0xFF)))

    def wait(self, n: int, timeout: float = 2.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.packets) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.packets

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.fixture
def visca_peer(device: serial.Serial) -> Iterator[ViscaPeer]:
    peer = ViscaPeer(device)
    yield peer
    peer.close()


VISCA_CASES = [
    # Left at half pan speed: vv = round(0.5 * 0x18) = 0x0C; tilt stopped (ww = 01, q = 03)
    (lambda d: d.move(-0.5, 0.0, 0.0), ["81 01 06 01 0C 01 01 03 FF"]),
    # UpRight at full speed: vv 0x18, ww 0x17
    (lambda d: d.move(1.0, 1.0, 0.0), ["81 01 06 01 18 17 02 01 FF"]),
    # Down
    (lambda d: d.move(0.0, -1.0, 0.0), ["81 01 06 01 01 17 03 02 FF"]),
    # Zoom tele fastest (p = 7) / zoom wide slowest (p = 0)
    (lambda d: d.move(0.0, 0.0, 1.0), ["81 01 04 07 27 FF"]),
    (lambda d: d.move(0.0, 0.0, -0.01), ["81 01 04 07 30 FF"]),
    # Stop: pan-tilt stop and zoom stop
    (lambda d: d.stop(), ["81 01 06 01 01 01 03 03 FF", "81 01 04 07 00 FF"]),
    (lambda d: d.home(), ["81 01 06 04 FF"]),
    # Preset 3 is memory 2
    (lambda d: d.set_preset(3), ["81 01 04 3F 01 02 FF"]),
    (lambda d: d.goto_preset(3), ["81 01 04 3F 02 02 FF"]),
]


@pytest.mark.parametrize(("call", "expected"), VISCA_CASES)
def test_visca_frames_on_the_wire(
    line: SerialLine, visca_peer: ViscaPeer, call: object, expected: list[str]
) -> None:
    driver = ViscaDriver(line, address=1)
    call(driver)  # type: ignore[operator]
    got = visca_peer.wait(len(expected))
    assert [p.hex(" ").upper() for p in got] == expected


def test_visca_pan_then_zoom_stops_the_pan(line: SerialLine, visca_peer: ViscaPeer) -> None:
    driver = ViscaDriver(line, address=1)
    driver.move(1.0, 0.0, 0.0)
    driver.move(0.0, 0.0, 1.0)  # pan-tilt was moving: its stop goes out with the zoom
    got = visca_peer.wait(3)
    assert got == [
        h("81 01 06 01 18 01 02 03 FF"),
        h("81 01 06 01 01 01 03 03 FF"),
        h("81 01 04 07 27 FF"),
    ]


def test_visca_camera_error_is_reported(line: SerialLine, visca_peer: ViscaPeer) -> None:
    visca_peer.answer_error = 0x41
    with pytest.raises(DriverError) as err:
        ViscaDriver(line, address=1).home()
    assert err.value.code == ErrorCode.DEVICE_ERROR
    assert "not executable" in err.value.message


def test_visca_silent_camera_times_out(pty_pair: PtyPair) -> None:
    ln = SerialLine(pty_pair.gateway, 9600, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(DriverError) as err:
        ViscaDriver(ln, address=1).home()
    ln.close()
    assert err.value.code == ErrorCode.TIMEOUT
    assert time.monotonic() - started < 1.5


def test_missing_serial_port_is_camera_down() -> None:
    ln = SerialLine("/dev/does-not-exist-ptz", 9600, timeout_s=0.3)
    with pytest.raises(DriverError) as err:
        PelcoDDriver(ln, address=1).stop()
    assert err.value.code == ErrorCode.CAMERA_DOWN


def test_visca_packet_checks() -> None:
    with pytest.raises(ValueError):
        visca.packet(0, 0x01)
    assert visca.packet(7, 0x01, 0x06, 0x04) == h("87 01 06 04 FF")
    visca.check_reply(h("F0 41 FF"), 7)  # camera 7 answers from 7 + 8 = 0xF


def test_visca_over_ip_wraps_packets_in_the_sony_header() -> None:
    """VISCA over IP (UDP 52381 on Sony cameras; a free loopback port here): payload type
    01 00, payload length, sequence number (big-endian), then the same VISCA packet."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2.0)
    port = peer.getsockname()[1]
    got: list[bytes] = []

    def answer() -> None:
        for _ in range(2):
            data, addr = peer.recvfrom(1024)
            got.append(data)
            seq = data[4:8]
            peer.sendto(h("01 11 00 03") + seq + h("90 41 FF"), addr)

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    driver = make_driver(PtzConfig(protocol="visca-ip", url=f"127.0.0.1:{port}", timeout_s=1.0))
    driver.home()
    driver.goto_preset(1)
    t.join(3)
    driver.close()
    peer.close()
    assert got == [
        h("01 00 00 05 00 00 00 01") + h("81 01 06 04 FF"),
        h("01 00 00 07 00 00 00 02") + h("81 01 04 3F 02 00 FF"),
    ]
