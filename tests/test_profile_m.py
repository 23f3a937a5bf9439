"""ONVIF Profile M events beside ours: with ``profile_m.enabled``, a gateway's events also reach a
real Mosquitto as onvif-ej messages, which validate against docs/profile-m/onvif-ej.schema.json
(written from the ONVIF Core spec's event broker section) on topics of the spec's form."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from jsonschema import Draft202012Validator

from guetteur.analytics.events import EventKind, EventUpdate
from guetteur.centre.client import CentreClient
from guetteur.config import ProfileMConfig, RuleConfig, validate_config
from guetteur.media.types import Box
from guetteur.runtime.gateway import Gateway
from guetteur.uplink.profile_m import ProfileMPublisher
from tests.fixtures.broker import MosquittoBroker

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "profile-m" / "onvif-ej.schema.json"
# Topic = TopicPrefix "/" PayloadPrefix "/" LocalTopic [ "/&" Source ], Source = SVALUE *("/" SVALUE)
TOPIC = re.compile(
    r"^(?P<prefix>[^/#+]+(/[^/#+]+)*)/onvif-ej/(?P<local>[A-Za-z:]+(/[A-Za-z:]+)*)(/&(?P<source>[^/#+]+(/[^/#+]+)*))?$"
)


def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_schema_accepts_the_specs_own_examples_and_refuses_other_shapes() -> None:
    v = validator()
    # The Core spec's examples (event broker section), as printed there.
    v.validate(
        {
            "UtcTime": "2008-10-10T12:24:57.321Z",
            "Source": {
                "VideoSource": "1",
                "AnalyticsConfiguration": "2",
                "Rule": "MyImportantFence1",
            },
            "Data": {"ObjectId": "15"},
        }
    )
    v.validate(
        {
            "UtcTime": "2008-10-10T12:24:57.789Z",
            "Source": {"VideoSource": "1", "Rule": "MyLineInfo"},
            "Data": {
                "Segments": {
                    "Polyline": {"Point": [{"@x": 0.10, "@y": 0.50}, {"@x": 1.0, "@y": 0.50}]}
                }
            },
        }
    )
    v.validate(
        {
            "UtcTime": "2025-07-15T14:30:00Z",
            "Source": {"SensorID": "temp_001"},
            "Data": {"Value": 28.65, "Threshold": 25.15},
        }
    )
    bad_ones: list[dict[str, Any]] = [
        {"Source": {}},  # no UtcTime
        {"UtcTime": "2025-07-15 14:30:00", "Source": {}},  # not ISO 8601 UTC
        {"UtcTime": "2025-07-15T14:30:00Z", "Source": {}, "Topic": "x"},  # not in the form
        {"UtcTime": "2025-07-15T14:30:00Z", "Source": {"A": None}},  # no null SVALUE
    ]
    for bad in bad_ones:
        assert list(v.iter_errors(bad)), bad


def test_mapping_of_an_alert_by_a_line_and_by_a_zone() -> None:
    sent: list[tuple[str, bytes, int]] = []
    rules = [
        RuleConfig.model_validate(
            {"name": "portail", "kind": "line", "line": [[0.5, 0], [0.5, 1]]}
        ),
        RuleConfig.model_validate(
            {"name": "parvis", "kind": "zone", "zone": [[0, 0], [1, 0], [1, 1]]}
        ),
    ]
    pub = ProfileMPublisher(
        ProfileMConfig(enabled=True), "gw1", {"cam1": rules}, lambda t, p, q: sent.append((t, p, q))
    )
    box = [Box(0.1, 0.1, 0.2, 0.2)]

    def update(kind: EventKind, seq: int, rule: str | None, event: str = "e1") -> EventUpdate:
        return EventUpdate(
            kind,
            event,
            seq,
            "cam1",
            1.0,
            2.0 if kind == "end" else None,
            1.8e9,
            1.8e9 + 1 if kind == "end" else None,
            box,
            {},
            0.1,
            True,
            rule=rule,
            category="alert" if rule else "detection",
        )

    for u in (
        update("start", 0, None),
        update("update", 1, "portail"),
        update("end", 2, "portail"),
    ):
        pub.on_event(u)
    topics = [t for t, _, _ in sent]
    assert topics == [
        "gw1/onvif-ej/VideoSource/MotionAlarm/&cam1",
        "gw1/onvif-ej/RuleEngine/LineDetector/Crossed/&cam1/portail",
        "gw1/onvif-ej/VideoSource/MotionAlarm/&cam1",
    ]
    payloads = [json.loads(p) for _, p, _ in sent]
    assert payloads[0]["Data"] == {"State": True} and payloads[-1]["Data"] == {"State": False}
    assert payloads[1]["Source"] == {"VideoSource": "cam1", "Rule": "portail"}
    assert payloads[1]["Data"] == {"ObjectId": "e1"}
    sent.clear()
    for u in (update("start", 0, "parvis", "e2"), update("end", 1, "parvis", "e2")):
        pub.on_event(u)
    inside = [(t, json.loads(p)["Data"]) for t, p, _ in sent if "FieldDetector" in t]
    assert inside == [
        ("gw1/onvif-ej/RuleEngine/FieldDetector/ObjectsInside/&cam1/parvis", {"IsInside": True}),
        ("gw1/onvif-ej/RuleEngine/FieldDetector/ObjectsInside/&cam1/parvis", {"IsInside": False}),
    ]
    for _, payload, _ in sent:
        validator().validate(json.loads(payload))


@pytest.mark.slow
def test_profile_m_events_on_the_broker_validate_against_the_onvif_ej_schema(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    config = validate_config(
        {
            "gateway_id": "gw-pm",
            "data_dir": str(tmp_path / "data"),
            "mqtt": {"url": broker.url},
            "outbox": {"enabled": False},
            "recording": {"enabled": False},
            "profile_m": {"enabled": True, "topic_prefix": "ville/gw-pm"},
            "cameras": [
                {
                    "id": "rue",
                    "url": "test:walk?start=2&end=5",
                    "analytics": {
                        "rules": [
                            {
                                "name": "chaussee",
                                "kind": "zone",
                                "zone": [[0, 0.4], [1, 0.4], [1, 1], [0, 1]],
                            }
                        ]
                    },
                }
            ],
        }
    )
    received: list[tuple[str, dict[str, Any]]] = []
    ours: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_onvif(msg: mqtt.MQTTMessage) -> None:
        with lock:
            received.append((msg.topic, json.loads(msg.payload)))

    def on_event(msg: mqtt.MQTTMessage) -> None:
        with lock:
            ours.append(json.loads(msg.payload))

    with CentreClient(broker.url, client_id="vms") as vms:
        vms.subscribe("ville/gw-pm/onvif-ej/#", on_onvif)
        vms.subscribe("guetteur/v1/gw-pm/cam/+/event", on_event)
        gateway = Gateway(config)
        gateway.start()
        try:
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                with lock:
                    done = any(
                        t.endswith("MotionAlarm/&rue") and p["Data"] == {"State": False}
                        for t, p in received
                    )
                if done:
                    break
                time.sleep(0.2)
        finally:
            gateway.stop()
        time.sleep(0.3)
    with lock:
        messages = list(received)
        events = list(ours)
    assert messages, "no Profile M message reached the broker"
    v = validator()
    for topic, payload in messages:
        errors = [e.message for e in v.iter_errors(payload)]
        assert not errors, (topic, payload, errors)
        m = TOPIC.match(topic)
        assert m is not None and m["prefix"] == "ville/gw-pm", topic
    kinds = {(TOPIC.match(t) or {})["local"] for t, _ in messages}  # type: ignore[index]
    assert kinds == {"VideoSource/MotionAlarm", "RuleEngine/FieldDetector/ObjectsInside"}
    states = [p["Data"]["State"] for t, p in messages if t.endswith("MotionAlarm/&rue")]
    assert states[0] is True and states[-1] is False
    # our own events are still there, and they say the same thing
    assert events and {e["category"] for e in events} == {"alert"}
    assert {e["rule"] for e in events} == {"chaussee"}
