"""On-demand live sessions: the camera's own packets, repackaged as fragmented MP4, over MQTT.

Data flow, one way::

    source thread ──on_packet──► LiveHub (last GOP cached) ──► LiveSession queue
    LiveSession thread: Annex B normalisation ─► PyAV mp4 muxer (no re-encode) ─► box splitter
        ─► fragment grouping ─► link.publish_raw({root}/{gw}/cam/{cam}/live/{session})

- **Instant start**: every ``LiveHub`` keeps the packets since the last keyframe; a new session
  starts by muxing that GOP, so the first fragment (starting on a keyframe) leaves at once and
  the viewer does not wait for the camera's next keyframe. The price: the picture starts up to
  one GOP behind the live edge (timestamps are kept, never rewritten).
- **Messages** on the session topic (MQTT 5 user properties say what each one is):

  - ``kind=init``: the init segment (ftyp+moov), QoS 1 and **retained**, with ``init`` = the
    init segment id (``{session}.{n}``), ``codec``, ``width``, ``height``;
  - ``kind=fragment``: one CMAF fragment (one or more moof+mdat pairs, about
    ``LiveConfig.fragment_s`` long, always cut before a keyframe), QoS 0, with ``init`` (the
    init segment it needs), ``seq`` (per session, +1 per fragment), ``key`` (``1`` when it
    starts with a keyframe: where a late or interrupted viewer may start decoding), ``t``
    (UTC ISO 8601 ms of its first frame) and ``dur`` (seconds);
  - ``kind=end``: an empty retained payload (it also deletes the retained init segment), with
    ``reason`` (``stopped``, ``lease_expired``, ``shutdown``, ``error``).

- **Late subscribers** get the init segment from the broker because it is retained: no
  periodic republishing (that would cost bandwidth on a metered link for every session, all
  the time), and a subscriber joining at any moment, or re-subscribing after a reconnection,
  has the right init segment before the next fragment. It is published with QoS 1 so that a
  link drop cannot lose the one message without which nothing decodes; it is published again
  after every link reconnection (the broker may have lost it). Every fragment names its init
  segment id, so a viewer can tell fragments of a new stream epoch (the camera changed codec
  or size) and must wait for a ``key=1`` fragment after a ``seq`` gap. The requester itself
  subscribes *before* live.start, with a session id of its own choosing (field ``session``),
  so it receives the cached GOP fragments too (QoS 0 messages sent before a subscription are
  never delivered).
- **Fragments** are made with FFmpeg's mp4 muxer in ``frag_every_frame`` mode (one moof+mdat
  per frame, written when the next frame arrives) and grouped here: this cuts exactly before
  keyframes and at the target duration (PyAV's muxing-only streams ignore ``frag_duration``),
  and gives CMAF chunks a low-latency player can use. Overhead: about 100 bytes per frame.
- **Parameter sets**: the muxer is always fed Annex B with the SPS/PPS (and VPS) in the first
  keyframe: length-prefixed packets (avcC/hvcC extradata, e.g. from MP4 files) are converted,
  and a keyframe without in-band parameter sets gets the ones from the extradata. PyAV then
  extracts them and the muxer writes avcC/hvcC itself. Works the same for H.264 and H.265.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, Protocol

import av
from pydantic import BaseModel, ConfigDict, Field

from guetteur.config import CameraConfig, LiveConfig
from guetteur.media.types import EncodedPacket, StreamInfo
from guetteur.timeutil import iso_ms
from guetteur.uplink import protocol
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.commands import CommandContext, CommandDispatcher, CommandError
from guetteur.uplink.protocol import ErrorCode, Topics

log = logging.getLogger(__name__)

CONTENT_TYPE = "video/mp4"
LIVE_CODECS = ("h264", "hevc")

# ----------------------------------------------------------------------------------------------
# NAL units (pure)
# ----------------------------------------------------------------------------------------------

_START4 = b"\x00\x00\x00\x01"


def annexb_units(data: bytes) -> list[bytes]:
    """Split an Annex B access unit into NAL units (without start codes)."""
    units: list[bytes] = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        j = data.find(b"\x00\x00\x01", start)
        end = len(data) if j < 0 else j
        unit = data[start:end]
        if j >= 0 and unit.endswith(b"\x00"):  # the next start code was 4 bytes long
            unit = unit.rstrip(b"\x00")
        if unit:
            units.append(unit)
        i = j
    return units


def length_prefixed_units(data: bytes, length_size: int) -> list[bytes]:
    """Split a length-prefixed (MP4-style) access unit; raises ValueError when it is not one."""
    units: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + length_size > len(data):
            raise ValueError("truncated NAL length")
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > len(data):
            raise ValueError("NAL length runs past the packet")
        units.append(data[pos : pos + size])
        pos += size
    return units


def nal_type(unit: bytes, codec: str) -> int:
    return (unit[0] >> 1) & 0x3F if codec == "hevc" else unit[0] & 0x1F


def parameter_set_types(codec: str) -> frozenset[int]:
    """NAL unit types of the parameter sets: H.264 SPS/PPS, HEVC VPS/SPS/PPS."""
    return frozenset({32, 33, 34}) if codec == "hevc" else frozenset({7, 8})


def _sps_type(codec: str) -> int:
    return 33 if codec == "hevc" else 7


@dataclass(frozen=True)
class Bitstream:
    """How a stream's packets are framed, read from its extradata."""

    length_size: int  # 0 = Annex B; else the NAL length field size of avcC/hvcC
    parameter_sets: tuple[bytes, ...]  # NAL units (no start codes) from the extradata


