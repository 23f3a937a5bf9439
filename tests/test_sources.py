"""Camera sources against real peers: GStreamer's RTSP server on loopback, real H.264 files made
by ffmpeg, the test-pattern camera; plus the pure helpers (sampling, timestamps, YUV)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from guetteur.config import CameraConfig
from guetteur.media.bitstream import annexb_parameter_sets
from guetteur.media.types import AnalyticFrame, EncodedPacket
from guetteur.sources import UnsupportedSource, open_source
from guetteur.sources.base import CameraStatus
from guetteur.sources.decode import (
    AccessUnitAssembler,
    DecodePlan,
    FrameSampler,
    StreamInfoCache,
    Timeline,
    analytic_size,
    yuv420_to_bgr,
)
from guetteur.sources.file import FileSource
from guetteur.sources.picam import MISSING_SENTENCE, PicameraSource, parse_picamera_url
from guetteur.sources.rtsp import RtspSource
from guetteur.sources.status import StatusReporter, describe_open_error
from guetteur.sources.testpattern import TestPatternSource as PatternSource
from guetteur.sources.testpattern import parse_test_url
from guetteur.sources.v4l2 import V4l2Source, parse_v4l2_url
from tests.fixtures.broker import MosquittoBroker, free_port
from tests.fixtures.media import MediaFactory
from tests.fixtures.rtsp import RtspServerFactory

FAST_BACKOFF = (0.3, 1.0)


class Collector:
    """A SourceSink that keeps everything, thread-safe, with waiting helpers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.packets: list[EncodedPacket] = []
        self.frames: list[AnalyticFrame] = []
        self.sub_packets: list[EncodedPacket] = []
        self.statuses: list[CameraStatus] = []

    def on_packet(self, packet: EncodedPacket) -> None:
        with self.lock:
            self.packets.append(packet)

    def on_frame(self, frame: AnalyticFrame) -> None:
        with self.lock:
            self.frames.append(frame)

    def on_sub_packet(self, packet: EncodedPacket) -> None:
        with self.lock:
            self.sub_packets.append(packet)

    def on_status(self, status: CameraStatus) -> None:
        with self.lock:
            self.statuses.append(status)

    @property
    def state(self) -> str | None:
        with self.lock:
            return self.statuses[-1].state if self.statuses else None

    def wait(self, predicate: Callable[[Collector], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return
            time.sleep(0.05)
        with self.lock:
            seen = [(s.state, s.last_error) for s in self.statuses]
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; statuses: {seen}"
            )

    def wait_state(self, state: str, timeout: float, after: int = 0) -> CameraStatus:
        self.wait(
            lambda c: any(s.state == state for s in c.statuses[after:]), timeout, f"state {state}"
        )
        with self.lock:
            return next(s for s in self.statuses[after:] if s.state == state)


@contextmanager
def running(source: Any) -> Iterator[Collector]:
    """Run a source in a thread; on exit stop it and check it stopped quickly and raised nothing."""
    sink = Collector()
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            source.run(sink, stop)
        except BaseException as exc:  # the contract: nothing escapes run()
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        stop.set()
        thread.join(timeout=8)
        assert not thread.is_alive(), "source.run did not return within 8 s of stop"
        assert not errors, f"run() raised {errors!r}"
        assert sink.state == "stopped"


def camera(url: str, **kw: Any) -> CameraConfig:
    defaults: dict[str, Any] = {
        "id": "cam1",
        "url": url,
        "open_timeout_s": 3.0,
        "read_timeout_s": 2.0,
        "stall_timeout_s": 3.0,
    }
    defaults.update(kw)
    return CameraConfig(**defaults)


def decodes_cleanly(packets: list[EncodedPacket]) -> int:
    """Decode the packets with a fresh decoder (from the first keyframe); frames out."""
    start = next(i for i, p in enumerate(packets) if p.keyframe)
    ctx: Any = av.CodecContext.create(packets[0].stream.codec, "r")
    if packets[0].stream.extradata:
        ctx.extradata = packets[0].stream.extradata
    frames = 0
    for p in packets[start:]:
        frames += len(ctx.decode(av.Packet(p.data)))
    frames += len(ctx.decode(None))
    return frames


# ---------------------------------------------------------------------------- pure helpers


def test_analytic_size_keeps_aspect_and_never_upscales() -> None:
    assert analytic_size(1920, 1080, 320) == (320, 180)
    assert analytic_size(640, 272, 320) == (320, 136)
    assert analytic_size(200, 100, 320) == (200, 100)
    w, h = analytic_size(1280, 721, 333)
    assert w % 2 == 0 and h % 2 == 0


@pytest.mark.parametrize(
    ("stream_fps", "analytic_fps", "expected"), [(25, 5, 20), (30, 5, 20), (25, 7, 28), (10, 5, 20)]
)
def test_frame_sampler_rate(stream_fps: float, analytic_fps: float, expected: int) -> None:
    sampler = FrameSampler(analytic_fps)
    taken = [i for i in range(int(stream_fps * 4)) if sampler.take(i / stream_fps + 0.0133)]
    assert abs(len(taken) - expected) <= 1
    gaps = np.diff(taken) / stream_fps
    assert gaps.max() <= 1 / analytic_fps + 1 / stream_fps + 1e-9


def test_frame_sampler_restarts_after_gap_and_time_going_back() -> None:
    sampler = FrameSampler(5)
    assert sampler.take(0.0)
    assert not sampler.take(0.1)
    assert sampler.take(10.0)  # gap: taken, grid restarted
    assert not sampler.take(10.1)
    assert sampler.take(0.5)  # new stream restarting at 0: re-anchored


def test_timeline_fills_missing_timestamps_and_continues_across_epochs() -> None:
    tl = Timeline()
    tb = Fraction(1, 90000)
    tl.new_epoch(tb, 25.0, None)
    out = [tl.fix(None, None, 100.0), tl.fix(2945, None, 100.04), tl.fix(6545, None, 100.08)]
    assert out == [(0, 0), (2945, 2945), (6545, 6545)]
    # reconnection 2 s later: the server restarts near 0; the timeline continues after a 2 s gap
    tl.new_epoch(tb, 25.0, None)
    _pts, dts = tl.fix(1000, 1000, 102.08)
    assert dts == 6545 + 2 * 90000
    assert tl.fix(4600, 4600, 102.12) == (dts + 3600, dts + 3600)
    # a looped file: one frame after the last packet, in another time base
    tl.new_epoch(Fraction(1, 12800), 25.0, 0.0)
    last_s = (dts + 3600) / 90000
    _p2, d2 = tl.fix(0, 0, 103.0)
    assert d2 == pytest.approx(last_s * 12800 + 512, abs=1)
    # dts never goes back, pts never below dts
    p3, d3 = tl.fix(-5000, -5000, 103.04)
    assert d3 > d2 and p3 >= d3


def test_stream_info_is_reused_until_codec_or_size_changes() -> None:
    cache = StreamInfoCache()
    tb = Fraction(1, 90000)
    a = cache.get("h264", 640, 360, tb, 25.0, b"\x00\x00\x00\x01g")
    assert cache.get("h264", 640, 360, tb, 25.0, b"\x00\x00\x00\x01g") is a
    assert cache.get("h264", 640, 360, tb, None, None) is a
    b = cache.get("h264", 1280, 720, tb, 25.0, None)
    assert b is not a and b.width == 1280
    c = cache.get("hevc", 1280, 720, tb, 25.0, None)
    assert c is not b and c.codec == "hevc"


def test_annexb_parameter_sets_extracts_sps_pps_only() -> None:
    sps, pps, idr = b"\x67\x42\xc0\x1e", b"\x68\xce\x0f\xc8", b"\x65\x88\x84\x00"
    au = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps + b"\x00\x00\x01" + idr
    assert (
        annexb_parameter_sets(au, "h264") == b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps
    )
    assert annexb_parameter_sets(b"\x00\x00\x01" + idr, "h264") is None
    assert annexb_parameter_sets(au, "mjpeg") is None


def test_access_unit_assembler_joins_slices_of_one_picture() -> None:
    sc = b"\x00\x00\x00\x01"
    sps, pps = sc + b"\x67\x64\x00\x1e", sc + b"\x68\xef\x3c"
    idr0, idr1 = sc + b"\x65\x88\x84\x21", sc + b"\x65\x00\x12\x34"  # first_mb 0 / not 0
    p0, p1 = sc + b"\x41\x9a\x26\x24", sc + b"\x41\x00\x9a\x10"
    asm = AccessUnitAssembler("h264")
    # GStreamer-style: SPS/PPS repeated before the second IDR slice, split into two packets
    assert asm.push(sps + pps + idr0, None, None, True) == []
    assert asm.push(sps + pps + idr1, 0, None, True) == []
    (idr,) = asm.push(p0, 3600, 3600, False)
    assert idr.data == sps + pps + idr0 + sps + pps + idr1
    assert (idr.pts, idr.keyframe) == (0, True)
    assert asm.push(p1, 3600, 3600, False) == []  # second slice of the P picture
    (p,) = asm.push(sps + pps, None, None, False)  # parameter sets sent apart...
    assert p.data == p0 + p1 and p.pts == 3600
    assert asm.push(idr0, 7200, 7200, True) == []  # ...go with the picture that follows them
    (last,) = asm.flush()
    assert last.data == sps + pps + idr0 and last.keyframe and last.pts == 7200
    # MP4 (length-prefixed) samples are whole pictures: handed on at once
    mp4 = AccessUnitAssembler("h264")
    (whole,) = mp4.push(b"\x00\x00\x10\x00\x65\x88", 0, 0, True)
    assert whole.data == b"\x00\x00\x10\x00\x65\x88"


@pytest.mark.parametrize("stride", [320, 384])
def test_yuv420_to_bgr_handles_padded_rows(stride: int) -> None:
    rng = np.random.default_rng(1)
    bgr = cv2.GaussianBlur(rng.integers(0, 255, (180, 320, 3), dtype=np.uint8), (9, 9), 3)
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    w, h = 320, 180
    y, u, v = i420[: w * h], i420[w * h : w * h * 5 // 4], i420[w * h * 5 // 4 :]

    def pad(plane: np.ndarray, rows: int, cols: int, to: int) -> np.ndarray:
        out = np.zeros((rows, to), np.uint8)
        out[:, :cols] = plane.reshape(rows, cols)
        return out.reshape(-1)

    buf = np.concatenate(
        [
            pad(y, h, w, stride),
            pad(u, h // 2, w // 2, stride // 2),
            pad(v, h // 2, w // 2, stride // 2),
        ]
    ).reshape(h * 3 // 2, stride)
    out = yuv420_to_bgr(buf, w, h, stride)
    assert out.shape == (180, 320, 3)
    assert np.abs(out.astype(int) - bgr.astype(int)).mean() < 4


def test_decode_plan() -> None:
    assert DecodePlan(0.5).keyframes_only(2.0)
    assert not DecodePlan(5).keyframes_only(2.0)
    assert not DecodePlan(5).keyframes_only(None)
    assert DecodePlan(5).skip_nonref(25.0)
    assert not DecodePlan(10).skip_nonref(25.0)


def test_url_parsers() -> None:
    spec = parse_test_url("test:walk?start=5&end=8&duration=20&gop=1&width=320&height=180")
    assert (spec.scenario, spec.width, spec.height, spec.gop_s) == ("walk", 320, 180, 1.0)
    assert spec.params == {"start": 5.0, "end": 8.0, "duration": 20.0}
    with pytest.raises(ValueError, match="start='soon'"):
        parse_test_url("test:walk?start=soon")
    dev, opts = parse_v4l2_url("v4l2:/dev/video2?width=1280&height=720&fps=30")
    assert dev == Path("/dev/video2") and opts == {"video_size": "1280x720", "framerate": "30.0"}
    pi = parse_picamera_url("picamera2:1?width=1280&height=720&fps=30")
    assert (pi.index, pi.width, pi.height, pi.fps) == (1, 1280, 720, 30.0)
    with pytest.raises(ValueError, match="picamera2:INDEX"):
        parse_picamera_url("picamera2:front")


def test_error_sentences_name_the_problem_without_password() -> None:
    url = "rtsp://admin:hunter2@127.0.0.1:8554/cam"
    state, text = describe_open_error(ConnectionRefusedError(111, "Connection refused"), url, 5)
    assert state == "reconnecting"
    assert text.startswith("cannot connect to 127.0.0.1:8554: connection refused")
    state, text = describe_open_error(TimeoutError(), url, 5)
    assert "no answer from 127.0.0.1:8554 within 5 s" in text
    assert "hunter2" not in text


def test_status_reporter_scrubs_secrets_and_reports_changes_only() -> None:
    sink = Collector()
    rep = StatusReporter("cam1", sink, secrets=("p@ss word",))
    rep.update("failed", last_error="bad url rtsp://u:p%40ss%20word@h/ and p@ss word")
    rep.update("failed", last_error="bad url rtsp://u:p%40ss%20word@h/ and p@ss word")
    assert len(sink.statuses) == 1
    assert "p@ss" not in (sink.statuses[0].last_error or "")
    assert "p%40ss" not in (sink.statuses[0].last_error or "")
    rep.update("streaming", last_error=None, fps=25.0)
    rep.update(fps=25.4)  # within 20 %: not worth a retained status message
    rep.update(fps=12.0)
    assert [s.fps for s in sink.statuses] == [None, 25.0, 12.0]
    assert sink.statuses[1].connected and not sink.statuses[0].connected


def test_open_source_chooses_by_scheme(tmp_path: Path) -> None:
    assert isinstance(open_source(camera("rtsp://127.0.0.1:1/x")), RtspSource)
    assert isinstance(open_source(camera("rtsps://127.0.0.1:1/x")), RtspSource)
    assert isinstance(open_source(camera(f"file:{tmp_path}/a.mp4")), FileSource)
    assert isinstance(open_source(camera("test:walk")), PatternSource)
    assert isinstance(open_source(camera("picamera2:0")), PicameraSource)
    assert isinstance(open_source(camera("v4l2:/dev/video0")), V4l2Source)
    bogus = CameraConfig.model_construct(id="x", url="http://example/")
    with pytest.raises(UnsupportedSource):
        open_source(bogus)


# ---------------------------------------------------------------------------- real RTSP


@pytest.mark.slow
def test_rtsp_packets_stream_info_and_analytic_frames(rtsp_server: RtspServerFactory) -> None:
    server = rtsp_server()  # 640x360 25 fps, keyframe every second, looped
    with running(open_source(camera(server.url, analytic_fps=5))) as sink:
        sink.wait(lambda c: len(c.frames) >= 3, 10, "first analytic frames")
        t0 = time.monotonic()
        n0 = len(sink.frames)
        time.sleep(4.0)
        n1 = len(sink.frames)
        rate = (n1 - n0) / (time.monotonic() - t0)
    packets = sink.packets
    assert 4.0 <= rate <= 6.0, f"analytic rate {rate:.2f} fps, expected ~5"
    frame = sink.frames[-1]
    # motion gets the luma plane; colour is rendered from the decoded frame on demand
    assert frame.image.shape == (180, 320) and frame.image.dtype == np.uint8
    assert frame.colour().shape == (180, 320, 3)
    assert frame.chroma is not None and frame.chroma > 1.0  # a colour test pattern
    assert frame.source_size == (640, 360)
    info = packets[0].stream
    assert (info.codec, info.width, info.height, info.time_base) == (
        "h264",
        640,
        360,
        Fraction(1, 90000),
    )
    assert info.extradata and annexb_parameter_sets(info.extradata, "h264")
    assert all(p.stream is info for p in packets), "StreamInfo must be one object per epoch"
    keys = [p.pts_s for p in packets if p.keyframe]
    assert len(keys) >= 4 and np.allclose(np.diff(keys), 1.0, atol=0.1)
    assert all(b.dts > a.dts for a, b in itertools.pairwise(packets))
    assert all(p.pts >= p.dts for p in packets)
    assert decodes_cleanly(packets) >= len(packets) - 2  # every packet is a whole access unit
    streaming = [s for s in sink.statuses if s.state == "streaming"][-1]
    assert streaming.connected and streaming.codec == "h264"
    assert (streaming.width, streaming.height) == (640, 360)
    assert streaming.fps is not None and 20 <= streaming.fps <= 30


@pytest.mark.slow
def test_rtsp_multi_slice_pictures_arrive_whole(
    rtsp_server: RtspServerFactory, media: MediaFactory
) -> None:
    """Cameras cut pictures into slices; GStreamer repeats SPS/PPS before each IDR slice and
    FFmpeg then splits the picture in two packets: the source must join them again."""
    clip = media.h264_clip(duration=4.0, gop_s=1.0, slices=3, size=(320, 180))
    with av.open(str(clip)) as c:
        first = next(iter(c.decode(video=0))).to_ndarray(format="bgr24")
        frames_in_file = c.streams.video[0].frames
    server = rtsp_server(file=clip, loop=False)
    with running(open_source(camera(server.url))) as sink:
        sink.wait(lambda c: len(c.packets) >= 60, 10, "60 packets")
    packets = sink.packets[:60]
    assert frames_in_file == 100
    assert [i for i, p in enumerate(packets) if p.keyframe] == [0, 25, 50]
    assert np.allclose(np.diff([p.pts_s for p in packets]), 0.04, atol=0.002)
    ctx: Any = av.CodecContext.create("h264", "r")
    decoded = ctx.decode(av.Packet(packets[0].data))
    decoded += ctx.decode(None)
    assert len(decoded) == 1
    # the whole picture, not its upper third over a green rest
    diff = np.abs(decoded[0].to_ndarray(format="bgr24").astype(int) - first.astype(int))
    assert diff.mean() < 1.0


@pytest.mark.slow
def test_rtsp_server_killed_then_back_reconnects(rtsp_server: RtspServerFactory) -> None:
    server = rtsp_server()
    src = open_source(camera(server.url), backoff=FAST_BACKOFF)
    with running(src) as sink:
        sink.wait_state("streaming", 10)
        time.sleep(1.0)
        mark = len(sink.statuses)
        server.kill()
        sink.wait(
            lambda c: any(s.state in ("reconnecting", "stalled") for s in c.statuses[mark:]),
            6,
            "reconnecting after the server died",
        )
        time.sleep(1.5)
        with sink.lock:
            errors = [s.last_error or "" for s in sink.statuses[mark:]]
        assert any("connection refused" in e and "retrying in" in e for e in errors), errors
        before = len(sink.packets)
        server.start()
        sink.wait_state("streaming", 12, after=mark)
        sink.wait(lambda c: len(c.packets) > before + 25, 10, "packets after reconnection")
    packets = sink.packets
    assert all(b.dts > a.dts for a, b in itertools.pairwise(packets))
    assert packets[before].stream is packets[0].stream  # same camera, same stream epoch
    assert packets[before].pts_s - packets[before - 1].pts_s >= 1.0  # the outage shows in time


@pytest.mark.slow
def test_rtsp_frozen_server_is_reported_stalled_and_reopened(
    rtsp_server: RtspServerFactory,
) -> None:
    server = rtsp_server()
    cam = camera(server.url, stall_timeout_s=2.0, read_timeout_s=2.0, open_timeout_s=2.0)
    with running(open_source(cam, backoff=FAST_BACKOFF)) as sink:
        sink.wait_state("streaming", 10)
        mark = len(sink.statuses)
        server.freeze()
        t0 = time.monotonic()
        stalled = sink.wait_state("stalled", 8, after=mark)
        took = time.monotonic() - t0
        assert 1.5 <= took <= 5.0, f"stall reported after {took:.1f} s (stall_timeout_s=2)"
        assert stalled.last_error and "no video from 127.0.0.1" in stalled.last_error
        assert "(stream stalled); reopening in" in stalled.last_error
        assert not stalled.connected
        server.thaw()
        sink.wait_state("streaming", 12, after=mark + 1)


def test_rtsp_unreachable_port_says_so_and_retries() -> None:
    port = free_port()
    with running(open_source(camera(f"rtsp://127.0.0.1:{port}/cam"), backoff=(0.2, 0.5))) as sink:
        sink.wait(
            lambda c: (
                sum(s.state == "reconnecting" for s in c.statuses) >= 1 and len(c.statuses) >= 3
            ),
            5,
            "several retries",
        )
    errors = [s.last_error for s in sink.statuses if s.state == "reconnecting"]
    assert errors[0] and errors[0].startswith(
        f"cannot connect to 127.0.0.1:{port}: connection refused"
    )
    assert "retrying in" in errors[0]
    assert not sink.packets


@pytest.mark.slow
def test_rtsp_wrong_credentials_say_check_credentials(
    rtsp_server: RtspServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = rtsp_server(user="operator", password="right-one")
    caplog.set_level(logging.DEBUG, logger="guetteur")
    wrong = camera(server.url, username="operator", password="wr0ng-s3cret")
    with running(open_source(wrong, backoff=FAST_BACKOFF)) as sink:
        failed = sink.wait_state("failed", 6)
    assert failed.last_error and "credentials" in failed.last_error
    assert "401" in failed.last_error and "127.0.0.1" in failed.last_error
    every_text = " ".join(str(s) for s in sink.statuses) + caplog.text
    assert "wr0ng-s3cret" not in every_text
    right = camera(server.url, username="operator", password="right-one")
    with running(open_source(right)) as sink:
        sink.wait(lambda c: len(c.packets) > 10, 8, "packets with the right credentials")


@pytest.mark.slow
def test_rtsp_wrong_path_and_a_port_that_is_not_rtsp(
    rtsp_server: RtspServerFactory, broker: MosquittoBroker
) -> None:
    server = rtsp_server()
    with running(open_source(camera(server.url + "2"), backoff=(5, 5))) as sink:
        failed = sink.wait_state("failed", 5)
    assert failed.last_error and "has no stream at /cam2 (404 Not Found)" in failed.last_error
    # an MQTT broker answering where a camera should be: not video
    url = f"rtsp://127.0.0.1:{broker.port}/cam"
    with running(open_source(camera(url), backoff=(5, 5))) as sink:
        failed = sink.wait_state("failed", 5)
    assert failed.last_error and "did not answer as an RTSP camera" in failed.last_error
    assert not sink.packets


@pytest.mark.slow
def test_rtsp_sub_stream_feeds_analytics_main_feeds_packets(
    rtsp_server: RtspServerFactory, media: MediaFactory
) -> None:
    main = rtsp_server()
    sub = rtsp_server(file=media.h264_clip(size=(480, 270), duration=6.0))
    with running(open_source(camera(main.url, sub_url=sub.url))) as sink:
        sink.wait(
            lambda c: len(c.frames) >= 8 and len(c.packets) >= 50 and len(c.sub_packets) >= 25,
            10,
            "packets + frames",
        )
    assert {p.stream.width for p in sink.packets} == {640}  # packets: main stream
    assert {p.stream.width for p in sink.sub_packets} == {480}  # sub packets: for live "sub"
    assert any(p.keyframe for p in sink.sub_packets)
    assert {f.source_size for f in sink.frames} == {(480, 270)}  # frames: sub-stream
    assert sink.frames[-1].image.shape == (180, 320)
    # sub-stream frames are placed on the main (recorded) timeline
    assert abs(sink.frames[-1].pts_s - sink.packets[-1].pts_s) < 1.5


# ---------------------------------------------------------------------------- files


@pytest.mark.slow
def test_file_source_loops_at_native_rate_with_exact_packets(media: MediaFactory) -> None:
    clip = media.h264_clip(duration=2.0, gop_s=1.0)
    with av.open(str(clip)) as c:
        original = [bytes(p) for p in c.demux(video=0) if p.size]
    assert len(original) == 50
    with running(open_source(camera(f"file:{clip}"))) as sink:
        t0 = time.monotonic()
        sink.wait(lambda c: len(c.packets) >= 125, 8, "2.5 passes of the file")
        took = time.monotonic() - t0
    assert 4.2 <= took <= 6.5, f"125 packets at 25 fps took {took:.2f} s: not paced like a camera"
    assert [p.data for p in sink.packets[:50]] == original
    assert [p.data for p in sink.packets[50:100]] == original
    assert all(b.dts > a.dts for a, b in zip(sink.packets, sink.packets[1:], strict=False))
    assert sink.packets[100].pts_s == pytest.approx(4.0, abs=0.05)  # continuous timeline
    assert len(sink.frames) >= 20
    assert {id(p.stream) for p in sink.packets} == {id(sink.packets[0].stream)}


@pytest.mark.slow
def test_low_analytic_rate_decodes_keyframes_only(media: MediaFactory) -> None:
    """analytic_fps 0.9 with a keyframe every second: one frame per GOP is enough, so only
    keyframes are decoded and every analysed frame sits on a keyframe (a 0.9 fps grid would
    otherwise give frames at 0, 1.11, 2.22... s)."""
    clip = media.h264_clip(duration=2.0, gop_s=1.0)
    with running(open_source(camera(f"file:{clip}", analytic_fps=0.9))) as sink:
        sink.wait(lambda c: len(c.frames) >= 5, 8, "5 analysed frames")
    times = [f.pts_s for f in sink.frames[1:]]
    assert times == pytest.approx([round(t) for t in times], abs=0.01), times
    assert np.allclose(np.diff(times), 1.0, atol=0.01), times  # every keyframe, none skipped


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("not_video", "is not a video file"),
        ("corrupt", "is not a video file"),
        ("missing", "not found"),
    ],
)
def test_bad_files_fail_with_a_sentence_and_retry(
    media: MediaFactory, tmp_path: Path, kind: str, expected: str
) -> None:
    path = {
        "not_video": media.not_video,
        "corrupt": media.corrupt_clip,
        "missing": lambda: tmp_path / "nope.mp4",
    }[kind]()
    with running(open_source(camera(f"file:{path}"), backoff=(0.2, 0.4))) as sink:
        sink.wait(
            lambda c: sum(s.state == "failed" for s in c.statuses) >= 1 and len(c.statuses) >= 3,
            6,
            "failed twice (it retries)",
        )
    failed = next(s for s in sink.statuses if s.state == "failed")
    assert failed.last_error and expected in failed.last_error and str(path) in failed.last_error
    assert "retrying in" in failed.last_error


# ---------------------------------------------------------------------------- test pattern


@pytest.mark.slow
def test_test_pattern_camera_gives_h264_packets_and_frames() -> None:
    url = "test:walk?start=0.5&end=2&duration=2.4&gop=1"
    with running(open_source(camera(url, analytic_fps=5))) as sink:
        sink.wait(lambda c: len(c.packets) >= 75, 8, "3 s of test pattern")
    packets = sink.packets
    assert packets[0].keyframe and packets[0].stream.codec == "h264"
    assert packets[0].stream.extradata  # SPS/PPS found in the first keyframe
    keys = [p.pts_s for p in packets if p.keyframe]
    assert keys[:3] == pytest.approx([0.0, 1.0, 2.0], abs=0.05)
    assert packets[60].keyframe  # the loop at 2.4 s starts with a keyframe
    assert decodes_cleanly(packets) >= len(packets) - 1
    assert 12 <= len(sink.frames) <= 18
    assert sink.frames[0].image.shape == (180, 320)
    assert sink.frames[0].colour(640).shape == (360, 640, 3)
    moving = [f for f in sink.frames if 0.8 <= f.pts_s <= 1.8]
    still = [f for f in sink.frames if f.pts_s <= 0.3]
    assert moving and still
    # the walker is drawn: frames differ while it moves
    diff = np.abs(moving[-1].image.astype(int) - still[0].image.astype(int)).mean()
    assert diff > 1.0


def test_test_pattern_with_bad_parameters_fails_with_sentence() -> None:
    with running(open_source(camera("test:nowhere?x=1"), backoff=(5, 5))) as sink:
        failed = sink.wait_state("failed", 3)
    assert failed.last_error and "unknown scenario 'nowhere'" in failed.last_error


# ---------------------------------------------------------------------------- devices


def test_picamera2_missing_says_how_to_install() -> None:
    pytest.importorskip("av")
    try:
        import picamera2  # noqa: F401

        pytest.skip("picamera2 is installed here")
    except ImportError:
        pass
    with running(open_source(camera("picamera2:0"), backoff=(5, 5))) as sink:
        failed = sink.wait_state("failed", 3)
    assert failed.last_error and failed.last_error.startswith(MISSING_SENTENCE)


def test_v4l2_missing_device_says_so(tmp_path: Path) -> None:
    dev = "/dev/video-guetteur-test-missing"
    with running(open_source(camera(f"v4l2:{dev}"), backoff=(5, 5))) as sink:
        failed = sink.wait_state("failed", 3)
    assert failed.last_error and f"v4l2 device {dev} does not exist" in failed.last_error


# ---------------------------------------------------------------------------- fixtures


@pytest.mark.slow
def test_media_static_clip_moves_only_during_scripted_interval(media: MediaFactory) -> None:
    clip = media.h264_clip(duration=3.0, pattern="static", motion=[(1.0, 2.0)], gop_s=1.0)
    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 640, 360)
        tb = stream.time_base
        assert tb is not None
        frames = {round(float((f.pts or 0) * tb), 2): f.to_ndarray(format="gray")
                  for f in c.decode(stream)}  # fmt: skip
    assert len(frames) == 75
    before, during, after = frames[0.48], frames[1.48], frames[2.48]
    assert np.abs(during.astype(int) - before.astype(int)).max() > 100  # the box is there
    assert np.abs(after.astype(int) - before.astype(int)).mean() < 3  # only sensor noise
