"""Event clips and exports cut from the recording ring: MP4 (+faststart) by remuxing, no re-encode.

``cut_clip`` starts at the last keyframe at or before the wanted start (so the clip holds the
whole pre-roll) and stops once the wanted end is covered. ``ExportService`` answers ``cmd/export``
and hands the finished MP4 to the publisher; event clips are jobs (``record.clip_jobs``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from pydantic import BaseModel, ConfigDict, Field, field_validator

from guetteur.config import GuetteurConfig
from guetteur.errors import GuetteurError
from guetteur.record.index import Segment, SegmentIndex
from guetteur.timeutil import iso_ms, parse_iso
from guetteur.uplink.commands import CommandContext, CommandDispatcher, CommandError
from guetteur.uplink.protocol import ErrorCode, valid_id
from guetteur.uplink.publish import ClipFile, Publisher

log = logging.getLogger(__name__)

GAP_TOLERANCE_S = 0.5  # holes shorter than this (jitter between segments) are not gaps
_FUTURE_SLACK_S = 2.0  # clocks of centre and gateway differ a little


class ClipError(GuetteurError):
    """A clip that cannot be cut: machine code (protocol.ErrorCode) and a sentence."""


@dataclass(frozen=True)
class ClipResult:
    path: Path
    start: float  # epoch s of the first frame in the clip
    end: float  # epoch s of the end of the last frame
    gaps: list[tuple[float, float]] = field(default_factory=list)  # wanted but not recorded
    packets: int = 0


def coverage_gaps(
    covered: Sequence[tuple[float, float]], t0: float, t1: float, tolerance: float = GAP_TOLERANCE_S
) -> list[tuple[float, float]]:
    """Parts of [t0, t1] outside every covered interval, longer than ``tolerance``."""
    gaps: list[tuple[float, float]] = []
    cursor = t0
    for a, b in sorted(covered):
        if b <= cursor:
            continue
        if a > cursor and min(a, t1) - cursor > tolerance:
            gaps.append((cursor, min(a, t1)))
        cursor = max(cursor, b)
        if cursor >= t1:
            break
    if t1 - cursor > tolerance:
        gaps.append((cursor, t1))
    return gaps


def _params(seg: Segment) -> tuple[str, int, int]:
    return (seg.codec, seg.width, seg.height)


def cut_clip(
    index: SegmentIndex,
    camera: str,
    start_epoch: float,
    end_epoch: float,
    pre_roll: float,
    post_roll: float,
    out_path: Path,
) -> ClipResult:
    """Cut [start - pre_roll, end + post_roll] of ``camera`` into an MP4 at ``out_path``.

    Raises ClipError(not_found) when nothing of the range is recorded. Segments with another
    codec or resolution than the one recording the event start are left out and reported as
    gaps (one MP4 track holds one stream configuration)."""
    t0 = start_epoch - pre_roll
    t1 = end_epoch + post_roll
    segments = index.overlapping(camera, t0, t1)
    if not segments:
        raise ClipError(
            ErrorCode.NOT_FOUND,
            f"no recording of camera {camera} between {iso_ms(t0)} and {iso_ms(t1)}",
        )
    anchor = next((s for s in segments if s.start <= start_epoch < s.end), segments[0])
    wanted = _params(anchor)
    usable = [s for s in segments if _params(s) == wanted]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".part")
    covered: list[tuple[float, float]] = []
    packets = 0
    clip_start: float | None = None
    clip_end = 0.0
    output: Any = None
    out_stream: Any = None
    last_dts: int | None = None
    try:
        for seg in usable:
            try:
                box = av.open(str(index.path_of(seg)))
            except (OSError, av.error.FFmpegError) as exc:
                log.warning("clip of %s: segment %s unreadable (%s); gap", camera, seg.path, exc)
                continue
            with box:
                vs = box.streams.video[0]
                tb = Fraction(vs.time_base or Fraction(1, 90000))
                pkts: list[tuple[Any, int, int]] = []  # packet, pts, dts
                for p in box.demux(vs):
                    if p.size and p.pts is not None:
                        pkts.append((p, int(p.pts), int(p.dts if p.dts is not None else p.pts)))
                if not pkts:
                    continue
                first_pts = pkts[0][1]
                walls = [seg.start + float((pts - first_pts) * tb) for _, pts, _ in pkts]
                step = float((pkts[1][1] - pkts[0][1]) * tb) if len(pkts) > 1 else 0.04
                begin = 0
                if clip_start is None:
                    # Start on the last keyframe at or before t0: the clip holds all the pre-roll.
                    keys = [i for i, (p, _, _) in enumerate(pkts) if p.is_keyframe]
                    before = [i for i in keys if walls[i] <= t0]
                    begin = before[-1] if before else (keys[0] if keys else len(pkts))
                chosen = []
                for i in range(begin, len(pkts)):
                    if walls[i] >= t1:
                        break
                    chosen.append(i)
                if not chosen:
                    continue
                if output is None:
                    output = av.open(
                        str(tmp), "w", format="mp4", options={"movflags": "+faststart"}
                    )
                    out_stream = output.add_stream_from_template(vs)
                    clip_start = walls[chosen[0]]
                    output.metadata["creation_time"] = iso_ms(clip_start)
                assert clip_start is not None
                # Place each segment on the clip's wall-clock timeline (gaps stay gaps). Its start
                # is when its keyframe arrived, which jitters: a segment that follows the last one
                # within GAP_TOLERANCE_S is joined one frame after it, so a join neither repeats
                # a timestamp (two 90 kHz ticks apart become one in a coarser MP4 timescale) nor
                # shows a one-tick frame or a small false hole.
                offset = round((seg.start - clip_start) / tb) - first_pts
                first_dts = pkts[chosen[0]][2]
                if last_dts is not None:
                    frame = round(step / float(tb)) or 1
                    joined = last_dts + frame - first_dts
                    if offset < joined or (offset - joined) * tb < GAP_TOLERANCE_S:
                        offset = joined
                for i in chosen:
                    p, pts, dts = pkts[i]
                    p.pts = pts + offset
                    p.dts = dts + offset
                    p.stream = out_stream
                    output.mux(p)
                    last_dts = dts + offset
                    packets += 1
                seg_from = walls[chosen[0]]
                seg_to = walls[chosen[-1]] + step
                covered.append((seg_from, seg_to))
                clip_end = max(clip_end, seg_to)
        if output is None or clip_start is None:
            raise ClipError(
                ErrorCode.NOT_FOUND,
                f"no playable recording of camera {camera} between {iso_ms(t0)} and {iso_ms(t1)}",
            )
        output.close()
        output = None
        os.replace(tmp, out_path)
    finally:
        if output is not None:
            with contextlib.suppress(Exception):
                output.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return ClipResult(out_path, clip_start, clip_end, coverage_gaps(covered, t0, t1), packets)


def wait_for_recording(
    index: SegmentIndex,
    camera: str,
    until: float,
    timeout: float,
    poll_s: float = 0.25,
    stop: threading.Event | None = None,
) -> bool:
    """Wait until the index covers ``camera`` up to ``until`` (works across processes); False
    after ``timeout``, or at once when ``stop`` is set (the agent stopping)."""
    deadline = time.monotonic() + timeout
    while True:
        end = index.covered_until(camera)
        if end is not None and end >= until - GAP_TOLERANCE_S:
            return True
        if time.monotonic() >= deadline:
            return False
        if stop is None:
            time.sleep(poll_s)
        elif stop.wait(poll_s):
            return False


# --------------------------------------------------------------------------------------------
# Export: validation shared by cmd/export and the CLI.


def _time_field(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError("expected an ISO 8601 UTC time such as 2026-11-23T10:15:42.123Z")
    try:
        return parse_iso(value)
    except ValueError:
        raise ValueError(
            f"{value[:40]!r} is not an ISO 8601 time (e.g. 2026-11-23T10:15:42.123Z)"
        ) from None


class ExportRequest(BaseModel):
    """Payload of ``cmd/export``: ``{"camera", "from", "to"}`` (ISO 8601), optional operator."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    camera: str = Field(max_length=200, description="Camera id")
    from_: float = Field(alias="from", description="Start of the range, ISO 8601 UTC")
    to: float = Field(description="End of the range, ISO 8601 UTC")
    operator: str | None = Field(None, max_length=200, description="Who asked, for the audit")

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _times(cls, v: Any) -> float:
        return _time_field(v)


