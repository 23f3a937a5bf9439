"""YAML → typed, validated configuration. Every error names its key path; all errors at once.

Secrets never sit in the main file if you do not want them there: any string value may be
``${env:NAME}`` (an environment variable), ``${file:/path}`` (a file's content, stripped) or
``${secret:NAME}`` (a key of the YAML mapping named by ``secrets_file``). Secret fields are
``SecretStr`` and print as ``**********``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from guetteur.uplink.protocol import DEFAULT_ROOT, ID_PATTERN

SOURCE_SCHEMES = ("rtsp://", "rtsps://", "file:", "test:", "picamera2:", "v4l2:")
_SCHEMES_SENTENCE = "expected rtsp://, rtsps://, file:, test:, picamera2: or v4l2:"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Point = tuple[Annotated[float, Field(ge=0.0, le=1.0)], Annotated[float, Field(ge=0.0, le=1.0)]]
Polygon = Annotated[list[Point], Field(min_length=3)]


class TlsConfig(_Model):
    ca_file: str | None = Field(
        None,
        description="CA certificate (PEM) that signed the broker's certificate; system CAs when unset",
    )
    cert_file: str | None = Field(
        None, description="This gateway's client certificate (PEM) for mutual TLS"
    )
    key_file: str | None = Field(None, description="Private key (PEM) of the client certificate")


class MqttConfig(_Model):
    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://HOST:PORT or mqtts://HOST:PORT (TLS)",
    )
    root: str = Field(DEFAULT_ROOT, description="Topic prefix of the whole interface")
    client_id: str | None = Field(
        None, description="MQTT client id; defaults to guetteur-{gateway_id}"
    )
    username: str | None = Field(None, description="Broker user name, when the broker asks for one")
    password: SecretStr | None = Field(
        None, description="Broker password (use ${env:...} or ${secret:...})"
    )
    tls: TlsConfig | None = Field(
        None, description="TLS settings; required by mqtts:// URLs with a private CA"
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval in seconds")
    session_expiry_s: int = Field(
        86400,
        ge=0,
        description="MQTT 5 session expiry: how long the broker keeps our session while we are away",
    )
    reconnect_max_s: float = Field(
        30.0, gt=0, description="Longest wait between two reconnection attempts"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise ValueError("expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("port is not a number between 0 and 65535") from None
        return v

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not v or v.startswith("/") or v.endswith("/") or any(c in v for c in "+#"):
            raise ValueError("expected a topic prefix without wildcards or leading/trailing '/'")
        return v


class MotionConfig(_Model):
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


class DetectFilter(_Model):
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


class PtzConfig(_Model):
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


class CameraConfig(_Model):
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


class EventsConfig(_Model):
    start_frames: int = Field(
        3, ge=1, description="Consecutive motion frames needed to start an event"
    )
    end_quiet_s: float = Field(3.0, gt=0, description="Seconds without motion that end an event")
    update_interval_s: float = Field(
        2.0, gt=0, description="Shortest interval between two updates of one event"
    )
    max_duration_s: float = Field(
        600.0, gt=0, description="An event longer than this is ended and a new one started"
    )
    snapshot_quality: int = Field(85, ge=10, le=100, description="JPEG quality of snapshots")
    snapshot_width: int = Field(640, ge=64, le=3840, description="Largest width of snapshots")
    pre_roll_s: float = Field(
        5.0, ge=0, le=60, description="Seconds of video before the event start in its clip"
    )
    post_roll_s: float = Field(
        5.0, ge=0, le=60, description="Seconds of video after the event end in its clip"
    )
    clips: bool = Field(True, description="Cut and upload a clip for each event (needs recording)")


class RecordingConfig(_Model):
    enabled: bool = Field(True, description="Record every camera into the ring buffer")
    segment_s: float = Field(
        10.0,
        ge=1,
        le=600,
        description="Target segment length in seconds (segments start on keyframes)",
    )
    max_bytes: int | None = Field(
        None, ge=1, description="Cap on the total size of recordings, in bytes"
    )
    max_percent: float | None = Field(
        80.0,
        gt=0,
        le=100,
        description="Cap on the total size of recordings, as a percentage of the data partition",
    )
    max_age_days: float | None = Field(
        None, gt=0, description="Keep recordings at most this many days (below the legal maximum)"
    )
    legal_max_age_days: float = Field(
        30.0,
        gt=0,
        le=30,
        description="Legal maximum age (Code de la sécurité intérieure L252-5: 30 days at most)",
    )
    min_free_bytes: int = Field(
        256 << 20,
        ge=0,
        description="Free space kept on the data partition; the oldest recordings go to keep it",
    )
    write_buffer_bytes: int = Field(
        1 << 20,
        ge=4096,
        description="Size of the write buffer: video reaches the disk in blocks this large",
    )
    export_max_s: float = Field(3600.0, gt=0, description="Longest range one export may cover")


class LiveConfig(_Model):
    default_lease_s: float = Field(
        30.0, gt=0, description="Lease of a live session when the request does not say"
    )
    min_lease_s: float = Field(5.0, gt=0, description="Shortest lease a request may ask for")
    max_lease_s: float = Field(300.0, gt=0, description="Longest lease a request may ask for")
    fragment_s: float = Field(0.5, gt=0, le=10, description="Target duration of one fMP4 fragment")
    max_sessions_per_camera: int = Field(
        4, ge=1, description="Most live sessions at once on one camera"
    )
    max_sessions: int = Field(8, ge=1, description="Most live sessions at once on the gateway")
    max_bytes_per_s: int | None = Field(
        None, ge=1, description="Bandwidth cap of all live sessions together, bytes per second"
    )
    camera_down_after_s: float = Field(
        3.0,
        gt=0,
        le=60,
        description="A camera stream silent for this long is down: live.start gets camera_down",
    )
    max_gop_bytes: int = Field(
        32 << 20,
        ge=1 << 20,
        description="Largest GOP cached per camera stream for instant start; a longer one is "
        "dropped until the next keyframe",
    )


class OutboxConfig(_Model):
    enabled: bool = Field(
        True, description="Store every message on disk until the centre acknowledges it"
    )
    max_bytes: int = Field(
        2 << 30,
        ge=1 << 20,
        description="Size cap of the outbox; when full, the oldest clips go first, events never",
    )
    retry_s: float = Field(
        10.0,
        gt=0,
        description="Resend an unacknowledged item after this long (then with backoff, up to 8x)",
    )
    inflight: int = Field(
        256, ge=1, description="Most unacknowledged items in flight at once (and at most 8 MiB)"
    )
    drain_bytes_per_s: int | None = Field(
        None, ge=1, description="Bandwidth cap of the backlog drain, bytes per second"
    )
    chunk_bytes: int = Field(256 * 1024, ge=1024, le=16 << 20, description="Size of one clip chunk")


class DetectionConfig(_Model):
    model: str | None = Field(
        None,
        description="Path to a TFLite detection model (overrides the manifest's file); with no model and no manifest, cameras run motion only",
    )
    labels: str | None = Field(
        None, description="Labels file of the model, one per line (overrides the manifest's labels)"
    )
    manifest: str | None = Field(
        None,
        description="Model manifest (models/*.yaml) giving input shape, normalisation, labels and sha256",
    )
    threads: int = Field(1, ge=1, le=8, description="Inference threads")
    max_queue: int = Field(
        2,
        ge=1,
        le=32,
        description="Frames waiting for the detector per camera; older ones are skipped and counted",
    )
    min_score: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Detections below this score are dropped before the cameras' own filters",
    )
    crop_padding: float = Field(
        0.25,
        ge=0,
        le=2,
        description="Margin added around motion boxes before cropping, as a fraction of the box size",
    )
    full_frame_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description="When the crops around motion cover more than this fraction of the frame, the whole frame is analysed",
    )


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level")


class GuetteurConfig(_Model):
    gateway_id: str = Field(
        description="This gateway's id: letters, digits, '-' or '_' (used in topics)"
    )
    site: str | None = Field(None, description="Free-text site name shown to operators")
    data_dir: str = Field(
        "/var/lib/guetteur", description="Where recordings, outbox and state live"
    )
    secrets_file: str | None = Field(
        None, description="YAML mapping of secret names to values, for ${secret:NAME}"
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Link to the centre's broker")
    cameras: list[CameraConfig] = Field(
        default_factory=list, description="The cameras of this gateway"
    )
    events: EventsConfig = Field(
        default_factory=EventsConfig, description="Event timing and snapshots"
    )
    recording: RecordingConfig = Field(
        default_factory=RecordingConfig, description="Ring-buffer recording and retention"
    )
    live: LiveConfig = Field(default_factory=LiveConfig, description="Live streams on demand")
    outbox: OutboxConfig = Field(
        default_factory=OutboxConfig, description="Durable store-and-forward queue"
    )
    detection: DetectionConfig = Field(
        default_factory=DetectionConfig, description="Optional TFLite object detector"
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging")

    @field_validator("gateway_id")
    @classmethod
    def _gw(cls, v: str) -> str:
        if not ID_PATTERN.match(v):
            raise ValueError(
                "expected 1-64 letters, digits, '-' or '_', starting with a letter or digit"
            )
        return v

    @field_validator("cameras")
    @classmethod
    def _unique(cls, v: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for cam in v:
            if cam.id in seen:
                raise ValueError(f"camera id {cam.id!r} is used twice")
            seen.add(cam.id)
        return v

    def camera(self, camera_id: str) -> CameraConfig | None:
        return next((c for c in self.cameras if c.id == camera_id and c.enabled), None)


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` lists every ``key.path: what was expected``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def report(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _path(loc: tuple[int | str, ...], skip: frozenset[str] = frozenset()) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in skip:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def validation_problems(
    exc: ValidationError,
    unknown: str = "unknown key",
    missing: str | None = "required key is missing",
    skip: frozenset[str] = frozenset(),
) -> list[str]:
    """Every pydantic error as ``key.path[2].name: sentence``, once each — the one wording of
    config files, provisioning files and command payloads. ``skip`` drops location parts that
    are not keys anybody wrote (union branch names)."""
    out: list[str] = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = unknown
        elif err["type"] == "missing" and missing is not None:
            msg = missing
        line = f"{_path(tuple(err['loc']), skip)}: {msg}"
        if line not in out:
            out.append(line)
    return out


_REF = re.compile(r"^\$\{(env|file|secret):([^}]+)\}$")


def _resolve_refs(
    node: Any, loc: tuple[int | str, ...], secrets: dict[str, Any] | None, problems: list[str]
) -> Any:
    if isinstance(node, dict):
        return {k: _resolve_refs(v, (*loc, k), secrets, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(v, (*loc, i), secrets, problems) for i, v in enumerate(node)]
    if isinstance(node, str):
        m = _REF.match(node)
        if not m:
            return node
        kind, name = m.groups()
        if kind == "env":
            if name not in os.environ:
                problems.append(f"{_path(loc)}: environment variable {name} is not set")
                return None
            return os.environ[name]
        if kind == "file":
            try:
                return Path(name).read_text().strip()
            except OSError as exc:
                problems.append(f"{_path(loc)}: cannot read secret file {name}: {exc.strerror}")
                return None
        if secrets is None:
            problems.append(f"{_path(loc)}: ${{secret:{name}}} used but no secrets_file is set")
            return None
        if name not in secrets:
            problems.append(f"{_path(loc)}: secret {name!r} is not in secrets_file")
            return None
        return str(secrets[name])
    return node


def validate_config(raw: Any, source: str = "config") -> GuetteurConfig:
    """Validate a parsed YAML tree. Raises ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): expected a mapping of keys to values"])
    problems: list[str] = []
    secrets: dict[str, Any] | None = None
    secrets_file = raw.get("secrets_file")
    if isinstance(secrets_file, str):
        try:
            loaded = yaml.safe_load(Path(secrets_file).read_text())
            if not isinstance(loaded, dict):
                problems.append(f"secrets_file: {secrets_file} is not a YAML mapping")
            else:
                secrets = loaded
        except OSError as exc:
            problems.append(f"secrets_file: cannot read {secrets_file}: {exc.strerror}")
        except yaml.YAMLError as exc:
            problems.append(f"secrets_file: {secrets_file} is not valid YAML: {exc}")
    resolved = _resolve_refs(raw, (), secrets, problems)
    try:
        config = GuetteurConfig.model_validate(resolved)
    except ValidationError as exc:
        problems += validation_problems(exc)
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    return config


def load_config(path: str | os.PathLike[str]) -> GuetteurConfig:
    """Read and validate a YAML config file. Raises ConfigError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, [f"(file): cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"(syntax): not valid YAML: {exc}"]) from None
    return validate_config(raw, source)


def redact_url(url: str) -> str:
    """A URL safe for logs: any password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
