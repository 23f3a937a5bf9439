"""``v4l2:/dev/videoN[?width=1280&height=720&fps=25]`` — a USB camera through FFmpeg's V4L2 input.

Which pixel format: the camera's own H.264 when it offers it (UVC H.264 cameras): then packets
are recorded like an IP camera's and analytics decode them. Otherwise MJPEG, else raw: the
camera then feeds analytics only and the status says recording is unavailable (extra
``recording``), because Guetteur records encoded video without encoding it itself; encoding on
the gateway would cost a core per camera on a Pi. Use an H.264 USB camera (or an IP camera) where
recording matters.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from guetteur.config import CameraConfig
from guetteur.sources.container import ContainerSource, OpenTarget, Role
from guetteur.sources.status import FAILED, RECONNECTING, NoVideoStream

# Preferred input formats, best first (FFmpeg v4l2 ``input_format`` names).
INPUT_FORMATS = ("h264", "mjpeg", None)


def parse_v4l2_url(url: str) -> tuple[Path, dict[str, str]]:
    """``v4l2:/dev/video0?width=1280&height=720&fps=25`` → (device, FFmpeg options)."""
    rest = url.removeprefix("v4l2:")
    if rest.startswith("//"):
        rest = rest[2:]
    parts = urlsplit("x:" + rest)
    query = dict(parse_qsl(parts.query))
    options: dict[str, str] = {}
    if "width" in query and "height" in query:
        options["video_size"] = f"{int(query['width'])}x{int(query['height'])}"
    if "fps" in query:
        options["framerate"] = str(float(query["fps"]))
    if "format" in query:
        options["input_format"] = query["format"]
    return Path(parts.path or "/dev/video0"), options


class V4l2Source(ContainerSource):
    live = True

    def __init__(self, camera: CameraConfig, backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        super().__init__(camera, backoff)
        self.device, self.options = parse_v4l2_url(camera.url)
        self._format_index = 0  # which of INPUT_FORMATS the next open tries

    def roles(self) -> list[Role]:
        return [Role("main", sub=False, packets=True, frames=True)]

    def target(self, role: Role, long_probe: bool = False) -> OpenTarget:
        options = dict(self.options)
        if "input_format" not in options:
            fmt = INPUT_FORMATS[self._format_index % len(INPUT_FORMATS)]
            if fmt:
                options["input_format"] = fmt
        return OpenTarget(
            url=str(self.device),
            display=str(self.device),
            format="v4l2",
            options=options,
            timeout=(self.camera.open_timeout_s, self.camera.stall_timeout_s),
        )

    def describe_error(self, exc: BaseException, role: Role) -> tuple[str, str]:
        dev = self.device
        if not dev.exists():
            return FAILED, (
                f"v4l2 device {dev} does not exist: check the USB cable and `ls /dev/video*`"
            )
        if not os.access(dev, os.R_OK | os.W_OK):
            return FAILED, (
                f"v4l2 device {dev} is not accessible to this user: add it to the 'video' group"
            )
        if isinstance(exc, NoVideoStream):
            return FAILED, f"{dev}: {exc}"
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        if "input_format" not in self.options and self._format_index < len(INPUT_FORMATS) - 1:
            self._format_index += 1  # the camera refused that format: try the next one
            return RECONNECTING, f"cannot open {dev} in that format ({reason}); trying another"
        self._format_index = 0
        if getattr(exc, "errno", None) == 16:  # EBUSY
            return FAILED, f"v4l2 device {dev} is busy: another program is using the camera"
        return RECONNECTING, f"cannot open v4l2 device {dev}: {reason}"

    def describe(self) -> str:
        return f"v4l2 {self.device}"
