"""The TFLite detector: loading a model (runtime, sha256, labels), finding its outputs, preparing
its input and running it on the regions ``regions.plan_regions`` chooses.

Models are SSD-style with the post-processing op built in: four outputs, boxes [1,N,4] (ymin,
xmin, ymax, xmax normalised to the input), classes [1,N], scores [1,N] and count [1]. They are
found by name (from the manifest, or the usual export names) or by shape — never by position,
since exports order them differently. The runtime is ``ai-edge-litert`` (the maintained one,
works with NumPy 2) or ``tflite-runtime`` (needs NumPy < 2), imported only when a model is
configured: the ``detect`` extra.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from guetteur.analytics.detection.manifest import (
    ROLES,
    DetectorError,
    InputSpec,
    ModelManifest,
    load_manifest,
    read_labels,
    sha256_file,
)
from guetteur.analytics.detection.regions import Detection, plan_regions, suppress_duplicates
from guetteur.config import DetectionConfig
from guetteur.media.types import Box

log = logging.getLogger(__name__)

# Names that exports commonly give the four outputs (TF1 post-process op, TF2 signatures).
_POSTPROCESS = "TFLite_Detection_PostProcess"
_CONVENTIONAL_NAMES: dict[str, tuple[str, ...]] = {
    "boxes": (_POSTPROCESS, f"{_POSTPROCESS}:0", "detection_boxes"),
    "classes": (f"{_POSTPROCESS}:1", "detection_classes"),
    "scores": (f"{_POSTPROCESS}:2", "detection_scores"),
    "count": (f"{_POSTPROCESS}:3", "num_detections"),
}
_UNUSED_LABELS = ("???", "")


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
            scaled: np.ndarray = (value.astype(np.float32) - out.zero_point) * out.scale
            return scaled
        as_float: np.ndarray = value.astype(np.float32, copy=False)
        return as_float


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
