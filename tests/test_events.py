"""The event state machine, fed frame by frame (pure: no servers)."""

from __future__ import annotations

import itertools
import json
import logging
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from guetteur.analytics.events import EventTracker, EventUpdate
from guetteur.analytics.motion import MotionResult
from guetteur.centre.receiver.mqtt import Receiver
from guetteur.config import EventsConfig, validate_config
from guetteur.media.types import AnalyticFrame, Box
from guetteur.record import reserve
from guetteur.record.event_journal import EventJournal, restart_end
from guetteur.runtime.camera_worker import CameraWorker
from guetteur.runtime.gateway import Gateway
from guetteur.sources import open_source
from guetteur.timeutil import parse_iso
from guetteur.uplink import messages
from tests.faults.field_agent import receiver_clips, receiver_rows
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.disk import MIB, fill, small_partition
from tests.fixtures.waiting import wait_for

__all__ = ["small_partition"]  # the fixture, used by name

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


def parts_of(out: list[EventUpdate]) -> dict[str, list[EventUpdate]]:
    by_event: dict[str, list[EventUpdate]] = {}
    for u in out:
        by_event.setdefault(u.event_id, []).append(u)
    return by_event


def test_endless_motion_is_split_into_linked_parts_each_ended() -> None:
    """A busy street: 10 minutes of motion with a 120 s cap make five linked parts, each with
    its own start and end (so its own clip), none longer than the cap."""
    cfg = EventsConfig(start_frames=3, end_quiet_s=3.0, update_interval_s=5.0)
    assert cfg.max_duration_s == 120.0  # the default cap
    tracker = EventTracker("cam1", cfg)
    out = run(tracker, [(0, 600, True), (600, 610, False)])
    events = parts_of(out)
    chain = list(events.values())
    assert len(chain) == 5
    for n, updates in enumerate(chain, start=1):
        start, end = updates[0], updates[-1]
        assert start.kind == "start" and end.kind == "end"
        assert [u.seq for u in updates] == list(range(len(updates)))
        assert {u.part for u in updates} == {n}
        previous = chain[n - 2][0].event_id if n > 1 else None
        assert {u.previous_event_id for u in updates} == {previous}
        assert end.end_s is not None and end.end_s - start.start_s <= cfg.max_duration_s + 1e-6
        assert end.reason == ("split" if n < 5 else "quiet")
        assert start.snapshot is not None  # each part is illustrated
    # no hole between parts: the next part starts on the frame that ended the previous one
    for before, after in itertools.pairwise(chain):
        assert after[0].start_s == before[-1].end_s
    assert abs((chain[-1][-1].end_s or 0.0) - 599.8) < 1e-6
    msg = messages.event(chain[1][0], "gw1")
    assert msg["part"] == 2 and msg["previous_event_id"] == chain[0][0].event_id
    assert msg["reason"] is None and messages.event(chain[0][-1], "gw1")["reason"] == "split"


def test_motion_pausing_at_the_cap_splits_when_it_resumes_and_a_quiet_ends_as_quiet() -> None:
    cfg = EventsConfig(start_frames=2, end_quiet_s=2.0, max_duration_s=10.0)
    tracker = EventTracker("cam1", cfg)
    # a 1 s pause across the cap (10 s): the part ends on the first motion frame after it
    out = run(tracker, [(0, 9.8, True), (9.8, 10.8, False), (10.8, 14, True), (14, 20, False)])
    chain = list(parts_of(out).values())
    assert len(chain) == 2
    assert chain[0][-1].reason == "split" and chain[0][-1].end_s == 10.8
    assert chain[1][0].part == 2 and chain[1][0].previous_event_id == chain[0][0].event_id
    assert chain[1][0].start_s == 10.8 and chain[1][-1].reason == "quiet"
    # motion stopping just before the cap: a plain end, nothing continues
    out = run(tracker, [(30, 39.6, True), (39.6, 45, False), (45, 48, True), (48, 55, False)])
    first, second = parts_of(out).values()
    assert first[-1].reason == "quiet" and first[-1].part == 1
    assert second[0].part == 1 and second[0].previous_event_id is None


