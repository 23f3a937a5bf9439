"""Ring-buffer recording: every camera's encoded packets, never re-encoded, in MPEG-TS segments.

Layout: ``{data_dir}/rec/{camera}/{YYYY-MM-DD}/{YYYYmmddTHHMMSS.mmm}Z.ts``, each segment starting
on a keyframe, about ``segment_s`` long; an SQLite (WAL) index ``{data_dir}/rec/index.sqlite3``
lists the closed segments only. Why MPEG-TS: see docs/recording.md (a file cut anywhere is still
playable up to its last whole packet, and in-band parameter sets need no header up front).

Threads: ``on_packet`` (the source's thread) only appends to a bounded in-memory queue; one writer
thread muxes, writes through a large buffer and fsyncs once per segment, at close, before the
segment enters the index; one retention thread purges. A kill -9 or a power cut therefore leaves
an index that lists only fsynced, complete segments; at start-up ``reconcile`` repairs the file
that was being written (cut back to its last whole packet) and indexes or removes orphans.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from guetteur.config import RecordingConfig
from guetteur.media.types import EncodedPacket, StreamInfo
from guetteur.record.retention import (
    DAY_S,
    DiskState,
    Limits,
    Pin,
    PurgePlan,
    SegmentRef,
    plan_purge,
)
from guetteur.timeutil import iso_ms
from guetteur.uplink.protocol import valid_id

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".ts"
TS_TIME_BASE = Fraction(1, 90000)
_TS_PACKET = 188
_QUEUE_MAX_BYTES = 32 << 20  # ~1 min of a 4 Mbit/s camera: absorbs a slow fsync or purge
_IDLE_CLOSE_S = 5.0  # a camera silent this long gets its segment closed (and indexed)
_MAX_STEP_S = 5.0  # a jump in stream or wall time larger than this starts a new segment
_WARNING_TTL_S = 900.0
_PURGE_INTERVAL_S = 30.0
# PAT/PMT once per segment is enough for files; the defaults (10/s) waste ~1 % of the bytes.
_TS_OPTIONS = {"pat_period": "5", "sdt_period": "30"}


# --------------------------------------------------------------------------------------------
# Bitstream helpers (pure): MPEG-TS carries H.264/H.265 in Annex B with in-band parameter sets.


@dataclass(frozen=True)
class _Bitstream:
    """How one stream's packets must be rewritten to Annex B for MPEG-TS."""

    nal_length_size: int  # 0 when the packets already are Annex B
    parameter_sets: bytes  # Annex B SPS/PPS (and VPS) to put in front of keyframes lacking them


def _split_length_prefixed(data: bytes, size: int) -> list[bytes]:
    nals = []
    i = 0
    n = len(data)
    while i + size <= n:
        length = int.from_bytes(data[i : i + size], "big")
        i += size
        nals.append(data[i : i + length])
        i += length
    return nals


def _parse_config_record(codec: str, extradata: bytes) -> tuple[int, list[bytes]]:
    """avcC/hvcC → (NAL length size, parameter-set NAL units)."""
    sets: list[bytes] = []
    if codec == "h264":
        size = (extradata[4] & 3) + 1
        count = extradata[5] & 0x1F
        p = 6
        for _ in range(count):
            length = int.from_bytes(extradata[p : p + 2], "big")
            sets.append(extradata[p + 2 : p + 2 + length])
            p += 2 + length
        count = extradata[p]
        p += 1
        for _ in range(count):
            length = int.from_bytes(extradata[p : p + 2], "big")
            sets.append(extradata[p + 2 : p + 2 + length])
            p += 2 + length
        return size, sets
    size = (extradata[21] & 3) + 1
    arrays = extradata[22]
    p = 23
    for _ in range(arrays):
        count = int.from_bytes(extradata[p + 1 : p + 3], "big")
        p += 3
        for _ in range(count):
            length = int.from_bytes(extradata[p : p + 2], "big")
            sets.append(extradata[p + 2 : p + 2 + length])
            p += 2 + length
    return size, sets


def _annexb(nals: list[bytes]) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in nals)


def _split_annexb(data: bytes) -> list[bytes]:
    nals = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        j = data.find(b"\x00\x00\x01", start)
        end = len(data) if j < 0 else j
        nal = data[start:end]
        if j >= 0 and nal.endswith(b"\x00"):
            nal = nal.rstrip(b"\x00")  # the zero byte of the next 4-byte start code
        if nal:
            nals.append(nal)
        i = j
    return nals


def _nal_type(codec: str, nal: bytes) -> int:
    return (nal[0] & 0x1F) if codec == "h264" else ((nal[0] >> 1) & 0x3F)


def _is_parameter_set(codec: str, nal: bytes) -> bool:
    kind = _nal_type(codec, nal)
    return kind in (7, 8) if codec == "h264" else kind in (32, 33, 34)


