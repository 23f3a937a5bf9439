"""Event clips and exports cut from a real recorded ring, checked frame by frame."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
import yaml

from guetteur.config import EventsConfig, GuetteurConfig, RecordingConfig
from guetteur.record import export_cli as exportcli
from guetteur.record.clip_jobs import EventClipper, clip_due
from guetteur.record.clips import ClipError, ExportService, coverage_gaps, cut_clip
from guetteur.record.event_journal import ClipJob, EventJournal
from guetteur.record.index import SegmentIndex
from guetteur.record.retention import Pin
from guetteur.record.writer import Recorder
from guetteur.uplink.commands import CommandDispatcher
from guetteur.uplink.publish import ClipFile, OutboundItem
from tests.recording_agent import Clip, feed, load_clip, make_h264

FPS = 25


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_h264(tmp_path_factory.mktemp("clipmedia") / "src.mp4", seconds=10, gop_s=1.0)


@pytest.fixture(scope="module")
def source_frames(source: Path) -> list[str]:
    """Digest of every decoded frame of the source, in order (frame i at i/25 s)."""
    return frame_digests(source)


def frame_digests(path: Path) -> list[str]:
    with av.open(str(path)) as box:
        return [
            hashlib.sha1(bytes(f.planes[0])).hexdigest()[:16]
            for f in box.decode(box.streams.video[0])
        ]


@pytest.fixture(scope="module")
def ring(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """30 s of the looped source recorded from wall0, then a hole of 10 s, then 10 s more."""
    data_dir = tmp_path_factory.mktemp("clipring")
    clip: Clip = load_clip(source)
    wall0 = float(int(time.time()) - 300)
    rec = Recorder(RecordingConfig(segment_s=4, max_percent=None, min_free_bytes=0), data_dir)
    for pkt in feed(clip, "cam1", wall0, loops=3):
        rec.on_packet(pkt)
    for pkt in feed(clip, "cam1", wall0 + 40, loops=1):
        rec.on_packet(pkt)
    rec.close()
    return data_dir, wall0


def test_coverage_gaps() -> None:
    assert coverage_gaps([(0, 10), (20, 30)], 5, 25) == [(10, 20)]
    assert coverage_gaps([(0, 10), (10.2, 30)], 0, 30) == []  # jitter below the tolerance
    assert coverage_gaps([], 0, 5) == [(0, 5)]
    assert coverage_gaps([(2, 3)], 0, 5) == [(0, 2), (3, 5)]


def test_event_clip_holds_the_event_start_and_all_rolls(
    ring: tuple[Path, float], source_frames: list[str], tmp_path: Path
) -> None:
    data_dir, wall0 = ring
    index = SegmentIndex.for_data_dir(data_dir)
    start, end, pre, post = wall0 + 13.3, wall0 + 16.1, 5.0, 5.0
    out = tmp_path / "evt.mp4"
    result = cut_clip(index, "cam1", start, end, pre, post, out)
    index.close()
    gop = 1.0
    assert start - pre - gop < result.start <= start - pre  # starts on the keyframe before
    assert result.end >= end + post
    assert result.end - result.start >= pre + (end - start) + post
    assert result.end - result.start <= pre + (end - start) + post + gop + 0.1
    assert result.gaps == []

    # The frames are the camera's own (decoded bit for bit like the source) and in order.
    clip_frames = frame_digests(out)
    assert len(clip_frames) == result.packets
    first = round((result.start - wall0) * FPS)
    expected = [source_frames[(first + k) % len(source_frames)] for k in range(len(clip_frames))]
    assert clip_frames == expected
    # The frame of the event start is in it, at its place on the clip's timeline.
    k = round((start - result.start) * FPS)
    assert clip_frames[k] == source_frames[round((start - wall0) * FPS) % len(source_frames)]
    with av.open(str(out)) as box:
        times = [f.time for f in box.decode(box.streams.video[0])]
    assert times[k] == pytest.approx(start - result.start, abs=1 / FPS)

    # MP4 with the moov box first (faststart: browsers play while downloading), ffprobe-clean.
    head = out.read_bytes()
    assert head.find(b"moov") < head.find(b"mdat")
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=format_name,duration", "-of", "json",
         str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stderr == ""
    fmt = json.loads(probe.stdout)["format"]
    assert "mp4" in fmt["format_name"]
    assert float(fmt["duration"]) == pytest.approx(result.end - result.start, abs=0.05)


def test_clip_across_a_hole_reports_the_gap(ring: tuple[Path, float], tmp_path: Path) -> None:
    data_dir, wall0 = ring
    index = SegmentIndex.for_data_dir(data_dir)
    result = cut_clip(index, "cam1", wall0 + 25, wall0 + 45, 0, 0, tmp_path / "gap.mp4")
    assert len(result.gaps) == 1
    a, b = result.gaps[0]
    assert a == pytest.approx(wall0 + 30, abs=0.05) and b == pytest.approx(wall0 + 40, abs=0.05)
    # 5 s before the hole (from the keyframe at 25 s) and 5 s after it.
    assert result.packets == pytest.approx(10 * FPS, abs=2)
    with pytest.raises(ClipError) as err:
        cut_clip(index, "cam1", wall0 + 31, wall0 + 39, 0, 0, tmp_path / "none.mp4")
    assert err.value.code == "not_found"
    assert not (tmp_path / "none.mp4").exists()
    assert not list(tmp_path.glob("*.part"))
    index.close()


class CollectingPublisher:
    """A Publisher that keeps what it is given (the outbox is another issue's)."""

    def __init__(self) -> None:
        self.clips: list[ClipFile] = []
        self.items: list[OutboundItem] = []
        self.got_clip = threading.Event()

    def submit(self, item: OutboundItem) -> None:
        self.items.append(item)

    def submit_clip(self, clip: ClipFile) -> None:
        self.clips.append(clip)
        self.got_clip.set()


ExportFixture = tuple[CommandDispatcher, CollectingPublisher, float, Path]


@pytest.fixture
def export(ring: tuple[Path, float]) -> Iterator[ExportFixture]:
    data_dir, wall0 = ring
    config = GuetteurConfig.model_validate(
        {
            "gateway_id": "gw1",
            "data_dir": str(data_dir),
            "cameras": [{"id": "cam1", "url": "test:bars"}, {"id": "cam2", "url": "test:bars"}],
            "recording": {"export_max_s": 600},
        }
    )
    index = SegmentIndex.for_data_dir(data_dir)
    publisher = CollectingPublisher()
    service = ExportService(config, index, publisher)
    dispatcher = CommandDispatcher()
    service.register(dispatcher)
    yield dispatcher, publisher, wall0, data_dir
    service.close()
    index.close()


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def ask(dispatcher: CommandDispatcher, payload: dict[str, object]) -> dict[str, object]:
    return dispatcher.handle("export", json.dumps(payload).encode())


def test_export_command_delivers_an_mp4_with_its_gaps(export) -> None:  # type: ignore[no-untyped-def]
    dispatcher, publisher, wall0, data_dir = export
    reply = ask(dispatcher, {"id": "req-1", "camera": "cam1", "from": iso(wall0 + 28),
                             "to": iso(wall0 + 42)})  # fmt: skip
    assert reply["ok"] is True, reply
    assert reply["id"] == "req-1"
    gaps = reply["gaps"]
    assert isinstance(gaps, list) and len(gaps) == 1
    assert gaps[0]["from"].startswith(iso(wall0 + 30)[:19])
    assert publisher.got_clip.wait(20)
    clip = publisher.clips[0]
    assert clip.clip_id == reply["clip_id"] and clip.request_id == "req-1"
    assert clip.event_id is None and clip.camera == "cam1"
    path = Path(clip.path)
    assert path.parent == data_dir / "clips" and path.exists()
    assert len(frame_digests(path)) == pytest.approx(4 * FPS, abs=2)  # 28-30 s and 40-42 s


def test_a_stop_does_not_wait_for_an_export_whose_recording_will_not_come(
    ring: tuple[Path, float],
) -> None:
    """An export ending past what is recorded waits for its recording (the segment being written
    closes); at a stop that recording will never come: closing used to wait 30 s for it."""
    data_dir, wall0 = ring
    config = GuetteurConfig.model_validate(
        {
            "gateway_id": "gw1",
            "data_dir": str(data_dir),
            "cameras": [{"id": "cam1", "url": "test:bars"}],
            "recording": {"export_max_s": 600},
        }
    )
    index = SegmentIndex.for_data_dir(data_dir)
    publisher = CollectingPublisher()
    service = ExportService(config, index, publisher)
    dispatcher = CommandDispatcher()
    service.register(dispatcher)
    reply = ask(dispatcher, {"camera": "cam1", "from": iso(wall0 + 45), "to": iso(wall0 + 120)})
    assert reply["ok"] is True, reply  # partly recorded: accepted, then waits for the rest
    second = ask(dispatcher, {"camera": "cam1", "from": iso(wall0 + 1), "to": iso(wall0 + 3)})
    assert second["ok"] is True, second  # queued behind it
    time.sleep(0.5)
    began = time.monotonic()
    service.close()
    assert time.monotonic() - began < 3.0
    assert publisher.clips == []  # not cut (logged: ask again), not half-waited for
    index.close()


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        ({"camera": "cam1", "from": 20, "to": 10}, "bad_request", "must be after"),
        ({"camera": "cam1", "from": 100_000, "to": 100_010}, "out_of_range", "future"),
        ({"camera": "cam1", "from": 10, "to": 100_000}, "out_of_range", "future"),
        ({"camera": "cam1", "from": -2000, "to": 0}, "out_of_range", "export_max_s"),
        ({"camera": "cam9", "from": 0, "to": 10}, "unknown_camera", "cam9"),
        ({"camera": "../../etc", "from": 0, "to": 10}, "bad_request", "camera id"),
        ({"camera": "cam1", "from": 0, "to": 10, "id": "../x"}, "bad_request", "request id"),
        ({"camera": "cam1", "from": "yesterday", "to": 10}, "bad_request", "ISO 8601"),
        ({"camera": "cam1", "from": 0, "to": 10, "path": "/tmp/x"}, "bad_request", "unknown"),
        ({"camera": "cam1", "from": -200, "to": -100}, "not_found", "nothing recorded"),
        ({"camera": "cam2", "from": 0, "to": 10}, "not_found", "nothing recorded"),
    ],
)
def test_export_bad_input_gets_a_code_and_a_sentence(
    export: ExportFixture,
    payload: dict[str, object],
    code: str,
    words: str,
) -> None:
    dispatcher, publisher, wall0, data_dir = export
    body = dict(payload)
    for key in ("from", "to"):
        if isinstance(body[key], int):
            body[key] = iso(wall0 + int(body[key]))  # type: ignore[call-overload]
    # The ring's folder and the path a request names: other tests' servers may write in the
    # rest of pytest's temporary tree meanwhile.
    named = Path(str(payload.get("path", data_dir)))
    before = set(Path(data_dir).rglob("*")), named.exists()
    reply = ask(dispatcher, body)
    assert reply["ok"] is False, reply
    error = reply["error"]
    assert isinstance(error, dict)
    assert error["code"] == code, error
    assert words in error["message"], error
    time.sleep(0.05)
    assert (set(Path(data_dir).rglob("*")), named.exists()) == before  # nothing written
    assert publisher.clips == []


