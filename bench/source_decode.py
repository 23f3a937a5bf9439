#!/usr/bin/env python3
"""What decoding for analytics costs a camera source, per strategy, against the physical limits.

    bench/source_decode.py [--seconds 10] [--sizes 1280x720 1920x1080] [--repeat 3]

For each size, an ffmpeg testsrc2 clip (25 fps, keyframe every 2 s, no B-frames: like a camera)
is read with PyAV, single-threaded, in these ways:

- demux only: the packets a recorder gets, no decoding (what the main stream costs when the
  camera has a sub-stream for analytics);
- decode all, convert none: the decode limit;
- naive: decode all and convert every frame at full size to BGR, then cv2.resize to 320 px;
- 5 fps BGR: decode all, convert only the frames the 5 fps sampler keeps, scaled and converted
  to BGR in one swscale pass (``sources.decode.frame_to_bgr``) — the default until issue 16;
- guetteur at 5 fps: the same frames, luma plane only, scaled to grey in one swscale pass
  (``sources.decode.frame_to_luma``) — the default: motion needs no colour;
- guetteur at 0.5 fps: keyframes only (``DecodePlan.keyframes_only``): P-frames are not even
  handed to the decoder;
- on a second clip with 2 B-frames between references (some cameras, most files): decode all
  vs. guetteur 5 fps with ``skip_frame=NONREF`` (the decoder drops the B-frames).

It prints CPU seconds per second of video (= fraction of one core for one camera) and each
strategy's cost as a ratio of the decode limit. Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
import cv2

from guetteur.sources.decode import (
    DecodePlan,
    FrameSampler,
    analytic_size,
    frame_to_bgr,
    frame_to_luma,
)


def make_clip(path: Path, size: str, seconds: float, bframes: int = 0) -> None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        sys.exit("ffmpeg is not installed: run `make setup`")
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
         "-g", "50", "-keyint_min", "50", "-bf", str(bframes), "-x264-params", "scenecut=0", str(path)],
        check=True,
    )  # fmt: skip


def run(path: Path, body: Callable[[Any, Any, Any], int]) -> tuple[float, int]:
    """CPU seconds spent and frames converted by ``body(container, stream, codec_context)``."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        cc: Any = stream.codec_context
        cc.thread_count = 1
        cc.thread_type = "NONE"
        t0 = time.process_time()
        converted = body(container, stream, cc)
        return time.process_time() - t0, converted


def demux_only(container: Any, stream: Any, cc: Any) -> int:
    for packet in container.demux(stream):
        bytes(packet)  # the sources copy each packet once into EncodedPacket.data
    return 0


def decode_all(container: Any, stream: Any, cc: Any) -> int:
    for packet in container.demux(stream):
        cc.decode(packet)
    return 0


def naive(container: Any, stream: Any, cc: Any) -> int:
    size = analytic_size(stream.width, stream.height, 320)
    n = 0
    for packet in container.demux(stream):
        for frame in cc.decode(packet):
            cv2.resize(frame.to_ndarray(format="bgr24"), size, interpolation=cv2.INTER_AREA)
            n += 1
    return n


def sampled(fps: float, nonref: bool = False, luma: bool = True) -> Callable[[Any, Any, Any], int]:
    convert = frame_to_luma if luma else frame_to_bgr

    def body(container: Any, stream: Any, cc: Any) -> int:
        if nonref and DecodePlan(fps).skip_nonref(25.0):
            cc.skip_frame = "NONREF"
        size = analytic_size(stream.width, stream.height, 320)
        sampler = FrameSampler(fps)
        plan = DecodePlan(fps)
        gop_s = 2.0  # known for this clip; the sources measure it from the key flags
        n = 0
        tb = float(stream.time_base)
        for packet in container.demux(stream):
            if packet.size and not packet.is_keyframe and plan.keyframes_only(gop_s):
                continue
            for frame in cc.decode(packet):
                if sampler.take(frame.pts * tb):
                    convert(frame, size)
                    n += 1
        return n

    return body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sizes", nargs="+", default=["1280x720", "1920x1080"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"# {datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} "
          f"{platform.processor() or platform.platform()} PyAV {av.__version__}")  # fmt: skip
    strategies: list[tuple[str, Callable[[Any, Any, Any], int]]] = [
        ("demux only (packets)", demux_only),
        ("decode all, convert none", decode_all),
        ("naive: convert all + resize", naive),
        ("5 fps, BGR (before issue 16)", sampled(5.0, luma=False)),
        ("guetteur 5 fps, luma (default)", sampled(5.0)),
        ("guetteur 0.5 fps (keyframes)", sampled(0.5)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            clip = Path(tmp) / f"{size}.mp4"
            make_clip(clip, size, args.seconds)
            print(f"\n{size} 25 fps, GOP 2 s, {args.seconds:g} s; CPU s per s of video "
                  "(fraction of one core per camera), ratio to decode-all")  # fmt: skip
            limit = None
            for name, body in strategies:
                best = min((run(clip, body) for _ in range(args.repeat)), key=lambda r: r[0])
                per_s = best[0] / args.seconds
                if name.startswith("decode all"):
                    limit = per_s
                ratio = f"{per_s / limit:5.2f}" if limit else "  -  "
                print(f"  {name:30s} {per_s:7.4f} core  ratio {ratio}  "
                      f"converted {best[1]:4d} frames")  # fmt: skip
            bclip = Path(tmp) / f"{size}-b.mp4"
            make_clip(bclip, size, args.seconds, bframes=2)
            print("  with 2 B-frames between references:")
            blimit = min(run(bclip, decode_all)[0] for _ in range(args.repeat)) / args.seconds
            print(f"  {'decode all, convert none':30s} {blimit:7.4f} core  ratio  1.00")
            for name, body in [
                ("guetteur 5 fps, no skip", sampled(5.0)),
                ("guetteur 5 fps, NONREF skip", sampled(5.0, nonref=True)),
            ]:
                best = min((run(bclip, body) for _ in range(args.repeat)), key=lambda r: r[0])
                per_s = best[0] / args.seconds
                print(f"  {name:30s} {per_s:7.4f} core  ratio {per_s / blimit:5.2f}  "
                      f"converted {best[1]:4d} frames")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
