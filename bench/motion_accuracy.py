#!/usr/bin/env python3
"""Score the motion pipeline (MotionDetector + EventTracker) on clips against ground truth.

    bench/motion_accuracy.py CLIP [TRUTH.json] [--fps 5] [--width 320] [--config cam.yaml] [--json]
    bench/motion_accuracy.py --dir DIR          # every DIR/*.mp4 with its DIR/*.json beside it
    bench/motion_accuracy.py CLIP --frames      # also one line per analysed frame (diagnosis)

TRUTH.json: ``{"events": [{"start": 5.0, "end": 8.0}, ...], "ignore_masks": [...]}`` (seconds
from the clip's start; ``ignore_masks``/``privacy_masks`` optional, normalised polygons). Without
a truth file the events found are only listed.

The clip is decoded with PyAV and thinned to the analytic rate and size exactly like a camera
source does (decode every frame, convert only the frames due at ``--fps``, scale to ``--width``),
then runs through the detector and the event state machine with default settings (or those of
``--config``: a guetteur YAML — the first camera's motion/masks and the top-level events — or a
YAML with ``motion:``, ``events:``, ``ignore_masks:``, ``privacy_masks:`` keys).

Matching: a detected event matches a truth interval when they overlap in time. Precision =
matched detections / detections; recall = matched truth intervals / truth intervals; onset error =
detected start - truth start of the first event matching each truth interval. False alarms per
hour are the unmatched detections divided by the quiet footage (clip length minus truth
intervals).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import yaml

from guetteur.analytics.events import EventTracker
from guetteur.analytics.masks import PolygonMask
from guetteur.analytics.motion import MotionDetector, MotionResult
from guetteur.analytics.pipeline import CameraAnalytics
from guetteur.config import CameraConfig, EventsConfig, MotionConfig
from guetteur.media.types import AnalyticFrame, Box
from guetteur.sources.decode import (
    DecodePlan,
    FrameSampler,
    analytic_size,
    chroma_level,
    frame_to_luma,
)


class _Timed:
    """Times a detector's ``process`` (wall and thread CPU), wherever it is called from."""

    def __init__(self, detector: Any) -> None:
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self._process = detector.process
        detector.process = self.process

    def process(self, image: np.ndarray) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return self._process(image)
        finally:
            self.cpu_s += time.thread_time() - c0
            self.wall_s += time.perf_counter() - t0


