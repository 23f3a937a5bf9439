"""A ``cameras[]`` entry: its stream, masks, motion detector settings, object filter and PTZ."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from guetteur.config.base import ConfigSection, Polygon
from guetteur.uplink.protocol import ID_PATTERN

if TYPE_CHECKING:  # defined in config/analytics.py, which needs this module's filters
    from guetteur.config.analytics import CameraAnalyticsConfig

SOURCE_SCHEMES = ("rtsp://", "rtsps://", "file:", "test:", "picamera2:", "v4l2:")
_SCHEMES_SENTENCE = "expected rtsp://, rtsps://, file:, test:, picamera2: or v4l2:"


class MotionConfig(ConfigSection):
    blur: int = Field(
        5, ge=1, le=31, description="Gaussian blur kernel (odd) applied before differencing"
    )
    background_alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Running-average learning rate of the background model per analysed frame",
    )
    threshold: int = Field(
        25, ge=1, le=255, description="Per-pixel grey-level difference counted as change"
    )
    dilate: int = Field(
        2, ge=0, le=10, description="Dilation iterations joining nearby changed pixels"
    )
    min_area: float = Field(
        0.002, ge=0, le=1, description="Smallest moving blob, as a fraction of the frame area"
    )
    global_change_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Fraction of changed pixels above which a frame is a global change (lights, exposure) and not motion",
    )
    warmup_frames: int = Field(
        5, ge=0, description="Frames used to learn the background before reporting motion"
    )
    noise_factor: float = Field(
        5.0,
        ge=0,
        le=50,
        description="Threshold floor as a multiple of the frame's robust noise level (night sensor noise); 0 disables",
    )
    exposure_compensation: bool = Field(
        True,
        description="Rescale the background by the frame's global gain (auto-exposure, lights) before differencing",
    )
    absorb_frames: int = Field(
        15,
        ge=0,
        le=10000,
        description="Pixels changed this many analysed frames in a row join the background (stopped objects, ghosts); 0 never",
    )
    exposure_jump: float = Field(
        0.3,
        gt=0,
        le=10,
        description="Exposure gain change within one frame (0.3 = 30 %) treated as a global change: the background is re-seeded",
    )
    min_threshold: int = Field(
        8,
        ge=1,
        le=255,
        description="Lowest per-pixel threshold: in dark scenes the threshold scales down with the scene's brightness to this floor",
    )
    scene_change_similarity: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Correlation of the coarse frame with the background below which the view changed (camera moved, PTZ, shot change): a global change; 0 disables",
    )
    illumination_similarity: float = Field(
        0.7,
        ge=0,
        le=1,
        description="A blob whose fine texture still correlates with the background's above this is a change of light (headlights, shadows), not an object; 0 disables",
    )
    work_scale: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Scale at which the detector works on the analysed frame (0.5: 160 px wide for a 320-px frame, area-averaged); blur and dilate are given at scale 1",
    )
    crowd_detection: bool = Field(
        True,
        description="When most of the picture changes, tell a crowd (many separate objects: motion, boxes reported) from a change of light or view (no motion); false treats every such frame as a global change",
    )
    transient_filter: bool = Field(
        True,
        description="Drop small or blurry blobs that do not persist from one analysed frame to the next (rain, snow, insects near the lens)",
    )


class DetectFilter(ConfigSection):
    labels: list[str] = Field(
        default_factory=lambda: ["person", "bicycle", "car", "motorcycle", "bus", "truck"],
        description="Labels kept from the detector; others are dropped",
    )
    min_score: float = Field(0.5, ge=0, le=1, description="Lowest detector score kept")
    min_area: float = Field(
        0.0, ge=0, le=1, description="Smallest detection box, as a fraction of the frame area"
    )
    zones: list[Polygon] = Field(
        default_factory=list,
        description="When set, keep only detections whose box centre lies in one of these polygons (normalised coordinates)",
    )
    require: list[str] = Field(
        default_factory=list,
        description="When set, an event is raised only once one of these labels is detected (e.g. [person])",
    )


class PtzConfig(ConfigSection):
    protocol: Literal["onvif", "pelco-d", "visca", "visca-ip"] = Field(
        description="How the camera is steered"
    )
    url: str | None = Field(
        None,
        description="ONVIF device service URL (http://HOST:PORT/onvif/device_service) or visca-ip host:port",
    )
    username: str | None = Field(None, description="ONVIF user")
    password: SecretStr | None = Field(
        None, description="ONVIF password (use ${env:...} or ${secret:...})"
    )
    serial_port: str | None = Field(
        None, description="Serial device for Pelco-D / VISCA (e.g. /dev/ptz0)"
    )
    baudrate: int = Field(9600, description="Serial line speed")
    address: int = Field(
        1, ge=0, le=255, description="Pelco-D receiver address or VISCA camera address (1-7)"
    )
    max_speed: float = Field(
        1.0, gt=0, le=1, description="Highest speed allowed, as a fraction of the camera's maximum"
    )
    presets: int = Field(
        64, ge=0, le=255, description="Number of preset slots the camera has (1..presets)"
    )
    pan_range: tuple[float, float] = Field(
        (-1.0, 1.0), description="Allowed absolute pan range (normalised)"
    )
    tilt_range: tuple[float, float] = Field(
        (-1.0, 1.0), description="Allowed absolute tilt range (normalised)"
    )
    zoom_range: tuple[float, float] = Field(
        (0.0, 1.0), description="Allowed absolute zoom range (normalised)"
    )
    home_preset: int | None = Field(
        None,
        ge=1,
        description="Preset to return to after idle_return_s without commands; none keeps position",
    )
    idle_return_s: float = Field(
        300.0, gt=0, description="Idle time before returning to the home preset"
    )
    timeout_s: float = Field(
        3.0, gt=0, le=30, description="How long to wait for the camera to answer a command"
    )
    dead_man_s: float = Field(
        1.0,
        gt=0,
        le=10,
        description="A continuous move not renewed within this time is stopped (dead-man)",
    )
    hold_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="How long an operator keeps control of the camera after their last command",
    )


class CameraConfig(ConfigSection):
    id: str = Field(description="Camera id: letters, digits, '-' or '_' (used in topics and paths)")
    url: str = Field(
        description="Stream source: rtsp://, rtsps://, file:PATH, test:PATTERN, picamera2:INDEX or v4l2:/dev/videoN"
    )
    sub_url: str | None = Field(
        None,
        description="The camera's sub-stream (lower resolution), used for analysis and live 'sub' when set",
    )
    username: str | None = Field(None, description="Stream user name, inserted into rtsp URLs")
    password: SecretStr | None = Field(
        None, description="Stream password (use ${env:...} or ${secret:...}); never logged"
    )
    enabled: bool = Field(True, description="A disabled camera is ignored")
    analytic_fps: float = Field(5.0, gt=0, le=30, description="Frames analysed per second")
    analytic_width: int = Field(
        320,
        ge=64,
        le=1920,
        description="Width in pixels of analysed frames (height keeps the aspect ratio)",
    )
    stall_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A stream that delivers no packet for this long is stalled and reopened",
    )
    open_timeout_s: float = Field(5.0, gt=0, description="Timeout to open the stream")
    read_timeout_s: float = Field(5.0, gt=0, description="Timeout of one network read")
    ignore_masks: list[Polygon] = Field(
        default_factory=list,
        description="Polygons (normalised x,y in 0..1) where motion is ignored, e.g. foliage",
    )
    privacy_masks: list[Polygon] = Field(
        default_factory=list,
        description="Polygons blacked out of every analysed frame and snapshot (windows of homes)",
    )
    motion: MotionConfig = Field(
        default_factory=MotionConfig, description="Motion detector settings"
    )
    detect: DetectFilter | None = Field(
        None, description="Object-detection filter for this camera; none means motion only"
    )
    ptz: PtzConfig | None = Field(
        None, description="How to steer this camera, when it is a PTZ dome"
    )
    onvif_url: str | None = Field(
        None,
        description="The camera's ONVIF device service (http://HOST/onvif/device_service, stream "
        "credentials), to set and check privacy masks inside the camera; an ONVIF dome's ptz.url "
        "serves when unset",
    )
    analytics: CameraAnalyticsConfig = Field(
        default_factory=lambda: _default_analytics(),
        description="PTZ presets, night settings and rules that make alerts",
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID_PATTERN.match(v):
            raise ValueError(
                "expected 1-64 letters, digits, '-' or '_', starting with a letter or digit"
            )
        return v

    @field_validator("url", "sub_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(SOURCE_SCHEMES):
            raise ValueError(_SCHEMES_SENTENCE)
        return v

    @model_validator(mode="after")
    def _analytics(self) -> CameraConfig:
        from guetteur.config.analytics import check_camera_analytics

        check_camera_analytics(self.analytics, self.ptz.presets if self.ptz else None)
        return self

    def stream_url(self, sub: bool = False) -> str:
        """The URL with credentials inserted (for opening the stream; never log it)."""
        url = self.sub_url if sub and self.sub_url else self.url
        if self.username and url.startswith(("rtsp://", "rtsps://")):
            parts = urlsplit(url)
            if parts.username is None:
                from urllib.parse import quote

                cred = quote(self.username, safe="")
                if self.password is not None:
                    cred += ":" + quote(self.password.get_secret_value(), safe="")
                url = urlunsplit(parts._replace(netloc=f"{cred}@{parts.netloc}"))
        return url


def _default_analytics() -> CameraAnalyticsConfig:
    from guetteur.config.analytics import CameraAnalyticsConfig

    return CameraAnalyticsConfig()