def parse_extradata(extradata: bytes | None, codec: str) -> Bitstream:
    """avcC, hvcC or Annex B extradata → framing and parameter sets (other NAL units, such as
    the SEI x265 stores in hvcC, are left out). ValueError if unreadable."""
    framing = _parse_extradata(extradata, codec)
    kinds = parameter_set_types(codec)
    sets = tuple(u for u in framing.parameter_sets if nal_type(u, codec) in kinds)
    return Bitstream(framing.length_size, sets)


def _parse_extradata(extradata: bytes | None, codec: str) -> Bitstream:
    if not extradata:
        return Bitstream(0, ())
    if extradata[0] != 1:  # Annex B parameter sets (RTSP sprop-parameter-sets, or in-band)
        return Bitstream(0, tuple(annexb_units(extradata)))
    if codec == "h264":
        if len(extradata) < 7:
            raise ValueError("avcC extradata is too short")
        length_size = (extradata[4] & 0x03) + 1
        sets: list[bytes] = []
        pos = 5
        count = extradata[pos] & 0x1F
        pos += 1
        for kind_count in (count, None):
            if kind_count is None:
                if pos >= len(extradata):
                    break
                kind_count = extradata[pos]
                pos += 1
            for _ in range(kind_count):
                size = int.from_bytes(extradata[pos : pos + 2], "big")
                sets.append(extradata[pos + 2 : pos + 2 + size])
                pos += 2 + size
        return Bitstream(length_size, tuple(s for s in sets if s))
    if codec == "hevc":
        if len(extradata) < 23:
            raise ValueError("hvcC extradata is too short")
        length_size = (extradata[21] & 0x03) + 1
        sets = []
        pos = 23
        for _ in range(extradata[22]):
            pos += 1  # array_completeness, NAL type
            n = int.from_bytes(extradata[pos : pos + 2], "big")
            pos += 2
            for _ in range(n):
                size = int.from_bytes(extradata[pos : pos + 2], "big")
                sets.append(extradata[pos + 2 : pos + 2 + size])
                pos += 2 + size
        return Bitstream(length_size, tuple(s for s in sets if s))
    raise ValueError(f"codec {codec} is not H.264 or H.265")


class AnnexBNormaliser:
    """Turns one stream epoch's packets into Annex B access units whose first keyframe carries
    the parameter sets (what PyAV needs to build avcC/hvcC for a muxing-only stream)."""

    def __init__(self, info: StreamInfo) -> None:
        self.codec = info.codec
        self.bitstream = parse_extradata(info.extradata, info.codec)
        self._sets_types = parameter_set_types(info.codec)
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    def convert(self, data: bytes, keyframe: bool) -> bytes | None:
        """Annex B bytes for the muxer; None for packets to skip (before the first keyframe that
        has, or can be given, its parameter sets)."""
        length_size = self.bitstream.length_size
        if self._started and not length_size:
            return data  # Annex B already: passed through without a copy
        units = length_prefixed_units(data, length_size) if length_size else annexb_units(data)
        if not self._started:
            if not keyframe:
                return None
            has_sps = any(nal_type(u, self.codec) == _sps_type(self.codec) for u in units)
            if not has_sps:
                if not self.bitstream.parameter_sets:
                    return None  # nothing describes the picture: wait for a keyframe with them
                units = [*self.bitstream.parameter_sets, *units]
            elif not length_size:
                self._started = True
                return data
            self._started = True
        return b"".join(_START4 + u for u in units)


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


