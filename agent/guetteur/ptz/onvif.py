"""ONVIF PTZ: the PTZ service's operations over the shared SOAP client (:mod:`guetteur.onvif.soap`,
WS-Security digest, why no ONVIF library).

At the first command the driver asks the camera where its PTZ and media services are
(GetCapabilities, re-based onto the configured host:port) and which media profile to steer (the
first with a PTZ configuration), then keeps both until the camera stops answering.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from guetteur.onvif.device import get_services
from guetteur.onvif.soap import NS, SoapClient, SoapError, find, local_name, named
from guetteur.ptz.base import DriverError, PtzStatus
from guetteur.uplink.protocol import ErrorCode

_PAN_TILT_SPACE = "http://www.onvif.org/ver10/tptz/PanTiltSpaces/"
_ZOOM_SPACE = "http://www.onvif.org/ver10/tptz/ZoomSpaces/"
# What a SOAP failure means to the PTZ command's caller.
_ERROR_CODES = {"timeout": ErrorCode.TIMEOUT, "unreachable": ErrorCode.CAMERA_DOWN}


def _driver_error(exc: SoapError) -> DriverError:
    hint = " (check ptz.username/password)" if exc.kind == "unauthorized" else ""
    return DriverError(
        _ERROR_CODES.get(exc.kind, ErrorCode.DEVICE_ERROR), f"ONVIF camera at {exc.message}{hint}"
    )


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
    """A camera's PTZ service at its ONVIF device service ``url``. One command at a time (a
    lock): the service's profile and addresses are shared state."""

    protocol = "onvif"

    def __init__(
        self,
        url: str,
        username: str | None,
        password: str | None,
        timeout_s: float,
        preset_count: int = 255,
    ) -> None:
        try:
            self._soap = SoapClient(url, username, password, timeout_s)
        except ValueError as exc:
            raise DriverError(ErrorCode.BAD_REQUEST, str(exc)) from None
        self.url = url
        self._ptz_path: str | None = None
        self._media_path: str | None = None
        self._profile: str | None = None
        self._lock = threading.Lock()

    # --- transport -------------------------------------------------------------------------
    def _call(self, path: str, action: str, body: str) -> ET.Element:
        try:
            return self._soap.call(action, body, path)
        except SoapError as exc:
            raise _driver_error(exc) from None

    def _connect(self) -> tuple[str, str]:
        """PTZ service path and the media profile token (found once, then cached)."""
        if self._ptz_path is not None and self._profile is not None:
            return self._ptz_path, self._profile
        try:
            services = get_services(self._soap)
        except SoapError as exc:
            raise _driver_error(exc) from None
        if services.ptz is None:
            raise DriverError(
                ErrorCode.NOT_SUPPORTED, f"ONVIF camera at {self.url} has no PTZ service"
            )
        ptz_path = self._soap.service_path(services.ptz)
        media_path = self._soap.service_path(services.media)
        profiles = self._call(media_path, f"{NS['trt']}/GetProfiles", "<trt:GetProfiles/>")
        token = None
        for el in named(profiles, "Profiles"):
            if token is None:
                token = el.get("token")
            if any(local_name(c.tag) == "PTZConfiguration" for c in el):
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
                return self._call(path, f"{NS['tptz']}/{operation}", body)
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
        for el in named(root, "Preset"):
            if el.get("token"):
                name = find(el, "Name")
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
        pan_tilt = find(root, "Position", "PanTilt")
        zoom = find(root, "Position", "Zoom")
        if pan_tilt is None and zoom is None:
            raise DriverError(ErrorCode.DEVICE_ERROR, "ONVIF GetStatus answer has no Position")
        move = find(root, "MoveStatus", "PanTilt")
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
