"""Fragmented MP4 from a camera's own packets, without re-encoding: one stream epoch in, an init
segment (ftyp+moov) and CMAF fragments (moof+mdat pairs) out. No threads, no MQTT: the session
(``live/session.py``) feeds it and publishes what it makes.

- **Fragments** are made with FFmpeg's mp4 muxer in ``frag_every_frame`` mode (one moof+mdat
  per frame, written when the next frame arrives) and grouped here: this cuts exactly before
  keyframes and at the target duration (PyAV's muxing-only streams ignore ``frag_duration``),
  and gives CMAF chunks a low-latency player can use. Overhead: about 100 bytes per frame.
- **Parameter sets**: the muxer is always fed Annex B with the SPS/PPS (and VPS) in the first
  keyframe: length-prefixed packets (avcC/hvcC extradata, e.g. from MP4 files) are converted,
  and a keyframe without in-band parameter sets gets the ones from the extradata
  (``guetteur.media.bitstream``). PyAV then extracts them and the muxer writes avcC/hvcC
  itself. Works the same for H.264 and H.265.
"""

from __future__ import annotations

import io
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av

from guetteur.media.bitstream import AnnexBConverter, parse_extradata
from guetteur.media.types import EncodedPacket, StreamInfo

CONTENT_TYPE = "video/mp4"  # of init segments and fragments
LIVE_CODECS = ("h264", "hevc")

# ----------------------------------------------------------------------------------------------
# What the muxer is fed (pure)
# ----------------------------------------------------------------------------------------------


class AnnexBNormaliser:
    """Turns one stream epoch's packets into Annex B access units whose first keyframe carries
    the parameter sets (what PyAV needs to build avcC/hvcC for a muxing-only stream); later
    keyframes pass as they are (the init segment already describes the stream)."""

    def __init__(self, info: StreamInfo) -> None:
        self.converter = AnnexBConverter(parse_extradata(info.extradata, info.codec))
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    def convert(self, data: bytes, keyframe: bool) -> bytes | None:
        """Annex B bytes for the muxer; None for packets to skip (before the first keyframe that
        has, or can be given, its parameter sets). ValueError for a malformed packet."""
        if self._started:
            return self.converter.convert(data, keyframe, add_sets=False)[0]
        if not keyframe:
            return None
        out, described = self.converter.convert(data, keyframe)
        if not described:
            return None  # nothing describes the picture: wait for a keyframe with them
        self._started = True
        return out


# ----------------------------------------------------------------------------------------------
# MP4 boxes (pure)
# ----------------------------------------------------------------------------------------------


