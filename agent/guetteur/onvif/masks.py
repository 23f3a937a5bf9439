"""Privacy masks inside the camera (ONVIF Media2), so they cover what we never re-encode.

The gateway blacks out the configured privacy polygons of every analysed frame and snapshot, but
live streams, recordings and exports are the camera's own encoded video: only the camera can
mask them. For each camera with ``privacy_masks``, this pushes the polygons to the camera with
Media2 ``CreateMask`` (solid colour, enabled) and reads them back with ``GetMasks``: at start and
every hour (someone may delete them on the camera's web page). A camera that cannot confirm
every polygon — no ONVIF endpoint configured, no Media2 service, mask creation refused, or the
read-back differs — is *unverified*: its status says so (doctor: FAIL) and its events carry
``privacy_unverified``.

Masks already on the camera are left alone (an installer's own masks only add privacy); only
missing polygons are created. Coordinates: the config's 0..1 (x right, y down) become ONVIF's
normalised -1..1 (x right, y up).
"""

from __future__ import annotations

import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from guetteur.config import CameraConfig
from guetteur.onvif.soap import NS, SoapClient, SoapError, find_text, named
from guetteur.timeutil import iso_ms

log = logging.getLogger(__name__)

MEDIA2_NS = "http://www.onvif.org/ver20/media/wsdl"
TOLERANCE = 0.02  # in ONVIF's -1..1 units: cameras round coordinates to their own grid
RECHECK_S = 3600.0

Polygon = Sequence[tuple[float, float]]


@dataclass(frozen=True)
class MaskStatus:
    """Whether a camera confirmed every configured privacy polygon, as of ``checked``."""

    camera: str
    confirmed: bool
    detail: str
    checked: float

    def verdict(self) -> dict[str, str]:
        """``privacy_masks`` of the camera status message, in doctor's vocabulary."""
        return {
            "verdict": "PASS" if self.confirmed else "FAIL",
            "detail": self.detail,
            "checked": iso_ms(self.checked),
        }


def to_onvif(polygon: Polygon) -> list[tuple[float, float]]:
    return [(round(2 * x - 1, 4), round(1 - 2 * y, 4)) for x, y in polygon]


def same_polygon(a: Polygon, b: Polygon, tolerance: float = TOLERANCE) -> bool:
    return len(a) == len(b) and all(
        abs(ax - bx) <= tolerance and abs(ay - by) <= tolerance
        for (ax, ay), (bx, by) in zip(a, b, strict=True)
    )


def onvif_endpoint(camera: CameraConfig) -> tuple[str, str | None, str | None] | None:
    """(device service URL, user, password) to reach the camera's ONVIF services: its
    ``onvif_url`` with the stream credentials, else its ONVIF PTZ settings; None without."""
    password = camera.password.get_secret_value() if camera.password is not None else None
    if camera.onvif_url:
        return camera.onvif_url, camera.username, password
    ptz = camera.ptz
    if ptz is not None and ptz.protocol == "onvif" and ptz.url:
        ptz_password = ptz.password.get_secret_value() if ptz.password is not None else None
        return ptz.url, ptz.username, ptz_password
    return None


class Media2Masks:
    """The Media2 mask operations of one camera."""

    def __init__(self, client: SoapClient) -> None:
        self.client = client
        self._path: str | None = None

    def _call(self, operation: str, body: str) -> ET.Element:
        if self._path is None:
            self._path = self._media2_path()
        return self.client.call(f"{MEDIA2_NS}/{operation}", body, self._path)

    def _media2_path(self) -> str:
        root = self.client.call(
            f"{NS['tds']}/GetServices",
            "<tds:GetServices><tds:IncludeCapability>false</tds:IncludeCapability>"
            "</tds:GetServices>",
        )
        for service in named(root, "Service"):
            if find_text(service, "Namespace") == MEDIA2_NS:
                return self.client.service_path(find_text(service, "XAddr"))
        raise SoapError(
            "fault",
            f"{self.client.where} has no ONVIF Media2 service: in-camera privacy masks are "
            "not available",
            where=self.client.where,
            operation="GetServices",
        )

    def configuration_token(self) -> str:
        root = self._call("GetVideoSourceConfigurations", "<tr2:GetVideoSourceConfigurations/>")
        for element in named(root, "Configurations"):
            token = element.get("token")
            if token:
                return token
        raise SoapError(
            "fault",
            f"{self.client.where} reports no video source configuration",
            where=self.client.where,
            operation="GetVideoSourceConfigurations",
        )

    def masks(self, config_token: str) -> list[tuple[str, list[tuple[float, float]], bool]]:
        """(token, polygon, enabled) of every mask on the video source configuration."""
        root = self._call(
            "GetMasks",
            f"<tr2:GetMasks><tr2:ConfigurationToken>{_text(config_token)}"
            "</tr2:ConfigurationToken></tr2:GetMasks>",
        )
        found = []
        for mask in named(root, "Masks"):
            points = [
                (float(p.get("x", "nan")), float(p.get("y", "nan"))) for p in named(mask, "Point")
            ]
            enabled = (find_text(mask, "Enabled") or "true").lower() == "true"
            found.append((mask.get("token") or "", points, enabled))
        return found

    def create(self, config_token: str, polygon: Polygon) -> str:
        points = "".join(f'<tt:Point x="{x:.4f}" y="{y:.4f}"/>' for x, y in polygon)
        root = self._call(
            "CreateMask",
            "<tr2:CreateMask><tr2:Mask>"
            f"<tt:ConfigurationToken>{_text(config_token)}</tt:ConfigurationToken>"
            f"<tt:Polygon>{points}</tt:Polygon><tt:Type>Color</tt:Type>"
            '<tt:Color X="0" Y="0" Z="0"/><tt:Enabled>true</tt:Enabled>'
            "</tr2:Mask></tr2:CreateMask>",
        )
        return find_text(root, "Token") or ""


