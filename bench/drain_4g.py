"""Drain of an outbox backlog over a metered 4G uplink, against that link's raw TCP rate measured in
the same run.

    .venv/bin/python bench/drain_4g.py [--events 200] [--snapshot-bytes 4000] [--clips 2]
                                       [--rate 256kbit] [--retry 10] [--inflight 256]

Needs root (network namespaces). The gateway and the centre are two namespaces joined by a veth
pair (tests/fixtures/netns.py); the gateway's side is shaped like the issue's 4G uplink:
``tc qdisc add dev <veth> root tbf rate 256kbit burst 32kbit latency 400ms``.

1. Raw limit: one TCP connection from the gateway to the centre sends 256 KiB through the shaped
   link (bytes / time until the centre has read them all).
2. Drain: the agent (tests/outbox_agent.py) queues N events, each with a snapshot, and a few clips
   while the link is cut; the link comes back; Mosquitto and the receiver on the centre's side
   store and acknowledge. Printed: the time until every event is stored (events drain first), the
   time until everything is, the payload throughput as a ratio of the raw limit, and how many
   items the agent sent more than once (an item not acknowledged within ``retry_s`` is sent again:
   on a slow link that costs bandwidth).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.netns import NetPair, namespaces_usable  # noqa: E402

SINK = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0; t0 = None
while b := c.recv(65536):
    t0 = t0 or time.monotonic(); n += len(b)
print(n, time.monotonic() - t0, flush=True)
"""
SOURCE = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(b"x" * int(sys.argv[3])); c.close()
"""


def raw_tcp(net: NetPair, size: int) -> float:
    """Bytes/s of one TCP transfer through the shaped link."""
    port = 5001
    sink = net.popen(
        "centre",
        [sys.executable, "-c", SINK, net.ip["centre"], str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sink.stdout is not None
    assert sink.stdout.readline().strip() == "ready"
    net.run("gateway", [sys.executable, "-c", SOURCE, net.ip["centre"], str(port), str(size)])
    received, seconds = sink.stdout.readline().split()
    sink.wait(10)
    return int(received) / float(seconds)


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def count(db: Path, sql: str) -> int:
    rows = query(db, sql)
    return int(str(rows[0][0])) if rows else 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--snapshot-bytes", type=int, default=4000)
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--clip-bytes", type=int, default=64 * 1024)
    p.add_argument("--rate", default="256kbit")
    p.add_argument("--retry", type=float, default=10.0, help="outbox retry_s (shipped: 10)")
    p.add_argument("--inflight", type=int, default=256, help="outbox inflight (shipped: 256)")
    args = p.parse_args()
    why = namespaces_usable()
    if why is not None:
        print(f"drain_4g: {why}", file=sys.stderr)
        return 2

    net = NetPair()
    tmp = Path(tempfile.mkdtemp(prefix="drain4g-"))
    try:
        net.setup()
        net.shape(args.rate, "32kbit", "400ms")
        raw = raw_tcp(net, 256 * 1024)
        print(f"shaped link {args.rate}: raw TCP {raw / 1000:.1f} kB/s")

        broker = net.broker(tmp / "mosquitto")
        broker.start()
        out, data, log = tmp / "centre", tmp / "agent", tmp / "generated.log"
        rx_log = open(tmp / "receiver.log", "ab")  # noqa: SIM115 - lives with the process
        net.popen(
            "centre",
            [sys.executable, "-m", "guetteur", "centre", "receive", "-b", broker.url,
             "--out", str(out), "--client-id", "centre-rx-1"],
            cwd=REPO, stdout=rx_log, stderr=rx_log,
        )  # fmt: skip
        net.cut()  # the backlog builds up while the link is down
        clip_every = max(1, args.events // args.clips) if args.clips else 0
        agent_log = open(tmp / "agent.log", "ab")  # noqa: SIM115 - lives with the process
        agent = net.popen(
            "gateway",
            [sys.executable, "-m", "tests.outbox_agent", "--broker", broker.url,
             "--data", str(data), "--log", str(log), "--events", str(args.events),
             "--rate", "0", "--cameras", "3", "--snapshot-every", "1",
             "--snapshot-bytes", str(args.snapshot_bytes), "--clip-every", str(clip_every),
             "--clip-bytes", str(args.clip_bytes), "--chunk-bytes", str(32 * 1024),
             "--retry", str(args.retry), "--inflight", str(args.inflight),
             "--exit-when-drained"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=agent_log, text=True,
        )  # fmt: skip
        assert agent.stdout is not None
        generated = json.loads(agent.stdout.readline())
        outbox = data / "outbox" / "outbox.db"
        payload = count(outbox, "SELECT SUM(size) FROM items WHERE kind != 'clip_chunk'")
        payload += count(outbox, "SELECT SUM(size) FROM clips")
        clips = count(outbox, "SELECT COUNT(*) FROM clips")
        print(
            f"backlog: {generated['generated']} events, {generated['generated']} snapshots of "
            f"{args.snapshot_bytes} B, {clips} clips of {args.clip_bytes // 1024} KiB: "
            f"{payload / 1000:.0f} kB of payload"
        )
        rdb = out / "receiver.db"
        time.sleep(1.0)
        net.restore()
        t0 = time.monotonic()
        events_at = None
        deadline = t0 + 30 + 20 * payload / raw
        while time.monotonic() < deadline:
            if events_at is None and count(rdb, "SELECT COUNT(*) FROM events") >= args.events:
                events_at = time.monotonic() - t0
            done = (
                count(rdb, "SELECT COUNT(*) FROM snapshots") >= args.events
                and count(rdb, "SELECT COUNT(*) FROM clips WHERE state='complete'") >= clips
                and events_at is not None
            )
            if done:
                break
            time.sleep(0.2)
        else:
            print("drain_4g: the backlog was not delivered in time", file=sys.stderr)
            return 1
        total = time.monotonic() - t0
        final = json.loads(agent.stdout.readline() or "{}")
        agent.wait(30)
        counters = final.get("counters", {})
        rate = payload / total
        print(f"every event stored after {events_at:.1f} s (events drain first)")
        print(
            f"everything stored after {total:.1f} s: {rate / 1000:.1f} kB/s of payload = "
            f"{rate / raw:.2f} x the raw TCP rate of the link"
        )
        print(
            f"agent sent {counters.get('sent', '?')} messages, {counters.get('resent', '?')} of "
            f"them again (retry_s {args.retry}, inflight {args.inflight})"
        )
        return 0
    finally:
        net.cleanup()


if __name__ == "__main__":
    sys.exit(main())
