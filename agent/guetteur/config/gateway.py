"""The whole file (``GuetteurConfig``) and its gateway-wide sections: events, recording, live,
outbox, detection model and logging."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from guetteur.config.analytics import ProfileMConfig
from guetteur.config.base import ConfigSection
from guetteur.config.camera import CameraConfig
from guetteur.config.commands import CommandsConfig
from guetteur.config.link import MqttConfig
from guetteur.uplink.protocol import gateway_id_problem


class EventsConfig(ConfigSection):
    start_frames: int = Field(
        3, ge=1, description="Consecutive motion frames needed to start an event"
    )
    end_quiet_s: float = Field(3.0, gt=0, description="Seconds without motion that end an event")
    update_interval_s: float = Field(
        2.0, gt=0, description="Shortest interval between two updates of one event"
    )
    max_duration_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description=(
            "Longest part of an event, in seconds: a longer one is split into linked parts "
            "(part, previous_event_id), each with its end and its clip, so the centre gets "
            "video while it matters"
        ),
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


class RecordingConfig(ConfigSection):
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
        description="Size of the write buffer: video reaches the disk in blocks this large, "
        "flushed at every keyframe and every sync_interval_s",
    )
    sync_interval_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="Longest time between two flushes (and fdatasync) of the segment being "
        "written: a kill -9 or a power cut loses at most this much video, or one GOP; 0: "
        "flushed at keyframes only and synced only when a segment closes (a power cut may then "
        "lose a whole segment)",
    )
    headroom_bytes: int = Field(
        16 << 20,
        ge=0,
        description="Free space kept for the gateway's databases whatever the size limits say "
        "(the segments being written get their own room on top): the oldest recordings go, "
        "even those pinned for an event clip, a camera's newest segment never",
    )
    reserve_file_bytes: int = Field(
        8 << 20,
        ge=0,
        description="Space set aside in {data_dir}/reserve.bin for the databases: released when "
        "one meets a full disk (undelivered events are never dropped), recreated once there is "
        "room; 0: no reserve file",
    )
    pin_max_s: float = Field(
        3600.0,
        gt=0,
        description="Longest time after its start that an event clip's pin holds recordings "
        "against the size limits (an event left open by a crash cannot hold them for a month)",
    )
    export_max_s: float = Field(3600.0, gt=0, description="Longest range one export may cover")


class LiveConfig(ConfigSection):
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
    max_sessions_per_operator: int = Field(
        2, ge=1, description="Most live sessions one operator holds at once on the gateway"
    )
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


class OutboxConfig(ConfigSection):
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


class DetectionConfig(ConfigSection):
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


class LoggingConfig(ConfigSection):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level")


class GuetteurConfig(ConfigSection):
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
    commands: CommandsConfig = Field(
        default_factory=CommandsConfig, description="Signed commands from the centre, and quotas"
    )
    timezone: str = Field(
        "UTC",
        description="The site's time zone (IANA name, e.g. Europe/Paris): rule time windows are in its local time",
    )
    profile_m: ProfileMConfig = Field(
        default_factory=ProfileMConfig,
        description="ONVIF Profile M events (onvif-ej) beside ours, off by default",
    )

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r}: expected an IANA name such as Europe/Paris or UTC"
            ) from None
        return v

    @field_validator("gateway_id")
    @classmethod
    def _gw(cls, v: str) -> str:
        problem = gateway_id_problem(v)
        if problem:
            raise ValueError(problem)
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
