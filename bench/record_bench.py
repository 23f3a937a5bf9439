"""Cost of recording one 1080p 4 Mbit/s H.264 stream into the ring (MPEG-TS, no re-encode).

Prints, measured in the same run:
- CPU of recording as % of one core (CPU seconds per second of stream; goal ≤ 2 %), against
  the physical floor (plain sequential write of the same bytes) and against decoding it;
- disk bytes written per byte received, from /proc/self/io write_bytes (goal ≤ 1.05), against
  the plain write (1.00 by construction, measured to show the accounting is right).

Usage: .venv/bin/python bench/record_bench.py [--seconds 120] [--dir /var/tmp] [--realtime 20]
The test stream (testsrc2 1920x1080 25 fps, 4 Mbit/s CBR-ish, GOP 2 s) is made with ffmpeg and
cached in the work directory. --realtime N also records N s at the camera's real pace.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av

from guetteur.config import RecordingConfig
from guetteur.media.types import EncodedPacket, StreamInfo
from guetteur.record.writer import Recorder


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return r.ru_utime + r.ru_stime


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no write_bytes")


def make_stream(path: Path, seconds: int) -> Path:
    if not path.exists():
        print(f"encoding {seconds} s of 1080p test video (once) ...", flush=True)
        tmp = path.with_suffix(".tmp.mp4")
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi",
             "-i", "testsrc2=size=1920x1080:rate=25", "-t", str(seconds),
             "-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-g", "50",
             "-keyint_min", "50", "-sc_threshold", "0", "-b:v", "4M", "-maxrate", "4M",
             "-bufsize", "4M", "-pix_fmt", "yuv420p", str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(path)
    return path


def load(path: Path) -> tuple[StreamInfo, list[tuple[bytes, int, int, bool, int]], int]:
    with av.open(str(path)) as box:
        vs = box.streams.video[0]
        assert vs.time_base is not None
        tb = Fraction(vs.time_base)
        info = StreamInfo(
            "h264", vs.codec_context.width, vs.codec_context.height, tb, 25.0,
            vs.codec_context.extradata,
        )  # fmt: skip
        raw = [
            (bytes(p), int(p.pts), int(p.dts), bool(p.is_keyframe), int(p.duration or 0))
            for p in box.demux(vs)
            if p.size and p.pts is not None and p.dts is not None
        ]
    step = round(1 / (25 * tb))
    return info, raw, max(p[1] for p in raw) + step


def packets(
    info: StreamInfo, raw: list[tuple[bytes, int, int, bool, int]], loop: int, seconds: float
) -> list[EncodedPacket]:
    """Ready-made packets (the source's work is not the recorder's): ``seconds`` of stream."""
    wall0 = time.time() - seconds - 5
    out: list[EncodedPacket] = []
    n = 0
    while True:
        for data, pts, dts, key, dur in raw:
            t = pts + n * loop
            if t * info.time_base >= seconds:
                return out
            out.append(
                EncodedPacket("cam1", data, t, dts + n * loop, key,
                              wall0 + float(t * info.time_base), info, dur)
            )  # fmt: skip
        n += 1


def record(pkts: list[EncodedPacket], work: Path, pace: float | None) -> tuple[float, int, int]:
    """(CPU s, bytes written, bytes received) to record ``pkts``; pace None = as fast as the
    recorder takes them (CPU per stream second is what counts), else real time."""
    data_dir = Path(tempfile.mkdtemp(dir=work))
    config = RecordingConfig(segment_s=10, max_percent=None, min_free_bytes=0)
    w0, c0 = write_bytes(), cpu_s()
    rec = Recorder(config, data_dir)
    feeder0 = time.thread_time()  # the camera's side (this thread's pacing) is not recording
    t0 = time.monotonic()
    first = pkts[0].wallclock
    for n, p in enumerate(pkts):
        if pace:
            delay = t0 + (p.wallclock - first) / pace - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elif n % 250 == 0:
            rec.flush()  # as fast as possible, but without overflowing the queue
        rec.on_packet(p)
    feeder = time.thread_time() - feeder0 if pace else 0.0
    rec.close()
    c1, w1 = cpu_s() - feeder, write_bytes()
    received = rec.stats.bytes_received
    assert rec.stats.packets_dropped_queue == 0, rec.stats
    files = sum(f.stat().st_size for f in data_dir.rglob("*.ts"))
    print(f"  ({'real pace' if pace else 'fast'}: {rec.stats.segments_closed} segments, "
          f"MPEG-TS files / bytes in = {files / received:.4f})")  # fmt: skip
    subprocess.run(["rm", "-rf", str(data_dir)], check=False)
    return c1 - c0, w1 - w0, received


def plain_write(pkts: list[EncodedPacket], work: Path) -> tuple[float, int, int]:
    """The physical floor: the same bytes, 1 MiB writes, one fsync per 10 s of stream."""
    path = work / "plain.bin"
    w0, c0 = write_bytes(), cpu_s()
    total = 0
    with open(path, "wb", buffering=1 << 20) as f:
        last_sync = pkts[0].wallclock
        for p in pkts:
            f.write(p.data)
            total += len(p.data)
            if p.wallclock - last_sync >= 10:
                f.flush()
                os.fsync(f.fileno())
                last_sync = p.wallclock
        f.flush()
        os.fsync(f.fileno())
    c1, w1 = cpu_s(), write_bytes()
    path.unlink()
    return c1 - c0, w1 - w0, total


def decode_cost(path: Path, seconds: float) -> float:
    """CPU s per stream second to decode the stream (1 thread): what analytics would pay."""
    c0 = cpu_s()
    n = 0
    with av.open(str(path)) as box:
        vs = box.streams.video[0]
        vs.thread_type = "NONE"
        vs.codec_context.thread_count = 1
        for _ in box.decode(vs):
            n += 1
            if n >= 25 * seconds:
                break
    return (cpu_s() - c0) / (n / 25)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0, help="stream seconds to record")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="work directory (a disk)")
    ap.add_argument("--realtime", type=float, default=0.0, help="also record N s at real pace")
    args = ap.parse_args()
    work = args.dir / "guetteur-record-bench"
    work.mkdir(parents=True, exist_ok=True)
    src = make_stream(work / "1080p-4M.mp4", 30)
    info, raw, loop = load(src)
    pkts = packets(info, raw, loop, args.seconds)
    stream_s = args.seconds
    mbit = sum(len(p.data) for p in pkts) * 8 / stream_s / 1e6
    print(f"stream: 1920x1080 25 fps H.264, {mbit:.2f} Mbit/s, {stream_s:.0f} s, "
          f"{len(pkts)} packets; work dir {work}")  # fmt: skip

    plain_cpu, plain_w, plain_in = plain_write(pkts, work)
    rec_cpu, rec_w, rec_in = record(pkts, work, None)
    dec = decode_cost(src, 10)
    rec_pct = 100 * rec_cpu / stream_s
    plain_pct = 100 * plain_cpu / stream_s
    print()
    print(f"{'':34}{'CPU % of one core':>20}{'disk bytes / byte in':>24}")
    print(f"{'plain sequential write (floor)':34}{plain_pct:>19.2f}%{plain_w / plain_in:>24.3f}")
    print(f"{'recorder (MPEG-TS, index, fsync)':34}{rec_pct:>19.2f}%{rec_w / rec_in:>24.3f}")
    print(f"{'decode 1080p, 1 thread (analytics)':34}{100 * dec:>19.1f}%{'-':>24}")
    print()
    print(f"recorder CPU: {rec_pct:.2f} % of a core (goal <= 2 %), {rec_pct / plain_pct:.1f}x the "
          f"plain write, {rec_pct / (100 * dec) * 100:.1f} % of a decode")  # fmt: skip
    print(f"recorder disk write amplification: {rec_w / rec_in:.3f} (goal <= 1.05), plain "
          f"write {plain_w / plain_in:.3f}")  # fmt: skip
    if args.realtime > 0:
        rt = [p for p in pkts if p.wallclock - pkts[0].wallclock < args.realtime]
        cpu, wb, received = record(rt, work, 1.0)
        print(f"real pace, {args.realtime:.0f} s: recorder CPU {100 * cpu / args.realtime:.2f} % "
              f"of a core, disk bytes / byte in {wb / received:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
