"""Moving blobs of one frame: extraction, the light test and the rain/snow/insect filter.

Pure; the motion detector (``guetteur.analytics.motion``) calls these on its changed-pixel mask.

- ``find_blobs``: outlines of the dilated changed mask (external contours), those enclosing less
  than ``min_area`` dropped;
- ``is_light``: a change of light (headlights sweeping a wall, a cloud's shadow) scales the
  scene but keeps its fine texture, so frame and model texture still correlate inside the blob;
  an object hides the texture behind it (measured on the generated scenes: objects below 0.55,
  light pools above 0.75);
- ``TransientFilter``: rain, snow and insects near the lens make blobs that are **small or out
  of focus** and **short-lived or fast** (at 5 analysed frames per second a raindrop or an insect
  is somewhere else, or gone, one frame later). Such a blob counts only once it has been seen
  ``persist`` frames in a row, each time close to where it was (a walker far away, small but
  steady, passes after that delay); a large, sharp blob counts at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# Illumination test: least fine texture (grey-level standard deviation of the model's texture)
# inside a blob for the test to decide; window (pixels) of the local mean removed.
_MIN_TEXTURE = 1.5
_TEXTURE_WINDOW = 7
# Transient filter: a blob under _SMALL_FACTOR x min_area is small; one whose difference from
# the model rises softer than _SOFT_EDGE (steepest step between neighbours over the peak) is out
# of focus; consecutive sightings needed by either; how far (in its own size, plus a few pixels)
# a blob may move between two frames and still be the same one, and how far an out-of-focus
# one may (_SOFT_STEP_SIZES: an insect flutters, a drop on the lens runs).
_SMALL_FACTOR = 4.0
_SOFT_EDGE = 0.35
_PERSIST = 3
_STEP_SIZES = 1.0
_SOFT_STEP_SIZES = 0.4
_STEP_PAD_PX = 3
# Weather: running mean (weight _WEATHER_RATE per frame, ~2 s at 5 fps) of new small blobs
# per frame that turns the small-blob check on, and the level that turns it off again.
_WEATHER_RATE = 0.1
_WEATHER_ON = 1.0
_WEATHER_OFF = 0.3


@dataclass(frozen=True)
class Blob:
    """A connected moving region in pixels of the analysed frame."""

    x: int
    y: int
    w: int
    h: int
    area: int  # pixels enclosed by the (dilated) region's outline

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)


def find_blobs(dilated: np.ndarray, min_area: float) -> list[Blob]:
    """External contours of ``dilated`` (uint8, non-zero = changed) enclosing at least
    ``min_area`` of the frame, largest first; ``area`` is the contour's enclosed area."""
    h, w = dilated.shape
    min_px = min_area * w * h
    contours, _ = cv2.findContours(dilated, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    found: list[Blob] = []
    for contour in contours:
        area = float(cv2.contourArea(contour))
        if area >= min_px and area > 0:
            x, y, bw, bh = cv2.boundingRect(contour)
            found.append(Blob(x, y, bw, bh, round(area)))
    found.sort(key=lambda b: -b.area)
    return found


def _roi(blob: Blob, shape: tuple[int, ...], pad: int) -> tuple[slice, slice]:
    y0, x0 = max(0, blob.y - pad), max(0, blob.x - pad)
    y1, x1 = min(shape[0], blob.y + blob.h + pad), min(shape[1], blob.x + blob.w + pad)
    return slice(y0, y1), slice(x0, x1)


def fine_texture(image: np.ndarray) -> np.ndarray:
    """The picture minus its local mean: fine texture only (the light pool's own shape and the
    scene's large structures, a kerb, a facade edge, do not count as texture)."""
    k = (_TEXTURE_WINDOW, _TEXTURE_WINDOW)
    out: np.ndarray = image - cv2.blur(image, k)
    return out


def is_light(
    blob: Blob,
    changed: np.ndarray,
    frame_texture: np.ndarray,
    model_texture: np.ndarray,
    limit: float,
) -> bool:
    """Whether ``blob`` is a change of light rather than an object (module docstring): the fine
    texture (``fine_texture`` of frame and model, computed once per frame) correlates above
    ``limit`` over the blob's changed pixels. Undecidable (False: motion) where the model has
    no texture."""
    rows, cols = _roi(blob, changed.shape, 0)
    inside = changed[rows, cols] > 0
    n = int(np.count_nonzero(inside))
    if n < 16:
        return False
    a = frame_texture[rows, cols][inside]
    b = model_texture[rows, cols][inside]
    a = a - a.sum() / n
    b = b - b.sum() / n
    aa, bb = float(a.dot(a)), float(b.dot(b))
    if bb < n * _MIN_TEXTURE**2 or aa < n * 1e-6:
        return False
    return float(a.dot(b)) / float(np.sqrt(aa * bb)) > limit


def edge_sharpness(blob: Blob, diff: np.ndarray) -> float:
    """Steepest step between neighbouring pixels of the blob's difference from the model, over
    its strongest difference: an object in focus starts with an edge (0.3-0.6 here, after the
    detector's own blur), a drop or an insect right in front of the lens is a blurred bump whose
    difference rises over many pixels (under 0.2)."""
    rows, cols = _roi(blob, diff.shape, 0)
    d = diff[rows, cols]
    if d.shape[0] < 3 or d.shape[1] < 3:
        return 1.0
    peak = float(d.max())
    if peak <= 1.0:
        return 1.0
    step = max(
        float(cv2.absdiff(d[:, 1:], d[:, :-1]).max()), float(cv2.absdiff(d[1:], d[:-1]).max())
    )
    return step / peak


@dataclass
class _Track:
    blob: Blob
    seen: int


class TransientFilter:
    """Drops blobs of rain, snow and insects (module docstring); keeps one frame of memory.

    Out-of-focus blobs are always suspects. Small blobs are suspects only in **weather**: when
    small blobs that match nothing of the frame before keep appearing (an average of
    ``_WEATHER_ON`` or more per frame over the last few seconds; off again under
    ``_WEATHER_OFF``). On a dry day a small blob (a walker far away, a car's first frame at the
    edge) counts at once."""

    def __init__(self, enabled: bool = True, persist: int = _PERSIST) -> None:
        self.enabled = enabled
        self.persist = persist
        self._tracks: list[_Track] = []
        self._fresh_rate = 0.0  # running mean of new, unmatched small blobs per frame
        self.weather = False

    def configure(self, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            self.reset()

    def reset(self) -> None:
        self._tracks = []

    def filter(
        self, blobs: Sequence[Blob], gray: np.ndarray, diff: np.ndarray, min_px: float
    ) -> tuple[list[Blob], int]:
        """(blobs kept, number dropped as transient). ``gray``: the analysed (unblurred) frame;
        ``diff``: |frame - model| of the blurred pictures, same size; ``min_px``: the smallest
        blob the detector keeps, in pixels."""
        if not self.enabled:
            return list(blobs), 0
        small_px = _SMALL_FACTOR * max(1.0, min_px)
        h, w = gray.shape
        tracks: list[_Track] = []
        kept: list[Blob] = []
        dropped = 0
        fresh = 0
        for blob in blobs:
            soft = edge_sharpness(blob, diff) < _SOFT_EDGE
            reach = _SOFT_STEP_SIZES if soft else _STEP_SIZES
            matches = (t.seen for t in self._tracks if _same(t.blob, blob, reach))
            seen = 1 + max(matches, default=0)
            tracks.append(_Track(blob, seen))
            at_edge = (
                blob.x <= 1 or blob.y <= 1 or blob.x + blob.w >= w - 1 or blob.y + blob.h >= h - 1
            )
            small = blob.area < small_px and not at_edge  # things enter from the edges
            fresh += small and seen == 1
            suspect = soft or (small and self.weather)
            if suspect and seen < self.persist:
                dropped += 1
                continue
            kept.append(blob)
        self._tracks = tracks
        self._fresh_rate += _WEATHER_RATE * (fresh - self._fresh_rate)
        if self.weather and self._fresh_rate < _WEATHER_OFF:
            self.weather = False
        elif not self.weather and self._fresh_rate >= _WEATHER_ON:
            self.weather = True
        return kept, dropped


def _same(prev: Blob, blob: Blob, sizes: float = _STEP_SIZES) -> bool:
    """Whether ``blob`` can be ``prev`` one analysed frame later: its centre within ``sizes``
    of its size (plus a few pixels) of where ``prev`` was."""
    (px, py), (bx, by) = prev.centre, blob.centre
    reach = sizes * max(prev.w, prev.h, blob.w, blob.h) + _STEP_PAD_PX
    return abs(px - bx) <= reach and abs(py - by) <= reach
