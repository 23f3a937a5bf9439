"""The event state machine, fed frame by frame (pure: no servers)."""

from __future__ import annotations

import cv2
import numpy as np

from guetteur.analytics.events import EventTracker, EventUpdate
from guetteur.analytics.motion import MotionResult
from guetteur.config import EventsConfig
from guetteur.media.types import AnalyticFrame, Box
from guetteur.uplink import messages

FPS = 5.0
IMAGE = np.full((180, 320, 3), 90, np.uint8)
WALL0 = 1_790_000_000.0


def frame(t: float, image: np.ndarray = IMAGE) -> AnalyticFrame:
    return AnalyticFrame("cam1", image, t, WALL0 + t)


def motion(score: float = 0.02) -> MotionResult:
    return MotionResult(score, [Box(0.4, 0.3, 0.1, 0.3)], False, True)


QUIET = MotionResult(0.0, [], False, False)


class Det:
    def __init__(self, label: str, score: float) -> None:
        self.label = label
        self.score = score
        self.box = Box(0.4, 0.3, 0.1, 0.3)


def run(
    tracker: EventTracker,
    script: list[tuple[float, float, bool]],
    dets: dict[float, list[Det]] | None = None,
) -> list[EventUpdate]:
    """script: (from_s, to_s, moving) segments at FPS."""
    out: list[EventUpdate] = []
    for start, end, moving in script:
        for i in range(round((end - start) * FPS)):
            t = round(start + i / FPS, 3)
            found = (dets or {}).get(t, [])
            out += tracker.update(frame(t), motion() if moving else QUIET, found)
    return out


def test_one_event_start_update_end_with_times() -> None:
    cfg = EventsConfig(start_frames=3, end_quiet_s=2.0, update_interval_s=1.0)
    tracker = EventTracker("cam1", cfg, clock_synced=lambda: True)
    out = run(tracker, [(0, 5, False), (5, 8, True), (8, 14, False)])
    kinds = [u.kind for u in out]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("start") == 1 and kinds.count("end") == 1
    assert 1 <= kinds.count("update") <= 3  # at most one per second of a 3 s event
    start, end = out[0], out[-1]
    assert start.start_s == 5.0  # the first motion frame, not the confirming one
    assert end.end_s is not None and abs(end.end_s - 7.8) < 1e-6
    assert len({u.event_id for u in out}) == 1
    assert [u.seq for u in out] == list(range(len(out)))
    msg = messages.event(start, "gw1")
    assert msg["type"] == "start" and msg["camera"] == "cam1" and msg["clock_synced"] is True
    assert msg["start"].endswith("Z") and len(msg["start"]) == len("2026-01-01T00:00:00.000Z")
    assert msg["boxes"] == [[0.4, 0.3, 0.1, 0.3]]
    assert start.snapshot is not None and start.snapshot[:2] == b"\xff\xd8"  # a JPEG


def test_short_blips_make_no_event_and_clock_flag_carried() -> None:
    cfg = EventsConfig(start_frames=3)
    tracker = EventTracker("cam1", cfg, clock_synced=lambda: False)
    out = run(tracker, [(0, 1, False), (1, 1.4, True), (1.4, 3, False), (3, 3.4, True)])
    assert out == []
    out = run(tracker, [(4, 6, True), (6, 12, False)])
    assert out[0].clock_synced is False


def test_required_label_gates_the_event() -> None:
    cfg = EventsConfig(start_frames=2, end_quiet_s=1.0)
    tracker = EventTracker("cam1", cfg, require_labels=["person"])
    # motion with only a car detected: no event
    out = run(tracker, [(0, 3, True), (3, 5, False)], {1.0: [Det("car", 0.8)]})
    assert out == []
    # motion and a person at 6.4 s: an event starting at the run's first motion frame
    out = run(tracker, [(6, 9, True), (9, 12, False)], {6.4: [Det("person", 0.7)]})
    assert out[0].kind == "start"
    assert out[0].start_s == 6.0
    assert out[0].labels == {"person": 0.7}


def test_best_frame_snapshot_prefers_detections() -> None:
    cfg = EventsConfig(start_frames=1, end_quiet_s=1.0, update_interval_s=0.2)
    tracker = EventTracker("cam1", cfg)
    bright = np.full((180, 320, 3), 200, np.uint8)
    out = tracker.update(frame(0.0), motion(0.5))
    out += tracker.update(frame(0.2, bright), motion(0.01), [Det("person", 0.9)])
    out += tracker.update(frame(0.4), motion(0.6))
    snaps = [u.snapshot for u in out if u.snapshot is not None]
    assert len(snaps) == 2  # the first frame, then the better (detection) frame
    decoded = cv2.imdecode(np.frombuffer(snaps[-1], np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.mean() > 150  # the bright frame with the person


def test_discontinuity_and_max_duration_end_events() -> None:
    cfg = EventsConfig(start_frames=1, end_quiet_s=5.0, max_duration_s=4.0)
    tracker = EventTracker("cam1", cfg)
    out = run(tracker, [(0, 10, True)])
    assert [u.kind for u in out].count("start") >= 2  # split at 4 s
    assert [u.kind for u in out].count("end") >= 2
    # stream time jumps backwards (a file loop / reconnect): the running event ends
    before = tracker.active_event
    assert before is not None
    out = tracker.update(frame(0.0), QUIET)
    assert [u.kind for u in out] == ["end"] and out[0].event_id == before
    assert tracker.flush() == []
