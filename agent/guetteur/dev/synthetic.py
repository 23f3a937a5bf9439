"""Synthetic street scenes with scripted motion and known ground truth.

Pure NumPy (plus OpenCV drawing): ``scenario(name).render(i)`` returns frame ``i`` (BGR uint8),
identical on every call, so a ``test:`` camera, the tests and the benchmarks all see the same
pictures and can be scored against ``Scenario.truth`` (event intervals in seconds).

Scenes share one textured, street-like background (building facade with windows, pavement, road
with lane markings) and per-frame sensor noise. Each scene adds the trouble it is named after:

- ``walk``: a person-sized figure walks across (truth: one event, ``start``..``end``).
- ``car``: a car-sized object crosses quickly (truth: one event).
- ``lighting``: a global brightness step (auto-exposure / street lights), then back (no event).
- ``night``: dark picture with strong sensor noise (no event).
- ``foliage``: a swaying tree inside ``ignore_masks`` (no event unless ``walker=1``).
- ``quiet``: nothing happens (no event).
- ``parked``: a car parked since the first frame drives off at ``start`` (truth: one event,
  ``start``..``end``; what it leaves behind in the background model must not become a ghost).
- ``headlights``: at night, the light of a car passing outside the picture sweeps over the
  street (no event: nothing moves in the scene).

Scenes of a real city (drawn by ``guetteur.dev.city``):

- ``crowd``: dozens of walkers (``crowd`` of them) cross both ways from ``start`` to ``end``
  (truth: one event);
- ``queue``: a dense queue of ``queue`` cars crawls along the road from ``start`` to ``end``
  (truth: one event);
- ``rain``, ``snow``: precipitation over the quiet street (no event);
- ``insects``: infrared night, moths fluttering in front of the lens (no event);
- ``ir_switch``: dusk in colour, then at ``ir_at`` the camera switches to infrared (no event);
- ``pan``: a PTZ dome pans by ``pan`` of the frame width between ``pan_start`` and
  ``pan_end`` and stays (no event; with ``walker=1`` the walker comes after it settles).

Every scene accepts ``walker=1`` (adds the walk of ``walk``, with ``start``/``end``), ``seed``
and the city parameters (``crowd``, ``queue``, ``rain``, ``snow``, ``insects``, ``ir_at``,
``pan``...), so troubles combine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from guetteur.dev import city

SCENARIO_NAMES: tuple[str, ...] = (
    "walk",
    "car",
    "lighting",
    "night",
    "foliage",
    "quiet",
    "parked",
    "headlights",
    "crowd",
    "queue",
    "rain",
    "snow",
    "insects",
    "ir_switch",
    "pan",
)

NormPolygon = list[tuple[float, float]]
_Rect = tuple[int, int, int, int]
# Width of the walker's rectangle (legs swinging) relative to its body width.
_WALKER_EXTENT = 1.5

# Defaults per scene; any key here may be overridden through ``scenario(name, **params)``.
_DEFAULTS: dict[str, dict[str, float]] = {
    "walk": {"start": 5.0, "end": 8.0, "duration": 15.0, "walker": 1.0},
    "car": {"start": 4.0, "end": 5.5, "duration": 12.0, "car": 1.0},
    "lighting": {"step_at": 5.0, "gain": 1.5, "ramp": 0.4, "back_at": 10.0, "duration": 15.0},
    "night": {"duration": 15.0},
    "foliage": {"duration": 15.0, "sway": 1.0},
    "quiet": {"duration": 15.0},
    "parked": {"start": 6.0, "end": 8.0, "duration": 18.0, "car": 1.0, "parked": 1.0},
    "headlights": {"start": 5.0, "end": 7.0, "duration": 15.0, "beam": 1.0},
    "crowd": {"start": 3.0, "end": 17.0, "duration": 20.0, "crowd": 60.0},
    "queue": {"start": 3.0, "end": 16.0, "duration": 19.0, "queue": 10.0},
    "rain": {"duration": 15.0, "rain": 1.0},
    "snow": {"duration": 15.0, "snow": 1.0},
    "insects": {"duration": 15.0, "insects": 4.0, "ir_at": 0.0},
    "ir_switch": {"duration": 20.0, "ir_at": 8.0},
    "pan": {
        "duration": 16.0,
        "pan_start": 4.0,
        "pan_end": 6.0,
        "pan": 0.5,
        "start": 9.0,
        "end": 12.0,
    },
}
_COMMON: dict[str, float] = {
    "seed": 0.0,
    "walker": 0.0,
    "start": 5.0,
    "end": 8.0,
    "noise": -1.0,  # sensor noise sigma in grey levels; -1 = the scene's own
    "brightness": -1.0,  # global gain of the scene; -1 = the scene's own
    "crowd": 0.0,  # walkers in the crowd
    "crowd_size": 1.0,  # their size (2: a festival crowd right in front of the camera)
    "queue": 0.0,  # cars in the queue
    "rain": 0.0,  # rain density (1 = heavy)
    "snow": 0.0,  # snow density
    "insects": 0.0,  # moths at the lens
    "ir_at": -1.0,  # time the camera switches to infrared; -1 never, 0 from the start
    "pan": 0.0,  # pan of a PTZ dome, fraction of the frame width
    "pan_start": 4.0,
    "pan_end": 6.0,
}

_NIGHT_SCENES = ("night", "headlights")
# Brightness and noise of an infrared picture (the illuminator lights the near street), and of
# the dusk before the switch.
_IR_GAIN, _IR_NOISE = 0.55, 7.0
_DUSK_GAIN, _DUSK_NOISE = 0.3, 3.0

# The tree of the foliage scene, normalised (x0, y0, x1, y1), and its ignore-mask polygon.
_TREE = (0.67, 0.03, 0.98, 0.58)
_TREE_MASK: NormPolygon = [(0.66, 0.02), (0.99, 0.02), (0.99, 0.60), (0.66, 0.60)]


@dataclass
class Scenario:
    """One scripted scene. ``render(i)`` is deterministic; ``truth`` lists event intervals (s)."""

    name: str
    width: int
    height: int
    fps: float
    duration_s: float
    truth: list[tuple[float, float]]
    ignore_masks: list[NormPolygon] = field(default_factory=list)
    params: dict[str, float] = field(default_factory=dict)
    _background: np.ndarray | None = field(default=None, repr=False)

    @property
    def frame_count(self) -> int:
        return round(self.duration_s * self.fps)

    def time_of(self, index: int) -> float:
        return index / self.fps

    def background(self) -> np.ndarray:
        """The static scene (float32 BGR, before lighting and noise), built once."""
        if self._background is None:
            # A panning dome sees a wider street than one frame.
            wide = self.width + round(self.params.get("pan", 0.0) * self.width)
            self._background = _street_background(wide, self.height, int(self.params["seed"]))
        return self._background

    def render(self, index: int) -> np.ndarray:
        """Frame ``index`` as BGR uint8 (height x width x 3)."""
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        t = self.time_of(index)
        p = self.params
        seed = int(p["seed"])
        x0 = city.pan_offset(t, p["pan_start"], p["pan_end"], p["pan"], self.width)
        img = self.background()[:, x0 : x0 + self.width].copy()
        if p["crowd"] > 0:
            args = (seed, int(p["crowd"]), p["start"], p["end"], p["crowd_size"])
            city.draw_crowd(img, t, *args)
        if p["queue"] > 0:
            city.draw_queue(img, t, seed, int(p["queue"]), p["start"], p["end"])
        if self.name == "foliage" or p.get("sway", 0.0) > 0:
            _draw_tree(img, t, int(p["seed"]), p.get("sway", 1.0))
        if p.get("car", 0.0) > 0:
            _draw_car(img, t, p["start"], p["end"], p.get("parked", 0.0) > 0)
        if p["walker"] > 0:
            _draw_walker(img, t, p["start"], p["end"])
        gain = self._gain(t)
        if gain != 1.0:
            img *= gain
        if p.get("beam", 0.0) > 0:
            _light_beam(img, t, p["start"], p["end"], p["beam"])
        if p["rain"] > 0:
            city.draw_rain(img, index, seed, p["rain"])
        if p["snow"] > 0:
            city.draw_snow(img, t, seed, p["snow"])
        if self._infrared(t):
            if p["insects"] > 0:
                city.draw_insects(img, t, index, seed, int(p["insects"]))
            city.infrared(img)
        sigma = self._noise_sigma(t)
        rng = np.random.default_rng((int(p["seed"]) + 1, index))
        noise = rng.standard_normal((self.height, self.width, 1), dtype=np.float32)
        # Mostly luminance noise (shared by the channels), a little chroma noise.
        img += noise * sigma
        if sigma > 4 and not self._infrared(t):  # an infrared picture has no colour at all
            img += rng.standard_normal(img.shape, dtype=np.float32) * (sigma * 0.3)
        np.clip(img, 0, 255, out=img)
        return img.astype(np.uint8)

    def object_boxes(self, index: int) -> list[tuple[float, float, float, float]]:
        """Truth boxes of the moving objects in frame ``index``: normalised (x, y, w, h), clipped
        to the frame (empty when nothing scripted moves)."""
        t = self.time_of(index)
        p = self.params
        rects: list[_Rect | None] = []
        if p.get("car", 0.0) > 0:
            parked = p.get("parked", 0.0) > 0
            rects.append(_car_rect(t, p["start"], p["end"], self.width, self.height, parked))
        if p["walker"] > 0:
            rects.append(_walker_rect(t, p["start"], p["end"], self.width, self.height))
        if p["crowd"] > 0:
            args = (self.width, self.height, t, int(p["seed"]), int(p["crowd"]))
            extent = (p["start"], p["end"], p["crowd_size"])
            rects += [r[:4] for r in city.crowd_rects(*args, *extent)]
        if p["queue"] > 0:
            args = (self.width, self.height, t, int(p["seed"]), int(p["queue"]))
            rects += [r[:4] for r in city.queue_rects(*args, p["start"], p["end"])]
        boxes = []
        for rect in rects:
            if rect is None:
                continue
            x0, y0 = max(0, rect[0]), max(0, rect[1])
            x1, y1 = min(self.width, rect[2]), min(self.height, rect[3])
            if x1 > x0 and y1 > y0:
                boxes.append(
                    (
                        x0 / self.width,
                        y0 / self.height,
                        (x1 - x0) / self.width,
                        (y1 - y0) / self.height,
                    )
                )
        return boxes

    def _infrared(self, t: float) -> bool:
        return 0.0 <= self.params["ir_at"] <= t

    def _noise_sigma(self, t: float = 0.0) -> float:
        if self.params["noise"] >= 0:
            return self.params["noise"]
        if self.params["ir_at"] >= 0:
            return _IR_NOISE if self._infrared(t) else _DUSK_NOISE
        return 9.0 if self.name in _NIGHT_SCENES else 2.0

    def _gain(self, t: float) -> float:
        p = self.params
        if p["brightness"] >= 0:
            base = p["brightness"]
        elif p["ir_at"] >= 0:
            base = _IR_GAIN if self._infrared(t) else _DUSK_GAIN
        else:
            base = 0.22 if self.name in _NIGHT_SCENES else 1.0
        if self.name != "lighting":
            return base
        gain = p["gain"]
        ramp = max(p["ramp"], 1e-6)
        step = min(max((t - p["step_at"]) / ramp, 0.0), 1.0)
        back = min(max((t - p["back_at"]) / ramp, 0.0), 1.0) if p["back_at"] > 0 else 0.0
        return base * (1.0 + (gain - 1.0) * (step - back))


def scenario(
    name: str, width: int = 640, height: int = 360, fps: float = 25.0, **params: float
) -> Scenario:
    """Build a scenario by name (one of ``SCENARIO_NAMES``) with optional numeric parameters."""
    if name not in _DEFAULTS:
        raise ValueError(f"unknown scenario {name!r}: expected one of {', '.join(SCENARIO_NAMES)}")
    if width < 64 or height < 64 or width % 2 or height % 2:
        raise ValueError(f"frame size must be even and at least 64x64, got {width}x{height}")
    if not 0 < fps <= 120:
        raise ValueError(f"fps must be in (0, 120], got {fps}")
    merged: dict[str, float] = {**_COMMON, **_DEFAULTS[name]}
    unknown = sorted(set(params) - set(merged) - {"duration"})
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for scenario {name!r}: "
            f"expected {', '.join(sorted(merged))}"
        )
    for key, value in params.items():
        merged[key] = float(value)
    duration = merged.pop("duration")
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    truth: list[tuple[float, float]] = []
    moving = ("walker", "car", "crowd", "queue")
    if any(merged.get(key, 0.0) > 0 for key in moving):
        if not 0 <= merged["start"] < merged["end"] <= duration:
            raise ValueError(
                f"need 0 <= start < end <= duration, got start={merged['start']} "
                f"end={merged['end']} duration={duration}"
            )
        truth.append((merged["start"], merged["end"]))
    masks = [list(_TREE_MASK)] if name == "foliage" else []
    return Scenario(
        name=name,
        width=width,
        height=height,
        fps=fps,
        duration_s=duration,
        truth=truth,
        ignore_masks=masks,
        params=merged,
    )


def truth_document(sc: Scenario) -> dict[str, object]:
    return {
        "scenario": sc.name,
        "duration_s": sc.duration_s,
        "events": [{"start": s, "end": e} for s, e in sc.truth],
        "ignore_masks": [[list(pt) for pt in poly] for poly in sc.ignore_masks],
        **({"ptz": True} if sc.params.get("pan", 0.0) > 0 else {}),  # shot by a dome
    }


def write_truth(sc: Scenario, path: str | Path) -> None:
    """Write ``{"events": [{"start": .., "end": ..}], "ignore_masks": [...]}`` as JSON."""
    Path(path).write_text(json.dumps(truth_document(sc), indent=2) + "\n")


def write_clip(sc: Scenario, path: str | Path, gop_s: float = 2.0, crf: int = 23) -> None:
    """Encode the whole scenario as an H.264 MP4 (libx264, yuv420p, GOP ``gop_s``, no B-frames,
    like a camera)."""
    import av

    fps_fraction = Fraction(sc.fps).limit_denominator(1001)
    gop = max(1, round(gop_s * sc.fps))
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps_fraction)
        stream.width = sc.width
        stream.height = sc.height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 0
        stream.codec_context.time_base = 1 / fps_fraction
        stream.options = {
            "crf": str(crf),
            "preset": "veryfast",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0",
        }
        for i in range(sc.frame_count):
            frame = av.VideoFrame.from_ndarray(sc.render(i), format="bgr24")
            frame.pts = i
            frame.time_base = 1 / fps_fraction
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


# ---------------------------------------------------------------- drawing helpers


def _street_background(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    horizon = int(height * 0.55)
    kerb = int(height * 0.68)
    # Facade: warm stone colour with large-scale blotches.
    img[:horizon] = (150, 160, 175)
    # Windows: a grid of dark rectangles with frames.
    win_w, win_h = max(6, width // 24), max(8, height // 12)
    for row in range(3):
        y = int(height * 0.06) + row * int(height * 0.16)
        for col in range(14):
            x = int(width * 0.03) + col * int(width * 0.07)
            if x + win_w >= width:
                break
            shade = float(rng.uniform(40, 90))
            cv2.rectangle(img, (x - 2, y - 2), (x + win_w + 2, y + win_h + 2), (200, 200, 205), -1)
            cv2.rectangle(
                img, (x, y), (x + win_w, y + win_h), (shade, shade * 0.9, shade * 0.8), -1
            )
    # Shop front door band.
    cv2.rectangle(img, (0, horizon - int(height * 0.06)), (width, horizon), (90, 100, 110), -1)
    # Pavement and road.
    img[horizon:kerb] = (165, 165, 160)
    img[kerb:] = (95, 95, 95)
    cv2.line(img, (0, kerb), (width, kerb), (200, 200, 200), 2)
    dash = max(8, width // 16)
    for x in range(0, width, dash * 2):
        y = int(height * 0.84)
        cv2.line(img, (x, y), (x + dash, y), (220, 220, 220), 2)
    # Texture: blurred noise at two scales (stone, asphalt grain).
    coarse_cells = rng.standard_normal((height // 8 + 1, width // 8 + 1)).astype(np.float32)
    coarse = cv2.resize(coarse_cells, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (3, 3), 0)
    img += (coarse * 10 + fine * 6)[:, :, None]
    # A vertical illumination gradient like a real street.
    img *= np.linspace(1.05, 0.9, height, dtype=np.float32)[:, None, None]
    return img


def _walker_rect(t: float, start: float, end: float, width: int, height: int) -> _Rect | None:
    """Pixel rectangle (x0, y0, x1, y1) around the walker (swinging legs included) at time t;
    it is just off the left edge at ``start`` and has left on the right at ``end``."""
    if not start <= t < end:
        return None
    extent_w = int(max(4, int(width * 0.045)) * _WALKER_EXTENT)
    body_h = int(height * 0.30)
    frac = (t - start) / (end - start)
    x = int(-extent_w - 1 + frac * (width + extent_w + 1))
    y = int(height * 0.72) - body_h
    return x, y, x + extent_w, y + body_h


def _car_rect(
    t: float, start: float, end: float, width: int, height: int, parked: bool = False
) -> _Rect | None:
    """Pixel rectangle of the car body (without roof) at time t. It crosses right to left
    between start and end; a ``parked`` car stands still until ``start`` then drives off to the
    left, accelerating, and is gone at ``end``."""
    car_w, car_h = int(width * 0.22), int(height * 0.12)
    y = int(height * 0.78)
    if parked:
        x_park = int(width * 0.40)
        if t >= end:
            return None
        frac = max(0.0, (t - start) / (end - start))
        x = int(x_park - frac * frac * (x_park + car_w + 1))
        return x, y, x + car_w, y + car_h
    if not start <= t < end:
        return None
    frac = (t - start) / (end - start)
    x = int(width - frac * (width + car_w))
    return x, y, x + car_w, y + car_h


def _light_beam(img: np.ndarray, t: float, start: float, end: float, strength: float) -> None:
    """Headlights of a car passing outside the picture: a soft pool of light sweeping over the
    facade and the pavement (the scene is lit, nothing moves in it)."""
    if not start <= t < end:
        return
    height, width = img.shape[:2]
    frac = (t - start) / (end - start)
    cx = (-0.2 + 1.4 * frac) * width
    cy = 0.55 * height
    xs = ((np.arange(width, dtype=np.float32) - cx) / (0.12 * width)) ** 2
    ys = ((np.arange(height, dtype=np.float32) - cy) / (0.25 * height)) ** 2
    pool = np.exp(-0.5 * (ys[:, None] + xs[None, :]))
    img *= (1.0 + 3.0 * strength * pool)[:, :, None]


def _draw_walker(img: np.ndarray, t: float, start: float, end: float) -> None:
    height, width = img.shape[:2]
    rect = _walker_rect(t, start, end, width, height)
    if rect is None:
        return
    x, y, x1, y1 = rect
    body_w = max(4, int(width * 0.045))
    head_r = max(2, body_w // 2)
    cx = (x + x1) // 2
    left = cx - body_w // 2
    cv2.circle(img, (cx, y + head_r), head_r, (120, 150, 190), -1)  # face
    torso_top, torso_bottom = y + 2 * head_r, y + int((y1 - y) * 0.6)
    cv2.rectangle(img, (left, torso_top), (left + body_w, torso_bottom), (60, 40, 140), -1)
    swing = int(body_w * 0.4 * math.sin(t * 2 * math.pi * 1.8))  # legs swing with the gait
    leg_w = max(2, body_w // 4)
    cv2.line(img, (cx, torso_bottom), (cx + swing, y1 - leg_w), (40, 35, 30), leg_w)
    cv2.line(img, (cx, torso_bottom), (cx - swing, y1 - leg_w), (40, 35, 30), leg_w)


def _draw_car(img: np.ndarray, t: float, start: float, end: float, parked: bool) -> None:
    height, width = img.shape[:2]
    rect = _car_rect(t, start, end, width, height, parked)
    if rect is None:
        return
    x, y, x1, y1 = rect
    car_w, car_h = x1 - x, y1 - y
    cv2.rectangle(img, (x, y), (x1, y1), (40, 40, 170), -1)  # body
    roof = (x + car_w // 4, y - car_h // 2, x + 3 * car_w // 4, y)
    cv2.rectangle(img, roof[:2], roof[2:], (40, 40, 150), -1)
    cv2.rectangle(img, (roof[0] + 3, roof[1] + 3), (roof[2] - 3, roof[3]), (170, 150, 120), -1)
    wheel_r = max(2, car_h // 3)
    for wx in (x + car_w // 5, x + 4 * car_w // 5):
        cv2.circle(img, (wx, y + car_h), wheel_r, (20, 20, 20), -1)


def _draw_tree(img: np.ndarray, t: float, seed: int, sway: float) -> None:
    """A tree whose leaf clusters sway by a few pixels (wind), inside the foliage ignore mask."""
    height, width = img.shape[:2]
    x0, y0, x1, y1 = (
        int(_TREE[0] * width),
        int(_TREE[1] * height),
        int(_TREE[2] * width),
        int(_TREE[3] * height),
    )
    trunk_x = (x0 + x1) // 2
    cv2.rectangle(img, (trunk_x - 4, (y0 + y1) // 2), (trunk_x + 4, y1), (30, 50, 70), -1)
    rng = np.random.default_rng(seed + 1000)
    n = 60
    rs = rng.uniform(0.02, 0.045, n) * width
    amp = 0.012 * width * sway
    # Leaf centres far enough inside the crown that swaying leaves stay within _TREE (and so
    # inside the ignore mask).
    reach = 0.045 * width + 1.5 * amp + 1
    xs = rng.uniform(x0 + reach, max(x0 + reach + 1, x1 - reach), n)
    ys = rng.uniform(y0 + reach, max(y0 + reach + 1, (y0 + 2 * y1) / 3), n)
    phases = rng.uniform(0, 2 * math.pi, n)
    greens = rng.uniform(70, 150, n)
    for i in range(n):
        # Gusts: two frequencies so the motion is irregular, stronger at the top of the crown.
        height_factor = 1.0 - (ys[i] - y0) / max(1.0, y1 - y0)
        dx = amp * height_factor * (math.sin(t * 2.1 + phases[i]) + 0.5 * math.sin(t * 5.3))
        dy = 0.3 * amp * math.sin(t * 3.0 + phases[i])
        g = float(greens[i])
        cv2.circle(
            img,
            (int(xs[i] + dx), int(ys[i] + dy)),
            int(rs[i]),
            (g * 0.35, g, g * 0.45),
            -1,
        )