def check_export(
    camera: str,
    t0: float,
    t1: float,
    now: float,
    max_s: float,
    known_cameras: set[str],
) -> None:
    """Refuse a bad export range with a CommandError (code + sentence). Pure."""
    if not valid_id(camera):
        raise CommandError(
            ErrorCode.BAD_REQUEST,
            f"camera {camera[:64]!r} is not a camera id (letters, digits, '-' or '_' only)",
        )
    if camera not in known_cameras:
        raise CommandError(
            ErrorCode.UNKNOWN_CAMERA, f"camera {camera!r} is not a camera of this gateway"
        )
    if t1 <= t0:
        raise CommandError(
            ErrorCode.BAD_REQUEST,
            f"'to' ({iso_ms(t1)}) must be after 'from' ({iso_ms(t0)})",
        )
    if t0 > now:
        raise CommandError(
            ErrorCode.OUT_OF_RANGE,
            f"'from' ({iso_ms(t0)}) is in the future (gateway time {iso_ms(now)})",
        )
    if t1 > now + _FUTURE_SLACK_S:
        raise CommandError(
            ErrorCode.OUT_OF_RANGE,
            f"'to' ({iso_ms(t1)}) is in the future (gateway time {iso_ms(now)})",
        )
    if t1 - t0 > max_s:
        raise CommandError(
            ErrorCode.OUT_OF_RANGE,
            f"range of {t1 - t0:.0f} s is longer than the {max_s:.0f} s one export may cover "
            "(recording.export_max_s); ask for several shorter ranges",
        )


