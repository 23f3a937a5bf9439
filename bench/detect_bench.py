#!/usr/bin/env python3
"""Object-detection benchmark: inference time, detections/s, and what motion gating saves.

    bench/detect_bench.py [--shared ../shared] [--repeat 40] [--threads 1 2] [--fps 5]

1. Reference measured in the same run: one-thread PyAV decode rate of the street clip (the
   ingest side's physical limit on this CPU).
2. Per shared model (ai-edge-litert, ``--threads``): time of one inference (``invoke`` only) and
   of one whole-frame ``detect`` (resize + normalise + invoke + decode), median and p90 over
   ``--repeat`` runs on a real 640x272 frame; inferences/s; ratio to the 100 ms goal; and
   detections/s over the street clip analysed at ``--fps`` (objects kept by the default camera
   filter per second of detector time).
3. Motion gating: the street clip and the synthetic scenes (``guetteur.dev.synthetic``) analysed at
   ``--fps`` / 320 px wide by ``guetteur.analytics.motion.MotionDetector``; the share of analysed frames that
   reach the detector, the inferences they cost (crops) and the share of pixels the model sees;
   on the street clip, how many of the frames where the whole-frame detector finds a person or a
   car the gated path still finds them in.
4. Capacity: cameras one core can serve at ``--fps`` with the measured gating share.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np

from guetteur.analytics.detection.regions import filter_detections, plan_regions
from guetteur.analytics.detection.runtime import Detector, load_detector
from guetteur.analytics.motion import MotionDetector
from guetteur.config import DetectFilter, DetectionConfig
from guetteur.dev.synthetic import SCENARIO_NAMES, scenario

REPO = Path(__file__).resolve().parents[1]
MODELS = ("coco-ssd-mobilenet-v2-fpnlite-320", "coco-ssd-mobilenet-v1-quant-300")
CLIP = "media/street-montage-bikes-640x272.mp4"
GOAL_S = 0.100
ANALYTIC_WIDTH = 320


def load(shared: Path, name: str, threads: int) -> Detector:
    det = load_detector(
        DetectionConfig(
            manifest=str(REPO / "models" / f"{name}.yaml"),
            model=str(shared / "models" / name / "model.tflite"),
            threads=threads,
        )
    )
    assert det is not None
    return det


def decode_rate(path: Path) -> tuple[float, list[np.ndarray], float]:
    """One-thread decode fps (no conversion), then the frames as BGR, and the clip's fps."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "NONE"
        stream.codec_context.thread_count = 1
        t0 = time.perf_counter()
        n = sum(1 for _ in c.decode(stream))
        elapsed = time.perf_counter() - t0
    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate or 25)
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    return n / elapsed, frames, fps


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def time_model(det: Detector, frame: np.ndarray, repeat: int) -> tuple[list[float], list[float]]:
    for _ in range(3):
        det.detect(frame, None)
    invoke, whole = [], []
    for _ in range(repeat):
        before = det.inference_s
        t0 = time.perf_counter()
        det.detect(frame, None)
        whole.append(time.perf_counter() - t0)
        invoke.append(det.inference_s - before)
    return invoke, whole


def thinned(
    frames: list[np.ndarray], clip_fps: float, fps: float
) -> list[tuple[float, np.ndarray]]:
    step = max(1, round(clip_fps / fps))
    return [(i / clip_fps, frames[i]) for i in range(0, len(frames), step)]


