"""Doctor's camera check: each camera is opened by its own source (:func:`guetteur.sources.open_source`,
the code the agent runs: same URL handling, credentials, RTSP options, V4L2 format choice), and
what the source hands on for a few seconds is judged: codec, resolution, frame rate measured from
packet timestamps, a keyframe — or the source's own sentence on why it cannot stream.

Only the main stream is probed, with doctor's timeout instead of the camera's own, and the source
is stopped as soon as the verdict is known. A Pi camera is not opened: the running agent holds it.
"""

from __future__ import annotations

import re
import threading
import time

from guetteur.config import CameraConfig, redact_url
from guetteur.media.types import AnalyticFrame, EncodedPacket
from guetteur.ops.checks.report import Check
from guetteur.sources import CameraStatus, UnsupportedSource, open_source
from guetteur.sources.status import FAILED, RECONNECTING, STALLED, STREAMING

MAX_PACKETS = 150  # enough for a frame-rate estimate; the sample ends early when reached
# A source tries again after a failure; a few attempts cover its own negotiation (a V4L2 camera
# tries h264, mjpeg then raw; an RTSP stream without its size in the SDP is probed longer).
ATTEMPTS = 3
_BACKOFF = (0.5, 2.0)  # quick attempts: the verdict is wanted now, not a camera that heals later
_NEXT_STEP = re.compile(r"; (retrying|reopening) in [0-9.]+ s$")  # what the agent would do next


class _ProbeSink:
    """Collects what a source hands on. ``settled`` is set at the first video or after
    ``ATTEMPTS`` failures; ``sampled`` once ``MAX_PACKETS`` packets arrived."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.video_after: float | None = None  # seconds from start to the first video
        self.times: list[float] = []  # packet timestamps, stream seconds
        self.keyframe = False
        self.status: CameraStatus | None = None
        self.errors: list[str] = []
        self.failed = False  # the source says a person must fix something
        self.settled = threading.Event()
        self.sampled = threading.Event()

    def _video(self) -> None:
        if self.video_after is None:
            self.video_after = time.monotonic() - self.started
            self.settled.set()

    def on_packet(self, packet: EncodedPacket) -> None:
        with self._lock:
            self._video()
            self.keyframe = self.keyframe or packet.keyframe
            if len(self.times) < MAX_PACKETS:
                self.times.append(packet.pts_s)
            else:
                self.sampled.set()

    def on_sub_packet(self, packet: EncodedPacket) -> None:
        pass  # only the main stream is probed

    def on_frame(self, frame: AnalyticFrame) -> None:
        with self._lock:  # a codec that is not recorded gives frames but no packets
            self._video()

    def on_status(self, status: CameraStatus) -> None:
        with self._lock:
            self.status = status
            if status.state == STREAMING:
                self._video()
            elif status.last_error and status.state in (FAILED, RECONNECTING, STALLED):
                self.errors.append(_NEXT_STEP.sub("", status.last_error))
                self.failed = self.failed or status.state == FAILED
                if self.failed or len(self.errors) >= ATTEMPTS:
                    self.settled.set()

    def fps(self) -> float | None:
        """Frame rate from packet timestamps, else what the stream announces."""
        with self._lock:
            times = list(self.times)
        if len(times) >= 2 and max(times) > min(times):
            return (len(times) - 1) / (max(times) - min(times))
        return self.status.fps if self.status else None


def probe_camera(cam: CameraConfig, timeout_s: float = 5.0, sample_s: float = 2.0) -> Check:
    """Run the camera's source until video flows (then ``sample_s`` more) or it fails; up to
    ``timeout_s`` to open and as long again for the first packet."""
    shown = redact_url(cam.stream_url())
    if cam.url.startswith("test:"):
        return Check("camera", cam.id, "PASS", f"{shown}: synthetic test pattern (no device)")
    if cam.url.startswith("picamera2:"):
        return Check(
            "camera",
            cam.id,
            "WARN",
            f"{shown}: Pi camera not probed by doctor",
            "check `rpicam-hello --list-cameras`",
        )
    probe = cam.model_copy(
        update={
            "sub_url": None,
            "open_timeout_s": timeout_s,
            "read_timeout_s": timeout_s,
            "stall_timeout_s": timeout_s,
        }
    )
    try:
        source = open_source(probe, backoff=_BACKOFF)
    except UnsupportedSource as exc:
        return Check("camera", cam.id, "FAIL", f"{shown}: {exc}", "fix the camera's url")
    sink = _ProbeSink()
    stop = threading.Event()
    thread = threading.Thread(
        target=source.run, args=(sink, stop), name=f"doctor-{cam.id}", daemon=True
    )
    thread.start()
    try:
        sink.settled.wait(2 * timeout_s + 1)
        if sink.video_after is not None:
            sink.sampled.wait(sample_s)
    finally:
        stop.set()
        thread.join(timeout_s)
    return _verdict(cam, shown, sink, timeout_s)


def _verdict(cam: CameraConfig, shown: str, sink: _ProbeSink, timeout_s: float) -> Check:
    if sink.video_after is None:
        if sink.errors:
            return Check(
                "camera", cam.id, "FAIL", f"{shown}: {sink.errors[-1]}", _camera_action(cam, sink)
            )
        return Check(
            "camera",
            cam.id,
            "FAIL",
            f"{shown}: opened but no video packet within {timeout_s:g} s",
            "the camera accepts connections but sends nothing: reboot it",
        )
    status = sink.status
    codec = status.codec if status else None
    width, height = (status.width, status.height) if status else (None, None)
    fps = sink.fps()
    res = f"{width}x{height}" if width and height else "resolution unknown"
    fps_text = f"{fps:.1f} fps" if fps else "fps unknown"
    detail = f"{shown}: {codec} {res} {fps_text}, opened in {sink.video_after:.1f} s"
    if codec not in ("h264", "hevc"):
        return Check(
            "camera",
            cam.id,
            "WARN",
            detail,
            "set the camera to H.264 (or H.265): other codecs cost CPU and storage",
        )
    if not sink.keyframe:
        return Check(
            "camera",
            cam.id,
            "WARN",
            detail + ", no keyframe seen",
            "set the camera's GOP/I-frame interval to 1-2 s",
        )
    return Check("camera", cam.id, "PASS", detail)


def _camera_action(cam: CameraConfig, sink: _ProbeSink) -> str:
    """What to do, from the source's sentence (which already says what failed and where)."""
    text = sink.errors[-1].lower()
    if "credentials" in text:
        return "check the camera's username/password in the config"
    if "404" in text or "no stream at" in text:
        return "check the stream path of the URL (see `guetteur discover`)"
    if "connection refused" in text:
        return (
            "the camera answers but not on this port: check the RTSP port and that RTSP is enabled"
        )
    if "no video stream" in text or "picture size" in text:
        return "select a video profile/stream on the camera"
    if cam.url.startswith("file:"):
        return "check the camera's url names a video file the guetteur user can read"
    if cam.url.startswith("v4l2:"):
        return "check the USB camera is plugged in and the guetteur user is in the 'video' group"
    return (
        "check the camera is powered, its cable, its IP address, and that the gateway can reach it"
    )
