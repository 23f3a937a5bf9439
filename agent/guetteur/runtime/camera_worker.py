"""One camera at run time: its source thread, its analysis thread, its status and its restarts.

    source thread ──packets──► packet consumers (recorder, live hub); sub-stream ──► live sub hub
         └──frames──► two-frame queue ──► analysis thread: CameraAnalytics (view masks → PTZ
                                           pause → night settings → motion → rules → events;
                                           detector fed on motion) ──► publish_event

One thread per camera source (I/O bound in PyAV, which releases the GIL), one analysis thread fed
through a two-frame queue: when analysis falls behind, the oldest frame is dropped and counted, so
analysis never slows ingest or recording down. The worker is handed where its output goes; the
runtime (``runtime.gateway``) does the wiring.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from guetteur.analytics.detection.regions import Detection, filter_detections
from guetteur.analytics.detection.worker import DetectionCallback
from guetteur.analytics.events import EventUpdate
from guetteur.analytics.pipeline import CameraAnalytics
from guetteur.config import CameraConfig, EventsConfig
from guetteur.media.types import AnalyticFrame, Box, EncodedPacket
from guetteur.sources.base import CameraStatus, Source
from guetteur.uplink import messages

log = logging.getLogger(__name__)

PacketConsumer = Callable[[EncodedPacket], None]

# Longest pause of a source between two reconnection attempts (sources.base.Backoff cap).
RETRY_CAP_S = 30.0

# A worker restarted this many times in a row without delivering a packet is wedged beyond what
# an in-process restart can fix: it stops counting as alive, so the watchdog restarts the agent.
MAX_RESTARTS_WITHOUT_PACKET = 3

# Detections older than this (stream seconds) no longer describe what moves now.
DETECTION_FRESH_S = 1.0

# How long a restart waits for the hung run's threads to end. A source stuck in a network read
# ends only when that read times out (``read_timeout_s``); until then no new run starts.
RESTART_JOIN_S = 1.0


class DetectorQueue(Protocol):
    """What a worker needs of the shared detector (guetteur.analytics.detection.worker.DetectorWorker)."""

    def submit(
        self,
        camera: str,
        frame: AnalyticFrame,
        motion_boxes: Sequence[Box] | None,
        callback: DetectionCallback,
    ) -> bool: ...

    def skipped(self, camera: str) -> int: ...


class CameraWorker:
    """One camera: its source thread, its analysis thread and its status.

    Where its output goes is given, not looked up: ``packet_consumers`` take every main-stream
    packet (recorder, live hub), ``on_sub_stream`` the sub-stream's, ``publish_event`` every event
    update, ``publish_status`` the worker itself when its camera's state changes; ``detector`` is
    the gateway's shared object detector, if one is loaded."""

    def __init__(
        self,
        camera: CameraConfig,
        source: Source,
        events: EventsConfig,
        *,
        publish_event: Callable[[EventUpdate], None],
        publish_status: Callable[[CameraWorker], None],
        detector: DetectorQueue | None = None,
        on_sub_stream: PacketConsumer | None = None,
        timezone: str = "UTC",
    ) -> None:
        self.camera = camera
        self.source = source
        self.events = events
        self.publish_event = publish_event
        self.publish_status = publish_status
        self.detector = detector  # used for cameras whose config asks for detection
        self.on_sub_stream = on_sub_stream
        self.packet_consumers: list[PacketConsumer] = []
        self.status = CameraStatus(camera=camera.id, since=time.time())
        # masks of the view, PTZ pause, night settings, motion, rules, events
        self.analytics = CameraAnalytics(camera, events, timezone=timezone)
        self.motion = self.analytics.motion
        self.tracker = self.analytics.tracker
        self.frames: queue.Queue[AnalyticFrame | None] = queue.Queue(maxsize=2)
        self.frames_dropped = 0
        self.frames_analysed = 0
        self.last_packet = time.monotonic()
        self.last_status_report = time.monotonic()
        self.started_at = time.monotonic()
        self.restarts_without_packet = 0
        self.last_frame: AnalyticFrame | None = None  # privacy-masked, for snapshots on demand
        # Detections arrive from the detector thread; the next frames' event update uses them
        # while they are recent (stream time), so the detector never holds analysis up.
        self._detections: tuple[float, list[Detection]] = (float("-inf"), [])
        self._detections_lock = threading.Lock()
        # One stop event per run, handed to that run's threads: a run's threads watch only their
        # own, so starting a new run can never revive the threads of the last one.
        self._stop = threading.Event()
        self._source_thread: threading.Thread | None = None
        self._analysis_thread: threading.Thread | None = None
        self._restart_pending = False  # stopped for a restart; the old threads have not ended

    # -- SourceSink ---------------------------------------------------------------------------

    def on_packet(self, packet: EncodedPacket) -> None:
        self.last_packet = time.monotonic()
        self.restarts_without_packet = 0
        for consumer in self.packet_consumers:
            try:
                consumer(packet)
            except Exception:
                log.exception(
                    "camera %s: a packet consumer failed; packet skipped for it", self.camera.id
                )

    def on_sub_packet(self, packet: EncodedPacket) -> None:
        if self.on_sub_stream is not None:
            self.on_sub_stream(packet)

    def on_frame(self, frame: AnalyticFrame) -> None:
        try:
            self.frames.put_nowait(frame)
        except queue.Full:
            try:
                self.frames.get_nowait()
                self.frames_dropped += 1
            except queue.Empty:
                pass
            try:
                self.frames.put_nowait(frame)
            except queue.Full:
                self.frames_dropped += 1

    def on_status(self, status: CameraStatus) -> None:
        self.last_status_report = time.monotonic()
        changed = (status.state, status.last_error) != (self.status.state, self.status.last_error)
        self.status = status
        if changed:  # the source has logged the change; the centre hears of it here
            self.publish_status(self)

    # -- threads -----------------------------------------------------------------------------

    def start(self) -> bool:
        """Start a run: a source thread and an analysis thread watching a fresh stop event.
        False, and nothing started, while a thread of the previous run is still alive (a source
        stuck in a network read): two runs would mean two connections to the camera feeding one
        recorder and two analysis threads sharing one event tracker."""
        if self.lingering_threads():
            return False
        while True:  # a stop marker left from the last run would end the new analysis thread
            try:
                self.frames.get_nowait()
            except queue.Empty:
                break
        stop = threading.Event()
        self._stop = stop
        # No reset of last_packet/last_status_report: a restarted worker counts as alive only
        # once its new source shows life, so restarts that do not help let the watchdog fire.
        self.started_at = time.monotonic()
        self._source_thread = threading.Thread(
            target=self._run_source, args=(stop,), name=f"source-{self.camera.id}", daemon=True
        )
        self._analysis_thread = threading.Thread(
            target=self._run_analysis,
            args=(stop,),
            name=f"analysis-{self.camera.id}",
            daemon=True,
        )
        self._source_thread.start()
        self._analysis_thread.start()
        return True

    def lingering_threads(self) -> list[str]:
        """The names of this worker's threads still alive (of the current or the last run)."""
        return [
            t.name
            for t in (self._source_thread, self._analysis_thread)
            if t is not None and t.is_alive()
        ]

    def request_stop(self) -> None:
        self._stop.set()
        try:
            self.frames.put_nowait(None)
        except queue.Full:
            pass

    def stop(self, timeout: float = 3.0) -> None:
        self.request_stop()
        deadline = time.monotonic() + timeout
        for t in (self._source_thread, self._analysis_thread):
            if t is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        analysis = self._analysis_thread
        if analysis is not None and analysis.is_alive():
            # Still inside a frame: ending its event from here would run the tracker on two
            # threads. The event stays open (and journalled): the next run carries it on, or
            # the next start of the agent ends it (reason "restart").
            log.warning(
                "camera %s: analysis still busy at the stop; its event in progress is not ended "
                "now (ended by the next start if the agent stops)",
                self.camera.id,
            )
            return
        for update in self.analytics.flush():
            self.publish_event(update)

    def restart(self) -> None:
        """Stop and start again a worker found hung (``needs_restart``); counts the restarts
        that brought no packet, so ``alive`` can give up on them. When the hung run's threads do
        not end within ``RESTART_JOIN_S``, the new run waits for them (``needs_restart`` asks
        again once they have ended) and the worker counts as not alive meanwhile, so the
        watchdog restarts the agent if they never end."""
        if not self._restart_pending:
            log.error(
                "camera %s: no packet for %.0f s and no word from its source (last "
                "state %s: %s); restarting the camera worker",
                self.camera.id,
                time.monotonic() - self.last_packet,
                self.status.state,
                self.status.last_error or "no error reported",
            )
            self.stop(RESTART_JOIN_S)
            self.restarts_without_packet += 1
        if self.start():
            if self._restart_pending:
                log.warning("camera %s: its stuck threads ended; worker restarted", self.camera.id)
            self._restart_pending = False
            return
        if not self._restart_pending:
            log.error(
                "camera %s: %s still running %.0f s after the stop (stuck in a camera read, "
                "which times out after %.0f s); the camera is restarted once they end, and the "
                "systemd watchdog restarts the agent if they never do",
                self.camera.id,
                " and ".join(self.lingering_threads()),
                RESTART_JOIN_S,
                max(self.camera.open_timeout_s, self.camera.read_timeout_s),
            )
        self._restart_pending = True

    def alive(self) -> bool:
        """For the watchdog: threads running, and either packets flowing or the source visibly
        working through its reconnect loop (a camera that is off the network must not restart
        the whole agent and the other cameras with it). A source that says "streaming" but
        delivers nothing is stalled: not alive."""
        if self._restart_pending:
            return False  # stopped, waiting for a stuck run to end before the next one starts
        threads_ok = all(
            t is not None and t.is_alive() for t in (self._source_thread, self._analysis_thread)
        )
        if self.restarts_without_packet >= MAX_RESTARTS_WITHOUT_PACKET:
            return False  # restarting in-process does not help: let systemd restart the agent
        now = time.monotonic()
        if now - self.last_packet < self.camera.stall_timeout_s:
            return threads_ok
        retrying = self.status.state in ("reconnecting", "stalled", "failed", "starting")
        recent_report = now - self.last_status_report < self.camera.stall_timeout_s + RETRY_CAP_S
        return threads_ok and retrying and recent_report

    def needs_restart(self) -> bool:
        """A worker thread died, or the camera stays silent without its source reporting —
        giving a (re)started worker ``stall_timeout_s`` to show life first."""
        if self._stop.is_set():  # stopped; or waiting to restart, until the stuck run has ended
            return self._restart_pending and not self.lingering_threads()
        dead = any(
            t is None or not t.is_alive() for t in (self._source_thread, self._analysis_thread)
        )
        if dead:
            return True
        settled = time.monotonic() - self.started_at >= self.camera.stall_timeout_s
        return settled and not self.alive()

    def _run_source(self, stop: threading.Event) -> None:
        try:
            self.source.run(self, stop)
        except Exception as exc:  # a source must not raise; if one does, say so and let the
            log.exception("camera %s: source crashed", self.camera.id)  # supervisor restart it
            self.on_status(
                CameraStatus(
                    camera=self.camera.id,
                    state="failed",
                    last_error=f"source crashed: {exc}",
                    since=time.time(),
                )
            )

    def _run_analysis(self, stop: threading.Event) -> None:
        while not stop.is_set():
            frame = self.frames.get()
            if frame is None:
                break
            try:
                self.analyse(frame)
            except Exception:
                log.exception("camera %s: analysis failed on a frame; skipped", self.camera.id)

    def analyse(self, frame: AnalyticFrame) -> list[EventUpdate]:
        detections: list[Detection] = []
        if self.detector is not None and self.camera.detect is not None:
            with self._detections_lock:
                seen_at, recent = self._detections
            if frame.pts_s - seen_at <= DETECTION_FRESH_S:
                detections = recent
        analysis = self.analytics.process(frame, detections)
        self.last_frame = analysis.frame  # privacy-masked, for snapshots on demand
        self.frames_analysed += 1
        if analysis.motion and self.detector is not None and self.camera.detect is not None:
            self.detector.submit(
                self.camera.id, analysis.frame, analysis.result.boxes, self._on_detections
            )
        for update in analysis.updates:
            self.publish_event(update)
        return analysis.updates

    def snapshot_image(self, frame: AnalyticFrame) -> np.ndarray:
        """The picture sent to the centre (``CameraAnalytics.snapshot_image``: full resolution,
        privacy masks of the view; raises ``SnapshotWithheld`` when it may not be shown)."""
        return self.analytics.snapshot_image(frame)

    def _on_detections(self, frame: AnalyticFrame, found: list[Detection]) -> None:
        flt = self.analytics.detect_filter  # the view's and the mode's filter
        kept = filter_detections(found, flt) if flt is not None else found
        with self._detections_lock:
            self._detections = (frame.pts_s, kept)

    def status_message(self) -> dict[str, Any]:
        return messages.camera_status(
            self.status,
            frames_analysed=self.frames_analysed,
            frames_dropped=self.frames_dropped,
            detector_skipped=(
                self.detector.skipped(self.camera.id) if self.detector is not None else None
            ),
        )