def analytic(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    size = (ANALYTIC_WIDTH, round(h * ANALYTIC_WIDTH / w))
    resized: np.ndarray = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return resized


def gating(
    det: Detector, frames: list[tuple[float, np.ndarray]], masks: list[list[tuple[float, float]]]
) -> dict[str, float]:
    """Motion on 320-px analytic frames (with the scene's ignore masks, as a camera configured
    for it would have); the detector on the full frame around the motion."""
    motion = MotionDetector(ignore_masks=masks)
    side = max(det.input_size)
    reached = inferences = 0
    pixels = 0.0
    spent = 0.0
    for _, img in frames:
        result = motion.process(analytic(img))
        if not result.motion:
            continue
        reached += 1
        h, w = img.shape[:2]
        regions = plan_regions(w, h, result.boxes, side, det.config.crop_padding,
                               det.config.full_frame_ratio)  # fmt: skip
        inferences += len(regions)
        pixels += sum(r.area for r in regions) / (w * h)
        t0 = time.perf_counter()
        det.detect(img, result.boxes)
        spent += time.perf_counter() - t0
    n = len(frames)
    return {
        "frames": n,
        "reached": reached,
        "share": reached / n,
        "inferences_per_frame": inferences / n,
        "pixel_share": pixels / n,
        "detector_s": spent,
    }


def street_recall(det: Detector, frames: list[tuple[float, np.ndarray]]) -> str:
    """Frames where the whole-frame detector finds a person/car; how many the gated path keeps."""
    motion = MotionDetector()
    flt = DetectFilter(labels=["person", "car"])
    whole_hits = gated_hits = 0
    for _, img in frames:
        result = motion.process(analytic(img))
        whole = {d.label for d in filter_detections(det.detect(img, None), flt)}
        gated = (
            {d.label for d in filter_detections(det.detect(img, result.boxes), flt)}
            if result.motion
            else set()
        )
        whole_hits += len(whole)
        gated_hits += len(whole & gated)
    ratio = gated_hits / whole_hits if whole_hits else float("nan")
    return f"{gated_hits}/{whole_hits} (frame, label) hits kept by gating = {ratio:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--fps", type=float, default=5.0, help="analytic frame rate")
    args = parser.parse_args()

    decode_fps, frames, clip_fps = decode_rate(args.shared / CLIP)
    print(f"reference: 1-thread decode of the 640x272 street clip: {decode_fps:.0f} fps")
    frame = frames[round(2.0 * clip_fps)]
    street = thinned(frames, clip_fps, args.fps)

    print("\n== inference (whole 640x272 frame; ratio = time / 100 ms goal) ==")
    one_thread: dict[str, float] = {}
    for name in MODELS:
        for threads in args.threads:
            det = load(args.shared, name, threads)
            invoke, whole = time_model(det, frame, args.repeat)
            med, p90 = statistics.median(invoke), pct(invoke, 0.9)
            wmed = statistics.median(whole)
            if threads == 1:
                one_thread[name] = wmed
            t0 = time.perf_counter()
            kept = sum(
                len(filter_detections(det.detect(img, None), DetectFilter())) for _, img in street
            )
            dps = kept / (time.perf_counter() - t0)
            print(
                f"{name} threads={threads}: invoke median {med * 1e3:.1f} ms (p90 {p90 * 1e3:.1f}),"
                f" detect() {wmed * 1e3:.1f} ms = {wmed / GOAL_S:.2f} x goal;"
                f" {1 / wmed:.1f} inferences/s = {1 / wmed / decode_fps:.3f} x decode rate;"
                f" {dps:.1f} detections/s kept by the default filter"
            )

    print(f"\n== motion gating at {args.fps:g} fps, motion on {ANALYTIC_WIDTH}-px frames ==")
    det = load(args.shared, MODELS[0], 1)
    rows: list[tuple[str, list[tuple[float, np.ndarray]], list[list[tuple[float, float]]]]] = [
        ("street clip (real)", street, [])
    ]
    for name in SCENARIO_NAMES:
        sc = scenario(name, width=640, height=360, fps=args.fps)
        clip = [(sc.time_of(i), sc.render(i)) for i in range(sc.frame_count)]
        rows.append((f"synthetic {name}", clip, sc.ignore_masks))
    total_frames = total_reached = 0
    total_inferences = 0.0
    synthetic_frames = synthetic_reached = 0
    for label, clip, masks in rows:
        g = gating(det, clip, masks)
        total_frames += int(g["frames"])
        total_reached += int(g["reached"])
        total_inferences += g["inferences_per_frame"] * g["frames"]
        if label.startswith("synthetic"):
            synthetic_frames += int(g["frames"])
            synthetic_reached += int(g["reached"])
        print(
            f"{label:24s} {int(g['reached']):3d}/{int(g['frames']):3d} frames reach the detector"
            f" = {g['share']:.2f}; {g['inferences_per_frame']:.2f} inferences per analysed frame;"
            f" model sees {g['pixel_share']:.2f} of the pixels"
        )
    share_all = total_reached / total_frames
    share_syn = synthetic_reached / synthetic_frames
    print(
        f"all clips: {total_reached}/{total_frames} = {share_all:.2f} of analysed frames reach the"
        f" detector ({total_inferences / total_frames:.2f} inferences per analysed frame);"
        f" synthetic scenes only: {share_syn:.2f}"
    )
    print("street clip, fpnlite-320:", street_recall(det, street))

    print(f"\n== capacity of one core at {args.fps:g} fps per camera ==")
    per_frame = total_inferences / total_frames
    for name, t in one_thread.items():
        ungated = 1 / (t * args.fps)
        gated = 1 / (t * args.fps * max(per_frame, 1e-9))
        print(
            f"{name}: {ungated:.1f} cameras without gating, {gated:.1f} with gating"
            f" ({gated / ungated:.1f} x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