def recorded_gaps(
    index: SegmentIndex, camera: str, t0: float, t1: float, now: float
) -> tuple[list[tuple[float, float]], bool]:
    """Gaps of [t0, t1] in the index (the segment being written counts as recorded up to now),
    and whether anything at all is recorded."""
    covered = [(s.start, s.end) for s in index.overlapping(camera, t0, t1)]
    writing = index.writing_start(camera)
    if writing is not None and writing < t1:
        covered.append((writing, now))
    gaps = coverage_gaps(covered, t0, t1)
    nothing = not covered or gaps == [(t0, t1)]
    return gaps, not nothing


def _gap_list(gaps: Sequence[tuple[float, float]]) -> list[dict[str, str]]:
    return [{"from": iso_ms(a), "to": iso_ms(b)} for a, b in gaps]


class ExportService:
    """``cmd/export``: validate, reply at once with the clip id and the gaps, cut in a worker
    thread, hand the MP4 (under ``{data_dir}/clips``) to ``publisher.submit_clip``."""

    def __init__(
        self,
        config: GuetteurConfig,
        recorder_index: SegmentIndex,
        publisher: Publisher,
        clock: Callable[[], float] = time.time,
        max_pending: int = 4,
    ) -> None:
        self.config = config
        self.index = recorder_index
        self.publisher = publisher
        self.clock = clock
        self.out_dir = Path(config.data_dir) / "clips"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export")
        self._pending = 0
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._queued: list[Future[None]] = []

    def register(self, dispatcher: CommandDispatcher) -> None:
        dispatcher.register("export", ExportRequest, self.handle)

    def known_cameras(self) -> set[str]:
        return {c.id for c in self.config.cameras} | set(self.index.cameras())

    def handle(self, ctx: CommandContext, req: ExportRequest) -> dict[str, Any]:
        if ctx.request_id is not None and not valid_id(ctx.request_id):
            raise CommandError(
                ErrorCode.BAD_REQUEST,
                "request id must be 1-64 letters, digits, '-' or '_' (it names files)",
            )
        now = self.clock()
        t0, t1 = req.from_, req.to
        check_export(
            req.camera, t0, t1, now, self.config.recording.export_max_s, self.known_cameras()
        )
        gaps, anything = recorded_gaps(self.index, req.camera, t0, t1, now)
        if not anything:
            oldest = self.index.oldest_start(req.camera)
            since = f"; oldest recording {iso_ms(oldest)}" if oldest is not None else ""
            raise CommandError(
                ErrorCode.NOT_FOUND,
                f"nothing recorded for camera {req.camera} between {iso_ms(t0)} and "
                f"{iso_ms(t1)}{since}",
            )
        with self._lock:
            if self._pending >= self._max_pending:
                raise CommandError(
                    ErrorCode.LIMIT_REACHED,
                    f"{self._pending} exports are already being cut; try again shortly",
                )
            self._pending += 1
        clip_id = f"exp-{uuid.uuid4().hex}"
        future = self._pool.submit(self._cut, clip_id, req.camera, t0, t1, ctx.request_id)
        with self._lock:
            self._queued = [f for f in self._queued if not f.done()] + [future]
        log.info(
            "export %s of %s %s..%s accepted (request %s, %d gaps)",
            clip_id,
            req.camera,
            iso_ms(t0),
            iso_ms(t1),
            ctx.request_id,
            len(gaps),
        )
        return {
            "clip_id": clip_id,
            "camera": req.camera,
            "from": iso_ms(t0),
            "to": iso_ms(t1),
            "gaps": _gap_list(gaps),
        }

    def _cut(self, clip_id: str, camera: str, t0: float, t1: float, request_id: str | None) -> None:
        try:
            # A range ending in the segment being written waits for that segment to close.
            wait = self.config.recording.segment_s * 2 + 10
            wait_for_recording(self.index, camera, t1, wait, stop=self._stopping)
            if self._stopping.is_set():
                log.error(
                    "export %s of %s not cut: the agent is stopping; ask for it again",
                    clip_id,
                    camera,
                )
                return
            out = self.out_dir / f"{clip_id}.mp4"
            result = cut_clip(self.index, camera, t0, t1, 0.0, 0.0, out)
            self.publisher.submit_clip(
                ClipFile(
                    clip_id=clip_id,
                    path=str(result.path),
                    camera=camera,
                    request_id=request_id,
                    start=iso_ms(result.start),
                    end=iso_ms(result.end),
                )
            )
            log.info("export %s of %s ready: %s (%d packets)", clip_id, camera, out, result.packets)
        except ClipError as exc:
            log.error("export %s of %s failed: %s", clip_id, camera, exc.message)
        except Exception:
            log.exception("export %s of %s failed", clip_id, camera)
        finally:
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        """At a stop: an export waiting for its recording gives up at once (the cameras have
        stopped), those not started are dropped with a log line (the centre asks again); an
        export already being cut finishes. Exports are on demand, not owed like event clips."""
        self._stopping.set()
        with self._lock:
            dropped = sum(f.cancel() for f in self._queued)  # True for those not started
        self._pool.shutdown(wait=True)
        if dropped:
            log.error("stopping: %d export(s) not started are dropped; ask again", dropped)
