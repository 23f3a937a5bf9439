"""The runtime: builds every part from the config and wires the data flow, one way.

    camera worker ──packets──► recorder, live hub
       └──frames──► analysis: privacy mask → motion → (detector) → events ──► publisher, clipper
    commands ◄── link ──► live | ptz | export | snapshot | status

Each camera runs in its own ``CameraWorker`` (runtime.camera_worker), handed the callbacks it
publishes through; this module owns the wiring, the supervisor loop (restarts, watchdog, periodic
status) and the gateway's own commands (``snapshot``, ``status``).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from guetteur import __version__
from guetteur.analytics.detection.manifest import DetectorError
from guetteur.analytics.detection.runtime import load_detector
from guetteur.analytics.detection.worker import DetectorWorker
from guetteur.analytics.events import EventUpdate, SnapshotWithheld, encode_jpeg
from guetteur.analytics.ptz_aware import PtzMove
from guetteur.config import CameraConfig, GuetteurConfig
from guetteur.live.hub import LiveHub
from guetteur.live.service import LiveService
from guetteur.onvif.masks import PrivacyMaskService
from guetteur.ptz.service import PtzService
from guetteur.record.clip_jobs import EventClipper
from guetteur.record.clips import ExportService
from guetteur.record.event_journal import EventJournal, restart_end
from guetteur.record.writer import Recorder
from guetteur.runtime.camera_worker import CameraWorker
from guetteur.runtime.command_path import build_command_path
from guetteur.runtime.debug_hang import DebugHang
from guetteur.runtime.health import HealthSupervisor
from guetteur.sources import open_source
from guetteur.timeutil import clock_synchronised, iso_ms
from guetteur.uplink import messages, protocol
from guetteur.uplink.commands import CommandContext, CommandError
from guetteur.uplink.link import DirectPublisher, Link
from guetteur.uplink.outbox.service import Outbox
from guetteur.uplink.profile_m import ProfileMPublisher
from guetteur.uplink.publish import OutboundItem, Priority, Publisher

log = logging.getLogger(__name__)

# systemd's TimeoutStopSec is 30 s (systemd/system/guetteur.service); the agent aims to be gone in a
# third of it, so a slow SD card or a loaded CPU still leaves a margin before SIGKILL.
STOP_BUDGET_S = 8.0
# Kept, out of the stop budget, for the outbox's last commits and the farewell on the link.
_STOP_RESERVE_S = 1.5


class Gateway:
    """Every part of one gateway, built from its config and wired together."""

    def __init__(self, config: GuetteurConfig) -> None:
        self.config = config
        self.started_at = time.time()
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmds = config.commands
        self.link = Link(
            config.mqtt,
            config.gateway_id,
            command_workers=cmds.gateway_workers,
            reply_prefix=cmds.reply_prefix,
            camera_queue=cmds.camera_queue,
        )
        self.outbox: Outbox | None = None
        if config.outbox.enabled:  # durable: items leave only when the centre acknowledges them
            self.outbox = Outbox(config.outbox, self.data_dir, self.link, config.gateway_id)
        self.publisher: Publisher = self.outbox or DirectPublisher(self.link)
        self._warnings: list[str] = []
        self.audit, self.dispatcher = build_command_path(
            config, self.publisher, self.outbox, self.data_dir, self._warnings
        )
        self.link.dispatcher = self.dispatcher
        self.detector_worker: DetectorWorker | None = None
        try:
            detector = load_detector(config.detection)
        except DetectorError as exc:
            detector = None
            self._warnings.append(f"detector not loaded, cameras run motion-only: {exc.message}")
            log.error("detection: %s; cameras run motion-only", exc.message)
        if detector is not None:
            self.detector_worker = DetectorWorker(detector, config.detection.max_queue)
        cameras = [cam for cam in config.cameras if cam.enabled]
        self.live_hubs = {cam.id: LiveHub(cam.id, config.live.max_gop_bytes) for cam in cameras}
        # cameras with a sub-stream: live "sub" repackages it (far less bandwidth than the main)
        self.live_sub_hubs = {
            cam.id: LiveHub(cam.id, config.live.max_gop_bytes) for cam in cameras if cam.sub_url
        }
        self.workers: dict[str, CameraWorker] = {}
        for cam in cameras:
            sub_hub = self.live_sub_hubs.get(cam.id)
            self.workers[cam.id] = CameraWorker(
                cam,
                open_source(cam),
                config.events,
                publish_event=self.publish_event,
                publish_status=self.publish_camera_status,
                detector=self.detector_worker,
                on_sub_stream=sub_hub.on_packet if sub_hub is not None else None,
                timezone=config.timezone,
            )
        # Open events and owed clips, on disk: a crash neither leaves an event without its end
        # at the centre nor loses the clips of events that had ended (record.event_journal).
        self.journal = EventJournal(self.data_dir)
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
                    self.data_dir,
                    self.journal,
                    self.publisher,
                    config.events,
                    config.recording.segment_s,
                )
        for cid, worker in self.workers.items():  # after the recorder: recording comes first
            worker.packet_consumers.append(self.live_hubs[cid].on_packet)
        self.live = LiveService(
            config.live,
            self.workers_config(),
            self.link,
            self.audit,
            self.live_hubs,
            self.live_sub_hubs,
        )
        self.live.register(self.dispatcher)
        self.privacy = PrivacyMaskService(
            self.workers_config(), on_change=lambda st: self._camera_changed(st.camera)
        )
        self.ptz = PtzService(self.workers_config(), self.audit)
        self.ptz.register(self.dispatcher)
        self.ptz.add_move_listener(self._on_ptz_move)  # analysis pauses while a dome moves
        self.profile_m: ProfileMPublisher | None = None
        if config.profile_m.enabled:
            rules = {cam.id: cam.analytics.rules for cam in cameras}
            self.profile_m = ProfileMPublisher(
                config.profile_m,
                config.gateway_id,
                rules,
                lambda topic, payload, qos: self.link.publish_raw(
                    topic, payload, qos=qos, content_type="application/json"
                ),
            )
        self.dispatcher.register("snapshot", SnapshotRequest, self._cmd_snapshot)
        self.dispatcher.register(
            "status", StatusRequest, self._cmd_status, audited=False, record_before=False
        )
        self.link.lanes.set_cameras(self.workers)
        self.link.add_connect_listener(self._on_link_up)
        self._stop = threading.Event()
        self._stopped = False  # stop() runs once: a second call would use closed databases

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
        self.privacy.start()
        self.close_what_was_open()  # before the cameras: no new event is open yet
        for worker in self.workers.values():
            worker.start()

    def close_what_was_open(self) -> None:
        """After a crash: end the events the last run left open (``reason: "restart"``; their
        last message is submitted again first, in case the crash came before it reached the
        outbox: both are de-duplicated by id), then resume the clips still owed and release the
        pins nothing holds any more."""
        for left in self.journal.open_events():
            end = restart_end(left, clock_synchronised())
            log.warning(
                "camera %s: event %s was still open when the agent last stopped (crash or power "
                "cut); ended now, its end set to %s, last time it was seen open",
                end.camera,
                end.event_id,
                iso_ms(end.end_wall),
            )
            try:
                self.publisher.submit(self._event_item(left.last, left.payload))
                self.publish_event(end)
            except Exception:  # the agent starts all the same; the event stays journalled
                log.exception(
                    "camera %s: event %s could not be ended now; tried again at the next start",
                    end.camera,
                    end.event_id,
                )
        if self.clipper is not None:
            try:
                self.clipper.resume()
            except Exception:  # e.g. a full disk: the jobs stay journalled for the next start
                log.exception("event clips owed by the previous run not resumed now")

    def stop(self, timeout: float = 3.0, budget_s: float = STOP_BUDGET_S) -> None:
        """Stop every camera (together, within ``timeout``), cut the event clips owed with what
        is recorded, then say goodbye on the link; all within ``budget_s``. Clips that cannot be
        cut in time stay owed in the journal and are cut at the next start. A second call (a
        signal handler and a ``finally``, say) does nothing."""
        if self._stopped:
            return
        self._stopped = True
        began = time.monotonic()
        farewell = self.status_message(state="offline")
        self._stop.set()
        for worker in self.workers.values():
            worker.request_stop()
        deadline = began + min(timeout, budget_s / 2)
        for worker in self.workers.values():
            worker.stop(max(0.1, deadline - time.monotonic()))  # ends their events: clips owed
        if self.detector_worker is not None:
            self.detector_worker.close(1.0)
        self.ptz.close()  # stops any camera still moving
        self.privacy.close()
        self.live.close()
        if self.exports is not None:  # it shares the recorder's index
            self.exports.close()
        if self.recorder is not None:
            # Closes and indexes the open segments: the post-roll the clips wait for is all
            # there will be, and they are cut with it (no waiting for cameras already stopped).
            self.recorder.close(max(1.0, began + budget_s - _STOP_RESERVE_S - time.monotonic()))
        clips_done = True
        if self.clipper is not None:
            self.clipper.close(began + budget_s - _STOP_RESERVE_S)
            clips_done = self.clipper.idle()
        if clips_done:  # else a cut still runs past the budget: the process exit ends it
            self.journal.close()
        if self.outbox is not None:
            self.outbox.close()
        self.link.stop(farewell)
        log.info("gateway %s: stopped in %.1f s", self.config.gateway_id, time.monotonic() - began)

    def summary(self) -> str:
        """One line for systemd's STATUS= and the logs."""
        states = [w.status.state for w in self.workers.values()]
        streaming = states.count("streaming")
        link = "link up" if self.link.connected else "link down"
        reason = self.recorder.degraded_reason() if self.recorder is not None else None
        degraded = f", recording degraded: {reason}" if reason else ""
        return f"{streaming}/{len(states)} cameras streaming, {link}{degraded}"

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
        started = time.monotonic()
        next_status = started + status_every_s
        hang = DebugHang(Path(self.config.data_dir))
        while not stop.wait(interval):
            hang.check(time.monotonic() - started)
            # Judge first, then restart: the tick that finds a worker hung does not pet the
            # watchdog, and a restarted worker counts again only once it shows life.
            alive = {cid: w.alive() for cid, w in self.workers.items()}
            for worker in self.workers.values():
                if worker.needs_restart():
                    worker.restart()
            health.tick(alive, self.link.alive(), self.summary())
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + status_every_s
                self.publish_status()
                for worker in self.workers.values():
                    self.publish_camera_status(worker)
        health.stopping(f"stopping: {self.summary()}")

    # -- publishing --------------------------------------------------------------------------

    @staticmethod
    def _event_item(update: EventUpdate, payload: bytes) -> OutboundItem:
        return OutboundItem(
            item_id=update.message_id,
            kind="event",
            topic=protocol.rel_event(update.camera),
            payload=payload,
            priority=Priority.EVENT,
            camera=update.camera,
        )

    def publish_event(self, update: EventUpdate) -> None:
        """Journal, then publish (start, update); publish, then journal (end): a crash between
        the two at worst sends one message twice, which the outbox and the centre de-duplicate
        by id, and never leaves an event open at the centre or a clip unowed."""
        message = messages.event(update, self.config.gateway_id)
        if self.privacy.unverified(update.camera):  # the camera's own video may show them
            message["privacy_unverified"] = True
        item = self._event_item(update, protocol.dumps(message))
        if update.kind != "end":
            self.journal.opened(update, item.payload)
            if update.kind == "start" and self.clipper is not None:
                self.clipper.event_started(update.camera, update.event_id, update.start_wall)
        if self.profile_m is not None:
            self.profile_m.on_event(update)
        self.publisher.submit(item)
        if update.kind == "end":
            if self.clipper is not None and update.end_wall is not None:
                self.clipper.event_ended(
                    update.camera, update.event_id, update.start_wall, update.end_wall
                )
            else:
                self.journal.ended(update.event_id, None)
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
        recording = self.recorder.status() if self.recorder is not None else None
        degraded = recording is not None and recording["state"] == "degraded"
        message = messages.gateway_status(
            gateway=self.config.gateway_id,
            state="degraded" if degraded and state == "online" else state,
            site=self.config.site,
            version=__version__,
            uptime_s=time.time() - self.started_at,
            clock_synced=clock_synchronised(),
            cameras={cid: w.status.state for cid, w in self.workers.items()},
            disk_free_bytes=disk.free,
            disk_total_bytes=disk.total,
            recording=recording,
            outbox=self.outbox.depth() if self.outbox is not None else None,
            warnings=self.warnings(),
        )
        if degraded and recording is not None:  # the truth, not "online" with a warning
            message["reason"] = recording["reason"]
        return message

    def warnings(self) -> list[str]:
        found = list(self._warnings)
        if self.recorder is not None:
            found += self.recorder.warnings()
        if self.outbox is not None:
            found += self.outbox.warnings()
        return found

    def publish_status(self) -> None:
        self.link.publish_json(self.link.topics.status, self.status_message(), qos=1, retain=True)

    def camera_status_message(self, worker: CameraWorker) -> dict[str, Any]:
        return {**worker.status_message(), **self.privacy.status_fields(worker.camera.id)}

    def publish_camera_status(self, worker: CameraWorker) -> None:
        self.link.publish_json(
            self.link.topics.camera_status(worker.camera.id),
            self.camera_status_message(worker),
            qos=1,
            retain=True,
        )

    def _camera_changed(self, camera: str) -> None:
        worker = self.workers.get(camera)
        if worker is not None:
            self.publish_camera_status(worker)

    def _on_ptz_move(self, camera: str, action: str, preset: int | None) -> None:
        worker = self.workers.get(camera)
        if worker is not None:
            worker.analytics.commanded(PtzMove(camera, action, time.time(), preset))

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
        try:
            image = worker.snapshot_image(frame)
        except SnapshotWithheld as withheld:
            raise CommandError(protocol.ErrorCode.FORBIDDEN, withheld.reason) from None
        jpeg = encode_jpeg(
            image, self.config.events.snapshot_quality, self.config.events.snapshot_width
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
            "cameras": [self.camera_status_message(w) for w in self.workers.values()],
        }


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    camera: str
    operator: str | None = None


class StatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
