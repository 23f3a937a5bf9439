"""Drain of an outbox backlog after an outage, against the raw MQTT limit measured in the same run.

    .venv/bin/python bench/drain_bench.py [--events 10000] [--clip-mb 20] [--chaos]

1. Raw limit: one paho client publishes N QoS 1 messages of the same size to a private Mosquitto,
   one subscriber receives them (no disk, no acks): messages/s and MB/s.
2. Events: the agent (tests/outbox_agent.py, its own process) queues N events while the broker is
   down (agent RSS measured then), the broker comes back, the centre receiver
   (guetteur.centre.receiver) stores and acknowledges them; events/s and MB/s of the drain, and
   the ratio to the raw limit. Goal: ≥ 500 events/s on loopback.
3. Clips: the same with clips only (MB/s vs the raw limit with chunk-sized messages).
4. --chaos: the acceptance scenario of tests/test_durability.py with a 20 s broker outage.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from guetteur.centre.receiver.mqtt import Receiver  # noqa: E402
from guetteur.config import OutboxConfig  # noqa: E402
from guetteur.dev.broker import PrivateBroker  # noqa: E402
from guetteur.uplink.mqttutil import new_client  # noqa: E402

INFLIGHT: list[int] = [0]


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def raw_limit(broker: PrivateBroker, count: int, size: int) -> tuple[float, float]:
    """Messages/s and MB/s of bare QoS 1 publish → subscribe through the broker."""
    got = threading.Event()
    received = [0]

    def on_message(*_a: object) -> None:
        received[0] += 1
        if received[0] >= count:
            got.set()

    sub = new_client("raw-sub")
    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe("raw/#", qos=1)
    sub.loop_start()
    pub = new_client("raw-pub")
    pub.max_inflight_messages_set(100)
    pub.max_queued_messages_set(0)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    time.sleep(0.3)
    payload = b"x" * size
    t0 = time.perf_counter()
    for i in range(count):
        pub.publish(f"raw/{i % 3}", payload, qos=1)
    got.wait(300)
    dt = time.perf_counter() - t0
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    return count / dt, count * size / dt / 1e6


def stored_times(out: Path, table: str) -> list[float]:
    db = sqlite3.connect(out / "receiver.db", timeout=30)
    try:
        rows = db.execute(f"SELECT received FROM {table}").fetchall()
    finally:
        db.close()
    from guetteur.timeutil import parse_iso

    return sorted(parse_iso(r[0]) for r in rows)


def drain(
    broker: PrivateBroker, work: Path, name: str, agent_args: list[str], expect: int, table: str
) -> dict[str, float]:
    out = work / f"{name}-centre"
    receiver = Receiver(broker.url, out, client_id=f"bench-{name}")
    receiver.start()
    assert receiver.wait_connected(10)
    time.sleep(0.3)
    broker.stop()  # the outage: the agent queues everything on disk
    cmd = [
        sys.executable,
        "-m",
        "tests.outbox_agent",
        "--broker",
        broker.url,
        "--data",
        str(work / f"{name}-agent"),
        "--log",
        str(work / f"{name}.log"),
        "--rate",
        "0",
        "--exit-when-drained",
        "--retry",
        str(OutboxConfig().retry_s),
        *agent_args,
    ]
    if INFLIGHT[0]:
        cmd += ["--inflight", str(INFLIGHT[0])]
    agent = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert agent.stdout is not None
    generated = json.loads(agent.stdout.readline())
    time.sleep(1.0)
    rss, hwm = rss_kib(agent.pid)
    backlog_bytes = generated["depth"]["bytes"]
    t_up = time.time()
    broker.start()
    final = json.loads(agent.stdout.readline())
    t_drained = time.time()
    agent.wait(30)
    receiver.stop()
    times = stored_times(out, table)
    assert len(times) >= expect, f"{name}: {len(times)} of {expect} stored"
    first, last = times[0], times[-1]
    span = max(last - first, 1e-6)
    return {
        "items": len(times),
        "backlog_mb": backlog_bytes / 1e6,
        "agent_rss_mib": rss / 1024,
        "agent_peak_rss_mib": hwm / 1024,
        "first_after_s": first - t_up,
        "drain_s": span,
        "per_s": len(times) / span,
        "mb_per_s": backlog_bytes / 1e6 / span,
        "all_acked_after_s": t_drained - t_up,
        "resent": final["counters"]["resent"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--clip-mb", type=int, default=20)
    p.add_argument(
        "--inflight",
        type=int,
        default=None,
        help="outbox in-flight window (default: the config default)",
    )
    p.add_argument("--chaos", action="store_true", help="also run the 20 s-outage chaos scenario")
    args = p.parse_args()
    INFLIGHT[0] = args.inflight or OutboxConfig().inflight
    print(f"outbox in-flight window: {INFLIGHT[0]}")
    work = Path(tempfile.mkdtemp(prefix="drain-bench-"))
    broker = PrivateBroker(work / "broker")
    broker.start()
    try:
        event_size = 420  # bytes of one event message as tests/outbox_agent.py makes them
        raw_msgs, raw_mb = raw_limit(broker, args.events, event_size)
        print(
            f"raw MQTT QoS1 limit, {event_size} B messages: {raw_msgs:,.0f} msg/s "
            f"({raw_mb:.2f} MB/s)"
        )
        ev = drain(
            broker,
            work,
            "events",
            ["--events", str(args.events), "--snapshot-every", "0", "--clip-every", "0"],
            args.events,
            "events",
        )
        print(
            f"event backlog: {ev['items']} events ({ev['backlog_mb']:.1f} MB) drained in "
            f"{ev['drain_s']:.2f} s = {ev['per_s']:,.0f} events/s, {ev['mb_per_s']:.2f} MB/s "
            f"= {ev['per_s'] / raw_msgs:.0%} of the raw limit (goal ≥ 500 events/s: "
            f"{'met' if ev['per_s'] >= 500 else 'MISSED'}); all acknowledged "
            f"{ev['all_acked_after_s']:.1f} s after the broker came back; "
            f"{ev['resent']} re-sent"
        )
        print(
            f"agent RSS during the outage with {ev['items']} events queued: "
            f"{ev['agent_rss_mib']:.1f} MiB (peak {ev['agent_peak_rss_mib']:.1f} MiB)"
        )

        chunk = 256 * 1024
        clips = max(1, args.clip_mb)
        _raw_c_msgs, raw_c_mb = raw_limit(broker, clips * 4, chunk)
        print(f"raw MQTT QoS1 limit, {chunk // 1024} KiB messages: {raw_c_mb:.1f} MB/s")
        cl = drain(
            broker,
            work,
            "clips",
            [
                "--events",
                str(clips),
                "--snapshot-every",
                "0",
                "--clip-every",
                "1",
                "--clip-bytes",
                str(1_000_000),
                "--chunk-bytes",
                str(chunk),
            ],
            clips,
            "clips",
        )
        print(
            f"clip backlog: {cl['items']} clips ({cl['backlog_mb']:.1f} MB) drained in "
            f"{cl['drain_s']:.2f} s = {cl['mb_per_s']:.1f} MB/s = "
            f"{cl['mb_per_s'] / raw_c_mb:.0%} of the raw limit; agent RSS during the outage "
            f"{cl['agent_rss_mib']:.1f} MiB"
        )
    finally:
        broker.stop()
    if args.chaos:
        from tests.test_durability import run_chaos

        chaos_dir = work / "chaos"
        chaos_broker = PrivateBroker(chaos_dir / "broker")
        chaos_broker.start()
        try:
            t0 = time.monotonic()
            counts = run_chaos(
                chaos_broker, chaos_dir, outage_s=20.0, total=1500, receiver_pause_s=10.0
            )
            print(
                f"chaos (20 s broker outage, agent kill -9 mid-drain, receiver stopped 10 s): "
                f"{counts['events']} events exactly once in camera order, "
                f"{counts['clips']} clips sha256-verified, in {time.monotonic() - t0:.0f} s"
            )
        finally:
            chaos_broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
