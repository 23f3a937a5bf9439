"""Object detection (guetteur.analytics.detection), the model manifests and scripts/fetch-models.

The committed test model in two export styles and real street footage (tests/data, served by
tests/fixtures/models.py), generated clips encoded and decoded with PyAV. Motion boxes for real footage come from a plain two-frame difference here, so
these tests check the detector and not the (separately tested) background-subtraction detector.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import yaml

from guetteur.analytics.detection.manifest import DetectorError, load_manifest, read_labels
from guetteur.analytics.detection.regions import (
    Detection,
    Region,
    filter_detections,
    iou,
    plan_regions,
    point_in_polygon,
    suppress_duplicates,
)
from guetteur.analytics.detection.runtime import (
    Detector,
    assign_output_roles,
    load_detector,
    tell_classes_from_scores,
)
from guetteur.analytics.detection.worker import DetectorWorker
from guetteur.config import DetectFilter, DetectionConfig, EventsConfig
from guetteur.media.types import AnalyticFrame, Box
from tests.fixtures.models import STREET_CLIP, STREET_CLIP_FPS, DetectionModels, TestModel

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = ("coco-ssd-mobilenet-v2-fpnlite-320", "coco-ssd-mobilenet-v1-quant-300")  # models/
STYLES = DetectionModels.styles  # "tf2-export", "tflite-postprocess"
FETCH = REPO / "scripts" / "fetch-models"
CLIP_FPS = STREET_CLIP_FPS


# -- helpers ----------------------------------------------------------------------------------


def config_for(model: TestModel, **kw: object) -> DetectionConfig:
    """The test model's manifest, with its model file named explicitly (not fetched in tests)."""
    return DetectionConfig(
        manifest=str(model.manifest),
        model=str(model.model),
        **kw,
    )


def diff_boxes(prev: np.ndarray, cur: np.ndarray, threshold: int = 25) -> list[Box]:
    """Motion boxes from a two-frame difference: blobs of changed pixels, normalised."""
    g0 = cv2.GaussianBlur(cv2.cvtColor(prev, cv2.COLOR_BGR2GRAY), (5, 5), 0)
    g1 = cv2.GaussianBlur(cv2.cvtColor(cur, cv2.COLOR_BGR2GRAY), (5, 5), 0)
    changed: np.ndarray = (cv2.absdiff(g0, g1) > threshold).astype(np.uint8)
    changed = cv2.dilate(changed, np.ones((3, 3), np.uint8), iterations=3)
    _, _, stats, _ = cv2.connectedComponentsWithStats(changed)
    h, w = changed.shape
    return [
        Box(x / w, y / h, bw / w, bh / h)
        for x, y, bw, bh, area in stats[1:]
        if area >= 0.002 * w * h
    ]


class DiffMotion:
    """What EventTracker reads of a motion result (MotionLike), from diff_boxes."""

    def __init__(self, boxes: list[Box]) -> None:
        self.boxes = boxes
        self.motion = bool(boxes)
        self.score = min(1.0, sum(b.area for b in boxes))


