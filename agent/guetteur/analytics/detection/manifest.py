"""Model manifests (``models/*.yaml``), labels files and sha256 checks, and ``DetectorError``:
everything about a model that can be checked before a runtime is loaded.

A manifest says where the model comes from (url, sha256, size), how to feed it (input size, type,
channel order, normalisation), how to read it (output tensor names, label offset) and which
labels file goes with it. Every error is a ``DetectorError`` naming the bad key or file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

ROLES = ("boxes", "classes", "scores", "count")  # the four outputs of SSD post-processing


class DetectorError(Exception):
    """The detector cannot be used. ``code`` is machine-readable; the message is a sentence a
    technician can act on. The agent then runs the cameras motion-only."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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
