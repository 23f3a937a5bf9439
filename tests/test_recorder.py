"""Recorder: segments of real H.264 on real disk, SQLite index, retention, repair, ENOSPC."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from guetteur.config import RecordingConfig
from guetteur.record.index import SegmentIndex, parse_segment_name, segment_name
from guetteur.record.recovery import reconcile
from guetteur.record.retention import DAY_S
from guetteur.record.writer import Recorder
from tests.fixtures.disk import fill
from tests.recording_agent import Clip, decode_strict, feed, load_clip, make_h264


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recmedia")


@pytest.fixture(scope="session")
def clip_avcc(media_dir: Path) -> Clip:
    return load_clip(make_h264(media_dir / "qvga.mp4", seconds=10, gop_s=1.0))


@pytest.fixture(scope="session")
def clip_annexb(media_dir: Path) -> Clip:
    return load_clip(make_h264(media_dir / "qvga.ts", seconds=10, gop_s=1.0, annexb=True), True)


@pytest.fixture(scope="session")
def clip_large(media_dir: Path) -> Clip:
    return load_clip(make_h264(media_dir / "nhd.mp4", seconds=4, size="640x360", gop_s=2.0))


def config(**kw: object) -> RecordingConfig:
    base: dict[str, object] = {"segment_s": 4.0, "max_percent": None, "min_free_bytes": 0}
    base.update(kw)
    return RecordingConfig.model_validate(base)


def check_index(index: SegmentIndex) -> list[tuple[int, int]]:
    """Every indexed segment exists, has the indexed size and decodes from first to last packet,
    starting on a keyframe. Returns (packets, frames) per segment."""
    out = []
    for seg in index.all_segments():
        path = index.path_of(seg)
        assert path.stat().st_size == seg.size, seg
        packets, frames, first_key = decode_strict(path)
        assert first_key, f"{seg.path} does not start on a keyframe"
        assert packets == frames == seg.packets, seg
        out.append((packets, frames))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["avcc", "annexb"])
def test_segments_start_on_keyframes_and_decode(
    kind: str, clip_avcc: Clip, clip_annexb: Clip, tmp_path: Path
) -> None:
    clip = clip_avcc if kind == "avcc" else clip_annexb
    wall0 = time.time() - 120
    rec = Recorder(config(), tmp_path)
    fed = 0
    for pkt in feed(clip, "cam1", wall0, loops=3):
        rec.on_packet(pkt)
        fed += 1
    rec.close()
    index = SegmentIndex.for_data_dir(tmp_path)
    segs = index.all_segments()
    assert len(segs) == 8  # 30 s in segments of 4 s (keyframe every second)
    counts = check_index(index)
    assert sum(p for p, _ in counts) == fed
    for a, b in itertools.pairwise(segs):
        assert abs(b.start - a.end) < 0.01  # contiguous: no hole, no overlap
    assert segs[0].start == pytest.approx(wall0, abs=1e-3)
    assert segs[-1].end == pytest.approx(wall0 + 30.0, abs=0.05)
    for seg in segs[:-1]:
        assert seg.end - seg.start == pytest.approx(4.0, abs=0.05)
        assert seg.first_keyframe == seg.start
    day = time.strftime("%Y-%m-%d", time.gmtime(segs[0].start))
    assert segs[0].path.startswith(f"cam1/{day}/")
    assert parse_segment_name(Path(segs[0].path).name) == pytest.approx(wall0, abs=1e-3)
    assert rec.stats.bytes_received == sum(len(p.data) for p in feed(clip, "c", 0, loops=3))
    index.close()


def test_segment_name_round_trip() -> None:
    t = 1_795_000_000.123
    assert parse_segment_name(segment_name(t)) == pytest.approx(t, abs=1e-3)
    assert parse_segment_name("../../etc/passwd") is None


def test_waits_for_a_keyframe_and_splits_on_stream_change(
    clip_avcc: Clip, clip_large: Clip, tmp_path: Path
) -> None:
    wall0 = time.time() - 60
    rec = Recorder(config(segment_s=10), tmp_path)
    first = list(feed(clip_avcc, "cam1", wall0, loops=1))
    for pkt in first[5:]:  # join mid-GOP: nothing before the next keyframe
        rec.on_packet(pkt)
    wall1 = first[-1].wallclock + 0.04
    for pkt in feed(clip_large, "cam1", wall1, loops=1):  # resolution changes
        rec.on_packet(pkt)
    rec.close()
    index = SegmentIndex.for_data_dir(tmp_path)
    segs = index.all_segments()
    assert [(s.width, s.height) for s in segs] == [(320, 240), (640, 360)]
    assert segs[0].start == pytest.approx(wall0 + 1.0, abs=1e-3)  # the second keyframe
    assert rec.stats.packets_waiting_keyframe == 20
    assert segs[1].start == pytest.approx(wall1, abs=1e-3)
    check_index(index)
    index.close()


def test_malformed_packet_is_dropped_and_recording_resumes_at_the_next_keyframe(
    clip_avcc: Clip, tmp_path: Path
) -> None:
    wall0 = time.time() - 60
    rec = Recorder(config(segment_s=10), tmp_path)
    packets = list(feed(clip_avcc, "cam1", wall0, loops=1))
    assert packets[30].keyframe is False and packets[50].keyframe is True
    # a P-frame whose last NAL length runs past the packet (a source that cut it short)
    packets[30] = replace(packets[30], data=packets[30].data[:-7])
    for pkt in packets:
        rec.on_packet(pkt)
    rec.close()
    assert rec.stats.packets_malformed == 1
    assert rec.stats.packets_waiting_keyframe == 19  # the rest of that GOP
    index = SegmentIndex.for_data_dir(tmp_path)
    segs = index.all_segments()
    assert [s.packets for s in segs] == [30, 200]
    assert [s.start - wall0 for s in segs] == pytest.approx([0.0, 2.0], abs=1e-3)
    check_index(index)  # nothing torn was written
    index.close()


def test_queue_overflow_drops_then_resumes_on_a_keyframe(clip_avcc: Clip, tmp_path: Path) -> None:
    wall0 = time.time() - 600
    # A queue smaller than a few frames: a burst from the source overflows it.
    rec = Recorder(config(segment_s=2), tmp_path, queue_max_bytes=20_000)
    for pkt in feed(clip_avcc, "cam1", wall0, loops=4):
        rec.on_packet(pkt)
    rec.close()
    assert rec.stats.packets_dropped_queue > 0
    index = SegmentIndex.for_data_dir(tmp_path)
    assert index.all_segments(), "something was recorded"
    check_index(index)
    assert any("fell behind" in w for w in rec.warnings())
    index.close()


def ring_bytes(data_dir: Path) -> int:
    total = 0
    for f in (data_dir / "rec").rglob("*.ts"):
        try:
            total += f.stat().st_size
        except FileNotFoundError:
            pass
    return total


@pytest.mark.slow
def test_size_cap_holds_over_a_long_run(clip_avcc: Clip, tmp_path: Path) -> None:
    cap = 1_500_000  # ~8 segments of 2 s at this bitrate
    rec = Recorder(config(segment_s=2, max_bytes=cap), tmp_path)
    wall0 = time.time() - 3600
    worst = 0
    for n, pkt in enumerate(feed(clip_avcc, "cam1", wall0, loops=15)):  # 150 s of video
        rec.on_packet(pkt)
        if n % 25 == 0:
            time.sleep(0.015)  # ~60x real time: segments close every ~30 ms
            worst = max(worst, ring_bytes(tmp_path))
    rec.close()
    worst = max(worst, ring_bytes(tmp_path))
    assert rec.stats.segments_purged > 50
    assert worst <= cap, f"ring reached {worst} bytes, cap {cap}"
    index = SegmentIndex.for_data_dir(tmp_path)
    assert index.total_bytes() == ring_bytes(tmp_path)
    assert index.total_bytes() > cap // 2  # not purged more than needed
    check_index(index)
    index.close()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.slow
def test_nothing_older_than_the_legal_maximum_survives(clip_avcc: Clip, tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    rec = Recorder(config(segment_s=2), tmp_path, clock=clock)
    # One 10 s recording a day for 40 days, pinned by an "undelivered clip" on the oldest one.
    for day in range(40, 0, -1):
        for pkt in feed(clip_avcc, "cam1", clock.now - day * DAY_S, loops=1):
            rec.on_packet(pkt)
        assert rec.flush()  # 40 days of packets at once would overflow the queue
    rec.pin("cam1", clock.now - 40 * DAY_S, clock.now - 39 * DAY_S, "evt-undelivered")
    rec.flush()
    time.sleep(0.3)
    rec.purge_now()
    oldest = rec.index.oldest_start()
    assert oldest is not None and oldest >= clock.now - 30 * DAY_S
    assert oldest < clock.now - 29 * DAY_S  # not more than the law asks
    clock.now += 5 * DAY_S
    rec.purge_now()
    assert min(s.start for s in rec.index.all_segments()) >= clock.now - 30 * DAY_S
    rec.close()
    assert rec.stats.packets_dropped_queue == 0
    # The configured age limit (shorter than the legal one) applies too.
    rec = Recorder(config(segment_s=2, max_age_days=7), tmp_path, clock=clock)
    rec.purge_now()
    assert min(s.start for s in rec.index.all_segments()) >= clock.now - 7 * DAY_S
    rec.close()


def test_pins_keep_segments_until_unpinned(clip_avcc: Clip, tmp_path: Path) -> None:
    wall0 = time.time() - 1000
    rec = Recorder(config(segment_s=2, max_bytes=400_000), tmp_path, purge_interval_s=3600)
    rec.pin("cam1", wall0 + 1, wall0 + 3, "evt-1")
    for pkt in feed(clip_avcc, "cam1", wall0, loops=3):
        rec.on_packet(pkt)
    rec.flush()
    time.sleep(0.2)
    rec.purge_now()
    kept = rec.index.overlapping("cam1", wall0 + 1, wall0 + 3)
    assert [round(s.start - wall0) for s in kept] == [0, 2]
    assert any("undelivered" in w or "not yet delivered" in w for w in rec.warnings())
    assert rec.unpin("evt-1")
    rec.purge_now()
    assert rec.index.overlapping("cam1", wall0 + 1, wall0 + 3) == []
    rec.close()


def test_reconcile_repairs_partial_files_and_orphans(clip_avcc: Clip, tmp_path: Path) -> None:
    wall0 = time.time() - 7200
    rec = Recorder(config(segment_s=2), tmp_path)
    for pkt in feed(clip_avcc, "cam1", wall0, loops=2):
        rec.on_packet(pkt)
    rec.close()
    index = SegmentIndex.for_data_dir(tmp_path)
    segs = index.all_segments()
    assert len(segs) == 10
    day_dir = index.path_of(segs[0]).parent
    rng = random.Random(3)
    # 1. the file being written when the power went: torn at a random byte, marked "writing".
    torn = day_dir / segment_name(wall0 + 100)
    data = index.path_of(segs[1]).read_bytes()
    torn.write_bytes(data[: rng.randint(len(data) // 3, len(data) - 1)])
    index.mark_writing(f"cam1/{day_dir.name}/{torn.name}", "cam1", wall0 + 100)
    # 2. an orphan whose index insert was lost, with a zero-filled tail (unwritten blocks).
    orphan = day_dir / segment_name(wall0 + 200)
    data = index.path_of(segs[2]).read_bytes()
    orphan.write_bytes(data[: len(data) // 2] + b"\x00" * (len(data) // 2))
    # 3. a file with nothing playable, 4. a file that is not ours, 5. an indexed file gone.
    (day_dir / segment_name(wall0 + 300)).write_bytes(os.urandom(5000))
    (day_dir / "notes.ts").write_bytes(b"hello")
    index.path_of(segs[3]).unlink()
    index.close()

    rec = Recorder(config(segment_s=2), tmp_path)
    report = rec.reconcile_report
    assert report.missing_removed == 1
    assert report.repaired == 1
    assert report.orphans_indexed == 1
    assert report.removed_files == 2
    assert not (day_dir / "notes.ts").exists()
    rec.close()
    index = SegmentIndex.for_data_dir(tmp_path)
    starts = [round(s.start - wall0) for s in index.all_segments()]
    assert starts == [0, 2, 4, 8, 10, 12, 14, 16, 18, 100, 200]
    assert index.writing() == {}
    check_index(index)
    repaired = index.overlapping("cam1", wall0 + 100, wall0 + 101)[0]
    assert 0 < repaired.packets < 50
    index.close()


@pytest.fixture
def tiny_partition(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 12 MB filesystem (tmpfs) that fills up: needs root (mount)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_disk_full_is_survived(clip_avcc: Clip, tiny_partition: Path) -> None:
    wall0 = time.time() - 7200
    # No cap at all, limits larger than the disk: the headroom keeps the ring from filling it.
    rec = Recorder(
        config(segment_s=2, headroom_bytes=1 << 20, reserve_file_bytes=0), tiny_partition
    )
    packets = list(feed(clip_avcc, "cam1", wall0, loops=25))  # ~24 MB into 12 MB
    for n, pkt in enumerate(packets[: len(packets) // 2]):
        rec.on_packet(pkt)
        if n % 50 == 0:
            time.sleep(0.01)
    assert rec.flush()
    assert rec.stats.write_errors == 0 and rec.stats.segments_purged > 0
    # Something else fills the partition to the last block: ENOSPC while recording.
    ballast = fill(tiny_partition)
    degraded = None
    for n, pkt in enumerate(packets[len(packets) // 2 :]):
        rec.on_packet(pkt)
        if n % 50 == 0:
            time.sleep(0.01)
            status = rec.status()
            if status["state"] == "degraded" and degraded is None:
                degraded = status["reason"]
        if n == len(packets) // 4:
            ballast.unlink()  # the technician frees space: recording resumes by itself
    assert rec.flush()
    time.sleep(0.3)
    status = rec.status()
    assert status["state"] == "ok", status["reason"]  # the truth again once space is back
    last = packets[-1]
    rec.close()
    assert rec.stats.write_errors > 0
    assert degraded is not None and "cam1" in degraded, degraded
    assert any("full" in w for w in rec.warnings())
    index = SegmentIndex.for_data_dir(tiny_partition)
    end = index.covered_until("cam1")
    assert end is not None and end > last.wallclock - 10  # still recording at the end
    check_index(index)
    index.close()


def test_reconcile_looks_only_at_recent_days_unless_asked(clip_avcc: Clip, tmp_path: Path) -> None:
    wall0 = time.time() - 3 * DAY_S
    rec = Recorder(config(segment_s=2), tmp_path)
    for day in range(3):  # three day directories
        for pkt in feed(clip_avcc, "cam1", wall0 + day * DAY_S, loops=1):
            rec.on_packet(pkt)
        assert rec.flush()
    rec.close()
    index = SegmentIndex.for_data_dir(tmp_path)
    segs = index.all_segments()
    assert len({Path(s.path).parent for s in segs}) == 3
    oldest = index.path_of(segs[0])
    orphan = oldest.parent / segment_name(segs[0].start + 3600)
    shutil.copy(oldest, orphan)  # an orphan in the oldest day: outside the recent window
    assert reconcile(index).orphans_indexed == 0
    assert reconcile(index, recent_days=None).orphans_indexed == 1
    assert len(index.all_segments()) == len(segs) + 1
    check_index(index)
    index.close()


def test_status_while_the_writer_adds_cameras(clip_avcc: Clip, tmp_path: Path) -> None:
    """status() (the supervisor's thread) reads the cameras while the writer thread adds them."""
    import sys
    import threading

    rec = Recorder(config(), tmp_path)
    delta = next(p for p in feed(clip_avcc, "x", 0.0, loops=1) if not p.keyframe)
    errors: list[BaseException] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                rec.status()
                rec._reserve_bytes()
            except BaseException as exc:  # what the race raises is the finding
                errors.append(exc)
                return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for n in range(20_000):  # each a new camera: waits for its keyframe, but is listed
            rec.on_packet(replace(delta, camera=f"c{n}"))
            if n % 500 == 0:
                assert rec.flush()
        assert rec.flush()
    finally:
        done.set()
        poller.join()
        sys.setswitchinterval(old)
        rec.close()
    assert errors == []


def test_a_disk_full_signal_during_a_pass_is_kept_for_the_next(tmp_path: Path) -> None:
    """need_free() from the writer thread while the retention thread is between reading and
    resetting the urgent amount must not be lost."""
    from guetteur.record.purge import RingPurger

    index = SegmentIndex.for_data_dir(tmp_path)
    seen: list[int] = []
    purger: RingPurger

    def writing_reserve() -> int:  # called inside the pass, as the writer may interleave
        if not seen:
            purger.need_free(5 << 20)  # the writer meets ENOSPC right now
        return 0

    purger = RingPurger(index, config(), time.time, writing_reserve, lambda _k, _m: None)
    purger.run()
    seen.append(1)
    limits = purger._limits(purger._take_urgent())
    assert limits.min_free_bytes == 5 << 20  # before: reset to 0 after it was read
    index.close()