def analytic_frames(
    path: str | Path, fps: float, width: int, threads: int = 0, with_chroma: bool = False
) -> Iterator[Any]:
    """Yield (seconds from the first frame, grey image) at ``fps`` and ``width`` from a clip.

    Uses the camera sources' own helpers (guetteur.sources.decode): every frame is decoded
    (P-frames depend on their predecessors; non-reference frames are skipped when the plan says
    so), and only the frames the sampler picks are scaled — their luma plane, as the sources
    hand it to motion.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if threads == 1:
            ctx.thread_count = 1
        else:
            stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else None
        if DecodePlan(fps).skip_nonref(rate):
            ctx.skip_frame = "NONREF"
        sampler = FrameSampler(fps)
        first: float | None = None
        size: tuple[int, int] | None = None
        for frame in container.decode(stream):
            if frame.pts is None or frame.time_base is None:
                continue
            t = float(frame.pts * frame.time_base)
            if first is None:
                first = t
            t -= first
            if not sampler.take(t):
                continue
            if size is None:
                size = analytic_size(frame.width, frame.height, width)
            if with_chroma:
                yield t, frame_to_luma(frame, size), chroma_level(frame)
            else:
                yield t, frame_to_luma(frame, size)


class _ContourReference:
    """Shared tail of the reference detectors: ignore mask, dilation, contours, minimum area,
    changed-fraction global test, warm-up. Their front end (the foreground mask) differs."""

    def __init__(self, config: MotionConfig, ignore_masks: list[Any]) -> None:
        self.config = config
        self._ignore = PolygonMask(ignore_masks)
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._frames = 0

    def foreground(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def process(self, image: np.ndarray) -> MotionResult:
        self._frames += 1
        fg = self.foreground(image)
        h, w = fg.shape
        usable = self._ignore.mask(w, h) == 0
        fg = (fg > 0) & usable
        ratio = float(np.count_nonzero(fg)) / max(1, int(np.count_nonzero(usable)))
        if self._frames <= self.config.warmup_frames:
            return MotionResult(0.0, [], False, False, changed_ratio=ratio, warming_up=True)
        if ratio > self.config.global_change_ratio:
            return MotionResult(0.0, [], True, False, changed_ratio=ratio)
        blobs = cv2.dilate(fg.astype(np.uint8), self._kernel, iterations=self.config.dilate)
        contours, _ = cv2.findContours(blobs, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        boxes, covered = [], 0.0
        for contour in contours:
            area = float(cv2.contourArea(contour))
            if area >= self.config.min_area * w * h and area > 0:
                x, y, bw, bh = cv2.boundingRect(contour)
                boxes.append(Box(x / w, y / h, bw / w, bh / h))
                covered += area
        return MotionResult(covered / (w * h), boxes, False, bool(boxes), changed_ratio=ratio)


class TextbookDetector(_ContourReference):
    """The classic recipe with none of guetteur's suppressions: grey, blur, running average of
    every pixel (cv2.accumulateWeighted), absolute difference, fixed threshold."""

    def __init__(self, config: MotionConfig, ignore_masks: list[Any]) -> None:
        super().__init__(config, ignore_masks)
        self._bg: np.ndarray | None = None

    def foreground(self, image: np.ndarray) -> np.ndarray:
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        k = self.config.blur | 1
        gray = cv2.GaussianBlur(gray, (k, k), 0).astype(np.float32)
        if self._bg is None:
            self._bg = gray.copy()
        fg = cv2.absdiff(gray, self._bg) > self.config.threshold
        cv2.accumulateWeighted(gray, self._bg, self.config.background_alpha)
        return fg


class Mog2Detector(_ContourReference):
    """OpenCV's Gaussian-mixture background subtractor (MOG2, shadow detection on, shadows not
    counted as motion), a common reference."""

    def __init__(self, config: MotionConfig, ignore_masks: list[Any]) -> None:
        super().__init__(config, ignore_masks)
        self._mog = cv2.createBackgroundSubtractorMOG2(history=100, detectShadows=True)

    def foreground(self, image: np.ndarray) -> np.ndarray:
        mask: np.ndarray = self._mog.apply(image) == 255
        return mask


DETECTORS = ("guetteur", "textbook", "mog2")


def make_detector(name: str, config: MotionConfig, ignore_masks: list[Any]) -> Any:
    if name == "guetteur":
        return MotionDetector(config, ignore_masks)
    if name == "textbook":
        return TextbookDetector(config, ignore_masks)
    if name == "mog2":
        return Mog2Detector(config, ignore_masks)
    raise ValueError(f"unknown detector {name!r}: expected one of {', '.join(DETECTORS)}")


@dataclass
class ClipScore:
    clip: str
    duration_s: float
    frames: int
    truth: list[tuple[float, float]] | None
    events: list[tuple[float, float]]
    tp: int = 0
    fp: int = 0
    fn: int = 0
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    onset_errors_s: list[float] = field(default_factory=list)
    median_onset_error_s: float | None = None
    quiet_s: float = 0.0
    false_alarms_per_hour: float | None = None
    global_change_frames: int = 0
    motion_ms_per_frame: float = 0.0
    # The same cost as CPU time of the analysing thread (steadier on a shared machine).
    motion_cpu_ms_per_frame: float = 0.0
    # Analysed frames inside truth intervals, and how many of them reported motion.
    frames_in_events: int = 0
    motion_frames_in_events: int = 0
    frame_recall: float | None = None
    # Grey-level threshold over the frames that computed one (not warm-up seeds nor global
    # changes found before the difference): median and highest.
    threshold_median: float | None = None
    threshold_max: float | None = None


def _overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def match(
    events: list[tuple[float, float]], truth: list[tuple[float, float]]
) -> tuple[int, int, int, list[float]]:
    """(tp, fp, fn, onset errors): see the module docstring for the rules."""
    matched_events = {i for i, ev in enumerate(events) if any(_overlaps(ev, tr) for tr in truth)}
    onsets: list[float] = []
    found = 0
    for tr in truth:
        hits = [ev for ev in events if _overlaps(ev, tr)]
        if hits:
            found += 1
            onsets.append(min(hits)[0] - tr[0])
    return len(matched_events), len(events) - len(matched_events), len(truth) - found, onsets


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def score_clip(
    clip: str | Path,
    truth_doc: dict[str, Any] | None,
    fps: float = 5.0,
    width: int = 320,
    motion_cfg: MotionConfig | None = None,
    events_cfg: EventsConfig | None = None,
    ignore_masks: list[Any] | None = None,
    privacy_masks: list[Any] | None = None,
    detector_name: str = "guetteur",
    on_frame: Callable[[float, MotionResult], None] | None = None,
    analytics_cfg: dict[str, Any] | None = None,
) -> ClipScore:
    ignore = list(ignore_masks or []) + list((truth_doc or {}).get("ignore_masks", []))
    privacy_list = list(privacy_masks or []) + list((truth_doc or {}).get("privacy_masks", []))
    privacy = PolygonMask(privacy_list)
    events = events_cfg or EventsConfig()
    motion = motion_cfg or MotionConfig()
    # guetteur: the camera's whole analysis (view masks, PTZ pause for a dome, night settings,
    # motion, rules, events), as the gateway runs it; the references: their detector + events.
    analytics: CameraAnalytics | None = None
    detector: Any = None
    if detector_name == "guetteur":
        camera = CameraConfig.model_validate(
            {
                "id": "bench",
                "url": "test:quiet",
                "motion": motion.model_dump(),
                "ignore_masks": ignore,
                "privacy_masks": privacy_list,
                "analytics": analytics_cfg or {},
                # a scene shot by a PTZ dome (truth "ptz": true): its moves pause analysis
                "ptz": (
                    {"protocol": "pelco-d", "serial_port": "/dev/null"}
                    if (truth_doc or {}).get("ptz")
                    else None
                ),
            }
        )
        analytics = CameraAnalytics(camera, events, clock_synced=lambda: True)
        detector = analytics.motion
    else:
        detector = make_detector(detector_name, motion, ignore)
    tracker = EventTracker("bench", events, clock_synced=lambda: True)
    timing = _Timed(detector)
    intervals: list[tuple[float, float]] = []
    open_starts: dict[str, float] = {}
    frames = 0
    global_frames = 0
    thresholds: list[float] = []
    last_t = 0.0
    truth = None
    if truth_doc is not None:
        truth = [(float(e["start"]), float(e["end"])) for e in truth_doc.get("events", [])]
    in_events = 0
    motion_in_events = 0
    for t, image, chroma in analytic_frames(clip, fps, width, with_chroma=True):
        frame = AnalyticFrame(camera="bench", image=image, pts_s=t, wallclock=t, chroma=chroma)
        if analytics is not None:
            analysis = analytics.process(frame)
            result, moving, updates = analysis.result, analysis.motion, analysis.updates
        else:
            frame = AnalyticFrame("bench", privacy.blackout(image), t, t, chroma=chroma)
            result = timing.process(frame.image)
            moving = result.motion
            updates = tracker.update(frame, result)
        frames += 1
        if truth and any(s <= t < e for s, e in truth):
            in_events += 1
            motion_in_events += bool(moving)
        global_frames += result.global_change
        if result.threshold > 0:
            thresholds.append(result.threshold)
        if on_frame is not None:
            on_frame(t, result)
        last_t = t
        for upd in updates:
            _collect(upd, open_starts, intervals)
    for upd in analytics.flush() if analytics is not None else tracker.flush():
        _collect(upd, open_starts, intervals)
    motion_s, motion_cpu_s = timing.wall_s, timing.cpu_s
    duration = last_t + 1.0 / fps if frames else 0.0
    score = ClipScore(
        clip=str(clip),
        duration_s=round(duration, 3),
        frames=frames,
        truth=truth,
        events=[(round(s, 3), round(e, 3)) for s, e in intervals],
        global_change_frames=global_frames,
        motion_ms_per_frame=round(1000 * motion_s / max(1, frames), 3),
        motion_cpu_ms_per_frame=round(1000 * motion_cpu_s / max(1, frames), 3),
        frames_in_events=in_events,
        motion_frames_in_events=motion_in_events,
        frame_recall=round(motion_in_events / in_events, 3) if in_events else None,
        threshold_median=round(statistics.median(thresholds), 1) if thresholds else None,
        threshold_max=round(max(thresholds), 1) if thresholds else None,
    )
    if truth is not None:
        score.tp, score.fp, score.fn, score.onset_errors_s = match(intervals, truth)
        score.onset_errors_s = [round(x, 3) for x in score.onset_errors_s]
        score.precision = _ratio(score.tp, score.tp + score.fp)
        score.recall = _ratio(len(truth) - score.fn, len(truth))
        if score.precision is not None and score.recall is not None:
            total = score.precision + score.recall
            score.f1 = 2 * score.precision * score.recall / total if total else 0.0
        if score.onset_errors_s:
            score.median_onset_error_s = statistics.median(score.onset_errors_s)
        busy = sum(max(0.0, min(e, duration) - max(s, 0.0)) for s, e in truth)
        score.quiet_s = round(max(0.0, duration - busy), 3)
        if score.quiet_s > 0:
            score.false_alarms_per_hour = round(score.fp * 3600.0 / score.quiet_s, 1)
    return score


def _collect(upd: Any, open_starts: dict[str, float], intervals: list[tuple[float, float]]) -> None:
    if upd.kind == "start":
        open_starts[upd.event_id] = upd.start_s
    elif upd.kind == "end":
        start = open_starts.pop(upd.event_id, upd.start_s)
        intervals.append((start, upd.end_s if upd.end_s is not None else start))


def load_settings(
    path: str | None,
) -> tuple[MotionConfig, EventsConfig, list[Any], list[Any], dict[str, Any]]:
    """(motion, events, ignore masks, privacy masks, the camera's ``analytics`` section)."""
    if path is None:
        return MotionConfig(), EventsConfig(), [], [], {}
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a YAML mapping")
    if "cameras" in raw:
        from guetteur.config import load_config

        cfg = load_config(path)
        if not cfg.cameras:
            raise ValueError(f"{path}: no camera to take motion settings from")
        cam = cfg.cameras[0]
        analytics = cam.analytics.model_dump(by_alias=True, exclude_defaults=True)
        return cam.motion, cfg.events, list(cam.ignore_masks), list(cam.privacy_masks), analytics
    return (
        MotionConfig.model_validate(raw.get("motion", {})),
        EventsConfig.model_validate(raw.get("events", {})),
        list(raw.get("ignore_masks", [])),
        list(raw.get("privacy_masks", [])),
        dict(raw.get("analytics", {})),
    )


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_table(scores: list[ClipScore]) -> None:
    head = (
        f"{'clip':<28} {'dur s':>6} {'truth':>5} {'found':>5} {'TP':>3} {'FP':>3} {'FN':>3} "
        f"{'prec':>5} {'rec':>5} {'F1':>5} {'fr.rec':>6} {'onset s':>7} {'FA/h':>6} {'glob':>4} "
        f"{'ms/fr':>5} {'cpu ms':>6} {'thr med/max':>11}"
    )
    print(head)
    print("-" * len(head))
    for s in scores:
        name = Path(s.clip).name[:28]
        print(
            f"{name:<28} {s.duration_s:>6.1f} {_fmt_int(s.truth):>5} {len(s.events):>5} "
            f"{s.tp:>3} {s.fp:>3} {s.fn:>3} {_fmt(s.precision):>5} {_fmt(s.recall):>5} "
            f"{_fmt(s.f1):>5} {_fmt(s.frame_recall):>6} {_fmt(s.median_onset_error_s):>7} "
            f"{_fmt(s.false_alarms_per_hour, 0):>6} {s.global_change_frames:>4} "
            f"{s.motion_ms_per_frame:>5.2f} {s.motion_cpu_ms_per_frame:>6.2f} "
            f"{_fmt(s.threshold_median, 0) + '/' + _fmt(s.threshold_max, 0):>11}"
        )
    scored = [s for s in scores if s.truth is not None]
    if len(scored) > 1:
        total = summarise(scored)
        print("-" * len(head))
        print(
            f"{'TOTAL':<28} {total['duration_s']:>6.1f} {total['truth']:>5} "
            f"{total['found']:>5} {total['tp']:>3} {total['fp']:>3} {total['fn']:>3} "
            f"{_fmt(total['precision']):>5} {_fmt(total['recall']):>5} {_fmt(total['f1']):>5} "
            f"{_fmt(total['frame_recall']):>6} {_fmt(total['median_onset_error_s']):>7} "
            f"{_fmt(total['false_alarms_per_hour'], 0):>6} {'':>4} "
            f"{total['motion_ms_per_frame']:>5.2f} {total['motion_cpu_ms_per_frame']:>6.2f}"
        )
    for s in scores:
        if s.truth is None:
            print(f"\n{Path(s.clip).name}: {len(s.events)} event(s) (no truth):")
            for start, end in s.events:
                print(f"  {start:8.2f} s .. {end:8.2f} s  ({end - start:.1f} s)")


def _fmt_int(truth: list[tuple[float, float]] | None) -> str:
    return "-" if truth is None else str(len(truth))


def summarise(scores: list[ClipScore]) -> dict[str, Any]:
    tp = sum(s.tp for s in scores)
    fp = sum(s.fp for s in scores)
    fn = sum(s.fn for s in scores)
    n_truth = sum(len(s.truth or []) for s in scores)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(n_truth - fn, n_truth)
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    onsets = [x for s in scores for x in s.onset_errors_s]
    quiet = sum(s.quiet_s for s in scores)
    in_events = sum(s.frames_in_events for s in scores)
    frames = sum(s.frames for s in scores)
    return {
        "duration_s": sum(s.duration_s for s in scores),
        "truth": n_truth,
        "found": sum(len(s.events) for s in scores),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "median_onset_error_s": statistics.median(onsets) if onsets else None,
        "quiet_s": quiet,
        "false_alarms_per_hour": round(fp * 3600.0 / quiet, 1) if quiet else None,
        "frame_recall": (
            round(sum(s.motion_frames_in_events for s in scores) / in_events, 3)
            if in_events
            else None
        ),
        "motion_ms_per_frame": sum(s.motion_ms_per_frame * s.frames for s in scores)
        / max(1, frames),
        "motion_cpu_ms_per_frame": sum(s.motion_cpu_ms_per_frame * s.frames for s in scores)
        / max(1, frames),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("clip", nargs="?", help="video file (MP4, MKV...)")
    parser.add_argument("truth", nargs="?", help="ground truth JSON (optional)")
    parser.add_argument("--dir", help="score every *.mp4 of this folder against its *.json")
    parser.add_argument("--fps", type=float, default=5.0, help="analytic rate (default 5)")
    parser.add_argument("--width", type=int, default=320, help="analytic width (default 320)")
    parser.add_argument("--config", help="YAML with motion/events settings (see module doc)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--frames",
        action="store_true",
        help="print one line per analysed frame first: threshold, changed ratio, gain, global "
        "change, motion boxes (to stderr with --json)",
    )
    parser.add_argument(
        "--detector",
        choices=[*DETECTORS, "all"],
        default="guetteur",
        help="guetteur's detector (default), a reference (textbook running average, OpenCV "
        "MOG2), or all three in one run",
    )
    args = parser.parse_args(argv)
    if not args.dir and not args.clip:
        parser.error("give CLIP [TRUTH.json] or --dir DIR")
    try:
        motion_cfg, events_cfg, ignore, privacy, analytics_cfg = load_settings(args.config)
        jobs: list[tuple[Path, dict[str, Any] | None]] = []
        if args.dir:
            for clip in sorted(Path(args.dir).glob("*.mp4")):
                truth_path = clip.with_suffix(".json")
                jobs.append((clip, _load_truth(truth_path) if truth_path.exists() else None))
            if not jobs:
                raise ValueError(f"{args.dir}: no .mp4 clip found")
        else:
            jobs.append((Path(args.clip), _load_truth(Path(args.truth)) if args.truth else None))
        names = list(DETECTORS) if args.detector == "all" else [args.detector]
        runs: dict[str, list[ClipScore]] = {name: [] for name in names}
        for name in names:
            for clip, truth in jobs:
                on_frame = None
                if args.frames:
                    stream = sys.stderr if args.json else sys.stdout
                    print(f"\n== {name}: {clip}, per analysed frame", file=stream)
                    on_frame = _frame_printer(stream)
                runs[name].append(
                    score_clip(
                        clip,
                        truth,
                        args.fps,
                        args.width,
                        motion_cfg,
                        events_cfg,
                        ignore,
                        privacy,
                        name,
                        on_frame,
                        analytics_cfg,
                    )
                )
    except (OSError, ValueError, av.FFmpegError) as exc:
        print(f"motion_accuracy: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out: dict[str, Any] = {}
        for name, scores in runs.items():
            doc: dict[str, Any] = {"clips": [asdict(s) for s in scores]}
            scored = [s for s in scores if s.truth is not None]
            if scored:
                doc["total"] = summarise(scored)
            out[name] = doc
        print(json.dumps(out[names[0]] if len(names) == 1 else out, indent=2))
        return 0
    for name, scores in runs.items():
        print(
            f"\n== {name}: analytic {args.fps:g} fps, {args.width} px wide; "
            f"settings: {args.config or 'defaults'}"
        )
        print_table(scores)
    if len(runs) > 1 and any(s.truth is not None for s in runs[names[0]]):
        print("\n== comparison (all clips with truth)")
        print(
            f"{'detector':<10} {'TP':>4} {'FP':>4} {'FN':>4} {'prec':>5} {'rec':>5} {'F1':>5} "
            f"{'fr.rec':>6} {'onset s':>7} {'FA/h':>6} {'ms/fr':>6} {'cpu ms':>6}"
        )
        for name, scores in runs.items():
            scored = [s for s in scores if s.truth is not None]
            if not scored:
                continue
            t = summarise(scored)
            print(
                f"{name:<10} {t['tp']:>4} {t['fp']:>4} {t['fn']:>4} {_fmt(t['precision']):>5} "
                f"{_fmt(t['recall']):>5} {_fmt(t['f1']):>5} {_fmt(t['frame_recall']):>6} "
                f"{_fmt(t['median_onset_error_s']):>7} {_fmt(t['false_alarms_per_hour'], 0):>6} "
                f"{t['motion_ms_per_frame']:>6.3f} {t['motion_cpu_ms_per_frame']:>6.3f}"
            )
    return 0


def _frame_printer(stream: Any) -> Callable[[float, MotionResult], None]:
    def show(t: float, r: MotionResult) -> None:
        state = "warm-up" if r.warming_up else "GLOBAL" if r.global_change else ""
        state = state or ("motion" if r.motion else "-")
        boxes = " ".join(f"[{b.x:.2f},{b.y:.2f},{b.w:.2f},{b.h:.2f}]" for b in r.boxes[:4]) + (
            f" +{len(r.boxes) - 4}" if len(r.boxes) > 4 else ""
        )
        print(
            f"{t:7.2f} s  threshold {r.threshold:5.1f}  changed {r.changed_ratio:5.3f}  "
            f"gain {r.gain:4.2f}  {state:<7} {boxes}",
            file=stream,
        )

    return show


def _load_truth(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("events", []), list):
        raise ValueError(f'{path}: expected {{"events": [{{"start": S, "end": E}}, ...]}}')
    for i, ev in enumerate(doc.get("events", [])):
        if not isinstance(ev, dict) or not {"start", "end"} <= set(ev):
            raise ValueError(f"{path}: events[{i}]: expected {{'start': S, 'end': E}} in seconds")
        if float(ev["end"]) < float(ev["start"]):
            raise ValueError(f"{path}: events[{i}]: end is before start")
    return doc


if __name__ == "__main__":
    sys.exit(main())
