"""What flows out of a camera source: encoded packets (to record and stream) and analytic frames."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class StreamInfo:
    """Describes one encoded video stream epoch. A new object means the codec or resolution changed
    (recorders then start a new segment, live sessions a new init segment)."""

    codec: str  # FFmpeg codec name: "h264" or "hevc"
    width: int
    height: int
    time_base: Fraction  # unit of EncodedPacket.pts/dts
    fps: float | None = None
    extradata: bytes | None = None  # avcC/hvcC or Annex B parameter sets, when the source has them


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One encoded video access unit exactly as the camera sent it (never re-encoded)."""

    camera: str
    data: bytes
    pts: int
    dts: int
    keyframe: bool
    wallclock: float  # UTC epoch seconds at which the gateway received it
    stream: StreamInfo
    duration: int = 0  # in stream.time_base, 0 when unknown

    @property
    def pts_s(self) -> float:
        return float(self.pts * self.stream.time_base)


@dataclass(frozen=True, slots=True)
class AnalyticFrame:
    """A decoded frame at the analytic rate and size, for motion and detection.

    ``image`` is what motion analyses: the luma plane (grey, H x W uint8) read straight from the
    decoded picture, or a BGR image (H x W x 3) from sources that only have colour. Colour is
    produced only for the few frames that need it (snapshots, detector input): ``colour()``."""

    camera: str
    image: np.ndarray = field(repr=False)
    pts_s: float  # stream time, seconds
    wallclock: float  # UTC epoch seconds
    source_size: tuple[int, int] = (0, 0)  # (width, height) of the full-resolution stream
    # Renders the same picture in BGR at up to the given width from the full-resolution decoded
    # frame (snapshots, detector input), when the source has it; None: only ``image`` exists.
    # Safe to call from any thread: the decoded frame itself is never shared (sources.decode).
    render: Callable[[int], np.ndarray] | None = field(default=None, repr=False, compare=False)
    # Colour saturation of the picture: mean |U-128| + |V-128| over a sparse grid of the decoded
    # chroma planes (0 for a greyscale, infrared picture); None when the source cannot tell.
    chroma: float | None = None

    def colour(self, width: int | None = None) -> np.ndarray:
        """BGR picture at ``width`` (default: the analysed width): rendered from the decoded frame
        when the source keeps it, else the analysed image itself (grey turned to 3 channels)."""
        w = width or int(self.image.shape[1])
        if self.render is not None:
            return self.render(w)
        if self.image.ndim == 3:
            return self.image
        return np.repeat(self.image[:, :, None], 3, axis=2)


@dataclass(frozen=True, slots=True)
class Box:
    """A rectangle in normalised frame coordinates (0..1 of width and height), so boxes mean the
    same at the analytic size, the snapshot size and the camera's full resolution."""

    x: float
    y: float
    w: float
    h: float

    @property
    def area(self) -> float:
        return self.w * self.h

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)

    def as_list(self) -> list[float]:
        return [round(self.x, 4), round(self.y, 4), round(self.w, 4), round(self.h, 4)]