def test_each_end_says_why() -> None:
    cfg = EventsConfig(start_frames=1, end_quiet_s=1.0)
    tracker = EventTracker("cam1", cfg)
    assert run(tracker, [(0, 2, True), (2, 4, False)])[-1].reason == "quiet"
    run(tracker, [(10, 11, True)])
    out = tracker.update(frame(5.0), motion())  # stream time went back: a reconnection
    assert out[0].kind == "end" and out[0].reason == "discontinuity"
    run(tracker, [(6, 7, True)])
    (flushed,) = tracker.flush()
    assert flushed.reason == "stop" and flushed.end_s is not None
    assert all(u.reason is None for u in run(tracker, [(20, 21, True)]))


def test_a_split_alert_stays_an_alert_and_keeps_its_labels() -> None:
    cfg = EventsConfig(start_frames=1, end_quiet_s=2.0, max_duration_s=5.0)
    tracker = EventTracker("cam1", cfg, require_labels=["person"])
    out: list[EventUpdate] = []
    for i in range(60):  # 12 s of motion, a person seen only at the beginning
        t = round(i / FPS, 3)
        dets = [Det("person", 0.8)] if t < 1 else []
        out += tracker.update(frame(t), motion(), dets, rules=["parc"] if t < 1 else [])
    chain = list(parts_of(out).values())
    assert len(chain) == 3  # the required label is not needed again for the later parts
    assert all(p[0].category == "alert" and p[0].rule == "parc" for p in chain)
    assert all(p[0].labels.get("person") == 0.8 for p in chain)


def test_an_open_event_survives_in_the_journal_and_is_ended_for_restart(tmp_path: Path) -> None:
    """What the runtime records of an open event is enough to end it after a crash: the next
    seq, the same part and link, reason restart, the end when it was last seen open."""
    cfg = EventsConfig(start_frames=1, end_quiet_s=5.0, max_duration_s=2.0, update_interval_s=0.4)
    out = run(EventTracker("cam1", cfg), [(0, 3, True)])  # part 2 still running
    seen = iter([WALL0 + 100.0 + i for i in range(100)])
    journal = EventJournal(tmp_path, clock=lambda: next(seen))
    for u in out:
        if u.kind == "end":
            journal.ended(u.event_id, None)
        else:
            journal.opened(u, messages.event(u, "gw1")["id"].encode())
    journal.close()
    (left,) = EventJournal(tmp_path).open_events()  # after the "crash"
    last = out[-1]
    assert left.last.event_id == last.event_id and left.payload == last.message_id.encode()
    end = restart_end(left, clock_synced=False)
    assert (end.kind, end.seq, end.reason) == ("end", last.seq + 1, "restart")
    assert end.part == 2 and end.previous_event_id == out[0].event_id
    assert end.start_wall == last.start_wall and end.end_wall == left.seen
    assert end.labels == last.labels and end.boxes == last.boxes and end.clock_synced is False


