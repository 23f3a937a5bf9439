"""The agent side of the durability tests and of bench/drain_bench.py, as its own process so a
test can kill it with SIGKILL: generates events (with snapshots) and clips through Outbox + Link.

Every item is written to ``--log`` (one line, flushed) *before* it is submitted; after a restart
the last line is submitted again (submit is idempotent by id, and the centre de-duplicates), so
the log is exactly the set of items the centre must end up with.

    python -m tests.outbox_agent --broker mqtt://127.0.0.1:PORT --data DIR --log FILE ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from guetteur.config import MqttConfig, OutboxConfig
from guetteur.timeutil import iso_ms
from guetteur.uplink import protocol
from guetteur.uplink.link import Link
from guetteur.uplink.outbox.service import Outbox
from guetteur.uplink.publish import ClipFile, OutboundItem, Priority


def event_item(gateway: str, camera: str, n: int) -> OutboundItem:
    event_id = f"e{n:06d}"
    now = time.time()
    message = {
        "id": f"{event_id}:0",
        "event_id": event_id,
        "seq": 0,
        "type": "start",
        "gateway": gateway,
        "camera": camera,
        "start": iso_ms(now),
        "end": None,
        "time": iso_ms(now),
        "boxes": [[0.1, 0.2, 0.3, 0.4]],
        "labels": [{"label": "person", "score": 0.9}],
        "score": 0.25,
        "clock_synced": True,
    }
    return OutboundItem(
        item_id=f"{event_id}:0",
        kind="event",
        topic=protocol.rel_event(camera),
        payload=protocol.dumps(message),
        priority=Priority.EVENT,
        camera=camera,
    )


def snapshot_item(camera: str, n: int, size: int) -> OutboundItem:
    event_id = f"e{n:06d}"
    item_id = f"{event_id}:0:snap"
    payload = b"\xff\xd8\xff\xe0" + random.Random(n).randbytes(max(size - 6, 0)) + b"\xff\xd9"
    return OutboundItem(
        item_id=item_id,
        kind="snapshot",
        topic=protocol.rel_snapshot(camera),
        payload=payload,
        priority=Priority.SNAPSHOT,
        camera=camera,
        content_type="image/jpeg",
        user_properties={"event_id": event_id, "item_id": item_id},
    )


def record(media: Path, data: Path, pace: float, stop: threading.Event) -> None:
    """Record ``media`` in a loop as camera rec1 into ``data``, with retention limits larger than
    any test disk (only the headroom holds), printing each change of the recording's state."""
    from guetteur.config import RecordingConfig
    from guetteur.record.writer import Recorder
    from tests.recording_agent import feed, load_clip

    clip = load_clip(media)
    config = RecordingConfig(segment_s=2, max_bytes=1 << 40, max_percent=None, min_free_bytes=0)
    recorder = Recorder(config, data)
    wall0 = time.time()
    started = time.monotonic()
    print(json.dumps({"record_wall0": wall0, "pace": pace}), flush=True)
    state = None
    for pkt in feed(clip, "rec1", wall0):
        if stop.is_set():
            break
        delay = started + (pkt.wallclock - wall0) / pace - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        recorder.on_packet(pkt)
        if pkt.keyframe:
            status = recorder.status()
            if status["state"] != state:
                state = status["state"]
                print(json.dumps({"recording": state, "reason": status["reason"]}), flush=True)
    recorder.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--gateway", default="gw1")
    p.add_argument("--cameras", type=int, default=3)
    p.add_argument("--events", type=int, default=200, help="total events to generate")
    p.add_argument("--rate", type=float, default=50.0, help="events per second (0: all at once)")
    p.add_argument("--snapshot-every", type=int, default=5)
    p.add_argument("--snapshot-bytes", type=int, default=2000)
    p.add_argument("--clip-every", type=int, default=50)
    p.add_argument("--clip-bytes", type=int, default=300_000)
    p.add_argument("--chunk-bytes", type=int, default=64 * 1024)
    p.add_argument("--retry", type=float, default=2.0)
    p.add_argument("--inflight", type=int, default=OutboxConfig().inflight)
    p.add_argument("--drain-bps", type=int, default=0)
    p.add_argument("--exit-when-drained", action="store_true")
    p.add_argument("--record", default=None, help="also record this media file as camera rec1")
    p.add_argument("--record-pace", type=float, default=1.0, help="stream seconds per second")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="agent %(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    src_dir = data / "clip-src"
    src_dir.mkdir(exist_ok=True)
    link = Link(MqttConfig(url=args.broker, reconnect_max_s=1.0, keepalive_s=5), args.gateway)
    outbox = Outbox(
        OutboxConfig(
            retry_s=args.retry,
            inflight=args.inflight,
            drain_bytes_per_s=args.drain_bps or None,
            chunk_bytes=args.chunk_bytes,
        ),
        data,
        link,
        args.gateway,
    )
    # like the gateway: a retained "online" status on every connection (the receiver answers it
    # with a resync)
    link.add_connect_listener(
        lambda: link.publish_json(
            link.topics.status, {"state": "online", "gateway": args.gateway}, retain=True
        )
    )
    link.start()
    outbox.start()
    stop = threading.Event()
    if args.record:
        record_thread = threading.Thread(
            target=record, args=(Path(args.record), data, args.record_pace, stop), daemon=True
        )
        record_thread.start()

    def handler(_s: int, _f: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)

    log_path = Path(args.log)
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    cameras = [f"cam{i}" for i in range(args.cameras)]
    n = sum(1 for line in lines if line.startswith("E "))
    if lines:  # the last intent may not have reached the outbox before we were killed
        kind, *rest = lines[-1].split(" ")
        if kind == "E":
            camera, num = rest[1], int(rest[2])
            outbox.submit(event_item(args.gateway, camera, num))
        elif kind == "S":
            outbox.submit(snapshot_item(rest[1], int(rest[2]), args.snapshot_bytes))
        elif kind == "C" and Path(rest[3]).exists():
            outbox.submit_clip(ClipFile(clip_id=rest[0], path=rest[3], camera=rest[1]))
    log = open(log_path, "a")  # noqa: SIM115 - kept open for the life of the process

    def intent(line: str) -> None:
        log.write(line + "\n")
        log.flush()

    t0 = time.monotonic()
    start_n = n
    while n < args.events and not stop.is_set():
        if args.rate > 0:
            due = t0 + (n - start_n) / args.rate
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
        camera = cameras[n % len(cameras)]
        item = event_item(args.gateway, camera, n)
        intent(f"E {item.item_id} {camera} {n}")
        outbox.submit(item)
        if args.snapshot_every and n % args.snapshot_every == 0:
            snap = snapshot_item(camera, n, args.snapshot_bytes)
            intent(f"S {snap.item_id} {camera} {n}")
            outbox.submit(snap)
        if args.clip_every and n % args.clip_every == args.clip_every - 1:
            clip_id = f"clip{n:06d}"
            body = random.Random(n).randbytes(args.clip_bytes)
            src = src_dir / f"{clip_id}.mp4"
            src.write_bytes(body)
            intent(f"C {clip_id} {camera} {hashlib.sha256(body).hexdigest()} {src}")
            outbox.submit_clip(
                ClipFile(clip_id=clip_id, path=str(src), camera=camera, event_id=f"e{n:06d}")
            )
        n += 1
    print(json.dumps({"generated": n, "depth": outbox.depth()}), flush=True)
    while not stop.is_set():
        if args.exit_when_drained and outbox.depth()["items"] == 0:
            break
        stop.wait(0.2)
    print(json.dumps({"final": outbox.depth(), "counters": outbox.counters}), flush=True)
    outbox.close()
    link.stop()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
