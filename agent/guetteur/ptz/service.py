"""The ``ptz`` command: validate → arbitrate → drive the camera → audit → reply.

Also owns the drivers' lifecycle (opened on first use, shared per serial bus, closed on exit) and
a ticker thread that sends dead-man stops and idle home returns the arbiter asks for. A driver
that fails or hangs never takes the agent down: every call is bounded by the camera's
``ptz.timeout_s`` and every error becomes a coded reply and a log line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from guetteur.config import CameraConfig, PtzConfig
from guetteur.errors import GuetteurError
from guetteur.ptz.arbiter import Arbiter, Command, Limits, Refusal, validate
from guetteur.ptz.base import DriverError, PtzDriver
from guetteur.ptz.onvif import OnvifPtzDriver
from guetteur.ptz.pelco_d import PelcoDDriver
from guetteur.ptz.serial_line import SerialLine
from guetteur.ptz.visca import ViscaDriver, ViscaUdpLine
from guetteur.uplink.audit import AuditTrail
from guetteur.uplink.commands import CommandContext, CommandDispatcher, CommandError
from guetteur.uplink.protocol import PTZ_CONTINUOUS, PTZ_FIELD_HELP, ErrorCode, PtzAction

log = logging.getLogger(__name__)

VERB = "ptz"


class PtzCommand(BaseModel):
    """Payload of ``cmd/ptz``: an action of the protocol's PTZ vocabulary and its values
    (``protocol.PTZ_FIELD_HELP``); the arbiter checks them against the protocol's domains."""

    model_config = ConfigDict(extra="forbid")

    camera: str = Field(description="Camera id")
    action: PtzAction = Field(description=PTZ_FIELD_HELP["action"])
    pan: float | None = Field(None, allow_inf_nan=False, description=PTZ_FIELD_HELP["pan"])
    tilt: float | None = Field(None, allow_inf_nan=False, description=PTZ_FIELD_HELP["tilt"])
    zoom: float | None = Field(None, allow_inf_nan=False, description=PTZ_FIELD_HELP["zoom"])
    speed: float | None = Field(None, allow_inf_nan=False, description=PTZ_FIELD_HELP["speed"])
    preset: int | None = Field(None, description=PTZ_FIELD_HELP["preset"])
    # Ignored in signed commands (the signature names the operator; the role gives priority):
    operator: str | None = Field(
        None, min_length=1, max_length=64, description="Who steers (unsigned, in-process only)"
    )
    priority: int = Field(
        0, ge=0, le=100, description="Higher pre-empts a lower holder (unsigned, in-process only)"
    )


_Lines = dict[str, SerialLine]


def make_driver(ptz: PtzConfig, lines: _Lines | None = None) -> PtzDriver:
    """The driver a camera's ``ptz`` config asks for. Domes sharing one RS-485/RS-232 bus share
    one SerialLine (``lines``, keyed by port), so their frames never interleave."""
    if ptz.protocol == "onvif":
        if not ptz.url:
            raise DriverError(ErrorCode.NOT_SUPPORTED, "ptz.url (ONVIF device service) is not set")
        password = ptz.password.get_secret_value() if ptz.password is not None else None
        return OnvifPtzDriver(ptz.url, ptz.username, password, ptz.timeout_s, ptz.presets)
    if ptz.protocol == "visca-ip":
        if not ptz.url:
            raise DriverError(
                ErrorCode.NOT_SUPPORTED, "ptz.url (HOST:PORT for VISCA over IP) is not set"
            )
        host, _, port = ptz.url.rpartition(":")
        if not host or not port.isdigit():
            host, port = ptz.url, "52381"
        return ViscaDriver(ViscaUdpLine(host, int(port), ptz.timeout_s), ptz.address)
    if not ptz.serial_port:
        raise DriverError(ErrorCode.NOT_SUPPORTED, f"ptz.serial_port is not set for {ptz.protocol}")
    pool = lines if lines is not None else {}
    line = pool.get(ptz.serial_port)
    if line is None:
        line = pool[ptz.serial_port] = SerialLine(ptz.serial_port, ptz.baudrate, ptz.timeout_s)
    if ptz.protocol == "pelco-d":
        return PelcoDDriver(line, ptz.address, ptz.home_preset)
    return ViscaDriver(line, ptz.address)


