"""``file:PATH`` — a local video played at its native rate and looped forever, so it behaves like
a live camera (demo, tests, replaying footage through the pipeline).

Packets are paced by their timestamps; each pass of the file continues the timeline of the
previous one (one frame later), so recorders see one never-ending stream.
"""

from __future__ import annotations

from pathlib import Path

from guetteur.config import CameraConfig
from guetteur.sources.container import ContainerSource, OpenTarget, Role
from guetteur.sources.status import FAILED, RECONNECTING, NoVideoStream


def file_path(url: str) -> Path:
    """``file:PATH``, ``file://PATH`` or ``file:///abs/PATH`` → the path."""
    rest = url.removeprefix("file:")
    if rest.startswith("//"):
        rest = rest[2:]
    return Path(rest).expanduser()


class FileSource(ContainerSource):
    live = False
    loop = True

    def __init__(self, camera: CameraConfig, backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        super().__init__(camera, backoff)
        self.path = file_path(camera.url)
        self.sub_path = file_path(camera.sub_url) if camera.sub_url else None

    def roles(self) -> list[Role]:
        # Two files cannot be kept in step: a file camera decodes the file it records.
        return [Role("main", sub=False, packets=True, frames=True)]

    def target(self, role: Role, long_probe: bool = False) -> OpenTarget:
        return OpenTarget(url=str(self.path), display=str(self.path))

    def describe_error(self, exc: BaseException, role: Role) -> tuple[str, str]:
        p = self.path
        if isinstance(exc, FileNotFoundError) or not p.exists():
            return FAILED, f"video file {p} not found: check the camera's url"
        if isinstance(exc, PermissionError):
            return FAILED, f"video file {p} is not readable by this user: check its permissions"
        if isinstance(exc, IsADirectoryError) or p.is_dir():
            return FAILED, f"{p} is a directory, not a video file"
        if isinstance(exc, NoVideoStream):
            return FAILED, f"{p}: {exc}"
        name = type(exc).__name__
        if name in ("InvalidDataError", "EOFError") or isinstance(exc, EOFError):
            return (
                FAILED,
                f"{p} is not a video file FFmpeg can read (corrupt or not video): replace it",
            )
        reason = getattr(exc, "strerror", None) or name
        return RECONNECTING, f"cannot read video file {p}: {reason}"

    def ended_sentence(self, target: OpenTarget) -> str:
        return f"{target.display} ended"

    def describe(self) -> str:
        return f"file {self.path} (looped)"
