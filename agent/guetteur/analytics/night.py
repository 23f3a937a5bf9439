"""Day or night: when the picture turns infrared (grey, noisier) or dark, the camera's night
settings apply; when colour and light come back, the day's — with hysteresis, no restart.

Pure: ``NightMode.observe(t, chroma, level)`` takes the frame's stream time, its colour level
(``AnalyticFrame.chroma``: mean |U-128| + |V-128| of the decoded chroma planes, about 0-2 for an
infrared picture) and its median grey level, and says when to switch. Night is seen when the
picture is grey (``chroma_below``) or dark (``dark_below``) and must last ``enter_after_s``;
day when it is colour (``chroma_above``) and light (``light_above``) again for
``leave_after_s``. In between (the hysteresis band) the mode holds. A source that cannot tell
colour (None) decides by the light alone.
"""

from __future__ import annotations

from typing import Any, Literal

from guetteur.config import DetectFilter, MotionConfig, NightConfig

Mode = Literal["day", "night"]


def night_motion(day: MotionConfig, night: NightConfig) -> MotionConfig:
    """The day's motion settings with the night's overrides applied."""
    changes: dict[str, Any] = {k: v for k, v in night.motion.model_dump().items() if v is not None}
    return day.model_copy(update=changes)


def night_detect(day: DetectFilter | None, night: NightConfig) -> DetectFilter | None:
    return night.detect if night.detect is not None else day


class NightMode:
    """Hysteresis between day and night settings for one camera."""

    def __init__(self, config: NightConfig) -> None:
        self.config = config
        self.mode: Mode = "day"
        self._candidate_since: float | None = None  # when the other mode was first seen

    def observe(self, t: float, chroma: float | None, level: float) -> Mode | None:
        """The new mode when it switches at this frame, else None."""
        cfg = self.config
        if not cfg.enabled:
            return None
        if self.mode == "day":
            grey = chroma is not None and chroma < cfg.chroma_below
            other = grey or level < cfg.dark_below
            hold = cfg.enter_after_s
        else:
            colour = chroma is None or chroma > cfg.chroma_above
            other = colour and level > cfg.light_above
            hold = cfg.leave_after_s
        if not other:
            self._candidate_since = None
            return None
        if self._candidate_since is None or t < self._candidate_since:
            self._candidate_since = t
        if t - self._candidate_since < hold:
            return None
        self.mode = "night" if self.mode == "day" else "day"
        self._candidate_since = None
        return self.mode