class BoxSplitter:
    """Cuts a byte stream written in arbitrary pieces into complete top-level ISO BMFF boxes."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self._buf += data
        boxes: list[tuple[str, bytes]] = []
        while len(self._buf) >= 8:
            size, kind = struct.unpack(">I4s", self._buf[:8])
            header = 8
            if size == 1:
                if len(self._buf) < 16:
                    break
                size = struct.unpack(">Q", self._buf[8:16])[0]
                header = 16
            if size < header:
                raise ValueError(f"invalid MP4 box size {size}")
            if len(self._buf) < size:
                break
            boxes.append((kind.decode("latin-1"), bytes(self._buf[:size])))
            del self._buf[:size]
        return boxes


def iter_boxes(data: bytes) -> Iterable[tuple[str, bytes]]:
    """Top-level boxes of a complete buffer (for viewers and tests)."""
    return BoxSplitter().feed(data)


# ----------------------------------------------------------------------------------------------
# Repackaging one stream epoch (PyAV at the edge)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleMeta:
    dts: int  # session time base ticks (rebased)
    keyframe: bool
    wallclock: float
    size: int = 0  # bytes of the camera's packet


@dataclass(frozen=True)
class Fragment:
    payload: bytes  # one or more moof+mdat pairs
    keyframe: bool  # starts with a keyframe
    wallclock: float  # of its first frame
    duration_s: float
    frames: int
    camera_bytes: int = 0  # bytes of the camera packets it carries


class _Sink(io.RawIOBase):
    def __init__(self, splitter: BoxSplitter) -> None:
        self.splitter = splitter
        self.boxes: list[tuple[str, bytes]] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.boxes.extend(self.splitter.feed(data))
        return len(data)


class FragmentGrouper:
    """Groups per-frame moof+mdat chunks into fragments: a fragment ends before a keyframe or
    when the next frame would make it ``target_s`` long (pure, no I/O)."""

    def __init__(self, time_base: Fraction, target_s: float) -> None:
        self.time_base = time_base
        self.target_ticks = max(1, int(target_s / time_base))
        self._chunks: list[bytes] = []
        self._metas: list[SampleMeta] = []

    def add(self, chunk: bytes, meta: SampleMeta) -> None:
        self._chunks.append(chunk)
        self._metas.append(meta)

    def cut_before(self, following: SampleMeta) -> Fragment | None:
        """Called with the frame just after the last added one: returns the finished fragment
        when ``following`` must start a new one."""
        if not self._metas:
            return None
        first = self._metas[0]
        if following.keyframe or following.dts - first.dts >= self.target_ticks:
            return self._take(following.dts)
        return None

    def flush(self) -> Fragment | None:
        """End the current fragment now, however short (the first one of a session: the
        viewer should not wait for the camera to fill it)."""
        if not self._metas:
            return None
        last = self._metas[-1]
        step = last.dts - self._metas[-2].dts if len(self._metas) > 1 else 0
        return self._take(last.dts + step)

    def _take(self, end_dts: int) -> Fragment:
        first = self._metas[0]
        frag = Fragment(
            payload=b"".join(self._chunks),
            keyframe=first.keyframe,
            wallclock=first.wallclock,
            duration_s=float((end_dts - first.dts) * self.time_base),
            frames=len(self._metas),
            camera_bytes=sum(m.size for m in self._metas),
        )
        self._chunks, self._metas = [], []
        return frag


class Repackager:
    """One stream epoch → an init segment and fragments, by remuxing (never re-encoding)."""

    def __init__(self, info: StreamInfo, fragment_s: float) -> None:
        if info.codec not in LIVE_CODECS:
            raise ValueError(f"the camera sends {info.codec}; live needs H.264 or H.265")
        self.info = info
        self.normaliser = AnnexBNormaliser(info)
        self._sink = _Sink(BoxSplitter())
        self._container: Any = av.open(
            self._sink,
            "w",
            format="mp4",
            container_options={
                "movflags": "empty_moov+default_base_moof+frag_every_frame",
                "flush_packets": "1",
            },
        )
        self._stream = self._container.add_mux_stream(
            info.codec, width=info.width, height=info.height
        )
        self._stream.time_base = info.time_base
        self._grouper = FragmentGrouper(info.time_base, fragment_s)
        self._pending: deque[SampleMeta] = deque()  # muxed, moof+mdat not written yet
        self._moof: bytes | None = None
        self._init_parts: list[bytes] = []
        self.init_segment: bytes | None = None
        self._base_dts: int | None = None
        self._last_dts: int | None = None
        self.dropped = 0

    def push(self, packet: EncodedPacket) -> list[Fragment]:
        """Mux one packet; returns the fragments it completed (usually none or one)."""
        data = self.normaliser.convert(packet.data, packet.keyframe)
        if data is None:
            self.dropped += 1
            return []
        if self._last_dts is not None and packet.dts <= self._last_dts:
            self.dropped += 1  # a timestamp going back would make the muxer fail
            return []
        if self._base_dts is None:
            self._base_dts = packet.dts
        self._last_dts = packet.dts
        dts = packet.dts - self._base_dts
        pts = max(packet.pts - self._base_dts, dts)
        meta = SampleMeta(dts, packet.keyframe, packet.wallclock, len(packet.data))
        avpacket = av.Packet(data)
        avpacket.pts = pts
        avpacket.dts = dts
        avpacket.time_base = self.info.time_base
        avpacket.is_keyframe = packet.keyframe
        if packet.duration:
            avpacket.duration = packet.duration
        avpacket.stream = self._stream
        self._pending.append(meta)
        self._container.mux(avpacket)
        return self._collect(meta)

    def _collect(self, newest: SampleMeta) -> list[Fragment]:
        out: list[Fragment] = []
        boxes, self._sink.boxes = self._sink.boxes, []
        for kind, box in boxes:
            if kind in ("ftyp", "moov"):
                self._init_parts.append(box)
                if kind == "moov":
                    self.init_segment = b"".join(self._init_parts)
            elif kind == "moof":
                self._moof = box
            elif kind == "mdat" and self._moof is not None:
                meta = self._pending.popleft()
                self._grouper.add(self._moof + box, meta)
                self._moof = None
        # Every frame muxed before ``newest`` has now been written: cut if ``newest`` opens a
        # new fragment.
        if self._pending and self._pending[0] is newest:
            frag = self._grouper.cut_before(newest)
            if frag is not None:
                out.append(frag)
        return out

    def flush(self) -> Fragment | None:
        """The frames written so far as a (short) fragment, if any."""
        return self._grouper.flush()

    def close(self) -> None:
        try:
            self._container.close()
        except Exception:  # the trailer is never sent; nothing to save
            pass


def same_epoch(a: StreamInfo, b: StreamInfo) -> bool:
    """True when ``b`` can follow ``a`` in one init segment (a source may learn the extradata
    after the first packets: that is not a new picture format)."""
    if a is b:
        return True
    return (
        a.codec == b.codec
        and a.width == b.width
        and a.height == b.height
        and a.time_base == b.time_base
        and (a.extradata is None or b.extradata is None or a.extradata == b.extradata)
    )
