"""``test:NAME?key=value&...`` — a generated camera that needs no file and no network.

Frames come from ``guetteur.dev.synthetic`` (scripted scenes with known truth: ``walk``, ``car``,
``lighting``, ``night``, ``foliage``, ``quiet``), are encoded to real H.264 with libx264
(ultrafast, zerolatency, no B-frames, SPS/PPS before every keyframe, like an IP camera) and
handed on in real time, looping. Analytic frames are decoded back from those packets, so the
analytics see compression artefacts like with a real camera.

Query keys for the source: ``width`` (640), ``height`` (360), ``fps`` (25), ``gop`` (keyframe
interval in seconds, 2), ``crf`` (23). Every other key goes to the scenario (``start``, ``end``,
``duration``, ``seed``, ``walker``...). Example: ``test:walk?start=5&end=8&duration=20``.

The first pass is rendered and encoded; its packets (up to 64 MB) are kept and replayed on later
passes, so a looping test camera costs about one decode afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import av

from guetteur.config import CameraConfig
from guetteur.media.bitstream import annexb_parameter_sets
from guetteur.media.types import AnalyticFrame, EncodedPacket
from guetteur.sources.base import Backoff, SourceSink
from guetteur.sources.decode import (
    DecodePlan,
    FrameSampler,
    KeyframeClock,
    StreamInfoCache,
    analytic_size,
    chroma_level,
    frame_to_luma,
    renderer,
)
from guetteur.sources.status import FAILED, STARTING, STOPPED, STREAMING, StatusReporter, with_retry

log = logging.getLogger("guetteur.sources")

TIME_BASE = Fraction(1, 90000)  # RTP video clock, like an RTSP camera
_SOURCE_KEYS = {"width", "height", "fps", "gop", "crf"}
_CACHE_LIMIT = 64 << 20


@dataclass(frozen=True)
class TestPatternSpec:
    """A parsed ``test:`` URL."""

    scenario: str
    width: int
    height: int
    fps: float
    gop_s: float
    crf: int
    params: dict[str, float]


def parse_test_url(url: str) -> TestPatternSpec:
    """Parse ``test:NAME?k=v&...``; raises ValueError with a sentence naming the bad key."""
    rest = url.removeprefix("test:").lstrip("/")
    parts = urlsplit("x:" + rest)
    name = parts.path or "walk"
    values: dict[str, float] = {}
    for key, raw in parse_qsl(parts.query, keep_blank_values=True):
        try:
            values[key] = float(raw)
        except ValueError:
            raise ValueError(f"test camera parameter {key}={raw!r}: expected a number") from None
    width = int(values.pop("width", 640))
    height = int(values.pop("height", 360))
    fps = values.pop("fps", 25.0)
    gop_s = values.pop("gop", 2.0)
    crf = int(values.pop("crf", 23))
    if gop_s <= 0:
        raise ValueError(f"test camera parameter gop={gop_s}: expected seconds > 0")
    if not 0 <= crf <= 51:
        raise ValueError(f"test camera parameter crf={crf}: expected 0..51")
    return TestPatternSpec(name, width, height, fps, gop_s, crf, values)


class _Encoder:
    """libx264 configured like a camera; returns the encoded access units of one frame."""

    def __init__(self, spec: TestPatternSpec) -> None:
        gop = max(1, round(spec.gop_s * spec.fps))
        cc: Any = av.CodecContext.create("libx264", "w")
        cc.width = spec.width
        cc.height = spec.height
        cc.pix_fmt = "yuv420p"
        cc.time_base = TIME_BASE
        cc.framerate = Fraction(spec.fps).limit_denominator(1001)
        cc.gop_size = gop
        cc.max_b_frames = 0
        cc.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "crf": str(spec.crf),
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1",
        }
        cc.open()
        self.cc = cc

    def encode(self, image: Any, pts: int) -> list[av.Packet]:
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = pts
        frame.time_base = TIME_BASE
        return list(self.cc.encode(frame.reformat(format="yuv420p")))


class TestPatternSource:
    """The ``test:`` camera (see the module docstring)."""

    def __init__(self, camera: CameraConfig, backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        self.camera = camera
        self.camera_id = camera.id
        self._backoff = backoff

    def run(self, sink: SourceSink, stop: threading.Event) -> None:
        reporter = StatusReporter(self.camera_id, sink)
        reporter.update(STARTING, extra={"source": self.camera.url})
        backoff = Backoff(*self._backoff)
        try:
            while not stop.is_set():
                try:
                    self._stream(sink, stop, reporter)
                    return
                except Exception as exc:  # bad parameters, missing encoder: say so, retry
                    if isinstance(exc, ValueError | ImportError | av.FFmpegError):
                        sentence = f"test camera {self.camera.url}: {exc}"
                    else:
                        log.exception("camera %s: test pattern failed", self.camera_id)
                        sentence = f"test camera failed: {type(exc).__name__}: {exc}"
                    delay = backoff.next_delay()
                    reporter.update(FAILED, last_error=with_retry(sentence, delay))
                    stop.wait(delay)
        finally:
            reporter.update(STOPPED)  # keeps last_error: why it was failing, if it was

    def _stream(self, sink: SourceSink, stop: threading.Event, reporter: StatusReporter) -> None:
        from guetteur.dev import synthetic

        spec = parse_test_url(self.camera.url)
        scene = synthetic.scenario(
            spec.scenario, width=spec.width, height=spec.height, fps=spec.fps, **spec.params
        )
        n_frames = max(1, scene.frame_count)
        encoder = _Encoder(spec)
        decoder: Any = av.CodecContext.create("h264", "r")
        cam = self.camera
        size = analytic_size(spec.width, spec.height, cam.analytic_width)
        sampler = FrameSampler(cam.analytic_fps)
        plan = DecodePlan(cam.analytic_fps)
        keyclock = KeyframeClock()
        infos = StreamInfoCache()
        info = None
        ticks = 1 / (spec.fps * TIME_BASE)
        cache: list[tuple[bytes, bool]] = []  # first pass: (access unit, keyframe) per frame
        cache_bytes = 0
        caching = True
        anchor = time.monotonic()
        index = 0
        while not stop.is_set():
            pos = index % n_frames
            pts = round(index * ticks)
            if index >= n_frames and caching and len(cache) == n_frames:
                data, keyframe = cache[pos]
            else:
                caching = caching and index < n_frames
                encoded = encoder.encode(scene.render(pos), pts)
                if not encoded:
                    index += 1
                    continue  # cannot happen with zerolatency; stay safe
                data = b"".join(bytes(p) for p in encoded)
                keyframe = any(p.is_keyframe for p in encoded)
                if caching:
                    cache.append((data, keyframe))
                    cache_bytes += len(data)
                    if cache_bytes > _CACHE_LIMIT:
                        caching = False
                        cache.clear()
            # real-time pacing: frame i is due at anchor + i / fps
            delay = anchor + index / spec.fps - time.monotonic()
            if delay > 0:
                if stop.wait(delay):
                    return
            elif delay < -1.0:
                anchor = time.monotonic() - index / spec.fps  # fell behind: do not burst
            wall = time.time()
            if info is None or (keyframe and info.extradata is None):
                info = infos.get(
                    "h264",
                    spec.width,
                    spec.height,
                    TIME_BASE,
                    spec.fps,
                    annexb_parameter_sets(data, "h264"),
                )
                reporter.update(
                    STREAMING,
                    last_error=None,
                    codec="h264",
                    width=spec.width,
                    height=spec.height,
                    fps=spec.fps,
                )
            try:
                sink.on_packet(
                    EncodedPacket(
                        self.camera_id, data, pts, pts, keyframe, wall, info, round(ticks)
                    )
                )
            except Exception:
                log.exception("camera %s: packet sink failed", self.camera_id)
            t = float(pts * TIME_BASE)
            keyclock.packet(t, keyframe)
            keyframes_only = plan.keyframes_only(keyclock.interval_s)
            slack = 0.5 * (keyclock.interval_s or 0.0) if keyframes_only else 0.002
            if keyframe or not keyframes_only:
                packet = av.Packet(data)
                packet.pts = packet.dts = pts
                packet.time_base = TIME_BASE
                for frame in decoder.decode(packet):
                    if sampler.take(t, slack):
                        image = frame_to_luma(frame, size)
                        try:
                            sink.on_frame(
                                AnalyticFrame(
                                    self.camera_id,
                                    image,
                                    t,
                                    wall,
                                    (spec.width, spec.height),
                                    renderer(frame),
                                    chroma_level(frame),
                                )
                            )
                        except Exception:
                            log.exception("camera %s: frame sink failed", self.camera_id)
            index += 1
