"""The base of the camera sources read through PyAV (FFmpeg): RTSP/RTSPS cameras
(``sources/rtsp.py``), files (``sources/file.py``) and V4L2 devices (``sources/v4l2.py``).

One ``ContainerSource`` runs one reconnect loop per stream it reads:

- the main stream (``camera.url``): every packet goes to the sink untouched, for recording and
  live; when the camera has no ``sub_url`` the same loop also decodes analytic frames;
- the sub-stream (``camera.sub_url``), when set: a second loop in its own thread decodes analytic
  frames from it and hands on no packets. A second thread, not a second container in the same
  loop, because the two connections fail, stall and reconnect independently: a hung sub-stream
  must not hold up recording, and a blocking read on one must not delay the other.

Each loop: open (timeouts), demux, fix timestamps, hand on packets, decode only what analytics
need; on any failure report a sentence in the status, wait (capped exponential backoff with
jitter) and open again, until ``stop`` is set. Nothing raises out of ``run``.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import av

from guetteur.config import CameraConfig, redact_url
from guetteur.media.bitstream import annexb_parameter_sets
from guetteur.media.types import AnalyticFrame, EncodedPacket, StreamInfo
from guetteur.sources.base import Backoff, SourceSink
from guetteur.sources.decode import (
    AccessUnit,
    AccessUnitAssembler,
    DecodePlan,
    FrameSampler,
    KeyframeClock,
    RateMeter,
    StreamInfoCache,
    Timeline,
    analytic_size,
    chroma_level,
    frame_to_luma,
    renderer,
)
from guetteur.sources.status import (
    FAILED,
    RECONNECTING,
    STALLED,
    STARTING,
    STOPPED,
    STREAMING,
    NoVideoStream,
    StatusReporter,
    describe_open_error,
    with_retry,
)

log = logging.getLogger("guetteur.sources")

RECORDABLE_CODECS = ("h264", "hevc")
_FPS_REPORT_S = 5.0


@dataclass(frozen=True)
class OpenTarget:
    """How to open one input with PyAV."""

    url: str  # what av.open receives; may hold credentials: never log it
    display: str  # what sentences and logs show
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    timeout: tuple[float, float] | None = None


@dataclass(frozen=True)
class Role:
    """What one reconnect loop does with its stream."""

    name: str  # "main" or "sub"
    sub: bool
    packets: bool
    frames: bool


class SessionEnded(Exception):
    """A session that had opened stopped: ``state`` and ``sentence`` say why."""

    def __init__(self, state: str, sentence: str, streamed: bool) -> None:
        super().__init__(sentence)
        self.state = state
        self.sentence = sentence
        self.streamed = streamed


class _Clock:
    """Maps the main stream's timeline to wall-clock time, so sub-stream frames carry a pts_s on
    the recorded (main) timeline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ref: tuple[float, float] | None = None  # (main dts seconds, wallclock)

    def mark(self, t: float, wallclock: float) -> None:
        with self._lock:
            self._ref = (t, wallclock)

    def main_time(self, wallclock: float) -> float | None:
        with self._lock:
            if self._ref is None:
                return None
            t, w = self._ref
        return t + (wallclock - w)


@dataclass
class _Session:
    """What one open connection knows about its video stream."""

    target: OpenTarget
    codec: str
    width: int
    height: int
    fps: float | None
    time_base: Fraction
    info: StreamInfo
    recordable: bool
    size: tuple[int, int]
    decoder: Any
    last_packet: float
    packets: int = 0
    last_fps_report: float = 0.0


