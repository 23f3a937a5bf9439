"""PTZ latency: centre command over MQTT → Pelco-D bytes on the serial line, and the reply.

Everything real and on loopback: a Mosquitto started here on a free port, the agent side is the
lead's ``Link`` (MQTT 5 session) feeding ``CommandDispatcher`` → ``PtzService`` → Pelco-D driver
→ a socat pty pair, the centre side is ``CentreClient.request``. A reader thread on the camera's
end of the pty timestamps each frame.

Reference limits measured in the same run:
- bare serial: pyserial write → read of the same 7 bytes through the same kind of pty pair;
- bare MQTT: publish QoS 1 → a subscriber's on_message on the same broker (one way).

Goal: p95 (command → bytes) ≤ 50 ms.  Usage: .venv/bin/python bench/ptz_latency.py [-n 200]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import serial
from paho.mqtt.enums import CallbackAPIVersion

from guetteur.centre.client import CentreClient
from guetteur.config import CameraConfig, MqttConfig, PtzConfig
from guetteur.ptz import pelco_d
from guetteur.ptz.service import PtzService
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.commands import CommandDispatcher
from guetteur.uplink.link import DirectPublisher, Link

NODELAY = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if NODELAY:
        lines.append("set_tcp_nodelay true")
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def start_socat() -> tuple[subprocess.Popen[bytes], str, str]:
    proc = subprocess.Popen(
        ["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if select.select([proc.stderr], [], [], 0.1)[0]:
            seen += os.read(proc.stderr.fileno(), 4096)
            paths = re.findall(rb"PTY is (\S+)", seen)
            if len(paths) == 2:
                return proc, paths[0].decode(), paths[1].decode()
    proc.kill()
    raise SystemExit("socat gave no pty pair")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, ms: list[float]) -> str:
    return (
        f"{name:<34} median {statistics.median(ms):7.2f} ms   p95 {pct(ms, 0.95):7.2f} ms   "
        f"max {max(ms):7.2f} ms"
    )


class FrameClock:
    """Camera end of the pty: timestamps each 7-byte Pelco-D frame as it completes."""

    def __init__(self, path: str) -> None:
        self.port = serial.Serial(path, 9600, timeout=0.05)
        self.frames: list[tuple[float, bytes]] = []
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            # read what is there (at least 1 byte): read(64) would wait for 64 or the timeout
            buf += self.port.read(max(1, self.port.in_waiting))
            while len(buf) >= 7:
                frame, buf = buf[:7], buf[7:]
                with self.cond:
                    self.frames.append((time.perf_counter(), frame))
                    self.cond.notify_all()

    def wait(self, n: int, timeout: float = 2.0) -> tuple[float, bytes] | None:
        with self.cond:
            self.cond.wait_for(lambda: len(self.frames) >= n, timeout)
            return self.frames[n - 1] if len(self.frames) >= n else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.port.close()


def bare_serial(n: int) -> list[float]:
    proc, a, b = start_socat()
    out: list[float] = []
    with serial.Serial(a, 9600) as tx, serial.Serial(b, 9600, timeout=1) as rx:
        frame = pelco_d.stop_frame(1)
        for _ in range(n):
            t0 = time.perf_counter()
            tx.write(frame)
            got = rx.read(7)
            out.append((time.perf_counter() - t0) * 1000)
            assert got == frame
    proc.terminate()
    proc.wait()
    return out


def bare_mqtt(port: int, n: int) -> list[float]:
    got = threading.Event()
    stamp: list[float] = []

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        stamp.append(time.perf_counter())
        got.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("bench/echo", qos=1)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    time.sleep(0.3)
    out: list[float] = []
    for _ in range(n):
        got.clear()
        stamp.clear()
        t0 = time.perf_counter()
        pub.publish("bench/echo", b'{"v":1}', qos=1)
        if got.wait(2):
            out.append((stamp[0] - t0) * 1000)
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="commands to time")
    parser.add_argument(
        "--nodelay",
        action="store_true",
        help="set_tcp_nodelay true in the broker config (Mosquitto leaves Nagle on by default; "
        "the agent's and centre's clients always set TCP_NODELAY, see mqttutil.new_client)",
    )
    args = parser.parse_args()
    global NODELAY
    NODELAY = args.nodelay
    if not shutil.which("socat"):
        raise SystemExit("socat is not installed")

    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_mosquitto(Path(tmp))
        socat, gateway_end, camera_end = start_socat()
        url = f"mqtt://127.0.0.1:{port}"
        dispatcher = CommandDispatcher(rate_per_s=10_000, burst=10_000)
        link = Link(MqttConfig(url=url), "gw-bench", dispatcher)
        audit = AuditTrail(DirectPublisher(link), "gw-bench")
        camera = CameraConfig(
            id="dome",
            url="test:bars",
            ptz=PtzConfig(protocol="pelco-d", serial_port=gateway_end, address=1),
        )
        service = PtzService([camera], audit)
        service.register(dispatcher)
        service.start()
        link.start()
        if not link.wait_subscribed(10):
            raise SystemExit("the agent's link did not connect")
        clock = FrameClock(camera_end)
        centre = CentreClient(url).connect()
        to_bytes: list[float] = []
        round_trip: list[float] = []
        try:
            for i in range(args.n + 10):  # 10 warm-up commands are not counted
                preset = 1 + i % 8
                t0 = time.perf_counter()
                reply = centre.request(
                    "gw-bench",
                    "ptz",
                    {
                        "camera": "dome",
                        "action": "goto_preset",
                        "preset": preset,
                        "operator": "bench",
                    },
                )
                t_reply = time.perf_counter()
                hit = clock.wait(i + 1)
                if not reply.get("ok") or hit is None:
                    raise SystemExit(f"command {i} failed: {reply}")
                t_bytes, frame = hit
                assert frame == pelco_d.preset_frame(1, pelco_d.GOTO_PRESET, preset), frame
                if i >= 10:
                    to_bytes.append((t_bytes - t0) * 1000)
                    round_trip.append((t_reply - t0) * 1000)
        finally:
            centre.close()
            clock.close()
            service.close()
            link.stop()
        mqtt_one_way = bare_mqtt(port, args.n)
        serial_only = bare_serial(args.n)
        socat.terminate()
        broker.terminate()
        socat.wait()
        broker.wait()

    print(
        f"PTZ latency over loopback, {args.n} goto_preset commands (Pelco-D, pty pair), "
        f"TCP_NODELAY on the clients, {'and' if NODELAY else 'not'} on the broker "
        f"(set_tcp_nodelay {'true' if NODELAY else 'false, its default'})"
    )
    print(summary("MQTT command -> bytes on serial", to_bytes))
    print(summary("MQTT command -> reply at centre", round_trip))
    print(summary("limit: bare MQTT publish -> recv", mqtt_one_way))
    print(summary("limit: bare serial write -> read", serial_only))
    limit = statistics.median(mqtt_one_way) + statistics.median(serial_only)
    print(
        f"ratio command->bytes median / (bare MQTT + bare serial) medians: "
        f"{statistics.median(to_bytes) / limit:.2f}x"
    )
    print("on a real 9600 bd RS-485 line a 7-byte frame adds 7.3 ms of wire time (10 bits/byte)")
    p95 = pct(to_bytes, 0.95)
    print(f"goal p95 <= 50 ms: {'met' if p95 <= 50 else 'NOT met'} ({p95:.2f} ms)")
    return 0 if p95 <= 50 else 1


if __name__ == "__main__":
    sys.exit(main())
