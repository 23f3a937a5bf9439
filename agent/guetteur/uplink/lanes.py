"""Command lanes: one queue and worker per camera, a small pool for the rest.

A command naming a camera waits only behind that camera's commands: sixteen PTZ moves to a dome
that never answers fill that dome's lane (the next ones are refused ``busy`` at once) while
``status`` and ``live.renew``, which name no camera, run on the gateway lane. Every queue is
bounded, and a job that cannot be queued is answered at once by the caller's ``on_full``.

No I/O here: the link submits jobs (a closure that runs the command and publishes its reply).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Collection

log = logging.getLogger(__name__)

Job = Callable[[], None]
GATEWAY_LANE = ""


class _Lane:
    def __init__(self, name: str, workers: int, depth: int) -> None:
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=depth)
        self.threads = [
            threading.Thread(target=self._run, name=f"command-{name}-{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # the job answers its own errors; this keeps the lane alive
                log.exception("command lane: a job failed")


class CommandLanes:
    def __init__(
        self, cameras: Collection[str] = (), camera_depth: int = 8, gateway_workers: int = 2
    ) -> None:
        self._depth = camera_depth
        self._cameras = set(cameras)
        self._lanes: dict[str, _Lane] = {
            GATEWAY_LANE: _Lane("gateway", gateway_workers, max(16, 8 * gateway_workers))
        }
        self._lock = threading.Lock()
        self._closed = False

    def set_cameras(self, cameras: Collection[str]) -> None:
        """The cameras that get a lane of their own (others share the gateway lane: a command
        naming an unknown camera must not create a thread)."""
        with self._lock:
            self._cameras = set(cameras)

    def lane_of(self, camera: str | None) -> str:
        return camera if camera is not None and camera in self._cameras else GATEWAY_LANE

    def submit(self, camera: str | None, job: Job) -> bool:
        """Queue ``job`` on the camera's lane (or the gateway lane); False when that lane is
        full (or closed): the caller answers ``busy``."""
        name = self.lane_of(camera)
        with self._lock:
            if self._closed:
                return False
            lane = self._lanes.get(name)
            if lane is None:
                lane = self._lanes[name] = _Lane(f"cam-{name}", 1, self._depth)
        try:
            lane.jobs.put_nowait(job)
        except queue.Full:
            return False
        return True

    def close(self) -> None:
        """Stop taking jobs; workers finish the one they run and exit (daemon threads: a job
        stuck on a dead camera does not hold up the agent's exit)."""
        with self._lock:
            self._closed = True
            lanes = list(self._lanes.values())
        for lane in lanes:
            while True:
                try:
                    lane.jobs.get_nowait()
                except queue.Empty:
                    break
            for _ in lane.threads:
                try:
                    lane.jobs.put_nowait(None)
                except queue.Full:
                    break