@pytest.mark.slow
def test_a_real_agent_splits_endless_motion_into_parts_each_with_its_clip(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A walker crossing for the whole 12 s loop, a 3 s cap: the centre receives linked parts,
    each ended with reason split and each with its own clip, while the motion goes on."""
    config = validate_config(
        {
            "gateway_id": "gw-parts",
            "data_dir": str(tmp_path / "gateway"),
            "mqtt": {"url": broker.url},
            "cameras": [{"id": "street", "url": "test:walk?start=0&end=12&duration=12&gop=1"}],
            "recording": {"segment_s": 2, "max_percent": None, "min_free_bytes": 0},
            "events": {"pre_roll_s": 0, "post_roll_s": 0.5, "max_duration_s": 3},
        }
    )
    receiver = Receiver(broker.url, tmp_path / "centre", client_id="centre-parts")
    receiver.start()
    gateway = Gateway(config)
    gateway.start()
    db = tmp_path / "centre" / "receiver.db"

    def ends() -> list[dict[str, Any]]:
        return [
            json.loads(m)
            for (m,) in receiver_rows(db, "SELECT message FROM events WHERE type='end'")
        ]

    def parts_with_clips() -> list[dict[str, Any]]:
        clips = receiver_clips(db)
        return [e for e in ends() if e["reason"] == "split" and clips.get(e["event_id"])]

    try:
        wait_for(lambda: len(parts_with_clips()) >= 2, 60, "two parts, each with its clip")
        split = parts_with_clips()
        linked = wait_for(
            lambda: [e for e in ends() if e["previous_event_id"] in {s["event_id"] for s in split}],
            30,
            "a part continuing one of them",
        )
    finally:
        gateway.stop()
        receiver.stop()
    for end in split:
        took = parse_iso(end["end"]) - parse_iso(end["start"])
        # The cap is on stream time (the pure tests above check it exactly); the centre sees
        # the frames' wall-clock times, which a loaded machine stretches or squeezes (a source
        # catching up). Bounded: the cap, the next analysed motion frame, some jitter.
        assert 0 < took <= 3.0 + config.events.end_quiet_s + 1.0, end
    assert linked[0]["part"] >= 2


@pytest.mark.slow
def test_a_stop_while_analysis_is_inside_a_frame_never_ends_its_event_from_another_thread() -> None:
    """``CameraWorker.stop`` used to end the running event from the stopping thread even when
    the analysis thread was still inside a frame: one tracker on two threads. The event now stays
    open (journalled by the runtime: the next start ends it)."""
    config = validate_config(
        {
            "gateway_id": "gw-stop",
            "mqtt": {"url": "mqtt://127.0.0.1:1"},
            "events": {"start_frames": 1},
            "cameras": [{"id": "street", "url": "test:walk?start=0&end=20&duration=20&gop=1"}],
        }
    )
    camera = config.cameras[0]
    inside, release = threading.Event(), threading.Event()
    published: list[tuple[str, str]] = []

    def publish(update: EventUpdate) -> None:
        published.append((threading.current_thread().name, update.kind))
        if update.kind == "start":  # analysis is busy with this frame until released
            inside.set()
            release.wait(10)

    worker = CameraWorker(
        camera,
        open_source(camera),
        config.events,
        publish_event=publish,
        publish_status=lambda _w: None,
    )
    worker.start()
    try:
        assert inside.wait(30), "no event started"
        worker.stop(0.5)
    finally:
        release.set()
    wait_for(lambda: not worker.lingering_threads(), 10, "the worker's threads to end")
    assert published == [("analysis-street", "start")]


def test_the_journal_never_stops_an_event_on_a_full_disk(
    small_partition: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a full data partition the journal releases the reserve file and records the event;
    once even that space is gone it logs what is not protected and lets the event go out; a
    journal that cannot even be created runs in memory instead of stopping the agent."""
    cfg = EventsConfig(start_frames=1, end_quiet_s=1.0, update_interval_s=0.2)
    updates = [u for u in run(EventTracker("cam1", cfg), [(0, 20, True)]) if u.kind != "end"]
    journal = EventJournal(small_partition)
    assert reserve.ensure(small_partition, 4 * MIB, keep_free=0)
    fill(small_partition)
    big = b"x" * (64 << 10)  # every open event takes new pages
    for u in updates[:20]:
        journal.opened(u, big)
    assert reserve.reserve_size(small_partition) == 0  # released for the journal
    assert len(journal.open_events()) == 1  # one event, its last update recorded
    fill(small_partition, "ballast2")  # and what the reserve gave back is taken again
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        for u in updates[20:]:
            journal.opened(u, big)  # never raises
    assert any("not recorded" in r.getMessage() for r in caplog.records)
    journal.close()
    elsewhere = EventJournal(small_partition / "new")  # cannot even be created
    elsewhere.opened(updates[-1], b"{}")
    assert len(elsewhere.open_events()) == 1  # in memory
    elsewhere.close()
