"""``guetteur detect FILE``: run the configured detector on an image or a video file (gated by
motion, as the agent does), and ``check_detection``, the one-sentence verdict for ``doctor``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from guetteur.analytics.detection.manifest import DetectorError
from guetteur.analytics.detection.regions import Detection, filter_detections
from guetteur.analytics.detection.runtime import load_detector
from guetteur.config import DetectFilter, DetectionConfig
from guetteur.media.types import Box


def check_detection(config: DetectionConfig) -> str:
    """For ``guetteur doctor``: one sentence on what detection will do at start. Raises
    DetectorError (code + sentence) when the configured model cannot be used."""
    detector = load_detector(config)
    if detector is None:
        return "no detection model configured: cameras run motion-only"
    detector.detect(
        np.zeros((detector.input_spec.height, detector.input_spec.width, 3), np.uint8), None
    )
    ms = detector.inference_s / max(detector.inferences, 1) * 1e3
    return f"object detector {detector.describe()} loaded and ran ({ms:.0f} ms per inference)"


def add_arguments(parser: Any) -> None:
    """``guetteur detect FILE``: run the configured detector on an image or a video file."""
    parser.add_argument("file", help="an image (JPEG/PNG) or a video file PyAV can read")
    parser.add_argument("--config", help="guetteur YAML: its detection section and camera filter")
    parser.add_argument("--camera", help="camera id in --config whose object filter applies")
    parser.add_argument("--manifest", help="model manifest (models/*.yaml); overrides --config")
    parser.add_argument("--model", help="TFLite model file; overrides the manifest's")
    parser.add_argument("--labels", help="labels file; overrides the manifest's")
    parser.add_argument("--threads", type=int, help="inference threads")
    parser.add_argument("--fps", type=float, default=5.0, help="frames analysed per second (video)")
    parser.add_argument(
        "--whole-frame",
        action="store_true",
        help="analyse every sampled frame whole (default: only around motion, as the agent does)",
    )
    parser.add_argument("--all-labels", action="store_true", help="print detections of any label")


def run(args: Any) -> int:
    import av  # only this command reads files

    from guetteur.analytics.motion import MotionDetector
    from guetteur.config import ConfigError, load_config

    flt = DetectFilter()
    detection = DetectionConfig()
    try:
        if args.config:
            cfg = load_config(args.config)
            detection = cfg.detection
            cams = [c for c in cfg.cameras if args.camera in (None, c.id)]
            if args.camera and not cams:
                print(f"detect: camera {args.camera!r} is not in {args.config}", file=sys.stderr)
                return 2
            if cams and cams[0].detect is not None:
                flt = cams[0].detect
    except ConfigError as exc:
        print(f"detect: {exc.report()}", file=sys.stderr)
        return 2
    overrides = {
        k: getattr(args, k)
        for k in ("manifest", "model", "labels", "threads")
        if getattr(args, k) is not None
    }
    if args.all_labels:
        flt = flt.model_copy(update={"labels": []})
    try:
        detector = load_detector(detection.model_copy(update=overrides))
    except DetectorError as exc:
        print(f"detect: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    if detector is None:
        print("detect: no model given (--manifest/--model or --config)", file=sys.stderr)
        return 2

    def show(t: float | None, dets: list[Detection]) -> None:
        when = "" if t is None else f"{t:8.2f}s "
        for d in filter_detections(dets, flt):
            print(f"{when}{d.label:<14s} {d.score:.2f} box={d.box.as_list()}")

    image = (
        cv2.imread(args.file)
        if Path(args.file).suffix.lower() in (".jpg", ".jpeg", ".png")
        else None
    )
    if image is not None:
        show(None, detector.detect(image, None))
        return 0
    try:
        container = av.open(args.file)
    except (OSError, av.error.FFmpegError) as exc:
        print(f"detect: cannot open {args.file}: {exc}", file=sys.stderr)
        return 2
    motion = MotionDetector()
    analysed = reached = 0
    next_t = 0.0
    with container:
        for frame in container.decode(video=0):
            t = float(frame.pts * frame.time_base) if frame.pts is not None else next_t
            if t + 1e-6 < next_t:
                continue
            next_t = t + 1.0 / args.fps
            img = frame.to_ndarray(format="bgr24")
            analysed += 1
            if args.whole_frame:
                boxes: list[Box] | None = None
            else:
                h, w = img.shape[:2]
                small = cv2.resize(
                    img, (320, max(1, round(h * 320 / w))), interpolation=cv2.INTER_AREA
                )
                result = motion.process(small)
                if not result.motion:
                    continue
                boxes = result.boxes
            reached += 1
            show(t, detector.detect(img, boxes))
    ms = detector.inference_s / max(detector.inferences, 1) * 1e3
    print(
        f"{analysed} frames analysed, {reached} reached the detector, "
        f"{detector.inferences} inferences of {ms:.1f} ms",
        file=sys.stderr,
    )
    return 0
