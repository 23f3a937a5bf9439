#!/usr/bin/env python3
"""Decode + motion throughput against the raw decode limit, for 720p and 1080p H.264.

    bench/decode_bench.py [--seconds 10] [--fps 25] [--repeat 3] [--sizes 1280x720 1920x1080]
                          [--clip FILE ...] [--json]

For each clip (generated with ffmpeg testsrc2: 25 fps, GOP 2 s, no B-frames, like a camera; or
given with --clip) it measures, single-threaded (PyAV ``thread_count=1``):

- raw decode fps: decode every frame, no conversion (the physical limit of one core);
- pipeline fps: the same decode plus what a camera source and the motion detector do per camera
  at default settings: keep 5 fps (``guetteur.sources.decode.FrameSampler``), read the luma
  plane of those frames and scale it to 320 px (``frame_to_luma``: no colour conversion),
  privacy blackout and ``MotionDetector.process`` on them;
- their ratio (1.0 = analytics cost nothing beyond decoding), by wall time and by CPU time
  (the CPU ratio is the steadier one on a shared machine), and the equivalent number of 25 fps
  cameras one core could serve;
- the motion detector's own time per analysed frame (ms) and the conversion's;
- on the same analysed frames, in the same run, the time per frame of the two references of
  ``bench/motion_accuracy.py``: OpenCV's MOG2 and the textbook running average.

Best of ``--repeat`` runs (the machine may be shared); CPU time is printed beside wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
import cv2

from guetteur.analytics.masks import PolygonMask
from guetteur.analytics.motion import MotionDetector
from guetteur.config import MotionConfig
from guetteur.sources.decode import FrameSampler, analytic_size, frame_to_luma


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    frames: int
    analysed: int = 0
    convert_s: float = 0.0
    motion_s: float = 0.0


@dataclass
class Row:
    clip: str
    size: str
    frames: int
    raw_fps: float
    raw_cpu_fps: float
    pipeline_fps: float
    pipeline_cpu_fps: float
    ratio: float
    ratio_cpu: float
    cameras_25fps_per_core: float
    analysed_frames: int
    convert_ms: float
    motion_ms: float
    motion_cpu_ms: float = 0.0
    mog2_ms: float = 0.0
    textbook_ms: float = 0.0


def make_clip(path: Path, width: int, height: int, seconds: float, fps: float) -> None:
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg not found: install it (apt-get install ffmpeg) or pass --clip")
    gop = round(2.0 * fps)
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-bf", "0",
        "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
        str(path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)


def _open(path: Path) -> tuple[Any, Any]:
    container = av.open(str(path))
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    stream.thread_type = "SLICE"
    return container, stream


def raw_decode(path: Path) -> Run:
    container, stream = _open(path)
    frames = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for _frame in container.decode(stream):
        frames += 1
    run = Run(time.perf_counter() - w0, time.process_time() - c0, frames)
    container.close()
    return run


def pipeline(path: Path, analytic_fps: float, analytic_width: int) -> Run:
    container, stream = _open(path)
    detector = MotionDetector(MotionConfig())
    privacy = PolygonMask()  # no privacy mask configured: the call is what a camera pays
    sampler = FrameSampler(analytic_fps)
    size: tuple[int, int] | None = None
    run = Run(0.0, 0.0, 0)
    w0, c0 = time.perf_counter(), time.process_time()
    for frame in container.decode(stream):
        run.frames += 1
        if frame.pts is None or not sampler.take(float(frame.pts * frame.time_base)):
            continue
        if size is None:
            size = analytic_size(frame.width, frame.height, analytic_width)
        t0 = time.perf_counter()
        image = privacy.blackout(frame_to_luma(frame, size))
        t1 = time.perf_counter()
        detector.process(image)
        run.motion_s += time.perf_counter() - t1
        run.convert_s += t1 - t0
        run.analysed += 1
    run.wall_s = time.perf_counter() - w0
    run.cpu_s = time.process_time() - c0
    container.close()
    return run


def references(
    path: Path, analytic_fps: float, analytic_width: int, repeat: int
) -> tuple[float, float, float]:
    """(guetteur CPU ms, MOG2 ms, textbook ms) per analysed frame, on the same luma frames."""
    import importlib.util

    # the references of the accuracy bench, loaded from its file (bench/ is not a package)
    spec = importlib.util.spec_from_file_location(
        "motion_accuracy", Path(__file__).resolve().parent / "motion_accuracy.py"
    )
    assert spec is not None and spec.loader is not None
    accuracy: Any = importlib.util.module_from_spec(spec)
    sys.modules["motion_accuracy"] = accuracy  # its dataclasses look their module up
    spec.loader.exec_module(accuracy)

    container, stream = _open(path)
    sampler = FrameSampler(analytic_fps)
    images = []
    for frame in container.decode(stream):
        if frame.pts is not None and sampler.take(float(frame.pts * frame.time_base)):
            size = analytic_size(frame.width, frame.height, analytic_width)
            images.append(frame_to_luma(frame, size))
    container.close()
    cfg = MotionConfig()
    out = []
    makers: list[Any] = [
        lambda: MotionDetector(cfg),
        lambda: accuracy.Mog2Detector(cfg, []),
        lambda: accuracy.TextbookDetector(cfg, []),
    ]
    for make in makers:
        best = float("inf")
        for _ in range(repeat):
            det = make()
            c0 = time.thread_time()
            for image in images:
                det.process(image)
            best = min(best, (time.thread_time() - c0) / max(1, len(images)))
        out.append(round(1000 * best, 3))
    return out[0], out[1], out[2]


def bench_clip(path: Path, repeat: int, analytic_fps: float, analytic_width: int) -> Row:
    raws = [raw_decode(path) for _ in range(repeat)]
    pipes = [pipeline(path, analytic_fps, analytic_width) for _ in range(repeat)]
    raw = min(raws, key=lambda r: r.wall_s)
    pipe = min(pipes, key=lambda r: r.wall_s)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        size = f"{s.codec_context.width}x{s.codec_context.height}"
    raw_fps = raw.frames / raw.wall_s
    pipe_fps = pipe.frames / pipe.wall_s
    raw_cpu_fps = raw.frames / max(1e-9, min(r.cpu_s for r in raws))
    pipe_cpu_fps = pipe.frames / max(1e-9, min(p.cpu_s for p in pipes))
    return Row(
        clip=path.name,
        size=size,
        frames=raw.frames,
        raw_fps=round(raw_fps, 1),
        raw_cpu_fps=round(raw_cpu_fps, 1),
        pipeline_fps=round(pipe_fps, 1),
        pipeline_cpu_fps=round(pipe_cpu_fps, 1),
        ratio=round(pipe_fps / raw_fps, 3),
        ratio_cpu=round(pipe_cpu_fps / raw_cpu_fps, 3),
        cameras_25fps_per_core=round(pipe_fps / 25.0, 1),
        analysed_frames=pipe.analysed,
        convert_ms=round(1000 * min(p.convert_s / max(1, p.analysed) for p in pipes), 3),
        motion_ms=round(1000 * min(p.motion_s / max(1, p.analysed) for p in pipes), 3),
        **dict(
            zip(
                ("motion_cpu_ms", "mog2_ms", "textbook_ms"),
                references(path, analytic_fps, analytic_width, repeat),
                strict=True,
            )
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Decode + motion throughput vs raw decode")
    parser.add_argument("--seconds", type=float, default=10.0, help="generated clip length")
    parser.add_argument("--fps", type=float, default=25.0, help="generated clip frame rate")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument("--sizes", nargs="*", default=["1280x720", "1920x1080"])
    parser.add_argument("--clip", nargs="*", default=[], help="measure these files instead")
    parser.add_argument("--analytic-fps", type=float, default=5.0)
    parser.add_argument("--analytic-width", type=int, default=320)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # one core, like one camera's share of a Pi; OpenCV would fan out
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="guetteur-decode-bench-") as tmp:
        clips = [Path(c) for c in args.clip]
        if not clips:
            for size in args.sizes:
                try:
                    w, h = (int(x) for x in size.lower().split("x"))
                except ValueError:
                    parser.error(f"--sizes: expected WIDTHxHEIGHT, got {size!r}")
                path = Path(tmp) / f"testsrc2-{w}x{h}.mp4"
                make_clip(path, w, h, args.seconds, args.fps)
                clips.append(path)
        for clip in clips:
            rows.append(bench_clip(clip, args.repeat, args.analytic_fps, args.analytic_width))
    machine = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "python": platform.python_version(),
        "pyav": av.__version__,
        "ffmpeg": ".".join(str(x) for x in av.library_versions.get("libavcodec", ())),
    }
    if args.json:
        print(json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=2))
        return 0
    print(
        f"{machine['date']}  {machine['processor']} ({machine['machine']}), Python "
        f"{machine['python']}, PyAV {machine['pyav']} (libavcodec {machine['ffmpeg']})"
    )
    print(
        f"single thread; pipeline = decode + {args.analytic_fps:g} fps sampling + luma plane "
        f"scaled to {args.analytic_width} px + motion (defaults); best of {args.repeat}; "
        "cpu/MOG2/textbook ms: thread CPU per analysed frame, same frames"
    )
    head = (
        f"{'clip':<24} {'size':>9} {'raw fps':>8} {'(cpu)':>7} {'pipe fps':>8} {'(cpu)':>7} "
        f"{'ratio':>6} {'(cpu)':>6} {'cams@25':>7} {'conv ms':>7} {'motion ms':>9} "
        f"{'cpu ms':>6} {'MOG2 ms':>7} {'textbk ms':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.clip[:24]:<24} {r.size:>9} {r.raw_fps:>8.1f} {r.raw_cpu_fps:>7.1f} "
            f"{r.pipeline_fps:>8.1f} {r.pipeline_cpu_fps:>7.1f} {r.ratio:>6.3f} {r.ratio_cpu:>6.3f} "
            f"{r.cameras_25fps_per_core:>7.1f} {r.convert_ms:>7.3f} {r.motion_ms:>9.3f} "
            f"{r.motion_cpu_ms:>6.3f} {r.mog2_ms:>7.3f} {r.textbook_ms:>9.3f}"
        )
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
