"""Who may steer which camera, and what the camera must do when nobody does: a pure core.

No I/O and no threads: every method takes the time from an injectable clock, so tests drive it
with a fake one. The PTZ service asks it before each command and polls ``due`` from a ticker:

- one controlling operator per camera; they keep control for ``hold_s`` after their last
  command; another operator is refused (``locked``) unless their priority is strictly higher,
  in which case they pre-empt the holder;
- a continuous move (``move``/``zoom``) must be renewed within ``dead_man_s``, or ``due``
  answers ``stop`` (the centre's link may have dropped mid-move);
- after ``idle_return_s`` without commands, ``due`` answers ``home`` when a home preset is set;
- ``validate`` checks values against the protocol domain (refused: ``out_of_range``) and clamps
  them to the ranges the camera config declares (reported back as ``clamped``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from guetteur.config import PtzConfig
from guetteur.errors import GuetteurError
from guetteur.uplink.protocol import (
    PTZ_ABSOLUTE,
    PTZ_CONTINUOUS,
    PTZ_FIRST_PRESET,
    PTZ_PRESET_ACTIONS,
    PTZ_RELATIVE,
    PTZ_SPEED,
    PTZ_VELOCITY,
    ErrorCode,
    PtzAction,
)

Due = Literal["stop", "home"]


class Refusal(GuetteurError):
    """A command the arbiter will not let through: a protocol.ErrorCode and a sentence."""


@dataclass(frozen=True)
class Limits:
    max_speed: float = 1.0
    presets: int = 64
    pan_range: tuple[float, float] = (-1.0, 1.0)
    tilt_range: tuple[float, float] = (-1.0, 1.0)
    zoom_range: tuple[float, float] = (0.0, 1.0)
    home_preset: int | None = None
    idle_return_s: float = 300.0
    dead_man_s: float = 1.0
    hold_s: float = 30.0

    @classmethod
    def from_config(cls, cfg: PtzConfig) -> Limits:
        return cls(
            max_speed=cfg.max_speed,
            presets=cfg.presets,
            pan_range=cfg.pan_range,
            tilt_range=cfg.tilt_range,
            zoom_range=cfg.zoom_range,
            home_preset=cfg.home_preset,
            idle_return_s=cfg.idle_return_s,
            dead_man_s=cfg.dead_man_s,
            hold_s=cfg.hold_s,
        )


@dataclass(frozen=True)
class Command:
    """A validated command: velocities in -max_speed..max_speed, positions within the camera's
    configured ranges, a preset within 1..presets. ``clamped`` names the fields that were cut."""

    action: PtzAction
    pan: float | None = None
    tilt: float | None = None
    zoom: float | None = None
    speed: float | None = None
    preset: int | None = None
    clamped: tuple[str, ...] = ()


def _check(name: str, value: float | None, low: float, high: float) -> None:
    if value is None:
        return
    if not math.isfinite(value) or not low <= value <= high:
        raise Refusal(
            ErrorCode.OUT_OF_RANGE, f"{name} {value:g} is out of range (expected {low:g}..{high:g})"
        )


def _clamp(
    name: str, value: float | None, low: float, high: float, clamped: list[str]
) -> float | None:
    if value is None:
        return None
    cut = min(high, max(low, value))
    if cut != value:
        clamped.append(name)
    return cut


def validate(
    action: PtzAction,
    limits: Limits,
    pan: float | None = None,
    tilt: float | None = None,
    zoom: float | None = None,
    speed: float | None = None,
    preset: int | None = None,
) -> Command:
    """Check one request against the protocol domain and the camera's limits (pure)."""
    clamped: list[str] = []
    _check("speed", speed, *PTZ_SPEED)
    top = limits.max_speed
    speed = _clamp("speed", speed, 0.0, top, clamped)
    if action in PTZ_CONTINUOUS:
        if action == "zoom":
            pan = tilt = None
            if zoom is None:
                raise Refusal(ErrorCode.BAD_REQUEST, "zoom needs a zoom velocity (-1..1)")
        elif pan is None and tilt is None and zoom is None:
            raise Refusal(ErrorCode.BAD_REQUEST, "move needs pan, tilt or zoom velocities (-1..1)")
        for name, value in (("pan", pan), ("tilt", tilt), ("zoom", zoom)):
            _check(name, value, *PTZ_VELOCITY)
        scale = 1.0 if speed is None else speed
        velocities = []
        for name, value in (("pan", pan), ("tilt", tilt), ("zoom", zoom)):
            velocities.append(_clamp(name, (value or 0.0) * scale, -top, top, clamped))
        pan, tilt, zoom = velocities
        if pan == tilt == zoom == 0.0:
            return Command("stop", clamped=tuple(clamped))
        return Command(action, pan, tilt, zoom, speed, clamped=tuple(clamped))
    if action in PTZ_PRESET_ACTIONS:
        if preset is None:
            raise Refusal(ErrorCode.BAD_REQUEST, f"{action} needs a preset number")
        if not PTZ_FIRST_PRESET <= preset <= limits.presets:
            raise Refusal(
                ErrorCode.OUT_OF_RANGE,
                f"preset {preset} is out of range "
                f"(this camera has presets {PTZ_FIRST_PRESET}..{limits.presets})",
            )
        return Command(action, speed=speed, preset=preset, clamped=tuple(clamped))
    if action == "absolute":
        if pan is None and tilt is None and zoom is None:
            raise Refusal(ErrorCode.BAD_REQUEST, "absolute needs pan, tilt or zoom positions")
        _check("pan", pan, *PTZ_ABSOLUTE["pan"])
        _check("tilt", tilt, *PTZ_ABSOLUTE["tilt"])
        _check("zoom", zoom, *PTZ_ABSOLUTE["zoom"])
        pan = _clamp("pan", pan, *limits.pan_range, clamped)
        tilt = _clamp("tilt", tilt, *limits.tilt_range, clamped)
        zoom = _clamp("zoom", zoom, *limits.zoom_range, clamped)
        return Command(action, pan, tilt, zoom, speed, clamped=tuple(clamped))
    if action == "relative":
        if pan is None and tilt is None and zoom is None:
            raise Refusal(ErrorCode.BAD_REQUEST, "relative needs pan, tilt or zoom translations")
        _check("pan", pan, *PTZ_RELATIVE["pan"])
        _check("tilt", tilt, *PTZ_RELATIVE["tilt"])
        _check("zoom", zoom, *PTZ_RELATIVE["zoom"])
        return Command(action, pan or 0.0, tilt or 0.0, zoom or 0.0, speed, clamped=tuple(clamped))
    return Command(action, speed=speed, clamped=tuple(clamped))  # stop, home


