"""Rules that make alerts: a zone within a time window, a line crossed in a direction, a count,
and the config errors that name their key path."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from guetteur.analytics.events import EventUpdate
from guetteur.analytics.pipeline import CameraAnalytics
from guetteur.analytics.rules import RuleEngine, SceneObject, crossing
from guetteur.config import (
    CameraConfig,
    ConfigError,
    EventsConfig,
    RuleConfig,
    validate_config,
)
from guetteur.dev.synthetic import scenario
from guetteur.media.types import AnalyticFrame, Box

PARIS = ZoneInfo("Europe/Paris")
# The walker of the "walk" scene crosses from left to right between 5 s and 8 s; its feet are at
# 72 % of the height.
LEFT_HALF = [[0.0, 0.5], [0.5, 0.5], [0.5, 1.0], [0.0, 1.0]]
TOP_STRIP = [[0.0, 0.0], [1.0, 0.0], [1.0, 0.3], [0.0, 0.3]]
NIGHT = [{"from": "22:00", "to": "06:00"}]  # a park closed at night: wraps midnight


def walk_events(rules: list[dict[str, Any]], local_start: datetime) -> list[EventUpdate]:
    cam = CameraConfig.model_validate(
        {"id": "parc", "url": "test:walk", "analytics": {"rules": rules}}
    )
    analytics = CameraAnalytics(
        cam, EventsConfig(), timezone="Europe/Paris", clock_synced=lambda: True
    )
    sc = scenario("walk", width=320, height=180, fps=5)
    wall0 = local_start.timestamp()
    out: list[EventUpdate] = []
    for i in range(sc.frame_count):
        t = sc.time_of(i)
        image = sc.render(i).mean(axis=2).astype(np.uint8)
        out += analytics.process(AnalyticFrame("parc", image, t, wall0 + t)).updates
    return out + analytics.flush()


def verdict(updates: list[EventUpdate]) -> list[tuple[str, str | None]]:
    """(category, rule) of each event, from its end message."""
    return [(u.category, u.rule) for u in updates if u.kind == "end"]


@pytest.mark.parametrize(
    "local_start, zone, expected",
    [
        pytest.param(
            datetime(2026, 12, 5, 23, 30, tzinfo=PARIS), LEFT_HALF, "alert", id="inside-both"
        ),
        pytest.param(
            datetime(2026, 12, 6, 2, 0, tzinfo=PARIS), LEFT_HALF, "alert", id="after-midnight"
        ),
        pytest.param(
            datetime(2026, 12, 5, 14, 0, tzinfo=PARIS), LEFT_HALF, "detection", id="outside-window"
        ),
        pytest.param(
            datetime(2026, 12, 5, 23, 30, tzinfo=PARIS), TOP_STRIP, "detection", id="outside-zone"
        ),
    ],
)
def test_zone_rule_with_a_time_window_alerts_only_inside_both(
    local_start: datetime, zone: list[list[float]], expected: str
) -> None:
    rule = {"name": "parc-ferme", "kind": "zone", "zone": zone, "when": NIGHT}
    events = verdict(walk_events([rule], local_start))
    assert len(events) == 1  # the walk is one event either way
    assert events[0] == ((expected, "parc-ferme") if expected == "alert" else ("detection", None))


@pytest.mark.parametrize("direction, alerts", [("left", True), ("any", True), ("right", False)])
def test_line_crossed_in_the_wrong_direction_raises_nothing(direction: str, alerts: bool) -> None:
    # Walking the line from its top to its bottom, the walker (left to right in the picture)
    # crosses from the line's right side to its left side.
    rule = {
        "name": "portail",
        "kind": "line",
        "line": [[0.5, 0.4], [0.5, 1.0]],
        "direction": direction,
    }
    events = verdict(walk_events([rule], datetime(2026, 12, 5, 12, 0, tzinfo=PARIS)))
    assert len(events) == 1
    assert events[0] == (("alert", "portail") if alerts else ("detection", None))


def test_crossing_sides_and_segment_bounds() -> None:
    line = [[0.5, 0.4], [0.5, 1.0]]
    assert crossing(line, (0.4, 0.7), (0.6, 0.7)) == "left"
    assert crossing(line, (0.6, 0.7), (0.4, 0.7)) == "right"
    assert crossing(line, (0.4, 0.2), (0.6, 0.2)) is None  # beyond the segment's end
    assert crossing(line, (0.4, 0.7), (0.45, 0.7)) is None  # did not reach it


def test_dwell_time_and_count_rules() -> None:
    engine = RuleEngine(
        [
            RuleConfig.model_validate(
                {
                    "name": "loiter",
                    "kind": "zone",
                    "zone": LEFT_HALF,
                    "labels": ["person"],
                    "min_dwell_s": 3,
                }
            ),
            RuleConfig.model_validate(
                {"name": "crowd-forming", "kind": "count", "count_above": 3, "min_duration_s": 1}
            ),
        ]
    )
    person = SceneObject(Box(0.2, 0.5, 0.05, 0.2), "person")
    car = SceneObject(Box(0.3, 0.6, 0.1, 0.1), "car")
    hits = [engine.update(100.0 + k * 0.5, [person, car]).matched for k in range(8)]
    assert hits[:6] == [[]] * 6 and hits[6] == ["loiter"]  # 3 s inside, a person (the car is not)
    many = [SceneObject(Box(0.1 * i, 0.6, 0.05, 0.1)) for i in range(5)]
    engine.reset()
    hits = [engine.update(200.0 + k * 0.5, many).matched for k in range(4)]
    assert hits[0] == [] and "crowd-forming" in hits[2]


CAMERA: dict[str, Any] = {"id": "c1", "url": "test:walk"}


@pytest.mark.parametrize(
    "analytics, problem",
    [
        (
            {"rules": [{"name": "r", "kind": "zone", "zone": [[0, 0], [1, 1], [1, 0], [0, 1]]}]},
            "cameras[0].analytics.rules[0].zone: the polygon crosses itself",
        ),
        (
            {"rules": [{"name": "r", "kind": "zone", "zone": [[0, 0], [1.2, 0], [1, 1]]}]},
            "cameras[0].analytics.rules[0].zone[1][0]: Input should be less than or equal to 1",
        ),
        (
            {"rules": [{"name": "r", "kind": "line", "line": [[0.3, 0.3], [0.3, 0.3]]}]},
            "cameras[0].analytics.rules[0].line: the line has zero length",
        ),
        (
            {"rules": [{"name": "r", "kind": "line"}]},
            "cameras[0].analytics.rules[0].line: a line rule needs a line",
        ),
        (
            {"rules": [{"name": "r", "kind": "zone", "zone": LEFT_HALF, "preset": "parvis"}]},
            "cameras[0].analytics.rules[0].preset: the camera has no preset 'parvis'",
        ),
        (
            {
                "rules": [
                    {
                        "name": "r",
                        "kind": "count",
                        "when": [*NIGHT, {"from": "05:00", "to": "08:00"}],
                    }
                ]
            },
            "cameras[0].analytics.rules[0].when: windows 0 (22:00-06:00) and 1 (05:00-08:00) overlap",
        ),
        (
            {"rules": [{"name": "r", "kind": "count", "when": [{"from": "25:00", "to": "06:00"}]}]},
            "cameras[0].analytics.rules[0].when[0].from: Value error, expected HH:MM",
        ),
        (
            {"presets": {"parvis": {"number": 3}}},
            "cameras[0].analytics.presets.parvis: presets need a PTZ camera",
        ),
    ],
)
def test_bad_rules_are_config_errors_naming_the_key_path(
    analytics: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"gateway_id": "g", "cameras": [{**CAMERA, "analytics": analytics}]})
    assert any(p.startswith(problem.replace("Value error, ", "")) for p in info.value.problems), (
        info.value.problems
    )


def test_a_preset_beyond_the_domes_slots_and_a_good_config() -> None:
    ptz = {"protocol": "pelco-d", "serial_port": "/dev/ttyUSB0", "presets": 8}
    with pytest.raises(ConfigError) as info:
        validate_config(
            {
                "gateway_id": "g",
                "cameras": [
                    {**CAMERA, "ptz": ptz, "analytics": {"presets": {"rue": {"number": 9}}}}
                ],
            }
        )
    assert info.value.problems == [
        "cameras[0].analytics.presets.rue.number: preset 9 is beyond the dome's 8 slots (ptz.presets)"
    ]
    good = validate_config(
        {
            "gateway_id": "g",
            "timezone": "Europe/Paris",
            "cameras": [
                {
                    **CAMERA,
                    "ptz": ptz,
                    "analytics": {
                        "presets": {"rue": {"number": 2}},
                        "rules": [
                            {
                                "name": "parc-ferme",
                                "kind": "zone",
                                "zone": LEFT_HALF,
                                "when": NIGHT,
                                "preset": "rue",
                            },
                            {
                                "name": "portail",
                                "kind": "line",
                                "line": [[0.5, 0], [0.5, 1]],
                                "direction": "left",
                            },
                        ],
                    },
                }
            ],
        }
    )
    assert [r.name for r in good.cameras[0].analytics.rules] == ["parc-ferme", "portail"]
    with pytest.raises(ConfigError) as info:
        validate_config({"gateway_id": "g", "timezone": "Mars/Olympus"})
    assert info.value.problems[0].startswith("timezone: unknown time zone 'Mars/Olympus'")
