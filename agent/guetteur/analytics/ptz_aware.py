"""PTZ-aware analysis: while a dome moves, motion is not motion.

Pure apart from a lock (moves are reported from the PTZ service's threads, frames come from the
analysis thread); an injectable clock is not needed: times are the frames' and the commands'
wall clocks (UTC epoch seconds).

States:

- ``watching``: analysis as usual, at a known preset (``preset``) or not;
- ``moving``: a move was commanded through the PTZ service (``commanded``), or the picture itself
  changed as a whole (a view change seen by the motion detector: a tour, a guard tour, someone
  at the camera's own web page) — motion is not reported, events do not start, the preset is
  unknown;
- ``settling``: the picture has held still for ``settle_s``; the background is relearnt
  (``relearn_frames``) before motion counts again.

A move command that never shows on the picture ends the pause after ``unseen_move_s`` (a camera
that ignored it, a preset it was already at). A camera that reports a position it cannot reach
is logged and treated like an unannounced move: paused until the picture holds still.

Back at rest, the preset is the one commanded (``goto_preset``, ``home``); after an unannounced
move, the view is compared with the coarse picture kept of each preset the last time the dome
rested there (a tour that returns to a preset is recognised).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from guetteur.config import PtzPauseConfig

log = logging.getLogger(__name__)

State = Literal["watching", "moving", "settling"]
# Actions after which the dome rests at a preset, and those that leave it anywhere.
_TO_PRESET = ("goto_preset", "home")
_MOVES = ("move", "zoom", "goto_preset", "home", "absolute", "relative", "stop")
# Coarse picture kept per preset (pixels wide) and the correlation that recognises it.
_THUMB_WIDTH = 40
_RECOGNISE_NCC = 0.85


@dataclass(frozen=True)
class PtzMove:
    """A move the PTZ service carried out (its listener hook hands these on)."""

    camera: str
    action: str  # the protocol's PTZ action: move, stop, goto_preset, home, absolute, relative...
    wallclock: float
    preset: int | None = None  # goto_preset's number, or the home preset


@dataclass(frozen=True)
class Gate:
    """What analysis may do with this frame."""

    paused: bool  # motion must not count (moving or relearning)
    relearn: bool  # forget the background now (the view changed for good)
    preset: str | None  # the preset the camera is at, None when unknown or away
    state: State
    preset_changed: bool = False


def _thumb(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    size = (_THUMB_WIDTH, max(4, round(h * _THUMB_WIDTH / w)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean()
    norm = float(np.sqrt((small * small).sum()))
    return small / norm if norm > 0 else small


class PtzAwareness:
    """Pauses analysis of one camera while its view moves (module docstring)."""

    def __init__(
        self,
        camera: str,
        config: PtzPauseConfig,
        presets: dict[int, str],
        home_preset: int | None = None,
    ) -> None:
        self.camera = camera
        self.config = config
        self._names = dict(presets)  # number -> name
        self._home = home_preset
        self._lock = threading.Lock()
        self.state: State = "watching"
        self.preset: str | None = None
        self._target: str | None = None  # where a commanded move ends
        self._moved_at: float | None = None  # last sign of movement (command or view change)
        self._seen_moving = False
        self._still_since: float | None = None
        self._relearn_left = 0
        self._thumbs: dict[str, np.ndarray] = {}
        self._pending: list[PtzMove] = []

    # -- from the PTZ service (any thread) --------------------------------------------------

    def commanded(self, move: PtzMove) -> None:
        """A move the PTZ service sent to the camera."""
        if move.action not in _MOVES:
            return
        with self._lock:
            self._pending.append(move)

    def position_reported(
        self,
        wallclock: float,
        pan: float,
        tilt: float,
        zoom: float,
        ranges: tuple[tuple[float, float], tuple[float, float], tuple[float, float]],
    ) -> bool:
        """A position the camera reported; False (logged, analysis paused until the picture
        holds still) when it is outside what the camera can reach."""
        ok = all(
            lo - 1e-6 <= v <= hi + 1e-6
            for v, (lo, hi) in zip((pan, tilt, zoom), ranges, strict=True)
        )
        if not ok:
            log.warning(
                "camera %s reports PTZ position pan %.3f tilt %.3f zoom %.3f, outside what it "
                "can reach (%s); motion analysis stays paused until the picture holds still",
                self.camera,
                pan,
                tilt,
                zoom,
                ranges,
            )
            self.commanded(PtzMove(self.camera, "absolute", wallclock))
        return ok

    # -- from the analysis thread -----------------------------------------------------------

    def update(self, wallclock: float, view_changed: bool, image: np.ndarray) -> Gate:
        """Advance with one analysed frame: ``view_changed`` is the motion detector's verdict
        that the whole view moved (or changed) at this frame."""
        with self._lock:
            pending, self._pending = self._pending, []
        cfg = self.config
        old_preset = self.preset
        relearn = False
        for move in pending:
            self._start_moving(move.wallclock, commanded=True)
            number = move.preset if move.action == "goto_preset" else None
            if move.action == "home":
                number = move.preset if move.preset is not None else self._home
            self._target = self._names.get(number) if number is not None else None
            if move.action not in _TO_PRESET:
                self._target = None
        if view_changed:
            if self.state != "moving":
                log.info(
                    "camera %s: the whole view changed; motion analysis paused until it holds "
                    "still, then the background is relearnt",
                    self.camera,
                )
                self._target = None
            self._start_moving(wallclock, commanded=False)
            self._seen_moving = True
            self._still_since = None
        if self.state == "moving":
            if not view_changed and self._still_since is None:
                self._still_since = wallclock
            # Still for settle_s after a move seen on the picture; a command whose move never
            # shows (a preset the dome was at, a camera that ignored it) waits unseen_move_s.
            hold = cfg.settle_s if self._seen_moving else max(cfg.settle_s, cfg.unseen_move_s)
            since = self._still_since if self._seen_moving else self._moved_at
            still = (
                self._still_since is not None
                and since is not None
                and wallclock - self._still_since >= cfg.settle_s
                and wallclock - since >= hold
            )
            if still:
                self.state = "settling"
                self._relearn_left = cfg.relearn_frames
                relearn = True
                self.preset = self._target if self._target is not None else self._recognise(image)
        elif self.state == "settling":
            self._relearn_left -= 1
            if self._relearn_left <= 0:
                self.state = "watching"
                if self.preset is not None:
                    self._thumbs[self.preset] = _thumb(image)
        paused = self.state != "watching"
        return Gate(paused, relearn, self.preset, self.state, self.preset != old_preset)

    def set_preset(self, name: str | None) -> None:
        """Where the camera is at start-up, when known (config or the driver)."""
        self.preset = name

    def _start_moving(self, wallclock: float, commanded: bool) -> None:
        if self.state != "moving":
            self._seen_moving = False
            self._still_since = None
        self.state = "moving"
        self.preset = None
        self._moved_at = wallclock
        if commanded:
            self._still_since = None

    def _recognise(self, image: np.ndarray) -> str | None:
        if not self._thumbs:
            return None
        here = _thumb(image)
        best, score = None, _RECOGNISE_NCC
        for name, thumb in self._thumbs.items():
            if thumb.shape == here.shape:
                ncc = float((thumb * here).sum())
                if ncc > score:
                    best, score = name, ncc
        return best
