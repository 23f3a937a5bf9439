"""Camera sources: one per camera, chosen by the URL scheme (see docs/sources.md).

``open_source(camera)`` returns an object with ``camera_id`` and ``run(sink, stop)``: run it in a
thread; it hands encoded packets, analytic frames and status changes to the sink until ``stop``
is set, reconnecting on its own, and never raises because of the camera.
"""

from __future__ import annotations

from guetteur.config import CameraConfig
from guetteur.sources.base import Backoff, CameraStatus, Source, SourceSink

__all__ = [
    "Backoff",
    "CameraStatus",
    "Source",
    "SourceSink",
    "UnsupportedSource",
    "open_source",
]


class UnsupportedSource(ValueError):
    """The camera URL has no source for its scheme."""


def open_source(camera: CameraConfig, backoff: tuple[float, float] = (1.0, 30.0)) -> Source:
    """The source for ``camera.url``: rtsp://, rtsps://, file:PATH, test:NAME?params,
    picamera2:INDEX or v4l2:/dev/videoN. ``backoff`` is (first, longest) wait in seconds
    between reconnection attempts. Raises UnsupportedSource for any other scheme (config
    validation already refuses those)."""
    url = camera.url
    if url.startswith(("rtsp://", "rtsps://")):
        from guetteur.sources.rtsp import RtspSource

        return RtspSource(camera, backoff)
    if url.startswith("file:"):
        from guetteur.sources.file import FileSource

        return FileSource(camera, backoff)
    if url.startswith("test:"):
        from guetteur.sources.testpattern import TestPatternSource

        return TestPatternSource(camera, backoff)
    if url.startswith("picamera2:"):
        from guetteur.sources.picam import PicameraSource

        return PicameraSource(camera, backoff)
    if url.startswith("v4l2:"):
        from guetteur.sources.v4l2 import V4l2Source

        return V4l2Source(camera, backoff)
    raise UnsupportedSource(
        f"cameras[{camera.id}].url: expected rtsp://, rtsps://, file:, test:, picamera2: or v4l2:"
    )
