"""The worker restart race, against a real camera peer that hangs: a TCP listener on loopback that
accepts RTSP connections and never answers, so the source sits in a blocking open until its
``open_timeout_s``. ``CameraWorker.restart`` used to give up on the stuck run after 1 s and start
a new one that cleared the stop event the stuck thread still watched: that thread carried on, and
the camera ended up with two connections feeding one recorder and two analysis threads sharing
one event tracker."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from guetteur.config import validate_config
from guetteur.runtime.camera_worker import CameraWorker
from guetteur.sources import open_source
from tests.fixtures.waiting import wait_for

OPEN_TIMEOUT_S = 2.0


class SilentCamera:
    """Accepts TCP connections on a free loopback port and never sends a byte; counts the
    connections open at once, as the camera sees them."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.lock = threading.Lock()
        self.open = 0
        self.max_open = 0
        self.accepted = 0
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="silent-camera", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
                self.accepted += 1
                self.max_open = max(self.max_open, self.open)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with conn:
            try:
                while conn.recv(4096):  # read the client's request; answer nothing
                    pass
            except OSError:
                pass
        with self.lock:
            self.open -= 1

    def close(self) -> None:
        self._closed.set()
        self.sock.close()


@pytest.fixture
def silent_camera() -> Iterator[SilentCamera]:
    cam = SilentCamera()
    yield cam
    cam.close()


def source_threads(camera: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"source-{camera}" and t.is_alive()]


def test_a_restart_never_runs_two_sources_for_one_camera(silent_camera: SilentCamera) -> None:
    config = validate_config(
        {
            "gateway_id": "gw-restart",
            "mqtt": {"url": "mqtt://127.0.0.1:1"},
            "cameras": [
                {
                    "id": "stuck",
                    "url": f"rtsp://127.0.0.1:{silent_camera.port}/cam",
                    "open_timeout_s": OPEN_TIMEOUT_S,
                    "read_timeout_s": OPEN_TIMEOUT_S,
                    "stall_timeout_s": 1.0,
                }
            ],
        }
    )
    camera = config.cameras[0]
    worker = CameraWorker(
        camera,
        open_source(camera),
        config.events,
        publish_event=lambda _u: None,
        publish_status=lambda _w: None,
    )
    worker.start()
    try:
        wait_for(lambda: silent_camera.open == 1, 10, "the source to connect to the camera")
        # the supervisor finds it hung and restarts it while the source is stuck in its open
        worker.restart()
        assert len(source_threads("stuck")) == 1, "a second source thread runs beside the stuck one"
        assert not worker.alive(), "a worker waiting for its stuck run must not count as alive"
        assert not worker.needs_restart(), "restarted again while the stuck run goes on"

        # the stuck open times out; the stuck run sees its own stop event and ends
        wait_for(
            lambda: not worker.lingering_threads(),
            OPEN_TIMEOUT_S + 5,
            "the stuck run's threads to end after the open timeout",
        )
        assert worker.needs_restart(), "the pending restart is not asked for once the run ended"
        worker.restart()
        wait_for(lambda: silent_camera.open == 1, 10, "the new run to connect")
        time.sleep(OPEN_TIMEOUT_S + 1.5)  # past the old run's timeout and a retry's backoff
        assert len(source_threads("stuck")) == 1
        assert silent_camera.max_open == 1, (
            f"{silent_camera.max_open} connections to one camera at once"
        )
    finally:
        worker.stop(OPEN_TIMEOUT_S + 2)
    assert not worker.lingering_threads()