def test_export_cli(ring: tuple[Path, float], tmp_path: Path) -> None:
    data_dir, wall0 = ring
    cfg = tmp_path / "guetteur.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "gateway_id": "gw1",
                "data_dir": str(data_dir),
                "cameras": [{"id": "cam1", "url": "test:bars"}],
            }
        )
    )
    parser = argparse.ArgumentParser()
    exportcli.add_arguments(parser)

    def run(*argv: str) -> int:
        return exportcli.run(parser.parse_args([*argv, "-c", str(cfg)]))

    out = tmp_path / "export.mp4"
    assert run("--camera", "cam1", "--from", iso(wall0 + 2), "--to", iso(wall0 + 6),
               "-o", str(out)) == 0  # fmt: skip
    assert len(frame_digests(out)) == pytest.approx(4 * FPS, abs=2)
    assert run("--camera", "cam1", "--from", iso(wall0 + 6), "--to", iso(wall0 + 2),
               "-o", str(tmp_path / "x.mp4")) == 2  # fmt: skip
    assert run("--camera", "cam1", "--from", iso(wall0 - 100), "--to", iso(wall0 - 50),
               "-o", str(tmp_path / "y.mp4")) == 1  # fmt: skip
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "y.mp4").exists()


@pytest.mark.slow
def test_event_clipper_waits_for_the_post_roll_then_delivers(
    source: Path, source_frames: list[str], tmp_path: Path
) -> None:
    """A live recorder (paced 4x), an event whose post-roll is not recorded yet when it ends."""
    clip: Clip = load_clip(source)
    rec = Recorder(RecordingConfig(segment_s=2, max_percent=None, min_free_bytes=0), tmp_path)
    publisher = CollectingPublisher()
    wall0 = time.time() - 60
    journal = EventJournal(tmp_path)
    clipper = EventClipper(
        tmp_path,
        journal,
        publisher,
        EventsConfig(pre_roll_s=2, post_roll_s=2),
        segment_s=2,
        clock=lambda: wall0 + (time.time() - wall0 - 60) * 4,  # the camera's paced clock
    )
    stop = threading.Event()

    def camera() -> None:
        t0 = time.monotonic()
        for pkt in feed(clip, "cam1", wall0, loops=2):
            delay = t0 + (pkt.wallclock - wall0) / 4 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            rec.on_packet(pkt)
            if stop.is_set():
                return

    thread = threading.Thread(target=camera)
    thread.start()
    try:
        time.sleep(1.5)  # ~6 s of stream recorded
        clipper.event_started("cam1", "evt-1", wall0 + 4.0)
        assert [p.pin_id for p in rec.index.pins()] == ["evt-1"]
        clipper.event_ended("cam1", "evt-1", wall0 + 4.0, wall0 + 6.5)  # post-roll to 8.5 s
        assert [j.event_id for j in journal.jobs()] == ["evt-1"]  # owed, on disk
        assert publisher.got_clip.wait(20)
    finally:
        stop.set()
        thread.join()
        clipper.close(time.monotonic() + 5)
    got = publisher.clips[0]
    assert got.event_id == "evt-1" and got.clip_id == "evt-evt-1"
    frames = frame_digests(Path(got.path))
    first = source_frames.index(frames[0])
    assert first == 2 * FPS  # the keyframe at 2.0 s = event start minus the pre-roll
    assert len(frames) >= round(6.5 * FPS)  # pre-roll + event + post-roll
    assert rec.index.pins() == []  # the file is the publisher's now: no segment held any more
    assert journal.jobs() == []
    rec.close()
    journal.close()


