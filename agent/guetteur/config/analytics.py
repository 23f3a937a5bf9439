"""A camera's ``analytics`` section (PTZ presets, night settings, rules that make alerts) and the
gateway's ``profile_m`` output.

Geometry is checked here, where a mistake can still be named by its key path: rule polygons must
not cross themselves (they lie in 0..1 like every polygon), a line must have a length, time
windows of one rule must not overlap (a window may wrap midnight: 22:00-06:00). What needs the
rest of the camera (a preset a rule names, preset numbers the dome has) is checked by
``check_camera_analytics``, called from the camera's own validation.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import Field, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from guetteur.config.base import ConfigSection, Point, Polygon
from guetteur.config.camera import CameraConfig, DetectFilter, MotionConfig

RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _optional_fields(model: type[ConfigSection]) -> dict[str, Any]:
    return {
        name: (Optional[f.annotation], Field(None, description=f.description))  # noqa: UP045
        for name, f in model.model_fields.items()
    }


# Night settings override the day's field by field: only what is given changes.
MotionOverride: type[ConfigSection] = create_model(
    "MotionOverride", __base__=ConfigSection, **_optional_fields(MotionConfig)
)


def _segments_cross(a: Point, b: Point, c: Point, d: Point) -> bool:
    def orient(p: Point, q: Point, r: Point) -> float:
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    d1, d2 = orient(c, d, a), orient(c, d, b)
    d3, d4 = orient(a, b, c), orient(a, b, d)
    return (d1 * d2 < 0) and (d3 * d4 < 0)


def self_intersection(polygon: list[Point]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges (by index) that cross, or None."""
    n = len(polygon)
    edges = [(polygon[i], polygon[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # adjacent edges share a corner
            if _segments_cross(*edges[i], *edges[j]):
                return i, j
    return None


def _minutes(hhmm: str) -> int:
    m = _HHMM.match(hhmm)
    if m is None:
        raise ValueError(f"expected HH:MM (00:00 to 23:59), got {hhmm!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


class TimeWindow(ConfigSection):
    start: str = Field(
        alias="from", description="Local time the window opens, HH:MM (site's timezone)"
    )
    end: str = Field(
        alias="to",
        description="Local time it closes, HH:MM; earlier than 'from' wraps midnight (22:00 to 06:00)",
    )
    days: list[Day] = Field(
        default_factory=lambda: list(DAYS),
        description="Days the window opens on (a window wrapping midnight belongs to the day it opens)",
    )

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        _minutes(v)
        return v

    @model_validator(mode="after")
    def _length(self) -> TimeWindow:
        if _minutes(self.start) == _minutes(self.end):
            raise ValueError(
                "'from' and 'to' are equal: an empty window (a whole day: leave 'when' out)"
            )
        return self

    def minutes(self) -> list[tuple[int, int, str]]:
        """(open, close) minute spans within each day of the week (a wrapping window split in
        two), with the day each span falls on."""
        a, b = _minutes(self.start), _minutes(self.end)
        out: list[tuple[int, int, str]] = []
        for day in self.days:
            if a < b:
                out.append((a, b, day))
            else:
                out.append((a, 24 * 60, day))
                out.append((0, b, DAYS[(DAYS.index(day) + 1) % 7]))
        return out


class RuleConfig(ConfigSection):
    name: str = Field(
        description="Rule name, given in alerts ('parc-ferme'): letters, digits, '-', '_' or '.'"
    )
    kind: Literal["zone", "line", "count"] = Field(
        description="zone: an object inside the zone (for min_dwell_s); line: an object crossing "
        "the line in the given direction; count: more than count_above objects at once"
    )
    zone: Polygon | None = Field(
        None,
        description="Polygon (normalised x,y in 0..1) for zone and count rules; count rules "
        "without one count the whole frame",
    )
    line: list[Point] | None = Field(
        None, description="Two points [[x1, y1], [x2, y2]] (normalised) for line rules"
    )
    direction: Literal["any", "left", "right"] = Field(
        "any",
        description="Line rules: which crossings count, seen walking the line from its first "
        "point to its second: 'left' = from its right side to its left, 'right' the other way",
    )
    labels: list[str] = Field(
        default_factory=list,
        description="Objects the rule counts (detector labels, e.g. [person]); empty: any moving object",
    )
    min_dwell_s: float = Field(
        0.0, ge=0, le=86400, description="Zone rules: time an object must stay inside (loitering)"
    )
    count_above: int = Field(
        1, ge=0, le=1000, description="Count rules: alert when more objects than this are seen"
    )
    min_duration_s: float = Field(
        0.0, ge=0, le=3600, description="Count rules: how long the count must stay above"
    )
    when: list[TimeWindow] = Field(
        default_factory=list,
        description="Time windows (site's local time) the rule is armed in; empty: always",
    )
    preset: str | None = Field(
        None,
        description="PTZ preset (a name of analytics.presets) the rule holds at; none: a fixed "
        "camera, or every preset",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not RULE_NAME.match(v):
            raise ValueError(
                "expected 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
            )
        return v

    @field_validator("zone")
    @classmethod
    def _simple(cls, v: Polygon | None) -> Polygon | None:
        if v is not None:
            crossing = self_intersection(v)
            if crossing is not None:
                i, j = crossing
                raise ValueError(
                    f"the polygon crosses itself (edges {i} and {j}): list its points in order "
                    "around the zone"
                )
        return v

    @field_validator("line")
    @classmethod
    def _line(cls, v: list[Point] | None) -> list[Point] | None:
        if v is None:
            return v
        if len(v) != 2:
            raise ValueError(f"expected two points [[x1, y1], [x2, y2]], got {len(v)}")
        (x1, y1), (x2, y2) = v
        if abs(x1 - x2) < 1e-6 and abs(y1 - y2) < 1e-6:
            raise ValueError("the line has zero length: its two points are the same")
        return v

    @field_validator("when")
    @classmethod
    def _no_overlap(cls, v: list[TimeWindow]) -> list[TimeWindow]:
        spans = [(a, b, day, i) for i, w in enumerate(v) for a, b, day in w.minutes()]
        for k, (a1, b1, d1, i1) in enumerate(spans):
            for a2, b2, d2, i2 in spans[k + 1 :]:
                if i1 != i2 and d1 == d2 and a1 < b2 and a2 < b1:
                    raise ValueError(
                        f"windows {i1} ({v[i1].start}-{v[i1].end}) and {i2} "
                        f"({v[i2].start}-{v[i2].end}) overlap on {d1}: merge them"
                    )
        return v

    @model_validator(mode="after")
    def _geometry(self) -> RuleConfig:
        if self.kind == "zone" and self.zone is None:
            raise PydanticCustomError(
                "key_path",
                "{path}: {problem}",
                {"path": "zone", "problem": "a zone rule needs a zone polygon"},
            )
        if self.kind == "line" and self.line is None:
            raise PydanticCustomError(
                "key_path",
                "{path}: {problem}",
                {"path": "line", "problem": "a line rule needs a line [[x1, y1], [x2, y2]]"},
            )
        return self


class PresetConfig(ConfigSection):
    number: int = Field(ge=1, le=255, description="The dome's preset number (1..ptz.presets)")
    ignore_masks: list[Polygon] = Field(
        default_factory=list, description="Ignore masks of this view, added to the camera's"
    )
    privacy_masks: list[Polygon] = Field(
        default_factory=list, description="Privacy masks of this view, added to the camera's"
    )
    detect: DetectFilter | None = Field(
        None, description="Object filter (labels, zones...) of this view; none: the camera's"
    )


class NightConfig(ConfigSection):
    enabled: bool = Field(
        True, description="Switch to the night settings when the picture turns infrared or dark"
    )
    chroma_below: float = Field(
        2.5,
        ge=0,
        le=64,
        description="Colour level (mean |U-128|+|V-128|) under which the picture is grey: infrared",
    )
    chroma_above: float = Field(
        4.0, ge=0, le=64, description="Colour level above which it is colour again (hysteresis)"
    )
    dark_below: float = Field(
        40.0,
        ge=0,
        le=255,
        description="Median grey level under which a colour picture counts as night",
    )
    light_above: float = Field(
        60.0, ge=0, le=255, description="Median grey level above which it is day again (hysteresis)"
    )
    enter_after_s: float = Field(
        5.0, ge=0, le=600, description="How long night must be seen before switching to it"
    )
    leave_after_s: float = Field(
        20.0, ge=0, le=3600, description="How long day must be seen before switching back"
    )
    motion: MotionOverride = Field(  # built from MotionConfig, every field optional
        default_factory=lambda: MotionOverride.model_validate(
            {"noise_factor": 6.0, "min_area": 0.003}
        ),
        description="Motion settings changed at night (the others stay the camera's)",
    )
    detect: DetectFilter | None = Field(
        None, description="Object filter at night; none: the camera's"
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> NightConfig:
        if self.chroma_above < self.chroma_below:
            raise ValueError("chroma_above must not be below chroma_below (hysteresis)")
        if self.light_above < self.dark_below:
            raise ValueError("light_above must not be below dark_below (hysteresis)")
        return self


class PtzPauseConfig(ConfigSection):
    settle_s: float = Field(
        1.0, ge=0, le=60, description="The picture must hold still this long after a move"
    )
    unseen_move_s: float = Field(
        3.0,
        gt=0,
        le=600,
        description="A move command that never shows on the picture (a preset the dome is at) pauses analysis this long",
    )
    relearn_frames: int = Field(
        5, ge=1, le=500, description="Frames the background is learnt again before motion counts"
    )


class CameraAnalyticsConfig(ConfigSection):
    presets: dict[str, PresetConfig] = Field(
        default_factory=dict,
        description="PTZ presets by name, each with its own masks and object filter",
    )
    rules: list[RuleConfig] = Field(
        default_factory=list, description="Rules that turn an event into an alert"
    )
    night: NightConfig = Field(default_factory=NightConfig, description="Night and infrared")
    ptz: PtzPauseConfig = Field(
        default_factory=PtzPauseConfig, description="How analysis pauses while the dome moves"
    )

    @field_validator("presets")
    @classmethod
    def _preset_names(cls, v: dict[str, PresetConfig]) -> dict[str, PresetConfig]:
        numbers: dict[int, str] = {}
        for name, preset in v.items():
            if not RULE_NAME.match(name):
                raise ValueError(f"preset name {name!r}: expected letters, digits, '-', '_' or '.'")
            if preset.number in numbers:
                raise ValueError(
                    f"presets {numbers[preset.number]!r} and {name!r} have the same number "
                    f"{preset.number}"
                )
            numbers[preset.number] = name
        return v

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[RuleConfig]) -> list[RuleConfig]:
        seen: set[str] = set()
        for rule in v:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return v


def check_camera_analytics(analytics: CameraAnalyticsConfig, preset_slots: int | None) -> None:
    """What needs the camera: presets only on a PTZ dome and within its slots; rules name
    presets it has. Raises a ``key_path`` error naming the key under ``analytics``."""

    def fail(path: str, problem: str) -> None:
        raise PydanticCustomError(
            "key_path", "{path}: {problem}", {"path": f"analytics.{path}", "problem": problem}
        )

    for name, preset in analytics.presets.items():
        if preset_slots is None:
            fail(f"presets.{name}", "presets need a PTZ camera (no ptz section)")
        elif preset.number > preset_slots:
            fail(
                f"presets.{name}.number",
                f"preset {preset.number} is beyond the dome's {preset_slots} slots (ptz.presets)",
            )
    for i, rule in enumerate(analytics.rules):
        if rule.preset is not None and rule.preset not in analytics.presets:
            known = ", ".join(sorted(analytics.presets)) or "none"
            fail(
                f"rules[{i}].preset", f"the camera has no preset {rule.preset!r} (presets: {known})"
            )


class ProfileMConfig(ConfigSection):
    enabled: bool = Field(
        False,
        description="Also publish events as ONVIF Profile M events (onvif-ej JSON) for video management systems",
    )
    topic_prefix: str | None = Field(
        None,
        description="TopicPrefix of the onvif-ej topics ({prefix}/onvif-ej/...); default: the gateway id",
    )
    qos: int = Field(1, ge=0, le=1, description="MQTT QoS of the Profile M messages")

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "#+") or v.startswith("/")):
            raise ValueError("expected a non-empty MQTT topic without '#', '+' or a leading '/'")
        return v


# CameraConfig names its ``analytics`` section lazily (this module needs camera.py's filters):
# resolve it now that the section exists.
CameraConfig.model_rebuild(_types_namespace={"CameraAnalyticsConfig": CameraAnalyticsConfig})
