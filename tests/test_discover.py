"""ONVIF discovery against a loopback WS-Discovery responder and the ipycam ONVIF camera.

No multicast is sent here: the probe goes by unicast to a responder this test starts on
127.0.0.1 (the multicast send is the production path)."""

from __future__ import annotations

import argparse
import json
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from guetteur.ops import discover
from tests.fixtures.onvif import OnvifCamera


class LoopbackResponder:
    """Answers WS-Discovery Probes the way a camera does (ProbeMatch with XAddrs and scopes)."""

    def __init__(self, xaddr: str, scopes: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.xaddr, self.scopes = xaddr, scopes
        self.probes = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            root = ET.fromstring(data)
            mid = next(el.text for el in root.iter() if el.tag.endswith("MessageID"))
            if not any(el.tag.endswith("Probe") for el in root.iter()):
                continue
            self.probes += 1
            answer = f"""<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
  xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"
  xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery"
  xmlns:dn="http://www.onvif.org/ver10/network/wsdl">
 <s:Header><a:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</a:Action>
  <a:RelatesTo>{mid}</a:RelatesTo></s:Header>
 <s:Body><d:ProbeMatches><d:ProbeMatch>
  <a:EndpointReference><a:Address>urn:uuid:1b2c3d4e-0000-4000-8000-00000000cafe</a:Address></a:EndpointReference>
  <d:Types>dn:NetworkVideoTransmitter</d:Types>
  <d:Scopes>{self.scopes}</d:Scopes>
  <d:XAddrs>{self.xaddr}</d:XAddrs>
  <d:MetadataVersion>1</d:MetadataVersion>
 </d:ProbeMatch></d:ProbeMatches></s:Body></s:Envelope>"""
            self.sock.sendto(answer.encode(), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def responder(onvif_camera: OnvifCamera) -> Iterator[LoopbackResponder]:
    r = LoopbackResponder(
        onvif_camera.url,
        "onvif://www.onvif.org/name/Rivoli%20Nord "
        "onvif://www.onvif.org/hardware/ipycam onvif://www.onvif.org/type/video_encoder",
    )
    yield r
    r.close()


@pytest.mark.slow
def test_probe_and_describe_real_onvif_camera(
    responder: LoopbackResponder, onvif_camera: OnvifCamera
) -> None:
    found = discover.discover(
        ("127.0.0.1", responder.port),
        timeout_s=1.0,
        username=onvif_camera.username,
        password=onvif_camera.password,
    )
    assert responder.probes >= 1
    assert len(found) == 1  # the repeated probe's answer is de-duplicated
    cam = found[0]
    assert cam.error is None, cam.error
    assert cam.name == "Rivoli Nord" and cam.hardware == "ipycam"
    assert cam.has_ptz is True
    assert cam.profiles, "GetProfiles returned no profile"
    assert any(p.uri and p.uri.startswith("rtsp://") for p in cam.profiles)

    entries = discover.cameras_for_config(found, onvif_camera.username, onvif_camera.password)
    assert entries[0]["id"] == "Rivoli-Nord"
    assert entries[0]["url"].startswith("rtsp://")
    assert entries[0]["ptz"]["protocol"] == "onvif"
    from guetteur.config import validate_config

    validate_config({"gateway_id": "gw1", "cameras": entries})


def test_wrong_password_is_reported_per_camera(responder: LoopbackResponder) -> None:
    found = discover.discover(
        ("127.0.0.1", responder.port), timeout_s=0.6, username="operator", password="wrong"
    )
    assert len(found) == 1
    assert found[0].error is not None
    assert "refused" in found[0].error


@pytest.mark.slow
def test_cli_json_and_nothing_found(
    responder: LoopbackResponder,
    onvif_camera: OnvifCamera,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = argparse.ArgumentParser()
    discover.add_arguments(parser)
    monkeypatch.setenv("ONVIF_PASSWORD", onvif_camera.password)
    args = parser.parse_args(
        [
            "--target",
            f"127.0.0.1:{responder.port}",
            "--timeout",
            "0.6",
            "--username",
            onvif_camera.username,
            "--json",
        ]
    )
    assert discover.run(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["has_ptz"] is True

    # a port where nobody answers: exit 1 and a sentence saying what to check
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        args = parser.parse_args(
            ["--target", f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "0.3"]
        )
        assert discover.run(args) == 1
        assert "no ONVIF camera answered" in capsys.readouterr().out
    finally:
        silent.close()


def test_parse_ignores_garbage() -> None:
    assert discover.parse_probe_matches(b"not xml") == []
    assert discover.parse_probe_matches(b"<a/>") == []
