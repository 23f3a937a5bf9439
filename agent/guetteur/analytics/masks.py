"""Polygon masks in normalised coordinates, rasterised for whatever frame size comes along.

Config polygons are lists of ``[x, y]`` in 0..1 of the frame's width and height, so one mask
fits the analytic frame, the snapshot and the full-resolution stream alike. Two uses:

- privacy masks (windows of homes): ``blackout(image)`` paints them black on every analysed frame
  and every snapshot, so nothing behind them is analysed, stored or sent;
- ignore masks (foliage, a flag, a road outside the area of interest): ``mask(w, h)`` is a uint8
  image, 255 inside a polygon, that the motion detector uses to drop changes there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

NormPoint = Sequence[float]
NormPolygon = Sequence[NormPoint]


class MaskError(ValueError):
    """A polygon that cannot be used (too few points, coordinates outside 0..1)."""


def _validated(polygons: Iterable[NormPolygon]) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for i, polygon in enumerate(polygons):
        try:
            pts = np.asarray(polygon, dtype=np.float64)
        except (TypeError, ValueError):
            raise MaskError(f"polygon {i}: expected a list of [x, y] number pairs") from None
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise MaskError(f"polygon {i}: expected a list of [x, y] number pairs")
        if len(pts) < 3:
            raise MaskError(f"polygon {i}: expected at least 3 points, got {len(pts)}")
        if not np.isfinite(pts).all() or pts.min() < 0.0 or pts.max() > 1.0:
            raise MaskError(f"polygon {i}: coordinates must lie in 0..1 (normalised to the frame)")
        out.append(pts)
    return out


class PolygonMask:
    """A set of normalised polygons, rasterised once per frame size (cached)."""

    def __init__(self, polygons: Iterable[NormPolygon] = ()) -> None:
        self._polygons = _validated(polygons)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def __bool__(self) -> bool:
        return bool(self._polygons)

    def __len__(self) -> int:
        return len(self._polygons)

    def mask(self, width: int, height: int) -> np.ndarray:
        """uint8 image of ``height`` x ``width``: 255 inside any polygon, 0 outside (read-only)."""
        key = (width, height)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        raster = np.zeros((height, width), np.uint8)
        if self._polygons:
            # Scale by the full size so x=1.0 lands past the last pixel and the edge pixel is
            # covered (fillPoly clips); shift=4 keeps sub-pixel precision.
            scale = np.array([width, height], np.float64) * 16.0
            pts = [np.round(p * scale).astype(np.int32) for p in self._polygons]
            cv2.fillPoly(raster, pts, 255, lineType=cv2.LINE_8, shift=4)
        raster.setflags(write=False)
        if len(self._cache) > 8:  # sizes change rarely (a new stream epoch); bound the cache
            self._cache.clear()
        self._cache[key] = raster
        return raster

    def bool_mask(self, width: int, height: int) -> np.ndarray:
        """Boolean version of ``mask``: True inside any polygon."""
        return self.mask(width, height) > 0

    def coverage(self, width: int, height: int) -> float:
        """Fraction of the frame the polygons cover."""
        return float(np.count_nonzero(self.mask(width, height))) / (width * height)

    def blackout(self, image: np.ndarray) -> np.ndarray:
        """A copy of ``image`` with every polygon painted black (the input is left untouched)."""
        if not self._polygons:
            return image
        h, w = image.shape[:2]
        inside = self.bool_mask(w, h)
        out = image.copy()
        out[inside] = 0
        return out
