"""Privacy masks inside the camera (ONVIF Media2), against the ONVIF test camera: pushed, read back,
and when a camera cannot confirm them, doctor says FAIL, the camera status says FAIL and every
event of that camera carries ``privacy_unverified`` — on a running gateway with a real broker."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from guetteur.centre.client import CentreClient
from guetteur.config import CameraConfig, validate_config
from guetteur.onvif.masks import Media2Masks, same_polygon, sync_masks, to_onvif
from guetteur.onvif.soap import SoapClient
from guetteur.ops.doctor import check_privacy_masks
from guetteur.runtime.gateway import Gateway
from guetteur.uplink import protocol
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.onvif import OnvifCamera
from tests.fixtures.waiting import wait_for

WINDOWS = [
    [(0.62, 0.05), (0.95, 0.05), (0.95, 0.30), (0.62, 0.30)],
    [(0.05, 0.10), (0.20, 0.10), (0.12, 0.40)],
]


def masked_camera_raw(onvif: OnvifCamera | None, **more: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": "palais-1",
        "url": "test:walk?start=1&end=3&duration=30&gop=1",
        "privacy_masks": WINDOWS,
    }
    if onvif is not None:
        raw |= {"onvif_url": onvif.url, "username": onvif.username, "password": onvif.password}
    return raw | more


def masked_camera(onvif: OnvifCamera | None, **more: Any) -> CameraConfig:
    return CameraConfig.model_validate(masked_camera_raw(onvif, **more))


def camera_masks(onvif: OnvifCamera) -> list[tuple[str, list[tuple[float, float]], bool]]:
    media = Media2Masks(SoapClient(onvif.url, onvif.username, onvif.password))
    return media.masks(media.configuration_token())


@pytest.mark.slow
def test_masks_are_pushed_once_and_read_back(onvif_camera: OnvifCamera) -> None:
    camera = masked_camera(onvif_camera)
    before = camera_masks(onvif_camera)
    first = sync_masks(camera)
    assert first.confirmed, first.detail
    created = camera_masks(onvif_camera)
    assert len(created) == len(before) + 2 or len(before) >= 2
    enabled = [points for _t, points, on in created if on]
    for window in WINDOWS:  # in ONVIF's -1..1 coordinates, y up
        assert any(same_polygon(to_onvif(window), points, 0.001) for points in enabled), enabled
    again = sync_masks(camera)
    assert again.confirmed and camera_masks(onvif_camera) == created  # nothing added twice
    assert check_privacy_masks(camera, 5.0).verdict == "PASS"


@pytest.mark.slow
def test_doctor_fails_a_camera_that_cannot_confirm_its_masks(
    onvif_camera_refusing_masks: OnvifCamera,
) -> None:
    refusing = masked_camera(onvif_camera_refusing_masks, id="refusing")
    status = sync_masks(refusing)
    assert not status.confirmed and "No more privacy masks" in status.detail
    check = check_privacy_masks(refusing, 5.0)
    assert check.verdict == "FAIL" and "onvif_url" in check.action
    nowhere = check_privacy_masks(masked_camera(None, id="no-onvif"), 5.0)
    assert nowhere.verdict == "FAIL" and "no ONVIF endpoint" in nowhere.detail


class Centre:
    def __init__(self, client: CentreClient, gateway: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.status: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        client.subscribe(f"{protocol.DEFAULT_ROOT}/{gateway}/cam/+/event", self._event)
        client.subscribe(f"{protocol.DEFAULT_ROOT}/{gateway}/cam/+/status", self._status)

    def _event(self, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.events.append(protocol.loads(bytes(msg.payload)))

    def _status(self, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.status.append(protocol.loads(bytes(msg.payload)))


def run_gateway(
    broker: MosquittoBroker, tmp_path: Path, camera: dict[str, Any], gateway_id: str
) -> tuple[Centre, Gateway, CentreClient]:
    config = validate_config(
        {
            "gateway_id": gateway_id,
            "data_dir": str(tmp_path / gateway_id),
            "mqtt": {"url": broker.url},
            "recording": {"enabled": False},
            "outbox": {"enabled": False},
            "events": {"end_quiet_s": 1.0},
            "cameras": [camera],
        }
    )
    client = CentreClient(broker.url, f"centre-{gateway_id}").connect()
    centre = Centre(client, gateway_id)
    gateway = Gateway(config)
    gateway.start()
    return centre, gateway, client


@pytest.mark.slow
def test_a_camera_refusing_masks_is_flagged_in_its_status_and_every_event(
    broker: MosquittoBroker, tmp_path: Path, onvif_camera_refusing_masks: OnvifCamera
) -> None:
    centre, gateway, client = run_gateway(
        broker, tmp_path, masked_camera_raw(onvif_camera_refusing_masks), "gw-privacy"
    )
    try:
        failed = wait_for(
            lambda: [s for s in centre.status if s.get("privacy_masks", {}).get("verdict") == "FAIL"
                     and "checked" in s["privacy_masks"]],
            20,
            "a camera status saying the masks are not confirmed",
        )  # fmt: skip
        assert "No more privacy masks" in failed[-1]["privacy_masks"]["detail"]
        events = wait_for(lambda: list(centre.events), 30, "an event from the walk scene")
        assert all(e.get("privacy_unverified") is True for e in events), events
    finally:
        gateway.stop()
        client.close()


@pytest.mark.slow
def test_a_camera_that_confirms_its_masks_sends_plain_events(
    broker: MosquittoBroker, tmp_path: Path, onvif_camera: OnvifCamera
) -> None:
    centre, gateway, client = run_gateway(
        broker, tmp_path, masked_camera_raw(onvif_camera), "gw-private-ok"
    )
    try:
        wait_for(
            lambda: [
                s for s in centre.status if s.get("privacy_masks", {}).get("verdict") == "PASS"
            ],
            20,
            "a camera status with the masks confirmed",
        )
        events = wait_for(lambda: list(centre.events), 30, "an event from the walk scene")
        assert all("privacy_unverified" not in e for e in events), events
    finally:
        gateway.stop()
        client.close()
