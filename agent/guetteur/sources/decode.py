"""Helpers shared by the sources: which frames analytics need, turning one into a small BGR
image, keeping packet timestamps complete and continuous, and reusing ``StreamInfo`` objects.

Pure (no I/O) so they are unit-tested directly. Measured costs behind the choices are in
docs/sources.md (``bench/source_decode.py``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from guetteur.media.bitstream import first_slice, is_annexb
from guetteur.media.types import StreamInfo

if TYPE_CHECKING:
    import av


def analytic_size(width: int, height: int, analytic_width: int) -> tuple[int, int]:
    """Size of analysed frames: ``analytic_width`` wide (never wider than the source), height
    keeping the aspect ratio, both even (YUV 4:2:0 friendly)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad source size {width}x{height}")
    w = min(analytic_width, width)
    w -= w % 2
    h = max(2, round(height * w / width / 2) * 2)
    return max(2, w), h


def frame_to_bgr(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """Scale and convert in one libswscale pass (area averaging: no aliasing, and cheaper than
    ``to_ndarray("bgr24")`` at full size followed by ``cv2.resize``)."""
    w, h = size
    if frame.width == w and frame.height == h:
        out = frame.to_ndarray(format="bgr24")
    else:
        out = frame.reformat(width=w, height=h, format="bgr24", interpolation="AREA").to_ndarray()
    return np.ascontiguousarray(out)


# 8-bit planar YUV formats whose first plane is the luma (Y) plane; "j" formats are full range.
_PLANAR_YUV = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "nv12", "nv21"}
)
_FULL_RANGE = frozenset({"yuvj420p", "yuvj422p", "yuvj444p"})
_COLOR_RANGE_JPEG = 2  # AVCOL_RANGE_JPEG: full-range samples
# Limited-range (16..235) luma stretched to 0..255, as the BGR conversion does: thresholds in grey
# levels then mean the same on the luma path as on the colour path.
_LIMITED_TO_FULL = np.clip((np.arange(256) - 16) * 255.0 / 219.0 + 0.5, 0, 255).astype(np.uint8)
# Chroma estimate: one sample in _CHROMA_STEP x _CHROMA_STEP of each chroma plane.
_CHROMA_STEP = 8


def _plane(frame: av.VideoFrame, index: int) -> np.ndarray:
    """A read-only view of one plane of ``frame`` (no copy; rows may be padded)."""
    plane = frame.planes[index]
    flat: np.ndarray = np.frombuffer(memoryview(plane), np.uint8)
    rows: np.ndarray = flat.reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


