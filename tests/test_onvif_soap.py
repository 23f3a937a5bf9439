"""The ONVIF SOAP client (guetteur.onvif.soap) against ipycam, and against loopback sockets that
misbehave the ways cameras do: a closed port, a port that never answers, a web page instead of
SOAP, a SOAP fault."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from guetteur.onvif.device import get_services
from guetteur.onvif.soap import NS, SoapClient, SoapError, envelope, find_text, password_digest
from tests.fixtures.broker import free_port
from tests.fixtures.onvif import OnvifCamera

CAPS = f"{NS['tds']}/GetCapabilities"
CAPS_BODY = "<tds:GetCapabilities><tds:Category>All</tds:Category></tds:GetCapabilities>"


class OneShotHttp:
    """Accepts connections on loopback and answers each request with ``answer`` (raw bytes), or
    never answers when ``answer`` is None."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        held: list[socket.socket] = []
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            held.append(conn)
            conn.settimeout(2)
            data = b""
            while b"</s:Envelope>" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            self.requests.append(data)
            if self.answer is not None:
                conn.sendall(self.answer)
                conn.close()
        for conn in held:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def http_answer() -> Iterator[list[OneShotHttp]]:
    servers: list[OneShotHttp] = []
    yield servers
    for s in servers:
        s.close()


def serve(servers: list[OneShotHttp], answer: bytes | None) -> OneShotHttp:
    server = OneShotHttp(answer)
    servers.append(server)
    return server


def http_response(status: str, body: bytes, content_type: str = "application/soap+xml") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def test_digest_matches_the_ws_security_profile() -> None:
    nonce, created = b"0123456789abcdef", "2026-01-01T00:00:00.000Z"
    expected = base64.b64encode(hashlib.sha1(nonce + created.encode() + b"pw").digest()).decode()
    assert password_digest(nonce, created, "pw") == expected
    # the envelope declares every prefix callers use, and carries the token only with a user
    plain = envelope("<tptz:Stop/>", None, None).decode()
    assert all(f'xmlns:{p}="{NS[p]}"' in plain for p in ("s", "tds", "trt", "tptz", "tt"))
    assert "UsernameToken" not in plain
    signed = envelope("<tptz:Stop/>", "op<1>", "pw").decode()
    assert "<wsse:Username>op&lt;1&gt;</wsse:Username>" in signed and "PasswordDigest" in signed


def test_real_camera_answers_and_refuses_a_wrong_password(onvif_camera: OnvifCamera) -> None:
    client = SoapClient(onvif_camera.url, onvif_camera.username, onvif_camera.password, 3.0)
    services = get_services(client)
    assert services.ptz and services.ptz.endswith("/onvif/ptz_service")
    assert client.service_path(services.media) == "/onvif/media_service"
    assert client.service_path(None) == "/onvif/device_service"
    root = client.call(f"{NS['trt']}/GetProfiles", "<trt:GetProfiles/>", "/onvif/media_service")
    assert find_text(root, "Profiles", "Name")

    wrong = SoapClient(onvif_camera.url, onvif_camera.username, "wrong", 3.0)
    with pytest.raises(SoapError) as err:
        wrong.call(CAPS, CAPS_BODY)
    assert err.value.kind == "unauthorized" and err.value.status == 401
    assert err.value.operation == "GetCapabilities"
    assert f"{wrong.where} refused GetCapabilities: " in err.value.message
    assert "not authorized" in err.value.message


def test_closed_port_silent_camera_web_page_and_fault(http_answer: list[OneShotHttp]) -> None:
    closed = free_port()
    with pytest.raises(SoapError) as err:
        SoapClient(f"http://127.0.0.1:{closed}/onvif/device_service").call(CAPS, CAPS_BODY)
    assert err.value.kind == "unreachable"
    assert err.value.message.startswith(f"127.0.0.1:{closed} unreachable: ")

    silent = serve(http_answer, None)
    with pytest.raises(SoapError) as err:
        SoapClient(f"http://127.0.0.1:{silent.port}", timeout_s=0.5).call(CAPS, CAPS_BODY)
    assert err.value.kind == "timeout"
    assert "did not answer GetCapabilities within 0.5 s" in err.value.message
    # the request itself: SOAP 1.2 with the action, to the device service by default
    deadline = time.monotonic() + 5
    while not silent.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    head = silent.requests[0].split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("POST /onvif/device_service HTTP/1.1")
    assert f'action="{CAPS}"' in head

    page = serve(http_answer, http_response("404 Not Found", b"<html><p>no", "text/html"))
    with pytest.raises(SoapError) as err:
        SoapClient(f"http://127.0.0.1:{page.port}/x").call(CAPS, CAPS_BODY)
    assert (err.value.kind, err.value.status) == ("fault", 404)
    assert err.value.message.endswith("refused GetCapabilities: HTTP 404")

    garbage = serve(http_answer, http_response("200 OK", b"not xml"))
    with pytest.raises(SoapError) as err:
        SoapClient(f"http://127.0.0.1:{garbage.port}/x").call(CAPS, CAPS_BODY)
    assert err.value.kind == "unreadable" and "unreadable answer to GetCapabilities" in str(
        err.value
    )

    # an ONVIF NotAuthorized fault with HTTP 400 (how many cameras refuse credentials)
    fault = (
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:ter="http://www.onvif.org/ver10/error">'
        "<s:Body><s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode>"
        "<s:Value>ter:NotAuthorized</s:Value></s:Subcode></s:Code>"
        '<s:Reason><s:Text xml:lang="en">Sender not Authorized</s:Text></s:Reason>'
        "</s:Fault></s:Body></s:Envelope>"
    ).encode()
    refused = serve(http_answer, http_response("400 Bad Request", fault))
    with pytest.raises(SoapError) as err:
        SoapClient(f"http://127.0.0.1:{refused.port}/x", "admin", "pw").call(CAPS, CAPS_BODY)
    assert (err.value.kind, err.value.reason) == ("unauthorized", "Sender not Authorized")

    with pytest.raises(ValueError, match="is not http"):
        SoapClient("rtsp://127.0.0.1/stream")