@dataclass(frozen=True)
class Grant:
    operator: str
    priority: int
    held_until: float  # clock time
    preempted: str | None = None  # the operator who lost control to this command
    dead_man_at: float | None = None  # clock time a continuous move stops unless renewed


@dataclass
class _State:
    limits: Limits
    owner: str | None = None
    priority: int = 0
    held_until: float = 0.0
    moving: bool = False
    move_deadline: float = 0.0
    last_command: float = 0.0
    at_home: bool = True  # nothing to return from before the first command


class Arbiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cameras: dict[str, _State] = {}

    def add_camera(self, camera: str, limits: Limits) -> None:
        self._cameras[camera] = _State(limits=limits)

    def limits(self, camera: str) -> Limits:
        return self._cameras[camera].limits

    def owner(self, camera: str) -> tuple[str, int, float] | None:
        """(operator, priority, held_until) of the camera's current controller, if any."""
        st = self._cameras[camera]
        if st.owner is None or self._clock() >= st.held_until:
            return None
        return st.owner, st.priority, st.held_until

    def moving(self, camera: str) -> bool:
        return self._cameras[camera].moving

    def acquire(self, camera: str, operator: str, priority: int, command: Command) -> Grant:
        """Let ``operator`` send ``command`` to ``camera`` now, or raise Refusal(locked)."""
        st = self._cameras[camera]
        now = self._clock()
        preempted = None
        if st.owner is not None and st.owner != operator and now < st.held_until:
            if priority <= st.priority:
                raise Refusal(
                    ErrorCode.LOCKED,
                    f"camera {camera} is controlled by {st.owner} (priority {st.priority}) for "
                    f"{st.held_until - now:.0f} more s; a higher priority is needed to take over",
                )
            preempted = st.owner
        st.owner, st.priority = operator, priority
        st.held_until = now + st.limits.hold_s
        st.last_command = now
        dead_man_at = None
        if command.action in PTZ_CONTINUOUS:
            st.moving = True
            st.move_deadline = dead_man_at = now + st.limits.dead_man_s
        else:
            # stop, presets, home and positioned moves all end a continuous move on the camera
            st.moving = False
        if command.action == "home" or (
            command.action == "goto_preset" and command.preset == st.limits.home_preset
        ):
            st.at_home = True
        elif command.action != "set_preset":
            st.at_home = False
        return Grant(operator, priority, st.held_until, preempted, dead_man_at)

    def due(self, camera: str) -> Due | None:
        """What the camera must do now without being told: a dead-man ``stop``, an idle
        ``home`` return, or nothing. Marks it done (the caller sends it)."""
        st = self._cameras[camera]
        now = self._clock()
        if st.moving and now >= st.move_deadline:
            st.moving = False
            return "stop"
        lim = st.limits
        if (
            lim.home_preset is not None
            and not st.moving
            and not st.at_home
            and now - st.last_command >= lim.idle_return_s
        ):
            st.at_home = True
            st.owner = None
            return "home"
        return None