def encode_clip(path: Path, frames: Iterator[np.ndarray], fps: int) -> None:
    """Write BGR frames as an H.264 MP4 with PyAV (test media made at test time)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        first = True
        for img in frames:
            if first:
                stream.height, stream.width = img.shape[:2]
                first = False
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        out.mux(stream.encode(None))


def decode_clip(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def bikes() -> list[np.ndarray]:
    return decode_clip(STREET_CLIP)


@pytest.fixture(scope="module")
def detectors(detection_models: DetectionModels) -> dict[str, Detector]:
    """One detector per export style, loaded through its manifest."""
    out = {}
    for style in STYLES:
        det = load_detector(config_for(detection_models[style]))
        assert det is not None
        out[style] = det
    return out


@pytest.fixture(scope="module")
def detector(detectors: dict[str, Detector]) -> Detector:
    """The committed model as published (TF1-style export, uint8 input)."""
    return detectors["tflite-postprocess"]


# -- where to look ----------------------------------------------------------------------------


def test_regions_whole_frame_or_nothing() -> None:
    assert plan_regions(640, 360, None, 320) == [Region(0, 0, 640, 360)]
    assert plan_regions(640, 360, [], 320) == []
    # Motion over most of the frame: one whole-frame pass.
    assert plan_regions(640, 360, [Box(0.05, 0.05, 0.8, 0.8)], 320) == [Region(0, 0, 640, 360)]


def test_region_around_small_motion_is_a_padded_square_inside_the_frame() -> None:
    box = Box(0.45, 0.40, 0.05, 0.10)  # 96x108 px in 1920x1080
    (r,) = plan_regions(1920, 1080, [box], 320, padding=0.25)
    assert r.w == r.h
    assert r.w >= 108 * 1.5 - 1  # padded by a quarter of the box on each side
    assert r.x <= box.x * 1920 and r.x + r.w >= (box.x + box.w) * 1920
    assert r.y <= box.y * 1080 and r.y + r.h >= (box.y + box.h) * 1080
    # A tiny blob is not blown up beyond twice the model's size.
    (tiny,) = plan_regions(1920, 1080, [Box(0.5, 0.5, 0.002, 0.002)], 320)
    assert tiny.w == tiny.h == 160


def test_region_at_the_edge_is_shifted_not_cut() -> None:
    (r,) = plan_regions(1280, 720, [Box(0.97, 0.0, 0.03, 0.1)], 320, padding=0.25)
    assert r.x + r.w == 1280 and r.y == 0 and r.w == r.h


def test_overlapping_regions_merge_distant_ones_do_not() -> None:
    near = [Box(0.30, 0.40, 0.05, 0.1), Box(0.34, 0.42, 0.05, 0.1)]
    (merged,) = plan_regions(1920, 1080, near, 320)
    for b in near:
        assert merged.x <= b.x * 1920 and merged.x + merged.w >= (b.x + b.w) * 1920
    far = [Box(0.05, 0.05, 0.05, 0.1), Box(0.85, 0.8, 0.05, 0.1)]
    assert len(plan_regions(1920, 1080, far, 320)) == 2
    many = [Box(0.02 + 0.19 * i, 0.45, 0.02, 0.04) for i in range(5)]
    assert plan_regions(1920, 1080, many, 320) == [Region(0, 0, 1920, 1080)]


# -- filters and pure helpers -----------------------------------------------------------------


def test_filter_detections_by_label_score_area_and_zone() -> None:
    person = Detection("person", 0.8, Box(0.1, 0.1, 0.1, 0.3))
    weak = Detection("person", 0.4, Box(0.6, 0.1, 0.1, 0.3))
    small_car = Detection("car", 0.9, Box(0.6, 0.6, 0.02, 0.02))
    dog = Detection("dog", 0.9, Box(0.2, 0.6, 0.2, 0.2))
    dets = [person, weak, small_car, dog]
    assert filter_detections(dets, DetectFilter()) == [person, small_car]
    assert filter_detections(dets, DetectFilter(min_area=0.01)) == [person]
    assert filter_detections(dets, DetectFilter(labels=[], min_score=0.3)) == dets
    left_half = [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]
    assert filter_detections(dets, DetectFilter(zones=[left_half])) == [person]


def test_point_in_polygon_concave() -> None:
    u_shape = [(0.1, 0.1), (0.3, 0.1), (0.3, 0.7), (0.7, 0.7), (0.7, 0.1), (0.9, 0.1),
               (0.9, 0.9), (0.1, 0.9)]  # fmt: skip
    assert point_in_polygon(0.2, 0.5, u_shape)
    assert not point_in_polygon(0.5, 0.4, u_shape)  # inside the notch
    assert point_in_polygon(0.5, 0.8, u_shape)
    assert not point_in_polygon(0.95, 0.5, u_shape)


def test_duplicates_across_crops_are_merged_per_label() -> None:
    a = Detection("person", 0.7, Box(0.1, 0.1, 0.2, 0.4))
    b = Detection("person", 0.6, Box(0.11, 0.1, 0.2, 0.4))
    c = Detection("bicycle", 0.6, Box(0.11, 0.1, 0.2, 0.4))
    assert suppress_duplicates([b, a, c]) == [a, c]


def out(name: str, shape: list[int], index: int = 0) -> dict[str, object]:
    return {"name": name, "shape": np.array(shape), "index": index, "quantization": (0.0, 0)}


def test_output_roles_by_name_and_shape_and_other_forms_refused() -> None:
    tf1 = [out("TFLite_Detection_PostProcess", [1, 10, 4]),
           out("TFLite_Detection_PostProcess:1", [1, 10]),
           out("TFLite_Detection_PostProcess:2", [1, 10]),
           out("TFLite_Detection_PostProcess:3", [1])]  # fmt: skip
    roles, pair = assign_output_roles(tf1, None, "m")
    assert not pair
    assert roles["classes"]["name"] == "TFLite_Detection_PostProcess:1"
    assert roles["scores"]["name"] == "TFLite_Detection_PostProcess:2"
    anonymous = [out("x:0", [1]), out("x:1", [1, 10]), out("x:2", [1, 10]), out("x:3", [1, 10, 4])]
    roles, pair = assign_output_roles(anonymous, None, "m")
    assert roles["boxes"]["name"] == "x:3" and roles["count"]["name"] == "x:0"
    assert [p["name"] for p in pair] == ["x:1", "x:2"]
    yolo = [out("Identity", [1, 84, 8400])]
    with pytest.raises(
        DetectorError, match=r"not have SSD post-processed outputs.*\[1, 84, 8400\]"
    ):
        assign_output_roles(yolo, None, "m")
    with pytest.raises(DetectorError, match="names output 'y:1' for classes") as err:
        assign_output_roles(anonymous, {"boxes": "x:3", "classes": "y:1", "scores": "x:2",
                                        "count": "x:0"}, "m")  # fmt: skip
    assert err.value.code == "model_mismatch"
    with pytest.raises(DetectorError, match="taken as boxes has shape"):
        assign_output_roles(anonymous, {"boxes": "x:1", "classes": "x:3", "scores": "x:2",
                                        "count": "x:0"}, "m")  # fmt: skip


def test_classes_told_from_scores_by_value() -> None:
    classes = np.array([[0.0, 2.0, 2.0, 17.0]])
    scores = np.array([[0.81, 0.52, 0.33, 0.1]])
    assert tell_classes_from_scores([classes, scores]) == (0, 1)
    assert tell_classes_from_scores([scores, classes]) == (1, 0)
    assert tell_classes_from_scores([classes, classes]) is None


# -- manifests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_repo_manifests_describe_their_models(name: str) -> None:
    m = load_manifest(REPO / "models" / f"{name}.yaml")
    assert m.name == name and m.url and m.url.startswith("https://") and m.licence
    assert m.labels_path is not None
    labels = read_labels(m.labels_path)
    assert m.num_classes is not None and len(labels) == m.num_classes + m.label_offset
    assert labels[m.label_offset] == "person" and labels[2 + m.label_offset] == "car"


def test_repo_manifest_describes_the_committed_model(detection_models: DetectionModels) -> None:
    quant = detection_models["tflite-postprocess"]
    m = load_manifest(quant.manifest)
    assert m.labels_path is not None
    # Same labels, same positions as the model's own labels file.
    assert read_labels(m.labels_path) == read_labels(quant.labels)
    assert m.size == quant.model.stat().st_size and m.sha256 == quant.sha256


def test_bad_manifests_say_which_key(tmp_path: Path) -> None:
    cases = {
        "name: x\n": "key 'file' is missing",
        "name: x\nfile: m.tflite\nsource: {sha256: abc}\n": "64 hexadecimal digits",
        "name: x\nfile: m.tflite\ninput: {width: 3, height: 3, dtype: float64}\n": "input.dtype",
        "name: x\nfile: m.tflite\noutputs: {boxes: a}\n": "all four",
        "[1, 2": "not valid YAML",
    }
    for i, (text, expected) in enumerate(cases.items()):
        p = tmp_path / f"m{i}.yaml"
        p.write_text(text)
        with pytest.raises(DetectorError, match=expected) as err:
            load_manifest(p)
        assert str(p) in err.value.message


# -- loading: good and bad models ---------------------------------------------------------------


def test_no_model_is_motion_only_said_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="guetteur.analytics.detection")
    assert load_detector(DetectionConfig()) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "motion-only" in lines[0]


@pytest.mark.parametrize("style", STYLES)
def test_loads_without_manifest_by_shape_and_convention(
    detection_models: DetectionModels, style: str
) -> None:
    """No manifest: outputs found by name or shape (classes vs scores by value), label offset
    from the labels file; gives the same detections as with the manifest."""
    model = detection_models[style]
    bare = load_detector(DetectionConfig(model=str(model.model), labels=str(model.labels)))
    assert bare is not None
    with_manifest = load_detector(config_for(model))
    assert with_manifest is not None
    img = decode_clip(STREET_CLIP)[50]  # cars at 2 s
    a, b = bare.detect(img, None), with_manifest.detect(img, None)
    assert a == b and any(d.label == "car" for d in a)


def _manifest_copy(tmp_path: Path, src: Path, **changes: object) -> Path:
    """A copy of manifest ``src`` (with its labels file) in tmp_path, ``changes`` applied by
    dotted key (None removes the key)."""
    raw = yaml.safe_load(src.read_text())
    for key, value in changes.items():
        node = raw
        *parents, leaf = key.split(".")
        for k in parents:
            node = node[k]
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    shutil.copy(src.parent / raw["labels"], tmp_path / raw["labels"])
    path = tmp_path / src.name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_model_errors_are_sentences(detection_models: DetectionModels, tmp_path: Path) -> None:
    fpn = MANIFESTS[0]
    tf2, quant = detection_models["tf2-export"], detection_models["tflite-postprocess"]
    good = tf2.model  # the float model

    def error(**kw: object) -> DetectorError:
        with pytest.raises(DetectorError) as err:
            load_detector(DetectionConfig(**kw))
        return err.value

    e = error(manifest=str(REPO / "models" / f"{fpn}.yaml"), model=str(tmp_path / "nope.tflite"))
    assert e.code == "model_missing" and "does not exist" in e.message
    assert "scripts/fetch-models" in e.message

    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(np.random.default_rng(1).bytes(100_000))
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(good.read_bytes()[:200_000])
    labels = str(REPO / "models" / f"{fpn}.labels.txt")
    for bad in (garbage, truncated):
        e = error(model=str(bad), labels=labels)
        assert e.code == "model_corrupt", e.message
        assert f"model file {bad} is not a valid TFLite model" in e.message

    # The manifest of the quantised model with the float model: sha256 catches it first...
    e = error(manifest=str(quant.manifest), model=str(good))
    assert e.code == "sha256_mismatch"
    assert tf2.sha256[:8] in e.message and "e4b118e5" in e.message and "fetch" in e.message
    # ...and without a sha256 the input shape does.
    no_sha = _manifest_copy(tmp_path, quant.manifest, **{"source.sha256": None})
    e = error(manifest=str(no_sha), model=str(good))
    assert e.code == "model_mismatch"
    assert "manifest says input 300x300 uint8, the model takes 320x320 float32" in e.message
    # Output names of the other export.
    wrong_outputs = _manifest_copy(
        tmp_path,
        tf2.manifest,
        outputs={
            "boxes": "TFLite_Detection_PostProcess",
            "classes": "TFLite_Detection_PostProcess:1",
            "scores": "TFLite_Detection_PostProcess:2",
            "count": "TFLite_Detection_PostProcess:3",
        },
    )
    e = error(manifest=str(wrong_outputs), model=str(good))
    assert e.code == "model_mismatch" and "StatefulPartitionedCall:3 [1, 10, 4]" in e.message

    short = tmp_path / "short.txt"
    short.write_text("\n".join(read_labels(Path(labels))[:-1]) + "\n")
    e = error(manifest=str(tf2.manifest), model=str(good), labels=str(short))
    assert e.code == "labels_mismatch"
    assert f"labels file {short} has 89 lines" in e.message and "expects 90" in e.message


def test_missing_runtime_names_the_extra(
    detection_models: DetectionModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes `import` raise ImportError: as if not installed.
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(DetectorError, match="install the 'detect' extra") as err:
        load_detector(config_for(detection_models["tf2-export"]))
    assert err.value.code == "runtime_missing"


# -- acceptance on real footage ---------------------------------------------------------------


def _hits(det: Detector, frames: list[np.ndarray], start_s: float, end_s: float,
          label: str) -> list[tuple[float, Detection]]:  # fmt: skip
    """Frames analysed at 12.5 fps in [start_s, end_s], motion boxes from the difference with the
    frame 0.12 s before; detections of `label` kept by the default camera filter."""
    out = []
    for i in range(round(start_s * CLIP_FPS), round(end_s * CLIP_FPS) + 1, 2):
        boxes = diff_boxes(frames[i - 3], frames[i])
        kept = filter_detections(det.detect(frames[i], boxes), DetectFilter())
        out += [(i / CLIP_FPS, d) for d in kept if d.label == label]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
def test_street_clip_person_near_8s_and_cars_near_2s(
    detectors: dict[str, Detector], bikes: list[np.ndarray], style: str
) -> None:
    det = detectors[style]
    people = _hits(det, bikes, 7.5, 8.4, "person")
    frames_with_person = {t for t, _ in people}
    assert len(frames_with_person) >= 3, people
    # The walker fills the frame's height (the camera is at knee height).
    assert all(d.box.h > 0.6 for _, d in people), people
    cars = _hits(det, bikes, 1.8, 2.6, "car")
    assert len({t for t, _ in cars}) >= 4, cars


@pytest.mark.slow
def test_crops_map_back_to_the_frame(detector: Detector, bikes: list[np.ndarray]) -> None:
    """The street shot pasted into a 1920x1080 frame, motion boxes moved with it: the crops
    around the motion find the walker where the 640x272 shot alone shows it, at the same place."""
    x0, y0 = 1100, 600
    found = 0
    for i in range(round(7.52 * CLIP_FPS), round(8.32 * CLIP_FPS) + 1, 2):
        scene = np.full((1080, 1920, 3), 90, np.uint8)
        scene[y0 : y0 + 272, x0 : x0 + 640] = bikes[i]
        motion = [
            Box(
                (x0 + b.x * 640) / 1920, (y0 + b.y * 272) / 1080, b.w * 640 / 1920, b.h * 272 / 1080
            )
            for b in diff_boxes(bikes[i - 3], bikes[i])
        ]
        regions = plan_regions(1920, 1080, motion, 320)
        assert regions and regions != [Region(0, 0, 1920, 1080)]  # crops, not the whole frame
        in_crop = [d for d in detector.detect(scene, motion) if d.label == "person"]
        in_shot = [d for d in detector.detect(bikes[i], None) if d.label == "person"]
        best_crop = max(in_crop, key=lambda d: d.score, default=None)
        best_shot = max(in_shot, key=lambda d: d.score, default=None)
        if best_crop is None or best_crop.score < 0.5:
            continue
        found += 1
        # Back in the shot's own coordinates, the box is where the shot alone puts the walker.
        b = best_crop.box
        mapped = Box((b.x * 1920 - x0) / 640, (b.y * 1080 - y0) / 272, b.w * 3, b.h * 1080 / 272)
        assert b.x >= 0 and b.x + b.w <= 1 and b.y >= 0 and b.y + b.h <= 1
        if best_shot is not None:
            assert iou(mapped, best_shot.box) > 0.5, (i, mapped, best_shot.box)
    assert found >= 5


def test_no_motion_no_inference(detector: Detector, bikes: list[np.ndarray]) -> None:
    before = detector.inferences
    assert detector.detect(bikes[0], []) == []
    assert detector.inferences == before


def _lighting_frames(n: int, fps: int) -> Iterator[np.ndarray]:
    """A static street scene (guetteur.dev.synthetic, with sensor noise) whose brightness steps up
    by half and back down, as street lights or auto-exposure do."""
    from guetteur.dev.synthetic import scenario

    sc = scenario("lighting", width=640, height=360, fps=fps, duration=n / fps, step_at=2.0,
                  back_at=4.0, ramp=0.2)  # fmt: skip
    for i in range(n):
        yield sc.render(i)


@pytest.mark.slow
def test_lighting_change_only_gives_no_detection(
    detectors: dict[str, Detector], tmp_path: Path
) -> None:
    from guetteur.analytics.motion import MotionDetector

    fps = 10
    clip = tmp_path / "lighting.mp4"
    encode_clip(clip, _lighting_frames(6 * fps, fps), fps)
    frames = decode_clip(clip)
    assert len(frames) == 6 * fps
    means = [float(f.mean()) for f in frames]
    assert max(means) > 1.3 * min(means)  # the step is really there
    flt = DetectFilter()
    for name, det in detectors.items():
        motion = MotionDetector()
        gated = []
        for img in frames:
            result = motion.process(img)
            if result.motion:
                gated += filter_detections(det.detect(img, result.boxes), flt)
        # Even looking at every other whole frame, nothing a camera filter keeps.
        ungated = [d for img in frames[::2] for d in filter_detections(det.detect(img, None), flt)]
        assert gated == [] and ungated == [], (name, gated, ungated)


# -- event requirements (EventTracker, with real detections) ----------------------------------


def _events(det: Detector, frames: list[np.ndarray], fps: float, require: list[str],
            step: int) -> list[tuple[str, dict[str, float]]]:  # fmt: skip
    from guetteur.analytics.events import EventTracker

    flt = DetectFilter(require=require)
    tracker = EventTracker("cam1", EventsConfig(start_frames=2), require_labels=flt.require)
    out: list[tuple[str, dict[str, float]]] = []
    for i in range(step, len(frames), step):
        boxes = diff_boxes(frames[i - step], frames[i])
        dets = filter_detections(det.detect(frames[i], boxes), flt) if boxes else []
        frame = AnalyticFrame("cam1", frames[i], pts_s=i / fps, wallclock=1.8e9 + i / fps)
        out += [(u.kind, u.labels) for u in tracker.update(frame, DiffMotion(boxes), dets)]
    out += [(u.kind, u.labels) for u in tracker.flush()]
    return out


@pytest.mark.slow
def test_camera_requiring_person_raises_on_person_not_on_other_motion(
    detector: Detector, bikes: list[np.ndarray]
) -> None:
    from guetteur.dev.synthetic import scenario

    walker = bikes[round(7.56 * CLIP_FPS) : round(8.4 * CLIP_FPS)]
    events = _events(detector, walker, CLIP_FPS, ["person"], step=2)
    starts = [labels for kind, labels in events if kind == "start"]
    assert len(starts) == 1 and starts[0].get("person", 0) >= 0.5, events

    # A car-sized shape crossing a street scene: motion, but no person.
    sc = scenario("car", width=640, height=360, fps=10, duration=7.0, start=3.0, end=5.0)
    crossing = [sc.render(i) for i in range(20, 60)]
    assert _events(detector, crossing, 10, ["person"], step=1) == []
    # Control: the same frames do raise an event on a camera that requires nothing.
    assert next(k for k, _ in _events(detector, crossing, 10, [], step=1)) == "start"


# -- running beside ingest ----------------------------------------------------------------------


def _frame(camera: str, img: np.ndarray, t: float) -> AnalyticFrame:
    return AnalyticFrame(camera, img, pts_s=t, wallclock=1.8e9 + t)


def test_worker_never_blocks_and_counts_skips(detector: Detector, bikes: list[np.ndarray]) -> None:
    worker = DetectorWorker(detector, max_queue=2)
    results: dict[str, list[float]] = {"a": [], "b": []}
    lock = threading.Lock()

    def done(frame: AnalyticFrame, dets: list[Detection]) -> None:
        with lock:
            results[frame.camera].append(frame.pts_s)

    img = bikes[round(2.0 * CLIP_FPS)]
    runs, spent = detector.inferences, detector.inference_s
    try:
        slowest = 0.0
        for i in range(20):  # 20 whole-frame jobs for camera a at once: ~1 s of inference
            t0 = time.perf_counter()
            worker.submit("a", _frame("a", img, i / 10), None, done)
            slowest = max(slowest, time.perf_counter() - t0)
        worker.submit("b", _frame("b", img, 0.0), None, done)
        assert worker.idle(timeout=30)
        one_inference = (detector.inference_s - spent) / (detector.inferences - runs)
        assert slowest < one_inference / 2  # submit never waited for an inference
        a, b = worker.stats("a"), worker.stats("b")
        assert a["submitted"] == 20 and a["analysed"] + a["skipped"] == 20
        assert worker.skipped("a") == a["skipped"] >= 15  # at most queue + one in flight
        assert b["analysed"] == 1 and worker.skipped("b") == 0
        # The freshest frames were kept: the last one submitted was analysed.
        assert results["a"][-1] == pytest.approx(1.9)
        assert results["b"] == [0.0]
    finally:
        worker.close()


def test_worker_survives_a_failing_callback_and_a_bad_frame(detector: Detector) -> None:
    worker = DetectorWorker(detector, max_queue=4)
    seen: list[int] = []

    def boom(frame: AnalyticFrame, dets: list[Detection]) -> None:
        raise RuntimeError("callback bug")

    def ok(frame: AnalyticFrame, dets: list[Detection]) -> None:
        seen.append(len(dets))

    try:
        worker.submit("c", _frame("c", np.zeros((100, 100, 3), np.uint8), 0), None, boom)
        worker.submit("c", _frame("c", np.zeros((0, 0, 3), np.uint8), 0.1), None, ok)
        worker.submit("c", _frame("c", np.zeros((100, 100, 3), np.uint8), 0.2), None, ok)
        assert worker.idle(timeout=10)
        stats = worker.stats("c")
        assert stats["errors"] == 1 and stats["last_error"]
        assert stats["analysed"] == 2 and seen == [0]
    finally:
        worker.close()
    assert worker._thread is None


# -- scripts/fetch-models -----------------------------------------------------------------------


def _fetch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(FETCH), *args], capture_output=True, text=True, timeout=60
    )


def test_fetch_models_verifies_and_installs(
    detection_models: DetectionModels, tmp_path: Path
) -> None:
    name = MANIFESTS[1]
    src = detection_models["tflite-postprocess"].model
    manifest = _manifest_copy(
        tmp_path, REPO / "models" / f"{name}.yaml", **{"source.url": src.as_uri()}
    )
    dest = tmp_path / "opt-models"

    r = _fetch("--dest", str(dest), str(manifest))
    assert r.returncode == 0, r.stderr
    assert "sha256 verified" in r.stdout and "fetched (4183312 bytes)" in r.stdout
    installed = load_manifest(dest / manifest.name)
    assert installed.model_path.read_bytes() == src.read_bytes()
    # The installed directory is complete: the agent loads the model from it as configured.
    assert load_detector(DetectionConfig(manifest=str(dest / manifest.name))) is not None

    again = _fetch("--dest", str(dest), str(manifest))
    assert again.returncode == 0 and "already present" in again.stdout

    # A plain path works as a source (mirror / offline build).
    local = _manifest_copy(tmp_path, REPO / "models" / f"{name}.yaml", **{"source.url": str(src)})
    r = _fetch(str(local))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / f"{name}.tflite").stat().st_size == src.stat().st_size


def test_fetch_models_refuses_bad_sha_and_keeps_nothing(
    detection_models: DetectionModels, tmp_path: Path
) -> None:
    name = MANIFESTS[0]
    src = REPO / "models" / f"{name}.yaml"
    other = detection_models["tflite-postprocess"].model  # not the model this manifest describes
    manifest = _manifest_copy(tmp_path, src, **{"source.url": other.as_uri(), "source.size": None})
    r = _fetch(str(manifest))
    assert r.returncode == 1
    assert "has sha256 e4b118e5" in r.stderr and "expects a77e10a0" in r.stderr
    assert "nothing was installed" in r.stderr
    assert not (tmp_path / f"{name}.tflite").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    sized = _manifest_copy(tmp_path, src, **{"source.url": other.as_uri()})
    r = _fetch(str(sized))
    assert r.returncode == 1 and "larger than the 3633424 bytes the manifest gives" in r.stderr

    missing = _manifest_copy(tmp_path, src, **{"source.url": (tmp_path / "x.tflite").as_uri()})
    r = _fetch(str(missing))
    assert r.returncode == 1 and "cannot download" in r.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nfile: x.tflite\n")
    r = _fetch(str(broken))
    assert r.returncode == 2 and "source.url" in r.stderr


def test_fetch_then_corrupt_then_start_refuses(
    detection_models: DetectionModels, tmp_path: Path
) -> None:
    """A model damaged on disk after install (SD card) is refused at start by its sha256."""
    quant = detection_models["tflite-postprocess"]
    name = quant.name
    manifest = _manifest_copy(tmp_path, quant.manifest, **{"source.url": quant.model.as_uri()})
    assert _fetch(str(manifest)).returncode == 0
    model = tmp_path / f"{name}.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(DetectorError, match="sha256") as err:
        load_detector(DetectionConfig(manifest=str(manifest)))
    assert err.value.code == "sha256_mismatch"


# -- guetteur detect FILE / doctor ---------------------------------------------------------------


def _cli(*argv: str) -> int:
    import argparse

    from guetteur.analytics.detection import cli as detect

    parser = argparse.ArgumentParser()
    detect.add_arguments(parser)
    return detect.run(parser.parse_args(list(argv)))


def test_detect_command_on_an_image_and_on_a_bad_model(
    detection_models: DetectionModels,
    bikes: list[np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    quant = detection_models["tflite-postprocess"]
    image = tmp_path / "cars.png"
    cv2.imwrite(str(image), bikes[round(2.0 * CLIP_FPS)])
    manifest = str(quant.manifest)
    assert _cli(str(image), "--manifest", manifest, "--model", str(quant.model)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.split()[0] in DetectFilter().labels for line in lines)
    assert any(line.startswith("car ") for line in lines)

    assert _cli(str(image), "--manifest", manifest, "--model", str(image)) == 2
    assert "detect: sha256_mismatch: model file" in capsys.readouterr().err


def test_doctor_check_sentences(detection_models: DetectionModels) -> None:
    from guetteur.analytics.detection.cli import check_detection

    assert "motion-only" in check_detection(DetectionConfig())
    tf2 = detection_models["tf2-export"]
    ok = check_detection(config_for(tf2))
    assert ok.startswith(f"object detector {tf2.name}") and " ms " in ok
