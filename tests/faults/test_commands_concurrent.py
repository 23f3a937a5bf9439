"""Concurrent and stuck commands against a running gateway on a real broker: two snapshots at once
used to crash the agent (two threads scaling one PyAV frame: SIGSEGV), sixteen PTZ commands to
a dome that never answers used to delay ``status`` and ``live.renew`` for 12 s, and malformed
commands (huge integers, a lone surrogate, nesting 1,000 deep, an empty verb) got no reply."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from guetteur.centre.client import CentreClient, CentreError
from guetteur.config import validate_config
from guetteur.runtime.gateway import Gateway
from guetteur.uplink import protocol
from guetteur.uplink.mqttutil import publish_properties
from tests.fixtures.broker import MosquittoBroker
from tests.fixtures.signing import CentreKey
from tests.fixtures.waiting import wait_for

ROOT = protocol.DEFAULT_ROOT
LENIENT = {"snapshots_per_minute": 100_000, "rate_per_s": 1000, "burst": 1000}


@pytest.mark.slow
def test_concurrent_snapshots_do_not_crash_the_agent(
    broker: MosquittoBroker, tmp_path: Path, centre_key: CentreKey
) -> None:
    """The agent runs as it ships (``guetteur run``, its own process: a crash is an exit code,
    not a dead test runner); four centre clients ask for 25 snapshots each, all at once."""
    cfg = tmp_path / "guetteur.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "gateway_id": "gw-conc",
                "data_dir": str(tmp_path / "data"),
                "mqtt": {"url": broker.url},
                "recording": {"enabled": False},
                "outbox": {"enabled": False},
                "cameras": [{"id": "cam", "url": "test:walk?width=1280&height=720&gop=1"}],
                "events": {"snapshot_width": 1280},
                "commands": centre_key.commands_config(**LENIENT),
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "guetteur", "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    clients = [
        CentreClient(broker.url, f"centre-{n}", signer=centre_key.signer(), operator=f"op{n}")
        for n in range(4)
    ]
    try:
        for client in clients:
            client.connect()

        def first_snapshot() -> bool:
            try:  # sent before the agent subscribed, a command is lost: ask again
                return bool(clients[0].request("gw-conc", "snapshot", {"camera": "cam"}, 2)["ok"])
            except CentreError:
                return False

        wait_for(first_snapshot, 30, "a first snapshot")
        start = threading.Barrier(len(clients))

        def burst(client: CentreClient) -> list[dict[str, Any]]:
            start.wait()
            with ThreadPoolExecutor(5) as pool:
                return list(
                    pool.map(
                        lambda _n: client.request("gw-conc", "snapshot", {"camera": "cam"}, 30),
                        range(25),
                    )
                )

        with ThreadPoolExecutor(len(clients)) as pool:
            replies = [r for batch in pool.map(burst, clients) for r in batch]
        assert len(replies) == 100  # every one answered
        # one camera's commands queue on its own lane (8 deep): the rest are told "busy" at once
        codes = {r["error"]["code"] for r in replies if not r["ok"]}
        assert codes <= {"busy"}, codes
        assert sum(r["ok"] for r in replies) >= 8
        assert proc.poll() is None, "the agent died"
        assert clients[0].request("gw-conc", "status", {})["ok"]
    finally:
        for client in clients:
            client.close()
        proc.terminate()
        try:
            _out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]


RENDER_STRESS = """
import sys, threading
from fractions import Fraction
import av, numpy as np
from guetteur.sources.decode import renderer
enc = av.CodecContext.create("libx264", "w")
enc.width, enc.height, enc.pix_fmt, enc.time_base = 1280, 720, "yuv420p", Fraction(1, 25)
noise = np.random.default_rng(1).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
packets = []
for pts in range(3):
    picture = av.VideoFrame.from_ndarray(noise, format="bgr24").reformat(format="yuv420p")
    picture.pts = pts
    packets += enc.encode(picture)
packets += enc.encode(None)
decoder = av.CodecContext.create("h264", "r")
frame = [f for p in [*packets, None] for f in decoder.decode(p)][0]
render = renderer(frame)
def work(n):
    for i in range(60):
        image = render(320 + 64 * ((n + i) % 8))
        assert image.shape[1] == 320 + 64 * ((n + i) % 8)
threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print("survived")
"""


@pytest.mark.slow
def test_one_decoded_frame_rendered_from_eight_threads_at_once() -> None:
    """What two simultaneous snapshots did to the agent, at its root: eight threads rendering one
    decoded frame at different sizes (before the fix: SIGSEGV, or workers stuck for good)."""
    proc = subprocess.run(
        [sys.executable, "-c", RENDER_STRESS], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode, proc.stderr)


class SilentDome:
    """An ONVIF dome that accepts TCP connections and never answers (a hung camera web server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def silent_dome() -> Iterator[SilentDome]:
    dome = SilentDome()
    yield dome
    dome.close()


@pytest.mark.slow
def test_a_stuck_dome_does_not_delay_status_or_live_renewals(
    broker: MosquittoBroker, tmp_path: Path, centre_key: CentreKey, silent_dome: SilentDome
) -> None:
    ptz = {"protocol": "onvif", "url": f"http://127.0.0.1:{silent_dome.port}/onvif/device_service",
           "timeout_s": 2}  # fmt: skip
    config = validate_config(
        {
            "gateway_id": "gw-stuck",
            "data_dir": str(tmp_path / "data"),
            "mqtt": {"url": broker.url},
            "recording": {"enabled": False},
            "outbox": {"enabled": False},
            "cameras": [
                {"id": "dome", "url": "test:quiet", "ptz": ptz},
                {"id": "street", "url": "test:quiet?gop=1"},
            ],
            # a short lane: 1 move running, 2 waiting, the rest "busy" at once
            "commands": centre_key.commands_config(camera_queue=2, **LENIENT),
        }
    )
    gateway = Gateway(config)
    gateway.start()
    try:
        assert gateway.link.wait_subscribed(10)
        with CentreClient(
            broker.url, "centre-stuck", signer=centre_key.signer(), operator="op1"
        ) as centre:
            live = wait_for(
                lambda: (
                    (r := centre.request("gw-stuck", "live.start", {"camera": "street"}))["ok"]
                    and r
                ),
                20,
                "a live session",
            )
            ptz_replies: list[dict[str, Any]] = []
            moves = [
                threading.Thread(
                    target=lambda: ptz_replies.append(
                        centre.request(
                            "gw-stuck", "ptz", {"camera": "dome", "action": "move", "pan": 0.5}, 120
                        )
                    )
                )
                for _ in range(16)
            ]
            for thread in moves:
                thread.start()
            time.sleep(0.3)  # every move is queued or running on the dome's lane
            took = []
            for _ in range(3):
                t0 = time.monotonic()
                assert centre.request("gw-stuck", "status", {}, 5)["ok"]
                renewed = centre.request("gw-stuck", "live.renew", {"session": live["session"]}, 5)
                assert renewed["ok"], renewed
                took.append(time.monotonic() - t0)
            assert max(took) < 1.0, took
            for thread in moves:
                thread.join(120)
            codes = sorted(r["error"]["code"] for r in ptz_replies if not r["ok"])
            assert len(ptz_replies) == 16 and set(codes) <= {"busy", "timeout", "camera_down"}
            assert "busy" in codes  # the lane is bounded: the rest were told at once
            centre.request("gw-stuck", "live.stop", {"session": live["session"]})
    finally:
        gateway.stop()


def _nested(depth: int) -> bytes:
    return b'{"v":1,"camera":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.slow
def test_every_malformed_command_gets_exactly_one_reply(
    broker: MosquittoBroker, tmp_path: Path, centre_key: CentreKey
) -> None:
    config = validate_config(
        {
            "gateway_id": "gw-fuzz",
            "data_dir": str(tmp_path / "data"),
            "mqtt": {"url": broker.url},
            "recording": {"enabled": False},
            "outbox": {"enabled": False},
            "cameras": [{"id": "cam", "url": "test:quiet"}],
            "commands": centre_key.commands_config(**LENIENT),
        }
    )
    gateway = Gateway(config)
    gateway.start()
    cases: dict[str, tuple[str, bytes]] = {
        "huge int": ("snapshot", b'{"v":1,"id":' + b"9" * 5000 + b',"camera":"cam"}'),
        "huge float": ("snapshot", b'{"v":1,"camera":1' + b"0" * 5000 + b".5}"),
        "lone surrogate": ("snapshot", b'{"v":1,"id":"\\ud800","camera":"cam"}'),
        "surrogate key": ("snapshot", b'{"v":1,"\\udfff":1}'),
        "nested 1000": ("snapshot", _nested(1000)),
        "nested 100000": ("snapshot", _nested(100_000)),
        "empty verb": ("", b'{"v":1}'),
        "odd verb": ("SNAP shot$", b'{"v":1}'),  # control characters: the broker refuses them
        "not utf-8": ("status", b'{"v":1,"id":"\xff\xfe"}'),
        "NaN": ("ptz", b'{"v":1,"camera":"cam","action":"move","pan":NaN}'),
        "array": ("status", b"[1,2,3]"),
        "bool id": ("status", b'{"v":1,"id":true}'),
        "object id": ("status", b'{"v":1,"id":{"a":1}}'),
        "empty": ("status", b""),
    }
    got: dict[bytes, list[dict[str, Any]]] = {}
    lock = threading.Lock()

    def on_reply(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = bytes(getattr(msg.properties, "CorrelationData", b""))
        with lock:
            got.setdefault(correlation, []).append(protocol.loads(bytes(msg.payload)))

    try:
        assert gateway.link.wait_subscribed(10)
        with CentreClient(broker.url, "centre-fuzz", signer=centre_key.signer()) as centre:
            reply_topic = f"{ROOT}/_reply/centre-fuzz-raw/gw-fuzz"
            centre.paho.message_callback_add(reply_topic, on_reply)
            centre.paho.message_callback_add(f"{ROOT}/gw-fuzz/reply/#", on_reply)
            centre.paho.subscribe(reply_topic, qos=1)
            centre.paho.subscribe(f"{ROOT}/gw-fuzz/reply/#", qos=1)
            time.sleep(0.3)
            sent: dict[bytes, str] = {}
            for name, (verb, payload) in cases.items():
                correlation = uuid.uuid4().bytes
                sent[correlation] = name
                props = publish_properties("application/json", None, reply_topic, correlation)
                centre.paho.publish(f"{ROOT}/gw-fuzz/cmd/{verb}", payload, 1, properties=props)
            try:
                wait_for(lambda: len(got) == len(cases), 20, "one reply per command")
            except AssertionError:
                missing = [name for c, name in sent.items() if c not in got]
                raise AssertionError(f"no reply to: {missing}") from None
            time.sleep(0.5)
            assert centre.request("gw-fuzz", "status", {})["ok"]  # and it carries on
    finally:
        gateway.stop()
    for correlation, name in sent.items():
        replies = got[correlation]
        assert len(replies) == 1, (name, replies)
        assert replies[0]["ok"] is False, (name, replies)
        assert replies[0]["error"]["code"] in {"bad_request", "unknown_verb"}, (name, replies)
