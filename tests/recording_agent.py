"""Test media and packet feeding for the recorder tests, and a recording agent to kill -9.

Real H.264 made by ffmpeg (testsrc2), demuxed by PyAV into ``EncodedPacket`` exactly as a source
hands them on: avcC extradata from MP4, or Annex B with in-band SPS/PPS (extradata None) as RTSP.

Run as a process: ``python -m tests.recording_agent DATA_DIR MEDIA [--pace X] [--segment-s S]``
records MEDIA in a loop as camera ``cam1``, prints ``READY`` once the ring is reconciled, and
runs until killed (or for --seconds).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av

from guetteur.config import RecordingConfig
from guetteur.media.types import EncodedPacket, StreamInfo


def make_h264(
    path: Path,
    seconds: float = 12.0,
    size: str = "320x240",
    rate: int = 25,
    gop_s: float = 1.0,
    bitrate: str | None = None,
    annexb: bool = False,
) -> Path:
    """Encode testsrc2 with x264 (no B-frames, like cameras). ``annexb`` writes MPEG-TS, whose
    demuxed packets are Annex B with SPS/PPS in-band, as an RTSP source delivers them."""
    if path.exists():
        return path
    args = [
        "ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi",
        "-i", f"testsrc2=size={size}:rate={rate}", "-t", str(seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-bf", "0",
        "-g", str(int(rate * gop_s)), "-keyint_min", str(int(rate * gop_s)),
        "-sc_threshold", "0", "-pix_fmt", "yuv420p",
    ]  # fmt: skip
    if bitrate:
        args += ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate]
    if annexb:
        args += ["-bsf:v", "h264_mp4toannexb", "-f", "mpegts"]
    else:
        args += ["-f", "mp4"]
    tmp = path.with_name(path.name + ".tmp")
    subprocess.run([*args, str(tmp)], check=True)
    tmp.rename(path)
    return path


@dataclass(frozen=True)
class Clip:
    """A demuxed file: its stream description and packets (pts rebased to start at 0)."""

    stream: StreamInfo
    packets: list[tuple[bytes, int, int, bool, int]]  # data, pts, dts, keyframe, duration
    duration: int  # in stream.time_base, the length of one loop

    @property
    def seconds(self) -> float:
        return float(self.duration * self.stream.time_base)


def load_clip(path: Path, annexb: bool = False) -> Clip:
    with av.open(str(path)) as box:
        vs = box.streams.video[0]
        cc = vs.codec_context
        assert vs.time_base is not None
        tb = Fraction(vs.time_base)
        raw = [
            (
                bytes(p),
                p.pts,
                p.dts if p.dts is not None else p.pts,
                bool(p.is_keyframe),
                p.duration,
            )
            for p in box.demux(vs)
            if p.size and p.pts is not None
        ]
        fps = float(vs.average_rate) if vs.average_rate else 25.0
        info = StreamInfo(
            codec=cc.name,
            width=cc.width,
            height=cc.height,
            time_base=tb,
            fps=fps,
            extradata=None if annexb else cc.extradata,
        )
    base = raw[0][2]
    step = round(1 / (fps * tb))
    packets = [(d, pts - base, dts - base, k, dur or step) for d, pts, dts, k, dur in raw]
    duration = max(p[1] for p in packets) + step
    return Clip(info, packets, duration)


def feed(
    clip: Clip,
    camera: str,
    wall0: float,
    loops: int | None = None,
    stream: StreamInfo | None = None,
) -> Iterator[EncodedPacket]:
    """Packets of ``clip`` looped, timestamps continuing, wallclock = wall0 + stream time."""
    info = stream or clip.stream
    loop = 0
    while loops is None or loop < loops:
        offset = loop * clip.duration
        for data, pts, dts, key, dur in clip.packets:
            yield EncodedPacket(
                camera=camera,
                data=data,
                pts=pts + offset,
                dts=dts + offset,
                keyframe=key,
                wallclock=wall0 + float((pts + offset) * info.time_base),
                stream=info,
                duration=dur,
            )
        loop += 1


def restamp(packets: Iterator[EncodedPacket], stream: StreamInfo) -> Iterator[EncodedPacket]:
    for p in packets:
        yield replace(p, stream=stream)


def decode_strict(path: Path) -> tuple[int, int, bool]:
    """Demux and decode every packet of a file with FFmpeg's strictest error detection (a torn
    frame raises). Returns (packets, frames, first packet is a keyframe)."""
    packets = frames = 0
    first_key = False
    with av.open(str(path)) as box:
        vs = box.streams.video[0]
        vs.codec_context.options = {"err_detect": "explode"}
        for p in box.demux(vs):
            if p.size:
                if packets == 0:
                    first_key = bool(p.is_keyframe)
                packets += 1
                frames += len(vs.codec_context.decode(p))
        frames += len(vs.codec_context.decode(None))
    return packets, frames, first_key


@dataclass
class CrashRound:
    """One run of the recording agent killed -9: what it recorded and what the restart kept."""

    wall0: float  # wall clock of its first packet
    killed: float  # wall clock of the SIGKILL
    kept_s: float  # seconds of [wall0, killed] that the index lists after the restart

    @property
    def lost_s(self) -> float:
        return (self.killed - self.wall0) - self.kept_s


def covered_seconds(index_dir: Path, camera: str, t0: float, t1: float) -> float:
    """Seconds of [t0, t1] covered by the indexed segments of ``camera``."""
    from guetteur.record.index import SegmentIndex

    index = SegmentIndex(index_dir)
    try:
        spans = [(max(s.start, t0), min(s.end, t1)) for s in index.overlapping(camera, t0, t1)]
    finally:
        index.close()
    total, cursor = 0.0, t0
    for a, b in sorted(spans):
        a = max(a, cursor)
        if b > a:
            total += b - a
            cursor = b
    return total


def crash_rounds(
    data_dir: Path,
    media: Path,
    kills: int,
    run_s: tuple[float, float],
    seed: int,
    segment_s: float = 4.0,
    extra: Sequence[str] = (),
) -> Iterator[CrashRound]:
    """Start the recording agent at real pace, kill -9 it after a random time in ``run_s``, and
    measure on the next start what the index kept of that run; ``kills`` times."""
    import random
    import signal

    rng = random.Random(seed)
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "tests.recording_agent", str(data_dir), str(media),
           "--pace", "1", "--segment-s", str(segment_s), *extra]  # fmt: skip
    previous: tuple[float, float] | None = None
    for round_no in range(kills + 1):
        agent = subprocess.Popen(
            cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert agent.stdout is not None
        line = agent.stdout.readline()
        if not line.startswith("READY"):
            agent.kill()
            raise AssertionError(
                f"round {round_no}: no READY but {line!r}: {agent.communicate()[1]}"
            )
        if previous is not None:  # the restart has reconciled what the last kill left
            t0, t1 = previous
            yield CrashRound(t0, t1, covered_seconds(data_dir / "rec", "cam1", t0, t1))
        if round_no == kills:
            agent.kill()
            agent.wait(10)
            return
        wall0 = float(line.split("wall0=")[1])
        time.sleep(max(0.0, wall0 - time.time()) + rng.uniform(*run_s))
        killed = time.time()
        agent.send_signal(signal.SIGKILL)
        _out, err = agent.communicate(timeout=10)
        assert "Traceback" not in err, f"round {round_no}: the agent raised:\n{err}"
        previous = (wall0, killed)


def main(argv: list[str] | None = None) -> int:
    from guetteur.record.writer import Recorder

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("media", type=Path)
    ap.add_argument("--pace", type=float, default=8.0, help="stream seconds per real second")
    ap.add_argument("--segment-s", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=None, help="stop cleanly after this long")
    ap.add_argument("--write-buffer", type=int, default=1 << 20, help="bytes per disk write")
    ap.add_argument("--sync-interval", type=float, default=1.0, help="recording.sync_interval_s")
    ap.add_argument("--open-event", default=None, help="pin an event that never ends, this id")
    ap.add_argument("--max-bytes", type=int, default=None, help="recording.max_bytes")
    args = ap.parse_args(argv)
    clip = load_clip(args.media)
    config = RecordingConfig(
        segment_s=args.segment_s,
        max_percent=None,
        min_free_bytes=0,
        write_buffer_bytes=args.write_buffer,
        sync_interval_s=args.sync_interval,
        max_bytes=args.max_bytes,
    )
    recorder = Recorder(config, args.data_dir)
    report = recorder.reconcile_report
    # Continue the timeline after what is already recorded, as a live camera would.
    wall0 = max(time.time(), (recorder.index.covered_until("cam1") or 0.0) + 1.0)
    if args.open_event:  # as EventClipper.event_started: open-ended until the event ends
        recorder.pin("cam1", wall0, float("inf"), args.open_event)
    print(
        f"READY repaired={report.repaired} removed={report.removed_files} "
        f"pins_closed={report.pins_closed} wall0={wall0:.3f}",
        flush=True,
    )
    started = time.monotonic()
    for pkt in feed(clip, "cam1", wall0):
        due = started + (pkt.wallclock - wall0) / args.pace
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        recorder.on_packet(pkt)
        if args.seconds is not None and time.monotonic() - started > args.seconds:
            break
    recorder.close()
    print("CLOSED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
