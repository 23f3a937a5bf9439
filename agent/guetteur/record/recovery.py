"""Crash recovery of the recording ring: what a kill -9 or a power cut leaves, made playable.

Segment files are fsynced before they enter the index, so the index only lists complete files;
an interruption can leave the file that was being written (cut anywhere, maybe with a zero-filled
tail) and, with ``synchronous=NORMAL``, a closed file whose index insert was lost. ``reconcile``
(at start-up) cuts such files back to their last whole video packet (``repair_and_probe``) and
indexes them, and forgets index rows whose file is gone. MPEG-TS makes that possible: a file cut
anywhere is still playable up to its last whole packet (see docs/recording.md); the recorder
flushes the open file at every keyframe, so what is cut off is at most the last GOP.

``start_up`` is reconcile as the recorder runs it: it survives a full disk (the reserve file,
``record/reserve.py``, then a retention pass) and closes the pins a crash left open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import av

from guetteur.record import reserve
from guetteur.record.index import SegmentIndex, parse_segment_name
from guetteur.record.purge import RingPurger, is_disk_full
from guetteur.record.segment import TS_TIME_BASE
from guetteur.timeutil import iso_ms
from guetteur.uplink.protocol import valid_id

log = logging.getLogger(__name__)

_TS_PACKET = 188


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


def salvage(index: SegmentIndex, rel: str, camera: str, start: float) -> bool:
    """Index what a segment that could not be finished (a write error) holds whole, or forget
    it; True when something was kept."""
    path = index.root / rel
    probe = repair_and_probe(path)
    for attempt in (1, 2):
        try:
            if probe is None:
                index.unmark_writing(rel)
                return False
            index.add(
                camera,
                start,
                start + probe.duration_s,
                rel,
                path.stat().st_size,
                probe.codec,
                probe.width,
                probe.height,
                probe.packets,
            )
            return True
        except (OSError, sqlite3.Error) as err:
            # A full disk: the databases' reserve is for this too (else an unindexed file
            # would hold space retention cannot see until the next start).
            if (
                attempt == 1
                and is_disk_full(err)
                and reserve.release(index.root.parent, "the recordings index")
            ):
                continue
            log.error("recording %s: cannot index salvaged segment %s: %s", camera, rel, err)
    return False


@dataclass
class ReconcileReport:
    checked: int = 0
    missing_removed: int = 0  # index rows whose file was gone
    repaired: int = 0  # partial files cut back and indexed
    orphans_indexed: int = 0
    removed_files: int = 0  # files with nothing playable left
    pins_closed: int = 0  # pins a crash left without an end
    failed: str | None = field(default=None)  # why reconcile could not finish (full disk)


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


def start_up(index: SegmentIndex, purger: RingPurger, pin_max_s: float) -> ReconcileReport:
    """``reconcile`` at the recorder's start, surviving a full disk: when the index cannot
    commit, the reserve file is released, a retention pass frees space (files first when the
    index cannot even record a deletion) and reconcile runs again. If it still cannot finish,
    the recorder starts anyway (the report says why) rather than leave the gateway down.
    Then the pins a crash left open get an end (``SegmentIndex.close_open_pins``)."""
    try:
        report = reconcile(index)
    except (sqlite3.Error, OSError) as exc:
        if not is_disk_full(exc):
            raise
        log.error(
            "recordings in %s: disk full at start-up; releasing the reserve and purging the "
            "oldest segments before reconciling again",
            index.root,
        )
        if purger.data_dir is not None:
            reserve.release(purger.data_dir, "the recordings index")
        try:
            purger.run()
            report = reconcile(index)
        except (sqlite3.Error, OSError) as again:
            if not is_disk_full(again):
                raise
            log.error(
                "recordings in %s: still no room to reconcile (%s); recording starts anyway "
                "and retention keeps freeing space",
                index.root,
                again,
            )
            return ReconcileReport(failed=f"disk full: {again}")
    try:
        closed = index.close_open_pins(pin_max_s)
    except sqlite3.Error as exc:
        log.error("recordings: cannot close the pins left open by a crash: %s", exc)
        closed = []
    for pin in closed:
        log.warning(
            "recording %s: event %s was still open when the agent stopped; its pin now ends at "
            "%s (what was recorded)",
            pin.camera,
            pin.pin_id,
            iso_ms(pin.t1),
        )
    report.pins_closed = len(closed)
    return report
