"""The gateway's configuration: typed sections (``base``, ``link``, ``camera``, ``gateway``), how a
YAML file becomes a validated ``GuetteurConfig`` (``loading``) and the generated key reference
(``reference``). This module is the public face: import config names from ``guetteur.config``."""

from guetteur.config.analytics import (
    CameraAnalyticsConfig,
    NightConfig,
    PresetConfig,
    ProfileMConfig,
    PtzPauseConfig,
    RuleConfig,
    TimeWindow,
)
from guetteur.config.base import ConfigSection, Point, Polygon
from guetteur.config.camera import (
    SOURCE_SCHEMES,
    CameraConfig,
    DetectFilter,
    MotionConfig,
    PtzConfig,
)
from guetteur.config.commands import CommandsConfig
from guetteur.config.gateway import (
    DetectionConfig,
    EventsConfig,
    GuetteurConfig,
    LiveConfig,
    LoggingConfig,
    OutboxConfig,
    RecordingConfig,
)
from guetteur.config.link import MqttConfig, TlsConfig
from guetteur.config.loading import (
    ConfigError,
    load_config,
    redact_url,
    validate_config,
    validation_problems,
)

__all__ = [
    "SOURCE_SCHEMES",
    "CameraAnalyticsConfig",
    "CameraConfig",
    "CommandsConfig",
    "ConfigError",
    "ConfigSection",
    "DetectFilter",
    "DetectionConfig",
    "EventsConfig",
    "GuetteurConfig",
    "LiveConfig",
    "LoggingConfig",
    "MotionConfig",
    "MqttConfig",
    "NightConfig",
    "OutboxConfig",
    "Point",
    "Polygon",
    "PresetConfig",
    "ProfileMConfig",
    "PtzConfig",
    "PtzPauseConfig",
    "RecordingConfig",
    "RuleConfig",
    "TimeWindow",
    "TlsConfig",
    "load_config",
    "redact_url",
    "validate_config",
    "validation_problems",
]