def _text(value: str) -> str:
    return quoteattr(value)[1:-1]


def sync_masks(camera: CameraConfig, timeout_s: float = 5.0, push: bool = True) -> MaskStatus:
    """Push the camera's missing privacy polygons (unless ``push`` is False: doctor only reads)
    and read them back. Never raises: every failure is an unverified status with its reason."""
    now = time.time()
    wanted = [to_onvif(p) for p in camera.privacy_masks]
    endpoint = onvif_endpoint(camera)
    if endpoint is None:
        return MaskStatus(
            camera.id,
            False,
            "no ONVIF endpoint (onvif_url, or ONVIF PTZ) to set and check in-camera masks",
            now,
        )
    url, user, password = endpoint
    try:
        media = Media2Masks(SoapClient(url, user, password, timeout_s))
        token = media.configuration_token()
        present = media.masks(token)
        missing = [p for p in wanted if not _covered(p, present)]
        if missing and push:
            for polygon in missing:
                media.create(token, polygon)
            log.info("camera %s: %d privacy mask(s) created in the camera", camera.id, len(missing))
            present = media.masks(token)
            missing = [p for p in wanted if not _covered(p, present)]
    except (SoapError, ValueError) as exc:
        return MaskStatus(camera.id, False, f"in-camera masks not confirmed: {exc}", now)
    if missing:
        return MaskStatus(
            camera.id,
            False,
            f"{len(missing)} of {len(wanted)} privacy polygon(s) are not enabled in the camera",
            now,
        )
    return MaskStatus(
        camera.id, True, f"{len(wanted)} privacy polygon(s) enabled in the camera", now
    )


def _covered(polygon: Polygon, present: Sequence[tuple[str, Polygon, bool]]) -> bool:
    return any(enabled and same_polygon(polygon, points) for _t, points, enabled in present)


class PrivacyMaskService:
    """Keeps every camera's in-camera masks pushed and confirmed: at start, then hourly, on its
    own thread (an ONVIF call can take seconds; nothing else waits for it)."""

    def __init__(
        self,
        cameras: Sequence[CameraConfig],
        on_change: Callable[[MaskStatus], None] | None = None,
        recheck_s: float = RECHECK_S,
        sync: Callable[[CameraConfig], MaskStatus] = sync_masks,
    ) -> None:
        self.cameras = [c for c in cameras if c.enabled and c.privacy_masks]
        self._on_change = on_change
        self._recheck_s = recheck_s
        self._sync = sync
        self._status: dict[str, MaskStatus] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.cameras and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="privacy-masks", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop checking; a check still waiting on a camera is not waited for (daemon thread:
        the agent's stop stays within systemd's limit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(0.5)

    def status(self, camera: str) -> MaskStatus | None:
        with self._lock:
            return self._status.get(camera)

    def status_fields(self, camera: str) -> dict[str, object]:
        """What the camera status message says about in-camera masks (nothing for a camera
        without privacy masks; ``pending`` until the first check)."""
        if not any(c.id == camera for c in self.cameras):
            return {}
        status = self.status(camera)
        if status is None:
            return {"privacy_masks": {"verdict": "FAIL", "detail": "not checked yet"}}
        return {"privacy_masks": status.verdict()}

    def unverified(self, camera: str) -> bool:
        """True for a camera with privacy masks that has not (yet) confirmed them in-camera."""
        if not any(c.id == camera for c in self.cameras):
            return False
        status = self.status(camera)
        return status is None or not status.confirmed

    def check_all(self) -> None:
        for camera in self.cameras:
            if self._stop.is_set():
                return
            status = self._sync(camera)
            with self._lock:
                before = self._status.get(camera.id)
                self._status[camera.id] = status
            if not status.confirmed:
                log.error(
                    "camera %s: privacy masks NOT confirmed in the camera (%s); live, recordings "
                    "and exports may show private areas; its events are marked "
                    "privacy_unverified; checked again in %.0f min",
                    camera.id, status.detail, self._recheck_s / 60,
                )  # fmt: skip
            if self._on_change is not None and (
                before is None or before.confirmed != status.confirmed
            ):
                self._on_change(status)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_all()
            except Exception:
                log.exception("privacy masks: check failed; retrying later")
            self._stop.wait(self._recheck_s)