# ----------------------------------------------------------------------------------------------
# Per-camera hub: fed by the source thread, keeps the last GOP
# ----------------------------------------------------------------------------------------------

Listener = Callable[[EncodedPacket], None]

_RATE_WINDOW_S = 5.0
_MAX_QUEUED_PACKETS = 1500  # a minute at 25 fps: beyond it a session restarts at a keyframe


@dataclass(frozen=True)
class HubState:
    stream: StreamInfo | None
    silent_s: float | None  # seconds since the last packet; None = never had one
    has_keyframe: bool
    gop_frames: int
    gop_s: float  # stream time covered by the cached GOP
    bytes_per_s: float  # measured over the last few seconds
    listeners: int


class LiveHub:
    """The live tap of one camera stream. ``on_packet`` runs on the source thread and only
    appends to lists under a lock; all the muxing happens on the sessions' own threads."""

    def __init__(self, camera: str, max_gop_bytes: int = 32 << 20) -> None:
        self.camera = camera
        self.max_gop_bytes = max_gop_bytes
        self._lock = threading.Lock()
        self._gop: list[EncodedPacket] = []
        self._gop_bytes = 0
        self._listeners: tuple[Listener, ...] = ()
        self._last_mono: float | None = None
        self._rate: deque[tuple[float, int]] = deque()
        self._rate_bytes = 0
        self._stream: StreamInfo | None = None

    def on_packet(self, packet: EncodedPacket) -> None:
        now = time.monotonic()
        size = len(packet.data)
        with self._lock:
            self._last_mono = now
            self._stream = packet.stream
            if packet.keyframe:
                self._gop = [packet]
                self._gop_bytes = size
            elif self._gop:
                if self._gop_bytes + size > self.max_gop_bytes:
                    self._gop = []  # no instant start until the next keyframe
                    self._gop_bytes = 0
                else:
                    self._gop.append(packet)
                    self._gop_bytes += size
            self._rate.append((now, size))
            self._rate_bytes += size
            while self._rate and now - self._rate[0][0] > _RATE_WINDOW_S:
                self._rate_bytes -= self._rate.popleft()[1]
            listeners = self._listeners
        for listener in listeners:
            listener(packet)

    def attach(self, listener: Listener) -> list[EncodedPacket]:
        """Start delivering packets to ``listener``; returns the cached GOP, which precedes the
        first delivered packet with no gap and no repeat."""
        with self._lock:
            self._listeners = (*self._listeners, listener)
            return list(self._gop)

    def detach(self, listener: Listener) -> None:
        with self._lock:
            # ``!=``, not ``is not``: each ``obj.method`` access makes a new bound method
            self._listeners = tuple(x for x in self._listeners if x != listener)

    def state(self) -> HubState:
        now = time.monotonic()
        with self._lock:
            gop = self._gop
            silent = None if self._last_mono is None else now - self._last_mono
            span = (
                float((gop[-1].dts - gop[0].dts) * gop[0].stream.time_base) if len(gop) > 1 else 0.0
            )
            elapsed = now - self._rate[0][0] if self._rate else 0.0
            rate = self._rate_bytes / max(elapsed, 1.0) if self._rate else 0.0
            return HubState(
                stream=self._stream,
                silent_s=silent,
                has_keyframe=bool(gop),
                gop_frames=len(gop),
                gop_s=span,
                bytes_per_s=rate,
                listeners=len(self._listeners),
            )


# ----------------------------------------------------------------------------------------------
# Sessions
# ----------------------------------------------------------------------------------------------


class LiveLink(Protocol):
    """What live needs of guetteur.uplink.link.Link."""

    topics: Topics

    def publish_raw(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        content_type: str | None = None,
        user_props: dict[str, str] | None = None,
    ) -> Any: ...


class LiveStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    camera: str = Field(min_length=1, max_length=64)
    stream: Literal["main", "sub"] = "main"
    lease_s: float | None = None
    operator: str | None = Field(None, max_length=128)
    session: str | None = Field(
        None, description="Session id chosen by the requester, so it can subscribe first"
    )


