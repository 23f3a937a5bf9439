"""Where the detector looks and what it keeps: regions planned around motion, the same object seen
by two regions kept once, and each camera's object filter (labels, score, size, zones).

Motion finds where something changed; the detector says what it is. On a Pi there are no cycles
to spare, so the detector sees crops around the motion boxes (merged, padded, squared, resized to
the model's input) — or the whole frame when motion covers most of it — and never a frame without
motion. Pure geometry on normalised ``Box`` values and pixel ``Region`` rectangles: no model, no
I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from guetteur.config import DetectFilter
from guetteur.media.types import Box

_MAX_REGIONS = 4  # more separate motion areas than this: one whole-frame pass is cheaper
_DUPLICATE_IOU = 0.5  # same label, overlapping this much across crops: one object


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object, its box normalised to the whole frame."""

    label: str
    score: float
    box: Box

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(self.score, 3), "box": self.box.as_list()}


@dataclass(frozen=True, slots=True)
class Region:
    """A rectangle of the frame in pixels, given to the model as one input."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h

    def overlaps(self, other: Region) -> bool:
        return (
            self.x < other.x + other.w
            and other.x < self.x + self.w
            and self.y < other.y + other.h
            and other.y < self.y + self.h
        )


def _square(cx: float, cy: float, side: float, frame_w: int, frame_h: int) -> Region:
    """A square of ``side`` centred on (cx, cy), shifted (not cut) to stay inside the frame; only
    a side longer than the frame itself is cut to the frame."""
    w = min(round(side), frame_w)
    h = min(round(side), frame_h)
    x = int(min(max(round(cx - w / 2), 0), frame_w - w))
    y = int(min(max(round(cy - h / 2), 0), frame_h - h))
    return Region(x, y, w, h)


def plan_regions(
    frame_w: int,
    frame_h: int,
    motion_boxes: Sequence[Box] | None,
    model_side: int,
    padding: float = 0.25,
    full_frame_ratio: float = 0.5,
) -> list[Region]:
    """Where to run the model: padded squares around the motion boxes, merged while they overlap;
    the whole frame when they cover more than ``full_frame_ratio`` of it (or are too many);
    the whole frame when ``motion_boxes`` is None; nothing when it is empty.

    A square is never smaller than half the model's input side (or the frame's short side):
    blowing a few pixels up to the model's size only makes the model see things."""
    full = [Region(0, 0, frame_w, frame_h)]
    if motion_boxes is None:
        return full
    min_side = min(model_side / 2, frame_w, frame_h)
    squares: list[Region] = []
    for b in motion_boxes:
        bw, bh = b.w * frame_w, b.h * frame_h
        if bw <= 0 or bh <= 0:
            continue
        side = max(max(bw, bh) * (1 + 2 * padding), min_side)
        cx, cy = (b.x + b.w / 2) * frame_w, (b.y + b.h / 2) * frame_h
        squares.append(_square(cx, cy, side, frame_w, frame_h))
    merged = True
    while merged:
        merged = False
        for i in range(len(squares)):
            for j in range(i + 1, len(squares)):
                a, c = squares[i], squares[j]
                if not a.overlaps(c):
                    continue
                x0, y0 = min(a.x, c.x), min(a.y, c.y)
                x1, y1 = max(a.x + a.w, c.x + c.w), max(a.y + a.h, c.y + c.h)
                union = _square(
                    (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0), frame_w, frame_h
                )
                squares = [s for k, s in enumerate(squares) if k not in (i, j)] + [union]
                merged = True
                break
            if merged:
                break
    if not squares:
        return []
    covered = sum(s.area for s in squares) / (frame_w * frame_h)
    if covered > full_frame_ratio or len(squares) > _MAX_REGIONS:
        return full
    return squares


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def suppress_duplicates(
    dets: Iterable[Detection], threshold: float = _DUPLICATE_IOU
) -> list[Detection]:
    """Keep the best of same-label detections that overlap (one object seen by two crops)."""
    kept: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if all(k.label != d.label or iou(k.box, d.box) <= threshold for k in kept):
            kept.append(d)
    return kept


# -- per-camera filters -------------------------------------------------------------------------


def point_in_polygon(x: float, y: float, polygon: Sequence[tuple[float, float]]) -> bool:
    """Even-odd rule: count crossings of a ray from (x, y) towards +x."""
    inside = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def filter_detections(dets: Iterable[Detection], flt: DetectFilter) -> list[Detection]:
    """A camera's object filter: wanted labels (an empty list keeps all), minimum score, minimum
    box area (fraction of the frame), and zones (the box centre must lie in one of them)."""
    wanted = set(flt.labels)
    out = []
    for d in dets:
        if wanted and d.label not in wanted:
            continue
        if d.score < flt.min_score or d.box.area < flt.min_area:
            continue
        if flt.zones and not any(point_in_polygon(*d.box.centre, z) for z in flt.zones):
            continue
        out.append(d)
    return out