class PtzService:
    def __init__(
        self,
        cameras: list[CameraConfig],
        audit: AuditTrail,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = 0.05,
    ) -> None:
        self._cameras = {c.id: c for c in cameras if c.enabled}
        self._audit = audit
        self._arbiter = Arbiter(clock)
        self._tick_s = tick_s
        self._locks: dict[str, threading.Lock] = {}
        self._drivers: dict[str, PtzDriver] = {}
        self._lines: _Lines = {}
        self._lines_lock = threading.Lock()
        for cam in self._cameras.values():
            if cam.ptz is not None:
                self._arbiter.add_camera(cam.id, Limits.from_config(cam.ptz))
                self._locks[cam.id] = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._move_listeners: list[Callable[[str, str, int | None], None]] = []

    def add_move_listener(self, listener: Callable[[str, str, int | None], None]) -> None:
        """``listener(camera, action, preset)`` after each command a camera accepted (operator
        moves, dead-man stops, idle returns home): PTZ-aware analysis pauses on it. It runs on
        the commanding thread and must return at once; its errors are logged, never raised."""
        self._move_listeners.append(listener)

    # --- wiring --------------------------------------------------------------------------------
    def register(self, dispatcher: CommandDispatcher) -> None:
        # audited=False: handle() writes its own, richer record for every outcome
        dispatcher.register(VERB, PtzCommand, self.handle, audited=False)

    def start(self) -> None:
        if self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._run_ticker, name="ptz-ticker", daemon=True)
            self._ticker.start()

    def close(self) -> None:
        """Stop the ticker, stop every camera still in a continuous move, close the drivers."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5)
            self._ticker = None
        for camera, lock in self._locks.items():
            with lock:
                if self._arbiter.moving(camera):
                    self._send_due(camera, "stop", "shutdown")
                driver = self._drivers.pop(camera, None)
            if driver is not None:
                try:
                    driver.close()
                except Exception:
                    log.exception("closing the PTZ driver of camera %s failed", camera)

    # --- commands --------------------------------------------------------------------------------
    def handle(self, ctx: CommandContext, cmd: PtzCommand) -> dict[str, Any]:
        started = time.monotonic()
        operator = ctx.operator or ctx.client_id  # signed, when the gateway verifies
        priority = ctx.priority if ctx.priority is not None else cmd.priority
        record: dict[str, Any] = {
            "camera": cmd.camera,
            "operator": operator,
            "role": ctx.role,
            "client_id": ctx.client_id,
            "priority": priority,
            "request_id": ctx.request_id,
            "pan": cmd.pan,
            "tilt": cmd.tilt,
            "zoom": cmd.zoom,
            "speed": cmd.speed,
            "preset": cmd.preset,
        }
        try:
            reply = self._execute(cmd, operator, priority, record)
        except GuetteurError as exc:  # refused: the dispatcher replies with its code
            record.update(outcome=exc.code, message=exc.message)
            self._record(f"ptz.{cmd.action}", record, started)
            log.warning("ptz %s on %s refused: %s", cmd.action, cmd.camera, exc.message)
            raise
        record["outcome"] = "ok"
        self._record(f"ptz.{cmd.action}", record, started)
        return reply

    def _record(self, action: str, record: dict[str, Any], started: float) -> None:
        record["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        try:
            self._audit.record(action, **record)
        except Exception:  # an audit failure must not turn an executed move into an error
            log.exception("could not hand the audit record of %s to the publisher", action)

    def _execute(
        self, cmd: PtzCommand, operator: str, priority: int, record: dict[str, Any]
    ) -> dict[str, Any]:
        cam = self._cameras.get(cmd.camera)
        if cam is None:
            known = ", ".join(sorted(self._cameras)) or "none"
            raise CommandError(
                ErrorCode.UNKNOWN_CAMERA, f"unknown camera {cmd.camera!r}; known: {known}"
            )
        if cam.ptz is None:
            raise CommandError(
                ErrorCode.NOT_SUPPORTED, f"camera {cam.id} is not a PTZ camera (no ptz config)"
            )
        record["protocol"] = cam.ptz.protocol
        lock = self._locks[cam.id]
        try:
            command = validate(
                cmd.action,
                self._arbiter.limits(cam.id),
                pan=cmd.pan,
                tilt=cmd.tilt,
                zoom=cmd.zoom,
                speed=cmd.speed,
                preset=cmd.preset,
            )
        except Refusal as exc:
            raise CommandError(exc.code, f"camera {cam.id}: {exc.message}") from None
        if command.clamped:
            record["clamped"] = list(command.clamped)
        if not lock.acquire(timeout=cam.ptz.timeout_s):
            raise CommandError(
                ErrorCode.TIMEOUT, f"camera {cam.id} is busy with a command that has not finished"
            )
        try:
            grant = self._arbiter.acquire(cam.id, operator, priority, command)
            if grant.preempted:
                record["preempted"] = grant.preempted
                log.info("ptz camera %s: %s takes over from %s", cam.id, operator, grant.preempted)
            self._drive(cam.id, cam.ptz, command)
        finally:
            lock.release()
        reply: dict[str, Any] = {
            "camera": cam.id,
            "action": command.action,
            "operator": operator,
            "priority": priority,
            "held_for_s": cam.ptz.hold_s,
        }
        if command.action in PTZ_CONTINUOUS:
            reply["dead_man_s"] = cam.ptz.dead_man_s
            reply["velocity"] = {"pan": command.pan, "tilt": command.tilt, "zoom": command.zoom}
        if command.clamped:
            reply["clamped"] = list(command.clamped)
        if grant.preempted:
            reply["preempted"] = grant.preempted
        return reply

    def _driver(self, camera: str, ptz: PtzConfig) -> PtzDriver:
        driver = self._drivers.get(camera)
        if driver is None:
            with self._lines_lock:  # cameras on one bus must end up with the same line
                driver = self._drivers[camera] = make_driver(ptz, self._lines)
        return driver

    def _drive(self, camera: str, ptz: PtzConfig, c: Command) -> None:
        try:
            driver = self._driver(camera, ptz)
            if c.action in PTZ_CONTINUOUS:
                driver.move(c.pan or 0.0, c.tilt or 0.0, c.zoom or 0.0)
            elif c.action == "stop":
                driver.stop()
            elif c.action == "goto_preset":
                driver.goto_preset(c.preset or 0, c.speed)
            elif c.action == "set_preset":
                driver.set_preset(c.preset or 0)
            elif c.action == "home":
                driver.home()
            elif c.action == "absolute":
                driver.absolute(c.pan, c.tilt, c.zoom, c.speed)
            elif c.action == "relative":
                driver.relative(c.pan or 0.0, c.tilt or 0.0, c.zoom or 0.0, c.speed)
        except DriverError as exc:
            raise CommandError(exc.code, f"camera {camera}: {exc.message}") from None
        except Exception as exc:
            log.exception("ptz driver of camera %s failed on %s", camera, c.action)
            raise CommandError(
                ErrorCode.DEVICE_ERROR,
                f"camera {camera}: driver failed: {type(exc).__name__}: {exc}",
            ) from None
        preset = c.preset if c.action == "goto_preset" else ptz.home_preset
        for listener in self._move_listeners:
            try:
                listener(camera, c.action, preset)
            except Exception:
                log.exception("a PTZ move listener failed for camera %s", camera)

    # --- dead-man and idle return ------------------------------------------------------------------
    def _run_ticker(self) -> None:
        while not self._stop.wait(self._tick_s):
            self.tick()

    def tick(self) -> None:
        """Send what the arbiter says is due (dead-man stops, idle home returns). A camera busy
        with a command is looked at again on the next tick."""
        for camera, lock in self._locks.items():
            if not lock.acquire(blocking=False):
                continue
            try:
                due = self._arbiter.due(camera)
                if due is not None:
                    self._send_due(camera, due, "dead-man" if due == "stop" else "idle")
            except Exception:
                log.exception("ptz ticker failed on camera %s", camera)
            finally:
                lock.release()

    def _send_due(self, camera: str, due: str, reason: str) -> None:
        """Called with the camera's lock held."""
        cam = self._cameras[camera]
        assert cam.ptz is not None
        owner = self._arbiter.owner(camera)
        started = time.monotonic()
        record: dict[str, Any] = {
            "camera": camera,
            "operator": owner[0] if owner else None,
            "reason": reason,
            "protocol": cam.ptz.protocol,
        }
        try:
            if due == "stop":
                self._drive(camera, cam.ptz, Command("stop"))
                log.info("ptz camera %s: %s stop sent (move not renewed)", camera, reason)
            else:
                preset = cam.ptz.home_preset or 0
                self._drive(camera, cam.ptz, Command("goto_preset", preset=preset))
                record["preset"] = preset
                log.info("ptz camera %s: idle, returned to home preset %d", camera, preset)
            record["outcome"] = "ok"
        except CommandError as exc:
            record.update(outcome=exc.code, message=exc.message)
            log.error(
                "ptz camera %s: %s %s could not be sent: %s; will not retry until the next move",
                camera,
                reason,
                due,
                exc.message,
            )
        self._record("ptz.auto_stop" if due == "stop" else "ptz.auto_home", record, started)