class LiveRenew(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session: str = Field(min_length=1, max_length=64)
    lease_s: float | None = None
    operator: str | None = Field(None, max_length=128)


class LiveStop(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session: str = Field(min_length=1, max_length=64)
    operator: str | None = Field(None, max_length=128)


@dataclass
class SessionStats:
    bytes: int = 0  # published: init segments and fragments
    init_bytes: int = 0  # of which init segments
    packet_bytes: int = 0  # camera bytes in the published fragments (bytes / this = overhead)
    fragments: int = 0
    inits: int = 0
    skipped_fragments: int = 0
    first_fragment_mono: float | None = None


@dataclass
class LiveSession:
    """One viewer's session. Its thread muxes and publishes; the service ends it."""

    id: str
    camera: str
    stream: str  # "main" or "sub": what is actually served
    hub: LiveHub
    link: LiveLink
    topic: str
    client_id: str
    operator: str | None
    lease_s: float
    fragment_s: float
    expires_mono: float
    started_wall: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    stats: SessionStats = field(default_factory=SessionStats)
    init_id: str | None = None

    def __post_init__(self) -> None:
        self._queue: deque[EncodedPacket] = deque()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"live-{self.camera}-{self.id[:8]}", daemon=True
        )
        self._repack: Repackager | None = None
        self._epoch = 0
        self._init_payload: bytes | None = None
        self._init_props: dict[str, str] = {}
        self._need_key = False
        self._seq = 0
        self._publish_lock = threading.Lock()
        self._overflowed = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        backlog = self.hub.attach(self._deliver)
        with self._wake:
            self._queue.extendleft(reversed(backlog))
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.hub.detach(self._deliver)
        self._stop.set()
        with self._wake:
            self._wake.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._repack is not None:
            self._repack.close()
            self._repack = None

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _deliver(self, packet: EncodedPacket) -> None:  # source thread: keep it cheap
        with self._wake:
            if len(self._queue) >= _MAX_QUEUED_PACKETS:
                # the session thread is starved: drop the backlog, restart at a keyframe
                self._queue.clear()
                self._overflowed = True
            self._queue.append(packet)
            self._wake.notify()

    # -- the session thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                if not self._queue:
                    self._wake.wait(0.5)
                batch = list(self._queue)
                self._queue.clear()
                overflowed, self._overflowed = self._overflowed, False
            if overflowed and self._repack is not None:
                log.warning(
                    "live %s: camera %s: session fell %d packets behind (CPU starved); "
                    "restarting at the next keyframe",
                    self.id, self.camera, _MAX_QUEUED_PACKETS,
                )  # fmt: skip
                self._repack.close()
                self._repack = None
            for packet in batch:
                if self._stop.is_set():
                    return
                self._process(packet)
            if self._seq == 0 and self._repack is not None:
                # Caught up with the cached GOP: send what is muxed at once, even if shorter
                # than fragment_s (a GOP that just began would otherwise hold the first
                # picture back until the camera has filled a whole fragment).
                first = self._repack.flush()
                if first is not None:
                    self._publish_fragment(first)

    def _process(self, packet: EncodedPacket) -> None:
        repack = self._repack
        if repack is None or not same_epoch(repack.info, packet.stream):
            if not packet.keyframe:
                return  # a new epoch starts on a keyframe
            if repack is not None:
                repack.close()
                log.info(
                    "live %s: camera %s changed stream format (%s %dx%d); new init segment",
                    self.id, self.camera, packet.stream.codec, packet.stream.width,
                    packet.stream.height,
                )  # fmt: skip
            try:
                repack = Repackager(packet.stream, self.fragment_s)
            except (ValueError, av.FFmpegError) as exc:
                log.error("live %s: camera %s cannot be streamed: %s", self.id, self.camera, exc)
                self._repack = None
                return
            self._repack = repack
            self._epoch += 1
            self.init_id = f"{self.id}.{self._epoch}"
        try:
            fragments = repack.push(packet)
        except (ValueError, av.FFmpegError) as exc:
            log.warning(
                "live %s: camera %s packet could not be repackaged (%s); restarting at the next "
                "keyframe with a new init segment",
                self.id, self.camera, exc,
            )  # fmt: skip
            repack.close()
            self._repack = None
            return
        if repack.init_segment is not None and self._init_payload is not repack.init_segment:
            self._publish_init(repack)
        for frag in fragments:
            self._publish_fragment(frag)

    def _publish_init(self, repack: Repackager) -> None:
        assert repack.init_segment is not None and self.init_id is not None
        info = repack.info
        with self._publish_lock:
            self._init_payload = repack.init_segment
            self._init_props = {
                "kind": "init",
                "session": self.id,
                "init": self.init_id,
                "codec": info.codec,
                "width": str(info.width),
                "height": str(info.height),
            }
        self.republish_init()
        self.stats.inits += 1

    def republish_init(self) -> None:
        """(Re)publish the retained init segment: at each new epoch and after a reconnection."""
        with self._publish_lock:
            payload, props = self._init_payload, dict(self._init_props)
        if payload is None:
            return
        self.link.publish_raw(
            self.topic, payload, qos=1, retain=True, content_type=CONTENT_TYPE, user_props=props
        )
        self.stats.bytes += len(payload)
        self.stats.init_bytes += len(payload)

    def _publish_fragment(self, frag: Fragment) -> None:
        if self._need_key and not frag.keyframe:
            self.stats.skipped_fragments += 1
            return
        self._seq += 1
        props = {
            "kind": "fragment",
            "session": self.id,
            "init": self.init_id or "",
            "seq": str(self._seq),
            "key": "1" if frag.keyframe else "0",
            "t": iso_ms(frag.wallclock),
            "dur": f"{frag.duration_s:.3f}",
        }
        info = self.link.publish_raw(
            self.topic, frag.payload, qos=0, content_type=CONTENT_TYPE, user_props=props
        )
        if getattr(info, "rc", 0) != 0:
            # not sent (link down): the viewer would miss references; resume at a keyframe
            self._need_key = True
            self.stats.skipped_fragments += 1
            return
        self._need_key = False
        self.stats.bytes += len(frag.payload)
        self.stats.packet_bytes += frag.camera_bytes
        self.stats.fragments += 1
        if self.stats.first_fragment_mono is None:
            self.stats.first_fragment_mono = time.monotonic()

    def publish_end(self, reason: str) -> None:
        """Empty retained message: deletes the retained init and tells viewers why it ended."""
        self.link.publish_raw(
            self.topic,
            b"",
            qos=1,
            retain=True,
            content_type=CONTENT_TYPE,
            user_props={"kind": "end", "session": self.id, "reason": reason},
        )


# ----------------------------------------------------------------------------------------------
# Service: commands, limits, leases, audit
# ----------------------------------------------------------------------------------------------


class LiveService:
    """Handles live.start / live.renew / live.stop and ends sessions whose lease passed."""

    def __init__(
        self,
        config: LiveConfig,
        cameras: list[CameraConfig],
        link: LiveLink,
        audit: AuditTrail,
        hubs: dict[str, LiveHub],
        sub_hubs: dict[str, LiveHub] | None = None,
    ) -> None:
        self.config = config
        self.cameras = {c.id: c for c in cameras if c.enabled}
        self.link = link
        self.audit = audit
        self.hubs = hubs
        self.sub_hubs = dict(sub_hubs or {})
        self._sessions: dict[str, LiveSession] = {}
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._closing = threading.Event()

    # -- wiring ----------------------------------------------------------------------------

    def register(self, dispatcher: CommandDispatcher) -> None:
        dispatcher.register("live.start", LiveStart, self.handle_start)
        # renewals come every few seconds: the session's own audit record covers them
        dispatcher.register("live.renew", LiveRenew, self.handle_renew, audited=False)
        dispatcher.register("live.stop", LiveStop, self.handle_stop)

    def start(self) -> None:
        """Start the lease ticker (and re-publish init segments after link reconnections)."""
        if self._ticker is not None:
            return
        self._closing.clear()
        self._ticker = threading.Thread(target=self._tick, name="live-leases", daemon=True)
        self._ticker.start()
        add_listener = getattr(self.link, "add_connect_listener", None)
        if callable(add_listener):
            add_listener(self._on_reconnect)

    def close(self) -> None:
        self._closing.set()
        if self._ticker is not None:
            self._ticker.join(2.0)
            self._ticker = None
        for session in self.sessions():
            self._end(session.id, "shutdown")

    def sessions(self) -> list[LiveSession]:
        with self._lock:
            return list(self._sessions.values())

    def session(self, session_id: str) -> LiveSession | None:
        with self._lock:
            return self._sessions.get(session_id)

    # -- commands --------------------------------------------------------------------------

    def handle_start(self, ctx: CommandContext, req: LiveStart) -> dict[str, Any]:
        cfg = self.config
        camera = self.cameras.get(req.camera)
        if camera is None or req.camera not in self.hubs:
            known = ", ".join(sorted(c for c in self.cameras if c in self.hubs)) or "none"
            raise CommandError(
                ErrorCode.UNKNOWN_CAMERA,
                f"no camera {req.camera!r} on this gateway; known: {known}",
            )
        lease = cfg.default_lease_s if req.lease_s is None else req.lease_s
        if not cfg.min_lease_s <= lease <= cfg.max_lease_s:
            raise CommandError(
                ErrorCode.OUT_OF_RANGE,
                f"lease_s {lease:g} is out of bounds: between {cfg.min_lease_s:g} and "
                f"{cfg.max_lease_s:g} s",
            )
        if req.session is not None and not protocol.valid_id(req.session):
            raise CommandError(
                ErrorCode.BAD_REQUEST,
                "session: expected 1-64 letters, digits, '-' or '_', starting with a letter or "
                "digit",
            )
        hub, served, note = self._pick_hub(camera, req.stream)
        state = hub.state()
        if state.silent_s is None or state.silent_s > cfg.camera_down_after_s:
            since = "never sent a packet" if state.silent_s is None else (
                f"sent no packet for {state.silent_s:.0f} s")  # fmt: skip
            raise CommandError(
                ErrorCode.CAMERA_DOWN, f"camera {req.camera} is down ({since}); try again later"
            )
        if not state.has_keyframe or state.stream is None:
            raise CommandError(
                ErrorCode.CAMERA_DOWN,
                f"camera {req.camera} has sent no keyframe yet; try again in a few seconds",
            )
        if state.stream.codec not in LIVE_CODECS:
            raise CommandError(
                ErrorCode.NOT_SUPPORTED,
                f"camera {req.camera} sends {state.stream.codec}; live needs H.264 or H.265",
            )
        session_id = req.session or uuid.uuid4().hex[:16]
        topic = self.link.topics.live(req.camera, session_id)
        with self._lock:
            if session_id in self._sessions:
                raise CommandError(
                    ErrorCode.BAD_REQUEST, f"session {session_id} already exists; choose another"
                )
            on_camera = sum(1 for s in self._sessions.values() if s.camera == req.camera)
            if on_camera >= cfg.max_sessions_per_camera:
                raise CommandError(
                    ErrorCode.LIMIT_REACHED,
                    f"camera {req.camera} already has {on_camera} live sessions (limit "
                    f"{cfg.max_sessions_per_camera}); stop one first",
                )
            if len(self._sessions) >= cfg.max_sessions:
                raise CommandError(
                    ErrorCode.LIMIT_REACHED,
                    f"this gateway already has {len(self._sessions)} live sessions (limit "
                    f"{cfg.max_sessions}); stop one first",
                )
            if cfg.max_bytes_per_s is not None:
                used = sum(s.hub.state().bytes_per_s for s in self._sessions.values())
                if used + state.bytes_per_s > cfg.max_bytes_per_s:
                    raise CommandError(
                        ErrorCode.LIMIT_REACHED,
                        f"live bandwidth cap reached: {used / 1000:.0f} kB/s in use + "
                        f"{state.bytes_per_s / 1000:.0f} kB/s for camera {req.camera} > "
                        f"{cfg.max_bytes_per_s / 1000:.0f} kB/s",
                    )
            session = LiveSession(
                id=session_id,
                camera=req.camera,
                stream=served,
                hub=hub,
                link=self.link,
                topic=topic,
                client_id=ctx.client_id,
                operator=req.operator,
                lease_s=lease,
                fragment_s=cfg.fragment_s,
                expires_mono=time.monotonic() + lease,
            )
            self._sessions[session_id] = session
        session.start()
        log.info(
            "live %s: started for %s (operator %s) on camera %s/%s, lease %g s, topic %s",
            session_id, ctx.client_id, req.operator or "unknown", req.camera, served, lease, topic,
        )  # fmt: skip
        info = state.stream
        reply: dict[str, Any] = {
            "session": session_id,
            "topic": topic,
            "camera": req.camera,
            "stream": served,
            "codec": info.codec,
            "width": info.width,
            "height": info.height,
            "lease_s": lease,
            "expires": iso_ms(time.time() + lease),
            "init": f"{session_id}.1",
            "fragment_s": cfg.fragment_s,
            "gop_cached_s": round(state.gop_s, 3),
            "content_type": CONTENT_TYPE,
        }
        if note:
            reply["note"] = note
        return reply

    def handle_renew(self, ctx: CommandContext, req: LiveRenew) -> dict[str, Any]:
        session = self._owned(ctx, req.session, "renew")
        lease = session.lease_s if req.lease_s is None else req.lease_s
        cfg = self.config
        if not cfg.min_lease_s <= lease <= cfg.max_lease_s:
            raise CommandError(
                ErrorCode.OUT_OF_RANGE,
                f"lease_s {lease:g} is out of bounds: between {cfg.min_lease_s:g} and "
                f"{cfg.max_lease_s:g} s",
            )
        with self._lock:
            if req.session not in self._sessions:
                raise CommandError(
                    ErrorCode.UNKNOWN_SESSION, f"live session {req.session} has just ended"
                )
            session.lease_s = lease
            session.expires_mono = time.monotonic() + lease
        return {"session": session.id, "lease_s": lease, "expires": iso_ms(time.time() + lease)}

    def handle_stop(self, ctx: CommandContext, req: LiveStop) -> dict[str, Any]:
        session = self._owned(ctx, req.session, "stop")
        ended = self._end(session.id, "stopped")
        if ended is None:
            raise CommandError(
                ErrorCode.UNKNOWN_SESSION, f"live session {req.session} has just ended"
            )
        return {"session": ended.id, "bytes": ended.stats.bytes, "fragments": ended.stats.fragments}

    def _owned(self, ctx: CommandContext, session_id: str, verb: str) -> LiveSession:
        session = self.session(session_id)
        if session is None:
            raise CommandError(
                ErrorCode.UNKNOWN_SESSION,
                f"no live session {session_id} (never started, stopped, or its lease passed)",
            )
        if session.client_id != ctx.client_id:
            raise CommandError(
                ErrorCode.FORBIDDEN,
                f"live session {session_id} belongs to another client; only it may {verb} it",
            )
        return session

    def _pick_hub(self, camera: CameraConfig, wanted: str) -> tuple[LiveHub, str, str | None]:
        """``stream: sub`` is served from the sub-stream when the camera has one that is
        flowing; otherwise it falls back to the main stream (and the reply says so), because
        an operator asking for a picture should get one: the bandwidth cap still applies."""
        main = self.hubs[camera.id]
        if wanted != "sub":
            return main, "main", None
        sub = self.sub_hubs.get(camera.id)
        if camera.sub_url is None or sub is None:
            return main, "main", f"camera {camera.id} has no sub-stream; serving the main stream"
        state = sub.state()
        if (
            state.silent_s is None
            or state.silent_s > self.config.camera_down_after_s
            or not state.has_keyframe
        ):
            return (
                main,
                "main",
                f"sub-stream of {camera.id} is not flowing; serving the main stream",
            )
        return sub, "sub", None

    # -- ending ----------------------------------------------------------------------------

    def _end(self, session_id: str, reason: str) -> LiveSession | None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return None
        session.stop()
        try:
            session.publish_end(reason)
        except Exception:  # the audit record matters more than the end marker
            log.exception("live %s: could not publish the end marker", session_id)
        end = time.time()
        self.audit.record(
            "live.session",
            session=session.id,
            operator=session.operator,
            client_id=session.client_id,
            camera=session.camera,
            stream=session.stream,
            start=iso_ms(session.started_wall),
            end=iso_ms(end),
            duration_s=round(end - session.started_wall, 3),
            bytes=session.stats.bytes,
            fragments=session.stats.fragments,
            reason=reason,
        )
        log.info(
            "live %s: ended (%s) on camera %s after %.1f s, %d bytes in %d fragments",
            session.id, reason, session.camera, end - session.started_wall, session.stats.bytes,
            session.stats.fragments,
        )  # fmt: skip
        return session

    def expire(self, now_mono: float | None = None) -> list[str]:
        """End every session whose lease has passed; returns their ids."""
        now = time.monotonic() if now_mono is None else now_mono
        with self._lock:
            due = [s.id for s in self._sessions.values() if s.expires_mono <= now]
        for session_id in due:
            self._end(session_id, "lease_expired")
        return due

    def _tick(self) -> None:
        while not self._closing.wait(0.2):
            try:
                self.expire()
            except Exception:
                log.exception("live: lease check failed; retrying")

    def _on_reconnect(self) -> None:
        # On the network thread: publishing is non-blocking in paho.
        for session in self.sessions():
            session.republish_init()
