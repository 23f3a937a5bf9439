"""sd_notify against a real NOTIFY_SOCKET datagram socket (what systemd listens on)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from guetteur.runtime.health import (
    DEFAULT_TICK_S,
    HealthSupervisor,
    Notifier,
    assess,
    read_health_file,
    tick_interval_s,
    watchdog_timeout_s,
)


class NotifyListener:
    """The systemd side: a bound AF_UNIX datagram socket collecting KEY=value messages."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self, timeout: float = 2.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        return dict(line.split("=", 1) for line in data.decode().split("\n"))

    def drain(self) -> list[dict[str, str]]:
        out = []
        while True:
            try:
                out.append(self.receive(timeout=0.05))
            except TimeoutError:
                return out


@pytest.fixture
def abstract_listener() -> Iterator[NotifyListener]:
    name = f"guetteur-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    yield NotifyListener(sock, "@" + name)
    sock.close()


def watchdog_env(listener: NotifyListener, usec: int = 3_000_000) -> dict[str, str]:
    return {
        "NOTIFY_SOCKET": listener.env_value,
        "WATCHDOG_USEC": str(usec),
        "WATCHDOG_PID": str(os.getpid()),
    }


def test_ready_status_on_abstract_socket(abstract_listener: NotifyListener) -> None:
    sup = HealthSupervisor(env=watchdog_env(abstract_listener))
    sup.ready("2 cameras, link up")
    msg = abstract_listener.receive()
    assert msg["READY"] == "1"
    assert msg["STATUS"] == "2 cameras, link up"
    assert msg["MAINPID"] == str(os.getpid())


def test_path_socket_and_multiline_status_kept_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        listener = NotifyListener(sock, str(path))
        notifier = Notifier(env={"NOTIFY_SOCKET": str(path)})
        assert notifier.status("line one\nWATCHDOG=1")
        msg = listener.receive()
        # the injected second line must not become a WATCHDOG=1 assignment
        assert msg == {"STATUS": "line one WATCHDOG=1"}
    finally:
        sock.close()


def test_watchdog_only_while_everything_alive(abstract_listener: NotifyListener) -> None:
    sup = HealthSupervisor(env=watchdog_env(abstract_listener))
    sup.ready("starting")
    abstract_listener.drain()

    assert sup.tick({"cam1": True, "cam2": True}, True, "2 cameras ok")
    msgs = abstract_listener.drain()
    assert {"WATCHDOG": "1"} in msgs
    assert {"STATUS": "2 cameras ok"} in msgs

    # the same healthy state again: only WATCHDOG (STATUS unchanged is not repeated)
    assert sup.tick({"cam1": True, "cam2": True}, True, "2 cameras ok")
    assert abstract_listener.drain() == [{"WATCHDOG": "1"}]

    # cam2 stalls: no WATCHDOG, and STATUS names the camera
    assert not sup.tick({"cam1": True, "cam2": False}, True, "1/2 cameras")
    msgs = abstract_listener.drain()
    assert all("WATCHDOG" not in m for m in msgs)
    assert msgs == [{"STATUS": "1/2 cameras | UNHEALTHY: camera cam2 not alive"}]
    assert not sup.tick({"cam1": True, "cam2": False}, True, "1/2 cameras")
    assert abstract_listener.drain() == []

    # the link drops too
    assert not sup.tick({"cam1": True, "cam2": True}, False, "offline")
    msgs = abstract_listener.drain()
    assert msgs == [{"STATUS": "offline | UNHEALTHY: link not alive"}]

    # everything back: petting resumes
    assert sup.tick({"cam1": True, "cam2": True}, True, "2 cameras ok")
    msgs = abstract_listener.drain()
    assert {"WATCHDOG": "1"} in msgs

    sup.stopping("shutting down")
    assert abstract_listener.receive() == {"STOPPING": "1", "STATUS": "shutting down"}