def bitstream_for(stream: StreamInfo) -> _Bitstream:
    """How to turn this stream's packets into self-contained Annex B."""
    extradata = stream.extradata or b""
    if stream.codec in ("h264", "hevc") and len(extradata) > 6 and extradata[0] == 1:
        size, sets = _parse_config_record(stream.codec, extradata)
        return _Bitstream(size, _annexb(sets))
    if extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return _Bitstream(0, extradata)
    return _Bitstream(0, b"")


def to_annexb(codec: str, data: bytes, keyframe: bool, bs: _Bitstream) -> tuple[bytes, bytes]:
    """Packet bytes → (Annex B bytes with parameter sets before keyframes, parameter sets seen).

    Only keyframes are parsed when the input already is Annex B, so the common RTSP case costs
    nothing per frame."""
    if bs.nal_length_size:
        nals = _split_length_prefixed(data, bs.nal_length_size)
        if keyframe and bs.parameter_sets and not any(_is_parameter_set(codec, n) for n in nals):
            return bs.parameter_sets + _annexb(nals), bs.parameter_sets
        return _annexb(nals), bs.parameter_sets
    if not keyframe:
        return data, bs.parameter_sets
    nals = _split_annexb(data)
    inband = [n for n in nals if _is_parameter_set(codec, n)]
    if inband:
        return data, _annexb(inband)
    return bs.parameter_sets + data, bs.parameter_sets


# --------------------------------------------------------------------------------------------
# Segment files


def segment_name(start: float) -> str:
    stamp = datetime.fromtimestamp(start, UTC)
    return stamp.strftime("%Y%m%dT%H%M%S.") + f"{stamp.microsecond // 1000:03d}Z{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> float | None:
    """Start time (epoch s) written in a segment's file name, or None if it is not one of ours."""
    if not name.endswith("Z" + SEGMENT_SUFFIX):
        return None
    try:
        stamp = datetime.strptime(name[: -len(SEGMENT_SUFFIX) - 1], "%Y%m%dT%H%M%S.%f")
    except ValueError:
        return None
    return stamp.replace(tzinfo=UTC).timestamp()


def ts_whole_prefix(path: Path) -> int:
    """Length of the part of an MPEG-TS file that surely holds whole video packets.

    Stops at the first 188-byte packet without its sync byte (a torn or zero-filled tail after a
    power cut), then goes back to the start of the last video PES: with unbounded PES lengths a
    cut file cannot prove its last frame whole, so it is dropped."""
    last_pes_start = 0
    base = 0
    chunk_size = _TS_PACKET * 8192  # 1.5 MB at a time: segments may be long
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk_size)
            end = len(data) - len(data) % _TS_PACKET
            off = 0
            while off < end:
                if data[off] != 0x47:
                    return last_pes_start
                if data[off + 1] & 0x40:  # payload_unit_start_indicator
                    payload = off + 4
                    if data[off + 3] & 0x20:  # adaptation field present
                        payload += 1 + data[off + 4]
                    if (
                        payload + 4 <= off + _TS_PACKET
                        and data[payload : payload + 3] == b"\x00\x00\x01"
                        and 0xE0 <= data[payload + 3] <= 0xEF
                    ):
                        last_pes_start = base + off
                off += _TS_PACKET
            if len(data) < chunk_size:
                break
            base += len(data)
    return last_pes_start


@dataclass(frozen=True)
class SegmentProbe:
    """What demuxing a segment file says about it."""

    packets: int
    duration_s: float  # from the first packet's pts to the end of the last one
    codec: str
    width: int
    height: int
    starts_on_keyframe: bool


