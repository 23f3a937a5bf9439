"""Optional object detection: a TFLite SSD-style detector run only where motion says to look.

Motion finds where something changed; the detector says what it is. On a Pi there are no cycles
to spare, so the detector sees crops around the motion boxes (merged, padded, squared, resized to
the model's input) — or the whole frame when motion covers most of it — and never a frame without
motion. It runs beside ingest in its own thread (``DetectorWorker``); when it falls behind, frames
are skipped and counted, never queued without bound.

Models are SSD-style with the post-processing op built in: four outputs, boxes [1,N,4] (ymin,
xmin, ymax, xmax normalised to the input), classes [1,N], scores [1,N] and count [1]. They are
found by name (from the manifest, or the usual export names) or by shape — never by position,
since exports order them differently. The runtime is ``ai-edge-litert`` (the maintained one,
works with NumPy 2) or ``tflite-runtime`` (needs NumPy < 2), imported only when a model is
configured: the ``detect`` extra.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import yaml

from guetteur.config import DetectFilter, DetectionConfig
from guetteur.media.types import AnalyticFrame, Box

log = logging.getLogger(__name__)

ROLES = ("boxes", "classes", "scores", "count")
# Names that exports commonly give the four outputs (TF1 post-process op, TF2 signatures).
_POSTPROCESS = "TFLite_Detection_PostProcess"
_CONVENTIONAL_NAMES: dict[str, tuple[str, ...]] = {
    "boxes": (_POSTPROCESS, f"{_POSTPROCESS}:0", "detection_boxes"),
    "classes": (f"{_POSTPROCESS}:1", "detection_classes"),
    "scores": (f"{_POSTPROCESS}:2", "detection_scores"),
    "count": (f"{_POSTPROCESS}:3", "num_detections"),
}
_UNUSED_LABELS = ("???", "")
_MAX_REGIONS = 4  # more separate motion areas than this: one whole-frame pass is cheaper
_DUPLICATE_IOU = 0.5  # same label, overlapping this much across crops: one object


class DetectorError(Exception):
    """The detector cannot be used. ``code`` is machine-readable; the message is a sentence a
    technician can act on. The agent then runs the cameras motion-only."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object, its box normalised to the whole frame."""

    label: str
    score: float
    box: Box

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(self.score, 3), "box": self.box.as_list()}