class _StreamLoop:
    """Per-stream state that lives across reconnections (timeline, StreamInfo, sampler)."""

    def __init__(self, source: ContainerSource, role: Role) -> None:
        self.source = source
        self.role = role
        self.timeline = Timeline()
        self.infos = StreamInfoCache()
        self.sampler = FrameSampler(source.camera.analytic_fps)
        self.plan = DecodePlan(source.camera.analytic_fps)
        self.keyclock = KeyframeClock()
        self.rate = RateMeter()
        self.backoff = source.make_backoff()
        self.decode_errors = 0
        self.sink_errors = 0
        # wall-clock anchor of file pacing: (monotonic time, stream seconds)
        self._pace_anchor: tuple[float, float] | None = None
        self.long_probe = False

    # ------------------------------------------------------------------ loop

    def run(self, sink: SourceSink, stop: threading.Event, reporter: StatusReporter) -> None:
        while not stop.is_set():
            streamed = False
            try:
                self.session(sink, stop, reporter)
                if stop.is_set():
                    return
                state, sentence = RECONNECTING, "stream ended"
            except SessionEnded as ended:
                state, sentence, streamed = ended.state, ended.sentence, ended.streamed
                if ended.state == "loop":
                    continue  # a looped file starts again at once
            except Exception as exc:  # open failures; never let one escape run()
                state, sentence = self.source.describe_error(exc, self.role)
                if state == RECONNECTING and not isinstance(exc, av.FFmpegError | OSError):
                    log.exception("camera %s: unexpected error", self.source.camera_id)
            if stop.is_set():
                return
            if streamed:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            verb = "reopening" if state == STALLED else "retrying"
            self.report(reporter, state, with_retry(sentence, delay, verb))
            stop.wait(delay)

    def report(
        self, reporter: StatusReporter, state: str, sentence: str | None, **fields: Any
    ) -> None:
        if self.role.sub:
            text = f"sub-stream {state}" + (f": {sentence}" if sentence else "")
            reporter.update(extra={"analytics": text})
        else:
            reporter.update(state, last_error=sentence, **fields)

    # ------------------------------------------------------------------ session

    def session(self, sink: SourceSink, stop: threading.Event, reporter: StatusReporter) -> None:
        src = self.source
        target = src.target(self.role, long_probe=self.long_probe)
        container = av.open(
            target.url,
            mode="r",
            format=target.format,
            options=target.options,
            timeout=target.timeout,
        )
        try:
            self._stream(container, target, sink, stop, reporter)
        finally:
            container.close()

    def _stream(
        self,
        container: av.container.InputContainer,
        target: OpenTarget,
        sink: SourceSink,
        stop: threading.Event,
        reporter: StatusReporter,
    ) -> None:
        src = self.source
        cam = src.camera
        video = next((s for s in container.streams if s.type == "video"), None)
        if video is None:
            raise NoVideoStream("no video stream in it (audio or data only): check the URL")
        cc: Any = video.codec_context
        codec = cc.name
        width, height = cc.width, cc.height
        if not width or not height:
            if not self.long_probe:
                self.long_probe = True  # probe longer next time (parameter sets came late)
                raise SessionEnded(
                    RECONNECTING, "stream size not known after a short probe", streamed=False
                )
            raise NoVideoStream(f"its {codec} video has no known picture size")
        rate = video.average_rate or video.guessed_rate
        fps = float(rate) if rate else None
        time_base = video.time_base or Fraction(1, 90000)
        self.timeline.new_epoch(time_base, fps, None if src.live else 0.0)
        self.keyclock.reset()
        self.rate.reset()
        self.sampler.reset()
        extradata = bytes(cc.extradata) if cc.extradata else None
        session = _Session(
            target=target,
            codec=codec,
            width=width,
            height=height,
            fps=fps,
            time_base=time_base,
            info=self.infos.get(codec, width, height, time_base, fps, extradata),
            recordable=self.role.packets and codec in RECORDABLE_CODECS,
            size=analytic_size(width, height, cam.analytic_width),
            decoder=cc,
            last_packet=time.monotonic(),
        )
        if self.role.frames and self.plan.skip_nonref(fps):
            cc.skip_frame = "NONREF"
        # Join slices split over several packets — only for Annex B streams (RTSP): MP4 samples
        # (avcC/hvcC extradata, version byte 1) are whole pictures with length prefixes that
        # could look like start codes.
        length_prefixed = extradata is not None and extradata[:1] == b"\x01"
        annexb = codec in RECORDABLE_CODECS and not length_prefixed
        assembler = AccessUnitAssembler(codec) if annexb else None
        stall_s = cam.stall_timeout_s
        try:
            for packet in container.demux():
                now = time.monotonic()
                if stop.is_set():
                    return
                if packet.stream_index != video.index or packet.size == 0:
                    if now - session.last_packet > stall_s:  # other streams flow, video not
                        silent = now - session.last_packet
                        raise SessionEnded(
                            STALLED, self._stall_sentence(target, silent), session.packets > 0
                        )
                    continue
                session.last_packet = now
                data = bytes(packet)
                key = bool(packet.is_keyframe)
                duration = int(packet.duration or 0)
                if assembler is None:
                    units = [AccessUnit(data, packet.pts, packet.dts, key, duration)]
                else:
                    units = assembler.push(data, packet.pts, packet.dts, key, duration)
                for unit in units:
                    self._handle(session, unit, sink, stop, reporter)
            for unit in assembler.flush() if assembler else []:
                self._handle(session, unit, sink, stop, reporter)
        except SessionEnded:
            raise
        except Exception as exc:
            if stop.is_set():
                return
            silent = time.monotonic() - session.last_packet
            raise self._mid_stream_error(exc, target, silent, session.packets) from exc
        # demux ended: end of file or the server closed the stream
        if not src.live and src.loop and session.packets > 0:
            raise SessionEnded("loop", "end of file", streamed=True)
        if session.packets == 0:
            raise SessionEnded(
                FAILED, f"{target.display} delivered no video packet", streamed=False
            )
        raise SessionEnded(RECONNECTING, src.ended_sentence(target), streamed=True)

    def _handle(
        self,
        s: _Session,
        unit: AccessUnit,
        sink: SourceSink,
        stop: threading.Event,
        reporter: StatusReporter,
    ) -> None:
        """One whole picture: timestamps, status, packet out, analytics, pacing."""
        src = self.source
        wall = time.time()
        pts, dts = self.timeline.fix(unit.pts, unit.dts, wall)
        tb_s = float(s.time_base)
        if s.packets == 0:
            fps = round(s.fps, 2) if s.fps else None
            self.report(
                reporter, STREAMING, None, codec=s.codec, width=s.width, height=s.height, fps=fps
            )
            if not self.role.sub and self.role.packets and not s.recordable:
                note = f"unavailable: the camera sends {s.codec}, recording needs H.264 or H.265"
                reporter.update(extra={"recording": note})
        s.packets += 1
        now = time.monotonic()
        self.rate.tick(now)
        self.keyclock.packet(pts * tb_s, unit.keyframe)
        if s.recordable:
            if s.info.extradata is None and unit.keyframe:
                sets = annexb_parameter_sets(unit.data, s.codec)
                if sets:
                    s.info = self.infos.get(s.codec, s.width, s.height, s.time_base, s.fps, sets)
            if not self.role.sub:
                src.clock.mark(dts * tb_s, wall)
            packet = EncodedPacket(
                src.camera_id, unit.data, pts, dts, unit.keyframe, wall, s.info, unit.duration
            )
            self._emit_packet(sink, packet)
        if self.role.frames:
            self._decode(sink, s, unit, pts, dts, wall)
        if not src.live:
            self._pace(dts * tb_s, stop)
        if now - s.last_fps_report >= _FPS_REPORT_S:
            s.last_fps_report = now
            measured = self.rate.rate()
            if measured and not self.role.sub:
                reporter.update(fps=round(measured, 2))

    # ------------------------------------------------------------------ pieces

    def _stall_sentence(self, target: OpenTarget, silent_s: float) -> str:
        return f"no video from {target.display} for {silent_s:.0f} s (stream stalled)"

    def _mid_stream_error(
        self, exc: Exception, target: OpenTarget, silent_s: float, packets: int
    ) -> SessionEnded:
        code = getattr(exc, "errno", None)
        streamed = packets > 0
        name = type(exc).__name__
        if isinstance(exc, TimeoutError) or name == "ExitError" or code == errno.ETIMEDOUT:
            return SessionEnded(STALLED, self._stall_sentence(target, silent_s), streamed)
        if not streamed:
            state, sentence = self.source.describe_error(exc, self.role)
            return SessionEnded(state, sentence, streamed)
        if name == "InvalidDataError":
            return SessionEnded(
                FAILED,
                f"{target.display} sent data that is not valid video (corrupt stream or file)",
                streamed,
            )
        reason = getattr(exc, "strerror", None) or name
        return SessionEnded(
            RECONNECTING, f"connection to {target.display} lost: {reason}", streamed
        )

    def _emit_packet(self, sink: SourceSink, packet: EncodedPacket) -> None:
        deliver = sink.on_sub_packet if self.role.sub else sink.on_packet
        try:
            deliver(packet)
        except Exception:
            self.sink_errors += 1
            if self.sink_errors in (1, 10, 100) or self.sink_errors % 1000 == 0:
                log.exception(
                    "camera %s: packet sink failed (%d times)",
                    self.source.camera_id,
                    self.sink_errors,
                )

    def _decode(
        self, sink: SourceSink, s: _Session, unit: AccessUnit, pts: int, dts: int, wall: float
    ) -> None:
        interval = self.keyclock.interval_s
        keyframes_only = self.plan.keyframes_only(interval)
        if keyframes_only and not unit.keyframe:
            return  # analytics need at most one frame per GOP: P-frames are not decoded at all
        slack = 0.5 * interval if keyframes_only and interval else 0.002
        packet = av.Packet(unit.data)
        packet.pts = pts
        packet.dts = dts
        packet.time_base = s.time_base
        try:
            frames = s.decoder.decode(packet)
        except av.FFmpegError:
            self.decode_errors += 1  # damaged packet: the decoder recovers at the next keyframe
            return
        for frame in frames:
            t = (
                float(frame.pts * s.time_base)
                if frame.pts is not None
                else float(pts * s.time_base)
            )
            if not self.sampler.take(t, slack):
                continue
            image = frame_to_luma(frame, s.size)
            if self.role.sub:
                mapped = self.source.clock.main_time(wall)
                t = mapped if mapped is not None else t
            try:
                sink.on_frame(
                    AnalyticFrame(
                        self.source.camera_id,
                        image,
                        t,
                        wall,
                        (s.width, s.height),
                        renderer(frame),
                        chroma_level(frame),
                    )
                )
            except Exception:
                self.sink_errors += 1
                log.exception("camera %s: frame sink failed", self.source.camera_id)

    def _pace(self, t: float, stop: threading.Event) -> None:
        """Hand packets on at the file's own rate, like a live camera."""
        now = time.monotonic()
        if self._pace_anchor is None or now - (self._pace_anchor[0] + t - self._pace_anchor[1]) > 1:
            self._pace_anchor = (now, t)  # first packet, or we fell more than 1 s behind
            return
        delay = self._pace_anchor[0] + (t - self._pace_anchor[1]) - now
        if delay > 0:
            stop.wait(delay)


