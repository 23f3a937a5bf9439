"""Rules that make alerts: zones with label filters and dwell time, lines crossed in a direction,
too many objects at once, each within time windows and at a PTZ preset.

Pure: ``RuleEngine.update(wallclock, objects, preset)`` takes one analysed frame's objects
(detections with their labels, or motion boxes without one), follows them from frame to frame
(nearest centre, greedy), and says which rules hold at this frame. The event tracker makes an
event that matched a rule an ``alert`` carrying the rule's name; others stay ``detection``.

An object's position is the middle of its box's bottom edge: where it stands on the ground, which
is what zones and lines drawn on the street mean. Line directions are seen walking the line from
its first point to its second: ``left`` counts objects that cross from its right side to its
left side, ``right`` the other way, ``any`` both. Time windows are in the site's local time
(``timezone``); a window from 22:00 to 06:00 wraps midnight and belongs to the day it opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from guetteur.config import RuleConfig
from guetteur.config.analytics import DAYS
from guetteur.media.types import Box

# Tracking: a box is the same object as one of the last frame when its centre is within this
# many of its sizes; an object unseen for _LOST_S is forgotten.
_MATCH_SIZES = 1.5
_LOST_S = 1.0


@dataclass(frozen=True)
class SceneObject:
    """One object of a frame: a detection (with its label) or a motion box (label None)."""

    box: Box
    label: str | None = None

    @property
    def foot(self) -> tuple[float, float]:
        return (self.box.x + self.box.w / 2, self.box.y + self.box.h)


@dataclass(eq=False)
class _Track:
    track_id: int
    obj: SceneObject
    last_seen: float
    previous_foot: tuple[float, float] | None = None
    inside_since: dict[str, float] = field(default_factory=dict)  # rule -> time it entered


@dataclass(frozen=True)
class RuleHits:
    """What the rules saw at one frame."""

    matched: list[str]  # rules that hold now (in rule order)
    crossed: list[tuple[str, int]] = field(default_factory=list)  # (line rule, object id)
    inside: dict[str, bool] = field(default_factory=dict)  # zone/count rule -> objects inside


def point_in_polygon(point: tuple[float, float], polygon: Sequence[Sequence[float]]) -> bool:
    """Even-odd rule (ray casting)."""
    x, y = point
    inside = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i][0], polygon[i][1]
        x2, y2 = polygon[(i + 1) % n][0], polygon[(i + 1) % n][1]
        if (y1 > y) != (y2 > y):
            at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < at:
                inside = not inside
    return inside


def _side(a: Sequence[float], b: Sequence[float], p: tuple[float, float]) -> float:
    """> 0 on the right of a→b, < 0 on its left, in picture coordinates (y grows downwards)."""
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def crossing(
    line: Sequence[Sequence[float]], before: tuple[float, float], after: tuple[float, float]
) -> str | None:
    """'left' or 'right' when the step before→after crosses the segment (module docstring for
    the sides), else None."""
    a, b = line[0], line[1]
    s0, s1 = _side(a, b, before), _side(a, b, after)
    if s0 == 0 or s1 == 0 or (s0 > 0) == (s1 > 0):
        return None
    # The step must cross the segment itself, not the line's extension.
    t0 = _side(before, after, (a[0], a[1]))
    t1 = _side(before, after, (b[0], b[1]))
    if (t0 > 0) == (t1 > 0) and t0 != 0 and t1 != 0:
        return None
    return "left" if s1 < 0 else "right"


def in_windows(rule: RuleConfig, wallclock: float, tz: ZoneInfo) -> bool:
    if not rule.when:
        return True
    local = datetime.fromtimestamp(wallclock, tz)
    minute = local.hour * 60 + local.minute
    day = DAYS[local.weekday()]
    return any(d == day and a <= minute < b for window in rule.when for a, b, d in window.minutes())


class RuleEngine:
    """The rules of one camera, with the objects it follows from frame to frame."""

    def __init__(self, rules: Sequence[RuleConfig], timezone: str = "UTC") -> None:
        self.rules = list(rules)
        self._tz = ZoneInfo(timezone)
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._count_since: dict[str, float] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def reset(self) -> None:
        """Forget the objects (the view changed)."""
        self._tracks = []
        self._count_since = {}

    def update(
        self, wallclock: float, objects: Sequence[SceneObject], preset: str | None = None
    ) -> RuleHits:
        tracks = self._follow(wallclock, objects)
        matched: list[str] = []
        crossed: list[tuple[str, int]] = []
        inside: dict[str, bool] = {}
        for rule in self.rules:
            armed = (rule.preset is None or rule.preset == preset) and in_windows(
                rule, wallclock, self._tz
            )
            wanted = [t for t in tracks if not rule.labels or t.obj.label in rule.labels]
            if rule.kind == "line":
                assert rule.line is not None
                for t in wanted:
                    if t.previous_foot is None:
                        continue
                    side = crossing(rule.line, t.previous_foot, t.obj.foot)
                    if side is not None and rule.direction in ("any", side) and armed:
                        crossed.append((rule.name, t.track_id))
                if armed and any(r == rule.name for r, _ in crossed):
                    matched.append(rule.name)
                continue
            in_zone = [
                t for t in wanted if rule.zone is None or point_in_polygon(t.obj.foot, rule.zone)
            ]
            for t in tracks:
                if t in in_zone:
                    t.inside_since.setdefault(rule.name, wallclock)
                else:
                    t.inside_since.pop(rule.name, None)
            if rule.kind == "zone":
                dwelt = [
                    t for t in in_zone if wallclock - t.inside_since[rule.name] >= rule.min_dwell_s
                ]
                inside[rule.name] = armed and bool(dwelt)
            else:  # count
                if len(in_zone) > rule.count_above:
                    since = self._count_since.setdefault(rule.name, wallclock)
                else:
                    self._count_since.pop(rule.name, None)
                    since = None
                inside[rule.name] = (
                    armed and since is not None and wallclock - since >= rule.min_duration_s
                )
            if inside[rule.name]:
                matched.append(rule.name)
        return RuleHits(matched, crossed, inside)

    def _follow(self, wallclock: float, objects: Sequence[SceneObject]) -> list[_Track]:
        """Match this frame's objects to the tracks of the last frames (nearest centre first)."""
        live = [t for t in self._tracks if wallclock - t.last_seen <= _LOST_S]
        pairs: list[tuple[float, int, int]] = []
        for i, obj in enumerate(objects):
            cx, cy = obj.box.centre
            for j, t in enumerate(live):
                if obj.label is not None and t.obj.label is not None and obj.label != t.obj.label:
                    continue
                tx, ty = t.obj.box.centre
                reach = _MATCH_SIZES * max(obj.box.w, obj.box.h, t.obj.box.w, t.obj.box.h)
                d = float(np.hypot(cx - tx, cy - ty))
                if d <= reach:
                    pairs.append((d, i, j))
        pairs.sort()
        used_obj: set[int] = set()
        used_track: set[int] = set()
        current: list[_Track] = []
        for _d, i, j in pairs:
            if i in used_obj or j in used_track:
                continue
            used_obj.add(i)
            used_track.add(j)
            t = live[j]
            t.previous_foot = t.obj.foot
            t.obj = (
                objects[i]
                if objects[i].label or not t.obj.label
                else SceneObject(objects[i].box, t.obj.label)
            )
            t.last_seen = wallclock
            current.append(t)
        for i, obj in enumerate(objects):
            if i not in used_obj:
                track = _Track(self._next_id, obj, wallclock)
                self._next_id += 1
                current.append(track)
        # Tracks unseen this frame stay a moment (a missed detection), without a position step.
        kept = [t for t in live if t not in current]
        for t in kept:
            t.previous_foot = None
        self._tracks = current + kept
        return current
