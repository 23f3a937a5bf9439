"""Our events also as ONVIF Profile M events, for video management systems that speak it.

Written from the ONVIF Core Specification's "Event broker" section (topic structure and the
``onvif-ej`` JSON payload, release 26.06 of the public onvif/specs repository), the Analytics
Service Specification's generic rule messages (Source: VideoSource, Rule; Data: rule specific)
and the Imaging Service Specification's ``tns1:VideoSource/MotionAlarm`` (Source: Source token;
Data: State). docs/profile-m.md has the mapping and docs/profile-m/onvif-ej.schema.json the
JSON Schema of the payload.

Topic: ``{TopicPrefix}/onvif-ej/{LocalTopic}/&{SVALUE}[/{SVALUE}...]`` — the ONVIF topic without
its ``tns1:`` namespace prefix, then the values of the message's Source items in order (so a
broker can keep one retained state per source). Payload: ``{"UtcTime", "Source", "Data"}``.

| our event | Profile M topic | Source | Data |
|---|---|---|---|
| start / end | ``VideoSource/MotionAlarm`` | ``{"Source": camera}`` | ``{"State": true / false}`` |
| alert by a line rule | ``RuleEngine/LineDetector/Crossed`` | ``{"VideoSource": camera, "Rule": name}`` | ``{"ObjectId": event id}`` |
| alert by a zone or count rule (and its end) | ``RuleEngine/FieldDetector/ObjectsInside`` | same | ``{"IsInside": true / false}`` |

Published straight on the link (QoS ``profile_m.qos``), not through the outbox: a video
management system does not send our end-to-end acknowledgements, and these messages describe
state that the next one supersedes. Our own event messages stay the durable record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from guetteur.analytics.events import EventUpdate
from guetteur.config import ProfileMConfig, RuleConfig
from guetteur.timeutil import iso_ms

log = logging.getLogger(__name__)

PAYLOAD_PREFIX = "onvif-ej"
MOTION_ALARM = "VideoSource/MotionAlarm"
LINE_CROSSED = "RuleEngine/LineDetector/Crossed"
OBJECTS_INSIDE = "RuleEngine/FieldDetector/ObjectsInside"

Publish = Callable[[str, bytes, int], object]  # (full topic, payload, qos)


def topic(prefix: str, local_topic: str, sources: Iterable[str]) -> str:
    """``{prefix}/onvif-ej/{local_topic}/&{source}/{source}...`` (Core spec topic ABNF)."""
    values = [s.replace("/", "_").replace("+", "_").replace("#", "_") for s in sources]
    tail = "/&" + "/".join(values) if values else ""
    return f"{prefix}/{PAYLOAD_PREFIX}/{local_topic}{tail}"


def message(utc: float | None, source: dict[str, str], data: dict[str, Any]) -> dict[str, Any]:
    """The onvif-ej payload: UtcTime (UTC ISO 8601 with milliseconds), Source, Data."""
    return {"UtcTime": iso_ms(utc), "Source": source, "Data": data}


class ProfileMPublisher:
    """Turns event updates into Profile M messages on the link."""

    def __init__(
        self,
        config: ProfileMConfig,
        gateway_id: str,
        rules: Mapping[str, Iterable[RuleConfig]],
        publish: Publish,
    ) -> None:
        self.config = config
        self.prefix = config.topic_prefix or gateway_id
        self._kinds = {cam: {r.name: r.kind for r in rs} for cam, rs in rules.items()}
        self._publish = publish
        self._alerted: dict[str, str] = {}  # event id -> rule announced

    def messages(self, update: EventUpdate) -> list[tuple[str, dict[str, Any]]]:
        """(topic, payload) of the Profile M messages one event update makes."""
        cam = update.camera
        out: list[tuple[str, dict[str, Any]]] = []
        if update.kind == "start":
            out.append(
                (
                    topic(self.prefix, MOTION_ALARM, [cam]),
                    message(update.start_wall, {"Source": cam}, {"State": True}),
                )
            )
        rule = update.rule
        if rule is not None and self._alerted.get(update.event_id) != rule:
            self._alerted[update.event_id] = rule
            when = update.start_wall if update.kind == "start" else None
            source = {"VideoSource": cam, "Rule": rule}
            if self._kinds.get(cam, {}).get(rule) == "line":
                out.append(
                    (
                        topic(self.prefix, LINE_CROSSED, [cam, rule]),
                        message(when, source, {"ObjectId": update.event_id}),
                    )
                )
            else:
                out.append(
                    (
                        topic(self.prefix, OBJECTS_INSIDE, [cam, rule]),
                        message(when, source, {"IsInside": True}),
                    )
                )
        if update.kind == "end":
            announced = self._alerted.pop(update.event_id, None)
            if announced is not None and self._kinds.get(cam, {}).get(announced) != "line":
                out.append(
                    (
                        topic(self.prefix, OBJECTS_INSIDE, [cam, announced]),
                        message(
                            update.end_wall,
                            {"VideoSource": cam, "Rule": announced},
                            {"IsInside": False},
                        ),
                    )
                )
            out.append(
                (
                    topic(self.prefix, MOTION_ALARM, [cam]),
                    message(update.end_wall, {"Source": cam}, {"State": False}),
                )
            )
        return out

    def on_event(self, update: EventUpdate) -> None:
        """Publish what ``update`` makes; a failure is logged and never reaches the pipeline."""
        for full_topic, payload in self.messages(update):
            try:
                body = json.dumps(payload, separators=(",", ":")).encode()
                self._publish(full_topic, body, self.config.qos)
            except Exception:
                log.exception(
                    "camera %s: Profile M message on %s not published; our own event is",
                    update.camera,
                    full_topic,
                )
