"""Event state machine: motion (and detections) in, start/update/end events out.

Pure: frames carry their own times; nothing here touches the network or the disk. Timing runs on
stream time (``AnalyticFrame.pts_s``), which does not jump when NTP steps the wall clock; the
wall-clock times that go on the wire come from ``AnalyticFrame.wallclock``.

- An event starts after ``start_frames`` consecutive motion frames; its start time is the first
  of them (so onset error is not inflated by the confirmation delay).
- When the camera requires labels (``DetectFilter.require``), a motion run becomes an event only
  once a required label is detected during it.
- Updates go out at most every ``update_interval_s`` and only when something changed.
- The event ends after ``end_quiet_s`` without motion; its end is the last motion frame.
- An event longer than ``max_duration_s`` is split into linked parts (``part`` 1, 2...; each
  names the ``previous_event_id``), each with its own end and clip, so the centre sees video
  while it still matters: the part ends at the first motion frame past the cap and the next part
  starts on that same frame (no hole between parts). Splitting only on a motion frame keeps
  ends truthful: motion that stops near the cap ends the event as ``quiet`` (a part then lasts
  at most ``max_duration_s + end_quiet_s``).
- Every end says why (``reason``): ``quiet``, ``split``, ``stop`` (camera or agent stopping),
  ``discontinuity`` (stream time jumped) or ``restart`` (closed at start-up after a crash, by
  ``runtime.event_journal``).
- The best frame (highest motion score, or best detection) becomes the JPEG snapshot; when the
  snapshot may not be shown (``SnapshotWithheld``: a PTZ dome away from every preset whose
  privacy masks are known), the event says why instead.
- An event during which a rule held (``guetteur.analytics.rules``) is an ``alert`` naming the
  first such rule; others are ``detection``. Events carry the PTZ preset the camera was at.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import cv2
import numpy as np

from guetteur.config import EventsConfig
from guetteur.media.types import AnalyticFrame, Box
from guetteur.timeutil import clock_synchronised

EventKind = Literal["start", "update", "end"]
EndReason = Literal["quiet", "split", "stop", "discontinuity", "restart"]
Category = Literal["detection", "alert"]


class SnapshotWithheld(Exception):
    """Raised by a snapshot renderer that must not show this frame; ``reason`` goes in the event
    (French first, English second, like every operator-facing text)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# A pts step larger than this (or backwards) is a discontinuity: a reconnect or a file loop.
_MAX_GAP_S = 30.0


class MotionLike(Protocol):
    """What the tracker needs of a motion result (guetteur.analytics.motion.MotionResult)."""

    @property
    def motion(self) -> bool: ...

    @property
    def score(self) -> float: ...

    @property
    def boxes(self) -> list[Box]: ...


class DetectionLike(Protocol):
    """What the tracker needs of a detection (guetteur.analytics.detection.regions.Detection)."""

    @property
    def label(self) -> str: ...

    @property
    def score(self) -> float: ...

    @property
    def box(self) -> Box: ...


@dataclass
class EventUpdate:
    """One message about one event."""

    kind: EventKind
    event_id: str
    seq: int  # 0 for start, then 1, 2...: (event_id, seq) is unique and ordered
    camera: str
    start_s: float  # stream time of the first motion frame
    end_s: float | None  # stream time of the last motion frame (end only)
    start_wall: float
    end_wall: float | None
    boxes: list[Box]
    labels: dict[str, float]  # label -> best score so far
    peak_score: float
    clock_synced: bool
    snapshot: bytes | None = None  # JPEG of the best frame so far, when it changed
    category: Category = "detection"  # "alert" once a rule held during the event
    rule: str | None = None  # the rule that made it an alert
    preset: str | None = None  # the PTZ preset the camera was at when it started
    snapshot_withheld: str | None = None  # why no snapshot may be shown, when so
    part: int = 1  # 1 for an event, 2, 3... for the parts continuing a split one
    previous_event_id: str | None = None  # the part this one continues
    reason: EndReason | None = None  # why it ended (end only)

    @property
    def message_id(self) -> str:
        return f"{self.event_id}:{self.seq}"


