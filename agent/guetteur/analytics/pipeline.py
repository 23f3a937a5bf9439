"""One camera's analysis, frame by frame, as one object the camera worker and the benchmarks
share: privacy masks of the current view → PTZ awareness → day/night settings → motion →
rules → events.

Pure apart from the moves the PTZ service reports from its own threads (``commanded``, through
``guetteur.analytics.ptz_aware``'s lock): no clock, no I/O. The detector runs elsewhere
(``guetteur.analytics.detection.worker``); its filtered detections come back in through
``process``.

- **Views**: a fixed camera has one; a PTZ dome has one per preset of ``analytics.presets`` (its
  own ignore and privacy masks, added to the camera's, and its own object filter), and "away"
  between them. Away from every preset, a dome whose privacy masks are configured does not show
  snapshots (they would not line up): the event says so instead (``SnapshotWithheld``).
- **Night**: ``guetteur.analytics.night.NightMode`` switches the motion settings and the object
  filter; the background is kept (the detector relearns it anyway when the picture changes as a
  whole, as it does when the infrared filter swings in).
- **Pause**: while the view moves, motion does not count, the detector is not fed and no event
  starts; once still, the background is relearnt before motion counts again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from guetteur.analytics.events import DetectionLike, EventTracker, EventUpdate, SnapshotWithheld
from guetteur.analytics.masks import PolygonMask
from guetteur.analytics.motion import MotionDetector, MotionResult
from guetteur.analytics.night import Mode, NightMode, night_detect, night_motion
from guetteur.analytics.ptz_aware import Gate, PtzAwareness, PtzMove
from guetteur.analytics.rules import RuleEngine, RuleHits, SceneObject
from guetteur.config import CameraConfig, DetectFilter, EventsConfig, MotionConfig
from guetteur.media.types import AnalyticFrame, Box
from guetteur.timeutil import clock_synchronised

log = logging.getLogger(__name__)

WITHHELD_AWAY = (
    "image retenue : caméra hors de ses préréglages, masques de confidentialité non alignés / "
    "snapshot withheld: camera away from its presets, privacy masks would not line up"
)


class _Paused:
    """What the tracker sees of a frame that must not count (the view is moving)."""

    motion = False
    score = 0.0

    @property
    def boxes(self) -> list[Box]:
        return []


@dataclass
class Analysis:
    """What one analysed frame gave."""

    frame: AnalyticFrame  # privacy-masked, as analysed
    result: MotionResult
    gate: Gate
    updates: list[EventUpdate] = field(default_factory=list)
    hits: RuleHits | None = None
    mode: Mode = "day"

    @property
    def motion(self) -> bool:
        """Motion that counts: seen, and the view not moving."""
        return self.result.motion and not self.gate.paused


class CameraAnalytics:
    """Analysis of one camera (module docstring)."""

    def __init__(
        self,
        camera: CameraConfig,
        events: EventsConfig,
        *,
        timezone: str = "UTC",
        clock_synced: Callable[[], bool] = clock_synchronised,
    ) -> None:
        self.camera = camera
        self.events = events
        an = camera.analytics
        self._presets = an.presets
        self.night = NightMode(an.night)
        self.mode: Mode = "day"
        self.preset: str | None = None
        home = camera.ptz.home_preset if camera.ptz else None
        self.ptz = (
            PtzAwareness(camera.id, an.ptz, {p.number: n for n, p in an.presets.items()}, home)
            if camera.ptz is not None
            else None
        )
        self.rules = RuleEngine(an.rules, timezone)
        self._has_privacy = bool(camera.privacy_masks) or any(
            p.privacy_masks for p in an.presets.values()
        )
        self.privacy = PolygonMask(camera.privacy_masks)
        self.motion = MotionDetector(camera.motion, camera.ignore_masks, camera.privacy_masks)
        require = camera.detect.require if camera.detect else ()
        self.tracker = EventTracker(
            camera.id,
            events,
            clock_synced=clock_synced,
            require_labels=require,
            snapshot_image=self.snapshot_image,
        )
        self._apply_view()

    # -- settings of the current view and mode ----------------------------------------------

    @property
    def motion_config(self) -> MotionConfig:
        if self.mode == "night":
            return night_motion(self.camera.motion, self.camera.analytics.night)
        return self.camera.motion

    @property
    def detect_filter(self) -> DetectFilter | None:
        preset = self._presets.get(self.preset) if self.preset else None
        flt = (
            preset.detect
            if preset is not None and preset.detect is not None
            else self.camera.detect
        )
        return night_detect(flt, self.camera.analytics.night) if self.mode == "night" else flt

    def _apply_view(self) -> None:
        preset = self._presets.get(self.preset) if self.preset else None
        ignore = [*self.camera.ignore_masks, *(preset.ignore_masks if preset else [])]
        privacy = [*self.camera.privacy_masks, *(preset.privacy_masks if preset else [])]
        self.privacy = PolygonMask(privacy)
        self.motion.reconfigure(self.motion_config, ignore, privacy)

    def commanded(self, move: PtzMove) -> None:
        """A move the PTZ service sent to this camera (any thread)."""
        if self.ptz is not None:
            self.ptz.commanded(move)

    # -- frames -------------------------------------------------------------------------------

    def mask(self, frame: AnalyticFrame) -> AnalyticFrame:
        """The frame with the current view's privacy masks blacked out, in the analysed picture
        and in whatever colour is rendered from it (detector input, snapshots)."""
        if not self.privacy:
            return frame
        privacy = self.privacy
        render = frame.render
        return AnalyticFrame(
            frame.camera,
            privacy.blackout(frame.image),
            frame.pts_s,
            frame.wallclock,
            frame.source_size,
            (lambda w: privacy.blackout(render(w))) if render is not None else None,
            frame.chroma,
        )

    def process(self, frame: AnalyticFrame, detections: Sequence[DetectionLike] = ()) -> Analysis:
        """Analyse one frame; ``detections``: the detector's recent, filtered ones."""
        frame = self.mask(frame)
        result = self.motion.process(frame.image)
        gate = Gate(False, False, self.preset, "watching")
        if self.ptz is not None:
            gate = self.ptz.update(frame.wallclock, result.cause == "view", frame.image)
            if gate.relearn:
                self.motion.reset()
                self.rules.reset()
            if gate.preset_changed or gate.preset != self.preset:
                self.preset = gate.preset
                log.info("camera %s: at preset %s", self.camera.id, self.preset or "none (away)")
                self._apply_view()
        switched = self.night.observe(frame.pts_s, frame.chroma, _level(frame.image))
        if switched is not None:
            self.mode = switched
            log.info(
                "camera %s: %s settings (picture %s)",
                self.camera.id,
                "night" if switched == "night" else "day",
                "infrared or dark" if switched == "night" else "in colour and light again",
            )
            self._apply_view()
        analysis = Analysis(frame, result, gate, mode=self.mode)
        seen = result if not gate.paused else _Paused()
        dets = list(detections) if not gate.paused else []
        hits = None
        if self.rules and not gate.paused:
            objects = [SceneObject(d.box, d.label) for d in dets] or [
                SceneObject(b) for b in result.boxes
            ]
            hits = self.rules.update(
                frame.wallclock, objects if result.motion or dets else [], self.preset
            )
        analysis.hits = hits
        analysis.updates = self.tracker.update(
            frame,
            seen,
            dets,
            rules=hits.matched if hits else (),
            preset=self.preset,
        )
        return analysis

    def flush(self) -> list[EventUpdate]:
        return self.tracker.flush()

    def snapshot_image(self, frame: AnalyticFrame) -> np.ndarray:
        """The picture sent to the centre: rendered from the full-resolution decoded frame when
        the source keeps it, every privacy mask of the view blacked out; withheld when the dome
        is away from every preset and privacy masks are configured."""
        if (
            self.ptz is not None
            and self._has_privacy
            and (self.preset is None or self.ptz.state != "watching")
        ):
            raise SnapshotWithheld(WITHHELD_AWAY)
        return self.privacy.blackout(frame.colour(self.events.snapshot_width))


def _level(image: np.ndarray) -> float:
    sample = image[::8, ::8]
    return float(np.median(sample if sample.ndim == 2 else sample.mean(axis=2)))
