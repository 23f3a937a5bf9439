"""ONVIF PTZ against ipycam (a virtual ONVIF camera from PyPI, its own process and venv, WS-Security
digest on). After each command the test reads the camera's PTZ status back with its own GetStatus
request, parsed here with a regular expression, independently of the driver's parser."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from guetteur.config import CameraConfig, PtzConfig
from guetteur.onvif.soap import envelope
from guetteur.ptz.service import PtzService
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.commands import CommandDispatcher
from guetteur.uplink.protocol import ErrorCode
from tests.fixtures.onvif import OnvifCamera
from tests.fixtures.publisher import CollectingPublisher

_POS = re.compile(
    r'<[\w:]*Position>\s*<[\w:]*PanTilt x="([^"]+)" y="([^"]+)"[^>]*/>\s*<[\w:]*Zoom x="([^"]+)"'
)
_MOVE = re.compile(r"<[\w:]*MoveStatus>\s*<[\w:]*PanTilt>(\w+)<")


def read_status(cam: OnvifCamera) -> tuple[float, float, float, str]:
    body = "<tptz:GetStatus><tptz:ProfileToken>Profile_Main</tptz:ProfileToken></tptz:GetStatus>"
    req = urllib.request.Request(
        cam.url.replace("device_service", "ptz_service"),
        data=envelope(body, cam.username, cam.password),
        headers={"Content-Type": "application/soap+xml; charset=utf-8"},
    )
    with urllib.request.urlopen(req, timeout=3) as resp:
        text = resp.read().decode()
    pos, move = _POS.search(text), _MOVE.search(text)
    assert pos and move, text
    return float(pos[1]), float(pos[2]), float(pos[3]), move[1]


class Rig:
    def __init__(self, cam: OnvifCamera, password: str | None = None) -> None:
        self.cam = cam
        self.publisher = CollectingPublisher()
        ptz = PtzConfig(
            protocol="onvif",
            url=cam.url,
            username=cam.username,
            password=password or cam.password,
            presets=16,
            pan_range=(-0.8, 0.8),
        )
        self.service = PtzService(
            [CameraConfig(id="onvif1", url="test:bars", ptz=ptz)],
            AuditTrail(self.publisher, "gw1"),
        )
        self.dispatcher = CommandDispatcher()
        self.service.register(self.dispatcher)
        self.service.start()

    def cmd(self, **payload: Any) -> dict[str, Any]:
        payload.setdefault("camera", "onvif1")
        payload.setdefault("operator", "alice")
        return self.dispatcher.handle("ptz", json.dumps(payload).encode())


@pytest.fixture
def rig(onvif_camera: OnvifCamera) -> Iterator[Rig]:
    r = Rig(onvif_camera)
    yield r
    r.service.close()


def approx(a: float, b: float, tol: float = 1e-3) -> bool:
    return abs(a - b) <= tol


def test_positioned_moves_presets_and_home(rig: Rig) -> None:
    assert rig.cmd(action="absolute", pan=0.2, tilt=-0.3, zoom=0.4)["ok"]
    pan, tilt, zoom, _ = read_status(rig.cam)
    assert (approx(pan, 0.2), approx(tilt, -0.3), approx(zoom, 0.4)) == (True, True, True)

    assert rig.cmd(action="relative", pan=0.1, tilt=0.1, zoom=-0.1)["ok"]
    pan, tilt, zoom, _ = read_status(rig.cam)
    assert (approx(pan, 0.3), approx(tilt, -0.2), approx(zoom, 0.3)) == (True, True, True)

    assert rig.cmd(action="set_preset", preset=5)["ok"]
    reply = rig.cmd(action="absolute", pan=1.0, tilt=0.0, zoom=0.0)  # pan clamped to 0.8
    assert reply["ok"] and reply["clamped"] == ["pan"]
    assert approx(read_status(rig.cam)[0], 0.8)

    assert rig.cmd(action="goto_preset", preset=5)["ok"]
    pan, tilt, zoom, _ = read_status(rig.cam)
    assert (approx(pan, 0.3), approx(tilt, -0.2), approx(zoom, 0.3)) == (True, True, True)

    assert rig.cmd(action="home")["ok"]
    assert read_status(rig.cam)[:3] == (0.0, 0.0, 0.0)

    missing = rig.cmd(action="goto_preset", preset=9)
    assert missing["error"]["code"] == ErrorCode.NOT_FOUND
    assert "preset 9" in missing["error"]["message"]
    assert rig.publisher.audit_records()[-1]["outcome"] == ErrorCode.NOT_FOUND


@pytest.mark.slow
def test_continuous_move_stop_and_dead_man(rig: Rig) -> None:
    assert rig.cmd(action="absolute", pan=0.0, tilt=0.0, zoom=0.0)["ok"]
    assert rig.cmd(action="move", pan=0.5)["ok"]
    time.sleep(0.3)
    pan, _, _, state = read_status(rig.cam)
    assert state == "MOVING" and pan > 0.05
    assert rig.cmd(action="stop")["ok"]
    pan_stopped, _, _, state = read_status(rig.cam)
    assert state == "IDLE"
    time.sleep(0.2)
    assert read_status(rig.cam)[0] == pan_stopped

    # no renewal: the camera reports IDLE within 1.5 s of the move
    assert rig.cmd(action="move", tilt=-0.5)["ok"]
    sent = time.monotonic()
    while read_status(rig.cam)[3] == "MOVING" and time.monotonic() - sent < 3.0:
        time.sleep(0.05)
    assert time.monotonic() - sent <= 1.5
    assert rig.cmd(action="zoom", zoom=0.5)["ok"]
    time.sleep(0.2)
    assert read_status(rig.cam)[3] == "MOVING"
    assert rig.cmd(action="stop")["ok"]


def test_wrong_password_is_a_clear_device_error(onvif_camera: OnvifCamera) -> None:
    r = Rig(onvif_camera, password="not-the-password")
    try:
        reply = r.cmd(action="home")
    finally:
        r.service.close()
    assert reply["error"]["code"] == ErrorCode.DEVICE_ERROR
    assert "not authorized" in reply["error"]["message"]
    assert "ptz.username/password" in reply["error"]["message"]