@dataclass
class _Active:
    event_id: str
    start_s: float
    start_wall: float
    last_motion_s: float
    last_motion_wall: float
    seq: int = 0
    peak_score: float = 0.0
    boxes: list[Box] = field(default_factory=list)
    labels: dict[str, float] = field(default_factory=dict)
    best_rank: float = -1.0
    best_frame: AnalyticFrame | None = None
    snapshot_dirty: bool = False
    last_emit_s: float = 0.0
    changed: bool = False
    rule: str | None = None
    preset: str | None = None
    withheld: str | None = None
    part: int = 1
    previous_event_id: str | None = None


def encode_jpeg(image: np.ndarray, quality: int, max_width: int) -> bytes:
    """JPEG-encode a BGR frame, downscaled to ``max_width`` when wider."""
    h, w = image.shape[:2]
    if w > max_width:
        image = cv2.resize(
            image, (max_width, round(h * max_width / w)), interpolation=cv2.INTER_AREA
        )
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


class EventTracker:
    """Per-camera event state machine. Call ``update`` for every analysed frame."""

    def __init__(
        self,
        camera: str,
        config: EventsConfig,
        clock_synced: Callable[[], bool] = clock_synchronised,
        require_labels: Sequence[str] = (),
        snapshot_image: Callable[[AnalyticFrame], np.ndarray] | None = None,
    ) -> None:
        """``snapshot_image`` turns the best frame into the picture to send (the gateway renders
        it from the full-resolution frame and blacks out privacy masks); default: the analysed
        image as it is."""
        self.camera = camera
        self.config = config
        self._clock_synced = clock_synced
        self._require = set(require_labels)
        self._snapshot_image = snapshot_image or (lambda frame: frame.colour())
        self._run_start: tuple[float, float] | None = None  # (pts_s, wallclock) of the motion run
        self._run_frames = 0
        self._run_labels: dict[str, float] = {}
        self._last_pts: float | None = None
        self._active: _Active | None = None
        self._run_rule: str | None = None  # a rule that held during the motion run

    @property
    def active_event(self) -> str | None:
        return self._active.event_id if self._active else None

    def update(
        self,
        frame: AnalyticFrame,
        result: MotionLike,
        detections: Sequence[DetectionLike] = (),
        rules: Sequence[str] = (),
        preset: str | None = None,
    ) -> list[EventUpdate]:
        """``rules``: the rules that hold at this frame; ``preset``: where the camera is."""
        out: list[EventUpdate] = []
        t = frame.pts_s
        if self._last_pts is not None and (t < self._last_pts or t - self._last_pts > _MAX_GAP_S):
            out += self._discontinuity("discontinuity")
        self._last_pts = t

        if self._active is None:
            if rules and result.motion and self._run_rule is None:
                self._run_rule = rules[0]
            self._idle(frame, result, detections, out)
            started = self._current()
            if started is not None:
                started.preset = preset
                out[-1].preset = preset
                if self._run_rule is not None:
                    started.rule = self._run_rule
                    out[-1].category, out[-1].rule = "alert", self._run_rule
                self._run_rule = None
        else:
            ev = self._active
            if rules and ev.rule is None:
                ev.rule = rules[0]
                ev.changed = True  # the next update says it became an alert
            self._running(frame, result, detections, out)
        if self._active is None and not result.motion:
            self._run_rule = None
        return out

    def _current(self) -> _Active | None:
        return self._active

    def flush(self) -> list[EventUpdate]:
        """End the running event now (camera stopped, agent shutting down)."""
        return self._discontinuity("stop")

    # -- states ------------------------------------------------------------------------------

    def _idle(
        self,
        frame: AnalyticFrame,
        result: MotionLike,
        detections: Sequence[DetectionLike],
        out: list[EventUpdate],
        continues: _Active | None = None,
    ) -> None:
        if not result.motion:
            self._run_start = None
            self._run_frames = 0
            self._run_labels = {}
            return
        if self._run_start is None:
            self._run_start = (frame.pts_s, frame.wallclock)
        self._run_frames += 1
        for d in detections:
            self._run_labels[d.label] = max(self._run_labels.get(d.label, 0.0), d.score)
        if self._run_frames < self.config.start_frames:
            return
        if self._require and not (self._require & set(self._run_labels)):
            return
        start_s, start_wall = self._run_start
        self._active = _Active(
            event_id=str(uuid.uuid4()),
            start_s=start_s,
            start_wall=start_wall,
            last_motion_s=frame.pts_s,
            last_motion_wall=frame.wallclock,
            labels=dict(self._run_labels),
            last_emit_s=frame.pts_s,
        )
        if continues is not None:  # the next part of a split event: same alert, same view
            ev = self._active
            ev.part, ev.previous_event_id = continues.part + 1, continues.event_id
            ev.rule, ev.preset = continues.rule, continues.preset
        self._observe(self._active, frame, result, detections)
        out.append(self._emit("start"))

    def _running(
        self,
        frame: AnalyticFrame,
        result: MotionLike,
        detections: Sequence[DetectionLike],
        out: list[EventUpdate],
    ) -> None:
        ev = self._active
        assert ev is not None
        t = frame.pts_s
        if result.motion:
            ev.last_motion_s = t
            ev.last_motion_wall = frame.wallclock
            self._observe(ev, frame, result, detections)
        if t - ev.last_motion_s >= self.config.end_quiet_s:
            out.append(self._end("quiet"))
            return
        if t - ev.start_s >= self.config.max_duration_s and result.motion:
            out.append(self._end("split"))  # still moving: the next part starts on this frame
            self._run_start = (t, frame.wallclock)
            self._run_frames = self.config.start_frames
            self._run_labels = dict(ev.labels)  # a required label seen stays seen
            self._idle(frame, result, detections, out, continues=ev)
            return
        if ev.changed and t - ev.last_emit_s >= self.config.update_interval_s:
            out.append(self._emit("update"))

    def _discontinuity(self, reason: EndReason) -> list[EventUpdate]:
        self._run_start = None
        self._run_frames = 0
        self._run_labels = {}
        return [self._end(reason)] if self._active else []

    # -- helpers -----------------------------------------------------------------------------

    def _observe(
        self,
        ev: _Active,
        frame: AnalyticFrame,
        result: MotionLike,
        detections: Sequence[DetectionLike],
    ) -> None:
        ev.changed = True
        ev.peak_score = max(ev.peak_score, result.score)
        ev.boxes = [d.box for d in detections] or list(result.boxes)
        for d in detections:
            ev.labels[d.label] = max(ev.labels.get(d.label, 0.0), d.score)
        # Best frame: a detection beats plain motion; then the larger score.
        rank = (1.0 + max(d.score for d in detections)) if detections else result.score
        if rank > ev.best_rank:
            ev.best_rank = rank
            ev.best_frame = frame
            ev.snapshot_dirty = True

    def _snapshot(self, ev: _Active) -> bytes | None:
        if not ev.snapshot_dirty or ev.best_frame is None:
            return None
        ev.snapshot_dirty = False
        try:
            image = self._snapshot_image(ev.best_frame)
        except SnapshotWithheld as withheld:
            ev.withheld = withheld.reason
            return None
        ev.withheld = None
        return encode_jpeg(image, self.config.snapshot_quality, self.config.snapshot_width)

    def _emit(self, kind: EventKind) -> EventUpdate:
        ev = self._active
        assert ev is not None
        update = EventUpdate(
            kind=kind,
            event_id=ev.event_id,
            seq=ev.seq,
            camera=self.camera,
            start_s=ev.start_s,
            end_s=None,
            start_wall=ev.start_wall,
            end_wall=None,
            boxes=list(ev.boxes),
            labels=dict(ev.labels),
            peak_score=ev.peak_score,
            clock_synced=self._clock_synced(),
            snapshot=self._snapshot(ev),
            category="alert" if ev.rule else "detection",
            rule=ev.rule,
            preset=ev.preset,
            part=ev.part,
            previous_event_id=ev.previous_event_id,
        )
        update.snapshot_withheld = ev.withheld
        ev.seq += 1
        ev.changed = False
        ev.last_emit_s = ev.last_motion_s if kind == "start" else (self._last_pts or ev.start_s)
        return update

    def _end(self, reason: EndReason) -> EventUpdate:
        ev = self._active
        assert ev is not None
        update = self._emit("end")
        update.end_s = ev.last_motion_s
        update.end_wall = ev.last_motion_wall
        update.reason = reason
        self._active = None
        self._run_start = None
        self._run_frames = 0
        self._run_labels = {}
        return update
