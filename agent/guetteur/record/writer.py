"""Ring-buffer recording: every camera's encoded packets, never re-encoded, in MPEG-TS segments.

Each segment starts on a keyframe and is about ``segment_s`` long (``record/segment.py`` writes
one file; ``record/index.py`` lists the closed ones). Why MPEG-TS: see docs/recording.md.

Threads: ``on_packet`` (the source's thread) only appends to a bounded in-memory queue; one writer
thread muxes, flushes the file at every keyframe (fdatasync at most every ``sync_interval_s``)
and fsyncs each segment at close, before it enters the index; one retention thread runs
``record/purge.py``. A kill -9 or a power cut thus loses at most the last GOP or second:
``reconcile`` (``record/recovery.py``) cuts the open segment back to its last whole packet and
indexes it at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from guetteur.config import RecordingConfig
from guetteur.media.bitstream import CODECS, AnnexBConverter, BitstreamError
from guetteur.media.types import EncodedPacket, StreamInfo
from guetteur.record import reserve
from guetteur.record.index import SegmentIndex
from guetteur.record.purge import RingPurger, is_disk_full
from guetteur.record.recovery import salvage, start_up
from guetteur.record.retention import Pin, PurgePlan
from guetteur.record.segment import OpenSegment, annexb_converter
from guetteur.timeutil import iso_ms
from guetteur.uplink.protocol import valid_id

log = logging.getLogger(__name__)

_QUEUE_MAX_BYTES = 32 << 20  # ~1 min of a 4 Mbit/s camera: absorbs a slow fsync or purge
_IDLE_CLOSE_S = 5.0  # a camera silent this long gets its segment closed (and indexed)
_WARNING_TTL_S = 900.0
_PURGE_INTERVAL_S = 30.0


@dataclass
class _CameraState:
    stream: StreamInfo | None = None
    annexb: AnnexBConverter | None = None  # None: a stream the recorder cannot rewrite
    segment: OpenSegment | None = None
    need_keyframe: bool = True
    largest_segment: int = 0
    last_seen_mono: float = 0.0


@dataclass
class RecorderStats:
    packets_received: int = 0
    bytes_received: int = 0
    packets_dropped_queue: int = 0
    packets_waiting_keyframe: int = 0
    packets_malformed: int = 0  # not the H.264/H.265 framing they claim: dropped
    segments_closed: int = 0
    segments_purged: int = 0
    bytes_purged: int = 0
    write_errors: int = 0


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
        self._cameras: dict[str, _CameraState] = {}  # inserted by the writer thread only
        self._cameras_lock = threading.Lock()  # held to insert, and to read from other threads
        self._warnings: dict[str, tuple[float, str]] = {}
        self._warn_lock = threading.Lock()
        # Opening the index on a full disk may need room (WAL files): the reserve goes first.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(self.data_dir).free < config.headroom_bytes:
            reserve.release(self.data_dir, "the recordings index")
        self.index = SegmentIndex.for_data_dir(self.data_dir)
        self.rec_dir = self.index.root
        self._ring_purger = RingPurger(
            self.index,
            config,
            clock,
            reserve_bytes=self._reserve_bytes,
            warn=self._warn,
            data_dir=self.data_dir,
        )
        started = time.monotonic()
        self.reconcile_report = start_up(self.index, self._ring_purger, config.pin_max_s)
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
        # camera → why its writes fail (French, English); cleared when a segment is written
        self._failing: dict[str, tuple[str, str]] = {}
        self._indexed = threading.Condition()
        self._purge_wake = threading.Event()
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

    def degraded_reason(self) -> str | None:
        """Why recording is degraded (some camera cannot write, the partition is short of space,
        the databases' reserve is in use), French first then English, or None. Cheap: no index
        query."""
        with self._cameras_lock:
            failing = sorted(self._failing.items())
        reasons = [
            (f"enregistrement de {cam} arrêté : {fr}", f"recording of {cam} stopped: {en}")
            for cam, (fr, en) in failing
        ]
        reasons += self._ring_purger.space_reasons()
        if not reasons:
            return None
        return "; ".join(fr for fr, _ in reasons) + " / " + "; ".join(en for _, en in reasons)

    def status(self) -> dict[str, Any]:
        """The recording part of the gateway status: ``state`` is ``degraded`` with a ``reason``
        while ``degraded_reason`` says so."""
        oldest = self.index.oldest_start()
        with self._cameras_lock:
            recording = sorted(c for c, s in self._cameras.items() if s.segment is not None)
        reason = self.degraded_reason()
        return {
            "state": "degraded" if reason else "ok",
            "reason": reason,
            "bytes": self.index.total_bytes(),
            "oldest": iso_ms(oldest) if oldest is not None else None,
            "recording": recording,
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
            state = _CameraState()
            with self._cameras_lock:
                self._cameras[pkt.camera] = state
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
            state.annexb = annexb_converter(pkt)
            state.need_keyframe = True
        elif seg is not None and seg.discontinuous(pkt):
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
            if pkt.stream.codec not in CODECS:
                if state.need_keyframe:
                    log.error(
                        "not recording %s: codec %s not supported", pkt.camera, pkt.stream.codec
                    )
                state.need_keyframe = False
                return
            if state.annexb is None:
                return  # unreadable extradata: said when the stream began
        data = self._annexb(state, pkt)
        if data is None:
            return
        if state.segment is None and not self._open_segment(state, pkt):
            return
        self._mux(state, pkt, data)

    def _annexb(self, state: _CameraState, pkt: EncodedPacket) -> bytes | None:
        """The packet as Annex B with parameter sets before keyframes; None when it is not the
        bitstream it claims to be: dropped, and the segment closed (the frames that follow
        would refer to it), recording resumes at the next keyframe."""
        assert state.annexb is not None
        try:
            return state.annexb.convert(pkt.data, pkt.keyframe)[0]
        except BitstreamError as exc:
            self.stats.packets_malformed += 1
            count = self.stats.packets_malformed
            if count in (1, 10, 100) or count % 1000 == 0:
                log.warning(
                    "recording %s: packet dropped, not valid %s (%s; %d so far); new segment at "
                    "the next keyframe",
                    pkt.camera, pkt.stream.codec, exc, count,
                )  # fmt: skip
            self._close_segment(state)
            state.need_keyframe = True
            return None

    def _open_segment(self, state: _CameraState, pkt: EncodedPacket) -> bool:
        try:
            self._check_room()
            state.segment = OpenSegment.create(self.index, pkt, self.config.write_buffer_bytes)
        except (OSError, av.error.FFmpegError, sqlite3.Error) as exc:
            self._write_failed(state, pkt.camera, exc)
            return False
        state.need_keyframe = False
        return True

    def _check_room(self) -> None:
        # The databases' part of the headroom: recording waits rather than take it.
        reserve.check_room(self.rec_dir, self.config.headroom_bytes // 4)

    def _mux(self, state: _CameraState, pkt: EncodedPacket, data: bytes) -> None:
        seg = state.segment
        assert seg is not None
        if pkt.keyframe and seg.packets:  # checked once a GOP: one statvfs a second
            try:
                self._check_room()
            except OSError as exc:
                self._close_segment(state)  # what is written stays, indexed
                state.need_keyframe = True
                self._report_write_error(pkt.camera, exc)
                return
        try:
            if seg.packets:
                now = time.monotonic()
                interval = self.config.sync_interval_s
                if pkt.keyframe or (interval > 0 and now - seg.flushed_mono >= interval):
                    seg.checkpoint(now, interval)  # the GOP (or second) before is now on disk
            seg.write(pkt, data)
        except (OSError, av.error.FFmpegError) as exc:
            self._write_failed(state, pkt.camera, exc)

    def _close_segment(self, state: _CameraState) -> None:
        seg = state.segment
        if seg is None:
            return
        state.segment = None
        try:
            size, end = seg.finish()
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
        if seg.camera in self._failing:
            log.info("recording %s: segments written again", seg.camera)
            with self._cameras_lock:
                del self._failing[seg.camera]
        with self._indexed:
            self._indexed.notify_all()
        self._purge_wake.set()

    def _salvage(self, seg: OpenSegment, exc: BaseException) -> None:
        """A segment that could not be finished: keep what reached the disk whole, if anything."""
        self.stats.write_errors += 1
        salvage(self.index, seg.rel, seg.camera, seg.start)
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
        why = "disk full" if is_disk_full(exc) else getattr(exc, "strerror", None) or str(exc)
        pourquoi = "disque plein" if is_disk_full(exc) else why
        with self._cameras_lock:
            again = camera in self._failing  # said once per failure streak, not every keyframe
            self._failing.setdefault(camera, (f"{pourquoi} depuis {now}", f"{why} since {now}"))
        if is_disk_full(exc):
            largest = max((s.largest_segment for s in self._cameras.values()), default=0)
            self._ring_purger.need_free(max(2 * largest, 4 << 20))
            self._purge_wake.set()
            key, what = "disk_full", f"data partition of {self.rec_dir} full"
            then = "purging the oldest recordings, retrying at each keyframe"
        else:
            key, what = f"write:{camera}", f"cannot write in {self.rec_dir}: {why}"
            then = "retrying at each keyframe"
        # A truthful sentence: the status stays degraded until a segment is written again.
        self._warn(key, f"{now}: recording of {camera} stopped: {what}; {then}")
        if not again:
            log.error("recording %s stopped: %s; %s", camera, what, then)

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

    def _run_retention(self) -> PurgePlan:
        with self._retention_lock:
            plan = self._ring_purger.run()
            self.stats.segments_purged += len(plan.delete)
            self.stats.bytes_purged += plan.freed_bytes
            return plan

    def _reserve_bytes(self) -> int:
        # Room for the segment each camera is writing and for one just closed that this pass
        # has not purged for yet: the files on disk then stay under the cap at every moment.
        active_since = time.monotonic() - 2 * _IDLE_CLOSE_S
        with self._cameras_lock:
            states = list(self._cameras.values())
        return sum(2 * s.largest_segment for s in states if s.last_seen_mono > active_since)