def frame_to_luma(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """The analysed grey picture: the decoded frame's luma plane scaled by area averaging, in
    one libswscale pass to 8-bit grey (it reads the Y plane only: no colour conversion, which
    motion does not need; colour is rendered only for the few frames that become snapshots or
    detector input). Limited-range luma is stretched to full range, as the BGR conversion does,
    so thresholds in grey levels mean the same on both paths. Measured here: 0.13 ms of CPU for
    a 720p frame, against 0.16 ms for BGR and 0.5 ms for OpenCV's INTER_AREA on the plane."""
    w, h = size
    if frame.width == w and frame.height == h and frame.format.name in _PLANAR_YUV:
        y = _plane(frame, 0).copy()  # the decoder reuses its buffers: keep our own
        if frame.format.name not in _FULL_RANGE and frame.color_range != _COLOR_RANGE_JPEG:
            cv2.LUT(y, _LIMITED_TO_FULL, dst=y)
        return y
    reformatter = getattr(_reformatters, "luma", None)
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = _reformatters.luma = VideoReformatter()
    out = reformatter.reformat(frame, width=w, height=h, format="gray", interpolation="AREA")
    return np.ascontiguousarray(out.to_ndarray())


# One libswscale context per thread for the luma pass: ``frame.reformat`` builds a new one for
# every call (its filter set-up costs as much as the scaling); a context is never shared by two
# threads.
_reformatters = threading.local()


def chroma_level(frame: av.VideoFrame) -> float | None:
    """Colour saturation of a decoded frame: mean |U-128| + |V-128| over a sparse grid of its
    chroma planes (about 0-2 for an infrared picture, which is grey; 5-30 for a colour street).
    None for formats without separate chroma planes."""
    if frame.format.name not in _PLANAR_YUV or frame.format.name in ("nv12", "nv21"):
        return None
    step = _CHROMA_STEP
    u = _plane(frame, 1)[::step, ::step].astype(np.int16)
    v = _plane(frame, 2)[::step, ::step].astype(np.int16)
    return float(np.abs(u - 128).mean() + np.abs(v - 128).mean())


def bgr_chroma_level(image: np.ndarray) -> float:
    """The same measure as ``chroma_level`` for a BGR picture (sources that only have colour)."""
    sample = np.ascontiguousarray(image[::4, ::4])
    yuv = cv2.cvtColor(sample, cv2.COLOR_BGR2YUV).astype(np.int16)
    # OpenCV's U/V are scaled like BT.601 Cb/Cr around 128.
    return float(np.abs(yuv[:, :, 1] - 128).mean() + np.abs(yuv[:, :, 2] - 128).mean())


def renderer(frame: av.VideoFrame) -> Callable[[int], np.ndarray]:
    """Renders ``frame`` — the decoded picture at the stream's own resolution — as BGR at most
    ``width`` wide, on demand: snapshots come from the full picture, not the small analytic one,
    and only the few frames that become snapshots pay for the conversion.

    The render may be called from several threads at once (the analysis thread for an event's
    snapshot, command workers for ``snapshot`` commands). A PyAV frame keeps one libswscale
    context of its own, and two threads scaling the same frame crash the process (SIGSEGV), so
    the frame never leaves this closure: one render at a time, each with its own reformatter,
    and every caller gets its own copy of the pixels (the last one is kept for the next)."""
    lock = threading.Lock()
    done: dict[int, np.ndarray] = {}

    def render(width: int) -> np.ndarray:
        with lock:
            image = done.get(width)
            if image is None:
                size = analytic_size(frame.width, frame.height, width)
                scaled = VideoReformatter().reformat(
                    frame, width=size[0], height=size[1], format="bgr24", interpolation="AREA"
                )
                image = np.ascontiguousarray(scaled.to_ndarray())
                done.clear()
                done[width] = image
            return image.copy()

    return render


class FrameSampler:
    """Picks frames at ``fps`` out of a faster stream, on a grid anchored at the first frame, by
    stream time (so a burst of late packets does not become a burst of analysed frames)."""

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError("analytic fps must be > 0")
        self.period = 1.0 / fps
        self.next_t: float | None = None

    def take(self, t: float, slack: float = 0.002) -> bool:
        """Whether to analyse the frame at stream time ``t``. ``slack``: how early a frame may
        be and still count for the next grid point — half the spacing of the frames offered
        (the default suits every-frame decoding; when only keyframes are decoded, pass half the
        keyframe interval so that each keyframe counts)."""
        if self.next_t is None or t < self.next_t - 10 * self.period:
            self.next_t = t  # first frame, or time went back (new stream): re-anchor
        if t + slack < self.next_t:
            return False
        self.next_t += self.period
        if self.next_t <= t:  # we fell behind (gap in the stream): restart the grid from here
            self.next_t = t + self.period
        return True

    def reset(self) -> None:
        self.next_t = None


class KeyframeClock:
    """Measures the keyframe interval from the packets' key flags."""

    def __init__(self) -> None:
        self._last_key_t: float | None = None
        self.interval_s: float | None = None

    def packet(self, t: float, keyframe: bool) -> None:
        if not keyframe:
            return
        if self._last_key_t is not None and t > self._last_key_t:
            self.interval_s = t - self._last_key_t
        self._last_key_t = t

    def reset(self) -> None:
        self._last_key_t = None


class DecodePlan:
    """What to decode for analytics, given the analytic and stream rates.

    - keyframes only, when analytics need no more than one frame per GOP (no P-frame is decoded:
      the cheapest case, e.g. ``analytic_fps`` 0.5 with a 2 s GOP);
    - otherwise every frame must be decoded (P-frames reference each other), but the decoder may
      drop non-reference frames (``skip_frame=NONREF``: B-frames, SVC-T layers) when they are at
      most two thirds of the stream, i.e. when ``analytic_fps * 3 <= stream fps``;
    - in every case only the sampled frames are scaled/converted (the costly step).
    """

    def __init__(self, analytic_fps: float) -> None:
        self.analytic_fps = analytic_fps

    def keyframes_only(self, keyframe_interval_s: float | None) -> bool:
        if keyframe_interval_s is None:
            return False
        return keyframe_interval_s * self.analytic_fps <= 1.05

    def skip_nonref(self, stream_fps: float | None) -> bool:
        return stream_fps is not None and self.analytic_fps * 3 <= stream_fps


class Timeline:
    """Makes packet timestamps complete, monotonic and continuous for the life of a source.

    Cameras and servers send packets without pts/dts (GStreamer: dts missing for the whole first
    GOP), restart at 0 on every reconnection, and a looped file restarts at 0 on every pass. The
    recorder and clips want one increasing timeline, so each connection (``new_epoch``) is shifted
    to start where the previous one ended, plus the wall-clock gap (or one frame for a loop).
    Timestamps are kept in the current connection's time base.
    """

    def __init__(self) -> None:
        self.time_base: Fraction | None = None
        self.frame_ticks = 1
        self._offset = 0
        self._need_rebase = True
        self._gap_s: float | None = None
        self._raw_last_dts: int | None = None
        self._last_dts_s: Fraction | None = None  # last output dts, in seconds
        self._last_wall: float | None = None
        self.last_pts: int | None = None
        self.last_dts: int | None = None

    def new_epoch(self, time_base: Fraction, fps: float | None, gap_s: float | None) -> None:
        """A new connection (or loop pass). ``gap_s``: stream time to leave between the last
        packet of the previous epoch and the first of this one; None = the wall-clock gap."""
        self.time_base = time_base
        fps = fps if fps and fps > 0 else 25.0
        self.frame_ticks = max(1, round(1 / (fps * time_base)))
        self._need_rebase = True
        self._gap_s = gap_s
        self._raw_last_dts = None
        if self._last_dts_s is not None:
            self.last_dts = math.floor(self._last_dts_s / time_base)
            self.last_pts = self.last_dts

    def fix(self, pts: int | None, dts: int | None, wallclock: float) -> tuple[int, int]:
        """Output ``(pts, dts)`` for one packet of the current epoch."""
        if self.time_base is None:
            raise RuntimeError("Timeline.new_epoch must be called first")
        # Complete: dts from pts (camera streams have no B-frames), pts from dts, both from the
        # previous packet + one frame when neither is known.
        if dts is None:
            dts = pts
        if pts is None:
            pts = dts
        if pts is None or dts is None:
            guess = (self._raw_last_dts + self.frame_ticks) if self._raw_last_dts is not None else 0
            pts = dts = guess
        self._raw_last_dts = dts
        if self._need_rebase:
            self._need_rebase = False
            if self.last_dts is None:
                self._offset = -dts
            else:
                if self._gap_s is None and self._last_wall is not None:
                    gap_ticks = round(max(0.0, wallclock - self._last_wall) / self.time_base)
                else:
                    gap_ticks = round((self._gap_s or 0.0) / self.time_base)
                self._offset = self.last_dts + max(self.frame_ticks, gap_ticks) - dts
        out_dts = dts + self._offset
        if self.last_dts is not None and out_dts <= self.last_dts:
            out_dts = self.last_dts + 1  # keep dts strictly increasing (muxers insist)
        out_pts = max(pts + self._offset, out_dts)
        self.last_dts = out_dts
        self.last_pts = out_pts
        self._last_dts_s = out_dts * self.time_base
        self._last_wall = wallclock
        return out_pts, out_dts


class StreamInfoCache:
    """Hands out the same ``StreamInfo`` object while codec, size, time base and parameter sets
    stay the same (a reconnection to an unchanged camera is the same stream epoch), and a new one
    when any of them changes (recorders then start a new segment)."""

    def __init__(self) -> None:
        self.current: StreamInfo | None = None

    def get(
        self,
        codec: str,
        width: int,
        height: int,
        time_base: Fraction,
        fps: float | None,
        extradata: bytes | None,
    ) -> StreamInfo:
        cur = self.current
        if (
            cur is not None
            and cur.codec == codec
            and cur.width == width
            and cur.height == height
            and cur.time_base == time_base
            and (extradata is None or cur.extradata is None or cur.extradata == extradata)
        ):
            if cur.extradata is None and extradata:
                cur = StreamInfo(codec, width, height, time_base, cur.fps or fps, extradata)
                self.current = cur
            return cur
        self.current = StreamInfo(codec, width, height, time_base, fps, extradata or None)
        return self.current


@dataclass
class AccessUnit:
    """One whole encoded picture, with the demuxer's raw timestamps (possibly None)."""

    data: bytes
    pts: int | None
    dts: int | None
    keyframe: bool
    duration: int = 0


class AccessUnitAssembler:
    """Joins the pieces of one picture into one packet.

    Cameras often cut a picture into several slices, and FFmpeg's RTSP demuxer may hand them on
    as separate packets — seen with GStreamer's server, whose ``h264parse`` repeats SPS/PPS
    before every IDR slice, which makes FFmpeg's parser (rightly, by the letter of H.264 7.4.1.2.3)
    start a new access unit in the middle of the picture. A decoder fed half a picture shows a
    green lower half, and a recorder would store two samples for one frame.

    Rule: a packet whose first slice is not the first slice of a picture continues the previous
    packet; a packet without slices (parameter sets sent apart) is joined to the picture that
    follows it. A picture is handed on when the next one starts: one frame of delay, for Annex B
    streams only. Bytes are joined as received, never rewritten."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.pending: AccessUnit | None = None
        self._pending_has_slice = False

    def push(
        self, data: bytes, pts: int | None, dts: int | None, keyframe: bool, duration: int = 0
    ) -> list[AccessUnit]:
        first = first_slice(data, self.codec)
        if not is_annexb(data):
            out = self.flush()
            out.append(AccessUnit(data, pts, dts, keyframe, duration))
            return out
        p = self.pending
        joins = p is not None and (
            (first is False) or (not self._pending_has_slice and first is not None)
        )
        if p is not None and joins:
            self.pending = AccessUnit(
                p.data + data,
                p.pts if p.pts is not None else pts,
                p.dts if p.dts is not None else dts,
                p.keyframe or keyframe,
                p.duration or duration,
            )
            self._pending_has_slice = self._pending_has_slice or first is not None
            return []
        out = self.flush()
        self.pending = AccessUnit(data, pts, dts, keyframe, duration)
        self._pending_has_slice = first is not None
        return out

    def flush(self) -> list[AccessUnit]:
        if self.pending is None:
            return []
        out, self.pending = [self.pending], None
        self._pending_has_slice = False
        return out


def yuv420_luma(
    buffer: np.ndarray, width: int, height: int, stride: int | None = None
) -> tuple[np.ndarray, float]:
    """(luma plane stretched to full range, chroma level) of a planar YUV 4:2:0 buffer laid out
    like ``yuv420_to_bgr``'s: the analysed picture without any colour conversion."""
    stride = stride or width
    flat = np.ascontiguousarray(buffer).reshape(-1)
    y_size = stride * height
    c_stride, c_h, c_w = stride // 2, height // 2, width // 2
    c_size = c_stride * c_h
    if flat.size < y_size + 2 * c_size:
        raise ValueError(
            f"YUV420 buffer of {flat.size} bytes is too small for {width}x{height} stride {stride}"
        )
    y = cv2.LUT(flat[:y_size].reshape(height, stride)[:, :width], _LIMITED_TO_FULL)
    step = _CHROMA_STEP // 2
    u = flat[y_size : y_size + c_size].reshape(c_h, c_stride)[::step, :c_w:step].astype(np.int16)
    v = flat[y_size + c_size : y_size + 2 * c_size].reshape(c_h, c_stride)[::step, :c_w:step]
    chroma = float(np.abs(u - 128).mean() + np.abs(v.astype(np.int16) - 128).mean())
    return y, chroma


def yuv420_to_bgr(
    buffer: np.ndarray, width: int, height: int, stride: int | None = None
) -> np.ndarray:
    """BGR image from a planar YUV 4:2:0 (I420) buffer whose rows may be padded to ``stride``
    bytes (picamera2's lores stream: shape ``(height * 3 // 2, stride)``)."""
    stride = stride or width
    flat = np.ascontiguousarray(buffer).reshape(-1)
    y_size = stride * height
    c_stride, c_h, c_w = stride // 2, height // 2, width // 2
    c_size = c_stride * c_h
    if flat.size < y_size + 2 * c_size:
        raise ValueError(
            f"YUV420 buffer of {flat.size} bytes is too small for {width}x{height} stride {stride}"
        )
    y = flat[:y_size].reshape(height, stride)[:, :width]
    u = flat[y_size : y_size + c_size].reshape(c_h, c_stride)[:, :c_w]
    v = flat[y_size + c_size : y_size + 2 * c_size].reshape(c_h, c_stride)[:, :c_w]
    i420 = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(
        height * 3 // 2, width
    )
    return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)


class RateMeter:
    """Packets per second over a sliding window of wall-clock time."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: list[float] = []

    def tick(self, t: float) -> None:
        self._times.append(t)
        cut = t - self.window_s
        if self._times[0] < cut:
            keep = next((i for i, x in enumerate(self._times) if x >= cut), len(self._times))
            del self._times[:keep]

    def rate(self) -> float | None:
        if len(self._times) < 3:
            return None
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else None

    def reset(self) -> None:
        self._times.clear()
