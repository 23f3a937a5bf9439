"""Agent memory under a flood of fuzzed commands (issue 12): RSS after 10,000 of them.

Everything real and on loopback: a private Mosquitto on a free port, the agent as it ships
(``guetteur run``, its own process, a ``test:`` camera, the durable outbox), and a centre-side
client sending a seeded mix of what an attacker or a buggy centre sends: random bytes, random
JSON, integers of thousands of digits, lone surrogates, nesting 1,000 deep, empty and odd verbs,
unsigned, expired, replayed, tampered and foreign-key commands, a viewer's PTZ, forged response
topics, megabyte fields, and genuine signed ``status``/``snapshot`` commands. Every command must
get exactly one reply.

The limit measured in the same run: the agent's own RSS once started and idle; the result is
its RSS (and peak) after the flood, as a ratio to that baseline.

Usage: .venv/bin/python bench/command_fuzz_rss.py [-n 10000] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guetteur import keyfiles
from guetteur.centre.client import CentreClient
from guetteur.dev.broker import PrivateBroker
from guetteur.uplink import protocol
from guetteur.uplink.command_auth import Signer
from guetteur.uplink.mqttutil import publish_properties

GW = "gw-bench"
ROOT = protocol.DEFAULT_ROOT


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def fuzzed(
    rng: random.Random, signer: Signer, stranger: Signer, old: Signer
) -> tuple[str, bytes, str | None]:
    """(verb, payload, response topic override) of one fuzzed command."""
    kind = rng.randrange(16)
    camera = rng.choice(["cam", "nope", "x" * rng.randrange(1, 200)])
    if kind == 0:
        return rng.choice(["status", "ptz", ""]), rng.randbytes(rng.randrange(0, 300)), None
    if kind == 1:
        body = {str(rng.random()): rng.choice([None, 1, "a", [1, 2], {"k": rng.random()}])}
        return "snapshot", json.dumps(body).encode(), None
    if kind == 2:
        return "snapshot", b'{"v":1,"id":' + b"9" * rng.randrange(100, 6000) + b"}", None
    if kind == 3:
        return "status", b'{"v":1,"id":"\\ud800","camera":"\\udfff"}', None
    if kind == 4:
        depth = rng.randrange(50, 3000)
        return "snapshot", b'{"v":1,"camera":' + b"[" * depth + b"]" * depth + b"}", None
    if kind == 5:
        return rng.choice(["", "SNAP", "a b", "x" * 40]), b'{"v":1}', None
    if kind == 6:
        return "snapshot", protocol.dumps({"id": uuid.uuid4().hex, "camera": camera}), None
    if kind == 7:
        signed = old.sign(
            GW, "snapshot", {"id": uuid.uuid4().hex, "camera": camera}, "op1", "operator"
        )
        return "snapshot", protocol.dumps(signed), None
    if kind == 8:
        signed = stranger.sign(GW, "status", {"id": uuid.uuid4().hex}, "op1", "supervisor")
        return "status", protocol.dumps(signed), None
    if kind == 9:
        signed = signer.sign(
            GW, "snapshot", {"id": uuid.uuid4().hex, "camera": "cam"}, "op1", "operator"
        )
        signed["camera"] = "tampered"
        return "snapshot", protocol.dumps(signed), None
    if kind == 10:
        body = {"id": uuid.uuid4().hex, "camera": "cam", "action": "move", "pan": 1}
        return "ptz", protocol.dumps(signer.sign(GW, "ptz", body, "v1", "viewer")), None
    if kind == 11:
        signed = signer.sign(
            GW, "snapshot", {"id": uuid.uuid4().hex, "camera": camera}, "op2", "operator"
        )
        forged = rng.choice([f"{ROOT}/{GW}/cam/cam/event", f"{ROOT}/{GW}/audit", "elsewhere"])
        return "snapshot", protocol.dumps(signed), forged
    if kind == 12:
        body = {"id": uuid.uuid4().hex, "camera": "y" * rng.randrange(1000, 60_000)}
        return (
            "snapshot",
            protocol.dumps(signer.sign(GW, "snapshot", body, "op3", "operator")),
            None,
        )
    if kind == 13:
        return "snapshot", b"z" * (1 << 20), None
    if kind == 14:
        return (
            "snapshot",
            protocol.dumps(
                signer.sign(
                    GW,
                    "snapshot",
                    {"id": uuid.uuid4().hex, "camera": camera},
                    f"op{rng.randrange(50)}",
                    "operator",
                )
            ),
            None,
        )
    return (
        "status",
        protocol.dumps(signer.sign(GW, "status", {"id": uuid.uuid4().hex}, "op1", "viewer")),
        None,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000, help="fuzzed commands to send")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--window", type=int, default=32, help="commands awaiting a reply at once")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="fuzz-rss-"))
    broker = PrivateBroker(work / "broker", persistence=False)
    broker.start()
    signer = Signer(keyfiles.generate(work / "centre.key", work / "centre.pub"))
    stranger = Signer(Ed25519PrivateKey.generate())
    old = Signer(keyfiles.load_private(work / "centre.key"), clock=lambda: time.time() - 600)
    cfg = work / "guetteur.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "gateway_id": GW,
                "data_dir": str(work / "data"),
                "mqtt": {"url": broker.url},
                "recording": {"enabled": False},
                "cameras": [{"id": "cam", "url": "test:quiet?gop=1"}],
                "commands": {
                    "trusted_keys": [str(work / "centre.pub")],
                    "snapshots_per_minute": 1_000_000,
                    "rate_per_s": 10_000,
                    "burst": 10_000,
                },
            }
        )
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "guetteur", "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    replies: dict[bytes, int] = {}
    lock = threading.Condition()

    def on_reply(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = bytes(getattr(msg.properties, "CorrelationData", b"") or b"")
        with lock:
            replies[correlation] = replies.get(correlation, 0) + 1
            lock.notify_all()

    centre = CentreClient(broker.url, "bench-centre", signer=signer, operator="op1")
    try:
        centre.connect()
        reply_topic = f"{ROOT}/_reply/bench-raw/{GW}"
        for topic in (reply_topic, f"{ROOT}/{GW}/reply/#"):
            centre.paho.message_callback_add(topic, on_reply)
            centre.paho.subscribe(topic, qos=1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if centre.request(GW, "status", {}, 2)["ok"]:
                    break
            except Exception:
                pass
        time.sleep(3.0)  # settled: camera streaming, first status published
        base_rss, _ = rss_kib(agent.pid)
        sent: list[bytes] = []
        t0 = time.monotonic()
        for _ in range(args.n):
            verb, payload, forged = fuzzed(rng, signer, stranger, old)
            correlation = uuid.uuid4().bytes
            props = publish_properties(
                "application/json", {"client_id": "bench"}, forged or reply_topic, correlation
            )
            with lock:
                lock.wait_for(lambda: len(sent) - len(replies) < args.window, 30)
            sent.append(correlation)
            centre.paho.publish(f"{ROOT}/{GW}/cmd/{verb}", payload, qos=1, properties=props)
        with lock:
            lock.wait_for(lambda: len(replies) >= len(sent), 60)
        took = time.monotonic() - t0
        time.sleep(1.0)
        after_rss, peak_rss = rss_kib(agent.pid)
        alive = agent.poll() is None
        once = sum(1 for c in sent if replies.get(c) == 1)
        print(
            f"commands sent                 {len(sent)} in {took:.1f} s ({len(sent) / took:.0f}/s)"
        )
        print(f"answered exactly once         {once} ({100 * once / len(sent):.2f} %)")
        print(f"agent alive afterwards        {alive}")
        print(f"agent RSS idle (the limit)    {base_rss / 1024:.1f} MiB")
        print(
            f"agent RSS after the flood     {after_rss / 1024:.1f} MiB  ({after_rss / base_rss:.2f}x idle)"
        )
        print(
            f"agent peak RSS                {peak_rss / 1024:.1f} MiB  ({peak_rss / base_rss:.2f}x idle)"
        )
        return 0 if alive and once == len(sent) else 1
    finally:
        centre.close()
        agent.terminate()
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
        broker.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
