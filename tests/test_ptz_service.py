"""The ``ptz`` command end to end on the agent side: CommandDispatcher → PtzService → Pelco-D
driver → real pty (socat) → bytes read at the camera's end. Audit records are collected from
the publish interface."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import serial

from guetteur.config import CameraConfig, PtzConfig
from guetteur.ptz.service import PtzService
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.commands import CommandDispatcher
from guetteur.uplink.protocol import ErrorCode
from tests.fixtures.publisher import CollectingPublisher
from tests.fixtures.serial import PtyPair, read_exactly

STOP = bytes.fromhex("FF 01 00 00 00 00 01")


class Rig:
    def __init__(
        self, service: PtzService, publisher: CollectingPublisher, device: serial.Serial
    ) -> None:
        self.service = service
        self.publisher = publisher
        self.device = device
        self.dispatcher = CommandDispatcher(audit=None, rate_per_s=1000, burst=1000)
        service.register(self.dispatcher)

    def cmd(self, **payload: Any) -> dict[str, Any]:
        return self.dispatcher.handle("ptz", json.dumps(payload).encode(), {"client_id": "centre"})


def cameras(port: str, **ptz: Any) -> list[CameraConfig]:
    return [
        CameraConfig(
            id="dome",
            url="test:bars",
            ptz=PtzConfig(protocol="pelco-d", serial_port=port, address=1, presets=32, **ptz),
        ),
        CameraConfig(id="fixed", url="test:bars"),
    ]


@pytest.fixture
def rig(pty_pair: PtyPair, request: pytest.FixtureRequest) -> Iterator[Rig]:
    ptz = getattr(request, "param", {})
    publisher = CollectingPublisher()
    service = PtzService(cameras(pty_pair.gateway, **ptz), AuditTrail(publisher, "gw1"))
    service.start()
    device = serial.Serial(pty_pair.device, 9600, timeout=1.0)
    yield Rig(service, publisher, device)
    service.close()
    device.close()


@pytest.mark.slow
def test_dead_man_stop_reaches_the_camera_within_1_5_s(rig: Rig) -> None:
    reply = rig.cmd(camera="dome", action="move", pan=1.0, operator="alice")
    assert reply["ok"], reply
    assert reply["dead_man_s"] == 1.0
    sent = time.monotonic()
    assert read_exactly(rig.device, 7) == bytes.fromhex("FF 01 00 02 3F 00 42")
    assert read_exactly(rig.device, 7, timeout=3.0) == STOP
    elapsed = time.monotonic() - sent
    assert 0.9 <= elapsed <= 1.5, elapsed
    deadline = time.monotonic() + 1.0  # the record follows the bytes
    while len(rig.publisher.audit_records()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    records = rig.publisher.audit_records()
    assert [r["action"] for r in records] == ["ptz.move", "ptz.auto_stop"]
    assert records[1]["reason"] == "dead-man" and records[1]["operator"] == "alice"


@pytest.mark.slow
def test_renewed_move_keeps_going(rig: Rig) -> None:
    for _ in range(6):  # 6 renewals 0.4 s apart: 2.4 s of movement, longer than the dead-man
        assert rig.cmd(camera="dome", action="move", tilt=0.5, operator="alice")["ok"]
        assert read_exactly(rig.device, 7) == bytes.fromhex("FF 01 00 08 00 20 29")
        time.sleep(0.4)
    # each read above got a move frame, so no stop slipped in between renewals; now the
    # renewals end and the dead-man stop follows
    assert read_exactly(rig.device, 7, timeout=2.0) == STOP


def test_preemption_and_lock(rig: Rig) -> None:
    assert rig.cmd(camera="dome", action="goto_preset", preset=2, operator="alice", priority=10)[
        "ok"
    ]
    locked = rig.cmd(camera="dome", action="stop", operator="bob", priority=10)
    assert not locked["ok"] and locked["error"]["code"] == ErrorCode.LOCKED
    assert "alice" in locked["error"]["message"]
    taken = rig.cmd(camera="dome", action="goto_preset", preset=3, operator="chief", priority=50)
    assert taken["ok"] and taken["preempted"] == "alice"
    assert read_exactly(rig.device, 14) == bytes.fromhex(
        "FF 01 00 07 00 02 0A FF 01 00 07 00 03 0B"
    )  # bob's refused stop never reached the line
    actions = [(r["action"], r["operator"], r["outcome"]) for r in rig.publisher.audit_records()]
    assert actions == [
        ("ptz.goto_preset", "alice", "ok"),
        ("ptz.stop", "bob", "locked"),
        ("ptz.goto_preset", "chief", "ok"),
    ]
    assert rig.publisher.audit_records()[2]["preempted"] == "alice"


@pytest.mark.parametrize("rig", [{"hold_s": 0.5}], indirect=True)
def test_hold_timeout_releases_control(rig: Rig) -> None:
    assert rig.cmd(camera="dome", action="set_preset", preset=1, operator="alice")["ok"]
    refused = rig.cmd(camera="dome", action="set_preset", preset=2, operator="bob")
    assert refused["error"]["code"] == ErrorCode.LOCKED
    time.sleep(0.6)
    assert rig.cmd(camera="dome", action="set_preset", preset=2, operator="bob")["ok"]


@pytest.mark.parametrize("rig", [{"home_preset": 7, "idle_return_s": 0.5}], indirect=True)
def test_idle_return_to_home_preset(rig: Rig) -> None:
    assert rig.cmd(camera="dome", action="goto_preset", preset=4, operator="alice")["ok"]
    assert read_exactly(rig.device, 7) == bytes.fromhex("FF 01 00 07 00 04 0C")
    assert read_exactly(rig.device, 7, timeout=2.0) == bytes.fromhex("FF 01 00 07 00 07 0F")
    deadline = time.monotonic() + 1.0  # the record follows the bytes
    while (
        rig.publisher.audit_records()[-1]["action"] != "ptz.auto_home"
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    assert rig.publisher.audit_records()[-1]["action"] == "ptz.auto_home"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"camera": "nope", "action": "stop"}, ErrorCode.UNKNOWN_CAMERA),
        ({"camera": "fixed", "action": "stop"}, ErrorCode.NOT_SUPPORTED),
        ({"camera": "dome", "action": "move", "pan": 3}, ErrorCode.OUT_OF_RANGE),
        ({"camera": "dome", "action": "goto_preset", "preset": 33}, ErrorCode.OUT_OF_RANGE),
        ({"camera": "dome", "action": "absolute", "pan": 0.2}, ErrorCode.NOT_SUPPORTED),
        ({"camera": "dome", "action": "spin"}, ErrorCode.BAD_REQUEST),
        ({"camera": "dome", "action": "move", "pan": "left"}, ErrorCode.BAD_REQUEST),
        ({"camera": "dome", "action": "stop", "priority": 500}, ErrorCode.BAD_REQUEST),
    ],
)
def test_bad_input_gets_a_code_and_a_sentence(rig: Rig, payload: dict[str, Any], code: str) -> None:
    reply = rig.cmd(**payload)
    assert not reply["ok"]
    assert reply["error"]["code"] == code, reply
    assert len(reply["error"]["message"]) > 10
    if code != ErrorCode.BAD_REQUEST:  # refused by the service: audited by it
        assert rig.publisher.audit_records()[-1]["outcome"] == code


def test_clamped_speed_is_reported(pty_pair: PtyPair) -> None:
    publisher = CollectingPublisher()
    cams = cameras(pty_pair.gateway, max_speed=0.5)
    service = PtzService(cams, AuditTrail(publisher, "gw1"))
    dispatcher = CommandDispatcher()
    service.register(dispatcher)
    with serial.Serial(pty_pair.device, 9600, timeout=1.0) as device:
        reply = dispatcher.handle("ptz", b'{"camera":"dome","action":"move","pan":-1}')
        assert reply["ok"] and reply["clamped"] == ["pan"]
        # half of 0x3F rounds to 0x20: 01+04+20 = 0x25
        assert read_exactly(device, 7) == bytes.fromhex("FF 01 00 04 20 00 25")
    service.close()  # the camera was still moving: close() stops it
    assert publisher.audit_records()[-1]["reason"] == "shutdown"


@pytest.mark.slow
def test_silent_cameras_fail_within_the_timeout() -> None:
    # an ONVIF camera that accepts the connection and never answers, and one with nothing
    # listening, and a VISCA camera on a missing serial port
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    cams = [
        CameraConfig(
            id="hung",
            url="test:bars",
            ptz=PtzConfig(
                protocol="onvif",
                url=f"http://127.0.0.1:{silent.getsockname()[1]}/onvif/device_service",
                timeout_s=0.5,
            ),
        ),
        CameraConfig(
            id="off",
            url="test:bars",
            ptz=PtzConfig(
                protocol="onvif",
                url=f"http://127.0.0.1:{closed_port}/onvif/device_service",
                timeout_s=0.5,
            ),
        ),
        CameraConfig(
            id="unplugged",
            url="test:bars",
            ptz=PtzConfig(protocol="visca", serial_port="/dev/ttyPTZ-missing", timeout_s=0.5),
        ),
    ]
    publisher = CollectingPublisher()
    service = PtzService(cams, AuditTrail(publisher, "gw1"))
    dispatcher = CommandDispatcher()
    service.register(dispatcher)
    try:
        for camera, code in (
            ("hung", ErrorCode.TIMEOUT),
            ("off", ErrorCode.CAMERA_DOWN),
            ("unplugged", ErrorCode.CAMERA_DOWN),
        ):
            started = time.monotonic()
            reply = dispatcher.handle(
                "ptz", json.dumps({"camera": camera, "action": "move", "pan": 0.5}).encode()
            )
            assert time.monotonic() - started < 2.0
            assert reply["error"]["code"] == code, reply
            assert camera in reply["error"]["message"]
        # the dead-man stop for the failed move is attempted and fails quietly (logged, audited)
        service.start()
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            stops = [r for r in publisher.audit_records() if r["action"] == "ptz.auto_stop"]
            if len(stops) == 3:
                break
            time.sleep(0.1)
        assert sorted(r["camera"] for r in stops) == ["hung", "off", "unplugged"]
        assert all(r["outcome"] != "ok" for r in stops)
    finally:
        service.close()
        silent.close()


def test_concurrent_operators_never_interleave_frames(rig: Rig) -> None:
    errors: list[dict[str, Any]] = []

    def steer(op: str) -> None:
        for i in range(20):
            reply = rig.cmd(camera="dome", action="goto_preset", preset=1 + i % 8, operator=op)
            if not reply["ok"] and reply["error"]["code"] != ErrorCode.LOCKED:
                errors.append(reply)

    threads = [threading.Thread(target=steer, args=(f"op{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = read_exactly(rig.device, 7 * 20, timeout=2.0)
    frames = [data[i : i + 7] for i in range(0, len(data), 7)]
    assert len(frames) == 20  # only the first operator got through: the others were locked
    assert all(f[0] == 0xFF and f[6] == sum(f[1:6]) % 256 for f in frames)


def test_domes_on_one_bus_share_the_line(pty_pair: PtyPair) -> None:
    cams = [
        CameraConfig(id=f"dome{a}", url="test:bars",
                     ptz=PtzConfig(protocol="pelco-d", serial_port=pty_pair.gateway, address=a))
        for a in (1, 2)
    ]  # fmt: skip
    publisher = CollectingPublisher()
    service = PtzService(cams, AuditTrail(publisher, "gw1"))
    dispatcher = CommandDispatcher()
    service.register(dispatcher)
    with serial.Serial(pty_pair.device, 9600, timeout=1.0) as device:
        for cam in ("dome1", "dome2"):
            payload = {"camera": cam, "action": "goto_preset", "preset": 1}
            assert dispatcher.handle("ptz", json.dumps(payload).encode())["ok"]
        # address 1 then address 2 on the same wire
        assert read_exactly(device, 14) == bytes.fromhex(
            "FF 01 00 07 00 01 09 FF 02 00 07 00 01 0A"
        )
    assert len(service._lines) == 1
    service.close()
