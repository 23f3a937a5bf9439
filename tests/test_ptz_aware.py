"""PTZ-aware analysis: a dome that moves is not motion; once it settles, motion counts again.

The move goes through the real PTZ service (Pelco-D over a socat pty, bytes read at the camera's
end) and reaches the camera's analysis through the service's move listener, as in the gateway.
The picture is a generated street scene that pans while the dome moves."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import serial

from guetteur.analytics.events import EventUpdate
from guetteur.analytics.pipeline import WITHHELD_AWAY, CameraAnalytics
from guetteur.analytics.ptz_aware import PtzAwareness, PtzMove
from guetteur.config import CameraConfig, EventsConfig, PtzConfig, PtzPauseConfig
from guetteur.dev.synthetic import Scenario, scenario
from guetteur.media.types import AnalyticFrame
from guetteur.ptz.service import PtzService
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.commands import CommandDispatcher
from tests.fixtures.publisher import CollectingPublisher
from tests.fixtures.serial import PtyPair, read_exactly

FPS = 5.0
# Still until 4 s; the dome pans half a frame width from 4 s to 9 s (eased), then holds; a
# person walks across the new view from 12 s to 15 s.
PAN_SCENE = scenario(
    "pan", width=320, height=180, fps=FPS, pan_end=9, walker=1, start=12, end=15, duration=18
)


def dome(port: str = "/dev/null", **analytics: Any) -> CameraConfig:
    return CameraConfig.model_validate(
        {
            "id": "dome",
            "url": "test:pan",
            "ptz": PtzConfig(protocol="pelco-d", serial_port=port, presets=16),
            "analytics": analytics,
        }
    )


def run(
    analytics: CameraAnalytics, sc: Scenario, wall0: float, moves: dict[int, PtzMove] | None = None
) -> list[EventUpdate]:
    """Feed the scene's frames (grey, as the sources deliver them) with wall clock
    ``wall0 + t``; ``moves``: frame index -> move reported before that frame."""
    out: list[EventUpdate] = []
    for i in range(sc.frame_count):
        if moves and i in moves:
            analytics.commanded(moves[i])
        image = sc.render(i).mean(axis=2).astype(np.uint8)
        t = sc.time_of(i)
        out += analytics.process(AnalyticFrame("dome", image, t, wall0 + t)).updates
    return out + analytics.flush()


def starts(updates: list[EventUpdate]) -> list[float]:
    return [u.start_s for u in updates if u.kind == "start"]


@pytest.fixture
def service(pty_pair: PtyPair) -> Iterator[tuple[PtzService, CommandDispatcher, serial.Serial]]:
    svc = PtzService([dome(pty_pair.gateway)], AuditTrail(CollectingPublisher(), "gw1"))
    dispatcher = CommandDispatcher(audit=None, rate_per_s=1000, burst=1000)
    svc.register(dispatcher)
    device = serial.Serial(pty_pair.device, 9600, timeout=1.0)
    yield svc, dispatcher, device
    svc.close()
    device.close()


@pytest.mark.slow
def test_a_move_through_the_ptz_service_makes_no_event_and_motion_after_it_does(
    service: tuple[PtzService, CommandDispatcher, serial.Serial],
) -> None:
    svc, dispatcher, device = service
    analytics = CameraAnalytics(dome(), EventsConfig(), clock_synced=lambda: True)
    heard: list[PtzMove] = []

    def listener(camera: str, action: str, preset: int | None) -> None:
        move = PtzMove(camera, action, time.time(), preset)
        heard.append(move)
        analytics.commanded(move)

    svc.add_move_listener(listener)
    # The scene: still until 4 s, the dome pans half a frame width from 4 s to 9 s, then holds;
    # a person walks across the new view from 12 s to 15 s.
    sc = PAN_SCENE
    # Up to the pan's start the picture is still: analyse it first, then command the move.
    pan_at = int(4 * FPS)
    head = Scenario(**{**sc.__dict__, "duration_s": pan_at / FPS})
    reply = dispatcher.handle(
        "ptz", json.dumps({"camera": "dome", "action": "move", "pan": 0.6}).encode(), {}
    )
    assert reply.get("ok") is True, reply
    assert read_exactly(device, 7)[:2] == bytes.fromhex("FF 01")  # the move reached the dome
    assert heard and heard[0].action == "move"
    wall0 = heard[0].wallclock - pan_at / FPS
    updates = run(analytics, head, wall0)
    assert updates == []
    # The rest of the scene, the move already reported (it was, by the listener).
    rest: list[EventUpdate] = []
    for i in range(pan_at, sc.frame_count):
        if i == int(9 * FPS):  # the operator lets go: stop, through the service too
            reply = dispatcher.handle(
                "ptz", json.dumps({"camera": "dome", "action": "stop"}).encode(), {}
            )
            assert reply.get("ok") is True, reply
        image = sc.render(i).mean(axis=2).astype(np.uint8)
        t = sc.time_of(i)
        analysis = analytics.process(AnalyticFrame("dome", image, t, wall0 + t))
        rest += analysis.updates
        if t < 9.0:
            assert analysis.gate.paused, t  # paused all the while the dome moves
            assert not analysis.motion
    rest += analytics.flush()
    # No event while it panned; one for the walker once the view held still, with its times.
    assert len(starts(rest)) == 1, [(u.kind, u.start_s) for u in rest]
    assert 12.0 <= starts(rest)[0] <= 12.8
    assert all(u.preset is None for u in rest)  # a continuous move ends away from presets


def test_the_pan_changes_the_whole_picture() -> None:
    """Control: the scene's pan is a real change of view (the pause is not waiting on nothing):
    a detector left alone sees the view move, frame after frame."""
    from guetteur.analytics.motion import MotionDetector

    det = MotionDetector()
    results = [
        det.process(PAN_SCENE.render(i).mean(axis=2).astype(np.uint8)) for i in range(int(10 * FPS))
    ]
    panning = results[int(4.2 * FPS) : int(9 * FPS)]
    assert sum(r.cause == "view" for r in panning) >= len(panning) // 3
    assert all(r.cause != "view" for r in results[: int(4 * FPS)])


def test_a_move_the_camera_makes_by_itself_pauses_until_still_then_relearns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    analytics = CameraAnalytics(dome(), EventsConfig(), clock_synced=lambda: True)
    with caplog.at_level(logging.INFO, logger="guetteur.analytics.ptz_aware"):
        updates = run(analytics, PAN_SCENE, 1.8e9)
    assert len(starts(updates)) == 1 and 12.0 <= starts(updates)[0] <= 12.8
    assert any("whole view changed" in r.message for r in caplog.records)


def test_goto_preset_lands_on_the_preset_with_its_masks_and_events_carry_it() -> None:
    cam = dome(
        presets={
            "parvis": {"number": 1, "ignore_masks": [[[0, 0], [0.3, 0], [0.3, 1], [0, 1]]]},
            "rue": {"number": 2},
        }
    )
    analytics = CameraAnalytics(cam, EventsConfig(), clock_synced=lambda: True)
    sc = scenario("pan", width=320, height=180, fps=FPS, walker=1, start=10, end=13)
    wall0 = 1.8e9
    updates = run(
        analytics, sc, wall0, {int(4 * FPS): PtzMove("dome", "goto_preset", wall0 + 4, 2)}
    )
    assert analytics.preset == "rue"
    assert [u.preset for u in updates if u.kind == "start"] == ["rue"]


def test_a_dome_with_privacy_masks_withholds_snapshots_away_from_its_presets() -> None:
    cam = dome(presets={"parvis": {"number": 1, "privacy_masks": [[[0.6, 0], [1, 0], [1, 0.3]]]}})
    analytics = CameraAnalytics(cam, EventsConfig(), clock_synced=lambda: True)
    sc = scenario("pan", width=320, height=180, fps=FPS, walker=1, start=10, end=13)
    # A continuous move: the dome ends away from every preset.
    updates = run(analytics, sc, 1.8e9, {int(4 * FPS): PtzMove("dome", "move", 1.8e9 + 4)})
    start = next(u for u in updates if u.kind == "start")
    assert start.snapshot is None and start.snapshot_withheld == WITHHELD_AWAY
    # Sent to the preset: its masks are known, the snapshot is shown (masked).
    analytics = CameraAnalytics(cam, EventsConfig(), clock_synced=lambda: True)
    updates = run(
        analytics, sc, 1.8e9, {int(4 * FPS): PtzMove("dome", "goto_preset", 1.8e9 + 4, 1)}
    )
    start = next(u for u in updates if u.kind == "start")
    assert start.snapshot is not None and start.snapshot_withheld is None


def test_a_position_the_camera_cannot_reach_is_logged_and_pauses_until_still(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aware = PtzAwareness("dome", PtzPauseConfig(settle_s=1.0, relearn_frames=2), {})
    still = np.full((90, 160), 100, np.uint8)
    ranges = ((-1.0, 1.0), (-1.0, 1.0), (0.0, 1.0))
    assert aware.position_reported(100.0, 0.2, 0.1, 0.5, ranges)
    with caplog.at_level(logging.WARNING):
        assert not aware.position_reported(100.0, 3.5, 0.1, 0.5, ranges)
    assert "outside what it can reach" in caplog.text and "paused" in caplog.text
    gates = [aware.update(100.0 + k * 0.2, False, still) for k in range(30)]
    assert gates[0].paused
    first_free = next(k for k, g in enumerate(gates) if not g.paused)
    # still pictures only: the unseen move waits unseen_move_s (3 s), then 2 relearn frames
    assert 3.0 <= first_free * 0.2 <= 3.8
    assert any(g.relearn for g in gates)
