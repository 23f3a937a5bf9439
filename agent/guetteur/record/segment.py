"""One MPEG-TS segment file being written: created on a keyframe (and marked as being written in
the index), fed Annex B packets, flushed at checkpoints (``checkpoint``: before each keyframe and
every ``sync_interval_s``, so a crash leaves it whole up to the last GOP), finished with an fsync
before the recorder indexes it.

The packets are remuxed, never re-encoded; their timestamps are rebased so that the file's
timeline starts at 0. Errors (OSError, av.FFmpegError, sqlite3.Error) are left to the recorder,
which decides what to salvage and what to report.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from guetteur.media.bitstream import CODECS, AnnexBConverter, BitstreamError, parse_extradata
from guetteur.media.types import EncodedPacket, StreamInfo
from guetteur.record.index import SegmentIndex, segment_name

log = logging.getLogger(__name__)

TS_TIME_BASE = Fraction(1, 90000)
MAX_STEP_S = 5.0  # a jump in stream or wall time larger than this starts a new segment
# PAT/PMT once per segment is enough for files; the defaults (10/s) waste ~1 % of the bytes.
# flush_packets: every muxed packet leaves FFmpeg's I/O buffer for our file object at once, so
# what ``checkpoint`` flushes is the whole stream up to that packet.
_TS_OPTIONS = {"pat_period": "5", "sdt_period": "30", "flush_packets": "1"}


@dataclass
class OpenSegment:
    """The segment a camera is writing, and what closing it needs to know."""

    camera: str
    stream: StreamInfo
    rel: str  # path relative to the ring's root, as the index lists it
    path: Path
    start: float  # wall clock of its first packet (a keyframe)
    first_dts: int
    file: Any
    container: Any
    out_stream: Any
    new_dir: bool  # its day directory was created for it: fsync the directories at close
    last_dts: int
    last_pts_end: int
    last_wall: float
    packets: int = 0
    synced_mono: float = 0.0  # monotonic time of the last fdatasync (0: never)
    flushed_mono: float = 0.0  # monotonic time of the last flush to the kernel

    @classmethod
    def create(
        cls, index: SegmentIndex, pkt: EncodedPacket, write_buffer_bytes: int
    ) -> OpenSegment:
        """Open a new segment file for ``pkt`` (a keyframe) under the index's root."""
        start = pkt.wallclock
        day = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d")
        directory = index.root / pkt.camera / day
        name = segment_name(start)
        rel = f"{pkt.camera}/{day}/{name}"
        new_dir = not directory.is_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        while path.exists():  # two segments in the same millisecond (a stream change)
            start += 0.001
            name = segment_name(start)
            rel = f"{pkt.camera}/{day}/{name}"
            path = directory / name
        index.mark_writing(rel, pkt.camera, start)
        f = open(path, "wb", buffering=write_buffer_bytes)  # noqa: SIM115
        container = av.open(f, "w", format="mpegts", options=dict(_TS_OPTIONS), buffer_size=1 << 16)
        rate = Fraction(pkt.stream.fps).limit_denominator(1001) if pkt.stream.fps else None
        out_stream = container.add_mux_stream(
            pkt.stream.codec, rate=rate, width=pkt.stream.width, height=pkt.stream.height
        )
        out_stream.time_base = TS_TIME_BASE
        return cls(
            camera=pkt.camera,
            stream=pkt.stream,
            rel=rel,
            path=path,
            start=start,
            first_dts=pkt.dts,
            file=f,
            container=container,
            out_stream=out_stream,
            new_dir=new_dir,
            last_dts=pkt.dts,
            last_pts_end=pkt.pts,
            last_wall=pkt.wallclock,
        )

    def discontinuous(self, pkt: EncodedPacket) -> bool:
        """``pkt`` cannot follow in this segment: its timestamps go back or jump."""
        step = (pkt.dts - self.last_dts) * pkt.stream.time_base
        return step <= 0 or step > MAX_STEP_S or pkt.wallclock - self.last_wall > MAX_STEP_S

    def checkpoint(self, now_mono: float, sync_interval_s: float) -> None:
        """Hand what is buffered to the kernel, and to the disk (fdatasync) when the last sync
        is ``sync_interval_s`` old. The recorder calls it before each keyframe and at least every
        ``sync_interval_s``: a kill -9 then leaves the file whole up to the last complete GOP
        (or second), a power cut up to the last sync; recovery cuts off the torn rest."""
        self.file.flush()
        self.flushed_mono = now_mono
        if sync_interval_s > 0 and now_mono - self.synced_mono >= sync_interval_s:
            os.fdatasync(self.file.fileno())
            if not self.synced_mono:  # the file's name must survive a power cut too
                _fsync_dir(self.path.parent)
                if self.new_dir:
                    _fsync_dir(self.path.parent.parent)
            self.synced_mono = now_mono

    def write(self, pkt: EncodedPacket, data: bytes) -> None:
        """Mux ``data`` (``pkt`` as Annex B) with ``pkt``'s timing."""
        out = av.Packet(data)
        out.pts = pkt.pts - self.first_dts
        out.dts = pkt.dts - self.first_dts
        out.time_base = pkt.stream.time_base
        out.is_keyframe = pkt.keyframe
        out.stream = self.out_stream
        self.container.mux(out)
        step = pkt.duration or (pkt.dts - self.last_dts if self.packets else 0)
        if not step and pkt.stream.fps:
            step = int(1 / (pkt.stream.fps * pkt.stream.time_base))
        self.last_pts_end = max(self.last_pts_end, pkt.pts + step)
        self.last_dts = pkt.dts
        self.last_wall = pkt.wallclock
        self.packets += 1

    def finish(self) -> tuple[int, float]:
        """Write the trailer, fsync the file (and its new directories), close it; returns its
        size and its end (start + stream duration of its packets)."""
        self.container.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if self.new_dir:
            _fsync_dir(self.path.parent)
            _fsync_dir(self.path.parent.parent)
        size = self.path.stat().st_size
        first_pts = self.first_dts  # rebased: the file's timeline starts at 0
        duration = float((self.last_pts_end - first_pts) * self.stream.time_base)
        return size, self.start + max(duration, 0.0)


def annexb_converter(pkt: EncodedPacket) -> AnnexBConverter | None:
    """The Annex B rewriter for ``pkt``'s stream; None (said in the log) when the recorder cannot
    rewrite it."""
    if pkt.stream.codec not in CODECS:
        return None  # said at its first keyframe
    try:
        return AnnexBConverter(parse_extradata(pkt.stream.extradata, pkt.stream.codec))
    except BitstreamError as exc:
        log.error(
            "not recording %s: the description of its %s stream (extradata) is unreadable: "
            "%s; check the camera's encoder settings",
            pkt.camera, pkt.stream.codec, exc,
        )  # fmt: skip
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
