"""The full-disk fault scenario, longer: a gateway agent on a 64 MiB partition for minutes.

The agent (``tests/outbox_agent.py --record``) records one camera at 8x real time (~2 MB/s, with
retention limits of 1 TB: only the headroom holds) and queues 20 events/s (with snapshots) for a
real Mosquitto and receiver. Every ``--cycle`` seconds: the broker is killed, the partition is
filled to the last byte by a ballast file, the broker comes back after ``--outage`` s, the
ballast is deleted ``--ballast`` s later. Needs root (loop mount).

Prints, against their limits: events stored / generated (1.000) and duplicates (0); the
smallest free space seen (sampled every 0.2 s) outside the ballast periods, against the
databases' floor (a quarter of ``recording.headroom_bytes``); how far behind the stream's end
the newest recorded video ends (limit: one segment, 2 s of stream); the recording states the
agent went through.

Usage: sudo .venv/bin/python bench/full_disk.py [--seconds 180] [--cycle 45]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.disk import fill, loop_partition
from tests.recording_agent import make_h264
from tests.test_durability import count_events, read_db, start_agent

from guetteur.centre.receiver.mqtt import Receiver
from guetteur.config import RecordingConfig
from guetteur.dev.broker import PrivateBroker
from guetteur.record.index import SegmentIndex

PACE = 8.0
RATE = 20.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--cycle", type=float, default=45.0)
    ap.add_argument("--outage", type=float, default=10.0)
    ap.add_argument("--ballast", type=float, default=15.0)
    args = ap.parse_args(argv)
    floor = RecordingConfig().headroom_bytes // 4
    total = int(args.seconds * RATE)
    with tempfile.TemporaryDirectory() as tmp_name, loop_partition(Path(tmp_name)) as part:
        tmp = Path(tmp_name)
        media = make_h264(tmp / "cam.mp4", seconds=10, gop_s=1.0, bitrate="2M")
        broker = PrivateBroker(tmp / "mosquitto")
        broker.start()
        out, log = tmp / "centre", tmp / "generated.log"
        receiver = Receiver(broker.url, out, client_id="bench-rx-disk")
        receiver.start()
        receiver.wait_connected(10)
        agent = start_agent(
            broker.url, part, log, events=total, rate=RATE, cameras=2, clip_every=0, retry=1.5,
            record=media, record_pace=PACE,
        )  # fmt: skip
        free_seen: list[int] = []
        ballast_on = threading.Event()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                if not ballast_on.is_set():
                    free_seen.append(shutil.disk_usage(part).free)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        cycles = 0
        while time.monotonic() - started < args.seconds:
            time.sleep(min(args.cycle, max(0.0, args.seconds - (time.monotonic() - started))))
            if time.monotonic() - started >= args.seconds - args.outage - args.ballast:
                break
            cycles += 1
            broker.kill()
            ballast_on.set()
            ballast = fill(part)
            time.sleep(args.outage)
            broker.start()
            time.sleep(args.ballast)
            ballast.unlink()
            time.sleep(2.0)  # retention sees the space back
            ballast_on.clear()
        lines = lambda: log.read_text().splitlines()  # noqa: E731
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (
                sum(1 for x in lines() if x.startswith("E ")) >= total
                and count_events(out) >= total
            ):
                break
            time.sleep(0.5)
        killed = time.time()
        agent.kill()
        stdout, _err = agent.communicate(timeout=10)
        stop.set()
        receiver.stop()
        broker.stop()
        expected = {x.split()[1] for x in lines() if x.startswith("E ")}
        stored = [str(r[0]) for r in read_db(out, "SELECT item_id FROM events")]
        states = [json.loads(x)["recording"] for x in stdout.splitlines() if '"recording"' in x]
        wall0 = next(json.loads(x)["record_wall0"] for x in stdout.splitlines() if "wall0" in x)
        stream_now = wall0 + (killed - wall0) * PACE  # the camera's timeline runs PACE x
        index = SegmentIndex.for_data_dir(part)
        lag = stream_now - (index.covered_until("rec1") or wall0)
        index.close()
    print(f"{args.seconds:.0f} s, {cycles} cycles of broker down {args.outage:.0f} s + partition "
          f"full {args.outage + args.ballast:.0f} s; camera at {PACE:g}x real time")  # fmt: skip
    print(f"events stored / generated: {len(set(stored))} / {len(expected)} = "
          f"{len(set(stored) & expected) / max(len(expected), 1):.3f} (limit 1.000), "
          f"duplicates {len(stored) - len(set(stored))} (limit 0)")  # fmt: skip
    low = min(free_seen) if free_seen else 0
    print(f"smallest free space outside the ballast periods: {low / 1e6:.1f} MB "
          f"({low / floor:.2f} x the databases' floor of {floor / 1e6:.1f} MB)")  # fmt: skip
    segment_s = 2.0  # the agent's recording.segment_s
    print(f"newest video recorded ends {lag:.1f} s of stream before the camera's now "
          f"({lag / segment_s:.2f} x the segment length, the limit: the open segment is not "
          f"indexed yet)")  # fmt: skip
    print(f"recording states: {' -> '.join(states)}")
    ok = set(stored) == expected and len(stored) == len(set(stored))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
