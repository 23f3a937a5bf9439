"""The analysis pipeline on real footage nobody tuned to: motion -> detector on motion -> events.

The street montage of tests/data (handheld, with shot cuts; a detector run on whole frames finds
cars near 2 s and 6 s, a bicycle near 5 s and a person near 8 s) is decoded like a camera source
does (every frame decoded, the frames due at 5 fps scaled to 320 px wide), and each analysed
frame goes through what the gateway does with it: MotionDetector with default settings, the
object detector only on the motion boxes (never on a frame without motion), the camera's default
object filter, and EventTracker with default settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from guetteur.analytics.detection.regions import Detection, filter_detections
from guetteur.analytics.detection.runtime import Detector, load_detector
from guetteur.analytics.events import EventTracker, EventUpdate
from guetteur.analytics.motion import MotionDetector
from guetteur.config import DetectFilter, DetectionConfig, EventsConfig
from guetteur.media.types import AnalyticFrame
from guetteur.sources.decode import DecodePlan, FrameSampler, analytic_size, frame_to_bgr
from tests.fixtures.models import STREET_CLIP, DetectionModels

FPS, WIDTH = 5.0, 320  # the analytic defaults of a camera


def analytic_frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds from the first frame, BGR image) at FPS and WIDTH, picked like the sources do."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else None
        if DecodePlan(FPS).skip_nonref(rate):
            stream.codec_context.skip_frame = "NONREF"
        sampler = FrameSampler(FPS)
        first: float | None = None
        size: tuple[int, int] | None = None
        for frame in container.decode(stream):
            if frame.pts is None or frame.time_base is None:
                continue
            t = float(frame.pts * frame.time_base)
            first = t if first is None else first
            if not sampler.take(t - first):
                continue
            size = size or analytic_size(frame.width, frame.height, WIDTH)
            yield t - first, frame_to_bgr(frame, size)


@dataclass
class PipelineRun:
    frames: int
    motion_frames: int
    detections: list[tuple[float, Detection]]  # what the camera filter kept, fed to events
    updates: list[EventUpdate]

    def events(self) -> list[EventUpdate]:
        """The end message of each event (it carries the event's interval and all labels)."""
        return [u for u in self.updates if u.kind == "end"]


def run_pipeline(frames: list[tuple[float, np.ndarray]], detector: Detector) -> PipelineRun:
    motion = MotionDetector()  # defaults; no privacy or ignore masks on this camera
    tracker = EventTracker("street", EventsConfig())
    flt = DetectFilter()
    out = PipelineRun(len(frames), 0, [], [])
    for t, image in frames:
        result = motion.process(image)
        found: list[Detection] = []
        if result.motion:
            out.motion_frames += 1
            found = filter_detections(detector.detect(image, result.boxes), flt)
        out.detections += [(t, d) for d in found]
        frame = AnalyticFrame("street", image, pts_s=t, wallclock=1.8e9 + t)
        out.updates += tracker.update(frame, result, found)
    out.updates += tracker.flush()
    return out


@pytest.fixture(scope="module")
def street() -> list[tuple[float, np.ndarray]]:
    return list(analytic_frames(STREET_CLIP))


def labelled_in_events(run: PipelineRun, label: str, start_s: float, end_s: float) -> list[float]:
    """Times in [start_s, end_s] of detections of `label` that an event reports: the detection
    lies inside the event's interval and the event carries the label."""
    times = [t for t, d in run.detections if d.label == label and start_s <= t <= end_s]
    return [
        t
        for t in times
        for ev in run.events()
        if ev.end_s is not None and ev.start_s <= t <= ev.end_s and label in ev.labels
    ]


@pytest.mark.slow
@pytest.mark.parametrize("style", DetectionModels.styles)
def test_street_montage_events_carry_the_car_and_the_person(
    detection_models: DetectionModels, street: list[tuple[float, np.ndarray]], style: str
) -> None:
    model = detection_models[style]
    detector = load_detector(DetectionConfig(manifest=str(model.manifest), model=str(model.model)))
    assert detector is not None
    assert 45 <= len(street) <= 55  # 10 s at 5 fps
    assert street[0][1].shape[1] == WIDTH

    run = run_pipeline(street, detector)
    # The detector only ever ran on frames with motion, and some frames had none (warm-up, shot
    # cuts: a global change localises nothing).
    assert 0 < run.motion_frames < run.frames
    assert run.events(), run.updates
    cars = labelled_in_events(run, "car", 1.0, 3.0)
    people = labelled_in_events(run, "person", 7.0, 9.5)
    seen = [(round(t, 2), d.label, round(d.score, 2)) for t, d in run.detections]
    assert cars, seen
    assert people, seen