@pytest.mark.slow
def test_no_watchdog_pet_once_a_camera_stalls_in_a_running_loop(
    abstract_listener: NotifyListener, tmp_path: Path
) -> None:
    """A real loop: camera worker threads deliver 'packets'; one stops; petting stops."""
    stall_s = 0.3
    last_packet = {"cam1": time.monotonic(), "cam2": time.monotonic()}
    feeding = {"cam1": threading.Event(), "cam2": threading.Event()}
    stop = threading.Event()

    def worker(cam: str) -> None:
        while not stop.is_set():
            if feeding[cam].is_set():
                last_packet[cam] = time.monotonic()
            time.sleep(0.02)

    for ev in feeding.values():
        ev.set()
    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in last_packet]
    for t in threads:
        t.start()
    health_file = tmp_path / "health.json"
    sup = HealthSupervisor(
        env=watchdog_env(abstract_listener, usec=300_000), health_file=health_file
    )
    assert sup.tick_interval_s == pytest.approx(0.1)
    sup.ready("2 cameras")

    def run_loop(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            now = time.monotonic()
            alive = {c: now - t < stall_s for c, t in last_packet.items()}
            sup.tick(alive, True, "loop")
            time.sleep(sup.tick_interval_s)

    try:
        abstract_listener.drain()
        run_loop(0.6)
        pets_healthy = [m for m in abstract_listener.drain() if "WATCHDOG" in m]
        assert len(pets_healthy) >= 3
        record = read_health_file(health_file)
        assert record is not None and record["healthy"] is True and record["ready"] is True

        feeding["cam2"].clear()  # cam2 stops delivering packets
        time.sleep(stall_s + 0.1)
        abstract_listener.drain()
        run_loop(0.6)
        msgs = abstract_listener.drain()
        assert [m for m in msgs if "WATCHDOG" in m] == []
        record = read_health_file(health_file)
        assert record is not None and record["healthy"] is False
        assert "cam2" in str(record["status"])
    finally:
        stop.set()
        for t in threads:
            t.join()
    sup.stopping()
    assert abstract_listener.receive()["STOPPING"] == "1"
    assert not health_file.exists()


def test_watchdog_usec_parsing() -> None:
    pid = os.getpid()
    assert watchdog_timeout_s({}) is None
    assert watchdog_timeout_s({"WATCHDOG_USEC": "60000000"}) == 60.0
    assert watchdog_timeout_s({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(pid)}) == 60.0
    # inherited from a parent: not for us
    assert watchdog_timeout_s({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(pid + 1)}) is None
    assert watchdog_timeout_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_timeout_s({"WATCHDOG_USEC": "0"}) is None
    assert tick_interval_s(None) == DEFAULT_TICK_S
    assert tick_interval_s(60.0) == DEFAULT_TICK_S
    assert tick_interval_s(3.0) == pytest.approx(1.0)


def test_without_systemd_nothing_is_sent_and_nothing_breaks(tmp_path: Path) -> None:
    sup = HealthSupervisor(env={}, health_file=tmp_path / "h.json")
    assert not sup.notifier.enabled
    sup.ready("x")
    assert sup.tick({"a": True}, True, "ok")
    assert json.loads((tmp_path / "h.json").read_text())["healthy"] is True
    sup.stopping()


def test_unreachable_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    assert notifier.watchdog() is False
    assert notifier.failures == 1
    assert Notifier(env={"NOTIFY_SOCKET": "relative/path"}).enabled is False


def test_assess_is_pure() -> None:
    v = assess({"b": False, "a": False, "c": True}, True, "s")
    assert v.dead_cameras == ("a", "b")
    assert not v.healthy
    assert assess({}, True, "no cameras").healthy


def test_from_environment_uses_runtime_directory(
    abstract_listener: NotifyListener, tmp_path: Path
) -> None:
    env = {**watchdog_env(abstract_listener, usec=30_000_000), "RUNTIME_DIRECTORY": str(tmp_path)}
    sup = HealthSupervisor.from_environment(env)
    assert sup.watchdog_s == 30.0 and sup.tick_interval_s == DEFAULT_TICK_S
    assert sup.tick({"cam1": True}, True, "ok")
    assert abstract_listener.receive() == {"WATCHDOG": "1"}
    assert read_health_file(tmp_path / "health.json") is not None
    assert HealthSupervisor.from_environment({}).health_file is None
