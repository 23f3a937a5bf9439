"""ONVIF PTZ over SOAP 1.2 with WS-Security UsernameToken (PasswordDigest).

A small synchronous SOAP client on the standard library rather than an ONVIF library, because:
the PTZ service is called from plain threads (onvif-zeep-async is asyncio-only), we need ten
operations out of hundreds (GetCapabilities, GetProfiles, GetPresets and the PTZ calls), the
WS-Security digest is ten lines, and it adds no dependency (zeep + lxml + httpx) to the gateway
image. Responses are parsed with ElementTree by local name only, so cameras that differ in
namespace prefixes still parse.

Service addresses (XAddr) that a camera reports are re-based onto the host:port configured for
it: cameras behind NAT or with a misconfigured network page often report an address the gateway
cannot reach.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import threading
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from guetteur.ptz.base import DriverError, PtzStatus
from guetteur.uplink.protocol import ErrorCode

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tptz": "http://www.onvif.org/ver20/ptz/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
}
_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordDigest"
)
_B64 = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)
_PAN_TILT_SPACE = "http://www.onvif.org/ver10/tptz/PanTiltSpaces/"
_ZOOM_SPACE = "http://www.onvif.org/ver10/tptz/ZoomSpaces/"


def password_digest(nonce: bytes, created: str, password: str) -> str:
    """WS-Security UsernameToken profile 1.0: Base64(SHA-1(nonce + created + password))."""
    return base64.b64encode(
        hashlib.sha1(nonce + created.encode() + password.encode()).digest()
    ).decode()


def security_header(username: str, password: str) -> str:
    nonce = os.urandom(16)
    created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return (
        f'<wsse:Security xmlns:wsse="{NS["wsse"]}" xmlns:wsu="{NS["wsu"]}">'
        "<wsse:UsernameToken>"
        f"<wsse:Username>{escape(username)}</wsse:Username>"
        f'<wsse:Password Type="{_DIGEST}">{password_digest(nonce, created, password)}'
        "</wsse:Password>"
        f'<wsse:Nonce EncodingType="{_B64}">{base64.b64encode(nonce).decode()}</wsse:Nonce>'
        f"<wsu:Created>{created}</wsu:Created>"
        "</wsse:UsernameToken></wsse:Security>"
    )


def envelope(body: str, username: str | None, password: str | None) -> bytes:
    header = f"<s:Header>{security_header(username, password or '')}</s:Header>" if username else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:tds="{NS["tds"]}" xmlns:trt="{NS["trt"]}" '
        f'xmlns:tptz="{NS["tptz"]}" xmlns:tt="{NS["tt"]}">{header}<s:Body>{body}</s:Body>'
        "</s:Envelope>"
    ).encode()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(root: ET.Element, *names: str) -> ET.Element | None:
    """First descendant whose local-name path ends with ``names``."""
    for el in root.iter():
        if _local(el.tag) == names[0]:
            if len(names) == 1:
                return el
            found = _find(el, *names[1:])
            if found is not None:
                return found
    return None


def _float(value: str | None) -> float:
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0


def _vector(pan: float | None, tilt: float | None, zoom: float | None, space: str) -> str:
    out = ""
    if pan is not None or tilt is not None:
        out += (
            f'<tt:PanTilt x="{pan or 0.0:.6f}" y="{tilt or 0.0:.6f}" '
            f'space="{_PAN_TILT_SPACE}{space}"/>'
        )
    if zoom is not None:
        zoom_space = "ZoomGenericSpeedSpace" if space == "GenericSpeedSpace" else space
        out += f'<tt:Zoom x="{zoom:.6f}" space="{_ZOOM_SPACE}{zoom_space}"/>'
    return out


class OnvifPtzDriver:
    protocol = "onvif"

    def __init__(
        self,
        url: str,
        username: str | None,
        password: str | None,
        timeout_s: float,
        preset_count: int = 255,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DriverError(ErrorCode.BAD_REQUEST, f"ONVIF url {url!r} is not http(s)://HOST")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._device_path = parts.path or "/onvif/device_service"
        self.username = username
        self.password = password
        self.timeout_s = timeout_s
        self._ptz_path: str | None = None
        self._media_path: str | None = None
        self._profile: str | None = None
        self._lock = threading.Lock()

    # --- transport -------------------------------------------------------------------------
    def _post(self, path: str, action: str, body: str) -> ET.Element:
        payload = envelope(body, self.username, self.password)
        conn_cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = conn_cls(self._host, self._port, timeout=self.timeout_s)
        where = f"{self._host}:{self._port}"
        try:
            conn.request(
                "POST",
                path,
                body=payload,
                headers={
                    "Content-Type": f'application/soap+xml; charset=utf-8; action="{action}"',
                    "SOAPAction": action,
                },
            )
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError:
            raise DriverError(
                ErrorCode.TIMEOUT,
                f"ONVIF camera at {where} did not answer within {self.timeout_s:g} s",
            ) from None
        except OSError as exc:
            raise DriverError(
                ErrorCode.CAMERA_DOWN, f"ONVIF camera at {where} unreachable: {exc}"
            ) from None
        finally:
            conn.close()
        try:
            root = ET.fromstring(data)
        except ET.ParseError as exc:
            raise DriverError(
                ErrorCode.DEVICE_ERROR,
                f"ONVIF camera at {where} sent an unreadable answer to {action.rsplit('/', 1)[-1]} "
                f"(HTTP {resp.status}): {exc}",
            ) from None
        fault = _find(root, "Fault")
        if fault is not None or resp.status >= 400:
            reason = _find(fault, "Text") if fault is not None else None
            text = (reason.text or "").strip() if reason is not None else f"HTTP {resp.status}"
            hint = " (check ptz.username/password)" if resp.status in (401, 403) else ""
            raise DriverError(
                ErrorCode.DEVICE_ERROR,
                f"ONVIF camera at {where} refused {action.rsplit('/', 1)[-1]}: "
                f"{text or 'fault'}{hint}",
            )
        return root

    def _rebase(self, xaddr: str | None, default: str) -> str:
        if not xaddr:
            return default
        return urlsplit(xaddr.strip()).path or default

    def _connect(self) -> tuple[str, str]:
        """PTZ service path and the media profile token (found once, then cached)."""
        if self._ptz_path is not None and self._profile is not None:
            return self._ptz_path, self._profile
        caps = self._post(
            self._device_path,
            f"{NS['tds']}/GetCapabilities",
            "<tds:GetCapabilities><tds:Category>All</tds:Category></tds:GetCapabilities>",
        )
        ptz = _find(caps, "PTZ", "XAddr")
        media = _find(caps, "Media", "XAddr")
        if ptz is None:
            raise DriverError(
                ErrorCode.NOT_SUPPORTED, f"ONVIF camera at {self.url} has no PTZ service"
            )
        ptz_path = self._rebase(ptz.text, self._device_path)
        media_path = self._rebase(media.text if media is not None else None, self._device_path)
        profiles = self._post(media_path, f"{NS['trt']}/GetProfiles", "<trt:GetProfiles/>")
        token = None
        for el in profiles.iter():
            if _local(el.tag) == "Profiles":
                if token is None:
                    token = el.get("token")
                if any(_local(c.tag) == "PTZConfiguration" for c in el):
                    token = el.get("token")
                    break
        if not token:
            raise DriverError(ErrorCode.DEVICE_ERROR, f"ONVIF camera at {self.url} has no profile")
        self._ptz_path, self._media_path, self._profile = ptz_path, media_path, token
        return ptz_path, token

    def _ptz(self, operation: str, inner: str = "") -> ET.Element:
        with self._lock:
            path, profile = self._connect()
            body = (
                f"<tptz:{operation}><tptz:ProfileToken>{escape(profile)}</tptz:ProfileToken>"
                f"{inner}</tptz:{operation}>"
            )
            try:
                return self._post(path, f"{NS['tptz']}/{operation}", body)
            except DriverError as exc:
                if exc.code in (ErrorCode.CAMERA_DOWN, ErrorCode.TIMEOUT):
                    self._ptz_path = None  # the camera may come back with other addresses
                raise

    # --- operations --------------------------------------------------------------------------
    def move(self, pan: float, tilt: float, zoom: float) -> None:
        self._ptz(
            "ContinuousMove",
            f"<tptz:Velocity>{_vector(pan, tilt, zoom, 'VelocityGenericSpace')}</tptz:Velocity>",
        )

    def stop(self) -> None:
        self._ptz("Stop", "<tptz:PanTilt>true</tptz:PanTilt><tptz:Zoom>true</tptz:Zoom>")

    def _speed(self, speed: float | None) -> str:
        if speed is None:
            return ""
        return f"<tptz:Speed>{_vector(speed, speed, speed, 'GenericSpeedSpace')}</tptz:Speed>"

    def presets(self) -> dict[str, str]:
        """Preset name → token (the camera's own tokens; ours are named by their number)."""
        root = self._ptz("GetPresets")
        out: dict[str, str] = {}
        for el in root.iter():
            if _local(el.tag) == "Preset" and el.get("token"):
                name = _find(el, "Name")
                token = el.get("token") or ""
                out[(name.text or "").strip() if name is not None else token] = token
                out.setdefault(token, token)
        return out

    def _preset_token(self, preset: int) -> str | None:
        return self.presets().get(str(preset))

    def goto_preset(self, preset: int, speed: float | None = None) -> None:
        token = self._preset_token(preset)
        if token is None:
            raise DriverError(
                ErrorCode.NOT_FOUND,
                f"preset {preset} does not exist on this camera (set it first with set_preset)",
            )
        self._ptz(
            "GotoPreset",
            f"<tptz:PresetToken>{escape(token)}</tptz:PresetToken>{self._speed(speed)}",
        )

    def set_preset(self, preset: int) -> None:
        existing = self._preset_token(preset)
        token = f"<tptz:PresetToken>{escape(existing)}</tptz:PresetToken>" if existing else ""
        self._ptz("SetPreset", f"<tptz:PresetName>{preset}</tptz:PresetName>{token}")

    def home(self) -> None:
        self._ptz("GotoHomePosition")

    def absolute(
        self, pan: float | None, tilt: float | None, zoom: float | None, speed: float | None
    ) -> None:
        self._ptz(
            "AbsoluteMove",
            f"<tptz:Position>{_vector(pan, tilt, zoom, 'PositionGenericSpace')}</tptz:Position>"
            f"{self._speed(speed)}",
        )

    def relative(self, pan: float, tilt: float, zoom: float, speed: float | None) -> None:
        self._ptz(
            "RelativeMove",
            f"<tptz:Translation>{_vector(pan, tilt, zoom, 'TranslationGenericSpace')}"
            f"</tptz:Translation>{self._speed(speed)}",
        )

    def status(self) -> PtzStatus | None:
        root = self._ptz("GetStatus")
        pan_tilt = _find(root, "Position", "PanTilt")
        zoom = _find(root, "Position", "Zoom")
        if pan_tilt is None and zoom is None:
            raise DriverError(ErrorCode.DEVICE_ERROR, "ONVIF GetStatus answer has no Position")
        move = _find(root, "MoveStatus", "PanTilt")
        moving = None
        if move is not None and move.text:
            moving = move.text.strip().upper() == "MOVING"
        return PtzStatus(
            pan=_float(pan_tilt.get("x") if pan_tilt is not None else None),
            tilt=_float(pan_tilt.get("y") if pan_tilt is not None else None),
            zoom=_float(zoom.get("x") if zoom is not None else None),
            moving=moving,
        )

    def close(self) -> None:
        pass