# -- manifest -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """What the model wants as input: size, element type, channel order and normalisation
    (``(pixel - mean) / std`` for float inputs; integer inputs take pixels as they are)."""

    width: int
    height: int
    dtype: Literal["float32", "uint8", "int8"]
    colour: Literal["rgb", "bgr"] = "rgb"
    mean: float = 127.5
    std: float = 127.5

    def describe(self) -> str:
        return f"{self.width}x{self.height} {self.dtype}"


@dataclass(frozen=True)
class ModelManifest:
    """A ``models/*.yaml`` file: where the model comes from and how to feed and read it."""

    path: Path
    name: str
    file: str  # model file name, relative to the manifest's directory
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    labels: str | None = None  # labels file, relative to the manifest's directory
    label_offset: int = 0  # label = labels[class + label_offset]
    num_classes: int | None = None
    input: InputSpec | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # role -> tensor name
    licence: str | None = None

    @property
    def model_path(self) -> Path:
        return self.path.parent / self.file

    @property
    def labels_path(self) -> Path | None:
        return self.path.parent / self.labels if self.labels else None


def load_manifest(path: str | Path) -> ModelManifest:
    """Read and check a model manifest. Raises DetectorError naming the bad key."""
    p = Path(path)

    def bad(what: str) -> DetectorError:
        return DetectorError("manifest_invalid", f"model manifest {p}: {what}")

    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise DetectorError("manifest_missing", f"model manifest {p} does not exist") from None
    except OSError as exc:
        raise bad(f"cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise bad(f"is not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise bad("expected a mapping of keys to values")

    def text(key: str, node: dict[str, Any] = raw, required: bool = False) -> str | None:
        value = node.get(key)
        if value is None:
            if required:
                raise bad(f"key '{key}' is missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise bad(f"key '{key}' must be a non-empty string")
        return value.strip()

    def integer(key: str, node: dict[str, Any], minimum: int) -> int | None:
        value = node.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise bad(f"key '{key}' must be an integer >= {minimum}")
        return value

    source = raw.get("source") or {}
    if not isinstance(source, dict):
        raise bad("key 'source' must be a mapping (url, sha256, size)")
    sha = text("sha256", source)
    if sha is not None:
        sha = sha.lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise bad("key 'source.sha256' must be 64 hexadecimal digits")

    input_spec = None
    node = raw.get("input")
    if node is not None:
        if not isinstance(node, dict):
            raise bad("key 'input' must be a mapping (width, height, dtype, colour, mean, std)")
        width, height = integer("width", node, 1), integer("height", node, 1)
        dtype = node.get("dtype")
        if width is None or height is None:
            raise bad("keys 'input.width' and 'input.height' are required")
        if dtype not in ("float32", "uint8", "int8"):
            raise bad("key 'input.dtype' must be float32, uint8 or int8")
        colour = node.get("colour", "rgb")
        if colour not in ("rgb", "bgr"):
            raise bad("key 'input.colour' must be rgb or bgr")
        mean, std = node.get("mean", 127.5), node.get("std", 127.5)
        if not isinstance(mean, int | float) or not isinstance(std, int | float) or std <= 0:
            raise bad("keys 'input.mean' and 'input.std' must be numbers, std > 0")
        input_spec = InputSpec(width, height, dtype, colour, float(mean), float(std))

    outputs = raw.get("outputs") or {}
    if not isinstance(outputs, dict) or any(
        k not in ROLES or not isinstance(v, str) for k, v in outputs.items()
    ):
        raise bad("key 'outputs' must map boxes/classes/scores/count to tensor names")
    if outputs and set(outputs) != set(ROLES):
        raise bad("key 'outputs' must name all four of boxes, classes, scores and count")

    return ModelManifest(
        path=p,
        name=text("name", required=True) or "",
        file=text("file", required=True) or "",
        url=text("url", source),
        sha256=sha,
        size=integer("size", source, 1),
        labels=text("labels"),
        label_offset=integer("label_offset", raw, 0) or 0,
        num_classes=integer("num_classes", raw, 1),
        input=input_spec,
        outputs=dict(outputs),
        licence=text("licence"),
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_labels(path: Path) -> list[str]:
    """One label per line; positions matter (``???`` marks unused class ids)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DetectorError("labels_missing", f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DetectorError(
            "labels_invalid", f"labels file {path} cannot be read ({exc})"
        ) from None
    labels = [line.strip() for line in lines]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise DetectorError("labels_invalid", f"labels file {path} is empty")
    return labels


# -- where to look: regions of the frame --------------------------------------------------------


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


# -- the model ----------------------------------------------------------------------------------


def _runtime() -> tuple[Any, str]:
    """The Interpreter class of the installed TFLite runtime, imported only when needed."""
    errors = []
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError as exc:
        errors.append(f"ai-edge-litert: {exc}")
    try:
        from tflite_runtime.interpreter import Interpreter as TfliteInterpreter

        return TfliteInterpreter, "tflite-runtime"
    except ImportError as exc:
        errors.append(f"tflite-runtime: {exc}")
    except Exception as exc:  # tflite-runtime under NumPy 2 fails at import with odd errors
        errors.append(f"tflite-runtime: {exc} (it needs NumPy < 2)")
    raise DetectorError(
        "runtime_missing",
        "no TFLite runtime is installed: install the 'detect' extra "
        "(pip install 'guetteur[detect]', which brings ai-edge-litert) — " + "; ".join(errors),
    )


@dataclass(frozen=True)
class _Output:
    index: int
    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int


def _shape(detail: dict[str, Any]) -> list[int]:
    return [int(v) for v in detail["shape"]]


def _describe_outputs(details: Sequence[dict[str, Any]]) -> str:
    return ", ".join(f"{d['name']} {_shape(d)}" for d in details)


def _conventional_roles(details: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_name = {d["name"]: d for d in details}
    roles: dict[str, dict[str, Any]] = {}
    for role, names in _CONVENTIONAL_NAMES.items():
        for n in names:
            hits = [d for name, d in by_name.items() if name == n or name.endswith("/" + n)]
            if hits:
                roles[role] = hits[0]
                break
    return roles if set(roles) == set(ROLES) else {}


def _role_shape_ok(role: str, shape: Sequence[int]) -> bool:
    shape = list(shape)
    if role == "boxes":
        return len(shape) == 3 and shape[0] == 1 and shape[2] == 4
    if role in ("classes", "scores"):
        return len(shape) == 2 and shape[0] == 1
    return int(np.prod(shape)) == 1  # count: [1] or a scalar


class Detector:
    """One loaded TFLite detector. The interpreter is not re-entrant: a lock serialises the
    inferences. Run it from one worker thread (``DetectorWorker``), not from ingest."""

    def __init__(
        self,
        interpreter: Any,
        *,
        name: str,
        runtime: str,
        labels: list[str],
        label_offset: int,
        input_spec: InputSpec,
        outputs: dict[str, _Output],
        config: DetectionConfig,
    ) -> None:
        self._interp = interpreter
        self.name = name
        self.runtime = runtime
        self.labels = labels
        self.label_offset = label_offset
        self.input_spec = input_spec
        self._input_index = int(interpreter.get_input_details()[0]["index"])
        self._outputs = outputs
        self.config = config
        self._lock = threading.Lock()
        self.inferences = 0
        self.inference_s = 0.0  # total time spent in invoke()

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_spec.width, self.input_spec.height

    def describe(self) -> str:
        return (
            f"{self.name}: input {self.input_spec.describe()} {self.input_spec.colour}, "
            f"{len(self.labels)} labels, runtime {self.runtime}, {self.config.threads} thread(s)"
        )

    def detect(self, image: np.ndarray, motion_boxes: Sequence[Box] | None) -> list[Detection]:
        """Objects in a BGR frame, looking only around ``motion_boxes`` (normalised); the whole
        frame when ``motion_boxes`` is None; nothing when it is empty. Boxes come back
        normalised to the whole frame, scores >= ``config.min_score``."""
        frame_h, frame_w = image.shape[:2]
        regions = plan_regions(
            frame_w,
            frame_h,
            motion_boxes,
            max(self.input_size),
            self.config.crop_padding,
            self.config.full_frame_ratio,
        )
        found: list[Detection] = []
        for r in regions:
            crop = image[r.y : r.y + r.h, r.x : r.x + r.w]
            for label, score, (ymin, xmin, ymax, xmax) in self.infer(crop):
                x0 = (r.x + min(max(xmin, 0.0), 1.0) * r.w) / frame_w
                y0 = (r.y + min(max(ymin, 0.0), 1.0) * r.h) / frame_h
                x1 = (r.x + min(max(xmax, 0.0), 1.0) * r.w) / frame_w
                y1 = (r.y + min(max(ymax, 0.0), 1.0) * r.h) / frame_h
                if x1 > x0 and y1 > y0:
                    found.append(Detection(label, score, Box(x0, y0, x1 - x0, y1 - y0)))
        return suppress_duplicates(found) if len(regions) > 1 else found

    def infer(
        self, image: np.ndarray
    ) -> list[tuple[str, float, tuple[float, float, float, float]]]:
        """Run the model once on a BGR image (any size; stretched to the input). Returns
        (label, score, (ymin, xmin, ymax, xmax) normalised to ``image``) above min_score."""
        tensor = prepare_input(image, self.input_spec)
        with self._lock:
            self._interp.set_tensor(self._input_index, tensor)
            t0 = time.perf_counter()
            self._interp.invoke()
            self.inference_s += time.perf_counter() - t0
            self.inferences += 1
            boxes = self._read("boxes").reshape(-1, 4)
            classes = self._read("classes").reshape(-1)
            scores = self._read("scores").reshape(-1)
            count = int(self._read("count").reshape(-1)[0])
        out = []
        for i in range(min(count, len(scores), len(classes), len(boxes))):
            score = float(scores[i])
            if score < self.config.min_score:
                continue
            idx = round(float(classes[i])) + self.label_offset
            label = self.labels[idx] if 0 <= idx < len(self.labels) else f"class-{idx}"
            if label in _UNUSED_LABELS:
                continue
            ymin, xmin, ymax, xmax = (float(v) for v in boxes[i])
            out.append((label, score, (ymin, xmin, ymax, xmax)))
        return out

    def _read(self, role: str) -> np.ndarray:
        out = self._outputs[role]
        value = self._interp.get_tensor(out.index)
        if out.scale and value.dtype != np.float32:
            return (value.astype(np.float32) - out.zero_point) * out.scale
        return value.astype(np.float32, copy=False)


def prepare_input(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A BGR image (any size) as the model's input tensor [1,H,W,3]: stretched to the input size
    (SSD exports are trained on stretched images), channel order and normalisation applied."""
    h, w = image.shape[:2]
    shrink = w >= spec.width and h >= spec.height
    resized = cv2.resize(
        image,
        (spec.width, spec.height),
        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
    )
    if spec.colour == "rgb":
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    tensor: np.ndarray = resized
    if spec.dtype == "float32":
        tensor = (resized.astype(np.float32) - spec.mean) / spec.std
    elif spec.dtype == "int8":  # int8-quantised inputs are the uint8 pixels shifted by 128
        tensor = (resized.astype(np.int16) - 128).astype(np.int8)
    return np.ascontiguousarray(tensor[np.newaxis])


def _input_spec(details: dict[str, Any], manifest: ModelManifest | None, where: str) -> InputSpec:
    shape = [int(v) for v in details["shape"]]
    dtype: Literal["float32", "uint8", "int8"] = np.dtype(details["dtype"]).name
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise DetectorError(
            "model_mismatch",
            f"model {where} takes input {shape}; a detector here needs one image [1,H,W,3]",
        )
    if dtype not in ("float32", "uint8", "int8"):
        raise DetectorError(
            "model_mismatch", f"model {where} takes {dtype} input; supported: float32, uint8, int8"
        )
    height, width = shape[1], shape[2]
    if manifest is not None and manifest.input is not None:
        spec = manifest.input
        if (spec.width, spec.height, spec.dtype) != (width, height, dtype):
            raise DetectorError(
                "model_mismatch",
                f"model {where} does not match its manifest {manifest.path}: the manifest says "
                f"input {spec.describe()}, the model takes {width}x{height} {dtype} — wrong "
                f"model file or wrong manifest",
            )
        return spec
    # Without a manifest: the usual conventions (TF2 exports scale floats to [-1, 1]).
    return InputSpec(width, height, dtype)


def assign_output_roles(
    details: Sequence[dict[str, Any]], named: dict[str, str] | None, where: str
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Which output is boxes, classes, scores and count: by the manifest's names, else by the
    usual export names, else by shape. Returns (roles, pair): when shapes cannot tell classes
    from scores, ``pair`` holds those two outputs and ``roles`` only boxes and count.

    Raises DetectorError when the outputs are not SSD post-processed detections."""
    found = _describe_outputs(details)
    if named:
        by_name = {d["name"]: d for d in details}
        roles: dict[str, dict[str, Any]] = {}
        for role, name in named.items():
            if name not in by_name:
                raise DetectorError(
                    "model_mismatch",
                    f"the manifest names output {name!r} for {role}, but model {where} has "
                    f"outputs: {found} — wrong model file or wrong manifest",
                )
            roles[role] = by_name[name]
        pair: list[dict[str, Any]] = []
    else:
        roles = _conventional_roles(details)
        pair = []
        if not roles:
            boxes = [d for d in details if _role_shape_ok("boxes", d["shape"])]
            count = [d for d in details if _role_shape_ok("count", d["shape"])]
            pair = [d for d in details if len(d["shape"]) == 2 and d["shape"][0] == 1]
            if len(details) == 4 and len(boxes) == 1 and len(count) == 1 and len(pair) == 2:
                roles = {"boxes": boxes[0], "count": count[0]}
            else:
                raise DetectorError(
                    "outputs_unsupported",
                    f"model {where} does not have SSD post-processed outputs (boxes [1,N,4], "
                    f"classes [1,N], scores [1,N], count [1]); it has: {found}. Raw-output "
                    f"models (YOLO, SSD without the TFLite_Detection_PostProcess op) are not "
                    f"supported",
                )
    for role, d in roles.items():
        if not _role_shape_ok(role, d["shape"]):
            raise DetectorError(
                "outputs_unsupported",
                f"model {where}: output {d['name']} taken as {role} has shape "
                f"{_shape(d)}, which is not what SSD post-processing gives; outputs: "
                f"{found}",
            )
    return roles, pair


def tell_classes_from_scores(
    values: Sequence[np.ndarray],
) -> tuple[int, int] | None:
    """Given the values of two [1,N] outputs after one inference, (classes, scores) indices:
    class ids are whole numbers >= 0; scores are fractions in [0, 1] in decreasing order.
    None when the values do not say."""

    def whole(v: np.ndarray) -> bool:
        return bool(np.all(v == np.round(v)) and np.all(v >= 0))

    def score_like(v: np.ndarray) -> bool:
        return bool(np.all((v >= 0) & (v <= 1)) and np.all(np.diff(v) <= 1e-6) and not whole(v))

    a, b = (np.asarray(v, dtype=np.float64).reshape(-1) for v in values)
    if whole(a) and score_like(b):
        return 0, 1
    if whole(b) and score_like(a):
        return 1, 0
    return None


def _find_outputs(
    interpreter: Any, manifest: ModelManifest | None, where: str, input_spec: InputSpec
) -> dict[str, _Output]:
    details = list(interpreter.get_output_details())
    roles, pair = assign_output_roles(details, manifest.outputs if manifest else None, where)
    if pair:
        # Same shape: one inference on a fixed noise image tells them apart by value.
        noise = np.random.default_rng(7).integers(0, 256, (input_spec.height, input_spec.width, 3))
        interpreter.set_tensor(
            int(interpreter.get_input_details()[0]["index"]),
            prepare_input(noise.astype(np.uint8), input_spec),
        )
        interpreter.invoke()
        order = tell_classes_from_scores([interpreter.get_tensor(d["index"]) for d in pair])
        if order is None:
            raise DetectorError(
                "outputs_ambiguous",
                f"model {where}: cannot tell which of {pair[0]['name']} and {pair[1]['name']} "
                f"holds the classes and which the scores; name them under 'outputs' in the "
                f"model's manifest",
            )
        roles["classes"], roles["scores"] = pair[order[0]], pair[order[1]]
    return {
        role: _Output(
            index=int(d["index"]),
            name=str(d["name"]),
            shape=tuple(int(v) for v in d["shape"]),
            scale=float(d.get("quantization", (0.0, 0))[0]),
            zero_point=int(d.get("quantization", (0.0, 0))[1]),
        )
        for role, d in roles.items()
    }


def load_detector(config: DetectionConfig) -> Detector | None:
    """The configured detector, or None (logged once) when no model is configured.

    Raises DetectorError with a sentence for a missing, corrupt or mismatched model, a labels file
    of the wrong length, a sha256 that does not match the manifest, or no TFLite runtime; the
    caller logs it and runs the cameras motion-only."""
    if not config.model and not config.manifest:
        log.info(
            "no detection model configured (detection.model / detection.manifest): "
            "cameras run motion-only"
        )
        return None
    manifest = load_manifest(config.manifest) if config.manifest else None
    model_path = Path(config.model) if config.model else manifest.model_path  # type: ignore[union-attr]
    where = str(model_path)
    if not model_path.is_file():
        hint = (
            f"fetch it with: scripts/fetch-models {manifest.path}"
            if manifest
            else "check detection.model"
        )
        raise DetectorError("model_missing", f"model file {model_path} does not exist; {hint}")

    if manifest is not None and manifest.sha256:
        actual = sha256_file(model_path)
        if actual != manifest.sha256:
            raise DetectorError(
                "sha256_mismatch",
                f"model file {model_path} has sha256 {actual}, but manifest {manifest.path} "
                f"expects {manifest.sha256}: the file is corrupt or is another model; fetch it "
                f"again with scripts/fetch-models {manifest.path}",
            )

    labels_path = (
        Path(config.labels) if config.labels else (manifest.labels_path if manifest else None)
    )
    if labels_path is None:
        raise DetectorError(
            "labels_missing",
            f"no labels file for model {model_path}: set detection.labels or 'labels' in the "
            f"manifest",
        )
    labels = read_labels(labels_path)
    if manifest is not None:
        label_offset = manifest.label_offset
    else:  # a first line "???"/"background" is the background class of TF1 label maps
        label_offset = 1 if labels[0].lower() in ("???", "background") else 0
    if manifest is not None and manifest.num_classes is not None:
        expected = manifest.num_classes + manifest.label_offset
        if len(labels) != expected:
            raise DetectorError(
                "labels_mismatch",
                f"labels file {labels_path} has {len(labels)} lines, but manifest "
                f"{manifest.path} expects {expected} ({manifest.num_classes} classes, label "
                f"offset {manifest.label_offset}): wrong labels file for this model",
            )

    interpreter_class, runtime = _runtime()
    try:
        interpreter = interpreter_class(model_path=str(model_path), num_threads=config.threads)
        interpreter.allocate_tensors()
    except Exception as exc:  # the runtimes raise ValueError/RuntimeError with C++ text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DetectorError(
            "model_corrupt",
            f"model file {model_path} is not a valid TFLite model ({first}); fetch it again"
            + (f" with scripts/fetch-models {manifest.path}" if manifest else ""),
        ) from None
    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        raise DetectorError(
            "model_mismatch", f"model {where} has {len(inputs)} inputs; a detector has one image"
        )
    input_spec = _input_spec(inputs[0], manifest, where)
    outputs = _find_outputs(interpreter, manifest, where, input_spec)
    detector = Detector(
        interpreter,
        name=manifest.name if manifest else str(model_path),
        runtime=runtime,
        labels=labels,
        label_offset=label_offset,
        input_spec=input_spec,
        outputs=outputs,
        config=config,
    )
    verified = ", sha256 verified" if manifest is not None and manifest.sha256 else ""
    log.info("object detector ready: %s%s", detector.describe(), verified)
    return detector


# -- running beside ingest ----------------------------------------------------------------------

DetectionCallback = Callable[[AnalyticFrame, list[Detection]], None]


@dataclass
class _CameraQueue:
    pending: deque[tuple[AnalyticFrame, list[Box] | None, DetectionCallback]]
    submitted: int = 0
    analysed: int = 0
    skipped: int = 0
    errors: int = 0
    last_error: str | None = None


class DetectorWorker:
    """Runs the detector in its own thread so ingest, recording and motion never wait for it.

    Each camera has its own short queue (``max_queue`` frames). ``submit`` never blocks: when a
    camera's queue is full its oldest frame is dropped and counted in ``skipped(camera)`` — the
    freshest frames are the ones worth analysing. Cameras are served in turn, so one busy camera
    cannot starve the others. Callbacks run on the worker thread."""

    def __init__(self, detector: Detector, max_queue: int = 2) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.detector = detector
        self.max_queue = max_queue
        self._cameras: dict[str, _CameraQueue] = {}
        self._order: deque[str] = deque()  # round-robin order of cameras with pending frames
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="detector", daemon=True)
                self._thread.start()

    def submit(
        self,
        camera: str,
        frame: AnalyticFrame,
        motion_boxes: Sequence[Box] | None,
        callback: DetectionCallback,
    ) -> bool:
        """Queue a frame for detection around ``motion_boxes``; returns at once. False when an
        older frame of this camera had to be dropped to make room (counted as skipped)."""
        self.start()
        boxes = list(motion_boxes) if motion_boxes is not None else None
        with self._cond:
            q = self._cameras.get(camera)
            if q is None:
                q = self._cameras[camera] = _CameraQueue(deque())
            q.submitted += 1
            accepted_without_drop = True
            if len(q.pending) >= self.max_queue:
                q.pending.popleft()
                q.skipped += 1
                accepted_without_drop = False
            q.pending.append((frame, boxes, callback))
            if camera not in self._order:
                self._order.append(camera)
            self._cond.notify()
        return accepted_without_drop

    def skipped(self, camera: str) -> int:
        with self._cond:
            q = self._cameras.get(camera)
            return q.skipped if q else 0

    def stats(self, camera: str) -> dict[str, Any]:
        """Counters for the camera status: submitted, analysed, skipped, errors, last_error."""
        with self._cond:
            q = self._cameras.get(camera)
            if q is None:
                return {
                    "submitted": 0,
                    "analysed": 0,
                    "skipped": 0,
                    "errors": 0,
                    "last_error": None,
                }
            return {
                "submitted": q.submitted,
                "analysed": q.analysed,
                "skipped": q.skipped,
                "errors": q.errors,
                "last_error": q.last_error,
            }

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued frame has been analysed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._order and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the frame being analysed; frames still queued are dropped (not counted)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._thread = None

    def _next(self) -> tuple[str, AnalyticFrame, list[Box] | None, DetectionCallback] | None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()  # wakes idle() waiters
            self._cond.wait_for(lambda: self._stopping or bool(self._order))
            if self._stopping:
                return None
            camera = self._order.popleft()
            q = self._cameras[camera]
            frame, boxes, callback = q.pending.popleft()
            if q.pending:
                self._order.append(camera)
            self._busy = True
            return camera, frame, boxes, callback

    def _run(self) -> None:
        while (job := self._next()) is not None:
            camera, frame, boxes, callback = job
            try:
                detections = self.detector.detect(frame.image, boxes)
            except Exception as exc:
                with self._cond:
                    q = self._cameras[camera]
                    q.errors += 1
                    first_error = q.last_error is None
                    q.last_error = f"{type(exc).__name__}: {exc}"
                if first_error:
                    log.exception("camera %s: object detection failed; frame skipped", camera)
                continue
            with self._cond:
                self._cameras[camera].analysed += 1
            try:
                callback(frame, detections)
            except Exception:
                log.exception("camera %s: detection callback failed", camera)
        with self._cond:
            self._busy = False
            self._cond.notify_all()


# -- doctor and command line --------------------------------------------------------------------


def check_detection(config: DetectionConfig) -> str:
    """For ``guetteur doctor``: one sentence on what detection will do at start. Raises
    DetectorError (code + sentence) when the configured model cannot be used."""
    detector = load_detector(config)
    if detector is None:
        return "no detection model configured: cameras run motion-only"
    detector.detect(
        np.zeros((detector.input_spec.height, detector.input_spec.width, 3), np.uint8), None
    )
    ms = detector.inference_s / max(detector.inferences, 1) * 1e3
    return f"object detector {detector.describe()} loaded and ran ({ms:.0f} ms per inference)"


def add_arguments(parser: Any) -> None:
    """``guetteur detect FILE``: run the configured detector on an image or a video file."""
    parser.add_argument("file", help="an image (JPEG/PNG) or a video file PyAV can read")
    parser.add_argument("--config", help="guetteur YAML: its detection section and camera filter")
    parser.add_argument("--camera", help="camera id in --config whose object filter applies")
    parser.add_argument("--manifest", help="model manifest (models/*.yaml); overrides --config")
    parser.add_argument("--model", help="TFLite model file; overrides the manifest's")
    parser.add_argument("--labels", help="labels file; overrides the manifest's")
    parser.add_argument("--threads", type=int, help="inference threads")
    parser.add_argument("--fps", type=float, default=5.0, help="frames analysed per second (video)")
    parser.add_argument(
        "--whole-frame",
        action="store_true",
        help="analyse every sampled frame whole (default: only around motion, as the agent does)",
    )
    parser.add_argument("--all-labels", action="store_true", help="print detections of any label")


def run(args: Any) -> int:
    import av  # only this command reads files

    from guetteur.analytics.motion import MotionDetector
    from guetteur.config import ConfigError, load_config

    flt = DetectFilter()
    detection = DetectionConfig()
    try:
        if args.config:
            cfg = load_config(args.config)
            detection = cfg.detection
            cams = [c for c in cfg.cameras if args.camera in (None, c.id)]
            if args.camera and not cams:
                print(f"detect: camera {args.camera!r} is not in {args.config}", file=sys.stderr)
                return 2
            if cams and cams[0].detect is not None:
                flt = cams[0].detect
    except ConfigError as exc:
        print(f"detect: {exc.report()}", file=sys.stderr)
        return 2
    overrides = {
        k: getattr(args, k)
        for k in ("manifest", "model", "labels", "threads")
        if getattr(args, k) is not None
    }
    if args.all_labels:
        flt = flt.model_copy(update={"labels": []})
    try:
        detector = load_detector(detection.model_copy(update=overrides))
    except DetectorError as exc:
        print(f"detect: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    if detector is None:
        print("detect: no model given (--manifest/--model or --config)", file=sys.stderr)
        return 2

    def show(t: float | None, dets: list[Detection]) -> None:
        when = "" if t is None else f"{t:8.2f}s "
        for d in filter_detections(dets, flt):
            print(f"{when}{d.label:<14s} {d.score:.2f} box={d.box.as_list()}")

    image = (
        cv2.imread(args.file)
        if Path(args.file).suffix.lower() in (".jpg", ".jpeg", ".png")
        else None
    )
    if image is not None:
        show(None, detector.detect(image, None))
        return 0
    try:
        container = av.open(args.file)
    except (OSError, av.error.FFmpegError) as exc:
        print(f"detect: cannot open {args.file}: {exc}", file=sys.stderr)
        return 2
    motion = MotionDetector()
    analysed = reached = 0
    next_t = 0.0
    with container:
        for frame in container.decode(video=0):
            t = float(frame.pts * frame.time_base) if frame.pts is not None else next_t
            if t + 1e-6 < next_t:
                continue
            next_t = t + 1.0 / args.fps
            img = frame.to_ndarray(format="bgr24")
            analysed += 1
            if args.whole_frame:
                boxes: list[Box] | None = None
            else:
                h, w = img.shape[:2]
                small = cv2.resize(
                    img, (320, max(1, round(h * 320 / w))), interpolation=cv2.INTER_AREA
                )
                result = motion.process(small)
                if not result.motion:
                    continue
                boxes = result.boxes
            reached += 1
            show(t, detector.detect(img, boxes))
    ms = detector.inference_s / max(detector.inferences, 1) * 1e3
    print(
        f"{analysed} frames analysed, {reached} reached the detector, "
        f"{detector.inferences} inferences of {ms:.1f} ms",
        file=sys.stderr,
    )
    return 0
