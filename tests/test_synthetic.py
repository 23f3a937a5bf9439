"""Synthetic scenes: deterministic frames, truth that matches what is drawn, clips that decode."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from guetteur.dev.synthetic import SCENARIO_NAMES, scenario, write_clip, write_truth


def test_every_scene_renders_bgr_frames_of_the_asked_size() -> None:
    for name in SCENARIO_NAMES:
        sc = scenario(name, width=160, height=90, fps=5)
        img = sc.render(3)
        assert img.shape == (90, 160, 3), name
        assert img.dtype == np.uint8, name
        assert sc.frame_count == round(sc.duration_s * 5)


def test_render_is_deterministic_and_noisy_from_frame_to_frame() -> None:
    a = scenario("walk", width=160, height=90)
    b = scenario("walk", width=160, height=90)
    assert np.array_equal(a.render(130), b.render(130))
    assert np.array_equal(a.render(130), a.render(130))
    # Sensor noise: two still frames are not identical, but close.
    f0, f1 = a.render(0).astype(int), a.render(1).astype(int)
    assert not np.array_equal(f0, f1)
    assert np.abs(f0 - f1).mean() < 5


def test_seed_changes_the_scene() -> None:
    a = scenario("quiet", width=160, height=90).render(0)
    b = scenario("quiet", width=160, height=90, seed=3).render(0)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 2


def test_walker_is_drawn_exactly_during_its_truth_interval() -> None:
    walk = scenario("walk", width=320, height=180, fps=5)
    quiet = scenario("quiet", width=320, height=180, fps=5)
    assert walk.truth == [(5.0, 8.0)]
    assert quiet.truth == []
    for i in range(walk.frame_count):
        t = walk.time_of(i)
        differs = not np.array_equal(walk.render(i), quiet.render(i))
        boxes = walk.object_boxes(i)
        # Same background and noise: the frames differ only where the walker is drawn.
        assert differs == bool(boxes), f"t={t}"
        assert bool(boxes) == (5.0 < t < 8.0), f"t={t}"  # at t=5.0 it is still off-frame
        if boxes:
            x, _y, w, _h = boxes[0]
            diff = np.abs(walk.render(i).astype(int) - quiet.render(i).astype(int)).sum(axis=2)
            _ys, xs = np.nonzero(diff)
            cx = xs.mean() / 320
            assert x - 0.02 <= cx <= x + w + 0.02, f"t={t}"


def test_truth_and_parameters() -> None:
    assert scenario("car").truth == [(4.0, 5.5)]
    assert scenario("walk", start=2, end=4, duration=6).truth == [(2.0, 4.0)]
    assert scenario("foliage").truth == []
    assert scenario("foliage", walker=1).truth == [(5.0, 8.0)]
    assert scenario("night").truth == []
    assert scenario("lighting").truth == []
    masks = scenario("foliage").ignore_masks
    assert len(masks) == 1 and all(0 <= v <= 1 for pt in masks[0] for v in pt)
    assert scenario("walk").ignore_masks == []
    assert scenario("walk").duration_s == 15.0


@pytest.mark.parametrize(
    ("name", "params", "words"),
    [
        ("parade", {}, "unknown scenario"),
        ("walk", {"speed": 2.0}, "unknown parameter"),
        ("walk", {"start": 9.0, "end": 8.0}, "start < end"),
        ("walk", {"duration": 0.0}, "duration"),
    ],
)
def test_bad_scenario_requests_say_what_is_wrong(
    name: str, params: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        scenario(name, **params)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        scenario("quiet", width=161, height=90)
    with pytest.raises(ValueError, match="fps"):
        scenario("quiet", fps=0)


def test_lighting_scene_steps_brightness_and_back() -> None:
    sc = scenario("lighting", width=160, height=90, fps=5)
    before = sc.render(int(4.5 * 5)).mean()
    during = sc.render(int(7.0 * 5)).mean()
    after = sc.render(int(12.0 * 5)).mean()
    assert during > before * 1.25
    assert abs(after - before) < 3


def test_night_is_dark_and_noisy() -> None:
    night = scenario("night", width=160, height=90)
    day = scenario("quiet", width=160, height=90)
    assert night.render(0).mean() < day.render(0).mean() * 0.4
    noise_night = np.abs(night.render(0).astype(int) - night.render(1).astype(int)).mean()
    noise_day = np.abs(day.render(0).astype(int) - day.render(1).astype(int)).mean()
    assert noise_night > 2 * noise_day


def test_foliage_moves_only_inside_its_ignore_mask() -> None:
    sc = scenario("foliage", width=320, height=180, fps=5)
    quiet = scenario("quiet", width=320, height=180, fps=5)
    diff = np.abs(sc.render(10).astype(int) - quiet.render(10).astype(int)).sum(axis=2)
    ys, xs = np.nonzero(diff)
    (poly,) = sc.ignore_masks
    x0, x1 = min(p[0] for p in poly) * 320, max(p[0] for p in poly) * 320
    y0, y1 = min(p[1] for p in poly) * 180, max(p[1] for p in poly) * 180
    assert len(xs) > 1000
    assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
    # and it sways: two frames a second apart differ inside the tree
    assert not np.array_equal(sc.render(10), sc.render(15))


def test_clip_writes_decodes_with_camera_like_gop(tmp_path: Path) -> None:
    sc = scenario("walk", width=320, height=180, fps=10, start=1, end=2, duration=4)
    clip = tmp_path / "walk.mp4"
    write_clip(sc, clip, gop_s=1.0)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        keys = []
        frames = 0
        for packet in container.demux(stream):
            if packet.size:
                keys.append(packet.is_keyframe)
        container.seek(0)
        for frame in container.decode(stream):
            frames += 1
            assert (frame.width, frame.height) == (320, 180)
    assert frames == sc.frame_count == 40
    assert [i for i, k in enumerate(keys) if k] == [0, 10, 20, 30]  # GOP 1 s at 10 fps


def test_truth_file(tmp_path: Path) -> None:
    path = tmp_path / "foliage.json"
    write_truth(scenario("foliage", walker=1), path)
    doc = json.loads(path.read_text())
    assert doc["events"] == [{"start": 5.0, "end": 8.0}]
    assert len(doc["ignore_masks"]) == 1 and len(doc["ignore_masks"][0]) >= 3


def test_city_scenes_have_the_truth_they_draw() -> None:
    """Crowd and queue: truth is the whole time something of them is in view, with many objects
    at once; weather, insects, infrared and a pan alone are no event."""
    crowd = scenario("crowd", width=320, height=180, fps=5)
    assert crowd.truth == [(3.0, 17.0)]
    counts = [len(crowd.object_boxes(i)) for i in range(crowd.frame_count)]
    inside = [n for i, n in enumerate(counts) if 4.0 <= crowd.time_of(i) < 16.0]
    assert min(inside) >= 5 and max(inside) >= 12  # dozens cross; never an empty pavement
    assert all(n == 0 for i, n in enumerate(counts) if not 3.0 <= crowd.time_of(i) < 17.0)
    queue = scenario("queue", width=320, height=180, fps=5)
    assert queue.truth == [(3.0, 16.0)]
    inside = [len(queue.object_boxes(i)) for i in range(queue.frame_count) if 4 <= i / 5 < 15]
    assert min(inside) >= 2  # bumper to bumper: the queue is never gone
    for name in ("rain", "snow", "insects", "ir_switch", "pan"):
        assert scenario(name, width=160, height=90).truth == [], name


def test_infrared_switch_turns_the_picture_grey_and_noisier() -> None:
    sc = scenario("ir_switch", width=320, height=180, fps=5)
    before, after = sc.render(6 * 5).astype(float), sc.render(10 * 5).astype(float)
    chroma = lambda im: float(np.abs(im - im.mean(axis=2, keepdims=True)).mean())  # noqa: E731
    assert chroma(before) > 1.0 and chroma(after) < 0.01
    assert after.mean() > before.mean()  # the illuminator
    assert (sc.render(51).astype(float) - after).std() > (
        sc.render(31).astype(float) - before
    ).std()


def test_pan_moves_the_view_then_holds_it() -> None:
    sc = scenario("pan", width=320, height=180, fps=5)
    frames = [sc.render(i).astype(float) for i in (10, 19, 22, 25, 35, 45)]
    step = [float(np.abs(a - b).mean()) for a, b in itertools.pairwise(frames)]
    assert step[0] < 5 and step[1] > 10 and step[2] > 10  # still, panning...
    assert step[-1] < 5  # ...still again at the new view
    assert float(np.abs(frames[0] - frames[-1]).mean()) > 10


def test_rain_is_new_every_frame() -> None:
    sc = scenario("rain", width=320, height=180, fps=5)
    quiet = scenario("quiet", width=320, height=180, fps=5)
    a = sc.render(10).astype(int) - quiet.render(10).astype(int)
    b = sc.render(11).astype(int) - quiet.render(11).astype(int)
    streaks_a, streaks_b = a.max(axis=2) > 20, b.max(axis=2) > 20
    assert streaks_a.mean() > 0.005 and streaks_b.mean() > 0.005
    assert (streaks_a & streaks_b).sum() < 0.2 * streaks_a.sum()