def clip_dts(path: Path) -> list[int]:
    with av.open(str(path)) as box:
        return [int(p.dts) for p in box.demux(box.streams.video[0]) if p.size and p.dts is not None]


def test_clips_across_many_joins_have_strictly_increasing_dts(source: Path, tmp_path: Path) -> None:
    """1 s segments whose wall clocks jitter by up to a frame, as a camera's do: every join of a
    clip must keep dts strictly increasing (before: the same dts twice in up to 1 clip in 5)."""
    import random
    from dataclasses import replace

    rng = random.Random(5)
    clip: Clip = load_clip(source)
    wall0 = float(int(time.time()) - 600)
    rec = Recorder(RecordingConfig(segment_s=1, max_percent=None, min_free_bytes=0), tmp_path)
    jitter = 0.0
    for pkt in feed(clip, "cam1", wall0, loops=4):  # 40 s: ~40 segments
        if pkt.keyframe:
            jitter = rng.uniform(-0.04, 0.04)  # a segment's start is its keyframe's arrival
        rec.on_packet(replace(pkt, wallclock=pkt.wallclock + jitter))
    rec.close()
    index = SegmentIndex.for_data_dir(tmp_path)
    try:
        assert len(index.all_segments()) >= 35
        bad = 0
        for n in range(30):
            start = wall0 + rng.uniform(2, 30)
            out = tmp_path / f"clip{n}.mp4"
            cut_clip(index, "cam1", start, start + rng.uniform(2, 6), 1.0, 1.0, out)
            dts = clip_dts(out)
            # Contiguous recording: every step one frame (3600 ticks at 90 kHz), joins included.
            if {b - a for a, b in itertools.pairwise(dts)} != {3600}:
                bad += 1
        assert bad == 0, f"{bad} of 30 clips have a join that is not one frame long"
    finally:
        index.close()