class ContainerSource:
    """Base of the PyAV-read sources. Subclasses say how to open (``target``), whether the input
    is live (network/device) or a file to pace and loop, and how to word their errors."""

    live = True
    loop = False

    def __init__(self, camera: CameraConfig, backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        self.camera = camera
        self.camera_id = camera.id
        self._backoff = backoff
        self.clock = _Clock()

    def make_backoff(self) -> Backoff:
        return Backoff(*self._backoff)

    def target(self, role: Role, long_probe: bool = False) -> OpenTarget:
        raise NotImplementedError

    def describe_error(self, exc: BaseException, role: Role) -> tuple[str, str]:
        return describe_open_error(
            exc, self.camera.stream_url(role.sub), self.camera.open_timeout_s
        )

    def ended_sentence(self, target: OpenTarget) -> str:
        return f"{target.display} ended the stream (camera restarting or session closed)"

    def secrets(self) -> tuple[str, ...]:
        """Passwords to scrub from every status text: the configured one and any written into
        the URLs themselves."""
        found = [self.camera.password.get_secret_value() if self.camera.password else None]
        for url in (self.camera.url, self.camera.sub_url):
            try:
                found.append(urlsplit(url).password if url else None)
            except ValueError:
                pass
        return tuple(s for s in found if s)

    def roles(self) -> list[Role]:
        if self.camera.sub_url:
            return [
                Role("main", sub=False, packets=True, frames=False),
                Role("sub", sub=True, packets=True, frames=True),  # packets: live "sub"
            ]
        return [Role("main", sub=False, packets=True, frames=True)]

    def run(self, sink: SourceSink, stop: threading.Event) -> None:
        reporter = StatusReporter(self.camera_id, sink, self.secrets())
        reporter.update(STARTING, extra={"source": self.describe()})
        threads: list[threading.Thread] = []
        try:
            main, *others = self.roles()
            for role in others:
                loop = _StreamLoop(self, role)
                thread = threading.Thread(
                    target=self._guarded,
                    args=(loop, sink, stop, reporter),
                    name=f"source-{self.camera_id}-{role.name}",
                    daemon=True,
                )
                thread.start()
                threads.append(thread)
            self._guarded(_StreamLoop(self, main), sink, stop, reporter)
        finally:
            for thread in threads:
                thread.join(timeout=max(self.camera.open_timeout_s, self.camera.read_timeout_s))
            reporter.update(STOPPED)  # keeps last_error: why it was failing, if it was

    def _guarded(
        self, loop: _StreamLoop, sink: SourceSink, stop: threading.Event, reporter: StatusReporter
    ) -> None:
        while not stop.is_set():
            try:
                loop.run(sink, stop, reporter)
            except Exception:  # a bug, not the camera: log it, keep the camera alive
                log.exception("camera %s: source loop crashed; restarting it", self.camera_id)
                stop.wait(loop.backoff.next_delay())

    def describe(self) -> str:
        return redact_url(self.camera.url)