def probe_segment(path: Path) -> SegmentProbe | None:
    """Demux (no decode) a segment; None when it holds no video packet."""
    try:
        with av.open(str(path), options={"analyzeduration": "0", "probesize": "1000000"}) as box:
            if not box.streams.video:
                return None
            vs = box.streams.video[0]
            tb = vs.time_base or TS_TIME_BASE
            count = 0
            first_pts: int | None = None
            first_key = False
            last_pts = 0
            step = 0
            for pkt in box.demux(vs):
                if pkt.size == 0 or pkt.pts is None:
                    continue
                if first_pts is None:
                    first_pts = pkt.pts
                    first_key = bool(pkt.is_keyframe)
                if count and pkt.pts > last_pts:
                    step = pkt.pts - last_pts
                last_pts = max(last_pts, pkt.pts)
                count += 1
            if first_pts is None:
                return None
            cc = vs.codec_context
            return SegmentProbe(
                packets=count,
                duration_s=float((last_pts - first_pts + step) * tb),
                codec=cc.name,
                width=cc.width,
                height=cc.height,
                starts_on_keyframe=first_key,
            )
    except (av.error.FFmpegError, OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------------------------
# Index


@dataclass(frozen=True)
class Segment:
    """One closed, playable segment as the index lists it."""

    segment_id: int
    camera: str
    start: float  # UTC epoch seconds of its first packet (a keyframe)
    end: float  # start + stream duration of its packets
    path: str  # relative to the index's root ({data_dir}/rec)
    size: int
    first_keyframe: float
    codec: str
    width: int
    height: int
    packets: int

    def ref(self) -> SegmentRef:
        return SegmentRef(self.segment_id, self.camera, self.start, self.end, self.size, self.path)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    camera TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    path TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL,
    first_keyframe REAL NOT NULL,
    codec TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    packets INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_camera_end ON segments(camera, end);
CREATE INDEX IF NOT EXISTS segments_start ON segments(start, id);
CREATE TABLE IF NOT EXISTS writing (
    path TEXT PRIMARY KEY,
    camera TEXT NOT NULL,
    start REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    id TEXT PRIMARY KEY,
    camera TEXT NOT NULL,
    t0 REAL NOT NULL,
    t1 REAL NOT NULL,
    created REAL NOT NULL
);
"""

_COLUMNS = "id, camera, start, end, path, bytes, first_keyframe, codec, width, height, packets"


class SegmentIndex:
    """The SQLite (WAL) index of closed segments, shared by the recorder, clips and export.

    Safe to use from several threads (one connection behind a lock) and from several processes
    (WAL: the export CLI reads while the agent writes)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "index.sqlite3"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.db_path), timeout=10.0, isolation_level=None, check_same_thread=False
        )
        with self._lock:
            # Small pages: each segment costs two commits, and every commit writes whole pages
            # to the WAL (4 KiB pages made the index 0.8 % of the video bytes, 1 KiB 0.2 %).
            # Only takes effect when the file is created.
            self._db.execute("PRAGMA page_size=1024")
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a power cut may lose the last commit, never corrupt; a lost insert leaves
            # an orphan file that reconcile indexes again.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    @classmethod
    def for_data_dir(cls, data_dir: Path | str) -> SegmentIndex:
        return cls(Path(data_dir) / "rec")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def path_of(self, seg: Segment) -> Path:
        return self.root / seg.path

    @staticmethod
    def _row(row: tuple[Any, ...]) -> Segment:
        return Segment(*row)

    def add(
        self,
        camera: str,
        start: float,
        end: float,
        path: str,
        size: int,
        probe_codec: str,
        width: int,
        height: int,
        packets: int,
    ) -> int:
        """Index a closed segment (and forget it was being written), in one transaction."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(
                    f"INSERT OR REPLACE INTO segments ({_COLUMNS}) "
                    "VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (camera, start, end, path, size, start, probe_codec, width, height, packets),
                )
                seg_id = int(cur.lastrowid or 0)
                cur.execute("DELETE FROM writing WHERE path = ?", (path,))
                cur.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back already (disk full)
                    cur.execute("ROLLBACK")
                raise
            return seg_id

    def remove(self, segment_ids: list[int]) -> None:
        if not segment_ids:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "DELETE FROM segments WHERE id = ?", [(i,) for i in segment_ids]
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def update_size(self, segment_id: int, size: int, end: float, packets: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE segments SET bytes = ?, end = ?, packets = ? WHERE id = ?",
                (size, end, packets, segment_id),
            )

    def overlapping(self, camera: str, t0: float, t1: float) -> list[Segment]:
        """Segments of ``camera`` overlapping [t0, t1] (epoch s), oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM segments WHERE camera = ? AND end > ? AND start < ? "
                "ORDER BY start",
                (camera, t0, t1),
            ).fetchall()
        return [self._row(r) for r in rows]

    def all_segments(self) -> list[Segment]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM segments ORDER BY start").fetchall()
        return [self._row(r) for r in rows]

    def under(self, directory: str) -> list[Segment]:
        """Segments whose file lies in ``directory`` (relative, e.g. ``cam1/2026-11-23``)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM segments WHERE path >= ? AND path < ? ORDER BY path",
                (directory + "/", directory + "0"),  # "0" sorts right after "/"
            ).fetchall()
        return [self._row(r) for r in rows]

    def iter_oldest_first(self, page: int = 500) -> Iterator[Segment]:
        """All segments oldest first, fetched a page at a time (no lock held between pages)."""
        after: tuple[float, int] = (float("-inf"), -1)
        while True:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM segments WHERE (start, id) > (?, ?) "
                    "ORDER BY start, id LIMIT ?",
                    (*after, page),
                ).fetchall()
            for r in rows:
                yield self._row(r)
            if len(rows) < page:
                return
            after = (rows[-1][2], rows[-1][0])

    def total_bytes(self) -> int:
        with self._lock:
            (total,) = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM segments").fetchone()
        return int(total)

    def cameras(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT camera FROM segments").fetchall()
        return sorted(r[0] for r in rows)

    def covered_until(self, camera: str) -> float | None:
        with self._lock:
            (end,) = self._db.execute(
                "SELECT MAX(end) FROM segments WHERE camera = ?", (camera,)
            ).fetchone()
        return None if end is None else float(end)

    def oldest_start(self, camera: str | None = None) -> float | None:
        with self._lock:
            if camera is None:
                (start,) = self._db.execute("SELECT MIN(start) FROM segments").fetchone()
            else:
                (start,) = self._db.execute(
                    "SELECT MIN(start) FROM segments WHERE camera = ?", (camera,)
                ).fetchone()
        return None if start is None else float(start)

    # Segments being written right now: reconcile's list of files to repair first, and the
    # export's way to know a range ending "now" will be covered once the segment closes.
    def mark_writing(self, path: str, camera: str, start: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO writing (path, camera, start) VALUES (?, ?, ?)",
                (path, camera, start),
            )

    def unmark_writing(self, path: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM writing WHERE path = ?", (path,))

    def writing(self) -> dict[str, tuple[str, float]]:
        """path → (camera, start) of the segments being written."""
        with self._lock:
            rows = self._db.execute("SELECT path, camera, start FROM writing").fetchall()
        return {r[0]: (r[1], float(r[2])) for r in rows}

    def writing_start(self, camera: str) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(start) FROM writing WHERE camera = ?", (camera,)
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def clear_writing(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM writing")

    # Pins: ranges an undelivered event clip still needs (persisted: they survive a restart).
    def add_pin(self, pin: Pin, created: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pins (id, camera, t0, t1, created) VALUES (?, ?, ?, ?, ?)",
                (pin.pin_id, pin.camera, pin.t0, pin.t1, created),
            )

    def remove_pin(self, pin_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM pins WHERE id = ?", (pin_id,))
        return cur.rowcount > 0

    def pins(self) -> list[Pin]:
        with self._lock:
            rows = self._db.execute("SELECT id, camera, t0, t1 FROM pins").fetchall()
        return [Pin(r[0], r[1], float(r[2]), float(r[3])) for r in rows]

    def drop_pins_older_than(self, cutoff: float) -> int:
        """Pins whose range is entirely older than the legal maximum protect nothing any more."""
        with self._lock:
            cur = self._db.execute("DELETE FROM pins WHERE t1 < ?", (cutoff,))
        return cur.rowcount


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_and_probe(path: Path) -> SegmentProbe | None:
    """Cut a segment file back to its last whole video packet and probe it; None (and the file
    removed) when nothing playable is left."""
    try:
        keep = ts_whole_prefix(path)
        if keep < path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        probe = probe_segment(path) if keep else None
    except OSError as exc:
        log.warning("cannot repair segment %s: %s; removing it", path, exc.strerror)
        probe = None
    if probe is None or not probe.starts_on_keyframe:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    return probe


@dataclass
class ReconcileReport:
    checked: int = 0
    missing_removed: int = 0  # index rows whose file was gone
    repaired: int = 0  # partial files cut back and indexed
    orphans_indexed: int = 0
    removed_files: int = 0  # files with nothing playable left


def reconcile(index: SegmentIndex, recent_days: int | None = 2) -> ReconcileReport:
    """Make the index and the files agree after any stop, clean or not.

    Only the ``recent_days`` newest day directories of each camera (and those of the segments
    marked as being written) are checked: an interruption can only leave partial files and lost
    index inserts where the recorder was writing, and a month of segments on an SD card would
    take minutes to list. ``None`` checks everything."""
    report = ReconcileReport()
    root = index.root
    writing = index.writing()
    writing_dirs = {rel.rsplit("/", 1)[0] for rel in writing}
    day_dirs: list[Path] = []
    for cam_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        days = sorted(p for p in cam_dir.iterdir() if p.is_dir())
        keep = days if recent_days is None else days[-recent_days:]
        keep += [d for d in days if d not in keep and f"{cam_dir.name}/{d.name}" in writing_dirs]
        day_dirs += keep
    scanned = {d.relative_to(root).as_posix() for d in day_dirs}
    if recent_days is None:
        indexed = {seg.path: seg for seg in index.all_segments()}
    else:
        indexed = {seg.path: seg for d in sorted(scanned) for seg in index.under(d)}
    on_disk: dict[str, Path] = {}
    for day_dir in day_dirs:
        for f in day_dir.iterdir():
            if f.is_file():
                on_disk[f.relative_to(root).as_posix()] = f
    gone = [seg.segment_id for rel, seg in indexed.items() if rel not in on_disk]
    index.remove(gone)
    report.missing_removed = len(gone)
    for rel, f in sorted(on_disk.items()):
        report.checked += 1
        seg = indexed.get(rel)
        if seg is not None and rel not in writing:
            try:
                size = f.stat().st_size
            except FileNotFoundError:
                index.remove([seg.segment_id])
                continue
            if size == seg.size:
                continue
        camera = f.parent.parent.name
        start = parse_segment_name(f.name)
        if start is None or not valid_id(camera):
            log.warning("removing %s: not a segment name this recorder writes", f)
            f.unlink(missing_ok=True)
            report.removed_files += 1
            if seg is not None:
                index.remove([seg.segment_id])
            continue
        probe = repair_and_probe(f)
        if probe is None:
            report.removed_files += 1
            if seg is not None:
                index.remove([seg.segment_id])
            log.info("removed %s: nothing playable left after the interruption", f)
            continue
        size = f.stat().st_size
        end = start + probe.duration_s
        if seg is not None:
            index.update_size(seg.segment_id, size, end, probe.packets)
            report.repaired += 1
        else:
            index.add(
                camera, start, end, rel, size, probe.codec, probe.width, probe.height, probe.packets
            )
            if rel in writing:
                report.repaired += 1
            else:
                report.orphans_indexed += 1
    index.clear_writing()
    for day_dir in day_dirs:
        with contextlib.suppress(OSError):
            day_dir.rmdir()  # only succeeds when empty
    return report


# --------------------------------------------------------------------------------------------
# Recorder


@dataclass
class _OpenSegment:
    camera: str
    stream: StreamInfo
    rel: str
    path: Path
    start: float
    first_dts: int
    file: Any
    container: Any
    out_stream: Any
    new_dir: bool
    last_dts: int
    last_pts_end: int
    last_wall: float
    packets: int = 0


@dataclass
class _CameraState:
    stream: StreamInfo | None = None
    bitstream: _Bitstream = field(default_factory=lambda: _Bitstream(0, b""))
    segment: _OpenSegment | None = None
    need_keyframe: bool = True
    largest_segment: int = 0
    last_seen_mono: float = 0.0


@dataclass
class RecorderStats:
    packets_received: int = 0
    bytes_received: int = 0
    packets_dropped_queue: int = 0
    packets_waiting_keyframe: int = 0
    segments_closed: int = 0
    segments_purged: int = 0
    bytes_purged: int = 0
    write_errors: int = 0


_SQLITE_FULL = 13


def _is_enospc(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL
    return getattr(exc, "errno", None) == errno.ENOSPC


class Recorder:
    """Records every camera's packets into the ring. Create it at start-up (reconciles the ring,
    starts its writer and retention threads); feed it with ``on_packet``; ``close`` at exit."""

    def __init__(
        self,
        config: RecordingConfig,
        data_dir: Path,
        clock: Callable[[], float] = time.time,
        queue_max_bytes: int = _QUEUE_MAX_BYTES,
        purge_interval_s: float = _PURGE_INTERVAL_S,
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.stats = RecorderStats()
        self.index = SegmentIndex.for_data_dir(self.data_dir)
        self.rec_dir = self.index.root
        started = time.monotonic()
        self.reconcile_report = reconcile(self.index)
        log.info(
            "recordings in %s reconciled in %.2f s: %s",
            self.rec_dir,
            time.monotonic() - started,
            self.reconcile_report,
        )
        self._queue: deque[tuple[EncodedPacket, bool]] = deque()
        self._queued_bytes = 0
        self._queue_max = queue_max_bytes
        self._resync: set[str] = set()
        self._cv = threading.Condition()
        self._closing = False
        self._busy = False  # the writer holds a batch taken from the queue
        self._cameras: dict[str, _CameraState] = {}
        self._warnings: dict[str, tuple[float, str]] = {}
        self._warn_lock = threading.Lock()
        self._indexed = threading.Condition()
        self._purge_wake = threading.Event()
        self._urgent_free = 0
        self._purge_interval = purge_interval_s
        self._stop_purge = threading.Event()
        self._retention_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name="rec-writer", daemon=True)
        self._purger = threading.Thread(target=self._purge_loop, name="rec-retention", daemon=True)
        self._writer.start()
        self._purger.start()

    # -- source side: cheap, never blocks on the disk -----------------------------------------
    def on_packet(self, packet: EncodedPacket) -> None:
        if not self.config.enabled:
            return
        size = len(packet.data)
        with self._cv:
            if self._closing:
                return
            self.stats.packets_received += 1
            self.stats.bytes_received += size
            if self._queued_bytes + size > self._queue_max:
                self.stats.packets_dropped_queue += 1
                if packet.camera not in self._resync:
                    self._resync.add(packet.camera)
                    self._warn(
                        f"queue:{packet.camera}",
                        f"{iso_ms(self.clock())}: recording of {packet.camera} fell behind "
                        "(disk too slow); packets dropped, recording resumes at the next keyframe",
                    )
                return
            resync = packet.camera in self._resync
            if resync:
                self._resync.discard(packet.camera)
            self._queue.append((packet, resync))
            self._queued_bytes += size
            self._cv.notify()

    # -- public API ---------------------------------------------------------------------------
    def pin(self, camera: str, t0: float, t1: float, until_delivered_id: str) -> None:
        """Keep the segments of ``camera`` overlapping [t0, t1] until ``unpin(id)`` — but never
        past the legal maximum age."""
        self.index.add_pin(Pin(until_delivered_id, camera, t0, t1), self.clock())

    def unpin(self, until_delivered_id: str) -> bool:
        return self.index.remove_pin(until_delivered_id)

    def warnings(self) -> list[str]:
        """Sentences for the gateway status (disk full, packets dropped, cap held by pins...)."""
        now = self.clock()
        with self._warn_lock:
            for key in [k for k, (exp, _) in self._warnings.items() if exp < now]:
                del self._warnings[key]
            return [msg for _, msg in self._warnings.values()]

    def status(self) -> dict[str, Any]:
        oldest = self.index.oldest_start()
        return {
            "bytes": self.index.total_bytes(),
            "oldest": iso_ms(oldest) if oldest is not None else None,
            "recording": sorted(c for c, s in self._cameras.items() if s.segment is not None),
            "warnings": self.warnings(),
        }

    def wait_indexed(self, camera: str, until: float, timeout: float) -> bool:
        """Wait until the index covers ``camera`` up to ``until`` (epoch s); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._indexed:
            while True:
                end = self.index.covered_until(camera)
                if end is not None and end >= until:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._indexed.wait(min(left, 0.5))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued packet is written (not closed). For tests and benches."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._queue or self._busy:
                if time.monotonic() > deadline:
                    return False
                self._cv.wait(0.05)
        return True

    def purge_now(self) -> PurgePlan:
        """Run one retention pass in the caller's thread (the retention thread does it alone)."""
        return self._run_retention()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, close and index every open segment, stop the threads."""
        with self._cv:
            if self._closing:
                return
            self._closing = True
            self._cv.notify_all()
        self._writer.join(timeout)
        self._stop_purge.set()
        self._purge_wake.set()
        self._purger.join(timeout)
        self.index.close()

    # -- writer thread ------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._busy = False
                    self._cv.notify_all()
                    self._cv.wait(1.0)
                    if not self._queue:
                        break
                batch = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                self._busy = bool(batch)
                closing = self._closing
            for packet, resync in batch:
                try:
                    self._write_packet(packet, resync)
                except Exception:  # a bug on one packet must not stop every camera's recording
                    log.exception("recording %s: packet not written", packet.camera)
            self._close_idle()
            if closing and not batch:
                break
        for state in self._cameras.values():
            self._close_segment(state)
        with self._cv:
            self._busy = False
            self._cv.notify_all()

    def _close_idle(self) -> None:
        now = time.monotonic()
        for camera, state in self._cameras.items():
            if state.segment is not None and now - state.last_seen_mono > _IDLE_CLOSE_S:
                log.info(
                    "recording %s: no packet for %.0f s, segment closed", camera, _IDLE_CLOSE_S
                )
                self._close_segment(state)
                state.need_keyframe = True

    def _write_packet(self, pkt: EncodedPacket, resync: bool) -> None:
        state = self._cameras.get(pkt.camera)
        if state is None:
            if not valid_id(pkt.camera):
                log.error("not recording camera %r: not a valid camera id", pkt.camera)
                return
            state = self._cameras[pkt.camera] = _CameraState()
        state.last_seen_mono = time.monotonic()
        seg = state.segment
        if resync:
            self._close_segment(state)
            state.need_keyframe = True
        if pkt.stream is not state.stream and pkt.stream != state.stream:
            if state.stream is not None:
                log.info(
                    "recording %s: stream changed to %s %dx%d, new segment",
                    pkt.camera,
                    pkt.stream.codec,
                    pkt.stream.width,
                    pkt.stream.height,
                )
            self._close_segment(state)
            state.stream = pkt.stream
            state.bitstream = bitstream_for(pkt.stream)
            state.need_keyframe = True
        elif seg is not None and self._discontinuous(seg, pkt):
            log.info(
                "recording %s: timestamps jumped, new segment at the next keyframe", pkt.camera
            )
            self._close_segment(state)
            state.need_keyframe = True
        seg = state.segment
        if (
            seg is not None
            and pkt.keyframe
            and (pkt.dts - seg.first_dts) * pkt.stream.time_base >= self.config.segment_s
        ):
            self._close_segment(state)
        if state.segment is None:
            if not pkt.keyframe:
                self.stats.packets_waiting_keyframe += 1
                return
            if pkt.stream.codec not in ("h264", "hevc"):
                if state.need_keyframe:
                    log.error(
                        "not recording %s: codec %s not supported", pkt.camera, pkt.stream.codec
                    )
                state.need_keyframe = False
                return
            if not self._open_segment(state, pkt):
                return
        self._mux(state, pkt)

    @staticmethod
    def _discontinuous(seg: _OpenSegment, pkt: EncodedPacket) -> bool:
        step = (pkt.dts - seg.last_dts) * pkt.stream.time_base
        return step <= 0 or step > _MAX_STEP_S or pkt.wallclock - seg.last_wall > _MAX_STEP_S

    def _open_segment(self, state: _CameraState, pkt: EncodedPacket) -> bool:
        start = pkt.wallclock
        day = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d")
        directory = self.rec_dir / pkt.camera / day
        name = segment_name(start)
        rel = f"{pkt.camera}/{day}/{name}"
        try:
            new_dir = not directory.is_dir()
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / name
            while path.exists():  # two segments in the same millisecond (a stream change)
                start += 0.001
                name = segment_name(start)
                rel = f"{pkt.camera}/{day}/{name}"
                path = directory / name
            self.index.mark_writing(rel, pkt.camera, start)
            f = open(path, "wb", buffering=self.config.write_buffer_bytes)  # noqa: SIM115
            container = av.open(
                f, "w", format="mpegts", options=dict(_TS_OPTIONS), buffer_size=1 << 16
            )
            rate = Fraction(pkt.stream.fps).limit_denominator(1001) if pkt.stream.fps else None
            out_stream = container.add_mux_stream(
                pkt.stream.codec, rate=rate, width=pkt.stream.width, height=pkt.stream.height
            )
            out_stream.time_base = TS_TIME_BASE
        except (OSError, av.error.FFmpegError, sqlite3.Error) as exc:
            self._write_failed(state, pkt.camera, exc)
            return False
        state.segment = _OpenSegment(
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
        state.need_keyframe = False
        return True

    def _mux(self, state: _CameraState, pkt: EncodedPacket) -> None:
        seg = state.segment
        assert seg is not None
        data, sets = to_annexb(pkt.stream.codec, pkt.data, pkt.keyframe, state.bitstream)
        if sets is not state.bitstream.parameter_sets:
            state.bitstream = _Bitstream(state.bitstream.nal_length_size, sets)
        out = av.Packet(data)
        out.pts = pkt.pts - seg.first_dts
        out.dts = pkt.dts - seg.first_dts
        out.time_base = pkt.stream.time_base
        out.is_keyframe = pkt.keyframe
        out.stream = seg.out_stream
        try:
            seg.container.mux(out)
        except (OSError, av.error.FFmpegError) as exc:
            self._write_failed(state, pkt.camera, exc)
            return
        step = pkt.duration or (pkt.dts - seg.last_dts if seg.packets else 0)
        if not step and pkt.stream.fps:
            step = int(1 / (pkt.stream.fps * pkt.stream.time_base))
        seg.last_pts_end = max(seg.last_pts_end, pkt.pts + step)
        seg.last_dts = pkt.dts
        seg.last_wall = pkt.wallclock
        seg.packets += 1

    def _close_segment(self, state: _CameraState) -> None:
        seg = state.segment
        if seg is None:
            return
        state.segment = None
        try:
            seg.container.close()
            seg.file.flush()
            os.fsync(seg.file.fileno())
            seg.file.close()
            if seg.new_dir:
                _fsync_dir(seg.path.parent)
                _fsync_dir(seg.path.parent.parent)
            size = seg.path.stat().st_size
            first_pts = seg.first_dts  # rebased: the file's timeline starts at 0
            duration = float((seg.last_pts_end - first_pts) * seg.stream.time_base)
            end = seg.start + max(duration, 0.0)
            self.index.add(
                seg.camera,
                seg.start,
                end,
                seg.rel,
                size,
                seg.stream.codec,
                seg.stream.width,
                seg.stream.height,
                seg.packets,
            )
        except (OSError, av.error.FFmpegError, sqlite3.Error) as exc:
            with contextlib.suppress(Exception):
                seg.file.close()
            self._salvage(seg, exc)
            return
        self.stats.segments_closed += 1
        state.largest_segment = max(state.largest_segment, size)
        with self._indexed:
            self._indexed.notify_all()
        self._purge_wake.set()

    def _salvage(self, seg: _OpenSegment, exc: BaseException) -> None:
        """A segment that could not be finished: keep what reached the disk whole, if anything."""
        self.stats.write_errors += 1
        probe = repair_and_probe(seg.path)
        try:
            if probe is None:
                self.index.unmark_writing(seg.rel)
            else:
                self.index.add(
                    seg.camera,
                    seg.start,
                    seg.start + probe.duration_s,
                    seg.rel,
                    seg.path.stat().st_size,
                    probe.codec,
                    probe.width,
                    probe.height,
                    probe.packets,
                )
        except (OSError, sqlite3.Error) as err:
            log.error("recording %s: cannot index salvaged segment: %s", seg.camera, err)
        self._report_write_error(seg.camera, exc)

    def _write_failed(self, state: _CameraState, camera: str, exc: BaseException) -> None:
        seg = state.segment
        state.segment = None
        state.need_keyframe = True
        if seg is not None:
            with contextlib.suppress(Exception):
                seg.container.close()
            with contextlib.suppress(Exception):
                seg.file.close()
            self._salvage(seg, exc)
        else:
            self.stats.write_errors += 1
            self._report_write_error(camera, exc)

    def _report_write_error(self, camera: str, exc: BaseException) -> None:
        now = iso_ms(self.clock())
        if _is_enospc(exc):
            self._urgent_free = max(
                self._urgent_free,
                2 * max((s.largest_segment for s in self._cameras.values()), default=0),
                4 << 20,
            )
            self._warn(
                "disk_full",
                f"{now}: data partition of {self.rec_dir} full while recording {camera}; "
                "oldest recordings purged, recording resumes at the next keyframe",
            )
            log.error(
                "recording %s: disk full in %s; purging the oldest segments, resuming at the "
                "next keyframe",
                camera,
                self.rec_dir,
            )
            self._purge_wake.set()
        else:
            reason = getattr(exc, "strerror", None) or str(exc)
            self._warn(
                f"write:{camera}",
                f"{now}: cannot write recordings of {camera} in {self.rec_dir}: {reason}; "
                "retrying at the next keyframe",
            )
            log.error(
                "recording %s: cannot write in %s: %s; retrying at the next keyframe",
                camera,
                self.rec_dir,
                reason,
            )

    def _warn(self, key: str, message: str) -> None:
        with self._warn_lock:
            self._warnings[key] = (self.clock() + _WARNING_TTL_S, message)

    # -- retention thread ---------------------------------------------------------------------
    def _purge_loop(self) -> None:
        while not self._stop_purge.is_set():
            try:
                self._run_retention()
            except Exception:  # keep purging later rather than let the disk fill
                log.exception("retention pass failed; retrying in %.0f s", self._purge_interval)
            self._purge_wake.wait(self._purge_interval)
            self._purge_wake.clear()

    def _limits(self) -> Limits:
        cfg = self.config
        # Room for the segment each camera is writing and for one just closed that this pass
        # has not purged for yet: the files on disk then stay under the cap at every moment.
        active_since = time.monotonic() - 2 * _IDLE_CLOSE_S
        reserve = sum(
            2 * s.largest_segment
            for s in list(self._cameras.values())
            if s.last_seen_mono > active_since
        )
        return Limits(
            legal_max_age_s=cfg.legal_max_age_days * DAY_S,
            max_age_s=cfg.max_age_days * DAY_S if cfg.max_age_days is not None else None,
            max_bytes=cfg.max_bytes,
            max_percent=cfg.max_percent,
            min_free_bytes=max(cfg.min_free_bytes, self._urgent_free),
            reserve_bytes=reserve,
        )

    def _run_retention(self) -> PurgePlan:
        with self._retention_lock:
            now = self.clock()
            limits = self._limits()
            self._urgent_free = 0
            usage = shutil.disk_usage(self.rec_dir)
            disk = DiskState(partition_bytes=usage.total, free_bytes=usage.free)
            self.index.drop_pins_older_than(now - limits.legal_max_age_s)
            plan = plan_purge(
                (s.ref() for s in self.index.iter_oldest_first()),
                self.index.total_bytes(),
                now,
                limits,
                self.index.pins(),
                disk,
            )
            self._execute(plan)
            if plan.shortfall_bytes > 0 and plan.kept_pinned:
                self._warn(
                    "pinned",
                    f"{iso_ms(now)}: recordings exceed their size limit by "
                    f"{plan.shortfall_bytes / 1e6:.0f} MB because {plan.kept_pinned} segments "
                    "are kept for event clips not yet delivered",
                )
            return plan

    def _execute(self, plan: PurgePlan) -> None:
        if not plan.delete:
            return
        # Index first: the index must never list a deleted file. A crash in between leaves
        # orphans that the next reconcile indexes again and the next pass purges.
        try:
            self.index.remove([s.segment_id for s in plan.delete])
            index_first = True
        except sqlite3.Error as exc:
            if not _is_enospc(exc):
                raise
            # The index cannot even record a deletion on a full disk: free the files first,
            # then forget them. Until then a clip may meet a missing file (a gap, not an error).
            index_first = False
        for seg in plan.delete:
            path = self.rec_dir / seg.path
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the day's directory, once empty
        if not index_first:
            self.index.remove([s.segment_id for s in plan.delete])
        self.stats.segments_purged += len(plan.delete)
        self.stats.bytes_purged += plan.freed_bytes
        counts: dict[str, int] = {}
        for reason in plan.reasons.values():
            counts[reason] = counts.get(reason, 0) + 1
        log.info(
            "retention: %d segments purged (%.1f MB): %s",
            len(plan.delete),
            plan.freed_bytes / 1e6,
            counts,
        )