def job(t0: float, t1: float) -> ClipJob:
    return ClipJob("e1", "cam1", t0 + 5, t1 - 5, t0, t1, created=t1 - 5)


def test_clip_due_policy() -> None:
    """Cut when the post-roll is recorded, at a stop, for a job resumed from before this run's
    recording began, or once the camera is long overdue; otherwise wait."""
    j = job(100.0, 120.0)

    def due(covered: float | None, now: float, stopping: bool = False, since: float = 0.0) -> bool:
        return clip_due(j, covered, now, stopping=stopping, recording_since=since, max_wait_s=14.0)

    assert not due(110.0, 121.0)  # post-roll still being recorded
    assert due(120.0, 121.0)
    assert due(110.0, 121.0, stopping=True)  # nothing more will come: cut with what is there
    assert due(None, 121.0, since=125.0)  # resumed after a restart
    assert not due(None, 121.0, since=119.0)  # recording (re)started inside the range
    assert not due(None, 133.9) and due(None, 134.0)  # a camera gone quiet: not forever


@pytest.fixture
def short_ring(source: Path, tmp_path: Path) -> tuple[Path, float]:
    """10 s of video recorded from wall0, the recorder closed (the cameras stopped)."""
    clip: Clip = load_clip(source)
    wall0 = float(int(time.time()) - 120)
    rec = Recorder(RecordingConfig(segment_s=4, max_percent=None, min_free_bytes=0), tmp_path)
    for pkt in feed(clip, "cam1", wall0, loops=1):
        rec.on_packet(pkt)
    rec.close()
    return tmp_path, wall0


