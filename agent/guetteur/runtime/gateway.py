"""The runtime: builds every part from the config and wires the data flow, one way.

    source ──packets──► recorder, live hub
       └──frames──► analysis thread: privacy mask → motion → (detector) → events ──► publisher
    commands ◄── link ──► live | ptz | export | snapshot

One thread per camera source (I/O bound in PyAV, which releases the GIL), one analysis thread per
camera fed through a two-frame queue: when analysis falls behind, the oldest frame is dropped and
counted, so analysis never slows ingest or recording down.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from guetteur import __version__
from guetteur.analytics.detect import (
    Detection,
    DetectorError,
    DetectorWorker,
    filter_detections,
    load_detector,
)
from guetteur.analytics.events import EventTracker, EventUpdate, encode_jpeg
from guetteur.analytics.masks import PolygonMask
from guetteur.analytics.motion import MotionDetector
from guetteur.config import CameraConfig, GuetteurConfig
from guetteur.live.service import LiveHub, LiveService
from guetteur.media.types import AnalyticFrame, EncodedPacket
from guetteur.ptz.service import PtzService
from guetteur.record.clips import EventClipper, ExportService
from guetteur.record.recorder import Recorder
from guetteur.runtime.health import HealthSupervisor
from guetteur.sources import open_source
from guetteur.sources.base import CameraStatus, Source
from guetteur.timeutil import clock_synchronised, iso_ms
from guetteur.uplink import messages, protocol
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.commands import CommandContext, CommandDispatcher, CommandError
from guetteur.uplink.link import DirectPublisher, Link
from guetteur.uplink.outbox import Outbox
from guetteur.uplink.publish import OutboundItem, Priority, Publisher

log = logging.getLogger(__name__)

PacketConsumer = Callable[[EncodedPacket], None]

# Longest pause of a source between two reconnection attempts (sources.base.Backoff cap).
RETRY_CAP_S = 30.0

# A worker restarted this many times in a row without delivering a packet is wedged beyond what
# an in-process restart can fix: it stops counting as alive, so the watchdog restarts the agent.
MAX_RESTARTS_WITHOUT_PACKET = 3

# Detections older than this (stream seconds) no longer describe what moves now.
DETECTION_FRESH_S = 1.0


class CameraWorker:
    """One camera: its source thread, its analysis thread and its status."""

    def __init__(self, gateway: Gateway, camera: CameraConfig, source: Source) -> None:
        self.gateway = gateway
        self.camera = camera
        self.source = source
        self.packet_consumers: list[PacketConsumer] = []
        self.status = CameraStatus(camera=camera.id, since=time.time())
        self.privacy = PolygonMask(camera.privacy_masks)
        self.motion = MotionDetector(camera.motion, camera.ignore_masks, camera.privacy_masks)
        require = camera.detect.require if camera.detect else ()
        self.tracker = EventTracker(
            camera.id,
            gateway.config.events,
            require_labels=require,
            snapshot_image=self.snapshot_image,
        )
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
        self._stop = threading.Event()
        self._source_thread: threading.Thread | None = None
        self._analysis_thread: threading.Thread | None = None

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
        hub = self.gateway.live_sub_hubs.get(self.camera.id)
        if hub is not None:
            hub.on_packet(packet)

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
            self.gateway.publish_camera_status(self)

    # -- threads -----------------------------------------------------------------------------

    def start(self) -> None:
        while True:  # a stop marker left from the last run would end the new analysis thread
            try:
                self.frames.get_nowait()
            except queue.Empty:
                break
        self._stop.clear()
        # No reset of last_packet/last_status_report: a restarted worker counts as alive only
        # once its new source shows life, so restarts that do not help let the watchdog fire.
        self.started_at = time.monotonic()
        self._source_thread = threading.Thread(
            target=self._run_source, name=f"source-{self.camera.id}", daemon=True
        )
        self._analysis_thread = threading.Thread(
            target=self._run_analysis, name=f"analysis-{self.camera.id}", daemon=True
        )
        self._source_thread.start()
        self._analysis_thread.start()

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
        for update in self.tracker.flush():
            self.gateway.publish_event(update)

    def alive(self) -> bool:
        """For the watchdog: threads running, and either packets flowing or the source visibly
        working through its reconnect loop (a camera that is off the network must not restart
        the whole agent and the other cameras with it). A source that says "streaming" but
        delivers nothing is stalled: not alive."""
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
        if self._stop.is_set():
            return False
        dead = any(
            t is None or not t.is_alive() for t in (self._source_thread, self._analysis_thread)
        )
        if dead:
            return True
        settled = time.monotonic() - self.started_at >= self.camera.stall_timeout_s
        return settled and not self.alive()

    def _run_source(self) -> None:
        try:
            self.source.run(self, self._stop)
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

    def _run_analysis(self) -> None:
        while not self._stop.is_set():
            frame = self.frames.get()
            if frame is None:
                break
            try:
                self.analyse(frame)
            except Exception:
                log.exception("camera %s: analysis failed on a frame; skipped", self.camera.id)

    def analyse(self, frame: AnalyticFrame) -> list[EventUpdate]:
        if self.privacy:
            frame = AnalyticFrame(
                frame.camera,
                self.privacy.blackout(frame.image),
                frame.pts_s,
                frame.wallclock,
                frame.source_size,
                frame.render,
            )
        self.last_frame = frame
        self.frames_analysed += 1
        result = self.motion.process(frame.image)
        detector = self.gateway.detector_worker
        detections: list[Detection] = []
        if detector is not None and self.camera.detect is not None:
            if result.motion:
                detector.submit(self.camera.id, frame, result.boxes, self._on_detections)
            with self._detections_lock:
                seen_at, recent = self._detections
            if frame.pts_s - seen_at <= DETECTION_FRESH_S:
                detections = recent
        updates = self.tracker.update(frame, result, detections)
        for update in updates:
            self.gateway.publish_event(update)
        return updates

    def snapshot_image(self, frame: AnalyticFrame) -> np.ndarray:
        """The picture sent to the centre: rendered from the full-resolution decoded frame when
        the source keeps it (the analysed one is only a few hundred pixels wide), with every
        privacy mask blacked out."""
        width = self.gateway.config.events.snapshot_width
        image = frame.render(width) if frame.render is not None else frame.image
        return self.privacy.blackout(image)

    def _on_detections(self, frame: AnalyticFrame, found: list[Detection]) -> None:
        assert self.camera.detect is not None
        kept = filter_detections(found, self.camera.detect)
        with self._detections_lock:
            self._detections = (frame.pts_s, kept)

    def status_message(self) -> dict[str, Any]:
        return messages.camera_status(
            self.status,
            frames_analysed=self.frames_analysed,
            frames_dropped=self.frames_dropped,
            detector_skipped=(
                self.gateway.detector_worker.skipped(self.camera.id)
                if self.gateway.detector_worker is not None
                else None
            ),
        )


class Gateway:
    def __init__(self, config: GuetteurConfig) -> None:
        self.config = config
        self.started_at = time.time()
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.link = Link(config.mqtt, config.gateway_id)
        self.outbox: Outbox | None = None
        if config.outbox.enabled:  # durable: items leave only when the centre acknowledges them
            self.outbox = Outbox(config.outbox, self.data_dir, self.link, config.gateway_id)
        self.publisher: Publisher = self.outbox or DirectPublisher(self.link)
        self.audit = AuditTrail(self.publisher, config.gateway_id)
        self.dispatcher = CommandDispatcher(self.audit)
        self.link.dispatcher = self.dispatcher
        self._warnings: list[str] = []
        self.detector_worker: DetectorWorker | None = None
        try:
            detector = load_detector(config.detection)
        except DetectorError as exc:
            detector = None
            self._warnings.append(f"detector not loaded, cameras run motion-only: {exc.message}")
            log.error("detection: %s; cameras run motion-only", exc.message)
        if detector is not None:
            self.detector_worker = DetectorWorker(detector, config.detection.max_queue)
        self.workers: dict[str, CameraWorker] = {}
        for cam in config.cameras:
            if cam.enabled:
                self.workers[cam.id] = CameraWorker(self, cam, open_source(cam))
        self.recorder: Recorder | None = None
        self.clipper: EventClipper | None = None
        self.exports: ExportService | None = None
        if config.recording.enabled:
            self.recorder = Recorder(config.recording, self.data_dir)
            for worker in self.workers.values():
                worker.packet_consumers.append(self.recorder.on_packet)
            self.exports = ExportService(config, self.recorder.index, self.publisher)
            self.exports.register(self.dispatcher)
            if config.events.clips:
                self.clipper = EventClipper(
                    self.recorder, self.publisher, config.events, self.data_dir / "clips"
                )
        self.live_hubs = {cid: LiveHub(cid, config.live.max_gop_bytes) for cid in self.workers}
        for cid, worker in self.workers.items():
            worker.packet_consumers.append(self.live_hubs[cid].on_packet)
        # cameras with a sub-stream: live "sub" repackages it (far less bandwidth than the main)
        self.live_sub_hubs = {
            cid: LiveHub(cid, config.live.max_gop_bytes)
            for cid, w in self.workers.items()
            if w.camera.sub_url
        }
        self.live = LiveService(
            config.live,
            self.workers_config(),
            self.link,
            self.audit,
            self.live_hubs,
            self.live_sub_hubs,
        )
        self.live.register(self.dispatcher)
        self.ptz = PtzService(self.workers_config(), self.audit)
        self.ptz.register(self.dispatcher)
        self.dispatcher.register("snapshot", SnapshotRequest, self._cmd_snapshot)
        self.dispatcher.register("status", StatusRequest, self._cmd_status, audited=False)
        self.link.add_connect_listener(self._on_link_up)
        self._stop = threading.Event()

    def workers_config(self) -> list[CameraConfig]:
        return [w.camera for w in self.workers.values()]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        log.info(
            "gateway %s: starting %d camera(s), version %s",
            self.config.gateway_id,
            len(self.workers),
            __version__,
        )
        self.live.start()
        if self.outbox is not None:
            self.outbox.start()
        self.link.start()
        self.ptz.start()
        for worker in self.workers.values():
            worker.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop every camera (together, within ``timeout``), then say goodbye on the link."""
        farewell = self.status_message(state="offline")
        self._stop.set()
        for worker in self.workers.values():
            worker.request_stop()
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            worker.stop(max(0.1, deadline - time.monotonic()))
        if self.detector_worker is not None:
            self.detector_worker.close(1.0)
        self.ptz.close()  # stops any camera still moving
        self.live.close()
        for closing in (self.exports, self.clipper):  # they share the recorder's index
            if closing is not None:
                closing.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.outbox is not None:
            self.outbox.close()
        self.link.stop(farewell)
        log.info("gateway %s: stopped", self.config.gateway_id)

    def summary(self) -> str:
        """One line for systemd's STATUS= and the logs."""
        states = [w.status.state for w in self.workers.values()]
        streaming = states.count("streaming")
        link = "link up" if self.link.connected else "link down"
        return f"{streaming}/{len(states)} cameras streaming, {link}"

    def run(
        self,
        stop: threading.Event,
        health: HealthSupervisor | None = None,
        status_every_s: float = 60.0,
    ) -> None:
        """The supervisor loop, until ``stop``: restarts hung or stalled camera workers first,
        then tells systemd's watchdog whether everything is alive (never from a timer thread:
        if this loop hangs, the watchdog must fire), and publishes status periodically."""
        health = health or HealthSupervisor.from_environment()
        health.ready(self.summary())
        interval = min(1.0, health.tick_interval_s)
        next_status = time.monotonic() + status_every_s
        while not stop.wait(interval):
            # Judge first, then restart: the tick that finds a worker hung does not pet the
            # watchdog, and a restarted worker counts again only once it shows life.
            alive = {cid: w.alive() for cid, w in self.workers.items()}
            for worker in self.workers.values():
                if worker.needs_restart():
                    log.error(
                        "camera %s: no packet for %.0f s and no word from its source (last "
                        "state %s: %s); restarting the camera worker",
                        worker.camera.id,
                        time.monotonic() - worker.last_packet,
                        worker.status.state,
                        worker.status.last_error or "no error reported",
                    )
                    worker.stop(1.0)
                    worker.restarts_without_packet += 1
                    worker.start()
            health.tick(alive, self.link.alive(), self.summary())
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + status_every_s
                self.publish_status()
                for worker in self.workers.values():
                    self.publish_camera_status(worker)
        health.stopping(f"stopping: {self.summary()}")

    # -- publishing --------------------------------------------------------------------------

    def publish_event(self, update: EventUpdate) -> None:
        if self.clipper is not None:
            if update.kind == "start":
                self.clipper.event_started(update.camera, update.event_id, update.start_wall)
            elif update.kind == "end" and update.end_wall is not None:
                self.clipper.event_ended(
                    update.camera, update.event_id, update.start_wall, update.end_wall
                )
        message = messages.event(update, self.config.gateway_id)
        self.publisher.submit(
            OutboundItem(
                item_id=update.message_id,
                kind="event",
                topic=protocol.rel_event(update.camera),
                payload=protocol.dumps(message),
                priority=Priority.EVENT,
                camera=update.camera,
            )
        )
        log.info(
            "camera %s: event %s %s score %.3f",
            update.camera,
            update.kind,
            update.event_id,
            update.peak_score,
        )
        if update.snapshot is not None:
            snap_id = f"{update.message_id}:snap"
            self.publisher.submit(
                OutboundItem(
                    item_id=snap_id,
                    kind="snapshot",
                    topic=protocol.rel_snapshot(update.camera),
                    payload=update.snapshot,
                    priority=Priority.SNAPSHOT,
                    camera=update.camera,
                    content_type="image/jpeg",
                    user_properties=messages.event_snapshot_properties(
                        snap_id, update.event_id, update.start_wall
                    ),
                )
            )

    def status_message(self, state: str = "online") -> dict[str, Any]:
        disk = shutil.disk_usage(self.data_dir)
        return messages.gateway_status(
            gateway=self.config.gateway_id,
            state=state,
            site=self.config.site,
            version=__version__,
            uptime_s=time.time() - self.started_at,
            clock_synced=clock_synchronised(),
            cameras={cid: w.status.state for cid, w in self.workers.items()},
            disk_free_bytes=disk.free,
            disk_total_bytes=disk.total,
            recording=self.recorder.status() if self.recorder is not None else None,
            outbox=self.outbox.depth() if self.outbox is not None else None,
            warnings=self.warnings(),
        )

    def warnings(self) -> list[str]:
        found = list(self._warnings)
        if self.recorder is not None:
            found += self.recorder.warnings()
        if self.outbox is not None:
            found += self.outbox.warnings()
        return found

    def publish_status(self) -> None:
        self.link.publish_json(self.link.topics.status, self.status_message(), qos=1, retain=True)

    def publish_camera_status(self, worker: CameraWorker) -> None:
        self.link.publish_json(
            self.link.topics.camera_status(worker.camera.id),
            worker.status_message(),
            qos=1,
            retain=True,
        )

    def _on_link_up(self) -> None:
        self.publish_status()
        for worker in self.workers.values():
            self.publish_camera_status(worker)

    # -- commands ----------------------------------------------------------------------------

    def _worker(self, camera: str) -> CameraWorker:
        worker = self.workers.get(camera)
        if worker is None:
            raise CommandError(
                protocol.ErrorCode.UNKNOWN_CAMERA,
                f"no camera {camera!r} on gateway {self.config.gateway_id}; "
                f"cameras: {', '.join(self.workers) or 'none'}",
            )
        return worker

    def _cmd_snapshot(self, ctx: CommandContext, req: SnapshotRequest) -> dict[str, Any]:
        worker = self._worker(req.camera)
        frame = worker.last_frame
        if frame is None or not worker.alive():
            raise CommandError(
                protocol.ErrorCode.CAMERA_DOWN,
                f"camera {req.camera} has no recent frame ({worker.status.state}: "
                f"{worker.status.last_error or 'no error reported'})",
            )
        jpeg = encode_jpeg(
            worker.snapshot_image(frame),
            self.config.events.snapshot_quality,
            self.config.events.snapshot_width,
        )
        snap_id = f"snap-{os.urandom(8).hex()}"
        self.publisher.submit(
            OutboundItem(
                item_id=snap_id,
                kind="snapshot",
                topic=protocol.rel_snapshot(req.camera),
                payload=jpeg,
                priority=Priority.SNAPSHOT,
                camera=req.camera,
                content_type="image/jpeg",
                user_properties=messages.requested_snapshot_properties(
                    snap_id, ctx.request_id, frame.wallclock
                ),
            )
        )
        return {"snapshot_id": snap_id, "time": iso_ms(frame.wallclock), "bytes": len(jpeg)}

    def _cmd_status(self, _ctx: CommandContext, _req: StatusRequest) -> dict[str, Any]:
        return {
            "gateway": self.status_message(),
            "cameras": [w.status_message() for w in self.workers.values()],
        }


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    camera: str
    operator: str | None = None


class StatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
