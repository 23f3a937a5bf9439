"""The harder troubles of a real city, drawn into ``guetteur.dev.synthetic`` scenes.

Pure drawing helpers, deterministic for a seed and a time: every function takes the float32 BGR
frame being rendered, the scene time and its parameters, and draws in place.

- ``crowd``: dozens of walkers of varied size (near and far), clothing and speed, crossing both
  ways, so that from ``start`` to ``end`` the pavement is never empty (a market, a festival);
- ``queue``: a dense queue of cars crawling along the road, bumper to bumper, from ``start`` to
  ``end``;
- ``rain``: streaks falling faster than one analysed frame can follow, new every frame;
- ``snow``: small far flakes and large, out-of-focus flakes near the lens, drifting down;
- ``insects``: out-of-focus bright blobs fluttering in front of an infrared-lit lens;
- ``infrared``: the camera's switch to infrared at ``ir_at``: colour gone, brighter (the
  illuminator), the noise floor up;
- ``pan``: the view of a PTZ dome panning over a wider street between ``pan_start`` and
  ``pan_end``, still before and after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Crowd: walkers' foot line spans this band of the frame height (far to near), their height
# grows from _FAR_HEIGHT to _NEAR_HEIGHT of the frame with it.
_FOOT_BAND = (0.62, 0.97)
_FAR_HEIGHT, _NEAR_HEIGHT = 0.14, 0.42
_CROSSING_S = (3.0, 7.0)  # seconds a walker takes to cross the frame


@dataclass(frozen=True)
class _Walker:
    t0: float  # time it enters
    duration: float  # time to cross
    leftwards: bool
    depth: float  # 0 far .. 1 near
    coat: tuple[float, float, float]
    trousers: tuple[float, float, float]
    phase: float


def _walkers(seed: int, count: int, start: float, end: float) -> list[_Walker]:
    """``count`` walkers whose crossings tile [start, end): each enters at an even share of the
    interval (jittered) and the last ones leave by ``end``."""
    rng = np.random.default_rng(seed + 2000)
    out: list[_Walker] = []
    span = max(0.1, end - start)
    for i in range(count):
        duration = float(rng.uniform(*_CROSSING_S))
        duration = min(duration, span)
        latest = end - duration
        t0 = start + (latest - start) * (i + float(rng.uniform(0.0, 1.0))) / count
        out.append(
            _Walker(
                t0=min(max(start, t0), latest),
                duration=duration,
                leftwards=bool(rng.uniform() < 0.5),
                depth=float(rng.uniform()),
                coat=tuple(float(c) for c in rng.uniform(20, 230, 3)),  # type: ignore[arg-type]
                trousers=tuple(float(c) for c in rng.uniform(15, 120, 3)),  # type: ignore[arg-type]
                phase=float(rng.uniform(0, 2 * math.pi)),
            )
        )
    return out


def crowd_rects(
    width: int,
    height: int,
    t: float,
    seed: int,
    count: int,
    start: float,
    end: float,
    size: float = 1.0,
) -> list[tuple[int, int, int, int, _Walker]]:
    """Pixel rectangles (x0, y0, x1, y1) of the crowd's walkers at time t, far ones first;
    ``size`` scales them (2: a festival crowd right in front of the camera)."""
    rects = []
    for w in _walkers(seed, count, start, end):
        if not w.t0 <= t < w.t0 + w.duration:
            continue
        body_h = int(size * height * (_FAR_HEIGHT + (_NEAR_HEIGHT - _FAR_HEIGHT) * w.depth))
        body_w = max(3, int(body_h * 0.28))
        foot = int(height * (_FOOT_BAND[0] + (_FOOT_BAND[1] - _FOOT_BAND[0]) * w.depth))
        frac = (t - w.t0) / w.duration
        if w.leftwards:
            frac = 1.0 - frac
        x = int(-body_w - 1 + frac * (width + body_w + 1))
        rects.append((x, foot - body_h, x + body_w, foot, w))
    rects.sort(key=lambda r: r[4].depth)
    return rects


def draw_crowd(
    img: np.ndarray, t: float, seed: int, count: int, start: float, end: float, size: float = 1.0
) -> None:
    height, width = img.shape[:2]
    for x0, y0, x1, y1, w in crowd_rects(width, height, t, seed, count, start, end, size):
        bw = x1 - x0
        head_r = max(1, bw // 3)
        cx = (x0 + x1) // 2
        cv2.circle(img, (cx, y0 + head_r), head_r, (110, 140, 185), -1)
        torso_bottom = y0 + int((y1 - y0) * 0.58)
        cv2.rectangle(img, (x0, y0 + 2 * head_r), (x1, torso_bottom), w.coat, -1)
        swing = int(bw * 0.45 * math.sin(t * 2 * math.pi * 1.8 + w.phase))
        leg = max(1, bw // 3)
        cv2.line(img, (cx, torso_bottom), (cx + swing, y1 - leg), w.trousers, leg)
        cv2.line(img, (cx, torso_bottom), (cx - swing, y1 - leg), w.trousers, leg)


def queue_rects(
    width: int, height: int, t: float, seed: int, count: int, start: float, end: float
) -> list[tuple[int, int, int, int, tuple[float, float, float]]]:
    """Rectangles of the queue's cars at time t: ``count`` cars in a line, 15 % of a car apart,
    crawling right to left so that the first enters at ``start`` and the last leaves at
    ``end``."""
    rng = np.random.default_rng(seed + 3000)
    car_w, car_h = int(width * 0.2), int(height * 0.11)
    gap = int(car_w * 0.15)
    y = int(height * 0.80)
    length = count * (car_w + gap)
    travel = width + length
    if not start <= t < end:
        return []
    head = width - (t - start) / (end - start) * travel  # x of the first car's front
    rects = []
    for i in range(count):
        colour = tuple(float(c) for c in rng.uniform(25, 220, 3))
        x = int(head + i * (car_w + gap))
        if x + car_w < 0 or x > width:
            continue
        rects.append((x, y, x + car_w, y + car_h, colour))
    return rects  # type: ignore[return-value]


def draw_queue(img: np.ndarray, t: float, seed: int, count: int, start: float, end: float) -> None:
    height, width = img.shape[:2]
    for x0, y0, x1, y1, colour in queue_rects(width, height, t, seed, count, start, end):
        w, h = x1 - x0, y1 - y0
        cv2.rectangle(img, (x0, y0), (x1, y1), colour, -1)
        cv2.rectangle(img, (x0 + w // 4, y0 - h // 2), (x0 + 3 * w // 4, y0), colour, -1)
        cv2.rectangle(
            img, (x0 + w // 4 + 2, y0 - h // 2 + 2), (x0 + 3 * w // 4 - 2, y0), (170, 150, 120), -1
        )
        r = max(2, h // 3)
        for wx in (x0 + w // 5, x0 + 4 * w // 5):
            cv2.circle(img, (wx, y1), r, (20, 20, 20), -1)


def draw_rain(img: np.ndarray, index: int, seed: int, density: float) -> None:
    """Rain streaks of frame ``index``: each frame its own (a drop crosses the picture in less
    than an analysed frame's interval), slanted, a little brighter than the scene."""
    height, width = img.shape[:2]
    rng = np.random.default_rng((seed + 4000, index))
    n = int(density * width * height / 400)
    xs = rng.uniform(0, width, n)
    ys = rng.uniform(-0.1 * height, height, n)
    lengths = rng.uniform(0.04, 0.10, n) * height
    layer = np.zeros((height, width), np.float32)
    for x, y, ln in zip(xs, ys, lengths, strict=True):
        cv2.line(layer, (int(x), int(y)), (int(x - 0.15 * ln), int(y + ln)), 1.0, 1)
    img += (layer * 45.0)[:, :, None]


def _flakes(seed: int, n: int, near: bool) -> np.ndarray:
    rng = np.random.default_rng(seed + (5001 if near else 5000))
    # columns: x0, y0 (normalised), fall speed (heights/s), sway amplitude, phase, radius
    speed = rng.uniform(0.25, 0.45, n) if near else rng.uniform(0.05, 0.12, n)
    radius = rng.uniform(0.03, 0.06, n) if near else rng.uniform(0.003, 0.006, n)
    return np.stack(
        [
            rng.uniform(0, 1, n),
            rng.uniform(0, 1, n),
            speed,
            rng.uniform(0.005, 0.02, n),
            rng.uniform(0, 2 * math.pi, n),
            radius,
        ],
        axis=1,
    )


def draw_snow(img: np.ndarray, t: float, seed: int, density: float) -> None:
    """Far flakes (a pixel or two, slow) and a few near the lens (large, blurred, faster)."""
    height, width = img.shape[:2]
    far_n = int(density * width * height / 300)
    near_n = max(1, int(density * 6))
    for near, n in ((False, far_n), (True, near_n)):
        layer = np.zeros((height, width), np.float32)
        for x0, y0, speed, amp, phase, r in _flakes(seed, n, near):
            y = ((y0 + speed * t) % 1.1 - 0.05) * height
            x = (x0 + amp * math.sin(1.3 * t + phase)) * width
            cv2.circle(layer, (int(x), int(y)), max(1, int(r * width)), 1.0, -1)
        if near:
            layer = np.asarray(cv2.GaussianBlur(layer, (0, 0), max(1.0, 0.02 * width)), np.float32)
            img += (layer * 70.0)[:, :, None]
        else:
            img += (layer * 60.0)[:, :, None]


def draw_insects(img: np.ndarray, t: float, index: int, seed: int, count: int) -> None:
    """Moths in front of an infrared illuminator: big, bright, out-of-focus blobs that flutter
    (jump a good part of their size between analysed frames) and come and go."""
    height, width = img.shape[:2]
    rng = np.random.default_rng(seed + 6000)
    layer = np.zeros((height, width), np.float32)
    for k in range(count):
        # each insect is in view for bursts of ~0.3-0.8 s, then away
        period = float(rng.uniform(1.5, 3.0))
        shown = float(rng.uniform(0.3, 0.8))
        offset = float(rng.uniform(0, period))
        cx0, cy0 = float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.15, 0.85))
        r = float(rng.uniform(0.04, 0.08)) * width
        if (t + offset) % period > shown:
            continue
        jitter = np.random.default_rng((seed + 6100 + k, index)).uniform(-0.12, 0.12, 2)
        x = (cx0 + 0.1 * math.sin(7.0 * t + k) + jitter[0]) * width
        y = (cy0 + 0.1 * math.cos(5.0 * t + k) + jitter[1]) * height
        cv2.circle(layer, (int(x), int(y)), int(r), 1.0, -1)
    if layer.any():
        layer = np.asarray(cv2.GaussianBlur(layer, (0, 0), 0.03 * width), np.float32)
        img += (layer * 120.0)[:, :, None]


def infrared(img: np.ndarray) -> None:
    """The picture as an infrared-lit camera sees it: grey (no colour), in place."""
    grey = img @ np.array([0.114, 0.587, 0.299], np.float32)
    img[:] = grey[:, :, None]


def pan_offset(t: float, pan_start: float, pan_end: float, pan: float, width: int) -> int:
    """Left edge, in pixels of the wide panorama, of the view at time t: 0 before the pan,
    ``pan`` x width after it, eased in between (a dome accelerates and brakes)."""
    if t <= pan_start:
        return 0
    frac = min(1.0, (t - pan_start) / max(1e-6, pan_end - pan_start))
    eased = 0.5 - 0.5 * math.cos(math.pi * frac)
    return round(eased * pan * width)
