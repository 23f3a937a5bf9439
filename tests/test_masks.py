"""Polygon masks: rasterised per frame size, privacy blackout, bad polygons refused clearly."""

from __future__ import annotations

import numpy as np
import pytest

from guetteur.analytics.masks import MaskError, PolygonMask

LEFT_HALF = [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]


def test_rectangle_covers_the_expected_pixels_at_any_size() -> None:
    mask = PolygonMask([LEFT_HALF])
    for w, h in ((100, 50), (320, 180), (64, 64)):
        raster = mask.mask(w, h)
        assert raster.shape == (h, w) and raster.dtype == np.uint8
        assert set(np.unique(raster)) <= {0, 255}
        assert raster[:, : w // 2 - 1].all()
        assert not raster[:, w // 2 + 1 :].any()
        assert abs(mask.coverage(w, h) - 0.5) < 0.03


def test_full_frame_polygon_covers_the_edge_pixels() -> None:
    mask = PolygonMask([[(0, 0), (1, 0), (1, 1), (0, 1)]])
    assert mask.bool_mask(33, 17).all()


def test_triangle_area_and_union_of_polygons() -> None:
    triangle = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    assert abs(PolygonMask([triangle]).coverage(200, 200) - 0.5) < 0.02
    right_quarter = [(0.75, 0.0), (1.0, 0.0), (1.0, 1.0), (0.75, 1.0)]
    assert abs(PolygonMask([LEFT_HALF, right_quarter]).coverage(200, 100) - 0.75) < 0.02


def test_raster_is_cached_per_size_and_read_only() -> None:
    mask = PolygonMask([LEFT_HALF])
    a = mask.mask(100, 50)
    assert mask.mask(100, 50) is a
    assert mask.mask(200, 100) is not a
    with pytest.raises(ValueError):
        a[0, 0] = 0


def test_blackout_paints_the_polygon_black_and_leaves_the_rest() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(1, 255, (60, 80, 3), dtype=np.uint8)
    original = image.copy()
    out = PolygonMask([LEFT_HALF]).blackout(image)
    assert (out[:, :39] == 0).all()
    assert np.array_equal(out[:, 41:], image[:, 41:])
    assert np.array_equal(image, original)  # input untouched
    grey = rng.integers(1, 255, (60, 80), dtype=np.uint8)
    assert (PolygonMask([LEFT_HALF]).blackout(grey)[:, :39] == 0).all()


def test_no_polygon_means_no_mask() -> None:
    mask = PolygonMask()
    assert not mask
    image = np.full((10, 10, 3), 7, np.uint8)
    assert np.array_equal(mask.blackout(image), image)
    assert not mask.mask(10, 10).any()


@pytest.mark.parametrize(
    ("polygon", "words"),
    [
        ([(0.1, 0.1), (0.2, 0.2)], "at least 3 points"),
        ([(0.1, 0.1), (1.2, 0.2), (0.3, 0.9)], "0..1"),
        ([(0.1, 0.1), (-0.1, 0.2), (0.3, 0.9)], "0..1"),
        ([(0.1,), (0.2,), (0.3,)], r"\[x, y\]"),
        ([("a", "b"), (0.2, 0.2), (0.3, 0.9)], r"\[x, y\]"),
        ([(0.1, 0.1), (float("nan"), 0.2), (0.3, 0.9)], "0..1"),
    ],
)
def test_bad_polygons_are_refused_with_their_index(polygon: list, words: str) -> None:
    with pytest.raises(MaskError, match=words) as info:
        PolygonMask([LEFT_HALF, polygon])
    assert "polygon 1" in str(info.value)