def test_a_stop_cuts_owed_clips_at_once_with_what_is_recorded(
    short_ring: tuple[Path, float],
) -> None:
    """The agent stops 0.5 s after an event whose 5 s post-roll will never be recorded: the clip
    is cut at once (no waiting for a camera already stopped), its missing tail a gap."""
    data_dir, wall0 = short_ring
    journal = EventJournal(data_dir)
    publisher = CollectingPublisher()
    clipper = EventClipper(
        data_dir,
        journal,
        publisher,
        EventsConfig(pre_roll_s=2, post_roll_s=5),
        segment_s=4,
        clock=lambda: wall0 + 10.5,  # just after the last recorded frame
        poll_s=0.05,
    )
    clipper.event_started("cam1", "ev-stop", wall0 + 6)
    clipper.event_ended("cam1", "ev-stop", wall0 + 6, wall0 + 9)
    assert not publisher.got_clip.wait(0.5)  # running: waiting for the post-roll
    began = time.monotonic()
    assert clipper.close(time.monotonic() + 5) == 0
    assert time.monotonic() - began < 3.0
    (got,) = publisher.clips
    assert got.event_id == "ev-stop" and got.end is not None
    frames = frame_digests(Path(got.path))
    assert len(frames) >= round(5.5 * FPS)  # from the keyframe before 4 s to the end at 10 s
    assert journal.jobs() == [] and SegmentIndex.for_data_dir(data_dir).pins() == []
    journal.close()


def test_clips_owed_at_a_stop_past_its_deadline_are_cut_at_the_next_start(
    short_ring: tuple[Path, float],
) -> None:
    data_dir, wall0 = short_ring
    journal = EventJournal(data_dir)
    first = CollectingPublisher()
    clipper = EventClipper(
        data_dir,
        journal,
        first,
        EventsConfig(pre_roll_s=1, post_roll_s=5),
        segment_s=4,
        clock=lambda: wall0 + 10.5,
    )
    clipper.event_ended("cam1", "ev-late", wall0 + 2, wall0 + 8)
    assert clipper.close(time.monotonic()) == 1  # no time left: still owed
    assert first.clips == [] and [j.event_id for j in journal.jobs()] == ["ev-late"]
    journal.close()
    index = SegmentIndex.for_data_dir(data_dir)
    assert [p.pin_id for p in index.pins()] == ["ev-late"]  # the video is kept meanwhile
    # a pin left open-ended by an event whose end never came (an older agent's crash)
    index.add_pin(Pin("ghost", "cam1", wall0, float("inf")), wall0)

    journal = EventJournal(data_dir)  # the next start
    second = CollectingPublisher()
    clipper = EventClipper(
        data_dir, journal, second, EventsConfig(pre_roll_s=1, post_roll_s=5), segment_s=4
    )
    assert clipper.resume() == 1
    assert second.got_clip.wait(10)
    assert [c.clip_id for c in second.clips] == ["evt-ev-late"]
    assert clipper.close(time.monotonic() + 5) == 0
    assert journal.jobs() == [] and index.pins() == []  # delivered, and the ghost released
    index.close()
    journal.close()
