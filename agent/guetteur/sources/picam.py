"""``picamera2:INDEX[?width=1920&height=1080&fps=25&gop=2&bitrate=4000000]`` — the Raspberry Pi
camera (CSI) through picamera2/libcamera.

- main stream: encoded by the Pi's hardware H.264 encoder (picamera2 ``H264Encoder``, SPS/PPS
  repeated before every keyframe, keyframe every ``gop`` seconds); its access units come to us
  through an ``Output`` and go to the sink as packets, untouched;
- lores stream (YUV 4:2:0 at the analytic size): captured at the analytic rate; motion reads its
  luma plane as it is, and only the frames that become snapshots or detector input are converted
  to BGR. Nothing is decoded on the CPU.

picamera2 is imported lazily (optional extra ``pi``; on Raspberry Pi OS prefer the system's
``python3-picamera2`` with a venv made ``--system-site-packages``). This module cannot run off a
Pi: its testable parts (URL parsing, ``decode.yuv420_luma`` and ``decode.yuv420_to_bgr``, the
missing-module sentence) are tested on any machine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import cv2
import numpy as np

from guetteur.config import CameraConfig
from guetteur.media.bitstream import annexb_parameter_sets
from guetteur.media.types import AnalyticFrame, EncodedPacket, StreamInfo
from guetteur.sources.base import Backoff, SourceSink
from guetteur.sources.decode import (
    FrameSampler,
    StreamInfoCache,
    Timeline,
    analytic_size,
    yuv420_luma,
    yuv420_to_bgr,
)
from guetteur.sources.status import (
    FAILED,
    RECONNECTING,
    STALLED,
    STARTING,
    STOPPED,
    STREAMING,
    StatusReporter,
    with_retry,
)

log = logging.getLogger("guetteur.sources")

TIME_BASE = Fraction(1, 1_000_000)  # picamera2 encoder timestamps are microseconds
MISSING_SENTENCE = (
    "picamera2 is not installed: install the 'pi' extra on Raspberry Pi OS "
    "(pip install 'guetteur[pi]', or apt install python3-picamera2 and a venv made with "
    "--system-site-packages)"
)


@dataclass(frozen=True)
class PicameraSpec:
    index: int
    width: int
    height: int
    fps: float
    gop_s: float
    bitrate: int


def parse_picamera_url(url: str) -> PicameraSpec:
    """``picamera2:0?width=1920&height=1080&fps=25&gop=2&bitrate=4000000``."""
    parts = urlsplit("x:" + url.removeprefix("picamera2:").lstrip("/"))
    try:
        index = int(parts.path or "0")
        q = {k: float(v) for k, v in parse_qsl(parts.query)}
    except ValueError:
        raise ValueError(f"{url}: expected picamera2:INDEX?width=..&height=..&fps=..") from None
    spec = PicameraSpec(
        index=index,
        width=int(q.get("width", 1920)),
        height=int(q.get("height", 1080)),
        fps=q.get("fps", 25.0),
        gop_s=q.get("gop", 2.0),
        bitrate=int(q.get("bitrate", 4_000_000)),
    )
    if index < 0 or spec.width < 64 or spec.height < 64 or spec.fps <= 0 or spec.gop_s <= 0:
        raise ValueError(f"{url}: index, size, fps and gop must be positive")
    return spec


def _lores_renderer(
    lores: np.ndarray, width: int, height: int, stride: int
) -> Callable[[int], np.ndarray]:
    """Colour on demand from a captured lores buffer (snapshots, detector input)."""

    def render(out_width: int) -> np.ndarray:
        image = yuv420_to_bgr(lores, width, height, stride)
        if out_width < width:
            size = (out_width, max(2, round(height * out_width / width)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return image

    return render


def import_picamera2() -> tuple[Any, Any, Any]:
    """(Picamera2, H264Encoder, Output) or ImportError with the install sentence."""
    try:
        from picamera2 import Picamera2
        from picamera2.encoders import H264Encoder
        from picamera2.outputs import Output
    except ImportError as exc:
        raise ImportError(MISSING_SENTENCE) from exc
    return Picamera2, H264Encoder, Output


class PicameraSource:
    """The Pi camera (see the module docstring)."""

    def __init__(self, camera: CameraConfig, backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        self.camera = camera
        self.camera_id = camera.id
        self._backoff = backoff
        self._infos = StreamInfoCache()
        self._timeline = Timeline()

    def run(self, sink: SourceSink, stop: threading.Event) -> None:
        reporter = StatusReporter(self.camera_id, sink)
        reporter.update(STARTING, extra={"source": self.camera.url})
        backoff = Backoff(*self._backoff)
        try:
            while not stop.is_set():
                state, sentence = FAILED, ""
                try:
                    streamed = self._session(sink, stop, reporter)
                    if stop.is_set():
                        return
                    state = STALLED
                    sentence = f"no frame from the Pi camera for {self.camera.stall_timeout_s:g} s"
                    if streamed:
                        backoff.reset()
                except ImportError as exc:
                    sentence = str(exc)
                except ValueError as exc:
                    sentence = str(exc)
                except Exception as exc:  # libcamera errors: camera missing, busy, cable
                    state = RECONNECTING
                    sentence = (
                        f"Pi camera {self.camera.url} failed: {exc} (check the ribbon "
                        "cable and that no other program uses the camera)"
                    )
                delay = backoff.next_delay()
                verb = "restarting it" if state == STALLED else "retrying"
                reporter.update(state, last_error=with_retry(sentence, delay, verb))
                stop.wait(delay)
        finally:
            reporter.update(STOPPED)  # keeps last_error: why it was failing, if it was

    def _session(self, sink: SourceSink, stop: threading.Event, reporter: StatusReporter) -> bool:
        """Run the camera until stop or a stall; True when frames flowed."""
        spec = parse_picamera_url(self.camera.url)
        picamera2_cls, encoder_cls, output_cls = import_picamera2()
        lores_w, lores_h = analytic_size(spec.width, spec.height, self.camera.analytic_width)
        cam = picamera2_cls(camera_num=spec.index)
        last_packet = [time.monotonic()]
        clock: list[tuple[float, float]] = []  # (pts seconds, wallclock) of the last packet
        self._timeline.new_epoch(TIME_BASE, spec.fps, None)
        timeline = self._timeline
        infos = self._infos
        camera_id = self.camera_id
        state: dict[str, StreamInfo | None] = {"info": None}

        class PacketOutput(output_cls):  # type: ignore[misc, valid-type]
            def outputframe(
                self,
                frame: bytes,
                keyframe: bool = True,
                timestamp: int | None = None,
                *args: Any,
                **kwargs: Any,
            ) -> None:
                wall = time.time()
                data = bytes(frame)
                info = state["info"]
                if info is None or (keyframe and info.extradata is None):
                    info = infos.get(
                        "h264",
                        spec.width,
                        spec.height,
                        TIME_BASE,
                        spec.fps,
                        annexb_parameter_sets(data, "h264"),
                    )
                    state["info"] = info
                pts, dts = timeline.fix(timestamp, timestamp, wall)
                last_packet[0] = time.monotonic()
                clock[:] = [(float(pts * TIME_BASE), wall)]
                try:
                    sink.on_packet(
                        EncodedPacket(camera_id, data, pts, dts, bool(keyframe), wall, info)
                    )
                except Exception:
                    log.exception("camera %s: packet sink failed", camera_id)

        streamed = False
        try:
            config = cam.create_video_configuration(
                main={"size": (spec.width, spec.height)},
                lores={"size": (lores_w, lores_h), "format": "YUV420"},
                controls={"FrameRate": spec.fps},
            )
            cam.configure(config)
            stride = int(cam.stream_configuration("lores").get("stride", lores_w))
            encoder = encoder_cls(
                bitrate=spec.bitrate, repeat=True, iperiod=max(1, round(spec.gop_s * spec.fps))
            )
            cam.start_recording(encoder, PacketOutput())
            reporter.update(
                STREAMING,
                last_error=None,
                codec="h264",
                width=spec.width,
                height=spec.height,
                fps=spec.fps,
            )
            sampler = FrameSampler(self.camera.analytic_fps)
            period = 1.0 / self.camera.analytic_fps
            while not stop.is_set():
                if time.monotonic() - last_packet[0] > self.camera.stall_timeout_s:
                    return streamed
                started = time.monotonic()
                lores = cam.capture_array("lores")
                wall = time.time()
                t = clock[0][0] + (wall - clock[0][1]) if clock else 0.0
                if sampler.take(t):
                    image, chroma = yuv420_luma(lores, lores_w, lores_h, stride)
                    streamed = True
                    try:
                        sink.on_frame(
                            AnalyticFrame(
                                camera_id,
                                image,
                                t,
                                wall,
                                (spec.width, spec.height),
                                _lores_renderer(lores.copy(), lores_w, lores_h, stride),
                                chroma,
                            )
                        )
                    except Exception:
                        log.exception("camera %s: frame sink failed", camera_id)
                stop.wait(max(0.0, period - (time.monotonic() - started) - 0.01))
            return streamed
        finally:
            try:
                cam.stop_recording()
            except Exception:  # never started, or the camera is gone already
                log.debug("camera %s: stop_recording failed", camera_id, exc_info=True)
            cam.close()
